//! Field commitments: what a record says, member by member, committed to in
//! its ledger transaction so that every answer built from it can be checked
//! by its reader, with personal members left out.
//!
//! An event's *members* are the top-level members of its JSON form (the
//! [`TraceEvent`] without personal data, exactly as queries return it),
//! each member of its `fields` object and each personal element:
//!
//! | member | path |
//! |---|---|
//! | top-level member `k` (not `fields`, not `pii`) | `k` |
//! | business element `k` (`fields.k`) | `fields/k` |
//! | personal element `k` | `pii/k` |
//!
//! Each member is committed with its own 16-byte salt, derived from a
//! 32-byte record seed the gateway gets when it opens the record (so that
//! it can be derived again from the ledger, by the node only):
//!
//! ```text
//! field(x)      = u32_be(len(x)) ‖ x
//! public_seed   = SM3(field("vaxgate/field-seed-public-v1") ‖ field(seed))
//! personal_seed = SM3(field("vaxgate/field-seed-personal-v1") ‖ field(seed))
//! salts         = SM3(s ‖ u32_be(0)) ‖ SM3(s ‖ u32_be(1)) ‖ …, cut in
//!                 16-byte salts given to the members in ascending path
//!                 order; s = personal_seed for pii/… members, else public_seed
//! digest        = SM3(salt ‖ u16_be(len(path)) ‖ path ‖ canonical JSON of the value)
//!                 (one SM3 block for most members; paths are member names,
//!                 far below 65,536 bytes)
//! fields_root   = SM3(field("vaxgate/fields-v1") ‖ field(u32_be(n))
//!                     ‖ field(d_1) ‖ … ‖ field(d_n))   digests sorted ascending
//! ```
//!
//! Readers never derive salts (they are given them), so only `digest` and
//! `fields_root` are part of what a reader checks; how the node derives
//! salts is its own affair, documented here for auditors.
//!
//! A reader is given the members it may see with their salts
//! ([`Disclosure::salts`]) and the digests of the others
//! ([`Disclosure::withheld`]); [`check`] recomputes the root, which must
//! equal the `fields_root` of the transaction its inclusion proof covers.
//! The salts of withheld members are never given, so their digests say
//! nothing of their values; the personal salts derive from a seed of their
//! own, so the public seed the gateway keeps beside its projection opens no
//! personal member. A record stored in the clear (a node-written alert)
//! takes its seed from its payload ([`plain_seed`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sm3::{Digest, Sm3};

use crate::canonical::{
    keys_sorted, write_aggregations, write_canonical, write_party, write_string, write_strings, write_time,
};
use crate::event::TraceEvent;

/// Bytes of a member's salt.
pub const SALT_LEN: usize = 16;

/// Path prefix of business elements.
pub const FIELDS_PREFIX: &str = "fields/";
/// Path prefix of personal elements.
pub const PERSONAL_PREFIX: &str = "pii/";

/// Why a disclosure does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitmentError {
    /// A shown member has no salt.
    #[error("member {0} is shown but has no salt")]
    MissingSalt(String),
    /// A salt names a member that is not shown.
    #[error("a salt is given for member {0}, which is not shown")]
    ExtraSalt(String),
    /// A salt or digest is not the hex it must be.
    #[error("{what} {value:?} is not {len} bytes of lowercase hex")]
    BadHex {
        /// What it is (`salt of fields/lot_number`, `withheld digest 3`).
        what: String,
        /// The offending text.
        value: String,
        /// Bytes expected.
        len: usize,
    },
    /// The event is not a JSON object.
    #[error("the event is not a JSON object")]
    NotAnObject,
}

fn field(h: &mut Sm3, x: &[u8]) {
    h.update((x.len() as u32).to_be_bytes());
    h.update(x);
}

fn tagged(tag: &str) -> Sm3 {
    let mut h = Sm3::new();
    field(&mut h, tag.as_bytes());
    h
}

/// The seeds a record's salts derive from.
#[derive(Clone, PartialEq, Eq)]
pub struct Seeds {
    /// Salts of the event's own members.
    pub public: [u8; 32],
    /// Salts of its personal members.
    pub personal: [u8; 32],
}

