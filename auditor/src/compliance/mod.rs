//! `deepseek-audit verify`: the compliance check. A fixed catalog of checks
//! with stable IDs (air gap, integrity, audit log, daemon hardening), each
//! reading the kernel, the signed integrity database and the signed audit
//! log, and returning an XCCDF-style result with the evidence it read.
//!
//! Nothing here writes to the system or opens a network socket: the checks
//! read `/proc`, `/sys`, the configuration files and the log, and connect
//! to the auditor's Unix socket.

pub(crate) mod airgap;
pub(crate) mod audit_log;
pub(crate) mod check;
pub(crate) mod context;
pub(crate) mod finding;
pub(crate) mod format;
pub(crate) mod harden;
pub(crate) mod integ;
pub(crate) mod procfs;
pub(crate) mod profile;
pub(crate) mod store;

use std::path::Path;
use std::time::SystemTime;

use check::Check;
pub(crate) use context::Context;
use finding::{Finding, Outcome};
pub(crate) use profile::Profile;
use profile::ProfileError;

/// Every check, in report order.
pub(crate) fn catalog() -> Vec<&'static Check> {
    airgap::CHECKS
        .iter()
        .chain(integ::CHECKS)
        .chain(store::CHECKS)
        .chain(audit_log::CHECKS)
        .chain(harden::CHECKS)
        .collect()
}

/// The profile at `path`, the names in its `[checks]` checked against
/// the catalog so that a typo does not silently leave a check out.
pub(crate) fn load_profile(path: &Path) -> Result<Profile, ProfileError> {
    Profile::load(path, &check_ids())
}

/// The ID of every check in the catalog.
fn check_ids() -> Vec<&'static str> {
    catalog().iter().map(|c| c.id).collect()
}

/// One check as run.
#[derive(Debug)]
pub(crate) struct Outcomes {
    pub check: &'static Check,
    pub finding: Finding,
}

/// A whole run: what a report is made of.
#[derive(Debug)]
pub(crate) struct Report {
    pub results: Vec<Outcomes>,
    pub profile: std::path::PathBuf,
    pub host: String,
    pub started: SystemTime,
    pub finished: SystemTime,
    /// Whether verify ran as root (some checks need it).
    pub root: bool,
}

impl Report {
    /// How many results of each kind, in `Outcome` order.
    pub(crate) fn counts(&self) -> [(Outcome, usize); 6] {
        [
            Outcome::Pass,
            Outcome::Fail,
            Outcome::Error,
            Outcome::NotApplicable,
            Outcome::NotChecked,
            Outcome::NotSelected,
        ]
        .map(|o| {
            (
                o,
                self.results
                    .iter()
                    .filter(|r| r.finding.result == o)
                    .count(),
            )
        })
    }

    /// `pass` when every selected check passed or does not apply, else `fail`.
    pub(crate) fn passed(&self) -> bool {
        self.results
            .iter()
            .all(|r| r.finding.result.is_acceptable())
    }

    /// 0 when every selected check passed, 2 otherwise (OpenSCAP's codes).
    pub(crate) fn exit_code(&self) -> u8 {
        if self.passed() { 0 } else { 2 }
    }

    /// The checks that were not run because they need root.
    pub(crate) fn needing_root(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|r| {
                r.finding.result == Outcome::NotChecked
                    && r.finding.summary.starts_with("needs root")
            })
            .map(|r| r.check.id)
            .collect()
    }
}

/// Runs the checks the profile selects; the others are reported as
/// `notselected` so that a report always lists the whole catalog.
pub(crate) fn run(context: &Context) -> Report {
    let started = SystemTime::now();
    let results = catalog()
        .into_iter()
        .map(|check| {
            let finding = if context.profile.selects(check.id) {
                (check.run)(context).unwrap_or_else(Finding::from)
            } else {
                Finding::new(
                    Outcome::NotSelected,
                    "not selected by the profile",
                    Vec::new(),
                )
            };
            Outcomes { check, finding }
        })
        .collect();
    Report {
        results,
        profile: context.profile_path.clone(),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        started,
        finished: SystemTime::now(),
        root: context.root,
    }
}
