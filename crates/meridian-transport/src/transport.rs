use crate::envelope::RaftEnvelope;

/// Delivery outcome the raftstore must tell raft-rs about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feedback {
    /// A message of `range_id` to `to_node` could not be delivered: call
    /// `report_unreachable(to_node)` on that range.
    Unreachable { range_id: u64, to_node: u64 },
    /// A snapshot for `range_id` to `to_node` finished (or failed): call
    /// `report_snapshot`.
    Snapshot { range_id: u64, to_node: u64, ok: bool },
}

/// Sends raft messages to other nodes.
///
/// To ensure correctness:
/// - `send` never blocks the poll loop; it queues (bounded) and drops what
///   does not fit, reporting [`Feedback::Unreachable`] for it. Raft tolerates
///   loss; it does not tolerate a stuck poll loop.
/// - Messages to one node are delivered in send order, except snapshots,
///   which travel on their own stream.
pub trait Transport: Send + Sync + 'static {
    /// Queues one poll round's messages for `to_node`.
    fn send(&self, to_node: u64, envelopes: Vec<RaftEnvelope>);
    /// Moves feedback gathered since the last call into `out`.
    fn drain_feedback(&self, out: &mut Vec<Feedback>);
}
