//! Test harness: starts the real `deepseekd` binary on a temporary socket
//! with a generated configuration, and talks HTTP/1.1 to it over that socket.
//!
//! Nothing here is mocked: the daemon loads the real ONNX Runtime library
//! (`.ort/cpu`, fetched by `make test`) and the committed fixture models.
//!
//! By concern, each module using only those before it in this list:
//! `fixtures` (paths, binaries, Python, temporary directories), `procfs`,
//! `client` (HTTP over the Unix socket), `config` (the daemon's
//! configuration), `auditor` (a real `deepseek-audit serve`) and `daemon`
//! (the real `deepseekd`). Everything is re-exported here, so tests use
//! `deepseek_tests::NAME`.
#![forbid(unsafe_code)]

mod auditor;
mod client;
mod config;
mod daemon;
mod fixtures;
pub mod load;
mod procfs;

pub use auditor::Auditor;
pub use client::{
    Connection, Response, binary_request, delta_text, get, metric, post_binary, post_json, request,
    stream_events,
};
pub use config::{
    gqa_table, integrity_table, llm_table, model_table, sandbox_table, write_config,
    write_config_audited,
};
pub use daemon::{
    Daemon, check_config_with_models, openai_error, run_client_script, run_daemon, run_with_models,
    wait_for_model,
};
pub use fixtures::{
    binary, is_root, llm_expected, llm_fixture, llm_fixture_with_template, model, named,
    ort_library, prometheus_tool, python, shared_tempdir, token_ids, workspace,
};
pub use procfs::{inet_inodes, socket_inodes};
