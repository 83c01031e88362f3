//! `sigmaforge model inspect` and `sigmaforge model perplexity` through the built binary, on tiny
//! random models made here: the report's fields against the model itself, the perplexity's NLL
//! against a direct computation, the harmony tokenizer's chat format, and the errors.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sigmaforge_e2e::{run_sigmaforge, scratch_dir};
use sigmaforge_model::export;
use sigmaforge_model::load::{LoadOptions, load_model};
use sigmaforge_model::model::{AdapterMode, CausalLm, ModelConfig};
use sigmaforge_model::testing::{HARMONY_BYTE_VOCAB, harmony_byte_tokenizer, tiny_tokenizer};

fn tiny_model_dir(dir: &Path) -> CausalLm {
    let mc = ModelConfig::tiny_qwen3();
    let model = CausalLm::random(&mc, None, 7, DType::F32, &Device::Cpu).unwrap();
    export::merged_hf_dir(&model, &tiny_tokenizer(mc.vocab_size).unwrap(), dir).unwrap();
    model
}

fn json_of(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn inspect_reports_what_the_directory_holds() {
    let root = scratch_dir("cli-model-inspect");
    let dir = root.join("model");
    let model = tiny_model_dir(&dir);
    let path = dir.display().to_string();

    let (code, out, err) = run_sigmaforge(&["model", "inspect", &path, "--json"], None);
    assert_eq!(code, 0, "{err}");
    let r = json_of(&out);
    assert_eq!(r["format"], "hf");
    assert_eq!(r["architecture"], "Qwen3ForCausalLM");
    assert_eq!(r["model_type"], "qwen3");
    assert_eq!(r["loadable"], true);
    assert_eq!(r["parameters"].as_u64().unwrap() as usize, model.num_parameters());
    assert_eq!(r["dtypes"]["F32"].as_u64().unwrap() as usize, model.num_parameters());
    let layers = model.config().num_hidden_layers as u64;
    let q = r["tensor_kinds"].as_array().unwrap().iter().find(|k| k["kind"] == "model.layers.*.self_attn.q_proj.weight").expect("q_proj kind");
    assert_eq!((q["count"].as_u64().unwrap(), q["dtype"].as_str().unwrap()), (layers, "F32"));
    let specials: Vec<&str> = r["tokenizer"]["special_tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(specials, ["<pad>", "<eos>", "<bos>"]);
    assert_eq!(r["tokenizer"]["chat_format"], "template");
    assert_eq!(r["tokenizer"]["eos_token"], "<eos>");
    assert!(r["chat_template"].as_str().unwrap().contains("add_generation_prompt"));

    let (code, out, err) = run_sigmaforge(&["model", "inspect", &path], None);
    assert_eq!(code, 0, "{err}");
    for line in ["architecture: Qwen3ForCausalLM (model_type qwen3)", "loadable:     yes", "chat format template", "special:      <pad> <eos> <bos>"]
    {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains("model.layers.*.mlp.down_proj.weight"), "{out}");

    // A model type this build cannot run is still inspected, and says why it is not loadable.
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "mamba".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (code, out, err) = run_sigmaforge(&["model", "inspect", &path, "--json"], None);
    assert_eq!(code, 0, "{err}");
    let r = json_of(&out);
    assert_eq!(r["loadable"], false);
    assert!(r["load_error"].as_str().unwrap().contains("\"mamba\""), "{r}");

    let (code, _, err) = run_sigmaforge(&["model", "inspect", "/nonexistent/model.gguf"], None);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/model.gguf") && err.contains("does not exist"), "{err}");
}

#[test]
fn inspect_names_the_harmony_format_and_its_stop_tokens() {
    let root = scratch_dir("cli-model-harmony");
    let dir = root.join("model");
    let mut mc = ModelConfig::tiny_qwen3();
    mc.vocab_size = HARMONY_BYTE_VOCAB;
    let model = CausalLm::random(&mc, None, 1, DType::F32, &Device::Cpu).unwrap();
    export::merged_hf_dir(&model, &harmony_byte_tokenizer().unwrap(), &dir).unwrap();
    let (code, out, err) = run_sigmaforge(&["model", "inspect", &dir.display().to_string(), "--json"], None);
    assert_eq!(code, 0, "{err}");
    let t = &json_of(&out)["tokenizer"];
    assert_eq!(t["chat_format"], "harmony");
    assert_eq!(t["stop_tokens"], serde_json::json!(["<|return|>", "<|call|>"]));
    let specials = t["special_tokens"].as_array().unwrap();
    for s in ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>"] {
        assert!(specials.iter().any(|x| x == s), "{s} missing from {specials:?}");
    }
}

/// The text of `n` words of the tiny tokenizer's vocabulary.
fn words(n: usize, vocab: usize) -> String {
    (0..n).map(|i| format!("w{}", 4 + (i * 7 + i / 3) % (vocab - 4))).collect::<Vec<_>>().join(" ")
}

#[test]
fn perplexity_is_the_mean_nll_of_each_chunks_second_half() {
    let root = scratch_dir("cli-model-ppl");
    let dir = root.join("model");
    tiny_model_dir(&dir);
    let text_path = root.join("text.txt");
    let vocab = ModelConfig::tiny_qwen3().vocab_size;
    std::fs::write(&text_path, words(70, vocab)).unwrap();
    let (model_arg, file_arg) = (dir.display().to_string(), text_path.display().to_string());

    let (code, out, err) = run_sigmaforge(&["model", "perplexity", "--model", &model_arg, "--file", &file_arg, "--ctx", "32", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let r = json_of(&out);
    assert_eq!((r["tokens"].as_u64(), r["chunks"].as_u64(), r["scored"].as_u64()), (Some(70), Some(2), Some(2 * 15)));
    assert_eq!(r["bos"], false, "the tiny tokenizer adds no BOS");

    // Directly: load the directory, run each 32-token chunk, log-softmax, positions 16..31.
    let loaded = load_model(&dir, &LoadOptions::default()).unwrap();
    let ids = loaded.tokenizer.encode(&std::fs::read_to_string(&text_path).unwrap(), true).unwrap();
    assert_eq!(ids.len(), 70);
    let mut total = 0.0f64;
    for chunk in ids.chunks_exact(32) {
        let input = Tensor::new(chunk, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mask = Tensor::ones((1, 32), DType::U32, &Device::Cpu).unwrap();
        let logits = loaded.model.forward(&input, &mask, None, AdapterMode::Disabled).unwrap().squeeze(0).unwrap();
        let logp = candle_nn_free_log_softmax(&logits);
        for j in 16..31 {
            total -= logp[j][chunk[j + 1] as usize];
        }
    }
    let expected = total / 30.0;
    let mean_nll = r["mean_nll"].as_f64().unwrap();
    assert!((mean_nll - expected).abs() < 1e-5, "CLI {mean_nll} vs direct {expected}");
    assert!((r["perplexity"].as_f64().unwrap() - expected.exp()).abs() < 1e-4);
    // A random model is close to uniform over the vocabulary, never far from ln(V).
    assert!((expected - (vocab as f64).ln()).abs() < 1.0, "{expected}");

    let (code, out, err) = run_sigmaforge(&["model", "perplexity", "--model", &model_arg, "--file", &file_arg, "--ctx", "32"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tokens:     70 (2 chunks of 32, 30 scored)"), "{out}");
    assert!(out.contains(&format!("mean NLL:   {expected:.4} nats/token")), "{out}");
    assert!(out.contains("perplexity: "), "{out}");

    // Errors name the input and the problem.
    let (code, _, err) = run_sigmaforge(&["model", "perplexity", "--model", &model_arg, "--file", &file_arg, "--ctx", "128"], None);
    assert_eq!(code, 2);
    assert!(err.contains(&file_arg) && err.contains("70 tokens") && err.contains("--ctx"), "{err}");
    let missing = root.join("missing.txt").display().to_string();
    let (code, _, err) = run_sigmaforge(&["model", "perplexity", "--model", &model_arg, "--file", &missing], None);
    assert_eq!(code, 2);
    assert!(err.contains(&missing), "{err}");
}

/// Row-wise log-softmax in f64, without candle's ops: an independent check of the CLI's numbers.
fn candle_nn_free_log_softmax(logits: &Tensor) -> Vec<Vec<f64>> {
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    rows.into_iter()
        .map(|row| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
            let lse = max + row.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
            row.into_iter().map(|x| f64::from(x) - lse).collect()
        })
        .collect()
}

/// The default model (SmolLM2-135M-Instruct, Q4_1 GGUF), when it has been fetched
/// (`sigmaforge run` does it; ignored because it needs that download).
#[test]
#[ignore = "needs the default GGUF model in ~/.cache/sigmaforge/models"]
fn inspect_reads_the_default_gguf() {
    let path = sigmaforge_model::load::default_models_dir().join(sigmaforge_model::load::DEFAULT_MODEL_FILE);
    let (code, out, err) = run_sigmaforge(&["model", "inspect", &path.display().to_string(), "--json"], None);
    assert_eq!(code, 0, "{err}");
    let r = json_of(&out);
    assert_eq!((r["format"].as_str(), r["architecture"].as_str(), r["loadable"].as_bool()), (Some("gguf"), Some("llama"), Some(true)));
    assert_eq!(r["quantization"], "MOSTLY_Q4_1");
    assert!(r["dtypes"]["Q4_1"].as_u64().unwrap() > 100_000_000, "{}", r["dtypes"]);
    assert_eq!(r["config"]["block_count"], 30);
    assert_eq!(r["tokenizer"]["add_bos"], false);
    assert!(r["chat_template"].as_str().unwrap().contains("<|im_start|>"));
}
