//! The `vaxgate sandbox` run: generate synthetic legacy systems
//! ([`crate::generate`]), start a gateway on loopback (SQLite ledger, plain HTTP), register the
//! organisations, run the agent over every source, verify the ledger and
//! print a summary with one complete trace of one dose.
//!
//! Layout of `--dir` (default `vaxgate-sandbox`):
//! `manifest.json`, `mappings/*.toml` (the example specs of
//! `config/mappings/`, embedded in the binary at build time and written
//! here, so an installed binary needs no repository), the legacy systems
//! (`clinic/`, `cdc/`, `coldchain/`, `hospital/`, `hl7/`, `erp/`, `mah/`),
//! `node/` (the gateway: config, keys, ledger, `serve.log`), `keys/` (one SM2
//! key per organisation, encrypted with the passphrase in
//! `secrets/passphrase`), `agents/<alias>.toml` (agent configs: run
//! `vaxgate agent --config` on them), `state/` (agent state databases),
//! `summary.json`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::{Manifest, Source, SourceKind};
use adapters::pipeline::RecordOutcome;
use adapters::{GatewayClient, GatewayClientConfig};
use error::{Context as _, RunError, bail};
use gateway::registry::{Entity, Policy, RegistryChange, RegistryOp, Role};
use mappings::{Dataset, MappingSpec, Record};

mod error;

/// What the run functions return.
type Result<T, E = RunError> = std::result::Result<T, E>;
use secure_gateway::{CryptoProvider, KeyHandle, KeyProtection, ProviderKind, Signer};
use serde_json::{Value, json};

/// Environment variable the sandbox hands its passphrase in to the
/// processes it starts (`init`, `serve`, `admin`, `keys`).
pub const PASS_ENV: &str = "VAXGATE_SANDBOX_PASSPHRASE";

/// What a run is asked to do (`vaxgate sandbox` flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// Vaccinations to simulate ([`crate::DOSES`]).
    pub doses: usize,
    /// Seed of the synthetic world (same seed, same systems).
    pub seed: u64,
    /// Folder for everything the sandbox writes.
    pub dir: PathBuf,
    /// Keep the gateway running after the summary (Ctrl-C stops it).
    pub serve: bool,
    /// Loopback port of a new gateway (default: a free one). An existing
    /// sandbox keeps its port.
    pub port: Option<u16>,
    /// The crypto provider of the gateway, the agents and the sandbox's own
    /// clients. An existing sandbox switches to it.
    pub crypto_provider: ProviderKind,
    /// The `vaxgate` binary, started for `init`, `serve`, `admin` and
    /// `keys` (the calling binary itself: [`vaxgate_binary`]).
    pub vaxgate: PathBuf,
}

/// The partner firm and the regulator (query-only organisations).
const READERS: [(&str, &str, &str, &str, &str); 2] = [
    (
        "partner",
        "91320100MA0123456E",
        "某医药科技有限公司 (合作伙伴)",
        "partner",
        r#"{"read": {"products": ["8612345"]}}"#,
    ),
    (
        "nmpa-js",
        "11320000MB0123456K",
        "江苏省药品监督管理局",
        "regulator",
        r#"{"read": {"all": true}, "personal_data": true}"#,
    ),
];

/// The holder also runs cold rooms: its policy adds cold-chain readings
/// to the manufacturer's default categories.
const MAH_POLICY: &str = r#"{"write": ["vaccine_product", "lot_release", "production_inbound", "outbound", "return",
    "recall", "loss_destruction", "cancellation", "cold_chain_readings"]}"#;

struct Org {
    alias: String,
    uscc: String,
    name: String,
    role: String,
    code: Option<String>,
    policy: Option<String>,
}

/// Generates `<alias>.key.pem` (encrypted with the sandbox passphrase) and
/// `<alias>.pub.pem` in `keys` unless they exist.
fn ensure_key(keys: &Path, alias: &str, pass: &str) -> Result<()> {
    let private = keys.join(format!("{alias}.key.pem"));
    if private.exists() {
        return Ok(());
    }
    let protection = KeyProtection::Passphrase(zeroize::Zeroizing::new(pass.to_string()));
    secure_gateway::keys::generate_key_files(keys, alias, &protection)?;
    Ok(())
}

/// `<alias>.key.pem` in `keys`, decrypted with the sandbox passphrase into
/// `provider`.
fn open_key(keys: &Path, alias: &str, provider: &std::sync::Arc<dyn CryptoProvider>, pass: &str) -> Result<Signer> {
    let p = keys.join(format!("{alias}.key.pem"));
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?);
    let h = KeyHandle::new(alias);
    provider
        .import_sm2_pem(h.clone(), &pem, Some(pass), secure_gateway::DEFAULT_DIST_ID)
        .with_context(|| format!("opening {}", p.display()))?;
    Ok(Signer::new(provider.clone(), h)?)
}

struct Server(Child);

impl Server {
    /// Asks the server to stop (SIGTERM: it finishes in-flight appends) and
    /// waits; kills it after 15 s.
    fn stop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// The running executable, to be started again for `init`, `serve` and
/// `admin` ([`Options::vaxgate`]).
///
/// # Errors
/// When the operating system cannot say.
pub fn vaxgate_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the vaxgate binary")?;
    // Linux reports "<path> (deleted)" once the file was replaced (a rebuild
    // while the sandbox runs): start the new binary at the same path.
    Ok(match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => exe,
    })
}

fn vaxgate(exe: &Path, pass: &str) -> Command {
    let mut c = Command::new(exe);
    c.env(PASS_ENV, pass);
    if std::env::var_os("RUST_LOG").is_none() {
        c.env("RUST_LOG", "warn");
    }
    c
}

