//! The subcommands beside `run`: each a client of a node (or of several), not part of one.
//! `main.rs` parses the command line and dispatches here; the node itself (`node::run`)
//! imports nothing from this module.

pub mod aggregate;
pub mod chat;
pub mod client;
pub mod devnet;
pub mod keys;
pub mod vault;
