//! etcd `Watch` service.
//!
//! ```text
//!  store thread: KvMachine::apply ──publish──► WatchHub (bounded broadcast)
//!                                                 │ every stream subscribes
//!  Watch stream: catch up from history (local reads of the event log),
//!                then live events, skipping revisions already sent
//! ```
//!
//! A stream that falls more than [`HUB_CAPACITY`] batches behind is not
//! allowed to grow memory: its watchers are cancelled with a reason telling
//! the client to re-watch from the revision it has.
//!
//! As etcd does: history replayed at creation goes out in as few responses
//! as [`MAX_WATCH_RESPONSE_BYTES`] and [`MAX_REVISIONS_PER_RESPONSE`] allow,
//! never splitting one revision's events (a revision larger than the limit
//! goes out whole, or in fragments when the watch asked for `fragment`);
//! live events go out one revision per response. A watch may start at the
//! compaction revision; below it, it is cancelled with `compact_revision`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_kv::command as c;
use meridian_kv::{Event, EventSink};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::mvccpb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Backend;
use crate::convert::kv_out;
use crate::error::ApiError;

/// Event batches buffered for all watch streams of a node.
pub const HUB_CAPACITY: usize = 4096;
/// Watchers per stream.
pub const MAX_WATCHERS_PER_STREAM: usize = 1024;
/// Responses buffered per stream towards the client.
const STREAM_BUFFER: usize = 256;
/// How often watchers with `progress_notify` hear the current revision.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Largest response of replayed history (and fragment size): etcd's default
/// request limit, which its server fragments by.
pub const MAX_WATCH_RESPONSE_BYTES: usize = crate::error::MAX_REQUEST_BYTES;
/// Most revisions in one response of replayed history (etcd's
/// `watchBatchMaxRevs`).
pub const MAX_REVISIONS_PER_RESPONSE: usize = 1000;
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
    /// The range's replica left this node: its watchers here are cancelled
    /// so their clients re-watch on another member.
    pub removed: bool,
    /// This prefix was carved out of the range (a namespace created at
    /// runtime): its watchers here that cover it are cancelled.
    pub carved: Option<Vec<u8>>,
}

/// Fan-out of applied events. Publishing never blocks the store thread.
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Published>>,
    /// Prefixes carved out of ranges this node's replicas applied (range,
    /// prefix), so a watch whose route is stale is not registered on the
    /// range that no longer serves it. Bounded: one per namespace created
    /// at runtime, at most [`MAX_CARVED_REMEMBERED`].
    carved: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
}

/// Carves a node remembers for watch routing (beyond, the oldest go: a
/// route that stale has been refreshed long since).
const MAX_CARVED_REMEMBERED: usize = 4096;

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub { tx: broadcast::channel(HUB_CAPACITY).0, carved: std::sync::Mutex::new(Vec::new()) }
    }
}

