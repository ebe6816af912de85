//! The model store: versions of each model imported from signed bundles,
//! one of them active, all recorded in the signed integrity database
//! (docs/guide/models.md). `deepseek-audit model` runs the operations and
//! records each in the audit log; deepseekd serves the active version.

mod active;
mod amend;
mod error;
mod import;
pub mod layout;
mod ops;
mod provenance;

pub use active::active_version;
pub use error::StoreError;
pub use layout::{Layout, Origin};
pub use ops::{Operation, Pending, Store, VersionInfo, list};
pub use provenance::{Provenance, provenance};
