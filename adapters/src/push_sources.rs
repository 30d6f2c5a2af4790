//! Configuration and runners of the push-style sources: HL7 v2 over MLLP
//! (`hl7_mllp`), HL7 file drop (`hl7_files`), XML export directories
//! (`xml_dir`) and AMQP queues (`amqp`), plus the [`RecordSink`] that
//! connects them to the agent's [`Pipeline`] (map → quarantine → seal →
//! POST → receipts; the checkpoint stored with the receipts).
//!
//! The `[[sources]]` entries of the agent config deserialize into these
//! structs (`deny_unknown_fields`); [`PushSourceConfig::validate`] checks
//! them before anything starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mappings::{MappingSpec, Record};
use serde::Deserialize;
use tokio::sync::watch;

use crate::amqp::{AmqpConfig, AmqpSource};
use crate::error::AgentError;
use crate::hl7::{FieldLocator, Hl7Processor};
use crate::hl7_files::{Hl7FileDrop, Hl7FilesConfig};
use crate::intake::{Outcome, RecordSink, normalise};
use crate::mllp::{MllpConfig, MllpServer};
use crate::pipeline::{Pipeline, RecordOutcome};
use crate::xml_source::{XmlDirConfig, XmlDirSource};

impl From<RecordOutcome> for Outcome {
    fn from(o: RecordOutcome) -> Outcome {
        match o {
            RecordOutcome::Accepted { .. } => Outcome::Accepted,
            RecordOutcome::Rejected { code, message } => Outcome::Rejected { code, message },
            RecordOutcome::Quarantined { reason } => Outcome::Quarantined { reason },
        }
    }
}

/// The agent's pipeline as the push sources' sink: an `Err` of the whole
/// batch (gateway unreachable after its retries, state database failure)
/// becomes `Retry` for every record, so nothing is acknowledged to a sender
/// without a receipt.
impl RecordSink for Pipeline {
    async fn submit(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        checkpoint: Option<serde_json::Value>,
    ) -> Vec<Outcome> {
        let n = records.len();
        match self.submit_with_checkpoint(source, records, checkpoint).await {
            Ok(v) => normalise(v.into_iter().map(Outcome::from).collect(), n),
            Err(e) => {
                tracing::warn!(source, error = %e, "submit failed; senders will retry");
                let reason = e.to_string();
                (0..n).map(|_| Outcome::Retry { reason: reason.clone() }).collect()
            }
        }
    }

    async fn checkpoint(&self, source: &str) -> Option<serde_json::Value> {
        self.state().checkpoint(source).await.ok().flatten()
    }
}

fn d_max_frame() -> usize {
    1024 * 1024
}
fn d_max_connections() -> usize {
    256
}
fn d_hl7_batch() -> usize {
    256
}
fn d_settle_ms() -> u64 {
    2000
}
fn d_poll_ms() -> u64 {
    5000
}
fn d_max_file() -> u64 {
    64 * 1024 * 1024
}
fn d_xml_batch() -> usize {
    500
}
fn d_max_record() -> usize {
    1024 * 1024
}
fn d_attempts() -> u32 {
    5
}
fn d_amqp_batch() -> usize {
    100
}
fn d_retry_ms() -> u64 {
    2000
}
fn d_event_id() -> String {
    "eventId".into()
}

/// `type = "hl7_mllp"`: an MLLP listener for VXU^V04.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7MllpSourceConfig {
    /// Unique source name.
    pub name: String,
    /// Mapping spec (e.g. config/mappings/hl7-vxu.toml).
    pub mapping: PathBuf,
    /// Listen address, e.g. `0.0.0.0:2575`.
    pub listen: String,
    /// Largest frame in bytes (default 1 MiB).
    #[serde(default = "d_max_frame")]
    pub max_frame_bytes: usize,
    /// Concurrent connections (default 256).
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Messages per pipeline call (default 256).
    #[serde(default = "d_hl7_batch")]
    pub batch_max: usize,
}

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
    #[serde(default = "d_settle_ms")]
    pub settle_ms: u64,
    /// Pause between scans (default 5000 ms).
    #[serde(default = "d_poll_ms")]
    pub poll_interval_ms: u64,
    /// Largest file (default 64 MiB).
    #[serde(default = "d_max_file")]
    pub max_file_bytes: u64,
    /// Messages per pipeline call (default 256).
    #[serde(default = "d_hl7_batch")]
    pub batch_size: usize,
}

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
    #[serde(default = "d_xml_batch")]
    pub batch_size: usize,
    /// Minimum age of a file before it is read (default 2000 ms).
    #[serde(default = "d_settle_ms")]
    pub settle_ms: u64,
    /// Pause between scans (default 5000 ms).
    #[serde(default = "d_poll_ms")]
    pub poll_interval_ms: u64,
    /// Largest record fragment (default 1 MiB).
    #[serde(default = "d_max_record")]
    pub max_record_bytes: usize,
}

