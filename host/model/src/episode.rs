//! Rollouts as episodes: a model turn, optionally a tool turn, and the model's final answer.
//!
//! Without tools an episode is one generated segment, exactly as [`crate::generate`] samples it.
//! With tools ([`ToolUse`]) the prompt offers them in the model family's format
//! (`sigmaforge_toolcall`), generation stops at the format's stop string (`</tool_call>`, or
//! harmony's `<|call|>`), the host parses the call, runs it through a [`ToolBox`], appends the
//! tool-result turn and lets the model continue — up to `max_turns` tool turns, after which no
//! more tools are run.
//!
//! With a harmony tokenizer (gpt-oss) the completion is a sequence of harmony messages: the
//! reasoning on `analysis`, a call `to=functions.<name>` on `commentary` ending in `<|call|>`, the
//! answer on `final`. The answer the reward scores is the `final` channel's text
//! ([`Episode::final_answer`]); without one it is empty.
//!
//! The completion the trainer learns from is `segment 1 + tool-result tokens + segment 2 …`
//! with a per-token loss mask: only tokens the policy sampled count (mask 1); the tool result
//! and the ChatML text around it (mask 0) are context for the next segment, never actions, so
//! they are left out of the policy loss, the KL and the entropy, and their log-probs are 0.
//!
//! Bad calls never end an episode: invalid JSON, an unknown tool, the tool's own error, a trap
//! or a time limit all come back to the model as the tool result (an `Error: …` text).
//!
//! Generation is behind [`SegmentGenerator`] so tests can drive episodes with a scripted policy;
//! [`ModelPolicy`] is the model-backed one. Rows that take a tool turn continue as one batch;
//! each continuation re-reads its whole context (prompt + earlier turns), because the KV cache
//! of the first segment is not kept across the tool call.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sigmaforge_toolcall::{
    ToolCallError, ToolFormat, ToolResult, ToolSpec, chat_template_tools, harmony, parse_tool_calls, system_prompt_with_tools, tool_turn_text,
};

use crate::generate::{FinishReason, SamplerRng, SamplingConfig, generate_until};
use crate::load::{ChatFormat, ChatMessage, Tokenizer};
use crate::model::{AdapterMode, CausalLm, Family};

/// The `tools:` section of a run configuration: how rollouts may use tool plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsSection {
    /// Tool turns a rollout may take before its final answer (0: never offer tools, even when
    /// tool plugins are loaded).
    pub max_turns: usize,
    /// `auto` (a harmony tokenizer → harmony; else from the model family: Qwen3 → hermes,
    /// SmolLM2/Llama → smollm2), `hermes`, `smollm2`, `fenced` or `harmony`.
    pub format: String,
    /// A tool result longer than this many characters is cut (with a note to the model), so one
    /// verbose tool cannot blow up the context.
    pub max_result_chars: usize,
    /// What the reward scores: the `final_answer` (the text after the last tool turn) or the
    /// whole `transcript` (every assistant turn and tool result, as the model saw them).
    pub reward_on: RewardText,
}

