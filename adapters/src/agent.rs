//! The agent: builds the pipeline from the configuration, runs each
//! configured source, and offers `check` and the quarantine operations.
//!
//! A pull source runs as two tasks joined by a bounded channel
//! (`prefetch` pages): a reader that fetches pages after its in-memory
//! position, and a submitter that hands each page to the pipeline with the
//! page's last position as the checkpoint. The checkpoint is stored only in
//! the transaction that stores the page's receipts, so a restart resumes
//! after the last page whose receipts are in the state database.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use mappings::{Dataset, MappingSpec, Record};
use tokio::sync::{mpsc, watch};

use crate::client::{GatewayClient, GatewayClientConfig};
use crate::config::{LoadedAgentConfig, SourceConfig};
use crate::error::AgentError;
use crate::mssql::MssqlSource;
use crate::pipeline::{Pipeline, PipelineConfig, RecordOutcome, record_from_stored};
use crate::retry::Backoff;
use crate::sql::{Cell, SourceRow, SqlCheckpoint, SqlSource};
use crate::state::StateDb;

fn file_err(path: &std::path::Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Loads the dataset and every source's mapping spec.
pub fn load_specs(cfg: &LoadedAgentConfig) -> Result<Vec<(String, MappingSpec)>, AgentError> {
    let dataset = match &cfg.config.agent.dataset {
        Some(p) => {
            let p = cfg.resolve(p);
            Dataset::load(&p).map_err(|e| file_err(&p, e))?
        }
        None => Dataset::builtin(),
    };
    cfg.config
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = cfg.resolve(s.mapping());
            let spec = MappingSpec::load(&p, &dataset)
                .map_err(|e| cfg.invalid(&format!("sources[{i}].mapping"), e.to_string()))?;
            Ok((s.name().to_string(), spec))
        })
        .collect()
}

/// Builds the signed pipeline (key, gateway client, state database, specs).
pub async fn build_pipeline(cfg: &LoadedAgentConfig) -> Result<Pipeline, AgentError> {
    let c = &cfg.config;
    let key_path = cfg.resolve(&c.agent.key);
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?);
    let pass = std::env::var(&c.agent.passphrase_env).ok().map(zeroize::Zeroizing::new);
    let provider = c
        .crypto
        .provider
        .build()
        .map_err(|e| cfg.invalid("crypto.provider", e.to_string()))?;
    let handle = secure_gateway::KeyHandle::new("agent");
    provider
        .import_sm2_pem(
            handle.clone(),
            &pem,
            pass.as_deref().map(String::as_str),
            secure_gateway::DEFAULT_DIST_ID,
        )
        .map_err(|e| {
            let hint = if pass.is_none() {
                format!(" (is {} set?)", c.agent.passphrase_env)
            } else {
                String::new()
            };
            cfg.invalid("agent.key", format!("cannot open the key: {e}{hint}"))
        })?;
    let key = secure_gateway::Signer::new(provider, handle).map_err(|e| cfg.invalid("agent.key", e.to_string()))?;
    let node_key_path = cfg.resolve(&c.gateway.node_key);
    let gateway_key = secure_gateway::load_verifying_key(&node_key_path)
        .map_err(|e| cfg.invalid("gateway.node_key", e.to_string()))?;
    let client = GatewayClient::new(
        &GatewayClientConfig {
            base_url: c.gateway.url.clone(),
            ca_cert: c.gateway.ca.as_ref().map(|p| cfg.resolve(p)),
            client_identity: c.gateway.client_identity.as_ref().map(|p| cfg.resolve(p)),
            timeout: Some(Duration::from_secs(c.gateway.timeout_secs)),
        },
        key.clone(),
    )?;
    let state = StateDb::open(&cfg.resolve(&c.agent.state_db)).await?;
    let pipeline = Pipeline::new(
        client,
        PipelineConfig {
            entity_id: c.agent.entity_id.clone(),
            key,
            gateway_key,
            attempts: c.gateway.attempts,
            retry_base: Duration::from_millis(c.gateway.retry_base_ms),
            retry_max: Duration::from_millis(c.gateway.retry_max_ms),
        },
        state,
    );
    for (name, spec) in load_specs(cfg)? {
        pipeline.add_source(&name, spec);
    }
    Ok(pipeline)
}

