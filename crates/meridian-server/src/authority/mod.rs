//! Accept every `:authority` etcd's clients send.
//!
//! etcd's Go clients put the endpoint as the user wrote it into HTTP/2's
//! `:authority`: `http://127.0.0.1:2379`, `https://…`, `passthrough:///…`,
//! `unix:///…`, or (etcd 3.5 with several endpoints) `#initially=[…]`.
//! etcd's own server (grpc-go) takes any of them. hyper's HTTP/2 layer
//! (`h2`) parses the pseudo-header as a URI authority and resets the stream
//! with `PROTOCOL_ERROR` when it is not one, before any Meridian code runs —
//! so `etcdctl --endpoints=http://…` failed on every command.
//!
//! [`AuthorityFix`] sits between the accepted TCP stream and hyper, on the
//! client-to-server direction only. It follows the HTTP/2 frames
//! ([`Rewriter`]) up to the end of the connection's first header block and
//! decodes it with the connection's HPACK state:
//! - its authority is valid (every Rust, Java and bare-endpoint client):
//!   the block is forwarded untouched and the connection is handed to hyper
//!   as it is, at no further cost. A gRPC client keeps one authority per
//!   connection, so its later requests carry the same one;
//! - it is not: that value is replaced by the `host:port` inside it (or
//!   dropped when there is none — nothing in Meridian routes by authority),
//!   and that block and every later one of the connection are decoded and
//!   re-encoded as plain literals, so hyper's decoder never needs the
//!   client's dynamic table.
//!
//! A connection that does not start with the HTTP/2 preface passes through
//! untouched; a malformed frame sequence closes the connection, as hyper
//! would.

mod hpack;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

pub use hpack::HpackError;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Frames this side writes stay within the size every peer accepts.
const MAX_OUT_FRAME: usize = 16_384;
/// The server's HPACK table size: hyper announces none, so the default.
const HPACK_TABLE_SIZE: usize = 4096;
/// Bound on one header block, encoded (all its frames): far above what
/// any client sends; past it the connection is closed.
const MAX_HEADER_BLOCK: usize = 256 << 10;
/// Bound on one header block decoded (RFC 7541 sizes: name + value + 32 a
/// field), well above hyper's own header list limit, so a block that only
/// indexes a large table entry many times cannot blow up here.
const MAX_DECODED_BLOCK: usize = 64 << 10;
/// Largest HEADERS or CONTINUATION payload accepted: the frame size hyper
/// announces (HTTP/2's default); a client may not send more.
const MAX_IN_HEADER_FRAME: usize = 16_384;
/// `feed` stops at a frame boundary once this much output waits, so one
/// read cannot expand into an unbounded buffer.
const OUT_SOFT_CAP: usize = 256 << 10;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 << 10;

/// Why a connection's frames could not be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// A header block did not decode.
    #[error("HTTP/2 header block on stream {stream_id}: {source}")]
    Hpack {
        stream_id: u32,
        #[source]
        source: HpackError,
    },
    /// A frame other than CONTINUATION inside a header block, or a
    /// CONTINUATION outside one (RFC 9113 §6.10).
    #[error("HTTP/2 frame of type {frame_type} on stream {stream_id} interrupts a header block")]
    BadContinuation { stream_id: u32, frame_type: u8 },
    /// Padding longer than the frame, or a PRIORITY field cut short.
    #[error("malformed HEADERS frame on stream {stream_id}")]
    BadHeadersFrame { stream_id: u32 },
    /// A header block above the bound (256 KiB).
    #[error("header block on stream {stream_id} longer than {limit} bytes")]
    BlockTooLarge { stream_id: u32, limit: usize },
    /// A HEADERS or CONTINUATION frame above the frame size hyper announced.
    #[error("header frame on stream {stream_id} of {len} bytes (max {limit})")]
    FrameTooLarge { stream_id: u32, len: usize, limit: usize },
}

