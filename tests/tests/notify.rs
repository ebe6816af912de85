//! systemd's notification protocol, spoken to a real datagram socket the
//! way systemd listens for a `Type=notify` service: status while loading,
//! `READY=1` once locked down and serving, watchdog pings only while the
//! daemon can serve, `STOPPING=1` on SIGTERM. Under the real lockdown when
//! run as root: the socket is connected before it, and sending on it later
//! passes seccomp and Landlock.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use deepseek_tests::{Daemon, get, model_table};
use nix::sys::signal::Signal;

/// Starts the audited demo daemon with `NOTIFY_SOCKET` set to `address`
/// and `WatchdogSec=` of 200 ms.
fn start(address: &str) -> Daemon {
    let notify = format!("NOTIFY_SOCKET={address}");
    Daemon::spawn_wrapped(
        "",
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
        &["env", &notify, "WATCHDOG_USEC=200000"],
    )
}

/// Receives messages until one satisfies `until`, or fails after `within`.
fn receive_until(
    notify: &UnixDatagram,
    within: Duration,
    until: impl Fn(&str) -> bool,
    daemon: &Daemon,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let done = until(&message);
            messages.push(message);
            if done {
                return messages;
            }
        }
    }
    panic!(
        "no matching notification within {within:?}; received {messages:?}; daemon log:\n{}",
        daemon.log()
    );
}

fn bind(path: &Path) -> UnixDatagram {
    let notify = UnixDatagram::bind(path).expect("bind the notification socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    notify
}

#[test]
fn ready_status_watchdog_and_stopping_reach_systemd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let notify = bind(&path);
    let mut daemon = start(path.to_str().expect("utf-8"));

    let startup = receive_until(
        &notify,
        Duration::from_secs(30),
        |m| m.starts_with("READY=1"),
        &daemon,
    );
    assert!(
        startup[0].starts_with("STATUS=locked down") && startup[0].contains("loading 1 models"),
        "{startup:?}"
    );
    let ready = startup.last().expect("ready");
    assert!(
        ready.contains("\nSTATUS=serving 1 models on ") && ready.contains("every request audited"),
        "{ready}"
    );
    // Half of the 200 ms watchdog period: about five pings a second.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 4 {
        let messages = receive_until(
            &notify,
            Duration::from_secs(2),
            |m| m == "WATCHDOG=1",
            &daemon,
        );
        pings += messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The auditor dies: the daemon refuses everything until restarted, so
    // it says why and stops pinging, and systemd's watchdog restarts it.
    daemon
        .auditor
        .as_mut()
        .expect("auditor")
        .stop(Signal::SIGKILL);
    receive_until(
        &notify,
        Duration::from_secs(5),
        |m| m.starts_with("STATUS=the connection to the auditor is lost"),
        &daemon,
    );
    let quiet_until = Instant::now() + Duration::from_millis(600);
    let mut buffer = [0u8; 4096];
    while Instant::now() < quiet_until {
        if let Ok(n) = notify.recv(&mut buffer) {
            assert_ne!(
                &buffer[..n],
                b"WATCHDOG=1",
                "a broken daemon must not ping the watchdog"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let readiness = runtime
        .block_on(get(&daemon.socket, "/v2/health/ready"))
        .expect("readiness");
    assert_eq!(readiness.status, 503);

    daemon.signal(Signal::SIGTERM);
    let stopping = receive_until(
        &notify,
        Duration::from_secs(10),
        |m| m.starts_with("STOPPING=1"),
        &daemon,
    );
    assert!(
        stopping
            .last()
            .expect("stopping")
            .contains("\nSTATUS=SIGTERM: finishing in-flight requests"),
        "{stopping:?}"
    );
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn an_abstract_notification_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("deepseekd-test-{}", std::process::id());
    let address =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
    let notify = UnixDatagram::bind_addr(&address).expect("bind");
    notify
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let daemon = start(&format!("@{name}"));
    receive_until(
        &notify,
        Duration::from_secs(30),
        |m| m.starts_with("READY=1"),
        &daemon,
    );
    // Sent after the lockdown, which scopes abstract sockets: the
    // connection made before it still carries.
    receive_until(
        &notify,
        Duration::from_secs(2),
        |m| m == "WATCHDOG=1",
        &daemon,
    );
}

#[test]
fn an_unusable_notification_socket_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such.sock");
    let mut daemon = start(missing.to_str().expect("utf-8"));
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(71));
    assert!(
        daemon
            .log()
            .contains("cannot connect to systemd's notification socket NOTIFY_SOCKET="),
        "{}",
        daemon.log()
    );
}
