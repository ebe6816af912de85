//! `tools`, `tool_choice` and the tool fields of messages, each bounded
//! (docs/guide/api.md, "Limits") and checked against the model's template;
//! and the calls of an answer in OpenAI's shape.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::error::OpenAiError;
use super::wire::{ApiRequest, Bounded, Endpoint, parse_at};
use crate::engine::CausalLm;
use crate::engine::llm::tools::{
    Forced, FunctionCall, HistoryCall, Tool, ToolConstraint, ToolsError,
};
use crate::entropy::random_bytes;

/// OpenAI's bounds on tools, and ours on what it leaves open.
pub(super) const MAX_TOOLS: usize = 128;
pub(super) const MAX_TOOL_NAME_BYTES: usize = 64;
pub(super) const MAX_TOOL_DESCRIPTION_BYTES: usize = 16 * 1024;
/// A tool's `parameters` schema, as JSON text.
pub(super) const MAX_TOOL_PARAMETERS_BYTES: usize = 64 * 1024;
pub(super) const MAX_TOOL_CALLS: usize = 128;
pub(super) const MAX_TOOL_CALL_ID_BYTES: usize = 256;

#[derive(Debug, Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
struct WireCall {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    function: WireCallFunction,
}

#[derive(Debug, Deserialize)]
struct WireCallFunction {
    name: String,
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct NamedChoice {
    #[serde(rename = "type")]
    kind: String,
    function: NamedFunction,
}

#[derive(Debug, Deserialize)]
struct NamedFunction {
    name: String,
}

/// `tool_choice`; `auto` when tools are given without it, as OpenAI does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    None,
    Auto,
    Forced(Forced),
}

/// What a request asks of tools.
#[derive(Debug, Default)]
pub(super) struct Asked {
    /// For the template; empty when none are offered or `tool_choice` is
    /// `none` (the prompt is then rendered without tools).
    pub(super) tools: Vec<Tool>,
    /// How many the request offered, for its audit record.
    pub(super) offered: usize,
    /// A forced call (`required`, a named function): its output must be
    /// constrained to this schema.
    pub(super) constraint: Option<ToolConstraint>,
}

fn invalid(message: String, param: &str) -> OpenAiError {
    OpenAiError::invalid(message, Some(param), None)
}

