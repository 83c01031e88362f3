//! The project's own candle model as a policy (`--policy local:<model dir or .gguf>`).
//!
//! Prompts are rendered with the model's chat template and generated in batches with the
//! trainer's sampler (greedy at temperature 0). Every sample of a batch reports the batch's wall
//! time as its latency: that is how long each of those requests waited. Tools are offered the way
//! training rollouts offer them: the trainer's episode loop (the model family's native tool-call
//! format, generation stopped at the end of a call, the tool run, the result appended, up to
//! `--max-tool-turns`), and the sample's answer is the text after the last tool turn.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::DType;
use serde_json::json;
use sigmaforge_model::episode::ToolsSection;
use sigmaforge_model::episode::{ModelPolicy, ToolUse, run_episodes};
use sigmaforge_model::generate::{SamplerRng, SamplingConfig};
use sigmaforge_model::load::{ChatMessage, LoadOptions, Tokenizer, load_model};
use sigmaforge_model::model::{AdapterMode, BaseQuant, CausalLm};
use sigmaforge_runtime::Message;

use crate::policy::{Completion, Failure, Outcome, Policy, Trace, Usage};
use sigmaforge_reward::Toolbox;

pub struct LocalOptions {
    /// 0 = greedy.
    pub temperature: f64,
    pub max_tokens: usize,
    /// Prompts generated together.
    pub batch_size: usize,
    pub seed: u64,
    /// "cpu", "cuda", "cuda:N" or "auto".
    pub device: String,
}

pub struct LocalPolicy {
    name: String,
    path: String,
    model: CausalLm,
    tokenizer: Tokenizer,
    sampling: SamplingConfig,
    batch_size: usize,
    rng: Mutex<SamplerRng>,
}

