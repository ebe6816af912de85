//! `bundle create`, on the staging machine: a directory's regular files,
//! hashed, listed, signed and archived.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{BundleError, io, rename_new};
use super::hashes::Hashes;
use super::limits::{MAX_FILE, MAX_FILES};
use super::manifest::{FILES, FORMAT, FileEntry, Kind, MANIFEST, Manifest, SIGNATURE, signed_text};
use super::ustar::{check_path, header};
use crate::digest::hex;
use crate::note::NoteSigner;

/// What `bundle create` is told.
#[derive(Debug)]
pub struct CreateOptions<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub kind: Kind,
    /// RFC 3339 UTC.
    pub created: String,
    pub builder: String,
    /// A CycloneDX SBOM to carry as `sbom.cdx.json`.
    pub sbom: Option<&'a Path>,
}

/// The regular files under `source`, as bundle paths, sorted; anything else
/// (a symlink, a device, a socket) is refused, naming it.
fn list(source: &Path) -> Result<Vec<(String, PathBuf)>, BundleError> {
    let mut files = Vec::new();
    for item in walkdir::WalkDir::new(source)
        .follow_links(false)
        .min_depth(1)
    {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(source).to_owned();
            BundleError::Io(
                format!("cannot read {}", path.display()),
                e.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("a directory loop")),
            )
        })?;
        let kind = item.file_type();
        if kind.is_dir() {
            continue;
        }
        let relative = item
            .path()
            .strip_prefix(source)
            .expect("walkdir stays under its root");
        let name = relative
            .to_str()
            .ok_or_else(|| BundleError::Path(relative.display().to_string(), "not UTF-8".into()))?;
        if !kind.is_file() {
            return Err(BundleError::Path(
                name.to_owned(),
                "not a regular file (bundles carry regular files only)".into(),
            ));
        }
        check_path(name)?;
        files.push((name.to_owned(), item.path().to_owned()));
        if files.len() > MAX_FILES {
            return Err(BundleError::Manifest(format!(
                "more than {MAX_FILES} files"
            )));
        }
    }
    files.sort();
    Ok(files)
}

/// Writes the bundle of `source`'s files to `out` (refused if it exists),
/// signed by `signer`; returns its manifest and digest.
pub fn create(
    source: &Path,
    options: &CreateOptions<'_>,
    signer: &NoteSigner,
    out: &Path,
) -> Result<(Manifest, String), BundleError> {
    // Before any hashing, which may take long.
    if out.symlink_metadata().is_ok() {
        return Err(io("create", out)(std::io::Error::from(
            std::io::ErrorKind::AlreadyExists,
        )));
    }
    let mut files = list(source)?;
    if let Some(sbom) = options.sbom {
        files.push(("sbom.cdx.json".to_owned(), sbom.to_owned()));
    }
    let mut entries = Vec::with_capacity(files.len());
    for (name, path) in &files {
        let file = open_regular(name, path)?;
        let (size, sha256, chunked_sha256) =
            Hashes::of_reader(&mut file.take(MAX_FILE + 1)).map_err(io("read", path))?;
        if size > MAX_FILE {
            return Err(BundleError::Path(
                name.clone(),
                format!("{size} bytes, over {MAX_FILE}"),
            ));
        }
        entries.push(FileEntry {
            path: name.clone(),
            size,
            sha256,
            chunked_sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        name: options.name.to_owned(),
        version: options.version.to_owned(),
        kind: options.kind,
        created: options.created.clone(),
        builder: options.builder.clone(),
        sbom: options.sbom.map(|_| "sbom.cdx.json".to_owned()),
        files: entries,
    };
    manifest.check()?;
    let bytes = manifest.to_bytes();
    let digest = hex(&Sha256::digest(&bytes));
    let signature = signer
        .sign(&signed_text(&manifest, &digest))
        .map_err(|e| BundleError::Key(e.to_string()))?;

    // Written beside `out` and renamed into place once whole: a failure
    // leaves no bundle that looks finished.
    let partial = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle")
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(io("create", &partial))?;
    // From here the partial file is this run's own, removed on failure.
    let written = write(file, &partial, &bytes, &signature, &files, &manifest)
        .and_then(|()| rename_new(&partial, out));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    Ok((manifest, digest))
}

/// Opens a file to carry, never through a symbolic link, and only a
/// regular file (a FIFO or a device would hang or never end).
fn open_regular(name: &str, path: &Path) -> Result<File, BundleError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io("read", path))?;
    if !file.metadata().map_err(io("read", path))?.is_file() {
        return Err(BundleError::Path(
            name.to_owned(),
            "not a regular file (bundles carry regular files only)".into(),
        ));
    }
    Ok(file)
}

/// The archive: the manifest, its signature, then each file, hashed again
/// as it is copied (a file that changed since it was listed is refused
/// rather than shipped under a wrong digest).
fn write(
    file: File,
    out: &Path,
    manifest_bytes: &[u8],
    signature: &str,
    files: &[(String, PathBuf)],
    manifest: &Manifest,
) -> Result<(), BundleError> {
    let mut archive = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let mut append = |name: &str, size: u64, data: &mut dyn Read| {
        archive
            .append(&header(name, size)?, data)
            .map_err(io("write", out))
    };
    append(
        MANIFEST,
        manifest_bytes.len() as u64,
        &mut &manifest_bytes[..],
    )?;
    append(SIGNATURE, signature.len() as u64, &mut signature.as_bytes())?;
    for ((name, path), entry) in files.iter().zip(&manifest.files) {
        let file = open_regular(name, path)?;
        let mut checked = Checked::new(file.take(entry.size), &entry.sha256);
        append(&format!("{FILES}{name}"), entry.size, &mut checked)?;
        if !checked.matches() {
            return Err(BundleError::Mismatch {
                path: path.display().to_string(),
                why: "changed while the bundle was made".into(),
            });
        }
    }
    let mut writer = archive.into_inner().map_err(io("write", out))?;
    writer.flush().map_err(io("write", out))?;
    writer
        .into_inner()
        .map_err(|e| io("write", out)(e.into_error()))?
        .sync_all()
        .map_err(io("sync", out))
}

/// A reader that hashes what passes, to compare with the listed digest.
struct Checked<R> {
    inner: R,
    hasher: Sha256,
    expected: String,
}

impl<R: Read> Checked<R> {
    fn new(inner: R, expected: &str) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            expected: expected.to_owned(),
        }
    }

    fn matches(self) -> bool {
        hex(&self.hasher.finalize()) == self.expected
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..n]);
        Ok(n)
    }
}
