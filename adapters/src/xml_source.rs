//! XML export directories (R1.5): a watched directory of export files,
//! each streamed with quick-xml (a `Reader` over a `BufReader`, events,
//! never the whole file in memory) into one record fragment per element at
//! the spec's `record_path` ([`mappings::Record::Xml`]).
//!
//! - Files are taken in name order once their modification time is older
//!   than `settle` (an exporter still writing is left alone).
//! - Records go to the [`RecordSink`] in batches of `batch_size`; each batch
//!   carries the checkpoint `{file, size, modified, records}` that the sink
//!   stores in the same durable step as the receipts, so a restart skips
//!   exactly the records already receipted (they are re-parsed, not
//!   resubmitted). The file is the same one only with the same name, size
//!   and modification time: a new export that reuses the name of a finished
//!   one (a nightly `export.xml`), even at the same size, is read from its
//!   first record.
//! - A finished file moves to `done/`; a file that cannot be read or parsed
//!   (malformed XML, a record over `max_record_bytes`, no record path in the
//!   spec) moves to `failed/` with `<name>.reason.txt` beside it. Records
//!   that fail mapping are the sink's business (quarantine), not the file's.
//! - When the sink answers `Retry` the file stays where it is and the same
//!   batch is tried again at the next poll.
//!
//! Memory: at most two batches of fragments are in flight between the
//! parsing thread and the submitting task (bounded channel).
//!
//! The source type `xml_dir` ([`XmlDirSourceConfig`]) watches one directory.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use mappings::{MappingSpec, Record};
use quick_xml::events::Event;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::default_usize;
use crate::error::AgentError;
use crate::intake::{Outcome, RecordSink, normalise};
use crate::push_sources::{check_dir, default_poll_ms, default_settle_ms, is_dir, positive};
use crate::source::{Invalid, RunStats, Source, SourceContext, SourceTask};

/// XML source errors.
#[derive(Debug, thiserror::Error)]
pub enum XmlSourceError {
    /// A directory operation failed.
    #[error("xml source `{source_name}`: {path}: {message}")]
    Dir {
        /// The configured source.
        source_name: String,
        /// File or directory concerned.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The sink asked to retry later (downstream unavailable).
    #[error("xml source `{source_name}`: {file}: downstream unavailable, will retry: {reason}")]
    Retry {
        /// The configured source.
        source_name: String,
        /// The file in progress.
        file: String,
        /// The sink's reason.
        reason: String,
    },
}

/// Settings of one watched directory.
#[derive(Debug, Clone)]
pub struct XmlDirConfig {
    /// The watched directory.
    pub dir: PathBuf,
    /// Where finished files go (default `<dir>/done`).
    pub done_dir: PathBuf,
    /// Where failed files go (default `<dir>/failed`).
    pub failed_dir: PathBuf,
    /// File name extension to pick up (default `xml`).
    pub extension: String,
    /// Records per sink call.
    pub batch_size: usize,
    /// Minimum age of a file's last modification before it is read.
    pub settle: Duration,
    /// Largest record fragment in bytes.
    pub max_record_bytes: usize,
    /// Pause between directory scans in [`XmlDirSource::run`].
    pub poll_interval: Duration,
}

impl XmlDirConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> XmlDirConfig {
        let dir = dir.into();
        XmlDirConfig {
            done_dir: dir.join("done"),
            failed_dir: dir.join("failed"),
            dir,
            extension: "xml".into(),
            batch_size: 500,
            settle: Duration::from_secs(2),
            max_record_bytes: 1024 * 1024,
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// What became of one file in a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file name.
    pub file: String,
    /// Records submitted now (after skipping those receipted before).
    pub submitted: u64,
    /// Records skipped because a checkpoint showed them receipted.
    pub skipped: u64,
    /// Records accepted now.
    pub accepted: u64,
    /// Records quarantined or rejected now.
    pub not_accepted: u64,
    /// Of those, records the gateway rejected (the rest are quarantined).
    pub rejected: u64,
    /// `Some(reason)` when the file went to `failed/`.
    pub failed: Option<String>,
}

/// One watched XML export directory.
#[derive(Debug)]
pub struct XmlDirSource<S> {
    name: String,
    record_path: Option<String>,
    sink: S,
    cfg: XmlDirConfig,
}

/// Streams record fragments at `record_path` out of any reader, in bounded
/// memory (one fragment at a time).
#[derive(Debug)]
pub struct XmlRecordReader<R: BufRead> {
    reader: quick_xml::Reader<R>,
    want: Vec<Vec<u8>>,
    path: Vec<Vec<u8>>,
    buf: Vec<u8>,
    max_record_bytes: usize,
}

fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|b| *b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

impl<R: BufRead> XmlRecordReader<R> {
    /// A reader of fragments at `record_path` (absolute, e.g.
    /// `/Export/Records/Record`; element local names).
    pub fn new(input: R, record_path: &str, max_record_bytes: usize) -> Self {
        let mut reader = quick_xml::Reader::from_reader(input);
        reader.config_mut().trim_text(false);
        XmlRecordReader {
            reader,
            want: record_path
                .trim_matches('/')
                .split('/')
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            path: Vec::new(),
            buf: Vec::with_capacity(8192),
            max_record_bytes,
        }
    }

