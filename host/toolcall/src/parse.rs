//! Finding tool calls in generated text.

use std::ops::Range;

use serde_json::Value;
use thiserror::Error;

use crate::format::{ToolFormat, ToolSpec};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One well-formed call of a known tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object (always a JSON object).
    pub arguments: Value,
    /// Byte range of the call's markup in the parsed text.
    pub span: Range<usize>,
}

impl ToolCall {
    /// The arguments as JSON text, as the WIT `tool.invoke` takes them.
    pub fn arguments_json(&self) -> String {
        self.arguments.to_string()
    }
}

/// Why a tool call could not be run. `Display` is the message shown to the model.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ToolCallError {
    #[error("the tool call is not valid JSON ({detail})")]
    InvalidJson { detail: String },
    #[error("the tool call must be a JSON object with \"name\" and \"arguments\", got {got}")]
    NotAnObject { got: String },
    #[error("the tool call has no tool name (a string \"name\")")]
    MissingName,
    #[error("unknown tool `{name}`; available tools: {}", if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
    UnknownTool { name: String, available: Vec<String> },
    #[error("the call of tool `{name}` has no \"arguments\" object")]
    MissingArguments { name: String },
    #[error("the arguments of tool `{name}` must be a JSON object, got {got}")]
    ArgumentsNotObject { name: String, got: String },
    /// Harmony carries the arguments as the message body, apart from the tool's name.
    #[error("the arguments of tool `{name}` are not valid JSON ({detail})")]
    InvalidArguments { name: String, detail: String },
    #[error("the tool call is not closed ({expected} is missing)")]
    Unterminated { expected: &'static str },
    #[error("tool `{name}` returned an error: {message}")]
    ToolFailed { name: String, message: String },
    #[error("tool `{name}` did not finish: {message}")]
    ToolCrashed { name: String, message: String },
}