impl std::fmt::Debug for Seeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seeds(..)")
    }
}

impl Seeds {
    /// The seeds of a record seed.
    #[must_use]
    pub fn of(seed: &[u8; 32]) -> Seeds {
        let derive = |tag| {
            let mut h = tagged(tag);
            field(&mut h, seed);
            h.finalize().into()
        };
        Seeds {
            public: derive("vaxgate/field-seed-public-v1"),
            personal: derive("vaxgate/field-seed-personal-v1"),
        }
    }
}

/// The record seed of a record stored in the clear (a node-written alert,
/// which holds no personal data): `SM3(field("vaxgate/field-seed-plain-v1")
/// ‖ field(payload))`. Its salts hide nothing from whoever has the
/// payload; they are there so that every answer is checked the same way.
#[must_use]
pub fn plain_seed(payload: &[u8]) -> [u8; 32] {
    let mut h = tagged("vaxgate/field-seed-plain-v1");
    field(&mut h, payload);
    h.finalize().into()
}

/// `n` salts from seed `s` (the public or the personal one): two per SM3
/// block of the stream `SM3(s ‖ u32_be(j))`, one compression each.
#[must_use]
pub fn salt_stream(s: &[u8; 32], n: usize) -> Vec<[u8; SALT_LEN]> {
    Salts::new(s).take(n).collect()
}

/// The salts of seed `s` one after another (endless; see [`salt_stream`]),
/// one SM3 block computed for every second salt.
struct Salts<'s> {
    seed: &'s [u8; 32],
    /// Index of the next salt.
    i: usize,
    /// `SM3(s ‖ u32_be(i / 2))` once `i` is odd.
    block: [u8; 32],
}

impl<'s> Salts<'s> {
    fn new(seed: &'s [u8; 32]) -> Salts<'s> {
        Salts {
            seed,
            i: 0,
            block: [0; 32],
        }
    }

    /// The next salt.
    fn next_salt(&mut self) -> [u8; SALT_LEN] {
        let half = self.i % 2;
        if half == 0 {
            let mut h = Sm3::new();
            h.update(self.seed);
            h.update(((self.i / 2) as u32).to_be_bytes());
            self.block = h.finalize().into();
        }
        self.i += 1;
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(&self.block[half * SALT_LEN..(half + 1) * SALT_LEN]);
        salt
    }
}

impl Iterator for Salts<'_> {
    type Item = [u8; SALT_LEN];

    fn next(&mut self) -> Option<[u8; SALT_LEN]> {
        Some(self.next_salt())
    }
}

/// `members` sorted by path, each with its salt from seed `s`.
fn salted<'a>(s: &[u8; 32], mut members: Vec<(String, &'a Value)>) -> Vec<(String, &'a Value, [u8; SALT_LEN])> {
    members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    members
        .into_iter()
        .zip(Salts::new(s))
        .map(|((p, v), s)| (p, v, s))
        .collect()
}

/// The salt of member `path` of the public document `doc` (its place
/// among the document's members fixes it).
#[must_use]
pub fn salt_of(doc: &Map<String, Value>, public_seed: &[u8; 32], path: &str) -> Option<[u8; SALT_LEN]> {
    salted(public_seed, members(doc).collect())
        .into_iter()
        .find(|(p, ..)| p == path)
        .map(|(.., s)| s)
}

