//! The register workload: clients pinned to one node each issue reads
//! (linearizable `Range`), writes (`Put`) and compare-and-sets (`Txn`:
//! value == expected, or absent, then put) on a few keys. Every written
//! value is unique, so the history is checkable; each operation is exactly
//! one RPC under a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_check::models::{RegisterInput as In, RegisterOutput as Out};
use meridian_check::Operation;
use meridian_proto::etcdserverpb::kv_client::KvClient;
use meridian_proto::etcdserverpb::{compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use meridian_proto::mvccpb::KeyValue;
use meridian_proto::ErrorCode;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::debug;

use crate::clock::RunClock;
use crate::scenario::{RegisterWorkload, REGISTER_PREFIX};

/// Most operations one client issues (time bounds it first).
const MAX_OPS_PER_CLIENT: u64 = 1_000_000;
/// Pause after a failed operation, so a down node is not hammered.
const FAIL_BACKOFF: Duration = Duration::from_millis(150);

pub type RegisterOp = Operation<In, Out>;

/// Operation counts, shared with the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    /// Refused before taking effect (or a failed read): left out of the history.
    pub fail: AtomicU64,
    /// Outcome unknown (timeout, broken connection): may or may not have happened.
    pub unknown: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (self.ok.load(Ordering::Relaxed), self.fail.load(Ordering::Relaxed), self.unknown.load(Ordering::Relaxed))
    }
}

pub fn key_name(i: u32) -> String {
    format!("{REGISTER_PREFIX}k{i}")
}

/// The watched interval `[start, end)` holding every register key.
pub fn key_interval() -> (Vec<u8>, Vec<u8>) {
    let start = format!("{REGISTER_PREFIX}k").into_bytes();
    let mut end = start.clone();
    *end.last_mut().expect("non-empty") += 1;
    (start, end)
}

pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// A value as stored: its decimal digits.
pub fn encode(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// A stored value back as a number; anything else reads as `u64::MAX`,
/// which no client writes, so the checker flags it.
pub fn decode(kv: &KeyValue) -> u64 {
    std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

/// Whether a write surely did not take effect: refused before it was
/// proposed. Anything else (timeouts, broken connections, "request timed
/// out") leaves the outcome unknown.
pub fn surely_not_applied(s: &Status) -> bool {
    let m = s.message();
    match s.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::PermissionDenied => true,
        // Too busy: refused at admission.
        Code::ResourceExhausted => true,
        Code::Unavailable => {
            // By the member's code; a status without one by etcd's
            // wording (its wire contract).
            let leadership = match meridian_proto::error_code(s) {
                Some(code) => matches!(code, ErrorCode::NoLeader | ErrorCode::NotLeader),
                None => m.starts_with("etcdserver: no leader") || m.starts_with("etcdserver: not leader"),
            };
            leadership
                // The transport library's texts: never connected.
                || m.contains("tcp connect error")
                || m.contains("Connection refused")
        }
        _ => false,
    }
}

pub struct RegisterClient {
    pub id: u64,
    pub endpoint: SocketAddr,
    pub keys: u32,
    pub cfg: RegisterWorkload,
    pub rng: ChaCha8Rng,
    pub clock: RunClock,
    pub counters: Arc<Counters>,
    /// Stop issuing operations at this run time.
    pub end: Duration,
}

impl RegisterClient {
    pub async fn run(mut self) -> Vec<RegisterOp> {
        let mut kv = KvClient::new(channel(self.endpoint));
        let timeout = Duration::from_millis(self.cfg.op_timeout_ms);
        // The last value this client saw per key: what its CAS expects.
        let mut seen: Vec<Option<u64>> = vec![None; self.keys as usize];
        let mut ops = Vec::new();
        for seq in 0..MAX_OPS_PER_CLIENT {
            if self.clock.elapsed() >= self.end {
                break;
            }
            let k = self.rng.gen_range(0..self.keys);
            let key = key_name(k);
            let roll = self.rng.gen_range(0..100);
            let value = (self.id + 1) * 1_000_000_000 + seq;
            let input = if roll < self.cfg.read_percent {
                In::Read { key: key.clone() }
            } else if self.rng.gen_bool(0.6) {
                In::Write { key: key.clone(), value }
            } else {
                In::Cas { key: key.clone(), expected: seen[k as usize], new: value }
            };
            let call = self.clock.now_us();
            let result = tokio::time::timeout(timeout, execute(&mut kv, &input)).await;
            let ret = self.clock.now_us();
            let failed = match result {
                Ok(Ok((output, observed))) => {
                    if let Some(v) = observed {
                        seen[k as usize] = v;
                    }
                    ops.push(Operation::completed(self.id, input, output, call, ret));
                    self.counters.ok.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Ok(Err(status)) => {
                    debug!(client = self.id, "register op failed: {status}");
                    if matches!(input, In::Read { .. }) || surely_not_applied(&status) {
                        self.counters.fail.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ops.push(Operation::unknown(self.id, input, call));
                        self.counters.unknown.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
                Err(_) => {
                    if matches!(input, In::Read { .. }) {
                        self.counters.fail.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ops.push(Operation::unknown(self.id, input, call));
                        self.counters.unknown.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
            };
            let pause = if failed { FAIL_BACKOFF } else { Duration::from_millis(self.rng.gen_range(0..=self.cfg.think_ms)) };
            tokio::time::sleep(pause).await;
        }
        ops
    }
}

/// One RPC; returns the output and, when it tells, the key's value now
/// (`Some(None)`: absent).
async fn execute(kv: &mut KvClient<Channel>, input: &In) -> Result<(Out, Option<Option<u64>>), Status> {
    match input {
        In::Read { key } => {
            let r = kv.range(RangeRequest { key: key.clone().into_bytes(), ..Default::default() }).await?.into_inner();
            let v = r.kvs.first().map(decode);
            Ok((Out::Read(v), Some(v)))
        }
        In::Write { key, value } => {
            kv.put(PutRequest { key: key.clone().into_bytes(), value: encode(*value), ..Default::default() }).await?;
            Ok((Out::Write, Some(Some(*value))))
        }
        In::Cas { key, expected, new } => {
            let key_bytes = key.clone().into_bytes();
            let cmp = match expected {
                Some(v) => Compare {
                    key: key_bytes.clone(),
                    target: compare::CompareTarget::Value as i32,
                    result: compare::CompareResult::Equal as i32,
                    target_union: Some(compare::TargetUnion::Value(encode(*v))),
                    ..Default::default()
                },
                None => Compare {
                    key: key_bytes.clone(),
                    target: compare::CompareTarget::Create as i32,
                    result: compare::CompareResult::Equal as i32,
                    target_union: Some(compare::TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let put = RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest { key: key_bytes, value: encode(*new), ..Default::default() })),
            };
            let r = kv.txn(TxnRequest { compare: vec![cmp], success: vec![put], failure: vec![] }).await?.into_inner();
            Ok((Out::Cas(r.succeeded), r.succeeded.then_some(Some(*new))))
        }
    }
}

/// A linearizable read of `key` through any of `endpoints`, retried until
/// `limit`: the final state after the heal. Returns the read as an operation
/// of the history and the key-value (`None`: absent).
pub async fn final_read(
    endpoints: &[SocketAddr],
    key: &str,
    clock: RunClock,
    client_id: u64,
    limit: Duration,
) -> Result<(RegisterOp, Option<KeyValue>), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    for attempt in 0..1000usize {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let addr = endpoints[attempt % endpoints.len()];
        let mut kv = KvClient::new(channel(addr));
        let call = clock.now_us();
        let req = RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
        match tokio::time::timeout(Duration::from_secs(2), kv.range(req)).await {
            Ok(Ok(r)) => {
                let ret = clock.now_us();
                let kvs = r.into_inner().kvs.into_iter().next();
                let op = Operation::completed(client_id, In::Read { key: key.into() }, Out::Read(kvs.as_ref().map(decode)), call, ret);
                return Ok((op, kvs));
            }
            Ok(Err(s)) => last = format!("{addr}: {s}"),
            Err(_) => last = format!("{addr}: no answer within 2s"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("final read of {key} failed for {limit:?}; last error: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_before_proposing_count_as_failed() {
        assert!(surely_not_applied(&Status::unavailable("etcdserver: no leader")));
        assert!(surely_not_applied(&Status::unavailable("error trying to connect: tcp connect error: Connection refused (os error 111)")));
        assert!(!surely_not_applied(&Status::unavailable("etcdserver: request timed out")));
        assert!(!surely_not_applied(&Status::unavailable("error reading a body from connection: connection reset")));
        assert!(!surely_not_applied(&Status::unknown("transport error")));
        assert!(!surely_not_applied(&Status::deadline_exceeded("x")));
    }

    #[test]
    fn key_interval_covers_the_keys_only() {
        let (start, end) = key_interval();
        for i in [0, 9, 63] {
            let k = key_name(i).into_bytes();
            assert!(k >= start && k < end);
        }
        assert!(b"/reg/_heal".to_vec() < start);
    }
}
