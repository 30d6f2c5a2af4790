//! Request authentication (R5.7): SM2-signed requests
//! ([`secure_gateway::request`]) checked against the registry, with clock
//! skew and nonce replay refused, then the per-principal rate limit.
//!
//! Read-only partners may instead send `Authorization: ApiKey <key>` on GET
//! routes of the query class: the key is hashed (SM3) and compared with the
//! registry's hash, then the entity's read policy applies as for a signed
//! request, and the same per-entity rate limit. An API key on a write or
//! admin route is refused (403) whatever else the request carries.
//!
//! Order of checks, and why: declared length within the cap (413 before
//! anything is read) → headers present → timestamp within the skew (cheap,
//! stops stale replays early) → key registered and active → body within
//! the cap and its SM3 equal to the header → signature → nonce unseen
//! (recorded only after the signature verified, so nobody can fill the
//! cache with nonces of requests they could not sign) → rate limit → a
//! POST body declared `application/json` (415).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderName;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use futures_util::StreamExt;
use secure_gateway::Sm2VerifyingKey;
use secure_gateway::request::{SignedRequest, headers, valid_nonce, verify_request};

use crate::error::{ApiError, Code};
use crate::metrics::METRICS;
use crate::ratelimit::RouteClass;
use crate::registry::{KeyKind, KeyStatus};
use crate::server::AppState;

/// Who made an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The signing key.
    pub key_id: String,
    /// The entity (None for a registry administrator).
    pub entity_id: Option<String>,
    /// The key's place in the hierarchy (None for an administrator or an
    /// API key).
    pub kind: Option<KeyKind>,
    /// Authenticated with a read-only API key (not a signature).
    pub api_key: bool,
}

impl Principal {
    /// The rate-limit key: the entity, or the administrator's key.
    pub fn limit_key(&self) -> String {
        self.entity_id
            .clone()
            .unwrap_or_else(|| format!("admin:{}", self.key_id))
    }
}

/// Nonces seen within the skew window, per key: in memory, and (in a
/// running gateway) in a small SQLite file of their own, so that a request
/// refused as a replay stays refused after a restart.
#[derive(Debug, Default, Clone)]
pub struct NonceCache {
    mem: Arc<Mutex<HashMap<(String, String), i64>>>,
    db: Option<sqlx::SqlitePool>,
    /// The group-committing writer of `db` (every request waits for its
    /// nonce's row; the requests waiting together share one transaction).
    writer: Option<tokio::sync::mpsc::Sender<NonceJob>>,
}

/// A nonce to record: key id, nonce, expiry, now, and where to answer
/// whether it was fresh.
type NonceJob = (
    String,
    String,
    i64,
    i64,
    tokio::sync::oneshot::Sender<Result<bool, String>>,
);

/// Most nonces written in one transaction.
const NONCES_PER_COMMIT: usize = 1024;

