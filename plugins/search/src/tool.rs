//! The `search` tool: configuration, its function-calling spec, argument checking and the
//! result text the model reads. Shared by the wasm component and native callers (tests, benches).

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::corpus::{CorpusError, LoadWarning, load_dir};
use crate::index::{Bm25fParams, Index};
use crate::remote::EndpointError;
use crate::snippet::best_passage;
use crate::tokenize::terms;

pub const TOOL_NAME: &str = "search";
const DEFAULT_DESCRIPTION: &str = "Search an offline knowledge base: Windows event definitions (Security, Sysmon, \
PowerShell and ETW providers) with their fields, MITRE ATT&CK techniques, software and groups, and the Sigma \
specification with logsource field lists. Returns the best-matching documents as short snippets with id, title \
and source URL.";
/// Longest query accepted, in characters: a tool call is not a place for a whole document.
const MAX_QUERY_CHARS: usize = 2000;

/// A configuration value that cannot be used; the message names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config corpus_dir is empty")]
    EmptyCorpusDir,
    #[error("config {key} = {raw:?} is not a whole number")]
    NotANumber { key: String, raw: String },
    #[error("config {key} = {value} is out of range {}..={}", range.start(), range.end())]
    OutOfRange { key: String, value: usize, range: RangeInclusive<usize> },
    #[error("config default_k = {default_k} is larger than max_k = {max_k}")]
    DefaultAboveMax { default_k: usize, max_k: usize },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// Why a tool call's arguments are refused: a message for the model naming the argument and the
/// problem.
#[derive(Debug, thiserror::Error)]
pub enum ArgumentError {
    #[error("arguments are not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("arguments must be a JSON object like {{\"query\": \"...\"}}, got {0}")]
    NotAnObject(Value),
    #[error("unknown argument \"{0}\"; expected \"query\" and optionally \"k\"")]
    Unknown(String),
    #[error("missing required argument \"query\" (a string)")]
    MissingQuery,
    #[error("argument \"query\" must be a string, got {0}")]
    QueryNotAString(Value),
    #[error("argument \"query\" is empty; say what to look up")]
    EmptyQuery,
    #[error("argument \"query\" is longer than {MAX_QUERY_CHARS} characters")]
    QueryTooLong,
    #[error("argument \"k\" must be a whole number from 1 to {max}, got {got}")]
    BadK { max: usize, got: Value },
}

/// Plugin configuration (`plugins.search.config` in the run configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// Directory of `*.jsonl` corpus files, as the plugin sees it (under the granted `/data`).
    pub corpus_dir: PathBuf,
    /// Results returned when the call gives no `k`.
    pub default_k: usize,
    /// Largest `k` a call may ask for.
    pub max_k: usize,
    /// Length of each result's snippet, in characters.
    pub snippet_chars: usize,
    /// The tool description offered to the model (describe your own corpus here).
    pub description: String,
    /// `http://host:port/path` of a search service to forward queries to instead of ranking a
    /// local corpus (the remote variant, see [`crate::remote`]); the run configuration must grant
    /// the plugin that `host:port` as its `network`.
    pub endpoint: Option<String>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            corpus_dir: PathBuf::from("/data/knowledge"),
            default_k: 5,
            max_k: 10,
            snippet_chars: 300,
            description: DEFAULT_DESCRIPTION.to_owned(),
            endpoint: None,
        }
    }
}

impl SearchConfig {
    /// Reads the keys `corpus_dir`, `default_k`, `max_k`, `snippet_chars`, `description` and `endpoint`
    /// through `get` (the host's `config` import); unset keys keep their defaults. Errors name
    /// the key and the bad value.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<SearchConfig, ConfigError> {
        let mut config = SearchConfig::default();
        if let Some(dir) = get("corpus_dir") {
            if dir.trim().is_empty() {
                return Err(ConfigError::EmptyCorpusDir);
            }
            config.corpus_dir = PathBuf::from(dir.trim());
        }
        let number = |key: &str, default: usize, range: RangeInclusive<usize>| -> Result<usize, ConfigError> {
            let Some(raw) = get(key) else { return Ok(default) };
            let Ok(value) = raw.trim().parse::<usize>() else { return Err(ConfigError::NotANumber { key: key.to_owned(), raw }) };
            if !range.contains(&value) {
                return Err(ConfigError::OutOfRange { key: key.to_owned(), value, range });
            }
            Ok(value)
        };
        config.max_k = number("max_k", config.max_k, 1..=100)?;
        config.default_k = number("default_k", config.default_k.min(config.max_k), 1..=100)?;
        if config.default_k > config.max_k {
            return Err(ConfigError::DefaultAboveMax { default_k: config.default_k, max_k: config.max_k });
        }
        config.snippet_chars = number("snippet_chars", config.snippet_chars, 40..=5000)?;
        if let Some(description) = get("description") {
            config.description = description;
        }
        if let Some(endpoint) = get("endpoint").filter(|e| !e.trim().is_empty()) {
            crate::remote::Endpoint::parse(&endpoint)?;
            config.endpoint = Some(endpoint.trim().to_owned());
        }
        Ok(config)
    }
}

