//! gRPC between nodes ([`client`]: openraft's network on tonic; [`server`]: the raft
//! service) and the client service ([`client_service`]).

pub mod client;
pub mod client_service;
pub mod server;
mod stoppable;
