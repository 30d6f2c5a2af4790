//! MLLP listener (HL7 v2 over TCP, R1.4): frames `0x0B <message> 0x1C 0x0D`,
//! many concurrent connections, a bounded frame size, one ACK per message
//! on the same connection in order.
//!
//! Messages from all connections go through one bounded queue to a batch
//! worker that processes whatever is waiting (up to `batch_max`) with one
//! [`RecordSink`] call, so a busy listener sends the agent full batches and
//! an idle one adds no latency. A full queue blocks the connections' reads
//! (back-pressure on the senders, never unbounded memory).
//!
//! The source type `hl7_mllp` ([`Hl7MllpSourceConfig`]) runs a listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use mappings::MappingSpec;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::default_usize;
use crate::error::AgentError;
use crate::hl7::{AckCode, ErrEntry, Hl7Processor, Processed, build_ack, err_code};
use crate::intake::RecordSink;
use crate::push_sources::{hl7_processor, positive};
use crate::source::{Invalid, RunStats, Source, SourceContext, SourceTask};

/// Start of block.
pub const SB: u8 = 0x0B;
/// End of block.
pub const EB: u8 = 0x1C;
/// Carriage return after the end of block.
pub const CR: u8 = 0x0D;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct MllpConfig {
    /// Largest accepted frame in bytes; a longer one gets `AR` and the
    /// connection is closed.
    pub max_frame_bytes: usize,
    /// Concurrent connections; more are closed at once.
    pub max_connections: usize,
    /// Most messages per sink call.
    pub batch_max: usize,
    /// Messages waiting for the batch worker (back-pressure bound).
    pub queue: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
}

