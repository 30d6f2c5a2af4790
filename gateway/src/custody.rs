//! Custody rules at the gateway (`docs/custody.md`): every record that
//! moves a trace code is judged against every fact the ledger holds about
//! that code and its lot ([`mappings::custody`]), whichever source, run or
//! organisation sent them. Facts are written by the ledger in the block's
//! own database transaction (`projection::CustodyRows`), so they never lag
//! behind it.
//!
//! Batches are judged concurrently with other batches still being appended:
//! a batch's facts are *in flight* from its judgement until its block is
//! durable, and every later judgement sees them ([`Custody::judge`] adds
//! them to the facts it read from the database). A batch that fails to
//! append leaves no facts behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use mappings::custody::{self, Action, Book, EventFacts, Fact, Finding, LotFact, Rule};
use mappings::{ExchangeMessage, Problem, Severity, TraceEvent};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::projection::Projection;
use crate::registry::Registry;

/// The category of node-written custody alerts (not a dataset category:
/// nobody can submit one).
pub const ALERT_CATEGORY: &str = "custody_alert";

/// The alert types of [`ALERT_CATEGORY`].
pub mod alert {
    /// A record kept although it breaks a rule whose action is `flag`.
    pub const VIOLATION: &str = "custody_violation";
    /// A record kept while what should precede it is not in the ledger.
    pub const PENDING: &str = "provenance_pending";
    /// A later record supplied what a pending alert waited for.
    pub const RESOLVED: &str = "provenance_resolved";
    /// A pending alert nothing resolved within the configured time.
    pub const ESCALATED: &str = "provenance_escalated";
}

/// Most trace codes an alert names in its own content (a ledger transaction
/// carries at most 8 KiB); the rest are counted in `codes_total`.
const MAX_ALERT_CODES: usize = 150;
/// Most messages quoted in an alert's reason.
const MAX_ALERT_MESSAGES: usize = 5;

/// The order number of a record that is not in the ledger yet: above every
/// leaf index, ordered by its batch and place.
const IN_FLIGHT: u64 = 1 << 62;

/// The custody rules with their configured actions, and the facts of the
/// batches in flight.
#[derive(Debug)]
pub struct Custody {
    actions: BTreeMap<Rule, Action>,
    inflight: Mutex<Inflight>,
}

#[derive(Debug, Default)]
struct Inflight {
    /// Counts appends that finished (durable).
    epoch: u64,
    next_ticket: u64,
    batches: Vec<InflightBatch>,
    /// Judgements reading the database, by the epoch they started at.
    readers: BTreeMap<u64, usize>,
    /// Recently judged codes as the database holds them (`None`: off).
    cache: Option<hashlink::LruCache<String, Cached>>,
}

/// A code's committed custody history in its stored form
/// (`projection::history`, leaf indexes as `seq`) and the packages it is
/// in. Kept equal to the database: filled only from reads no batch in
/// flight could have outdated, and appended to when a batch's block is
/// durable ([`Ticket::committed`]).
#[derive(Debug)]
struct Cached {
    history: Vec<u8>,
    /// Its packages (`None`: not read; it was looked up as a package).
    parents: Option<Vec<String>>,
}

/// What a judgement knows of its codes, from the cache or the database.
#[derive(Debug, Default)]
struct Known {
    /// Stored histories (a code without one has none).
    history: HashMap<String, Vec<u8>>,
    /// Packages of the codes looked up with theirs.
    parents: HashMap<String, Vec<String>>,
    /// Codes whose history must be read from the database.
    need_history: Vec<String>,
    /// Codes whose packages must be read from the database.
    need_parents: Vec<String>,
}

impl Known {
    fn merge(&mut self, o: Known) {
        self.history.extend(o.history);
        self.parents.extend(o.parents);
        self.need_history.extend(o.need_history);
        self.need_parents.extend(o.need_parents);
    }
}

#[derive(Debug)]
struct InflightBatch {
    ticket: u64,
    facts: Vec<Fact>,
    lots: Vec<LotFact>,
    /// Packaging links its records state: (parent, child, record seq).
    links: Vec<(String, String, u64)>,
    /// Leaves of the pending alerts this batch resolves.
    resolving: Vec<u64>,
    /// The epoch at which its append became durable.
    committed_at: Option<u64>,
}

/// What a batch's records get.
#[derive(Debug, Default)]
pub struct RecordVerdict {
    /// Broken rules whose action is `refuse`: the record is refused.
    pub refused: Vec<Finding>,
    /// Broken rules whose action is `flag`.
    pub flagged: Vec<Finding>,
    /// Broken rules whose action is `pending`.
    pub pending: Vec<Finding>,
    /// Its facts (written with it when it is kept).
    pub facts: EventFacts,
    /// Its order number while in flight (the `seq` of its facts).
    pub seq: u64,
}

/// A pending alert that a record of this batch resolves.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The pending alert's leaf.
    pub alert_leaf: u64,
    /// Its event id.
    pub alert_event_id: String,
    /// The record it was about.
    pub related: TraceEvent,
    /// The codes it waited on.
    pub codes: Vec<String>,
    /// The position in the batch of the record that resolves it.
    pub by: usize,
}

