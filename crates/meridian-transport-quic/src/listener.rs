//! The receiving side: accept connections and streams, read frames,
//! hand envelopes to the raftstore.
//!
//! Everything here reads untrusted input, so every resource has a bound:
//! connections (`MAX_INBOUND_CONNECTIONS`), streams per connection (the
//! QUIC stream limit), bytes buffered (the shared receive budget), frame
//! size (`MAX_FRAME_BYTES`), and delivery (the bounded inbound channel,
//! which pushes back through QUIC flow control to the sender). A bad frame
//! costs the sender its stream, never this node a panic.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument as _;

use crate::frame::{read_frame, ReceivedFrame};
use crate::tls::PeerIdentity;
use crate::{ShutdownSignal, CLOSE_NORMAL};
use meridian_transport::RaftEnvelope;
use meridian_transport::TransportError;

/// Concurrent inbound connections, handshakes included. A cluster needs one
/// per peer; the rest is headroom for restarts (old connections linger
/// until their idle timeout).
const MAX_INBOUND_CONNECTIONS: usize = 256;
/// A handshake that has not completed by then is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC application error codes sent when stopping a stream or closing a
/// connection.
const STOP_BAD_FRAME: u32 = 1;
const STOP_WRONG_IDENTITY: u32 = 2;
const CLOSE_NO_CERTIFICATE: u32 = 3;

pub(crate) struct Listener {
    pub(crate) node_id: u64,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) inbound: mpsc::Sender<RaftEnvelope>,
    /// Envelopes of snapshot streams, in stream order (see
    /// `QuicConfig::snapshot_inbound`).
    pub(crate) snapshot_inbound: mpsc::Sender<RaftEnvelope>,
    pub(crate) shutdown: ShutdownSignal,
    /// Bytes of frames buffered across all streams.
    pub(crate) budget: Arc<Semaphore>,
}

/// What every stream reader needs, shared per listener.
struct StreamContext {
    node_id: u64,
    inbound: mpsc::Sender<RaftEnvelope>,
    snapshot_inbound: mpsc::Sender<RaftEnvelope>,
    shutdown: ShutdownSignal,
    budget: Arc<Semaphore>,
}

impl Listener {
    pub(crate) async fn run(self) {
        let Listener { node_id, endpoint, inbound, snapshot_inbound, mut shutdown, budget } = self;
        let ctx = Arc::new(StreamContext { node_id, inbound, snapshot_inbound, shutdown: shutdown.clone(), budget });
        let slots = Arc::new(Semaphore::new(MAX_INBOUND_CONNECTIONS));
        loop {
            let incoming = tokio::select! {
                _ = shutdown.wait() => return,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    // Endpoint closed.
                    None => return,
                },
            };
            let remote = incoming.remote_address();
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%remote, "too many inbound connections; refused");
                incoming.refuse();
                continue;
            };
            let span = tracing::info_span!("quic_inbound", node = node_id, %remote);
            let ctx = ctx.clone();
            tokio::spawn(
                async move {
                    let _slot = slot;
                    serve_connection(ctx, incoming).await;
                }
                .instrument(span),
            );
        }
    }
}

async fn serve_connection(ctx: Arc<StreamContext>, incoming: quinn::Incoming) {
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        // Includes clients whose certificate does not chain to our CA.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!("handshake timed out");
            return;
        }
    };
    let Some(identity) = PeerIdentity::of(&conn) else {
        tracing::warn!("connection without a client certificate; closed");
        conn.close(quinn::VarInt::from_u32(CLOSE_NO_CERTIFICATE), b"client certificate required");
        return;
    };
    let identity = Arc::new(identity);
    tracing::debug!("accepted connection");
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let recv = tokio::select! {
            _ = shutdown.wait() => {
                conn.close(quinn::VarInt::from_u32(CLOSE_NORMAL), b"node shutting down");
                return;
            }
            r = conn.accept_uni() => match r {
                Ok(recv) => recv,
                Err(e) => {
                    tracing::debug!(peer = identity.node_id(), reason = %e, "connection closed");
                    return;
                }
            },
        };
        // The QUIC stream limit bounds how many of these run per connection.
        tokio::spawn(read_stream(ctx.clone(), identity.clone(), recv).in_current_span());
    }
}

/// Reads frames until the stream ends or misbehaves.
async fn read_stream(ctx: Arc<StreamContext>, identity: Arc<PeerIdentity>, mut recv: quinn::RecvStream) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let read = tokio::select! {
            _ = shutdown.wait() => return,
            r = read_frame(&mut recv, identity.node_id(), &ctx.budget) => r,
        };
        let frame = match read {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e @ (TransportError::FrameTooLarge { .. } | TransportError::Malformed { .. })) => {
                tracing::warn!(error = %e, "bad frame; closing stream");
                let _ = recv.stop(quinn::VarInt::from_u32(STOP_BAD_FRAME));
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "stream ended");
                return;
            }
        };
        // `_held` keeps the frame's share of the budget until all is handed on.
        let ReceivedFrame { batch, _budget: _held } = frame;
        for env in batch.envelopes {
            if !identity.may_speak_for(env.from_node) {
                let e = TransportError::PeerIdentity { claimed_node: env.from_node };
                tracing::warn!(error = %e, "envelope not from the certified node; closing stream");
                let _ = recv.stop(quinn::VarInt::from_u32(STOP_WRONG_IDENTITY));
                return;
            }
            if env.to_node != ctx.node_id {
                // A peer with a stale address map; raft will retry elsewhere.
                tracing::warn!(to_node = env.to_node, from_node = env.from_node, "envelope for another node; dropped");
                continue;
            }
            // A snapshot stream's envelopes all take the snapshot queue, so
            // its MsgSnapshot stays behind its chunks.
            let queue = if env.is_snapshot_chunk() || env.is_snapshot() { &ctx.snapshot_inbound } else { &ctx.inbound };
            tokio::select! {
                _ = shutdown.wait() => return,
                sent = queue.send(env) => if sent.is_err() {
                    tracing::debug!("inbound channel closed");
                    return;
                },
            }
        }
    }
}
