//! From a parsed request to one the engine runs: every parameter checked,
//! the fields this server cannot honour refused, the prompt handed to the
//! engine (which renders, tokenizes and fits it to the context), and every
//! error a 400 naming its parameter.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;

use super::error::OpenAiError;
use super::format::{Kind, constraint};
use super::tools;
use super::wire::{
    ApiRequest, ChatMessage, Endpoint, LogprobsField, MAX_LOGPROBS, MAX_MODEL_BYTES,
    MAX_ROLE_BYTES, MAX_STOP_BYTES, MAX_TOP_LOGPROBS, ROLES, ReasoningFormat, TextOr, parse_body,
};
use crate::engine::llm::constraint::ConstraintError;
use crate::engine::llm::generate::GenerateRequest;
use crate::engine::llm::logprobs::Logprobs;
use crate::engine::llm::prepare::{Overrides, PrepareError, Prompt, PromptError};
use crate::engine::llm::template::Message;
use crate::engine::llm::tokenizer::TokenizerError;
use crate::engine::{CausalLm, InferError};
use crate::server::http::AppState;

/// A request checked and ready to run.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) endpoint: Endpoint,
    pub(super) model: Arc<CausalLm>,
    pub(super) generate: GenerateRequest,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) seed: Option<i64>,
    /// SHA-256 of the prompt text (rendered template or the prompt itself).
    pub(super) prompt_sha256: String,
    /// The constraint the answer is held to: its kind and schema digest,
    /// for the audit record.
    pub(super) constraint: Option<(Kind, String)>,
    /// How many tools the request offered.
    pub(super) tools: usize,
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
pub(super) fn refuse_unsupported(body: &ApiRequest) -> Result<(), OpenAiError> {
    // Set to something other than null or the value that means "off".
    let given = |value: &Option<Value>, off: &dyn Fn(&Value) -> bool| {
        value.as_ref().is_some_and(|v| !v.is_null() && !off(v))
    };
    let checks = [
        (body.n.is_some_and(|n| n != 1), "n other than 1", "n"),
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

/// The logprobs a request asks for, with OpenAI's types and bounds: chat's
/// `logprobs: true` with `top_logprobs` alternatives (0 to
/// [`MAX_TOP_LOGPROBS`], and only with `logprobs: true`), the legacy
/// endpoint's `logprobs` count (0 to [`MAX_LOGPROBS`]; `false` is off, as
/// `null`). The legacy endpoint has no `top_logprobs`: it is ignored there.
pub(super) fn asked_logprobs(
    endpoint: Endpoint,
    body: &ApiRequest,
) -> Result<Option<Logprobs>, OpenAiError> {
    let wrong_type = |what: &str| {
        OpenAiError::invalid(
            format!("invalid request body: logprobs must be {what}"),
            Some("logprobs"),
            Some("invalid_type"),
        )
    };
    match (endpoint, body.logprobs) {
        (Endpoint::Chat, Some(LogprobsField::Count(_))) => Err(wrong_type(
            "a boolean on /v1/chat/completions (top_logprobs says how many alternatives)",
        )),
        (Endpoint::Chat, field) => {
            let asked = field == Some(LogprobsField::Flag(true));
            match body.top_logprobs {
                Some(_) if !asked => Err(OpenAiError::invalid(
                    "top_logprobs is only allowed with logprobs: true",
                    Some("top_logprobs"),
                    None,
                )),
                Some(top) => Ok(Some(Logprobs {
                    top: at_most("top_logprobs", top, MAX_TOP_LOGPROBS)?,
                })),
                None => Ok(asked.then_some(Logprobs { top: 0 })),
            }
        }
        (Endpoint::Completions, Some(LogprobsField::Flag(true))) => Err(wrong_type(
            "an integer on /v1/completions: how many alternatives, 0 to 5",
        )),
        (Endpoint::Completions, Some(LogprobsField::Count(top))) => Ok(Some(Logprobs {
            top: at_most("logprobs", top, MAX_LOGPROBS)?,
        })),
        (Endpoint::Completions, _) => Ok(None),
    }
}

/// `value` of the field `name`, if it is in 0..=`max`.
fn at_most(name: &str, value: i64, max: usize) -> Result<usize, OpenAiError> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v <= max)
        .ok_or_else(|| {
            OpenAiError::invalid(
                format!("{name} must be between 0 and {max}, got {value}"),
                Some(name),
                None,
            )
        })
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

/// Parses the body, checks every parameter and builds the prompt. The
/// request is admitted (or refused with `queue_full`) before the prompt is
/// rendered and tokenized, and those run only while a turn of the daemon's
/// preparation semaphore is held: the expensive work is bounded by the
/// queue and by the CPUs, and by the byte bound checked first.
pub(super) async fn prepare(
    state: &AppState,
    endpoint: Endpoint,
    bytes: &[u8],
    model_name: &mut Option<String>,
) -> Result<(Prepared, OwnedSemaphorePermit), OpenAiError> {
    let body = parse_body(bytes)?;
    if body.model.len() > MAX_MODEL_BYTES {
        return Err(OpenAiError::over_limit(
            "model",
            "bytes",
            body.model.len(),
            MAX_MODEL_BYTES,
        ));
    }
    *model_name = Some(body.model.clone());
    let model = Arc::clone(find(state, &body.model)?);
    refuse_unsupported(&body)?;
    let tools = tools::asked(endpoint, &body, &model)?;
    let logprobs = asked_logprobs(endpoint, &body)?;
    let format = constraint(body.response_format, tools.constraint.as_ref())?;
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
        return Err(OpenAiError::over_limit(
            "stop",
            "bytes",
            long.len(),
            MAX_STOP_BYTES,
        ));
    }
    // A constrained answer ends where its JSON does: ignoring the end
    // would let it run on past it, and a stop string would cut it short
    // with the answer still ending `stop`.
    let ends_elsewhere = [
        (body.ignore_eos == Some(true), "ignore_eos"),
        (!stop.is_empty(), "stop"),
    ];
    if format.is_some()
        && let Some((_, param)) = ends_elsewhere.iter().find(|(given, _)| *given)
    {
        return Err(OpenAiError::invalid(
            format!(
                "{param} cannot be used with a constrained answer (a response_format other \
                 than text, or a tool_choice that forces a call)"
            ),
            Some(param),
            None,
        ));
    }
    // What the audit record says of it, and the schema the engine holds.
    let (recorded, schema) = match format {
        Some(f) => (Some((f.kind, f.schema_sha256)), Some(f.schema)),
        None => (None, None),
    };
    let parse_special = body.parse_special == Some(true);
    let context = model.info().context_length;
    let (prompt, param) = match endpoint {
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
            (Prompt::Chat(messages), "messages")
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
            (Prompt::Text(prompt), "prompt")
        }
    };
    model
        .check_prompt_bytes(&prompt)
        .map_err(|e| prompt_error(e, param))?;
    let admitted = model.admit()?;
    let overrides = Overrides {
        max_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body
            .top_k
            .map(|k| u32::try_from(k.max(0)).unwrap_or(u32::MAX)),
        min_p: body.min_p,
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        seed: body.seed.map(|s| s as u64),
        stop,
        stop_token_ids: body.stop_token_ids.map(|ids| ids.0).unwrap_or_default(),
        ignore_eos: body.ignore_eos == Some(true),
        parse_special,
        split_reasoning: endpoint == Endpoint::Chat
            && body.reasoning_format != Some(ReasoningFormat::None),
        logprobs,
        // A forced call's schema goes with it, to read its calls back.
        schema: schema.filter(|_| tools.constraint.is_none()),
        tools: tools.tools,
        forced: tools.constraint,
    };
    let ready = model
        .prepare(prompt, overrides)
        .await
        .map_err(|e| prepare_error(e, context, param))?;
    let prepared = Prepared {
        endpoint,
        model,
        generate: ready.request,
        stream: body.stream == Some(true),
        include_usage: body
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        seed: body.seed,
        prompt_sha256: ready.prompt_sha256,
        constraint: recorded,
        tools: tools.offered,
    };
    Ok((prepared, admitted))
}

