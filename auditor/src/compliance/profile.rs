//! The compliance profile (`policies/compliance.toml`, installed as
//! `/etc/deepseek/compliance.toml`): which checks run, where the other
//! components' configurations are, and the thresholds. Every key is in
//! docs/guide/compliance.md.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The catalog's groups, in report order.
pub(crate) const GROUPS: [&str; 4] = ["AIRGAP", "INTEG", "AUDIT", "HARDEN"];

/// Where `verify` looks for the profile when `--profile` is not given.
pub(crate) const DEFAULT_PROFILE_PATH: &str = "/etc/deepseek/compliance.toml";

/// The profile file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    #[serde(default)]
    pub files: Files,
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub checks: Selection,
    #[serde(default)]
    pub thresholds: Thresholds,
    #[serde(default)]
    pub users: Users,
}

/// `[files]`: the configurations the checks read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Files {
    pub daemon_config: PathBuf,
    pub integrity_config: PathBuf,
    /// The model store's root (INTEG-MODEL-STORE).
    pub model_store: PathBuf,
    /// The pinned release keys, one `NAME.pub` each (INTEG-MODEL-STORE).
    pub release_keys: PathBuf,
}

impl Default for Files {
    fn default() -> Self {
        Self {
            daemon_config: PathBuf::from("/etc/deepseek/deepseekd.toml"),
            integrity_config: PathBuf::from("/etc/deepseek/integrity.toml"),
            model_store: PathBuf::from(deepseek_integrity::store::layout::DEFAULT_ROOT),
            release_keys: PathBuf::from(deepseek_integrity::bundle::cli::RELEASE_KEYS_DIR),
        }
    }
}

/// `[daemon]`: how to find the running daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DaemonSection {
    /// Its systemd unit: its `MainPID` when systemd is PID 1, and the unit
    /// `systemd-analyze security` scores.
    pub unit: String,
    /// A file holding its pid, tried before the unit and the socket.
    pub pidfile: Option<PathBuf>,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            unit: "deepseekd.service".to_owned(),
            pidfile: None,
        }
    }
}

/// `[checks]`: check IDs or group names (`AIRGAP`, `INTEG`, `AUDIT`,
/// `HARDEN`) to run, and to leave out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Selection {
    pub select: Vec<String>,
    pub skip: Vec<String>,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            select: GROUPS.iter().map(|g| (*g).to_owned()).collect(),
            skip: Vec::new(),
        }
    }
}

/// `[thresholds]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Thresholds {
    /// Most entries allowed after the last checkpoint (default: the
    /// auditor's `checkpoint_every`).
    pub max_unsealed_entries: Option<u64>,
    /// Lowest Landlock ABI the daemon must report as fully enforced.
    pub min_landlock_abi: u32,
    /// Highest `systemd-analyze security` exposure score (0.0-10.0).
    pub max_exposure: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_unsealed_entries: None,
            min_landlock_abi: 6,
            max_exposure: 0.4,
        }
    }
}

/// `[users]`: who must own each signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Users {
    /// Owner of the audit log's signing key (the auditor's user).
    pub audit: String,
    /// Owner of the integrity database's signing key.
    pub integrity: String,
}

impl Default for Users {
    fn default() -> Self {
        Self {
            audit: "deepseek-audit".to_owned(),
            integrity: "root".to_owned(),
        }
    }
}

/// A profile that cannot be used; names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProfileError {
    #[error("cannot read the profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Profile {
    pub(crate) fn load(path: &Path, known: &[&str]) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, known)
    }

    /// Parses and checks that every name in `[checks]` is a group or one
    /// of the `known` check IDs, so that a typo does not silently leave a
    /// check out.
    pub(crate) fn parse(path: &Path, text: &str, known: &[&str]) -> Result<Self, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            path: path.to_owned(),
            message,
        };
        let profile: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (key, names) in [
            ("checks.select", &profile.checks.select),
            ("checks.skip", &profile.checks.skip),
        ] {
            for name in names {
                if !GROUPS.contains(&name.as_str()) && !known.contains(&name.as_str()) {
                    return Err(invalid(format!(
                        "{key}: unknown check {name:?} (expected a group {} or a check ID; `deepseek-audit verify --list` prints them)",
                        GROUPS.join(", ")
                    )));
                }
            }
        }
        let t = &profile.thresholds;
        if !(0.0..=10.0).contains(&t.max_exposure) {
            return Err(invalid(format!(
                "thresholds.max_exposure: {} is outside 0.0-10.0, the range of systemd-analyze security",
                t.max_exposure
            )));
        }
        Ok(profile)
    }

    /// Whether the check with this ID runs.
    pub(crate) fn selects(&self, id: &str) -> bool {
        let matches = |name: &String| id == name || id.starts_with(&format!("{name}-"));
        self.checks.select.iter().any(matches) && !self.checks.skip.iter().any(matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<&'static str> {
        super::super::catalog().iter().map(|c| c.id).collect()
    }

    #[test]
    fn selection_by_group_and_id() {
        let p = Profile::parse(
            Path::new("p.toml"),
            "[checks]\nselect = [\"AIRGAP\", \"AUDIT-LOG\"]\nskip = [\"AIRGAP-RADIOS\"]\n",
            &known(),
        )
        .expect("valid");
        assert!(p.selects("AIRGAP-INTERFACES"));
        assert!(!p.selects("AIRGAP-RADIOS"));
        assert!(p.selects("AUDIT-LOG"));
        assert!(!p.selects("AUDIT-UNSEALED"));
        assert!(!p.selects("HARDEN-CAPS"));
    }

    #[test]
    fn the_shipped_profile_is_valid_and_selects_everything() {
        let p = Profile::parse(
            Path::new("policies/compliance.toml"),
            include_str!("../../../policies/compliance.toml"),
            &known(),
        )
        .expect("policies/compliance.toml parses");
        assert!(known().iter().all(|id| p.selects(id)));
        assert_eq!(p.thresholds.min_landlock_abi, 6);
    }

    #[test]
    fn defaults_select_everything() {
        let p = Profile::parse(Path::new("p.toml"), "", &known()).expect("valid");
        assert!(known().iter().all(|id| p.selects(id)));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = Profile::parse(
            Path::new("/etc/p.toml"),
            "[checks]\nselect = [\"AIRGAP-IFACES\"]\n",
            &known(),
        )
        .expect_err("unknown check");
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/p.toml: checks.select: unknown check \"AIRGAP-IFACES\""),
            "{text}"
        );
        let e = Profile::parse(
            Path::new("/etc/p.toml"),
            "[thresholds]\nmax_unseald = 3\n",
            &known(),
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("max_unseald"), "{e}");
        let e = Profile::parse(
            Path::new("/etc/p.toml"),
            "[thresholds]\nmax_exposure = 11.0\n",
            &known(),
        )
        .expect_err("out of range");
        assert!(e.to_string().contains("thresholds.max_exposure"), "{e}");
    }
}
