//! OpenAI's harmony format (gpt-oss): the system and developer message bodies, tool definitions
//! as a TypeScript-like `functions` namespace, parsing a completion into messages (channels
//! `analysis`, `commentary`, `final`; tool calls addressed `to=functions.<name>`), and the tool
//! messages that answer a call. Follows the format guide of openai/harmony (`docs/format.md`);
//! the tests hold its published example conversation byte for byte.
//!
//! A message is `<|start|>{header}<|message|>{content}<|end|>`; the header is the author
//! (`assistant`, `user`, `functions.search`…), an optional ` to={recipient}`, `<|channel|>{channel}`
//! and an optional content type (` <|constrain|>json` or ` json`). A completion starts inside the
//! header of an assistant message (the prompt ends with `<|start|>assistant`) and stops at
//! `<|return|>` (the answer is done) or `<|call|>` (a tool call). Only the `final` channel is the
//! answer; `analysis` is reasoning and `commentary` carries tool calls and preambles.

use std::ops::Range;

use serde_json::Value;

use crate::format::ToolSpec;
use crate::parse::{CallAttempt, ToolCall, ToolCallError};

pub const START: &str = "<|start|>";
pub const END: &str = "<|end|>";
pub const MESSAGE: &str = "<|message|>";
pub const CHANNEL: &str = "<|channel|>";
pub const CONSTRAIN: &str = "<|constrain|>";
/// Ends sampling: the final answer is complete.
pub const RETURN: &str = "<|return|>";
/// Ends sampling: the message is a tool call for the host to run.
pub const CALL: &str = "<|call|>";
/// Every special token the format needs in the vocabulary.
pub const SPECIAL_TOKENS: [&str; 7] = [START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL];
/// The identity line of gpt-oss's system message (the format guide: keep it; change the
/// model's persona in the developer instructions instead).
pub const DEFAULT_MODEL_IDENTITY: &str = "You are ChatGPT, a large language model trained by OpenAI.";
/// gpt-oss's knowledge cutoff, as its chat template writes it.
pub const DEFAULT_KNOWLEDGE_CUTOFF: &str = "2024-06";

/// What the system message says (it is not the "system prompt": that is the developer message's
/// instructions). `None` fields are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemOptions {
    pub model_identity: Option<String>,
    pub knowledge_cutoff: Option<String>,
    /// `YYYY-MM-DD`.
    pub current_date: Option<String>,
    /// `low`, `medium` or `high`.
    pub reasoning_effort: Option<String>,
}

impl Default for SystemOptions {
    /// gpt-oss's chat-template defaults, without a date (the caller knows the day).
    fn default() -> Self {
        Self {
            model_identity: Some(DEFAULT_MODEL_IDENTITY.to_owned()),
            knowledge_cutoff: Some(DEFAULT_KNOWLEDGE_CUTOFF.to_owned()),
            current_date: None,
            reasoning_effort: Some("medium".to_owned()),
        }
    }
}

/// The system message's content. `function_tools`: whether the conversation offers function
/// tools, which adds the line sending their calls to the commentary channel.
pub fn system_body(opts: &SystemOptions, function_tools: bool) -> String {
    let mut sections = Vec::new();
    let mut top = Vec::new();
    if let Some(identity) = &opts.model_identity {
        top.push(identity.clone());
    }
    if let Some(cutoff) = &opts.knowledge_cutoff {
        top.push(format!("Knowledge cutoff: {cutoff}"));
    }
    if let Some(date) = &opts.current_date {
        top.push(format!("Current date: {date}"));
    }
    if !top.is_empty() {
        sections.push(top.join("\n"));
    }
    if let Some(effort) = &opts.reasoning_effort {
        sections.push(format!("Reasoning: {effort}"));
    }
    let mut channels = "# Valid channels: analysis, commentary, final. Channel must be included for every message.".to_owned();
    if function_tools {
        channels.push_str("\nCalls to these tools must go to the commentary channel: 'functions'.");
    }
    sections.push(channels);
    sections.join("\n\n")
}

/// The developer message's content: `# Instructions` (the task's system prompt) and the
/// `# Tools` section.
pub fn developer_body(instructions: Option<&str>, tools: &[ToolSpec]) -> String {
    let mut sections = Vec::new();
    if let Some(instructions) = instructions {
        sections.push("# Instructions".to_owned());
        sections.push(instructions.to_owned());
    }
    if !tools.is_empty() {
        sections.push(tools_section(tools));
    }
    sections.join("\n\n")
}