/// The judgement of a batch: one verdict per record, and the pending alerts
/// its records resolve.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Per record, in batch order.
    pub records: Vec<RecordVerdict>,
    /// Pending alerts resolved by records of this batch.
    pub resolutions: Vec<Resolution>,
}

/// A batch's facts in flight; dropped without [`Ticket::committed`] (the
/// append failed or was abandoned), they are forgotten.
#[derive(Debug)]
pub struct Ticket<'a> {
    custody: &'a Custody,
    ticket: u64,
    done: bool,
}

impl Ticket<'_> {
    /// The batch's block is durable: its facts are in the database.
    /// `leaves` maps the order number of each record written (the `seq`
    /// of its facts while in flight) to its leaf index.
    pub fn committed(mut self, leaves: &HashMap<u64, u64>) {
        self.done = true;
        let mut g = self.custody.lock();
        g.epoch += 1;
        let epoch = g.epoch;
        let Inflight { batches, cache, .. } = &mut *g;
        if let Some(b) = batches.iter_mut().find(|b| b.ticket == self.ticket) {
            b.committed_at = Some(epoch);
            // Its lot facts now have their ledger order: a judgement that
            // reads the lot's deciding facts from the database (which may
            // or may not include these) must fold them at the same place.
            for f in &mut b.lots {
                if let Some(leaf) = leaves.get(&f.seq) {
                    f.seq = *leaf;
                }
            }
            if let Some(cache) = cache {
                Inflight::cache_append(cache, b, leaves);
            }
        }
        g.collect();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut g = self.custody.lock();
            g.batches.retain(|b| b.ticket != self.ticket);
        }
    }
}

/// A judgement reading the database: facts committed after it started
/// reading must still come from the in-flight list.
struct Reader<'a> {
    custody: &'a Custody,
    epoch: u64,
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let mut g = self.custody.lock();
        if let Some(n) = g.readers.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                g.readers.remove(&self.epoch);
            }
        }
        g.collect();
    }
}

impl Inflight {
    /// What the cache holds of `codes`; the rest is to be read. With
    /// `parents`, the codes' packages are wanted too.
    fn cache_lookup(&mut self, codes: &[String], parents: bool) -> Known {
        let mut k = Known::default();
        for c in codes {
            match self.cache.as_mut().and_then(|m| m.get(c)) {
                Some(e) => {
                    k.history.insert(c.clone(), e.history.clone());
                    if parents {
                        match &e.parents {
                            Some(p) => {
                                k.parents.insert(c.clone(), p.clone());
                            }
                            None => k.need_parents.push(c.clone()),
                        }
                    }
                }
                None => {
                    k.need_history.push(c.clone());
                    if parents {
                        k.need_parents.push(c.clone());
                    }
                }
            }
        }
        k
    }

    /// Keeps what was read from the database, except for `touched` codes.
    fn cache_store(&mut self, k: &Known, touched: &HashSet<&str>) {
        let Some(cache) = self.cache.as_mut() else { return };
        for c in &k.need_history {
            if touched.contains(c.as_str()) {
                continue;
            }
            let history = k.history.get(c).cloned().unwrap_or_default();
            cache.insert(
                c.clone(),
                Cached {
                    history,
                    parents: k.parents.get(c).cloned(),
                },
            );
        }
        for c in &k.need_parents {
            if touched.contains(c.as_str()) {
                continue;
            }
            if let Some(e) = cache.get_mut(c) {
                e.parents = k.parents.get(c).cloned();
            }
        }
    }

    /// Appends a durable batch's facts and links to the cached codes they
    /// concern; a code whose record's leaf is unknown is dropped instead.
    fn cache_append(cache: &mut hashlink::LruCache<String, Cached>, b: &InflightBatch, leaves: &HashMap<u64, u64>) {
        for f in &b.facts {
            let Some(e) = cache.get_mut(&f.code) else { continue };
            let ok = leaves
                .get(&f.seq)
                .is_some_and(|leaf| crate::projection::history::encode_into(&mut e.history, *leaf, f).is_ok());
            if !ok {
                cache.remove(&f.code);
            }
        }
        for (p, c, seq) in &b.links {
            let Some(e) = cache.get_mut(c) else { continue };
            if !leaves.contains_key(seq) {
                cache.remove(c);
            } else if let Some(ps) = &mut e.parents
                && !ps.contains(p)
            {
                ps.push(p.clone());
            }
        }
    }

    /// Forgets committed batches that every running judgement reads from
    /// the database.
    fn collect(&mut self) {
        let oldest = self.readers.keys().next().copied().unwrap_or(self.epoch);
        self.batches.retain(|b| b.committed_at.is_none_or(|c| c > oldest));
    }
}

