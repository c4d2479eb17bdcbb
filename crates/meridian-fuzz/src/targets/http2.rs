//! HTTP/2 client bytes as the gRPC port's `:authority` rewriter reads them
//! (`meridian_server::authority::Rewriter`): frame headers, padding,
//! CONTINUATION sequences and HPACK (Huffman strings, the dynamic table,
//! size updates).

use meridian_server::authority::Rewriter;

use crate::target::{Target, Verdict};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(out: &mut Vec<u8>, frame_type: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[frame_type, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A gRPC request's header block as plain literals with `authority`.
fn plain_block(authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in
        [(":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Range"), (":authority", authority), ("te", "trailers")]
    {
        block.extend_from_slice(&[0x40, n.len() as u8]);
        block.extend_from_slice(n.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    block
}

/// Runs `input` through a fresh rewriter in pieces of `step` bytes.
fn feed(input: &[u8], step: usize) -> (Vec<u8>, Result<(), String>) {
    let mut rw = Rewriter::new();
    let (mut out, mut all) = (Vec::new(), Vec::new());
    for mut piece in input.chunks(step) {
        while !piece.is_empty() {
            match rw.feed(piece, &mut out) {
                // Bounded output per call: drain it, feed the rest.
                Ok(n) => piece = &piece[n..],
                Err(e) => return (all, Err(e.to_string())),
            }
            all.append(&mut out);
        }
    }
    (all, Ok(()))
}

pub struct Http2Authority;

impl Target for Http2Authority {
    fn name(&self) -> &'static str {
        "http2-authority"
    }

    fn describe(&self) -> &'static str {
        "authority::Rewriter::feed (HTTP/2 frames and HPACK from clients on the gRPC port)"
    }

    fn is_protobuf(&self) -> bool {
        false
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut valid = PREFACE.to_vec();
        frame(&mut valid, 0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        frame(&mut valid, 0x1, 0x4, 1, &plain_block("127.0.0.1:2379"));
        frame(&mut valid, 0x0, 0x1, 1, b"\0\0\0\0\x03\x0a\x01k");
        // A URL authority split over HEADERS (padded, with priority) and a
        // CONTINUATION, then a block indexing the dynamic table.
        let mut url = PREFACE.to_vec();
        let block = plain_block("http://127.0.0.1:2379");
        let mut first = vec![2u8, 0, 0, 0, 0, 16];
        first.extend_from_slice(&block[..12]);
        first.extend_from_slice(&[0, 0]);
        frame(&mut url, 0x1, 0x8 | 0x20, 1, &first);
        frame(&mut url, 0x9, 0x4, 1, &block[12..]);
        frame(&mut url, 0x1, 0x5, 3, &[0xbe, 0xbf, 0xc0, 0xc1, 0xc2]);
        // RFC 7541 C.4: Huffman strings and a size update.
        let mut huff = PREFACE.to_vec();
        frame(
            &mut huff,
            0x1,
            0x4,
            1,
            &[0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff],
        );
        frame(&mut huff, 0x1, 0x4, 3, &[0x20, 0x3f, 0xe1, 0x1f, 0x82, 0x86, 0x84]);
        vec![valid, url, huff]
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let (whole, verdict) = feed(input, input.len().max(1));
        // How the bytes are cut into reads must not matter.
        for step in [1, 7] {
            let (out, v) = feed(input, step);
            if v != verdict {
                return Err(format!("split: {step}-byte reads gave {v:?}, one read {verdict:?}"));
            }
            if verdict.is_ok() && out != whole {
                return Err(format!("split: {step}-byte reads passed on different bytes"));
            }
        }
        Ok(if verdict.is_ok() { Verdict::Accepted } else { Verdict::Rejected })
    }
}
