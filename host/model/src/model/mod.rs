//! Qwen3 (dense), Llama/SmolLM2 and GPT-OSS (mixture of experts) causal language models written
//! from candle's primitive ops, so that every parameter is on the autograd graph.
//!
//! Why not candle-transformers: its fused softmax/rms_norm/rope, CPU flash attention and KV caches
//! are called through `apply_op*_no_bwd` or `detach()`, so `backward()` silently reaches only the
//! LM head; it also has no padding mask (see shared/reference/trainer-notes.md, B1). Here:
//! a manual RMSNorm, RoPE by narrow/cat, matmul attention with an additive causal +
//! key-padding mask (or a packed row's, `packing`), grouped-query attention without copying
//! k/v heads, and Hugging Face weight names. Two ops are our own fused CPU kernels with a
//! hand-written backward, because composed from candle ops they were most of an update's
//! non-matmul time: the attention's scale + mask + softmax (`attention_softmax`) and the
//! vocabulary log-probs (`token_logprobs`); other devices and dtypes use the composition.
//! GPT-OSS's additions live in their own modules: `moe` (experts and router),
//! `mxfp4` (packed expert weights), `local_attention` (sliding window, sinks), `rope_scaling`
//! (YaRN). Generation (no gradients) has its own fast paths: `kv_cache` (written in place),
//! `decode_attention` (one new token against the cache, fused), `small_matmul` (a few rows
//! against dense f32 weights without the GEMM's packing), and a frozen base kept quantised
//! (`quant`, with the AVX-512 VNNI Q8_0 matmul in `q8_gemm`).

mod attention_softmax;
mod config;
mod decode_attention;
mod kv_cache;
mod local_attention;
mod memory;
mod moe;
pub mod mxfp4;
mod offload;
mod ops;
mod packing;
mod pool;
mod q8_gemm;
mod quant;
mod rope_scaling;
pub(crate) mod small_matmul;
mod token_logprobs;

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor, Var};

pub use config::{Family, ModelConfig, MoeConfig, Yarn};
pub use kv_cache::KvCache;
pub use memory::LossPositions;
pub use memory::MemoryOptions;
pub use offload::streamed_logits;
pub use ops::{token_entropy, token_logprobs};
pub use packing::{Layout, PackedRow};
pub use quant::{BaseQuant, QuantMatmul, apply_base_quant, permute_rows, quantizable};
pub use token_logprobs::token_logprobs_and_entropy;

use crate::lora::{Linear, LoraConfig, Param};
use crate::rng::SamplerRng;

/// Whether LoRA adapters take part in a forward pass. `Disabled` gives the base model, which is
/// the KL reference under LoRA. Without adapters both modes are the same.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdapterMode {
    Enabled,
    Disabled,
}

struct Layer {
    input_layernorm: Param,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<Param>,
    k_norm: Option<Param>,
    /// GPT-OSS: per-head attention-sink logits [num_heads].
    sinks: Option<Param>,
    /// Sliding-window attention (the config's "sliding_attention" layers).
    sliding: bool,
    post_attention_layernorm: Param,
    mlp: moe::FeedForward,
}

/// What every decoder layer of one forward pass shares.
struct BlockInputs {
    /// Additive causal + padding mask [B, 1, T, past + T].
    mask: Tensor,
    /// The same with the sliding window, when some layer uses one.
    sliding_mask: Option<Tensor>,
    /// RoPE rows of each position [B, 1, T, head_dim / 2].
    cos: Tensor,
    sin: Tensor,
}

pub struct CausalLm {
    cfg: ModelConfig,
    lora: Option<LoraConfig>,
    embed_tokens: Param,
    layers: Vec<Layer>,
    norm: Param,
    /// None when the head is tied to the embeddings.
    lm_head: Option<Linear>,
    /// A frozen tied head kept quantised (the GGUF embedding matrix): the vocabulary projection
    /// of every decode step reads it instead of the dense embeddings.
    tied_head_quant: Option<QuantMatmul>,
    /// RoPE tables [max_positions, head_dim / 2].
    rope_cos: Tensor,
    rope_sin: Tensor,
    dtype: DType,
    device: Device,
}