impl ToolCallError {
    /// The tool this error is about, when known.
    pub fn tool_name(&self) -> Option<&str> {
        match self {
            ToolCallError::UnknownTool { name, .. }
            | ToolCallError::MissingArguments { name }
            | ToolCallError::ArgumentsNotObject { name, .. }
            | ToolCallError::InvalidArguments { name, .. }
            | ToolCallError::ToolFailed { name, .. }
            | ToolCallError::ToolCrashed { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// One tool call found in the text, well-formed or not.
#[derive(Debug, Clone, PartialEq)]
pub struct CallAttempt {
    /// Byte range of the call's markup in the parsed text.
    pub span: Range<usize>,
    pub result: Result<ToolCall, ToolCallError>,
}

/// Every tool call in `text`, in order. An empty result means the text is a final answer.
/// Malformed calls come back as `Err` attempts so the episode can answer them with an error.
/// A call left open at the end of the text is accepted when its JSON is complete, because
/// generators usually drop the stop string (`</tool_call>`) they stopped on.
pub fn parse_tool_calls(format: ToolFormat, text: &str, tools: &[ToolSpec]) -> Vec<CallAttempt> {
    match format {
        ToolFormat::Hermes | ToolFormat::SmolLm2 => parse_tagged(text, tools),
        ToolFormat::Fenced => parse_fenced(text, tools),
        ToolFormat::Harmony => crate::harmony::parse_calls(text, tools),
    }
}

/// `<tool_call>…</tool_call>` blocks holding one call object or a list of them (both formats
/// accept both shapes: models mix them up). Blocks inside a `<think>` section are reasoning, not calls.
fn parse_tagged(text: &str, tools: &[ToolSpec]) -> Vec<CallAttempt> {
    let thinking = think_ranges(text);
    let mut attempts = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find(OPEN) {
        let start = from + rel;
        let body_start = start + OPEN.len();
        if let Some(r) = thinking.iter().find(|r| r.contains(&start)) {
            from = r.end.max(body_start);
            continue;
        }
        let (body, end, closed) = match text[body_start..].find(CLOSE) {
            Some(rel_close) => (&text[body_start..body_start + rel_close], body_start + rel_close + CLOSE.len(), true),
            None => (&text[body_start..], text.len(), false),
        };
        let span = start..end;
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(value) => calls_from_value(value, &["name"], tools, &span, &mut attempts),
            Err(_) if !closed => attempts.push(CallAttempt { span: span.clone(), result: Err(ToolCallError::Unterminated { expected: CLOSE }) }),
            Err(e) => attempts.push(CallAttempt { span: span.clone(), result: Err(invalid_json(body, &e)) }),
        }
        from = end;
    }
    attempts
}

/// Byte ranges of `<think>…</think>` sections (an unclosed one runs to the end).
fn think_ranges(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find("<think>") {
        let start = from + rel;
        let end = text[start..].find("</think>").map_or(text.len(), |r| start + r + "</think>".len());
        ranges.push(start..end);
        from = end;
    }
    ranges
}

/// Fenced blocks: ` ```tool_call ` (or ` ```tool `) blocks are always calls; ` ```json ` blocks
/// are calls only when they hold an object with a `"tool"` key, so ordinary JSON in an answer is left alone.
fn parse_fenced(text: &str, tools: &[ToolSpec]) -> Vec<CallAttempt> {
    let mut attempts = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find("```") {
        let start = from + rel;
        let info_start = start + 3;
        let Some(nl) = text[info_start..].find('\n') else { break };
        let info = text[info_start..info_start + nl].trim().to_ascii_lowercase();
        let body_start = info_start + nl + 1;
        let (body, end, closed) = match text[body_start..].find("```") {
            Some(r) => (&text[body_start..body_start + r], body_start + r + 3, true),
            None => (&text[body_start..], text.len(), false),
        };
        from = end;
        let span = start..end;
        let explicit = matches!(info.as_str(), "tool_call" | "tool");
        if !explicit && info != "json" {
            continue;
        }
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(value) => {
                if !explicit && value.get("tool").is_none() {
                    continue;
                }
                calls_from_value(value, &["tool", "name"], tools, &span, &mut attempts);
            }
            Err(_) if !explicit => {}
            Err(_) if !closed => attempts.push(CallAttempt { span, result: Err(ToolCallError::Unterminated { expected: "closing ```" }) }),
            Err(e) => attempts.push(CallAttempt { span, result: Err(invalid_json(body, &e)) }),
        }
    }
    attempts
}

fn invalid_json(body: &str, err: &serde_json::Error) -> ToolCallError {
    if body.trim().is_empty() {
        return ToolCallError::InvalidJson { detail: "the call is empty".to_owned() };
    }
    ToolCallError::InvalidJson { detail: err.to_string() }
}

fn calls_from_value(value: Value, name_keys: &[&str], tools: &[ToolSpec], span: &Range<usize>, out: &mut Vec<CallAttempt>) {
    match value {
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push(CallAttempt { span: span.clone(), result: call_from_value(item, name_keys, tools, span) });
            }
        }
        other => out.push(CallAttempt { span: span.clone(), result: call_from_value(other, name_keys, tools, span) }),
    }
}

fn call_from_value(value: Value, name_keys: &[&str], tools: &[ToolSpec], span: &Range<usize>) -> Result<ToolCall, ToolCallError> {
    let Value::Object(mut obj) = value else {
        return Err(ToolCallError::NotAnObject { got: short(&value) });
    };
    let name = name_keys
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or(ToolCallError::MissingName)?
        .to_owned();
    if !tools.iter().any(|t| t.name == name) {
        return Err(ToolCallError::UnknownTool { name, available: tools.iter().map(|t| t.name.clone()).collect() });
    }
    let arguments = match obj.remove("arguments") {
        None | Some(Value::Null) => return Err(ToolCallError::MissingArguments { name }),
        Some(Value::Object(map)) => Value::Object(map),
        // OpenAI-style models write the arguments as a JSON string; accept it when it holds an object.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => return Err(ToolCallError::ArgumentsNotObject { name, got: short(&Value::String(s)) }),
        },
        Some(other) => return Err(ToolCallError::ArgumentsNotObject { name, got: short(&other) }),
    };
    Ok(ToolCall { name, arguments, span: span.clone() })
}

