//! The daemon's configuration as the tests write it: `[[model]]`,
//! `[sandbox]` and `[integrity]` tables and whole `deepseekd.toml` files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::fixtures::{is_root, model};

/// A `[[model]]` table for the configuration.
pub fn model_table(name: &str, file: &str, extra: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        model(file).display()
    )
}

/// A `[[model]]` table serving the directory `dir` as a causal LM named
/// `name` over the OpenAI API, on one intra-op thread (the fixture's steps
/// are tiny; more threads only add scheduling noise).
pub fn llm_table(name: &str, dir: &Path, extra: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\nkind = \"causal-lm\"\npath = \"{}\"\nintra_op_threads = 1\n{extra}\n",
        dir.display()
    )
}

/// [`llm_table`] for `tiny-r1-gqa`, the fixture exported the way
/// onnxruntime-genai exports decoders: a second causal LM beside tiny-r1.
pub fn gqa_table() -> String {
    llm_table(
        "tiny-r1-gqa",
        &crate::fixtures::llm_fixture().with_file_name("tiny-r1-gqa"),
        "",
    )
}

/// The `[sandbox]` table the tests use: the real lockdown, switching to
/// `nobody`, when the tests run as root (as on CI). Without root the daemon
/// cannot empty its capability bounding set, so it runs unconfined, and the
/// tests that check the sandbox itself skip and say so.
pub fn sandbox_table(extra: &str) -> String {
    if is_root() {
        format!("[sandbox]\nuser = \"nobody\"\n{extra}\n")
    } else {
        eprintln!("note: not root, so the daemon under test runs with sandbox.enforce = false");
        format!("[sandbox]\nenforce = false\n{extra}\n")
    }
}

/// Signs an integrity database covering the directories of the models in
/// `tables` (the `[[model]]` tables of a configuration), and the whole store
/// of a model served from one, with a fresh key in `dir`, using the
/// integrity library the daemon itself verifies with. Returns the
/// `[integrity]` table pointing at it.
pub fn integrity_table(dir: &Path, tables: &str) -> String {
    let parsed: toml::Table = toml::from_str(tables).unwrap_or_default();
    // Each directory, and whether the rule walks beneath it.
    let mut model_dirs: Vec<(PathBuf, bool)> = parsed
        .get("model")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            if let Some(store) = m.get("store").and_then(|s| s.as_str()) {
                return Some((PathBuf::from(store), true));
            }
            let path = Path::new(m.get("path")?.as_str()?);
            // A causal LM's path is its directory; a tensor model's, its file.
            if m.get("kind").and_then(|k| k.as_str()) == Some("causal-lm") {
                Some((path.to_owned(), false))
            } else {
                Some((path.parent()?.to_owned(), false))
            }
        })
        .collect();
    model_dirs.sort();
    model_dirs.dedup();
    let key_path = dir.join("integrity.key");
    let key = deepseek_integrity::keys::Signer25519::generate(&key_path).expect("integrity key");
    let database = dir.join("integrity.db");
    let rules: String = model_dirs
        .iter()
        .map(|(d, recursive)| format!("[[rule]]\npath = \"{}\"\nrecursive = {recursive}\npreset = \"model\"\ndigest = \"sha256\"\n", d.display()))
        .collect();
    let config_text = format!(
        "database = \"{}\"\nsigning_key = \"{}\"\nverifier_key = \"{}\"\n{rules}",
        database.display(),
        key_path.display(),
        key.verifier()
    );
    if !model_dirs.is_empty() {
        let config =
            deepseek_integrity::config::Config::parse(&dir.join("integrity.toml"), &config_text)
                .expect("integrity config");
        let options = deepseek_integrity::scan::Options {
            jobs: 2,
            progress: false,
        };
        let entries = deepseek_integrity::scan::scan(
            &config,
            &options,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .expect("scan models");
        deepseek_integrity::database::store(
            &database,
            &deepseek_integrity::database::encode(&entries, &key),
        )
        .expect("store database");
        fs::write(dir.join("integrity.toml"), &config_text).expect("integrity config");
    }
    format!(
        "[integrity]\ndatabase = \"{}\"\nverifier_key = \"{}\"\n",
        database.display(),
        key.verifier()
    )
}

/// Writes `deepseekd.toml` into `dir`: the socket at `socket`, `library` as
/// ONNX Runtime, `server_extra` inside `[server]` (the test's own uid is
/// allowed), `sandbox_extra` inside `[sandbox]`, an `[integrity]` table with
/// a database signed for the models, then `rest` (tables).
///
/// The daemon is not required to reach an auditor here (these configurations
/// serve startup and lockdown tests); [`Daemon::spawn`](crate::Daemon::spawn)
/// runs a real one.
pub fn write_config(
    dir: &Path,
    socket: &Path,
    library: &Path,
    server_extra: &str,
    sandbox_extra: &str,
    rest: &str,
) -> PathBuf {
    let unaudited = format!(
        "[audit]\nrequired = false\nsocket = \"{}\"\n",
        dir.join("no-auditor.sock").display()
    );
    write_config_audited(
        dir,
        socket,
        library,
        server_extra,
        sandbox_extra,
        rest,
        &unaudited,
    )
}

/// Like [`write_config`], with `audit` as the `[audit]` table.
pub fn write_config_audited(
    dir: &Path,
    socket: &Path,
    library: &Path,
    server_extra: &str,
    sandbox_extra: &str,
    rest: &str,
    audit: &str,
) -> PathBuf {
    let config = dir.join("deepseekd.toml");
    let text = format!(
        "[server]\nsocket = \"{}\"\nallowed_groups = []\nallowed_uids = [{}]\n{server_extra}\n\n{}\n{}\n{audit}\n[runtime]\nlibrary = \"{}\"\n\n{rest}",
        socket.display(),
        nix::unistd::Uid::current(),
        sandbox_table(sandbox_extra),
        integrity_table(dir, rest),
        library.display()
    );
    fs::write(&config, text).expect("write config");
    config
}
