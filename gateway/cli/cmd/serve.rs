//! `vaxgate serve --config FILE`: the API gateway.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gateway::config::{GatewayConfig, LoadedConfig};
use gateway::projection::Projection;
use gateway::ratelimit::Limiters;
use gateway::registry::Registry;
use gateway::server::{AppState, routes};
use gateway::tls::PeerCert;
use ledger::{AnyStore, Ledger, LedgerConfig};
use secure_gateway::{KeyHandle, Signer};

/// Arguments of `vaxgate serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The gateway configuration (TOML).
    #[arg(long, default_value = "config/vaxgate.toml")]
    pub config: PathBuf,
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(a: ServeArgs) -> anyhow::Result<u8> {
    let loaded = crate::config_load(&a.config)?;
    let c = loaded.config.clone();
    gateway::tls::install_provider();
    // Everything that can fail is checked before the listener opens.
    let provider = c.crypto.provider.build().with_context(|| {
        format!(
            "{}: [crypto] provider = {:?}",
            a.config.display(),
            c.crypto.provider.as_str()
        )
    })?;
    let node = Signer::load_file(
        provider,
        KeyHandle::new("node"),
        &loaded.resolve(&c.node.key),
        &c.node.passphrase_env,
    )
    .with_context(|| format!("{}: [node] key", a.config.display()))?;
    let tls = match &c.server.tls {
        Some(t) if !c.server.plain_http => Some(gateway::tls::server_config(&loaded, t)?),
        _ => None,
    };
    let workers = if c.server.workers == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        c.server.workers
    };
    actix_web::rt::System::new().block_on(async move {
        let telemetry = gateway::telemetry::init(&c.telemetry)?;
        if telemetry.exporting() {
            tracing::info!("exporting traces over OTLP");
        }
        tracing::info!(
            provider = node.provider().name(),
            node_key = node.key_id(),
            "crypto provider ready"
        );
        let (store, ledger) = open_ledger(&loaded, &node).await?;
        let registry = rebuild_registry(&loaded, &store).await?;
        let projection = catch_up_projection(&store, &node, &registry).await?;
        if let Some(fw) = &c.forwarding {
            let f = gateway::forward::Forwarder::open(
                store.clone(),
                fw.clone(),
                node.provider().clone(),
                node.handle().clone(),
            )
            .await
            .with_context(|| format!("{}: [forwarding]: creating the forwarding cursor", a.config.display()))?;
            actix_web::rt::spawn(f.run());
        }
        let nonce_file = loaded.resolve(&c.auth.nonce_store);
        let nonces = gateway::auth::NonceCache::open(&nonce_file)
            .await
            .map_err(|e| anyhow::anyhow!("{}: [auth] nonce_store: {e}", a.config.display()))?;
        let state = actix_web::web::Data::new(AppState {
            ledger,
            node: node.clone(),
            limiters: Limiters::new(&c.rate_limits),
            registry: std::sync::RwLock::new(registry),
            registry_writer: tokio::sync::Mutex::new(()),
            ingest_order: gateway::order::IngestOrder::new(),
            custody: gateway::custody::Custody::new(
                c.custody
                    .actions()
                    .map_err(|(key, m)| anyhow::anyhow!("{}: {key}: {m}", a.config.display()))?,
                c.custody.cache_codes,
            ),
            nonces: nonces.clone(),
            max_clock_skew_secs: c.auth.max_clock_skew_secs,
            max_body_bytes: c.server.max_body_bytes,
            body_read_timeout: std::time::Duration::from_secs(c.server.body_read_timeout_secs),
            unverified: gateway::auth::Unverified::new(c.server.unverified_per_address),
            dataset: std::sync::Arc::new(mappings::Dataset::builtin()),
            projection,
        });
        spawn_housekeeping(&c, &state, nonces);
        let per_worker = connections_per_worker(workers);
        let server = http_server(&c, state, tls, workers, per_worker)?;
        eprintln!(
            "vaxgate gateway listening on {}://{} (ledger {})",
            if c.server.plain_http { "http" } else { "https" },
            c.server.listen,
            ledger::LedgerStore::location(&store)
        );
        server.await?;
        telemetry.shutdown().await;
        store.close().await?;
        Ok::<_, anyhow::Error>(0)
    })
}

/// The ledger store of `[ledger] url` and the ledger on it, signed by `node`.
async fn open_ledger(loaded: &LoadedConfig, node: &Signer) -> anyhow::Result<(AnyStore, Ledger<AnyStore>)> {
    let c = &loaded.config;
    let base = loaded.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let store = AnyStore::open(&c.ledger.url, &base)
        .await
        .context("opening the ledger")?;
    let ledger = Ledger::open(
        store.clone(),
        node.clone(),
        &c.node.name,
        LedgerConfig {
            max_block_txs: c.ledger.max_block_txs,
            ..LedgerConfig::default()
        },
    )
    .await
    .context("opening the ledger")?;
    Ok((store, ledger))
}

