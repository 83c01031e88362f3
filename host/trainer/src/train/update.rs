//! The policy update: micro-batches of samples, the KL reference's log-probs, and
//! `passes_per_batch` optimizer steps of the clipped GRPO loss with gradient accumulation
//! (plain, or with bounded memory under `training.memory`).

use anyhow::{Result, bail, ensure};
use candle_core::{DType, Device, Tensor};

use super::rollout::ScoredRollouts;
use super::{Sample, Trainer};
use crate::grpo::{self, LossInputs, LossNormalizer, LossParams, LossStats};
use crate::optim::GradAccumulator;
use crate::parallel::StepGradients;
use sigmaforge_model::model::{AdapterMode, CausalLm, Layout, LossPositions, PackedRow, streamed_logits};

impl Trainer {
    /// The samples the update trains on, with every rollout's group-relative advantage (for
    /// rollouts.jsonl). Groups whose rewards are all equal carry no signal and are left out under
    /// `grpo.drop_zero_variance_groups`.
    pub(super) fn grpo_samples(&self, scored: &ScoredRollouts) -> Result<(Vec<f64>, Vec<Sample>)> {
        let g = self.cfg.training.rollouts_per_prompt;
        let (rollouts, scores) = (&scored.rollouts, &scored.scores);
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
        Ok((advantages, samples))
    }

    /// The step's update of the policy at learning rate `lr`.
    pub(super) fn step_update(&mut self, samples: &[Sample], lr: f64) -> Result<UpdateStats> {
        // A data-parallel rank whose groups were all dropped still takes part in the update's
        // collectives; `update` finds out whether any rank has samples.
        if samples.is_empty() && !self.dp.is_distributed() { Ok(UpdateStats::default()) } else { self.update(samples, lr, UpdateMode::Step) }
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
        let batches = MicroBatch::split(samples, mb, self.cfg.training.pack, self.tokenizer.pad_token_id(), self.model.device())?;
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
        let params_list = self.optimizer.params();
        self.model.backward_bounded(
            &batch.input_ids,
            batch.layout(),
            AdapterMode::Enabled,
            batch.loss_positions(),
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
            let h = batch.completion_hidden(&hidden)?;
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
            let inputs: Vec<(&Tensor, Layout)> = batches.iter().map(|b| (&b.input_ids, b.layout())).collect();
            let hidden = reference.hidden_streamed_batches(&inputs, device)?;
            batches.iter().zip(hidden).map(|(b, h)| logprobs(b, h)).collect()
        } else {
            // A resident reference goes batch by batch: one micro-batch's hidden states at a time.
            batches.iter().map(|b| logprobs(b, reference.forward_hidden(&b.input_ids, b.layout(), None, AdapterMode::Disabled)?)).collect()
        }
    }

    /// Logits (f32) at the positions that predict the completion tokens: `[n, C, vocab]`.
    fn completion_logits(&self, model: &CausalLm, batch: &MicroBatch, adapters: AdapterMode) -> Result<Tensor> {
        let hidden = model.forward_hidden(&batch.input_ids, batch.layout(), None, adapters)?;
        Ok(model.logits(&batch.completion_hidden(&hidden)?, adapters)?.to_dtype(DType::F32)?)
    }
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
pub(super) struct UpdateStats {
    pub(super) loss: f64,
    pub(super) grad_norm: f64,
    pub(super) entropy: f64,
    pub(super) mismatch: f64,
    pub(super) stats: LossStats,
    /// `UpdateMode::GradientOnly`: the global gradient of the first pass.
    pub(super) gradient: Option<GradAccumulator>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdateMode {
    /// Update the weights (`passes_per_batch` optimizer steps).
    Step,
    /// Stop after the first pass's gradient (no clipping, no step).
    GradientOnly,
}

/// Tensors of one micro-batch: the model's input (padded rows or one packed row, see
/// [`Rows`]) and, per sample, its completion tokens right-padded to `completion_width` with
/// their loss mask, sampling log-probs and advantage (`[n, C]` / `[n]`).
pub(crate) struct MicroBatch {
    pub(crate) input_ids: Tensor,
    rows: Rows,
    pub(crate) targets: Tensor,
    pub(crate) mask: Tensor,
    sample_logp: Tensor,
    advantages: Tensor,
    pub(crate) completion_width: usize,
}

/// How a micro-batch's samples are laid out for the model.
enum Rows {
    /// One row per sample: the prompt left-padded to `prompt_width`, then the completion; the
    /// model reads every completion token but the last, and hidden position
    /// `prompt_width - 1 + j` predicts completion token `j`.
    Padded { attention_mask: Tensor, prompt_width: usize },
    /// One packed row (`sigmaforge_model::model::PackedRow`): each distinct prompt once, then
    /// the completions that share it; `index` `[n, C]` holds the row position that predicts
    /// each completion token.
    Packed { row: PackedRow, index: Tensor },
}

impl MicroBatch {
    /// Padded rows.
    pub(crate) fn build(samples: &[Sample], pad: u32, device: &Device) -> Result<Self> {
        let n = samples.len();
        let p = samples.iter().map(|s| s.prompt.len()).max().unwrap_or(0);
        let c = completion_width(samples);
        ensure!(p > 0, "a prompt is empty");
        let width = p + c - 1;
        let mut ids = Vec::with_capacity(n * width);
        let mut attn = Vec::with_capacity(n * width);
        for s in samples {
            let left = p - s.prompt.len();
            let seq: Vec<u32> = std::iter::repeat_n(pad, left).chain(s.prompt.iter().copied()).chain(s.completion.iter().copied()).collect();
            for j in 0..width {
                ids.push(seq.get(j).copied().unwrap_or(pad));
                attn.push(u32::from(j >= left && j < seq.len()));
            }
        }
        let rows = Rows::Padded { attention_mask: Tensor::from_vec(attn, (n, width), device)?, prompt_width: p };
        Self::with_targets(samples, Tensor::from_vec(ids, (n, width), device)?, rows, pad, device)
    }

