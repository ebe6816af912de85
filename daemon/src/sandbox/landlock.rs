//! Step 6: Landlock. Every filesystem right of the pinned ABI is handled and
//! granted back only beneath the paths the daemon needs; TCP bind and connect
//! are handled with no rule, so no TCP is possible; signals (and abstract
//! Unix sockets, when no model uses CUDA) are scoped to the process.
//!
//! Landlock before ABI 8 confines only the calling thread and threads it
//! creates later, so this must run while the process has a single thread;
//! it checks that and refuses otherwise.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use serde::Serialize;

use super::error::SandboxError;
use super::status::StatusFile;
use crate::config::{Config, Device, ModelConfig};

/// The ABI whose rights the daemon handles. Pinned, and required in full:
/// best-effort mode would silently enforce less on an older kernel.
/// V6 brings `IoctlDev` (V5), TCP rules (V4) and scoping (V6).
pub(super) const ABI_PINNED: ABI = ABI::V6;

const STEP: &str = "6 landlock";

/// One path the daemon keeps access to, and why.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
    pub why: &'static str,
    /// A missing required path is an error; an optional one is skipped.
    pub required: bool,
}

/// Everything the Landlock ruleset will contain for a configuration.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub grants: Vec<Grant>,
    pub scopes: BitFlags<Scope>,
}

/// One rule as applied, for the hardening report.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub path: PathBuf,
    pub access: Vec<String>,
    pub why: &'static str,
}

/// What was enforced.
#[derive(Debug, Clone, Serialize)]
pub struct LandlockReport {
    pub abi: u32,
    pub status: &'static str,
    pub rules: Vec<RuleReport>,
    pub skipped_missing: Vec<PathBuf>,
    pub tcp: &'static str,
    pub scopes: Vec<String>,
}

fn read_only() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// The rules for `config`: libraries and models read-only, the CUDA device
/// nodes and caches read-write when a model uses CUDA, nothing else.
pub(super) fn plan(config: &Config) -> Plan {
    let mut grants = Vec::new();
    let mut grant = |path: &Path, access, why, required| {
        grants.push(Grant {
            path: path.to_owned(),
            access,
            why,
            required,
        });
    };
    if let Some(dir) = config.runtime.library.parent() {
        grant(
            dir,
            read_only(),
            "ONNX Runtime libraries (runtime.library), loaded lazily",
            true,
        );
    }
    for dir in [
        &config.runtime.cuda_library_dir,
        &config.runtime.cudnn_library_dir,
    ]
    .into_iter()
    .flatten()
    {
        grant(
            dir,
            read_only(),
            "CUDA and cuDNN libraries, loaded lazily",
            true,
        );
    }
    let mut model_dirs: Vec<PathBuf> = config.models.iter().map(ModelConfig::dir).collect();
    model_dirs.sort();
    model_dirs.dedup();
    for dir in &model_dirs {
        grant(
            dir,
            read_only(),
            "model files and their external data",
            true,
        );
    }
    grant(
        Path::new("/etc/ld.so.cache"),
        AccessFs::ReadFile.into(),
        "dynamic loader cache",
        false,
    );
    for dir in ["/usr/lib", "/lib", "/lib64", "/usr/lib64"] {
        grant(
            Path::new(dir),
            read_only(),
            "system libraries the runtime loads lazily",
            false,
        );
    }
    grant(
        Path::new("/proc/cpuinfo"),
        AccessFs::ReadFile.into(),
        "ONNX Runtime: CPU features",
        false,
    );
    grant(
        Path::new("/sys/devices"),
        read_only(),
        "ONNX Runtime: CPU topology and hardware device discovery (read-only sysfs)",
        false,
    );
    grant(
        Path::new("/sys/bus/pci/devices"),
        read_only(),
        "ONNX Runtime: hardware device discovery",
        false,
    );
    let cuda = config.models.iter().any(|m| m.device == Device::Cuda);
    if cuda {
        let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
        for node in cuda_device_nodes() {
            grant(&node, device, "CUDA driver device node", false);
        }
        grant(
            Path::new("/proc/self/task"),
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
            "CUDA driver names its threads (cuInit fails with 304 otherwise)",
            true,
        );
        if let Some(dir) = &config.sandbox.cuda_cache_dir {
            let cache = AccessFs::from_all(ABI_PINNED)
                & !AccessFs::Execute
                & !AccessFs::MakeChar
                & !AccessFs::MakeBlock;
            grant(dir, cache, "CUDA JIT cache (sandbox.cuda_cache_dir)", true);
        }
    }
    let mut scopes = BitFlags::from(Scope::Signal);
    if !cuda {
        // CUDA creates and uses an abstract socket of its own; scoping them
        // is enabled only once that is verified on a GPU (docs/guide/hardening.md).
        scopes |= Scope::AbstractUnixSocket;
    }
    Plan { grants, scopes }
}

