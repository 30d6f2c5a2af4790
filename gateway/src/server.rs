//! The HTTP server: state, routes and the middleware stack.
//!
//! The stack, outermost first, and why each layer sits where it does:
//! 1. TLS 1.3 / mTLS (rustls acceptor): nothing is parsed before the
//!    connection is authenticated at the transport level.
//! 2. Request accounting (`count`): every answer, including refusals, is
//!    counted by route class and status.
//! 3. Rate limit: per client address on public routes (here), per
//!    principal on authenticated routes (after authentication).
//! 4. Body cap (`PayloadConfig`/`JsonConfig`): oversize bodies are refused
//!    before they are buffered.
//! 5. The handler.

use std::net::IpAddr;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use ledger::{AnyStore, Ledger, LedgerStore};
use serde_json::json;

use crate::error::{ApiError, Code};
use crate::metrics::METRICS;
use crate::ratelimit::{Limiters, RouteClass};

/// Shared by every worker.
#[derive(Debug)]
pub struct AppState {
    /// The ledger.
    pub ledger: Ledger<AnyStore>,
    /// The node key (signs registry transactions; opens envelopes).
    pub node_key: secure_gateway::Sm2SigningKey,
    /// Rate limiters.
    pub limiters: Limiters,
    /// The registry, rebuilt from the ledger at start.
    pub registry: std::sync::RwLock<crate::registry::Registry>,
    /// Serialises registry changes (check → append → apply).
    pub registry_writer: tokio::sync::Mutex<()>,
    /// Nonces seen recently.
    pub nonces: crate::auth::NonceCache,
    /// Largest accepted difference between a request's clock and ours.
    pub max_clock_skew_secs: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// The crypto provider (holds the node key as `node_handle`).
    pub provider: std::sync::Arc<dyn secure_gateway::CryptoProvider>,
    /// The node key's handle in the provider (opens envelopes).
    pub node_handle: secure_gateway::KeyHandle,
    /// The relational projection of accepted events.
    pub projection: crate::projection::Projection,
    /// The dataset definition records are validated against.
    pub dataset: std::sync::Arc<mappings::Dataset>,
}

/// The client's address (the TCP peer; proxies are not trusted).
pub fn client_ip(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
        .to_string()
}

/// Counts every response by route class and status.
async fn count(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let class = class_of(req.path());
    let res = next.call(req).await?;
    METRICS
        .requests
        .with_label_values(&[class, res.status().as_str()])
        .inc();
    Ok(res)
}

fn class_of(path: &str) -> &'static str {
    if path.starts_with("/v1/transactions") && !path.starts_with("/v1/transactions/") {
        "ingest"
    } else if path.starts_with("/v1/public/") {
        "public"
    } else if path.starts_with("/v1/transactions") && !path.starts_with("/v1/transactions/")
        || path.starts_with("/v1/cancellations")
    {
        "ingest"
    } else if path.starts_with("/v1/admin") {
        "admin"
    } else if path.starts_with("/v1/") {
        "query"
    } else {
        "public"
    }
}

/// Per-address limit for unauthenticated routes; adds the headers.
async fn public_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let allowed = match state {
        Some(s) => Some(s.limiters.check(RouteClass::Public, &client_ip(req.request()))?),
        None => None,
    };
    let mut res = next.call(req).await?;
    if let Some(a) = allowed {
        let h = res.headers_mut();
        if let (Ok(p), Ok(s)) = (a.policy.parse(), a.state.parse()) {
            h.insert(actix_web::http::header::HeaderName::from_static("ratelimit-policy"), p);
            h.insert(actix_web::http::header::HeaderName::from_static("ratelimit"), s);
        }
    }
    Ok(res)
}

/// Configures every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("")
            .wrap(from_fn(count))
            .service(
                web::scope("/v1/public")
                    .wrap(from_fn(public_limit))
                    .route("/stats", web::get().to(stats))
                    .route("/checkpoints/latest", web::get().to(latest_checkpoint)),
            )
            .service(
                web::scope("/v1/transactions")
                    .wrap(from_fn(crate::auth::by_method))
                    .configure(crate::api::ingest::routes),
            )
            .service(
                web::scope("/v1/cancellations")
                    .wrap(from_fn(crate::auth::ingest))
                    .configure(crate::api::ingest::cancellation_routes),
            )
            .service(
                web::scope("/v1/admin")
                    .wrap(from_fn(crate::auth::admin))
                    .configure(crate::api::admin::routes),
            )
            .service(
                web::scope("/v1")
                    .wrap(from_fn(crate::auth::query))
                    .configure(crate::api::query::routes),
            )
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics)),
    );
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.ledger.store().head().await {
        Ok(Some((b, _))) => Ok(HttpResponse::Ok().json(json!({ "ready": true, "height": b.height }))),
        Ok(None) => Err(ApiError::new(Code::Unavailable, "the ledger has no genesis block")),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(Code::Unavailable, "the ledger store is not reachable"))
        }
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Ok(Some((b, _))) = state.ledger.store().head().await {
        METRICS.ledger_height.set(b.height as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(METRICS.render())
}

/// `GET /v1/public/stats`: chain statistics (R6.6).
async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let s = state.ledger.store().stats().await?;
    Ok(HttpResponse::Ok().json(json!({
        "height": s.height,
        "transactions": s.transactions,
        "size_bytes": s.size_bytes,
        "node_key_id": state.ledger.node_key().key_id(),
    })))
}

/// `GET /v1/public/checkpoints/latest`: the newest signed tree head, which
/// anyone may use to check proofs.
async fn latest_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (_, cp) = state
        .ledger
        .store()
        .head()
        .await?
        .ok_or_else(|| ApiError::new(Code::Unavailable, "empty ledger"))?;
    Ok(HttpResponse::Ok().json(cp))
}
