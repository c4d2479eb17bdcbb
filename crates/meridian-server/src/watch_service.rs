//! etcd `Watch` service.
//!
//! ```text
//!  store thread: KvMachine::apply ──publish──► WatchHub (bounded broadcast)
//!                                                 │ every stream subscribes
//!  Watch stream: catch up from history (local reads of the event log),
//!                then live events, skipping revisions already sent
//! ```
//!
//! A stream handles the live batches waiting for it together: each watcher
//! gets every waiting revision it has events for in one response (whole
//! revisions, within the response limits), so a busy stream sends fewer,
//! larger responses instead of falling behind. A stream that still falls
//! more than [`HUB_CAPACITY`] batches behind (a slow client, or more
//! watchers than the node can serve one response per revision) is not
//! allowed to grow memory: its watchers are brought up to date from the
//! log, read once for all of them, as etcd replays its unsynced watchers
//! from its store; one whose next revision was compacted meanwhile is
//! canceled with `compact_revision` set (etcd's handshake).
//!
//! As etcd does: history replayed at creation goes out in as few responses
//! as [`MAX_WATCH_RESPONSE_BYTES`] and [`MAX_REVISIONS_PER_RESPONSE`] allow,
//! never splitting one revision's events (a revision larger than the limit
//! goes out whole, or in fragments when the watch asked for `fragment`).
//! A watch may start at the
//! compaction revision; below it, it is cancelled with `compact_revision`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_kv::command as c;
use meridian_kv::{Event, EventSink};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::mvccpb;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::BoxFuture;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Backend;
use crate::convert::kv_out;
use crate::error::ApiError;
use crate::watch_wire::{encode_events, WatchHandler, WireResponse};
use bytes::Bytes;

/// Event batches buffered for all watch streams of a node.
pub const HUB_CAPACITY: usize = 4096;
/// Watchers per stream.
pub const MAX_WATCHERS_PER_STREAM: usize = 1024;
/// Responses buffered per stream towards the client…
const STREAM_BUFFER: usize = 256;
/// …and their encoded bytes, at most (a single larger response still goes,
/// alone).
const STREAM_BUFFER_BYTES: u32 = 2 << 20;
/// How often watchers with `progress_notify` hear the current revision.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Largest response of replayed history (and fragment size): etcd's default
/// request limit, which its server fragments by.
pub const MAX_WATCH_RESPONSE_BYTES: usize = crate::error::MAX_REQUEST_BYTES;
/// Most revisions in one response of replayed history (etcd's
/// `watchBatchMaxRevs`).
pub const MAX_REVISIONS_PER_RESPONSE: usize = 1000;
/// Live batches a stream takes from the feed at once (when that many wait).
const MAX_LIVE_RUN: usize = 256;
/// Events read from the log per query while replaying.
const EVENTS_PER_PAGE: u64 = 1000;
/// etcd's reason for a watch below the compaction revision.
const COMPACTED_REASON: &str = "etcdserver: mvcc: required revision has been compacted";

#[derive(Debug)]
pub struct Published {
    pub range_id: u64,
    pub revision: i64,
    /// In wire form, converted once here: every watcher that receives an
    /// event shares its key and values (`Bytes`), whatever the number of
    /// streams and watchers.
    pub events: Vec<mvccpb::Event>,
    /// The encoded size of `events` (with their previous versions): what
    /// they add to a response, at most.
    pub bytes: usize,
    /// The range's replica left this node: its watchers here are cancelled
    /// so their clients re-watch on another member.
    pub removed: bool,
    /// This prefix was carved out of the range (a namespace created at
    /// runtime): its watchers here that cover it are cancelled.
    pub carved: Option<Vec<u8>>,
    /// For a carve or a removal, its number in the hub's log of them
    /// (`WatchHub::specials_after`); 0 for events.
    pub seq: u64,
    /// `events` as selected and encoded for each distinct selection that
    /// asked (at most [`MAX_SHARED_SELECTIONS`]): every stream whose
    /// watchers select the same way shares the bytes; the first encodes.
    encoded: std::sync::Mutex<Vec<(Selection, Bytes)>>,
}

/// Distinct selections of one revision's events whose encoding is shared
/// node-wide (past that, or past twice the events' size, a stream encodes
/// for itself).
const MAX_SHARED_SELECTIONS: usize = 64;

/// What decides which events a watcher gets, and in what form: its keys,
/// filters and `prev_kv`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Selection {
    key: Vec<u8>,
    range_end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl Selection {
    fn of(w: &Watcher) -> Selection {
        Selection { key: w.key.clone(), range_end: w.range_end.clone(), no_put: w.no_put, no_delete: w.no_delete, prev_kv: w.prev_kv }
    }

    fn is(&self, w: &Watcher) -> bool {
        (self.no_put, self.no_delete, self.prev_kv) == (w.no_put, w.no_delete, w.prev_kv)
            && self.key == w.key
            && self.range_end == w.range_end
    }
}

impl Published {
    fn new(range_id: u64, revision: i64, events: Vec<mvccpb::Event>) -> Published {
        let bytes = events.iter().map(|e| prost::Message::encoded_len(e) + 4).sum();
        Published { range_id, revision, events, bytes, removed: false, carved: None, seq: 0, encoded: Default::default() }
    }

    fn special(&self) -> bool {
        self.removed || self.carved.is_some()
    }

