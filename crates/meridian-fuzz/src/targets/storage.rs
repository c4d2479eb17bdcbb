//! Bytes read back from disk at start-up, and snapshot payloads from the
//! network.
//!
//! A stored-state input is a list of records that the harness writes into
//! a fresh [`MemEngine`] under the *real* keys before opening it:
//!
//! ```text
//! input  := frame*
//! frame  := op:u8 flags:u8 range:u8 arg:u64le len:u16le value[len]
//! op % 7 : 0 raft local state   (RaftState,  state_key(range))
//!          1 apply state        (ApplyState, state_key(range))
//!          2 range descriptor   (Meta,       state_key(range))
//!          3 log entry          (RaftLog,    log_key(range, arg))
//!          4 tombstone          (RaftState,  tombstone_key(range))
//!          5 store incarnation  (RaftState,  data_key(0, "incarnation"))
//!          6 odd-length key     (cf = range % 4, key = range-1 prefix ‖
//!                                first (flags >> 4) % 9 bytes of arg BE)
//! flags  : bit 0 "seal" — the harness rewrites the value's last 4 bytes
//!          with the record codec's crc32 first, so mutated records pass the
//!          checksum and reach the decoders behind it. Inputs without seals
//!          model bit rot; with seals, logically corrupt records (a bug in a
//!          writer, a bad restore).
//! ```
//!
//! Records are the storage codec's `version:u8 ‖ fields ‖ crc32:u32le`.

use std::collections::BTreeSet;
use std::sync::Arc;

use meridian_kv::KvMachine;
use meridian_raftstore::{StateMachine, StateMachineFactory, Store, StoreConfig};
use meridian_storage::snapshot::{encode_snapshot_header, finish_install, stage_chunk, SnapshotReader};
use meridian_storage::{
    keys, ApplyState, Cf, Engine, MemEngine, PeerStorage, RaftLocalState, RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole, WriteBatch,
};
use meridian_transport::mem::MemNetwork;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::mutate::interesting_u64;
use crate::target::{Target, Verdict};

const HEADER_BYTES: usize = 13;
const SEAL: u8 = 1;
const OPS: u8 = 7;
/// Most frames one input may hold (bounds the work per input).
const MAX_FRAMES: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub op: u8,
    pub flags: u8,
    pub range: u8,
    pub arg: u64,
    pub value: Vec<u8>,
}

impl Frame {
    fn new(op: u8, range: u8, arg: u64, value: Vec<u8>, seal: bool) -> Self {
        Frame { op, flags: if seal { SEAL } else { 0 }, range, arg, value }
    }

    /// Column family and key this frame is written under.
    pub fn place(&self) -> (Cf, Vec<u8>) {
        let range = u64::from(self.range);
        match self.op % OPS {
            0 => (Cf::RaftState, keys::state_key(range)),
            1 => (Cf::ApplyState, keys::state_key(range)),
            2 => (Cf::Meta, keys::state_key(range)),
            3 => (Cf::RaftLog, keys::log_key(range, self.arg)),
            4 => (Cf::RaftState, keys::tombstone_key(range)),
            5 => (Cf::RaftState, keys::data_key(0, b"incarnation")),
            _ => {
                let cf = [Cf::RaftLog, Cf::RaftState, Cf::ApplyState, Cf::Meta][usize::from(self.range % 4)];
                let mut key = keys::range_prefix(1).to_vec();
                key.extend_from_slice(&self.arg.to_be_bytes()[..usize::from(self.flags >> 4) % 9]);
                (cf, key)
            }
        }
    }

    /// The value as written: sealed if the frame asks for it.
    pub fn stored_value(&self) -> Vec<u8> {
        let mut v = self.value.clone();
        if self.flags & SEAL != 0 {
            seal(&mut v);
        }
        v
    }
}

/// Rewrites the crc32 trailer of a storage-codec record in place.
pub fn seal(record: &mut [u8]) {
    if record.len() >= 5 {
        let (body, crc) = record.split_at_mut(record.len() - 4);
        crc.copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    }
}