/// `# Tools\n\n## functions\n\nnamespace functions { … } // namespace functions`: each tool as a
/// TypeScript type whose one argument `_` is its parameters object, the description as `//`
/// comments above it, an empty line after each.
pub fn tools_section(tools: &[ToolSpec]) -> String {
    let mut lines =
        vec!["# Tools".to_owned(), String::new(), "## functions".to_owned(), String::new(), "namespace functions {".to_owned(), String::new()];
    for tool in tools {
        lines.extend(tool.description.lines().map(|l| format!("// {l}")));
        let has_args = tool.parameters.get("properties").and_then(Value::as_object).is_some_and(|p| !p.is_empty());
        if has_args {
            lines.push(format!("type {} = (_: {}) => any;", tool.name, schema_to_typescript(&tool.parameters, "")));
        } else {
            lines.push(format!("type {} = () => any;", tool.name));
        }
        lines.push(String::new());
    }
    lines.push("} // namespace functions".to_owned());
    lines.join("\n")
}

/// A JSON Schema as a TypeScript type: objects list their fields (`?` when not required) with
/// descriptions as comments above and defaults as comments after; enums of strings become
/// unions of literals; `integer` is `number`.
fn schema_to_typescript(schema: &Value, indent: &str) -> String {
    if let Some(variants) = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array) {
        let parts: Vec<String> = variants.iter().map(|v| schema_to_typescript(v, indent)).collect();
        return parts.join(" | ");
    }
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => {
            return types.iter().filter_map(Value::as_str).map(primitive).collect::<Vec<_>>().join(" | ");
        }
        Some(Value::String(t)) => t.as_str(),
        _ => return "any".to_owned(),
    };
    let mut out = match ty {
        "object" => object_type(schema, indent),
        "string" => match schema.get("enum").and_then(Value::as_array) {
            Some(values) if !values.is_empty() => values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" | "),
            _ => "string".to_owned(),
        },
        "array" => match schema.get("items") {
            Some(items) => {
                let item = schema_to_typescript(items, indent);
                if item.contains(' ') { format!("Array<{item}>") } else { format!("{item}[]") }
            }
            None => "Array<any>".to_owned(),
        },
        other => primitive(other).to_owned(),
    };
    if schema.get("nullable").and_then(Value::as_bool) == Some(true) && !out.contains("null") {
        out.push_str(" | null");
    }
    out
}

fn primitive(ty: &str) -> &str {
    match ty {
        "integer" => "number",
        "string" | "number" | "boolean" | "null" => ty,
        _ => "any",
    }
}

fn object_type(schema: &Value, indent: &str) -> String {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return "object".to_owned();
    };
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let mut out = String::from("{\n");
    for (name, prop) in props {
        if let Some(desc) = prop.get("description").and_then(Value::as_str) {
            for line in desc.lines() {
                out.push_str(&format!("{indent}// {line}\n"));
            }
        }
        let optional = if required.contains(&name.as_str()) { "" } else { "?" };
        out.push_str(&format!("{indent}{name}{optional}: {},", schema_to_typescript(prop, &format!("{indent}    "))));
        if let Some(default) = prop.get("default") {
            // A string default of an enum is written bare, as the format guide shows.
            let text = match default {
                Value::String(s) if prop.get("enum").is_some() => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!(" // default: {text}"));
        }
        out.push('\n');
    }
    out.push_str(indent);
    out.push('}');
    out
}

/// How a parsed message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEnd {
    /// `<|end|>`: a complete message; more may follow.
    End,
    /// `<|return|>`: the model is done.
    Return,
    /// `<|call|>`: a tool call.
    Call,
    /// The text stopped inside the content (a token limit, or the stop token was dropped).
    Open,
}

/// One message of a harmony transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarmonyMessage {
    /// `assistant`, `user`, … or the tool's name (`functions.search`) for a tool's message.
    pub author: String,
    pub recipient: Option<String>,
    pub channel: Option<String>,
    /// `json` from ` <|constrain|>json` or ` json`.
    pub content_type: Option<String>,
    pub content: String,
    pub end: MessageEnd,
    /// Byte range of the whole message (header to end token) in the parsed text.
    pub span: Range<usize>,
}

impl HarmonyMessage {
    /// A message from `author` with `content`, ended by `<|end|>`.
    pub fn new(author: &str, content: &str) -> Self {
        Self {
            author: author.to_owned(),
            recipient: None,
            channel: None,
            content_type: None,
            content: content.to_owned(),
            end: MessageEnd::End,
            span: 0..0,
        }
    }

