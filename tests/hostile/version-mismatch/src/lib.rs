//! A tool plugin built against a future contract version (`wit/` here is wit/sigmaforge.wit
//! with the package version raised to 0.2.0). The host implements 0.1.1 and must refuse it.

wit_bindgen::generate!({ path: "wit", world: "tool-plugin" });

use exports::sigmaforge::plugin::plugin::Guest as Plugin;
use exports::sigmaforge::plugin::tool::Guest as Tool;
use sigmaforge::plugin::types::{PluginInfo, ToolSpec};

struct Future;

impl Plugin for Future {
    fn info() -> PluginInfo {
        PluginInfo { name: "future".into(), version: "9.0.0".into(), description: "built against 0.2.0".into() }
    }
    fn init() -> Result<(), String> {
        Ok(())
    }
}

impl Tool for Future {
    fn spec() -> ToolSpec {
        ToolSpec { name: "noop".into(), description: "does nothing".into(), parameters: "{}".into() }
    }
    fn invoke(_arguments: String) -> Result<String, String> {
        Ok(String::new())
    }
}

export!(Future);
