//! What a check finds: its outcome, the evidence read, or why it could
//! not decide. Shared by the checks, the context they read and the reports.

use serde::Serialize;

/// A check's result, named as XCCDF 1.2 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn is_acceptable(self) -> bool {
        matches!(
            self,
            Outcome::Pass | Outcome::NotApplicable | Outcome::NotSelected
        )
    }
}

/// One thing a check read: where, what it found, and what it expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Evidence {
    pub source: String,
    pub observed: String,
    pub expected: String,
}

impl Evidence {
    pub(crate) fn new(
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
pub(crate) struct Finding {
    pub result: Outcome,
    /// One line for the table.
    pub summary: String,
    pub evidence: Vec<Evidence>,
}

impl Finding {
    pub(crate) fn new(
        result: Outcome,
        summary: impl Into<String>,
        evidence: Vec<Evidence>,
    ) -> Self {
        Self {
            result,
            summary: summary.into(),
            evidence,
        }
    }

    pub(crate) fn pass(summary: impl Into<String>, evidence: Vec<Evidence>) -> Self {
        Self::new(Outcome::Pass, summary, evidence)
    }

    pub(crate) fn fail(summary: impl Into<String>, evidence: Vec<Evidence>) -> Self {
        Self::new(Outcome::Fail, summary, evidence)
    }

    /// Passes when `failed` is false, with the matching summary.
    pub(crate) fn verdict(
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

    pub(crate) fn error(summary: impl Into<String>) -> Self {
        Self::new(Outcome::Error, summary, Vec::new())
    }

    pub(crate) fn not_applicable(summary: impl Into<String>, evidence: Vec<Evidence>) -> Self {
        Self::new(Outcome::NotApplicable, summary, evidence)
    }

    pub(crate) fn not_checked(summary: impl Into<String>) -> Self {
        Self::new(Outcome::NotChecked, summary, Vec::new())
    }

    /// The daemon with this pid wrote no start record to the audit log.
    pub(crate) fn no_start_record(pid: i32) -> Self {
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
pub(crate) enum Undecided {
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
