//! The regex-synthesis task, independent of the plugin glue so it is unit-tested natively.
//!
//! Each task describes a string format in words and shows a few strings that must match and a
//! few that must not. The model answers with one regular expression (Rust `regex` syntax) that
//! must match *whole* strings. It is scored on the shown examples plus held-out strings it
//! never saw, so memorising the examples does not get full marks.

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// The bundled dataset (24 tasks: 18 train, 6 test).
const TASKS_JSON: &str = include_str!("../data/tasks.json");

/// Compiled-program size cap: a regex such as `(a{1000}){1000}` is refused instead of
/// taking the plugin's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Completions longer than this are not searched for a regex (they score 0 with a detail).
const MAX_COMPLETION_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Deserialize)]
pub struct Examples {
    pub positive: Vec<String>,
    pub negative: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegexTask {
    pub id: String,
    pub split: String,
    pub description: String,
    /// A known-good answer: keeps the dataset honest (a unit test checks it scores 1).
    pub solution: String,
    pub examples: Examples,
    pub held_out: Examples,
}

/// An ad-hoc task given as a `reference`: JSON `{"positive": [...], "negative": [...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdHoc {
    pub positive: Vec<String>,
    pub negative: Vec<String>,
}

pub fn load_tasks() -> Result<Vec<RegexTask>, String> {
    serde_json::from_str(TASKS_JSON).map_err(|e| format!("bundled tasks.json is invalid: {e}"))
}

pub const SYSTEM_PROMPT: &str = "You write regular expressions in Rust `regex` syntax. The expression must match an \
entire string (it is anchored for you; do not add ^ or $). Think if you like, then give exactly one regular \
expression inside a ```regex fenced block.";

/// The user message of a task.
pub fn user_prompt(t: &RegexTask) -> String {
    let list = |v: &[String]| v.iter().map(|s| format!("  {}", show(s))).collect::<Vec<_>>().join("\n");
    format!(
        "Write a regular expression for {}.\nIt must match:\n{}\nIt must not match:\n{}",
        t.description,
        list(&t.examples.positive),
        list(&t.examples.negative)
    )
}

/// The reference answer of a train task: its known-good solution in the ```regex fence the
/// system prompt asks for. Test tasks are refused: their answers are never handed out.
pub fn reference_answer(tasks: &[RegexTask], id: &str) -> Result<Option<String>, String> {
    let t = tasks.iter().find(|t| t.id == id).ok_or_else(|| format!("unknown task `{id}`"))?;
    if t.split != "train" {
        return Err(format!("task `{id}` is in the {} split; only train tasks have reference answers", t.split));
    }
    Ok(Some(format!("```regex\n{}\n```", t.solution)))
}

/// Strings are shown JSON-quoted so spaces, quotes and backslashes are unambiguous.
fn show(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| s.to_string())
}

/// One component of a score: (name, value, detail).
pub type Component = (&'static str, f64, String);

pub const COMPONENTS: [&str; 2] = ["compiles", "accuracy"];

/// Scores a completion against positive and negative strings.
pub fn score(completion: &str, positive: &[String], negative: &[String]) -> [Component; 2] {
    let zero_accuracy = |why: &str| ("accuracy", 0.0, why.to_string());
    let pattern = match extract(completion) {
        Ok(p) => p,
        Err(why) => return [("compiles", 0.0, why.clone()), zero_accuracy("no regex to evaluate")],
    };
    let regex = match compile(&pattern) {
        Ok(r) => r,
        Err(e) => return [("compiles", 0.0, e), zero_accuracy("the regex does not compile")],
    };
    let mut missed = Vec::new();
    let mut false_pos = Vec::new();
    for s in positive {
        if !regex.is_match(s) {
            missed.push(show(s));
        }
    }
    for s in negative {
        if regex.is_match(s) {
            false_pos.push(show(s));
        }
    }
    let total = positive.len() + negative.len();
    let correct = total - missed.len() - false_pos.len();
    let accuracy = if total == 0 { 0.0 } else { correct as f64 / total as f64 };
    let mut detail = format!("{correct}/{total} strings classified correctly");
    if !missed.is_empty() {
        detail.push_str(&format!("; should match but does not: {}", missed.join(", ")));
    }
    if !false_pos.is_empty() {
        detail.push_str(&format!("; should not match but does: {}", false_pos.join(", ")));
    }
    [("compiles", 1.0, format!("compiled /{pattern}/")), ("accuracy", accuracy, detail)]
}

/// Compiles a pattern anchored to the whole string, with a size cap.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("does not compile: {}", e.to_string().lines().last().unwrap_or("invalid regex").trim()))
}