/// A storage-codec record of `fields` (already encoded), sealed.
pub fn record(fields: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(fields.len() + 5);
    r.push(1);
    r.extend_from_slice(fields);
    r.extend_from_slice(&[0; 4]);
    seal(&mut r);
    r
}

/// A log entry as `PeerStorage` stores it: a record holding one
/// length-prefixed protobuf `Entry`.
pub fn entry_record(e: &Entry) -> Vec<u8> {
    let body = e.write_to_bytes().expect("encode Entry");
    let mut fields = (body.len() as u64).to_le_bytes().to_vec();
    fields.extend_from_slice(&body);
    record(&fields)
}

pub fn encode_frames(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let len = f.value.len().min(u16::MAX as usize);
        out.extend_from_slice(&[f.op, f.flags, f.range]);
        out.extend_from_slice(&f.arg.to_le_bytes());
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&f.value[..len]);
    }
    out
}

/// Parses frames; a short last frame keeps what is there.
pub fn decode_frames(mut input: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while input.len() >= HEADER_BYTES && frames.len() < MAX_FRAMES {
        let arg = u64::from_le_bytes(input[3..11].try_into().expect("8 bytes"));
        let len = usize::from(u16::from_le_bytes([input[11], input[12]]));
        let end = (HEADER_BYTES + len).min(input.len());
        frames.push(Frame { op: input[0], flags: input[1], range: input[2], arg, value: input[HEADER_BYTES..end].to_vec() });
        input = &input[end..];
    }
    frames
}

/// A fresh engine holding `frames` (later frames overwrite earlier ones).
fn engine_with(frames: &[Frame]) -> MemEngine {
    let engine = MemEngine::new();
    let mut batch = WriteBatch::new();
    for f in frames {
        let (cf, key) = f.place();
        batch.put(cf, key, f.stored_value());
    }
    engine.write(&batch, true).expect("mem engine write");
    engine
}

fn descriptor(range_id: u64, voters: &[u64]) -> RangeDescriptor {
    RangeDescriptor {
        range_id,
        namespace_id: range_id,
        start: Vec::new(),
        end: Vec::new(),
        epoch: RangeEpoch { conf_ver: 1, version: 1 },
        replicas: voters.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect(),
    }
}

fn kv_factory() -> Arc<dyn StateMachineFactory> {
    Arc::new(|_: &RangeDescriptor| Box::new(KvMachine::new(None)) as Box<dyn StateMachine>)
}

fn store_config() -> StoreConfig {
    let mut cfg = StoreConfig::new(1);
    cfg.compact_log_entries = 8;
    cfg
}

/// What a real node leaves on disk: range 1 (single voter, led, a few KV
/// writes, a conf change adding a learner, the log compacted) and range 2
/// (bootstrapped with three voters, never started).
pub fn real_store_frames() -> Vec<Frame> {
    use meridian_kv::command::{Command, LeaseGrantOp, Op, PutOp};
    use meridian_raftstore::raft_types::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
    use prost::Message as _;

    let engine = MemEngine::new();
    Store::bootstrap(&engine, 1, &[descriptor(1, &[1]), descriptor(2, &[1, 2, 3])]).expect("bootstrap");
    let net = MemNetwork::new(0);
    let mut s = Store::open(store_config(), Arc::new(engine.clone()), Arc::new(net.transport(1)), kv_factory()).expect("open");
    s.campaign(1).expect("campaign");
    s.poll().expect("poll");
    let cmd = |op: Op| Command { op: Some(op), wall_ms: 0 }.encode_to_vec();
    s.propose(s.request(1), cmd(Op::LeaseGrant(LeaseGrantOp { id: 7, ttl_s: 60 }))).expect("propose");
    for i in 0..6 {
        let put = PutOp { key: format!("k{i}").into_bytes(), value: vec![b'v'; i], lease: 7 * (i as i64 % 2), ..Default::default() };
        s.propose(s.request(1), cmd(Op::Put(put))).expect("propose");
        s.poll().expect("poll");
    }
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.node_id = 4;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    s.propose_conf_change(s.request(1), cc).expect("conf change");
    for _ in 0..6 {
        s.poll().expect("poll");
    }
    // Entries after the compaction, so the stored log is not empty.
    for i in 0..4 {
        s.propose(s.request(1), cmd(Op::Put(PutOp { key: format!("late{i}").into_bytes(), ..Default::default() }))).expect("propose");
        s.poll().expect("poll");
    }
    for _ in 0..3 {
        s.poll().expect("poll");
    }
    drop(s);

    let mut frames = Vec::new();
    for cf in [Cf::RaftState, Cf::ApplyState, Cf::Meta, Cf::RaftLog] {
        engine
            .scan(cf, &[], &[0xff; 9], &mut |k, v| {
                let range = keys::range_of(k).unwrap_or(0) as u8;
                let frame = match cf {
                    Cf::RaftLog => keys::log_index(k).map(|i| Frame::new(3, range, i, v.to_vec(), true)),
                    Cf::RaftState if k == keys::data_key(0, b"incarnation") => Some(Frame::new(5, 0, 0, v.to_vec(), false)),
                    Cf::RaftState if k == keys::state_key(u64::from(range)) => Some(Frame::new(0, range, 0, v.to_vec(), true)),
                    Cf::ApplyState => Some(Frame::new(1, range, 0, v.to_vec(), true)),
                    Cf::Meta => Some(Frame::new(2, range, 0, v.to_vec(), true)),
                    _ => None,
                };
                frames.extend(frame);
                true
            })
            .expect("scan");
    }
    frames
}

