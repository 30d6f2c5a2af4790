use chrono::{DateTime, FixedOffset};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::event::Party;

const MAH: &str = "91320000134567890Y";
const PROV: &str = "12320000466000456J";
const CLINIC_A: &str = "3201020001";
const CLINIC_B: &str = "3201020002";
const CARRIER: &str = "91110000100012345L";
const UNIT: &str = "86123450000000001001";

fn t(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(&format!("{s}+08:00")).unwrap_or_default()
}

/// A record of `category` at `time` by `source`, moving `codes` from → to.
fn ev(
    category: &str,
    bill: Option<&str>,
    time: &str,
    source: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> TraceEvent {
    let mut fields = serde_json::Map::new();
    fields.insert("lot_number".into(), json!("202311A05"));
    TraceEvent {
        category: category.into(),
        event_id: Uuid::new_v4(),
        occurred_at: t(time),
        recorded_at: t(time),
        source: source.into(),
        device: None,
        record_key: format!("{category}-{time}"),
        bill_type: bill.map(str::to_string),
        trace_codes: vec![UNIT.into()],
        aggregations: Vec::new(),
        from: from.map(|c| Party {
            code: c.into(),
            name: None,
        }),
        to: to.map(|c| Party {
            code: c.into(),
            name: None,
        }),
        fields,
        pii: Default::default(),
    }
}

fn produce(time: &str) -> TraceEvent {
    let mut e = ev("production_inbound", Some("101"), time, MAH, None, None);
    e.fields.insert("production_date".into(), json!("2023-12-01"));
    e.fields.insert("expiry_date".into(), json!("2025-11-30"));
    e
}
fn dispatch(time: &str, from: &str, to: &str) -> TraceEvent {
    ev("outbound", Some("203"), time, from, Some(from), Some(to))
}
fn receive(time: &str, from: &str, to: &str) -> TraceEvent {
    ev("inbound_receipt", Some("104"), time, to, Some(from), Some(to))
}
fn give(time: &str, clinic: &str) -> TraceEvent {
    ev("vaccination", None, time, clinic, None, None)
}
fn destroy(time: &str, by: &str) -> TraceEvent {
    ev("loss_destruction", Some("205"), time, by, Some(by), None)
}
fn release(time: &str, day: &str, ok: bool) -> TraceEvent {
    let mut e = ev("lot_release", None, time, MAH, None, None);
    e.trace_codes.clear();
    e.fields.insert("product_id_code".into(), json!("8612345"));
    e.fields.insert("lot_release_date".into(), json!(day));
    e.fields
        .insert("lot_release_conclusion".into(), json!(if ok { "1" } else { "2" }));
    e
}

/// Appends events in arrival order, judging each against what came before;
/// returns the rule codes found for each.
struct Ledger {
    book: Book,
    seq: u64,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            book: Book::new(),
            seq: 0,
        }
    }
    fn facts(&mut self, e: &TraceEvent) -> EventFacts {
        self.seq += 1;
        facts_of(e, self.seq, &|c: &str| c.to_string())
    }
    /// Judges and (whatever the finding) records `e`.
    fn put(&mut self, e: &TraceEvent) -> Vec<Finding> {
        let f = self.facts(e);
        let found = judge(&f, &self.book);
        self.book.add(f.facts);
        self.book.add_lots(f.lot_facts);
        found
    }
    fn rules(&mut self, e: &TraceEvent) -> Vec<&'static str> {
        self.put(e).iter().map(|f| f.rule.as_str()).collect()
    }
}

fn chain() -> Vec<TraceEvent> {
    vec![
        produce("2023-12-21T08:00:00"),
        release("2023-12-22T16:30:00", "2023-12-22", true),
        dispatch("2024-01-05T09:00:00", MAH, PROV),
        receive("2024-01-05T15:00:00", MAH, PROV),
        dispatch("2024-02-01T09:00:00", PROV, CLINIC_A),
        receive("2024-02-01T15:00:00", PROV, CLINIC_A),
        give("2024-03-05T09:30:00", CLINIC_A),
    ]
}

