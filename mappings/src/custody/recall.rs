//! Where each code of a lot is, counted as a recall answer counts it, and
//! the same book rebuilt from the events alone. The gateway answers a
//! recall from its stored custody facts; a reader holding the answer's
//! evidence (each event with its proof) rebuilds the book with
//! [`book_of_events`] and recounts with [`RecallTally::of`]: the two must be
//! equal, or the answer says something its proven events do not.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use uuid::Uuid;

use super::{Book, Custody, Move, cancel_facts, facts_of};
use crate::event::TraceEvent;

/// The category of the node-written cold-chain alerts (gateway `coldchain`).
pub const COLD_CHAIN_ALERT: &str = "cold_chain_alert";
/// The alert type of a receipt the cold-chain rules refused.
pub const RECEIPT_REFUSED: &str = "receipt_refused";

/// One code's place in a recall.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeState {
    /// `package` (the parent of a packaging link) or `unit`.
    pub package: bool,
    /// `unknown`, `held`, `awaiting_receipt`, `in_transit`,
    /// `refused_at_receipt`, `administered` or `destroyed`.
    pub state: String,
    /// The entity it is with (the sender while in transit).
    pub holder: Option<String>,
    /// The kind of its latest live fact ([`Move::as_str`]).
    pub last_event: Option<String>,
}

impl std::fmt::Debug for CodeState {
    /// As messages name it: `unit held by X (last: receive)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.package { "package" } else { "unit" };
        write!(f, "{kind} {}", self.state)?;
        if let Some(h) = &self.holder {
            write!(f, " by {h}")?;
        }
        write!(f, " (last: {})", self.last_event.as_deref().unwrap_or("none"))
    }
}

/// The counts of a recall answer, by entity id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecallTally {
    /// Unit codes (not packages).
    pub units: usize,
    /// Package codes.
    pub packages: usize,
    /// Packages by state.
    pub package_states: BTreeMap<String, usize>,
    /// Per holder: (units in its stock, of which awaiting its receipt).
    pub held: BTreeMap<String, (usize, usize)>,
    /// Units on their way with no known receiver, by sender.
    pub in_transit: BTreeMap<String, usize>,
    /// Units refused at receipt, by the refusing receiver.
    pub refused: BTreeMap<String, usize>,
    /// Per vaccinating unit: (units, doses).
    pub administered: BTreeMap<String, (usize, usize)>,
    /// Doses given in all.
    pub administered_doses: usize,
    /// Units destroyed or lost, by entity.
    pub destroyed: BTreeMap<String, usize>,
    /// Units of unknown state.
    pub unknown: usize,
    /// Every code's state.
    pub codes: BTreeMap<String, CodeState>,
}

