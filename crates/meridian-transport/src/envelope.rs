//! Wire types of `proto/meridian/peer.proto`, compiled from the file by
//! `build.rs` (so they cannot drift from it), and what the transports do
//! with them.

use prost::Message as _;

use crate::error::TransportError;

/// Largest frame a peer may send: a batch of raft messages or one snapshot
/// chunk (about 1 MiB, more only for a single larger value). Anything
/// larger is rejected before allocation.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

mod wire {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/meridian.peer.v1.rs"));
}

pub use wire::{PeerBatch, RaftEnvelope, SnapshotChunk};

impl RaftEnvelope {
    /// Decodes the inner raft-rs message.
    pub fn raft_message(&self) -> Result<raft::prelude::Message, TransportError> {
        <raft::prelude::Message as protobuf::Message>::parse_from_bytes(&self.message)
            .map_err(|e| TransportError::Malformed { from_node: self.from_node, reason: format!("raft message: {e}") })
    }

    /// Tells `to` that its replica of `range_id` is not in the range's
    /// configuration at `conf_ver` (see [`RaftEnvelope::removed`]).
    pub fn removed_hint(range_id: u64, from_node: u64, to_node: u64, conf_ver: u64) -> Self {
        RaftEnvelope { range_id, from_node, to_node, conf_ver, removed: true, ..Default::default() }
    }

    /// A node-level liveness ping (no range, no raft message). Quiesced
    /// ranges rely on these to notice that their leader's node died.
    pub fn is_node_ping(&self) -> bool {
        self.range_id == 0 && self.message.is_empty()
    }

    /// True if this carries a piece of a streamed snapshot's data.
    pub fn is_snapshot_chunk(&self) -> bool {
        self.chunk.is_some()
    }

    /// True if this carries a raft snapshot (sent on its own stream).
    pub fn is_snapshot(&self) -> bool {
        // eraftpb.Message field 1 is msg_type; MsgSnapshot = 7. Peeking at
        // the first bytes avoids decoding a large message twice.
        self.message.starts_with(&[0x08, 0x07])
    }
}

impl PeerBatch {
    /// The frame's bytes (without the length prefix the QUIC stream adds).
    pub fn encode_frame(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes a frame from an untrusted peer.
    pub fn decode_frame(from_node: u64, buf: &[u8]) -> Result<Self, TransportError> {
        if buf.len() > MAX_FRAME_BYTES {
            return Err(TransportError::FrameTooLarge { from_node, len: buf.len() });
        }
        PeerBatch::decode(buf).map_err(|e| TransportError::Malformed { from_node, reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;

    #[test]
    fn snapshot_detection_matches_raft_encoding() {
        let mut m = raft::prelude::Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
        m.mut_snapshot().mut_metadata().index = 5;
        let env = RaftEnvelope { message: m.write_to_bytes().unwrap(), ..Default::default() };
        assert!(env.is_snapshot());
        m.set_msg_type(raft::prelude::MessageType::MsgAppend);
        let env = RaftEnvelope { message: m.write_to_bytes().unwrap(), ..Default::default() };
        assert!(!env.is_snapshot());
        assert_eq!(env.raft_message().unwrap().get_msg_type(), raft::prelude::MessageType::MsgAppend);
    }

    #[test]
    fn garbage_frames_are_errors() {
        assert!(PeerBatch::decode_frame(1, &[0xff, 0xff, 0xff]).is_err());
        let env = RaftEnvelope { from_node: 3, message: vec![0xff; 3], ..Default::default() };
        assert!(env.raft_message().is_err());
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(PeerBatch::decode_frame(1, &big), Err(TransportError::FrameTooLarge { .. })));
    }
}
