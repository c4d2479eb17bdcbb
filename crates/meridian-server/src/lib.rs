//! Meridian's client-facing server.
//!
//! ```text
//!  client ──gRPC (etcd v3) / HTTP──► routing: key → namespace → range
//!                                     │ leader here? ── propose / ReadIndex on the local node
//!                                     └ otherwise ───── forward to the leader's node (once)
//! ```

// The server owns the network and the clock: it spawns tasks and measures
// lease time.
#![allow(clippy::disallowed_methods)]

pub mod alarms;
pub mod authority;
pub mod backend;
pub mod backup;
pub mod collect;
pub mod config;
pub mod convert;
pub mod coordination;
pub mod dev_layout;
pub mod error;
pub mod geo;
pub mod gossip;
pub mod groups;
pub mod http;
pub mod join;
pub mod kv_service;
pub mod lease_service;
pub mod lock_hub;
pub mod lock_service;
pub mod maintenance;
pub mod membership;
pub mod meta;
pub mod namespace;
pub mod native;
pub mod node_admin;
pub mod placement;
pub mod promote;
pub mod reach;
pub mod routing;
pub mod server;
pub mod wan;
pub mod watch_service;
pub mod watch_wire;
pub mod write_counts;
