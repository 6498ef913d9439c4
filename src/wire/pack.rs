//! Packs (pure; API.md "Workspaces", batches): many blobs in one body, so a
//! tree of many small files moves in a few requests instead of one per
//! file. A pack is a sequence of records, each the blob's SHA-256 as 32 raw
//! bytes, its length as an 8-byte big-endian integer, then its bytes.
//!
//! One format everywhere blobs move in bulk: the public
//! `POST /workspaces/:id/blobs/pack` and `…/blobs/fetch`, the CLI and the
//! sync client, and the DO ↔ runner (`POST /blobs/pack`, `/blobs/unpack`).
//! Whoever stores a record checks its bytes against its hash first.

use sha2::{Digest, Sha256};

/// The media type of a pack body.
pub const CONTENT_TYPE: &str = "application/vnd.cloudbox.pack";
/// Most bytes (record headers included) one pack carries.
pub const MAX_PACK_BYTES: u64 = 32 * 1024 * 1024;
/// Blobs larger than this travel alone (`PUT`/`GET …/blobs/:sha256`), so a
/// pack always holds several blobs and a big one streams without buffering.
pub const MAX_PACKED_BLOB_BYTES: u64 = 8 * 1024 * 1024;
/// A record's header: 32 bytes of hash, 8 of length.
pub const HEADER_BYTES: usize = 40;

/// A blob to move: its hash (hex) and size.
pub type BlobSize = (String, u64);

/// The header of a record; `None` if `sha256` is not 64 hex digits.
pub fn record_header(sha256: &str, size: u64) -> Option<[u8; HEADER_BYTES]> {
    let mut header = [0u8; HEADER_BYTES];
    hex::decode_to_slice(sha256, &mut header[..32]).ok()?;
    header[32..].copy_from_slice(&size.to_be_bytes());
    Some(header)
}

/// Bytes a pack of `blobs` takes.
pub fn packed_bytes(blobs: &[BlobSize]) -> u64 {
    blobs
        .iter()
        .map(|(_, size)| size + HEADER_BYTES as u64)
        .sum()
}

/// The blobs of `blobs` split, in order, into packs of at most
/// `max_pack_bytes` each, and those over `MAX_PACKED_BLOB_BYTES` (or too big
/// for any pack) that travel alone.
pub fn plan(blobs: &[BlobSize], max_pack_bytes: u64) -> (Vec<Vec<BlobSize>>, Vec<BlobSize>) {
    let mut packs: Vec<Vec<BlobSize>> = Vec::new();
    let mut alone = Vec::new();
    let mut current: Vec<BlobSize> = Vec::new();
    let mut bytes = 0u64;
    for (sha, size) in blobs {
        let framed = size + HEADER_BYTES as u64;
        if *size > MAX_PACKED_BLOB_BYTES || framed > max_pack_bytes {
            alone.push((sha.clone(), *size));
            continue;
        }
        if !current.is_empty() && bytes + framed > max_pack_bytes {
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

/// The pack size that spreads `blobs` over about `lanes` packs, so that
/// that many requests can be in flight at once (the server hashes one pack
/// while R2 stores another), within `max_pack_bytes` and no smaller than
/// `MIN_SPREAD_BYTES` (below that, requests cost more than they overlap).
pub fn spread(blobs: &[BlobSize], max_pack_bytes: u64, lanes: usize) -> u64 {
    let packed: u64 = blobs
        .iter()
        .filter(|(_, size)| *size <= MAX_PACKED_BLOB_BYTES)
        .map(|(_, size)| size + HEADER_BYTES as u64)
        .sum();
    let share = packed.div_ceil(lanes.max(1) as u64);
    share.clamp(MIN_SPREAD_BYTES.min(max_pack_bytes), max_pack_bytes)
}

/// The smallest pack `spread` plans for.
pub const MIN_SPREAD_BYTES: u64 = 4 * 1024 * 1024;

/// Why a pack was refused, naming its record (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// Cut short.
    BadPack { record: usize, message: String },
    /// A record longer than the reader takes.
    RecordTooLarge {
        record: usize,
        size: u64,
        limit: u64,
    },
    /// A record's bytes do not hash to its name.
    HashMismatch {
        record: usize,
        expected: String,
        actual: String,
    },
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackError::BadPack { record, message } => write!(f, "pack record {record}: {message}"),
            PackError::RecordTooLarge {
                record,
                size,
                limit,
            } => write!(
                f,
                "pack record {record} is {size} bytes, over the {limit} a record may hold"
            ),
            PackError::HashMismatch {
                record,
                expected,
                actual,
            } => write!(f, "pack record {record}: {expected} hashes to {actual}"),
        }
    }
}

/// The record being read.
enum State {
    Header(Vec<u8>),
    Body {
        sha256: String,
        size: usize,
        bytes: Vec<u8>,
        hasher: Sha256,
    },
}

/// Reads records from chunks as they come, hashing each record's bytes as
/// they arrive (no second pass, no copy of the whole pack); a record is
/// handed out only once its hash is checked.
pub struct Unpacker {
    state: State,
    /// Records handed out so far (the next record's number).
    records: usize,
    max_record: u64,
}

