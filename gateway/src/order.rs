//! The order of cold-chain judgements and appends (R11.2).
//!
//! An inbound receipt is judged against the shipments and reading sets
//! before it in the ledger. So a batch holding receipts must not be judged
//! while a batch of shipments or readings that reached the gateway before it
//! is still being appended, and no later such batch may be appended before
//! it. Receipt batches among themselves, and shipment/reading batches among
//! themselves, do not affect each other and go side by side; batches of
//! anything else do not take part at all.
//!
//! [`IngestOrder`] is that rule: two kinds of batches share a room, one kind
//! at a time; a batch that holds both kinds needs the room alone. Entry is
//! first come, first served (a waiting receipt batch holds back later
//! shipment batches and the other way round), so neither kind starves.

use std::sync::Mutex;

use tokio::sync::Notify;

/// What a batch holds, as far as the order of judgements goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shipments or cold-chain reading sets: what receipts are judged against.
    Evidence,
    /// Inbound receipts.
    Receipts,
    /// Both: judged against its own evidence and anyone else's.
    Both,
}

impl Kind {
    /// The kind of a batch of these dataset categories; `None` when it has
    /// neither receipts nor what they are judged against.
    pub fn of<'a>(categories: impl IntoIterator<Item = &'a str>) -> Option<Kind> {
        let (mut receipts, mut evidence) = (false, false);
        for c in categories {
            match c {
                "inbound_receipt" => receipts = true,
                "shipment" | "cold_chain_readings" => evidence = true,
                _ => {}
            }
        }
        match (receipts, evidence) {
            (true, true) => Some(Kind::Both),
            (true, false) => Some(Kind::Receipts),
            (false, true) => Some(Kind::Evidence),
            (false, false) => None,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct IngestOrder {
    /// Arrivals wait here in order while the room is held by the other kind.
    turnstile: tokio::sync::Mutex<()>,
    /// The kind in the room and how many batches of it.
    inside: Mutex<Option<(Kind, usize)>>,
    /// Woken when the room empties.
    emptied: Notify,
}

/// A batch's place in the room; leaving it (drop) lets the next kind in.
#[derive(Debug)]
pub struct Entered<'a> {
    order: &'a IngestOrder,
}

impl IngestOrder {
    /// An empty room.
    #[must_use]
    pub fn new() -> IngestOrder {
        IngestOrder::default()
    }

    /// Waits until a batch of `kind` may be judged and appended.
    pub async fn enter(&self, kind: Kind) -> Entered<'_> {
        let _turn = self.turnstile.lock().await;
        loop {
            // Registered before looking, so an emptying in between is seen.
            let emptied = self.emptied.notified();
            {
                let mut inside = self.inside.lock().unwrap_or_else(|p| p.into_inner());
                match *inside {
                    None => {
                        *inside = Some((kind, 1));
                        break;
                    }
                    Some((k, ref mut n)) if k == kind && kind != Kind::Both => {
                        *n += 1;
                        break;
                    }
                    Some(_) => {}
                }
            }
            emptied.await;
        }
        Entered { order: self }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut inside = self.order.inside.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = inside.as_mut() {
            *n -= 1;
            if *n == 0 {
                *inside = None;
                drop(inside);
                self.order.emptied.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    async fn entered_within(order: &IngestOrder, kind: Kind) -> bool {
        tokio::time::timeout(Duration::from_millis(50), order.enter(kind))
            .await
            .is_ok()
    }

    #[test]
    fn a_batch_is_classed_by_its_categories() {
        assert_eq!(Kind::of(["vaccination", "aefi_report"]), None);
        assert_eq!(Kind::of(["vaccination", "shipment"]), Some(Kind::Evidence));
        assert_eq!(Kind::of(["cold_chain_readings"]), Some(Kind::Evidence));
        assert_eq!(Kind::of(["outbound", "inbound_receipt"]), Some(Kind::Receipts));
        assert_eq!(Kind::of(["inbound_receipt", "cold_chain_readings"]), Some(Kind::Both));
    }

    #[tokio::test]
    async fn one_kind_shares_the_room() {
        let order = IngestOrder::new();
        let a = order.enter(Kind::Receipts).await;
        let b = order.enter(Kind::Receipts).await;
        drop((a, b));
        let _c = order.enter(Kind::Evidence).await;
        let _d = order.enter(Kind::Evidence).await;
        assert!(entered_within(&order, Kind::Evidence).await);
    }

    #[tokio::test]
    async fn kinds_exclude_each_other_and_both_is_alone() {
        let order = IngestOrder::new();
        let held = order.enter(Kind::Evidence).await;
        assert!(!entered_within(&order, Kind::Receipts).await);
        assert!(!entered_within(&order, Kind::Both).await);
        drop(held);
        let both = order.enter(Kind::Both).await;
        assert!(!entered_within(&order, Kind::Both).await);
        assert!(!entered_within(&order, Kind::Evidence).await);
        drop(both);
        assert!(entered_within(&order, Kind::Receipts).await);
    }

    #[tokio::test]
    async fn first_come_first_served() {
        // Evidence inside, a receipt batch waiting: a later evidence batch
        // waits behind the receipt batch instead of joining the room.
        let order = Arc::new(IngestOrder::new());
        let held = order.enter(Kind::Evidence).await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (o, l) = (order.clone(), log.clone());
        let receipts = tokio::spawn(async move {
            let _g = o.enter(Kind::Receipts).await;
            l.lock().unwrap().push("receipts");
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (o, l) = (order.clone(), log.clone());
        let later = tokio::spawn(async move {
            let _g = o.enter(Kind::Evidence).await;
            l.lock().unwrap().push("later evidence");
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(log.lock().unwrap().is_empty(), "nobody enters while evidence is inside");
        drop(held);
        receipts.await.unwrap();
        later.await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["receipts", "later evidence"]);
    }
}
