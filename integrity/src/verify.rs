//! Verifying files against the database just before they are used: what
//! `deepseekd` does to every model directory before loading the model.
//!
//! A directory is verified as a unit, with everything beneath it: every file
//! must be in the database with the same size and digest, every file the
//! database lists there must exist, and nothing but regular files and
//! directories may be there (a symlink could point at unverified content).
//! A missing, extra or changed file fails the whole directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::digest::{self, CHUNK_SIZE, HashError, hex};
use crate::entry::{Entry, Kind};

/// Why a directory does not match the database.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{dir} is not covered by the integrity database")]
    NotCovered { dir: PathBuf },
    #[error("{path} is in the integrity database but missing")]
    Missing { path: PathBuf },
    #[error("{path} is not in the integrity database (an extra file)")]
    Extra { path: PathBuf },
    #[error("{path}: the integrity database records no digest for it")]
    NoDigest { path: PathBuf },
    #[error("{path}: {attribute} is {actual}, the integrity database expects {expected}")]
    Mismatch {
        path: PathBuf,
        attribute: &'static str,
        expected: String,
        actual: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// What was verified, for the startup log.
#[derive(Debug, Default)]
pub struct Verified {
    pub files: usize,
    pub bytes: u64,
    /// The content of each file asked for with `keep`, exactly the bytes
    /// that were hashed.
    pub kept: BTreeMap<PathBuf, Vec<u8>>,
    /// The digests of those bytes, as computed from them.
    pub kept_digests: BTreeMap<PathBuf, KeptDigests>,
}

/// The digests of a kept file's bytes: what was compared with the database
/// is what the caller uses, and it can record these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptDigests {
    pub sha256: [u8; 32],
    pub chunked: [u8; 32],
}

/// SHA-256 and chunked digests of bytes in memory: the plain digest on one
/// thread while the others take the chunks.
fn digests_of(bytes: &[u8]) -> ([u8; 32], [u8; 32]) {
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_SIZE as usize).collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let digests = std::sync::Mutex::new(vec![[0u8; 32]; chunks.len()]);
    let sha256 = std::thread::scope(|scope| {
        let whole = scope.spawn(|| -> [u8; 32] { Sha256::digest(bytes).into() });
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(chunk) = chunks.get(index) else {
                        return;
                    };
                    let digest: [u8; 32] = Sha256::digest(chunk).into();
                    digests
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)[index] = digest;
                }
            });
        }
        whole.join().expect("hashing thread")
    });
    let digests = digests
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (
        sha256,
        digest::combine_chunks(CHUNK_SIZE, bytes.len() as u64, &digests),
    )
}

/// The chunked digest of a file, its chunks hashed in parallel.
fn chunked_file(path: &Path, size: u64) -> Result<[u8; 32], HashError> {
    let stamp = digest::file_stamp(path)?;
    let count = digest::chunk_count(size, CHUNK_SIZE);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1) as usize);
    let next = std::sync::atomic::AtomicU64::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| -> Result<(), HashError> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<(), HashError> {
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if index >= count {
                            return Ok(());
                        }
                        let d = digest::chunk_digest(path, index * CHUNK_SIZE, CHUNK_SIZE, stamp)?;
                        results
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(index, d);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("hashing thread")?;
        }
        Ok(())
    })?;
    let digests: Vec<[u8; 32]> = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_values()
        .collect();
    Ok(digest::combine_chunks(CHUNK_SIZE, size, &digests))
}

fn compare(
    path: &Path,
    attribute: &'static str,
    expected: &[u8; 32],
    actual: &[u8; 32],
) -> Result<(), VerifyError> {
    if expected == actual {
        Ok(())
    } else {
        Err(VerifyError::Mismatch {
            path: path.to_owned(),
            attribute,
            expected: hex(expected),
            actual: hex(actual),
        })
    }
}

/// Decides, given a file and the bytes kept so far by path, whether to keep
/// that file too.
pub type AlsoKeep<'a> = dyn Fn(&Path, &BTreeMap<PathBuf, Vec<u8>>) -> bool + 'a;