/// The digest of one member: `SM3(salt ‖ u16_be(len(path)) ‖ path ‖
/// canonical JSON of the value)`, one SM3 block for most members (the
/// salt's length is fixed and the value comes last, so the encoding is
/// unambiguous; digests are only ever hashed into a root, under its tag).
#[must_use]
pub fn digest(salt: &[u8; SALT_LEN], path: &str, value: &Value) -> [u8; 32] {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(salt);
    b.extend_from_slice(&(path.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    b.extend_from_slice(path.as_bytes());
    write_canonical(value, &mut b);
    Sm3::digest(&b).into()
}

/// The root over members' digests (in any order; sorted here).
#[must_use]
pub fn root(mut digests: Vec<[u8; 32]>) -> [u8; 32] {
    sort_digests(&mut digests);
    root_of_sorted(&digests, &mut Vec::new())
}

/// Sorts digests ascending (byte order, compared as two big-endian
/// `u128`s: the same order, without a `memcmp` call per comparison).
fn sort_digests(digests: &mut [[u8; 32]]) {
    digests.sort_unstable_by_key(|d| {
        let (hi, lo) = d.split_at(16);
        let half = |x: &[u8]| u128::from_be_bytes(x.try_into().unwrap_or_default());
        (half(hi), half(lo))
    });
}

/// The root over digests sorted ascending, its input written into `buf`
/// and hashed at once (one `update` per field costs more than the copy).
fn root_of_sorted(digests: &[[u8; 32]], buf: &mut Vec<u8>) -> [u8; 32] {
    const TAG: &[u8] = b"vaxgate/fields-v1";
    let field = |buf: &mut Vec<u8>, x: &[u8]| {
        buf.extend_from_slice(&(x.len() as u32).to_be_bytes());
        buf.extend_from_slice(x);
    };
    buf.clear();
    buf.reserve(4 + TAG.len() + 8 + 36 * digests.len());
    field(buf, TAG);
    field(buf, &(digests.len() as u32).to_be_bytes());
    for d in digests {
        field(buf, d);
    }
    Sm3::digest(&buf[..]).into()
}

/// The members of an event document (the event without personal data, as
/// JSON): (path, value), top-level members first, then business elements.
pub fn members(doc: &Map<String, Value>) -> impl Iterator<Item = (String, &Value)> {
    let top = doc
        .iter()
        .filter(|(k, _)| k.as_str() != "fields" && k.as_str() != "pii")
        .map(|(k, v)| (k.clone(), v));
    let fields = doc
        .get("fields")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (format!("{FIELDS_PREFIX}{k}"), v));
    top.chain(fields)
}

/// What the gateway keeps of a record's commitment: the root (in the
/// ledger transaction), the public seed and the digests of the personal
/// members (beside the projection, which holds no personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    /// The root over every member.
    pub root: [u8; 32],
    /// The seeds.
    pub seeds: Seeds,
    /// Digests of the personal members, sorted.
    pub personal: Vec<[u8; 32]>,
}

/// The event's JSON form without personal data, as the projection keeps it
/// and queries return it.
#[must_use]
pub fn public_doc(event: &TraceEvent) -> Value {
    let mut v = serde_json::to_value(event).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.shift_remove("pii");
    }
    v
}

/// The personal members of `pii` as (path, value).
fn personal_members(pii: &BTreeMap<String, Value>) -> Vec<(String, &Value)> {
    pii.iter().map(|(k, v)| (format!("{PERSONAL_PREFIX}{k}"), v)).collect()
}

/// Commits to `event` (its public document and personal elements) under
/// the record seed `seed`.
///
/// The same commitment as sorting the members of [`public_doc`] and the
/// personal elements by path, salting them from [`salt_stream`] and taking
/// them through [`digest`] and [`root`], but written straight from the
/// event: no `Value` of the document, no `String` per path, one buffer for
/// every member's bytes.
#[must_use]
pub fn commit(event: &TraceEvent, seed: &[u8; 32]) -> Commitment {
    let seeds = Seeds::of(seed);
    let mut buf = Vec::with_capacity(256);
    let mut all = Vec::with_capacity(TOP_LEVEL_MEMBERS + event.fields.len() + event.pii.len());
    public_digests(event, &seeds.public, &mut buf, &mut all);
    let mut personal = Vec::with_capacity(event.pii.len());
    let mut h = MemberHasher::new(&seeds.personal, &mut buf, &mut personal);
    // in path order: `Pii` iterates in key order
    for (k, v) in event.pii.iter() {
        h.member(PERSONAL_PREFIX, k, |out| write_string(v, out));
    }
    sort_digests(&mut personal);
    all.extend_from_slice(&personal);
    sort_digests(&mut all);
    Commitment {
        root: root_of_sorted(&all, &mut buf),
        seeds,
        personal,
    }
}

/// Top-level members a [`TraceEvent`] can have besides `fields` and `pii`.
const TOP_LEVEL_MEMBERS: usize = 12;

