//! Feed-forward blocks: the dense SwiGLU MLP (Qwen3, Llama) and GPT-OSS's mixture of experts,
//! written as transformers' `GptOssMLP` computes it:
//!
//! - router: linear with bias -> top-k logits -> softmax over those k (the routing weights);
//! - expert e: `gate_up = x · gate_up_proj[e] + b` with gate and up interleaved along the
//!   output (`gate = [..., ::2]`, `up = [..., 1::2]`), `gate` clamped above at `limit`, `up` to
//!   [-limit, limit], `(up + 1) · gate · sigmoid(alpha · gate)`, then `· down_proj[e] + b`;
//! - output: the routing-weighted sum over each token's experts.
//!
//! Expert matrices keep transformers' layout [E, in, out]. From an MXFP4 checkpoint they stay
//! packed when frozen (LoRA, or a frozen reference) and are dequantised one expert at a time in
//! the forward pass; under full fine-tuning they are dequantised once into trainable weights.
//! The top-k choice is made on the host (it is not differentiable anyway); everything after it
//! is on the autograd graph: the routing weights (through `gather`), the experts, the scatter
//! back (`index_add`).
//!
//! LoRA on the experts follows PEFT's `target_parameters` (its `ParamWrapper`): per matrix one
//! A [rank·E, in] and one B [out, rank·E]; expert e uses rows e·rank.. of A and the columns
//! e, E + e, 2E + e… of B, and adds `scale · (x Aₑᵀ) Bₑᵀ` to its output, on top of the frozen
//! (possibly packed) base.

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, IndexOp, Tensor, Var};

use super::{AdapterMode, ModelConfig, Weights, mxfp4};
use crate::lora::{EXPERT_PARAMETERS, Linear, LoraConfig, Param};
use crate::rng::SamplerRng;

pub(crate) enum FeedForward {
    Dense { gate_proj: Linear, up_proj: Linear, down_proj: Linear },
    Moe(MoeBlock),
}

/// One expert matrix of every expert.
pub(crate) enum ExpertMatrix {
    /// [E, in, out] (transformers' parameter layout).
    Dense(Param),
    /// As stored: blocks [E, out, in/32, 16] and scales [E, out, in/32], u8, always frozen.
    Mxfp4 { blocks: Param, scales: Param, tables: mxfp4::Tables },
}

pub(crate) struct MoeBlock {
    /// "model.layers.{i}.mlp"
    prefix: String,
    router: Linear,
    gate_up: ExpertMatrix,
    gate_up_bias: Param,
    down: ExpertMatrix,
    down_bias: Param,
    top_k: usize,
    limit: f64,
    alpha: f64,
    dtype: DType,
    gate_up_lora: Option<ExpertLora>,
    down_lora: Option<ExpertLora>,
}

/// LoRA on one expert matrix of every expert, in PEFT's layout (see the module docs).
pub(crate) struct ExpertLora {
    /// Trainable name prefix, e.g. "model.layers.0.mlp.experts.base_layer".
    name: String,
    /// [rank · E, in]
    a: Var,
    /// [out, rank · E]
    b: Var,
    rank: usize,
    experts: usize,
    scale: f64,
}

