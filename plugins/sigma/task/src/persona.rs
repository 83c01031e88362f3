//! Simulated analyst personas that turn a rule's metadata into a detection request.
//!
//! Each persona speaks in its own voice and is allowed to reveal only what such a person would
//! know: the terse SOC analyst and the manager reveal no detection values at all, the threat
//! hunter speaks in ATT&CK techniques, the incident responder names up to two artifacts seen on
//! the host, the detection engineer names the channel and event IDs. Every detection value a
//! persona reveals is recorded in [`Request::mentions`], so tests (and users) can check that no
//! prompt leaks more of the reference rule than intended.

use crate::rng::SplitMix64;

/// The output contract, stated once as the system message of every prompt.
pub const SYSTEM_PROMPT: &str = "You are a detection engineer who writes Sigma rules for Windows event logs.\n\
Answer the analyst's request with one Sigma rule in a ```yaml fenced block. Write only the two keys \
that decide what the rule matches:\n\
- `logsource`: `product`, and `category` and/or `service` as in SigmaHQ's taxonomy;\n\
- `detection`: named selections of field/value pairs (with modifiers such as `|contains`, \
`|endswith`, `|re`) and a `condition`.\n\
Do not write title, id, description, tags or other metadata; they are added for you. \
Use field names exactly as they appear in the Windows event (Sysmon or Security channel fields). \
The rule is run over real event logs and scored by how closely its matches agree with the \
events the analyst is after.";

/// What personas may read about a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleMeta {
    pub title: String,
    pub description: String,
    pub level: String,
    pub tags: Vec<String>,
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
    pub falsepositives: Vec<String>,
    pub indicators: Indicators,
}

/// Detection values a persona may reveal, each with the raw value it was taken from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Indicators {
    /// `EventID` values.
    pub event_ids: Vec<String>,
    /// `Channel` values (or the channel the logsource implies).
    pub channels: Vec<String>,
    /// File names seen on a host: (shown text, raw detection value), e.g. ("mshta.exe", "\\mshta.exe").
    pub artifacts: Vec<(String, String)>,
}

/// One request of one persona.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub persona: &'static str,
    pub text: String,
    /// The indicators this request reveals on purpose, as written in the request (a file name,
    /// a channel, an event ID). Detection values contained in one of them count as revealed.
    pub mentions: Vec<String>,
}

/// The personas, in the order requests rotate through them.
pub const PERSONAS: [&str; 6] = ["soc_tier1", "threat_hunter", "incident_responder", "detection_engineer", "manager", "purple_team_lead"];

/// `count` requests for one rule: distinct personas (while there are enough), phrasing chosen
/// by `seed` and `rule_key` so the same inputs always give the same prompts.
pub fn requests(meta: &RuleMeta, rule_key: &str, seed: u64, count: usize) -> Vec<Request> {
    let mut order = SplitMix64::new(seed, &[rule_key, "personas"]);
    let first = order.below(PERSONAS.len());
    (0..count)
        .map(|n| {
            let persona = PERSONAS[(first + n) % PERSONAS.len()];
            let mut rng = SplitMix64::new(seed, &[rule_key, &n.to_string()]);
            write_request(persona, meta, &mut rng)
        })
        .collect()
}

fn write_request(persona: &'static str, m: &RuleMeta, rng: &mut SplitMix64) -> Request {
    let mut mentions = Vec::new();
    let text = match persona {
        "soc_tier1" => soc_tier1(m, rng),
        "threat_hunter" => threat_hunter(m, rng),
        "incident_responder" => incident_responder(m, rng, &mut mentions),
        "detection_engineer" => detection_engineer(m, rng, &mut mentions),
        "manager" => manager(m, rng),
        _ => purple_team_lead(m, rng),
    };
    Request { persona, text, mentions }
}

fn soc_tier1(m: &RuleMeta, rng: &mut SplitMix64) -> String {
    let title = m.title.to_lowercase();
    let sev = if m.level.is_empty() { String::new() } else { format!(" {} sev.", m.level) };
    match rng.below(4) {
        0 => format!("need a sigma rule for {title}.{sev} yaml only pls"),
        1 => format!("can u write a detection for this: {title}? keeps coming up on shift, want an alert for it"),
        2 => format!("rule req: {}.{sev} thx", first_clause(&m.description)),
        _ => format!("quick one - {title}. need it in the SIEM today. {} logs.", source_words(m)),
    }
}