/// `type = "amqp"`: a durable RabbitMQ queue of JSON events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// Unique source name.
    pub name: String,
    /// Mapping spec (e.g. config/mappings/erp-shipment.toml).
    pub mapping: PathBuf,
    /// Broker URL; put the password in `${ENV}`.
    pub url: String,
    /// Durable queue.
    pub queue: String,
    /// Dead-letter exchange (fanout).
    pub dead_letter_exchange: String,
    /// Failed attempts before dead-lettering (default 5).
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    /// Messages per pipeline call (default 100).
    #[serde(default = "d_amqp_batch")]
    pub batch_size: usize,
    /// Delay before a republish, times the attempt (default 2000 ms).
    #[serde(default = "d_retry_ms")]
    pub retry_delay_ms: u64,
    /// JSON field with the event id when `message_id` is unset (default `eventId`).
    #[serde(default = "d_event_id")]
    pub event_id_field: String,
}

/// Any of the push sources (for validation and running).
#[derive(Debug, Clone)]
pub enum PushSourceConfig {
    /// `hl7_mllp`.
    Hl7Mllp(Hl7MllpSourceConfig),
    /// `hl7_files`.
    Hl7Files(Hl7FilesSourceConfig),
    /// `xml_dir`.
    XmlDir(XmlDirSourceConfig),
    /// `amqp`.
    Amqp(AmqpSourceConfig),
}

impl PushSourceConfig {
    /// The source name.
    pub fn name(&self) -> &str {
        match self {
            PushSourceConfig::Hl7Mllp(c) => &c.name,
            PushSourceConfig::Hl7Files(c) => &c.name,
            PushSourceConfig::XmlDir(c) => &c.name,
            PushSourceConfig::Amqp(c) => &c.name,
        }
    }

    /// The same config with `mapping` and `dir` resolved by `resolve`
    /// (relative paths are relative to the agent config file).
    pub fn resolved(&self, resolve: impl Fn(&std::path::Path) -> PathBuf) -> PushSourceConfig {
        let mut c = self.clone();
        match &mut c {
            PushSourceConfig::Hl7Mllp(c) => c.mapping = resolve(&c.mapping),
            PushSourceConfig::Hl7Files(c) => {
                c.mapping = resolve(&c.mapping);
                c.dir = resolve(&c.dir);
            }
            PushSourceConfig::XmlDir(c) => {
                c.mapping = resolve(&c.mapping);
                c.dir = resolve(&c.dir);
            }
            PushSourceConfig::Amqp(c) => c.mapping = resolve(&c.mapping),
        }
        c
    }

