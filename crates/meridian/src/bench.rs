//! `meridian bench`: a load generator over the etcd v3 API, so the same code
//! measures Meridian and etcd (`scripts/bench-vs-etcd.sh` runs both).
//!
//! ```text
//!   clients (tasks) ──▶ M gRPC channels ──▶ endpoints (channel i → endpoint i mod E)
//!        │  each: take a request slot (count AND deadline bound), call, time it
//!        ▼
//!   latency samples (µs, at most MAX_SAMPLES in all) ──▶ req/s, p50/p90/p99/max, errors
//!   progress task ──▶ stderr once per second
//! ```
//!
//! Workloads are closed loops: a client sends its next request when the
//! previous one answered. `watch` is the exception: one writer puts values
//! carrying their send time (nanoseconds since a shared `Instant`), and W
//! watchers on the prefix record receive time − send time for every event.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_codes::seeded::SplitMix64;
use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::kv_client::KvClient;
use meridian_proto::etcdserverpb::watch_client::WatchClient;
use tonic::transport::{Channel, Endpoint};

/// Most `--client-rtt-ms`.
pub const MAX_CLIENT_RTT_MS: u64 = 10_000;

pub const MAX_CLIENTS: usize = 10_000;
pub const MAX_CONNS: usize = 1_000;
pub const MAX_WATCHERS: usize = 100_000;
/// Upper bound of `--watch-streams`.
pub const MAX_WATCH_STREAMS: usize = 10_000;
/// Watches one stream carries at most (Meridian's server limit; etcd has
/// none).
pub const MAX_WATCHES_PER_STREAM: usize = 1024;
/// Upper bound of `--put-rate` (puts per second).
pub const MAX_PUT_RATE: u64 = 1_000_000;
/// Puts a paced writer (`--put-rate`) has in flight at most.
const MAX_PUTS_IN_FLIGHT: usize = 256;
pub const MAX_CAS_KEYS: usize = 1_000;
pub const MAX_THREADS: usize = 64;
pub const MAX_SESSIONS: usize = 100_000;
pub const MAX_DURATION_SECS: u64 = 3_600;
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// etcd's default request size limit is 1.5 MiB; stay under it.
pub const MAX_VALUE_SIZE: usize = 1 << 20;
/// Latency samples kept over all clients (4 MB of `u32`s); requests past
/// it still count towards throughput.
pub const MAX_SAMPLES: usize = 1_000_000;
/// Keys written before the get workloads.
const GET_KEYS: u64 = 1_000;
/// Per-request deadline, so that no loop waits forever on a dead server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After an error a client waits this long, so a down endpoint is not a
/// busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How long watchers may trail the writer's last put before the missing
/// events are counted as lost.
const WATCH_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Unique keys, one put per request.
    Put,
    /// Random gets of 1000 pre-written keys, linearizable reads.
    GetLinearizable,
    /// Random gets of 1000 pre-written keys, serializable (local) reads.
    GetSerializable,
    /// One writer, --watchers watchers on its prefix; event delivery latency.
    Watch,
    /// --watchers idle watchings (each on a key of its own, over
    /// --watch-streams streams) and no writes: with --server-pids, the
    /// servers' memory per watching (`rss_per_watching_bytes`).
    WatchIdle,
    /// Compare-and-swap (Txn on mod_revision) on --cas-keys keys.
    TxnCas,
    /// Native lock (meridian.v1): acquire + release per request, each
    /// client with its own session; --lock-names 0 = one name per client
    /// (uncontended), N = N shared names (1: contended).
    LockNative,
    /// etcd's lock API (v3lockpb): Lock + Unlock per request, each client
    /// with its own lease; same --lock-names rule.
    LockEtcd,
    /// --sessions leases kept alive by keepalive streams (one keepalive per
    /// lease every TTL/3); reports keepalives/s and, with --server-pids,
    /// the servers' CPU and memory.
    Sessions,
    /// Puts like `put`; meant to run while a leader is killed (the
    /// bench-vs-etcd script does it): `max_gap_ms` is the longest time no
    /// write succeeded, as clients saw it.
    Failover,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::GetLinearizable => "get-linearizable",
            Workload::GetSerializable => "get-serializable",
            Workload::Watch => "watch",
            Workload::WatchIdle => "watch-idle",
            Workload::TxnCas => "txn-cas",
            Workload::LockNative => "lock-native",
            Workload::LockEtcd => "lock-etcd",
            Workload::Sessions => "sessions",
            Workload::Failover => "failover",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated client endpoints (host:port); connections are spread
    /// over them round-robin.
    #[arg(long, default_value = crate::DEV_ENDPOINTS)]
    pub endpoints: String,
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Concurrent clients (closed loops), 1..=10000.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// gRPC connections the clients share, 1..=1000.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Stop after this many requests (puts, for `watch`)...
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// ...or after this many seconds, whichever comes first.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Value size in bytes (at least 8 for `watch`: the send time).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Watchers for the `watch` workloads.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Streams the watchers share (each stream carries several watches):
    /// 0 = one stream per watcher (`watch`), 100 (`watch-idle`).
    #[arg(long, default_value_t = 0)]
    pub watch_streams: usize,
    /// Puts per second of the `watch` writer: 0 = each put as soon as the
    /// previous one is acknowledged; R > 0 = paced at R/s, up to 256 in
    /// flight.
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Keys the `txn-cas` clients contend on.
    #[arg(long, default_value_t = 4)]
    pub cas_keys: usize,
    /// Lock names for the lock workloads: 0 = one per client.
    #[arg(long, default_value_t = 0)]
    pub lock_names: usize,
    /// Leases kept alive by `sessions`.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Key prefixes `put`/`failover` spread their writes over (e.g.
    /// /ns0/,/ns1/ for namespaces); default /bench/put/. The lock
    /// workloads take their locks (and sessions) in the first one's
    /// namespace (e.g. /us-east/ of `meridian dev --regions`); default
    /// /bench/lock/.
    #[arg(long, value_delimiter = ',')]
    pub prefixes: Vec<String>,
    /// Server process ids: every workload reports their CPU time per
    /// successful operation (`server_cpu_us_per_op`, over the whole run,
    /// a server that exits during it, as in `failover`, left out;
    /// setup included); `sessions` reports their CPU and memory.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Name of the system under test, printed with the results.
    #[arg(long, default_value = "target")]
    pub label: String,
    /// Also print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Round trip (ms) between the load generator and the endpoints, held
    /// in the client (half before each request, half after its answer):
    /// a client in another region than the endpoints, e.g. 66 for one in
    /// eu-west talking to us-east nodes of `meridian dev --regions`.
    /// 0..=10000; 0 (default) adds nothing.
    #[arg(long, default_value_t = 0)]
    pub client_rtt_ms: u64,
    /// Threads of the load generator's runtime, 1..=64. One thread lets a
    /// connection's requests of one turn go out in one write (fewer
    /// syscalls), so the client takes less of a machine it shares with
    /// the servers under test.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl BenchArgs {
    /// Half of `--client-rtt-ms`.
    fn one_way(&self) -> Duration {
        Duration::from_micros(self.client_rtt_ms * 500)
    }

    fn endpoint_list(&self) -> Vec<String> {
        self.endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    pub fn validate(&self) -> Result<()> {
        if self.endpoint_list().is_empty() {
            bail!("--endpoints is empty; give host:port[,host:port…]");
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            bail!("--clients must be 1..={MAX_CLIENTS}, got {}", self.clients);
        }
        if !(1..=MAX_CONNS).contains(&self.conns) {
            bail!("--conns must be 1..={MAX_CONNS}, got {}", self.conns);
        }
        if !(1..=MAX_REQUESTS).contains(&self.requests) {
            bail!("--requests must be 1..={MAX_REQUESTS}, got {}", self.requests);
        }
        if self.client_rtt_ms > MAX_CLIENT_RTT_MS {
            bail!("--client-rtt-ms must be 0..={MAX_CLIENT_RTT_MS}, got {}", self.client_rtt_ms);
        }
        if !(1..=MAX_DURATION_SECS).contains(&self.duration_secs) {
            bail!("--duration-secs must be 1..={MAX_DURATION_SECS}, got {}", self.duration_secs);
        }
        let min_value = if self.workload == Workload::Watch { 8 } else { 1 };
        if !(min_value..=MAX_VALUE_SIZE).contains(&self.value_size) {
            bail!("--value-size must be {min_value}..={MAX_VALUE_SIZE} for {}, got {}", self.workload.name(), self.value_size);
        }
        if !(1..=MAX_WATCHERS).contains(&self.watchers) {
            bail!("--watchers must be 1..={MAX_WATCHERS}, got {}", self.watchers);
        }
        let watching = matches!(self.workload, Workload::Watch | Workload::WatchIdle);
        if !watching && (self.watch_streams != 0 || self.put_rate != 0) {
            bail!("--watch-streams and --put-rate are for the watch workloads only");
        }
        if self.watch_streams > MAX_WATCH_STREAMS || self.watch_streams > self.watchers {
            bail!(
                "--watch-streams must be 0..={} (and at most --watchers), got {}",
                MAX_WATCH_STREAMS.min(self.watchers),
                self.watch_streams
            );
        }
        // The streams actually opened, and the watches each carries (a
        // Meridian server takes at most MAX_WATCHES_PER_STREAM on one).
        if watching {
            let streams = match (self.workload, self.watch_streams) {
                (Workload::WatchIdle, 0) => 100.min(self.watchers),
                (_, 0) => self.watchers,
                (_, n) => n,
            };
            if streams > MAX_WATCH_STREAMS {
                bail!(
                    "{} watchers on a stream each is {streams} streams (at most {MAX_WATCH_STREAMS}): give --watch-streams",
                    self.watchers
                );
            }
            if self.watchers.div_ceil(streams) > MAX_WATCHES_PER_STREAM {
                bail!(
                    "{} watchers over {streams} streams is more than {MAX_WATCHES_PER_STREAM} per stream: give more --watch-streams",
                    self.watchers
                );
            }
        }
        if self.put_rate > MAX_PUT_RATE {
            bail!("--put-rate must be 0..={MAX_PUT_RATE}, got {}", self.put_rate);
        }
        if self.lock_names > MAX_CLIENTS {
            bail!("--lock-names must be 0..={MAX_CLIENTS}, got {}", self.lock_names);
        }
        if !(1..=MAX_SESSIONS).contains(&self.sessions) {
            bail!("--sessions must be 1..={MAX_SESSIONS}, got {}", self.sessions);
        }
        if self.prefixes.len() > 1024 || self.prefixes.iter().any(|p| p.is_empty()) {
            bail!("--prefixes: at most 1024 non-empty prefixes");
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            bail!("--threads must be 1..={MAX_THREADS}, got {}", self.threads);
        }
        if !(1..=MAX_CAS_KEYS).contains(&self.cas_keys) {
            bail!("--cas-keys must be 1..={MAX_CAS_KEYS}, got {}", self.cas_keys);
        }
        Ok(())
    }
}

