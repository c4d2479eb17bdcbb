//! `meridian dev`: a local cluster of real `meridian server` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_server::dev_layout;

pub struct DevOptions {
    pub nodes: u64,
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub namespaces: Vec<String>,
}

/// True if `GET path` on `addr` (`host:port`) answers 200.
pub fn http_ok(addr: &str, path: &str) -> bool {
    matches!(meridian_client::http::get(addr, path, Duration::from_millis(1000)), Ok((200, _)))
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
    let members = dev_layout::members(opts.nodes, opts.base_port).map_err(anyhow::Error::msg)?;
    let configs = dev_layout::write_configs(&opts.data_dir, &members, &opts.namespaces, meridian_server::config::DEFAULT_TICK_MS)
        .map_err(anyhow::Error::msg)?;
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
        let ready = members.iter().filter(|m| http_ok(&m.http_addr, "/readyz")).count();
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
    println!("  curl -XPUT http://{}/v1/kv/greeting -d hello; curl http://{}/v1/kv/greeting", http[0], http[1]);
    println!("Ctrl-C stops every node.");
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
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
