//! The sending side for one peer: dial, stream batches, redial.
//!
//! ```text
//!   ┌─────────┐ ok  ┌────────────────────────────┐ address changed
//!   │ connect │────►│ serve: queue → uni streams │────────────────► connect
//!   └─────────┘     └────────────────────────────┘
//!        ▲ failed                  │ lost
//!        │                         ▼
//!        └──── backoff 50 ms … 2 s: batches queued meanwhile are
//!              dropped and reported Unreachable
//! ```
//!
//! Dropping while disconnected is deliberate: raft retransmits from its own
//! log, so stale heartbeats and appends queued during an outage would only
//! delay the fresh ones after it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::feedback::FeedbackSink;
use crate::frame::{encode_frame, envelope_frame_bytes, split_into_frames};
use crate::resolve::Resolve;
use crate::shape::{DelayLine, LinkShape};
use crate::tls::node_server_name;
use crate::{ShutdownSignal, CLOSE_NORMAL};
use meridian_transport::Feedback;
use meridian_transport::TransportError;
use meridian_transport::{PeerBatch, RaftEnvelope, SnapshotStream, MAX_FRAME_BYTES};

/// What a peer's send queue holds: one poll round's messages, or a
/// snapshot to stream.
pub(crate) enum Outgoing {
    Batch(Vec<RaftEnvelope>),
    Snapshot(Box<dyn SnapshotStream>),
}

/// A dial that has not completed by then is treated as failed, so messages
/// queued behind it are reported instead of waiting out the idle timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that lived this long was healthy: its loss resets the
/// backoff. Shorter-lived ones keep backing off.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);
/// Snapshots in flight per peer; more are refused (`ok: false`) and raft
/// retries later. Must stay below the listener's stream limit, leaving
/// room for the normal stream.
const MAX_SNAPSHOTS_IN_FLIGHT: usize = 4;
/// A snapshot stream that makes no progress for this long (no chunk read,
/// written or, at the end, acknowledged) is abandoned and raft is told
/// `ok: false`. A slow stream that keeps moving is never cut: a large
/// range on a thin link may take many minutes.
const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The normal stream is sent before snapshot streams (priority 0), so
/// heartbeats are not stuck behind snapshot bytes.
const NORMAL_STREAM_PRIORITY: i32 = 1;

