//! `deepseekd`: loads ONNX models into ONNX Runtime and serves them to local
//! clients over a Unix socket, speaking KServe v2 over HTTP/1.1.
//!
//! `main` reads the configuration and opens the socket while the process is
//! still single-threaded and may be root, locks itself down (user,
//! capabilities, no_new_privs, Landlock), starts the async runtime, loads
//! the models, installs seccomp on every thread, and only then serves.
#![deny(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod engine;
pub mod exit;
#[doc(hidden)]
pub mod fuzz;
pub mod logging;
pub mod notify;
pub mod sandbox;
pub mod server;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use cli::{Cli, Command};
use config::{Config, ConfigError};
use deepseek_integrity::entry::Entry;
use engine::Engine;
use exit::Exit;
use nix::unistd::{Gid, Uid};
use server::peer::{AccessPolicy, UnknownGroup, resolve_group};
use server::routes::AppState;
use server::socket::{self, Origin};

/// The command-line definition, from which the man pages are generated
/// (`cargo run -p xtask -- man`), so they never drift from `--help`.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            // --help and --version print and succeed; mistakes are EX_USAGE.
            let _ = e.print();
            return if usage { Exit::Usage } else { Exit::Ok }.into();
        }
    };
    let exit = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::PrintPolicy => match load_config(&cli.config) {
            Ok(config) => {
                print!("{}", sandbox::describe(&config));
                Exit::Ok
            }
            Err(exit) => exit,
        },
    };
    exit.into()
}

/// Prints an error the way every failure before logging starts is reported.
fn report(error: &dyn std::fmt::Display) {
    eprintln!("deepseekd: error: {error}");
}

