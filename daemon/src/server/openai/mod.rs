//! The OpenAI-compatible API for causal LMs: `GET /v1/models`,
//! `POST /v1/chat/completions` and `POST /v1/completions`, answered whole
//! or streamed as server-sent events, with errors in OpenAI's shape.
//!
//! [`handlers`] are the endpoints; [`wire`] parses a body within its
//! limits, [`prepare`] checks it and hands the engine a prompt ([`tools`]
//! reads and checks the tool fields, and shapes an answer's calls;
//! [`format`] turns `response_format` into the schema the engine
//! enforces), [`whole`] and [`stream`] answer ([`logprobs`] shapes the
//! logprobs asked for),
//! [`record`] keeps what the audit records share. Every request is audited with
//! digests and token counts, never its text: a whole answer leaves only
//! once its record is acknowledged; a stream starts only once its
//! `request` record is, and ends with a `completion` record before
//! `[DONE]`. Each generation is driven by a task of its own, so a client
//! that disconnects cancels it and it is still recorded.

mod error;
mod format;
#[doc(hidden)]
pub(crate) mod fuzz;
mod handlers;
mod logprobs;
mod prepare;
mod record;
mod stream;
mod tools;
mod whole;
mod wire;

pub(crate) use error::OpenAiError;
pub(crate) use handlers::{chat_completions, completions, get_model, list_models};
