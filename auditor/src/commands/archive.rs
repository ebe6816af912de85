//! `deepseek-audit log archive --to DIR`: moves sealed segments out of the
//! live log (to removable media, say), oldest first, keeping the last
//! `retention_days` live. Nothing is removed before its copy is on disk and
//! verifies there: the archive gets every seal and archive record up to
//! the last segment it takes, so that it verifies alone with only the
//! verifier key (`log verify --archive DIR --archive-only --key KEY`). The
//! live log keeps every seal and, for each segment moved, a record of where
//! it went, so that `log verify` tells a moved segment from a removed one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::commands::log::{ReadError, Reading};
use crate::entry::Entry;
use crate::exit::{self, fail};
use crate::history::{self, HistoryError, Place, Sources};
use crate::segment::{self, CHECKPOINTS, Kind, MAX_SEGMENT_FILE, SEGMENTS};
use crate::service::ServiceConfig;
use crate::storage::{self, Readers, read_regular, write_durably};

/// Why nothing (more) was archived.
#[derive(Debug, thiserror::Error)]
enum ArchiveError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already holds a different {}: is it another log's archive?", dir.display(), name)]
    Different { dir: PathBuf, name: String },
    #[error("the copy in {} does not verify, so the live segments stay: {source}", dir.display())]
    Copy { dir: PathBuf, source: HistoryError },
    #[error(
        "{}: the live log, inside it, or a path with `..`: an archive goes somewhere else (removable media), named plainly",
        .0.display()
    )]
    IntoLive(PathBuf),
    #[error("{} line {line}: {reason}", path.display())]
    Entry {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl ArchiveError {
    fn code(&self) -> u8 {
        match self {
            Self::Read(e) => e.code(),
            Self::Io { .. } | Self::Different { .. } => exit::IO,
            Self::IntoLive(_) => exit::USAGE,
            Self::Copy { .. } | Self::Entry { .. } => exit::NOT_VERIFIED,
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.to_owned();
    move |source| ArchiveError::Io {
        action,
        path,
        source,
    }
}

/// `log archive`: see the module's documentation. `keep_days` overrides
/// `retention_days`.
pub(crate) fn run(config_path: &Path, to: &Path, keep_days: Option<u64>) -> ExitCode {
    match archive(config_path, to, keep_days) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.code(), &e),
    }
}

fn archive(config_path: &Path, to: &Path, keep_days: Option<u64>) -> Result<String, ArchiveError> {
    let config = ServiceConfig::load(config_path).map_err(ReadError::from)?;
    let live = resolved(&config.log_dir).map_err(io("resolve", &config.log_dir))?;
    let parent_dir = to
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    if parent_dir || resolved(to).map_err(io("resolve", to))?.starts_with(&live) {
        return Err(ArchiveError::IntoLive(to.to_owned()));
    }
    let reading = Reading {
        config: config_path,
        key: None,
        archives: &[],
        archive_only: false,
    };
    // Only a log that verifies is moved: one that does not is evidence, to
    // be kept where it is.
    let history = reading.history(None)?;
    let keep = Duration::from_secs(
        keep_days
            .unwrap_or(config.retention_days)
            .saturating_mul(86_400),
    );
    let cutoff = SystemTime::now().checked_sub(keep).unwrap_or(UNIX_EPOCH);
    let mut chosen = Vec::new();
    for segment in &history.segments {
        let Place::Present(path) = &segment.place else {
            continue;
        };
        if newest(path)? > cutoff {
            break;
        }
        chosen.push((segment, path));
    }
    let Some((last, _)) = chosen.last() else {
        return Ok(format!(
            "nothing to archive: no sealed segment is older than {} days",
            keep.as_secs() / 86_400
        ));
    };
    let live = &config.log_dir;
    // Every seal and archive record up to the last segment taken, then the
    // segments and their checkpoints.
    for segment in history
        .segments
        .iter()
        .take_while(|s| s.index <= last.index)
    {
        copy(live, to, segment.index, Kind::Seal)?;
        if matches!(segment.place, Place::Archived(_)) {
            copy(live, to, segment.index, Kind::Archived)?;
        }
    }
    let end = last.first + last.entries;
    let moved_checkpoints = checkpoints_up_to(live, end)?;
    for name in &moved_checkpoints {
        copy_file(&live.join(CHECKPOINTS), &to.join(CHECKPOINTS), name)?;
    }
    for (segment, _) in &chosen {
        copy(live, to, segment.index, Kind::Data)?;
    }
    let pinned = reading.setup()?.0;
    let archives = [to.to_owned()];
    history::verify(
        Sources {
            live: None,
            archives: &archives,
        },
        &pinned,
        None,
    )
    .map_err(|source| ArchiveError::Copy {
        dir: to.to_owned(),
        source,
    })?;
    // The copy is durable and verifies: record where each segment went,
    // then remove it from the live log.
    let by = nix::unistd::Uid::current();
    let at = crate::compliance::format::rfc3339(SystemTime::now());
    for (segment, path) in &chosen {
        let record = format!(
            "archived to {} at {at} by uid {by}",
            std::fs::canonicalize(to)
                .unwrap_or_else(|_| to.to_owned())
                .display()
        );
        let name = file_name(segment.index, Kind::Archived);
        write_durably(
            &live.join(SEGMENTS),
            &name,
            format!("{record}\n").as_bytes(),
            // The service reads it when it verifies the log.
            Readers::Directory,
        )
        .map_err(io("write", &live.join(SEGMENTS).join(&name)))?;
        std::fs::remove_file(path).map_err(io("remove", path))?;
    }
    for name in &moved_checkpoints {
        let path = live.join(CHECKPOINTS).join(name);
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
    }
    for dir in [live.join(SEGMENTS), live.join(CHECKPOINTS)] {
        match std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("sync", &dir)(e)),
            _ => {}
        }
    }
    let (first, _) = chosen.first().expect("one at least");
    let present = history
        .segments
        .iter()
        .filter(|s| matches!(s.place, Place::Present(_)))
        .count();
    Ok(format!(
        "archived segments {}..={} (entries {}..{end}) and {} checkpoints to {}; \
         {} sealed segments stay live (retention {} days)",
        first.index,
        last.index,
        first.first,
        moved_checkpoints.len(),
        to.display(),
        present - chosen.len(),
        keep.as_secs() / 86_400
    ))
}

