//! The OpenAI-compatible API for causal LMs: `GET /v1/models`,
//! `POST /v1/chat/completions` and `POST /v1/completions`, answered whole
//! or streamed as server-sent events, with errors in OpenAI's shape.
//!
//! Every request is audited with digests and token counts, never its text:
//! a whole answer leaves only once its record is acknowledged; a stream
//! starts only once its `request` record is, and ends with a `completion`
//! record before `[DONE]`. Each generation is driven by a task of its own,
//! so a client that disconnects cancels it and it is still recorded.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::peer::Peer;
use super::routes::{
    ApiError, AppState, Recorded, audit_peer, hex_sha256, read_body, record_or_refuse,
};
use crate::engine::CausalLm;
use crate::engine::InferError;
use crate::engine::llm::PromptError;
use crate::engine::llm::generate::{Delta, FinishReason, Finished, GenerateRequest};
use crate::engine::llm::sampling::SamplingParams;
use crate::engine::llm::template::Message;
use crate::engine::llm::tokenizer::TokenizerError;
use deepseek_audit::entry::{Entry, Event};

#[doc(hidden)]
pub mod fuzz;

/// An error as OpenAI sends it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl OpenAiError {
    fn invalid(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    fn body(&self) -> Value {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        let (status, message) = error.into_parts();
        Self {
            status,
            message,
            param: None,
            code: None,
        }
    }
}

impl From<InferError> for OpenAiError {
    fn from(error: InferError) -> Self {
        match error {
            InferError::QueueFull(_) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
                param: None,
                code: Some("queue_full"),
            },
            InferError::BadRequest(message) => Self::invalid(message, None, None),
            InferError::Runtime(detail) => {
                tracing::error!(error = %detail, "generation failed");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "generation failed; the daemon's log has the details".to_owned(),
                    param: None,
                    code: None,
                }
            }
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `GET /v1/models`: the causal LMs.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = state
        .engine
        .causal_lms()
        .map(|lm| model_object(&state, lm))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, OpenAiError> {
    let lm = find(&state, &id)?;
    Ok(axum::Json(model_object(&state, lm)).into_response())
}

fn model_object(state: &AppState, lm: &CausalLm) -> Value {
    let info = lm.info();
    json!({
        "id": info.name,
        "object": "model",
        "created": state.started_unix,
        "owned_by": "deepseekd",
        "context_length": info.context_length,
        "max_prompt_bytes": info.max_prompt_bytes,
        "device": info.device.to_string(),
        "cpu_fallback_reason": info.cpu_fallback_reason,
        "kv_cache": info.kv_cache,
        "slots": info.slots,
        "queue_depth": info.queue_depth,
        "graph": info.graph,
        "layers": info.layers,
        "kv_heads": info.kv_heads,
        "head_dim": info.head_dim,
    })
}

fn find<'a>(state: &'a AppState, name: &str) -> Result<&'a Arc<CausalLm>, OpenAiError> {
    state.engine.causal_lm(name).ok_or_else(|| {
        let served: Vec<String> = state
            .engine
            .causal_lms()
            .map(|lm| lm.info().name.clone())
            .collect();
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model {name:?} does not exist; this daemon serves: {}",
                served.join(", ")
            ),
            param: Some("model".to_owned()),
            code: Some("model_not_found"),
        }
    })
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
        }
    }

    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }
}

/// The body of either endpoint; unknown fields are ignored, as OpenAI's
/// clients send more than a server needs.
/// Limits on what a client sends, so that no field can make the daemon
/// allocate much more than the body itself (docs/api.md, "Limits"). Arrays
/// are refused as soon as they run over, before the rest is parsed.
const MAX_MODEL_BYTES: usize = 256;
const MAX_MESSAGES: usize = 4096;
const MAX_ROLE_BYTES: usize = 64;

/// The roles a message may have (OpenAI's; `developer` is read as `system`).
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];
const MAX_CONTENT_PARTS: usize = 1024;
/// Strings in `stop`, empty ones included (at most 4 non-empty are used).
const MAX_STOP_ITEMS: usize = 64;
const MAX_STOP_BYTES: usize = 1024;
const MAX_STOP_TOKEN_IDS: usize = 256;
/// The start of every limit's error, which is not a type error.
const OVER_LIMIT: &str = "over the limit";

/// A JSON array of at most `N` items.
#[derive(Debug)]
struct Bounded<T, const N: usize>(Vec<T>);

