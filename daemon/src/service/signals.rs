//! The daemon's periodic work while serving (systemd's watchdog and
//! `STATUS=`, restating the start-up records in the audit log) and the
//! signals that stop the daemon.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use deepseek_audit::entry::Entry;

use crate::audit::AuditClient;
use crate::notify::Notifier;
use crate::server::http::AppState;

/// Pings systemd's watchdog (`WatchdogSec=`) at half its period while the
/// daemon can serve, and says why in `STATUS=` when it cannot: while the
/// auditor's connection is lost the daemon reconnects by itself, and
/// systemd restarts it if that takes longer than `WatchdogSec=`. Without a
/// watchdog it only keeps `STATUS=` current.
pub(super) async fn watchdog(notifier: Arc<Notifier>, state: Arc<AppState>, serving: String) {
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
pub(super) async fn shutdown_signal() -> &'static str {
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

/// Records `entries` (the restated `start` and `model_load`) every
/// `every`, until aborted at shutdown. A failure is logged and tried again
/// at the next interval: serving goes on, as the requests are audited on
/// their own.
pub(super) async fn restate(audit: AuditClient, entries: Vec<Entry>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for entry in entries.iter().cloned() {
            if let Err(e) = audit.record(entry).await {
                tracing::warn!(error = %e, "the start-up records could not be restated; trying again at the next interval");
                break;
            }
        }
    }
}
