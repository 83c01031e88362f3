//! The wasm component: the `tool-plugin` world of `wit/sigmaforge.wit` over [`crate::tool`].
//! `init` reads the configuration through the host's `config` import and loads the corpus from
//! the granted directory; every bad corpus line is logged as a warning naming file and line.
//! With config `endpoint` set, queries go to that HTTP service instead ([`crate::remote`]).

use std::sync::OnceLock;
use std::time::Instant;

use crate::remote::RemoteTool;
use crate::tool::{SearchConfig, SearchTool, spec};

wit_bindgen::generate!({ path: "../../wit", world: "tool-plugin" });

use exports::sigmaforge::plugin::plugin::Guest as PluginGuest;
use exports::sigmaforge::plugin::tool::Guest as ToolGuest;
use sigmaforge::plugin::host::{Level, config, log};
use sigmaforge::plugin::types::{PluginInfo, ToolSpec};

/// Warnings logged one by one before the rest are summarised (a broken file must not flood the log).
const MAX_LOGGED_WARNINGS: usize = 20;

enum Loaded {
    Local(SearchTool),
    Remote(RemoteTool),
}

static TOOL: OnceLock<Loaded> = OnceLock::new();

/// The WIT contract's errors are strings: the typed errors of the library end here.
fn configuration() -> Result<SearchConfig, String> {
    SearchConfig::from_lookup(config).map_err(|e| e.to_string())
}

struct Component;

impl PluginGuest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "search".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Offline full-text search (BM25F) over a JSONL knowledge corpus".to_owned(),
        }
    }

    fn init() -> Result<(), String> {
        if TOOL.get().is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let config = configuration()?;
        if config.endpoint.is_some() {
            let remote = RemoteTool::new(config).map_err(|e| e.to_string())?;
            let e = remote.endpoint();
            log(Level::Info, &format!("forwarding queries to http://{}:{}{}", e.host, e.port, e.path));
            let _ = TOOL.set(Loaded::Remote(remote));
            return Ok(());
        }
        let dir = config.corpus_dir.display().to_string();
        let (tool, warnings) =
            SearchTool::load(config).map_err(|e| format!("{e} (grant the corpus directory to the plugin and set its config corpus_dir)"))?;
        for warning in warnings.iter().take(MAX_LOGGED_WARNINGS) {
            log(Level::Warn, &format!("skipped corpus line {warning}"));
        }
        if warnings.len() > MAX_LOGGED_WARNINGS {
            log(Level::Warn, &format!("... and {} more skipped corpus lines", warnings.len() - MAX_LOGGED_WARNINGS));
        }
        log(
            Level::Info,
            &format!(
                "loaded {} documents ({} terms) from {dir} in {} ms",
                tool.index().len(),
                tool.index().vocabulary_len(),
                started.elapsed().as_millis()
            ),
        );
        // Single-threaded guest: nothing else can have set it since the check above.
        let _ = TOOL.set(Loaded::Local(tool));
        Ok(())
    }
}

impl ToolGuest for Component {
    fn spec() -> ToolSpec {
        let s = match TOOL.get() {
            Some(Loaded::Local(tool)) => tool.spec(),
            Some(Loaded::Remote(tool)) => tool.spec(),
            None => spec(&configuration().unwrap_or_default()),
        };
        ToolSpec { name: s.name, description: s.description, parameters: s.parameters }
    }

    fn invoke(arguments: String) -> Result<String, String> {
        match TOOL.get() {
            Some(Loaded::Local(tool)) => tool.invoke(&arguments).map_err(|e| e.to_string()),
            Some(Loaded::Remote(tool)) => tool.invoke(&arguments).map_err(|e| e.to_string()),
            None => Err("the search plugin is not initialised (the host must call init first)".to_owned()),
        }
    }
}

export!(Component);
