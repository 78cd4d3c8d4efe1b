//! Generated protobuf and gRPC code of the workflow service, and of the protocol of calls
//! between clusters (`remote`).

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::pedantic,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]

tonic::include_proto!("keel.workflows.v2");

/// The protocol of calls between clusters, `keel.remote.v1` (`scheduler/REMOTE.md`).
pub mod remote {
    tonic::include_proto!("keel.remote.v1");
}