/// Valid stored states: the real store, each range alone, and a few
/// hand-made edge shapes.
fn stored_state_seeds() -> Vec<Vec<u8>> {
    let real = real_store_frames();
    let mut seeds = vec![encode_frames(&real)];
    for range in [1u8, 2] {
        let only: Vec<Frame> = real.iter().filter(|f| f.range == range || f.op == 5).cloned().collect();
        seeds.push(encode_frames(&only));
    }
    // Without its log, and without its apply state.
    seeds.push(encode_frames(&real.iter().filter(|f| f.op != 3).cloned().collect::<Vec<_>>()));
    seeds.push(encode_frames(&real.iter().filter(|f| f.op != 1).cloned().collect::<Vec<_>>()));
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0x5eed);
    for _ in 0..8 {
        seeds.push(encode_frames(&structured_state(&mut rng)));
    }
    seeds
}

fn edge(rng: &mut ChaCha8Rng, near: u64) -> u64 {
    match rng.gen_range(0..4) {
        0 => near,
        1 => near.wrapping_add(rng.gen_range(0..3)),
        2 => near.wrapping_sub(rng.gen_range(0..3)),
        _ => interesting_u64(rng),
    }
}

/// A stored state built with the real encoders from edge values: every
/// record is well-formed and checksummed, the *contents* disagree (commit
/// past the log, applied past commit, indexes near u64::MAX, gaps, terms
/// going backwards, entries stored under the wrong index).
fn structured_state(rng: &mut ChaCha8Rng) -> Vec<Frame> {
    let range = if rng.gen_bool(0.8) { 1 } else { rng.gen_range(0..4) };
    let truncated_index = if rng.gen_bool(0.5) { rng.gen_range(0..8) } else { edge(rng, u64::MAX) };
    let small_term = rng.gen_range(0..4);
    let truncated_term = edge(rng, small_term);
    let n_entries = rng.gen_range(0..12u64);
    let last = truncated_index.wrapping_add(n_entries);
    let term = edge(rng, truncated_term.wrapping_add(1));
    let vote = *[0u64, 1, 2, 9].choose(rng).expect("non-empty");
    let hs = HardState { term, vote, commit: edge(rng, last), ..Default::default() };
    let voters: &[u64] = [&[1][..], &[1, 2, 3], &[], &[2], &[1, u64::MAX]].choose(rng).expect("non-empty");
    let mut cs = ConfState { voters: voters.to_vec(), ..Default::default() };
    if rng.gen_bool(0.2) {
        cs.learners = vec![1];
    }
    if rng.gen_bool(0.2) {
        cs.voters_outgoing = vec![1, 2];
        cs.auto_leave = rng.gen();
    }
    let rs = RaftLocalState { hard_state: hs, conf_state: cs, truncated_index, truncated_term };
    let applied = ApplyState { applied_index: edge(rng, last), applied_term: edge(rng, 1) };
    let replicas = voters.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect();
    let desc = RangeDescriptor {
        range_id: if rng.gen_bool(0.9) { u64::from(range) } else { interesting_u64(rng) },
        namespace_id: if rng.gen_bool(0.9) { u64::from(range) } else { interesting_u64(rng) },
        start: if rng.gen_bool(0.5) { Vec::new() } else { b"/m/".to_vec() },
        end: if rng.gen_bool(0.5) { Vec::new() } else { b"/a/".to_vec() },
        epoch: RangeEpoch { conf_ver: edge(rng, 1), version: edge(rng, 1) },
        replicas,
    };
    let mut frames = vec![
        Frame::new(0, range, 0, rs.encode(), true),
        Frame::new(1, range, 0, applied.encode(), true),
        Frame::new(2, range, 0, desc.encode(), true),
    ];
    let mut term = truncated_term;
    for i in 1..=n_entries {
        let index = truncated_index.wrapping_add(i);
        term = if rng.gen_bool(0.9) { term.wrapping_add(rng.gen_range(0..2)) } else { edge(rng, term) };
        let stored_index = if rng.gen_bool(0.9) { index } else { edge(rng, index) };
        let entry_type = *[EntryType::EntryNormal, EntryType::EntryNormal, EntryType::EntryConfChangeV2].choose(rng).expect("non-empty");
        let data: Vec<u8> = (0..rng.gen_range(0..24)).map(|_| rng.gen()).collect();
        let e = Entry { index: stored_index, term, entry_type, data: data.into(), ..Default::default() };
        let key_index = if rng.gen_bool(0.95) { index } else { edge(rng, index) };
        frames.push(Frame::new(3, range, key_index, entry_record(&e), true));
    }
    if rng.gen_bool(0.2) {
        frames.push(Frame::new(5, 0, 0, interesting_u64(rng).to_be_bytes().to_vec(), false));
    }
    if rng.gen_bool(0.1) {
        frames.push(Frame::new(4, range, 0, desc.encode(), true));
    }
    if rng.gen_bool(0.3) {
        frames.shuffle(rng);
    }
    frames
}

