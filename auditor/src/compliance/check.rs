//! One entry of the catalog: a check's stable ID, its documentation and
//! the function that runs it.

use super::context::Context;
use super::finding::{Finding, Undecided};
use super::profile::GROUPS;

/// One entry of the catalog.
#[derive(Debug)]
pub(crate) struct Check {
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
    pub(crate) fn group(&self) -> &'static str {
        GROUPS
            .iter()
            .copied()
            .find(|g| self.id.starts_with(g))
            .unwrap_or("")
    }
}
