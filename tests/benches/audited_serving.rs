//! Audited serving against unaudited (issue 16), in one run: the release
//! `deepseekd` on the demo model, once recording every request with a real
//! `deepseek-audit serve` (the package's checkpoint settings: every 1000
//! entries or 60 s) and once with `audit.required = false` and no auditor.
//! 1, 8 and 64 clients, each on its own keep-alive connection, the two
//! daemons alternated twice per cell so drift hits both; on a quiet machine
//! and while a busy neighbour (one spinning process per core, nice 0)
//! keeps every core busy. Also `fdatasync`'s own p50 on the log's
//! filesystem, the floor of an audited answer's added latency.
//!
//! `make bench-audit`; `--seconds N` per cell (default 4).

use std::io::Write;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deepseek_tests::load::{Prepared, Sample, load, seconds_arg};
use deepseek_tests::{
    Auditor, Daemon, metric, model_table, ort_library, shared_tempdir, write_config,
    write_config_audited,
};
use serde_json::json;

/// p50 of appending 300 bytes and `fdatasync` in `dir`, for `seconds`.
fn fdatasync_p50(dir: &std::path::Path, seconds: f64) -> Duration {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path).expect("probe");
    let line = [b'x'; 300];
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        file.write_all(&line).expect("write");
        file.sync_data().expect("fdatasync");
        latencies.push(t.elapsed());
    }
    std::fs::remove_file(&path).expect("remove probe");
    Sample {
        latencies,
        elapsed: started.elapsed(),
    }
    .percentile(0.5)
}

/// CPU time `pid` has used (user and system), from /proc/PID/stat.
fn cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the whole line.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .expect("CLK_TCK") as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// One spinning process per core, until dropped.
struct Neighbour(Vec<Child>);

impl Neighbour {
    fn start(cores: usize) -> Self {
        Self(
            (0..cores)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("spinner")
                })
                .collect(),
        )
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() {
    let seconds = seconds_arg("audited_serving", 4.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let models = model_table(
        "demo",
        "demo.onnx",
        &format!("sessions = {cores}\nintra_op_threads = 1\nqueue_depth = 256"),
    );

    let dir = shared_tempdir();
    let socket = dir.path().join("deepseekd.sock");
    let config = write_config(dir.path(), &socket, &ort_library(), "", "", &models);
    let unaudited = Daemon::spawn_with_config(dir, socket, config, &[]);
    unaudited.wait_ready();

    let dir = shared_tempdir();
    let auditor = Auditor::start_configured(
        &dir.path().join("audit"),
        &dir.path().join("audit/log"),
        1,
        "checkpoint_every = 1000\ncheckpoint_interval_secs = 60",
    );
    let log_dir = auditor.log_dir.clone();
    let auditor_pid = auditor.pid();
    let audit_metrics = auditor.dir.join("metrics.prom");
    // The auditor's own counters (written each second): entries, batches,
    // time in fdatasync.
    let counters = || {
        // Until the file has been rewritten since the last cell ended.
        std::thread::sleep(Duration::from_millis(1100));
        let text = std::fs::read_to_string(&audit_metrics).unwrap_or_default();
        let get = |series| metric(&text, series).unwrap_or(0.0);
        (
            get("deepseek_audit_batch_entries_sum"),
            get("deepseek_audit_batch_entries_count"),
            get("deepseek_audit_fdatasync_seconds_sum"),
        )
    };
    let socket = dir.path().join("deepseekd.sock");
    let config = write_config_audited(
        dir.path(),
        &socket,
        &ort_library(),
        "",
        "",
        &models,
        &auditor.table(),
    );
    let mut audited = Daemon::spawn_with_config(dir, socket, config, &[]);
    audited.wait_ready();
    audited.auditor = Some(auditor);

    let request = Arc::new(Prepared {
        path: "/v2/models/demo/infer",
        headers: vec![("content-type", "application/json".to_owned())],
        body: Bytes::from(
            serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1, 4],
                "datatype": "FP32", "data": [1, 2, 3, 4]}]}))
            .expect("json"),
        ),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for daemon in [&unaudited, &audited] {
        runtime.block_on(load(daemon.socket.clone(), Arc::clone(&request), 8, 0.5));
    }

    println!(
        "audited serving: demo model [1,4] KServe JSON, {cores} cores, {seconds} s per cell \
         (two rounds of each daemon, alternated), lockdown {}",
        if deepseek_tests::is_root() {
            "enforced"
        } else {
            "off (not root)"
        }
    );
    println!(
        "{:<8} {:>7} {:>12} {:>12} {:>12} {:>12} {:>8} {:>12}",
        "machine",
        "clients",
        "off p50 us",
        "off req/s",
        "on p50 us",
        "on req/s",
        "ratio",
        "added p50 us"
    );
    for busy in [false, true] {
        let neighbour = busy.then(|| Neighbour::start(cores));
        let fsync = fdatasync_p50(&log_dir, 1.0);
        let machine = if busy { "busy" } else { "quiet" };
        for clients in [1, 8, 64] {
            let before = counters();
            let pids = [unaudited.pid(), audited.pid(), auditor_pid];
            let cpu_before = pids.map(cpu);
            let mut rounds: Vec<(bool, Sample)> = Vec::new();
            for on in [false, true, false, true] {
                let daemon = if on { &audited } else { &unaudited };
                let sample = runtime.block_on(load(
                    daemon.socket.clone(),
                    Arc::clone(&request),
                    clients,
                    seconds / 2.0,
                ));
                rounds.push((on, sample));
            }
            let mean = |on: bool, measure: &dyn Fn(&Sample) -> f64| {
                let values: Vec<f64> = rounds
                    .iter()
                    .filter(|(o, _)| *o == on)
                    .map(|(_, s)| measure(s))
                    .collect();
                values.iter().sum::<f64>() / values.len() as f64
            };
            let cpu_after = pids.map(cpu);
            let after = counters();
            let served = |on: bool| -> f64 {
                rounds
                    .iter()
                    .filter(|(o, _)| *o == on)
                    .map(|(_, s)| s.latencies.len() as f64)
                    .sum()
            };
            let cpu_per = |i: usize, on: bool| {
                (cpu_after[i] - cpu_before[i]).as_secs_f64() * 1e6 / served(on)
            };
            let batches = after.1 - before.1;
            let p50 = |on| mean(on, &|s| s.percentile(0.5).as_secs_f64() * 1e6);
            let rate = |on| mean(on, &Sample::per_second);
            println!(
                "{machine:<8} {clients:>7} {:>12.1} {:>12.0} {:>12.1} {:>12.0} {:>8.2} {:>12.1} {:>10.1} {:>10.1}",
                p50(false),
                rate(false),
                p50(true),
                rate(true),
                rate(true) / rate(false),
                p50(true) - p50(false),
                (after.0 - before.0) / batches,
                (after.2 - before.2) / batches * 1e6,
            );
            println!(
                "{:<8} {:>7} CPU us per request: daemon unaudited {:.1}, audited {:.1}, auditor {:.1}",
                "",
                "",
                cpu_per(0, false),
                cpu_per(1, true),
                cpu_per(2, true),
            );
        }
        println!(
            "{machine:<8} fdatasync p50 on the log's filesystem: {:.1} us",
            fsync.as_secs_f64() * 1e6
        );
        drop(neighbour);
    }
}
