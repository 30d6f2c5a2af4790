//! Custody of trace codes: what each traceability event says about where a
//! code is ([`Fact`], [`LotFact`]), and the rules that find histories that
//! cannot be true or should not have happened ([`judge`]).
//!
//! Pure: no IO and no clock. The gateway keeps the facts of every event in
//! the ledger (`gateway::custody`) and judges each new record against them;
//! `docs/custody.md` describes the states, rules, actions and defaults.
//!
//! Records reach the ledger in the order their legacy systems are
//! connected, not in the order things happened: a vaccination may arrive
//! before the delivery that brought the dose. So a code's state at a time
//! is computed from the facts *dated* before it, whatever order they
//! arrived in, and what is missing upstream is a [`Action::Pending`]
//! finding that a later record can resolve, not a refusal.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::TraceEvent;

mod recall;
pub use recall::{
    COLD_CHAIN_ALERT, CodeState, LotStock, RECEIPT_REFUSED, RecallTally, StockTally, book_of_events, codes_of,
};

/// What an event did to a trace code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Move {
    /// Produced and put into stock by the holder (production inbound, 101).
    Produce,
    /// Sent onwards: sale, transfer, supply (outbound bills).
    Dispatch,
    /// Sent back up the chain: a return (202, 237) or a recall (211).
    DispatchBack,
    /// Received into stock (inbound receipt).
    Receive,
    /// Received back: a return (103) or recall (108) inbound.
    ReceiveBack,
    /// Delivered but refused at receipt (cold-chain record incomplete or out
    /// of range): with the receiver, not in its stock.
    ReceiveRefused,
    /// Given to a person (vaccination).
    Administer,
    /// Lost, scrapped or destroyed.
    Destroy,
    /// Carried by a logistics firm from a shipper to a receiver (a
    /// shipment record); moves no custody on its own.
    Transport,
    /// A cancellation (注销) of an earlier event touching this code.
    Cancel,
}

impl Move {
    /// Every move, in storage order.
    pub const ALL: [Move; 10] = [
        Move::Produce,
        Move::Dispatch,
        Move::DispatchBack,
        Move::Receive,
        Move::ReceiveBack,
        Move::ReceiveRefused,
        Move::Administer,
        Move::Destroy,
        Move::Transport,
        Move::Cancel,
    ];

    /// The stable number stored in the custody tables.
    #[must_use]
    pub fn as_i16(self) -> i16 {
        match self {
            Move::Produce => 1,
            Move::Dispatch => 2,
            Move::DispatchBack => 3,
            Move::Receive => 4,
            Move::ReceiveBack => 5,
            Move::ReceiveRefused => 6,
            Move::Administer => 7,
            Move::Destroy => 8,
            Move::Transport => 9,
            Move::Cancel => 10,
        }
    }

    /// The move stored as `v`.
    #[must_use]
    pub fn from_i16(v: i16) -> Option<Move> {
        Move::ALL.into_iter().find(|m| m.as_i16() == v)
    }

    /// The record it is, for messages ("a vaccination dated ...").
    #[must_use]
    pub fn noun(self) -> &'static str {
        match self {
            Move::Produce => "production",
            Move::Dispatch => "dispatch",
            Move::DispatchBack => "return or recall dispatch",
            Move::Receive => "receipt",
            Move::ReceiveBack => "return or recall receipt",
            Move::ReceiveRefused => "refused receipt",
            Move::Administer => "vaccination",
            Move::Destroy => "destruction",
            Move::Transport => "shipment",
            Move::Cancel => "cancellation",
        }
    }

    /// Lower-case name, as in answers and docs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Move::Produce => "produce",
            Move::Dispatch => "dispatch",
            Move::DispatchBack => "dispatch_back",
            Move::Receive => "receive",
            Move::ReceiveBack => "receive_back",
            Move::ReceiveRefused => "receive_refused",
            Move::Administer => "administer",
            Move::Destroy => "destroy",
            Move::Transport => "transport",
            Move::Cancel => "cancel",
        }
    }
}

/// One event's statement about one trace code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The trace code.
    pub code: String,
    /// Ledger order: the leaf index of the event's transaction (a record
    /// not yet appended gets a number above every leaf).
    pub seq: u64,
    /// The event.
    pub event_id: Uuid,
    /// When it happened (ms since the Unix epoch).
    pub at_ms: i64,
    /// What happened.
    pub kind: Move,
    /// Who did it: the holder that produced, sent, received, gave or
    /// destroyed it (for [`Move::Transport`], the shipper). A registered
    /// entity's id where the party code is registered, else the code.
    pub actor: String,
    /// The other party: the receiver of a dispatch or transport, the
    /// sender of a receipt.
    pub peer: Option<String>,
    /// Doses in the package (production and vaccination records), 0 when
    /// the record does not say.
    pub doses: u16,
    /// For [`Move::Cancel`]: the cancelled event.
    pub cancels: Option<Uuid>,
    /// The record's lot ([`lot_key`]), if it names one.
    pub lot: Option<String>,
}

impl Fact {
    /// Who has the code once this fact happened: the actor of a
    /// production, receipt, vaccination or destruction, the receiver of a
    /// dispatch or transport (if named); `None` for a cancellation.
    #[must_use]
    pub fn holder_after(&self) -> Option<&str> {
        match self.kind {
            Move::Dispatch | Move::DispatchBack | Move::Transport => self.peer.as_deref(),
            Move::Cancel => None,
            _ => Some(&self.actor),
        }
    }
}

