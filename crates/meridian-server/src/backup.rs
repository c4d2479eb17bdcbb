//! Backups: etcd's `Maintenance.Snapshot` (`etcdctl snapshot save FILE`),
//! `meridian snapshot save|status|restore`.
//!
//! A backup holds every namespace's range (not the meta range: a restored
//! cluster is a new cluster, with its own id and node records), each as
//! one replica's data at its applied index — consistent at one revision of
//! its own, which the header names. The member asked reads the ranges it
//! holds a replica of itself and asks a member that holds each other one
//! (`meridian.v1.Internal/RangeBackup`), so any member can be asked.
//!
//! ## Format (version 1)
//!
//! ```text
//!  "MERIDIAN-BACKUP\n"  16 bytes
//!  version              u32 BE (1)
//!  frame*               kind u8 · length u32 BE · body · CRC-32 (IEEE) of kind, length and body, u32 BE
//!
//!  kind 1 HEADER     JSON: format, cluster_id, member, created_unix_ms,
//!                    ranges [{range_id, namespace_id, start, end,
//!                             applied_index, revision, compact_revision}]
//!  kind 2 RECORDS    range id u64 BE · a chunk of the range's records, as
//!                    snapshot chunks are encoded (with their own checksum)
//!  kind 3 RANGE_END  range id u64 BE · number of keys u64 BE
//!  kind 4 END        frames before it u64 BE · CRC-32 of every byte before it u32 BE
//!  padding           zero bytes up to a multiple of 512 bytes
//!  SHA-256           of every byte before it, 32 bytes
//! ```
//!
//! The trailer is etcd's: `etcdctl snapshot save` accepts a stream only if
//! its length is 32 more than a multiple of 512 and takes the last 32
//! bytes for a SHA-256 of the rest.
//!
//! Ranges follow in the header's order, each as RECORDS frames and one
//! RANGE_END; END closes the file and nothing may follow it. A reader
//! refuses a file that does not start with the magic (a foreign format,
//! such as an etcd snapshot), a frame whose checksum or length is wrong,
//! frames out of order, a key count that does not match, and a file that
//! ends before END (truncated) — before anything is restored.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meridian_proto::etcdserverpb as pb;
use meridian_proto::meridian::v1 as api;
use meridian_storage::snapshot::{restore_chunk, SnapshotReader};
use meridian_storage::{Cf, WriteBatch};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tonic::Status;

use crate::backend::{forwarded, Backend};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::routing::{Routing, META_RANGE_ID};

/// The first bytes of every backup.
pub const MAGIC: &[u8; 16] = b"MERIDIAN-BACKUP\n";
/// The format version this build writes and reads.
pub const FORMAT: u32 = 1;
/// Largest frame body accepted (a records chunk is about 1 MiB; one value
/// larger than that makes a larger chunk, up to the request limit).
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Ranges one backup holds at most (its sources are opened together, so
/// every range is read at one moment).
pub const MAX_BACKUP_RANGES: usize = 256;
/// Messages buffered between the reader of a range and the stream out.
const STREAM_BUFFER: usize = 4;
/// Backups one member streams at once (each pins its ranges' engine views
/// on their members until its client has read them).
pub const MAX_CONCURRENT_BACKUPS: usize = 2;
/// Longest wait for the next chunk of a range (a member that stopped
/// answering) before the backup fails.
const CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// HTTP/2 flow-control window of each remote range's stream: what a range
/// waiting its turn may have in flight (the connection's window is large
/// enough for every range at once, so waiting ranges never stall the
/// one being read).
const REMOTE_STREAM_WINDOW: u32 = 256 << 10;

fn backups_in_flight() -> Arc<tokio::sync::Semaphore> {
    static SEM: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SEM.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_BACKUPS))).clone()
}

const KIND_HEADER: u8 = 1;
const KIND_RECORDS: u8 = 2;
const KIND_RANGE_END: u8 = 3;
const KIND_END: u8 = 4;

/// What a backup holds, written first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    pub format: u32,
    /// The cluster backed up (restored clusters get a new one).
    pub cluster_id: u64,
    /// The member that wrote the backup.
    pub member: u64,
    pub created_unix_ms: i64,
    pub ranges: Vec<RangeSection>,
}

