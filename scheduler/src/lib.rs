//! keel-scheduler: Keel's embeddable [`Node`] and the `keel` command-line program.
//!
//! Today a node serves the plain replicated log of keel-raft; the durable workflow engine
//! (steps, timers, signals) joins this crate as a second application state machine.
//!
//! ```text
//!  keel node --config node.toml ─► ConfigFile::load ─► NodeConfig ─► Node::start
//!  keel dev ─► three Nodes on loopback ─► init ─► endpoints in ./keel-data/endpoints
//!  keel status|append|read ─► KeelClient ─► any node (redirected to the leader)
//! ```
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

pub mod builtin;
pub mod client;
mod command;
pub mod config;
pub mod engine;
pub mod error;
pub mod limits;
pub mod machine;
pub mod node;
mod pb;
pub mod service;
pub mod state;
pub mod wire;

pub use command::{
    Answer, Command, Due, EntryState, Outcome, Owner, Rejection, Stamped, StepRecord,
    WorkflowStatus,
};
pub use config::{ConfigFile, NodeSettings};
pub use error::{Error, Result};
pub use node::Node;

/// The bytes of a stamped command, as the scheduler's state machine decodes them (for
/// tools and tests that feed a [`machine::SchedulerMachine`] directly).
pub fn encode_command(stamped: &Stamped) -> Vec<u8> {
    command::encode(stamped)
}
