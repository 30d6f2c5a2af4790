//! The worked example of `docs/ledger.md` ("Formats"): one transaction with
//! fixed fields, hashed in format 1 and in format 2. The batch signature
//! is a fixed placeholder (hashing does not check it), so every value is
//! deterministic and pinned here; the document quotes the same values and
//! this test checks that it does. If it fails, a format changed: that is a
//! new format number, never an edit of one in use.
//!
//! `cargo test -p ledger --test format_example -- --nocapture` prints them.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

use ledger::{LeafInput, Transaction, TxAuth, TxContent, TxFormat, TxKind, TxSummary};
use secure_gateway::{BatchHeader, Sm3Digest, sm3};

fn example(format: TxFormat) -> Transaction {
    let payload = b"{\"example\":\"payload\"}".to_vec();
    Transaction {
        content: TxContent {
            tx_id: "0190f5a2-7c00-7000-8000-000000000001".parse().unwrap(),
            record_id: "ev-1".into(),
            kind: TxKind::Data,
            category: "vaccination".into(),
            state_key: "86990000000000000001".into(),
            content_type: "json".into(),
            data_hash: sm3(b"plaintext"),
            payload,
            fields_root: Some(sm3(b"fields")),
            format,
        },
        auth: TxAuth {
            signer: "12320102MB12345674".into(),
            public_key: format!("04{}", "11".repeat(64)),
            leaf: LeafInput::Content,
            batch: BatchHeader {
                version: 1,
                batch_id: "0190f5a2-7c00-7000-8000-0000000000b1".parse().unwrap(),
                key_id: "8fbc0e11abeb4284a112f9e5028bba23".into(),
                timestamp_ms: 1_767_225_600_000,
                tree_size: 4,
                root: sm3(b"batch root"),
                signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            },
            index: 2,
            audit_path: vec![sm3(b"sibling"), sm3(b"uncle")],
        },
    }
}

/// (name, value) of every figure the document quotes.
fn figures() -> Vec<(&'static str, String)> {
    let v1 = example(TxFormat::V1);
    let v2 = example(TxFormat::V2);
    vec![
        ("payload SM3", sm3(&v1.content.payload).to_hex()),
        ("content hash, format 1", v1.content.content_hash().to_hex()),
        ("leaf hash, format 1", v1.leaf_hash().to_hex()),
        ("auth bytes stored, format 1", v1.auth.canonical().len().to_string()),
        ("content hash, format 2", v2.content.content_hash().to_hex()),
        ("batch body bytes", v2.auth.batch_body().len().to_string()),
        ("batch digest", v2.auth.batch_digest().to_hex()),
        ("record part bytes", v2.auth.record_part().len().to_string()),
        ("leaf hash, format 2", v2.leaf_hash().to_hex()),
    ]
}

#[test]
fn the_worked_example_is_pinned_and_quoted() {
    let got = figures();
    for (name, value) in &got {
        println!("{name}: {value}");
    }
    let pinned: &[(&str, &str)] = &[
        (
            "payload SM3",
            "2f06f8ec43f47237b26e103156cc86546f9aee44754544ce01f6006f894790f1",
        ),
        (
            "content hash, format 1",
            "dc8e7171043f06940f9b242a3a65ff3cc5ba2625c83a4594fc2ef08e7c5453e1",
        ),
        (
            "leaf hash, format 1",
            "30b1370a0c112c5eb4b98d4194d9e02919df7e13d5abe5d8d6c25d43aebe65d4",
        ),
        ("auth bytes stored, format 1", "442"),
        (
            "content hash, format 2",
            "f96b72447265222dd48a3268e2a8399bb4bf760945ff05b23b749b38789b0b07",
        ),
        ("batch body bytes", "347"),
        (
            "batch digest",
            "c7bef4f8902a78d7dddea3675daf771bf4463fdda465947e1be2808b103e7e05",
        ),
        ("record part bytes", "123"),
        (
            "leaf hash, format 2",
            "50ddef6350ab302fe4cb6609fab9294bc0d6da28a3eaa9f07db9bc88780630da",
        ),
    ];
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ledger.md")).unwrap();
    for ((name, value), (pname, pvalue)) in got.iter().zip(pinned) {
        assert_eq!(name, pname);
        assert_eq!(value, pvalue, "{name} changed");
        assert!(
            doc.contains(value.as_str()),
            "docs/ledger.md does not quote the {name} {value}"
        );
    }
}

#[test]
fn the_formats_differ_and_a_summary_keeps_its_format() {
    let v1 = example(TxFormat::V1);
    let v2 = example(TxFormat::V2);
    assert_ne!(v1.content.content_hash(), v2.content.content_hash());
    assert_ne!(v1.leaf_hash(), v2.leaf_hash());
    for t in [&v1, &v2] {
        let s = TxSummary::of(t);
        assert_eq!(s.leaf_hash(), t.leaf_hash());
        let json = serde_json::to_value(&s).unwrap();
        // Format 1 answers are what they were: no `format` member.
        assert_eq!(json.get("format").is_some(), t.content.format == TxFormat::V2);
        let back: TxSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back.leaf_hash(), t.leaf_hash());
    }
    // In format 2 the audit path is not part of the leaf (it is checked
    // against the batch root the batch digest covers); in format 1 it is.
    let mut moved = v2.clone();
    moved.auth.audit_path.push(Sm3Digest::ZERO);
    assert_eq!(moved.leaf_hash(), v2.leaf_hash());
    let mut moved = v1.clone();
    moved.auth.audit_path.push(Sm3Digest::ZERO);
    assert_ne!(moved.leaf_hash(), v1.leaf_hash());
    // Everything of the batch is: signer, key, header, signature; and the index.
    let mut other = v2.clone();
    other.auth.signer = "someone-else".into();
    assert_ne!(other.leaf_hash(), v2.leaf_hash());
    let mut other = v2.clone();
    other.auth.batch.signature[7] ^= 1;
    assert_ne!(other.leaf_hash(), v2.leaf_hash());
    let mut other = v2.clone();
    other.auth.index = 3;
    assert_ne!(other.leaf_hash(), v2.leaf_hash());
}
