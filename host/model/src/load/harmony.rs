//! Prompts in OpenAI's harmony format, for tokenizers that carry its special tokens (gpt-oss's
//! o200k_harmony). The checkpoint's Jinja template is not used for these: it needs functions
//! only `transformers` has (`strftime_now`), and harmony has a specification
//! (`sigmaforge_toolcall::harmony`, tested against the format guide's example) that this
//! renderer follows exactly.
//!
//! Chat messages map to harmony the way gpt-oss's chat template maps them: the system message
//! is generated (identity, knowledge cutoff, current date, reasoning effort, channels); a
//! `system` or `developer` message becomes the developer message's `# Instructions`, with the
//! `tools` in its `# Tools` section; an assistant message is a `final`-channel message (its
//! `tool_calls` become commentary calls `to=functions.<name>`); a `tool` message is the
//! `functions.<name>` message answering the call before it.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sigmaforge_toolcall::ToolSpec;
use sigmaforge_toolcall::harmony::{HarmonyMessage, MessageEnd, SPECIAL_TOKENS, START, SystemOptions, developer_body, system_body};

use super::tokenizer::ChatMessage;

/// How a tokenizer's prompts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// The checkpoint's Jinja chat template (ChatML for Qwen3 and SmolLM2).
    Template,
    /// OpenAI's harmony format (gpt-oss): chosen when the vocabulary has every harmony special
    /// token, whatever the model family.
    Harmony,
}

impl ChatFormat {
    /// Harmony when every one of its special tokens is in the vocabulary.
    pub fn detect(has_token: impl Fn(&str) -> bool) -> ChatFormat {
        if SPECIAL_TOKENS.iter().all(|t| has_token(t)) { ChatFormat::Harmony } else { ChatFormat::Template }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChatFormat::Template => "template",
            ChatFormat::Harmony => "harmony",
        }
    }
}

/// The system message's settings: gpt-oss's defaults (reasoning `medium`, knowledge cutoff
/// 2024-06, today's date in UTC), overridden by the template variables `reasoning_effort`,
/// `model_identity`, `knowledge_cutoff` and `current_date` in `extra`.
fn system_options(extra: &Value) -> Result<SystemOptions> {
    let mut opts = SystemOptions { current_date: Some(today_utc()), ..SystemOptions::default() };
    let get = |key: &str| -> Result<Option<String>> {
        match extra.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!("harmony prompt: {key} must be a string, got {other}"),
        }
    };
    if let Some(effort) = get("reasoning_effort")? {
        if !matches!(effort.as_str(), "low" | "medium" | "high") {
            bail!("harmony prompt: reasoning_effort must be low, medium or high, got {effort:?}");
        }
        opts.reasoning_effort = Some(effort);
    }
    if let Some(identity) = get("model_identity")? {
        opts.model_identity = Some(identity);
    }
    if let Some(cutoff) = get("knowledge_cutoff")? {
        opts.knowledge_cutoff = Some(cutoff);
    }
    if let Some(date) = get("current_date")? {
        opts.current_date = Some(date);
    }
    Ok(opts)
}

/// `YYYY-MM-DD` of the current UTC day (the civil-from-days algorithm; no date crate needed).
fn today_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    civil_date((secs / 86_400) as i64)
}

fn civil_date(days_since_epoch: i64) -> String {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// OpenAI-style `tools` entries (`{"type": "function", "function": {name, description, parameters}}`).
fn tool_specs(tools: &[Value]) -> Result<Vec<ToolSpec>> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let f = t.get("function").unwrap_or(t);
            let name = f.get("name").and_then(Value::as_str).with_context(|| format!("harmony prompt: tool {i} has no name: {t}"))?;
            let description = f.get("description").and_then(Value::as_str).unwrap_or_default();
            let parameters = f.get("parameters").cloned().unwrap_or_else(|| serde_json::json!({"type": "object"}));
            Ok(ToolSpec { name: name.to_owned(), description: description.to_owned(), parameters })
        })
        .collect()
}

