//! What the validator rejects or warns about (sigma-spec.md sections A–G), malformed input, and
//! correlations and filters.

use sigma_engine::detection::Condition;
use sigma_engine::event::{Event, FieldTable, FileId, Value};
use sigma_engine::{
    CmpOp, CompileOptions, CorrelationType, Diagnostic, Document, FilterRules, ParsedFile, Severity, apply_filter, compile, parse_documents,
};

const GOOD: &str = "title: Whoami
id: 929a690e-bef0-4204-a928-ef5e620d6fcc
status: test
description: d
author: me
date: 2024-01-15
modified: 2024-02-01
tags:
  - attack.discovery
  - attack.t1033
logsource:
  category: process_creation
  product: windows
detection:
  selection:
    Image|endswith: '\\whoami.exe'
  condition: selection
falsepositives:
  - Admins
level: high
";

fn parse(text: &str) -> ParsedFile {
    parse_documents(text, "rule.yml")
}

fn errors(text: &str) -> Vec<Diagnostic> {
    parse(text).diagnostics.into_iter().filter(|d| d.severity == Severity::Error).collect()
}

/// Replaces `from` in the good rule and expects exactly one error with `code` whose message
/// contains `needle`.
fn expect_error(from: &str, to: &str, code: &str, needle: &str) -> Diagnostic {
    assert!(GOOD.contains(from), "{from}");
    let text = GOOD.replacen(from, to, 1);
    let errs = errors(&text);
    let hit = errs.iter().find(|d| d.code == code).unwrap_or_else(|| panic!("no '{code}' error for:\n{text}\ngot {errs:#?}"));
    assert!(hit.message.contains(needle), "message '{}' lacks '{needle}'", hit.message);
    assert!(parse(&text).documents.is_empty(), "an invalid rule must not be returned");
    hit.clone()
}

#[test]
fn the_good_rule_is_valid_and_typed() {
    let p = parse(GOOD);
    assert!(p.diagnostics.is_empty(), "{:#?}", p.diagnostics);
    let Document::Rule(r) = &p.documents[0] else { panic!() };
    assert_eq!(r.title, "Whoami");
    assert_eq!(r.logsource.category.as_deref(), Some("process_creation"));
    assert_eq!(r.level, Some(sigma_engine::Level::High));
    assert_eq!(r.tags, ["attack.discovery", "attack.t1033"]);
    assert_eq!(r.detection.condition, Condition::Ref("selection".into()));
}

#[test]
fn attribute_errors() {
    expect_error("title: Whoami\n", "", "missing-title", "title");
    expect_error("title: Whoami", &format!("title: {}", "x".repeat(257)), "title-too-long", "256");
    expect_error("id: 929a690e-bef0-4204-a928-ef5e620d6fcc", "id: 1234", "bad-id", "UUID");
    expect_error("id: 929a690e-bef0-4204-a928-ef5e620d6fcc", "id: rule-1", "bad-id", "UUID");
    expect_error("status: test", "status: beta", "bad-enum-value", "stable, test, experimental, deprecated, unsupported");
    expect_error("level: high", "level: severe", "bad-enum-value", "informational");
    expect_error("date: 2024-01-15", "date: 2024/01/15", "bad-date", "YYYY-MM-DD ('2024-01-15')");
    expect_error("date: 2024-01-15", "date: 2024-02-30", "bad-date", "valid date");
    expect_error("  - attack.t1033", "  - Attack.T1033", "bad-tag", "lowercase");
    expect_error("  - attack.t1033", "  - t1033", "bad-tag", "namespace.value");
    expect_error("logsource:\n  category: process_creation\n  product: windows\n", "", "missing-logsource", "logsource");
    expect_error("  category: process_creation\n  product: windows\n", "  definition: x\n", "empty-logsource", "at least one");
    expect_error(
        "level: high",
        "level: high\nrelated:\n  - id: 929a690e-bef0-4204-a928-ef5e620d6fcc\n    type: obsoletes",
        "bad-related",
        "'obsolete'",
    );
    expect_error("author: me", "Author: me", "uppercase-key", "lowercase");
}

