//! Running the daemon: everything that needs privileges or a single thread
//! first, then the lockdown, then the runtime and the models, then seccomp,
//! and only then the first client (docs/guide/hardening.md).
#![forbid(unsafe_code)]

pub(crate) mod check;
mod signals;
mod startup;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deepseek_integrity::entry::Entry;

use crate::audit::records;
use crate::config::Config;
use crate::exit::Exit;
use crate::metrics::Metrics;
use crate::notify;
use crate::sandbox;
use crate::server::http::AppState;
use crate::server::limits::Limits;
use crate::server::peer::AccessPolicy;
use crate::server::socket::{self, Origin};
use crate::server::{self, refusal::Refusals, router};
use check::{load_config, preflight, prepare_lockdown, resolve_groups};
use signals::{restate, shutdown_signal, watchdog};
use startup::{
    connect_auditor, load_database, load_engine, record_refusal, refusal, resolve_store,
    start_audit, warn_unless_reconnectable,
};

/// Runs the daemon until SIGTERM or SIGINT, in the order of
/// docs/guide/hardening.md: everything that needs privileges or a single thread
/// first, then the lockdown, then the runtime and the models, then seccomp,
/// and only then the first client.
pub(crate) fn serve(path: &std::path::Path) -> Exit {
    // First, while nothing of ours is open yet: whatever the caller left
    // open is not the daemon's to keep.
    let closed = sandbox::inherited::close_descriptors();
    let mut config = match load_config(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    if let Err(e) = crate::engine::runtime::prepare_environment(&config) {
        check::report(&e);
        return Exit::Software;
    }
    crate::logging::init(&config.log);
    if !closed.is_empty() {
        tracing::warn!(fds = ?closed, "closed file descriptors inherited from the caller");
    }
    let mut lockdown = match prepare_lockdown(path, &config) {
        Ok(lockdown) => lockdown,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Config;
        }
    };
    let (access, socket_group) = match resolve_groups(path, &config, lockdown.service_uid()) {
        Ok(resolved) => resolved,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Config;
        }
    };
    if let Some(partial) = access.partial() {
        tracing::info!(
            uids = %partial.uids,
            gids = %partial.gids,
            overflow_uid = partial.overflow_uid,
            "running in a user namespace that does not map every id: a client whose uid reads as the overflow id is refused"
        );
        let (uids, gids) = access.unmapped_entries();
        if !uids.is_empty() || !gids.is_empty() {
            tracing::warn!(
                ?uids,
                ?gids,
                "server.allowed_uids or server.allowed_groups lists ids this user namespace does not map: no client is admitted by them"
            );
        }
    }
    // Still single-threaded: `socket::open` reads LISTEN_FDS and sets the umask.
    // A socket created while root goes to the service user, and to its
    // group unless server.socket_group names one.
    let switching = lockdown.switching_to();
    let owner = switching.map(|(uid, _)| uid);
    let group = socket_group.or(switching.map(|(_, gid)| gid));
    let (listener, origin) = match socket::open(&config.server, owner, group) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Socket;
        }
    };
    if let Err(exit) = preflight(path, &config) {
        return exit;
    }
    // Connected now, like the auditor: the locked-down daemon cannot open
    // a datagram socket.
    let notifier = match notify::Notifier::from_env() {
        Ok(notifier) => notifier,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Socket;
        }
    };
    // Connected now: once locked down, the daemon may not `connect`.
    let auditor = match connect_auditor(&config) {
        Ok(auditor) => auditor,
        Err(exit) => return exit,
    };
    if auditor.is_some()
        && let Some((uid, gid)) = switching
    {
        warn_unless_reconnectable(&config.audit.socket, uid, gid);
    }
    // Read and verified before the lockdown, so the daemon needs no access
    // to the database afterwards.
    let database = match load_database(&config) {
        Ok(database) => database,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Model;
        }
    };
    // Before the Landlock rules are made: they grant the version resolved.
    if let Err(e) = resolve_store(&mut config, database.as_deref()) {
        return refuse_unresolved(&config, auditor, &e);
    }
    // Everything that reads the environment has read it (LISTEN_*,
    // NOTIFY_SOCKET, WATCHDOG_*); still single-threaded.
    let kept = match sandbox::inherited::clear_environment() {
        Ok(kept) => kept,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Software;
        }
    };
    let opened = match &origin {
        Origin::Systemd => "configuration read; listening socket inherited from systemd".to_owned(),
        Origin::Created(path) => format!(
            "configuration read; listening socket created at {}",
            path.display()
        ),
    };
    let opened = format!(
        "{opened}; {} inherited file descriptors closed; environment cleared to {}",
        closed.len(),
        if kept.is_empty() {
            "nothing".to_owned()
        } else {
            kept.join(", ")
        }
    );
    lockdown.set_environment(kept);
    if let Err(e) = lockdown.before_threads(&config, opened) {
        tracing::error!("{e}");
        return Exit::Sandbox;
    }
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(exit) => return exit,
    };
    let exit = runtime.block_on(run(
        config, database, access, listener, lockdown, auditor, notifier,
    ));
    // A model load still running in a blocking thread must not hold up exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    tracing::info!(code = exit as u8, "exiting");
    exit
}

