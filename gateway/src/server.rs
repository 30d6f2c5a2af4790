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

/// Shared by every worker; assembled by [`crate::start`] from the config.
#[derive(Debug)]
pub struct AppState {
    /// The ledger.
    pub(crate) ledger: Ledger<AnyStore>,
    /// The node key, held by the configured crypto provider: signs
    /// registry transactions and node alerts, opens envelopes.
    pub(crate) node: secure_gateway::Signer,
    /// Rate limiters.
    pub(crate) limiters: Limiters,
    /// The registry, rebuilt from the ledger at start.
    pub(crate) registry: std::sync::RwLock<crate::registry::Registry>,
    /// Serialises registry changes (check → append → apply).
    pub(crate) registry_writer: tokio::sync::Mutex<()>,
    /// Orders cold-chain judgements with appends: a batch holding inbound
    /// receipts is judged after every shipment/reading batch before it is
    /// appended, and before any later one (`crate::order`).
    pub(crate) ingest_order: crate::order::IngestOrder,
    /// The custody rules and the facts of batches being appended.
    pub(crate) custody: crate::custody::Custody,
    /// Nonces seen recently.
    pub(crate) nonces: crate::auth::NonceCache,
    /// Largest accepted difference between a request's clock and ours.
    pub(crate) max_clock_skew_secs: u64,
    /// Largest request body.
    pub(crate) max_body_bytes: usize,
    /// How long a request body may take to arrive.
    pub(crate) body_read_timeout: std::time::Duration,
    /// Requests per client address not yet verified.
    pub(crate) unverified: crate::auth::Unverified,
    /// The relational projection of accepted events.
    pub(crate) projection: crate::projection::Projection,
    /// The dataset definition records are validated against.
    pub(crate) dataset: std::sync::Arc<mappings::Dataset>,
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
    let class = class_of(req.method().as_str(), req.path());
    let res = next.call(req).await?;
    METRICS
        .requests
        .with_label_values(&[class, res.status().as_str()])
        .inc();
    Ok(res)
}

fn class_of(method: &str, path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| r.method == method && path_matches(r.path, path))
        .map_or(RouteClass::Public, |r| r.auth.class())
        .as_str()
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

/// How a route authenticates, and so which rate limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No authentication, no limit (probes, metrics, the OpenAPI document).
    None,
    /// No authentication; limited per client address.
    Public,
    /// An SM2 request signature; ingest limit per entity.
    Write,
    /// An SM2 request signature or a read-only API key; query limit per entity.
    Read,
    /// An SM2 request signature of an entity key or a registry
    /// administrator; admin limit.
    Admin,
}

impl Auth {
    /// The rate-limit and metrics class of routes with this authentication.
    pub fn class(self) -> RouteClass {
        match self {
            Auth::None | Auth::Public => RouteClass::Public,
            Auth::Write => RouteClass::Ingest,
            Auth::Read => RouteClass::Query,
            Auth::Admin => RouteClass::Admin,
        }
    }
}

/// One route: the single table from which the router is built and the
/// OpenAPI document (`/openapi.json`) is generated, so the two cannot
/// disagree.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path template, OpenAPI style (`/v1/trace/{code}`).
    pub path: &'static str,
    /// Authentication.
    pub auth: Auth,
    /// One line for the OpenAPI summary.
    pub summary: &'static str,
    /// Query parameters (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// The handler, with its method.
    pub handler: fn() -> actix_web::Route,
}

