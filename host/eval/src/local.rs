//! The project's own candle model as a policy (`--policy local:<model dir or .gguf>`).
//!
//! Prompts are rendered with the model's chat template and generated in batches with the
//! trainer's sampler (greedy at temperature 0). Every sample of a batch reports the batch's wall
//! time as its latency: that is how long each of those requests waited. Tools are not offered to
//! local models yet (the episode loop's tool turns belong to the trainer); the eval says so.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::DType;
use sigmaforge_runtime::Message;
use sigmaforge_trainer::generate::{SamplerRng, SamplingConfig, generate};
use sigmaforge_trainer::load::{ChatMessage, LoadOptions, Tokenizer, load_model};
use sigmaforge_trainer::model::{AdapterMode, CausalLm};

use crate::policy::{Completion, Failure, Outcome, Policy, Usage};
use crate::tools::Toolbox;

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
    /// Loads a Hugging Face model directory or a .gguf file.
    pub fn load(path: &Path, opts: &LocalOptions) -> Result<LocalPolicy> {
        let (device, _) = sigmaforge_trainer::device::select_device(&opts.device)?;
        let loaded = load_model(path, &LoadOptions { dtype: DType::F32, device, lora: None, seed: opts.seed })
            .with_context(|| format!("cannot load the local model {}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        LocalPolicy::new(name, path.display().to_string(), loaded.model, loaded.tokenizer, opts)
    }

    pub fn new(name: String, path: String, model: CausalLm, tokenizer: Tokenizer, opts: &LocalOptions) -> Result<LocalPolicy> {
        let sampling = SamplingConfig { temperature: opts.temperature, max_new_tokens: opts.max_tokens, ..SamplingConfig::default() };
        sampling.validate()?;
        anyhow::ensure!(opts.batch_size > 0, "--batch-size must be at least 1");
        Ok(LocalPolicy { name, path, model, tokenizer, sampling, batch_size: opts.batch_size, rng: Mutex::new(SamplerRng::new(opts.seed)) })
    }

    fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let chat: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage::new(m.role.clone(), m.content.clone())).collect();
        let text = self.tokenizer.apply_chat_template(&chat, true, None).context("cannot render the prompt with the model's chat template")?;
        self.tokenizer.encode(&text, false).context("cannot tokenize the prompt")
    }

    /// One batch; every sample fails with the same reason if the batch cannot run.
    fn run_batch(&self, prompts: &[Vec<Message>]) -> Vec<Outcome> {
        let start = Instant::now();
        let fail = |reason: String| Failure {
            reason,
            usage: Usage::default(),
            latency_s: start.elapsed().as_secs_f64(),
            attempts: 1,
            attempt_errors: vec![],
            tool_calls: 0,
            transcript: None,
        };
        let ids: Result<Vec<Vec<u32>>> = prompts.iter().map(|m| self.prompt_ids(m)).collect();
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => return prompts.iter().map(|_| Err(fail(format!("{e:#}")))).collect(),
        };
        let rollouts = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            generate(&self.model, &self.tokenizer, &ids, &self.sampling, &mut rng, AdapterMode::Enabled)
        };
        let latency_s = start.elapsed().as_secs_f64();
        match rollouts {
            Err(e) => prompts.iter().map(|_| Err(fail(format!("generation failed: {e:#}")))).collect(),
            Ok(rollouts) => rollouts
                .into_iter()
                .map(|r| {
                    Ok(Completion {
                        text: r.text,
                        usage: Usage { tokens_in: r.prompt_ids.len() as u64, tokens_out: r.completion_ids.len() as u64 },
                        latency_s,
                        attempts: 1,
                        attempt_errors: vec![],
                        tool_calls: 0,
                        transcript: None,
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
        false
    }

    fn complete(&self, messages: &[Message], _tools: Option<&Toolbox>) -> Outcome {
        self.run_batch(std::slice::from_ref(&messages.to_vec())).pop().expect("one outcome per prompt")
    }

    fn complete_all(&self, prompts: &[Vec<Message>], _tools: Option<&Toolbox>, done: &(dyn Fn() + Sync)) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(self.batch_size) {
            for o in self.run_batch(chunk) {
                out.push(o);
                done();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use sigmaforge_trainer::model::ModelConfig;
    use sigmaforge_trainer::testing::tiny_tokenizer;

    #[test]
    fn tiny_model_answers_every_prompt_in_batches_with_token_counts() {
        let cfg = ModelConfig::tiny_qwen3();
        let tok = tiny_tokenizer(cfg.vocab_size).unwrap();
        let model = CausalLm::random(&cfg, None, 3, DType::F32, &Device::Cpu).unwrap();
        let opts = LocalOptions { temperature: 0.0, max_tokens: 5, batch_size: 2, seed: 1, device: "cpu".into() };
        let policy = LocalPolicy::new("tiny".into(), "tiny".into(), model, tok, &opts).unwrap();
        let prompts: Vec<Vec<Message>> = (0..3)
            .map(|i| vec![Message { role: "user".into(), content: format!("w{} w{}", 5 + i, 9 + i) }])
            .collect();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let out = policy.complete_all(&prompts, None, &|| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(out.len(), 3);
        assert_eq!(count.into_inner(), 3);
        for o in &out {
            let c = o.as_ref().unwrap();
            // `<bos> w5 w9 <bos>`: 4 prompt tokens; at most max_tokens generated.
            assert_eq!(c.usage.tokens_in, 4);
            assert!(c.usage.tokens_out >= 1 && c.usage.tokens_out <= 5, "{c:?}");
        }
        // Greedy decoding is deterministic: the single-prompt path agrees with the batch.
        let single = policy.complete(&prompts[0], None).unwrap();
        assert_eq!(single.text, out[0].as_ref().unwrap().text);
        assert!(!policy.supports_tools());
    }
}
