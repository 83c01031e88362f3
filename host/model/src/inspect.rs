//! What a checkpoint is, read from its metadata without loading the weights (`sigmaforge model
//! inspect`): architecture, parameter count, dtypes and quantisation per tensor kind, the
//! tokenizer's special tokens and chat format, the chat template. Works on architectures this
//! crate cannot run (it says so), since only headers are read: safetensors' JSON header, GGUF's
//! metadata and tensor table.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use serde::Serialize;
use serde_json::Value;

use crate::load::{Tokenizer, config_from_gguf, safetensors_files, tokenizer_from_gguf};
use crate::model::ModelConfig;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    pub path: String,
    /// `hf` (a Hugging Face directory) or `gguf`.
    pub format: &'static str,
    /// HF `architectures[0]` (else `model_type`), GGUF `general.architecture`.
    pub architecture: String,
    /// HF `model_type`.
    pub model_type: Option<String>,
    /// GGUF `general.name`.
    pub name: Option<String>,
    /// Whether this build of sigmaforge can load the model, and why not.
    pub loadable: bool,
    pub load_error: Option<String>,
    /// Weights, counting each packed 4-bit value (MXFP4 blocks, GGUF quants) as one parameter.
    pub parameters: u64,
    pub tensors: usize,
    /// Parameters per storage dtype (`F32`, `BF16`, `Q4_1`, `MXFP4`…).
    pub dtypes: BTreeMap<String, u64>,
    pub tensor_kinds: Vec<TensorKind>,
    /// HF `quantization_config`, or GGUF `general.file_type` by name.
    pub quantization: Option<Value>,
    /// Shape hyperparameters (HF config.json entries, GGUF `<arch>.*` metadata).
    pub config: BTreeMap<String, Value>,
    pub tokenizer: Option<TokenizerReport>,
    pub tokenizer_error: Option<String>,
    pub chat_template: Option<String>,
}

/// Tensors that differ only in their layer number, e.g. `model.layers.*.self_attn.q_proj.weight`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorKind {
    pub kind: String,
    pub count: usize,
    /// Storage dtypes, comma-separated when the layers differ.
    pub dtype: String,
    /// Shape of one tensor of the kind.
    pub shape: Vec<usize>,
    pub parameters: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenizerReport {
    pub vocab_size: usize,
    /// `template` (the Jinja chat template) or `harmony` (gpt-oss).
    pub chat_format: &'static str,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Every token that ends a completion.
    pub stop_tokens: Vec<String>,
    /// Whether a BOS token goes before a text (HF: the tokenizer's own post-processor; GGUF:
    /// `tokenizer.ggml.add_bos_token`, false when absent, as llama.cpp does for BPE vocabularies).
    pub add_bos: bool,
    pub special_tokens: Vec<String>,
}

/// The report of a Hugging Face directory or a `.gguf` file.
pub fn inspect(path: &Path) -> Result<ModelReport> {
    if path.is_dir() {
        inspect_hf(path)
    } else if path.is_file() {
        inspect_gguf(path)
    } else {
        bail!("model path {} does not exist (expected a Hugging Face directory or a .gguf file)", path.display())
    }
}

/// `model.layers.12.mlp.up_proj.weight` → `model.layers.*.mlp.up_proj.weight`.
fn kind_of(name: &str) -> String {
    name.split('.').map(|part| if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) { "*" } else { part }).collect::<Vec<_>>().join(".")
}

struct TensorEntry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    parameters: u64,
}

fn summarize(entries: &[TensorEntry]) -> (u64, BTreeMap<String, u64>, Vec<TensorKind>) {
    let mut dtypes = BTreeMap::new();
    let mut kinds: BTreeMap<String, TensorKind> = BTreeMap::new();
    for e in entries {
        *dtypes.entry(e.dtype.clone()).or_insert(0) += e.parameters;
        let k = kinds.entry(kind_of(&e.name)).or_insert_with(|| TensorKind {
            kind: kind_of(&e.name),
            count: 0,
            dtype: String::new(),
            shape: e.shape.clone(),
            parameters: 0,
        });
        k.count += 1;
        k.parameters += e.parameters;
        if !k.dtype.split(", ").any(|d| d == e.dtype) {
            if !k.dtype.is_empty() {
                k.dtype.push_str(", ");
            }
            k.dtype.push_str(&e.dtype);
        }
    }
    (entries.iter().map(|e| e.parameters).sum(), dtypes, kinds.into_values().collect())
}

