//! The lockdown: the daemon confines itself however it is started, in the
//! order `docs/guide/hardening.md` gives and explains. Every step is verified and
//! a failed step is fatal, naming the step and the kernel's error.
#![forbid(unsafe_code)]

mod caps;
mod error;
pub mod inherited;
mod landlock;
mod privileges;
mod seccomp;
mod status;

pub use error::{PrepareError, SandboxError};

use std::fmt::Write as _;

use nix::unistd::{Gid, Uid};
use serde::Serialize;

use self::landlock::LandlockReport;
use self::privileges::Account;
use self::seccomp::SeccompReport;
use self::status::StatusFile;
use crate::config::{Config, Device, SeccompMode};

/// One step as done.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: &'static str,
    pub result: String,
}

/// What the lockdown did, logged at startup and served at
/// `GET /v2/health/hardening` with the kernel's current view beside it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub enforced: bool,
    pub steps: Vec<StepReport>,
    pub landlock: Option<LandlockReport>,
    pub seccomp: Option<SeccompReport>,
    /// The environment variables the daemon kept (`inherited::KEPT_VARIABLES`
    /// that were set); every other one was removed before the lockdown.
    pub environment: Vec<String>,
}

/// The lockdown for one configuration, prepared while the daemon may still
/// be root and has a single thread.
#[derive(Debug)]
pub struct Lockdown {
    enforce: bool,
    account: Option<Account>,
    cuda: bool,
    seccomp_mode: SeccompMode,
    status: StatusFile,
    report: Report,
}