/// Latency percentiles in microseconds (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
}

/// The nearest-rank percentile of sorted samples: the smallest sample with
/// at least `per_mille`/1000 of the samples at or below it. Integer
/// arithmetic, so p90 of 1..=100 is exactly 90.
fn nearest_rank(sorted: &[u32], per_mille: usize) -> u32 {
    let rank = (per_mille * sorted.len()).div_ceil(1000).max(1);
    sorted[rank - 1]
}

/// Sorts `samples` in place and returns their percentiles; `None` when empty.
pub fn percentiles(samples: &mut [u32]) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    Some(Latency {
        samples: samples.len(),
        p50_us: nearest_rank(samples, 500),
        p90_us: nearest_rank(samples, 900),
        p99_us: nearest_rank(samples, 990),
        max_us: samples[samples.len() - 1],
    })
}

/// Latency samples of one client, capped so all clients together stay under
/// [`MAX_SAMPLES`].
struct Samples {
    us: Vec<u32>,
    cap: usize,
}

impl Samples {
    fn new(cap: usize) -> Samples {
        Samples { us: Vec::with_capacity(cap.min(4096)), cap }
    }

    fn record(&mut self, d: Duration) {
        if self.us.len() < self.cap {
            self.us.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
    }
}

/// What the clients of one run share: the request budget, the deadline and
/// the counters the progress line reads.
struct Shared {
    deadline: Instant,
    limit: u64,
    issued: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new(limit: u64, duration: Duration) -> Shared {
        Shared {
            deadline: Instant::now() + duration,
            limit,
            issued: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    /// The next request's sequence number, or `None` when the count or the
    /// time is used up.
    fn next(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        (n < self.limit).then_some(n)
    }

    /// Counts the outcome of a request sent at `sent`; `Some` on success.
    fn finish<T>(&self, samples: &mut Samples, sent: Instant, r: Result<tonic::Response<T>, tonic::Status>) -> Option<T> {
        match r {
            Ok(resp) => {
                samples.record(sent.elapsed());
                self.ok.fetch_add(1, Ordering::Relaxed);
                Some(resp.into_inner())
            }
            Err(status) => {
                self.error(format!("{:?}: {}", status.code(), status.message()));
                None
            }
        }
    }

    fn error(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            eprintln!("  first error: {msg}");
            *first = Some(msg);
        }
    }
}

/// One run's result.
#[derive(Debug)]
pub struct Report {
    pub workload: Workload,
    pub label: String,
    pub clients: usize,
    pub conns: usize,
    /// Successful requests (delivered events, for `watch`).
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    pub latency: Option<Latency>,
    /// Workload-specific counters (CAS outcomes, watch events).
    pub extra: Vec<(&'static str, u64)>,
}

impl Report {
    pub fn rate_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }

    fn header() -> String {
        format!(
            "{:<18} {:<10} {:>7} {:>5} {:>10} {:>7} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "workload", "target", "clients", "conns", "ok", "errors", "secs", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        )
    }

    fn row(&self) -> String {
        let ms = |f: fn(&Latency) -> u32| self.latency.as_ref().map_or("-".to_string(), |l| format!("{:.2}", f(l) as f64 / 1000.0));
        format!(
            "{:<18} {:<10} {:>7} {:>5} {:>10} {:>7} {:>7.2} {:>10.0} {:>8} {:>8} {:>8} {:>8}",
            self.workload.name(),
            self.label,
            self.clients,
            self.conns,
            self.ok,
            self.errors,
            self.secs,
            self.rate_per_sec(),
            ms(|l| l.p50_us),
            ms(|l| l.p90_us),
            ms(|l| l.p99_us),
            ms(|l| l.max_us),
        )
    }

    fn json(&self) -> String {
        let mut v = serde_json::json!({
            "workload": self.workload.name(),
            "target": self.label,
            "clients": self.clients,
            "conns": self.conns,
            "ok": self.ok,
            "errors": self.errors,
            "secs": (self.secs * 1000.0).round() / 1000.0,
            "ops_per_sec": self.rate_per_sec().round(),
            "samples": self.latency.map_or(0, |l| l.samples),
            "p50_us": self.latency.map(|l| l.p50_us),
            "p90_us": self.latency.map(|l| l.p90_us),
            "p99_us": self.latency.map(|l| l.p99_us),
            "max_us": self.latency.map(|l| l.max_us),
        });
        for (k, n) in &self.extra {
            v[*k] = serde_json::json!(n);
        }
        v.to_string()
    }
}

/// Opens `conns` channels, channel i to endpoint i mod E, each request
/// bounded by [`REQUEST_TIMEOUT`].
async fn connect_all(endpoints: &[String], conns: usize, one_way: Duration) -> Result<Vec<Conn>> {
    connect_with(endpoints, conns, Some(REQUEST_TIMEOUT), one_way).await
}

/// `timeout: None` for channels carrying long-lived streams (a channel
/// timeout would cancel them).
async fn connect_with(endpoints: &[String], conns: usize, timeout: Option<Duration>, one_way: Duration) -> Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(conns);
    for i in 0..conns {
        let ep = &endpoints[i % endpoints.len()];
        let url = if ep.starts_with("http") { ep.clone() } else { format!("http://{ep}") };
        let mut e =
            Endpoint::from_shared(url.clone()).with_context(|| format!("bad endpoint {ep:?}"))?.connect_timeout(Duration::from_secs(2));
        if let Some(t) = timeout {
            e = e.timeout(t);
        }
        let connector = tower::service_fn(|uri: tonic::transport::Uri| async move {
            let authority = uri.authority().ok_or_else(|| std::io::Error::other(format!("no host:port in {uri}")))?;
            // tonic bounds this by the endpoint's connect_timeout.
            let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Unvectored(tcp)))
        });
        let inner = e.connect_with_connector(connector).await.with_context(|| format!("connecting to {url}"))?;
        out.push(Conn { inner, one_way });
    }
    Ok(out)
}

/// A connection to one endpoint that holds each request `one_way` before
/// sending it and its answer `one_way` after it arrives (half of
/// `--client-rtt-ms`): the client as far from the endpoints as a client in
/// another region. A stream (watch) is held at its start only.
#[derive(Clone)]
pub struct Conn {
    inner: Channel,
    one_way: Duration,
}

type GrpcRequest = tonic::codegen::http::Request<tonic::body::BoxBody>;

impl tower::Service<GrpcRequest> for Conn {
    type Response = <Channel as tower::Service<GrpcRequest>>::Response;
    type Error = <Channel as tower::Service<GrpcRequest>>::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        // The channel polled ready is the one that sends (a clone is not
        // ready): keep it, leave a fresh clone in its place.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let one_way = self.one_way;
        if one_way.is_zero() {
            return Box::pin(ready.call(req));
        }
        Box::pin(async move {
            tokio::time::sleep(one_way).await;
            let answer = ready.call(req).await;
            tokio::time::sleep(one_way).await;
            answer
        })
    }
}

/// A TCP stream that tells HTTP/2 it has no vectored writes. h2 then
/// copies a frame of up to 1 KiB into its write buffer instead of chaining
/// every payload over 256 bytes (a 256-byte put is one), and a chained
/// payload makes it flush before it takes the next frame: one `writev` per
/// request. Copied, the requests that clients send in one turn of the
/// runtime go out in one write.
struct Unvectored(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Prints the progress line once per second until aborted.
fn spawn_progress(label: String, workload: Workload, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let done = shared.ok.load(Ordering::Relaxed);
            let errors = shared.errors.load(Ordering::Relaxed);
            eprintln!(
                "  [{:>3}s] {label} {}: {done} done, {}/s, {errors} errors",
                started.elapsed().as_secs(),
                workload.name(),
                done.saturating_sub(last)
            );
            last = done;
        }
    })
}

