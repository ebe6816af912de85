//! Content digests: plain SHA-256 (what `sha256sum` and model publishers
//! print), the chunked digest that hashes one huge file on every core, and
//! the fs-verity digest.
//!
//! Files are read with a 64 KiB buffer and `fstat`ed before and after, as
//! AIDE does. `mmap` would be about 10% faster, but a file truncated while
//! mapped kills the reader with SIGBUS, which anyone who can write the file
//! could trigger.

mod fsverity;
mod hex;

pub use hex::{hex, unhex, unhex32};

/// The SHA-256 of `bytes` in [`hex`], as records and reports carry it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

const BUFFER: usize = 64 * 1024;

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} changed while it was being hashed (size or mtime moved)")]
    Changed { path: String },
}

/// Size and mtime, to notice a file changing under the reader.
fn stamp(file: &File) -> std::io::Result<(u64, i64, i64)> {
    let m = file.metadata()?;
    Ok((m.size(), m.mtime(), m.mtime_nsec()))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> HashError + '_ {
    move |source| HashError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads `len` bytes at `offset` (or to the end) into `hasher`.
fn feed(
    file: &File,
    mut offset: u64,
    len: u64,
    hasher: &mut impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; BUFFER];
    let end = offset.saturating_add(len);
    let mut total = 0;
    while offset < end {
        let want = usize::try_from((end - offset).min(BUFFER as u64)).unwrap_or(BUFFER);
        let n = file.read_at(&mut buffer[..want], offset)?;
        if n == 0 {
            break;
        }
        hasher(&buffer[..n]);
        offset += n as u64;
        total += n as u64;
    }
    Ok(total)
}

/// Plain SHA-256 of a whole file.
pub fn sha256_file(path: &Path) -> Result<[u8; 32], HashError> {
    let file = File::open(path).map_err(io(path))?;
    let before = stamp(&file).map_err(io(path))?;
    let mut hasher = Sha256::new();
    feed(&file, 0, u64::MAX, &mut |b| hasher.update(b)).map_err(io(path))?;
    if stamp(&file).map_err(io(path))? != before {
        return Err(HashError::Changed {
            path: path.display().to_string(),
        });
    }
    Ok(hasher.finalize().into())
}

/// SHA-256 of one chunk of a file (a unit of parallel work).
pub(crate) fn chunk_digest(
    path: &Path,
    offset: u64,
    len: u64,
    expected: (u64, i64, i64),
) -> Result<[u8; 32], HashError> {
    let file = File::open(path).map_err(io(path))?;
    if stamp(&file).map_err(io(path))? != expected {
        return Err(HashError::Changed {
            path: path.display().to_string(),
        });
    }
    let mut hasher = Sha256::new();
    feed(&file, offset, len, &mut |b| hasher.update(b)).map_err(io(path))?;
    if stamp(&file).map_err(io(path))? != expected {
        return Err(HashError::Changed {
            path: path.display().to_string(),
        });
    }
    Ok(hasher.finalize().into())
}

/// The size and mtime of a file, as `chunk_digest` checks them.
pub(crate) fn file_stamp(path: &Path) -> Result<(u64, i64, i64), HashError> {
    let file = File::open(path).map_err(io(path))?;
    stamp(&file).map_err(io(path))
}

/// The chunk size of the chunked digest, fixed by the format so that the
/// digest of a file is the same on every machine (and could be published).
pub(crate) const CHUNK_SIZE: u64 = 64 << 20;

/// The chunked digest: SHA-256 of a domain tag, the chunk size and the file
/// size (little-endian u64s), then the SHA-256 of each `chunk_size` chunk in
/// order. A file of size 0 has no chunks. The chunks can be hashed on any
/// number of threads; this combines their digests.
pub(crate) fn combine_chunks(
    chunk_size: u64,
    file_size: u64,
    chunk_digests: &[[u8; 32]],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"deepseek-integrity chunked-sha256 v1\n");
    hasher.update(chunk_size.to_le_bytes());
    hasher.update(file_size.to_le_bytes());
    for digest in chunk_digests {
        hasher.update(digest);
    }
    hasher.finalize().into()
}

/// How many chunks a file of `size` bytes has.
pub(crate) fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

/// The fs-verity digest of a whole file (4 KiB blocks).
pub(crate) fn fsverity_file(path: &Path) -> Result<[u8; 32], HashError> {
    let file = File::open(path).map_err(io(path))?;
    let before = stamp(&file).map_err(io(path))?;
    let digest = fsverity::fsverity_sha256(std::io::BufReader::with_capacity(BUFFER, &file), 4096)
        .map_err(io(path))?;
    if stamp(&file).map_err(io(path))? != before {
        return Err(HashError::Changed {
            path: path.display().to_string(),
        });
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_sha256sum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        // sha256sum of "abc" (FIPS 180-2 test vector).
        assert_eq!(
            hex(&sha256_file(&path).expect("hash")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn chunked_digest_depends_on_every_chunk_and_the_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let chunk = 1 << 20;
        let stamp = file_stamp(&path).expect("stamp");
        let digests: Vec<[u8; 32]> = (0..chunk_count(data.len() as u64, chunk))
            .map(|i| chunk_digest(&path, i * chunk, chunk, stamp).expect("chunk"))
            .collect();
        assert_eq!(digests.len(), 4);
        let expected: Vec<[u8; 32]> = data
            .chunks(chunk as usize)
            .map(|c| Sha256::digest(c).into())
            .collect();
        assert_eq!(digests, expected);
        let a = combine_chunks(chunk, data.len() as u64, &digests);
        assert_ne!(a, combine_chunks(chunk * 2, data.len() as u64, &digests));
        assert_ne!(a, combine_chunks(chunk, data.len() as u64 + 1, &digests));
        assert_ne!(a, combine_chunks(chunk, data.len() as u64, &digests[..3]));
    }
}