/// Writes the nonces queued on `rx`, everything queued at once in one
/// transaction: one query for those already recorded and unexpired
/// (replays), one insert for the others.
async fn write_nonces(db: sqlx::SqlitePool, mut rx: tokio::sync::mpsc::Receiver<NonceJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < NONCES_PER_COMMIT {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        match commit_nonces(&db, &jobs).await {
            Ok(fresh) => {
                for (j, f) in jobs.into_iter().zip(fresh) {
                    let _ = j.4.send(Ok(f));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.4.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn commit_nonces(db: &sqlx::SqlitePool, jobs: &[NonceJob]) -> Result<Vec<bool>, String> {
    use sqlx::QueryBuilder;
    let e = |e: sqlx::Error| e.to_string();
    let mut tx = db.begin().await.map_err(e)?;
    let mut qb: QueryBuilder<sqlx::Sqlite> =
        QueryBuilder::new("SELECT key_id, nonce FROM used_nonces WHERE expires > ");
    qb.push_bind(jobs[0].3).push(" AND (key_id, nonce) IN (VALUES ");
    let mut sep = qb.separated(", ");
    for j in jobs {
        sep.push("(").push_bind_unseparated(j.0.clone()).push_unseparated(", ");
        sep.push_bind_unseparated(j.1.clone()).push_unseparated(")");
    }
    qb.push(")");
    let used: std::collections::HashSet<(String, String)> = qb
        .build_query_as::<(String, String)>()
        .fetch_all(&mut *tx)
        .await
        .map_err(e)?
        .into_iter()
        .collect();
    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<bool> = jobs
        .iter()
        .map(|j| !used.contains(&(j.0.clone(), j.1.clone())) && seen.insert((j.0.as_str(), j.1.as_str())))
        .collect();
    let rows: Vec<&NonceJob> = jobs.iter().zip(&fresh).filter(|(_, f)| **f).map(|(j, _)| j).collect();
    if !rows.is_empty() {
        let mut qb: QueryBuilder<sqlx::Sqlite> =
            QueryBuilder::new("INSERT OR REPLACE INTO used_nonces (key_id, nonce, expires) ");
        qb.push_values(rows, |mut r, j| {
            r.push_bind(j.0.clone()).push_bind(j.1.clone()).push_bind(j.2);
        });
        qb.build().execute(&mut *tx).await.map_err(e)?;
    }
    tx.commit().await.map_err(e)?;
    Ok(fresh)
}

impl NonceCache {
    /// A cache backed by the SQLite file `path` (created 0600 if missing;
    /// WAL, `synchronous=NORMAL`: a nonce survives the gateway's crash or
    /// restart, not a power cut in the moment after it was written).
    pub async fn open(path: &std::path::Path) -> Result<NonceCache, String> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if !path.exists() {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS used_nonces (key_id TEXT NOT NULL, nonce TEXT NOT NULL, \
             expires INTEGER NOT NULL, PRIMARY KEY (key_id, nonce)) WITHOUT ROWID",
        )
        .execute(&pool)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4 * NONCES_PER_COMMIT);
        tokio::spawn(write_nonces(pool.clone(), rx));
        Ok(NonceCache {
            mem: Arc::default(),
            db: Some(pool),
            writer: Some(tx),
        })
    }

    /// Forgets the nonces whose window has passed (the timestamp check
    /// refuses their requests anyway); returns how many.
    pub async fn purge(&self, now: i64) -> Result<u64, String> {
        match &self.db {
            Some(db) => sqlx::query("DELETE FROM used_nonces WHERE expires <= ?")
                .bind(now)
                .execute(db)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| e.to_string()),
            None => Ok(0),
        }
    }

    /// Records `nonce` for `key_id` until `expires` (Unix seconds); false
    /// when it is still there from an earlier request (this process's or,
    /// through the file, an earlier one's).
    pub async fn record(&self, key_id: &str, nonce: &str, now: i64, expires: i64) -> Result<bool, ApiError> {
        if !self.insert(key_id, nonce, now, expires) {
            return Ok(false);
        }
        let Some(w) = &self.writer else { return Ok(true) };
        // A fresh row, or an expired one taken over; an unexpired one is a
        // replay (of a request this process never saw: an earlier one's).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || ApiError::internal("the nonce writer stopped");
        w.send((key_id.to_string(), nonce.to_string(), expires, now, tx))
            .await
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| ApiError::internal(format!("recording a nonce: {e}")))
    }

    /// Whether `nonce` is already recorded in memory for `key_id` (a cheap
    /// early refusal, before the body is read; [`NonceCache::record`] is the
    /// check that counts).
    pub fn seen(&self, key_id: &str, nonce: &str, now: i64) -> bool {
        let m = match self.mem.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.get(&(key_id.to_string(), nonce.to_string()))
            .is_some_and(|exp| *exp > now)
    }

    /// Records `nonce` for `key_id` until `expires` (Unix seconds) in
    /// memory; false when it was already there.
    fn insert(&self, key_id: &str, nonce: &str, now: i64, expires: i64) -> bool {
        let mut m = match self.mem.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if m.len() > 100_000 {
            m.retain(|_, exp| *exp > now);
        }
        let k = (key_id.to_string(), nonce.to_string());
        match m.get(&k) {
            Some(exp) if *exp > now => false,
            _ => {
                m.insert(k, expires);
                true
            }
        }
    }
}

/// Requests in flight per client address whose signature is not verified
/// yet (their body being read): capped, so that requests carrying only a
/// public key id cannot hold the gateway's connections open.
#[derive(Debug, Clone)]
pub struct Unverified {
    cap: usize,
    map: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
}

/// One unverified request; counted until dropped.
#[derive(Debug)]
pub struct UnverifiedSlot {
    ip: std::net::IpAddr,
    map: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
}

impl Unverified {
    /// At most `cap` per address.
    #[must_use]
    pub fn new(cap: usize) -> Unverified {
        Unverified {
            cap,
            map: Arc::default(),
        }
    }

    /// A slot for a request from `ip`, or `None` when `ip` has `cap` already.
    pub fn enter(&self, ip: std::net::IpAddr) -> Option<UnverifiedSlot> {
        let mut m = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let n = m.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(UnverifiedSlot {
            ip,
            map: self.map.clone(),
        })
    }

    /// Requests in flight from `ip`.
    #[must_use]
    pub fn in_flight(&self, ip: std::net::IpAddr) -> usize {
        let m = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for UnverifiedSlot {
    fn drop(&mut self) {
        let mut m = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn header<'a>(req: &'a ServiceRequest, name: &str) -> Result<&'a str, ApiError> {
    req.headers()
        .get(name)
        .ok_or_else(|| ApiError::new(Code::Unauthenticated, format!("header {name} is missing")))?
        .to_str()
        .map_err(|_| ApiError::new(Code::Unauthenticated, format!("header {name} is not ASCII")))
}

fn signed_request(req: &ServiceRequest) -> Result<SignedRequest, ApiError> {
    // One of each: a second timestamp or nonce header must not be a way to
    // show one value to a check and another to the signature.
    for name in [
        headers::KEY_ID,
        headers::TIMESTAMP,
        headers::NONCE,
        headers::CONTENT_SM3,
        headers::SIGNATURE,
    ] {
        let n = req.headers().get_all(name).count();
        if n > 1 {
            return Err(ApiError::new(
                Code::Unauthenticated,
                format!("header {name} appears {n} times; a signed request carries each security header once"),
            ));
        }
    }
    let timestamp = header(req, headers::TIMESTAMP)?
        .parse::<i64>()
        .map_err(|_| ApiError::new(Code::Unauthenticated, "x-vaxgate-timestamp is not Unix seconds"))?;
    let nonce = header(req, headers::NONCE)?.to_string();
    if !valid_nonce(&nonce) {
        return Err(ApiError::new(
            Code::Unauthenticated,
            "x-vaxgate-nonce must be 16 to 64 characters of A-Z a-z 0-9 _ -",
        ));
    }
    Ok(SignedRequest {
        key_id: header(req, headers::KEY_ID)?.to_string(),
        timestamp,
        nonce,
        content_sm3: header(req, headers::CONTENT_SM3)?.to_string(),
        signature: header(req, headers::SIGNATURE)?.to_string(),
    })
}

async fn read_body(req: &mut ServiceRequest, limit: usize) -> Result<Bytes, ApiError> {
    let mut payload = req.take_payload();
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(Code::MalformedBody, format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::new(
                Code::BodyTooLarge,
                format!("the body exceeds server.max_body_bytes = {limit}"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Looks up the key: an entity key (with its status) or, for admin routes,
/// a registry administrator.
fn resolve(state: &AppState, key_id: &str, admin_route: bool) -> Result<(Sm2VerifyingKey, Principal), ApiError> {
    let reg = crate::registry::read(&state.registry)?;
    if let Some(k) = reg.key(key_id) {
        match k.status {
            KeyStatus::Locked => return Err(ApiError::new(Code::KeyLocked, format!("key {key_id} is locked"))),
            KeyStatus::Revoked => return Err(ApiError::new(Code::KeyRevoked, format!("key {key_id} is revoked"))),
            KeyStatus::Active => {}
        }
        let vk = reg
            .verifying_key(key_id)
            .cloned()
            .ok_or_else(|| ApiError::internal(format!("registered key {key_id} has no parsed public key")))?;
        return Ok((
            vk,
            Principal {
                key_id: key_id.into(),
                entity_id: Some(k.entity_id.clone()),
                kind: Some(k.kind),
                api_key: false,
            },
        ));
    }
    if admin_route && let Some(vk) = reg.admin(key_id) {
        return Ok((
            vk.clone(),
            Principal {
                key_id: key_id.into(),
                entity_id: None,
                kind: None,
                api_key: false,
            },
        ));
    }
    Err(ApiError::new(
        Code::UnknownEntity,
        format!("key {key_id} is not registered"),
    ))
}

/// Before the body is read: a declared length beyond the cap is 413.
fn check_length(req: &ServiceRequest, limit: usize) -> Result<(), ApiError> {
    if let Some(n) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && n > limit as u64
    {
        return Err(ApiError::new(
            Code::BodyTooLarge,
            format!("the body ({n} bytes) exceeds server.max_body_bytes = {limit}"),
        ));
    }
    Ok(())
}

/// After authentication: a POST body must be declared `application/json`,
/// or on the batch routes (`/v1/transactions`, `/v1/cancellations`) also
/// the binary batch form [`secure_gateway::BATCH_MEDIA_TYPE`] (415
/// otherwise). Authentication comes first so that an unauthenticated
/// caller learns nothing but 401.
fn check_content_type(req: &ServiceRequest) -> Result<(), ApiError> {
    if req.method() != actix_web::http::Method::POST {
        return Ok(());
    }
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let batch_route = is_batch_route(req.path());
    match BodyForm::of(ct) {
        Some(BodyForm::Json) => Ok(()),
        Some(BodyForm::BinaryBatch) if batch_route => Ok(()),
        _ => Err(ApiError::new(
            Code::UnsupportedContentType,
            format!(
                "content-type {:?} is not accepted on {}; send application/json{}",
                if ct.is_empty() { "(none)" } else { ct },
                req.path(),
                if batch_route {
                    format!(" or {}", secure_gateway::BATCH_MEDIA_TYPE)
                } else {
                    String::new()
                }
            ),
        )),
    }
}

/// The routes that take a signed batch.
fn is_batch_route(path: &str) -> bool {
    matches!(path, "/v1/transactions" | "/v1/cancellations")
}

/// The declared form of a POST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyForm {
    /// `application/json`.
    Json,
    /// [`secure_gateway::BATCH_MEDIA_TYPE`]: `SignedBatch::to_binary`.
    BinaryBatch,
}

impl BodyForm {
    /// The form a `content-type` value declares (parameters ignored), if
    /// it is one the gateway takes.
    pub(crate) fn of(content_type: &str) -> Option<BodyForm> {
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/json") {
            Some(BodyForm::Json)
        } else if mime.eq_ignore_ascii_case(secure_gateway::BATCH_MEDIA_TYPE) {
            Some(BodyForm::BinaryBatch)
        } else {
            None
        }
    }
}

/// The scheme name of API-key authentication.
pub const API_KEY_SCHEME: &str = "ApiKey";

/// The API key of `Authorization: ApiKey <key>`, if the request has one.
fn presented_api_key(req: &ServiceRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::new(Code::Unauthenticated, "header authorization is not ASCII"))?;
    match v.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case(API_KEY_SCHEME) => Ok(Some(key.trim().to_string())),
        _ => Err(ApiError::new(
            Code::Unauthenticated,
            "header authorization: only the ApiKey scheme is accepted (writes use the x-vaxgate-* signature headers)",
        )),
    }
}

/// API-key authentication (read routes only).
fn authenticate_api_key(
    state: &AppState,
    req: &ServiceRequest,
    class: RouteClass,
    key: &str,
) -> Result<(Principal, crate::ratelimit::Allowed), ApiError> {
    if class != RouteClass::Query || req.method() != actix_web::http::Method::GET {
        return Err(ApiError::new(
            Code::Forbidden,
            format!(
                "API keys authorise GET requests on read routes only; {} {} needs an SM2 request signature",
                req.method(),
                req.path()
            ),
        ));
    }
    let reg = crate::registry::read(&state.registry)?;
    // The message never repeats the presented key.
    let rec = reg
        .match_api_key(key)
        .ok_or_else(|| ApiError::new(Code::Unauthenticated, "the API key is not valid"))?;
    if rec.status != KeyStatus::Active {
        return Err(ApiError::new(
            Code::KeyRevoked,
            format!("API key {} is revoked", rec.key_id),
        ));
    }
    if reg.entity(&rec.entity_id).is_none() {
        return Err(ApiError::new(
            Code::UnknownEntity,
            format!("entity {} of API key {} is not registered", rec.entity_id, rec.key_id),
        ));
    }
    let principal = Principal {
        key_id: format!("apikey:{}", rec.key_id),
        entity_id: Some(rec.entity_id.clone()),
        kind: None,
        api_key: true,
    };
    drop(reg);
    let allowed = state.limiters.check(class, &principal.limit_key())?;
    METRICS.api_key_requests.with_label_values(&[class.as_str()]).inc();
    Ok((principal, allowed))
}

async fn authenticate(
    req: &mut ServiceRequest,
    class: RouteClass,
) -> Result<(Principal, crate::ratelimit::Allowed), ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("application state missing"))?;
    if let Some(key) = presented_api_key(req)? {
        return authenticate_api_key(&state, req, class, &key);
    }
    check_length(req, state.max_body_bytes)?;
    let sr = signed_request(req)?;
    let now = chrono::Utc::now().timestamp();
    let skew = state.max_clock_skew_secs as i64;
    if (now - sr.timestamp).abs() > skew {
        return Err(ApiError::new(
            Code::ExpiredTimestamp,
            format!(
                "x-vaxgate-timestamp {} is more than {skew} s from the gateway's clock ({now})",
                sr.timestamp
            ),
        ));
    }
    let (vk, principal) = resolve(&state, &sr.key_id, class == RouteClass::Admin)?;
    if state.nonces.seen(&sr.key_id, &sr.nonce, now) {
        return Err(ApiError::new(
            Code::ReplayedNonce,
            format!("nonce {} was already used with key {}", sr.nonce, sr.key_id),
        ));
    }
    // The body: from a capped number of requests per address, within a
    // deadline (a key id is public; the signature is checked only once the
    // body is here).
    let ip = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let _slot = state.unverified.enter(ip).ok_or_else(|| {
        METRICS.rate_limited.with_label_values(&["unverified"]).inc();
        let mut e = ApiError::new(
            Code::RateLimited,
            format!(
                "{} requests from {ip} are already waiting for their bodies or signature checks",
                state.unverified.in_flight(ip)
            ),
        );
        e.retry_after = Some(1);
        e
    })?;
    let limit = state.max_body_bytes;
    let body = match tokio::time::timeout(state.body_read_timeout, read_body(req, limit)).await {
        Ok(b) => b?,
        Err(_) => {
            return Err(ApiError::new(
                Code::RequestTimeout,
                format!(
                    "the body did not arrive within server.body_read_timeout_secs = {}",
                    state.body_read_timeout.as_secs()
                ),
            ));
        }
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.path().to_string());
    verify_request(&vk, req.method().as_str(), &path, &body, &sr)
        .map_err(|e| ApiError::new(Code::BadSignature, e.to_string()))?;
    if !state
        .nonces
        .record(&sr.key_id, &sr.nonce, now, sr.timestamp + skew + 1)
        .await?
    {
        return Err(ApiError::new(
            Code::ReplayedNonce,
            format!("nonce {} was already used with key {}", sr.nonce, sr.key_id),
        ));
    }
    let allowed = state.limiters.check(class, &principal.limit_key())?;
    check_content_type(req)?;
    req.set_payload(body.into());
    Ok((principal, allowed))
}

async fn run<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
    class: RouteClass,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let (principal, allowed) = authenticate(&mut req, class).await?;
    tracing::debug!(key_id = %principal.key_id, class = class.as_str(), "authenticated");
    req.extensions_mut().insert(principal);
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    if let (Ok(p), Ok(s)) = (allowed.policy.parse(), allowed.state.parse()) {
        h.insert(HeaderName::from_static("ratelimit-policy"), p);
        h.insert(HeaderName::from_static("ratelimit"), s);
    }
    Ok(res)
}