/// One range of a backup: which keys, and the revision its data is at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSection {
    pub range_id: u64,
    pub namespace_id: u64,
    /// The namespace's key span `[start, end)` (empty `end`: unbounded).
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// The raft index the replica had applied.
    pub applied_index: u64,
    /// The range's revision at that index.
    pub revision: i64,
    pub compact_revision: i64,
}

impl RangeSection {
    /// The namespace as a user writes it (`/payments/`; the root range is
    /// `(root)`).
    pub fn namespace(&self) -> String {
        if self.start.is_empty() {
            "(root)".into()
        } else {
            String::from_utf8_lossy(&self.start).into_owned()
        }
    }
}

#[derive(Debug, Error)]
pub enum BackupError {
    #[error(
        "not a Meridian backup (it does not start with {:?}); etcd snapshots and other formats cannot be restored",
        String::from_utf8_lossy(MAGIC)
    )]
    Foreign,
    #[error("backup format {0} is not supported (this build reads format {FORMAT})")]
    Version(u32),
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Restore(String),
}

impl From<std::io::Error> for BackupError {
    fn from(e: std::io::Error) -> Self {
        BackupError::Io(e.to_string())
    }
}

/// Writes frames, keeping the running checksums the end carries.
pub struct FrameWriter {
    crc: crc32fast::Hasher,
    sha: ring::digest::Context,
    bytes: u64,
    frames: u64,
}

/// Zero bytes after `total` up to a multiple of 512.
fn padding_after(total: u64) -> usize {
    ((512 - total % 512) % 512) as usize
}

impl FrameWriter {
    /// A writer and the bytes every backup starts with.
    pub fn start() -> (FrameWriter, Vec<u8>) {
        let mut w =
            FrameWriter { crc: crc32fast::Hasher::new(), sha: ring::digest::Context::new(&ring::digest::SHA256), bytes: 0, frames: 0 };
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT.to_be_bytes());
        w.crc.update(&out);
        w.sha.update(&out);
        w.bytes += out.len() as u64;
        (w, out)
    }

    fn frame(&mut self, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 9);
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        self.crc.update(&out);
        self.sha.update(&out);
        self.bytes += out.len() as u64;
        self.frames += 1;
        out
    }

    pub fn header(&mut self, h: &BackupHeader) -> Vec<u8> {
        self.frame(KIND_HEADER, &serde_json::to_vec(h).expect("a header serializes"))
    }

    pub fn records(&mut self, range_id: u64, chunk: &[u8]) -> Vec<u8> {
        let mut body = range_id.to_be_bytes().to_vec();
        body.extend_from_slice(chunk);
        self.frame(KIND_RECORDS, &body)
    }

    pub fn range_end(&mut self, range_id: u64, keys: u64) -> Vec<u8> {
        let mut body = range_id.to_be_bytes().to_vec();
        body.extend_from_slice(&keys.to_be_bytes());
        self.frame(KIND_RANGE_END, &body)
    }

    /// The END frame, the padding and the SHA-256 trailer.
    pub fn end(&mut self) -> Vec<u8> {
        let mut body = self.frames.to_be_bytes().to_vec();
        body.extend_from_slice(&self.crc.clone().finalize().to_be_bytes());
        let mut out = self.frame(KIND_END, &body);
        let pad = vec![0u8; padding_after(self.bytes)];
        self.sha.update(&pad);
        out.extend_from_slice(&pad);
        out.extend_from_slice(self.sha.clone().finish().as_ref());
        out
    }
}

/// What follows the header, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A chunk of the current range's records.
    Records { range_id: u64, chunk: Vec<u8> },
    /// The current range is complete with `keys` keys.
    RangeEnd { range_id: u64, keys: u64 },
}

/// Reads and checks a backup frame by frame (memory: one frame).
pub struct BackupReader<R: Read> {
    r: R,
    crc: crc32fast::Hasher,
    sha: ring::digest::Context,
    bytes: u64,
    frames: u64,
    header: BackupHeader,
    /// Index in `header.ranges` of the range whose frames come now.
    at: usize,
    /// Keys counted in the current range's chunks.
    keys: u64,
    done: bool,
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Truncated(format!("it ends inside {what}")),
        _ => BackupError::Io(e.to_string()),
    })
}

