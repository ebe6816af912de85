//! Serving HTTP/1.1 on the Unix socket: the accept loop, per-connection
//! peer credentials, and graceful shutdown. Each protocol is an adapter of
//! its own over the engine (`kserve/`, `openai/`), neither importing the
//! other; `http/` is what they share, `router` puts them together.
#![forbid(unsafe_code)]

pub(crate) mod http;
pub(crate) mod kserve;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod openai;
pub(crate) mod peer;
pub(crate) mod refusal;
pub(crate) mod router;
pub(crate) mod socket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use peer::{AccessPolicy, Peer};
use refusal::Refusals;

/// A client that has not sent its request headers after this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Every in-flight request finished.
    Clean,
    /// The grace period ran out with requests still running.
    TimedOut,
}

/// Who may connect, checked at `accept`.
#[derive(Debug)]
pub(crate) struct Gate {
    pub access: AccessPolicy,
    pub refusals: Refusals,
}

/// Accepts connections (at most `max_connections` at once) until `shutdown`
/// resolves, then stops accepting and waits up to `grace` for in-flight
/// requests to finish. A peer the `gate` refuses is answered and closed at
/// `accept`: it never holds a slot, and its request is never read.
pub(crate) async fn serve(
    listener: UnixListener,
    app: Router,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    max_connections: usize,
) -> Drained {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut free_slot = None;
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        // Wait for a free slot before accepting, so excess clients queue in
        // the listen backlog instead of costing the daemon memory.
        // A slot left by a refused peer is reused for the next connection.
        let slot = match free_slot.take() {
            Some(slot) => slot,
            None => tokio::select! {
                () = &mut shutdown => break,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("semaphore never closed"),
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    free_slot = Some(slot);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; connection closed");
                free_slot = Some(slot);
                continue;
            }
        };
        if let Err(denial) = gate.access.check(&peer) {
            gate.refusals.refuse(stream, &peer, denial);
            free_slot = Some(slot);
            continue;
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting connections; finishing in-flight requests");
    tokio::select! {
        biased;
        () = graceful.shutdown() => Drained::Clean,
        () = tokio::time::sleep(grace) => Drained::TimedOut,
    }
}
