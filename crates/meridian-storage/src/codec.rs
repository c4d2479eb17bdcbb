//! A small checksummed record codec: `version:u8 ‖ fields… ‖ crc32:u32`.
//! Every record read back from disk is verified, so corruption becomes a
//! clear [`StorageError::Corrupt`] instead of a panic or silent garbage.

use crate::error::{StorageError, StorageResult};

pub(crate) const VERSION: u8 = 1;

#[derive(Default)]
pub(crate) struct Enc(Vec<u8>);

impl Enc {
    pub fn new() -> Self {
        Enc(vec![VERSION])
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.0);
        let mut out = std::mem::take(&mut self.0);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    range_id: u64,
    what: &'static str,
}

impl<'a> Dec<'a> {
    /// Verifies version and checksum and positions after the version byte.
    pub fn new(raw: &'a [u8], range_id: u64, what: &'static str) -> StorageResult<Self> {
        let corrupt = |why: &str| StorageError::Corrupt { range_id, what: format!("{what}: {why}") };
        if raw.len() < 5 {
            return Err(corrupt("record too short"));
        }
        let (body, crc) = raw.split_at(raw.len() - 4);
        let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != want {
            return Err(corrupt("checksum mismatch"));
        }
        if body[0] != VERSION {
            return Err(corrupt(&format!("unknown record version {}", body[0])));
        }
        Ok(Dec { buf: &body[1..], range_id, what })
    }

    fn corrupt(&self, why: &str) -> StorageError {
        StorageError::Corrupt { range_id: self.range_id, what: format!("{}: {why}", self.what) }
    }

    pub fn u64(&mut self) -> StorageResult<u64> {
        if self.buf.len() < 8 {
            return Err(self.corrupt("truncated integer"));
        }
        let (head, rest) = self.buf.split_at(8);
        self.buf = rest;
        Ok(u64::from_le_bytes(head.try_into().expect("8 bytes")))
    }

    pub fn bytes(&mut self) -> StorageResult<&'a [u8]> {
        let len = self.u64()?;
        if len > self.buf.len() as u64 {
            return Err(self.corrupt("length prefix past end of record"));
        }
        let (head, rest) = self.buf.split_at(len as usize);
        self.buf = rest;
        Ok(head)
    }

    pub fn finish(self) -> StorageResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_detect_flipped_bit() {
        let rec = Enc::new().u64(7).bytes(b"hello").finish();
        let mut d = Dec::new(&rec, 1, "t").unwrap();
        assert_eq!(d.u64().unwrap(), 7);
        assert_eq!(d.bytes().unwrap(), b"hello");
        d.finish().unwrap();
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x10;
            assert!(Dec::new(&bad, 1, "t").is_err(), "flip at byte {i} not detected");
        }
    }

    #[test]
    fn absurd_length_prefix_is_an_error_not_an_allocation() {
        let mut e = Enc::new();
        e.u64(u64::MAX);
        let rec = e.finish();
        let mut d = Dec::new(&rec, 1, "t").unwrap();
        assert!(d.bytes().is_err());
    }
}
