//! Hugging Face model directories: config.json, model.safetensors or sharded
//! model-0000x-of-0000y.safetensors (+ model.safetensors.index.json), tokenizer files.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use serde_json::Value;

use super::{LoadOptions, LoadedModel, Tokenizer};
use crate::model::ModelConfig;

/// The directory's safetensors files: the shards its index names, or `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = v.get("weight_map").and_then(Value::as_object).with_context(|| format!("{}: no weight_map object", index.display()))?;
        let names: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else {
        bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
    };
    Ok(files)
}

/// All tensors of the directory's safetensors file(s), on the CPU, in their stored dtype.
pub fn read_safetensors_dir(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for f in safetensors_files(dir)? {
        let part = candle_core::safetensors::load(&f, &Device::Cpu).with_context(|| format!("reading safetensors file {}", f.display()))?;
        tensors.extend(part);
    }
    Ok(tensors)
}

pub fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{} is not a Hugging Face model directory: cannot read config.json", dir.display()))?;
    let cfg = ModelConfig::from_hf_config_json(&text).with_context(|| format!("in {}", cfg_path.display()))?;
    let tensors = read_safetensors_dir(dir)?;
    let model = super::build_model(&cfg, tensors, HashMap::new(), opts).with_context(|| format!("loading weights from {}", dir.display()))?;
    let mut tokenizer = Tokenizer::from_hf_dir(dir)?;
    tokenizer.add_eos_ids(&cfg.eos_token_ids);
    check_vocab(&tokenizer, &cfg)?;
    Ok(LoadedModel { model, tokenizer })
}

pub(super) fn check_vocab(tokenizer: &Tokenizer, cfg: &ModelConfig) -> Result<()> {
    // Models often pad the embedding beyond the tokenizer; the reverse would index out of range.
    if tokenizer.vocab_size() > cfg.vocab_size {
        bail!("the tokenizer has {} tokens but the model's vocabulary is only {}", tokenizer.vocab_size(), cfg.vocab_size);
    }
    Ok(())
}
