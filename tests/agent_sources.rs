//! End to end: the agent's directory and queue sources (`xml_dir`,
//! `hl7_files`, `amqp`) delivering into a real `vaxgate serve` (SQLite
//! ledger on a loopback port), not the in-memory sink of the adapters'
//! unit tests. Each test asserts what the source acknowledged against the
//! ledger: event ids in the ledger exactly once, files moved to `done/` or
//! `failed/` (with the reason beside them) only after the receipts, AMQP
//! messages acked or dead-lettered with their reason, nothing appended
//! twice when the same input comes again, and nothing acknowledged while
//! the gateway is down.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, message::Delivery};
use serde_json::{Value, json};
use support::agent::*;
use support::amqp::bound_queue;
use support::{Ent, Node, Process, ok, repo, wait_until};

fn spec(name: &str) -> String {
    repo().join("config/mappings").join(name).display().to_string()
}

fn derive(spec_name: &str, category: &str, key: &str) -> String {
    mappings::TraceEvent::derive_id(spec_name, category, key).to_string()
}

/// The names of the files directly in `dir` (not in subdirectories).
fn files_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `agent check` passes, naming the source (`name (type)`) and `detail`.
fn check_ok(cfg: &Path, source: &str, detail: &str) {
    let out = ok(agent(cfg, &["check"]));
    assert!(
        out.contains(&format!("source {source}")) && out.contains(detail) && !out.contains("FAIL"),
        "{out}"
    );
}

/// `agent run --once` succeeds, its summary saying `summary`.
fn run_once(cfg: &Path, summary: &str) {
    let o = agent(cfg, &["run", "--once"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(summary), "{}", stdout(&o));
}

/// `agent run --once` with the gateway down fails, saying so.
fn run_once_while_down(cfg: &Path) {
    let o = agent(cfg, &["run", "--once"]);
    assert!(
        !o.status.success(),
        "a run that could not deliver fails: {}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("downstream unavailable"), "{}", stderr(&o));
}

/// A directory source of the agent: its `type`, `name`, mapping file (in
/// config/mappings/) and the `[[sources]]` lines after its `dir`.
struct DirSource {
    kind: &'static str,
    name: &'static str,
    spec_file: &'static str,
    settings: &'static str,
}

impl DirSource {
    /// An agent config in `work` for `e` with this source only, watching
    /// the new directory `work/<subdir>`; returns that directory and the
    /// config.
    fn config(&self, gw: &Node, e: &Ent, work: &Path, subdir: &str) -> (PathBuf, PathBuf) {
        let dir = work.join(subdir);
        std::fs::create_dir(&dir).unwrap();
        let source = format!(
            "[[sources]]\ntype = \"{}\"\nname = \"{}\"\nmapping = \"{}\"\ndir = \"{}\"\n{}",
            self.kind,
            self.name,
            spec(self.spec_file),
            dir.display(),
            self.settings
        );
        let cfg = gw.agent_config_with(work, e, &source);
        (dir, cfg)
    }
}

// ---------------------------------------------------------------- XML ----

/// The marketing authorisation holder of config/mappings/mah-export.toml
/// (`[source] entity`), registered as a manufacturer.
const MAH: &str = "91320000134567890Y";
const MAH_SPEC: &str = "mah-export";
const MAH_CATEGORIES: &[&str] = &["vaccine_product", "lot_release", "production_inbound", "cancellation"];
/// The MAH's export directory.
const MAH_SOURCE: DirSource = DirSource {
    kind: "xml_dir",
    name: "mah",
    spec_file: "mah-export.toml",
    settings: "batch_size = 4\nsettle_ms = 0\npoll_interval_ms = 200\n",
};

fn xml_product(id: &str, name: &str) -> String {
    format!(
        r#"    <Record type="PRODUCT" id="{id}">
      <Time>2023-11-20 09:00:00</Time>
      <Product code="8612345">
        <Name>{name}</Name>
        <GenericName>乙型肝炎疫苗</GenericName>
        <Form>注射剂</Form>
        <Strength>0.5mL:10μg</Strength>
        <Package doses="1">1支/盒</Package>
        <ApprovalNo>国药准字S20130001</ApprovalNo>
        <ShelfLife months="36"/>
        <Storage min="2" max="8"/>
      </Product>
      <Holder uscc="{MAH}">江苏某生物制品有限公司</Holder>
    </Record>
"#
    )
}

fn xml_lot_release(id: &str, conclusion: &str) -> String {
    format!(
        r#"    <Record type="LOTREL" id="{id}">
      <Time>2023-12-20 16:30:00</Time>
      <Product code="8612345"><Name>乙型肝炎疫苗(酿酒酵母)</Name></Product>
      <Lot no="202311A05" size="200000"><Produced>20231201</Produced><Expires>20261130</Expires></Lot>
      <Release>
        <CertNo>SJ202312200123</CertNo>
        <Date>2023年12月20日</Date>
        <Authority>中国食品药品检定研究院</Authority>
        <Conclusion>{conclusion}</Conclusion>
      </Release>
      <Holder uscc="{MAH}">江苏某生物制品有限公司</Holder>
    </Record>
"#
    )
}

/// A production inbound (bill 101) of three unit codes `serial..serial+3`.
fn xml_prodin(id: &str, serial: u64) -> String {
    let codes: String = (serial..serial + 3)
        .map(|s| format!("        <Code level=\"1\">8612345{s:013}</Code>\n"))
        .collect();
    format!(
        r#"    <Record type="PRODIN" id="{id}">
      <Time>2023-12-21 08:00:00</Time>
      <Bill no="SC{id}" type="101"><Quantity>3</Quantity><Operator>吴强</Operator></Bill>
      <Product code="8612345"><Name>乙型肝炎疫苗(酿酒酵母)</Name><Package doses="1">1支/盒</Package><ShelfLife months="36"/></Product>
      <Lot no="202311A05"><Produced>20231201</Produced><Expires>20261130</Expires></Lot>
      <Codes>
{codes}      </Codes>
    </Record>
"#
    )
}

fn xml_cancel(id: &str, target: &str) -> String {
    format!(
        r#"    <Record type="CANCEL" id="{id}">
      <Time>2023-12-22 10:00:00</Time>
      <Cancel record="{target}"><Reason code="02">重复上报 &amp; 作废</Reason></Cancel>
    </Record>
"#
    )
}

fn xml_export(records: &[String]) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Export system=\"MAH-TRACE\" version=\"2.1\">\n  \
         <Header><Holder uscc=\"{MAH}\">江苏某生物制品有限公司</Holder></Header>\n  <Records>\n{}  </Records>\n</Export>\n",
        records.concat()
    )
}