impl RecallTally {
    /// The tally of `codes` (of which `packages` are packages, with their
    /// contents among `codes` in `contents`) from the custody facts in
    /// `book`. A package with a holder none of whose contents is still with
    /// that holder is `emptied`.
    #[must_use]
    pub fn of(
        codes: &BTreeSet<String>,
        packages: &BTreeSet<String>,
        contents: &HashMap<String, Vec<String>>,
        book: &Book,
    ) -> RecallTally {
        let mut t = RecallTally::default();
        for code in codes {
            let hist = book.history(code);
            let now = Custody::after(&hist);
            // A delivery counts as received once its receiver recorded a
            // receipt after the last dispatch.
            let received = |to: &str| {
                hist.iter()
                    .rev()
                    .take_while(|f| !matches!(f.kind, Move::Dispatch | Move::DispatchBack))
                    .any(|f| f.actor == to && matches!(f.kind, Move::Receive | Move::ReceiveBack))
            };
            let (state, holder): (&'static str, Option<&str>) = match &now {
                Custody::Unknown => ("unknown", None),
                Custody::Held(h) => ("held", Some(*h)),
                Custody::Transit { to: Some(to), .. } if !received(to) => ("awaiting_receipt", Some(*to)),
                Custody::Transit { to: Some(to), .. } => ("held", Some(*to)),
                Custody::Transit { from, to: None } => ("in_transit", Some(*from)),
                Custody::Refused(at) => ("refused_at_receipt", Some(*at)),
                Custody::Administered(by, _) => ("administered", Some(*by)),
                Custody::Destroyed(by) => ("destroyed", Some(*by)),
            };
            let package = packages.contains(code);
            let state = match holder {
                Some(h)
                    if package && matches!(state, "held" | "awaiting_receipt") && emptied(code, h, contents, book) =>
                {
                    "emptied"
                }
                _ => state,
            };
            t.codes.insert(
                code.clone(),
                CodeState {
                    package,
                    state: state.to_string(),
                    holder: holder.map(str::to_string),
                    last_event: hist.last().map(|f| f.kind.as_str().to_string()),
                },
            );
            if package {
                t.packages += 1;
                *t.package_states.entry(state.to_string()).or_insert(0) += 1;
                continue;
            }
            t.units += 1;
            let add = |m: &mut BTreeMap<String, usize>, k: &str| *m.entry(k.to_string()).or_insert(0) += 1;
            match &now {
                Custody::Unknown => t.unknown += 1,
                Custody::Held(h) => t.held.entry(h.to_string()).or_default().0 += 1,
                Custody::Transit { to: Some(to), .. } => {
                    let e = t.held.entry(to.to_string()).or_default();
                    e.0 += 1;
                    if state == "awaiting_receipt" {
                        e.1 += 1;
                    }
                }
                Custody::Transit { from, to: None } => add(&mut t.in_transit, from),
                Custody::Refused(at) => add(&mut t.refused, at),
                Custody::Administered(by, n) => {
                    let e = t.administered.entry(by.to_string()).or_default();
                    e.0 += 1;
                    e.1 += usize::from(*n);
                    t.administered_doses += usize::from(*n);
                }
                Custody::Destroyed(by) => add(&mut t.destroyed, by),
            }
        }
        t
    }

    /// The first difference between what an answer says (`self`) and what
    /// its events give (`other`), named for a person: `None` when equal.
    #[must_use]
    pub fn first_difference(&self, other: &RecallTally) -> Option<String> {
        fn map<V: PartialEq + std::fmt::Debug>(
            what: &str,
            said: &BTreeMap<String, V>,
            got: &BTreeMap<String, V>,
        ) -> Option<String> {
            let show = |v: Option<&V>| v.map_or_else(|| "nothing".to_string(), |v| format!("{v:?}"));
            let keys: BTreeSet<&String> = said.keys().chain(got.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (a, b) = (said.get(k), got.get(k));
                (a != b).then(|| format!("{what} {k}: the answer says {}, its events give {}", show(a), show(b)))
            })
        }
        let scalar = |what: &str, a: usize, b: usize| {
            (a != b).then(|| format!("{what}: the answer says {a}, its events give {b}"))
        };
        scalar("units", self.units, other.units)
            .or_else(|| scalar("packages", self.packages, other.packages))
            .or_else(|| scalar("unknown_units", self.unknown, other.unknown))
            .or_else(|| scalar("administered_doses", self.administered_doses, other.administered_doses))
            .or_else(|| map("code", &self.codes, &other.codes))
            .or_else(|| map("held_by (units, awaiting receipt)", &self.held, &other.held))
            .or_else(|| map("in_transit from", &self.in_transit, &other.in_transit))
            .or_else(|| map("refused_at_receipt by", &self.refused, &other.refused))
            .or_else(|| {
                map(
                    "administered_by (units, doses)",
                    &self.administered,
                    &other.administered,
                )
            })
            .or_else(|| map("destroyed by", &self.destroyed, &other.destroyed))
            .or_else(|| map("package_states", &self.package_states, &other.package_states))
    }
}

/// Every trace code `ev` names: its own, then each packaging link's parent
/// and children.
#[must_use]
pub fn codes_of(ev: &TraceEvent) -> Vec<String> {
    let mut out = ev.trace_codes.clone();
    for a in &ev.aggregations {
        out.push(a.parent.clone());
        out.extend(a.children.iter().cloned());
    }
    out
}

