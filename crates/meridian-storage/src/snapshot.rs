//! Streamed snapshots: a range's data travels in bounded chunks, is staged
//! on the receiver as it arrives, and becomes visible all at once.
//!
//! ```text
//!  sender                                   receiver
//!  engine snapshot (pinned view)
//!    │ SnapshotReader::next_chunk           chunk ──► stage_chunk ──► cf snap_stage
//!    │   ≤ SNAPSHOT_CHUNK_BYTES each ─────► chunk ──►      …           range ++ 0x01 ++ key
//!    │   last chunk: total keys       ─────► chunk ──► (all arrived, counted)
//!    ▼                                             raft accepts MsgSnapshot; its Ready:
//!  raft's MsgSnapshot (header only) ─────►  PeerStorage::apply_snapshot, in the round's
//!                                           synced batch: the namespace's data deleted,
//!                                           raft/apply state moved on, marker written
//!                                           (range ++ 0x00 → namespace id)
//!                                           then, ≤ INSTALL_STEP_BYTES per poll round:
//!                                           move_staged: snap_stage ──► cf data
//!                                           the last step deletes the marker
//! ```
//!
//! Memory is bounded by the chunk size on both sides, never by the size of
//! the range. A transfer that stops half-way leaves only staged records,
//! which nothing reads and which are cleared when the next transfer for the
//! range starts, when it is abandoned, or at the next start
//! ([`clear_staged`]). Once the marker is written the install is certain:
//! a crash during the move is finished at the next open
//! ([`finish_install`]), from the staged records, which the move deletes only
//! together with writing their data.

use std::sync::Arc;

use crate::codec::{Dec, Enc};
use crate::engine::{Cf, Engine, EngineSnapshot, WriteBatch};
use crate::error::{StorageError, StorageResult};
use crate::keys;
use crate::state::RangeDescriptor;

/// Bytes of keys and values per chunk (a chunk holds at least one pair, so
/// a single larger value makes a larger chunk).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Bytes of staged data one install step moves into place (one engine
/// write): what a poll round spends on an install, so a large snapshot
/// never stalls the other ranges of the node.
pub const INSTALL_STEP_BYTES: usize = 4 << 20;

/// Upper bound on pairs a chunk may claim (a decoder guard; a real chunk
/// holds at most `SNAPSHOT_CHUNK_BYTES / 2` of them).
const MAX_CHUNK_PAIRS: u64 = 1 << 20;

const MARKER_TAG: u8 = 0x00;
const DATA_TAG: u8 = 0x01;

/// The raft snapshot's own data: the descriptor of the range it installs.
/// The range's data follows in chunks, outside raft's message.
pub fn encode_snapshot_header(desc: &RangeDescriptor) -> Vec<u8> {
    Enc::new().bytes(&desc.encode()).finish()
}

/// Decodes what [`encode_snapshot_header`] wrote, for `range_id`.
pub fn decode_snapshot_header(range_id: u64, raw: &[u8]) -> StorageResult<RangeDescriptor> {
    let mut d = Dec::new(raw, range_id, "snapshot header")?;
    let desc = RangeDescriptor::decode(d.bytes()?, range_id)?;
    d.finish()?;
    if desc.range_id != range_id {
        return Err(StorageError::Corrupt {
            range_id,
            what: format!("snapshot for range {} delivered to range {range_id}", desc.range_id),
        });
    }
    Ok(desc)
}

/// One chunk of a snapshot's data, as [`SnapshotReader`] cuts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunkData {
    /// 0, 1, 2, … in stream order.
    pub seq: u64,
    /// Encoded pairs (checksummed): what [`stage_chunk`] takes.
    pub data: Vec<u8>,
    /// The last chunk of the snapshot.
    pub last: bool,
    /// On the last chunk: the number of keys in the whole snapshot.
    pub total_keys: u64,
}

/// Reads a namespace's data out of a pinned engine snapshot, one bounded
/// chunk at a time. It holds one chunk at most; where it stopped is a key,
/// so a sender paced by the network holds no more.
pub struct SnapshotReader {
    view: Arc<dyn EngineSnapshot>,
    end: Vec<u8>,
    /// The next key to read; `None` once the last chunk was handed out.
    next: Option<Vec<u8>>,
    seq: u64,
    keys: u64,
    chunk_bytes: usize,
}

