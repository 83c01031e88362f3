//! Model shape and family, read from / written to a Hugging Face `config.json`.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use super::rope_scaling::Yarn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Qwen3 dense: per-head RMSNorm on q and k (`q_norm`, `k_norm`).
    Qwen3,
    /// Llama (SmolLM2 and friends): no q/k norm.
    Llama,
    /// GPT-OSS: mixture-of-experts feed-forward, attention sinks, q/k/v/o biases, alternating
    /// sliding-window and full attention, YaRN RoPE.
    #[serde(rename = "gpt_oss")]
    GptOss,
}

impl Family {
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Family::Qwen3 => "qwen3",
            Family::Llama => "llama",
            Family::GptOss => "gpt_oss",
        }
    }
    fn hf_architecture(self) -> &'static str {
        match self {
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Llama => "LlamaForCausalLM",
            Family::GptOss => "GptOssForCausalLM",
        }
    }
}

/// GPT-OSS's mixture-of-experts feed-forward (Hugging Face `GptOssMLP`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// `num_local_experts`.
    pub num_experts: usize,
    /// `num_experts_per_tok` (the published config also says `experts_per_token`).
    pub top_k: usize,
    /// `swiglu_limit`: the gate is clamped above, the up projection on both sides.
    pub swiglu_limit: f64,
    /// `swiglu_alpha`: sigmoid gain of the gated activation (1.702 when absent, as in HF).
    pub swiglu_alpha: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Biases on the q/k/v/o projections (`attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// Window of the sliding-attention layers: a query sees itself and the `w - 1` tokens before it.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Per layer, whether it is a "sliding_attention" layer (`layer_types`); empty = all full.
    #[serde(default)]
    pub sliding_layers: Vec<bool>,
    /// YaRN RoPE scaling (`rope_scaling` / `rope_parameters` with rope_type "yarn").
    #[serde(default)]
    pub rope_scaling: Option<Yarn>,
    /// Mixture-of-experts feed-forward (GPT-OSS); None = the dense SwiGLU MLP.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
}

fn get_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|n| Some(n as usize)).with_context(|| format!("config.json: {key} must be a non-negative integer, got {x}")),
    }
}

fn req_usize(v: &Value, key: &str) -> Result<usize> {
    get_usize(v, key)?.with_context(|| format!("config.json: missing {key}"))
}

impl ModelConfig {
    pub fn from_hf_config_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let family = match model_type {
            "qwen3" => Family::Qwen3,
            "llama" => Family::Llama,
            "gpt_oss" => Family::GptOss,
            other => bail!("config.json: model_type {other:?} is not supported (supported: \"qwen3\", \"llama\", \"gpt_oss\")"),
        };
        // GPT-OSS has attention biases (HF's default for it is true); the dense families have none.
        let attention_bias = match v.get("attention_bias") {
            None | Some(Value::Null) => family == Family::GptOss,
            Some(b) => b.as_bool().context("config.json: attention_bias must be true or false")?,
        };
        if attention_bias && family != Family::GptOss {
            bail!("config.json: attention_bias=true is not supported for {model_type}");
        }
        if v.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            bail!("config.json: mlp_bias=true is not supported");
        }
        if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            bail!("config.json: use_sliding_window=true is not supported for {model_type}");
        }
        if let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) {
            let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
            if family != Family::GptOss || method != "mxfp4" {
                bail!("config.json: quantization_config with quant_method {method:?} is not supported (only GPT-OSS's \"mxfp4\" experts)");
            }
        }
        let hidden_size = req_usize(&v, "hidden_size")?;
        let num_attention_heads = req_usize(&v, "num_attention_heads")?;
        let num_key_value_heads = get_usize(&v, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!(
                "config.json: num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
            );
        }
        let head_dim = get_usize(&v, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            bail!("config.json: head_dim must be even and positive, got {head_dim}");
        }
        let eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
            Some(x) => x.as_u64().map(|x| vec![x as u32]).context("config.json: eos_token_id must be an integer or a list")?,
        };
        let num_hidden_layers = req_usize(&v, "num_hidden_layers")?;
        let max_position_embeddings = get_usize(&v, "max_position_embeddings")?.unwrap_or(4096);
        // transformers 4.x writes rope_theta + rope_scaling; 5.x one rope_parameters object.
        let rope = v.get("rope_parameters").filter(|r| !r.is_null()).or_else(|| v.get("rope_scaling").filter(|r| !r.is_null()));
        let rope_theta = match v.get("rope_theta").filter(|t| !t.is_null()).or_else(|| rope.and_then(|r| r.get("rope_theta"))) {
            None => 10_000.0,
            Some(t) => t.as_f64().context("config.json: rope_theta must be a number")?,
        };
        let rope_scaling = match rope {
            None => None,
            Some(r) => Yarn::from_hf(r, max_position_embeddings)?,
        };
        let sliding_window = get_usize(&v, "sliding_window")?;
        let sliding_layers: Vec<bool> = match v.get("layer_types") {
            None | Some(Value::Null) if family == Family::GptOss => (0..num_hidden_layers).map(|i| i % 2 == 0).collect(),
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(false),
                    Some("sliding_attention") => Ok(true),
                    _ => bail!("config.json: layer_types holds {t}; expected \"full_attention\" or \"sliding_attention\""),
                })
                .collect::<Result<_>>()?,
            Some(x) => bail!("config.json: layer_types must be a list, got {x}"),
        };
        if !sliding_layers.is_empty() && sliding_layers.len() != num_hidden_layers {
            bail!("config.json: layer_types has {} entries for {num_hidden_layers} layers", sliding_layers.len());
        }
        let sliding_layers = if sliding_layers.iter().any(|&s| s) { sliding_layers } else { vec![] };
        if !sliding_layers.is_empty() && !matches!(sliding_window, Some(w) if w > 0) {
            bail!("config.json: layer_types has sliding_attention layers but sliding_window is not a positive integer");
        }
        let moe = if family == Family::GptOss {
            let num_experts = req_usize(&v, "num_local_experts")?;
            let top_k = match get_usize(&v, "num_experts_per_tok")? {
                Some(k) => k,
                None => req_usize(&v, "experts_per_token").context("config.json: missing num_experts_per_tok")?,
            };
            if top_k == 0 || top_k > num_experts {
                bail!("config.json: num_experts_per_tok ({top_k}) must be between 1 and num_local_experts ({num_experts})");
            }
            let num = |key: &str, default: f64| -> Result<f64> {
                match v.get(key) {
                    None | Some(Value::Null) => Ok(default),
                    Some(x) => x.as_f64().with_context(|| format!("config.json: {key} must be a number, got {x}")),
                }
            };
            Some(MoeConfig { num_experts, top_k, swiglu_limit: num("swiglu_limit", 7.0)?, swiglu_alpha: num("swiglu_alpha", 1.702)? })
        } else {
            None
        };
        Ok(Self {
            family,
            vocab_size: req_usize(&v, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(&v, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings,
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: get_usize(&v, "bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
            attention_bias,
            sliding_window: if sliding_layers.is_empty() { None } else { sliding_window },
            sliding_layers,
            rope_scaling,
            moe,
        })
    }

    /// Whether layer `i` uses sliding-window attention.
    pub fn is_sliding(&self, i: usize) -> bool {
        self.sliding_layers.get(i).copied().unwrap_or(false)
    }

    pub fn to_hf_config_json(&self) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut out = json!({
            "architectures": [self.family.hf_architecture()],
            "model_type": self.family.hf_model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.as_ref().map(Yarn::to_hf),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        });
        let layer_types: Vec<&str> =
            (0..self.num_hidden_layers).map(|i| if self.is_sliding(i) { "sliding_attention" } else { "full_attention" }).collect();
        let map = out.as_object_mut().expect("a JSON object");
        map.insert("layer_types".into(), json!(layer_types));
        map.insert("sliding_window".into(), json!(self.sliding_window));
        if let Some(m) = &self.moe {
            map.insert("num_local_experts".into(), json!(m.num_experts));
            map.insert("num_experts_per_tok".into(), json!(m.top_k));
            map.insert("experts_per_token".into(), json!(m.top_k));
            map.insert("swiglu_limit".into(), json!(m.swiglu_limit));
            map.insert("swiglu_alpha".into(), json!(m.swiglu_alpha));
        }
        out
    }

    /// Tiny shapes for tests: fast on CPU, GQA (4 heads over 2 kv heads), untied head.
    pub fn tiny_qwen3() -> Self {
        Self {
            family: Family::Qwen3,
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![1],
            ..Self::dense_defaults()
        }
    }

    /// Tiny Llama with tied embeddings (like SmolLM2) and 3 heads over 1 kv head.
    pub fn tiny_llama() -> Self {
        Self {
            family: Family::Llama,
            vocab_size: 64,
            hidden_size: 24,
            intermediate_size: 40,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            num_key_value_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            bos_token_id: Some(2),
            eos_token_ids: vec![1],
            ..Self::dense_defaults()
        }
    }

    /// The 10.5M-parameter Qwen3 shape used for CPU throughput targets (see BENCHMARKS.md).
    pub fn qwen3_10m() -> Self {
        Self {
            family: Family::Qwen3,
            vocab_size: 8192,
            hidden_size: 256,
            intermediate_size: 768,
            num_hidden_layers: 8,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![1],
            ..Self::dense_defaults()
        }
    }

    /// SmolLM2-135M's shape (Hugging Face HuggingFaceTB/SmolLM2-135M-Instruct config.json), for
    /// benchmarks of the default model's training cost with random weights where its GGUF is not
    /// at hand.
    pub fn smollm2_135m() -> Self {
        Self {
            family: Family::Llama,
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            ..Self::dense_defaults()
        }
    }

    /// Qwen3-0.6B's shape (Hugging Face Qwen/Qwen3-0.6B config.json), for the GPU benchmark
    /// against PyTorch with random weights (scripts/gpu-check.sh).
    pub fn qwen3_0_6b() -> Self {
        Self {
            family: Family::Qwen3,
            vocab_size: 151_936,
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 40_960,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![151_645],
            ..Self::dense_defaults()
        }
    }

    /// The fields a dense model without GPT-OSS features has; the rest is filler for `..`.
    pub fn dense_defaults() -> Self {
        Self {
            family: Family::Llama,
            vocab_size: 0,
            hidden_size: 0,
            intermediate_size: 0,
            num_hidden_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: 0,
            head_dim: 0,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 0,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            attention_bias: false,
            sliding_window: None,
            sliding_layers: vec![],
            rope_scaling: None,
            moe: None,
        }
    }

    /// Tiny GPT-OSS for tests: 3 layers (sliding, full, sliding) with a window of 3, 4 experts
    /// top-2, YaRN, attention biases and sinks; hidden and intermediate sizes are multiples of 32
    /// (the MXFP4 block).
    pub fn tiny_gpt_oss() -> Self {
        Self {
            family: Family::GptOss,
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: 32,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 150_000.0,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![1],
            attention_bias: true,
            sliding_window: Some(3),
            sliding_layers: vec![true, false, true],
            rope_scaling: Some(Yarn {
                factor: 8.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                original_max_position_embeddings: 64,
                truncate: false,
                attention_factor: None,
            }),
            moe: Some(MoeConfig { num_experts: 4, top_k: 2, swiglu_limit: 1.0, swiglu_alpha: 1.702 }),
        }
    }

    /// Number of parameters (tied head counted once; MXFP4 experts counted as their values).
    pub fn num_parameters(&self) -> usize {
        self.weight_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// The HF tensor names of this model with their shapes, in a stable order. Experts appear
    /// in transformers' parameter layout (`gate_up_proj` [E, hidden, 2·intermediate], gate and
    /// up interleaved); an MXFP4 checkpoint stores them packed instead (see `moe`).
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            for (name, rows, cols) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)] {
                out.push((format!("{p}.self_attn.{name}.weight"), vec![rows, cols]));
                if self.attention_bias {
                    out.push((format!("{p}.self_attn.{name}.bias"), vec![rows]));
                }
            }
            if self.family == Family::Qwen3 {
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![self.head_dim]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![self.head_dim]));
            }
            if self.family == Family::GptOss {
                out.push((format!("{p}.self_attn.sinks"), vec![self.num_attention_heads]));
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            match &self.moe {
                Some(m) => {
                    let (e, i2) = (m.num_experts, 2 * self.intermediate_size);
                    out.push((format!("{p}.mlp.router.weight"), vec![e, h]));
                    out.push((format!("{p}.mlp.router.bias"), vec![e]));
                    out.push((format!("{p}.mlp.experts.gate_up_proj"), vec![e, h, i2]));
                    out.push((format!("{p}.mlp.experts.gate_up_proj_bias"), vec![e, i2]));
                    out.push((format!("{p}.mlp.experts.down_proj"), vec![e, self.intermediate_size, h]));
                    out.push((format!("{p}.mlp.experts.down_proj_bias"), vec![e, h]));
                }
                None => {
                    out.push((format!("{p}.mlp.gate_proj.weight"), vec![self.intermediate_size, h]));
                    out.push((format!("{p}.mlp.up_proj.weight"), vec![self.intermediate_size, h]));
                    out.push((format!("{p}.mlp.down_proj.weight"), vec![h, self.intermediate_size]));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }

    /// [`Self::weight_shapes`] as a checkpoint stores them: with `mxfp4`, each expert matrix
    /// `X` [E, in, out] becomes `X_blocks` [E, out, in/32, 16] and `X_scales` [E, out, in/32]
    /// (u8), the layout of the published GPT-OSS checkpoints.
    pub fn checkpoint_shapes(&self, mxfp4: bool) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (name, shape) in self.weight_shapes() {
            let packed = mxfp4 && shape.len() == 3 && (name.ends_with("experts.gate_up_proj") || name.ends_with("experts.down_proj"));
            if packed {
                let (e, inp, outp) = (shape[0], shape[1], shape[2]);
                out.push((format!("{name}_blocks"), vec![e, outp, inp / 32, 16]));
                out.push((format!("{name}_scales"), vec![e, outp, inp / 32]));
            } else {
                out.push((name, shape));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_shape_has_10_5m_parameters() {
        let n = ModelConfig::qwen3_10m().num_parameters();
        assert!((10_400_000..10_600_000).contains(&n), "{n}");
        let by_shapes: usize = ModelConfig::qwen3_10m().weight_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(n, by_shapes);
    }

    #[test]
    fn hf_config_round_trips_and_rejects_unknown_families() {
        for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama(), ModelConfig::tiny_gpt_oss()] {
            let text = cfg.to_hf_config_json().to_string();
            assert_eq!(ModelConfig::from_hf_config_json(&text).unwrap(), cfg);
        }
        let err = ModelConfig::from_hf_config_json(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(err.to_string().contains("gpt2"), "{err}");
        let err = ModelConfig::from_hf_config_json(r#"{"model_type":"llama","hidden_size":8}"#).unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
    }
}