/// `/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools` and every
/// `/dev/nvidiaN`, as present now.
fn cuda_device_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let numbered = name
                .strip_prefix("nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let fixed = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"].contains(&name.as_str());
            (numbered || fixed).then(|| Path::new("/dev").join(name))
        })
        .collect();
    nodes.sort();
    nodes
}

/// Names of the rights in a set, for reports.
pub(super) fn access_names(access: BitFlags<AccessFs>) -> Vec<String> {
    access.iter().map(|a| format!("{a:?}")).collect()
}

/// Applies `plan` to this thread and every thread it creates later.
pub(super) fn apply(plan: &Plan, status: &StatusFile) -> Result<LandlockReport, SandboxError> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| SandboxError::new(STEP, format!("{what}: {e}"));
    let threads = status
        .read()
        .map_err(|e| fail("reading /proc/self/status", &e))?
        .threads;
    if threads != 1 {
        return Err(SandboxError::new(
            STEP,
            format!(
                "{threads} threads exist; Landlock before ABI 8 would not confine the other {}",
                threads - 1
            ),
        ));
    }
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI_PINNED))
        .and_then(|r| r.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp))
        .and_then(|r| r.scope(plan.scopes))
        .and_then(|r| r.create())
        .map_err(|e| {
            fail(
                &format!("creating a ruleset for ABI {}", ABI_PINNED as u32),
                &e,
            )
        })?;
    let mut rules = Vec::new();
    let mut skipped_missing = Vec::new();
    for grant in &plan.grants {
        let metadata = match std::fs::metadata(&grant.path) {
            Ok(metadata) => metadata,
            Err(_) if !grant.required => {
                skipped_missing.push(grant.path.clone());
                continue;
            }
            Err(e) => {
                return Err(fail(
                    &format!("{} ({})", grant.path.display(), grant.why),
                    &e,
                ));
            }
        };
        let access = if metadata.is_dir() {
            grant.access
        } else {
            grant.access & AccessFs::from_file(ABI_PINNED)
        };
        let fd =
            PathFd::new(&grant.path).map_err(|e| fail(&grant.path.display().to_string(), &e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| fail(&format!("rule for {}", grant.path.display()), &e))?;
        rules.push(RuleReport {
            path: grant.path.clone(),
            access: access_names(access),
            why: grant.why,
        });
    }
    let restricted = ruleset
        .restrict_self()
        .map_err(|e| fail("landlock_restrict_self", &e))?;
    if restricted.ruleset != RulesetStatus::FullyEnforced {
        return Err(SandboxError::new(
            STEP,
            format!("the kernel enforced only {:?}", restricted.ruleset),
        ));
    }
    Ok(LandlockReport {
        abi: ABI_PINNED as u32,
        status: "fully enforced",
        rules,
        skipped_missing,
        tcp: "bind and connect denied (handled, no rule)",
        scopes: plan.scopes.iter().map(|s| format!("{s:?}")).collect(),
    })
}
