//! Message forwarding (R6.7): committed blocks, transaction summaries and
//! cold-chain alerts published to an AMQP topic exchange with publisher
//! confirms.
//!
//! **Outbox design.** Ingest never talks to the broker. A forwarder task tails
//! the ledger itself (which is the outbox: every committed transaction is
//! there, durably) from a durable cursor, the table `fwd_cursor` in the
//! ledger's database. The cursor is insert-only like every other table: one
//! row per confirmed round, holding the last block height whose messages the
//! broker confirmed; the cursor is the greatest height. A round publishes
//! the messages of the next blocks, waits for every confirm and only then
//! writes the new cursor row. On any broker error (unreachable, connection
//! lost, nack, confirm timeout) the task backs off with jitter, reconnects
//! and resends from the cursor. Delivery is therefore **at least once**:
//! consumers dedupe on the AMQP `message_id` (`tx:<tx_id>`, `block:<height>`,
//! `alert:<tx_id>`), which is also in each body.
//!
//! Routing keys: `block`, `tx.<category>` (one per transaction, categories
//! with characters other than `[a-z0-9_]` replaced by `_`), and
//! `alert.coldchain` for transactions of the configured alert categories.
//! Bodies never carry personal data: transaction summaries have ids,
//! category, signer, trace codes, block height and hash and times; alerts add
//! the event as projected (personal-data fields removed).

use std::sync::LazyLock;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use ledger::{AnyStore, BlockHeader, LedgerStore, StoredTx, TxKind, on_backend};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use secure_gateway::{CryptoProvider, KeyHandle};
use serde_json::{Value, json};
use sqlx::Row;

use crate::config::ForwardingConfig;
use crate::metrics::METRICS;

/// Why a forwarding round failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The broker refused, dropped or did not answer.
    #[error("broker: {0}")]
    Broker(String),
    /// The ledger or cursor store failed.
    #[error("store: {0}")]
    Store(String),
}

/// Forwarding metrics, registered with the gateway's registry.
#[derive(Debug)]
pub struct ForwardMetrics {
    /// Messages the broker confirmed, by kind (`block`, `tx`, `alert`).
    pub forwarded: IntCounterVec,
    /// Broker errors (connect failures, lost connections, nacks, timeouts).
    pub broker_errors: IntCounter,
    /// Ledger head height minus the forwarded height.
    pub lag_blocks: IntGauge,
    /// The last block height the broker confirmed.
    pub cursor: IntGauge,
}

/// The process-wide forwarding metrics.
pub static FORWARD_METRICS: LazyLock<ForwardMetrics> = LazyLock::new(|| {
    let m = ForwardMetrics {
        forwarded: IntCounterVec::new(
            Opts::new(
                "vaxgate_forwarded_messages_total",
                "Messages published to the broker and confirmed, by kind",
            ),
            &["kind"],
        )
        .expect("static metric definition"),
        broker_errors: IntCounter::new(
            "vaxgate_forward_broker_errors_total",
            "Broker errors of the forwarder (connect, lost connection, nack, timeout)",
        )
        .expect("static metric definition"),
        lag_blocks: IntGauge::new(
            "vaxgate_forward_lag_blocks",
            "Ledger head height minus the last height the broker confirmed",
        )
        .expect("static metric definition"),
        cursor: IntGauge::new(
            "vaxgate_forward_cursor_height",
            "Last block height whose messages the broker confirmed",
        )
        .expect("static metric definition"),
    };
    let r = METRICS.registry();
    for c in [
        Box::new(m.forwarded.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.broker_errors.clone()),
        Box::new(m.lag_blocks.clone()),
        Box::new(m.cursor.clone()),
    ] {
        r.register(c).expect("metrics register once");
    }
    m
});

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutMessage {
    /// Topic routing key.
    pub routing_key: String,
    /// AMQP `message_id` (the dedupe key).
    pub message_id: String,
    /// JSON body.
    pub body: Value,
}

/// The event fields a summary needs, from the projection (or from the
/// decrypted payload when the projection has not caught up).
#[derive(Debug, Clone)]
struct EventInfo {
    event_id: String,
    occurred_ms: i64,
    doc: Value,
}

/// A store error of the forwarder, naming the table.
fn store_error(table: &str, e: impl std::fmt::Display) -> ForwardError {
    ForwardError::Store(format!("{table}: {e}"))
}

/// The durable cursor: `fwd_cursor` in the ledger's database, insert-only,
/// written on the ledger's committing connection ([`ledger::SideTx`]).
async fn init_cursor(store: &AnyStore) -> Result<(), ForwardError> {
    let mut tx = store.side_tx().await.map_err(|x| store_error("fwd_cursor", x))?;
    let sql = "CREATE TABLE IF NOT EXISTS fwd_cursor (height BIGINT PRIMARY KEY, forwarded_ms BIGINT NOT NULL)";
    on_backend!(tx.conn(), c => sqlx::query(sql).execute(c).await.map(|_| ()))
        .map_err(|x| store_error("fwd_cursor", x))?;
    tx.commit().await.map_err(|x| store_error("fwd_cursor", x))
}

