//! Task plugins behind the reward traits.

use std::sync::Arc;

use anyhow::{Result, bail};
use sigmaforge_model::load::ChatMessage;
use sigmaforge_runtime::{ScoreResult, TaskPlugin, TaskRef};

use crate::environment::{Scorer, TaskEnvironment, TaskPrompt};

/// A task plugin scores as it is: the runtime has already checked each score against the
/// components the plugin declared (names, order, values in [0, 1]).
impl Scorer for TaskPlugin {
    fn name(&self) -> String {
        TaskPlugin::name(self).to_string()
    }
    fn components(&self) -> Vec<(String, f64)> {
        TaskPlugin::components(self).to_vec()
    }
    fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
        TaskPlugin::score_batch(self, items)
    }
}

/// A task plugin as the trainer's environment: the tasks of one split, listed once.
pub struct PluginEnvironment {
    plugin: Arc<TaskPlugin>,
    tasks: Vec<TaskPrompt>,
}

impl PluginEnvironment {
    /// Lists the tasks of `split`; a split without tasks is an error naming the plugin.
    pub fn new(plugin: Arc<TaskPlugin>, split: &str) -> Result<Self> {
        let tasks = plugin
            .list_tasks(split)?
            .into_iter()
            .map(|t| TaskPrompt { id: t.id, messages: t.prompt.into_iter().map(|m| ChatMessage::new(m.role, m.content)).collect() })
            .collect::<Vec<_>>();
        if tasks.is_empty() {
            bail!("plugin `{}` has no tasks in split `{split}`", plugin.name());
        }
        Ok(Self { plugin, tasks })
    }
}

impl Scorer for PluginEnvironment {
    fn name(&self) -> String {
        self.plugin.name().to_string()
    }
    fn components(&self) -> Vec<(String, f64)> {
        self.plugin.components().to_vec()
    }
    fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
        self.plugin.score_batch(items)
    }
}

impl TaskEnvironment for PluginEnvironment {
    fn tasks(&self) -> Result<Vec<TaskPrompt>> {
        Ok(self.tasks.clone())
    }
}