/// Runs one workload. `args` are validated by the caller, which needs
/// `--threads` before the runtime exists.
pub async fn run(args: BenchArgs) -> Result<()> {
    let channels = connect_all(&args.endpoint_list(), args.conns, args.one_way()).await?;
    eprintln!(
        "meridian bench: {} on {} ({} clients, {} connections, ≤{} requests, ≤{}s, {}-byte values)",
        args.workload.name(),
        args.endpoints,
        args.clients,
        args.conns,
        args.requests,
        args.duration_secs,
        args.value_size
    );
    // `sessions` measures the servers itself, around its keepalive phase.
    let measure_cpu = args.workload != Workload::Sessions;
    let cpu_before: Vec<Option<(u64, u64)>> =
        if measure_cpu { args.server_pids.iter().map(|p| proc_usage(*p)).collect() } else { Vec::new() };
    let mut report = match args.workload {
        Workload::Put => put(&args, &channels).await?,
        Workload::GetLinearizable => get(&args, &channels, false).await?,
        Workload::GetSerializable => get(&args, &channels, true).await?,
        Workload::Watch => watch(&args, &channels).await?,
        Workload::WatchIdle => watch_idle(&args, &channels).await?,
        Workload::TxnCas => txn_cas(&args, &channels).await?,
        Workload::LockNative => lock_native(&args, &channels).await?,
        Workload::LockEtcd => lock_etcd(&args, &channels).await?,
        Workload::Sessions => sessions(&args, &channels).await?,
        Workload::Failover => put(&args, &channels).await?,
    };
    if !cpu_before.is_empty() {
        let after: Vec<Option<(u64, u64)>> = args.server_pids.iter().map(|p| proc_usage(*p)).collect();
        // USER_HZ is 100 on Linux: a tick is 10,000 µs.
        let ticks: u64 = cpu_before.iter().zip(&after).filter_map(|(b, a)| Some(a.as_ref()?.0.saturating_sub(b.as_ref()?.0))).sum();
        report.extra.push(("server_cpu_us_per_op", ticks * 10_000 / report.ok.max(1)));
    }
    println!("{}", Report::header());
    println!("{}", report.row());
    for (k, n) in &report.extra {
        println!("  {k}: {n}");
    }
    if args.json {
        println!("{}", report.json());
    }
    Ok(())
}

/// Runs `clients` closed-loop tasks made by `make_client(i)` and gathers
/// their samples into a report.
async fn closed_loop<F, Fut>(args: &BenchArgs, make_client: F) -> Result<Report>
where
    F: Fn(usize, Arc<Shared>, Samples) -> Fut,
    Fut: std::future::Future<Output = Samples> + Send + 'static,
{
    let shared = Arc::new(Shared::new(args.requests, Duration::from_secs(args.duration_secs)));
    let cap = MAX_SAMPLES / args.clients;
    let progress = spawn_progress(args.label.clone(), args.workload, shared.clone());
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients).map(|i| tokio::spawn(make_client(i, shared.clone(), Samples::new(cap)))).collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a client task panicked")?.us);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    Ok(Report {
        workload: args.workload,
        label: args.label.clone(),
        clients: args.clients,
        conns: args.conns,
        ok: shared.ok.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        secs,
        latency: percentiles(&mut all),
        extra: Vec::new(),
    })
}

/// The longest stretch without a successful request (failover as clients
/// see it), from successes' completion times in ms since the start.
struct Gaps {
    start: Instant,
    last_ok_ms: AtomicU64,
    max_gap_ms: AtomicU64,
}

impl Gaps {
    fn new() -> Gaps {
        Gaps { start: Instant::now(), last_ok_ms: AtomicU64::new(0), max_gap_ms: AtomicU64::new(0) }
    }

    fn ok(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ok_ms.fetch_max(now, Ordering::Relaxed);
        if now > last {
            self.max_gap_ms.fetch_max(now - last, Ordering::Relaxed);
        }
    }

    /// The longest gap, counting one still open when the run's time was up
    /// (`run_ms` after the start; the drain of requests in flight after it
    /// does not count).
    fn max_gap_at_end(&self, run_ms: u64) -> u64 {
        let end = (self.start.elapsed().as_millis() as u64).min(run_ms);
        let open = end.saturating_sub(self.last_ok_ms.load(Ordering::Relaxed));
        self.max_gap_ms.load(Ordering::Relaxed).max(open)
    }
}

async fn put(args: &BenchArgs, channels: &[Conn]) -> Result<Report> {
    let value = vec![b'v'; args.value_size];
    let prefixes: Arc<Vec<String>> =
        Arc::new(if args.prefixes.is_empty() { vec!["/bench/put/".to_string()] } else { args.prefixes.clone() });
    let gaps = Arc::new(Gaps::new());
    let mut report = closed_loop(args, |i, shared, mut samples| {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let (value, prefixes, gaps) = (value.clone(), prefixes.clone(), gaps.clone());
        async move {
            while let Some(n) = shared.next() {
                let prefix = &prefixes[n as usize % prefixes.len()];
                let req = pb::PutRequest { key: format!("{prefix}{n:012}").into_bytes(), value: value.clone(), ..Default::default() };
                let sent = Instant::now();
                let r = kv.put(req).await;
                if shared.finish(&mut samples, sent, r).is_none() {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                } else {
                    gaps.ok();
                }
            }
            samples
        }
    })
    .await?;
    report.extra = vec![("max_gap_ms", gaps.max_gap_at_end(args.duration_secs.saturating_mul(1000))), ("prefixes", prefixes.len() as u64)];
    Ok(report)
}

/// Where the lock workloads take their locks: the first of --prefixes
/// (a namespace), or /bench/lock/.
fn lock_namespace(args: &BenchArgs) -> &str {
    args.prefixes.first().map_or("/bench/lock/", String::as_str)
}

fn lock_name(args: &BenchArgs, client: usize) -> Vec<u8> {
    let n = if args.lock_names == 0 { client } else { client % args.lock_names };
    format!("{}bench-lock-{n:05}", lock_namespace(args)).into_bytes()
}

/// Session/lease TTL for the lock workloads: outlives the run, no
/// keepalives needed.
fn lock_ttl(args: &BenchArgs) -> i64 {
    (args.duration_secs as i64 + 60).max(60)
}