/// The last forwarded height, or `None` before the first round.
async fn cursor(store: &AnyStore) -> Result<Option<u64>, ForwardError> {
    let mut r = store.reader().await.map_err(|x| store_error("fwd_cursor", x))?;
    let sql = "SELECT MAX(height) FROM fwd_cursor";
    let m: Option<i64> = on_backend!(&mut r, c => sqlx::query_scalar(sql).fetch_one(&mut **c).await)
        .map_err(|x| store_error("fwd_cursor", x))?;
    Ok(m.map(|v| v as u64))
}

/// Records that the broker confirmed the messages of blocks up to `height`.
async fn advance(store: &AnyStore, height: u64) -> Result<(), ForwardError> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = store.side_tx().await.map_err(|x| store_error("fwd_cursor", x))?;
    let sql = "INSERT INTO fwd_cursor (height, forwarded_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING";
    on_backend!(tx.conn(), c => sqlx::query(sql).bind(height as i64).bind(now).execute(c).await.map(|_| ()))
        .map_err(|x| store_error("fwd_cursor", x))?;
    tx.commit().await.map_err(|x| store_error("fwd_cursor", x))
}

/// Projected events with leaf index in `[from, to)`.
async fn projected_events(store: &AnyStore, from: u64, to: u64) -> Result<Vec<(u64, EventInfo)>, ForwardError> {
    let mut r = store.reader().await.map_err(|x| store_error("proj_events", x))?;
    let sql =
        "SELECT leaf_index, event_id, occurred_ms, doc FROM proj_events WHERE leaf_index >= $1 AND leaf_index < $2";
    on_backend!(&mut r, c => {
        let rows = sqlx::query(sql).bind(from as i64).bind(to as i64).fetch_all(&mut **c).await;
        rows.and_then(|rows| {
            rows.iter()
                .map(|r| {
                    let leaf: i64 = r.try_get("leaf_index")?;
                    let doc: String = r.try_get("doc")?;
                    Ok((
                        leaf as u64,
                        EventInfo {
                            event_id: r.try_get("event_id")?,
                            occurred_ms: r.try_get("occurred_ms")?,
                            doc: serde_json::from_str(&doc).unwrap_or(Value::Null),
                        },
                    ))
                })
                .collect()
        })
    })
    .map_err(|x: sqlx::Error| store_error("proj_events", x))
}

/// A topic routing-key word for a category.
pub fn routing_word(category: &str) -> String {
    let w: String = category
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if w.is_empty() { "_".into() } else { w }
}

/// Trace codes of a projected event document (a serialised
/// `mappings::TraceEvent`): its own codes and every code of its packaging
/// links.
fn trace_codes(doc: &Value) -> Vec<String> {
    let mut codes = crate::api::query::codes_in(doc);
    codes.sort();
    codes.dedup();
    codes
}

/// The messages of one block: a summary per transaction (plus an alert for
/// alert categories), then the block itself.
fn block_messages(
    block: &BlockHeader,
    txs: &[StoredTx],
    events: &std::collections::HashMap<u64, EventInfo>,
    alert_categories: &[String],
) -> Vec<OutMessage> {
    let mut out = Vec::with_capacity(txs.len() + 1);
    let block_hash = block.block_hash.to_hex();
    for st in txs {
        let c = &st.tx.content;
        let ev = events.get(&st.leaf_index);
        let codes = ev.map(|e| trace_codes(&e.doc)).unwrap_or_default();
        let summary = json!({
            "type": "tx",
            "tx_id": c.tx_id.to_string(),
            "record_id": c.record_id,
            "event_id": ev.map(|e| e.event_id.clone()),
            "kind": c.kind.as_str(),
            "category": c.category,
            "signer": st.tx.auth.signer,
            "trace_codes": codes,
            "occurred_ms": ev.map(|e| e.occurred_ms),
            "height": st.height,
            "leaf_index": st.leaf_index,
            "block_hash": block_hash,
            "committed_ms": block.timestamp,
        });
        out.push(OutMessage {
            routing_key: format!("tx.{}", routing_word(&c.category)),
            message_id: format!("tx:{}", c.tx_id),
            body: summary.clone(),
        });
        if alert_categories.iter().any(|a| a == &c.category) {
            let mut alert = summary;
            alert["type"] = json!("alert");
            alert["event"] = ev.map(|e| e.doc.clone()).unwrap_or(Value::Null);
            out.push(OutMessage {
                routing_key: if c.category == "custody_alert" {
                    "alert.custody".into()
                } else {
                    "alert.coldchain".into()
                },
                message_id: format!("alert:{}", c.tx_id),
                body: alert,
            });
        }
    }
    out.push(OutMessage {
        routing_key: "block".into(),
        message_id: format!("block:{}", block.height),
        body: json!({
            "type": "block",
            "height": block.height,
            "block_hash": block_hash,
            "previous_block_hash": block.previous_block_hash.to_hex(),
            "merkle_root": block.merkle_root.to_hex(),
            "timestamp_ms": block.timestamp,
            "tx_count": block.tx_count,
            "first_leaf": block.first_leaf,
        }),
    });
    out
}

