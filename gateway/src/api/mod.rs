//! Route handlers, one module per route class.

pub mod admin;
pub mod ingest;
pub mod query;