/// The lot facts of batch `b` about `lots` that a judgement adds to what it
/// read from the database. None when the database gave one of the batch's
/// facts (`stored_events`): then the batch is durable and was read with the
/// rest, and since the database gives only each lot's deciding facts, the
/// batch's others must not come back in under their in-flight order, which
/// sorts after every leaf (an earlier bill of the batch would pass for the
/// latest). A durable batch none of whose facts the database gave decides
/// nothing there, and adding its facts changes nothing either.
fn inflight_lot_facts<'b>(
    b: &'b InflightBatch,
    lots: &'b HashSet<&str>,
    stored_events: &HashSet<uuid::Uuid>,
) -> impl Iterator<Item = LotFact> + 'b {
    let durable = b.lots.iter().any(|f| stored_events.contains(&f.event_id));
    b.lots
        .iter()
        .filter(move |f| !durable && lots.contains(f.lot.as_str()))
        .cloned()
}

impl Custody {
    /// The rules with these actions (from `[custody]`, validated).
    /// `cache_codes`: how many codes' histories to keep in memory (0: none).
    pub fn new(actions: BTreeMap<Rule, Action>, cache_codes: usize) -> Custody {
        Custody {
            actions,
            inflight: Mutex::new(Inflight {
                cache: (cache_codes > 0).then(|| hashlink::LruCache::new(cache_codes)),
                ..Inflight::default()
            }),
        }
    }

    /// The action configured for `rule`.
    pub fn action(&self, rule: Rule) -> Action {
        self.actions.get(&rule).copied().unwrap_or(rule.default_action())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        // The list holds no invariant a panic could break half-way.
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin_read(&self) -> Reader<'_> {
        let mut g = self.lock();
        let epoch = g.epoch;
        *g.readers.entry(epoch).or_insert(0) += 1;
        Reader { custody: self, epoch }
    }