impl Default for ToolsSection {
    fn default() -> Self {
        Self { max_turns: 1, format: "auto".into(), max_result_chars: 4000, reward_on: RewardText::FinalAnswer }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardText {
    FinalAnswer,
    Transcript,
}

impl ToolsSection {
    /// The configured format; `None` for `auto`.
    pub fn explicit_format(&self) -> Result<Option<sigmaforge_toolcall::ToolFormat>> {
        if self.format.trim().eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        self.format.parse().map(Some).map_err(|e: String| anyhow::anyhow!("tools.format: {e} (or auto)"))
    }
}

/// The tools a run may call. The trainer knows nothing of WebAssembly: the CLI implements this
/// over the plugin runtime's tool plugins, tests implement it natively.
pub trait ToolBox: Send + Sync {
    /// Every tool, as offered to the model.
    fn specs(&self) -> Vec<ToolSpec>;
    /// Runs tool `name` (one of `specs`) with a JSON object of arguments.
    fn invoke(&self, name: &str, arguments_json: &str) -> Result<String, ToolInvokeError>;
}

/// Why a tool call produced no output. Both are shown to the model, never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolInvokeError {
    /// The tool ran and refused the call (bad arguments, nothing found…): its own message.
    Failed(String),
    /// The tool did not finish: a trap, the time limit or the memory cap.
    Crashed(String),
}

/// Tools as a run offers them: the tool box, the format and the limits (from `tools:`).
pub struct ToolUse {
    toolbox: Arc<dyn ToolBox>,
    specs: Vec<ToolSpec>,
    format: ToolFormat,
    max_turns: usize,
    max_result_chars: usize,
    reward_on: RewardText,
}

impl ToolUse {
    /// `None` when tools are switched off (`max_turns: 0`) or the tool box is empty. The tool
    /// turns are ChatML (`<|im_start|>…<|im_end|>`, as Qwen3 and SmolLM2 use) or harmony
    /// (gpt-oss), so a tokenizer without the format's tokens is an error rather than a run that
    /// feeds the model garbage.
    pub fn new(toolbox: Arc<dyn ToolBox>, cfg: &ToolsSection, family: Family, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let specs = toolbox.specs();
        if cfg.max_turns == 0 || specs.is_empty() {
            return Ok(None);
        }
        let format = match cfg.explicit_format()? {
            Some(f) => f,
            // The vocabulary decides before the family: harmony is gpt-oss's whatever its loader.
            None if tokenizer.chat_format() == ChatFormat::Harmony => ToolFormat::Harmony,
            None => match family {
                Family::Qwen3 => ToolFormat::Hermes,
                // The Llama-architecture ChatML model the project ships is SmolLM2.
                Family::Llama => ToolFormat::SmolLm2,
                // gpt-oss speaks harmony; a tokenizer without its tokens fails the check below.
                Family::GptOss => ToolFormat::Harmony,
            },
        };
        for marker in format.required_tokens() {
            let written_in = if format == ToolFormat::Harmony { "the harmony format" } else { "ChatML" };
            ensure!(
                tokenizer.token_to_id(marker).is_some(),
                "tools: {format} tool turns are written in {written_in}, but this model's tokenizer has no {marker} token; \
                 use a model that has it (ChatML: Qwen3, SmolLM2; harmony: gpt-oss), another tools.format, or tools.max_turns: 0"
            );
        }
        let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("tools: two tools are named `{}`; tool names must be unique", w[0]);
        }
        Ok(Some(Self { toolbox, specs, format, max_turns: cfg.max_turns, max_result_chars: cfg.max_result_chars, reward_on: cfg.reward_on }))
    }

    pub fn format(&self) -> ToolFormat {
        self.format
    }

    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    pub fn max_turns(&self) -> usize {
        self.max_turns
    }

    pub fn reward_on(&self) -> RewardText {
        self.reward_on
    }

    /// The prompt text of a task's messages with the tools offered, ending in the generation
    /// prompt. ChatML formats offer the tools in the system message ([`Self::offer`]); harmony
    /// in the developer message's `functions` namespace, which the harmony renderer writes from
    /// the `tools` it is given (and the system message then sends calls to `commentary`).
    pub fn render_prompt(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<String> {
        if self.format == ToolFormat::Harmony {
            ensure!(
                tokenizer.chat_format() == ChatFormat::Harmony,
                "tools.format harmony needs a tokenizer with the harmony special tokens (gpt-oss)"
            );
            let tools = chat_template_tools(&self.specs);
            return tokenizer.apply_chat_template(messages, true, tools.as_array().map(Vec::as_slice));
        }
        tokenizer.apply_chat_template(&self.offer(messages), true, None)
    }

    /// The task's messages with the tools offered in the system message (the task's own system
    /// prompt first, if it has one). For Hermes this is the text Qwen3's chat template renders
    /// for `tools`, so every model family gets its tools the same way. ChatML formats only:
    /// harmony takes its tools in the developer message, through [`Self::render_prompt`].
    pub fn offer(&self, messages: &[ChatMessage]) -> Vec<ChatMessage> {
        let mut out = messages.to_vec();
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = system_prompt_with_tools(self.format, Some(&first.content), &self.specs);
            }
            _ => out.insert(0, ChatMessage::new("system", system_prompt_with_tools(self.format, None, &self.specs))),
        }
        out
    }

    fn stop_strings(&self) -> Vec<String> {
        self.format.stop_sequences().iter().map(|s| s.to_string()).collect()
    }

    /// Runs every call attempt of one model turn; errors become results for the model.
    fn run_calls(&self, text: &str, turn: usize) -> (Vec<ToolResult>, Vec<ToolCallRecord>) {
        let mut results = Vec::new();
        let mut records = Vec::new();
        for attempt in parse_tool_calls(self.format, text, &self.specs) {
            let start = Instant::now();
            let (result, arguments) = match attempt.result {
                Err(e) => (ToolResult::error(&e), None),
                Ok(call) => {
                    let outcome = catch_unwind(AssertUnwindSafe(|| self.toolbox.invoke(&call.name, &call.arguments_json())))
                        .unwrap_or_else(|panic| Err(ToolInvokeError::Crashed(panic_text(&panic))));
                    let result = match outcome {
                        Ok(output) => ToolResult::ok(&call.name, cap_chars(output, self.max_result_chars)),
                        Err(ToolInvokeError::Failed(message)) => ToolResult::error(&ToolCallError::ToolFailed { name: call.name.clone(), message }),
                        Err(ToolInvokeError::Crashed(message)) => ToolResult::error(&ToolCallError::ToolCrashed { name: call.name.clone(), message }),
                    };
                    (result, Some(call.arguments))
                }
            };
            records.push(ToolCallRecord {
                turn,
                name: result.name.clone(),
                arguments,
                result: result.content.clone(),
                is_error: result.is_error,
                seconds: start.elapsed().as_secs_f64(),
            });
            results.push(result);
        }
        (results, records)
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let msg = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("unknown panic");
    format!("the tool panicked: {msg}")
}

