//! Starting a gateway node from its configuration: everything that can fail
//! is checked before the listener opens (crypto provider, node key, TLS,
//! ledger, registry, projection, forwarding, nonce store, custody actions),
//! then [`AppState`] is assembled here, in the library, and served until
//! SIGINT/SIGTERM. The `vaxgate serve` command only loads the config and
//! calls [`serve`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::web::Data;
use ledger::{AnyStore, Ledger, LedgerConfig};
use secure_gateway::{KeyHandle, Signer};

use crate::config::{GatewayConfig, LoadedConfig};
use crate::projection::Projection;
use crate::ratelimit::Limiters;
use crate::registry::Registry;
use crate::server::{AppState, routes};
use crate::tls::PeerCert;

/// Why a gateway did not start (or stopped with an error). Each names the
/// config file and the part of it, or the step, that failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The crypto provider or the node key could not be loaded.
    #[error("{file}: {what}")]
    Crypto {
        /// The gateway config.
        file: PathBuf,
        /// `[crypto] provider = "..."` or `[node] key`.
        what: String,
        /// Why.
        source: secure_gateway::CryptoError,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("{file}: [server.tls]")]
    Tls {
        /// The gateway config.
        file: PathBuf,
        /// Why.
        source: crate::tls::TlsError,
    },
    /// Logs or traces could not be set up.
    #[error("{file}: [telemetry]")]
    Telemetry {
        /// The gateway config.
        file: PathBuf,
        /// Why.
        source: crate::telemetry::TelemetryError,
    },
    /// The ledger could not be opened or closed.
    #[error("{file}: [ledger] url: {what}")]
    Ledger {
        /// The gateway config.
        file: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        source: ledger::LedgerError,
    },
    /// An administrator key of `[registry] admins` could not be read.
    #[error("{file}: [registry] admins: {path}")]
    AdminKey {
        /// The gateway config.
        file: PathBuf,
        /// The key file.
        path: PathBuf,
        /// Why.
        source: secure_gateway::CryptoError,
    },
    /// The registry could not be rebuilt from the ledger.
    #[error("rebuilding the registry from the ledger")]
    Registry(#[from] crate::api::admin::ReplayError),
    /// The projection tables could not be opened or caught up.
    #[error("{what}: {message}")]
    Projection {
        /// The step.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The forwarding cursor could not be created.
    #[error("{file}: [forwarding]: creating the forwarding cursor")]
    Forwarding {
        /// The gateway config.
        file: PathBuf,
        /// Why.
        source: crate::forward::ForwardError,
    },
    /// The nonce store could not be opened.
    #[error("{file}: [auth] nonce_store {path}: {message}")]
    Nonces {
        /// The gateway config.
        file: PathBuf,
        /// The nonce store.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A custody action is not one of the known ones.
    #[error("{file}: {key}: {message}")]
    Custody {
        /// The gateway config.
        file: PathBuf,
        /// The key, `[custody.actions] rule`.
        key: String,
        /// Why.
        message: String,
    },
    /// The listener could not be bound, or the server failed.
    #[error("listening on {listen}")]
    Listen {
        /// `[server] listen`.
        listen: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the gateway of `loaded` until SIGINT/SIGTERM, on its own actix
/// system (blocks the calling thread).
pub fn serve(loaded: &LoadedConfig) -> Result<(), StartError> {
    let c = loaded.config.clone();
    let file = loaded.path.clone();
    crate::tls::install_provider();
    let node = node_signer(loaded)?;
    let tls = match &c.server.tls {
        Some(t) if !c.server.plain_http => {
            Some(crate::tls::server_config(loaded, t).map_err(|source| StartError::Tls {
                file: file.clone(),
                source,
            })?)
        }
        _ => None,
    };
    let workers = if c.server.workers == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        c.server.workers
    };
    actix_web::rt::System::new().block_on(async move {
        let telemetry = crate::telemetry::init(&c.telemetry).map_err(|source| StartError::Telemetry {
            file: file.clone(),
            source,
        })?;
        if telemetry.exporting() {
            tracing::info!("exporting traces over OTLP");
        }
        tracing::info!(
            provider = node.provider().name(),
            node_key = node.key_id(),
            "crypto provider ready"
        );
        let (store, state, nonces) = open_state(loaded, node).await?;
        spawn_housekeeping(&c, &state, nonces);
        let per_worker = connections_per_worker(workers);
        let server = http_server(&c, state, tls, workers, per_worker)?;
        eprintln!(
            "vaxgate gateway listening on {}://{} (ledger {})",
            if c.server.plain_http { "http" } else { "https" },
            c.server.listen,
            ledger::LedgerStore::location(&store)
        );
        let listen = |source| StartError::Listen {
            listen: c.server.listen.clone(),
            source,
        };
        server.await.map_err(listen)?;
        telemetry.shutdown().await;
        store.close().await.map_err(|source| StartError::Ledger {
            file: file.clone(),
            what: "closing the ledger",
            source,
        })
    })
}

/// The node key of `[node] key`, held by the provider of `[crypto]`.
fn node_signer(loaded: &LoadedConfig) -> Result<Signer, StartError> {
    let c = &loaded.config;
    let crypto = |what: String| {
        move |source| StartError::Crypto {
            file: loaded.path.clone(),
            what,
            source,
        }
    };
    let provider = c
        .crypto
        .provider
        .build()
        .map_err(crypto(format!("[crypto] provider = {:?}", c.crypto.provider.as_str())))?;
    Signer::load_file(
        provider,
        KeyHandle::new("node"),
        &loaded.resolve(&c.node.key),
        &c.node.passphrase_env,
    )
    .map_err(crypto("[node] key".to_string()))
}

/// Opens the ledger, rebuilds the registry, catches the projection up,
/// starts forwarding, and assembles the handlers' state.
async fn open_state(
    loaded: &LoadedConfig,
    node: Signer,
) -> Result<(AnyStore, Data<AppState>, crate::auth::NonceCache), StartError> {
    let c = &loaded.config;
    let file = || loaded.path.clone();
    let (store, ledger) = open_ledger(loaded, &node).await?;
    let registry = rebuild_registry(loaded, &store).await?;
    let projection = catch_up_projection(&store, &node, &registry).await?;
    if let Some(fw) = &c.forwarding {
        let f = crate::forward::Forwarder::open(
            store.clone(),
            fw.clone(),
            node.provider().clone(),
            node.handle().clone(),
        )
        .await
        .map_err(|source| StartError::Forwarding { file: file(), source })?;
        actix_web::rt::spawn(f.run());
    }
    let nonce_file = loaded.resolve(&c.auth.nonce_store);
    let nonces = crate::auth::NonceCache::open(&nonce_file)
        .await
        .map_err(|e| StartError::Nonces {
            file: file(),
            path: nonce_file.clone(),
            message: e.to_string(),
        })?;
    let actions = c.custody.actions().map_err(|(key, message)| StartError::Custody {
        file: file(),
        key,
        message,
    })?;
    let state = Data::new(AppState {
        ledger,
        node,
        limiters: Limiters::new(&c.rate_limits),
        registry: std::sync::RwLock::new(registry),
        registry_writer: tokio::sync::Mutex::new(()),
        ingest_order: crate::order::IngestOrder::new(),
        custody: crate::custody::Custody::new(actions, c.custody.cache_codes),
        nonces: nonces.clone(),
        max_clock_skew_secs: c.auth.max_clock_skew_secs,
        max_body_bytes: c.server.max_body_bytes,
        body_read_timeout: Duration::from_secs(c.server.body_read_timeout_secs),
        unverified: crate::auth::Unverified::new(c.server.unverified_per_address),
        dataset: std::sync::Arc::new(mappings::Dataset::builtin()),
        projection,
    });
    Ok((store, state, nonces))
}

/// The ledger store of `[ledger] url` and the ledger on it, signed by `node`.
async fn open_ledger(loaded: &LoadedConfig, node: &Signer) -> Result<(AnyStore, Ledger<AnyStore>), StartError> {
    let c = &loaded.config;
    let failed = |what| {
        move |source| StartError::Ledger {
            file: loaded.path.clone(),
            what,
            source,
        }
    };
    let base = loaded.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let store = AnyStore::open(&c.ledger.url, &base)
        .await
        .map_err(failed("opening the store"))?;
    let config = LedgerConfig {
        max_block_txs: c.ledger.max_block_txs,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(store.clone(), node.clone(), &c.node.name, config)
        .await
        .map_err(failed("opening the ledger"))?;
    Ok((store, ledger))
}

/// The registry, rebuilt from the ledger's registry transactions under the
/// configured administrators.
async fn rebuild_registry(loaded: &LoadedConfig, store: &AnyStore) -> Result<Registry, StartError> {
    let c = &loaded.config;
    let admins = c
        .registry
        .admins
        .iter()
        .map(|p| {
            let path = loaded.resolve(p);
            secure_gateway::load_verifying_key(&path).map_err(|source| StartError::AdminKey {
                file: loaded.path.clone(),
                path,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::api::admin::replay(store, Registry::new(admins, c.registry.threshold)).await?)
}

/// The projection tables, caught up with the ledger (events and custody
/// facts written without them).
async fn catch_up_projection(store: &AnyStore, node: &Signer, registry: &Registry) -> Result<Projection, StartError> {
    let failed = |what| move |e: String| StartError::Projection { what, message: e };
    let projection = Projection::open(store)
        .await
        .map_err(|e| failed("creating the projection tables")(e.to_string()))?;
    let caught_up = projection
        .catch_up(store, node.provider().as_ref(), node.handle())
        .await
        .map_err(|e| failed("catching up the projection")(e.to_string()))?;
    if caught_up > 0 {
        tracing::info!(events = caught_up, "projection caught up from the ledger");
    }
    // Custody facts of events projected without them (a ledger written
    // before custody rules existed, or the catch-up above).
    let from = projection
        .custody_from()
        .await
        .map_err(|e| failed("reading the custody tables")(e.to_string()))?
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
        .map_err(|e| failed("deriving custody facts from the projection")(e.to_string()))?;
    if derived > 0 {
        tracing::info!(
            events = derived,
            from_leaf = from,
            "custody facts derived from the projection"
        );
    }
    Ok(projection)
}

/// Runs `task` every `every`, forever, on the actix runtime.
fn every<F, Fut>(every: Duration, mut task: F)
where
    F: FnMut() -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(every).await;
            task().await;
        }
    });
}

/// The periodic tasks: forgetting expired nonces, escalating pending
/// custody alerts, forgetting idle rate-limit buckets.
fn spawn_housekeeping(c: &GatewayConfig, state: &Data<AppState>, nonces: crate::auth::NonceCache) {
    every(Duration::from_secs(60), move || {
        let nonces = nonces.clone();
        async move {
            if let Err(e) = nonces.purge(chrono::Utc::now().timestamp()).await {
                tracing::warn!(error = %e, "forgetting expired nonces failed");
            }
        }
    });
    if c.custody.escalate_after_secs > 0 {
        let (state, after) = (state.clone(), Duration::from_secs(c.custody.escalate_after_secs));
        every(Duration::from_secs(c.custody.escalation_check_secs), move || {
            let state = state.clone();
            async move {
                match crate::custody::escalate_due(&state, after).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(alerts = n, "custody: pending alerts escalated"),
                    Err(e) => tracing::error!(error = %e, "custody: escalating pending alerts failed"),
                }
            }
        });
    }
    let limiters = state.limiters.clone();
    every(Duration::from_secs(60), move || {
        limiters.retain_recent();
        std::future::ready(())
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
    let mut warned = false;
    every(Duration::from_secs(5), move || {
        let open = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        let close = open * 10 >= nofile * 8;
        if close && !warned {
            tracing::warn!(open_files = open, limit = nofile, "open files above 80 % of the limit");
        }
        warned = close;
        std::future::ready(())
    });
    per_worker
}

/// The HTTP server over `routes`, bound to `[server] listen` (TLS when
/// configured; the client certificate of a mutual-TLS connection kept for
/// the handlers).
fn http_server(
    c: &GatewayConfig,
    state: Data<AppState>,
    tls: Option<rustls::ServerConfig>,
    workers: usize,
    per_worker: usize,
) -> Result<actix_web::dev::Server, StartError> {
    let max_body = c.server.max_body_bytes;
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(actix_web::middleware::from_fn(crate::telemetry::http_span))
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
    .map_err(|source| StartError::Listen {
        listen: c.server.listen.clone(),
        source,
    })?;
    Ok(server.run())
}
