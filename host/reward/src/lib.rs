//! The reward boundary: everything on the host that scores a completion goes through this crate.
//!
//! A score has one type from the plugin to the files a run writes: [`ScoreResult`] (a total and
//! its [`ComponentScore`]s, each with `name`, `value`, `weight` and the plugin's `detail` text).
//! The runtime converts the WIT contract's score into it once; after that it is passed on
//! unchanged: the trainer's rollouts.jsonl, eval's completions.jsonl and the server's
//! `/v1/score` answers all carry the same fields.
//!
//! Three consumers, one abstraction each:
//! - [`Scorer`]: what can score `(task, completion)` pairs. The reward server (`serve`) and eval
//!   score through it; a [`TaskPlugin`](sigmaforge_runtime::TaskPlugin) is one.
//! - [`TaskEnvironment`]: a `Scorer` that also lists training tasks as chat prompts; the GRPO
//!   trainer draws its prompts and rewards from it and knows nothing about WebAssembly.
//!   [`PluginEnvironment`] is the adapter over a task plugin; tests implement it natively.
//! - [`tools::Toolbox`]: tool plugins as the model's episode loop and hosted-model evals see
//!   them (`sigmaforge run` and `sigmaforge eval` both use it).
//!
//! [`score_checked`] enforces the one contract every scorer is held to, whoever wrote it: one
//! finite score per item, a panic becomes an error on the items and never stops the run.

mod environment;
mod plugin;
pub mod tools;

pub use environment::{Scorer, TaskEnvironment, TaskPrompt, score_checked};
pub use plugin::PluginEnvironment;
pub use sigmaforge_runtime::{ComponentScore, ScoreResult, TaskRef};
pub use tools::{ToolRunner, Toolbox};
