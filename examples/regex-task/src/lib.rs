//! Example SigmaForge task plugin: regex synthesis. See `docs/plugins.md` for how it is built
//! and tested; the task logic is in `task.rs`, this file only adapts it to the WIT contract.
//!
//! Reward components (weights from the plugin config keys `weight.compiles` and
//! `weight.accuracy`, defaults 0.2 and 0.8):
//! * `compiles`: the answer holds a regex that compiles (within a program-size cap);
//! * `accuracy`: fraction of the task's strings (shown examples + held-out ones) that the
//!   anchored regex classifies correctly.
//!
//! Reference answers (`references`, for `sigmaforge sft`): a train task's known-good
//! `solution` in a ```regex fence; test tasks are refused.
//!
//! A `reference` task is JSON `{"positive": [...], "negative": [...]}`, so users can score a
//! regex against their own strings with `sigmaforge score --reference`.
//! Dependencies: `regex` (the task's own engine; size limits guard against huge programs),
//! `serde_json` for the bundled dataset.

pub mod task;

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "reference-task-plugin" });

    use std::sync::OnceLock;

    use exports::sigmaforge::plugin::plugin::Guest as Plugin;
    use exports::sigmaforge::plugin::references::Guest as References;
    use exports::sigmaforge::plugin::reward::Guest as Reward;
    use exports::sigmaforge::plugin::tasks::Guest as Tasks;
    use sigmaforge::plugin::host::{Level, config, log};
    use sigmaforge::plugin::types::{ComponentScore, Message, PluginInfo, Task, TaskRef};

    use crate::task::{self, AdHoc, COMPONENTS, RegexTask};

    struct State {
        tasks: Vec<RegexTask>,
        weights: [f64; 2],
    }

    static STATE: OnceLock<State> = OnceLock::new();

    fn state() -> Result<&'static State, String> {
        STATE.get().ok_or_else(|| "init was not called".to_string())
    }

    fn weight(key: &str, default: f64) -> Result<f64, String> {
        match config(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("config `{key}` = `{v}` is not a non-negative number")),
        }
    }

    struct RegexPlugin;

    impl Plugin for RegexPlugin {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "regex-task".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Regex synthesis from example strings, scored on held-out strings".into(),
            }
        }

        fn init() -> Result<(), String> {
            let tasks = task::load_tasks()?;
            let weights = [weight("weight.compiles", 0.2)?, weight("weight.accuracy", 0.8)?];
            log(Level::Debug, &format!("{} regex tasks loaded", tasks.len()));
            let _ = STATE.set(State { tasks, weights });
            Ok(())
        }
    }

    impl Tasks for RegexPlugin {
        fn splits() -> Vec<String> {
            vec!["train".into(), "test".into()]
        }

        fn list_tasks(split: String) -> Result<Vec<Task>, String> {
            let st = state()?;
            if split != "train" && split != "test" {
                return Err(format!("unknown split `{split}` (train, test)"));
            }
            Ok(st
                .tasks
                .iter()
                .filter(|t| t.split == split)
                .map(|t| Task {
                    id: t.id.clone(),
                    split: t.split.clone(),
                    prompt: vec![
                        Message { role: "system".into(), content: task::SYSTEM_PROMPT.into() },
                        Message { role: "user".into(), content: task::user_prompt(t) },
                    ],
                    metadata: serde_json::json!({ "title": t.description }).to_string(),
                })
                .collect())
        }
    }

    impl Reward for RegexPlugin {
        fn components() -> Vec<(String, f64)> {
            let w = STATE.get().map(|s| s.weights).unwrap_or([0.2, 0.8]);
            COMPONENTS.iter().zip(w).map(|(n, w)| (n.to_string(), w)).collect()
        }

        fn score(task_ref: TaskRef, completion: String) -> Result<Vec<ComponentScore>, String> {
            let st = state()?;
            let (positive, negative) = match task_ref {
                TaskRef::Id(id) => {
                    let t = st.tasks.iter().find(|t| t.id == id).ok_or_else(|| format!("unknown task `{id}`"))?;
                    let mut p = t.examples.positive.clone();
                    p.extend(t.held_out.positive.iter().cloned());
                    let mut n = t.examples.negative.clone();
                    n.extend(t.held_out.negative.iter().cloned());
                    (p, n)
                }
                TaskRef::Reference(text) => {
                    let r: AdHoc = serde_json::from_str(&text)
                        .map_err(|e| format!("reference must be JSON {{\"positive\": [...], \"negative\": [...]}}: {e}"))?;
                    if r.positive.is_empty() && r.negative.is_empty() {
                        return Err("reference has no strings".into());
                    }
                    (r.positive, r.negative)
                }
            };
            Ok(task::score(&completion, &positive, &negative)
                .into_iter()
                .zip(st.weights)
                .map(|((name, value, detail), weight)| ComponentScore { name: name.into(), value, weight, detail })
                .collect())
        }
    }

    impl References for RegexPlugin {
        fn reference_answer(task_id: String) -> Result<Option<String>, String> {
            task::reference_answer(&state()?.tasks, &task_id)
        }
    }

    export!(RegexPlugin);
}
