//! Packs (pure): many blobs in one body, so moving a tree between the DO and
//! the runner costs a few requests instead of one per file. A pack is a
//! sequence of frames, each a header line `<sha256 hex> <size>\n` followed
//! by exactly `size` bytes. The runner serves them at `POST /blobs/pack` (a
//! `BlobList` in, the frames out) and takes them at `POST /blobs/unpack`;
//! each blob is checked against its name by whoever stores it.

use sha2::{Digest, Sha256};

/// Most bytes (frames included) one pack carries.
pub const MAX_PACK_BYTES: u64 = 32 * 1024 * 1024;
/// Blobs larger than this travel alone (`GET`/`PUT /blobs/{sha}`).
pub const MAX_PACKED_BLOB_BYTES: u64 = 8 * 1024 * 1024;
/// Longest header line: 64 hex, a space, up to 20 digits, a newline.
const MAX_HEADER: usize = 64 + 1 + 20 + 1;

pub fn frame_header(sha256: &str, size: u64) -> String {
    format!("{sha256} {size}\n")
}

/// A blob to move: its hash and size.
pub type BlobSize = (String, u64);

/// The blobs of `blobs` split into packs of at most `MAX_PACK_BYTES` each,
/// and those that travel alone.
pub fn plan(blobs: &[BlobSize]) -> (Vec<Vec<BlobSize>>, Vec<BlobSize>) {
    let mut packs: Vec<Vec<BlobSize>> = Vec::new();
    let mut alone = Vec::new();
    let mut current: Vec<BlobSize> = Vec::new();
    let mut bytes = 0u64;
    for (sha, size) in blobs {
        if *size > MAX_PACKED_BLOB_BYTES {
            alone.push((sha.clone(), *size));
            continue;
        }
        let framed = size + frame_header(sha, *size).len() as u64;
        if !current.is_empty() && bytes + framed > MAX_PACK_BYTES {
            packs.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push((sha.clone(), *size));
        bytes += framed;
    }
    if !current.is_empty() {
        packs.push(current);
    }
    (packs, alone)
}

/// Reads frames from chunks as they come; each blob is checked against its
/// name before it is handed out.
#[derive(Default)]
pub struct Unpacker {
    buf: Vec<u8>,
    /// The frame being read: its hash and size.
    current: Option<(String, usize)>,
    hasher: Option<Sha256>,
}

impl Unpacker {
    /// Feeds one chunk; returns the blobs it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.buf.extend_from_slice(chunk);
        let mut done = Vec::new();
        loop {
            if self.current.is_none() {
                let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                    if self.buf.len() > MAX_HEADER {
                        return Err("a pack frame header is too long".into());
                    }
                    return Ok(done);
                };
                let line = std::str::from_utf8(&self.buf[..end])
                    .map_err(|_| "a pack frame header is not UTF-8".to_string())?;
                let (sha, size) = parse_header(line)?;
                self.buf.drain(..=end);
                self.current = Some((sha, size));
                self.hasher = Some(Sha256::new());
            }
            let Some((sha, size)) = self.current.clone() else {
                return Ok(done);
            };
            if self.buf.len() < size {
                return Ok(done);
            }
            let bytes: Vec<u8> = self.buf.drain(..size).collect();
            let mut hasher = self.hasher.take().unwrap_or_default();
            hasher.update(&bytes);
            let actual = hex::encode(hasher.finalize());
            if actual != sha {
                return Err(format!("pack blob {sha} hashes to {actual}"));
            }
            self.current = None;
            done.push((sha, bytes));
        }
    }

    /// The pack ended: nothing may be left half read.
    pub fn finish(&self) -> Result<(), String> {
        if self.current.is_some() || !self.buf.is_empty() {
            return Err("the pack ended inside a frame".into());
        }
        Ok(())
    }
}

fn parse_header(line: &str) -> Result<(String, usize), String> {
    let bad = || {
        format!(
            "bad pack frame header {:?}",
            line.chars().take(100).collect::<String>()
        )
    };
    let (sha, size) = line.split_once(' ').ok_or_else(bad)?;
    let is_hex = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let size: u64 = size.parse().map_err(|_| bad())?;
    if !is_hex || size > MAX_PACKED_BLOB_BYTES {
        return Err(bad());
    }
    Ok((sha.to_string(), size as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn pack(blobs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in blobs {
            out.extend_from_slice(frame_header(&sha(b), b.len() as u64).as_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn frames_come_back_whole_whatever_the_chunking() {
        let blobs: [&[u8]; 4] = [b"hello", b"", b"\n\n binary \x00\xff", &[7u8; 5000]];
        let body = pack(&blobs);
        for chunk in [1, 3, 64, 100_000] {
            let mut u = Unpacker::default();
            let mut got = Vec::new();
            for part in body.chunks(chunk) {
                got.extend(u.push(part).unwrap());
            }
            u.finish().unwrap();
            let want: Vec<(String, Vec<u8>)> = blobs.iter().map(|b| (sha(b), b.to_vec())).collect();
            assert_eq!(got, want, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_wrong_hash_a_bad_header_or_a_cut_pack_is_refused() {
        let mut body = pack(&[b"hello"]);
        let last = body.len() - 1;
        body[last] = b'X';
        assert!(Unpacker::default()
            .push(&body)
            .unwrap_err()
            .contains("hashes to"));
        for header in [
            "nope 5\nhello",
            &format!("{} -1\n", sha(b"x")),
            &format!("{} 99999999999\n", sha(b"x")),
        ] {
            assert!(
                Unpacker::default().push(header.as_bytes()).is_err(),
                "{header}"
            );
        }
        assert!(Unpacker::default().push(&[b'a'; 200]).is_err());
        let whole = pack(&[b"hello"]);
        let mut cut = Unpacker::default();
        cut.push(&whole[..whole.len() - 2]).unwrap();
        assert!(cut.finish().is_err());
    }

    #[test]
    fn plans_keep_packs_under_the_limit_and_big_blobs_alone() {
        let h = |i: u32| format!("{i:064}");
        let mut blobs: Vec<(String, u64)> = (0..10).map(|i| (h(i), 5 * 1024 * 1024)).collect();
        blobs.push((h(99), MAX_PACKED_BLOB_BYTES + 1));
        let (packs, alone) = plan(&blobs);
        assert_eq!(alone, vec![(h(99), MAX_PACKED_BLOB_BYTES + 1)]);
        assert_eq!(packs.iter().map(Vec::len).sum::<usize>(), 10);
        for p in &packs {
            let bytes: u64 = p
                .iter()
                .map(|(s, n)| n + frame_header(s, *n).len() as u64)
                .sum();
            assert!(bytes <= MAX_PACK_BYTES, "{bytes}");
        }
        assert_eq!(packs.len(), 2);
        assert_eq!(plan(&[]), (vec![], vec![]));
    }
}
