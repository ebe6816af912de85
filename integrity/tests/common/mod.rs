//! What the integration tests share: the real binary, run.

use std::process::Command;

/// `deepseek-integrity ARGS`: its exit code and its output (stdout, then
/// stderr).
pub(crate) fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_deepseek-integrity"))
        .args(args)
        .output()
        .expect("run deepseek-integrity");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}
