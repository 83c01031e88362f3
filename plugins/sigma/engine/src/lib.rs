//! The Sigma engine: everything SigmaForge knows about Sigma rules and Windows event logs.
//!
//! One implementation serves the CLI (`sigmaforge hunt`, `sigmaforge check`) and the reward
//! plugin (compiled to `wasm32-wasip2`), so what an analyst sees and what the model is rewarded
//! for can never drift apart.
//!
//! Module map:
//! - [`event`]: the in-memory event model (interned field names, pre-lowered values).
//! - [`yaml`]: YAML text to a node tree with line:column on every node, with limits.
//! - [`rule`]: Sigma documents (rules, correlations, filters) and their attribute validation.
//! - [`detection`]: search identifiers, modifiers, values, the condition grammar, and the
//!   compiler from a rule's detection to fast matchers ([`compile`], [`CompiledRule`]).
//! - [`check`]: the validation `sigmaforge check` runs over many files.
//! - [`diagnostic`]: errors and warnings with file, line and column.
//! - [`evtx`], [`json_events`]: EVTX and evtx_dump-style JSON / JSON Lines events, flattened to
//!   Sigma's Windows field names; corrupt input gives warnings, never panics.
//! - [`loaded_file`]: one parsed file's events and its integrity report (recovered, lost and
//!   duplicate records, checksums), shared by both loaders.
//! - [`corpus`]: the event store (one field table, events indexed by (Channel, EventID)) and
//!   [`cache`]: its versioned, checksummed cache file.
//! - [`logsource`]: the logsource → events mapping (`configs/windows-logsources.yml`, embedded).
//! - [`hunt`]: rules over a corpus: logsource pruning, per-variant compilation (Security 4688
//!   renames), Sigma filters, correlations.
//!
//! Library choices (rule side):
//! - **YAML: `saphyr-parser` 0.3.** `serde_yaml` is archived and loses positions. saphyr-parser
//!   is the maintained successor of yaml-rust(2): pure Rust (builds for wasm32-wasip2), YAML 1.2
//!   compliant (passes the yaml-test-suite), and its event API gives a span per event, so we
//!   build our own tree with a line:column on every key and value, see duplicate keys (which
//!   serde-based loaders silently merge or reject without a position), and control alias
//!   expansion and nesting depth ourselves. Its parser is a state machine, not recursive, so
//!   deeply nested input cannot overflow the stack. Its general scanner was the largest cost of
//!   loading SigmaHQ (~75 ms of CPU for 4.5 MB), so `yaml::simple` reads the plain subset rules
//!   are written in (block collections, one-line scalars, block scalars, one-line flow lists) line
//!   by line into the same events, and declines anything else to saphyr-parser: tested to give
//!   saphyr-parser's events on every corpus rule file (it reads 99.7 % of them) and on thousands
//!   of randomly edited ones.
//! - **Matching: `memchr` (memmem), `aho-corasick`, `regex`.** In Wasm, std's `str::contains`
//!   is ~11x slower than native while these stay within 1.2-2x with `+simd128`
//!   (shared/reference/wasm-notes.md, section 4). Values are compiled once into byte compares,
//!   memmem finders, one Aho-Corasick automaton per long `contains` list, and regexes only for
//!   `?` wildcards and `re` (with size limits, so hostile patterns fail fast).
//! - Library choices (event side): **EVTX: `evtx` 0.15** (what Chainsaw and Hayabusa use;
//!   default features off so it builds for wasm32-wasip2, where it parses serially). Records
//!   are rendered to JSON bytes by the crate and flattened by our own code while they are read
//!   (serde visitors, no `serde_json::Value` tree; [`json_events`] keeps the tree path as the
//!   reference and fallback), so EVTX and JSON inputs share one set of naming rules. A hunt
//!   reads each record's (Channel, EventID) from its `System` part first and drops records no
//!   rule's logsource reads ([`corpus::ChannelFilter`]). **Cache: a hand-written binary format** (see [`cache`] for why not
//!   bincode/postcard). No thread pool in the library: the CLI parallelises with rayon around it.
//! - **Hashing field names: `foldhash`** (already in the tree through hashbrown; pure Rust,
//!   no_std-capable, seeded per process). Every value of every loaded event interns its field
//!   name; std's SipHash was a few percent of EVTX loading.
//! - Base64, UTF-16, UUID, CIDR and date handling are a few lines each and written here rather
//!   than pulled in as dependencies.

pub mod event;

// Rule side: parsing, validation, compilation, matching.
pub mod check;
pub mod detection;
pub mod diagnostic;
pub mod rule;
pub mod yaml;

pub use detection::compile::{CompileOptions, CompiledRule, PlaceholderPolicy, RegexMemo, compile};
pub use diagnostic::{Diagnostic, Pos, Severity};
pub use rule::{
    CmpOp, Correlation, CorrelationCondition, CorrelationType, Document, FieldAlias, Filter, FilterRules, Level, Logsource, ParsedFile, Related,
    Rule, Status, apply_filter, parse_documents, rule_files,
};

// Event side: loaders, store, logsource mapping, hunting.
pub mod cache;
pub mod corpus;
pub mod evtx;
pub mod hunt;
pub mod json_events;
pub mod loaded_file;
pub mod logsource;
pub mod prefilter;

#[cfg(test)]
mod test_support;
