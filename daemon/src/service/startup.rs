//! Bringing up what the daemon serves with: the signed integrity database,
//! the connection to the auditor, ONNX Runtime and the models.

use std::path::Path;

use deepseek_integrity::entry::Entry;
use nix::unistd::{Gid, Uid};

use crate::audit::records;
use crate::config::Config;
use crate::engine::{self, Engine};
use crate::exit::Exit;

/// Reads the integrity database and checks its signature against the pinned
/// key; `None` when `integrity.enforce = false`, which is logged loudly.
pub(super) fn load_database(
    config: &Config,
) -> Result<Option<Vec<Entry>>, deepseek_integrity::database::DatabaseError> {
    let integrity = &config.integrity;
    let Some(pinned) = &integrity.pinned else {
        tracing::error!(
            "INTEGRITY NOT ENFORCED (integrity.enforce = false): models are loaded without checking them \
             against the signed database. For debugging only"
        );
        return Ok(None);
    };
    let entries = deepseek_integrity::database::load(&integrity.database, pinned)?;
    tracing::info!(
        database = %integrity.database.display(),
        entries = entries.len(),
        signed_by = %pinned.id(),
        "integrity database signature verified"
    );
    Ok(Some(entries))
}

/// Opens the connection to the auditor. With `audit.required` (the default)
/// an unreachable auditor stops the daemon; without it, the daemon says
/// loudly that it serves unaudited and records what it can.
pub(super) fn connect_auditor(
    config: &Config,
) -> Result<Option<std::os::unix::net::UnixStream>, Exit> {
    let audit = &config.audit;
    let connected = std::os::unix::net::UnixStream::connect(&audit.socket);
    if !audit.required {
        tracing::error!(
            "AUDIT NOT REQUIRED (audit.required = false): requests are answered even when the auditor cannot record them. \
             For debugging only"
        );
    }
    match connected {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if audit.required => {
            tracing::error!(
                socket = %audit.socket.display(),
                error = %e,
                "cannot reach the auditor (audit.socket); refusing to start while audit.required = true"
            );
            Err(Exit::Runtime)
        }
        Err(e) => {
            tracing::error!(socket = %audit.socket.display(), error = %e, "no auditor: nothing is recorded");
            Ok(None)
        }
    }
}

/// Says loudly when the user the daemon switches to could not connect to
/// the auditor's socket again (it reconnects as that user after an auditor
/// restart), while it still can be fixed: the first connection, made
/// before the switch, proves nothing about the later ones.
pub(super) fn warn_unless_reconnectable(socket: &Path, uid: Uid, gid: Gid) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(socket) else {
        return;
    };
    let mode = meta.mode();
    let writable = (meta.uid() == uid.as_raw() && mode & 0o200 != 0)
        || (meta.gid() == gid.as_raw() && mode & 0o020 != 0)
        || mode & 0o002 != 0;
    if !writable {
        tracing::warn!(
            socket = %socket.display(),
            mode = format!("{:o}", mode & 0o777),
            owner = meta.uid(),
            group = meta.gid(),
            service_uid = uid.as_raw(),
            "after an auditor restart the daemon could not reconnect: audit.socket is not writable by sandbox.user; \
             give the socket to that user's group with mode 0660 (docs/guide/hardening.md, Regaining the auditor)"
        );
    }
}

/// Brings up ONNX Runtime and loads every model, logging why when it cannot.
/// A model refused by the integrity check also comes back as a
/// `model_refused` record for the audit log.
pub(super) fn load_engine(
    config: &Config,
    database: Option<&[Entry]>,
) -> Result<Engine, (Exit, Option<Box<deepseek_audit::entry::Entry>>)> {
    let (environment, version) = engine::runtime::init(&config.runtime).map_err(|e| {
        tracing::error!("{e}");
        (Exit::Runtime, None)
    })?;
    tracing::info!(version = %version, library = %config.runtime.library.display(), "ONNX Runtime loaded");
    Engine::load(environment, version, &config.models, database).map_err(|e| {
        tracing::error!("{e}");
        match &e {
            engine::LoadError::Cuda { .. } => (Exit::Runtime, None),
            engine::LoadError::Unreadable { .. } => (Exit::Config, None),
            engine::LoadError::Integrity { model, source } => {
                let path = config
                    .models
                    .iter()
                    .find(|m| m.name.get_ref().as_str() == model)
                    .map(crate::config::ModelConfig::onnx);
                let refused = records::model_refused(model, path.as_deref(), source.to_string());
                (Exit::Model, Some(Box::new(refused)))
            }
            _ => (Exit::Model, None),
        }
    })
}
