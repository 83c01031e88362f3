//! Model shape and family, read from / written to a Hugging Face `config.json`.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Qwen3 dense: per-head RMSNorm on q and k (`q_norm`, `k_norm`).
    Qwen3,
    /// Llama (SmolLM2 and friends): no q/k norm.
    Llama,
}

impl Family {
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Family::Qwen3 => "qwen3",
            Family::Llama => "llama",
        }
    }
    fn hf_architecture(self) -> &'static str {
        match self {
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Llama => "LlamaForCausalLM",
        }
    }
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
            other => bail!("config.json: model_type {other:?} is not supported (supported: \"qwen3\", \"llama\")"),
        };
        for key in ["attention_bias", "mlp_bias"] {
            if v.get(key).and_then(Value::as_bool) == Some(true) {
                bail!("config.json: {key}=true is not supported");
            }
        }
        if let Some(rs) = v.get("rope_scaling")
            && !rs.is_null()
        {
            bail!("config.json: rope_scaling {rs} is not supported (only plain RoPE)");
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
        Ok(Self {
            family,
            vocab_size: req_usize(&v, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(&v, "intermediate_size")?,
            num_hidden_layers: req_usize(&v, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta: v.get("rope_theta").and_then(Value::as_f64).unwrap_or(10_000.0),
            max_position_embeddings: get_usize(&v, "max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: get_usize(&v, "bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
        })
    }

    pub fn to_hf_config_json(&self) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        json!({
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
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        })
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
        }
    }

    /// Number of parameters (tied head counted once).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q * 2 + h * kv * 2;
        let qk_norm = if self.family == Family::Qwen3 { 2 * self.head_dim } else { 0 };
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h + qk_norm;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }

    /// The HF tensor names of this model with their shapes, in a stable order.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if self.family == Family::Qwen3 {
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![self.head_dim]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![self.head_dim]));
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![self.intermediate_size, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![self.intermediate_size, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, self.intermediate_size]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
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
        for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama()] {
            let text = cfg.to_hf_config_json().to_string();
            assert_eq!(ModelConfig::from_hf_config_json(&text).unwrap(), cfg);
        }
        let err = ModelConfig::from_hf_config_json(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(err.to_string().contains("gpt2"), "{err}");
        let err = ModelConfig::from_hf_config_json(r#"{"model_type":"llama","hidden_size":8}"#).unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
    }
}
