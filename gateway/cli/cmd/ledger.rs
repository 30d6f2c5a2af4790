//! `vaxgate ledger verify|stats|proof`, `vaxgate verify-proof` and
//! `vaxgate bench ledger`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use ledger::{InclusionProof, Ledger, LedgerConfig, LedgerError, LedgerStore, SqliteStore, TxContent, TxKind};
use secure_gateway::{KeyHandle, ProviderKind, Signer, Sm2VerifyingKey, sm3};

/// `vaxgate ledger ...`
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Recompute every Merkle root, the block-hash chain, every transaction
    /// signature and every checkpoint, then check the gateway's projection
    /// (what queries answer from) against the ledger, row by row. Exit 0
    /// when intact, 1 when not.
    Verify {
        /// The ledger database: a SQLite file or a postgres:// URL.
        #[arg(long)]
        db: PathBuf,
        /// Require checkpoints signed by this node public key (SPKI PEM)
        /// instead of trusting the key named in the genesis block.
        #[arg(long)]
        checkpoint_key: Option<PathBuf>,
        /// A signed checkpoint seen before (a JSON file: the checkpoint, or a
        /// receipt, proof or answer holding one); repeatable. The ledger must
        /// hold at least its transactions, and the same ones (a consistency
        /// proof from its size to the ledger's), or it was cut short or
        /// rewritten.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// The ledger must hold at least this many transactions.
        #[arg(long)]
        min_size: Option<u64>,
        /// The crypto provider that checks every signature (rustcrypto or
        /// openssl): a ledger written through one verifies through the other.
        #[arg(long, default_value_t = ProviderKind::RustCrypto)]
        crypto_provider: ProviderKind,
    },
    /// Height, transactions, size and the latest checkpoint.
    Stats {
        /// The ledger database: a SQLite file or a postgres:// URL.
        #[arg(long)]
        db: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print an offline-verifiable inclusion proof of one transaction (JSON).
    Proof {
        /// The ledger database: a SQLite file or a postgres:// URL.
        #[arg(long)]
        db: PathBuf,
        /// Transaction id.
        #[arg(long, required_unless_present = "record", conflicts_with = "record")]
        tx: Option<String>,
        /// Business record (event) id, instead of the transaction id.
        #[arg(long)]
        record: Option<String>,
    },
    /// Write the node public key named in the genesis block (SPKI PEM).
    NodeKey {
        /// The ledger database: a SQLite file or a postgres:// URL.
        #[arg(long)]
        db: PathBuf,
    },
}

/// Arguments of `vaxgate verify-proof`.
#[derive(Debug, clap::Args)]
pub struct VerifyProofArgs {
    /// The proof (JSON written by `vaxgate ledger proof` or the gateway), or
    /// a query answer (`GET /v1/trace/{code}`, `GET /v1/events/{id}`):
    /// every step's content is checked against its transaction's field
    /// commitments and every transaction against the answer's checkpoint.
    pub proof: PathBuf,
    /// The ledger node's public key (SPKI PEM), obtained out of band.
    #[arg(long)]
    pub checkpoint_key: PathBuf,
}

/// Arguments of `vaxgate bench ledger`.
#[derive(Debug, clap::Args)]
pub struct BenchLedgerArgs {
    /// Records to append.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Ledger database to create (must not exist).
    #[arg(long)]
    pub db: PathBuf,
    /// Records per batch-signed transaction.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// The crypto provider that holds the node and client keys.
    #[arg(long, default_value_t = ProviderKind::RustCrypto)]
    pub provider: ProviderKind,
}

