use crate::envelope::RaftEnvelope;
use crate::error::TransportError;

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

/// A snapshot on its way out, read as the transport sends it: the
/// snapshot's chunk envelopes ([`RaftEnvelope::chunk`]) in order, then the
/// envelope of the raft `MsgSnapshot` itself, last. Each envelope names its
/// sender and receiver already.
///
/// Reading it is storage IO (a scan of a pinned engine snapshot, one chunk
/// at a time): a driver calls it where blocking is allowed, and only as
/// fast as the network takes the chunks, so at most a chunk or two is in
/// memory however large the range.
pub trait SnapshotStream: Send {
    /// The range the snapshot is of.
    fn range_id(&self) -> u64;
    /// The next envelope, `Ok(None)` after the last. An error ends the
    /// transfer (reported as `Feedback::Snapshot { ok: false }`).
    fn next_envelope(&mut self) -> Result<Option<RaftEnvelope>, TransportError>;
}

/// Sends raft messages to other nodes.
///
/// To ensure correctness:
/// - `send` never blocks the poll loop; it queues (bounded) and drops what
///   does not fit, reporting [`Feedback::Unreachable`] for it. Raft tolerates
///   loss; it does not tolerate a stuck poll loop.
/// - Messages to one node are delivered in send order, except snapshots,
///   which travel on their own stream.
/// - A snapshot stream's envelopes arrive in their order, or the stream
///   ends early; either way the sender gets one `Feedback::Snapshot`.
/// - Snapshots in flight are bounded per peer; one over the bound is
///   refused with `Feedback::Snapshot { ok: false }`.
pub trait Transport: Send + Sync + 'static {
    /// Queues one poll round's messages for `to_node`.
    fn send(&self, to_node: u64, envelopes: Vec<RaftEnvelope>);
    /// Sends one snapshot to `to_node` on a stream of its own, reading
    /// `stream` as the peer takes it. Never blocks the caller.
    fn send_snapshot(&self, to_node: u64, stream: Box<dyn SnapshotStream>);
    /// Moves feedback gathered since the last call into `out`.
    fn drain_feedback(&self, out: &mut Vec<Feedback>);
}
