//! The task's configuration, read through a key → value lookup (in the plugin: the host's
//! `config` import, i.e. `plugins.sigma.config` of the run configuration).
//!
//! Every key is optional; see docs/sigma-plugin.md for the table users read.

use std::fmt;

/// Names of the reward components, in the order `score` returns them.
pub const COMPONENTS: [&str; 3] = ["yaml_valid", "logsource_correct", "iou"];
/// Default weights (the reference work's): 0.1 / 0.3 / 0.7, so a perfect rule scores 1.1.
pub const DEFAULT_WEIGHTS: [f64; 3] = [0.1, 0.3, 0.7];

#[derive(Debug, Clone, PartialEq)]
pub struct TaskConfig {
    /// Weights of [`COMPONENTS`], in that order.
    pub weights: [f64; 3],
    /// Seed of the persona prompts (which persona, which phrasing).
    pub seed: u64,
    /// How many requests (personas) each rule gets.
    pub requests_per_rule: usize,
    /// Rule list of the train split, relative to the data directory.
    pub train_rules: String,
    /// Rule list of the test split; `None` derives it from the other rules that fire.
    pub test_rules: Option<String>,
    /// How many rules a derived test split takes.
    pub test_size: usize,
    /// Where rule-list entries are resolved, relative to the data directory.
    pub rules_dir: String,
    /// Folders (relative to `rules_dir`) searched when the test split is derived.
    pub test_candidate_dirs: Vec<String>,
    /// The EVTX corpus folder, relative to the data directory.
    pub evtx_dir: String,
    /// A prebuilt corpus cache file, relative to the data directory (used when present).
    pub corpus_cache: String,
    /// The derived test split written by `sigmaforge data cache`, relative to the data directory
    /// (used when present and `test_rules` is unset; saves deriving it in the plugin).
    pub derived_test_rules: String,
    /// Completions longer than this score 0 without being parsed.
    pub max_completion_bytes: usize,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            weights: DEFAULT_WEIGHTS,
            seed: 0,
            requests_per_rule: 3,
            train_rules: "tasks/train-rules.txt".into(),
            test_rules: None,
            test_size: 100,
            rules_dir: "sigma".into(),
            test_candidate_dirs: vec!["rules/windows".into(), "rules-threat-hunting/windows".into(), "rules-emerging-threats".into()],
            evtx_dir: "evtx".into(),
            corpus_cache: "cache/corpus.sfc".into(),
            derived_test_rules: "cache/sigma-test-rules.txt".into(),
            max_completion_bytes: 1024 * 1024,
        }
    }
}

/// A configuration value that could not be used: which key, its value, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}` = {value:?}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub problem: String,
}

impl TaskConfig {
    /// Reads every key through `get`; unset keys keep their defaults.
    ///
    /// Weights come from `weights` (a JSON object such as `{"iou": 1.0}`, naming any subset of
    /// the components) and then from `weight.<component>` keys, which win.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = TaskConfig::default();
        if let Some(v) = get("weights") {
            let err = |problem: String| ConfigError { key: "weights".into(), value: v.clone(), problem };
            let obj: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&v).map_err(|e| err(format!("not a JSON object of component weights ({e})")))?;
            for (name, w) in obj {
                let idx = component_index(&name).ok_or_else(|| err(format!("unknown component `{name}` (known: {})", COMPONENTS.join(", "))))?;
                let w = w.as_f64().ok_or_else(|| err(format!("weight of `{name}` is not a number")))?;
                c.weights[idx] = check_weight(w).map_err(|problem| err(problem.to_string()))?;
            }
        }
        for (i, name) in COMPONENTS.iter().enumerate() {
            let key = format!("weight.{name}");
            if let Some(v) = get(&key) {
                let w = parse::<f64>(&key, &v)?;
                c.weights[i] = check_weight(w).map_err(|problem| ConfigError { key: key.clone(), value: v.clone(), problem: problem.to_string() })?;
            }
        }
        if let Some(v) = get("seed") {
            c.seed = parse("seed", &v)?;
        }
        if let Some(v) = get("requests_per_rule") {
            c.requests_per_rule = parse("requests_per_rule", &v)?;
            if !(1..=64).contains(&c.requests_per_rule) {
                return Err(ConfigError { key: "requests_per_rule".into(), value: v, problem: "must be between 1 and 64".into() });
            }
        }
        if let Some(v) = get("test_size") {
            c.test_size = parse("test_size", &v)?;
        }
        if let Some(v) = get("max_completion_bytes") {
            c.max_completion_bytes = parse("max_completion_bytes", &v)?;
        }
        if let Some(v) = get("test_candidate_dirs") {
            c.test_candidate_dirs = serde_json::from_str(&v).map_err(|e| ConfigError {
                key: "test_candidate_dirs".into(),
                value: v.clone(),
                problem: format!("not a JSON list of folder names ({e})"),
            })?;
        }
        let paths: [(&str, &mut String); 5] = [
            ("derived_test_rules", &mut c.derived_test_rules),
            ("train_rules", &mut c.train_rules),
            ("rules_dir", &mut c.rules_dir),
            ("evtx_dir", &mut c.evtx_dir),
            ("corpus_cache", &mut c.corpus_cache),
        ];
        for (key, slot) in paths {
            if let Some(v) = get(key) {
                *slot = v;
            }
        }
        c.test_rules = get("test_rules");
        Ok(c)
    }
}

pub fn component_index(name: &str) -> Option<usize> {
    COMPONENTS.iter().position(|c| *c == name)
}

/// A usable weight, or the problem (the caller names the key).
fn check_weight(w: f64) -> Result<f64, &'static str> {
    if w.is_finite() && w >= 0.0 { Ok(w) } else { Err("a weight must be a finite number ≥ 0") }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| ConfigError { key: key.into(), value: value.into(), problem: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<TaskConfig, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TaskConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_reference_weights() {
        assert_eq!(cfg(&[]).unwrap().weights, [0.1, 0.3, 0.7]);
    }

    #[test]
    fn weights_json_then_single_keys() {
        let c = cfg(&[("weights", r#"{"iou": 1.0, "yaml_valid": 0}"#), ("weight.logsource_correct", "0.5")]).unwrap();
        assert_eq!(c.weights, [0.0, 0.5, 1.0]);
        let c = cfg(&[("weights", r#"{"iou": 1.0}"#), ("weight.iou", "2")]).unwrap();
        assert_eq!(c.weights[2], 2.0);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = cfg(&[("weights", r#"{"bogus": 1}"#)]).unwrap_err();
        assert_eq!(e.key, "weights");
        assert!(e.problem.contains("bogus"), "{e}");
        let e = cfg(&[("weight.iou", "-1")]).unwrap_err();
        assert!(e.to_string().contains("weight.iou"), "{e}");
        let e = cfg(&[("seed", "abc")]).unwrap_err();
        assert_eq!(e.key, "seed");
        assert!(cfg(&[("requests_per_rule", "0")]).is_err());
        assert!(cfg(&[("weight.iou", "NaN")]).is_err());
    }

    #[test]
    fn other_keys_are_read() {
        let c =
            cfg(&[("seed", "7"), ("requests_per_rule", "5"), ("test_rules", "mine.txt"), ("test_candidate_dirs", r#"["rules/windows"]"#)]).unwrap();
        assert_eq!((c.seed, c.requests_per_rule), (7, 5));
        assert_eq!(c.test_rules.as_deref(), Some("mine.txt"));
        assert_eq!(c.test_candidate_dirs, ["rules/windows"]);
    }
}
