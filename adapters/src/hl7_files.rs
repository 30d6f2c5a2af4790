//! HL7 v2 file-drop directory (R1.4): `.hl7` files (one or more messages,
//! optionally in FHS/BHS batch envelopes, segments separated by CR, LF or
//! CR LF) are processed like MLLP messages by the same
//! [`Hl7Processor`]; the ACKs are written to `<name>.ack` next to the moved
//! file.
//!
//! - Every message `AA` → the file moves to `done/`.
//! - Any message `AE`/`AR` for its content → the file moves to `failed/`
//!   with `<name>.reason.txt` listing each such message's control id and
//!   its MSA/ERR segments (no personal data: ERR texts name fields and
//!   rules only). The accepted messages of that file are in the ledger;
//!   resending the fixed file is safe (the gateway is idempotent).
//! - The downstream unavailable → the file stays and is tried again at the
//!   next poll (already accepted messages come back as duplicates).
//! - A message repeated in the file (a sender's resend appended to it) goes
//!   to the sink in a later call than its first copy, and is acknowledged
//!   like any resend: in one call, the repeated event ids would make the
//!   gateway refuse the whole call, and the file would never leave the
//!   directory.
//!
//! The source type `hl7_files` ([`Hl7FilesSourceConfig`]) watches one
//! directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use mappings::MappingSpec;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::{default_u64, default_usize};
use crate::error::AgentError;
use crate::hl7::{AckCode, Hl7Processor, MessageHeader, segments, split_messages};
use crate::intake::RecordSink;
use crate::push_sources::{check_dir, default_poll_ms, default_settle_ms, hl7_processor, is_dir, positive};
use crate::source::{Invalid, RunStats, Source, SourceContext, SourceTask};
use crate::xml_source::{move_into, process_ready_files, scan_until_stopped};

/// Errors of the file drop.
#[derive(Debug, thiserror::Error)]
pub enum Hl7FilesError {
    /// A directory or file operation failed.
    #[error("hl7 file drop `{source_name}`: {path}: {message}")]
    Dir {
        /// The configured source.
        source_name: String,
        /// File or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The downstream is unavailable; the file stays.
    #[error("hl7 file drop `{source_name}`: {file}: downstream unavailable, will retry")]
    Retry {
        /// The configured source.
        source_name: String,
        /// The file.
        file: String,
    },
}

/// Splits `messages` into consecutive chunks of at most `size` messages
/// in which no control id (MSH-10) occurs twice.
fn chunks_without_repeats(messages: &[String], size: usize) -> Vec<&[String]> {
    let size = size.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut ids = std::collections::HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let id = MessageHeader::parse(m).ok().map(|h| h.control_id);
        let repeat = id.as_ref().is_some_and(|id| ids.contains(id));
        if i > start && (i - start == size || repeat) {
            out.push(&messages[start..i]);
            start = i;
            ids.clear();
        }
        if let Some(id) = id {
            ids.insert(id);
        }
    }
    if start < messages.len() {
        out.push(&messages[start..]);
    }
    out
}

/// Settings of the drop directory.
#[derive(Debug, Clone)]
pub struct Hl7FilesConfig {
    /// The watched directory.
    pub dir: std::path::PathBuf,
    /// Extension picked up (default `hl7`).
    pub extension: String,
    /// Minimum age of a file's last modification.
    pub settle: Duration,
    /// Largest file read (bytes); larger ones go to `failed/`.
    pub max_file_bytes: u64,
    /// Messages per sink call.
    pub batch_size: usize,
    /// Pause between scans in [`Hl7FileDrop::run`].
    pub poll_interval: Duration,
}

impl Hl7FilesConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        Hl7FilesConfig {
            dir: dir.into(),
            extension: "hl7".into(),
            settle: Duration::from_secs(2),
            max_file_bytes: 64 * 1024 * 1024,
            batch_size: 200,
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7FileReport {
    /// File name.
    pub file: String,
    /// Messages acknowledged `AA`.
    pub accepted: usize,
    /// Messages acknowledged `AE`/`AR`.
    pub refused: usize,
    /// Of the refused, those kept in the agent's quarantine.
    pub quarantined: usize,
    /// Where the file went (`done` or `failed`).
    pub moved_to: &'static str,
}

/// A watched `.hl7` directory.
#[derive(Debug)]
pub struct Hl7FileDrop<S> {
    name: String,
    processor: Arc<Hl7Processor<S>>,
    cfg: Hl7FilesConfig,
}

impl<S: RecordSink> Hl7FileDrop<S> {
    /// A drop directory named `name` using `processor`.
    pub fn new(name: &str, processor: Arc<Hl7Processor<S>>, cfg: Hl7FilesConfig) -> Self {
        Hl7FileDrop {
            name: name.to_string(),
            processor,
            cfg,
        }
    }