/// The 400 (or 500) for a prompt the engine could not build, naming
/// `param`, the field that holds it.
fn prompt_error(error: PromptError, param: &str) -> OpenAiError {
    match error {
        PromptError::Template(_) => OpenAiError::invalid(error.to_string(), Some("messages"), None),
        PromptError::TooLong {
            bytes,
            limit,
            tokens,
        } => too_many_bytes(tokens, bytes, limit, param),
        PromptError::Tokenizer(TokenizerError::Placeholders) => {
            OpenAiError::invalid(error.to_string(), Some(param), None)
        }
        PromptError::Tokenizer(_) => InferError::Runtime(error.to_string()).into(),
    }
}

fn prepare_error(error: PrepareError, context: usize, param: &str) -> OpenAiError {
    match error {
        PrepareError::Prompt(e) => prompt_error(e, param),
        PrepareError::Infer(e) => e.into(),
        PrepareError::Constraint(e) => OpenAiError::invalid(
            e.to_string(),
            Some(match e {
                ConstraintError::Unavailable(_) => "model",
                _ => "response_format",
            }),
            None,
        ),
        PrepareError::Empty => OpenAiError::invalid(
            format!("the {param} is empty: there is nothing to continue"),
            Some(param),
            None,
        ),
        PrepareError::ContextExceeded {
            prompt_tokens,
            max_tokens,
            ..
        } => OpenAiError::invalid(
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens \
                 ({prompt_tokens} in the {param}, {} for the completion). Please reduce the length of the {param} or max_tokens.",
                prompt_tokens + max_tokens.unwrap_or(1),
                max_tokens.map_or_else(|| "at least 1".to_owned(), |m| m.to_string()),
            ),
            Some(param),
            Some("context_length_exceeded"),
        ),
    }
}

/// A message as the template takes it: text parts joined, `developer`
/// treated as `system`.
fn to_message(index: usize, message: ChatMessage) -> Result<Message, OpenAiError> {
    if message.role.len() > MAX_ROLE_BYTES {
        return Err(OpenAiError::over_limit(
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
    let (tool_calls, tool_call_id) = tools::message_fields(
        index,
        &message.role,
        message.tool_calls,
        message.tool_call_id,
    )?;
    let role = if message.role == "developer" {
        "system".to_owned()
    } else {
        message.role
    };
    Ok(Message {
        role,
        content,
        tool_calls,
        tool_call_id,
    })
}

/// The causal LM a request names, or 404 `model_not_found` naming those
/// there are.
pub(super) fn find<'a>(state: &'a AppState, name: &str) -> Result<&'a Arc<CausalLm>, OpenAiError> {
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