#[test]
fn a_true_history_breaks_no_rule() {
    let mut l = Ledger::new();
    for e in chain() {
        assert_eq!(l.rules(&e), Vec::<&str>::new(), "{}", e.category);
    }
}

#[test]
fn a_dose_given_twice_is_found_with_the_first_vaccination() {
    let mut l = Ledger::new();
    let events = chain();
    for e in &events {
        l.put(e);
    }
    let found = l.put(&give("2024-03-06T10:00:00", CLINIC_A));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, Rule::AdministeredTwice);
    assert_eq!(found[0].code, UNIT);
    assert_eq!(found[0].conflict.map(|c| c.0), Some(events[6].event_id));
    assert!(
        found[0].message.contains("already given 1 time"),
        "{}",
        found[0].message
    );
}

#[test]
fn a_package_of_two_doses_is_given_twice_not_three_times() {
    let mut l = Ledger::new();
    let mut events = chain();
    events[0].fields.insert("doses_per_package".into(), json!(2));
    for e in &events {
        assert!(l.put(e).is_empty());
    }
    assert_eq!(l.rules(&give("2024-03-05T10:00:00", CLINIC_A)), Vec::<&str>::new());
    assert_eq!(l.rules(&give("2024-03-05T11:00:00", CLINIC_A)), ["administered_twice"]);
}

#[test]
fn a_destroyed_dose_cannot_be_given_nor_destroyed_before_a_later_use() {
    let mut l = Ledger::new();
    let events = chain();
    for e in &events[..6] {
        l.put(e);
    }
    let d = destroy("2024-02-10T16:00:00", CLINIC_A);
    assert!(l.put(&d).is_empty());
    let found = l.put(&give("2024-03-05T09:30:00", CLINIC_A));
    assert_eq!(found.iter().map(|f| f.rule).collect::<Vec<_>>(), [Rule::DestroyedUsed]);
    assert_eq!(found[0].conflict.map(|c| c.0), Some(d.event_id));

    // The other way round: the vaccination is in, a destruction dated before it arrives.
    let mut l = Ledger::new();
    for e in &events {
        l.put(e);
    }
    assert_eq!(l.rules(&destroy("2024-02-10T16:00:00", CLINIC_A)), ["destroyed_used"]);
    // After the dose was given: the package was used up.
    let mut l = Ledger::new();
    for e in &events {
        l.put(e);
    }
    assert_eq!(
        l.rules(&destroy("2024-04-10T16:00:00", CLINIC_A)),
        ["administered_moved"]
    );
}

#[test]
fn an_event_before_production_is_found() {
    let mut l = Ledger::new();
    let events = chain();
    for e in &events[..6] {
        l.put(e);
    }
    let rules = l.rules(&give("2023-09-05T09:30:00", CLINIC_A));
    assert!(rules.contains(&"before_production"), "{rules:?}");
}

#[test]
fn a_dose_held_by_another_clinic_names_its_holder() {
    let mut l = Ledger::new();
    let events = chain();
    for e in &events[..6] {
        l.put(e);
    }
    let found = l.put(&give("2024-03-05T09:30:00", CLINIC_B));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, Rule::NotHolder);
    assert_eq!(found[0].conflict.map(|c| c.0), Some(events[5].event_id));
    assert!(
        found[0].message.contains(&format!("held by {CLINIC_A}")),
        "{}",
        found[0].message
    );
}