fn tokenizer_report(tok: &Tokenizer, add_bos: bool, special_tokens: Vec<String>) -> TokenizerReport {
    let name = |id: u32| tok.inner().id_to_token(id).unwrap_or_else(|| format!("<id {id}>"));
    TokenizerReport {
        vocab_size: tok.vocab_size(),
        chat_format: tok.chat_format().name(),
        bos_token: tok.bos_token().map(str::to_owned),
        eos_token: tok.eos_token().map(str::to_owned),
        stop_tokens: tok.eos_token_ids().iter().map(|&i| name(i)).collect(),
        add_bos,
        special_tokens,
    }
}

/// The JSON header of one safetensors file: tensor name → (dtype, shape).
fn safetensors_header(path: &Path) -> Result<Vec<(String, String, Vec<usize>)>> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_context(|| format!("{}: too short for a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        bail!("{}: safetensors header of {len} bytes is not plausible", path.display());
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&buf).with_context(|| format!("{}: the safetensors header is not a JSON object", path.display()))?;
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype").and_then(Value::as_str).with_context(|| format!("{}: tensor {name} has no dtype", path.display()))?;
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: tensor {name} has no shape", path.display()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).with_context(|| format!("{}: tensor {name} has a bad shape", path.display())))
            .collect::<Result<Vec<_>>>()?;
        out.push((name, dtype.to_owned(), shape));
    }
    Ok(out)
}

fn inspect_hf(dir: &Path) -> Result<ModelReport> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{} is not a Hugging Face model directory: cannot read config.json", dir.display()))?;
    let cfg: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
    let model_type = cfg.get("model_type").and_then(Value::as_str).map(str::to_owned);
    let architecture = cfg
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| model_type.clone())
        .unwrap_or_else(|| "unknown".to_owned());
    let mut entries = Vec::new();
    for file in safetensors_files(dir)? {
        for (name, dtype, shape) in safetensors_header(&file)? {
            let elements: u64 = shape.iter().map(|&d| d as u64).product();
            // gpt-oss's MXFP4 experts: `*_blocks` hold two 4-bit values per byte, `*_scales` one
            // shared exponent per 32 values (not parameters of their own).
            let (dtype, parameters) = match (name.rsplit('.').next().unwrap_or(""), dtype.as_str()) {
                (last, "U8") if last.ends_with("_blocks") => ("MXFP4".to_owned(), elements * 2),
                (last, "U8") if last.ends_with("_scales") => ("MXFP4 scales".to_owned(), 0),
                _ => (dtype, elements),
            };
            entries.push(TensorEntry { name, dtype, shape, parameters });
        }
    }
    let (parameters, dtypes, tensor_kinds) = summarize(&entries);
    let keys = [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "rope_theta",
        "rope_scaling",
        "sliding_window",
        "num_local_experts",
        "num_experts_per_tok",
        "experts_per_token",
        "tie_word_embeddings",
        "torch_dtype",
    ];
    let config = keys.iter().filter_map(|k| cfg.get(*k).filter(|v| !v.is_null()).map(|v| (k.to_string(), v.clone()))).collect();
    let load_error = ModelConfig::from_hf_config_json(&text).err().map(|e| format!("{e:#}"));
    let (tokenizer, tokenizer_error, chat_template) = match Tokenizer::from_hf_dir(dir) {
        Ok(tok) => {
            let specials: Vec<String> = tok
                .inner()
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, t)| t.special)
                .map(|(id, t)| (id, t.content))
                .collect::<BTreeMap<_, _>>()
                .into_values()
                .collect();
            // The tokenizer's own post-processor decides BOS, as transformers' encode does.
            let bos_id = tok.bos_token().and_then(|b| tok.token_to_id(b));
            let add_bos = bos_id.is_some() && tok.encode("a", true).ok().and_then(|ids| ids.first().copied()) == bos_id;
            let template = tok.chat_template().map(str::to_owned);
            (Some(tokenizer_report(&tok, add_bos, specials)), None, template)
        }
        Err(e) => (None, Some(format!("{e:#}")), None),
    };
    Ok(ModelReport {
        path: dir.display().to_string(),
        format: "hf",
        architecture,
        model_type,
        name: None,
        loadable: load_error.is_none(),
        load_error,
        parameters,
        tensors: entries.len(),
        dtypes,
        tensor_kinds,
        quantization: cfg.get("quantization_config").filter(|v| !v.is_null()).cloned(),
        config,
        tokenizer,
        tokenizer_error,
        chat_template,
    })
}

