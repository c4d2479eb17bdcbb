use crate::error::StorageResult;

/// Column families. Each holds records of one kind; every key starts with
/// the big-endian range id (see [`crate::keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Raft log entries: `range_id ++ index` → checksummed `Entry`.
    RaftLog,
    /// Raft local state: hard state, conf state, truncated index/term.
    RaftState,
    /// Apply state: applied index and term.
    ApplyState,
    /// Range descriptors.
    Meta,
    /// State-machine data: `namespace_id ++ record key` → value.
    Data,
    /// A streamed snapshot on its way in (see [`crate::snapshot`]):
    /// `range_id ++ 0x01 ++ record key` for received data, and
    /// `range_id ++ 0x00`, the install marker, while an accepted snapshot
    /// is moved into [`Cf::Data`].
    SnapStage,
}

impl Cf {
    /// Every column family, in declaration order: the ones an engine
    /// creates or opens.
    pub const ALL: [Cf; 6] = [Cf::RaftLog, Cf::RaftState, Cf::ApplyState, Cf::Meta, Cf::Data, Cf::SnapStage];

    /// The column family's name in RocksDB. Part of the on-disk format:
    /// an existing database is opened by these names.
    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::ApplyState => "apply_state",
            Cf::Meta => "meta",
            Cf::Data => "data",
            Cf::SnapStage => "snap_stage",
        }
    }

    pub(crate) fn idx(self) -> usize {
        self as usize
    }
}

/// One write in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets `key` to `value`, replacing any earlier value.
    Put {
        /// The column family written.
        cf: Cf,
        /// The key set.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Removes `key`; a missing key is no error.
    Delete {
        /// The column family written.
        cf: Cf,
        /// The key removed.
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        /// The column family written.
        cf: Cf,
        /// First key deleted (inclusive).
        start: Vec<u8>,
        /// End of the span (exclusive); at or below `start` deletes nothing.
        end: Vec<u8>,
    },
}

/// An ordered list of writes applied atomically by [`Engine::write`].
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    size_bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a [`WriteOp::Put`] of `key` → `value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.size_bytes += key.len() + value.len();
        self.ops.push(WriteOp::Put { cf, key, value });
    }

    /// Appends a [`WriteOp::Delete`] of `key` in `cf`.
    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.size_bytes += key.len();
        self.ops.push(WriteOp::Delete { cf, key });
    }

    /// Appends a [`WriteOp::DeleteRange`] of `[start, end)` in `cf`.
    pub fn delete_range(&mut self, cf: Cf, start: Vec<u8>, end: Vec<u8>) {
        self.size_bytes += start.len() + end.len();
        self.ops.push(WriteOp::DeleteRange { cf, start, end });
    }

    /// Whether the batch holds no op.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of ops (not bytes: see [`WriteBatch::size_bytes`]).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Approximate payload size in bytes (keys and values, no per-op
    /// overhead), for batch-size limits.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// The ops in the order they apply: a later op on a key wins.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Drops every op after the first `len` (undoing a failed command).
    pub fn truncate(&mut self, len: usize) {
        self.ops.truncate(len);
        self.size_bytes = self
            .ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key, .. } => key.len(),
                WriteOp::DeleteRange { start, end, .. } => start.len() + end.len(),
            })
            .sum();
    }

    /// Moves every op of `other` to the end of this batch, after its own.
    pub fn append(&mut self, other: WriteBatch) {
        self.size_bytes += other.size_bytes;
        self.ops.extend(other.ops);
    }
}

/// A consistent, read-only view of the engine at one point in time.
pub trait EngineSnapshot: Send + Sync {
    /// The value of `key` in `cf` as of the snapshot, `None` if absent.
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;
    /// Calls `f` for each key in `[start, end)` in order until it returns false.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()>;
}

/// The storage engine seam.
///
/// To ensure correctness:
/// - [`Engine::write`] applies a batch atomically: after a crash either all
///   of it is visible or none of it.
/// - A batch written with `sync = true` is durable when `write` returns, and
///   so is every batch written before it (write-ahead-log order).
/// - Every batch whose `write` returned before [`Engine::sync`] was called
///   is durable when `sync` returns. `sync` may run on another thread
///   while writes go on; those may or may not be covered.
/// - After a crash, what survives is a prefix of the writes, in order.
/// - Reads observe every batch whose `write` has returned.
pub trait Engine: Send + Sync + 'static {
    /// The value of `key` in `cf`, `None` if absent. Sees every batch whose
    /// [`Engine::write`] has returned, synced or not.
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;
    /// Calls `f` for each key in `[start, end)` in order until it returns false.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()>;
    /// Applies `batch` atomically, its ops in order. With `sync`, the batch
    /// and every one written before it are durable when this returns
    /// (one fsync); without, they become durable at the next synced write
    /// or [`Engine::sync`].
    fn write(&self, batch: &WriteBatch, sync: bool) -> StorageResult<()>;
    /// Makes every write that returned before this call durable (one fsync
    /// of the write-ahead log), without blocking writers meanwhile.
    fn sync(&self) -> StorageResult<()>;
    /// A consistent read-only view of the engine now, unaffected by later
    /// writes. Holding it keeps that state alive in the engine, so drop it
    /// when done.
    fn snapshot(&self) -> Box<dyn EngineSnapshot>;
    /// Number of synced writes so far (one fsync each): the group-commit
    /// benchmark divides committed entries by this.
    fn sync_count(&self) -> u64;
    /// Counts of a read cache in front of the engine, if it has one.
    fn cache_stats(&self) -> Option<crate::CacheStats> {
        None
    }
}
