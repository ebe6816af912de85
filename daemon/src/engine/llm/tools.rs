//! Tools ("function calling") on the engine's side: the functions a chat
//! request offers, as its template receives them; the calls of the
//! conversation's history; which format a template has its model write
//! calls in; and, for a tool choice that forces a call, the JSON schema
//! the output must match and the calls read back from it. Parsing calls
//! out of free text is [`super::tool_parser`]'s.

use minijinja::value::{Value as TemplateValue, ValueKind};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// A function a request offers the model.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// Its JSON schema as the client wrote it: the template shows it with
    /// its keys in the client's order, as transformers would.
    pub parameters: Option<Box<RawValue>>,
}

/// A function call: by the model (parsed from its output) or in an
/// assistant message of the history. `arguments` is JSON text, as OpenAI
/// carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A call of an assistant message in the history, in OpenAI's shape, which
/// is what chat templates are written for.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// How a model writes its calls, known from the markers its template
/// writes for the calls of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// DeepSeek-R1 and V3: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`,
    /// the arguments in a fenced JSON block, `<｜tool▁call▁end｜>`, ... `<｜tool▁calls▁end｜>`.
    DeepSeek,
    /// Hermes and Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one per call.
    Hermes,
}

pub(crate) const DEEPSEEK_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
pub(crate) const DEEPSEEK_CALLS_END: &str = "<｜tool▁calls▁end｜>";
pub(crate) const DEEPSEEK_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
pub(crate) const DEEPSEEK_CALL_END: &str = "<｜tool▁call▁end｜>";
pub(crate) const DEEPSEEK_SEP: &str = "<｜tool▁sep｜>";
pub(crate) const HERMES_BEGIN: &str = "<tool_call>";
pub(crate) const HERMES_END: &str = "</tool_call>";

impl ToolFormat {
    /// The format a template's source writes calls in, if it is one this
    /// server parses.
    pub fn of_template(source: &str) -> Option<Self> {
        if source.contains(DEEPSEEK_CALL_BEGIN) {
            Some(ToolFormat::DeepSeek)
        } else if source.contains(HERMES_BEGIN) {
            Some(ToolFormat::Hermes)
        } else {
            None
        }
    }

    /// The marker that starts the calls in the model's output.
    pub(crate) fn start(self) -> &'static str {
        match self {
            ToolFormat::DeepSeek => DEEPSEEK_CALLS_BEGIN,
            ToolFormat::Hermes => HERMES_BEGIN,
        }
    }
}

/// What a generation parses calls with: the format and the names offered
/// (a call of any other function is not a call).
#[derive(Debug, Clone)]
pub struct ToolParsing {
    pub format: ToolFormat,
    pub names: Vec<String>,
}

/// How a generation's tool calls are read: parsed out of free text in the
/// model's format, or the whole answer read back as a forced choice's calls.
#[derive(Debug, Clone)]
pub enum Calls {
    Parse(ToolParsing),
    Forced(ToolConstraint),
}

/// Why a model cannot take a request's tools, or a forced call's output
/// cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("its chat template has no tool support (it does not use the `tools` variable)")]
    NoToolSupport,
    #[error(
        "its chat template takes tools, but writes tool calls in a format this server does not \
         parse (it knows DeepSeek's <｜tool▁call▁begin｜> and Hermes' <tool_call>)"
    )]
    UnknownFormat,
    #[error("the parameters of tool {0:?} are not JSON")]
    Parameters(String),
    #[error("the constrained output is not the calls its schema asks for: {0}")]
    Output(String),
}

/// The tools as the template receives them, in OpenAI's shape
/// (`{"type": "function", "function": {"name", "description", "parameters"}}`,
/// absent fields left out), every string of them passed through `hide`
/// (which keeps added tokens spelled in client text from becoming tokens).
pub fn template_tools<E>(
    tools: &[Tool],
    hide: &mut dyn FnMut(&str) -> Result<String, E>,
) -> Result<TemplateValue, E> {
    let mut values = Vec::with_capacity(tools.len());
    for tool in tools {
        let mut function = vec![("name", TemplateValue::from(hide(&tool.name)?))];
        if let Some(description) = &tool.description {
            function.push(("description", TemplateValue::from(hide(description)?)));
        }
        if let Some(parameters) = &tool.parameters {
            // Parsed as JSON on the way in, by the same parser: it parses.
            let value: TemplateValue = serde_json::from_str(parameters.get()).unwrap_or_default();
            function.push(("parameters", hidden(&value, hide)?));
        }
        values.push(TemplateValue::from_pairs([
            ("type", TemplateValue::from("function")),
            ("function", TemplateValue::from_pairs(function)),
        ]));
    }
    Ok(TemplateValue::from(values))
}

