//! `sigmaforge tasks --plugins <wasm> [--data <dir>] [--split train|test] [--json]`: list a task
//! plugin's tasks.

use std::process::ExitCode;

use anyhow::Result;

use super::plugin::PluginSource;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: PluginSource,
    /// Only this split (default: every split the plugin offers).
    #[arg(long)]
    split: Option<String>,
    /// One JSON object per task and line: {"id", "split", "prompt": [{"role","content"}], "metadata"}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let set = args.source.load()?;
    let plugin = PluginSource::task_plugin(&set, &args.source.plugins)?;
    let splits = match &args.split {
        Some(s) => vec![s.clone()],
        None => plugin.splits().to_vec(),
    };
    for split in &splits {
        let tasks = plugin.list_tasks(split)?;
        for task in &tasks {
            if args.json {
                println!("{}", serde_json::to_string(task)?);
            } else {
                let title = task
                    .metadata
                    .get("title")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
                    .or_else(|| task.prompt.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()))
                    .unwrap_or_default();
                println!("{}\t{}\t{}", task.id, task.split, one_line(&title, 100));
            }
        }
        if !args.json {
            eprintln!("{}: {} tasks in split `{split}`", plugin.name(), tasks.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max { flat } else { format!("{}…", flat.chars().take(max).collect::<String>()) }
}
