//! HPACK (RFC 7541), as much as rewriting one header needs: a decoder with
//! its dynamic table, bounded, and an encoder that writes plain literals
//! only (no dynamic table, no Huffman), so the peer's decoder state never
//! depends on what this side encoded.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// A decoded header: name and value, as bytes.
pub type Header = (Vec<u8>, Vec<u8>);

/// Why a header block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ended inside a representation.
    #[error("header block cut short")]
    Truncated,
    /// An integer longer than any valid one.
    #[error("integer overflow in a header block")]
    IntegerOverflow,
    /// An index 0 or past the end of the static and dynamic tables.
    #[error("header index {index} is not in the table")]
    BadIndex { index: usize },
    /// A dynamic table size update above the limit the server announced.
    #[error("dynamic table size {size} above the limit {limit}")]
    TableSizeTooLarge { size: usize, limit: usize },
    /// Huffman data with EOS, over-long padding, or padding not all ones.
    #[error("invalid Huffman-coded string")]
    BadHuffman,
    /// The decoded headers exceed the bound on one block.
    #[error("decoded header list longer than {limit} bytes")]
    ListTooLarge { limit: usize },
    /// A dynamic table size update after a header field (RFC 7541 §4.2
    /// allows them only at the start of a block).
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
}

/// The static table (RFC 7541, Appendix A), indices 1..=61.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code length in bits of each symbol of HPACK's Huffman code (RFC 7541,
/// Appendix B), symbols 0..=255 and EOS (256). The code is canonical:
/// codes of one length are consecutive in symbol order, so the lengths
/// define it.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, 6, 10,
    10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6,
    7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23,
    21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22,
    22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27,
    26, 30,
];

const EOS: u16 = 256;

/// A node of the decoding tree: children for bit 0 and 1; a child below
/// `LEAF` is another node, `LEAF + symbol` a leaf.
const LEAF: u16 = 0x8000;

fn huffman_tree() -> &'static Vec<[u16; 2]> {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..=EOS).collect();
        symbols.sort_by_key(|&s| (HUFFMAN_LENGTHS[usize::from(s)], s));
        let mut tree = vec![[0u16; 2]];
        let (mut code, mut prev_len) = (0u32, HUFFMAN_LENGTHS[usize::from(symbols[0])]);
        for (i, &s) in symbols.iter().enumerate() {
            let len = HUFFMAN_LENGTHS[usize::from(s)];
            if i > 0 {
                code = (code + 1) << (len - prev_len);
                prev_len = len;
            }
            let mut node = 0usize;
            for bit in (0..len).rev() {
                let b = ((code >> bit) & 1) as usize;
                if bit == 0 {
                    tree[node][b] = LEAF + s;
                } else {
                    if tree[node][b] == 0 {
                        tree.push([0, 0]);
                        tree[node][b] = (tree.len() - 1) as u16;
                    }
                    node = usize::from(tree[node][b]);
                }
            }
        }
        tree
    })
}

/// Decodes Huffman-coded `src` (RFC 7541 §5.2).
pub fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, HpackError> {
    let tree = huffman_tree();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut node, mut depth, mut all_ones) = (0usize, 0u32, true);
    for &byte in src {
        for bit in (0..8).rev() {
            let b = usize::from((byte >> bit) & 1);
            let next = tree[node][b];
            if next >= LEAF {
                let sym = next - LEAF;
                if sym == EOS {
                    return Err(HpackError::BadHuffman);
                }
                out.push(sym as u8);
                (node, depth, all_ones) = (0, 0, true);
            } else {
                (node, depth) = (usize::from(next), depth + 1);
                all_ones &= b == 1;
            }
        }
    }
    // What is left must be a prefix of EOS (all ones), shorter than a byte.
    if depth > 7 || !all_ones {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

/// Reads an integer with an `n`-bit prefix (RFC 7541 §5.1); answers it and
/// the bytes after it.
fn read_int(src: &[u8], n: u8) -> Result<(usize, &[u8]), HpackError> {
    let (&first, mut rest) = src.split_first().ok_or(HpackError::Truncated)?;
    let max = (1usize << n) - 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok((v, rest));
    }
    let mut shift = 0u32;
    loop {
        let (&b, r) = rest.split_first().ok_or(HpackError::Truncated)?;
        rest = r;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        v = v.checked_add(usize::from(b & 0x7f) << shift).ok_or(HpackError::IntegerOverflow)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok((v, rest));
        }
    }
}

