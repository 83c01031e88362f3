//! A frozen model kept in host memory and run on a device one layer at a time: the KL reference
//! of a full fine-tune with `training.memory.reference_on_host`. Kept on the GPU, the reference
//! is a second copy of the weights (29.5 GB for Qwen3-14B in bf16), which does not fit next to
//! the ZeRO-2 training state on 80 GB cards (docs/memory-plan.md). Streamed, the GPU holds one
//! layer of it at a time, for one host-to-device copy of the weights per forward.

use anyhow::{Result, ensure};
use candle_core::{Device, Tensor};

use super::{AdapterMode, BlockInputs, CausalLm, Layer, Layout, ops};
use crate::lora::{BaseWeight, Linear, Param};

fn frozen_on(p: &Param, device: &Device) -> Result<Param> {
    ensure!(p.var().is_none(), "only frozen weights are streamed");
    Ok(Param::Frozen(p.tensor().to_device(device)?))
}

fn linear_on(l: &Linear, device: &Device) -> Result<Linear> {
    ensure!(l.adapter.is_none(), "{}: a layer with LoRA adapters is not streamed", l.name);
    let BaseWeight::Dense(weight) = &l.weight else {
        anyhow::bail!("{}: a quantised layer is not streamed (the streamed reference is a dense copy)", l.name);
    };
    let bias = l.bias.as_ref().map(|b| frozen_on(b, device)).transpose()?;
    Ok(Linear { name: l.name.clone(), weight: BaseWeight::Dense(frozen_on(weight, device)?), bias, adapter: None })
}

impl Layer {
    fn on(&self, device: &Device) -> Result<Layer> {
        Ok(Layer {
            input_layernorm: frozen_on(&self.input_layernorm, device)?,
            q_proj: linear_on(&self.q_proj, device)?,
            k_proj: linear_on(&self.k_proj, device)?,
            v_proj: linear_on(&self.v_proj, device)?,
            o_proj: linear_on(&self.o_proj, device)?,
            q_norm: self.q_norm.as_ref().map(|p| frozen_on(p, device)).transpose()?,
            k_norm: self.k_norm.as_ref().map(|p| frozen_on(p, device)).transpose()?,
            sinks: self.sinks.as_ref().map(|p| frozen_on(p, device)).transpose()?,
            sliding: self.sliding,
            post_attention_layernorm: frozen_on(&self.post_attention_layernorm, device)?,
            mlp: self.mlp.on(|l| linear_on(l, device), |p| frozen_on(p, device))?,
        })
    }
}

impl CausalLm {
    /// Final hidden states [B, T, hidden] of this frozen model, computed on `device` while the
    /// weights stay where they are (host memory): the embedding lookup runs here, then each
    /// layer is copied to `device`, applied, and dropped. The same numbers as
    /// [`CausalLm::forward_hidden`] on a copy that lives on `device`.
    pub fn hidden_streamed(&self, input_ids: &Tensor, attention_mask: &Tensor, device: &Device) -> Result<Tensor> {
        Ok(self.hidden_streamed_batches(&[(input_ids, Layout::Padded(attention_mask))], device)?.remove(0))
    }

    /// [`Self::hidden_streamed`] of several (input_ids, layout) batches at once: each
    /// layer crosses to `device` once and is applied to every batch (the micro-batches of a
    /// training step), so the weights travel once per step, not once per micro-batch.
    pub fn hidden_streamed_batches(&self, batches: &[(&Tensor, Layout)], device: &Device) -> Result<Vec<Tensor>> {
        ensure!(self.trainable_vars().is_empty(), "only a frozen model (a KL reference) is streamed");
        let mut states = Vec::with_capacity(batches.len());
        for (input_ids, layout) in batches {
            let ids = input_ids.to_device(&self.device)?;
            let mask;
            let layout = match layout {
                Layout::Padded(m) => {
                    mask = m.to_device(&self.device)?;
                    Layout::Padded(&mask)
                }
                packed => *packed,
            };
            let ctx = self.prepare(&ids, layout, None)?;
            let ctx = BlockInputs {
                mask: ctx.mask.to_device(device)?,
                sliding_mask: ctx.sliding_mask.map(|m| m.to_device(device)).transpose()?,
                cos: ctx.cos.to_device(device)?,
                sin: ctx.sin.to_device(device)?,
            };
            states.push((self.embed(&ids)?.to_device(device)?, ctx));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let on_device = layer.on(device)?;
            for (x, ctx) in states.iter_mut() {
                *x = self.block_with(i, &on_device, x, ctx, None, AdapterMode::Disabled)?;
            }
        }
        let norm = self.norm.tensor().to_device(device)?;
        states.into_iter().map(|(x, _)| ops::rms_norm(&x, &norm, self.cfg.rms_norm_eps)).collect()
    }

    /// The vocabulary projection [vocab, hidden] on `device`, for the logits of streamed hidden
    /// states: `hidden · headᵀ` ([`streamed_logits`]).
    pub fn head_on(&self, device: &Device) -> Result<Tensor> {
        let head = match &self.lm_head {
            Some(h) => h.weight.dense()?,
            None => self.embed_tokens.tensor().detach(),
        };
        Ok(head.to_device(device)?)
    }
}

/// Logits [B, T, vocab] of hidden states [B, T, hidden] through a head from [`CausalLm::head_on`].
pub fn streamed_logits(hidden: &Tensor, head: &Tensor) -> Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    Ok(super::small_matmul::linear(&hidden.reshape((b * t, h))?, head)?.reshape((b, t, head.dim(0)?))?)
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn streaming_gives_the_resident_models_numbers() {
        let ids = Tensor::new(&[[0u32, 0, 5, 9, 13, 2], [3, 4, 5, 6, 7, 8]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[0u32, 0, 1, 1, 1, 1], [1; 6]], &Device::Cpu).unwrap();
        for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama(), ModelConfig::tiny_gpt_oss()] {
            let trained = CausalLm::random(&cfg, None, 5, DType::F32, &Device::Cpu).unwrap();
            let reference = trained.frozen_copy_on(&Device::Cpu).unwrap();
            let want = reference.forward(&ids, &mask, None, AdapterMode::Disabled).unwrap();
            let hidden = reference.hidden_streamed(&ids, &mask, &Device::Cpu).unwrap();
            let got = streamed_logits(&hidden, &reference.head_on(&Device::Cpu).unwrap()).unwrap();
            let d = (&want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{:?}", cfg.family);
            // Several batches at once (each layer streamed once for all): each batch's numbers.
            let (ids1, mask1) = (ids.narrow(0, 1, 1).unwrap(), mask.narrow(0, 1, 1).unwrap());
            let both = reference.hidden_streamed_batches(&[(&ids, Layout::Padded(&mask)), (&ids1, Layout::Padded(&mask1))], &Device::Cpu).unwrap();
            assert_eq!(both.len(), 2);
            let alone = reference.forward_hidden(&ids1, &mask1, None, AdapterMode::Disabled).unwrap();
            for (got, want) in [(&both[0], &hidden), (&both[1], &alone)] {
                let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(d, 0.0, "{:?}", cfg.family);
            }
            // A model with trainable weights is not a reference: refused, not silently detached.
            let err = trained.hidden_streamed(&ids, &mask, &Device::Cpu).unwrap_err().to_string();
            assert!(err.contains("only a frozen model"), "{err}");
        }
    }
}
