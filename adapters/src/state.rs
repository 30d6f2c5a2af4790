//! The agent's own SQLite state database: per-source checkpoints, the
//! gateway's receipts per event, and the quarantine.
//!
//! **Acknowledge after durability:** [`StateDb::commit_batch`] records the
//! receipts of one batch, its quarantined records and the source's new
//! checkpoint in one SQLite transaction (WAL, `synchronous=FULL`). Before a
//! batch is posted, [`StateDb::reserve`] durably records each event's
//! `recorded_at`, so a batch re-sent after a crash has the same content and
//! the gateway answers with the original receipts instead of a conflict.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::error::AgentError;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS checkpoints (
        source TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (
        event_id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        record_key TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        status TEXT NOT NULL,
        tx_id TEXT,
        height INTEGER,
        code TEXT,
        updated_at TEXT NOT NULL,
        message TEXT,
        problems TEXT)",
    // Refusals are looked up by source and time (`agent run`'s summary);
    // accepted events, nearly all of them, stay out of the index, so
    // accepting one changes its row only. (`events_source` indexed every
    // status change: two index writes per event, dropped.)
    "DROP INDEX IF EXISTS events_source",
    "CREATE INDEX IF NOT EXISTS events_rejected ON events(source, updated_at) WHERE status = 'rejected'",
    "CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        record_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        record TEXT NOT NULL,
        reason TEXT NOT NULL,
        problems TEXT NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1,
        resolved_at TEXT,
        resolution TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS quarantine_open ON quarantine(source, record_key) WHERE resolved_at IS NULL",
    // The largest signed checkpoint of the gateway's ledger seen in a
    // receipt: every later one must extend it.
    "CREATE TABLE IF NOT EXISTS gateway_checkpoint (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        tree_size INTEGER NOT NULL,
        checkpoint TEXT NOT NULL,
        updated_at TEXT NOT NULL)",
];

/// Rows per multi-row statement (6 parameters each; SQLite allows 32,766).
const STATE_ROWS_PER_STATEMENT: usize = 1000;

/// Columns added after the first release: `(table, column, type)`. A state
/// database created by an older agent gets them at [`StateDb::open`].
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The gateway's explanation of a refusal (no personal data).
    ("events", "message", "TEXT"),
    // The gateway's validation problems of a refusal (JSON, values masked).
    ("events", "problems", "TEXT"),
];

/// The agent's state database.
#[derive(Debug, Clone)]
pub struct StateDb {
    pool: SqlitePool,
    path: String,
}

/// One event's durable outcome, written by [`StateDb::commit_batch`].
#[derive(Debug, Clone)]
pub enum EventState {
    /// In the ledger.
    Accepted {
        /// Event id.
        event_id: Uuid,
        /// Ledger transaction id.
        tx_id: Uuid,
        /// Block height.
        height: u64,
    },
    /// Refused by the gateway.
    Rejected {
        /// Event id.
        event_id: Uuid,
        /// The gateway's code.
        code: String,
        /// The gateway's message (for a person, no personal data).
        message: String,
        /// The gateway's validation problems (values masked by the gateway).
        problems: Vec<GatewayProblem>,
    },
}

/// One validation problem of a gateway refusal, as the gateway returned it
/// (`error.problems[]` of `POST /v1/transactions`; personal values are
/// masked by the gateway). Only these fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayProblem {
    /// The element key (or `event.*` attribute) concerned.
    pub field: String,
    /// The rule's stable name (e.g. `required`, `trace_code_format`).
    pub rule: String,
    /// The offending value, masked if personal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Explanation.
    pub message: String,
}

/// A gateway refusal in one line: code, message and the first problems'
/// fields, rules and explanations (values are left to the detailed views).
pub fn describe_refusal(code: &str, message: &str, problems: &[GatewayProblem]) -> String {
    let mut s = format!("{code}: {message}");
    for (n, p) in problems.iter().take(3).enumerate() {
        s.push_str(if n == 0 { ": " } else { "; " });
        s.push_str(&format!("field `{}`: rule {}: {}", p.field, p.rule, p.message));
    }
    if problems.len() > 3 {
        s.push_str(&format!("; and {} more", problems.len() - 3));
    }
    s
}

