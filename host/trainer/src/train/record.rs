//! What a step leaves behind: its rollouts, one JSON line each, in this rank's rollouts.jsonl,
//! its reward failures, and its metrics, computed from per-rollout rows gathered across ranks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::Trainer;
use super::rollout::ScoredRollouts;
use super::update::UpdateStats;
use crate::grpo;
use crate::metrics::{MeanStd, StepMetrics};
use sigmaforge_model::episode::{self, Episode, RolloutToolUse, ToolStats};
use sigmaforge_model::generate::FinishReason;
use sigmaforge_reward::{ComponentScore, ScoreResult};

impl Trainer {
    /// The file this rank logs its rollouts to (each rank logs the rollouts it generated).
    pub(super) fn rollouts_file(&self) -> String {
        if self.dp.is_distributed() { format!("rollouts-rank-{}.jsonl", self.dp.rank()) } else { "rollouts.jsonl".to_string() }
    }

    /// Appends the step's rollouts to this rank's rollouts file, one JSON line each.
    pub(super) fn log_rollouts(&self, scored: &ScoredRollouts, adv: &[f64]) -> Result<()> {
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
        let (task_idx, rollouts, scores) = (&scored.task_idx, &scored.rollouts, &scored.scores);
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

    /// The step's reward failures, as "task <id>: <error>".
    pub(super) fn reward_errors(&self, scored: &ScoredRollouts) -> Vec<String> {
        let (task_idx, rollouts, scores) = (&scored.task_idx, &scored.rollouts, &scored.scores);
        let mut reward_errors = Vec::new();
        for (r, s) in rollouts.iter().zip(scores) {
            if let Some(e) = &s.error {
                reward_errors.push(format!("task {}: {e}", self.tasks[task_idx[r.prompt_index]].id));
            }
        }
        reward_errors
    }

    /// The step's metrics (call after `self.step` counts the step), over every rank's
    /// rollouts; this rank's are rows `first_row..` of the step's rollouts.
    pub(super) fn step_metrics(
        &mut self,
        scored: &ScoredRollouts,
        update: &UpdateStats,
        lr: f64,
        first_row: usize,
        update_time: Duration,
        step_start: Instant,
    ) -> Result<StepMetrics> {
        let b = self.cfg.training.prompts_per_step;
        let g = self.cfg.training.rollouts_per_prompt;
        let (rollouts, scores) = (&scored.rollouts, &scored.scores);
        let (gen_time, reward_busy, reward_wait) = (scored.gen_time, scored.reward_busy, scored.reward_wait);
        // Metrics cover every rank's rollouts: one row per rollout, gathered in rank order.
        let names = self.env.component_names();
        let rows = RolloutRow::table(rollouts, scores, &names);
        let rows = self.dp.gather_rows(&rows, RolloutRow::cols(&names), first_row, b * g, "the rollouts' metrics")?;
        let rows: Vec<RolloutRow> = rows.chunks_exact(RolloutRow::cols(&names)).map(RolloutRow::from_slice).collect();
        let totals: Vec<f64> = rows.iter().map(|r| r.total).collect();
        let components: BTreeMap<String, MeanStd> = names
            .iter()
            .enumerate()
            .map(|(k, name)| (name.clone(), MeanStd::of(&rows.iter().map(|r| r.components[k]).collect::<Vec<_>>())))
            .collect();
        // Generated tokens only: inserted tool turns are not the policy's output.
        let lengths: Vec<f64> = rows.iter().map(|r| r.length).collect();
        let tool_stats = ToolStats::over(rows.iter().map(|r| r.tool));
        let generated: f64 = lengths.iter().sum();
        // The step waits for the slowest rank, so its times are the ones reported.
        let local_times = [gen_time.as_secs_f64(), reward_busy.as_secs_f64(), reward_wait.as_secs_f64(), update_time.as_secs_f64()];
        let times = self.dp.gather_per_rank(&local_times, "the step timings")?;
        let slowest = |k: usize| times.iter().map(|t| t[k]).fold(0.0, f64::max);
        let tokens = update.stats.tokens.max(1.0);
        Ok(StepMetrics {
            step: self.step,
            lr,
            reward: MeanStd::of(&totals),
            reward_components: components,
            reward_errors: rows.iter().filter(|r| r.failed).count(),
            loss: update.loss,
            kl: update.stats.kl_sum / tokens,
            entropy: update.entropy,
            clip_fraction: (update.stats.clipped_low + update.stats.clipped_high) / tokens,
            clip_fraction_low: update.stats.clipped_low / tokens,
            clip_fraction_high: update.stats.clipped_high / tokens,
            grad_norm: update.grad_norm,
            completion_length: MeanStd::of(&lengths),
            truncated: rows.iter().filter(|r| r.truncated).count(),
            groups: b,
            rollouts: rows.len(),
            zero_variance_groups: grpo::zero_variance_groups(&totals, g).iter().filter(|z| **z).count(),
            logprob_mismatch: update.mismatch,
            time_generation_s: slowest(0),
            time_reward_s: slowest(1),
            time_reward_wait_s: slowest(2),
            time_update_s: slowest(3),
            time_step_s: step_start.elapsed().as_secs_f64(),
            generation_tokens_per_s: if slowest(0) == 0.0 { 0.0 } else { generated / slowest(0) },
            tool_call_fraction: tool_stats.call_fraction,
            tool_calls: tool_stats.calls,
            tool_errors: tool_stats.errors,
            reward_with_tool: tool_stats.reward_with_tool,
            reward_without_tool: tool_stats.reward_without_tool,
            time_tool_s: tool_stats.seconds,
        })
    }
}

/// What the step's metrics need of one rollout, as numbers that a data-parallel job gathers.
struct RolloutRow {
    total: f64,
    /// In `TaskEnvironment::component_names` order; a failed score counts 0 in each.
    components: Vec<f64>,
    /// Tokens the policy generated (inserted tool turns not counted).
    length: f64,
    truncated: bool,
    failed: bool,
    tool: RolloutToolUse,
}

impl RolloutRow {
    const FIXED: usize = 8;

    fn cols(names: &[String]) -> usize {
        Self::FIXED + names.len()
    }

    /// Rows of [total, length, truncated, failed, called_tool, tool_calls, tool_errors,
    /// tool_seconds, components…], flattened.
    fn table(rollouts: &[Episode], scores: &[ScoreResult], names: &[String]) -> Vec<f64> {
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

    fn from_slice(row: &[f64]) -> Self {
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