/// An export of 11 records, `n` (4 digits) making its ids and codes unique:
/// 9 good ones, at position 5 a lot release whose conclusion is not in the
/// spec's code table (quarantined by the agent), and last a cancellation of
/// an event that is not in the ledger (refused by the gateway). Returns the
/// text and the ledger ids of the good records.
fn good_export(n: u32) -> (String, BTreeSet<String>) {
    let p1 = format!("P-{n:04}-1");
    let p2 = format!("P-{n:04}-2");
    let l1 = format!("L-{n:04}-1");
    let pi: Vec<String> = (1..=6).map(|k| format!("PI-{n:04}-{k}")).collect();
    let records = vec![
        xml_product(&p1, "乙型肝炎疫苗(酿酒酵母)"),
        xml_product(&p2, "流感病毒裂解疫苗 &amp; 四价 «甲型»"),
        xml_lot_release(&l1, "合格"),
        xml_prodin(&pi[0], u64::from(n) * 100),
        xml_lot_release(&format!("L-{n:04}-9"), "待定"),
        xml_prodin(&pi[1], u64::from(n) * 100 + 10),
        xml_prodin(&pi[2], u64::from(n) * 100 + 20),
        xml_prodin(&pi[3], u64::from(n) * 100 + 30),
        xml_prodin(&pi[4], u64::from(n) * 100 + 40),
        xml_prodin(&pi[5], u64::from(n) * 100 + 50),
        xml_cancel(&format!("C-{n:04}-1"), "PI-NOT-IN-LEDGER"),
    ];
    let mut ids: BTreeSet<String> = [(&p1, "vaccine_product"), (&p2, "vaccine_product"), (&l1, "lot_release")]
        .iter()
        .map(|(k, c)| derive(MAH_SPEC, c, k))
        .collect();
    ids.extend(pi.iter().map(|k| derive(MAH_SPEC, "production_inbound", k)));
    (xml_export(&records), ids)
}

/// The ledger's MAH events (every category the spec maps to), each once.
fn mah_ids(db: &Path) -> BTreeSet<String> {
    MAH_CATEGORIES.iter().flat_map(|c| ledger_ids(db, c)).collect()
}