fn run_ok(mut c: Command, what: &str) -> Result<String> {
    let o = c.output().with_context(|| format!("{what}: starting"))?;
    if !o.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The sandbox passphrase: `secrets/passphrase` (0600), created once; the
/// environment variable, when set, must agree with it (or creates it).
fn passphrase(dir: &Path) -> Result<String> {
    let p = dir.join("secrets/passphrase");
    let from_env = std::env::var(PASS_ENV).ok();
    if let Ok(s) = std::fs::read_to_string(&p) {
        let s = s.trim().to_string();
        if from_env.as_deref().is_some_and(|e| e != s) {
            bail!(
                "{PASS_ENV} differs from the passphrase in {} that encrypts this sandbox's keys",
                p.display()
            );
        }
        return Ok(s);
    }
    std::fs::create_dir_all(dir.join("secrets"))?;
    let pass =
        from_env.unwrap_or_else(|| format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(pass.as_bytes())?;
    Ok(pass)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET /readyz` over plain HTTP until it answers 200.
fn wait_ready(port: u16, server: &mut Server, log: &Path) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = server.0.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("the gateway exited ({st}); {}:\n{tail}", log.display());
        }
        if let Some((200, _)) = http_get(port, "/readyz") {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the gateway did not become ready on 127.0.0.1:{port} within 60 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// While the agents run: how many records the ledger has taken since they
/// started, read from the gateway's public statistics. On a terminal one
/// line rewritten twice a second; otherwise (a log) a line every 5 s.
struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(port: u16, expected: u64) -> Progress {
        use std::io::IsTerminal as _;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let terminal = std::io::stderr().is_terminal();
        let every = Duration::from_millis(if terminal { 500 } else { 5_000 });
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let Some(before) = ledger_transactions(port) else {
                return;
            };
            let mut shown = false;
            let mut next = start + every;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() < next {
                    continue;
                }
                next += every;
                let Some(now) = ledger_transactions(port) else { continue };
                // The gateway adds a few transactions of its own (cold-chain
                // alerts): a progress line, not a count, so capped.
                let done = now.saturating_sub(before).min(expected);
                let secs = start.elapsed().as_secs_f64();
                let line = format!(
                    "      {done} of {expected} records in the ledger ({:.0} %), {:.0} records/s, {secs:.0} s",
                    100.0 * done as f64 / expected.max(1) as f64,
                    done as f64 / secs.max(0.001),
                );
                if terminal {
                    eprint!("\r\x1b[K{line}");
                    shown = true;
                } else {
                    eprintln!("{line}");
                }
            }
            if shown {
                eprint!("\r\x1b[K");
            }
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    /// Stops the line (and clears it on a terminal).
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain GET on the loopback gateway: (status, body); `None` when it
/// does not answer within 2 s.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    gateway::tls::install_provider();
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let r = c.get(format!("http://127.0.0.1:{port}{path}")).send().ok()?;
    Some((r.status().as_u16(), r.text().ok()?))
}

/// `transactions` of `GET /v1/public/stats`; `None` when the gateway does
/// not answer.
fn ledger_transactions(port: u16) -> Option<u64> {
    let (_, body) = http_get(port, "/v1/public/stats")?;
    serde_json::from_str::<Value>(&body).ok()?["transactions"].as_u64()
}

/// The gateway's custody findings so far (`vaxgate_custody_findings_total`
/// on `/metrics`): action → rule → records (docs/custody.md).
fn custody_findings(port: u16) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let Some((_, buf)) = http_get(port, "/metrics") else {
        return out;
    };
    for line in buf.lines().filter(|l| l.starts_with("vaxgate_custody_findings_total{")) {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        let n = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if let (Some(action), Some(rule)) = (label("action"), label("rule")) {
            out.entry(action).or_default().insert(rule, n);
        }
    }
    out
}

/// Per source: what the agent did.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct SourceSummary {
    records: u64,
    accepted: u64,
    rejected: u64,
    quarantined: u64,
    /// rule or gateway code → records
    reasons: BTreeMap<String, u64>,
}

/// What one `vaxgate sandbox` run works with.
struct Sandbox {
    a: Options,
    /// The sandbox folder (canonical).
    dir: PathBuf,
    /// The passphrase of every key (`secrets/passphrase`).
    pass: String,
    rt: tokio::runtime::Runtime,
    /// The crypto provider of the sandbox's own clients.
    provider: std::sync::Arc<dyn CryptoProvider>,
    /// The gateway node's folder.
    node: PathBuf,
    /// The organisations' keys.
    keys: PathBuf,
    started: Instant,
}

/// The gateway the sandbox started.
struct Gateway {
    port: u16,
    base: String,
    server: Server,
}

/// What steps 4 to 6 found, for the summary.
struct Outcome {
    sources: BTreeMap<String, SourceSummary>,
    findings: BTreeMap<String, BTreeMap<String, u64>>,
    stats: Value,
    verify_ok: bool,
    verify_text: String,
    trace: DemoTrace,
    refused: (String, Value),
    stock: (String, Value),
    gen_secs: f64,
    agent_secs: f64,
}

/// Runs `vaxgate sandbox`: the six numbered steps, then the summary.
pub fn run(a: Options) -> Result<u8> {
    let started = Instant::now();
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    // The passphrase goes to the commands this process starts in their
    // environment, and to the in-process agents and clients directly.
    let pass = passphrase(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let provider = a.crypto_provider.build()?;
    let s = Sandbox {
        node: dir.join("node"),
        keys: dir.join("keys"),
        a,
        dir,
        pass,
        rt,
        provider,
        started,
    };
    println!(
        "vaxgate sandbox: seed {}, {} doses, in {}",
        s.a.seed,
        s.a.doses,
        s.dir.display()
    );
    // 1. Legacy systems, generated on the runtime while the gateway starts
    // and the organisations (known in advance) are registered: steps 2 and
    // 3 print after step 1.
    let generation = s.spawn_generation();
    let mut later: Vec<String> = Vec::new();
    let mut gw = s.start_gateway(&mut later)?;
    s.register(&gw.base, &mut later)?;
    let (manifest, gen_secs) = s.rt.block_on(generation).context("the generation task failed")?;
    let manifest = manifest.context("generating the legacy systems")?;
    println!("[1/6] legacy systems generated in {gen_secs:.2} s:");
    for src in &manifest.sources {
        println!("      {:<20} {:>7} records  {}", src.name, src.records, src.path);
    }
    for line in later {
        println!("{line}");
    }
    let outcome = s.agents_ledger_and_demo(&manifest, &gw, gen_secs)?;
    s.summary(&manifest, &gw.base, &outcome)?;
    if s.a.serve {
        println!("\ngateway running on {}; Ctrl-C stops it", gw.base);
        s.rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        println!("stopping the gateway");
    }
    gw.server.stop();
    Ok(if outcome.verify_ok && outcome.trace.proof_ok {
        0
    } else {
        1
    })
}

impl Sandbox {
    /// Step 1: generates the legacy systems on the runtime.
    fn spawn_generation(&self) -> tokio::task::JoinHandle<(Result<Manifest, crate::SandboxError>, f64)> {
        let (dir, opts) = (
            self.dir.clone(),
            crate::Options {
                seed: self.a.seed,
                doses: self.a.doses,
            },
        );
        self.rt.spawn(async move {
            let t = Instant::now();
            let manifest = crate::generate(&dir, &opts).await;
            (manifest, t.elapsed().as_secs_f64())
        })
    }

    /// Step 2: a new gateway node (`vaxgate init`), or the existing one with
    /// the asked crypto provider, started and ready.
    fn start_gateway(&self, later: &mut Vec<String>) -> Result<Gateway> {
        let (node, a) = (&self.node, &self.a);
        let cfg_path = node.join("vaxgate.toml");
        let port = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)?;
            use_crypto_provider(&cfg_path, &text, a.crypto_provider)?;
            let listen = gateway::config::load(&cfg_path)?.config.server.listen;
            listen
                .strip_prefix("127.0.0.1:")
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("{}: no loopback listen address", cfg_path.display()))?
        } else {
            let port = match a.port {
                Some(p) => p,
                None => free_port()?,
            };
            let mut c = vaxgate(&self.a.vaxgate, &self.pass);
            c.args(["init", "--dir"]).arg(node).args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--plain-http",
                "--passphrase-env",
                PASS_ENV,
                "--crypto-provider",
                a.crypto_provider.as_str(),
            ]);
            run_ok(c, "vaxgate init")?;
            port
        };
        let base = format!("http://127.0.0.1:{port}");
        let log = node.join("serve.log");
        let logf = std::fs::File::create(&log)?;
        let mut server = Server(
            vaxgate(&self.a.vaxgate, &self.pass)
                .args(["serve", "--config"])
                .arg(&cfg_path)
                .stdout(logf.try_clone()?)
                .stderr(logf)
                .spawn()
                .context("starting vaxgate serve")?,
        );
        wait_ready(port, &mut server, &log)?;
        later.push(format!(
            "[2/6] gateway listening on {base} (ledger {})",
            node.join("data/ledger.db").display()
        ));
        Ok(Gateway { port, base, server })
    }

    /// Step 3: every organisation's key (in this process: each key is
    /// decrypted once), its registration with 2-of-3 administrator
    /// approvals, and the partner's read-only API key.
    fn register(&self, base: &str, later: &mut Vec<String>) -> Result<()> {
        let (dir, node, keys, pass, provider, rt) =
            (&self.dir, &self.node, &self.keys, &self.pass, &self.provider, &self.rt);
        let t = Instant::now();
        std::fs::create_dir_all(keys)?;
        let registered_marker = node.join("sandbox-registered.json");
        let mut registered: Vec<String> = std::fs::read_to_string(&registered_marker)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let mut orgs: Vec<Org> = crate::entities()
            .iter()
            .map(|e| Org {
                alias: e.alias.clone(),
                uscc: e.uscc.clone(),
                name: e.name.clone(),
                role: e.role.clone(),
                code: (e.code != e.uscc).then(|| e.code.clone()),
                policy: (e.role == "manufacturer").then(|| MAH_POLICY.to_string()),
            })
            .collect();
        for (alias, uscc, name, role, policy) in READERS {
            orgs.push(Org {
                alias: alias.into(),
                uscc: uscc.into(),
                name: name.into(),
                role: role.into(),
                code: None,
                policy: Some(policy.into()),
            });
        }
        // PBKDF2 (600,000 iterations) per new key: one thread each.
        std::thread::scope(|sc| {
            let handles: Vec<_> = orgs
                .iter()
                .map(|o| {
                    let (keys, pass) = (&keys, &pass);
                    (o.alias.clone(), sc.spawn(move || ensure_key(keys, &o.alias, pass)))
                })
                .collect();
            for (alias, h) in handles {
                h.join()
                    .map_err(|_| RunError::failed(format!("key thread of {alias} panicked")))??;
            }
            Ok::<(), RunError>(())
        })?;
        let keys_secs = t.elapsed().as_secs_f64();
        let pending: Vec<&Org> = orgs.iter().filter(|o| !registered.contains(&o.alias)).collect();
        if !pending.is_empty() {
            let (a1, a2) = (
                open_key(&node.join("keys"), "admin-1", provider, pass)?,
                open_key(&node.join("keys"), "admin-2", provider, pass)?,
            );
            let client = gateway_client(base, a1.clone())?;
            for o in pending {
                let policy: Policy = match &o.policy {
                    Some(p) => serde_json::from_str(p).with_context(|| format!("policy of {}", o.alias))?,
                    None => Policy::default(),
                };
                let role: Role = serde_json::from_value(json!(o.role)).with_context(|| format!("role {}", o.role))?;
                let pem = std::fs::read_to_string(keys.join(format!("{}.pub.pem", o.alias)))?;
                let mut change = RegistryChange::new(RegistryOp::RegisterEntity {
                    entity: Entity {
                        id: o.uscc.clone(),
                        name: o.name.clone(),
                        alias: o.alias.clone(),
                        role,
                        policy,
                        codes: o.code.iter().cloned().collect(),
                    },
                    master_key: pem,
                });
                change.approve(&a1)?;
                change.approve(&a2)?;
                rt.block_on(client.post_json("/v1/admin/registry", &change))
                    .with_context(|| format!("registering {}", o.alias))?;
                registered.push(o.alias.clone());
                std::fs::write(&registered_marker, serde_json::to_string(&registered)?)?;
            }
        }
        // A read-only API key for the partner (approved by its master key).
        let api_key_file = dir.join("secrets/partner.apikey");
        if !api_key_file.exists() {
            let partner = open_key(keys, "partner", provider, pass)?;
            let (api_key, key_id, key_sm3) = gateway::registry::generate_api_key()?;
            let mut change = RegistryChange::new(RegistryOp::CreateApiKey {
                entity_id: READERS[0].1.to_string(),
                key_id,
                key_sm3,
                label: "vaxgate sandbox partner queries".into(),
            });
            change.approve(&partner)?;
            let client = gateway_client(base, partner)?;
            rt.block_on(client.post_json("/v1/admin/registry", &change))
                .context("creating the partner's API key")?;
            let mut f = std::fs::File::create(&api_key_file)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(api_key.as_bytes())?;
        }
        later.push(format!(
            "[3/6] {} organisations registered (2-of-3 administrator approvals): keys {keys_secs:.1} s, registration {:.1} s",
            orgs.len(),
            t.elapsed().as_secs_f64() - keys_secs
        ));
        for o in &orgs {
            later.push(format!("      {:<10} {:<17} {}  {}", o.alias, o.role, o.uscc, o.name));
        }
        Ok(())
    }

    /// Steps 4 to 6: the agents over every source, the ledger's
    /// verification and statistics, and one dose from production to
    /// vaccination (with the refused delivery and the stock reconciliation).
    fn agents_ledger_and_demo(&self, manifest: &Manifest, gw: &Gateway, gen_secs: f64) -> Result<Outcome> {
        let (dir, node, rt) = (&self.dir, &self.node, &self.rt);
        println!("[4/6] agent: map, validate, seal (SM4/SM2), sign and post every source");
        let t = Instant::now();
        let expected: u64 = manifest.sources.iter().map(|s| s.records as u64).sum();
        let progress = Progress::start(gw.port, expected);
        let sources = rt.block_on(run_agents(
            dir,
            manifest,
            &gw.base,
            &AgentSetup {
                crypto: self.a.crypto_provider,
                pass: self.pass.clone(),
            },
            progress,
        ))?;
        let agent_secs = t.elapsed().as_secs_f64();
        let findings = custody_findings(gw.port);

        let db = node.join("data/ledger.db");
        let node_pub = node.join("keys/node.pub.pem");
        let mut c = vaxgate(&self.a.vaxgate, &self.pass);
        c.args(["ledger", "stats", "--json", "--db"]).arg(&db);
        let stats: Value = serde_json::from_str(run_ok(c, "vaxgate ledger stats")?.trim()).unwrap_or_default();
        let mut c = vaxgate(&self.a.vaxgate, &self.pass);
        c.args(["ledger", "verify", "--db"])
            .arg(&db)
            .arg("--checkpoint-key")
            .arg(&node_pub);
        // Its progress line (on a terminal) goes straight to ours.
        let verify = c.stderr(std::process::Stdio::inherit()).output()?;
        let verify_text = String::from_utf8_lossy(&verify.stdout).trim().to_string();
        println!("[5/6] ledger: {verify_text}");

        let regulator = open_key(&self.keys, "nmpa-js", &self.provider, &self.pass)?;
        let trace = rt.block_on(demo_trace(
            dir,
            manifest,
            &gw.base,
            &|| vaxgate(&self.a.vaxgate, &self.pass),
            regulator.clone(),
        ))?;
        let refused = rt.block_on(refused_delivery(manifest, &gw.base, regulator.clone()))?;
        let stock = rt.block_on(stock_reconciliation(dir, &gw.base, regulator))?;
        Ok(Outcome {
            sources,
            findings,
            stats,
            verify_ok: verify.status.success(),
            verify_text,
            trace,
            refused,
            stock,
            gen_secs,
            agent_secs,
        })
    }

    /// The summary on stdout and in `summary.json`.
    fn summary(&self, manifest: &Manifest, base: &str, o: &Outcome) -> Result<()> {
        let (a, dir, node, keys, started) = (&self.a, &self.dir, &self.node, &self.keys, self.started);
        let Outcome {
            sources,
            findings,
            stats,
            verify_ok,
            verify_text,
            trace,
            refused,
            stock,
            gen_secs,
            agent_secs,
        } = o;
        let (gen_secs, agent_secs) = (*gen_secs, *agent_secs);
        let api_key_file = dir.join("secrets/partner.apikey");
        let cfg_path = node.join("vaxgate.toml");
        let db = node.join("data/ledger.db");
        let total: u64 = sources.values().map(|s| s.records).sum();
        let accepted: u64 = sources.values().map(|s| s.accepted).sum();
        // Summary.
        println!();
        println!("== summary ==");
        println!(
            "{:<20} {:>8} {:>9} {:>9} {:>12}  reasons",
            "source", "records", "accepted", "rejected", "quarantined"
        );
        for (name, s) in sources {
            let reasons: Vec<String> = s.reasons.iter().map(|(r, n)| format!("{r} x{n}")).collect();
            println!(
                "{name:<20} {:>8} {:>9} {:>9} {:>12}  {}",
                s.records,
                s.accepted,
                s.rejected,
                s.quarantined,
                reasons.join(", ")
            );
        }
        let height = stats["stats"]["height"].as_u64().unwrap_or(0);
        let txs = stats["stats"]["transactions"].as_u64().unwrap_or(0);
        println!(
            "records: {total} read, {accepted} accepted; ledger: {} blocks, {txs} transactions",
            height + 1
        );
        println!(
            "verification: {} (`vaxgate ledger verify`; the gateway and agents ran on the {} crypto provider)",
            if *verify_ok { "OK" } else { "FAILED" },
            a.crypto_provider
        );
        let line = |action: &str| -> String {
            findings
                .get(action)
                .map(|m| {
                    m.iter()
                        .map(|(r, n)| format!("{r} x{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "none".into())
        };
        println!(
            "custody rules (docs/custody.md): refused {}; kept and flagged {}; pending {}",
            line("refuse"),
            line("flag"),
            line("pending")
        );
        println!(
            "time: generate {gen_secs:.2} s, agent {agent_secs:.2} s ({:.0} records/s), total {:.1} s",
            total as f64 / agent_secs.max(1e-9),
            started.elapsed().as_secs_f64()
        );
        println!();
        print!("{}", trace.text);
        print!("{}", refused.0);
        print!("{}", stock.0);
        let partner_key = keys.join("partner.key.pem");
        println!("\n== partner queries (ready to paste; the partner may read product 8612345) ==");
        println!(
            "curl -s -H \"Authorization: ApiKey $(cat {})\" {base}/v1/trace/{}\ncurl -s -H \"Authorization: ApiKey $(cat {})\" {base}/v1/batches/{}/recall",
            api_key_file.display(),
            manifest.demo_trace_code,
            api_key_file.display(),
            manifest.demo_lot,
        );
        println!("# or signed with the partner's SM2 key (curl + openssl):");
        println!(
            "export {PASS_ENV}=$(cat {})\n./scripts/sign-request.sh --passphrase-env {PASS_ENV} {} GET {base}/v1/trace/{}\n./scripts/sign-request.sh --passphrase-env {PASS_ENV} {} GET {base}/v1/batches/{}/recall",
            dir.join("secrets/passphrase").display(),
            partner_key.display(),
            manifest.demo_trace_code,
            partner_key.display(),
            manifest.demo_lot,
        );
        println!("\n== files ==");
        println!("legacy systems   {}  (manifest.json lists them)", dir.display());
        println!("mapping specs    {}", dir.join("mappings").display());
        println!(
            "agent configs    {}  (vaxgate agent --config <file> run)",
            dir.join("agents").display()
        );
        println!(
            "gateway          {}  (vaxgate serve --config {})",
            node.display(),
            cfg_path.display()
        );
        println!("ledger           {}", db.display());
        println!("demo proof       {}", dir.join("demo-proof.json").display());

        let summary = json!({
            "seed": a.seed,
            "doses": a.doses,
            "sources": sources,
            "records": total,
            "accepted": accepted,
            "transactions": txs,
            "blocks": height + 1,
            "verified": verify_ok,
            "verify_output": verify_text,
            "demo_trace_code": manifest.demo_trace_code,
            "demo_steps": trace.steps,
            "demo_proof_verified": trace.proof_ok,
            "refused_delivery": refused.1,
            "stock_reconciliation": stock.1,
            "custody_findings": findings,
            "gateway": base,
            "crypto_provider": a.crypto_provider.as_str(),
            "timings": {"generate_s": gen_secs, "agent_s": agent_secs, "total_s": started.elapsed().as_secs_f64()},
        });
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;

        Ok(())
    }
}

fn agent_toml(
    dir: &Path,
    base: &str,
    provider: ProviderKind,
    alias: &str,
    uscc: &str,
    sources: &[(&Source, Option<&str>)],
) -> String {
    let mut t = format!(
        "# Agent of {alias} in the vaxgate sandbox (generated).\n\
         # vaxgate agent --config {cfg} run --once   (passphrase in ../secrets/passphrase, env {PASS_ENV})\n\
         [agent]\nentity_id = \"{uscc}\"\nkey = \"../keys/{alias}.key.pem\"\npassphrase_env = \"{PASS_ENV}\"\n\
         state_db = \"../state/{alias}.db\"\n\n[gateway]\nurl = \"{base}\"\nnode_key = \"../node/keys/node.pub.pem\"\n\n\
         [crypto]\nprovider = \"{provider}\"\n",
        cfg = dir.join("agents").join(format!("{alias}.toml")).display(),
    );
    for (s, owner) in sources {
        let file = dir.join(&s.path);
        match s.kind {
            SourceKind::Sqlite => {
                t.push_str(&format!(
                    "\n[[sources]]\ntype = \"sqlite\"\nname = \"{}\"\nmapping = \"../{}\"\nurl = \"sqlite://{}?mode=ro\"\n",
                    s.name,
                    s.spec,
                    file.display()
                ));
                match (owner, &s.owner_column) {
                    (Some(code), Some(col)) => t.push_str(&format!(
                        "query = \"SELECT * FROM {} WHERE {col} = '{code}'\"\n",
                        s.table.as_deref().unwrap_or_default()
                    )),
                    _ => t.push_str(&format!("table = \"{}\"\n", s.table.as_deref().unwrap_or_default())),
                }
                t.push_str(&format!(
                    "watermark = \"{}\"\nkey = \"{}\"\npoll_interval_secs = 0.2\n",
                    s.watermark.as_deref().unwrap_or_default(),
                    s.key.as_deref().unwrap_or_default()
                ));
            }
            // The export's folder, watched by the agent's own XML source
            // (finished files move to done/, failed ones to failed/).
            SourceKind::XmlFile => t.push_str(&format!(
                "\n[[sources]]\ntype = \"xml_dir\"\nname = \"{}\"\nmapping = \"../{}\"\ndir = \"{}\"\n\
                 settle_ms = 0\nbatch_size = 500\n",
                s.name,
                s.spec,
                file.parent().unwrap_or(dir).display()
            )),
            SourceKind::Hl7Dir => t.push_str(&format!(
                "\n[[sources]]\ntype = \"hl7_files\"\nname = \"{}\"\nmapping = \"../{}\"\ndir = \"{}\"\n\
                 settle_ms = 0\nbatch_size = 500\n",
                s.name,
                s.spec,
                file.display()
            )),
            // The ERP posts its shipment events itself (over AMQP, or as
            // here over HTTP with the carrier's key): no folder source.
            SourceKind::JsonDir => t.push_str(&format!(
                "\n# source {} ({:?}, {}): the ERP's shipment events, posted by `vaxgate sandbox` through\n\
                 # this agent's pipeline with the spec ../{} (in production: an `amqp` source)\n",
                s.name, s.kind, s.path, s.spec
            )),
        }
    }
    t
}

/// The ERP's shipment events: one record per shipment of each JSON file,
/// as the ERP publishes them (one AMQP message each), so a bad waybill holds
/// back only itself.
fn erp_records(dir: &Path, s: &Source) -> Result<Vec<(String, Record)>> {
    let path = dir.join(&s.path);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        let empty = Vec::new();
        for sh in v["shipments"].as_array().unwrap_or(&empty) {
            let key = sh["waybillNo"].as_str().unwrap_or(&name).to_string();
            let one = json!({"batchId": v["batchId"], "shipments": [sh]});
            out.push((key, Record::Json(one)));
        }
    }
    Ok(out)
}

/// What every in-process agent of the sandbox shares.
struct AgentSetup {
    crypto: ProviderKind,
    /// The passphrase of the organisations' keys.
    pass: String,
}

/// Runs every organisation's agent; `progress` is stopped before the
/// agents' lines are printed.
async fn run_agents(
    dir: &Path,
    manifest: &Manifest,
    base: &str,
    setup: &AgentSetup,
    progress: Progress,
) -> Result<BTreeMap<String, SourceSummary>> {
    std::fs::create_dir_all(dir.join("agents"))?;
    std::fs::create_dir_all(dir.join("state"))?;
    // One agent per organisation (as each would run at its own site). The
    // goods lane runs in the order the goods move: holder, carrier, the
    // CDCs side by side, then the clinics one after the other. A receipt is judged
    // against the shipment records already in the ledger (refused when its
    // delivery has no temperature record), so a receiver must never
    // overtake the carrier; a vaccination is judged against the custody of
    // its dose (docs/custody.md), so a clinic that overtook its county's
    // delivery would leave its doses pending until the delivery arrived.
    // The others (hospital, cold-chain platform: no custody moves) wait in
    // one queue, largest first: two workers take from it from the start,
    // and the goods lane joins them once its own agents are done.
    let goods_rank = |e: &crate::Entity| -> Option<usize> {
        match e.role.as_str() {
            "manufacturer" => Some(0),
            "logistics" => Some(1),
            "cdc" => Some(2),
            "vaccination_unit" => Some(3),
            _ => None,
        }
    };
    let mut goods = Vec::new();
    let mut others = Vec::new();
    for (i, e) in manifest.entities.iter().enumerate() {
        let mine: Vec<(&Source, Option<&str>)> = manifest
            .sources
            .iter()
            .filter_map(|s| {
                if s.operator == e.alias {
                    Some((s, None))
                } else if s.owner_column.is_some() {
                    Some((s, Some(e.code.as_str())))
                } else {
                    None
                }
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let own: usize = mine.iter().filter(|(_, o)| o.is_none()).map(|(s, _)| s.records).sum();
        match goods_rank(e) {
            Some(rank) => goods.push((rank, i, e, mine)),
            None => others.push((own, i, e, mine)),
        }
    }
    goods.sort_by_key(|g| (g.0, g.1));
    others.sort_by_key(|o| (std::cmp::Reverse(o.0), o.1));
    let mut out: BTreeMap<String, SourceSummary> = BTreeMap::new();
    let t0 = Instant::now();
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(others));
    let next_other = || queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
    let from_queue = || async {
        let mut done = Vec::new();
        while let Some((_, i, e, mine)) = next_other() {
            done.push((i, run_agent(dir, e, mine, base, setup, t0).await));
        }
        done
    };
    let goods_lane = async {
        let mut done = Vec::new();
        let mut goods = goods.into_iter().peekable();
        while let Some(first) = goods.next() {
            let rank = first.0;
            let mut step = vec![first];
            while let Some(next) = goods.next_if(|g| g.0 == rank) {
                step.push(next);
            }
            if rank == 3 {
                // Clinics one after the other, in the manifest's order: a
                // dose one clinic gave and another gives again is refused
                // in the second one's feed, whatever the timing.
                for (_, i, e, mine) in step {
                    done.push((i, run_agent(dir, e, mine, base, setup, t0).await));
                }
                continue;
            }
            let runs = step
                .into_iter()
                .map(|(_, i, e, mine)| async move { (i, run_agent(dir, e, mine, base, setup, t0).await) });
            done.extend(futures_util::future::join_all(runs).await);
        }
        done.extend(from_queue().await);
        done
    };
    let (a, b, c) = futures_util::future::join3(goods_lane, from_queue(), from_queue()).await;
    drop(progress);
    let mut results: Vec<_> = a.into_iter().chain(b).chain(c).collect();
    // Printed in the manifest's order, whatever finished first.
    results.sort_by_key(|r| r.0);
    let results = results.into_iter().map(|r| r.1);
    for r in results {
        let (lines, per_source) = r?;
        for l in lines {
            println!("      {l}");
        }
        for (name, s) in per_source {
            let e = out.entry(name).or_default();
            e.records += s.records;
            e.accepted += s.accepted;
            e.rejected += s.rejected;
            e.quarantined += s.quarantined;
            for (r, n) in s.reasons {
                *e.reasons.entry(r).or_default() += n;
            }
        }
    }
    Ok(out)
}

type AgentRun = (Vec<String>, BTreeMap<String, SourceSummary>);

/// One organisation's agent: `adapters::agent::run` over its SQL sources
/// (until caught up), then its file sources through the pipeline the agent
/// builds from the same config.
async fn run_agent(
    dir: &Path,
    e: &crate::Entity,
    mine: Vec<(&Source, Option<&str>)>,
    base: &str,
    setup: &AgentSetup,
    t0: Instant,
) -> Result<AgentRun> {
    let started = t0.elapsed().as_secs_f64();
    let mut lines = Vec::new();
    let mut out: BTreeMap<String, SourceSummary> = BTreeMap::new();
    let cfg_path = dir.join("agents").join(format!("{}.toml", e.alias));
    std::fs::write(&cfg_path, agent_toml(dir, base, setup.crypto, &e.alias, &e.uscc, &mine))?;
    let loaded = adapters::config::load(&cfg_path)?.with_passphrase(zeroize::Zeroizing::new(setup.pass.clone()));
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    // Several agents run at once: their own progress bars would overwrite
    // each other on one line; the sandbox shows one line for all.
    let stats = adapters::agent::run_with_bars(&loaded, stop, true, false)
        .await
        .with_context(|| format!("agent of {} ({})", e.alias, cfg_path.display()))?;
    for (name, st) in stats {
        let entry = out.entry(name.clone()).or_default();
        let n = st.accepted + st.rejected + st.quarantined;
        entry.records += n;
        entry.accepted += st.accepted;
        entry.rejected += st.rejected;
        entry.quarantined += st.quarantined;
        if n > 0 && st.batches > 0 {
            lines.push(format!(
                "{name:<20} {n:>6} rows read by {:<15} ({} accepted, {} batches)",
                e.alias, st.accepted, st.batches
            ));
        } else if n > 0 {
            lines.push(format!(
                "{name:<20} {n:>6} records read by {:<12} ({} accepted)",
                e.alias, st.accepted
            ));
        }
    }
    let files: Vec<&Source> = mine
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| s.kind == SourceKind::JsonDir)
        .collect();
    // The pipeline (its key opened once more) only for the ERP's events.
    let pipeline = match files.is_empty() {
        true => None,
        false => Some(adapters::agent::build_pipeline(&loaded).await?),
    };
    let dataset = Dataset::builtin();
    for (s, pipeline) in files.iter().filter_map(|s| pipeline.as_ref().map(|p| (s, p))) {
        let spec = MappingSpec::load(dir.join(&s.spec), &dataset)?;
        pipeline.add_source(&s.name, spec.clone());
        let records = erp_records(dir, s)?;
        let entry = out.entry(s.name.clone()).or_default();
        for chunk in records.chunks(500) {
            for o in pipeline.submit(&s.name, chunk.to_vec()).await? {
                match o {
                    RecordOutcome::Accepted { .. } => entry.accepted += 1,
                    // reasons: from the quarantine below (refused records are kept there too)
                    RecordOutcome::Rejected { .. } => entry.rejected += 1,
                    RecordOutcome::Quarantined { .. } => entry.quarantined += 1,
                }
            }
        }
        entry.records += records.len() as u64;
        lines.push(format!(
            "{:<20} {:>6} records submitted by {:<10} ({} accepted)",
            s.name, entry.records, e.alias, entry.accepted
        ));
    }
    // Why records were kept back: the rules of the quarantined ones, the
    // gateway's code for refused ones.
    let state = match &pipeline {
        Some(p) => p.state().clone(),
        None => adapters::StateDb::open(&dir.join("state").join(format!("{}.db", e.alias))).await?,
    };
    for q in state.quarantine_list(None, false).await? {
        let entry = out.entry(q.source.clone()).or_default();
        let mut rules: Vec<String> = q
            .problems
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["severity"] != "warning")
                    .filter_map(|p| p["rule"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if rules.is_empty() {
            let code = q.reason.split([':', ' ']).next().unwrap_or(&q.kind).to_string();
            rules.push(code);
        }
        rules.sort();
        rules.dedup();
        for r in rules {
            *entry.reasons.entry(r).or_default() += 1;
        }
    }
    state.close().await;
    lines.push(format!(
        "{:<20} agent {} ran from {started:.1} s to {:.1} s",
        "",
        e.alias,
        t0.elapsed().as_secs_f64()
    ));
    Ok((lines, out))
}

struct DemoTrace {
    text: String,
    steps: Vec<Value>,
    proof_ok: bool,
}

/// Makes the existing node's `[crypto] provider` the one asked for (the
/// sandbox wrote the file; the line is rewritten, or the table added).
fn use_crypto_provider(cfg_path: &Path, text: &str, want: ProviderKind) -> Result<()> {
    let loaded = gateway::config::load(cfg_path)?;
    if loaded.config.crypto.provider == want {
        return Ok(());
    }
    let old = format!("provider = \"{}\"", loaded.config.crypto.provider);
    let new = format!("provider = \"{want}\"");
    let updated = if text.contains("\n[crypto]\n") && text.contains(&old) {
        text.replacen(&old, &new, 1)
    } else {
        format!("{text}\n[crypto]\n{new}\n")
    };
    std::fs::write(cfg_path, updated).with_context(|| format!("writing {}", cfg_path.display()))?;
    Ok(())
}

/// A client of the sandbox's gateway signing with `key`.
fn gateway_client(base: &str, key: Signer) -> Result<GatewayClient> {
    Ok(GatewayClient::new(
        &GatewayClientConfig {
            base_url: base.to_string(),
            ..Default::default()
        },
        key,
    )?)
}

/// Clinic A's legacy stock table (`T_KC_YMKC`, rows `在库`) against what
/// the ledger says it holds (`GET /v1/holders/{id}/stock`, custody state),
/// lot by lot, with the codes that differ: the first question a county CDC
/// asks. Text for the summary and its JSON.
async fn stock_reconciliation(dir: &Path, base: &str, key: Signer) -> Result<(String, Value)> {
    use std::collections::BTreeSet;
    let clinic = crate::world::CLINIC_A;
    let rows = crate::sqlite_rows(&dir.join("clinic/clinic.db"), "T_KC_YMKC", "KCID").await?;
    let mut legacy: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r["ZT"] == "在库") {
        if let (Some(lot), Some(code)) = (r["PH"].as_str(), r["DZJGM"].as_str()) {
            legacy.entry(lot.to_string()).or_default().insert(code.to_string());
        }
    }
    let client = gateway_client(base, key)?;
    let path = format!("/v1/holders/{}/stock?codes=true", clinic.uscc);
    let body = client.get(&path).await.with_context(|| format!("GET {path}"))?;
    let answer: Value = serde_json::from_slice(&body)?;
    let mut ledger: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in answer["lots"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let codes = l["codes"].as_array().map(Vec::as_slice).unwrap_or_default();
        ledger
            .entry(l["lot"].as_str().unwrap_or("?").to_string())
            .or_default()
            .extend(codes.iter().filter_map(|c| c.as_str().map(str::to_string)));
    }
    let mut text = format!(
        "\n== stock reconciliation: {} ({}), legacy table T_KC_YMKC (在库) against the ledger ==\n",
        clinic.alias, clinic.uscc
    );
    let lots: BTreeSet<&String> = legacy.keys().chain(ledger.keys()).collect();
    let empty = BTreeSet::new();
    let mut out = Vec::new();
    for lot in lots {
        let (l, g) = (legacy.get(lot).unwrap_or(&empty), ledger.get(lot).unwrap_or(&empty));
        let only_legacy: Vec<&String> = l.difference(g).collect();
        let only_ledger: Vec<&String> = g.difference(l).collect();
        text.push_str(&format!(
            "  lot {lot:<12} legacy {:>5}  ledger {:>5}  {}\n",
            l.len(),
            g.len(),
            if only_legacy.is_empty() && only_ledger.is_empty() {
                "same codes".to_string()
            } else {
                format!(
                    "{} only in the legacy table, {} only in the ledger",
                    only_legacy.len(),
                    only_ledger.len()
                )
            }
        ));
        for (what, codes) in [
            ("only in the legacy table", &only_legacy),
            ("only in the ledger", &only_ledger),
        ] {
            if !codes.is_empty() {
                let shown: Vec<&str> = codes.iter().take(5).map(|c| c.as_str()).collect();
                text.push_str(&format!(
                    "    {what}: {}{}\n",
                    shown.join(", "),
                    if codes.len() > 5 {
                        format!(" and {} more", codes.len() - 5)
                    } else {
                        String::new()
                    }
                ));
            }
        }
        out.push(json!({ "lot": lot, "legacy": l.len(), "ledger": g.len(),
                         "only_legacy": only_legacy, "only_ledger": only_ledger }));
    }
    text.push_str(
        "  (a dose the legacy system records as given whose vaccination record the agent quarantined is still in the ledger's stock: see `vaxgate agent quarantine list`)\n",
    );
    Ok((text, json!({ "holder": clinic.uscc, "lots": out })))
}

/// The delivery the world refuses at receipt (an arrival temperature out
/// of range), as the regulator's trace of one of its unit codes shows it:
/// the receipt is in the ledger with status `refused` and the gateway's
/// reason. Text for the summary and its JSON.
async fn refused_delivery(manifest: &Manifest, base: &str, key: Signer) -> Result<(String, Value)> {
    let code = &manifest.refused_trace_code;
    if code.is_empty() {
        return Ok((String::new(), Value::Null));
    }
    let client = gateway_client(base, key)?;
    let body = client
        .get(&format!("/v1/trace/{code}"))
        .await
        .with_context(|| format!("GET /v1/trace/{code}"))?;
    let t: Value = serde_json::from_slice(&body)?;
    let empty = Vec::new();
    let refused: Vec<&Value> = t["steps"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|s| s["receipt_status"] == "refused")
        .collect();
    let mut text = format!(
        "\n== refused delivery: waybill {} (trace code {code}) ==\n",
        manifest.refused_waybill
    );
    for s in &refused {
        text.push_str(&format!(
            "  {:<25} {:<19} {:<10} block {:>5}  bill {} refused: {}\n",
            s["occurred_at"].as_str().unwrap_or("-"),
            s["category"].as_str().unwrap_or("-"),
            s["signer"]["alias"].as_str().unwrap_or("-"),
            s["height"],
            s["event"]["fields"]["bill_code"].as_str().unwrap_or("-"),
            s["refusal_reason"].as_str().unwrap_or("-"),
        ));
    }
    if refused.is_empty() {
        text.push_str("  no receipt of this delivery is marked refused (one was expected)\n");
    }
    let json = json!({
        "waybill": manifest.refused_waybill,
        "trace_code": code,
        "refused_receipts": refused
            .iter()
            .map(|s| json!({
                "category": s["category"],
                "occurred_at": s["occurred_at"],
                "signer": s["signer"]["alias"],
                "refusal_reason": s["refusal_reason"],
            }))
            .collect::<Vec<_>>(),
    });
    Ok((text, json))
}

/// The demo dose's trace from the API, its proof and answer checked by
/// `vaxgate verify-proof` (started by `vaxgate_cmd`).
async fn demo_trace(
    dir: &Path,
    manifest: &Manifest,
    base: &str,
    vaxgate_cmd: &(dyn Fn() -> Command + Sync),
    key: Signer,
) -> Result<DemoTrace> {
    let client = gateway_client(base, key)?;
    let code = &manifest.demo_trace_code;
    let body = client
        .get(&format!("/v1/trace/{code}"))
        .await
        .with_context(|| format!("GET /v1/trace/{code}"))?;
    let t: Value = serde_json::from_slice(&body)?;
    let mut text = format!("== one dose: trace code {code} (lot {}) ==\n", manifest.demo_lot);
    let mut steps = Vec::new();
    let empty = Vec::new();
    let mut vaccination_tx = None;
    for s in t["steps"].as_array().unwrap_or(&empty) {
        let ev = &s["event"];
        let f = &ev["fields"];
        let cat = s["category"].as_str().unwrap_or("?");
        let relation = s["relation"].as_str().unwrap_or("?");
        let detail = match cat {
            "production_inbound" | "inbound_receipt" | "outbound" | "recall" | "return" | "loss_destruction" => {
                format!(
                    "bill {} type {} qty {}",
                    f["bill_code"].as_str().unwrap_or("-"),
                    f["bill_type"].as_str().unwrap_or("-"),
                    f["quantity"]
                )
            }
            "lot_release" => format!("certificate {}", f["lot_release_cert_no"].as_str().unwrap_or("-")),
            "cold_chain_readings" => format!(
                "logger {}: {} readings every {} min, {} .. {} °C (mean {}), alarm {}",
                ev["device"].as_str().unwrap_or("-"),
                f["reading_count"],
                f["log_interval_min"],
                f["temp_min"],
                f["temp_max"],
                f["temp_mean"],
                f["alarm_state"].as_str().unwrap_or("-")
            ),
            "shipment" => {
                format!(
                    "waybill {} {} → {} °C, logger {}",
                    f["shipment_no"].as_str().unwrap_or("-"),
                    f["departure_temp"],
                    f["arrival_temp"],
                    ev["device"].as_str().unwrap_or("-")
                )
            }
            "vaccination" => {
                vaccination_tx = s["tx_id"].as_str().map(str::to_string);
                format!(
                    "{} dose {} at unit {}",
                    f["vaccine_name"].as_str().unwrap_or("-"),
                    f["dose_number"],
                    f["vaccination_unit_code"].as_str().unwrap_or("-")
                )
            }
            _ => String::new(),
        };
        text.push_str(&format!(
            "  {:<25} {:<19} {:<7} {:<10} block {:>5}  {}\n",
            s["occurred_at"].as_str().unwrap_or("-"),
            cat,
            relation,
            s["signer"]["alias"].as_str().unwrap_or("-"),
            s["height"],
            detail
        ));
        steps.push(json!({"category": cat, "relation": relation, "occurred_at": s["occurred_at"], "signer": s["signer"]["alias"]}));
    }
    // Inclusion proof of the vaccination, verified offline.
    let mut proof_ok = false;
    if let Some(tx) = vaccination_tx {
        let p = client.get(&format!("/v1/transactions/{tx}/proof")).await?;
        let (ok, out) = verify_saved(dir, "demo-proof.json", &p, vaxgate_cmd)?;
        proof_ok = ok;
        text.push_str(&format!("  proof of the vaccination (tx {tx}): {out}"));
    } else {
        text.push_str("  no vaccination step in the trace\n");
    }
    // The whole answer, every step checked against its transaction's field
    // commitments (docs/api.md, "Checking an answer").
    let (ok, out) = verify_saved(dir, "demo-trace.json", &body, vaxgate_cmd)?;
    proof_ok &= ok;
    text.push_str(&format!(
        "  the trace answer above ({}): {out}",
        dir.join("demo-trace.json").display()
    ));
    Ok(DemoTrace { text, steps, proof_ok })
}

/// Saves `body` (a proof or an answer) as `dir/file` and checks it offline
/// with `vaxgate verify-proof` against the node key: whether it verified,
/// and what verify-proof printed.
fn verify_saved(
    dir: &Path,
    file: &str,
    body: &[u8],
    vaxgate_cmd: &(dyn Fn() -> Command + Sync),
) -> Result<(bool, String)> {
    let path = dir.join(file);
    std::fs::write(&path, body)?;
    let o = vaxgate_cmd()
        .arg("verify-proof")
        .arg(&path)
        .arg("--checkpoint-key")
        .arg(dir.join("node/keys/node.pub.pem"))
        .output()?;
    Ok((o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()))
}
