//! Network fault controls for chaos testing: a node can be told to drop
//! its Raft traffic to and/or from chosen peers — a partition (both ways)
//! or a one-way link failure — without touching the OS network. Off unless
//! the server's `[debug] faults` setting exposes them.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use meridian_transport::{Feedback, RaftEnvelope, SnapshotStream, Transport, TransportError};

/// Peers whose traffic is dropped, per direction.
#[derive(Debug, Default)]
pub struct NetFaults {
    blocked: RwLock<(HashSet<u64>, HashSet<u64>)>,
}

impl NetFaults {
    /// Replaces the blocked sets: `outbound` peers get nothing from this
    /// node, nothing from `inbound` peers is accepted. Empty sets heal.
    pub fn set(&self, outbound: HashSet<u64>, inbound: HashSet<u64>) {
        *self.blocked.write().unwrap_or_else(|e| e.into_inner()) = (outbound, inbound);
    }

    pub fn blocked(&self) -> (HashSet<u64>, HashSet<u64>) {
        self.blocked.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn blocks_out(&self, to: u64) -> bool {
        self.blocked.read().unwrap_or_else(|e| e.into_inner()).0.contains(&to)
    }

    pub fn blocks_in(&self, from: u64) -> bool {
        self.blocked.read().unwrap_or_else(|e| e.into_inner()).1.contains(&from)
    }
}

/// A transport that drops what [`NetFaults`] blocks on the way out.
pub(crate) struct FaultyTransport<T: Transport> {
    pub inner: Arc<T>,
    pub faults: Arc<NetFaults>,
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn send(&self, to_node: u64, envelopes: Vec<RaftEnvelope>) {
        if !self.faults.blocks_out(to_node) {
            self.inner.send(to_node, envelopes);
        }
    }

    fn send_snapshot(&self, to_node: u64, stream: Box<dyn SnapshotStream>) {
        if self.faults.blocks_out(to_node) {
            // As a cut link would: the stream fails, and raft hears of it.
            self.inner.send_snapshot(to_node, Box::new(Blocked(stream.range_id())));
        } else {
            self.inner.send_snapshot(to_node, stream);
        }
    }

    fn drain_feedback(&self, out: &mut Vec<Feedback>) {
        self.inner.drain_feedback(out);
    }
}

/// A snapshot stream on a blocked link: fails at its first read.
struct Blocked(u64);

impl SnapshotStream for Blocked {
    fn range_id(&self) -> u64 {
        self.0
    }

    fn next_envelope(&mut self) -> Result<Option<RaftEnvelope>, TransportError> {
        Err(TransportError::Io("link blocked by a chaos fault".into()))
    }
}