impl SnapshotReader {
    /// A reader of the data of `desc`'s namespace in `view`.
    pub fn new(view: Arc<dyn EngineSnapshot>, desc: &RangeDescriptor) -> Self {
        let (start, end) = keys::range_span(desc.namespace_id);
        SnapshotReader { view, end, next: Some(start), seq: 0, keys: 0, chunk_bytes: SNAPSHOT_CHUNK_BYTES }
    }

    /// Cuts chunks of `bytes` instead of [`SNAPSHOT_CHUNK_BYTES`] (tests, the
    /// simulation), at least 1.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// The next chunk, or `None` after the last one. An empty namespace is
    /// one empty last chunk.
    pub fn next_chunk(&mut self) -> StorageResult<Option<SnapshotChunkData>> {
        let Some(from) = self.next.take() else { return Ok(None) };
        let mut pairs = Enc::new();
        let mut body = Vec::new();
        let (mut n, mut bytes) = (0u64, 0usize);
        let mut resume = None;
        let limit = self.chunk_bytes;
        self.view.scan(Cf::Data, &from, &self.end, &mut |k, v| {
            if n > 0 && bytes >= limit {
                resume = Some(k.to_vec());
                return false;
            }
            let user = &k[8..];
            body.push((user.to_vec(), v.to_vec()));
            bytes += user.len() + v.len();
            n += 1;
            true
        })?;
        pairs.u64(n);
        for (k, v) in &body {
            pairs.bytes(k).bytes(v);
        }
        drop(body);
        self.keys += n;
        let last = resume.is_none();
        self.next = resume;
        let chunk = SnapshotChunkData { seq: self.seq, data: pairs.finish(), last, total_keys: if last { self.keys } else { 0 } };
        self.seq += 1;
        Ok(Some(chunk))
    }
}

fn stage_prefix(range_id: u64, tag: u8) -> Vec<u8> {
    let mut k = range_id.to_be_bytes().to_vec();
    k.push(tag);
    k
}

/// `[start, end)` of the staged data records of `range_id`.
fn staged_span(range_id: u64) -> (Vec<u8>, Vec<u8>) {
    (stage_prefix(range_id, DATA_TAG), stage_prefix(range_id, DATA_TAG + 1))
}

fn marker_key(range_id: u64) -> Vec<u8> {
    stage_prefix(range_id, MARKER_TAG)
}

/// Stages one received chunk of `range_id`'s snapshot into `batch`
/// (staged records only: nothing that serves reads). Returns the number
/// of keys it held. A corrupt chunk is an error and stages nothing.
pub fn stage_chunk(range_id: u64, data: &[u8], batch: &mut WriteBatch) -> StorageResult<u64> {
    let mut d = Dec::new(data, range_id, "snapshot chunk")?;
    let n = d.u64()?;
    if n > MAX_CHUNK_PAIRS {
        return Err(StorageError::Corrupt { range_id, what: format!("snapshot chunk claims {n} keys") });
    }
    let mark = batch.len();
    for _ in 0..n {
        let pair = match d.bytes() {
            Ok(k) => d.bytes().map(|v| (k, v)),
            Err(e) => Err(e),
        };
        let (k, v) = match pair {
            Ok(p) => p,
            Err(e) => {
                batch.truncate(mark);
                return Err(e);
            }
        };
        let mut key = stage_prefix(range_id, DATA_TAG);
        key.extend_from_slice(k);
        batch.put(Cf::SnapStage, key, v.to_vec());
    }
    if let Err(e) = d.finish() {
        batch.truncate(mark);
        return Err(e);
    }
    Ok(n)
}