#[test]
fn codes_nobody_produced_and_receipts_nobody_sent() {
    let mut l = Ledger::new();
    assert_eq!(l.rules(&give("2024-03-05T09:30:00", CLINIC_A)), ["unknown_code"]);
    let mut l = Ledger::new();
    assert_eq!(l.rules(&receive("2024-01-05T15:00:00", MAH, PROV)), ["unknown_code"]);
    let mut l = Ledger::new();
    l.put(&produce("2023-12-21T08:00:00"));
    assert_eq!(
        l.rules(&receive("2024-01-05T15:00:00", MAH, PROV)),
        ["receipt_unmatched"]
    );
    // A carrier's shipment to the receiver is enough.
    let mut ship = ev("shipment", None, "2024-01-05T10:00:00", CARRIER, Some(MAH), Some(PROV));
    ship.trace_codes = vec!["86123450000000100001".into()];
    ship.aggregations = vec![crate::event::AggregationLink {
        parent: "86123450000000100001".into(),
        children: vec![UNIT.into()],
    }];
    // The shipment states a fact about the carton; its unit inherits it.
    let f = l.facts(&ship);
    assert_eq!(
        f.facts.iter().map(|x| x.code.as_str()).collect::<Vec<_>>(),
        ["86123450000000100001"]
    );
    assert!(judge(&f, &l.book).is_empty());
    let links: HashMap<String, Vec<String>> = [("86123450000000100001".to_string(), vec![UNIT.to_string()])].into();
    l.book.add_inherited(&links, f.facts);
    assert_eq!(l.rules(&receive("2024-01-05T15:00:00", MAH, PROV)), Vec::<&str>::new());
}

#[test]
fn recalled_and_expired_doses_given_are_flagged_not_refused() {
    let mut l = Ledger::new();
    for e in &chain()[..6] {
        l.put(e);
    }
    let mut recall = ev(
        "recall",
        Some("211"),
        "2024-03-01T10:00:00",
        PROV,
        Some(PROV),
        Some(MAH),
    );
    recall.trace_codes = vec!["86123450000000009999".into()];
    assert!(l.put(&recall).iter().all(|f| f.rule.may_resolve()));
    let found = l.put(&give("2024-03-05T09:30:00", CLINIC_A));
    assert_eq!(found.iter().map(|f| f.rule).collect::<Vec<_>>(), [Rule::RecalledUsed]);
    assert_eq!(found[0].conflict.map(|c| c.0), Some(recall.event_id));
    assert_eq!(Rule::RecalledUsed.default_action(), Action::Flag);

    let mut l = Ledger::new();
    for e in &chain()[..6] {
        l.put(e);
    }
    assert_eq!(l.rules(&give("2025-12-05T09:30:00", CLINIC_A)), ["expired_used"]);
}

#[test]
fn release_dates_and_failed_releases() {
    let mut l = Ledger::new();
    let events = chain();
    l.put(&events[0]);
    l.put(&release("2024-01-20T16:30:00", "2024-01-20", true));
    assert_eq!(l.rules(&events[2]), ["before_release"]);
    let mut l = Ledger::new();
    l.put(&events[0]);
    l.put(&release("2023-12-22T16:30:00", "2023-12-22", false));
    assert_eq!(l.rules(&events[2]), ["release_failed"]);
}

#[test]
fn a_cancelled_vaccination_frees_the_dose() {
    let mut l = Ledger::new();
    let events = chain();
    for e in &events {
        l.put(e);
    }
    // The vaccination is cancelled (注销).
    let c = ev("cancellation", None, "2024-03-05T12:00:00", CLINIC_A, None, None);
    l.seq += 1;
    l.book
        .add(cancel_facts(&c, l.seq, &[UNIT.to_string()], events[6].event_id));
    assert_eq!(l.rules(&give("2024-03-06T09:30:00", CLINIC_A)), Vec::<&str>::new());
}

