//! Validation of a set of rule files, as `sigmaforge check` runs it: each file on its own
//! ([`parse_documents`] already reports every per-document problem), then the checks that need
//! all files at once (duplicate ids, references from correlations and filters).

use std::collections::HashMap;

use crate::detection::compile::{CompileOptions, PlaceholderPolicy, compile_detection};
use crate::diagnostic::{Diagnostic, Pos};
use crate::event::FieldKey;
use crate::rule::{Document, FilterRules, ParsedFile, parse_documents};

/// One checked file.
pub struct CheckedFile {
    pub origin: String,
    pub parsed: ParsedFile,
}

/// Parses one file and adds the compile-time checks that depend on options (placeholders).
pub fn check_text(text: &str, origin: &str, options: &CompileOptions) -> CheckedFile {
    let mut parsed = parse_documents(text, origin);
    let mut extra = Vec::new();
    for doc in &parsed.documents {
        if let Document::Rule(rule) = doc
            && let Err((pos, message)) = compile_detection(&rule.detection, options, &mut |_| FieldKey(0))
        {
            // Unresolved placeholders are a deployment matter, not a broken rule: the rule is
            // valid Sigma and runs once its placeholder values are configured. Anything else
            // (a regex over the size limit) is an error.
            let lenient = CompileOptions { unknown_placeholder: PlaceholderPolicy::MatchNothing, ..options.clone() };
            match compile_detection(&rule.detection, &lenient, &mut |_| FieldKey(0)) {
                Ok(_) => extra.push(Diagnostic::warning("unresolved-placeholder", origin, Some(pos), message)),
                Err((pos, message)) => extra.push(Diagnostic::error("compile", origin, Some(pos), message)),
            }
        }
    }
    parsed.diagnostics.extend(extra);
    CheckedFile { origin: origin.to_string(), parsed }
}

/// Checks across files: duplicate rule ids and names (errors: ids must be unique), and
/// correlations or filters that refer to rules none of the files define (warnings: the rule may
/// live elsewhere).
pub fn check_across(files: &[CheckedFile]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut ids: HashMap<&str, (&str, u32)> = HashMap::new();
    let mut names: HashMap<&str, (&str, u32)> = HashMap::new();
    for f in files {
        for doc in &f.parsed.documents {
            let (id, name, line) = match doc {
                Document::Rule(r) => (r.id.as_deref(), r.name.as_deref(), r.line),
                Document::Correlation(c) => (c.id.as_deref(), c.name.as_deref(), c.line),
                Document::Filter(x) => (x.id.as_deref(), x.name.as_deref(), x.line),
            };
            for (value, seen, what) in [(id, &mut ids, "id"), (name, &mut names, "name")] {
                let Some(v) = value else { continue };
                if let Some((other, other_line)) = seen.get(v) {
                    out.push(Diagnostic::error(
                        "duplicate-id",
                        &f.origin,
                        Some(Pos::new(line, 1)),
                        format!("rule {what} '{v}' is also used by {other}:{other_line}; every rule needs its own {what}"),
                    ));
                } else {
                    seen.insert(v, (&f.origin, line));
                }
            }
        }
    }
    for f in files {
        for doc in &f.parsed.documents {
            let (refs, line, what): (&[String], u32, &str) = match doc {
                Document::Correlation(c) => (&c.rules, c.line, "correlation"),
                Document::Filter(x) => match &x.rules {
                    FilterRules::Listed(r) => (r, x.line, "filter"),
                    FilterRules::Any => continue,
                },
                Document::Rule(_) => continue,
            };
            for r in refs {
                if !ids.contains_key(r.as_str()) && !names.contains_key(r.as_str()) {
                    out.push(Diagnostic::warning(
                        "unknown-rule-reference",
                        &f.origin,
                        Some(Pos::new(line, 1)),
                        format!("{what} refers to rule '{r}', which none of the checked files defines"),
                    ));
                }
            }
        }
    }
    out
}
