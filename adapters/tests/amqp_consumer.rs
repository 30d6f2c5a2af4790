//! AMQP consumer against the real RabbitMQ (VAXGATE_TEST_AMQP_URL), with a
//! unique queue and dead-letter exchange per test: ack only after the
//! sink's acceptance, idempotent on the event id, immediate dead-lettering
//! of bad messages with the reason in the headers, and dead-lettering after
//! N failed attempts when the downstream stays unavailable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use adapters::amqp::{ATTEMPTS_HEADER, AmqpConfig, AmqpError, AmqpSource, AmqpStats, QUEUE_HEADER, REASON_HEADER};
use adapters::intake::MemorySink;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, message::Delivery};
use mappings::{Dataset, MappingSpec};

fn amqp_url() -> String {
    std::env::var("VAXGATE_TEST_AMQP_URL").unwrap_or_else(|_| {
        panic!(
            "VAXGATE_TEST_AMQP_URL is not set: these tests need RabbitMQ, e.g. \
             VAXGATE_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:25672/%2f' (scripts/test.sh starts one)"
        )
    })
}

fn spec() -> Arc<MappingSpec> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    Arc::new(MappingSpec::load(root.join("config/mappings/erp-shipment.toml"), &Dataset::builtin()).expect("spec"))
}

/// A shipment event document with one shipment (the sample's first).
fn event(event_id: &str, waybill: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("config/mappings/samples/erp-shipment.json")).expect("sample");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut first = doc["shipments"][0].clone();
    first["waybillNo"] = serde_json::json!(waybill);
    doc["shipments"] = serde_json::json!([first]);
    doc["eventId"] = serde_json::json!(event_id);
    serde_json::to_vec(&doc).expect("to_vec")
}

struct Names {
    queue: String,
    dlx: String,
    dlq: String,
}

async fn setup(tag: &str) -> (Connection, Channel, Names) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let names = Names {
        queue: format!("vaxgate-test-{tag}-{id}"),
        dlx: format!("vaxgate-test-{tag}-dlx-{id}"),
        dlq: format!("vaxgate-test-{tag}-dlq-{id}"),
    };
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch, names)
}

