//! p2p-mpc node: a libp2p peer with gossipsub, Kademlia discovery, an HTTP API,
//! Prometheus metrics and tracing. The binary `p2p-mpc` is a thin wrapper around it.

pub mod api;
pub mod atomic_file;
pub mod cli;
pub mod commands;
pub mod config;
pub mod identity;
pub mod log_limit;
pub mod metrics;
pub mod mpc;
pub mod network;
pub mod node;
pub mod roster;
pub mod tls;
pub mod tracing_config;
pub mod values;
