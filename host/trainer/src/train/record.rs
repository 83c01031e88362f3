//! What a step leaves behind: its rollouts, one JSON line each, in this rank's rollouts.jsonl,
//! and the per-rollout numbers the step's metrics are computed from (gathered across ranks).

use anyhow::{Context, Result};
use serde::Serialize;

use super::Trainer;
use sigmaforge_model::episode::{self, Episode, RolloutToolUse};
use sigmaforge_model::generate::FinishReason;
use sigmaforge_reward::{ComponentScore, ScoreResult};

impl Trainer {
    /// The file this rank logs its rollouts to (each rank logs the rollouts it generated).
    pub(super) fn rollouts_file(&self) -> String {
        if self.dp.is_distributed() { format!("rollouts-rank-{}.jsonl", self.dp.rank()) } else { "rollouts.jsonl".to_string() }
    }

    pub(super) fn log_rollouts(&self, task_idx: &[usize], rollouts: &[Episode], scores: &[ScoreResult], adv: &[f64]) -> Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            step: u64,
            task: &'a str,
            /// What was asked: the prompt's last user message (the system prompt is the task's).
            request: &'a str,
            /// Everything after the prompt, special tokens skipped (tool turns included).
            completion: &'a str,
            /// With tool calls only: the text after the last tool turn, the calls, and the
            /// transcript with its special tokens, as the model saw it.
            #[serde(skip_serializing_if = "Option::is_none")]
            final_answer: Option<&'a str>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            tool_calls: &'a [episode::ToolCallRecord],
            #[serde(skip_serializing_if = "Option::is_none")]
            transcript: Option<&'a str>,
            reward: f64,
            /// Each component's `name`, `value`, `weight` and the plugin's `detail` (why it scored so).
            components: &'a [ComponentScore],
            error: Option<&'a str>,
            advantage: f64,
            finish: FinishReason,
        }
        use std::io::Write;
        // Each rank logs the rollouts it generated.
        let path = self.run_dir.join(self.rollouts_file());
        let mut f = std::io::BufWriter::new(
            std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?,
        );
        for ((r, s), a) in rollouts.iter().zip(scores).zip(adv) {
            let task = &self.tasks[task_idx[r.prompt_index]];
            let request = task.messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
            let line = Line {
                step: self.step,
                task: &task.id,
                request,
                completion: &r.text,
                final_answer: r.called_tool().then_some(r.final_answer.as_str()),
                tool_calls: &r.tool_calls,
                transcript: r.called_tool().then_some(r.transcript.as_str()),
                reward: s.total,
                components: &s.components,
                error: s.error.as_deref(),
                advantage: *a,
                finish: r.finish_reason,
            };
            writeln!(f, "{}", serde_json::to_string(&line)?)?;
        }
        f.flush()?;
        Ok(())
    }
}

/// What the step's metrics need of one rollout, as numbers that a data-parallel job gathers.
pub(super) struct RolloutRow {
    pub(super) total: f64,
    /// In `TaskEnvironment::component_names` order; a failed score counts 0 in each.
    pub(super) components: Vec<f64>,
    /// Tokens the policy generated (inserted tool turns not counted).
    pub(super) length: f64,
    pub(super) truncated: bool,
    pub(super) failed: bool,
    pub(super) tool: RolloutToolUse,
}

impl RolloutRow {
    const FIXED: usize = 8;

    pub(super) fn cols(names: &[String]) -> usize {
        Self::FIXED + names.len()
    }

    /// Rows of [total, length, truncated, failed, called_tool, tool_calls, tool_errors,
    /// tool_seconds, components…], flattened.
    pub(super) fn table(rollouts: &[Episode], scores: &[ScoreResult], names: &[String]) -> Vec<f64> {
        let flag = |b: bool| f64::from(u8::from(b));
        let mut out = Vec::with_capacity(rollouts.len() * Self::cols(names));
        for (r, s) in rollouts.iter().zip(scores) {
            let tool = r.tool_use(s.total);
            out.extend([s.total, r.generated_tokens() as f64, flag(r.finish_reason == FinishReason::Length), flag(s.error.is_some())]);
            out.extend([flag(tool.called), tool.calls as f64, tool.errors as f64, tool.seconds]);
            for name in names {
                out.push(s.components.iter().find(|c| &c.name == name).map_or(0.0, |c| c.value));
            }
        }
        out
    }

    pub(super) fn from_slice(row: &[f64]) -> Self {
        Self {
            total: row[0],
            length: row[1],
            truncated: row[2] > 0.5,
            failed: row[3] > 0.5,
            tool: RolloutToolUse { called: row[4] > 0.5, calls: row[5] as usize, errors: row[6] as usize, seconds: row[7], reward: row[0] },
            components: row[Self::FIXED..].to_vec(),
        }
    }
}