/// Declares topology like the consumer does, plus a queue bound to the DLX.
async fn declare(source: &Source, ch: &Channel, n: &Names) {
    let (c, _) = source.connect().await.expect("consumer connect/declare");
    let _ = c.close(200, "declared".into()).await;
    ch.queue_declare(
        n.dlq.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare dlq");
    ch.queue_bind(
        n.dlq.as_str().into(),
        n.dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind dlq");
}

async fn publish(ch: &Channel, queue: &str, body: &[u8], message_id: Option<&str>) {
    let mut props = BasicProperties::default().with_delivery_mode(2);
    if let Some(m) = message_id {
        props = props.with_message_id(m.into());
    }
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, props)
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

async fn take(ch: &Channel, queue: &str, n: usize) -> Vec<Delivery> {
    let mut c = ch
        .basic_consume(
            queue.into(),
            format!("t-{}", uuid::Uuid::new_v4().simple()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived on {queue}", out.len()))
            .expect("stream open")
            .expect("delivery");
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
        out.push(d);
    }
    out
}

fn header(d: &Delivery, name: &str) -> Option<String> {
    let h = d.properties.headers().as_ref()?;
    match h.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(v) => Some(v.to_string()),
        other => Some(format!("{other:?}")),
    }
}

async fn queue_depth(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

type Source = Arc<AmqpSource<Arc<MemorySink>>>;

/// `source` consuming in a task until [`Consuming::stop`].
struct Consuming {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<AmqpStats, AmqpError>>,
}

impl Consuming {
    fn start(source: &Source) -> Consuming {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let source = source.clone();
        let task = tokio::spawn(async move { source.run(stop_rx).await });
        Consuming { stop, task }
    }

    /// Asks the consumer to stop; what it did.
    async fn stop(self) -> AmqpStats {
        let _ = self.stop.send(true);
        self.task.await.expect("join").expect("run")
    }
}

async fn cleanup(ch: &Channel, n: &Names) {
    let _ = ch
        .queue_delete(n.queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .queue_delete(n.dlq.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch.exchange_delete(n.dlx.as_str().into(), Default::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_accepted_events_once_and_dead_letters_bad_ones() {
    let (_conn, ch, n) = setup("ok").await;
    let sink = Arc::new(MemorySink::new("erp", spec()));
    let cfg = AmqpConfig {
        batch_size: 4,
        ..AmqpConfig::new(&amqp_url(), &n.queue, &n.dlx)
    };
    let source = Arc::new(AmqpSource::new("erp", cfg, sink.clone()));
    declare(&source, &ch, &n).await;

    publish(&ch, &n.queue, &event("EV-1", "YD1"), None).await;
    publish(&ch, &n.queue, &event("EV-2", "YD2"), None).await;
    publish(&ch, &n.queue, &event("EV-1", "YD1"), None).await; // redelivery of EV-1
    publish(&ch, &n.queue, &event("ignored", "YD3"), Some("EV-3")).await; // message_id wins
    publish(&ch, &n.queue, b"{not json", None).await;
    publish(&ch, &n.queue, br#"{"shipments": []}"#, None).await; // no event id
    let mut missing = serde_json::from_slice::<serde_json::Value>(&event("EV-4", "YD4")).expect("json");
    missing["shipments"][0]["vehicle"] = serde_json::json!({}); // required plate and cold mode missing
    publish(&ch, &n.queue, &serde_json::to_vec(&missing).expect("json"), None).await;

    let consuming = Consuming::start(&source);
    let dead = take(&ch, &n.dlq, 3).await;
    // wait until the queue is drained and acked
    for _ in 0..100 {
        if queue_depth(&ch, &n.queue).await == 0 && sink.accepted().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = consuming.stop().await;
    assert_eq!(
        (stats.accepted, stats.dead_lettered, stats.retried),
        (4, 3, 0),
        "{stats:?}"
    );

    let keys: Vec<String> = sink.accepted().into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys, ["EV-1", "EV-2", "EV-3"], "idempotent on the event id");
    let reasons: Vec<String> = dead.iter().filter_map(|d| header(d, REASON_HEADER)).collect();
    assert_eq!(reasons.len(), 3);
    assert!(reasons.iter().any(|r| r.starts_with("body is not JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("no event id")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("mapping/validation failed") && r.contains("vehicle_plate")),
        "{reasons:?}"
    );
    assert!(
        dead.iter()
            .all(|d| header(d, QUEUE_HEADER).as_deref() == Some(n.queue.as_str()))
    );
    assert!(dead.iter().any(|d| d.data == b"{not json"), "body kept as sent");
    assert_eq!(queue_depth(&ch, &n.queue).await, 0, "everything acked");
    cleanup(&ch, &n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letters_after_max_attempts() {
    let (_conn, ch, n) = setup("retry").await;
    let sink = Arc::new(MemorySink::new("erp", spec()));
    sink.set_unavailable(true);
    let cfg = AmqpConfig {
        max_attempts: 3,
        retry_delay: Duration::from_millis(50),
        ..AmqpConfig::new(&amqp_url(), &n.queue, &n.dlx)
    };
    let source = Arc::new(AmqpSource::new("erp", cfg, sink.clone()));
    declare(&source, &ch, &n).await;
    publish(&ch, &n.queue, &event("EV-9", "YD9"), None).await;

    let consuming = Consuming::start(&source);
    let dead = take(&ch, &n.dlq, 1).await;
    let stats = consuming.stop().await;
    assert_eq!(
        (stats.accepted, stats.retried, stats.dead_lettered),
        (0, 2, 1),
        "{stats:?}"
    );
    assert_eq!(header(&dead[0], ATTEMPTS_HEADER).as_deref(), Some("3"));
    let reason = header(&dead[0], REASON_HEADER).expect("reason");
    assert!(
        reason.contains("gave up after 3 attempts") && reason.contains("downstream unavailable"),
        "{reason}"
    );
    assert!(sink.accepted().is_empty());

    // while the downstream is down nothing is acked without a receipt:
    // a message republished once is still in the queue when we stop early
    let cfg = AmqpConfig {
        max_attempts: 100,
        retry_delay: Duration::from_millis(10),
        ..AmqpConfig::new(&amqp_url(), &n.queue, &n.dlx)
    };
    let source = Arc::new(AmqpSource::new("erp", cfg, sink.clone()));
    publish(&ch, &n.queue, &event("EV-10", "YD10"), None).await;
    let refused_before = sink.refusals();
    let consuming = Consuming::start(&source);
    // stop once the consumer has met the unavailable downstream at least once
    let start = std::time::Instant::now();
    while sink.refusals() == refused_before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the consumer did not deliver the message within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = consuming.stop().await;
    assert!(stats.retried >= 1 && stats.accepted == 0, "{stats:?}");
    // the downstream is back: the message is accepted and acked
    sink.set_unavailable(false);
    let consuming = Consuming::start(&source);
    for _ in 0..100 {
        if sink.accepted().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = consuming.stop().await;
    assert_eq!(stats.accepted, 1, "{stats:?}");
    assert_eq!(sink.accepted()[0].1, "EV-10");
    assert_eq!(queue_depth(&ch, &n.queue).await, 0);
    cleanup(&ch, &n).await;
}