/// The tool's function-calling description: (name, description, JSON Schema of the arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub description: String,
    pub parameters: String,
}

/// The spec for a configuration (it does not depend on the corpus, so a host may ask for it
/// before the corpus is loaded).
pub fn spec(config: &SearchConfig) -> Spec {
    let parameters = json!({
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "description": "What to look up: words, event IDs (\"EventID 4688\"), field names (\"CommandLine\"), ATT&CK ids (\"T1003.001\")."
            },
            "k": {
                "type": "integer",
                "minimum": 1,
                "maximum": config.max_k,
                "description": format!("How many results to return (default {}).", config.default_k)
            }
        },
        "required": ["query"],
        "additionalProperties": false
    });
    Spec { name: TOOL_NAME.to_owned(), description: config.description.clone(), parameters: parameters.to_string() }
}

/// A loaded search tool.
pub struct SearchTool {
    index: Index,
    config: SearchConfig,
}

impl SearchTool {
    /// Loads the corpus named by the configuration. Lines that could not be read are returned as
    /// warnings (the caller logs them); an unreadable or empty corpus is an error.
    pub fn load(config: SearchConfig) -> Result<(SearchTool, Vec<LoadWarning>), CorpusError> {
        let corpus = load_dir(&config.corpus_dir)?;
        let index = Index::build(corpus.documents, Bm25fParams::default());
        Ok((SearchTool { index, config }, corpus.warnings))
    }

    /// A tool over an already built index (tests and benchmarks).
    pub fn from_index(index: Index, config: SearchConfig) -> SearchTool {
        SearchTool { index, config }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    pub fn spec(&self) -> Spec {
        spec(&self.config)
    }

    /// Runs one call. `arguments` is the JSON object of the call; an `Err` is a message for the
    /// model naming the argument and the problem.
    pub fn invoke(&self, arguments: &str) -> Result<String, ArgumentError> {
        let request = parse_arguments(arguments, &self.config)?;
        Ok(self.run(&request.query, request.k).to_string())
    }

    /// The result object: `{"query", "results": [{"rank", "id", "title", "source_url", "score", "snippet"}]}`.
    pub fn run(&self, query: &str, k: usize) -> Value {
        let hits = self.index.search(query, k);
        let weights: HashMap<String, f32> = terms(query).into_iter().filter_map(|t| self.index.idf(&t).map(|w| (t, w))).collect();
        let results: Vec<Value> = hits
            .iter()
            .enumerate()
            .map(|(rank, hit)| {
                let doc = &self.index.documents()[hit.doc];
                json!({
                    "rank": rank + 1,
                    "id": doc.id,
                    "title": doc.title,
                    "source_url": doc.source_url,
                    "score": (hit.score as f64 * 100.0).round() / 100.0,
                    "snippet": best_passage(&doc.text, &weights, self.config.snippet_chars),
                })
            })
            .collect();
        json!({"query": query, "results": results})
    }
}

pub(crate) struct Request {
    pub query: String,
    pub k: usize,
}

/// Checks a call's arguments against the spec; errors are messages for the model.
pub(crate) fn parse_arguments(arguments: &str, config: &SearchConfig) -> Result<Request, ArgumentError> {
    let value: Value = serde_json::from_str(arguments).map_err(ArgumentError::NotJson)?;
    let Value::Object(args) = value else {
        return Err(ArgumentError::NotAnObject(value));
    };
    if let Some(unknown) = args.keys().find(|k| !matches!(k.as_str(), "query" | "k")) {
        return Err(ArgumentError::Unknown(unknown.clone()));
    }
    let query = match args.get("query") {
        None => return Err(ArgumentError::MissingQuery),
        Some(Value::String(q)) => q.trim().to_owned(),
        Some(other) => return Err(ArgumentError::QueryNotAString(other.clone())),
    };
    if query.is_empty() {
        return Err(ArgumentError::EmptyQuery);
    }
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(ArgumentError::QueryTooLong);
    }
    let k = parse_k(&args, config)?;
    Ok(Request { query, k })
}

