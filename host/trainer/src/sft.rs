//! Supervised fine-tuning on reference answers: the warm start before GRPO.
//!
//! A model that never earns a reward gives GRPO no signal (every group has zero variance). SFT
//! teaches the output form first: each example is a task's prompt and the plugin's reference
//! answer, and the loss is the mean negative log-likelihood of the answer tokens only (the
//! prompt is context, never a target). Everything else is the run's: model loading, LoRA or
//! full fine-tuning, AdamW, checkpoints (same format, so `--resume` works the same way),
//! metrics.jsonl, metrics.png and the exports.
//!
//! The answer is rendered by the model's own chat template (the prompt with the generation
//! prompt, then the whole conversation with the assistant turn; the answer tokens are what the
//! second adds to the first), so the end-of-turn token the model must learn to emit is part of
//! the answer, exactly as generation will see it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, CheckpointState, FORMAT_VERSION};
use crate::config::{LongAnswers, RunConfig, SftSection};
use crate::metrics;
use crate::optim::{AdamW, GradAccumulator, LrSchedule};
use crate::sampler::TaskSampler;
use crate::train::{MicroBatch, Sample, to_f64};
use sigmaforge_model::load::{ChatMessage, Tokenizer};
use sigmaforge_model::model::{AdapterMode, CausalLm, token_logprobs};

/// One supervised example: a task's prompt and its reference answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub task_id: String,
    pub messages: Vec<ChatMessage>,
    pub answer: String,
}

/// An example as token ids: the prompt (with the generation prompt) and the answer tokens that
/// follow it, end-of-turn included.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedExample {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

/// Tokenises one example with the model's chat template (see the module docs).
pub fn encode_example(tokenizer: &Tokenizer, example: &SftExample, max_answer_tokens: usize) -> Result<EncodedExample> {
    let id = &example.task_id;
    let prompt_text = tokenizer.apply_chat_template(&example.messages, true, None).with_context(|| format!("task {id}: cannot render the prompt"))?;
    let mut conversation = example.messages.clone();
    conversation.push(ChatMessage::new("assistant", example.answer.clone()));
    let full_text = tokenizer
        .apply_chat_template(&conversation, false, None)
        .with_context(|| format!("task {id}: cannot render the prompt with its reference answer"))?;
    let prompt = tokenizer.encode(&prompt_text, false).with_context(|| format!("task {id}: cannot tokenize the prompt"))?;
    let eos = tokenizer.eos_token_ids();
    let mut answer = match full_text.strip_prefix(&prompt_text) {
        Some(rest) => tokenizer.encode(rest, false)?,
        // A template that rewrites earlier turns once an answer follows (some strip reasoning):
        // the answer text itself, then the end of the turn.
        None => {
            let mut ids = tokenizer.encode(&example.answer, false)?;
            ids.extend(eos.first());
            ids
        }
    };
    // Whatever the template writes after the end-of-turn token is never generated.
    if let Some(end) = answer.iter().position(|t| eos.contains(t)) {
        answer.truncate(end + 1);
    }
    ensure!(!answer.is_empty(), "task {id}: the reference answer is empty");
    answer.truncate(max_answer_tokens);
    Ok(EncodedExample { prompt, answer })
}

/// Everything logged for one SFT step (one line of `metrics.jsonl`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SftMetrics {
    /// 1-based number of the step just completed.
    pub step: u64,
    /// Mean negative log-likelihood per answer token.
    pub loss: f64,
    /// Share of answer tokens that are the model's top-1 prediction (before the update).
    pub token_accuracy: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub examples: usize,
    /// Answer tokens (the loss's denominator).
    pub tokens: usize,
    /// Prompt + answer tokens through forward and backward, per second.
    pub tokens_per_s: f64,
    pub time_step_s: f64,
}

pub struct SftSummary {
    pub steps: u64,
    pub first: Option<SftMetrics>,
    pub last: Option<SftMetrics>,
    /// False when stopped early by `stop_after`.
    pub finished: bool,
}