fn bounded_items<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    mut seq: A,
    max: usize,
) -> Result<Vec<T>, A::Error> {
    let mut items = Vec::new();
    while let Some(item) = seq.next_element()? {
        if items.len() == max {
            return Err(de::Error::custom(format_args!(
                "{OVER_LIMIT}: more than {max} items"
            )));
        }
        items.push(item);
    }
    Ok(items)
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Items<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {N} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                bounded_items(seq, N).map(Bounded)
            }
        }
        deserializer.deserialize_seq(Items(PhantomData))
    }
}

/// A string, or an array of at most `N` items. Written out rather than an
/// untagged enum, which would buffer the whole value (tens of bytes per
/// array item) before trying each variant.
#[derive(Debug)]
enum TextOr<T, const N: usize> {
    Text(String),
    Items(Vec<T>),
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for TextOr<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Either<T, N> {
            type Value = TextOr<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string or an array of at most {N} items")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(TextOr::Text(text.to_owned()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(TextOr::Text(text))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                bounded_items(seq, N).map(TextOr::Items)
            }
        }
        deserializer.deserialize_any(Either(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
struct ApiRequest {
    model: String,
    #[serde(default)]
    messages: Option<Bounded<ChatMessage, MAX_MESSAGES>>,
    /// Kept as JSON until it is known to be text: token-id arrays are
    /// refused without being parsed into values.
    #[serde(default)]
    prompt: Option<Box<RawValue>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<TextOr<String, MAX_STOP_ITEMS>>,
    #[serde(default)]
    stop_token_ids: Option<Bounded<u32, MAX_STOP_TOKEN_IDS>>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    reasoning_format: Option<ReasoningFormat>,
    #[serde(default)]
    logit_bias: Option<Value>,
    /// Parse added tokens spelled in the prompt or messages (llama.cpp's
    /// name); off by default, so that text cannot forge a turn.
    #[serde(default)]
    parse_special: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// A message's content: text, or text parts.
type Content = TextOr<ContentPart, MAX_CONTENT_PARTS>;

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// How reasoning is returned (llama.cpp's option name).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ReasoningFormat {
    /// `reasoning_content` and `content` apart (the default).
    Deepseek,
    Auto,
    /// The raw text, `<think>` included, in `content`.
    None,
}

/// A request checked and ready to run.
#[derive(Debug)]
struct Prepared {
    endpoint: Endpoint,
    model: Arc<CausalLm>,
    generate: GenerateRequest,
    stream: bool,
    include_usage: bool,
    seed: Option<i64>,
    /// SHA-256 of the prompt text (rendered template or the prompt itself).
    prompt_sha256: String,
}

fn check_range(name: &str, value: Option<f32>, low: f32, high: f32) -> Result<(), OpenAiError> {
    match value {
        Some(v) if !(low..=high).contains(&v) => Err(OpenAiError::invalid(
            format!("{name} must be between {low} and {high}, got {v}"),
            Some(name),
            None,
        )),
        _ => Ok(()),
    }
}

fn unsupported(what: &str, param: &str) -> OpenAiError {
    OpenAiError::invalid(
        format!("{what} is not supported by this server"),
        Some(param),
        None,
    )
}

/// Fields this server cannot honour are refused rather than ignored, as
/// they would change the answer.
fn refuse_unsupported(body: &ApiRequest) -> Result<(), OpenAiError> {
    // Set to something other than null or the value that means "off".
    let given = |value: &Option<Value>, off: &dyn Fn(&Value) -> bool| {
        value.as_ref().is_some_and(|v| !v.is_null() && !off(v))
    };
    let checks = [
        (body.n.is_some_and(|n| n != 1), "n other than 1", "n"),
        (
            given(&body.logprobs, &|v| *v == json!(false) || *v == json!(0)),
            "logprobs",
            "logprobs",
        ),
        (
            given(&body.tools, &|v| v.as_array().is_some_and(Vec::is_empty)),
            "tools",
            "tools",
        ),
        (
            given(&body.response_format, &|v| v["type"] == "text"),
            "a response_format other than text",
            "response_format",
        ),
        (
            given(&body.logit_bias, &|v| {
                v.as_object().is_some_and(serde_json::Map::is_empty)
            }),
            "logit_bias",
            "logit_bias",
        ),
        (body.echo == Some(true), "echo", "echo"),
        (body.suffix.is_some(), "suffix", "suffix"),
    ];
    match checks.into_iter().find(|(refused, ..)| *refused) {
        Some((_, what, param)) => Err(unsupported(what, param)),
        None => Ok(()),
    }
}

/// The prompt before it is rendered and tokenized.
enum Source {
    Chat(Vec<Message>),
    Text(String),
}

/// 400 `context_length_exceeded` for text that cannot fit, found before
/// it is tokenized.
fn too_many_bytes(context: usize, bytes: usize, limit: usize, param: &str) -> OpenAiError {
    OpenAiError::invalid(
        format!(
            "This model's maximum context length is {context} tokens. However, the text of the \
             {param} is {bytes} bytes, more than the {limit} bytes a prompt for {context} tokens may have. \
             Please reduce the length of the {param}."
        ),
        Some(param),
        Some("context_length_exceeded"),
    )
}

fn over_limit(param: &str, what: &str, size: usize, max: usize) -> OpenAiError {
    OpenAiError::invalid(
        format!("{param} is {size} {what}, over the limit of {max}"),
        Some(param),
        None,
    )
}

/// The completion's prompt: a string, or an array of exactly one.
fn prompt_text(raw: &RawValue) -> Result<String, OpenAiError> {
    if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
        return Ok(text);
    }
    if let Ok((text,)) = serde_json::from_str::<(String,)>(raw.get()) {
        return Ok(text);
    }
    if raw.get().starts_with('[') {
        return Err(unsupported(
            "a prompt other than one string (token ids, several prompts)",
            "prompt",
        ));
    }
    Err(OpenAiError::invalid(
        "invalid request body: prompt must be a string, or an array of one string",
        Some("prompt"),
        Some("invalid_type"),
    ))
}

/// Longest `param` an error names (a path such as
/// `messages[4095].content[1023]` is far shorter).
const MAX_PARAM_BYTES: usize = 256;

/// A parse error's text is cut at this many bytes: it quotes the value.
const MAX_DETAIL_BYTES: usize = 1024;

/// `param` cut to [`MAX_PARAM_BYTES`], on a character boundary.
fn cut_param(mut param: String) -> String {
    if param.len() > MAX_PARAM_BYTES {
        let mut end = MAX_PARAM_BYTES - 3;
        while !param.is_char_boundary(end) {
            end -= 1;
        }
        param.truncate(end);
        param.push_str("...");
    }
    param
}

/// The body of either endpoint, as JSON; every error a 400 naming the
/// parameter. Separate from [`prepare`] for the fuzz target `openai_request`
/// ([`fuzz`]).
fn parse_body(bytes: &[u8]) -> Result<ApiRequest, OpenAiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let missing = inner.to_string().starts_with("missing field");
        let param = if path == "." {
            inner
                .to_string()
                .split('`')
                .nth(1)
                .filter(|_| missing)
                .map(str::to_owned)
        } else {
            // serde_path_to_error names the key of an unknown field too,
            // which the client chose: cut, as it is echoed and recorded.
            Some(cut_param(path))
        };
        let code = if missing {
            Some("missing_required_parameter")
        } else if inner.is_data() && !inner.to_string().starts_with(OVER_LIMIT) {
            Some("invalid_type")
        } else {
            None
        };
        // serde quotes the offending value, which may be megabytes long.
        let detail = deepseek_audit::entry::cut(&inner.to_string(), MAX_DETAIL_BYTES);
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid request body: {detail}"),
            param,
            code,
        }
    })
}

