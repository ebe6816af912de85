//! `bundle verify`: a bundle checked as it streams, against pinned release
//! keys, and unpacked only when asked and only once every byte matched.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, CWD, Mode, OFlags, RenameFlags, fstat, fsync, mkdirat, openat, renameat_with, statat,
};

use sha2::{Digest, Sha256};

use super::error::{BundleError, io};
use super::hashes::Hashes;
use super::limits::{MAX_KEYS, MAX_MANIFEST, MAX_SIGNATURE};
use super::manifest::{FILES, FORMAT, MANIFEST, Manifest, SIGNATURE, signed_text};
use super::ustar::Reader;
use crate::digest::hex;
use crate::note::NoteVerifier;

/// Bytes of one release key file.
const MAX_KEY_FILE: u64 = 4096;

/// The release keys a bundle must be signed by, each with its name.
#[derive(Debug, Default)]
pub struct ReleaseKeys {
    keys: Vec<NoteVerifier>,
}

impl ReleaseKeys {
    /// Keys from files holding one C2SP verifier key each.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, BundleError> {
        let mut keys = Self::default();
        for path in paths {
            keys.add(path)?;
        }
        Ok(keys)
    }

    /// Every `*.pub` file in `dir` (at most [`MAX_KEYS`]).
    pub fn from_dir(dir: &Path) -> Result<Self, BundleError> {
        let mut paths = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io("read the release keys in", dir))? {
            let path = item.map_err(io("read the release keys in", dir))?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                paths.push(path);
            }
            if paths.len() > MAX_KEYS {
                break;
            }
        }
        if paths.len() > MAX_KEYS {
            return Err(BundleError::Key(format!(
                "{}: more than {MAX_KEYS} keys",
                dir.display()
            )));
        }
        paths.sort();
        Self::from_files(&paths)
    }

    fn add(&mut self, path: &Path) -> Result<(), BundleError> {
        use std::os::unix::fs::OpenOptionsExt;
        // Not through a FIFO or device, which could hang or never end.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(io("read the release key", path))?;
        if !file
            .metadata()
            .map_err(io("read the release key", path))?
            .is_file()
        {
            return Err(BundleError::Key(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let mut text = String::new();
        file.take(MAX_KEY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io("read the release key", path))?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(BundleError::Key(format!(
                "{}: over {MAX_KEY_FILE} bytes",
                path.display()
            )));
        }
        let key = NoteVerifier::parse(text.trim())
            .map_err(|e| BundleError::Key(format!("{}: {e}", path.display())))?;
        self.keys.push(key);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The names of the keys, for messages.
    fn names(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(NoteVerifier::name).collect();
        names.join(", ")
    }
}

/// A bundle that passed, with the signed bytes themselves (the model store
/// keeps them as the proof of origin).
#[derive(Debug)]
pub struct Verified {
    pub signed: Signed,
    /// `manifest.json` as the bundle carried it.
    pub manifest_bytes: Vec<u8>,
    /// `manifest.sig`, the signed note.
    pub note: String,
}

/// Reads the next member, which must be `expected`, whole: at most
/// `limit` bytes.
fn small<R: Read>(
    reader: &mut Reader<R>,
    expected: &str,
    limit: u64,
) -> Result<Vec<u8>, BundleError> {
    let member = reader
        .next()?
        .ok_or_else(|| BundleError::Archive(format!("it ends before {expected}")))?;
    if member.name != expected {
        return Err(BundleError::Archive(format!(
            "member {:?} where {expected} must be",
            member.name
        )));
    }
    if member.size > limit {
        return Err(BundleError::Archive(format!(
            "{expected} is {} bytes, over {limit}",
            member.size
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(member.size).unwrap_or(0));
    reader.content(expected, |b| {
        bytes.extend_from_slice(b);
        Ok(())
    })?;
    Ok(bytes)
}

/// Which pinned key signed `note` for the manifest of digest `digest`.
fn signer<'n>(
    keys: &ReleaseKeys,
    note: &'n str,
    digest: &str,
) -> Result<(String, &'n str), BundleError> {
    for key in &keys.keys {
        if let Ok(text) = key.open(note) {
            // Exactly three lines; the second is checked against the
            // manifest once it is parsed.
            let lines: Vec<&str> = text.split_terminator('\n').collect();
            let [format, _, sum] = lines[..] else {
                return Err(BundleError::Signature(format!(
                    "{} signed another manifest, not this one",
                    key.name()
                )));
            };
            if format != FORMAT || sum != format!("manifest sha256 {digest}") {
                return Err(BundleError::Signature(format!(
                    "{} signed another manifest, not this one",
                    key.name()
                )));
            }
            return Ok((key.to_string(), text));
        }
    }
    // Name the signers the note claims, to say which key would be needed.
    // Quoted: an unsigned note's names could hold terminal escapes.
    let claimed: Vec<String> = note
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .filter_map(|l| l.split_whitespace().next())
        .take(8)
        .map(|name| format!("{name:?}"))
        .collect();
    Err(BundleError::Signature(format!(
        "no valid signature by a pinned release key (pinned: {}; the note names: {})",
        if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.names()
        },
        if claimed.is_empty() {
            "no signer".to_owned()
        } else {
            claimed.join(", ")
        }
    )))
}

/// A manifest whose signature checked out: what it is, its digest and the
/// release key that signed it.
#[derive(Debug)]
pub struct Signed {
    pub manifest: Manifest,
    /// SHA-256 of the manifest's bytes, hex.
    pub digest: String,
    /// The pinned release key that signed it.
    pub signer: String,
}

/// Checks that `note` is a pinned release key's signature over exactly
/// `manifest_bytes`, then parses them: a bundle's first step, and the
/// model store's check of a version it keeps.
pub fn signed(
    keys: &ReleaseKeys,
    manifest_bytes: &[u8],
    note: &str,
) -> Result<Signed, BundleError> {
    let digest = hex(&Sha256::digest(manifest_bytes));
    // The signature first: nothing unsigned is parsed beyond its hash.
    let (signer, text) = signer(keys, note, &digest)?;
    let manifest = Manifest::parse(manifest_bytes)?;
    let expected = signed_text(&manifest, &digest);
    if text != expected {
        return Err(BundleError::Signature(format!(
            "the signature is for {text:?}, the manifest says {expected:?}"
        )));
    }
    Ok(Signed {
        manifest,
        digest,
        signer,
    })
}

/// Verifies the bundle `reader` streams against `keys`; with `extract`,
/// also unpacks it there (a directory that must not exist yet), which
/// appears only once every file matched.
pub fn verify(
    reader: impl Read,
    keys: &ReleaseKeys,
    extract: Option<&Path>,
) -> Result<Verified, BundleError> {
    let mut reader = Reader::new(reader);
    let manifest_bytes = small(&mut reader, MANIFEST, MAX_MANIFEST)?;
    let note = small(&mut reader, SIGNATURE, MAX_SIGNATURE)?;
    let note = String::from_utf8(note)
        .map_err(|_| BundleError::Signature(format!("{SIGNATURE} is not UTF-8")))?;
    let signed = signed(keys, &manifest_bytes, &note)?;
    let manifest = &signed.manifest;
    let mut target = extract.map(Target::new).transpose()?;
    let mut at = 0;
    while let Some(member) = reader.next()? {
        let name = member.name;
        let Some(file) = manifest.files.get(at) else {
            return Err(BundleError::Path(
                name,
                format!("an extra member after the {at} files the manifest lists"),
            ));
        };
        let listed = format!("{FILES}{}", file.path);
        if name != listed {
            let why = if manifest
                .files
                .iter()
                .any(|f| format!("{FILES}{}", f.path) == name)
            {
                format!("out of order: the manifest lists {listed:?} here")
            } else {
                "not in the manifest".to_owned()
            };
            return Err(BundleError::Path(name, why));
        }
        if member.size != file.size {
            return Err(BundleError::Mismatch {
                path: file.path.clone(),
                why: format!(
                    "{} bytes in the archive, {} in the manifest",
                    member.size, file.size
                ),
            });
        }
        let mut out = target.as_mut().map(|t| t.file(&file.path)).transpose()?;
        let mut hashes = Hashes::new();
        reader.content(&name, |bytes| {
            hashes.update(bytes);
            match out.as_mut() {
                Some((path, out)) => out.write_all(bytes).map_err(io("write", path)),
                None => Ok(()),
            }
        })?;
        let (_, sha256, chunked) = hashes.finish();
        let mismatch = if sha256 != file.sha256 {
            Some(format!(
                "SHA-256 {sha256}, the manifest says {}",
                file.sha256
            ))
        } else if chunked != file.chunked_sha256 {
            Some(format!(
                "chunked SHA-256 {}, the manifest says {}",
                chunked.unwrap_or_default(),
                file.chunked_sha256.as_deref().unwrap_or_default()
            ))
        } else {
            None
        };
        if let Some(mismatch) = mismatch {
            return Err(BundleError::Mismatch {
                path: file.path.clone(),
                why: format!("its content does not match the manifest ({mismatch})"),
            });
        }
        if let Some((path, out)) = out {
            out.sync_all().map_err(io("sync", &path))?;
        }
        at += 1;
    }
    if let Some(missing) = manifest.files.get(at) {
        return Err(BundleError::Mismatch {
            path: missing.path.clone(),
            why: format!(
                "missing: the archive ends after {at} of the {} files the manifest lists",
                manifest.files.len()
            ),
        });
    }
    reader.finish()?;
    if let Some(target) = target {
        target.finish()?;
    }
    Ok(Verified {
        signed,
        manifest_bytes,
        note,
    })
}

/// An extraction in progress: a hidden sibling directory, renamed into
/// place once everything matched, removed if anything did not (not on a
/// kill: a later run then names the leftover). Every file and directory is
/// made relative to handles opened once, never through a path another
/// user could swap for a symbolic link meanwhile.
struct Target {
    dir: PathBuf,
    /// The directory that holds DIR and its partial sibling.
    parent: OwnedFd,
    parent_path: PathBuf,
    name: String,
    partial_name: String,
    partial: OwnedFd,
    done: bool,
}

fn errno(what: String) -> impl FnOnce(rustix::io::Errno) -> BundleError {
    move |e| BundleError::Io(what, e.into())
}

impl Target {
    fn new(dir: &Path) -> Result<Self, BundleError> {
        let cannot = || format!("cannot extract to {}", dir.display());
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| *n != "." && *n != "..")
            .ok_or_else(|| BundleError::Io(cannot(), std::io::Error::other("no directory name")))?
            .to_owned();
        let parent_path = match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let parent = openat(
            CWD,
            &parent_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(format!("cannot open {}", parent_path.display())))?;
        if statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(BundleError::Io(
                cannot(),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let partial_name = format!(".{name}.partial");
        mkdirat(&parent, partial_name.as_str(), Mode::from_raw_mode(0o755)).map_err(|e| {
            let what = if e == rustix::io::Errno::EXIST {
                format!(
                    "cannot extract to {}: {} is left from an interrupted run; remove it",
                    dir.display(),
                    parent_path.join(&partial_name).display()
                )
            } else {
                cannot()
            };
            BundleError::Io(what, e.into())
        })?;
        let partial = openat(
            &parent,
            partial_name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(cannot()))?;
        Ok(Self {
            dir: dir.to_owned(),
            parent,
            parent_path,
            name,
            partial_name,
            partial,
            done: false,
        })
    }

    /// Creates `relative` (checked by the manifest) and its directories.
    fn file(&mut self, relative: &str) -> Result<(PathBuf, File), BundleError> {
        let path = self.dir.join(relative);
        let cannot = || format!("cannot create {}", path.display());
        let (dirs, name) = relative.rsplit_once('/').unwrap_or(("", relative));
        let mut held: Option<OwnedFd> = None;
        for component in dirs.split('/').filter(|c| !c.is_empty()) {
            let at = held.as_ref().unwrap_or(&self.partial);
            match mkdirat(at, component, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(errno(cannot())(e)),
            }
            let next = openat(
                at,
                component,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno(cannot()))?;
            held = Some(next);
        }
        let at = held.as_ref().unwrap_or(&self.partial);
        let file = openat(
            at,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(errno(cannot()))?;
        Ok((path, File::from(file)))
    }

    fn finish(mut self) -> Result<(), BundleError> {
        // The partial directory under its name must still be the one
        // written: one swapped in meanwhile is not renamed into place.
        let ours =
            fstat(&self.partial).map_err(errno(format!("cannot stat {}", self.dir.display())))?;
        let there = statat(
            &self.parent,
            self.partial_name.as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        if !there.is_ok_and(|s| s.st_dev == ours.st_dev && s.st_ino == ours.st_ino) {
            return Err(BundleError::Io(
                format!("cannot extract to {}", self.dir.display()),
                std::io::Error::other("its partial directory was replaced during the extraction"),
            ));
        }
        renameat_with(
            &self.parent,
            self.partial_name.as_str(),
            &self.parent,
            self.name.as_str(),
            RenameFlags::NOREPLACE,
        )
        .map_err(errno(format!(
            "cannot rename into place {}",
            self.dir.display()
        )))?;
        fsync(&self.parent)
            .map_err(errno(format!("cannot sync {}", self.parent_path.display())))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if !self.done {
            // Not followed if it was swapped for a link: the link goes.
            let _ = std::fs::remove_dir_all(self.parent_path.join(&self.partial_name));
        }
    }
}
