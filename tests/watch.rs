//! Watch semantics as etcd's clients rely on them, on real processes:
//! replayed history batched (whole revisions, as few responses as the size
//! limit allows), a watch from the compaction revision, fragments, filters,
//! cancel by id, progress requests, and bad input refused as etcd refuses
//! it. The `etcd-client` crate for what a library user does, a raw tonic
//! stream where the test needs fields that crate hides (`fragment`).

// Real processes on real time.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::watch_client::WatchClient;
use meridian_server::routing::prefix_end;
use meridian_tests::*;

/// One raw watch stream to a node.
struct RawWatch {
    tx: tokio::sync::mpsc::Sender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

impl RawWatch {
    async fn open(c: &ProcCluster, i: usize) -> RawWatch {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.members[i].client_addr)).unwrap().connect().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let rx = WatchClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        RawWatch { tx, rx }
    }

    async fn send(&self, r: pb::watch_request::RequestUnion) {
        self.tx.send(pb::WatchRequest { request_union: Some(r) }).await.unwrap();
    }

    async fn create(&self, r: pb::WatchCreateRequest) {
        self.send(pb::watch_request::RequestUnion::CreateRequest(r)).await;
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(Duration::from_secs(15), self.rx.message())
            .await
            .expect("a watch response in time")
            .unwrap()
            .expect("stream open")
    }

    /// True if nothing arrives within `d`.
    async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.rx.message()).await.is_err()
    }
}

#[test]
fn history_is_batched_and_the_compaction_revision_is_watchable_with_etcd_client() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_addr.to_string()).collect();
    rt().block_on(async {
        use etcd_client::{Client, CompactionOptions, WatchOptions};
        let mut client = Client::connect(&endpoints, None).await.unwrap();
        let first = client.put("/h/k", "v1", None).await.unwrap().header().unwrap().revision();
        client.put("/h/k", "v2", None).await.unwrap();
        // Two puts, then a watch from the first: one response, both events.
        let (_w, mut stream) = client.watch("/h/k", Some(WatchOptions::new().with_start_revision(first))).await.unwrap();
        let mut resp = stream.message().await.unwrap().unwrap();
        while resp.created() && resp.events().is_empty() {
            resp = stream.message().await.unwrap().unwrap();
        }
        let values: Vec<&str> = resp.events().iter().map(|e| e.kv().unwrap().value_str().unwrap()).collect();
        assert_eq!(values, ["v1", "v2"], "both replayed events in one response");

        // Compact at the last put: a watch from there streams it; one
        // revision lower is compacted.
        let last = client.put("/h/k", "v3", None).await.unwrap().header().unwrap().revision();
        client.compact(last, Some(CompactionOptions::new().with_physical())).await.unwrap();
        let (_w, mut stream) = client.watch("/h/k", Some(WatchOptions::new().with_start_revision(last))).await.unwrap();
        let mut resp = stream.message().await.unwrap().unwrap();
        while resp.created() && resp.events().is_empty() && !resp.canceled() {
            resp = stream.message().await.unwrap().unwrap();
        }
        assert!(!resp.canceled(), "a watch at the compaction revision is valid: {resp:?}");
        assert_eq!(resp.events()[0].kv().unwrap().value_str().unwrap(), "v3");
        let (_w, mut stream) = client.watch("/h/k", Some(WatchOptions::new().with_start_revision(last - 1))).await.unwrap();
        let mut resp = stream.message().await.unwrap().unwrap();
        while !resp.canceled() {
            resp = stream.message().await.unwrap().unwrap();
        }
        assert_eq!(resp.compact_revision(), last);
    });
}

