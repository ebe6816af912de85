//! What a bundle may hold, checked before the work: every bound is in
//! docs/guide/bundles.md.

/// Bytes of `manifest.json`.
pub const MAX_MANIFEST: u64 = 16 << 20;
/// Bytes of `manifest.sig`.
pub const MAX_SIGNATURE: u64 = 64 << 10;
/// Files in one bundle.
pub const MAX_FILES: usize = 100_000;
/// Bytes of a path inside `files/` (a ustar name and prefix hold 255
/// with the `files/` prefix).
pub const MAX_PATH: usize = 240;
/// Bytes of a name, version, `created` or `builder`.
pub const MAX_NAME: usize = 128;
/// Bytes of one file (1 TiB).
pub const MAX_FILE: u64 = 1 << 40;
/// Zero bytes accepted after the archive's end marker (tar pads to
/// 10 KiB records; this allows any blocking factor up to 1 MiB).
pub const MAX_TRAILER: u64 = 1 << 20;
/// Release keys read from a directory.
pub const MAX_KEYS: usize = 64;
