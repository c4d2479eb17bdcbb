//! Shared harness of the multi-process tests: real `meridian server`
//! processes on loopback, etcdctl, HTTP.

#![allow(dead_code)]

use std::path::PathBuf;
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

pub struct ProcCluster {
    _dir: tempfile::TempDir,
    /// Signs every node's certificate (nodes added later too).
    ca: meridian_transport_quic::DevCa,
    pub members: Vec<Member>,
    pub configs: Vec<PathBuf>,
    pub children: Vec<Option<Child>>,
}

pub fn free_base_port() -> u16 {
    // Spread test runs over the port space by pid, and clusters within a run
    // by a counter; each cluster uses base..base+300.
    // Stay below Linux's ephemeral range (32768+), where outgoing
    // connections could already hold a port we want to listen on.
    let block = (std::process::id() % 24) * 3 + NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
    (10000 + (block % 73) * 300) as u16
}

impl ProcCluster {
    pub fn start(nodes: u64, namespaces: &[&str]) -> ProcCluster {
        Self::start_members(dev_layout::members(nodes, free_base_port()).unwrap(), namespaces)
    }

    /// A cluster of `members` (their advertised addresses as given: DNS
    /// names allowed).
    pub fn start_members(members: Vec<Member>, namespaces: &[&str]) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let ns: Vec<String> = namespaces.iter().map(|s| s.to_string()).collect();
        let ca = meridian_transport_quic::DevCa::generate().unwrap();
        let debug = meridian_server::config::DebugConfig::default();
        let tick_ms = meridian_server::config::DEFAULT_TICK_MS;
        let configs = dev_layout::write_configs_signed(dir.path(), &members, &ns, tick_ms, &debug, &ca).unwrap();
        let mut c = ProcCluster { _dir: dir, ca, members, configs, children: Vec::new() };
        for i in 0..c.members.len() {
            let child = c.spawn(i);
            c.children.push(Some(child));
        }
        c.wait_ready(Duration::from_secs(60));
        c
    }

    /// Starts node `member`, which joins through member 0 (`join` in its
    /// config) instead of bootstrapping; answers its index. Not waited for.
    pub fn add_joining(&mut self, member: Member) -> usize {
        let join = vec![self.members[0].client_addr.clone()];
        let dir = self._dir.path().join(format!("joined-{}", self.members.len()));
        let path = dev_layout::write_join_config(&dir, &member, &join, meridian_server::config::DEFAULT_TICK_MS, &self.ca).unwrap();
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
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["server", "--config"])
            .arg(&self.configs[i])
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

    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client_addr.to_string()).collect::<Vec<_>>().join(",")
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
    }
}

/// One HTTP/1.1 request to `addr` (`host:port`); status 0 when it cannot
/// connect.
pub fn http_request(addr: &str, method: &str, path: &str, body: &str, content_type: &str) -> (u16, String) {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs as _;
    let Some(sock) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return (0, String::new()) };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "", "text/plain")
}

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

pub fn ok(endpoints: &str, args: &[&str]) -> String {
    let (success, out) = etcdctl(endpoints, args);
    assert!(success, "etcdctl {args:?} failed: {out}");
    out
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

pub async fn kv_client(c: &ProcCluster, i: usize) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{}", c.members[i].client_addr)).await.unwrap()
}

pub fn metric(c: &ProcCluster, i: usize, name: &str) -> u64 {
    let (_, body) = http_get(&c.members[i].http_addr, "/metrics");
    body.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}
