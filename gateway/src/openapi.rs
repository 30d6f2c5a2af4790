//! The OpenAPI 3.1 document served at `GET /openapi.json`, generated from
//! the route table [`crate::server::ROUTES`] (the same table the router is
//! built from) and the error codes of [`crate::error::Code`].

use std::sync::LazyLock;

use actix_web::HttpResponse;
use secure_gateway::request::headers;
use serde_json::{Map, Value, json};

use crate::error::Code;
use crate::server::{Auth, ROUTES, RouteSpec};

/// The names of the path parameters of a template (`/v1/x/{id}` → `id`).
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn operation(r: &RouteSpec) -> Value {
    let mut params: Vec<Value> = path_params(r.path)
        .into_iter()
        .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    params.extend(r.query.iter().map(|(name, description)| {
        json!({ "name": name, "in": "query", "required": false, "description": description,
                "schema": { "type": "string" } })
    }));
    let signed = json!({ "sm2KeyId": [], "sm2Timestamp": [], "sm2Nonce": [], "sm2ContentSm3": [], "sm2Signature": [] });
    let security = match r.auth {
        Auth::None | Auth::Public => json!([]),
        Auth::Write | Auth::Admin => json!([signed]),
        Auth::Read => json!([signed, { "apiKey": [] }]),
    };
    let ok = if r.path == "/v1/admin/registry" { "201" } else { "200" };
    let ok_content = match r.path {
        "/healthz" => json!({ "text/plain": { "schema": { "type": "string" } } }),
        "/metrics" => json!({ "text/plain": { "schema": { "type": "string" } } }),
        "/v1/transactions" | "/v1/cancellations" => {
            json!({ "application/json": { "schema": { "$ref": "#/components/schemas/IngestResponse" } } })
        }
        _ => json!({ "application/json": { "schema": { "type": "object" } } }),
    };
    let mut responses = Map::new();
    let mut ok_resp = json!({ "description": "success", "content": ok_content });
    if matches!(r.auth, Auth::Public | Auth::Write | Auth::Read | Auth::Admin) {
        ok_resp["headers"] = json!({
            "RateLimit": { "$ref": "#/components/headers/RateLimit" },
            "RateLimit-Policy": { "$ref": "#/components/headers/RateLimitPolicy" },
        });
    }
    responses.insert(ok.into(), ok_resp);
    if r.method == "POST" && r.path != "/v1/admin/registry" {
        responses.insert(
            "422".into(),
            json!({ "description": "all_or_nothing batch with a refused record: nothing written",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/IngestResponse" } } } }),
        );
    }
    responses.insert(
        "429".into(),
        json!({ "description": "rate limited", "headers": { "Retry-After": { "$ref": "#/components/headers/RetryAfter" } },
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
    );
    responses.insert(
        "4XX".into(),
        error_response("refused; `error.code` says why (see the Error schema)"),
    );
    responses.insert(
        "5XX".into(),
        error_response("internal error or the ledger is unavailable"),
    );
    let mut op = json!({
        "summary": r.summary,
        "operationId": operation_id(r),
        "tags": [tag(r)],
        "parameters": params,
        "security": security,
        "responses": responses,
    });
    if r.method == "POST" {
        op["requestBody"] = if r.path == "/v1/admin/registry" {
            json!({ "required": true, "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/RegistryChange" } } } })
        } else {
            json!({ "required": true, "content": {
                "application/json": { "schema": { "$ref": "#/components/schemas/SignedBatch" } },
                secure_gateway::BATCH_MEDIA_TYPE: { "schema": {
                    "type": "string", "format": "binary",
                    "description": "The binary form of the same signed batch \
                        (SignedBatch::to_binary; docs/envelope.md \"Binary batch\"): \
                        what the vaxgate agent sends." } }
            } })
        };
    }
    op
}

fn tag(r: &RouteSpec) -> &'static str {
    match r.auth {
        Auth::None => "operations",
        Auth::Public => "public",
        Auth::Write => "ingest",
        Auth::Read => "queries",
        Auth::Admin => "registry",
    }
}