/// Where the rewriter is in the byte stream.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Matching the preface; `matched` bytes so far.
    Preface { matched: usize },
    /// Not HTTP/2 with prior knowledge: every byte passes.
    Passthrough,
    /// Collecting a 9-byte frame header.
    FrameHeader,
    /// Forwarding `left` more payload bytes of a frame that is not a header frame.
    Forward { left: usize },
    /// Collecting the payload (`len` bytes) of a HEADERS or CONTINUATION frame.
    HeaderPayload { head: [u8; FRAME_HEADER_LEN], len: usize },
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The header block fragments, joined.
    fragments: Vec<u8>,
    /// The frames as received, to forward them unchanged.
    original: Vec<u8>,
}

/// The client-to-server half of an HTTP/2 connection, as a pure function
/// of the bytes fed to it: [`Rewriter::feed`] answers what to pass on.
#[derive(Debug)]
pub struct Rewriter {
    stage: Stage,
    /// The frame header or header-frame payload being collected.
    buf: Vec<u8>,
    block: Option<Block>,
    decoder: hpack::Decoder,
    /// True once a block has been re-encoded: every later one is too. (A
    /// first block that needs nothing ends the rewriter's work instead.)
    rewriting: bool,
    /// Header blocks whose authority was replaced or dropped.
    pub rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Self {
        Rewriter {
            stage: Stage::Preface { matched: 0 },
            buf: Vec::new(),
            block: None,
            decoder: hpack::Decoder::new(HPACK_TABLE_SIZE, MAX_DECODED_BLOCK),
            rewriting: false,
            rewritten: 0,
        }
    }

    /// True when every byte from now on passes unchanged.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.stage, Stage::Passthrough)
    }

    /// Consumes `input` and appends what to pass on to `out` (a partial
    /// frame is held until the rest arrives). Stops early, at a frame
    /// boundary, once `out` holds 256 KiB: answers how many
    /// bytes of `input` it consumed (the caller feeds the rest later).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, RewriteError> {
        let total = input.len();
        let mut input = input;
        while !input.is_empty() {
            if out.len() >= OUT_SOFT_CAP && matches!(self.stage, Stage::FrameHeader) && self.buf.is_empty() {
                break;
            }
            match self.stage {
                Stage::Passthrough => {
                    out.extend_from_slice(input);
                    return Ok(total);
                }
                Stage::Preface { matched } => {
                    let n = input.len().min(PREFACE.len() - matched);
                    if input[..n] != PREFACE[matched..matched + n] {
                        // Not HTTP/2 with prior knowledge: hyper decides.
                        // (The bytes that matched were passed on already.)
                        self.stage = Stage::Passthrough;
                        continue;
                    }
                    input = &input[n..];
                    self.stage = if matched + n == PREFACE.len() { Stage::FrameHeader } else { Stage::Preface { matched: matched + n } };
                    out.extend_from_slice(&PREFACE[matched..matched + n]);
                }
                Stage::FrameHeader => {
                    let n = input.len().min(FRAME_HEADER_LEN - self.buf.len());
                    self.buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.buf.len() == FRAME_HEADER_LEN {
                        let mut head = [0u8; FRAME_HEADER_LEN];
                        head.copy_from_slice(&self.buf);
                        self.buf.clear();
                        self.on_frame_header(head, out)?;
                    }
                }
                Stage::Forward { left } => {
                    let n = input.len().min(left);
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.stage = if n == left { Stage::FrameHeader } else { Stage::Forward { left: left - n } };
                }
                Stage::HeaderPayload { head, len } => {
                    let n = input.len().min(len - self.buf.len());
                    self.buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.buf.len() == len {
                        let payload = std::mem::take(&mut self.buf);
                        self.stage = Stage::FrameHeader;
                        self.on_header_frame(head, &payload, out)?;
                    }
                }
            }
        }
        Ok(total - input.len())
    }

    fn on_frame_header(&mut self, head: [u8; FRAME_HEADER_LEN], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let frame_type = head[3];
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let header_frame = frame_type == TYPE_HEADERS || frame_type == TYPE_CONTINUATION;
        if self.block.is_some() != (frame_type == TYPE_CONTINUATION) {
            return Err(RewriteError::BadContinuation { stream_id, frame_type });
        }
        if header_frame {
            if len > MAX_IN_HEADER_FRAME {
                return Err(RewriteError::FrameTooLarge { stream_id, len, limit: MAX_IN_HEADER_FRAME });
            }
            let held = self.block.as_ref().map_or(0, |b| b.original.len());
            if held + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
                return Err(RewriteError::BlockTooLarge { stream_id, limit: MAX_HEADER_BLOCK });
            }
            self.stage = Stage::HeaderPayload { head, len };
            if len == 0 {
                self.stage = Stage::FrameHeader;
                self.on_header_frame(head, &[], out)?;
            }
        } else {
            out.extend_from_slice(&head);
            self.stage = if len == 0 { Stage::FrameHeader } else { Stage::Forward { left: len } };
        }
        Ok(())
    }

    fn on_header_frame(&mut self, head: [u8; FRAME_HEADER_LEN], payload: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let flags = head[4];
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let block = match self.block.as_mut() {
            Some(b) => {
                if b.stream_id != stream_id {
                    return Err(RewriteError::BadContinuation { stream_id, frame_type: head[3] });
                }
                b.fragments.extend_from_slice(payload);
                b
            }
            None => {
                let bad = || RewriteError::BadHeadersFrame { stream_id };
                let mut body = payload;
                if flags & FLAG_PADDED != 0 {
                    let (&pad, rest) = body.split_first().ok_or_else(bad)?;
                    body = rest.get(..rest.len().checked_sub(usize::from(pad)).ok_or_else(bad)?).ok_or_else(bad)?;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    let p: [u8; 5] = body.get(..5).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
                    priority = Some(p);
                    body = &body[5..];
                }
                self.block.insert(Block {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragments: body.to_vec(),
                    original: Vec::new(),
                })
            }
        };
        block.original.extend_from_slice(&head);
        block.original.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.block.take().expect("a block is being assembled");
        let (mut headers, mut sensitive) =
            self.decoder.decode_marked(&block.fragments).map_err(|source| RewriteError::Hpack { stream_id: block.stream_id, source })?;
        let pos = headers.iter().position(|(n, _)| n == b":authority");
        let valid = pos.is_none_or(|i| axum::http::uri::Authority::try_from(headers[i].1.as_slice()).is_ok());
        if valid && !self.rewriting {
            // The first block is fine: hand the connection over untouched.
            out.extend_from_slice(&block.original);
            self.stage = Stage::Passthrough;
            return Ok(());
        }
        if !valid {
            let i = pos.expect("an invalid authority is present");
            let fixed = host_port(&headers[i].1);
            debug!(
                stream = block.stream_id,
                authority = %String::from_utf8_lossy(&headers[i].1),
                replacement = ?fixed.as_deref().map(String::from_utf8_lossy),
                "client sent an :authority that is not host:port"
            );
            match fixed {
                Some(v) => headers[i].1 = v,
                None => {
                    headers.remove(i);
                    sensitive.remove(i);
                }
            }
            self.rewritten += 1;
        }
        self.rewriting = true;
        write_header_frames(&block, &hpack::encode_plain_marked(&headers, &sensitive), out);
        Ok(())
    }
}