/// Mutates one frame's value and re-seals it (most of the time), so the
/// change gets past the checksum.
fn mutate_frames(rng: &mut ChaCha8Rng, frames: &mut Vec<Frame>) {
    if frames.is_empty() {
        return;
    }
    let i = rng.gen_range(0..frames.len());
    match rng.gen_range(0..6) {
        0 => frames[i].flags ^= SEAL,
        1 => frames[i].arg = edge(rng, frames[i].arg),
        2 => {
            frames[i].op = rng.gen_range(0..OPS);
            frames[i].flags = (frames[i].flags & 0x0f) | (rng.gen_range(0..16u8) << 4);
        }
        3 => {
            let f = frames.remove(i);
            if rng.gen_bool(0.5) {
                let to = rng.gen_range(0..=frames.len());
                frames.insert(to, f);
            }
        }
        _ => {
            // Edit the record body in place: fixed-width fields, length
            // prefixes, the embedded protobuf.
            let v = &mut frames[i].value;
            let body_len = v.len().saturating_sub(4);
            let mut body = v[..body_len].to_vec();
            if rng.gen_bool(0.5) && body.len() > 9 {
                let mut proto = body[9..].to_vec();
                if crate::proto_tree::mutate_encoding(rng, &mut proto) {
                    body.truncate(9);
                    if rng.gen_bool(0.8) {
                        body[1..9].copy_from_slice(&(proto.len() as u64).to_le_bytes());
                    }
                    body.extend_from_slice(&proto);
                }
            } else {
                crate::mutate::mutate_bytes(rng, &mut body, &[]);
            }
            body.extend_from_slice(&[0; 4]);
            *v = body;
            frames[i].flags |= SEAL;
        }
    }
}

fn generate_state(rng: &mut ChaCha8Rng, real: &[Frame]) -> Vec<u8> {
    let mut frames = if rng.gen_bool(0.5) { structured_state(rng) } else { real.to_vec() };
    for _ in 0..rng.gen_range(0..4) {
        mutate_frames(rng, &mut frames);
    }
    encode_frames(&frames)
}

