use crate::envelope::RaftEnvelope;

/// Delivery outcome the raftstore must tell raft-rs about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feedback {
    /// A message of `range_id` to `to_node` could not be delivered: call
    /// `report_unreachable(to_node)` on that range.
    Unreachable {
        /// The range the message was for.
        range_id: u64,
        /// The node it did not reach.
        to_node: u64,
    },
    /// A snapshot for `range_id` to `to_node` finished (or failed): call
    /// `report_snapshot`.
    Snapshot {
        /// The range the snapshot was of.
        range_id: u64,
        /// The node it was sent to.
        to_node: u64,
        /// Delivered whole (false: lost or refused; raft sends another).
        ok: bool,
    },
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
