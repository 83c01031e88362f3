//! The GRPO loop: sample prompts, generate G rollouts each, score them (on another thread,
//! while the next group generates), compute group-relative advantages, and update the policy
//! over `passes_per_batch` passes with gradient accumulation over micro-batches.
//!
//! Data parallelism (several ranks, see `parallel`) hooks in at a few marked places: each rank
//! generates for its share of the prompts, the loss normaliser, gradients and metrics are made
//! global, and only rank 0 writes files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::checkpoint::{self, Checkpoint, CheckpointState, FORMAT_VERSION};
use crate::config::RunConfig;
use crate::grpo::{self, LossInputs, LossNormalizer, LossParams, LossStats};
use crate::metrics::{self, MeanStd, StepMetrics};
use crate::optim::{AdamW, GradAccumulator, LrSchedule};
use crate::parallel::{DataParallel, StepGradients, generation_seed, text_checksum};
use crate::sampler::TaskSampler;
use sigmaforge_model::episode::{self, Episode, ModelPolicy, RolloutToolUse, SegmentGenerator, ToolBox, ToolStats, ToolUse};
use sigmaforge_model::export;
use sigmaforge_model::generate::{FinishReason, SamplingConfig};
use sigmaforge_model::load::Tokenizer;
use sigmaforge_model::model::{AdapterMode, CausalLm, streamed_logits};
use sigmaforge_model::rng::SamplerRng;
use sigmaforge_reward::{ComponentScore, ScoreResult, TaskEnvironment, TaskPrompt, TaskRef, score_checked};

/// What one step produced besides its metrics.
pub struct StepOutcome {
    pub metrics: StepMetrics,
    /// Reward failures of this step ("task <id>: <error>"), for the log.
    pub reward_errors: Vec<String>,
}

pub struct Trainer {
    cfg: RunConfig,
    model: CausalLm,
    /// The frozen initial model, for the KL term under full fine-tuning with beta > 0.
    reference: Option<CausalLm>,
    tokenizer: Tokenizer,
    optimizer: AdamW,
    schedule: LrSchedule,
    rng: SamplerRng,
    sampler: TaskSampler,
    tasks: Vec<TaskPrompt>,
    env: Arc<dyn TaskEnvironment>,
    step: u64,
    run_dir: PathBuf,
    coverage_checked: bool,
    prompt_ids: HashMap<usize, Vec<u32>>,
    /// This rank's place in a data-parallel job (one process: `DataParallel::single`).
    dp: DataParallel,
    /// Tools offered during rollouts (see `with_tools`).
    tools: Option<ToolUse>,
    /// Replaces the model's sampling (see `with_segment_generator`).
    segment_generator: Option<Box<dyn SegmentGenerator + Send>>,
}

/// One completion as the update sees it.
pub struct Sample {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    /// Log-probabilities of the completion tokens when they were sampled.
    pub sample_logp: Vec<f32>,
    /// Per completion token: sampled by the policy (true) or inserted, e.g. a tool result.
    pub policy_mask: Vec<bool>,
    pub advantage: f64,
}

impl Trainer {
    /// `model` must have been built with the config's LoRA setting (or none for full FT).
    pub fn new(cfg: RunConfig, model: CausalLm, tokenizer: Tokenizer, env: Arc<dyn TaskEnvironment>, run_dir: &Path) -> Result<Self> {
        Self::data_parallel(cfg, model, tokenizer, env, run_dir, DataParallel::single())
    }