/// What an event said about a lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LotMove {
    /// Production dates: `day` produced, `day2` expires.
    Produced,
    /// Lot release (批签发): `day` the release date, `ok` the conclusion.
    Released,
    /// A recall of the lot began at `at_ms`.
    Recalled,
}

impl LotMove {
    /// The stable number stored in the custody tables.
    #[must_use]
    pub fn as_i16(self) -> i16 {
        match self {
            LotMove::Produced => 1,
            LotMove::Released => 2,
            LotMove::Recalled => 3,
        }
    }

    /// The lot move stored as `v`.
    #[must_use]
    pub fn from_i16(v: i16) -> Option<LotMove> {
        [LotMove::Produced, LotMove::Released, LotMove::Recalled]
            .into_iter()
            .find(|m| m.as_i16() == v)
    }
}

/// One event's statement about a lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotFact {
    /// The lot: [`lot_key`] of product and lot number.
    pub lot: String,
    /// Ledger order, as [`Fact::seq`].
    pub seq: u64,
    /// The event.
    pub event_id: Uuid,
    /// When the event happened (ms since the Unix epoch).
    pub at_ms: i64,
    /// What it said.
    pub kind: LotMove,
    /// Production date, or release date.
    pub day: Option<NaiveDate>,
    /// Expiry date (with [`LotMove::Produced`]).
    pub day2: Option<NaiveDate>,
    /// Release conclusion: conforming (with [`LotMove::Released`]).
    pub ok: bool,
}

/// The key of a lot: the product (first seven digits of its trace codes,
/// or the record's `product_id_code`) and the lot number, `8612345/202311A05`.
/// Lot numbers are unique per product, not across products.
#[must_use]
pub fn lot_key(product7: &str, lot_number: &str) -> String {
    format!("{product7}/{lot_number}")
}

/// The lot an event is about, if it names one.
#[must_use]
pub fn lot_of(ev: &TraceEvent) -> Option<String> {
    let lot = ev.field_str("lot_number")?;
    let product = ev
        .field_str("product_id_code")
        .filter(|p| p.len() == 7)
        .map(str::to_string)
        .or_else(|| {
            ev.trace_codes
                .iter()
                .chain(ev.aggregations.iter().flat_map(|a| a.children.iter()))
                .find(|c| c.len() >= 7)
                .map(|c| c[..7].to_string())
        })?;
    Some(lot_key(&product, lot))
}

fn date_field(ev: &TraceEvent, key: &str) -> Option<NaiveDate> {
    let s = ev.field_str(key)?;
    NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").ok()
}

/// The move a record makes, by category and (for returns and recalls)
/// bill type; `None` for records that move no custody (readings, AEFI
/// reports, EMR entries, products, lot releases, alerts).
#[must_use]
pub fn move_of(ev: &TraceEvent) -> Option<Move> {
    let bill = ev.bill_type.as_deref().or_else(|| ev.field_str("bill_type"));
    Some(match ev.category.as_str() {
        "production_inbound" => Move::Produce,
        "outbound" => Move::Dispatch,
        "inbound_receipt" => Move::Receive,
        // 103 退货入库, 108 召回入库: received back; 202/237/211: sent back.
        "return" | "recall" => match bill {
            Some("103" | "108") => Move::ReceiveBack,
            _ => Move::DispatchBack,
        },
        "loss_destruction" => Move::Destroy,
        "vaccination" => Move::Administer,
        "shipment" => Move::Transport,
        _ => return None,
    })
}

/// The facts of one event, before it has a place in the ledger.
#[derive(Debug, Clone, Default)]
pub struct EventFacts {
    /// One per trace code the event moves.
    pub facts: Vec<Fact>,
    /// What it says about its lot.
    pub lot_facts: Vec<LotFact>,
    /// Its lot, if it names one.
    pub lot: Option<String>,
    /// Its own expiry date field, if any.
    pub expiry: Option<NaiveDate>,
}

