//! `sigmaforge plugin inspect <file.wasm>`, plus the plugin loading shared by the `tasks`,
//! `score` and `tool` commands (`--plugins <file.wasm|plugins.yml>`, `--data`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sigmaforge_runtime::{LoadedPlugin, PluginConfig, PluginSet, PluginsConfig, Runtime, RuntimeOptions, TaskPlugin, ToolPlugin, World};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Show what a plugin is: its world, WIT version, info, and the tasks, reward components or
    /// tool it provides.
    Inspect {
        /// The component file.
        file: PathBuf,
        /// Data directory granted to the plugin's `init` (default: $SIGMAFORGE_DATA, then ../shared/data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.action {
        Action::Inspect { file, data, json } => inspect(&file, data.as_deref(), json),
    }
}

fn inspect(file: &Path, data: Option<&Path>, json: bool) -> Result<ExitCode> {
    let runtime = new_runtime()?;
    let data = data_dir(data)?;
    let report = runtime.inspect(file, data.as_deref())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("file:        {} ({} bytes, sha256 {})", report.file.display(), report.size_bytes, report.sha256);
        println!("world:       {}", report.world);
        println!("wit version: sigmaforge:plugin@{} (host: {})", report.wit_version, report.host_wit_version);
        if report.world != World::ToolPlugin {
            let answers = if report.references { "yes (sigmaforge sft can train on them)" } else { "no (sigmaforge sft cannot use this plugin)" };
            println!("references:  {answers}");
        }
        if let Some(info) = &report.info {
            println!("plugin:      {} {} - {}", info.name, info.version, info.description);
        }
        for s in &report.splits {
            match (&s.tasks, &s.error) {
                (Some(n), _) => println!("split:       {} ({n} tasks)", s.split),
                (None, Some(e)) => println!("split:       {} (listing failed: {e})", s.split),
                _ => println!("split:       {}", s.split),
            }
        }
        for (name, weight) in &report.components {
            println!("reward:      {name} (weight {weight})");
        }
        if let Some(tool) = &report.tool {
            println!("tool:        {} - {}", tool.name, tool.description);
            println!("parameters:  {}", tool.parameters);
        }
        if let Some(e) = &report.load_error {
            println!("not started: {e}");
        }
    }
    Ok(if report.load_error.is_some() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `--plugins`, `--data` and `--plugin-config`, shared by the commands that run a plugin.
#[derive(clap::Args, Debug)]
pub struct PluginSource {
    /// A plugin component (.wasm) or a plugins config file (.yml/.yaml/.json).
    #[arg(long = "plugins", value_name = "WASM|CONFIG")]
    pub plugins: PathBuf,
    /// Data directory, granted read-only at /data to a bare .wasm plugin
    /// (default: $SIGMAFORGE_DATA, then ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A host config value for a bare .wasm plugin (`key=value`, repeatable).
    #[arg(long = "plugin-config", value_name = "KEY=VALUE")]
    pub plugin_config: Vec<String>,
    /// Parallel instances for a bare .wasm plugin (default: available cores).
    #[arg(long)]
    pub instances: Option<usize>,
}

impl PluginSource {
    /// Loads the plugins named by `--plugins`.
    pub fn load(&self) -> Result<PluginSet> {
        let runtime = new_runtime()?;
        let is_config = matches!(self.plugins.extension().and_then(|e| e.to_str()), Some("yml" | "yaml" | "json"));
        if is_config {
            if !self.plugin_config.is_empty() || self.instances.is_some() {
                bail!("--plugin-config and --instances apply to a bare .wasm; set `config:`/`limits:` in {}", self.plugins.display());
            }
            let config = PluginsConfig::from_file(&self.plugins)?;
            if config.plugins.is_empty() {
                bail!("{} names no plugins", self.plugins.display());
            }
            return runtime.load_all(&config);
        }
        let mut cfg = PluginConfig::from_path(&self.plugins);
        if let Some(dir) = data_dir(self.data.as_deref())? {
            cfg = cfg.with_data(dir);
        }
        for kv in &self.plugin_config {
            let (k, v) = kv.split_once('=').with_context(|| format!("--plugin-config `{kv}` is not key=value"))?;
            cfg.config.insert(k.trim().to_string(), v.to_string());
        }
        if let Some(n) = self.instances {
            cfg.limits.instances = n;
        }
        let mut set = PluginSet::default();
        match runtime.load(&cfg)? {
            LoadedPlugin::Task(t) => {
                set.tasks.insert(cfg.name.clone(), t.into());
            }
            LoadedPlugin::Tool(t) => {
                set.tools.insert(cfg.name.clone(), t.into());
            }
        }
        Ok(set)
    }

    /// The one task plugin loaded.
    pub fn task_plugin(set: &PluginSet, source: &Path) -> Result<std::sync::Arc<TaskPlugin>> {
        match set.tasks.len() {
            1 => Ok(set.tasks.values().next().expect("one").clone()),
            0 => bail!("{} is not a task plugin (it provides the tool(s): {})", source.display(), names(set.tools.keys())),
            _ => bail!("{} loads several task plugins ({}); pass a config with one", source.display(), names(set.tasks.keys())),
        }
    }

    /// The one tool plugin loaded.
    pub fn tool_plugin(set: &PluginSet, source: &Path) -> Result<std::sync::Arc<ToolPlugin>> {
        match set.tools.len() {
            1 => Ok(set.tools.values().next().expect("one").clone()),
            0 => bail!("{} is not a tool plugin (it provides the task plugin(s): {})", source.display(), names(set.tasks.keys())),
            _ => bail!("{} loads several tool plugins ({}); pass a config with one", source.display(), names(set.tools.keys())),
        }
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    it.cloned().collect::<Vec<_>>().join(", ")
}

pub fn new_runtime() -> Result<Runtime> {
    Runtime::new(RuntimeOptions::default())
}

/// `--data` when given (must exist), else the default resolution; None when nothing is found
/// by default (plugins that need data then say so from their `init`).
pub fn data_dir(explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    match explicit {
        Some(p) => Ok(Some(sigmaforge_data::resolve(Some(p))?)),
        None => Ok(sigmaforge_data::resolve(None).ok()),
    }
}
