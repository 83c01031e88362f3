//! The Sigma task: everything the sigma reward plugin does, as a plain library so that it runs
//! natively (tests, benchmarks) and inside the `sigma-plugin` Wasm component unchanged.
//!
//! - [`extract`]: the rule YAML out of a model's completion (think blocks, prose, fences).
//! - [`score`]: the reward components `yaml_valid`, `logsource_correct`, `iou`.
//! - matching is the engine's [`sigma_engine::hunt::Hunter`], the same code `sigmaforge hunt`
//!   runs, so a reward counts exactly the events `hunt` reports for a rule.
//! - [`tasks`]: reference rules from rule lists; the derived test split.
//! - [`persona`]: analyst personas that turn rule metadata into requests; the system prompt.
//! - [`config`]: configuration keys (weights, seed, lists, limits).
//! - [`corpus_cache`]: the event corpus from the engine's cache file, or from EVTX.
//!
//! Dependencies: only the engine, serde/serde_json (task metadata is JSON text in the WIT
//! contract) and thiserror (the errors; the component turns them into the WIT's strings). Randomness is a hand-written SplitMix64 ([`rng`]) rather than the `rand` crate,
//! because prompts must stay byte-identical for a seed across crate upgrades and targets.

pub mod config;
pub mod corpus_cache;
pub mod extract;
pub mod fixtures;
pub mod meta;
pub mod persona;
mod rng;
pub mod score;
pub mod tasks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sigma_engine::CompileOptions;
use sigma_engine::corpus::Corpus;
use sigma_engine::hunt::Hunter;
use sigma_engine::logsource::{LogsourceMap, MappingError};

pub use config::{COMPONENTS, ConfigError, TaskConfig};
pub use corpus_cache::CorpusError;
pub use score::ComponentScore;
use tasks::{ReferenceError, ReferenceRule, RuleListError};

