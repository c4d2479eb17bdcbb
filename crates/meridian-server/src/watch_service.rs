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

#[derive(Debug)]
pub struct Published {
    pub range_id: u64,
    pub revision: i64,
    pub events: Vec<Event>,
    /// The range's replica left this node: its watchers here are cancelled
    /// so their clients re-watch on another member.
    pub removed: bool,
}

/// Fan-out of applied events. Publishing never blocks the store thread.
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Published>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub { tx: broadcast::channel(HUB_CAPACITY).0 }
    }
}

impl WatchHub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }
}

impl EventSink for WatchHub {
    fn publish(&self, range_id: u64, revision: i64, events: &[Event]) {
        // No receivers is fine; a full buffer drops the oldest for laggards.
        let _ = self.tx.send(Arc::new(Published { range_id, revision, events: events.to_vec(), removed: false }));
    }

    fn range_removed(&self, range_id: u64) {
        let _ = self.tx.send(Arc::new(Published { range_id, revision: 0, events: Vec::new(), removed: true }));
    }
}

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
}

impl Watcher {
    fn matches(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else {
            key >= self.key.as_slice() && (self.range_end == [0] || key < self.range_end.as_slice())
        }
    }

    /// The client-visible events of one revision.
    fn select(&self, events: &[Event]) -> Vec<mvccpb::Event> {
        events
            .iter()
            .filter(|e| e.kv.as_ref().is_some_and(|kv| self.matches(&kv.key)))
            .filter(|e| !(e.is_delete() && self.no_delete || !e.is_delete() && self.no_put))
            .map(|e| mvccpb::Event {
                r#type: e.kind,
                kv: e.kv.clone().map(kv_out),
                prev_kv: if self.prev_kv { e.prev_kv.clone().map(kv_out) } else { None },
            })
            .collect()
    }
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

    async fn cancel(&mut self, id: i64, reason: &str, compact_revision: i64) -> bool {
        let range_id = self.watchers.iter().find(|w| w.id == id).map_or(crate::routing::ROOT_RANGE_ID, |w| w.range_id);
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
        let id = if r.watch_id > 0 { r.watch_id } else { self.next_id };
        self.next_id = self.next_id.max(id) + 1;
        let fail =
            |reason: String| pb::WatchResponse { watch_id: id, created: true, canceled: true, cancel_reason: reason, ..Default::default() };
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            return self.send(fail(format!("too many watchers on one stream (max {MAX_WATCHERS_PER_STREAM})"))).await;
        }
        if self.watchers.iter().any(|w| w.id == id) {
            return self.send(fail("etcdserver: duplicate watch ID provided".into())).await;
        }
        let range_id = match self.backend.routing().range_of_interval(&r.key, &r.range_end) {
            Ok(x) => x,
            Err(e) => return self.send(fail(e.to_string())).await,
        };
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
        };
        let header = self.header(range_id, start - 1).await;
        if !self.send(pb::WatchResponse { header: Some(header), watch_id: id, created: true, ..Default::default() }).await {
            return false;
        }
        self.watchers.push(w);
        self.catch_up(id).await
    }

    /// Replays history from the watcher's next revision, in bounded pages.
    async fn catch_up(&mut self, id: i64) -> bool {
        loop {
            let Some(w) = self.watchers.iter().find(|w| w.id == id) else { return true };
            let (range_id, from) = (w.range_id, w.next_rev);
            let q = c::QueryKind::Events(c::EventsOp { from_revision: from, limit: 1000 });
            let a = match self.backend.query(range_id, q, false).await {
                Ok(a) => a,
                Err(ApiError::Compacted { compact_revision }) => {
                    return self.cancel(id, "etcdserver: mvcc: required revision has been compacted", compact_revision).await;
                }
                Err(e) => return self.cancel(id, &e.to_string(), 0).await,
            };
            if a.events.is_empty() {
                return true;
            }
            let last = a.events.last().map_or(from, |e| e.revision);
            // Group by revision so each response is one revision's events.
            let mut i = 0;
            while i < a.events.len() {
                let rev = a.events[i].revision;
                let mut j = i;
                while j < a.events.len() && a.events[j].revision == rev {
                    j += 1;
                }
                let evs: Vec<Event> = a.events[i..j].iter().filter_map(|e| e.event.clone()).collect();
                if !self.deliver(id, rev, &evs).await {
                    return false;
                }
                i = j;
            }
            if let Some(w) = self.watchers.iter_mut().find(|w| w.id == id) {
                w.next_rev = w.next_rev.max(last + 1);
            }
            if a.events.len() < 1000 {
                return true;
            }
        }
    }

    async fn deliver(&mut self, id: i64, revision: i64, events: &[Event]) -> bool {
        let Some(w) = self.watchers.iter_mut().find(|w| w.id == id) else { return true };
        if revision < w.next_rev {
            return true; // already sent (catch-up and live overlap, or a replay after restart)
        }
        w.next_rev = revision + 1;
        let selected = w.select(events);
        let range_id = w.range_id;
        if selected.is_empty() {
            return true;
        }
        let header = self.header(range_id, revision).await;
        self.send(pb::WatchResponse { header: Some(header), watch_id: id, events: selected, ..Default::default() }).await
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<pb::WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut live = self.hub.subscribe();
        let mut ctx = StreamCtx { backend: self.backend.clone(), out: tx, watchers: Vec::new(), next_id: 1 };
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
                            Some(RequestUnion::ProgressRequest(_)) => {
                                let (range_id, key) =
                                    ctx.watchers.first().map_or((crate::routing::ROOT_RANGE_ID, vec![0]), |w| (w.range_id, w.key.clone()));
                                let rev = current_revision(&ctx.backend, range_id, &key).await.unwrap_or(0);
                                let header = ctx.header(range_id, rev).await;
                                ctx.send(pb::WatchResponse { header: Some(header), watch_id: -1, ..Default::default() }).await
                            }
                            None => true,
                        };
                        if !alive { break; }
                    }
                    item = live.recv() => match item {
                        Ok(p) if p.removed => {
                            let ids: Vec<(i64, i64)> = ctx.watchers.iter().filter(|w| w.range_id == p.range_id).map(|w| (w.id, w.next_rev)).collect();
                            for (id, next) in ids {
                                let reason = format!("range {} no longer has a replica on this node; re-watch from revision {next} on another member", p.range_id);
                                if !ctx.cancel(id, &reason, 0).await { return; }
                            }
                        }
                        Ok(p) => {
                            let ids: Vec<(i64, bool)> = ctx
                                .watchers
                                .iter()
                                .filter(|w| w.range_id == p.range_id)
                                .map(|w| (w.id, p.revision > w.next_rev))
                                .collect();
                            for (id, behind) in ids {
                                // Revisions between the watcher's next one and
                                // this event were never published here when
                                // this replica caught up by installing a
                                // snapshot: replay them from history first
                                // (also cheap when they held no events).
                                if behind && !ctx.catch_up(id).await { return; }
                                if !ctx.deliver(id, p.revision, &p.events).await { return; }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            // Too slow: cancel rather than buffer without bound.
                            let ids: Vec<(i64, i64)> = ctx.watchers.iter().map(|w| (w.id, w.next_rev)).collect();
                            for (id, next) in ids {
                                let reason = format!("watcher too slow ({n} event batches dropped); re-watch from revision {next}");
                                if !ctx.cancel(id, &reason, 0).await { return; }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
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
