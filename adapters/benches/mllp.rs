//! MLLP throughput: VXU^V04 messages per second with ACK over loopback TCP.
//!
//! Each message goes through the whole listener path: MLLP framing, MSH
//! parse, type check, mapping + validation with config/mappings/hl7-vxu.toml
//! (for located ERR segments), the batch worker, the sink (an in-memory
//! sink that maps the record again; the agent's pipeline instead reuses the
//! processor's mapping, so this path maps each message once more than the
//! agent does), ACK building and the ACK frame back. Not included: sealing,
//! the POST to the gateway and its durable append (measured separately by
//! the agent backfill and gateway ingest benchmarks).
//!
//! `cargo bench -p adapters --bench mllp` (release). Prints one JSON line.

use std::sync::Arc;
use std::time::Instant;

use adapters::hl7::{FieldLocator, Hl7Processor, split_messages};
use adapters::intake::MemorySink;
use adapters::mllp::{MllpClient, MllpConfig, MllpServer};
use mappings::{Dataset, MappingSpec};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("config/mappings/hl7-vxu.toml")).expect("spec");
    let spec = Arc::new(MappingSpec::from_toml_str(&text, "hl7-vxu.toml", &Dataset::builtin()).expect("spec"));
    let loc = FieldLocator::from_spec_toml(&text, "hl7-vxu.toml").expect("locator");
    let sample = std::fs::read_to_string(root.join("config/mappings/samples/hl7-vxu.hl7")).expect("sample");
    let template = split_messages(&sample).swap_remove(0); // 2 ORC/RXA groups, Chinese text, escapes
    let connections: usize = std::env::var("MLLP_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let per_conn: usize = std::env::var("MLLP_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);

    let sink = Arc::new(MemorySink::new("hl7", spec.clone()));
    let proc = Arc::new(Hl7Processor::new("hl7", spec, loc, sink.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = MllpServer::start(listener, proc, MllpConfig::default());
    let addr = server.local_addr().to_string();

    // warm-up
    let mut c = MllpClient::connect(&addr).await.expect("connect");
    for i in 0..200 {
        let m = template.replace("MSG20240305001", &format!("W{i}"));
        let ack = c.send(&m).await.expect("ack");
        assert!(ack.contains("MSA|AA|"), "{ack}");
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..connections {
        let (addr, template) = (addr.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = MllpClient::connect(&addr).await.expect("connect");
            let mut lat = Vec::with_capacity(per_conn);
            for i in 0..per_conn {
                let m = template.replace("MSG20240305001", &format!("B{conn}-{i}"));
                let t = Instant::now();
                let ack = c.send(&m).await.expect("ack");
                lat.push(t.elapsed());
                assert!(ack.contains("MSA|AA|"), "{ack}");
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let total = connections * per_conn;
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    assert_eq!(sink.accepted().len(), total + 200);
    println!(
        "{{\"bench\":\"mllp_vxu_ack\",\"connections\":{connections},\"messages\":{total},\"seconds\":{secs:.3},\"messages_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"message_bytes\":{}}}",
        total as f64 / secs,
        p(0.5),
        p(0.99),
        template.len()
    );
    server.shutdown().await;
}
