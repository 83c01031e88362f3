//! Validation of the metadata attributes that rules, correlations and filters share (Sigma 2.1
//! spec and JSON schema: title, id, name, status, level, dates, tags, related, …).

use crate::detection::Sink;
use crate::diagnostic::Pos;
use crate::yaml::{Node, NodeValue};

/// Reads an optional string attribute; anything but a string is an error.
pub(crate) fn opt_string(doc: &Node, key: &str, sink: &mut Sink) -> Option<String> {
    let node = doc.get(key)?;
    match &node.value {
        NodeValue::String(s) => Some(s.clone()),
        NodeValue::Null => None,
        _ => {
            sink.error("bad-attribute-type", node.pos, format!("'{key}' must be a string, not {}", node.kind_name()));
            None
        }
    }
}

/// Reads an optional list of strings; duplicates are a warning (the schema wants unique items).
pub(crate) fn string_list(doc: &Node, key: &str, sink: &mut Sink) -> Vec<String> {
    let Some(node) = doc.get(key) else { return Vec::new() };
    let items = match &node.value {
        NodeValue::Seq(items) => items,
        NodeValue::Null => return Vec::new(),
        _ => {
            sink.error("bad-attribute-type", node.pos, format!("'{key}' must be a list of strings, not {}", node.kind_name()));
            return Vec::new();
        }
    };
    let mut out: Vec<String> = Vec::new();
    // A set, not `out.contains`: the check must stay linear for long (generated) lists.
    let mut seen = std::collections::HashSet::new();
    for it in items {
        match it.scalar_text() {
            Some(s) if matches!(it.value, NodeValue::String(_)) => {
                if !seen.insert(s.clone()) {
                    sink.warning("duplicate-list-item", it.pos, format!("'{key}' lists '{s}' twice"));
                }
                out.push(s);
            }
            _ => sink.error("bad-attribute-type", it.pos, format!("each entry of '{key}' must be a string, not {}", it.kind_name())),
        }
    }
    out
}

pub(crate) fn title(doc: &Node, sink: &mut Sink) -> String {
    match doc.get("title") {
        None => {
            sink.error("missing-title", doc.pos, "the rule has no 'title' (required)");
            String::new()
        }
        Some(n) => match n.as_str() {
            Some(s) if s.trim().is_empty() => {
                sink.error("empty-title", n.pos, "'title' is empty");
                String::new()
            }
            Some(s) => {
                if s.chars().count() > 256 {
                    sink.error("title-too-long", n.pos, format!("'title' is {} characters long; at most 256 are allowed", s.chars().count()));
                }
                s.to_string()
            }
            None => {
                sink.error("bad-attribute-type", n.pos, format!("'title' must be a string, not {}", n.kind_name()));
                String::new()
            }
        },
    }
}

/// `8-4-4-4-12` hexadecimal digits (any UUID version, like pySigma).
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

pub(crate) fn id(doc: &Node, sink: &mut Sink) -> Option<String> {
    let node = doc.get("id")?;
    let Some(id) = node.scalar_text() else {
        sink.error("bad-id", node.pos, format!("'id' must be a UUID, not {}", node.kind_name()));
        return None;
    };
    if !is_uuid(&id) {
        sink.error("bad-id", node.pos, format!("'id' must be a UUID such as 929a690e-bef0-4204-a928-ef5e620d6fcc, got '{id}'"));
    }
    Some(id)
}

pub(crate) fn name(doc: &Node, sink: &mut Sink) -> Option<String> {
    let node = doc.get("name")?;
    let name = opt_string(doc, "name", sink)?;
    if name.chars().count() > 256 {
        sink.error("name-too-long", node.pos, "'name' is longer than 256 characters");
    }
    Some(name)
}

/// Parses an enumerated attribute (`status`, `level`) against its allowed values.
pub(crate) fn enumerated<T: Copy>(doc: &Node, key: &str, allowed: &[(&str, T)], sink: &mut Sink) -> Option<T> {
    let node = doc.get(key)?;
    let s = opt_string(doc, key, sink)?;
    match allowed.iter().find(|(n, _)| *n == s) {
        Some((_, v)) => Some(*v),
        None => {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            sink.error("bad-enum-value", node.pos, format!("'{key}' must be one of {}, got '{s}'", names.join(", ")));
            None
        }
    }
}