impl LocalPolicy {
    /// Loads a Hugging Face model directory or a .gguf file; `default` is the default model
    /// of `sigmaforge run` (SmolLM2-135M-Instruct, fetched on first use).
    pub fn load(path: &Path, opts: &LocalOptions) -> Result<LocalPolicy> {
        let fetched;
        let path = if path == Path::new("default") {
            fetched = sigmaforge_model::load::ensure_default_model(&sigmaforge_model::load::default_models_dir(), |m| eprintln!("{m}"))?;
            fetched.as_path()
        } else {
            path
        };
        let (device, _) = sigmaforge_model::device::select_device(&opts.device)?;
        // Dequantised: eval scores the exact model, as the published tables were measured.
        let load =
            LoadOptions { dtype: DType::F32, device, seed: opts.seed, base_quant: BaseQuant::Dequantize, inference_only: true, ..Default::default() };
        let loaded = load_model(path, &load).with_context(|| format!("cannot load the local model {}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        LocalPolicy::new(name, path.display().to_string(), loaded.model, loaded.tokenizer, opts)
    }

    pub fn new(name: String, path: String, model: CausalLm, tokenizer: Tokenizer, opts: &LocalOptions) -> Result<LocalPolicy> {
        let sampling = SamplingConfig { temperature: opts.temperature, max_new_tokens: opts.max_tokens, ..SamplingConfig::default() };
        sampling.validate()?;
        anyhow::ensure!(opts.batch_size > 0, "--batch-size must be at least 1");
        Ok(LocalPolicy { name, path, model, tokenizer, sampling, batch_size: opts.batch_size, rng: Mutex::new(SamplerRng::new(opts.seed)) })
    }

    fn prompt_ids(&self, messages: &[Message], tools: Option<&ToolUse>) -> Result<Vec<u32>> {
        let chat: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage::new(m.role.clone(), m.content.clone())).collect();
        let text = match tools {
            Some(t) => t.render_prompt(&self.tokenizer, &chat),
            None => self.tokenizer.apply_chat_template(&chat, true, None),
        }
        .context("cannot render the prompt with the model's chat template")?;
        self.tokenizer.encode(&text, false).context("cannot tokenize the prompt")
    }

    /// The trainer's tool setup for this model, or `None` without tools.
    fn tool_use(&self, tools: Option<&Toolbox>) -> Result<Option<ToolUse>> {
        let Some(tb) = tools.filter(|t| !t.is_empty() && t.max_turns > 0) else { return Ok(None) };
        let cfg = ToolsSection { max_turns: tb.max_turns, ..ToolsSection::default() };
        ToolUse::new(Arc::new(tb.clone()), &cfg, self.model.config().family, &self.tokenizer)
    }

    /// One batch; every sample fails with the same reason if the batch cannot run.
    fn run_batch(&self, prompts: &[Vec<Message>], tools: Option<&Toolbox>) -> Vec<Outcome> {
        let start = Instant::now();
        let fail = |reason: String| Failure { reason, trace: Trace { latency_s: start.elapsed().as_secs_f64(), attempts: 1, ..Trace::default() } };
        let tool_use = match self.tool_use(tools) {
            Ok(t) => t,
            Err(e) => return prompts.iter().map(|_| Err(fail(format!("cannot offer the tools: {e:#}")))).collect(),
        };
        let ids: Result<Vec<Vec<u32>>> = prompts.iter().map(|m| self.prompt_ids(m, tool_use.as_ref())).collect();
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => return prompts.iter().map(|_| Err(fail(format!("{e:#}")))).collect(),
        };
        let rollouts = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let mut policy = ModelPolicy {
                model: &self.model,
                tokenizer: &self.tokenizer,
                sampling: &self.sampling,
                rng: &mut rng,
                adapters: AdapterMode::Enabled,
            };
            run_episodes(&mut policy, &self.tokenizer, &ids, 1, tool_use.as_ref())
        };
        let latency_s = start.elapsed().as_secs_f64();
        match rollouts {
            Err(e) => prompts.iter().map(|_| Err(fail(format!("generation failed: {e:#}")))).collect(),
            Ok(rollouts) => rollouts
                .into_iter()
                .map(|r| {
                    // Without tools the answer is the one segment (for harmony its final channel).
                    let text = match &tool_use {
                        Some(t) => r.reward_text(t.reward_on()).to_string(),
                        None => r.final_answer.clone(),
                    };
                    Ok(Completion {
                        text,
                        trace: Trace {
                            // Tokens the model read once (the prompt) and wrote; tool results it
                            // read back are part of neither.
                            usage: Usage { tokens_in: r.prompt_ids.len() as u64, tokens_out: r.generated_tokens() as u64 },
                            latency_s,
                            attempts: 1,
                            attempt_errors: vec![],
                            tool_calls: r.tool_calls.len() as u32,
                            // As the model saw it, with its chat markers (there is no OpenAI message list).
                            transcript: tool_use.as_ref().map(|_| vec![json!({"role": "transcript", "content": r.transcript})]),
                        },
                    })
                })
                .collect(),
        }
    }
}

impl Policy for LocalPolicy {
    fn model(&self) -> &str {
        &self.name
    }

    fn spec(&self) -> String {
        format!("local:{}", self.path)
    }

    fn supports_tools(&self) -> bool {
        true
    }

    fn complete(&self, messages: &[Message], tools: Option<&Toolbox>) -> Outcome {
        self.run_batch(std::slice::from_ref(&messages.to_vec()), tools).pop().expect("one outcome per prompt")
    }

