//! The worked example of `docs/request-signing.md`: a fixed key, time, nonce
//! and body whose canonical string, headers and signature are pinned here,
//! so the document cannot drift from `secure_gateway::request`. The same
//! values are reproduced with the openssl CLI and with
//! `scripts/sign-request.sh --dry-run` (whose signature differs, because
//! OpenSSL draws a random k, but verifies).
//!
//! These tests need `openssl` (3.0+) in PATH and fail, never skip, without it.
//!
//! `cargo test -p secure-gateway --test request_example -- --nocapture`
//! prints the values.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use secure_gateway::keys::private_key_to_pem;
use secure_gateway::request::{SignedRequest, canonical_request, sign_request_at, verify_request};
use secure_gateway::{DEFAULT_DIST_ID, KeyHandle, KeyProtection, RustCryptoProvider, Signer, Sm2SigningKey, sm3};
use support::{pkeyutl_sign, pkeyutl_verify};

const METHOD: &str = "POST";
const PATH: &str = "/v1/transactions?mode=all";
const TIMESTAMP: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const NONCE: &str = "0123456789abcdef0123456789abcdef";
const BODY: &[u8] = br#"{"hello":"vaxgate"}"#;

/// The worked example's throw-away key (test fixture, never a real key).
const PRIVATE_PEM: &str = include_str!("fixtures/request-example.key.pem");
const PUBLIC_PEM: &str = include_str!("fixtures/request-example.pub.pem");
const KEY_ID: &str = "63a93826c61569b0e125e2bc7d3c4910";
const CONTENT_SM3: &str = "0b682ce6ac5a9d624dd52ba7f4f94fcb62b604e328613715a0e1f51bad969145";
const SIGNATURE_B64: &str =
    "MEUCIQChPfdEPVKDGJjddIfKyUFvEwuRSpN0Iy3BsawIiRCbdAIgEgDCux5S4LOJkYWdPqYkwX1KFEQ0qHo4G7DlztpfEcY=";

/// The example key: private scalar SM3("vaxgate request-signing example").
/// Never use a key derived from a public string outside examples.
fn example_key() -> Sm2SigningKey {
    Sm2SigningKey::from_bytes(&sm3(b"vaxgate request-signing example").0, DEFAULT_DIST_ID).unwrap()
}

/// The example's request headers with `signature`.
fn example_request(signature: String) -> SignedRequest {
    SignedRequest {
        key_id: KEY_ID.into(),
        timestamp: TIMESTAMP,
        nonce: NONCE.into(),
        content_sm3: CONTENT_SM3.into(),
        signature,
    }
}

fn canonical() -> String {
    format!("VAXGATE-SM2-SM3-V1\n{METHOD}\n{PATH}\n{KEY_ID}\n{TIMESTAMP}\n{NONCE}\n{CONTENT_SM3}")
}

fn run(cmd: &mut Command) -> Output {
    let name = cmd.get_program().to_string_lossy().into_owned();
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "`{name}` could not be run ({e}); these tests need the openssl 3 command-line tool \
             (e.g. `apt-get install openssl`)"
        ),
    }
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn files(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let key = dir.join("example.key.pem");
    let public = dir.join("example.pub.pem");
    let body = dir.join("body.json");
    let canon = dir.join("canonical.txt");
    std::fs::write(&key, PRIVATE_PEM).unwrap();
    std::fs::write(&public, PUBLIC_PEM).unwrap();
    std::fs::write(&body, BODY).unwrap();
    std::fs::write(&canon, canonical()).unwrap();
    (key, public, body, canon)
}

