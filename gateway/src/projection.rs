//! The relational projection (R6.4): the decrypted, non-personal part of
//! every accepted event, split into rows for field-level queries: events,
//! the trace codes they touch, and packaging links. Personal data never
//! enters these tables; a query that is allowed to see it decrypts the
//! ledger payload instead.
//!
//! The projection is derived data, written by the ledger in the same
//! database transaction as the block that holds its events
//! ([`ProjectionWrite`], a `ledger::SideWrite`), so it never lags behind the
//! ledger. At start it is caught up from the ledger for transactions written
//! without it (older versions, `vaxgate ledger` tools). Its tables are
//! insert-only, like the ledger's, except that a trace code's custody
//! history is one row that blocks append to ([`history`]).

use std::collections::HashMap;

use ledger::{AnyStore, LeafInput, LedgerStore, SideConn, SideFuture, SideWrite, StoredTx, Transaction, TxKind};
use mappings::commitment::Commitment;
use mappings::{ExchangeMessage, TraceEvent};
use secure_gateway::envelope::{ContentType, RecipientKey};
use secure_gateway::{CryptoProvider, KeyHandle, RecordProof, SealedEnvelope, Sm2VerifyingKey};
use serde::Serialize;
use sqlx::{QueryBuilder, Row};

use crate::error::ApiError;

pub(crate) mod history;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS proj_events (
        leaf_index BIGINT PRIMARY KEY,
        event_id TEXT NOT NULL,
        tx_id TEXT NOT NULL,
        height BIGINT NOT NULL,
        category TEXT NOT NULL,
        occurred_ms BIGINT NOT NULL,
        source TEXT NOT NULL,
        signer TEXT NOT NULL,
        lot TEXT,
        cancels TEXT,
        doc TEXT NOT NULL)",
    // No index on event_id: an event id is its transaction's record id,
    // which the ledger's own unique index finds (one random index fewer to
    // write per record).
    // What queries need of each event's field commitments (public seed and
    // personal digests, `fields_blob`); no row for events written before
    // field commitments.
    "CREATE TABLE IF NOT EXISTS proj_fields (
        leaf_index BIGINT PRIMARY KEY,
        fields {blob} NOT NULL){wr}",
    "CREATE INDEX IF NOT EXISTS proj_events_lot ON proj_events (lot)",
    "CREATE INDEX IF NOT EXISTS proj_events_cancels ON proj_events (cancels)",
    // The lookup tables are their primary keys: on SQLite they are stored
    // as that key alone (`WITHOUT ROWID`, the `{wr}` below), not as a rowid
    // table plus an index holding the same columns again. Tables created by
    // older versions keep their layout; both read the same.
    "CREATE TABLE IF NOT EXISTS proj_codes (code TEXT NOT NULL, leaf_index BIGINT NOT NULL, PRIMARY KEY (code, leaf_index)){wr}",
    "CREATE TABLE IF NOT EXISTS proj_links (parent TEXT NOT NULL, child TEXT NOT NULL, leaf_index BIGINT NOT NULL,
        PRIMARY KEY (parent, child, leaf_index)){wr}",
    "CREATE INDEX IF NOT EXISTS proj_links_child ON proj_links (child)",
    "CREATE TABLE IF NOT EXISTS proj_shipments (shipment_no TEXT NOT NULL, leaf_index BIGINT NOT NULL,
        PRIMARY KEY (shipment_no, leaf_index)){wr}",
    // Reading sets by logger and period: a shipment's temperature history
    // is the sets of its logger that overlap its trip.
    "CREATE TABLE IF NOT EXISTS proj_readings (device TEXT NOT NULL, start_ms BIGINT NOT NULL, end_ms BIGINT NOT NULL,
        leaf_index BIGINT NOT NULL, PRIMARY KEY (device, start_ms, leaf_index)){wr}",
    // Custody (crate::custody, docs/custody.md): what each event says about
    // each trace code it moves, and about its lot. A code's history is one
    // row, its facts appended to it (`history`).
    "CREATE TABLE IF NOT EXISTS custody_codes (code TEXT PRIMARY KEY, facts {blob} NOT NULL){wr}",
    // A holder's candidate stock: every code some fact left with it.
    "CREATE TABLE IF NOT EXISTS custody_holders (holder TEXT NOT NULL, code TEXT NOT NULL,
        PRIMARY KEY (holder, code)){wr}",
    "CREATE TABLE IF NOT EXISTS custody_lots (lot TEXT NOT NULL, leaf_index BIGINT NOT NULL, kind SMALLINT NOT NULL,
        occurred_ms BIGINT NOT NULL, day1 TEXT, day2 TEXT, ok SMALLINT NOT NULL, event_id TEXT NOT NULL,
        PRIMARY KEY (lot, leaf_index, kind)){wr}",
    // Open provenance_pending alerts by code, and the transactions that
    // resolved them.
    "CREATE TABLE IF NOT EXISTS custody_pending (code TEXT NOT NULL, alert_leaf BIGINT NOT NULL,
        event_leaf BIGINT NOT NULL, opened_ms BIGINT NOT NULL, PRIMARY KEY (code, alert_leaf)){wr}",
    "CREATE INDEX IF NOT EXISTS custody_pending_opened ON custody_pending (opened_ms)",
    "CREATE TABLE IF NOT EXISTS custody_escalated (alert_leaf BIGINT PRIMARY KEY, by_leaf BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS custody_pending_alert ON custody_pending (alert_leaf)",
    "CREATE TABLE IF NOT EXISTS custody_resolved (alert_leaf BIGINT PRIMARY KEY, by_leaf BIGINT NOT NULL)",
    // Up to which leaf the facts of events projected before custody
    // existed (or projected at start) were derived.
    "CREATE TABLE IF NOT EXISTS custody_marks (through_leaf BIGINT PRIMARY KEY)",
];

/// What a row adds to the custody tables (crate::custody).
#[derive(Debug, Default, Clone)]
pub struct CustodyRows {
    /// Facts about its trace codes (their `seq` is replaced by the row's leaf).
    pub facts: Vec<mappings::custody::Fact>,
    /// Facts about its lot.
    pub lots: Vec<mappings::custody::LotFact>,
    /// For a `provenance_pending` alert: the pending codes and the position,
    /// in the same append, of the record it is about.
    pub pending: Option<(Vec<String>, usize)>,
    /// For a `provenance_resolved` alert: the leaf of the alert it resolves.
    pub resolves: Option<u64>,
    /// For a `provenance_escalated` alert: the leaf of the pending alert.
    pub escalates: Option<u64>,
}

/// One projected event.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectedEvent {
    /// Log position of its transaction.
    pub leaf_index: u64,
    /// Event id.
    pub event_id: String,
    /// Transaction id.
    pub tx_id: String,
    /// Block height.
    pub height: u64,
    /// Dataset category.
    pub category: String,
    /// When it happened (ms since the Unix epoch).
    pub occurred_ms: i64,
    /// Reporting organisation code.
    pub source: String,
    /// Entity whose key signed it.
    pub signer: String,
    /// Lot number, if any.
    pub lot: Option<String>,
    /// The event it refers to: the cancelled event of a cancellation, the
    /// related record of a cold-chain alert.
    pub cancels: Option<String>,
    /// The event without personal data (JSON).
    pub doc: serde_json::Value,
}

/// An event opened from the ledger: its message and the record seed of its
/// field commitments ([`mappings::commitment`]).
pub struct OpenedEvent {
    /// The exchange message, personal data included.
    pub msg: ExchangeMessage,
    /// The record seed (from the envelope's data key; from the payload for
    /// a node-written alert).
    pub seed: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for OpenedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedEvent")
            .field("msg", &self.msg)
            .finish_non_exhaustive()
    }
}

