//! Sources (SQL, HL7 v2 over MLLP, XML exports, AMQP) and the agent that
//! pushes sealed batches to the gateway. Today: the signed gateway client.
#![forbid(unsafe_code)]

pub mod client;
pub mod seal;

pub use client::{ClientError, GatewayClient, GatewayClientConfig};
