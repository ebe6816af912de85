//! The request body of `/v1/chat/completions` and `/v1/completions`, with
//! a limit on every field (docs/guide/api.md, "Limits") checked while it is
//! parsed, before the rest of the body is.

use std::fmt;
use std::marker::PhantomData;

use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::OpenAiError;
use super::format::ResponseFormat;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub(super) fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
        }
    }

    /// The path the endpoint is served at, as records name it.
    pub(super) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    pub(super) fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }
}

/// Limits on what a client sends, so that no field can make the daemon
/// allocate much more than the body itself (docs/guide/api.md, "Limits"). Arrays
/// are refused as soon as they run over, before the rest is parsed.
pub(super) const MAX_MODEL_BYTES: usize = 256;
pub(super) const MAX_MESSAGES: usize = 4096;
pub(super) const MAX_ROLE_BYTES: usize = 64;

/// The roles a message may have (OpenAI's; `developer` is read as `system`).
pub(super) const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];
pub(super) const MAX_CONTENT_PARTS: usize = 1024;
/// Strings in `stop`, empty ones included (at most 4 non-empty are used).
pub(super) const MAX_STOP_ITEMS: usize = 64;
pub(super) const MAX_STOP_BYTES: usize = 1024;
pub(super) const MAX_STOP_TOKEN_IDS: usize = 256;
/// Alternatives per token: chat's `top_logprobs` and the legacy
/// endpoint's `logprobs` (OpenAI's bounds).
pub(super) const MAX_TOP_LOGPROBS: usize = 20;
pub(super) const MAX_LOGPROBS: usize = 5;
/// The start of every limit's error, which is not a type error.
pub(super) const OVER_LIMIT: &str = "over the limit";

/// A JSON array of at most `N` items.
#[derive(Debug)]
pub(super) struct Bounded<T, const N: usize>(pub(super) Vec<T>);

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
pub(super) enum TextOr<T, const N: usize> {
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

/// The body of either endpoint; unknown fields are ignored, as OpenAI's
/// clients send more than a server needs.
#[derive(Debug, Deserialize)]
pub(super) struct ApiRequest {
    pub(super) model: String,
    #[serde(default)]
    pub(super) messages: Option<Bounded<ChatMessage, MAX_MESSAGES>>,
    /// Kept as JSON until it is known to be text: token-id arrays are
    /// refused without being parsed into values.
    #[serde(default)]
    pub(super) prompt: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) max_tokens: Option<u32>,
    #[serde(default)]
    pub(super) max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub(super) temperature: Option<f32>,
    #[serde(default)]
    pub(super) top_p: Option<f32>,
    #[serde(default)]
    pub(super) top_k: Option<i64>,
    #[serde(default)]
    pub(super) min_p: Option<f32>,
    #[serde(default)]
    pub(super) presence_penalty: Option<f32>,
    #[serde(default)]
    pub(super) frequency_penalty: Option<f32>,
    #[serde(default)]
    pub(super) seed: Option<i64>,
    #[serde(default)]
    pub(super) stop: Option<TextOr<String, MAX_STOP_ITEMS>>,
    #[serde(default)]
    pub(super) stop_token_ids: Option<Bounded<u32, MAX_STOP_TOKEN_IDS>>,
    #[serde(default)]
    pub(super) ignore_eos: Option<bool>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
    #[serde(default)]
    pub(super) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(super) n: Option<u32>,
    /// A boolean for chat, an integer for completions: [`super::prepare`]
    /// checks which, and the bounds.
    #[serde(default)]
    pub(super) logprobs: Option<LogprobsField>,
    #[serde(default)]
    pub(super) top_logprobs: Option<i64>,
    /// Kept as JSON text until [`super::tools`] reads them: the order of a
    /// schema's keys is shown to the model.
    #[serde(default)]
    pub(super) tools: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) tool_choice: Option<Box<RawValue>>,
    /// `false`: a forced choice makes one call (`required`'s schema
    /// allows one item); otherwise several may come.
    #[serde(default)]
    pub(super) parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub(super) response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub(super) echo: Option<bool>,
    #[serde(default)]
    pub(super) suffix: Option<String>,
    #[serde(default)]
    pub(super) reasoning_format: Option<ReasoningFormat>,
    #[serde(default)]
    pub(super) logit_bias: Option<Value>,
    /// Parse added tokens spelled in the prompt or messages (llama.cpp's
    /// name); off by default, so that text cannot forge a turn.
    #[serde(default)]
    pub(super) parse_special: Option<bool>,
}