impl OpenedEvent {
    /// The record's field commitments.
    #[must_use]
    pub fn commitment(&self) -> Commitment {
        mappings::commitment::commit(&self.msg.payload, &self.seed)
    }
}

/// Opens a stored transaction's envelope with the node key and parses the
/// exchange message. `None` for transactions that are not events.
pub fn open_event(
    provider: &dyn CryptoProvider,
    node: &KeyHandle,
    st: &StoredTx,
) -> Result<Option<OpenedEvent>, String> {
    if !matches!(st.tx.content.kind, TxKind::Data | TxKind::Cancellation) {
        return Ok(None);
    }
    if st.tx.auth.leaf == LeafInput::Content
        && (st.tx.content.category == crate::coldchain::ALERT_CATEGORY
            || st.tx.content.category == crate::custody::ALERT_CATEGORY)
    {
        // A node-written alert: plain exchange JSON, no personal data.
        let text = std::str::from_utf8(&st.tx.content.payload).map_err(|_| "alert is not UTF-8".to_string())?;
        let msg = mappings::exchange::from_json(text).map_err(|e| e.to_string())?;
        return Ok(Some(OpenedEvent {
            msg,
            seed: zeroize::Zeroizing::new(mappings::commitment::plain_seed(&st.tx.content.payload)),
        }));
    }
    let env = SealedEnvelope::from_json(&st.tx.content.payload).map_err(|e| e.to_string())?;
    let a = &st.tx.auth;
    let pk = hex::decode(&a.public_key).map_err(|_| "signer public key is not hex".to_string())?;
    let vk = Sm2VerifyingKey::from_sec1(&pk, secure_gateway::DEFAULT_DIST_ID).map_err(|e| e.to_string())?;
    let proof = RecordProof {
        batch: a.batch.clone(),
        index: a.index,
        audit_path: a.audit_path.clone(),
        record: env.clone(),
    };
    let opened = proof
        .open(provider, &vk, RecipientKey::Sm2(node))
        .map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&opened.plaintext).map_err(|_| "plaintext is not UTF-8".to_string())?;
    let msg = match env.header.content_type {
        ContentType::Json => mappings::exchange::from_json(text),
        ContentType::Xml => mappings::exchange::from_xml(text),
    }
    .map_err(|e| e.to_string())?;
    Ok(Some(OpenedEvent {
        msg,
        seed: opened.field_seed,
    }))
}

/// The projected row of an event (personal data removed).
pub fn project(st: &StoredTx, msg: &ExchangeMessage) -> ProjectedEvent {
    let mut ev = msg.payload.clone();
    ev.pii = Default::default();
    let mut p = columns(&st.tx, st.leaf_index, st.height, msg.event_id.to_string(), &ev);
    p.doc = serde_json::to_value(&ev).unwrap_or_default();
    p
}

/// Every column but `doc` (left `Null`).
fn columns(tx: &Transaction, leaf_index: u64, height: u64, event_id: String, ev: &TraceEvent) -> ProjectedEvent {
    ProjectedEvent {
        leaf_index,
        event_id,
        tx_id: tx.content.tx_id.to_string(),
        height,
        category: ev.category.clone(),
        occurred_ms: ev.occurred_at.timestamp_millis(),
        source: ev.source.clone(),
        signer: tx.auth.signer.clone(),
        lot: ev.field_str("lot_number").map(str::to_string),
        // The event this one refers to: the cancelled event of a
        // cancellation, the related record of a cold-chain alert.
        cancels: ev
            .field_str("cancels_event_id")
            .or_else(|| ev.field_str("related_event_id"))
            .map(str::to_string),
        doc: serde_json::Value::Null,
    }
}

/// One event as written: its columns (`event.doc` unused), the event
/// without personal data as JSON text, its trace codes, packaging links and
/// shipment number.
#[derive(Debug)]
struct ProjRow {
    event: ProjectedEvent,
    doc: String,
    codes: Vec<String>,
    links: Vec<(String, String)>,
    shipment: Option<String>,
    /// A reading set's logger and period (ms).
    reading: Option<(String, i64, i64)>,
    custody: CustodyRows,
    /// What queries need of the field commitments: the public seed, then
    /// the digests of the personal members ([`fields_blob`]).
    fields: Option<Vec<u8>>,
}

/// What [`Projection::check_against`] found.
#[derive(Debug, Clone, Default)]
pub struct ProjectionCheck {
    /// Event rows read.
    pub rows: u64,
    /// Rows whose content was checked against a field-commitment root.
    pub committed: u64,
    /// Each difference, naming the leaf and event.
    pub differences: Vec<String>,
}

/// Checks one projected event against its ledger transaction: the columns
/// against the transaction and the event document, and (for a transaction
/// with field commitments) every member of the document against the
/// committed root.
pub fn check_event(e: &ProjectedEvent, st: Option<&StoredTx>, fields: Option<&Vec<u8>>) -> Result<(), String> {
    let st = st.ok_or("no transaction at this leaf in the ledger")?;
    let c = &st.tx.content;
    let col = |name: &str, row: &str, ledger: &str| -> Result<(), String> {
        if row == ledger {
            Ok(())
        } else {
            Err(format!("column {name} is {row:?}, the ledger says {ledger:?}"))
        }
    };
    col("event_id", &e.event_id, &c.record_id)?;
    col("tx_id", &e.tx_id, &c.tx_id.to_string())?;
    col("category", &e.category, &c.category)?;
    col("signer", &e.signer, &st.tx.auth.signer)?;
    if e.height != st.height {
        return Err(format!("column height is {}, the ledger says {}", e.height, st.height));
    }
    let doc = &e.doc;
    let s = |k: &str| doc[k].as_str().map(str::to_string);
    let f = |k: &str| doc["fields"][k].as_str().map(str::to_string);
    let occurred = s("occurredAt")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.timestamp_millis());
    if occurred != Some(e.occurred_ms) {
        return Err(format!(
            "column occurred_ms {} is not the document's occurredAt",
            e.occurred_ms
        ));
    }
    if s("source").as_deref() != Some(e.source.as_str()) {
        return Err("column source is not the document's".into());
    }
    if f("lot_number") != e.lot {
        return Err("column lot is not the document's lot_number".into());
    }
    if f("cancels_event_id").or_else(|| f("related_event_id")) != e.cancels {
        return Err("column cancels is not the document's".into());
    }
    let Some(root) = c.fields_root else {
        return Ok(()); // written before field commitments: nothing to check the document against
    };
    let blob = fields.ok_or("no field-commitment row (proj_fields)")?;
    let (seed, personal) = parse_fields_blob(blob)?;
    let m = doc.as_object().ok_or("the document is not a JSON object")?;
    let d = mappings::commitment::disclose(m, &seed, &[], None, &personal);
    let got = mappings::commitment::check(doc, &std::collections::BTreeMap::new(), &d).map_err(|e| e.to_string())?;
    if got != root.0 {
        return Err(format!(
            "the document is not what transaction {} commits to (a member was changed, added or removed, or its \
             field-commitment row was)",
            c.tx_id
        ));
    }
    Ok(())
}

/// The stored form of what queries need of a record's field commitments:
/// the public seed (32 bytes), then the digest of each personal member
/// (32 bytes each, sorted). No personal salt can be derived from it.
#[must_use]
pub fn fields_blob(c: &Commitment) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 * (1 + c.personal.len()));
    b.extend_from_slice(&c.seeds.public);
    for d in &c.personal {
        b.extend_from_slice(d);
    }
    b
}