async fn lock_native(args: &BenchArgs, channels: &[Conn]) -> Result<Report> {
    use meridian_proto::meridian::v1 as api;
    let mut sessions = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut sc = api::session_client::SessionClient::new(channels[i % channels.len()].clone());
        let r =
            sc.create(api::SessionCreateRequest { namespace: lock_namespace(args).as_bytes().to_vec(), ttl_seconds: lock_ttl(args) }).await;
        sessions.push(r.context("creating a session (is this a Meridian endpoint?)")?.into_inner().session_id);
    }
    let sessions = Arc::new(sessions);
    let report = closed_loop(args, |i, shared, mut samples| {
        let mut lc = api::lock_client::LockClient::new(channels[i % channels.len()].clone());
        let (session, name) = (sessions[i], lock_name(args, i));
        async move {
            while shared.next().is_some() {
                let sent = Instant::now();
                let req = api::AcquireRequest { name: name.clone(), session_id: session, ..Default::default() };
                let token = match lc.acquire(req).await {
                    Ok(r) if r.get_ref().acquired => r.into_inner().token,
                    Ok(_) => {
                        shared.error("acquire returned without the lock".into());
                        continue;
                    }
                    Err(s) => {
                        shared.error(format!("acquire: {:?}: {}", s.code(), s.message()));
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let r = lc.release(api::ReleaseRequest { name: name.clone(), session_id: session, token }).await;
                if shared.finish(&mut samples, sent, r).is_none() {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            samples
        }
    })
    .await?;
    let mut sc = api::session_client::SessionClient::new(channels[0].clone());
    for s in sessions.iter() {
        let _ = sc.close(api::SessionCloseRequest { session_id: *s }).await;
    }
    Ok(report)
}

async fn lock_etcd(args: &BenchArgs, channels: &[Conn]) -> Result<Report> {
    use meridian_proto::etcdserverpb::lease_client::LeaseClient;
    use meridian_proto::v3lockpb;
    let mut leases = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut lc = LeaseClient::new(channels[i % channels.len()].clone());
        let r = lc.lease_grant(pb::LeaseGrantRequest { ttl: lock_ttl(args), id: 0 }).await.context("granting a lease")?;
        leases.push(r.into_inner().id);
    }
    let leases = Arc::new(leases);
    let report = closed_loop(args, |i, shared, mut samples| {
        let mut lc = v3lockpb::lock_client::LockClient::new(channels[i % channels.len()].clone());
        let (lease, name) = (leases[i], lock_name(args, i));
        async move {
            while shared.next().is_some() {
                let sent = Instant::now();
                let key = match lc.lock(v3lockpb::LockRequest { name: name.clone(), lease }).await {
                    Ok(r) => r.into_inner().key,
                    Err(s) => {
                        shared.error(format!("lock: {:?}: {}", s.code(), s.message()));
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let r = lc.unlock(v3lockpb::UnlockRequest { key }).await;
                if shared.finish(&mut samples, sent, r).is_none() {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            samples
        }
    })
    .await?;
    let mut lc = LeaseClient::new(channels[0].clone());
    for id in leases.iter() {
        let _ = lc.lease_revoke(pb::LeaseRevokeRequest { id: *id }).await;
    }
    Ok(report)
}

/// (utime + stime in clock ticks, RSS in KiB) of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, rss))
}

async fn sessions(args: &BenchArgs, channels: &[Conn]) -> Result<Report> {
    use meridian_proto::etcdserverpb::lease_client::LeaseClient;
    const TTL: i64 = 10;
    eprintln!("  granting {} leases…", args.sessions);
    let mut ids = Vec::with_capacity(args.sessions);
    let grant_started = Instant::now();
    let mut grant_errors = 0u64;
    // Grants in parallel batches (one task per connection).
    let per_conn = args.sessions.div_ceil(channels.len());
    let mut tasks = Vec::new();
    for (c, ch) in channels.iter().enumerate() {
        let n = per_conn.min(args.sessions.saturating_sub(c * per_conn));
        let mut lc = LeaseClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(n);
            let mut errors = 0u64;
            for _ in 0..n {
                match lc.lease_grant(pb::LeaseGrantRequest { ttl: TTL, id: 0 }).await {
                    Ok(r) => got.push(r.into_inner().id),
                    Err(_) => errors += 1,
                }
            }
            (got, errors)
        }));
    }
    for t in tasks {
        let (got, errors) = t.await.context("a grant task panicked")?;
        ids.extend(got);
        grant_errors += errors;
    }
    eprintln!(
        "  {} leases granted in {:.1}s ({grant_errors} errors); keeping them alive",
        ids.len(),
        grant_started.elapsed().as_secs_f64()
    );
    let before: Vec<Option<(u64, u64)>> = args.server_pids.iter().map(|p| proc_usage(*p)).collect();
    let ids = Arc::new(ids);
    let streams = channels.len().min(ids.len()).max(1);
    let stream_channels = connect_with(&args.endpoint_list(), streams, None, args.one_way()).await?;
    let shared = Arc::new(Shared::new(u64::MAX, Duration::from_secs(args.duration_secs)));
    let expired = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress(args.label.clone(), args.workload, shared.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (s, ch) in stream_channels.iter().enumerate() {
        let mut lc = LeaseClient::new(ch.clone());
        let mine: Vec<i64> = ids.iter().skip(s).step_by(streams).copied().collect();
        let (shared, expired) = (shared.clone(), expired.clone());
        let cap = MAX_SAMPLES / streams;
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::new(cap);
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            // Something to send before the stream opens: some servers (etcd)
            // answer the call's headers only with the first response.
            if let Some(first) = mine.first() {
                let _ = tx.send(pb::LeaseKeepAliveRequest { id: *first }).await;
            }
            let mut primed = !mine.is_empty();
            let mut stream = match lc.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    shared.error(format!("keepalive stream: {e}"));
                    return samples;
                }
            };
            // One round = every lease of this stream once; a round every TTL/3.
            let round = Duration::from_secs(TTL as u64) / 3;
            while Instant::now() < shared.deadline {
                let round_start = Instant::now();
                for chunk in mine.chunks(256) {
                    let sent = Instant::now();
                    for (k, id) in chunk.iter().enumerate() {
                        if k == 0 && std::mem::take(&mut primed) {
                            continue;
                        }
                        if tx.send(pb::LeaseKeepAliveRequest { id: *id }).await.is_err() {
                            return samples;
                        }
                    }
                    for _ in chunk {
                        match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
                            Ok(Ok(Some(r))) => {
                                if r.ttl <= 0 {
                                    expired.fetch_add(1, Ordering::Relaxed);
                                }
                                samples.record(sent.elapsed());
                                shared.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Ok(None)) => return samples,
                            Ok(Err(e)) => {
                                shared.error(format!("keepalive: {e}"));
                                return samples;
                            }
                            Err(_) => {
                                shared.error("keepalive timed out".into());
                                return samples;
                            }
                        }
                    }
                }
                let left = round.saturating_sub(round_start.elapsed());
                tokio::time::sleep(left.min(shared.deadline.saturating_duration_since(Instant::now()))).await;
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a keepalive task panicked")?.us);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    let after: Vec<Option<(u64, u64)>> = args.server_pids.iter().map(|p| proc_usage(*p)).collect();
    let ticks = 100.0; // USER_HZ on Linux
    let mut extra = vec![("sessions", ids.len() as u64), ("grant_errors", grant_errors), ("expired_seen", expired.load(Ordering::Relaxed))];
    let (mut cpu_ticks, mut rss_kib) = (0u64, 0u64);
    for (b, a) in before.iter().zip(&after) {
        if let (Some(b), Some(a)) = (b, a) {
            cpu_ticks += a.0.saturating_sub(b.0);
            rss_kib += a.1;
        }
    }
    if !args.server_pids.is_empty() {
        extra.push(("server_cpu_pct_x10", (cpu_ticks as f64 / ticks / secs * 1000.0) as u64));
        extra.push(("server_rss_mib", rss_kib / 1024));
    }
    // The leases expire TTL seconds after the last keepalive.
    Ok(Report {
        workload: args.workload,
        label: args.label.clone(),
        clients: streams,
        conns: args.conns,
        ok: shared.ok.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed) + grant_errors,
        secs,
        latency: percentiles(&mut all),
        extra,
    })
}

fn get_key(i: u64) -> Vec<u8> {
    format!("/bench/get/{i:04}").into_bytes()
}

async fn get(args: &BenchArgs, channels: &[Conn], serializable: bool) -> Result<Report> {
    // Pre-populate with a few concurrent writers; any failure stops the run.
    let writers = channels.len().clamp(1, 16) as u64;
    let value = vec![b'g'; args.value_size];
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut kv = KvClient::new(channels[w as usize].clone());
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..GET_KEYS).step_by(writers as usize) {
                kv.put(pb::PutRequest { key: get_key(i), value: value.clone(), ..Default::default() }).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await.context("a writer task panicked")?.map_err(|s| anyhow::anyhow!("pre-populating {GET_KEYS} keys: {}", s.message()))?;
    }
    let report = closed_loop(args, |i, shared, mut samples| {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let mut rng = SplitMix64::new(i as u64);
        async move {
            while shared.next().is_some() {
                let req = pb::RangeRequest { key: get_key(rng.below(GET_KEYS)), serializable, ..Default::default() };
                let sent = Instant::now();
                let r = kv.range(req).await;
                match shared.finish(&mut samples, sent, r) {
                    Some(resp) if resp.kvs.len() != 1 => shared.error(format!("get found {} keys, expected 1", resp.kvs.len())),
                    Some(_) => {}
                    None => tokio::time::sleep(ERROR_BACKOFF).await,
                }
            }
            samples
        }
    })
    .await?;
    Ok(report)
}

