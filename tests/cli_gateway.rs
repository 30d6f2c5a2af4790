//! End to end: `vaxgate init`, `vaxgate serve` on a loopback port (TLS 1.3
//! with the self-signed certificate init wrote), registry administration
//! with k-of-n approvals, authentication failures with their stable error
//! codes, and a restart that rebuilds the registry from the ledger.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Output;

use support::{Node, NodeOptions, PASS, PASS_ENV, ok, vaxgate};

fn run(args: &[&str]) -> Output {
    vaxgate().args(args).output().unwrap()
}

fn uscc(prefix: &str) -> String {
    gateway::registry::uscc_with_check(prefix).unwrap()
}

/// Sends a signed GET with explicit header values; returns (status, error code).
fn signed_get(node: &Node, path: &str, key: &secure_gateway::Signer, ts: i64, nonce: &str) -> (u16, String) {
    let r = node.raw(
        "GET",
        path,
        &Node::sig_headers(key, "GET", path, b"", ts, nonce),
        Vec::new(),
    );
    (r.status, r.code().to_string())
}

#[test]
fn init_serve_registry_auth_and_restart() {
    let mut node = Node::init(NodeOptions {
        tls: true,
        ..Default::default()
    });
    let (tmp, dir) = (node.tmp.path().to_path_buf(), node.dir.clone());
    assert!(node.init_out.contains("genesis block 0 written"), "{}", node.init_out);

    // A bad config is refused before anything starts, naming line and key.
    let bad = tmp.join("bad.toml");
    let text = std::fs::read_to_string(dir.join("vaxgate.toml"))
        .unwrap()
        .replace("threshold = 2", "threshold = 7");
    std::fs::write(&bad, text).unwrap();
    let o = run(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml:") && err.contains("`registry.threshold`"),
        "{err}"
    );

    node.serve();
    let keys = dir.join("keys");
    let a1 = keys.join("admin-1.key.pem");
    let a2 = keys.join("admin-2.key.pem");
    let ent = tmp.join("ent");
    ok(run(&[
        "keys",
        "generate",
        "--out",
        ent.to_str().unwrap(),
        "--entity",
        "cdc-master",
        "--passphrase-env",
        PASS_ENV,
    ]));
    let master_pub = ent.join("cdc-master.pub.pem");
    let id = uscc("12320000MB0123456");

    // One approval of a 2-of-3 registry is not enough.
    let args = [
        "register-entity",
        "--id",
        &id,
        "--name",
        "江苏省疾病预防控制中心",
        "--alias",
        "js-cdc",
        "--role",
        "cdc",
        "--master-key",
        master_pub.to_str().unwrap(),
    ];
    let mut one = args.to_vec();
    one.extend(["--approve", a1.to_str().unwrap()]);
    let o = node.admin(&one);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("403") && err.contains("forbidden") && err.contains("needs 2 registry-administrator approvals"),
        "{err}"
    );

    // Offline approval: write, approve with a second administrator, submit.
    let change = tmp.join("change.json");
    let mut write = one.clone();
    write.extend(["--out", change.to_str().unwrap()]);
    ok(node.admin(&write));
    ok(node.admin(&["approve", change.to_str().unwrap(), "--key", a2.to_str().unwrap()]));
    let out = ok(node.admin(&["submit", change.to_str().unwrap(), "--sign-with", a1.to_str().unwrap()]));
    assert!(out.contains("committed"), "{out}");
    // The same change again is a duplicate.
    let o = node.admin(&["submit", change.to_str().unwrap(), "--sign-with", a1.to_str().unwrap()]);
    assert!(!o.status.success());

    // The entity's master key may read the registry (query class is admin here: entity keys are accepted).
    let master = ent.join("cdc-master.key.pem");
    let out = ok(node.admin(&["entity", "js-cdc", "--sign-with", master.to_str().unwrap()]));
    assert!(
        out.contains("江苏省疾病预防控制中心") && out.contains("\"kind\": \"master\""),
        "{out}"
    );

    // Authentication failures, each with its stable code.
    // The master key in the OpenSSL provider: requests OpenSSL signs are
    // what the gateway checks.
    let openssl = secure_gateway::ProviderKind::Openssl.build().unwrap();
    let mk = secure_gateway::KeyHandle::new("master");
    openssl
        .import_sm2_pem(
            mk.clone(),
            &std::fs::read_to_string(&master).unwrap(),
            Some(PASS),
            secure_gateway::DEFAULT_DIST_ID,
        )
        .unwrap();
    let mk = secure_gateway::Signer::new(openssl.clone(), mk).unwrap();
    let now = chrono::Utc::now().timestamp();
    let path = "/v1/admin/entities";
    assert_eq!(
        signed_get(&node, path, &mk, now, "nonce-aaaaaaaaaaaaaaaa"),
        (200, String::new())
    );
    assert_eq!(
        signed_get(&node, path, &mk, now, "nonce-aaaaaaaaaaaaaaaa"),
        (401, "replayed_nonce".into())
    );
    assert_eq!(
        signed_get(&node, path, &mk, now - 301, "nonce-bbbbbbbbbbbbbbbb"),
        (401, "expired_timestamp".into())
    );
    let stranger = secure_gateway::Signer::generate(openssl, secure_gateway::KeyHandle::new("stranger")).unwrap();
    assert_eq!(
        signed_get(&node, path, &stranger, now, "nonce-cccccccccccccccc"),
        (401, "unknown_entity".into())
    );
    assert_eq!(node.raw("GET", path, &[], Vec::new()).status, 401);
    // A second nonce (or any security header twice) is refused, whichever
    // of the two the signature covers.
    let mut h = Node::sig_headers(&mk, "GET", path, b"", now, "nonce-eeeeeeeeeeeeeeee");
    h.push(("x-vaxgate-nonce".into(), "nonce-ffffffffffffffff".into()));
    let r = node.raw("GET", path, &h, Vec::new());
    assert_eq!(r.status, 401);
    let e = &r.body;
    assert_eq!(e["error"]["code"], "unauthenticated", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-vaxgate-nonce appears 2 times"),
        "{e}"
    );
    // A body that does not match its hash.
    let h = Node::sig_headers(&mk, "POST", "/v1/admin/registry", b"{}", now, "nonce-dddddddddddddddd");
    let r = node.raw("POST", "/v1/admin/registry", &h, b"{ }".to_vec());
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "bad_signature", "{}", r.text);

    // Metrics count the refusals by code.
    let m = node.raw("GET", "/metrics", &[], Vec::new()).text;
    assert!(m.contains("vaxgate_rejections_total{code=\"replayed_nonce\"} 1"), "{m}");

    // Restart: the registry is rebuilt from the ledger, and the request
    // refused as a replay before it stays refused (data/nonces.db).
    node.kill();
    node.serve();
    assert_eq!(
        signed_get(&node, path, &mk, now, "nonce-aaaaaaaaaaaaaaaa"),
        (401, "replayed_nonce".into()),
        "a captured request replayed after a restart"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(dir.join("data/nonces.db"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let out = ok(node.admin(&["entities", "--sign-with", master.to_str().unwrap()]));
    assert!(out.contains("js-cdc"), "{out}");
    let o = run(&[
        "ledger",
        "verify",
        "--db",
        dir.join("data/ledger.db").to_str().unwrap(),
        "--checkpoint-key",
        keys.join("node.pub.pem").to_str().unwrap(),
    ]);
    assert!(ok(o).starts_with("ledger intact"));
}