    /// As [`Trainer::new`], as one rank of a data-parallel job. Every rank must be given the
    /// same config and the same initial weights (both are checked here).
    pub fn data_parallel(
        cfg: RunConfig,
        model: CausalLm,
        tokenizer: Tokenizer,
        env: Arc<dyn TaskEnvironment>,
        run_dir: &Path,
        mut dp: DataParallel,
    ) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            cfg.training.prompts_per_step >= dp.world_size(),
            "training.prompts_per_step = {} is smaller than the {} ranks of the job: every rank needs at least one prompt group",
            cfg.training.prompts_per_step,
            dp.world_size()
        );
        dp.verify_same(text_checksum(&cfg.to_yaml()?), "the run config")?;
        ensure!(
            model.lora_config() == cfg.lora(),
            "the model was built with LoRA {:?} but the config asks for {:?}",
            model.lora_config(),
            cfg.lora()
        );
        let tasks = env.tasks().context("cannot list the training tasks")?;
        ensure!(!tasks.is_empty(), "the task environment has no tasks to train on");
        let params = model.trainable_vars();
        ensure!(!params.is_empty(), "the model has no trainable parameters");
        let optimizer = dp.optimizer(params, cfg.optimizer.adamw, cfg.training.shard_optimizer_state, cfg.training.shard_gradients)?;
        let o = &cfg.optimizer;
        let schedule = LrSchedule {
            kind: o.schedule,
            peak_lr: o.lr,
            warmup_steps: o.warmup_steps,
            total_steps: cfg.training.steps,
            min_lr_ratio: o.min_lr_ratio,
        };
        // The KL reference of a full fine-tune: a frozen copy of the starting weights, on the
        // device or (training.memory.reference_on_host) in host memory, streamed when used.
        let reference = if cfg.grpo.beta > 0.0 && cfg.lora().is_none() {
            let home = if cfg.training.memory.reference_on_host { Device::Cpu } else { model.device().clone() };
            Some(model.frozen_copy_on(&home)?)
        } else {
            None
        };
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
        let seed = cfg.training.seed;
        dp.verify_same_weights(optimizer.params(), "at the start")?;
        Ok(Self {
            sampler: TaskSampler::new(tasks.len(), seed),
            rng: SamplerRng::new(generation_seed(seed ^ 0x6E6E_7261_7465, dp.rank())),
            cfg,
            model,
            reference,
            tokenizer,
            optimizer,
            schedule,
            tasks,
            env,
            step: 0,
            run_dir: run_dir.to_path_buf(),
            coverage_checked: false,
            prompt_ids: HashMap::new(),
            dp,
            tools: None,
            segment_generator: None,
        })
    }

    /// Offer `toolbox`'s tools during rollouts, as the config's `tools:` section says (nothing
    /// changes when `tools.max_turns` is 0 or the box is empty).
    pub fn with_tools(mut self, toolbox: Arc<dyn ToolBox>) -> Result<Self> {
        self.tools = ToolUse::new(toolbox, &self.cfg.tools, self.model.config().family, &self.tokenizer)?;
        self.prompt_ids.clear();
        Ok(self)
    }

    /// Rollouts come from `generator` instead of sampling the model (tests drive whole steps
    /// with a scripted policy this way). The update still recomputes every log-prob with the
    /// model, so training is unchanged; only `logprob_mismatch` then compares against the
    /// generator's log-probs.
    pub fn with_segment_generator(mut self, generator: Box<dyn SegmentGenerator + Send>) -> Self {
        self.segment_generator = Some(generator);
        self
    }

    /// The tools offered during rollouts, if any.
    pub fn tools(&self) -> Option<&ToolUse> {
        self.tools.as_ref()
    }

    /// Continue from a checkpoint: weights, optimizer moments, step, RNG and data position.
    /// Metrics logged after the checkpoint's step are dropped (they will be produced again).
    pub fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.model.load_trainable(&ckpt.trainable).with_context(|| format!("checkpoint {}", ckpt.dir.display()))?;
        self.optimizer
            .load_state(ckpt.optimizer.clone(), ckpt.state.optimizer_steps)
            .with_context(|| format!("checkpoint {}", ckpt.dir.display()))?;
        self.step = ckpt.state.step;
        self.rng = SamplerRng::from_state(self.rank_rng_state(&ckpt.state, &ckpt.dir)?);
        self.sampler = TaskSampler::at(self.tasks.len(), self.cfg.training.seed, ckpt.state.data);
        self.coverage_checked = true;
        self.dp.verify_same_weights(self.optimizer.params(), &format!("after resuming from {}", ckpt.dir.display()))?;
        // Logs written after the checkpoint belong to steps that will run again: drop them, or a
        // resumed run would hold those steps twice. Each rank owns its rollouts file.
        let truncated = metrics::truncate_jsonl_after(&self.run_dir.join(self.rollouts_file()), self.step)
            .and_then(|()| if self.dp.is_primary() { metrics::truncate_after(&self.run_dir, self.step) } else { Ok(()) });
        self.dp.agree(truncated, "rewriting metrics.jsonl and rollouts.jsonl for the resumed run")
    }

    /// This rank's generation RNG state in a checkpoint; the job must have as many ranks as
    /// the one that wrote it, since each rank continues its own random stream.
    fn rank_rng_state(&self, state: &CheckpointState, dir: &Path) -> Result<[u64; 4]> {
        let written_by = state.rank_rngs.len().max(1);
        ensure!(
            written_by == self.dp.world_size(),
            "checkpoint {} was written by a job of {written_by} rank(s); resume it with WORLD_SIZE={written_by} (this job has {})",
            dir.display(),
            self.dp.world_size()
        );
        Ok(if state.rank_rngs.is_empty() { state.rng } else { state.rank_rngs[self.dp.rank()] })
    }

    /// The file this rank logs its rollouts to (each rank logs the rollouts it generated).
    fn rollouts_file(&self) -> String {
        if self.dp.is_distributed() { format!("rollouts-rank-{}.jsonl", self.dp.rank()) } else { "rollouts.jsonl".to_string() }
    }

    /// This rank's place in the job.
    pub fn rank(&self) -> usize {
        self.dp.rank()
    }

    pub fn step(&self) -> u64 {
        self.step
    }
    pub fn model(&self) -> &CausalLm {
        &self.model
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The optimizer (with sharded state: holding this rank's share of the moments).
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Writes a checkpoint (rank 0; every rank of a data-parallel job must call this, since it
    /// gathers their RNG states and checks that their weights agree). Returns the directory on
    /// rank 0, `None` on the others.
    pub fn save_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let step = self.step;
        self.dp.verify_same_weights(self.optimizer.params(), &format!("at step {step}"))?;
        // Sharded optimizer state is gathered, so the checkpoint does not depend on the sharding.
        let (opt_state, optimizer_steps) = self.dp.full_optimizer_state(&self.optimizer)?;
        let rank_rngs: Vec<[u64; 4]> = if self.dp.is_distributed() {
            let all = self.dp.gather_u64s(&self.rng.state(), "the generation RNG states")?;
            all.into_iter().map(|s| [s[0], s[1], s[2], s[3]]).collect()
        } else {
            Vec::new()
        };
        let written = if self.dp.is_primary() {
            let trainable: HashMap<String, Tensor> = self.optimizer.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
            let state = CheckpointState {
                version: FORMAT_VERSION,
                step: self.step,
                optimizer_steps,
                rng: rank_rngs.first().copied().unwrap_or(self.rng.state()),
                data: self.sampler.position(),
                rank_rngs,
            };
            self.cfg
                .to_yaml()
                .and_then(|yaml| checkpoint::save(&self.run_dir, &state, &yaml, &trainable, &opt_state, self.cfg.checkpoint.keep))
                .map(Some)
        } else {
            Ok(None)
        };
        self.dp.agree(written, &format!("writing the checkpoint of step {step}"))
    }

    fn prompt_tokens(&mut self, task: usize) -> Result<Vec<u32>> {
        if let Some(ids) = self.prompt_ids.get(&task) {
            return Ok(ids.clone());
        }
        let t = &self.tasks[task];
        let messages = match &self.tools {
            Some(tools) => tools.offer(&t.messages),
            None => t.messages.clone(),
        };
        let text = self
            .tokenizer
            .apply_chat_template(&messages, true, None)
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

    fn sampling_config(&self) -> SamplingConfig {
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

    /// One GRPO step. Reward failures score 0 and are reported in the outcome, never an error.
    pub fn train_step(&mut self) -> Result<StepOutcome> {
        let step_start = Instant::now();
        let b = self.cfg.training.prompts_per_step;
        let g = self.cfg.training.rollouts_per_prompt;
        // Every rank draws the same prompts and keeps its share (all of them in one process).
        let all_tasks = self.sampler.next_batch(b);
        let local = self.dp.local_prompts(b);
        let task_idx: Vec<usize> = all_tasks[local.clone()].to_vec();
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
        let reward_on = self.cfg.tools.reward_on;
        let gen_result: Result<()> = (|| {
            for (chunk_no, chunk) in prompts.chunks(per_call).enumerate() {
                let t = Instant::now();
                let mut out = match &mut self.segment_generator {
                    Some(generator) => episode::run_episodes(generator.as_mut(), &self.tokenizer, chunk, g, self.tools.as_ref())?,
                    None => {
                        let mut policy = ModelPolicy {
                            model: &self.model,
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

        // Advantages per group.
        let totals: Vec<f64> = scores.iter().map(|s| s.total).collect();
        let advantages = grpo::group_advantages(&totals, g, self.cfg.grpo.scale_rewards)?;
        let zero_var = grpo::zero_variance_groups(&totals, g);
        let samples: Vec<Sample> = rollouts
            .iter()
            .zip(&advantages)
            .enumerate()
            .filter(|(i, _)| !(self.cfg.grpo.drop_zero_variance_groups && zero_var[i / g]))
            .map(|(_, (r, &a))| Sample {
                prompt: r.prompt_ids.clone(),
                completion: r.completion_ids.clone(),
                sample_logp: r.logprobs.clone(),
                policy_mask: r.policy_mask.clone(),
                advantage: a,
            })
            .collect();

        let lr = self.schedule.lr(self.step);
        let update_start = Instant::now();
        // A data-parallel rank whose groups were all dropped still takes part in the update's
        // collectives; `update` finds out whether any rank has samples.
        let update =
            if samples.is_empty() && !self.dp.is_distributed() { UpdateStats::default() } else { self.update(&samples, lr, UpdateMode::Step)? };
        let update_time = update_start.elapsed();
        self.step += 1;

        self.log_rollouts(&task_idx, &rollouts, &scores, &advantages)?;
        let mut reward_errors = Vec::new();
        for (r, s) in rollouts.iter().zip(&scores) {
            if let Some(e) = &s.error {
                reward_errors.push(format!("task {}: {e}", self.tasks[task_idx[r.prompt_index]].id));
            }
        }
        // Metrics cover every rank's rollouts: one row per rollout, gathered in rank order.
        let names = self.env.component_names();
        let rows = RolloutRow::table(&rollouts, &scores, &names);
        let rows = self.dp.gather_rows(&rows, RolloutRow::cols(&names), local.start * g, b * g, "the rollouts' metrics")?;
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
        let metrics = StepMetrics {
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
        };
        Ok(StepOutcome { metrics, reward_errors })
    }

    fn log_rollouts(&self, task_idx: &[usize], rollouts: &[Episode], scores: &[ScoreResult], adv: &[f64]) -> Result<()> {
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

    /// The gradient of the GRPO loss of one pass over `samples` (this rank's share of the batch),
    /// summed over the ranks and before clipping: what the first optimizer step of an update
    /// would use. Changes no weights. For checking data parallelism (tests) and debugging.
    pub fn policy_gradient(&mut self, samples: &[Sample]) -> Result<Vec<(String, Option<Tensor>)>> {
        let out = self.update(samples, 0.0, UpdateMode::GradientOnly)?;
        let names = self.optimizer.params().iter().map(|(n, _)| n.clone());
        Ok(match out.gradient {
            Some(acc) => names.zip(acc.grads).collect(),
            None => names.map(|n| (n, None)).collect(),
        })
    }

    /// `passes_per_batch` optimizer steps over `samples`, each accumulating gradients over
    /// micro-batches.
    fn update(&mut self, samples: &[Sample], lr: f64, mode: UpdateMode) -> Result<UpdateStats> {
        let mb = self.cfg.training.micro_batch_size;
        let params = LossParams {
            epsilon_low: self.cfg.grpo.epsilon_low,
            epsilon_high: self.cfg.grpo.epsilon_high,
            beta: self.cfg.grpo.beta,
            aggregation: self.cfg.grpo.loss_aggregation,
        };
        // Token counts for the normaliser are policy tokens: inserted tool turns do not count.
        let lengths: Vec<usize> = samples.iter().map(|s| s.policy_mask.iter().filter(|m| **m).count()).collect();
        // Global over the ranks, so each rank's loss is its part of the whole batch's loss.
        let Some(norm) = self.dp.loss_normalizer(params.aggregation, &lengths)? else {
            return Ok(UpdateStats::default());
        };
        let temperature = self.sampling_config().logprob_temperature();
        let batches: Vec<MicroBatch> =
            samples.chunks(mb).map(|c| MicroBatch::build(c, self.tokenizer.pad_token_id(), self.model.device())).collect::<Result<_>>()?;
        // ZeRO-2 reduces gradients at every backward segment, so every rank runs as many
        // micro-batches as the busiest one; the extra ones have no samples (empty segments).
        let micro_batches = self.dp.micro_batches_everywhere(batches.len())?;
        let segments = self.model.backward_segments(self.cfg.training.memory);
        let mut old_logp: Vec<Tensor> = Vec::with_capacity(batches.len());
        // The KL reference's log-probs, before any weight moves (every micro-batch at once, so a
        // reference streamed from host memory crosses to the device once per step).
        let ref_logp: Vec<Option<Tensor>> = if params.beta > 0.0 {
            self.reference_logprobs(&batches, temperature)?.into_iter().map(Some).collect()
        } else {
            vec![None; batches.len()]
        };
        let mut out = UpdateStats::default();
        let passes = if mode == UpdateMode::GradientOnly { 1 } else { self.cfg.training.passes_per_batch };
        let (mut entropy_sum, mut mismatch_sum, mut tokens0) = (0.0, 0.0, 0.0);
        for pass in 0..passes {
            let mut acc = self.dp.step_gradients(self.optimizer.params().len());
            let mut pass_loss = 0.0;
            for _ in batches.len()..micro_batches {
                for _ in 0..segments {
                    self.dp.end_segment(&mut acc, self.optimizer.params())?;
                }
            }
            for (i, batch) in batches.iter().enumerate() {
                if self.cfg.training.memory.enabled() {
                    let bounded =
                        self.bounded_micro_batch(i, batch, pass, &params, &norm, temperature, &mut old_logp, ref_logp[i].as_ref(), &mut acc)?;
                    ensure!(bounded.loss.is_finite(), "step {}: the loss is {}", self.step + 1, bounded.loss);
                    pass_loss += bounded.loss;
                    out.stats.add(&bounded.stats);
                    if pass == 0 {
                        entropy_sum += bounded.entropy_sum;
                        mismatch_sum += bounded.mismatch_sum;
                        tokens0 += bounded.stats.tokens;
                    }
                    continue;
                }
                let logits = self.completion_logits(&self.model, batch, AdapterMode::Enabled)?;
                let (logp, entropy) = grpo::token_logprobs(&logits, &batch.targets, temperature)?;
                drop(logits);
                if pass == 0 {
                    old_logp.push(logp.detach());
                    let mask = &batch.mask;
                    entropy_sum += to_f64(&(entropy * mask)?.sum_all()?)?;
                    mismatch_sum += to_f64(&((logp.detach() - &batch.sample_logp)?.abs()? * mask)?.sum_all()?)?;
                    tokens0 += to_f64(&mask.sum_all()?)?;
                }
                let inputs = LossInputs {
                    logp: &logp,
                    old_logp: &old_logp[i],
                    ref_logp: ref_logp[i].as_ref(),
                    mask: &batch.mask,
                    advantages: &batch.advantages,
                };
                let (loss, stats) = grpo::policy_loss(&inputs, &params, &norm)?;
                let loss_value = to_f64(&loss)?;
                ensure!(loss_value.is_finite(), "step {}: the loss is {loss_value}", self.step + 1);
                pass_loss += loss_value;
                out.stats.add(&stats);
                let grads = loss.backward()?;
                acc.add(&grads, self.optimizer.params())?;
                drop(grads);
                self.dp.end_segment(&mut acc, self.optimizer.params())?;
            }
            // One all-reduce per optimizer step (ZeRO-2: done segment by segment); afterwards
            // every rank holds the global gradient (ZeRO-2: of the parameters it owns).
            self.dp.finish_gradients(&mut acc, self.optimizer.params())?;
            if !self.coverage_checked {
                let missing = acc.missing(self.optimizer.params());
                if !missing.is_empty() {
                    bail!(
                        "{} trainable parameter(s) received no gradient (a graph cut in the model), e.g. {}",
                        missing.len(),
                        missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    );
                }
                self.coverage_checked = true;
            }
            if mode == UpdateMode::GradientOnly {
                out.gradient = Some(self.dp.gather_gradients(acc, self.optimizer.params())?);
                return Ok(out);
            }
            out.grad_norm += self.dp.clip_gradients(&mut acc, self.cfg.optimizer.max_grad_norm)? / passes as f64;
            self.optimizer.step(acc.accumulated(), lr)?;
            self.dp.share_updated_parameters(self.optimizer.params())?;
            out.loss += pass_loss / passes as f64;
        }
        // Sums over this rank's samples → sums over the job's (the loss is already a share of
        // the global loss, thanks to the global normaliser).
        let mut sums = [
            out.loss,
            out.stats.tokens,
            out.stats.kl_sum,
            out.stats.clipped_low,
            out.stats.clipped_high,
            out.stats.ratio_sum,
            entropy_sum,
            mismatch_sum,
            tokens0,
        ];
        self.dp.sum_f64(&mut sums, "the update's statistics")?;
        [
            out.loss,
            out.stats.tokens,
            out.stats.kl_sum,
            out.stats.clipped_low,
            out.stats.clipped_high,
            out.stats.ratio_sum,
            entropy_sum,
            mismatch_sum,
            tokens0,
        ] = sums;
        // Statistics were summed over every pass; report per-pass averages.
        out.stats.tokens /= passes as f64;
        out.stats.kl_sum /= passes as f64;
        out.stats.clipped_low /= passes as f64;
        out.stats.clipped_high /= passes as f64;
        out.entropy = entropy_sum / tokens0.max(1.0);
        out.mismatch = mismatch_sum / tokens0.max(1.0);
        Ok(out)
    }

    /// One micro-batch of the update with bounded memory (`training.memory`): the model
    /// back-propagates chunk by chunk (and layer by layer with activation checkpointing), and
    /// the loss of each chunk of completion positions is built here. Same gradients and
    /// statistics as the plain path; on the first pass it records the old log-probs for the
    /// later passes.
    #[allow(clippy::too_many_arguments)]
    fn bounded_micro_batch(
        &mut self,
        i: usize,
        batch: &MicroBatch,
        pass: usize,
        params: &LossParams,
        norm: &LossNormalizer,
        temperature: f64,
        old_logp: &mut Vec<Tensor>,
        reference: Option<&Tensor>,
        acc: &mut StepGradients,
    ) -> Result<BoundedStats> {
        let first_pass = pass == 0;
        let recorded_old = if first_pass { None } else { Some(old_logp[i].clone()) };
        let mut new_old: Vec<Tensor> = Vec::new();
        let mut out = BoundedStats::default();
        let window = (batch.prompt_width - 1, batch.completion_width);
        let params_list = self.optimizer.params();
        self.model.backward_bounded(
            &batch.input_ids,
            &batch.attention_mask,
            AdapterMode::Enabled,
            window,
            self.cfg.training.memory,
            |logits, range| {
                let targets = batch.targets.narrow(1, range.start, range.len())?;
                let mask = batch.mask.narrow(1, range.start, range.len())?;
                let (logp, entropy) = grpo::token_logprobs(&logits.to_dtype(DType::F32)?, &targets, temperature)?;
                let old = match &recorded_old {
                    Some(o) => o.narrow(1, range.start, range.len())?,
                    None => logp.detach(),
                };
                let ref_c = reference.as_ref().map(|r| r.narrow(1, range.start, range.len())).transpose()?;
                if first_pass {
                    new_old.push(logp.detach());
                    out.entropy_sum += to_f64(&(entropy * &mask)?.sum_all()?)?;
                    let sampled = batch.sample_logp.narrow(1, range.start, range.len())?;
                    out.mismatch_sum += to_f64(&((logp.detach() - sampled)?.abs()? * &mask)?.sum_all()?)?;
                }
                let inputs = LossInputs { logp: &logp, old_logp: &old, ref_logp: ref_c.as_ref(), mask: &mask, advantages: &batch.advantages };
                let (loss, stats) = grpo::policy_loss(&inputs, params, norm)?;
                out.loss += to_f64(&loss)?;
                out.stats.add(&stats);
                Ok(loss)
            },
            |grads, segment_end| {
                acc.add(grads, params_list)?;
                if segment_end { self.dp.end_segment(acc, params_list) } else { Ok(()) }
            },
        )?;
        if first_pass {
            old_logp.push(Tensor::cat(&new_old, 1)?);
        }
        Ok(out)
    }

    /// Log-probs (f32, no graph) of each micro-batch's completion tokens under the KL
    /// reference: the frozen copy of the starting weights (full fine-tuning) or the model
    /// without its adapters (LoRA). A reference in host memory
    /// (`training.memory.reference_on_host`) is streamed to the model's device a layer at a
    /// time, each layer once for all micro-batches. The vocabulary projection goes
    /// `training.memory.logits_chunk` positions at a time (all at once when 0).
    fn reference_logprobs(&self, batches: &[MicroBatch], temperature: f64) -> Result<Vec<Tensor>> {
        let reference = self.reference.as_ref().unwrap_or(&self.model);
        let device = self.model.device();
        let streamed = self.reference.is_some() && self.cfg.training.memory.reference_on_host;
        let head = if streamed { Some(reference.head_on(device)?) } else { None };
        let logprobs = |batch: &MicroBatch, hidden: Tensor| -> Result<Tensor> {
            let width = batch.completion_width;
            let h = hidden.narrow(1, batch.prompt_width - 1, width)?;
            let chunk = match self.cfg.training.memory.logits_chunk {
                0 => width,
                c => c.min(width),
            };
            let mut parts = Vec::new();
            let mut from = 0;
            while from < width {
                let c = chunk.min(width - from);
                let hc = h.narrow(1, from, c)?;
                let logits = match &head {
                    Some(w) => streamed_logits(&hc, w)?,
                    None => reference.logits(&hc, AdapterMode::Disabled)?,
                };
                parts.push(grpo::token_logprobs(&logits.to_dtype(DType::F32)?, &batch.targets.narrow(1, from, c)?, temperature)?.0.detach());
                from += c;
            }
            Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::cat(&parts, 1)? })
        };
        if streamed {
            // Each layer crosses to the device once and meets every micro-batch.
            let inputs: Vec<(&Tensor, &Tensor)> = batches.iter().map(|b| (&b.input_ids, &b.attention_mask)).collect();
            let hidden = reference.hidden_streamed_batches(&inputs, device)?;
            batches.iter().zip(hidden).map(|(b, h)| logprobs(b, h)).collect()
        } else {
            // A resident reference goes batch by batch: one micro-batch's hidden states at a time.
            batches.iter().map(|b| logprobs(b, reference.forward_hidden(&b.input_ids, &b.attention_mask, None, AdapterMode::Disabled)?)).collect()
        }
    }

    /// Logits (f32) at the positions that predict the completion tokens: `[n, C, vocab]`.
    fn completion_logits(&self, model: &CausalLm, batch: &MicroBatch, adapters: AdapterMode) -> Result<Tensor> {
        let hidden = model.forward_hidden(&batch.input_ids, &batch.attention_mask, None, adapters)?;
        let h = hidden.narrow(1, batch.prompt_width - 1, batch.completion_width)?;
        Ok(model.logits(&h, adapters)?.to_dtype(DType::F32)?)
    }

    /// Runs until `training.steps`, saving checkpoints, metrics, the plot and the exports.
    /// `stop_after`: return after that many steps of this call (tests of resume).
    pub fn run(&mut self, show_progress: bool, stop_after: Option<u64>) -> Result<RunSummary> {
        let total = self.cfg.training.steps;
        let bar = if show_progress { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} (eta {eta}) {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_position(self.step);
        bar.set_message("generating…");
        let mut done_here = 0;
        let mut last: Option<StepMetrics> = None;
        while self.step < total {
            if stop_after.is_some_and(|n| done_here >= n) {
                bar.abandon();
                return Ok(RunSummary { steps: self.step, last, finished: false });
            }
            let outcome = self.train_step()?;
            done_here += 1;
            let m = &outcome.metrics;
            let logged = if self.dp.is_primary() { metrics::append(&self.run_dir, m) } else { Ok(()) };
            self.dp.agree(logged, "appending to metrics.jsonl")?;
            let label = self.dp.label();
            for e in outcome.reward_errors.iter().take(3) {
                bar.suspend(|| eprintln!("warning: {label}step {}: reward failed, scored 0: {e}", m.step));
            }
            let line = format!(
                "reward {:.3}±{:.3} loss {:+.4} kl {:.4} len {:.0} {:.1}s/step",
                m.reward.mean, m.reward.std, m.loss, m.kl, m.completion_length.mean, m.time_step_s
            );
            if show_progress && bar.is_hidden() {
                eprintln!("step {}/{total}: {line}", m.step);
            }
            bar.set_message(line);
            bar.set_position(self.step);
            let every = self.cfg.checkpoint.every;
            let due = (every > 0 && self.step.is_multiple_of(every)) || self.step == total;
            // Every rank takes part in saving; rank 0 gets the directory it wrote.
            let saved = if due { self.save_checkpoint()? } else { None };
            if let Some(dir) = saved {
                bar.suspend(|| {
                    if show_progress {
                        eprintln!("checkpoint: {}", dir.display())
                    }
                });
            }
            last = Some(outcome.metrics);
        }
        bar.finish();
        self.dp.verify_same_weights(self.optimizer.params(), "at the end of the run")?;
        let finished = if self.dp.is_primary() { self.finish_outputs() } else { Ok(()) };
        self.dp.agree(finished, "writing the plot and the exports")?;
        Ok(RunSummary { steps: self.step, last, finished: true })
    }

    /// Rank 0's files at the end of a run: the plot and the exports.
    fn finish_outputs(&self) -> Result<()> {
        let all = metrics::read_all(&self.run_dir)?;
        if let Err(e) = metrics::plot(&all, &self.run_dir.join(metrics::PLOT_FILE)) {
            eprintln!("warning: could not draw {}: {e:#}", metrics::PLOT_FILE);
        }
        self.export()
    }

    /// Writes the exports the config asks for under `<run>/export/`.
    pub fn export(&self) -> Result<()> {
        let dir = self.run_dir.join("export");
        if self.cfg.export.merged {
            export::merged_hf_dir(&self.model, &self.tokenizer, &dir.join("merged"))?;
        }
        if self.cfg.export.lora_adapter && self.model.lora_config().is_some() {
            export::peft_adapter(&self.model, &dir.join("adapter"))?;
        }
        Ok(())
    }
}

pub struct RunSummary {
    pub steps: u64,
    pub last: Option<StepMetrics>,
    /// False when stopped early by `stop_after`.
    pub finished: bool,
}

/// What [`Trainer::bounded_micro_batch`] sums up for the step's metrics.
#[derive(Default)]
struct BoundedStats {
    loss: f64,
    stats: LossStats,
    entropy_sum: f64,
    mismatch_sum: f64,
}

#[derive(Default)]
struct UpdateStats {
    loss: f64,
    grad_norm: f64,
    entropy: f64,
    mismatch: f64,
    stats: LossStats,
    /// `UpdateMode::GradientOnly`: the global gradient of the first pass.
    gradient: Option<GradAccumulator>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdateMode {
    /// Update the weights (`passes_per_batch` optimizer steps).
    Step,
    /// Stop after the first pass's gradient (no clipping, no step).
    GradientOnly,
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

/// Tensors of one micro-batch: prompts left-padded to `prompt_width`, completions right-padded
/// to `completion_width`. The model reads the prompt and every completion token but the last;
/// hidden position `prompt_width - 1 + j` predicts completion token `j`.
pub(crate) struct MicroBatch {
    pub(crate) input_ids: Tensor,
    pub(crate) attention_mask: Tensor,
    pub(crate) targets: Tensor,
    pub(crate) mask: Tensor,
    sample_logp: Tensor,
    advantages: Tensor,
    pub(crate) prompt_width: usize,
    pub(crate) completion_width: usize,
}

impl MicroBatch {
    pub(crate) fn build(samples: &[Sample], pad: u32, device: &Device) -> Result<Self> {
        let n = samples.len();
        let p = samples.iter().map(|s| s.prompt.len()).max().unwrap_or(0);
        let c = samples.iter().map(|s| s.completion.len()).max().unwrap_or(0).max(1);
        ensure!(p > 0, "a prompt is empty");
        let width = p + c - 1;
        let mut ids = Vec::with_capacity(n * width);
        let mut attn = Vec::with_capacity(n * width);
        let mut targets = Vec::with_capacity(n * c);
        let mut mask = Vec::with_capacity(n * c);
        let mut lp = Vec::with_capacity(n * c);
        for s in samples {
            ensure!(s.sample_logp.len() == s.completion.len(), "rollout has {} log-probs for {} tokens", s.sample_logp.len(), s.completion.len());
            ensure!(s.policy_mask.len() == s.completion.len(), "rollout has {} mask entries for {} tokens", s.policy_mask.len(), s.completion.len());
            let left = p - s.prompt.len();
            let seq: Vec<u32> = std::iter::repeat_n(pad, left).chain(s.prompt.iter().copied()).chain(s.completion.iter().copied()).collect();
            for j in 0..width {
                ids.push(seq.get(j).copied().unwrap_or(pad));
                attn.push(u32::from(j >= left && j < seq.len()));
            }
            for j in 0..c {
                let real = j < s.completion.len();
                // Only sampled tokens are actions: padding and inserted tool turns get mask 0,
                // which keeps them out of the loss, the KL, the entropy and the log-prob check.
                let action = real && s.policy_mask[j];
                targets.push(if real { s.completion[j] } else { pad });
                mask.push(if action { 1f32 } else { 0.0 });
                lp.push(if action { s.sample_logp[j] } else { 0.0 });
            }
        }
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (n, width), device)?,
            attention_mask: Tensor::from_vec(attn, (n, width), device)?,
            targets: Tensor::from_vec(targets, (n, c), device)?,
            mask: Tensor::from_vec(mask, (n, c), device)?,
            sample_logp: Tensor::from_vec(lp, (n, c), device)?,
            advantages: Tensor::from_vec(samples.iter().map(|s| s.advantage as f32).collect::<Vec<_>>(), n, device)?,
            prompt_width: p,
            completion_width: c,
        })
    }
}

pub(crate) fn to_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Var};
    use sigmaforge_model::episode::ToolsSection;
    use sigmaforge_model::episode::run_episodes;
    use sigmaforge_model::model::{Family, ModelConfig};
    use sigmaforge_model::testing::{CHATML_BYTE_VOCAB, FakeToolBox, ScriptedPolicy, chatml_byte_tokenizer};

    /// The tool-result turn is context for the answer, never an action: the micro-batch masks
    /// it, the loss sends no gradient to the logits at its positions, and it does not count in
    /// the token normaliser. With the mask ignored the same positions would get gradients, so
    /// the assertions can tell the difference.
    #[test]
    fn tool_result_tokens_are_masked_out_of_the_loss() {
        let tok = chatml_byte_tokenizer().unwrap();
        let mc = ModelConfig { vocab_size: CHATML_BYTE_VOCAB, max_position_embeddings: 1024, ..ModelConfig::tiny_qwen3() };
        let model = CausalLm::random(&mc, None, 3, DType::F32, &Device::Cpu).unwrap();
        let tools = ToolUse::new(Arc::new(FakeToolBox::default()), &ToolsSection::default(), Family::Qwen3, &tok).unwrap().unwrap();
        let prompt = tok.encode("<|im_start|>user\nWrite a rule.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
        let mut policy = ScriptedPolicy::new(tok.clone(), |ctx: &str, _| {
            if ctx.contains("<tool_response>") {
                "EventID: 4688".to_string()
            } else {
                "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"4688\"}}\n</tool_call>".to_string()
            }
        });
        let eps = run_episodes(&mut policy, &tok, &[prompt], 2, Some(&tools)).unwrap();
        assert!(eps.iter().all(|e| e.called_tool() && e.policy_mask.iter().any(|m| !m)));
        let samples: Vec<Sample> = eps
            .iter()
            .zip([1.0, -1.0])
            .map(|(e, advantage)| Sample {
                prompt: e.prompt_ids.clone(),
                completion: e.completion_ids.clone(),
                sample_logp: e.logprobs.clone(),
                policy_mask: e.policy_mask.clone(),
                advantage,
            })
            .collect();
        let batch = MicroBatch::build(&samples, tok.pad_token_id(), &Device::Cpu).unwrap();
        let mask = batch.mask.to_vec2::<f32>().unwrap();
        for (row, e) in mask.iter().zip(&eps) {
            let want: Vec<f32> = e.policy_mask.iter().map(|&m| f32::from(u8::from(m))).collect();
            assert_eq!(&row[..want.len()], want.as_slice());
        }

        let hidden = model.forward_hidden(&batch.input_ids, &batch.attention_mask, None, AdapterMode::Enabled).unwrap();
        let h = hidden.narrow(1, batch.prompt_width - 1, batch.completion_width).unwrap();
        let logits = Var::from_tensor(&model.logits(&h, AdapterMode::Enabled).unwrap().detach()).unwrap();
        let params = LossParams { epsilon_low: 0.2, epsilon_high: 0.2, beta: 0.0, aggregation: crate::grpo::LossAggregation::Token };
        let grad_per_position = |mask: &Tensor| -> (Vec<Vec<f32>>, f64) {
            let (logp, _) = grpo::token_logprobs(logits.as_tensor(), &batch.targets, 1.0).unwrap();
            let tokens: Vec<usize> = mask.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().filter(|v| **v > 0.0).count()).collect();
            let norm = LossNormalizer::for_batch(params.aggregation, &tokens, batch.completion_width);
            let old = logp.detach();
            let inputs = LossInputs { logp: &logp, old_logp: &old, ref_logp: None, mask, advantages: &batch.advantages };
            let (loss, stats) = grpo::policy_loss(&inputs, &params, &norm).unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(&logits).unwrap().abs().unwrap().sum(D::Minus1).unwrap().to_vec2::<f32>().unwrap();
            (g, stats.tokens)
        };
        let (g, tokens) = grad_per_position(&batch.mask);
        let policy_tokens: usize = eps.iter().map(|e| e.generated_tokens()).sum();
        assert_eq!(tokens, policy_tokens as f64);
        for (i, e) in eps.iter().enumerate() {
            for (j, &m) in e.policy_mask.iter().enumerate() {
                if m {
                    assert!(g[i][j] > 0.0, "policy token {j} of row {i} gets no gradient");
                } else {
                    assert_eq!(g[i][j], 0.0, "tool-result token {j} of row {i} gets a gradient");
                }
            }
        }
        // Counter-check: treating every real token as an action puts gradient on the tool turn.
        let real: Vec<f32> =
            eps.iter().flat_map(|e| (0..batch.completion_width).map(move |j| f32::from(u8::from(j < e.completion_ids.len())))).collect();
        let all_real = Tensor::from_vec(real, (eps.len(), batch.completion_width), &Device::Cpu).unwrap();
        let (g_all, _) = grad_per_position(&all_real);
        let tool_pos = eps[0].policy_mask.iter().position(|m| !m).unwrap();
        assert!(g_all[0][tool_pos] > 0.0);
    }
}
