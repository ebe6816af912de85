//! What the handlers of every protocol share: the daemon's state, reading
//! a request body within its limits, errors, and recording a request in
//! the audit log before it is answered.

mod body;
mod error;
mod recording;
mod state;

pub(crate) use body::{Bounded, read_body};
pub(crate) use deepseek_integrity::digest::sha256_hex;
pub(crate) use error::{ApiError, cancelled};
pub(crate) use recording::{Recorded, audit_peer, record_or_refuse};
pub(crate) use state::AppState;
