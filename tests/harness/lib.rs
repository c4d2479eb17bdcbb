//! The one harness of Meridian's multi-process tests: a cluster of real
//! `meridian server` processes on loopback ([`ProcCluster`]), the paths of
//! the workspace's binaries ([`binary`]), etcdctl, and the node HTTP routes
//! through Meridian's one small HTTP client (`meridian_client::http`).
//!
//! The tests run the binaries cargo built into the same target directory:
//! `make test` (and `make verify`) builds them first. Running one test file
//! by hand, build them too:
//!
//! ```text
//! cargo build -p meridian --bins && cargo test -p meridian-tests --test locks
//! ```

// Real processes on real time: the harness reads wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_proto::etcdserverpb::kv_client::KvClient;
use meridian_server::config::Member;
use meridian_server::dev_layout;

/// Clusters run one at a time: two cores, three nodes each.
pub static SERIAL: Mutex<()> = Mutex::new(());
static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);

/// Deadline of one HTTP call to a node.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of the workspace binary `name` (`meridian`, `billing-cron`):
/// in `$MERIDIAN_BIN_DIR` when that is set, else in the target directory
/// this test was built into. Panics, saying how to build it, when it is not
/// there.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MERIDIAN_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        // A test runs as <target>/<profile>/deps/<test>-<hash>.
        None => {
            let exe = std::env::current_exe().expect("locating the test binary");
            exe.parent().and_then(Path::parent).expect("test binary inside <target>/<profile>/deps").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first (`cargo build -p meridian --bins`; `make test` does), or set MERIDIAN_BIN_DIR",
        path.display()
    );
    path
}

/// The `meridian` binary.
pub fn meridian_bin() -> PathBuf {
    binary("meridian")
}

/// A cluster of real `meridian server` processes on loopback, each with
/// its config and log in a temporary directory; killed when dropped.
pub struct ProcCluster {
    _dir: tempfile::TempDir,
    /// Signs every node's certificate (nodes added later too).
    ca: meridian_transport_quic::DevCa,
    pub members: Vec<Member>,
    pub configs: Vec<PathBuf>,
    pub children: Vec<Option<Child>>,
    /// Flags every `meridian server` of this cluster gets after its
    /// `--config` (at every start and restart).
    pub server_args: Vec<String>,
}

/// The first of a block of free-looking ports for one cluster.
pub fn free_base_port() -> u16 {
    // Spread test runs over the port space by pid, and clusters within a run
    // by a counter; each cluster uses base..base+400 (client, peer, HTTP,
    // gossip: dev_layout::members). Stay below Linux's ephemeral range
    // (32768+), where outgoing connections could already hold a port we
    // want to listen on.
    let block = (std::process::id() % 24) * 3 + NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
    (10000 + (block % 55) * 400) as u16
}

impl ProcCluster {
    pub fn start(nodes: u64, namespaces: &[&str]) -> ProcCluster {
        Self::start_members(dev_layout::members(nodes, free_base_port()).unwrap(), namespaces)
    }

    /// A cluster of `members` (their advertised addresses as given: DNS
    /// names allowed).
    pub fn start_members(members: Vec<Member>, namespaces: &[&str]) -> ProcCluster {
        Self::start_members_with(members, namespaces, &[])
    }

    /// A cluster whose servers all get `server_args` after `--config`.
    pub fn start_with_args(nodes: u64, namespaces: &[&str], server_args: &[&str]) -> ProcCluster {
        Self::start_members_with(dev_layout::members(nodes, free_base_port()).unwrap(), namespaces, server_args)
    }

    fn start_members_with(members: Vec<Member>, namespaces: &[&str], server_args: &[&str]) -> ProcCluster {
        let mut c = Self::prepare_members(members, namespaces, server_args);
        c.launch();
        c
    }

    /// A multi-region cluster as `meridian dev --regions` lays it out: a
    /// data node per zone in each region (`zones` per region), WAN latency
    /// between regions (`rtt_ms` for every pair, or dev's defaults), a
    /// 100 ms tick, and placement drivers that execute (`extra_placement`
    /// TOML lines added to `[placement]`). Launched.
    pub fn start_regions(regions: &[&str], zones: usize, rtt_ms: Option<u64>, extra_placement: &str) -> ProcCluster {
        Self::start_regions_with(regions, zones, rtt_ms, extra_placement, false)
    }