    fn complete_all(&self, prompts: &[Vec<Message>], tools: Option<&Toolbox>, done: &(dyn Fn(usize, &Outcome) + Sync)) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(self.batch_size) {
            for o in self.run_batch(chunk, tools) {
                done(out.len(), &o);
                out.push(o);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use sigmaforge_model::model::ModelConfig;
    use sigmaforge_model::testing::tiny_tokenizer;

    #[test]
    fn tiny_model_answers_every_prompt_in_batches_with_token_counts() {
        let cfg = ModelConfig::tiny_qwen3();
        let tok = tiny_tokenizer(cfg.vocab_size).unwrap();
        let model = CausalLm::random(&cfg, None, 3, DType::F32, &Device::Cpu).unwrap();
        let opts = LocalOptions { temperature: 0.0, max_tokens: 5, batch_size: 2, seed: 1, device: "cpu".into() };
        let policy = LocalPolicy::new("tiny".into(), "tiny".into(), model, tok, &opts).unwrap();
        let prompts: Vec<Vec<Message>> = (0..3).map(|i| vec![Message { role: "user".into(), content: format!("w{} w{}", 5 + i, 9 + i) }]).collect();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let out = policy.complete_all(&prompts, None, &|_, _| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(out.len(), 3);
        assert_eq!(count.into_inner(), 3);
        for o in &out {
            let c = o.as_ref().unwrap();
            // `<bos> w5 w9 <bos>`: 4 prompt tokens; at most max_tokens generated.
            assert_eq!(c.trace.usage.tokens_in, 4);
            assert!(c.trace.usage.tokens_out >= 1 && c.trace.usage.tokens_out <= 5, "{c:?}");
        }
        // Greedy decoding is deterministic: the single-prompt path agrees with the batch.
        let single = policy.complete(&prompts[0], None).unwrap();
        assert_eq!(single.text, out[0].as_ref().unwrap().text);
    }

    /// Local models take tool turns in the trainer's episode loop, which reaches the eval's tools
    /// through `Toolbox`'s `ToolBox` impl. A random test model never writes a tool call, so a
    /// scripted policy stands in for it here: the call reaches the eval's tool, its result goes
    /// back to the model, and the answer after it is the final answer.
    #[test]
    fn eval_toolbox_serves_the_trainer_episode_loop() {
        use sigmaforge_model::episode::SegmentGenerator;
        use sigmaforge_model::model::Family;
        use sigmaforge_model::testing::{ScriptedPolicy, chatml_byte_tokenizer};
        use sigmaforge_reward::ToolRunner;
        use sigmaforge_toolcall::ToolSpec;

        struct Lookup;
        impl ToolRunner for Lookup {
            fn spec(&self) -> ToolSpec {
                ToolSpec { name: "search".into(), description: "looks up".into(), parameters: serde_json::json!({"type": "object"}) }
            }
            fn invoke(&self, arguments: &str) -> Result<String, String> {
                if arguments.contains("4688") { Ok("Event 4688: a new process has been created".into()) } else { Err("nothing found".into()) }
            }
        }
        let tok = chatml_byte_tokenizer().unwrap();
        let tb = Toolbox::new(vec![Arc::new(Lookup)], 1);
        let tool_use = ToolUse::new(Arc::new(tb.clone()), &ToolsSection::default(), Family::Qwen3, &tok).unwrap().expect("tools on");
        let messages = tool_use.offer(&[ChatMessage::new("user", "write a rule for new processes")]);
        assert!(messages[0].content.contains("search"), "the tool is offered in the system message");
        let ids = tok.encode(&tok.apply_chat_template(&messages, true, None).unwrap(), false).unwrap();
        let mut policy = ScriptedPolicy::new(tok.clone(), |context: &str, _copy: usize| {
            if context.contains("4688: a new process") {
                "detection:\n  sel:\n    EventID: 4688\n  condition: sel".to_string()
            } else {
                "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"4688\"}}\n</tool_call>".to_string()
            }
        });
        let eps = run_episodes(&mut policy as &mut dyn SegmentGenerator, &tok, &[ids], 1, Some(&tool_use)).unwrap();
        assert_eq!(eps[0].tool_calls.len(), 1);
        assert!(!eps[0].tool_calls[0].is_error, "{:?}", eps[0].tool_calls);
        assert!(eps[0].transcript.contains("a new process has been created"));
        assert!(eps[0].final_answer.contains("EventID: 4688"), "{}", eps[0].final_answer);
    }
}
