//! Real `meridian server` processes on loopback, driven by Debian's
//! `etcdctl` (ETCDCTL_API=3) and by a tonic etcd client.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_proto::etcdserverpb as pb;

use meridian_tests::*;

#[test]
fn etcdctl_kv_txn_history_and_status() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &["/payments/"]);
    // Endpoints as URLs, as etcd's docs write them.
    let ep = c.url_endpoints();
    for i in 0..5 {
        ok(&ep, &["put", &format!("/app/k{i}"), &format!("v{i}")]);
    }
    ok(&ep, &["put", "/app/k0", "v0-new"]);
    assert_eq!(ok(&ep, &["get", "/app/", "--prefix", "--keys-only"]).lines().filter(|l| !l.is_empty()).count(), 5);
    let limited = ok(&ep, &["get", "/app/", "--prefix", "--limit=2"]);
    assert_eq!(limited.lines().filter(|l| !l.is_empty()).count(), 4, "two keys and two values: {limited}");
    // Historical read: as in etcd, an empty store is at revision 1, so
    // revision 2 is the first put of k0.
    assert_eq!(ok(&ep, &["get", "/app/k0", "--rev=2", "--print-value-only"]).trim(), "v0");
    assert_eq!(ok(&ep, &["get", "/app/k0", "--print-value-only"]).trim(), "v0-new");
    assert_eq!(ok(&ep, &["del", "/app/k4"]).trim(), "1");
    assert!(ok(&ep, &["get", "/app/k4"]).trim().is_empty());
    // Txn (interactive input on stdin): compare-and-swap.
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .arg("txn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(b"value(\"/app/k1\") = \"v1\"\n\nput /app/k1 swapped\n\nput /app/k1 lost\n\n")?;
            ch.wait_with_output()
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ok(&ep, &["get", "/app/k1", "--print-value-only"]).trim(), "swapped");
    // Namespaced keys live in their own range and revision sequence.
    ok(&ep, &["put", "/payments/p1", "x"]);
    assert_eq!(ok(&ep, &["get", "/payments/", "--prefix", "--print-value-only"]).trim(), "x");
    let status = ok(&ep, &["endpoint", "status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    let members = ok(&ep, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    // HTTP/JSON: written through a follower, read from another node.
    let (code, _) = http_request(&c.members[2].http_addr, "PUT", "/v1/kv/http-key", "{\"value\":\"from-http\"}", "application/json");
    assert_eq!(code, 200);
    let (code, body) = http_get(&c.members[1].http_addr, "/v1/kv/http-key");
    assert_eq!(code, 200);
    assert!(body.contains("from-http"), "{body}");
    let (code, body) = http_get(&c.members[0].http_addr, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("meridian_range_has_leader"), "{body}");
    // The nodes etcdctl's balancer picked counted the puts they served
    // (a follower proposes too: it hands the entry to the leader inside
    // raft, so the leader does not see those requests).
    let bodies: Vec<String> = c.members.iter().map(|m| http_get(&m.http_addr, "/metrics").1).collect();
    assert!(bodies.iter().any(|b| b.contains("meridian_requests_total{op=\"put\",result=\"ok\"}")), "no node counted a put: {bodies:?}");
    // Every node's sync thread made the writes durable and timed it.
    for b in &bodies {
        let secs: f64 = b
            .lines()
            .find(|l| l.starts_with("meridian_store_sync_seconds_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(secs > 0.0, "no fsync time recorded: {b}");
    }
    // Every put reads the range's meta record, a hot record.
    for i in 0..c.members.len() {
        assert!(metric(&c, i, "meridian_read_cache_hits_total ") > 0, "node {i}'s read cache answered nothing");
    }
}

#[test]
fn etcdctl_leases_keepalive_revoke_and_expiry() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    // Endpoints as URLs, as etcd's docs write them.
    let ep = c.url_endpoints();
    let grant = ok(&ep, &["lease", "grant", "30"]);
    let id = grant.split_whitespace().nth(1).expect("lease id").to_string();
    ok(&ep, &["put", "/leased", "v", &format!("--lease={id}")]);
    let ttl = ok(&ep, &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("/leased") && ttl.contains("granted with TTL(30s)"), "{ttl}");
    assert!(ok(&ep, &["lease", "list"]).contains(&id));
    let ka = ok(&ep, &["lease", "keep-alive", "--once", &id]);
    assert!(ka.contains("keepalived with TTL(30)"), "{ka}");
    ok(&ep, &["lease", "revoke", &id]);
    assert!(ok(&ep, &["get", "/leased"]).trim().is_empty(), "revoke deletes attached keys");
    // A short lease nobody keeps alive expires, and its key goes with it.
    let grant = ok(&ep, &["lease", "grant", "2"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    ok(&ep, &["put", "/ephemeral", "v", &format!("--lease={id}")]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && !ok(&ep, &["get", "/ephemeral"]).trim().is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok(&ep, &["get", "/ephemeral"]).trim().is_empty(), "expired lease's key still there");
    eprintln!("2 s lease expired after {:?}", start.elapsed());
    let (success, out) = etcdctl(&ep, &["put", "/x", "v", "--lease=123456"]);
    assert!(!success && out.contains("requested lease not found"), "{out}");
}

#[test]
fn leader_kill9_writes_resume_and_nothing_acknowledged_is_lost() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    let ep = c.endpoints();
    for i in 0..50 {
        ok(&ep, &["put", &format!("/acked/{i:03}"), "v"]);
    }
    let leader = c.leader_of(2).expect("root range leader");
    c.kill9(leader);
    let others: Vec<String> = (0..3).filter(|i| *i != leader).map(|i| c.members[i].client_addr.to_string()).collect();
    let ep2 = others.join(",");
    let start = Instant::now();
    let mut resumed = None;
    while start.elapsed() < Duration::from_secs(20) {
        if etcdctl(&ep2, &["--command-timeout=1s", "put", "/after-kill", "v"]).0 {
            resumed = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = resumed.expect("writes did not resume after killing the leader");
    eprintln!("writes resumed {resumed:?} after kill -9 of the leader (node {})", leader + 1);
    assert_eq!(
        ok(&ep2, &["get", "/acked/", "--prefix", "--keys-only"]).lines().filter(|l| !l.is_empty()).count(),
        50,
        "acknowledged writes lost"
    );
    // The killed node restarts from its data and catches up.
    c.restart(leader);
    c.wait_ready(Duration::from_secs(30));
    let rt = rt();
    let got = rt.block_on(async {
        let mut kv = kv_client(&c, leader).await;
        let start = Instant::now();
        loop {
            let r = kv
                .range(pb::RangeRequest { key: b"/after-kill".to_vec(), serializable: true, ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            if !r.kvs.is_empty() || start.elapsed() > Duration::from_secs(20) {
                return r.kvs.len();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(got, 1, "restarted node did not catch up");
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &["/payments/"]);
    let rt = rt();
    rt.block_on(async {
        let mut kv = kv_client(&c, 0).await;
        kv.put(pb::PutRequest { key: b"/a".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
        let rev = |r: Option<pb::ResponseHeader>| r.map_or(0, |h| h.revision);
        let before = rev(kv.range(pb::RangeRequest { key: b"/a".to_vec(), ..Default::default() }).await.unwrap().into_inner().header);

        let big = kv.put(pb::PutRequest { key: b"/big".to_vec(), value: vec![0; 1_100_000], ..Default::default() }).await.unwrap_err();
        assert_eq!(big.code(), tonic::Code::InvalidArgument, "{big:?}");

        let mut cross = pb::TxnRequest::default();
        for k in ["/a", "/payments/x"] {
            cross.success.push(pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: k.into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            });
        }
        let e = kv.txn(cross).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

        let e = kv.put(pb::PutRequest { key: b"/a".to_vec(), value: b"2".to_vec(), lease: 777, ..Default::default() }).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "etcdserver: requested lease not found"));

        let e = kv.put(pb::PutRequest { key: vec![], value: b"v".to_vec(), ..Default::default() }).await.unwrap_err();
        assert_eq!(e.message(), "etcdserver: key is not provided");

        let e = kv.range(pb::RangeRequest { key: b"/a".to_vec(), revision: 1_000_000, ..Default::default() }).await.unwrap_err();
        assert_eq!(e.message(), "etcdserver: mvcc: required revision is a future revision");

        let after = rev(kv.range(pb::RangeRequest { key: b"/a".to_vec(), ..Default::default() }).await.unwrap().into_inner().header);
        assert_eq!(before, after, "failed requests changed the revision");

        kv.put(pb::PutRequest { key: b"/a".to_vec(), value: b"3".to_vec(), ..Default::default() }).await.unwrap();
        kv.compact(pb::CompactionRequest { revision: after + 1, physical: false }).await.unwrap();
        let e = kv.range(pb::RangeRequest { key: b"/a".to_vec(), revision: after, ..Default::default() }).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"));
    });
    let (code, body) = http_request(&c.members[0].http_addr, "PUT", "/v1/kv/j", "{not json", "application/json");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed JSON"), "{body}");
    let (code, _) = http_get(&c.members[0].http_addr, "/v1/kv/j");
    assert_eq!(code, 404, "the malformed request wrote nothing");
}

#[test]
fn etcdctl_watch_history_prev_kv_and_live_events() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    // Endpoints as URLs, as etcd's docs write them.
    let ep = c.url_endpoints();
    ok(&ep, &["put", "/w/a", "v1"]);
    ok(&ep, &["put", "/w/a", "v2"]);
    ok(&ep, &["del", "/w/a"]);
    // Live watch on a follower's endpoint, started before the next writes.
    let follower = c.members[2].client_addr.to_string();
    let live = Command::new("timeout")
        .args(["6", "etcdctl", &format!("--endpoints={follower}"), "watch", "/w/", "--prefix"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..5 {
        ok(&ep, &["put", &format!("/w/live{i}"), &format!("x{i}")]);
    }
    // History from revision 1 with previous values.
    let hist = Command::new("timeout")
        .args(["3", "etcdctl", &format!("--endpoints={ep}"), "watch", "/w/a", "--rev=1", "--prev-kv"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let hist = String::from_utf8_lossy(&hist.stdout);
    let lines: Vec<&str> = hist.lines().collect();
    // etcdctl prints the previous key-value before the event's own.
    assert_eq!(
        lines,
        ["PUT", "/w/a", "v1", "PUT", "/w/a", "v1", "/w/a", "v2", "DELETE", "/w/a", "v2", "/w/a", ""],
        "history replay:\n{hist}"
    );
    let out = live.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<&str> = text.lines().filter(|l| l.starts_with("/w/live")).collect();
    assert_eq!(keys, ["/w/live0", "/w/live1", "/w/live2", "/w/live3", "/w/live4"], "each event once, in order:\n{text}");
    // A compacted start revision is refused with etcd's error.
    let rev: i64 = {
        let s = ok(&ep, &["put", "/w/z", "z", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    };
    ok(&ep, &["compact", &rev.to_string()]);
    let old = Command::new("timeout")
        .args(["3", "etcdctl", &format!("--endpoints={ep}"), "watch", "/w/a", "--rev=2"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&old.stdout).into_owned() + &String::from_utf8_lossy(&old.stderr);
    assert!(msg.contains("compacted"), "{msg}");
}

#[test]
fn node_down_while_log_compacted_catches_up_by_snapshot() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    let leader = c.leader_of(2).expect("leader");
    let down = (leader + 1) % 3;
    c.kill9(down);
    let live = (0..3).find(|i| *i != down).unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut kv = kv_client(&c, live).await;
        // More than the compaction threshold (1024 entries), so the log the
        // stopped node needs is gone.
        for i in 0..1300 {
            kv.put(pb::PutRequest { key: format!("/bulk/{i:05}").into_bytes(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
        }
    });
    c.restart(down);
    c.wait_ready(Duration::from_secs(30));
    let start = Instant::now();
    let caught_up = rt.block_on(async {
        let mut kv = kv_client(&c, down).await;
        loop {
            let r = kv
                .range(pb::RangeRequest {
                    key: b"/bulk/".to_vec(),
                    range_end: b"/bulk0".to_vec(),
                    count_only: true,
                    serializable: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if r.count == 1300 || start.elapsed() > Duration::from_secs(30) {
                return r.count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(caught_up, 1300, "restarted node has every key");
    assert!(metric(&c, down, "meridian_store_snapshots_installed_total") >= 1, "it caught up by installing a snapshot");
}

#[test]
fn lease_ttl_survives_leader_change_without_reset_or_shortening() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    let ep = c.endpoints();
    let id = ok(&ep, &["lease", "grant", "60"]).split_whitespace().nth(1).unwrap().to_string();
    // The leader checkpoints remaining TTLs every ~5 s; after 12 s at least
    // one checkpoint is 7 s or more into the lease.
    std::thread::sleep(Duration::from_secs(12));
    let leader = c.leader_of(2).expect("leader");
    c.kill9(leader);
    let ep2: String = (0..3).filter(|i| *i != leader).map(|i| c.members[i].client_addr.to_string()).collect::<Vec<_>>().join(",");
    let start = Instant::now();
    let mut ttl = None;
    while start.elapsed() < Duration::from_secs(20) {
        let (success, out) = etcdctl(&ep2, &["--command-timeout=2s", "lease", "timetolive", &id]);
        if success {
            // "lease X granted with TTL(60s), remaining(53s)"
            ttl = out.split("remaining(").nth(1).and_then(|r| r.split('s').next()).and_then(|n| n.parse::<i64>().ok());
            if ttl.is_some() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ttl = ttl.expect("time-to-live after failover");
    eprintln!("remaining TTL after failover: {ttl}s of 60s");
    assert!(ttl <= 55, "the new leader restarted the lease from (nearly) its full TTL ({ttl}s)");
    assert!(ttl > 30, "the new leader shortened the lease ({ttl}s)");
}

#[test]
fn etcd_client_crate_kv_watch_lease_txn() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_addr.to_string()).collect();
    rt().block_on(async {
        use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
        let mut client = Client::connect(&endpoints, None).await.expect("connect");
        client.put("/lib/a", "1", None).await.unwrap();
        client.put("/lib/b", "2", None).await.unwrap();
        let r = client.get("/lib/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(r.kvs().len(), 2);
        assert_eq!(r.kvs()[1].value_str().unwrap(), "2");

        let (mut watcher, mut stream) = client.watch("/lib/", Some(WatchOptions::new().with_prefix().with_prev_key())).await.unwrap();
        client.put("/lib/a", "1b", None).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = stream.message().await.unwrap().unwrap();
                if !m.events().is_empty() {
                    return m;
                }
            }
        })
        .await
        .expect("watch event");
        let ev = &resp.events()[0];
        assert_eq!(ev.event_type(), EventType::Put);
        assert_eq!(ev.kv().unwrap().value_str().unwrap(), "1b");
        assert_eq!(ev.prev_kv().unwrap().value_str().unwrap(), "1");
        watcher.cancel().await.unwrap();

        let lease = client.lease_grant(10, None).await.unwrap();
        client.put("/lib/ttl", "x", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
        let (mut keeper, mut ka) = client.lease_keep_alive(lease.id()).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let k = ka.message().await.unwrap().unwrap();
        assert_eq!(k.ttl(), 10);
        let ttl = client.lease_time_to_live(lease.id(), None).await.unwrap();
        assert!(ttl.ttl() > 0 && ttl.ttl() <= 10);

        let txn = Txn::new()
            .when(vec![Compare::value("/lib/b", CompareOp::Equal, "2")])
            .and_then(vec![TxnOp::put("/lib/b", "3", None)])
            .or_else(vec![TxnOp::get("/lib/b", None)]);
        assert!(client.txn(txn).await.unwrap().succeeded());
        let r = client.get("/lib/b", None).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), "3");
        let members = client.member_list().await.unwrap();
        assert_eq!(members.members().len(), 3);
        client.lease_revoke(lease.id()).await.unwrap();
        assert_eq!(client.get("/lib/ttl", None).await.unwrap().kvs().len(), 0);
    });
}

#[test]
fn etcdctl_lock_gives_mutual_exclusion() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let log = c.configs[0].parent().unwrap().join("critical-section.log");
    let script = format!("echo in $$ >> {0}; sleep 0.3; echo out $$ >> {0}", log.display());
    // Three contenders, each against a different node.
    let children: Vec<Child> = (0..3)
        .map(|i| {
            Command::new("timeout")
                .args(["30", "etcdctl"])
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints=http://{}", c.members[i].client_addr))
                .args(["lock", "/locks/job", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        assert!(out.status.success(), "etcdctl lock failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for pair in lines.chunks(2) {
        let (a, b) = (pair[0].split_whitespace().collect::<Vec<_>>(), pair[1].split_whitespace().collect::<Vec<_>>());
        assert_eq!((a[0], b[0], a[1]), ("in", "out", b[1]), "critical sections overlapped:\n{text}");
    }
    let err = rt().block_on(async {
        use meridian_proto::v3lockpb::{lock_client::LockClient, LockRequest};
        let mut lc = LockClient::connect(format!("http://{}", c.members[0].client_addr)).await.unwrap();
        lc.lock(LockRequest { name: vec![], lease: 1 }).await.unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "empty lock name: {err:?}");
}

#[test]
fn every_authority_form_etcd_clients_send_is_accepted() {
    use prost::Message as _;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let addr = c.members[0].client_addr.to_string();
    ok(&c.url_endpoints(), &["put", "/forms/k", "v"]);
    // etcdctl 3.4 sends the endpoint as written: both forms work.
    for ep in [c.url_endpoints(), c.endpoints(), format!("http://{addr}")] {
        assert_eq!(ok(&ep, &["get", "/forms/k", "--print-value-only"]).trim(), "v", "endpoints {ep}");
        ok(&ep, &["endpoint", "status"]);
    }
    // Forms other Go clients send (grpc targets, etcd 3.5's several-endpoint
    // authority, unix sockets), sent by hand since no Rust client lets them through.
    let req = meridian_proto::etcdserverpb::RangeRequest { key: b"/forms/k".to_vec(), ..Default::default() }.encode_to_vec();
    for authority in [
        addr.clone(),
        format!("http://{addr}"),
        format!("https://{addr}/"),
        format!("passthrough:///{addr}"),
        format!("#initially=[http://{addr};http://127.0.0.9:1]"),
        "unix:///var/run/etcd.sock".to_string(),
    ] {
        let reply = raw_grpc_call(&addr, &authority, "/etcdserverpb.KV/Range", &req).unwrap_or_else(|e| panic!("{authority}: {e}"));
        let resp = meridian_proto::etcdserverpb::RangeResponse::decode(&reply[5..]).expect("a RangeResponse");
        assert_eq!(resp.kvs[0].value, &b"v"[..], "{authority}");
    }
}

/// The ranges node `i` leads, from its HTTP status.
fn ranges_led_by(c: &ProcCluster, i: usize) -> Vec<u64> {
    let (_, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["ranges"].as_array().unwrap().iter().filter(|r| r["role"] == "Leader").map(|r| r["range_id"].as_u64().unwrap()).collect()
}

#[test]
fn etcdctl_move_leader_hashkv_and_defrag() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &["/payments/"]);
    let ep = c.url_endpoints();
    let root = meridian_server::routing::ROOT_RANGE_ID;
    let l = c.leader_of(root).expect("a root leader");
    let led = ranges_led_by(&c, l);
    assert!(led.contains(&root));
    let t = (l + 1) % 3;
    // Not a member: etcd's error, and nothing moves.
    let (success, out) = etcdctl(&ep, &["move-leader", "ff"]);
    assert!(!success && out.contains("bad leader transferee"), "{out}");
    assert_eq!(ranges_led_by(&c, l), led, "a refused move moves nothing");
    // To a member: every range led there is led by the target when
    // etcdctl returns.
    let out = ok(&ep, &["move-leader", &format!("{:x}", c.members[t].id)]);
    assert!(out.contains("Leadership transferred"), "{out}");
    let now = ranges_led_by(&c, t);
    assert!(led.iter().all(|r| now.contains(r)), "led before by node {l}: {led:?}; by the target now: {now:?}");
    // Writes go on.
    ok(&ep, &["put", "/after-move", "v"]);
    ok(&ep, &["put", "/payments/p", "v"]);
    // `endpoint hashkv`: every replica hashes the same once it has applied
    // the writes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ok(&ep, &["endpoint", "hashkv"]);
        let hashes: Vec<&str> = out.lines().filter_map(|l| l.split(", ").nth(1)).collect();
        assert_eq!(hashes.len(), 3, "{out}");
        if hashes.iter().all(|h| *h == hashes[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas still differ: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `defrag` on every member; the data stays and writes go on.
    let out = ok(&ep, &["defrag"]);
    assert_eq!(out.matches("Finished defragmenting etcd member").count(), 3, "{out}");
    assert_eq!(ok(&ep, &["get", "/payments/p", "--print-value-only"]).trim(), "v");
    ok(&ep, &["put", "/after-defrag", "v"]);
}

/// etcd's Lock API (what every etcd client library's `lock()` calls):
/// contenders on every node never overlap, each grant's fencing token (its
/// key's create revision) is above the previous one, a waiter wakes when
/// the holder unlocks, and `etcdctl lock` (the same recipe over KV and
/// Watch) waits for a Lock API holder.
#[test]
fn etcd_lock_api_excludes_across_nodes_and_excludes_etcdctl_lock() {
    use meridian_proto::etcdserverpb::lease_client::LeaseClient;
    use meridian_proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let addrs: Vec<String> = c.members.iter().map(|m| format!("http://{}", m.client_addr)).collect();
    rt().block_on(async {
        let holders = Arc::new(AtomicUsize::new(0));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (addr, holders, tokens) = (addrs[i % 3].clone(), holders.clone(), tokens.clone());
            tasks.push(tokio::spawn(async move {
                let lease =
                    LeaseClient::connect(addr.clone()).await.unwrap().lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 }).await.unwrap();
                let lease = lease.into_inner().id;
                let mut lc = LockClient::connect(addr.clone()).await.unwrap();
                let mut kv = pb::kv_client::KvClient::connect(addr).await.unwrap();
                for _ in 0..5 {
                    let key = lc.lock(LockRequest { name: b"/jobs/etcd-api".to_vec(), lease }).await.unwrap().into_inner().key;
                    assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                    let token = kv.range(pb::RangeRequest { key: key.clone(), ..Default::default() }).await.unwrap().into_inner().kvs[0]
                        .create_revision;
                    tokens.lock().unwrap().push(token);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    holders.fetch_sub(1, Ordering::SeqCst);
                    lc.unlock(UnlockRequest { key }).await.unwrap();
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t).await.expect("every contender done in time").unwrap();
        }
        let tokens = tokens.lock().unwrap().clone();
        assert_eq!(tokens.len(), 30);
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens in grant order must increase: {tokens:?}");

        // A Lock API holder keeps `etcdctl lock` waiting until it unlocks.
        let lease =
            LeaseClient::connect(addrs[0].clone()).await.unwrap().lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 }).await.unwrap();
        let mut lc = LockClient::connect(addrs[0].clone()).await.unwrap();
        let key = lc.lock(LockRequest { name: b"/jobs/mixed".to_vec(), lease: lease.into_inner().id }).await.unwrap().into_inner().key;
        let mut waiter = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", addrs[1]))
            .args(["lock", "/jobs/mixed", "--", "echo", "got-it"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(waiter.try_wait().unwrap().is_none(), "etcdctl lock got the lock while the Lock API held it");
        lc.unlock(UnlockRequest { key }).await.unwrap();
        let started = Instant::now();
        while waiter.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "etcdctl lock never got the released lock");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut out = String::new();
        std::io::Read::read_to_string(waiter.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(out.contains("got-it"), "{out}");
    });
}

/// A Lock call that gives up (its client's deadline) takes its key out of
/// the queue, as etcd's mutex does: left behind, it would later hold the
/// lock for nobody while its lease lives.
#[test]
fn a_lock_call_that_gives_up_leaves_no_key_in_the_queue() {
    use meridian_proto::etcdserverpb::lease_client::LeaseClient;
    use meridian_proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let addr = format!("http://{}", c.members[1].client_addr);
    rt().block_on(async {
        let mut leases = LeaseClient::connect(addr.clone()).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(leases.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().into_inner().id);
        }
        let mut lc = LockClient::connect(addr.clone()).await.unwrap();
        let mut kv = pb::kv_client::KvClient::connect(addr).await.unwrap();
        let held = lc.lock(LockRequest { name: b"/q/l".to_vec(), lease: ids[0] }).await.unwrap().into_inner().key;
        // The second caller waits behind the holder and gives up after 1 s.
        let mut req = tonic::Request::new(LockRequest { name: b"/q/l".to_vec(), lease: ids[1] });
        req.set_timeout(Duration::from_secs(1));
        let e = lc.lock(req).await.unwrap_err();
        assert!(matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{e:?}");
        let waiter_key = format!("/q/l/{:x}", ids[1]).into_bytes();
        let start = Instant::now();
        loop {
            let r = kv.range(pb::RangeRequest { key: waiter_key.clone(), ..Default::default() }).await.unwrap().into_inner();
            if r.kvs.is_empty() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "the abandoned waiter's key is still queued");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Released, the lock goes to the next live caller at once.
        lc.unlock(UnlockRequest { key: held }).await.unwrap();
        let mut req = tonic::Request::new(LockRequest { name: b"/q/l".to_vec(), lease: ids[2] });
        req.set_timeout(Duration::from_secs(5));
        let got = lc.lock(req).await.expect("the third caller gets the lock").into_inner().key;
        assert_eq!(got, format!("/q/l/{:x}", ids[2]).into_bytes());
    });
}