impl ExpertLora {
    /// A like PEFT's default (uniform ±1/√in), B zero: a fresh adapter changes nothing.
    fn new(name: String, shape: &[usize], lora: &LoraConfig, dtype: DType, device: &candle_core::Device, rng: &mut SamplerRng) -> Result<Self> {
        let (experts, inp, out, r) = (shape[0], shape[1], shape[2], lora.rank);
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f64> = (0..r * experts * inp).map(|_| (2.0 * rng.next_f64() - 1.0) * bound).collect();
        let a = Tensor::from_vec(a, (r * experts, inp), &candle_core::Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        let b = Tensor::zeros((out, r * experts), dtype, device)?;
        Ok(Self { name, a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, rank: r, experts, scale: lora.scale() })
    }

    /// Expert e's factors: A [rank, in], B [out, rank].
    fn factors(&self, e: usize) -> Result<(Tensor, Tensor)> {
        let a = self.a.as_tensor().narrow(0, e * self.rank, self.rank)?;
        let out = self.b.as_tensor().dim(0)?;
        let b = self.b.as_tensor().reshape((out, self.rank, self.experts))?.i((.., .., e))?;
        Ok((a, b))
    }

    /// The adapter's addition to expert e's output for its inputs x [m, in].
    fn forward(&self, x: &Tensor, e: usize) -> Result<Tensor> {
        let (a, b) = self.factors(e)?;
        Ok((x.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?)
    }

    /// scale · Aₑᵀ Bₑᵀ for every expert: [E, in, out].
    fn delta(&self) -> Result<Tensor> {
        let per_expert = (0..self.experts)
            .map(|e| {
                let (a, b) = self.factors(e)?;
                Ok((a.t()?.matmul(&b.t()?)? * self.scale)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&per_expert, 0)?.detach())
    }
}

impl FeedForward {
    /// Layer `prefix`'s feed-forward from `w`. `train_base`/`train_plain` as in `CausalLm::build`.
    pub(crate) fn load(
        cfg: &ModelConfig,
        prefix: &str,
        w: &mut Weights,
        lora: Option<&LoraConfig>,
        train_base: bool,
        train_plain: bool,
        rng: &mut SamplerRng,
    ) -> Result<Self> {
        let p = format!("{prefix}.mlp");
        let Some(moe) = &cfg.moe else {
            if let Some(t) = lora.and_then(|l| l.target_parameters.first()) {
                bail!("lora.target_parameters: {t:?} needs a mixture-of-experts model; {:?} has none", cfg.family);
            }
            let mut lin = |sub: &str| -> Result<Linear> { w.take_linear(&format!("{p}.{sub}"), lora, train_base, rng) };
            return Ok(FeedForward::Dense { gate_proj: lin("gate_proj")?, up_proj: lin("up_proj")?, down_proj: lin("down_proj")? });
        };
        // The router is no LoRA target (PEFT's all-linear skips it too); it trains under full FT.
        let router = Linear::new(format!("{p}.router"), w.take(&format!("{p}.router.weight"))?, None, train_plain, rng)?
            .with_bias(w.take(&format!("{p}.router.bias"))?, train_plain)?;
        let gate_up = ExpertMatrix::load(w, &format!("{p}.experts.gate_up_proj"), train_plain)?;
        let gate_up_bias = Param::new(w.take(&format!("{p}.experts.gate_up_proj_bias"))?, train_plain)?;
        let down = ExpertMatrix::load(w, &format!("{p}.experts.down_proj"), train_plain)?;
        let down_bias = Param::new(w.take(&format!("{p}.experts.down_proj_bias"))?, train_plain)?;
        // PEFT nests the wrappers of one module's parameters in their declaration order, so with
        // both targeted gate_up_proj's adapter sits under `experts.base_layer`.
        let both = lora.is_some_and(|l| EXPERT_PARAMETERS.iter().all(|t| l.targets_parameter(t)));
        let mut expert_lora = |param: &str, inner: bool| -> Result<Option<ExpertLora>> {
            let Some(l) = lora.filter(|l| l.targets_parameter(&format!("mlp.experts.{param}"))) else { return Ok(None) };
            let name = if inner { format!("{p}.experts.base_layer") } else { format!("{p}.experts") };
            let shape = w.expected_shape(&format!("{p}.experts.{param}"))?.clone();
            Ok(Some(ExpertLora::new(name, &shape, l, w.dtype(), w.device(), rng)?))
        };
        let gate_up_lora = expert_lora("gate_up_proj", both)?;
        let down_lora = expert_lora("down_proj", false)?;
        Ok(FeedForward::Moe(MoeBlock {
            prefix: p,
            router,
            gate_up,
            gate_up_bias,
            down,
            down_bias,
            top_k: moe.top_k,
            limit: moe.swiglu_limit,
            alpha: moe.swiglu_alpha,
            dtype: w.dtype(),
            gate_up_lora,
            down_lora,
        }))
    }

    /// x [B, T, hidden] -> [B, T, hidden].
    pub(crate) fn forward(&self, x: &Tensor, adapters: AdapterMode) -> Result<Tensor> {
        match self {
            FeedForward::Dense { gate_proj, up_proj, down_proj } => {
                let gate = candle_nn::ops::silu(&gate_proj.forward(x, adapters)?)?;
                let up = up_proj.forward(x, adapters)?;
                down_proj.forward(&(gate * up)?, adapters)
            }
            FeedForward::Moe(m) => m.forward(x, adapters),
        }
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        match self {
            FeedForward::Dense { gate_proj, up_proj, down_proj } => vec![gate_proj, up_proj, down_proj],
            FeedForward::Moe(m) => vec![&m.router],
        }
    }

    /// The weights that are not in a [`Linear`], under their checkpoint names.
    pub(crate) fn other_params(&self) -> Vec<(String, &Param)> {
        let FeedForward::Moe(m) = self else { return vec![] };
        let mut out = Vec::new();
        for (name, matrix, bias) in [("gate_up_proj", &m.gate_up, &m.gate_up_bias), ("down_proj", &m.down, &m.down_bias)] {
            let base = format!("{}.experts.{name}", m.prefix);
            match matrix {
                ExpertMatrix::Dense(p) => out.push((base.clone(), p)),
                ExpertMatrix::Mxfp4 { blocks, scales, .. } => {
                    out.push((format!("{base}_blocks"), blocks));
                    out.push((format!("{base}_scales"), scales));
                }
            }
            out.push((format!("{base}_bias"), bias));
        }
        out
    }

    /// The expert adapters' trainable tensors under PEFT's names ("<..>.lora_A.weight", ...).
    pub(crate) fn lora_vars(&self) -> Vec<(String, Var)> {
        let FeedForward::Moe(m) = self else { return vec![] };
        let mut out = Vec::new();
        for l in [&m.gate_up_lora, &m.down_lora].into_iter().flatten() {
            out.push((format!("{}.lora_A.weight", l.name), l.a.clone()));
            out.push((format!("{}.lora_B.weight", l.name), l.b.clone()));
        }
        out
    }

    /// [`Self::other_params`] for an export: as stored, except that an expert matrix with an
    /// adapter is merged (base + scale · A B per expert) and so written dense.
    pub(crate) fn merged_other_params(&self) -> Result<Vec<(String, Tensor)>> {
        let FeedForward::Moe(m) = self else { return Ok(vec![]) };
        if m.gate_up_lora.is_none() && m.down_lora.is_none() {
            return Ok(self.other_params().into_iter().map(|(n, p)| (n, p.tensor().detach())).collect());
        }
        let mut out = Vec::new();
        for (name, matrix, bias, lora) in
            [("gate_up_proj", &m.gate_up, &m.gate_up_bias, &m.gate_up_lora), ("down_proj", &m.down, &m.down_bias, &m.down_lora)]
        {
            let base = format!("{}.experts.{name}", m.prefix);
            let dense = matrix.dense(m.dtype)?;
            let merged = match lora {
                Some(l) => (dense + l.delta()?)?,
                None => dense,
            };
            out.push((base.clone(), merged));
            out.push((format!("{base}_bias"), bias.tensor().detach()));
        }
        Ok(out)
    }

    /// Whether expert weights are held MXFP4-packed.
    pub(crate) fn is_mxfp4(&self) -> bool {
        matches!(self, FeedForward::Moe(m) if matches!(m.gate_up, ExpertMatrix::Mxfp4 { .. }) && m.gate_up_lora.is_none() && m.down_lora.is_none())
    }

    /// A frozen copy made by `linear_on`/`frozen_on` (host-streamed references, see `offload`).
    pub(crate) fn on(&self, linear_on: impl Fn(&Linear) -> Result<Linear>, frozen_on: impl Fn(&Param) -> Result<Param>) -> Result<Self> {
        Ok(match self {
            FeedForward::Dense { gate_proj, up_proj, down_proj } => {
                FeedForward::Dense { gate_proj: linear_on(gate_proj)?, up_proj: linear_on(up_proj)?, down_proj: linear_on(down_proj)? }
            }
            FeedForward::Moe(m) => {
                if m.gate_up_lora.is_some() || m.down_lora.is_some() {
                    bail!("{}: experts with LoRA adapters are not streamed", m.prefix);
                }
                let matrix_on = |x: &ExpertMatrix| -> Result<ExpertMatrix> {
                    Ok(match x {
                        ExpertMatrix::Dense(p) => ExpertMatrix::Dense(frozen_on(p)?),
                        ExpertMatrix::Mxfp4 { blocks, scales, .. } => {
                            let blocks = frozen_on(blocks)?;
                            let tables = mxfp4::Tables::new(blocks.tensor().device())?;
                            ExpertMatrix::Mxfp4 { blocks, scales: frozen_on(scales)?, tables }
                        }
                    })
                };
                FeedForward::Moe(MoeBlock {
                    prefix: m.prefix.clone(),
                    router: linear_on(&m.router)?,
                    gate_up: matrix_on(&m.gate_up)?,
                    gate_up_bias: frozen_on(&m.gate_up_bias)?,
                    down: matrix_on(&m.down)?,
                    down_bias: frozen_on(&m.down_bias)?,
                    top_k: m.top_k,
                    limit: m.limit,
                    alpha: m.alpha,
                    dtype: m.dtype,
                    gate_up_lora: None,
                    down_lora: None,
                })
            }
        })
    }
}

impl ExpertMatrix {
    /// `name` dense ([E, in, out]) or as `{name}_blocks` + `{name}_scales`. Packed weights are
    /// dequantised when `trainable` (full fine-tuning), kept packed otherwise.
    fn load(w: &mut Weights, name: &str, trainable: bool) -> Result<Self> {
        let shape = w.expected_shape(name)?;
        let (e, inp, out) = (shape[0], shape[1], shape[2]);
        let packed_blocks = format!("{name}_blocks");
        if !w.contains(&packed_blocks) {
            return Ok(ExpertMatrix::Dense(Param::new(w.take(name)?, trainable)?));
        }
        if !inp.is_multiple_of(32) {
            bail!("model weights: {packed_blocks}: MXFP4 needs an input size divisible by 32, the config implies {inp}");
        }
        let blocks = w.take_packed(&packed_blocks, &[e, out, inp / 32, 16])?;
        let scales = w.take_packed(&format!("{name}_scales"), &[e, out, inp / 32])?;
        if trainable {
            let dense = mxfp4::dequantize(&blocks, &scales, DType::F32)?.transpose(1, 2)?.contiguous()?;
            return Ok(ExpertMatrix::Dense(Param::new(dense.to_dtype(w.dtype())?, true)?));
        }
        let tables = mxfp4::Tables::new(blocks.device())?;
        Ok(ExpertMatrix::Mxfp4 { blocks: Param::Frozen(blocks), scales: Param::Frozen(scales), tables })
    }

    /// Every expert's matrix [E, in, out] in `dtype` (detached).
    fn dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            ExpertMatrix::Dense(p) => p.tensor().detach(),
            ExpertMatrix::Mxfp4 { blocks, scales, tables } => {
                mxfp4::dequantize_with(tables, blocks.tensor(), scales.tensor(), dtype)?.transpose(1, 2)?.contiguous()?
            }
        })
    }