    /// Judges a batch's records (`msgs`, in batch order) against the
    /// ledger and the batches in flight. `refused_receipts` are the
    /// positions of inbound receipts the cold-chain rules refused (their
    /// codes stay with the receiver, outside its stock). The facts of every
    /// record not refused are in flight until the returned ticket is
    /// committed or dropped.
    pub async fn judge<'a>(
        &'a self,
        projection: &Projection,
        registry: &std::sync::RwLock<Registry>,
        msgs: &[ExchangeMessage],
        refused_receipts: &HashSet<usize>,
    ) -> Result<(Verdict, Ticket<'a>), ApiError> {
        let ticket_no = {
            let mut g = self.lock();
            g.next_ticket += 1;
            g.next_ticket
        };
        let base = IN_FLIGHT + ticket_no * 1_000_000;
        let mut per_record = facts_of_batch(registry, msgs, refused_receipts, base)?;
        cancelled_facts(projection, msgs, &mut per_record, base).await?;
        let reader = self.begin_read();
        let read = self.read_known(projection, msgs, &per_record).await?;
        let (records, resolving, ticket) = {
            let mut g = self.lock();
            self.judge_in_flight(&mut g, reader.epoch, ticket_no, base, msgs, per_record, read)
        };
        drop(reader);
        let ticket = Ticket {
            custody: self,
            ticket,
            done: false,
        };
        let resolutions = resolutions_of(projection, resolving).await?;
        Ok((Verdict { records, resolutions }, ticket))
    }

    /// The codes' histories and packages (from memory where the cache has
    /// them, else from the database), the pending alerts on them, and their
    /// lots' facts: everything of the ledger the batch is judged against.
    async fn read_known(
        &self,
        projection: &Projection,
        msgs: &[ExchangeMessage],
        per_record: &[EventFacts],
    ) -> Result<Reading, ApiError> {
        let mut codes: Vec<String> = per_record
            .iter()
            .flat_map(|f| f.facts.iter().map(|x| x.code.clone()))
            .collect();
        codes.sort_unstable();
        codes.dedup();
        let mut lots: Vec<String> = per_record.iter().filter_map(|f| f.lot.clone()).collect();
        lots.sort_unstable();
        lots.dedup();
        let mut known = self.lock().cache_lookup(&codes, true);
        for (p, c) in projection.parents_of(&known.need_parents).await? {
            known.parents.entry(c).or_default().push(p);
        }
        for c in &known.need_parents {
            known.parents.entry(c.clone()).or_default();
        }
        // Packaging links: a carton's transports are its contents' too
        // (from the ledger, and from this batch's own shipments).
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for (c, ps) in &known.parents {
            for p in ps {
                children.entry(p.clone()).or_default().push(c.clone());
            }
        }
        for a in msgs.iter().flat_map(|m| &m.payload.aggregations) {
            for c in &a.children {
                children.entry(a.parent.clone()).or_default().push(c.clone());
            }
        }
        let pending = projection.open_pending(&codes).await?;
        let extra: Vec<String> = {
            let have: HashSet<&str> = codes.iter().map(String::as_str).collect();
            let mut e: Vec<String> = pending
                .iter()
                .map(|p| p.0.clone())
                .chain(children.keys().cloned())
                .filter(|c| !have.contains(c.as_str()))
                .collect();
            e.sort_unstable();
            e.dedup();
            e
        };
        let known_extra = self.lock().cache_lookup(&extra, false);
        known.merge(known_extra);
        for (c, h) in projection.custody_histories(&known.need_history).await? {
            known.history.insert(c, h);
        }
        crate::metrics::METRICS
            .custody_cache
            .with_label_values(&["miss"])
            .inc_by(known.need_history.len() as u64);
        crate::metrics::METRICS
            .custody_cache
            .with_label_values(&["hit"])
            .inc_by((codes.len() + extra.len()).saturating_sub(known.need_history.len()) as u64);
        // The book of what the database holds, built here, outside the
        // lock that judgements in flight share, one code at a time.
        let mut book = Book::new();
        for (c, h) in &known.history {
            let facts = crate::projection::history::decode(c, h).map_err(ApiError::internal)?;
            book.add_inherited(&children, facts);
        }
        let stored_lots = projection.deciding_lot_facts(&lots).await?;
        // The events whose lot facts the database gave: a batch in flight
        // with one of them is already durable (a batch is appended whole).
        let stored_lot_events: HashSet<uuid::Uuid> = stored_lots.iter().map(|f| f.event_id).collect();
        book.add_lots(stored_lots);
        Ok(Reading {
            codes,
            lots,
            extra,
            children,
            pending,
            known,
            book,
            stored_lot_events,
        })
    }

    /// Under the lock: the book of every fact (stored, in flight, and this
    /// batch's records one after the other), each record's verdict, the
    /// pending alerts it resolves, and this batch's facts put in flight.
    #[allow(clippy::too_many_arguments)] // the judgement's parts, each used once
    fn judge_in_flight(
        &self,
        g: &mut Inflight,
        read_epoch: u64,
        ticket_no: u64,
        base: u64,
        msgs: &[ExchangeMessage],
        per_record: Vec<EventFacts>,
        mut read: Reading,
    ) -> (Vec<RecordVerdict>, Vec<Resolving>, u64) {
        let mut book = std::mem::take(&mut read.book);
        let stored_lot_events = std::mem::take(&mut read.stored_lot_events);
        // Facts of batches in flight (or committed since the read began)
        // about this batch's codes and lots only.
        let mine: HashSet<&str> = read.codes.iter().chain(&read.extra).map(String::as_str).collect();
        let my_lots: HashSet<&str> = read.lots.iter().map(String::as_str).collect();
        let mut busy: HashSet<u64> = HashSet::new();
        // Codes of this judgement that a batch in flight, or committed
        // since the read began, moved or packed: what the database said of
        // them may be stale by now, so it is not cached. (Only this
        // judgement's codes are cached, so only they are looked for; the
        // set borrows their names from `read`, not from the batches.)
        let mut touched: HashSet<&str> = HashSet::new();
        for b in &g.batches {
            if b.committed_at.is_none_or(|c| c > read_epoch) {
                book.add_inherited(
                    &read.children,
                    b.facts.iter().filter(|f| mine.contains(f.code.as_str())).cloned(),
                );
                book.add_lots(inflight_lot_facts(b, &my_lots, &stored_lot_events));
                busy.extend(b.resolving.iter().copied());
                let codes = b.facts.iter().map(|f| f.code.as_str());
                touched.extend(
                    codes
                        .chain(b.links.iter().map(|l| l.1.as_str()))
                        .filter_map(|c| mine.get(c).copied()),
                );
            }
        }
        g.cache_store(&read.known, &touched);
        let mut records = Vec::with_capacity(per_record.len());
        let mut kept_facts = Vec::new();
        let mut kept_lots = Vec::new();
        for (i, f) in per_record.into_iter().enumerate() {
            let mut v = RecordVerdict {
                seq: base + i as u64,
                ..RecordVerdict::default()
            };
            for finding in custody::judge(&f, &book) {
                match finding.action(self.action(finding.rule)) {
                    Action::Refuse => v.refused.push(finding),
                    Action::Flag => v.flagged.push(finding),
                    Action::Pending => v.pending.push(finding),
                }
            }
            if v.refused.is_empty() {
                book.add_inherited(&read.children, f.facts.iter().cloned());
                book.add_lots(f.lot_facts.iter().cloned());
                kept_facts.extend(f.facts.iter().cloned());
                kept_lots.extend(f.lot_facts.iter().cloned());
            }
            v.facts = f;
            records.push(v);
        }
        let resolving = self.resolving(&book, &records, &read.pending, &busy);
        let kept_links: Vec<(String, String, u64)> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.refused.is_empty())
            .flat_map(|(i, _)| {
                msgs[i].payload.aggregations.iter().flat_map(move |a| {
                    a.children
                        .iter()
                        .map(move |c| (a.parent.clone(), c.clone(), base + i as u64))
                })
            })
            .collect();
        let ticket = g.next_ticket_batch(ticket_no, kept_facts, kept_lots, kept_links, &resolving);
        (records, resolving, ticket)
    }

    /// Pending alerts whose missing records are now all there: (alert leaf,
    /// the pending record's leaf, the codes it waited on, the position of
    /// the record of this batch that resolves it). An alert another batch
    /// in flight resolves (`busy`) is left to it.
    fn resolving(
        &self,
        book: &Book,
        records: &[RecordVerdict],
        pending: &[(String, u64, u64)],
        busy: &HashSet<u64>,
    ) -> Vec<Resolving> {
        let mut by_alert: BTreeMap<u64, (u64, Vec<String>)> = BTreeMap::new();
        for (code, alert, event) in pending {
            by_alert
                .entry(*alert)
                .or_insert((*event, Vec::new()))
                .1
                .push(code.clone());
        }
        let mut resolving: Vec<Resolving> = Vec::new();
        for (alert, (event_leaf, waits)) in by_alert {
            if busy.contains(&alert) {
                continue;
            }
            let Some(by) = records
                .iter()
                .position(|r| r.refused.is_empty() && r.facts.facts.iter().any(|f| waits.contains(&f.code)))
            else {
                continue;
            };
            let facts: Vec<Fact> = waits
                .iter()
                .flat_map(|c| book.history(c))
                .filter(|f| f.seq == event_leaf)
                .cloned()
                .collect();
            if facts.is_empty() {
                continue; // the pending record was cancelled since
            }
            let again = EventFacts {
                facts,
                ..EventFacts::default()
            };
            let still = custody::judge(&again, book)
                .into_iter()
                .any(|f| self.action(f.rule) == Action::Pending);
            if !still {
                resolving.push((alert, event_leaf, waits, by));
            }
        }
        resolving
    }
}

