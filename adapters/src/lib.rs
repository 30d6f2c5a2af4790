//! Sources (SQL, HL7 v2 over MLLP, XML exports, AMQP) and the agent that pushes
//! sealed batches to the gateway. Filled by the adapters issue.
#![forbid(unsafe_code)]