/// Writes one chunk (as [`SnapshotReader`] cut it) straight into
/// `namespace_id`'s data in `batch`: a backup restored into an engine no
/// replica serves yet. Returns the number of keys it held; a corrupt chunk
/// is an error and writes nothing.
pub fn restore_chunk(namespace_id: u64, data: &[u8], batch: &mut WriteBatch) -> StorageResult<u64> {
    let mut d = Dec::new(data, namespace_id, "backup chunk")?;
    let n = d.u64()?;
    if n > MAX_CHUNK_PAIRS {
        return Err(StorageError::Corrupt { range_id: namespace_id, what: format!("backup chunk claims {n} keys") });
    }
    let mut pairs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = d.bytes()?;
        let v = d.bytes()?;
        pairs.push((k, v));
    }
    d.finish()?;
    for (k, v) in pairs {
        batch.put(Cf::Data, keys::data_key(namespace_id, k), v.to_vec());
    }
    Ok(n)
}

/// Stages deleting every staged record of `range_id` (a transfer that
/// was abandoned or replaced). The install marker is not touched.
pub fn clear_staged(range_id: u64, batch: &mut WriteBatch) {
    let (start, end) = staged_span(range_id);
    batch.delete_range(Cf::SnapStage, start, end);
}

/// Stages the marker saying the staged records of `range_id` are the data
/// of `namespace_id` and must be moved there ([`move_staged`]).
pub(crate) fn put_install_marker(range_id: u64, namespace_id: u64, batch: &mut WriteBatch) {
    batch.put(Cf::SnapStage, marker_key(range_id), namespace_id.to_be_bytes().to_vec());
}

/// The namespace an install of `range_id` in progress moves data into, if
/// one is in progress.
pub fn pending_install(engine: &dyn Engine, range_id: u64) -> StorageResult<Option<u64>> {
    match engine.get(Cf::SnapStage, &marker_key(range_id))? {
        None => Ok(None),
        Some(raw) => match <[u8; 8]>::try_from(raw.as_slice()) {
            Ok(b) => Ok(Some(u64::from_be_bytes(b))),
            Err(_) => Err(StorageError::Corrupt { range_id, what: "snapshot install marker".into() }),
        },
    }
}

/// One install step: moves up to `budget_bytes` of `range_id`'s staged
/// records into `namespace_id`'s data, in one engine write that also
/// deletes them from staging. The step that moves the last one deletes the
/// marker too. Returns true when the install is complete.
///
/// Idempotent from any crash point: a record is either still staged or
/// already in place, never both lost.
pub fn move_staged(engine: &dyn Engine, range_id: u64, namespace_id: u64, budget_bytes: usize) -> StorageResult<bool> {
    let (start, end) = staged_span(range_id);
    let mut batch = WriteBatch::new();
    let mut bytes = 0usize;
    let mut stopped_at = None;
    engine.scan(Cf::SnapStage, &start, &end, &mut |k, v| {
        if bytes >= budget_bytes {
            stopped_at = Some(k.to_vec());
            return false;
        }
        batch.put(Cf::Data, keys::data_key(namespace_id, &k[9..]), v.to_vec());
        bytes += k.len() + v.len();
        true
    })?;
    let done = stopped_at.is_none();
    batch.delete_range(Cf::SnapStage, start, stopped_at.unwrap_or(end));
    if done {
        batch.delete(Cf::SnapStage, marker_key(range_id));
    }
    engine.write(&batch, false)?;
    Ok(done)
}

