//! The SQL source types (`sqlite`, `postgres`, `mysql`: sqlx in
//! [`crate::sql`]; `mssql`: tiberius in [`crate::mssql`]): their
//! `[[sources]]` table ([`SqlSourceConfig`]), its checks, and the run loop
//! they share. A backend implements [`PullReader`]; [`PullSource`] makes it
//! a [`Source`].
//!
//! A pull source runs as two tasks joined by a bounded channel
//! (`prefetch` pages): a reader that fetches pages after its in-memory
//! position, and a submitter that hands each page to the pipeline with the
//! page's last position as the checkpoint (up to `in_flight` pages at the
//! gateway at once). A committer stores the receipts page by page, in
//! order; the checkpoint is stored only in the transaction that stores the
//! page's receipts, so a restart resumes after the last page whose receipts
//! are in the state database.

use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use mappings::Record;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::config::default_usize;
use crate::error::AgentError;
use crate::pipeline::{Delivered, Pipeline, RecordOutcome};
use crate::retry::Backoff;
use crate::source::{Invalid, RunStats, Source, SourceContext, SourceTask};
use crate::sql::{Cell, SourceRow, SqlCheckpoint};

/// A SQL source: incremental pull by watermark (with a tie-breaker key)
/// or by a change table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceConfig {
    /// Unique name (checkpoints and quarantine are kept under it).
    pub name: String,
    /// The mapping spec (`config/mappings/*.toml`).
    pub mapping: PathBuf,
    /// Connection URL (`sqlite:path`, `postgres://...`, `mysql://...`,
    /// or an ADO.NET string for `mssql`); use `${ENV}` for passwords.
    pub url: String,
    /// The table or view to read (alternative to `query`).
    #[serde(default)]
    pub table: Option<String>,
    /// A SELECT whose rows are the records (alternative to `table`); it is
    /// wrapped as a subquery, filtered by the watermark and ordered.
    #[serde(default)]
    pub query: Option<String>,
    /// The watermark column (an increasing id or a timestamp).
    #[serde(default)]
    pub watermark: Option<String>,
    /// The tie-breaker key column (unique); default: the watermark column.
    #[serde(default)]
    pub key: Option<String>,
    /// Pull by a change table instead of a watermark.
    #[serde(default)]
    pub change_table: Option<ChangeTable>,
    /// Rows per batch.
    #[serde(default = "default_usize::<500>")]
    pub batch_size: usize,
    /// Seconds between polls once caught up.
    #[serde(default = "default_poll")]
    pub poll_interval_secs: f64,
    /// A statement run once per accepted record after its receipt is
    /// stored, with `{key}` standing for the record's key value, e.g.
    /// `UPDATE T_JZ_JZJL SET SCBZ = '1' WHERE JZJL_ID = {key}`.
    #[serde(default)]
    pub mark_processed: Option<String>,
    /// Rows fetched ahead while a batch is at the gateway (bounded queue).
    #[serde(default = "default_usize::<2>")]
    pub prefetch: usize,
    /// Pages at the gateway at once (their receipts are committed in order).
    #[serde(default = "default_usize::<2>")]
    pub in_flight: usize,
}

/// The column alias under which a change table's sequence number is read
/// (removed from the record before mapping).
pub const CHANGE_SEQ_ALIAS: &str = "vg_change_seq";

impl SqlSourceConfig {
    /// The columns the pull pages by: (watermark, tie-breaker key). With a
    /// change table both are its sequence number, read as
    /// [`CHANGE_SEQ_ALIAS`]; otherwise the watermark column and the key
    /// column (default: the watermark column).
    pub fn paging_columns(&self) -> (String, String) {
        match &self.change_table {
            Some(_) => (CHANGE_SEQ_ALIAS.to_string(), CHANGE_SEQ_ALIAS.to_string()),
            None => {
                let wm = self.watermark.clone().unwrap_or_default();
                (wm.clone(), self.key.clone().unwrap_or(wm))
            }
        }
    }
}

