//! End to end: `vaxgate serve` with `[telemetry] otlp_endpoint` exports
//! OpenTelemetry spans over OTLP/gRPC to an in-process receiver
//! (`fake-opentelemetry-collector`): HTTP request spans named after the
//! route pattern, `ingest` with `ledger.append` inside it, `query`; no
//! personal data or trace-code values in any span. `/metrics` lists the
//! operational metrics.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use fake_opentelemetry_collector::FakeCollectorServer;
use support::{Node, NodeOptions, golden};

#[test]
fn spans_reach_an_otlp_receiver_without_personal_data() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut collector = rt.block_on(FakeCollectorServer::start()).unwrap();

    let node = Node::start_with(NodeOptions {
        init_args: ["--admins", "1", "--threshold", "1"].map(String::from).to_vec(),
        config: format!(
            "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"vaxgate-test\"\n\n[rate_limits]\npublic = {{ per_second = 1, burst = 2 }}\n",
            collector.endpoint()
        ),
        ..Default::default()
    });
    let clinic = node.register_clinic_approved(&[1]);
    let client = node.client(clinic.key.clone());
    let msgs = golden("vaccination", "clinic-ims.json");
    let batch = node.seal(&clinic, &msgs);
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
    let batch = node.seal(&clinic, &[bad]);
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
    // Three records and a provenance_pending alert for each (nobody
    // produced or delivered their doses in this test: docs/custody.md).
    let n = attr(append, "transactions");
    assert!(
        n.contains("IntValue(6)") || n.contains("StringValue(\"6\")"),
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