#[test]
fn fragments_filters_cancel_progress_and_bad_input_as_etcd() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    rt().block_on(async {
        let mut kv = kv_client(&c, 0).await;
        // Four 500 KB values, one revision each.
        let big = vec![b'x'; 500 << 10];
        let mut revs = Vec::new();
        for i in 0..4 {
            let r = kv.put(pb::PutRequest { key: format!("/big/{i}").into(), value: big.clone(), ..Default::default() }).await.unwrap();
            revs.push(r.into_inner().header.unwrap().revision);
        }
        let watch_big = |start: i64, prev_kv: bool, fragment: bool| pb::WatchCreateRequest {
            key: b"/big/".to_vec(),
            range_end: prefix_end(b"/big/"),
            start_revision: start,
            prev_kv,
            fragment,
            ..Default::default()
        };

        // Replay of 2 MB over four revisions: batched under the limit, and
        // no revision split between responses.
        let mut w = RawWatch::open(&c, 0).await;
        w.create(watch_big(revs[0], false, false)).await;
        assert!(w.next().await.created);
        let (mut seen, mut responses) = (Vec::new(), 0);
        while seen.len() < 4 {
            let r = w.next().await;
            responses += 1;
            seen.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
        assert_eq!(seen, revs);
        assert!((2..=3).contains(&responses), "{responses} responses for 2 MB of history");

        // One revision of 2 MB (a delete with prev_kv): whole without
        // `fragment`, in fragments with it.
        let del = kv
            .delete_range(pb::DeleteRangeRequest { key: b"/big/".to_vec(), range_end: prefix_end(b"/big/"), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        let mut whole = RawWatch::open(&c, 1).await;
        whole.create(watch_big(del, true, false)).await;
        assert!(whole.next().await.created);
        let r = whole.next().await;
        assert_eq!((r.events.len(), r.fragment), (4, false));
        assert!(r.events.iter().all(|e| e.prev_kv.as_ref().is_some_and(|p| p.value.len() == 500 << 10)));
        // Node 2 has applied the delete: its watch replays it from history
        // (the path that streams fragments as it reads).
        let mut kv2 = kv_client(&c, 2).await;
        while kv2
            .range(pb::RangeRequest { key: b"/big/0".to_vec(), serializable: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision
            < del
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut frag = RawWatch::open(&c, 2).await;
        frag.create(watch_big(del, true, true)).await;
        assert!(frag.next().await.created);
        let mut pieces = Vec::new();
        loop {
            let r = frag.next().await;
            let more = r.fragment;
            pieces.push(r.events.len());
            if !more {
                break;
            }
        }
        assert!(pieces.len() >= 2, "fragments: {pieces:?}");
        assert_eq!(pieces.iter().sum::<usize>(), 4);

        // NOPUT: only the delete arrives.
        let mut f = RawWatch::open(&c, 0).await;
        f.create(pb::WatchCreateRequest { key: b"/f/a".to_vec(), filters: vec![0], watch_id: 7, ..Default::default() }).await;
        let created = f.next().await;
        assert_eq!((created.created, created.watch_id), (true, 7));
        kv.put(pb::PutRequest { key: b"/f/a".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
        kv.delete_range(pb::DeleteRangeRequest { key: b"/f/a".to_vec(), ..Default::default() }).await.unwrap();
        let r = f.next().await;
        assert_eq!(r.events.iter().map(|e| e.r#type).collect::<Vec<_>>(), [1], "only the DELETE");

        // Bad input: etcd's answers, and nothing changes.
        f.create(pb::WatchCreateRequest { key: b"/f/b".to_vec(), watch_id: 7, ..Default::default() }).await;
        let r = f.next().await;
        assert_eq!((r.created, r.canceled, r.watch_id), (true, true, -1));
        assert_eq!(r.cancel_reason, "mvcc: duplicate watch ID provided on the WatchStream");
        f.create(pb::WatchCreateRequest { key: b"/f/b".to_vec(), range_end: b"/f/a".to_vec(), ..Default::default() }).await;
        let r = f.next().await;
        assert_eq!((r.canceled, r.watch_id, r.cancel_reason.as_str()), (true, -1, "mvcc: watcher range is empty"));
        f.create(pb::WatchCreateRequest { key: b"/f/b".to_vec(), start_revision: -1, ..Default::default() }).await;
        let r = f.next().await;
        assert_eq!(
            (r.canceled, r.watch_id, r.cancel_reason.as_str()),
            (true, -1, "etcdserver: mvcc: required revision has been compacted")
        );

        // Cancel of an unknown id: no answer (a progress request's answer
        // comes next); cancel of watcher 7: canceled, with its id.
        f.send(pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest { watch_id: 999 })).await;
        f.send(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})).await;
        let r = f.next().await;
        assert_eq!((r.watch_id, r.canceled, r.events.len()), (-1, false, 0), "a progress answer, not a cancel: {r:?}");
        assert!(r.header.unwrap().revision >= del + 2);
        f.send(pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest { watch_id: 7 })).await;
        let r = f.next().await;
        assert_eq!((r.watch_id, r.canceled), (7, true));

        // A stream with no watcher gets no progress answer.
        let mut empty = RawWatch::open(&c, 0).await;
        empty.send(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})).await;
        assert!(empty.quiet_for(Duration::from_secs(1)).await);
    });
}

/// Writes `total` 4 KB values under `prefix` from 16 tasks and returns the
/// revision of the last write.
async fn fill(c: &ProcCluster, prefix: &str, total: usize) -> i64 {
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut kv = kv_client(c, 0).await;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in (t..total).step_by(16) {
                let r = kv
                    .put(pb::PutRequest { key: format!("{prefix}{i:05}").into(), value: vec![b'v'; 4096], ..Default::default() })
                    .await
                    .unwrap();
                last = r.into_inner().header.unwrap().revision;
            }
            last
        }));
    }
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    last
}

