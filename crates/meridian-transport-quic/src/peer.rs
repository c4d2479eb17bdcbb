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
use crate::tls::node_server_name;
use crate::{ShutdownSignal, CLOSE_NORMAL};
use meridian_transport::Feedback;
use meridian_transport::TransportError;
use meridian_transport::{PeerBatch, RaftEnvelope, MAX_FRAME_BYTES};

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
/// Snapshot stream writes are at most this big, so one large snapshot never
/// claims the whole send buffer at once.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Upper bound for sending and acknowledging one snapshot (64 MiB at
/// ~250 KiB/s). Past it raft is told `ok: false` and may retry.
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(300);
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
    peer_id: u64,
    endpoint: quinn::Endpoint,
    resolver: Arc<dyn Resolve>,
    queue: mpsc::Receiver<Vec<RaftEnvelope>>,
    /// `host:port`, resolved at every dial.
    addr: watch::Receiver<String>,
    feedback: Arc<FeedbackSink>,
    shutdown: ShutdownSignal,
    snapshot_slots: Arc<Semaphore>,
}

impl PeerTask {
    pub(crate) fn new(
        peer_id: u64,
        endpoint: quinn::Endpoint,
        resolver: Arc<dyn Resolve>,
        queue: mpsc::Receiver<Vec<RaftEnvelope>>,
        addr: watch::Receiver<String>,
        feedback: Arc<FeedbackSink>,
        shutdown: ShutdownSignal,
    ) -> Self {
        let snapshot_slots = Arc::new(Semaphore::new(MAX_SNAPSHOTS_IN_FLIGHT));
        PeerTask { peer_id, endpoint, resolver, queue, addr, feedback, shutdown, snapshot_slots }
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
                batch = self.queue.recv() => match batch {
                    Some(batch) => self.feedback.dropped_all(&batch),
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
            tokio::select! {
                // Shutdown first: it also closes the queue (see above).
                biased;
                _ = self.shutdown.wait() => return Stop::Shutdown,
                changed = self.addr.changed() => {
                    return if changed.is_ok() { Stop::AddressChanged } else { Stop::Removed };
                }
                e = conn.closed() => return Stop::Lost(e.to_string()),
                batch = self.queue.recv() => {
                    let Some(batch) = batch else { return Stop::Removed };
                    if let Err(e) = self.write_batch(conn, &mut stream, batch).await {
                        return Stop::Lost(e);
                    }
                }
            }
        }
    }

    /// Writes one `send` call's envelopes: snapshots each to their own
    /// stream (in the background), the rest as frames on `stream`.
    async fn write_batch(&self, conn: &quinn::Connection, stream: &mut quinn::SendStream, batch: Vec<RaftEnvelope>) -> Result<(), String> {
        let (snapshots, normal): (Vec<_>, Vec<_>) = batch.into_iter().partition(RaftEnvelope::is_snapshot);
        for snapshot in snapshots {
            self.start_snapshot(conn, snapshot);
        }
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

    /// Sends a snapshot on its own stream without holding up the queue;
    /// reports `Feedback::Snapshot` when it is acknowledged or has failed.
    fn start_snapshot(&self, conn: &quinn::Connection, env: RaftEnvelope) {
        let (range_id, to_node) = (env.range_id, env.to_node);
        if envelope_frame_bytes(&env) > MAX_FRAME_BYTES {
            tracing::warn!(range_id, bytes = env.message.len(), "snapshot exceeds MAX_FRAME_BYTES; not sent");
            self.feedback.dropped(&env);
            return;
        }
        let Ok(slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            tracing::debug!(range_id, "too many snapshots in flight; refused");
            self.feedback.dropped(&env);
            return;
        };
        let conn = conn.clone();
        let feedback = self.feedback.clone();
        let mut shutdown = self.shutdown.clone();
        let span = tracing::info_span!("snapshot", range_id);
        tokio::spawn(
            async move {
                let _slot = slot;
                let bytes = env.message.len();
                let result = tokio::select! {
                    _ = shutdown.wait() => Err(TransportError::Io("shutting down".into())),
                    r = tokio::time::timeout(SNAPSHOT_SEND_TIMEOUT, send_snapshot(&conn, env)) => {
                        r.unwrap_or_else(|_| Err(TransportError::Io("timed out".into())))
                    }
                };
                let ok = match result {
                    Ok(()) => {
                        tracing::debug!(bytes, "snapshot delivered");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(bytes, error = %e, "snapshot failed");
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

/// One snapshot = one stream holding one frame. Done when the peer has
/// acknowledged every byte of the finished stream; a peer that rejects the
/// frame stops the stream instead, which is reported as a failure.
async fn send_snapshot(conn: &quinn::Connection, env: RaftEnvelope) -> Result<(), TransportError> {
    let io = |what: &str, e: &dyn std::fmt::Display| TransportError::Io(format!("{what}: {e}"));
    let frame: Bytes = encode_frame(&PeerBatch { envelopes: vec![env] });
    let mut stream = conn.open_uni().await.map_err(|e| io("opening snapshot stream", &e))?;
    let mut offset = 0;
    while offset < frame.len() {
        let end = (offset + SNAPSHOT_CHUNK_BYTES).min(frame.len());
        // `slice` shares the buffer: no copy per chunk.
        stream.write_chunk(frame.slice(offset..end)).await.map_err(|e| io("writing snapshot", &e))?;
        offset = end;
    }
    stream.finish().map_err(|e| io("finishing snapshot stream", &e))?;
    match stream.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(code)) => Err(TransportError::Io(format!("peer rejected the snapshot stream (code {code})"))),
        Err(e) => Err(io("awaiting snapshot acknowledgement", &e)),
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