/// `value` with every string, map keys included, passed through `hide`.
fn hidden<E>(
    value: &TemplateValue,
    hide: &mut dyn FnMut(&str) -> Result<String, E>,
) -> Result<TemplateValue, E> {
    let items = || value.try_iter().into_iter().flatten();
    Ok(match value.kind() {
        ValueKind::String => TemplateValue::from(hide(value.as_str().unwrap_or_default())?),
        ValueKind::Seq => TemplateValue::from(
            items()
                .map(|item| hidden(&item, hide))
                .collect::<Result<Vec<_>, E>>()?,
        ),
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in items() {
                let item = value.get_item(&key).unwrap_or_default();
                pairs.push((hidden(&key, hide)?, hidden(&item, hide)?));
            }
            TemplateValue::from_pairs(pairs)
        }
        _ => value.clone(),
    })
}

/// A tool choice that forces calls: its output is constrained to
/// [`ToolConstraint::schema`] (vLLM's approach, which does not depend on the
/// model's call format), then read back with [`ToolConstraint::calls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// `tool_choice: {"type": "function", "function": {"name": ...}}`: the
    /// output is that function's arguments.
    Function(String),
    /// `tool_choice: "required"`: the output is a non-empty array of
    /// `{"name", "parameters"}`, each a function offered.
    Required,
}

/// The constraint a forced tool choice puts on the output.
#[derive(Debug, Clone)]
pub struct ToolConstraint {
    pub schema: Value,
    pub forced: Forced,
}

impl ToolConstraint {
    /// The schema for `forced` over `tools`. A named function must be one
    /// of `tools` (the protocol layer checks it first).
    pub fn new(tools: &[Tool], forced: Forced) -> Result<Self, ToolsError> {
        let parameters = |tool: &Tool| match &tool.parameters {
            Some(raw) => serde_json::from_str::<Value>(raw.get())
                .map_err(|_| ToolsError::Parameters(tool.name.clone())),
            None => Ok(json!({"type": "object"})),
        };
        let schema = match &forced {
            Forced::Function(name) => match tools.iter().find(|t| &t.name == name) {
                Some(tool) => parameters(tool)?,
                None => return Err(ToolsError::Output(format!("no tool named {name:?}"))),
            },
            Forced::Required => {
                let any_of = tools
                    .iter()
                    .map(|tool| {
                        Ok(json!({
                            "type": "object",
                            "properties": {
                                "name": {"const": tool.name},
                                "parameters": parameters(tool)?,
                            },
                            "required": ["name", "parameters"],
                            "additionalProperties": false,
                        }))
                    })
                    .collect::<Result<Vec<_>, ToolsError>>()?;
                json!({"type": "array", "minItems": 1, "items": {"anyOf": any_of}})
            }
        };
        Ok(Self { schema, forced })
    }

    /// At most one call (`parallel_tool_calls: false`): only `required`
    /// could make several.
    pub fn one_call(mut self) -> Self {
        if self.forced == Forced::Required {
            self.schema["maxItems"] = json!(1);
        }
        self
    }