/// The public seed and personal digests of a [`fields_blob`].
pub fn parse_fields_blob(b: &[u8]) -> Result<([u8; 32], Vec<[u8; 32]>), String> {
    if b.len() < 32 || !b.len().is_multiple_of(32) {
        return Err(format!(
            "a field-commitment row of {} bytes (a multiple of 32, at least 32)",
            b.len()
        ));
    }
    let mut chunks = b.chunks_exact(32).map(|c| {
        let mut a = [0u8; 32];
        a.copy_from_slice(c);
        a
    });
    let seed = chunks.next().unwrap_or_default();
    Ok((seed, chunks.collect()))
}

/// The row of `msg`, consumed (no copy of the event is made).
fn row_of(tx: &Transaction, leaf_index: u64, height: u64, msg: ExchangeMessage) -> ProjRow {
    let codes = codes_of(&msg);
    let links = msg
        .payload
        .aggregations
        .iter()
        .flat_map(|a| a.children.iter().map(|c| (a.parent.clone(), c.clone())))
        .collect();
    let shipment = msg.payload.field_str("shipment_no").map(str::to_string);
    let time = |k: &str| {
        msg.payload
            .field_str(k)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    };
    let reading = match (msg.payload.category.as_str(), &msg.payload.device) {
        ("cold_chain_readings", Some(d)) => time("period_start")
            .zip(time("period_end"))
            .map(|(a, b)| (d.clone(), a, b)),
        _ => None,
    };
    let mut ev = msg.payload;
    ev.pii = Default::default();
    let doc = serde_json::to_string(&ev).unwrap_or_default();
    ProjRow {
        event: columns(tx, leaf_index, height, msg.event_id.to_string(), &ev),
        doc,
        codes,
        links,
        shipment,
        reading,
        custody: CustodyRows::default(),
        fields: None,
    }
}

/// The projection rows of transactions about to be appended, written by the
/// ledger in the same database transaction as their block
/// ([`ledger::Ledger::append_with`]): the projection then never lags behind
/// the ledger nor holds an event the ledger does not.
#[derive(Debug)]
pub struct ProjectionWrite {
    rows: Vec<ProjRow>,
}

impl ProjectionWrite {
    /// Rows for `txs`, in append order, with `msgs[i]` the opened event of
    /// `txs[i]`, `fields[i]` its field commitments and `custody[i]` what it
    /// adds to the custody tables.
    pub fn new(
        txs: &[Transaction],
        msgs: Vec<ExchangeMessage>,
        fields: Vec<Commitment>,
        custody: Vec<CustodyRows>,
    ) -> Self {
        debug_assert_eq!(txs.len(), msgs.len());
        debug_assert_eq!(txs.len(), fields.len());
        let mut custody = custody.into_iter();
        let mut fields = fields.into_iter();
        let rows = txs
            .iter()
            .zip(msgs)
            .map(|(t, m)| {
                let mut r = row_of(t, 0, 0, m);
                r.custody = custody.next().unwrap_or_default();
                r.fields = fields.next().as_ref().map(fields_blob);
                r
            })
            .collect();
        ProjectionWrite { rows }
    }
}

impl SideWrite for ProjectionWrite {
    fn write<'c>(&'c self, conn: SideConn<'c>, first_leaf: u64, height: u64) -> SideFuture<'c> {
        let place = Some((first_leaf, height));
        Box::pin(async move {
            match conn {
                SideConn::Sqlite(c) => SqliteProjection::insert_rows(c, &self.rows, place).await,
                SideConn::Postgres(c) => PgProjection::insert_rows(c, &self.rows, place).await,
            }
        })
    }
}

fn codes_of(msg: &ExchangeMessage) -> Vec<String> {
    let mut c: Vec<String> = msg.payload.trace_codes.clone();
    for a in &msg.payload.aggregations {
        c.push(a.parent.clone());
        c.extend(a.children.iter().cloned());
    }
    c.sort();
    c.dedup();
    c
}