/// Digests members given one after another in path order, each with the
/// next salt of its seed's stream: `SM3(salt ‖ u16_be(len(path)) ‖ path ‖
/// canonical JSON of the value)` as [`digest`] computes it, the bytes
/// written into one reused buffer.
struct MemberHasher<'a> {
    salts: Salts<'a>,
    buf: &'a mut Vec<u8>,
    out: &'a mut Vec<[u8; 32]>,
}

impl<'a> MemberHasher<'a> {
    fn new(seed: &'a [u8; 32], buf: &'a mut Vec<u8>, out: &'a mut Vec<[u8; 32]>) -> MemberHasher<'a> {
        MemberHasher {
            salts: Salts::new(seed),
            buf,
            out,
        }
    }

    /// The member at path `prefix ‖ name` whose canonical JSON `value` writes.
    fn member(&mut self, prefix: &str, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
        let salt = self.salts.next_salt();
        let b = &mut *self.buf;
        b.clear();
        b.extend_from_slice(&salt);
        let len = prefix.len() + name.len();
        b.extend_from_slice(&(len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
        b.extend_from_slice(prefix.as_bytes());
        b.extend_from_slice(name.as_bytes());
        value(b);
        self.out.push(Sm3::digest(&b[..]).into());
    }
}

/// The digests of the members of [`public_doc`]`(e)`, in path order (which
/// gives each its salt), each value's canonical JSON written from the event
/// itself: the same bytes as `write_canonical` of the value in the document
/// (a string for ids, keys and times as serde writes them, the party and
/// packaging link objects with their members in key order).
///
/// The top-level names below are the serde names of [`TraceEvent`]'s
/// members in byte order; the `fields/…` paths all sort between `eventID`
/// and `from` (`"ev" < "fi" < "fr"`). A member added to `TraceEvent` must
/// be added here, in its place (the property test against
/// `commit_reference` builds every member, so it fails to compile until
/// the generator has it).
fn public_digests(e: &TraceEvent, seed: &[u8; 32], buf: &mut Vec<u8>, out: &mut Vec<[u8; 32]>) {
    let mut h = MemberHasher::new(seed, buf, out);
    fn string(s: &str) -> impl FnOnce(&mut Vec<u8>) + '_ {
        move |out| write_string(s, out)
    }
    fn time(t: &chrono::DateTime<chrono::FixedOffset>) -> impl FnOnce(&mut Vec<u8>) + '_ {
        move |out| write_time(t, out)
    }
    if !e.aggregations.is_empty() {
        h.member("", "aggregations", |out| write_aggregations(&e.aggregations, out));
    }
    if let Some(b) = &e.bill_type {
        h.member("", "billType", string(b));
    }
    h.member("", "category", string(&e.category));
    if let Some(d) = &e.device {
        h.member("", "device", string(d));
    }
    let mut id = uuid::Uuid::encode_buffer();
    h.member("", "eventID", string(e.event_id.hyphenated().encode_lower(&mut id)));
    if keys_sorted(&e.fields) {
        for (k, v) in &e.fields {
            h.member(FIELDS_PREFIX, k, |out| write_canonical(v, out));
        }
    } else {
        let mut sorted: Vec<(&String, &Value)> = e.fields.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (k, v) in sorted {
            h.member(FIELDS_PREFIX, k, |out| write_canonical(v, out));
        }
    }
    if let Some(p) = &e.from {
        h.member("", "from", |out| write_party(p, out));
    }
    h.member("", "occurredAt", time(&e.occurred_at));
    h.member("", "recordKey", string(&e.record_key));
    h.member("", "recordedAt", time(&e.recorded_at));
    h.member("", "source", string(&e.source));
    if let Some(p) = &e.to {
        h.member("", "to", |out| write_party(p, out));
    }
    if !e.trace_codes.is_empty() {
        h.member("", "traceCodes", |out| write_strings(&e.trace_codes, out));
    }
}

/// What a reader is given beside the members it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disclosure {
    /// The salt (32 lowercase hex digits) of every member shown, by path.
    pub salts: BTreeMap<String, String>,
    /// The digests (64 lowercase hex digits) of the members not shown.
    #[serde(default)]
    pub withheld: Vec<String>,
}

