//! A task plugin built against `wit/` here: a frozen copy of wit/sigmaforge.wit at
//! `sigmaforge:plugin@0.1.0`, the version before `references`. The host implements 0.1.1;
//! 0.1.x are compatible, so it must load this plugin, list its tasks and score them, report
//! no reference answers, and refuse `reference_answer` naming both versions.
//!
//! Tasks `v010-0` … `v010-2` (train) and `v010-t` (test); the reward `target_share` is the
//! share of six slots holding the word "target".

wit_bindgen::generate!({ path: "wit", world: "task-plugin" });

use exports::sigmaforge::plugin::plugin::Guest as Plugin;
use exports::sigmaforge::plugin::reward::Guest as Reward;
use exports::sigmaforge::plugin::tasks::Guest as Tasks;
use sigmaforge::plugin::types::{ComponentScore, Message, PluginInfo, Task, TaskRef};

const TRAIN: [&str; 3] = ["v010-0", "v010-1", "v010-2"];
const TEST: [&str; 1] = ["v010-t"];

struct Toy010;

impl Plugin for Toy010 {
    fn info() -> PluginInfo {
        PluginInfo { name: "toy-task-v010".into(), version: "0.1.0".into(), description: "built against sigmaforge:plugin@0.1.0".into() }
    }
    fn init() -> Result<(), String> {
        Ok(())
    }
}

impl Tasks for Toy010 {
    fn splits() -> Vec<String> {
        vec!["train".into(), "test".into()]
    }

    fn list_tasks(split: String) -> Result<Vec<Task>, String> {
        let ids: &[&str] = match split.as_str() {
            "train" => &TRAIN,
            "test" => &TEST,
            _ => return Err(format!("unknown split `{split}` (train, test)")),
        };
        Ok(ids
            .iter()
            .map(|id| Task {
                id: id.to_string(),
                split: split.clone(),
                prompt: vec![Message { role: "user".into(), content: format!("say target ({id})") }],
                metadata: "{}".into(),
            })
            .collect())
    }
}

impl Reward for Toy010 {
    fn components() -> Vec<(String, f64)> {
        vec![("target_share".into(), 1.0)]
    }

    fn score(task_ref: TaskRef, completion: String) -> Result<Vec<ComponentScore>, String> {
        if let TaskRef::Id(id) = &task_ref
            && !TRAIN.contains(&id.as_str())
            && !TEST.contains(&id.as_str())
        {
            return Err(format!("unknown task `{id}`"));
        }
        let hits = completion.split_whitespace().filter(|w| *w == "target").count();
        let value = (hits as f64 / 6.0).min(1.0);
        Ok(vec![ComponentScore { name: "target_share".into(), value, weight: 1.0, detail: format!("{hits} of 6 slots") }])
    }
}

export!(Toy010);