/// Middleware for write routes.
pub async fn ingest<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    run(req, next, RouteClass::Ingest).await
}

/// Middleware for read routes.
pub async fn query<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    run(req, next, RouteClass::Query).await
}

/// Middleware for registry administration.
pub async fn admin<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    run(req, next, RouteClass::Admin).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache on the file `name` in a fresh folder (kept while the folder
    /// lives).
    async fn cache_on_file(name: &str) -> (tempfile::TempDir, std::path::PathBuf, NonceCache) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(name);
        let c = NonceCache::open(&f).await.unwrap();
        (dir, f, c)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nonces_survive_a_restart_through_their_file() {
        let (_dir, f, c) = cache_on_file("data/nonces.db").await;
        assert!(c.record("k", "n1", 100, 400).await.unwrap());
        assert!(!c.record("k", "n1", 200, 500).await.unwrap());
        drop(c);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        // A new process: memory empty, the file remembers.
        let c = NonceCache::open(&f).await.unwrap();
        assert!(!c.seen("k", "n1", 200));
        assert!(
            !c.record("k", "n1", 200, 500).await.unwrap(),
            "replayed after a restart"
        );
        assert!(c.record("k2", "n1", 200, 500).await.unwrap(), "per key");
        assert!(c.record("k", "n1", 501, 800).await.unwrap(), "expired: taken over");
        assert_eq!(c.purge(1000).await.unwrap(), 2);
    }

    /// Requests waiting together share a transaction: of 400 concurrent
    /// records of 100 nonces (each four times, memory bypassed as after a
    /// restart), exactly one per nonce is fresh, and all are on disk.
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_nonces_are_fresh_once() {
        let (_dir, f, c) = cache_on_file("nonces.db").await;
        let mut tasks = Vec::new();
        for i in 0..400 {
            // A fresh cache per call: memory empty, only the file decides.
            let c = NonceCache {
                mem: Arc::default(),
                ..c.clone()
            };
            tasks.push(tokio::spawn(async move {
                c.record("k", &format!("nonce-{:04}", i % 100), 100, 400).await.unwrap()
            }));
        }
        let mut fresh = 0;
        for t in tasks {
            fresh += usize::from(t.await.unwrap());
        }
        assert_eq!(fresh, 100);
        let c = NonceCache::open(&f).await.unwrap();
        assert!(!c.record("k", "nonce-0042", 200, 500).await.unwrap());
    }

    #[test]
    fn nonces_are_single_use_within_their_window() {
        let c = NonceCache::default();
        assert!(c.insert("k", "n1", 100, 400));
        assert!(!c.insert("k", "n1", 200, 500));
        assert!(c.insert("k2", "n1", 200, 500), "per key");
        assert!(
            c.insert("k", "n1", 401, 700),
            "expired entries may be reused (the timestamp check refuses them)"
        );
    }
}