/// The disclosure of `doc` (the public document) with every member shown
/// but those whose path is in `hide`; the personal members are shown
/// (`personal = Some((values, personal seed))`) or withheld (their
/// digests, `personal_digests`).
#[must_use]
pub fn disclose(
    doc: &Map<String, Value>,
    public_seed: &[u8; 32],
    hide: &[&str],
    personal: Option<(&BTreeMap<String, String>, &[u8; 32])>,
    personal_digests: &[[u8; 32]],
) -> Disclosure {
    let mut d = Disclosure::default();
    for (path, v, s) in salted(public_seed, members(doc).collect()) {
        if hide.contains(&path.as_str()) {
            d.withheld.push(hex::encode(digest(&s, &path, v)));
        } else {
            d.salts.insert(path, hex::encode(s));
        }
    }
    match personal {
        Some((values, seed)) => {
            let values: BTreeMap<String, Value> = values
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            for (path, _, s) in salted(seed, personal_members(&values)) {
                d.salts.insert(path, hex::encode(s));
            }
        }
        None => d.withheld.extend(personal_digests.iter().map(hex::encode)),
    }
    d.withheld.sort_unstable();
    d
}

fn unhex<const N: usize>(what: impl FnOnce() -> String, s: &str) -> Result<[u8; N], CommitmentError> {
    let bad = |what: String| CommitmentError::BadHex {
        what,
        value: s.chars().take(80).collect(),
        len: N,
    };
    if s.len() != 2 * N || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad(what()));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| bad(what()))?;
    Ok(out)
}

/// Recomputes the root from what a reader was shown: the public document
/// `doc` (members may be missing: withheld), the personal elements shown
/// (`personal`, element key → value; empty when none), and the disclosure.
/// Every shown member needs its salt and every salt a shown member.
pub fn check(doc: &Value, personal: &BTreeMap<String, String>, d: &Disclosure) -> Result<[u8; 32], CommitmentError> {
    let m = doc.as_object().ok_or(CommitmentError::NotAnObject)?;
    let mut shown: Vec<(String, Value)> = members(m).map(|(p, v)| (p, v.clone())).collect();
    shown.extend(
        personal
            .iter()
            .map(|(k, v)| (format!("{PERSONAL_PREFIX}{k}"), Value::String(v.clone()))),
    );
    let mut all = Vec::with_capacity(shown.len() + d.withheld.len());
    for (path, v) in &shown {
        let s = d
            .salts
            .get(path)
            .ok_or_else(|| CommitmentError::MissingSalt(path.clone()))?;
        let s: [u8; SALT_LEN] = unhex(|| format!("salt of {path}"), s)?;
        all.push(digest(&s, path, v));
    }
    if let Some(extra) = d.salts.keys().find(|k| !shown.iter().any(|(p, _)| p == *k)) {
        return Err(CommitmentError::ExtraSalt(extra.clone()));
    }
    for (i, w) in d.withheld.iter().enumerate() {
        all.push(unhex(|| format!("withheld digest {i}"), w)?);
    }
    Ok(root(all))
}

