//! `bundle verify`: a bundle checked as it streams, against pinned release
//! keys, and unpacked only when asked and only once every byte matched.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{BundleError, io, rename_new};
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
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io("read the release keys in", dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .take(MAX_KEYS + 1)
            .collect();
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
        let file = File::open(path).map_err(io("read the release key", path))?;
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

/// A bundle that passed: what it is, its digest (SHA-256 of the manifest)
/// and the release key that signed it.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    pub digest: String,
    pub signer: String,
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
fn signer(keys: &ReleaseKeys, note: &str, digest: &str) -> Result<(String, String), BundleError> {
    for key in &keys.keys {
        if let Ok(text) = key.open(note) {
            let mut lines = text.lines();
            let (format, what, sum) = (lines.next(), lines.next(), lines.next());
            if format != Some(FORMAT)
                || sum != Some(&format!("manifest sha256 {digest}"))
                || lines.next().is_some()
            {
                return Err(BundleError::Signature(format!(
                    "{} signed another manifest, not this one",
                    key.name()
                )));
            }
            return Ok((key.to_string(), what.unwrap_or_default().to_owned()));
        }
    }
    // Name the signers the note claims, to say which key would be needed.
    let claimed: Vec<&str> = note
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .filter_map(|l| l.split_whitespace().next())
        .take(8)
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
    let digest = hex(&Sha256::digest(&manifest_bytes));
    // The signature first: nothing unsigned is parsed beyond its hash.
    let (signer, what) = signer(keys, &note, &digest)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    let expected = signed_text(&manifest, &digest);
    if expected.lines().nth(1) != Some(what.as_str()) {
        return Err(BundleError::Signature(format!(
            "the signature is for {what:?}, the manifest says {:?}",
            expected.lines().nth(1).unwrap_or_default()
        )));
    }
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
        if sha256 != file.sha256 || chunked != file.chunked_sha256 {
            return Err(BundleError::Mismatch {
                path: file.path.clone(),
                why: format!(
                    "its content does not match the manifest (SHA-256 {sha256}, the manifest says {})",
                    file.sha256
                ),
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
        manifest,
        digest,
        signer,
    })
}

/// An extraction in progress: a hidden sibling directory, renamed into
/// place once everything matched, removed if anything did not.
struct Target {
    partial: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl Target {
    fn new(dir: &Path) -> Result<Self, BundleError> {
        let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            BundleError::Io(
                format!("cannot extract to {}", dir.display()),
                std::io::Error::other("no directory name"),
            )
        })?;
        let partial = dir.with_file_name(format!(".{name}.partial"));
        if dir.exists() {
            return Err(BundleError::Io(
                format!("cannot extract to {}", dir.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        std::fs::create_dir(&partial).map_err(io("create", &partial))?;
        Ok(Self {
            partial,
            dir: dir.to_owned(),
            done: false,
        })
    }

    /// Creates `relative` (checked by the manifest) and its directories.
    fn file(&mut self, relative: &str) -> Result<(PathBuf, File), BundleError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.partial.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("create", &path))?;
        Ok((path, file))
    }

    fn finish(mut self) -> Result<(), BundleError> {
        rename_new(&self.partial, &self.dir)?;
        let parent = match self.dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io("sync", parent))?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}