/// The facts `ev` states, with `seq` as its ledger order and `party`
/// turning a party code into the registered entity id (or the code).
/// A cancellation's facts come from [`cancel_facts`] instead.
pub fn facts_of(ev: &TraceEvent, seq: u64, party: &dyn Fn(&str) -> String) -> EventFacts {
    let lot = lot_of(ev);
    let mut out = EventFacts {
        lot: lot.clone(),
        expiry: date_field(ev, "expiry_date"),
        ..EventFacts::default()
    };
    let at_ms = ev.occurred_at.timestamp_millis();
    let lot_fact = |kind, day, day2, ok| LotFact {
        lot: lot.clone().unwrap_or_default(),
        seq,
        event_id: ev.event_id,
        at_ms,
        kind,
        day,
        day2,
        ok,
    };
    match ev.category.as_str() {
        "production_inbound" | "lot_release" if lot.is_some() => {
            let (produced, expires) = (date_field(ev, "production_date"), date_field(ev, "expiry_date"));
            if produced.is_some() || expires.is_some() {
                out.lot_facts.push(lot_fact(LotMove::Produced, produced, expires, true));
            }
            if ev.category == "lot_release" {
                out.lot_facts.push(lot_fact(
                    LotMove::Released,
                    date_field(ev, "lot_release_date").or(Some(ev.occurred_at.date_naive())),
                    None,
                    ev.field_str("lot_release_conclusion") != Some("2"),
                ));
            }
        }
        "recall" if lot.is_some() => out.lot_facts.push(lot_fact(LotMove::Recalled, None, None, true)),
        _ => {}
    }
    let Some(kind) = move_of(ev) else { return out };
    let from = ev.from.as_ref().map(|p| party(&p.code));
    let to = ev.to.as_ref().map(|p| party(&p.code));
    let source = party(&ev.source);
    let (actor, peer) = match kind {
        Move::Dispatch | Move::DispatchBack | Move::Destroy | Move::Transport => (from.unwrap_or(source), to),
        Move::Receive | Move::ReceiveBack | Move::ReceiveRefused => (to.unwrap_or(source), from),
        Move::Produce | Move::Administer | Move::Cancel => (source, None),
    };
    let doses = ev
        .fields
        .get("doses_per_package")
        .and_then(serde_json::Value::as_u64)
        .and_then(|d| u16::try_from(d).ok())
        .unwrap_or(0);
    let mut codes: Vec<&String> = ev.trace_codes.iter().collect();
    if kind == Move::Transport {
        // A shipment names cartons: their facts are the carton's, and its
        // units inherit them through the packaging links
        // ([`Book::add_inherited`]), one fact per carton, not per unit.
        codes.extend(ev.aggregations.iter().map(|a| &a.parent));
    }
    codes.sort();
    codes.dedup();
    out.facts = codes
        .into_iter()
        .map(|c| Fact {
            code: c.clone(),
            seq,
            event_id: ev.event_id,
            at_ms,
            kind,
            actor: actor.clone(),
            peer: peer.clone(),
            doses,
            cancels: None,
            lot: lot.clone(),
        })
        .collect();
    out
}

/// The facts of a cancellation (`cancellation`, its own `seq`) of the event
/// `cancelled` that touched `codes`.
#[must_use]
pub fn cancel_facts(cancellation: &TraceEvent, seq: u64, codes: &[String], cancelled: Uuid) -> Vec<Fact> {
    codes
        .iter()
        .map(|c| Fact {
            code: c.clone(),
            seq,
            event_id: cancellation.event_id,
            at_ms: cancellation.occurred_at.timestamp_millis(),
            kind: Move::Cancel,
            actor: cancellation.source.clone(),
            peer: None,
            doses: 0,
            cancels: Some(cancelled),
            lot: None,
        })
        .collect()
}

/// A custody rule. Each has a stable code (`docs/custody.md`) and a default
/// [`Action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rule {
    /// A code produced a second time.
    ProducedTwice,
    /// A unit dose administered more often than its package holds doses.
    AdministeredTwice,
    /// A code sent, received or destroyed after all its doses were given.
    AdministeredMoved,
    /// A code used after it was destroyed or lost, or destroyed before a
    /// later use already in the ledger.
    DestroyedUsed,
    /// An event dated before the lot's production date.
    BeforeProduction,
    /// Sent on or given before the lot's release (批签发) date.
    BeforeRelease,
    /// Sent on or given from a lot whose release found it non-conforming.
    ReleaseFailed,
    /// Sent on or given from a lot after its recall began.
    RecalledUsed,
    /// Sent on or given after the expiry date.
    ExpiredUsed,
    /// Sent, given or destroyed by an entity that does not hold the code.
    NotHolder,
    /// Received with no dispatch or shipment to the receiver.
    ReceiptUnmatched,
    /// A code nobody produced (no production record in the ledger).
    UnknownCode,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 12] = [
        Rule::ProducedTwice,
        Rule::AdministeredTwice,
        Rule::AdministeredMoved,
        Rule::DestroyedUsed,
        Rule::BeforeProduction,
        Rule::BeforeRelease,
        Rule::ReleaseFailed,
        Rule::RecalledUsed,
        Rule::ExpiredUsed,
        Rule::NotHolder,
        Rule::ReceiptUnmatched,
        Rule::UnknownCode,
    ];

    /// The stable code.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ProducedTwice => "produced_twice",
            Rule::AdministeredTwice => "administered_twice",
            Rule::AdministeredMoved => "administered_moved",
            Rule::DestroyedUsed => "destroyed_used",
            Rule::BeforeProduction => "before_production",
            Rule::BeforeRelease => "before_release",
            Rule::ReleaseFailed => "release_failed",
            Rule::RecalledUsed => "recalled_used",
            Rule::ExpiredUsed => "expired_used",
            Rule::NotHolder => "not_holder",
            Rule::ReceiptUnmatched => "receipt_unmatched",
            Rule::UnknownCode => "unknown_code",
        }
    }

    /// The rule with code `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What a CDC would want by default: a record that cannot be true is
    /// refused; one of something that happened but should not have is kept
    /// and flagged; one whose upstream may simply not have arrived yet is
    /// kept as pending.
    #[must_use]
    pub fn default_action(self) -> Action {
        match self {
            Rule::ProducedTwice
            | Rule::AdministeredTwice
            | Rule::AdministeredMoved
            | Rule::DestroyedUsed
            | Rule::BeforeProduction => Action::Refuse,
            Rule::BeforeRelease | Rule::ReleaseFailed | Rule::RecalledUsed | Rule::ExpiredUsed => Action::Flag,
            Rule::NotHolder | Rule::ReceiptUnmatched | Rule::UnknownCode => Action::Pending,
        }
    }

    /// Whether a later record can make the finding go away (the missing
    /// upstream record arrives): only these may be [`Action::Pending`].
    #[must_use]
    pub fn may_resolve(self) -> bool {
        matches!(self, Rule::NotHolder | Rule::ReceiptUnmatched | Rule::UnknownCode)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gateway does with a record that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refused like a validation failure; nothing is written.
    Refuse,
    /// Kept as the source's statement of a real-world fact, with an alert
    /// transaction naming the conflict.
    Flag,
    /// Kept with a `provenance_pending` alert, resolved by a later
    /// transaction when the missing upstream records arrive.
    Pending,
}

