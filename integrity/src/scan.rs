//! Reading the system: walking the rules' paths, recording attributes, and
//! hashing the content in parallel, largest work first.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{Attr, CompiledRule, Config, DigestChoice};
use crate::digest::{self, HashError};
use crate::entry::{Attributes, Entry, Kind};

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {path}: {source}")]
    Walk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("interrupted")]
    Interrupted,
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hashing threads.
    pub jobs: usize,
    /// Show a progress bar (files and bytes) on stderr.
    pub progress: bool,
}

/// One unit of hashing work.
#[derive(Debug, Clone, Copy)]
enum Job {
    Sha256 { entry: usize },
    Chunk { entry: usize, index: u64 },
    Fsverity { entry: usize },
}

/// Results gathered from the workers.
#[derive(Debug, Default)]
struct Digests {
    sha256: BTreeMap<usize, [u8; 32]>,
    chunks: BTreeMap<(usize, u64), [u8; 32]>,
    fsverity: BTreeMap<usize, [u8; 32]>,
}

fn nanos(seconds: i64, nanos: i64) -> i128 {
    i128::from(seconds) * 1_000_000_000 + i128::from(nanos)
}

/// Whether the kernel reports fs-verity enabled on the file (`statx`'s
/// `STATX_ATTR_VERITY`); false where the filesystem cannot tell.
fn verity_enabled(path: &Path) -> std::io::Result<bool> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};
    let stat = rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    Ok(stat.stx_attributes_mask.contains(StatxAttributes::VERITY)
        && stat.stx_attributes.contains(StatxAttributes::VERITY))
}

/// The attributes `rule` asks for, from `lstat` (digests come later).
fn attributes(
    path: &Path,
    metadata: &std::fs::Metadata,
    rule: &CompiledRule<'_>,
) -> Result<(Kind, Attributes), ScanError> {
    let kind = Kind::of(metadata.file_type());
    let rule = rule.rule;
    let dir_noise = kind == Kind::Dir && !rule.dir_times;
    let want = |attr| rule.records(attr);
    let mut attrs = Attributes::default();
    if want(Attr::Perm) {
        attrs.mode = Some(metadata.mode() & 0o7777);
    }
    if want(Attr::Uid) {
        attrs.uid = Some(metadata.uid());
    }
    if want(Attr::Gid) {
        attrs.gid = Some(metadata.gid());
    }
    if want(Attr::Size) && matches!(kind, Kind::File | Kind::Symlink) {
        attrs.size = Some(metadata.size());
    }
    if want(Attr::Mtime) && !dir_noise {
        attrs.mtime = Some(nanos(metadata.mtime(), metadata.mtime_nsec()));
    }
    if want(Attr::Ctime) && !dir_noise {
        attrs.ctime = Some(nanos(metadata.ctime(), metadata.ctime_nsec()));
    }
    if want(Attr::Inode) {
        attrs.inode = Some(metadata.ino());
    }
    if want(Attr::Nlink) && !dir_noise {
        attrs.nlink = Some(metadata.nlink());
    }
    if want(Attr::Target) && kind == Kind::Symlink {
        let target = std::fs::read_link(path).map_err(|source| ScanError::Walk {
            path: path.to_owned(),
            source,
        })?;
        attrs.target = Some(target);
    }
    if want(Attr::Xattrs) && kind != Kind::Symlink {
        let mut xattrs = BTreeMap::new();
        let names = xattr::list(path).map_err(|source| ScanError::Walk {
            path: path.to_owned(),
            source,
        })?;
        for name in names {
            let value = xattr::get(path, &name).map_err(|source| ScanError::Walk {
                path: path.to_owned(),
                source,
            })?;
            xattrs.insert(
                name.to_string_lossy().into_owned(),
                value.unwrap_or_default(),
            );
        }
        attrs.xattrs = Some(xattrs);
    }
    if want(Attr::Fsverity) && kind == Kind::File {
        attrs.verity = Some(verity_enabled(path).map_err(|source| ScanError::Walk {
            path: path.to_owned(),
            source,
        })?);
    }
    attrs.growing = want(Attr::Growing) && kind == Kind::File;
    Ok((kind, attrs))
}