/// Exponential backoff between dials: 50 ms doubling to 2 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// True before the first failure since the last success: worth a warn,
    /// later failures of the same outage only a debug.
    fn is_fresh(&self) -> bool {
        self.next == BACKOFF_MIN
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

/// Why `serve` returned.
enum Stop {
    /// Transport shutting down.
    Shutdown,
    /// The peer was removed: its queue sender is gone.
    Removed,
    /// The peer moved: redial at once.
    AddressChanged,
    /// Connection lost: redial after backoff.
    Lost(String),
}

/// Runs inside a span carrying both node ids.
pub(crate) struct PeerTask {
    node_id: u64,
    peer_id: u64,
    endpoint: quinn::Endpoint,
    resolver: Arc<dyn Resolve>,
    queue: mpsc::Receiver<Outgoing>,
    /// `host:port`, resolved at every dial.
    addr: watch::Receiver<String>,
    feedback: Arc<FeedbackSink>,
    shutdown: ShutdownSignal,
    snapshot_slots: Arc<Semaphore>,
    /// WAN shaping of this link (debug setting; usually none).
    shape: watch::Receiver<LinkShape>,
    /// Batches held back by the shaping, bounded like the queue.
    line: DelayLine,
}

impl PeerTask {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node_id: u64,
        peer_id: u64,
        endpoint: quinn::Endpoint,
        resolver: Arc<dyn Resolve>,
        queue: mpsc::Receiver<Outgoing>,
        addr: watch::Receiver<String>,
        feedback: Arc<FeedbackSink>,
        shutdown: ShutdownSignal,
        shape: watch::Receiver<LinkShape>,
        line_capacity: usize,
    ) -> Self {
        let snapshot_slots = Arc::new(Semaphore::new(MAX_SNAPSHOTS_IN_FLIGHT));
        let line = DelayLine::new(line_capacity, node_id.rotate_left(32) ^ peer_id);
        PeerTask { node_id, peer_id, endpoint, resolver, queue, addr, feedback, shutdown, snapshot_slots, shape, line }
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new();
        loop {
            let addr = self.addr.borrow_and_update().clone();
            let connected = tokio::select! {
                biased;
                _ = self.shutdown.wait() => return,
                r = connect(&self.endpoint, &*self.resolver, self.peer_id, &addr) => r,
            };
            match connected {
                Ok(conn) => {
                    // A peer that rejects us after the handshake (e.g. our
                    // certificate) would otherwise be redialled in a tight
                    // loop: only a connection that lasted resets the backoff.
                    let since = Instant::now();
                    if backoff.is_fresh() {
                        tracing::info!(%addr, "connected");
                    } else {
                        tracing::debug!(%addr, "connected");
                    }
                    let stop = self.serve(&conn).await;
                    conn.close(quinn::VarInt::from_u32(CLOSE_NORMAL), b"");
                    for held in self.line.take_all() {
                        self.feedback.dropped_all(&held);
                    }
                    match stop {
                        Stop::Shutdown => return,
                        Stop::Removed => {
                            tracing::info!("peer removed");
                            return;
                        }
                        Stop::AddressChanged => {
                            tracing::info!(old = %addr, new = %*self.addr.borrow(), "peer address changed; redialling");
                            backoff.reset();
                            continue;
                        }
                        Stop::Lost(reason) if since.elapsed() >= STABLE_CONNECTION => {
                            tracing::warn!(%addr, %reason, "disconnected");
                            backoff.reset();
                        }
                        Stop::Lost(reason) if backoff.is_fresh() => {
                            tracing::warn!(%addr, %reason, "connection dropped right after the handshake");
                        }
                        Stop::Lost(reason) => tracing::debug!(%addr, %reason, "connection dropped again"),
                    }
                }
                Err(e) if backoff.is_fresh() => tracing::warn!(%addr, error = %e, "peer unreachable"),
                Err(e) => tracing::debug!(%addr, error = %e, "peer still unreachable"),
            }
            if !self.drop_while_disconnected(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Waits `delay` before the next dial, reporting everything queued
    /// meanwhile as undelivered. Returns false if the task should end.
    async fn drop_while_disconnected(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                // Shutdown first: it also closes the queue, which must not
                // be mistaken for the peer's removal.
                biased;
                _ = self.shutdown.wait() => return false,
                _ = &mut sleep => return true,
                // A new address deserves a dial right away.
                changed = self.addr.changed() => return changed.is_ok(),
                out = self.queue.recv() => match out {
                    Some(out) => self.feedback.undelivered(self.peer_id, &out),
                    None => return false,
                },
            }
        }
    }

    /// Moves batches from the queue onto the connection until it fails.
    async fn serve(&mut self, conn: &quinn::Connection) -> Stop {
        let mut stream = tokio::select! {
            biased;
            _ = self.shutdown.wait() => return Stop::Shutdown,
            s = conn.open_uni() => match s {
                Ok(s) => s,
                Err(e) => return Stop::Lost(format!("opening stream: {e}")),
            },
        };
        // Only fails if the stream is already closed, which the first write
        // will report.
        let _ = stream.set_priority(NORMAL_STREAM_PRIORITY);
        loop {
            let due = self.line.next_due();
            let room = !self.line.is_full();
            tokio::select! {
                // Shutdown first: it also closes the queue (see above).
                biased;
                _ = self.shutdown.wait() => return Stop::Shutdown,
                changed = self.addr.changed() => {
                    return if changed.is_ok() { Stop::AddressChanged } else { Stop::Removed };
                }
                e = conn.closed() => return Stop::Lost(e.to_string()),
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    while let Some(batch) = self.line.pop_due(Instant::now()) {
                        if let Err(e) = self.write_batch(&mut stream, batch).await {
                            return Stop::Lost(e);
                        }
                    }
                }
                // A full delay line stops taking from the queue, which then
                // fills and drops (reported) as it does for a slow peer.
                out = self.queue.recv(), if room => match out {
                    None => return Stop::Removed,
                    Some(Outgoing::Snapshot(snapshot)) => self.start_snapshot(conn, snapshot),
                    Some(Outgoing::Batch(batch)) => {
                        let shape = *self.shape.borrow();
                        if shape.is_none() && self.line.is_empty() {
                            if let Err(e) = self.write_batch(&mut stream, batch).await {
                                return Stop::Lost(e);
                            }
                        } else {
                            self.line.push(Instant::now(), &shape, batch);
                        }
                    }
                },
            }
        }
    }

    /// Writes one `send` call's envelopes as frames on `stream`.
    async fn write_batch(&self, stream: &mut quinn::SendStream, normal: Vec<RaftEnvelope>) -> Result<(), String> {
        let (frames, too_large) = split_into_frames(normal);
        for env in &too_large {
            tracing::warn!(range_id = env.range_id, bytes = env.message.len(), "message exceeds MAX_FRAME_BYTES; dropped");
        }
        self.feedback.dropped_all(&too_large);
        let mut frames = frames.into_iter();
        while let Some(frame) = frames.next() {
            if let Err(e) = stream.write_chunk(encode_frame(&frame)).await {
                // This frame and the rest of the batch never left.
                self.feedback.dropped_all(&frame.envelopes);
                for rest in frames {
                    self.feedback.dropped_all(&rest.envelopes);
                }
                return Err(format!("writing batch: {e}"));
            }
        }
        Ok(())
    }

    /// Streams a snapshot on a stream of its own without holding up the
    /// queue; reports `Feedback::Snapshot` when it is acknowledged or has
    /// failed.
    fn start_snapshot(&self, conn: &quinn::Connection, snapshot: Box<dyn SnapshotStream>) {
        let (range_id, to_node) = (snapshot.range_id(), self.peer_id);
        let Ok(slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            tracing::debug!(range_id, "too many snapshots in flight; refused");
            self.feedback.push(Feedback::Snapshot { range_id, to_node, ok: false });
            return;
        };
        let conn = conn.clone();
        let feedback = self.feedback.clone();
        let mut shutdown = self.shutdown.clone();
        let node_id = self.node_id;
        let span = tracing::info_span!("snapshot", range_id, to_node);
        tokio::spawn(
            async move {
                let _slot = slot;
                let result = tokio::select! {
                    _ = shutdown.wait() => Err(TransportError::Io("shutting down".into())),
                    r = send_snapshot(&conn, node_id, to_node, snapshot) => r,
                };
                let ok = match result {
                    Ok(bytes) => {
                        tracing::info!(bytes, "snapshot delivered");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot failed");
                        false
                    }
                };
                feedback.push(Feedback::Snapshot { range_id, to_node, ok });
            }
            .instrument(span),
        );
    }
}

