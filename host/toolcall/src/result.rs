//! Tool results going back to the model: as transcript messages and as the ChatML (or harmony)
//! text the policy continues from.

use serde::{Deserialize, Serialize};

use crate::format::ToolFormat;
use crate::parse::{ToolCall, ToolCallError};

/// Closes the assistant's turn in ChatML. Append it before [`tool_turn_text`] when generation
/// stopped on a stop string (e.g. `</tool_call>`) rather than on the end-of-turn token.
pub const ASSISTANT_TURN_END: &str = "<|im_end|>\n";

/// A chat message (the shape of the WIT `types.message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What one tool call produced, ready to show to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The tool that was called, when the call named a known tool.
    pub name: Option<String>,
    /// The tool's output, or the error text for the model.
    pub content: String,
    pub is_error: bool,
}

impl ToolResult {
    pub fn ok(name: &str, output: String) -> Self {
        ToolResult { name: Some(name.to_owned()), content: output, is_error: false }
    }

    /// A call that could not run (malformed, unknown tool, tool error, trap or timeout).
    pub fn error(err: &ToolCallError) -> Self {
        ToolResult { name: err.tool_name().map(str::to_owned), content: format!("Error: {err}"), is_error: true }
    }

    /// The result of invoking `call`: the WIT `invoke` outcome, where `Err` is the tool's own
    /// error message. (A trap or timeout should be reported with [`ToolCallError::ToolCrashed`].)
    pub fn from_invoke(call: &ToolCall, outcome: Result<String, String>) -> Self {
        match outcome {
            Ok(output) => ToolResult::ok(&call.name, output),
            Err(message) => ToolResult::error(&ToolCallError::ToolFailed { name: call.name.clone(), message }),
        }
    }
}

/// The transcript message for a result: role `tool` for formats with a tool role, `user` for the
/// fenced fallback (models without tool support know only user turns).
pub fn tool_result_message(format: ToolFormat, result: &ToolResult) -> Message {
    match format {
        ToolFormat::Hermes | ToolFormat::SmolLm2 | ToolFormat::Harmony => Message { role: "tool".to_owned(), content: result.content.clone() },
        ToolFormat::Fenced => Message { role: "user".to_owned(), content: fenced_result_text(result) },
    }
}

fn fenced_result_text(result: &ToolResult) -> String {
    match &result.name {
        Some(name) => format!("Tool result ({name}):\n{}", result.content),
        None => format!("Tool result:\n{}", result.content),
    }
}

/// The text that follows the assistant's tool-call turn, up to and including the header of
/// the next assistant turn, so the policy continues from it. None of it is a policy action: mask
/// these tokens out of the loss. Hermes groups all results in one user turn of `<tool_response>`
/// blocks (as Qwen3's template does); SmolLM2 uses one `tool` turn per result; the fenced fallback
/// one user turn; harmony one `functions.<name> to=assistant` commentary message per result, then
/// `<|start|>assistant`.
pub fn tool_turn_text(format: ToolFormat, results: &[ToolResult]) -> String {
    let mut out = String::new();
    match format {
        ToolFormat::Hermes => {
            out.push_str("<|im_start|>user");
            for r in results {
                out.push_str("\n<tool_response>\n");
                out.push_str(&r.content);
                out.push_str("\n</tool_response>");
            }
            out.push_str("<|im_end|>\n");
        }
        ToolFormat::SmolLm2 => {
            for r in results {
                out.push_str("<|im_start|>tool\n");
                out.push_str(&r.content);
                out.push_str("<|im_end|>\n");
            }
        }
        ToolFormat::Fenced => {
            out.push_str("<|im_start|>user\n");
            let parts: Vec<String> = results.iter().map(fenced_result_text).collect();
            out.push_str(&parts.join("\n\n"));
            out.push_str("<|im_end|>\n");
        }
        ToolFormat::Harmony => {
            use crate::harmony::{CHANNEL, END, MESSAGE, START, tool_author};
            for r in results {
                let author = tool_author(r.name.as_deref());
                out.push_str(&format!("{START}{author} to=assistant{CHANNEL}commentary{MESSAGE}{}{END}", r.content));
            }
            out.push_str(START);
            out.push_str("assistant");
            return out;
        }
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> ToolCall {
        ToolCall { name: "search".into(), arguments: serde_json::json!({"query": "q"}), span: 0..0 }
    }

    #[test]
    fn hermes_turn_matches_qwen3_template() {
        let results = [ToolResult::ok("search", "doc A".into()), ToolResult::ok("search", "doc B".into())];
        assert_eq!(
            tool_turn_text(ToolFormat::Hermes, &results),
            "<|im_start|>user\n<tool_response>\ndoc A\n</tool_response>\n<tool_response>\ndoc B\n</tool_response>\
             <|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn smollm2_and_fenced_turns() {
        let r = [ToolResult::ok("search", "hits".into())];
        assert_eq!(tool_turn_text(ToolFormat::SmolLm2, &r), "<|im_start|>tool\nhits<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(tool_turn_text(ToolFormat::Fenced, &r), "<|im_start|>user\nTool result (search):\nhits<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn errors_become_messages_for_the_model() {
        let failed = ToolResult::from_invoke(&call(), Err("missing \"query\"".into()));
        assert!(failed.is_error);
        assert_eq!(failed.content, "Error: tool `search` returned an error: missing \"query\"");
        let bad = ToolResult::error(&ToolCallError::InvalidJson { detail: "EOF".into() });
        assert_eq!(bad.name, None);
        let msg = tool_result_message(ToolFormat::Hermes, &bad);
        assert_eq!(msg.role, "tool");
        assert_eq!(msg.content, "Error: the tool call is not valid JSON (EOF)");
        let crashed = ToolResult::error(&ToolCallError::ToolCrashed { name: "search".into(), message: "timed out after 2 s".into() });
        let msg = tool_result_message(ToolFormat::Fenced, &crashed);
        assert_eq!(msg.role, "user");
        assert_eq!(msg.content, "Tool result (search):\nError: tool `search` did not finish: timed out after 2 s");
    }

    #[test]
    fn ok_result_keeps_the_output() {
        let r = ToolResult::from_invoke(&call(), Ok("1. win-security-4688".into()));
        assert_eq!(r, ToolResult { name: Some("search".into()), content: "1. win-security-4688".into(), is_error: false });
    }
}