    /// [`ProcCluster::start_regions`], with a witness node after the data
    /// nodes in each region when `witnesses` (as `meridian dev --witnesses`).
    pub fn start_regions_with(regions: &[&str], zones: usize, rtt_ms: Option<u64>, extra_placement: &str, witnesses: bool) -> ProcCluster {
        let regions: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        let mut places = dev_layout::regional_places(&regions, zones).unwrap();
        if witnesses {
            dev_layout::add_witnesses(&mut places, &regions).unwrap();
        }
        let members = dev_layout::members(places.len() as u64, free_base_port()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = meridian_transport_quic::DevCa::generate().unwrap();
        let debug = meridian_server::config::DebugConfig { wan: dev_layout::dev_wan(&regions, rtt_ms), ..Default::default() };
        let mut placement: meridian_server::placement::PlacementSettings =
            toml::from_str(&format!("execute = true\n{extra_placement}")).expect("[placement] lines");
        placement.execute = true;
        let configs = dev_layout::write_configs_placed(dir.path(), &members, &places, &[], 100, &debug, &placement, &ca).unwrap();
        let mut c = ProcCluster { _dir: dir, ca, members, configs, children: Vec::new(), server_args: Vec::new() };
        c.launch();
        c
    }

    /// A cluster of `nodes` whose configs (and certificates) are written
    /// but whose servers are not started yet ([`ProcCluster::launch`]).
    pub fn prepare(nodes: u64, namespaces: &[&str]) -> ProcCluster {
        Self::prepare_members(dev_layout::members(nodes, free_base_port()).unwrap(), namespaces, &[])
    }

    fn prepare_members(members: Vec<Member>, namespaces: &[&str], server_args: &[&str]) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let ns: Vec<String> = namespaces.iter().map(|s| s.to_string()).collect();
        let ca = meridian_transport_quic::DevCa::generate().unwrap();
        let debug = meridian_server::config::DebugConfig::default();
        let tick_ms = meridian_server::config::DEFAULT_TICK_MS;
        let configs = dev_layout::write_configs_signed(dir.path(), &members, &ns, tick_ms, &debug, &ca).unwrap();
        let server_args = server_args.iter().map(|s| s.to_string()).collect();
        ProcCluster { _dir: dir, ca, members, configs, children: Vec::new(), server_args }
    }

    /// Starts every server of a prepared cluster and waits until they serve.
    pub fn launch(&mut self) {
        for i in 0..self.members.len() {
            let child = self.spawn(i);
            self.children.push(Some(child));
        }
        self.wait_ready(Duration::from_secs(60));
    }

    /// Starts node `member`, which joins through member 0 (`join` in its
    /// config) instead of bootstrapping; answers its index. Not waited for.
    pub fn add_joining(&mut self, member: Member) -> usize {
        self.add_joining_with(member, "")
    }

    /// [`ProcCluster::add_joining`], with `extra_toml` appended to the new
    /// node's config (tables such as `[placement]`).
    pub fn add_joining_with(&mut self, member: Member, extra_toml: &str) -> usize {
        let join = vec![self.members[0].client_addr.clone()];
        let dir = self._dir.path().join(format!("joined-{}", self.members.len()));
        let path = dev_layout::write_join_config(&dir, &member, &join, meridian_server::config::DEFAULT_TICK_MS, &self.ca).unwrap();
        if !extra_toml.is_empty() {
            let mut cfg = std::fs::read_to_string(&path).unwrap();
            cfg.push('\n');
            cfg.push_str(extra_toml);
            std::fs::write(&path, cfg).unwrap();
        }
        self.members.push(member);
        self.configs.push(path);
        let i = self.members.len() - 1;
        let child = self.spawn(i);
        self.children.push(Some(child));
        i
    }

    pub fn spawn(&self, i: usize) -> Child {
        self.spawn_with(i, &[])
    }

