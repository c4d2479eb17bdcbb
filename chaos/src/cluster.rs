//! A cluster of real `meridian server` processes on loopback: start, kill
//! -9, pause (SIGSTOP), resume, restart, readiness, leader lookup, the
//! nodes' fault-injection routes, and (with the placement driver on) nodes
//! killed for good and spare nodes that join in their place.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_codes::seeded::splitmix64;
use meridian_server::config::{DebugConfig, Member};
use meridian_server::dev_layout;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::http;

/// Deadline of one HTTP call to a node.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// A membership step answers once the change is applied and left.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// Candidate base ports tried before giving up.
const MAX_PORT_PROBES: u64 = 64;

/// What the runner did to a node's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    Paused,
    Dead,
    /// Killed for good: never restarted (a spare joined in its place).
    Retired,
}

struct Node {
    member: Member,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    retired: bool,
}

impl Node {
    fn state(&self) -> ProcState {
        match (&self.child, self.paused) {
            (None, _) if self.retired => ProcState::Retired,
            (None, _) => ProcState::Dead,
            (Some(_), true) => ProcState::Paused,
            (Some(_), false) => ProcState::Running,
        }
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
}

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    nodes: Nodes,
    server_log_filter: String,
    /// Signs the certificates of spares that join later.
    ca: dev_layout::DevCa,
    /// Members that may join later (ids and ports reserved at the start).
    spares: Vec<Member>,
    /// Appended to every node's config.
    extra_toml: String,
    tick_ms: u64,
    debug: DebugConfig,
    /// Each node's place with regions (member order), else empty.
    places: Vec<dev_layout::Place>,
}

/// The node processes; dropping them kills every one.
struct Nodes(Vec<Node>);

impl std::ops::Deref for Nodes {
    type Target = Vec<Node>;
    fn deref(&self) -> &Vec<Node> {
        &self.0
    }
}

impl std::ops::DerefMut for Nodes {
    fn deref_mut(&mut self) -> &mut Vec<Node> {
        &mut self.0
    }
}

/// Cluster-wide settings of a run.
pub struct ClusterSpec<'a> {
    pub nodes: u64,
    pub namespaces: &'a [String],
    pub tick_ms: u64,
    pub debug: DebugConfig,
    /// Seeds the base-port choice.
    pub port_seed: u64,
    /// Appended to every node's config (e.g. a `[placement]` table).
    pub extra_toml: String,
    /// Nodes that may join later ([`Cluster::add_spare`]).
    pub spares: u64,
    /// A multi-region layout instead of `nodes` (no spares then).
    pub regions: Option<&'a crate::scenario::RegionsChaos>,
}

