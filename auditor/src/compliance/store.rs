//! INTEG-MODEL-STORE: each stored model's active version came from a
//! bundle signed by a pinned release key, holds exactly the files that
//! bundle's manifest lists, and is what the running daemon serves.

use std::path::Path;

use deepseek_integrity::bundle::ReleaseKeys;
use deepseek_integrity::store::{self, Layout};

use super::check::Check;
use super::context::Context;
use super::finding::{Evidence, Finding, Undecided};
use super::integ::database_of;
use crate::entry::Event;

pub(crate) static CHECKS: &[Check] = &[Check {
    id: "INTEG-MODEL-STORE",
    title: "The active model versions are signed releases, as signed",
    rationale: "A model's origin is proven only by the release signature over its bundle's manifest; the version served must be that manifest's files, byte for byte, and the one activated, not one left over from before.",
    remediation: "Find the named version's import and activation in the audit log (`deepseek-audit log show`, events model_import and model_activate). Re-import the release from its signed bundle, or roll back (`deepseek-audit model rollback NAME`); restart deepseekd after an activation.",
    references: &["SI-7", "SI-7(1)", "SI-7(15)", "CM-14", "SR-4"],
    run: model_store,
}];

fn model_store(context: &Context) -> Result<Finding, Undecided> {
    let files = &context.profile.files;
    let root = &files.model_store;
    let names = store_names(root)?;
    if names.is_empty() {
        return Ok(Finding::not_applicable(
            format!("no models in the store {}", root.display()),
            vec![Evidence::new(
                root.display().to_string(),
                "no model directories",
                "models imported with deepseek-audit model import, if the store is used",
            )],
        ));
    }
    let (_, entries) = database_of(context)?;
    let keys = ReleaseKeys::from_dir(&files.release_keys)
        .map_err(|e| Undecided::Error(format!("{e} (files.release_keys of the profile)")))?;
    let layout = Layout::new(root).map_err(|e| Undecided::Error(e.to_string()))?;
    let served = served_versions(context);
    let mut evidence = Vec::new();
    let mut bad = Vec::new();
    for name in &names {
        let version = match store::active_version(entries, &layout, name) {
            Ok(version) => version,
            Err(e) => {
                bad.push(name.clone());
                evidence.push(Evidence::new(
                    layout.active(name).display().to_string(),
                    e.to_string(),
                    "a link to a version, as the signed database records it",
                ));
                continue;
            }
        };
        let expected = format!(
            "the manifest of {name} {version} signed by a key in {}, listing exactly the \
             database's files of {}",
            files.release_keys.display(),
            layout.version(name, &version).display()
        );
        let source = layout.origin(name, &version).display().to_string();
        match store::provenance(entries, &layout, &keys, name, &version) {
            Ok(proof) => evidence.push(Evidence::new(
                source,
                format!(
                    "{name} {version}: bundle sha256:{} signed by {}, {} files as recorded",
                    proof.bundle_sha256, proof.signer, proof.files
                ),
                expected,
            )),
            Err(e) => {
                bad.push(format!("{name} {version}"));
                evidence.push(Evidence::new(source, e.to_string(), expected));
            }
        }
        if let Some((seq, loaded)) = served
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(s, (_, v))| (s, v))
            && loaded != &version
        {
            bad.push(format!("{name} (serves {loaded})"));
            evidence.push(Evidence::new(
                format!("audit log entry {seq} (model_load of {name})"),
                format!("the running daemon serves {loaded}"),
                format!("the active version {version} (restart deepseekd after an activation)"),
            ));
        }
    }
    Ok(Finding::verdict(
        !bad.is_empty(),
        format!(
            "{} stored models: each active version is a signed release, as signed",
            names.len()
        ),
        format!("not as released: {}", bad.join(", ")),
        evidence,
    ))
}

/// The model directories of the store (none if it does not exist).
fn store_names(root: &Path) -> Result<Vec<String>, Undecided> {
    let read = match std::fs::read_dir(root) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Undecided::Error(format!(
                "cannot read {}: {e}",
                root.display()
            )));
        }
    };
    let mut names: Vec<String> = read
        .filter_map(Result::ok)
        .filter(|i| i.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|i| i.file_name().to_str().map(str::to_owned))
        .filter(|n| store::layout::check_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The versions the running daemon loaded, by entry: (seq, (model,
/// version)) from the `model_load` records after its start record. Empty
/// when no daemon runs or its records cannot be read: the store's own
/// proof stands on its own.
fn served_versions(context: &Context) -> Vec<(u64, (String, String))> {
    let Ok(daemon) = context.daemon() else {
        return Vec::new();
    };
    let Ok(Some((_, after))) = context.start_record(daemon.pid) else {
        return Vec::new();
    };
    after
        .iter()
        .take_while(|e| e.event != Event::Start)
        .filter(|e| e.event == Event::ModelLoad)
        .filter_map(|e| {
            let model = e.model.clone()?;
            let version = e.details.get("version")?.clone();
            Some((e.seq, (model, version)))
        })
        .collect()
}
