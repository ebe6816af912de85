//! Exit codes (sysexits where one fits; docs/guide/exit-codes.md), so that
//! a script can tell a refused question from a daemon that is down.

/// EX_USAGE: a bad command line, or no model to ask (none named and the
/// daemon serves several or none; a model it does not serve).
pub(crate) const USAGE: u8 = 64;
/// EX_DATAERR: the question cannot be asked as given: over the input
/// limit, not UTF-8, empty, or refused by the daemon (400: the context is
/// too long, a parameter out of range).
pub(crate) const DATA: u8 = 65;
/// EX_UNAVAILABLE: deepseekd is not running, or refuses to answer while the
/// auditor cannot record (503 `audit_unavailable`), or the answer broke off.
pub(crate) const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: deepseekd failed while generating (500).
pub(crate) const SOFTWARE: u8 = 70;
/// EX_OSERR: the client could not start its runtime or its line editor.
pub(crate) const OS: u8 = 71;
/// EX_IOERR: stdin could not be read, or stdout written.
pub(crate) const IO: u8 = 74;
/// EX_TEMPFAIL: busy: the model's queue is full, or this user's rate or
/// concurrency limit is reached (503 `queue_full`, 429); retry later.
pub(crate) const TEMPORARY: u8 = 75;
/// EX_PROTOCOL: the daemon's answer could not be read as HTTP, server-sent
/// events or JSON.
pub(crate) const PROTOCOL: u8 = 76;
/// EX_NOPERM: the socket refused this user (EACCES), or the daemon did (403).
pub(crate) const PERMISSION: u8 = 77;
/// 128 + SIGINT: Ctrl-C stopped a question asked from the command line.
pub(crate) const INTERRUPTED: u8 = 130;

/// The table `deepseek chat --help` ends with, and the man page's EXIT
/// STATUS section (xtask man).
pub(crate) const EXIT_CODES: &str = "\
Exit codes (sysexits; an interactive session exits 0 unless it cannot start):
  0   answered; or the session ended with /bye or Ctrl-D; also --help
  64  bad command line; no model named and the daemon serves several or
      none; a model the daemon does not serve
  65  the question is over 1 MiB, not UTF-8 or empty, or the daemon refused
      it (400), for one because the context is too long
  69  deepseekd is not running, or the auditor is down (503
      audit_unavailable), or the answer broke off
  70  deepseekd failed while generating (500)
  71  the client could not start (runtime, terminal)
  74  stdin could not be read or stdout written
  75  busy: the model's queue is full or a per-user limit is reached (503
      queue_full, 429); retry later
  76  the daemon's answer could not be read
  77  permission denied: not in the deepseek group (the socket, or the
      daemon's allow-list: 403)
  130 interrupted with Ctrl-C
";