// The projection store, per backend. Written as a macro over the concrete
// sqlx pool type so one body serves SQLite and PostgreSQL.
macro_rules! projection_impl {
    ($name:ident, $pool:ty, $db:ty, $without_rowid:expr, $blob:literal, $table_exists:expr) => {
        /// Projection tables on this backend.
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
        }

        impl $name {
            async fn init(&self) -> Result<(), String> {
                for s in SCHEMA {
                    let s = s.replace("{wr}", $without_rowid).replace("{blob}", $blob);
                    sqlx::query(sqlx::AssertSqlSafe(s)).execute(&self.pool).await.map_err(|e| e.to_string())?;
                }
                self.migrate_custody_facts().await
            }

            /// Moves the custody facts of a ledger written by a version that
            /// kept one row per fact (`custody_facts`) into one history per
            /// code, in one transaction, and drops the old table.
            async fn migrate_custody_facts(&self) -> Result<(), String> {
                let exists = sqlx::query(sqlx::AssertSqlSafe($table_exists))
                    .bind("custody_facts")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some();
                if !exists {
                    return Ok(());
                }
                let mut db = self.pool.begin().await.map_err(|e| e.to_string())?;
                let (mut after_code, mut after_leaf) = (String::new(), -1i64);
                let mut moved = 0usize;
                loop {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "SELECT code, leaf_index, occurred_ms, kind, actor, peer, doses, event_id, cancels, lot, holder \
                         FROM custody_facts WHERE code > ",
                    );
                    qb.push_bind(after_code.clone());
                    qb.push(" OR (code = ");
                    qb.push_bind(after_code.clone());
                    qb.push(" AND leaf_index > ");
                    qb.push_bind(after_leaf);
                    qb.push(") ORDER BY code, leaf_index LIMIT 20000");
                    let page = qb.build().fetch_all(&mut *db).await.map_err(|e| e.to_string())?;
                    let Some(last) = page.last() else { break };
                    after_code = last.try_get("code").map_err(|e| e.to_string())?;
                    after_leaf = last.try_get("leaf_index").map_err(|e| e.to_string())?;
                    let mut rows = Vec::with_capacity(page.len());
                    for r in &page {
                        let e = |e: sqlx::Error| format!("custody_facts: {e}");
                        let kind: i16 = r.try_get("kind").map_err(e)?;
                        let uuid = |s: String| uuid::Uuid::parse_str(&s).map_err(|e| format!("custody_facts: {e}"));
                        let leaf: i64 = r.try_get("leaf_index").map_err(e)?;
                        rows.push((leaf, CustodyRows {
                            facts: vec![mappings::custody::Fact {
                                code: r.try_get("code").map_err(e)?,
                                seq: leaf as u64,
                                at_ms: r.try_get("occurred_ms").map_err(e)?,
                                kind: mappings::custody::Move::from_i16(kind)
                                    .ok_or_else(|| format!("custody_facts: unknown kind {kind}"))?,
                                actor: r.try_get("actor").map_err(e)?,
                                peer: r.try_get("peer").map_err(e)?,
                                doses: u16::try_from(r.try_get::<i32, _>("doses").map_err(e)?).unwrap_or(0),
                                event_id: uuid(r.try_get("event_id").map_err(e)?)?,
                                cancels: r.try_get::<Option<String>, _>("cancels").map_err(e)?.map(uuid).transpose()?,
                                lot: r.try_get("lot").map_err(e)?,
                            }],
                            ..Default::default()
                        }));
                    }
                    moved += rows.len();
                    let refs: Vec<(i64, &CustodyRows)> = rows.iter().map(|(l, r)| (*l, r)).collect();
                    Self::insert_custody(&mut *db, &refs, 0).await?;
                    tracing::info!(facts = moved, "moving custody facts to one history per trace code");
                }
                sqlx::query("DROP TABLE custody_facts").execute(&mut *db).await.map_err(|e| e.to_string())?;
                db.commit().await.map_err(|e| e.to_string())?;
                tracing::info!(facts = moved, "custody facts moved to one history per trace code (custody_codes)");
                Ok(())
            }

            async fn insert(&self, rows: &[ProjRow]) -> Result<(), String> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut db = self.pool.begin().await.map_err(|e| e.to_string())?;
                Self::insert_rows(&mut *db, rows, None).await?;
                db.commit().await.map_err(|e| e.to_string())
            }

            /// Inserts rows on `db`, inside the caller's transaction. With
            /// `place = Some((first_leaf, height))` the rows are a block's
            /// consecutive transactions from `first_leaf` on (their own
            /// `leaf_index` and `height` are not read).
            async fn insert_rows(
                db: &mut <$db as sqlx::Database>::Connection,
                rows: &[ProjRow],
                place: Option<(u64, u64)>,
            ) -> Result<(), String> {
                let leaf = |k: usize, e: &ProjectedEvent| place.map_or(e.leaf_index, |(f, _)| f + k as u64) as i64;
                let height = |e: &ProjectedEvent| place.map_or(e.height, |(_, h)| h) as i64;
                let mut at = 0usize;
                for chunk in rows.chunks(500) {
                    let base = at;
                    at += chunk.len();
                    let chunk: Vec<(i64, &ProjRow)> =
                        chunk.iter().enumerate().map(|(k, r)| (leaf(base + k, &r.event), r)).collect();
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO proj_events (leaf_index, event_id, tx_id, height, category, occurred_ms, source, signer, lot, cancels, doc) ",
                    );
                    qb.push_values(&chunk, |mut r, (l, row)| {
                        let e = &row.event;
                        r.push_bind(*l)
                            .push_bind(e.event_id.clone())
                            .push_bind(e.tx_id.clone())
                            .push_bind(height(e))
                            .push_bind(e.category.clone())
                            .push_bind(e.occurred_ms)
                            .push_bind(e.source.clone())
                            .push_bind(e.signer.clone())
                            .push_bind(e.lot.clone())
                            .push_bind(e.cancels.clone())
                            .push_bind(row.doc.clone());
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                    let fields: Vec<(i64, &Vec<u8>)> =
                        chunk.iter().filter_map(|(l, row)| row.fields.as_ref().map(|f| (*l, f))).collect();
                    if !fields.is_empty() {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO proj_fields (leaf_index, fields) ");
                        qb.push_values(&fields, |mut r, (l, f)| {
                            r.push_bind(*l).push_bind((*f).clone());
                        });
                        qb.push(" ON CONFLICT DO NOTHING");
                        qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                    }
                    let codes: Vec<(String, i64)> =
                        chunk.iter().flat_map(|(l, row)| row.codes.iter().map(move |c| (c.clone(), *l))).collect();
                    for cc in codes.chunks(5000) {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO proj_codes (code, leaf_index) ");
                        qb.push_values(cc, |mut r, (c, l)| {
                            r.push_bind(c.clone()).push_bind(*l);
                        });
                        qb.push(" ON CONFLICT DO NOTHING");
                        qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                    }
                    let links: Vec<(String, String, i64)> = chunk
                        .iter()
                        .flat_map(|(l, row)| row.links.iter().map(move |(p, c)| (p.clone(), c.clone(), *l)))
                        .collect();
                    for lc in links.chunks(3000) {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO proj_links (parent, child, leaf_index) ");
                        qb.push_values(lc, |mut r, (p, c, l)| {
                            r.push_bind(p.clone()).push_bind(c.clone()).push_bind(*l);
                        });
                        qb.push(" ON CONFLICT DO NOTHING");
                        qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                    }
                    let ships: Vec<(String, i64)> = chunk
                        .iter()
                        .filter_map(|(l, row)| row.shipment.as_ref().map(|s| (s.clone(), *l)))
                        .collect();
                    if !ships.is_empty() {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO proj_shipments (shipment_no, leaf_index) ");
                        qb.push_values(&ships, |mut r, (s, l)| {
                            r.push_bind(s.clone()).push_bind(*l);
                        });
                        qb.push(" ON CONFLICT DO NOTHING");
                        qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                    }
                    let readings: Vec<(&str, i64, i64, i64)> = chunk
                        .iter()
                        .filter_map(|(l, row)| row.reading.as_ref().map(|(d, a, b)| (d.as_str(), *a, *b, *l)))
                        .collect();
                    if !readings.is_empty() {
                        let mut qb: QueryBuilder<$db> =
                            QueryBuilder::new("INSERT INTO proj_readings (device, start_ms, end_ms, leaf_index) ");
                        qb.push_values(&readings, |mut r, (d, a, b, l)| {
                            r.push_bind(d.to_string()).push_bind(*a).push_bind(*b).push_bind(*l);
                        });
                        qb.push(" ON CONFLICT DO NOTHING");
                        qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                    }
                    let first = chunk.first().map(|(l, _)| *l - base as i64).unwrap_or(0);
                    let custody: Vec<(i64, &CustodyRows)> = chunk.iter().map(|(l, r)| (*l, &r.custody)).collect();
                    Self::insert_custody(&mut *db, &custody, first).await?;
                }
                // An append (not a catch-up at start) wrote its custody facts.
                if let Some((first, _)) = place
                    && !rows.is_empty()
                {
                    Self::mark_custody(&mut *db, (first + rows.len() as u64 - 1) as i64).await?;
                }
                Ok(())
            }

            /// The custody rows of `chunk` (leaf, row); `first` is the leaf
            /// of the append's first row (a pending alert names its record
            /// by position in the append).
            async fn insert_custody(
                db: &mut <$db as sqlx::Database>::Connection,
                chunk: &[(i64, &CustodyRows)],
                first: i64,
            ) -> Result<(), String> {
                // Each code's new facts, in order, appended to its history
                // in one statement (a code may appear once per statement).
                let mut by_code: std::collections::BTreeMap<&str, Vec<u8>> = Default::default();
                let mut holders: std::collections::BTreeSet<(&str, &str)> = Default::default();
                for (l, row) in chunk {
                    for f in &row.facts {
                        history::encode_into(by_code.entry(f.code.as_str()).or_default(), *l as u64, f)?;
                        if let Some(h) = f.holder_after() {
                            holders.insert((h, f.code.as_str()));
                        }
                    }
                }
                let by_code: Vec<(&str, Vec<u8>)> = by_code.into_iter().collect();
                for hc in by_code.chunks(2000) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO custody_codes (code, facts) ");
                    qb.push_values(hc, |mut r, (c, b)| {
                        r.push_bind(c.to_string()).push_bind(b.clone());
                    });
                    qb.push(concat!(
                        " ON CONFLICT (code) DO UPDATE SET facts = CAST(custody_codes.facts || excluded.facts AS ",
                        $blob,
                        ")"
                    ));
                    qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                }
                let holders: Vec<(&str, &str)> = holders.into_iter().collect();
                for hc in holders.chunks(3000) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO custody_holders (holder, code) ");
                    qb.push_values(hc, |mut r, (h, c)| {
                        r.push_bind(h.to_string()).push_bind(c.to_string());
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                }
                let lots: Vec<(i64, &mappings::custody::LotFact)> =
                    chunk.iter().flat_map(|(l, row)| row.lots.iter().map(move |f| (*l, f))).collect();
                if !lots.is_empty() {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO custody_lots (lot, leaf_index, kind, occurred_ms, day1, day2, ok, event_id) ",
                    );
                    qb.push_values(&lots, |mut r, (l, f)| {
                        r.push_bind(f.lot.clone())
                            .push_bind(*l)
                            .push_bind(f.kind.as_i16())
                            .push_bind(f.at_ms)
                            .push_bind(f.day.map(|d| d.to_string()))
                            .push_bind(f.day2.map(|d| d.to_string()))
                            .push_bind(i16::from(f.ok))
                            .push_bind(f.event_id.to_string());
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                }
                let pending: Vec<(String, i64, i64)> = chunk
                    .iter()
                    .filter_map(|(l, row)| row.pending.as_ref().map(|(codes, pos)| (l, codes, pos)))
                    .flat_map(|(l, codes, pos)| codes.iter().map(move |c| (c.clone(), *l, first + *pos as i64)))
                    .collect();
                let now_ms = chrono::Utc::now().timestamp_millis();
                for pc in pending.chunks(3000) {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new("INSERT INTO custody_pending (code, alert_leaf, event_leaf, opened_ms) ");
                    qb.push_values(pc, |mut r, (c, a, e)| {
                        r.push_bind(c.clone()).push_bind(*a).push_bind(*e).push_bind(now_ms);
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                }
                // Follow-ups of pending alerts: (pending alert leaf, this row's leaf).
                for (table, of) in [
                    ("custody_escalated", (|r: &CustodyRows| r.escalates) as fn(&CustodyRows) -> Option<u64>),
                    ("custody_resolved", |r: &CustodyRows| r.resolves),
                ] {
                    let pairs: Vec<(i64, i64)> =
                        chunk.iter().filter_map(|(l, row)| of(row).map(|a| (a as i64, *l))).collect();
                    if pairs.is_empty() {
                        continue;
                    }
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new(format!("INSERT INTO {table} (alert_leaf, by_leaf) "));
                    qb.push_values(&pairs, |mut r, (a, by)| {
                        r.push_bind(*a).push_bind(*by);
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }

            /// The stored histories of these codes (those that have one).
            async fn custody_histories(&self, codes: &[String]) -> Result<Vec<(String, Vec<u8>)>, String> {
                let mut out = Vec::new();
                for cc in codes.chunks(5000) {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new("SELECT code, facts FROM custody_codes WHERE code IN (");
                    let mut sep = qb.separated(", ");
                    for c in cc {
                        sep.push_bind(c.clone());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                        out.push((
                            r.try_get("code").map_err(|e| e.to_string())?,
                            r.try_get("facts").map_err(|e| e.to_string())?,
                        ));
                    }
                }
                Ok(out)
            }

            async fn fields_of(&self, leaves: &[u64]) -> Result<HashMap<u64, Vec<u8>>, String> {
                let mut out = HashMap::new();
                for cc in leaves.chunks(5000) {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new("SELECT leaf_index, fields FROM proj_fields WHERE leaf_index IN (");
                    let mut sep = qb.separated(", ");
                    for l in cc {
                        sep.push_bind(*l as i64);
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                        let l: i64 = r.try_get("leaf_index").map_err(|e| e.to_string())?;
                        out.insert(l as u64, r.try_get("fields").map_err(|e| e.to_string())?);
                    }
                }
                Ok(out)
            }

            /// Every custody fact of these lots.
            async fn custody_lots(&self, lots: &[String]) -> Result<Vec<mappings::custody::LotFact>, String> {
                if lots.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT lot, leaf_index, kind, occurred_ms, day1, day2, ok, event_id FROM custody_lots WHERE lot IN (",
                );
                let mut sep = qb.separated(", ");
                for l in lots {
                    sep.push_bind(l.clone());
                }
                qb.push(")");
                let day = |s: Option<String>| s.and_then(|s| chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok());
                let mut out = Vec::new();
                for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                    let e = |e: sqlx::Error| e.to_string();
                    let kind: i16 = r.try_get("kind").map_err(e)?;
                    out.push(mappings::custody::LotFact {
                        lot: r.try_get("lot").map_err(e)?,
                        seq: r.try_get::<i64, _>("leaf_index").map_err(e)? as u64,
                        event_id: uuid::Uuid::parse_str(&r.try_get::<String, _>("event_id").map_err(e)?)
                            .map_err(|e| format!("custody_lots: {e}"))?,
                        at_ms: r.try_get("occurred_ms").map_err(e)?,
                        kind: mappings::custody::LotMove::from_i16(kind)
                            .ok_or_else(|| format!("custody_lots: unknown kind {kind}"))?,
                        day: day(r.try_get("day1").map_err(e)?),
                        day2: day(r.try_get("day2").map_err(e)?),
                        ok: r.try_get::<i16, _>("ok").map_err(e)? != 0,
                    });
                }
                Ok(out)
            }

            /// Leaves of the reading sets of logger `device` whose period
            /// overlaps `[from_ms, to_ms]`.
            async fn readings_of(&self, device: &str, from_ms: i64, to_ms: i64) -> Result<Vec<u64>, String> {
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new("SELECT leaf_index FROM proj_readings WHERE device = ");
                qb.push_bind(device.to_string());
                qb.push(" AND start_ms <= ");
                qb.push_bind(to_ms);
                qb.push(" AND end_ms >= ");
                qb.push_bind(from_ms);
                let rows = qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())?;
                rows.iter()
                    .map(|r| r.try_get::<i64, _>("leaf_index").map(|l| l as u64).map_err(|e| e.to_string()))
                    .collect()
            }

            /// The packaging links whose child is one of `codes`: (parent, child).
            async fn parents_of(&self, codes: &[String]) -> Result<Vec<(String, String)>, String> {
                let mut out = Vec::new();
                for cc in codes.chunks(5000) {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new("SELECT DISTINCT parent, child FROM proj_links WHERE child IN (");
                    let mut sep = qb.separated(", ");
                    for c in cc {
                        sep.push_bind(c.clone());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                        let e = |e: sqlx::Error| e.to_string();
                        out.push((r.try_get("parent").map_err(e)?, r.try_get("child").map_err(e)?));
                    }
                }
                Ok(out)
            }

            /// Which of `codes` are packages (the parent of some link).
            async fn parents_among(&self, codes: &[String]) -> Result<Vec<String>, String> {
                let mut out = Vec::new();
                for cc in codes.chunks(5000) {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new("SELECT DISTINCT parent FROM proj_links WHERE parent IN (");
                    let mut sep = qb.separated(", ");
                    for c in cc {
                        sep.push_bind(c.clone());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                        out.push(r.try_get::<String, _>("parent").map_err(|e| e.to_string())?);
                    }
                }
                Ok(out)
            }

            /// Pending alerts opened before `before_ms`, neither resolved nor
            /// escalated: (code, alert leaf, event leaf), at most `limit` alerts.
            async fn pending_due(&self, before_ms: i64, limit: i64) -> Result<Vec<(String, u64, u64)>, String> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT p.code, p.alert_leaf, p.event_leaf FROM custody_pending p WHERE p.alert_leaf IN (
                        SELECT DISTINCT q.alert_leaf FROM custody_pending q WHERE q.opened_ms < ",
                );
                qb.push_bind(before_ms);
                qb.push(
                    " AND NOT EXISTS (SELECT 1 FROM custody_resolved r WHERE r.alert_leaf = q.alert_leaf)
                      AND NOT EXISTS (SELECT 1 FROM custody_escalated x WHERE x.alert_leaf = q.alert_leaf)
                      ORDER BY q.alert_leaf LIMIT ",
                );
                qb.push_bind(limit);
                qb.push(")");
                let mut out = Vec::new();
                for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                    let e = |e: sqlx::Error| e.to_string();
                    out.push((
                        r.try_get("code").map_err(e)?,
                        r.try_get::<i64, _>("alert_leaf").map_err(e)? as u64,
                        r.try_get::<i64, _>("event_leaf").map_err(e)? as u64,
                    ));
                }
                Ok(out)
            }

            /// Every code some custody fact left with `holder`.
            async fn codes_left_with(&self, holder: &str) -> Result<Vec<String>, String> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT code FROM custody_holders WHERE holder = ");
                qb.push_bind(holder.to_string());
                let rows = qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())?;
                rows.iter()
                    .map(|r| r.try_get::<String, _>("code").map_err(|e| e.to_string()))
                    .collect()
            }

            /// Open (unresolved) pending alerts touching `codes`, with every
            /// code each of them is pending on: (code, alert leaf, event leaf).
            async fn open_pending(&self, codes: &[String]) -> Result<Vec<(String, u64, u64)>, String> {
                let mut alerts: Vec<i64> = Vec::new();
                for cc in codes.chunks(5000) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "SELECT DISTINCT p.alert_leaf AS a FROM custody_pending p WHERE p.code IN (",
                    );
                    let mut sep = qb.separated(", ");
                    for c in cc {
                        sep.push_bind(c.clone());
                    }
                    qb.push(") AND NOT EXISTS (SELECT 1 FROM custody_resolved r WHERE r.alert_leaf = p.alert_leaf)");
                    for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                        alerts.push(r.try_get("a").map_err(|e| e.to_string())?);
                    }
                }
                alerts.sort_unstable();
                alerts.dedup();
                let mut out = Vec::new();
                for ac in alerts.chunks(2000) {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new("SELECT code, alert_leaf, event_leaf FROM custody_pending WHERE alert_leaf IN (");
                    let mut sep = qb.separated(", ");
                    for a in ac {
                        sep.push_bind(*a);
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                        let e = |e: sqlx::Error| e.to_string();
                        out.push((
                            r.try_get("code").map_err(e)?,
                            r.try_get::<i64, _>("alert_leaf").map_err(e)? as u64,
                            r.try_get::<i64, _>("event_leaf").map_err(e)? as u64,
                        ));
                    }
                }
                Ok(out)
            }

            /// Up to which leaf custody facts were derived by
            /// [`Projection::derive_custody`] for ledgers written before
            /// custody existed (`None`: never).
            async fn custody_mark(&self) -> Result<Option<u64>, String> {
                let r = sqlx::query("SELECT MAX(through_leaf) AS m FROM custody_marks")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.try_get::<Option<i64>, _>("m").map_err(|e| e.to_string())?.map(|m| m as u64))
            }

            /// Writes derived custody rows and the mark up to which they are.
            async fn insert_derived(&self, rows: &[(i64, CustodyRows)], through: u64) -> Result<(), String> {
                let mut db = self.pool.begin().await.map_err(|e| e.to_string())?;
                let refs: Vec<(i64, &CustodyRows)> = rows.iter().map(|(l, r)| (*l, r)).collect();
                Self::insert_custody(&mut *db, &refs, 0).await?;
                Self::mark_custody(&mut *db, through as i64).await?;
                db.commit().await.map_err(|e| e.to_string())
            }

            /// Records that custody facts are written up to leaf `through`.
            async fn mark_custody(db: &mut <$db as sqlx::Database>::Connection, through: i64) -> Result<(), String> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO custody_marks (through_leaf) VALUES (");
                qb.push_bind(through);
                qb.push(") ON CONFLICT DO NOTHING");
                qb.build().execute(&mut *db).await.map_err(|e| e.to_string())?;
                Ok(())
            }

            /// Events with leaf index ≥ `from`, in leaf order, at most `limit`.
            async fn has_table(&self, name: &str) -> Result<bool, String> {
                Ok(sqlx::query(sqlx::AssertSqlSafe($table_exists))
                    .bind(name.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some())
            }

            async fn events_between(&self, from: u64, to: u64) -> Result<Vec<ProjectedEvent>, String> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT e.leaf_index, e.event_id, e.tx_id, e.height, e.category, e.occurred_ms, e.source, e.signer, e.lot, e.cancels, e.doc FROM proj_events e WHERE e.leaf_index >= ",
                );
                qb.push_bind(from as i64);
                qb.push(" AND e.leaf_index < ");
                qb.push_bind(to as i64);
                qb.push(" ORDER BY e.leaf_index");
                self.fetch_events(qb).await
            }

            async fn events_from(&self, from: u64, limit: i64) -> Result<Vec<ProjectedEvent>, String> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT e.leaf_index, e.event_id, e.tx_id, e.height, e.category, e.occurred_ms, e.source, e.signer, e.lot, e.cancels, e.doc FROM proj_events e WHERE e.leaf_index >= ",
                );
                qb.push_bind(from as i64);
                qb.push(" ORDER BY e.leaf_index LIMIT ");
                qb.push_bind(limit);
                self.fetch_events(qb).await
            }

            async fn max_leaf(&self) -> Result<Option<u64>, String> {
                let r = sqlx::query("SELECT MAX(leaf_index) AS m FROM proj_events")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                let m: Option<i64> = r.try_get("m").map_err(|e| e.to_string())?;
                Ok(m.map(|v| v as u64))
            }

            /// Codes linked to `codes` one step up (`up`: their parents) or
            /// down (their children).
            async fn linked(&self, codes: &[String], up: bool) -> Result<Vec<String>, String> {
                let mut out = Vec::new();
                let (want, have) = if up { ("parent", "child") } else { ("child", "parent") };
                {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new(format!("SELECT DISTINCT {want} AS c FROM proj_links WHERE {have} IN ("));
                    let mut sep = qb.separated(", ");
                    for c in codes {
                        sep.push_bind(c.clone());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())? {
                        out.push(r.try_get::<String, _>("c").map_err(|e| e.to_string())?);
                    }
                }
                Ok(out)
            }

            /// The events `sql_tail` selects; it must name each event at most
            /// once (no DISTINCT over rows carrying whole documents).
            async fn events_where(&self, sql_tail: &str, binds: &[String]) -> Result<Vec<ProjectedEvent>, String> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT e.leaf_index, e.event_id, e.tx_id, e.height, e.category, e.occurred_ms, e.source, e.signer, e.lot, e.cancels, e.doc FROM proj_events e ",
                );
                let mut parts = sql_tail.split('?');
                if let Some(first) = parts.next() {
                    qb.push(first);
                }
                for (part, b) in parts.zip(binds) {
                    qb.push_bind(b.clone());
                    qb.push(part);
                }
                self.fetch_events(qb).await
            }

            /// Events by leaf index.
            async fn events_at(&self, leaves: &[u64]) -> Result<Vec<ProjectedEvent>, String> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT e.leaf_index, e.event_id, e.tx_id, e.height, e.category, e.occurred_ms, e.source, e.signer, e.lot, e.cancels, e.doc FROM proj_events e WHERE e.leaf_index IN (",
                );
                let mut sep = qb.separated(", ");
                for l in leaves {
                    sep.push_bind(*l as i64);
                }
                qb.push(")");
                self.fetch_events(qb).await
            }

            async fn fetch_events(&self, mut qb: QueryBuilder<$db>) -> Result<Vec<ProjectedEvent>, String> {
                let rows = qb.build().fetch_all(&self.pool).await.map_err(|e| e.to_string())?;
                rows.iter()
                    .map(|r| {
                        let g = |c: &str| r.try_get::<String, _>(c).map_err(|e| e.to_string());
                        Ok(ProjectedEvent {
                            leaf_index: r.try_get::<i64, _>("leaf_index").map_err(|e| e.to_string())? as u64,
                            event_id: g("event_id")?,
                            tx_id: g("tx_id")?,
                            height: r.try_get::<i64, _>("height").map_err(|e| e.to_string())? as u64,
                            category: g("category")?,
                            occurred_ms: r.try_get("occurred_ms").map_err(|e| e.to_string())?,
                            source: g("source")?,
                            signer: g("signer")?,
                            lot: r.try_get("lot").map_err(|e| e.to_string())?,
                            cancels: r.try_get("cancels").map_err(|e| e.to_string())?,
                            doc: serde_json::from_str(&g("doc")?).map_err(|e| e.to_string())?,
                        })
                    })
                    .collect()
            }
        }
    };
}

