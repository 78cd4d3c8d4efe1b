//! gRPC between nodes ([`client`]: openraft's network on tonic; [`server`]: the raft
//! service), the client service ([`client_service`]), accepted connections (plain or TLS,
//! [`incoming`]) and the Prometheus endpoint ([`metrics_endpoint`]).

pub mod client;
pub mod client_service;
pub mod incoming;
pub mod metrics_endpoint;
pub mod server;
mod stoppable;