    /// Byte position in the input.
    pub fn position(&self) -> u64 {
        self.reader.buffer_position()
    }

    /// The next record fragment, `Ok(None)` at the end.
    ///
    /// # Errors
    /// A message with the byte position when the XML is malformed or a
    /// record is larger than the limit.
    pub fn next_record(&mut self) -> Result<Option<String>, String> {
        let mut writer: Option<quick_xml::Writer<Vec<u8>>> = None;
        let mut depth_at_start = 0usize;
        loop {
            self.buf.clear();
            let pos = self.reader.buffer_position();
            let ev = self
                .reader
                .read_event_into(&mut self.buf)
                .map_err(|e| format!("malformed XML at byte {pos}: {e}"))?;
            match &ev {
                Event::Start(e) => {
                    self.path.push(local(e.name().into_inner().as_bytes()).to_vec());
                    if writer.is_none() && self.path == self.want {
                        writer = Some(quick_xml::Writer::new(Vec::with_capacity(1024)));
                        depth_at_start = self.path.len();
                    }
                }
                Event::Empty(e) => {
                    self.path.push(local(e.name().into_inner().as_bytes()).to_vec());
                    let hit = writer.is_none() && self.path == self.want;
                    self.path.pop();
                    if hit {
                        let mut w = quick_xml::Writer::new(Vec::new());
                        w.write_event(ev.borrow()).map_err(|e| format!("at byte {pos}: {e}"))?;
                        return Ok(Some(String::from_utf8_lossy(&w.into_inner()).into_owned()));
                    }
                }
                Event::End(_) => {}
                Event::Eof => {
                    if writer.is_some() {
                        return Err(format!("unexpected end of file at byte {pos} inside a record"));
                    }
                    return Ok(None);
                }
                _ => {}
            }
            if let Some(w) = writer.as_mut() {
                match &ev {
                    Event::Decl(_) | Event::DocType(_) | Event::PI(_) => {}
                    _ => w.write_event(ev.borrow()).map_err(|e| format!("at byte {pos}: {e}"))?,
                }
                if w.get_ref().len() > self.max_record_bytes {
                    return Err(format!(
                        "record ending after byte {pos} is larger than {} bytes",
                        self.max_record_bytes
                    ));
                }
            }
            if let Event::End(_) = ev {
                let closing_record = writer.is_some() && self.path.len() == depth_at_start;
                self.path.pop();
                if closing_record && let Some(w) = writer.take() {
                    return Ok(Some(String::from_utf8_lossy(&w.into_inner()).into_owned()));
                }
            }
        }
    }
}

enum ReadMsg {
    Batch(Vec<String>),
    Failed(String),
}

/// Lists files with `ext` in `dir` whose mtime is older than `settle`, by name.
fn ready_files(dir: &Path, ext: &str, settle: Duration) -> std::io::Result<Vec<PathBuf>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        if !meta.is_file() || path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age >= settle {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// One scan of a drop directory: every file of `dir` with extension `ext`
/// older than `settle`, in name order, through `process` (stopping at its
/// first error); `dir_err` is the error of a directory that cannot be
/// listed.
pub(crate) async fn process_ready_files<R, E, F: Future<Output = Result<R, E>>>(
    (dir, ext, settle): (&Path, &str, Duration),
    dir_err: impl FnOnce(std::io::Error) -> E,
    mut process: impl FnMut(PathBuf) -> F,
) -> Result<Vec<R>, E> {
    let files = ready_files(dir, ext, settle).map_err(dir_err)?;
    let mut reports = Vec::with_capacity(files.len());
    for f in files {
        reports.push(process(f).await?);
    }
    Ok(reports)
}

/// A drop directory's loop: `scan` every `interval` until `stop` turns
/// true, each file's report logged by `log`, a failed scan as a warning
/// saying `what`.
pub(crate) async fn scan_until_stopped<R, E: std::fmt::Display, F: Future<Output = Result<Vec<R>, E>>>(
    mut stop: tokio::sync::watch::Receiver<bool>,
    interval: Duration,
    what: &str,
    mut scan: impl FnMut() -> F,
    log: impl Fn(&R),
) {
    loop {
        match scan().await {
            Ok(reports) => reports.iter().for_each(&log),
            Err(e) => tracing::warn!(error = %e, "{what}"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Moves `file` into `dir` (created if needed), replacing an older file of
/// the same name; with `reason`, writes `<name>.reason.txt` beside it.
pub(crate) fn move_into(file: &Path, dir: &Path, reason: Option<&str>) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = file.file_name().unwrap_or_default();
    let target = dir.join(name);
    if let Some(reason) = reason {
        let mut rname = name.to_os_string();
        rname.push(".reason.txt");
        std::fs::write(dir.join(rname), format!("{reason}\n"))?;
    }
    std::fs::rename(file, &target)?;
    Ok(target)
}

impl<S: RecordSink> XmlDirSource<S> {
    /// A source named `name` reading with `spec`'s record path.
    pub fn new(name: &str, spec: &MappingSpec, sink: S, cfg: XmlDirConfig) -> Self {
        XmlDirSource {
            name: name.to_string(),
            record_path: spec.record_path.clone(),
            sink,
            cfg,
        }
    }

    fn dir_err(&self, path: &Path, e: impl std::fmt::Display) -> XmlSourceError {
        XmlSourceError::Dir {
            source_name: self.name.clone(),
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Scans the directory once and processes every ready file.
    ///
    /// # Errors
    /// [`XmlSourceError::Retry`] when the sink is unavailable (the file
    /// stays), [`XmlSourceError::Dir`] when the directory cannot be used.
    pub async fn poll_once(&self) -> Result<Vec<FileReport>, XmlSourceError> {
        let c = &self.cfg;
        process_ready_files(
            (&c.dir, &c.extension, c.settle),
            |e| self.dir_err(&c.dir, e),
            |f| async move { self.process_file(&f).await },
        )
        .await
    }

    /// Polls until `stop` turns true; logs errors and backs off.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let log = |r: &FileReport| {
            tracing::info!(source = %self.name, file = %r.file, submitted = r.submitted,
                skipped = r.skipped, accepted = r.accepted, not_accepted = r.not_accepted,
                failed = r.failed.is_some(), "xml export processed");
        };
        scan_until_stopped(
            stop,
            self.cfg.poll_interval,
            "xml source scan",
            || self.poll_once(),
            log,
        )
        .await;
    }

    async fn process_file(&self, path: &Path) -> Result<FileReport, XmlSourceError> {
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let meta = std::fs::metadata(path).map_err(|e| self.dir_err(path, e))?;
        let size = meta.len();
        // Part of the file's identity: name and size alone let a new export
        // under a finished one's name and size be skipped as receipted.
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
        let mut report = FileReport {
            file: file.clone(),
            submitted: 0,
            skipped: 0,
            accepted: 0,
            not_accepted: 0,
            rejected: 0,
            failed: None,
        };
        let Some(record_path) = self.record_path.clone() else {
            let reason = "the mapping spec has no record_path".to_string();
            move_into(path, &self.cfg.failed_dir, Some(&reason)).map_err(|e| self.dir_err(path, e))?;
            report.failed = Some(reason);
            return Ok(report);
        };
        // resume: records of this file already receipted
        let cp = self.sink.checkpoint(&self.name).await;
        let skip = cp
            .as_ref()
            .filter(|c| c["file"] == json!(file) && c["size"] == json!(size) && c["modified"] == json!(modified))
            .and_then(|c| c["records"].as_u64())
            .unwrap_or(0);
        let (tx, mut rx) = mpsc::channel::<ReadMsg>(2);
        let reader_path = path.to_path_buf();
        let (batch, max) = (self.cfg.batch_size.max(1), self.cfg.max_record_bytes);
        let reader = tokio::task::spawn_blocking(move || read_file(&reader_path, &record_path, skip, batch, max, &tx));
        let mut done = skip;
        let mut failure = None;
        while let Some(msg) = rx.recv().await {
            let records = match msg {
                ReadMsg::Batch(r) => r,
                ReadMsg::Failed(reason) => {
                    failure = Some(reason);
                    break;
                }
            };
            let n = records.len();
            let keyed: Vec<(String, Record)> = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| (format!("{file}#{}", done + i as u64 + 1), Record::Xml(r)))
                .collect();
            let cp = json!({"file": file, "size": size, "modified": modified, "records": done + n as u64});
            let outcomes = normalise(self.sink.submit(&self.name, keyed, Some(cp)).await, n);
            if let Some(Outcome::Retry { reason }) = outcomes.iter().find(|o| matches!(o, Outcome::Retry { .. })) {
                drop(rx);
                let _ = reader.await;
                return Err(XmlSourceError::Retry {
                    source_name: self.name.clone(),
                    file,
                    reason: reason.clone(),
                });
            }
            let acc = outcomes.iter().filter(|o| o.is_accepted()).count() as u64;
            report.accepted += acc;
            report.not_accepted += n as u64 - acc;
            report.rejected += outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Rejected { .. }))
                .count() as u64;
            report.submitted += n as u64;
            done += n as u64;
        }
        let skipped = reader.await.unwrap_or(0);
        report.skipped = skipped.min(skip);
        match failure {
            Some(reason) => {
                let reason = format!("{file}: {reason} ({done} records before it were submitted)");
                move_into(path, &self.cfg.failed_dir, Some(&reason)).map_err(|e| self.dir_err(path, e))?;
                report.failed = Some(reason);
            }
            None => {
                move_into(path, &self.cfg.done_dir, None).map_err(|e| self.dir_err(path, e))?;
            }
        }
        Ok(report)
    }
}

/// The parsing thread: skips `skip` records, sends batches; returns the
/// number of records skipped.
fn read_file(path: &Path, record_path: &str, skip: u64, batch: usize, max: usize, tx: &mpsc::Sender<ReadMsg>) -> u64 {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(ReadMsg::Failed(format!("cannot open: {e}")));
            return 0;
        }
    };
    let mut reader = XmlRecordReader::new(std::io::BufReader::with_capacity(64 * 1024, file), record_path, max);
    let mut skipped = 0u64;
    let mut pending = Vec::with_capacity(batch);
    loop {
        match reader.next_record() {
            Ok(Some(r)) => {
                if skipped < skip {
                    skipped += 1;
                    continue;
                }
                pending.push(r);
                if pending.len() >= batch && tx.blocking_send(ReadMsg::Batch(std::mem::take(&mut pending))).is_err() {
                    return skipped;
                }
            }
            Ok(None) => {
                if !pending.is_empty() {
                    let _ = tx.blocking_send(ReadMsg::Batch(pending));
                }
                return skipped;
            }
            Err(reason) => {
                if !pending.is_empty() && tx.blocking_send(ReadMsg::Batch(std::mem::take(&mut pending))).is_err() {
                    return skipped;
                }
                let _ = tx.blocking_send(ReadMsg::Failed(reason));
                return skipped;
            }
        }
    }
}

// -------------------------------------------------------- `type = "xml_dir"`

/// `type = "xml_dir"`: a directory of XML exports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmlDirSourceConfig {
    /// Unique source name.
    pub name: String,
    /// Mapping spec (its `record_path` selects the records).
    pub mapping: PathBuf,
    /// The watched directory.
    pub dir: PathBuf,
    /// Records per pipeline call (default 500).
    #[serde(default = "default_usize::<500>")]
    pub batch_size: usize,
    /// Minimum age of a file before it is read (default 2000 ms).
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// Pause between scans (default 5000 ms).
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Largest record fragment (default 1 MiB).
    #[serde(default = "default_usize::<{ 1024 * 1024 }>")]
    pub max_record_bytes: usize,
}