fn load_config(path: &std::path::Path) -> Result<Config, Exit> {
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
fn resolve_groups(
    path: &std::path::Path,
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
fn prepare_lockdown(
    path: &std::path::Path,
    config: &Config,
) -> Result<sandbox::Lockdown, ConfigError> {
    sandbox::Lockdown::prepare(config).map_err(|(key, message)| ConfigError::Semantic {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    })
}

/// `deepseekd check-config`: everything that can be checked without loading.
fn check_config(path: &std::path::Path) -> Exit {
    let config = match load_config(path) {
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
    if let Err(e) = load_database(&config) {
        report(&e);
        return Exit::Model;
    }
    let mut files = vec![("runtime.library".to_owned(), config.runtime.library.clone())];
    files.extend(
        config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("model[{i}].path"), m.onnx())),
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
    // load (the graph itself is left to the daemon).
    for (index, model) in config.models.iter().enumerate() {
        if !model.is_causal_lm() {
            continue;
        }
        let checked = engine::llm::read_files(model, std::collections::BTreeMap::new())
            .and_then(|(files, ..)| engine::llm::context_length(index, model, &files));
        if let Err(reason) = checked {
            report(&engine::LoadError::CausalLm {
                model: model.name.get_ref().as_str().to_owned(),
                reason,
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

/// Runs the daemon until SIGTERM or SIGINT, in the order of
/// docs/hardening.md: everything that needs privileges or a single thread
/// first, then the lockdown, then the runtime and the models, then seccomp,
/// and only then the first client.
fn serve(path: &std::path::Path) -> Exit {
    // First, while nothing of ours is open yet: whatever the caller left
    // open is not the daemon's to keep.
    let closed = sandbox::inherited::close_descriptors();
    let config = match load_config(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    engine::runtime::prepare_environment(&config);
    logging::init(&config.log);
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
    // Everything that reads the environment has read it (LISTEN_*,
    // NOTIFY_SOCKET, WATCHDOG_*); still single-threaded.
    let kept = sandbox::inherited::clear_environment();
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
    if let Err(e) = lockdown.before_threads(opened) {
        tracing::error!("{e}");
        return Exit::Sandbox;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return Exit::Software;
        }
    };
    let exit = runtime.block_on(run(
        config, database, access, listener, lockdown, auditor, notifier,
    ));
    // A model load still running in a blocking thread must not hold up exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    tracing::info!(code = exit as u8, "exiting");
    exit
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
    let audit = match auditor.map(|s| {
        audit::AuditClient::start(
            s,
            config.audit.socket.clone(),
            Duration::from_millis(config.audit.timeout_ms.get()),
            config.audit.required,
        )
    }) {
        Some(Ok(client)) => client,
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot use the connection to the auditor");
            return Exit::Runtime;
        }
        None => audit::AuditClient::disabled(),
    };
    let audit_required = config.audit.required;
    let record_content = config.audit.record_content;
    if record_content && config.models.iter().any(config::ModelConfig::is_causal_lm) {
        tracing::warn!(
            "audit.record_content applies to KServe requests only: /v1 requests are recorded with \
             digests and token counts, never their text"
        );
    }
    let config_sha256 = config.source_sha256.clone();
    let config_start_timeout = config.audit.start_timeout_secs.get();
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
    let max_body_bytes = config.server.max_body_bytes.get();
    let max_response_bytes = config.server.max_response_bytes.get();
    let started = std::time::Instant::now();
    // Clients that connect meanwhile wait in the listen backlog: nothing is
    // read from a client before the whole lockdown is in place.
    let model_files: Vec<(String, std::path::PathBuf)> = config
        .models
        .iter()
        .map(|m| (m.name.get_ref().as_str().to_owned(), m.onnx()))
        .collect();
    let loading = tokio::task::spawn_blocking(move || load_engine(&config, database.as_deref()));
    let engine = tokio::select! {
        loaded = loading => match loaded {
            Ok(Ok(engine)) => engine,
            Ok(Err((exit, refused))) => {
                if let Some(refused) = refused
                    && let Err(e) = audit.record(*refused).await
                {
                    tracing::error!(error = %e, "the refused model could not be recorded");
                }
                return exit;
            }
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
    let model_loads = model_load_events(&model_files, engine.digests());
    if let Err(e) = lockdown.after_load() {
        tracing::error!("{e}");
        return Exit::Sandbox;
    }
    let mut start = deepseek_audit::entry::Entry::event(deepseek_audit::entry::Event::Start);
    start
        .details
        .insert("config_sha256".to_owned(), config_sha256);
    start
        .details
        .insert("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    // What the lockdown achieved, signed into the log: `deepseek-audit
    // verify` reads Landlock's state here (the kernel does not show it in
    // /proc) for the daemon with this pid.
    start
        .details
        .insert("pid".to_owned(), std::process::id().to_string());
    start.details.extend(lockdown.audit_details());
    let mut events = vec![start];
    events.extend(model_loads);
    // The auditor answers once it has verified its log, which takes as long
    // as the log is large: the start-up records wait for that.
    let start_timeout = Duration::from_secs(config_start_timeout);
    tracing::info!(
        timeout_secs = config_start_timeout,
        "recording the start (the auditor answers once its log is verified)"
    );
    for event in events {
        if let Err(e) = audit.record_within(event, start_timeout).await
            && audit_required
        {
            tracing::error!(error = %e, "the auditor did not record the start; refusing to serve (audit.required = true)");
            return Exit::Runtime;
        }
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis(),
        audited = audit.is_enabled(),
        "all models loaded, lockdown complete; ready"
    );
    let gate = server::Gate {
        access,
        refusals: server::refusal::Refusals::new(audit.clone(), denied_peer_interval),
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
    });
    notifier.send(&format!("READY=1\nSTATUS={serving}"));
    let notifier = Arc::new(notifier);
    let watchdog = tokio::spawn(watchdog(Arc::clone(&notifier), Arc::clone(&state), serving));
    let drained = server::serve(
        listener,
        server::routes::router(Arc::clone(&state)),
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
    if let Err(e) = state
        .audit
        .record(deepseek_audit::entry::Entry::event(
            deepseek_audit::entry::Event::Shutdown,
        ))
        .await
    {
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

/// Checks, before the lockdown, that the files its Landlock rules name exist,
/// so a wrong path gets its own message and exit code instead of a failed
/// Landlock rule.
fn preflight(path: &std::path::Path, config: &Config) -> Result<(), Exit> {
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
    for (index, model) in config.models.iter().enumerate() {
        if let Err(source) = std::fs::File::open(model.onnx()) {
            tracing::error!(
                "{}",
                engine::LoadError::Unreadable {
                    model: model.name.get_ref().as_str().to_owned(),
                    index,
                    path: model.onnx(),
                    source,
                }
            );
            return Err(Exit::Config);
        }
    }
    Ok(())
}

/// Reads the integrity database and checks its signature against the pinned
/// key; `None` when `integrity.enforce = false`, which is logged loudly.
fn load_database(
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
fn connect_auditor(config: &Config) -> Result<Option<std::os::unix::net::UnixStream>, Exit> {
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
fn warn_unless_reconnectable(socket: &std::path::Path, uid: Uid, gid: Gid) {
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
             give the socket to that user's group with mode 0660 (docs/hardening.md, Regaining the auditor)"
        );
    }
}

/// The `model_load` records: name, file and the digest of the bytes loaded
/// from it, which `deepseek-audit verify` compares with the database
/// (INTEG-MODELS).
fn model_load_events(
    models: &[(String, std::path::PathBuf)],
    digests: &std::collections::BTreeMap<String, String>,
) -> Vec<deepseek_audit::entry::Entry> {
    models
        .iter()
        .map(|(name, path)| {
            let mut load =
                deepseek_audit::entry::Entry::event(deepseek_audit::entry::Event::ModelLoad);
            load.model = Some(name.clone());
            load.model_sha256 = digests.get(name).cloned();
            load.details
                .insert("path".to_owned(), path.display().to_string());
            load
        })
        .collect()
}

/// Brings up ONNX Runtime and loads every model, logging why when it cannot.
/// A model refused by the integrity check also comes back as a
/// `model_refused` record for the audit log.
fn load_engine(
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
                let mut refused =
                    deepseek_audit::entry::Entry::event(deepseek_audit::entry::Event::ModelRefused);
                refused.model = Some(model.clone());
                if let Some(m) = config
                    .models
                    .iter()
                    .find(|m| m.name.get_ref().as_str() == model)
                {
                    refused
                        .details
                        .insert("path".to_owned(), m.onnx().display().to_string());
                }
                refused
                    .details
                    .insert("reason".to_owned(), source.to_string());
                (Exit::Model, Some(Box::new(refused)))
            }
            _ => (Exit::Model, None),
        }
    })
}

/// Pings systemd's watchdog (`WatchdogSec=`) at half its period while the
/// daemon can serve, and says why in `STATUS=` when it cannot: while the
/// auditor's connection is lost the daemon reconnects by itself, and
/// systemd restarts it if that takes longer than `WatchdogSec=`. Without a
/// watchdog it only keeps `STATUS=` current.
async fn watchdog(notifier: Arc<notify::Notifier>, state: Arc<AppState>, serving: String) {
    if !notifier.is_enabled() {
        return;
    }
    let period = notifier
        .watchdog_interval()
        .unwrap_or(Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    let mut reported: Option<&'static str> = None;
    loop {
        ticks.tick().await;
        let unhealthy = state.broken();
        if unhealthy != reported {
            notifier.status(unhealthy.unwrap_or(&serving));
            if let Some(reason) = unhealthy {
                tracing::error!(reason, "unhealthy: no more watchdog pings");
            }
            reported = unhealthy;
        }
        if unhealthy.is_none() && notifier.watchdog_interval().is_some() {
            notifier.send("WATCHDOG=1");
        }
    }
}

/// Resolves on SIGTERM (systemd's stop) or SIGINT (Ctrl-C), naming which.
/// SIGHUP, whose default action would kill the daemon, is logged and ignored:
/// there is no reload, a configuration change needs a restart.
async fn shutdown_signal() -> &'static str {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => tracing::warn!(
                "SIGHUP ignored: deepseekd does not reload its configuration; restart it to apply changes"
            ),
        }
    }
}
