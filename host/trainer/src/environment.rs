//! Where the trainer gets its tasks and rewards from.
//!
//! The trainer knows nothing about WebAssembly: it talks to a [`TaskEnvironment`]. The CLI
//! implements it over the plugin runtime (a task plugin's `list-tasks` and `score`); tests can
//! implement it natively. Scores that come back broken (wrong count, non-finite values) are
//! repaired here into 0 with an error, because one bad reward must never poison the
//! advantages of a whole group (NaN) or stop the run.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use sigmaforge_model::load::ChatMessage;

/// One task as the policy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPrompt {
    /// Stable id, passed back to [`TaskEnvironment::score_batch`].
    pub id: String,
    pub messages: Vec<ChatMessage>,
}

/// The reward of one completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardScore {
    /// Weighted sum of the components (what GRPO optimises).
    pub total: f64,
    /// Component values (name, value), in [`TaskEnvironment::component_names`] order.
    pub components: Vec<(String, f64)>,
    /// Why this completion scored 0 through no fault of its own (plugin trap, time limit, ...).
    pub error: Option<String>,
}

impl RewardScore {
    pub fn failed(error: impl Into<String>) -> Self {
        Self { total: 0.0, components: Vec::new(), error: Some(error.into()) }
    }
}

/// Tasks and rewards for training. Scoring runs on a separate thread while the model
/// generates the next group, hence `Send + Sync`.
pub trait TaskEnvironment: Send + Sync {
    /// Reward component names, for metrics.
    fn component_names(&self) -> Vec<String>;
    /// Every training task, in a deterministic order.
    fn tasks(&self) -> Result<Vec<TaskPrompt>>;
    /// Scores of `(task id, completion)` pairs, one per item, in order. A failure of one item
    /// is that item's `error`, not an `Err` of the batch.
    fn score_batch(&self, items: &[(String, String)]) -> Vec<RewardScore>;
}

/// Calls `score_batch` and enforces its contract: one finite score per item. A panic inside
/// the environment is caught and becomes an error on every item of the batch.
pub fn score_checked(env: &dyn TaskEnvironment, items: &[(String, String)]) -> Vec<RewardScore> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| env.score_batch(items)));
    let scores = match result {
        Ok(s) => s,
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("unknown panic");
            return items.iter().map(|_| RewardScore::failed(format!("reward scoring panicked: {msg}"))).collect();
        }
    };
    if scores.len() != items.len() {
        let msg = format!("reward returned {} scores for {} completions", scores.len(), items.len());
        return items.iter().map(|_| RewardScore::failed(msg.clone())).collect();
    }
    scores
        .into_iter()
        .map(|mut s| {
            if !s.total.is_finite() {
                return RewardScore::failed(format!("reward total is {} (not finite)", s.total));
            }
            for (name, v) in &mut s.components {
                if !v.is_finite() {
                    s.error.get_or_insert_with(|| format!("component {name} is {v} (not finite); counted as 0"));
                    *v = 0.0;
                }
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken(usize);
    impl TaskEnvironment for Broken {
        fn component_names(&self) -> Vec<String> {
            vec!["x".into()]
        }
        fn tasks(&self) -> Result<Vec<TaskPrompt>> {
            Ok(vec![])
        }
        fn score_batch(&self, items: &[(String, String)]) -> Vec<RewardScore> {
            match self.0 {
                0 => vec![],
                1 => items.iter().map(|_| RewardScore { total: f64::NAN, components: vec![], error: None }).collect(),
                _ => panic!("boom"),
            }
        }
    }

    #[test]
    fn broken_rewards_become_zero_with_an_error() {
        let items = vec![("t".to_string(), "c".to_string()); 2];
        for (mode, needle) in [(0, "0 scores for 2"), (1, "not finite"), (2, "boom")] {
            let s = score_checked(&Broken(mode), &items);
            assert_eq!(s.len(), 2);
            assert!(s.iter().all(|s| s.total == 0.0 && s.error.as_deref().unwrap().contains(needle)), "{s:?}");
        }
    }
}