/// `YYYY-MM-DD` with a real calendar date. `YYYY/MM/DD` (Sigma v1) is an error.
pub(crate) fn date(doc: &Node, key: &str, sink: &mut Sink) -> Option<String> {
    let node = doc.get(key)?;
    let s = match &node.value {
        NodeValue::String(s) => s.clone(),
        _ => {
            sink.error("bad-date", node.pos, format!("'{key}' must be a date written YYYY-MM-DD, not {}", node.kind_name()));
            return None;
        }
    };
    if s.len() == 10 && s.as_bytes()[4] == b'/' && s.as_bytes()[7] == b'/' {
        sink.error(
            "bad-date",
            node.pos,
            format!("'{key}: {s}' uses the Sigma v1 format YYYY/MM/DD; Sigma 2 requires YYYY-MM-DD ('{}')", s.replace('/', "-")),
        );
        return None;
    }
    if !valid_date(&s) {
        sink.error("bad-date", node.pos, format!("'{key}' must be a valid date written YYYY-MM-DD, got '{s}'"));
        return None;
    }
    Some(s)
}

fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| s[r].bytes().all(|c| c.is_ascii_digit());
    if !(digits(0..4) && digits(5..7) && digits(8..10)) {
        return false;
    }
    let (y, m, d): (u32, u32, u32) = (s[0..4].parse().unwrap(), s[5..7].parse().unwrap(), s[8..10].parse().unwrap());
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let max = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=max).contains(&d)
}

/// Tags: `namespace.value` in lowercase; known namespaces get their value checked (warnings:
/// ATT&CK ids change over time, so an unknown form is flagged but does not fail the rule).
pub(crate) fn tags(doc: &Node, sink: &mut Sink) -> Vec<String> {
    let tags = string_list(doc, "tags", sink);
    let Some(NodeValue::Seq(nodes)) = doc.get("tags").map(|n| &n.value) else {
        return tags;
    };
    for (tag, node) in tags.iter().zip(nodes.iter().filter(|n| matches!(n.value, NodeValue::String(_)))) {
        check_tag(tag, node.pos, sink);
    }
    tags
}