    /// Checks values that deserialization cannot: returns (key, problem).
    ///
    /// # Errors
    /// The first bad key and what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = |key: &'static str, v: u64| {
            if v == 0 {
                Err((key, "must be greater than 0".to_string()))
            } else {
                Ok(())
            }
        };
        match self {
            PushSourceConfig::Hl7Mllp(c) => {
                c.listen
                    .parse::<std::net::SocketAddr>()
                    .map_err(|e| ("listen", format!("`{}` is not host:port ({e})", c.listen)))?;
                positive("max_frame_bytes", c.max_frame_bytes as u64)?;
                positive("max_connections", c.max_connections as u64)?;
                positive("batch_max", c.batch_max as u64)
            }
            PushSourceConfig::Hl7Files(c) => {
                if !c.dir.is_dir() {
                    return Err(("dir", format!("{} is not a directory", c.dir.display())));
                }
                positive("max_file_bytes", c.max_file_bytes)?;
                positive("batch_size", c.batch_size as u64)
            }
            PushSourceConfig::XmlDir(c) => {
                if !c.dir.is_dir() {
                    return Err(("dir", format!("{} is not a directory", c.dir.display())));
                }
                positive("batch_size", c.batch_size as u64)?;
                positive("max_record_bytes", c.max_record_bytes as u64)
            }
            PushSourceConfig::Amqp(c) => {
                if !(c.url.starts_with("amqp://") || c.url.starts_with("amqps://")) {
                    return Err(("url", "must start with amqp:// or amqps://".to_string()));
                }
                if c.queue.is_empty() {
                    return Err(("queue", "must not be empty".to_string()));
                }
                if c.dead_letter_exchange.is_empty() {
                    return Err(("dead_letter_exchange", "must not be empty".to_string()));
                }
                positive("max_attempts", u64::from(c.max_attempts))?;
                positive("batch_size", c.batch_size as u64)
            }
        }
    }
}

fn source_err(name: &str, message: String, transient: bool) -> AgentError {
    AgentError::Source {
        source_name: name.to_string(),
        message,
        transient,
    }
}

/// Tests what can be tested of a push source without taking data: the
/// MLLP address can be bound, the directory is readable and writable, the
/// broker accepts the connection and the queue/exchange declarations.
///
/// # Errors
/// What failed, for `vaxgate agent check`.
pub async fn check_push_source(cfg: &PushSourceConfig) -> Result<String, String> {
    let dir_check = |dir: &std::path::Path, ext: &str| -> Result<String, String> {
        let waiting = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some(ext))
            .count();
        let probe = dir.join(format!(".vaxgate-check-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(format!(
            "{} readable and writable, {waiting} .{ext} file(s) waiting",
            dir.display()
        ))
    };
    match cfg {
        PushSourceConfig::Hl7Mllp(c) => match tokio::net::TcpListener::bind(&c.listen).await {
            Ok(_) => Ok(format!("can listen on {}", c.listen)),
            Err(e) => Err(format!("cannot listen on {}: {e}", c.listen)),
        },
        PushSourceConfig::Hl7Files(c) => dir_check(&c.dir, "hl7"),
        PushSourceConfig::XmlDir(c) => dir_check(&c.dir, "xml"),
        PushSourceConfig::Amqp(c) => {
            let src = AmqpSource::new(
                &c.name,
                AmqpConfig::new(&c.url, &c.queue, &c.dead_letter_exchange),
                NoSink,
            );
            match tokio::time::timeout(Duration::from_secs(15), src.connect()).await {
                Ok(Ok((conn, _))) => {
                    let _ = conn.close(200, "check done".into()).await;
                    Ok(format!(
                        "broker reachable; queue `{}` and dead-letter exchange `{}` declared",
                        c.queue, c.dead_letter_exchange
                    ))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer from the broker within 15 s".into()),
            }
        }
    }
}

/// A sink that takes nothing (used where only the broker is checked).
#[derive(Debug)]
struct NoSink;

impl RecordSink for NoSink {
    async fn submit(&self, _: &str, records: Vec<(String, Record)>, _: Option<serde_json::Value>) -> Vec<Outcome> {
        records
            .iter()
            .map(|_| Outcome::Retry {
                reason: "check only".into(),
            })
            .collect()
    }

    async fn checkpoint(&self, _: &str) -> Option<serde_json::Value> {
        None
    }
}

/// What a one-off scan (`once`) of a directory source did; zero for the
/// continuously running sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Records (XML) or messages (HL7 files) accepted.
    pub accepted: u64,
    /// Records (XML) or messages (HL7 files: AE/AR) refused and not quarantined.
    pub rejected: u64,
    /// Records (XML) or messages (HL7 files) quarantined.
    pub quarantined: u64,
}

