//! The four report formats of `deepseek-audit verify`, as snapshots (times,
//! the host name, temporary paths and the version filtered out), and the
//! JUnit and SARIF reports validated against their published schemas
//! (tests/schemas/: the Jenkins JUnit XSD with xmllint, the OASIS SARIF
//! 2.1.0 JSON schema with Python's jsonschema).
//!
//! One run covers every result kind: pass, fail (an interface brought up in
//! a fresh network namespace), error (a missing daemon configuration),
//! notapplicable (systemd is not PID 1) and notselected.

use std::fs;
use std::path::Path;
use std::process::Command;

use deepseek_tests::{Auditor, binary, is_root, python, workspace};
use nix::sys::signal::Signal;

/// The reports of one scenario, in the four formats.
fn reports(dir: &Path) -> Vec<(&'static str, String)> {
    let mut auditor = Auditor::start(&dir.join("audit"));
    auditor.stop(Signal::SIGTERM);
    let profile = dir.join("compliance.toml");
    fs::write(
        &profile,
        format!(
            "[files]\ndaemon_config = \"{}\"\n\n[checks]\nselect = [\"AIRGAP-INTERFACES\", \"AIRGAP-ROUTES\", \"AIRGAP-SOCKETS\", \"AUDIT-LOG\", \"HARDEN-SOCKET\", \"HARDEN-SYSTEMD\"]\n",
            dir.join("missing.toml").display()
        ),
    )
    .expect("profile");
    ["text", "json", "junit", "sarif"]
        .into_iter()
        .map(|format| {
            let verify = format!(
                "{} -c {} verify --profile {} --format {format}",
                binary("deepseek-audit").display(),
                auditor.config.display(),
                profile.display()
            );
            let output = Command::new("unshare")
                .args([
                    "-n",
                    "sh",
                    "-ec",
                    &format!(
                        "ip link add dsk0 type veth peer name dsk1\nip link set dsk0 up\nexec {verify}"
                    ),
                ])
                .output()
                .expect("unshare");
            assert_eq!(
                output.status.code(),
                Some(2),
                "{format}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            (format, String::from_utf8(output.stdout).expect("utf-8"))
        })
        .collect()
}

fn netns_root() -> bool {
    let ok = is_root()
        && Command::new("unshare")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipped: needs root and `unshare -n` to bring an interface up in a fresh network namespace"
        );
    }
    ok
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .expect("hostname")
}

#[test]
fn the_four_formats_match_their_snapshots() {
    if !netns_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = regex::escape(&dir.path().display().to_string());
    let host = regex::escape(&host_name());
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&tmp, "[TMP]");
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]");
    settings.add_filter(&format!(r"\b{host}\b"), "[HOST]");
    settings.add_filter(&regex::escape(env!("CARGO_PKG_VERSION")), "[VERSION]");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for (format, report) in reports(dir.path()) {
            insta::assert_snapshot!(format!("verify-{format}"), report);
        }
    });
}

#[test]
fn junit_and_sarif_reports_validate_against_their_schemas() {
    if !netns_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let schemas = workspace().join("tests/schemas");
    for (format, report) in reports(dir.path()) {
        let file = dir.path().join(format!("report.{format}"));
        fs::write(&file, &report).expect("report");
        let output = match format {
            "junit" => Command::new("xmllint")
                .args(["--noout", "--schema"])
                .arg(schemas.join("junit.xsd"))
                .arg(&file)
                .output()
                .expect("xmllint (Debian: libxml2-utils; make test installs it)"),
            "sarif" => Command::new(python(&["jsonschema"]))
                .args([
                    "-c",
                    "import json, sys, jsonschema\n\
                     schema = json.load(open(sys.argv[1]))\n\
                     jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker()).validate(json.load(open(sys.argv[2])))",
                ])
                .arg(schemas.join("sarif-schema-2.1.0.json"))
                .arg(&file)
                .output()
                .expect("python"),
            _ => continue,
        };
        assert!(
            output.status.success(),
            "the {format} report does not validate: {}{}\n{report}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // And the validators do reject a report that breaks the schema.
    let broken = dir.path().join("broken.xml");
    fs::write(&broken, "<testsuites><testsuite name=\"x\"/></testsuites>").expect("write");
    let status = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(schemas.join("junit.xsd"))
        .arg(&broken)
        .output()
        .expect("xmllint")
        .status;
    assert!(
        !status.success(),
        "a testsuite without counts must not validate"
    );
}
