//! AMQP consumer (R1.6): shipment events posted by logistics ERPs to a
//! durable RabbitMQ queue (JSON, mapped with e.g.
//! config/mappings/erp-shipment.toml).
//!
//! - Messages are consumed with manual acks and a prefetch bound, collected
//!   into batches and handed to the [`RecordSink`]; a message is acked only
//!   after the sink reports it durably accepted (gateway receipt).
//! - The record key is the event id: the `message_id` property, else the
//!   JSON field `event_id_field` (default `eventId`). The sink (the agent's
//!   pipeline; the gateway behind it) answers a repeat of an accepted event
//!   with `Accepted`, so redeliveries are acked without a second event.
//! - Permanent failures (not JSON, no event id, mapping/validation errors,
//!   rejected by the gateway) go to the dead-letter exchange at once;
//!   transient ones (`Retry`) are republished to the queue with the header
//!   `x-vaxgate-attempts` incremented after a delay, and after
//!   `max_attempts` go to the dead-letter exchange. Dead-lettered messages
//!   keep body and properties and carry `x-vaxgate-reason`,
//!   `x-vaxgate-attempts` and `x-vaxgate-queue` headers. Every republish is
//!   publisher-confirmed before the original is acked.
//! - A sink call never carries one event id twice: a repeat inside a batch
//!   (a redelivery, a publisher's retry) goes in a following call of the
//!   same batch, where it is answered like any resend. In one call it would
//!   make the gateway refuse the whole call (the ledger's record ids are
//!   unique), and every message of the batch would be retried and
//!   dead-lettered. A repeat whose first copy got `Retry` gets `Retry`
//!   without a call.
//!
//! The source type `amqp` ([`AmqpSourceConfig`]) runs one consumer and
//! reconnects it after a broker failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind, message::Delivery};
use mappings::Record;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::{default_u32, default_u64, default_usize};
use crate::error::AgentError;
use crate::intake::{Outcome, RecordSink, normalise, retry_all};
use crate::push_sources::positive;
use crate::source::{Invalid, RunStats, Source, SourceContext, SourceTask};

/// Header with the number of failed attempts so far.
pub const ATTEMPTS_HEADER: &str = "x-vaxgate-attempts";
/// Header with the reason a message was dead-lettered.
pub const REASON_HEADER: &str = "x-vaxgate-reason";
/// Header naming the queue a dead-lettered message came from.
pub const QUEUE_HEADER: &str = "x-vaxgate-queue";

/// AMQP source errors.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// Connecting, declaring, consuming or publishing failed.
    #[error("amqp source `{source_name}`: {action}: {message}")]
    Broker {
        /// The configured source.
        source_name: String,
        /// What was being done.
        action: &'static str,
        /// The broker's or client's message.
        message: String,
    },
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Broker URL (`amqp://user:pass@host:port/vhost`); keep secrets in `${ENV}`.
    pub url: String,
    /// The durable queue to consume (declared if missing).
    pub queue: String,
    /// The dead-letter exchange (declared as a durable fanout if missing).
    pub dead_letter_exchange: String,
    /// Failed attempts (transient failures) before dead-lettering.
    pub max_attempts: u32,
    /// Most messages per sink call; also the prefetch is twice this.
    pub batch_size: usize,
    /// How long to wait for more messages to fill a batch.
    pub linger: Duration,
    /// Delay before a failed message is republished (times the attempt).
    pub retry_delay: Duration,
    /// JSON field holding the event id when `message_id` is not set.
    pub event_id_field: String,
}

impl AmqpConfig {
    /// Defaults for `url`/`queue`/`dead_letter_exchange`.
    pub fn new(url: &str, queue: &str, dead_letter_exchange: &str) -> AmqpConfig {
        AmqpConfig {
            url: url.to_string(),
            queue: queue.to_string(),
            dead_letter_exchange: dead_letter_exchange.to_string(),
            max_attempts: 5,
            batch_size: 100,
            linger: Duration::from_millis(20),
            retry_delay: Duration::from_secs(2),
            event_id_field: "eventId".into(),
        }
    }
}

/// Counters of one consumer run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmqpStats {
    /// Messages acked after acceptance.
    pub accepted: u64,
    /// Messages republished for another attempt.
    pub retried: u64,
    /// Messages sent to the dead-letter exchange.
    pub dead_lettered: u64,
}

