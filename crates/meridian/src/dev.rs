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
    /// Several regions (a data node per zone in each), WAN latency
    /// between them; empty: one region of `nodes` nodes.
    pub regions: Vec<String>,
    pub zones: usize,
    /// One round trip for every pair of regions instead of the defaults.
    pub rtt_ms: Option<u64>,
    /// A witness node more in each region (with three regions or more).
    pub witnesses: bool,
}

/// Raft tick of a multi-region dev cluster: round trips of up to 146 ms
/// want elections slower than the 50 ms tick's 0.5-1 s.
const WAN_TICK_MS: u64 = 100;

/// How long `meridian dev --regions` waits for the namespaces' replicas
/// to reach their places.
const PLACEMENT_WAIT: Duration = Duration::from_secs(180);

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
    let regional = !opts.regions.is_empty();
    let places = if regional {
        let mut places = dev_layout::regional_places(&opts.regions, opts.zones).map_err(anyhow::Error::msg)?;
        if opts.witnesses {
            dev_layout::add_witnesses(&mut places, &opts.regions).map_err(anyhow::Error::msg)?;
        }
        places
    } else {
        if opts.witnesses {
            bail!("witness nodes need --regions (three or more)");
        }
        if !(1..=9).contains(&opts.nodes) {
            bail!("--nodes must be between 1 and 9");
        }
        dev_layout::local_places(opts.nodes as usize)
    };
    let members = dev_layout::members(places.len() as u64, opts.base_port).map_err(anyhow::Error::msg)?;
    let mut debug = meridian_server::config::DebugConfig::default();
    let mut tick_ms = meridian_server::config::DEFAULT_TICK_MS;
    let mut placement = meridian_server::placement::PlacementSettings::default();
    if regional {
        debug.wan = dev_layout::dev_wan(&opts.regions, opts.rtt_ms);
        debug.wan.validate().map_err(anyhow::Error::msg)?;
        tick_ms = WAN_TICK_MS;
        // The placement driver puts replicas where the namespaces'
        // policies say, and moves leaderships home.
        placement.execute = true;
    }
    let ca = dev_layout::DevCa::generate().map_err(|e| anyhow::anyhow!("generating the dev cluster CA: {e}"))?;
    let configs = dev_layout::write_configs_placed(&opts.data_dir, &members, &places, &opts.namespaces, tick_ms, &debug, &placement, &ca)
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
    println!("meridian dev: started {} node(s); data and logs in {}", members.len(), opts.data_dir.display());
    if regional {
        for l in &debug.wan.links {
            println!("  WAN: {} <-> {}: {} ms round trip (shaped in the node transport)", l.regions[0], l.regions[1], l.rtt_ms);
        }
    }
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
    // Witnesses serve no client: they are nobody's endpoint.
    let endpoints: Vec<String> = members.iter().zip(&places).filter(|(_, p)| !p.witness).map(|(m, _)| m.client_addr.to_string()).collect();
    let http: Vec<String> = members.iter().map(|m| m.http_addr.to_string()).collect();
    if regional {
        if let Err(e) = place_namespaces(&opts.regions, opts.zones, &http).await {
            stop_all(&mut children);
            return Err(e);
        }
    }
    println!("endpoints: {}", endpoints.join(","));
    if regional {
        for r in &opts.regions {
            let here: Vec<&str> =
                members.iter().zip(&places).filter(|(_, p)| &p.region == r && !p.witness).map(|(m, _)| m.client_addr.as_str()).collect();
            println!("endpoints[{r}]: {}", here.join(","));
        }
    }
    println!("http: {}", http.join(","));
    println!("try this:");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={} put /hello world", endpoints.join(","));
    println!("  ETCDCTL_API=3 etcdctl --endpoints={} get /hello", endpoints.join(","));
    println!("  meridian status --endpoints={} --http={}", endpoints.join(","), http.join(","));
    if regional {
        println!("  meridian nodes --http={}", http[0]);
        println!("  meridian namespace describe /{}/ --http={}", opts.regions[0], http[0]);
    }
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

/// Creates a zone-survival namespace homed in each region (`/REGION/`)
/// and, with three regions or more, a region-survival one homed in the
/// first (`/global/`); then waits, with progress, until the placement
/// driver has put every replica where its policy says.
async fn place_namespaces(regions: &[String], zones: usize, http: &[String]) -> Result<()> {
    use meridian_server::namespace::CreateSpec;
    // As many voters as the region has zones (data nodes), up to three.
    let mut specs: Vec<CreateSpec> = regions
        .iter()
        .map(|r| CreateSpec {
            name: format!("/{r}/"),
            home_region: Some(r.clone()),
            survival: Some("zone".into()),
            replicas: Some(zones.min(3)),
            ..CreateSpec::default()
        })
        .collect();
    // Region survival needs two nodes in the home and second regions.
    if regions.len() >= 3 && zones >= 2 {
        specs.push(CreateSpec {
            name: "/global/".into(),
            home_region: Some(regions[0].clone()),
            survival: Some("region".into()),
            ..CreateSpec::default()
        });
    }
    let all = http.join(",");
    // Every node's record (its region) reaches the first member before a
    // create is judged against the regions it knows.
    let started = Instant::now();
    loop {
        let nodes = tokio::task::block_in_place(|| crate::namespace_cli::call(&http[0], "GET", "/v1/nodes", None, Duration::from_secs(5)));
        let known = nodes.ok().map_or(0, |v| {
            v["nodes"].as_array().map_or(0, |a| a.iter().filter(|n| n["region"].as_str().is_some_and(|r| !r.is_empty())).count())
        });
        if known >= http.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the first node knows the region of {known} of {} nodes after 60 s", http.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for spec in &specs {
        let body = serde_json::to_string(spec)?;
        let answer = tokio::task::block_in_place(|| {
            crate::namespace_cli::call(&all, "POST", "/v1/namespaces", Some(&body), Duration::from_secs(30))
        });
        match answer {
            Ok(_) => println!(
                "  namespace {}: {} survival, home region {}",
                spec.name,
                spec.survival.as_deref().unwrap_or("zone"),
                spec.home_region.as_deref().unwrap_or("")
            ),
            Err(e) if e.to_string().contains("already exists") => println!("  namespace {}: exists already", spec.name),
            Err(e) => return Err(e.context(format!("creating namespace {}", spec.name))),
        }
    }
    let started = Instant::now();
    let mut last_report = 0;
    loop {
        let plan =
            tokio::task::block_in_place(|| crate::namespace_cli::call(&all, "GET", "/v1/placement/plan", None, Duration::from_secs(5)));
        let ready = http.iter().filter(|h| http_ok(h, "/readyz")).count();
        let pending = plan
            .as_ref()
            .ok()
            .filter(|v| v["complete"] == true)
            .and_then(|v| Some(v["operators"].as_array()?.len() as u64 + v["running"].as_u64().unwrap_or(0)));
        if pending == Some(0) && ready == http.len() {
            println!("  every replica is in place and every range has a leader ({}s)", started.elapsed().as_secs());
            return Ok(());
        }
        let secs = started.elapsed().as_secs();
        if started.elapsed() > PLACEMENT_WAIT {
            bail!("replicas not in place after {} s (meridian placement plan --http={} says why)", PLACEMENT_WAIT.as_secs(), http[0]);
        }
        if secs >= last_report + 5 {
            last_report = secs;
            let ops = pending.map_or("?".to_string(), |n| n.to_string());
            eprintln!("  placing replicas by region: {ops} operator(s) to go, {ready}/{} node(s) ready ({secs}s)", http.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
