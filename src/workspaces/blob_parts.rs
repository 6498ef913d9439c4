//! Cutting an upload stream into equal parts (pure). R2 multipart uploads
//! need every part but the last to be the same size (and at least 5 MiB),
//! so chunks of whatever size the request stream yields are regrouped here
//! into `part_size` parts while the SHA-256 and byte count run along.

use sha2::{Digest, Sha256};

/// Part size of streamed blob uploads; also the largest blob buffered whole.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

pub struct PartSplitter {
    part_size: usize,
    buf: Vec<u8>,
    hasher: Sha256,
    total: u64,
}

impl PartSplitter {
    pub fn new(part_size: usize) -> Self {
        PartSplitter {
            part_size,
            buf: Vec::new(),
            hasher: Sha256::new(),
            total: 0,
        }
    }

    /// Takes one chunk; returns the full parts it completed (usually none or one).
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<Vec<u8>> {
        self.hasher.update(chunk);
        self.total += chunk.len() as u64;
        let mut parts = Vec::new();
        while !chunk.is_empty() {
            let room = self.part_size - self.buf.len();
            let take = room.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() == self.part_size {
                parts.push(std::mem::take(&mut self.buf));
            }
        }
        parts
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Ends the stream: the last (short, possibly empty) part and the hex SHA-256.
    pub fn finish(self) -> (Vec<u8>, String) {
        (self.buf, hex::encode(self.hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: &[u8], chunk: usize, part: usize) -> (Vec<Vec<u8>>, Vec<u8>, String) {
        let mut s = PartSplitter::new(part);
        let mut parts = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            parts.extend(s.push(c));
        }
        assert_eq!(s.total(), data.len() as u64);
        let (last, hash) = s.finish();
        (parts, last, hash)
    }

    #[test]
    fn parts_are_equal_and_rejoin_to_the_input() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in [1, 7, 999, 1000, 4096, 20_000] {
            let (parts, last, hash) = split(&data, chunk, 1000);
            assert!(parts.iter().all(|p| p.len() == 1000));
            assert_eq!(parts.len(), 10);
            assert!(last.is_empty());
            assert_eq!(parts.concat(), data);
            assert_eq!(hash, crate::workspaces::manifest::sha256_hex(&data));
        }
        let (parts, last, _) = split(&data[..2500], 300, 1000);
        assert_eq!((parts.len(), last.len()), (2, 500));
    }

    #[test]
    fn empty_stream_hashes_to_the_empty_sha() {
        let (parts, last, hash) = split(b"", 1, 10);
        assert!(parts.is_empty() && last.is_empty());
        assert_eq!(hash, crate::workspaces::manifest::sha256_hex(b""));
    }
}
