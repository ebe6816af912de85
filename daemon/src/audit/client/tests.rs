//! The client against a silent auditor: a bounded backlog, each late
//! record corrected once.

use super::*;

/// A client over a socket pair whose other end (returned) never answers.
fn silent_auditor() -> (AuditClient, std::os::unix::net::UnixStream) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let client = AuditClient::start(
        ours,
        PathBuf::from("/nonexistent/audit.sock"),
        Duration::from_millis(1),
        true,
    )
    .expect("client");
    (client, theirs)
}

fn request(id: usize) -> Entry {
    let mut entry = Entry::event(Event::Request);
    entry.request_id = Some(format!("r{id}"));
    entry.status = Some(200);
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_auditor_costs_bounded_memory_and_every_claim_gets_its_correction() {
    let (client, theirs) = silent_auditor();
    let records: Vec<_> = (0..MAX_IN_FLIGHT)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.record(request(i)).await })
        })
        .collect();
    for record in records {
        assert!(matches!(
            record.await.expect("task"),
            Err(AuditError::Timeout(_))
        ));
    }
    assert!(client.is_stalled() && client.is_connected());
    // The next record is refused at once instead of queueing.
    assert!(matches!(
        client.record(request(MAX_IN_FLIGHT)).await,
        Err(AuditError::Backlog)
    ));
    let inner = client.inner.as_ref().expect("enabled");
    assert_eq!(inner.lock().pending.len(), MAX_IN_FLIGHT);
    // The auditor goes away: every record in flight may be in its log,
    // so each gets exactly one correction, waiting for a connection.
    drop(theirs);
    while client.is_connected() {
        tokio::task::yield_now().await;
    }
    let state = inner.lock();
    assert_eq!(state.corrections.len(), MAX_IN_FLIGHT);
    assert_eq!(state.corrections_dropped, 0);
    assert!(state.pending.is_empty() && state.in_flight_bytes == 0 && state.abandoned == 0);
    assert!(
        state
            .corrections
            .iter()
            .all(|c| c.event == Event::Undelivered && c.status == Some(503))
    );
    drop(state);
    client.close();
}
