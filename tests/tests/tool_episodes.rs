//! Tool turns in rollouts against the real plugins: a scripted policy calls the search tool
//! (dist/search.wasm) through the plugin runtime, the result comes back into the episode, and
//! the final rule is scored by the sigma plugin (dist/sigma.wasm). Malformed calls and the
//! tool's own errors reach the model as error text and the episode still ends in a scored answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use sigma_task::fixtures::reference_answer;
use sigmaforge_model::episode::ToolsSection;
use sigmaforge_model::episode::{ToolUse, run_episodes};
use sigmaforge_model::load::ChatMessage;
use sigmaforge_model::model::Family;
use sigmaforge_model::testing::{ScriptedPolicy, chatml_byte_tokenizer, harmony_byte_tokenizer};
use sigmaforge_reward::Toolbox;
use sigmaforge_runtime::{PluginConfig, PluginsConfig, Runtime, RuntimeOptions, TaskRef};
use sigmaforge_toolcall::ToolFormat;

/// The sigma task plugin, the search tool as the trainer's tool box, the first train task and
/// the answer its reference rule gives (full marks: 1.1).
fn sigma_and_search() -> (Arc<sigmaforge_runtime::TaskPlugin>, Arc<Toolbox>, sigmaforge_runtime::Task, String) {
    let data = sigmaforge_data::for_tests();
    let sigma_wasm = sigmaforge_e2e::wasm_plugin("sigma-plugin");
    let search_wasm = sigmaforge_e2e::wasm_plugin("search-plugin");
    let mut plugins = BTreeMap::new();
    for path in [&sigma_wasm, &search_wasm] {
        let p = PluginConfig::from_path(path).with_data(&data);
        plugins.insert(p.name.clone(), p);
    }
    let set = Runtime::new(RuntimeOptions::default()).unwrap().load_all(&PluginsConfig { plugins }).unwrap();
    assert_eq!((set.tasks.len(), set.tools.len()), (1, 1));
    let sigma = set.tasks.values().next().unwrap().clone();
    let search = set.tools.values().next().unwrap().clone();
    // The same adapter `sigmaforge run` and `sigmaforge eval` use.
    let toolbox = Arc::new(Toolbox::from_plugins(&[search], 1).unwrap());

    let task = sigma.list_tasks("train").unwrap().remove(0);
    let meta = match &task.metadata {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    };
    let rule = std::fs::read_to_string(data.join("sigma").join(meta["rule_path"].as_str().unwrap())).unwrap();
    let good_answer = reference_answer(&rule);

    (sigma, toolbox, task, good_answer)
}

#[test]
fn search_tool_turn_then_a_scored_rule() {
    let (sigma, toolbox, task, good_answer) = sigma_and_search();
    let tok = chatml_byte_tokenizer().unwrap();
    let tools = ToolUse::new(toolbox, &ToolsSection::default(), Family::Qwen3, &tok).unwrap().expect("search is offered");
    let messages: Vec<ChatMessage> = task.prompt.iter().map(|m| ChatMessage::new(&m.role, &m.content)).collect();
    let prompt = tok.encode(&tok.apply_chat_template(&tools.offer(&messages), true, None).unwrap(), false).unwrap();

    // Copy 0 searches and, seeing the Security 4688 document, writes the reference rule; copy 1
    // calls a tool that does not exist, copy 2 sends arguments the search tool refuses; both then
    // write a rule that matches nothing. Copy 3 answers without a tool.
    let answer = good_answer.clone();
    let mut policy = ScriptedPolicy::new(tok.clone(), move |ctx: &str, copy: usize| {
        if ctx.contains("<tool_response>") {
            return if ctx.contains("win-security-4688") { answer.clone() } else { "no rule".to_string() };
        }
        match copy {
            0 => "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"new process created command line 4688\", \"k\": 2}}\n</tool_call>"
                .into(),
            1 => "<tool_call>\n{\"name\": \"web_search\", \"arguments\": {\"q\": \"4688\"}}\n</tool_call>".into(),
            2 => "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"k\": 3}}\n</tool_call>".into(),
            _ => "no rule".into(),
        }
    });
    let eps = run_episodes(&mut policy, &tok, &[prompt], 4, Some(&tools)).unwrap();

    let ok = &eps[0];
    assert_eq!(ok.tool_calls.len(), 1);
    assert!(!ok.tool_calls[0].is_error, "{:?}", ok.tool_calls[0]);
    let result: serde_json::Value = serde_json::from_str(&ok.tool_calls[0].result).unwrap();
    assert_eq!(result["results"][0]["id"], "win-security-4688");
    assert!(ok.transcript.contains("<tool_response>\n{\"query\""), "{}", ok.transcript);
    assert_eq!(ok.final_answer, good_answer);
    assert!(ok.policy_mask.iter().any(|m| !m) && ok.policy_mask.last() == Some(&true));

    let unknown = &eps[1].tool_calls[0];
    assert!(unknown.is_error && unknown.result.starts_with("Error: unknown tool `web_search`; available tools: search"), "{unknown:?}");
    let refused = &eps[2].tool_calls[0];
    assert!(refused.is_error && refused.result.starts_with("Error: tool `search` returned an error:"), "{refused:?}");
    assert!(!eps[3].called_tool());

    // The final answers are what the sigma plugin scores.
    let batch: Vec<(TaskRef, String)> = eps.iter().map(|e| (TaskRef::Id(task.id.clone()), e.final_answer.clone())).collect();
    let scores = sigma.score_batch(&batch);
    assert!((scores[0].total - 1.1).abs() < 1e-9, "{:?}", scores[0]);
    for s in &scores[1..] {
        assert_eq!(s.total, 0.0, "{s:?}");
    }
}

