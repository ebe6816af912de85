//! INTEG: the binaries, configuration and models are the ones recorded in
//! the signed integrity database, on disk and in the running daemon.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::check::Check;
use super::context::Context;
use super::finding::{Evidence, Finding, Undecided};
use super::procfs;

pub(crate) static CHECKS: &[Check] = &[
    Check {
        id: "INTEG-SIGNATURE",
        title: "The integrity database is signed by the pinned key",
        rationale: "Every other integrity result rests on the database; a database that is missing, altered or signed by another key proves nothing.",
        remediation: "Find out who changed the database (the audit log, the journal). Rebuild it from known-good media with `deepseek-integrity init` and the offline signing key. Never re-sign a system you have not reviewed.",
        references: &["SI-7", "SI-7(1)", "SI-7(6)"],
        run: signature,
    },
    Check {
        id: "INTEG-FILES",
        title: "Every recorded file matches the database",
        rationale: "Binaries, libraries, configuration and models must be the reviewed ones; any added, removed or changed file is an unreviewed change to the appliance.",
        remediation: "Review each named change (`deepseek-integrity check`). Restore the file from known-good media, or accept a reviewed change with `deepseek-integrity update`.",
        references: &["SI-7", "SI-7(1)", "CM-3", "CM-5"],
        run: files,
    },
    Check {
        id: "INTEG-DAEMON-EXE",
        title: "The running daemon's executable matches the database",
        rationale: "A binary replaced on disk after start, or a daemon started from another file, passes a file check but is not the reviewed program; /proc/PID/exe is the file the kernel actually runs.",
        remediation: "Stop the daemon, restore the recorded binary (or start the recorded one), and restart it with `systemctl restart deepseekd`.",
        references: &["SI-7", "SI-7(1)", "CM-14"],
        run: daemon_exe,
    },
    Check {
        id: "INTEG-MODELS",
        title: "The models the daemon loaded match the database",
        rationale: "The daemon records each model's database digest in the audit log when it loads it; a digest that differs from today's database means the daemon serves a model nobody reviewed.",
        remediation: "Restart the daemon so that it loads (and verifies) the models in the current database, and find out why the database changed after it started.",
        references: &["SI-7", "SI-7(1)", "AU-10"],
        run: models,
    },
];

pub(super) fn database_of(
    context: &Context,
) -> Result<
    (
        &super::context::Integrity,
        &[deepseek_integrity::entry::Entry],
    ),
    Undecided,
> {
    let integrity = context.integrity()?;
    match &integrity.database {
        Ok(entries) => Ok((integrity, entries)),
        Err(e) => Err(Undecided::Error(format!(
            "the integrity database is not usable (INTEG-SIGNATURE): {e}"
        ))),
    }
}

fn signature(context: &Context) -> Result<Finding, Undecided> {
    let integrity = context.integrity()?;
    let source = integrity.config.database.display().to_string();
    let expected = format!("a database signed by {}", integrity.config.verifier().id());
    Ok(match &integrity.database {
        Ok(entries) => Finding::pass(
            format!(
                "{} entries signed by {}",
                entries.len(),
                integrity.config.verifier().id()
            ),
            vec![Evidence::new(
                source,
                format!(
                    "valid signature by {}, {} entries",
                    integrity.config.verifier().id(),
                    entries.len()
                ),
                expected,
            )],
        ),
        Err(e) if e.is_signature() => Finding::fail(
            e.to_string(),
            vec![Evidence::new(source, e.to_string(), expected)],
        ),
        Err(deepseek_integrity::database::DatabaseError::Read { path, source }) => {
            return Err(procfs::denied_or_error(path, source));
        }
        Err(e) => Finding::fail(
            e.to_string(),
            vec![Evidence::new(source, e.to_string(), expected)],
        ),
    })
}

