//! `deepseek-audit integrity-check`: runs the check `deepseek-integrity
//! check` runs (the integrity library's own code), prints the same report,
//! and records the result as an `integrity_check` entry through the audit
//! service, so that the daily timer's results, failed checks included,
//! are in the tamper-evident log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use deepseek_integrity::Format;
use deepseek_integrity::check::{self, CheckError, Checked};
use deepseek_integrity::config::Config;
use deepseek_integrity::digest::sha256_hex;

use crate::client;
use crate::entry::{Entry, Event};
use crate::exit::{self, fail};
use crate::service::ServiceConfig;

/// Shown after `integrity-check --help`; the same table is in
/// docs/guide/exit-codes.md.
pub(crate) const EXIT_CODES: &str = "\
Exit codes (deepseek-integrity check's own, once the result is recorded):
  0   no differences; recorded
  1-7 differences; recorded: the sum of 1 added, 2 removed, 4 changed
  17  the integrity configuration is invalid or unreadable; recorded
  18  a file could not be read; recorded
  24  the integrity database is missing or malformed; recorded
  25  interrupted (SIGINT, SIGTERM); recorded
  26  the database signature is missing, invalid or by another key; recorded
  64  bad command line
  74  the result was NOT recorded: the auditor is unreachable, refused the
      record or did not acknowledge it in time. Wins over every code above
      (the report or error was still printed)
  78  audit.toml is missing or invalid: nothing was checked or recorded";

/// Exit code when the result could not be recorded (EX_IOERR, as the
/// auditor's other write failures).
const NOT_RECORDED: u8 = exit::IO;

/// At most this many paths, and this many bytes of them, go into one
/// entry: the record stays far below the service's 1 MiB frame limit.
const MAX_PATHS: usize = 200;
const MAX_PATH_BYTES: usize = 64 * 1024;

/// How to run the check and record it.
#[derive(Debug)]
pub(crate) struct Options<'a> {
    /// `deepseek-integrity`'s configuration.
    pub(crate) integrity_config: &'a Path,
    pub(crate) format: Format,
    /// Hashing threads (default: one per CPU).
    pub(crate) jobs: Option<usize>,
    /// How long the auditor may take to acknowledge the record.
    pub(crate) timeout: Duration,
}

/// Runs the subcommand; `audit_config` is `audit.toml` (for the socket).
pub(crate) fn run(audit_config: &Path, options: &Options<'_>) -> ExitCode {
    let service = match ServiceConfig::load(audit_config) {
        Ok(service) => service,
        Err(e) => {
            return fail(
                exit::CONFIG,
                &format!("{e}: the integrity check was not run, as it could not be recorded"),
            );
        }
    };
    let (code, entry) = match Config::load(options.integrity_config) {
        Err(e) => failed(options.integrity_config, None, &CheckError::from(e)),
        Ok(config) => {
            let scan = check::scan_options(options.jobs, options.format == Format::Human);
            match check::interrupt_on_signals()
                .and_then(|interrupted| check::check(&config, &scan, &interrupted))
            {
                Err(e) => failed(options.integrity_config, Some(&config), &e),
                Ok(checked) => {
                    let d = &checked.differences;
                    let report = check::json("check", &config, checked.recorded, d);
                    let text = match options.format {
                        Format::Json => report.clone(),
                        Format::Human => check::human("check", &config, checked.recorded, d),
                    };
                    // The record matters more than the copy on stdout.
                    let mut stdout = std::io::stdout().lock();
                    if let Err(e) = stdout
                        .write_all(text.as_bytes())
                        .and_then(|()| stdout.flush())
                    {
                        eprintln!("deepseek-audit: warning: cannot print the report: {e}");
                    }
                    let entry = checked_entry(options.integrity_config, &config, &checked, &report);
                    (d.code(), entry)
                }
            }
        }
    };
    match client::append(&service.socket, &entry, options.timeout) {
        Ok(seq) => {
            eprintln!("deepseek-audit: integrity check (exit {code}) recorded as entry {seq}");
            ExitCode::from(code)
        }
        Err(e) => fail(
            NOT_RECORDED,
            &format!("the integrity check (exit {code}) was NOT recorded in the audit log: {e}"),
        ),
    }
}

/// A check that could not run: its error on stderr, and its record.
fn failed(integrity_config: &Path, config: Option<&Config>, error: &CheckError) -> (u8, Entry) {
    let code = error.exit() as u8;
    eprintln!("deepseek-audit: error: the integrity check failed (exit {code}): {error}");
    (code, failed_entry(integrity_config, config, error))
}

/// The details every record has: which configuration, database and key.
fn common(integrity_config: &Path, config: Option<&Config>, code: u8) -> Entry {
    let mut details = BTreeMap::new();
    details.insert(
        "integrity_config".to_owned(),
        integrity_config.display().to_string(),
    );
    if let Some(config) = config {
        details.insert("database".to_owned(), config.database.display().to_string());
        details.insert("verifier_key_id".to_owned(), config.verifier().id());
    }
    details.insert("exit_code".to_owned(), code.to_string());
    Entry {
        details,
        ..Entry::event(Event::IntegrityCheck)
    }
}