fn threat_hunter(m: &RuleMeta, rng: &mut SplitMix64) -> String {
    let techniques = attack_techniques(&m.tags);
    let tactics = attack_tactics(&m.tags);
    let behaviour = behaviour(&m.description, &m.title);
    let mapped = match (techniques.is_empty(), tactics.is_empty()) {
        (false, false) => format!("{} ({})", techniques.join(", "), tactics.join(" / ")),
        (false, true) => techniques.join(", "),
        (true, false) => format!("the {} tactic", tactics.join(" / ")),
        (true, true) => "a technique we have no coverage for yet".to_string(),
    };
    match rng.below(3) {
        0 => format!(
            "I'm running a hunt for {mapped}. The behaviour I care about: {behaviour}. Write a Sigma rule over {} that surfaces it so I can promote the hunt to a detection.",
            source_words(m)
        ),
        1 => format!(
            "Hypothesis for this week's hunt, mapped to {mapped}: an adversary is {}. Give me a Sigma rule that would have caught it in {}.",
            gerund(&behaviour),
            source_words(m)
        ),
        _ => {
            format!("Our ATT&CK coverage map has a gap at {mapped}. Specifically \"{}\". Can you draft a Sigma rule for it? {}", m.title, fp_note(m))
        }
    }
}

fn incident_responder(m: &RuleMeta, rng: &mut SplitMix64, mentions: &mut Vec<String>) -> String {
    let shown: Vec<&(String, String)> = m.indicators.artifacts.iter().take(2).collect();
    let artifacts = if shown.is_empty() {
        format!("activity matching \"{}\"", m.title)
    } else {
        mentions.extend(shown.iter().map(|(name, _)| name.clone()));
        let names: Vec<String> = shown.iter().map(|(s, _)| format!("`{s}`")).collect();
        format!("traces of {}", names.join(" and "))
    };
    let behaviour = behaviour(&m.description, &m.title);
    match rng.below(3) {
        0 => format!(
            "IR case update: on one of the compromised workstations we found {artifacts}. Looks like {behaviour}. I need a Sigma rule to sweep the rest of the fleet's {} for the same thing.",
            source_words(m)
        ),
        1 => format!(
            "During triage of a host we saw {artifacts}; our working theory is {behaviour}. Please write a Sigma rule so we can check whether it happened anywhere else."
        ),
        _ => format!(
            "Timeline review of the patient-zero box shows {artifacts} right before the lateral movement. Write me a Sigma rule for {} that flags this ({}).",
            source_words(m),
            m.title
        ),
    }
}

fn detection_engineer(m: &RuleMeta, rng: &mut SplitMix64, mentions: &mut Vec<String>) -> String {
    let mut where_ = source_words(m);
    if let Some(ch) = m.indicators.channels.first() {
        mentions.push(ch.clone());
        where_ = format!("the {ch} channel");
    }
    let ids: Vec<&String> = m.indicators.event_ids.iter().take(4).collect();
    mentions.extend(ids.iter().map(|s| s.to_string()));
    let id_part = match ids.len() {
        0 => String::new(),
        1 => format!(", event ID {}", ids[0]),
        _ => format!(", event IDs {}", ids.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("/")),
    };
    let logsource = logsource_words(m);
    match rng.below(3) {
        0 => format!(
            "Detection backlog item: \"{}\". Source: {where_}{id_part} ({logsource}). Please write the logsource and detection blocks; level {} is fine. Keep false positives in mind: {}.",
            m.title,
            if m.level.is_empty() { "medium" } else { &m.level },
            fp_list(m)
        ),
        1 => format!(
            "I want a Sigma rule on {where_}{id_part} for this: {}. Use the SigmaHQ logsource ({logsource}) so our pipeline maps it.",
            first_clause(&m.description)
        ),
        _ => format!(
            "Drafting coverage for {}. Telemetry is {where_}{id_part}. Write the rule with logsource {logsource} and tight selections.",
            m.title
        ),
    }
}