/// Parses the body, checks every parameter and builds the prompt. The
/// request is admitted (or refused with `queue_full`) before the prompt is
/// rendered and tokenized, and those run only while a turn of the daemon's
/// preparation semaphore is held: the expensive work is bounded by the
/// queue and by the CPUs, and by the byte bound checked first.
async fn prepare(
    state: &AppState,
    endpoint: Endpoint,
    bytes: &[u8],
    model_name: &mut Option<String>,
) -> Result<(Prepared, tokio::sync::OwnedSemaphorePermit), OpenAiError> {
    let body = parse_body(bytes)?;
    if body.model.len() > MAX_MODEL_BYTES {
        return Err(over_limit(
            "model",
            "bytes",
            body.model.len(),
            MAX_MODEL_BYTES,
        ));
    }
    *model_name = Some(body.model.clone());
    let model = Arc::clone(find(state, &body.model)?);
    refuse_unsupported(&body)?;
    check_range("temperature", body.temperature, 0.0, 2.0)?;
    if body.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(OpenAiError::invalid(
            format!(
                "top_p must be greater than 0 and at most 1, got {}",
                body.top_p.unwrap_or_default()
            ),
            Some("top_p"),
            None,
        ));
    }
    check_range("min_p", body.min_p, 0.0, 1.0)?;
    check_range("presence_penalty", body.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", body.frequency_penalty, -2.0, 2.0)?;
    let max_tokens = match (body.max_tokens, body.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(OpenAiError::invalid(
                format!("max_tokens ({a}) and max_completion_tokens ({b}) differ; send one"),
                Some("max_tokens"),
                None,
            ));
        }
        (Some(0), _) => {
            return Err(OpenAiError::invalid(
                "max_tokens must be at least 1",
                Some("max_tokens"),
                None,
            ));
        }
        (_, Some(0)) => {
            return Err(OpenAiError::invalid(
                "max_completion_tokens must be at least 1",
                Some("max_completion_tokens"),
                None,
            ));
        }
        (a, b) => a.or(b).map(|n| n as usize),
    };
    let stop: Vec<String> = match body.stop {
        None => Vec::new(),
        Some(TextOr::Text(s)) => vec![s],
        Some(TextOr::Items(v)) => v,
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();
    if stop.len() > 4 {
        return Err(OpenAiError::invalid(
            format!("stop holds {} strings, at most 4 are allowed", stop.len()),
            Some("stop"),
            None,
        ));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(over_limit("stop", "bytes", long.len(), MAX_STOP_BYTES));
    }
    let parse_special = body.parse_special == Some(true);
    let context = model.info().context_length;
    let limit = model.max_prompt_bytes();
    let split = endpoint == Endpoint::Chat
        && model.reasons()
        && body.reasoning_format != Some(ReasoningFormat::None);
    let (source, param) = match endpoint {
        Endpoint::Chat => {
            let messages = body.messages.ok_or_else(|| {
                OpenAiError::invalid(
                    "missing required parameter: messages",
                    Some("messages"),
                    Some("missing_required_parameter"),
                )
            })?;
            if messages.0.is_empty() {
                return Err(OpenAiError::invalid(
                    "messages must hold at least one message",
                    Some("messages"),
                    None,
                ));
            }
            let messages = messages
                .0
                .into_iter()
                .enumerate()
                .map(|(i, m)| to_message(i, m))
                .collect::<Result<Vec<_>, _>>()?;
            // The template only adds to the content (R1's drops reasoning
            // from the history, which is counted here all the same).
            let bytes = messages.iter().map(|m| m.content.len()).sum::<usize>();
            if bytes > limit {
                return Err(too_many_bytes(context, bytes, limit, "messages"));
            }
            (Source::Chat(messages), "messages")
        }
        Endpoint::Completions => {
            let prompt = match body.prompt {
                Some(raw) => prompt_text(&raw)?,
                None => {
                    return Err(OpenAiError::invalid(
                        "missing required parameter: prompt",
                        Some("prompt"),
                        Some("missing_required_parameter"),
                    ));
                }
            };
            if prompt.len() > limit {
                return Err(too_many_bytes(context, prompt.len(), limit, "prompt"));
            }
            (Source::Text(prompt), "prompt")
        }
    };
    let admitted = model.admit()?;
    let preparing = model.preparing().await?;
    let lm = Arc::clone(&model);
    let built = tokio::task::spawn_blocking(move || {
        let _preparing = preparing;
        match source {
            Source::Chat(messages) => lm.chat_prompt(messages, parse_special),
            Source::Text(text) => lm
                .completion_prompt(&text, parse_special)
                .map(|ids| (text, ids)),
        }
    })
    .await
    .map_err(|e| InferError::Runtime(e.to_string()))?;
    let (text, prompt_ids) = built.map_err(|e| match e {
        PromptError::Template(_) => OpenAiError::invalid(e.to_string(), Some("messages"), None),
        PromptError::TooLong { bytes, limit, .. } => too_many_bytes(context, bytes, limit, param),
        PromptError::Tokenizer(TokenizerError::Placeholders) => {
            OpenAiError::invalid(e.to_string(), Some(param), None)
        }
        PromptError::Tokenizer(_) => InferError::Runtime(e.to_string()).into(),
    })?;
    let prompt_sha256 = hex_sha256(text.as_bytes());
    drop(text);
    if prompt_ids.is_empty() {
        return Err(OpenAiError::invalid(
            format!("the {param} is empty: there is nothing to continue"),
            Some(param),
            None,
        ));
    }
    let prompt_len = prompt_ids.len();
    let too_long = prompt_len >= context || max_tokens.is_some_and(|m| prompt_len + m > context);
    if too_long {
        return Err(OpenAiError::invalid(
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens \
                 ({prompt_len} in the {param}, {} for the completion). Please reduce the length of the {param} or max_tokens.",
                prompt_len + max_tokens.unwrap_or(1),
                max_tokens.map_or_else(|| "at least 1".to_owned(), |m| m.to_string()),
            ),
            Some(param),
            Some("context_length_exceeded"),
        ));
    }
    let defaults = model.defaults();
    let sampling = SamplingParams {
        temperature: body.temperature.unwrap_or(defaults.temperature),
        top_p: body.top_p.unwrap_or(defaults.top_p),
        top_k: match body.top_k {
            Some(k) => u32::try_from(k.max(0)).unwrap_or(u32::MAX),
            None => defaults.top_k,
        },
        min_p: body.min_p.unwrap_or(defaults.min_p),
        presence_penalty: body.presence_penalty.unwrap_or(0.0),
        frequency_penalty: body.frequency_penalty.unwrap_or(0.0),
    };
    let mut stop_ids: HashSet<u32> = if body.ignore_eos == Some(true) {
        HashSet::new()
    } else {
        model.stop_ids().clone()
    };
    stop_ids.extend(body.stop_token_ids.map(|ids| ids.0).unwrap_or_default());
    let seed = body.seed;
    let generate = GenerateRequest {
        prompt_ids,
        max_tokens: max_tokens.unwrap_or(context - prompt_len),
        sampling,
        seed: seed.map_or_else(random_seed, |s| s as u64),
        stop,
        stop_ids,
        split_reasoning: split,
    };
    let prepared = Prepared {
        endpoint,
        model,
        generate,
        stream: body.stream == Some(true),
        include_usage: body
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        seed,
        prompt_sha256,
    };
    Ok((prepared, admitted))
}

