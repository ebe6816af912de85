//! `deepseek-integrity`'s exit codes, compatible with AIDE's where they
//! overlap so that existing monitoring keeps working. Documented in
//! docs/guide/exit-codes.md.

/// A finding or failure, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Nothing changed (or the command succeeded).
    Ok = 0,
    /// Bad command line (EX_USAGE, as every binary of the appliance).
    Usage = 64,
    /// The configuration is invalid (AIDE: invalid configure line).
    Config = 17,
    /// A file could not be read (AIDE: I/O error).
    Io = 18,
    /// The database is missing, malformed or inconsistent.
    Database = 24,
    /// Interrupted (SIGINT/SIGTERM) before finishing.
    Interrupted = 25,
    /// The database's signature is missing, invalid, or made by a key other
    /// than the pinned verifier key: nothing in it can be trusted.
    Signature = 26,
    /// A bundle is malformed, or does not match its signed manifest.
    Bundle = 27,
    /// The model store refused the operation: an unknown model or
    /// version, a version that exists already, the active one removed.
    Store = 28,
}

/// Bits summed into `check`'s exit code, as AIDE does: 1 added, 2 removed,
/// 4 changed (so 7 means all three).
pub(crate) const ADDED: u8 = 1;
pub(crate) const REMOVED: u8 = 2;
pub(crate) const CHANGED: u8 = 4;