#[test]
fn a_refused_delivery_may_be_sent_back_and_a_return_documented_by_its_receiver() {
    let mut l = Ledger::new();
    let events = chain();
    for e in &events[..5] {
        l.put(e);
    }
    // The clinic refuses the delivery: it may send it back, not give it.
    let mut refused = l.facts(&events[5]);
    for f in &mut refused.facts {
        f.kind = Move::ReceiveRefused;
    }
    assert!(judge(&refused, &l.book).is_empty());
    l.book.add(refused.facts);
    assert_eq!(l.rules(&give("2024-03-05T09:30:00", CLINIC_A)), ["not_holder"]);
    let back = ev(
        "return",
        Some("202"),
        "2024-02-02T09:00:00",
        CLINIC_A,
        Some(CLINIC_A),
        Some(PROV),
    );
    assert_eq!(l.rules(&back), Vec::<&str>::new());
    let back_in = ev(
        "return",
        Some("103"),
        "2024-02-03T09:00:00",
        PROV,
        Some(CLINIC_A),
        Some(PROV),
    );
    assert_eq!(l.rules(&back_in), Vec::<&str>::new());

    // A return the clinic never billed, documented by the county alone.
    let mut l = Ledger::new();
    for e in &events[..6] {
        l.put(e);
    }
    let back_in = ev(
        "return",
        Some("103"),
        "2024-02-10T09:00:00",
        PROV,
        Some(CLINIC_A),
        Some(PROV),
    );
    assert_eq!(l.rules(&back_in), Vec::<&str>::new());
    let recall = ev(
        "recall",
        Some("211"),
        "2024-02-11T09:00:00",
        PROV,
        Some(PROV),
        Some(MAH),
    );
    assert_eq!(l.rules(&recall), Vec::<&str>::new());
}

#[test]
fn moves_and_lot_moves_round_trip_their_stored_numbers() {
    for m in Move::ALL {
        assert_eq!(Move::from_i16(m.as_i16()), Some(m));
    }
    for m in [LotMove::Produced, LotMove::Released, LotMove::Recalled] {
        assert_eq!(LotMove::from_i16(m.as_i16()), Some(m));
    }
    assert_eq!(Move::from_i16(0), None);
    for r in Rule::ALL {
        assert_eq!(Rule::parse(r.as_str()), Some(r));
        assert!(r.default_action() != Action::Pending || r.may_resolve(), "{r}");
    }
}

proptest! {
    /// Whatever order the records of a true history arrive in, once all of
    /// them are in, none of them breaks a rule: what was pending resolves.
    #[test]
    fn a_true_history_judged_in_any_arrival_order_ends_clean(order in proptest::sample::subsequence((0..7usize).collect::<Vec<_>>(), 7).prop_shuffle()) {
        let events = chain();
        let mut l = Ledger::new();
        let mut facts = Vec::new();
        for &i in &order {
            let f = l.facts(&events[i]);
            // Judged on arrival: only findings a later record may resolve.
            for found in judge(&f, &l.book) {
                prop_assert!(found.rule.may_resolve(), "{:?} on arrival of {}", found, events[i].category);
            }
            l.book.add(f.facts.clone());
            l.book.add_lots(f.lot_facts.clone());
            facts.push(f);
        }
        for f in &facts {
            let again = judge(f, &l.book);
            prop_assert!(again.is_empty(), "{:?}", again);
        }
    }
}

#[test]
fn a_conflict_dated_later_flags_instead_of_refusing() {
    // Clinic B's vaccination (dated later) arrived first; clinic A's, the
    // true one, arrives second: both are given, the second is flagged.
    let mut l = Ledger::new();
    for e in &chain()[..6] {
        l.put(e);
    }
    l.put(&give("2024-03-07T09:30:00", CLINIC_B));
    let found = l.put(&give("2024-03-05T09:30:00", CLINIC_A));
    let f = found.iter().find(|f| f.rule == Rule::AdministeredTwice).unwrap();
    assert!(f.later, "{f:?}");
    assert_eq!(f.action(Action::Refuse), Action::Flag);
    // The other order: the later record is refused.
    let mut l = Ledger::new();
    for e in &chain()[..6] {
        l.put(e);
    }
    l.put(&give("2024-03-05T09:30:00", CLINIC_A));
    let found = l.put(&give("2024-03-07T09:30:00", CLINIC_B));
    let f = found.iter().find(|f| f.rule == Rule::AdministeredTwice).unwrap();
    assert!(!f.later, "{f:?}");
    assert_eq!(f.action(Action::Refuse), Action::Refuse);
}

