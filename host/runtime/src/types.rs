//! The runtime's public data types: plain Rust mirrors of the WIT records, with serde so the
//! CLI, the trainer's logs and the reward server can print them as JSON.

use serde::{Deserialize, Serialize};

use crate::bindings::wit;

/// What a completion is scored against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskRef {
    /// A task the plugin listed, by id.
    Id(String),
    /// An ad-hoc reference (for Sigma: a reference rule's YAML text).
    Reference(String),
}

impl TaskRef {
    pub(crate) fn to_wit(&self) -> wit::TaskRef {
        match self {
            TaskRef::Id(s) => wit::TaskRef::Id(s.clone()),
            TaskRef::Reference(s) => wit::TaskRef::Reference(s.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub split: String,
    pub prompt: Vec<Message>,
    /// The plugin's metadata object (a JSON string that doesn't parse is kept as a string).
    pub metadata: serde_json::Value,
}

impl From<wit::Task> for Task {
    fn from(t: wit::Task) -> Self {
        let metadata = if t.metadata.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&t.metadata).unwrap_or(serde_json::Value::String(t.metadata))
        };
        Task { id: t.id, split: t.split, prompt: t.prompt.into_iter().map(|m| Message { role: m.role, content: m.content }).collect(), metadata }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentScore {
    pub name: String,
    pub value: f64,
    pub weight: f64,
    pub detail: String,
}

/// The score of one completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResult {
    /// Σ weight × value over the components; 0 when `error` is set.
    pub total: f64,
    pub components: Vec<ComponentScore>,
    /// Why the completion scored 0 because of the plugin or the task (trap, time limit, memory
    /// cap, invalid output, unknown task); names the plugin. None for an ordinary score.
    pub error: Option<String>,
}

impl ScoreResult {
    pub fn failed(message: impl Into<String>) -> Self {
        ScoreResult { total: 0.0, components: Vec::new(), error: Some(message.into()) }
    }

    pub fn from_components(components: Vec<ComponentScore>) -> Self {
        let total = components.iter().map(|c| c.weight * c.value).sum();
        ScoreResult { total, components, error: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}

impl From<wit::PluginInfo> for PluginInfo {
    fn from(i: wit::PluginInfo) -> Self {
        PluginInfo { name: i.name, version: i.version, description: i.description }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// The JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}