/// `path` with every link resolved, for a path that may not exist yet:
/// its nearest existing ancestor resolved, the rest appended.
fn resolved(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(real) => return Ok(rest.iter().rev().fold(real, |p, part| p.join(part))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                rest.push(existing.file_name().unwrap_or_default().to_owned());
                existing = existing.parent().ok_or(e)?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn file_name(index: u64, kind: Kind) -> String {
    segment::path(Path::new(""), index, kind)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned()
}

/// Copies one segment file from the live log to the archive.
fn copy(live: &Path, to: &Path, index: u64, kind: Kind) -> Result<(), ArchiveError> {
    copy_file(
        &live.join(SEGMENTS),
        &to.join(SEGMENTS),
        &file_name(index, kind),
    )
}

/// Copies `from/name` to `to/name` durably, unless the same bytes are
/// there already (an interrupted archive run again); other bytes there
/// are refused.
fn copy_file(from: &Path, to: &Path, name: &str) -> Result<(), ArchiveError> {
    let source = from.join(name);
    let bytes = read_regular(&source, MAX_SEGMENT_FILE).map_err(io("read", &source))?;
    let target = to.join(name);
    match read_regular(&target, MAX_SEGMENT_FILE) {
        Ok(existing) if existing == bytes => return Ok(()),
        Ok(_) => {
            return Err(ArchiveError::Different {
                dir: to.to_owned(),
                name: name.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &target)(e)),
    }
    // The medium may be open to other local users: the copy is not.
    write_durably(to, name, &bytes, Readers::Owner).map_err(io("write", &target))
}

/// The names of the live checkpoints of the first `end` entries.
fn checkpoints_up_to(live: &Path, end: u64) -> Result<Vec<String>, ArchiveError> {
    let stored =
        storage::read_checkpoints(live).map_err(|e| ReadError::from(HistoryError::from(e)))?;
    Ok(stored
        .into_iter()
        .filter(|c| history::checkpoint_size(c) <= end)
        .map(|c| c.name)
        .collect())
}

/// When the newest entry of a segment file was written.
fn newest(path: &Path) -> Result<SystemTime, ArchiveError> {
    let bytes = read_regular(path, MAX_SEGMENT_FILE).map_err(io("read", path))?;
    let count = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let line = bytes
        .split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    let entry = Entry::decode(line).map_err(|e| ArchiveError::Entry {
        path: path.to_owned(),
        line: count,
        reason: e.to_string(),
    })?;
    Ok(UNIX_EPOCH + Duration::from_nanos(u64::try_from(entry.time_ns).unwrap_or(u64::MAX)))
}
