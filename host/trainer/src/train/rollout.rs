//! The rollout phase's inputs: each task's prompt rendered and tokenized (once, then cached)
//! and the sampling settings of the step's generation.

use anyhow::{Context, Result, ensure};

use super::Trainer;
use sigmaforge_model::generate::SamplingConfig;

impl Trainer {
    pub(super) fn prompt_tokens(&mut self, task: usize) -> Result<Vec<u32>> {
        if let Some(ids) = self.prompt_ids.get(&task) {
            return Ok(ids.clone());
        }
        let t = &self.tasks[task];
        let messages = match &self.tools {
            Some(tools) => tools.offer(&t.messages),
            None => t.messages.clone(),
        };
        let text = self
            .tokenizer
            .apply_chat_template(&messages, true, None)
            .with_context(|| format!("task {}: cannot render the prompt with the chat template", t.id))?;
        let ids = self.tokenizer.encode(&text, false).with_context(|| format!("task {}: cannot tokenize the prompt", t.id))?;
        ensure!(
            ids.len() <= self.cfg.generation.max_prompt_tokens,
            "task {}: prompt has {} tokens, more than generation.max_prompt_tokens = {}",
            t.id,
            ids.len(),
            self.cfg.generation.max_prompt_tokens
        );
        self.prompt_ids.insert(task, ids.clone());
        Ok(ids)
    }

    pub(super) fn sampling_config(&self) -> SamplingConfig {
        let g = &self.cfg.generation;
        SamplingConfig {
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k,
            max_new_tokens: g.max_new_tokens,
            num_completions: self.cfg.training.rollouts_per_prompt,
            stop_token_ids: Vec::new(),
        }
    }
}