impl<R: Read> BackupReader<R> {
    /// Checks the magic, the version and the header.
    pub fn open(mut r: R) -> Result<Self, BackupError> {
        let mut start = [0u8; 20];
        let mut got = 0;
        while got < start.len() {
            match r.read(&mut start[got..])? {
                0 => break,
                n => got += n,
            }
        }
        if got < MAGIC.len() || &start[..MAGIC.len()] != MAGIC {
            return Err(BackupError::Foreign);
        }
        if got < start.len() {
            return Err(BackupError::Truncated("it ends inside the version".into()));
        }
        let version = u32::from_be_bytes(start[16..20].try_into().expect("4 bytes"));
        if version != FORMAT {
            return Err(BackupError::Version(version));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&start);
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        sha.update(&start);
        let mut rd =
            BackupReader { r, crc, sha, bytes: start.len() as u64, frames: 0, header: placeholder_header(), at: 0, keys: 0, done: false };
        let (kind, body) = rd.frame()?.ok_or_else(|| BackupError::Truncated("it ends before its header".into()))?;
        if kind != KIND_HEADER {
            return Err(BackupError::Corrupt(format!("the first frame is of kind {kind}, not the header")));
        }
        let header: BackupHeader = serde_json::from_slice(&body).map_err(|e| BackupError::Corrupt(format!("header: {e}")))?;
        if header.format != FORMAT {
            return Err(BackupError::Version(header.format));
        }
        if header.ranges.len() > MAX_BACKUP_RANGES {
            return Err(BackupError::Corrupt(format!("the header lists {} ranges (at most {MAX_BACKUP_RANGES})", header.ranges.len())));
        }
        let mut ids: Vec<u64> = header.ranges.iter().map(|s| s.range_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) || ids.contains(&META_RANGE_ID) {
            return Err(BackupError::Corrupt("the header lists a range twice, or the meta range".into()));
        }
        rd.header = header;
        Ok(rd)
    }

    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The next frame: `None` at a clean end of input.
    fn frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, BackupError> {
        let mut head = [0u8; 5];
        let n = self.r.read(&mut head[..1])?;
        if n == 0 {
            return Ok(None);
        }
        read_exact_or(&mut self.r, &mut head[1..], "a frame header")?;
        let (kind, len) = (head[0], u32::from_be_bytes(head[1..5].try_into().expect("4 bytes")) as usize);
        if len > MAX_FRAME_BYTES {
            return Err(BackupError::Corrupt(format!("a frame of {len} bytes (at most {MAX_FRAME_BYTES})")));
        }
        let mut body = vec![0u8; len];
        read_exact_or(&mut self.r, &mut body, "a frame")?;
        let mut crc = [0u8; 4];
        read_exact_or(&mut self.r, &mut crc, "a frame checksum")?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&body);
        if h.finalize() != u32::from_be_bytes(crc) {
            return Err(BackupError::Corrupt(format!("frame {} (kind {kind}, {len} bytes) fails its checksum", self.frames + 1)));
        }
        if kind == KIND_END {
            // END's checksum covers every byte before END itself.
            let whole = self.crc.clone().finalize();
            if body.len() != 12 {
                return Err(BackupError::Corrupt("the end frame".into()));
            }
            let frames = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
            let crc = u32::from_be_bytes(body[8..].try_into().expect("4 bytes"));
            if frames != self.frames || crc != whole {
                return Err(BackupError::Corrupt(format!(
                    "the end frame counts {frames} frames with checksum {crc:#010x}; the file has {} with {whole:#010x}",
                    self.frames
                )));
            }
        }
        for part in [&head[..], &body[..], &crc[..]] {
            self.crc.update(part);
            self.sha.update(part);
        }
        self.bytes += (head.len() + body.len() + crc.len()) as u64;
        self.frames += 1;
        Ok(Some((kind, body)))
    }

    /// The next item after the header; `None` once END was read (and
    /// nothing follows it).
    pub fn next_item(&mut self) -> Result<Option<Item>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let (kind, body) = self.frame()?.ok_or_else(|| {
            let where_ = self.header.ranges.get(self.at).map_or("before its end frame".to_string(), |s| format!("in range {}", s.range_id));
            BackupError::Truncated(format!("it ends {where_}"))
        })?;
        let current = self.header.ranges.get(self.at).map(|s| s.range_id);
        let id_of = |body: &[u8]| -> Result<u64, BackupError> {
            body.get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| BackupError::Corrupt("a short frame".into()))
        };
        match kind {
            KIND_RECORDS => {
                let range_id = id_of(&body)?;
                if Some(range_id) != current {
                    return Err(BackupError::Corrupt(format!("records of range {range_id} where range {current:?} was expected")));
                }
                let chunk = body[8..].to_vec();
                let mut scratch = WriteBatch::new();
                self.keys += restore_chunk(0, &chunk, &mut scratch).map_err(|e| BackupError::Corrupt(format!("range {range_id}: {e}")))?;
                Ok(Some(Item::Records { range_id, chunk }))
            }
            KIND_RANGE_END => {
                let range_id = id_of(&body)?;
                let keys = body.get(8..16).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                if Some(range_id) != current || body.len() != 16 {
                    return Err(BackupError::Corrupt(format!("the end of range {range_id} where range {current:?} was expected")));
                }
                let keys = keys.expect("checked");
                if keys != self.keys {
                    return Err(BackupError::Corrupt(format!(
                        "range {range_id} ends claiming {keys} keys; its records hold {}",
                        self.keys
                    )));
                }
                self.at += 1;
                self.keys = 0;
                Ok(Some(Item::RangeEnd { range_id, keys }))
            }
            KIND_END => {
                if let Some(id) = current {
                    return Err(BackupError::Corrupt(format!("the backup ends before range {id}")));
                }
                self.check_trailer()?;
                self.done = true;
                Ok(None)
            }
            other => Err(BackupError::Corrupt(format!("a frame of unknown kind {other}"))),
        }
    }
}

