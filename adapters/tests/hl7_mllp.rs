//! MLLP listener end to end on loopback: ACK codes (AA after the sink's
//! acceptance, AE with located ERR segments, AR for other message types and
//! when the downstream is unavailable), frame size bound, many concurrent
//! connections, and interop with the PyPI `hl7` package's `mllp_send`
//! (a client nobody here wrote; path in VAXGATE_MLLP_SEND, set by
//! scripts/test.sh).

use std::path::PathBuf;
use std::sync::Arc;

use adapters::hl7::{AckCode, Delimiters, FieldLocator, Hl7Processor, decode, encode, segments, split_messages};
use adapters::intake::MemorySink;
use adapters::mllp::{MllpClient, MllpConfig, MllpServer};
use mappings::{Dataset, MappingSpec, Record};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec_and_locator() -> (Arc<MappingSpec>, FieldLocator) {
    let path = root().join("config/mappings/hl7-vxu.toml");
    let text = std::fs::read_to_string(&path).expect("read hl7-vxu.toml");
    let spec = MappingSpec::from_toml_str(&text, "hl7-vxu.toml", &Dataset::builtin()).expect("spec");
    let loc = FieldLocator::from_spec_toml(&text, "hl7-vxu.toml").expect("locator");
    (Arc::new(spec), loc)
}

fn sample_messages() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("config/mappings/samples/hl7-vxu.hl7")).expect("sample");
    split_messages(&text)
}