pub struct SftTrainer {
    cfg: RunConfig,
    sft: SftSection,
    model: CausalLm,
    tokenizer: Tokenizer,
    examples: Vec<EncodedExample>,
    task_ids: Vec<String>,
    /// Reference answers left out for being longer than `sft.max_answer_tokens`.
    skipped_long: usize,
    optimizer: AdamW,
    schedule: LrSchedule,
    sampler: TaskSampler,
    step: u64,
    run_dir: PathBuf,
    coverage_checked: bool,
}

impl SftTrainer {
    /// `model` must have been built with the config's LoRA setting (or none for full FT). The
    /// config needs an `sft:` section. Every example is tokenised here, so a prompt that is too
    /// long fails now, naming its task.
    pub fn new(cfg: RunConfig, model: CausalLm, tokenizer: Tokenizer, examples: &[SftExample], run_dir: &Path) -> Result<Self> {
        cfg.validate()?;
        let sft = cfg.sft.clone().context("the run config has no `sft:` section (steps, lr, batch_size)")?;
        ensure!(sft.steps > 0, "sft.steps is 0: nothing to train");
        ensure!(!examples.is_empty(), "no examples to train on: the task plugin returned no reference answers");
        ensure!(
            model.lora_config() == cfg.lora(),
            "the model was built with LoRA {:?} but the config asks for {:?}",
            model.lora_config(),
            cfg.lora()
        );
        let max_prompt = cfg.generation.max_prompt_tokens;
        let (mut encoded, mut task_ids, mut skipped_long) = (Vec::new(), Vec::new(), 0);
        for ex in examples {
            let mut e = encode_example(&tokenizer, ex, usize::MAX)?;
            ensure!(
                e.prompt.len() <= max_prompt,
                "task {}: prompt has {} tokens, more than generation.max_prompt_tokens = {max_prompt}",
                ex.task_id,
                e.prompt.len()
            );
            if e.answer.len() > sft.max_answer_tokens {
                match sft.long_answers {
                    LongAnswers::Skip => {
                        skipped_long += 1;
                        continue;
                    }
                    LongAnswers::Truncate => e.answer.truncate(sft.max_answer_tokens),
                }
            }
            encoded.push(e);
            task_ids.push(ex.task_id.clone());
        }
        ensure!(
            !encoded.is_empty(),
            "all {} reference answers are longer than sft.max_answer_tokens = {} tokens and sft.long_answers is skip: raise the limit, or set long_answers: truncate",
            examples.len(),
            sft.max_answer_tokens
        );
        let params = model.trainable_vars();
        ensure!(!params.is_empty(), "the model has no trainable parameters");
        let optimizer = AdamW::new(params, cfg.optimizer.adamw)?;
        let schedule = LrSchedule {
            kind: sft.schedule,
            peak_lr: sft.lr,
            warmup_steps: sft.warmup_steps,
            total_steps: sft.steps,
            min_lr_ratio: sft.min_lr_ratio,
        };
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
        Ok(Self {
            sampler: TaskSampler::new(encoded.len(), cfg.training.seed),
            task_ids,
            examples: encoded,
            skipped_long,
            cfg,
            sft,
            model,
            tokenizer,
            optimizer,
            schedule,
            step: 0,
            run_dir: run_dir.to_path_buf(),
            coverage_checked: false,
        })
    }