#[test]
fn xml_dir_exports_reach_the_ledger_once_and_files_move_after_the_receipts() {
    let mut gw = Node::start_for_agents();
    let mah = gw.register_named(MAH, "江苏某生物制品有限公司", "mah", "manufacturer", &[]);
    let work = tempfile::tempdir().unwrap();
    let (dir, cfg) = MAH_SOURCE.config(&gw, &mah, work.path(), "mah-export");
    let db = gw.ledger_db();

    // A good export and a broken one: two complete records, then the XML
    // is cut inside the third.
    let (good, mut expected) = good_export(1);
    std::fs::write(dir.join("export-20240301.xml"), &good).unwrap();
    let broken = xml_export(&[
        xml_product("P-0002-1", "百白破联合疫苗"),
        xml_lot_release("L-0002-1", "合格"),
        xml_product("P-0002-2", "麻腮风联合减毒活疫苗"),
    ]);
    let cut = broken.find("<Record type=\"PRODUCT\" id=\"P-0002-2\"").unwrap() + 120;
    std::fs::write(
        dir.join("export-20240302.xml"),
        format!("{}</Oops></Records></Export>\n", &broken[..cut]),
    )
    .unwrap();
    expected.insert(derive(MAH_SPEC, "vaccine_product", "P-0002-1"));
    expected.insert(derive(MAH_SPEC, "lot_release", "L-0002-1"));

    check_ok(&cfg, "mah (xml_dir)", "2 .xml file(s) waiting");

    run_once(&cfg, "source mah: 11 accepted, 1 rejected, 1 quarantined");
    assert_eq!(mah_ids(&db), expected, "the ledger holds every good record once");
    assert_eq!(files_in(&dir), BTreeSet::new(), "no export left in the directory");
    assert_eq!(files_in(&dir.join("done")), names(&["export-20240301.xml"]));
    assert_eq!(
        files_in(&dir.join("failed")),
        names(&["export-20240302.xml", "export-20240302.xml.reason.txt"])
    );
    let reason = std::fs::read_to_string(dir.join("failed/export-20240302.xml.reason.txt")).unwrap();
    assert!(
        reason.contains("export-20240302.xml")
            && reason.contains("malformed XML at byte")
            && reason.contains("2 records before it were submitted"),
        "{reason}"
    );

    // The lot release with an unknown conclusion is quarantined by the
    // agent, the cancellation of an unknown event refused by the gateway
    // and quarantined with the gateway's code.
    let list = ok(agent(&cfg, &["quarantine", "list"]));
    assert!(list.contains("2 entries"), "{list}");
    assert!(list.contains("export-20240301.xml#5"), "{list}");
    assert!(
        list.contains("export-20240301.xml#11") && list.contains("gateway refused: not_found"),
        "{list}"
    );
    assert_eq!(
        event_counts(work.path(), "mah"),
        vec![("accepted".to_string(), 11), ("rejected".to_string(), 1)]
    );

    // The same export dropped again: every record is resubmitted and
    // answered as a duplicate, nothing is appended twice.
    std::fs::copy(dir.join("done/export-20240301.xml"), dir.join("export-20240301.xml")).unwrap();
    run_once(&cfg, "source mah: 9 accepted, 1 rejected, 1 quarantined");
    assert_eq!(mah_ids(&db), expected, "a re-dropped export adds nothing");
    assert_eq!(files_in(&dir), BTreeSet::new());
    assert_eq!(files_in(&dir.join("done")), names(&["export-20240301.xml"]));

    // Gateway down: the next export (same name and size as the last one,
    // other records, as a nightly exporter writes it) stays where it is.
    gw.kill();
    let (next, next_ids) = good_export(3);
    assert_eq!(next.len(), good.len(), "same size as the export before");
    std::fs::write(dir.join("export-20240301.xml"), &next).unwrap();
    run_once_while_down(&cfg);
    assert_eq!(files_in(&dir), names(&["export-20240301.xml"]), "the file waits");
    assert_eq!(
        std::fs::read_to_string(dir.join("done/export-20240301.xml")).unwrap(),
        good,
        "nothing moved to done/ while the gateway is down"
    );
    gw.serve();
    run_once(&cfg, "source mah: 9 accepted, 1 rejected, 1 quarantined");
    expected.extend(next_ids);
    assert_eq!(
        mah_ids(&db),
        expected,
        "the new export's records are in the ledger once"
    );
    assert_eq!(files_in(&dir), BTreeSet::new());
    assert_eq!(
        std::fs::read_to_string(dir.join("done/export-20240301.xml")).unwrap(),
        next
    );
}

