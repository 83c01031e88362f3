//! Completions with known scores, built from a reference rule's text: used by the tests, the
//! end-to-end tests and the scoring benchmark (the "8 prompts × 8 rollouts, mixed valid and
//! invalid" batch), so they all exercise the same cases.

/// The top-level `logsource` and `detection` blocks of a rule file, as the model is asked to
/// write them (everything else dropped). Works on the text, so comments and quoting survive.
pub fn reference_answer(rule_text: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in rule_text.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#', '-']);
        if top_level {
            keep = line.starts_with("logsource:") || line.starts_with("detection:");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One rollout variant of a batch, with the score it must get (`None`: depends on the rule).
#[derive(Debug, Clone)]
pub struct Rollout {
    pub kind: &'static str,
    pub completion: String,
    pub expected_total: Option<f64>,
}

/// Eight rollouts for one reference rule, from perfect to garbage (weights 0.1/0.3/0.7).
pub fn rollouts(rule_text: &str) -> Vec<Rollout> {
    let answer = reference_answer(rule_text);
    let logsource: String = answer.lines().take_while(|l| !l.starts_with("detection:")).map(|l| format!("{l}\n")).collect();
    let nothing =
        format!("{logsource}detection:\n  selection:\n    CommandLine|contains: 'sigmaforge-no-such-value-7f3a9c'\n  condition: selection\n");
    let detection = &answer[logsource.len()..];
    let wrong_logsource = format!("logsource:\n  product: windows\n  service: sigmaforge-wrong\n{detection}");
    vec![
        Rollout { kind: "reference", completion: answer.clone(), expected_total: Some(1.1) },
        Rollout {
            kind: "think+fence",
            completion: format!(
                "<think>\nThe analyst wants a rule. I will write the detection.\n</think>\nHere is the rule:\n\n```yaml\n{answer}```\n\nIt should fire on the described activity."
            ),
            expected_total: Some(1.1),
        },
        Rollout { kind: "garbage", completion: "I'm sorry, I can't help with writing that detection.".into(), expected_total: Some(0.0) },
        Rollout { kind: "matches-nothing", completion: nothing, expected_total: Some(0.4) },
        Rollout { kind: "wrong-logsource", completion: wrong_logsource, expected_total: None },
        Rollout {
            kind: "yaml-syntax-error",
            completion: format!("```yaml\n{logsource}detection:\n  selection: [unclosed\n  condition: selection\n```"),
            expected_total: None,
        },
        Rollout {
            kind: "unknown-modifier",
            completion: format!("{logsource}detection:\n  selection:\n    Image|endswithh: '.exe'\n  condition: selection\n"),
            expected_total: None,
        },
        Rollout {
            kind: "broad",
            completion: format!("{logsource}detection:\n  selection:\n    EventID|gte: 0\n  condition: selection\n"),
            expected_total: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_keeps_only_logsource_and_detection() {
        let rule = "title: X\nid: 1\nlogsource:\n    product: windows\n    category: process_creation\ndetection:\n    sel:\n        Image|endswith: '\\a.exe'\n    condition: sel\nfalsepositives:\n    - Unknown\nlevel: high\n";
        assert_eq!(
            reference_answer(rule),
            "logsource:\n    product: windows\n    category: process_creation\ndetection:\n    sel:\n        Image|endswith: '\\a.exe'\n    condition: sel\n"
        );
        assert_eq!(rollouts(rule).len(), 8);
    }
}
