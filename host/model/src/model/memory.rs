//! Gradients with bounded activation memory: activation checkpointing and a vocabulary
//! projection computed a chunk of positions at a time.
//!
//! candle records the whole forward graph until `backward()`; for a 14B model with long
//! completions the activations of every layer and the `[N, T, vocab]` logits (plus their
//! log-softmax) dominate GPU memory (docs/memory-plan.md). candle has no checkpointing hooks,
//! so this does it by hand, exactly, using the chain rule across segments:
//!
//! 1. Forward without keeping graphs: only each layer's input `x_i` is kept (detached).
//! 2. Head: `x_L` becomes a leaf; for each chunk of positions the final norm, the vocabulary
//!    projection and the caller's loss are built and back-propagated at once, so only one
//!    chunk of logits exists at a time. The chunks' gradients w.r.t. `x_L` add up to `g_L`.
//! 3. Layers in reverse: recompute layer `i` from the leaf `x_i` and back-propagate the
//!    surrogate `Σ(layer_i(x_i) ⊙ g_{i+1})`, whose gradient is the true one for the layer's
//!    parameters and gives `g_i`. Then the embeddings with `Σ(embed(ids) ⊙ g_0)`.
//!
//! Without checkpointing (only chunked logits) step 1 keeps the trunk's graph and step 3 is a
//! single surrogate backward through it. The sum of the per-segment gradients equals the
//! gradient of the summed chunk losses (tests compare them in f64).

use std::ops::Range;

use anyhow::{Result, bail, ensure};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{AdapterMode, CausalLm, Layout, ops};

/// Memory-saving options of the policy update (`training.memory` in the run config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryOptions {
    /// Keep only each layer's input during the forward and recompute the layer in the backward:
    /// activation memory of one layer instead of all, for ~1/3 more compute.
    pub activation_checkpointing: bool,
    /// Compute the vocabulary projection, log-softmax and loss for this many completion
    /// positions at a time (0 = all at once). Bounds the `[N, T, vocab]` logits to
    /// `[N, logits_chunk, vocab]`.
    pub logits_chunk: usize,
    /// Full fine-tuning with `grpo.beta > 0`: keep the KL reference (a frozen copy of the
    /// starting weights) in host memory and stream it to the device a layer at a time for the
    /// reference log-probs, instead of holding a second copy of the model on the device.
    pub reference_on_host: bool,
}

impl MemoryOptions {
    /// True when the update should go through [`CausalLm::backward_bounded`].
    pub fn enabled(&self) -> bool {
        self.activation_checkpointing || self.logits_chunk > 0
    }
}

/// The hidden positions a loss reads, as an `[n, len]` grid.
#[derive(Debug, Clone, Copy)]
pub enum LossPositions<'a> {
    /// Positions `start..start + len` of every row (`n` = B).
    Window { start: usize, len: usize },
    /// Any positions: `[n, len]` (u32) indices into the row-major `[B * T]` positions (a packed
    /// row's [`super::PackedRow::prediction_index`]).
    Gather(&'a Tensor),
}

impl From<(usize, usize)> for LossPositions<'_> {
    fn from((start, len): (usize, usize)) -> Self {
        LossPositions::Window { start, len }
    }
}

impl LossPositions<'_> {
    /// Positions per row of the grid.
    pub fn width(&self) -> Result<usize> {
        Ok(match self {
            LossPositions::Window { len, .. } => *len,
            LossPositions::Gather(index) => index.dims2()?.1,
        })
    }

    /// Columns `from..from + c` of the grid, taken from hidden states `[B, T, H]`: `[n, c, H]`.
    /// Differentiable (a gather's gradient adds into the positions it read).
    pub fn select(&self, hidden: &Tensor, from: usize, c: usize) -> Result<Tensor> {
        Ok(match self {
            LossPositions::Window { start, .. } => hidden.narrow(1, start + from, c)?,
            LossPositions::Gather(index) => {
                let (b, t, h) = hidden.dims3()?;
                let n = index.dim(0)?;
                let rows = index.narrow(1, from, c)?.contiguous()?.flatten_all()?;
                hidden.reshape((b * t, h))?.index_select(&rows, 0)?.reshape((n, c, h))?
            }
        })
    }
}

impl CausalLm {
    /// How many backward segments one micro-batch's backward has with `options`: the points
    /// at which [`CausalLm::backward_bounded`] passes `segment_end = true` (the head, then the
    /// trunk at once or each layer and the embeddings), or 1 for a plain `loss.backward()`.
    /// ZeRO-2 reduces gradients at each of them, so every rank must agree on the count.
    pub fn backward_segments(&self, options: MemoryOptions) -> usize {
        if !options.enabled() {
            1
        } else if !options.activation_checkpointing {
            2
        } else {
            1 + self.layers.len() + usize::from(self.embed_tokens.var().is_some())
        }
    }