// ---------------------------------------------------------------- HL7 ----

const HL7_SPEC: &str = "hl7-vxu";
/// The clinic's HL7 file drop.
const IIS_FILES: DirSource = DirSource {
    kind: "hl7_files",
    name: "iis-files",
    spec_file: "hl7-vxu.toml",
    settings: "settle_ms = 0\npoll_interval_ms = 200\nbatch_size = 2\n",
};

fn hl7_sample() -> Vec<String> {
    adapters::hl7::split_messages(&std::fs::read_to_string(repo().join("config/mappings/samples/hl7-vxu.hl7")).unwrap())
}

fn vaccination(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| derive(HL7_SPEC, "vaccination", k)).collect()
}

/// A message of the sample with a new control id, record key and trace code.
fn hl7_variant(msg: &str, control: &str, key: &str, code: &str) -> String {
    msg.replace("MSG20240306002", control)
        .replace("JZ202403060011", key)
        .replace("86234560000000002003", code)
}

#[test]
fn hl7_file_drop_reaches_the_ledger_once_and_files_move_as_acknowledged() {
    let (mut gw, clinic, work) = clinic_gateway();
    let (dir, cfg) = IIS_FILES.config(&gw, &clinic, work.path(), "hl7-in");
    let db = gw.ledger_db();
    let msgs = hl7_sample();
    assert!(
        msgs[0].contains("\\T\\") && msgs[0].contains("\\F\\") && msgs[0].contains("\\X0D0A\\"),
        "the sample carries the escapes"
    );

    // 1: the first sample message (Chinese names, \T\ \F\ \X0D0A\ escapes), CR
    //    separated, under a Chinese file name;
    // 2: the second in an FHS/BHS batch envelope, LF separated;
    // 3: a good message and a bad one (lot number missing), CR LF.
    let f1 = "梅园门诊-接种-20240305.hl7";
    let f2 = "batch-20240306.hl7";
    let f3 = "混合-20240307.hl7";
    std::fs::write(dir.join(f1), format!("{}\r", msgs[0])).unwrap();
    std::fs::write(
        dir.join(f2),
        format!(
            "FHS|^~\\&|JSIIS|3201020001\nBHS|^~\\&|JSIIS|3201020001\n{}\nBTS|1\nFTS|1\n",
            msgs[1].replace('\r', "\n")
        ),
    )
    .unwrap();
    let good3 = hl7_variant(&msgs[1], "MSG20240307003", "JZ202403070021", "86234560000000002004");
    let bad = msgs[0]
        .replace("MSG20240305001", "BAD1")
        .replace("JZ202403050001", "JZ202403080001")
        .replace("JZ202403050004", "JZ202403089999")
        .replace("||||20231001A|20240930|", "|||||20240930|");
    assert_ne!(bad, msgs[0].replace("MSG20240305001", "BAD1"), "the lot number is gone");
    std::fs::write(
        dir.join(f3),
        format!("{}\r\n{}\r\n", good3.replace('\r', "\r\n"), bad.replace('\r', "\r\n")),
    )
    .unwrap();

    check_ok(&cfg, "iis-files (hl7_files)", "3 .hl7 file(s) waiting");
    run_once(&cfg, "source iis-files: 3 accepted, 0 rejected, 1 quarantined");
    let mut expected = vaccination(&["JZ202403050001", "JZ202403050004", "JZ202403060011", "JZ202403070021"]);
    assert_eq!(ledger_ids(&db, "vaccination"), expected);

    assert_eq!(files_in(&dir), BTreeSet::new(), "every file moved");
    assert_eq!(
        files_in(&dir.join("done")),
        names(&[f1, &format!("{f1}.ack"), f2, &format!("{f2}.ack")])
    );
    assert_eq!(
        files_in(&dir.join("failed")),
        names(&[f3, &format!("{f3}.ack"), &format!("{f3}.reason.txt")])
    );
    let ack1 = std::fs::read_to_string(dir.join("done").join(format!("{f1}.ack"))).unwrap();
    assert!(ack1.contains("MSA|AA|MSG20240305001"), "{ack1}");
    let ack2 = std::fs::read_to_string(dir.join("done").join(format!("{f2}.ack"))).unwrap();
    assert!(ack2.contains("MSA|AA|MSG20240306002"), "{ack2}");
    let ack3 = std::fs::read_to_string(dir.join("failed").join(format!("{f3}.ack"))).unwrap();
    assert!(
        ack3.contains("MSA|AA|MSG20240307003") && ack3.contains("MSA|AE|BAD1"),
        "{ack3}"
    );
    let reason = std::fs::read_to_string(dir.join("failed").join(format!("{f3}.reason.txt"))).unwrap();
    assert!(
        reason.contains("1 of 2 messages refused") && reason.contains("message BAD1") && reason.contains("RXA^2^15"),
        "{reason}"
    );
    assert!(
        !reason.contains("小明") && !reason.contains("13812345678"),
        "no personal data in the reason: {reason}"
    );
    // A message that fails mapping is answered AE with located ERR
    // segments, and only once the agent's quarantine holds it (keyed by its
    // control id, with the rule), so it can be replayed after a spec fix.
    let list = ok(agent(&cfg, &["quarantine", "list"]));
    assert!(
        list.contains("1 entries") && list.contains("iis-files") && list.contains("BAD1"),
        "{list}"
    );
    assert!(!list.contains("小明"), "no personal data in the list: {list}");

    // Gateway down: a new file stays in the directory, nothing moves and
    // the run fails; once the gateway is back it is delivered, and a resent
    // copy of the first file adds nothing.
    gw.kill();
    let f4 = "梅园门诊-接种-20240309.hl7";
    std::fs::write(
        dir.join(f4),
        hl7_variant(&msgs[1], "MSG20240309004", "JZ202403090031", "86234560000000002005"),
    )
    .unwrap();
    run_once_while_down(&cfg);
    assert_eq!(files_in(&dir), names(&[f4]), "the file waits for the gateway");
    assert!(!dir.join("done").join(f4).exists() && !dir.join("failed").join(f4).exists());

    gw.serve();
    std::fs::copy(dir.join("done").join(f1), dir.join(f1)).unwrap();
    // A file holding one message twice (a sender's resend appended to it).
    let f5 = "resend-20240310.hl7";
    let m5 = hl7_variant(&msgs[1], "MSG20240310005", "JZ202403100041", "86234560000000002006");
    std::fs::write(dir.join(f5), format!("{m5}\r{m5}\r")).unwrap();
    run_once(&cfg, "source iis-files: 4 accepted, 0 rejected, 0 quarantined");
    expected.extend(vaccination(&["JZ202403090031", "JZ202403100041"]));
    assert_eq!(ledger_ids(&db, "vaccination"), expected, "resends added nothing");
    assert_eq!(files_in(&dir), BTreeSet::new());
    for f in [f1, f4, f5] {
        assert!(dir.join("done").join(f).exists(), "{f} in done/");
    }
    let ack5 = std::fs::read_to_string(dir.join("done").join(format!("{f5}.ack"))).unwrap();
    assert_eq!(ack5.matches("MSA|AA|MSG20240310005").count(), 2, "{ack5}");
}

