//! GGUF files (llama.cpp format): the weights are dequantized into trainable tensors under
//! Hugging Face names, and the tokenizer is rebuilt from the GGUF metadata.
//!
//! llama.cpp's converter permutes the rows of Llama's q/k projections (it uses interleaved
//! RoPE, HF uses rotate-half); that permutation is undone here so the weights fit the HF-layout
//! model. Qwen-family conversions are not permuted.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::json;

use super::{LoadOptions, LoadedModel, Tokenizer, build_model, hf::check_vocab};
use crate::model::{BaseQuant, Family, ModelConfig, permute_rows, quantizable};

fn meta<'a>(c: &'a Content, key: &str) -> Result<&'a Value> {
    c.metadata.get(key).with_context(|| format!("GGUF metadata has no {key}"))
}

fn as_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) if *x >= 0 => *x as u64,
        Value::I16(x) if *x >= 0 => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        _ => return None,
    })
}

fn meta_usize(c: &Content, key: &str) -> Result<usize> {
    as_u64(meta(c, key)?).map(|x| x as usize).with_context(|| format!("GGUF metadata {key} is not an integer"))
}

fn opt_usize(c: &Content, key: &str) -> Option<usize> {
    c.metadata.get(key).and_then(as_u64).map(|x| x as usize)
}

fn opt_f64(c: &Content, key: &str) -> Option<f64> {
    match c.metadata.get(key)? {
        // Shortest decimal that round-trips the f32 (1e-5, not 9.99999974e-6).
        Value::F32(x) => format!("{x}").parse().ok(),
        Value::F64(x) => Some(*x),
        _ => None,
    }
}

fn opt_str<'a>(c: &'a Content, key: &str) -> Option<&'a str> {
    match c.metadata.get(key)? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn string_array(c: &Content, key: &str) -> Result<Vec<String>> {
    match meta(c, key)? {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => bail!("GGUF metadata {key} holds a non-string"),
            })
            .collect(),
        _ => bail!("GGUF metadata {key} is not an array"),
    }
}

/// The model shape in a GGUF file's metadata (an error for architectures this crate cannot run).
pub fn config_from_gguf(c: &Content) -> Result<ModelConfig> {
    let arch = opt_str(c, "general.architecture").context("GGUF metadata has no general.architecture")?;
    let family = match arch {
        "llama" => Family::Llama,
        "qwen3" => Family::Qwen3,
        other => bail!("GGUF architecture {other:?} is not supported (supported: llama, qwen3)"),
    };
    let k = |s: &str| format!("{arch}.{s}");
    let hidden_size = meta_usize(c, &k("embedding_length"))?;
    let num_attention_heads = meta_usize(c, &k("attention.head_count"))?;
    let num_key_value_heads = opt_usize(c, &k("attention.head_count_kv")).unwrap_or(num_attention_heads);
    if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        bail!("GGUF: head_count {num_attention_heads} is not a multiple of head_count_kv {num_key_value_heads}");
    }
    let head_dim = opt_usize(c, &k("attention.key_length")).unwrap_or(hidden_size / num_attention_heads);
    let vocab_size = match c.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims()[0],
        None => bail!("GGUF has no token_embd.weight tensor"),
    };
    let eos: Vec<u32> = opt_usize(c, "tokenizer.ggml.eos_token_id").map(|x| vec![x as u32]).unwrap_or_default();
    Ok(ModelConfig {
        family,
        vocab_size,
        hidden_size,
        intermediate_size: meta_usize(c, &k("feed_forward_length"))?,
        num_hidden_layers: meta_usize(c, &k("block_count"))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: opt_f64(c, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
        rope_theta: opt_f64(c, &k("rope.freq_base")).unwrap_or(10_000.0),
        max_position_embeddings: opt_usize(c, &k("context_length")).unwrap_or(4096),
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        bos_token_id: opt_usize(c, "tokenizer.ggml.bos_token_id").map(|x| x as u32),
        eos_token_ids: eos,
        ..ModelConfig::dense_defaults()
    })
}

/// GGUF tensor name -> HF tensor name.
fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, name) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf = match name {
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "attn_q_norm.weight" => "self_attn.q_norm.weight",
                "attn_k_norm.weight" => "self_attn.k_norm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    })
}

