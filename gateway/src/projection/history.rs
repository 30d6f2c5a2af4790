//! How a trace code's custody history is stored: one row per code
//! (`custody_codes`), its value the code's facts one after another, each a
//! format byte followed by the fact in [postcard]'s compact,
//! self-delimiting encoding. Appending facts to a history is therefore a
//! concatenation the database does itself (no read), and reading a code's
//! history is one row, not one row per fact: the judgement of a 50-code
//! bill reads 50 rows instead of ~300 (see BENCHMARKS.md, "Custody rules").
//!
//! The code is the row's key and is not repeated in its facts; a fact's
//! `seq` is the leaf index of the transaction that stated it.

use mappings::custody::{Fact, Move};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The only format so far. A reader meeting another byte stops with an
/// error naming the code and the offset, rather than guessing.
const FORMAT_1: u8 = 1;

/// Format 1 of one fact (field order is the format: append, never reorder).
#[derive(Serialize, Deserialize)]
struct V1<'a> {
    seq: u64,
    at_ms: i64,
    kind: i16,
    event_id: [u8; 16],
    actor: &'a str,
    peer: Option<&'a str>,
    doses: u16,
    cancels: Option<[u8; 16]>,
    lot: Option<&'a str>,
}

/// Appends the stored form of `fact`, stated by the transaction at leaf
/// `seq`, to `out`.
pub(crate) fn encode_into(out: &mut Vec<u8>, seq: u64, fact: &Fact) -> Result<(), String> {
    let v = V1 {
        seq,
        at_ms: fact.at_ms,
        kind: fact.kind.as_i16(),
        event_id: *fact.event_id.as_bytes(),
        actor: &fact.actor,
        peer: fact.peer.as_deref(),
        doses: fact.doses,
        cancels: fact.cancels.map(|c| *c.as_bytes()),
        lot: fact.lot.as_deref(),
    };
    out.push(FORMAT_1);
    let bytes = postcard::to_allocvec(&v).map_err(|e| format!("encoding a custody fact of {}: {e}", fact.code))?;
    out.extend_from_slice(&bytes);
    Ok(())
}

