//! A training job, assembled: which config, which run directory, which device, which ranks, and
//! the two stages (SFT warm start, then GRPO) run in order, resumable at any checkpoint.
//!
//! `sigmaforge run` parses its arguments into a [`JobRequest`], loads the plugins named by
//! [`TrainingJob::config`] and hands them over as a [`TaskEnvironment`] and a [`ToolBox`];
//! everything else (resume reconciliation, the run directory all ranks agree on, per-rank
//! devices, model loading, the stage order) is decided here, so another front end (a Python
//! binding, a scheduler) gets the same behaviour by calling the same two functions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use candle_core::Device;
use sigmaforge_distributed::{Backend, LaunchEnv};
use sigmaforge_model::episode::ToolBox;
use sigmaforge_model::load::{self, LoadOptions, Tokenizer};
use sigmaforge_model::model::CausalLm;
use sigmaforge_reward::TaskEnvironment;

use crate::checkpoint;
use crate::config::RunConfig;
use crate::parallel::DataParallel;
use crate::sft::{self, SftExample, SftTrainer};
use crate::train::{RunSummary, Trainer};

/// What a user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    /// Run configuration file; `None`: the checkpoint's (on resume) or the embedded default.
    pub config: Option<PathBuf>,
    /// A run directory (newest intact checkpoint) or one checkpoint directory to continue.
    pub resume: Option<PathBuf>,
    /// Run directory of a fresh run (default `runs/<UTC date-time>`).
    pub out: Option<PathBuf>,
    /// GRPO steps, overriding `training.steps` (the one setting a resume may change).
    pub steps: Option<u64>,
}

/// Where a run starts from.
enum Start {
    Fresh,
    /// Killed in its SFT stage (this run directory): no GRPO checkpoint yet; the stage resumes
    /// from its own.
    InSftStage(PathBuf),
    /// A GRPO checkpoint (its weights already hold the SFT stage's result).
    GrpoCheckpoint(PathBuf),
}

/// A job whose config, run directory, device and ranks are settled; [`TrainingJob::run`] trains.
pub struct TrainingJob {
    cfg: RunConfig,
    config_base: PathBuf,
    start: Start,
    run_dir: PathBuf,
    dp: DataParallel,
    device: Device,
    device_desc: String,
}

impl TrainingJob {
    /// Resolves the config (and what a resume may change), joins the other ranks when launched
    /// as one of several, picks this rank's device and the run directory every rank shares.
    pub fn prepare(request: &JobRequest) -> Result<Self> {
        let start = match &request.resume {
            Some(dir) if stopped_in_sft_stage(dir) => Start::InSftStage(dir.clone()),
            Some(dir) => Start::GrpoCheckpoint(checkpoint::resolve(dir)?),
            None => Start::Fresh,
        };
        let (mut cfg, config_base) = resolve_config(&start, request)?;
        if let Some(steps) = request.steps {
            ensure!(steps > 0, "--steps must be at least 1");
            cfg.training.steps = steps;
        }
        // The job: one process (no launcher variables) or one rank of several; this rank's device.
        let launch = LaunchEnv::from_env()?;
        let (device, device_desc) = select_rank_device(&cfg.model.device, &launch)?;
        let comm = sigmaforge_distributed::init(&launch, Backend::Auto, device.is_cuda())
            .with_context(|| format!("rank {} of {} cannot join the job at {}", launch.rank, launch.world_size, launch.master))?;
        let mut dp = DataParallel::new(comm);

        let run_dir = match (&start, &request.out) {
            (Start::InSftStage(_) | Start::GrpoCheckpoint(_), Some(_)) => {
                bail!("--out cannot be combined with --resume: a resumed run continues in its own directory")
            }
            (Start::InSftStage(dir), None) => dir.clone(),
            (Start::GrpoCheckpoint(ckpt), None) => {
                ckpt.parent().and_then(Path::parent).context("checkpoint directory has no run directory above it")?.to_path_buf()
            }
            (Start::Fresh, Some(out)) => out.clone(),
            (Start::Fresh, None) => PathBuf::from("runs").join(utc_stamp()),
        };
        // A job has one run directory, rank 0's (the default name has the start time in it,
        // which the ranks do not share).
        let run_dir = if dp.is_distributed() {
            let mut bytes = run_dir.to_string_lossy().into_owned().into_bytes();
            dp.broadcast_from_primary(&mut bytes, "the run directory")?;
            let chosen = PathBuf::from(String::from_utf8(bytes).context("rank 0's run directory is not UTF-8")?);
            if chosen != run_dir && (request.out.is_some() || request.resume.is_some()) {
                eprintln!("{}using rank 0's run directory {} instead of {}", dp.label(), chosen.display(), run_dir.display());
            }
            chosen
        } else {
            run_dir
        };
        if matches!(start, Start::Fresh) && (!checkpoint::list(&run_dir)?.is_empty() || !checkpoint::list(&sft::stage_dir(&run_dir))?.is_empty()) {
            bail!("{} already holds checkpoints of a run; continue it with --resume {0}, or choose another --out", run_dir.display());
        }
        Ok(TrainingJob { cfg, config_base, start, run_dir, dp, device, device_desc })
    }

