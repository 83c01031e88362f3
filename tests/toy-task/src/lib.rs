//! Test-only task plugin: a toy verifiable reward for the tiny random models the trainer's
//! tests build (word-level vocabulary "w4" … "w63", see `sigmaforge_model::testing`).
//!
//! Task `task-i` asks with two words; the reward is the share of the `slots` completion
//! positions (config key `slots`, default 6 = the test's `max_new_tokens`) that hold a target
//! word w4 … w15 (12 of the 60 word ids). A random model scores ~0.15, a model that learnt the
//! preference ~1. It exists so that the learning test gets its reward through the real plugin
//! path (wasm component, runtime, `sigmaforge run`) rather than a native stand-in.
//!
//! It implements the `reference-task-plugin` world: the reference answer of task `i` is
//! [`reference_answer`]`(i)`, six target words (reward 1 at the default `slots`), so the `sft`
//! path can be tested through a real plugin too.

/// The reward of `completion` with `slots` completion positions, in [0, 1].
pub fn target_share(completion: &str, slots: usize) -> f64 {
    let hits = completion
        .split_whitespace()
        .filter(|w| w.strip_prefix('w').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (4..16).contains(&n)))
        .count();
    (hits as f64 / slots.max(1) as f64).min(1.0)
}

/// The prompt words of task `i`.
pub fn task_prompt(i: usize) -> String {
    format!("w{} w{}", 20 + i, 40 + (i * 7) % 20)
}

pub const TASKS: usize = 16;

/// The reference answer of task `i`: six target words, a rotation of w4 … w15 by `i`.
pub fn reference_answer(i: usize) -> String {
    (0..6).map(|k| format!("w{}", 4 + (i + k) % 12)).collect::<Vec<_>>().join(" ")
}

/// The task number of a task id `task-<i>`, when it names one of the [`TASKS`].
pub fn task_number(id: &str) -> Option<usize> {
    id.strip_prefix("task-").and_then(|n| n.parse::<usize>().ok()).filter(|n| *n < TASKS)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "reference-task-plugin" });

    use std::sync::OnceLock;

    use exports::sigmaforge::plugin::plugin::Guest as Plugin;
    use exports::sigmaforge::plugin::references::Guest as References;
    use exports::sigmaforge::plugin::reward::Guest as Reward;
    use exports::sigmaforge::plugin::tasks::Guest as Tasks;
    use sigmaforge::plugin::host::config;
    use sigmaforge::plugin::types::{ComponentScore, Message, PluginInfo, Task, TaskRef};

    static SLOTS: OnceLock<usize> = OnceLock::new();

    struct Toy;

    impl Plugin for Toy {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "toy-task".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Toy reward for tiny test models: share of target words".into(),
            }
        }

        fn init() -> Result<(), String> {
            let slots = match config("slots") {
                None => 6,
                Some(v) => {
                    v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| format!("config `slots` = `{v}` is not a positive integer"))?
                }
            };
            let _ = SLOTS.set(slots);
            Ok(())
        }
    }

    impl Tasks for Toy {
        fn splits() -> Vec<String> {
            vec!["train".into()]
        }

        fn list_tasks(split: String) -> Result<Vec<Task>, String> {
            if split != "train" {
                return Err(format!("unknown split `{split}` (train)"));
            }
            Ok((0..crate::TASKS)
                .map(|i| Task {
                    id: format!("task-{i}"),
                    split: split.clone(),
                    prompt: vec![Message { role: "user".into(), content: crate::task_prompt(i) }],
                    metadata: "{}".into(),
                })
                .collect())
        }
    }

    impl Reward for Toy {
        fn components() -> Vec<(String, f64)> {
            vec![("target_share".into(), 1.0)]
        }

        fn score(task_ref: TaskRef, completion: String) -> Result<Vec<ComponentScore>, String> {
            if let TaskRef::Id(id) = &task_ref
                && crate::task_number(id).is_none()
            {
                return Err(format!("unknown task `{id}`"));
            }
            let value = crate::target_share(&completion, *SLOTS.get().unwrap_or(&6));
            Ok(vec![ComponentScore { name: "target_share".into(), value, weight: 1.0, detail: String::new() }])
        }
    }

    impl References for Toy {
        fn reference_answer(task_id: String) -> Result<Option<String>, String> {
            // Every toy task is a train task.
            crate::task_number(&task_id).map(|i| Some(crate::reference_answer(i))).ok_or_else(|| format!("unknown task `{task_id}`"))
        }
    }

    export!(Toy);
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_only_target_words() {
        assert_eq!(super::target_share("w4 w15 w16 w3 x", 6), 2.0 / 6.0);
        assert_eq!(super::target_share("w5 w5 w5 w5 w5 w5 w5", 6), 1.0);
        assert_eq!(super::target_share("", 6), 0.0);
    }

    #[test]
    fn every_reference_answer_scores_one() {
        for i in 0..super::TASKS {
            assert_eq!(super::target_share(&super::reference_answer(i), 6), 1.0);
        }
        assert_eq!(super::task_number("task-3"), Some(3));
        assert_eq!(super::task_number("task-16"), None);
    }
}
