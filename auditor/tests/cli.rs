//! Until its issue lands, `deepseek-audit` answers only --help and --version
//! and refuses everything else, so nobody mistakes it for a working tool.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_deepseek-audit"))
        .args(args)
        .output()
        .expect("run deepseek-audit");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[test]
fn help_and_version_succeed_and_say_it_is_not_implemented() {
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("not yet implemented"), "{help}");
    let (code, version) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        version.trim(),
        format!("deepseek-audit {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn anything_else_is_refused_with_64() {
    let (code, text) = run(&[]);
    assert_eq!(code, Some(64));
    assert!(
        text.contains("implements only --help and --version"),
        "{text}"
    );
    let (code, _) = run(&["verify"]);
    assert_eq!(code, Some(64));
}