projection_impl!(
    SqliteProjection,
    sqlx::SqlitePool,
    sqlx::Sqlite,
    " WITHOUT ROWID",
    "BLOB",
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
);
projection_impl!(
    PgProjection,
    sqlx::PgPool,
    sqlx::Postgres,
    "",
    "BYTEA",
    "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1"
);

/// The projection, on the ledger's own database.
#[derive(Debug, Clone)]
pub enum Projection {
    /// SQLite.
    Sqlite(SqliteProjection),
    /// PostgreSQL.
    Postgres(PgProjection),
}

macro_rules! each {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            Projection::Sqlite($p) => $e,
            Projection::Postgres($p) => $e,
        }
    };
}

impl Projection {
    /// Creates the tables in the ledger's database if needed.
    pub async fn open(store: &AnyStore) -> Result<Self, String> {
        let p = match store {
            AnyStore::Sqlite(s) => Projection::Sqlite(SqliteProjection { pool: s.pool().clone() }),
            AnyStore::Postgres(s) => Projection::Postgres(PgProjection { pool: s.pool().clone() }),
        };
        let r = &p;
        each!(r, x => x.init().await)?;
        Ok(p)
    }

    /// The projection of a ledger database as it is, without creating or
    /// changing anything (`None` when it has no projection tables, e.g. a
    /// ledger written by `vaxgate bench ledger`).
    pub async fn attach(store: &AnyStore) -> Result<Option<Self>, String> {
        let p = match store {
            AnyStore::Sqlite(s) => Projection::Sqlite(SqliteProjection { pool: s.pool().clone() }),
            AnyStore::Postgres(s) => Projection::Postgres(PgProjection { pool: s.pool().clone() }),
        };
        let r = &p;
        let events = each!(r, x => x.has_table("proj_events").await)?;
        let fields = each!(r, x => x.has_table("proj_fields").await)?;
        Ok((events && fields).then_some(p))
    }

