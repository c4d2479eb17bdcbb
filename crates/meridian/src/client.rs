//! Client subcommands over the etcd v3 API (`kv`, `status`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::kv_client::KvClient;
use meridian_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::{Channel, Endpoint};

/// Connects to the first endpoint that answers.
pub async fn connect(endpoints: &str) -> Result<Channel> {
    let mut last = None;
    for ep in endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = if ep.starts_with("http") { ep.to_string() } else { format!("http://{ep}") };
        match Endpoint::from_shared(url.clone())?.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10)).connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = Some(format!("{url}: {e}")),
        }
    }
    bail!("no endpoint answered ({})", last.unwrap_or_else(|| "no endpoints given".into()))
}

/// The key just after every key with this prefix.
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut e = p.to_vec();
    while let Some(b) = e.pop() {
        if b < 0xff {
            e.push(b + 1);
            return e;
        }
    }
    vec![0]
}

pub async fn put(endpoints: &str, key: &str, value: &str, lease: i64) -> Result<()> {
    let mut kv = KvClient::new(connect(endpoints).await?);
    let r = kv.put(pb::PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() }).await?.into_inner();
    println!("OK (revision {})", r.header.map_or(0, |h| h.revision));
    Ok(())
}

pub async fn get(endpoints: &str, key: &str, prefix: bool, revision: i64, serializable: bool) -> Result<()> {
    let mut kv = KvClient::new(connect(endpoints).await?);
    let range_end = if prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
    let r = kv.range(pb::RangeRequest { key: key.into(), range_end, revision, serializable, ..Default::default() }).await?.into_inner();
    for kv in r.kvs {
        println!("{}\n{}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
    }
    Ok(())
}

pub async fn del(endpoints: &str, key: &str, prefix: bool) -> Result<()> {
    let mut kv = KvClient::new(connect(endpoints).await?);
    let range_end = if prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
    let r = kv.delete_range(pb::DeleteRangeRequest { key: key.into(), range_end, prev_kv: false }).await?.into_inner();
    println!("{}", r.deleted);
    Ok(())
}

pub async fn status(endpoints: &str, http: Option<&str>) -> Result<()> {
    println!("{:<22} {:>8} {:>8} {:>6} {:>10} {:>10}", "endpoint", "member", "leader", "term", "index", "applied");
    for ep in endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match connect(ep).await {
            Ok(ch) => match MaintenanceClient::new(ch).status(pb::StatusRequest {}).await {
                Ok(s) => {
                    let s = s.into_inner();
                    let member = s.header.map_or(0, |h| h.member_id);
                    println!("{ep:<22} {member:>8} {:>8} {:>6} {:>10} {:>10}", s.leader, s.raft_term, s.raft_index, s.raft_applied_index);
                }
                Err(e) => println!("{ep:<22} error: {}", e.message()),
            },
            Err(e) => println!("{ep:<22} unreachable: {e}"),
        }
    }
    let Some(http) = http else {
        println!("(add --http=<addr,…> for the per-range table)");
        return Ok(());
    };
    println!();
    println!(
        "{:<12} {:>5} {:>6} {:<10} {:>6} {:>7} {:>8} {:>8} {:>6}",
        "region", "node", "range", "role", "term", "leader", "commit", "applied", "quiet"
    );
    // Grouped by region: every node's answer first, then printed in
    // region order.
    let mut answers = Vec::new();
    for h in http.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let body = http_get(h, "/v1/cluster/status").with_context(|| format!("GET http://{h}/v1/cluster/status"))?;
        let v: serde_json::Value = serde_json::from_str(&body).context("parsing cluster status")?;
        answers.push(v);
    }
    answers.sort_by_key(|v| (v["region"].as_str().unwrap_or("").to_string(), v["node_id"].as_u64().unwrap_or(0)));
    for v in &answers {
        let node = v["node_id"].as_u64().unwrap_or(0);
        let region = v["region"].as_str().unwrap_or("?");
        for r in v["ranges"].as_array().into_iter().flatten() {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            println!(
                "{region:<12} {node:>5} {:>6} {:<10} {:>6} {:>7} {:>8} {:>8} {:>6}",
                n("range_id"),
                r["role"].as_str().unwrap_or("?"),
                n("term"),
                n("leader"),
                n("commit"),
                n("applied"),
                r["quiesced"].as_bool().unwrap_or(false)
            );
        }
    }
    Ok(())
}

