//! `response_format`: what shape the answer must have, as OpenAI's API
//! says it (`text`, `json_object`, `json_schema`), turned into the one JSON
//! schema the engine holds the output to (docs/guide/api.md, "Structured
//! output").

use serde::Deserialize;
use serde_json::{Value, json};

use super::error::OpenAiError;
use crate::engine::llm::tools::{Forced, ToolConstraint};
use crate::server::http::sha256_hex;

/// Bytes of a schema, as compact JSON: what bounds the work of compiling
/// it (llguidance's own limits bound the rest).
pub(super) const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// `json_schema.name`, as OpenAI bounds it.
pub(super) const MAX_SCHEMA_NAME_BYTES: usize = 64;

/// `response_format` as sent.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

/// `response_format.json_schema`. Its `description` and `strict` are
/// ignored: the schema is enforced whether or not the client asks for
/// strictness.
#[derive(Debug, Deserialize)]
pub(super) struct JsonSchema {
    pub(super) name: String,
    #[serde(default)]
    pub(super) schema: Option<Value>,
}

/// Which constraint a request runs under, as its audit record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    JsonObject,
    JsonSchema,
    /// `tool_choice` names a function: the answer is its arguments.
    ToolFunction,
    /// `tool_choice: "required"`: the answer is one call or more.
    ToolsRequired,
}

impl Kind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::JsonObject => "json_object",
            Kind::JsonSchema => "json_schema",
            Kind::ToolFunction => "tool_function",
            Kind::ToolsRequired => "tools_required",
        }
    }
}

/// A request's constraint: its kind, the schema the engine enforces, and
/// that schema's digest for the audit record.
#[derive(Debug)]
pub(super) struct Format {
    pub(super) kind: Kind,
    pub(super) schema: Value,
    pub(super) schema_sha256: String,
}

impl Format {
    fn new(kind: Kind, schema: Value, param: &str) -> Result<Self, OpenAiError> {
        let bytes = serde_json::to_vec(&schema).expect("JSON values serialize");
        if bytes.len() > MAX_SCHEMA_BYTES {
            return Err(OpenAiError::over_limit(
                param,
                "bytes",
                bytes.len(),
                MAX_SCHEMA_BYTES,
            ));
        }
        if !schema.is_object() {
            return Err(OpenAiError::invalid(
                "a JSON schema must be an object",
                Some(param),
                Some("invalid_type"),
            ));
        }
        Ok(Self {
            kind,
            schema_sha256: sha256_hex(&bytes),
            schema,
        })
    }
}

/// The constraint of a request: `response_format`'s, or the schema of a
/// tool choice that forces calls (not both).
pub(super) fn constraint(
    format: Option<ResponseFormat>,
    forced: Option<&ToolConstraint>,
) -> Result<Option<Format>, OpenAiError> {
    let format = response_format(format)?;
    match (format, forced) {
        (Some(_), Some(_)) => Err(OpenAiError::invalid(
            "response_format cannot be combined with a tool_choice that forces a call",
            Some("response_format"),
            None,
        )),
        (None, Some(forced)) => {
            let kind = match forced.forced {
                Forced::Function(_) => Kind::ToolFunction,
                Forced::Required => Kind::ToolsRequired,
            };
            Format::new(kind, forced.schema.clone(), "tool_choice").map(Some)
        }
        (format, None) => Ok(format),
    }
}

/// The constraint `response_format` asks for; `None` for text.
fn response_format(format: Option<ResponseFormat>) -> Result<Option<Format>, OpenAiError> {
    match format {
        None | Some(ResponseFormat::Text) => Ok(None),
        Some(ResponseFormat::JsonObject) => Format::new(
            Kind::JsonObject,
            json!({"type": "object"}),
            "response_format",
        )
        .map(Some),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let name = &json_schema.name;
            let param = "response_format.json_schema.name";
            if name.len() > MAX_SCHEMA_NAME_BYTES {
                return Err(OpenAiError::over_limit(
                    param,
                    "bytes",
                    name.len(),
                    MAX_SCHEMA_NAME_BYTES,
                ));
            }
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(OpenAiError::invalid(
                    "response_format.json_schema.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
                    Some(param),
                    None,
                ));
            }
            let schema = json_schema.schema.ok_or_else(|| {
                OpenAiError::invalid(
                    "missing required parameter: response_format.json_schema.schema",
                    Some("response_format.json_schema.schema"),
                    Some("missing_required_parameter"),
                )
            })?;
            Format::new(
                Kind::JsonSchema,
                schema,
                "response_format.json_schema.schema",
            )
            .map(Some)
        }
    }
}