/// A message as the template takes it: text parts joined, `developer`
/// treated as `system`.
fn to_message(index: usize, message: ChatMessage) -> Result<Message, OpenAiError> {
    if message.role.len() > MAX_ROLE_BYTES {
        return Err(over_limit(
            &format!("messages[{index}].role"),
            "bytes",
            message.role.len(),
            MAX_ROLE_BYTES,
        ));
    }
    // Only known roles reach the template: one that renders the role (as
    // ChatML's do) would otherwise turn a role spelling an added token,
    // `u<｜Assistant｜>`, into a forged turn marker.
    if !ROLES.contains(&message.role.as_str()) {
        return Err(OpenAiError::invalid(
            format!(
                "messages[{index}].role must be one of {}, got {:?}",
                ROLES.join(", "),
                message.role
            ),
            Some(&format!("messages[{index}].role")),
            None,
        ));
    }
    let content = match message.content {
        None => String::new(),
        Some(TextOr::Text(text)) => text,
        Some(TextOr::Items(parts)) => {
            let mut text = String::new();
            for (p, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        let kind = if kind.len() > MAX_ROLE_BYTES {
                            "(too long to repeat)"
                        } else {
                            kind
                        };
                        return Err(OpenAiError::invalid(
                            format!(
                                "content parts of type {kind:?} are not supported; only \"text\""
                            ),
                            Some(&format!("messages[{index}].content[{p}]")),
                            None,
                        ));
                    }
                }
            }
            text
        }
    };
    let role = if message.role == "developer" {
        "system".to_owned()
    } else {
        message.role
    };
    Ok(Message { role, content })
}