    /// Back-propagates `Σ_chunks chunk_loss(logits_chunk, range)` with bounded memory and hands
    /// every partial gradient store to `on_grads` (their sum is the gradient; accumulate them).
    /// Its flag says that the store ends a segment: the last logits chunk of the head, the
    /// trunk, a layer, the embeddings; always [`CausalLm::backward_segments`] of them, whatever
    /// the sequence length, so that data-parallel ranks can reduce gradients in step.
    ///
    /// `layout`: the attention mask `[B, T]` or a [`super::PackedRow`]. `positions`: the hidden
    /// positions whose logits the loss reads (for GRPO, the positions that predict completion
    /// tokens): a window `(start, len)` of every row, or a [`LossPositions::Gather`] index.
    /// `chunk_loss` gets the logits `[n, c, vocab]` of loss positions `range` (columns of the
    /// `[n, len]` positions) and returns a scalar that must depend only on them; it is called
    /// once per chunk, in order.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_bounded<'a, 'b>(
        &self,
        input_ids: &Tensor,
        layout: impl Into<Layout<'a>>,
        adapters: AdapterMode,
        positions: impl Into<LossPositions<'b>>,
        options: MemoryOptions,
        mut chunk_loss: impl FnMut(&Tensor, Range<usize>) -> Result<Tensor>,
        mut on_grads: impl FnMut(&GradStore, bool) -> Result<()>,
    ) -> Result<()> {
        let (_, t) = input_ids.dims2()?;
        let positions = positions.into();
        let len = positions.width()?;
        if let LossPositions::Window { start, len } = positions {
            ensure!(len > 0 && start + len <= t, "loss window {start}..{} is outside the {t} positions", start + len);
        }
        ensure!(len > 0, "no loss positions");
        let ctx = self.prepare(input_ids, layout.into(), None)?;
        let checkpoint = options.activation_checkpointing;

        // 1. Forward. With checkpointing keep only detached layer inputs; without, keep the graph.
        let embedded = self.embed(input_ids)?;
        let mut inputs: Vec<Tensor> = Vec::with_capacity(self.layers.len() + 1);
        let mut x = if checkpoint { embedded.detach() } else { embedded.clone() };
        for i in 0..self.layers.len() {
            inputs.push(x.clone());
            let y = self.block(i, &x, &ctx, None, adapters)?;
            x = if checkpoint { y.detach() } else { y };
        }
        let trunk_out = x;

        // 2. Head, chunk by chunk, from a leaf copy of the trunk's output.
        let leaf = Var::from_tensor(&trunk_out.detach())?;
        let chunk = if options.logits_chunk == 0 { len } else { options.logits_chunk };
        let mut grad = leaf.as_tensor().zeros_like()?;
        let mut from = 0;
        while from < len {
            let c = chunk.min(len - from);
            let h = ops::rms_norm(&positions.select(leaf.as_tensor(), from, c)?, self.norm.tensor(), self.cfg.rms_norm_eps)?;
            let logits = self.logits(&h, adapters)?;
            let loss = chunk_loss(&logits, from..from + c)?;
            if loss.elem_count() != 1 {
                bail!("the chunk loss must be a scalar, got shape {:?}", loss.dims());
            }
            drop(logits);
            let grads = loss.backward()?;
            if let Some(g) = grads.get(leaf.as_tensor()) {
                grad = (grad + g)?;
            }
            on_grads(&grads, from + c == len)?;
            from += c;
        }

        // 3. Trunk: one surrogate backward through the kept graph, or layer by layer.
        if !checkpoint {
            let surrogate = (trunk_out * grad.detach())?.sum_all()?;
            return on_grads(&surrogate.backward()?, true);
        }
        for i in (0..self.layers.len()).rev() {
            let x_i = Var::from_tensor(&inputs[i])?;
            let y = self.block(i, x_i.as_tensor(), &ctx, None, adapters)?;
            let grads = (y * grad.detach())?.sum_all()?.backward()?;
            on_grads(&grads, true)?;
            grad = match grads.get(x_i.as_tensor()) {
                Some(g) => g.clone(),
                // Only possible if the layer ignored its input: nothing flows further down, but
                // the remaining segments still end (as zero gradients) so the count holds.
                None => grad.zeros_like()?,
            };
            inputs.truncate(i);
        }
        if self.embed_tokens.var().is_some() {
            let grads = (self.embed(input_ids)? * grad.detach())?.sum_all()?.backward()?;
            on_grads(&grads, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::lora::LoraConfig;
    use crate::model::{ModelConfig, token_logprobs};

    fn batch() -> (Tensor, Tensor) {
        let ids = Tensor::new(&[[0u32, 0, 5, 9, 13, 2, 7, 30], [3, 4, 5, 6, 7, 8, 9, 10], [0, 0, 0, 0, 11, 12, 60, 33]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[0u32, 0, 1, 1, 1, 1, 1, 1], [1; 8], [0, 0, 0, 0, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        (ids, mask)
    }

    /// A weighted sum of the log-probs of the next tokens over window positions `range`: the
    /// shape of the GRPO loss (per-token terms, masked, summed).
    fn loss_of(logits: &Tensor, ids: &Tensor, start: usize, range: Range<usize>) -> Result<Tensor> {
        let targets = ids.narrow(1, start + 1 + range.start, range.len())?;
        let lp = token_logprobs(logits, &targets)?;
        // Per-token weights that depend on (row, position) only, not on the chunking.
        let w: Vec<f64> = (0..3).flat_map(|row| range.clone().map(move |p| (((row * 7 + p) % 5) as f64 - 2.0) * 0.3)).collect();
        let w = Tensor::from_vec(w, (3, range.len()), &Device::Cpu)?.to_dtype(lp.dtype())?;
        Ok((lp * w)?.sum_all()?)
    }

    /// Sums the gradients of several backward passes per parameter (the trainer's accumulator
    /// does the same; this crate does not depend on the trainer).
    struct GradAccumulator {
        grads: Vec<Option<Tensor>>,
    }

    impl GradAccumulator {
        fn new(n: usize) -> Self {
            Self { grads: vec![None; n] }
        }

        fn add(&mut self, store: &candle_core::backprop::GradStore, params: &[(String, candle_core::Var)]) -> Result<()> {
            for ((_, var), slot) in params.iter().zip(self.grads.iter_mut()) {
                if let Some(g) = store.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    });
                }
            }
            Ok(())
        }
    }

    fn gradients(model: &CausalLm, options: Option<MemoryOptions>) -> Vec<Vec<f64>> {
        let (ids, mask) = batch();
        let (start, len) = (3, 4);
        let params = model.trainable_vars();
        let mut acc = GradAccumulator::new(params.len());
        match options {
            None => {
                let hidden = model.forward_hidden(&ids, &mask, None, AdapterMode::Enabled).unwrap();
                let logits = model.logits(&hidden.narrow(1, start, len).unwrap(), AdapterMode::Enabled).unwrap();
                let loss = loss_of(&logits, &ids, start, 0..len).unwrap();
                acc.add(&loss.backward().unwrap(), &params).unwrap();
            }
            Some(o) => {
                let mut segments = 0;
                model
                    .backward_bounded(
                        &ids,
                        &mask,
                        AdapterMode::Enabled,
                        (start, len),
                        o,
                        |l, r| loss_of(l, &ids, start, r),
                        |g, end| {
                            segments += usize::from(end);
                            acc.add(g, &params)
                        },
                    )
                    .unwrap();
                // The count data-parallel ranks rely on to reduce in step (ZeRO-2).
                assert_eq!(segments, model.backward_segments(o), "{o:?}");
            }
        }
        acc.grads
            .iter()
            .zip(&params)
            .map(|(g, (name, _))| {
                let g = g.as_ref().unwrap_or_else(|| panic!("{name} got no gradient"));
                g.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
            })
            .collect()
    }

    #[test]
    fn bounded_backward_gives_the_plain_gradients() {
        let lora = LoraConfig { rank: 2, alpha: 4.0, target_modules: vec!["all-linear".into()], target_parameters: vec![] };
        for (cfg, lora) in [
            (ModelConfig::tiny_qwen3(), None),
            (ModelConfig::tiny_llama(), None),
            (ModelConfig::tiny_llama(), Some(&lora)),
            (ModelConfig::tiny_gpt_oss(), None),
            (ModelConfig::tiny_gpt_oss(), Some(&lora)),
        ] {
            let model = CausalLm::random(&cfg, lora, 9, DType::F64, &Device::Cpu).unwrap();
            if lora.is_some() {
                // Fresh adapters have B = 0, where A gets a zero gradient; make B non-zero.
                let mut values = std::collections::HashMap::new();
                for (name, var) in model.trainable_vars() {
                    let t = if name.contains("lora_B") { (var.as_tensor().ones_like().unwrap() * 0.2).unwrap() } else { var.as_tensor().clone() };
                    values.insert(name, t);
                }
                model.load_trainable(&values).unwrap();
            }
            let want = gradients(&model, None);
            for options in [
                MemoryOptions { activation_checkpointing: true, logits_chunk: 0, ..Default::default() },
                MemoryOptions { activation_checkpointing: false, logits_chunk: 1, ..Default::default() },
                MemoryOptions { activation_checkpointing: true, logits_chunk: 3, ..Default::default() },
            ] {
                let got = gradients(&model, Some(options));
                for (k, (a, b)) in want.iter().zip(&got).enumerate() {
                    let scale = a.iter().fold(1e-9f64, |m, v| m.max(v.abs()));
                    let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                    assert!(
                        diff / scale < 1e-6,
                        "{:?} lora={} {options:?}: parameter {k} differs by {diff} (scale {scale})",
                        cfg.family,
                        lora.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn a_window_outside_the_sequence_is_an_error() {
        let model = CausalLm::random(&ModelConfig::tiny_qwen3(), None, 1, DType::F32, &Device::Cpu).unwrap();
        let (ids, mask) = batch();
        let err = model
            .backward_bounded(
                &ids,
                &mask,
                AdapterMode::Enabled,
                (6, 4),
                MemoryOptions { activation_checkpointing: true, logits_chunk: 2, ..Default::default() },
                |l, _| Ok(l.sum_all()?),
                |_, _| Ok(()),
            )
            .unwrap_err();
        assert!(err.to_string().contains("outside the 8 positions"), "{err}");
    }
}