/// A row a backend read as a [`SourceRow`]: `row` (column → JSON value)
/// without the change table's sequence column, its position (the
/// watermark and key columns `cols` among the typed `cells`) and its record
/// key (with a change table, the source table's key). `notes` end the
/// backend's messages for a row without a position: the query has no such
/// columns, or one of them is NULL.
pub(crate) fn source_row(
    name: &str,
    cfg: &SqlSourceConfig,
    (wm_col, key_col): (&str, &str),
    mut row: serde_json::Map<String, serde_json::Value>,
    cells: &[(String, Cell)],
    (no_columns_note, null_note): (&str, &str),
) -> Result<SourceRow, AgentError> {
    let find = |c: &str| cells.iter().find(|(n, _)| n == c).map(|(_, v)| v.clone());
    let (Some(wm), Some(key)) = (find(wm_col), find(key_col)) else {
        return Err(AgentError::source(
            name,
            format!("the query returns no column `{wm_col}` or `{key_col}`{no_columns_note}"),
            false,
        ));
    };
    if wm == Cell::Null || key == Cell::Null {
        return Err(AgentError::source(
            name,
            format!(
                "a row has NULL in the watermark `{wm_col}` or key `{key_col}` column (key {:?}){null_note}",
                key.key_string()
            ),
            false,
        ));
    }
    let record_key = match &cfg.change_table {
        Some(ct) => find(cfg.key.as_deref().unwrap_or(&ct.key)).unwrap_or(key.clone()),
        None => key.clone(),
    };
    row.remove(CHANGE_SEQ_ALIAS);
    Ok(SourceRow {
        row,
        key: record_key,
        position: SqlCheckpoint { wm, key },
    })
}

fn default_poll() -> f64 {
    5.0
}

/// A change table: one row per change with an increasing sequence number
/// and the changed record's key; the record is read by joining the source
/// table on its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeTable {
    /// The change table.
    pub table: String,
    /// Its increasing sequence column.
    pub seq: String,
    /// Its column holding the changed record's key.
    pub key: String,
}