/// Why the task cannot load, or cannot answer a call.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("the built-in logsource mapping is invalid: {0}")]
    Logsources(#[source] MappingError),
    #[error(transparent)]
    RuleList(#[from] RuleListError),
    #[error("no rule of the train list {list} matches any event of the corpus")]
    NoTrainRule { list: String },
    #[error("unknown split `{split}` (this plugin has: {})", SPLITS.join(", "))]
    UnknownSplit { split: String },
    #[error("task id `{id}`: `{n}` after '#' is not a request number")]
    BadRequestNumber { id: String, n: String },
    #[error("task id `{id}`: request {n} does not exist (requests_per_rule is {requests_per_rule})")]
    NoSuchRequest { id: String, n: usize, requests_per_rule: usize },
    #[error("unknown task id `{id}`: no rule `{key}` in the train or test split")]
    UnknownTask { id: String, key: String },
    /// Reference answers teach; a test task's would leak the test split.
    #[error("task `{id}` is in the test split; reference answers of test tasks are never returned (only train tasks teach)")]
    TestAnswerWithheld { id: String },
    /// A reference rule given inline (`TaskRef::Reference`) is not usable.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The splits the task offers.
pub const SPLITS: [&str; 2] = ["train", "test"];

/// One chat message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One task: a request about one reference rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Task {
    /// `<rule id>#<n>`: stable while the rule id and `n` < requests_per_rule are.
    pub id: String,
    pub split: String,
    pub prompt: Vec<Message>,
    /// JSON object: rule_id, title, rule_path, persona, level, tags, logsource,
    /// reference_events, mentions (detection values the persona reveals on purpose).
    pub metadata: String,
}

/// What a completion is scored against.
#[derive(Debug, Clone, Copy)]
pub enum TaskRef<'a> {
    /// A listed task (`<rule id>#<n>`, or the bare rule id).
    Id(&'a str),
    /// A reference rule's YAML text.
    Reference(&'a str),
}

/// Severity of a log line sent to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
}

/// Most ad-hoc reference rules whose match sets are kept (a batch usually repeats a few).
const ADHOC_CACHE_SIZE: usize = 64;

/// The loaded task: corpus, reference rules and their match sets.
pub struct SigmaTask {
    config: TaskConfig,
    data_dir: PathBuf,
    rules_dir: PathBuf,
    /// The engine's hunter over the corpus: the one implementation of running a rule.
    hunter: Hunter<'static>,
    train: Vec<ReferenceRule>,
    /// Derived (or read) on first use: deriving evaluates many SigmaHQ rules, and most runs
    /// (training, scoring a train task) never need it.
    test: OnceLock<Result<Vec<ReferenceRule>, RuleListError>>,
    adhoc: Mutex<HashMap<u64, Result<ReferenceRule, ReferenceError>>>,
}

impl SigmaTask {
    /// Loads the corpus and the train split from `data_dir` (laid out like the project's shared
    /// data directory). `log` receives progress and skipped rules.
    pub fn load(data_dir: &Path, config: TaskConfig, log: &dyn Fn(LogLevel, &str)) -> Result<Self, TaskError> {
        let corpus = corpus_cache::load(data_dir, &config, log)?;
        let map = LogsourceMap::builtin().map_err(TaskError::Logsources)?;
        let hunter = Hunter::owning(corpus, map, CompileOptions::for_events());
        let rules_dir = data_dir.join(&config.rules_dir);
        let train_list = tasks::read_rule_list(&data_dir.join(&config.train_rules))?;
        let (train, skipped) = tasks::load_listed(&rules_dir, &train_list, &hunter)?;
        for s in &skipped {
            log(LogLevel::Warn, &format!("train rule skipped: {}", s.reason));
        }
        if train.is_empty() {
            return Err(TaskError::NoTrainRule { list: config.train_rules.clone() });
        }
        log(LogLevel::Info, &format!("train split: {} of {} listed rules fire on the corpus", train.len(), train_list.len()));
        Ok(SigmaTask { config, data_dir: data_dir.to_path_buf(), rules_dir, hunter, train, test: OnceLock::new(), adhoc: Mutex::new(HashMap::new()) })
    }

    pub fn config(&self) -> &TaskConfig {
        &self.config
    }

    /// The engine's hunter the reward runs rules with (the code `sigmaforge hunt` runs).
    pub fn hunter(&self) -> &Hunter<'static> {
        &self.hunter
    }

    pub fn corpus(&self) -> &Corpus {
        self.hunter.corpus()
    }

    /// Component names and weights, in the order [`score`](Self::score) returns them.
    pub fn components(&self) -> Vec<(String, f64)> {
        COMPONENTS.iter().zip(self.config.weights).map(|(n, w)| (n.to_string(), w)).collect()
    }

    /// The reference rules of a split.
    pub fn references(&self, split: &str) -> Result<&[ReferenceRule], TaskError> {
        match split {
            "train" => Ok(&self.train),
            "test" => self.test_split().map(|v| v.as_slice()),
            other => Err(TaskError::UnknownSplit { split: other.to_string() }),
        }
    }

    /// Every task of a split, in a deterministic order (rule list order, then request number).
    pub fn list_tasks(&self, split: &str) -> Result<Vec<Task>, TaskError> {
        let refs = self.references(split)?;
        let mut out = Vec::with_capacity(refs.len() * self.config.requests_per_rule);
        for r in refs {
            let requests = persona::requests(&r.meta, &r.key, self.config.seed, self.config.requests_per_rule);
            for (n, req) in requests.into_iter().enumerate() {
                let metadata = serde_json::json!({
                    "rule_id": r.key,
                    "title": r.meta.title,
                    "rule_path": r.path,
                    "persona": req.persona,
                    "level": r.meta.level,
                    "tags": r.meta.tags,
                    "logsource": {
                        "product": r.reference.logsource.product,
                        "category": r.reference.logsource.category,
                        "service": r.reference.logsource.service,
                    },
                    "reference_events": r.reference.events.len(),
                    "mentions": req.mentions,
                });
                out.push(Task {
                    id: format!("{}#{n}", r.key),
                    split: split.to_string(),
                    prompt: vec![
                        Message { role: "system".into(), content: persona::SYSTEM_PROMPT.into() },
                        Message { role: "user".into(), content: req.text },
                    ],
                    metadata: metadata.to_string(),
                });
            }
        }
        Ok(out)
    }

    /// Scores one completion. `Err` only when the task itself is unusable.
    pub fn score(&self, task: TaskRef<'_>, completion: &str) -> Result<Vec<ComponentScore>, TaskError> {
        let scorer = score::Scorer { weights: self.config.weights, max_completion_bytes: self.config.max_completion_bytes, hunter: &self.hunter };
        match task {
            TaskRef::Id(id) => {
                let r = self.find(id)?;
                Ok(scorer.score(&r.reference, completion))
            }
            TaskRef::Reference(yaml) => {
                let r = self.adhoc_reference(yaml)?;
                Ok(scorer.score(&r.reference, completion))
            }
        }
    }

    /// The reference answer of a train task (`<rule id>#<n>` or the bare rule id): the
    /// reference rule's `logsource` and `detection` in a ```yaml fence, the output form of
    /// [`persona::SYSTEM_PROMPT`]. A test-split task is refused (test references are never
    /// returned), as is an unknown id.
    pub fn reference_answer(&self, task_id: &str) -> Result<Option<String>, TaskError> {
        let key = self.rule_key(task_id)?;
        if let Some(r) = self.train.iter().find(|r| r.key == key) {
            return Ok(Some(r.answer.clone()));
        }
        if self.test_split()?.iter().any(|r| r.key == key) {
            return Err(TaskError::TestAnswerWithheld { id: task_id.to_string() });
        }
        Err(TaskError::UnknownTask { id: task_id.to_string(), key: key.to_string() })
    }

    /// The rule key of a task id (`<rule id>#<n>` or the bare rule id), with `n` checked.
    fn rule_key<'a>(&self, id: &'a str) -> Result<&'a str, TaskError> {
        match id.rsplit_once('#') {
            Some((key, n)) => {
                let n: usize = n.parse().map_err(|_| TaskError::BadRequestNumber { id: id.to_string(), n: n.to_string() })?;
                if n >= self.config.requests_per_rule {
                    return Err(TaskError::NoSuchRequest { id: id.to_string(), n, requests_per_rule: self.config.requests_per_rule });
                }
                Ok(key)
            }
            None => Ok(id),
        }
    }

    fn find(&self, id: &str) -> Result<&ReferenceRule, TaskError> {
        let key = self.rule_key(id)?;
        if let Some(r) = self.train.iter().find(|r| r.key == key) {
            return Ok(r);
        }
        let test = self.test_split()?;
        test.iter().find(|r| r.key == key).ok_or_else(|| TaskError::UnknownTask { id: id.to_string(), key: key.to_string() })
    }

    fn adhoc_reference(&self, yaml: &str) -> Result<ReferenceRule, ReferenceError> {
        let key = rng::fnv1a(0xcbf2_9ce4_8422_2325, yaml.as_bytes());
        let mut cache = self.adhoc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(&key) {
            return hit.clone();
        }
        let result = tasks::reference_from_text(yaml, "reference rule", &self.hunter);
        if cache.len() >= ADHOC_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(key, result.clone());
        result
    }

    fn test_split(&self) -> Result<&Vec<ReferenceRule>, TaskError> {
        self.test.get_or_init(|| self.build_test_split()).as_ref().map_err(|e| TaskError::RuleList(e.clone()))
    }

    fn build_test_split(&self) -> Result<Vec<ReferenceRule>, RuleListError> {
        if let Some(list) = &self.config.test_rules {
            let paths = tasks::read_rule_list(&self.data_dir.join(list))?;
            let (test, _) = tasks::load_listed(&self.rules_dir, &paths, &self.hunter)?;
            tasks::check_disjoint(&self.train, &test)?;
            return Ok(test);
        }
        // A list derived earlier (by `sigmaforge data cache`) is only a shortcut: any rule in it
        // that is now in train, missing or silent makes the plugin derive the split again.
        let derived = self.data_dir.join(&self.config.derived_test_rules);
        if let Ok(paths) = tasks::read_rule_list(&derived)
            && let Ok((test, skipped)) = tasks::load_listed(&self.rules_dir, &paths, &self.hunter)
            && skipped.is_empty()
            && tasks::check_disjoint(&self.train, &test).is_ok()
            && test.len() == self.config.test_size.min(paths.len())
        {
            return Ok(test);
        }
        Ok(self.derive_test_split())
    }

    /// Derives the test split from the SigmaHQ rules (see [`tasks::derive_test_split`]).
    pub fn derive_test_split(&self) -> Vec<ReferenceRule> {
        let candidates = tasks::candidate_rules(&self.rules_dir, &self.config.test_candidate_dirs);
        tasks::derive_test_split(&self.rules_dir, &candidates, &self.train, self.config.test_size, &self.hunter).0
    }

    /// Writes the derived test split as a rule list to `derived_test_rules` (native use, before
    /// starting the plugin: deriving runs hundreds of rules, too slow for one plugin call).
    pub fn write_derived_test_split(&self) -> Result<(PathBuf, usize), TaskError> {
        let test = self.derive_test_split();
        let path = self.data_dir.join(&self.config.derived_test_rules);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TaskError::CreateDir { dir: dir.to_path_buf(), source })?;
        }
        let mut text = format!(
            "# Sigma test split derived by SigmaForge: SigmaHQ rules that fire on the corpus and are not in {}.\n# Paths relative to {}/. Regenerate with `sigmaforge data cache`.\n",
            self.config.train_rules, self.config.rules_dir
        );
        for r in &test {
            text.push_str(&r.path);
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(|source| TaskError::Write { path: path.clone(), source })?;
        Ok((path, test.len()))
    }
}