/// The `host[:port]` inside an endpoint written as a URL or gRPC target
/// (`http://h:p`, `passthrough:///h:p`, `dns:///h:p/…`); `localhost` for
/// unix sockets; `None` when there is none.
fn host_port(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.starts_with(b"unix:") || raw.starts_with(b"unix-abstract:") {
        return Some(b"localhost".to_vec());
    }
    let after_scheme = raw.windows(3).position(|w| w == b"://").map_or(raw, |i| &raw[i + 3..]);
    let trimmed = {
        let start = after_scheme.iter().position(|&b| b != b'/').unwrap_or(after_scheme.len());
        let rest = &after_scheme[start..];
        &rest[..rest.iter().position(|&b| b == b'/').unwrap_or(rest.len())]
    };
    (!trimmed.is_empty() && axum::http::uri::Authority::try_from(trimmed).is_ok()).then(|| trimmed.to_vec())
}

/// Writes `encoded` as a HEADERS frame and as many CONTINUATION frames as
/// it needs, keeping the block's stream, END_STREAM and priority.
fn write_header_frames(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let prio_len = if block.priority.is_some() { 5 } else { 0 };
    let first_len = encoded.len().min(MAX_OUT_FRAME - prio_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    push_frame_header(out, prio_len + first.len(), TYPE_HEADERS, flags, block.stream_id);
    if let Some(p) = block.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_OUT_FRAME));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        push_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, block.stream_id);
        out.extend_from_slice(chunk);
    }
}