fn read_string(src: &[u8]) -> Result<(Vec<u8>, &[u8]), HpackError> {
    let huffman = src.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, rest) = read_int(src, 7)?;
    if rest.len() < len {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = rest.split_at(len);
    let s = if huffman { huffman_decode(raw)? } else { raw.to_vec() };
    Ok((s, rest))
}

/// Writes `v` with an `n`-bit prefix whose high bits are `flags`.
fn write_int(out: &mut Vec<u8>, flags: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encodes `headers` as literals without indexing, with literal names and
/// no Huffman coding: a block any decoder reads without touching its
/// dynamic table. (Tests build blocks with it.)
#[cfg(test)]
pub fn encode_plain(headers: &[Header]) -> Vec<u8> {
    encode_plain_marked(headers, &[])
}

/// [`encode_plain`], with the headers whose `sensitive` entry is true as
/// never-indexed literals (as the client marked them).
pub fn encode_plain_marked(headers: &[Header], sensitive: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum());
    for (i, (name, value)) in headers.iter().enumerate() {
        out.push(if sensitive.get(i).copied().unwrap_or(false) { 0x10 } else { 0x00 });
        write_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        write_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// An HPACK decoder: the dynamic table of one connection's direction.
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<Header>,
    /// Bytes the table holds, counted as RFC 7541 §4.1 does.
    size: usize,
    /// The table's current maximum (changed by size updates).
    max: usize,
    /// The maximum the decoding side announced (SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
    /// Bound on the decoded size of one block.
    max_list: usize,
}

fn entry_size(h: &Header) -> usize {
    h.0.len() + h.1.len() + 32
}

impl Decoder {
    /// A decoder whose table may grow to `limit` bytes, refusing blocks
    /// that decode to more than `max_list` bytes.
    pub fn new(limit: usize, max_list: usize) -> Self {
        Decoder { table: VecDeque::new(), size: 0, max: limit, limit, max_list }
    }

    fn get(&self, index: usize) -> Result<Header, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex { index }),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            }
            _ => self.table.get(index - 62).cloned().ok_or(HpackError::BadIndex { index }),
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let Some(h) = self.table.pop_back() else { break };
            self.size -= entry_size(&h);
        }
    }

    fn insert(&mut self, h: Header) {
        let s = entry_size(&h);
        if s > self.max {
            // An entry larger than the table empties it (RFC 7541 §4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - s);
        self.size += s;
        self.table.push_front(h);
    }

    /// Decodes one complete header block.
    #[cfg(test)]
    pub fn decode(&mut self, src: &[u8]) -> Result<Vec<Header>, HpackError> {
        Ok(self.decode_marked(src)?.0)
    }

    /// [`Decoder::decode`], also telling which headers were sent as
    /// never-indexed literals (sensitive values).
    pub fn decode_marked(&mut self, mut src: &[u8]) -> Result<(Vec<Header>, Vec<bool>), HpackError> {
        let mut out = Vec::new();
        let mut sensitive = Vec::new();
        let mut total = 0usize;
        while let Some(&b) = src.first() {
            let mut never_indexed = false;
            let header = if b & 0x80 != 0 {
                let (index, rest) = read_int(src, 7)?;
                src = rest;
                self.get(index)?
            } else if b & 0xe0 == 0x20 {
                if !out.is_empty() {
                    return Err(HpackError::LateSizeUpdate);
                }
                let (size, rest) = read_int(src, 5)?;
                src = rest;
                if size > self.limit {
                    return Err(HpackError::TableSizeTooLarge { size, limit: self.limit });
                }
                self.max = size;
                self.evict_to(size);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000)
                // or never indexed (0001).
                let (prefix, indexed) = if b & 0xc0 == 0x40 { (6, true) } else { (4, false) };
                never_indexed = b & 0xf0 == 0x10;
                let (index, rest) = read_int(src, prefix)?;
                let (name, rest) = if index == 0 { read_string(rest)? } else { (self.get(index)?.0, rest) };
                let (value, rest) = read_string(rest)?;
                src = rest;
                let h = (name, value);
                if indexed {
                    self.insert(h.clone());
                }
                h
            };
            total += entry_size(&header);
            if total > self.max_list {
                return Err(HpackError::ListTooLarge { limit: self.max_list });
            }
            out.push(header);
            sensitive.push(never_indexed);
        }
        Ok((out, sensitive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn h(n: &str, v: &str) -> Header {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn decodes_rfc_7541_c4_requests_with_huffman_and_the_dynamic_table() {
        let mut d = Decoder::new(4096, 1 << 16);
        let first = d.decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(first, vec![h(":method", "GET"), h(":scheme", "http"), h(":path", "/"), h(":authority", "www.example.com")]);
        let second = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            second,
            vec![
                h(":method", "GET"),
                h(":scheme", "http"),
                h(":path", "/"),
                h(":authority", "www.example.com"),
                h("cache-control", "no-cache")
            ]
        );
        let third = d.decode(&hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")).unwrap();
        assert_eq!(
            third,
            vec![
                h(":method", "GET"),
                h(":scheme", "https"),
                h(":path", "/index.html"),
                h(":authority", "www.example.com"),
                h("custom-key", "custom-value")
            ]
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn the_plain_encoding_reads_back() {
        let headers = vec![h(":authority", "127.0.0.1:2379"), h("te", "trailers"), h("x-long", &"v".repeat(300))];
        let mut d = Decoder::new(4096, 1 << 16);
        assert_eq!(d.decode(&encode_plain(&headers)).unwrap(), headers);
        assert!(d.table.is_empty());
    }

    #[test]
    fn bad_blocks_are_refused() {
        let mut d = Decoder::new(4096, 1 << 16);
        assert_eq!(d.decode(&[0x80]), Err(HpackError::BadIndex { index: 0 }));
        assert_eq!(d.decode(&[0xbe]), Err(HpackError::BadIndex { index: 62 }));
        assert_eq!(d.decode(&[0x41, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(d.decode(&[0x3f, 0xe1, 0x1f]), Ok(vec![]));
        assert_eq!(d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), Err(HpackError::IntegerOverflow));
        // Huffman: EOS inside the data, and padding of zeros.
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xfc]), Err(HpackError::BadHuffman));
        assert_eq!(huffman_decode(&[0x00]), Err(HpackError::BadHuffman));
        assert_eq!(d.decode(&[0x82, 0x20]), Err(HpackError::LateSizeUpdate));
        let (_, marked) = d.decode_marked(&[0x82, 0x10, 0x01, b'a', 0x01, b'b']).unwrap();
        assert_eq!(marked, [false, true], "never-indexed literals are reported");
        let mut small = Decoder::new(4096, 40);
        assert_eq!(small.decode(&encode_plain(&[h("a", "b"), h("c", "d")])), Err(HpackError::ListTooLarge { limit: 40 }));
    }

    #[test]
    fn a_size_update_evicts_and_is_bounded() {
        let mut d = Decoder::new(4096, 1 << 16);
        d.decode(&hex("4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")).unwrap();
        assert_eq!(d.table.len(), 1);
        d.decode(&[0x20]).unwrap();
        assert!(d.table.is_empty());
        assert_eq!(d.decode(&[0x3f, 0xe2, 0x1f]), Err(HpackError::TableSizeTooLarge { size: 4097, limit: 4096 }));
    }
}