/// The custody book that `events` (each with its leaf index) state, as the
/// gateway records it at ingest: a cancellation frees the codes of the
/// event it cancels (which must be among `events`), a receipt that a
/// cold-chain alert among `events` refused is a refused receipt, and a
/// package's transports are its contents' too, through the packaging links
/// the events state. `party` turns a party code into the entity id.
#[must_use]
pub fn book_of_events(events: &[(u64, TraceEvent)], party: &dyn Fn(&str) -> String) -> Book {
    let by_id: HashMap<Uuid, &TraceEvent> = events.iter().map(|(_, e)| (e.event_id, e)).collect();
    let refused: HashSet<Uuid> = events
        .iter()
        .filter(|(_, e)| e.category == COLD_CHAIN_ALERT && e.field_str("alert_type") == Some(RECEIPT_REFUSED))
        .filter_map(|(_, e)| e.field_str("related_event_id").and_then(|id| Uuid::parse_str(id).ok()))
        .collect();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for a in events.iter().flat_map(|(_, e)| &e.aggregations) {
        let kids = children.entry(a.parent.clone()).or_default();
        for c in &a.children {
            if !kids.contains(c) {
                kids.push(c.clone());
            }
        }
    }
    let mut book = Book::new();
    for (seq, ev) in events {
        let mut f = facts_of(ev, *seq, party);
        if ev.category == "cancellation"
            && let Some(target) = ev.field_str("cancels_event_id").and_then(|t| Uuid::parse_str(t).ok())
        {
            f.facts = match by_id.get(&target) {
                Some(t) => cancel_facts(ev, *seq, &codes_of(t), target),
                None => Vec::new(),
            };
        }
        if refused.contains(&ev.event_id) {
            for x in &mut f.facts {
                if x.kind == Move::Receive {
                    x.kind = Move::ReceiveRefused;
                }
            }
        }
        book.add_inherited(&children, f.facts);
        book.add_lots(f.lot_facts);
    }
    book
}

/// What one entity holds now, by lot, as a stock answer counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockTally {
    /// Per lot (`product/lot`, or the code's product prefix and `/?` when
    /// no fact names a lot): units in its stock, of which awaiting its
    /// receipt, units refused at its receipt, and those units' codes.
    pub lots: BTreeMap<String, LotStock>,
    /// Packages in its stock, by code.
    pub packages: BTreeSet<String>,
    /// Packages it still holds whose contents are none with it any more
    /// (given, destroyed or moved on): empty boxes, not stock.
    pub emptied_packages: BTreeSet<String>,
}

/// Whether package `code`, with `holder`, has none of its `contents` with
/// that holder any more (held, or on its way to it). A package whose
/// contents are not known is not emptied.
fn emptied(code: &str, holder: &str, contents: &HashMap<String, Vec<String>>, book: &Book) -> bool {
    let Some(kids) = contents.get(code).filter(|k| !k.is_empty()) else {
        return false;
    };
    !kids.iter().any(|k| {
        let hist = book.history(k);
        match Custody::after(&hist) {
            Custody::Held(h) => h == holder,
            Custody::Transit { to: Some(to), .. } => to == holder,
            _ => false,
        }
    })
}

/// One lot of a [`StockTally`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LotStock {
    /// Units in stock (awaiting receipt included).
    pub units: usize,
    /// Of which deliveries awaiting the holder's receipt.
    pub awaiting: usize,
    /// Units refused at its receipt (with it, not in its stock).
    pub refused: usize,
    /// The codes of all three.
    pub codes: BTreeSet<String>,
}