/// The row order that undoes llama.cpp's q/k permutation of a [heads * hd, in] weight: new row
/// (head, j, pair) is old row (head, pair, j). Applied to dense and quantised rows alike.
fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let half = rows / heads / 2;
    let mut order = Vec::with_capacity(rows);
    for head in 0..heads {
        for j in 0..2 {
            for pair in 0..half {
                order.push(head * 2 * half + pair * 2 + j);
            }
        }
    }
    order
}

/// A weight [`BaseQuant`] may keep in the file's blocks: a 2-D quantisable weight stored in a
/// block quantisation (not F32/F16/BF16).
fn block_quantized(hf: &str, q: &QTensor) -> bool {
    quantizable(hf) && q.shape().rank() == 2 && !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The inverse of [`unpermute_order`] (what llama.cpp's converter does), for writing test GGUFs.
#[cfg(test)]
pub fn permute_for_gguf(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    Ok(w.reshape((heads, 2, hd / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
    let cfg = config_from_gguf(&content).with_context(|| format!("in {}", path.display()))?;
    let mut tensors = HashMap::new();
    let mut quantized = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(name) else {
            // e.g. rope_freqs.weight: derived data the HF layout does not store.
            continue;
        };
        let q = content.tensor(&mut reader, name, &Device::Cpu).with_context(|| format!("{}: reading tensor {name}", path.display()))?;
        // llama.cpp permutes Llama's q/k rows (interleaved RoPE); this order undoes it.
        let heads = match (cfg.family, name) {
            (Family::Llama, n) if n.ends_with("attn_q.weight") => Some(cfg.num_attention_heads),
            (Family::Llama, n) if n.ends_with("attn_k.weight") => Some(cfg.num_key_value_heads),
            _ => None,
        };
        let row_order = heads.map(|h| unpermute_order(q.shape().dims()[0], h));
        if opts.base_frozen() && opts.base_quant != BaseQuant::Dequantize && block_quantized(&hf, &q) {
            // Kept in its blocks for now; `build_model` decides (BaseQuant) what stays so.
            let q = match &row_order {
                Some(order) => permute_rows(&q, order)?,
                None => q,
            };
            quantized.insert(hf, q);
            continue;
        }
        let mut t = q.dequantize(&Device::Cpu).with_context(|| format!("dequantizing {name}"))?;
        if let Some(order) = &row_order {
            let index: Vec<u32> = order.iter().map(|&r| r as u32).collect();
            t = t.index_select(&Tensor::from_vec(index, order.len(), &Device::Cpu)?, 0)?;
        }
        tensors.insert(hf, t);
    }
    let model = build_model(&cfg, tensors, quantized, opts).with_context(|| format!("loading weights from {}", path.display()))?;
    let tokenizer = tokenizer_from_gguf(&content).with_context(|| format!("{}: rebuilding the tokenizer", path.display()))?;
    check_vocab(&tokenizer, &cfg)?;
    Ok(LoadedModel { model, tokenizer })
}

/// Rebuild a Hugging Face tokenizer from GGUF metadata (byte-level BPE, `tokenizer.ggml.model`
/// = "gpt2"), with the pre-tokenizer named by `tokenizer.ggml.pre`.
pub fn tokenizer_from_gguf(c: &Content) -> Result<Tokenizer> {
    let model = opt_str(c, "tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        bail!("GGUF tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")");
    }
    let tokens = string_array(c, "tokenizer.ggml.tokens")?;
    let merges = string_array(c, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| as_u64(v).unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    // 3 = control (special), 4 = user-defined: both must be matched whole, before BPE.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] == 3})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = match opt_str(c, "tokenizer.ggml.pre").unwrap_or("default") {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}),
        "gpt2" | "default" => byte_level.clone(),
        other => bail!("GGUF pre-tokenizer {other:?} is not supported (supported: smollm, qwen2, gpt2)"),
    };
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let inner: tokenizers::Tokenizer =
        tj.to_string().parse().map_err(|e| anyhow::anyhow!("the tokenizer rebuilt from GGUF metadata is invalid: {e}"))?;
    let token = |key: &str| opt_usize(c, key).and_then(|i| tokens.get(i).cloned());
    Tokenizer::new(
        inner,
        opt_str(c, "tokenizer.chat_template").map(str::to_string),
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
        token("tokenizer.ggml.padding_token_id"),
        &[],
    )
}

/// Qwen2/Qwen3's pre-tokenizer split pattern (from their tokenizer.json).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