/// The lot state as it was computed before [`Book`] kept only the deciding
/// facts: every fact kept once per (event, kind) as first added, sorted by
/// ledger order and folded. The oracle of the property test below.
fn lot_state_by_fold(facts: &[LotFact]) -> LotState {
    let mut kept: Vec<&LotFact> = Vec::new();
    for f in facts {
        if !kept.iter().any(|g| g.event_id == f.event_id && g.kind == f.kind) {
            kept.push(f);
        }
    }
    kept.sort_by_key(|f| f.seq);
    let mut s = LotState::default();
    for f in kept {
        match f.kind {
            LotMove::Produced => {
                s.produced = f.day.or(s.produced);
                s.expires = f.day2.or(s.expires);
            }
            LotMove::Released => s.released = Some((f.day, f.ok, f.event_id, f.seq)),
            LotMove::Recalled => {
                if s.recalled.is_none_or(|(at, ..)| f.at_ms < at) {
                    s.recalled = Some((f.at_ms, f.event_id, f.seq));
                }
            }
        }
    }
    s
}

proptest! {
    /// Keeping only the deciding facts of a lot gives the state the fold
    /// over all of them gives, whatever the order they are added in,
    /// with repeats (a record read from the ledger and still in flight).
    #[test]
    fn a_lot_state_from_its_deciding_facts_is_the_fold_of_all(
        raw in proptest::collection::vec(
            (0u8..6, 0u8..3, 0u64..40, 0i64..5, proptest::option::of(1u32..30), proptest::option::of(1u32..30), any::<bool>()),
            0..40,
        ),
    ) {
        let day = |d: Option<u32>| d.and_then(|d| NaiveDate::from_ymd_opt(2024, 1, d));
        // Facts of a few events; an event's facts of one kind agree (the
        // same record seen twice), so repeats are true duplicates.
        let facts: Vec<LotFact> = raw
            .iter()
            .map(|&(event, kind, _, _, _, _, _)| (event, kind))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|(event, kind)| {
                let (_, _, seq, at, d1, d2, ok) = raw.iter().find(|r| (r.0, r.1) == (event, kind)).copied().unwrap_or_default();
                LotFact {
                    lot: "8612345/L1".into(),
                    seq: seq * 8 + u64::from(event),
                    event_id: Uuid::from_u128(u128::from(event)),
                    at_ms: at,
                    kind: [LotMove::Produced, LotMove::Released, LotMove::Recalled][usize::from(kind)],
                    day: day(d1),
                    day2: day(d2),
                    ok,
                }
            })
            .collect();
        // Added in the generated order, each as often as it was drawn.
        let order: Vec<LotFact> = raw
            .iter()
            .filter_map(|r| facts.iter().find(|f| f.event_id == Uuid::from_u128(u128::from(r.0)) && f.kind.as_i16() == i16::from(r.1) + 1).cloned())
            .collect();
        let mut book = Book::new();
        book.add_lots(order.iter().cloned());
        prop_assert_eq!(book.lot("8612345/L1"), lot_state_by_fold(&order));
    }
}

/// The MAH's outbound bill of `codes` to clinic A (2 January) and the
/// clinic's receipt (3 January).
fn delivered_to_a(codes: &[&str]) -> [TraceEvent; 2] {
    let bill = |category: &str, bill: &str, time: &str, source: &str| {
        let mut e = ev(category, Some(bill), time, source, Some(MAH), Some(CLINIC_A));
        e.trace_codes = codes.iter().map(|c| c.to_string()).collect();
        e
    };
    [
        bill("outbound", "201", "2024-01-02T08:00:00", MAH),
        bill("inbound_receipt", "102", "2024-01-03T08:00:00", CLINIC_A),
    ]
}

