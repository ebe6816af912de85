//! INTEG-MODEL-STORE: each stored model's active version came from a
//! bundle signed by a pinned release key, holds exactly the files that
//! bundle's manifest lists, and is what the running daemon serves.

use deepseek_integrity::bundle::ReleaseKeys;
use deepseek_integrity::store::{self, Layout};

use super::check::Check;
use super::context::Context;
use super::finding::{Evidence, Finding, Undecided};
use super::integ::database_of;

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
    let names = store::layout::model_names(root).map_err(|e| Undecided::Error(e.to_string()))?;
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
        if let Some(loaded) = served.iter().find(|s| &s.model == name)
            && loaded.version != version
        {
            bad.push(format!("{name} (serves {})", loaded.version));
            evidence.push(Evidence::new(
                format!("audit log entry {} (model_load of {name})", loaded.seq),
                format!("the running daemon serves {}", loaded.version),
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

/// The versions the running daemon loaded, by entry: (seq, (model,
/// version)) from the `model_load` records after its start record. Empty
/// when no daemon runs or its records cannot be read: the store's own
/// proof stands on its own.
fn served_versions(context: &Context) -> Vec<Served> {
    let Ok(daemon) = context.daemon() else {
        return Vec::new();
    };
    let Ok(Some((_, loads))) = context.model_loads(daemon.pid) else {
        return Vec::new();
    };
    loads
        .into_iter()
        .filter_map(|e| {
            Some(Served {
                seq: e.seq,
                model: e.model.clone()?,
                version: e.details.get("version")?.clone(),
            })
        })
        .collect()
}

/// A version the running daemon loaded, by its `model_load` record.
struct Served {
    seq: u64,
    model: String,
    version: String,
}