/// Checks what raft-rs reads right after a successful open; returns
/// `Err` for a read that fails on a log `open` accepted.
fn exercise_storage(ps: &PeerStorage) -> Result<(), String> {
    let _ = ps.initial_state();
    let first = ps.first_index().map_err(|e| format!("read after open: first_index: {e}"))?;
    if first == 0 {
        // Only without overflow checks (release): truncated_index + 1 wrapped.
        return Err("open accepted truncated_index u64 max (first_index wrapped to 0)".into());
    }
    let last = ps.last_index().map_err(|e| format!("read after open: last_index: {e}"))?;
    let truncated = first.wrapping_sub(1);
    ps.term(truncated).map_err(|e| format!("read after open: term({truncated}) of the truncation point: {e}"))?;
    if last >= first {
        // open verified every stored entry, so reading them back must work.
        // raft-rs computes last_index + 1 (RaftLog::new, Unstable offset).
        let high = last.checked_add(1).ok_or("open accepted the largest possible last_index (u64 max)")?;
        let low = first.max(high.saturating_sub(256));
        let got = ps
            .entries(low, high, None, GetEntriesContext::empty(false))
            .map_err(|e| format!("read after open: entries({low}, {high}): {e}"))?;
        if got.len() as u64 != high - low {
            return Err(format!("read after open: entries({low}, {high}) returned {} entries", got.len()));
        }
        for i in low..high {
            ps.term(i).map_err(|e| format!("read after open: term({i}): {e}"))?;
        }
        let _ = ps.entries(low, high, Some(1), GetEntriesContext::empty(false));
    }
    Ok(())
}

/// The storage decoders alone: `RaftLocalState`/`ApplyState`/
/// `RangeDescriptor::decode` on every record, `PeerStorage::list_ranges`,
/// and `PeerStorage::open` of every range present, followed by the reads
/// raft-rs makes at start-up.
pub struct StorageRecords {
    real: Vec<Frame>,
}

impl StorageRecords {
    pub fn new() -> Self {
        StorageRecords { real: real_store_frames() }
    }
}

impl Default for StorageRecords {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for StorageRecords {
    fn name(&self) -> &'static str {
        "storage-records"
    }

    fn describe(&self) -> &'static str {
        "meridian_storage::{RaftLocalState, ApplyState, RangeDescriptor}::decode, PeerStorage::{list_ranges, open} + raft::Storage reads"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        stored_state_seeds()
    }

    fn is_protobuf(&self) -> bool {
        false
    }

    fn generate(&self, rng: &mut ChaCha8Rng) -> Option<Vec<u8>> {
        Some(generate_state(rng, &self.real))
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let frames = decode_frames(input);
        for f in &frames {
            let v = f.stored_value();
            let range = u64::from(f.range);
            match f.op % OPS {
                0 => drop(RaftLocalState::decode(&v, range)),
                1 => drop(ApplyState::decode(&v, range)),
                2 | 4 => drop(RangeDescriptor::decode(&v, range)),
                _ => {}
            }
        }
        let engine = engine_with(&frames);
        let _ = PeerStorage::list_ranges(&engine);
        let engine: Arc<dyn Engine> = Arc::new(engine);
        let ranges: BTreeSet<u8> = frames.iter().map(|f| f.range).collect();
        let mut opened = false;
        for &range in ranges.iter().take(4) {
            if let Ok(ps) = PeerStorage::open(engine.clone(), u64::from(range)) {
                opened = true;
                exercise_storage(&ps)?;
            }
        }
        Ok(if opened { Verdict::Accepted } else { Verdict::Rejected })
    }
}

/// The whole start-up path: `Store::open` (incarnation record,
/// `list_ranges`, `PeerStorage::open`, raft-rs `RawNode::new` over the
/// stored state), then ticks and polls through an election, which apply
/// stored committed entries through `KvMachine`.
pub struct StoreOpen {
    real: Vec<Frame>,
}

impl StoreOpen {
    pub fn new() -> Self {
        StoreOpen { real: real_store_frames() }
    }
}

impl Default for StoreOpen {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for StoreOpen {
    fn name(&self) -> &'static str {
        "store-open"
    }