/// The same turn in gpt-oss's harmony format: the search tool offered in the developer message's
/// `functions` namespace, a call `to=functions.search` on the commentary channel, the result as a
/// `functions.search` message, and only the `final` channel scored: a rule in the reasoning
/// earns nothing.
#[test]
fn harmony_search_turn_then_the_final_channel_is_scored() {
    let (sigma, toolbox, task, good_answer) = sigma_and_search();
    let tok = harmony_byte_tokenizer().unwrap();
    let tools = ToolUse::new(toolbox, &ToolsSection::default(), Family::Qwen3, &tok).unwrap().expect("search is offered");
    assert_eq!(tools.format(), ToolFormat::Harmony);
    let messages: Vec<ChatMessage> = task.prompt.iter().map(|m| ChatMessage::new(&m.role, &m.content)).collect();
    let prompt_text = tools.render_prompt(&tok, &messages).unwrap();
    assert!(prompt_text.contains("## functions\n\nnamespace functions {\n\n// "), "{prompt_text}");
    assert!(prompt_text.contains("type search = (_: {\n"), "{prompt_text}");
    let prompt = tok.encode(&prompt_text, false).unwrap();

    // Copy 0 searches, then answers on the final channel; copy 1 puts the rule in its reasoning
    // and "no rule" on the final channel; copy 2 never reaches the final channel.
    let answer = good_answer.clone();
    let mut policy = ScriptedPolicy::new(tok.clone(), move |ctx: &str, copy: usize| {
        let call = "<|channel|>analysis<|message|>I need the process creation event.<|end|><|start|>assistant<|channel|>commentary \
                    to=functions.search <|constrain|>json<|message|>{\"query\": \"new process created command line 4688\", \"k\": 2}<|call|>";
        let seen = ctx.contains("<|start|>functions.search to=assistant<|channel|>commentary<|message|>{\"query\"");
        match (copy, seen) {
            (0, false) => call.to_string(),
            (0, true) => format!("<|channel|>analysis<|message|>win-security-4688 fits.<|end|><|start|>assistant<|channel|>final<|message|>{answer}"),
            (1, _) => format!("<|channel|>analysis<|message|>{answer}<|end|><|start|>assistant<|channel|>final<|message|>no rule"),
            _ => format!("<|channel|>analysis<|message|>{answer}"),
        }
    });
    let eps = run_episodes(&mut policy, &tok, &[prompt], 3, Some(&tools)).unwrap();
    let ok = &eps[0];
    assert_eq!(ok.tool_calls.len(), 1);
    let result: serde_json::Value = serde_json::from_str(&ok.tool_calls[0].result).unwrap();
    assert_eq!(result["results"][0]["id"], "win-security-4688");
    assert!(ok.transcript.contains("<|call|><|start|>functions.search to=assistant<|channel|>commentary<|message|>{\"query\""), "{}", ok.transcript);
    assert_eq!(ok.final_answer, good_answer);
    assert_eq!((eps[1].final_answer.as_str(), eps[2].final_answer.as_str()), ("no rule", ""));

    let batch: Vec<(TaskRef, String)> = eps.iter().map(|e| (TaskRef::Id(task.id.clone()), e.final_answer.clone())).collect();
    let scores = sigma.score_batch(&batch);
    assert!((scores[0].total - 1.1).abs() < 1e-9, "{:?}", scores[0]);
    assert_eq!((scores[1].total, scores[2].total), (0.0, 0.0), "{scores:?}");
}

