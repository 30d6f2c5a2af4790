//! End to end: `vaxgate agent run` with an `hl7_mllp` source in front of a
//! real `vaxgate serve`. The ACK is `AA` only once the events are in the
//! ledger (checked right after each ACK), a resend is `AA` without a second
//! ledger entry, bad data is `AE` with located ERR segments and nothing in
//! the ledger, and with the gateway down the sender gets `AR` (207) and
//! succeeds after the gateway is back.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use adapters::hl7::split_messages;
use adapters::mllp::MllpClient;
use support::agent::*;
use support::{Ent, Node, Process, free_port, ok, repo};

const HL7_SOURCE: &str = "hl7-vxu";

fn config(gw: &Node, clinic: &Ent, dir: &Path, listen: &str) -> std::path::PathBuf {
    let source = format!(
        r#"[[sources]]
type = "hl7_mllp"
name = "{HL7_SOURCE}"
mapping = "{mapping}"
listen = "{listen}""#,
        mapping = repo().join("config/mappings/hl7-vxu.toml").display(),
    );
    gw.agent_config_with(dir, clinic, &source)
}

fn vaccination_ids(db: &Path) -> BTreeSet<String> {
    ledger_ids(db, "vaccination")
}

fn ids(keys: &[&str]) -> BTreeSet<String> {
    keys.iter()
        .map(|k| mappings::TraceEvent::derive_id(HL7_SOURCE, "vaccination", k).to_string())
        .collect()
}

fn msa(ack: &str) -> String {
    ack.split('\r').find(|s| s.starts_with("MSA")).unwrap_or("").to_string()
}

struct Running {
    gw: Node,
    _work: tempfile::TempDir,
    _agent: Process,
    rt: tokio::runtime::Runtime,
    client: MllpClient,
}

impl Running {
    fn send(&mut self, m: &str) -> String {
        self.rt.block_on(self.client.send(m)).unwrap()
    }
}

/// A gateway, an agent with an `hl7_mllp` source (after `agent check`
/// reported it), and an MLLP client connected to the agent.
fn start() -> Running {
    let gw = Node::start_for_agents();
    let clinic = gw.register_clinic();
    let work = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = config(&gw, &clinic, work.path(), &listen);

    let out = ok(agent(&cfg, &["check"]));
    assert!(
        out.contains("source hl7-vxu (hl7_mllp)") && out.contains("can listen on"),
        "{out}"
    );

    let log = work.path().join("agent.log");
    let child = Process::spawn(
        agent_command(&cfg, &["run"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let start = Instant::now();
        loop {
            match MllpClient::connect(&listen).await {
                Ok(c) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!(
                    "agent did not listen: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
    });
    Running {
        gw,
        _work: work,
        _agent: child,
        rt,
        client,
    }
}

fn sample() -> Vec<String> {
    split_messages(&std::fs::read_to_string(repo().join("config/mappings/samples/hl7-vxu.hl7")).unwrap())
}

#[test]
fn mllp_acks_only_after_the_ledger_has_the_events() {
    let mut r = start();
    let msgs = sample();
    let db = r.gw.ledger_db();

    let ack = r.send(&msgs[0]);
    assert_eq!(msa(&ack), "MSA|AA|MSG20240305001", "{ack}");
    assert_eq!(
        vaccination_ids(&db),
        ids(&["JZ202403050001", "JZ202403050004"]),
        "in the ledger when AA arrives"
    );
    let ack = r.send(&msgs[1]);
    assert_eq!(msa(&ack), "MSA|AA|MSG20240306002", "{ack}");
    let all3 = ids(&["JZ202403050001", "JZ202403050004", "JZ202403060011"]);
    assert_eq!(vaccination_ids(&db), all3);

    // a resend is acknowledged and stays one ledger entry
    let ack = r.send(&msgs[0]);
    assert_eq!(msa(&ack), "MSA|AA|MSG20240305001", "{ack}");
    assert_eq!(vaccination_ids(&db), all3);

    // bad data: AE with the location of the missing lot number, nothing stored
    let bad = msgs[0]
        .replace("MSG20240305001", "BAD1")
        .replace("JZ202403050004", "JZ202403059999")
        .replace("||||20231001A|20240930|", "|||||20240930|");
    let ack = r.send(&bad);
    assert_eq!(msa(&ack), "MSA|AE|BAD1|message has errors", "{ack}");
    assert!(
        ack.contains("ERR||RXA^2^15|101^Required field missing^HL70357|E|required|"),
        "{ack}"
    );
    assert_eq!(vaccination_ids(&db), all3);
}

/// The gateway is down: the sender gets AR 207 and nothing is stored; the
/// same message resent after the gateway is back is accepted once (the
/// pipeline counts the record's trace codes once across the retry).
#[test]
fn gateway_down_gives_ar_207_and_the_resend_is_accepted() {
    let mut r = start();
    let db = r.gw.ledger_db();
    r.gw.kill();
    let msg = sample()[1].clone();
    let ack = r.send(&msg);
    assert!(msa(&ack).starts_with("MSA|AR|MSG20240306002"), "{ack}");
    assert!(ack.contains("|207^Application internal error^HL70357|"), "{ack}");
    assert!(vaccination_ids(&db).is_empty());
    r.gw.serve();
    let ack = r.send(&msg);
    assert_eq!(msa(&ack), "MSA|AA|MSG20240306002", "{ack}");
    assert_eq!(vaccination_ids(&db), ids(&["JZ202403060011"]));
}
