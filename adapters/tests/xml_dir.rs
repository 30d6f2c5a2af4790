//! XML export directory: a generated multi-megabyte export streamed into
//! records at the spec's record path, files moved to done/ and failed/
//! (with a reason file), resume after an interruption without resubmitting
//! receipted records, and files still being written left alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use adapters::intake::{MemorySink, RecordSink};
use adapters::xml_source::{XmlDirConfig, XmlDirSource, XmlSourceError};
use mappings::{Dataset, MappingSpec, Record};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec() -> Arc<MappingSpec> {
    Arc::new(MappingSpec::load(root().join("config/mappings/mah-export.toml"), &Dataset::builtin()).expect("spec"))
}

/// Writes an export with `copies` copies of the sample's records (ids made
/// unique); returns the number of records.
fn generate(path: &Path, copies: usize) -> usize {
    use std::io::Write as _;
    let sample = std::fs::read_to_string(root().join("config/mappings/samples/mah-export.xml")).expect("sample");
    let start = sample.find("<Records>").expect("<Records>") + "<Records>".len();
    let end = sample.find("</Records>").expect("</Records>");
    let (head, body, tail) = (&sample[..start], &sample[start..end], &sample[end..]);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    f.write_all(head.as_bytes()).expect("write");
    for i in 0..copies {
        let b = body.replace("\" id=\"", &format!("\" id=\"{i}-"));
        f.write_all(b.as_bytes()).expect("write");
    }
    f.write_all(tail.as_bytes()).expect("write");
    f.flush().expect("flush");
    copies * body.matches("<Record ").count()
}

fn config(dir: &Path, batch: usize) -> XmlDirConfig {
    XmlDirConfig {
        batch_size: batch,
        settle: Duration::ZERO,
        ..XmlDirConfig::new(dir)
    }
}

/// How many of one copy's records map without errors.
fn accepted_per_copy() -> usize {
    let text = std::fs::read_to_string(root().join("config/mappings/samples/mah-export.xml")).expect("sample");
    let recs = mappings::sources::split_xml_records(&text, "/Export/Records/Record").expect("split");
    let s = spec();
    recs.iter()
        .filter(|r| {
            let o = s.map(&Record::Xml((*r).clone()));
            o.is_ok() && !o.events.is_empty()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_export_streams_to_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("export-001.xml");
    let copies = 1500;
    let n = generate(&file, copies);
    let size = std::fs::metadata(&file).expect("meta").len();
    assert!(size > 3_000_000, "generated {size} bytes");
    let sink = Arc::new(MemorySink::new("mah", spec()));
    let src = XmlDirSource::new("mah", &spec(), sink.clone(), config(dir.path(), 500));
    let reports = src.poll_once().await.expect("poll");
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!((r.submitted, r.skipped, r.failed.as_deref()), (n as u64, 0, None));
    assert_eq!(r.accepted as usize, copies * accepted_per_copy());
    assert!(r.accepted > 0);
    assert!(!file.exists());
    assert!(dir.path().join("done/export-001.xml").exists());
    let keys = sink.accepted();
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no record submitted twice");
    // the checkpoint names the file and its last record
    let cp = sink.checkpoint("mah").await.expect("checkpoint");
    assert_eq!(cp["file"], "export-001.xml");
    assert_eq!(cp["records"], n as u64);
    // nothing more to do
    assert!(src.poll_once().await.expect("poll").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_file_goes_to_failed_with_reason_and_unsettled_files_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(root().join("config/mappings/samples/mah-export.xml")).expect("sample");
    // cut inside the third record
    let cut = good
        .match_indices("<Record ")
        .nth(2)
        .map(|(i, _)| i + 40)
        .expect("3 records");
    std::fs::write(
        dir.path().join("a-broken.xml"),
        format!("{}</Oops></Records></Export>", &good[..cut]),
    )
    .expect("write");
    std::fs::write(dir.path().join("b-good.xml"), &good).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not xml").expect("write");

    let sink = Arc::new(MemorySink::new("mah", spec()));
    let waiting = XmlDirSource::new(
        "mah",
        &spec(),
        sink.clone(),
        XmlDirConfig {
            settle: Duration::from_secs(3600),
            ..XmlDirConfig::new(dir.path())
        },
    );
    assert!(
        waiting.poll_once().await.expect("poll").is_empty(),
        "files younger than settle wait"
    );

    let src = XmlDirSource::new("mah", &spec(), sink.clone(), config(dir.path(), 2));
    let reports = src.poll_once().await.expect("poll");
    assert_eq!(reports.len(), 2);
    let broken = &reports[0];
    assert_eq!(broken.file, "a-broken.xml");
    assert_eq!(broken.submitted, 2, "the two complete records before the error");
    let reason = std::fs::read_to_string(dir.path().join("failed/a-broken.xml.reason.txt")).expect("reason file");
    assert!(
        reason.contains("a-broken.xml") && reason.contains("malformed XML at byte"),
        "{reason}"
    );
    assert!(dir.path().join("failed/a-broken.xml").exists());
    assert_eq!(reports[1].failed, None);
    assert!(dir.path().join("done/b-good.xml").exists());
    assert!(dir.path().join("notes.txt").exists(), "other files are left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_interruption_without_resubmitting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.xml");
    let n = generate(&file, 100) as u64; // 400 records
    // Accepts 3 batches, then answers Retry (gateway down).
    let sink = Arc::new(MemorySink::new("mah", spec()));
    sink.set_unavailable_after(3);
    let src = XmlDirSource::new("mah", &spec(), sink.clone(), config(dir.path(), 50));
    match src.poll_once().await {
        Err(XmlSourceError::Retry { file, .. }) => assert_eq!(file, "big.xml"),
        other => panic!("expected Retry, got {other:?}"),
    }
    assert!(file.exists(), "an interrupted file stays in place");
    let first = sink.accepted().len();
    assert_eq!(sink.checkpoint("mah").await.expect("cp")["records"], 150);

    // "restart": a new source over the same sink state
    sink.set_unavailable(false);
    let src = XmlDirSource::new("mah", &spec(), sink.clone(), config(dir.path(), 50));
    let reports = src.poll_once().await.expect("poll");
    assert_eq!(reports[0].skipped, 150);
    assert_eq!(reports[0].submitted, n - 150);
    let keys = sink.accepted();
    assert!(keys.len() > first);
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no record submitted twice across the restart");
    assert_eq!(keys.len(), 100 * accepted_per_copy());
    assert!(dir.path().join("done/big.xml").exists());
}