/// The book a recall's evidence rebuilds from events alone: a receipt an
/// alert refused, a carton's shipment carried to its contents, and a
/// cancelled vaccination each count as the gateway counts them.
#[test]
fn a_recall_is_recounted_from_its_events() {
    const UNIT2: &str = "86123450000000001002";
    const CARTON: &str = "86123450000000009001";
    let id = |c: &str| c.to_string();
    let mut made = produce("2023-12-01T08:00:00");
    made.trace_codes = vec![UNIT.into(), UNIT2.into()];
    made.aggregations = vec![crate::event::AggregationLink {
        parent: CARTON.into(),
        children: vec![UNIT2.into()],
    }];
    let [sent, got] = delivered_to_a(&[UNIT]);
    let mut refusal = ev(COLD_CHAIN_ALERT, None, "2024-01-03T08:00:01", "node", None, None);
    refusal.trace_codes = vec![UNIT.into()];
    refusal.fields.insert("alert_type".into(), json!(RECEIPT_REFUSED));
    refusal
        .fields
        .insert("related_event_id".into(), json!(got.event_id.to_string()));
    let mut shipped = ev(
        "shipment",
        None,
        "2024-01-04T08:00:00",
        CARRIER,
        Some(CARRIER),
        Some(CLINIC_B),
    );
    shipped.trace_codes = Vec::new();
    shipped.aggregations = vec![crate::event::AggregationLink {
        parent: CARTON.into(),
        children: vec![UNIT2.into()],
    }];
    let mut given = ev("vaccination", None, "2024-01-05T08:00:00", CLINIC_B, None, None);
    given.trace_codes = vec![UNIT2.into()];
    let mut undone = ev("cancellation", None, "2024-01-05T09:00:00", CLINIC_B, None, None);
    undone.trace_codes = Vec::new();
    undone
        .fields
        .insert("cancels_event_id".into(), json!(given.event_id.to_string()));
    let events: Vec<(u64, TraceEvent)> = [made, sent, got, refusal, shipped, given, undone]
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e))
        .collect();
    let book = book_of_events(&events, &id);
    let codes: std::collections::BTreeSet<String> = [UNIT, UNIT2, CARTON].map(String::from).into();
    let packages: std::collections::BTreeSet<String> = [CARTON.to_string()].into();
    let contents: HashMap<String, Vec<String>> = [(CARTON.to_string(), vec![UNIT2.to_string()])].into();
    let t = RecallTally::of(&codes, &packages, &contents, &book);
    let state = |c: &str| {
        let s = &t.codes[c];
        (s.state.as_str(), s.holder.as_deref(), s.last_event.as_deref())
    };
    assert_eq!(
        state(UNIT),
        ("refused_at_receipt", Some(CLINIC_A), Some("receive_refused"))
    );
    assert_eq!(state(UNIT2), ("awaiting_receipt", Some(CLINIC_B), Some("transport")));
    assert_eq!(state(CARTON), ("awaiting_receipt", Some(CLINIC_B), Some("transport")));
    assert_eq!((t.units, t.packages, t.administered_doses, t.unknown), (2, 1, 0, 0));
    assert_eq!(t.refused, [(CLINIC_A.to_string(), 1)].into());
    assert_eq!(t.held, [(CLINIC_B.to_string(), (1, 1))].into());
    assert_eq!(t.package_states, [("awaiting_receipt".to_string(), 1)].into());

    // The same answer said otherwise is named at its first difference.
    let mut said = t.clone();
    said.administered_doses = 1;
    assert_eq!(
        said.first_difference(&t).as_deref(),
        Some("administered_doses: the answer says 1, its events give 0")
    );
    let mut said = t.clone();
    said.held.remove(CLINIC_B);
    assert!(
        said.first_difference(&t).is_some_and(|d| d.starts_with(&format!(
            "held_by (units, awaiting receipt) {CLINIC_B}: the answer says nothing"
        ))),
        "{:?}",
        said.first_difference(&t)
    );
    assert_eq!(t.first_difference(&t), None);

    // The same book as two clinics' stock.
    let all: Vec<String> = codes.iter().cloned().collect();
    let b = StockTally::of(CLINIC_B, &all, &packages, &contents, &book);
    assert_eq!(b.packages, [CARTON.to_string()].into());
    let lot = &b.lots["8612345/202311A05"];
    assert_eq!((lot.units, lot.awaiting, lot.refused), (1, 1, 0));
    assert_eq!(lot.codes, [UNIT2.to_string()].into());
    let a = StockTally::of(CLINIC_A, &all, &packages, &contents, &book);
    let lot = &a.lots["8612345/202311A05"];
    assert_eq!((lot.units, lot.awaiting, lot.refused), (0, 0, 1));
    assert!(a.packages.is_empty());
    assert_eq!(
        a.first_difference(&b).as_deref(),
        Some(
            "packages: the answer lists [] that its events do not put in stock, and its events put [\"86123450000000009001\"] in stock that the answer does not list"
        )
    );
}