/// A pending alert a record of the batch resolves: (alert leaf, the
/// pending record's leaf, the codes it waited on, the resolving record's
/// position in the batch).
type Resolving = (u64, u64, Vec<String>, usize);

/// What [`Custody::read_known`] found for a batch.
struct Reading {
    /// The codes the batch's records move, sorted.
    codes: Vec<String>,
    /// Their lots, sorted.
    lots: Vec<String>,
    /// Codes of pending alerts and of packages' contents not among `codes`.
    extra: Vec<String>,
    /// Package → contents, from the ledger and this batch.
    children: HashMap<String, Vec<String>>,
    /// Open pending alerts on the codes: (code, alert leaf, event leaf).
    pending: Vec<(String, u64, u64)>,
    known: Known,
    /// The stored facts of `codes` and `extra` (packages' transports
    /// inherited by their contents) and the deciding facts of `lots`.
    book: Book,
    /// The events of the lot facts in `book`.
    stored_lot_events: HashSet<uuid::Uuid>,
}

/// Each record's custody facts, with party codes resolved to entity ids
/// (once per code and batch) and the receipts the cold-chain rules refused
/// marked so.
fn facts_of_batch(
    registry: &std::sync::RwLock<Registry>,
    msgs: &[ExchangeMessage],
    refused_receipts: &HashSet<usize>,
    base: u64,
) -> Result<Vec<EventFacts>, ApiError> {
    let reg = crate::registry::read(registry)?;
    let cache: std::cell::RefCell<HashMap<String, String>> = Default::default();
    let resolve = |code: &str| -> String {
        if let Some(v) = cache.borrow().get(code) {
            return v.clone();
        }
        let v = reg
            .entity_of_code(code)
            .map(|e| e.id.clone())
            .unwrap_or_else(|| code.to_string());
        cache.borrow_mut().insert(code.to_string(), v.clone());
        v
    };
    let mut per_record = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let mut f = custody::facts_of(&m.payload, base + i as u64, &resolve);
        if refused_receipts.contains(&i) {
            for fact in &mut f.facts {
                if fact.kind == custody::Move::Receive {
                    fact.kind = custody::Move::ReceiveRefused;
                }
            }
        }
        per_record.push(f);
    }
    Ok(per_record)
}

/// Cancellations: the cancelled event's codes are freed of it.
async fn cancelled_facts(
    projection: &Projection,
    msgs: &[ExchangeMessage],
    per_record: &mut [EventFacts],
    base: u64,
) -> Result<(), ApiError> {
    for (i, m) in msgs.iter().enumerate() {
        if m.payload.category != "cancellation" {
            continue;
        }
        let Some(target) = m.payload.field_str("cancels_event_id") else {
            continue;
        };
        if let Some(ev) = projection.event(target).await? {
            let codes = crate::api::query::codes_in(&ev.doc);
            let target = uuid::Uuid::parse_str(target).map_err(ApiError::internal)?;
            per_record[i].facts = custody::cancel_facts(&m.payload, base + i as u64, &codes, target);
        }
    }
    Ok(())
}

/// The alerts and the records they were about, for the resolutions.
async fn resolutions_of(projection: &Projection, resolving: Vec<Resolving>) -> Result<Vec<Resolution>, ApiError> {
    let mut resolutions = Vec::with_capacity(resolving.len());
    if resolving.is_empty() {
        return Ok(resolutions);
    }
    let leaves: Vec<u64> = resolving.iter().flat_map(|r| [r.0, r.1]).collect();
    let events: HashMap<u64, crate::projection::ProjectedEvent> = projection
        .events_at(&leaves)
        .await?
        .into_iter()
        .map(|e| (e.leaf_index, e))
        .collect();
    for (alert, event_leaf, codes, by) in resolving {
        let (Some(a), Some(e)) = (events.get(&alert), events.get(&event_leaf)) else {
            continue;
        };
        let Ok(related) = serde_json::from_value::<TraceEvent>(e.doc.clone()) else {
            continue;
        };
        resolutions.push(Resolution {
            alert_leaf: alert,
            alert_event_id: a.event_id.clone(),
            related,
            codes,
            by,
        });
    }
    Ok(resolutions)
}

