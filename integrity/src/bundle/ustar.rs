//! The archive layer: canonical ustar, written with the `tar` crate and
//! read here, strictly. Every header must be byte for byte the one
//! `bundle create` writes for its name and size (regular file, mode 0644,
//! owner 0, time 0), every padding byte zero, and nothing but zeros may
//! follow the end marker. So no byte of a bundle escapes verification:
//! headers are compared, contents hashed, padding checked.

use std::io::Read;

use super::error::BundleError;
use super::limits::{MAX_PATH, MAX_TRAILER};

const BLOCK: usize = 512;

/// A read of the bundle failed: the bundle is cut short (refused as an
/// archive), or it could not be read (an I/O error: failing media, a
/// directory).
fn failed(what: String, e: std::io::Error) -> BundleError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        BundleError::Archive(format!("{what}: {e}"))
    } else {
        BundleError::Io(format!("cannot read the bundle ({what})"), e)
    }
}

/// A path inside the bundle: relative, `/`-separated, no empty, `.` or `..`
/// component, no control character or backslash, at most [`MAX_PATH`]
/// bytes (what a ustar header holds).
pub(super) fn check_path(path: &str) -> Result<(), BundleError> {
    let refuse = |why: &str| Err(BundleError::Path(path.to_owned(), why.to_owned()));
    if path.is_empty() || path.len() > MAX_PATH {
        return refuse(&format!("expected 1 to {MAX_PATH} bytes"));
    }
    if path.starts_with('/') {
        return refuse("absolute");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return refuse("a control character or backslash");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return refuse("an empty, '.' or '..' component");
    }
    Ok(())
}

/// A ustar header for a regular file: mode 0644, owner 0, time 0, so that
/// the same files give the same archive.
pub(super) fn header(path: &str, size: u64) -> Result<tar::Header, BundleError> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(path)
        .map_err(|e| BundleError::Path(path.to_owned(), e.to_string()))?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// Reads a bundle's members in order.
pub(super) struct Reader<R> {
    inner: R,
    /// Bytes of the current member's content not yet read.
    left: u64,
    /// Zero bytes that pad the current member to a block.
    padding: usize,
}

/// A member's name and size, once its header passed.
pub(super) struct Member {
    pub name: String,
    pub size: u64,
}

impl<R: Read> Reader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            left: 0,
            padding: 0,
        }
    }

    fn block(&mut self, what: &str) -> Result<[u8; BLOCK], BundleError> {
        let mut block = [0u8; BLOCK];
        self.inner
            .read_exact(&mut block)
            .map_err(|e| failed(what.to_owned(), e))?;
        Ok(block)
    }

    /// The next member's header, or `None` at the end marker.
    pub(super) fn next(&mut self) -> Result<Option<Member>, BundleError> {
        assert_eq!(self.left, 0, "the previous member was read whole");
        let block = self.block("it ends before its end marker")?;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let header = tar::Header::from_byte_slice(&block);
        let name = String::from_utf8(header.path_bytes().into_owned())
            .map_err(|_| BundleError::Archive("a member's name is not UTF-8".into()))?;
        let what = match header.entry_type() {
            tar::EntryType::Regular => None,
            tar::EntryType::Symlink => Some("a symbolic link"),
            tar::EntryType::Link => Some("a hard link"),
            tar::EntryType::Directory => Some("a directory"),
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => Some("a pax header"),
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => Some("a GNU long name"),
            _ => Some("not a regular file"),
        };
        if let Some(what) = what {
            return Err(BundleError::Path(
                name,
                format!("{what}: bundles carry regular files only"),
            ));
        }
        check_path(&name)?;
        let size = header
            .entry_size()
            .map_err(|e| BundleError::Archive(format!("{name}: bad size field: {e}")))?;
        if header.as_bytes() != self::header(&name, size)?.as_bytes() {
            return Err(BundleError::Archive(format!(
                "{name}: the header is not the canonical one (regular file, mode 0644, owner 0, time 0, ustar, a valid checksum)"
            )));
        }
        self.left = size;
        self.padding = usize::try_from(size % BLOCK as u64).map_or(0, |r| (BLOCK - r) % BLOCK);
        Ok(Some(Member { name, size }))
    }

    /// Reads the current member's content into `sink`, then checks its
    /// padding.
    pub(super) fn content(
        &mut self,
        name: &str,
        mut sink: impl FnMut(&[u8]) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        let mut buffer = vec![0u8; 256 << 10];
        while self.left > 0 {
            let want = usize::try_from(self.left.min(buffer.len() as u64)).unwrap_or(buffer.len());
            let n = self
                .inner
                .read(&mut buffer[..want])
                .map_err(|e| failed(name.to_owned(), e))?;
            if n == 0 {
                return Err(BundleError::Archive(format!(
                    "{name}: it ends {} bytes early",
                    self.left
                )));
            }
            self.left -= n as u64;
            sink(&buffer[..n])?;
        }
        let mut padding = [0u8; BLOCK];
        let padding = &mut padding[..self.padding];
        self.inner
            .read_exact(padding)
            .map_err(|e| failed(format!("{name}: its padding"), e))?;
        if padding.iter().any(|&b| b != 0) {
            return Err(BundleError::Archive(format!(
                "{name}: its padding holds data"
            )));
        }
        self.padding = 0;
        Ok(())
    }

    /// After the first zero block: the second, then only zeros.
    pub(super) fn finish(mut self) -> Result<(), BundleError> {
        if self
            .block("its end marker is one block")?
            .iter()
            .any(|&b| b != 0)
        {
            return Err(BundleError::Archive("data in its end marker".into()));
        }
        let mut rest = (&mut self.inner).take(MAX_TRAILER + 1);
        let mut buffer = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = rest
                .read(&mut buffer)
                .map_err(|e| failed("after its end".to_owned(), e))?;
            if n == 0 {
                return Ok(());
            }
            total += n as u64;
            if total > MAX_TRAILER || buffer[..n].iter().any(|&b| b != 0) {
                return Err(BundleError::Archive(
                    "data after the archive's end marker".into(),
                ));
            }
        }
    }
}
