//! The answers an eval has received so far, one JSON line each in `answers.jsonl`, appended
//! and flushed the moment each arrives. An eval that is interrupted (Ctrl-C, a crash, a lost
//! machine) keeps what it paid for: `sigmaforge eval --resume DIR` reads the journal back,
//! keeps every answered sample, and asks only for the rest (failed samples are asked again).
//!
//! The first line names the eval (model, plugin, split), so a journal is never resumed with
//! another model. The endpoint is not part of it: a model may be served elsewhere after a
//! restart. Scores are not journaled: scoring is deterministic and cheap, and the resumed
//! eval scores every sample again with the plugin it loads.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sigmaforge_runtime::Message;

use crate::policy::Outcome;

pub const ANSWERS: &str = "answers.jsonl";

/// What an eval is: answers of one model to one plugin's split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalKey {
    pub model: String,
    pub plugin: String,
    pub split: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    eval: EvalKey,
}

/// One sample as the model saw and answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub task_id: String,
    /// The messages sent (after a paraphrase pass, the reworded ones).
    pub prompt: Vec<Message>,
    /// With a paraphrase pass: the request as the task wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paraphrase_error: Option<String>,
    pub outcome: Outcome,
}

/// An open journal, shared by the policy's worker threads.
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

/// A journal read back for `--resume`.
pub struct Resumed {
    pub journal: Journal,
    /// The last answered entry of each task (failed ones are left out: they are asked again).
    pub answered: HashMap<String, Entry>,
    /// Lines that could not be read (a line cut short by a crash mid-write), by line number.
    pub unreadable: Vec<usize>,
}

impl Journal {
    /// A new journal in `dir` (created if needed). Refuses to overwrite the journal of an
    /// earlier eval: that one is continued with `--resume`, or the new eval goes elsewhere.
    pub fn create(dir: &Path, key: &EvalKey) -> Result<Journal> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output directory {}", dir.display()))?;
        let path = dir.join(ANSWERS);
        if path.exists() {
            bail!(
                "{} already holds an eval's answers ({ANSWERS}); continue it with `--resume {}`, or choose another --out",
                dir.display(),
                dir.display()
            );
        }
        let mut file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(&Header { eval: key.clone() })?).with_context(|| format!("cannot write {}", path.display()))?;
        file.flush()?;
        Ok(Journal { path, file: Mutex::new(file) })
    }

    /// Reads the journal in `dir` for an eval of `key` and opens it for appending.
    pub fn resume(dir: &Path, key: &EvalKey) -> Result<Resumed> {
        let path = dir.join(ANSWERS);
        let file = File::open(&path).with_context(|| {
            format!("cannot resume {}: it has no {ANSWERS} (not an eval output directory, or one written before evals kept a journal)", dir.display())
        })?;
        let mut lines = BufReader::new(file).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        let header: Header = serde_json::from_str(&first).with_context(|| format!("{}: the first line does not name the eval", path.display()))?;
        if header.eval != *key {
            let (was, now) = (&header.eval, key);
            bail!(
                "{} holds answers of model `{}` on plugin `{}` split `{}`, not of model `{}` on plugin `{}` split `{}`; resume it with the same model, --plugins and --split",
                path.display(),
                was.model,
                was.plugin,
                was.split,
                now.model,
                now.plugin,
                now.split
            );
        }
        let mut answered = HashMap::new();
        let mut unreadable = Vec::new();
        for (i, line) in lines.enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Entry>(&line) {
                // A later entry of the same task (answered after an earlier failure) wins.
                Ok(e) if e.outcome.is_ok() => {
                    answered.insert(e.task_id.clone(), e);
                }
                Ok(e) => {
                    answered.remove(&e.task_id);
                }
                Err(_) => unreadable.push(i + 2),
            }
        }
        let file = OpenOptions::new().append(true).open(&path).with_context(|| format!("cannot append to {}", path.display()))?;
        Ok(Resumed { journal: Journal { path, file: Mutex::new(file) }, answered, unreadable })
    }

    /// Appends one entry and flushes it to the file.
    pub fn append(&self, entry: &Entry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line, so a crash leaves at most the last line cut short.
        file.write_all(&line).and_then(|_| file.flush()).with_context(|| format!("cannot append to {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Completion, Failure, Trace};

    fn key() -> EvalKey {
        EvalKey { model: "m".into(), plugin: "sigma".into(), split: "test".into() }
    }

    fn entry(task: &str, answer: Option<&str>) -> Entry {
        let trace = Trace { attempts: 1, latency_s: 0.5, ..Default::default() };
        Entry {
            task_id: task.into(),
            prompt: vec![Message { role: "user".into(), content: format!("write a rule for {task}") }],
            original_request: None,
            paraphrase_error: None,
            outcome: match answer {
                Some(text) => Ok(Completion { text: text.into(), trace }),
                None => Err(Failure { reason: "HTTP 503 after 3 attempts".into(), trace }),
            },
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sf-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn answered_entries_come_back_and_failed_ones_are_asked_again() {
        let d = dir("roundtrip");
        let j = Journal::create(&d, &key()).unwrap();
        for e in [entry("a", Some("rule a")), entry("b", None), entry("c", Some("rule c")), entry("c", None), entry("b", Some("rule b"))] {
            j.append(&e).unwrap();
        }
        drop(j);
        let r = Journal::resume(&d, &key()).unwrap();
        let mut ids: Vec<&str> = r.answered.keys().map(String::as_str).collect();
        ids.sort();
        // b failed, then was answered; c was answered, then failed on a later try: ask again.
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(r.answered["b"], entry("b", Some("rule b")));
        assert!(r.unreadable.is_empty());
        // The resumed journal appends after what was there.
        r.journal.append(&entry("c", Some("rule c2"))).unwrap();
        drop(r);
        assert_eq!(Journal::resume(&d, &key()).unwrap().answered["c"], entry("c", Some("rule c2")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_skipped_and_reported() {
        let d = dir("torn");
        let j = Journal::create(&d, &key()).unwrap();
        j.append(&entry("a", Some("rule a"))).unwrap();
        j.append(&entry("b", Some("rule b"))).unwrap();
        drop(j);
        let path = d.join(ANSWERS);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 20]).unwrap();
        let r = Journal::resume(&d, &key()).unwrap();
        assert_eq!(r.answered.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r.unreadable, [3], "line 3 (the second entry) was cut short");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn another_eval_or_a_second_fresh_start_is_refused_with_the_way_out() {
        let d = dir("refuse");
        drop(Journal::create(&d, &key()).unwrap());
        let err = Journal::create(&d, &key()).err().unwrap().to_string();
        assert!(err.contains("--resume") && err.contains("another --out"), "{err}");
        let other = EvalKey { model: "other".into(), ..key() };
        let err = Journal::resume(&d, &other).err().unwrap().to_string();
        assert!(err.contains("model `m`") && err.contains("model `other`") && err.contains("same model"), "{err}");
        let err = Journal::resume(&dir("missing"), &key()).err().unwrap();
        assert!(format!("{err:#}").contains("has no answers.jsonl"), "{err:#}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