    /// The events `w` gets, encoded ([`encode_events`]); empty when none.
    /// Encoded once per selection for the whole node.
    fn encoded_for(&self, w: &Watcher) -> Bytes {
        if !self.events.iter().any(|e| e.kv.as_ref().is_some_and(|kv| w.sees(&kv.key, e.r#type == DELETE))) {
            return Bytes::new();
        }
        let cached = |p: &Published| {
            let cache = p.encoded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.iter().find(|(s, _)| s.is(w)).map(|(_, b)| b.clone())
        };
        if let Some(b) = cached(self) {
            return b;
        }
        // Encoded without the lock (streams wanting other selections, or
        // this one's, do not wait behind it; two may encode it at once).
        let b = encode_events(&w.select(&self.events));
        let mut cache = self.encoded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: a batch held by a slow stream keeps its encodings, so
        // they may take at most twice the events' own size.
        let held: usize = cache.iter().map(|(_, b)| b.len()).sum();
        if cache.len() < MAX_SHARED_SELECTIONS && held + b.len() <= 2 * self.bytes && !cache.iter().any(|(s, _)| s.is(w)) {
            cache.push((Selection::of(w), b.clone()));
        }
        b
    }
}

/// Carves and removals a hub remembers for streams that fell behind.
const MAX_SPECIALS: usize = 4096;

/// The hub's log of carves and removals: a stream that fell behind the
/// live feed lost them with the events, and reads here those it missed.
#[derive(Default)]
struct Specials {
    seq: u64,
    log: std::collections::VecDeque<Arc<Published>>,
}

/// Fan-out of applied events. Publishing never blocks the store thread.
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Published>>,
    /// Prefixes carved out of ranges this node's replicas applied (range,
    /// prefix), so a watch whose route is stale is not registered on the
    /// range that no longer serves it. Bounded: one per namespace created
    /// at runtime, at most [`MAX_CARVED_REMEMBERED`].
    carved: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
    specials: std::sync::Mutex<Specials>,
    stats: HubStats,
}

/// Counters for the node's metrics.
#[derive(Default)]
struct HubStats {
    streams: AtomicU64,
    watchers: AtomicU64,
    resyncs: AtomicU64,
    compacted: AtomicU64,
}

/// What the node's watch streams are doing, for its metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Watch streams open.
    pub streams: u64,
    /// Watchers on them.
    pub watchers: u64,
    /// Times a stream fell behind the live feed and was brought up to date
    /// from the log.
    pub resyncs: u64,
    /// Watchers canceled because a revision they still needed was compacted.
    pub compacted: u64,
}

/// Carves a node remembers for watch routing (beyond, the oldest go: a
/// route that stale has been refreshed long since).
const MAX_CARVED_REMEMBERED: usize = 4096;

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub {
            tx: broadcast::channel(HUB_CAPACITY).0,
            carved: std::sync::Mutex::new(Vec::new()),
            specials: std::sync::Mutex::new(Specials::default()),
            stats: HubStats::default(),
        }
    }
}

impl WatchHub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// A receiver of the live feed, and the number of the last carve or
    /// removal published before it.
    fn subscribe_at(&self) -> (broadcast::Receiver<Arc<Published>>, u64) {
        let specials = self.specials.lock().expect("specials");
        (self.tx.subscribe(), specials.seq)
    }

    /// Carves and removals published after number `seen`, in order; `None`
    /// when some of them are no longer remembered.
    fn specials_after(&self, seen: u64) -> Option<Vec<Arc<Published>>> {
        let specials = self.specials.lock().expect("specials");
        let first = specials.log.front().map_or(specials.seq + 1, |p| p.seq);
        (seen + 1 >= first).then(|| specials.log.iter().filter(|p| p.seq > seen).cloned().collect())
    }

    /// Publishes a carve or a removal, numbered, into the log and the feed.
    fn publish_special(&self, mut p: Published) {
        let mut specials = self.specials.lock().expect("specials");
        specials.seq += 1;
        p.seq = specials.seq;
        let p = Arc::new(p);
        if specials.log.len() >= MAX_SPECIALS {
            specials.log.pop_front();
        }
        specials.log.push_back(p.clone());
        let _ = self.tx.send(p);
    }

    pub fn stats(&self) -> WatchStats {
        let s = &self.stats;
        WatchStats {
            streams: s.streams.load(Ordering::Relaxed),
            watchers: s.watchers.load(Ordering::Relaxed),
            resyncs: s.resyncs.load(Ordering::Relaxed),
            compacted: s.compacted.load(Ordering::Relaxed),
        }
    }

    /// Whether a prefix carved out of `range_id` touches `[key, range_end)`.
    pub fn carved_touches(&self, range_id: u64, key: &[u8], range_end: &[u8]) -> bool {
        let carved = self.carved.lock().expect("carved prefixes");
        carved.iter().any(|(r, p)| *r == range_id && meridian_kv::carve::touches(key, range_end, p))
    }
}

impl EventSink for WatchHub {
    fn publish(&self, range_id: u64, revision: i64, events: &[Event]) {
        // No receivers is fine; a full buffer drops the oldest for laggards.
        let _ = self.tx.send(Arc::new(Published::new(range_id, revision, events.iter().map(to_wire).collect())));
    }

    fn revision_moved(&self, range_id: u64, revision: i64) {
        let _ = self.tx.send(Arc::new(Published::new(range_id, revision, Vec::new())));
    }

    fn range_removed(&self, range_id: u64) {
        self.publish_special(Published { removed: true, ..Published::new(range_id, 0, Vec::new()) });
    }

    fn namespace_returned(&self, range_id: u64, prefix: &[u8]) {
        self.carved.lock().expect("carved prefixes").retain(|(r, p)| !(*r == range_id && p == prefix));
    }

    fn namespace_carved(&self, range_id: u64, prefix: &[u8]) {
        {
            let mut carved = self.carved.lock().expect("carved prefixes");
            if !carved.iter().any(|(r, p)| *r == range_id && p == prefix) {
                if carved.len() >= MAX_CARVED_REMEMBERED {
                    carved.remove(0);
                }
                carved.push((range_id, prefix.to_vec()));
            }
        }
        let carved = Some(prefix.to_vec());
        self.publish_special(Published { carved, ..Published::new(range_id, 0, Vec::new()) });
    }
}