impl CausalLm {
    /// Random weights for tests and benchmarks (embeddings N(0,1), linear weights N(0, 1/fan_in),
    /// norm weights 1 + N(0, 0.1²) so that activations and logits are O(1)). Not a training init.
    pub fn random(cfg: &ModelConfig, lora: Option<&LoraConfig>, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let mut rng = SamplerRng::new(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in cfg.weight_shapes() {
            let n: usize = shape.iter().product();
            let values: Vec<f64> = if shape.len() == 1 {
                (0..n).map(|_| 1.0 + 0.1 * rng.normal()).collect()
            } else if name.ends_with("embed_tokens.weight") {
                (0..n).map(|_| rng.normal()).collect()
            } else {
                let std = 1.0 / (shape[1] as f64).sqrt();
                (0..n).map(|_| std * rng.normal()).collect()
            };
            tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Self::from_quantized_tensors(cfg, tensors, HashMap::new(), lora, rng.next_u64(), true, dtype, device)
    }

    /// Build from Hugging Face-named tensors. Without `lora` every weight is trainable (full
    /// fine-tuning); with `lora` only the adapters are. `seed` initialises the LoRA A matrices.
    /// Missing tensors, wrong shapes and unexpected tensors are errors that name the tensor.
    pub fn from_tensors(
        cfg: &ModelConfig,
        tensors: HashMap<String, Tensor>,
        lora: Option<&LoraConfig>,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::from_quantized_tensors(cfg, tensors, HashMap::new(), lora, seed, true, dtype, device)
    }

    /// A copy with no trainable parameters and no adapters, holding the current merged
    /// weights: the KL reference model for full fine-tuning.
    pub fn frozen_copy(&self) -> Result<Self> {
        self.frozen_copy_on(&self.device)
    }

    /// A frozen copy for sampling whose linear weights (and a tied head) are quantised to
    /// `Q8_0` from the current merged weights: rollouts of a full fine-tune at the speed of a
    /// quantised model (`generation.rollout_weights: q8_0`). Its samples come from a slightly
    /// different model than the one trained; the trainer's `mismatch` metric shows how far.
    pub fn quantized_copy(&self) -> Result<Self> {
        let merged: HashMap<String, Tensor> =
            self.merged_weights()?.into_iter().map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
        let (dense, quantized) = apply_base_quant(BaseQuant::Q8_0, true, merged, HashMap::new(), &self.device)?;
        Self::from_quantized_tensors(&self.cfg, dense, quantized, None, 0, false, self.dtype, &self.device)
    }

    /// [`Self::frozen_copy`] on `device` (host memory for a reference streamed to the GPU layer
    /// by layer, see [`Self::hidden_streamed`]); tensors are copied one at a time.
    pub fn frozen_copy_on(&self, device: &Device) -> Result<Self> {
        let tensors = self.merged_weights()?.into_iter().collect();
        Self::from_quantized_tensors(&self.cfg, tensors, HashMap::new(), None, 0, false, self.dtype, device)
    }

    /// [`Self::from_tensors`] where some weights stay quantised (`quantized`, HF names; see
    /// [`BaseQuant`]). Those must be frozen: linear weights under LoRA or with `train_base`
    /// false (inference), and the embeddings of a tied head, which are then also kept dense
    /// for the token lookup. A quantised weight that would be trained is an error.
    #[allow(clippy::too_many_arguments)]
    pub fn from_quantized_tensors(
        cfg: &ModelConfig,
        tensors: HashMap<String, Tensor>,
        quantized: HashMap<String, QTensor>,
        lora: Option<&LoraConfig>,
        seed: u64,
        train_base: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if let Some(l) = lora {
            l.validate()?;
        }
        if !matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
            bail!("model dtype must be a float type, got {dtype:?}");
        }
        let mut rng = SamplerRng::new(seed);
        let mut w = Weights { tensors, quantized, expected: cfg.weight_shapes().into_iter().collect(), dtype, device: device.clone() };
        // Norm weights and embeddings are trained only under full fine-tuning.
        let train_plain = train_base && lora.is_none();
        if train_plain && let Some(name) = w.quantized.keys().next() {
            bail!("model weights: {name} is quantised but would be trained (full fine-tuning); dequantize it (model.base_quant: dequantize)");
        }
        if let (Some(l), Some(_)) = (lora, &cfg.moe)
            && let Some(t) = l.target_modules.iter().find(|t| ["gate_proj", "up_proj", "down_proj"].contains(&t.as_str()))
        {
            bail!(
                "lora.target_modules: {t:?} does not exist in {:?} (its feed-forward is a mixture of experts); target the attention projections",
                cfg.family
            );
        }
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linears = Vec::with_capacity(4);
            for sub in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                let name = format!("{p}.self_attn.{sub}");
                let mut lin = w.take_linear(&name, lora, train_base, &mut rng)?;
                if cfg.attention_bias {
                    lin = lin.with_bias(w.take(&format!("{name}.bias"))?, train_plain)?;
                }
                linears.push(lin);
            }
            let [q_proj, k_proj, v_proj, o_proj]: [Linear; 4] = linears.try_into().map_err(|_| anyhow::anyhow!("four attention projections"))?;
            let (q_norm, k_norm) = if cfg.family == Family::Qwen3 {
                (
                    Some(Param::new(w.take(&format!("{p}.self_attn.q_norm.weight"))?, train_plain)?),
                    Some(Param::new(w.take(&format!("{p}.self_attn.k_norm.weight"))?, train_plain)?),
                )
            } else {
                (None, None)
            };
            let sinks = if cfg.family == Family::GptOss { Some(Param::new(w.take(&format!("{p}.self_attn.sinks"))?, train_plain)?) } else { None };
            layers.push(Layer {
                input_layernorm: Param::new(w.take(&format!("{p}.input_layernorm.weight"))?, train_plain)?,
                post_attention_layernorm: Param::new(w.take(&format!("{p}.post_attention_layernorm.weight"))?, train_plain)?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                q_norm,
                k_norm,
                sinks,
                sliding: cfg.is_sliding(i),
                mlp: moe::FeedForward::load(cfg, &p, &mut w, lora, train_base, train_plain, &mut rng)?,
            });
        }
        let (embed_tokens, tied_head_quant) = match w.take_quantized("model.embed_tokens.weight")? {
            // The lookup needs dense rows; a tied head projects through the quantised matrix.
            Some(q) => {
                let dense = q.dequantize(device)?.to_dtype(dtype)?;
                let head = cfg.tie_word_embeddings.then(|| QuantMatmul::new(q)).transpose()?;
                (Param::new(dense, false)?, head)
            }
            None => (Param::new(w.take("model.embed_tokens.weight")?, train_plain)?, None),
        };
        let norm = Param::new(w.take("model.norm.weight")?, train_plain)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            // The head is not a LoRA target (PEFT's usual setting); it trains under full FT.
            Some(w.take_linear("lm_head", None, train_plain, &mut rng)?)
        };
        // Tied checkpoints sometimes also ship lm_head.weight; HF's rotary_emb buffers are derived.
        let mut tensors = w.tensors;
        tensors.retain(|name, _| !(name == "lm_head.weight" || name.contains("rotary_emb")));
        w.quantized.remove("lm_head.weight");
        if !tensors.is_empty() || !w.quantized.is_empty() {
            let mut names: Vec<_> = tensors.keys().chain(w.quantized.keys()).cloned().collect();
            names.sort();
            bail!(
                "model weights: {} tensor(s) the {:?} config does not use, e.g. {:?} (wrong model family or shape?)",
                names.len(),
                cfg.family,
                &names[..names.len().min(5)]
            );
        }
        let (rope_cos, rope_sin) = ops::rope_tables(cfg, dtype, device)?;
        Ok(Self {
            cfg: cfg.clone(),
            lora: lora.cloned(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied_head_quant,
            rope_cos,
            rope_sin,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// input_ids [B, T] (u32); attention_mask [B, past + T] with 1 for real tokens and 0 for
    /// padding (any numeric dtype; with a cache it covers cached and new positions). Position
    /// ids are the running count of real tokens, so left padding does not shift them.
    /// Returns logits [B, T, vocab] in the model dtype.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: Option<&mut KvCache>, adapters: AdapterMode) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, Layout::Padded(attention_mask), cache, adapters)?;
        self.logits(&hidden, adapters)
    }

    /// Logits of the last position only, [B, vocab]: what sampling needs, without paying for
    /// the vocabulary projection of every prompt position.
    pub fn forward_last(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: Option<&mut KvCache>, adapters: AdapterMode) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, Layout::Padded(attention_mask), cache, adapters)?;
        let t = hidden.dim(1)?;
        Ok(self.logits(&hidden.narrow(1, t - 1, 1)?, adapters)?.squeeze(1)?)
    }

    /// Final hidden states (after the last norm), [B, T, hidden]. With [`Self::logits`] this
    /// lets a caller project to the vocabulary in chunks to bound memory.
    /// `layout` is the attention mask `[B, past + T]` (as for [`Self::forward`]) or a
    /// [`PackedRow`] (no cache).
    pub fn forward_hidden<'a>(
        &self,
        input_ids: &Tensor,
        layout: impl Into<Layout<'a>>,
        mut cache: Option<&mut KvCache>,
        adapters: AdapterMode,
    ) -> Result<Tensor> {
        let ctx = self.prepare(input_ids, layout.into(), cache.as_deref())?;
        let mut x = self.embed(input_ids)?;
        let inference = cache.is_some();
        for i in 0..self.layers.len() {
            x = self.block(i, &x, &ctx, cache.as_deref_mut(), adapters)?;
        }
        ops::rms_norm_maybe_fused(&x, self.norm.tensor(), self.cfg.rms_norm_eps, inference)
    }

    /// Checks shapes against the cache and builds the additive mask and RoPE rows of a forward.
    fn prepare(&self, input_ids: &Tensor, layout: Layout, cache: Option<&KvCache>) -> Result<BlockInputs> {
        let (b, t) = input_ids.dims2().context("input_ids must be [batch, seq]")?;
        let any_sliding = self.layers.iter().any(|l| l.sliding);
        let (mask, sliding_mask, positions) = match layout {
            Layout::Padded(attention_mask) => {
                let past = cache.map(|c| c.seq_len()).unwrap_or(0);
                if let Some(c) = cache {
                    if c.num_layers() != self.layers.len() {
                        bail!("kv cache has {} layers, the model {}", c.num_layers(), self.layers.len());
                    }
                    if past > 0 && c.batch_size() != b {
                        bail!("kv cache holds {} rows, input_ids has {b}", c.batch_size());
                    }
                }
                let (mb, ms) = attention_mask.dims2().context("attention_mask must be [batch, seq]")?;
                if mb != b || ms != past + t {
                    bail!("attention_mask is [{mb}, {ms}], expected [{b}, {}] (cached {past} + new {t})", past + t);
                }
                let (mask, positions) = ops::mask_and_positions(attention_mask, past, t, self.dtype, &self.device)?;
                let sliding_mask = match self.cfg.sliding_window {
                    Some(window) if any_sliding => Some(local_attention::sliding_mask(attention_mask, past, t, window, self.dtype, &self.device)?),
                    _ => None,
                };
                (mask, sliding_mask, positions)
            }
            Layout::Packed(row) => {
                if cache.is_some() {
                    bail!("a packed row is not run with a KV cache");
                }
                if b != 1 || t != row.len() {
                    bail!("a packed row of {} positions needs input_ids [1, {}], got [{b}, {t}]", row.len(), row.len());
                }
                let mask = row.mask(None, self.dtype, &self.device)?;
                let sliding_mask = match self.cfg.sliding_window {
                    Some(window) if any_sliding => Some(row.mask(Some(window), self.dtype, &self.device)?),
                    _ => None,
                };
                (mask, sliding_mask, row.positions())
            }
        };
        if let Some(max) = positions.iter().copied().max()
            && max as usize >= self.rope_cos.dim(0)?
        {
            bail!("position {max} exceeds the model's max_position_embeddings {}", self.rope_cos.dim(0)?);
        }
        let pos = Tensor::from_vec(positions, b * t, &self.device)?;
        let half = self.cfg.head_dim / 2;
        let cos = self.rope_cos.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        let sin = self.rope_sin.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        Ok(BlockInputs { mask, sliding_mask, cos, sin })
    }

    /// Token embeddings [B, T, hidden].
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2().context("input_ids must be [batch, seq]")?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        Ok(self.embed_tokens.tensor().index_select(&ids, 0)?.reshape((b, t, self.cfg.hidden_size))?)
    }

    /// Decoder layer `i`: pre-norm attention and SwiGLU MLP, each with a residual.
    fn block(&self, i: usize, x: &Tensor, ctx: &BlockInputs, cache: Option<&mut KvCache>, adapters: AdapterMode) -> Result<Tensor> {
        self.block_with(i, &self.layers[i], x, ctx, cache, adapters)
    }

    /// Decoder layer `i` with the weights of `layer` (the model's own, or a device copy of them).
    fn block_with(
        &self,
        i: usize,
        layer: &Layer,
        x: &Tensor,
        ctx: &BlockInputs,
        cache: Option<&mut KvCache>,
        adapters: AdapterMode,
    ) -> Result<Tensor> {
        let inference = cache.is_some();
        let eps = self.cfg.rms_norm_eps;
        let attn_in = ops::rms_norm_maybe_fused(x, layer.input_layernorm.tensor(), eps, inference)?;
        let mask = match (&ctx.sliding_mask, layer.sliding) {
            (Some(m), true) => m,
            _ => &ctx.mask,
        };
        let attn = self.attention(i, layer, &attn_in, mask, &ctx.cos, &ctx.sin, cache, adapters)?;
        let x = (x + attn)?;
        let mlp_in = ops::rms_norm_maybe_fused(&x, layer.post_attention_layernorm.tensor(), eps, inference)?;
        Ok((x + layer.mlp.forward(&mlp_in, adapters)?)?)
    }

    /// Vocabulary projection of final hidden states: [B, T, hidden] -> [B, T, vocab].
    pub fn logits(&self, hidden: &Tensor, adapters: AdapterMode) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        Ok(match (&self.lm_head, &self.tied_head_quant) {
            (Some(head), _) => head.forward(hidden, adapters)?,
            (None, Some(q)) => q.forward(&hidden.reshape((b * t, h))?)?.reshape((b, t, self.cfg.vocab_size))?,
            (None, None) => small_matmul::linear(&hidden.reshape((b * t, h))?, self.embed_tokens.tensor())?.reshape((b, t, self.cfg.vocab_size))?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        index: usize,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut KvCache>,
        adapters: AdapterMode,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim);
        let eps = self.cfg.rms_norm_eps;
        // With a cache the forward serves generation, which needs no gradients: candle's fused
        // kernels (no backward) replace the differentiable compositions there.
        let inference = cache.is_some();
        let mut q = layer.q_proj.forward(x, adapters)?.reshape((b, t, nh, hd))?;
        let mut k = layer.k_proj.forward(x, adapters)?.reshape((b, t, nkv, hd))?;
        let v = layer.v_proj.forward(x, adapters)?.reshape((b, t, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = ops::rms_norm_maybe_fused(&q, qn.tensor(), eps, inference)?;
            k = ops::rms_norm_maybe_fused(&k, kn.tensor(), eps, inference)?;
        }
        let q = ops::apply_rope_maybe_fused(&q.transpose(1, 2)?.contiguous()?, cos, sin, inference)?;
        let k = ops::apply_rope_maybe_fused(&k.transpose(1, 2)?.contiguous()?, cos, sin, inference)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = match cache {
            Some(c) => c.append(index, &k, &v)?,
            None => (k, v),
        };
        // Grouped-query attention without copying k/v per query head: the g = nh / nkv query
        // heads that share a kv head become g·T rows of one matmul against it.
        let g = nh / nkv;
        // Decoding on the CPU (one new token per row): the fused kernel reads the cache in place.
        if inference && t == 1 && layer.sinks.is_none() && q.device().is_cpu() && q.dtype() == DType::F32 {
            let mask_rows = mask.flatten_all()?.to_vec1::<f32>()?;
            let out = decode_attention::decode_attention(&q.reshape((b, nkv, g, hd))?, &k, &v, mask_rows, 1.0 / (hd as f32).sqrt())?;
            return layer.o_proj.forward(&out.reshape((b, 1, nh * hd))?, adapters);
        }
        let s = k.dim(2)?;
        let q = q.reshape((b, nkv, g * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        // [B, nkv, g·T, S] is [B, nh, T, S]: the g query heads of a kv head are consecutive.
        let raw = q.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
        let probs = match (&layer.sinks, inference) {
            // Training without sinks: scale, mask and softmax fused, with their backward.
            (None, false) => attention_softmax::masked_softmax(&raw, mask, scale)?,
            (sinks, _) => {
                let scores = (raw * scale)?.reshape((b, nkv, g, t, s))?.broadcast_add(&mask.unsqueeze(2)?)?.reshape((b, nh, t, s))?;
                match sinks {
                    Some(sinks) => local_attention::softmax_with_sinks(&scores, sinks.tensor())?,
                    None => candle_nn::ops::softmax_last_dim(&scores)?,
                }
            }
        };
        let out = probs.reshape((b, nkv, g * t, s))?.matmul(&v)?;
        let out = out.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        layer.o_proj.forward(&out, adapters)
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.extend([&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj]);
            out.extend(l.mlp.linears());
        }
        out.extend(self.lm_head.as_ref());
        out
    }

    /// Every base weight under its HF name (tied head omitted), as stored (adapters not merged);
    /// None for a linear weight kept quantised (never trainable).
    fn base_params(&self) -> Vec<(String, Option<&Param>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), Some(&self.embed_tokens))];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), Some(&l.input_layernorm)));
            for lin in [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj] {
                out.extend(lin.params());
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                out.push((format!("{p}.self_attn.q_norm.weight"), Some(qn)));
                out.push((format!("{p}.self_attn.k_norm.weight"), Some(kn)));
            }
            out.extend(l.sinks.as_ref().map(|s| (format!("{p}.self_attn.sinks"), Some(s))));
            out.push((format!("{p}.post_attention_layernorm.weight"), Some(&l.post_attention_layernorm)));
            for lin in l.mlp.linears() {
                out.extend(lin.params());
            }
            out.extend(l.mlp.other_params().into_iter().map(|(n, p)| (n, Some(p))));
        }
        out.push(("model.norm.weight".to_string(), Some(&self.norm)));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.weight.param()));
        }
        out
    }

    /// config.json for an export of [`Self::merged_weights`]: the config, plus GPT-OSS's
    /// quantization_config while the experts are held MXFP4-packed (they are exported so).
    pub fn hf_config_json(&self) -> serde_json::Value {
        let mut v = self.cfg.to_hf_config_json();
        if self.layers.iter().any(|l| l.mlp.is_mxfp4()) {
            v["quantization_config"] = serde_json::json!({
                "quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
            });
        }
        v
    }

    /// Trainable parameters by stable name: HF names under full fine-tuning; under LoRA
    /// "<module>.lora_A.weight" ([r, in]) and "<module>.lora_B.weight" ([out, r]).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> =
            self.base_params().into_iter().filter_map(|(n, p)| p.and_then(Param::var).map(|v| (n, v.clone()))).collect();
        for lin in self.linears() {
            if let Some(ad) = &lin.adapter {
                out.push((format!("{}.lora_A.weight", lin.name), ad.a.clone()));
                out.push((format!("{}.lora_B.weight", lin.name), ad.b.clone()));
            }
        }
        for l in &self.layers {
            out.extend(l.mlp.lora_vars());
        }
        out
    }

    /// Overwrite the trainable parameters from a name → tensor map (checkpoint resume, loading a
    /// PEFT adapter). Every trainable name must be present with the right shape.
    pub fn load_trainable(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.trainable_vars() {
            let t = tensors.get(&name).with_context(|| format!("missing trainable tensor {name}"))?;
            if t.dims() != var.dims() {
                bail!("tensor {name} has shape {:?}, the model expects {:?}", t.dims(), var.dims());
            }
            if t.id() == var.as_tensor().id() {
                continue; // already this var's own value
            }
            var.set(&t.to_dtype(self.dtype)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// All weights under HF names with LoRA merged in (W + alpha/r · B A); tied head omitted.
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let merged: HashMap<String, Tensor> =
            self.linears().into_iter().map(|l| Ok((format!("{}.weight", l.name), l.merged_weight()?))).collect::<Result<_>>()?;
        // Expert weights come from the feed-forward, which merges expert adapters.
        let experts: std::collections::HashSet<String> = self.layers.iter().flat_map(|l| l.mlp.other_params()).map(|(n, _)| n).collect();
        let mut out: Vec<(String, Tensor)> = self
            .base_params()
            .into_iter()
            .filter(|(n, _)| !experts.contains(n))
            .map(|(n, p)| {
                let t = match (merged.get(&n), p) {
                    (Some(t), _) => t.clone(),
                    (None, Some(p)) => p.tensor().detach(),
                    (None, None) => bail!("{n}: a quantised weight outside the linear layers"),
                };
                Ok((n, t))
            })
            .collect::<Result<_>>()?;
        for l in &self.layers {
            out.extend(l.mlp.merged_other_params()?);
        }
        Ok(out)
    }

    /// Weights kept quantised ([`BaseQuant`]): linear layers, and a tied head's projection.
    pub fn quantized_weight_count(&self) -> usize {
        let linears = self.linears().into_iter().filter(|l| l.weight.param().is_none()).count();
        linears + self.tied_head_quant.is_some() as usize
    }

    pub fn num_parameters(&self) -> usize {
        self.cfg.num_parameters()
    }

    pub fn num_trainable_parameters(&self) -> usize {
        self.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// A checkpoint's tensors while a model is built from them: each is taken once and checked
/// against the config's shapes; whatever is left over is an error (see `build`).
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Frozen weights kept quantised ([`BaseQuant`]), taken by [`Weights::take_linear`].
    quantized: HashMap<String, QTensor>,
    expected: HashMap<String, Vec<usize>>,
    dtype: DType,
    device: Device,
}

impl Weights {
    fn expected_shape(&self, name: &str) -> Result<&Vec<usize>> {
        self.expected.get(name).with_context(|| format!("internal: {name} is not in the config's weight list"))
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// `name`, shape-checked, in the model dtype on the model device.
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let shape = self.expected_shape(name)?.clone();
        let t = self.tensors.remove(name).with_context(|| format!("model weights: missing tensor {name}"))?;
        if t.dims() != shape.as_slice() {
            bail!("model weights: tensor {name} has shape {:?}, the config implies {:?}", t.dims(), shape);
        }
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// `name` kept quantised, shape-checked, if it was loaded so.
    fn take_quantized(&mut self, name: &str) -> Result<Option<QTensor>> {
        let Some(q) = self.quantized.remove(name) else { return Ok(None) };
        let shape = self.expected_shape(name)?;
        if q.shape().dims() != shape.as_slice() {
            bail!("model weights: tensor {name} has shape {:?}, the config implies {:?}", q.shape().dims(), shape);
        }
        Ok(Some(q))
    }

    /// The linear layer `name` ("<name>.weight"): over a quantised base if it was loaded so
    /// (frozen; an adapter if `lora` targets it), else dense (trainable iff `train_base` and
    /// no LoRA).
    pub(crate) fn take_linear(&mut self, name: &str, lora: Option<&LoraConfig>, train_base: bool, rng: &mut SamplerRng) -> Result<Linear> {
        let weight = format!("{name}.weight");
        match self.take_quantized(&weight)? {
            Some(q) => Linear::quantized(name.to_string(), QuantMatmul::new(q)?, lora, self.dtype, rng),
            None => Linear::new(name.to_string(), self.take(&weight)?, lora, train_base, rng),
        }
    }

    /// A packed (u8) tensor of shape `shape`, kept as stored, on the model device.
    fn take_packed(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.remove(name).with_context(|| format!("model weights: missing tensor {name}"))?;
        if t.dims() != shape || t.dtype() != DType::U8 {
            bail!("model weights: tensor {name} is {:?} {:?}, the config implies u8 {:?}", t.dtype(), t.dims(), shape);
        }
        Ok(t.to_device(&self.device)?)
    }
}

#[cfg(test)]
mod tests;
