//! Why the lockdown could not be prepared or applied.

/// A lockdown step that could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("lockdown step {step} failed: {reason}")]
pub struct SandboxError {
    pub step: &'static str,
    pub reason: String,
}

impl SandboxError {
    pub fn new(step: &'static str, reason: String) -> Self {
        Self { step, reason }
    }
}

/// The lockdown cannot be prepared: a configuration problem, naming its
/// key (`sandbox.user`), or `/proc/self/status` unreadable (`sandbox`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PrepareError {
    pub key: &'static str,
    pub message: String,
}
