//! What a valid rule is, for every part of SigmaForge: `sigmaforge check`, `sigmaforge hunt` and
//! the reward all parse and validate rules here, so a rule `check` accepts is a rule `hunt` runs
//! and the reward calls valid, and a rule `check` rejects is left out of a hunt with the same
//! message.
//!
//! Each file is checked on its own ([`check_text`]: [`parse_documents`] reports every
//! per-document problem, then each rule's detection is compiled), then the checks that need all
//! files at once run ([`cross_file_problems`]: duplicate ids and names, correlation cycles,
//! references to rules none of the files define). [`check_logsource`] checks a rule's logsource
//! against a logsource mapping.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::detection::compile::{CompileOptions, PlaceholderPolicy, check_detection};
use crate::diagnostic::{Diagnostic, Pos};
use crate::logsource::LogsourceMap;
use crate::rule::{Document, FilterRules, ParsedFile, Rule, parse_documents};
use crate::yaml::MAX_INPUT_BYTES;

/// One checked file.
pub struct CheckedFile {
    pub origin: String,
    pub parsed: ParsedFile,
}

/// Parses one file and adds the compile-time checks that depend on options (placeholders).
pub fn check_text(text: &str, origin: &str, options: &CompileOptions) -> CheckedFile {
    let mut parsed = parse_documents(text, origin);
    let mut extra = Vec::new();
    let mut broken = Vec::new();
    for (index, doc) in parsed.documents.iter().enumerate() {
        if let Document::Rule(rule) = doc
            && let Err((pos, message)) = check_detection(&rule.detection, options)
        {
            // Unresolved placeholders are a deployment matter, not a broken rule: the rule is
            // valid Sigma and runs once its placeholder values are configured (until then they
            // match nothing, see `CompileOptions::for_events`). Anything else (a regex over the
            // size limit) is an error, and the rule is not valid.
            let lenient = CompileOptions { unknown_placeholder: PlaceholderPolicy::MatchNothing, ..options.clone() };
            match check_detection(&rule.detection, &lenient) {
                Ok(_) => extra.push(Diagnostic::warning("unresolved-placeholder", origin, Some(pos), message)),
                Err((pos, message)) => {
                    extra.push(Diagnostic::error("compile", origin, Some(pos), message));
                    broken.push(index);
                }
            }
        }
    }
    // `documents` holds only valid documents (see `ParsedFile`).
    for index in broken.into_iter().rev() {
        parsed.documents.remove(index);
    }
    parsed.diagnostics.extend(extra);
    CheckedFile { origin: origin.to_string(), parsed }
}

