//! keel-raft: Keel's replication — openraft on keel-log, gRPC between nodes and for clients.
#![forbid(unsafe_code)]

pub mod application;
pub mod client;
pub mod clock;
pub mod error;
pub mod identity;
pub mod limits;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pb;
pub mod plain_log;
mod record;
pub mod repair;
pub mod snapshot;
pub mod state_machine;
pub mod types;
pub mod wire_error;

pub use error::{DecodeError, Error, Result};