impl<R: Read> BackupReader<R> {
    /// After END: the zero padding and the SHA-256 of everything before
    /// it, and nothing more.
    fn check_trailer(&mut self) -> Result<(), BackupError> {
        let want = padding_after(self.bytes) + 32;
        let mut rest = Vec::with_capacity(want);
        (&mut self.r).take(want as u64 + 1).read_to_end(&mut rest)?;
        if rest.len() < want {
            return Err(BackupError::Truncated("it ends inside its SHA-256 trailer".into()));
        }
        if rest.len() > want {
            return Err(BackupError::Corrupt("bytes follow the SHA-256 trailer".into()));
        }
        let (pad, sum) = rest.split_at(want - 32);
        if pad.iter().any(|b| *b != 0) {
            return Err(BackupError::Corrupt("the padding before the SHA-256 trailer is not zero".into()));
        }
        self.sha.update(pad);
        if self.sha.clone().finish().as_ref() != sum {
            return Err(BackupError::Corrupt("the SHA-256 trailer does not match the file".into()));
        }
        Ok(())
    }
}

fn placeholder_header() -> BackupHeader {
    BackupHeader { format: FORMAT, cluster_id: 0, member: 0, created_unix_ms: 0, ranges: Vec::new() }
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: BackupHeader,
    /// Keys per range, in header order.
    pub keys: Vec<u64>,
    pub bytes: u64,
}

/// Reads a whole backup and checks every frame.
pub fn verify(path: &Path) -> Result<Verified, BackupError> {
    let file = std::fs::File::open(path).map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))?;
    let bytes = file.metadata()?.len();
    let mut rd = BackupReader::open(std::io::BufReader::with_capacity(1 << 20, file))?;
    let mut keys = Vec::new();
    while let Some(item) = rd.next_item()? {
        if let Item::RangeEnd { keys: n, .. } = item {
            keys.push(n);
        }
    }
    Ok(Verified { header: rd.header().clone(), keys, bytes })
}

/// What [`restore`] wrote.
#[derive(Debug, Clone)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub ranges: usize,
    pub keys: u64,
}