impl Cluster {
    /// Writes the configs and spawns every node (not yet waiting for them).
    pub fn start(bin: &Path, spec: &ClusterSpec<'_>) -> Result<Cluster> {
        if !bin.is_file() {
            bail!(
                "meridian binary not found at {} (build it: cargo build --workspace --exclude meridian-fuzz, or pass --meridian-bin)",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("meridian-chaos-").tempdir().context("creating the cluster's temp dir")?;
        let places = match spec.regions {
            Some(r) => r.places()?,
            None => Vec::new(),
        };
        let (nodes, spares) = if places.is_empty() { (spec.nodes, spec.spares) } else { (places.len() as u64, 0) };
        let base = free_base_port(nodes + spares, spec.port_seed)?;
        let mut members = dev_layout::members(nodes + spares, base).map_err(anyhow::Error::msg)?;
        let spares = members.split_off(nodes as usize);
        let ca = dev_layout::DevCa::generate().context("generating the cluster's CA")?;
        let mut debug = spec.debug.clone();
        let configs = match spec.regions {
            // As `meridian dev --regions`: WAN latency, the placement
            // driver executing (its table written with the config).
            Some(r) => {
                debug.wan = dev_layout::dev_wan(&r.names, r.rtt_ms);
                let placement = meridian_server::placement::PlacementSettings { execute: true, ..Default::default() };
                dev_layout::write_configs_placed(dir.path(), &members, &places, spec.namespaces, spec.tick_ms, &debug, &placement, &ca)
                    .map_err(anyhow::Error::msg)?
            }
            None => {
                let configs = dev_layout::write_configs_signed(dir.path(), &members, spec.namespaces, spec.tick_ms, &debug, &ca)
                    .map_err(anyhow::Error::msg)?;
                for config in &configs {
                    append(config, &spec.extra_toml)?;
                }
                configs
            }
        };
        let nodes = members
            .into_iter()
            .zip(configs)
            .map(|(member, config)| {
                let log = config.parent().expect("config lives in the node dir").join("server.log");
                Node { member, config, log, child: None, paused: false, retired: false }
            })
            .collect();
        let nodes = Nodes(nodes);
        let server_log_filter = std::env::var("MERIDIAN_CHAOS_SERVER_LOG").unwrap_or_else(|_| "info".into());
        let mut c = Cluster {
            dir,
            bin: bin.to_path_buf(),
            nodes,
            server_log_filter,
            ca,
            spares,
            extra_toml: spec.extra_toml.clone(),
            tick_ms: spec.tick_ms,
            debug,
            places,
        };
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// Node `i`'s region (with regions).
    pub fn region_of(&self, i: usize) -> Option<&str> {
        self.places.get(i).map(|p| p.region.as_str())
    }

    /// Whether node `i` is a witness (it serves no client).
    pub fn is_witness(&self, i: usize) -> bool {
        self.places.get(i).is_some_and(|p| p.witness)
    }

    /// The regions, in the scenario's order (none without regions).
    pub fn regions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.places {
            if !out.contains(&p.region) {
                out.push(p.region.clone());
            }
        }
        out
    }

    /// Creates namespace `name` with region survival homed in `home`
    /// (retrying what is retryable until `limit`), like
    /// [`Cluster::create_namespace`].
    pub async fn create_region_namespace(&self, name: &str, home: &str, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        // The layout is judged against the nodes node 1 knows: wait until
        // it knows every node's region (a few seconds after the start).
        loop {
            let body = self.get(0, "/v1/nodes").await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let known =
                v["nodes"].as_array().map_or(0, |a| a.iter().filter(|n| n["region"].as_str().is_some_and(|r| !r.is_empty())).count());
            if known >= self.nodes.len() {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "node 1 knows the region of {known} of {} nodes", self.nodes.len());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        loop {
            let body = serde_json::json!({ "name": name, "home_region": home, "survival": "region" });
            let (code, text) = http::post_json(self.http_addr(0), "/v1/namespaces", &body, MEMBERSHIP_TIMEOUT).await?;
            match code {
                201 => {
                    info!(namespace = name, home, "region-survival namespace created");
                    return Ok(());
                }
                503 if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(300)).await,
                _ => bail!("creating namespace {name}: HTTP {code}: {}", text.trim()),
            }
        }
    }

    /// Waits until the placement driver has nothing left to do (every
    /// replica where the policies say), up to `limit`.
    pub async fn wait_placed(&self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(body) = self.get(0, "/v1/placement/plan").await {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let idle = v["operators"].as_array().is_some_and(|o| o.is_empty()) && v["running"].as_u64().unwrap_or(0) == 0;
                if v["complete"] == true && idle {
                    return Ok(());
                }
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "replicas not in place after {limit:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn logs(&self) -> Vec<(u64, PathBuf)> {
        self.nodes.iter().map(|n| (n.member.id, n.log.clone())).collect()
    }

    /// Keeps the data dir after the run (logs and RocksDB state for a
    /// post-mortem) and returns its path.
    pub fn keep_data_dir(self) -> PathBuf {
        let Cluster { dir, nodes, .. } = self;
        drop(nodes);
        dir.keep()
    }

    /// kill -9 every node (the data dir stays until the cluster is dropped).
    pub fn stop_all(&mut self) {
        for n in self.nodes.iter_mut() {
            stop(n);
        }
    }

    pub fn state(&self, i: usize) -> ProcState {
        self.nodes[i].state()
    }

    pub fn id(&self, i: usize) -> u64 {
        self.nodes[i].member.id
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        let out =
            std::fs::OpenOptions::new().create(true).append(true).open(&n.log).with_context(|| format!("opening {}", n.log.display()))?;
        let child = Command::new(&self.bin)
            .args(["server", "--config"])
            .arg(&n.config)
            .env("RUST_LOG", &self.server_log_filter)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// kill -9.
    pub fn kill9(&mut self, i: usize) {
        stop(&mut self.nodes[i]);
    }

    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].retired {
            bail!("node {} was killed for good", self.id(i));
        }
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        self.spawn(i)
    }

    /// kill -9 for good: the node is never restarted (its data stays on
    /// disk, unused, as a dead machine's would).
    pub fn retire(&mut self, i: usize) {
        stop(&mut self.nodes[i]);
        self.nodes[i].retired = true;
    }

    /// Ranges whose leader (on a running node) counts a voter on a node
    /// that is not running, as "range R: voter N": killing another node for
    /// good now could take a majority of them.
    pub async fn voters_down(&self) -> Vec<String> {
        let running: Vec<u64> = (0..self.len()).filter(|&i| self.state(i) == ProcState::Running).map(|i| self.id(i)).collect();
        let mut out = Vec::new();
        for &i in &(0..self.len()).filter(|&i| self.state(i) == ProcState::Running).collect::<Vec<_>>() {
            let Ok((200, body)) = http::get(self.http_addr(i), "/v1/cluster/status", HTTP_TIMEOUT).await else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            for r in v["ranges"].as_array().into_iter().flatten().filter(|r| r["role"] == "Leader") {
                for voter in r["voters"].as_array().into_iter().flatten().filter_map(|x| x.as_u64()) {
                    if !running.contains(&voter) {
                        out.push(format!("range {}: voter {voter}", r["range_id"]));
                    }
                }
            }
        }
        out
    }

    /// Spares that have not joined yet.
    pub fn spares_left(&self) -> usize {
        self.spares.len()
    }

    /// Starts the next spare as a new node joining through node `through`
    /// (`--join`, no replica until the placement driver gives it some);
    /// returns its index.
    pub fn add_spare(&mut self, through: usize) -> Result<usize> {
        let Some(member) = self.spares.first().cloned() else { bail!("no spare node left") };
        let dir = self.dir.path().join(format!("node-{}", member.id));
        let join = vec![self.nodes[through].member.client_addr.clone()];
        let config =
            dev_layout::write_join_config_with(&dir, &member, &join, self.tick_ms, &self.debug, &self.ca).map_err(anyhow::Error::msg)?;
        append(&config, &self.extra_toml)?;
        self.spares.remove(0);
        let log = dir.join("server.log");
        self.nodes.push(Node { member, config, log, child: None, paused: false, retired: false });
        let i = self.nodes.len() - 1;
        self.spawn(i)?;
        info!(node = self.id(i), through = self.id(through), "spare node joined");
        Ok(i)
    }

    /// `GET path` on node `i`; an answer other than 200 is an error with
    /// the node's reason.
    pub async fn get(&self, i: usize, path: &str) -> Result<String> {
        let (code, text) = http::get(self.http_addr(i), path, MEMBERSHIP_TIMEOUT).await?;
        if code != 200 {
            bail!("node {} {path}: HTTP {code}: {}", self.id(i), text.trim());
        }
        Ok(text)
    }

    /// Creates namespace `name` (a group of its own) through the first
    /// node, retrying what is retryable (a leader being elected) until
    /// `limit`.
    pub async fn create_namespace(&self, name: &str, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let body = serde_json::json!({ "name": name });
            let (code, text) = http::post_json(self.http_addr(0), "/v1/namespaces", &body, MEMBERSHIP_TIMEOUT).await?;
            match code {
                201 => {
                    info!(namespace = name, "namespace created");
                    return Ok(());
                }
                503 if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                _ => bail!("creating namespace {name}: HTTP {code}: {}", text.trim()),
            }
        }
    }

    /// `POST path` (no body) on node `i`; an answer other than 200 is an
    /// error with the node's reason.
    pub async fn post(&self, i: usize, path: &str) -> Result<String> {
        let (code, text) = http::post_json(self.http_addr(i), path, &serde_json::json!({}), MEMBERSHIP_TIMEOUT).await?;
        if code != 200 {
            bail!("node {} {path}: HTTP {code}: {}", self.id(i), text.trim());
        }
        Ok(text)
    }

    pub fn pause(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        let Some(pid) = n.pid() else { bail!("node {} is not running", n.member.id) };
        kill(pid, Signal::SIGSTOP).with_context(|| format!("SIGSTOP node {}", n.member.id))?;
        n.paused = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        let Some(pid) = n.pid() else { return Ok(()) };
        kill(pid, Signal::SIGCONT).with_context(|| format!("SIGCONT node {}", n.member.id))?;
        n.paused = false;
        Ok(())
    }

    /// Whether a node's process exited on its own (a crash, not our kill).
    pub fn crashed(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for n in self.nodes.iter_mut() {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((n.member.id, status.to_string()));
                    n.child = None;
                }
            }
        }
        out
    }

    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].member.http_addr.parse().expect("the dev layout's addresses are socket addresses")
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].member.client_addr.parse().expect("the dev layout's addresses are socket addresses")
    }

    /// Nodes answering `/readyz` with 200 (paused and dead ones are not).
    pub async fn ready(&self, i: usize) -> bool {
        self.nodes[i].state() == ProcState::Running && matches!(http::get(self.http_addr(i), "/readyz", HTTP_TIMEOUT).await, Ok((200, _)))
    }

    /// Waits until every running node is ready, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut all = true;
            for i in 0..self.len() {
                if self.nodes[i].state() == ProcState::Running && !self.ready(i).await {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("cluster not ready within {limit:?}; logs under {}", self.data_dir().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node leading `range_id`: the highest-term claim among running
    /// nodes (an isolated old leader may still claim an older term).
    pub async fn leader_of(&self, range_id: u64) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.len() {
            if self.nodes[i].state() != ProcState::Running {
                continue;
            }
            let Ok((200, body)) = http::get(self.http_addr(i), "/v1/cluster/status", HTTP_TIMEOUT).await else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            for r in v["ranges"].as_array().into_iter().flatten() {
                if r["range_id"] == range_id && r["role"] == "Leader" {
                    let term = r["term"].as_u64().unwrap_or(0);
                    if best.is_none_or(|(t, _)| term > t) {
                        best = Some((term, i));
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Sets node `i`'s blocked peers (node ids); empty lists heal.
    pub async fn set_net(&self, i: usize, block_out: &[u64], block_in: &[u64]) -> Result<()> {
        let body = serde_json::json!({ "block_out": block_out, "block_in": block_in });
        self.debug_post(i, "/v1/debug/net", &body).await
    }

    pub async fn set_clock_rate(&self, i: usize, rate: f64) -> Result<()> {
        self.debug_post(i, "/v1/debug/lease-clock-rate", &serde_json::json!({ "rate": rate })).await
    }

    /// Asks node `i` (the leader of `range_id`) to hand leadership to `to`.
    pub async fn transfer_leader(&self, i: usize, range_id: u64, to: u64) -> Result<()> {
        self.debug_post(i, "/v1/debug/transfer-leader", &serde_json::json!({ "range_id": range_id, "to": to })).await
    }

    /// One membership step (`add-learner`, `promote`, `remove`) of `node`
    /// in `range_id`, sent to node `i` (which must lead the range).
    pub async fn change_member(&self, i: usize, range_id: u64, op: &str, node: u64) -> Result<serde_json::Value> {
        let path = format!("/v1/ranges/{range_id}/members");
        let body = serde_json::json!({ "op": op, "node_id": node });
        let (code, text) = http::post_json(self.http_addr(i), &path, &body, MEMBERSHIP_TIMEOUT).await?;
        if code != 200 {
            bail!("node {} {op} {node} in range {range_id}: HTTP {code}: {}", self.id(i), text.trim());
        }
        info!(node = self.id(i), range = range_id, op, target = node, "membership change");
        Ok(serde_json::from_str(&text)?)
    }

    /// The voters and learners of `range_id` as its leader sees them.
    pub async fn members_of(&self, range_id: u64) -> Option<(usize, Vec<u64>, Vec<u64>)> {
        let l = self.leader_of(range_id).await?;
        let Ok((200, body)) = http::get(self.http_addr(l), &format!("/v1/ranges/{range_id}/members"), HTTP_TIMEOUT).await else {
            return None;
        };
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let ids = |k: &str| v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default();
        Some((l, ids("voters"), ids("learners")))
    }

    /// Makes every node a voter of `range_id` again (add as learner, then
    /// promote once caught up), retrying until `deadline`.
    pub async fn restore_members(&self, range_id: u64, deadline: tokio::time::Instant) -> Result<()> {
        let all: Vec<u64> = (0..self.len()).map(|i| self.id(i)).collect();
        let mut last = String::from("no leader");
        while tokio::time::Instant::now() < deadline {
            if let Some((l, voters, learners)) = self.members_of(range_id).await {
                let Some(&node) = all.iter().find(|n| !voters.contains(n)) else { return Ok(()) };
                let op = if learners.contains(&node) { "promote" } else { "add-learner" };
                match self.change_member(l, range_id, op, node).await {
                    Ok(_) => continue,
                    Err(e) => last = format!("{e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("range {range_id} did not get every node back as a voter: {last}")
    }

    async fn debug_post(&self, i: usize, path: &str, body: &serde_json::Value) -> Result<()> {
        let (code, text) = http::post_json(self.http_addr(i), path, body, HTTP_TIMEOUT).await?;
        if code != 200 {
            bail!("node {} {path}: HTTP {code}: {}", self.id(i), text.trim());
        }
        debug!(node = self.id(i), path, %body, "fault injected");
        Ok(())
    }
}

/// Appends `extra` (TOML tables) to the config at `path`.
fn append(path: &Path, extra: &str) -> Result<()> {
    if extra.is_empty() {
        return Ok(());
    }
    let mut cfg = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    cfg.push('\n');
    cfg.push_str(extra);
    std::fs::write(path, cfg).with_context(|| format!("writing {}", path.display()))
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.0 {
            stop(n);
        }
    }
}

/// kill -9 and reap (a paused process dies from SIGKILL too).
fn stop(n: &mut Node) {
    if let Some(mut c) = n.child.take() {
        if let Err(e) = c.kill() {
            warn!(node = n.member.id, "kill: {e}");
        }
        let _ = c.wait();
    }
    n.paused = false;
}

/// A base port whose client, peer and HTTP ports are all free.
///
/// The multi-process tests use bases `10000 + 300k` and ports at offsets
/// 0..9, 100..109 and 200..209 of their block; `meridian dev` uses 23790
/// (offsets 290, 90, 190). Chaos bases sit at offsets 40..80 of a block, so
/// their ports (offsets 40..89, 140..189, 240..289) never collide with
/// either, and stay below Linux's ephemeral range (32768+).
fn free_base_port(nodes: u64, seed: u64) -> Result<u16> {
    for probe in 0..MAX_PORT_PROBES {
        let h = splitmix64(seed.wrapping_add(probe));
        let base = 10_000 + (h % 73) * 300 + 40 + ((h / 73) % 5) * 10;
        let base = u16::try_from(base).expect("below 32000");
        let ports = (0..nodes).flat_map(|i| [0u64, 100, 200].map(|off| u64::from(base) + off + i));
        if ports.into_iter().all(|p| TcpListener::bind(("127.0.0.1", p as u16)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no free port block found after {MAX_PORT_PROBES} probes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_ports_avoid_the_test_and_dev_blocks() {
        for seed in 0..2000 {
            let h = splitmix64(seed);
            let base = 10_000 + (h % 73) * 300 + 40 + ((h / 73) % 5) * 10;
            for off in [0, 100, 200] {
                for i in 0..5 {
                    let p = base + off + i;
                    // Tests use offsets 0..9 of each hundred, dev 90..94.
                    let in_hundred = ((p - 10_000) % 300) % 100;
                    assert!((40..85).contains(&in_hundred), "port {p}");
                    assert!(p < 32_000);
                }
            }
        }
    }
}