impl Default for MllpConfig {
    fn default() -> Self {
        MllpConfig {
            max_frame_bytes: 1024 * 1024,
            max_connections: 256,
            batch_max: 256,
            queue: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// MLLP errors.
#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    /// Socket error.
    #[error("mllp {addr}: {source}")]
    Io {
        /// Address concerned.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The peer sent something that is not MLLP or closed early.
    #[error("mllp: {0}")]
    Protocol(String),
}

type Job = (String, oneshot::Sender<Processed>);

/// A running listener; dropping it does not stop it, [`MllpServer::shutdown`] does.
#[derive(Debug)]
pub struct MllpServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MllpServer {
    /// Starts serving on `listener`.
    pub fn start<S: RecordSink>(listener: TcpListener, processor: Arc<Hl7Processor<S>>, cfg: MllpConfig) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel::<Job>(cfg.queue.max(1));
        let worker = tokio::spawn(batch_worker(processor, rx, cfg.batch_max.max(1)));
        let task = tokio::spawn(accept_loop(listener, tx, cfg, stop_rx, worker));
        MllpServer { addr, stop, task }
    }

    /// Binds `addr` and starts serving.
    ///
    /// # Errors
    /// [`MllpError::Io`] when the address cannot be bound.
    pub async fn bind<S: RecordSink>(
        addr: &str,
        processor: Arc<Hl7Processor<S>>,
        cfg: MllpConfig,
    ) -> Result<Self, MllpError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| MllpError::Io {
            addr: addr.to_string(),
            source,
        })?;
        Ok(Self::start(listener, processor, cfg))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; open connections finish their current message.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn batch_worker<S: RecordSink>(processor: Arc<Hl7Processor<S>>, mut rx: mpsc::Receiver<Job>, max: usize) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max);
    while rx.recv_many(&mut jobs, max).await > 0 {
        let (texts, replies): (Vec<String>, Vec<oneshot::Sender<Processed>>) = jobs.drain(..).unzip();
        let results = processor.process_batch(texts).await;
        for (r, reply) in results.into_iter().zip(replies) {
            let _ = reply.send(r);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<Job>,
    cfg: MllpConfig,
    mut stop: watch::Receiver<bool>,
    worker: JoinHandle<()>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "mllp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = cfg.max_connections, "mllp: too many connections, closing");
                    drop(stream);
                    continue;
                };
                let tx = tx.clone();
                let cfg = cfg.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    if let Err(e) = connection(stream, tx, &cfg, stop).await {
                        tracing::info!(%peer, error = %e, "mllp connection ended");
                    }
                    drop(permit);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(tx);
    while conns.join_next().await.is_some() {}
    let _ = worker.await;
}

/// Finds a complete frame in `buf`: returns (start of payload, end of
/// payload, bytes to consume) or None.
fn find_frame(buf: &[u8]) -> Option<(usize, usize, usize)> {
    let start = buf.iter().position(|b| *b == SB)?;
    let end = buf[start..].windows(2).position(|w| w == [EB, CR])? + start;
    Some((start + 1, end, end + 2))
}

async fn connection(
    mut stream: TcpStream,
    tx: mpsc::Sender<Job>,
    cfg: &MllpConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), MllpError> {
    let _ = stream.set_nodelay(true);
    let io = |source| MllpError::Io {
        addr: "peer".into(),
        source,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((a, b, consumed)) = find_frame(&buf) {
            if b - a > cfg.max_frame_bytes {
                break;
            }
            let text = String::from_utf8_lossy(&buf[a..b]).into_owned();
            buf.drain(..consumed);
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx.send((text, reply_tx)).await.is_err() {
                return Err(MllpError::Protocol("listener stopped".into()));
            }
            let processed = reply_rx
                .await
                .map_err(|_| MllpError::Protocol("batch worker stopped".into()))?;
            write_frame(&mut stream, processed.ack.as_bytes()).await.map_err(io)?;
        }
        if buf.len() > cfg.max_frame_bytes + 3 {
            let err = ErrEntry {
                location: None,
                code: err_code::SEGMENT_SEQUENCE,
                severity: 'E',
                rule: "frame_size".into(),
                message: format!("MLLP frame exceeds {} bytes", cfg.max_frame_bytes),
            };
            let ack = build_ack(None, AckCode::Ar, "frame too large", &[err]);
            write_frame(&mut stream, ack.as_bytes()).await.map_err(io)?;
            return Err(MllpError::Protocol(format!(
                "frame exceeds {} bytes; connection closed",
                cfg.max_frame_bytes
            )));
        }
        // junk before a start byte is dropped (keeps the buffer bounded)
        if !buf.contains(&SB) {
            buf.clear();
        }
        let n = tokio::select! {
            _ = stop.changed() => return Ok(()),
            r = tokio::time::timeout(cfg.idle_timeout, stream.read(&mut chunk)) => match r {
                Err(_) => return Err(MllpError::Protocol("idle timeout".into())),
                Ok(r) => r.map_err(io)?,
            },
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 3);
    frame.push(SB);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&[EB, CR]);
    w.write_all(&frame).await?;
    w.flush().await
}

/// A minimal MLLP client (tests, benchmarks, `agent check`): sends one
/// message and reads one ACK frame.
#[derive(Debug)]
pub struct MllpClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl MllpClient {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// [`MllpError::Io`].
    pub async fn connect(addr: &str) -> Result<Self, MllpError> {
        let stream = TcpStream::connect(addr).await.map_err(|source| MllpError::Io {
            addr: addr.to_string(),
            source,
        })?;
        let _ = stream.set_nodelay(true);
        Ok(MllpClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `message` and returns the ACK text.
    ///
    /// # Errors
    /// [`MllpError`] when the socket fails or closes before an ACK.
    pub async fn send(&mut self, message: &str) -> Result<String, MllpError> {
        let io = |source| MllpError::Io {
            addr: "server".into(),
            source,
        };
        write_frame(&mut self.stream, message.as_bytes()).await.map_err(io)?;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((a, b, consumed)) = find_frame(&self.buf) {
                let text = String::from_utf8_lossy(&self.buf[a..b]).into_owned();
                self.buf.drain(..consumed);
                return Ok(text);
            }
            let n = self.stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(MllpError::Protocol("connection closed before the ACK".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

// ------------------------------------------------------- `type = "hl7_mllp"`

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
    #[serde(default = "default_usize::<{ 1024 * 1024 }>")]
    pub max_frame_bytes: usize,
    /// Concurrent connections (default 256).
    #[serde(default = "default_usize::<256>")]
    pub max_connections: usize,
    /// Messages per pipeline call (default 256).
    #[serde(default = "default_usize::<256>")]
    pub batch_max: usize,
}

impl Hl7MllpSourceConfig {
    /// Listens, delivering to `sink` with `spec` (field locations from the
    /// `mapping` file), until `stop` changes. With `once` it returns at
    /// once: a listener has no "caught up".
    ///
    /// # Errors
    /// [`AgentError::Source`] when the listener cannot start (address in
    /// use, spec file unreadable).
    pub async fn run<S: RecordSink>(
        &self,
        spec: Arc<MappingSpec>,
        sink: S,
        mut stop: watch::Receiver<bool>,
        once: bool,
    ) -> Result<RunStats, AgentError> {
        let name = &self.name;
        if once {
            tracing::info!(source = %name, "push source skipped: it only runs continuously");
            return Ok(RunStats::default());
        }
        let processor = hl7_processor(name, &self.mapping, spec, sink)?;
        let mllp = MllpConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            batch_max: self.batch_max,
            ..MllpConfig::default()
        };
        let server = MllpServer::bind(&self.listen, processor, mllp)
            .await
            .map_err(|e| AgentError::source(name, e, false))?;
        tracing::info!(source = %name, addr = %server.local_addr(), "MLLP listener started");
        let _ = stop.changed().await;
        server.shutdown().await;
        Ok(RunStats::default())
    }
}

impl Source for Hl7MllpSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Path {
        &self.mapping
    }

    fn resolved(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Arc<dyn Source> {
        Arc::new(Hl7MllpSourceConfig {
            mapping: resolve(&self.mapping),
            ..self.clone()
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| ("listen", format!("`{}` is not host:port ({e})", self.listen)))?;
        positive("max_frame_bytes", self.max_frame_bytes as u64)?;
        positive("max_connections", self.max_connections as u64)?;
        positive("batch_max", self.batch_max as u64)
    }

    /// The address can be bound.
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        async move {
            match TcpListener::bind(&self.listen).await {
                Ok(_) => Ok(format!("can listen on {}", self.listen)),
                Err(e) => Err(format!("cannot listen on {}: {e}", self.listen)),
            }
        }
        .boxed()
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
    fn frames() {
        assert_eq!(find_frame(b"\x0bABC\x1c\x0drest"), Some((1, 4, 6)));
        assert_eq!(find_frame(b"junk\x0bA\x1c"), None);
        assert_eq!(find_frame(b"A\x1c\x0d"), None);
    }
}
