//! `xtask man OUT_DIR`, run as the real binary: a page for every command of
//! the four CLIs (the expected list is walked from their clap definitions,
//! so a new subcommand without a page fails here), the right header on
//! each, and pages that groff renders without a warning.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};

use clap::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// One expected page.
#[derive(Debug)]
struct Page {
    /// `deepseek-audit-log-verify`
    name: String,
    /// `deepseek-audit log verify`
    usage: String,
    /// `deepseek-audit`
    binary: String,
    version: String,
    /// `8`, or `1` for the users' `deepseek`.
    section: &'static str,
    after_help: Option<String>,
    /// The pages below this one.
    descendants: Vec<String>,
}

fn binaries() -> [(Command, &'static str); 4] {
    [
        (deepseekd::command(), "8"),
        (deepseek_audit::command(), "8"),
        (deepseek_integrity::command(), "8"),
        (deepseek_client::command(), "1"),
    ]
}

/// Every command of the unbuilt tree (so clap's generated `help` is not in
/// it yet; a `help` of our own would have no page either), hidden ones
/// excepted.
fn walk(cmd: &Command, name: &str, usage: &str, of: &Page, out: &mut Vec<Page>) {
    let index = out.len();
    out.push(Page {
        name: name.to_owned(),
        usage: usage.to_owned(),
        binary: of.binary.clone(),
        version: of.version.clone(),
        section: of.section,
        after_help: cmd.get_after_help().map(ToString::to_string),
        descendants: Vec::new(),
    });
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        let sub_name = format!("{name}-{}", sub.get_name());
        let sub_usage = format!("{usage} {}", sub.get_name());
        walk(sub, &sub_name, &sub_usage, of, out);
    }
    let below: Vec<String> = out[index + 1..].iter().map(|p| p.name.clone()).collect();
    out[index].descendants = below;
}

fn expected_pages() -> Vec<Page> {
    let mut pages = Vec::new();
    for (cmd, section) in binaries() {
        let name = cmd.get_name().to_owned();
        let binary = Page {
            name: name.clone(),
            usage: name.clone(),
            binary: name.clone(),
            version: cmd.get_version().expect("a version").to_owned(),
            section,
            after_help: None,
            descendants: Vec::new(),
        };
        walk(&cmd, &name, &name, &binary, &mut pages);
    }
    pages
}

fn xtask(args: &[&str]) -> Output {
    Process::new(XTASK)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1767225600") // 2026-01-01
        .output()
        .expect("xtask runs")
}

fn generate(dir: &Path) -> Vec<PathBuf> {
    let out = xtask(&["man", dir.to_str().expect("a UTF-8 temp dir")]);
    assert!(
        out.status.success(),
        "xtask man failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<PathBuf> = fs::read_dir(dir)
        .expect("the output dir")
        .map(|e| e.expect("a dir entry").path())
        .collect();
    pages.sort();
    pages
}

/// roff's escaping of a text, as the pages carry it.
fn roff(text: &str) -> String {
    text.replace('-', "\\-")
}

fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    let start = page
        .find(&format!(".SH {heading}\n"))
        .unwrap_or_else(|| panic!("no {heading} section in\n{page}"));
    let body = &page[start..];
    let end = body[4..].find("\n.SH ").map_or(body.len(), |i| i + 5);
    &body[..end]
}

