//! The actix-web API gateway: configuration, TLS, authentication, rate
//! limiting, ingest and queries over the ledger. The `vaxgate` binary lives
//! in `src/main.rs`.
#![forbid(unsafe_code)]
// The OpenAPI document is one `serde_json::json!` literal.
#![recursion_limit = "256"]

pub mod answer;
pub mod api;
pub mod auth;
pub mod coldchain;
pub mod config;
pub mod custody;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod openapi;
pub mod order;
pub mod projection;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod start;
pub mod telemetry;
pub mod tls;
