//! Linear layers that may carry a LoRA adapter.
//!
//! A [`Linear`] holds its base weight either as a trainable `Var` (full fine-tuning) or as a
//! plain, frozen `Tensor` (LoRA: candle then builds no backward graph through it, which saves
//! the dW matmuls). With an adapter, `y = x Wᵀ + (alpha / r) · (x Aᵀ) Bᵀ`; A starts like PEFT's
//! default (uniform ±1/√in) and B at zero, so a fresh adapter leaves the model unchanged.
//! `AdapterMode::Disabled` skips the adapter: that is the KL reference under LoRA.

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::{AdapterMode, QuantMatmul, small_matmul};
use crate::rng::SamplerRng;

/// The linear modules of a transformer block that LoRA may target (Hugging Face / PEFT names).
pub const LINEAR_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The expert weights of a mixture-of-experts block (GPT-OSS) that LoRA may target: PEFT's
/// `target_parameters`, one low-rank pair per expert.
pub const EXPERT_PARAMETERS: [&str; 2] = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Module names from [`LINEAR_MODULES`], or `"all-linear"`.
    pub target_modules: Vec<String>,
    /// Expert weights from [`EXPERT_PARAMETERS`] (PEFT's `target_parameters`); empty = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_parameters: Vec<String>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the expert weight `param` (e.g. "mlp.experts.down_proj") gets adapters.
    pub fn targets_parameter(&self, param: &str) -> bool {
        self.target_parameters.iter().any(|t| t == param)
    }

    /// Whether the module whose last name component is `module` (e.g. "q_proj") gets an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| t == module || t == "all-linear")
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("lora.rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!("lora.alpha must be a positive number, got {}", self.alpha);
        }
        if self.target_modules.is_empty() && self.target_parameters.is_empty() {
            bail!("lora.target_modules is empty; name some of {LINEAR_MODULES:?} or \"all-linear\"");
        }
        for t in &self.target_parameters {
            if !EXPERT_PARAMETERS.contains(&t.as_str()) {
                bail!("lora.target_parameters: unknown parameter {t:?}; expected some of {EXPERT_PARAMETERS:?}");
            }
        }
        for t in &self.target_modules {
            if t != "all-linear" && !LINEAR_MODULES.contains(&t.as_str()) {
                bail!("lora.target_modules: unknown module {t:?}; expected one of {LINEAR_MODULES:?} or \"all-linear\"");
            }
        }
        Ok(())
    }

    /// The target list with "all-linear" expanded (what PEFT's adapter_config.json should say).
    pub fn expanded_targets(&self) -> Vec<String> {
        LINEAR_MODULES.iter().filter(|m| self.targets(m)).map(|m| m.to_string()).collect()
    }
}

/// A weight that is either trainable (`Var`) or frozen (plain `Tensor`).
#[derive(Clone, Debug)]
pub enum Param {
    Trainable(Var),
    Frozen(Tensor),
}

impl Param {
    pub fn new(t: Tensor, trainable: bool) -> Result<Self> {
        Ok(if trainable { Param::Trainable(Var::from_tensor(&t)?) } else { Param::Frozen(t.detach()) })
    }

    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Trainable(v) => v.as_tensor(),
            Param::Frozen(t) => t,
        }
    }

    pub fn var(&self) -> Option<&Var> {
        match self {
            Param::Trainable(v) => Some(v),
            Param::Frozen(_) => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// [rank, in]
    pub a: Var,
    /// [out, rank]
    pub b: Var,
    pub scale: f64,
}

/// A linear layer's base weight: dense (trainable or frozen), or frozen in a GGUF quantisation.
#[derive(Clone)]
pub enum BaseWeight {
    Dense(Param),
    Quantized(QuantMatmul),
}

impl std::fmt::Debug for BaseWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BaseWeight::Dense(p) => f.debug_tuple("Dense").field(p).finish(),
            BaseWeight::Quantized(q) => write!(f, "Quantized({:?}, {:?})", q.dtype(), q.dims()),
        }
    }
}

impl BaseWeight {
    /// The dense parameter, None for a quantised weight (never trainable).
    pub fn param(&self) -> Option<&Param> {
        match self {
            BaseWeight::Dense(p) => Some(p),
            BaseWeight::Quantized(_) => None,
        }
    }

