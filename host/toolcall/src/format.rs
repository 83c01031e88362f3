//! Which tool format a model family speaks, and how tools are offered to it in the system prompt.

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::pyjson::{ordered_object, to_python_json};

/// How tools are offered to, and calls parsed from, one model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolFormat {
    /// Qwen3 / Qwen2.5 / Hermes: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`,
    /// results as `<tool_response>` blocks inside a user turn.
    Hermes,
    /// SmolLM2: `<tool_call>[{"name": …, "arguments": {…}}, …]</tool_call>`, results as a `tool` turn.
    SmolLm2,
    /// Fallback for models without native tool support: a fenced ` ```tool_call ` JSON block with
    /// `"tool"` and `"arguments"`, results in a user turn starting `Tool result (<name>):`.
    Fenced,
    /// gpt-oss's harmony format: tools as a TypeScript `functions` namespace in the developer
    /// message, a call is an assistant message `to=functions.<name>` on the commentary channel
    /// ending in `<|call|>`, the result a `functions.<name>` message (see [`crate::harmony`]).
    Harmony,
}

impl ToolFormat {
    /// The format of a model family name as the trainer spells it (case-insensitive): Qwen and
    /// Hermes families → [`ToolFormat::Hermes`], SmolLM/SmolLM2 → [`ToolFormat::SmolLm2`], any
    /// other family → [`ToolFormat::Fenced`] (the fallback works with any instruction model).
    pub fn for_family(family: &str) -> ToolFormat {
        let f = family.to_ascii_lowercase();
        if f.starts_with("qwen") || f.starts_with("hermes") {
            ToolFormat::Hermes
        } else if f.starts_with("gpt_oss") || f.starts_with("gpt-oss") || f.starts_with("gptoss") || f == "harmony" {
            ToolFormat::Harmony
        } else if f.starts_with("smollm") {
            ToolFormat::SmolLm2
        } else {
            ToolFormat::Fenced
        }
    }

    /// Strings at which generation should stop so the host can run the tool. The fenced format
    /// has none (its closing fence also closes ordinary code blocks); it relies on end-of-turn.
    pub fn stop_sequences(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes | ToolFormat::SmolLm2 => &["</tool_call>"],
            ToolFormat::Fenced => &[],
            // Also an end-of-sequence id of gpt-oss checkpoints; as a string it stops tokenizers
            // whose eos list lacks it.
            ToolFormat::Harmony => &[crate::harmony::CALL],
        }
    }

    /// The token that closes the assistant's tool-call message, and the text to insert when
    /// generation stopped before writing it (on a stop string): ChatML closes the turn with
    /// `<|im_end|>` and a newline, harmony with `<|call|>`. When the token itself ended the
    /// segment, only the rest of the text is inserted.
    pub fn call_end(self) -> (&'static str, &'static str) {
        match self {
            ToolFormat::Harmony => (crate::harmony::CALL, crate::harmony::CALL),
            _ => ("<|im_end|>", crate::ASSISTANT_TURN_END),
        }
    }

    /// Special tokens the tokenizer must have for this format's tool turns.
    pub fn required_tokens(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Harmony => &crate::harmony::SPECIAL_TOKENS,
            _ => &["<|im_start|>", "<|im_end|>"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::SmolLm2 => "smollm2",
            ToolFormat::Fenced => "fenced",
            ToolFormat::Harmony => "harmony",
        }
    }
}

impl fmt::Display for ToolFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ToolFormat {
    type Err = String;

    /// A format name from configuration: `hermes`, `smollm2`, `fenced` or `harmony`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hermes" | "qwen3" => Ok(ToolFormat::Hermes),
            "smollm2" => Ok(ToolFormat::SmolLm2),
            "fenced" => Ok(ToolFormat::Fenced),
            "harmony" | "gpt_oss" | "gpt-oss" => Ok(ToolFormat::Harmony),
            other => Err(format!("unknown tool format `{other}`: expected one of hermes, smollm2, fenced, harmony")),
        }
    }
}

/// A tool's function-calling description (the WIT `tool-spec`, with its schema parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

impl ToolSpec {
    /// From the WIT `tool-spec`, whose parameters are JSON Schema text. The schema must be a JSON
    /// object; the error names the tool.
    pub fn from_wit(name: &str, description: &str, parameters_json: &str) -> Result<ToolSpec, String> {
        let parameters: Value =
            serde_json::from_str(parameters_json).map_err(|e| format!("tool `{name}`: parameters schema is not valid JSON: {e}"))?;
        if !parameters.is_object() {
            return Err(format!("tool `{name}`: parameters schema must be a JSON object, got {parameters}"));
        }
        if name.trim().is_empty() {
            return Err("a tool spec has an empty name".to_owned());
        }
        Ok(ToolSpec { name: name.to_owned(), description: description.to_owned(), parameters })
    }

    /// The OpenAI-style entry `{"type": "function", "function": {name, description, parameters}}`
    /// in Python `json.dumps` layout and key order, as a chat template's `tojson` writes it.
    fn template_entry_text(&self) -> String {
        let function = ordered_object(&[
            ("name", to_python_json(&Value::String(self.name.clone()))),
            ("description", to_python_json(&Value::String(self.description.clone()))),
            ("parameters", to_python_json(&self.parameters)),
        ]);
        ordered_object(&[("type", "\"function\"".to_owned()), ("function", function)])
    }
}

/// The `tools` value to hand a Jinja chat template (e.g. Qwen3's): a list of
/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
pub fn chat_template_tools(tools: &[ToolSpec]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect(),
    )
}