/// Resolves `host_port` afresh (a name may point elsewhere since the last
/// dial) and dials the first address of the endpoint's family.
async fn connect(
    endpoint: &quinn::Endpoint,
    resolver: &dyn Resolve,
    peer_id: u64,
    host_port: &str,
) -> Result<quinn::Connection, TransportError> {
    let err = |reason: String| TransportError::Connect { node_id: peer_id, reason };
    let ipv4 = endpoint.local_addr().map_or(true, |a| a.is_ipv4());
    let resolved = match tokio::time::timeout(CONNECT_TIMEOUT, resolver.resolve(host_port)).await {
        Ok(r) => r.map_err(|e| err(format!("resolving {host_port}: {e}")))?,
        Err(_) => return Err(err(format!("resolving {host_port}: no answer within {CONNECT_TIMEOUT:?}"))),
    };
    let Some(addr) = resolved.iter().copied().find(|a| a.is_ipv4() == ipv4) else {
        let family = if ipv4 { "IPv4" } else { "IPv6" };
        return Err(err(format!("{host_port} resolves to no {family} address (got {resolved:?})")));
    };
    tracing::trace!(%host_port, %addr, "dialling");
    // The server name pins the peer's identity, not just the CA.
    let connecting = endpoint.connect(addr, &node_server_name(peer_id)).map_err(|e| err(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("no handshake within {CONNECT_TIMEOUT:?}"))),
    }
}

/// One snapshot = one stream: a frame per chunk, read from `snapshot` only
/// as fast as the stream takes them (QUIC flow control paces the reads, so
/// a chunk or two is in memory at a time), then the MsgSnapshot's frame.
/// Done when the peer has acknowledged every byte of the finished stream;
/// a peer that rejects a frame stops the stream instead, which is reported
/// as a failure. Returns the bytes sent.
async fn send_snapshot(
    conn: &quinn::Connection,
    node_id: u64,
    to_node: u64,
    snapshot: Box<dyn SnapshotStream>,
) -> Result<u64, TransportError> {
    let io = |what: &str, e: &dyn std::fmt::Display| TransportError::Io(format!("{what}: {e}"));
    let stalled = |what: &str| TransportError::Io(format!("{what}: no progress in {SNAPSHOT_STALL_TIMEOUT:?}"));
    let mut stream = conn.open_uni().await.map_err(|e| io("opening snapshot stream", &e))?;
    let mut source = Some(snapshot);
    let mut sent = 0u64;
    loop {
        // Reading a chunk scans storage: off the async threads.
        let mut s = source.take().expect("put back every turn");
        let read = tokio::task::spawn_blocking(move || {
            let next = s.next_envelope();
            (s, next)
        });
        let (s, next) = match tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, read).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(io("reading the snapshot", &e)),
            Err(_) => return Err(stalled("reading the snapshot")),
        };
        source = Some(s);
        let Some(mut env) = next? else { break };
        env.from_node = node_id;
        env.to_node = to_node;
        let bytes = envelope_frame_bytes(&env);
        if bytes > MAX_FRAME_BYTES {
            return Err(TransportError::Io(format!("a snapshot frame of {bytes} bytes exceeds MAX_FRAME_BYTES")));
        }
        let frame: Bytes = encode_frame(&PeerBatch { envelopes: vec![env] });
        sent += frame.len() as u64;
        match tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, stream.write_chunk(frame)).await {
            Ok(r) => r.map_err(|e| io("writing snapshot", &e))?,
            Err(_) => return Err(stalled("writing snapshot")),
        }
    }
    stream.finish().map_err(|e| io("finishing snapshot stream", &e))?;
    match tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, stream.stopped()).await {
        Ok(Ok(None)) => Ok(sent),
        Ok(Ok(Some(code))) => Err(TransportError::Io(format!("peer rejected the snapshot stream (code {code})"))),
        Ok(Err(e)) => Err(io("awaiting snapshot acknowledgement", &e)),
        Err(_) => Err(stalled("awaiting snapshot acknowledgement")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert!(!b.is_fresh());
        b.reset();
        assert!(b.is_fresh());
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