/// The async runtime the daemon serves on.
fn async_runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot start the async runtime");
            Exit::Software
        })
}

/// Refuses a store model whose version could not be resolved, before the
/// lockdown (nothing was loaded), recording it as a model that failed its
/// integrity check is recorded.
fn refuse_unresolved(
    config: &Config,
    auditor: Option<std::os::unix::net::UnixStream>,
    error: &crate::engine::LoadError,
) -> Exit {
    let refusal = refusal(config, error);
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        match start_audit(config, auditor) {
            Ok(audit) => record_refusal(&audit, refusal).await,
            Err(exit) => exit,
        }
    })
}

async fn run(
    config: Config,
    database: Option<Vec<Entry>>,
    access: AccessPolicy,
    listener: std::os::unix::net::UnixListener,
    mut lockdown: sandbox::Lockdown,
    auditor: Option<std::os::unix::net::UnixStream>,
    notifier: notify::Notifier,
) -> Exit {
    let audit = match start_audit(&config, auditor) {
        Ok(audit) => audit,
        Err(exit) => return exit,
    };
    let audit_required = config.audit.required;
    let record_content = config.audit.record_content;
    if record_content
        && config
            .models
            .iter()
            .any(crate::config::ModelConfig::is_causal_lm)
    {
        tracing::warn!(
            "audit.record_content applies to KServe requests only: /v1 requests are recorded with \
             digests and token counts, never their text"
        );
    }
    let config_sha256 = config.source_sha256.clone();
    let config_start_timeout = config.audit.start_timeout_secs.get();
    // At most a year: a longer interval is as good as never, and stays
    // clear of any clock overflow.
    let restate_every = Duration::from_secs(config.audit.restate_interval_secs.min(365 * 86_400));
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the socket with the async runtime");
            return Exit::Socket;
        }
    };
    tracing::info!(models = config.models.len(), "loading models");
    notifier.status(&format!(
        "locked down (user, capabilities, no_new_privs, Landlock); loading {} models",
        config.models.len()
    ));
    let serving = format!(
        "serving {} models on {}; locked down; {}",
        config.models.len(),
        config.server.socket.display(),
        if config.audit.required {
            "every request audited"
        } else {
            "AUDIT NOT REQUIRED"
        }
    );
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let max_connections = config.server.max_connections.get();
    let denied_peer_interval = Duration::from_secs(config.server.denied_peer_interval_secs.get());
    let limits = Arc::new(Limits::new(config.limits.clone()));
    let max_body_bytes = config.server.max_body_bytes.get();
    let max_response_bytes = config.server.max_response_bytes.get();
    let started = std::time::Instant::now();
    // Clients that connect meanwhile wait in the listen backlog: nothing is
    // read from a client before the whole lockdown is in place.
    let model_files: Vec<records::Loaded> = config
        .models
        .iter()
        .map(|m| records::Loaded {
            name: m.name.get_ref().as_str().to_owned(),
            path: m.onnx(),
            version: m.version.clone(),
        })
        .collect();
    let loading = tokio::task::spawn_blocking(move || load_engine(&config, database.as_deref()));
    let engine = tokio::select! {
        loaded = loading => match loaded {
            Ok(Ok(engine)) => engine,
            Ok(Err(refusal)) => return record_refusal(&audit, refusal).await,
            Err(e) => {
                tracing::error!(error = %e, "the model loader failed");
                return Exit::Software;
            }
        },
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down before the models finished loading");
            return Exit::Ok;
        }
    };
    // Computed from the bytes each model was loaded from, not copied from
    // the database: `model_load` says what runs.
    let model_loads = records::model_loads(&model_files, engine.digests());
    if let Err(e) = lockdown.after_load() {
        tracing::error!("{e}");
        return Exit::Sandbox;
    }
    let start = records::start(config_sha256, lockdown.audit_details());
    let mut events = vec![start];
    events.extend(model_loads);
    // The auditor answers once it has verified its log, which takes as long
    // as the log is large: the start-up records wait for that.
    let start_timeout = Duration::from_secs(config_start_timeout);
    tracing::info!(
        timeout_secs = config_start_timeout,
        "recording the start (the auditor answers once its log is verified)"
    );
    let mut start_seq = None;
    for event in events.iter().cloned() {
        match audit.record_within(event, start_timeout).await {
            Ok(seq) => {
                start_seq.get_or_insert(seq);
            }
            Err(e) if audit_required => {
                tracing::error!(error = %e, "the auditor did not record the start; refusing to serve (audit.required = true)");
                return Exit::Runtime;
            }
            Err(_) => {}
        }
    }
    let restating = (restate_every > Duration::ZERO && audit.is_enabled()).then(|| {
        tokio::spawn(restate(
            audit.clone(),
            records::restated(&events, start_seq.unwrap_or(0)),
            restate_every,
        ))
    });
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis(),
        audited = audit.is_enabled(),
        "all models loaded, lockdown complete; ready"
    );
    let metrics = Arc::new(Metrics::new(
        engine
            .names()
            .map(str::to_owned)
            .chain(engine.causal_lms().map(|lm| lm.info().name.clone())),
    ));
    let gate = server::Gate {
        access,
        refusals: Refusals::new(audit.clone(), Arc::clone(&metrics), denied_peer_interval),
    };
    let state = Arc::new(AppState {
        engine,
        max_body_bytes,
        max_response_bytes,
        draining: AtomicBool::new(false),
        lockdown,
        audit: audit.clone(),
        audit_required,
        record_content,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        metrics,
        limits,
    });
    notifier.send(&format!("READY=1\nSTATUS={serving}"));
    let notifier = Arc::new(notifier);
    let watchdog = tokio::spawn(watchdog(Arc::clone(&notifier), Arc::clone(&state), serving));
    let drained = server::serve(
        listener,
        router::router(Arc::clone(&state)),
        gate,
        async {
            let signal = shutdown_signal().await;
            tracing::info!(signal, "shutting down");
            state.draining.store(true, Ordering::Relaxed);
            notifier.send(&format!(
                "STOPPING=1\nSTATUS={signal}: finishing in-flight requests (up to {} s)",
                grace.as_secs()
            ));
        },
        grace,
        max_connections,
    )
    .await;
    watchdog.abort();
    if let Some(restating) = restating {
        restating.abort();
    }
    if let Err(e) = state.audit.record(records::shutdown()).await {
        tracing::error!(error = %e, "the shutdown could not be recorded");
    }
    state.audit.close();
    if drained == server::Drained::TimedOut {
        tracing::error!(
            grace_secs = grace.as_secs(),
            "requests still running when the grace period ended"
        );
        return Exit::ShutdownTimedOut;
    }
    Exit::Ok
}