/// Finishes an install of `range_id` that a crash interrupted (the marker
/// is still there), all at once; does nothing if none is pending. Returns
/// whether one was finished.
pub fn finish_install(engine: &dyn Engine, range_id: u64) -> StorageResult<bool> {
    let Some(namespace_id) = pending_install(engine, range_id)? else { return Ok(false) };
    while !move_staged(engine, range_id, namespace_id, INSTALL_STEP_BYTES)? {}
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemEngine;

    fn engine_with(ns: u64, n: usize, value_len: usize) -> MemEngine {
        let e = MemEngine::new();
        let mut b = WriteBatch::new();
        for i in 0..n {
            b.put(Cf::Data, keys::data_key(ns, format!("k{i:05}").as_bytes()), vec![i as u8; value_len]);
        }
        b.put(Cf::Data, keys::data_key(ns + 1, b"neighbour"), b"x".to_vec());
        e.write(&b, true).unwrap();
        e
    }

    fn desc(range_id: u64, ns: u64) -> RangeDescriptor {
        RangeDescriptor { range_id, namespace_id: ns, ..Default::default() }
    }

    #[test]
    fn chunks_are_bounded_in_order_and_count_every_key() {
        let e = engine_with(7, 100, 100);
        let mut r = SnapshotReader::new(Arc::from(e.snapshot()), &desc(3, 7)).with_chunk_bytes(1_000);
        let mut seen = 0;
        let mut seq = 0;
        while let Some(c) = r.next_chunk().unwrap() {
            assert_eq!(c.seq, seq);
            seq += 1;
            let mut b = WriteBatch::new();
            let n = stage_chunk(3, &c.data, &mut b).unwrap();
            assert!(b.size_bytes() <= 1_000 + 20 * 9 + 106, "chunk over its bound: {}", b.size_bytes());
            seen += n;
            if c.last {
                assert_eq!(c.total_keys, 100);
            }
        }
        assert_eq!(seen, 100);
        assert!(seq >= 10, "100 x 106 bytes in chunks of 1000: {seq} chunks");
        assert!(r.next_chunk().unwrap().is_none(), "nothing after the last chunk");
    }

    #[test]
    fn an_empty_namespace_is_one_empty_last_chunk() {
        let e = MemEngine::new();
        let mut r = SnapshotReader::new(Arc::from(e.snapshot()), &desc(3, 7));
        let c = r.next_chunk().unwrap().unwrap();
        assert!(c.last);
        assert_eq!((c.seq, c.total_keys), (0, 0));
        assert!(r.next_chunk().unwrap().is_none());
    }

    #[test]
    fn a_corrupt_chunk_stages_nothing() {
        let e = engine_with(7, 10, 10);
        let mut r = SnapshotReader::new(Arc::from(e.snapshot()), &desc(3, 7));
        let c = r.next_chunk().unwrap().unwrap();
        for i in 0..c.data.len() {
            let mut bad = c.data.clone();
            bad[i] ^= 0x40;
            let mut b = WriteBatch::new();
            b.put(Cf::Meta, b"before".to_vec(), vec![]);
            assert!(stage_chunk(3, &bad, &mut b).is_err(), "flip at byte {i} not detected");
            assert_eq!(b.len(), 1, "a refused chunk leaves the batch as it was");
        }
    }

    #[test]
    fn the_header_names_the_range_it_is_for() {
        let raw = encode_snapshot_header(&desc(3, 7));
        assert_eq!(decode_snapshot_header(3, &raw).unwrap().namespace_id, 7);
        assert!(decode_snapshot_header(4, &raw).is_err());
        assert!(decode_snapshot_header(3, b"garbage").is_err());
    }

    #[test]
    fn move_staged_in_steps_is_complete_and_deletes_the_marker() {
        let src = engine_with(7, 300, 50);
        let dst = MemEngine::new();
        let mut r = SnapshotReader::new(Arc::from(src.snapshot()), &desc(3, 7)).with_chunk_bytes(2_000);
        while let Some(c) = r.next_chunk().unwrap() {
            let mut b = WriteBatch::new();
            stage_chunk(3, &c.data, &mut b).unwrap();
            dst.write(&b, false).unwrap();
        }
        let mut b = WriteBatch::new();
        put_install_marker(3, 7, &mut b);
        dst.write(&b, true).unwrap();
        let mut steps = 1;
        while !move_staged(&dst, 3, 7, 1_000).unwrap() {
            steps += 1;
        }
        assert!(steps > 10, "{steps} steps of 1000 bytes for 300 x 56");
        assert_eq!(pending_install(&dst, 3).unwrap(), None);
        let (s, e) = keys::range_span(7);
        let mut want = Vec::new();
        src.scan(Cf::Data, &s, &e, &mut |k, v| {
            want.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        let mut got = Vec::new();
        dst.scan(Cf::Data, &s, &e, &mut |k, v| {
            got.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(got, want);
        let mut staged = 0;
        dst.scan(Cf::SnapStage, &[], &[0xff; 9], &mut |_, _| {
            staged += 1;
            true
        })
        .unwrap();
        assert_eq!(staged, 0, "nothing left in staging");
    }
}