/// The prompt text of `messages` (see the module docs). With `add_generation_prompt` it ends
/// with `<|start|>assistant` for the model to continue; without it, a closing assistant answer
/// ends with `<|return|>`, the token the model stops on (a training target).
pub fn render(messages: &[ChatMessage], add_generation_prompt: bool, tools: Option<&[Value]>, extra: &Value) -> Result<String> {
    let tools = tool_specs(tools.unwrap_or_default())?;
    let mut out = HarmonyMessage::new("system", &system_body(&system_options(extra)?, !tools.is_empty())).render();
    let mut tools_pending = Some(tools.as_slice()).filter(|t| !t.is_empty());
    let mut last_call: Option<String> = None;
    for (i, m) in messages.iter().enumerate() {
        let last = i + 1 == messages.len();
        match m.role.as_str() {
            "system" | "developer" => {
                out.push_str(&HarmonyMessage::new("developer", &developer_body(Some(&m.content), tools_pending.take().unwrap_or_default())).render());
            }
            "user" => {
                if let Some(tools) = tools_pending.take() {
                    out.push_str(&HarmonyMessage::new("developer", &developer_body(None, tools)).render());
                }
                out.push_str(&HarmonyMessage::new("user", &m.content).render());
            }
            "assistant" => {
                let calls = m.tool_calls.as_ref().and_then(Value::as_array).filter(|c| !c.is_empty());
                match calls {
                    Some(calls) => {
                        if !m.content.trim().is_empty() {
                            out.push_str(&HarmonyMessage::new("assistant", &m.content).with_channel("analysis").render());
                        }
                        for call in calls {
                            let f = call.get("function").unwrap_or(call);
                            let name =
                                f.get("name").and_then(Value::as_str).with_context(|| format!("message {i}: a tool call has no name: {call}"))?;
                            let args = match f.get("arguments") {
                                Some(Value::String(s)) => s.clone(),
                                Some(v) => v.to_string(),
                                None => "{}".to_owned(),
                            };
                            let msg = HarmonyMessage::new("assistant", &args).with_channel("commentary").with_recipient(&format!("functions.{name}"));
                            out.push_str(&msg.with_content_type("json").render());
                            last_call = Some(name.to_owned());
                        }
                    }
                    None => {
                        let end = if last && !add_generation_prompt { MessageEnd::Return } else { MessageEnd::End };
                        out.push_str(&HarmonyMessage::new("assistant", &m.content).with_channel("final").with_end(end).render());
                    }
                }
            }
            "tool" => {
                let name = m.name.clone().or_else(|| last_call.clone()).with_context(|| {
                    format!("message {i}: a tool message needs a name (or an assistant tool call before it) in the harmony format")
                })?;
                let author = format!("functions.{name}");
                out.push_str(&HarmonyMessage::new(&author, &m.content).with_channel("commentary").with_recipient("assistant").render());
            }
            other => bail!("message {i}: role {other:?} has no place in the harmony format (system, developer, user, assistant, tool)"),
        }
    }
    if let Some(tools) = tools_pending {
        out.push_str(&HarmonyMessage::new("developer", &developer_body(None, tools)).render());
    }
    if add_generation_prompt {
        out.push_str(START);
        out.push_str("assistant");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// openai/harmony's format guide, "Handling tool calls": the complete input after the tool
    /// result, byte for byte.
    const GUIDE_EXAMPLE: &str = "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
        Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: high\n\n\
        # Valid channels: analysis, commentary, final. Channel must be included for every message.\n\
        Calls to these tools must go to the commentary channel: 'functions'.<|end|>\
        <|start|>developer<|message|># Instructions\n\nUse a friendly tone.\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n\
        // Gets the location of the user.\ntype get_location = () => any;\n\n\
        // Gets the current weather in the provided location.\ntype get_current_weather = (_: {\n\
        // The city and state, e.g. San Francisco, CA\nlocation: string,\n\
        format?: \"celsius\" | \"fahrenheit\", // default: celsius\n}) => any;\n\n\
        // Gets the current weather in the provided list of locations.\ntype get_multiple_weathers = (_: {\n\
        // List of city and state, e.g. [\"San Francisco, CA\", \"New York, NY\"]\nlocations: string[],\n\
        format?: \"celsius\" | \"fahrenheit\", // default: celsius\n}) => any;\n\n\
        } // namespace functions<|end|><|start|>user<|message|>What is the weather like in SF?<|end|>\
        <|start|>assistant<|channel|>analysis<|message|>Need to use function get_weather.<|end|>\
        <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"San Francisco\"}<|call|>\
        <|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"sunny\": true, \"temperature\": 20}<|end|>\
        <|start|>assistant";

    fn guide_tools() -> Vec<Value> {
        let format = json!({"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"});
        let tools = [
            json!({"name": "get_location", "description": "Gets the location of the user."}),
            json!({"name": "get_current_weather", "description": "Gets the current weather in the provided location.",
                   "parameters": {"type": "object", "properties": {
                       "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                       "format": format}, "required": ["location"]}}),
            json!({"name": "get_multiple_weathers", "description": "Gets the current weather in the provided list of locations.",
                   "parameters": {"type": "object", "properties": {
                       "locations": {"type": "array", "items": {"type": "string"},
                                     "description": "List of city and state, e.g. [\"San Francisco, CA\", \"New York, NY\"]"},
                       "format": format}, "required": ["locations"]}}),
        ];
        tools.into_iter().map(|f| json!({"type": "function", "function": f})).collect()
    }

    #[test]
    fn chat_messages_render_as_the_format_guides_example() {
        let extra = json!({"reasoning_effort": "high", "current_date": "2025-06-28"});
        let mut call = ChatMessage::new("assistant", "Need to use function get_weather.");
        call.tool_calls = Some(json!([{"type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco\"}"}}]));
        let messages = [
            ChatMessage::new("system", "Use a friendly tone."),
            ChatMessage::new("user", "What is the weather like in SF?"),
            call,
            ChatMessage::new("tool", "{\"sunny\": true, \"temperature\": 20}"),
        ];
        assert_eq!(render(&messages, true, Some(&guide_tools()), &extra).unwrap(), GUIDE_EXAMPLE);
        // The prompt alone: the guide's input before the model's turn.
        let prompt = render(&messages[..2], true, Some(&guide_tools()), &extra).unwrap();
        let cut = GUIDE_EXAMPLE.find("<|start|>assistant<|channel|>analysis").unwrap();
        assert_eq!(prompt, format!("{}<|start|>assistant", &GUIDE_EXAMPLE[..cut]));
    }

    #[test]
    fn an_answer_to_learn_ends_with_return_and_extends_its_prompt() {
        let extra = json!({"current_date": "2025-01-01"});
        let prompt = render(&[ChatMessage::new("user", "2+2?")], true, None, &extra).unwrap();
        let full = render(&[ChatMessage::new("user", "2+2?"), ChatMessage::new("assistant", "4")], false, None, &extra).unwrap();
        assert_eq!(full.strip_prefix(&prompt), Some("<|channel|>final<|message|>4<|return|>"));
        // Without tools the system message does not mention functions; defaults as gpt-oss's template.
        assert_eq!(
            prompt,
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n\
             Current date: 2025-01-01\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. \
             Channel must be included for every message.<|end|><|start|>user<|message|>2+2?<|end|><|start|>assistant"
        );
        // Earlier answers in a history end with <|end|>.
        let history =
            render(&[ChatMessage::new("user", "a"), ChatMessage::new("assistant", "b"), ChatMessage::new("user", "c")], true, None, &extra).unwrap();
        assert!(history.contains("<|start|>assistant<|channel|>final<|message|>b<|end|><|start|>user"), "{history}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_267), "2025-06-28");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(today_utc().len(), 10);
    }

    #[test]
    fn bad_settings_and_roles_name_the_problem() {
        let err = render(&[], true, None, &serde_json::json!({"reasoning_effort": "max"})).unwrap_err();
        assert!(err.to_string().contains("reasoning_effort") && err.to_string().contains("max"), "{err}");
        let err = render(&[ChatMessage::new("critic", "x")], true, None, &Value::Null).unwrap_err();
        assert!(err.to_string().contains("\"critic\""), "{err}");
        let err = render(&[ChatMessage::new("tool", "x")], true, None, &Value::Null).unwrap_err();
        assert!(err.to_string().contains("needs a name"), "{err}");
    }
}