impl Action {
    /// Lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Refuse => "refuse",
            Action::Flag => "flag",
            Action::Pending => "pending",
        }
    }
}

/// A broken rule, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which rule.
    pub rule: Rule,
    /// The trace code.
    pub code: String,
    /// The earlier event it conflicts with, and its ledger order.
    pub conflict: Option<(Uuid, u64)>,
    /// For a person: what was wrong, without personal data.
    pub message: String,
    /// The conflicting record is dated *after* this one, which may be the
    /// true one of the two (records arrive out of order): a refusal is
    /// kept and flagged instead ([`Finding::action`]).
    pub later: bool,
}

impl Finding {
    /// What to do with the record: the rule's configured action, except
    /// that a record whose conflict is dated after it is flagged, not
    /// refused (the earlier record is not the impossible one of the two).
    #[must_use]
    pub fn action(&self, configured: Action) -> Action {
        if self.later && configured == Action::Refuse {
            Action::Flag
        } else {
            configured
        }
    }
}

/// What is known of the codes and lots a batch touches: every fact already
/// in the ledger (or ahead of the record in its batch), by code and by lot.
#[derive(Debug, Clone, Default)]
pub struct Book {
    codes: HashMap<String, Vec<Fact>>,
    lots: HashMap<String, LotBook>,
}

/// What a [`Book`] keeps of a lot: the facts that decide its [`LotState`]
/// (the fold of [`Book::lot`] takes, of each kind, the latest or the
/// earliest fact, so the others change nothing), and which facts it was
/// given, each kept once as first added. A lot that thousands of
/// production bills restate costs one entry, not thousands: judging a
/// batch must not grow with the lot's past.
#[derive(Debug, Clone, Default)]
struct LotBook {
    seen: HashSet<(Uuid, LotMove)>,
    /// Production date: the latest fact (by ledger order) that states one.
    produced: Option<(u64, NaiveDate)>,
    /// Expiry date: the latest fact that states one.
    expires: Option<(u64, NaiveDate)>,
    /// The latest release fact.
    released: Option<LotFact>,
    /// The earliest recall (by its start, then ledger order).
    recalled: Option<LotFact>,
}

impl LotBook {
    fn add(&mut self, f: LotFact) {
        if !self.seen.insert((f.event_id, f.kind)) {
            return;
        }
        let later = |have: Option<u64>| have.is_none_or(|s| f.seq > s);
        match f.kind {
            LotMove::Produced => {
                if let Some(d) = f.day
                    && later(self.produced.map(|p| p.0))
                {
                    self.produced = Some((f.seq, d));
                }
                if let Some(d) = f.day2
                    && later(self.expires.map(|p| p.0))
                {
                    self.expires = Some((f.seq, d));
                }
            }
            LotMove::Released => {
                if later(self.released.as_ref().map(|r| r.seq)) {
                    self.released = Some(f);
                }
            }
            LotMove::Recalled => {
                if self
                    .recalled
                    .as_ref()
                    .is_none_or(|r| (f.at_ms, f.seq) < (r.at_ms, r.seq))
                {
                    self.recalled = Some(f);
                }
            }
        }
    }
}

impl Book {
    /// An empty book.
    #[must_use]
    pub fn new() -> Book {
        Book::default()
    }

    /// Adds facts. A fact already present (same code and event: the same
    /// record seen in the ledger and still in flight) is kept once, as
    /// first added.
    pub fn add(&mut self, facts: impl IntoIterator<Item = Fact>) {
        for f in facts {
            // The code's name is copied only for a code new to the book.
            match self.codes.get_mut(f.code.as_str()) {
                Some(v) => {
                    let id = f.event_id.as_u128();
                    if !v.iter().any(|g| g.event_id.as_u128() == id) {
                        v.push(f);
                    }
                }
                None => {
                    self.codes.insert(f.code.clone(), vec![f]);
                }
            }
        }
    }

    /// Adds facts, and for every transport of a package (a carton a
    /// carrier moved) a copy for each of its contents that `children` lists:
    /// what travels in a carton travels with it.
    pub fn add_inherited(&mut self, children: &HashMap<String, Vec<String>>, facts: impl IntoIterator<Item = Fact>) {
        for f in facts {
            if f.kind == Move::Transport
                && let Some(kids) = children.get(&f.code)
            {
                let copies: Vec<Fact> = kids
                    .iter()
                    .map(|c| Fact {
                        code: c.clone(),
                        ..f.clone()
                    })
                    .collect();
                self.add(copies);
            }
            self.add([f]);
        }
    }

    /// Adds lot facts (kept once per lot, event and kind).
    pub fn add_lots(&mut self, facts: impl IntoIterator<Item = LotFact>) {
        for f in facts {
            match self.lots.get_mut(&f.lot) {
                Some(b) => b.add(f),
                None => self.lots.entry(f.lot.clone()).or_default().add(f),
            }
        }
    }