/// `logprobs` as sent: chat's boolean or the legacy endpoint's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogprobsField {
    Flag(bool),
    /// Saturated to `i64`'s range; bounded once the endpoint is known.
    Count(i64),
}

impl<'de> Deserialize<'de> for LogprobsField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Field;
        impl Visitor<'_> for Field {
            type Value = LogprobsField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean or an integer")
            }
            fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Self::Value, E> {
                Ok(LogprobsField::Flag(flag))
            }
            fn visit_i64<E: de::Error>(self, count: i64) -> Result<Self::Value, E> {
                Ok(LogprobsField::Count(count))
            }
            fn visit_u64<E: de::Error>(self, count: u64) -> Result<Self::Value, E> {
                Ok(LogprobsField::Count(
                    i64::try_from(count).unwrap_or(i64::MAX),
                ))
            }
        }
        deserializer.deserialize_any(Field)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatMessage {
    pub(super) role: String,
    #[serde(default)]
    pub(super) content: Option<Content>,
    /// An assistant's calls, read by [`super::tools`].
    #[serde(default)]
    pub(super) tool_calls: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) tool_call_id: Option<String>,
}

/// A message's content: text, or text parts.
pub(super) type Content = TextOr<ContentPart, MAX_CONTENT_PARTS>;

#[derive(Debug, Deserialize)]
pub(super) struct ContentPart {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: Option<bool>,
}

/// How reasoning is returned (llama.cpp's option name).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum ReasoningFormat {
    /// `reasoning_content` and `content` apart (the default).
    Deepseek,
    Auto,
    /// The raw text, `<think>` included, in `content`.
    None,
}

/// Longest `param` an error names (a path such as
/// `messages[4095].content[1023]` is far shorter).
pub(super) const MAX_PARAM_BYTES: usize = 256;

/// A parse error's text is cut at this many bytes: it quotes the value.
pub(super) const MAX_DETAIL_BYTES: usize = 1024;

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
/// parameter. Separate from [`super::prepare`] for the fuzz target `openai_request`
/// ([`fuzz`]).
pub(super) fn parse_body(bytes: &[u8]) -> Result<ApiRequest, OpenAiError> {
    parse_at(bytes, "")
}

/// `bytes` as a `T` found at `prefix` in the body (`""` for the body
/// itself), every error a 400 naming the parameter by its path.
pub(super) fn parse_at<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    prefix: &str,
) -> Result<T, OpenAiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let missing = inner.to_string().starts_with("missing field");
        let join = |path: &str| match (prefix, path.starts_with('[')) {
            ("", _) => path.to_owned(),
            (_, true) => format!("{prefix}{path}"),
            (_, false) => format!("{prefix}.{path}"),
        };
        // A missing field is named with the path to its object.
        let field = inner
            .to_string()
            .split('`')
            .nth(1)
            .filter(|_| missing)
            .map(str::to_owned);
        let param = match (path.as_str(), field) {
            (".", Some(field)) => Some(join(&field)),
            (".", None) => (!prefix.is_empty()).then(|| prefix.to_owned()),
            // serde_path_to_error names the key of an unknown field too,
            // which the client chose: cut, as it is echoed and recorded.
            (path, Some(field)) => Some(cut_param(join(&format!("{path}.{field}")))),
            (path, None) => Some(cut_param(join(path))),
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
