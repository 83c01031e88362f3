//! Tool plugins as a model sees them: offered to hosted models in the OpenAI function-calling
//! format, and (through the model crate's `ToolBox` trait) to the episode loop, which both
//! `sigmaforge run` and local-model evals use. The one adapter between the runtime's tool plugins
//! and the models lives here.

use std::sync::Arc;

use serde_json::Value;
use sigmaforge_model::episode::{ToolBox, ToolInvokeError};
use sigmaforge_runtime::ToolPlugin;
use sigmaforge_toolcall::{ToolSpec, chat_template_tools};

/// Runs one tool by name with its JSON arguments text; `Err` is text for the model.
pub trait ToolRunner: Send + Sync {
    fn spec(&self) -> ToolSpec;
    fn invoke(&self, arguments: &str) -> Result<String, String>;
    /// Like `invoke`, keeping the tool's own refusal (`Ok(Err)`) apart from a failure to run it
    /// at all (`Err`: a trap, the time limit, the memory cap). Tools that cannot crash need not
    /// override it.
    fn try_invoke(&self, arguments: &str) -> Result<Result<String, String>, String> {
        Ok(self.invoke(arguments))
    }
}

impl ToolRunner for ToolPlugin {
    fn spec(&self) -> ToolSpec {
        let s = ToolPlugin::spec(self);
        ToolSpec { name: s.name.clone(), description: s.description.clone(), parameters: s.parameters.clone() }
    }
    fn invoke(&self, arguments: &str) -> Result<String, String> {
        ToolPlugin::invoke(self, arguments)
    }
    fn try_invoke(&self, arguments: &str) -> Result<Result<String, String>, String> {
        ToolPlugin::try_invoke(self, arguments)
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

    /// The loaded tool plugins; a plugin whose parameters schema is not a JSON object is refused
    /// by name (models are told to send an arguments object).
    pub fn from_plugins(plugins: &[Arc<ToolPlugin>], max_turns: usize) -> anyhow::Result<Toolbox> {
        for p in plugins {
            let s = p.spec();
            ToolSpec::from_wit(&s.name, &s.description, &s.parameters.to_string()).map_err(|e| anyhow::anyhow!("tool plugin `{}`: {e}", p.name()))?;
        }
        Ok(Toolbox::new(plugins.iter().map(|p| p.clone() as Arc<dyn ToolRunner>).collect(), max_turns))
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

/// Training rollouts and local-model evals take their tool turns in the trainer's episode loop,
/// which reaches tools through this trait (the loop parses the calls itself). A tool's refusal
/// is `Failed`, a sandbox failure `Crashed`; both are shown to the model.
impl ToolBox for Toolbox {
    fn specs(&self) -> Vec<ToolSpec> {
        self.specs.clone()
    }

    fn invoke(&self, name: &str, arguments_json: &str) -> Result<String, ToolInvokeError> {
        let i = self.specs.iter().position(|s| s.name == name).ok_or_else(|| ToolInvokeError::Failed(format!("no tool named `{name}`")))?;
        match self.tools[i].try_invoke(arguments_json) {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(refusal)) => Err(ToolInvokeError::Failed(refusal)),
            Err(sandbox) => Err(ToolInvokeError::Crashed(sandbox)),
        }
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
