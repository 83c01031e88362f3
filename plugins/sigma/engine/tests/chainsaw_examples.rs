//! Finds, in our hunt of the SigmaHQ Windows rules over `../shared/data/evtx`, one example of
//! each class of difference from Chainsaw listed in docs/chainsaw-differences.md.
//! Regenerate with: `cargo test --release -p sigma-engine --test chainsaw_examples -- --ignored --nocapture`.

use std::collections::BTreeMap;

use sigma_engine::corpus::{Corpus, collect_event_files};
use sigma_engine::event::ValueKind;
use sigma_engine::hunt::{Hunter, RuleSet};
use sigma_engine::logsource::LogsourceMap;
use sigma_engine::{CompileOptions, PlaceholderPolicy};

/// A quoted or plain YAML scalar with a wildcard that is not only at its ends.
fn has_inner_wildcard(text: &str) -> Option<String> {
    for line in text.lines() {
        let v = line.trim().trim_start_matches("- ").trim();
        let v = v.rsplit_once(": ").map_or(v, |(_, v)| v).trim().trim_matches('\'');
        if v.contains(' ') && !v.contains('*') && !v.contains('?') {
            continue;
        }
        let inner = v.trim_matches('*');
        if (inner.contains('*') || inner.contains('?')) && !line.contains("|re") && !line.trim_start().starts_with('#') && !line.contains("http") {
            return Some(v.to_string());
        }
    }
    None
}

#[test]
#[ignore = "discovery run for the docs; slow"]
fn find_examples() {
    let data = sigmaforge_data::for_tests();
    let sources = collect_event_files(&data.join("evtx")).unwrap();
    let (corpus, _) = Corpus::load(&sources);
    let mut set = RuleSet::default();
    let mut texts = Vec::new();
    // The SigmaHQ rule folders (meta/ holds converter configs, not rules), in path order.
    let files = ["rules", "rules-emerging-threats", "rules-threat-hunting"]
        .iter()
        .flat_map(|d| sigma_engine::rule_files(&data.join("sigma").join(d)).unwrap());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(data.join("sigma")).unwrap().display().to_string();
        set.add_file(&text, &rel);
        texts.push(text);
    }
    let map = LogsourceMap::builtin().unwrap();
    let options = CompileOptions { unknown_placeholder: PlaceholderPolicy::MatchNothing, ..CompileOptions::default() };
    let hunter = Hunter::new(&corpus, &map, options);
    let outcome = hunter.hunt(&set);
    let mut examples: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let eid = corpus.field_key("EventID");
    let channel = corpus.field_key("Channel");
    for (i, (loaded, hits)) in set.rules.iter().zip(&outcome.rule_matches).enumerate() {
        let text = &texts[i];
        for &h in hits.iter().take(1) {
            let e = corpus.event(h);
            let at = format!("{} | {} | record {} | {}", loaded.file, corpus.file_name(e.file), e.record_id, loaded.rule.title);
            let mut add = |class: &'static str, extra: String| {
                let v = examples.entry(class).or_default();
                if v.len() < 3 {
                    v.push(format!("{at} {extra}"));
                }
            };
            for m in ["|windash", "|cidr", "|fieldref", "|re|i", "|expand", "|wide", "|base64offset", "|all"] {
                if text.contains(m) {
                    add(m, String::new());
                }
            }
            if let Some(w) = has_inner_wildcard(text) {
                add("inner-wildcard", format!("value {w}"));
            }
            if text.contains("\\\\") {
                add("escape", String::new());
            }
            if e.values(eid).next().is_some_and(|v| v.kind() == ValueKind::String) {
                add("string-eventid", String::new());
            }
            if e.values(channel).next().is_some_and(|v| v.text() == "Security")
                && e.values(eid).next().is_some_and(|v| v.text() == "4688")
                && loaded.rule.logsource.category.as_deref() == Some("process_creation")
            {
                add("4688-rename", String::new());
            }
            if text.contains(": null") {
                for line in text.lines().filter(|l| l.trim_end().ends_with(": null")) {
                    let field = line.trim().trim_start_matches("- ").split([':', '|']).next().unwrap().trim();
                    if e.values(corpus.field_key(field)).next().is_none() {
                        add("null-absent", format!("field {field} absent"));
                    }
                }
            }
            if loaded.rule.logsource.category.is_none() && loaded.rule.logsource.service.is_none() {
                add("keywords/product-only", String::new());
            }
            // `not filter` whose filter field is absent from the event.
            let mut in_filter = false;
            for line in text.lines() {
                let t = line.trim_start();
                let indent = line.len() - t.len();
                if indent == 4 && t.ends_with(':') {
                    in_filter = t.starts_with("filter");
                } else if indent == 4 {
                    in_filter = false;
                } else if in_filter && indent >= 8 && t.contains(':') && !t.starts_with('-') {
                    let field = t.split([':', '|']).next().unwrap().trim();
                    if !field.is_empty() && text.contains("not ") && e.values(corpus.field_key(field)).next().is_none() {
                        add("not-missing-field", format!("filter field {field} absent"));
                        break;
                    }
                }
            }
        }
    }
    for (class, v) in &examples {
        println!("== {class}");
        for x in v {
            println!("   {x}");
        }
    }
    println!("skipped: {}", outcome.skipped.len());
    for s in &outcome.skipped {
        println!("   {} {}", s.file, s.reason);
    }
}
