//! No connection exhaustion without a secret (docs/api.md, "Slow and
//! unverified requests"), against the real `vaxgate serve` run under an
//! open-file limit of 256: 300 connections each send a POST carrying only a
//! registered (public) key id and a garbage signature, then drip their
//! bodies a byte at a time. The gateway answers all but
//! `server.unverified_per_address` of them at once (429), drops the rest
//! at `server.body_read_timeout_secs` (408), and `/healthz` answers
//! throughout; nothing in its log says "Too many open files".

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Node, NodeOptions};

const ATTACKERS: usize = 300;

#[test]
fn slow_unverified_bodies_do_not_exhaust_connections() {
    let node = Node::start_with(NodeOptions {
        nofile: Some(256),
        server: "body_read_timeout_secs = 3\nunverified_per_address = 16".into(),
        ..Default::default()
    });
    let e = node.register_clinic();
    let key_id = e.key.verifying_key().key_id().to_string();
    let addr = node.base.trim_start_matches("http://").to_string();
    let now = chrono::Utc::now().timestamp();

    let mut socks: Vec<TcpStream> = Vec::with_capacity(ATTACKERS);
    for i in 0..ATTACKERS {
        let mut s = TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST /v1/transactions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 100000\r\nx-vaxgate-key-id: {key_id}\r\nx-vaxgate-timestamp: {now}\r\n\
             x-vaxgate-nonce: slow-body-nonce-{i:08}\r\nx-vaxgate-content-sm3: {}\r\n\
             x-vaxgate-signature: {}\r\n\r\n{{",
            "0".repeat(64),
            "0".repeat(128)
        );
        s.write_all(head.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        socks.push(s);
    }

    // Drip a byte on every connection still open, and ask /healthz, for 6 s.
    let health = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut checks = 0;
    while started.elapsed() < Duration::from_secs(6) {
        for s in &mut socks {
            let _ = s.write_all(b" ");
        }
        let r = health.get(format!("{}/healthz", node.base)).send();
        assert!(
            r.as_ref().is_ok_and(|r| r.status().is_success()),
            "/healthz failed after {:?} of the attack: {r:?}",
            started.elapsed()
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(checks >= 15, "{checks}");

    // What each attacker got.
    let (mut limited, mut timed_out, mut other) = (0, 0, Vec::new());
    for mut s in socks {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("HTTP/1.1 429") {
            limited += 1;
        } else if text.starts_with("HTTP/1.1 408") {
            timed_out += 1;
        } else {
            other.push(text);
        }
    }
    assert_eq!(limited, ATTACKERS - 16, "others: {other:?}");
    assert_eq!(timed_out, 16, "others: {other:?}");
    let log = node.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(node.metric("vaxgate_rate_limited_total{class=\"unverified\"}") >= (ATTACKERS - 16) as f64);
}
