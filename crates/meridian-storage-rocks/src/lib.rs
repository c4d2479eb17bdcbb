//! The production engine: one RocksDB instance, one column family per [`Cf`].
//!
//! A driver crate: it owns files and a thread (the snapshot server), so it
//! opts out of the core crates' determinism lints. The `Engine` trait, the
//! in-memory engine and the conformance suite are in `meridian-storage`.

#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteOptions, DB};

use meridian_storage::{Cf, Engine, EngineSnapshot, WriteBatch, WriteOp};
use meridian_storage::{StorageError, StorageResult};

/// Bound of the block cache one engine (one node) shares over its column
/// families.
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Bound of the write-ahead log files kept on disk.
pub const MAX_TOTAL_WAL_BYTES: u64 = 128 << 20;

/// RocksDB-backed [`Engine`]. Cheap to clone.
#[derive(Clone)]
pub struct RocksEngine {
    db: Arc<DB>,
    syncs: Arc<AtomicU64>,
}

fn io(e: rocksdb::Error) -> StorageError {
    StorageError::Io(e.into_string())
}

impl RocksEngine {
    /// Opens (creating if missing) the engine in `dir`.
    pub fn open(dir: &Path) -> StorageResult<Self> {
        Self::open_with_wal_bound(dir, MAX_TOTAL_WAL_BYTES)
    }

    /// [`RocksEngine::open`] with another bound of the log files on disk.
    pub fn open_with_wal_bound(dir: &Path, max_total_wal_bytes: u64) -> StorageResult<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // A log file is deleted only once every column family with writes
        // in it has flushed them. The state families (raft state, apply
        // state, descriptors) rewrite a few small records and would fill
        // their memtables only after gigabytes of log; this bound flushes
        // them, so the log on disk — and the replay after kill -9 — stays
        // at about this size.
        opts.set_max_total_wal_size(max_total_wal_bytes);
        // Every apply looks up the key's current version, and the keys a
        // workload writes are mostly new: without a filter each miss
        // searches every level's index. A full bloom filter (10 bits per
        // key, ~1 % false positives) answers most misses from memory, and
        // one block cache bounded at BLOCK_CACHE_BYTES for the whole
        // engine keeps index, filter and hot data blocks.
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            if *cf == Cf::RaftLog {
                // Read by scans and served mostly from the entry cache: no
                // filter.
                o.set_write_buffer_size(32 << 20);
            } else {
                o.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(io)?;
        Ok(Self { db: Arc::new(db), syncs: Arc::new(AtomicU64::new(0)) })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    /// A handle that compacts this engine's files from another thread
    /// (etcd's `Defragment`), while the engine keeps serving.
    pub fn compactor(&self) -> Compactor {
        Compactor { db: self.db.clone() }
    }
}

/// Compacts a [`RocksEngine`]'s files: see [`Compactor::compact_all`].
#[derive(Clone)]
pub struct Compactor {
    db: Arc<DB>,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compactor")
    }
}

impl Compactor {
    /// Compacts every column family over its whole key space: tombstones
    /// and overwritten versions are dropped and the files rewritten, so
    /// the space that deletes and compactions freed goes back to the file
    /// system. Blocking (seconds to minutes on a large store): run it off
    /// any runtime. Reads and writes go on meanwhile.
    pub fn compact_all(&self) -> StorageResult<()> {
        for cf in Cf::ALL {
            let handle = self.db.cf_handle(cf.name()).expect("column family created at open");
            self.db.compact_range_cf(handle, None::<&[u8]>, None::<&[u8]>);
        }
        self.db.flush_wal(true).map_err(io)
    }
}