    /// Continue from a checkpoint of an SFT run: weights, optimizer moments, step and data
    /// position. Metrics logged after the checkpoint's step are dropped (they will be logged
    /// again).
    pub fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.model.load_trainable(&ckpt.trainable).with_context(|| format!("checkpoint {}", ckpt.dir.display()))?;
        self.optimizer
            .load_state(ckpt.optimizer.clone(), ckpt.state.optimizer_steps)
            .with_context(|| format!("checkpoint {}", ckpt.dir.display()))?;
        self.step = ckpt.state.step;
        self.sampler = TaskSampler::at(self.examples.len(), self.cfg.training.seed, ckpt.state.data);
        self.coverage_checked = true;
        metrics::truncate_after(&self.run_dir, self.step)
    }

    pub fn step(&self) -> u64 {
        self.step
    }
    pub fn total_steps(&self) -> u64 {
        self.sft.steps
    }
    pub fn model(&self) -> &CausalLm {
        &self.model
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The examples trained on (reference answers that fit `sft.max_answer_tokens`).
    pub fn examples(&self) -> usize {
        self.examples.len()
    }
    /// Reference answers left out for being longer than `sft.max_answer_tokens`.
    pub fn skipped_long(&self) -> usize {
        self.skipped_long
    }
    /// A line for the log when answers were left out, naming the key that decides it.
    pub fn skipped_note(&self) -> Option<String> {
        (self.skipped_long > 0).then(|| {
            format!(
                "{} of {} reference answers are longer than sft.max_answer_tokens = {} and are left out (sft.long_answers: truncate keeps their start)",
                self.skipped_long,
                self.skipped_long + self.examples.len(),
                self.sft.max_answer_tokens
            )
        })
    }
    /// The trained model, for the stage that follows (GRPO in `sigmaforge run`).
    pub fn into_model(self) -> (CausalLm, Tokenizer) {
        (self.model, self.tokenizer)
    }

    /// Loss and token accuracy of the answer tokens of `examples` (by index) under the current
    /// weights, without a gradient: for tests and reports.
    pub fn evaluate(&self, indices: &[usize]) -> Result<(f64, f64)> {
        let (mut nll, mut correct, mut tokens) = (0.0, 0.0, 0.0);
        for chunk in indices.chunks(self.sft.micro_batch_size) {
            let batch = self.micro_batch(chunk)?;
            let (loss, hits) = answer_loss(&self.answer_logits(&batch)?, &batch.targets, &batch.mask, 1.0)?;
            nll += to_f64(&loss)?;
            correct += hits;
            tokens += to_f64(&batch.mask.sum_all()?)?;
        }
        Ok((nll / tokens.max(1.0), correct / tokens.max(1.0)))
    }

    fn micro_batch(&self, indices: &[usize]) -> Result<MicroBatch> {
        let samples: Vec<Sample> = indices
            .iter()
            .map(|&i| {
                let e = &self.examples[i];
                Sample {
                    prompt: e.prompt.clone(),
                    completion: e.answer.clone(),
                    sample_logp: vec![0.0; e.answer.len()],
                    policy_mask: vec![true; e.answer.len()],
                    advantage: 0.0,
                }
            })
            .collect();
        if self.sft.pack {
            MicroBatch::build_packed(&samples, self.tokenizer.pad_token_id(), self.model.device())
        } else {
            MicroBatch::build(&samples, self.tokenizer.pad_token_id(), self.model.device())
        }
    }

    /// The logits `[n, C, vocab]` (f32, with the graph) at the positions that predict the
    /// answer tokens.
    fn answer_logits(&self, batch: &MicroBatch) -> Result<Tensor> {
        let hidden = self.model.forward_hidden(&batch.input_ids, batch.layout(), None, AdapterMode::Enabled)?;
        let h = batch.completion_hidden(&hidden)?;
        Ok(self.model.logits(&h, AdapterMode::Enabled)?.to_dtype(DType::F32)?)
    }

    /// One micro-batch's gradient with the memory savers of `training.memory` (the same ones
    /// GRPO uses): layer-by-layer recompute and the vocabulary projection a chunk of answer
    /// positions at a time, so the `[n, C, vocab]` logits never exist at once. Same gradient
    /// as the plain path. Returns the micro-batch's share of the step loss and its top-1 hits.
    fn bounded_micro_batch(&self, batch: &MicroBatch, denominator: f64, acc: &mut GradAccumulator) -> Result<(f64, f64)> {
        let (mut loss_sum, mut hits) = (0.0, 0.0);
        let params = self.optimizer.params();
        self.model.backward_bounded(
            &batch.input_ids,
            batch.layout(),
            AdapterMode::Enabled,
            batch.loss_positions(),
            self.cfg.training.memory,
            |logits, range| {
                let targets = batch.targets.narrow(1, range.start, range.len())?;
                let mask = batch.mask.narrow(1, range.start, range.len())?;
                let (loss, chunk_hits) = answer_loss(&logits.to_dtype(DType::F32)?, &targets, &mask, denominator)?;
                hits += chunk_hits;
                loss_sum += to_f64(&loss)?;
                Ok(loss)
            },
            |grads, _segment_end| acc.add(grads, params),
        )?;
        Ok((loss_sum, hits))
    }

    /// One optimizer step over `sft.batch_size` examples (gradients accumulated over
    /// micro-batches; the loss is the mean over the step's answer tokens).
    pub fn train_step(&mut self) -> Result<SftMetrics> {
        let start = Instant::now();
        let indices = self.sampler.next_batch(self.sft.batch_size);
        let answer_tokens: usize = indices.iter().map(|&i| self.examples[i].answer.len()).sum();
        let seen_tokens: usize = indices.iter().map(|&i| self.examples[i].answer.len() + self.examples[i].prompt.len()).sum();
        let denominator = answer_tokens.max(1) as f64;
        let mut acc = GradAccumulator::new(self.optimizer.params().len());
        let (mut loss_sum, mut correct) = (0.0, 0.0);
        let memory = self.cfg.training.memory;
        for chunk in indices.chunks(self.sft.micro_batch_size) {
            let batch = self.micro_batch(chunk)?;
            let (value, hits) = if memory.enabled() {
                self.bounded_micro_batch(&batch, denominator, &mut acc)?
            } else {
                let (loss, hits) = answer_loss(&self.answer_logits(&batch)?, &batch.targets, &batch.mask, denominator)?;
                let grads = loss.backward()?;
                acc.add(&grads, self.optimizer.params())?;
                (to_f64(&loss)?, hits)
            };
            ensure!(value.is_finite(), "sft step {}: the loss is {value} (task ids {})", self.step + 1, self.describe(chunk));
            loss_sum += value;
            correct += hits;
        }
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
        let grad_norm = if self.sft.max_grad_norm > 0.0 { acc.clip_global_norm(self.sft.max_grad_norm)? } else { acc.global_norm()? };
        let lr = self.schedule.lr(self.step);
        self.optimizer.step(&acc, lr)?;
        drop(acc);
        // The step's buffers are free now: hand them back so the heap holds one step's worth.
        sigmaforge_model::process::release_free_memory();
        self.step += 1;
        let seconds = start.elapsed().as_secs_f64();
        Ok(SftMetrics {
            step: self.step,
            loss: loss_sum,
            token_accuracy: correct / denominator,
            lr,
            grad_norm,
            examples: indices.len(),
            tokens: answer_tokens,
            tokens_per_s: seen_tokens as f64 / seconds.max(1e-9),
            time_step_s: seconds,
        })
    }

    fn describe(&self, indices: &[usize]) -> String {
        indices.iter().map(|&i| self.task_ids[i].as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Writes a checkpoint of the current step (the same format as GRPO's).
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let trainable: HashMap<String, Tensor> = self.optimizer.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        let (opt_state, optimizer_steps) = self.optimizer.state();
        let state = CheckpointState {
            version: FORMAT_VERSION,
            step: self.step,
            optimizer_steps,
            rng: [0; 4],
            data: self.sampler.position(),
            rank_rngs: Vec::new(),
        };
        checkpoint::save(&self.run_dir, &state, &self.cfg.to_yaml()?, &trainable, &opt_state, self.cfg.checkpoint.keep)
    }

    /// Runs until `sft.steps`, appending metrics and saving checkpoints; draws `metrics.png` at
    /// the end. `stop_after`: return after that many steps of this call (tests of resume).
    pub fn run(&mut self, show_progress: bool, stop_after: Option<u64>) -> Result<SftSummary> {
        let total = self.sft.steps;
        let bar = if show_progress { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} sft step {pos}/{len} [{bar:30}] {elapsed_precise} (eta {eta}) {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_position(self.step);
        let (mut first, mut last) = (None, None);
        let mut done_here = 0;
        while self.step < total {
            if stop_after.is_some_and(|n| done_here >= n) {
                bar.abandon();
                return Ok(SftSummary { steps: self.step, first, last, finished: false });
            }
            let m = self.train_step()?;
            done_here += 1;
            append_metrics(&self.run_dir, &m)?;
            let line = format!("loss {:.4} token acc {:.3} {:.0} tok/s {:.1}s/step", m.loss, m.token_accuracy, m.tokens_per_s, m.time_step_s);
            if show_progress && bar.is_hidden() {
                eprintln!("sft step {}/{total}: {line}", m.step);
            }
            bar.set_message(line);
            bar.set_position(self.step);
            let every = self.cfg.checkpoint.every;
            if (every > 0 && self.step.is_multiple_of(every)) || self.step == total {
                let dir = self.save_checkpoint()?;
                bar.suspend(|| {
                    if show_progress {
                        eprintln!("checkpoint: {}", dir.display())
                    }
                });
            }
            first.get_or_insert_with(|| m.clone());
            last = Some(m);
        }
        bar.finish();
        if let Err(e) = plot(&read_metrics(&self.run_dir)?, &self.run_dir.join(metrics::PLOT_FILE)) {
            eprintln!("warning: could not draw {}: {e:#}", metrics::PLOT_FILE);
        }
        Ok(SftSummary { steps: self.step, first, last, finished: true })
    }

    /// Writes the exports the config asks for: `<run>/export/merged` (Hugging Face directory)
    /// and, for LoRA, `<run>/export/adapter` (PEFT).
    pub fn export(&self) -> Result<()> {
        crate::train::write_exports(&self.cfg.export, &self.model, &self.tokenizer, &self.run_dir)
    }
}

/// The SFT loss of some answer positions, `-Σ mask · log p(target) / denominator` (a scalar with
/// the graph), and how many of them have the target as the top-1 prediction. `logits` are
/// `[n, c, vocab]`, `targets` and `mask` `[n, c]`; the plain update calls it once per
/// micro-batch, the bounded one once per logits chunk.
fn answer_loss(logits: &Tensor, targets: &Tensor, mask: &Tensor, denominator: f64) -> Result<(Tensor, f64)> {
    let hits = to_f64(&(logits.argmax(D::Minus1)?.eq(targets)?.to_dtype(DType::F32)? * mask)?.sum_all()?)?;
    let logp = token_logprobs(logits, targets)?;
    Ok((((logp * mask)?.sum_all()? * (-1.0 / denominator))?, hits))
}

/// The run directory of the SFT stage of `sigmaforge run` (`<run>/sft`).
pub fn stage_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("sft")
}

/// The final checkpoint of a finished SFT run in `run_dir` (one whose step is `steps`), if any.
pub fn finished_checkpoint(run_dir: &Path, steps: u64) -> Result<Option<PathBuf>> {
    Ok(checkpoint::list(run_dir)?.into_iter().find(|(s, _)| *s == steps).map(|(_, d)| d))
}

fn append_metrics(run_dir: &Path, m: &SftMetrics) -> Result<()> {
    use std::io::Write;
    let path = run_dir.join(metrics::METRICS_FILE);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?).with_context(|| format!("cannot append to {}", path.display()))
}

/// The SFT metrics of a run directory.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<SftMetrics>> {
    let path = run_dir.join(metrics::METRICS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}: not an SFT metrics record", path.display(), i + 1)))
        .collect()
}

/// Draws loss, token accuracy, gradient norm and throughput by step.
pub fn plot(all: &[SftMetrics], path: &Path) -> Result<()> {
    let steps: Vec<f64> = all.iter().map(|m| m.step as f64).collect();
    let series = |name: &str, f: fn(&SftMetrics) -> f64| vec![(name.to_string(), all.iter().map(f).collect::<Vec<_>>())];
    let panels = vec![
        ("loss (answer tokens)", series("loss", |m| m.loss)),
        ("token accuracy", series("token_accuracy", |m| m.token_accuracy)),
        ("grad norm", series("grad_norm", |m| m.grad_norm)),
        ("tokens / s", series("tokens_per_s", |m| m.tokens_per_s)),
    ];
    sigmaforge_plot::plot_panels(&steps, &panels, (1, 4), (1600, 400), path)
}
