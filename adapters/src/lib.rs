//! Sources (SQL, HL7 v2 over MLLP, XML exports, AMQP) and the agent that
//! pushes sealed batches to the gateway: the signed gateway client, batch
//! sealing, the submit pipeline with its state database (checkpoints,
//! receipts, quarantine) and retry backoff. Each source type implements
//! [`source::Source`] and is registered by its `type` name in
//! `source::SOURCE_TYPES`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod amqp;
pub mod client;
pub mod config;
pub mod error;
pub mod hl7;
pub mod hl7_files;
pub mod intake;
pub mod mllp;
pub mod mssql;
pub mod pipeline;
pub mod pull;
pub mod push_sources;
pub mod retry;
pub mod seal;
pub mod source;
pub mod sql;
pub mod state;
pub mod xml_source;

pub use client::{ClientError, GatewayClient, GatewayClientConfig};
pub use error::AgentError;
pub use pipeline::{EventReceipt, Pipeline, PipelineConfig, RecordOutcome};
pub use state::StateDb;