/// llama.cpp's `general.file_type` (`llama_ftype`) names, for the common types.
fn gguf_file_type(t: u64) -> String {
    let name = match t {
        0 => "ALL_F32",
        1 => "MOSTLY_F16",
        2 => "MOSTLY_Q4_0",
        3 => "MOSTLY_Q4_1",
        7 => "MOSTLY_Q8_0",
        8 => "MOSTLY_Q5_0",
        9 => "MOSTLY_Q5_1",
        10 => "MOSTLY_Q2_K",
        11 => "MOSTLY_Q3_K_S",
        12 => "MOSTLY_Q3_K_M",
        13 => "MOSTLY_Q3_K_L",
        14 => "MOSTLY_Q4_K_S",
        15 => "MOSTLY_Q4_K_M",
        16 => "MOSTLY_Q5_K_S",
        17 => "MOSTLY_Q5_K_M",
        18 => "MOSTLY_Q6_K",
        32 => "MOSTLY_BF16",
        38 => "MOSTLY_MXFP4_MOE",
        _ => return format!("file_type {t}"),
    };
    name.to_owned()
}

fn gguf_scalar(v: &GgufValue) -> Option<Value> {
    Some(match v {
        GgufValue::U8(x) => (*x).into(),
        GgufValue::I8(x) => (*x).into(),
        GgufValue::U16(x) => (*x).into(),
        GgufValue::I16(x) => (*x).into(),
        GgufValue::U32(x) => (*x).into(),
        GgufValue::I32(x) => (*x).into(),
        GgufValue::U64(x) => (*x).into(),
        GgufValue::I64(x) => (*x).into(),
        // Shortest decimal that round-trips the f32 (1e-5, not 9.99999974e-6).
        GgufValue::F32(x) => format!("{x}").parse::<f64>().ok()?.into(),
        GgufValue::F64(x) => (*x).into(),
        GgufValue::Bool(x) => (*x).into(),
        GgufValue::String(s) => s.clone().into(),
        GgufValue::Array(_) => return None,
    })
}

fn inspect_gguf(path: &Path) -> Result<ModelReport> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = Content::read(&mut BufReader::new(file)).with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
    let md = &content.metadata;
    let string = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
    let architecture = string("general.architecture").unwrap_or_else(|| "unknown".to_owned());
    let entries: Vec<TensorEntry> = content
        .tensor_infos
        .iter()
        .map(|(name, info)| TensorEntry {
            name: name.clone(),
            dtype: format!("{:?}", info.ggml_dtype),
            shape: info.shape.dims().to_vec(),
            parameters: info.shape.elem_count() as u64,
        })
        .collect();
    let (parameters, dtypes, tensor_kinds) = summarize(&entries);
    let prefix = format!("{architecture}.");
    let config =
        md.iter().filter(|(k, _)| k.starts_with(&prefix)).filter_map(|(k, v)| Some((k[prefix.len()..].to_owned(), gguf_scalar(v)?))).collect();
    let quantization = md.get("general.file_type").and_then(|v| v.to_u32().ok()).map(|t| Value::String(gguf_file_type(t.into())));
    let load_error = config_from_gguf(&content).err().map(|e| format!("{e:#}"));
    let specials: Vec<String> = match (md.get("tokenizer.ggml.tokens"), md.get("tokenizer.ggml.token_type")) {
        (Some(GgufValue::Array(tokens)), Some(GgufValue::Array(types))) => tokens
            .iter()
            .zip(types)
            .filter(|(_, ty)| ty.to_i32().ok() == Some(3) || ty.to_u32().ok() == Some(3))
            .filter_map(|(t, _)| t.to_string().ok().cloned())
            .collect(),
        _ => Vec::new(),
    };
    let add_bos = md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    let (tokenizer, tokenizer_error) = match tokenizer_from_gguf(&content) {
        Ok(tok) => (Some(tokenizer_report(&tok, add_bos, specials)), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Ok(ModelReport {
        path: path.display().to_string(),
        format: "gguf",
        architecture,
        model_type: None,
        name: string("general.name"),
        loadable: load_error.is_none(),
        load_error,
        parameters,
        tensors: entries.len(),
        dtypes,
        tensor_kinds,
        quantization,
        config,
        tokenizer,
        tokenizer_error,
        chat_template: string("tokenizer.chat_template"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_numbers_fold_into_kinds() {
        assert_eq!(kind_of("model.layers.12.self_attn.q_proj.weight"), "model.layers.*.self_attn.q_proj.weight");
        assert_eq!(kind_of("blk.0.attn_q.weight"), "blk.*.attn_q.weight");
        assert_eq!(kind_of("token_embd.weight"), "token_embd.weight");
    }

    #[test]
    fn missing_paths_and_directories_without_config_are_named() {
        let err = inspect(Path::new("/nonexistent/model")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/model") && err.contains("does not exist"), "{err}");
        let dir = std::env::temp_dir().join(format!("sf-inspect-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = format!("{:#}", inspect(&dir).unwrap_err());
        assert!(err.contains("config.json"), "{err}");
    }
}