impl Inflight {
    fn next_ticket_batch(
        &mut self,
        ticket: u64,
        facts: Vec<Fact>,
        lots: Vec<LotFact>,
        links: Vec<(String, String, u64)>,
        resolving: &[(u64, u64, Vec<String>, usize)],
    ) -> u64 {
        self.batches.push(InflightBatch {
            ticket,
            facts,
            lots,
            links,
            resolving: resolving.iter().map(|r| r.0).collect(),
            committed_at: None,
        });
        ticket
    }
}

/// The refusal of a record as validation problems (one per broken rule and
/// code), for the ingest answer and the agent's quarantine.
pub fn problems(record_key: &str, findings: &[Finding]) -> Vec<Problem> {
    findings
        .iter()
        .map(|f| Problem {
            record: record_key.to_string(),
            field: "event.trace_codes".into(),
            rule: f.rule.as_str(),
            value: Some(f.code.clone()),
            message: f.message.clone(),
            severity: Severity::Error,
        })
        .collect()
}

/// A one-line summary of findings: the first few messages and how many more.
pub fn summary(findings: &[Finding]) -> String {
    let mut parts: Vec<&str> = findings
        .iter()
        .take(MAX_ALERT_MESSAGES)
        .map(|f| f.message.as_str())
        .collect();
    let more;
    if findings.len() > MAX_ALERT_MESSAGES {
        more = format!("and {} more", findings.len() - MAX_ALERT_MESSAGES);
        parts.push(&more);
    }
    parts.join("; ")
}

/// The distinct rule codes of findings, in rule order.
pub fn rules_of(findings: &[Finding]) -> Vec<&'static str> {
    let mut r: Vec<Rule> = findings.iter().map(|f| f.rule).collect();
    r.sort();
    r.dedup();
    r.into_iter().map(Rule::as_str).collect()
}

/// What a follow-up alert (resolution, escalation) says about a pending one.
#[derive(Debug, Clone, Copy)]
pub struct FollowUp<'a> {
    /// The pending alert's event id.
    pub pending_alert: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The rules the pending alert named.
    pub rules: &'a [&'a str],
}

/// A node-written custody alert about `related`: `alert_type` one of
/// [`alert`], with the findings it names, or, for a resolution or an
/// escalation, the pending alert it follows up and its codes. The id is
/// derived from the related record and the type (for a follow-up, from the
/// pending alert), so the same alert is never written twice.
pub fn alert_event(
    related: &TraceEvent,
    alert_type: &str,
    findings: &[Finding],
    follow_up: Option<FollowUp<'_>>,
    codes: &[String],
    now: DateTime<Utc>,
) -> TraceEvent {
    let resolves = follow_up.map(|f| f.pending_alert);
    let record_key = match resolves {
        Some(a) => format!("{a}/{alert_type}"),
        None => format!("{}/{alert_type}", related.event_id),
    };
    let mut fields = Map::new();
    fields.insert("alert_type".into(), alert_type.into());
    let reason = match follow_up {
        Some(f) => f.reason.to_string(),
        None => summary(findings),
    };
    fields.insert("alert_reason".into(), reason.into());
    if let Some(f) = follow_up.filter(|f| !f.rules.is_empty()) {
        fields.insert("rules".into(), json!(f.rules));
    }
    if !findings.is_empty() {
        fields.insert("rules".into(), json!(rules_of(findings)));
        let mut conflicts: Vec<String> = findings
            .iter()
            .filter_map(|f| f.conflict.map(|c| c.0.to_string()))
            .collect();
        conflicts.sort();
        conflicts.dedup();
        conflicts.truncate(20);
        if !conflicts.is_empty() {
            fields.insert("conflicting_event_ids".into(), json!(conflicts));
        }
    }
    if let Some(a) = resolves {
        fields.insert("pending_alert_id".into(), a.into());
    }
    fields.insert("related_event_id".into(), related.event_id.to_string().into());
    fields.insert("related_category".into(), related.category.clone().into());
    if let Some(v) = related.fields.get("lot_number") {
        fields.insert("lot_number".into(), v.clone());
    }
    let mut all: Vec<String> = if findings.is_empty() {
        codes.to_vec()
    } else {
        findings.iter().map(|f| f.code.clone()).collect()
    };
    all.sort();
    all.dedup();
    if all.len() > MAX_ALERT_CODES {
        fields.insert("codes_total".into(), Value::from(all.len()));
        all.truncate(MAX_ALERT_CODES);
    }
    TraceEvent {
        category: ALERT_CATEGORY.into(),
        event_id: TraceEvent::derive_id(crate::coldchain::NODE_SIGNER, ALERT_CATEGORY, &record_key),
        occurred_at: related.occurred_at,
        recorded_at: now.fixed_offset(),
        source: related.source.clone(),
        device: None,
        record_key,
        bill_type: None,
        trace_codes: all,
        aggregations: Vec::new(),
        from: None,
        to: None,
        fields,
        pii: Default::default(),
    }
}

