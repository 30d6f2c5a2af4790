//! End to end: `vaxgate serve` with `[telemetry] otlp_endpoint` exports
//! OpenTelemetry spans over OTLP/gRPC to an in-process receiver
//! (`fake-opentelemetry-collector`): HTTP request spans named after the
//! route pattern, `ingest` with `ledger.append` inside it, `query`; no
//! personal data or trace-code values in any span. `/metrics` lists the
//! operational metrics.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use adapters::{GatewayClient, GatewayClientConfig};
use fake_opentelemetry_collector::FakeCollectorServer;
use mappings::ExchangeMessage;
use secure_gateway::{KeyHandle, RustCryptoProvider};

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

#[test]
fn spans_reach_an_otlp_receiver_without_personal_data() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut collector = rt.block_on(FakeCollectorServer::start()).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    ok(vaxgate()
        .args(["init", "--dir", dir.to_str().unwrap(), "--plain-http", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--passphrase-env", PASS_ENV, "--admins", "1", "--threshold", "1"])
        .output()
        .unwrap());
    let cfg = dir.join("vaxgate.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"vaxgate-test\"\n\n[rate_limits]\npublic = {{ per_second = 1, burst = 2 }}\n",
        collector.endpoint()
    ));
    std::fs::write(&cfg, text).unwrap();
    let _server = Server(
        vaxgate()
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
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/tests/golden/vaccination/clinic-ims.json");
    let v: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let msgs: Vec<ExchangeMessage> = v
        .into_iter()
        .map(|m| mappings::exchange::from_json(&m.to_string()).unwrap())
        .collect();
    let batch = adapters::seal::seal_batch(&provider, &h, &id, &gateway_key, &[], &msgs).unwrap();
    let body = rt
        .block_on(client.send("POST", "/v1/transactions", batch.to_json().into_bytes()))
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["accepted"].as_u64(), Some(msgs.len() as u64), "{r}");
    let code = msgs[0].payload.trace_codes[0].clone();
    rt.block_on(client.get(&format!("/v1/trace/{code}"))).unwrap();
    // A refused record and a rate-limited request, to be counted.
    let mut bad = msgs[0].clone();
    bad.event_id = uuid::Uuid::new_v4();
    bad.payload.event_id = bad.event_id;
    bad.payload.trace_codes = vec!["12345".into()];
    let batch = adapters::seal::seal_batch(&provider, &h, &id, &gateway_key, &[], &[bad]).unwrap();
    let body = rt
        .block_on(client.send("POST", "/v1/transactions", batch.to_json().into_bytes()))
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["rejected"], 1, "{r}");
    let limited = (0..6).any(|_| {
        matches!(
            rt.block_on(client.get("/v1/public/stats")),
            Err(adapters::ClientError::Api { status: 429, .. })
        )
    });
    assert!(limited, "6 quick requests against a burst of 2");
    let metrics = String::from_utf8(rt.block_on(client.get("/metrics")).unwrap()).unwrap();

    // /metrics: ingest rate, append latency, rejections, rate-limit hits, forwarding.
    for name in [
        "vaxgate_records_ingested_total{category=\"vaccination\"} 3",
        "vaxgate_ledger_append_seconds_bucket",
        "vaxgate_http_requests_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    for name in [
        "vaxgate_rejections_total{code=\"invalid_trace_code\"} 1",
        "vaxgate_rate_limited_total{class=\"public\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }

    // The batch exporter sends within its 5 s schedule.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spans = Vec::new();
    let want = |spans: &[fake_opentelemetry_collector::ExportedSpan]| {
        ["HTTP POST /v1/transactions", "ingest", "ledger.append", "query"]
            .iter()
            .all(|n| spans.iter().any(|s| s.name == *n))
            && spans.iter().any(|s| s.name.starts_with("HTTP GET /v1/trace/"))
    };
    while !want(&spans) && Instant::now() < deadline {
        spans.extend(rt.block_on(collector.exported_spans(1, Duration::from_secs(2))));
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(want(&spans), "spans received: {names:?}");
    let http = spans.iter().find(|s| s.name == "HTTP POST /v1/transactions").unwrap();
    assert_eq!(http.kind, "SPAN_KIND_SERVER");
    // The receiver shows attribute values in their protobuf Debug form.
    let attr =
        |s: &fake_opentelemetry_collector::ExportedSpan, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    assert!(
        attr(http, "http.response.status_code").contains("IntValue(200)"),
        "{http:?}"
    );
    assert!(attr(http, "http.route").contains("/v1/transactions"), "{http:?}");
    let ingest = spans.iter().find(|s| s.name == "ingest").unwrap();
    assert_eq!(ingest.parent_span_id, http.span_id, "ingest inside the HTTP span");
    let append = spans
        .iter()
        .find(|s| s.name == "ledger.append" && s.trace_id == http.trace_id)
        .expect("ledger.append in the ingest request's trace");
    assert_eq!(append.parent_span_id, ingest.span_id);
    let n = attr(append, "transactions");
    assert!(
        n.contains("IntValue(3)") || n.contains("StringValue(\"3\")"),
        "{append:?}"
    );
    let trace = spans
        .iter()
        .find(|s| s.name.starts_with("HTTP GET /v1/trace/"))
        .unwrap();
    assert_eq!(trace.name, "HTTP GET /v1/trace/{code}", "route pattern, not the code");
    let all = serde_json::to_string(&spans).unwrap();
    for secret in [code.as_str(), "王小明", "320102202301150028", "13812345678"] {
        assert!(!all.contains(secret), "{secret} appears in an exported span");
    }
}
