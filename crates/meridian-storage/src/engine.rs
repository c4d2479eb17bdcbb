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
    pub const ALL: [Cf; 6] = [Cf::RaftLog, Cf::RaftState, Cf::ApplyState, Cf::Meta, Cf::Data, Cf::SnapStage];

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
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        cf: Cf,
        start: Vec<u8>,
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
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.size_bytes += key.len() + value.len();
        self.ops.push(WriteOp::Put { cf, key, value });
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.size_bytes += key.len();
        self.ops.push(WriteOp::Delete { cf, key });
    }

    pub fn delete_range(&mut self, cf: Cf, start: Vec<u8>, end: Vec<u8>) {
        self.size_bytes += start.len() + end.len();
        self.ops.push(WriteOp::DeleteRange { cf, start, end });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Approximate payload size, for batch-size limits.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

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

    pub fn append(&mut self, other: WriteBatch) {
        self.size_bytes += other.size_bytes;
        self.ops.extend(other.ops);
    }
}

/// A consistent, read-only view of the engine at one point in time.
pub trait EngineSnapshot: Send + Sync {
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
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;
    /// Calls `f` for each key in `[start, end)` in order until it returns false.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()>;
    fn write(&self, batch: &WriteBatch, sync: bool) -> StorageResult<()>;
    /// Makes every write that returned before this call durable (one fsync
    /// of the write-ahead log), without blocking writers meanwhile.
    fn sync(&self) -> StorageResult<()>;
    fn snapshot(&self) -> Box<dyn EngineSnapshot>;
    /// Number of synced writes so far (one fsync each): the group-commit
    /// benchmark divides committed entries by this.
    fn sync_count(&self) -> u64;
    /// Counts of a read cache in front of the engine, if it has one.
    fn cache_stats(&self) -> Option<crate::CacheStats> {
        None
    }
}
