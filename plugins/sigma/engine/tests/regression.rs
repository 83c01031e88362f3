//! SigmaHQ's true-positive regression suite, run the way SigmaHQ CI runs it
//! (`tests/regression_tests_runner.py`): each `info.yml` names a rule id and EVTX file(s); the rule
//! must fire on its file, at least `match_count` times when that is given (CI fails a lower count
//! and only warns about a higher one). The rule is looked up by id among the SigmaHQ rules in
//! `../shared/data/sigma`, with the built-in logsource mapping.
//!
//! Every test's `.json` rendering (evtx_dump style) is also loaded and must give the same matches
//! as the `.evtx` file, which checks the two loaders against each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sigma_engine::CompileOptions;
use sigma_engine::corpus::{Corpus, SourceFile, load_event_file};
use sigma_engine::hunt::{Hunter, RuleSet};
use sigma_engine::logsource::LogsourceMap;
use sigma_engine::yaml::{NodeValue, parse_stream};

fn files_named(root: &Path, pred: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if pred(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn corpus_of(path: &Path) -> Corpus {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut b = Corpus::builder();
    let loaded = load_event_file(&SourceFile { path: path.to_path_buf(), name });
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    b.add(loaded);
    b.finish().0
}

#[test]
fn sigmahq_regression_suite_passes() {
    let data = sigmaforge_data::for_tests();
    let sigma = data.join("sigma");
    let regression = data.join("sigma-regression");

    let mut rules = RuleSet::default();
    for f in files_named(&sigma, &|p| p.extension().is_some_and(|e| e == "yml") && !p.starts_with(sigma.join("meta"))) {
        rules.add_file(&std::fs::read_to_string(&f).unwrap(), &f.display().to_string());
    }
    let by_id: HashMap<&str, usize> = rules.rules.iter().enumerate().filter_map(|(i, r)| Some((r.rule.id.as_deref()?, i))).collect();
    let map = LogsourceMap::builtin().unwrap();
    let options = CompileOptions::default();

    let infos = files_named(&regression.join("regression_data"), &|p| p.file_name().is_some_and(|n| n == "info.yml"));
    assert_eq!(infos.len(), 137, "the snapshot holds 137 regression test folders");
    let (mut passed, mut without_tests, mut above_count) = (0, 0, Vec::new());
    let mut failures = Vec::new();
    for info in &infos {
        let text = std::fs::read_to_string(info).unwrap();
        let doc = &parse_stream(&text).documents[0];
        let rule_id = doc.get("rule_metadata").and_then(|m| match &m.value {
            NodeValue::Seq(items) => items.first()?.get("id")?.scalar_text(),
            _ => None,
        });
        let rule_id = rule_id.unwrap_or_else(|| panic!("{}: no rule_metadata id", info.display()));
        let Some(NodeValue::Seq(tests)) = doc.get("regression_tests_info").map(|n| &n.value) else {
            // SigmaHQ CI runs nothing for these ("No regression_tests_info found"); the one such
            // folder here is a Cisco rule whose test block is commented out.
            without_tests += 1;
            continue;
        };
        for test in tests {
            let kind = test.get("type").and_then(|t| t.scalar_text()).unwrap_or_default();
            assert_eq!(kind, "evtx", "{}: only evtx tests are in this snapshot", info.display());
            let rel = test.get("path").and_then(|p| p.scalar_text()).unwrap();
            let evtx = regression.join(&rel);
            let expected = test.get("match_count").and_then(|m| m.scalar_text()).map(|m| m.parse::<usize>().unwrap());
            let Some(&index) = by_id.get(rule_id.as_str()) else {
                failures.push(format!("{rule_id}: rule not found among the SigmaHQ rules ({})", info.display()));
                continue;
            };
            let rule = &rules.rules[index];
            let corpus = corpus_of(&evtx);
            let hunter = Hunter::new(&corpus, &map, options.clone());
            let prepared = match hunter.prepare(&rule.rule) {
                Ok(p) => p,
                Err(why) => {
                    failures.push(format!("{rule_id} ({}): {why}", rule.file));
                    continue;
                }
            };
            let hits = hunter.evaluate(&prepared);
            let ids: Vec<u64> = hits.iter().map(|&i| corpus.event(i).record_id).collect();

            let json = evtx.with_extension("json");
            if json.exists() {
                let jc = corpus_of(&json);
                let jh = Hunter::new(&jc, &map, options.clone());
                let jids: Vec<u64> = jh.evaluate(&jh.prepare(&rule.rule).unwrap()).iter().map(|&i| jc.event(i).record_id).collect();
                assert_eq!(ids, jids, "{rule_id}: the .evtx and .json renderings of {} disagree", evtx.display());
            }

            let ok = match expected {
                Some(n) => ids.len() >= n,
                None => !ids.is_empty(),
            };
            if ok {
                passed += 1;
                if let Some(n) = expected.filter(|&n| ids.len() > n) {
                    above_count.push(format!("{rule_id}: {} matches, match_count {n}", ids.len()));
                }
            } else {
                failures.push(format!(
                    "{rule_id} ({}): {} matches on {} (expected {})",
                    rule.file,
                    ids.len(),
                    evtx.display(),
                    expected.map_or("at least 1".to_string(), |n| format!("at least {n}"))
                ));
            }
        }
    }
    eprintln!(
        "regression: {passed} passed, {} failed, {without_tests} folders without tests; {} above match_count (a CI warning): {above_count:#?}",
        failures.len(),
        above_count.len()
    );
    assert!(failures.is_empty(), "{} regression tests failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(passed, 136);
}