impl Default for Unpacker {
    fn default() -> Self {
        Unpacker::new(MAX_PACK_BYTES - HEADER_BYTES as u64)
    }
}

impl Unpacker {
    /// Refuses records longer than `max_record` bytes.
    pub fn new(max_record: u64) -> Self {
        Unpacker {
            state: State::Header(Vec::with_capacity(HEADER_BYTES)),
            records: 0,
            max_record,
        }
    }

    /// The size a record announces, once its header is in: what a caller
    /// with its own per-blob limit checks before the bytes arrive.
    pub fn announced(&self) -> Option<(&str, usize)> {
        match &self.state {
            State::Body { sha256, size, .. } => Some((sha256, *size)),
            State::Header(_) => None,
        }
    }

    /// Feeds one chunk; returns the records it completed, in order.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PackError> {
        let mut done = Vec::new();
        while !chunk.is_empty() {
            match &mut self.state {
                State::Header(buf) => {
                    let take = (HEADER_BYTES - buf.len()).min(chunk.len());
                    buf.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if buf.len() == HEADER_BYTES {
                        let sha256 = hex::encode(&buf[..32]);
                        let mut len = [0u8; 8];
                        len.copy_from_slice(&buf[32..]);
                        let size = u64::from_be_bytes(len);
                        if size > self.max_record {
                            return Err(PackError::RecordTooLarge {
                                record: self.records,
                                size,
                                limit: self.max_record,
                            });
                        }
                        self.state = State::Body {
                            sha256,
                            size: size as usize,
                            bytes: Vec::with_capacity(size as usize),
                            hasher: Sha256::new(),
                        };
                        self.complete_if_full(&mut done)?;
                    }
                }
                State::Body {
                    size,
                    bytes,
                    hasher,
                    ..
                } => {
                    let take = (*size - bytes.len()).min(chunk.len());
                    hasher.update(&chunk[..take]);
                    bytes.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    self.complete_if_full(&mut done)?;
                }
            }
        }
        Ok(done)
    }

    /// Hands out the current record if all its bytes are in.
    fn complete_if_full(&mut self, done: &mut Vec<(String, Vec<u8>)>) -> Result<(), PackError> {
        let full = matches!(&self.state, State::Body { size, bytes, .. } if bytes.len() == *size);
        if !full {
            return Ok(());
        }
        let state = std::mem::replace(
            &mut self.state,
            State::Header(Vec::with_capacity(HEADER_BYTES)),
        );
        if let State::Body {
            sha256,
            bytes,
            hasher,
            ..
        } = state
        {
            let actual = hex::encode(hasher.finalize());
            if actual != sha256 {
                return Err(PackError::HashMismatch {
                    record: self.records,
                    expected: sha256,
                    actual,
                });
            }
            self.records += 1;
            done.push((sha256, bytes));
        }
        Ok(())
    }

    /// The pack ended: nothing may be left half read.
    pub fn finish(&self) -> Result<(), PackError> {
        let cut = match &self.state {
            State::Header(buf) => !buf.is_empty(),
            State::Body { .. } => true,
        };
        if cut {
            return Err(PackError::BadPack {
                record: self.records,
                message: "the pack ends inside this record".into(),
            });
        }
        Ok(())
    }
}

