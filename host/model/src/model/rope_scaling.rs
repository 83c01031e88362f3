//! YaRN RoPE scaling (GPT-OSS; also accepted for Qwen3/Llama), as transformers'
//! `modeling_rope_utils._compute_yarn_parameters` computes it: per-frequency interpolation
//! between the original and the `factor`-stretched frequencies along a linear ramp between the
//! correction dims of `beta_fast` and `beta_slow`, and cos/sin scaled by the attention factor.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Yarn {
    pub factor: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub original_max_position_embeddings: usize,
    /// Round the correction range to whole dims (transformers' default true; GPT-OSS false).
    pub truncate: bool,
    /// Multiplies cos and sin; None = 0.1 · ln(factor) + 1.
    pub attention_factor: Option<f64>,
}

impl Yarn {
    /// From config.json's `rope_scaling` (4.x) or `rope_parameters` (5.x) object. Plain RoPE
    /// ("default", or no type) is None; other scaling types are errors.
    pub fn from_hf(r: &Value, max_position_embeddings: usize) -> Result<Option<Self>> {
        let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
        match kind {
            "default" => return Ok(None),
            "yarn" => {}
            other => bail!("config.json: rope scaling type {other:?} is not supported (only \"default\" and \"yarn\")"),
        }
        let num = |key: &str| -> Result<Option<f64>> {
            match r.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).with_context(|| format!("config.json: rope scaling {key} must be a number, got {x}")),
            }
        };
        if num("mscale")?.is_some() || num("mscale_all_dim")?.is_some() {
            bail!("config.json: YaRN mscale/mscale_all_dim are not supported");
        }
        if num("partial_rotary_factor")?.is_some_and(|f| f != 1.0) {
            bail!("config.json: partial_rotary_factor is not supported");
        }
        let original = match r.get("original_max_position_embeddings") {
            None | Some(Value::Null) => max_position_embeddings,
            Some(x) => x.as_u64().context("config.json: original_max_position_embeddings must be an integer")? as usize,
        };
        let factor = match num("factor")? {
            Some(f) => f,
            None => max_position_embeddings as f64 / original as f64,
        };
        if !(factor.is_finite() && factor > 0.0) || original == 0 {
            bail!("config.json: YaRN needs a positive factor and original_max_position_embeddings");
        }
        Ok(Some(Self {
            factor,
            // transformers uses `or`: a 0 means the default too.
            beta_fast: num("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
            beta_slow: num("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
            original_max_position_embeddings: original,
            truncate: r.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            attention_factor: num("attention_factor")?,
        }))
    }

    /// The `rope_scaling` object transformers reads (4.x style, which 5.x also accepts).
    pub fn to_hf(&self) -> Value {
        let mut v = json!({
            "rope_type": "yarn",
            "factor": self.factor,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "truncate": self.truncate,
        });
        if let Some(a) = self.attention_factor {
            v["attention_factor"] = json!(a);
        }
        v
    }

    /// The scale of cos and sin.
    pub fn attention_scale(&self) -> f64 {
        self.attention_factor.unwrap_or(if self.factor <= 1.0 { 1.0 } else { 0.1 * self.factor.ln() + 1.0 })
    }

    /// Inverse frequencies [head_dim / 2] for `base` (rope_theta).
    pub fn inv_freq(&self, head_dim: usize, base: f64) -> Vec<f64> {
        let dim = head_dim as f64;
        let correction_dim =
            |rotations: f64| dim * (self.original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
        let (mut low, mut high) = (correction_dim(self.beta_fast), correction_dim(self.beta_slow));
        if self.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let mut high = high.min(dim - 1.0);
        if low == high {
            high += 0.001; // as transformers: avoids a division by zero
        }
        (0..head_dim / 2)
            .map(|i| {
                let pos_freq = base.powf(2.0 * i as f64 / dim);
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                (1.0 / (self.factor * pos_freq)) * (1.0 - extrapolation) + (1.0 / pos_freq) * extrapolation
            })
            .collect()
    }
}

/// Inverse frequencies and the cos/sin scale of a model's RoPE.
pub fn rope_frequencies(head_dim: usize, base: f64, scaling: Option<&Yarn>) -> (Vec<f64>, f64) {
    match scaling {
        Some(y) => (y.inv_freq(head_dim, base), y.attention_scale()),
        None => ((0..head_dim / 2).map(|i| 1.0 / base.powf(2.0 * i as f64 / head_dim as f64)).collect(), 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-OSS-20B's published rope_scaling (factor 32, beta 32/1, 4096, truncate false) with
    /// head_dim 64, base 150000: values (f32) from transformers 5.25's `_compute_yarn_parameters`.
    #[test]
    fn gpt_oss_yarn_matches_transformers() {
        let v: Value = serde_json::from_str(
            r#"{"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false}"#,
        )
        .unwrap();
        let y = Yarn::from_hf(&v, 131072).unwrap().unwrap();
        assert!((y.attention_scale() - 1.3465735902799727).abs() < 1e-12);
        let f = y.inv_freq(64, 150_000.0);
        assert_eq!(f.len(), 32);
        // Below the ramp: the original frequencies; above it: divided by the factor.
        assert!((f[0] - 1.0).abs() < 1e-12);
        let plain = 1.0 / 150_000f64.powf(62.0 / 64.0);
        assert!((f[31] - plain / 32.0).abs() < 1e-18);
        for (i, want) in [(8usize, 0.05081327259540558f64), (12, 0.006794959306716919), (16, 0.0004564839182421565), (31, 3.023511396804679e-07)] {
            assert!((f[i] - want).abs() / want < 1e-6, "inv_freq[{i}] = {} want {want}", f[i]);
        }
        let err = Yarn::from_hf(&serde_json::json!({"rope_type": "llama3", "factor": 8.0}), 100).unwrap_err();
        assert!(err.to_string().contains("llama3"), "{err}");
        assert!(Yarn::from_hf(&serde_json::json!({"rope_type": "default", "rope_theta": 1.0}), 100).unwrap().is_none());
    }
}
