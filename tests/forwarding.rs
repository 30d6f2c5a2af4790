//! End to end: the real `vaxgate serve` forwards committed blocks and
//! transaction summaries to the real RabbitMQ (`VAXGATE_TEST_AMQP_URL`),
//! through a TCP relay in this test that plays the network: the broker is
//! unreachable at the start and cut again in the middle; ingest succeeds
//! throughout, and once the broker is reachable every message arrives.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adapters::{GatewayClient, GatewayClientConfig};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use mappings::ExchangeMessage;
use secure_gateway::{KeyHandle, RustCryptoProvider};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const PASS_ENV: &str = "VAXGATE_TEST_PASSPHRASE";
const PASS: &str = "correct horse battery staple";

fn vaxgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaxgate"));
    c.env(PASS_ENV, PASS).env("RUST_LOG", "warn");
    c
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

fn golden_vaccinations() -> Vec<ExchangeMessage> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/tests/golden/vaccination/clinic-ims.json");
    let v: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v.into_iter()
        .map(|m| mappings::exchange::from_json(&m.to_string()).unwrap())
        .collect()
}

/// The golden records under fresh event ids.
fn fresh(n: usize) -> Vec<ExchangeMessage> {
    let g = golden_vaccinations();
    (0..n)
        .map(|i| {
            let mut m = g[i % g.len()].clone();
            m.event_id = uuid::Uuid::new_v4();
            m.payload.event_id = m.event_id;
            m
        })
        .collect()
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
    let _guard = rt.enter();
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
    rt.block_on(ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .unwrap();
    rt.block_on(ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .unwrap();

    // A node on loopback whose broker is unreachable at start.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    ok(vaxgate()
        .args(["init", "--dir", dir.to_str().unwrap(), "--plain-http", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--passphrase-env", PASS_ENV])
        .output()
        .unwrap());
    let cfg = dir.join("vaxgate.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[forwarding]\namqp_url = \"${{TEST_AMQP_URL}}\"\nexchange = \"{exchange}\"\npoll_interval_ms = 50\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    let _server = Server(
        vaxgate()
            .env("TEST_AMQP_URL", &relayed_url)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ent = tmp.path().join("ent");
    ok(vaxgate()
        .args(["keys", "generate", "--out", ent.to_str().unwrap(), "--entity", "clinic"])
        .args(["--passphrase-env", PASS_ENV])
        .output()
        .unwrap());
    let id = gateway::registry::uscc_with_check("12320102MB1234567").unwrap();
    let start = Instant::now();
    loop {
        let o = vaxgate()
            .args([
                "admin",
                "--gateway",
                &base,
                "--passphrase-env",
                PASS_ENV,
                "register-entity",
            ])
            .args(["--id", &id, "--name", "梅园社区卫生服务中心", "--alias", "meiyuan"])
            .args(["--role", "vaccination_unit", "--code", "3201020001", "--master-key"])
            .arg(ent.join("clinic.pub.pem"))
            .arg("--approve")
            .arg(dir.join("keys/admin-1.key.pem"))
            .arg("--approve")
            .arg(dir.join("keys/admin-2.key.pem"))
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let key = secure_gateway::keys::private_key_from_pem(
        &std::fs::read_to_string(ent.join("clinic.key.pem")).unwrap(),
        Some(PASS),
        secure_gateway::DEFAULT_DIST_ID,
    )
    .unwrap();
    let gateway_key = secure_gateway::load_verifying_key(&dir.join("keys/node.pub.pem")).unwrap();
    let provider = RustCryptoProvider::new();
    let h = KeyHandle::new("clinic");
    provider.insert_sm2_key(h.clone(), key.clone());
    let client = GatewayClient::new(
        &GatewayClientConfig {
            base_url: base.clone(),
            ..Default::default()
        },
        key,
    )
    .unwrap();
    // Ingest; returns event id → (trace codes, block height).
    let ingest = |msgs: &[ExchangeMessage]| -> HashMap<String, (Vec<String>, u64)> {
        let batch = adapters::seal::seal_batch(&provider, &h, &id, &gateway_key, &[], msgs).unwrap();
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
    std::thread::sleep(Duration::from_millis(600));
    let m = metrics();
    assert!(metric(&m, "vaxgate_forward_broker_errors_total") >= 1.0, "{m}");
    assert!(metric(&m, "vaxgate_forward_lag_blocks") >= 2.0, "{m}");

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
        assert_eq!(b["signer"], id.as_str());
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
