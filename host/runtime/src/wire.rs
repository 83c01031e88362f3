//! The score request and answer as they travel as JSON: one line of `sigmaforge score --batch`
//! or one element of a `POST /v1/score` array, and the score object both print back. Both front
//! ends validate with [`ScoreRequest::from_value`], so a key means the same thing, and a mistake
//! is refused in the same words, wherever the item is sent.
//!
//! An item is an object with:
//! - exactly one of `task` (the id of a task the plugin lists), `reference` (reference text, for
//!   Sigma a rule's YAML, scored as an ad-hoc task) or `reference_file` (a file holding that
//!   text, relative to the batch file; `score --batch` only, the server reads no files);
//! - `completion`: the model output to score;
//! - `id` (optional, any JSON value): echoed back in the answer.
//!
//! Any other key is refused by name, listing the known ones: a misspelt key would otherwise be
//! scored as if it were absent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::{ScoreResult, TaskRef};

/// The keys of a request item, in the order error messages list them.
pub const REQUEST_KEYS: [&str; 5] = ["task", "reference", "reference_file", "completion", "id"];

/// What an item is scored against; on the wire, the one key of the three that is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A task the plugin lists, by id.
    Task(String),
    /// Reference text, scored as an ad-hoc task.
    Reference(String),
    /// A file holding the reference text, relative to the batch file (read by the CLI).
    ReferenceFile(String),
}

impl Target {
    /// What the plugin scores against; `None` for a reference file, which the caller must read.
    pub fn task_ref(&self) -> Option<TaskRef> {
        match self {
            Target::Task(id) => Some(TaskRef::Id(id.clone())),
            Target::Reference(text) => Some(TaskRef::Reference(text.clone())),
            Target::ReferenceFile(_) => None,
        }
    }

    /// The answer's `task`: the task id, `reference` for reference text, the path of a file.
    pub fn label(&self) -> &str {
        match self {
            Target::Task(id) => id,
            Target::Reference(_) => "reference",
            Target::ReferenceFile(path) => path,
        }
    }
}

/// Whether an item may name a `reference_file`: only where there is a batch file for the path
/// to be relative to, and a user who may read it (never the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceFiles {
    Allowed,
    Refused,
}

/// One validated request item. Deserializing one (from any serde format) runs the same checks
/// as [`ScoreRequest::from_value`] with reference files allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>")]
pub struct ScoreRequest {
    #[serde(flatten)]
    pub target: Target,
    pub completion: String,
    /// Echoed back as the answer's `id`; kept as sent, `null` included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl ScoreRequest {
    /// Checks one item; the error says what is wrong without saying where (the caller adds the
    /// line or item number).
    pub fn from_value(value: Value, files: ReferenceFiles) -> Result<Self, String> {
        match value {
            Value::Object(map) => Self::from_map(map, files),
            _ => Err("expected an object with \"task\" (or \"reference\") and \"completion\"".to_string()),
        }
    }

    fn from_map(mut map: Map<String, Value>, files: ReferenceFiles) -> Result<Self, String> {
        if let Some(key) = map.keys().find(|k| !REQUEST_KEYS.contains(&k.as_str())) {
            return Err(format!("unknown key \"{key}\" (known: {})", REQUEST_KEYS.join(", ")));
        }
        let task = take_string(&mut map, "task")?.map(Target::Task);
        let reference = take_string(&mut map, "reference")?.map(Target::Reference);
        let reference_file = take_string(&mut map, "reference_file")?.map(Target::ReferenceFile);
        let completion = take_string(&mut map, "completion")?.ok_or("missing \"completion\"")?;
        let id = map.remove("id");
        let mut given = [task, reference, reference_file].into_iter().flatten();
        let target = match (given.next(), given.next()) {
            (Some(target), None) => target,
            (Some(_), Some(_)) => return Err("give exactly one of \"task\", \"reference\" and \"reference_file\"".to_string()),
            (None, _) => {
                return Err(match files {
                    ReferenceFiles::Allowed => {
                        "missing \"task\" (a task id), \"reference\" (reference text) or \"reference_file\" (a file of it)".to_string()
                    }
                    ReferenceFiles::Refused => "missing \"task\" (a task id) or \"reference\" (reference text)".to_string(),
                });
            }
        };
        if files == ReferenceFiles::Refused && matches!(target, Target::ReferenceFile(_)) {
            return Err("\"reference_file\" is for `sigmaforge score --batch` only (the server reads no files): \
                        send the file's text as \"reference\""
                .to_string());
        }
        Ok(ScoreRequest { target, completion, id })
    }
}

impl TryFrom<Map<String, Value>> for ScoreRequest {
    type Error = String;

