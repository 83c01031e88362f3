//! Loads and compiles every SigmaHQ rule in the data folder. Every rule must load without errors
//! unless docs/sigma-invalid-rules.md lists it, and every listed rule must really fail: so the
//! document and the code cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sigma_engine::event::FieldTable;
use sigma_engine::{CompileOptions, Document, compile, parse_documents};

/// `| `path` | reason |` rows of the invalid-rules document.
fn documented_invalid() -> BTreeMap<String, String> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../docs/sigma-invalid-rules.md");
    let text = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
    text.lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("| `")?;
            let (path, rest) = l.split_once('`')?;
            Some((path.to_string(), rest.trim_start_matches([' ', '|']).trim_end_matches('|').trim().to_string()))
        })
        .collect()
}

#[test]
fn every_sigmahq_rule_loads_unless_documented_invalid() {
    let data = sigmaforge_data::for_tests().join("sigma");
    let mut files = Vec::new();
    for sub in ["rules", "rules-threat-hunting", "rules-emerging-threats"] {
        files.extend(sigma_engine::rule_files(&data.join(sub)).unwrap());
    }
    assert!(files.len() >= 2858, "expected the 2,858 SigmaHQ rules, found {}", files.len());
    let invalid = documented_invalid();
    // The two rules that use `|expand` need their placeholder configured, as a deployment would.
    let options =
        CompileOptions { placeholders: HashMap::from([("known_cdcs".to_string(), vec!["dc01.example.org".to_string()])]), ..Default::default() };
    let mut table = FieldTable::new();
    let mut failures = Vec::new();
    let mut rules = 0;
    for file in &files {
        let rel = file.strip_prefix(&data).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        let parsed = parse_documents(&text, &rel);
        let mut errors: Vec<String> = parsed.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
        for doc in &parsed.documents {
            if let Document::Rule(rule) = doc {
                rules += 1;
                if let Err(e) = compile(rule, &options, &mut |name| table.intern(name)) {
                    errors.push(e.to_string());
                }
            }
        }
        match (invalid.contains_key(&rel), errors.is_empty()) {
            (false, false) => failures.push(format!("{rel} fails to load but is not in docs/sigma-invalid-rules.md:\n  {}", errors.join("\n  "))),
            (true, true) => failures.push(format!("{rel} is listed in docs/sigma-invalid-rules.md but loads fine")),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    assert!(rules + invalid.len() >= 2858, "{rules} rules compiled");
}
