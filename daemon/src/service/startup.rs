//! Bringing up what the daemon serves with: the signed integrity database,
//! the connection to the auditor, ONNX Runtime and the models.

use std::path::Path;
use std::time::Duration;

use deepseek_integrity::entry::Entry;
use deepseek_integrity::store::{Layout, active_version};
use deepseek_integrity::verify::VerifyError;
use nix::unistd::{Gid, Uid};

use crate::audit::{AuditClient, records};
use crate::config::{Config, ModelConfig};
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

/// Resolves each store model's active version against the signed database,
/// once, before anything is verified, granted or loaded: the version's
/// directory is then what the daemon uses, whatever the link says later.
/// A model whose version cannot be resolved is refused like one that fails
/// verification.
pub(super) fn resolve_store(
    config: &mut Config,
    database: Option<&[Entry]>,
) -> Result<(), engine::LoadError> {
    for model in config.models.iter_mut() {
        let Some(root) = &model.store else {
            continue;
        };
        let name = model.name.get_ref().as_str().to_owned();
        let store = |source| engine::LoadError::Store {
            model: name.clone(),
            source,
        };
        // Validation refuses a store model without the database.
        let entries = database.unwrap_or_default();
        let layout = Layout::new(root).map_err(store)?;
        let version = active_version(entries, &layout, &name).map_err(store)?;
        tracing::info!(
            model = %name,
            version = %version,
            "model store: active version resolved against the signed integrity database"
        );
        model.version = Some(version);
        // Recorded but gone: what verification says of a missing file.
        let dir = model.dir();
        if !dir.is_dir() {
            return Err(engine::LoadError::Integrity {
                model: name,
                source: VerifyError::Missing { path: dir },
            });
        }
    }
    Ok(())
}

/// Starts recording over the connection [`connect_auditor`] opened; inside
/// the async runtime.
pub(super) fn start_audit(
    config: &Config,
    auditor: Option<std::os::unix::net::UnixStream>,
) -> Result<AuditClient, Exit> {
    match auditor.map(|s| {
        AuditClient::start(
            s,
            config.audit.socket.clone(),
            Duration::from_millis(config.audit.timeout_ms.get()),
            config.audit.required,
        )
    }) {
        Some(Ok(client)) => Ok(client),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot use the connection to the auditor");
            Err(Exit::Runtime)
        }
        None => Ok(AuditClient::disabled()),
    }
}

/// A model that could not be served: the exit code, and for a model the
/// integrity checks refused (its files, or its version in the store), the
/// `model_refused` record for the audit log.
pub(super) type Refusal = (Exit, Option<Box<deepseek_audit::entry::Entry>>);

/// Logs why a model was not loaded and says what follows from it.
pub(super) fn refusal(config: &Config, error: &engine::LoadError) -> Refusal {
    tracing::error!("{error}");
    let refused = |model: &str, reason: String| {
        let configured = config
            .models
            .iter()
            .find(|m| m.name.get_ref().as_str() == model);
        // A store model whose version was not resolved is named by its
        // `active` link (its directory until then); any other by its graph.
        let path = match error {
            engine::LoadError::Store { .. } => configured.map(ModelConfig::dir),
            _ => configured.map(ModelConfig::onnx),
        };
        let entry = records::model_refused(model, path.as_deref(), reason);
        (Exit::Model, Some(Box::new(entry)))
    };
    match error {
        engine::LoadError::Cuda { .. } => (Exit::Runtime, None),
        engine::LoadError::Unreadable { .. } => (Exit::Config, None),
        engine::LoadError::Integrity { model, source } => refused(model, source.to_string()),
        engine::LoadError::Store { model, source } => refused(model, source.to_string()),
        _ => (Exit::Model, None),
    }
}

/// Records a refused model, if it was, and returns the exit code.
pub(super) async fn record_refusal(audit: &AuditClient, (exit, refused): Refusal) -> Exit {
    if let Some(refused) = refused
        && let Err(e) = audit.record(*refused).await
    {
        tracing::error!(error = %e, "the refused model could not be recorded");
    }
    exit
}

/// Brings up ONNX Runtime and loads every model, logging why when it cannot.
/// A model refused by the integrity check also comes back as a
/// `model_refused` record for the audit log.
pub(super) fn load_engine(config: &Config, database: Option<&[Entry]>) -> Result<Engine, Refusal> {
    let (environment, version) = engine::runtime::init(&config.runtime).map_err(|e| {
        tracing::error!("{e}");
        (Exit::Runtime, None)
    })?;
    tracing::info!(version = %version, library = %config.runtime.library.display(), "ONNX Runtime loaded");
    Engine::load(environment, version, &config.models, database).map_err(|e| refusal(config, &e))
}