/// One queue consumer.
#[derive(Debug)]
pub struct AmqpSource<S> {
    name: String,
    cfg: AmqpConfig,
    sink: S,
}

fn header_u32(props: &BasicProperties, name: &str) -> u32 {
    let Some(headers) = props.headers().as_ref() else {
        return 0;
    };
    match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(v)) => u32::try_from(*v).unwrap_or(0),
        Some(AMQPValue::LongInt(v)) => u32::try_from(*v).unwrap_or(0),
        Some(AMQPValue::LongUInt(v)) => *v,
        Some(AMQPValue::ShortInt(v)) => u32::try_from(*v).unwrap_or(0),
        _ => 0,
    }
}

fn with_headers(props: &BasicProperties, set: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in set {
        headers.insert(ShortString::from(*k), v.clone());
    }
    props.clone().with_headers(headers)
}

enum Parsed {
    Ok { key: String, record: Record },
    Bad(String),
}

/// Splits the positions of a batch's `keys` (`None`: not submitted) into
/// rounds, in order, such that no round holds one key twice: round `r` has
/// the `r`-th copy of every key.
fn rounds(keys: &[Option<&str>]) -> Vec<Vec<usize>> {
    let mut copies: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let Some(k) = k else { continue };
        let c = copies.entry(k).or_insert(0);
        if out.len() <= *c {
            out.push(Vec::new());
        }
        out[*c].push(i);
        *c += 1;
    }
    out
}

impl<S: RecordSink> AmqpSource<S> {
    /// A consumer named `name` (the agent's source name).
    pub fn new(name: &str, cfg: AmqpConfig, sink: S) -> Self {
        AmqpSource {
            name: name.to_string(),
            cfg,
            sink,
        }
    }

    fn err(&self, action: &'static str, e: impl std::fmt::Display) -> AmqpError {
        AmqpError::Broker {
            source_name: self.name.clone(),
            action,
            message: e.to_string(),
        }
    }