#[test]
fn worked_example_is_stable() {
    let k = example_key();
    let signer = Signer::import(RustCryptoProvider::shared(), KeyHandle::new("example"), &k).unwrap();
    let r = sign_request_at(&signer, METHOD, PATH, BODY, TIMESTAMP, NONCE).unwrap();
    let canon = canonical_request(METHOD, PATH, &r.key_id, TIMESTAMP, NONCE, &r.content_sm3);
    println!(
        "private key (PKCS#8, unencrypted):\n{}",
        &*private_key_to_pem(&k, &KeyProtection::DangerUnencrypted).unwrap()
    );
    println!("public key:\n{}", k.verifying_key().to_public_key_pem());
    println!("key id: {}", r.key_id);
    println!("content sm3: {}", r.content_sm3);
    println!("canonical string:\n{canon}\n--");
    println!("signature: {}", r.signature);

    assert_eq!(
        &*private_key_to_pem(&k, &KeyProtection::DangerUnencrypted).unwrap(),
        PRIVATE_PEM
    );
    assert_eq!(k.verifying_key().to_public_key_pem(), PUBLIC_PEM);
    assert_eq!(r, example_request(SIGNATURE_B64.into()));
    assert_eq!(canon, canonical());
    verify_request(k.verifying_key(), METHOD, PATH, BODY, &r).unwrap();
}

#[test]
fn openssl_reproduces_the_worked_example() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public, body, canon) = files(tmp.path());
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // The key id, with the pipeline of the document.
    let kid = ok(
        run(Command::new("sh").arg("-c").arg(format!(
            "openssl pkey -pubin -in '{}' -outform DER | tail -c 65 | openssl dgst -sm3 -r | cut -c1-32",
            s(&public)
        ))),
        "key id pipeline",
    );
    assert_eq!(kid.trim(), KEY_ID);
    // The body hash.
    let h = ok(
        run(Command::new("openssl").args(["dgst", "-sm3", "-r", &s(&body)])),
        "openssl dgst",
    );
    assert_eq!(&h[..64], CONTENT_SM3);

    // OpenSSL verifies our signature.
    let sig = tmp.path().join("sig.der");
    use base64::Engine as _;
    std::fs::write(
        &sig,
        base64::engine::general_purpose::STANDARD.decode(SIGNATURE_B64).unwrap(),
    )
    .unwrap();
    let v = ok(
        run(Command::new("openssl").args(pkeyutl_verify(&s(&public), &s(&canon), &s(&sig)))),
        "openssl pkeyutl -verify",
    );
    assert!(v.contains("Signature Verified Successfully"), "{v}");

    // And we verify OpenSSL's (random-k) signature of the same string.
    let osig = tmp.path().join("openssl.der");
    ok(
        run(Command::new("openssl").args(pkeyutl_sign(&s(&key), &s(&canon), &s(&osig)))),
        "openssl pkeyutl -sign",
    );
    let r = example_request(base64::engine::general_purpose::STANDARD.encode(std::fs::read(&osig).unwrap()));
    verify_request(example_key().verifying_key(), METHOD, PATH, BODY, &r).unwrap();
}

/// `scripts/sign-request.sh --dry-run` with the example's time and nonce
/// prints the example's headers (with its own valid signature).
#[test]
fn the_script_reproduces_the_worked_example() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _, body, _) = files(tmp.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sign-request.sh");
    let out = ok(
        run(Command::new("bash").arg(&script).args([
            "--dry-run",
            "--timestamp",
            &TIMESTAMP.to_string(),
            "--nonce",
            NONCE,
            key.to_str().unwrap(),
            "post",
            &format!("https://gateway.example:8443{PATH}"),
            body.to_str().unwrap(),
        ])),
        "sign-request.sh --dry-run",
    );
    let get = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .unwrap_or_else(|| panic!("{name} missing in\n{out}"))
            .to_string()
    };
    assert_eq!(get("x-vaxgate-key-id"), KEY_ID);
    assert_eq!(get("x-vaxgate-timestamp"), TIMESTAMP.to_string());
    assert_eq!(get("x-vaxgate-nonce"), NONCE);
    assert_eq!(get("x-vaxgate-content-sm3"), CONTENT_SM3);
    let r = example_request(get("x-vaxgate-signature"));
    verify_request(example_key().verifying_key(), METHOD, PATH, BODY, &r).unwrap();
}