// --------------------------------------------------------------- AMQP ----

/// The carrier of config/mappings/erp-shipment.toml (`[source] entity`).
const CARRIER: &str = "91110000100012345L";
const ERP_SPEC: &str = "erp-shipment";

fn amqp_url() -> String {
    std::env::var("VAXGATE_TEST_AMQP_URL")
        .expect("VAXGATE_TEST_AMQP_URL is not set: this test needs RabbitMQ; run ./scripts/test.sh, which starts one")
}

/// A shipment event document with one shipment (the sample's first) for
/// waybill `waybill`, unit codes unique to `n`, and `eventId`.
fn shipment(event_id: &str, waybill: &str, n: u64) -> Value {
    let text = std::fs::read_to_string(repo().join("config/mappings/samples/erp-shipment.json")).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    let mut first = doc["shipments"][0].clone();
    first["waybillNo"] = json!(waybill);
    first["cartons"] = json!([{
        "code": format!("8612345{:013}", 5_000_000 + n * 10),
        "units": [
            format!("8612345{:013}", 5_000_000 + n * 10 + 1),
            format!("8612345{:013}", 5_000_000 + n * 10 + 2)
        ]
    }]);
    doc["shipments"] = json!([first]);
    doc["eventId"] = json!(event_id);
    doc
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("publisher confirm");
    assert!(confirm.is_ack(), "the broker took the message");
}