/// `meridian members`: shows a range's configuration, or applies one step
/// (add-learner, promote, remove) on its leader among the `http` nodes.
pub fn members(http: &str, range_id: u64, op: Option<&str>, node_id: Option<u64>) -> Result<()> {
    let addrs: Vec<&str> = http.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    let path = format!("/v1/ranges/{range_id}/members");
    let Some(op) = op else {
        let mut last = None;
        for a in &addrs {
            match http_get(a, &path) {
                Ok(body) => {
                    println!("{body}");
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or_else(|| anyhow::anyhow!("no --http address given")));
    };
    if !matches!(op, "add-learner" | "promote" | "remove") {
        bail!("unknown step {op:?}: use add-learner, promote or remove");
    }
    let Some(node) = node_id else { bail!("{op} needs a node id") };
    let body = serde_json::json!({ "op": op, "node_id": node }).to_string();
    let mut targets: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut i = 0;
    let mut last = String::from("no --http address given");
    // Each node is asked at most once, plus the leader it names.
    while i < targets.len() && i < addrs.len() + 1 {
        let sa = targets[i].clone();
        i += 1;
        let (code, answer) = match meridian_client::http::post_json(sa.as_str(), &path, &body, Duration::from_secs(15)) {
            Ok(r) => r,
            Err(e) => {
                last = format!("{sa}: {e}");
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap_or_default();
        match code {
            200 => {
                println!("{}", answer.trim());
                return Ok(());
            }
            421 => {
                if let Some(leader) = v["leader_http"].as_str() {
                    targets.insert(i, leader.to_string());
                }
                last = v["error"].as_str().unwrap_or("not the leader").to_string();
            }
            503 => last = format!("{sa}: {}", v["error"].as_str().unwrap_or("unavailable")),
            _ => bail!("{op} node {node} in range {range_id}: HTTP {code}: {}", v["error"].as_str().unwrap_or(answer.trim())),
        }
    }
    bail!("{op} node {node} in range {range_id}: no node could do it ({last})")
}

/// `GET path` on the first member of `http` (comma-separated HTTP
/// addresses) that answers, as JSON.
fn first_answer(http: &str, path: &str) -> Result<serde_json::Value> {
    let mut last_err = None;
    for h in http.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match http_get(h, path) {
            Ok(body) => return serde_json::from_str(&body).with_context(|| format!("parsing {path}")),
            Err(e) => last_err = Some(e.context(format!("GET http://{h}{path}"))),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no HTTP address given (--http)")))
}

/// `meridian nodes`: the first member of `http` that answers, asked for
/// its view of every node.
pub fn nodes(http: &str, json: bool) -> Result<()> {
    let v = first_answer(http, "/v1/nodes")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let nodes: Vec<meridian_server::gossip::NodeReport> = serde_json::from_value(v["nodes"].clone()).context("parsing /v1/nodes")?;
    print!("{}", nodes_table(v["node_id"].as_u64().unwrap_or(0), v["gossip"].as_bool().unwrap_or(false), &nodes));
    Ok(())
}

/// `meridian placement plan`: the first member of `http` that answers,
/// asked what the scheduler would do now.
pub fn placement_plan(http: &str, json: bool) -> Result<()> {
    let v = first_answer(http, "/v1/placement/plan")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let ops: Vec<meridian_server::placement::OperatorReport> =
        serde_json::from_value(v["operators"].clone()).context("parsing /v1/placement/plan")?;
    let mode = if v["execute"] == true { "the meta range's leader runs what it plans" } else { "a dry run: nothing is executed" };
    println!("{} ranges reported; {mode}", v["ranges_reported"]);
    if v["complete"] == false {
        println!("incomplete: a live member did not report; the driver plans nothing until it does");
    }
    for u in v["unreachable"].as_array().into_iter().flatten() {
        println!("node {} did not report: {}", u["node_id"], u["why"].as_str().unwrap_or("?"));
    }
    if ops.is_empty() {
        println!("no operator: the layout meets the policy");
    }
    for o in &ops {
        let arrow = match (o.from, o.to) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (Some(f), None) => format!("{f} ->"),
            (None, Some(t)) => format!("-> {t}"),
            (None, None) => String::new(),
        };
        println!("range {:>5}  {:<16} {:<10} {}", o.range_id, o.kind, arrow, o.reason);
        println!("             steps: {}", o.steps.join(" → "));
    }
    for b in v["blocked"].as_array().into_iter().flatten() {
        println!("range {:>5}  blocked: {}", b["range_id"], b["why"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// `meridian placement operators`: every member's running and finished
/// operators (only the meta range's leader runs any).
pub fn placement_operators(http: &str) -> Result<()> {
    let mut any = false;
    for h in http.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Ok(body) = http_get(h, "/v1/placement/operators") else { continue };
        let v: serde_json::Value = serde_json::from_str(&body).context("parsing /v1/placement/operators")?;
        any = true;
        for o in v["operators"].as_array().into_iter().flatten() {
            let steps: Vec<&str> = o["steps"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
            println!(
                "node {}  range {:>5}  {:<16} {:<28} step {}/{}  {}",
                v["node_id"],
                o["range_id"],
                o["kind"].as_str().unwrap_or("?"),
                o["state"].as_str().unwrap_or("?"),
                o["at"].as_u64().unwrap_or(0).min(steps.len() as u64),
                steps.len(),
                o["reason"].as_str().unwrap_or("")
            );
        }
    }
    if !any {
        anyhow::bail!("no member answered at {http}");
    }
    Ok(())
}

/// The `meridian nodes` table.
pub fn nodes_table(asked: u64, gossip: bool, nodes: &[meridian_server::gossip::NodeReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4}  {:<22} {:<22} {:<22} {:<10} {:<12} {:<7} {:<8} {:>7} {:>12} {:>10}",
        "id", "client", "peer", "gossip", "region", "zone", "role", "state", "phi", "incarnation", "last heard"
    );
    // Grouped by region (a header per region when there are several).
    let mut sorted: Vec<&meridian_server::gossip::NodeReport> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.region.cmp(&b.region).then(a.id.cmp(&b.id)));
    let regions: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.region.as_str()).collect();
    let mut current = None;
    for n in sorted {
        if regions.len() > 1 && current != Some(n.region.as_str()) {
            current = Some(n.region.as_str());
            let count = nodes.iter().filter(|m| m.region == n.region).count();
            let up = nodes.iter().filter(|m| m.region == n.region && m.state == "alive").count();
            let _ = writeln!(out, "region {}: {count} node(s), {up} alive", n.region);
        }
        let heard = match n.last_heard_ms_ago {
            Some(_) if n.is_self => "self".to_string(),
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "never".to_string(),
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<22} {:<22} {:<22} {:<10} {:<12} {:<7} {:<8} {:>7.2} {:>12} {:>10}",
            n.id, n.client_addr, n.peer_addr, n.gossip_addr, n.region, n.zone, n.role, n.state, n.phi, n.incarnation, heard
        );
    }
    if !gossip {
        let _ = writeln!(out, "(node {asked} runs without gossip: states are unknown)");
    } else {
        let _ = writeln!(out, "(as node {asked} sees them)");
    }
    out
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    let (status, body) = meridian_client::http::get(addr, path, Duration::from_secs(5))?;
    if !body.trim_start().starts_with('{') {
        bail!("unexpected answer: HTTP {status}");
    }
    Ok(body)
}

/// Streams events of a key or prefix until the stream ends or Ctrl-C.
pub async fn watch(endpoints: &str, key: &str, prefix: bool, rev: i64, prev_kv: bool) -> Result<()> {
    use meridian_proto::etcdserverpb::watch_client::WatchClient;
    let mut client = WatchClient::new(connect(endpoints).await?);
    let range_end = if prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: key.into(),
            range_end,
            start_revision: rev,
            prev_kv,
            ..Default::default()
        })),
    };
    // Keep the request stream open: closing it would end the watch.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(create).await.ok();
    let mut stream = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(resp) = msg else { return Ok(()) };
        if resp.canceled {
            bail!("watch canceled: {}", resp.cancel_reason);
        }
        for ev in resp.events {
            let kind = if ev.r#type == 1 { "DELETE" } else { "PUT" };
            let rev = ev.kv.as_ref().map_or(0, |k| k.mod_revision);
            let kv = ev.kv.unwrap_or_default();
            print!("{kind} {} rev={rev}", String::from_utf8_lossy(&kv.key));
            if kind == "PUT" {
                print!(" value={}", String::from_utf8_lossy(&kv.value));
            }
            if let Some(p) = ev.prev_kv {
                print!(" prev={}", String::from_utf8_lossy(&p.value));
            }
            println!();
        }
    }
}