/// A SQL backend: pages of rows after a position, with the same watermark
/// semantics whatever the database.
pub trait PullReader: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The reader of a `[[sources]]` entry of type `kind` (connecting
    /// lazily: the first query opens the connection).
    ///
    /// # Errors
    /// The URL cannot be used.
    fn open(kind: &str, cfg: &SqlSourceConfig) -> Result<Self, AgentError>;

    /// Whether `url` is a connection URL of type `kind` (checked when the
    /// config is loaded).
    fn accepts_url(kind: &str, url: &str) -> bool;

    /// The configured name.
    fn name(&self) -> &str;

    /// The configuration.
    fn config(&self) -> &SqlSourceConfig;

    /// Rows after `after`, at most `limit`, in watermark order.
    fn fetch(
        &self,
        after: Option<&SqlCheckpoint>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<SourceRow>, AgentError>> + Send;

    /// Rows after `after` (for the backfill progress bar).
    fn count_after(&self, after: Option<&SqlCheckpoint>) -> impl Future<Output = Result<u64, AgentError>> + Send;

    /// Runs the `mark_processed` statement for each accepted key.
    fn mark_processed(&self, keys: &[Cell]) -> impl Future<Output = Result<(), AgentError>> + Send;

    /// Connects and reads one row (for `agent check`).
    fn check(&self) -> impl Future<Output = Result<String, AgentError>> + Send;

    /// Closes the connections.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// A `[[sources]]` entry of a SQL type read by backend `R`.
pub struct PullSource<R> {
    kind: &'static str,
    config: SqlSourceConfig,
    reader: PhantomData<fn() -> R>,
}

impl<R> PullSource<R> {
    /// The `type` it was configured as.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The configuration.
    pub fn config(&self) -> &SqlSourceConfig {
        &self.config
    }
}

impl<R> Clone for PullSource<R> {
    fn clone(&self) -> Self {
        PullSource {
            kind: self.kind,
            config: self.config.clone(),
            reader: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for PullSource<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullSource")
            .field("kind", &self.kind)
            .field("config", &self.config)
            .finish()
    }
}

/// The [`crate::source::ParseFn`] of the SQL types read by `R`.
pub fn parse<R: PullReader>(kind: &'static str, table: toml::Table) -> Result<Arc<dyn Source>, toml::de::Error> {
    Ok(Arc::new(PullSource::<R> {
        kind,
        config: SqlSourceConfig::deserialize(toml::Value::Table(table))?,
        reader: PhantomData,
    }))
}

impl<R: PullReader> Source for PullSource<R> {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn mapping(&self) -> &Path {
        &self.config.mapping
    }

    fn resolved(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Arc<dyn Source> {
        let mut c = self.clone();
        c.config.mapping = resolve(&c.config.mapping);
        Arc::new(c)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if !R::accepts_url(self.kind, &self.config.url) {
            return Err(("url", format!("not a {} connection URL", self.kind)));
        }
        validate(&self.config)
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        async move {
            let src = R::open(self.kind, &self.config).map_err(|e| e.to_string())?;
            let r = tokio::time::timeout(Duration::from_secs(15), src.check()).await;
            src.close().await;
            match r {
                Ok(Ok(d)) => Ok(d),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 15 s".into()),
            }
        }
        .boxed()
    }

    fn start(&self, cx: SourceContext) -> Result<SourceTask, AgentError> {
        let src = R::open(self.kind, &self.config)?;
        Ok(run_pull_source(cx.pipeline, src, cx.stop, cx.once, cx.progress).boxed())
    }
}

/// The checks of a SQL source's table after its URL's.
fn validate(q: &SqlSourceConfig) -> Result<(), Invalid> {
    let bad = |key: &'static str, message: &str| Err((key, message.to_string()));
    match (&q.table, &q.query, &q.change_table) {
        (Some(_), Some(_), _) => return bad("query", "give `table` or `query`, not both"),
        (None, None, _) => return bad("table", "give `table` or `query`"),
        (None, Some(_), Some(_)) => return bad("change_table", "a change table needs `table` (joined on its key)"),
        _ => {}
    }
    if q.change_table.is_none() && q.watermark.is_none() {
        return bad("watermark", "give a watermark column (or a `change_table`)");
    }
    if q.change_table.is_some() && q.watermark.is_some() {
        return bad("watermark", "a change table source has no watermark");
    }
    let ident_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.');
    let not_ident = |key: &'static str, v: &str| Err((key, format!("`{v}` is not a plain column/table name")));
    for (key, v) in [
        ("table", q.table.as_deref()),
        ("watermark", q.watermark.as_deref()),
        ("key", q.key.as_deref()),
    ] {
        if let Some(v) = v
            && !ident_ok(v)
        {
            return not_ident(key, v);
        }
    }
    if let Some(ct) = &q.change_table {
        for v in [&ct.table, &ct.seq, &ct.key] {
            if !ident_ok(v) {
                return not_ident("change_table", v);
            }
        }
    }
    if q.batch_size == 0 || q.batch_size > 10_000 {
        return bad("batch_size", "must be between 1 and 10000");
    }
    if !(q.poll_interval_secs > 0.0 && q.poll_interval_secs <= 86_400.0) {
        return bad("poll_interval_secs", "must be > 0 and at most 86400");
    }
    if q.in_flight == 0 || q.in_flight > 16 {
        return bad("in_flight", "must be between 1 and 16");
    }
    if q.prefetch == 0 || q.prefetch > 64 {
        return bad("prefetch", "must be between 1 and 64");
    }
    if let Some(m) = &q.mark_processed
        && m.matches("{key}").count() != 1
    {
        return bad("mark_processed", "must contain `{key}` exactly once");
    }
    Ok(())
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
    Delivered(Box<(PageDone, Delivered)>),
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

fn fatal(name: &str, message: String) -> AgentError {
    AgentError::Source {
        source_name: name.to_string(),
        message,
        transient: false,
    }
}

/// Runs one SQL source: reader → bounded channel → submitter → committer.
pub async fn run_pull_source<R: PullReader>(
    pipeline: Pipeline,
    src: R,
    stop: watch::Receiver<bool>,
    until_caught_up: bool,
    progress: bool,
) -> Result<RunStats, AgentError> {
    let name = src.name().to_string();
    let start: Option<SqlCheckpoint> =
        match pipeline.state().checkpoint(&name).await? {
            Some(v) => Some(serde_json::from_value(v).map_err(|e| {
                AgentError::state(pipeline.state().path(), format!("checkpoint of source `{name}`: {e}"))
            })?),
            None => None,
        };
    let cfg = src.config().clone();
    let bar = match progress {
        true => progress_bar(&src, start.as_ref()).await,
        false => None,
    };
    tracing::info!(source = %name, resumed = start.is_some(), "source started");

    let (tx, rx) = mpsc::channel::<Page>(cfg.prefetch);
    let src = Arc::new(src);
    let reader = tokio::spawn(read_pages(
        src.clone(),
        start.clone(),
        tx,
        stop.clone(),
        until_caught_up,
    ));
    let pages = deliver_pages(rx, pipeline.clone(), name.clone(), stop.clone(), cfg.in_flight);
    let done = commit_pages(pages, &pipeline, &*src, bar.as_ref(), &stop, start).await?;
    let mut stats = done.stats;
    if until_caught_up && !done.reached_end && *stop.borrow() {
        tracing::warn!(
            source = %name,
            resume_after = %describe(done.committed.as_ref()),
            "stopped on request before the end of the source"
        );
        stats.stopped_early = true;
    }
    if !done.reached_end && !*stop.borrow() {
        // The page stream closed without the reader's end marker and
        // without a stop request: the reader task ended early (a panic).
        let why = match reader.await {
            Err(e) => format!("the source reader failed: {e}"),
            Ok(()) => "the source reader ended before the end of the source".to_string(),
        };
        tracing::error!(source = %name, error = %why, "pages left unsent");
        return Err(fatal(
            &name,
            format!(
                "{why}; the last committed page ends at {}",
                describe(done.committed.as_ref())
            ),
        ));
    }
    reader.abort();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    src.close().await;
    Ok(stats)
}

/// A progress bar of the rows after `start`, if there are any.
async fn progress_bar<R: PullReader>(src: &R, start: Option<&SqlCheckpoint>) -> Option<indicatif::ProgressBar> {
    match src.count_after(start).await {
        Ok(n) if n > 0 => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} rows {per_sec} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(src.name().to_string());
            Some(b)
        }
        _ => None,
    }
}

/// The reader: fetches pages after its in-memory position into `tx` until
/// a stop (or, with `until_caught_up`, until the source is read: then it
/// sends [`Page::End`]); retries read errors with backoff.
async fn read_pages<R: PullReader>(
    src: Arc<R>,
    start: Option<SqlCheckpoint>,
    tx: mpsc::Sender<Page>,
    mut stop: watch::Receiver<bool>,
    until_caught_up: bool,
) {
    let poll = Duration::from_secs_f64(src.config().poll_interval_secs);
    let mut pos = start;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        if *stop.borrow() {
            return;
        }
        match src.fetch(pos.as_ref(), src.config().batch_size).await {
            Ok(rows) if rows.is_empty() => {
                backoff.reset();
                if until_caught_up {
                    tracing::info!(source = %src.name(), "caught up");
                    // The end is said explicitly: a closed channel
                    // without it means the reader died, not "done".
                    let _ = tx.send(Page::End(pos)).await;
                    return;
                }
                if sleep_or_stop(poll, &mut stop).await {
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
                tracing::warn!(source = %src.name(), error = %e, "reading the source failed; retrying");
                if !e.is_transient() && backoff.attempts() == 0 {
                    tracing::error!(source = %src.name(), error = %e, "source error (will keep retrying)");
                }
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// The submitter: up to `in_flight` pages at the gateway at once (mapping
/// and sealing of one overlap the gateway's work on another), handed on in
/// page order.
fn deliver_pages(
    rx: mpsc::Receiver<Page>,
    pipeline: Pipeline,
    name: String,
    stop: watch::Receiver<bool>,
    in_flight: usize,
) -> BoxStream<'static, Result<Step, String>> {
    let pages = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    pages
        .map(move |page: Page| {
            let rows = match page {
                Page::Rows(rows) => rows,
                Page::End(pos) => return futures_util::future::ready(Ok(Step::End(pos))).boxed(),
            };
            // A task of its own: it must progress (and release the state
            // database) while the consumer waits on an earlier commit.
            let task = tokio::spawn(deliver_page(pipeline.clone(), name.clone(), rows, stop.clone()));
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
        .buffered(in_flight)
        .boxed()
}

/// Delivers one page, retrying with backoff until the gateway answers;
/// `None` when a stop is requested first, `Some(Err)` when retrying cannot
/// help.
async fn deliver_page(
    pipeline: Pipeline,
    name: String,
    rows: Vec<SourceRow>,
    mut stop: watch::Receiver<bool>,
) -> Option<Result<Box<(PageDone, Delivered)>, String>> {
    let last = rows.last()?.position.clone();
    let checkpoint = serde_json::to_value(&last).ok()?;
    // The rows move into the records (no copy); what the commit step needs
    // of them is the keys and the last position.
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
            // Not the network: the gateway's ledger is not the one it
            // signed before. Retrying cannot help; an operator must look.
            Err(e @ AgentError::LedgerRewound(_)) => return Some(Err(e.to_string())),
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "batch not delivered; retrying");
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return None;
                }
            }
        }
    }
}

/// What the committer did.
struct Committed {
    stats: RunStats,
    /// The position of the last page whose receipts and checkpoint are
    /// committed.
    committed: Option<SqlCheckpoint>,
    /// The reader's end marker arrived at that position.
    reached_end: bool,
}

/// The committer: stores each delivered page's receipts and checkpoint in
/// page order, runs `mark_processed` for its accepted keys; `--once` ends
/// only when the reader's end is the last committed position.
async fn commit_pages<R: PullReader>(
    mut pages: BoxStream<'static, Result<Step, String>>,
    pipeline: &Pipeline,
    src: &R,
    bar: Option<&indicatif::ProgressBar>,
    stop: &watch::Receiver<bool>,
    start: Option<SqlCheckpoint>,
) -> Result<Committed, AgentError> {
    let name = src.name();
    let mut done = Committed {
        stats: RunStats::default(),
        committed: start,
        reached_end: false,
    };
    while let Some(item) = pages.next().await {
        let (page, delivered) = match item {
            Ok(Step::Delivered(d)) => *d,
            Ok(Step::End(pos)) => {
                if pos != done.committed {
                    return Err(fatal(
                        name,
                        format!(
                            "the reader reached the end at {} but the last committed page ends at {}: pages were \
                             left unsent",
                            describe(pos.as_ref()),
                            describe(done.committed.as_ref())
                        ),
                    ));
                }
                done.reached_end = true;
                break;
            }
            // Only a requested stop ends the loop before the source is read.
            Ok(Step::Stopped) if *stop.borrow() => break,
            Ok(Step::Stopped) => return Err(fatal(name, "a delivery ended without a stop request".into())),
            Err(message) => {
                tracing::error!(source = %name, error = %message, "delivery failed");
                return Err(fatal(name, message));
            }
        };
        let outcomes = pipeline.commit(delivered).await?;
        done.committed = Some(page.last);
        let rows = page.keys.len();
        let stats = &mut done.stats;
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
        if let Some(b) = bar {
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
    Ok(done)
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