fn cas_key(k: usize) -> Vec<u8> {
    format!("/bench/cas/{k:04}").into_bytes()
}

async fn txn_cas(args: &BenchArgs, channels: &[Conn]) -> Result<Report> {
    // Every key starts at a known mod_revision, from the put's header.
    let mut kv = KvClient::new(channels[0].clone());
    let mut revs = Vec::with_capacity(args.cas_keys);
    for k in 0..args.cas_keys {
        let r = kv
            .put(pb::PutRequest { key: cas_key(k), value: b"0".to_vec(), ..Default::default() })
            .await
            .map_err(|s| anyhow::anyhow!("initialising CAS keys: {}", s.message()))?
            .into_inner();
        revs.push(r.header.map_or(0, |h| h.revision));
    }
    let succeeded = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let value = vec![b'c'; args.value_size];
    let mut report = closed_loop(args, |i, shared, mut samples| {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let mut rng = SplitMix64::new(i as u64);
        let mut revs = revs.clone();
        let (succeeded, failed, value) = (succeeded.clone(), failed.clone(), value.clone());
        async move {
            while shared.next().is_some() {
                // One round trip per attempt: swap if the key is still at the
                // revision we last saw, else read its current revision.
                let k = rng.below(revs.len() as u64) as usize;
                let key = cas_key(k);
                let req = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: pb::compare::CompareResult::Equal as i32,
                        target: pb::compare::CompareTarget::Mod as i32,
                        key: key.clone(),
                        target_union: Some(pb::compare::TargetUnion::ModRevision(revs[k])),
                        range_end: Vec::new(),
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest { key, ..Default::default() })),
                    }],
                };
                let sent = Instant::now();
                let r = kv.txn(req).await;
                let Some(resp) = shared.finish(&mut samples, sent, r) else {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                    continue;
                };
                if resp.succeeded {
                    succeeded.fetch_add(1, Ordering::Relaxed);
                    revs[k] = resp.header.map_or(revs[k], |h| h.revision);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let current = resp.responses.first().and_then(|op| match &op.response {
                        Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.first().map(|kv| kv.mod_revision),
                        _ => None,
                    });
                    match current {
                        Some(rev) => revs[k] = rev,
                        None => shared.error("CAS failure branch returned no key".into()),
                    }
                }
            }
            samples
        }
    })
    .await?;
    report.extra = vec![("cas_succeeded", succeeded.load(Ordering::Relaxed)), ("cas_failed", failed.load(Ordering::Relaxed))];
    Ok(report)
}

/// What the watchers of one `watch` run share with the writer.
struct WatchState {
    /// Send times in the values are nanoseconds since this instant.
    epoch: Instant,
    created: AtomicU64,
    /// Puts the writer saw acknowledged; final once `writer_done` is set.
    puts_acked: AtomicU64,
    writer_done: AtomicBool,
    /// Set when the grace period is over: watchers return what they have.
    stop: AtomicBool,
    events: AtomicU64,
}