/// Finds the regex in a model's answer: drops `<think>` blocks, then takes the last fenced
/// block (```regex or plain ```), else a line `regex: ...`, else the last non-empty line.
/// A leading `^` and trailing `$` are removed (the host anchors the pattern itself).
pub fn extract(completion: &str) -> Result<String, String> {
    if completion.len() > MAX_COMPLETION_BYTES {
        return Err(format!("completion of {} bytes is over the {MAX_COMPLETION_BYTES}-byte limit", completion.len()));
    }
    let text = strip_think(completion);
    let candidate = last_fence(&text)
        .or_else(|| text.lines().rev().find_map(|l| l.trim().strip_prefix("regex:").map(|r| r.trim().to_string())))
        .or_else(|| text.lines().rev().map(str::trim).find(|l| !l.is_empty()).map(str::to_string))
        .ok_or_else(|| "the completion is empty".to_string())?;
    let mut p = candidate.trim();
    if p.len() >= 2 && p.starts_with('/') && p.ends_with('/') {
        p = &p[1..p.len() - 1];
    }
    let p = p.strip_prefix('^').unwrap_or(p);
    let p = if p.ends_with('$') && !p.ends_with("\\$") { &p[..p.len() - 1] } else { p };
    if p.is_empty() {
        return Err("the regex is empty".into());
    }
    Ok(p.to_string())
}

fn strip_think(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => rest = &rest[start + end + "</think>".len()..],
            None => return out, // an unclosed think block: nothing after it is an answer
        }
    }
    out.push_str(rest);
    out
}

/// The body of the last ``` fenced block (its first line, a pattern is one line).
fn last_fence(text: &str) -> Option<String> {
    let mut bodies = Vec::new();
    let mut parts = text.split("```");
    parts.next();
    while let (Some(body), _) = (parts.next(), parts.next()) {
        // Drop the info string (`regex`, `text`, ...) on the opening line.
        let body = match body.split_once('\n') {
            Some((first, rest)) if !first.trim().contains(' ') && !rest.trim().is_empty() => rest,
            _ => body,
        };
        if let Some(line) = body.lines().map(str::trim).find(|l| !l.is_empty()) {
            bodies.push(line.to_string());
        }
    }
    bodies.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(t: &RegexTask) -> (Vec<String>, Vec<String>) {
        let mut p = t.examples.positive.clone();
        p.extend(t.held_out.positive.clone());
        let mut n = t.examples.negative.clone();
        n.extend(t.held_out.negative.clone());
        (p, n)
    }

    #[test]
    fn dataset_has_train_and_test_and_every_solution_scores_full_marks() {
        let tasks = load_tasks().unwrap();
        assert!(tasks.len() >= 20);
        assert!(tasks.iter().any(|t| t.split == "test"));
        for t in &tasks {
            let (p, n) = all(t);
            let s = score(&format!("```regex\n{}\n```", t.solution), &p, &n);
            assert_eq!(s[0].1, 1.0, "{}: {}", t.id, s[0].2);
            assert_eq!(s[1].1, 1.0, "{}: {}", t.id, s[1].2);
        }
    }

    #[test]
    fn train_tasks_have_reference_answers_that_score_full_marks_and_test_tasks_are_refused() {
        let tasks = load_tasks().unwrap();
        for t in &tasks {
            let answer = reference_answer(&tasks, &t.id);
            if t.split == "train" {
                let answer = answer.unwrap().unwrap();
                let (p, n) = all(t);
                let s = score(&answer, &p, &n);
                assert_eq!((s[0].1, s[1].1), (1.0, 1.0), "{}: {answer}", t.id);
            } else {
                assert!(answer.unwrap_err().contains("test split"), "{}", t.id);
            }
        }
        assert!(reference_answer(&tasks, "nope").unwrap_err().contains("unknown task `nope`"));
    }

    #[test]
    fn extraction_handles_think_blocks_prose_fences_and_slashes() {
        assert_eq!(extract("<think>maybe ```regex\nx\n```</think>\nAnswer:\n```regex\n^[0-9]+$\n```").unwrap(), "[0-9]+");
        assert_eq!(extract("```\nabc\n```").unwrap(), "abc");
        assert_eq!(extract("I think\nregex: a|b").unwrap(), "a|b");
        assert_eq!(extract("/fo+/").unwrap(), "fo+");
        assert_eq!(extract("price\\$").unwrap(), "price\\$");
        assert!(extract("  \n ").is_err());
        assert!(extract("<think>never closed ```x```").is_err());
    }

    #[test]
    fn partial_answers_get_partial_accuracy_with_a_detail() {
        let p = vec!["12".to_string(), "7".to_string()];
        let n = vec!["a".to_string(), "1a".to_string()];
        let s = score("```regex\n[0-9]{2}\n```", &p, &n);
        assert_eq!(s[1].1, 0.75);
        assert!(s[1].2.contains("should match but does not: \"7\""), "{}", s[1].2);
    }

    #[test]
    fn bad_or_huge_regexes_score_zero_with_a_reason() {
        let s = score("```regex\n(unclosed\n```", &["a".into()], &[]);
        assert_eq!((s[0].1, s[1].1), (0.0, 0.0));
        assert!(s[0].2.contains("does not compile"), "{}", s[0].2);
        let s = score("```regex\n(a{1000}){1000}\n```", &["a".into()], &[]);
        assert_eq!(s[0].1, 0.0, "{}", s[0].2);
        let s = score(&"x".repeat(MAX_COMPLETION_BYTES + 1), &["a".into()], &[]);
        assert!(s[0].2.contains("limit"));
    }
}