pub enum LeaseCmd {
    Grant { ttl: i64 },
    Revoke { id: i64 },
    KeepAlive { id: i64, once: bool },
    Ttl { id: i64, keys: bool },
}

pub async fn lease(endpoints: &str, cmd: LeaseCmd) -> Result<()> {
    use meridian_proto::etcdserverpb::lease_client::LeaseClient;
    let mut client = LeaseClient::new(connect(endpoints).await?);
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let r = client.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }).await?.into_inner();
            println!("lease {:016x} granted with TTL {}s", r.id, r.ttl);
        }
        LeaseCmd::Revoke { id } => {
            client.lease_revoke(pb::LeaseRevokeRequest { id }).await?;
            println!("lease {id:016x} revoked");
        }
        LeaseCmd::Ttl { id, keys } => {
            let r = client.lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys }).await?.into_inner();
            if r.ttl < 0 {
                bail!("lease {id:016x} not found (expired or revoked)");
            }
            let names: Vec<String> = r.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
            println!("lease {id:016x}: granted {}s, remaining {}s, keys {:?}", r.granted_ttl, r.ttl, names);
        }
        LeaseCmd::KeepAlive { id, once } => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut stream = client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
            loop {
                tx.send(pb::LeaseKeepAliveRequest { id }).await.context("keepalive stream closed")?;
                let Some(r) = stream.message().await? else { bail!("keepalive stream ended") };
                if r.ttl <= 0 {
                    bail!("lease {id:016x} expired or was revoked");
                }
                println!("lease {id:016x} kept alive, TTL {}s", r.ttl);
                if once {
                    return Ok(());
                }
                // Renew at a third of the TTL, as etcd clients do.
                let wait = Duration::from_millis((r.ttl as u64 * 1000 / 3).max(500));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
    Ok(())
}

/// Parses a lease id given in hex (as printed) or decimal.
pub fn parse_lease_id(s: &str) -> Result<i64> {
    let t = s.trim_start_matches("0x");
    i64::from_str_radix(t, 16).or_else(|_| s.parse::<i64>()).with_context(|| format!("bad lease id {s:?}"))
}