/// A function name as OpenAI allows it: 1 to 64 of `a-z A-Z 0-9 _ -`.
fn check_name(name: &str, param: &str) -> Result<(), OpenAiError> {
    let fits = (1..=MAX_TOOL_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fits {
        return Ok(());
    }
    let shown = if name.len() > MAX_TOOL_NAME_BYTES {
        format!("{} bytes", name.len())
    } else {
        format!("{name:?}")
    };
    Err(invalid(
        format!(
            "{param} must be 1 to {MAX_TOOL_NAME_BYTES} characters of a-z, A-Z, 0-9, _ and -, got {shown}"
        ),
        param,
    ))
}

fn check_bytes(text: &str, max: usize, param: &str) -> Result<(), OpenAiError> {
    if text.len() > max {
        return Err(invalid(
            format!("{param} is {} bytes, over the limit of {max}", text.len()),
            param,
        ));
    }
    Ok(())
}

fn check_function_type(kind: &str, param: &str) -> Result<(), OpenAiError> {
    if kind == "function" {
        return Ok(());
    }
    Err(invalid(
        format!(
            "{param} must be \"function\", got {:?}",
            deepseek_audit::entry::cut(kind, MAX_TOOL_NAME_BYTES)
        ),
        param,
    ))
}

/// The tools offered, each checked.
fn offered(raw: &RawValue) -> Result<Vec<Tool>, OpenAiError> {
    let Bounded(wire) = parse_at::<Bounded<WireTool, MAX_TOOLS>>(raw.get().as_bytes(), "tools")?;
    let mut tools: Vec<Tool> = Vec::with_capacity(wire.len());
    for (i, tool) in wire.into_iter().enumerate() {
        let at = |field: &str| format!("tools[{i}]{field}");
        check_function_type(&tool.kind, &at(".type"))?;
        let function = tool.function;
        check_name(&function.name, &at(".function.name"))?;
        if tools.iter().any(|t| t.name == function.name) {
            return Err(invalid(
                format!("tools holds the function {:?} twice", function.name),
                &at(".function.name"),
            ));
        }
        if let Some(description) = &function.description {
            check_bytes(
                description,
                MAX_TOOL_DESCRIPTION_BYTES,
                &at(".function.description"),
            )?;
        }
        if let Some(parameters) = &function.parameters {
            let param = at(".function.parameters");
            check_bytes(parameters.get(), MAX_TOOL_PARAMETERS_BYTES, &param)?;
            if !parameters.get().starts_with('{') {
                return Err(invalid(
                    format!("{param} must be a JSON schema object"),
                    &param,
                ));
            }
            // Kept as sent, which skipped it unparsed: parsed now, so that
            // nesting past serde_json's 128 levels is refused here rather
            // than dropped when the template or the constraint reads it.
            if let Err(e) = serde_json::from_str::<Value>(parameters.get()) {
                return Err(invalid(format!("{param} cannot be read: {e}"), &param));
            }
        }
        tools.push(Tool {
            name: function.name,
            description: function.description,
            parameters: function.parameters,
        });
    }
    Ok(tools)
}

fn choice(raw: &RawValue) -> Result<Choice, OpenAiError> {
    const MODES: &str = "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}";
    if let Ok(mode) = serde_json::from_str::<String>(raw.get()) {
        return match mode.as_str() {
            "none" => Ok(Choice::None),
            "auto" => Ok(Choice::Auto),
            "required" => Ok(Choice::Forced(Forced::Required)),
            _ => Err(invalid(
                format!("tool_choice must be {MODES}"),
                "tool_choice",
            )),
        };
    }
    if !raw.get().starts_with('{') {
        return Err(invalid(
            format!("tool_choice must be {MODES}"),
            "tool_choice",
        ));
    }
    let named: NamedChoice = parse_at(raw.get().as_bytes(), "tool_choice")?;
    check_function_type(&named.kind, "tool_choice.type")?;
    check_name(&named.function.name, "tool_choice.function.name")?;
    Ok(Choice::Forced(Forced::Function(named.function.name)))
}

/// A field that is there and not `null`.
fn given(raw: &Option<Box<RawValue>>) -> Option<&RawValue> {
    raw.as_deref().filter(|r| r.get() != "null")
}

/// What the request asks of tools, checked against `model`'s template:
/// `tools` on `/v1/completions`, a template without tool support, or one
/// whose calls this server cannot read (with `auto`) are 400s, and so is
/// `tool_choice` without tools or naming a function not offered.
pub(super) fn asked(
    endpoint: Endpoint,
    body: &ApiRequest,
    model: &CausalLm,
) -> Result<Asked, OpenAiError> {
    let tools = given(&body.tools)
        .map(offered)
        .transpose()?
        .unwrap_or_default();
    let choice = given(&body.tool_choice).map(choice).transpose()?;
    if endpoint == Endpoint::Completions {
        return match (tools.is_empty(), choice) {
            (false, _) => Err(invalid(
                "tools are only taken by /v1/chat/completions".to_owned(),
                "tools",
            )),
            (true, Some(_)) => Err(invalid(
                "tool_choice is only taken by /v1/chat/completions".to_owned(),
                "tool_choice",
            )),
            (true, None) => Ok(Asked::default()),
        };
    }
    if tools.is_empty() {
        return match choice {
            None | Some(Choice::None) => Ok(Asked::default()),
            Some(_) => Err(invalid(
                "tool_choice is only allowed when tools are given".to_owned(),
                "tool_choice",
            )),
        };
    }
    let offered = tools.len();
    let unsupported = |e: &dyn std::fmt::Display| {
        invalid(
            format!("model {:?} cannot take tools: {e}", model.info().name),
            "tools",
        )
    };
    match choice.unwrap_or(Choice::Auto) {
        Choice::None => Ok(Asked {
            offered,
            ..Asked::default()
        }),
        Choice::Auto => {
            model.tool_format().map_err(|e| unsupported(&e))?;
            Ok(Asked {
                tools,
                offered,
                constraint: None,
            })
        }
        Choice::Forced(forced) => {
            // A forced call is read back by its schema, not by the model's
            // own format; the template must still show the tools.
            if let Err(e @ ToolsError::NoToolSupport) = model.tool_format() {
                return Err(unsupported(&e));
            }
            if let Forced::Function(name) = &forced
                && !tools.iter().any(|t| &t.name == name)
            {
                return Err(invalid(
                    format!("tool_choice names the function {name:?}, which is not among tools"),
                    "tool_choice.function.name",
                ));
            }
            let mut constraint =
                ToolConstraint::new(&tools, forced).map_err(|e| invalid(e.to_string(), "tools"))?;
            if body.parallel_tool_calls == Some(false) {
                constraint = constraint.one_call();
            }
            Ok(Asked {
                tools,
                offered,
                constraint: Some(constraint),
            })
        }
    }
}

/// The tool fields of message `index`: an assistant's `tool_calls`, a tool
/// result's `tool_call_id` (kept for the template of a `tool` message only).
pub(super) fn message_fields(
    index: usize,
    role: &str,
    tool_calls: Option<Box<RawValue>>,
    tool_call_id: Option<String>,
) -> Result<(Option<Vec<HistoryCall>>, Option<String>), OpenAiError> {
    let param = format!("messages[{index}].tool_calls");
    let calls = match given(&tool_calls) {
        None => None,
        Some(_) if role != "assistant" => {
            return Err(invalid(
                format!("{param}: only assistant messages carry tool calls"),
                &param,
            ));
        }
        Some(raw) => {
            let Bounded(wire) =
                parse_at::<Bounded<WireCall, MAX_TOOL_CALLS>>(raw.get().as_bytes(), &param)?;
            let mut calls = Vec::with_capacity(wire.len());
            for (c, call) in wire.into_iter().enumerate() {
                let at = |field: &str| format!("{param}[{c}]{field}");
                check_bytes(&call.id, MAX_TOOL_CALL_ID_BYTES, &at(".id"))?;
                check_function_type(&call.kind, &at(".type"))?;
                check_name(&call.function.name, &at(".function.name"))?;
                calls.push(HistoryCall {
                    id: call.id,
                    kind: "function",
                    function: FunctionCall {
                        name: call.function.name,
                        arguments: call.function.arguments,
                    },
                });
            }
            Some(calls)
        }
    };
    let id_param = format!("messages[{index}].tool_call_id");
    if let Some(id) = &tool_call_id {
        check_bytes(id, MAX_TOOL_CALL_ID_BYTES, &id_param)?;
    }
    Ok((calls, tool_call_id.filter(|_| role == "tool")))
}

/// An answer's calls as OpenAI writes them: each with an id of its own
/// (`call_` and 24 random hex digits), and with `index` in a stream's delta.
pub(super) fn calls_json(calls: &[FunctionCall], streamed: bool) -> Value {
    let calls = calls.iter().enumerate().map(|(index, call)| {
        let mut call = json!({
            "id": format!("call_{}", deepseek_integrity::digest::hex(&random_bytes::<12>())),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        });
        if streamed {
            call["index"] = json!(index);
        }
        call
    });
    Value::Array(calls.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("JSON")
    }

    fn param(error: OpenAiError) -> String {
        error.param.expect("names a parameter")
    }

    #[test]
    fn tools_are_read_in_order_and_each_field_is_bounded() {
        let tools = offered(&raw(
            r#"[{"type":"function","function":{"name":"a_b-1","description":"d","parameters":{"z":1,"a":2},"strict":true}},{"type":"function","function":{"name":"c"}}]"#,
        ))
        .expect("tools");
        assert_eq!(tools.len(), 2);
        assert_eq!(
            tools[0].parameters.as_ref().expect("schema").get(),
            r#"{"z":1,"a":2}"#
        );
        assert!(tools[1].description.is_none() && tools[1].parameters.is_none());

        let one = |function: &str| format!(r#"[{{"type":"function","function":{function}}}]"#);
        let cases = [
            (one(r#"{"name":"has space"}"#), "tools[0].function.name"),
            (one(&format!(r#"{{"name":"{}"}}"#, "n".repeat(65))), "tools[0].function.name"),
            (one(r#"{"name":""}"#), "tools[0].function.name"),
            (one(r#"{"name":7}"#), "tools[0].function.name"),
            (one(r#"{}"#), "tools[0].function.name"),
            (one(r#"{"name":"a","parameters":[1]}"#), "tools[0].function.parameters"),
            (
                one(&format!(r#"{{"name":"a","description":"{}"}}"#, "d".repeat(16 * 1024 + 1))),
                "tools[0].function.description",
            ),
            (
                one(&format!(r#"{{"name":"a","parameters":{{"d":"{}"}}}}"#, "d".repeat(64 * 1024))),
                "tools[0].function.parameters",
            ),
            (r#"[{"type":"retrieval","function":{"name":"a"}}]"#.to_owned(), "tools[0].type"),
            (
                r#"[{"type":"function","function":{"name":"a"}},{"type":"function","function":{"name":"a"}}]"#.to_owned(),
                "tools[1].function.name",
            ),
            (format!("[{}]", vec![r#"{"type":"function","function":{"name":"a"}}"#; 129].join(",")), "tools"),
            // Past serde_json's 128 levels: refused, not dropped later.
            (
                one(&format!(r#"{{"name":"a","parameters":{{"d":{}{}}}}}"#, "[".repeat(200), "]".repeat(200))),
                "tools[0].function.parameters",
            ),
        ];
        for (json, want) in cases {
            let error = offered(&raw(&json)).expect_err(&json[..json.len().min(80)]);
            assert_eq!(param(error), want, "{}", &json[..json.len().min(80)]);
        }
    }

    #[test]
    fn tool_choice_takes_openais_forms() {
        assert_eq!(choice(&raw(r#""none""#)).expect("none"), Choice::None);
        assert_eq!(choice(&raw(r#""auto""#)).expect("auto"), Choice::Auto);
        assert_eq!(
            choice(&raw(r#""required""#)).expect("required"),
            Choice::Forced(Forced::Required)
        );
        assert_eq!(
            choice(&raw(r#"{"type":"function","function":{"name":"f"}}"#)).expect("named"),
            Choice::Forced(Forced::Function("f".to_owned()))
        );
        for (json, want) in [
            (r#""any""#, "tool_choice"),
            ("3", "tool_choice"),
            (r#"{"type":"function"}"#, "tool_choice.function"),
            (
                r#"{"type":"function","function":{"name":"a b"}}"#,
                "tool_choice.function.name",
            ),
            (
                r#"{"type":"x","function":{"name":"a"}}"#,
                "tool_choice.type",
            ),
        ] {
            assert_eq!(param(choice(&raw(json)).expect_err(json)), want, "{json}");
        }
    }

    #[test]
    fn history_calls_are_checked_and_kept_in_openais_shape() {
        let calls = raw(
            r#"[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]"#,
        );
        let (calls, id) =
            message_fields(2, "assistant", Some(calls), None).expect("assistant calls");
        let calls = calls.expect("calls");
        assert_eq!(
            serde_json::to_value(&calls).expect("JSON"),
            json!([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}])
        );
        assert!(id.is_none());
        let (_, id) = message_fields(3, "tool", None, Some("call_1".to_owned())).expect("result");
        assert_eq!(id.as_deref(), Some("call_1"));
        let (_, id) = message_fields(3, "user", None, Some("call_1".to_owned())).expect("user");
        assert!(id.is_none());

        let call = r#"{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}"#;
        for (role, json, want) in [
            ("user", format!("[{call}]"), "messages[1].tool_calls"),
            (
                "assistant",
                format!("[{}]", call.replace("\"f\"", "\"f g\"")),
                "messages[1].tool_calls[0].function.name",
            ),
            (
                "assistant",
                format!(
                    "[{}]",
                    call.replace("\"c\"", &format!("\"{}\"", "c".repeat(257)))
                ),
                "messages[1].tool_calls[0].id",
            ),
            (
                "assistant",
                format!("[{}]", call.replace("\"{}\"", "{}")),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                "assistant",
                format!("[{}]", vec![call; 129].join(",")),
                "messages[1].tool_calls",
            ),
        ] {
            let error = message_fields(1, role, Some(raw(&json)), None).expect_err(want);
            assert_eq!(param(error), want);
        }
        let error = message_fields(0, "tool", None, Some("i".repeat(257))).expect_err("long id");
        assert_eq!(param(error), "messages[0].tool_call_id");
    }

    #[test]
    fn answers_carry_openais_call_shape() {
        let calls = [FunctionCall {
            name: "f".to_owned(),
            arguments: "{}".to_owned(),
        }];
        let whole = calls_json(&calls, false);
        let id = whole[0]["id"].as_str().expect("id");
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_eq!(
            whole[0]["function"],
            json!({"name": "f", "arguments": "{}"})
        );
        assert_eq!(whole[0]["type"], "function");
        assert!(whole[0].get("index").is_none());
        assert_eq!(calls_json(&calls, true)[0]["index"], 0);
    }
}
