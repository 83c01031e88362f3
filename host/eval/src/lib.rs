//! `sigmaforge eval`: measure any model on a task plugin's tasks.
//!
//! A [`Policy`] answers each task's chat prompt — an OpenAI-compatible chat-completions server
//! ([`openai::OpenAiPolicy`]: vLLM, llama.cpp server, Ollama, hosted APIs) or the project's own
//! candle model ([`local::LocalPolicy`]). Tool plugins can be offered to OpenAI-compatible
//! models through the `tools` request field ([`Toolbox`], from `sigmaforge-reward`). The completions are
//! scored by the task plugin in one batch, through the reward crate's one checked path, and [`report`] turns the samples into the numbers of the
//! reference work's tables: mean reward and component means, YAML-valid rate, logsource
//! accuracy, IoU, share of perfect rules, latency percentiles, tokens and cost per query, failed
//! samples and tool use. [`output`] writes `report.json`, `report.md`, `report.png` and
//! `completions.jsonl`; [`compare`] combines several reports into one table. An optional
//! [`paraphrase`] pass has another chat model reword each request first. Answers are
//! journaled as they arrive ([`journal`]), so an interrupted eval resumes without asking again.
//!
//! Dependencies, and why:
//! - `ureq` (3.x, rustls with webpki roots): a small, well-kept blocking HTTP client. The eval is
//!   I/O bound with a bounded number of requests in flight (`--concurrency`), so a fixed pool of
//!   worker threads each doing blocking requests is simpler than an async client and needs no
//!   runtime; ureq was already in the tree (the server's tests), and rustls keeps hosted HTTPS
//!   APIs working without a system OpenSSL.
//! - `indicatif`: the progress bar (already used by `hunt` and the trainer).
//! - `plotters` (bitmap backend, `ab_glyph` text): the PNG chart; `sigmaforge-plot` finds its font.
//! - `serde_norway`: the prices YAML (the maintained serde_yaml fork the runtime already uses).
//! - `sigmaforge-runtime` (plugins), `sigmaforge-reward` (scoring and the tool adapter),
//!   `sigmaforge-toolcall` (tool specs in the OpenAI format), `sigmaforge-model` + `candle-core`
//!   (the local model).

pub mod compare;
pub mod journal;
pub mod local;
pub mod openai;
pub mod output;
pub mod paraphrase;
pub mod plot;
pub mod policy;
pub mod prices;
pub mod report;
pub mod runner;
pub mod stats;

pub use journal::{EvalKey, Journal};
pub use policy::{Completion, Failure, Outcome, Policy, PolicySpec, Trace, Usage};
pub use prices::Prices;
pub use report::{Report, SampleRecord};
pub use runner::{EvalOptions, run_eval};