fn files(context: &Context) -> Result<Finding, Undecided> {
    let (integrity, recorded) = database_of(context)?;
    let options = deepseek_integrity::scan::Options {
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        progress: false,
    };
    let current =
        deepseek_integrity::scan::scan(&integrity.config, &options, &AtomicBool::new(false))
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("Permission denied") {
                    Undecided::NeedsRoot(text)
                } else {
                    Undecided::Error(text)
                }
            })?;
    let d = deepseek_integrity::compare::compare(recorded, &current);
    let source = |path: &Path| path.display().to_string();
    let mut evidence: Vec<Evidence> = Vec::new();
    for entry in &d.added {
        evidence.push(Evidence::new(
            source(&entry.path),
            format!("present ({})", entry.kind.name()),
            "absent (not in the database)",
        ));
    }
    for entry in &d.removed {
        evidence.push(Evidence::new(
            source(&entry.path),
            "absent",
            format!("present ({})", entry.kind.name()),
        ));
    }
    for changed in &d.changed {
        for change in &changed.changes {
            evidence.push(Evidence::new(
                format!("{} ({})", changed.path, change.attribute),
                change.new.clone(),
                change.old.clone(),
            ));
        }
    }
    if d.is_empty() {
        evidence.push(Evidence::new(
            source(&integrity.config.database),
            format!("{} entries, all matching", recorded.len()),
            "no differences",
        ));
    }
    Ok(Finding::verdict(
        !d.is_empty(),
        format!("{} entries match", recorded.len()),
        format!(
            "{} added, {} removed, {} changed",
            d.added.len(),
            d.removed.len(),
            d.changed.len()
        ),
        evidence,
    ))
}

fn daemon_exe(context: &Context) -> Result<Finding, Undecided> {
    let daemon = context.daemon()?;
    let (integrity, recorded) = database_of(context)?;
    let link = PathBuf::from(format!("/proc/{}/exe", daemon.pid));
    let target = std::fs::read_link(&link).map_err(|e| procfs::denied_or_error(&link, &e))?;
    // A binary deleted or replaced since the start reads "PATH (deleted)".
    let text = target.to_string_lossy();
    let path = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text));
    let Some(entry) = recorded.iter().find(|e| e.path == path) else {
        return Ok(Finding::fail(
            format!("{} is not in the integrity database", path.display()),
            vec![Evidence::new(
                link.display().to_string(),
                format!("{} ({})", target.display(), daemon.found_by),
                format!("a file recorded in {}", integrity.config.database.display()),
            )],
        ));
    };
    let Some(expected) = entry.attrs.sha256 else {
        return Err(Undecided::Error(format!(
            "{} records no SHA-256 for {} (its rule must record the plain digest)",
            integrity.config.database.display(),
            path.display()
        )));
    };
    // The file the kernel runs, even when the path now names another.
    let running = deepseek_integrity::digest::sha256_file(&link)
        .map_err(|e| Undecided::Error(e.to_string()))?;
    let hex = deepseek_integrity::digest::hex;
    Ok(Finding::verdict(
        running != expected,
        format!("pid {} runs the recorded {}", daemon.pid, path.display()),
        format!(
            "pid {} runs a {} that is not the recorded one",
            daemon.pid,
            target.display()
        ),
        vec![Evidence::new(
            format!(
                "sha256 of {} -> {} ({})",
                link.display(),
                target.display(),
                daemon.found_by
            ),
            hex(&running),
            hex(&expected),
        )],
    ))
}

fn models(context: &Context) -> Result<Finding, Undecided> {
    let daemon = context.daemon()?;
    let (integrity, recorded) = database_of(context)?;
    let Some((start, loads)) = context.model_loads(daemon.pid)? else {
        return Ok(Finding::no_start_record(daemon.pid));
    };
    let mut evidence = Vec::new();
    let mut bad = Vec::new();
    for load in loads {
        let model = load.model.clone().unwrap_or_default();
        let path = load.details.get("path").map(PathBuf::from);
        let now = path
            .as_ref()
            .and_then(|p| recorded.iter().find(|e| &e.path == p))
            .and_then(|e| e.attrs.digest_text());
        let loaded = load
            .model_sha256
            .clone()
            .unwrap_or_else(|| "none (loaded unverified)".to_owned());
        let expected = now.clone().unwrap_or_else(|| {
            format!(
                "a digest recorded in {}",
                integrity.config.database.display()
            )
        });
        if now.as_ref() != load.model_sha256.as_ref() || now.is_none() {
            bad.push(model.clone());
        }
        evidence.push(Evidence::new(
            format!(
                "audit log entry {} (model_load of {model}, {})",
                load.seq,
                path.map_or_else(
                    || "no path recorded".to_owned(),
                    |p| p.display().to_string()
                )
            ),
            loaded,
            expected,
        ));
    }
    if evidence.is_empty() {
        return Ok(Finding::fail(
            format!(
                "pid {} recorded no model load after its start (entry {})",
                daemon.pid, start.seq
            ),
            vec![Evidence::new(
                format!("audit log after entry {}", start.seq),
                "no model_load",
                "one model_load per model",
            )],
        ));
    }
    Ok(Finding::verdict(
        !bad.is_empty(),
        format!(
            "{} models loaded by pid {} match the database",
            evidence.len(),
            daemon.pid
        ),
        format!(
            "loaded digests differ from the database: {}",
            bad.join(", ")
        ),
        evidence,
    ))
}
