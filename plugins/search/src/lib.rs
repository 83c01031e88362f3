//! The `search` tool plugin: full-text search over a JSONL knowledge corpus, so a model can look
//! up event IDs, field names and ATT&CK techniques during a rollout instead of guessing.
//!
//! - [`corpus`]: reads `*.jsonl` files of `{"id", "title", "text", "source_url"}` documents;
//!   bad lines become warnings naming file and line, the rest loads.
//! - [`tokenize`]: terms tuned for security text (`T1003.001`, `EventID 4688`, `CommandLine`).
//! - [`index`]: an inverted index ranked with BM25F (title field boosted).
//! - [`snippet`]: the best-matching ~300-character passage of each hit.
//! - [`tool`]: configuration, the function-calling spec, argument checks and the result JSON.
//! - [`remote`]: the variant that forwards queries to one granted HTTP endpoint instead
//!   (config `endpoint`), for teams running their own search service.
//! - `component` (wasm32 only): the `tool-plugin` world of `wit/sigmaforge.wit`.
//!
//! Why no search library: tantivy and similar engines need threads, mmap and a filesystem index,
//! which a wasm32-wasip2 sandbox does not offer, and they are large. The corpus is 7 MB, so a
//! hand-written in-memory index loads from the raw JSONL in well under the 1 s budget (see
//! BENCHMARKS.md) and needs no prebuilt index file to keep in sync with the corpus.
//! Dependencies: serde + serde_json (the corpus and the tool arguments are JSON), thiserror (the
//! errors, which the component turns into the WIT contract's strings); wit-bindgen for the
//! component only.

pub mod corpus;
pub mod index;
pub mod remote;
pub mod snippet;
pub mod tokenize;
pub mod tool;

#[cfg(target_family = "wasm")]
mod component;

pub use corpus::{Corpus, CorpusError, Document, LoadWarning, load_dir};
pub use index::{Bm25fParams, Hit, Index};
pub use remote::{Endpoint, EndpointError, RemoteError, RemoteTool, ResponseError, SearchError};
pub use tool::{ArgumentError, ConfigError, SearchConfig, SearchTool, Spec, TOOL_NAME, spec};
