//! Namespaces at runtime on real `meridian server` processes:
//! `meridian namespace create` carves a prefix out of the root namespace
//! (keys already under it move along with their revisions), etcdctl uses
//! it at once through every member, bad input is refused and changes
//! nothing, a restarted member serves it, and `drop` gives the prefix back
//! with revisions that never go back.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

use meridian_tests::*;

/// `meridian namespace ARGS --http ADDR`: success and output.
fn namespace(http: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(meridian_bin()).arg("namespace").args(args).args(["--http", http]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// `etcdctl get KEY -w json` on `endpoint`: (value, mod_revision, header revision).
fn get(endpoint: &str, key: &str) -> (String, i64, i64) {
    let v: serde_json::Value = serde_json::from_str(&ok(endpoint, &["get", key, "-w", "json"])).unwrap();
    let kv = &v["kvs"][0];
    let value = kv["value"].as_str().map(|b| String::from_utf8(b64(b)).unwrap()).unwrap_or_default();
    (value, kv["mod_revision"].as_i64().unwrap_or(0), v["header"]["revision"].as_i64().unwrap())
}

fn put_rev(endpoint: &str, key: &str, value: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(&ok(endpoint, &["put", key, value, "-w", "json"])).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// Base64 (etcdctl's JSON output encodes bytes so).
fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (val(*c) as u32) << (18 - 6 * i));
        let take = chunk.len() - 1;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

#[test]
fn a_namespace_created_at_runtime_takes_its_keys_along_and_serves_at_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    c.wait_ready(Duration::from_secs(60));
    let all = c.endpoints();
    let ep: Vec<String> = c.members.iter().map(|m| m.client_addr.to_string()).collect();
    let http: Vec<String> = c.members.iter().map(|m| m.http_addr.to_string()).collect();

    ok(&all, &["put", "/orders/a", "1"]);
    ok(&all, &["put", "/orders/b", "2"]);
    ok(&all, &["put", "/plain", "3"]);
    let (_, a_rev, root_rev) = get(&ep[0], "/orders/a");
    let lease_out = ok(&all, &["lease", "grant", "600"]);
    let lease = lease_out.split_whitespace().nth(1).unwrap().to_string();
    ok(&all, &["put", "/leased/k", "v", &format!("--lease={lease}")]);

    // Created through node 2; nodes 1 and 3 learn of it on first use.
    let (created, out) = namespace(&http[1], &["create", "/orders/"]);
    assert!(created, "{out}");
    assert!(out.contains("created namespace /orders/") && out.contains("2 key(s) moved"), "{out}");

    for e in &ep {
        let (value, rev, _) = get(e, "/orders/a");
        assert_eq!((value.as_str(), rev), ("1", a_rev), "{e}: the key moved with its revision");
    }
    let rev_c = put_rev(&ep[2], "/orders/c", "3");
    assert!(rev_c > root_rev, "the namespace's revisions continue above every revision its keys carried: {rev_c} <= {root_rev}");
    let (plain, _, _) = get(&ep[0], "/plain");
    assert_eq!(plain, "3", "the root namespace keeps its other keys");
    // A watch of the namespace sees its new writes.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([format!("--endpoints={}", ep[0]), "watch".into(), "--prefix".into(), "/orders/".into()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok(&ep[1], &["put", "/orders/d", "4"]);
    std::thread::sleep(Duration::from_millis(500));
    watch.kill().unwrap();
    let seen = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).into_owned();
    assert!(seen.contains("/orders/d"), "the watch saw no event: {seen:?}");

    let (listed, out) = namespace(&http[0], &["list", "-o", "json"]);
    assert!(listed, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let orders = list.as_array().unwrap().iter().find(|n| n["name"] == "/orders/").expect("listed");
    assert_eq!(orders["state"], "ready");
    let orders_range = orders["range_id"].as_u64().unwrap();
    assert!(orders_range > 2);
    let (described, out) = namespace(&http[2], &["describe", "/orders/", "-o", "json"]);
    assert!(described, "{out}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["keys"], 4);

    // Bad input: refused with a reason, nothing changed.
    for (args, why) in [
        (vec!["create", "/orders/"], "already exists"),
        (vec!["create", "/orders/x/"], "overlaps"),
        (vec!["create", "orders"], "must start and end with '/'"),
        (vec!["create", "/big/", "--replicas", "9"], "replicas must be 1 to 7"),
        (vec!["create", "/z/", "--constraint", "zone=nowhere"], "matching zone=nowhere"),
        (vec!["create", "/z/", "--constraint", "rack=1"], "not one of"),
        (vec!["create", "/leased/"], "attached to leases"),
        (vec!["describe", "/nope/"], "not found"),
        (vec!["drop", "/orders/"], "holds 4 key(s)"),
    ] {
        let (success, out) = namespace(&http[0], &args);
        assert!(!success && out.contains(why), "{args:?}: expected a refusal saying {why:?}, got: {out}");
    }
    let (value, _, _) = get(&ep[1], "/leased/k");
    assert_eq!(value, "v", "a refused create moved nothing");
    let (_, out) = namespace(&http[0], &["list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "only /orders/: {list}");

    // The same through meridian.v1 gRPC.
    rt().block_on(async {
        use meridian_proto::meridian::v1 as api;
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", ep[2])).unwrap().connect().await.unwrap();
        let mut ns = api::namespaces_client::NamespacesClient::new(ch);
        let info = ns.create(api::NamespaceCreateRequest { name: "/grpc/".into(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!((info.name.as_str(), info.state.as_str(), info.keys), ("/grpc/", "ready", 0));
        let again = ns.create(api::NamespaceCreateRequest { name: "/grpc/".into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
        let listed = ns.list(api::NamespaceListRequest {}).await.unwrap().into_inner();
        let names: Vec<&str> = listed.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["/grpc/", "/orders/"]);
        ns.drop(api::NamespaceDropRequest { name: "/grpc/".into(), force: false }).await.unwrap();
        let gone = ns.describe(api::NamespaceDescribeRequest { name: "/grpc/".into() }).await.unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
    });

    // A member restarted with the same config serves the namespace.
    c.kill9(2);
    c.restart(2);
    c.wait_ready(Duration::from_secs(60));
    let (value, _, _) = get(&ep[2], "/orders/c");
    assert_eq!(value, "3");

    // Dropped (with its keys), the prefix is the root's again, with
    // revisions above every one the namespace gave.
    let (_, _, last) = get(&ep[0], "/orders/a");
    let (dropped, out) = namespace(&http[2], &["drop", "/orders/", "--force"]);
    assert!(dropped, "{out}");
    let back = put_rev(&ep[1], "/orders/new", "5");
    assert!(back > last, "revisions under a dropped prefix never go back: {back} <= {last}");
    let (gone, _, _) = get(&ep[0], "/orders/a");
    assert_eq!(gone, "", "a forced drop discards the namespace's keys");

    // The dropped namespace's range is retired: every member deletes its
    // replica (log and data) within a few collection rounds.
    let status_addrs: Vec<String> = c.members.iter().map(|m| m.http_addr.to_string()).collect();
    let holders = |range_id: u64| -> Vec<usize> {
        (0..3)
            .filter(|i| {
                let (code, body) = http_get(&status_addrs[*i], "/v1/cluster/status");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                code != 200 || v["ranges"].as_array().is_some_and(|rs| rs.iter().any(|r| r["range_id"] == range_id))
            })
            .collect()
    };
    assert_eq!(holders(orders_range), [0, 1, 2], "every member held the namespace's replica");
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while !holders(orders_range).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(holders(orders_range), Vec::<usize>::new(), "the dropped namespace's replicas were not collected");
    for i in 0..3 {
        // /grpc/'s range and /orders/'s.
        assert!(metric(&c, i, "meridian_store_replicas_destroyed_total") >= 2, "member {i}");
    }
    // The cluster serves on, also after a restart (the tombstones load).
    c.kill9(0);
    c.restart(0);
    c.wait_ready(Duration::from_secs(60));
    assert_eq!(holders(orders_range), Vec::<usize>::new(), "a restart brings no collected replica back");
    assert!(put_rev(&ep[0], "/orders/after", "6") > back);
}

#[test]
fn a_namespace_merges_into_the_root_group_and_splits_out_again_with_revisions_that_never_go_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    c.wait_ready(Duration::from_secs(60));
    let all = c.endpoints();
    let ep: Vec<String> = c.members.iter().map(|m| m.client_addr.to_string()).collect();
    let http: Vec<String> = c.members.iter().map(|m| m.http_addr.to_string()).collect();
    let describe = |name: &str| -> serde_json::Value {
        let (found, out) = namespace(&http[0], &["describe", name, "-o", "json"]);
        assert!(found, "{out}");
        serde_json::from_str(&out).unwrap()
    };

    let (created, out) = namespace(&http[0], &["create", "/cfg/"]);
    assert!(created, "{out}");
    let first_range = describe("/cfg/")["range_id"].as_u64().unwrap();
    ok(&all, &["put", "/cfg/a", "1"]);
    ok(&all, &["put", "/cfg/b", "2"]);
    let (_, a_rev, _) = get(&ep[1], "/cfg/a");
    // A session in the namespace (a lease of its own), with a key.
    let session = |create: bool, id: i64| -> i64 {
        rt().block_on(async {
            use meridian_proto::meridian::v1 as api;
            let ch = tonic::transport::Channel::from_shared(format!("http://{}", ep[0])).unwrap().connect().await.unwrap();
            let mut sc = api::session_client::SessionClient::new(ch);
            if create {
                sc.create(api::SessionCreateRequest { namespace: b"/cfg/".to_vec(), ttl_seconds: 600 })
                    .await
                    .unwrap()
                    .into_inner()
                    .session_id
            } else {
                sc.close(api::SessionCloseRequest { session_id: id }).await.unwrap();
                id
            }
        })
    };
    let lease = session(true, 0);
    ok(&all, &["put", "/cfg/session", "x", &format!("--lease={lease:x}")]);

    // A namespace with a session cannot merge: refused, nothing changed.
    let (merged, out) = namespace(&http[1], &["merge", "/cfg/"]);
    assert!(!merged && out.contains("lease(s)"), "{out}");
    assert_eq!(describe("/cfg/")["state"], "ready");
    let last = put_rev(&ep[0], "/cfg/c", "3");
    session(false, lease);

    let (merged, out) = namespace(&http[1], &["merge", "/cfg/"]);
    assert!(merged && out.contains("merged namespace /cfg/ into the root group"), "{out}");
    let d = describe("/cfg/");
    assert_eq!(
        (d["state"].as_str(), d["range_id"].as_u64(), d["keys"].as_i64(), d["merged_keys"].as_u64()),
        (Some("shared"), Some(2), Some(3), Some(3))
    );
    for e in &ep {
        let (value, rev, _) = get(e, "/cfg/a");
        assert_eq!((value.as_str(), rev), ("1", a_rev), "{e}: the key kept its revision through the merge");
    }
    let after_merge = put_rev(&ep[2], "/cfg/d", "4");
    assert!(after_merge > last, "revisions under a merged namespace continue above its last: {after_merge} <= {last}");
    let (again, out) = namespace(&http[0], &["merge", "/cfg/"]);
    assert!(again && out.contains("shared"), "a merge of a shared namespace changes nothing: {out}");

    // Shared from the start; bad input refused with a reason.
    let (created, out) = namespace(&http[2], &["create", "/small/", "--shared"]);
    assert!(created && out.contains("shared: served by the root group"), "{out}");
    ok(&all, &["put", "/small/k", "v"]);
    for (args, why) in [
        (vec!["create", "/small/"], "already exists"),
        (vec!["create", "/small/x/", "--shared"], "overlaps namespace \"/small/\""),
        (vec!["create", "/cfg/x/"], "overlaps namespace \"/cfg/\""),
        (vec!["create", "/s2/", "--shared", "--replicas", "1"], "a shared namespace is served by the root group"),
        (vec!["merge", "/nope/"], "not found"),
        (vec!["split", "/nope/"], "not found"),
        (vec!["drop", "/small/"], "holds 1 key(s)"),
    ] {
        let (success, out) = namespace(&http[0], &args);
        assert!(!success && out.contains(why), "{args:?}: expected a refusal saying {why:?}, got: {out}");
    }

    // The merged group's replicas are collected on every member.
    let holders = |range_id: u64| -> Vec<usize> {
        (0..3)
            .filter(|i| {
                let (code, body) = http_get(&http[*i], "/v1/cluster/status");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                code != 200 || v["ranges"].as_array().is_some_and(|rs| rs.iter().any(|r| r["range_id"] == range_id))
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while !holders(first_range).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(holders(first_range), Vec::<usize>::new(), "the merged group's replicas were not collected");

    // Split out again: a new group, the keys with their revisions, and
    // revisions above every one given before.
    let (split, out) = namespace(&http[0], &["split", "/cfg/"]);
    assert!(split, "{out}");
    let d = describe("/cfg/");
    let second_range = d["range_id"].as_u64().unwrap();
    assert_eq!((d["state"].as_str(), d["keys"].as_i64()), (Some("ready"), Some(4)));
    assert!(second_range > first_range, "a fresh group: {second_range} <= {first_range}");
    let (value, rev, _) = get(&ep[1], "/cfg/a");
    assert_eq!((value.as_str(), rev), ("1", a_rev));
    let after_split = put_rev(&ep[0], "/cfg/e", "5");
    assert!(after_split > after_merge, "{after_split} <= {after_merge}");

    // A split that cannot move the keys (one is attached to a root
    // lease) is refused and leaves the namespace shared.
    let lease_out = ok(&all, &["lease", "grant", "600"]);
    let root_lease = lease_out.split_whitespace().nth(1).unwrap().to_string();
    ok(&all, &["put", "/small/leased", "v", &format!("--lease={root_lease}")]);
    let (split, out) = namespace(&http[2], &["split", "/small/"]);
    assert!(!split && out.contains("attached to leases"), "{out}");
    assert_eq!(describe("/small/")["state"], "shared");
    ok(&all, &["lease", "revoke", &root_lease]);

    // The same through meridian.v1 gRPC: merge and split /small/, then
    // drop it (shared) with its keys.
    rt().block_on(async {
        use meridian_proto::meridian::v1 as api;
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", ep[1])).unwrap().connect().await.unwrap();
        let mut ns = api::namespaces_client::NamespacesClient::new(ch);
        let info = ns.split(api::NamespaceSplitRequest { name: "/small/".into() }).await.unwrap().into_inner();
        assert_eq!((info.state.as_str(), info.keys), ("ready", 1));
        let info = ns.merge(api::NamespaceMergeRequest { name: "/small/".into() }).await.unwrap().into_inner();
        assert_eq!((info.state.as_str(), info.range_id, info.merged_keys), ("shared", 2, 1));
        let refused = ns.drop(api::NamespaceDropRequest { name: "/small/".into(), force: false }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        ns.drop(api::NamespaceDropRequest { name: "/small/".into(), force: true }).await.unwrap();
    });
    let (gone, _, _) = get(&ep[2], "/small/k");
    assert_eq!(gone, "", "a forced drop of a shared namespace deletes its keys");

    // A namespace with a placement of its own is not merged into the
    // root group's.
    let (created, out) = namespace(&http[0], &["create", "/pinned/", "--replicas", "1"]);
    assert!(created, "{out}");
    let (merged, out) = namespace(&http[0], &["merge", "/pinned/"]);
    assert!(!merged && out.contains("placement of its own"), "{out}");
}
