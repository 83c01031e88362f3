//! Loading models and tokenizers: Hugging Face directories and GGUF files, and fetching the
//! default model.

mod chat_template;
mod fetch;
mod gguf;
mod hf;
mod tokenizer;

use std::path::Path;

use anyhow::{Result, bail};
use candle_core::{DType, Device};

pub use fetch::{DEFAULT_MODEL_FILE, default_models_dir, ensure_default_model};
pub use gguf::{load_gguf, tokenizer_from_gguf};
pub use hf::{load_hf_dir, read_safetensors_dir};
pub use tokenizer::{ChatMessage, Tokenizer};

use crate::lora::LoraConfig;
use crate::model::CausalLm;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Model dtype (f32 on CPU; GGUF weights are dequantized into it).
    pub dtype: DType,
    pub device: Device,
    /// None = full fine-tuning (every weight trainable).
    pub lora: Option<LoraConfig>,
    /// Seeds the LoRA A initialisation.
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu, lora: None, seed: 0 }
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

#[cfg(test)]
mod tests;