/// An event the gateway refused, as stored (no personal data).
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// Source name.
    pub source: String,
    /// The record's key in its source.
    pub record_key: String,
    /// Event id.
    pub event_id: String,
    /// The gateway's code.
    pub code: String,
    /// The gateway's message (`None` for refusals stored by an older agent).
    pub message: Option<String>,
    /// The gateway's validation problems.
    pub problems: Vec<GatewayProblem>,
    /// When the refusal was recorded.
    pub at: String,
}

impl Rejection {
    /// The refusal in one line (see [`describe_refusal`]).
    pub fn describe(&self) -> String {
        describe_refusal(
            &self.code,
            self.message.as_deref().unwrap_or("(no message stored)"),
            &self.problems,
        )
    }
}

/// A record kept aside, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    /// Row id.
    pub id: i64,
    /// Source name.
    pub source: String,
    /// The record's key in its source.
    pub record_key: String,
    /// `row`, `hl7`, `xml` or `json`.
    pub kind: String,
    /// The record itself (JSON for rows and documents, text otherwise).
    /// Contains personal data: never logged.
    #[serde(skip)]
    pub record: String,
    /// Why (no personal data).
    pub reason: String,
    /// Mapping/validation problems as JSON (values masked).
    pub problems: serde_json::Value,
    /// First quarantined.
    pub created_at: String,
    /// How many times it failed.
    pub attempts: i64,
    /// When it was resolved (accepted after a replay or a resend).
    pub resolved_at: Option<String>,
    /// How (`accepted`, `rejected`, `dropped`).
    pub resolution: Option<String>,
}

/// A record to put in quarantine.
#[derive(Debug, Clone)]
pub struct NewQuarantine {
    /// Source name.
    pub source: String,
    /// Record key.
    pub record_key: String,
    /// Kind, see [`QuarantineEntry::kind`].
    pub kind: String,
    /// The record.
    pub record: String,
    /// Why.
    pub reason: String,
    /// Problems (JSON).
    pub problems: serde_json::Value,
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

async fn has_column(pool: &SqlitePool, table: &str, column: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pragma_table_info(?) WHERE name = ?")
        .bind(table)
        .bind(column)
        .fetch_one(pool)
        .await?;
    Ok(n > 0)
}

/// Adds `column` to `table` unless it is there (a state database of an older
/// agent). Another process opening the same file at the same moment may add
/// it first: the column then exists and that is not an error.
async fn add_column_if_missing(pool: &SqlitePool, table: &str, column: &str, ty: &str) -> Result<(), sqlx::Error> {
    if has_column(pool, table, column).await? {
        return Ok(());
    }
    let stmt = format!("ALTER TABLE {table} ADD COLUMN {column} {ty}");
    match sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(pool).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if has_column(pool, table, column).await? {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

impl StateDb {
    /// Opens (creating if needed) the state database at `path`.
    pub async fn open(path: &Path) -> Result<StateDb, AgentError> {
        let p = path.display().to_string();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| AgentError::state(&p, e))?;
        }
        // It keeps quarantined records verbatim (personal data): readable
        // by the agent's user only, from the moment it exists.
        if !path.exists() {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.open(path).map_err(|e| AgentError::state(&p, e))?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| AgentError::state(&p, e))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Each batch updates rows spread over the whole event index
            // (event ids are content hashes, not ordered): a 16 MiB page
            // cache keeps those pages in memory, and a WAL
            // checkpointed every 8,192 pages (32 MiB) writes a page that
            // many batches touched once instead of once per batch. The WAL
            // file is truncated back to 64 MiB after a checkpoint.
            .pragma("cache_size", "-16384")
            .pragma("wal_autocheckpoint", "8192")
            .pragma("journal_size_limit", "67108864")
            // Statement journals in memory, not in temporary files.
            .pragma("temp_store", "MEMORY")
            .busy_timeout(Duration::from_secs(30));
        // One connection: SQLite serialises writers anyway, and a page cache
        // survives only on the connection that wrote last (another
        // connection's write empties it), so a pool of several reread the
        // event index from the OS for every batch.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(|e| AgentError::state(&p, e))?;
        for stmt in SCHEMA {
            sqlx::query(sqlx::AssertSqlSafe(*stmt))
                .execute(&pool)
                .await
                .map_err(|e| AgentError::state(&p, e))?;
        }
        for (table, column, ty) in ADDED_COLUMNS {
            add_column_if_missing(&pool, table, column, ty)
                .await
                .map_err(|e| AgentError::state(&p, format!("adding column {table}.{column}: {e}")))?;
        }
        Ok(StateDb { pool, path: p })
    }

    fn err(&self, e: impl std::fmt::Display) -> AgentError {
        AgentError::state(&self.path, e)
    }

    /// The file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The largest signed checkpoint of the gateway's ledger seen so far.
    pub async fn gateway_checkpoint(&self) -> Result<Option<ledger::Checkpoint>, AgentError> {
        let row = sqlx::query("SELECT checkpoint FROM gateway_checkpoint WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let v: String = r.get(0);
                serde_json::from_str(&v).map(Some).map_err(|e| self.err(e))
            }
        }
    }