/// `sigmaforge run --plugins sigma.wasm --plugins search.wasm` offers the search tool during
/// rollouts (no "not offered" warning) and logs the tool metrics. The model is a tiny random
/// Qwen3 with a ChatML byte tokenizer, written as a Hugging Face directory by the test, so one
/// step runs in seconds; it does not call the tool, which the metrics must say.
#[test]
fn run_offers_loaded_tool_plugins() {
    use sigmaforge_model::testing::CHATML_BYTE_VOCAB;
    run_offers_tools_in(chatml_byte_tokenizer().unwrap(), CHATML_BYTE_VOCAB, "hermes", false);
}

/// The same with a harmony tokenizer (gpt-oss's special tokens): the trainer renders harmony
/// prompts, offers the tool in the harmony format and stops on <|call|>.
#[test]
fn run_offers_tools_in_harmony_for_a_harmony_tokenizer() {
    use sigmaforge_model::testing::HARMONY_BYTE_VOCAB;
    run_offers_tools_in(harmony_byte_tokenizer().unwrap(), HARMONY_BYTE_VOCAB, "harmony", false);
}

/// `sigmaforge run` with a GPT-OSS checkpoint (a tiny random one written as a Hugging Face
/// directory, MoE and sinks included) and LoRA: harmony prompts and the search tool offered in
/// harmony's form, one step trained.
#[test]
fn run_trains_a_gpt_oss_with_lora_offering_tools_in_harmony() {
    use sigmaforge_model::testing::HARMONY_BYTE_VOCAB;
    run_offers_tools_in(harmony_byte_tokenizer().unwrap(), HARMONY_BYTE_VOCAB, "harmony", true);
}

