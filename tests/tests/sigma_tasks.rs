//! The sigma plugin's task suite through the built binary: `sigmaforge tasks --split train|test`.

mod sigma_common;

use std::collections::HashSet;

use serde_json::Value;
use sigma_common::{data, list_tasks, metadata};

fn prompts(tasks: &[Value]) -> Vec<(String, String)> {
    tasks.iter().map(|t| (t["id"].as_str().unwrap().to_string(), t["prompt"].to_string())).collect()
}

#[test]
fn train_has_at_least_100_tasks_and_test_never_shares_a_rule() {
    let train = list_tasks("train", &[]);
    assert!(train.len() >= 100, "train split has {} tasks", train.len());
    let test = list_tasks("test", &[]);
    assert!(!test.is_empty(), "test split is empty");

    let rules = |tasks: &[Value]| -> (HashSet<String>, HashSet<String>) {
        let metas: Vec<Value> = tasks.iter().map(metadata).collect();
        (
            metas.iter().map(|m| m["rule_id"].as_str().unwrap().to_string()).collect(),
            metas.iter().map(|m| m["rule_path"].as_str().unwrap().to_string()).collect(),
        )
    };
    let (train_ids, train_paths) = rules(&train);
    let (test_ids, test_paths) = rules(&test);
    assert!(train_ids.is_disjoint(&test_ids), "shared rule ids: {:?}", train_ids.intersection(&test_ids).collect::<Vec<_>>());
    assert!(train_paths.is_disjoint(&test_paths));

    // Ids are unique and stable in shape; every task has a system contract and a user request.
    let ids: HashSet<&str> = train.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), train.len());
    for t in train.iter().chain(&test) {
        let id = t["id"].as_str().unwrap();
        assert!(id.contains('#'), "{id}");
        let prompt = t["prompt"].as_array().unwrap();
        assert_eq!(prompt[0]["role"], "system");
        assert!(prompt[0]["content"].as_str().unwrap().contains("`logsource`"));
        assert_eq!(prompt[1]["role"], "user");
        let m = metadata(t);
        for key in ["title", "rule_path", "persona", "level", "tags"] {
            assert!(!m[key].is_null(), "{id}: metadata lacks {key}");
        }
        assert!(m["reference_events"].as_u64().unwrap() >= 1, "{id}: a task's reference must match ≥ 1 event");
    }
    let personas: HashSet<String> = train.iter().map(|t| metadata(t)["persona"].as_str().unwrap().to_string()).collect();
    assert!(personas.len() >= 5, "personas used: {personas:?}");
}

#[test]
fn same_seed_gives_identical_prompts_and_another_seed_differs() {
    let a = prompts(&list_tasks("train", &["--plugin-config", "seed=7"]));
    let b = prompts(&list_tasks("train", &["--plugin-config", "seed=7"]));
    assert_eq!(a, b);
    let c = prompts(&list_tasks("train", &["--plugin-config", "seed=8"]));
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c, "the seed must change the prompts");
}

/// No prompt contains a detection value of its rule verbatim, unless the persona reveals it on
/// purpose (it is part of an indicator listed in metadata.mentions) or the rule's own
/// title, description or false-positive notes (metadata the personas paraphrase) say it.
#[test]
fn prompts_do_not_leak_the_reference_detection() {
    let data = data();
    let mut checked_values = 0;
    for split in ["train", "test"] {
        for t in list_tasks(split, &[]) {
            let m = metadata(&t);
            let path = m["rule_path"].as_str().unwrap();
            let text = std::fs::read_to_string(data.join("sigma").join(path)).unwrap();
            let rule = sigma_task::tasks::parse_rule(&text, path).unwrap();
            let user = t["prompt"][1]["content"].as_str().unwrap().to_lowercase();
            let allowed_text =
                format!("{} {} {}", rule.title, rule.description.clone().unwrap_or_default(), rule.falsepositives.join(" ")).to_lowercase();
            let mentions: Vec<String> = m["mentions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_lowercase()).collect();
            for value in sigma_task::meta::detection_values(&rule.detection) {
                // Surrounding spaces delimit a word in the pattern (" firewall "); the word is what could leak.
                let v = value.trim_matches(['*', '\\']).trim().to_lowercase();
                if v.len() < 5 {
                    continue; // "1", "true", "cmd" are ordinary words, not a leaked detection
                }
                checked_values += 1;
                if user.contains(&v) {
                    assert!(
                        mentions.iter().any(|m| m.contains(&v)) || allowed_text.contains(&v),
                        "task {}: prompt leaks detection value {value:?}\n{user}",
                        t["id"]
                    );
                }
            }
        }
    }
    assert!(checked_values > 500, "only {checked_values} values checked");
}
