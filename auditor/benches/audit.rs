//! Durable appends per second through the real service (Unix socket,
//! frames, group commit with `fdatasync`) at 1, 8 and 64 concurrent writers,
//! and `log verify` throughput on a log of one million entries. Run with
//! `make bench-audit`; `--seconds N` sets the time per row (default 3).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deepseek_audit::entry::{Entry, Event};
use deepseek_audit::service::{self, ServiceConfig};
use deepseek_audit::storage::{LogFile, Tail};
use deepseek_integrity::note::NoteSigner;

fn config(dir: &Path) -> ServiceConfig {
    toml::from_str(&format!(
        "socket = \"{0}/audit.sock\"\nlog_dir = \"{0}/log\"\nallowed_uids = [{1}]\ncheckpoint_every = 100000\nmin_free_bytes = 1\nsyslog = false\n",
        dir.display(),
        nix::unistd::Uid::current()
    ))
    .expect("config")
}

/// One writer: sends a record, waits for its acknowledgement, repeats.
fn writer(socket: &Path, deadline: Instant) -> u64 {
    let mut stream = UnixStream::connect(socket).expect("connect");
    let mut done = 0;
    while Instant::now() < deadline {
        let body = format!(
            r#"{{"tag":{done},"entry":{{"seq":0,"time_ns":0,"event":"request","model":"demo","status":200,"latency_us":512}}}}"#
        );
        stream
            .write_all(&(body.len() as u32).to_be_bytes())
            .expect("write");
        stream.write_all(body.as_bytes()).expect("write");
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).expect("ack");
        let mut reply = vec![0u8; u32::from_be_bytes(length) as usize];
        stream.read_exact(&mut reply).expect("ack");
        done += 1;
    }
    done
}

fn main() {
    let mut seconds = 3.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let config = config(dir.path());
    let listener = UnixListener::bind(&config.socket).expect("bind");
    let stop = Arc::new(AtomicBool::new(false));
    let signer = NoteSigner::from_seed("deepseek-audit/bench", [1; 32]).expect("key");
    let service_stop = Arc::clone(&stop);
    let service_config = config;
    let socket = service_config.socket.clone();
    let service = std::thread::spawn(move || {
        let allowed = service_config.allowed_uids.clone();
        let opened = service::open(&service_config, &signer, None).expect("open the log");
        service::serve(
            &service_config,
            opened,
            allowed,
            signer,
            listener,
            service_stop,
        )
        .expect("service")
    });
    println!(
        "durable appends through the socket (one fdatasync per batch), {seconds} s per row, in {}",
        base.display()
    );
    println!("{:>8} {:>12} {:>14}", "writers", "appends", "appends/s");
    for writers in [1usize, 8, 64] {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let threads: Vec<_> = (0..writers)
            .map(|_| {
                let socket = socket.clone();
                std::thread::spawn(move || writer(&socket, deadline))
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().expect("writer")).sum();
        println!(
            "{writers:>8} {total:>12} {:>14.0}",
            total as f64 / started.elapsed().as_secs_f64()
        );
    }
    stop.store(true, Ordering::Relaxed);
    service.join().expect("service thread");

    // A log of one million entries, written in large batches, then verified.
    let big = tempfile::tempdir_in(&base).expect("tempdir");
    let mut log = LogFile::open(big.path(), &Tail::default()).expect("open");
    for batch in 0..100u64 {
        let entries = (0..10_000u64)
            .map(|i| Entry {
                time_ns: u128::from(batch * 10_000 + i),
                model: Some("demo".into()),
                status: Some(200),
                ..Entry::event(Event::Request)
            })
            .collect();
        log.append(entries).expect("append");
    }
    drop(log);
    let bytes = std::fs::read(big.path().join("entries.log")).expect("read");
    let verifier = NoteSigner::from_seed("deepseek-audit/bench", [1; 32])
        .expect("key")
        .verifier();
    let started = Instant::now();
    let verified = deepseek_audit::verify::verify(&bytes, &[], &verifier, None).expect("verifies");
    let elapsed = started.elapsed();
    println!();
    println!(
        "log verify: {} entries ({:.1} MiB) in {:.3} s = {:.0} entries/s",
        verified.entries,
        bytes.len() as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64(),
        verified.entries as f64 / elapsed.as_secs_f64()
    );
}
