//! The traits that score and the one check every score passes.
//!
//! Scores that come back broken (wrong count, non-finite values, a panic) are repaired here into
//! 0 with an error, because one bad reward must never poison the advantages of a whole group
//! (NaN) or stop the run.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use sigmaforge_model::load::ChatMessage;
use sigmaforge_runtime::{ScoreResult, TaskRef};

/// What scores completions. Scoring runs on its own thread while the model generates the next
/// group (and on the server's worker threads), hence `Send + Sync`.
pub trait Scorer: Send + Sync {
    /// The name reports and `/health` show (a plugin's name).
    fn name(&self) -> String;
    /// Reward component names and weights, in the order of every score's `components`.
    fn components(&self) -> Vec<(String, f64)>;
    /// Scores of `(task, completion)` pairs, one per item, in order. A failure of one item is
    /// that item's `error` (and a total of 0), never a failure of the batch.
    fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult>;
}

/// One training task as the policy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPrompt {
    /// Stable id, scored as [`TaskRef::Id`].
    pub id: String,
    pub messages: Vec<ChatMessage>,
}

/// Tasks and rewards for training.
pub trait TaskEnvironment: Scorer {
    /// Every training task, in a deterministic order.
    fn tasks(&self) -> Result<Vec<TaskPrompt>>;

    /// Reward component names, for metrics.
    fn component_names(&self) -> Vec<String> {
        self.components().into_iter().map(|(name, _)| name).collect()
    }
}

/// Calls `score_batch` and enforces its contract: one finite score per item. A panic inside
/// the scorer is caught and becomes an error on every item of the batch.
pub fn score_checked(scorer: &dyn Scorer, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scorer.score_batch(items)));
    let scores = match result {
        Ok(s) => s,
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("unknown panic");
            return items.iter().map(|_| ScoreResult::failed(format!("reward scoring panicked: {msg}"))).collect();
        }
    };
    if scores.len() != items.len() {
        let msg = format!("reward returned {} scores for {} completions", scores.len(), items.len());
        return items.iter().map(|_| ScoreResult::failed(msg.clone())).collect();
    }
    scores
        .into_iter()
        .map(|mut s| {
            if !s.total.is_finite() {
                return ScoreResult::failed(format!("reward total is {} (not finite)", s.total));
            }
            for c in &mut s.components {
                if !c.value.is_finite() {
                    s.error.get_or_insert_with(|| format!("component {} is {} (not finite); counted as 0", c.name, c.value));
                    c.value = 0.0;
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
    impl Scorer for Broken {
        fn name(&self) -> String {
            "broken".into()
        }
        fn components(&self) -> Vec<(String, f64)> {
            vec![("x".into(), 1.0)]
        }
        fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
            match self.0 {
                0 => vec![],
                1 => items.iter().map(|_| ScoreResult { total: f64::NAN, components: vec![], error: None }).collect(),
                _ => panic!("boom"),
            }
        }
    }

    #[test]
    fn broken_rewards_become_zero_with_an_error() {
        let items = vec![(TaskRef::Id("t".into()), "c".to_string()); 2];
        for (mode, needle) in [(0, "0 scores for 2"), (1, "not finite"), (2, "boom")] {
            let s = score_checked(&Broken(mode), &items);
            assert_eq!(s.len(), 2);
            assert!(s.iter().all(|s| s.total == 0.0 && s.error.as_deref().unwrap().contains(needle)), "{s:?}");
        }
    }

    #[test]
    fn a_non_finite_component_counts_zero_and_keeps_the_others_and_their_detail() {
        struct HalfNan;
        impl Scorer for HalfNan {
            fn name(&self) -> String {
                "half".into()
            }
            fn components(&self) -> Vec<(String, f64)> {
                vec![("a".into(), 0.5), ("b".into(), 0.5)]
            }
            fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
                let c = |name: &str, value: f64| sigmaforge_runtime::ComponentScore {
                    name: name.into(),
                    value,
                    weight: 0.5,
                    detail: format!("{name} detail"),
                };
                items.iter().map(|_| ScoreResult { total: 0.5, components: vec![c("a", 1.0), c("b", f64::NAN)], error: None }).collect()
            }
        }
        let s = score_checked(&HalfNan, &[(TaskRef::Id("t".into()), "c".into())]);
        assert_eq!(s[0].components[0].value, 1.0);
        assert_eq!(s[0].components[0].detail, "a detail");
        assert_eq!(s[0].components[1].value, 0.0);
        assert!(s[0].error.as_deref().unwrap().contains("component b is NaN"), "{:?}", s[0].error);
    }
}