    /// Connects and declares the durable queue and the dead-letter exchange.
    ///
    /// # Errors
    /// [`AmqpError::Broker`] naming the step that failed.
    pub async fn connect(&self) -> Result<(Connection, Channel), AmqpError> {
        let conn = Connection::connect(&self.cfg.url, ConnectionProperties::default())
            .await
            .map_err(|e| self.err("connect", e))?;
        let ch = conn.create_channel().await.map_err(|e| self.err("open channel", e))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.err("enable publisher confirms", e))?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(self.cfg.queue.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(|e| self.err("declare queue", e))?;
        let ex = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            self.cfg.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            ex,
            FieldTable::default(),
        )
        .await
        .map_err(|e| self.err("declare dead-letter exchange", e))?;
        let prefetch = u16::try_from(self.cfg.batch_size.saturating_mul(2))
            .unwrap_or(u16::MAX)
            .max(1);
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.err("set prefetch", e))?;
        Ok((conn, ch))
    }

    fn parse(&self, d: &Delivery) -> Parsed {
        let value: serde_json::Value = match serde_json::from_slice(&d.data) {
            Ok(v) => v,
            Err(e) => return Parsed::Bad(format!("body is not JSON: {e}")),
        };
        let key = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| match value.get(&self.cfg.event_id_field) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
        match key {
            Some(key) => Parsed::Ok {
                key,
                record: Record::Json(value),
            },
            None => Parsed::Bad(format!(
                "no event id: neither the message_id property nor the JSON field `{}` is set",
                self.cfg.event_id_field
            )),
        }
    }

    /// Consumes until `stop` turns true (or the channel closes); returns the
    /// counters.
    ///
    /// # Errors
    /// [`AmqpError::Broker`] when the broker connection fails.
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<AmqpStats, AmqpError> {
        let (conn, ch) = self.connect().await?;
        let tag = format!("vaxgate-{}-{}", self.name, uuid::Uuid::new_v4().simple());
        let mut consumer = ch
            .basic_consume(
                self.cfg.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.err("consume", e))?;
        let mut stats = AmqpStats::default();
        loop {
            let first = tokio::select! {
                _ = stop.changed() => break,
                d = consumer.next() => d,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first.map_err(|e| self.err("receive", e))?];
            let deadline = tokio::time::Instant::now() + self.cfg.linger;
            while batch.len() < self.cfg.batch_size.max(1) {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(d)) => batch.push(d.map_err(|e| self.err("receive", e))?),
                    _ => break,
                }
            }
            self.handle_batch(&ch, batch, &mut stats).await?;
        }
        let _ = conn.close(200, "vaxgate agent stopping".into()).await;
        Ok(stats)
    }

    /// The outcome of every parsed message of a batch (`None` for the bad
    /// ones), submitting in [`rounds`] so that no call repeats a key.
    async fn submit_batch(&self, parsed: &[Parsed]) -> Vec<Option<Outcome>> {
        let keys: Vec<Option<&str>> = parsed
            .iter()
            .map(|p| match p {
                Parsed::Ok { key, .. } => Some(key.as_str()),
                Parsed::Bad(_) => None,
            })
            .collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; parsed.len()];
        // key → the outcome of its latest copy
        let mut seen: std::collections::HashMap<&str, Outcome> = std::collections::HashMap::new();
        for round in rounds(&keys) {
            let mut send = Vec::new();
            for i in round {
                let Parsed::Ok { key, record } = &parsed[i] else {
                    continue;
                };
                match seen.get(key.as_str()) {
                    Some(o @ Outcome::Retry { .. }) => outcomes[i] = Some(o.clone()),
                    _ => send.push((i, key.clone(), record.clone())),
                }
            }
            if send.is_empty() {
                continue;
            }
            let n = send.len();
            let (idx, records): (Vec<usize>, Vec<(String, Record)>) =
                send.into_iter().map(|(i, k, r)| (i, (k, r))).unzip();
            let answered = normalise(self.sink.submit(&self.name, records, None).await, n);
            for (i, o) in idx.into_iter().zip(answered) {
                if let Parsed::Ok { key, .. } = &parsed[i] {
                    seen.insert(key.as_str(), o.clone());
                }
                outcomes[i] = Some(o);
            }
        }
        outcomes
    }

    async fn handle_batch(&self, ch: &Channel, batch: Vec<Delivery>, stats: &mut AmqpStats) -> Result<(), AmqpError> {
        let parsed: Vec<Parsed> = batch.iter().map(|d| self.parse(d)).collect();
        let outcomes = self.submit_batch(&parsed).await;
        if outcomes.iter().any(|o| matches!(o, Some(Outcome::Retry { .. }))) {
            // one pause per batch before republishing, growing with the attempts
            let most = batch
                .iter()
                .map(|d| header_u32(&d.properties, ATTEMPTS_HEADER))
                .max()
                .unwrap_or(0);
            let pause = (self.cfg.retry_delay * (most + 1)).min(Duration::from_secs(60));
            tokio::time::sleep(pause).await;
        }
        for ((d, p), outcome) in batch.iter().zip(parsed).zip(outcomes) {
            let attempts = header_u32(&d.properties, ATTEMPTS_HEADER);
            match p {
                Parsed::Bad(reason) => self.dead_letter(ch, d, attempts, &reason).await?,
                Parsed::Ok { .. } => match outcome.unwrap_or(Outcome::Retry {
                    reason: "no outcome".into(),
                }) {
                    Outcome::Accepted => {
                        d.acker
                            .ack(BasicAckOptions::default())
                            .await
                            .map_err(|e| self.err("ack", e))?;
                        stats.accepted += 1;
                        continue;
                    }
                    Outcome::Rejected { code, message } => {
                        self.dead_letter(ch, d, attempts, &format!("rejected ({code}): {message}"))
                            .await?
                    }
                    Outcome::Quarantined { reason } => {
                        self.dead_letter(ch, d, attempts, &format!("mapping/validation failed: {reason}"))
                            .await?
                    }
                    Outcome::Retry { reason } => {
                        let attempts = attempts + 1;
                        if attempts >= self.cfg.max_attempts {
                            self.dead_letter(ch, d, attempts, &format!("gave up after {attempts} attempts: {reason}"))
                                .await?;
                        } else {
                            self.republish(ch, d, attempts).await?;
                            stats.retried += 1;
                            continue;
                        }
                    }
                },
            }
            stats.dead_lettered += 1;
        }
        Ok(())
    }

    async fn publish_confirmed(
        &self,
        ch: &Channel,
        exchange: &str,
        routing_key: &str,
        d: &Delivery,
        props: BasicProperties,
    ) -> Result<(), AmqpError> {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &d.data,
                props,
            )
            .await
            .map_err(|e| self.err("publish", e))?
            .await
            .map_err(|e| self.err("publisher confirm", e))?;
        if confirm.is_nack() {
            return Err(self.err("publisher confirm", "the broker refused the message (nack)"));
        }
        d.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| self.err("ack", e))?;
        Ok(())
    }

    async fn dead_letter(&self, ch: &Channel, d: &Delivery, attempts: u32, reason: &str) -> Result<(), AmqpError> {
        tracing::warn!(source = %self.name, queue = %self.cfg.queue, attempts, reason, "dead-lettering message");
        let props = with_headers(
            &d.properties,
            &[
                (REASON_HEADER, AMQPValue::LongString(LongString::from(reason))),
                (ATTEMPTS_HEADER, AMQPValue::LongLongInt(i64::from(attempts))),
                (
                    QUEUE_HEADER,
                    AMQPValue::LongString(LongString::from(self.cfg.queue.as_str())),
                ),
            ],
        );
        self.publish_confirmed(ch, &self.cfg.dead_letter_exchange, &self.cfg.queue, d, props)
            .await
    }

    async fn republish(&self, ch: &Channel, d: &Delivery, attempts: u32) -> Result<(), AmqpError> {
        let props = with_headers(
            &d.properties,
            &[(ATTEMPTS_HEADER, AMQPValue::LongLongInt(i64::from(attempts)))],
        );
        self.publish_confirmed(ch, "", &self.cfg.queue, d, props).await
    }
}

