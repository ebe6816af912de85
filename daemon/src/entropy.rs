//! Random bytes and the clock, for completion ids and unseeded sampling
//! (never for secrets).
#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Random bytes from the kernel, or the clock's nanoseconds when getrandom
/// fails.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if let Err(e) = getrandom::getrandom(&mut bytes) {
        tracing::warn!(error = %e, "getrandom failed; using the clock");
        for (byte, clock) in bytes
            .iter_mut()
            .zip(unix_time_nanos().to_le_bytes().iter().cycle())
        {
            *byte = *clock;
        }
    }
    bytes
}

/// Nanoseconds since the Unix epoch (0 before it).
pub(crate) fn unix_time_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