/// Verifies every file in `dir` against `entries`. The files in `keep` are
/// read once into memory, and those very bytes are hashed and returned, so
/// what is used is what was verified. So is every other file for which
/// `also_keep` holds, asked once the `keep` files are read (so that a model
/// graph can name the external data files it needs kept).
pub fn verify_directory_with(
    entries: &[Entry],
    dir: &Path,
    keep: &[&Path],
    also_keep: &AlsoKeep<'_>,
) -> Result<Verified, VerifyError> {
    let recorded: BTreeMap<&Path, &Entry> = entries
        .iter()
        .filter(|e| e.path.starts_with(dir) && e.path != dir && e.kind != Kind::Dir)
        .map(|e| (e.path.as_path(), e))
        .collect();
    if recorded.is_empty() {
        return Err(VerifyError::NotCovered {
            dir: dir.to_owned(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| VerifyError::Io {
            path: path.clone(),
            source,
        }
    };
    let mut present = Vec::new();
    for item in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let item = item.map_err(|e| VerifyError::Io {
            path: e
                .path()
                .map(Path::to_owned)
                .unwrap_or_else(|| dir.to_owned()),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
        })?;
        let path = item.path().to_owned();
        let metadata = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if metadata.is_dir() {
            continue;
        }
        if !recorded.contains_key(path.as_path()) {
            return Err(VerifyError::Extra { path });
        }
        if !metadata.is_file() {
            return Err(VerifyError::Mismatch {
                path,
                attribute: "type",
                expected: "a regular file (model directories hold nothing else)".to_owned(),
                actual: Kind::of(metadata.file_type()).name().to_owned(),
            });
        }
        present.push((path, metadata));
    }
    if let Some(missing) = recorded
        .keys()
        .find(|p| !present.iter().any(|(q, _)| q == *p))
    {
        return Err(VerifyError::Missing {
            path: missing.to_path_buf(),
        });
    }
    // The `keep` files first, so that `also_keep` sees them.
    present.sort_by_key(|(path, _)| !keep.contains(&path.as_path()));
    let mut verified = Verified::default();
    for (path, metadata) in present {
        let entry = recorded[path.as_path()];
        let kind = Kind::of(metadata.file_type());
        if kind != entry.kind {
            return Err(VerifyError::Mismatch {
                path,
                attribute: "type",
                expected: entry.kind.name().to_owned(),
                actual: kind.name().to_owned(),
            });
        }
        if kind != Kind::File {
            continue;
        }
        if let Some(size) = entry.attrs.size
            && size != metadata.size()
        {
            return Err(VerifyError::Mismatch {
                path,
                attribute: "size",
                expected: size.to_string(),
                actual: metadata.size().to_string(),
            });
        }
        if entry.attrs.sha256.is_none() && entry.attrs.chunked.is_none() {
            return Err(VerifyError::NoDigest { path });
        }
        if keep.contains(&path.as_path()) || also_keep(&path, &verified.kept) {
            let mut file = File::open(&path).map_err(io(&path))?;
            let mut bytes = Vec::with_capacity(usize::try_from(metadata.size()).unwrap_or(0));
            file.read_to_end(&mut bytes).map_err(io(&path))?;
            let (sha256, chunked) = digests_of(&bytes);
            if let Some(expected) = &entry.attrs.sha256 {
                compare(&path, "sha256", expected, &sha256)?;
            }
            if let Some(expected) = &entry.attrs.chunked {
                compare(&path, "chunked", expected, &chunked)?;
            }
            verified.bytes += bytes.len() as u64;
            verified
                .kept_digests
                .insert(path.clone(), KeptDigests { sha256, chunked });
            verified.kept.insert(path.clone(), bytes);
        } else if let Some(expected) = &entry.attrs.sha256 {
            compare(&path, "sha256", expected, &digest::sha256_file(&path)?)?;
            verified.bytes += metadata.size();
        } else if let Some(expected) = &entry.attrs.chunked {
            compare(
                &path,
                "chunked",
                expected,
                &chunked_file(&path, metadata.size())?,
            )?;
            verified.bytes += metadata.size();
        }
        verified.files += 1;
    }
    Ok(verified)
}
