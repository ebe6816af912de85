//! `deepseek-audit keygen`: the checkpoint signing key.

use std::path::Path;
use std::process::ExitCode;

use crate::exit::{self, fail};
use crate::keys;

/// Writes the key (and the verifier key file when asked) and prints the
/// verifier key for `audit.toml`.
pub(crate) fn run(name: &str, out: &Path, verifier_out: Option<&Path>) -> ExitCode {
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut seed) {
        return fail(exit::OS, &e);
    }
    match keys::generate(name, out, verifier_out, seed) {
        Ok(signer) => {
            println!("verifier_key = \"{}\"", signer.verifier());
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::IO, &e),
    }
}
