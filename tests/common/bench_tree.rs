//! The benches' trees: deterministic, incompressible file contents.

use std::fs;
use std::path::Path;

/// Deterministic pseudo-random bytes (incompressible, like real binaries).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `files` files in 20 directories (`pkgNN/src/fileNNN.bin`), sizes spread
/// around the average, `total_bytes` in all. Returns the bytes written.
pub fn make_tree(root: &Path, files: usize, total_bytes: usize) -> u64 {
    let mut total = 0u64;
    let avg = total_bytes / files;
    for i in 0..files {
        // Sizes alternate around the average so the total stays exact.
        let delta = (i / 2 * 7919 % (avg * 4 / 5)) as isize;
        let size = if i % 2 == 0 {
            avg as isize + delta
        } else {
            avg as isize - delta
        } as usize;
        let dir = root.join(format!("pkg{:02}/src", i % 20));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("file{i:03}.bin")),
            noise(i as u64 + 1, size),
        )
        .unwrap();
        total += size as u64;
    }
    total
}
