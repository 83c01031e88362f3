//! Exports in the formats other tools read: a merged Hugging Face model directory
//! (`config.json`, `model.safetensors`, tokenizer files) and a PEFT LoRA adapter
//! (`adapter_config.json`, `adapter_model.safetensors` with PEFT's key names).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::Tensor;

use crate::load::Tokenizer;
use crate::model::CausalLm;

/// PEFT stores adapter weights of a causal LM under this prefix.
const PEFT_PREFIX: &str = "base_model.model.";

/// Writes `dir` atomically (temporary sibling + rename), replacing an older export.
fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().context("export directory has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir.file_name().context("export directory has no name")?.to_string_lossy().into_owned();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp)?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!("cannot export {}", dir.display())));
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    fs::rename(&tmp, dir).with_context(|| format!("cannot move export into {}", dir.display()))?;
    Ok(())
}

/// The model with any LoRA adapters merged into the base weights, as a Hugging Face directory
/// that `transformers.AutoModelForCausalLM.from_pretrained` (and our own loader) reads.
pub fn merged_hf_dir(model: &CausalLm, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    write_dir_atomically(dir, |tmp| {
        let weights: HashMap<String, Tensor> = model.merged_weights()?.into_iter().collect();
        candle_core::safetensors::save(&weights, tmp.join("model.safetensors"))?;
        let config = model.hf_config_json();
        fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        tokenizer.save_hf_files(tmp)?;
        Ok(())
    })
}

/// The LoRA adapter in PEFT's format.
pub fn peft_adapter(model: &CausalLm, dir: &Path) -> Result<()> {
    let Some(lora) = model.lora_config() else {
        bail!("the model has no LoRA adapters to export (full fine-tuning: use the merged export)");
    };
    write_dir_atomically(dir, |tmp| {
        let tensors: HashMap<String, Tensor> =
            model.trainable_vars().into_iter().map(|(n, v)| (format!("{PEFT_PREFIX}{n}"), v.as_tensor().detach())).collect();
        candle_core::safetensors::save(&tensors, tmp.join("adapter_model.safetensors"))?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": lora.rank,
            "lora_alpha": lora.alpha,
            "lora_dropout": 0.0,
            "target_modules": adapted_modules(model),
            "target_parameters": if lora.target_parameters.is_empty() { serde_json::Value::Null } else { serde_json::json!(lora.target_parameters) },
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "base_model_name_or_path": serde_json::Value::Null,
        });
        fs::write(tmp.join("adapter_config.json"), serde_json::to_string_pretty(&config)?)?;
        Ok(())
    })
}

/// The module names (e.g. "q_proj") that carry adapters, in LINEAR_MODULES order: what PEFT's target_modules
/// should list. Read off the model rather than the LoRA config, so that "all-linear" lists only
/// the modules this architecture has (GPT-OSS has no gate/up/down projections).
fn adapted_modules(model: &CausalLm) -> Vec<String> {
    let adapted: std::collections::HashSet<String> = model
        .trainable_vars()
        .into_iter()
        .filter_map(|(n, _)| n.strip_suffix(".lora_A.weight").and_then(|m| m.rsplit('.').next()).map(str::to_string))
        .collect();
    crate::lora::LINEAR_MODULES.iter().filter(|m| adapted.contains(**m)).map(|m| m.to_string()).collect()
}

/// Reads a PEFT adapter directory: its LoRA settings (as our [`crate::lora::LoraConfig`]) and
/// weights under the model's trainable names, ready for [`CausalLm::load_trainable`] on a
/// model built with that LoRA config.
pub fn read_peft_adapter(dir: &Path) -> Result<(crate::lora::LoraConfig, HashMap<String, Tensor>)> {
    let cfg_path = dir.join("adapter_config.json");
    let cfg: serde_json::Value = serde_json::from_str(&fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?)
        .with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let field = |k: &str| cfg.get(k).with_context(|| format!("{}: missing {k}", cfg_path.display()));
    ensure!(field("peft_type")?.as_str() == Some("LORA"), "{}: peft_type is not \"LORA\"", cfg_path.display());
    let rank = field("r")?.as_u64().with_context(|| format!("{}: r is not an integer", cfg_path.display()))? as usize;
    let alpha = field("lora_alpha")?.as_f64().with_context(|| format!("{}: lora_alpha is not a number", cfg_path.display()))?;
    let target_modules = match field("target_modules")? {
        serde_json::Value::Null => vec![], // only target_parameters
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => bail!("{}: target_modules must be a list of names", cfg_path.display()),
    };
    let target_parameters = match cfg.get("target_parameters") {
        None | Some(serde_json::Value::Null) => vec![],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => bail!("{}: target_parameters must be a list of names", cfg_path.display()),
    };
    let lora = crate::lora::LoraConfig { rank, alpha, target_modules, target_parameters };
    lora.validate().with_context(|| format!("{}", cfg_path.display()))?;
    let weights_path = dir.join("adapter_model.safetensors");
    let raw = candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot read {}", weights_path.display()))?;
    let mut out = HashMap::new();
    for (k, v) in raw {
        let name = k.strip_prefix(PEFT_PREFIX).with_context(|| format!("{}: tensor {k} lacks the {PEFT_PREFIX} prefix", weights_path.display()))?;
        // PEFT may insert the adapter name ("lora_A.default.weight") in memory, not in files;
        // accept both spellings.
        out.insert(name.replace(".default.weight", ".weight"), v);
    }
    Ok((lora, out))
}
