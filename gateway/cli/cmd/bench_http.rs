//! `vaxgate bench http`: the gateway over HTTP on loopback, end to end.
//!
//! Creates a node in a temporary folder (`vaxgate init`, SQLite ledger,
//! plain HTTP on 127.0.0.1), starts the real server as a child process
//! (`vaxgate serve`), registers a vaccination unit through `vaxgate admin`,
//! and a manufacturer whose production and delivery of every code to that
//! unit are ingested first, untimed (the custody rules judge each
//! vaccination against them, as in a deployment whose chain is connected;
//! docs/custody.md), then measures:
//!
//! - (a) ingest: `--records` vaccination records through
//!   `POST /v1/transactions` in sealed, batch-signed batches
//!   (`adapters::seal::seal_batch`: one SM2-wrapped KEK and one SM2
//!   signature per batch) from `--clients` concurrent `GatewayClient`s.
//!   Batches are sealed in chunks before they are sent, and only the sending
//!   is timed (`records_per_s`); `records_per_s_wall` includes the sealing,
//!   which shares the same cores. Every response is checked: all accepted.
//!   `server_cpu_us_per_record` is the gateway process's CPU time (user +
//!   system, from `/proc/PID/stat`) over the ingest, per record;
//!   `ingest_by_tenth` gives both figures for each tenth of the records
//!   (whether the rate holds as the ledger grows).
//! - (b) `GET /v1/trace/{code}` latency for `--trace-samples` random codes
//!   with the ledger holding every ingested record (one signed client).
//! - (c) authenticated, rate-limited GET throughput
//!   (`GET /v1/checkpoints/latest` with SM2-signed requests, and again with
//!   a read-only API key; per-principal limit in force) against the
//!   unauthenticated
//!   `GET /v1/public/checkpoints/latest`, which returns the same body from
//!   the same handler work, in the same run. Requests are signed before the
//!   timed loop: the signing cost belongs to the clients' machines.
//!
//! Prints progress to stderr and a final line of JSON with every figure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use adapters::{GatewayClient, GatewayClientConfig};
use anyhow::Context;
use mappings::ExchangeMessage;
use secure_gateway::{KeyHandle, ProviderKind, Signer};

/// Arguments of `vaxgate bench http`.
#[derive(Debug, clap::Args)]
pub struct BenchHttpArgs {
    /// Records to ingest (the ledger size for the trace measurement).
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Records per sealed, batch-signed request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent ingest clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// `GET /v1/trace/{code}` requests for the latency figures.
    #[arg(long, default_value_t = 2000)]
    pub trace_samples: usize,
    /// Requests per route for the GET throughput comparison.
    #[arg(long, default_value_t = 20_000)]
    pub get_requests: usize,
    /// Concurrent connections for the GET throughput comparison.
    #[arg(long, default_value_t = 16)]
    pub get_clients: usize,
    /// Server worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Keep the node folder here instead of a temporary one (must not exist).
    #[arg(long)]
    pub keep_dir: Option<PathBuf>,
    /// The crypto provider of the gateway and of the benchmark's clients:
    /// rustcrypto or openssl.
    #[arg(long, default_value_t = ProviderKind::RustCrypto)]
    pub provider: ProviderKind,
    /// The form of the posted batches: binary (`application/vnd.vaxgate.batch`,
    /// what the agent sends) or json (the JSON form, for comparison).
    #[arg(long, value_enum, default_value_t = Wire::Binary)]
    pub wire: Wire,
}

/// The transport form of a posted batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wire {
    /// `SignedBatch::to_binary`, `application/vnd.vaxgate.batch`.
    Binary,
    /// `SignedBatch::to_json`, `application/json`.
    Json,
}

impl Wire {
    /// The body and its content type.
    fn encode(self, batch: &secure_gateway::SignedBatch) -> anyhow::Result<(Vec<u8>, &'static str)> {
        Ok(match self {
            Wire::Binary => (batch.to_binary()?, secure_gateway::BATCH_MEDIA_TYPE),
            Wire::Json => (batch.to_json().into_bytes(), "application/json"),
        })
    }
}

