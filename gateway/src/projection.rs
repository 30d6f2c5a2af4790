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
//! without it (older versions, `vaxgate ledger` tools), in transactions of
//! its own on the ledger's committing connection (`ledger::SideTx`); queries
//! use the ledger's readers. Its tables are insert-only, like the ledger's,
//! except that a trace code's custody history is one row that blocks append
//! to ([`history`]). The SQL is written once for every backend the ledger
//! knows ([`Tables`]).

use std::collections::HashMap;

use ledger::store::backend::push_list;
use ledger::{
    AnyStore, Dialect, LeafInput, LedgerStore, SideConn, SideFuture, SideWrite, StoredTx, Transaction, TxKind,
    on_backend,
};
use mappings::commitment::Commitment;
use mappings::{ExchangeMessage, TraceEvent};
use secure_gateway::envelope::{ContentType, RecipientKey};
use secure_gateway::{CryptoProvider, KeyHandle, RecordProof, Sm2VerifyingKey};
use serde::Serialize;
use sqlx::query_builder::Separated;
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
    // A lot's facts by kind: judging a record reads only the facts that
    // decide its lot's state (the latest production dates, the latest
    // release, the earliest recall), however many production bills restate
    // the lot (Tables::custody_lots).
    "CREATE INDEX IF NOT EXISTS custody_lots_kind ON custody_lots (lot, kind, leaf_index)",
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
    let env = st.tx.content.envelope().map_err(|e| e.to_string())?;
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

/// One page of [`Projection::check_against`]: leaves `from..to` of the
/// ledger and of the projection.
struct CheckPage {
    txs: HashMap<u64, StoredTx>,
    rows: Vec<ProjectedEvent>,
    fields: HashMap<u64, Vec<u8>>,
}