    pub fn with_channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_owned());
        self
    }

    /// A tool call's recipient (`functions.search`): ends the message with `<|call|>` when the
    /// author is the assistant.
    pub fn with_recipient(mut self, recipient: &str) -> Self {
        self.recipient = Some(recipient.to_owned());
        if self.author == "assistant" {
            self.end = MessageEnd::Call;
        }
        self
    }

    /// The content type, written ` <|constrain|>{ty}` (gpt-oss writes `json` so).
    pub fn with_content_type(mut self, ty: &str) -> Self {
        self.content_type = Some(ty.to_owned());
        self
    }

    pub fn with_end(mut self, end: MessageEnd) -> Self {
        self.end = end;
        self
    }

    /// `<|start|>{header}<|message|>{content}{end}`. An assistant's recipient follows the
    /// channel (`<|channel|>commentary to=functions.x <|constrain|>json`, as gpt-oss writes its
    /// calls); a tool's precedes it (`functions.x to=assistant<|channel|>commentary`).
    pub fn render(&self) -> String {
        let mut out = format!("{START}{}", self.author);
        let to = self.recipient.as_ref().map(|r| format!(" to={r}")).unwrap_or_default();
        match &self.channel {
            Some(channel) if self.author == "assistant" => out.push_str(&format!("{CHANNEL}{channel}{to}")),
            Some(channel) => out.push_str(&format!("{to}{CHANNEL}{channel}")),
            None => out.push_str(&to),
        }
        if let Some(ty) = &self.content_type {
            out.push_str(&format!(" {CONSTRAIN}{ty}"));
        }
        out.push_str(MESSAGE);
        out.push_str(&self.content);
        out.push_str(match self.end {
            MessageEnd::End => END,
            MessageEnd::Return => RETURN,
            MessageEnd::Call => CALL,
            MessageEnd::Open => "",
        });
        out
    }
}

/// Why a completion is not well-formed harmony.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HarmonyError {
    #[error("a harmony message header at byte {at} has no <|message|> (header text {header:?})")]
    UnterminatedHeader { at: usize, header: String },
    #[error("text outside any harmony message at byte {at}: {text:?} (expected <|start|>)")]
    OutsideMessage { at: usize, text: String },
    #[error("the completion has no message on the final channel (channels: {})", if channels.is_empty() { "none".to_owned() } else { channels.join(", ") })]
    NoFinalChannel { channels: Vec<String> },
}

/// Parses a completion: the text the model wrote after `<|start|>assistant`, special tokens
/// kept, so the first message's author is `assistant` unless the text opens with `<|start|>`.
/// Whitespace between messages is allowed (the guide's examples have newlines there).
pub fn parse_completion(text: &str) -> Result<Vec<HarmonyMessage>, HarmonyError> {
    parse_messages(text, Some("assistant"))
}

/// Parses a transcript where every message opens with `<|start|>` (`implied_author: None`), or
/// a completion whose first header continues after `<|start|>{implied_author}`.
pub fn parse_messages(text: &str, implied_author: Option<&str>) -> Result<Vec<HarmonyMessage>, HarmonyError> {
    let mut messages = Vec::new();
    let mut pos = 0;
    let mut implied = implied_author;
    loop {
        let rest = &text[pos..];
        let start = pos;
        let author_implied = if rest.starts_with(START) {
            pos += START.len();
            None
        } else if let Some(author) = implied {
            Some(author)
        } else {
            let skipped = rest.len() - rest.trim_start().len();
            if skipped == rest.len() {
                return Ok(messages);
            }
            if rest[skipped..].starts_with(START) {
                pos += skipped;
                continue;
            }
            let junk: String = rest.trim_start().chars().take(40).collect();
            return Err(HarmonyError::OutsideMessage { at: pos + skipped, text: junk });
        };
        implied = None;
        let Some(header_len) = text[pos..].find(MESSAGE) else {
            let header = &text[pos..];
            if author_implied.is_none() {
                // `<|start|>assistant` at the end (a generation prompt, or a header cut by the
                // token limit): a message with no content yet.
                let mut open = parse_header(header, None);
                open.span = start..text.len();
                messages.push(open);
                return Ok(messages);
            }
            // An empty completion holds nothing; text without any header is not harmony.
            if header.trim().is_empty() {
                return Ok(messages);
            }
            return Err(HarmonyError::UnterminatedHeader { at: start, header: header.chars().take(80).collect() });
        };
        let header = &text[pos..pos + header_len];
        let content_start = pos + header_len + MESSAGE.len();
        let (content_len, end, end_len) = [(END, MessageEnd::End), (RETURN, MessageEnd::Return), (CALL, MessageEnd::Call), (START, MessageEnd::Open)]
            .iter()
            .filter_map(|(tok, kind)| text[content_start..].find(tok).map(|i| (i, *kind, if *kind == MessageEnd::Open { 0 } else { tok.len() })))
            .min_by_key(|(i, _, _)| *i)
            .unwrap_or((text.len() - content_start, MessageEnd::Open, 0));
        let mut message = parse_header(header, author_implied);
        message.content = text[content_start..content_start + content_len].to_owned();
        message.end = end;
        pos = content_start + content_len + end_len;
        message.span = start..pos;
        messages.push(message);
        if pos >= text.len() {
            return Ok(messages);
        }
    }
}