/// Random bytes from the kernel, or the clock's nanoseconds when getrandom
/// fails (for ids and unseeded sampling, not for secrets).
fn random_bytes<const N: usize>() -> [u8; N] {
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

fn random_seed() -> u64 {
    u64::from_le_bytes(random_bytes())
}

fn unix_time_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn completion_id(endpoint: Endpoint) -> String {
    format!(
        "{}{}",
        endpoint.id_prefix(),
        deepseek_integrity::digest::hex(&random_bytes::<12>())
    )
}

/// What a request's audit records share.
#[derive(Debug)]
struct Record {
    peer: Peer,
    started: Instant,
    endpoint: Endpoint,
    model: Option<String>,
    id: String,
    /// None when the body could not be read.
    request_sha256: Option<String>,
}

impl Record {
    fn entry(&self, state: &AppState, event: Event, status: StatusCode) -> Entry {
        let mut entry = Entry::event(event);
        entry.peer = Some(audit_peer(&self.peer));
        entry.model.clone_from(&self.model);
        entry.model_sha256 = self
            .model
            .as_ref()
            .and_then(|m| state.engine.digests().get(m).cloned());
        entry.request_id = Some(self.id.clone());
        entry.request_sha256.clone_from(&self.request_sha256);
        entry.status = Some(status.as_u16());
        entry.latency_us =
            Some(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX));
        let endpoint = match self.endpoint {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        };
        entry
            .details
            .insert("endpoint".to_owned(), endpoint.to_owned());
        entry
    }

    fn add_prepared(entry: &mut Entry, prepared: &Prepared) {
        entry.tokens_in = Some(prepared.generate.prompt_ids.len() as u64);
        entry
            .details
            .insert("prompt_sha256".to_owned(), prepared.prompt_sha256.clone());
        entry
            .details
            .insert("stream".to_owned(), prepared.stream.to_string());
        if let Some(seed) = prepared.seed {
            entry.details.insert("seed".to_owned(), seed.to_string());
        }
    }

    fn add_finished(entry: &mut Entry, finished: &Finished) {
        entry.tokens_out = Some(finished.completion_tokens as u64);
        entry.details.insert(
            "completion_sha256".to_owned(),
            finished.completion_sha256.clone(),
        );
        entry.details.insert(
            "finish_reason".to_owned(),
            finished.reason.as_str().to_owned(),
        );
    }
}