/// Tails the ledger and publishes to the broker. See the module docs.
pub struct Forwarder {
    store: AnyStore,
    cfg: ForwardingConfig,
    provider: std::sync::Arc<dyn CryptoProvider>,
    node: KeyHandle,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("Forwarder")
            .field("exchange", &self.cfg.exchange)
            .finish()
    }
}

/// How long a transaction may stay missing from the projection before the
/// forwarder decrypts it itself (ingest writes the projection in the block's
/// own transaction, so this only covers transactions written without it,
/// until the catch-up at the next start).
const PROJECTION_GRACE_MS: i64 = 5_000;

impl Forwarder {
    /// Creates the cursor table if needed.
    pub async fn open(
        store: AnyStore,
        cfg: ForwardingConfig,
        provider: std::sync::Arc<dyn CryptoProvider>,
        node: KeyHandle,
    ) -> Result<Self, ForwardError> {
        init_cursor(&store).await?;
        LazyLock::force(&FORWARD_METRICS);
        Ok(Forwarder {
            store,
            cfg,
            provider,
            node,
        })
    }

    /// Runs until the process ends: connect, forward, back off on errors.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            let result = match self.connect().await {
                Ok((conn, ch)) => {
                    let r = self.pump(&ch, &mut failures).await;
                    let _ = conn.close(200, "reconnecting".into()).await;
                    r
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                failures = failures.saturating_add(1);
                if matches!(e, ForwardError::Broker(_)) {
                    FORWARD_METRICS.broker_errors.inc();
                }
                // The lag keeps growing while the broker is away: show it.
                if let Err(e) = self.update_lag().await {
                    tracing::warn!(error = %e, "cannot read the forwarding lag");
                }
                let wait = backoff(failures);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "forwarding paused");
                tokio::time::sleep(wait).await;
            }
        }
    }

    async fn update_lag(&self) -> Result<(), ForwardError> {
        let next = cursor(&self.store).await?.map(|h| h + 1).unwrap_or(0);
        if let Some((b, _)) = self
            .store
            .head()
            .await
            .map_err(|e| ForwardError::Store(e.to_string()))?
        {
            FORWARD_METRICS.lag_blocks.set(b.height as i64 + 1 - next as i64);
        }
        Ok(())
    }

    async fn connect(&self) -> Result<(Connection, Channel), ForwardError> {
        let b = |e: lapin::Error| ForwardError::Broker(e.to_string());
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&self.cfg.amqp_url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| ForwardError::Broker("connect timed out".into()))?
        .map_err(b)?;
        let ch = conn.create_channel().await.map_err(b)?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(b)?;
        ch.exchange_declare(
            self.cfg.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(b)?;
        tracing::info!(exchange = %self.cfg.exchange, "forwarder connected to the broker");
        Ok((conn, ch))
    }

    /// Forwards rounds until an error.
    async fn pump(&self, ch: &Channel, failures: &mut u32) -> Result<(), ForwardError> {
        let st = |e: ledger::LedgerError| ForwardError::Store(e.to_string());
        loop {
            let next = cursor(&self.store).await?.map(|h| h + 1).unwrap_or(0);
            let head = self.store.head().await.map_err(st)?.map(|(b, _)| b.height);
            let Some(head) = head else {
                tokio::time::sleep(Duration::from_millis(self.cfg.poll_interval_ms)).await;
                continue;
            };
            FORWARD_METRICS.lag_blocks.set(head as i64 + 1 - next as i64);
            if next > head {
                tokio::time::sleep(Duration::from_millis(self.cfg.poll_interval_ms)).await;
                continue;
            }
            let (last, msgs) = self.round(next, head).await?;
            let Some(last) = last else {
                // The projection of the next block is still being written.
                tokio::time::sleep(Duration::from_millis(self.cfg.poll_interval_ms)).await;
                continue;
            };
            publish_confirmed(ch, &self.cfg.exchange, &msgs).await?;
            advance(&self.store, last).await?;
            for m in &msgs {
                let kind = m.routing_key.split('.').next().unwrap_or("tx");
                FORWARD_METRICS.forwarded.with_label_values(&[kind]).inc();
            }
            FORWARD_METRICS.cursor.set(last as i64);
            FORWARD_METRICS.lag_blocks.set(head as i64 - last as i64);
            *failures = 0;
        }
    }

    /// The messages of blocks `next..` (up to `max_batch` transactions, at
    /// least one block) and the last height included; `None` when the first
    /// block's projection is not written yet.
    async fn round(&self, next: u64, head: u64) -> Result<(Option<u64>, Vec<OutMessage>), ForwardError> {
        let st = |e: ledger::LedgerError| ForwardError::Store(e.to_string());
        let to = head.min(next + 256) + 1;
        let blocks = self.store.blocks(next, to).await.map_err(st)?;
        let mut msgs = Vec::new();
        let mut last = None;
        let mut txs_taken = 0usize;
        let now = chrono::Utc::now().timestamp_millis();
        for b in blocks {
            if last.is_some() && txs_taken + b.tx_count as usize > self.cfg.max_batch {
                break;
            }
            let txs = self
                .store
                .txs(b.first_leaf, b.first_leaf + b.tx_count)
                .await
                .map_err(st)?;
            let mut events: std::collections::HashMap<u64, EventInfo> =
                projected_events(&self.store, b.first_leaf, b.first_leaf + b.tx_count)
                    .await?
                    .into_iter()
                    .collect();
            let mut complete = true;
            for t in &txs {
                if matches!(t.tx.content.kind, TxKind::Data | TxKind::Cancellation)
                    && !events.contains_key(&t.leaf_index)
                {
                    if now - b.timestamp < PROJECTION_GRACE_MS {
                        complete = false;
                        break;
                    }
                    match crate::projection::open_event(self.provider.as_ref(), &self.node, t) {
                        Ok(Some(m)) => {
                            let p = crate::projection::project(t, &m.msg);
                            events.insert(
                                t.leaf_index,
                                EventInfo {
                                    event_id: p.event_id,
                                    occurred_ms: p.occurred_ms,
                                    doc: p.doc,
                                },
                            );
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(tx = %t.tx.content.tx_id, error = %e, "cannot open a transaction to forward; its summary has no trace codes")
                        }
                    }
                }
            }
            if !complete {
                break;
            }
            msgs.extend(block_messages(&b, &txs, &events, &self.cfg.alert_categories));
            txs_taken += txs.len();
            last = Some(b.height);
        }
        Ok((last, msgs))
    }
}

