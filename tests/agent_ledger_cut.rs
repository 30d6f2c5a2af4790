//! An agent keeps the largest signed checkpoint of the gateway's ledger
//! its receipts carried, and checks every later one against it with a
//! consistency proof (`GET /v1/public/consistency`). Here the real gateway
//! is stopped, the newest blocks of its ledger are removed (as an operator
//! with file access could: the ledger alone still verifies), and the
//! gateway restarted: the agent's next run stops with an error naming the
//! checkpoint it kept and the one it got, and records nothing as
//! delivered.

#![allow(clippy::unwrap_used)]

mod support;

use support::agent::*;
use support::ledger_cut::cut_ledger;
use support::{ok, repo, vaxgate};

#[test]
fn an_agent_refuses_a_gateway_whose_ledger_shrank() {
    let (mut gw, clinic, work) = clinic_gateway();
    let db = work.path().join("clinic.db");
    sqlite_clinic(&db, 0..200, &|_| false);
    let spec = repo().join("config/mappings/clinic-ims.toml");
    let cfg = gw.sqlite_agent_config(work.path(), &clinic, &db, &spec, "batch_size = 50");
    let out = ok(agent(&cfg, &["run", "--once"]));
    assert!(out.contains("200 accepted"), "{out}");

    // The newest three blocks (150 vaccinations) removed from the ledger.
    gw.kill();
    let ledger = gw.ledger_db();
    let kept = cut_ledger(&ledger, |newest| newest - 2);
    let o = vaxgate()
        .args(["ledger", "verify", "--db", ledger.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{kept} transactions")),
        "alone, the cut ledger verifies: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    gw.serve();

    // Ten new rows: their receipts carry a checkpoint smaller than the one
    // the agent kept, and the gateway cannot prove it ever held that one.
    sqlite_clinic(&db, 200..210, &|_| false);
    let o = agent(&cfg, &["run", "--once"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{err}");
    // It names the checkpoint it kept (the 200 vaccinations and their
    // alerts) and the smaller one it got (the cut ledger plus the new rows).
    assert!(
        err.contains("the gateway's ledger does not extend what it signed before: it signed tree size 402")
            && err.contains(&format!("and now tree size {}", kept + 20))
            && err.contains("the log shrank or forked"),
        "{err}"
    );
    // Nothing of the batch was recorded as delivered.
    let counts = event_counts(work.path(), SOURCE);
    assert!(!counts.iter().any(|(s, n)| s == "accepted" && *n > 200), "{counts:?}");
}
