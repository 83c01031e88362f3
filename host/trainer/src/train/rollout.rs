//! The rollout phase of a step: each task's prompt rendered and tokenized (once, then cached),
//! G rollouts generated per prompt, and their rewards scored on a thread of their own.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::Trainer;
use crate::config::RolloutWeights;
use sigmaforge_model::episode::{self, Episode, ModelPolicy};
use sigmaforge_model::generate::SamplingConfig;
use sigmaforge_model::model::AdapterMode;
use sigmaforge_reward::{ScoreResult, TaskRef, score_checked};

/// This rank's rollouts of a step with their scores, and how long producing them took.
pub(super) struct ScoredRollouts {
    /// The step's tasks on this rank (indices into the task list); a rollout's
    /// `prompt_index` points into this list.
    pub(super) task_idx: Vec<usize>,
    /// G per prompt, group after group.
    pub(super) rollouts: Vec<Episode>,
    /// One per rollout; a failed reward scores 0 and carries its error.
    pub(super) scores: Vec<ScoreResult>,
    /// Time spent generating.
    pub(super) gen_time: Duration,
    /// Time the reward thread spent scoring.
    pub(super) reward_busy: Duration,
    /// Time the step waited for the reward thread after the last group generated.
    pub(super) reward_wait: Duration,
}

impl Trainer {
    /// Task `task`'s prompt as token ids: its messages (offering the tools, if any) in the chat
    /// template, at most `generation.max_prompt_tokens` long. Cached, since tasks recur.
    pub(super) fn prompt_tokens(&mut self, task: usize) -> Result<Vec<u32>> {
        if let Some(ids) = self.prompt_ids.get(&task) {
            return Ok(ids.clone());
        }
        let t = &self.tasks[task];
        let text = match &self.tools {
            Some(tools) => tools.render_prompt(&self.tokenizer, &t.messages),
            None => self.tokenizer.apply_chat_template(&t.messages, true, None),
        }
        .with_context(|| format!("task {}: cannot render the prompt with the chat template", t.id))?;
        let ids = self.tokenizer.encode(&text, false).with_context(|| format!("task {}: cannot tokenize the prompt", t.id))?;
        ensure!(
            ids.len() <= self.cfg.generation.max_prompt_tokens,
            "task {}: prompt has {} tokens, more than generation.max_prompt_tokens = {}",
            t.id,
            ids.len(),
            self.cfg.generation.max_prompt_tokens
        );
        self.prompt_ids.insert(task, ids.clone());
        Ok(ids)
    }

    /// How the policy samples: the config's generation settings, a group of G completions.
    pub(super) fn sampling_config(&self) -> SamplingConfig {
        let g = &self.cfg.generation;
        SamplingConfig {
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k,
            max_new_tokens: g.max_new_tokens,
            num_completions: self.cfg.training.rollouts_per_prompt,
            stop_token_ids: Vec::new(),
        }
    }

    /// Generates `training.rollouts_per_prompt` rollouts for each of `task_idx` and scores them.
    pub(super) fn generate_and_score(&mut self, task_idx: Vec<usize>) -> Result<ScoredRollouts> {
        let g = self.cfg.training.rollouts_per_prompt;
        let prompts: Vec<Vec<u32>> = task_idx.iter().map(|&t| self.prompt_tokens(t)).collect::<Result<_>>()?;
        let sampling = self.sampling_config();

        // Generate group after group; the scoring thread works on group i while group i+1
        // generates, so slow rewards overlap with the model's work.
        let per_call = self.cfg.generation.prompts_per_call;
        let env = Arc::clone(&self.env);
        let (tx, rx) = mpsc::channel::<(usize, Vec<(TaskRef, String)>)>();
        let scorer = std::thread::Builder::new()
            .name("sigmaforge-reward".into())
            .spawn(move || {
                let mut out: Vec<(usize, Vec<ScoreResult>)> = Vec::new();
                let mut busy = Duration::ZERO;
                for (offset, items) in rx {
                    let t = Instant::now();
                    out.push((offset, score_checked(env.as_ref(), &items)));
                    busy += t.elapsed();
                }
                (out, busy)
            })
            .context("cannot start the reward thread")?;
        let mut rollouts: Vec<Episode> = Vec::with_capacity(task_idx.len() * g);
        let mut gen_time = Duration::ZERO;
        // A quantised sampling copy of this step's weights (generation.rollout_weights).
        let t = Instant::now();
        let sampler = match (self.cfg.generation.rollout_weights, &self.segment_generator) {
            (RolloutWeights::Q8_0, None) => Some(self.model.quantized_copy().context("cannot build the Q8_0 rollout copy of the policy")?),
            _ => None,
        };
        gen_time += t.elapsed();
        let reward_on = self.cfg.tools.reward_on;
        let gen_result: Result<()> = (|| {
            for (chunk_no, chunk) in prompts.chunks(per_call).enumerate() {
                let t = Instant::now();
                let mut out = match &mut self.segment_generator {
                    Some(generator) => episode::run_episodes(generator.as_mut(), &self.tokenizer, chunk, g, self.tools.as_ref())?,
                    None => {
                        let mut policy = ModelPolicy {
                            model: sampler.as_ref().unwrap_or(&self.model),
                            tokenizer: &self.tokenizer,
                            sampling: &sampling,
                            rng: &mut self.rng,
                            adapters: AdapterMode::Enabled,
                        };
                        episode::run_episodes(&mut policy, &self.tokenizer, chunk, g, self.tools.as_ref())?
                    }
                };
                gen_time += t.elapsed();
                ensure!(out.len() == chunk.len() * g, "generation returned {} rollouts for {} prompts × {g}", out.len(), chunk.len());
                let first = chunk_no * per_call;
                let items = out
                    .iter()
                    .map(|r| (TaskRef::Id(self.tasks[task_idx[first + r.prompt_index]].id.clone()), r.reward_text(reward_on).to_string()))
                    .collect();
                for r in &mut out {
                    r.prompt_index += first;
                }
                let offset = rollouts.len();
                rollouts.extend(out);
                tx.send((offset, items)).map_err(|_| anyhow::anyhow!("the reward thread stopped"))?;
            }
            Ok(())
        })();
        drop(tx);
        let wait_start = Instant::now();
        let joined = scorer.join();
        let reward_wait = wait_start.elapsed();
        gen_result?;
        let (scored, reward_busy) = joined.map_err(|_| anyhow::anyhow!("the reward thread panicked"))?;
        let mut scores: Vec<Option<ScoreResult>> = vec![None; rollouts.len()];
        for (offset, chunk) in scored {
            for (i, s) in chunk.into_iter().enumerate() {
                scores[offset + i] = Some(s);
            }
        }
        let scores: Vec<ScoreResult> = scores.into_iter().map(|s| s.unwrap_or_else(|| ScoreResult::failed("no score came back"))).collect();
        Ok(ScoredRollouts { task_idx, rollouts, scores, gen_time, reward_busy, reward_wait })
    }
}