/// Every route the gateway serves, in matching order.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/healthz",
        auth: Auth::None,
        summary: "Liveness probe",
        query: &[],
        handler: || web::get().to(healthz),
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        auth: Auth::None,
        summary: "Readiness probe (the ledger store answers)",
        query: &[],
        handler: || web::get().to(readyz),
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        auth: Auth::None,
        summary: "Prometheus metrics",
        query: &[],
        handler: || web::get().to(metrics),
    },
    RouteSpec {
        method: "GET",
        path: "/openapi.json",
        auth: Auth::None,
        summary: "This OpenAPI 3.1 document",
        query: &[],
        handler: || web::get().to(crate::openapi::serve),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/public/stats",
        auth: Auth::Public,
        summary: "Chain statistics (height, transactions, size, node key id)",
        query: &[],
        handler: || web::get().to(stats),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/public/checkpoints/latest",
        auth: Auth::Public,
        summary: "The newest signed checkpoint (tree head)",
        query: &[],
        handler: || web::get().to(crate::api::query::latest_checkpoint),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/public/consistency",
        auth: Auth::Public,
        summary: "Consistency proof (RFC 9162) between two tree sizes",
        query: &[
            ("first", "the earlier tree size (a checkpoint kept before)"),
            ("second", "the later tree size, at most the newest"),
        ],
        handler: || web::get().to(crate::api::query::consistency),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/transactions",
        auth: Auth::Write,
        summary: "Ingest a batch of sealed, batch-signed records; one receipt per record",
        query: &[
            (
                "mode",
                "`partial` (default): bad records are refused alone; `all_or_nothing`: one bad record refuses the batch",
            ),
            (
                "receipts",
                "`full` (default): each receipt with its checkpoint and audit path; `brief`: without them, \
                 checkpoints once per block in `checkpoints`",
            ),
        ],
        handler: || web::post().to(crate::api::ingest::post),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/transactions/{id}",
        auth: Auth::Read,
        summary: "A transaction's metadata",
        query: &[],
        handler: || web::get().to(crate::api::query::transaction),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/transactions/{id}/proof",
        auth: Auth::Read,
        summary: "An offline-verifiable inclusion proof of a transaction",
        query: &[],
        handler: || web::get().to(crate::api::query::transaction_proof),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/cancellations",
        auth: Auth::Write,
        summary: "Ingest signed cancellations of the submitter's own events (R4.5)",
        query: &[
            ("mode", "`partial` (default) or `all_or_nothing`"),
            ("receipts", "`full` (default) or `brief`"),
        ],
        handler: || web::post().to(crate::api::ingest::post_cancellations),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/admin/registry",
        auth: Auth::Admin,
        summary: "Submit an approved registry change (entities, keys, devices, policies, API keys)",
        query: &[],
        handler: || web::post().to(crate::api::admin::post_change),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/admin/entities",
        auth: Auth::Admin,
        summary: "List registered entities",
        query: &[],
        handler: || web::get().to(crate::api::admin::list_entities),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/admin/entities/{id}",
        auth: Auth::Admin,
        summary: "One entity with its keys and API keys (ids and status only)",
        query: &[],
        handler: || web::get().to(crate::api::admin::get_entity),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/trace/{code}",
        auth: Auth::Read,
        summary: "Custody chain of a trace code sorted by time, each step with its relation (self, parent, child, lot), with proofs, cancellations and alerts",
        query: &[(
            "siblings",
            "true: also the events of the other doses of the code's packages (relation sibling); default false",
        )],
        handler: || web::get().to(crate::api::query::trace),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/holders/{id}/stock",
        auth: Auth::Read,
        summary: "What an entity holds now, from custody state, by product and lot (the entity itself and regulators)",
        query: &[
            (
                "codes",
                "true: list the trace codes of each lot and of the packages; default false",
            ),
            (
                "evidence",
                "true: list the codes and add every event behind them as a checkable step, and the party directory, so that `vaxgate verify-proof` recounts the stock; default false",
            ),
        ],
        handler: || web::get().to(crate::api::query::stock),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/batches/{lot}/recall",
        auth: Auth::Read,
        summary: "Recall scope of a lot from custody state: units per holder, in transit, refused, administered per vaccinating unit, destroyed, unknown; packages apart",
        query: &[(
            "evidence",
            "true: also every event behind the counts as a checkable step, and the party directory, so that `vaxgate verify-proof` recounts them; default false",
        )],
        handler: || web::get().to(crate::api::query::recall),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/events/{id}",
        auth: Auth::Read,
        summary: "One event with its proof, cancellations and cold-chain alerts",
        query: &[],
        handler: || web::get().to(crate::api::query::event),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/blocks/by-hash/{hash}",
        auth: Auth::Read,
        summary: "A block by its SM3 hash",
        query: &[],
        handler: || web::get().to(crate::api::query::block_by_hash),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/blocks/{height}",
        auth: Auth::Read,
        summary: "A block by height, with its transactions and checkpoint",
        query: &[],
        handler: || web::get().to(crate::api::query::block),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/stats",
        auth: Auth::Read,
        summary: "Chain and registry statistics",
        query: &[],
        handler: || web::get().to(crate::api::query::stats),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/checkpoints/latest",
        auth: Auth::Read,
        summary: "The newest signed checkpoint",
        query: &[],
        handler: || web::get().to(crate::api::query::latest_checkpoint),
    },
];

/// Configures every route of [`ROUTES`]. Authentication and rate limits
/// wrap each route, so they run only after the router matched path and
/// method: an unknown path is 404 (`not_found`) and a known path with
/// another method 405, whatever the headers.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let mut scope = web::scope("").wrap(from_fn(count)).default_service(web::to(no_route));
    for r in ROUTES {
        let route = (r.handler)();
        let route = match r.auth {
            Auth::None => route,
            Auth::Public => route.wrap(from_fn(public_limit)),
            Auth::Write => route.wrap(from_fn(crate::auth::ingest)),
            Auth::Read => route.wrap(from_fn(crate::auth::query)),
            Auth::Admin => route.wrap(from_fn(crate::auth::admin)),
        };
        scope = scope.route(r.path, route);
    }
    cfg.service(scope);
}

/// Does `path` match the template `tpl` (`{name}` matches one segment)?
pub fn path_matches(tpl: &str, path: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (tpl.split('/').collect(), path.split('/').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}') && !p.is_empty()))
}

/// Unrouted requests: 405 when the path is served with other methods,
/// else 404.
async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|r| path_matches(r.path, req.path()))
        .map(|r| r.method)
        .collect();
    if !methods.is_empty() {
        return Err(ApiError::new(
            Code::MethodNotAllowed,
            format!(
                "{} {} is not served; allowed: {}",
                req.method(),
                req.path(),
                methods.join(", ")
            ),
        ));
    }
    Err(ApiError::new(
        Code::NotFound,
        format!("no route {} {}; see /openapi.json", req.method(), req.path()),
    ))
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