    /// One packed row: consecutive samples with the same prompt share one copy of it (a GRPO
    /// group), other prompts follow as groups of their own; no padding. The model reads every
    /// completion token but the last. Same losses and gradients as [`Self::build`].
    pub(crate) fn build_packed(samples: &[Sample], pad: u32, device: &Device) -> Result<Self> {
        let mut groups: Vec<(&[u32], Vec<&[u32]>)> = Vec::new();
        for s in samples {
            ensure!(!s.prompt.is_empty(), "a prompt is empty");
            ensure!(!s.completion.is_empty(), "a completion is empty");
            // The last completion token is only a target: no position reads it.
            let read = &s.completion[..s.completion.len() - 1];
            match groups.last_mut() {
                Some((prompt, reads)) if *prompt == s.prompt.as_slice() => reads.push(read),
                _ => groups.push((&s.prompt, vec![read])),
            }
        }
        let (ids, row) = PackedRow::pack(&groups)?;
        let c = completion_width(samples);
        let index = Tensor::from_vec(row.prediction_index(c), (samples.len(), c), device)?;
        let t = ids.len();
        Self::with_targets(samples, Tensor::from_vec(ids, (1, t), device)?, Rows::Packed { row, index }, pad, device)
    }

    fn with_targets(samples: &[Sample], input_ids: Tensor, rows: Rows, pad: u32, device: &Device) -> Result<Self> {
        let n = samples.len();
        let c = completion_width(samples);
        let mut targets = Vec::with_capacity(n * c);
        let mut mask = Vec::with_capacity(n * c);
        let mut lp = Vec::with_capacity(n * c);
        for s in samples {
            ensure!(s.sample_logp.len() == s.completion.len(), "rollout has {} log-probs for {} tokens", s.sample_logp.len(), s.completion.len());
            ensure!(s.policy_mask.len() == s.completion.len(), "rollout has {} mask entries for {} tokens", s.policy_mask.len(), s.completion.len());
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
            input_ids,
            rows,
            targets: Tensor::from_vec(targets, (n, c), device)?,
            mask: Tensor::from_vec(mask, (n, c), device)?,
            sample_logp: Tensor::from_vec(lp, (n, c), device)?,
            advantages: Tensor::from_vec(samples.iter().map(|s| s.advantage as f32).collect::<Vec<_>>(), n, device)?,
            completion_width: c,
        })
    }

    /// The micro-batches of `samples`, at most `size` samples each: packed rows when `pack`.
    pub(crate) fn split(samples: &[Sample], size: usize, pack: bool, pad: u32, device: &Device) -> Result<Vec<Self>> {
        samples.chunks(size).map(|c| if pack { Self::build_packed(c, pad, device) } else { Self::build(c, pad, device) }).collect()
    }

    /// How the model reads `input_ids`.
    pub(crate) fn layout(&self) -> Layout<'_> {
        match &self.rows {
            Rows::Padded { attention_mask, .. } => Layout::Padded(attention_mask),
            Rows::Packed { row, .. } => Layout::Packed(row),
        }
    }

    /// The hidden positions that predict the completion tokens, as an `[n, C]` grid.
    pub(crate) fn loss_positions(&self) -> LossPositions<'_> {
        match &self.rows {
            Rows::Padded { prompt_width, .. } => LossPositions::Window { start: prompt_width - 1, len: self.completion_width },
            Rows::Packed { index, .. } => LossPositions::Gather(index),
        }
    }

    /// Hidden states `[n, C, H]` of the positions that predict the completion tokens.
    pub(crate) fn completion_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        self.loss_positions().select(hidden, 0, self.completion_width)
    }
}

/// The longest completion (at least 1).
fn completion_width(samples: &[Sample]) -> usize {
    samples.iter().map(|s| s.completion.len()).max().unwrap_or(0).max(1)
}

pub(crate) fn to_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Var};
    use sigmaforge_model::episode::ToolUse;
    use sigmaforge_model::episode::ToolsSection;
    use sigmaforge_model::episode::run_episodes;
    use sigmaforge_model::model::{Family, ModelConfig};
    use sigmaforge_model::testing::{CHATML_BYTE_VOCAB, FakeToolBox, ScriptedPolicy, chatml_byte_tokenizer};
    use std::sync::Arc;

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

        let hidden = model.forward_hidden(&batch.input_ids, batch.layout(), None, AdapterMode::Enabled).unwrap();
        let h = batch.completion_hidden(&hidden).unwrap();
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