/// Records `entry`; `Err` with the 503 (`audit_unavailable`) to answer when
/// it was not acknowledged and audit is required.
async fn audit(state: &AppState, entry: Entry) -> Result<Recorded, OpenAiError> {
    record_or_refuse(state, entry)
        .await
        .map_err(|refused| OpenAiError {
            code: Some("audit_unavailable"),
            ..refused.into()
        })
}

pub async fn chat_completions(
    state: State<Arc<AppState>>,
    peer: axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, peer, headers, body, Endpoint::Chat).await
}

pub async fn completions(
    state: State<Arc<AppState>>,
    peer: axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, peer, headers, body, Endpoint::Completions).await
}

async fn handle(
    State(state): State<Arc<AppState>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let started = Instant::now();
    let mut record = Record {
        peer,
        started,
        endpoint,
        model: None,
        id: completion_id(endpoint),
        request_sha256: None,
    };
    let bytes = match read_body(body, &headers, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(e) => return refuse(&state, &record, e.into()).await,
    };
    record.request_sha256 = Some(hex_sha256(&bytes));
    let prepared = prepare(&state, endpoint, &bytes, &mut record.model).await;
    drop(bytes);
    let (prepared, admitted) = match prepared {
        Ok(prepared) => prepared,
        Err(error) if error.code == Some("model_not_found") => return error.into_response(),
        Err(error) => return refuse(&state, &record, error).await,
    };
    if prepared.stream {
        let mut entry = record.entry(&state, Event::Request, StatusCode::OK);
        Record::add_prepared(&mut entry, &prepared);
        if let Err(error) = audit(&state, entry).await {
            return error.into_response();
        }
        let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
        tokio::spawn(drive_stream(
            Arc::clone(&state),
            record,
            prepared,
            admitted,
            body_tx,
        ));
        let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut response = Response::new(Body::from_stream(stream));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let (answer_tx, answer_rx) = oneshot::channel();
    tokio::spawn(drive_whole(
        Arc::clone(&state),
        record,
        prepared,
        admitted,
        answer_tx,
    ));
    answer_rx.await.unwrap_or_else(|_| {
        OpenAiError::from(InferError::Runtime(
            "the generation task ended without an answer".to_owned(),
        ))
        .into_response()
    })
}

/// Records a refused request (its status, no text) and answers the error.
async fn refuse(state: &AppState, record: &Record, error: OpenAiError) -> Response {
    let mut entry = record.entry(state, Event::Request, error.status);
    if let Some(code) = error.code {
        entry
            .details
            .insert("error_code".to_owned(), code.to_owned());
    }
    if let Some(param) = &error.param {
        entry
            .details
            .insert("error_param".to_owned(), param.clone());
    }
    match audit(state, entry).await {
        Ok(_) => error.into_response(),
        Err(unrecorded) => unrecorded.into_response(),
    }
}

/// Starts the generation; its deltas arrive on the returned receiver.
fn start(
    prepared: &Prepared,
    admitted: tokio::sync::OwnedSemaphorePermit,
) -> (
    mpsc::Receiver<Delta>,
    tokio::task::JoinHandle<Result<Finished, InferError>>,
) {
    let (tx, rx) = mpsc::channel(16);
    let task =
        tokio::spawn(Arc::clone(&prepared.model).generate(admitted, prepared.generate.clone(), tx));
    (rx, task)
}

async fn finish(
    task: tokio::task::JoinHandle<Result<Finished, InferError>>,
) -> Result<Finished, InferError> {
    task.await
        .map_err(|e| InferError::Runtime(format!("generation task failed: {e}")))?
}

/// A non-streamed request: collects the text, records it, then answers;
/// a client that leaves (`answer` closed) cancels the generation.
async fn drive_whole(
    state: Arc<AppState>,
    record: Record,
    prepared: Prepared,
    admitted: tokio::sync::OwnedSemaphorePermit,
    mut answer: oneshot::Sender<Response>,
) {
    let (mut deltas, task) = start(&prepared, admitted);
    let mut text = Delta::default();
    loop {
        tokio::select! {
            delta = deltas.recv() => match delta {
                Some(delta) => {
                    text.reasoning.push_str(&delta.reasoning);
                    text.content.push_str(&delta.content);
                }
                None => break,
            },
            () = answer.closed() => {
                drop(deltas);
                break;
            }
        }
    }
    let finished = finish(task).await;
    let (status, body, finished) = match finished {
        Ok(finished) => {
            let body = whole_body(&record, &prepared, &text, &finished);
            (StatusCode::OK, body, Some(finished))
        }
        Err(e) => {
            let error = OpenAiError::from(e);
            (error.status, error.body(), None)
        }
    };
    let body = serde_json::to_vec(&body).expect("JSON values serialize");
    let status = if finished
        .as_ref()
        .is_some_and(|f| f.reason == FinishReason::Cancelled)
    {
        // nginx's "client closed request": nothing was answered.
        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
    } else {
        status
    };
    let mut entry = record.entry(&state, Event::Request, status);
    Record::add_prepared(&mut entry, &prepared);
    if let Some(finished) = &finished {
        Record::add_finished(&mut entry, finished);
    }
    if status == StatusCode::OK {
        entry.response_sha256 = Some(hex_sha256(&body));
    }
    match audit(&state, entry).await {
        Ok(recorded) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            recorded.deliver(&state, answer, response).await;
        }
        Err(error) => {
            let _ = answer.send(error.into_response());
        }
    }
}