    fn describe(&self) -> &'static str {
        "meridian_raftstore::Store::open over corrupt stored state, then tick + poll through an election and apply"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        stored_state_seeds()
    }

    fn is_protobuf(&self) -> bool {
        false
    }

    fn generate(&self, rng: &mut ChaCha8Rng) -> Option<Vec<u8>> {
        Some(generate_state(rng, &self.real))
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        Ok(if restart(engine_with(&decode_frames(input))).is_some() { Verdict::Accepted } else { Verdict::Rejected })
    }
}

/// What a restarted node does with its engine: `Store::open`, then ticks
/// past the longest randomized election timeout, polling each round, so a
/// single voter elects itself and applies what is committed. (Not
/// `Store::campaign`: production never calls it, and it skips raft-rs's
/// promotable check.) `None` if the open failed.
fn restart(engine: MemEngine) -> Option<Store> {
    let net = MemNetwork::new(0);
    let mut store = Store::open(store_config(), Arc::new(engine), Arc::new(net.transport(1)), kv_factory()).ok()?;
    let ticks = 2 * store.config().election_ticks + 2;
    for _ in 0..ticks {
        store.tick();
        if store.poll().is_err() {
            break;
        }
    }
    Some(store)
}

// ---- snapshot payloads -------------------------------------------------------

/// Flag bit: the payload is a snapshot header (the data of a raft
/// `MsgSnapshot`), not a chunk of snapshot data.
const HEADER: u8 = 4;

/// A real snapshot chunk (`SnapshotReader`) of range 1 with a few keys.
pub fn snapshot_payload_seed() -> Vec<u8> {
    let engine = MemEngine::new();
    let mut b = WriteBatch::new();
    for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b\x00c", b""), (b"k", &[0xff; 40])] {
        b.put(Cf::Data, keys::data_key(1, k), v.to_vec());
    }
    engine.write(&b, true).expect("write");
    first_chunk(&engine)
}

fn first_chunk(engine: &MemEngine) -> Vec<u8> {
    let mut r = SnapshotReader::new(Arc::from(engine.snapshot()), &descriptor(1, &[1, 2, 3]));
    r.next_chunk().expect("read chunk").expect("one chunk at least").data
}

/// Snapshot input: `flags:u8 ‖ payload`; flag bit 0 seals the payload's
/// checksum, bit 1 a header's embedded descriptor record's, bit 2 says the
/// payload is a header.
fn seal_snapshot(flags: u8, payload: &mut [u8]) {
    if flags & HEADER != 0 && flags & 2 != 0 && payload.len() > 9 {
        let len = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
        if let Some(end) = usize::try_from(len).ok().and_then(|l| l.checked_add(9)).filter(|&e| e <= payload.len()) {
            seal(&mut payload[9..end]);
        }
    }
    if flags & SEAL != 0 {
        seal(payload);
    }
}

/// What a follower does with a snapshot's bytes from the network: a chunk
/// of data (`snapshot::stage_chunk`), or the header a `MsgSnapshot`
/// carries (`PeerStorage::apply_snapshot`), then the install is finished
/// and the storage must open again.
pub struct SnapshotPayload;

