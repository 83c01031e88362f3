//! `sigmaforge tool --plugins <wasm> --call '<json args>'`: call a tool plugin by hand.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::plugin::PluginSource;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: PluginSource,
    /// The arguments object, as JSON (see `sigmaforge plugin inspect` for the schema).
    #[arg(long)]
    call: String,
    /// Print {"tool", "result", "error"} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let parsed: serde_json::Value = serde_json::from_str(&args.call).with_context(|| format!("--call is not JSON: {}", args.call))?;
    if !parsed.is_object() {
        bail!("--call must be a JSON object of arguments, got: {}", args.call);
    }
    let set = args.source.load()?;
    let tool = PluginSource::tool_plugin(&set, &args.source.plugins)?;
    let out = tool.invoke(&args.call);
    if args.json {
        let (result, error) = match &out {
            Ok(r) => (Some(r.as_str()), None),
            Err(e) => (None, Some(e.as_str())),
        };
        println!("{}", serde_json::json!({ "tool": tool.spec().name, "result": result, "error": error }));
    } else {
        match &out {
            Ok(r) => println!("{r}"),
            Err(e) => eprintln!("tool error: {e}"),
        }
    }
    Ok(if out.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