/// (ready messages, consumers) of `queue`.
async fn queue_state(ch: &Channel, queue: &str) -> (u32, u32) {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    (q.message_count(), q.consumer_count())
}

fn header(d: &Delivery, name: &str) -> String {
    let Some(h) = d.properties.headers().as_ref() else {
        return String::new();
    };
    match h.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::LongLongInt(v)) => v.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The agent running continuously (the AMQP consumer has no "caught up").
struct RunningAgent {
    process: Process,
    log: PathBuf,
    out: PathBuf,
}

impl RunningAgent {
    fn start(cfg: &Path, work: &Path) -> RunningAgent {
        let log = work.join("agent.log");
        let out = work.join("agent.out");
        let process = Process::spawn(
            agent_command(cfg, &["run"])
                .env("RUST_LOG", "info")
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        RunningAgent { process, log, out }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ctrl-C (SIGINT to this child's pid) and wait for a clean exit.
    fn interrupt(&mut self) -> String {
        let Some(exit) = self.process.stop("INT", Duration::from_secs(30)) else {
            panic!("the agent did not stop after SIGINT:\n{}", self.log());
        };
        assert!(exit.success(), "agent exit {exit:?}:\n{}", self.log());
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

#[test]
fn amqp_events_reach_the_ledger_once_and_refusals_are_dead_lettered() {
    let url = amqp_url();
    let mut gw = Node::start_for_agents();
    let carrier = gw.register_named(CARRIER, "南京医药冷链物流有限公司", "carrier", "logistics", &[]);
    let work = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let queue = format!("vaxgate-e2e-erp-{id}");
    let dlx = format!("vaxgate-e2e-erp-dead-{id}");
    let dlq = format!("vaxgate-e2e-erp-dlq-{id}");
    let cfg = gw.agent_config_with(
        work.path(),
        &carrier,
        &format!(
            "[[sources]]\ntype = \"amqp\"\nname = \"erp\"\nmapping = \"{}\"\nurl = \"{url}\"\nqueue = \"{queue}\"\n\
             dead_letter_exchange = \"{dlx}\"\nmax_attempts = 2\nbatch_size = 8\nretry_delay_ms = 100\n",
            spec("erp-shipment.toml"),
        ),
    );
    let db = gw.ledger_db();

    // `check` declares the queue and the dead-letter exchange.
    check_ok(&cfg, "erp (amqp)", "broker reachable");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (conn, ch) = rt.block_on(async {
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        // Bound to the dead-letter exchange `check` declared.
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        bound_queue(&ch, &dlq, durable, &dlx, "").await;
        (conn, ch)
    });

    // A backlog of N events; event 3 is published twice in a row (a
    // publisher's retry), so both copies will likely share a batch.
    const N: u64 = 30;
    let events: Vec<Value> = (0..N)
        .map(|i| shipment(&format!("EV-{i}"), &format!("YD-E2E-{i:04}"), i))
        .collect();
    rt.block_on(async {
        for (i, e) in events.iter().enumerate() {
            publish(&ch, &queue, &body(e)).await;
            if i == 3 {
                publish(&ch, &queue, &body(e)).await;
            }
        }
    });
    let expected: BTreeSet<String> = (0..N)
        .map(|i| derive(ERP_SPEC, "shipment", &format!("YD-E2E-{i:04}")))
        .collect();

    let mut agent = RunningAgent::start(&cfg, work.path());
    let drained = wait_until(90, || {
        ledger_ids(&db, "shipment") == expected && rt.block_on(queue_state(&ch, &queue)).0 == 0
    });
    assert!(
        drained,
        "all events in the ledger and the queue drained: {} of {N} in the ledger, queue {:?}\n{}",
        ledger_ids(&db, "shipment").intersection(&expected).count(),
        rt.block_on(queue_state(&ch, &queue)),
        agent.log()
    );

    // A consumer on the dead-letter queue.
    let mut dead = rt.block_on(async {
        ch.basic_consume(
            dlq.as_str().into(),
            "e2e-dead".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
    });
    let mut next_dead = |what: &str| -> Delivery {
        rt.block_on(async {
            let d = tokio::time::timeout(Duration::from_secs(60), dead.next())
                .await
                .unwrap_or_else(|_| panic!("no dead-lettered message: {what}"))
                .expect("consumer open")
                .expect("delivery");
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
            d
        })
    };

    // A duplicate of an accepted event (republished later, identical), one
    // that fails mapping (vehicle without plate and cold mode) and one the
    // gateway refuses (its sealed record is over the 8 KiB a ledger
    // transaction carries). Sealed records are compressed (envelope version
    // 2), so its 1,500 unit codes are scattered (splitmix64), not
    // consecutive: consecutive ones would deflate to well under 8 KiB.
    let mut unmappable = shipment("EV-BAD-MAP", "YD-E2E-BAD1", 900);
    unmappable["shipments"][0]["vehicle"] = json!({});
    let mut oversized = shipment("EV-BIG", "YD-E2E-BIG1", 901);
    let scatter = |k: u64| {
        let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % 10_000_000_000_000
    };
    oversized["shipments"][0]["cartons"][0]["units"] = (0..1500u64)
        .map(|k| json!(format!("8612345{:013}", scatter(k))))
        .collect();
    rt.block_on(async {
        publish(&ch, &queue, &body(&events[0])).await;
        publish(&ch, &queue, &body(&unmappable)).await;
        publish(&ch, &queue, &body(&oversized)).await;
    });
    let event_id = |d: &Delivery| serde_json::from_slice::<Value>(&d.data).unwrap()["eventId"].clone();
    let mut refused = [next_dead("two refusals"), next_dead("two refusals")];
    refused.sort_by_key(|d| event_id(d).to_string());
    let (map, big) = (&refused[0], &refused[1]);
    assert_eq!(event_id(map), "EV-BAD-MAP", "body kept");
    assert_eq!(event_id(big), "EV-BIG", "body kept");
    assert!(
        header(map, "x-vaxgate-reason").starts_with("mapping/validation failed"),
        "{}",
        header(map, "x-vaxgate-reason")
    );
    assert!(
        header(big, "x-vaxgate-reason").starts_with("rejected (validation_failed)"),
        "{}",
        header(big, "x-vaxgate-reason")
    );
    assert!(
        header(big, "x-vaxgate-reason").contains("a ledger transaction carries at most 8192"),
        "refused for its size: {}",
        header(big, "x-vaxgate-reason")
    );
    for d in [map, big] {
        assert_eq!(
            header(d, "x-vaxgate-attempts"),
            "0",
            "refusals are dead-lettered at once"
        );
        assert_eq!(header(d, "x-vaxgate-queue"), queue);
    }
    assert!(
        wait_until(30, || rt.block_on(queue_state(&ch, &queue)).0 == 0),
        "the queue drained:\n{}",
        agent.log()
    );
    assert_eq!(ledger_ids(&db, "shipment"), expected, "the duplicate added nothing");

    // Gateway down: a new event is retried and, after max_attempts = 2,
    // dead-lettered with the reason; it never reaches the ledger.
    gw.kill();
    let down = shipment("EV-DOWN", "YD-E2E-DOWN", 902);
    rt.block_on(publish(&ch, &queue, &body(&down)));
    let d = next_dead("the event that could not be delivered");
    assert_eq!(event_id(&d), "EV-DOWN");
    assert_eq!(header(&d, "x-vaxgate-attempts"), "2", "{}", agent.log());
    assert!(
        header(&d, "x-vaxgate-reason").starts_with("gave up after 2 attempts"),
        "{}",
        header(&d, "x-vaxgate-reason")
    );
    gw.serve();
    assert_eq!(ledger_ids(&db, "shipment"), expected);

    // Stop the agent: every message was acked (none returns to the queue
    // when the consumer's channel closes) and nothing else was dead-lettered.
    let summary = agent.interrupt();
    assert!(summary.contains("source erp:"), "{summary}");
    assert!(
        wait_until(30, || rt.block_on(queue_state(&ch, &queue)).1 == 0),
        "the agent's consumer is gone"
    );
    assert_eq!(rt.block_on(queue_state(&ch, &queue)), (0, 0), "nothing unacked");
    assert!(
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), dead.next()).await })
            .is_err(),
        "no other message was dead-lettered"
    );
    assert_eq!(ledger_ids(&db, "shipment"), expected);

    rt.block_on(async {
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .queue_delete(dlq.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch.exchange_delete(dlx.as_str().into(), Default::default()).await;
        let _ = conn.close(200, "done".into()).await;
    });
}
