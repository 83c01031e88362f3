//! The GRPO loop: sample prompts, generate G rollouts each, score them (on another thread,
//! while the next group generates), compute group-relative advantages, and update the policy
//! over `passes_per_batch` passes with gradient accumulation over micro-batches.
//!
//! Data parallelism (several ranks, see `parallel`) hooks in at a few marked places: each rank
//! generates for its share of the prompts, the loss normaliser, gradients and metrics are made
//! global, and only rank 0 writes files.
//!
//! This module holds the [`Trainer`], its construction and the run loop; a step's phases live
//! in submodules: `rollout` (generating and scoring), `update` (the policy update), `record`
//! (rollouts.jsonl and the step's metrics) and `state` (checkpoints: saving and resuming).

mod record;
mod rollout;
mod state;
mod update;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use candle_core::Device;

use crate::config::{ExportSection, RunConfig};
use crate::metrics::{self, StepMetrics};
use crate::optim::{AdamW, LrSchedule};
use crate::parallel::{DataParallel, generation_seed, text_checksum};
use crate::sampler::TaskSampler;
use sigmaforge_model::episode::{SegmentGenerator, ToolBox, ToolUse};
use sigmaforge_model::export;
use sigmaforge_model::load::Tokenizer;
use sigmaforge_model::model::CausalLm;
use sigmaforge_model::rng::SamplerRng;
use sigmaforge_reward::{TaskEnvironment, TaskPrompt};

pub(crate) use update::{MicroBatch, to_f64};

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

    /// This rank's place in the job.
    pub fn rank(&self) -> usize {
        self.dp.rank()
    }

    /// How many tasks the environment gave to train on.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
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

    /// One GRPO step. Reward failures score 0 and are reported in the outcome, never an error.
    pub fn train_step(&mut self) -> Result<StepOutcome> {
        let step_start = Instant::now();
        let b = self.cfg.training.prompts_per_step;
        // Every rank draws the same prompts and keeps its share (all of them in one process).
        let all_tasks = self.sampler.next_batch(b);
        let local = self.dp.local_prompts(b);
        let scored = self.generate_and_score(all_tasks[local.clone()].to_vec())?;
        let (advantages, samples) = self.grpo_samples(&scored)?;

        let lr = self.schedule.lr(self.step);
        let update_start = Instant::now();
        let update = self.step_update(&samples, lr)?;
        // The step's buffers are free now: hand them back so the heap holds one step's worth.
        sigmaforge_model::process::release_free_memory();
        let update_time = update_start.elapsed();
        self.step += 1;

        self.log_rollouts(&scored, &advantages)?;
        let reward_errors = self.reward_errors(&scored);
        let first_row = local.start * self.cfg.training.rollouts_per_prompt;
        let metrics = self.step_metrics(&scored, &update, lr, first_row, update_time, step_start)?;
        Ok(StepOutcome { metrics, reward_errors })
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
        write_exports(&self.cfg.export, &self.model, &self.tokenizer, &self.run_dir)
    }
}

/// The exports `export:` asks for, under `<run>/export/`: `merged` (a Hugging Face directory)
/// and, for a LoRA model, `adapter` (PEFT). Both stages end with it.
pub(crate) fn write_exports(cfg: &ExportSection, model: &CausalLm, tokenizer: &Tokenizer, run_dir: &Path) -> Result<()> {
    let dir = run_dir.join("export");
    if cfg.merged {
        export::merged_hf_dir(model, tokenizer, &dir.join("merged"))?;
    }
    if cfg.lora_adapter && model.lora_config().is_some() {
        export::peft_adapter(model, &dir.join("adapter"))?;
    }
    Ok(())
}

pub struct RunSummary {
    pub steps: u64,
    pub last: Option<StepMetrics>,
    /// False when stopped early by `stop_after`.
    pub finished: bool,
}