/// `assistant to=functions.x<|channel|>commentary <|constrain|>json`, in any of the orders the
/// guide allows (the recipient may sit with the author or with the channel).
fn parse_header(header: &str, implied_author: Option<&str>) -> HarmonyMessage {
    let spaced = header.replace(CHANNEL, &format!(" {CHANNEL} ")).replace(CONSTRAIN, &format!(" {CONSTRAIN} "));
    let mut words = spaced.split_whitespace().peekable();
    let mut msg = HarmonyMessage {
        author: implied_author.unwrap_or_default().to_owned(),
        recipient: None,
        channel: None,
        content_type: None,
        content: String::new(),
        end: MessageEnd::Open,
        span: 0..0,
    };
    if implied_author.is_none()
        && let Some(first) = words.next_if(|w| *w != CHANNEL && *w != CONSTRAIN && !w.starts_with("to="))
    {
        msg.author = first.to_owned();
    }
    while let Some(word) = words.next() {
        if word == CHANNEL {
            msg.channel = words.next().map(str::to_owned);
        } else if word == CONSTRAIN {
            msg.content_type = words.next().map(str::to_owned);
        } else if let Some(to) = word.strip_prefix("to=") {
            msg.recipient = Some(to.to_owned());
        } else {
            msg.content_type = Some(word.to_owned());
        }
    }
    msg
}

/// The answer the reward scores: the content of the last `final`-channel message of the
/// completion. A completion that never reaches the final channel has no answer.
pub fn final_answer(completion: &str) -> Result<String, HarmonyError> {
    let messages = parse_completion(completion)?;
    match messages.iter().rev().find(|m| m.channel.as_deref() == Some("final") && m.author == "assistant") {
        Some(m) => Ok(m.content.clone()),
        None => Err(HarmonyError::NoFinalChannel { channels: messages.iter().filter_map(|m| m.channel.clone()).collect() }),
    }
}

/// Tool calls of a completion: assistant messages addressed to a recipient. `functions.<name>`
/// names one of `tools`; any other recipient (the built-in `browser`/`python` tools gpt-oss
/// knows) is an unknown tool. The content is the JSON arguments object.
pub(crate) fn parse_calls(text: &str, tools: &[ToolSpec]) -> Vec<CallAttempt> {
    let messages = match parse_completion(text) {
        Ok(m) => m,
        // A completion that is not harmony holds no call; the reward sees no final answer.
        Err(_) => return Vec::new(),
    };
    messages
        .into_iter()
        .filter(|m| m.author == "assistant")
        .filter_map(|m| {
            let recipient = m.recipient.clone()?;
            Some(CallAttempt { span: m.span.clone(), result: call_from_message(&m, &recipient, tools) })
        })
        .collect()
}

fn call_from_message(m: &HarmonyMessage, recipient: &str, tools: &[ToolSpec]) -> Result<ToolCall, ToolCallError> {
    let name = recipient.strip_prefix("functions.").unwrap_or(recipient);
    if !recipient.starts_with("functions.") || !tools.iter().any(|t| t.name == name) {
        return Err(ToolCallError::UnknownTool { name: name.to_owned(), available: tools.iter().map(|t| t.name.clone()).collect() });
    }
    let body = m.content.trim();
    let arguments = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(other) => return Err(ToolCallError::ArgumentsNotObject { name: name.to_owned(), got: other.to_string().chars().take(80).collect() }),
        Err(e) => {
            let detail = if body.is_empty() { "the arguments are empty".to_owned() } else { e.to_string() };
            return Err(ToolCallError::InvalidArguments { name: name.to_owned(), detail });
        }
    };
    Ok(ToolCall { name: name.to_owned(), arguments, span: m.span.clone() })
}

/// The author of the tool message answering a call of `name`: `functions.<name>`, or the
/// recipient as the model wrote it when it names a namespace (`browser.search`).
pub(crate) fn tool_author(name: Option<&str>) -> String {
    match name {
        Some(n) if n.contains('.') => n.to_owned(),
        Some(n) => format!("functions.{n}"),
        None => "functions".to_owned(),
    }
}

#[cfg(test)]
#[path = "harmony_tests.rs"]
mod tests;