/// Keeps the first `max` characters, with a note so the model knows the result was cut.
fn cap_chars(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((cut, _)) => format!("{}\n[result cut at {max} characters]", &text[..cut]),
    }
}

/// One generated segment: what the policy sampled until a stop (eos or a stop string) or the
/// token limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub ids: Vec<u32>,
    /// Log-prob of each id under the sampling policy.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
}

/// Contexts in, next segments out.
pub trait SegmentGenerator {
    /// `copies` segments per context, context-major (the first call samples a GRPO group per
    /// prompt; continuations ask for 1). A segment ends at eos, at any of `stop_strings`
    /// (the token completing it included), or at the token limit.
    fn next_segments(&mut self, contexts: &[Vec<u32>], copies: usize, stop_strings: &[String]) -> Result<Vec<Segment>>;
}

/// The policy model, sampling with a KV cache ([`generate_until`]).
pub struct ModelPolicy<'a> {
    pub model: &'a CausalLm,
    pub tokenizer: &'a Tokenizer,
    /// `num_completions` is ignored: each call says how many copies it wants.
    pub sampling: &'a SamplingConfig,
    pub rng: &'a mut SamplerRng,
    pub adapters: AdapterMode,
}

impl SegmentGenerator for ModelPolicy<'_> {
    fn next_segments(&mut self, contexts: &[Vec<u32>], copies: usize, stop_strings: &[String]) -> Result<Vec<Segment>> {
        let cfg = SamplingConfig { num_completions: copies, ..self.sampling.clone() };
        let out = generate_until(self.model, self.tokenizer, contexts, &cfg, stop_strings, self.rng, self.adapters)?;
        Ok(out.into_iter().map(|r| Segment { ids: r.completion_ids, logprobs: r.logprobs, finish: r.finish_reason }).collect())
    }
}

/// One tool call of an episode, for rollouts.jsonl and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallRecord {
    /// 1-based tool turn.
    pub turn: usize,
    /// The tool, when the call named a known one.
    pub name: Option<String>,
    /// The arguments object, when the call parsed.
    pub arguments: Option<Value>,
    /// What the model was shown (the output, or `Error: …`).
    pub result: String,
    pub is_error: bool,
    pub seconds: f64,
}

/// A finished rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// Index into the prompts; episodes come prompt-major, a group of G per prompt.
    pub prompt_index: usize,
    pub prompt_ids: Vec<u32>,
    /// Every segment and inserted tool turn, in order.
    pub completion_ids: Vec<u32>,
    /// Sampling log-prob per completion token (0 for inserted tokens, which are not used).
    pub logprobs: Vec<f32>,
    /// Per completion token: true where the policy sampled it (counts in the loss).
    pub policy_mask: Vec<bool>,
    /// The completion decoded with special tokens skipped (tool turns included).
    pub text: String,
    /// The completion with special tokens kept: the transcript as the model saw it.
    pub transcript: String,
    /// The last segment (after the last tool turn), special tokens skipped; for harmony its
    /// `final` channel's text (empty without one).
    pub final_answer: String,
    pub tool_calls: Vec<ToolCallRecord>,
    /// How the last segment ended.
    pub finish_reason: FinishReason,
}