const PASS_ENV: &str = "VAXGATE_BENCH_PASSPHRASE";
const GOLDEN: &str = include_str!("../../../mappings/tests/golden/vaccination/clinic-ims.json");
const GOLDEN_PRODUCTION: &str = include_str!("../../../mappings/tests/golden/production_inbound/mah-export.json");
const GOLDEN_OUTBOUND: &str = include_str!("../../../mappings/tests/golden/outbound/cdc-stock.json");
/// The holder's organisation code in the golden records.
const MAH_CODE: &str = "91320000134567890Y";
/// The vaccination unit's code in the golden records.
const CLINIC_CODE: &str = "3201020001";
/// Trace codes per upstream (production, outbound) record: a ledger
/// transaction carries at most 8 KiB.
const CODES_PER_BILL: usize = 100;

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/PID/stat` (in USER_HZ = 100 ticks per second on Linux).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct ServerProcess(Child);
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vaxgate(pass: &str) -> Command {
    // Linux reports "<path> (deleted)" once the file was replaced by a
    // rebuild: start the new binary at the same path.
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vaxgate"));
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => exe,
    };
    let mut c = Command::new(exe);
    c.env(PASS_ENV, pass);
    c
}

/// A client of the gateway at `base` signing with `key`.
fn client(base: &str, key: &Signer) -> anyhow::Result<GatewayClient> {
    let config = GatewayClientConfig {
        base_url: base.to_string(),
        timeout: Some(Duration::from_secs(300)),
        ..Default::default()
    };
    Ok(GatewayClient::new(&config, key.clone())?)
}

fn run_ok(mut c: Command, what: &str) -> anyhow::Result<()> {
    let o = c.output().with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted_ms(mut v: Vec<Duration>) -> Vec<f64> {
    v.sort();
    v.into_iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// The bench's records: the golden vaccination record under fresh ids and
/// one distinct 20-digit trace code per record.
fn record(template: &ExchangeMessage, i: usize) -> ExchangeMessage {
    let mut m = template.clone();
    m.event_id = uuid::Uuid::new_v4();
    m.payload.event_id = m.event_id;
    m.payload.trace_codes = vec![trace_code(i)];
    m.payload.record_key = format!("BENCH{i:010}");
    m
}

fn trace_code(i: usize) -> String {
    format!("8699{i:016}")
}

/// The node under test: its folder (temporary unless `--keep-dir`), the
/// passphrase of its keys, its address and the running `vaxgate serve`.
struct Node {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    dir: PathBuf,
    pass: String,
    base: String,
    server: ServerProcess,
}

impl Node {
    /// `vaxgate <args...> --approve <the node's admin key>` against the
    /// running gateway, with the passphrase in its environment.
    fn admin(&self, args: &[&str]) -> Command {
        let mut c = vaxgate(&self.pass);
        c.args(["admin", "--gateway", &self.base, "--passphrase-env", PASS_ENV])
            .args(args)
            .arg("--approve")
            .arg(self.dir.join("keys/admin-1.key.pem"));
        c
    }

    /// `vaxgate keys generate` of `entity` into `<root>/<folder>`.
    fn generate_keys(&self, entity: &str, folder: &str) -> anyhow::Result<PathBuf> {
        let out = self.root.join(folder);
        let mut c = vaxgate(&self.pass);
        c.args(["keys", "generate", "--entity", entity, "--passphrase-env", PASS_ENV])
            .arg("--out")
            .arg(&out);
        run_ok(c, "vaxgate keys generate")?;
        Ok(out)
    }
}

