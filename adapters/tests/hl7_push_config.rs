//! The push-source entries of the agent config (`hl7_mllp`, `hl7_files`,
//! `xml_dir`, `amqp`): parsing with defaults, unknown keys refused,
//! validation messages naming the key, and an unknown type listing the
//! valid ones.

use adapters::mllp::Hl7MllpSourceConfig;
use adapters::source::{RunStats, SourceConfig};
use adapters::xml_source::XmlDirSourceConfig;

fn parse(text: &str) -> Result<SourceConfig, String> {
    toml::from_str::<SourceConfig>(text).map_err(|e| e.to_string())
}

/// The config struct of an entry's type.
fn concrete<T: 'static>(s: &SourceConfig) -> &T {
    let any: &dyn std::any::Any = &**s;
    any.downcast_ref::<T>().expect("source of the expected type")
}

#[test]
fn push_sources_parse_with_defaults_and_validate() {
    let s = parse("type = \"hl7_mllp\"\nname = \"iis\"\nmapping = \"m.toml\"\nlisten = \"127.0.0.1:2575\"\n")
        .expect("hl7_mllp");
    assert_eq!((s.kind(), s.name()), ("hl7_mllp", "iis"));
    let c = concrete::<Hl7MllpSourceConfig>(&s);
    assert_eq!(
        (c.max_frame_bytes, c.max_connections, c.batch_max),
        (1024 * 1024, 256, 256)
    );
    assert!(s.validate().is_ok());

    let bad =
        parse("type = \"hl7_mllp\"\nname = \"iis\"\nmapping = \"m.toml\"\nlisten = \"port 2575\"\n").expect("parses");
    let (key, msg) = bad.validate().expect_err("bad listen");
    assert_eq!(key, "listen");
    assert!(msg.contains("port 2575"), "{msg}");

    let e = parse("type = \"xml_dir\"\nname = \"mah\"\nmapping = \"m.toml\"\ndir = \"/x\"\nrecord_path = \"/A\"\n")
        .expect_err("unknown key");
    assert!(e.contains("record_path"), "{e}");
    let x =
        parse("type = \"xml_dir\"\nname = \"mah\"\nmapping = \"m.toml\"\ndir = \"/nonexistent/dir\"\n").expect("xml");
    let (key, _) = x.validate().expect_err("missing dir");
    assert_eq!(key, "dir");

    let a = parse(
        "type = \"amqp\"\nname = \"erp\"\nmapping = \"m.toml\"\nurl = \"http://x\"\nqueue = \"q\"\ndead_letter_exchange = \"d\"\n",
    )
    .expect("amqp");
    assert_eq!(a.validate().expect_err("url").0, "url");

    let e = parse("type = \"hl7\"\nname = \"x\"\n").expect_err("unknown type");
    for t in ["hl7_mllp", "hl7_files", "xml_dir", "amqp", "postgres"] {
        assert!(e.contains(t), "the error lists `{t}`: {e}");
    }
}

#[tokio::test]
async fn check_reports_per_push_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.xml"), "<A/>").expect("write");
    let x = parse(&format!(
        "type = \"xml_dir\"\nname = \"mah\"\nmapping = \"m.toml\"\ndir = \"{}\"\n",
        dir.path().display()
    ))
    .expect("xml");
    let ok = x.check().await.expect("dir ok");
    assert!(ok.contains("1 .xml file(s) waiting"), "{ok}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr");
    let m = parse(&format!(
        "type = \"hl7_mllp\"\nname = \"iis\"\nmapping = \"m.toml\"\nlisten = \"{addr}\"\n"
    ))
    .expect("mllp");
    let err = m.check().await.expect_err("address in use");
    assert!(err.contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn once_mode_scans_directories_and_reports_counts() {
    use std::sync::Arc;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mapping = root.join("config/mappings/mah-export.toml");
    let spec = Arc::new(mappings::MappingSpec::load(&mapping, &mappings::Dataset::builtin()).expect("spec"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        root.join("config/mappings/samples/mah-export.xml"),
        dir.path().join("e.xml"),
    )
    .expect("copy");
    let x = parse(&format!(
        "type = \"xml_dir\"\nname = \"mah\"\nmapping = \"{}\"\ndir = \"{}\"\nsettle_ms = 0\n",
        mapping.display(),
        dir.path().display()
    ))
    .expect("xml");
    let sink = Arc::new(adapters::intake::MemorySink::new("mah", spec.clone()));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let stats = concrete::<XmlDirSourceConfig>(&x)
        .run(spec.clone(), sink.clone(), rx, true)
        .await
        .expect("scan");
    assert_eq!(stats.accepted + stats.quarantined + stats.rejected, 4, "{stats:?}");
    assert_eq!(stats.accepted as usize, sink.accepted().len());
    assert!(stats.accepted > 0);
    assert!(dir.path().join("done/e.xml").exists());

    // the listener has no "caught up": skipped in once mode
    let m =
        parse("type = \"hl7_mllp\"\nname = \"iis\"\nmapping = \"m.toml\"\nlisten = \"127.0.0.1:1\"\n").expect("mllp");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let stats = concrete::<Hl7MllpSourceConfig>(&m)
        .run(spec, sink, rx, true)
        .await
        .expect("skipped");
    assert_eq!(stats, RunStats::default());
}