    /// Keeps `cp` as the largest signed checkpoint seen (if it is larger).
    pub async fn set_gateway_checkpoint(&self, cp: &ledger::Checkpoint) -> Result<(), AgentError> {
        let text = serde_json::to_string(cp).map_err(|e| self.err(e))?;
        sqlx::query(
            "INSERT INTO gateway_checkpoint (id, tree_size, checkpoint, updated_at) VALUES (1, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET tree_size = excluded.tree_size, checkpoint = excluded.checkpoint, \
             updated_at = excluded.updated_at WHERE excluded.tree_size > gateway_checkpoint.tree_size",
        )
        .bind(cp.tree_size as i64)
        .bind(text)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The stored checkpoint of `source` (JSON), if any.
    pub async fn checkpoint(&self, source: &str) -> Result<Option<serde_json::Value>, AgentError> {
        let row = sqlx::query("SELECT value FROM checkpoints WHERE source = ?")
            .bind(source)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let v: String = r.get(0);
                serde_json::from_str(&v).map(Some).map_err(|e| self.err(e))
            }
        }
    }

    /// Durably records a `recorded_at` for each event not seen before and
    /// returns, per event, the one to use (the stored one for known events)
    /// and whether the event was already accepted.
    pub async fn reserve(
        &self,
        source: &str,
        events: &[(Uuid, String, DateTime<FixedOffset>)],
    ) -> Result<Vec<(DateTime<FixedOffset>, bool)>, AgentError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let ts = now();
        // One multi-row statement per chunk (not one round trip per event).
        let mut stored: std::collections::HashMap<String, (String, String)> =
            std::collections::HashMap::with_capacity(events.len());
        for chunk in events.chunks(STATE_ROWS_PER_STATEMENT) {
            let mut qb: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(
                "INSERT INTO events (event_id, source, record_key, recorded_at, status, updated_at) ",
            );
            qb.push_values(chunk, |mut row, (id, key, at)| {
                row.push_bind(id.to_string())
                    .push_bind(source)
                    .push_bind(key)
                    .push_bind(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false))
                    .push_bind("pending")
                    .push_bind(&ts);
            });
            qb.push(
                " ON CONFLICT(event_id) DO UPDATE SET event_id = excluded.event_id
                 RETURNING event_id, recorded_at, status",
            );
            for row in qb.build().fetch_all(&mut *tx).await.map_err(|e| self.err(e))? {
                stored.insert(row.get(0), (row.get(1), row.get(2)));
            }
        }
        let mut out = Vec::with_capacity(events.len());
        for (id, _, _) in events {
            let (recorded, status) = stored
                .get(&id.to_string())
                .ok_or_else(|| self.err(format!("event {id}: not returned by its insert")))?;
            let at = DateTime::parse_from_rfc3339(recorded).map_err(|e| self.err(format!("event {id}: {e}")))?;
            out.push((at, status == "accepted"));
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Records a batch's outcomes, its quarantined records and (for pull
    /// sources) the source's new checkpoint, in one transaction.
    pub async fn commit_batch(
        &self,
        source: &str,
        events: &[EventState],
        quarantine: &[NewQuarantine],
        accepted_keys: &[String],
        checkpoint: Option<&serde_json::Value>,
    ) -> Result<(), AgentError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let ts = now();
        let accepted: Vec<(String, String, i64)> = events
            .iter()
            .filter_map(|e| match e {
                EventState::Accepted {
                    event_id,
                    tx_id,
                    height,
                } => Some((event_id.to_string(), tx_id.to_string(), *height as i64)),
                EventState::Rejected { .. } => None,
            })
            .collect();
        // Accepted events: one UPDATE ... FROM (VALUES ...) per chunk.
        for chunk in accepted.chunks(STATE_ROWS_PER_STATEMENT) {
            let mut qb: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(
                "UPDATE events SET status = 'accepted', tx_id = v.column2, height = v.column3, code = NULL,
                   message = NULL, problems = NULL, updated_at = ",
            );
            qb.push_bind(&ts).push(" FROM (VALUES ");
            let mut sep = qb.separated(", ");
            for (event_id, tx_id, height) in chunk {
                sep.push("(")
                    .push_bind_unseparated(event_id)
                    .push_unseparated(", ")
                    .push_bind_unseparated(tx_id)
                    .push_unseparated(", ")
                    .push_bind_unseparated(*height)
                    .push_unseparated(")");
            }
            qb.push(") AS v WHERE events.event_id = v.column1");
            qb.build().execute(&mut *tx).await.map_err(|e| self.err(e))?;
        }
        for e in events {
            if let EventState::Rejected {
                event_id,
                code,
                message,
                problems,
            } = e
            {
                let problems = serde_json::to_string(problems).map_err(|e| self.err(e))?;
                sqlx::query(
                    "UPDATE events SET status = 'rejected', code = ?, message = ?, problems = ?, updated_at = ?
                     WHERE event_id = ? AND status <> 'accepted'",
                )
                .bind(code)
                .bind(message)
                .bind(problems)
                .bind(&ts)
                .bind(event_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            }
        }
        for q in quarantine {
            Self::put_quarantine(&mut tx, q, &ts).await.map_err(|e| self.err(e))?;
        }
        if !accepted_keys.is_empty() {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM quarantine WHERE source = ? AND resolved_at IS NULL")
                    .bind(source)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
            if open > 0 {
                for k in accepted_keys {
                    sqlx::query(
                        "UPDATE quarantine SET resolved_at = ?, resolution = 'accepted'
                         WHERE source = ? AND record_key = ? AND resolved_at IS NULL",
                    )
                    .bind(&ts)
                    .bind(source)
                    .bind(k)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                }
            }
        }
        if let Some(cp) = checkpoint {
            sqlx::query(
                "INSERT INTO checkpoints (source, value, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT(source) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(source)
            .bind(cp.to_string())
            .bind(&ts)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    async fn put_quarantine(tx: &mut Transaction<'_, Sqlite>, q: &NewQuarantine, ts: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO quarantine (source, record_key, kind, record, reason, problems, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(source, record_key) WHERE resolved_at IS NULL DO UPDATE SET
               kind = excluded.kind, record = excluded.record, reason = excluded.reason,
               problems = excluded.problems, attempts = quarantine.attempts + 1",
        )
        .bind(&q.source)
        .bind(&q.record_key)
        .bind(&q.kind)
        .bind(&q.record)
        .bind(&q.reason)
        .bind(q.problems.to_string())
        .bind(ts)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    fn entry(r: &sqlx::sqlite::SqliteRow) -> QuarantineEntry {
        let problems: String = r.get("problems");
        QuarantineEntry {
            id: r.get("id"),
            source: r.get("source"),
            record_key: r.get("record_key"),
            kind: r.get("kind"),
            record: r.get("record"),
            reason: r.get("reason"),
            problems: serde_json::from_str(&problems).unwrap_or(serde_json::Value::Null),
            created_at: r.get("created_at"),
            attempts: r.get("attempts"),
            resolved_at: r.get("resolved_at"),
            resolution: r.get("resolution"),
        }
    }

    /// Quarantined records, open ones only unless `all`, optionally of one source.
    pub async fn quarantine_list(&self, source: Option<&str>, all: bool) -> Result<Vec<QuarantineEntry>, AgentError> {
        let rows = sqlx::query(
            "SELECT * FROM quarantine WHERE (? IS NULL OR source = ?) AND (? OR resolved_at IS NULL) ORDER BY id",
        )
        .bind(source)
        .bind(source)
        .bind(all)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(Self::entry).collect())
    }

    /// One quarantined record.
    pub async fn quarantine_get(&self, id: i64) -> Result<Option<QuarantineEntry>, AgentError> {
        let row = sqlx::query("SELECT * FROM quarantine WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.as_ref().map(Self::entry))
    }

    /// Marks a quarantined record resolved (`accepted`, `rejected`, `dropped`).
    pub async fn quarantine_resolve(&self, id: i64, resolution: &str) -> Result<(), AgentError> {
        sqlx::query("UPDATE quarantine SET resolved_at = ?, resolution = ? WHERE id = ? AND resolved_at IS NULL")
            .bind(now())
            .bind(resolution)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Counts of events per status for a source (for `check` and tests).
    pub async fn event_counts(&self, source: &str) -> Result<Vec<(String, i64)>, AgentError> {
        let rows = sqlx::query("SELECT status, count(*) FROM events WHERE source = ? GROUP BY status ORDER BY status")
            .bind(source)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Events the gateway refused, oldest first, at most `limit`: of one
    /// source or all, and only those refused at or after `since` (e.g. the
    /// start of a run) when given.
    pub async fn rejections(
        &self,
        source: Option<&str>,
        since: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<Rejection>, AgentError> {
        let since = since.map(|t| t.to_rfc3339());
        let rows = sqlx::query(
            "SELECT source, record_key, event_id, code, message, problems, updated_at FROM events
             WHERE status = 'rejected' AND (? IS NULL OR source = ?)
               AND (? IS NULL OR julianday(updated_at) >= julianday(?))
             ORDER BY julianday(updated_at), rowid LIMIT ?",
        )
        .bind(source)
        .bind(source)
        .bind(since.as_deref())
        .bind(since.as_deref())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let event_id: String = r.get("event_id");
                let problems: Option<String> = r.get("problems");
                let problems = match problems.as_deref() {
                    None | Some("") => Vec::new(),
                    Some(p) => serde_json::from_str(p)
                        .map_err(|e| self.err(format!("problems of rejected event {event_id}: {e}")))?,
                };
                Ok(Rejection {
                    source: r.get("source"),
                    record_key: r.get("record_key"),
                    code: r.get::<Option<String>, _>("code").unwrap_or_else(|| "unknown".into()),
                    message: r.get("message"),
                    problems,
                    at: r.get("updated_at"),
                    event_id,
                })
            })
            .collect()
    }

    /// Refused events per source and code, most frequent first (same filters
    /// as [`StateDb::rejections`]).
    pub async fn rejection_counts(
        &self,
        source: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<(String, String, i64)>, AgentError> {
        let since = since.map(|t| t.to_rfc3339());
        let rows = sqlx::query(
            "SELECT source, coalesce(code, 'unknown') AS c, count(*) AS n FROM events
             WHERE status = 'rejected' AND (? IS NULL OR source = ?)
               AND (? IS NULL OR julianday(updated_at) >= julianday(?))
             GROUP BY source, c ORDER BY source, n DESC, c",
        )
        .bind(source)
        .bind(source)
        .bind(since.as_deref())
        .bind(since.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).expect("timestamp")
    }

    fn problem() -> GatewayProblem {
        GatewayProblem {
            field: "zjhm".into(),
            rule: "id_number_check".into(),
            value: Some("3201**********0028".into()),
            message: "the check digit does not match".into(),
        }
    }

    /// Event `event_id` refused for one validation problem ([`problem`]).
    fn invalid(event_id: Uuid) -> EventState {
        EventState::Rejected {
            event_id,
            code: "validation_failed".into(),
            message: "1 validation problem(s)".into(),
            problems: vec![problem()],
        }
    }

    /// Commits `events` of source `clinic` (nothing quarantined, no
    /// accepted keys, no checkpoint); `what` names the step if it fails.
    async fn commit_events(db: &StateDb, events: &[EventState], what: &str) {
        db.commit_batch("clinic", events, &[], &[], None)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    /// Closes `db` and opens the file at `path` again.
    async fn reopen(db: StateDb, path: &Path) -> StateDb {
        db.close().await;
        StateDb::open(path).await.expect("reopen")
    }

    #[tokio::test]
    async fn rejections_keep_the_gateway_message_and_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let db = StateDb::open(&path).await.expect("open");
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t = at("2024-03-05T09:30:00+08:00");
        db.reserve(
            "clinic",
            &[(a, "K1".into(), t), (b, "K2".into(), t), (c, "K3".into(), t)],
        )
        .await
        .expect("reserve");
        let start = Utc::now();
        commit_events(
            &db,
            &[
                invalid(a),
                EventState::Rejected {
                    event_id: b,
                    code: "forbidden".into(),
                    message: "the event's source 1 is not the submitting entity".into(),
                    problems: Vec::new(),
                },
                EventState::Accepted {
                    event_id: c,
                    tx_id: Uuid::new_v4(),
                    height: 3,
                },
            ],
            "commit",
        )
        .await;

        // Stored durably: a new handle reads them back.
        let db = reopen(db, &path).await;
        let r = db.rejections(None, Some(start), 10).await.expect("rejections");
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            (r[0].record_key.as_str(), r[0].code.as_str(), r[0].message.as_deref()),
            ("K1", "validation_failed", Some("1 validation problem(s)"))
        );
        assert_eq!(r[0].event_id, a.to_string());
        assert_eq!(r[0].problems, vec![problem()]);
        assert_eq!(
            r[0].describe(),
            "validation_failed: 1 validation problem(s): field `zjhm`: rule id_number_check: \
             the check digit does not match"
        );
        assert_eq!((r[1].record_key.as_str(), r[1].code.as_str()), ("K2", "forbidden"));
        assert!(r[1].problems.is_empty());
        assert_eq!(
            db.rejection_counts(Some("clinic"), Some(start)).await.expect("counts"),
            vec![
                ("clinic".to_string(), "forbidden".to_string(), 1),
                ("clinic".to_string(), "validation_failed".to_string(), 1)
            ]
        );
        assert_eq!(db.rejections(Some("other"), None, 10).await.expect("other").len(), 0);
        assert_eq!(db.rejections(None, None, 1).await.expect("limit").len(), 1);

        // Only refusals recorded since the given instant.
        let later = Utc::now() + chrono::Duration::seconds(5);
        assert!(db.rejections(None, Some(later), 10).await.expect("later").is_empty());
        assert!(db.rejection_counts(None, Some(later)).await.expect("later").is_empty());

        // Accepted after a resend: message and problems are cleared.
        commit_events(
            &db,
            &[EventState::Accepted {
                event_id: a,
                tx_id: Uuid::new_v4(),
                height: 4,
            }],
            "commit",
        )
        .await;
        let r = db.rejections(None, None, 10).await.expect("rejections");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].record_key, "K2");
        let row: (Option<String>, Option<String>, Option<String>) =
            sqlx::query_as("SELECT code, message, problems FROM events WHERE event_id = ?")
                .bind(a.to_string())
                .fetch_one(&db.pool)
                .await
                .expect("row");
        assert_eq!(row, (None, None, None));
        db.close().await;
    }

    /// A new state database is readable by the agent's user only: it
    /// keeps quarantined records (personal data) verbatim.
    #[tokio::test]
    async fn a_new_state_db_is_private_to_its_user() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/agent.db");
        let db = StateDb::open(&path).await.expect("open");
        db.close().await;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    /// A state database written by an agent before refusals kept their
    /// message: it opens, its rows read back, and new refusals keep theirs.
    #[tokio::test]
    async fn a_state_db_of_an_older_agent_opens_and_gains_the_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let opts = SqliteConnectOptions::from_str("sqlite:")
                .expect("options")
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .expect("create old db");
            for stmt in [
                "CREATE TABLE checkpoints (source TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL)",
                "CREATE TABLE events (
                    event_id TEXT PRIMARY KEY,
                    source TEXT NOT NULL,
                    record_key TEXT NOT NULL,
                    recorded_at TEXT NOT NULL,
                    status TEXT NOT NULL,
                    tx_id TEXT,
                    height INTEGER,
                    code TEXT,
                    updated_at TEXT NOT NULL)",
                "CREATE INDEX events_source ON events(source, status)",
                "INSERT INTO events (event_id, source, record_key, recorded_at, status, code, updated_at)
                 VALUES ('00000000-0000-0000-0000-000000000001', 'clinic', 'OLD1', '2024-03-05T09:30:00+08:00',
                         'rejected', 'conflict', '2024-03-06T00:00:00+00:00')",
                "INSERT INTO checkpoints VALUES ('clinic', '{\"wm\":1}', '2024-03-06T00:00:00+00:00')",
            ] {
                sqlx::query(stmt).execute(&pool).await.expect("old schema");
            }
            pool.close().await;
        }

        let db = StateDb::open(&path).await.expect("an old state db opens");
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name",
        )
        .fetch_all(&db.pool)
        .await
        .expect("indexes");
        assert!(
            indexes.contains(&"events_rejected".to_string()) && !indexes.contains(&"events_source".to_string()),
            "{indexes:?}"
        );
        for column in ["message", "problems"] {
            assert!(
                has_column(&db.pool, "events", column).await.expect("pragma"),
                "{column}"
            );
        }
        assert_eq!(
            db.checkpoint("clinic").await.expect("checkpoint"),
            Some(serde_json::json!({"wm": 1}))
        );
        let r = db.rejections(None, None, 10).await.expect("old rejections");
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].record_key.as_str(), r[0].code.as_str()), ("OLD1", "conflict"));
        assert_eq!(r[0].message, None);
        assert!(r[0].problems.is_empty());
        assert_eq!(r[0].describe(), "conflict: (no message stored)");

        let e = Uuid::new_v4();
        db.reserve("clinic", &[(e, "NEW1".into(), at("2024-03-07T10:00:00+08:00"))])
            .await
            .expect("reserve");
        commit_events(&db, &[invalid(e)], "commit on the migrated db").await;

        // Opening again (columns already there) is a no-op.
        let db = reopen(db, &path).await;
        let r = db.rejections(Some("clinic"), None, 10).await.expect("rejections");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].record_key, "NEW1");
        assert_eq!(r[1].message.as_deref(), Some("1 validation problem(s)"));
        assert_eq!(r[1].problems, vec![problem()]);
        db.close().await;
    }

    #[test]
    fn refusals_are_described_in_one_line() {
        let many: Vec<GatewayProblem> = (0..5)
            .map(|i| GatewayProblem {
                field: format!("f{i}"),
                rule: "required".into(),
                value: None,
                message: "missing".into(),
            })
            .collect();
        let s = describe_refusal("validation_failed", "5 validation problem(s)", &many);
        assert!(s.starts_with("validation_failed: 5 validation problem(s): field `f0`: rule required: missing; "));
        assert!(s.ends_with("field `f2`: rule required: missing; and 2 more"), "{s}");
        assert_eq!(describe_refusal("forbidden", "no", &[]), "forbidden: no");
    }
}