/// The commitment as it was first written (a `Value` of the public
/// document, a `String` per path, a `Vec` per digest and of the salts),
/// kept as the reference [`commit`] is tested against: the salt stream and
/// root verbatim, the members, documents and digests from the functions
/// `disclose` and `check` use.
#[cfg(test)]
fn commit_reference(event: &TraceEvent, seed: &[u8; 32]) -> Commitment {
    fn salt_stream(s: &[u8; 32], n: usize) -> Vec<[u8; SALT_LEN]> {
        let mut out = Vec::with_capacity(n + 1);
        for j in 0..n.div_ceil(2) {
            let mut h = Sm3::new();
            h.update(s);
            h.update((j as u32).to_be_bytes());
            let d: [u8; 32] = h.finalize().into();
            let (a, b) = d.split_at(SALT_LEN);
            out.push(a.try_into().unwrap_or_default());
            out.push(b.try_into().unwrap_or_default());
        }
        out.truncate(n);
        out
    }

    fn salted<'a>(s: &[u8; 32], mut members: Vec<(String, &'a Value)>) -> Vec<(String, &'a Value, [u8; SALT_LEN])> {
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let salts = salt_stream(s, members.len());
        members.into_iter().zip(salts).map(|((p, v), s)| (p, v, s)).collect()
    }

    fn root(mut digests: Vec<[u8; 32]>) -> [u8; 32] {
        digests.sort_unstable();
        let mut h = tagged("vaxgate/fields-v1");
        field(&mut h, &(digests.len() as u32).to_be_bytes());
        for d in &digests {
            field(&mut h, d);
        }
        h.finalize().into()
    }

    let doc = public_doc(event);
    let seeds = Seeds::of(seed);
    let mut all: Vec<[u8; 32]> = Vec::new();
    if let Value::Object(m) = &doc {
        for (path, v, s) in salted(&seeds.public, members(m).collect()) {
            all.push(digest(&s, &path, v));
        }
    }
    let pii: BTreeMap<String, Value> = event
        .pii
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut personal: Vec<[u8; 32]> = salted(&seeds.personal, personal_members(&pii))
        .into_iter()
        .map(|(path, v, s)| digest(&s, &path, v))
        .collect();
    personal.sort_unstable();
    all.extend(&personal);
    Commitment {
        root: root(all),
        seeds,
        personal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AggregationLink, Party};
    use crate::pii::Pii;
    use proptest::prelude::*;
    use serde_json::json;

    fn event() -> TraceEvent {
        let mut e: TraceEvent = serde_json::from_value(json!({
            "category": "vaccination",
            "eventID": "0b9a6a2e-5f0e-5d53-9a57-9d2f5cfa0f53",
            "occurredAt": "2024-03-05T09:30:00+08:00",
            "recordedAt": "2024-03-05T09:31:00+08:00",
            "source": "3201020001",
            "recordKey": "7",
            "traceCodes": ["81234567890123456789"],
            "fields": {"lot_number": "202401A", "dose_number": 2, "site": "左上臂"}
        }))
        .unwrap();
        e.pii.insert("recipient_name", "王小明");
        e.pii.insert("recipient_id_number", "11010519491231002X");
        e
    }

    fn doc_of(e: &TraceEvent) -> Map<String, Value> {
        match public_doc(e) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    const SEED: [u8; 32] = [7; 32];

    /// Known answer: pinned so that a change of any rule above shows here.
    /// Both values were computed independently, from the definitions in the
    /// module documentation, with Python's `hashlib.new("sm3")` and
    /// `json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)`.
    #[test]
    fn known_answer() {
        let c = commit(&event(), &SEED);
        assert_eq!(
            hex::encode(salt_of(&doc_of(&event()), &c.seeds.public, "fields/lot_number").unwrap()),
            "61e81ccb906142bd79e80f6c8916b3ab"
        );
        assert_eq!(
            hex::encode(c.root),
            "c8843ec1e0b3beb399b45cc3f5bb0c748661b81b6dd4a8bbd08001881158b651"
        );
    }

    #[test]
    fn everything_shown_checks() {
        let e = event();
        let c = commit(&e, &SEED);
        let doc = doc_of(&e);
        let values: BTreeMap<String, String> = e.pii.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let d = disclose(
            &doc,
            &c.seeds.public,
            &[],
            Some((&values, &c.seeds.personal)),
            &c.personal,
        );
        assert!(d.withheld.is_empty());
        assert_eq!(check(&Value::Object(doc), &values, &d), Ok(c.root));
    }

    #[test]
    fn personal_withheld_checks_and_reveals_no_salt() {
        let e = event();
        let c = commit(&e, &SEED);
        let doc = doc_of(&e);
        let d = disclose(&doc, &c.seeds.public, &["fields/site"], None, &c.personal);
        assert_eq!(d.withheld.len(), 3);
        assert!(
            d.salts
                .keys()
                .all(|k| !k.starts_with(PERSONAL_PREFIX) && k != "fields/site")
        );
        let mut shown = doc.clone();
        shown["fields"].as_object_mut().unwrap().remove("site");
        assert_eq!(check(&Value::Object(shown), &BTreeMap::new(), &d), Ok(c.root));
    }

    #[test]
    fn a_changed_or_added_member_does_not_check() {
        let e = event();
        let c = commit(&e, &SEED);
        let doc = doc_of(&e);
        let d = disclose(&doc, &c.seeds.public, &[], None, &c.personal);
        let mut forged = doc.clone();
        forged["fields"]["lot_number"] = json!("202401B");
        assert_ne!(check(&Value::Object(forged), &BTreeMap::new(), &d), Ok(c.root));
        let mut added = doc.clone();
        added["fields"]["extra"] = json!(1);
        assert_eq!(
            check(&Value::Object(added), &BTreeMap::new(), &d),
            Err(CommitmentError::MissingSalt("fields/extra".into()))
        );
        let mut removed = doc;
        removed.remove("recordKey");
        assert_eq!(
            check(&Value::Object(removed), &BTreeMap::new(), &d),
            Err(CommitmentError::ExtraSalt("recordKey".into()))
        );
    }

    #[test]
    fn bad_hex_is_named() {
        let e = event();
        let c = commit(&e, &SEED);
        let doc = doc_of(&e);
        let mut d = disclose(&doc, &c.seeds.public, &[], None, &c.personal);
        d.withheld[1] = d.withheld[1].to_uppercase();
        let err = check(&Value::Object(doc), &BTreeMap::new(), &d).unwrap_err();
        assert!(err.to_string().contains("withheld digest 1"), "{err}");
    }

    proptest! {
        /// Whatever members are hidden, the root is the one committed to;
        /// a changed value of any shown member gives another root.
        #[test]
        fn any_subset_hidden_checks(hide_mask in any::<u16>(), change in any::<u8>(), seed in any::<[u8; 32]>()) {
            let e = event();
            let c = commit(&e, &seed);
            let doc = doc_of(&e);
            let paths: Vec<String> = members(&doc).map(|(p, _)| p).collect();
            let hide: Vec<&str> = paths.iter().enumerate()
                .filter(|(i, _)| hide_mask & (1 << i) != 0).map(|(_, p)| p.as_str()).collect();
            let d = disclose(&doc, &c.seeds.public, &hide, None, &c.personal);
            let mut shown = doc.clone();
            for p in &hide {
                match p.strip_prefix(FIELDS_PREFIX) {
                    Some(k) => { shown["fields"].as_object_mut().unwrap().remove(k); }
                    None => { shown.remove(*p); }
                }
            }
            prop_assert_eq!(check(&Value::Object(shown.clone()), &BTreeMap::new(), &d), Ok(c.root));
            let visible: Vec<&String> = paths.iter().filter(|p| !hide.contains(&p.as_str())).collect();
            if !visible.is_empty() {
                let p = visible[change as usize % visible.len()];
                match p.strip_prefix(FIELDS_PREFIX) {
                    Some(k) => shown["fields"][k] = json!("changed"),
                    None => { shown.insert(p.clone(), json!("changed")); }
                }
                prop_assert_ne!(check(&Value::Object(shown), &BTreeMap::new(), &d), Ok(c.root));
            }
        }
    }

    /// Strings with what canonical JSON escapes (quotes, backslashes,
    /// control characters), non-ASCII and `/`, in any order.
    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_/\"\\\\\u{0}-\u{1f}\u{7f}é中文🦀 ]{0,12}"
    }

    /// Any JSON value (numbers: integers of either sign, floats), nested.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            (-1000i32..1000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Times from year -1000 to 11000 (outside 0..=9999 chrono writes them
    /// another way), with or without a fraction, at any offset.
    fn time() -> impl Strategy<Value = chrono::DateTime<chrono::FixedOffset>> {
        (
            -93_700_000_000i64..284_900_000_000,
            prop_oneof![Just(0u32), 0u32..1_000_000_000, Just(500_000_000)],
            prop_oneof![Just(0i32), Just(8 * 3600), -86_399i32..86_400],
        )
            .prop_map(|(secs, nanos, off)| {
                let utc = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
                utc.with_timezone(&chrono::FixedOffset::east_opt(off).unwrap())
            })
    }

    fn party() -> impl Strategy<Value = Option<Party>> {
        prop::option::of((text(), prop::option::of(text())).prop_map(|(code, name)| Party { code, name }))
    }

    /// Any event: every member of `TraceEvent` is built here (a struct
    /// literal, so a new member fails to compile until it is generated and
    /// `public_digests` has it), optional ones present or not, `fields`
    /// in any key order (sorted or not), up to 6 personal elements.
    fn any_event() -> impl Strategy<Value = TraceEvent> {
        let ids = (
            text(),
            any::<u128>(),
            time(),
            time(),
            text(),
            prop::option::of(text()),
            text(),
        );
        let lists = (
            prop::option::of(text()),
            prop::collection::vec(text(), 0..3),
            prop::collection::vec(
                (text(), prop::collection::vec(text(), 0..3))
                    .prop_map(|(parent, children)| AggregationLink { parent, children }),
                0..3,
            ),
            party(),
            party(),
        );
        let elements = (
            prop::collection::vec((text(), json_value()), 0..24),
            any::<bool>(),
            prop::collection::btree_map(text(), text(), 0..6),
        );
        (ids, lists, elements).prop_map(
            |(
                (category, id, occurred_at, recorded_at, source, device, record_key),
                (bill_type, trace_codes, aggregations, from, to),
                (fields, sort, personal),
            )| {
                let mut fields: Map<String, Value> = fields.into_iter().collect();
                if sort {
                    fields.sort_keys();
                }
                let mut pii = Pii::new();
                for (k, v) in personal {
                    pii.insert(k, v);
                }
                TraceEvent {
                    category,
                    event_id: uuid::Uuid::from_u128(id),
                    occurred_at,
                    recorded_at,
                    source,
                    device,
                    record_key,
                    bill_type,
                    trace_codes,
                    aggregations,
                    from,
                    to,
                    fields,
                    pii,
                }
            },
        )
    }

    #[test]
    fn reference_gives_the_known_answer() {
        assert_eq!(commit_reference(&event(), &SEED), commit(&event(), &SEED));
        assert_eq!(
            hex::encode(commit_reference(&event(), &SEED).root),
            "c8843ec1e0b3beb399b45cc3f5bb0c748661b81b6dd4a8bbd08001881158b651"
        );
    }

    /// An offset with seconds (a time zone's local mean time, e.g.
    /// Asia/Shanghai's +08:05:43 before 1901) is written as serde writes
    /// it, rounded to the minute.
    #[test]
    fn offsets_with_seconds_round_as_serde_does() {
        for (secs, at) in [
            (-(4 * 3600 + 8 * 60 + 30), "-04:09"),
            (8 * 3600 + 5 * 60 + 43, "+08:06"),
        ] {
            let mut e = event();
            e.recorded_at = e
                .recorded_at
                .with_timezone(&chrono::FixedOffset::east_opt(secs).unwrap());
            assert!(doc_of(&e)["recordedAt"].as_str().unwrap().ends_with(at));
            assert_eq!(commit(&e, &SEED), commit_reference(&e, &SEED));
        }
    }

    #[test]
    fn salt_stream_is_the_stream() {
        for n in 0..8 {
            let salts = salt_stream(&SEED, n);
            assert_eq!(salts.len(), n);
            for (i, salt) in salts.iter().enumerate() {
                let block: [u8; 32] = Sm3::digest([&SEED[..], &((i / 2) as u32).to_be_bytes()].concat()).into();
                assert_eq!(salt[..], block[(i % 2) * SALT_LEN..][..SALT_LEN]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// `commit` gives exactly what the reference gives, for any event;
        /// and everything it commits to checks when shown.
        #[test]
        fn commit_equals_reference(e in any_event(), seed in any::<[u8; 32]>()) {
            let c = commit(&e, &seed);
            prop_assert_eq!(&c, &commit_reference(&e, &seed));
            let doc = doc_of(&e);
            let values: BTreeMap<String, String> = e.pii.iter().map(|(k, v)| (k.into(), v.into())).collect();
            let d = disclose(&doc, &c.seeds.public, &[], Some((&values, &c.seeds.personal)), &c.personal);
            prop_assert_eq!(check(&Value::Object(doc), &values, &d), Ok(c.root));
        }
    }
}