    /// Checks the events the projection serves against the ledger
    /// ([`check_event`]), in pages of leaves up to `size`, calling
    /// `progress(done, size)` after each page. Every ledger event must have
    /// its row and every row its ledger event.
    pub async fn check_against(
        &self,
        store: &AnyStore,
        size: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ProjectionCheck, String> {
        const PAGE: u64 = 2000;
        let mut out = ProjectionCheck::default();
        let mut from = 0;
        while from < size {
            let to = (from + PAGE).min(size);
            let txs: HashMap<u64, StoredTx> = store
                .txs(from, to)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|t| (t.leaf_index, t))
                .collect();
            let rows = each!(self, x => x.events_between(from, to).await)?;
            let leaves: Vec<u64> = rows.iter().map(|e| e.leaf_index).collect();
            let fields = self.fields_of(&leaves).await?;
            let mut seen = std::collections::HashSet::new();
            for e in &rows {
                seen.insert(e.leaf_index);
                out.rows += 1;
                if let Err(why) = check_event(e, txs.get(&e.leaf_index), fields.get(&e.leaf_index)) {
                    out.differences
                        .push(format!("leaf {} (event {}): {why}", e.leaf_index, e.event_id));
                } else if fields.contains_key(&e.leaf_index) {
                    out.committed += 1;
                }
            }
            for (leaf, t) in &txs {
                if matches!(t.tx.content.kind, TxKind::Data | TxKind::Cancellation)
                    && t.tx.content.fields_root.is_some()
                    && !seen.contains(leaf)
                {
                    out.differences.push(format!(
                        "leaf {leaf} (event {}): in the ledger, missing from the projection",
                        t.tx.content.record_id
                    ));
                }
            }
            from = to;
            progress(from, size);
        }
        out.differences.sort();
        Ok(out)
    }