impl Episode {
    pub fn called_tool(&self) -> bool {
        !self.tool_calls.is_empty()
    }

    pub fn tool_errors(&self) -> usize {
        self.tool_calls.iter().filter(|c| c.is_error).count()
    }

    pub fn tool_seconds(&self) -> f64 {
        // fold from +0.0: an empty float `sum()` is -0.0, which the metrics would print.
        self.tool_calls.iter().fold(0.0, |acc, c| acc + c.seconds)
    }

    /// Tokens the policy generated (the loss counts these).
    pub fn generated_tokens(&self) -> usize {
        self.policy_mask.iter().filter(|m| **m).count()
    }

    /// The text the reward scores.
    pub fn reward_text(&self, on: RewardText) -> &str {
        match on {
            RewardText::FinalAnswer => &self.final_answer,
            RewardText::Transcript => &self.text,
        }
    }
}

/// An episode being built.
struct Draft {
    prompt_index: usize,
    completion: Vec<u32>,
    logprobs: Vec<f32>,
    mask: Vec<bool>,
    last_start: usize,
    last_finish: FinishReason,
    calls: Vec<ToolCallRecord>,
}

impl Draft {
    fn new(prompt_index: usize, seg: Segment) -> Result<Self> {
        let mut d = Self {
            prompt_index,
            completion: Vec::new(),
            logprobs: Vec::new(),
            mask: Vec::new(),
            last_start: 0,
            last_finish: seg.finish,
            calls: Vec::new(),
        };
        d.push_segment(seg)?;
        Ok(d)
    }

    fn push_segment(&mut self, seg: Segment) -> Result<()> {
        ensure!(seg.ids.len() == seg.logprobs.len(), "a segment has {} log-probs for {} tokens", seg.logprobs.len(), seg.ids.len());
        self.last_start = self.completion.len();
        self.last_finish = seg.finish;
        self.mask.extend(std::iter::repeat_n(true, seg.ids.len()));
        self.completion.extend(seg.ids);
        self.logprobs.extend(seg.logprobs);
        Ok(())
    }

    fn push_inserted(&mut self, ids: &[u32]) {
        self.completion.extend_from_slice(ids);
        self.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
        self.mask.extend(std::iter::repeat_n(false, ids.len()));
    }
}

