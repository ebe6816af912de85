//! What is checked before anything is loaded: the configuration, the
//! groups and user it names, and the files the lockdown will need.
//! `deepseekd check-config` runs these and stops.

use std::path::Path;

use nix::unistd::{Gid, Uid};

use super::startup::{load_database, resolve_store};
use crate::config::{Config, ConfigError};
use crate::engine;
use crate::exit::Exit;
use crate::sandbox;
use crate::server::peer::{AccessPolicy, UnknownGroup, resolve_group};

/// Prints an error the way every failure before logging starts is reported.
pub(super) fn report(error: &dyn std::fmt::Display) {
    eprintln!("deepseekd: error: {error}");
}

pub(crate) fn load_config(path: &Path) -> Result<Config, Exit> {
    Config::load(path).map_err(|e| {
        report(&e);
        if e.is_unreadable() {
            Exit::NoConfig
        } else {
            Exit::Config
        }
    })
}

/// Resolves the groups the configuration names: the allow-list and the
/// socket's group. A missing group is a configuration error naming the file.
pub(super) fn resolve_groups(
    path: &Path,
    config: &Config,
    own_uid: Uid,
) -> Result<(AccessPolicy, Option<Gid>), ConfigError> {
    let in_file = |e: UnknownGroup| ConfigError::Semantic {
        path: path.to_owned(),
        key: e.key.to_owned(),
        message: e.to_string(),
    };
    let access = AccessPolicy::from_config(&config.server, own_uid).map_err(in_file)?;
    let socket_group = config
        .server
        .socket_group
        .as_deref()
        .map(|group| resolve_group("server.socket_group", group))
        .transpose()
        .map_err(in_file)?;
    Ok((access, socket_group))
}

/// Prepares the lockdown; a missing `sandbox.user` is a configuration error.
pub(super) fn prepare_lockdown(
    path: &Path,
    config: &Config,
) -> Result<sandbox::Lockdown, ConfigError> {
    sandbox::Lockdown::prepare(config).map_err(|e| ConfigError::Semantic {
        path: path.to_owned(),
        key: e.key.to_owned(),
        message: e.message,
    })
}

/// `deepseekd check-config`: everything that can be checked without loading.
pub(crate) fn check_config(path: &Path) -> Exit {
    let mut config = match load_config(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let checked = prepare_lockdown(path, &config)
        .and_then(|lockdown| resolve_groups(path, &config, lockdown.service_uid()));
    if let Err(e) = checked {
        report(&e);
        return Exit::Config;
    }
    if !config.integrity.enforce {
        eprintln!(
            "deepseekd: warning: integrity.enforce = false: models would be loaded without verification"
        );
    }
    let database = match load_database(&config) {
        Ok(database) => database,
        Err(e) => {
            report(&e);
            return Exit::Model;
        }
    };
    if let Err(e) = resolve_store(&mut config, database.as_deref()) {
        report(&e);
        return Exit::Model;
    }
    let mut files = vec![("runtime.library".to_owned(), config.runtime.library.clone())];
    files.extend(
        config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("model[{i}].{}", m.location_key()), m.onnx())),
    );
    for (key, file) in files {
        if let Err(e) = std::fs::File::open(&file) {
            report(&ConfigError::Semantic {
                path: path.to_owned(),
                key,
                message: format!("cannot read {}: {e}", file.display()),
            });
            return Exit::Config;
        }
    }
    // A causal LM's configuration, tokenizer and template are parsed as at
    // load, and, when it is batched, its cache pool checked against its
    // context (the graph itself is left to the daemon).
    for (index, model) in config.models.iter().enumerate() {
        if !model.is_causal_lm() {
            continue;
        }
        let checked = engine::llm::read_files(model, std::collections::BTreeMap::new()).and_then(
            |(files, ..)| {
                let context = engine::llm::context_length(index, model, &files)?;
                match engine::llm::batching_off(model, &files) {
                    None => engine::llm::kv_cache_tokens(index, model, context).map(drop),
                    Some(_) => Ok(()),
                }
            },
        );
        if let Err(e) = checked {
            report(&engine::LoadError::CausalLm {
                model: model.name.get_ref().as_str().to_owned(),
                reason: e.to_string(),
            });
            return Exit::Model;
        }
    }
    println!(
        "{}: configuration is valid ({} models)",
        path.display(),
        config.models.len()
    );
    Exit::Ok
}

/// Checks, before the lockdown, that the files its Landlock rules name exist,
/// so a wrong path gets its own message and exit code instead of a failed
/// Landlock rule.
pub(super) fn preflight(path: &Path, config: &Config) -> Result<(), Exit> {
    let library = &config.runtime.library;
    if !library.exists() {
        tracing::error!(
            "{}",
            engine::runtime::RuntimeError::Missing {
                path: library.clone()
            }
        );
        return Err(Exit::Runtime);
    }
    let directories = [
        ("runtime.cuda_library_dir", &config.runtime.cuda_library_dir),
        (
            "runtime.cudnn_library_dir",
            &config.runtime.cudnn_library_dir,
        ),
        ("sandbox.cuda_cache_dir", &config.sandbox.cuda_cache_dir),
    ];
    for (key, dir) in directories {
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            let message = format!("{} is not a directory", dir.display());
            tracing::error!(
                "{}",
                ConfigError::Semantic {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    message
                }
            );
            return Err(Exit::Config);
        }
    }
    // A store model's files are checked once its version is resolved, by
    // verification against the database that records them.
    for (index, model) in config.models.iter().enumerate() {
        if model.store.is_some() {
            continue;
        }
        if let Err(source) = std::fs::File::open(model.onnx()) {
            tracing::error!(
                "{}",
                engine::LoadError::Unreadable {
                    model: model.name.get_ref().as_str().to_owned(),
                    index,
                    key: model.location_key(),
                    path: model.onnx(),
                    source,
                }
            );
            return Err(Exit::Config);
        }
    }
    Ok(())
}