async fn watch(args: &BenchArgs, channels: &[Conn]) -> Result<Report> {
    // A prefix of this run only, so leftovers from earlier runs never count.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let prefix = format!("/bench/watch/{}-{nonce}/", std::process::id()).into_bytes();
    let range_end = {
        let mut e = prefix.clone();
        if let Some(last) = e.last_mut() {
            *last += 1; // '/' + 1 = '0': the end of the prefix
        }
        e
    };
    let state = Arc::new(WatchState {
        epoch: Instant::now(),
        created: AtomicU64::new(0),
        puts_acked: AtomicU64::new(0),
        writer_done: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        events: AtomicU64::new(0),
    });
    let shared = Arc::new(Shared::new(args.requests, Duration::from_secs(args.duration_secs)));
    let cap = MAX_SAMPLES / args.watchers;
    // One stream per watcher, or the watchers spread over --watch-streams.
    let streams = if args.watch_streams == 0 { args.watchers } else { args.watch_streams };
    let mut watchers = Vec::with_capacity(streams);
    for i in 0..streams {
        let per_stream = args.watchers / streams + usize::from(i < args.watchers % streams);
        let client = WatchClient::new(channels[i % channels.len()].clone());
        let (state, shared) = (state.clone(), shared.clone());
        let create = pb::WatchCreateRequest { key: prefix.clone(), range_end: range_end.clone(), ..Default::default() };
        let creates = vec![create; per_stream];
        watchers.push(tokio::spawn(watcher(client, creates, state, shared, Samples::new(cap * per_stream))));
    }
    // The writer starts when every watch exists, so each put is seen by all.
    let wait_started = Instant::now();
    while state.created.load(Ordering::Relaxed) < args.watchers as u64 {
        if wait_started.elapsed() > Duration::from_secs(30) || shared.errors.load(Ordering::Relaxed) > 0 {
            state.stop.store(true, Ordering::Relaxed);
            bail!(
                "only {}/{} watches were created within 30 s ({} errors)",
                state.created.load(Ordering::Relaxed),
                args.watchers,
                shared.errors.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fresh budget and deadline for the measured part.
    let shared_w = Arc::new(Shared::new(args.requests, Duration::from_secs(args.duration_secs)));
    let progress = spawn_progress(args.label.clone(), args.workload, shared_w.clone());
    let started = Instant::now();
    let mut put_samples = Samples::new(MAX_SAMPLES);
    if args.put_rate == 0 {
        let mut kv = KvClient::new(channels[0].clone());
        let mut value = vec![b'w'; args.value_size];
        while let Some(n) = shared_w.next() {
            let sent = Instant::now();
            let nanos = u64::try_from(sent.duration_since(state.epoch).as_nanos()).unwrap_or(u64::MAX);
            value[..8].copy_from_slice(&nanos.to_le_bytes());
            let mut key = prefix.clone();
            key.extend_from_slice(format!("{n:012}").as_bytes());
            let r = kv.put(pb::PutRequest { key, value: value.clone(), ..Default::default() }).await;
            if shared_w.finish(&mut put_samples, sent, r).is_some() {
                state.puts_acked.fetch_add(1, Ordering::Relaxed);
            } else {
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    } else {
        // Paced: put n goes out at start + n/rate, whatever the earlier
        // ones are doing (up to MAX_PUTS_IN_FLIGHT of them).
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PUTS_IN_FLIGHT));
        let samples = Arc::new(Mutex::new(Samples::new(MAX_SAMPLES)));
        while let Some(n) = shared_w.next() {
            tokio::time::sleep_until((started + Duration::from_secs_f64(n as f64 / args.put_rate as f64)).into()).await;
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let mut kv = KvClient::new(channels[n as usize % channels.len()].clone());
            let (state, shared_w, samples, prefix) = (state.clone(), shared_w.clone(), samples.clone(), prefix.clone());
            let mut value = vec![b'w'; args.value_size];
            tokio::spawn(async move {
                let _permit = permit;
                let sent = Instant::now();
                let nanos = u64::try_from(sent.duration_since(state.epoch).as_nanos()).unwrap_or(u64::MAX);
                value[..8].copy_from_slice(&nanos.to_le_bytes());
                let mut key = prefix;
                key.extend_from_slice(format!("{n:012}").as_bytes());
                let r = kv.put(pb::PutRequest { key, value, ..Default::default() }).await;
                let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
                if shared_w.finish(&mut s, sent, r).is_some() {
                    state.puts_acked.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Every put in flight finishes (each has its own deadline).
        let _ = permits.acquire_many(MAX_PUTS_IN_FLIGHT as u32).await;
        put_samples = std::mem::replace(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()), Samples::new(0));
    }
    state.writer_done.store(true, Ordering::Relaxed);
    let grace_end = Instant::now() + WATCH_GRACE;
    while !watchers.iter().all(|w| w.is_finished()) && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the grace period, events still missing count as lost.
    state.stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in watchers {
        all.extend(w.await.context("a watcher task panicked")?.us);
    }
    state.stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    let puts = state.puts_acked.load(Ordering::Relaxed);
    let expected = puts * args.watchers as u64;
    let offered = if args.put_rate > 0 { args.put_rate } else { 0 };
    let events = state.events.load(Ordering::Relaxed);
    let put_latency = percentiles(&mut put_samples.us);
    Ok(Report {
        workload: args.workload,
        label: args.label.clone(),
        clients: args.watchers,
        conns: args.conns,
        ok: events,
        errors: shared.errors.load(Ordering::Relaxed) + shared_w.errors.load(Ordering::Relaxed),
        secs,
        latency: percentiles(&mut all),
        extra: vec![
            ("puts", puts),
            ("put_p99_us", put_latency.map_or(0, |l| u64::from(l.p99_us))),
            ("events_expected", expected),
            ("events_received", events),
            ("events_missing", expected.saturating_sub(events)),
            ("watch_streams", streams as u64),
            ("put_rate_offered", offered),
        ],
    })
}

/// One watch stream carrying `creates.len()` watches: records receive
/// time − send time of every event until each watch has seen every
/// acknowledged put, or it is told to stop.
async fn watcher(
    mut client: WatchClient<Conn>,
    creates: Vec<pb::WatchCreateRequest>,
    state: Arc<WatchState>,
    shared: Arc<Shared>,
    mut samples: Samples,
) -> Samples {
    // Keep the request stream open: closing it would end the watch.
    let (tx, rx) = tokio::sync::mpsc::channel(creates.len().max(1));
    let watches = creates.len() as u64;
    for create in creates {
        let req = pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) };
        if tx.send(req).await.is_err() {
            return samples;
        }
    }
    let mut stream = match client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            shared.error(format!("watch: {:?}: {}", s.code(), s.message()));
            return samples;
        }
    };
    let mut received = 0u64;
    // Watches the server canceled (a slow stream): the others still count.
    let mut canceled = 0u64;
    let mut check = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => { shared.error("watch stream ended".into()); break; }
                    Err(s) => { shared.error(format!("watch: {:?}: {}", s.code(), s.message())); break; }
                };
                let now_ns = u64::try_from(state.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                if resp.created {
                    state.created.fetch_add(1, Ordering::Relaxed);
                }
                if resp.canceled {
                    shared.error(format!("watch canceled: {}", resp.cancel_reason));
                    canceled += 1;
                    if canceled >= watches {
                        break;
                    }
                    continue;
                }
                for ev in &resp.events {
                    let Some(sent_ns) = ev.kv.as_ref().and_then(|kv| kv.value.get(..8)).map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        u64::from_le_bytes(a)
                    }) else { continue };
                    samples.record(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                    received += 1;
                    state.events.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = check.tick() => {
                if state.stop.load(Ordering::Relaxed) {
                    break;
                }
                if state.writer_done.load(Ordering::Relaxed) && received >= state.puts_acked.load(Ordering::Relaxed) * watches {
                    break;
                }
            }
        }
    }
    drop(tx);
    samples
}

