//! Read-only API keys (R5.7) against the real `vaxgate serve`: created by a
//! signed registry change (`vaxgate admin api-key create`), shown once,
//! stored only as an SM3 hash; a partner reads exactly what its policy
//! grants; writes and admin routes refuse API keys; a revoked key is
//! refused; the key never appears in the ledger file or the server log.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::{Node, fresh, golden};

#[test]
fn partner_reads_its_scope_only_and_revocation_is_final() {
    let node = Node::start();
    let cdc = node.register("12320100MB1234561", "nj-cdc", "cdc", &["12320100466001234B"], None);
    // The partner may read product 8612345 only.
    let partner = node.register(
        "91320100MA1XYA129",
        "partner",
        "partner",
        &[],
        Some(json!({ "read": { "products": ["8612345"] } })),
    );
    // Two receipts: one of product 8612345, one of 8699999.
    let rec = golden("inbound_receipt", "cdc-stock.json").remove(0);
    let mut inside = fresh(&rec);
    inside.payload.trace_codes = vec!["86123450000000005001".into()];
    inside.payload.fields.insert("bill_code".into(), json!("RK-API-1"));
    let mut outside = fresh(&rec);
    outside.payload.trace_codes = vec!["86999990000000005002".into()];
    outside.payload.fields.insert("bill_code".into(), json!("RK-API-2"));
    let r = node.post_batch(&cdc, "/v1/transactions", &[inside.clone(), outside.clone()]);
    assert_eq!(r.body["accepted"], 2, "{}", r.text);

    let out = support::ok(node.admin(&[
        "api-key",
        "create",
        "--entity",
        &partner.id,
        "--label",
        "dashboard",
        "--approve",
        partner.key_file.to_str().unwrap(),
    ]));
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("vgk_"))
        .unwrap_or_else(|| panic!("no key in {out}"))
        .to_string();
    let key_id = gateway::registry::api_key_id(&key).unwrap().to_string();
    let auth = vec![("authorization".to_string(), format!("ApiKey {key}"))];
    let used = node.metric("vaxgate_api_key_requests_total{class=\"query\"}");

    // Reads within the policy; the rate-limit headers are there.
    let r = node.raw("GET", "/v1/trace/86123450000000005001", &auth, Vec::new());
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["steps"][0]["event_id"], inside.event_id.to_string());
    assert!(r.headers.contains_key("ratelimit-policy"), "{:?}", r.headers);
    let r = node.raw("GET", &format!("/v1/events/{}", inside.event_id), &auth, Vec::new());
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(node.metric("vaxgate_api_key_requests_total{class=\"query\"}") >= used + 2.0);
    // Outside the policy.
    let r = node.raw("GET", "/v1/trace/86999990000000005002", &auth, Vec::new());
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
    let r = node.raw("GET", &format!("/v1/events/{}", outside.event_id), &auth, Vec::new());
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);

    // Writes and admin routes refuse API keys.
    let mut h = auth.clone();
    h.push(("content-type".into(), "application/json".into()));
    let batch = node.seal(&cdc, &[fresh(&rec)]).to_json().into_bytes();
    let txs = node.transactions();
    let r = node.raw("POST", "/v1/transactions", &h, batch);
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET requests on read routes only")
    );
    let r = node.raw("GET", "/v1/admin/entities", &auth, Vec::new());
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
    assert_eq!(node.transactions(), txs);

    // A wrong secret with the right id.
    let mut forged = key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let r = node.raw(
        "GET",
        "/v1/stats",
        &[("authorization".into(), format!("ApiKey {forged}"))],
        Vec::new(),
    );
    assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{}", r.text);
    assert!(!r.text.contains(&forged));

    // The entity shows the key by id and status only.
    let e = support::ok(node.admin(&["--sign-with", &node.admin_key(1), "entity", &partner.id]));
    assert!(e.contains(&key_id) && !e.contains(&key[21..]), "{e}");

    // Revoked (by administrators this time): refused from then on.
    node.admin_approved(
        &["api-key", "revoke", "--key-id", &key_id, "--reason", "contract ended"],
        &[1, 2],
    );
    let r = node.raw("GET", "/v1/trace/86123450000000005001", &auth, Vec::new());
    assert_eq!((r.status, r.code()), (401, "key_revoked"), "{}", r.text);

    // The key is nowhere in the ledger database or the server log; its id is.
    let secret = &key[21..];
    let mut ledger_bytes = Vec::new();
    for f in std::fs::read_dir(node.dir.join("data")).unwrap() {
        ledger_bytes.extend(std::fs::read(f.unwrap().path()).unwrap());
    }
    let hay = String::from_utf8_lossy(&ledger_bytes);
    assert!(hay.contains(&key_id), "the registry change is in the ledger");
    assert!(!hay.contains(secret), "the API key's secret is in the ledger");
    let log = node.log_text();
    assert!(!log.is_empty());
    assert!(!log.contains(secret), "the API key's secret is in the log");
}