/// A whole pack of `blobs` in memory (tests, and the clients' small packs).
pub fn encode<'a>(blobs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (sha, bytes) in blobs {
        out.extend_from_slice(&record_header(sha, bytes.len() as u64)?);
        out.extend_from_slice(bytes);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn pack(blobs: &[&[u8]]) -> Vec<u8> {
        let hashes: Vec<String> = blobs.iter().map(|b| sha(b)).collect();
        encode(hashes.iter().map(String::as_str).zip(blobs.iter().copied())).unwrap()
    }

    fn unpack(body: &[u8], chunk: usize) -> Result<Vec<(String, Vec<u8>)>, PackError> {
        let mut u = Unpacker::default();
        let mut got = Vec::new();
        for part in body.chunks(chunk.max(1)) {
            got.extend(u.push(part)?);
        }
        u.finish()?;
        Ok(got)
    }

    #[test]
    fn the_header_is_the_raw_hash_then_the_big_endian_length() {
        let h = record_header(&"ab".repeat(32), 258).unwrap();
        assert_eq!(&h[..32], &[0xab; 32]);
        assert_eq!(&h[32..], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(record_header("xyz", 1), None);
        assert_eq!(record_header(&"a".repeat(63), 1), None);
    }

    #[test]
    fn records_come_back_whole_whatever_the_chunking() {
        let blobs: [&[u8]; 4] = [b"hello", b"", b"\n\n binary \x00\xff", &[7u8; 5000]];
        let body = pack(&blobs);
        let want: Vec<(String, Vec<u8>)> = blobs.iter().map(|b| (sha(b), b.to_vec())).collect();
        for chunk in [1, 3, 40, 41, 64, 100_000] {
            assert_eq!(unpack(&body, chunk).unwrap(), want, "chunks of {chunk}");
        }
        assert_eq!(unpack(&[], 1).unwrap(), vec![]);
    }

    #[test]
    fn a_wrong_hash_a_cut_pack_or_an_oversized_record_is_refused_by_number() {
        let mut body = pack(&[b"fine", b"hello"]);
        let last = body.len() - 1;
        body[last] = b'X';
        let err = unpack(&body, 7).unwrap_err();
        assert!(
            matches!(&err, PackError::HashMismatch { record: 1, expected, .. } if *expected == sha(b"hello")),
            "{err}"
        );
        let whole = pack(&[b"fine", b"hello"]);
        for cut in [1, 2, HEADER_BYTES + 1] {
            let err = unpack(&whole[..whole.len() - cut], 5).unwrap_err();
            assert!(matches!(err, PackError::BadPack { record: 1, .. }), "{err}");
        }
        let err = unpack(&whole[..3], 5).unwrap_err();
        assert!(matches!(err, PackError::BadPack { record: 0, .. }));
        let mut huge = record_header(&sha(b"x"), u64::MAX).unwrap().to_vec();
        huge.extend_from_slice(b"x");
        let err = unpack(&huge, 100).unwrap_err();
        assert!(
            matches!(err, PackError::RecordTooLarge { record: 0, .. }),
            "{err}"
        );
        let mut small = Unpacker::new(3);
        assert!(small.push(&pack(&[b"four"])).is_err());
    }

    #[test]
    fn the_announced_size_is_known_before_the_bytes() {
        let body = pack(&[b"hello"]);
        let mut u = Unpacker::default();
        assert!(u.push(&body[..HEADER_BYTES]).unwrap().is_empty());
        assert_eq!(u.announced().map(|(_, n)| n), Some(5));
        assert_eq!(u.push(&body[HEADER_BYTES..]).unwrap().len(), 1);
        assert_eq!(u.announced(), None);
    }

    #[test]
    fn plans_keep_packs_under_the_limit_and_big_blobs_alone() {
        let h = |i: u32| format!("{i:064}");
        let mut blobs: Vec<(String, u64)> = (0..10).map(|i| (h(i), 5 * 1024 * 1024)).collect();
        blobs.push((h(99), MAX_PACKED_BLOB_BYTES + 1));
        let (packs, alone) = plan(&blobs, MAX_PACK_BYTES);
        assert_eq!(alone, vec![(h(99), MAX_PACKED_BLOB_BYTES + 1)]);
        assert_eq!(packs.iter().map(Vec::len).sum::<usize>(), 10);
        for p in &packs {
            assert!(packed_bytes(p) <= MAX_PACK_BYTES);
        }
        assert_eq!(packs.len(), 2);
        assert_eq!(plan(&[], MAX_PACK_BYTES), (vec![], vec![]));
        // A smaller server limit: a blob that fits no pack goes alone.
        let (packs, alone) = plan(&[(h(1), 100), (h(2), 10)], 100);
        assert_eq!((packs, alone), (vec![vec![(h(2), 10)]], vec![(h(1), 100)]));
    }

    #[test]
    fn spread_shares_the_bytes_between_lanes_within_the_limits() {
        let h = |i: u32| format!("{i:064}");
        let blobs: Vec<BlobSize> = (0..500).map(|i| (h(i), 100_000)).collect();
        let size = spread(&blobs, MAX_PACK_BYTES, 4);
        assert_eq!(size, (500 * (100_000 + 40u64)).div_ceil(4));
        let (packs, alone) = plan(&blobs, size);
        assert!(alone.is_empty());
        assert!((4..=5).contains(&packs.len()), "{}", packs.len());
        // Small trees stay in one pack; huge ones use the server's limit.
        assert_eq!(spread(&blobs[..10], MAX_PACK_BYTES, 4), MIN_SPREAD_BYTES);
        let huge: Vec<BlobSize> = (0..5000).map(|i| (h(i), 1_000_000)).collect();
        assert_eq!(spread(&huge, MAX_PACK_BYTES, 4), MAX_PACK_BYTES);
        assert_eq!(spread(&blobs, 1000, 4), 1000);
        assert_eq!(spread(&[], MAX_PACK_BYTES, 4), MIN_SPREAD_BYTES);
    }

    proptest! {
        #[test]
        fn any_pack_unpacks_to_its_blobs_at_any_chunking(
            blobs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            chunk in 1usize..200,
        ) {
            let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
            let got = unpack(&pack(&refs), chunk).unwrap();
            let want: Vec<(String, Vec<u8>)> = blobs.iter().map(|b| (sha(b), b.clone())).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn garbage_never_panics_and_never_yields_an_unchecked_record(
            body in prop::collection::vec(any::<u8>(), 0..400),
            chunk in 1usize..100,
        ) {
            let mut u = Unpacker::new(1000);
            for part in body.chunks(chunk) {
                match u.push(part) {
                    Ok(records) => {
                        for (name, bytes) in records {
                            prop_assert_eq!(name, sha(&bytes));
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