fn check_args(a: &BenchHttpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.records >= 1 && a.batch >= 1 && a.clients >= 1,
        "--records, --batch and --clients must be ≥ 1"
    );
    anyhow::ensure!(a.get_clients >= 1, "--get-clients must be ≥ 1");
    anyhow::ensure!(
        a.records < 10_000_000_000_000_000,
        "--records is too large for the trace-code scheme"
    );
    if let Some(d) = &a.keep_dir {
        anyhow::ensure!(!d.exists(), "{} exists; --keep-dir must name a new folder", d.display());
    }
    Ok(())
}

/// `vaxgate init` of a node in a new folder, its limits raised above the
/// benchmark's load (but in force: rate limiting is part of what is
/// measured), and `vaxgate serve` started on it.
fn start_node(a: &BenchHttpArgs) -> anyhow::Result<Node> {
    let (tmp, root) = match &a.keep_dir {
        Some(d) => (None, d.clone()),
        None => {
            let tmp = tempfile::tempdir().context("creating a temporary folder")?;
            let root = tmp.path().to_path_buf();
            (Some(tmp), root)
        }
    };
    let pass = hex::encode(secure_gateway::random::bytes::<16>().context("random passphrase")?);
    let dir = root.join("node");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    eprintln!("bench http: node in {}, gateway on {base}", dir.display());
    let mut c = vaxgate(&pass);
    c.args(["init", "--plain-http", "--admins", "1", "--threshold", "1"])
        .args(["--passphrase-env", PASS_ENV, "--crypto-provider", a.provider.as_str()])
        .arg("--dir")
        .arg(&dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    run_ok(c, "vaxgate init")?;
    let cfg = dir.join("vaxgate.toml");
    let mut text = std::fs::read_to_string(&cfg)?;
    text = text.replace(
        "plain_http = true\n",
        &format!("plain_http = true\nworkers = {}\n", a.workers),
    );
    text.push_str(
        "\n[rate_limits]\ningest = { per_second = 100000, burst = 100000 }\n\
         query = { per_second = 1000000, burst = 1000000 }\npublic = { per_second = 1000000, burst = 1000000 }\n",
    );
    std::fs::write(&cfg, text)?;
    let mut c = vaxgate(&pass);
    c.arg("serve").arg("--config").arg(&cfg).stdout(Stdio::null());
    let server = ServerProcess(c.spawn().context("starting vaxgate serve")?);
    Ok(Node {
        _tmp: tmp,
        root,
        dir,
        pass,
        base,
        server,
    })
}

/// The parties of the benchmark, registered on the node.
struct Parties {
    /// The vaccination unit that gives the doses.
    entity_id: String,
    key: Signer,
    /// Its read-only API key.
    api_key: String,
    /// The manufacturer that produces and delivers them.
    mah_id: String,
    mah_key: Signer,
}

/// Registers the vaccination unit (retried until the gateway answers), the
/// manufacturer, and a read-only API key of the unit.
fn register(a: &BenchHttpArgs, node: &Node) -> anyhow::Result<Parties> {
    let ent = node.generate_keys("bench", "entity")?;
    let entity_id = gateway::registry::uscc_with_check("12320102MB1234567").context("the bench entity id")?;
    let start = Instant::now();
    loop {
        let o = node
            .admin(&["register-entity", "--id", &entity_id, "--name", "基准测试接种单位"])
            .args(["--alias", "bench", "--role", "vaccination_unit", "--code", CLINIC_CODE])
            .arg("--master-key")
            .arg(ent.join("bench.pub.pem"))
            .output()?;
        if o.status.success() {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "registering the bench entity: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mah_dir = node.generate_keys("mah", "manufacturer")?;
    let mah_id = gateway::registry::uscc_with_check("91320000MA1XYA129").context("the manufacturer id")?;
    let mut c = node.admin(&[
        "register-entity",
        "--id",
        &mah_id,
        "--name",
        "基准测试疫苗上市许可持有人",
    ]);
    c.args(["--alias", "bench-mah", "--role", "manufacturer", "--code", MAH_CODE])
        .arg("--master-key")
        .arg(mah_dir.join("mah.pub.pem"));
    run_ok(c, "vaxgate admin register-entity (manufacturer)")?;
    let api_key_file = node.root.join("api-key.txt");
    let mut c = node.admin(&["api-key", "create", "--entity", &entity_id, "--label", "bench"]);
    c.arg("--key-out").arg(&api_key_file);
    run_ok(c, "vaxgate admin api-key create")?;
    let provider = a.provider.build()?;
    // The keys were written encrypted with the node's passphrase, which
    // only the child processes have in their environment.
    let open = |alias: &str, path: PathBuf| -> anyhow::Result<Signer> {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let pem = zeroize::Zeroizing::new(text);
        let handle = KeyHandle::new(alias);
        provider
            .import_sm2_pem(handle.clone(), &pem, Some(&node.pass), secure_gateway::DEFAULT_DIST_ID)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Signer::new(provider.clone(), handle)?)
    };
    Ok(Parties {
        api_key: std::fs::read_to_string(&api_key_file)?.trim().to_string(),
        key: open("bench", ent.join("bench.key.pem"))?,
        mah_key: open("mah", mah_dir.join("mah.key.pem"))?,
        entity_id,
        mah_id,
    })
}

/// Runs the benchmark.
pub fn run(a: BenchHttpArgs) -> anyhow::Result<u8> {
    check_args(&a)?;
    let node = start_node(&a)?;
    let parties = register(&a, &node)?;
    let gateway_key = secure_gateway::load_verifying_key(&node.dir.join("keys/node.pub.pem"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(upstream(
        &a,
        &node.base,
        &parties.mah_id,
        parties.mah_key.clone(),
        &gateway_key,
    ))?;
    rt.block_on(bench(&a, &node, &parties, gateway_key))
}

#[derive(serde::Deserialize)]
struct IngestSummary {
    accepted: usize,
    duplicates: usize,
    rejected: usize,
}

/// Ingests, untimed, the production of every code the bench will give and
/// its delivery to the vaccination unit, [`CODES_PER_BILL`] codes per record.
async fn upstream(
    a: &BenchHttpArgs,
    base: &str,
    mah_id: &str,
    key: Signer,
    gateway_key: &secure_gateway::Sm2VerifyingKey,
) -> anyhow::Result<()> {
    let client = client(base, &key)?;
    let (provider, handle) = (key.provider().clone(), key.handle().clone());
    let template = |text: &str, what: &str| -> anyhow::Result<ExchangeMessage> {
        let golden: Vec<serde_json::Value> = serde_json::from_str(text)?;
        mappings::exchange::from_json(&golden[0].to_string())
            .map_err(|e| anyhow::anyhow!("the golden {what} record: {e}"))
    };
    let production = template(GOLDEN_PRODUCTION, "production")?;
    let outbound = template(GOLDEN_OUTBOUND, "outbound")?;
    let bill = |t: &ExchangeMessage, kind: &str, k: usize, codes: Vec<String>| {
        let mut m = t.clone();
        m.event_id = uuid::Uuid::new_v4();
        m.payload.event_id = m.event_id;
        m.payload.record_key = format!("BENCH{kind}{k:08}");
        m.payload.source = MAH_CODE.into();
        m.sender = MAH_CODE.into();
        m.payload.fields.insert("quantity".into(), codes.len().into());
        m.payload.trace_codes = codes;
        m
    };
    let t0 = Instant::now();
    let bills: Vec<usize> = (0..a.records.div_ceil(CODES_PER_BILL)).collect();
    for chunk in bills.chunks(50) {
        let mut msgs = Vec::with_capacity(chunk.len() * 2);
        for &k in chunk {
            let codes: Vec<String> = (k * CODES_PER_BILL..((k + 1) * CODES_PER_BILL).min(a.records))
                .map(trace_code)
                .collect();
            msgs.push(bill(&production, "PI", k, codes.clone()));
            let mut out = bill(&outbound, "CK", k, codes);
            out.payload.from = Some(mappings::Party {
                code: MAH_CODE.into(),
                name: None,
            });
            out.payload.to = Some(mappings::Party {
                code: CLINIC_CODE.into(),
                name: None,
            });
            msgs.push(out);
        }
        let n = msgs.len();
        let sealed = adapters::seal::seal_batch(provider.as_ref(), &handle, mah_id, gateway_key, &[], &msgs)?;
        let (body, ct) = a.wire.encode(&sealed)?;
        let resp = client
            .send_as("POST", "/v1/transactions?receipts=brief", body, ct)
            .await?;
        let r: IngestSummary = serde_json::from_slice(&resp)?;
        anyhow::ensure!(
            r.accepted == n,
            "upstream records: {} of {n} accepted ({} rejected): {}",
            r.accepted,
            r.rejected,
            String::from_utf8_lossy(&resp).chars().take(600).collect::<String>()
        );
    }
    eprintln!(
        "(0) upstream: production and delivery of {} codes in {} records, {:.1} s (not timed)",
        a.records,
        bills.len() * 2,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the ingest measured.
struct Ingest {
    send_time: Duration,
    wall_time: Duration,
    latencies_ms: Vec<f64>,
    cpu_per_record_us: Option<f64>,
    /// The ingest cut in tenths of the records (by the chunk that crossed
    /// each tenth): whether the rate holds as the ledger grows.
    tenths: Vec<serde_json::Value>,
}

/// One point of the ingest: records sent so far, time spent sending so
/// far, the gateway's CPU seconds so far.
#[derive(Clone, Copy)]
struct Mark {
    records: usize,
    send: Duration,
    cpu: Option<f64>,
}

impl Mark {
    /// Records per second of sending and gateway µs of CPU per record
    /// between `self` and a later mark.
    fn rates_to(&self, later: &Mark) -> (f64, Option<f64>) {
        let n = (later.records - self.records).max(1) as f64;
        let rate = n / (later.send - self.send).as_secs_f64().max(1e-9);
        let cpu = match (self.cpu, later.cpu) {
            (Some(b), Some(e)) => Some(((e - b) * 1e6 / n * 10.0).round() / 10.0),
            _ => None,
        };
        (rate, cpu)
    }
}

/// Measures (a), (b) and (c) and prints the final JSON line.
async fn bench(
    a: &BenchHttpArgs,
    node: &Node,
    parties: &Parties,
    gateway_key: secure_gateway::Sm2VerifyingKey,
) -> anyhow::Result<u8> {
    let client = client(&node.base, &parties.key)?;
    let ingest = measure_ingest(
        a,
        &client,
        &parties.entity_id,
        &parties.key,
        gateway_key,
        node.server.0.id(),
    )
    .await?;
    let (ledger_txs, tl) = measure_trace(a, &client).await?;
    let gets = measure_gets(a, &node.base, &parties.key, &parties.api_key).await?;
    let (ingest_rate, ingest_rate_wall) = (
        a.records as f64 / ingest.send_time.as_secs_f64(),
        a.records as f64 / ingest.wall_time.as_secs_f64(),
    );
    let lat = &ingest.latencies_ms;
    let (ratio, key_ratio) = (gets.auth_rate / gets.public_rate, gets.key_rate / gets.public_rate);
    println!(
        "{}",
        serde_json::json!({
            "bench": "http",
            "records": a.records,
            "batch": a.batch,
            "clients": a.clients,
            "ingest_records_per_s": ingest_rate.round(),
            "ingest_records_per_s_wall": ingest_rate_wall.round(),
            "ingest_send_s": ingest.send_time.as_secs_f64(),
            "ingest_wall_s": ingest.wall_time.as_secs_f64(),
            "ingest_p50_ms": pct(lat, 0.5),
            "ingest_p99_ms": pct(lat, 0.99),
            "server_cpu_us_per_record": ingest.cpu_per_record_us,
            "ingest_by_tenth": ingest.tenths,
            "ledger_transactions": ledger_txs,
            "trace_samples": a.trace_samples,
            "trace_p50_ms": pct(&tl, 0.5),
            "trace_p99_ms": pct(&tl, 0.99),
            "get_requests": a.get_requests,
            "get_clients": a.get_clients,
            "auth_get_per_s": gets.auth_rate.round(),
            "public_get_per_s": gets.public_rate.round(),
            "auth_to_public_ratio": (ratio * 1000.0).round() / 1000.0,
            "api_key_get_per_s": gets.key_rate.round(),
            "api_key_to_public_ratio": (key_ratio * 1000.0).round() / 1000.0,
            "auth_body_bytes": gets.bytes,
            "public_body_bytes": gets.bytes,
        })
    );
    Ok(0)
}

/// (a) Ingest: `--records` vaccination records sealed in chunks on every
/// core, then sent from `--clients` concurrent clients (only the sending
/// timed); the gateway's CPU over the whole ingest.
async fn measure_ingest(
    a: &BenchHttpArgs,
    client: &GatewayClient,
    entity_id: &str,
    key: &Signer,
    gateway_key: secure_gateway::Sm2VerifyingKey,
    server_pid: u32,
) -> anyhow::Result<Ingest> {
    let (provider, handle) = (key.provider().clone(), key.handle().clone());
    let golden: Vec<serde_json::Value> = serde_json::from_str(GOLDEN)?;
    let template = mappings::exchange::from_json(&golden[0].to_string())
        .map_err(|e| anyhow::anyhow!("the golden vaccination record: {e}"))?;
    let batches = a.records.div_ceil(a.batch);
    let chunk_batches = (a.clients * 8).max(1);
    let mut send_time = Duration::ZERO;
    let mut latencies = Vec::with_capacity(batches);
    let wall = Instant::now();
    let cpu_before = process_cpu_secs(server_pid);
    let mut next_record = 0usize;
    let mut last_report = Instant::now();
    let start = Mark {
        records: 0,
        send: Duration::ZERO,
        cpu: cpu_before,
    };
    let (mut window, mut tenth_start, mut tenths) = (start, start, Vec::new());
    while next_record < a.records {
        // Seal a chunk of batches on every core.
        let first = next_record;
        let n_batches = chunk_batches.min((a.records - first).div_ceil(a.batch));
        let mut sealers = Vec::new();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        for t in 0..threads {
            let (provider, handle, gk, template) =
                (provider.clone(), handle.clone(), gateway_key.clone(), template.clone());
            let (entity_id, batch, records, wire) = (entity_id.to_string(), a.batch, a.records, a.wire);
            sealers.push(tokio::task::spawn_blocking(
                move || -> anyhow::Result<Vec<(usize, Vec<u8>, &'static str)>> {
                    let mut out = Vec::new();
                    for b in (t..n_batches).step_by(threads) {
                        let lo = first + b * batch;
                        let hi = (lo + batch).min(records);
                        let msgs: Vec<ExchangeMessage> = (lo..hi).map(|i| record(&template, i)).collect();
                        let sealed =
                            adapters::seal::seal_batch(provider.as_ref(), &handle, &entity_id, &gk, &[], &msgs)?;
                        let (body, ct) = wire.encode(&sealed)?;
                        out.push((hi - lo, body, ct));
                    }
                    Ok(out)
                },
            ));
        }
        let mut bodies = Vec::new();
        for s in sealers {
            bodies.extend(s.await??);
        }
        next_record = (first + n_batches * a.batch).min(a.records);
        // Send the chunk from `clients` concurrent clients.
        let bodies = Arc::new(bodies);
        let cursor = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let mut senders = Vec::new();
        for _ in 0..a.clients {
            let (client, bodies, cursor) = (client.clone(), bodies.clone(), cursor.clone());
            senders.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some((n, body, ct)) = bodies.get(i) else { break };
                    let t = Instant::now();
                    let resp = client.send_as("POST", "/v1/transactions", body.clone(), ct).await?;
                    lat.push(t.elapsed());
                    let r: IngestSummary = serde_json::from_slice(&resp)?;
                    anyhow::ensure!(
                        r.accepted == *n && r.rejected == 0 && r.duplicates == 0,
                        "a batch of {n} records: {} accepted, {} duplicates, {} rejected",
                        r.accepted,
                        r.duplicates,
                        r.rejected
                    );
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        for s in senders {
            latencies.extend(s.await??);
        }
        send_time += t0.elapsed();
        let now = Mark {
            records: next_record,
            send: send_time,
            cpu: process_cpu_secs(server_pid),
        };
        if next_record * 10 >= (tenths.len() + 1) * a.records {
            let (rate, cpu) = tenth_start.rates_to(&now);
            tenths.push(serde_json::json!({
                "through_records": next_record,
                "records_per_s": rate.round(),
                "server_cpu_us_per_record": cpu,
            }));
            tenth_start = now;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            let (rate, cpu) = window.rates_to(&now);
            let cpu = cpu
                .map(|c| format!(", gateway {c} µs CPU per record"))
                .unwrap_or_default();
            eprintln!(
                "  ingested {next_record} / {} ({:.0} records/s while sending; since the last line {rate:.0} records/s{cpu})",
                a.records,
                next_record as f64 / send_time.as_secs_f64()
            );
            window = now;
        }
    }
    let wall_time = wall.elapsed();
    let server_cpu = match (cpu_before, process_cpu_secs(server_pid)) {
        (Some(b), Some(e)) => Some(e - b),
        _ => None,
    };
    let cpu_per_record_us = server_cpu.map(|c| (c * 1e6 / a.records as f64 * 10.0).round() / 10.0);
    let ingest_rate = a.records as f64 / send_time.as_secs_f64();
    let ingest_rate_wall = a.records as f64 / wall_time.as_secs_f64();
    let lat = sorted_ms(latencies);
    eprintln!(
        "(a) ingest: {} records in batches of {} from {} clients: {:.0} records/s sending ({:.0} records/s with sealing); \
         request p50 {:.1} ms p99 {:.1} ms",
        a.records,
        a.batch,
        a.clients,
        ingest_rate,
        ingest_rate_wall,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    if let Some(us) = cpu_per_record_us {
        eprintln!("    gateway CPU (user + system) over the ingest: {us} µs per record");
    }
    Ok(Ingest {
        send_time,
        wall_time,
        latencies_ms: lat,
        cpu_per_record_us,
        tenths,
    })
}

/// (b) `GET /v1/trace/{code}` latency for `--trace-samples` codes spread
/// over the ledger, each answer checked; the ledger's size and the sorted
/// latencies (ms).
async fn measure_trace(a: &BenchHttpArgs, client: &GatewayClient) -> anyhow::Result<(u64, Vec<f64>)> {
    let stats: serde_json::Value = serde_json::from_slice(&client.get("/v1/stats").await?)?;
    let ledger_txs = stats["transactions"].as_u64().unwrap_or(0);
    let mut trace_lat = Vec::with_capacity(a.trace_samples);
    let mut state = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7))
        | 1;
    for _ in 0..a.trace_samples {
        // xorshift: a spread of codes over the whole ledger.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let i = (state % a.records as u64) as usize;
        let t = Instant::now();
        let body = client.get(&format!("/v1/trace/{}", trace_code(i))).await?;
        trace_lat.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let cats: Vec<&str> = v["steps"]
            .as_array()
            .map(|s| s.iter().filter_map(|x| x["category"].as_str()).collect())
            .unwrap_or_default();
        // The unit held the dose: it reads its upstream history too.
        anyhow::ensure!(
            cats == ["production_inbound", "outbound", "vaccination"] && v["steps"][2].get("alerts").is_none(),
            "trace of record {i}: expected production, delivery and vaccination, no custody alert; got {v}"
        );
    }
    let tl = sorted_ms(trace_lat);
    eprintln!(
        "(b) GET /v1/trace/{{code}} with {ledger_txs} transactions in the ledger: p50 {:.2} ms p99 {:.2} ms ({} samples)",
        pct(&tl, 0.5),
        pct(&tl, 0.99),
        a.trace_samples
    );
    Ok((ledger_txs, tl))
}

/// What the GET comparison measured: requests per second of each route and
/// the size of the (same) body they answered.
struct Gets {
    public_rate: f64,
    auth_rate: f64,
    key_rate: f64,
    bytes: usize,
}

/// (c) Authenticated (SM2-signed, API key) against unauthenticated GETs of
/// the same body, requests signed before the timed loop.
async fn measure_gets(a: &BenchHttpArgs, base: &str, key: &Signer, api_key: &str) -> anyhow::Result<Gets> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.get_clients * 2)
        .build()?;
    let auth_path = "/v1/checkpoints/latest";
    let public_path = "/v1/public/checkpoints/latest";
    let signed: Vec<[(&'static str, String); 5]> = (0..a.get_requests)
        .map(|_| secure_gateway::request::sign_request(key, "GET", auth_path, b"").map(|s| s.headers()))
        .collect::<Result<_, _>>()?;
    let signed = Arc::new(signed);
    let api_header = format!("ApiKey {api_key}");
    // auth: 0 none, 1 SM2-signed, 2 API key.
    let rate = |path: &'static str, auth: u8| {
        let (http, signed, api_header) = (http.clone(), signed.clone(), api_header.clone());
        let url = format!("{base}{path}");
        async move {
            let cursor = Arc::new(AtomicUsize::new(0));
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..a.get_clients {
                let (http, signed, cursor, url) = (http.clone(), signed.clone(), cursor.clone(), url.clone());
                let api_header = api_header.clone();
                let n = a.get_requests;
                tasks.push(tokio::spawn(async move {
                    let mut bytes = 0usize;
                    loop {
                        let i = cursor.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let mut rb = http.get(&url);
                        match auth {
                            1 => {
                                for (k, v) in &signed[i] {
                                    rb = rb.header(*k, v);
                                }
                            }
                            2 => rb = rb.header("authorization", &api_header),
                            _ => {}
                        }
                        let resp = rb.send().await?;
                        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
                        bytes = resp.bytes().await?.len();
                    }
                    Ok::<_, anyhow::Error>(bytes)
                }));
            }
            let mut size = 0;
            for t in tasks {
                size = size.max(t.await??);
            }
            Ok::<_, anyhow::Error>((a.get_requests as f64 / t0.elapsed().as_secs_f64(), size))
        }
    };
    // Warm both routes' connections first.
    let _ = http.get(format!("{base}{public_path}")).send().await?;
    let (public_rate, public_bytes) = rate(public_path, 0).await?;
    let (auth_rate, auth_bytes) = rate(auth_path, 1).await?;
    let (key_rate, key_bytes) = rate(auth_path, 2).await?;
    anyhow::ensure!(
        auth_bytes == public_bytes && key_bytes == public_bytes,
        "the compared routes answered {auth_bytes}, {key_bytes} and {public_bytes} bytes"
    );
    let ratio = auth_rate / public_rate;
    let key_ratio = key_rate / public_rate;
    eprintln!(
        "(c) GET {auth_path} (SM2-signed, rate-limited): {auth_rate:.0} req/s ({auth_bytes} B); \
         GET {public_path} (unauthenticated): {public_rate:.0} req/s ({public_bytes} B); ratio {ratio:.2}"
    );
    eprintln!("    GET {auth_path} (API key, rate-limited): {key_rate:.0} req/s; ratio {key_ratio:.2}");
    Ok(Gets {
        public_rate,
        auth_rate,
        key_rate,
        bytes: public_bytes,
    })
}
