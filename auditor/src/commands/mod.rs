//! One module per subcommand: each reads its files, calls the library and
//! turns the outcome into output and an exit code ([`crate::exit`]).

pub(crate) mod archive;
pub(crate) mod integrity_check;
pub(crate) mod keygen;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod model;
pub(crate) mod serve;
pub(crate) mod verify;
