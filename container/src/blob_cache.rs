//! The runner's local content-addressed cache of workspace blobs. The DO asks
//! which hashes are missing and pushes only those; a blob is stored only after
//! its bytes hash to its name, and written atomically (temp file + rename), so
//! a torn upload never poisons the cache.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug)]
pub enum PutError {
    BadName,
    HashMismatch { actual: String },
    Io(io::Error),
}

impl From<io::Error> for PutError {
    fn from(err: io::Error) -> Self {
        PutError::Io(err)
    }
}

pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(Self { dir })
    }

    /// Where blob `sha` lives; `None` if `sha` is not 64 lowercase hex chars.
    pub fn path(&self, sha: &str) -> Option<PathBuf> {
        cloudbox::workspaces::manifest::is_sha256_hex(sha)
            .then(|| self.dir.join(&sha[..2]).join(sha))
    }

    pub fn contains(&self, sha: &str) -> bool {
        self.path(sha).is_some_and(|p| p.is_file())
    }

    /// The hashes of `wanted` this cache lacks, each once, in order.
    pub fn missing(&self, wanted: &[String]) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        wanted
            .iter()
            .filter(|sha| seen.insert(sha.as_str()) && !self.contains(sha))
            .cloned()
            .collect()
    }

    /// Stores a blob from chunks, verifying it hashes to `sha`. Returns
    /// whether it was new.
    pub async fn put_stream<S, E>(&self, sha: &str, mut chunks: S) -> Result<bool, PutError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let dest = self.path(sha).ok_or(PutError::BadName)?;
        if dest.is_file() {
            // Drain the body so the client sees a complete exchange.
            while chunks.next().await.is_some() {}
            return Ok(false);
        }
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{sha}.{}", std::process::id()));
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| io::Error::other(e.to_string()))?;
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        drop(file);
        let actual = hex::encode(hasher.finalize());
        if actual != sha {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(PutError::HashMismatch { actual });
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&tmp, &dest).await?;
        Ok(true)
    }

    /// Adds a file's bytes to the cache (used when scanning a tree the agent
    /// changed); returns its hash.
    pub fn insert_file(&self, src: &Path) -> io::Result<(String, u64)> {
        self.insert_reader(std::fs::File::open(src)?)
    }

    /// Adds the bytes of `reader` to the cache, hashing them while they are
    /// copied (a large file is never held in memory); returns their hash and
    /// size. The hash is of the bytes copied, so a file that changes while it
    /// is read still gives a blob that matches its name.
    pub fn insert_reader(&self, mut reader: impl io::Read) -> io::Result<(String, u64)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("scan.{}.{n}", std::process::id()));
        let copied = (|| {
            let mut out = std::fs::File::create(&tmp)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let read = reader.read(&mut buf)?;
                if read == 0 {
                    break;
                }
                hasher.update(&buf[..read]);
                io::Write::write_all(&mut out, &buf[..read])?;
                size += read as u64;
            }
            Ok::<_, io::Error>((hex::encode(hasher.finalize()), size))
        })();
        let (sha, size) = match copied {
            Ok(done) => done,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
        };
        let dest = self.dir.join(&sha[..2]).join(&sha);
        if dest.is_file() {
            std::fs::remove_file(&tmp)?;
        } else {
            std::fs::create_dir_all(self.dir.join(&sha[..2]))?;
            std::fs::rename(&tmp, &dest)?;
        }
        Ok((sha, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn stores_only_bytes_that_match_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().to_path_buf()).unwrap();
        let sha = hex::encode(Sha256::digest(b"hello world"));
        assert_eq!(
            cache.missing(&[sha.clone(), sha.clone()]),
            vec![sha.clone()]
        );
        assert!(cache
            .put_stream(&sha, chunks(&[b"hello ", b"world"]))
            .await
            .unwrap());
        assert!(!cache
            .put_stream(&sha, chunks(&[b"hello world"]))
            .await
            .unwrap());
        assert!(cache.missing(std::slice::from_ref(&sha)).is_empty());
        assert_eq!(
            std::fs::read(cache.path(&sha).unwrap()).unwrap(),
            b"hello world"
        );

        let other = hex::encode(Sha256::digest(b"other"));
        match cache.put_stream(&other, chunks(&[b"not other"])).await {
            Err(PutError::HashMismatch { .. }) => {}
            r => panic!("{r:?}"),
        }
        assert!(!cache.contains(&other));
        assert!(matches!(
            cache.put_stream("../etc", chunks(&[])).await,
            Err(PutError::BadName)
        ));
    }
}