/// A value for an error message, cut to a readable length.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 80 {
        return text;
    }
    let cut: String = text.chars().take(77).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<ToolSpec> {
        vec![ToolSpec::from_wit("search", "Search.", r#"{"type":"object"}"#).unwrap()]
    }

    fn ok_calls(format: ToolFormat, text: &str) -> Vec<ToolCall> {
        parse_tool_calls(format, text, &tools())
            .into_iter()
            .map(|a| a.result.unwrap_or_else(|e| panic!("unexpected error {e} in {text:?}")))
            .collect()
    }

    fn only_error(format: ToolFormat, text: &str) -> ToolCallError {
        let attempts = parse_tool_calls(format, text, &tools());
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        attempts.into_iter().next().unwrap().result.unwrap_err()
    }

    #[test]
    fn hermes_well_formed_call() {
        let text = "I will look it up.\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"EventID 4688\"}}\n</tool_call>";
        let calls = ok_calls(ToolFormat::Hermes, text);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "search");
        assert_eq!(calls[0].arguments["query"], "EventID 4688");
        assert_eq!(&text[calls[0].span.clone()][..11], "<tool_call>");
        assert!(text[calls[0].span.clone()].ends_with("</tool_call>"));
        assert_eq!(calls[0].arguments_json(), r#"{"query":"EventID 4688"}"#);
    }

    #[test]
    fn several_calls_in_order() {
        let text = "<tool_call>{\"name\":\"search\",\"arguments\":{\"query\":\"a\"}}</tool_call>\n\
                    <tool_call>{\"name\":\"search\",\"arguments\":{\"query\":\"b\",\"k\":2}}</tool_call>";
        let calls = ok_calls(ToolFormat::Hermes, text);
        assert_eq!(calls.iter().map(|c| c.arguments["query"].as_str().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(calls[0].span.end <= calls[1].span.start);
    }

    #[test]
    fn smollm2_list_of_calls() {
        let text = "<tool_call>[{\"name\": \"search\", \"arguments\": {\"query\": \"lsass\"}}, \
                    {\"name\": \"search\", \"arguments\": {\"query\": \"sysmon 10\"}}]</tool_call>";
        let calls = ok_calls(ToolFormat::SmolLm2, text);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].arguments["query"], "sysmon 10");
    }

    #[test]
    fn call_cut_at_the_stop_string_is_accepted() {
        let calls = ok_calls(ToolFormat::Hermes, "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"x\"}}\n");
        assert_eq!(calls.len(), 1);
    }

    #[test]
    fn text_without_a_call_is_a_final_answer() {
        let answer = "```yaml\nlogsource:\n  product: windows\ndetection:\n  sel:\n    EventID: 4688\n  condition: sel\n```";
        assert!(parse_tool_calls(ToolFormat::Hermes, answer, &tools()).is_empty());
        assert!(parse_tool_calls(ToolFormat::Fenced, answer, &tools()).is_empty());
        assert!(parse_tool_calls(ToolFormat::Fenced, "```json\n{\"a\": 1}\n```", &tools()).is_empty());
    }

    #[test]
    fn calls_inside_thinking_are_ignored() {
        let text = "<think>maybe <tool_call>{\"name\":\"search\"}</tool_call>?</think>\
                    <tool_call>{\"name\":\"search\",\"arguments\":{\"query\":\"q\"}}</tool_call>";
        let calls = ok_calls(ToolFormat::Hermes, text);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].arguments["query"], "q");
    }

    #[test]
    fn invalid_json_is_an_error_for_the_model() {
        let err = only_error(ToolFormat::Hermes, "<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": }</tool_call>");
        assert!(matches!(err, ToolCallError::InvalidJson { .. }), "{err:?}");
        assert!(err.to_string().starts_with("the tool call is not valid JSON"), "{err}");
        let err = only_error(ToolFormat::Hermes, "<tool_call>  </tool_call>");
        assert_eq!(err.to_string(), "the tool call is not valid JSON (the call is empty)");
    }

    #[test]
    fn unknown_tool_names_the_available_ones() {
        let err = only_error(ToolFormat::Hermes, "<tool_call>{\"name\": \"browse\", \"arguments\": {}}</tool_call>");
        assert_eq!(err.to_string(), "unknown tool `browse`; available tools: search");
        assert_eq!(err.tool_name(), Some("browse"));
    }

    #[test]
    fn missing_or_wrong_arguments() {
        let err = only_error(ToolFormat::Hermes, "<tool_call>{\"name\": \"search\"}</tool_call>");
        assert_eq!(err, ToolCallError::MissingArguments { name: "search".into() });
        assert!(err.to_string().contains("no \"arguments\" object"), "{err}");
        let err = only_error(ToolFormat::Hermes, "<tool_call>{\"name\": \"search\", \"arguments\": [1]}</tool_call>");
        assert!(matches!(err, ToolCallError::ArgumentsNotObject { .. }), "{err:?}");
        let err = only_error(ToolFormat::Hermes, "<tool_call>{\"arguments\": {}}</tool_call>");
        assert_eq!(err, ToolCallError::MissingName);
        let err = only_error(ToolFormat::Hermes, "<tool_call>\"search\"</tool_call>");
        assert!(matches!(err, ToolCallError::NotAnObject { .. }), "{err:?}");
    }

    #[test]
    fn stringified_arguments_are_accepted() {
        let calls = ok_calls(ToolFormat::Hermes, r#"<tool_call>{"name": "search", "arguments": "{\"query\": \"T1003\"}"}</tool_call>"#);
        assert_eq!(calls[0].arguments["query"], "T1003");
    }

    #[test]
    fn unclosed_call_with_broken_json_is_unterminated() {
        let err = only_error(ToolFormat::Hermes, "<tool_call>{\"name\": \"search\", \"argu");
        assert_eq!(err.to_string(), "the tool call is not closed (</tool_call> is missing)");
    }

    #[test]
    fn fenced_fallback_format() {
        let text = "Let me check.\n```tool_call\n{\"tool\": \"search\", \"arguments\": {\"query\": \"lsass dump\"}}\n```\n";
        let calls = ok_calls(ToolFormat::Fenced, text);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].arguments["query"], "lsass dump");
        assert_eq!(&text[calls[0].span.clone()][..12], "```tool_call");
        // A ```json block with a "tool" key counts too; "name" is accepted for the tool name.
        let calls = ok_calls(ToolFormat::Fenced, "```json\n{\"tool\": \"search\", \"arguments\": {\"query\": \"q\"}}\n```");
        assert_eq!(calls[0].name, "search");
        let calls = ok_calls(ToolFormat::Fenced, "```tool_call\n{\"name\": \"search\", \"arguments\": {\"query\": \"q\"}}\n```");
        assert_eq!(calls[0].name, "search");
        let err = only_error(ToolFormat::Fenced, "```tool_call\n{\"tool\": \"search\", \n```");
        assert!(matches!(err, ToolCallError::InvalidJson { .. }), "{err:?}");
        let err = only_error(ToolFormat::Fenced, "```tool_call\n{\"tool\": \"nope\", \"arguments\": {}}\n```");
        assert!(matches!(err, ToolCallError::UnknownTool { .. }), "{err:?}");
    }

    #[test]
    fn hermes_tags_are_not_fenced_calls_and_vice_versa() {
        let hermes = "<tool_call>{\"name\":\"search\",\"arguments\":{\"query\":\"q\"}}</tool_call>";
        assert!(parse_tool_calls(ToolFormat::Fenced, hermes, &tools()).is_empty());
        let fenced = "```tool_call\n{\"tool\": \"search\", \"arguments\": {\"query\": \"q\"}}\n```";
        assert!(parse_tool_calls(ToolFormat::Hermes, fenced, &tools()).is_empty());
    }

    #[test]
    fn non_ascii_text_around_calls_does_not_break_spans() {
        let text = "é🙂<tool_call>{\"name\":\"search\",\"arguments\":{\"query\":\"ü\"}}</tool_call>ß";
        let calls = ok_calls(ToolFormat::Hermes, text);
        assert!(text[calls[0].span.clone()].starts_with("<tool_call>"));
    }
}