fn run_offers_tools_in(tokenizer: sigmaforge_model::load::Tokenizer, vocab_size: usize, format: &str, gpt_oss: bool) {
    use candle_core::{DType, Device};
    use sigmaforge_model::model::{CausalLm, ModelConfig};

    let name = if gpt_oss { "gpt-oss" } else { format };
    let dir = sigmaforge_e2e::target_dir().join("e2e-scratch").join(format!("run-tools-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let base = if gpt_oss { ModelConfig::tiny_gpt_oss() } else { ModelConfig::tiny_qwen3() };
    let mc = ModelConfig { vocab_size, max_position_embeddings: 16384, ..base };
    let model = CausalLm::random(&mc, None, 1, DType::F32, &Device::Cpu).unwrap();
    sigmaforge_model::export::merged_hf_dir(&model, &tokenizer, &dir.join("model")).unwrap();
    let finetune = if gpt_oss { "lora\nlora: { rank: 4, alpha: 8, target_modules: [all-linear] }" } else { "full" };
    let config = format!(
        "model: {{ path: {model}, dtype: f32, device: cpu }}\nfinetune: {finetune}\n\
         training: {{ steps: 1, prompts_per_step: 1, rollouts_per_prompt: 2, micro_batch_size: 2 }}\n\
         generation: {{ max_new_tokens: 4, temperature: 1.0, max_prompt_tokens: 16000 }}\n\
         optimizer: {{ lr: 0.001 }}\ncheckpoint: {{ every: 0, keep: 1 }}\nexport: {{ merged: false, lora_adapter: false }}\n\
         tools: {{ max_turns: 1, format: auto }}\n",
        model = dir.join("model").display()
    );
    std::fs::write(dir.join("run.yaml"), config).unwrap();
    let sigma = sigmaforge_e2e::wasm_plugin("sigma-plugin").display().to_string();
    let search = sigmaforge_e2e::wasm_plugin("search-plugin").display().to_string();
    let data = sigmaforge_data::for_tests().display().to_string();
    let out_dir = dir.join("run").display().to_string();
    let config_path = dir.join("run.yaml").display().to_string();
    let (code, _out, err) = sigmaforge_e2e::run_sigmaforge(
        &["run", "--plugins", &sigma, "--plugins", &search, "--data", &data, "--config", &config_path, "--out", &out_dir],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("offering tool(s) search in the {format} format, up to 1 tool turn(s) per rollout")), "{err}");
    assert!(!err.contains("does not offer tools"), "{err}");
    let metrics: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(dir.join("run").join("metrics.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(metrics["tool_call_fraction"], 0.0);
    assert_eq!(metrics["tool_calls"], 0);
    assert!(metrics["reward_with_tool"].is_null(), "{metrics}");
    assert_eq!(metrics["reward_without_tool"], metrics["reward"]["mean"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// GPT-OSS end to end: a tiny random GPT-OSS (experts, sinks, sliding window, YaRN) with LoRA
/// on its attention, a harmony tokenizer, the real sigma.wasm reward and search.wasm tool, and
/// a scripted policy in place of sampling. One GRPO step runs the harmony tool turn (offered in
/// the developer message, called on the commentary channel, answered as a `functions.search`
/// message), scores the final channel, and trains the adapters only.
#[test]
fn a_tiny_gpt_oss_trains_with_lora_through_a_harmony_search_turn() {
    use candle_core::{DType, Device};
    use sigmaforge_model::lora::LoraConfig;
    use sigmaforge_model::model::{CausalLm, ModelConfig};
    use sigmaforge_model::testing::HARMONY_BYTE_VOCAB;
    use sigmaforge_trainer::config::RunConfig;
    use sigmaforge_trainer::train::Trainer;

    let (sigma, toolbox, task, good_answer) = sigma_and_search();
    let env = Arc::new(sigmaforge_reward::PluginEnvironment::new(sigma, "train").unwrap());
    let tok = harmony_byte_tokenizer().unwrap();
    let lora = LoraConfig { rank: 4, alpha: 8.0, target_modules: vec!["all-linear".into()], target_parameters: vec![] };
    let mc = ModelConfig { vocab_size: HARMONY_BYTE_VOCAB, max_position_embeddings: 16384, ..ModelConfig::tiny_gpt_oss() };
    let model = CausalLm::random(&mc, Some(&lora), 3, DType::F32, &Device::Cpu).unwrap();
    let cfg = RunConfig::from_yaml(
        "model: { path: test, dtype: f32, device: cpu }\nfinetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [all-linear] }\n\
         training: { steps: 1, prompts_per_step: 1, rollouts_per_prompt: 2, micro_batch_size: 1,\n\
         memory: { activation_checkpointing: true, logits_chunk: 64 } }\n\
         generation: { max_new_tokens: 4000, max_prompt_tokens: 16000 }\noptimizer: { lr: 0.01 }\ngrpo: { beta: 0.0 }\n\
         checkpoint: { every: 0, keep: 1 }\nexport: { merged: false, lora_adapter: false }\n\
         tools: { max_turns: 1, format: auto, max_result_chars: 200 }\n",
        "gpt-oss test config",
    )
    .unwrap();
    // The byte tokenizer makes a ~3,000-token transcript: one sequence per micro-batch, with the
    // memory savers, keeps the update's attention small. Both rollouts search; after the tool's
    // answer the first writes a rule on the final channel and the second "no rule", so the
    // group's rewards differ and the step trains.
    let answer = good_answer.clone();
    let mut answered = 0;
    let policy = ScriptedPolicy::new(tok.clone(), move |ctx: &str, _copy: usize| {
        if !ctx.contains("<|start|>functions.search to=assistant<|channel|>commentary<|message|>") {
            return "<|channel|>commentary to=functions.search <|constrain|>json<|message|>{\"query\": \"process creation 4688\", \"k\": 1}<|call|>"
                .into();
        }
        answered += 1;
        if answered == 1 { format!("<|channel|>final<|message|>{answer}") } else { "<|channel|>final<|message|>no rule".into() }
    });
    let log = policy.log.clone();
    let dir = sigmaforge_e2e::target_dir().join("e2e-scratch").join(format!("gpt-oss-tools-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut trainer = Trainer::new(cfg, model, tok, env, &dir).unwrap().with_tools(toolbox).unwrap().with_segment_generator(Box::new(policy));
    let trainable = |t: &Trainer| -> Vec<(String, Vec<f32>)> {
        t.model().trainable_vars().into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect()
    };
    let before = trainable(&trainer);
    assert!(before.iter().all(|(n, _)| n.contains("lora_")), "only adapters train under LoRA");
    let out = trainer.train_step().unwrap();
    let m = &out.metrics;

    // The prompt offered search in harmony's developer message.
    let first_context = log.lock().unwrap()[0].contexts[0].clone();
    assert!(first_context.contains("namespace functions {") && first_context.contains("type search = (_: {"), "{first_context}");
    // Both rollouts called the real search tool; the final channel was scored.
    assert_eq!((m.tool_calls, m.tool_errors, m.tool_call_fraction), (2, 0, 1.0), "{m:?}");
    // (The trainer draws its own task, so the rule answers another task: valid YAML, no match.)
    assert_eq!(m.reward_components["yaml_valid"].mean, 0.5, "{m:?}");
    assert!(m.reward.mean > 0.0 && m.zero_variance_groups == 0, "{m:?}");
    // The update trained the adapters.
    assert!(m.loss.is_finite() && m.grad_norm > 0.0, "{m:?}");
    assert_ne!(before, trainable(&trainer));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("rollouts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["tool_calls"][0]["name"], "search");
    assert!(lines[0]["transcript"].as_str().unwrap().contains("<|call|><|start|>functions.search to=assistant<|channel|>commentary<|message|>"));
    assert_eq!(lines[0]["final_answer"], good_answer.as_str());
    let _ = task;
    std::fs::remove_dir_all(&dir).unwrap();
}