/// The facts of `code` stored in `bytes` (in the order they were appended).
pub(crate) fn decode(code: &str, bytes: &[u8]) -> Result<Vec<Fact>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((&format, body)) = rest.split_first() {
        let at = bytes.len() - rest.len();
        if format != FORMAT_1 {
            return Err(format!(
                "custody history of {code}: unknown fact format {format} at byte {at} (written by a newer vaxgate?)"
            ));
        }
        let (v, next) = postcard::take_from_bytes::<V1<'_>>(body)
            .map_err(|e| format!("custody history of {code}: fact at byte {at} is damaged: {e}"))?;
        let kind = Move::from_i16(v.kind)
            .ok_or_else(|| format!("custody history of {code}: unknown move {} at byte {at}", v.kind))?;
        out.push(Fact {
            code: code.to_string(),
            seq: v.seq,
            event_id: Uuid::from_bytes(v.event_id),
            at_ms: v.at_ms,
            kind,
            actor: v.actor.to_string(),
            peer: v.peer.map(str::to_string),
            doses: v.doses,
            cancels: v.cancels.map(Uuid::from_bytes),
            lot: v.lot.map(str::to_string),
        });
        rest = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fact(kind: Move, peer: Option<&str>, cancels: Option<Uuid>, lot: Option<&str>) -> Fact {
        Fact {
            code: "86123450010000000001".into(),
            seq: 0,
            event_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            at_ms: 1_735_689_600_000,
            kind,
            actor: "js-cdc".into(),
            peer: peer.map(str::to_string),
            doses: 1,
            cancels,
            lot: lot.map(str::to_string),
        }
    }

    /// The stored bytes of one fact, fixed: a change here is a format
    /// change and needs a new format byte, not an edit of this vector.
    #[test]
    fn format_1_known_answer() {
        let mut out = Vec::new();
        encode_into(
            &mut out,
            300,
            &fact(Move::Dispatch, Some("nj-cdc"), None, Some("8612345|202408A01")),
        )
        .unwrap();
        assert_eq!(
            hex::encode(&out),
            concat!(
                "01",                                     // format 1
                "ac02",                                   // seq 300 (varint)
                "80f0cbf28365",                           // at_ms 1735689600000 (zigzag varint)
                "04",                                     // kind 2 = dispatch (zigzag)
                "0123456789abcdef0123456789abcdef",       // event id
                "066a732d636463",                         // actor "js-cdc"
                "01066e6a2d636463",                       // peer Some("nj-cdc")
                "01",                                     // doses 1
                "00",                                     // cancels None
                "0111383631323334357c323032343038413031"  // lot Some("8612345|202408A01")
            )
        );
    }

    #[test]
    fn concatenated_histories_decode_in_order() {
        let a = fact(Move::Produce, None, None, Some("8612345|L1"));
        let b = fact(Move::Cancel, None, Some(Uuid::from_u128(7)), None);
        let mut one = Vec::new();
        encode_into(&mut one, 1, &a).unwrap();
        let mut two = Vec::new();
        encode_into(&mut two, 2, &b).unwrap();
        one.extend_from_slice(&two); // what `facts || excluded.facts` stores
        let got = decode(&a.code, &one).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].seq, got[0].kind, got[0].lot.as_deref()),
            (1, Move::Produce, Some("8612345|L1"))
        );
        assert_eq!(
            (got[1].seq, got[1].kind, got[1].cancels),
            (2, Move::Cancel, Some(Uuid::from_u128(7)))
        );
        assert!(got.iter().all(|f| f.code == a.code));
    }

    #[test]
    fn damage_is_an_error_naming_the_code_and_offset() {
        let mut b = Vec::new();
        encode_into(&mut b, 1, &fact(Move::Receive, Some("mah"), None, None)).unwrap();
        let good = b.len();
        encode_into(&mut b, 2, &fact(Move::Receive, Some("mah"), None, None)).unwrap();
        let mut unknown = b.clone();
        unknown[good] = 9;
        let e = decode("C1", &unknown).unwrap_err();
        assert!(
            e.contains("C1") && e.contains(&format!("byte {good}")) && e.contains("format 9"),
            "{e}"
        );
        let e = decode("C1", &b[..b.len() - 3]).unwrap_err();
        assert!(e.contains("C1") && e.contains("damaged"), "{e}");
        assert!(decode("C1", &[]).unwrap().is_empty());
    }

    fn any_move() -> impl Strategy<Value = Move> {
        proptest::sample::select(Move::ALL.to_vec())
    }

    proptest! {
        /// Whatever was stored, in whatever pieces it was appended, reads
        /// back as the same facts in the same order.
        #[test]
        fn round_trip(facts in proptest::collection::vec(
            (any::<u64>(), any::<i64>(), any_move(), any::<u128>(), "\\PC{0,12}",
             proptest::option::of("\\PC{0,12}"), any::<u16>(), proptest::option::of(any::<u128>()),
             proptest::option::of("\\PC{0,20}")), 0..8),
            split in 0usize..8)
        {
            let facts: Vec<Fact> = facts.into_iter().map(|(seq, at_ms, kind, id, actor, peer, doses, cancels, lot)| Fact {
                code: "X".into(), seq, event_id: Uuid::from_u128(id), at_ms, kind, actor, peer, doses,
                cancels: cancels.map(Uuid::from_u128), lot,
            }).collect();
            let split = split.min(facts.len());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for f in &facts[..split] { encode_into(&mut a, f.seq, f).unwrap(); }
            for f in &facts[split..] { encode_into(&mut b, f.seq, f).unwrap(); }
            a.extend_from_slice(&b);
            let got = decode("X", &a).unwrap();
            prop_assert_eq!(got.len(), facts.len());
            for (g, f) in got.iter().zip(&facts) {
                prop_assert_eq!((g.seq, g.at_ms, g.kind, g.event_id, &g.actor, &g.peer, g.doses, g.cancels, &g.lot),
                                (f.seq, f.at_ms, f.kind, f.event_id, &f.actor, &f.peer, f.doses, f.cancels, &f.lot));
            }
        }
    }
}