/// Opens an existing ledger: a SQLite file, or a `postgres://` URL.
async fn open_db(db: &std::path::Path) -> anyhow::Result<ledger::AnyStore> {
    Ok(ledger::AnyStore::open_existing(db).await?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn read_key(path: &PathBuf) -> anyhow::Result<Sm2VerifyingKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Sm2VerifyingKey::from_public_key_pem(&pem).with_context(|| format!("{}", path.display()))
}

/// Runs a ledger subcommand.
pub fn run(c: LedgerCmd) -> anyhow::Result<u8> {
    runtime()?.block_on(async move {
        match c {
            LedgerCmd::Verify {
                db,
                checkpoint_key,
                checkpoint,
                min_size,
                crypto_provider,
            } => verify(db, checkpoint_key, checkpoint, min_size, crypto_provider).await,
            LedgerCmd::Stats { db, json } => stats(db, json).await,
            LedgerCmd::Proof { db, tx, record } => {
                let store = open_db(&db).await?;
                let tx = match (tx, record) {
                    (Some(tx), _) => tx,
                    (None, Some(r)) => store
                        .tx_by_record(&r)
                        .await?
                        .with_context(|| format!("no transaction holds record {r}"))?
                        .tx
                        .content
                        .tx_id
                        .to_string(),
                    (None, None) => anyhow::bail!("give --tx or --record"),
                };
                let proof = ledger::prove(&store, &tx).await?;
                println!("{}", serde_json::to_string_pretty(&proof)?);
                Ok(0)
            }
            LedgerCmd::NodeKey { db } => {
                let store = open_db(&db).await?;
                let g = store.txs(0, 1).await?;
                let g = g.first().context("the ledger has no genesis transaction")?;
                let info: ledger::GenesisInfo = serde_json::from_slice(&g.tx.content.payload)?;
                print!("{}", info.node_public_key);
                Ok(0)
            }
        }
    })
}

/// Progress of a long step on stderr. On a terminal one line is redrawn
/// in place twice a second and cleared when the step ends; otherwise (a log,
/// a cron job, systemd) a line every 10 s and one when the step ends, so
/// a verification of millions of transactions is never silent for minutes.
struct Progress {
    tty: bool,
    started: Instant,
    last: Instant,
    drawn: bool,
}

impl Progress {
    fn new(tty: bool) -> Progress {
        Progress {
            tty,
            started: Instant::now(),
            last: Instant::now(),
            drawn: false,
        }
    }

    /// Says what starts now (a step that reports nothing until it ends).
    fn step(&mut self, what: &str) {
        if self.tty {
            eprint!("{what}");
            self.drawn = true;
        } else {
            eprintln!("{what} ...");
        }
    }

    /// Reports `what()` if it is time to.
    fn update(&mut self, what: impl FnOnce() -> String) {
        let every = if self.tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        if self.tty {
            eprint!("\r\x1b[K{}", what());
            self.drawn = true;
        } else {
            eprintln!("{} ({:.0} s)", what(), self.started.elapsed().as_secs_f64());
        }
    }

    /// Ends the step: clears the line on a terminal; otherwise says how
    /// long `what` took, when it took long enough to have been reported.
    fn done(&mut self, what: &str) {
        let took = self.started.elapsed();
        if self.tty {
            if self.drawn {
                eprint!("\r\x1b[K");
            }
        } else if took >= Duration::from_secs(10) {
            eprintln!("{what}: checked in {:.1} s", took.as_secs_f64());
        }
    }
}

async fn verify(
    db: PathBuf,
    checkpoint_key: Option<PathBuf>,
    seen: Vec<PathBuf>,
    min_size: Option<u64>,
    provider: ProviderKind,
) -> anyhow::Result<u8> {
    let crypto = provider
        .build()
        .with_context(|| format!("--crypto-provider {}", provider.as_str()))?;
    let trusted = checkpoint_key.as_ref().map(read_key).transpose()?;
    // The checkpoints seen before: read and checked against the key first,
    // so a bad file is the caller's error (exit 2), not the ledger's.
    let node_key = match &trusted {
        Some(k) => Some(k.clone()),
        None if seen.is_empty() => None,
        None => Some(genesis_key(&open_db(&db).await?).await?),
    };
    let mut earlier = Vec::new();
    for f in &seen {
        let cp = read_checkpoint(f)?;
        if let Some(k) = &node_key {
            cp.verify_in(crypto.as_ref(), k)
                .map_err(|e| anyhow::anyhow!("{}: the checkpoint does not verify: {e}", f.display()))?;
        }
        earlier.push((f.clone(), cp));
    }
    let store = open_db(&db).await?;
    let show = std::io::stderr().is_terminal();
    // The database file's own structure first: a damaged index page is no
    // row of the ledger, so the ledger's hashes cannot see it, but a query
    // through that index would answer wrong (SQLite; PostgreSQL has no
    // equivalent without the amcheck extension).
    if let ledger::AnyStore::Sqlite(s) = &store {
        let mut p = Progress::new(show);
        p.step("checking the database file (PRAGMA integrity_check)");
        let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check(20)")
            .fetch_all(s.pool())
            .await
            .with_context(|| format!("{}: PRAGMA integrity_check", db.display()))?;
        p.done("the database file's structure");
        if problems != ["ok"] {
            println!(
                "LEDGER NOT INTACT: the database file {} is damaged (SQLite integrity_check): {}",
                db.display(),
                problems.join("; ")
            );
            return Ok(1);
        }
    }
    let started = Instant::now();
    let mut p = Progress::new(show);
    let result = ledger::verify_ledger_in(&store, trusted.as_ref(), crypto.clone(), |h, of| {
        p.update(|| format!("verifying block {h}/{of}"));
    })
    .await;
    p.done("the ledger");
    match result {
        Ok(r) => {
            println!(
                "ledger intact: {} blocks, {} transactions, {} batch signatures, head {}, root {}, node key {} \
                 (signatures checked by {}, {:.1}s)",
                r.blocks,
                r.transactions,
                r.batch_signatures,
                r.head_hash,
                r.root,
                r.node_key_id,
                crypto.name(),
                started.elapsed().as_secs_f64()
            );
            if let Some(why) = cut_short(&store, r.transactions, &earlier, min_size).await? {
                println!("LEDGER NOT INTACT: {why}");
                return Ok(1);
            }
            if !earlier.is_empty() || min_size.is_some() {
                println!(
                    "ledger not cut short: it holds every transaction of the {} checkpoint(s) given{}",
                    earlier.len(),
                    min_size.map(|m| format!(" and at least {m}")).unwrap_or_default()
                );
            }
            verify_projection(&store, r.transactions, show).await
        }
        Err(e @ LedgerError::Integrity { .. }) => {
            println!("LEDGER NOT INTACT: {e}");
            Ok(1)
        }
        Err(e @ LedgerError::Storage { .. }) => {
            println!("LEDGER NOT INTACT: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

/// The node key the genesis block names.
async fn genesis_key(store: &ledger::AnyStore) -> anyhow::Result<Sm2VerifyingKey> {
    let g = store.txs(0, 1).await?;
    let g = g.first().context("the ledger has no genesis transaction")?;
    let info: ledger::GenesisInfo = serde_json::from_slice(&g.tx.content.payload)?;
    Sm2VerifyingKey::from_public_key_pem(&info.node_public_key).context("the genesis block's node key")
}

/// A signed checkpoint from a file: the checkpoint itself, or any JSON
/// holding one under `checkpoint` (a receipt, a proof, a query answer) or
/// `latest_checkpoint` (`ledger stats --json`).
fn read_checkpoint(f: &PathBuf) -> anyhow::Result<ledger::Checkpoint> {
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", f.display()))?;
    let cp = if v.get("tree_size").is_some() {
        v
    } else if let Some(c) = v.get("checkpoint").or_else(|| v.get("latest_checkpoint")) {
        c.clone()
    } else {
        anyhow::bail!("{}: no signed checkpoint in it", f.display());
    };
    serde_json::from_value(cp).with_context(|| format!("{}: not a signed checkpoint", f.display()))
}

/// Why a verified ledger of `size` transactions is shorter than, or
/// another history than, what was seen of it before; `None` when it
/// extends every checkpoint given.
async fn cut_short(
    store: &ledger::AnyStore,
    size: u64,
    earlier: &[(PathBuf, ledger::Checkpoint)],
    min_size: Option<u64>,
) -> anyhow::Result<Option<String>> {
    if let Some(m) = min_size
        && size < m
    {
        return Ok(Some(format!(
            "it holds {size} transactions, at least {m} were expected (--min-size): it was cut short"
        )));
    }
    let (_, head) = store.head().await?.context("the ledger is empty")?;
    for (f, cp) in earlier {
        let when = cp.signed_at();
        if cp.tree_size > size {
            return Ok(Some(format!(
                "it holds {size} transactions, but the checkpoint in {} (block {}, signed {when}) saw {}: \
                 the newest {} were cut off",
                f.display(),
                cp.height,
                cp.tree_size,
                cp.tree_size - size
            )));
        }
        let same = if cp.tree_size == head.tree_size {
            cp.root == head.root
        } else {
            cp.tree_size == 0
                || ledger::prove_consistency(store, cp.tree_size, head.tree_size)
                    .await?
                    .verify(cp, &head)
        };
        if !same {
            return Ok(Some(format!(
                "its first {} transactions are not those the checkpoint in {} (block {}, signed {when}, root {}) \
                 covers: the history was rewritten",
                cp.tree_size,
                f.display(),
                cp.height,
                cp.root
            )));
        }
    }
    Ok(None)
}

/// The second half of `ledger verify`: the gateway's projection (what
/// queries answer from) against the verified ledger. Exit 1 when a row
/// differs, naming each.
async fn verify_projection(store: &ledger::AnyStore, size: u64, show: bool) -> anyhow::Result<u8> {
    let Some(p) = gateway::projection::Projection::attach(store)
        .await
        .map_err(|e| anyhow::anyhow!("reading the projection: {e}"))?
    else {
        return Ok(0); // a bare ledger (e.g. `vaxgate bench ledger`): no projection to check
    };
    let started = Instant::now();
    let mut progress = Progress::new(show);
    let c = p
        .check_against(store, size, |done, of| {
            progress.update(|| format!("checking the projection: leaf {done}/{of}"));
        })
        .await
        .map_err(|e| anyhow::anyhow!("checking the projection: {e}"))?;
    progress.done("the projection");
    if c.differences.is_empty() {
        println!(
            "projection matches the ledger: {} events, {} checked member by member against their field commitments ({:.1}s)",
            c.rows,
            c.committed,
            started.elapsed().as_secs_f64()
        );
        return Ok(0);
    }
    println!(
        "PROJECTION DIFFERS FROM THE LEDGER: {} row(s) of {}; queries would serve what the ledger does not hold",
        c.differences.len(),
        c.rows
    );
    for d in c.differences.iter().take(50) {
        println!("  {d}");
    }
    if c.differences.len() > 50 {
        println!("  ... and {} more", c.differences.len() - 50);
    }
    Ok(1)
}

async fn stats(db: PathBuf, json: bool) -> anyhow::Result<u8> {
    let store = open_db(&db).await?;
    let s = store.stats().await?;
    let (_, cp) = store.head().await?.context("the ledger is empty")?;
    if json {
        println!("{}", serde_json::json!({ "stats": s, "latest_checkpoint": cp }));
    } else {
        println!("database     {}", db.display());
        println!("height       {}", s.height);
        println!("transactions {}", s.transactions);
        println!("size         {:.1} MiB", s.size_bytes as f64 / 1048576.0);
        println!(
            "checkpoint   tree size {} root {} block {} at {} signed by {}",
            cp.tree_size,
            cp.root,
            cp.block_hash,
            cp.signed_at(),
            cp.key_id
        );
    }
    Ok(0)
}

/// Runs `verify-proof`: exit 0 when the proof verifies, 1 when it does not.
pub fn verify_proof(a: VerifyProofArgs) -> anyhow::Result<u8> {
    let key = read_key(&a.checkpoint_key)?;
    let text = std::fs::read_to_string(&a.proof).with_context(|| format!("reading {}", a.proof.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", a.proof.display()))?;
    if gateway::answer::is_answer(&doc) {
        return match gateway::answer::verify_answer(&doc, &key) {
            Ok(r) => {
                let withheld: usize = r.steps.iter().map(|s| s.withheld).sum();
                println!(
                    "answer OK: {} step(s), every member shown is the one committed to in its transaction, \
                     every transaction is in the log under the checkpoint of tree size {} signed by {} \
                     ({} member(s) withheld, checked by digest)",
                    r.steps.len(),
                    r.checkpoint.tree_size,
                    key.key_id(),
                    withheld
                );
                let (checked, unchecked) = r.annotations;
                if checked + unchecked > 0 {
                    println!(
                        "annotations: {checked} checked against the steps they name; \
                         {unchecked} name a step the answer does not hold (not checked)"
                    );
                }
                if let Some(t) = &r.recall {
                    println!(
                        "recall counts OK: recounted from the steps: {} unit(s) and {} package(s) of {} holder(s), \
                         {} dose(s) given by {} vaccinating unit(s), {} destroyed, {} refused at receipt, {} of unknown state",
                        t.units,
                        t.packages,
                        t.held.len(),
                        t.administered_doses,
                        t.administered.len(),
                        t.destroyed.values().sum::<usize>(),
                        t.refused.values().sum::<usize>(),
                        t.unknown
                    );
                }
                if let Some(t) = &r.stock {
                    println!(
                        "stock counts OK: recounted from the steps: {} unit(s) in {} lot(s), {} package(s), \
                         {} emptied package(s); a code the answer leaves out is not caught by this check",
                        t.lots.values().map(|l| l.units).sum::<usize>(),
                        t.lots.len(),
                        t.packages.len(),
                        t.emptied_packages.len()
                    );
                }
                Ok(0)
            }
            Err(e) => {
                println!("ANSWER INVALID: {e}");
                Ok(1)
            }
        };
    }
    let proof: InclusionProof =
        serde_json::from_str(&text).with_context(|| format!("{}: not an inclusion proof", a.proof.display()))?;
    match proof.verify(&key) {
        Ok(()) => {
            println!(
                "proof OK: transaction {} (record {}) is leaf {} in block {} under the checkpoint of tree size {} signed by {}",
                proof.transaction.content.tx_id,
                proof.transaction.content.record_id,
                proof.leaf_index,
                proof.block.height,
                proof.checkpoint.tree_size,
                key.key_id()
            );
            Ok(0)
        }
        Err(e) => {
            println!("PROOF INVALID: {e}");
            Ok(1)
        }
    }
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs `bench ledger`.
pub fn bench(a: BenchLedgerArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(
        !a.db.exists(),
        "{} exists; the benchmark creates a new ledger",
        a.db.display()
    );
    anyhow::ensure!(a.batch > 0 && a.clients > 0, "--batch and --clients must be at least 1");
    runtime()?.block_on(bench_async(a))
}

async fn bench_async(a: BenchLedgerArgs) -> anyhow::Result<u8> {
    let provider = a.provider.build()?;
    let node = Signer::generate(provider.clone(), KeyHandle::new("node"))?;
    let key_path = PathBuf::from(format!("{}.node.pub.pem", a.db.display()));
    std::fs::write(&key_path, node.verifying_key().to_public_key_pem())?;
    let store = SqliteStore::open(&a.db).await?;
    let l = Ledger::open(store, node, "bench", LedgerConfig::default()).await?;
    let client = Signer::generate(provider, KeyHandle::new("client"))?;
    let batches = a.records.div_ceil(a.batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let show = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let (l, client, next, done) = (l.clone(), client.clone(), next.clone(), done.clone());
        let (records, batch, payload) = (a.records, a.batch, a.payload);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let from = b * batch as u64;
                let to = (from + batch as u64).min(records);
                let contents: Vec<TxContent> = (from..to).map(|i| synthetic(i, payload)).collect();
                let txs = ledger::sign_batch("bench-client", &client, contents, chrono::Utc::now().timestamp_millis())
                    .map_err(|source| LedgerError::Signing {
                        what: "a benchmark batch",
                        source,
                    })?;
                let t = Instant::now();
                l.append(txs).await?;
                lat.push(t.elapsed());
                done.fetch_add(to - from, Ordering::Relaxed);
            }
            Ok::<_, LedgerError>(lat)
        }));
    }
    let progress = {
        let done = done.clone();
        let total = a.records;
        tokio::spawn(async move {
            if !show {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                eprint!("\rappended {}/{}", done.load(Ordering::Relaxed), total);
            }
        })
    };
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed();
    progress.abort();
    if show {
        eprint!("\r\x1b[K");
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };

    // Proof size and verification time at the final size.
    let last = l.store().txs(a.records / 2, a.records / 2 + 1).await?;
    let proof = ledger::prove(l.store(), &last[0].tx.content.tx_id.to_string()).await?;
    let vk = l.node_key().clone();
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        proof.verify(&vk).map_err(anyhow::Error::msg)?;
    }
    let verify_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(n);
    let stats = l.store().stats().await?;
    let rps = a.records as f64 / elapsed.as_secs_f64();
    println!(
        "{} records of {} B in batches of {} from {} clients: {:.2}s, {:.0} records/s; append latency p50 {:.1} ms p99 {:.1} ms; \
         {} blocks; proof path {} hashes ({} B compact, {} B JSON), verified in {:.3} ms; db {:.0} MiB; peak RSS {:.0} MiB",
        a.records,
        a.payload,
        a.batch,
        a.clients,
        elapsed.as_secs_f64(),
        rps,
        pct(0.5),
        pct(0.99),
        stats.height,
        proof.audit_path.len(),
        proof.compact_size(),
        serde_json::to_string(&proof)?.len(),
        verify_ms,
        stats.size_bytes as f64 / 1048576.0,
        peak_rss_mib()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "ledger",
            "records": a.records,
            "payload_bytes": a.payload,
            "batch": a.batch,
            "clients": a.clients,
            "seconds": elapsed.as_secs_f64(),
            "records_per_sec": rps.round(),
            "p50_append_ms": pct(0.5),
            "p99_append_ms": pct(0.99),
            "blocks": stats.height,
            "proof_hashes": proof.audit_path.len(),
            "proof_compact_bytes": proof.compact_size(),
            "proof_verify_ms": verify_ms,
            "db_bytes": stats.size_bytes,
            "peak_rss_mib": peak_rss_mib().round(),
        })
    );
    let store = l.store().clone();
    drop(l);
    store.close().await?;
    Ok(0)
}

/// A synthetic record: an opaque pseudo-random payload (as ciphertext looks).
/// Record `i`'s payload is the xorshift64 stream seeded with
/// `i · 0x9E3779B97F4A7C15 | 1`, eight little-endian bytes per step (tests rely on it).
fn synthetic(i: u64, len: usize) -> TxContent {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    // Ciphertext-like bytes, eight at a time (xorshift64).
    let mut payload: Vec<u8> = Vec::with_capacity(len + 8);
    while payload.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.extend_from_slice(&x.to_le_bytes());
    }
    payload.truncate(len);
    TxContent {
        tx_id: uuid::Uuid::now_v7(),
        record_id: format!("bench-{i}"),
        kind: TxKind::Data,
        category: "vaccination".into(),
        state_key: format!("8{:019}", i),
        content_type: "json".into(),
        data_hash: sm3(&payload),
        payload,
        fields_root: None,
        format: ledger::TxFormat::CURRENT,
    }
}