fn scan_iter<'a>(
    iter: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
    end: &[u8],
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> StorageResult<()> {
    for item in iter {
        let (k, v) = item.map_err(io)?;
        if &*k >= end || !f(&k, &v) {
            break;
        }
    }
    Ok(())
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(io)
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        if start >= end {
            return Ok(());
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let iter = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(start, Direction::Forward));
        scan_iter(iter, end, f)
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> StorageResult<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                WriteOp::Put { cf, key, value } => wb.put_cf(self.cf(*cf), key, value),
                WriteOp::Delete { cf, key } => wb.delete_cf(self.cf(*cf), key),
                WriteOp::DeleteRange { cf, start, end } => {
                    if start < end {
                        wb.delete_range_cf(self.cf(*cf), start, end)
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(io)?;
        if sync {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sync(&self) -> StorageResult<()> {
        // FlushWAL(sync): writes are not buffered in RocksDB here
        // (manual_wal_flush is off), so this is SyncWAL: an fsync of the
        // live log files, safe to run while other threads write.
        self.db.flush_wal(true).map_err(io)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn EngineSnapshot> {
        RocksSnapshot::start(self.clone())
    }

    fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// Entries per message when a snapshot thread streams a scan back...
const SCAN_CHUNK: usize = 1024;
/// ... or fewer, once they hold this many bytes: with the channel's two
/// messages in flight, a scan holds at most about three of these however
/// large the values (1,024 values of 256 KiB made a message 256 MiB, and a
/// snapshot stream reading a chunk at a time pinned three of them).
const SCAN_CHUNK_BYTES: usize = 256 << 10;

type Chunk = StorageResult<Vec<(Vec<u8>, Vec<u8>)>>;

enum SnapRequest {
    Get { cf: Cf, key: Vec<u8>, reply: SyncSender<StorageResult<Option<Vec<u8>>>> },
    Scan { cf: Cf, start: Vec<u8>, end: Vec<u8>, reply: SyncSender<Chunk> },
}

/// A RocksDB snapshot owned by a dedicated thread.
///
/// rust-rocksdb's snapshot borrows the `DB`, so it cannot travel with an
/// `Arc<DB>` without `unsafe`. Instead one thread takes the snapshot and
/// answers reads over bounded channels; the handle waits until the snapshot
/// exists, so it reflects every write that returned before `snapshot()`.
/// Dropping the handle ends the thread and releases the snapshot.
struct RocksSnapshot {
    requests: SyncSender<SnapRequest>,
}

impl RocksSnapshot {
    fn start(engine: RocksEngine) -> Box<dyn EngineSnapshot> {
        let (req_tx, req_rx) = sync_channel::<SnapRequest>(1);
        let (ready_tx, ready_rx) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("rocks-snapshot".into())
            .spawn(move || serve_snapshot(engine, req_rx, ready_tx))
            .expect("spawn snapshot thread");
        // If the thread died before taking the snapshot, every read on the
        // handle reports an IO error instead of hanging.
        let _ = ready_rx.recv();
        Box::new(RocksSnapshot { requests: req_tx })
    }
}

fn serve_snapshot(engine: RocksEngine, requests: Receiver<SnapRequest>, ready: SyncSender<()>) {
    let snap = engine.db.snapshot();
    let _ = ready.send(());
    while let Ok(req) = requests.recv() {
        match req {
            SnapRequest::Get { cf, key, reply } => {
                let _ = reply.send(snap.get_cf(engine.cf(cf), &key).map_err(io));
            }
            SnapRequest::Scan { cf, start, end, reply } => {
                let mut ro = ReadOptions::default();
                ro.set_iterate_upper_bound(end.clone());
                let mut chunk = Vec::with_capacity(SCAN_CHUNK);
                let mut bytes = 0;
                let iter = snap.iterator_cf_opt(engine.cf(cf), ro, IteratorMode::From(&start, Direction::Forward));
                let mut receiver_gone = false;
                for item in iter {
                    match item {
                        Ok((k, v)) => {
                            bytes += k.len() + v.len();
                            chunk.push((k.into_vec(), v.into_vec()));
                            if chunk.len() == SCAN_CHUNK || bytes >= SCAN_CHUNK_BYTES {
                                bytes = 0;
                                if reply.send(Ok(std::mem::take(&mut chunk))).is_err() {
                                    receiver_gone = true;
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = reply.send(Err(io(e)));
                            receiver_gone = true;
                            break;
                        }
                    }
                }
                if !receiver_gone && !chunk.is_empty() {
                    let _ = reply.send(Ok(chunk));
                }
            }
        }
    }
}

fn snapshot_gone() -> StorageError {
    StorageError::Io("snapshot thread is gone".into())
}

impl EngineSnapshot for RocksSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        let (tx, rx) = sync_channel(1);
        self.requests.send(SnapRequest::Get { cf, key: key.to_vec(), reply: tx }).map_err(|_| snapshot_gone())?;
        rx.recv().map_err(|_| snapshot_gone())?
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        if start >= end {
            return Ok(());
        }
        let (tx, rx) = sync_channel(2);
        self.requests.send(SnapRequest::Scan { cf, start: start.to_vec(), end: end.to_vec(), reply: tx }).map_err(|_| snapshot_gone())?;
        // The channel closes after the last chunk.
        while let Ok(chunk) = rx.recv() {
            for (k, v) in chunk? {
                if !f(&k, &v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    }

    /// The state column families rewrite one small record per round; their
    /// memtables never fill, and without the bound every log file written
    /// since they last flushed would stay on disk.
    #[test]
    fn log_files_stay_near_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 1 << 20;
        let e = RocksEngine::open_with_wal_bound(dir.path(), bound).unwrap();
        for round in 0..8_000u64 {
            let mut b = WriteBatch::new();
            b.put(Cf::RaftState, b"state".to_vec(), round.to_be_bytes().to_vec());
            for i in 0..4u64 {
                b.put(Cf::RaftLog, (round * 4 + i).to_be_bytes().to_vec(), vec![7; 1024]);
            }
            e.write(&b, false).unwrap();
        }
        // 32 MiB written; flushes run in the background, so the old files
        // go some time after the bound is passed (waited for up to 20 s).
        // A node keeps writing: RocksDB checks the bound on writes.
        for round in 8_000..8_400u64 {
            if wal_bytes(dir.path()) <= 4 * bound {
                break;
            }
            let mut b = WriteBatch::new();
            b.put(Cf::RaftState, b"state".to_vec(), round.to_be_bytes().to_vec());
            e.write(&b, false).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let kept = wal_bytes(dir.path());
        assert!(kept <= 4 * bound, "{kept} bytes of log files kept");
    }
}
