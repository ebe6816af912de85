//! The audit log, from the daemon's side: the connection to the auditor
//! ([`client`]) and every record the daemon writes to it ([`records`]),
//! decided in one place.
#![forbid(unsafe_code)]

mod client;
pub(crate) mod records;

pub(crate) use client::AuditClient;
