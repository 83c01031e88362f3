//! Tool plugins offered to a model during the eval, in the OpenAI function-calling format.

use std::sync::Arc;

use serde_json::Value;
use sigmaforge_runtime::ToolPlugin;
use sigmaforge_toolcall::{ToolSpec, chat_template_tools};
use sigmaforge_trainer::episode::{ToolBox, ToolInvokeError};

/// Runs one tool by name with its JSON arguments text; `Err` is text for the model.
pub trait ToolRunner: Send + Sync {
    fn spec(&self) -> ToolSpec;
    fn invoke(&self, arguments: &str) -> Result<String, String>;
}

impl ToolRunner for ToolPlugin {
    fn spec(&self) -> ToolSpec {
        let s = ToolPlugin::spec(self);
        ToolSpec { name: s.name.clone(), description: s.description.clone(), parameters: s.parameters.clone() }
    }
    fn invoke(&self, arguments: &str) -> Result<String, String> {
        ToolPlugin::invoke(self, arguments)
    }
}

/// The tools of an eval and how many tool turns a sample may take.
#[derive(Clone)]
pub struct Toolbox {
    tools: Vec<Arc<dyn ToolRunner>>,
    specs: Vec<ToolSpec>,
    /// Model turns that may call tools; after that the request goes without `tools`.
    pub max_turns: usize,
}

impl Toolbox {
    pub fn new(tools: Vec<Arc<dyn ToolRunner>>, max_turns: usize) -> Toolbox {
        let specs = tools.iter().map(|t| t.spec()).collect();
        Toolbox { tools, specs, max_turns }
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.name.clone()).collect()
    }

    /// The request's `tools` field: `[{"type": "function", "function": {name, description, parameters}}]`.
    pub fn openai_tools(&self) -> Value {
        chat_template_tools(&self.specs)
    }

    /// Runs a call the model made. Never fails: an unknown tool, arguments that are not a JSON
    /// object, or the tool's own error become an `error: …` text the model reads.
    pub fn run(&self, name: &str, arguments: &str) -> String {
        let Some(i) = self.specs.iter().position(|s| s.name == name) else {
            return format!("error: unknown tool `{name}`; available tools: {}", self.names().join(", "));
        };
        // Some servers send `""` for a call without arguments.
        let arguments = if arguments.trim().is_empty() { "{}" } else { arguments };
        match serde_json::from_str::<Value>(arguments) {
            Ok(Value::Object(_)) => {}
            Ok(other) => return format!("error: the arguments of `{name}` must be a JSON object, got {other}"),
            Err(e) => return format!("error: the arguments of `{name}` are not valid JSON ({e}): {arguments}"),
        }
        match self.tools[i].invoke(arguments) {
            Ok(result) => result,
            Err(e) => format!("error: {e}"),
        }
    }
}

/// Local models take their tool turns in the trainer's episode loop (the same code as training
/// rollouts), which reaches tools through this trait. The argument checks above stay with the
/// episode loop's own parsing; a tool's error is `Failed`, shown to the model.
impl ToolBox for Toolbox {
    fn specs(&self) -> Vec<ToolSpec> {
        self.specs.clone()
    }

    fn invoke(&self, name: &str, arguments_json: &str) -> Result<String, ToolInvokeError> {
        let i = self.specs.iter().position(|s| s.name == name).ok_or_else(|| ToolInvokeError::Failed(format!("unknown tool `{name}`")))?;
        self.tools[i].invoke(arguments_json).map_err(ToolInvokeError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl ToolRunner for Echo {
        fn spec(&self) -> ToolSpec {
            ToolSpec { name: "echo".into(), description: "echoes".into(), parameters: serde_json::json!({"type": "object"}) }
        }
        fn invoke(&self, arguments: &str) -> Result<String, String> {
            if arguments.contains("fail") { Err("it failed".into()) } else { Ok(format!("got {arguments}")) }
        }
    }

    #[test]
    fn bad_calls_become_error_text() {
        let tb = Toolbox::new(vec![Arc::new(Echo)], 1);
        assert_eq!(tb.run("echo", r#"{"q":1}"#), r#"got {"q":1}"#);
        assert_eq!(tb.run("echo", ""), "got {}");
        assert!(tb.run("nope", "{}").starts_with("error: unknown tool `nope`; available tools: echo"));
        assert!(tb.run("echo", "[1]").contains("must be a JSON object"));
        assert!(tb.run("echo", "{oops").contains("not valid JSON"));
        assert_eq!(tb.run("echo", r#"{"fail":true}"#), "error: it failed");
        assert_eq!(tb.openai_tools()[0]["function"]["name"], "echo");
    }
}