impl XmlDirSourceConfig {
    /// Watches the directory, delivering to `sink` with `spec`, until
    /// `stop`; with `once` it scans once and counts records.
    ///
    /// # Errors
    /// [`AgentError::Source`] when a one-off scan fails.
    pub async fn run<S: RecordSink>(
        &self,
        spec: Arc<MappingSpec>,
        sink: S,
        stop: tokio::sync::watch::Receiver<bool>,
        once: bool,
    ) -> Result<RunStats, AgentError> {
        let xml = XmlDirConfig {
            batch_size: self.batch_size,
            settle: Duration::from_millis(self.settle_ms),
            max_record_bytes: self.max_record_bytes,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            ..XmlDirConfig::new(&self.dir)
        };
        let source = XmlDirSource::new(&self.name, &spec, sink, xml);
        let mut stats = RunStats::default();
        if once {
            for r in source
                .poll_once()
                .await
                .map_err(|e| AgentError::source(&self.name, e, true))?
            {
                stats.accepted += r.accepted;
                stats.rejected += r.rejected;
                stats.quarantined += r.not_accepted - r.rejected;
            }
        } else {
            source.run(stop).await;
        }
        Ok(stats)
    }
}

impl Source for XmlDirSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Path {
        &self.mapping
    }

    fn resolved(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Arc<dyn Source> {
        Arc::new(XmlDirSourceConfig {
            mapping: resolve(&self.mapping),
            dir: resolve(&self.dir),
            ..self.clone()
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        is_dir(&self.dir)?;
        positive("batch_size", self.batch_size as u64)?;
        positive("max_record_bytes", self.max_record_bytes as u64)
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        futures_util::future::ready(check_dir(&self.dir, "xml")).boxed()
    }

    fn start(&self, cx: SourceContext) -> Result<SourceTask, AgentError> {
        let c = self.clone();
        Ok(async move { c.run(cx.spec, cx.pipeline, cx.stop, cx.once).await }.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_records_at_path() {
        let doc = r#"<?xml version="1.0"?><Export><Header><Record>no</Record></Header><Records>
            <Record id="1"><Name>乙肝&amp;疫苗</Name><x:Lot xmlns:x="u">A</x:Lot></Record>
            <Record id="2"/><Other/><Record id="3"><Record>nested</Record></Record></Records></Export>"#;
        let mut r = XmlRecordReader::new(doc.as_bytes(), "/Export/Records/Record", 1 << 20);
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().expect("parse") {
            got.push(rec);
        }
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            r#"<Record id="1"><Name>乙肝&amp;疫苗</Name><x:Lot xmlns:x="u">A</x:Lot></Record>"#
        );
        assert_eq!(got[1], r#"<Record id="2"/>"#);
        assert_eq!(got[2], r#"<Record id="3"><Record>nested</Record></Record>"#);
        let node = mappings::sources::XmlNode::parse(&got[0]).expect("fragment parses");
        assert_eq!(node.child("Name").map(|n| n.text.as_str()), Some("乙肝&疫苗"));
    }

    /// A nightly exporter reusing the name of a finished export: the new
    /// file has the same name and size (same-width ids) but other records,
    /// and must be read from its first record, not skipped as receipted.
    /// The same file after an interruption is still resumed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_export_under_a_finished_ones_name_and_size_is_read_whole() {
        use crate::intake::MemorySink;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let spec = std::sync::Arc::new(
            MappingSpec::load(
                root.join("config/mappings/mah-export.toml"),
                &mappings::Dataset::builtin(),
            )
            .expect("spec"),
        );
        let export = |day: u32| {
            let records: String = (1..=3)
                .map(|k| {
                    format!(
                        "<Record type=\"PRODUCT\" id=\"P-{day:02}-{k}\"><Time>2023-11-20 09:00:00</Time>\
                         <Product code=\"8612345\"><Name>乙型肝炎疫苗(酿酒酵母)</Name><GenericName>乙型肝炎疫苗</GenericName>\
                         <Form>注射剂</Form><Strength>0.5mL:10μg</Strength><Package doses=\"1\">1支/盒</Package>\
                         <ApprovalNo>国药准字S20130001</ApprovalNo><ShelfLife months=\"36\"/><Storage min=\"2\" max=\"8\"/>\
                         </Product><Holder uscc=\"91320000134567890Y\">江苏某生物制品有限公司</Holder></Record>"
                    )
                })
                .collect();
            format!("<Export><Records>{records}</Records></Export>")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("export.xml");
        let sink = std::sync::Arc::new(MemorySink::new("mah", spec.clone()));
        let cfg = XmlDirConfig {
            batch_size: 2,
            settle: Duration::ZERO,
            ..XmlDirConfig::new(dir.path())
        };
        let src = XmlDirSource::new("mah", &spec, sink.clone(), cfg);
        let day1 = SystemTime::now() - Duration::from_secs(86_400);
        std::fs::write(&file, export(1)).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(day1))
            .expect("mtime");
        let r = src.poll_once().await.expect("poll");
        assert_eq!((r[0].submitted, r[0].skipped, r[0].accepted), (3, 0, 3), "{r:?}");

        // the next night: same name, same size, other records
        std::fs::write(&file, export(2)).expect("write");
        assert_eq!(export(1).len(), export(2).len());
        let r = src.poll_once().await.expect("poll");
        assert_eq!((r[0].submitted, r[0].skipped, r[0].accepted), (3, 0, 3), "{r:?}");

        // an interrupted file (checkpoint after its first batch) is resumed
        std::fs::write(&file, export(3)).expect("write");
        let meta = std::fs::metadata(&file).expect("meta");
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
        let cp = json!({"file": "export.xml", "size": meta.len(), "modified": modified, "records": 2});
        let _ = sink.submit("mah", Vec::new(), Some(cp)).await;
        let r = src.poll_once().await.expect("poll");
        assert_eq!((r[0].submitted, r[0].skipped), (1, 2), "{r:?}");
    }

    #[test]
    fn malformed_and_oversized() {
        let mut r = XmlRecordReader::new("<A><R><x></R></A>".as_bytes(), "/A/R", 1 << 20);
        assert!(r.next_record().is_err());
        let big = format!("<A><R>{}</R></A>", "x".repeat(5000));
        let mut r = XmlRecordReader::new(big.as_bytes(), "/A/R", 1000);
        assert!(r.next_record().expect_err("too big").contains("larger than 1000 bytes"));
        let mut r = XmlRecordReader::new("<A><R>".as_bytes(), "/A/R", 1000);
        assert!(r.next_record().is_err());
    }
}