impl Lockdown {
    /// Looks up `sandbox.user` (when root) and opens `/proc/self/status`.
    /// The error is a configuration problem: it names the key.
    pub fn prepare(config: &Config) -> Result<Self, PrepareError> {
        let status = StatusFile::open().map_err(|e| PrepareError {
            key: "sandbox",
            message: format!("cannot open /proc/self/status: {e}"),
        })?;
        let account = if config.sandbox.enforce && Uid::effective().is_root() {
            Some(
                privileges::account(&config.sandbox.user).map_err(|e| PrepareError {
                    key: "sandbox.user",
                    message: e.to_string(),
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            enforce: config.sandbox.enforce,
            account,
            cuda: config.models.iter().any(|m| m.device == Device::Cuda),
            seccomp_mode: config.sandbox.seccomp,
            status,
            report: Report {
                enforced: config.sandbox.enforce,
                steps: Vec::new(),
                landlock: None,
                seccomp: None,
                environment: Vec::new(),
            },
        })
    }

    fn record(&mut self, step: &'static str, result: String) {
        tracing::info!(step, result = %result, "lockdown");
        self.report.steps.push(StepReport { step, result });
    }

    /// Notes the variables left by `inherited::clear_environment`.
    pub fn set_environment(&mut self, kept: Vec<String>) {
        self.report.environment = kept;
    }

    /// Steps 2 to 6. Must run before any other thread exists (tokio, ONNX
    /// Runtime and CUDA all start threads): capabilities and Landlock are
    /// per thread, inherited only by threads created afterwards. The
    /// Landlock rules are made here from `config`, once each store model's
    /// version is resolved, so that they grant that version's directory.
    pub fn before_threads(&mut self, config: &Config, opened: String) -> Result<(), SandboxError> {
        self.record("1 prepare", opened);
        if !self.enforce {
            tracing::error!(
                "SANDBOX DISABLED (sandbox.enforce = false): no user switch, capabilities kept, no Landlock, no seccomp. \
                 For debugging only; never run like this in production"
            );
            return Ok(());
        }
        if self.account.is_some() {
            // Needs CAP_SETPCAP, which the user switch takes away.
            caps::drop_bounding()?;
        }
        let switched = privileges::switch_user(self.account.as_ref())?;
        self.record("2 switch user", switched);
        let restricted = privileges::restrict_process()?;
        self.record("3 no core dumps", restricted);
        let dropped = caps::drop_all()?;
        self.record("4 drop capabilities", dropped);
        let nnp = privileges::no_new_privs()?;
        self.record("5 no_new_privs", nnp);
        let landlock = landlock::apply(&landlock::plan(config), &self.status)?;
        self.record(
            "6 landlock",
            format!(
                "ABI {} {}; {} path rules; TCP bind and connect denied; scoped: {}",
                landlock.abi,
                landlock.status,
                landlock.rules.len(),
                landlock.scopes.join(", ")
            ),
        );
        self.report.landlock = Some(landlock);
        Ok(())
    }

    /// Step 8, once the runtime is built and the models are loaded: seccomp
    /// on every thread. Then checks the kernel's view of the whole result.
    pub fn after_load(&mut self) -> Result<(), SandboxError> {
        self.record(
            "7 runtime",
            "tokio, ONNX Runtime and every model loaded and warmed up".to_owned(),
        );
        if !self.enforce {
            return Ok(());
        }
        let seccomp = seccomp::apply(self.cuda, self.seccomp_mode)?;
        self.record(
            "8 seccomp",
            format!(
                "{} mode, {} variant, {} syscalls allowed, {} filters on every thread",
                seccomp.mode,
                seccomp.variant,
                seccomp.allowed_syscalls,
                seccomp.filters.len()
            ),
        );
        self.report.seccomp = Some(seccomp);
        let kernel = self.status.read().map_err(|e| {
            SandboxError::new("9 verify", format!("reading /proc/self/status: {e}"))
        })?;
        if !kernel.no_capabilities() || kernel.no_new_privs != "1" || kernel.seccomp != "2" {
            return Err(SandboxError::new(
                "9 verify",
                format!(
                    "the kernel reports {kernel:?}; expected no capabilities, NoNewPrivs 1, Seccomp 2"
                ),
            ));
        }
        self.record(
            "9 verify",
            format!(
                "kernel reports CapEff {} CapBnd {} NoNewPrivs {} Seccomp {} ({} filters)",
                kernel.cap_eff,
                kernel.cap_bnd,
                kernel.no_new_privs,
                kernel.seccomp,
                kernel.seccomp_filters
            ),
        );
        Ok(())
    }

    /// The service user's uid and gid, when the daemon was started as root
    /// and will switch to `sandbox.user`.
    pub fn switching_to(&self) -> Option<(Uid, Gid)> {
        self.account.as_ref().map(|a| (a.uid, a.gid))
    }

    /// The uid the daemon runs as once locked down.
    pub fn service_uid(&self) -> Uid {
        self.account.as_ref().map_or_else(Uid::current, |a| a.uid)
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The lockdown's outcome as `details` of the audit log's start event:
    /// `lockdown` (`enforced` or `off`), `landlock_abi`, `landlock_status`,
    /// `seccomp_mode` and `seccomp_filters`.
    pub fn audit_details(&self) -> Vec<(String, String)> {
        let r = &self.report;
        let mut details = vec![(
            "lockdown".to_owned(),
            if r.enforced { "enforced" } else { "off" }.to_owned(),
        )];
        if let Some(landlock) = &r.landlock {
            details.push(("landlock_abi".to_owned(), landlock.abi.to_string()));
            details.push(("landlock_status".to_owned(), landlock.status.to_owned()));
        }
        if let Some(seccomp) = &r.seccomp {
            details.push(("seccomp_mode".to_owned(), seccomp.mode.to_owned()));
            details.push((
                "seccomp_filters".to_owned(),
                seccomp.filters.len().to_string(),
            ));
        }
        details
    }

    pub fn status(&self) -> &StatusFile {
        &self.status
    }
}

/// `deepseekd print-policy`: the Landlock rules and the seccomp filters the
/// configuration would get.
pub fn describe(config: &Config) -> String {
    let plan = landlock::plan(config);
    let cuda = config.models.iter().any(|m| m.device == Device::Cuda);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Landlock: ABI {} required in full; every filesystem right of that ABI is denied except:",
        landlock::ABI_PINNED as u32
    );
    for grant in &plan.grants {
        let _ = writeln!(
            out,
            "  {:<40} {:<40} {}{}",
            grant.path.display(),
            landlock::access_names(grant.access).join(","),
            grant.why,
            if grant.required { "" } else { " (if present)" }
        );
    }
    let _ = writeln!(out, "  TCP bind and connect: denied (no rule)");
    let scopes: Vec<String> = plan.scopes.iter().map(|s| format!("{s:?}")).collect();
    let _ = writeln!(out, "  scoped to this process: {}", scopes.join(", "));
    if !config.sandbox.enforce {
        let _ = writeln!(out, "  NOT APPLIED: sandbox.enforce = false");
    }
    let (mismatch, family) = match config.sandbox.seccomp {
        SeccompMode::Enforce => ("kills the process", "fails with EAFNOSUPPORT"),
        SeccompMode::Log => (
            "is allowed and logged by the kernel (log mode)",
            "is allowed and logged (log mode)",
        ),
    };
    let _ = writeln!(
        out,
        "\nseccomp ({} variant, policies/seccomp/deepseekd.x86_64.json), on every thread after the models load:",
        if cuda { "cuda" } else { "cpu" }
    );
    let _ = writeln!(out, "  allowed (any other syscall {mismatch}):");
    let mut lists = vec!["allow"];
    if cuda {
        lists.push("allow_cuda");
    }
    for list in lists {
        for (syscall, args, comment) in seccomp::entries(list) {
            let name = if args {
                format!("{syscall} (restricted arguments)")
            } else {
                syscall
            };
            let _ = writeln!(out, "    {name:<38} {comment}");
        }
    }
    let _ = writeln!(out, "  fail with ENOSYS:");
    for (syscall, _, comment) in seccomp::entries("enosys") {
        let _ = writeln!(out, "    {syscall:<38} {comment}");
    }
    let _ = writeln!(out, "  socket() for any family but AF_UNIX {family}");
    out
}