#[test]
fn every_command_has_a_page_with_its_name_section_and_version() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let written = generate(dir.path());
    let expected = expected_pages();

    let written_names: BTreeSet<String> = written
        .iter()
        .map(|p| {
            p.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected_names: BTreeSet<String> = expected
        .iter()
        .map(|p| format!("{}.{}", p.name, p.section))
        .collect();
    assert_eq!(written_names, expected_names);
    for must in [
        "deepseekd.8",
        "deepseekd-serve.8",
        "deepseekd-check-config.8",
        "deepseekd-print-policy.8",
        "deepseek-audit.8",
        "deepseek-audit-verify.8",
        "deepseek-audit-log.8",
        "deepseek-audit-log-verify.8",
        "deepseek-audit-log-check-proof.8",
        "deepseek-integrity.8",
        "deepseek-integrity-check.8",
        "deepseek.1",
        "deepseek-chat.1",
    ] {
        assert!(
            written_names.contains(must),
            "{must} missing: {written_names:?}"
        );
    }

    let binaries: Vec<(String, &str)> = binaries()
        .iter()
        .map(|(c, section)| (c.get_name().to_owned(), *section))
        .collect();
    for page in &expected {
        let path = dir.path().join(format!("{}.{}", page.name, page.section));
        let text = fs::read_to_string(&path).expect("the page");
        let th = format!(
            ".TH {} {} 2026-01-01 \"{} {}\" \"deepseek appliance\"\n",
            page.name, page.section, page.binary, page.version
        );
        assert!(text.contains(&th), "{}: no `{th}` in\n{text}", page.name);
        assert!(
            section(&text, "NAME").starts_with(&format!(".SH NAME\n{} \\- ", roff(&page.name))),
            "{}",
            page.name
        );
        assert!(
            section(&text, "SYNOPSIS").contains(&format!("\\fB{}\\fR", roff(&page.usage))),
            "{}: synopsis\n{text}",
            page.name
        );
        assert!(
            section(&text, "VERSION").contains(&roff(&format!("{} {}", page.binary, page.version))),
            "{}",
            page.name
        );
        assert!(
            !text.contains("\\fBhelp\\fR"),
            "{}: lists clap's help subcommand",
            page.name
        );

        // SEE ALSO: the pages below; on a binary's page the other binaries,
        // on a subcommand's its binary's page.
        let see_also = section(&text, "\"SEE ALSO\"");
        let mut refs: Vec<(String, &str)> = page
            .descendants
            .iter()
            .map(|d| (d.clone(), page.section))
            .collect();
        if page.name == page.binary {
            refs.extend(binaries.iter().filter(|(b, _)| *b != page.binary).cloned());
        } else {
            refs.push((page.binary.clone(), page.section));
        }
        for (r, section) in refs {
            assert!(
                see_also.contains(&format!("\\fB{}\\fR({section})", roff(&r))),
                "{}: SEE ALSO lacks {r}:\n{see_also}",
                page.name
            );
        }

        // An exit code table after --help is an EXIT STATUS entry per code.
        if let Some(table) = page
            .after_help
            .as_deref()
            .filter(|t| t.starts_with("Exit codes"))
        {
            let status = section(&text, "\"EXIT STATUS\"");
            for line in table.lines().skip(1).filter(|l| !l.starts_with("   ")) {
                let code = line.split_whitespace().next().expect("a code");
                assert!(
                    status.contains(&format!(".TP\n\\fB{}\\fR\n", roff(code))),
                    "{}: EXIT STATUS lacks {code}:\n{status}",
                    page.name
                );
            }
        }
    }

    // The configuration file's default is under FILES.
    let daemon = fs::read_to_string(dir.path().join("deepseekd.8")).expect("deepseekd.8");
    assert!(
        section(&daemon, "FILES").contains("/etc/deepseek/deepseekd.toml"),
        "{daemon}"
    );
}

#[test]
fn groff_renders_every_page_without_a_warning() {
    let has_groff = Process::new("sh")
        .args(["-c", "command -v groff"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_groff {
        println!("skipped: groff is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let pages = generate(dir.path());
    assert!(!pages.is_empty());
    for page in pages {
        let out = Process::new("groff")
            .args(["-man", "-ww", "-z", "-T", "utf8"])
            .arg(&page)
            .output()
            .expect("groff runs");
        assert!(
            out.status.success(),
            "{}: groff {:?}",
            page.display(),
            out.status
        );
        assert!(
            out.stderr.is_empty(),
            "{}: groff warns:\n{}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn wrong_usage_prints_usage_and_exits_64() {
    for args in [&[][..], &["man"], &["man", "a", "b"], &["pages", "out"]] {
        let out = xtask(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("usage: cargo run -p xtask -- man OUT_DIR"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    let help = xtask(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: "));
}

#[test]
fn an_unwritable_output_dir_is_an_error() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("file");
    fs::write(&file, "").expect("a file");
    let out = xtask(&["man", file.join("pages").to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("xtask: error: cannot create "),
        "{stderr}"
    );
}