fn push_frame_header(out: &mut Vec<u8>, len: usize, frame_type: u8, flags: u8, stream_id: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(frame_type);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// An accepted connection whose client-to-server bytes go through a
/// [`Rewriter`]; writes pass straight through.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the reader, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    chunk: Box<[u8]>,
    /// Bytes of `chunk` read but not fed yet (`feed` stopped at its cap):
    /// `chunk[fed..filled]`.
    fed: usize,
    filled: usize,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            fed: 0,
            filled: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                    if this.out.capacity() > 4 * READ_CHUNK {
                        this.out = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.fed < this.filled {
                // Input left over from a read the rewriter stopped short in.
                let n = this.rewriter.feed(&this.chunk[this.fed..this.filled], &mut this.out).map_err(invalid)?;
                this.fed += n;
                continue;
            }
            if this.rewriter.is_passthrough() {
                if this.out.capacity() > 0 {
                    this.out = Vec::new();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut rb = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let filled = rb.filled().len();
            if filled == 0 {
                // End of stream; a partial frame held back dies with it.
                return Poll::Ready(Ok(()));
            }
            (this.fed, this.filled) = (0, filled);
        }
    }
}

fn invalid(e: RewriteError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame_header(&mut out, payload.len(), frame_type, flags, stream_id);
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &str) -> Vec<hpack::Header> {
        [(":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Range"), (":authority", authority), ("te", "trailers")]
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Turns a block of `encode_plain` literals (0x00, new name) into
    /// literals with incremental indexing (0x40, new name).
    fn mark_incremental(block: &mut [u8]) {
        let mut i = 0;
        while i < block.len() {
            assert_eq!(block[i], 0x00);
            block[i] = 0x40;
            let name_len = usize::from(block[i + 1]);
            let value_len = usize::from(block[i + 2 + name_len]);
            i += 3 + name_len + value_len;
        }
    }

    /// Feeds `input` in pieces of `step` bytes; answers the output.
    fn run(rw: &mut Rewriter, input: &[u8], step: usize) -> Vec<u8> {
        let (mut out, mut all) = (Vec::new(), Vec::new());
        for mut piece in input.chunks(step) {
            while !piece.is_empty() {
                let n = rw.feed(piece, &mut out).unwrap();
                piece = &piece[n..];
                all.append(&mut out);
            }
        }
        all
    }

    /// The header blocks of `bytes` (frames after the preface), decoded.
    fn blocks(bytes: &[u8]) -> Vec<(u32, u8, Vec<hpack::Header>)> {
        decode_blocks(bytes, false)
    }

    /// [`blocks`] with a fresh decoder for every block: succeeds only if no
    /// block relies on a dynamic table (what a rewrite must produce). Also
    /// checks no frame exceeds [`MAX_OUT_FRAME`].
    fn plain_blocks(bytes: &[u8]) -> Vec<(u32, u8, Vec<hpack::Header>)> {
        decode_blocks(bytes, true)
    }

    fn decode_blocks(bytes: &[u8], fresh: bool) -> Vec<(u32, u8, Vec<hpack::Header>)> {
        let mut d = hpack::Decoder::new(4096, 1 << 20);
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        let mut pending: Option<(u32, u8, Vec<u8>)> = None;
        while !rest.is_empty() {
            let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (t, flags, sid) = (rest[3], rest[4], u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]));
            let mut payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            if fresh && (t == TYPE_HEADERS || t == TYPE_CONTINUATION) {
                assert!(len <= MAX_OUT_FRAME, "a header frame of {len} bytes");
            }
            if t == TYPE_HEADERS {
                if flags & FLAG_PRIORITY != 0 {
                    payload = &payload[5..];
                }
                pending = Some((sid, flags, payload.to_vec()));
            } else if t == TYPE_CONTINUATION {
                pending.as_mut().unwrap().2.extend_from_slice(payload);
            }
            if (t == TYPE_HEADERS || t == TYPE_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
                let (sid, f, block) = pending.take().unwrap();
                if fresh {
                    d = hpack::Decoder::new(4096, 1 << 20);
                }
                out.push((sid, f, d.decode(&block).unwrap()));
            }
        }
        out
    }

    #[test]
    fn valid_authorities_pass_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hpack::encode_plain(&request("127.0.0.1:2379"))));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x05hello"));
        for step in [1, 7, 1 << 20] {
            let mut rw = Rewriter::new();
            assert_eq!(run(&mut rw, &input, step), input, "step {step}");
            assert_eq!(rw.rewritten, 0);
            assert!(rw.is_passthrough(), "a valid first block hands the connection over");
        }
    }

    #[test]
    fn url_authorities_become_host_port_and_later_blocks_are_reencoded() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        // Stream 1: HEADERS split over a CONTINUATION, padded, with priority.
        let block = hpack::encode_plain(&request("http://127.0.0.1:23790"));
        let (a, b) = block.split_at(10);
        let mut first = vec![3u8]; // pad length
        first.extend([0, 0, 0, 0, 16]); // priority
        first.extend(a);
        first.extend([0, 0, 0]);
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM, 1, &first));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        // Stream 3: a valid authority, after a rewrite: re-encoded too
        // (sent as literals with incremental indexing, it comes out plain).
        let mut indexed = hpack::encode_plain(&request("example.com:1"));
        mark_incremental(&mut indexed);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &indexed));
        // Stream 5: no host at all: the authority is dropped.
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &hpack::encode_plain(&request("#initially=[a;b]"))));
        input.extend(frame(0x0, 0, 5, b"data"));
        for step in [1, 5, 1 << 20] {
            let mut rw = Rewriter::new();
            let out = run(&mut rw, &input, step);
            assert_eq!(rw.rewritten, 2, "step {step}");
            let got = plain_blocks(&out);
            assert_eq!(got.len(), 3);
            assert_eq!((got[0].0, got[0].1 & (FLAG_END_STREAM | FLAG_PRIORITY)), (1, FLAG_END_STREAM | FLAG_PRIORITY));
            assert_eq!(got[0].2, request("127.0.0.1:23790"));
            assert_eq!(got[1].2, request("example.com:1"));
            let mut dropped = request("x");
            dropped.remove(3);
            assert_eq!(got[2].2, dropped);
            assert!(out.ends_with(&frame(0x0, 0, 5, b"data")));
        }
    }

    #[test]
    fn dynamic_table_references_survive_the_rewrite() {
        // Block 1 adds its URL authority to the client's dynamic table
        // (literal with incremental indexing, name :authority); block 2
        // refers to it by index 62. Both come out plain and fixed.
        let url = b"http://127.0.0.1:1";
        let mut b1 = vec![0x83, 0x86, 0x84, 0x41, url.len() as u8];
        b1.extend_from_slice(url);
        let b2 = [0x83, 0x86, 0x84, 0xbe];
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b2));
        for step in [1, 4, 1 << 20] {
            let mut rw = Rewriter::new();
            let got = plain_blocks(&run(&mut rw, &input, step));
            assert_eq!(rw.rewritten, 2);
            for (_, _, headers) in &got {
                assert_eq!(headers[3], (b":authority".to_vec(), b"127.0.0.1:1".to_vec()));
            }
        }
    }

    #[test]
    fn output_per_feed_is_bounded_and_oversized_blocks_refused() {
        // Block 1: a URL authority (rewriting on) and a 3,000-byte header
        // added to the table; then 100 blocks that each index it 15 times:
        // 4.5 MB decoded from about 3 KB of input.
        let mut b1 = vec![0x83, 0x86, 0x84, 0x41, 8];
        b1.extend_from_slice(b"http://a");
        b1.extend_from_slice(&[0x40, 1, b'x', 0x7f, 0xb9, 0x16]); // name "x", value length 127 + 0x39 + (0x16 << 7) = 3000
        b1.extend(std::iter::repeat_n(b'v', 3000));
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        for i in 0..100u32 {
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3 + 2 * i, &[0xbe; 15]));
        }
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        let n = rw.feed(&input, &mut out).unwrap();
        assert!(n < input.len(), "stopped early");
        assert!(out.len() < OUT_SOFT_CAP + 2 * MAX_DECODED_BLOCK, "{} bytes out", out.len());
        // The rest goes through in later calls, each bounded.
        let mut rest = &input[n..];
        while !rest.is_empty() {
            out.clear();
            let n = rw.feed(rest, &mut out).unwrap();
            assert!(out.len() < OUT_SOFT_CAP + 2 * MAX_DECODED_BLOCK);
            rest = &rest[n..];
        }
        // A block decoding past the bound, and a header frame past the
        // frame size, close the connection.
        let mut big = PREFACE.to_vec();
        big.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        big.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0xbe; 22]));
        let mut rw = Rewriter::new();
        assert!(matches!(rw.feed(&big, &mut Vec::new()), Err(RewriteError::Hpack { stream_id: 3, .. })));
        let mut huge = PREFACE.to_vec();
        huge.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &vec![0x82; MAX_IN_HEADER_FRAME + 1]));
        let mut rw = Rewriter::new();
        assert!(matches!(rw.feed(&huge, &mut Vec::new()), Err(RewriteError::FrameTooLarge { .. })));
    }

    #[test]
    fn huffman_blocks_with_a_valid_authority_pass_untouched() {
        // RFC 7541 C.4: Huffman strings, the second block indexes the first's authority.
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &hex("8286 84be 5886 a8eb 1064 9cbf")));
        let mut rw = Rewriter::new();
        let out = run(&mut rw, &input, 3);
        assert_eq!(out, input, "valid authorities: untouched");
        let got = blocks(&out);
        assert_eq!(got[1].2[3], (b":authority".to_vec(), b"www.example.com".to_vec()));
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut headers = request("passthrough:///10.0.0.1:2379");
        headers.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let mut input = PREFACE.to_vec();
        let block = hpack::encode_plain(&headers);
        for (i, chunk) in block.chunks(16_000).enumerate() {
            let last = (i + 1) * 16_000 >= block.len();
            let t = if i == 0 { TYPE_HEADERS } else { TYPE_CONTINUATION };
            input.extend(frame(t, if last { FLAG_END_HEADERS } else { 0 }, 1, chunk));
        }
        let mut rw = Rewriter::new();
        let out = run(&mut rw, &input, 4096);
        let got = plain_blocks(&out);
        assert_eq!(got[0].2[3].1, b"10.0.0.1:2379");
        assert_eq!(got[0].2[5].1.len(), 40_000);
    }

    #[test]
    fn not_http2_passes_through() {
        let input = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut rw = Rewriter::new();
        assert_eq!(run(&mut rw, input, 2), input);
        assert!(rw.is_passthrough());
        // A preface that diverges late keeps the bytes already matched.
        let mut rw = Rewriter::new();
        assert_eq!(run(&mut rw, b"PRI * HTTP/1.1\r\n", 1), b"PRI * HTTP/1.1\r\n");
    }

    #[test]
    fn malformed_frame_sequences_are_errors() {
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0, 1, &hpack::encode_plain(&request("a:1"))));
        input.extend(frame(0x0, 0, 1, b"x"));
        assert_eq!(rw.feed(&input, &mut out).map(|_| ()), Err(RewriteError::BadContinuation { stream_id: 1, frame_type: 0 }));
        let mut rw = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b""));
        assert!(matches!(rw.feed(&input, &mut out), Err(RewriteError::BadContinuation { .. })));
        let mut rw = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[9, 1, 2]));
        assert_eq!(rw.feed(&input, &mut out).map(|_| ()), Err(RewriteError::BadHeadersFrame { stream_id: 1 }));
        let mut rw = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80]));
        assert!(matches!(rw.feed(&input, &mut out), Err(RewriteError::Hpack { stream_id: 1, .. })));
    }

    #[test]
    fn host_port_extraction() {
        let hp = |s: &str| host_port(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(hp("http://127.0.0.1:2379").as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(hp("https://etcd.example.com:2379/").as_deref(), Some("etcd.example.com:2379"));
        assert_eq!(hp("passthrough:///10.0.0.1:2379").as_deref(), Some("10.0.0.1:2379"));
        assert_eq!(hp("dns:///etcd:2379").as_deref(), Some("etcd:2379"));
        assert_eq!(hp("unix:///var/run/etcd.sock").as_deref(), Some("localhost"));
        assert_eq!(hp("#initially=[http://a:1;http://b:2]"), None);
        assert_eq!(hp(""), None);
    }
}