fn operation_id(r: &RouteSpec) -> String {
    let mut id = r.method.to_ascii_lowercase();
    for seg in r.path.split(['/', '.', '-']).filter(|s| !s.is_empty()) {
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        let mut c = seg.chars();
        if let Some(f) = c.next() {
            id.push(f.to_ascii_uppercase());
            id.extend(c);
        }
    }
    id
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = operation(r);
    }
    let codes: Vec<Value> = Code::ALL
        .iter()
        .map(|c| json!({ "const": c.as_str(), "description": format!("HTTP {}", c.status().as_u16()) }))
        .collect();
    let header = |name: &str, description: &str| json!({ "type": "apiKey", "in": "header", "name": name, "description": description });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "vaxgate gateway API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Authenticated, rate-limited ingest and traceability API over the vaccine-traceability \
                ledger. Writes carry an SM2 request signature (docs/request-signing.md); read-only partners may use \
                `Authorization: ApiKey <key>` on GET query routes. Every error is `{\"error\": {\"code\", \"message\"}}` \
                with a stable code (docs/api.md).",
            "license": { "name": "see the repository" },
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "sm2KeyId": header(headers::KEY_ID, "Id of the registered SM2 key that signs the request"),
                "sm2Timestamp": header(headers::TIMESTAMP, "Unix seconds; refused beyond the configured clock skew (expired_timestamp)"),
                "sm2Nonce": header(headers::NONCE, "16-64 characters of A-Z a-z 0-9 _ -, never reused (replayed_nonce)"),
                "sm2ContentSm3": header(headers::CONTENT_SM3, "SM3 of the body, lowercase hex"),
                "sm2Signature": header(headers::SIGNATURE, "Base64 DER SM2 signature over the canonical request (docs/request-signing.md)"),
                "apiKey": header("Authorization", "`ApiKey vgk_<id>_<secret>`: read-only partner key, GET query routes only"),
            },
            "headers": {
                "RateLimit": { "description": "Remaining quota and reset (draft-ietf-httpapi-ratelimit-headers)", "schema": { "type": "string" } },
                "RateLimitPolicy": { "description": "The applied policy (burst and window)", "schema": { "type": "string" } },
                "RetryAfter": { "description": "Seconds to wait", "schema": { "type": "integer" } },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": { "oneOf": codes },
                            "message": { "type": "string", "description": "For a person: names what was wrong; never personal data or secrets" },
                        },
                    } },
                },
                "SignedBatch": {
                    "type": "object",
                    "description": "A batch of sealed envelopes under one SM2 batch signature (docs/envelope.md)",
                    "required": ["header", "records"],
                    "properties": { "header": { "type": "object" }, "records": { "type": "array", "items": { "type": "object" } } },
                },
                "RegistryChange": {
                    "type": "object",
                    "description": "A registry operation with its approvals (gateway/src/registry.rs)",
                    "required": ["change_id", "created_at_ms", "op"],
                    "properties": { "change_id": { "type": "string", "format": "uuid" }, "created_at_ms": { "type": "integer" },
                                    "op": { "type": "object" }, "approvals": { "type": "array", "items": { "type": "object" } } },
                },
                "IngestResponse": {
                    "type": "object",
                    "required": ["batch_id", "accepted", "duplicates", "rejected", "results"],
                    "properties": {
                        "batch_id": { "type": "string" },
                        "accepted": { "type": "integer" },
                        "duplicates": { "type": "integer" },
                        "rejected": { "type": "integer" },
                        "checkpoints": { "type": "array", "items": { "type": "object" },
                                         "description": "with ?receipts=brief: the signed checkpoint of each block named, once" },
                        "results": { "type": "array", "items": { "type": "object", "properties": {
                            "index": { "type": "integer" },
                            "event_id": { "type": "string" },
                            "status": { "enum": ["accepted", "duplicate", "rejected"] },
                            "receipt": { "type": "object" },
                            "audit_path": { "type": "array", "items": { "type": "string" } },
                            "error": { "type": "object", "properties": { "code": { "type": "string" }, "message": { "type": "string" }, "problems": { "type": "array" } } },
                            "cold_chain": { "type": "object", "properties": {
                                "receipt_status": { "const": "refused" },
                                "refusal_reason": { "type": "string" },
                                "alerts": { "type": "array", "items": { "type": "object" } },
                            } },
                        } } },
                    },
                },
            },
        },
    })
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_string());

/// `GET /openapi.json`.
pub(crate) async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_with_its_parameters() {
        let doc = document();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                n += 1;
                assert!(
                    ROUTES
                        .iter()
                        .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                    "{method} {path}"
                );
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert_eq!(declared, path_params(path), "{path}");
            }
        }
        assert_eq!(n, ROUTES.len());
        assert_eq!(path_params("/v1/batches/{lot}/recall"), vec!["lot"]);
        assert_eq!(operation_id(&ROUTES[0]), "getHealthz");
    }
}