#[test]
fn detection_errors() {
    let sel = "  selection:\n    Image|endswith: '\\whoami.exe'\n  condition: selection\n";
    let det = |body: &str| GOOD.replacen(sel, body, 1);
    let check = |body: &str, code: &str, needle: &str| {
        let text = det(body);
        let errs = errors(&text);
        let hit = errs.iter().find(|d| d.code == code).unwrap_or_else(|| panic!("no '{code}' for:\n{body}\ngot {errs:#?}"));
        assert!(hit.message.contains(needle), "'{}' lacks '{needle}'", hit.message);
        assert!(hit.line.is_some(), "every detection error has a position");
    };
    check("  selection: {}\n  condition: selection\n", "empty-selection", "empty");
    check("  selection:\n  condition: selection\n", "empty-selection", "empty");
    check("  selection:\n    A:\n      - ''\n      - null\n  condition: selection\n", "null-in-list", "separate selection");
    check("  selection:\n    A|contains|all: x\n  condition: selection\n", "all-single-value", "two or more");
    check("  selection:\n    A: x\n  condition: selection and filter\n", "unknown-identifier", "'filter'");
    check("  selection:\n    A: x\n  condition: Selection\n", "unknown-identifier", "did you mean 'selection'");
    check("  selection:\n    A: x\n  condition: selection and not 1 of filter_*\n", "dangling-pattern", "filter_*");
    check("  selection:\n    A: x\n  condition: selection | count() > 5\n", "condition-syntax", "correlation rule");
    check("  selection:\n    A: x\n  condition: (selection\n", "condition-syntax", "missing ')'");
    check("  selection:\n    A: x\n  condition: selection AND selection\n", "condition-syntax", "lowercase");
    check("  selection:\n    A|conatins: x\n  condition: selection\n", "unknown-modifier", "unknown modifier 'conatins'");
    check("  selection:\n    A|equalsfield: B\n  condition: selection\n", "unknown-modifier", "Hayabusa");
    check("  selection:\n    A|contains|re: x\n  condition: selection\n", "bad-modifier-combination", "regular expression");
    check("  selection:\n    A|re: '(unclosed'\n  condition: selection\n", "invalid-value", "invalid regular expression");
    check("  selection:\n    A|cidr: '10.0.0.0/33'\n  condition: selection\n", "invalid-value", "prefix length");
    check("  selection:\n    A|cidr: 'ten'\n  condition: selection\n", "invalid-value", "not a valid CIDR");
    check("  selection:\n    A|exists: 'yes'\n  condition: selection\n", "invalid-value", "true or false");
    check("  selection:\n    A|gt: 'ten'\n  condition: selection\n", "invalid-value", "need a number");
    check("  selection:\n    A|base64: 'a*'\n  condition: selection\n", "invalid-value", "wildcards");
    check("  selection:\n    A|fieldref: 'B*'\n  condition: selection\n", "invalid-value", "without wildcards");
    check("  selection:\n    A: x\n  timeframe: 5m\n  condition: selection\n", "unsupported-timeframe", "correlation");
    check("  selection:\n    A: x\n", "missing-condition", "condition");
    check("  selection:\n    A: []\n  condition: selection\n", "empty-value-list", "null");
    check("  selection:\n    A:\n      B: c\n  condition: selection\n", "bad-value", "not a map");
}

#[test]
fn huge_regex_repetition_is_a_quick_compile_error() {
    let text = GOOD.replacen("Image|endswith: '\\whoami.exe'", "A|re: 'a{1000}{1000}'", 1);
    assert!(text.contains("a{1000}"));
    let p = parse(&text);
    let Some(Document::Rule(r)) = p.documents.first() else { panic!("{:#?}", p.diagnostics) };
    let t = std::time::Instant::now();
    let e = compile(r, &CompileOptions::default(), &mut |_| sigma_engine::event::FieldKey(0)).unwrap_err();
    assert!(e.message.contains("too large"), "{}", e.message);
    assert!(t.elapsed().as_secs() < 2, "took {:?}", t.elapsed());
    // and `check` reports it as an error
    let c = sigma_engine::check::check_text(&text, "r.yml", &CompileOptions::default());
    assert!(c.parsed.diagnostics.iter().any(|d| d.is_error() && d.message.contains("too large")));
}

