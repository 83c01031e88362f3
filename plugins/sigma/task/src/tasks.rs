//! Reference rules: reading rule lists, keeping the rules that fire on the corpus, and deriving
//! a test split that never shares a rule with the train split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sigma_engine::hunt::{HuntError, Hunter};
use sigma_engine::{CompileOptions, Diagnostic, Document, Rule};

use crate::meta;
use crate::persona::RuleMeta;
use crate::rng::fnv1a;
use crate::score::{EventSet, LogsourceKey, Reference};

/// Why a rule list cannot be used. Cloneable (I/O causes are shared) because the test split
/// keeps its outcome for every later call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuleListError {
    #[error("cannot read rule list {}: {source}", list.display())]
    Read {
        list: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The list names a rule file that cannot be read: the list is wrong.
    #[error("rule list names {rule}, which cannot be read ({}): {source}", file.display())]
    MissingRule {
        rule: String,
        file: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("the test rule list shares a rule with the train list: {test} (train: {train})")]
    SharesRule { test: String, train: String },
}

/// Why a rule text is not a usable reference rule (`origin` names it: a path, or "reference rule").
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReferenceError {
    /// The engine's check (the one `sigmaforge check` runs) found an error.
    #[error(transparent)]
    Invalid(#[from] Diagnostic),
    #[error("{origin}: not a detection rule (a correlation or filter rule, or an empty file)")]
    NotARule { origin: String },
    #[error("{origin}: the rule cannot be run: {source}")]
    CannotRun {
        origin: String,
        #[source]
        source: HuntError,
    },
    /// A reference must match at least one event, or IoU against it means nothing.
    #[error("{origin}: the rule matches no event of the corpus, so IoU against it is undefined")]
    MatchesNothing { origin: String },
}

/// One reference rule that fires on the corpus: the source of `requests_per_rule` tasks.
#[derive(Debug, Clone)]
pub struct ReferenceRule {
    /// The rule's `id` (or its path when it has none): the part of a task id before `#`.
    pub key: String,
    /// Path relative to the rules folder, as written in the rule list.
    pub path: String,
    pub meta: RuleMeta,
    pub reference: Reference,
    /// The reference answer: the rule's own `logsource` and `detection` blocks in a ```yaml
    /// fence, the output form [`crate::persona::SYSTEM_PROMPT`] asks for (see [`answer_of`]).
    pub answer: String,
}

/// Why a listed rule was left out (logged, not fatal: SigmaHQ has rules the engine can't run
/// and rules that match nothing in this corpus).
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Reads a rule list: one path per line, relative to the rules folder; `#` starts a comment.
pub fn read_rule_list(list_file: &Path) -> Result<Vec<String>, RuleListError> {
    let text = std::fs::read_to_string(list_file).map_err(|e| RuleListError::Read { list: list_file.to_path_buf(), source: Arc::new(e) })?;
    Ok(text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(|l| l.to_string()).collect())
}

/// Loads the listed rules; a listed file that is missing is an error (the list is wrong), a rule
/// that does not parse or matches nothing is skipped with a reason.
pub fn load_listed(rules_dir: &Path, paths: &[String], hunter: &Hunter<'_>) -> Result<(Vec<ReferenceRule>, Vec<Skipped>), RuleListError> {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let file = rules_dir.join(path);
        let text = std::fs::read_to_string(&file).map_err(|e| RuleListError::MissingRule { rule: path.clone(), file, source: Arc::new(e) })?;
        match reference_from_text(&text, path, hunter) {
            Ok(r) => kept.push(r),
            Err(reason) => skipped.push(Skipped { path: path.clone(), reason: reason.to_string() }),
        }
    }
    Ok((kept, skipped))
}

/// A reference from rule text: it must be a valid detection rule that matches ≥ 1 event.
pub fn reference_from_text(text: &str, origin: &str, hunter: &Hunter<'_>) -> Result<ReferenceRule, ReferenceError> {
    let rule = parse_rule(text, origin)?;
    let matched = hunter.match_rule(&rule).map_err(|source| ReferenceError::CannotRun { origin: origin.to_string(), source })?;
    let events = EventSet::from_hunt(matched);
    if events.is_empty() {
        return Err(ReferenceError::MatchesNothing { origin: origin.to_string() });
    }
    Ok(ReferenceRule {
        key: rule.id.clone().unwrap_or_else(|| origin.to_string()),
        path: origin.to_string(),
        meta: meta::rule_meta(&rule),
        reference: Reference { logsource: LogsourceKey::of(&rule.logsource), events },
        answer: answer_of(text),
    })
}

