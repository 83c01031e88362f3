//! `sigmaforge sft`: supervised fine-tuning on a task plugin's reference answers, the warm start
//! before GRPO.
//!
//! ```text
//! sigmaforge sft --plugins <wasm|plugins.yml> [--config <run.yaml>] [--steps N] [--out DIR]
//!                [--resume DIR] [--data DIR]
//! ```
//! The config is a run config (the embedded default without `--config`); its `sft:` section
//! sets steps, batch and learning rate, the rest (model, LoRA, checkpoints, exports) is shared
//! with `run`. The output directory holds `config.yaml`, `metrics.jsonl` (loss, token accuracy,
//! lr, grad norm, tokens/s), `metrics.png`, `checkpoints/step-N/` and at the end
//! `export/merged` (a Hugging Face directory) and, with LoRA, `export/adapter` (PEFT). GRPO
//! starts from either: `model.path: DIR/export/merged`, or the base model with
//! `model.adapter: DIR/export/adapter`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use sigmaforge_model::load::ChatMessage;
use sigmaforge_runtime::TaskPlugin;
use sigmaforge_trainer::checkpoint;
use sigmaforge_trainer::config::RunConfig;
use sigmaforge_trainer::job::load_policy;
use sigmaforge_trainer::sft::{SftExample, SftTrainer};

use super::run::load_plugins;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A task plugin component (.wasm, built against sigmaforge:plugin 0.1.1 or later with the
    /// `references` interface) or a plugins config.
    #[arg(long = "plugins", value_name = "WASM|CONFIG", required = true)]
    plugins: Vec<PathBuf>,
    /// Run configuration (YAML) with an `sft:` section. Default: the built-in
    /// configs/smollm2-cpu.yaml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// SFT steps (overrides sft.steps of the config; may change on --resume).
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
    /// Continue an SFT run: its directory (newest intact checkpoint) or one checkpoint.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Data directory granted read-only at /data to bare .wasm plugins
    /// (default: $SIGMAFORGE_DATA, then ../shared/data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Output directory (default: runs/sft-<UTC date-time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let resume = args.resume.as_deref().map(checkpoint::resolve).transpose()?;
    let (mut cfg, config_base) = match (&resume, &args.config) {
        (Some(_), Some(_)) => bail!("--config cannot be combined with --resume: a resumed SFT run continues with its checkpoint's config.yaml"),
        (Some(ckpt), None) => (RunConfig::from_file(&ckpt.join("config.yaml"))?, std::env::current_dir()?),
        (None, Some(path)) => (RunConfig::from_file(path)?, path.parent().map(Path::to_path_buf).unwrap_or_default()),
        (None, None) => (RunConfig::default_config()?, std::env::current_dir()?),
    };
    let Some(sft) = cfg.sft.as_mut() else {
        bail!("the run config has no `sft:` section (steps, lr, batch_size); see configs/smollm2-cpu.yaml");
    };
    if let Some(steps) = args.steps {
        ensure!(steps > 0, "--steps must be at least 1");
        sft.steps = steps;
    }
    let run_dir = match (&resume, &args.out) {
        (Some(_), Some(_)) => bail!("--out cannot be combined with --resume: a resumed run continues in its own directory"),
        (Some(ckpt), None) => ckpt.parent().and_then(Path::parent).context("checkpoint directory has no run directory above it")?.to_path_buf(),
        (None, Some(out)) => out.clone(),
        (None, None) => PathBuf::from("runs").join(format!("sft-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"))),
    };
    if resume.is_none() && !checkpoint::list(&run_dir)?.is_empty() {
        bail!("{} already holds checkpoints; continue with --resume {0}, or choose another --out", run_dir.display());
    }

    let (task_plugin, _tools) = load_plugins(&args.plugins, args.data.as_deref(), &cfg, &config_base)?;
    let examples = reference_examples(&task_plugin, &cfg.task.split)?;
    let (device, device_desc) = sigmaforge_model::device::select_device(&cfg.model.device)?;
    let (loaded, model_path) = load_policy(&cfg, &device, "loading model", &device_desc)?;
    let (total, trainable) = (loaded.model.num_parameters(), loaded.model.num_trainable_parameters());
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    if resume.is_none() {
        std::fs::write(run_dir.join("config.yaml"), cfg.to_yaml()?)?;
    }
    let mut trainer = SftTrainer::new(cfg, loaded.model, loaded.tokenizer, &examples, &run_dir)?;
    if let Some(ckpt) = &resume {
        trainer.restore(&checkpoint::load_resolved(ckpt, &device)?)?;
        eprintln!("resumed from {} at step {}", ckpt.display(), trainer.step());
    }
    eprintln!(
        "sft of {} ({:.1}M parameters, {:.2}M trainable) on {} reference answers of plugin `{}`; run directory {}",
        model_path.display(),
        total as f64 / 1e6,
        trainable as f64 / 1e6,
        trainer.examples(),
        task_plugin.name(),
        run_dir.display()
    );
    if let Some(note) = trainer.skipped_note() {
        eprintln!("note: {note}");
    }
    let summary = trainer.run(true, None)?;
    if let (Some(a), Some(b)) = (&summary.first, &summary.last) {
        eprintln!(
            "done: {} steps; loss {:.3} → {:.3}, token accuracy {:.3} → {:.3}",
            summary.steps, a.loss, b.loss, a.token_accuracy, b.token_accuracy
        );
    }
    trainer.export()?;
    eprintln!(
        "metrics: {0}/metrics.jsonl, plot: {0}/metrics.png, exports: {0}/export/ (GRPO from here: model.path: {0}/export/merged)",
        run_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Every task of `split` with its reference answer, from the plugin's `references` interface.
/// Tasks without one (`none`) are left out; a plugin without the interface is refused with
/// both WIT versions named.
pub(super) fn reference_examples(plugin: &TaskPlugin, split: &str) -> Result<Vec<SftExample>> {
    if !plugin.has_references() {
        bail!(
            "plugin `{}` was built against sigmaforge:plugin@{}, which has no reference answers; sft needs a plugin built against \
             sigmaforge:plugin@{} (this host's version) that exports the `references` interface",
            plugin.name(),
            plugin.wit_version(),
            sigmaforge_runtime::HOST_WIT_VERSION
        );
    }
    let mut out = Vec::new();
    let mut without = 0usize;
    for task in plugin.list_tasks(split)? {
        match plugin.reference_answer(&task.id).with_context(|| format!("plugin `{}`: reference answer of task {}", plugin.name(), task.id))? {
            Some(answer) => out.push(SftExample {
                task_id: task.id,
                messages: task.prompt.into_iter().map(|m| ChatMessage::new(m.role, m.content)).collect(),
                answer,
            }),
            None => without += 1,
        }
    }
    if out.is_empty() {
        bail!("plugin `{}` has no reference answer for any task of split `{split}` ({without} tasks)", plugin.name());
    }
    if without > 0 {
        eprintln!("note: {without} task(s) of split `{split}` have no reference answer and are left out of SFT");
    }
    Ok(out)
}