    /// Writes projected events (idempotent).
    pub async fn insert(&self, events: Vec<(StoredTx, OpenedEvent)>) -> Result<(), String> {
        let rows: Vec<ProjRow> = events
            .into_iter()
            .map(|(st, o)| {
                // Field commitments only where the transaction has them (a
                // ledger written before them has none to check against).
                let fields = st.tx.content.fields_root.map(|_| fields_blob(&o.commitment()));
                let mut r = row_of(&st.tx, st.leaf_index, st.height, o.msg);
                r.fields = fields;
                r
            })
            .collect();
        each!(self, x => x.insert(&rows).await)
    }

    /// Derives the custody facts of projected events from leaf `from` on,
    /// which were projected without them (a ledger written before custody
    /// existed, or events projected at start by [`Projection::catch_up`]),
    /// and marks how far it got. `party` turns a party code into the
    /// registered entity id. Returns how many events it read.
    pub async fn derive_custody(&self, from: u64, party: &dyn Fn(&str) -> String) -> Result<u64, String> {
        let mut from = from;
        let mut done = 0;
        loop {
            let page = each!(self, x => x.events_from(from, 1000).await)?;
            let Some(last) = page.last().map(|e| e.leaf_index) else {
                break;
            };
            let mut rows = Vec::new();
            for e in &page {
                let Ok(ev) = serde_json::from_value::<TraceEvent>(e.doc.clone()) else {
                    continue;
                };
                let mut c = mappings::custody::facts_of(&ev, e.leaf_index, party);
                if ev.category == "cancellation"
                    && let Some(target) = ev.field_str("cancels_event_id")
                    && let Some(t) = self.event(target).await?
                    && let Ok(id) = uuid::Uuid::parse_str(target)
                {
                    c.facts =
                        mappings::custody::cancel_facts(&ev, e.leaf_index, &crate::api::query::codes_in(&t.doc), id);
                }
                if !c.facts.is_empty() || !c.lot_facts.is_empty() {
                    rows.push((
                        e.leaf_index as i64,
                        CustodyRows {
                            facts: c.facts,
                            lots: c.lot_facts,
                            ..Default::default()
                        },
                    ));
                }
            }
            done += page.len() as u64;
            each!(self, x => x.insert_derived(&rows, last).await)?;
            from = last + 1;
        }
        Ok(done)
    }

    /// Where custody derivation must start at start-up: 0 for a ledger
    /// that never had it, else after the last mark (`None`: nothing to do
    /// unless events were projected at start).
    pub async fn custody_from(&self) -> Result<Option<u64>, String> {
        Ok(each!(self, x => x.custody_mark().await)?.map(|m| m + 1))
    }