fn manager(m: &RuleMeta, rng: &mut SplitMix64) -> String {
    let what = vague(&m.description, &m.title);
    match rng.below(3) {
        0 => format!("The auditors asked whether we'd notice {what}. Can the team put something in place so we get alerted?"),
        1 => format!("I read an article about {what}. Are we covered? If not, please add a rule."),
        _ => format!("Leadership wants to know if we can detect {what}. Please get a detection written for that."),
    }
}

fn purple_team_lead(m: &RuleMeta, rng: &mut SplitMix64) -> String {
    let techniques = attack_techniques(&m.tags);
    let emulated = if techniques.is_empty() { "a scenario from our threat model".to_string() } else { techniques.join(" and ") };
    match rng.below(2) {
        0 => format!(
            "In last week's purple-team exercise we emulated {emulated} (\"{}\") and the blue team did not see it. The telemetry is in {}. Write the Sigma rule that closes the gap.",
            m.title,
            source_words(m)
        ),
        _ => format!(
            "Red team report, finding 3: {}. No alert fired. Data source available: {}. Please write a Sigma rule for it.",
            first_sentence(&m.description),
            source_words(m)
        ),
    }
}

/// `attack.t1059.001` → `T1059.001`.
pub fn attack_techniques(tags: &[String]) -> Vec<String> {
    tags.iter()
        .filter_map(|t| t.strip_prefix("attack."))
        .filter(|t| t.starts_with('t') && t[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(|t| t.to_uppercase())
        .collect()
}

/// `attack.credential-access` → `credential access`.
pub fn attack_tactics(tags: &[String]) -> Vec<String> {
    const TACTICS: &[&str] = &[
        "reconnaissance",
        "resource-development",
        "initial-access",
        "execution",
        "persistence",
        "privilege-escalation",
        "defense-evasion",
        "credential-access",
        "discovery",
        "lateral-movement",
        "collection",
        "command-and-control",
        "exfiltration",
        "impact",
    ];
    tags.iter().filter_map(|t| t.strip_prefix("attack.")).filter(|t| TACTICS.contains(t)).map(|t| t.replace('-', " ")).collect()
}

/// The event source in analyst words, e.g. "Sysmon process creation" or "the Security log".
fn source_words(m: &RuleMeta) -> String {
    match (&m.category, &m.service) {
        (Some(c), _) => format!("{} events", c.replace('_', " ")),
        (None, Some(s)) => format!("the {s} log"),
        (None, None) => format!("{} logs", m.product.as_deref().unwrap_or("event")),
    }
}

fn logsource_words(m: &RuleMeta) -> String {
    let mut parts = Vec::new();
    for (k, v) in [("product", &m.product), ("category", &m.category), ("service", &m.service)] {
        if let Some(v) = v {
            parts.push(format!("{k} {v}"));
        }
    }
    if parts.is_empty() { "any".into() } else { parts.join(", ") }
}

fn fp_list(m: &RuleMeta) -> String {
    let fps: Vec<&str> = m.falsepositives.iter().map(|s| s.as_str()).filter(|s| !s.eq_ignore_ascii_case("unknown")).take(2).collect();
    if fps.is_empty() { "none known".into() } else { fps.join("; ") }
}

fn fp_note(m: &RuleMeta) -> String {
    match fp_list(m).as_str() {
        "none known" => String::new(),
        fps => format!("Expected benign hits: {fps}."),
    }
}

/// "Detects the use of X to do Y. More text." → "the use of X to do Y".
fn behaviour(description: &str, title: &str) -> String {
    let s = first_sentence(description);
    let s = strip_detects(&s);
    if s.is_empty() { title.to_lowercase() } else { s }
}

/// A manager's paraphrase: the behaviour cut at its first comma/clause, lower-cased.
fn vague(description: &str, title: &str) -> String {
    let b = behaviour(description, title);
    let cut = b.split([',', ';', '(']).next().unwrap_or(&b).trim().to_string();
    let words: Vec<&str> = cut.split_whitespace().take(14).collect();
    words.join(" ")
}

fn first_sentence(text: &str) -> String {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // A sentence ends at ". " (not inside "cmd.exe" or "e.g.").
    let end = t.match_indices(". ").map(|(i, _)| i).find(|&i| !t[..i].ends_with("e.g") && !t[..i].ends_with("i.e")).unwrap_or(t.len());
    t[..end].trim_end_matches('.').to_string()
}

fn first_clause(text: &str) -> String {
    let s = first_sentence(text);
    let s = strip_detects(&s);
    let cut = s.split([';', '(']).next().unwrap_or(&s).trim();
    cut.to_string()
}

fn strip_detects(s: &str) -> String {
    let lower = s.to_lowercase();
    for prefix in ["detects ", "detect ", "this rule detects ", "identifies ", "detection of "] {
        if lower.starts_with(prefix) {
            return s[prefix.len()..].trim().to_string();
        }
    }
    s.trim().to_string()
}

/// "the use of X" → "using X"-ish phrasing is hard in general; keep the noun phrase but make the
/// sentence read: "an adversary is <behaviour>" works for "abusing …"/"using …", otherwise
/// "behind <behaviour>".
fn gerund(behaviour: &str) -> String {
    let first = behaviour.split_whitespace().next().unwrap_or("");
    if first.ends_with("ing") { behaviour.to_string() } else { format!("behind {behaviour}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keepass() -> RuleMeta {
        RuleMeta {
            title: "Remote Thread Created In KeePass.EXE".into(),
            description: "Detects remote thread creation in \"KeePass.exe\" which could indicates potential password dumping activity".into(),
            level: "high".into(),
            tags: vec!["attack.credential-access".into(), "attack.t1555.005".into()],
            product: Some("windows".into()),
            category: Some("create_remote_thread".into()),
            service: None,
            falsepositives: vec!["Unknown".into()],
            indicators: Indicators {
                event_ids: vec!["8".into()],
                channels: vec!["Microsoft-Windows-Sysmon/Operational".into()],
                artifacts: vec![("KeePass.exe".into(), "\\KeePass.exe".into())],
            },
        }
    }

    #[test]
    fn same_seed_same_requests_other_seed_differs() {
        let m = keepass();
        let a = requests(&m, "rule-1", 42, 3);
        assert_eq!(a, requests(&m, "rule-1", 42, 3));
        let all_seeds: Vec<_> = (0..8).map(|s| requests(&m, "rule-1", s, 3)).collect();
        assert!(all_seeds.iter().any(|r| *r != a), "seeds must change the prompts");
    }

    #[test]
    fn requests_of_a_rule_use_distinct_personas() {
        let r = requests(&keepass(), "x", 0, 6);
        let mut personas: Vec<_> = r.iter().map(|q| q.persona).collect();
        personas.sort();
        personas.dedup();
        assert_eq!(personas.len(), 6);
    }

    #[test]
    fn every_persona_speaks_in_its_own_voice() {
        let m = keepass();
        let mut rng = SplitMix64::new(0, &["t"]);
        for p in PERSONAS {
            let r = write_request(p, &m, &mut rng);
            assert!(!r.text.is_empty());
            match p {
                "threat_hunter" => assert!(r.text.contains("T1555.005"), "{}", r.text),
                "detection_engineer" => {
                    assert!(r.text.contains("Microsoft-Windows-Sysmon/Operational") && r.text.contains('8'), "{}", r.text);
                    assert_eq!(r.mentions, ["Microsoft-Windows-Sysmon/Operational", "8"]);
                }
                "incident_responder" => {
                    assert!(r.text.contains("`KeePass.exe`"), "{}", r.text);
                    assert_eq!(r.mentions, ["KeePass.exe"]);
                }
                _ => assert!(r.mentions.is_empty()),
            }
        }
    }

    #[test]
    fn description_helpers() {
        assert_eq!(first_sentence("Detects cmd.exe use. More."), "Detects cmd.exe use");
        assert_eq!(behaviour("Detects the use of X, e.g. Y. Next", "T"), "the use of X, e.g. Y");
        assert_eq!(vague("Detects the use of X, which is bad", "T"), "the use of X");
        assert_eq!(behaviour("", "Some Title"), "some title");
        assert_eq!(attack_tactics(&["attack.defense-evasion".into(), "attack.t1027".into()]), ["defense evasion"]);
    }
}