    /// The live facts of `code` (cancelled events and cancellations left
    /// out), ordered by when they happened, then by ledger order.
    #[must_use]
    pub fn history(&self, code: &str) -> Vec<&Fact> {
        let Some(all) = self.codes.get(code) else {
            return Vec::new();
        };
        let cancelled: Vec<Uuid> = all.iter().filter_map(|f| f.cancels).collect();
        let mut live: Vec<&Fact> = all
            .iter()
            .filter(|f| f.kind != Move::Cancel && !cancelled.contains(&f.event_id))
            .collect();
        live.sort_by_key(|f| (f.at_ms, f.seq));
        live
    }

    /// What is known of lot `lot`.
    #[must_use]
    pub fn lot(&self, lot: &str) -> LotState {
        let Some(b) = self.lots.get(lot) else {
            return LotState::default();
        };
        LotState {
            produced: b.produced.map(|p| p.1),
            expires: b.expires.map(|p| p.1),
            released: b.released.as_ref().map(|f| (f.day, f.ok, f.event_id, f.seq)),
            recalled: b.recalled.as_ref().map(|f| (f.at_ms, f.event_id, f.seq)),
        }
    }

    /// Codes with facts in the book.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.codes.keys().map(String::as_str)
    }
}

/// What is known of a lot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LotState {
    /// Production date.
    pub produced: Option<NaiveDate>,
    /// Expiry date.
    pub expires: Option<NaiveDate>,
    /// Release date, conclusion (conforming), event and its ledger order.
    pub released: Option<(Option<NaiveDate>, bool, Uuid, u64)>,
    /// Earliest recall start (ms), event and its ledger order.
    pub recalled: Option<(i64, Uuid, u64)>,
}