/// The record of a check that ran to its end: counts, the paths (capped),
/// and the SHA-256 of the JSON report (as `deepseek-integrity --format json
/// check` prints it, so a later run of the same state can be compared).
fn checked_entry(
    integrity_config: &Path,
    config: &Config,
    checked: &Checked,
    report: &str,
) -> Entry {
    let d = &checked.differences;
    let mut entry = common(integrity_config, Some(config), d.code());
    let details = &mut entry.details;
    let result = if d.is_empty() { "clean" } else { "differences" };
    details.insert("result".to_owned(), result.to_owned());
    details.insert("entries".to_owned(), checked.recorded.to_string());
    details.insert("added".to_owned(), d.added.len().to_string());
    details.insert("removed".to_owned(), d.removed.len().to_string());
    details.insert("changed".to_owned(), d.changed.len().to_string());
    details.insert("report_sha256".to_owned(), sha256_hex(report.as_bytes()));
    // Changed first: those are the files someone altered. The lists keep
    // the first paths that fit; `paths_omitted` counts the rest.
    let (mut count, mut bytes, mut omitted) = (0, 0, 0);
    let lists: [(&str, Vec<String>); 3] = [
        (
            "changed_paths",
            d.changed.iter().map(|c| c.path.clone()).collect(),
        ),
        (
            "removed_paths",
            d.removed
                .iter()
                .map(|e| e.path.display().to_string())
                .collect(),
        ),
        (
            "added_paths",
            d.added
                .iter()
                .map(|e| e.path.display().to_string())
                .collect(),
        ),
    ];
    for (key, paths) in lists {
        let mut kept = Vec::new();
        for path in paths {
            if omitted == 0 && count < MAX_PATHS && bytes + path.len() <= MAX_PATH_BYTES {
                count += 1;
                bytes += path.len();
                kept.push(path);
            } else {
                omitted += 1;
            }
        }
        if !kept.is_empty() {
            // A JSON array: a path may hold any character but NUL.
            details.insert(
                key.to_owned(),
                serde_json::to_string(&kept).expect("strings serialize"),
            );
        }
    }
    if omitted > 0 {
        details.insert("paths_omitted".to_owned(), omitted.to_string());
    }
    entry
}

/// The record of a check that could not run: its exit code and why.
fn failed_entry(integrity_config: &Path, config: Option<&Config>, error: &CheckError) -> Entry {
    let mut entry = common(integrity_config, config, error.exit() as u8);
    entry
        .details
        .insert("result".to_owned(), "error".to_owned());
    entry.details.insert("error".to_owned(), error.to_string());
    entry
}

#[cfg(test)]
mod tests {
    use deepseek_integrity::compare::{Changed, Differences};
    use deepseek_integrity::entry::{Attributes, Entry as Recorded, Kind};

    use super::*;

    fn config() -> Config {
        Config::parse(
            Path::new("/etc/deepseek/integrity.toml"),
            "database = \"/var/lib/deepseek/integrity.db\"\n\
             verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"\n\
             [[rule]]\npath = \"/etc/deepseek\"\n",
        )
        .expect("config")
    }

    fn recorded(path: String) -> Recorded {
        Recorded {
            path: path.into(),
            kind: Kind::File,
            attrs: Attributes::default(),
        }
    }

    #[test]
    fn the_paths_are_capped_far_below_the_frame_limit() {
        let long = "/x".repeat(2000);
        let d = Differences {
            added: (0..300).map(|i| recorded(format!("{long}/{i}"))).collect(),
            removed: vec![recorded("/etc/deepseek/gone".into())],
            changed: vec![Changed {
                path: "/etc/deepseek/a.conf".into(),
                changes: vec![],
            }],
        };
        let checked = Checked {
            recorded: 9,
            current: vec![],
            differences: d,
        };
        let config = config();
        let entry = checked_entry(
            Path::new("/etc/deepseek/integrity.toml"),
            &config,
            &checked,
            "{}\n",
        );
        assert!(
            entry.encode().len() < 128 * 1024,
            "{}",
            entry.encode().len()
        );
        let details = &entry.details;
        assert_eq!(details["exit_code"], "7");
        assert_eq!(details["result"], "differences");
        assert_eq!(details["added"], "300");
        assert_eq!(details["changed_paths"], r#"["/etc/deepseek/a.conf"]"#);
        assert_eq!(details["removed_paths"], r#"["/etc/deepseek/gone"]"#);
        let added: Vec<String> = serde_json::from_str(&details["added_paths"]).expect("json");
        assert_eq!(added.len(), 16, "64 KiB of 4 KiB paths");
        assert_eq!(details["paths_omitted"], "284");
        assert_eq!(
            details["report_sha256"],
            "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"
        );
    }
}