/// Reads and checks one rule file; an unreadable, oversized or non-UTF-8 file becomes an error
/// diagnostic (codes `unreadable-file`, `input-too-large`, `not-utf8`).
pub fn check_file(path: &Path, options: &CompileOptions) -> CheckedFile {
    let origin = path.display().to_string();
    let fail = |code: &'static str, message: String| {
        let mut parsed = ParsedFile::default();
        parsed.diagnostics.push(Diagnostic::error(code, &origin, None, message));
        CheckedFile { origin: origin.clone(), parsed }
    };
    // One open and one fstat per file: thousands of rule files are read per hunt, and each
    // lookup by path costs more than the read.
    let read = std::fs::File::open(path).and_then(|mut file| {
        let len = file.metadata()?.len();
        if len > MAX_INPUT_BYTES as u64 {
            return Ok(Err(len));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(Ok(bytes))
    });
    match read {
        Err(e) => fail("unreadable-file", format!("cannot read the file: {e}")),
        Ok(Err(len)) => fail("input-too-large", format!("the file is {len} bytes; rule files larger than {MAX_INPUT_BYTES} bytes are refused")),
        Ok(Ok(bytes)) => match String::from_utf8(bytes) {
            Ok(text) => check_text(&text, &origin, options),
            Err(e) => fail("not-utf8", format!("the file is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())),
        },
    }
}

/// Errors for a rule whose logsource `map` does not know: each unknown product, category or
/// service value (code `unknown-logsource`), or, when every value is known, the unmapped
/// combination (code `unmapped-logsource`). Such a rule can never match an event: `hunt` skips
/// it and the reward's IoU detail says it matches nothing.
pub fn check_logsource(rule: &Rule, map: &LogsourceMap) -> Vec<Diagnostic> {
    let ls = &rule.logsource;
    let pos = Some(Pos::new(rule.line, 1));
    map.unknown_parts(ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref())
        .into_iter()
        .map(|u| {
            let code = if u.key.is_some() { "unknown-logsource" } else { "unmapped-logsource" };
            Diagnostic::error(code, &rule.origin, pos, format!("{u} in the logsource mapping {}; the rule can never match an event", map.origin))
        })
        .collect()
}

/// A cross-file problem of one document: (file index, document index, diagnostic).
pub type Problem = (usize, usize, Diagnostic);

/// Checks across files: duplicate rule ids and names and correlation cycles (errors: the later
/// duplicate, and every correlation of a cycle, is not a valid rule), correlations that refer to
/// correlations (warnings: valid Sigma, but not evaluated), and correlations or filters that
/// refer to rules none of the files define (warnings: the rule may live elsewhere).
pub fn cross_file_problems(files: &[CheckedFile]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut ids: HashMap<&str, (&str, u32)> = HashMap::new();
    let mut names: HashMap<&str, (&str, u32)> = HashMap::new();
    // Correlations by id and name: (file, document).
    let mut correlations: HashMap<&str, (usize, usize)> = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        for (di, doc) in f.parsed.documents.iter().enumerate() {
            let (id, name, line) = match doc {
                Document::Rule(r) => (r.id.as_deref(), r.name.as_deref(), r.line),
                Document::Correlation(c) => (c.id.as_deref(), c.name.as_deref(), c.line),
                Document::Filter(x) => (x.id.as_deref(), x.name.as_deref(), x.line),
            };
            let mut duplicate = false;
            for (value, seen, what) in [(id, &mut ids, "id"), (name, &mut names, "name")] {
                let Some(v) = value else { continue };
                if let Some((other, other_line)) = seen.get(v) {
                    out.push((
                        fi,
                        di,
                        Diagnostic::error(
                            "duplicate-id",
                            &f.origin,
                            Some(Pos::new(line, 1)),
                            format!("rule {what} '{v}' is also used by {other}:{other_line}; every rule needs its own {what}"),
                        ),
                    ));
                    duplicate = true;
                } else {
                    seen.insert(v, (&f.origin, line));
                }
            }
            if let (Document::Correlation(_), false) = (doc, duplicate) {
                for v in [id, name].into_iter().flatten() {
                    correlations.entry(v).or_insert((fi, di));
                }
            }
        }
    }
    let correlation_at = |(fi, di): (usize, usize)| match &files[fi].parsed.documents[di] {
        Document::Correlation(c) => Some(c),
        _ => None,
    };
    for (fi, f) in files.iter().enumerate() {
        for (di, doc) in f.parsed.documents.iter().enumerate() {
            let (refs, line, what): (&[String], u32, &str) = match doc {
                Document::Correlation(c) => (&c.rules, c.line, "correlation"),
                Document::Filter(x) => match &x.rules {
                    FilterRules::Listed(r) => (r, x.line, "filter"),
                    FilterRules::Any => continue,
                },
                Document::Rule(_) => continue,
            };
            for r in refs {
                let pos = Some(Pos::new(line, 1));
                if !ids.contains_key(r.as_str()) && !names.contains_key(r.as_str()) {
                    let message = format!("{what} refers to rule '{r}', which none of the checked files defines");
                    out.push((fi, di, Diagnostic::warning("unknown-rule-reference", &f.origin, pos, message)));
                } else if what == "correlation"
                    && let Some(&target) = correlations.get(r.as_str())
                {
                    if reaches(target, (fi, di), &correlations, &correlation_at) {
                        let message =
                            format!("correlation refers to correlation '{r}', which refers back to it: a correlation cycle can never be evaluated");
                        out.push((fi, di, Diagnostic::error("correlation-cycle", &f.origin, pos, message)));
                    } else {
                        let message =
                            format!("correlation refers to correlation '{r}': correlations of correlations are not evaluated (hunt skips this one)");
                        out.push((fi, di, Diagnostic::warning("chained-correlation", &f.origin, pos, message)));
                    }
                }
            }
        }
    }
    out
}

/// Whether following correlation references from `from` leads to `to`.
fn reaches<'f>(
    from: (usize, usize),
    to: (usize, usize),
    correlations: &HashMap<&str, (usize, usize)>,
    at: &dyn Fn((usize, usize)) -> Option<&'f crate::rule::Correlation>,
) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![from];
    while let Some(node) = stack.pop() {
        if node == to {
            return true;
        }
        if !seen.insert(node) {
            continue;
        }
        if let Some(c) = at(node) {
            stack.extend(c.rules.iter().filter_map(|r| correlations.get(r.as_str()).copied()));
        }
    }
    false
}

