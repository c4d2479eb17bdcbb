//! Stream framing: `u32` little-endian length, then a prost `PeerBatch`
//! (the bytes of [`PeerBatch::encode_frame`]).
//!
//! Reading is the only place untrusted bytes meet an allocation, so the
//! length is checked against [`MAX_FRAME_BYTES`] and charged to a shared
//! byte budget *before* the buffer exists.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use meridian_transport::TransportError;
use meridian_transport::{PeerBatch, RaftEnvelope, MAX_FRAME_BYTES};

/// Bytes of the length prefix.
pub(crate) const FRAME_HEADER_BYTES: usize = 4;

/// A frame with its length prefix, ready to write.
pub(crate) fn encode_frame(batch: &PeerBatch) -> Bytes {
    let len = batch.encoded_len();
    let mut buf = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    // `len` fits: callers only frame batches that passed `split_into_frames`
    // or were checked against MAX_FRAME_BYTES.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    batch.encode(&mut buf).expect("a Vec grows as needed");
    Bytes::from(buf)
}

/// Encoded size of `env` as one repeated field inside a `PeerBatch`.
pub(crate) fn envelope_frame_bytes(env: &RaftEnvelope) -> usize {
    let len = env.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Splits one poll round's envelopes into batches that each fit in a
/// frame. The receiver closes a stream on an oversized frame, which would
/// take the whole normal stream down, so the sender never produces one.
/// Envelopes too large even alone are returned separately.
pub(crate) fn split_into_frames(envelopes: Vec<RaftEnvelope>) -> (Vec<PeerBatch>, Vec<RaftEnvelope>) {
    let mut frames = Vec::new();
    let mut too_large = Vec::new();
    let mut current = PeerBatch::default();
    let mut current_bytes = 0;
    for env in envelopes {
        let n = envelope_frame_bytes(&env);
        if n > MAX_FRAME_BYTES {
            too_large.push(env);
            continue;
        }
        if current_bytes + n > MAX_FRAME_BYTES {
            frames.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += n;
        current.envelopes.push(env);
    }
    if !current.envelopes.is_empty() {
        frames.push(current);
    }
    (frames, too_large)
}

/// One decoded frame plus the share of the receive budget its bytes hold.
/// Keep it until the envelopes have been handed on, so the budget bounds
/// what sits in memory, not just what is being read.
pub(crate) struct ReceivedFrame {
    pub(crate) batch: PeerBatch,
    pub(crate) _budget: OwnedSemaphorePermit,
}

/// Reads the next frame; `Ok(None)` when the peer finished the stream at a
/// frame boundary. `from_node` is only used to label errors.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    from_node: u64,
    budget: &Arc<Semaphore>,
) -> Result<Option<ReceivedFrame>, TransportError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(TransportError::Malformed { from_node, reason: format!("stream ended inside a header ({n} bytes)") })
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(TransportError::Io(format!("reading frame header: {e}"))),
    }
    let len = u32::from_le_bytes(header);
    // On 16-bit targets a u32 might not fit; treat that as too large too.
    let len_bytes = usize::try_from(len).unwrap_or(usize::MAX);
    if len_bytes > MAX_FRAME_BYTES {
        return Err(TransportError::FrameTooLarge { from_node, len: len_bytes });
    }
    // MAX_FRAME_BYTES <= the budget, so this always completes eventually.
    let permit = budget.clone().acquire_many_owned(len).await.map_err(|_| TransportError::Io("receive budget closed".into()))?;
    let mut buf = vec![0u8; len_bytes];
    recv.read_exact(&mut buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(n) => {
            TransportError::Malformed { from_node, reason: format!("stream ended after {n} of {len} frame bytes") }
        }
        quinn::ReadExactError::ReadError(e) => TransportError::Io(format!("reading frame body: {e}")),
    })?;
    let batch = PeerBatch::decode_frame(from_node, &buf)?;
    Ok(Some(ReceivedFrame { batch, _budget: permit }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(payload_bytes: usize) -> RaftEnvelope {
        RaftEnvelope { range_id: 1, message: vec![7; payload_bytes], ..Default::default() }
    }

    #[test]
    fn frame_is_length_prefix_plus_encode_frame() {
        let batch = PeerBatch { envelopes: vec![env(10), env(300)] };
        let frame = encode_frame(&batch);
        let body = batch.encode_frame();
        assert_eq!(&frame[..4], &(body.len() as u32).to_le_bytes());
        assert_eq!(&frame[4..], &body[..]);
        let sum: usize = batch.envelopes.iter().map(envelope_frame_bytes).sum();
        assert_eq!(sum, body.len());
    }

    #[test]
    fn split_keeps_order_and_respects_the_limit() {
        let quarter = MAX_FRAME_BYTES / 4;
        let envs = vec![env(10), env(quarter), env(quarter), env(quarter), env(quarter), env(MAX_FRAME_BYTES), env(20)];
        let (frames, too_large) = split_into_frames(envs);
        assert_eq!(too_large.len(), 1);
        assert!(frames.len() >= 2);
        for f in &frames {
            assert!(f.encoded_len() <= MAX_FRAME_BYTES);
        }
        let sizes: Vec<usize> = frames.iter().flat_map(|f| f.envelopes.iter().map(|e| e.message.len())).collect();
        assert_eq!(sizes, vec![10, quarter, quarter, quarter, quarter, 20]);
    }
}
