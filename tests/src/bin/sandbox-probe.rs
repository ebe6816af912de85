//! `sandbox-probe CONFIG PROBE`: applies the daemon's own lockdown (the
//! `deepseekd` library, the same code path as the daemon) for CONFIG, then
//! tries one thing the sandbox must stop, and prints what happened.
//!
//! The sandbox tests run one probe per process, so a probe that the kernel
//! kills (SIGSYS) takes only itself down. Output: `ok ...` when the action
//! succeeded, `denied <ERRNO>` when it failed; exit 77 when the lockdown
//! itself failed.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};

fn errno(e: impl Into<std::io::Error>) -> String {
    let e: std::io::Error = e.into();
    let code = e.raw_os_error().unwrap_or(0);
    format!("denied {}", nix::errno::Errno::from_raw(code))
}

fn outcome<T>(result: Result<T, String>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config_path, probe, rest @ ..] = args.as_slice() else {
        eprintln!("usage: sandbox-probe CONFIG PROBE [ARG]");
        return ExitCode::from(64);
    };
    let config = deepseekd::config::Config::load(Path::new(config_path)).expect("config");
    let model_dir = config.models[0].dir();
    let mut lockdown = deepseekd::sandbox::Lockdown::prepare(&config).expect("prepare");

    // A thread that exists before Landlock: the lockdown must refuse to run.
    let _early = (probe == "thread-before-landlock").then(|| std::thread::spawn(std::thread::park));
    if let Err(e) = lockdown.before_threads(&config, "probe".to_owned()) {
        println!("lockdown failed: {e}");
        return ExitCode::from(77);
    }
    // A thread that exists before seccomp, like tokio's and ONNX Runtime's:
    // TSYNC must confine it too. It waits for the go-ahead.
    let (go, wait) = mpsc::channel::<()>();
    let before_seccomp = std::thread::spawn(move || {
        if wait.recv().is_ok() {
            nix::unistd::sync();
        }
    });
    if let Err(e) = lockdown.after_load() {
        println!("lockdown failed: {e}");
        return ExitCode::from(77);
    }
    let result = match probe.as_str() {
        "read-model" => outcome(std::fs::read(config.models[0].onnx()).map_err(errno)),
        "read-passwd" => outcome(std::fs::read("/etc/passwd").map_err(errno)),
        "read-shadow" => outcome(std::fs::read("/etc/shadow").map_err(errno)),
        "write-model-dir" => {
            outcome(std::fs::write(model_dir.join("planted"), b"x").map_err(errno))
        }
        "inet-socket" => outcome(
            socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            )
            .map_err(errno),
        ),
        "inet6-socket" => outcome(
            socket(
                AddressFamily::Inet6,
                SockType::Datagram,
                SockFlag::empty(),
                None,
            )
            .map_err(errno),
        ),
        "unix-socket" => outcome(
            socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::empty(),
                None,
            )
            .map_err(errno),
        ),
        "unix-datagram" => outcome(
            socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::empty(),
                None,
            )
            .map_err(errno),
        ),
        "tcp-connect" => {
            let port: u16 = rest
                .first()
                .and_then(|p| p.parse().ok())
                .expect("tcp-connect PORT");
            outcome(
                socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::empty(),
                    None,
                )
                .map_err(errno)
                .and_then(|fd| {
                    connect(
                        std::os::fd::AsRawFd::as_raw_fd(&fd),
                        &SockaddrIn::new(127, 0, 0, 1, port),
                    )
                    .map_err(errno)
                }),
            )
        }
        "execve" => {
            let program = c"/bin/true";
            outcome(nix::unistd::execv(program, &[program]).map_err(errno))
        }
        "spawn" => outcome(
            std::process::Command::new("/bin/true")
                .status()
                .map_err(errno),
        ),
        "ptrace" => outcome(nix::sys::ptrace::attach(nix::unistd::getppid()).map_err(errno)),
        // Turning written memory into code: what an exploit does with a payload.
        "make-exec" => outcome(
            memmap2::MmapMut::map_anon(4096)
                .map_err(errno)
                .and_then(|map| map.make_exec().map_err(errno)),
        ),
        "unlisted-syscall" => {
            nix::unistd::sync();
            "ok".to_owned()
        }
        "thread-before-seccomp" => {
            go.send(()).expect("go");
            before_seccomp
                .join()
                .map(|()| "ok".to_owned())
                .unwrap_or_else(|_| "thread panicked".to_owned())
        }
        "thread-after" => {
            std::thread::spawn(|| outcome(std::fs::read("/etc/passwd").map_err(errno)))
                .join()
                .expect("thread")
        }
        other => {
            eprintln!("unknown probe {other}");
            return ExitCode::from(64);
        }
    };
    println!("{result}");
    ExitCode::SUCCESS
}
