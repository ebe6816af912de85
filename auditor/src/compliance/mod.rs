//! `deepseek-audit verify`: the compliance check. A fixed catalog of checks
//! with stable IDs (air gap, integrity, audit log, daemon hardening), each
//! reading the kernel, the signed integrity database and the signed audit
//! log, and returning an XCCDF-style result with the evidence it read.
//!
//! Nothing here writes to the system or opens a network socket: the checks
//! read `/proc`, `/sys`, the configuration files and the log, and connect
//! to the auditor's Unix socket.

pub mod airgap;
pub mod audit_log;
pub mod context;
pub mod format;
pub mod harden;
pub mod integ;
pub mod procfs;
pub mod profile;

use std::time::SystemTime;

use serde::Serialize;

pub use context::Context;
pub use profile::{Profile, ProfileError};

/// A check's result, named as XCCDF 1.2 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// The check could not be decided: something it must read is missing
    /// or unreadable.
    Error,
    /// The check does not apply here (no radios, systemd not PID 1).
    #[serde(rename = "notapplicable")]
    NotApplicable,
    /// The check was not run although selected: it needs root.
    #[serde(rename = "notchecked")]
    NotChecked,
    /// The profile does not select the check.
    #[serde(rename = "notselected")]
    NotSelected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Error => "error",
            Outcome::NotApplicable => "notapplicable",
            Outcome::NotChecked => "notchecked",
            Outcome::NotSelected => "notselected",
        }
    }

    /// Whether this result lets `verify` exit 0.
    pub fn is_acceptable(self) -> bool {
        matches!(
            self,
            Outcome::Pass | Outcome::NotApplicable | Outcome::NotSelected
        )
    }
}

/// One thing a check read: where, what it found, and what it expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub source: String,
    pub observed: String,
    pub expected: String,
}

impl Evidence {
    pub fn new(
        source: impl Into<String>,
        observed: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            source: source.into(),
            observed: observed.into(),
            expected: expected.into(),
        }
    }
}

/// What one check concluded.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub result: Outcome,
    /// One line for the table.
    pub summary: String,
    pub evidence: Vec<Evidence>,
}

impl Finding {
    fn new(result: Outcome, summary: impl Into<String>, evidence: Vec<Evidence>) -> Self {
        Self {
            result,
            summary: summary.into(),
            evidence,
        }
    }

    pub fn pass(summary: impl Into<String>, evidence: Vec<Evidence>) -> Self {
        Self::new(Outcome::Pass, summary, evidence)
    }

    pub fn fail(summary: impl Into<String>, evidence: Vec<Evidence>) -> Self {
        Self::new(Outcome::Fail, summary, evidence)
    }

    /// Passes when `failed` is false, with the matching summary.
    pub fn verdict(
        failed: bool,
        pass: impl Into<String>,
        fail: impl Into<String>,
        evidence: Vec<Evidence>,
    ) -> Self {
        if failed {
            Self::fail(fail, evidence)
        } else {
            Self::pass(pass, evidence)
        }
    }

    pub fn error(summary: impl Into<String>) -> Self {
        Self::new(Outcome::Error, summary, Vec::new())
    }

    pub fn not_applicable(summary: impl Into<String>, evidence: Vec<Evidence>) -> Self {
        Self::new(Outcome::NotApplicable, summary, evidence)
    }

    pub fn not_checked(summary: impl Into<String>) -> Self {
        Self::new(Outcome::NotChecked, summary, Vec::new())
    }

    /// The daemon with this pid wrote no start record to the audit log.
    pub fn no_start_record(pid: i32) -> Self {
        Self::fail(
            format!("the audit log has no start record of pid {pid}"),
            vec![Evidence::new(
                "audit log",
                "no start event with this details.pid written after the process started",
                format!("a start event of pid {pid}"),
            )],
        )
    }
}

/// A check that could not be decided, and why: the `?` of the checks.
#[derive(Debug, Clone)]
pub enum Undecided {
    /// Something the check must read is missing, unreadable or malformed.
    Error(String),
    /// It needs root (another user's `/proc/PID/fd`, say).
    NeedsRoot(String),
}

impl From<Undecided> for Finding {
    fn from(undecided: Undecided) -> Self {
        match undecided {
            Undecided::Error(message) => Finding::error(message),
            Undecided::NeedsRoot(message) => Finding::not_checked(format!("needs root: {message}")),
        }
    }
}

/// The catalog's groups, in report order.
pub const GROUPS: [&str; 4] = ["AIRGAP", "INTEG", "AUDIT", "HARDEN"];

/// One entry of the catalog.
#[derive(Debug)]
pub struct Check {
    /// Stable: reports, profiles and tickets refer to it.
    pub id: &'static str,
    pub title: &'static str,
    pub rationale: &'static str,
    pub remediation: &'static str,
    /// NIST SP 800-53 Rev. 5 controls.
    pub references: &'static [&'static str],
    pub run: fn(&Context) -> Result<Finding, Undecided>,
}

impl Check {
    pub fn group(&self) -> &'static str {
        GROUPS
            .iter()
            .copied()
            .find(|g| self.id.starts_with(g))
            .unwrap_or("")
    }
}

/// Every check, in report order.
pub fn catalog() -> Vec<&'static Check> {
    airgap::CHECKS
        .iter()
        .chain(integ::CHECKS)
        .chain(audit_log::CHECKS)
        .chain(harden::CHECKS)
        .collect()
}

/// One check as run.
#[derive(Debug)]
pub struct Outcomes {
    pub check: &'static Check,
    pub finding: Finding,
}

/// A whole run: what a report is made of.
#[derive(Debug)]
pub struct Report {
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
    pub fn counts(&self) -> [(Outcome, usize); 6] {
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
    pub fn passed(&self) -> bool {
        self.results
            .iter()
            .all(|r| r.finding.result.is_acceptable())
    }

    /// 0 when every selected check passed, 2 otherwise (OpenSCAP's codes).
    pub fn exit_code(&self) -> u8 {
        if self.passed() { 0 } else { 2 }
    }

    /// The checks that were not run because they need root.
    pub fn needing_root(&self) -> Vec<&'static str> {
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
pub fn run(context: &Context) -> Report {
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
