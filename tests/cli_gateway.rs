//! End to end: `vaxgate init`, `vaxgate serve` on a loopback port (TLS 1.3
//! with the self-signed certificate init wrote), registry administration
//! with k-of-n approvals, authentication failures with their stable error
//! codes, and a restart that rebuilds the registry from the ledger.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASS_ENV: &str = "VAXGATE_TEST_PASSPHRASE";

fn vaxgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaxgate"));
    c.env(PASS_ENV, "correct horse battery staple").env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    vaxgate().args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(dir: &Path) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(dir.join("tls/server.crt.pem")).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

fn serve(dir: &Path, base: &str) -> Server {
    let child = vaxgate()
        .args(["serve", "--config", dir.join("vaxgate.toml").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let s = Server(child);
    let c = client(dir);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if c.get(format!("{base}/healthz"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the gateway did not come up at {base}");
}

fn admin(dir: &Path, base: &str, args: &[&str]) -> Output {
    let ca = dir.join("tls/server.crt.pem");
    let mut all = vec![
        "admin",
        "--gateway",
        base,
        "--ca",
        ca.to_str().unwrap(),
        "--passphrase-env",
        PASS_ENV,
    ];
    all.extend_from_slice(args);
    run(&all)
}

fn uscc(prefix: &str) -> String {
    gateway::registry::uscc_with_check(prefix).unwrap()
}

/// Sends a signed GET with explicit header values; returns (status, error code).
fn signed_get(
    c: &reqwest::blocking::Client,
    base: &str,
    path: &str,
    key: &secure_gateway::Signer,
    ts: i64,
    nonce: &str,
) -> (u16, String) {
    let r = secure_gateway::request::sign_request_at(key, "GET", path, b"", ts, nonce).unwrap();
    let mut rb = c.get(format!("{base}{path}"));
    for (k, v) in r.headers() {
        rb = rb.header(k, v);
    }
    let resp = rb.send().unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().unwrap_or_default();
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

#[test]
fn init_serve_registry_auth_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("node");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("https://127.0.0.1:{port}");
    let out = ok(&run(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
        "--passphrase-env",
        PASS_ENV,
    ]));
    assert!(out.contains("genesis block 0 written"), "{out}");

    // A bad config is refused before anything starts, naming line and key.
    let bad = tmp.path().join("bad.toml");
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

    let server = serve(&dir, &base);
    let keys = dir.join("keys");
    let a1 = keys.join("admin-1.key.pem");
    let a2 = keys.join("admin-2.key.pem");
    let ent = tmp.path().join("ent");
    ok(&run(&[
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
    let o = admin(&dir, &base, &one);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("403") && err.contains("forbidden") && err.contains("needs 2 registry-administrator approvals"),
        "{err}"
    );

    // Offline approval: write, approve with a second administrator, submit.
    let change = tmp.path().join("change.json");
    let mut write = one.clone();
    write.extend(["--out", change.to_str().unwrap()]);
    ok(&admin(&dir, &base, &write));
    ok(&admin(
        &dir,
        &base,
        &["approve", change.to_str().unwrap(), "--key", a2.to_str().unwrap()],
    ));
    let out = ok(&admin(
        &dir,
        &base,
        &["submit", change.to_str().unwrap(), "--sign-with", a1.to_str().unwrap()],
    ));
    assert!(out.contains("committed"), "{out}");
    // The same change again is a duplicate.
    let o = admin(
        &dir,
        &base,
        &["submit", change.to_str().unwrap(), "--sign-with", a1.to_str().unwrap()],
    );
    assert!(!o.status.success());

    // The entity's master key may read the registry (query class is admin here: entity keys are accepted).
    let master = ent.join("cdc-master.key.pem");
    let out = ok(&admin(
        &dir,
        &base,
        &["entity", "js-cdc", "--sign-with", master.to_str().unwrap()],
    ));
    assert!(
        out.contains("江苏省疾病预防控制中心") && out.contains("\"kind\": \"master\""),
        "{out}"
    );

    // Authentication failures, each with its stable code.
    let c = client(&dir);
    // The master key in the OpenSSL provider: requests OpenSSL signs are
    // what the gateway checks.
    let openssl = secure_gateway::ProviderKind::Openssl.build().unwrap();
    let mk = secure_gateway::KeyHandle::new("master");
    openssl
        .import_sm2_pem(
            mk.clone(),
            &std::fs::read_to_string(&master).unwrap(),
            Some("correct horse battery staple"),
            secure_gateway::DEFAULT_DIST_ID,
        )
        .unwrap();
    let mk = secure_gateway::Signer::new(openssl.clone(), mk).unwrap();
    let now = chrono::Utc::now().timestamp();
    let path = "/v1/admin/entities";
    assert_eq!(
        signed_get(&c, &base, path, &mk, now, "nonce-aaaaaaaaaaaaaaaa"),
        (200, String::new())
    );
    assert_eq!(
        signed_get(&c, &base, path, &mk, now, "nonce-aaaaaaaaaaaaaaaa"),
        (401, "replayed_nonce".into())
    );
    assert_eq!(
        signed_get(&c, &base, path, &mk, now - 301, "nonce-bbbbbbbbbbbbbbbb"),
        (401, "expired_timestamp".into())
    );
    let stranger = secure_gateway::Signer::generate(openssl, secure_gateway::KeyHandle::new("stranger")).unwrap();
    assert_eq!(
        signed_get(&c, &base, path, &stranger, now, "nonce-cccccccccccccccc"),
        (401, "unknown_entity".into())
    );
    let r = c.get(format!("{base}{path}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A second nonce (or any security header twice) is refused, whichever
    // of the two the signature covers.
    let r = secure_gateway::request::sign_request_at(&mk, "GET", path, b"", now, "nonce-eeeeeeeeeeeeeeee").unwrap();
    let mut rb = c.get(format!("{base}{path}"));
    for (k, v) in r.headers() {
        rb = rb.header(k, v);
    }
    let resp = rb.header("x-vaxgate-nonce", "nonce-ffffffffffffffff").send().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let e: serde_json::Value = resp.json().unwrap();
    assert_eq!(e["error"]["code"], "unauthenticated", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-vaxgate-nonce appears 2 times"),
        "{e}"
    );
    // A body that does not match its hash.
    let r = secure_gateway::request::sign_request_at(
        &mk,
        "POST",
        "/v1/admin/registry",
        b"{}",
        now,
        "nonce-dddddddddddddddd",
    )
    .unwrap();
    let mut rb = c.post(format!("{base}/v1/admin/registry")).body("{ }");
    for (k, v) in r.headers() {
        rb = rb.header(k, v);
    }
    let resp = rb.send().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<serde_json::Value>().unwrap()["error"]["code"],
        "bad_signature"
    );

    // Metrics count the refusals by code.
    let m = c.get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    assert!(m.contains("vaxgate_rejections_total{code=\"replayed_nonce\"} 1"), "{m}");

    // Restart: the registry is rebuilt from the ledger, and the request
    // refused as a replay before it stays refused (data/nonces.db).
    drop(server);
    let _server = serve(&dir, &base);
    assert_eq!(
        signed_get(&c, &base, path, &mk, now, "nonce-aaaaaaaaaaaaaaaa"),
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
    let out = ok(&admin(
        &dir,
        &base,
        &["entities", "--sign-with", master.to_str().unwrap()],
    ));
    assert!(out.contains("js-cdc"), "{out}");
    let o = run(&[
        "ledger",
        "verify",
        "--db",
        dir.join("data/ledger.db").to_str().unwrap(),
        "--checkpoint-key",
        keys.join("node.pub.pem").to_str().unwrap(),
    ]);
    assert!(ok(&o).starts_with("ledger intact"));
}