fn usage(prepared: &Prepared, finished: &Finished) -> Value {
    let prompt = prepared.generate.prompt_ids.len();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": prompt + finished.completion_tokens,
    })
}

fn whole_body(record: &Record, prepared: &Prepared, text: &Delta, finished: &Finished) -> Value {
    let choice = match prepared.endpoint {
        Endpoint::Chat => {
            let split = prepared.generate.split_reasoning;
            let reasoning = split.then(|| text.reasoning.clone());
            let content = if !split || finished.reasoning_closed {
                Some(text.content.clone())
            } else {
                None
            };
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": content, "reasoning_content": reasoning, "reasoning": reasoning},
                "logprobs": null,
                "finish_reason": finished.reason.as_str(),
            })
        }
        Endpoint::Completions => json!({
            "index": 0,
            "text": format!("{}{}", text.reasoning, text.content),
            "logprobs": null,
            "finish_reason": finished.reason.as_str(),
        }),
    };
    json!({
        "id": record.id,
        "object": prepared.endpoint.object(false),
        "created": unix_time_nanos() / 1_000_000_000,
        "model": prepared.model.info().name,
        "choices": [choice],
        "usage": usage(prepared, finished),
    })
}

/// The server-sent events of one streamed request.
struct Chunks<'a> {
    record: &'a Record,
    prepared: &'a Prepared,
    created: u64,
    body: mpsc::Sender<Result<Bytes, Infallible>>,
    /// Every byte sent before `[DONE]`, for the `completion` record.
    digest: Sha256,
}