/// Walks every rule. Deeper rules come first and claim their paths, so a
/// path is recorded once, with the most specific rule's attributes.
/// Returns each entry with the index of its rule and its size.
fn walk(config: &Config, interrupted: &AtomicBool) -> Result<Vec<(Entry, usize, u64)>, ScanError> {
    let rules = config.compiled_rules();
    let mut claimed: HashSet<PathBuf> = HashSet::new();
    let mut entries = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        if std::fs::symlink_metadata(&rule.rule.path).is_err() {
            // Absent: every entry recorded under it is reported as removed.
            continue;
        }
        let depth = if rule.rule.recursive { usize::MAX } else { 1 };
        let walker = walkdir::WalkDir::new(&rule.rule.path)
            .follow_links(false)
            .max_depth(depth)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| !rule.exclude.is_match(e.path()));
        for item in walker {
            if interrupted.load(Ordering::Relaxed) {
                return Err(ScanError::Interrupted);
            }
            let item = item.map_err(|e| ScanError::Walk {
                path: e.path().map(Path::to_owned).unwrap_or_default(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
            })?;
            let path = item.path().to_owned();
            if !claimed.insert(path.clone()) {
                continue;
            }
            let metadata = item.metadata().map_err(|e| ScanError::Walk {
                path: path.clone(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("no metadata")),
            })?;
            let (kind, attrs) = attributes(&path, &metadata, rule)?;
            entries.push((Entry { path, kind, attrs }, index, metadata.size()));
        }
    }
    entries.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    Ok(entries)
}

/// Reads the system as `config` describes it: every entry, with digests.
pub fn scan(
    config: &Config,
    options: &Options,
    interrupted: &AtomicBool,
) -> Result<Vec<Entry>, ScanError> {
    let walked = walk(config, interrupted)?;
    let rules = config.compiled_rules();
    let mut entries: Vec<Entry> = Vec::with_capacity(walked.len());
    let mut jobs: Vec<(u64, Job)> = Vec::new();
    let mut chunked: Vec<(usize, u64)> = Vec::new();
    for (entry, rule_index, size) in walked {
        let rule = rules[rule_index].rule;
        let index = entries.len();
        if entry.kind == Kind::File {
            if rule.records(Attr::Digest) {
                let choice = match rule.digest {
                    DigestChoice::Auto if size >= config.chunked_threshold => DigestChoice::Chunked,
                    DigestChoice::Auto => DigestChoice::Sha256,
                    other => other,
                };
                if matches!(choice, DigestChoice::Sha256 | DigestChoice::Both) {
                    jobs.push((size, Job::Sha256 { entry: index }));
                }
                if matches!(choice, DigestChoice::Chunked | DigestChoice::Both) {
                    chunked.push((index, size));
                    for chunk in 0..digest::chunk_count(size, digest::CHUNK_SIZE) {
                        let len = digest::CHUNK_SIZE.min(size - chunk * digest::CHUNK_SIZE);
                        jobs.push((
                            len,
                            Job::Chunk {
                                entry: index,
                                index: chunk,
                            },
                        ));
                    }
                }
            }
            if rule.records(Attr::Fsverity) {
                jobs.push((size, Job::Fsverity { entry: index }));
            }
        }
        entries.push(entry);
    }
    // Largest first: a huge file started last would leave the other threads
    // idle while one finishes it.
    jobs.sort_by_key(|&(size, _)| std::cmp::Reverse(size));
    let stamps: BTreeMap<usize, (u64, i64, i64)> = chunked
        .iter()
        .map(|&(index, _)| Ok((index, digest::file_stamp(&entries[index].path)?)))
        .collect::<Result<_, HashError>>()?;
    let total_bytes: u64 = jobs.iter().map(|(size, _)| size).sum();
    let bar = if options.progress {
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{} files", entries.len()));
        bar
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Digests::default());
    let failure: Mutex<Option<ScanError>> = Mutex::new(None);
    let chunk_size = digest::CHUNK_SIZE;
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    if interrupted.load(Ordering::Relaxed)
                        || failure
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .is_some()
                    {
                        return;
                    }
                    let Some(&(size, job)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let outcome = match job {
                        Job::Sha256 { entry } => {
                            digest::sha256_file(&entries[entry].path).map(|d| {
                                results
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .sha256
                                    .insert(entry, d);
                            })
                        }
                        Job::Chunk { entry, index } => digest::chunk_digest(
                            &entries[entry].path,
                            index * chunk_size,
                            chunk_size,
                            stamps[&entry],
                        )
                        .map(|d| {
                            results
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .chunks
                                .insert((entry, index), d);
                        }),
                        Job::Fsverity { entry } => {
                            digest::fsverity_file(&entries[entry].path).map(|d| {
                                results
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .fsverity
                                    .insert(entry, d);
                            })
                        }
                    };
                    match outcome {
                        Ok(()) => bar.inc(size),
                        Err(e) => {
                            failure
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(ScanError::Hash(e));
                        }
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(e);
    }
    if interrupted.load(Ordering::Relaxed) {
        return Err(ScanError::Interrupted);
    }
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    for (index, digest) in results.sha256 {
        entries[index].attrs.sha256 = Some(digest);
    }
    for (index, digest) in results.fsverity {
        entries[index].attrs.fsverity = Some(digest);
    }
    for (index, size) in chunked {
        let digests: Vec<[u8; 32]> = results
            .chunks
            .range((index, 0)..(index + 1, 0))
            .map(|(_, d)| *d)
            .collect();
        entries[index].attrs.chunked = Some(digest::combine_chunks(chunk_size, size, &digests));
    }
    Ok(entries)
}