impl StockTally {
    /// The stock of `holder` among `candidates` (of which `packages` are
    /// packages, with their contents among the candidates in `contents`),
    /// from the custody facts in `book`. A package none of whose contents
    /// is in that stock any more is counted as emptied, not in stock.
    #[must_use]
    pub fn of(
        holder: &str,
        candidates: &[String],
        packages: &BTreeSet<String>,
        contents: &HashMap<String, Vec<String>>,
        book: &Book,
    ) -> StockTally {
        let mut t = StockTally::default();
        // What is in its stock (held or awaiting its receipt), packages
        // and units alike: a package none of whose contents is among them
        // is emptied.
        let mut in_stock: HashSet<&str> = HashSet::new();
        let mut held_packages: Vec<&String> = Vec::new();
        for code in candidates {
            let hist = book.history(code);
            let (held, awaiting, refused) = match Custody::after(&hist) {
                Custody::Held(h) if h == holder => (1, 0, 0),
                Custody::Transit { to: Some(to), .. } if to == holder => (1, 1, 0),
                Custody::Refused(at) if at == holder => (0, 0, 1),
                _ => continue,
            };
            if held == 1 {
                in_stock.insert(code);
            }
            if packages.contains(code) {
                if held == 1 {
                    held_packages.push(code);
                }
                continue;
            }
            let lot = hist
                .iter()
                .rev()
                .find_map(|f| f.lot.clone())
                .unwrap_or_else(|| format!("{}/?", &code[..7.min(code.len())]));
            let e = t.lots.entry(lot).or_default();
            e.units += held;
            e.awaiting += awaiting;
            e.refused += refused;
            e.codes.insert(code.clone());
        }
        for p in held_packages {
            let kids = contents.get(p.as_str()).map(Vec::as_slice).unwrap_or_default();
            // (A package is the parent of some packaging link; its contents
            // in stock are among the candidates, so `contents` may be read
            // among them only.)
            if !kids.iter().any(|k| in_stock.contains(k.as_str())) {
                t.emptied_packages.insert(p.clone());
            } else {
                t.packages.insert(p.clone());
            }
        }
        t
    }

    /// Every code it counts: the units' (by lot), then the packages', then
    /// the emptied packages'.
    #[must_use]
    pub fn codes(&self) -> Vec<String> {
        self.lots
            .values()
            .flat_map(|l| l.codes.iter().cloned())
            .chain(self.packages.iter().cloned())
            .chain(self.emptied_packages.iter().cloned())
            .collect()
    }

    /// The first difference between what an answer says (`self`) and what
    /// its events give (`other`): `None` when equal.
    #[must_use]
    pub fn first_difference(&self, other: &StockTally) -> Option<String> {
        if self.emptied_packages != other.emptied_packages {
            let a: Vec<&String> = self.emptied_packages.difference(&other.emptied_packages).collect();
            let b: Vec<&String> = other.emptied_packages.difference(&self.emptied_packages).collect();
            return Some(format!(
                "emptied packages: the answer lists {a:?} that its events do not empty, and its events empty {b:?} that the answer does not list"
            ));
        }
        if self.packages != other.packages {
            let a: Vec<&String> = self.packages.difference(&other.packages).collect();
            let b: Vec<&String> = other.packages.difference(&self.packages).collect();
            return Some(format!(
                "packages: the answer lists {a:?} that its events do not put in stock, and its events put {b:?} in stock that the answer does not list"
            ));
        }
        let keys: BTreeSet<&String> = self.lots.keys().chain(other.lots.keys()).collect();
        keys.into_iter().find_map(|k| {
            let (a, b) = (self.lots.get(k), other.lots.get(k));
            if a == b {
                return None;
            }
            let (a, b) = (a.cloned().unwrap_or_default(), b.cloned().unwrap_or_default());
            if let Some(c) = a.codes.difference(&b.codes).next() {
                return Some(format!(
                    "lot {k}: the answer lists {c}, which its events do not leave in this stock"
                ));
            }
            if let Some(c) = b.codes.difference(&a.codes).next() {
                return Some(format!(
                    "lot {k}: its events leave {c} in this stock, which the answer does not list"
                ));
            }
            Some(format!(
                "lot {k}: the answer says {} unit(s), {} awaiting receipt, {} refused; its events give {}, {}, {}",
                a.units, a.awaiting, a.refused, b.units, b.awaiting, b.refused
            ))
        })
    }
}