    /// Expert `e`'s matrix [in, out] in `dtype`.
    fn expert(&self, e: usize, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            ExpertMatrix::Dense(p) => p.tensor().i(e)?,
            ExpertMatrix::Mxfp4 { blocks, scales, tables } => {
                mxfp4::dequantize_with(tables, &blocks.tensor().i(e)?, &scales.tensor().i(e)?, dtype)?.t()?
            }
        })
    }
}

impl MoeBlock {
    /// Whether the base expert weights are held MXFP4-packed (adapters or not).
    #[cfg(test)]
    pub(crate) fn is_packed(&self) -> bool {
        matches!(self.gate_up, ExpertMatrix::Mxfp4 { .. }) && matches!(self.down, ExpertMatrix::Mxfp4 { .. })
    }

    fn forward(&self, x: &Tensor, adapters: AdapterMode) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let n = b * t;
        let xs = x.reshape((n, h))?;
        let logits = self.router.forward(&xs, adapters)?; // [n, E]
        let num_experts = logits.dim(1)?;
        let k = self.top_k;
        let host = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut chosen = Vec::with_capacity(n * k);
        // Per expert: the tokens routed to it and the flat [n·k] index of their routing weight.
        let mut tokens: Vec<Vec<u32>> = vec![vec![]; num_experts];
        let mut slots: Vec<Vec<u32>> = vec![vec![]; num_experts];
        for (row, l) in host.iter().enumerate() {
            if l.iter().any(|v| v.is_nan()) {
                bail!("{}: router logits are NaN", self.prefix);
            }
            let mut order: Vec<usize> = (0..num_experts).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
            for (j, &e) in order[..k].iter().enumerate() {
                chosen.push(e as u32);
                tokens[e].push(row as u32);
                slots[e].push((row * k + j) as u32);
            }
        }
        let chosen = Tensor::from_vec(chosen, (n, k), x.device())?;
        let weights = candle_nn::ops::softmax(&logits.gather(&chosen, 1)?, D::Minus1)?.flatten_all()?;
        let mut out = xs.zeros_like()?;
        for e in 0..num_experts {
            if tokens[e].is_empty() {
                continue;
            }
            let m = tokens[e].len();
            let idx = Tensor::new(tokens[e].as_slice(), x.device())?;
            let cur = xs.index_select(&idx, 0)?;
            let mut gate_up = cur.matmul(&self.gate_up.expert(e, self.dtype)?)?.broadcast_add(&self.gate_up_bias.tensor().i(e)?)?;
            if let (Some(l), AdapterMode::Enabled) = (&self.gate_up_lora, adapters) {
                gate_up = (gate_up + l.forward(&cur, e)?)?;
            }
            let pairs = gate_up.reshape((m, gate_up.dim(1)? / 2, 2))?;
            let gate = pairs.narrow(2, 0, 1)?.squeeze(2)?.minimum(self.limit)?;
            let up = pairs.narrow(2, 1, 1)?.squeeze(2)?.clamp(-self.limit, self.limit)?;
            let glu = (&gate * candle_nn::ops::sigmoid(&(&gate * self.alpha)?)?)?;
            let act = ((up + 1.0)? * glu)?;
            let mut y = act.matmul(&self.down.expert(e, self.dtype)?)?.broadcast_add(&self.down_bias.tensor().i(e)?)?;
            if let (Some(l), AdapterMode::Enabled) = (&self.down_lora, adapters) {
                y = (y + l.forward(&act, e)?)?;
            }
            let w = weights.index_select(&Tensor::new(slots[e].as_slice(), x.device())?, 0)?.unsqueeze(1)?;
            out = out.index_add(&idx, &y.broadcast_mul(&w)?, 0)?;
        }
        out.reshape((b, t, h)).context("moe output")
    }
}