    /// Projects every event of the ledger not yet projected (at start).
    pub async fn catch_up(
        &self,
        store: &AnyStore,
        provider: &dyn CryptoProvider,
        node: &KeyHandle,
    ) -> Result<u64, String> {
        let mut from = each!(self, x => x.max_leaf().await)?.map(|m| m + 1).unwrap_or(0);
        let mut done = 0;
        loop {
            let page = store.txs(from, from + 1000).await.map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            from = last.leaf_index + 1;
            let mut batch = Vec::new();
            for st in page {
                match open_event(provider, node, &st) {
                    Ok(Some(m)) => batch.push((st, m)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(tx = %st.tx.content.tx_id, error = %e, "cannot project transaction"),
                }
            }
            done += batch.len() as u64;
            self.insert(batch).await?;
        }
        Ok(done)
    }

    /// The codes packaging links connect to `code` in one direction: its
    /// packages, their packages ... (`up`), or its contents (down); at most
    /// `max`, `code` itself not included.
    pub async fn packaging(&self, code: &str, up: bool, max: usize) -> Result<Vec<String>, String> {
        let mut all: Vec<String> = Vec::new();
        let mut frontier = vec![code.to_string()];
        while !frontier.is_empty() && all.len() < max {
            let next = each!(self, x => x.linked(&frontier, up).await)?;
            frontier = next.into_iter().filter(|c| c != code && !all.contains(c)).collect();
            frontier.sort();
            frontier.dedup();
            all.extend(frontier.iter().cloned());
        }
        all.truncate(max);
        Ok(all)
    }

    /// The leaves of the lot-level events of lot `lot` (a
    /// [`mappings::custody::lot_key`]): its release (批签发) and recall
    /// records (not the production bills of its other codes).
    pub async fn lot_event_leaves(&self, lot: &str) -> Result<Vec<u64>, String> {
        let facts = self.custody_lots(&[lot.to_string()]).await?;
        let mut leaves: Vec<u64> = facts
            .into_iter()
            .filter(|f| f.kind != mappings::custody::LotMove::Produced)
            .map(|f| f.seq)
            .collect();
        leaves.sort_unstable();
        leaves.dedup();
        Ok(leaves)
    }

    /// Events touching any of `codes`, oldest first.
    pub async fn events_for_codes(&self, codes: &[String]) -> Result<Vec<ProjectedEvent>, String> {
        self.events_of_codes(codes, None).await
    }

    /// Events of one `category` touching any of `codes`, oldest first (a
    /// receipt's candidate shipments: not every event its codes went
    /// through, vaccinations included).
    pub async fn events_for_codes_in(&self, codes: &[String], category: &str) -> Result<Vec<ProjectedEvent>, String> {
        self.events_of_codes(codes, Some(category)).await
    }

    async fn events_of_codes(&self, codes: &[String], category: Option<&str>) -> Result<Vec<ProjectedEvent>, String> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; codes.len()].join(", ");
        let only = if category.is_some() { "e.category = ? AND " } else { "" };
        let tail = format!(
            "WHERE {only}e.leaf_index IN (SELECT c.leaf_index FROM proj_codes c WHERE c.code IN ({marks})) \
             ORDER BY e.occurred_ms, e.leaf_index"
        );
        let binds: Vec<String> = category
            .map(str::to_string)
            .into_iter()
            .chain(codes.iter().cloned())
            .collect();
        each!(self, x => x.events_where(&tail, &binds).await)
    }

    /// Events of a lot, oldest first.
    pub async fn events_for_lot(&self, lot: &str) -> Result<Vec<ProjectedEvent>, String> {
        each!(self, x => x.events_where("WHERE e.lot = ? ORDER BY e.occurred_ms, e.leaf_index", &[lot.to_string()]).await)
    }

    /// Events naming shipment `no` (the shipment record, its reading sets,
    /// receipts and alerts), oldest first.
    pub async fn events_for_shipment(&self, no: &str) -> Result<Vec<ProjectedEvent>, String> {
        each!(self, x => x.events_where(
            "JOIN proj_shipments s ON s.leaf_index = e.leaf_index WHERE s.shipment_no = ? ORDER BY e.occurred_ms, e.leaf_index",
            &[no.to_string()],
        ).await)
    }

    /// An event by id.
    pub async fn event(&self, event_id: &str) -> Result<Option<ProjectedEvent>, String> {
        Ok(each!(self, x => x.events_where(
                "WHERE e.leaf_index = (SELECT t.leaf_index FROM transactions t WHERE t.record_id = ?)",
                &[event_id.to_string()]
            ).await)?
        .into_iter()
        .next())
    }

    /// Every custody fact of these codes (any order).
    pub async fn custody_facts(&self, codes: &[String]) -> Result<Vec<mappings::custody::Fact>, String> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (code, bytes) in self.custody_histories(codes).await? {
            out.extend(history::decode(&code, &bytes)?);
        }
        Ok(out)
    }

    /// The stored custody histories of `codes` ([`history`]), as bytes:
    /// (code, history) for those that have one.
    pub async fn custody_histories(&self, codes: &[String]) -> Result<Vec<(String, Vec<u8>)>, String> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        each!(self, x => x.custody_histories(codes).await)
    }

    /// The stored field-commitment rows ([`fields_blob`]) of events, by
    /// leaf; events written before field commitments have none.
    pub async fn fields_of(&self, leaves: &[u64]) -> Result<HashMap<u64, Vec<u8>>, String> {
        if leaves.is_empty() {
            return Ok(HashMap::new());
        }
        each!(self, x => x.fields_of(leaves).await)
    }

    /// Every custody fact of these lots.
    pub async fn custody_lots(&self, lots: &[String]) -> Result<Vec<mappings::custody::LotFact>, String> {
        each!(self, x => x.custody_lots(lots).await)
    }

    /// Pending alerts opened before `before_ms` that nothing resolved or
    /// escalated yet: (code, alert leaf, event leaf) of at most `limit` alerts.
    pub async fn pending_due(&self, before_ms: i64, limit: i64) -> Result<Vec<(String, u64, u64)>, String> {
        each!(self, x => x.pending_due(before_ms, limit).await)
    }

    /// Leaves of the reading sets of logger `device` whose period overlaps
    /// `[from_ms, to_ms]` (a shipment's temperature history).
    pub async fn readings_of(&self, device: &str, from_ms: i64, to_ms: i64) -> Result<Vec<u64>, String> {
        each!(self, x => x.readings_of(device, from_ms, to_ms).await)
    }

    /// The packaging links whose child is one of `codes`: (parent, child).
    pub async fn parents_of(&self, codes: &[String]) -> Result<Vec<(String, String)>, String> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        each!(self, x => x.parents_of(codes).await)
    }

    /// The custody facts of `codes`, with the transports of the packages
    /// they are in inherited ([`mappings::custody::Book::add_inherited`]),
    /// as a book.
    pub async fn custody_book(&self, codes: &[String]) -> Result<mappings::custody::Book, String> {
        let links = self.parents_of(codes).await?;
        let mut children: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (p, c) in &links {
            children.entry(p.clone()).or_default().push(c.clone());
        }
        let mut all: Vec<String> = codes.to_vec();
        all.extend(children.keys().cloned());
        all.sort_unstable();
        all.dedup();
        let mut book = mappings::custody::Book::new();
        book.add_inherited(&children, self.custody_facts(&all).await?);
        Ok(book)
    }

    /// Which of `codes` are packages: the parent of some packaging link.
    pub async fn parents_among(&self, codes: &[String]) -> Result<Vec<String>, String> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        each!(self, x => x.parents_among(codes).await)
    }

    /// Every code some custody fact left with `holder` (an entity id): the
    /// candidates of its stock.
    pub async fn codes_left_with(&self, holder: &str) -> Result<Vec<String>, String> {
        each!(self, x => x.codes_left_with(holder).await)
    }

    /// Open pending alerts touching `codes`: (code, alert leaf, event leaf)
    /// for every code each of them waits on.
    pub async fn open_pending(&self, codes: &[String]) -> Result<Vec<(String, u64, u64)>, String> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        each!(self, x => x.open_pending(codes).await)
    }

    /// Events by leaf index (any order).
    pub async fn events_at(&self, leaves: &[u64]) -> Result<Vec<ProjectedEvent>, String> {
        if leaves.is_empty() {
            return Ok(Vec::new());
        }
        each!(self, x => x.events_at(leaves).await)
    }

    /// Cancellations of these events.
    pub async fn cancellations_of(&self, event_ids: &[String]) -> Result<Vec<ProjectedEvent>, String> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; event_ids.len()].join(", ");
        each!(self, x => x.events_where(&format!("WHERE e.cancels IN ({marks}) ORDER BY e.occurred_ms"), event_ids).await)
    }
}

impl From<String> for ApiError {
    fn from(e: String) -> Self {
        ApiError::internal(e)
    }
}