fn parse_k(args: &Map<String, Value>, config: &SearchConfig) -> Result<usize, ArgumentError> {
    let max = config.max_k;
    match args.get("k") {
        None | Some(Value::Null) => Ok(config.default_k),
        Some(other) => match other.as_u64() {
            Some(k) if (1..=max as u64).contains(&k) => Ok(k as usize),
            _ => Err(ArgumentError::BadK { max, got: other.clone() }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Document;

    fn tool() -> SearchTool {
        let docs = vec![Document {
            id: "sysmon-1".into(),
            title: "Sysmon Event ID 1: Process creation".into(),
            text: "Provides extended information about a newly created process.".into(),
            source_url: "https://example.org/sysmon".into(),
        }];
        SearchTool::from_index(Index::build(docs, Bm25fParams::default()), SearchConfig::default())
    }

    #[test]
    fn result_has_the_documented_fields() {
        let out: Value = serde_json::from_str(&tool().invoke(r#"{"query": "sysmon process creation"}"#).unwrap()).unwrap();
        let r = &out["results"][0];
        assert_eq!(out["query"], "sysmon process creation");
        assert_eq!(r["rank"], 1);
        assert_eq!(r["id"], "sysmon-1");
        assert_eq!(r["title"], "Sysmon Event ID 1: Process creation");
        assert_eq!(r["source_url"], "https://example.org/sysmon");
        assert!(r["score"].as_f64().unwrap() > 0.0);
        assert!(r["snippet"].as_str().unwrap().contains("newly created process"), "{r}");
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        let t = tool();
        let err = |args: &str| t.invoke(args).unwrap_err().to_string();
        assert_eq!(err("{}"), "missing required argument \"query\" (a string)");
        assert_eq!(err(r#"{"query": 42}"#), "argument \"query\" must be a string, got 42");
        assert_eq!(err(r#"{"query": "   "}"#), "argument \"query\" is empty; say what to look up");
        assert_eq!(err(r#"{"query": "x", "k": 0}"#), "argument \"k\" must be a whole number from 1 to 10, got 0");
        assert_eq!(err(r#"{"query": "x", "k": 11}"#), "argument \"k\" must be a whole number from 1 to 10, got 11");
        assert_eq!(err(r#"{"query": "x", "k": 2.5}"#), "argument \"k\" must be a whole number from 1 to 10, got 2.5");
        assert_eq!(err(r#"{"query": "x", "k": "3"}"#), "argument \"k\" must be a whole number from 1 to 10, got \"3\"");
        assert_eq!(err(r#"{"query": "x", "top": 3}"#), "unknown argument \"top\"; expected \"query\" and optionally \"k\"");
        assert!(err(r#"["x"]"#).starts_with("arguments must be a JSON object"));
        assert!(err("{query:").starts_with("arguments are not valid JSON"));
        assert!(err(&format!("{{\"query\": \"{}\"}}", "a".repeat(2001))).contains("longer than 2000"));
    }

    #[test]
    fn k_and_no_hits() {
        let t = tool();
        let out: Value = serde_json::from_str(&t.invoke(r#"{"query": "zzzz unknownword", "k": 3}"#).unwrap()).unwrap();
        assert_eq!(out["results"], json!([]));
    }

    #[test]
    fn spec_is_a_valid_schema_with_the_configured_limits() {
        let spec = tool().spec();
        assert_eq!(spec.name, "search");
        let schema: Value = serde_json::from_str(&spec.parameters).unwrap();
        assert_eq!(schema["required"], json!(["query"]));
        assert_eq!(schema["properties"]["k"]["maximum"], 10);
    }

    #[test]
    fn config_keys_are_checked() {
        let cfg = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            SearchConfig::from_lookup(|k| map.get(k).cloned())
        };
        assert_eq!(cfg(&[]).unwrap(), SearchConfig::default());
        let c = cfg(&[("corpus_dir", "/data/mine"), ("max_k", "20"), ("default_k", "8")]).unwrap();
        assert_eq!((c.corpus_dir.to_str().unwrap(), c.max_k, c.default_k), ("/data/mine", 20, 8));
        assert_eq!(cfg(&[("max_k", "ten")]).unwrap_err().to_string(), "config max_k = \"ten\" is not a whole number");
        assert_eq!(cfg(&[("max_k", "3"), ("default_k", "4")]).unwrap_err().to_string(), "config default_k = 4 is larger than max_k = 3");
        assert!(cfg(&[("snippet_chars", "5")]).unwrap_err().to_string().contains("out of range 40..=5000"));
        assert!(matches!(cfg(&[("endpoint", "https://search.example")]).unwrap_err(), ConfigError::Endpoint(EndpointError::NotHttp { .. })));
        assert!(cfg(&[("endpoint", "https://search.example")]).unwrap_err().to_string().contains("must start with http://"));
        assert_eq!(cfg(&[("endpoint", "http://127.0.0.1:7700/q")]).unwrap().endpoint.as_deref(), Some("http://127.0.0.1:7700/q"));
        // a small max_k lowers the default k with it
        assert_eq!(cfg(&[("max_k", "3")]).unwrap().default_k, 3);
    }
}
