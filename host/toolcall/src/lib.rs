//! The tool-call protocol of SigmaForge rollouts: how tools are offered to a model, how its tool
//! calls are found in the generated text, and how results (or errors) go back to it.
//!
//! Four formats, chosen per model family ([`ToolFormat::for_family`]):
//! - [`ToolFormat::Hermes`] (Qwen3, Qwen2.5, Hermes): the tools section and `<tool_call>` /
//!   `<tool_response>` text are byte-for-byte what Qwen3's own chat template renders, so a model
//!   sees the format it was trained on whether the host renders the template or this crate does.
//! - [`ToolFormat::SmolLm2`]: SmolLM2's function-calling format, a JSON *list* of calls inside
//!   `<tool_call>…</tool_call>`, results as a ChatML `tool` turn.
//! - [`ToolFormat::Harmony`] (gpt-oss): OpenAI's harmony format ([`harmony`]), tools as a
//!   TypeScript `functions` namespace, calls as assistant messages `to=functions.<name>`.
//! - [`ToolFormat::Fenced`]: the documented fallback for models without native tool support, a
//!   fenced block ` ```tool_call {"tool": …, "arguments": {…}} ``` ` described in the system prompt.
//!
//! Nothing here panics on model output: every malformed call becomes a [`ToolCallError`] whose
//! `Display` text is written for the model, so an episode answers it and carries on.
//!
//! Dependencies: serde/serde_json (JSON is the wire format of every tool call) and thiserror.
//! No regex crate: the grammars are fixed delimiters, which plain `str::find` handles.

mod format;
pub mod harmony;
mod parse;
mod pyjson;
mod result;

pub use format::{ToolFormat, ToolSpec, chat_template_tools, system_prompt_with_tools};
pub use parse::{CallAttempt, ToolCall, ToolCallError, parse_tool_calls};
pub use result::{ASSISTANT_TURN_END, Message, ToolResult, tool_result_message, tool_turn_text};
