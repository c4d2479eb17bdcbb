//! `meridian dev`: a local cluster of real `meridian server` processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_server::config::{Member, ServerConfig, TlsPaths};
use meridian_transport::quic::DevCa;

pub struct DevOptions {
    pub nodes: u64,
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub namespaces: Vec<String>,
}

fn addr(port: u32) -> Result<SocketAddr> {
    let port = u16::try_from(port).context("port out of range: choose a lower --base-port")?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

pub fn members(nodes: u64, base_port: u16) -> Result<Vec<Member>> {
    (1..=nodes)
        .map(|id| {
            let i = (id - 1) as u32;
            let b = u32::from(base_port);
            Ok(Member { id, client_addr: addr(b + i)?, peer_addr: addr(b + 100 + i)?, http_addr: addr(b + 200 + i)? })
        })
        .collect()
}

/// Writes certificates and a config file per node (reusing an existing
/// cluster's if its layout matches), returns the config paths.
fn prepare(opts: &DevOptions, members: &[Member]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&opts.data_dir).with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let ca = DevCa::generate().context("generating the dev cluster CA")?;
    let mut paths = Vec::new();
    for m in members {
        let dir = opts.data_dir.join(format!("node-{}", m.id));
        let cfg_path = dir.join("meridian.toml");
        if let Ok(existing) = ServerConfig::load(&cfg_path) {
            if existing.initial_cluster == members && existing.namespaces == opts.namespaces {
                paths.push(cfg_path);
                continue;
            }
            bail!(
                "{} holds a cluster with a different layout; remove {} or pick another --data-dir",
                cfg_path.display(),
                opts.data_dir.display()
            );
        }
        std::fs::create_dir_all(&dir)?;
        let tls = ca.issue(m.id).context("issuing a node certificate")?;
        let write = |name: &str, body: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        let tls_paths = TlsPaths {
            cert: write("node.pem", &tls.cert_chain_pem)?,
            key: write("node-key.pem", &tls.key_pem)?,
            ca: write("ca.pem", &tls.ca_pem)?,
        };
        let cfg = ServerConfig {
            node_id: m.id,
            data_dir: dir.clone(),
            initial_cluster: members.to_vec(),
            region: "local".into(),
            zone: format!("local-{}", (b'a' + (m.id as u8 - 1) % 3) as char),
            namespaces: opts.namespaces.clone(),
            tls: tls_paths,
            tick_ms: 100,
        };
        cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(&cfg_path, cfg.to_toml())?;
        paths.push(cfg_path);
    }
    Ok(paths)
}

/// GET `path` on `addr`; true on HTTP 200. A tiny client keeps the binary
/// free of an HTTP client dependency.
pub fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

fn stop_all(children: &mut [(u64, Child)]) {
    for (_, c) in children.iter() {
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, c) in children.iter_mut() {
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub async fn run(opts: DevOptions) -> Result<()> {
    if !(1..=9).contains(&opts.nodes) {
        bail!("--nodes must be between 1 and 9");
    }
    let members = members(opts.nodes, opts.base_port)?;
    let configs = prepare(&opts, &members)?;
    let exe = std::env::current_exe().context("locating the meridian binary")?;
    let mut children: Vec<(u64, Child)> = Vec::new();
    for (m, cfg) in members.iter().zip(&configs) {
        let log = cfg.parent().unwrap_or(Path::new(".")).join("server.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("server")
            .arg("--config")
            .arg(cfg)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting node {}", m.id))?;
        children.push((m.id, child));
    }
    println!("meridian dev: started {} node(s); data and logs in {}", opts.nodes, opts.data_dir.display());
    let started = Instant::now();
    let mut last_report = 0;
    loop {
        let ready = members.iter().filter(|m| http_ok(m.http_addr, "/readyz")).count();
        if ready == members.len() {
            break;
        }
        let exited = children.iter_mut().find_map(|(id, c)| c.try_wait().ok().flatten().map(|status| (*id, status)));
        if let Some((id, status)) = exited {
            let log = opts.data_dir.join(format!("node-{id}/server.log"));
            stop_all(&mut children);
            bail!("node {id} exited ({status}) while starting; see {}", log.display());
        }
        let secs = started.elapsed().as_secs();
        if secs >= 60 {
            stop_all(&mut children);
            bail!("the cluster did not elect leaders within 60 s; see the server.log files in {}", opts.data_dir.display());
        }
        if secs > last_report {
            last_report = secs;
            eprintln!("  waiting for every range to elect a leader: {ready}/{} node(s) ready ({secs}s)", members.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.client_addr.to_string()).collect();
    let http: Vec<String> = members.iter().map(|m| m.http_addr.to_string()).collect();
    println!("endpoints: {}", endpoints.join(","));
    println!("http: {}", http.join(","));
    println!("try this:");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={} put /hello world", endpoints.join(","));
    println!("  ETCDCTL_API=3 etcdctl --endpoints={} get /hello", endpoints.join(","));
    println!("  meridian status --endpoints={} --http={}", endpoints.join(","), http.join(","));
    println!("  curl http://{}/v1/kv/hello", http[0]);
    println!("Ctrl-C stops every node.");
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {
                for (id, c) in children.iter_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        eprintln!("node {id} exited ({status}); see {}", opts.data_dir.join(format!("node-{id}/server.log")).display());
                    }
                }
            }
        }
    }
    println!("stopping {} node(s)…", children.len());
    stop_all(&mut children);
    println!("stopped. Data stays in {} (run `meridian dev` again to reuse it, or delete it).", opts.data_dir.display());
    Ok(())
}
