//! HL7 file-drop directory: all-AA files to done/ with their ACKs, files
//! with refused messages to failed/ with a reason file, files left in place
//! while the downstream is unavailable, and a file repeating a message (a
//! sender's resend appended to it) done with each message accepted once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use adapters::hl7::{FieldLocator, Hl7Processor, split_messages};
use adapters::hl7_files::{Hl7FileDrop, Hl7FilesConfig, Hl7FilesError};
use adapters::intake::MemorySink;
use mappings::{Dataset, MappingSpec};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A drop directory (no settle time) in a new directory, mapping with
/// config/mappings/hl7-vxu.toml into a [`MemorySink`].
fn drop_dir() -> (Hl7FileDrop<Arc<MemorySink>>, Arc<MemorySink>, tempfile::TempDir) {
    let text = std::fs::read_to_string(root().join("config/mappings/hl7-vxu.toml")).expect("spec");
    let spec = Arc::new(MappingSpec::from_toml_str(&text, "hl7-vxu.toml", &Dataset::builtin()).expect("spec"));
    let loc = FieldLocator::from_spec_toml(&text, "hl7-vxu.toml").expect("locator");
    let sink = Arc::new(MemorySink::new("hl7files", spec.clone()));
    let proc = Arc::new(Hl7Processor::new("hl7files", spec, loc, sink.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Hl7FilesConfig {
        settle: Duration::ZERO,
        ..Hl7FilesConfig::new(dir.path())
    };
    (Hl7FileDrop::new("hl7files", proc, cfg), sink, dir)
}

#[tokio::test]
async fn drop_directory_moves_files_by_their_acks() {
    let (drop_dir, sink, dir) = drop_dir();

    let sample = std::fs::read_to_string(root().join("config/mappings/samples/hl7-vxu.hl7")).expect("sample");
    // LF-separated, as editors save it
    std::fs::write(dir.path().join("a-good.hl7"), sample.replace('\r', "\n")).expect("write");
    let bad = sample
        .replace("MSG20240305001", "B1")
        .replace("MSG20240306002", "B2")
        .replace("|202312B11|", "||");
    std::fs::write(dir.path().join("b-bad.hl7"), bad).expect("write");

    sink.set_unavailable(true);
    match drop_dir.poll_once().await {
        Err(Hl7FilesError::Retry { file, .. }) => assert_eq!(file, "a-good.hl7"),
        other => panic!("expected Retry, got {other:?}"),
    }
    assert!(
        dir.path().join("a-good.hl7").exists(),
        "stays while the downstream is down"
    );

    sink.set_unavailable(false);
    let reports = drop_dir.poll_once().await.expect("poll");
    assert_eq!(reports.len(), 2);
    assert_eq!(
        (reports[0].accepted, reports[0].refused, reports[0].moved_to),
        (2, 0, "done")
    );
    assert_eq!(
        (reports[1].accepted, reports[1].refused, reports[1].moved_to),
        (1, 1, "failed")
    );
    let acks = std::fs::read_to_string(dir.path().join("done/a-good.hl7.ack")).expect("acks");
    assert!(
        acks.contains("MSA|AA|MSG20240305001") && acks.contains("MSA|AA|MSG20240306002"),
        "{acks}"
    );
    let reason = std::fs::read_to_string(dir.path().join("failed/b-bad.hl7.reason.txt")).expect("reason");
    assert!(reason.contains("1 of 2 messages refused"), "{reason}");
    assert!(
        reason.contains("message B2:") && reason.contains("MSA|AE|B2"),
        "{reason}"
    );
    assert!(
        reason.contains("ERR||RXA^1^15|101^Required field missing^HL70357|E|required|"),
        "{reason}"
    );
    assert!(!reason.contains("欧阳"), "no personal data in the reason file");
    assert!(dir.path().join("failed/b-bad.hl7").exists());
    let keys: Vec<String> = sink.accepted().into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys, ["MSG20240305001", "MSG20240306002", "B1"]);
}

#[tokio::test]
async fn a_file_repeating_a_message_is_done() {
    let (drop_dir, sink, dir) = drop_dir();
    // Like the gateway: a call with one record key twice fails whole.
    sink.set_refuse_repeated_keys(true);
    let sample = std::fs::read_to_string(root().join("config/mappings/samples/hl7-vxu.hl7")).expect("sample");
    let msgs = split_messages(&sample);
    // the second message resent: the file holds it twice
    let file = format!("{}\r{}\r{}\r", msgs[0], msgs[1], msgs[1]);
    std::fs::write(dir.path().join("resend.hl7"), file).expect("write");
    let reports = drop_dir.poll_once().await.expect("poll");
    assert_eq!(
        (reports[0].accepted, reports[0].refused, reports[0].moved_to),
        (3, 0, "done"),
        "{reports:?}"
    );
    assert!(dir.path().join("done/resend.hl7").exists());
    assert_eq!(sink.accepted().len(), 2, "two messages, each accepted once");
}
