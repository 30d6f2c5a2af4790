//! Memory while streaming a large XML export through the XML directory
//! source: generates `$XML_BENCH_FILE` (default /tmp/vaxgate-xml-1g/export.xml,
//! `$XML_BENCH_MB` MiB, default 1024) from config/mappings/samples/mah-export.xml
//! if it is missing, then runs `XmlDirSource::poll_once` over a copy of the
//! directory with a sink that maps every record (config/mappings/mah-export.toml)
//! and keeps only counters and the checkpoint. Prints one JSON line with the
//! records, seconds and peak RSS (VmHWM) of this process.
//!
//! `cargo bench -p adapters --bench xml_rss` (release); also run it under
//! `/usr/bin/time -v` for an outside view of the maximum resident set size.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adapters::intake::{Outcome, RecordSink};
use adapters::xml_source::{XmlDirConfig, XmlDirSource};
use mappings::{Dataset, MappingSpec, Record};

struct CountingSink {
    spec: Arc<MappingSpec>,
    accepted: AtomicU64,
    other: AtomicU64,
    checkpoint: std::sync::Mutex<Option<serde_json::Value>>,
}

impl RecordSink for CountingSink {
    async fn submit(
        &self,
        _source: &str,
        records: Vec<(String, Record)>,
        checkpoint: Option<serde_json::Value>,
    ) -> Vec<Outcome> {
        let out: Vec<Outcome> = records
            .iter()
            .map(|(_, r)| {
                let m = self.spec.map(r);
                if m.is_ok() && !m.events.is_empty() {
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    Outcome::Accepted
                } else {
                    self.other.fetch_add(1, Ordering::Relaxed);
                    Outcome::Quarantined {
                        reason: "mapping".into(),
                    }
                }
            })
            .collect();
        if let Ok(mut c) = self.checkpoint.lock() {
            *c = checkpoint;
        }
        out
    }

    async fn checkpoint(&self, _source: &str) -> Option<serde_json::Value> {
        self.checkpoint.lock().ok().and_then(|c| c.clone())
    }
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn generate(path: &Path, mib: u64, root: &Path) {
    let sample = std::fs::read_to_string(root.join("config/mappings/samples/mah-export.xml")).expect("sample");
    let start = sample.find("<Records>").expect("<Records>") + "<Records>".len();
    let end = sample.find("</Records>").expect("</Records>");
    let (head, body, tail) = (&sample[..start], &sample[start..end], &sample[end..]);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let tmp = path.with_extension("partial");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).expect("create"));
    f.write_all(head.as_bytes()).expect("write");
    let mut written = head.len() as u64;
    let mut i = 0u64;
    while written < mib * 1024 * 1024 {
        let b = body.replace("\" id=\"", &format!("\" id=\"{i}-"));
        f.write_all(b.as_bytes()).expect("write");
        written += b.len() as u64;
        i += 1;
    }
    f.write_all(tail.as_bytes()).expect("write");
    f.flush().expect("flush");
    drop(f);
    std::fs::rename(&tmp, path).expect("rename");
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mib: u64 = std::env::var("XML_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let file = std::env::var("XML_BENCH_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/tmp/vaxgate-xml-1g/export.xml"));
    if !file.exists() {
        generate(&file, mib, &root);
    }
    let size = std::fs::metadata(&file).expect("meta").len();
    // work on a hard link in a fresh watched directory (the source moves it to done/)
    let dir = file
        .parent()
        .expect("parent")
        .join(format!("watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::hard_link(&file, dir.join("export.xml")).expect("hard link");
    let before = vm_hwm_kib();

    let spec =
        Arc::new(MappingSpec::load(root.join("config/mappings/mah-export.toml"), &Dataset::builtin()).expect("spec"));
    let sink = Arc::new(CountingSink {
        spec: spec.clone(),
        accepted: AtomicU64::new(0),
        other: AtomicU64::new(0),
        checkpoint: std::sync::Mutex::new(None),
    });
    let cfg = XmlDirConfig {
        settle: Duration::ZERO,
        ..XmlDirConfig::new(&dir)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let src = XmlDirSource::new("mah", &spec, sink.clone(), cfg);
    let started = Instant::now();
    let reports = rt.block_on(src.poll_once()).expect("poll");
    let secs = started.elapsed().as_secs_f64();
    let r = &reports[0];
    assert!(r.failed.is_none(), "{r:?}");
    let records = r.submitted;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{{\"bench\":\"xml_stream_rss\",\"file_bytes\":{size},\"records\":{records},\"accepted\":{},\"seconds\":{secs:.2},\"records_per_s\":{:.0},\"mib_per_s\":{:.1},\"vm_hwm_mib_before\":{:.1},\"vm_hwm_mib\":{:.1}}}",
        sink.accepted.load(Ordering::Relaxed),
        records as f64 / secs,
        size as f64 / 1048576.0 / secs,
        before as f64 / 1024.0,
        vm_hwm_kib() as f64 / 1024.0
    );
}