/// Writes a data directory for the member `cfg` describes from the backup
/// at `file`: the ranges of `cfg`'s namespaces, bootstrapped as a first
/// start would, filled with the backup's data. Every member of the new
/// cluster restores the same file with its own config. Refuses, writing
/// nothing: a file that fails [`verify`], a data directory that already
/// holds a member's data (its config and certificates may be there), and a
/// backup holding a namespace `cfg` does not declare. The engine directory
/// (`<data_dir>/raft`) appears whole or not at all (written beside it,
/// then renamed).
pub fn restore(file: &Path, cfg: &ServerConfig, progress: &mut dyn FnMut(&str)) -> Result<Restored, BackupError> {
    cfg.validate().map_err(|e| BackupError::Restore(e.to_string()))?;
    progress(&format!("checking {}", file.display()));
    let verified = verify(file)?;
    // The engine's directory, as `meridian server` opens it.
    let target = cfg.data_dir.join("raft");
    let holds_data = std::fs::read_dir(&target).map(|mut d| d.next().is_some()).unwrap_or(false);
    if holds_data || cfg.data_dir.join("identity.toml").exists() {
        return Err(BackupError::Restore(format!(
            "{} already holds a member's data: restore into a new data directory",
            cfg.data_dir.display()
        )));
    }
    let routing = Routing::new(&cfg.namespaces).map_err(|e| BackupError::Restore(e.to_string()))?;
    let ids: Vec<u64> = cfg.initial_cluster.iter().map(|m| m.id).collect();
    let ranges = routing.initial_ranges(&ids);
    let mut namespace_of = std::collections::HashMap::new();
    for s in &verified.header.ranges {
        let Some(d) = ranges.iter().find(|d| d.range_id != META_RANGE_ID && d.start == s.start && d.end == s.end) else {
            return Err(BackupError::Restore(format!(
                "the backup holds namespace {} (range {}), which the config does not declare: add it to `namespaces`",
                s.namespace(),
                s.range_id
            )));
        };
        // Lease ids carry their namespace id, and every member must give a
        // range the same data: the layout must be the backed-up one.
        if d.range_id != s.range_id || d.namespace_id != s.namespace_id {
            return Err(BackupError::Restore(format!(
                "namespace {} was range {} (namespace id {}) in the backed-up cluster but would be range {} (namespace id {}) with this config: declare exactly the namespaces the backup lists (`meridian snapshot status`)",
                s.namespace(),
                s.range_id,
                s.namespace_id,
                d.range_id,
                d.namespace_id
            )));
        }
        namespace_of.insert(s.range_id, d.namespace_id);
    }
    let staging = cfg.data_dir.join("raft.restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| BackupError::Io(format!("removing {}: {e}", staging.display())))?;
    }
    let total: u64 = verified.keys.iter().sum();
    let mut written = 0u64;
    let mut fill = |engine: &dyn meridian_storage::Engine| -> Result<(), meridian_node::NodeError> {
        let f = std::fs::File::open(file)?;
        let mut rd = BackupReader::open(std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| meridian_node::NodeError::Io(std::io::Error::other(e.to_string())))?;
        loop {
            let item = rd.next_item().map_err(|e| meridian_node::NodeError::Io(std::io::Error::other(e.to_string())))?;
            match item {
                None => return Ok(()),
                Some(Item::Records { range_id, chunk }) => {
                    let mut batch = WriteBatch::new();
                    written += restore_chunk(namespace_of[&range_id], &chunk, &mut batch)?;
                    engine.write(&batch, false)?;
                }
                Some(Item::RangeEnd { range_id, keys }) => {
                    progress(&format!("range {range_id}: {keys} keys ({written}/{total})"));
                }
            }
        }
    };
    meridian_node::create_store(&staging, cfg.node_id, &ranges, &mut fill)
        .map_err(|e| BackupError::Restore(format!("writing {}: {e}", staging.display())))?;
    if target.exists() {
        std::fs::remove_dir(&target).map_err(|e| BackupError::Io(format!("{}: {e}", target.display())))?;
    }
    std::fs::rename(&staging, &target)
        .map_err(|e| BackupError::Io(format!("renaming {} to {}: {e}", staging.display(), target.display())))?;
    if let Ok(d) = std::fs::File::open(&cfg.data_dir) {
        let _ = d.sync_all();
    }
    Ok(Restored { data_dir: cfg.data_dir.clone(), ranges: verified.header.ranges.len(), keys: written })
}

/// The section of a range pinned in `view`: its span and the revision its
/// data is at.
pub fn section_of(view: &meridian_raftstore::RangeView) -> Result<RangeSection, ApiError> {
    let ns = view.desc.namespace_id;
    let raw = view
        .view
        .get(Cf::Data, &meridian_storage::keys::data_key(ns, meridian_kv::keys::META))
        .map_err(|e| ApiError::Storage(e.to_string()))?;
    let meta = match raw {
        Some(raw) => {
            meridian_kv::Meta::decode(raw.as_slice()).map_err(|e| ApiError::Storage(format!("range {}: meta: {e}", view.desc.range_id)))?
        }
        None => meridian_kv::Meta { revision: 1, ..Default::default() },
    };
    Ok(RangeSection {
        range_id: view.desc.range_id,
        namespace_id: ns,
        start: view.desc.start.clone(),
        end: view.desc.end.clone(),
        applied_index: view.applied_index,
        revision: meta.revision,
        compact_revision: meta.compact_revision,
    })
}

