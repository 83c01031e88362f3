//! SigmaForge's trainer: how a model from `sigmaforge-model` is trained. GRPO (group-relative
//! advantages, clipped policy loss, KL), the AdamW optimizer with master weights, checkpoints and
//! resume, the run configuration, metrics and plots, supervised fine-tuning on reference answers
//! (`sft`, the warm start before GRPO), and data parallelism (replicated, ZeRO-1,
//! ZeRO-2) over `sigmaforge-distributed`.
//!
//! Library choices (why):
//! - `serde_norway`: the YAML run config (maintained fork of the archived serde_yaml; the plugin
//!   runtime uses the same parser).
//! - `indicatif`: the progress bar of `sigmaforge run`.
//! - `sigmaforge-plot`: the PNG of the training curves.
//!
//! Tasks and rewards come from a `sigmaforge_reward::TaskEnvironment`; the trainer knows nothing
//! about WebAssembly.

pub mod checkpoint;
pub mod config;
pub mod grpo;
pub mod job;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod sampler;
pub mod sft;
pub mod train;
