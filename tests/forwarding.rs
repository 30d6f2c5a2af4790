//! End to end: the real `vaxgate serve` forwards committed blocks and
//! transaction summaries to the real RabbitMQ (`VAXGATE_TEST_AMQP_URL`),
//! through a TCP relay in this test that plays the network: the broker is
//! unreachable at the start and cut again in the middle; ingest succeeds
//! throughout, and once the broker is reachable every message arrives.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use mappings::ExchangeMessage;
use support::amqp::bound_queue;
use support::{Node, NodeOptions, free_port, golden};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP relay from `127.0.0.1:port` to the broker. `up` listens and
/// relays; `down` closes the listener and every relayed connection.
struct Relay {
    port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    fn up(&self) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let t = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap().push(t);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn down(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// The golden records under fresh event ids, each a dose of its own.
fn fresh(n: usize) -> Vec<ExchangeMessage> {
    let g = golden("vaccination", "clinic-ims.json");
    (0..n).map(|i| support::fresh(&g[i % g.len()])).collect()
}

/// Every message delivered so far: routing key and body.
async fn drain(ch: &lapin::Channel, queue: &str, into: &mut Vec<(String, serde_json::Value)>) {
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let d = m.delivery;
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        let id = d.properties.message_id().as_ref().map(|s| s.to_string()).unwrap();
        assert_eq!(
            id,
            match body["type"].as_str().unwrap() {
                "block" => format!("block:{}", body["height"]),
                t => format!("{t}:{}", body["tx_id"].as_str().unwrap()),
            },
            "message_id is the dedupe key"
        );
        into.push((d.routing_key.to_string(), body));
    }
}

/// A metric's value, summed over its labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn blocks_and_summaries_reach_rabbitmq_across_outages_without_loss() {
    let amqp = std::env::var("VAXGATE_TEST_AMQP_URL")
        .expect("VAXGATE_TEST_AMQP_URL is not set: run ./scripts/test.sh, which starts RabbitMQ");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let after_scheme = amqp.split_once("://").unwrap().1;
    let (creds, rest) = after_scheme.rsplit_once('@').unwrap();
    let (hostport, vhost) = rest.split_once('/').unwrap();
    let relay = Relay {
        port: free_port(),
        upstream: hostport.to_string(),
        tasks: Default::default(),
    };
    let relayed_url = format!("amqp://{creds}@127.0.0.1:{}/{vhost}", relay.port);

    // The test's own exchange and queue on the real broker.
    let exchange = format!("vaxgate.test.{}", uuid::Uuid::new_v4().simple());
    let queue = format!("{exchange}.all");
    let conn = rt
        .block_on(Connection::connect(&amqp, ConnectionProperties::default()))
        .unwrap();
    let ch = rt.block_on(conn.create_channel()).unwrap();
    rt.block_on(ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .unwrap();
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    rt.block_on(bound_queue(&ch, &queue, options, &exchange, "#"));

    // A node on loopback whose broker is unreachable at start (started
    // outside the runtime's context: its blocking HTTP client may not run in it).
    let node = Node::start_with(NodeOptions {
        config: format!(
            "\n[forwarding]\namqp_url = \"${{TEST_AMQP_URL}}\"\nexchange = \"{exchange}\"\npoll_interval_ms = 50\n"
        ),
        env: vec![("TEST_AMQP_URL".into(), relayed_url)],
        ..Default::default()
    });
    let _guard = rt.enter();
    let clinic = node.register_clinic();
    let client = node.client(clinic.key.clone());
    // Ingest; returns event id → (trace codes, block height).
    let ingest = |msgs: &[ExchangeMessage]| -> HashMap<String, (Vec<String>, u64)> {
        let batch = node.seal(&clinic, msgs);
        let body = rt
            .block_on(client.send("POST", "/v1/transactions", batch.to_json().into_bytes()))
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(r["accepted"].as_u64(), Some(msgs.len() as u64), "{r}");
        msgs.iter()
            .zip(r["results"].as_array().unwrap())
            .map(|(m, res)| {
                (
                    m.event_id.to_string(),
                    (
                        m.payload.trace_codes.clone(),
                        res["receipt"]["height"].as_u64().unwrap(),
                    ),
                )
            })
            .collect()
    };
    let metrics = || -> String { String::from_utf8(rt.block_on(client.get("/metrics")).unwrap()).unwrap() };

    // 1. Broker unreachable: ingest succeeds, nothing is lost.
    let mut expected = ingest(&fresh(3));
    expected.extend(ingest(&fresh(2)));
    // The forwarder refreshes its lag gauge between reconnect attempts, which
    // back off (up to 1 s by the third failure): poll rather than sleep.
    let start = Instant::now();
    loop {
        let m = metrics();
        if metric(&m, "vaxgate_forward_broker_errors_total") >= 1.0 && metric(&m, "vaxgate_forward_lag_blocks") >= 2.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no broker error or lag below 2 blocks after 30 s:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 2. Reachable: everything arrives.
    relay.up();
    let mut got = Vec::new();
    let wait_for = |got: &mut Vec<(String, serde_json::Value)>, want: &HashMap<String, (Vec<String>, u64)>| {
        let start = Instant::now();
        loop {
            rt.block_on(drain(&ch, &queue, got));
            let seen: BTreeSet<String> = got
                .iter()
                .filter_map(|(_, b)| b["event_id"].as_str().map(str::to_string))
                .collect();
            let blocks: BTreeSet<u64> = got
                .iter()
                .filter(|(k, _)| k == "block")
                .map(|(_, b)| b["height"].as_u64().unwrap())
                .collect();
            if want.iter().all(|(e, (_, h))| seen.contains(e) && blocks.contains(h)) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "missing messages; got {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(&mut got, &expected);

    // Summaries: routing key, trace codes, height, block hash; no personal data.
    let all_text = serde_json::to_string(&got).unwrap();
    for p in ["王小明", "320102202301150028", "13812345678", "中山路"] {
        assert!(!all_text.contains(p), "personal data forwarded");
    }
    let block_hashes: HashMap<u64, String> = got
        .iter()
        .filter(|(k, _)| k == "block")
        .map(|(_, b)| {
            (
                b["height"].as_u64().unwrap(),
                b["block_hash"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(block_hashes.contains_key(&0), "the genesis block is forwarded too");
    for (event, (codes, height)) in &expected {
        let (k, b) = got.iter().find(|(_, b)| b["event_id"] == event.as_str()).unwrap();
        assert_eq!(k, "tx.vaccination");
        assert_eq!(b["category"], "vaccination");
        assert_eq!(b["kind"], "data");
        assert_eq!(b["signer"], clinic.id.as_str());
        assert_eq!(b["height"].as_u64(), Some(*height));
        assert_eq!(b["block_hash"].as_str(), Some(block_hashes[height].as_str()));
        let fwd: Vec<String> = serde_json::from_value(b["trace_codes"].clone()).unwrap();
        assert_eq!(&fwd, codes);
    }
    // Registry changes are forwarded as summaries too.
    assert!(got.iter().any(|(k, _)| k.starts_with("tx.") && k != "tx.vaccination"));

    // 3. Cut again mid-run: ingest still succeeds; on reconnect nothing is lost.
    relay.down();
    let second = ingest(&fresh(3));
    std::thread::sleep(Duration::from_millis(500));
    relay.up();
    wait_for(&mut got, &second);
    let m = metrics();
    assert!(metric(&m, "vaxgate_forwarded_messages_total") >= 10.0, "{m}");

    relay.down();
    rt.block_on(ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()))
        .unwrap();
}