impl WatchHub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
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
        let events = events.iter().map(to_wire).collect();
        let _ = self.tx.send(Arc::new(Published { range_id, revision, events, removed: false, carved: None }));
    }

    fn range_removed(&self, range_id: u64) {
        let _ = self.tx.send(Arc::new(Published { range_id, revision: 0, events: Vec::new(), removed: true, carved: None }));
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
        let _ = self.tx.send(Arc::new(Published { range_id, revision: 0, events: Vec::new(), removed: false, carved }));
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

    /// Whether this watcher sees `e` (an event read from history).
    fn wants(&self, e: &Event) -> bool {
        e.kv.as_ref().is_some_and(|kv| self.sees(&kv.key, e.is_delete()))
    }

    /// `e` (which it [`Watcher::wants`]) in wire form, moved, with its
    /// previous version only if asked for.
    fn wire(&self, e: Event) -> mvccpb::Event {
        mvccpb::Event { r#type: e.kind, kv: e.kv.map(kv_out), prev_kv: if self.prev_kv { e.prev_kv.map(kv_out) } else { None } }
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

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// The range's current revision, read by counting `key` (any key the
/// range holds: the store refuses a probe of a key outside its span).
async fn current_revision(backend: &Backend, range_id: u64, key: &[u8]) -> Result<i64, ApiError> {
    let q = c::QueryKind::Range(c::RangeOp { key: key.to_vec(), count_only: true, ..Default::default() });
    Ok(backend.query(range_id, q, false).await?.revision)
}

struct StreamCtx {
    backend: Arc<Backend>,
    hub: Arc<WatchHub>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: Vec<Watcher>,
    next_id: i64,
}

impl StreamCtx {
    async fn send(&self, r: pb::WatchResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    async fn header(&self, range_id: u64, revision: i64) -> pb::ResponseHeader {
        self.backend.header(range_id, revision).await
    }

    /// Cancels watcher `id` and tells the client; a watcher that does not
    /// exist (any more) is not answered, as etcd does.
    async fn cancel(&mut self, id: i64, reason: &str, compact_revision: i64) -> bool {
        let Some(range_id) = self.watchers.iter().find(|w| w.id == id).map(|w| w.range_id) else { return true };
        self.watchers.retain(|w| w.id != id);
        let header = self.header(range_id, 0).await;
        self.send(pb::WatchResponse {
            header: Some(header),
            watch_id: id,
            canceled: true,
            cancel_reason: reason.into(),
            compact_revision,
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, r: pb::WatchCreateRequest) -> bool {
        // A refused watch is answered created and canceled with id -1, as
        // etcd answers it, and changes nothing (the next id is not taken).
        let fail =
            |reason: String| pb::WatchResponse { watch_id: -1, created: true, canceled: true, cancel_reason: reason, ..Default::default() };
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
        if !self.send(pb::WatchResponse { header: Some(header), watch_id: id, created: true, ..Default::default() }).await {
            return false;
        }
        self.watchers.push(w);
        self.catch_up(id).await
    }

    /// Replays history from the watcher's next revision: reads the log in
    /// pages (resuming inside a revision when a page ends there) and sends
    /// whole revisions, batched ([`Batch`]).
    async fn catch_up(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.iter().find(|w| w.id == id) else { return true };
        let (range_id, fragment) = (w.range_id, w.fragment);
        let filter = Watcher { id, range_id, key: w.key.clone(), range_end: w.range_end.clone(), ..*w };
        let mut cursor = (filter.next_rev, 0i64);
        let mut batch = Batch::default();
        // The revision being assembled: its number, selected events and their size.
        let (mut rev, mut rev_events, mut rev_bytes): (i64, Vec<mvccpb::Event>, usize) = (0, Vec::new(), 0);
        loop {
            let q = c::QueryKind::Events(c::EventsOp { from_revision: cursor.0, from_sub: cursor.1, limit: EVENTS_PER_PAGE });
            let page = match self.backend.query(range_id, q, false).await {
                Ok(a) => a.events,
                Err(ApiError::Compacted { compact_revision }) => return self.cancel(id, COMPACTED_REASON, compact_revision).await,
                Err(e) => return self.cancel(id, &e.to_string(), 0).await,
            };
            // A full page (as the state machine clamps it) may have more behind it.
            let more = page.len() as u64 >= EVENTS_PER_PAGE.min(meridian_kv::machine::MAX_EVENTS_PER_QUERY as u64);
            for e in page {
                if e.revision != rev {
                    if !self.end_revision(id, &mut batch, rev, std::mem::take(&mut rev_events), rev_bytes).await {
                        return false;
                    }
                    (rev, rev_bytes) = (e.revision, 0);
                }
                cursor = (e.revision, e.sub + 1);
                if let Some(ev) = e.event.filter(|ev| filter.wants(ev)).map(|ev| filter.wire(ev)) {
                    rev_bytes += prost::Message::encoded_len(&ev) + 4;
                    rev_events.push(ev);
                }
                // A revision too large for one response, with fragments
                // asked for: full fragments go out now (memory stays
                // bounded); the last, partial one stays, to end the revision.
                if fragment && rev_bytes > MAX_WATCH_RESPONSE_BYTES {
                    if !self.flush(id, &mut batch).await {
                        return false;
                    }
                    let mut pieces = fragments(std::mem::take(&mut rev_events), MAX_WATCH_RESPONSE_BYTES);
                    rev_events = pieces.pop().expect("fragments are never empty");
                    rev_bytes = rev_events.iter().map(|e| prost::Message::encoded_len(e) + 4).sum();
                    let header = self.header(range_id, rev).await;
                    for events in pieces {
                        let r = pb::WatchResponse { header: Some(header), watch_id: id, events, fragment: true, ..Default::default() };
                        if !self.send(r).await {
                            return false;
                        }
                    }
                }
            }
            if !more {
                break;
            }
        }
        if !self.end_revision(id, &mut batch, rev, rev_events, rev_bytes).await || !self.flush(id, &mut batch).await {
            return false;
        }
        if let Some(w) = self.watchers.iter_mut().find(|w| w.id == id) {
            w.next_rev = w.next_rev.max(rev + 1);
        }
        true
    }

    /// Adds revision `rev`'s selected events to `batch`, sending the batch
    /// first when they would not fit in it.
    async fn end_revision(&mut self, id: i64, batch: &mut Batch, rev: i64, events: Vec<mvccpb::Event>, bytes: usize) -> bool {
        if rev == 0 {
            return true;
        }
        if !events.is_empty() {
            let full = batch.bytes + bytes > MAX_WATCH_RESPONSE_BYTES || batch.revisions >= MAX_REVISIONS_PER_RESPONSE;
            if !batch.events.is_empty() && full && !self.flush(id, batch).await {
                return false;
            }
            batch.events.extend(events);
            batch.bytes += bytes;
            batch.revisions += 1;
        }
        batch.last = rev;
        true
    }

    /// Sends what `batch` holds (if anything) and notes the watcher has
    /// seen up to its last revision.
    async fn flush(&mut self, id: i64, batch: &mut Batch) -> bool {
        let b = std::mem::take(batch);
        let Some(w) = self.watchers.iter_mut().find(|w| w.id == id) else { return true };
        if b.last > 0 {
            w.next_rev = w.next_rev.max(b.last + 1);
        }
        if b.events.is_empty() {
            return true;
        }
        let (range_id, fragment) = (w.range_id, w.fragment);
        self.send_events(id, range_id, b.last, b.events, fragment).await
    }

    /// Sends `events` as one response — or, when the watcher asked for
    /// fragments and they exceed the limit, as fragments, all but the last
    /// marked `fragment`.
    async fn send_events(&mut self, id: i64, range_id: u64, revision: i64, events: Vec<mvccpb::Event>, fragment: bool) -> bool {
        let header = self.header(range_id, revision).await;
        self.send_events_with(id, header, events, fragment).await
    }

    async fn send_events_with(&mut self, id: i64, header: pb::ResponseHeader, events: Vec<mvccpb::Event>, fragment: bool) -> bool {
        let pieces = if fragment { fragments(events, MAX_WATCH_RESPONSE_BYTES) } else { vec![events] };
        let n = pieces.len();
        for (i, events) in pieces.into_iter().enumerate() {
            let r = pb::WatchResponse { header: Some(header), watch_id: id, events, fragment: i + 1 < n, ..Default::default() };
            if !self.send(r).await {
                return false;
            }
        }
        true
    }

    /// Sends watcher `id` its events of `revision` under `header`, made at
    /// the first watcher of the stream that has events to send and shared
    /// by the others.
    async fn deliver(
        &mut self,
        id: i64,
        range_id: u64,
        revision: i64,
        events: &[mvccpb::Event],
        header: &mut Option<pb::ResponseHeader>,
    ) -> bool {
        let Some(w) = self.watchers.iter_mut().find(|w| w.id == id) else { return true };
        if revision < w.next_rev {
            return true; // already sent (catch-up and live overlap, or a replay after restart)
        }
        w.next_rev = revision + 1;
        let selected = w.select(events);
        let fragment = w.fragment;
        if selected.is_empty() {
            return true;
        }
        let h = match *header {
            Some(h) => h,
            None => *header.insert(self.header(range_id, revision).await),
        };
        self.send_events_with(id, h, selected, fragment).await
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
        // read: drain what this stream has not handled yet.
        loop {
            let item = match live.try_recv() {
                Ok(p) => Ok(p),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Err(broadcast::error::RecvError::Lagged(n)),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return false,
            };
            if !self.on_live(item).await {
                return false;
            }
        }
        if self.watchers.is_empty() {
            return true;
        }
        // Never below what was just delivered (events applied after the
        // revision was read may have been drained too).
        let delivered = self.watchers.iter().filter(|w| w.range_id == range_id).map(|w| w.next_rev - 1).max().unwrap_or(0);
        let header = self.header(range_id, rev.max(delivered)).await;
        self.send(pb::WatchResponse { header: Some(header), watch_id: -1, ..Default::default() }).await
    }

    /// Handles one item of the live event feed; false when the stream is
    /// over (the client left or the feed closed).
    async fn on_live(&mut self, item: Result<Arc<Published>, broadcast::error::RecvError>) -> bool {
        match item {
            Ok(p) if p.carved.is_some() => {
                let prefix = p.carved.as_deref().expect("checked");
                let ids: Vec<i64> = self
                    .watchers
                    .iter()
                    .filter(|w| w.range_id == p.range_id && meridian_kv::carve::touches(&w.key, &w.range_end, prefix))
                    .map(|w| w.id)
                    .collect();
                for id in ids {
                    let reason = format!(
                        "namespace {:?} was created: its keys moved to a range of their own; re-watch (a watch stays inside one namespace)",
                        String::from_utf8_lossy(prefix)
                    );
                    if !self.cancel(id, &reason, 0).await {
                        return false;
                    }
                }
                true
            }
            Ok(p) if p.removed => {
                let ids: Vec<(i64, i64)> = self.watchers.iter().filter(|w| w.range_id == p.range_id).map(|w| (w.id, w.next_rev)).collect();
                for (id, next) in ids {
                    let reason = format!(
                        "range {} no longer has a replica on this node; re-watch from revision {next} on another member",
                        p.range_id
                    );
                    if !self.cancel(id, &reason, 0).await {
                        return false;
                    }
                }
                true
            }
            Ok(p) => {
                let ids: Vec<(i64, bool)> =
                    self.watchers.iter().filter(|w| w.range_id == p.range_id).map(|w| (w.id, p.revision > w.next_rev)).collect();
                let mut header = None;
                for (id, behind) in ids {
                    // Revisions between the watcher's next one and this event
                    // were never published here when this replica caught up by
                    // installing a snapshot: replay them from history first
                    // (also cheap when they held no events).
                    if behind && !self.catch_up(id).await {
                        return false;
                    }
                    if !self.deliver(id, p.range_id, p.revision, &p.events, &mut header).await {
                        return false;
                    }
                }
                true
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Too slow: cancel rather than buffer without bound, with
                // `compact_revision` set to the revision to resume from —
                // etcd's handshake: clients see ErrCompacted and re-watch
                // from it (its history is still there), missing nothing.
                let ids: Vec<(i64, i64)> = self.watchers.iter().map(|w| (w.id, w.next_rev)).collect();
                for (id, next) in ids {
                    let reason = format!("watcher too slow ({n} event batches dropped); re-watch from revision {next}");
                    if !self.cancel(id, &reason, next).await {
                        return false;
                    }
                }
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<pb::WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut live = self.hub.subscribe();
        let mut ctx = StreamCtx { backend: self.backend.clone(), hub: self.hub.clone(), out: tx, watchers: Vec::new(), next_id: 1 };
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
                    item = live.recv() => if !ctx.on_live(item).await { break },
                    _ = progress.tick() => {
                        let ranges: Vec<(i64, u64, i64)> = ctx.watchers.iter().filter(|w| w.progress).map(|w| (w.id, w.range_id, w.next_rev)).collect();
                        for (id, range_id, next) in ranges {
                            let header = ctx.header(range_id, next - 1).await;
                            if !ctx.send(pb::WatchResponse { header: Some(header), watch_id: id, ..Default::default() }).await { return; }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