/// `watch-idle`: --watchers watchings, each on a key of its own, over
/// --watch-streams streams (default 100), held idle; the servers' resident
/// memory is read before the streams open and once every watch exists.
async fn watch_idle(args: &BenchArgs, channels: &[Conn]) -> Result<Report> {
    if args.server_pids.is_empty() {
        bail!("watch-idle measures server memory: give --server-pids");
    }
    // Every server must be readable at both ends, or the difference means
    // nothing.
    let rss = || -> Result<u64> {
        args.server_pids.iter().map(|p| proc_usage(*p).map(|(_, kib)| kib).with_context(|| format!("reading /proc/{p}"))).sum()
    };
    let before_kib = rss()?;
    let streams = if args.watch_streams == 0 { 100.min(args.watchers) } else { args.watch_streams };
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let created = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let per_stream = args.watchers / streams + usize::from(i < args.watchers % streams);
        let mut client = WatchClient::new(channels[i % channels.len()].clone());
        let (created, mut stop, errors) = (created.clone(), stop_rx.clone(), errors.clone());
        let creates: Vec<pb::WatchRequest> = (0..per_stream)
            .map(|j| pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                    key: format!("/bench/idle/{nonce}/{i:05}/{j:05}").into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(creates.len().max(1));
            for c in creates {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
            let mut stream = match client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                Ok(s) => s.into_inner(),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    m = stream.message() => match m {
                        Ok(Some(r)) if r.created && !r.canceled => { created.fetch_add(1, Ordering::Relaxed); }
                        Ok(Some(r)) if r.canceled => { errors.fetch_add(1, Ordering::Relaxed); }
                        Ok(Some(_)) => {}
                        _ => { errors.fetch_add(1, Ordering::Relaxed); break; }
                    },
                }
            }
            drop(tx);
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs.max(60));
    while created.load(Ordering::Relaxed) < args.watchers as u64 {
        if Instant::now() >= deadline || errors.load(Ordering::Relaxed) > 0 {
            let _ = stop.send(true);
            bail!(
                "only {}/{} watches were created ({} errors)",
                created.load(Ordering::Relaxed),
                args.watchers,
                errors.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let allocations settle, then read the memory the watchings hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = rss();
    let _ = stop.send(true);
    let after_kib = after_kib?;
    for t in tasks {
        let _ = t.await;
    }
    let per_watching = after_kib.saturating_sub(before_kib) * 1024 / args.watchers as u64;
    Ok(Report {
        workload: args.workload,
        label: args.label.clone(),
        clients: streams,
        conns: args.conns,
        ok: created.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        latency: None,
        extra: vec![
            ("watchings", args.watchers as u64),
            ("rss_before_kib", before_kib),
            ("rss_after_kib", after_kib),
            ("rss_per_watching_bytes", per_watching),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_still_open_at_the_end_counts() {
        // Last success at 100 ms, then nothing until the run ends at 400 ms.
        let g =
            Gaps { start: Instant::now() - Duration::from_millis(400), last_ok_ms: AtomicU64::new(100), max_gap_ms: AtomicU64::new(30) };
        let gap = g.max_gap_at_end(10_000);
        assert!((300..1000).contains(&gap), "{gap}");
        // ... up to the end of the run's time, not of the drain after it.
        assert_eq!(g.max_gap_at_end(250), 150);
        // A closed gap longer than the open one wins.
        let g =
            Gaps { start: Instant::now() - Duration::from_millis(400), last_ok_ms: AtomicU64::new(390), max_gap_ms: AtomicU64::new(250) };
        assert_eq!(g.max_gap_at_end(10_000), 250);
    }

    fn parse(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let argv = ["bench", "--workload", "put"].iter().chain(extra).copied();
        <Cli as clap::Parser>::try_parse_from(argv).expect("parses").args
    }

    #[test]
    fn a_client_round_trip_is_split_in_halves_and_bounded() {
        assert_eq!(parse(&[]).one_way(), Duration::ZERO);
        let a = parse(&["--client-rtt-ms", "66"]);
        assert!(a.validate().is_ok());
        assert_eq!(a.one_way(), Duration::from_millis(33));
        let err = parse(&["--client-rtt-ms", "10001"]).validate().unwrap_err().to_string();
        assert!(err.contains("--client-rtt-ms must be 0..=10000"), "{err}");
    }

    #[test]
    fn the_load_generator_runs_on_one_thread_unless_told_and_refuses_zero_or_too_many() {
        assert_eq!(parse(&[]).threads, 1);
        assert!(parse(&[]).validate().is_ok());
        assert!(parse(&["--threads", "4"]).validate().is_ok());
        for bad in ["0", "65"] {
            let err = parse(&["--threads", bad]).validate().unwrap_err().to_string();
            assert!(err.contains("--threads must be 1..=64"), "{err}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_on_known_samples() {
        // 1..=100 shuffled: the k-th percentile is exactly k.
        let mut s: Vec<u32> = (1..=100).rev().collect();
        s.swap(3, 70);
        let l = percentiles(&mut s).unwrap();
        assert_eq!(l, Latency { samples: 100, p50_us: 50, p90_us: 90, p99_us: 99, max_us: 100 });

        // Ten samples: p50 is the 5th, p90 the 9th, p99 rounds up to the 10th.
        let mut s = vec![70, 10, 100, 40, 20, 90, 30, 60, 50, 1000];
        let l = percentiles(&mut s).unwrap();
        assert_eq!(l, Latency { samples: 10, p50_us: 50, p90_us: 100, p99_us: 1000, max_us: 1000 });

        let mut one = vec![7];
        assert_eq!(percentiles(&mut one).unwrap(), Latency { samples: 1, p50_us: 7, p90_us: 7, p99_us: 7, max_us: 7 });
        assert_eq!(percentiles(&mut []), None);
    }
}