/// The reference answer of a rule file: its top-level `logsource:` and `detection:` blocks
/// (each key line with its indented body, in file order, full-line comments dropped), wrapped
/// as a ```yaml fenced block, exactly the output form the system prompt asks for. Works on the
/// text, so the rule's own quoting and modifiers survive. Only the first YAML document that
/// holds a `detection` block is used (a `---` line separates documents).
pub fn answer_of(rule_text: &str) -> String {
    let mut body: Vec<&str> = Vec::new();
    let mut keep = false;
    for line in rule_text.lines() {
        if line.starts_with("---") || line.starts_with("...") {
            if body.iter().any(|l| l.starts_with("detection:")) {
                break;
            }
            body.clear();
            keep = false;
            continue;
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        let top_level = !line.trim().is_empty() && !line.starts_with([' ', '\t', '-']);
        if top_level {
            trim_blank_tail(&mut body);
            let key = line.split(':').next().unwrap_or("").trim_end();
            keep = line.contains(':') && (key == "logsource" || key == "detection");
        }
        if keep {
            body.push(line.trim_end());
        }
    }
    trim_blank_tail(&mut body);
    let mut out = String::from("```yaml\n");
    for line in body {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("```");
    out
}

fn trim_blank_tail(lines: &mut Vec<&str>) {
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
}

/// Parses one detection rule, or says why the text is not one: the engine's check, the same
/// `sigmaforge check` and `hunt` apply.
pub fn parse_rule(text: &str, origin: &str) -> Result<Rule, ReferenceError> {
    let mut parsed = sigma_engine::check::check_text(text, origin, &CompileOptions::default()).parsed;
    if let Some(i) = parsed.diagnostics.iter().position(|d| d.is_error()) {
        return Err(ReferenceError::Invalid(parsed.diagnostics.swap_remove(i)));
    }
    parsed
        .documents
        .into_iter()
        .find_map(|d| match d {
            Document::Rule(r) => Some(r),
            _ => None,
        })
        .ok_or_else(|| ReferenceError::NotARule { origin: origin.to_string() })
}

/// Every `.yml` file below `dirs` (relative to `rules_dir`), as paths relative to `rules_dir`,
/// sorted. Missing folders are skipped (a trimmed data directory may lack some).
pub fn candidate_rules(rules_dir: &Path, dirs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = dirs
        .iter()
        .flat_map(|d| sigma_engine::rule_files(&rules_dir.join(d)).unwrap_or_default())
        .filter_map(|path| path.strip_prefix(rules_dir).ok().map(|rel| rel.to_string_lossy().replace('\\', "/")))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The derived test split: candidates in a fixed pseudo-random order (a hash of the path, so
/// adding a rule to SigmaHQ does not reshuffle the rest), keeping the first `size` that are
/// valid, fire on the corpus, and share neither path nor id with the train split.
pub fn derive_test_split(
    rules_dir: &Path,
    candidates: &[String],
    train: &[ReferenceRule],
    size: usize,
    hunter: &Hunter<'_>,
) -> (Vec<ReferenceRule>, usize) {
    let train_paths: HashSet<&str> = train.iter().map(|r| r.path.as_str()).collect();
    let train_keys: HashSet<&str> = train.iter().map(|r| r.key.as_str()).collect();
    let mut order: Vec<&String> = candidates.iter().filter(|p| !train_paths.contains(p.as_str())).collect();
    order.sort_by_key(|p| (fnv1a(0xcbf2_9ce4_8422_2325, p.as_bytes()), p.as_str()));
    let mut kept: Vec<ReferenceRule> = Vec::new();
    let mut tried = 0;
    for path in order {
        if kept.len() >= size {
            break;
        }
        tried += 1;
        let Ok(text) = std::fs::read_to_string(rules_dir.join(path)) else { continue };
        if let Ok(r) = reference_from_text(&text, path, hunter)
            && !train_keys.contains(r.key.as_str())
            && !kept.iter().any(|k| k.key == r.key)
        {
            kept.push(r);
        }
    }
    (kept, tried)
}

/// Rejects a user-given test list that shares rules with the train split.
pub fn check_disjoint(train: &[ReferenceRule], test: &[ReferenceRule]) -> Result<(), RuleListError> {
    for t in test {
        if let Some(tr) = train.iter().find(|r| r.key == t.key || r.path == t.path) {
            return Err(RuleListError::SharesRule { test: t.path.clone(), train: tr.path.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::answer_of;

    #[test]
    fn answer_keeps_logsource_and_detection_and_drops_the_rest() {
        let rule = "title: x # a title\nid: 1\n# a comment\nlogsource:\n    product: windows\n    # which category\n    category: process_creation\n\
                    description: |\n    text\ndetection:\n    selection:\n        Image|endswith: '\\cmd.exe'\n\n    filter:\n      - a\n      - '#b'\n    condition: selection and not filter\n\n\
                    falsepositives:\n    - none\nlevel: high\n";
        assert_eq!(
            answer_of(rule),
            "```yaml\nlogsource:\n    product: windows\n    category: process_creation\ndetection:\n    selection:\n        Image|endswith: '\\cmd.exe'\n\n    filter:\n      - a\n      - '#b'\n    condition: selection and not filter\n```"
        );
    }

    #[test]
    fn answer_uses_the_first_document_with_a_detection_and_keeps_flow_style() {
        let rule = "action: global\nlogsource: {product: windows}\n---\ndetection: {s: {EventID: 1}, condition: s}\nlogsource_x: y\n---\ndetection: {t: {EventID: 2}, condition: t}\n";
        assert_eq!(answer_of(rule), "```yaml\ndetection: {s: {EventID: 1}, condition: s}\n```");
    }
}
