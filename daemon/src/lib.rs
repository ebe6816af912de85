//! `deepseekd`: loads ONNX models into ONNX Runtime and serves them to local
//! clients over a Unix socket, speaking KServe v2 over HTTP/1.1.
//!
//! `main` reads the configuration and opens the socket while the process is
//! still single-threaded, then starts the async runtime, answers health
//! checks at once, and loads the models; `/v2/health/ready` turns true when
//! every model is loaded and warmed up.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod engine;
pub mod exit;
pub mod logging;
pub mod server;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use cli::{Cli, Command};
use config::{Config, ConfigError};
use engine::Engine;
use exit::Exit;
use nix::unistd::Gid;
use server::peer::{AccessPolicy, UnknownGroup, resolve_group};
use server::routes::AppState;
use server::socket::{self, Origin};

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
) -> Result<(AccessPolicy, Option<Gid>), ConfigError> {
    let in_file = |e: UnknownGroup| ConfigError::Semantic {
        path: path.to_owned(),
        key: e.key.to_owned(),
        message: e.to_string(),
    };
    let access = AccessPolicy::from_config(&config.server).map_err(in_file)?;
    let socket_group = config
        .server
        .socket_group
        .as_deref()
        .map(|group| resolve_group("server.socket_group", group))
        .transpose()
        .map_err(in_file)?;
    Ok((access, socket_group))
}

/// `deepseekd check-config`: everything that can be checked without loading.
fn check_config(path: &std::path::Path) -> Exit {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    if let Err(e) = resolve_groups(path, &config) {
        report(&e);
        return Exit::Config;
    }
    let mut files = vec![("runtime.library".to_owned(), config.runtime.library.clone())];
    files.extend(
        config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("model[{i}].path"), m.path.clone())),
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
    println!(
        "{}: configuration is valid ({} models)",
        path.display(),
        config.models.len()
    );
    Exit::Ok
}

/// Runs the daemon until SIGTERM or SIGINT.
fn serve(path: &std::path::Path) -> Exit {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    logging::init(&config.log);
    let (access, socket_group) = match resolve_groups(path, &config) {
        Ok(resolved) => resolved,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Config;
        }
    };
    // Still single-threaded: `socket::open` reads LISTEN_FDS and sets the umask.
    let (listener, origin) = match socket::open(&config.server, socket_group) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Socket;
        }
    };
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
    let exit = runtime.block_on(run(config, access, listener, &origin));
    // A model load still running in a blocking thread must not hold up exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Origin::Created(path) = origin
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket file");
    }
    tracing::info!(code = exit as u8, "exiting");
    exit
}

async fn run(
    config: Config,
    access: AccessPolicy,
    listener: std::os::unix::net::UnixListener,
    origin: &Origin,
) -> Exit {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the socket with the async runtime");
            return Exit::Socket;
        }
    };
    let state = Arc::new(AppState {
        engine: std::sync::OnceLock::new(),
        model_names: config
            .models
            .iter()
            .map(|m| m.name.get_ref().as_str().to_owned())
            .collect(),
        access,
        max_body_bytes: config.server.max_body_bytes.get(),
        draining: AtomicBool::new(false),
    });
    let socket_text = match origin {
        Origin::Systemd => "inherited from systemd".to_owned(),
        Origin::Created(path) => path.display().to_string(),
    };
    tracing::info!(socket = %socket_text, models = state.model_names.len(), "listening; loading models");

    // Loading failures end the daemon: it never serves a partial model set.
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let max_connections = config.server.max_connections.get();
    let (failed_tx, failed_rx) = oneshot::channel::<Exit>();
    let loader_state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match load_engine(&config) {
            Ok(engine) => {
                let _ = loader_state.engine.set(engine);
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis(),
                    "all models loaded; ready"
                );
            }
            Err(exit) => {
                let _ = failed_tx.send(exit);
            }
        }
    });

    let mut exit = Exit::Ok;
    let stop = async {
        tokio::select! {
            signal = shutdown_signal() => tracing::info!(signal, "shutting down"),
            Ok(code) = failed_rx => exit = code,
        }
    };
    let drained = server::serve(
        listener,
        server::routes::router(Arc::clone(&state)),
        async {
            stop.await;
            state.draining.store(true, Ordering::Relaxed);
        },
        grace,
        max_connections,
    )
    .await;
    if drained == server::Drained::TimedOut {
        tracing::error!(
            grace_secs = grace.as_secs(),
            "requests still running when the grace period ended"
        );
        if exit == Exit::Ok {
            exit = Exit::ShutdownTimedOut;
        }
    }
    exit
}

/// Brings up ONNX Runtime and loads every model, logging why when it cannot.
fn load_engine(config: &Config) -> Result<Engine, Exit> {
    let (environment, version) = engine::runtime::init(&config.runtime).map_err(|e| {
        tracing::error!("{e}");
        Exit::Runtime
    })?;
    tracing::info!(version = %version, library = %config.runtime.library.display(), "ONNX Runtime loaded");
    Engine::load(environment, version, &config.models).map_err(|e| {
        tracing::error!("{e}");
        match e {
            engine::LoadError::Cuda { .. } => Exit::Runtime,
            engine::LoadError::Unreadable { .. } => Exit::Config,
            _ => Exit::Model,
        }
    })
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