/// The system message content with the tools section appended; `system` is the task's own
/// system prompt, if any. With no tools this is just the system prompt.
pub fn system_prompt_with_tools(format: ToolFormat, system: Option<&str>, tools: &[ToolSpec]) -> String {
    let mut out = String::new();
    if let Some(system) = system {
        out.push_str(system);
        if tools.is_empty() {
            return out;
        }
        out.push_str("\n\n");
    }
    if tools.is_empty() {
        return out;
    }
    match format {
        // The developer message of harmony: instructions, then the tools namespace.
        ToolFormat::Harmony => return crate::harmony::developer_body(system, tools),
        ToolFormat::Hermes => {
            // Verbatim from Qwen3's tokenizer_config.json chat template (without the ChatML markers).
            out.push_str(
                "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
                 You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
            );
            for tool in tools {
                out.push('\n');
                out.push_str(&tool.template_entry_text());
            }
            out.push_str(
                "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
                 within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
                 \"arguments\": <args-json-object>}\n</tool_call>",
            );
        }
        ToolFormat::SmolLm2 => {
            // SmolLM2-Instruct's function-calling prompt, adapted so the model answers after the result.
            out.push_str("# Tools\n\nYou have access to the following tools:\n<tools>[");
            let entries: Vec<String> = tools.iter().map(ToolSpec::template_entry_text).collect();
            out.push_str(&entries.join(", "));
            out.push_str(
                "]</tools>\n\nTo call tools, write the calls as a JSON list within <tool_call></tool_call> tags, \
                 and nothing else in that message:\n<tool_call>[{\"name\": \"func_name\", \"arguments\": \
                 {\"argument1\": \"value1\"}}]</tool_call>\nThe results come back in a tool message; then write \
                 your answer. If no tool is needed, answer directly.",
            );
        }
        ToolFormat::Fenced => {
            out.push_str(
                "# Tools\n\nYou can call the tools listed below. To call one, reply with only a fenced block \
                 in exactly this form, then stop:\n```tool_call\n{\"tool\": \"<tool name>\", \"arguments\": \
                 {<arguments as described by the tool's parameters>}}\n```\nThe result comes back in the next \
                 message, which starts with \"Tool result\". Then write your answer. If no tool is needed, \
                 answer directly.\n\nTools:",
            );
            for tool in tools {
                out.push('\n');
                out.push_str(&ordered_object(&[
                    ("tool", to_python_json(&Value::String(tool.name.clone()))),
                    ("description", to_python_json(&Value::String(tool.description.clone()))),
                    ("parameters", to_python_json(&tool.parameters)),
                ]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search_spec() -> ToolSpec {
        ToolSpec::from_wit(
            "search",
            "Search the knowledge base.",
            r#"{"type":"object","properties":{"query":{"type":"string"}},"required":["query"]}"#,
        )
        .unwrap()
    }

    #[test]
    fn hermes_prompt_is_qwen3_template_text() {
        let prompt = system_prompt_with_tools(ToolFormat::Hermes, Some("You write Sigma rules."), &[search_spec()]);
        let expected = "You write Sigma rules.\n\n# Tools\n\nYou may call one or more functions to assist with the \
            user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
            {\"type\": \"function\", \"function\": {\"name\": \"search\", \"description\": \"Search the knowledge \
            base.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"query\": {\"type\": \"string\"}}, \
            \"required\": [\"query\"]}}}\n</tools>\n\nFor each function call, return a json object with function name \
            and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
            \"arguments\": <args-json-object>}\n</tool_call>";
        assert_eq!(prompt, expected);
    }

    #[test]
    fn fenced_and_smollm2_prompts_name_the_tool_and_the_call_syntax() {
        let fenced = system_prompt_with_tools(ToolFormat::Fenced, None, &[search_spec()]);
        assert!(fenced.starts_with("# Tools"), "{fenced}");
        assert!(fenced.contains("```tool_call\n{\"tool\": "), "{fenced}");
        assert!(fenced.contains("{\"tool\": \"search\", \"description\""), "{fenced}");
        let smol = system_prompt_with_tools(ToolFormat::SmolLm2, Some("sys"), &[search_spec()]);
        assert!(smol.starts_with("sys\n\n# Tools"), "{smol}");
        assert!(smol.contains("<tools>[{\"type\": \"function\""), "{smol}");
    }

    #[test]
    fn no_tools_leaves_the_system_prompt_alone() {
        assert_eq!(system_prompt_with_tools(ToolFormat::Hermes, Some("sys"), &[]), "sys");
    }

    #[test]
    fn families_and_names_map_to_formats() {
        assert_eq!(ToolFormat::for_family("Qwen3"), ToolFormat::Hermes);
        assert_eq!(ToolFormat::for_family("smollm2"), ToolFormat::SmolLm2);
        assert_eq!(ToolFormat::for_family("llama"), ToolFormat::Fenced);
        assert_eq!("fenced".parse::<ToolFormat>(), Ok(ToolFormat::Fenced));
        let err = "xml".parse::<ToolFormat>().unwrap_err();
        assert!(err.contains("`xml`") && err.contains("hermes"), "{err}");
    }

    #[test]
    fn bad_parameter_schemas_are_refused_with_the_tool_name() {
        let err = ToolSpec::from_wit("search", "d", "[1]").unwrap_err();
        assert!(err.contains("search") && err.contains("object"), "{err}");
        let err = ToolSpec::from_wit("search", "d", "{").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn chat_template_tools_has_the_openai_shape() {
        let v = chat_template_tools(&[search_spec()]);
        assert_eq!(v[0]["type"], "function");
        assert_eq!(v[0]["function"]["name"], "search");
        assert_eq!(v[0]["function"]["parameters"]["required"][0], "query");
    }
}