impl Target for SnapshotPayload {
    fn name(&self) -> &'static str {
        "snapshot-payload"
    }

    fn describe(&self) -> &'static str {
        "meridian_storage::snapshot::stage_chunk and PeerStorage::apply_snapshot (snapshot chunk and header decoding) + install + reopen"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut real = vec![SEAL];
        real.extend(snapshot_payload_seed());
        let mut empty = vec![SEAL];
        empty.extend(first_chunk(&MemEngine::new()));
        let mut header = vec![SEAL | 2 | HEADER];
        header.extend(encode_snapshot_header(&descriptor(1, &[1])));
        vec![real, empty, header]
    }

    fn is_protobuf(&self) -> bool {
        false
    }

    fn generate(&self, rng: &mut ChaCha8Rng) -> Option<Vec<u8>> {
        if rng.gen_bool(0.3) {
            // A header: len ‖ descriptor record.
            let desc = descriptor(if rng.gen_bool(0.9) { 1 } else { interesting_u64(rng) }, &[1]).encode();
            let mut fields = (desc.len() as u64).to_le_bytes().to_vec();
            fields.extend_from_slice(&desc);
            let mut input = vec![SEAL | 2 | HEADER];
            input.extend(record(&fields));
            return Some(input);
        }
        // A chunk: n ‖ (key, value)* with an edge-value count and lengths.
        let pairs = rng.gen_range(0..6u64);
        let mut fields = (if rng.gen_bool(0.7) { pairs } else { interesting_u64(rng) }).to_le_bytes().to_vec();
        for _ in 0..pairs {
            for _ in 0..2 {
                let len = rng.gen_range(0..8u64);
                fields.extend_from_slice(&(if rng.gen_bool(0.9) { len } else { interesting_u64(rng) }).to_le_bytes());
                fields.extend((0..len).map(|_| rng.gen::<u8>()));
            }
        }
        let mut input = vec![SEAL];
        input.extend(record(&fields));
        Some(input)
    }

    fn fixup(&self, input: &mut Vec<u8>) {
        // Most mutated payloads keep their seal flags; the run re-seals.
        if let Some(f) = input.first_mut() {
            *f |= SEAL;
        }
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let Some((&flags, payload)) = input.split_first() else { return Ok(Verdict::Rejected) };
        let mut payload = payload.to_vec();
        seal_snapshot(flags, &mut payload);

        let engine = MemEngine::new();
        let mut b = WriteBatch::new();
        PeerStorage::bootstrap(&mut b, &descriptor(1, &[1]), vec![1]);
        engine.write(&b, true).map_err(|e| format!("fixture: {e}"))?;
        let shared: Arc<dyn Engine> = Arc::new(engine.clone());
        let mut ps = PeerStorage::open(shared.clone(), 1).map_err(|e| format!("fixture: {e}"))?;

        let header = if flags & HEADER != 0 {
            payload
        } else {
            let mut batch = WriteBatch::new();
            if stage_chunk(1, &payload, &mut batch).is_err() {
                return Ok(Verdict::Rejected);
            }
            engine.write(&batch, false).map_err(|e| format!("fixture: {e}"))?;
            encode_snapshot_header(&descriptor(1, &[1]))
        };
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        snap.data = header.into();
        let mut batch = WriteBatch::new();
        if ps.apply_snapshot(&snap, &mut batch).is_err() {
            return Ok(Verdict::Rejected);
        }
        engine.write(&batch, true).map_err(|e| format!("fixture: {e}"))?;
        finish_install(&engine, 1).map_err(|e| format!("finishing the install: {e}"))?;
        let reopened = PeerStorage::open(shared, 1).map_err(|e| format!("reopen after snapshot: {e}"))?;
        exercise_storage(&reopened)?;
        PeerStorage::list_ranges(&engine).map_err(|e| format!("reopen after snapshot: list_ranges: {e}"))?;
        Ok(Verdict::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_real_state_opens() {
        let real = real_store_frames();
        assert!(real.iter().filter(|f| f.op == 3).count() >= 3, "the real store has a log: {real:?}");
        assert_eq!(decode_frames(&encode_frames(&real)), real);
        let engine: Arc<dyn Engine> = Arc::new(engine_with(&real));
        let ps = PeerStorage::open(engine, 1).expect("a real store's state opens");
        assert!(ps.truncated_index() > 0, "the log was compacted");
        exercise_storage(&ps).expect("and reads back");
        let store = restart(engine_with(&real)).expect("a real store restarts");
        let st = store.range_status(1).expect("range 1");
        assert_eq!(st.role, meridian_raftstore::raft_types::StateRole::Leader, "{st:?}");
        assert!(st.applied > ps.apply_state().applied_index, "the new leader applied its no-op: {st:?}");
    }

    #[test]
    fn seeds_are_accepted() {
        for seed in StorageRecords::new().seeds().iter().take(5) {
            assert_eq!(StorageRecords::new().run(seed), Ok(Verdict::Accepted));
        }
        for seed in SnapshotPayload.seeds() {
            assert_eq!(SnapshotPayload.run(&seed), Ok(Verdict::Accepted));
        }
    }
}