/// Runs one push source until `stop` turns true (with `once`, the
/// directory sources scan once and return, the listener and the queue
/// consumer return at once: they have no "caught up"), delivering to
/// `sink` with `spec` (the source's compiled mapping; its TOML is re-read
/// from the config's `mapping` file for HL7 field locations).
///
/// # Errors
/// [`AgentError::Source`] when the source cannot start (address in use,
/// spec file unreadable) or a one-off scan fails.
pub async fn run_push_source<S: RecordSink>(
    cfg: &PushSourceConfig,
    spec: Arc<MappingSpec>,
    sink: S,
    mut stop: watch::Receiver<bool>,
    once: bool,
) -> Result<PushStats, AgentError> {
    let name = cfg.name().to_string();
    if once && matches!(cfg, PushSourceConfig::Hl7Mllp(_) | PushSourceConfig::Amqp(_)) {
        tracing::info!(source = %name, "push source skipped: it only runs continuously");
        return Ok(PushStats::default());
    }
    let hl7_processor = |mapping: &PathBuf, sink: S| -> Result<Arc<Hl7Processor<S>>, AgentError> {
        let text = std::fs::read_to_string(mapping).map_err(|e| AgentError::File {
            path: mapping.display().to_string(),
            message: e.to_string(),
        })?;
        let loc = FieldLocator::from_spec_toml(&text, &mapping.display().to_string())
            .map_err(|e| source_err(&name, e.to_string(), false))?;
        Ok(Arc::new(Hl7Processor::new(&name, spec.clone(), loc, sink)))
    };
    match cfg {
        PushSourceConfig::Hl7Mllp(c) => {
            let processor = hl7_processor(&c.mapping, sink)?;
            let mllp = MllpConfig {
                max_frame_bytes: c.max_frame_bytes,
                max_connections: c.max_connections,
                batch_max: c.batch_max,
                ..MllpConfig::default()
            };
            let server = MllpServer::bind(&c.listen, processor, mllp)
                .await
                .map_err(|e| source_err(&name, e.to_string(), false))?;
            tracing::info!(source = %name, addr = %server.local_addr(), "MLLP listener started");
            let _ = stop.changed().await;
            server.shutdown().await;
            Ok(PushStats::default())
        }
        PushSourceConfig::Hl7Files(c) => {
            let processor = hl7_processor(&c.mapping, sink)?;
            let files = Hl7FilesConfig {
                dir: c.dir.clone(),
                extension: "hl7".into(),
                settle: Duration::from_millis(c.settle_ms),
                max_file_bytes: c.max_file_bytes,
                batch_size: c.batch_size,
                poll_interval: Duration::from_millis(c.poll_interval_ms),
            };
            let drop_dir = Hl7FileDrop::new(&name, processor, files);
            let mut stats = PushStats::default();
            if once {
                for r in drop_dir
                    .poll_once()
                    .await
                    .map_err(|e| source_err(&name, e.to_string(), true))?
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
        PushSourceConfig::XmlDir(c) => {
            let xml = XmlDirConfig {
                batch_size: c.batch_size,
                settle: Duration::from_millis(c.settle_ms),
                max_record_bytes: c.max_record_bytes,
                poll_interval: Duration::from_millis(c.poll_interval_ms),
                ..XmlDirConfig::new(&c.dir)
            };
            let source = XmlDirSource::new(&name, &spec, sink, xml);
            let mut stats = PushStats::default();
            if once {
                for r in source
                    .poll_once()
                    .await
                    .map_err(|e| source_err(&name, e.to_string(), true))?
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
        PushSourceConfig::Amqp(c) => {
            let amqp = AmqpConfig {
                max_attempts: c.max_attempts,
                batch_size: c.batch_size,
                retry_delay: Duration::from_millis(c.retry_delay_ms),
                event_id_field: c.event_id_field.clone(),
                ..AmqpConfig::new(&c.url, &c.queue, &c.dead_letter_exchange)
            };
            let source = AmqpSource::new(&name, amqp, sink);
            let mut backoff = Duration::from_millis(500);
            loop {
                match source.run(stop.clone()).await {
                    Ok(stats) => {
                        tracing::info!(source = %name, accepted = stats.accepted, retried = stats.retried,
                            dead_lettered = stats.dead_lettered, "AMQP consumer stopped");
                        if *stop.borrow() {
                            return Ok(PushStats::default());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "AMQP consumer failed; reconnecting"),
                }
                tokio::select! {
                    _ = stop.changed() => return Ok(PushStats::default()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
