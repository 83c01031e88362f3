//! The SigmaForge plugin runtime: loads WebAssembly components that implement the
//! `sigmaforge:plugin` WIT contract (`wit/sigmaforge.wit`) and runs them sandboxed.
//!
//! * [`Runtime`] owns one wasmtime engine (epoch interruption for wall-clock limits, the
//!   pooling allocator for cheap instance replacement), a ticker thread and an on-disk compile
//!   cache of `.cwasm` files keyed by (wasm sha256, wasmtime version, engine config).
//! * [`Runtime::load`] checks the contract version (refusing another version with both named),
//!   links WASI p2 plus the `host` interface into an `InstancePre`, and starts a first instance.
//! * [`TaskPlugin::score_batch`] scores in parallel over a pool of warm instances (one per
//!   worker thread; `init` runs once per instance). A trap, time-limit or memory-cap hit scores
//!   that completion 0 with a diagnostic and replaces the instance; outputs are validated
//!   (finite, in [0, 1], one per declared component).
//! * [`TaskPlugin::reference_answer`] asks a plugin that exports `references` (WIT 0.1.1, world
//!   `reference-task-plugin`) for a train task's reference answer, on the same pooled,
//!   time-limited call path; 0.1.0 plugins load too (0.1.x names match as semver-compatible)
//!   and report [`TaskPlugin::has_references`] false.
//! * [`wire`] is the JSON form of a score request and its answer, the one schema that
//!   `sigmaforge score --batch` and the reward server's `POST /v1/score` both read and print.
//!
//! Library choices: wasmtime 48.0.8 + wasmtime-wasi (p2, sync API) are the newest that build
//! on Rust 1.95 (see wasm-notes); the lean feature set (no component-model-async) cuts
//! per-call overhead 2–3×. `serde_norway` reads YAML plugin configs: it is the maintained
//! fork of the archived serde_yaml with the same API and libyaml-derived parser, so config
//! errors carry line/column; configs are small trusted files, so its parser is adequate.
//! `sha2` hashes components for the cache key.

pub mod bindings;
pub mod config;
pub mod contract;
pub mod engine;
mod floats;
mod instance;
pub mod log;
mod plugin;
mod pool;
mod sandbox;
pub mod types;
mod validate;
pub mod wire;

pub use bindings::Level;
pub use config::{DataMount, Limits, PluginConfig, PluginsConfig};
pub use contract::{HOST_WIT_VERSION, Version, World};
pub use log::LogSink;
pub use plugin::{Inspection, LoadedPlugin, PluginSet, Runtime, RuntimeOptions, SplitCount, TaskPlugin, ToolPlugin};
pub use types::{ComponentScore, Message, PluginInfo, ScoreResult, Task, TaskRef, ToolSpec};
pub use wire::{ReferenceFiles, ScoreAnswer, ScoreRequest, Target};