    /// The calls an output constrained to [`Self::schema`] makes.
    pub fn calls(&self, output: &str) -> Result<Vec<FunctionCall>, ToolsError> {
        let bad = |what: &str| ToolsError::Output(what.to_owned());
        let value: Value =
            serde_json::from_str(output.trim()).map_err(|e| ToolsError::Output(e.to_string()))?;
        match &self.forced {
            Forced::Function(name) => Ok(vec![FunctionCall {
                name: name.clone(),
                arguments: value.to_string(),
            }]),
            Forced::Required => {
                let items = value.as_array().ok_or_else(|| bad("not an array"))?;
                if items.is_empty() {
                    return Err(bad("no call"));
                }
                items
                    .iter()
                    .map(|item| {
                        let name = item["name"]
                            .as_str()
                            .ok_or_else(|| bad("a call without a name"))?;
                        Ok(FunctionCall {
                            name: name.to_owned(),
                            arguments: item["parameters"].to_string(),
                        })
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: Option<&str>) -> Tool {
        Tool {
            name: name.to_owned(),
            description: Some(format!("does {name}")),
            parameters: parameters.map(|p| RawValue::from_string(p.to_owned()).expect("JSON")),
        }
    }

    #[test]
    fn the_format_is_known_from_the_template() {
        let deepseek = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + name}}";
        assert_eq!(
            ToolFormat::of_template(deepseek),
            Some(ToolFormat::DeepSeek)
        );
        assert_eq!(
            ToolFormat::of_template("{{ '<tool_call>\\n' }}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(ToolFormat::of_template("{{ tools | tojson }}"), None);
    }

    #[test]
    fn tools_reach_the_template_in_openais_shape_in_the_clients_order() {
        let tools = [
            tool(
                "get_weather",
                Some(r#"{"type":"object","properties":{"z":{},"a":{}}}"#),
            ),
            Tool {
                name: "noop".to_owned(),
                description: None,
                parameters: None,
            },
        ];
        let mut seen = Vec::new();
        let value = template_tools::<()>(&tools, &mut |s| {
            seen.push(s.to_owned());
            Ok(s.to_uppercase())
        })
        .expect("value");
        let json = serde_json::to_string(&value).expect("serializes");
        assert_eq!(
            json,
            r#"[{"type":"function","function":{"name":"GET_WEATHER","description":"DOES GET_WEATHER","parameters":{"TYPE":"OBJECT","PROPERTIES":{"Z":{},"A":{}}}}},{"type":"function","function":{"name":"NOOP"}}]"#
        );
        assert_eq!(seen.len(), 8, "{seen:?}");
    }

    #[test]
    fn a_named_function_is_constrained_to_its_parameters() {
        let tools = [
            tool("a", Some(r#"{"type":"object","required":["x"]}"#)),
            tool("b", None),
        ];
        let named = ToolConstraint::new(&tools, Forced::Function("a".to_owned())).expect("a");
        assert_eq!(named.schema, json!({"type": "object", "required": ["x"]}));
        let open = ToolConstraint::new(&tools, Forced::Function("b".to_owned())).expect("b");
        assert_eq!(open.schema, json!({"type": "object"}));
        assert!(ToolConstraint::new(&tools, Forced::Function("c".to_owned())).is_err());
        assert_eq!(
            named.calls(" {\"x\": 1}\n").expect("calls"),
            [FunctionCall {
                name: "a".to_owned(),
                arguments: r#"{"x":1}"#.to_owned()
            }]
        );
        assert!(named.calls("{\"x\":").is_err());
    }

    #[test]
    fn required_is_an_array_of_calls_of_the_tools_offered() {
        let tools = [tool("a", Some(r#"{"type":"object"}"#)), tool("b", None)];
        let required = ToolConstraint::new(&tools, Forced::Required).expect("required");
        assert!(required.schema.get("maxItems").is_none());
        let one = ToolConstraint::new(&tools, Forced::Required)
            .expect("required")
            .one_call();
        assert_eq!(one.schema["maxItems"], 1);
        let call = |name: &str| {
            json!({
                "type": "object",
                "properties": {"name": {"const": name}, "parameters": {"type": "object"}},
                "required": ["name", "parameters"],
                "additionalProperties": false,
            })
        };
        assert_eq!(
            required.schema,
            json!({"type": "array", "minItems": 1, "items": {"anyOf": [call("a"), call("b")]}})
        );
        let calls = required
            .calls(r#"[{"name": "b", "parameters": {}}, {"name": "a", "parameters": {"k": [1]}}]"#)
            .expect("calls");
        assert_eq!(
            calls,
            [
                FunctionCall {
                    name: "b".to_owned(),
                    arguments: "{}".to_owned()
                },
                FunctionCall {
                    name: "a".to_owned(),
                    arguments: r#"{"k":[1]}"#.to_owned()
                },
            ]
        );
        assert!(required.calls("[]").is_err());
        assert!(required.calls(r#"{"name": "a"}"#).is_err());
        assert!(required.calls(r#"[{"parameters": {}}]"#).is_err());
    }
}
