//! The actix-web API gateway. The `vaxgate` binary lives in `src/main.rs`.
#![forbid(unsafe_code)]

pub mod config;
