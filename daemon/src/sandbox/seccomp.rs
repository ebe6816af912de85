//! Step 8: the seccomp allow-list, compiled from
//! `policies/seccomp/deepseekd.x86_64.json` to BPF by `build.rs`, and
//! applied to every thread at once (TSYNC) after the models are loaded.

use seccompiler::{BpfProgram, sock_filter};
use serde::Serialize;
use serde_json::Value;

use super::error::SandboxError;
use crate::config::SeccompMode;

/// The reviewed policy, embedded for `print-policy` and the report.
pub(super) const POLICY_JSON: &str =
    include_str!("../../../policies/seccomp/deepseekd.x86_64.json");

/// One BPF instruction as `build.rs` writes it: `(code, jt, jf, k)`.
type Instruction = (u16, u8, u8, u32);

/// One build variant: three stacked BPF filters, `(name, instructions)`.
pub(crate) struct Program {
    cuda: bool,
    log: bool,
    /// Distinct syscalls in the allow-list (some of them then answered ENOSYS).
    allowed: usize,
    filters: &'static [(&'static str, &'static [Instruction])],
}

include!(concat!(env!("OUT_DIR"), "/seccomp_programs.rs"));

const STEP: &str = "8 seccomp";

/// One installed filter, for the hardening report.
#[derive(Debug, Clone, Serialize)]
pub struct FilterReport {
    pub name: &'static str,
    pub instructions: usize,
}

/// What was installed.
#[derive(Debug, Clone, Serialize)]
pub struct SeccompReport {
    pub mode: &'static str,
    pub variant: &'static str,
    pub allowed_syscalls: usize,
    pub filters: Vec<FilterReport>,
}

fn program(cuda: bool, mode: SeccompMode) -> &'static Program {
    let log = mode == SeccompMode::Log;
    PROGRAMS
        .iter()
        .find(|p| p.cuda == cuda && p.log == log)
        .expect("build.rs generates every variant")
}

/// The policy's entries in `list`, as (syscall, has argument conditions, comment).
pub(super) fn entries(list: &str) -> Vec<(String, bool, String)> {
    let policy: Value = serde_json::from_str(POLICY_JSON).expect("build.rs validated the policy");
    policy[list]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["syscall"].as_str().unwrap_or_default().to_owned(),
                        e.get("args").is_some(),
                        e["comment"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Installs the filters on every thread. The allow-list goes last: once it
/// is in, `seccomp` itself is no longer allowed.
pub(super) fn apply(cuda: bool, mode: SeccompMode) -> Result<SeccompReport, SandboxError> {
    let program = program(cuda, mode);
    let mut filters = Vec::new();
    for name in ["enosys", "eafnosupport", "allow"] {
        let (_, instructions) = program
            .filters
            .iter()
            .find(|(n, _)| *n == name)
            .expect("build.rs generates every filter");
        let bpf: BpfProgram = instructions
            .iter()
            .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
            .collect();
        seccompiler::apply_filter_all_threads(&bpf).map_err(|e| {
            SandboxError::new(STEP, format!("installing the {name:?} filter (TSYNC): {e}"))
        })?;
        filters.push(FilterReport {
            name,
            instructions: bpf.len(),
        });
    }
    Ok(SeccompReport {
        mode: match mode {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
        },
        variant: if cuda { "cuda" } else { "cpu" },
        allowed_syscalls: program.allowed,
        filters,
    })
}