/// Where a code is at some time, from the facts dated up to then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Custody<'a> {
    /// No fact dated up to then.
    Unknown,
    /// In the stock of this entity.
    Held(&'a str),
    /// On its way from one entity to another (the receiver may be unknown).
    Transit {
        /// The sender.
        from: &'a str,
        /// The receiver.
        to: Option<&'a str>,
    },
    /// Refused at receipt: with this entity, not in its stock.
    Refused(&'a str),
    /// Doses given by this entity, so far.
    Administered(&'a str, u16),
    /// Destroyed or lost by this entity.
    Destroyed(&'a str),
}

impl<'a> Custody<'a> {
    /// The state after `facts` (in time order).
    #[must_use]
    pub fn after(facts: &[&'a Fact]) -> Custody<'a> {
        let mut s = Custody::Unknown;
        for f in facts {
            s = match f.kind {
                Move::Produce | Move::Receive | Move::ReceiveBack => Custody::Held(&f.actor),
                Move::Dispatch | Move::DispatchBack => Custody::Transit {
                    from: &f.actor,
                    to: f.peer.as_deref(),
                },
                Move::Transport => match (&s, f.peer.as_deref()) {
                    // The carrier's record says where it goes; it does not
                    // take custody from the receiver that already has it.
                    (Custody::Held(h), Some(to)) if *h == to => s,
                    (_, Some(to)) => Custody::Transit {
                        from: &f.actor,
                        to: Some(to),
                    },
                    (_, None) => s,
                },
                Move::ReceiveRefused => Custody::Refused(&f.actor),
                Move::Administer => match s {
                    Custody::Administered(by, n) if by == f.actor => Custody::Administered(by, n.saturating_add(1)),
                    _ => Custody::Administered(&f.actor, 1),
                },
                Move::Destroy => Custody::Destroyed(&f.actor),
                Move::Cancel => s,
            };
        }
        s
    }

    /// Whether `actor` has the code (to send, give or destroy it): in its
    /// stock, on its way to it, or partly given by it; a refused delivery
    /// only to send back or destroy.
    #[must_use]
    pub fn with(&self, actor: &str, kind: Move) -> bool {
        match *self {
            Custody::Held(h) => h == actor,
            Custody::Transit { to, .. } => to == Some(actor),
            Custody::Administered(by, _) => by == actor,
            Custody::Refused(at) => at == actor && matches!(kind, Move::DispatchBack | Move::Destroy),
            Custody::Unknown | Custody::Destroyed(_) => false,
        }
    }

    /// For messages: where the code is.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Custody::Unknown => "nowhere known".into(),
            Custody::Held(h) => format!("held by {h}"),
            Custody::Transit { from, to: Some(to) } => format!("in transit from {from} to {to}"),
            Custody::Transit { from, to: None } => format!("in transit from {from}"),
            Custody::Refused(at) => format!("refused at receipt by {at}"),
            Custody::Administered(by, n) => format!("administered by {by} ({n} dose(s))"),
            Custody::Destroyed(by) => format!("destroyed by {by}"),
        }
    }
}

/// A day from a time in ms (UTC+8, the calendar the records are kept in).
fn day_of(at_ms: i64) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp_millis(at_ms + 8 * 3_600_000).map(|t| t.date_naive())
}

/// A receipt's dispatch may be entered up to a day after the receipt
/// (the sender's clerk types it in later).
const DISPATCH_SLACK_MS: i64 = 24 * 3_600_000;

/// Judges an event (its `facts`, its `lot` and its own `expiry`, from
/// [`facts_of`]) against what `book` knows. Every broken rule is a finding;
/// the caller applies each rule's [`Action`].
#[must_use]
pub fn judge(ev: &EventFacts, book: &Book) -> Vec<Finding> {
    let mut out = Vec::new();
    let lot = ev.lot.as_deref().map(|l| book.lot(l)).unwrap_or_default();
    // A cancellation states nothing about where a code is: it only takes
    // the cancelled record's facts away.
    for f in ev.facts.iter().filter(|f| f.kind != Move::Cancel) {
        judge_code(f, &lot, ev.expiry, book, &mut out);
    }
    out
}

/// Judges one fact of an event against its code's history, phase by phase:
/// the lot's production date; then, by what the fact does, a production
/// produced twice, a carrier's shipment against the end of the code's life,
/// or, for every other move, the end of its life (every dose given,
/// destroyed), its lot (released, not recalled, not expired) and who has it.
fn judge_code(f: &Fact, lot: &LotState, own_expiry: Option<NaiveDate>, book: &Book, out: &mut Vec<Finding>) {
    let mut j = Judgement::new(f, book.history(&f.code), out);
    j.before_production(lot);
    match f.kind {
        Move::Produce => j.produced_twice(),
        // A carrier's record: checked only against the end of the code's life.
        Move::Transport => j.used_after_destroyed(),
        _ => {
            let used_up = j.every_dose_given();
            j.destroyed_used();
            if matches!(f.kind, Move::Dispatch | Move::Administer) {
                j.lot_release(lot);
                j.lot_recall(lot);
                j.lot_expiry(lot, own_expiry);
            }
            j.custody(used_up);
        }
    }
}

/// One fact being judged: the other live facts of its code in time order,
/// what they say of the code's life, and the findings so far.
struct Judgement<'a> {
    f: &'a Fact,
    code: &'a str,
    /// The code's live facts, without the judged event's own.
    hist: Vec<&'a Fact>,
    /// The calendar day of the fact.
    day: Option<NaiveDate>,
    /// The code's production, if any.
    produce: Option<&'a Fact>,
    /// The code's destruction dated up to the fact, if any.
    destroyed_before: Option<&'a Fact>,
    out: &'a mut Vec<Finding>,
}

impl<'a> Judgement<'a> {
    fn new(f: &'a Fact, history: Vec<&'a Fact>, out: &'a mut Vec<Finding>) -> Judgement<'a> {
        let hist: Vec<&Fact> = history.into_iter().filter(|g| g.event_id != f.event_id).collect();
        let produce = hist.iter().copied().find(|g| g.kind == Move::Produce);
        let destroyed_before = hist
            .iter()
            .copied()
            .find(|g| g.kind == Move::Destroy && g.at_ms <= f.at_ms);
        Judgement {
            f,
            code: f.code.as_str(),
            hist,
            day: day_of(f.at_ms),
            produce,
            destroyed_before,
            out,
        }
    }

    /// A finding; `conflict` is the fact it conflicts with.
    fn find(&mut self, rule: Rule, conflict: Option<&Fact>, message: String) {
        self.out.push(Finding {
            rule,
            code: self.code.to_string(),
            conflict: conflict.map(|c| (c.event_id, c.seq)),
            later: conflict.is_some_and(|c| c.at_ms > self.f.at_ms),
            message,
        });
    }

    /// A finding whose conflict is a lot's event (never dated later).
    fn find_lot(&mut self, rule: Rule, (event, seq): (Uuid, u64), message: String) {
        self.out.push(Finding {
            rule,
            code: self.code.to_string(),
            conflict: Some((event, seq)),
            later: false,
            message,
        });
    }

    /// `before_production`: dated before the lot was produced.
    fn before_production(&mut self, lot: &LotState) {
        if let (Some(p), Some(d)) = (lot.produced, self.day)
            && d < p
        {
            let message = format!(
                "code {}: a {} dated {d} is before its lot was produced ({p})",
                self.code,
                self.f.kind.noun()
            );
            self.find(Rule::BeforeProduction, None, message);
        }
    }

    /// `produced_twice`: a production of a code already produced.
    fn produced_twice(&mut self) {
        if let Some(p) = self.produce {
            let message = format!("code {} was already produced by {}", self.code, name(p));
            self.find(Rule::ProducedTwice, Some(p), message);
        }
    }

    /// `destroyed_used`: a use after a destruction dated up to it.
    fn used_after_destroyed(&mut self) {
        if let Some(d) = self.destroyed_before {
            let message = format!(
                "code {}: a {} after it was destroyed ({})",
                self.code,
                self.f.kind.noun(),
                name(d)
            );
            self.find(Rule::DestroyedUsed, Some(d), message);
        }
    }

    /// The end of a code's life by its doses: `administered_twice` (a dose
    /// more than the package holds) and `administered_moved` (moved after
    /// its last dose was given). Returns whether every dose was given.
    fn every_dose_given(&mut self) -> bool {
        let f = self.f;
        let doses = self
            .produce
            .map(|p| p.doses)
            .filter(|d| *d > 0)
            .or(Some(f.doses).filter(|d| *d > 0))
            .unwrap_or(1);
        let given: Vec<&Fact> = self
            .hist
            .iter()
            .copied()
            .filter(|g| g.kind == Move::Administer)
            .collect();
        let used_up = given.len() >= usize::from(doses);
        if f.kind == Move::Administer && used_up {
            // The conflict: the last dose given up to this one's time, else the
            // first given after it.
            let prior = given.iter().copied().filter(|g| g.at_ms <= f.at_ms).count();
            let conflict = if prior >= usize::from(doses) {
                given[prior - 1]
            } else {
                given[prior]
            };
            let message = format!(
                "code {} holds {doses} dose(s), already given {} time(s), {} by {}",
                self.code,
                given.len(),
                if conflict.at_ms > f.at_ms { "later" } else { "last" },
                name(conflict)
            );
            self.find(Rule::AdministeredTwice, Some(conflict), message);
        } else if f.kind != Move::Administer
            && used_up
            && let Some(last) = given.iter().copied().find(|g| g.at_ms <= f.at_ms)
        {
            let message = format!(
                "code {}: a {} after its last dose was given ({})",
                self.code,
                f.kind.noun(),
                name(last)
            );
            self.find(Rule::AdministeredMoved, Some(last), message);
        }
        used_up
    }

    /// The end of a code's life by destruction: `destroyed_used`, a use
    /// after it was destroyed, or a destruction before a later use already
    /// in the ledger.
    fn destroyed_used(&mut self) {
        if self.destroyed_before.is_some() {
            self.used_after_destroyed();
        } else if self.f.kind == Move::Destroy
            && let Some(u) =
                self.hist.iter().copied().find(|g| {
                    g.at_ms > self.f.at_ms && matches!(g.kind, Move::Administer | Move::Dispatch | Move::Receive)
                })
        {
            let message = format!(
                "code {}: destroyed before a later use already in the ledger ({})",
                self.code,
                name(u)
            );
            self.find(Rule::DestroyedUsed, Some(u), message);
        }
    }

    /// The lot's release (批签发): `release_failed` (found non-conforming),
    /// else `before_release` (dated before the release).
    fn lot_release(&mut self, lot: &LotState) {
        let Some((rday, ok, ev, seq)) = lot.released else {
            return;
        };
        if !ok {
            let message = format!("code {}: its lot's release (批签发) found it non-conforming", self.code);
            self.find_lot(Rule::ReleaseFailed, (ev, seq), message);
        } else if let (Some(r), Some(d)) = (rday, self.day)
            && d < r
        {
            let message = format!(
                "code {}: a {} dated {d} is before its lot's release ({r})",
                self.code,
                self.f.kind.noun()
            );
            self.find_lot(Rule::BeforeRelease, (ev, seq), message);
        }
    }

    /// `recalled_used`: at or after the start of its lot's recall.
    fn lot_recall(&mut self, lot: &LotState) {
        if let Some((rat, ev, seq)) = lot.recalled
            && self.f.at_ms >= rat
        {
            let message = format!(
                "code {}: a {} after its lot was recalled",
                self.code,
                self.f.kind.noun()
            );
            self.find_lot(Rule::RecalledUsed, (ev, seq), message);
        }
    }

    /// `expired_used`: dated after the lot's expiry date (else the event's own).
    fn lot_expiry(&mut self, lot: &LotState, own_expiry: Option<NaiveDate>) {
        if let (Some(e), Some(d)) = (lot.expires.or(own_expiry), self.day)
            && d > e
        {
            let message = format!(
                "code {}: a {} dated {d} is after its expiry date ({e})",
                self.code,
                self.f.kind.noun()
            );
            self.find(Rule::ExpiredUsed, None, message);
        }
    }

    /// Custody: who has the code when this happens, from the facts dated up
    /// to it. `used_up`: every dose was given (reported already).
    fn custody(&mut self, used_up: bool) {
        let before: Vec<&'a Fact> = self.hist.iter().copied().filter(|g| g.at_ms <= self.f.at_ms).collect();
        let state = Custody::after(&before);
        match self.f.kind {
            Move::Dispatch | Move::DispatchBack | Move::Administer | Move::Destroy => {
                self.not_holder(&state, &before, used_up);
            }
            Move::Receive | Move::ReceiveRefused | Move::ReceiveBack => self.receipt_unmatched(&state, &before),
            Move::Produce | Move::Transport | Move::Cancel => {}
        }
    }

    /// A sender, vaccinating unit or destroyer has the code: else
    /// `unknown_code` (nobody known has it and nobody produced it) or
    /// `not_holder`.
    fn not_holder(&mut self, state: &Custody<'_>, before: &[&Fact], used_up: bool) {
        let f = self.f;
        if matches!(state, Custody::Destroyed(_)) || state.with(&f.actor, f.kind) {
            return;
        }
        if matches!(state, Custody::Administered(..)) && used_up {
            return; // reported by every_dose_given
        }
        if *state == Custody::Unknown && self.produce.is_none() {
            let message = format!(
                "code {}: no production, shipment or receipt of it is in the ledger",
                self.code
            );
            self.find(Rule::UnknownCode, None, message);
        } else {
            let last = before.last().copied();
            let message = format!(
                "code {}: {} by {} while it is {}{}",
                self.code,
                f.kind.noun(),
                f.actor,
                state.describe(),
                last.map(|l| format!(" ({})", name(l))).unwrap_or_default()
            );
            self.find(Rule::NotHolder, last, message);
        }
    }

    /// A receipt was sent to the receiver (a dispatch or shipment to it,
    /// dated up to a day after the receipt; a return from the holder needs
    /// none): else `unknown_code` (nothing known of the code) or
    /// `receipt_unmatched`.
    fn receipt_unmatched(&mut self, state: &Custody<'_>, before: &[&Fact]) {
        let f = self.f;
        let sent_here = self.hist.iter().copied().any(|g| {
            matches!(g.kind, Move::Dispatch | Move::DispatchBack | Move::Transport)
                && g.peer.as_deref() == Some(f.actor.as_str())
                && g.at_ms <= f.at_ms + DISPATCH_SLACK_MS
        });
        // A return is often documented by its receiver alone: from the holder.
        let back_from_holder = f.kind == Move::ReceiveBack
            && f.peer
                .as_deref()
                .is_some_and(|p| state.with(p, Move::DispatchBack) || *state == Custody::Held(p));
        if sent_here || back_from_holder {
            return;
        }
        if self.produce.is_none() && self.hist.is_empty() {
            let message = format!(
                "code {}: no production, shipment or receipt of it is in the ledger",
                self.code
            );
            self.find(Rule::UnknownCode, None, message);
        } else {
            let message = format!(
                "code {}: received by {} but no dispatch or shipment to it is in the ledger (it is {})",
                self.code,
                f.actor,
                state.describe()
            );
            self.find(Rule::ReceiptUnmatched, before.last().copied(), message);
        }
    }
}

/// A fact for messages: its event and what kind of record it is.
fn name(g: &Fact) -> String {
    format!("event {} ({})", g.event_id, g.kind.noun())
}

#[cfg(test)]
mod tests;

/// Phases of [`judge_code`] on their own, on facts built by hand.
#[cfg(test)]
mod phase_tests {
    use super::*;

    const UNIT: &str = "86123450000000001001";
    const DAY_MS: i64 = 86_400_000;

    fn fact(n: u128, at_day: i64, kind: Move, actor: &str, peer: Option<&str>, doses: u16) -> Fact {
        Fact {
            code: UNIT.into(),
            seq: n as u64,
            event_id: Uuid::from_u128(n),
            at_ms: 1_704_067_200_000 + at_day * DAY_MS,
            kind,
            actor: actor.into(),
            peer: peer.map(str::to_string),
            doses,
            cancels: None,
            lot: None,
        }
    }

    fn rules(out: &[Finding]) -> Vec<(Rule, Option<u64>, bool)> {
        out.iter().map(|f| (f.rule, f.conflict.map(|c| c.1), f.later)).collect()
    }

    #[test]
    fn every_dose_given_alone() {
        let produced = fact(1, 0, Move::Produce, "mah", None, 2);
        let (first, second) = (
            fact(2, 5, Move::Administer, "clinic", None, 0),
            fact(3, 9, Move::Administer, "clinic", None, 0),
        );
        let history = vec![&produced, &first, &second];
        // a third dose of a two-dose package, dated after both: the last one
        // given is the conflict
        let third = fact(4, 11, Move::Administer, "clinic", None, 0);
        let mut out = Vec::new();
        let used_up = Judgement::new(&third, history.clone(), &mut out).every_dose_given();
        assert!(used_up);
        assert_eq!(rules(&out), [(Rule::AdministeredTwice, Some(3), false)]);
        // dated between the two: the one given after it, dated later
        let between = fact(4, 7, Move::Administer, "clinic", None, 0);
        let mut out = Vec::new();
        assert!(Judgement::new(&between, history.clone(), &mut out).every_dose_given());
        assert_eq!(rules(&out), [(Rule::AdministeredTwice, Some(3), true)]);
        // a dispatch after the last dose
        let sent = fact(5, 10, Move::Dispatch, "clinic", Some("cdc"), 0);
        let mut out = Vec::new();
        assert!(Judgement::new(&sent, history, &mut out).every_dose_given());
        assert_eq!(rules(&out), [(Rule::AdministeredMoved, Some(2), false)]);
    }

    #[test]
    fn receipt_unmatched_alone() {
        let produced = fact(1, 0, Move::Produce, "mah", None, 1);
        let sent = fact(2, 3, Move::Dispatch, "mah", Some("cdc"), 0);
        let history = vec![&produced, &sent];
        let at_cdc = fact(3, 3, Move::Receive, "cdc", Some("mah"), 0);
        let at_clinic = fact(4, 3, Move::Receive, "clinic", Some("mah"), 0);
        let mut out = Vec::new();
        Judgement::new(&at_cdc, history.clone(), &mut out).custody(false);
        assert!(out.is_empty());
        Judgement::new(&at_clinic, history, &mut out).custody(false);
        assert_eq!(rules(&out), [(Rule::ReceiptUnmatched, Some(2), false)]);
        assert!(
            out[0].message.contains("in transit from mah to cdc"),
            "{}",
            out[0].message
        );
    }

    #[test]
    fn lot_rules_alone() {
        let given = fact(9, 10, Move::Administer, "clinic", None, 0);
        let release = Uuid::from_u128(77);
        let lot = LotState {
            produced: None,
            expires: NaiveDate::from_ymd_opt(2024, 1, 5),
            released: Some((NaiveDate::from_ymd_opt(2024, 1, 20), true, release, 7)),
            recalled: Some((given.at_ms, Uuid::from_u128(78), 8)),
        };
        let mut out = Vec::new();
        let mut j = Judgement::new(&given, Vec::new(), &mut out);
        j.lot_release(&lot);
        j.lot_recall(&lot);
        j.lot_expiry(&lot, None);
        assert_eq!(
            rules(&out),
            [
                (Rule::BeforeRelease, Some(7), false),
                (Rule::RecalledUsed, Some(8), false),
                (Rule::ExpiredUsed, None, false)
            ]
        );
    }
}
