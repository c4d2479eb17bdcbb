//! Meridian's client-facing server.
//!
//! ```text
//!  client ──gRPC (etcd v3) / HTTP──► routing: key → namespace → range
//!                                     │ leader here? ── propose / ReadIndex on the local node
//!                                     └ otherwise ───── forward to the leader's node
//! ```

pub mod routing;
