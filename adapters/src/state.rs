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
use serde::Serialize;
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
        updated_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_source ON events(source, status)",
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
    },
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

impl StateDb {
    /// Opens (creating if needed) the state database at `path`.
    pub async fn open(path: &Path) -> Result<StateDb, AgentError> {
        let p = path.display().to_string();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| AgentError::state(&p, e))?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| AgentError::state(&p, e))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| AgentError::state(&p, e))?;
        for stmt in SCHEMA {
            sqlx::query(sqlx::AssertSqlSafe(*stmt))
                .execute(&pool)
                .await
                .map_err(|e| AgentError::state(&p, e))?;
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
        let mut out = Vec::with_capacity(events.len());
        let ts = now();
        for (id, key, at) in events {
            let row = sqlx::query(
                "INSERT INTO events (event_id, source, record_key, recorded_at, status, updated_at)
                 VALUES (?, ?, ?, ?, 'pending', ?)
                 ON CONFLICT(event_id) DO UPDATE SET event_id = excluded.event_id
                 RETURNING recorded_at, status",
            )
            .bind(id.to_string())
            .bind(source)
            .bind(key)
            .bind(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false))
            .bind(&ts)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            let stored: String = row.get(0);
            let status: String = row.get(1);
            let at = DateTime::parse_from_rfc3339(&stored).map_err(|e| self.err(format!("event {id}: {e}")))?;
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
        for e in events {
            match e {
                EventState::Accepted {
                    event_id,
                    tx_id,
                    height,
                } => {
                    sqlx::query(
                        "UPDATE events SET status = 'accepted', tx_id = ?, height = ?, code = NULL, updated_at = ?
                         WHERE event_id = ?",
                    )
                    .bind(tx_id.to_string())
                    .bind(*height as i64)
                    .bind(&ts)
                    .bind(event_id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                }
                EventState::Rejected { event_id, code } => {
                    sqlx::query(
                        "UPDATE events SET status = 'rejected', code = ?, updated_at = ?
                         WHERE event_id = ? AND status <> 'accepted'",
                    )
                    .bind(code)
                    .bind(&ts)
                    .bind(event_id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                }
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

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