/// The diagnostics of [`cross_file_problems`].
pub fn check_across(files: &[CheckedFile]) -> Vec<Diagnostic> {
    cross_file_problems(files).into_iter().map(|(_, _, d)| d).collect()
}

/// Removes every document that has a cross-file error from `files` (the later of two duplicates,
/// the correlations of a cycle) and returns all cross-file diagnostics: what `hunt` loads is
/// exactly what `check` calls valid.
pub fn keep_valid(files: &mut [CheckedFile]) -> Vec<Diagnostic> {
    let problems = cross_file_problems(files);
    let mut invalid: Vec<(usize, usize)> = problems.iter().filter(|(_, _, d)| d.is_error()).map(|(f, d, _)| (*f, *d)).collect();
    invalid.sort_unstable();
    invalid.dedup();
    for (fi, di) in invalid.into_iter().rev() {
        files[fi].parsed.documents.remove(di);
    }
    problems.into_iter().map(|(_, _, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "title: R\nid: 11111111-1111-4111-8111-111111111111\nlogsource: {product: windows, category: process_creation}\ndetection:\n  sel: {Image: x}\n  condition: sel\n";

    fn corr(name: &str, refs: &str) -> String {
        format!(
            "title: C {name}\nname: {name}\ncorrelation:\n  type: event_count\n  rules: [{refs}]\n  group-by: [User]\n  timespan: 1m\n  condition: {{gte: 2}}\n"
        )
    }

    fn files(texts: &[&str]) -> Vec<CheckedFile> {
        texts.iter().enumerate().map(|(i, t)| check_text(t, &format!("f{i}.yml"), &CompileOptions::default())).collect()
    }

    #[test]
    fn a_duplicate_id_is_an_error_and_only_the_first_rule_stays_valid() {
        let mut f = files(&[RULE, RULE, RULE]);
        let diagnostics = keep_valid(&mut f);
        assert_eq!(diagnostics.iter().filter(|d| d.code == "duplicate-id" && d.is_error()).count(), 2, "{diagnostics:?}");
        assert_eq!(f.iter().map(|f| f.parsed.documents.len()).collect::<Vec<_>>(), [1, 0, 0]);
    }

    #[test]
    fn a_correlation_cycle_is_an_error_and_a_chain_a_warning() {
        let cycle = format!("{}---\n{}", corr("a", "b"), corr("b", "a"));
        let mut f = files(&[&cycle]);
        let diagnostics = keep_valid(&mut f);
        assert_eq!(diagnostics.iter().filter(|d| d.code == "correlation-cycle" && d.is_error()).count(), 2, "{diagnostics:?}");
        assert!(f[0].parsed.documents.is_empty());
        let chain = format!("{RULE}---\n{}---\n{}", corr("a", "11111111-1111-4111-8111-111111111111"), corr("b", "a"));
        let mut f = files(&[&chain]);
        let diagnostics = keep_valid(&mut f);
        assert!(diagnostics.iter().all(|d| !d.is_error()), "{diagnostics:?}");
        assert!(diagnostics.iter().any(|d| d.code == "chained-correlation"), "{diagnostics:?}");
        assert_eq!(f[0].parsed.documents.len(), 3);
    }

    #[test]
    fn an_unresolved_placeholder_is_a_warning_and_the_rule_stays() {
        let text = RULE.replace("sel: {Image: x}", "sel: {ComputerName|expand: '%known_dcs%'}");
        let f = check_text(&text, "p.yml", &CompileOptions::default());
        assert_eq!(f.parsed.documents.len(), 1);
        assert!(f.parsed.diagnostics.iter().any(|d| d.code == "unresolved-placeholder" && !d.is_error()), "{:?}", f.parsed.diagnostics);
    }

    #[test]
    fn an_unknown_logsource_is_an_error_naming_the_nearest_value() {
        let map = LogsourceMap::builtin().unwrap();
        let text = RULE.replace("product: windows, category: process_creation", "product: windwos, category: proccess_creation");
        let f = check_text(&text, "l.yml", &CompileOptions::default());
        let d = check_logsource(f.parsed.rules().next().unwrap(), &map);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().all(|d| d.is_error() && d.code == "unknown-logsource"));
        assert!(d[1].message.contains("category 'proccess_creation' (did you mean process_creation?)"), "{}", d[1].message);
        assert!(check_logsource(check_text(RULE, "ok.yml", &CompileOptions::default()).parsed.rules().next().unwrap(), &map).is_empty());
    }
}