async fn start(cfg: MllpConfig) -> (MllpServer, Arc<MemorySink>) {
    let (spec, loc) = spec_and_locator();
    let sink = Arc::new(MemorySink::new("hl7", spec.clone()));
    let proc = Arc::new(Hl7Processor::new("hl7", spec, loc, sink.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    (MllpServer::start(listener, proc, cfg), sink)
}

fn seg<'a>(ack: &'a str, name: &str) -> Vec<&'a str> {
    segments(ack).filter(|s| s.starts_with(name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_vxu_and_round_trips_chinese_escapes() {
    let (server, sink) = start(MllpConfig::default()).await;
    let addr = server.local_addr().to_string();
    let mut client = MllpClient::connect(&addr).await.expect("connect");
    let msgs = sample_messages();
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        let ack = client.send(m).await.expect("ack");
        let msa = seg(&ack, "MSA");
        assert_eq!(msa.len(), 1, "{ack}");
        assert!(msa[0].starts_with("MSA|AA|MSG2024030"), "{ack}");
        assert!(seg(&ack, "MSH")[0].contains("|ACK^V04^ACK|"), "{ack}");
        assert!(seg(&ack, "ERR").is_empty(), "{ack}");
    }
    let keys: Vec<String> = sink.accepted().into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys, ["MSG20240305001", "MSG20240306002"]);

    // Round trip of the escaped Chinese text: what the mapping reads is the
    // decoded value, and encoding it again gives the field as sent.
    let (spec, _) = spec_and_locator();
    let out = spec.map(&Record::Hl7(msgs[0].clone()));
    assert!(out.is_ok(), "{:?}", out.problems);
    let remark = out.events[0]
        .fields
        .get("remark")
        .and_then(|v| v.as_str())
        .expect("remark");
    assert_eq!(remark, "首剂|无不良反应\r\n已留观30分钟");
    let d = Delimiters::default();
    assert_eq!(encode(remark, &d), r"首剂\F\无不良反应\X0D0A\已留观30分钟");
    assert!(msgs[0].contains(&encode(remark, &d)));
    let addr_field = r"中山路1号\T\3栋";
    assert_eq!(encode(&decode(addr_field, &d), &d), addr_field);
    let name = out.events[0].pii.get("recipient_name").expect("name");
    assert_eq!(name, "王小明");
    server.shutdown().await;
}

/// A message that fails mapping goes to the sink too, which quarantines
/// it; its detailed AE is sent only once the quarantine holds it (the sink
/// down: AR, resend later), and it is never accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_mapping_is_quarantined_before_its_ae() {
    let (spec, loc) = spec_and_locator();
    let sink = Arc::new(MemorySink::new("hl7", spec.clone()));
    let proc = Hl7Processor::new("hl7", spec, loc, sink.clone());
    let bad = sample_messages()[0].replace("||||20231001A|20240930|", "|||||20240930|");

    sink.set_unavailable(true);
    let p = proc.process(bad.clone()).await;
    assert_eq!(p.code, AckCode::Ar, "{}", p.ack);
    assert!(p.retry && !p.quarantined, "{}", p.ack);

    sink.set_unavailable(false);
    let p = proc.process(bad).await;
    assert_eq!(p.code, AckCode::Ae, "{}", p.ack);
    assert!(p.quarantined && !p.retry, "{}", p.ack);
    assert!(p.ack.contains("ERR||RXA^2^15|101^"), "{}", p.ack);
    assert!(sink.accepted().is_empty());

    let good = proc.process(sample_messages()[1].clone()).await;
    assert_eq!(good.code, AckCode::Aa, "{}", good.ack);
    assert!(!good.quarantined);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_gets_ae_with_located_err_and_other_types_ar() {
    let (server, sink) = start(MllpConfig::default()).await;
    let addr = server.local_addr().to_string();
    let mut client = MllpClient::connect(&addr).await.expect("connect");

    // second ORC/RXA group without lot number (RXA-15) → AE, ERR at RXA^2^15
    let bad = sample_messages()[0].replace("||||20231001A|20240930|", "|||||20240930|");
    assert_ne!(bad, sample_messages()[0]);
    let ack = client.send(&bad).await.expect("ack");
    assert_eq!(seg(&ack, "MSA"), ["MSA|AE|MSG20240305001|message has errors"], "{ack}");
    let errs = seg(&ack, "ERR");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("ERR||RXA^2^15|101^Required field missing^HL70357|E|required|")),
        "{ack}"
    );
    assert!(errs.iter().all(|e| !e.contains("王")), "no personal data in ERR: {ack}");

    // unsupported message type → AR, 200
    let adt = "MSH|^~\\&|HIS|H1|VAXGATE|CDC|20240305093500||ADT^A01^ADT_A01|ADT1|P|2.5.1\rPID|1||X";
    let ack = client.send(adt).await.expect("ack");
    assert_eq!(seg(&ack, "MSA"), ["MSA|AR|ADT1|unsupported message type"], "{ack}");
    assert!(
        seg(&ack, "ERR")[0].starts_with("ERR||MSH^1^9^1^1|200^Unsupported message type^HL70357|E|"),
        "{ack}"
    );
    // unsupported event → AR, 201
    let vxu_other = sample_messages()[1].replace("VXU^V04^VXU_V04", "VXU^V99");
    let ack = client.send(&vxu_other).await.expect("ack");
    assert!(seg(&ack, "MSA")[0].starts_with("MSA|AR|MSG20240306002"), "{ack}");
    assert!(
        seg(&ack, "ERR")[0].contains("|201^Unsupported event code^HL70357|"),
        "{ack}"
    );
    // not HL7 at all → AR, 100
    let ack = client.send("hello").await.expect("ack");
    assert!(seg(&ack, "MSA")[0].starts_with("MSA|AR|"), "{ack}");

    // downstream unavailable → AR 207 (sender retries), then AA
    sink.set_unavailable(true);
    let ack = client.send(&sample_messages()[1]).await.expect("ack");
    assert!(seg(&ack, "MSA")[0].starts_with("MSA|AR|MSG20240306002"), "{ack}");
    assert!(
        seg(&ack, "ERR")[0].contains("|207^Application internal error^HL70357|"),
        "{ack}"
    );
    sink.set_unavailable(false);
    let ack = client.send(&sample_messages()[1]).await.expect("ack");
    assert!(seg(&ack, "MSA")[0].starts_with("MSA|AA|MSG20240306002"), "{ack}");
    assert_eq!(sink.accepted().len(), 1, "only the last message was accepted");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_and_many_connections_work() {
    let cfg = MllpConfig {
        max_frame_bytes: 4096,
        ..MllpConfig::default()
    };
    let (server, sink) = start(cfg).await;
    let addr = server.local_addr().to_string();
    let mut big = MllpClient::connect(&addr).await.expect("connect");
    let huge = format!("{}\rNTE|1||{}", sample_messages()[1], "x".repeat(10_000));
    let ack = big.send(&huge).await.expect("ack");
    assert!(seg(&ack, "MSA")[0].starts_with("MSA|AR|"), "{ack}");
    assert!(ack.contains("frame exceeds 4096 bytes"), "{ack}");
    assert!(
        big.send(&sample_messages()[1]).await.is_err(),
        "connection closed after the refusal"
    );

    let mut tasks = Vec::new();
    for c in 0..24 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(&addr).await.expect("connect");
            for i in 0..10 {
                let m = sample_messages()[1].replace("MSG20240306002", &format!("C{c}M{i}"));
                let ack = client.send(&m).await.expect("ack");
                assert!(ack.contains(&format!("MSA|AA|C{c}M{i}")), "{ack}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(sink.accepted().len(), 240);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_pypi_hl7_mllp_send() {
    let tool = std::env::var("VAXGATE_MLLP_SEND").unwrap_or_else(|_| {
        panic!(
            "VAXGATE_MLLP_SEND is not set: it must name the `mllp_send` tool of the PyPI `hl7` package \
             (scripts/test.sh installs it: python3 -m venv /tmp/vaxgate-py && /tmp/vaxgate-py/bin/pip install hl7)"
        )
    });
    let (server, sink) = start(MllpConfig::default()).await;
    let port = server.local_addr().port();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vxu.hl7");
    std::fs::write(&file, sample_messages().join("\r\n") + "\r\n").expect("write");
    let out = tokio::process::Command::new(&tool)
        .args(["--loose", "-p", &port.to_string(), "-f"])
        .arg(&file)
        .arg("127.0.0.1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{tool} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MSA|AA|MSG20240305001"), "{stdout}");
    assert!(stdout.contains("MSA|AA|MSG20240306002"), "{stdout}");
    assert_eq!(sink.accepted().len(), 2);
    server.shutdown().await;
}