    fn try_from(map: Map<String, Value>) -> Result<Self, String> {
        Self::from_map(map, ReferenceFiles::Allowed)
    }
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match map.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

/// One score as both front ends print it: `{"id"?, "task", "total", "components", "error"}`.
#[derive(Debug, Serialize)]
pub struct ScoreAnswer<'a> {
    /// The request's `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Value>,
    /// What was scored against (see [`Target::label`]).
    pub task: &'a str,
    #[serde(flatten)]
    pub result: &'a ScoreResult,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<ScoreRequest, String> {
        ScoreRequest::from_value(v, ReferenceFiles::Allowed)
    }

    #[test]
    fn each_target_key_parses() {
        let r = parse(json!({"task": "t1", "completion": "c"})).unwrap();
        assert_eq!(r, ScoreRequest { target: Target::Task("t1".into()), completion: "c".into(), id: None });
        assert_eq!(r.target.task_ref(), Some(TaskRef::Id("t1".into())));
        assert_eq!(r.target.label(), "t1");
        let r = parse(json!({"reference": "title: x\n", "completion": "c"})).unwrap();
        assert_eq!(r.target.task_ref(), Some(TaskRef::Reference("title: x\n".into())));
        assert_eq!(r.target.label(), "reference");
        let r = parse(json!({"reference_file": "rules/a.yml", "completion": "c"})).unwrap();
        assert_eq!(r.target, Target::ReferenceFile("rules/a.yml".into()));
        assert_eq!(r.target.task_ref(), None);
        assert_eq!(r.target.label(), "rules/a.yml");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_listing_the_known_ones() {
        let e = parse(json!({"task": "t", "completion": "c", "completoin": "x"})).unwrap_err();
        assert_eq!(e, "unknown key \"completoin\" (known: task, reference, reference_file, completion, id)");
        // Through serde too (e.g. `serde_json::from_str`), with the same words.
        let e = serde_json::from_str::<ScoreRequest>(r#"{"task": "t", "completion": "c", "extra": 1}"#).unwrap_err().to_string();
        assert!(e.contains("unknown key \"extra\" (known: task, reference, reference_file, completion, id)"), "{e}");
    }

    #[test]
    fn task_and_reference_together_are_refused() {
        for v in [
            json!({"task": "t", "reference": "r", "completion": "c"}),
            json!({"reference": "r", "reference_file": "f", "completion": "c"}),
            json!({"task": "t", "reference_file": "f", "completion": "c"}),
        ] {
            assert_eq!(parse(v).unwrap_err(), "give exactly one of \"task\", \"reference\" and \"reference_file\"");
        }
    }

    #[test]
    fn neither_task_nor_reference_is_refused() {
        let e = parse(json!({"completion": "c"})).unwrap_err();
        assert!(e.starts_with("missing \"task\" (a task id), \"reference\""), "{e}");
        let e = ScoreRequest::from_value(json!({"completion": "c", "id": 1}), ReferenceFiles::Refused).unwrap_err();
        assert_eq!(e, "missing \"task\" (a task id) or \"reference\" (reference text)");
    }

    #[test]
    fn wrong_types_and_missing_completion_are_named() {
        assert_eq!(parse(json!({"task": "t"})).unwrap_err(), "missing \"completion\"");
        assert_eq!(parse(json!({"task": "t", "completion": 3})).unwrap_err(), "\"completion\" must be a string");
        assert_eq!(parse(json!({"task": 7, "completion": "c"})).unwrap_err(), "\"task\" must be a string");
        assert_eq!(parse(json!({"reference": null, "completion": "c"})).unwrap_err(), "\"reference\" must be a string");
        assert!(parse(json!(["task", "t"])).unwrap_err().starts_with("expected an object"));
    }

    #[test]
    fn the_server_refuses_reference_files() {
        let e = ScoreRequest::from_value(json!({"reference_file": "/etc/passwd", "completion": "c"}), ReferenceFiles::Refused).unwrap_err();
        assert!(e.contains("the server reads no files") && e.contains("\"reference\""), "{e}");
    }

    #[test]
    fn the_id_is_kept_and_echoed_as_sent() {
        for id in [json!(7), json!("a-1"), json!({"row": 3}), Value::Null] {
            let r = parse(json!({"task": "t", "completion": "c", "id": id})).unwrap();
            assert_eq!(r.id.as_ref(), Some(&id));
            let result = ScoreResult::failed("boom");
            let answer = serde_json::to_value(ScoreAnswer { id: r.id.as_ref(), task: r.target.label(), result: &result }).unwrap();
            assert_eq!(answer, json!({"id": id, "task": "t", "total": 0.0, "components": [], "error": "boom"}));
        }
        let r = parse(json!({"task": "t", "completion": "c"})).unwrap();
        let result = ScoreResult::from_components(Vec::new());
        let answer = serde_json::to_value(ScoreAnswer { id: r.id.as_ref(), task: r.target.label(), result: &result }).unwrap();
        assert_eq!(answer, json!({"task": "t", "total": 0.0, "components": [], "error": null}), "no id sent, none echoed");
    }

    #[test]
    fn a_request_serializes_to_the_wire_form() {
        let r = ScoreRequest { target: Target::Reference("r\n".into()), completion: "c".into(), id: Some(json!(1)) };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v, json!({"reference": "r\n", "completion": "c", "id": 1}));
        assert_eq!(parse(v).unwrap(), r);
    }
}
