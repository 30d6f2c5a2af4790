//! End to end: `vaxgate sandbox` at a small size, twice with the same seed
//! (the summaries agree), a restart with `--serve` (state intact, a partner
//! query over HTTP, Ctrl-C stops it), and a flipped byte in the ledger file
//! that `vaxgate ledger verify` pins to its block and transaction.
//!
//! What must be equal between two runs with the same seed (`summary.json`):
//! per-source records, accepted, rejected, quarantined and rejection rules;
//! records and accepted totals; the number of ledger transactions; the
//! verification result; the demo trace code and its steps (category, time,
//! signer); the refused delivery and its reason. What may differ: timings, the port, the number of blocks (group
//! commit depends on timing), hashes, keys and transaction ids.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::ledger_cut::{assert_tampering_found, flip_byte_of};

const DOSES: &str = "120";
const SEED: &str = "5";

fn vaxgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaxgate"));
    c.env("RUST_LOG", "warn");
    c
}

/// `vaxgate sandbox` of [`DOSES`] doses with [`SEED`] in `dir`, on the
/// crypto `provider`, with the further arguments `args`.
fn sandbox(dir: &Path, provider: &str, args: &[&str]) -> Command {
    let mut c = vaxgate();
    c.args([
        "sandbox",
        "--doses",
        DOSES,
        "--seed",
        SEED,
        "--crypto-provider",
        provider,
    ])
    .args(args)
    .arg("--dir")
    .arg(dir);
    c
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// The part of a summary that the seed fixes (whatever the crypto provider).
fn comparable(mut v: serde_json::Value) -> serde_json::Value {
    let o = v.as_object_mut().unwrap();
    for k in ["timings", "gateway", "blocks", "verify_output", "crypto_provider"] {
        assert!(o.remove(k).is_some(), "summary lacks {k}");
    }
    v
}

#[test]
fn sandbox_summary_determinism_restart_and_tamper() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Two runs with the same seed (one after the other: the machine is
    // small), the second with the other crypto provider: the same records,
    // refusals and findings, and its OpenSSL-signed ledger verifies.
    let run = |dir: &Path, provider: &str| {
        let o = sandbox(dir, provider, &[]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    let oa = run(&a, "rustcrypto");
    let out = String::from_utf8_lossy(&oa.stdout).into_owned();
    for needle in [
        "== summary ==",
        "verification: OK",
        "== one dose: trace code",
        "production_inbound",
        "lot_release",
        "shipment",
        "vaccination",
        "cold_chain_readings",
        "proof OK",
        "sign-request.sh",
    ] {
        assert!(out.contains(needle), "no {needle:?} in\n{out}");
    }

    // Summaries: every source read, only the intended dirty rows held back.
    let sa = summary(&a);
    assert_eq!(sa["verified"], true, "{sa}");
    // The world's warm delivery: its receipt is in the ledger, refused, with
    // the gateway's reason (the receipt is judged after the shipment).
    let refused = sa["refused_delivery"]["refused_receipts"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{sa}");
    assert_eq!(refused[0]["category"], "inbound_receipt", "{sa}");
    assert!(
        refused[0]["refusal_reason"].as_str().unwrap().contains("arrival temp"),
        "{sa}"
    );
    assert!(out.contains("== refused delivery: waybill"), "{out}");
    assert_eq!(sa["demo_proof_verified"], true, "{sa}");
    let manifest = sandbox::load_manifest(&a).unwrap();
    for s in &manifest.sources {
        let got = &sa["sources"][&s.name];
        assert_eq!(got["records"].as_u64(), Some(s.records as u64), "{}: {got}", s.name);
        let dirty: Vec<&sandbox::ExpectedReject> = manifest
            .expected_rejects
            .iter()
            .filter(|r| r.source == s.name)
            .collect();
        assert_eq!(
            got["accepted"].as_u64(),
            Some((s.records - dirty.len()) as u64),
            "{}: {got}",
            s.name
        );
        for r in dirty {
            assert!(
                got["reasons"][&r.rule].as_u64().unwrap_or(0) >= 1,
                "{}: {} missing in {got}",
                s.name,
                r.rule
            );
        }
    }
    let steps = sa["demo_steps"].as_array().unwrap();
    let cats: Vec<&str> = steps.iter().map(|s| s["category"].as_str().unwrap()).collect();
    // In time order: the dose's production bill, then its lot's release.
    assert_eq!(cats[..2], ["production_inbound", "lot_release"], "{cats:?}");
    let relations: Vec<&str> = steps.iter().map(|s| s["relation"].as_str().unwrap()).collect();
    assert_eq!(relations[..2], ["self", "lot"], "{relations:?}");
    assert!(
        steps
            .iter()
            .all(|s| s["category"] != "shipment" || s["relation"] == "parent"),
        "the carrier ships the dose's carton: {steps:?}"
    );
    // Each leg's temperature history: its logger's reading sets, found by
    // the gateway (logger and trip period), as steps of the carton.
    let readings = steps.iter().filter(|s| s["category"] == "cold_chain_readings");
    assert!(readings.clone().count() >= 4, "{steps:?}");
    assert!(readings.clone().all(|s| s["relation"] == "parent"), "{steps:?}");
    assert_eq!(cats.last(), Some(&"vaccination"), "{cats:?}");
    assert!(cats.iter().filter(|c| **c == "shipment").count() >= 4, "{cats:?}");
    stock_differences_are_the_quarantined_vaccinations(&sa);
    // The world's custody incidents: refused or flagged by the gateway,
    // nothing left pending (the lanes run in the order the goods move).
    let findings = &sa["custody_findings"];
    for r in manifest
        .expected_rejects
        .iter()
        .filter(|r| mappings::custody::Rule::parse(&r.rule).is_some())
    {
        assert_eq!(findings["refuse"][&r.rule], 1, "{r:?}: {findings}");
    }
    assert_eq!(
        findings["flag"]["recalled_used"].as_u64(),
        Some(manifest.expected_flags.len() as u64),
        "{findings}"
    );
    assert!(findings.get("pending").is_none(), "{findings}");
    assert!(out.contains("kept and flagged recalled_used x1"), "{out}");
    let ob = run(&b, "openssl");
    let sb = summary(&b);
    assert_eq!(sb["crypto_provider"], "openssl", "{sb}");
    assert_eq!(sa["crypto_provider"], "rustcrypto", "{sa}");
    assert!(
        String::from_utf8_lossy(&ob.stdout).contains("ran on the openssl crypto provider"),
        "{}",
        text(&ob)
    );
    assert_eq!(comparable(sa.clone()), comparable(sb));
    // Each ledger verifies through the other provider: every batch and
    // checkpoint signature made by one is checked by the other.
    for (dir, other) in [(&a, "openssl"), (&b, "rustcrypto")] {
        let o = vaxgate()
            .args(["ledger", "verify", "--crypto-provider", other, "--db"])
            .arg(dir.join("node/data/ledger.db"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", text(&o));
        assert!(out.starts_with("ledger intact"), "{out}");
        assert!(out.contains(&format!("signatures checked by {other}")), "{out}");
    }

    // No personal data in the ledger file.
    let db = a.join("node/data/ledger.db");
    let ledger_bytes: Vec<u8> = [db.clone(), a.join("node/data/ledger.db-wal")]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .flatten()
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let people = rt
        .block_on(sandbox::sqlite_rows(&a.join("clinic/clinic.db"), "T_JZ_SZZ", "SZZBM"))
        .unwrap();
    for p in people.iter().take(20) {
        for k in ["XM", "ZJHM"] {
            let v = p[k].as_str().unwrap();
            assert!(
                !ledger_bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                "{k} of a recipient found in the ledger file"
            );
        }
    }

    // Restart with --serve: same state, a partner query, Ctrl-C stops it.
    let mut child = sandbox(&a, "openssl", &["--serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut base = None;
    let mut seen = Vec::new();
    while base.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(90).saturating_sub(start.elapsed()))
            .unwrap_or_else(|_| panic!("no 'Ctrl-C stops it' line:\n{}", seen.join("\n")));
        if let Some(rest) = line.strip_prefix("gateway running on ") {
            base = rest.split(';').next().map(str::to_string);
        }
        seen.push(line);
    }
    let base = base.unwrap();
    let restarted = summary(&a);
    assert_eq!(
        restarted["transactions"], sa["transactions"],
        "a restart re-sends (duplicates) but appends nothing new"
    );
    assert_eq!(restarted["verified"], true);
    let partner = client_of(&a, &base, "partner");
    let code = &manifest.demo_trace_code;
    assert!(
        code.starts_with("8612345"),
        "the partner's policy covers product 8612345"
    );
    let body = rt.block_on(partner.get(&format!("/v1/trace/{code}"))).unwrap();
    let t: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let own_vaccination = t["steps"].as_array().unwrap().iter().any(|s| {
        s["category"] == "vaccination" && s["event"]["traceCodes"].as_array().unwrap().iter().any(|c| c == code)
    });
    assert!(own_vaccination, "{t}");
    assert!(
        t["steps"][0].get("personal_data").is_none(),
        "partner sees no personal data"
    );
    // The printed curl command: the partner's read-only API key.
    let api_key = std::fs::read_to_string(a.join("secrets/partner.apikey")).unwrap();
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}/v1/batches/{}/recall", manifest.demo_lot))
        .header("Authorization", format!("ApiKey {}", api_key.trim()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let recall: serde_json::Value = r.json().unwrap();
    assert!(recall["administered_doses"].as_u64().unwrap() >= 1, "{recall}");
    recall_matches_the_world(&manifest, &recall);
    // With its evidence, the same counts are recounted by verify-proof from
    // the proven events alone (cartons, transports, refusals and all).
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}/v1/batches/{}/recall?evidence=true", manifest.demo_lot))
        .header("Authorization", format!("ApiKey {}", api_key.trim()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let evidence: serde_json::Value = r.json().unwrap();
    assert_eq!(evidence["held_by"], recall["held_by"]);
    let file = a.join("recall-evidence.json");
    std::fs::write(&file, evidence.to_string()).unwrap();
    let (ok, out) = verify_proof(&a, &file);
    assert!(ok && out.contains("recall counts OK"), "{out}");
    // Clinic A's own stock with its evidence, signed with the clinic's key:
    // recounted by verify-proof, its emptied cartons (every dose given)
    // apart from its stock.
    let clinic = client_of(&a, &base, "meiyuan");
    let clinic_a = sandbox::world::CLINIC_A.uscc;
    let body = rt
        .block_on(clinic.get(&format!("/v1/holders/{clinic_a}/stock?evidence=true")))
        .unwrap();
    let stock: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        stock["emptied_packages"].as_u64().unwrap() > 0,
        "{}",
        stock["emptied_packages"]
    );
    assert!(stock["units"].as_u64().unwrap() > 0, "{}", stock["units"]);
    std::fs::write(&file, stock.to_string()).unwrap();
    let (ok, out) = verify_proof(&a, &file);
    assert!(ok && out.contains("stock counts OK"), "{out}");
    assert!(String::from_utf8_lossy(&oa.stdout).contains("Authorization: ApiKey"));
    // Ctrl-C (SIGINT) stops the sandbox and its gateway.
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sandbox did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let port = base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the gateway still listens after Ctrl-C"
    );

    // A flipped byte in the vaccination's payload: verify names its block.
    let proof: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("demo-proof.json")).unwrap()).unwrap();
    let height = proof["block"]["height"].as_u64().unwrap();
    let tx_id = proof["transaction"]["tx_id"].as_str().unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(proof["transaction"]["payload"].as_str().unwrap())
        .unwrap();
    let wal = a.join("node/data/ledger.db-wal");
    let needle = &payload[payload.len() / 2..payload.len() / 2 + 48];
    assert!(
        flip_byte_of(&[&db, &wal], needle),
        "the vaccination's payload is not in the ledger files"
    );
    assert_tampering_found(&db, &a.join("node/keys/node.pub.pem"), height, tx_id);
}

/// A size outside the generator's range is refused before anything is
/// written (no folder, no passphrase, no gateway).
#[test]
fn sandbox_refuses_a_bad_size_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    for bad in ["0", "19", "10000001", "many"] {
        let o = vaxgate()
            .args(["sandbox", "--doses", bad, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--doses"), "{err}");
        if bad != "many" {
            assert!(err.contains("outside 20..=10000000"), "{err}");
        }
        assert!(!dir.exists(), "--doses {bad} wrote {}", dir.display());
    }
}

/// The recall answer of the demo lot against the generator's ground truth
/// (the world knows where every dose is), as far as the ledger can know it:
/// doses whose vaccination record was quarantined (deliberately dirty rows)
/// are still in their clinic's stock for the ledger.
/// A gateway client at `base` signing with sandbox `dir`'s key of `alias`
/// (its PEM unlocked with the sandbox's passphrase).
fn client_of(dir: &Path, base: &str, alias: &str) -> adapters::GatewayClient {
    let pass = std::fs::read_to_string(dir.join("secrets/passphrase")).unwrap();
    let provider = secure_gateway::RustCryptoProvider::shared();
    let h = secure_gateway::KeyHandle::new(alias);
    provider
        .import_sm2_pem(
            h.clone(),
            &std::fs::read_to_string(dir.join(format!("keys/{alias}.key.pem"))).unwrap(),
            Some(pass.trim()),
            secure_gateway::DEFAULT_DIST_ID,
        )
        .unwrap();
    adapters::GatewayClient::new(
        &adapters::GatewayClientConfig {
            base_url: base.to_string(),
            ..Default::default()
        },
        secure_gateway::Signer::new(provider, h).unwrap(),
    )
    .unwrap()
}

/// `vaxgate verify-proof FILE` against sandbox `dir`'s node key: (success, stdout).
fn verify_proof(dir: &Path, file: &Path) -> (bool, String) {
    let o = vaxgate()
        .arg("verify-proof")
        .arg(file)
        .arg("--checkpoint-key")
        .arg(dir.join("node/keys/node.pub.pem"))
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

fn recall_matches_the_world(manifest: &sandbox::Manifest, recall: &serde_json::Value) {
    use sandbox::world::{CARTON, CLINIC_A, CLINIC_B, PROVINCE};
    use std::collections::BTreeMap;
    let world = sandbox::world::simulate(SEED.parse().unwrap(), DOSES.parse().unwrap());
    let li = world.lots.iter().position(|l| l.number == manifest.demo_lot).unwrap();
    let clinics = [CLINIC_A.uscc, CLINIC_B.uscc];
    let mut administered: BTreeMap<&str, u64> = BTreeMap::new();
    let mut given = std::collections::BTreeSet::new();
    for v in world.vaccinations.iter().filter(|v| v.lot == li && v.dirty.is_none()) {
        *administered.entry(clinics[v.clinic]).or_insert(0) += 1;
        given.insert(v.code.as_str());
    }
    let mut clinic_held: BTreeMap<&str, u64> = BTreeMap::new();
    for (clinic, lot, code, _, _) in &world.clinic_stock {
        if *lot == li && !given.contains(code.as_str()) {
            *clinic_held.entry(clinics[*clinic]).or_insert(0) += 1;
        }
    }
    let units = (world.lots[li].cartons * CARTON) as u64;
    // The delivery refused at receipt (lot 0) was returned and destroyed.
    let destroyed = if li == 0 { 3 * CARTON as u64 } else { 0 };
    assert_eq!(recall["units"], units, "{recall}");
    assert_eq!(recall["unknown_units"], 0, "{recall}");
    // The units of each party in the recall's list `list`, the party under `party`.
    let units_by = |list: &str, party: &str| -> BTreeMap<String, u64> {
        recall[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a[party]["id"].as_str().unwrap().to_string(),
                    a["units"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let got_admin = units_by("administered_by", "vaccinating_unit");
    let want_admin: BTreeMap<String, u64> = administered.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got_admin, want_admin, "{recall}");
    let held = units_by("held_by", "holder");
    for (clinic, n) in &clinic_held {
        assert_eq!(held.get(*clinic), Some(n), "{clinic} in {recall}");
    }
    let destroyed_got: u64 = recall["destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["by"]["id"], PROVINCE.uscc, "{recall}");
            d["units"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(destroyed_got, destroyed, "{recall}");
    // Everything else is in the CDCs' stock.
    let cdc_held: u64 = held
        .iter()
        .filter(|(h, _)| !clinics.contains(&h.as_str()))
        .map(|(_, n)| n)
        .sum();
    let admin_total: u64 = administered.values().sum();
    let clinic_total: u64 = clinic_held.values().sum();
    assert_eq!(cdc_held, units - admin_total - clinic_total - destroyed, "{recall}");
}

/// The stock reconciliation of clinic A (legacy table against the ledger):
/// the only codes that differ are the doses whose vaccination rows were
/// deliberately dirty (the agent quarantined them, so the ledger still has
/// them in stock); nothing is in the legacy stock that the ledger lacks.
fn stock_differences_are_the_quarantined_vaccinations(summary: &serde_json::Value) {
    let world = sandbox::world::simulate(SEED.parse().unwrap(), DOSES.parse().unwrap());
    let mut want: Vec<String> = world
        .vaccinations
        .iter()
        .filter(|v| v.clinic == 0 && v.dirty.is_some_and(|d| mappings::custody::Rule::parse(d).is_none()))
        .map(|v| v.code.clone())
        .collect();
    want.sort();
    let lots = summary["stock_reconciliation"]["lots"].as_array().unwrap();
    assert!(!lots.is_empty(), "{summary}");
    let mut got: Vec<String> = Vec::new();
    for l in lots {
        assert_eq!(l["only_legacy"], serde_json::json!([]), "{l}");
        got.extend(
            l["only_ledger"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string()),
        );
    }
    got.sort();
    assert_eq!(got, want, "{}", summary["stock_reconciliation"]);
}
