//! Logs and OpenTelemetry traces of `vaxgate serve` (`[telemetry]`).
//!
//! Logs go to stderr (`json` by default, or `text`), filtered by `RUST_LOG`
//! (default `warn`). When `otlp_endpoint` is set, spans are also exported
//! over OTLP/gRPC with a batch exporter; otherwise no exporter exists.
//!
//! Spans: `HTTP <method> <route pattern>` for every request (middleware
//! [`http_span`]), `ingest`, `query` or `admin` inside it by route class, and
//! `ledger.append` (in the ledger crate) for every durable append.
//! Their attributes carry only route patterns, route classes, status codes,
//! counts and ids, never personal data or the request path's values.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("telemetry.otlp_endpoint {endpoint}: {message}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
}

/// The log directive that silences actix-http's per-request parse errors.
const CLIENT_PROTOCOL_ERRORS: &str = "actix_http::h1::dispatcher=off";

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber: logs, plus the OTLP layer when
/// configured. Must run inside a Tokio runtime (the gRPC channel lives there).
pub fn init(cfg: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    // actix-http logs every malformed request it reads at ERROR ("stream
    // error: request parse error"): any client could flood the log. The
    // client gets its 400; the log keeps quiet about it unless RUST_LOG
    // names `actix_http` itself.
    let filter = || {
        let given = std::env::var("RUST_LOG").unwrap_or_default();
        let f = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        if given.contains("actix_http") {
            f
        } else {
            f.add_directive(CLIENT_PROTOCOL_ERRORS.parse().expect("static directive"))
        }
    };
    let logs = match cfg.log_format.as_deref() {
        Some("text") => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let Some(endpoint) = &cfg.otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Telemetry::default());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone().unwrap_or_else(|| "vaxgate".into()))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    // Spans of vaxgate's own code at info and above; RUST_LOG does not
    // silence traces.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("vaxgate"))
        .with_filter(EnvFilter::new("warn,gateway=info,vaxgate=info,ledger=info"));
    let _ = tracing_subscriber::registry().with(logs).with(spans).try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter. Its blocking shutdown runs on a
    /// blocking thread: on actix's current-thread runtime it would wait for
    /// itself and time out.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            match actix_web::rt::task::spawn_blocking(move || p.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces failed"),
                Err(e) => tracing::warn!(error = %e, "flushing traces failed"),
            }
        }
    }
}

/// Middleware: one span per HTTP request, named after the route pattern
/// (`/v1/trace/{code}`, not the code), with its class and status.
pub async fn http_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("HTTP {method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // The operation inside: `ingest`, `query` or `admin` (by route class).
    let op = match (req.method().as_str(), req.path()) {
        ("POST", p) if p.starts_with("/v1/transactions") || p.starts_with("/v1/cancellations") => {
            Some(tracing::info_span!(parent: &span, "ingest"))
        }
        (_, p) if p.starts_with("/v1/admin") => Some(tracing::info_span!(parent: &span, "admin")),
        ("GET", p) if p.starts_with("/v1/") => Some(tracing::info_span!(parent: &span, "query")),
        _ => None,
    };
    let fut = next.call(req);
    let res = match op {
        Some(op) => fut.instrument(op).instrument(span.clone()).await?,
        None => fut.instrument(span.clone()).await?,
    };
    let status = res.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    Ok(res)
}
