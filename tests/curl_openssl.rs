//! End to end: `scripts/sign-request.sh` (curl + the openssl CLI, nothing
//! else) against a real `vaxgate serve` over TLS, as
//! `docs/request-signing.md` describes it: a GET and a POST signed with an
//! entity's encrypted master key are accepted, the same headers replayed
//! with plain curl are refused with `replayed_nonce`, and an unregistered
//! key gets `unknown_entity` with a non-zero exit.
//!
//! Needs `curl` and `openssl` (3.0+) in PATH (`scripts/test.sh` installs
//! them); fails, never skips, without them.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{Node, NodeOptions, PASS, PASS_ENV, ok};

/// Runs an external tool, panicking with an install hint when it is missing.
fn tool(name: &str, args: &[&str]) -> Output {
    match Command::new(name)
        .args(args)
        .env(PASS_ENV, PASS)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!(
            "`{name}` could not be run ({e}); this test needs curl and the openssl 3 CLI in PATH \
             (scripts/test.sh installs them: apt-get install curl openssl)"
        ),
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn script() -> PathBuf {
    support::repo().join("scripts/sign-request.sh")
}

/// `bash scripts/sign-request.sh ARGS`.
fn sign_request(args: &[&str]) -> Output {
    let script = script();
    let mut all = vec![s(&script)];
    all.extend_from_slice(args);
    tool("bash", &all)
}

#[test]
fn curl_and_openssl_sign_requests_the_gateway_accepts() {
    // Fail early and clearly when a tool is missing.
    let v = ok(tool("openssl", &["version"]));
    assert!(v.starts_with("OpenSSL 3"), "openssl 3 is required, found {v}");
    ok(tool("curl", &["--version"]));

    let node = Node::start_with(NodeOptions {
        tls: true,
        ..Default::default()
    });
    let out = &node.init_out;
    assert!(out.contains("genesis block 0 written"), "{out}");
    let (tmp, base) = (&node.tmp, &node.base);
    let ca = node.ca.clone().unwrap();

    // An entity with an encrypted master key, registered with 2 of 3
    // administrator approvals.
    let id = gateway::registry::uscc_with_check("12320000MB0123456").unwrap();
    let master = node
        .register_named(&id, "江苏省疾病预防控制中心", "js-cdc", "cdc", &[])
        .key_file;

    // GET signed by the script: accepted, the response body on stdout.
    let url = format!("{base}/v1/admin/entities");
    let headers = tmp.path().join("headers.txt");
    let out = ok(sign_request(&[
        "--ca",
        s(&ca),
        "--passphrase-env",
        PASS_ENV,
        "--headers-out",
        s(&headers),
        s(&master),
        "GET",
        &url,
    ]));
    assert!(out.contains("js-cdc") && out.contains(&id), "{out}");

    // The same headers again, with plain curl: a replayed nonce.
    let o = tool(
        "curl",
        &[
            "-sS",
            "--cacert",
            s(&ca),
            "-H",
            &format!("@{}", s(&headers)),
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    let out = ok(o);
    assert!(
        out.ends_with("\n401") && out.contains(r#""code":"replayed_nonce""#),
        "{out}"
    );

    // A POST: the body's SM3 and the signature verify, so the request gets
    // past authentication and is refused only for its content (not a
    // registry change); the script exits non-zero (curl --fail-with-body)
    // and still prints the error.
    let body = tmp.path().join("body.json");
    std::fs::write(&body, br#"{"hello":"vaxgate"}"#).unwrap();
    let o = sign_request(&[
        "--ca",
        s(&ca),
        "--passphrase-env",
        PASS_ENV,
        s(&master),
        "post",
        &format!("{base}/v1/admin/registry"),
        s(&body),
    ]);
    assert_eq!(o.status.code(), Some(22), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(r#""code":"malformed_body""#),
        "{}",
        text(&o)
    );

    // A key the registry does not know (a plain test key made by openssl).
    let stranger = tmp.path().join("stranger.key.pem");
    ok(tool("openssl", &["genpkey", "-algorithm", "SM2", "-out", s(&stranger)]));
    let o = sign_request(&["--ca", s(&ca), s(&stranger), "GET", &url]);
    assert_eq!(o.status.code(), Some(22), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(r#""code":"unknown_entity""#),
        "{}",
        text(&o)
    );

    // A wrong passphrase never reaches the network.
    let o = Command::new("bash")
        .args([
            s(&script()),
            "--ca",
            s(&ca),
            "--passphrase-env",
            PASS_ENV,
            s(&master),
            "GET",
            &url,
        ])
        .env(PASS_ENV, "not-the-passphrase-7f3a")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("not-the-passphrase-7f3a"),
        "the passphrase must not be echoed: {}",
        text(&o)
    );
}