fn check_tag(tag: &str, pos: Pos, sink: &mut Sink) {
    let Some((ns, value)) = tag.split_once('.') else {
        sink.error("bad-tag", pos, format!("tag '{tag}' must have the form namespace.value (e.g. attack.t1059.001)"));
        return;
    };
    let ns_ok = !ns.is_empty() && ns.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    let value_ok = !value.is_empty() && value.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.'));
    if !ns_ok || !value_ok {
        sink.error("bad-tag", pos, format!("tag '{tag}' must be lowercase letters, digits, '_', '-' and '.' in the form namespace.value"));
        return;
    }
    let id = |prefix: &str, digits: usize| {
        value.strip_prefix(prefix).is_some_and(|rest| {
            let (main, sub) = rest.split_once('.').unwrap_or((rest, ""));
            main.len() == digits
                && main.bytes().all(|c| c.is_ascii_digit())
                && (sub.is_empty() || (sub.len() == 3 && sub.bytes().all(|c| c.is_ascii_digit())))
        })
    };
    let known = match ns {
        "attack" => {
            // ATT&CK v18 split defense-evasion into stealth and defense-impairment; both
            // generations appear in SigmaHQ rules.
            const TACTICS: [&str; 16] = [
                "reconnaissance",
                "stealth",
                "defense-impairment",
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
            TACTICS.contains(&value) || id("t", 4) || id("g", 4) || id("s", 4) || id("m", 4) || id("ds", 4) || id("a", 4) || id("ta", 4) || id("c", 4)
        }
        "tlp" => matches!(value, "red" | "amber" | "amber-strict" | "green" | "clear" | "white"),
        "cve" => {
            let mut p = value.splitn(2, '-');
            let (y, n) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            y.len() == 4 && y.bytes().all(|c| c.is_ascii_digit()) && n.len() >= 4 && n.bytes().all(|c| c.is_ascii_digit())
        }
        "detection" => matches!(value, "dfir" | "emerging-threats" | "threat-hunting"),
        "stp" => {
            matches!(value, "1" | "2" | "3" | "4" | "5" | "1a" | "2a" | "3a" | "4a" | "5a" | "1k" | "2k" | "3k" | "4k" | "5k") || value.len() <= 3
        }
        "car" => value.len() >= 8,
        "d3fend" => true,
        _ => {
            sink.warning(
                "unknown-tag-namespace",
                pos,
                format!("tag '{tag}' uses the namespace '{ns}', which Sigma does not define (attack, car, cve, d3fend, detection, stp, tlp)"),
            );
            return;
        }
    };
    if !known {
        sink.warning("unknown-tag", pos, format!("tag '{tag}' is not a known '{ns}' tag"));
    }
}

/// `related: [{id: UUID, type: derived|obsolete|merged|renamed|similar}]`.
pub(crate) fn related(doc: &Node, sink: &mut Sink) -> Vec<super::Related> {
    let Some(node) = doc.get("related") else {
        return Vec::new();
    };
    let NodeValue::Seq(items) = &node.value else {
        sink.error("bad-related", node.pos, format!("'related' must be a list of {{id, type}} maps, not {}", node.kind_name()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for it in items {
        if it.as_map().is_none() {
            sink.error("bad-related", it.pos, "each 'related' entry must be a map with 'id' and 'type'");
            continue;
        }
        let id = match it.get("id").and_then(Node::as_str) {
            Some(id) if is_uuid(id) => id.to_string(),
            Some(id) => {
                sink.error("bad-related", it.get("id").unwrap().pos, format!("related 'id' must be a UUID, got '{id}'"));
                continue;
            }
            None => {
                sink.error("bad-related", it.pos, "a 'related' entry needs an 'id'");
                continue;
            }
        };
        let kind = match it.get("type").and_then(Node::as_str) {
            Some(t @ ("derived" | "obsolete" | "merged" | "renamed" | "similar")) => t.to_string(),
            Some("obsoletes") => {
                sink.error("bad-related", it.get("type").unwrap().pos, "related type 'obsoletes' was renamed 'obsolete' in Sigma 2");
                continue;
            }
            Some(t) => {
                sink.error(
                    "bad-related",
                    it.get("type").unwrap().pos,
                    format!("related 'type' must be one of derived, obsolete, merged, renamed, similar; got '{t}'"),
                );
                continue;
            }
            None => {
                sink.error("bad-related", it.pos, "a 'related' entry needs a 'type'");
                continue;
            }
        };
        out.push(super::Related { id, kind });
    }
    out
}

/// Attributes every Sigma document kind knows, plus SigmaHQ's own extensions that need no
/// warning. Anything else is a custom attribute: allowed, but flagged since it is often a typo.
pub(crate) fn warn_unknown_keys(doc: &Node, known: &[&str], sink: &mut Sink) {
    const SIGMAHQ_EXTRAS: [&str; 2] = ["regression_tests_path", "simulation"];
    for e in doc.as_map().unwrap_or_default() {
        if known.contains(&e.key.as_str()) || SIGMAHQ_EXTRAS.contains(&e.key.as_str()) {
            continue;
        }
        if known.contains(&e.key.to_lowercase().as_str()) {
            sink.error("uppercase-key", e.key_pos, format!("attribute '{}' must be written in lowercase ('{}')", e.key, e.key.to_lowercase()));
        } else {
            sink.warning(
                "custom-attribute",
                e.key_pos,
                format!("'{}' is not a Sigma attribute (kept as a custom attribute; check the spelling)", e.key),
            );
        }
    }
}

/// `logsource`: a map of lowercase identifiers; at least one of product, category, service.
pub(crate) fn logsource(doc: &Node, sink: &mut Sink) -> Option<super::Logsource> {
    let Some(node) = doc.get("logsource") else {
        sink.error("missing-logsource", doc.pos, "the rule has no 'logsource' (required)");
        return None;
    };
    let Some(entries) = node.as_map() else {
        sink.error("bad-logsource", node.pos, format!("'logsource' must be a map (product, category, service), not {}", node.kind_name()));
        return None;
    };
    let mut ls = super::Logsource::default();
    let mut ok = true;
    for e in entries {
        let value = match &e.value.value {
            NodeValue::String(s) => s.clone(),
            NodeValue::Null => continue,
            _ => {
                sink.error("bad-logsource", e.value.pos, format!("logsource '{}' must be a string, not {}", e.key, e.value.kind_name()));
                ok = false;
                continue;
            }
        };
        let id_like = value.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'));
        if e.key != "definition" && !id_like {
            sink.warning(
                "logsource-value-style",
                e.value.pos,
                format!("logsource {} '{value}' should be lowercase letters, digits, '_', '.' or '-'", e.key),
            );
        }
        match e.key.as_str() {
            "product" => ls.product = Some(value),
            "category" => ls.category = Some(value),
            "service" => ls.service = Some(value),
            "definition" => ls.definition = Some(value),
            _ => ls.custom.push((e.key.clone(), value)),
        }
    }
    if ls.product.is_none() && ls.category.is_none() && ls.service.is_none() {
        sink.error("empty-logsource", node.pos, "'logsource' needs at least one of 'product', 'category' or 'service'");
        ok = false;
    }
    ok.then_some(ls)
}

pub(crate) fn length_limit(doc: &Node, key: &str, max: usize, sink: &mut Sink) {
    if let Some(n) = doc.get(key)
        && let Some(s) = n.as_str()
        && s.chars().count() > max
    {
        sink.error("attribute-too-long", n.pos, format!("'{key}' is longer than {max} characters"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_and_dates() {
        assert!(is_uuid("929a690e-bef0-4204-a928-ef5e620d6fcc"));
        assert!(!is_uuid("929a690e-bef0-4204-a928-ef5e620d6fc"));
        assert!(!is_uuid("not-a-uuid"));
        assert!(valid_date("2024-02-29"));
        assert!(!valid_date("2023-02-29"));
        assert!(!valid_date("2023/02/01"));
        assert!(!valid_date("2023-13-01"));
    }
}
