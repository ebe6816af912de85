//! Every end-to-end test, in one test binary: each file beside this one is
//! a module of it, so the daemon library and the dependencies are linked
//! once, not once per file (Cargo.toml: `autotests = false` and one
//! `[[test]]`). Run one file's tests with `cargo test -p deepseek-tests
//! --test e2e FILE::` (for instance `kserve::`).
//!
//! The tests share this process and its threads, as the tests of one file
//! always did: none sets environment variables, the current directory or the
//! umask, installs signal handlers or reaps children other than its own, and
//! each daemon, auditor and socket lives in its own temporary directory (the
//! one abstract socket name carries the process id, and is used once).
//! `llm_engine` loads ONNX Runtime in this process; the daemons started
//! meanwhile close any descriptor they inherit (`hardening_peers`).

mod audit;
mod batching;
mod chat_client;
mod chat_session;
mod compliance;
mod compliance_reports;
mod hardening_audit;
mod hardening_kserve;
mod hardening_openai;
mod hardening_peers;
mod integrity;
mod integrity_check;
mod kserve;
mod lifecycle;
mod limits;
mod llm;
mod llm_batch;
mod llm_engine;
mod logprobs;
mod metrics;
mod model_store;
mod notify;
mod openai_client;
mod sandbox;
mod smollm2;
mod store_serving;
mod structured;
mod tools;
