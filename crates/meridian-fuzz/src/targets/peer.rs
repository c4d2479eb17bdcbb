//! Bytes from other nodes: the QUIC frame body (`PeerBatch`), each
//! envelope's raft-rs message, and what raft-rs parses out of that.
//!
//! Not covered: `quic::frame::read_frame`'s 4-byte length header. It is an
//! async fn over a `quinn::RecvStream` with no pure function over bytes to
//! call, so only its body decoder, `PeerBatch::decode_frame`, is fuzzed.

use meridian_transport::{PeerBatch, RaftEnvelope};
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType};

use crate::target::{Target, Verdict};

fn entry(kind: EntryType, index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.set_entry_type(kind);
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

fn conf_change_v2() -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.node_id = 4;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc.context = b"ctx".to_vec().into();
    cc
}

/// Real raft-rs messages of every shape a peer sends.
pub fn raft_messages() -> Vec<Message> {
    let msg = |kind: MessageType, from: u64, to: u64, term: u64| {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    };
    let mut out = Vec::new();

    let mut append = msg(MessageType::MsgAppend, 2, 1, 5);
    append.log_term = 4;
    append.index = 10;
    append.commit = 9;
    append.mut_entries().push(entry(EntryType::EntryNormal, 11, 5, b"\x0a\x06\x0a\x01k\x12\x01v"));
    append.mut_entries().push(entry(EntryType::EntryNormal, 12, 5, b""));
    let cc2 = conf_change_v2().write_to_bytes().expect("encode");
    append.mut_entries().push(entry(EntryType::EntryConfChangeV2, 13, 5, &cc2));
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = 3;
    let cc = cc.write_to_bytes().expect("encode");
    append.mut_entries().push(entry(EntryType::EntryConfChange, 14, 5, &cc));
    out.push(append);

    let mut resp = msg(MessageType::MsgAppendResponse, 1, 2, 5);
    resp.index = 14;
    resp.reject = true;
    resp.reject_hint = 7;
    resp.log_term = 3;
    out.push(resp);

    let mut hb = msg(MessageType::MsgHeartbeat, 2, 1, 5);
    hb.commit = 14;
    hb.context = b"read-ctx".to_vec().into();
    out.push(hb);
    out.push(msg(MessageType::MsgHeartbeatResponse, 1, 2, 5));

    let mut vote = msg(MessageType::MsgRequestPreVote, 3, 1, 6);
    vote.log_term = 5;
    vote.index = 14;
    vote.commit = 12;
    vote.commit_term = 5;
    out.push(vote);
    let mut vote = msg(MessageType::MsgRequestVote, 3, 1, 6);
    vote.log_term = 5;
    vote.index = 14;
    vote.priority = -1;
    out.push(vote);
    out.push(msg(MessageType::MsgRequestVoteResponse, 1, 3, 6));

    let mut read = msg(MessageType::MsgReadIndex, 3, 1, 6);
    read.mut_entries().push(entry(EntryType::EntryNormal, 0, 0, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07"));
    out.push(read);
    let mut read_resp = msg(MessageType::MsgReadIndexResp, 1, 3, 6);
    read_resp.index = 14;
    read_resp.mut_entries().push(entry(EntryType::EntryNormal, 0, 0, b"ctx"));
    out.push(read_resp);

    let mut snap = msg(MessageType::MsgSnapshot, 2, 1, 5);
    let s = snap.mut_snapshot();
    s.mut_metadata().index = 100;
    s.mut_metadata().term = 5;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.mut_metadata().mut_conf_state().learners = vec![4];
    s.mut_metadata().mut_conf_state().voters_outgoing = vec![1, 2];
    s.mut_metadata().mut_conf_state().auto_leave = true;
    let desc = meridian_storage::RangeDescriptor { range_id: 1, namespace_id: 1, ..Default::default() };
    s.data = meridian_storage::snapshot::encode_snapshot_header(&desc).into();
    out.push(snap);

    let mut tl = msg(MessageType::MsgTimeoutNow, 2, 1, 5);
    tl.request_snapshot = 3;
    out.push(tl);
    out
}

fn envelope(range_id: u64, m: &Message) -> RaftEnvelope {
    RaftEnvelope {
        range_id,
        from_node: m.from,
        to_node: m.to,
        conf_ver: 3,
        version: 2,
        message: m.write_to_bytes().expect("encode"),
        range_start: b"/a/".to_vec(),
        range_end: if range_id.is_multiple_of(2) { Vec::new() } else { b"/z/".to_vec() },
        quiesce: range_id == 2,
        removed: false,
        chunk: None,
    }
}

/// A chunk of a streamed snapshot, as a leader sends it before its
/// `MsgSnapshot`.
fn chunk_envelope() -> RaftEnvelope {
    let chunk = meridian_transport::SnapshotChunk {
        index: 100,
        term: 5,
        seq: 0,
        data: crate::targets::storage::snapshot_payload_seed(),
        last: true,
        total_keys: 3,
    };
    RaftEnvelope { range_id: 1, from_node: 2, to_node: 1, conf_ver: 3, version: 2, chunk: Some(chunk), ..Default::default() }
}

/// `PeerBatch::decode_frame`, then for every envelope what the receiver
/// asks of it (`is_node_ping`, `is_snapshot`, `raft_message`).
pub struct PeerFrame;

impl Target for PeerFrame {
    fn name(&self) -> &'static str {
        "peer-frame"
    }

    fn describe(&self) -> &'static str {
        "meridian_transport::PeerBatch::decode_frame + RaftEnvelope::{raft_message, is_snapshot, is_node_ping} + a chunk's stage_chunk"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let msgs = raft_messages();
        let mut seeds: Vec<Vec<u8>> =
            msgs.iter().enumerate().map(|(i, m)| PeerBatch { envelopes: vec![envelope(i as u64 + 1, m)] }.encode_frame()).collect();
        let all = PeerBatch { envelopes: msgs.iter().enumerate().map(|(i, m)| envelope(i as u64 % 3 + 1, m)).collect() };
        seeds.push(all.encode_frame());
        let ping = RaftEnvelope { from_node: 2, to_node: 1, ..Default::default() };
        seeds.push(PeerBatch { envelopes: vec![ping.clone(), ping] }.encode_frame());
        seeds.push(PeerBatch { envelopes: vec![chunk_envelope()] }.encode_frame());
        seeds.push(Vec::new());
        seeds
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let Ok(batch) = PeerBatch::decode_frame(2, input) else { return Ok(Verdict::Rejected) };
        let mut any_raft = false;
        for env in &batch.envelopes {
            std::hint::black_box((env.is_node_ping(), env.is_snapshot(), env.is_snapshot_chunk()));
            if let Some(c) = &env.chunk {
                // What the receiver stages: the chunk's pairs.
                let mut b = meridian_storage::WriteBatch::new();
                any_raft |= meridian_storage::snapshot::stage_chunk(env.range_id, &c.data, &mut b).is_ok();
            }
            if let Ok(m) = env.raft_message() {
                any_raft = true;
                std::hint::black_box((m.get_entries().len(), m.get_snapshot().get_metadata().index));
            }
        }
        // A frame a receiver accepted must re-encode to one it accepts.
        let again = PeerBatch::decode_frame(2, &batch.encode_frame()).map_err(|e| format!("reencode: {e}"))?;
        if again != batch {
            return Err("reencode: decode(encode(batch)) differs from batch".into());
        }
        Ok(if any_raft || batch.envelopes.is_empty() { Verdict::Accepted } else { Verdict::Rejected })
    }
}

/// rust-protobuf's parse of raft-rs `Message` (the bytes inside an
/// envelope), plus the conf changes raft-rs parses out of its entries.
pub struct RaftMessage;

impl Target for RaftMessage {
    fn name(&self) -> &'static str {
        "raft-message"
    }

    fn describe(&self) -> &'static str {
        "raft::prelude::Message::parse_from_bytes (rust-protobuf 2) + ConfChange/ConfChangeV2 of its entries"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        raft_messages().iter().map(|m| m.write_to_bytes().expect("encode")).collect()
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let env = RaftEnvelope { from_node: 2, message: input.to_vec(), ..Default::default() };
        let Ok(m) = env.raft_message() else { return Ok(Verdict::Rejected) };
        for e in m.get_entries() {
            match e.get_entry_type() {
                EntryType::EntryConfChange => {
                    let _ = ConfChange::parse_from_bytes(&e.data);
                }
                EntryType::EntryConfChangeV2 => {
                    let _ = ConfChangeV2::parse_from_bytes(&e.data);
                }
                EntryType::EntryNormal => {}
            }
        }
        let _ = m.write_to_bytes().map_err(|e| format!("reencode: {e}"))?;
        Ok(Verdict::Accepted)
    }
}
