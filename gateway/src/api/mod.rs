//! Route handlers, one module per route class.

pub mod admin;
pub mod ingest;
pub(crate) mod params;
pub mod query;