    fn err(&self, path: &Path, e: impl std::fmt::Display) -> Hl7FilesError {
        Hl7FilesError::Dir {
            source_name: self.name.clone(),
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Processes every ready file once.
    ///
    /// # Errors
    /// [`Hl7FilesError::Retry`] when the downstream is unavailable (the
    /// file stays), [`Hl7FilesError::Dir`] for directory problems.
    pub async fn poll_once(&self) -> Result<Vec<Hl7FileReport>, Hl7FilesError> {
        let c = &self.cfg;
        process_ready_files(
            (&c.dir, &c.extension, c.settle),
            |e| self.err(&c.dir, e),
            |f| async move { self.process_file(&f).await },
        )
        .await
    }

    /// Polls until `stop` turns true.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let log = |r: &Hl7FileReport| {
            tracing::info!(source = %self.name, file = %r.file, accepted = r.accepted,
                refused = r.refused, moved_to = r.moved_to, "hl7 file processed");
        };
        scan_until_stopped(
            stop,
            self.cfg.poll_interval,
            "hl7 file drop scan",
            || self.poll_once(),
            log,
        )
        .await;
    }

    async fn process_file(&self, path: &Path) -> Result<Hl7FileReport, Hl7FilesError> {
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let dir = &self.cfg.dir;
        let size = std::fs::metadata(path).map_err(|e| self.err(path, e))?.len();
        if size > self.cfg.max_file_bytes {
            let reason = format!(
                "{file}: {size} bytes is more than the limit of {}",
                self.cfg.max_file_bytes
            );
            move_into(path, &dir.join("failed"), Some(&reason)).map_err(|e| self.err(path, e))?;
            return Ok(Hl7FileReport {
                file,
                accepted: 0,
                refused: 0,
                quarantined: 0,
                moved_to: "failed",
            });
        }
        let bytes = std::fs::read(path).map_err(|e| self.err(path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        let messages = split_messages(&text);
        let mut acks = String::new();
        let mut problems = Vec::new();
        let mut accepted = 0;
        let mut quarantined = 0;
        for chunk in chunks_without_repeats(&messages, self.cfg.batch_size) {
            let results = self.processor.process_batch(chunk.to_vec()).await;
            if results.iter().any(|r| r.retry) {
                return Err(Hl7FilesError::Retry {
                    source_name: self.name.clone(),
                    file,
                });
            }
            for (msg, r) in chunk.iter().zip(results) {
                acks.push_str(&r.ack.replace('\r', "\n"));
                acks.push('\n');
                if r.code == AckCode::Aa {
                    accepted += 1;
                } else {
                    quarantined += usize::from(r.quarantined);
                    let id = MessageHeader::parse(msg).map(|h| h.control_id).unwrap_or_default();
                    let detail: Vec<&str> = segments(&r.ack)
                        .filter(|s| s.starts_with("MSA") || s.starts_with("ERR"))
                        .collect();
                    problems.push(format!("message {id}:\n  {}", detail.join("\n  ")));
                }
            }
        }
        if messages.is_empty() {
            problems.push("the file holds no HL7 message".to_string());
        }
        let (target, reason) = if problems.is_empty() {
            ("done", None)
        } else {
            (
                "failed",
                Some(format!(
                    "{file}: {} of {} messages refused\n{}",
                    problems.len(),
                    messages.len(),
                    problems.join("\n")
                )),
            )
        };
        let target_dir = dir.join(target);
        let moved = move_into(path, &target_dir, reason.as_deref()).map_err(|e| self.err(path, e))?;
        let mut ack_name = moved.file_name().unwrap_or_default().to_os_string();
        ack_name.push(".ack");
        std::fs::write(target_dir.join(ack_name), acks).map_err(|e| self.err(&target_dir, e))?;
        Ok(Hl7FileReport {
            file,
            accepted,
            refused: problems.len(),
            quarantined,
            moved_to: target,
        })
    }
}

// ------------------------------------------------------ `type = "hl7_files"`

/// `type = "hl7_files"`: a drop directory of `.hl7` files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7FilesSourceConfig {
    /// Unique source name.
    pub name: String,
    /// Mapping spec.
    pub mapping: PathBuf,
    /// The watched directory (`done/` and `failed/` are created in it).
    pub dir: PathBuf,
    /// Minimum age of a file before it is read (default 2000 ms).
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// Pause between scans (default 5000 ms).
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Largest file (default 64 MiB).
    #[serde(default = "default_u64::<{ 64 * 1024 * 1024 }>")]
    pub max_file_bytes: u64,
    /// Messages per pipeline call (default 256).
    #[serde(default = "default_usize::<256>")]
    pub batch_size: usize,
}

impl Hl7FilesSourceConfig {
    /// Watches the directory, delivering to `sink` with `spec` (field
    /// locations from the `mapping` file), until `stop`; with `once` it
    /// scans once and counts messages.
    ///
    /// # Errors
    /// [`AgentError::Source`] when the spec file is unreadable or a one-off
    /// scan fails.
    pub async fn run<S: RecordSink>(
        &self,
        spec: Arc<MappingSpec>,
        sink: S,
        stop: watch::Receiver<bool>,
        once: bool,
    ) -> Result<RunStats, AgentError> {
        let name = &self.name;
        let processor = hl7_processor(name, &self.mapping, spec, sink)?;
        let files = Hl7FilesConfig {
            dir: self.dir.clone(),
            extension: "hl7".into(),
            settle: Duration::from_millis(self.settle_ms),
            max_file_bytes: self.max_file_bytes,
            batch_size: self.batch_size,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
        };
        let drop_dir = Hl7FileDrop::new(name, processor, files);
        let mut stats = RunStats::default();
        if once {
            for r in drop_dir
                .poll_once()
                .await
                .map_err(|e| AgentError::source(name, e, true))?
            {
                stats.accepted += r.accepted as u64;
                stats.rejected += (r.refused - r.quarantined) as u64;
                stats.quarantined += r.quarantined as u64;
            }
        } else {
            drop_dir.run(stop).await;
        }
        Ok(stats)
    }
}

impl Source for Hl7FilesSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Path {
        &self.mapping
    }