/// A pull source: sqlx (SQLite, PostgreSQL, MySQL/MariaDB) or tiberius
/// (SQL Server), with the same watermark semantics.
#[derive(Debug)]
pub enum PullSource {
    /// sqlx.
    Sqlx(Box<SqlSource>),
    /// tiberius.
    Mssql(Box<MssqlSource>),
}

impl From<SqlSource> for PullSource {
    fn from(s: SqlSource) -> PullSource {
        PullSource::Sqlx(Box::new(s))
    }
}

impl From<MssqlSource> for PullSource {
    fn from(s: MssqlSource) -> PullSource {
        PullSource::Mssql(Box::new(s))
    }
}

impl PullSource {
    /// The source for a `[[sources]]` entry of type `kind`.
    pub fn new(kind: &str, cfg: &crate::config::SqlSourceConfig) -> Result<PullSource, AgentError> {
        Ok(match kind {
            "mssql" => PullSource::Mssql(Box::new(MssqlSource::new(cfg)?)),
            _ => PullSource::Sqlx(Box::new(SqlSource::new(kind, cfg)?)),
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        match self {
            PullSource::Sqlx(s) => s.name(),
            PullSource::Mssql(s) => s.name(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &crate::config::SqlSourceConfig {
        match self {
            PullSource::Sqlx(s) => s.config(),
            PullSource::Mssql(s) => s.config(),
        }
    }

    /// Rows after `after`, at most `limit`.
    pub async fn fetch(&self, after: Option<&SqlCheckpoint>, limit: usize) -> Result<Vec<SourceRow>, AgentError> {
        match self {
            PullSource::Sqlx(s) => s.fetch(after, limit).await,
            PullSource::Mssql(s) => s.fetch(after, limit).await,
        }
    }

    /// Rows after `after`.
    pub async fn count_after(&self, after: Option<&SqlCheckpoint>) -> Result<u64, AgentError> {
        match self {
            PullSource::Sqlx(s) => s.count_after(after).await,
            PullSource::Mssql(s) => s.count_after(after).await,
        }
    }

    /// The `mark_processed` statement for accepted keys.
    pub async fn mark_processed(&self, keys: &[Cell]) -> Result<(), AgentError> {
        match self {
            PullSource::Sqlx(s) => s.mark_processed(keys).await,
            PullSource::Mssql(s) => s.mark_processed(keys).await,
        }
    }

    /// Connection test.
    pub async fn check(&self) -> Result<String, AgentError> {
        match self {
            PullSource::Sqlx(s) => s.check().await,
            PullSource::Mssql(s) => s.check().await,
        }
    }

    /// Closes connections.
    pub async fn close(&self) {
        match self {
            PullSource::Sqlx(s) => s.close().await,
            PullSource::Mssql(s) => s.close().await,
        }
    }
}

/// What one pull-source run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records accepted (including duplicates of earlier sends).
    pub accepted: u64,
    /// Records refused by the gateway.
    pub rejected: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// Batches committed.
    pub batches: u64,
    /// A stop was requested before a `--once` run had read its source to
    /// the end (the next run resumes after the last committed page).
    pub stopped_early: bool,
}

/// Runs every configured source until `stop` turns true (or, with
/// `until_caught_up`, until each pull source has nothing left to read).
/// On a terminal each pull source shows a progress bar.
pub async fn run(
    cfg: &LoadedAgentConfig,
    stop: watch::Receiver<bool>,
    until_caught_up: bool,
) -> Result<Vec<(String, RunStats)>, AgentError> {
    run_with_bars(cfg, stop, until_caught_up, std::io::stderr().is_terminal()).await
}

/// [`run`], with the pull sources' progress bars on stderr only if
/// `progress` (a caller running several agents at once shows its own).
pub async fn run_with_bars(
    cfg: &LoadedAgentConfig,
    stop: watch::Receiver<bool>,
    until_caught_up: bool,
    progress: bool,
) -> Result<Vec<(String, RunStats)>, AgentError> {
    let pipeline = build_pipeline(cfg).await?;
    let mut tasks = Vec::new();
    for s in &cfg.config.sources {
        let pipeline = pipeline.clone();
        let stop = stop.clone();
        match s {
            SourceConfig::Sqlite(q) | SourceConfig::Postgres(q) | SourceConfig::Mysql(q) | SourceConfig::Mssql(q) => {
                let src = PullSource::new(s.kind(), q)?;
                tasks.push(tokio::spawn(async move {
                    let name = src.name().to_string();
                    let r = run_sql_source(pipeline, src, stop, until_caught_up, progress).await;
                    (name, r)
                }));
            }
            other => {
                // push sources (HL7 MLLP / files, XML directory, AMQP): crate::push_sources
                let Some(p) = other.push() else { continue };
                let p = p.resolved(|path| cfg.resolve(path));
                let spec = pipeline.spec(p.name())?;
                tasks.push(tokio::spawn(async move {
                    let name = p.name().to_string();
                    let r = crate::push_sources::run_push_source(&p, spec, pipeline, stop, until_caught_up)
                        .await
                        .map(|s| RunStats {
                            accepted: s.accepted,
                            rejected: s.rejected,
                            quarantined: s.quarantined,
                            ..RunStats::default()
                        });
                    (name, r)
                }));
            }
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        let (name, r) = t.await.map_err(|e| AgentError::Source {
            source_name: "?".into(),
            message: format!("source task failed: {e}"),
            transient: false,
        })?;
        out.push((name, r?));
    }
    pipeline.state().close().await;
    Ok(out)
}

/// Sleeps `d` unless a stop is requested first; whether to stop. A closed
/// stop channel (no sender left) never means "stop".
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => match r {
            Ok(()) => *stop.borrow(),
            Err(_) => {
                tokio::time::sleep(d).await;
                *stop.borrow()
            }
        },
    }
}

/// What the reader hands the submitter.
enum Page {
    /// The next rows, in watermark order.
    Rows(Vec<SourceRow>),
    /// Nothing after this position (`--once` only): the source is read.
    End(Option<SqlCheckpoint>),
}

/// What the commit step needs of a delivered page: its rows' keys (in
/// order) and the position after its last row.
struct PageDone {
    keys: Vec<Cell>,
    last: SqlCheckpoint,
}

/// What one element of the in-order delivery stream is.
enum Step {
    /// A page whose receipts are in hand, ready to commit.
    Delivered(Box<(PageDone, crate::pipeline::Delivered)>),
    /// A delivery gave up because a stop was requested.
    Stopped,
    /// The reader's end marker (after every page it read).
    End(Option<SqlCheckpoint>),
}

fn describe(p: Option<&SqlCheckpoint>) -> String {
    match p {
        None => "the start".into(),
        Some(p) => format!("(watermark {}, key {})", p.wm.key_string(), p.key.key_string()),
    }
}

/// Runs one SQL source: reader → bounded channel → submitter.
pub async fn run_sql_source(
    pipeline: Pipeline,
    src: impl Into<PullSource>,
    stop: watch::Receiver<bool>,
    until_caught_up: bool,
    progress: bool,
) -> Result<RunStats, AgentError> {
    let src: PullSource = src.into();
    let name = src.name().to_string();
    let start: Option<SqlCheckpoint> =
        match pipeline.state().checkpoint(&name).await? {
            Some(v) => Some(serde_json::from_value(v).map_err(|e| {
                AgentError::state(pipeline.state().path(), format!("checkpoint of source `{name}`: {e}"))
            })?),
            None => None,
        };
    let cfg = src.config().clone();
    let poll = Duration::from_secs_f64(cfg.poll_interval_secs);
    let bar = if progress {
        match src.count_after(start.as_ref()).await {
            Ok(n) if n > 0 => {
                let b = indicatif::ProgressBar::new(n);
                b.set_style(
                    indicatif::ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} rows {per_sec} eta {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.set_prefix(name.clone());
                Some(b)
            }
            _ => None,
        }
    } else {
        None
    };
    tracing::info!(source = %name, resumed = start.is_some(), "source started");

    let (tx, rx) = mpsc::channel::<Page>(cfg.prefetch);
    let src = std::sync::Arc::new(src);
    let reader_src = src.clone();
    let mut reader_stop = stop.clone();
    let reader_start = start.clone();
    let reader = tokio::spawn(async move {
        let mut pos = reader_start;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            if *reader_stop.borrow() {
                return;
            }
            match reader_src.fetch(pos.as_ref(), reader_src.config().batch_size).await {
                Ok(rows) if rows.is_empty() => {
                    backoff.reset();
                    if until_caught_up {
                        tracing::info!(source = %reader_src.name(), "caught up");
                        // The end is said explicitly: a closed channel
                        // without it means the reader died, not "done".
                        let _ = tx.send(Page::End(pos)).await;
                        return;
                    }
                    if sleep_or_stop(poll, &mut reader_stop).await {
                        return;
                    }
                }
                Ok(rows) => {
                    backoff.reset();
                    pos = rows.last().map(|r| r.position.clone());
                    if tx.send(Page::Rows(rows)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %reader_src.name(), error = %e, "reading the source failed; retrying");
                    if !e.is_transient() && backoff.attempts() == 0 {
                        tracing::error!(source = %reader_src.name(), error = %e, "source error (will keep retrying)");
                    }
                    if sleep_or_stop(backoff.next_delay(), &mut reader_stop).await {
                        return;
                    }
                }
            }
        }
    });

    let mut stats = RunStats::default();
    // Up to `in_flight` pages at the gateway at once (mapping and sealing of
    // one overlap the gateway's work on another); commits stay in page order.
    let name2 = name.clone();
    let pipe2 = pipeline.clone();
    let stop2 = stop.clone();
    let pages = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut deliveries = pages
        .map(move |page: Page| {
            let rows = match page {
                Page::Rows(rows) => rows,
                Page::End(pos) => return futures_util::future::ready(Ok(Step::End(pos))).boxed(),
            };
            let pipeline = pipe2.clone();
            let name = name2.clone();
            let mut stop = stop2.clone();
            // A task of its own: it must progress (and release the state
            // database) while the consumer waits on an earlier commit.
            let task = tokio::spawn(async move {
                let last = rows.last()?.position.clone();
                let checkpoint = serde_json::to_value(&last).ok()?;
                // The rows move into the records (no copy); what the commit
                // step needs of them is the keys and the last position.
                let mut keys = Vec::with_capacity(rows.len());
                let records: Arc<Vec<(String, Record)>> = Arc::new(
                    rows.into_iter()
                        .map(|r| {
                            let k = r.key.key_string();
                            keys.push(r.key);
                            (k, Record::Row(r.row))
                        })
                        .collect(),
                );
                let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
                loop {
                    match pipeline.deliver(&name, records.clone(), Some(checkpoint.clone())).await {
                        Ok(d) => return Some(Ok(Box::new((PageDone { keys, last }, d)))),
                        // Not the network: the gateway's ledger is not the
                        // one it signed before. Retrying cannot help; an
                        // operator must look.
                        Err(e @ AgentError::LedgerRewound(_)) => return Some(Err(e.to_string())),
                        Err(e) => {
                            tracing::warn!(source = %name, error = %e, "batch not delivered; retrying");
                            if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                                return None;
                            }
                        }
                    }
                }
            });
            async move {
                match task.await {
                    Ok(Some(Ok(done))) => Ok(Step::Delivered(done)),
                    Ok(Some(Err(fatal))) => Err(fatal),
                    Ok(None) => Ok(Step::Stopped),
                    Err(e) => Err(format!("delivery task failed: {e}")),
                }
            }
            .boxed()
        })
        .buffered(cfg.in_flight)
        .boxed();
    // The position of the last page whose receipts and checkpoint are
    // committed; `--once` ends only when the reader's end is this position.
    let mut committed: Option<SqlCheckpoint> = start.clone();
    let mut reached_end = false;
    while let Some(item) = deliveries.next().await {
        let (page, delivered) = match item {
            Ok(Step::Delivered(done)) => *done,
            Ok(Step::End(pos)) => {
                if pos != committed {
                    return Err(AgentError::Source {
                        source_name: name.clone(),
                        message: format!(
                            "the reader reached the end at {} but the last committed page ends at {}: pages were \
                             left unsent",
                            describe(pos.as_ref()),
                            describe(committed.as_ref())
                        ),
                        transient: false,
                    });
                }
                reached_end = true;
                break;
            }
            // Only a requested stop ends the loop before the source is read.
            Ok(Step::Stopped) if *stop.borrow() => break,
            Ok(Step::Stopped) => {
                return Err(AgentError::Source {
                    source_name: name.clone(),
                    message: "a delivery ended without a stop request".into(),
                    transient: false,
                });
            }
            Err(message) => {
                tracing::error!(source = %name, error = %message, "delivery failed");
                return Err(AgentError::Source {
                    source_name: name.clone(),
                    message,
                    transient: false,
                });
            }
        };
        let outcomes = pipeline.commit(delivered).await?;
        committed = Some(page.last);
        let rows = page.keys.len();
        let mut accepted_keys = Vec::new();
        for (o, key) in outcomes.iter().zip(page.keys) {
            match o {
                RecordOutcome::Accepted { .. } => {
                    stats.accepted += 1;
                    accepted_keys.push(key);
                }
                RecordOutcome::Rejected { .. } => stats.rejected += 1,
                RecordOutcome::Quarantined { .. } => stats.quarantined += 1,
            }
        }
        stats.batches += 1;
        if let Err(e) = src.mark_processed(&accepted_keys).await {
            tracing::warn!(source = %name, error = %e, "mark_processed failed (the records are delivered)");
        }
        if let Some(b) = &bar {
            b.inc(rows as u64);
        }
        tracing::info!(
            source = %name, rows, accepted = stats.accepted, rejected = stats.rejected,
            quarantined = stats.quarantined, "batch committed"
        );
        if *stop.borrow() {
            break;
        }
    }
    drop(deliveries);
    if until_caught_up && !reached_end && *stop.borrow() {
        tracing::warn!(
            source = %name,
            resume_after = %describe(committed.as_ref()),
            "stopped on request before the end of the source"
        );
        stats.stopped_early = true;
    }
    if !reached_end && !*stop.borrow() {
        // The page stream closed without the reader's end marker and
        // without a stop request: the reader task ended early (a panic).
        let why = match reader.await {
            Err(e) => format!("the source reader failed: {e}"),
            Ok(()) => "the source reader ended before the end of the source".to_string(),
        };
        tracing::error!(source = %name, error = %why, "pages left unsent");
        return Err(AgentError::Source {
            source_name: name.clone(),
            message: format!(
                "{why}; the last committed page ends at {}",
                describe(committed.as_ref())
            ),
            transient: false,
        });
    }
    reader.abort();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    src.close().await;
    Ok(stats)
}

/// One line of `vaxgate agent check`.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// What was checked (`gateway`, `state`, `source <name>`).
    pub what: String,
    /// Whether it works.
    pub ok: bool,
    /// Details.
    pub detail: String,
}

/// Tests the state database, the gateway (reachable, key registered) and
/// every source's connection and query.
pub async fn check(cfg: &LoadedAgentConfig) -> Result<Vec<CheckLine>, AgentError> {
    let pipeline = build_pipeline(cfg).await?;
    let mut out = vec![CheckLine {
        what: "state".into(),
        ok: true,
        detail: format!("state database {} opens", pipeline.state().path()),
    }];
    let gw = match pipeline.client().get("/v1/stats").await {
        Ok(_) => CheckLine {
            what: "gateway".into(),
            ok: true,
            detail: format!(
                "{} reachable; the agent's key is registered for {}",
                cfg.config.gateway.url, cfg.config.agent.entity_id
            ),
        },
        Err(crate::ClientError::Api { status: 403, .. }) => CheckLine {
            what: "gateway".into(),
            ok: true,
            detail: format!(
                "{} reachable; the agent's key is registered (no read scope for /v1/stats)",
                cfg.config.gateway.url
            ),
        },
        Err(e) => CheckLine {
            what: "gateway".into(),
            ok: false,
            detail: e.to_string(),
        },
    };
    out.push(gw);
    for s in &cfg.config.sources {
        let what = format!("source {} ({})", s.name(), s.kind());
        let line = match s {
            SourceConfig::Sqlite(q) | SourceConfig::Postgres(q) | SourceConfig::Mysql(q) | SourceConfig::Mssql(q) => {
                match PullSource::new(s.kind(), q) {
                    Ok(src) => {
                        let r = tokio::time::timeout(Duration::from_secs(15), src.check()).await;
                        src.close().await;
                        match r {
                            Ok(Ok(d)) => CheckLine {
                                what,
                                ok: true,
                                detail: d,
                            },
                            Ok(Err(e)) => CheckLine {
                                what,
                                ok: false,
                                detail: e.to_string(),
                            },
                            Err(_) => CheckLine {
                                what,
                                ok: false,
                                detail: "no answer within 15 s".into(),
                            },
                        }
                    }
                    Err(e) => CheckLine {
                        what,
                        ok: false,
                        detail: e.to_string(),
                    },
                }
            }
            other => match other.push() {
                Some(p) => match crate::push_sources::check_push_source(&p.resolved(|path| cfg.resolve(path))).await {
                    Ok(detail) => CheckLine { what, ok: true, detail },
                    Err(detail) => CheckLine {
                        what,
                        ok: false,
                        detail,
                    },
                },
                None => CheckLine {
                    what,
                    ok: false,
                    detail: "unknown source type".into(),
                },
            },
        };
        out.push(line);
    }
    pipeline.state().close().await;
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Now accepted (resolved).
    pub accepted: usize,
    /// Still failing mapping/validation (kept).
    pub quarantined: usize,
    /// Refused by the gateway (kept).
    pub rejected: usize,
}

/// Re-maps quarantined records with the current specs and submits them:
/// the given ids, or every open entry (of `source`, if given).
pub async fn replay(pipeline: &Pipeline, ids: &[i64], source: Option<&str>) -> Result<ReplayStats, AgentError> {
    let mut entries = Vec::new();
    if ids.is_empty() {
        entries = pipeline.state().quarantine_list(source, false).await?;
    } else {
        for id in ids {
            match pipeline.state().quarantine_get(*id).await? {
                Some(e) if e.resolved_at.is_none() => entries.push(e),
                Some(_) => {
                    return Err(AgentError::Answer(format!("quarantine entry {id} is already resolved")));
                }
                None => return Err(AgentError::Answer(format!("no quarantine entry {id}"))),
            }
        }
    }
    let mut stats = ReplayStats::default();
    let mut by_source: std::collections::BTreeMap<String, Vec<(String, Record)>> = Default::default();
    for e in entries {
        let Some(r) = record_from_stored(&e.kind, &e.record) else {
            return Err(AgentError::Answer(format!(
                "quarantine entry {} holds an unreadable {} record",
                e.id, e.kind
            )));
        };
        by_source
            .entry(e.source.clone())
            .or_default()
            .push((e.record_key.clone(), r));
    }
    for (src, records) in by_source {
        for chunk in records.chunks(500) {
            for o in pipeline.submit(&src, chunk.to_vec()).await? {
                match o {
                    RecordOutcome::Accepted { .. } => stats.accepted += 1,
                    RecordOutcome::Quarantined { .. } => stats.quarantined += 1,
                    RecordOutcome::Rejected { .. } => stats.rejected += 1,
                }
            }
        }
    }
    Ok(stats)
}

/// Opens only the state database (for `quarantine list/show`).
pub async fn open_state(cfg: &LoadedAgentConfig) -> Result<StateDb, AgentError> {
    StateDb::open(&cfg.resolve(&cfg.config.agent.state_db)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent binary keeps the stop sender in its Ctrl-C task; a library
    /// caller may drop it. A closed channel used to count as a stop request:
    /// a delivery retrying through a gateway outage then gave up, and the
    /// source ended with exit 0 and pages unsent.
    #[tokio::test]
    async fn a_closed_stop_channel_is_not_a_stop_request() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let t = std::time::Instant::now();
        assert!(!sleep_or_stop(Duration::from_millis(50), &mut rx).await);
        assert!(t.elapsed() >= Duration::from_millis(50), "it did not wait");

        let (tx, mut rx) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(true);
            tx
        });
        let t = std::time::Instant::now();
        assert!(sleep_or_stop(Duration::from_secs(600), &mut rx).await);
        assert!(t.elapsed() < Duration::from_secs(60));
        drop(stopper.await);
    }

    #[test]
    fn positions_are_described_without_row_values() {
        assert_eq!(describe(None), "the start");
        let p = SqlCheckpoint {
            wm: Cell::Text("20240305080000".into()),
            key: Cell::Text("JZ0000000006".into()),
        };
        assert_eq!(describe(Some(&p)), "(watermark 20240305080000, key JZ0000000006)");
    }
}