    /// The run's configuration; its `plugins:` and `task.plugin` say which plugins to load.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    /// The folder relative paths in the config's `plugins:` section are resolved against.
    pub fn config_base(&self) -> &Path {
        &self.config_base
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Loads the model, runs the SFT stage (unless GRPO has begun) and then GRPO to the end.
    /// `sft_examples` is asked for the reference answers only when the SFT stage has work to
    /// do. Returns the GRPO summary on rank 0 and `None` on the other ranks.
    pub fn run(
        self,
        env: Arc<dyn TaskEnvironment>,
        toolbox: Arc<dyn ToolBox>,
        sft_examples: &dyn Fn(&str) -> Result<Vec<SftExample>>,
    ) -> Result<Option<RunSummary>> {
        let TrainingJob { cfg, start, run_dir, dp, device, device_desc, .. } = self;
        let primary = dp.rank() == 0;
        let (loaded, model_path) = load_policy(&cfg, &device, &format!("{}loading model", dp.label()), &device_desc)?;
        let (total, trainable) = (loaded.model.num_parameters(), loaded.model.num_trainable_parameters());
        std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        if primary && matches!(start, Start::Fresh) {
            std::fs::write(run_dir.join("config.yaml"), cfg.to_yaml()?)?;
        }

        // The SFT warm start, unless GRPO has already begun (its checkpoints hold the weights).
        let (model, tokenizer) = match (&cfg.sft, &start) {
            (Some(s), Start::Fresh | Start::InSftStage(_)) if s.steps > 0 => {
                ensure!(
                    !dp.is_distributed(),
                    "the sft stage runs in one process: run `sigmaforge sft` first, then the data-parallel job with model.path set to its export/merged"
                );
                let examples = sft_examples(&cfg.task.split)?;
                sft_stage(&cfg, loaded.model, loaded.tokenizer, &examples, &env.name(), &run_dir)?
            }
            _ => (loaded.model, loaded.tokenizer),
        };

        // GRPO.
        let steps = cfg.training.steps;
        let world = dp.world_size();
        let plugin = env.name();
        let mut trainer = Trainer::data_parallel(cfg, model, tokenizer, env, &run_dir, dp)?.with_tools(toolbox)?;
        if let Some(t) = trainer.tools() {
            eprintln!(
                "offering tool(s) {} in the {} format, up to {} tool turn(s) per rollout",
                t.specs().iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
                t.format(),
                t.max_turns()
            );
        }
        if let Start::GrpoCheckpoint(ckpt) = &start {
            trainer.restore(&checkpoint::load_resolved(ckpt, &device)?)?;
            if primary {
                eprintln!("resumed from {} at step {}", ckpt.display(), trainer.step());
            }
        }
        if !primary {
            // Rank 0 reports progress and writes the run's files; this rank only trains.
            trainer.run(false, None)?;
            return Ok(None);
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
            "training {} ({:.1}M parameters, {:.2}M trainable) on {} tasks of plugin `{plugin}`; run directory {}",
            model_path.display(),
            total as f64 / 1e6,
            trainable as f64 / 1e6,
            trainer.task_count(),
            run_dir.display()
        );
        let summary = trainer.run(true, None)?;
        if let Some(m) = &summary.last {
            eprintln!("done: {} of {steps} steps; last reward {:.3} ± {:.3}", summary.steps, m.reward.mean, m.reward.std);
        }
        Ok(Some(summary))
    }
}

/// The config of a run: a resumed run keeps its own (only `training.steps` may differ in an
/// explicit `--config`, since anything else would make the continued run a different
/// experiment); a fresh run reads `--config` or the embedded default. Also returns the folder
/// the config's relative plugin paths are resolved against.
fn resolve_config(start: &Start, request: &JobRequest) -> Result<(RunConfig, PathBuf)> {
    let cwd = || std::env::current_dir().context("cannot read the current directory");
    match (start, &request.config) {
        (Start::InSftStage(dir), explicit) => {
            ensure!(
                explicit.is_none(),
                "--config cannot be combined with --resume of a run in its SFT stage; it continues with {}/config.yaml",
                dir.display()
            );
            Ok((RunConfig::from_file(&dir.join("config.yaml"))?, cwd()?))
        }
        (Start::GrpoCheckpoint(ckpt), explicit) => {
            let text = std::fs::read_to_string(ckpt.join("config.yaml")).with_context(|| format!("checkpoint {}", ckpt.display()))?;
            let saved = RunConfig::from_yaml(&text, &format!("{}/config.yaml", ckpt.display()))?;
            let cfg = match explicit {
                None => saved,
                Some(path) => {
                    let given = RunConfig::from_file(path)?;
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
            Ok((cfg, cwd()?))
        }
        (Start::Fresh, Some(path)) => Ok((RunConfig::from_file(path)?, path.parent().map(Path::to_path_buf).unwrap_or_default())),
        (Start::Fresh, None) => Ok((RunConfig::default_config()?, cwd()?)),
    }
}

/// The device of this rank: with several ranks, `cuda` (and `auto` when a GPU is usable) means
/// the GPU of the rank's `LOCAL_RANK`, as torchrun-launched trainers do.
fn select_rank_device(request: &str, launch: &LaunchEnv) -> Result<(Device, String)> {
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

/// The SFT stage of a run, in `<run>/sft`: trains (or resumes, or, when it finished earlier,
/// reloads its final weights) and hands the model on to GRPO.
fn sft_stage(
    cfg: &RunConfig,
    model: CausalLm,
    tokenizer: Tokenizer,
    examples: &[SftExample],
    plugin: &str,
    run_dir: &Path,
) -> Result<(CausalLm, Tokenizer)> {
    let stage = sft::stage_dir(run_dir);
    let device = model.device().clone();
    let mut trainer = SftTrainer::new(cfg.clone(), model, tokenizer, examples, &stage)?;
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
    eprintln!("sft stage: {} steps on {} reference answers of plugin `{plugin}`; files in {}", total, trainer.examples(), stage.display());
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
pub fn load_policy(cfg: &RunConfig, device: &Device, what: &str, device_desc: &str) -> Result<(load::LoadedModel, PathBuf)> {
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
    let opts = LoadOptions {
        dtype: cfg.dtype(),
        device: device.clone(),
        lora: cfg.lora().cloned(),
        seed: cfg.training.seed,
        base_quant: cfg.model.base_quant,
        inference_only: false,
    };
    let loaded = load::load_model_with_adapter(&model_path, adapter, &opts).with_context(|| format!("cannot load model {}", model_path.display()))?;
    Ok((loaded, model_path))
}

/// `YYYYMMDD-HHMMSS` in UTC, for default run directory names.
fn utc_stamp() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string()
}