/// Publishes every message (persistent, JSON) and waits for every confirm;
/// a nack or a timeout is an error.
pub async fn publish_confirmed(ch: &Channel, exchange: &str, msgs: &[OutMessage]) -> Result<(), ForwardError> {
    let b = |e: lapin::Error| ForwardError::Broker(e.to_string());
    let mut confirms = Vec::with_capacity(msgs.len());
    for m in msgs {
        let body = serde_json::to_vec(&m.body).map_err(|e| ForwardError::Store(e.to_string()))?;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(m.message_id.as_str().into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        let c = ch
            .basic_publish(
                exchange.into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map_err(b)?;
        confirms.push(c);
    }
    let all = async {
        for c in confirms {
            let conf = c.await.map_err(b)?;
            if conf.is_nack() {
                return Err(ForwardError::Broker("the broker refused (nack) a message".into()));
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .map_err(|_| ForwardError::Broker("no publisher confirm within 30 s".into()))?
}

/// Exponential backoff from 250 ms to 30 s, with jitter (50–100 %).
fn backoff(failures: u32) -> Duration {
    let base_ms = (250u64 << failures.min(7).saturating_sub(1)).min(30_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64;
    let jitter = nanos % (base_ms / 2 + 1);
    Duration::from_millis(base_ms / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_words_are_single_topic_words() {
        assert_eq!(routing_word("cold_chain_readings"), "cold_chain_readings");
        assert_eq!(routing_word("a.b*#"), "a_b__");
        assert_eq!(routing_word(""), "_");
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for f in 1..20 {
            let d = backoff(f).as_millis() as u64;
            let base = (250u64 << (f.min(7) - 1)).min(30_000);
            assert!(d >= base / 2 && d <= base, "{f}: {d} not in [{}, {base}]", base / 2);
        }
        assert!(backoff(30) <= Duration::from_secs(30));
    }

    #[test]
    fn trace_codes_include_packaging_links_once() {
        let doc = json!({
            "traceCodes": ["81000000000000000001", "81000000000000000002"],
            "aggregations": [{"parent": "81000000000000000009", "children": ["81000000000000000001"]}],
        });
        assert_eq!(
            trace_codes(&doc),
            vec!["81000000000000000001", "81000000000000000002", "81000000000000000009"]
        );
    }
}