    /// The weight as a dense, detached tensor (a quantised one is dequantised to f32).
    pub fn dense(&self) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(p) => p.tensor().detach(),
            BaseWeight::Quantized(q) => q.dequantize(&q.device())?,
        })
    }

    /// [out, in]
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            BaseWeight::Dense(p) => p.tensor().dims2()?,
            BaseWeight::Quantized(q) => q.dims(),
        })
    }

    /// x [rows, in] -> x Wᵀ [rows, out]
    fn matmul_t(&self, x2: &Tensor) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(p) => small_matmul::linear(x2, p.tensor()),
            BaseWeight::Quantized(q) => q.forward(x2),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Linear {
    /// Hugging Face module path, e.g. "model.layers.0.self_attn.q_proj".
    pub name: String,
    /// [out, in]
    pub weight: BaseWeight,
    /// [out] (GPT-OSS's attention and router); frozen under LoRA, as PEFT's bias="none".
    pub bias: Option<Param>,
    pub adapter: Option<LoraAdapter>,
}

impl Linear {
    /// `weight` is [out, in]. With `lora` targeting this module an adapter is attached and the
    /// base weight is frozen; otherwise the weight is trainable iff `train_base`.
    pub fn new(name: String, weight: Tensor, lora: Option<&LoraConfig>, train_base: bool, rng: &mut SamplerRng) -> Result<Self> {
        let (out, inp) = weight.dims2()?;
        let adapter = Self::adapter_for(&name, (out, inp), lora, weight.dtype(), weight.device(), rng)?;
        let weight = BaseWeight::Dense(Param::new(weight, train_base && lora.is_none())?);
        Ok(Self { name, weight, bias: None, adapter })
    }

    /// A frozen, quantised base weight, with an adapter of `dtype` if `lora` targets the module.
    pub fn quantized(name: String, weight: QuantMatmul, lora: Option<&LoraConfig>, dtype: DType, rng: &mut SamplerRng) -> Result<Self> {
        let device = weight.device();
        let adapter = Self::adapter_for(&name, weight.dims(), lora, dtype, &device, rng)?;
        Ok(Self { name, weight: BaseWeight::Quantized(weight), bias: None, adapter })
    }

    fn adapter_for(
        name: &str,
        (out, inp): (usize, usize),
        lora: Option<&LoraConfig>,
        dtype: DType,
        device: &Device,
        rng: &mut SamplerRng,
    ) -> Result<Option<LoraAdapter>> {
        let module = name.rsplit('.').next().unwrap_or(name);
        Ok(match lora {
            Some(cfg) if cfg.targets(module) => {
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f64> = (0..cfg.rank * inp).map(|_| (2.0 * rng.next_f64() - 1.0) * bound).collect();
                let a = Tensor::from_vec(a, (cfg.rank, inp), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
                let b = Tensor::zeros((out, cfg.rank), dtype, device)?;
                Some(LoraAdapter { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, scale: cfg.scale() })
            }
            _ => None,
        })
    }

    /// Adds a bias [out], trainable iff `trainable`.
    pub fn with_bias(mut self, bias: Tensor, trainable: bool) -> Result<Self> {
        let (out, _) = self.weight.dims()?;
        if bias.dims() != [out] {
            bail!("{}.bias has shape {:?}, expected [{out}]", self.name, bias.dims());
        }
        self.bias = Some(Param::new(bias, trainable)?);
        Ok(self)
    }

    /// The weight and bias under their checkpoint names ("<name>.weight", "<name>.bias"); the
    /// weight is None when it is kept quantised (never trainable).
    pub fn params(&self) -> Vec<(String, Option<&Param>)> {
        let mut out = vec![(format!("{}.weight", self.name), self.weight.param())];
        out.extend(self.bias.as_ref().map(|b| (format!("{}.bias", self.name), Some(b))));
        out
    }

    /// x [.., in] -> [.., out]
    pub fn forward(&self, x: &Tensor, mode: AdapterMode) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().expect("linear input has at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        // One 2-D GEMM is faster on candle's CPU backend than a broadcast batched matmul.
        let x2 = x.reshape((rows, inp))?;
        let mut y = self.weight.matmul_t(&x2)?;
        if let (Some(ad), AdapterMode::Enabled) = (&self.adapter, mode) {
            let low = x2.matmul(&ad.a.as_tensor().t()?)?;
            let up = low.matmul(&ad.b.as_tensor().t()?)?;
            y = (y + (up * ad.scale)?)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b.tensor())?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = y.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }

    /// W + scale · B A (the weight a merged export ships).
    pub fn merged_weight(&self) -> Result<Tensor> {
        let w = self.weight.dense()?;
        Ok(match &self.adapter {
            Some(ad) => {
                let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?;
                (w.to_dtype(delta.dtype())? + delta)?.detach()
            }
            None => w,
        })
    }

    /// The dtype of the layer's activations (a quantised base takes the model dtype).
    pub fn dtype(&self) -> DType {
        match (&self.weight, &self.adapter) {
            (BaseWeight::Dense(p), _) => p.tensor().dtype(),
            (BaseWeight::Quantized(_), Some(ad)) => ad.a.dtype(),
            (BaseWeight::Quantized(_), None) => DType::F32,
        }
    }
}