/// A carton whose every dose was given is an empty box: `emptied` in a
/// recall, not stock of the clinic that still has it.
#[test]
fn a_carton_whose_doses_were_all_given_is_emptied() {
    const UNIT2: &str = "86123450000000001002";
    const CARTON: &str = "86123450000000009001";
    let id = |c: &str| c.to_string();
    let link = crate::event::AggregationLink {
        parent: CARTON.into(),
        children: vec![UNIT.into(), UNIT2.into()],
    };
    let mut made = produce("2023-12-01T08:00:00");
    made.trace_codes = vec![UNIT.into(), UNIT2.into(), CARTON.into()];
    made.aggregations = vec![link.clone()];
    let [sent, got] = delivered_to_a(&[UNIT, UNIT2, CARTON]);
    let give = |code: &str, time: &str| {
        let mut e = ev("vaccination", None, time, CLINIC_A, None, None);
        e.trace_codes = vec![code.into()];
        e
    };
    let codes: std::collections::BTreeSet<String> = [UNIT, UNIT2, CARTON].map(String::from).into();
    let packages: std::collections::BTreeSet<String> = [CARTON.to_string()].into();
    let contents: HashMap<String, Vec<String>> = [(CARTON.to_string(), vec![UNIT.into(), UNIT2.into()])].into();
    let all: Vec<String> = codes.iter().cloned().collect();
    let tally = |events: Vec<TraceEvent>| {
        let events: Vec<(u64, TraceEvent)> = events.into_iter().enumerate().map(|(i, e)| (i as u64 + 1, e)).collect();
        let book = book_of_events(&events, &id);
        (
            RecallTally::of(&codes, &packages, &contents, &book),
            StockTally::of(CLINIC_A, &all, &packages, &contents, &book),
        )
    };
    // One dose left in the carton: it is stock.
    let (r, s) = tally(vec![
        made.clone(),
        sent.clone(),
        got.clone(),
        give(UNIT, "2024-01-04T08:00:00"),
    ]);
    assert_eq!(r.codes[CARTON].state, "held");
    assert_eq!((s.packages.len(), s.emptied_packages.len()), (1, 0));
    // Both given: an empty box.
    let (r, s) = tally(vec![
        made,
        sent,
        got,
        give(UNIT, "2024-01-04T08:00:00"),
        give(UNIT2, "2024-01-04T09:00:00"),
    ]);
    assert_eq!(r.codes[CARTON].state, "emptied");
    assert_eq!(r.codes[CARTON].holder.as_deref(), Some(CLINIC_A));
    assert_eq!(r.package_states, [("emptied".to_string(), 1)].into());
    assert_eq!((s.packages.len(), s.emptied_packages.len()), (0, 1));
    assert_eq!(r.administered_doses, 2);
}