/// An applied event in wire form, with its previous version when the
/// state machine recorded one (a watcher without `prev_kv` drops it).
pub fn to_wire(e: &Event) -> mvccpb::Event {
    mvccpb::Event { r#type: e.kind, kv: e.kv.clone().map(kv_out), prev_kv: e.prev_kv.clone().map(kv_out) }
}

/// etcd's event type of a delete.
const DELETE: i32 = mvccpb::event::EventType::Delete as i32;

struct Watcher {
    id: i64,
    range_id: u64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Next revision this watcher has not seen.
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress: bool,
    /// Responses over [`MAX_WATCH_RESPONSE_BYTES`] go out in fragments.
    fragment: bool,
}

impl Watcher {
    fn matches(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else {
            key >= self.key.as_slice() && (self.range_end == [0] || key < self.range_end.as_slice())
        }
    }

    /// Whether this watcher sees an event on `key` (a delete or a put).
    fn sees(&self, key: &[u8], delete: bool) -> bool {
        self.matches(key) && !(delete && self.no_delete || !delete && self.no_put)
    }

    /// The client-visible events of one revision.
    fn select(&self, events: &[mvccpb::Event]) -> Vec<mvccpb::Event> {
        events.iter().filter_map(|e| self.select_one(e)).collect()
    }

    /// The client-visible form of `e`, if this watcher sees it (a clone
    /// that shares `e`'s bytes).
    fn select_one(&self, e: &mvccpb::Event) -> Option<mvccpb::Event> {
        if !e.kv.as_ref().is_some_and(|kv| self.sees(&kv.key, e.r#type == DELETE)) {
            return None;
        }
        Some(mvccpb::Event { r#type: e.r#type, kv: e.kv.clone(), prev_kv: if self.prev_kv { e.prev_kv.clone() } else { None } })
    }
}

/// Replayed events waiting to go out as one response: whole revisions.
#[derive(Default)]
struct Batch {
    events: Vec<mvccpb::Event>,
    bytes: usize,
    revisions: usize,
    /// The newest revision in the batch.
    last: i64,
}

/// Live revisions waiting to go out as one response, already encoded
/// (each revision's events for the watchers' selection).
#[derive(Default)]
struct Encoded {
    chunks: Vec<Bytes>,
    bytes: usize,
    /// The newest revision in the batch.
    last: i64,
}

impl Encoded {
    /// The response's events field: one revision's bytes as they are,
    /// several copied together once (for every watcher of the group).
    fn joined(self) -> Bytes {
        if self.chunks.len() == 1 {
            return self.chunks.into_iter().next().expect("one chunk");
        }
        let mut all = bytes::BytesMut::with_capacity(self.bytes);
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        all.freeze()
    }
}

/// Splits `events` into fragments of at most `limit` encoded bytes each
/// (a single larger event is a fragment of its own).
fn fragments(events: Vec<mvccpb::Event>, limit: usize) -> Vec<Vec<mvccpb::Event>> {
    use prost::Message as _;
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for e in events {
        let n = e.encoded_len() + 4;
        let last = out.last_mut().expect("never empty");
        if !last.is_empty() && bytes + n > limit {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        out.last_mut().expect("never empty").push(e);
    }
    out
}

pub struct WatchService {
    pub backend: Arc<Backend>,
    pub hub: Arc<WatchHub>,
}

/// The responses of one watch stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WireResponse, Status>> + Send>>;

/// The range's current revision, read by counting `key` (any key the
/// range holds: the store refuses a probe of a key outside its span).
async fn current_revision(backend: &Backend, range_id: u64, key: &[u8]) -> Result<i64, ApiError> {
    let q = c::QueryKind::Range(c::RangeOp { key: key.to_vec(), count_only: true, ..Default::default() });
    Ok(backend.query(range_id, q, false).await?.revision)
}

struct StreamCtx {
    backend: Arc<Backend>,
    hub: Arc<WatchHub>,
    out: mpsc::Sender<(WireResponse, OwnedSemaphorePermit)>,
    /// Bytes the stream may still buffer ([`STREAM_BUFFER_BYTES`]); a
    /// response's permit is released when the transport takes it.
    budget: Arc<Semaphore>,
    watchers: Vec<Watcher>,
    next_id: i64,
    /// The number of the last carve or removal this stream handled.
    specials_seen: u64,
}

impl Drop for StreamCtx {
    fn drop(&mut self) {
        self.hub.stats.streams.fetch_sub(1, Ordering::Relaxed);
        self.hub.stats.watchers.fetch_sub(self.watchers.len() as u64, Ordering::Relaxed);
    }
}

/// Watchers that get the same responses: same range, keys, filters and
/// next revision. A watcher with `fragment` is always alone (its
/// fragments must go out back to back).
fn same_group(a: &Watcher, b: &Watcher) -> bool {
    !a.fragment
        && !b.fragment
        && (a.range_id, a.next_rev, a.prev_kv, a.no_put, a.no_delete) == (b.range_id, b.next_rev, b.prev_kv, b.no_put, b.no_delete)
        && a.key == b.key
        && a.range_end == b.range_end
}

/// One group's part of a replay ([`StreamCtx::replay`]): its members (ids,
/// sorted), their filter and next revision, the whole revisions waiting to
/// go out, and the revision being assembled.
struct Replay {
    ids: Vec<i64>,
    filter: Watcher,
    batch: Batch,
    rev: i64,
    rev_events: Vec<mvccpb::Event>,
    rev_bytes: usize,
    /// Fragments of `rev` went out already: the revision's last piece
    /// goes alone.
    fragmented: bool,
}

/// Headers made while handling one run of live events, shared by every
/// group whose response ends at the same revision.
#[derive(Default)]
struct Headers(Vec<(u64, i64, pb::ResponseHeader)>);

impl StreamCtx {
    async fn send(&self, r: WireResponse) -> bool {
        let n = u32::try_from(prost::Message::encoded_len(&r)).unwrap_or(u32::MAX).clamp(1, STREAM_BUFFER_BYTES);
        let Ok(permit) = self.budget.clone().acquire_many_owned(n).await else { return false };
        self.out.send((r, permit)).await.is_ok()
    }

    async fn header(&self, range_id: u64, revision: i64) -> pb::ResponseHeader {
        self.backend.header(range_id, revision).await
    }

    async fn header_cached(&self, headers: &mut Headers, range_id: u64, revision: i64) -> pb::ResponseHeader {
        if let Some((_, _, h)) = headers.0.iter().find(|(r, v, _)| *r == range_id && *v == revision) {
            return *h;
        }
        let h = self.header(range_id, revision).await;
        headers.0.push((range_id, revision, h));
        h
    }

    /// Notes that watchers `ids` (sorted) have seen everything below `next`.
    fn advance(&mut self, ids: &[i64], next: i64) {
        for w in self.watchers.iter_mut().filter(|w| ids.binary_search(&w.id).is_ok()) {
            w.next_rev = w.next_rev.max(next);
        }
    }

    /// Watchers `ids` (all when `None`) in groups of [`same_group`], each
    /// group's ids sorted.
    fn groups(&self, ids: Option<&[i64]>) -> Vec<Vec<i64>> {
        let wanted = ids.map(|ids| {
            let mut v = ids.to_vec();
            v.sort_unstable();
            v
        });
        let mut order: Vec<&Watcher> =
            self.watchers.iter().filter(|w| wanted.as_ref().is_none_or(|ids| ids.binary_search(&w.id).is_ok())).collect();
        order.sort_by(|a, b| {
            (a.range_id, &a.key, &a.range_end, a.next_rev, a.prev_kv, a.no_put, a.no_delete, a.fragment, a.id).cmp(&(
                b.range_id,
                &b.key,
                &b.range_end,
                b.next_rev,
                b.prev_kv,
                b.no_put,
                b.no_delete,
                b.fragment,
                b.id,
            ))
        });
        let mut out: Vec<Vec<i64>> = Vec::new();
        let mut first: Option<&Watcher> = None;
        for w in order {
            match (first, out.last_mut()) {
                (Some(f), Some(group)) if same_group(f, w) => group.push(w.id),
                _ => {
                    first = Some(w);
                    out.push(vec![w.id]);
                }
            }
        }
        for g in &mut out {
            g.sort_unstable();
        }
        out
    }

    /// Sends `events` to every watcher of `ids` under `header`, encoded
    /// once — or, for a watcher that asked for fragments (alone in its
    /// group), as fragments when they exceed the limit, all but the last
    /// marked `fragment`.
    async fn send_events(&mut self, ids: &[i64], header: pb::ResponseHeader, events: Vec<mvccpb::Event>, fragment: bool) -> bool {
        let pieces = if fragment { fragments(events, MAX_WATCH_RESPONSE_BYTES) } else { vec![events] };
        let n = pieces.len();
        for (i, events) in pieces.into_iter().enumerate() {
            if !self.send_encoded(ids, header, encode_events(&events), i + 1 < n).await {
                return false;
            }
        }
        true
    }

    /// Sends events already encoded to every watcher of `ids`, each under
    /// its own watch id in front of the shared bytes.
    async fn send_encoded(&mut self, ids: &[i64], header: pb::ResponseHeader, events: Bytes, fragment: bool) -> bool {
        for &id in ids {
            let head = pb::WatchResponse { header: Some(header), watch_id: id, fragment, ..Default::default() };
            if !self.send(WireResponse::with_events(head, events.clone())).await {
                return false;
            }
        }
        true
    }

    /// Cancels watcher `id` and tells the client; a watcher that does not
    /// exist (any more) is not answered, as etcd does.
    async fn cancel(&mut self, id: i64, reason: &str, compact_revision: i64) -> bool {
        let Some(range_id) = self.watchers.iter().find(|w| w.id == id).map(|w| w.range_id) else { return true };
        self.watchers.retain(|w| w.id != id);
        self.hub.stats.watchers.fetch_sub(1, Ordering::Relaxed);
        if compact_revision > 0 {
            self.hub.stats.compacted.fetch_add(1, Ordering::Relaxed);
        }
        let header = self.header(range_id, 0).await;
        self.send(
            pb::WatchResponse {
                header: Some(header),
                watch_id: id,
                canceled: true,
                cancel_reason: reason.into(),
                compact_revision,
                ..Default::default()
            }
            .into(),
        )
        .await
    }

    async fn create(&mut self, r: pb::WatchCreateRequest) -> bool {
        // A refused watch is answered created and canceled with id -1, as
        // etcd answers it, and changes nothing (the next id is not taken).
        let fail = |reason: String| {
            WireResponse::from(pb::WatchResponse {
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            })
        };
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            return self.send(fail(format!("too many watchers on one stream (max {MAX_WATCHERS_PER_STREAM})"))).await;
        }
        if r.watch_id > 0 && self.watchers.iter().any(|w| w.id == r.watch_id) {
            return self.send(fail("mvcc: duplicate watch ID provided on the WatchStream".into())).await;
        }
        // An empty range end watches one key, [0] every key from `key` on;
        // any other end must lie above the key.
        if !r.range_end.is_empty() && r.range_end != [0] && r.range_end <= r.key {
            return self.send(fail("mvcc: watcher range is empty".into())).await;
        }
        // Negative revisions are refused as etcd refuses revisions below
        // its compaction (etcd-io/etcd#20693).
        if r.start_revision < 0 {
            return self.send(fail(COMPACTED_REASON.into())).await;
        }
        let mut range_id = match self.backend.routing().range_of_interval(&r.key, &r.range_end) {
            Ok(x) => x,
            Err(e) => return self.send(fail(e.to_string())).await,
        };
        // The route is stale if this node's replica of the range applied a
        // carve of the watched keys: read the routes again.
        if self.hub.carved_touches(range_id, &r.key, &r.range_end) {
            if let Err(e) = self.backend.refresh_routes().await {
                return self.send(fail(e.to_string())).await;
            }
            range_id = match self.backend.routing().range_of_interval(&r.key, &r.range_end) {
                Ok(x) if !self.hub.carved_touches(x, &r.key, &r.range_end) => x,
                Ok(_) => {
                    return self
                        .send(fail("the watched keys moved to a new namespace whose range is not published yet; retry".into()))
                        .await
                }
                Err(e) => return self.send(fail(e.to_string())).await,
            };
        }
        let id = if r.watch_id > 0 { r.watch_id } else { self.next_id };
        self.next_id = self.next_id.max(id) + 1;
        let start = if r.start_revision > 0 {
            r.start_revision
        } else {
            match current_revision(&self.backend, range_id, &r.key).await {
                Ok(rev) => rev + 1,
                Err(e) => return self.send(fail(e.to_string())).await,
            }
        };
        let w = Watcher {
            id,
            range_id,
            key: r.key,
            range_end: r.range_end,
            next_rev: start,
            prev_kv: r.prev_kv,
            no_put: r.filters.contains(&0),
            no_delete: r.filters.contains(&1),
            progress: r.progress_notify,
            fragment: r.fragment,
        };
        let header = self.header(range_id, start - 1).await;
        let created = pb::WatchResponse { header: Some(header), watch_id: id, created: true, ..Default::default() };
        if !self.send(created.into()).await {
            return false;
        }
        self.watchers.push(w);
        self.hub.stats.watchers.fetch_add(1, Ordering::Relaxed);
        self.replay(range_id, &[id]).await
    }

    /// Replays history to watchers `ids` of `range_id`, each from its next
    /// revision: reads the log once for all of them, in pages (resuming
    /// inside a revision when a page ends there), converting each event to
    /// wire form once, and sends whole revisions, batched ([`Batch`]),
    /// encoded once per group of watchers that select the same events.
    /// Used when a watch is created, and when a stream fell behind the
    /// node's live feed: its watchers are brought up to date from the log,
    /// not from memory, so a slow client never makes the server buffer
    /// more (what the groups hold is flushed past [`STREAM_BUFFER_BYTES`]).
    /// A watcher whose next revision was compacted meanwhile is canceled
    /// with `compact_revision` (etcd's handshake). At most one watcher
    /// with `fragment` per call: its fragments must go out back to back.
    async fn replay(&mut self, range_id: u64, ids: &[i64]) -> bool {
        let mut ids = ids.to_vec();
        'again: loop {
            let mut rs: Vec<Replay> = Vec::new();
            for group in self.groups(Some(&ids)) {
                let Some(w) = self.watchers.iter().find(|w| w.id == group[0] && w.range_id == range_id) else { continue };
                let filter = Watcher { key: w.key.clone(), range_end: w.range_end.clone(), ..*w };
                rs.push(Replay {
                    ids: group,
                    filter,
                    batch: Batch::default(),
                    rev: 0,
                    rev_events: Vec::new(),
                    rev_bytes: 0,
                    fragmented: false,
                });
            }
            // A merged namespace's events up to its floor are in its retired
            // group, not here: a watcher needing them is compacted (it
            // re-lists, and watches on from the floor).
            if range_id == crate::routing::ROOT_RANGE_ID {
                let floors = match self.backend.query(range_id, c::QueryKind::MergeFloors(true), false).await {
                    Ok(a) => a.merge_floors,
                    Err(_) => Vec::new(),
                };
                let mut kept = Vec::with_capacity(rs.len());
                for r in rs {
                    let f = floors.iter().find(|f| {
                        r.filter.next_rev <= f.revision && meridian_kv::carve::touches(&r.filter.key, &r.filter.range_end, &f.prefix)
                    });
                    match f {
                        Some(f) => {
                            for &id in &r.ids {
                                if !self.cancel(id, COMPACTED_REASON, f.revision + 1).await {
                                    return false;
                                }
                            }
                        }
                        None => kept.push(r),
                    }
                }
                rs = kept;
            }
            let Some(start) = rs.iter().map(|r| r.filter.next_rev).min() else { return true };
            let mut cursor = (start, 0i64);
            loop {
                let q = c::QueryKind::Events(c::EventsOp { from_revision: cursor.0, from_sub: cursor.1, limit: EVENTS_PER_PAGE });
                let page = match self.backend.query(range_id, q, false).await {
                    Ok(a) => a.events,
                    // A revision half sent in fragments cannot be ended by
                    // a cancel (clients would merge the two): the stream
                    // ends, and clients re-watch from what they have.
                    Err(_) if rs.iter().any(|r| r.fragmented) => return false,
                    Err(ApiError::Compacted { compact_revision }) => {
                        // Whole revisions already assembled still go out;
                        // then whoever needs a compacted revision is
                        // canceled, and the others start again (having
                        // seen nothing in this pass: they start above it).
                        let mut keep = Vec::new();
                        for r in &mut rs {
                            if !self.flush(range_id, r).await {
                                return false;
                            }
                            if r.filter.next_rev >= compact_revision {
                                keep.extend_from_slice(&r.ids);
                                continue;
                            }
                            for &id in &r.ids {
                                if !self.cancel(id, COMPACTED_REASON, compact_revision).await {
                                    return false;
                                }
                            }
                        }
                        ids = keep;
                        continue 'again;
                    }
                    Err(e) => {
                        for r in &mut rs {
                            if !self.flush(range_id, r).await {
                                return false;
                            }
                            let reason = format!("{e}; re-watch from revision {}", r.filter.next_rev);
                            for &id in &r.ids {
                                if !self.cancel(id, &reason, 0).await {
                                    return false;
                                }
                            }
                        }
                        return true;
                    }
                };
                // A full page (as the state machine clamps it) may have more behind it.
                let more = page.len() as u64 >= EVENTS_PER_PAGE.min(meridian_kv::machine::MAX_EVENTS_PER_QUERY as u64);
                for e in page {
                    cursor = (e.revision, e.sub + 1);
                    // In wire form once; each group's copy shares its bytes.
                    let ev = e.event.map(|ev| mvccpb::Event { r#type: ev.kind, kv: ev.kv.map(kv_out), prev_kv: ev.prev_kv.map(kv_out) });
                    for r in &mut rs {
                        if e.revision < r.filter.next_rev {
                            continue;
                        }
                        if e.revision != r.rev {
                            if !self.end_revision(range_id, r).await {
                                return false;
                            }
                            r.rev = e.revision;
                        }
                        if let Some(sel) = ev.as_ref().and_then(|ev| r.filter.select_one(ev)) {
                            r.rev_bytes += prost::Message::encoded_len(&sel) + 4;
                            r.rev_events.push(sel);
                        }
                        // A revision too large for one response, with
                        // fragments asked for: full fragments go out now
                        // (memory stays bounded); the last, partial one
                        // stays, to end the revision.
                        if r.filter.fragment && r.rev_bytes > MAX_WATCH_RESPONSE_BYTES {
                            if !self.flush(range_id, r).await {
                                return false;
                            }
                            let mut pieces = fragments(std::mem::take(&mut r.rev_events), MAX_WATCH_RESPONSE_BYTES);
                            r.rev_events = pieces.pop().expect("fragments are never empty");
                            r.rev_bytes = r.rev_events.iter().map(|e| prost::Message::encoded_len(e) + 4).sum();
                            r.fragmented = true;
                            let header = self.header(range_id, r.rev).await;
                            for events in pieces {
                                if !self.send_encoded(&r.ids, header, encode_events(&events), true).await {
                                    return false;
                                }
                            }
                        }
                    }
                    // Bounded: past the stream's buffer size, what the
                    // groups hold in whole revisions goes out.
                    if rs.iter().map(|r| r.batch.bytes).sum::<usize>() > STREAM_BUFFER_BYTES as usize {
                        for r in &mut rs {
                            if !self.flush(range_id, r).await {
                                return false;
                            }
                        }
                    }
                }
                if !more {
                    break;
                }
            }
            for r in &mut rs {
                if !self.end_revision(range_id, r).await || !self.flush(range_id, r).await {
                    return false;
                }
                let (ids, next) = (std::mem::take(&mut r.ids), r.rev + 1);
                self.advance(&ids, next);
            }
            return true;
        }
    }

    /// Ends the revision `r` is assembling: adds its selected events to the
    /// batch, sending the batch first when they would not fit in it (and
    /// right after, when the revision went out in fragments).
    async fn end_revision(&mut self, range_id: u64, r: &mut Replay) -> bool {
        if r.rev == 0 {
            return true;
        }
        let (events, bytes) = (std::mem::take(&mut r.rev_events), std::mem::take(&mut r.rev_bytes));
        if !events.is_empty() {
            let b = &r.batch;
            let full = b.bytes + bytes > MAX_WATCH_RESPONSE_BYTES || b.revisions >= MAX_REVISIONS_PER_RESPONSE;
            if !b.events.is_empty() && full && !self.flush(range_id, r).await {
                return false;
            }
            r.batch.events.extend(events);
            r.batch.bytes += bytes;
            r.batch.revisions += 1;
        }
        r.batch.last = r.rev;
        if std::mem::take(&mut r.fragmented) {
            return self.flush(range_id, r).await;
        }
        true
    }

    /// Sends what `r`'s batch holds (if anything) and notes its watchers
    /// have seen up to its last revision.
    async fn flush(&mut self, range_id: u64, r: &mut Replay) -> bool {
        let b = std::mem::take(&mut r.batch);
        if b.last > 0 {
            r.filter.next_rev = r.filter.next_rev.max(b.last + 1);
            self.advance(&r.ids, b.last + 1);
        }
        if b.events.is_empty() {
            return true;
        }
        let header = self.header(range_id, b.last).await;
        self.send_events(&r.ids, header, b.events, r.filter.fragment).await
    }

    /// Delivers a run of live event batches (in revision order per range):
    /// each group of watchers ([`same_group`]) gets, in one response, every
    /// revision of the run it has not seen yet and has events for (whole
    /// revisions, within the response limits), selected and encoded once
    /// for the group. A group that finds a gap — revisions never published
    /// here, as when this replica caught up by installing a snapshot —
    /// stops before it and is replayed from the log.
    async fn deliver(&mut self, run: &[Arc<Published>]) -> bool {
        let mut headers = Headers::default();
        let mut gaps: Vec<(u64, Vec<i64>)> = Vec::new();
        for group in self.groups(None) {
            let Some(w) = self.watchers.iter().find(|w| w.id == group[0]) else { continue };
            let (range_id, fragment) = (w.range_id, w.fragment);
            let mut next = w.next_rev;
            // Whole revisions per response: events (a watcher with
            // `fragment`, whose responses may split), or their shared
            // encodings.
            let mut out: Vec<Batch> = Vec::new();
            let mut out_encoded: Vec<Encoded> = Vec::new();
            let (mut cur, mut cur_encoded) = (Batch::default(), Encoded::default());
            for p in run.iter().filter(|p| p.range_id == range_id) {
                if p.revision < next {
                    continue; // already sent (a replay and live events overlap)
                }
                if p.revision > next {
                    gaps.push((range_id, group.clone()));
                    break;
                }
                next = p.revision + 1;
                if fragment {
                    let selected = w.select(&p.events);
                    if selected.is_empty() {
                        continue;
                    }
                    if !cur.events.is_empty()
                        && (cur.bytes + p.bytes > MAX_WATCH_RESPONSE_BYTES || cur.revisions >= MAX_REVISIONS_PER_RESPONSE)
                    {
                        out.push(std::mem::take(&mut cur));
                    }
                    cur.events.extend(selected);
                    cur.bytes += p.bytes;
                    cur.revisions += 1;
                    cur.last = p.revision;
                    continue;
                }
                let encoded = p.encoded_for(w);
                if encoded.is_empty() {
                    continue;
                }
                let c = &cur_encoded;
                if !c.chunks.is_empty()
                    && (c.bytes + encoded.len() > MAX_WATCH_RESPONSE_BYTES || c.chunks.len() >= MAX_REVISIONS_PER_RESPONSE)
                {
                    out_encoded.push(std::mem::take(&mut cur_encoded));
                }
                cur_encoded.bytes += encoded.len();
                cur_encoded.chunks.push(encoded);
                cur_encoded.last = p.revision;
            }
            self.advance(&group, next);
            if !cur.events.is_empty() {
                out.push(cur);
            }
            if !cur_encoded.chunks.is_empty() {
                out_encoded.push(cur_encoded);
            }
            for b in out {
                let h = self.header_cached(&mut headers, range_id, b.last).await;
                if !self.send_events(&group, h, b.events, fragment).await {
                    return false;
                }
            }
            for b in out_encoded {
                let h = self.header_cached(&mut headers, range_id, b.last).await;
                if !self.send_encoded(&group, h, b.joined(), false).await {
                    return false;
                }
            }
        }
        for (range_id, ids) in gaps {
            if !self.replay(range_id, &ids).await {
                return false;
            }
        }
        true
    }

    /// Replays `ids` of `range_id` from the log: together, but each watcher
    /// with `fragment` on its own.
    async fn replay_all(&mut self, range_id: u64, ids: &[i64]) -> bool {
        let fragmenting: Vec<i64> = self.watchers.iter().filter(|w| w.fragment && ids.contains(&w.id)).map(|w| w.id).collect();
        let rest: Vec<i64> = ids.iter().copied().filter(|id| !fragmenting.contains(id)).collect();
        if !self.replay(range_id, &rest).await {
            return false;
        }
        for id in fragmenting {
            if !self.replay(range_id, &[id]).await {
                return false;
            }
        }
        true
    }

    /// The stream fell behind the node's live feed (events went by that it
    /// never received): every watcher is brought up to date from the log,
    /// one read per range for all of them. Carves and removals that went
    /// by with the events are read from the hub's log of them: a removal
    /// cancels first (there is no log to read any more), a carve after the
    /// replay (the events before it belong to the watcher).
    async fn resync(&mut self) -> bool {
        self.hub.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        let Some(missed) = self.hub.specials_after(self.specials_seen) else {
            // Too many carves and removals went by to know which apply.
            for (id, next) in self.watchers.iter().map(|w| (w.id, w.next_rev)).collect::<Vec<_>>() {
                let reason = format!("watcher too slow (ranges changed on this node meanwhile); re-watch from revision {next}");
                if !self.cancel(id, &reason, 0).await {
                    return false;
                }
            }
            return true;
        };
        // Applied here in two passes, out of number order: each once, and
        // the copies still in the feed are skipped after.
        if let Some(last) = missed.last() {
            self.specials_seen = self.specials_seen.max(last.seq);
        }
        for p in missed.iter().filter(|p| p.removed) {
            if !self.special_cancels(p).await {
                return false;
            }
        }
        let ranges: std::collections::BTreeSet<u64> = self.watchers.iter().map(|w| w.range_id).collect();
        for range_id in ranges {
            let ids: Vec<i64> = self.watchers.iter().filter(|w| w.range_id == range_id).map(|w| w.id).collect();
            if !self.replay_all(range_id, &ids).await {
                return false;
            }
        }
        for p in missed.into_iter().filter(|p| !p.removed) {
            if !self.special_cancels(&p).await {
                return false;
            }
        }
        true
    }

    /// Answers a `WatchProgressRequest` as etcd does: a response with watch
    /// id -1 and the current revision, meaning every event up to it has been
    /// sent — so events already published are delivered first. A stream
    /// with no watcher gets no answer (etcd sends none either). Revisions
    /// are per range: the revision is that of the stream's first watcher's
    /// range (etcd has one).
    async fn progress(&mut self, live: &mut broadcast::Receiver<Arc<Published>>) -> bool {
        let Some((range_id, key)) = self.watchers.first().map(|w| (w.range_id, w.key.clone())) else { return true };
        let Ok(rev) = current_revision(&self.backend, range_id, &key).await else { return true };
        // Everything applied up to `rev` was published before it could be
        // read: handle what this stream has not handled yet (only that: a
        // busy feed must not keep the stream from its requests).
        let mut waiting = live.len();
        while waiting > 0 {
            let mut items = Vec::new();
            drain(live, &mut items);
            if items.is_empty() {
                break;
            }
            waiting = waiting.saturating_sub(items.len());
            if !self.on_live(items).await {
                return false;
            }
        }
        if self.watchers.is_empty() {
            return true;
        }
        // Never below what was just delivered (events applied after the
        // revision was read may have been drained too), never above what
        // exists (a watcher may start at a future revision).
        let delivered = self.watchers.iter().filter(|w| w.range_id == range_id).map(|w| w.next_rev - 1).max().unwrap_or(0);
        let now = if delivered > rev { current_revision(&self.backend, range_id, &key).await.unwrap_or(rev) } else { rev };
        let header = self.header(range_id, rev.max(delivered.min(now))).await;
        self.send(pb::WatchResponse { header: Some(header), watch_id: -1, ..Default::default() }.into()).await
    }

    /// Tells each watcher that asked for `progress_notify` the revision it
    /// has seen everything up to (never one that does not exist yet).
    async fn notify_progress(&mut self) -> bool {
        let asked: Vec<(i64, u64, i64, Vec<u8>)> =
            self.watchers.iter().filter(|w| w.progress).map(|w| (w.id, w.range_id, w.next_rev, w.key.clone())).collect();
        let mut now: Vec<(u64, i64)> = Vec::new();
        for (id, range_id, next, key) in asked {
            let current = match now.iter().find(|(r, _)| *r == range_id) {
                Some((_, rev)) => *rev,
                None => {
                    let Ok(rev) = current_revision(&self.backend, range_id, &key).await else { continue };
                    now.push((range_id, rev));
                    rev
                }
            };
            let header = self.header(range_id, (next - 1).min(current)).await;
            if !self.send(pb::WatchResponse { header: Some(header), watch_id: id, ..Default::default() }.into()).await {
                return false;
            }
        }
        true
    }

    /// Handles items of the live event feed, in order, runs of plain event
    /// batches together ([`StreamCtx::deliver`]); false when the stream is
    /// over (the client left or the feed closed).
    async fn on_live(&mut self, items: Vec<Result<Arc<Published>, broadcast::error::RecvError>>) -> bool {
        let mut run: Vec<Arc<Published>> = Vec::new();
        for item in items {
            if let Ok(p) = &item {
                if !p.special() {
                    run.push(p.clone());
                    continue;
                }
            }
            if !run.is_empty() && !self.deliver(&std::mem::take(&mut run)).await {
                return false;
            }
            if !self.on_special(item).await {
                return false;
            }
        }
        run.is_empty() || self.deliver(&run).await
    }

    /// A live feed item other than plain events: a carve or a replica
    /// removed, the stream left behind, the feed closed.
    async fn on_special(&mut self, item: Result<Arc<Published>, broadcast::error::RecvError>) -> bool {
        match item {
            Ok(p) if p.special() => self.apply_special(&p).await,
            Ok(p) => self.deliver(&[p]).await,
            // Too slow for the live feed: catch up from the log instead of
            // buffering without bound (etcd moves such watchers to its
            // unsynced set and replays them from its store).
            Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    /// A carve or a replica removed, handled once (a resync may have read
    /// it from the hub's log already): the watchers it concerns are
    /// canceled, saying why and where to re-watch.
    async fn apply_special(&mut self, p: &Published) -> bool {
        if p.seq <= self.specials_seen {
            return true;
        }
        self.specials_seen = p.seq;
        self.special_cancels(p).await
    }

    /// Cancels the watchers carve or removal `p` concerns.
    async fn special_cancels(&mut self, p: &Published) -> bool {
        let (ids, reason): (Vec<i64>, Box<dyn Fn(i64) -> String + Send + Sync>) = match &p.carved {
            Some(prefix) => {
                let ids = self
                    .watchers
                    .iter()
                    .filter(|w| w.range_id == p.range_id && meridian_kv::carve::touches(&w.key, &w.range_end, prefix))
                    .map(|w| w.id)
                    .collect();
                let prefix = String::from_utf8_lossy(prefix).into_owned();
                let reason = move |_| {
                    format!(
                        "namespace {prefix:?} moved to another Raft group (created, merged, split or dropped); re-watch (a watch stays inside one namespace)"
                    )
                };
                (ids, Box::new(reason))
            }
            None => {
                let ids = self.watchers.iter().filter(|w| w.range_id == p.range_id).map(|w| w.id).collect();
                let range_id = p.range_id;
                let reason = move |next| {
                    format!("range {range_id} no longer has a replica on this node; re-watch from revision {next} on another member")
                };
                (ids, Box::new(reason))
            }
        };
        for id in ids {
            let Some(next) = self.watchers.iter().find(|w| w.id == id).map(|w| w.next_rev) else { continue };
            if !self.cancel(id, &reason(next), 0).await {
                return false;
            }
        }
        true
    }
}

/// Moves what the live feed holds for this stream (up to [`MAX_LIVE_RUN`]
/// items) into `items` without waiting.
fn drain(live: &mut broadcast::Receiver<Arc<Published>>, items: &mut Vec<Result<Arc<Published>, broadcast::error::RecvError>>) {
    while items.len() < MAX_LIVE_RUN {
        match live.try_recv() {
            Ok(p) => items.push(Ok(p)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => items.push(Err(broadcast::error::RecvError::Lagged(n))),
            Err(broadcast::error::TryRecvError::Empty) => break,
            Err(broadcast::error::TryRecvError::Closed) => {
                items.push(Err(broadcast::error::RecvError::Closed));
                break;
            }
        }
    }
}

/// A response as the transport takes it; its buffer permit goes with it.
#[allow(clippy::result_large_err)] // tonic's stream item type
fn release((r, _permit): (WireResponse, OwnedSemaphorePermit)) -> Result<WireResponse, Status> {
    Ok(r)
}

impl WatchHandler for WatchService {
    type Stream = WatchStream;

    fn watch(&self, req: Request<Streaming<pb::WatchRequest>>) -> BoxFuture<Response<WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (mut live, specials_seen) = self.hub.subscribe_at();
        self.hub.stats.streams.fetch_add(1, Ordering::Relaxed);
        let budget = Arc::new(Semaphore::new(STREAM_BUFFER_BYTES as usize));
        let mut ctx = StreamCtx {
            backend: self.backend.clone(),
            hub: self.hub.clone(),
            out: tx,
            budget,
            watchers: Vec::new(),
            next_id: 1,
            specials_seen,
        };
        tokio::spawn(async move {
            let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
            progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    msg = inbound.next() => {
                        let Some(Ok(msg)) = msg else { break };
                        use pb::watch_request::RequestUnion;
                        let alive = match msg.request_union {
                            Some(RequestUnion::CreateRequest(r)) => ctx.create(r).await,
                            Some(RequestUnion::CancelRequest(r)) => ctx.cancel(r.watch_id, "", 0).await,
                            Some(RequestUnion::ProgressRequest(_)) => ctx.progress(&mut live).await,
                            None => true,
                        };
                        if !alive { break; }
                    }
                    item = live.recv() => {
                        let mut items = vec![item];
                        drain(&mut live, &mut items);
                        if !ctx.on_live(items).await { break }
                    }
                    _ = progress.tick() => if !ctx.notify_progress().await { break },
                }
            }
        });
        // A response's buffer permit goes when the transport takes it.
        let stream: WatchStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).map(release));
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(id: i64, key: &[u8], range_end: &[u8], prev_kv: bool) -> Watcher {
        Watcher {
            id,
            range_id: 2,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            next_rev: 1,
            prev_kv,
            no_put: false,
            no_delete: false,
            progress: false,
            fragment: false,
        }
    }

    fn put(key: &str, rev: i64) -> mvccpb::Event {
        let kv = |v: &str| mvccpb::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            mod_revision: rev,
            ..Default::default()
        };
        mvccpb::Event { r#type: 0, kv: Some(kv("new")), prev_kv: Some(kv("old")) }
    }

    #[test]
    fn a_revision_is_encoded_once_per_selection_for_every_stream() {
        let p = Published::new(2, 9, vec![put("/cfg/a", 9), put("/other", 9)]);
        // Watchers of two streams with the same selection get the same
        // bytes (one encoding), holding only their event.
        let (a, b) = (watcher(1, b"/cfg/", b"/cfg0", false), watcher(7, b"/cfg/", b"/cfg0", false));
        let (ea, eb) = (p.encoded_for(&a), p.encoded_for(&b));
        assert_eq!(ea.as_ptr(), eb.as_ptr(), "shared, not encoded twice");
        let plain = WireResponse::with_events(pb::WatchResponse::default(), ea).to_plain().unwrap();
        let mut want = put("/cfg/a", 9);
        want.prev_kv = None;
        assert_eq!(plain.events, vec![want]);
        // Another selection (prev_kv) has its own encoding, with prev_kv.
        let c = watcher(3, b"/cfg/", b"/cfg0", true);
        let ec = p.encoded_for(&c);
        assert_ne!(ec.as_ptr(), eb.as_ptr());
        let plain = WireResponse::with_events(pb::WatchResponse::default(), ec).to_plain().unwrap();
        assert_eq!(plain.events, vec![put("/cfg/a", 9)]);
        // A watcher that sees nothing gets nothing, and takes no room.
        assert!(p.encoded_for(&watcher(4, b"/none", b"", false)).is_empty());
        assert_eq!(p.encoded.lock().unwrap().len(), 2);
    }

    #[test]
    fn shared_encodings_are_bounded_per_revision() {
        let held = |p: &Published| p.encoded.lock().unwrap().iter().map(|(_, b)| b.len()).sum::<usize>();
        // Distinct selections that all see the event: ranges [/k, /k<i>).
        let select = |p: &Published, i: usize, prev_kv: bool| {
            let end = format!("/k{i:04}");
            assert!(!p.encoded_for(&watcher(1, b"/k", end.as_bytes(), prev_kv)).is_empty(), "every watcher gets its events");
        };
        // Small encodings (a large previous version nobody asks for): the
        // count bounds them.
        let mut e = put("/k", 9);
        e.prev_kv.as_mut().unwrap().value = Bytes::from(vec![b'x'; 10_000]);
        let p = Published::new(2, 9, vec![e]);
        for i in 0..(MAX_SHARED_SELECTIONS + 10) {
            select(&p, i, false);
        }
        assert_eq!(p.encoded.lock().unwrap().len(), MAX_SHARED_SELECTIONS);
        // Large ones: their bytes bound them, to twice the events' size.
        let p = Published::new(2, 9, vec![put("/k", 9)]);
        for i in 0..(MAX_SHARED_SELECTIONS + 10) {
            select(&p, i, true);
        }
        assert!(held(&p) <= 2 * p.bytes && held(&p) > 0, "{} bytes held for {}", held(&p), p.bytes);
    }
}
