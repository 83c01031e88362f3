//! Loading models and tokenizers: Hugging Face directories and GGUF files, and fetching the
//! default model.

mod chat_template;
mod fetch;
mod gguf;
mod harmony;
mod hf;
mod tokenizer;

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};

pub use fetch::{DEFAULT_MODEL_FILE, default_models_dir, ensure_default_model};
pub use gguf::{config_from_gguf, load_gguf, tokenizer_from_gguf};
pub use harmony::ChatFormat;
pub use hf::{load_hf_dir, read_safetensors_dir, safetensors_files};
pub use tokenizer::{ChatMessage, Tokenizer};

use crate::lora::LoraConfig;
use crate::model::{BaseQuant, CausalLm, apply_base_quant};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Model dtype (f32 on CPU; GGUF weights are dequantized into it).
    pub dtype: DType,
    pub device: Device,
    /// None = full fine-tuning (every weight trainable).
    pub lora: Option<LoraConfig>,
    /// Seeds the LoRA A initialisation.
    pub seed: u64,
    /// Whether frozen weights of a quantised (GGUF) file stay quantised; see [`BaseQuant`].
    pub base_quant: BaseQuant,
    /// No weight will be trained (eval, benches): the base counts as frozen without LoRA too.
    pub inference_only: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu, lora: None, seed: 0, base_quant: BaseQuant::default(), inference_only: false }
    }
}

impl LoadOptions {
    /// Whether the base weights are frozen (LoRA or inference), so they may stay quantised.
    pub fn base_frozen(&self) -> bool {
        self.lora.is_some() || self.inference_only
    }
}

pub struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
}

/// Load a Hugging Face model directory or a `.gguf` file, whichever `path` is.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    if path.is_dir() {
        load_hf_dir(path, opts)
    } else if path.is_file() {
        load_gguf(path, opts)
    } else {
        bail!("model path {} does not exist (expected a Hugging Face directory or a .gguf file)", path.display())
    }
}

/// [`load_model`], then a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`,
/// as `sigmaforge sft`/`run` export it) merged into the weights: the model a later stage starts
/// from. `opts.lora` applies to the merged model (fresh adapters for the next stage).
pub fn load_model_with_adapter(path: &Path, adapter: Option<&Path>, opts: &LoadOptions) -> Result<LoadedModel> {
    let Some(adapter) = adapter else {
        return load_model(path, opts);
    };
    let (adapter_lora, weights) =
        crate::export::read_peft_adapter(adapter).with_context(|| format!("cannot read the LoRA adapter {}", adapter.display()))?;
    let with_adapter = LoadOptions { lora: Some(adapter_lora), ..opts.clone() };
    let loaded = load_model(path, &with_adapter)?;
    loaded.model.load_trainable(&weights).with_context(|| {
        format!("the adapter {} does not fit the model {} (was it trained on another base model?)", adapter.display(), path.display())
    })?;
    let merged: std::collections::HashMap<_, _> = loaded.model.merged_weights()?.into_iter().collect();
    let model = CausalLm::from_tensors(loaded.model.config(), merged, opts.lora.as_ref(), opts.seed, opts.dtype, &opts.device)
        .with_context(|| format!("merging the adapter {} into {}", adapter.display(), path.display()))?;
    Ok(LoadedModel { model, tokenizer: loaded.tokenizer })
}

/// The model from its weights as read (`dense`, and `quantized` GGUF blocks), with
/// `opts.base_quant` applied to the frozen base.
fn build_model(
    cfg: &crate::model::ModelConfig,
    dense: std::collections::HashMap<String, candle_core::Tensor>,
    quantized: std::collections::HashMap<String, candle_core::quantized::QTensor>,
    opts: &LoadOptions,
) -> Result<CausalLm> {
    let (dense, quantized) = apply_base_quant(opts.base_quant, opts.base_frozen(), dense, quantized, &opts.device)?;
    CausalLm::from_quantized_tensors(cfg, dense, quantized, opts.lora.as_ref(), opts.seed, !opts.inference_only, opts.dtype, &opts.device)
}

#[cfg(test)]
mod tests;