/// Runs one episode per (prompt, copy): `group` episodes per prompt, prompt-major. `tools`:
/// `None` = plain single-segment rollouts.
pub fn run_episodes(
    policy: &mut dyn SegmentGenerator,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    group: usize,
    tools: Option<&ToolUse>,
) -> Result<Vec<Episode>> {
    let stops = tools.map(ToolUse::stop_strings).unwrap_or_default();
    let first = policy.next_segments(prompts, group, &stops)?;
    ensure!(first.len() == prompts.len() * group, "the policy returned {} segments for {} prompts × {group}", first.len(), prompts.len());
    let mut drafts: Vec<Draft> = first.into_iter().enumerate().map(|(i, seg)| Draft::new(i / group, seg)).collect::<Result<_>>()?;

    if let Some(tools) = tools {
        let mut live: Vec<usize> = (0..drafts.len()).collect();
        for turn in 1..=tools.max_turns {
            let mut continuing = Vec::new();
            for &row in &live {
                let d = &mut drafts[row];
                // A segment cut by the token limit is not a finished turn: no tool runs.
                if d.last_finish != FinishReason::Stop {
                    continue;
                }
                let last = &d.completion[d.last_start..];
                let text = tokenizer.decode(last, false)?;
                let (results, records) = tools.run_calls(&text, turn);
                if results.is_empty() {
                    continue;
                }
                // Close the assistant turn (the stop string leaves it open; an eos `<|im_end|>`
                // closed it already and only the newline is missing; harmony's `<|call|>` needs
                // nothing more), then the tool turn.
                let (end_token, end_text) = tools.format.call_end();
                let closed = last.last().is_some_and(|&t| tokenizer.token_to_id(end_token) == Some(t));
                let mut inserted = String::from(if closed { &end_text[end_token.len()..] } else { end_text });
                inserted.push_str(&tool_turn_text(tools.format, &results));
                let ids = tokenizer.encode(&inserted, false)?;
                d.push_inserted(&ids);
                d.calls.extend(records);
                continuing.push(row);
            }
            if continuing.is_empty() {
                break;
            }
            let contexts: Vec<Vec<u32>> =
                continuing.iter().map(|&row| prompts[drafts[row].prompt_index].iter().chain(&drafts[row].completion).copied().collect()).collect();
            // After the last allowed tool turn the model writes its answer; calls in it are not run.
            let turn_stops = if turn < tools.max_turns { stops.clone() } else { Vec::new() };
            let segments = policy.next_segments(&contexts, 1, &turn_stops)?;
            ensure!(segments.len() == continuing.len(), "the policy returned {} segments for {} contexts", segments.len(), continuing.len());
            for (&row, seg) in continuing.iter().zip(segments) {
                drafts[row].push_segment(seg)?;
            }
            live = continuing;
        }
    }

    drafts
        .into_iter()
        .map(|d| {
            Ok(Episode {
                prompt_ids: prompts[d.prompt_index].clone(),
                prompt_index: d.prompt_index,
                text: tokenizer.decode(&d.completion, true)?,
                transcript: tokenizer.decode(&d.completion, false)?,
                final_answer: final_answer(tokenizer, &d.completion[d.last_start..])?,
                completion_ids: d.completion,
                logprobs: d.logprobs,
                policy_mask: d.mask,
                tool_calls: d.calls,
                finish_reason: d.last_finish,
            })
        })
        .collect()
}

/// The answer in the last segment: its text, or for harmony the `final` channel's text (the
/// analysis is reasoning, not the answer; no final channel is no answer, so it scores zero).
fn final_answer(tokenizer: &Tokenizer, last_segment: &[u32]) -> Result<String> {
    match tokenizer.chat_format() {
        ChatFormat::Template => tokenizer.decode(last_segment, true),
        ChatFormat::Harmony => Ok(harmony::final_answer(&tokenizer.decode(last_segment, false)?).unwrap_or_default()),
    }
}

/// Per-step tool statistics over a step's episodes and their rewards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolStats {
    /// Share of rollouts with at least one tool call (well-formed or not).
    pub call_fraction: f64,
    pub calls: usize,
    pub errors: usize,
    /// Mean reward of rollouts that called a tool / did not (`None`: no such rollout).
    pub reward_with_tool: Option<f64>,
    pub reward_without_tool: Option<f64>,
    /// Seconds spent inside tools.
    pub seconds: f64,
}

/// One rollout's tool use and reward: what [`ToolStats`] is summed from (the trainer gathers
/// these over data-parallel ranks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutToolUse {
    pub called: bool,
    pub calls: usize,
    pub errors: usize,
    pub seconds: f64,
    pub reward: f64,
}

impl Episode {
    pub fn tool_use(&self, reward: f64) -> RolloutToolUse {
        RolloutToolUse { called: self.called_tool(), calls: self.tool_calls.len(), errors: self.tool_errors(), seconds: self.tool_seconds(), reward }
    }
}

impl ToolStats {
    pub fn over(rollouts: impl IntoIterator<Item = RolloutToolUse>) -> Self {
        let rollouts: Vec<RolloutToolUse> = rollouts.into_iter().collect();
        let mean = |v: Vec<f64>| if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) };
        let with: Vec<f64> = rollouts.iter().filter(|r| r.called).map(|r| r.reward).collect();
        let without: Vec<f64> = rollouts.iter().filter(|r| !r.called).map(|r| r.reward).collect();
        Self {
            call_fraction: if rollouts.is_empty() { 0.0 } else { with.len() as f64 / rollouts.len() as f64 },
            calls: rollouts.iter().map(|r| r.calls).sum(),
            errors: rollouts.iter().map(|r| r.errors).sum(),
            reward_with_tool: mean(with),
            reward_without_tool: mean(without),
            seconds: rollouts.iter().fold(0.0, |acc, r| acc + r.seconds),
        }
    }
}

#[cfg(test)]
#[path = "episode_tests.rs"]
mod tests;