impl CheckPage {
    /// Every row against its transaction ([`check_event`], on up to four
    /// threads), and every transaction with field commitments against its
    /// row (none missing).
    fn check(self) -> ProjectionCheck {
        let CheckPage { txs, rows, fields } = self;
        let results = ledger::par_map(&rows, |_, e| {
            check_event(e, txs.get(&e.leaf_index), fields.get(&e.leaf_index))
                .map(|()| fields.contains_key(&e.leaf_index))
                .map_err(|why| format!("leaf {} (event {}): {why}", e.leaf_index, e.event_id))
        });
        let mut out = ProjectionCheck {
            rows: rows.len() as u64,
            ..ProjectionCheck::default()
        };
        for r in results {
            match r {
                Ok(true) => out.committed += 1,
                Ok(false) => {}
                Err(d) => out.differences.push(d),
            }
        }
        let seen: std::collections::HashSet<u64> = rows.iter().map(|e| e.leaf_index).collect();
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
        out
    }
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
        Box::pin(async move { on_backend!(conn, c => c.insert_rows(&self.rows, place).await) })
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

/// Bound parameters per statement at most (SQLite allows 32,766, PostgreSQL
/// 65,535): a multi-row INSERT of n columns writes this / n rows a statement.
const PARAMS_PER_STATEMENT: usize = 10_000;
/// Values per `IN (...)` list.
const IDS_PER_QUERY: usize = 5_000;
/// What an insert does with a row it already holds.
const KEEP: &str = " ON CONFLICT DO NOTHING";

/// Which of a lot's custody facts to read.
#[derive(Debug, Clone, Copy)]
enum LotRows {
    /// Those that decide its state (`mappings::custody::Book::lot`): at
    /// most four per lot, whatever its size.
    Deciding,
    /// Its release and recall facts (not the production bills).
    NotProduction,
}

/// Which events a query reads. Each names an event at most once (no
/// DISTINCT over rows carrying whole documents).
#[derive(Debug, Clone, Copy)]
enum Events<'a> {
    /// Leaf index in `[from, to)`, in leaf order.
    Between(u64, u64),
    /// Leaf index ≥ `from`, in leaf order, at most `limit`.
    From(u64, i64),
    /// These leaves, in no particular order.
    At(&'a [u64]),
    /// Touching any of these trace codes (and of this category, if one is
    /// given), oldest first.
    Codes(&'a [String], Option<&'a str>),
    /// Of a lot, oldest first.
    Lot(&'a str),
    /// Naming a shipment number, oldest first.
    Shipment(&'a str),
    /// The event with this id.
    Id(&'a str),
    /// Cancelling (or, for an alert, referring to) any of these events,
    /// oldest first.
    Cancelling(&'a [String]),
}

impl Events<'_> {
    /// The query, with the backend's own placeholders.
    fn query<DB>(self) -> QueryBuilder<DB>
    where
        DB: sqlx::Database,
        i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        let mut qb = QueryBuilder::new(
            "SELECT e.leaf_index, e.event_id, e.tx_id, e.height, e.category, e.occurred_ms, e.source, e.signer, \
             e.lot, e.cancels, e.doc FROM proj_events e ",
        );
        const BY_TIME: &str = " ORDER BY e.occurred_ms, e.leaf_index";
        match self {
            Events::Between(from, to) => {
                qb.push("WHERE e.leaf_index >= ").push_bind(from as i64);
                qb.push(" AND e.leaf_index < ").push_bind(to as i64);
                qb.push(" ORDER BY e.leaf_index");
            }
            Events::From(from, limit) => {
                qb.push("WHERE e.leaf_index >= ").push_bind(from as i64);
                qb.push(" ORDER BY e.leaf_index LIMIT ").push_bind(limit);
            }
            Events::At(leaves) => {
                qb.push("WHERE e.leaf_index IN (");
                push_list(&mut qb, leaves.iter().map(|l| *l as i64)).push(")");
            }
            Events::Codes(codes, category) => {
                qb.push("WHERE ");
                if let Some(c) = category {
                    qb.push("e.category = ").push_bind(c.to_string()).push(" AND ");
                }
                qb.push("e.leaf_index IN (SELECT c.leaf_index FROM proj_codes c WHERE c.code IN (");
                push_list(&mut qb, codes.iter().cloned()).push("))").push(BY_TIME);
            }
            Events::Lot(lot) => {
                qb.push("WHERE e.lot = ").push_bind(lot.to_string()).push(BY_TIME);
            }
            Events::Shipment(no) => {
                qb.push("JOIN proj_shipments s ON s.leaf_index = e.leaf_index WHERE s.shipment_no = ");
                qb.push_bind(no.to_string()).push(BY_TIME);
            }
            Events::Id(id) => {
                qb.push("WHERE e.leaf_index = (SELECT t.leaf_index FROM transactions t WHERE t.record_id = ");
                qb.push_bind(id.to_string()).push(")");
            }
            Events::Cancelling(ids) => {
                qb.push("WHERE e.cancels IN (");
                push_list(&mut qb, ids.iter().cloned()).push(") ORDER BY e.occurred_ms");
            }
        }
        qb
    }
}

/// The projection's SQL on a connection of one backend, written once in
/// `projection_sql!` and implemented for the connection of every backend
/// the ledger knows ([`ledger::each_backend!`]). [`Projection`] calls it
/// through [`ledger::on_backend!`] on a connection the ledger lends: one of
/// its readers for queries; for writes, a block's own database transaction
/// ([`ProjectionWrite`]) or a [`ledger::SideTx`] on the connection that
/// commits blocks. Errors name the table.
trait Tables {
    /// Creates the tables if needed, and moves the custody facts of an older
    /// layout (one row per fact) into one history per code.
    async fn init(&mut self) -> Result<(), String>;
    /// Inserts rows. With `place = Some((first_leaf, height))` the rows are
    /// a block's consecutive transactions from `first_leaf` on (their own
    /// `leaf_index` and `height` are not read).
    async fn insert_rows(&mut self, rows: &[ProjRow], place: Option<(u64, u64)>) -> Result<(), String>;
    /// The custody rows of `rows` (leaf, row); `first` is the leaf of the
    /// append's first row (a pending alert names its record by position in
    /// the append).
    async fn insert_custody(&mut self, rows: &[(i64, &CustodyRows)], first: i64) -> Result<(), String>;
    /// Records that custody facts are written up to leaf `through`.
    async fn mark_custody(&mut self, through: i64) -> Result<(), String>;
    /// Whether the table exists.
    async fn has_table(&mut self, name: &str) -> Result<bool, String>;
    /// The events `which` selects.
    async fn events(&mut self, which: Events<'_>) -> Result<Vec<ProjectedEvent>, String>;
    /// The greatest projected leaf.
    async fn max_leaf(&mut self) -> Result<Option<u64>, String>;
    /// Up to which leaf custody facts were derived (`None`: never).
    async fn custody_mark(&mut self) -> Result<Option<u64>, String>;
    /// The stored histories of these codes (those that have one).
    async fn custody_histories(&mut self, codes: &[String]) -> Result<Vec<(String, Vec<u8>)>, String>;
    /// Field-commitment rows by leaf.
    async fn fields_of(&mut self, leaves: &[u64]) -> Result<HashMap<u64, Vec<u8>>, String>;
    /// The custody facts of these lots that `which` names.
    async fn custody_lots(
        &mut self,
        lots: &[String],
        which: LotRows,
    ) -> Result<Vec<mappings::custody::LotFact>, String>;
    /// Leaves of the reading sets of logger `device` whose period overlaps
    /// `[from_ms, to_ms]`.
    async fn readings_of(&mut self, device: &str, from_ms: i64, to_ms: i64) -> Result<Vec<u64>, String>;
    /// The packaging links whose child is one of `codes`: (parent, child).
    async fn parents_of(&mut self, codes: &[String]) -> Result<Vec<(String, String)>, String>;
    /// The distinct `want` column (`parent` or `child`) of the packaging
    /// links whose `have` column is one of `codes`.
    async fn linked(&mut self, want: &str, have: &str, codes: &[String]) -> Result<Vec<String>, String>;
    /// Pending alerts opened before `before_ms`, neither resolved nor
    /// escalated: (code, alert leaf, event leaf), at most `limit` alerts.
    async fn pending_due(&mut self, before_ms: i64, limit: i64) -> Result<Vec<(String, u64, u64)>, String>;
    /// Every code some custody fact left with `holder`.
    async fn codes_left_with(&mut self, holder: &str) -> Result<Vec<String>, String>;
    /// Open (unresolved) pending alerts touching `codes`, with every code
    /// each of them is pending on: (code, alert leaf, event leaf).
    async fn open_pending(&mut self, codes: &[String]) -> Result<Vec<(String, u64, u64)>, String>;
}

/// Implements [`Tables`] on the connection `$conn` of database `$db`.
macro_rules! projection_sql {
    ($db:ty, $conn:ty) => {
        const _: () = {
            type Row = <$db as sqlx::Database>::Row;

            /// Column `col` of `r`.
            fn get<T>(r: &Row, col: &str) -> Result<T, String>
            where
                T: for<'r> sqlx::Decode<'r, $db> + sqlx::Type<$db>,
            {
                r.try_get(col).map_err(|e| format!("column {col}: {e}"))
            }

            /// A leaf index (or another count) in column `col` of `r`.
            fn get_u64(r: &Row, col: &str) -> Result<u64, String> {
                get::<i64>(r, col).map(|v| v as u64)
            }

            /// The rows `qb` selects from `table`.
            async fn fetch(db: &mut $conn, mut qb: QueryBuilder<$db>, table: &str) -> Result<Vec<Row>, String> {
                qb.build().fetch_all(&mut *db).await.map_err(|e| format!("{table}: {e}"))
            }

            /// The rows of `head`, then `values` as a bound list, then
            /// `tail`, a statement per [`IDS_PER_QUERY`] values.
            async fn rows_in<T>(
                db: &mut $conn,
                table: &str,
                head: &str,
                values: &[T],
                tail: &str,
            ) -> Result<Vec<Row>, String>
            where
                T: Clone + for<'t> sqlx::Encode<'t, $db> + sqlx::Type<$db>,
            {
                let mut out = Vec::new();
                for chunk in values.chunks(IDS_PER_QUERY) {
                    let mut qb = QueryBuilder::<$db>::new(head);
                    push_list(&mut qb, chunk.iter().cloned()).push(tail);
                    out.extend(fetch(db, qb, table).await?);
                }
                Ok(out)
            }

            /// `INSERT INTO {into} VALUES` the `rows`, each bound by `bind`,
            /// then `tail`; `into` is `table (column, ...)`, and a statement
            /// holds at most [`PARAMS_PER_STATEMENT`] values.
            async fn insert_values<T>(
                db: &mut $conn,
                into: &str,
                rows: &[T],
                tail: &str,
                mut bind: impl FnMut(Separated<'_, $db, &'static str>, &T),
            ) -> Result<(), String> {
                let columns = into.matches(',').count() + 1;
                for chunk in rows.chunks(PARAMS_PER_STATEMENT / columns) {
                    let mut qb = QueryBuilder::<$db>::new(format!("INSERT INTO {into} "));
                    qb.push_values(chunk, |row, t| bind(row, t));
                    qb.push(tail);
                    qb.build().execute(&mut *db).await.map_err(|e| format!("{into}: {e}"))?;
                }
                Ok(())
            }

            /// (code, alert leaf, event leaf) of `custody_pending` rows.
            fn pending_rows(rows: &[Row]) -> Result<Vec<(String, u64, u64)>, String> {
                rows.iter()
                    .map(|r| Ok((get(r, "code")?, get_u64(r, "alert_leaf")?, get_u64(r, "event_leaf")?)))
                    .collect()
            }

            /// Moves the custody facts of a ledger written by a version that
            /// kept one row per fact (`custody_facts`) into one history per
            /// code, and drops the old table (in the caller's transaction).
            async fn migrate_custody_facts(db: &mut $conn) -> Result<(), String> {
                if !db.has_table("custody_facts").await? {
                    return Ok(());
                }
                let (mut after_code, mut after_leaf) = (String::new(), -1i64);
                let mut moved = 0usize;
                loop {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT code, leaf_index, occurred_ms, kind, actor, peer, doses, event_id, cancels, lot, holder \
                         FROM custody_facts WHERE code > ",
                    );
                    qb.push_bind(after_code.clone());
                    qb.push(" OR (code = ");
                    qb.push_bind(after_code.clone());
                    qb.push(" AND leaf_index > ");
                    qb.push_bind(after_leaf);
                    qb.push(") ORDER BY code, leaf_index LIMIT 20000");
                    let page = fetch(db, qb, "custody_facts").await?;
                    let Some(last) = page.last() else { break };
                    after_code = get(last, "code")?;
                    after_leaf = get(last, "leaf_index")?;
                    let mut rows = Vec::with_capacity(page.len());
                    for r in &page {
                        let kind: i16 = get(r, "kind")?;
                        let uuid = |s: String| uuid::Uuid::parse_str(&s).map_err(|e| format!("custody_facts: {e}"));
                        let leaf: i64 = get(r, "leaf_index")?;
                        rows.push((leaf, CustodyRows {
                            facts: vec![mappings::custody::Fact {
                                code: get(r, "code")?,
                                seq: leaf as u64,
                                at_ms: get(r, "occurred_ms")?,
                                kind: mappings::custody::Move::from_i16(kind)
                                    .ok_or_else(|| format!("custody_facts: unknown kind {kind}"))?,
                                actor: get(r, "actor")?,
                                peer: get(r, "peer")?,
                                doses: u16::try_from(get::<i32>(r, "doses")?).unwrap_or(0),
                                event_id: uuid(get(r, "event_id")?)?,
                                cancels: get::<Option<String>>(r, "cancels")?.map(uuid).transpose()?,
                                lot: get(r, "lot")?,
                            }],
                            ..Default::default()
                        }));
                    }
                    moved += rows.len();
                    let refs: Vec<(i64, &CustodyRows)> = rows.iter().map(|(l, r)| (*l, r)).collect();
                    db.insert_custody(&refs, 0).await?;
                    tracing::info!(facts = moved, "moving custody facts to one history per trace code");
                }
                sqlx::query("DROP TABLE custody_facts")
                    .execute(&mut *db)
                    .await
                    .map_err(|e| format!("custody_facts: {e}"))?;
                tracing::info!(facts = moved, "custody facts moved to one history per trace code (custody_codes)");
                Ok(())
            }

            impl Tables for $conn {
                async fn init(&mut self) -> Result<(), String> {
                    for s in SCHEMA {
                        sqlx::query(sqlx::AssertSqlSafe(<$db as Dialect>::sql(s)))
                            .execute(&mut *self)
                            .await
                            .map_err(|e| format!("creating the projection tables: {e}"))?;
                    }
                    migrate_custody_facts(self).await
                }

                async fn insert_rows(&mut self, rows: &[ProjRow], place: Option<(u64, u64)>) -> Result<(), String> {
                    let leaf = |k: usize, e: &ProjectedEvent| place.map_or(e.leaf_index, |(f, _)| f + k as u64) as i64;
                    let height = |e: &ProjectedEvent| place.map_or(e.height, |(_, h)| h) as i64;
                    let rows: Vec<(i64, &ProjRow)> =
                        rows.iter().enumerate().map(|(k, r)| (leaf(k, &r.event), r)).collect();
                    insert_values(
                        self,
                        "proj_events (leaf_index, event_id, tx_id, height, category, occurred_ms, source, signer, lot, cancels, doc)",
                        &rows,
                        KEEP,
                        |mut r, (l, row)| {
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
                        },
                    )
                    .await?;
                    let fields: Vec<(i64, &Vec<u8>)> =
                        rows.iter().filter_map(|(l, row)| row.fields.as_ref().map(|f| (*l, f))).collect();
                    insert_values(self, "proj_fields (leaf_index, fields)", &fields, KEEP, |mut r, (l, f)| {
                        r.push_bind(*l).push_bind((*f).clone());
                    })
                    .await?;
                    let codes: Vec<(&str, i64)> =
                        rows.iter().flat_map(|(l, row)| row.codes.iter().map(move |c| (c.as_str(), *l))).collect();
                    insert_values(self, "proj_codes (code, leaf_index)", &codes, KEEP, |mut r, (c, l)| {
                        r.push_bind(c.to_string()).push_bind(*l);
                    })
                    .await?;
                    let links: Vec<(&str, &str, i64)> = rows
                        .iter()
                        .flat_map(|(l, row)| row.links.iter().map(move |(p, c)| (p.as_str(), c.as_str(), *l)))
                        .collect();
                    insert_values(self, "proj_links (parent, child, leaf_index)", &links, KEEP, |mut r, (p, c, l)| {
                        r.push_bind(p.to_string()).push_bind(c.to_string()).push_bind(*l);
                    })
                    .await?;
                    let ships: Vec<(&str, i64)> =
                        rows.iter().filter_map(|(l, row)| row.shipment.as_deref().map(|s| (s, *l))).collect();
                    insert_values(self, "proj_shipments (shipment_no, leaf_index)", &ships, KEEP, |mut r, (s, l)| {
                        r.push_bind(s.to_string()).push_bind(*l);
                    })
                    .await?;
                    let readings: Vec<(&str, i64, i64, i64)> = rows
                        .iter()
                        .filter_map(|(l, row)| row.reading.as_ref().map(|(d, a, b)| (d.as_str(), *a, *b, *l)))
                        .collect();
                    insert_values(
                        self,
                        "proj_readings (device, start_ms, end_ms, leaf_index)",
                        &readings,
                        KEEP,
                        |mut r, (d, a, b, l)| {
                            r.push_bind(d.to_string()).push_bind(*a).push_bind(*b).push_bind(*l);
                        },
                    )
                    .await?;
                    let first = rows.first().map_or(0, |(l, _)| *l);
                    let custody: Vec<(i64, &CustodyRows)> = rows.iter().map(|(l, r)| (*l, &r.custody)).collect();
                    self.insert_custody(&custody, first).await?;
                    // An append (not a catch-up at start) wrote its custody facts.
                    if let Some((first, _)) = place
                        && !rows.is_empty()
                    {
                        self.mark_custody((first + rows.len() as u64 - 1) as i64).await?;
                    }
                    Ok(())
                }

                async fn insert_custody(&mut self, rows: &[(i64, &CustodyRows)], first: i64) -> Result<(), String> {
                    // Each code's new facts, in order, appended to its history
                    // in one statement (a code may appear once per statement).
                    let mut by_code: std::collections::BTreeMap<&str, Vec<u8>> = Default::default();
                    let mut holders: std::collections::BTreeSet<(&str, &str)> = Default::default();
                    for (l, row) in rows {
                        for f in &row.facts {
                            history::encode_into(by_code.entry(f.code.as_str()).or_default(), *l as u64, f)?;
                            if let Some(h) = f.holder_after() {
                                holders.insert((h, f.code.as_str()));
                            }
                        }
                    }
                    let by_code: Vec<(&str, Vec<u8>)> = by_code.into_iter().collect();
                    let append = format!(
                        " ON CONFLICT (code) DO UPDATE SET facts = CAST(custody_codes.facts || excluded.facts AS {})",
                        <$db as Dialect>::BLOB
                    );
                    insert_values(self, "custody_codes (code, facts)", &by_code, &append, |mut r, (c, b)| {
                        r.push_bind(c.to_string()).push_bind(b.clone());
                    })
                    .await?;
                    let holders: Vec<(&str, &str)> = holders.into_iter().collect();
                    insert_values(self, "custody_holders (holder, code)", &holders, KEEP, |mut r, (h, c)| {
                        r.push_bind(h.to_string()).push_bind(c.to_string());
                    })
                    .await?;
                    let lots: Vec<(i64, &mappings::custody::LotFact)> =
                        rows.iter().flat_map(|(l, row)| row.lots.iter().map(move |f| (*l, f))).collect();
                    insert_values(
                        self,
                        "custody_lots (lot, leaf_index, kind, occurred_ms, day1, day2, ok, event_id)",
                        &lots,
                        KEEP,
                        |mut r, (l, f)| {
                            r.push_bind(f.lot.clone())
                                .push_bind(*l)
                                .push_bind(f.kind.as_i16())
                                .push_bind(f.at_ms)
                                .push_bind(f.day.map(|d| d.to_string()))
                                .push_bind(f.day2.map(|d| d.to_string()))
                                .push_bind(i16::from(f.ok))
                                .push_bind(f.event_id.to_string());
                        },
                    )
                    .await?;
                    let pending: Vec<(&str, i64, i64)> = rows
                        .iter()
                        .filter_map(|(l, row)| row.pending.as_ref().map(|(codes, pos)| (l, codes, pos)))
                        .flat_map(|(l, codes, pos)| codes.iter().map(move |c| (c.as_str(), *l, first + *pos as i64)))
                        .collect();
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    insert_values(
                        self,
                        "custody_pending (code, alert_leaf, event_leaf, opened_ms)",
                        &pending,
                        KEEP,
                        |mut r, (c, a, e)| {
                            r.push_bind(c.to_string()).push_bind(*a).push_bind(*e).push_bind(now_ms);
                        },
                    )
                    .await?;
                    // Follow-ups of pending alerts: (pending alert leaf, this row's leaf).
                    for (table, of) in [
                        ("custody_escalated", (|r: &CustodyRows| r.escalates) as fn(&CustodyRows) -> Option<u64>),
                        ("custody_resolved", |r: &CustodyRows| r.resolves),
                    ] {
                        let pairs: Vec<(i64, i64)> =
                            rows.iter().filter_map(|(l, row)| of(row).map(|a| (a as i64, *l))).collect();
                        let into = format!("{table} (alert_leaf, by_leaf)");
                        insert_values(self, &into, &pairs, KEEP, |mut r, (a, by)| {
                            r.push_bind(*a).push_bind(*by);
                        })
                        .await?;
                    }
                    Ok(())
                }

                async fn mark_custody(&mut self, through: i64) -> Result<(), String> {
                    insert_values(self, "custody_marks (through_leaf)", &[through], KEEP, |mut r, t| {
                        r.push_bind(*t);
                    })
                    .await
                }

                async fn has_table(&mut self, name: &str) -> Result<bool, String> {
                    Ok(sqlx::query(<$db as Dialect>::TABLE_EXISTS)
                        .bind(name.to_string())
                        .fetch_optional(&mut *self)
                        .await
                        .map_err(|e| format!("looking for table {name}: {e}"))?
                        .is_some())
                }

                async fn events(&mut self, which: Events<'_>) -> Result<Vec<ProjectedEvent>, String> {
                    let rows = fetch(self, which.query(), "proj_events").await?;
                    rows.iter()
                        .map(|r| {
                            Ok(ProjectedEvent {
                                leaf_index: get_u64(r, "leaf_index")?,
                                event_id: get(r, "event_id")?,
                                tx_id: get(r, "tx_id")?,
                                height: get_u64(r, "height")?,
                                category: get(r, "category")?,
                                occurred_ms: get(r, "occurred_ms")?,
                                source: get(r, "source")?,
                                signer: get(r, "signer")?,
                                lot: get(r, "lot")?,
                                cancels: get(r, "cancels")?,
                                doc: serde_json::from_str(&get::<String>(r, "doc")?)
                                    .map_err(|e| format!("proj_events.doc: {e}"))?,
                            })
                        })
                        .collect()
                }

                async fn max_leaf(&mut self) -> Result<Option<u64>, String> {
                    let rows = fetch(self, QueryBuilder::new("SELECT MAX(leaf_index) AS m FROM proj_events"), "proj_events").await?;
                    Ok(rows.first().map(|r| get::<Option<i64>>(r, "m")).transpose()?.flatten().map(|m| m as u64))
                }

                async fn custody_mark(&mut self) -> Result<Option<u64>, String> {
                    let qb = QueryBuilder::new("SELECT MAX(through_leaf) AS m FROM custody_marks");
                    let rows = fetch(self, qb, "custody_marks").await?;
                    Ok(rows.first().map(|r| get::<Option<i64>>(r, "m")).transpose()?.flatten().map(|m| m as u64))
                }

                async fn custody_histories(&mut self, codes: &[String]) -> Result<Vec<(String, Vec<u8>)>, String> {
                    let head = "SELECT code, facts FROM custody_codes WHERE code IN (";
                    let rows = rows_in(self, "custody_codes", head, codes, ")").await?;
                    rows.iter().map(|r| Ok((get(r, "code")?, get(r, "facts")?))).collect()
                }

                async fn fields_of(&mut self, leaves: &[u64]) -> Result<HashMap<u64, Vec<u8>>, String> {
                    let leaves: Vec<i64> = leaves.iter().map(|l| *l as i64).collect();
                    let head = "SELECT leaf_index, fields FROM proj_fields WHERE leaf_index IN (";
                    let rows = rows_in(self, "proj_fields", head, &leaves, ")").await?;
                    rows.iter().map(|r| Ok((get_u64(r, "leaf_index")?, get(r, "fields")?))).collect()
                }

                async fn custody_lots(&mut self, lots: &[String], which: LotRows) -> Result<Vec<mappings::custody::LotFact>, String> {
                    const COLUMNS: &str = "SELECT lot, leaf_index, kind, occurred_ms, day1, day2, ok, event_id FROM custody_lots";
                    let rows = match which {
                        LotRows::NotProduction => {
                            let head = format!("{COLUMNS} WHERE kind <> 1 AND lot IN (");
                            rows_in(self, "custody_lots", &head, lots, ")").await?
                        }
                        LotRows::Deciding => {
                            // Per lot, the fold of mappings::custody::Book::lot
                            // needs: the latest facts stating a production
                            // date and an expiry date, the latest release,
                            // the earliest recall (custody_lots_kind finds
                            // each without reading the others).
                            const PICKS: [&str; 4] = [
                                "kind = 1 AND day1 IS NOT NULL ORDER BY leaf_index DESC",
                                "kind = 1 AND day2 IS NOT NULL ORDER BY leaf_index DESC",
                                "kind = 2 ORDER BY leaf_index DESC",
                                "kind = 3 ORDER BY occurred_ms, leaf_index",
                            ];
                            // 64 lots a statement: 256 compound members,
                            // under SQLite's default limit of 500
                            // (SQLITE_MAX_COMPOUND_SELECT).
                            let mut out = Vec::new();
                            for chunk in lots.chunks(64) {
                                let mut qb = QueryBuilder::<$db>::new("");
                                for (k, lot) in chunk.iter().enumerate() {
                                    for (j, pick) in PICKS.iter().enumerate() {
                                        if k + j > 0 {
                                            qb.push(" UNION ALL ");
                                        }
                                        qb.push(format!("SELECT * FROM ({COLUMNS} WHERE lot = "));
                                        qb.push_bind(lot.clone());
                                        qb.push(format!(" AND {pick} LIMIT 1) AS p{k}_{j}"));
                                    }
                                }
                                out.extend(fetch(self, qb, "custody_lots").await?);
                            }
                            out
                        }
                    };
                    let day = |s: Option<String>| s.and_then(|s| chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok());
                    rows.iter()
                        .map(|r| {
                            let kind: i16 = get(r, "kind")?;
                            Ok(mappings::custody::LotFact {
                                lot: get(r, "lot")?,
                                seq: get_u64(r, "leaf_index")?,
                                event_id: uuid::Uuid::parse_str(&get::<String>(r, "event_id")?)
                                    .map_err(|e| format!("custody_lots: {e}"))?,
                                at_ms: get(r, "occurred_ms")?,
                                kind: mappings::custody::LotMove::from_i16(kind)
                                    .ok_or_else(|| format!("custody_lots: unknown kind {kind}"))?,
                                day: day(get(r, "day1")?),
                                day2: day(get(r, "day2")?),
                                ok: get::<i16>(r, "ok")? != 0,
                            })
                        })
                        .collect()
                }

                async fn readings_of(&mut self, device: &str, from_ms: i64, to_ms: i64) -> Result<Vec<u64>, String> {
                    let mut qb = QueryBuilder::<$db>::new("SELECT leaf_index FROM proj_readings WHERE device = ");
                    qb.push_bind(device.to_string());
                    qb.push(" AND start_ms <= ").push_bind(to_ms);
                    qb.push(" AND end_ms >= ").push_bind(from_ms);
                    let rows = fetch(self, qb, "proj_readings").await?;
                    rows.iter().map(|r| get_u64(r, "leaf_index")).collect()
                }

                async fn parents_of(&mut self, codes: &[String]) -> Result<Vec<(String, String)>, String> {
                    let head = "SELECT DISTINCT parent, child FROM proj_links WHERE child IN (";
                    let rows = rows_in(self, "proj_links", head, codes, ")").await?;
                    rows.iter().map(|r| Ok((get(r, "parent")?, get(r, "child")?))).collect()
                }

                async fn linked(&mut self, want: &str, have: &str, codes: &[String]) -> Result<Vec<String>, String> {
                    let head = format!("SELECT DISTINCT {want} AS c FROM proj_links WHERE {have} IN (");
                    let rows = rows_in(self, "proj_links", &head, codes, ")").await?;
                    rows.iter().map(|r| get(r, "c")).collect()
                }

                async fn pending_due(&mut self, before_ms: i64, limit: i64) -> Result<Vec<(String, u64, u64)>, String> {
                    let mut qb = QueryBuilder::<$db>::new(
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
                    pending_rows(&fetch(self, qb, "custody_pending").await?)
                }

                async fn codes_left_with(&mut self, holder: &str) -> Result<Vec<String>, String> {
                    let mut qb = QueryBuilder::<$db>::new("SELECT code FROM custody_holders WHERE holder = ");
                    qb.push_bind(holder.to_string());
                    let rows = fetch(self, qb, "custody_holders").await?;
                    rows.iter().map(|r| get(r, "code")).collect()
                }

                async fn open_pending(&mut self, codes: &[String]) -> Result<Vec<(String, u64, u64)>, String> {
                    let head = "SELECT DISTINCT p.alert_leaf AS a FROM custody_pending p WHERE p.code IN (";
                    let unresolved = ") AND NOT EXISTS (SELECT 1 FROM custody_resolved r WHERE r.alert_leaf = p.alert_leaf)";
                    let rows = rows_in(self, "custody_pending", head, codes, unresolved).await?;
                    let mut alerts: Vec<i64> = rows.iter().map(|r| get(r, "a")).collect::<Result<_, _>>()?;
                    alerts.sort_unstable();
                    alerts.dedup();
                    let head = "SELECT code, alert_leaf, event_leaf FROM custody_pending WHERE alert_leaf IN (";
                    pending_rows(&rows_in(self, "custody_pending", head, &alerts, ")").await?)
                }
            }
        };
    };
}

ledger::each_backend!(projection_sql);

/// The projection, on the ledger's own database: queries through the
/// ledger's readers, writes through its committing connection (see
/// [`Tables`]).
#[derive(Debug, Clone)]
pub struct Projection {
    store: AnyStore,
}

/// `$e` with `$c` a connection from the ledger's readers (`&mut` the
/// backend's connection).
macro_rules! read {
    ($self:ident, $c:ident => $e:expr) => {{
        let mut reader = $self.store.reader().await.map_err(|e| e.to_string())?;
        on_backend!(&mut reader, $c => $e).map_err(ProjectionError::from)
    }};
}

/// `$e` with `$c` the connection of a [`ledger::SideTx`] of `$store`
/// (`&mut` the backend's connection), committed when `$e` is `Ok`.
macro_rules! in_side_tx {
    ($store:expr, $c:ident => $e:expr) => {{
        let mut tx = $store.side_tx().await.map_err(|e| e.to_string())?;
        let out = on_backend!(tx.conn(), $c => $e)?;
        tx.commit().await.map_err(|e| e.to_string())?;
        out
    }};
}

impl Projection {
    /// Creates the tables in the ledger's database if needed.
    pub async fn open(store: &AnyStore) -> Result<Self, ProjectionError> {
        in_side_tx!(store, c => c.init().await);
        Ok(Projection { store: store.clone() })
    }

    /// The projection of a ledger database as it is, without creating or
    /// changing anything (`None` when it has no projection tables, e.g. a
    /// ledger written by `vaxgate bench ledger`).
    pub async fn attach(store: &AnyStore) -> Result<Option<Self>, ProjectionError> {
        let p = Projection { store: store.clone() };
        let events = read!(p, c => c.has_table("proj_events").await)?;
        let fields = read!(p, c => c.has_table("proj_fields").await)?;
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
    ) -> Result<ProjectionCheck, ProjectionError> {
        const PAGE: u64 = 2000;
        let mut out = ProjectionCheck::default();
        // Each page is checked on the blocking pool, on every core, while
        // the next one is read (and its documents parsed) here.
        let mut page = self.check_page(store, 0, PAGE.min(size)).await?;
        let mut from = 0;
        while from < size {
            let to = (from + PAGE).min(size);
            let next_to = (to + PAGE).min(size);
            let checking = tokio::task::spawn_blocking(move || page.check());
            let (checked, next) = tokio::join!(checking, async {
                if to < size {
                    self.check_page(store, to, next_to).await.map(Some)
                } else {
                    Ok(None)
                }
            });
            let checked = checked.map_err(|e| ProjectionError::from(format!("checking leaves {from}..{to}: {e}")))?;
            out.rows += checked.rows;
            out.committed += checked.committed;
            out.differences.extend(checked.differences);
            from = to;
            progress(from, size);
            match next? {
                Some(p) => page = p,
                None => break,
            }
        }
        out.differences.sort();
        Ok(out)
    }

    /// What [`Projection::check_against`] checks of leaves `from..to`:
    /// their transactions, projected events and field commitments.
    async fn check_page(&self, store: &AnyStore, from: u64, to: u64) -> Result<CheckPage, ProjectionError> {
        let txs: HashMap<u64, StoredTx> = store
            .txs(from, to)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|t| (t.leaf_index, t))
            .collect();
        let rows = read!(self, c => c.events(Events::Between(from, to)).await)?;
        let leaves: Vec<u64> = rows.iter().map(|e| e.leaf_index).collect();
        let fields = self.fields_of(&leaves).await?;
        Ok(CheckPage { txs, rows, fields })
    }

    /// Writes projected events (idempotent).
    pub async fn insert(&self, events: Vec<(StoredTx, OpenedEvent)>) -> Result<(), ProjectionError> {
        if events.is_empty() {
            return Ok(());
        }
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
        in_side_tx!(self.store, c => c.insert_rows(&rows, None).await);
        Ok(())
    }

    /// Derives the custody facts of projected events from leaf `from` on,
    /// which were projected without them (a ledger written before custody
    /// existed, or events projected at start by [`Projection::catch_up`]),
    /// and marks how far it got: a cancellation frees its target's codes,
    /// and a receipt that a `receipt_refused` cold-chain alert names is a
    /// refused receipt, as at ingest. Open `provenance_pending` alerts are
    /// not derived again (a later record does not resolve them). `party`
    /// turns a party code into the registered entity id. Returns how many
    /// events it read.
    pub async fn derive_custody(&self, from: u64, party: &dyn Fn(&str) -> String) -> Result<u64, ProjectionError> {
        let mut from = from;
        let mut done = 0;
        loop {
            let page = read!(self, c => c.events(Events::From(from, 1000)).await)?;
            let Some(last) = page.last().map(|e| e.leaf_index) else {
                break;
            };
            // Receipts the cold-chain rules refused: their alerts are
            // projected already (the catch-up ran first), whichever page
            // they are on.
            let receipts: Vec<String> = page
                .iter()
                .filter(|e| e.category == "inbound_receipt")
                .map(|e| e.event_id.clone())
                .collect();
            let refused: std::collections::HashSet<String> = self
                .cancellations_of(&receipts)
                .await?
                .into_iter()
                .filter(|a| {
                    a.category == mappings::custody::COLD_CHAIN_ALERT
                        && a.doc["fields"]["alert_type"] == mappings::custody::RECEIPT_REFUSED
                })
                .filter_map(|a| a.cancels)
                .collect();
            let mut rows = Vec::new();
            for e in &page {
                let Ok(ev) = serde_json::from_value::<TraceEvent>(e.doc.clone()) else {
                    continue;
                };
                let mut c = mappings::custody::facts_of(&ev, e.leaf_index, party);
                if refused.contains(&e.event_id) {
                    for f in &mut c.facts {
                        if f.kind == mappings::custody::Move::Receive {
                            f.kind = mappings::custody::Move::ReceiveRefused;
                        }
                    }
                }
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
            let refs: Vec<(i64, &CustodyRows)> = rows.iter().map(|(l, r)| (*l, r)).collect();
            in_side_tx!(self.store, c => {
                c.insert_custody(&refs, 0).await?;
                c.mark_custody(last as i64).await
            });
            from = last + 1;
        }
        Ok(done)
    }

    /// Where custody derivation must start at start-up: 0 for a ledger
    /// that never had it, else after the last mark (`None`: nothing to do
    /// unless events were projected at start).
    pub async fn custody_from(&self) -> Result<Option<u64>, ProjectionError> {
        Ok(read!(self, c => c.custody_mark().await)?.map(|m| m + 1))
    }

    /// Projects every event of the ledger not yet projected (at start).
    pub async fn catch_up(
        &self,
        store: &AnyStore,
        provider: &dyn CryptoProvider,
        node: &KeyHandle,
    ) -> Result<u64, ProjectionError> {
        let mut from = read!(self, c => c.max_leaf().await)?.map(|m| m + 1).unwrap_or(0);
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
    pub async fn packaging(&self, code: &str, up: bool, max: usize) -> Result<Vec<String>, ProjectionError> {
        let mut all: Vec<String> = Vec::new();
        let mut frontier = vec![code.to_string()];
        while !frontier.is_empty() && all.len() < max {
            let (want, have) = if up { ("parent", "child") } else { ("child", "parent") };
            let next = read!(self, c => c.linked(want, have, &frontier).await)?;
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
    pub async fn lot_event_leaves(&self, lot: &str) -> Result<Vec<u64>, ProjectionError> {
        let facts = read!(self, c => c.custody_lots(&[lot.to_string()], LotRows::NotProduction).await)?;
        let mut leaves: Vec<u64> = facts.into_iter().map(|f| f.seq).collect();
        leaves.sort_unstable();
        leaves.dedup();
        Ok(leaves)
    }

    /// Events touching any of `codes`, oldest first.
    pub async fn events_for_codes(&self, codes: &[String]) -> Result<Vec<ProjectedEvent>, ProjectionError> {
        self.events_of_codes(codes, None).await
    }

    /// Events of one `category` touching any of `codes`, oldest first (a
    /// receipt's candidate shipments: not every event its codes went
    /// through, vaccinations included).
    pub async fn events_for_codes_in(
        &self,
        codes: &[String],
        category: &str,
    ) -> Result<Vec<ProjectedEvent>, ProjectionError> {
        self.events_of_codes(codes, Some(category)).await
    }

    async fn events_of_codes(
        &self,
        codes: &[String],
        category: Option<&str>,
    ) -> Result<Vec<ProjectedEvent>, ProjectionError> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, c => c.events(Events::Codes(codes, category)).await)
    }

    /// Events of a lot, oldest first.
    pub async fn events_for_lot(&self, lot: &str) -> Result<Vec<ProjectedEvent>, ProjectionError> {
        read!(self, c => c.events(Events::Lot(lot)).await)
    }

    /// Events naming shipment `no` (the shipment record, its reading sets,
    /// receipts and alerts), oldest first.
    pub async fn events_for_shipment(&self, no: &str) -> Result<Vec<ProjectedEvent>, ProjectionError> {
        read!(self, c => c.events(Events::Shipment(no)).await)
    }

    /// An event by id.
    pub async fn event(&self, event_id: &str) -> Result<Option<ProjectedEvent>, ProjectionError> {
        Ok(read!(self, c => c.events(Events::Id(event_id)).await)?
            .into_iter()
            .next())
    }

    /// Every custody fact of these codes (any order).
    pub async fn custody_facts(&self, codes: &[String]) -> Result<Vec<mappings::custody::Fact>, ProjectionError> {
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
    pub async fn custody_histories(&self, codes: &[String]) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, c => c.custody_histories(codes).await)
    }

    /// The stored field-commitment rows ([`fields_blob`]) of events, by
    /// leaf; events written before field commitments have none.
    pub async fn fields_of(&self, leaves: &[u64]) -> Result<HashMap<u64, Vec<u8>>, ProjectionError> {
        if leaves.is_empty() {
            return Ok(HashMap::new());
        }
        read!(self, c => c.fields_of(leaves).await)
    }

    /// The custody facts of these lots that decide their state (at most
    /// four per lot: [`LotRows::Deciding`]).
    pub async fn deciding_lot_facts(
        &self,
        lots: &[String],
    ) -> Result<Vec<mappings::custody::LotFact>, ProjectionError> {
        read!(self, c => c.custody_lots(lots, LotRows::Deciding).await)
    }

    /// Pending alerts opened before `before_ms` that nothing resolved or
    /// escalated yet: (code, alert leaf, event leaf) of at most `limit` alerts.
    pub async fn pending_due(&self, before_ms: i64, limit: i64) -> Result<Vec<(String, u64, u64)>, ProjectionError> {
        read!(self, c => c.pending_due(before_ms, limit).await)
    }

    /// Leaves of the reading sets of logger `device` whose period overlaps
    /// `[from_ms, to_ms]` (a shipment's temperature history).
    pub async fn readings_of(&self, device: &str, from_ms: i64, to_ms: i64) -> Result<Vec<u64>, ProjectionError> {
        read!(self, c => c.readings_of(device, from_ms, to_ms).await)
    }

    /// The packaging links whose child is one of `codes`: (parent, child).
    pub async fn parents_of(&self, codes: &[String]) -> Result<Vec<(String, String)>, ProjectionError> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, c => c.parents_of(codes).await)
    }

    /// The custody facts of `codes`, with the transports of the packages
    /// they are in inherited ([`mappings::custody::Book::add_inherited`]),
    /// as a book.
    pub async fn custody_book(&self, codes: &[String]) -> Result<mappings::custody::Book, ProjectionError> {
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
    pub async fn parents_among(&self, codes: &[String]) -> Result<Vec<String>, ProjectionError> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, c => c.linked("parent", "parent", codes).await)
    }

    /// Every code some custody fact left with `holder` (an entity id): the
    /// candidates of its stock.
    pub async fn codes_left_with(&self, holder: &str) -> Result<Vec<String>, ProjectionError> {
        read!(self, c => c.codes_left_with(holder).await)
    }

    /// Open pending alerts touching `codes`: (code, alert leaf, event leaf)
    /// for every code each of them waits on.
    pub async fn open_pending(&self, codes: &[String]) -> Result<Vec<(String, u64, u64)>, ProjectionError> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, c => c.open_pending(codes).await)
    }

    /// Events by leaf index (any order).
    pub async fn events_at(&self, leaves: &[u64]) -> Result<Vec<ProjectedEvent>, ProjectionError> {
        if leaves.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, c => c.events(Events::At(leaves)).await)
    }

    /// Cancellations of these events.
    pub async fn cancellations_of(&self, event_ids: &[String]) -> Result<Vec<ProjectedEvent>, ProjectionError> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, c => c.events(Events::Cancelling(event_ids)).await)
    }
}

/// A failure reading or writing the projection's tables; the message names
/// the table or column. Handlers answer it as a 500 `internal` whose cause
/// goes to the gateway's log ([`ApiError::internal`]).
#[derive(Debug, thiserror::Error)]
#[error("projection: {0}")]
pub struct ProjectionError(String);

impl From<String> for ProjectionError {
    fn from(e: String) -> Self {
        ProjectionError(e)
    }
}

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        ApiError::internal(e)
    }
}