/// One chunk of a range being read: (records, last, total keys on the
/// last).
type ChunkResult = Result<(Vec<u8>, bool, u64), ApiError>;

/// Streams the chunks of a pinned range into `tx`, reading off the async
/// threads.
async fn read_range(view: meridian_raftstore::RangeView, tx: mpsc::Sender<ChunkResult>) {
    let mut reader = SnapshotReader::new(view.view.clone(), &view.desc);
    loop {
        let next = tokio::task::spawn_blocking(move || {
            let c = reader.next_chunk();
            (reader, c)
        })
        .await;
        let (r, chunk) = match next {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(ApiError::Internal(format!("backup reader: {e}")))).await;
                return;
            }
        };
        reader = r;
        match chunk {
            Ok(Some(c)) => {
                let last = c.last;
                if tx.send(Ok((c.data, c.last, c.total_keys))).await.is_err() || last {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(ApiError::Storage(e.to_string()))).await;
                return;
            }
        }
    }
}

/// `meridian.v1.Internal/RangeBackup` on the member holding the range.
pub async fn range_backup(backend: &Backend, range_id: u64) -> Result<mpsc::Receiver<Result<api::RangeBackupChunk, Status>>, ApiError> {
    let view = backend.raft.range_view(range_id).await?;
    let header = serde_json::to_vec(&section_of(&view)?).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        if tx.send(Ok(api::RangeBackupChunk { header, ..Default::default() })).await.is_err() {
            return;
        }
        let (ctx, mut crx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(read_range(view, ctx));
        while let Some(c) = crx.recv().await {
            let msg = c
                .map(|(records, last, total_keys)| api::RangeBackupChunk { header: Vec::new(), records, total_keys, last })
                .map_err(Status::from);
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Where one range of a backup comes from.
enum Source {
    Local(meridian_raftstore::RangeView),
    Remote(Box<tonic::Streaming<api::RangeBackupChunk>>),
}

/// A channel to `node` for one backup's remote range streams: its own
/// connection, whose window holds every range at once (see
/// [`REMOTE_STREAM_WINDOW`]), so ranges waiting their turn neither stall
/// the one being read nor the member's other traffic.
fn backup_channel(backend: &Backend, node: u64) -> Result<tonic::transport::Channel, ApiError> {
    let m = backend.node(node).ok_or(ApiError::NoLeader { range_id: 0 })?;
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", m.client_addr))
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .initial_stream_window_size(REMOTE_STREAM_WINDOW)
        .initial_connection_window_size(REMOTE_STREAM_WINDOW.saturating_mul(MAX_BACKUP_RANGES as u32 + 1))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    Ok(ep.connect_lazy())
}

/// Opens `range_id` for a backup from the freshest replica that answers:
/// the range's leader (here or on its member), then this member's replica,
/// then the other members holding one.
async fn open_range(
    backend: &Backend,
    range_id: u64,
    holders: &[u64],
    channels: &mut std::collections::HashMap<u64, tonic::transport::Channel>,
) -> Result<(RangeSection, Source), ApiError> {
    let me = backend.cfg.node_id;
    let brief = backend.brief(range_id).await;
    let mut order: Vec<u64> = Vec::new();
    match brief {
        Some(b) if b.leading => order.push(me),
        Some(b) if b.leader != 0 => order.push(b.leader),
        _ => {}
    }
    if brief.is_some() || holders.is_empty() {
        order.push(me);
    }
    order.extend(backend.live_first(holders));
    let mut seen = std::collections::HashSet::new();
    // A witness keeps no data: never a backup's source.
    order.retain(|n| seen.insert(*n) && !backend.is_witness(*n));
    let mut last = ApiError::NoLeader { range_id };
    for node in order {
        let attempt = async {
            if node == me {
                let view = backend.raft.range_view(range_id).await?;
                return Ok((section_of(&view)?, Source::Local(view)));
            }
            let ch = match channels.get(&node) {
                Some(ch) => ch.clone(),
                None => {
                    let ch = backup_channel(backend, node)?;
                    channels.insert(node, ch.clone());
                    ch
                }
            };
            let mut client = api::internal_client::InternalClient::new(ch).max_decoding_message_size(MAX_FRAME_BYTES);
            let mut stream = client
                .range_backup(forwarded(api::RangeBackupRequest { range_id }))
                .await
                .map_err(|s| ApiError::from_status(&s))?
                .into_inner();
            let first = tokio::time::timeout(CHUNK_TIMEOUT, stream.message())
                .await
                .map_err(|_| ApiError::Timeout)?
                .map_err(|s| ApiError::from_status(&s))?
                .ok_or(ApiError::Timeout)?;
            let section: RangeSection =
                serde_json::from_slice(&first.header).map_err(|e| ApiError::Internal(format!("range header from node {node}: {e}")))?;
            Ok::<_, ApiError>((section, Source::Remote(Box::new(stream))))
        };
        match attempt.await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(range = range_id, node, "backup: reading the range from node {node}: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

/// etcd's `Maintenance.Snapshot`: the backup as a stream of
/// `SnapshotResponse` blobs. Every range is opened (pinned) before the
/// header is written; the stream then reads them one after another.
pub async fn snapshot(backend: Arc<Backend>) -> Result<mpsc::Receiver<Result<pb::SnapshotResponse, Status>>, ApiError> {
    let mut ranges: Vec<(u64, Vec<u64>)> = backend.catalog_replicas().into_iter().filter(|(id, _)| *id != META_RANGE_ID).collect();
    if ranges.is_empty() {
        ranges = backend
            .raft
            .status()
            .await
            .into_iter()
            .filter(|s| !s.dormant && s.range_id != META_RANGE_ID)
            .map(|s| (s.range_id, vec![]))
            .collect();
    }
    if ranges.len() > MAX_BACKUP_RANGES {
        return Err(ApiError::Invalid(format!("a backup holds at most {MAX_BACKUP_RANGES} ranges; the cluster has {}", ranges.len())));
    }
    let permit = backups_in_flight().try_acquire_owned().map_err(|_| ApiError::TooBusy)?;
    let mut channels = std::collections::HashMap::new();
    let mut sources = Vec::with_capacity(ranges.len());
    for (range_id, holders) in &ranges {
        sources.push(open_range(&backend, *range_id, holders, &mut channels).await?);
    }
    let header = BackupHeader {
        format: FORMAT,
        cluster_id: backend.cluster_id(),
        member: backend.cfg.node_id,
        created_unix_ms: crate::backend::wall_ms(),
        ranges: sources.iter().map(|(s, _)| s.clone()).collect(),
    };
    tracing::info!(ranges = header.ranges.len(), "backup started");
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let blob = |blob: Vec<u8>, more: bool| pb::SnapshotResponse { header: None, remaining_bytes: u64::from(more), blob };
    tokio::spawn(async move {
        let _permit = permit;
        let (mut w, mut first) = FrameWriter::start();
        first.extend(w.header(&header));
        if tx.send(Ok(blob(first, true))).await.is_err() {
            return;
        }
        for (section, source) in sources {
            let range_id = section.range_id;
            let (ctx, mut crx) = mpsc::channel(STREAM_BUFFER);
            match source {
                Source::Local(view) => {
                    tokio::spawn(read_range(view, ctx));
                }
                Source::Remote(mut stream) => {
                    tokio::spawn(async move {
                        loop {
                            let m = match stream.message().await {
                                Ok(Some(m)) => Ok((m.records, m.last, m.total_keys)),
                                Ok(None) => Err(ApiError::Internal(format!("range {range_id}'s backup stream ended early"))),
                                Err(s) => Err(ApiError::from_status(&s)),
                            };
                            let stop = !matches!(m, Ok((_, false, _)));
                            if ctx.send(m).await.is_err() || stop {
                                return;
                            }
                        }
                    });
                }
            }
            loop {
                // A client that went away, or a range that stopped
                // answering, ends the backup (and lets go of every view).
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    n = tokio::time::timeout(CHUNK_TIMEOUT, crx.recv()) => n,
                };
                let Ok(next) = next else {
                    let _ = tx.send(Err(ApiError::Timeout.into())).await;
                    return;
                };
                match next {
                    Some(Ok((records, last, total))) => {
                        let mut out = w.records(range_id, &records);
                        if last {
                            out.extend(w.range_end(range_id, total));
                        }
                        if tx.send(Ok(blob(out, true))).await.is_err() {
                            return;
                        }
                        if last {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(range = range_id, "backup failed: {e}");
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    None => {
                        let _ = tx.send(Err(ApiError::Internal(format!("range {range_id}'s reader stopped")).into())).await;
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Ok(blob(w.end(), false))).await;
        tracing::info!("backup streamed");
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let engine = meridian_storage::MemEngine::new();
        let mut b = WriteBatch::new();
        for (k, v) in pairs {
            b.put(Cf::Data, meridian_storage::keys::data_key(9, k), v.to_vec());
        }
        meridian_storage::Engine::write(&engine, &b, true).unwrap();
        let view: Arc<dyn meridian_storage::EngineSnapshot> = Arc::from(meridian_storage::Engine::snapshot(&engine));
        let desc = meridian_storage::RangeDescriptor { range_id: 3, namespace_id: 9, ..Default::default() };
        SnapshotReader::new(view, &desc).next_chunk().unwrap().unwrap().data
    }

    fn section(range_id: u64) -> RangeSection {
        RangeSection {
            range_id,
            namespace_id: range_id,
            start: format!("/ns{range_id}/").into_bytes(),
            end: format!("/ns{range_id}0").into_bytes(),
            applied_index: 10,
            revision: 7,
            compact_revision: 0,
        }
    }

    fn sample() -> Vec<u8> {
        let header = BackupHeader { format: FORMAT, cluster_id: 5, member: 1, created_unix_ms: 1, ranges: vec![section(2), section(3)] };
        let (mut w, mut out) = FrameWriter::start();
        out.extend(w.header(&header));
        out.extend(w.records(2, &chunk(&[(b"a", b"1"), (b"b", b"2")])));
        out.extend(w.range_end(2, 2));
        out.extend(w.records(3, &chunk(&[])));
        out.extend(w.range_end(3, 0));
        out.extend(w.end());
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Item>, BackupError> {
        let mut rd = BackupReader::open(bytes)?;
        let mut items = Vec::new();
        while let Some(i) = rd.next_item()? {
            items.push(i);
        }
        Ok(items)
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let bytes = sample();
        let rd = BackupReader::open(bytes.as_slice()).unwrap();
        assert_eq!(rd.header().ranges.len(), 2);
        let items = read_all(&bytes).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[1], Item::RangeEnd { range_id: 2, keys: 2 });
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let r = read_all(&bytes[..cut]);
            assert!(matches!(r, Err(BackupError::Truncated(_) | BackupError::Foreign)), "cut at {cut}: {r:?}");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(read_all(&bad).is_err(), "flipped byte {at} went unnoticed");
        }
    }

    #[test]
    fn foreign_files_and_trailing_bytes_are_refused() {
        assert!(matches!(
            read_all(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00bolt"),
            Err(BackupError::Foreign)
        ));
        assert!(matches!(read_all(b""), Err(BackupError::Foreign)));
        let mut v2 = sample();
        v2[19] = 2;
        assert!(matches!(read_all(&v2), Err(BackupError::Version(2))));
        let mut extra = sample();
        extra.push(0);
        assert!(matches!(read_all(&extra), Err(BackupError::Corrupt(_))));
    }

    #[test]
    fn frames_out_of_order_or_miscounted_are_refused() {
        let header = BackupHeader { format: FORMAT, cluster_id: 5, member: 1, created_unix_ms: 1, ranges: vec![section(2), section(3)] };
        // Range 3's records where range 2's are due.
        let (mut w, mut out) = FrameWriter::start();
        out.extend(w.header(&header));
        out.extend(w.records(3, &chunk(&[(b"a", b"1")])));
        assert!(matches!(read_all(&out), Err(BackupError::Corrupt(_))));
        // A key count that does not match the records.
        let (mut w, mut out) = FrameWriter::start();
        out.extend(w.header(&header));
        out.extend(w.records(2, &chunk(&[(b"a", b"1")])));
        out.extend(w.range_end(2, 5));
        assert!(matches!(read_all(&out), Err(BackupError::Corrupt(_))));
        // An end before every range.
        let (mut w, mut out) = FrameWriter::start();
        out.extend(w.header(&header));
        out.extend(w.records(2, &chunk(&[])));
        out.extend(w.range_end(2, 0));
        out.extend(w.end());
        assert!(matches!(read_all(&out), Err(BackupError::Corrupt(_))));
    }
}
