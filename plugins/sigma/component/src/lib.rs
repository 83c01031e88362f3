//! `sigma.wasm`: the Sigma task plugin (world `reference-task-plugin` of `sigmaforge:plugin`:
//! tasks, reward, and the reference answers of train tasks for `sigmaforge sft`).
//!
//! A thin adapter: every decision lives in the `sigma-task` crate, which is tested natively;
//! this file only converts between the WIT types and that crate's types (its typed errors become
//! the `string` errors of the WIT contract here). The host grants the
//! data directory read-only at `/data` (config key `data_dir` overrides the guest path).

wit_bindgen::generate!({ path: "../../../wit", world: "reference-task-plugin" });

use std::path::Path;
use std::sync::OnceLock;

use exports::sigmaforge::plugin::plugin::Guest as PluginGuest;
use exports::sigmaforge::plugin::references::Guest as ReferencesGuest;
use exports::sigmaforge::plugin::reward::Guest as RewardGuest;
use exports::sigmaforge::plugin::tasks::Guest as TasksGuest;
use sigma_task::{LogLevel, SigmaTask, TaskConfig};
use sigmaforge::plugin::host::{self, Level};
use sigmaforge::plugin::types::{ComponentScore, Message, PluginInfo, Task, TaskRef};

/// The loaded task; set once by `init` (the host calls `init` once per instance).
static TASK: OnceLock<SigmaTask> = OnceLock::new();

struct SigmaPlugin;

fn task() -> Result<&'static SigmaTask, String> {
    TASK.get().ok_or_else(|| "the sigma plugin was not initialised (the host must call init first)".to_string())
}

fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
    };
    host::log(level, message);
}

impl PluginGuest for SigmaPlugin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "sigma".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Write a Sigma detection rule for an analyst's request; rewarded by running it over real EVTX logs \
                          (yaml_valid, logsource_correct, iou against the reference rule's matches)"
                .into(),
        }
    }

    fn init() -> Result<(), String> {
        if TASK.get().is_some() {
            return Ok(());
        }
        let config = TaskConfig::from_lookup(host::config).map_err(|e| e.to_string())?;
        let data_dir = host::config("data_dir").unwrap_or_else(|| "/data".to_string());
        let loaded = SigmaTask::load(Path::new(&data_dir), config, &log).map_err(|e| e.to_string())?;
        let _ = TASK.set(loaded);
        Ok(())
    }
}

impl TasksGuest for SigmaPlugin {
    fn splits() -> Vec<String> {
        sigma_task::SPLITS.iter().map(|s| s.to_string()).collect()
    }

    fn list_tasks(split: String) -> Result<Vec<Task>, String> {
        let tasks = task()?.list_tasks(&split).map_err(|e| e.to_string())?;
        Ok(tasks
            .into_iter()
            .map(|t| Task {
                id: t.id,
                split: t.split,
                prompt: t.prompt.into_iter().map(|m| Message { role: m.role, content: m.content }).collect(),
                metadata: t.metadata,
            })
            .collect())
    }
}

impl RewardGuest for SigmaPlugin {
    fn components() -> Vec<(String, f64)> {
        match task() {
            Ok(t) => t.components(),
            // Before init the configured weights are unknown; report the defaults.
            Err(_) => sigma_task::COMPONENTS.iter().zip(sigma_task::config::DEFAULT_WEIGHTS).map(|(n, w)| (n.to_string(), w)).collect(),
        }
    }

    fn score(task_ref: TaskRef, completion: String) -> Result<Vec<ComponentScore>, String> {
        let t = task()?;
        let r = match &task_ref {
            TaskRef::Id(id) => sigma_task::TaskRef::Id(id),
            TaskRef::Reference(yaml) => sigma_task::TaskRef::Reference(yaml),
        };
        let scores = t.score(r, &completion).map_err(|e| e.to_string())?;
        Ok(scores.into_iter().map(|c| ComponentScore { name: c.name, value: c.value, weight: c.weight, detail: c.detail }).collect())
    }
}

impl ReferencesGuest for SigmaPlugin {
    fn reference_answer(task_id: String) -> Result<Option<String>, String> {
        task()?.reference_answer(&task_id).map_err(|e| e.to_string())
    }
}

export!(SigmaPlugin);