/// The registry, rebuilt from the ledger's registry transactions under the
/// configured administrators.
async fn rebuild_registry(loaded: &LoadedConfig, store: &AnyStore) -> anyhow::Result<Registry> {
    let c = &loaded.config;
    let admins = c
        .registry
        .admins
        .iter()
        .map(|p| {
            secure_gateway::load_verifying_key(&loaded.resolve(p))
                .with_context(|| format!("{}: [registry] admins", loaded.path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    gateway::api::admin::replay(store, Registry::new(admins, c.registry.threshold))
        .await
        .context("rebuilding the registry from the ledger")
}

/// The projection tables, caught up with the ledger (events and custody
/// facts written without them).
async fn catch_up_projection(store: &AnyStore, node: &Signer, registry: &Registry) -> anyhow::Result<Projection> {
    let projection = Projection::open(store)
        .await
        .map_err(|e| anyhow::anyhow!("creating the projection tables: {e}"))?;
    let caught_up = projection
        .catch_up(store, node.provider().as_ref(), node.handle())
        .await
        .map_err(|e| anyhow::anyhow!("catching up the projection: {e}"))?;
    if caught_up > 0 {
        tracing::info!(events = caught_up, "projection caught up from the ledger");
    }
    // Custody facts of events projected without them (a ledger written
    // before custody rules existed, or the catch-up above).
    let from = projection
        .custody_from()
        .await
        .map_err(|e| anyhow::anyhow!("reading the custody tables: {e}"))?
        .unwrap_or(0);
    let party = |code: &str| {
        registry
            .entity_of_code(code)
            .map(|e| e.id.clone())
            .unwrap_or_else(|| code.to_string())
    };
    let derived = projection
        .derive_custody(from, &party)
        .await
        .map_err(|e| anyhow::anyhow!("deriving custody facts from the projection: {e}"))?;
    if derived > 0 {
        tracing::info!(
            events = derived,
            from_leaf = from,
            "custody facts derived from the projection"
        );
    }
    Ok(projection)
}

/// The periodic tasks: forgetting expired nonces, escalating pending
/// custody alerts, forgetting idle rate-limit buckets.
fn spawn_housekeeping(c: &GatewayConfig, state: &actix_web::web::Data<AppState>, nonces: gateway::auth::NonceCache) {
    actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(std::time::Duration::from_secs(60)).await;
            if let Err(e) = nonces.purge(chrono::Utc::now().timestamp()).await {
                tracing::warn!(error = %e, "forgetting expired nonces failed");
            }
        }
    });
    if c.custody.escalate_after_secs > 0 {
        let (state, after, every) = (
            state.clone(),
            std::time::Duration::from_secs(c.custody.escalate_after_secs),
            std::time::Duration::from_secs(c.custody.escalation_check_secs),
        );
        actix_web::rt::spawn(async move {
            loop {
                actix_web::rt::time::sleep(every).await;
                match gateway::custody::escalate_due(&state, after).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(alerts = n, "custody: pending alerts escalated"),
                    Err(e) => tracing::error!(error = %e, "custody: escalating pending alerts failed"),
                }
            }
        });
    }
    let limiters = state.limiters.clone();
    actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(std::time::Duration::from_secs(60)).await;
            limiters.retain_recent();
        }
    });
}

/// Open files: raises the soft limit to the hard one, returns what each
/// worker may accept under it (the rest wait in the listen backlog rather
/// than failing with "Too many open files"), and watches the process come
/// close to it.
fn connections_per_worker(workers: usize) -> usize {
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map(|l| l.0).unwrap_or(1024)
        }
    };
    let per_worker = (nofile.saturating_sub(128) / workers as u64).clamp(32, 25_000) as usize;
    tracing::info!(
        open_file_limit = nofile,
        connections_per_worker = per_worker,
        "connection limits"
    );
    actix_web::rt::spawn(async move {
        let mut warned = false;
        loop {
            actix_web::rt::time::sleep(std::time::Duration::from_secs(5)).await;
            let open = std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .unwrap_or(0);
            let close = open * 10 >= nofile * 8;
            if close && !warned {
                tracing::warn!(open_files = open, limit = nofile, "open files above 80 % of the limit");
            }
            warned = close;
        }
    });
    per_worker
}

/// The HTTP server over `routes`, bound to `[server] listen` (TLS when
/// configured; the client certificate of a mutual-TLS connection kept for
/// the handlers).
fn http_server(
    c: &GatewayConfig,
    state: actix_web::web::Data<AppState>,
    tls: Option<rustls::ServerConfig>,
    workers: usize,
    per_worker: usize,
) -> anyhow::Result<actix_web::dev::Server> {
    let max_body = c.server.max_body_bytes;
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(actix_web::middleware::from_fn(gateway::telemetry::http_span))
            .app_data(state.clone())
            .app_data(actix_web::web::PayloadConfig::new(max_body))
            .app_data(actix_web::web::JsonConfig::default().limit(max_body))
            .configure(routes)
    })
    .workers(workers)
    .max_connections(per_worker)
    .on_connect(|conn, ext| {
        use actix_tls::accept::rustls_0_23::TlsStream;
        if let Some(tls) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()
            && let Some(certs) = tls.get_ref().1.peer_certificates()
            && let Some(first) = certs.first()
        {
            ext.insert(PeerCert(first.to_vec()));
        }
    });
    let server = match tls {
        Some(t) => server.bind_rustls_0_23(&c.server.listen, t),
        None => server.bind(&c.server.listen),
    }
    .with_context(|| format!("listening on {}", c.server.listen))?;
    Ok(server.run())
}