/// Reads `w` until `total` events arrived or the watch is canceled; checks
/// every key arrives at most once and revisions only increase. Returns the
/// events seen and the cancel, if one came.
async fn read_all(w: &mut RawWatch, total: usize) -> (usize, Option<pb::WatchResponse>) {
    let mut keys = std::collections::HashSet::new();
    let mut last_rev = 0;
    while keys.len() < total {
        let r = w.next().await;
        if r.canceled {
            return (keys.len(), Some(r));
        }
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            assert!(kv.mod_revision > last_rev, "revisions only increase: {} after {last_rev}", kv.mod_revision);
            last_rev = kv.mod_revision;
            assert!(keys.insert(kv.key.clone()), "{:?} delivered twice", String::from_utf8_lossy(&kv.key));
        }
    }
    (keys.len(), None)
}

/// A watcher whose client stops reading is not allowed to grow the
/// server's memory: once the node's event feed has moved on by more than
/// it buffers, the stream is brought up to date from the log when its
/// client reads again — every event once, in order, none lost — as etcd
/// replays its unsynced watchers from its store. If what it still needs is
/// compacted meanwhile, it is canceled with etcd's handshake
/// (`compact_revision` set to the compaction revision).
#[test]
fn a_watcher_that_stops_reading_catches_up_from_the_log_or_is_canceled_if_compacted() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    // More batches than the node buffers (HUB_CAPACITY), while the client
    // reads nothing; 4 KB values fill HTTP/2's flow-control windows and the
    // stream's own buffer (megabytes) early, so the server's sender stalls.
    let total = meridian_server::watch_service::HUB_CAPACITY + 3000;
    rt().block_on(async {
        let mut w = RawWatch::open(&c, 0).await;
        w.create(pb::WatchCreateRequest { key: b"/slow/".to_vec(), range_end: prefix_end(b"/slow/"), ..Default::default() }).await;
        assert!(w.next().await.created);
        let resyncs = metric(&c, 0, "meridian_watch_resyncs_total");
        fill(&c, "/slow/", total).await;
        let (seen, canceled) = read_all(&mut w, total).await;
        assert!(canceled.is_none(), "not canceled: {canceled:?}");
        assert_eq!(seen, total);
        assert!(metric(&c, 0, "meridian_watch_resyncs_total") > resyncs, "the stream fell behind the live feed and caught up from the log");
        assert!(w.quiet_for(Duration::from_millis(500)).await, "nothing more than the {total} events");

        // The same, with the history compacted while the client is away.
        let mut w = RawWatch::open(&c, 0).await;
        w.create(pb::WatchCreateRequest { key: b"/gone/".to_vec(), range_end: prefix_end(b"/gone/"), ..Default::default() }).await;
        assert!(w.next().await.created);
        let cancels = metric(&c, 0, "meridian_watch_compacted_cancels_total");
        let last = fill(&c, "/gone/", total).await;
        let mut kv = kv_client(&c, 0).await;
        kv.compact(pb::CompactionRequest { revision: last, physical: true }).await.unwrap();
        let (seen, canceled) = read_all(&mut w, total).await;
        let canceled = canceled.expect("the watch is canceled: what it needs was compacted");
        assert!(seen < total, "all {total} events arrived: nothing was cut");
        assert_eq!(canceled.cancel_reason, "etcdserver: mvcc: required revision has been compacted");
        assert_eq!(canceled.compact_revision, last, "compact_revision is the compaction revision");
        assert_eq!(metric(&c, 0, "meridian_watch_compacted_cancels_total"), cancels + 1);
    });
}

/// A stream that fell behind the node's event feed lost, with the events,
/// the notice that a namespace was carved out of what it watches: it still
/// learns of it (the hub keeps a log of carves), after every event it is
/// owed, and its watch ends saying why.
#[test]
fn a_stream_that_fell_behind_still_learns_of_a_namespace_carved_meanwhile() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    // Before the carve, more than the stream's buffers and HTTP/2's windows
    // hold (so its sender stalls); after it, more than the feed buffers.
    let (before, after) = (3000, meridian_server::watch_service::HUB_CAPACITY + 2000);
    rt().block_on(async {
        let mut w = RawWatch::open(&c, 0).await;
        w.create(pb::WatchCreateRequest { key: b"/lag/".to_vec(), range_end: prefix_end(b"/lag/"), ..Default::default() }).await;
        assert!(w.next().await.created);
        let resyncs = metric(&c, 0, "meridian_watch_resyncs_total");
        fill(&c, "/lag/a/", before).await;
        let out = std::process::Command::new(meridian_bin())
            .args(["namespace", "create", "/lag/b/", "--http", &c.members[0].http_addr])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Enough after the carve that its notice leaves the feed's buffer.
        fill(&c, "/lag/c/", after).await;
        let (seen, canceled) = read_all(&mut w, before + after + 1).await;
        assert_eq!(seen, before + after, "every event of the root's keys, once");
        let canceled = canceled.expect("the watch ends: part of it moved to a new namespace");
        assert!(canceled.cancel_reason.contains("/lag/b/"), "{}", canceled.cancel_reason);
        assert!(metric(&c, 0, "meridian_watch_resyncs_total") > resyncs, "the stream fell behind and caught up from the log");
    });
}