    fn resolved(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Arc<dyn Source> {
        Arc::new(Hl7FilesSourceConfig {
            mapping: resolve(&self.mapping),
            dir: resolve(&self.dir),
            ..self.clone()
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        is_dir(&self.dir)?;
        positive("max_file_bytes", self.max_file_bytes)?;
        positive("batch_size", self.batch_size as u64)
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        futures_util::future::ready(check_dir(&self.dir, "hl7")).boxed()
    }

    fn start(&self, cx: SourceContext) -> Result<SourceTask, AgentError> {
        let c = self.clone();
        Ok(async move { c.run(cx.spec, cx.pipeline, cx.stop, cx.once).await }.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> String {
        format!("MSH|^~\\&|A|B|C|D|20240305||VXU^V04|{id}|P|2.5.1\rPID|1")
    }

    #[test]
    fn chunks_hold_each_control_id_once() {
        let m: Vec<String> = ["1", "2", "1", "3", "4", "5", "5"].iter().map(|i| msg(i)).collect();
        let ids = |c: &[String]| -> Vec<String> {
            c.iter()
                .map(|m| MessageHeader::parse(m).map(|h| h.control_id).unwrap_or_default())
                .collect()
        };
        let chunks: Vec<Vec<String>> = chunks_without_repeats(&m, 3).into_iter().map(ids).collect();
        assert_eq!(chunks, vec![vec!["1", "2"], vec!["1", "3", "4"], vec!["5"], vec!["5"]]);
        assert_eq!(chunks_without_repeats(&m, 100).len(), 3);
        assert!(chunks_without_repeats(&[], 10).is_empty());
        let no_header = vec!["PID|1".to_string(), "PID|1".to_string()];
        assert_eq!(chunks_without_repeats(&no_header, 0).len(), 2, "size 0 counts as 1");
    }
}