/// Writes a `provenance_escalated` alert for every pending alert opened
/// more than `after` ago that no later record resolved (at most 500 per
/// call); returns how many it wrote. The pending alerts stay open: a later
/// record can still resolve them.
pub async fn escalate_due(state: &crate::server::AppState, after: std::time::Duration) -> Result<usize, ApiError> {
    let now = Utc::now();
    let before = now.timestamp_millis() - i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    let due = state.projection.pending_due(before, 500).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut by_alert: BTreeMap<u64, (u64, Vec<String>)> = BTreeMap::new();
    for (code, alert, event) in due {
        by_alert.entry(alert).or_insert((event, Vec::new())).1.push(code);
    }
    let leaves: Vec<u64> = by_alert.iter().flat_map(|(a, (e, _))| [*a, *e]).collect();
    let events: HashMap<u64, crate::projection::ProjectedEvent> = state
        .projection
        .events_at(&leaves)
        .await?
        .into_iter()
        .map(|e| (e.leaf_index, e))
        .collect();
    let hours = after.as_secs_f64() / 3600.0;
    let mut contents = Vec::new();
    let mut msgs = Vec::new();
    let mut fields = Vec::new();
    let mut rows = Vec::new();
    for (alert_leaf, (event_leaf, codes)) in &by_alert {
        let (Some(a), Some(e)) = (events.get(alert_leaf), events.get(event_leaf)) else {
            continue;
        };
        let Ok(related) = serde_json::from_value::<TraceEvent>(e.doc.clone()) else {
            continue;
        };
        let rules: Vec<&str> = a.doc["fields"]["rules"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let reason = format!(
            "alert {} ({}) has waited more than {hours:.0} h for the records that would resolve it",
            a.event_id,
            rules.join(", ")
        );
        let ev = alert_event(
            &related,
            alert::ESCALATED,
            &[],
            Some(FollowUp {
                pending_alert: &a.event_id,
                reason: &reason,
                rules: &rules,
            }),
            codes,
            now,
        );
        if crate::api::ingest::in_ledger(state, &ev.event_id).await? {
            continue;
        }
        for r in &rules {
            crate::metrics::METRICS
                .custody_findings
                .with_label_values(&[r, "escalated"])
                .inc();
        }
        let (content, msg, commitment) = crate::api::ingest::node_alert(ev);
        contents.push(content);
        msgs.push(msg);
        fields.push(commitment);
        rows.push(crate::projection::CustodyRows {
            escalates: Some(*alert_leaf),
            ..Default::default()
        });
    }
    if contents.is_empty() {
        return Ok(0);
    }
    let n = contents.len();
    let txs = ledger::sign_batch(
        crate::coldchain::NODE_SIGNER,
        &state.node,
        contents,
        now.timestamp_millis(),
    )
    .map_err(ApiError::internal)?;
    let side = crate::projection::ProjectionWrite::new(&txs, msgs, fields, rows);
    state
        .ledger
        .append_with(txs, Some(Box::new(side)), ledger::Membership::Check)
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mappings::custody::Move;

    fn fact(code: &str, seq: u64, kind: Move) -> Fact {
        Fact {
            code: code.into(),
            seq,
            event_id: uuid::Uuid::from_u128(u128::from(seq)),
            at_ms: seq as i64,
            kind,
            actor: "clinic".into(),
            peer: None,
            doses: 1,
            cancels: None,
            lot: None,
        }
    }

    fn stored(facts: &[Fact]) -> Vec<u8> {
        let mut b = Vec::new();
        for f in facts {
            crate::projection::history::encode_into(&mut b, f.seq, f).unwrap();
        }
        b
    }

    fn cached_seqs(c: &Custody, code: &str) -> Option<Vec<u64>> {
        let mut g = c.lock();
        let e = g.cache.as_mut().unwrap().get(code)?;
        Some(
            crate::projection::history::decode(code, &e.history)
                .unwrap()
                .iter()
                .map(|f| f.seq)
                .collect(),
        )
    }

    /// What a judgement read from the database is cached unless a batch in
    /// flight, or committed since the read began, touched the code; a
    /// committed batch's facts are appended to the cached codes under
    /// their leaves, and a code whose record has no leaf is dropped.
    #[test]
    fn the_cache_holds_what_the_database_holds() {
        let c = Custody::new(BTreeMap::new(), 100);
        // A batch in flight moves B; one reading A and B starts.
        let (ticket, inflight_seq) = {
            let mut g = c.lock();
            g.next_ticket += 1;
            let t = g.next_ticket;
            let seq = IN_FLIGHT + t * 1_000_000;
            g.next_ticket_batch(
                t,
                vec![fact("B", seq, Move::Administer), fact("C", seq + 1, Move::Administer)],
                vec![],
                vec![("P".into(), "B".into(), seq)],
                &[],
            );
            (t, seq)
        };
        let reader = c.begin_read();
        let mut k = c.lock().cache_lookup(&["A".into(), "B".into()], true);
        assert_eq!(k.need_history, ["A", "B"]);
        k.history.insert("A".into(), stored(&[fact("A", 1, Move::Produce)]));
        k.history.insert("B".into(), stored(&[fact("B", 2, Move::Produce)]));
        k.parents.insert("A".into(), vec![]);
        k.parents.insert("B".into(), vec![]);
        let moved: Vec<String> = c.lock().batches[0].facts.iter().map(|f| f.code.clone()).collect();
        let touched: HashSet<&str> = moved.iter().map(String::as_str).collect();
        c.lock().cache_store(&k, &touched);
        drop(reader);
        assert_eq!(cached_seqs(&c, "A"), Some(vec![1]));
        assert_eq!(cached_seqs(&c, "B"), None, "B was being moved: not cached");

        // B is now read again and cached; the batch commits with only its
        // first record written (leaf 7).
        let k = Known {
            history: [("B".to_string(), stored(&[fact("B", 2, Move::Produce)]))].into(),
            parents: [("B".to_string(), vec![])].into(),
            need_history: vec!["B".into()],
            need_parents: vec!["B".into()],
        };
        c.lock().cache_store(&k, &HashSet::new());
        {
            let mut g = c.lock();
            g.cache.as_mut().unwrap().insert(
                "C".into(),
                Cached {
                    history: Vec::new(),
                    parents: Some(vec![]),
                },
            );
        }
        Ticket {
            custody: &c,
            ticket,
            done: false,
        }
        .committed(&[(inflight_seq, 7)].into());
        assert_eq!(cached_seqs(&c, "B"), Some(vec![2, 7]), "appended under its leaf");
        assert_eq!(cached_seqs(&c, "C"), None, "no leaf for its record: dropped");
        let mut g = c.lock();
        let parents = g.cache.as_mut().unwrap().get("B").unwrap().parents.clone();
        assert_eq!(parents, Some(vec!["P".to_string()]), "the batch's packaging link");
    }

    /// Least recently used codes leave first; 0 turns the cache off.
    #[test]
    fn the_cache_is_bounded() {
        let c = Custody::new(BTreeMap::new(), 2);
        let k = Known {
            need_history: vec!["A".into(), "B".into(), "C".into()],
            ..Known::default()
        };
        c.lock().cache_store(&k, &HashSet::new());
        assert_eq!(c.lock().cache.as_ref().unwrap().len(), 2);
        assert!(cached_seqs(&c, "A").is_none());
        let off = Custody::new(BTreeMap::new(), 0);
        off.lock().cache_store(&k, &HashSet::new());
        assert!(off.lock().cache.is_none());
        assert_eq!(off.lock().cache_lookup(&["A".into()], true).need_history, ["A"]);
    }

    /// A batch that is durable but not yet marked committed: the database
    /// gives the lot's deciding fact (its later bill), and the batch's
    /// earlier bill, still in flight under an order after every leaf, must
    /// not pass for the latest statement of the lot's expiry date.
    #[test]
    fn a_durable_batch_in_flight_is_not_counted_twice_for_its_lot() {
        use mappings::custody::LotMove;
        let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 11, d);
        let bill = |seq: u64, event: u128, expires| LotFact {
            lot: "8612345/L1".into(),
            seq,
            event_id: uuid::Uuid::from_u128(event),
            at_ms: 0,
            kind: LotMove::Produced,
            day: day(1),
            day2: expires,
            ok: true,
        };
        let base = IN_FLIGHT + 1_000_000;
        // Two bills of one batch: the earlier says the lot expires on the
        // 10th, the later on the 30th.
        let batch = InflightBatch {
            ticket: 1,
            facts: Vec::new(),
            lots: vec![bill(base, 1, day(10)), bill(base + 1, 2, day(30))],
            links: Vec::new(),
            resolving: Vec::new(),
            committed_at: None,
        };
        let lots: HashSet<&str> = ["8612345/L1"].into();
        let state = |stored: Vec<LotFact>| {
            let events: HashSet<uuid::Uuid> = stored.iter().map(|f| f.event_id).collect();
            let mut book = Book::new();
            book.add_lots(stored);
            book.add_lots(inflight_lot_facts(&batch, &lots, &events));
            book.lot("8612345/L1").expires
        };
        // Durable at leaves 100 and 101: the database gives the later bill
        // (the lot's deciding fact).
        assert_eq!(state(vec![bill(101, 2, day(30))]), day(30));
        // Not durable yet: the batch's own order decides.
        assert_eq!(state(Vec::new()), day(30));
        // An older bill in the database, the batch not durable: the batch's
        // later bill decides.
        assert_eq!(state(vec![bill(7, 9, day(20))]), day(30));
    }
}
