//! `GET /openapi.json` against the real routes of `vaxgate serve`, both
//! ways: every documented path and method reaches a handler (the router
//! answers neither 404 nor 405; authentication runs after routing, so an
//! unauthenticated request to a protected route is 401), and every route
//! of the router's table (`gateway::server::ROUTES`) is documented. A path
//! that is not documented is 404 and a documented path with another method
//! 405, which shows the check can fail.

#![allow(clippy::unwrap_used)]

mod support;

use support::Node;

/// A sample value for a path parameter.
fn sample(param: &str) -> &'static str {
    match param {
        "code" => "86123450000000001001",
        "height" => "0",
        "hash" => "00",
        "lot" => "202311A05",
        _ => "0190a3f0-0000-7000-8000-000000000000",
    }
}

fn fill(path: &str) -> String {
    let mut out = path.to_string();
    for p in gateway::openapi::path_params(path) {
        out = out.replace(&format!("{{{p}}}"), sample(p));
    }
    out
}

#[test]
fn document_matches_the_router_both_ways() {
    let node = Node::start();
    let r = node.raw("GET", "/openapi.json", &[], Vec::new());
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("apiKey") && schemes.contains_key("sm2Signature"));
    let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["oneOf"]
        .as_array()
        .unwrap();
    assert!(codes.iter().any(|c| c["const"] == "replayed_nonce"));
    // The batch routes take a signed batch as JSON or in its binary form;
    // the registry takes JSON only.
    for path in ["/v1/transactions", "/v1/cancellations"] {
        let content = doc["paths"][path]["post"]["requestBody"]["content"]
            .as_object()
            .unwrap();
        let mut types: Vec<&str> = content.keys().map(String::as_str).collect();
        types.sort_unstable();
        assert_eq!(types, ["application/json", secure_gateway::BATCH_MEDIA_TYPE], "{path}");
    }
    let registry = doc["paths"]["/v1/admin/registry"]["post"]["requestBody"]["content"]
        .as_object()
        .unwrap();
    assert_eq!(registry.keys().collect::<Vec<_>>(), ["application/json"]);

    // Documented → routed.
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let m = method.to_ascii_uppercase();
            let body = if m == "POST" { b"{}".to_vec() } else { Vec::new() };
            let h = vec![("content-type".to_string(), "application/json".to_string())];
            let resp = node.raw(&m, &fill(path), &h, body);
            assert!(
                resp.status != 404 && resp.status != 405,
                "{m} {path} is documented but the router answers {}: {}",
                resp.status,
                resp.text
            );
            let public = op["security"].as_array().unwrap().is_empty();
            if !public {
                assert_eq!(resp.status, 401, "{m} {path} without credentials: {}", resp.text);
            }
            documented.push((m, path.clone()));
        }
    }
    // Routed → documented: the document is generated from ROUTES, so this
    // checks the generator (a route it drops or merges), not the router.
    for r in gateway::server::ROUTES {
        assert!(
            documented.iter().any(|(m, p)| m == r.method && p == r.path),
            "{} {} is served but not documented",
            r.method,
            r.path
        );
    }
    assert_eq!(documented.len(), gateway::server::ROUTES.len());

    // The negative controls.
    let r = node.raw("GET", "/v1/not-a-route", &[], Vec::new());
    assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.text);
    let r = node.raw("DELETE", "/v1/trace/86123450000000001001", &[], Vec::new());
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"), "{}", r.text);
}

/// The example config (`config/vaxgate.toml`) loads and validates through
/// the gateway's own loader, every section present, `${ENV}` for secrets.
#[test]
fn example_config_loads_and_validates() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vaxgate.toml");
    let raw = std::fs::read_to_string(&path).unwrap();
    for section in [
        "[server]",
        "[server.tls]",
        "[crypto]",
        "[node]",
        "[ledger]",
        "[registry]",
        "[auth]",
        "[rate_limits]",
        "[telemetry]",
        "[forwarding]",
    ] {
        assert!(raw.contains(section), "{section} missing");
    }
    // Without the secrets in the environment the loader refuses, naming
    // the variable (an empty environment, whatever the test's own).
    let e = gateway::config::load_str(&raw, &path, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("VAXGATE_PG_PASSWORD"), "{e}");
    // With them, it loads and validates.
    let env = |n: &str| match n {
        "VAXGATE_PG_PASSWORD" => Some("pg-secret".to_string()),
        "VAXGATE_AMQP_PASSWORD" => Some("mq-secret".to_string()),
        _ => None,
    };
    let c = gateway::config::load_str(&raw, &path, &env).unwrap().config;
    assert!(c.ledger.url.contains("pg-secret"));
    assert_eq!(c.registry.threshold, 2);
    assert_eq!(c.rate_limits.admin.burst, 20);
    assert!(c.server.tls.unwrap().require_client_cert);
    assert_eq!(
        c.forwarding.unwrap().alert_categories,
        vec!["cold_chain_alert", "custody_alert"]
    );
}
