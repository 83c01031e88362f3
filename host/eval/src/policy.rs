//! What a policy is to the eval: something that answers a task's chat messages.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use sigmaforge_runtime::Message;

use sigmaforge_reward::Toolbox;

/// Tokens a sample used, summed over every request it made (tool turns included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub tokens_in: u64,
    pub tokens_out: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
    }
}

/// A final answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    #[serde(flatten)]
    pub trace: Trace,
}

/// A sample that got no answer after every retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The last attempt's error, with the attempt count.
    pub reason: String,
    #[serde(flatten)]
    pub trace: Trace,
}

/// How a sample went, answered or not: what its report row records besides the answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub usage: Usage,
    /// Wall time from the first request of the sample to its final answer (or to giving up),
    /// retries and tool turns included: what a user of the model waits.
    pub latency_s: f64,
    /// HTTP requests made (1 when the first try answered and no tool was used).
    pub attempts: u32,
    /// Why earlier attempts failed, in order (empty when none did).
    pub attempt_errors: Vec<String>,
    /// Tool calls the model made.
    pub tool_calls: u32,
    /// The whole conversation (OpenAI message objects) when tools were offered.
    pub transcript: Option<Vec<serde_json::Value>>,
}

pub type Outcome = std::result::Result<Completion, Failure>;

/// A model under evaluation.
pub trait Policy: Sync {
    /// The model's name in reports.
    fn model(&self) -> &str;

    /// The policy spec it was made from (`openai:…#…`, `local:…`), for the report.
    fn spec(&self) -> String;

    /// Answers one task. `tools`: offered to the model when the policy supports tools.
    fn complete(&self, messages: &[Message], tools: Option<&Toolbox>) -> Outcome;

    /// Whether `complete` offers tools (a local policy does not yet).
    fn supports_tools(&self) -> bool;

    /// Requests in flight at once in [`Policy::complete_all`].
    fn concurrency(&self) -> usize {
        1
    }

    /// Answers every prompt, in input order; calls `done(i, outcome)` as soon as prompt `i` is
    /// answered or given up on (progress, and the eval's journal).
    /// The default runs `complete` on [`Policy::concurrency`] worker threads.
    fn complete_all(&self, prompts: &[Vec<Message>], tools: Option<&Toolbox>, done: &(dyn Fn(usize, &Outcome) + Sync)) -> Vec<Outcome> {
        let workers = self.concurrency().clamp(1, prompts.len().max(1));
        let next = AtomicUsize::new(0);
        let mut slots: Vec<Option<Outcome>> = vec![None; prompts.len()];
        let finished: Vec<Vec<(usize, Outcome)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(messages) = prompts.get(i) else { break };
                            let outcome = self.complete(messages, tools);
                            done(i, &outcome);
                            out.push((i, outcome));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("policy workers do not panic")).collect()
        });
        for (i, o) in finished.into_iter().flatten() {
            slots[i] = Some(o);
        }
        slots.into_iter().map(|o| o.expect("every prompt is answered once")).collect()
    }
}

/// A parsed `--policy` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySpec {
    /// `openai:<base_url>#<model>`
    OpenAi { base_url: String, model: String },
    /// `local:<model dir or .gguf>`
    Local { path: String },
}

const EXPECTED_FORMS: &str =
    "expected `openai:<base_url>#<model>` (e.g. openai:http://127.0.0.1:8000/v1#Qwen/Qwen3-0.6B) or `local:<model dir or .gguf>`";

impl PolicySpec {
    pub fn parse(spec: &str) -> Result<PolicySpec> {
        if let Some(rest) = spec.strip_prefix("openai:") {
            let Some((url, model)) = rest.rsplit_once('#') else {
                bail!("policy `{spec}` names no model after `#`; {EXPECTED_FORMS}");
            };
            let url = url.trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len() {
                bail!("policy `{spec}`: the base URL `{url}` must start with http:// or https://; {EXPECTED_FORMS}");
            }
            if model.trim().is_empty() {
                bail!("policy `{spec}` has an empty model name after `#`; {EXPECTED_FORMS}");
            }
            return Ok(PolicySpec::OpenAi { base_url: url.to_string(), model: model.to_string() });
        }
        if let Some(path) = spec.strip_prefix("local:") {
            if path.trim().is_empty() {
                bail!("policy `{spec}` names no model path; {EXPECTED_FORMS}");
            }
            return Ok(PolicySpec::Local { path: path.to_string() });
        }
        bail!("unknown policy `{spec}`; {EXPECTED_FORMS}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_names_the_bad_spec() {
        assert_eq!(
            PolicySpec::parse("openai:http://127.0.0.1:8000/v1/#Qwen/Qwen3-0.6B").unwrap(),
            PolicySpec::OpenAi { base_url: "http://127.0.0.1:8000/v1".into(), model: "Qwen/Qwen3-0.6B".into() }
        );
        assert_eq!(PolicySpec::parse("local:models/m.gguf").unwrap(), PolicySpec::Local { path: "models/m.gguf".into() });
        for bad in ["gpt-4o", "openai:http://x/v1", "openai:ftp://x#m", "openai:http://x/v1#", "local:"] {
            let e = PolicySpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("openai:<base_url>#<model>"), "{bad}: {e}");
        }
    }
}
