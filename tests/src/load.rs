//! Load for the benchmarks: concurrent clients, each on its own keep-alive
//! connection, sending one request again and again until a deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::Connection;

/// Latencies of one measurement, and how long it ran.
#[derive(Debug)]
pub struct Sample {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Sample {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }

    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// One request, ready to send again and again.
#[derive(Debug)]
pub struct Prepared {
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// `clients` connections sending `request` for `seconds`; every answer
/// must be 200.
pub async fn load(socket: PathBuf, request: Arc<Prepared>, clients: usize, seconds: f64) -> Sample {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.clone();
            let request = Arc::clone(&request);
            tokio::spawn(async move {
                let mut connection = Connection::open(&socket).await.expect("connect");
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let response = connection
                        .send("POST", request.path, &request.headers, request.body.clone())
                        .await
                        .expect("request");
                    assert_eq!(response.status, 200, "{:?}", response.body);
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    Sample {
        latencies,
        elapsed: started.elapsed(),
    }
}

/// `--seconds N` from the command line (`cargo bench` adds `--bench`), or
/// `default`; `bench` names the benchmark in the usage message.
pub fn seconds_arg(bench: &str, default: f64) -> f64 {
    let mut seconds = default;
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
            other => panic!("unknown argument {other:?}; usage: {bench} [--seconds N]"),
        }
    }
    seconds
}
