//! The OpenAI-compatible API of deepseekd as this client uses it
//! (docs/guide/api.md): the chat request, the stream's chunks, the model
//! list, and error bodies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, Error};

/// One message of a conversation, as sent and as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    pub(crate) role: Role,
    pub(crate) content: String,
    /// The model's reasoning before its answer: kept for `/save`, never
    /// sent back (R1 is trained without it in earlier turns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_content: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    System,
    User,
    Assistant,
}

/// The sampling settings of the command line, sent when given (the
/// model's defaults otherwise).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Sampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seed: Option<u64>,
}

/// The body of a streamed `POST /v1/chat/completions`.
#[derive(Debug, Serialize)]
pub(crate) struct ChatRequest<'a> {
    pub(crate) model: &'a str,
    /// Without their reasoning: see [`Message::reasoning_content`].
    pub(crate) messages: Vec<Outgoing<'a>>,
    pub(crate) stream: bool,
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
}

/// A message as sent: role and content only.
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing<'a> {
    pub(crate) role: Role,
    pub(crate) content: &'a str,
}

impl<'a> From<&'a Message> for Outgoing<'a> {
    fn from(message: &'a Message) -> Self {
        Self {
            role: message.role,
            content: &message.content,
        }
    }
}

/// What one event of the stream brings.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Reasoning(String),
    Answer(String),
    /// The finish chunk: `stop`, `length`.
    Finished(String),
    /// `data: [DONE]`: the answer is complete.
    Done,
    /// Anything else (the role chunk, a usage chunk).
    Other,
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    reasoning_content: Option<String>,
    content: Option<String>,
}

/// Reads one event's data. An error event (the stream failed after its
/// 200, e.g. the auditor did not record the completion) is an error.
pub(crate) fn event(data: &str, socket: &std::path::Path) -> Result<Event, Error> {
    if data == "[DONE]" {
        return Ok(Event::Done);
    }
    let chunk: Chunk = serde_json::from_str(data)
        .map_err(|e| Error::Protocol(format!("a stream event is not a chunk: {e}")))?;
    if let Some(error) = chunk.error {
        return Err(Error::Api {
            socket: socket.to_owned(),
            error: api_error(None, &error),
        });
    }
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Ok(Event::Other);
    };
    Ok(match (choice.delta, choice.finish_reason) {
        (_, Some(reason)) => Event::Finished(reason),
        (
            Delta {
                reasoning_content: Some(text),
                ..
            },
            _,
        ) if !text.is_empty() => Event::Reasoning(text),
        (
            Delta {
                content: Some(text),
                ..
            },
            _,
        ) if !text.is_empty() => Event::Answer(text),
        _ => Event::Other,
    })
}

/// An error body (`status` known) or an error event's object (`None`).
pub(crate) fn error_body(status: u16, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => api_error(Some(status), &value["error"]),
        Err(_) => ApiError {
            status,
            code: None,
            message: String::from_utf8_lossy(body).trim().to_owned(),
        },
    }
}

fn api_error(status: Option<u16>, error: &Value) -> ApiError {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let status = status.unwrap_or(if error["type"] == "server_error" {
        500
    } else {
        400
    });
    ApiError {
        status,
        code: text(&error["code"]),
        message: text(error)
            .or_else(|| text(&error["message"]))
            .unwrap_or_else(|| error.to_string()),
    }
}

/// The chat models of `GET /v1/models`, sorted as the daemon sorts them.
pub(crate) fn model_ids(body: &[u8]) -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Model>,
    }
    #[derive(Deserialize)]
    struct Model {
        id: String,
    }
    let list: List = serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("GET /v1/models: {e}")))?;
    // deepseekd's own rule for a model name: anything else is not one of
    // its models, and is never printed to the terminal.
    let valid = |id: &str| {
        (1..=64).contains(&id.len())
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    Ok(list
        .data
        .into_iter()
        .map(|m| m.id)
        .filter(|id| valid(id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKET: &str = "/s";

    fn ev(data: &str) -> Event {
        event(data, SOCKET.as_ref()).expect("event")
    }

    #[test]
    fn model_ids_outside_deepseekds_rule_are_dropped() {
        let body = br#"{"data": [{"id": "tiny-r1"}, {"id": "a\u001b]52;c;x\u0007"}, {"id": ".hidden"}, {"id": ""}]}"#;
        assert_eq!(model_ids(body).expect("ids"), ["tiny-r1"]);
    }

    #[test]
    fn chunks_become_events() {
        assert_eq!(
            ev(r#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null}]}"#),
            Event::Other
        );
        assert_eq!(
            ev(
                r#"{"choices":[{"delta":{"reasoning":"R","reasoning_content":"R"},"finish_reason":null}]}"#
            ),
            Event::Reasoning("R".into())
        );
        assert_eq!(
            ev(r#"{"choices":[{"delta":{"content":" o"},"finish_reason":null}]}"#),
            Event::Answer(" o".into())
        );
        assert_eq!(
            ev(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#),
            Event::Finished("length".into())
        );
        assert_eq!(
            ev(r#"{"choices":[],"usage":{"total_tokens":3}}"#),
            Event::Other
        );
        assert_eq!(ev("[DONE]"), Event::Done);
        assert!(matches!(
            event("{", SOCKET.as_ref()),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn an_error_event_is_an_error() {
        let data = r#"{"error":{"message":"not recorded","type":"server_error","param":null,"code":"audit_unavailable"}}"#;
        let Err(Error::Api { error, .. }) = event(data, SOCKET.as_ref()) else {
            panic!("not an error");
        };
        assert_eq!(error.status, 500);
        assert_eq!(error.code.as_deref(), Some("audit_unavailable"));
        assert_eq!(error.message, "not recorded");
    }

    #[test]
    fn both_error_shapes_are_read() {
        let openai = error_body(
            400,
            br#"{"error":{"message":"too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        );
        assert_eq!(openai.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(openai.message, "too long");
        let peer = error_body(
            403,
            br#"{"error":"uid 65534 gid 65534 is not allowed to use this socket"}"#,
        );
        assert_eq!((peer.status, peer.code), (403, None));
        assert_eq!(
            peer.message,
            "uid 65534 gid 65534 is not allowed to use this socket"
        );
        assert_eq!(error_body(502, b"bad gateway\n").message, "bad gateway");
    }

    #[test]
    fn requests_carry_no_reasoning() {
        let answer = Message {
            role: Role::Assistant,
            content: "4".into(),
            reasoning_content: Some("2 + 2".into()),
        };
        let request = ChatRequest {
            model: "m",
            messages: vec![Outgoing::from(&answer)],
            stream: true,
            sampling: Sampling {
                max_tokens: Some(5),
                ..Sampling::default()
            },
        };
        assert_eq!(
            serde_json::to_string(&request).expect("json"),
            r#"{"model":"m","messages":[{"role":"assistant","content":"4"}],"stream":true,"max_tokens":5}"#
        );
    }
}