// ----------------------------------------------------------- `type = "amqp"`

fn d_event_id() -> String {
    "eventId".into()
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
    #[serde(default = "default_u32::<5>")]
    pub max_attempts: u32,
    /// Messages per pipeline call (default 100).
    #[serde(default = "default_usize::<100>")]
    pub batch_size: usize,
    /// Delay before a republish, times the attempt (default 2000 ms).
    #[serde(default = "default_u64::<2000>")]
    pub retry_delay_ms: u64,
    /// JSON field with the event id when `message_id` is unset (default `eventId`).
    #[serde(default = "d_event_id")]
    pub event_id_field: String,
}

impl AmqpSourceConfig {
    /// Consumes the queue, delivering to `sink`, until `stop`; reconnects
    /// with backoff (0.5 s doubling to 30 s) after a broker failure, so it
    /// returns no error of its own. With `once` it returns at once: a queue
    /// has no "caught up".
    pub async fn run<S: RecordSink>(
        &self,
        sink: S,
        mut stop: watch::Receiver<bool>,
        once: bool,
    ) -> Result<RunStats, AgentError> {
        let name = &self.name;
        if once {
            tracing::info!(source = %name, "push source skipped: it only runs continuously");
            return Ok(RunStats::default());
        }
        let amqp = AmqpConfig {
            max_attempts: self.max_attempts,
            batch_size: self.batch_size,
            retry_delay: Duration::from_millis(self.retry_delay_ms),
            event_id_field: self.event_id_field.clone(),
            ..AmqpConfig::new(&self.url, &self.queue, &self.dead_letter_exchange)
        };
        let source = AmqpSource::new(name, amqp, sink);
        let mut backoff = Duration::from_millis(500);
        loop {
            match source.run(stop.clone()).await {
                Ok(stats) => {
                    tracing::info!(source = %name, accepted = stats.accepted, retried = stats.retried,
                        dead_lettered = stats.dead_lettered, "AMQP consumer stopped");
                    if *stop.borrow() {
                        return Ok(RunStats::default());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "AMQP consumer failed; reconnecting"),
            }
            tokio::select! {
                _ = stop.changed() => return Ok(RunStats::default()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

impl Source for AmqpSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Path {
        &self.mapping
    }

    fn resolved(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Arc<dyn Source> {
        Arc::new(AmqpSourceConfig {
            mapping: resolve(&self.mapping),
            ..self.clone()
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(("url", "must start with amqp:// or amqps://".to_string()));
        }
        if self.queue.is_empty() {
            return Err(("queue", "must not be empty".to_string()));
        }
        if self.dead_letter_exchange.is_empty() {
            return Err(("dead_letter_exchange", "must not be empty".to_string()));
        }
        positive("max_attempts", u64::from(self.max_attempts))?;
        positive("batch_size", self.batch_size as u64)
    }

    /// The broker accepts the connection and the queue/exchange declarations.
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        async move {
            let src = AmqpSource::new(
                &self.name,
                AmqpConfig::new(&self.url, &self.queue, &self.dead_letter_exchange),
                NoSink,
            );
            match tokio::time::timeout(Duration::from_secs(15), src.connect()).await {
                Ok(Ok((conn, _))) => {
                    let _ = conn.close(200, "check done".into()).await;
                    Ok(format!(
                        "broker reachable; queue `{}` and dead-letter exchange `{}` declared",
                        self.queue, self.dead_letter_exchange
                    ))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer from the broker within 15 s".into()),
            }
        }
        .boxed()
    }

    fn start(&self, cx: SourceContext) -> Result<SourceTask, AgentError> {
        let c = self.clone();
        Ok(async move { c.run(cx.pipeline, cx.stop, cx.once).await }.boxed())
    }
}

/// A sink that takes nothing (used where only the broker is checked).
#[derive(Debug)]
struct NoSink;

impl RecordSink for NoSink {
    async fn submit(&self, _: &str, records: Vec<(String, Record)>, _: Option<serde_json::Value>) -> Vec<Outcome> {
        retry_all(&records, "check only")
    }

    async fn checkpoint(&self, _: &str) -> Option<serde_json::Value> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::repeats_a_key;

    #[test]
    fn rounds_never_repeat_a_key() {
        let keys = [Some("a"), Some("b"), None, Some("a"), Some("c"), Some("a"), Some("b")];
        assert_eq!(rounds(&keys), vec![vec![0, 1, 4], vec![3, 6], vec![5]]);
        assert!(rounds(&[None, None]).is_empty());
        assert_eq!(rounds(&[Some("x")]), vec![vec![0]]);
    }

    /// Answers like the gateway: a call holding one key twice fails whole
    /// (`Retry` for every record); otherwise a key seen before is a
    /// duplicate (accepted), and `bad` keys are rejected.
    #[derive(Default)]
    struct LedgerLike {
        stored: std::sync::Mutex<Vec<String>>,
        calls: std::sync::atomic::AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl RecordSink for LedgerLike {
        async fn submit(&self, _: &str, records: Vec<(String, Record)>, _: Option<serde_json::Value>) -> Vec<Outcome> {
            use std::sync::atomic::Ordering;
            self.calls.fetch_add(1, Ordering::SeqCst);
            if repeats_a_key(&records) || self.down.load(Ordering::SeqCst) {
                return retry_all(&records, "409: record is already in the ledger");
            }
            let mut stored = self.stored.lock().expect("lock");
            records
                .into_iter()
                .map(|(k, _)| {
                    if k == "bad" {
                        Outcome::Rejected {
                            code: "validation_failed".into(),
                            message: "bad".into(),
                        }
                    } else {
                        if !stored.contains(&k) {
                            stored.push(k);
                        }
                        Outcome::Accepted
                    }
                })
                .collect()
        }

        async fn checkpoint(&self, _: &str) -> Option<serde_json::Value> {
            None
        }
    }

    fn parsed(keys: &[&str]) -> Vec<Parsed> {
        keys.iter()
            .map(|k| match *k {
                "" => Parsed::Bad("not JSON".into()),
                k => Parsed::Ok {
                    key: k.to_string(),
                    record: Record::Json(serde_json::json!({ "eventId": k })),
                },
            })
            .collect()
    }

    #[tokio::test]
    async fn a_repeated_event_in_a_batch_does_not_fail_the_others() {
        let src = AmqpSource::new("erp", AmqpConfig::new("amqp://x", "q", "dlx"), LedgerLike::default());
        let out = src.submit_batch(&parsed(&["a", "b", "a", "", "c", "bad", "a"])).await;
        assert_eq!(
            out,
            vec![
                Some(Outcome::Accepted),
                Some(Outcome::Accepted),
                Some(Outcome::Accepted),
                None,
                Some(Outcome::Accepted),
                Some(Outcome::Rejected {
                    code: "validation_failed".into(),
                    message: "bad".into()
                }),
                Some(Outcome::Accepted),
            ]
        );
        assert_eq!(*src.sink.stored.lock().expect("lock"), vec!["a", "b", "c"]);
        assert_eq!(
            src.sink.calls.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "one call per round"
        );

        // downstream unavailable: the repeats are not submitted again
        src.sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let out = src.submit_batch(&parsed(&["d", "d", "e"])).await;
        assert!(out.iter().all(|o| matches!(o, Some(Outcome::Retry { .. }))), "{out:?}");
        assert_eq!(src.sink.calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    }
}
