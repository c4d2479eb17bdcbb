//! The `meridian` binary.
//!
//! `server` runs a node, `dev` a local cluster of them, `kv` and `status`
//! are clients over the etcd v3 API, `bench` a load generator over it (for
//! Meridian and etcd alike). The simulator's `demo` and `bench-raft` are
//! the `meridian-sim` binary's, so this one does not link the simulator.

// The binary owns the clock: it times benchmarks and prints progress.
#![allow(clippy::disallowed_methods)]

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// glibc's malloc slows down as a long-running node's heap fragments
/// (`_int_malloc` grew from ~2 % to ~7 % of CPU over three put runs on one
/// cluster); mimalloc stays flat. Measurements in docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod client;
mod coord;
mod dev;
mod namespace_cli;
mod node_cli;
mod snapshot;

/// The client endpoints of a default `meridian dev` cluster.
pub const DEV_ENDPOINTS: &str = "127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792";
/// The HTTP addresses of `meridian dev`'s default cluster.
pub const DEV_HTTP: &str = "127.0.0.1:23990,127.0.0.1:23991,127.0.0.1:23992";

#[derive(Parser)]
#[command(name = "meridian", version, about = "Meridian: a geo-sharded coordination service")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one Meridian node (etcd v3 gRPC API, HTTP/JSON, metrics).
    Server {
        /// TOML configuration file (see docs/operations.md).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Accept labels (region, zone, host) other than the ones this
        /// node's data directory recorded; without it such a restart is
        /// refused, as replicas were placed by the old labels.
        #[arg(long)]
        relabel: bool,
        /// Join a running cluster through any of these members' client
        /// addresses (HOST:PORT, comma-separated) instead of bootstrapping
        /// one: the node registers itself and holds no replica until it is
        /// added to a range (`meridian members`). Overrides `join` in the
        /// config; `initial_cluster` then lists this node only.
        #[arg(long, value_delimiter = ',')]
        join: Vec<String>,
        /// Space quota of this member's engine files in bytes (etcd's
        /// flag): 0 is etcd's default of 2 GiB, a negative value turns it
        /// off. Overrides `quota_backend_bytes` in the config.
        #[arg(long, allow_negative_numbers = true)]
        quota_backend_bytes: Option<i64>,
    },
    /// Start a local cluster of real server processes and keep it in the
    /// foreground until Ctrl-C.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value = "meridian-dev-data")]
        data_dir: std::path::PathBuf,
        /// Client ports start here; peer ports at +100, HTTP at +200.
        #[arg(long, default_value_t = 23790)]
        base_port: u16,
        /// Namespaces to declare (comma-separated key prefixes).
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Regions (comma-separated, e.g. us-east,eu-west,ap-south): a
        /// data node per zone in each, WAN latency between them (66, 64
        /// and 146 ms round trips for the first three), a zone-survival
        /// namespace homed in each (/REGION/) and, with three or more, a
        /// region-survival one (/global/). Replaces --nodes.
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// Zones (data nodes) per region, with --regions.
        #[arg(long, default_value_t = 3)]
        zones: usize,
        /// One round trip (ms) between every pair of regions instead of
        /// the defaults, with --regions.
        #[arg(long)]
        rtt_ms: Option<u64>,
        /// With --regions: no witness nodes. By default, with three regions
        /// or more, each region gets one witness node more (zone
        /// REGION-w), and /global/'s third-region vote goes to a witness.
        #[arg(long)]
        no_witnesses: bool,
    },
    /// Key-value operations over the etcd v3 API.
    Kv {
        #[arg(long, default_value = DEV_ENDPOINTS)]
        endpoints: String,
        #[command(subcommand)]
        op: KvOp,
    },
    /// Watch a key or prefix and print its events.
    Watch {
        #[arg(long, default_value = DEV_ENDPOINTS)]
        endpoints: String,
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Start revision (history replay); 0 = from now.
        #[arg(long, default_value_t = 0)]
        rev: i64,
        #[arg(long)]
        prev_kv: bool,
    },
    /// Leases: grant, revoke, keepalive, ttl.
    Lease {
        #[arg(long, default_value = DEV_ENDPOINTS)]
        endpoints: String,
        #[command(subcommand)]
        op: LeaseOp,
    },
    /// Run a command while holding a lock (native FIFO lock, fencing
    /// token in MERIDIAN_FENCING_TOKEN); or describe locks.
    ///
    /// Exit code: the command's; 2 if not acquired within --wait; 3 if the
    /// lock was lost (the command is sent SIGTERM, then SIGKILL after 5 s).
    Lock {
        #[arg(long, default_value = DEV_ENDPOINTS)]
        endpoints: String,
        name: String,
        /// Session TTL in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        /// Longest wait in seconds (default: until acquired).
        #[arg(long)]
        wait: Option<f64>,
        /// Lock-delay in ms if this session expires while holding (≤ 60000).
        #[arg(long, default_value_t = 0)]
        lock_delay: u64,
        /// Print the lock's holder and waiters instead of running anything.
        #[arg(long)]
        describe: bool,
        /// With --describe: every lock of NAME's namespace, and deadlocks.
        #[arg(long)]
        namespace: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Campaign in an election and print leadership changes (Ctrl-C
    /// resigns), or --observe the leader.
    Elect {
        #[arg(long, default_value = DEV_ENDPOINTS)]
        endpoints: String,
        name: String,
        /// The candidate's value (required unless --observe).
        value: Option<String>,
        #[arg(long)]
        observe: bool,
        #[arg(long, default_value_t = 10)]
        ttl: i64,
    },
    /// Show or change which nodes hold a range's replicas (one step at a
    /// time: add-learner, then promote once caught up; or remove).
    Members {
        /// HTTP addresses of the cluster's nodes; the change goes to the
        /// range's leader among them.
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        range_id: u64,
        /// add-learner, promote or remove; omit to show the configuration.
        op: Option<String>,
        node_id: Option<u64>,
    },
    /// Backups: save one from a running cluster, check one, or restore one
    /// into a new member's data directory (docs/operations.md, "Backups").
    Snapshot {
        #[command(subcommand)]
        op: SnapshotOp,
    },
    /// Every node as one member's gossip sees it: addresses, region, zone,
    /// role, state (alive, suspect, dead), φ, incarnation, last heard.
    Nodes {
        /// HTTP addresses of members; the first that answers is asked.
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        /// `json` for a machine-readable answer.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// The placement driver: `plan` shows what it would do now and why,
    /// `operators` what it runs and ran (`[placement] execute = true`).
    Placement {
        #[command(subcommand)]
        op: PlacementOp,
    },
    /// Draining and decommissioning nodes (needs `[placement] execute`).
    Node {
        #[command(subcommand)]
        op: NodeOp,
    },
    /// Namespaces at runtime: `create`, `list`, `describe`, `drop`.
    Namespace {
        #[command(subcommand)]
        op: NamespaceOp,
    },
    /// Node and range status.
    Status {
        #[arg(long, default_value = DEV_ENDPOINTS)]
        endpoints: String,
        /// HTTP addresses, for the per-range table.
        #[arg(long)]
        http: Option<String>,
    },
    /// Load generator over the etcd v3 API, so the same code measures
    /// Meridian and etcd: throughput, latency p50/p90/p99/max and errors of
    /// one workload (see docs/performance.md).
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
}

#[derive(Subcommand)]
enum NodeOp {
    /// Moves every replica and leadership off the node (for maintenance,
    /// and before `decommission`); refused when the other nodes cannot
    /// take its replicas.
    Drain {
        id: u64,
        /// Report progress until the node holds nothing.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds (the drain
        /// goes on).
        #[arg(long, default_value_t = 1800)]
        timeout_s: u64,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
    },
    /// Stops a drain (what moved stays moved).
    Undrain {
        id: u64,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
    },
    /// Removes a drained node from the cluster for good.
    Decommission {
        id: u64,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
    },
    /// Whether the node drains, and the replicas and leaderships left on it.
    Status {
        id: u64,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
}

#[derive(Subcommand)]
enum NamespaceOp {
    /// Creates a namespace: its prefix moves out of the root namespace into
    /// a Raft group of its own (keys already under it move along, with
    /// their revisions). Usable as soon as this returns.
    Create {
        /// The prefix, written /name/ (segments of A-Z a-z 0-9 . _ -).
        name: String,
        /// Voters (default: the server's `[placement] replicas`).
        #[arg(long)]
        replicas: Option<usize>,
        /// `region=`, `zone=` or `host=` every replica's node must have.
        #[arg(long = "constraint", value_name = "KEY=VALUE")]
        constraints: Vec<String>,
        /// Served by the root group rather than a group of its own (many
        /// small namespaces keep the group count low; `split` gives it a
        /// group later). Takes no --replicas or --constraint.
        #[arg(long)]
        shared: bool,
        /// The region whose clients it serves: its voters (zone survival)
        /// or most of them (region survival) and its leader go there.
        #[arg(long, value_name = "REGION")]
        home_region: Option<String>,
        /// `zone` (default): voters over the home region's zones, writes
        /// and locks never leave it; `region`: 2 + 2 + 1 voters over three
        /// regions, surviving a region's loss, a write paying a round trip
        /// to the nearest other region.
        #[arg(long, value_name = "zone|region")]
        survival: Option<String>,
        /// A non-voting replica in every other region (zone survival):
        /// local serializable reads, warm for a planned move.
        #[arg(long)]
        read_replicas: bool,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        /// `json` for a machine-readable answer.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Merges a namespace's group into the root group (the namespace
    /// becomes shared; its keys keep their revisions and the root's
    /// revisions continue above them). Refused while it has sessions or
    /// locks.
    Merge {
        name: String,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Gives a shared namespace a Raft group of its own (its keys move
    /// there with their revisions). Refused while keys under it are
    /// attached to leases or locks are held there.
    Split {
        name: String,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// The last resort for a zone-survival namespace whose home region is
    /// lost (every voter down): its read replica in REGION becomes its only
    /// voter, by force, and REGION its home. Writes the lost voters
    /// acknowledged past what that replica received are lost; every token
    /// granted afterwards exceeds every token they could still hand out.
    /// Reports how far behind the replica was. Refused without
    /// --accept-data-loss, while any voter is alive, or with no read
    /// replica in REGION.
    Promote {
        name: String,
        /// The region whose read replica becomes the voter.
        #[arg(long, value_name = "REGION")]
        to_region: String,
        /// Accept losing what the replica had not received.
        #[arg(long)]
        accept_data_loss: bool,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Every namespace (created at runtime or declared in the config).
    List {
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// One namespace, with its key count and revision.
    Describe {
        name: String,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Drops a namespace created at runtime; refused while it holds keys
    /// unless --force (which discards them).
    Drop {
        name: String,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
    },
}

#[derive(Subcommand)]
enum PlacementOp {
    /// The operators a member runs and ran (the meta range's leader, with
    /// `[placement] execute = true`).
    Operators {
        /// HTTP addresses of members; every one that answers is listed.
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
    },
    /// The operators the scheduler would start now, and what it cannot do.
    Plan {
        /// HTTP addresses of members; the first that answers is asked.
        #[arg(long, default_value = DEV_HTTP)]
        http: String,
        /// `json` for a machine-readable answer.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
}

#[derive(Subcommand)]
enum SnapshotOp {
    /// Stream a backup of every namespace from a member into FILE (what
    /// `etcdctl snapshot save` does), then check it.
    Save {
        #[arg(long, default_value = DEV_ENDPOINTS)]
        endpoints: String,
        file: std::path::PathBuf,
    },
    /// Check every frame of a backup and print what it holds.
    Status {
        file: std::path::PathBuf,
        /// `json` for a machine-readable answer.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Write the data directory of one member of a new cluster from a
    /// backup; run it for every member, each with its own config, then
    /// start them.
    Restore {
        file: std::path::PathBuf,
        /// The member's server config (node id, initial cluster,
        /// namespaces, data_dir).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Write here instead of the config's data_dir (then point
        /// data_dir at it before starting).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum KvOp {
    Put {
        key: String,
        value: String,
        #[arg(long, default_value_t = 0)]
        lease: i64,
    },
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        #[arg(long, default_value_t = 0)]
        rev: i64,
        #[arg(long)]
        serializable: bool,
    },
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
}

#[derive(Subcommand)]
enum LeaseOp {
    Grant {
        /// Seconds.
        ttl: i64,
    },
    /// IDs are hexadecimal, as printed by grant.
    Revoke { id: String },
    Keepalive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    Ttl {
        id: String,
        #[arg(long)]
        keys: bool,
    },
}

/// The async runtime: one thread per core unless `workers` says otherwise;
/// one worker is a current-thread runtime (no thread besides the caller's
/// to hand work to), as `ServerConfig::single_threaded` expects.
fn runtime_with(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build().context("starting the tokio runtime")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> Result<()> {
    let default = if matches!(std::env::args().nth(1).as_deref(), Some("server")) { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Server { .. } | Cmd::Dev { .. }) {
        // A client command piped into `head` ends quietly when the pipe
        // closes (exit status 141, as a Unix tool killed by SIGPIPE), not
        // with println!'s panic and a backtrace.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or_default();
            if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
                std::process::exit(141);
            }
            default_hook(info)
        }));
    }
    match cli.cmd {
        Cmd::Server { config, relabel, join, quota_backend_bytes } => {
            let mut cfg = meridian_server::config::ServerConfig::load(&config)?;
            cfg.relabel = relabel;
            if let Some(q) = quota_backend_bytes {
                cfg.quota_backend_bytes = q;
            }
            if !join.is_empty() {
                cfg.join = join;
            }
            runtime_with(cfg.worker_threads)?.block_on(meridian_server::server::run(cfg, shutdown_signal()))?;
            Ok(())
        }
        Cmd::Dev { nodes, data_dir, base_port, namespaces, regions, zones, rtt_ms, no_witnesses } => {
            let witnesses = regions.len() >= 3 && !no_witnesses;
            runtime()?.block_on(dev::run(dev::DevOptions { nodes, data_dir, base_port, namespaces, regions, zones, rtt_ms, witnesses }))
        }
        Cmd::Kv { endpoints, op } => runtime()?.block_on(async move {
            match op {
                KvOp::Put { key, value, lease } => client::put(&endpoints, &key, &value, lease).await,
                KvOp::Get { key, prefix, rev, serializable } => client::get(&endpoints, &key, prefix, rev, serializable).await,
                KvOp::Del { key, prefix } => client::del(&endpoints, &key, prefix).await,
            }
        }),
        Cmd::Watch { endpoints, key, prefix, rev, prev_kv } => runtime()?.block_on(client::watch(&endpoints, &key, prefix, rev, prev_kv)),
        Cmd::Lease { endpoints, op } => {
            let cmd = match op {
                LeaseOp::Grant { ttl } => client::LeaseCmd::Grant { ttl },
                LeaseOp::Revoke { id } => client::LeaseCmd::Revoke { id: client::parse_lease_id(&id)? },
                LeaseOp::Keepalive { id, once } => client::LeaseCmd::KeepAlive { id: client::parse_lease_id(&id)?, once },
                LeaseOp::Ttl { id, keys } => client::LeaseCmd::Ttl { id: client::parse_lease_id(&id)?, keys },
            };
            runtime()?.block_on(client::lease(&endpoints, cmd))
        }
        Cmd::Lock { endpoints, name, ttl, wait, lock_delay, describe, namespace, command } => {
            let rt = runtime()?;
            if describe {
                return rt.block_on(coord::describe(&endpoints, &name, namespace));
            }
            let code = rt.block_on(coord::lock(coord::LockArgs { endpoints, name, ttl, wait, lock_delay_ms: lock_delay, command }))?;
            std::process::exit(code)
        }
        Cmd::Elect { endpoints, name, value, observe, ttl } => {
            let rt = runtime()?;
            if observe {
                return rt.block_on(coord::observe(&endpoints, &name));
            }
            let Some(value) = value else { bail!("meridian elect NAME VALUE (or --observe NAME)") };
            let code = rt.block_on(coord::elect(&endpoints, &name, &value, ttl))?;
            std::process::exit(code)
        }
        Cmd::Members { http, range_id, op, node_id } => client::members(&http, range_id, op.as_deref(), node_id),
        Cmd::Snapshot { op } => match op {
            SnapshotOp::Save { endpoints, file } => runtime()?.block_on(snapshot::save(&endpoints, &file)),
            SnapshotOp::Status { file, output } => match output.as_str() {
                "json" | "table" => snapshot::status(&file, output == "json"),
                other => anyhow::bail!("unknown output {other:?}: table or json"),
            },
            SnapshotOp::Restore { file, config, data_dir } => snapshot::restore(&file, &config, data_dir.as_deref()),
        },
        Cmd::Placement { op: PlacementOp::Operators { http } } => client::placement_operators(&http),
        Cmd::Node { op } => match op {
            NodeOp::Drain { id, wait, timeout_s, http } => node_cli::drain(&http, id, wait, std::time::Duration::from_secs(timeout_s)),
            NodeOp::Undrain { id, http } => node_cli::undrain(&http, id),
            NodeOp::Decommission { id, http } => node_cli::decommission(&http, id),
            NodeOp::Status { id, http, output } => node_cli::status(&http, id, json_output(&output)?),
        },
        Cmd::Namespace { op } => match op {
            NamespaceOp::Create { name, replicas, constraints, shared, home_region, survival, read_replicas, http, output } => {
                let spec =
                    meridian_server::namespace::CreateSpec { name, replicas, constraints, shared, home_region, survival, read_replicas };
                namespace_cli::create(&http, &spec, json_output(&output)?)
            }
            NamespaceOp::Merge { name, http, output } => namespace_cli::regroup(&http, &name, "merge", json_output(&output)?),
            NamespaceOp::Split { name, http, output } => namespace_cli::regroup(&http, &name, "split", json_output(&output)?),
            NamespaceOp::Promote { name, to_region, accept_data_loss, http, output } => {
                namespace_cli::promote(&http, &name, &to_region, accept_data_loss, json_output(&output)?)
            }
            NamespaceOp::List { http, output } => namespace_cli::list(&http, json_output(&output)?),
            NamespaceOp::Describe { name, http, output } => namespace_cli::describe(&http, &name, json_output(&output)?),
            NamespaceOp::Drop { name, force, http } => namespace_cli::drop(&http, &name, force),
        },
        Cmd::Placement { op: PlacementOp::Plan { http, output } } => match output.as_str() {
            "json" | "table" => client::placement_plan(&http, output == "json"),
            other => anyhow::bail!("unknown output {other:?}: table or json"),
        },
        Cmd::Nodes { http, output } => match output.as_str() {
            "json" | "table" => client::nodes(&http, output == "json"),
            other => anyhow::bail!("unknown output {other:?}: table or json"),
        },
        Cmd::Status { endpoints, http } => runtime()?.block_on(client::status(&endpoints, http.as_deref())),
        Cmd::Bench { args } => {
            // Validated before the runtime is built: it has --threads threads.
            args.validate()?;
            runtime_with(Some(args.threads))?.block_on(bench::run(args))
        }
    }
}

/// `-o json` or `-o table`.
fn json_output(output: &str) -> Result<bool> {
    match output {
        "json" => Ok(true),
        "table" => Ok(false),
        other => bail!("-o {other}: expected json or table"),
    }
}
