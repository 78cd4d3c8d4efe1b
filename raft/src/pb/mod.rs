//! Generated protobuf and gRPC code, and conversions between it and openraft's types.

#![allow(
    missing_docs,
    clippy::pedantic,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]

/// The raft service between nodes.
pub mod raft {
    tonic::include_proto!("keel.raft.v2");
}

/// The client service.
pub mod client {
    tonic::include_proto!("keel.client.v2");
}

mod convert;

pub use convert::{
    append_request_from_pb, append_request_to_pb, membership_from_pb, membership_to_pb,
    stream_result_from_pb, stream_result_to_pb, vote_request_from_pb, vote_response_from_pb,
};
