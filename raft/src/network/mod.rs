//! gRPC between nodes ([`client`]: openraft's network on tonic; [`server`]: the raft
//! service), the client service ([`client_service`]) and the Prometheus endpoint
//! ([`metrics_endpoint`]).

pub mod client;
pub mod client_service;
pub mod metrics_endpoint;
pub mod server;
mod stoppable;