    /// `meridian server --config … <extra>` for node `i`.
    pub fn spawn_with(&self, i: usize, extra: &[&str]) -> Child {
        let log = self.configs[i].parent().unwrap().join("server.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Command::new(meridian_bin())
            .args(["server", "--config"])
            .arg(&self.configs[i])
            .args(&self.server_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn meridian server")
    }

    /// Starts node `i` and waits for it to exit (a start that must be
    /// refused): its exit status and its log. Panics if it keeps running
    /// past `limit`.
    pub fn start_expecting_exit(&self, i: usize, limit: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.spawn(i);
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("node {} kept running past {limit:?}", self.members[i].id);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = std::fs::read_to_string(self.configs[i].parent().unwrap().join("server.log")).unwrap_or_default();
        (status, log)
    }

    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.members.iter().enumerate().all(|(i, m)| self.children[i].is_none() || http_get(&m.http_addr, "/readyz").0 == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cluster not ready within {limit:?}; logs in {}", self.configs[0].parent().unwrap().parent().unwrap().display());
    }

    /// The client addresses as `host:port,…`.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client_addr.to_string()).collect::<Vec<_>>().join(",")
    }

    /// The client addresses as URLs, `http://host:port,…`: the form etcd's
    /// docs, Kubernetes' `--etcd-servers` and most scripts use.
    pub fn url_endpoints(&self) -> String {
        self.members.iter().map(|m| format!("http://{}", m.client_addr)).collect::<Vec<_>>().join(",")
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// Node `i`'s directory (its config, certificates, gossip key, data).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.configs[i].parent().expect("a config lives in its node's directory").to_path_buf()
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self, i: usize) {
        let child = self.spawn(i);
        self.children[i] = Some(child);
    }

    /// The node leading `range_id`, from node HTTP status.
    pub fn leader_of(&self, range_id: u64) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            let (code, body) = http_get(&m.http_addr, "/v1/cluster/status");
            if code != 200 {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            for r in v["ranges"].as_array().unwrap() {
                if r["range_id"] == range_id && r["role"] == "Leader" {
                    return Some(i);
                }
            }
        }
        None
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            return;
        }
        // A failed test prints what its servers warned of last (CI keeps
        // nothing else of a run).
        for i in 0..self.configs.len().min(self.members.len()) {
            let log = std::fs::read_to_string(self.node_dir(i).join("server.log")).unwrap_or_default();
            let warned: Vec<String> = log.lines().map(strip_ansi).filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            let tail = &warned[warned.len().saturating_sub(FAILED_LOG_LINES)..];
            eprintln!("--- node {} (member {i}): the last {} of its {} warnings and errors", self.members[i].id, tail.len(), warned.len());
            for l in tail {
                eprintln!("{}", l.chars().take(400).collect::<String>());
            }
        }
        // `MERIDIAN_KEEP_FAILED=1`: a failed test's configs, data and
        // server logs stay for a post-mortem (their path is printed).
        if std::env::var_os("MERIDIAN_KEEP_FAILED").is_some() {
            let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("a temporary directory"));
            eprintln!("the failed test's cluster is kept in {}", dir.keep().display());
        }
    }
}

/// Lines of each server's warnings a failed test prints.
const FAILED_LOG_LINES: usize = 12;

/// `line` without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// One HTTP/1.1 request to `addr` (`host:port`); status 0 when there is
/// no answer (a node that is down or not listening yet).
pub fn http_request(addr: &str, method: &str, path: &str, body: &str, content_type: &str) -> (u16, String) {
    use meridian_client::http;
    http::request(addr, method, path, Some(http::Body { content_type, bytes: body.as_bytes() }), HTTP_TIMEOUT).unwrap_or((0, String::new()))
}

/// `GET path` on `addr`; status 0 when there is no answer.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "", "text/plain")
}

/// Runs `etcdctl` (v3) against `endpoints`: success and its output.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .expect("etcdctl not found: run ./scripts/setup.sh (installs Debian's etcd-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs `etcdctl`, which must succeed: its output.
pub fn ok(endpoints: &str, args: &[&str]) -> String {
    let (success, out) = etcdctl(endpoints, args);
    assert!(success, "etcdctl {args:?} failed: {out}");
    out
}

/// A current-thread tokio runtime for a test's async parts.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A KV client to node `i`.
pub async fn kv_client(c: &ProcCluster, i: usize) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{}", c.members[i].client_addr)).await.unwrap()
}

/// The value of metric `name` on node `i` (0 when absent).
pub fn metric(c: &ProcCluster, i: usize, name: &str) -> u64 {
    let (_, body) = http_get(&c.members[i].http_addr, "/metrics");
    body.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One gRPC call by hand over HTTP/2 with prior knowledge, sending
/// `authority` verbatim as `:authority` (forms no Rust client library
/// lets through, such as `passthrough:///host:port`). Answers the first
/// DATA payload of the reply (the length-prefixed message), or why there
/// was none (a stream reset, a GOAWAY, a closed connection, a timeout).
pub fn raw_grpc_call(addr: &str, authority: &str, path: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    fn frame(out: &mut Vec<u8>, frame_type: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[frame_type, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    // HPACK literals without indexing, plain strings (lengths < 127).
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.extend_from_slice(&[0, n.len() as u8]);
        block.extend_from_slice(n.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    frame(&mut out, 0x1, 0x4, 1, &block);
    frame(&mut out, 0x0, 0x1, 1, &body);
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(&out).map_err(|e| e.to_string())?;
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).map_err(|e| format!("reading a frame: {e}"))?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).map_err(|e| format!("reading a frame: {e}"))?;
        match head[3] {
            0x0 if stream == 1 && !payload.is_empty() => return Ok(payload),
            0x3 if stream == 1 => return Err(format!("stream reset, error code {:?}", &payload)),
            0x7 => return Err(format!("GOAWAY {:?}", &payload)),
            0x4 if head[4] & 0x1 == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, 0x4, 0x1, 0, &[]);
                s.write_all(&ack).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
    }
}