#[test]
fn yaml_problems_are_errors_with_positions() {
    let dup = GOOD.replacen("level: high", "level: high\nlevel: low", 1);
    let d = errors(&dup).into_iter().find(|d| d.code == "duplicate-key").expect("duplicate key error");
    assert_eq!((d.line, d.column), (Some(21), Some(1)));
    let dup_field = GOOD.replacen("    Image|endswith: '\\whoami.exe'\n", "    Image|endswith: a\n    Image|endswith: b\n", 1);
    assert_ne!(dup_field, GOOD);
    assert!(errors(&dup_field).iter().any(|d| d.code == "duplicate-key" && d.message.contains("Image|endswith")));
    let bad = "title: x\ndetection: [unclosed\n";
    let e = &errors(bad)[0];
    assert_eq!(e.code, "yaml-syntax");
    assert!(e.line.is_some());
    assert!(e.to_string().starts_with("rule.yml:"), "{e}");
}

#[test]
fn malformed_inputs_never_panic_and_explain() {
    for (text, code) in [
        ("", "empty-file"),
        ("# only a comment\n", "empty-file"),
        ("---\n---\n", "empty-file"),
        ("just a string", "not-a-rule"),
        ("- a\n- b\n", "not-a-rule"),
        ("name: my-app\nversion: 3\n", "not-a-rule"),
        ("\t\"\0", "yaml-syntax"),
        ("title: x\naction: global\n", "legacy-collection"),
    ] {
        let p = parse(text);
        assert!(p.diagnostics.iter().any(|d| d.code == code && d.is_error()), "{text:?}: {:#?}", p.diagnostics);
    }
    let deep = format!("title: x\ndetection: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse(&deep).has_errors());
    let big = format!("title: x\ndescription: '{}'\n", "a".repeat(5 * 1024 * 1024));
    let t = std::time::Instant::now();
    let p = parse(&big);
    assert!(p.diagnostics.iter().any(|d| d.code == "input-too-large"));
    assert!(t.elapsed().as_millis() < 500);
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    assert!(parse(&bomb).diagnostics.iter().any(|d| d.code == "yaml-too-large"));
}

#[test]
fn style_problems_are_warnings_not_errors() {
    let text = GOOD
        .replacen("  - attack.t1033", "  - attack.t1033\n  - attack.t1033\n  - foo.bar", 1)
        .replacen("level: high", "level: high\ncustom_field: 1", 1)
        .replacen("'\\whoami.exe'", "'\\who\\*ami.exe'", 1);
    let p = parse(&text);
    assert!(!p.has_errors(), "{:#?}", p.diagnostics);
    assert_eq!(p.documents.len(), 1, "warnings keep the rule");
    let codes: Vec<&str> = p.diagnostics.iter().map(|d| d.code).collect();
    for c in ["duplicate-list-item", "unknown-tag-namespace", "custom-attribute", "escaped-wildcard"] {
        assert!(codes.contains(&c), "{c} missing from {codes:?}");
    }
    assert!(p.diagnostics.iter().all(|d| d.severity == Severity::Warning));
}

#[test]
fn multi_document_files_with_correlation() {
    let text = format!(
        "{GOOD}---
title: Many whoami
id: 0e95725d-7320-415d-80f7-004da920fc11
correlation:
  type: event_count
  rules:
    - 929a690e-bef0-4204-a928-ef5e620d6fcc
  group-by:
    - Computer
  timespan: 15m
  condition:
    gte: 5
    lt: 100
level: high
---
title: Distinct users
name: distinct_users
correlation:
  type: value_count
  rules: 929a690e-bef0-4204-a928-ef5e620d6fcc
  group-by: [Computer]
  timespan: 1h
  condition:
    field: User
    gt: 3
---
title: Ordered
correlation:
  type: temporal_ordered
  rules: [a, b]
  group-by: [Computer]
  timespan: 1d
  aliases:
    host:
      a: Computer
      b: Hostname
"
    );
    let p = parse(&text);
    assert!(!p.has_errors(), "{:#?}", p.diagnostics);
    assert_eq!(p.documents.len(), 4);
    let Document::Correlation(c) = &p.documents[1] else { panic!() };
    assert_eq!(c.kind, CorrelationType::EventCount);
    assert_eq!(c.timespan_secs, 900);
    assert_eq!(c.group_by, ["Computer"]);
    let cond = c.condition.as_ref().unwrap();
    assert_eq!(cond.bounds, [(CmpOp::Gte, 5.0), (CmpOp::Lt, 100.0)]);
    assert!(cond.holds(5.0) && cond.holds(99.0) && !cond.holds(4.0) && !cond.holds(100.0));
    let Document::Correlation(v) = &p.documents[2] else { panic!() };
    assert_eq!(v.condition.as_ref().unwrap().field.as_deref(), Some("User"));
    let Document::Correlation(t) = &p.documents[3] else { panic!() };
    assert_eq!(t.kind, CorrelationType::TemporalOrdered);
    assert!(t.condition.is_none());
    assert_eq!(t.aliases[0].per_rule, [("a".to_string(), "Computer".to_string()), ("b".to_string(), "Hostname".to_string())]);
}

#[test]
fn correlation_errors() {
    let base = "title: c\ncorrelation:\n  type: value_count\n  rules: [x]\n  group-by: [A]\n  timespan: 5m\n  condition:\n    gt: 3\n";
    let e = errors(base);
    assert!(e.iter().any(|d| d.message.contains("needs 'field'")), "{e:#?}");
    let e = errors(&base.replace("5m", "5 minutes"));
    assert!(e.iter().any(|d| d.message.contains("timespan")));
    let e = errors(&base.replace("value_count", "event_sum"));
    assert!(e.iter().any(|d| d.message.contains("type")));
    let e = errors(&base.replace("gt: 3", "more: 3"));
    assert!(e.iter().any(|d| d.message.contains("unknown correlation condition operator")));
}

#[test]
fn filters_apply_as_and_of_the_filter_condition() {
    let text = format!(
        "{GOOD}---
title: Filter admins
logsource:
  category: process_creation
  product: windows
filter:
  rules:
    - 929a690e-bef0-4204-a928-ef5e620d6fcc
  selection:
    User|startswith: 'adm_'
  condition: not selection
"
    );
    let p = parse(&text);
    assert!(!p.has_errors(), "{:#?}", p.diagnostics);
    let (Document::Rule(rule), Document::Filter(filter)) = (&p.documents[0], &p.documents[1]) else { panic!() };
    assert_eq!(filter.rules, FilterRules::Listed(vec!["929a690e-bef0-4204-a928-ef5e620d6fcc".into()]));
    assert!(filter.applies_to(rule));
    let filtered = apply_filter(rule, filter).unwrap();
    assert!(filtered.detection.searches.iter().any(|s| s.name == "_filt_0_selection"));
    let mut table = FieldTable::new();
    let c = compile(&filtered, &CompileOptions::default(), &mut |n| table.intern(n)).unwrap();
    let mut ev = |fields: &[(&str, &str)]| {
        let f = fields.iter().map(|(k, v)| (table.intern(k), Value::string(v))).collect();
        Event::new(FileId(0), 1, None, f)
    };
    let admin = ev(&[("Image", "c:\\windows\\system32\\whoami.exe"), ("User", "adm_bob")]);
    let user = ev(&[("Image", "c:\\windows\\system32\\whoami.exe"), ("User", "bob")]);
    assert!(!c.matches(&admin));
    assert!(c.matches(&user));

    let mut other_ls = filter.clone();
    other_ls.logsource.category = Some("file_event".into());
    assert!(!other_ls.applies_to(rule));
    assert!(apply_filter(rule, &other_ls).is_err());
}

#[test]
fn every_diagnostic_names_the_file_and_serializes_to_json() {
    let text = GOOD.replacen("date: 2024-01-15", "date: 2024/01/15", 1);
    let d = &errors(&text)[0];
    assert_eq!(d.origin, "rule.yml");
    assert_eq!((d.line, d.column), (Some(6), Some(7)));
    assert_eq!(d.to_string(), format!("rule.yml:6:7: error: {} [bad-date]", d.message));
    let j = d.to_json();
    for k in ["file", "line", "column", "severity", "code", "message"] {
        assert!(j.get(k).is_some(), "{k}");
    }
    assert_eq!(j["severity"], "error");
}