impl Chunks<'_> {
    /// Sends one `data:` event; false once the client is gone.
    async fn send(&mut self, data: &Value) -> bool {
        let event = self.encode(data);
        self.push(event).await
    }

    /// One `data:` event, counted in the digest of what is streamed.
    fn encode(&mut self, data: &Value) -> Bytes {
        let event = format!("data: {data}\n\n");
        self.digest.update(event.as_bytes());
        Bytes::from(event)
    }

    async fn push(&self, event: Bytes) -> bool {
        self.body.send(Ok(event)).await.is_ok()
    }

    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.record.id,
            "object": self.prepared.endpoint.object(true),
            "created": self.created,
            "model": self.prepared.model.info().name,
            "choices": choices,
        });
        if self.prepared.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// A chunk with one choice: `chat` as a chat completion's `delta`, or
    /// `text` as a completion's.
    fn choice(&self, chat: Value, text: &str, finish_reason: Option<&str>) -> Value {
        let mut choice = json!({"index": 0, "logprobs": null, "finish_reason": finish_reason});
        match self.prepared.endpoint {
            Endpoint::Chat => choice["delta"] = chat,
            Endpoint::Completions => choice["text"] = Value::from(text),
        }
        self.chunk(json!([choice]))
    }

    /// The chunks carrying `delta`'s text, one per non-empty piece.
    fn pieces(&self, delta: &Delta) -> Vec<Value> {
        match self.prepared.endpoint {
            Endpoint::Chat => [
                (!delta.reasoning.is_empty()).then(
                    || json!({"reasoning_content": delta.reasoning, "reasoning": delta.reasoning}),
                ),
                (!delta.content.is_empty()).then(|| json!({"content": delta.content})),
            ]
            .into_iter()
            .flatten()
            .map(|chat| self.choice(chat, "", None))
            .collect(),
            Endpoint::Completions => {
                let text = format!("{}{}", delta.reasoning, delta.content);
                if text.is_empty() {
                    Vec::new()
                } else {
                    vec![self.choice(Value::Null, &text, None)]
                }
            }
        }
    }
}

/// A streamed request: forwards each delta as an event, then the finish
/// chunk, the `completion` record, the usage chunk and `[DONE]`. A client
/// that leaves cancels the generation, which is still recorded.
async fn drive_stream(
    state: Arc<AppState>,
    record: Record,
    prepared: Prepared,
    admitted: tokio::sync::OwnedSemaphorePermit,
    body: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let mut chunks = Chunks {
        record: &record,
        prepared: &prepared,
        created: unix_time_nanos() / 1_000_000_000,
        body,
        digest: Sha256::new(),
    };
    let (mut deltas, task) = start(&prepared, admitted);
    let first = chunks.choice(json!({"role": "assistant", "content": ""}), "", None);
    let mut connected = chunks.send(&first).await;
    while connected {
        // A client that leaves is noticed at once, also while the request
        // still waits for a slot.
        let delta = tokio::select! {
            delta = deltas.recv() => delta,
            () = chunks.body.closed() => {
                connected = false;
                break;
            }
        };
        let Some(delta) = delta else {
            break;
        };
        for piece in chunks.pieces(&delta) {
            if !chunks.send(&piece).await {
                connected = false;
                break;
            }
        }
    }
    // Dropping the receiver cancels a generation still running.
    drop(deltas);
    let finished = finish(task).await;
    let mut entry = record.entry(&state, Event::Completion, StatusCode::OK);
    let finished = match finished {
        Ok(finished) => finished,
        Err(e) => {
            let error = OpenAiError::from(e);
            entry.status = Some(error.status.as_u16());
            let _ = chunks.send(&error.body()).await;
            let _ = audit(&state, entry).await;
            return;
        }
    };
    if connected && finished.reason != FinishReason::Cancelled {
        let done = chunks.choice(json!({}), "", Some(finished.reason.as_str()));
        connected = chunks.send(&done).await;
    }
    Record::add_finished(&mut entry, &finished);
    // The usage chunk is known now: it goes out after the record, which
    // covers it, so the digest is of every byte before `[DONE]`.
    let usage_chunk = (connected && prepared.include_usage).then(|| {
        let mut chunk = chunks.chunk(json!([]));
        chunk["usage"] = usage(&prepared, &finished);
        chunks.encode(&chunk)
    });
    entry.response_sha256 = Some(deepseek_integrity::digest::hex(
        &chunks.digest.clone().finalize(),
    ));
    if !connected {
        entry.details.insert(
            "finish_reason".to_owned(),
            FinishReason::Cancelled.as_str().to_owned(),
        );
    }
    if let Err(error) = audit(&state, entry).await {
        // Unrecorded: the stream ends with the error, never with [DONE].
        let _ = chunks.send(&error.body()).await;
        return;
    }
    if !connected {
        return;
    }
    if let Some(chunk) = usage_chunk
        && !chunks.push(chunk).await
    {
        return;
    }
    let _ = chunks.push(Bytes::from_static(b"data: [DONE]\n\n")).await;
}
