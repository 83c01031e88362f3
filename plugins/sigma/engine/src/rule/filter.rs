//! Sigma filters (meta filters, Sigma 2): tuning applied to existing rules.
//!
//! Semantics follow pySigma (`sigma/filters.py`): for a rule the filter applies to, the rule's
//! condition becomes `(rule condition) and (filter condition)`, and the filter's search
//! identifiers are renamed `_filt_<n>_<name>` so that `them` and patterns in the rule's own
//! condition never pick them up. A filter usually says `condition: not selection`, giving
//! `(rule) and not (filter selection)`.

use super::attributes;
use super::{Logsource, Rule};
use crate::detection::{self, Condition, Detection, Search, Sink, Target};
use crate::diagnostic::Diagnostic;
use crate::yaml::{Entry, Node, NodeValue};

/// Which rules a filter applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterRules {
    /// `rules: any` / `all` / `[]`: every rule whose logsource matches.
    Any,
    /// Rule ids or names.
    Listed(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub origin: String,
    pub line: u32,
    pub title: String,
    pub id: Option<String>,
    pub name: Option<String>,
    pub logsource: Logsource,
    pub rules: FilterRules,
    /// The filter's searches and its condition.
    pub detection: Detection,
}

const FILTER_KEYS: &[&str] = &[
    "title",
    "id",
    "name",
    "related",
    "taxonomy",
    "description",
    "license",
    "author",
    "references",
    "date",
    "modified",
    "logsource",
    "filter",
    "tags",
    "scope",
];

impl Filter {
    /// Whether the filter names this rule (by id or name) or applies to any rule, and its
    /// logsource fits the rule's.
    pub fn applies_to(&self, rule: &Rule) -> bool {
        let named = match &self.rules {
            FilterRules::Any => true,
            FilterRules::Listed(refs) => refs.iter().any(|r| rule.id.as_deref() == Some(r.as_str()) || rule.name.as_deref() == Some(r.as_str())),
        };
        named && logsource_fits(&self.logsource, &rule.logsource)
    }
}

/// Every logsource field the filter sets must equal the rule's.
fn logsource_fits(filter: &Logsource, rule: &Logsource) -> bool {
    let fits = |f: &Option<String>, r: &Option<String>| f.is_none() || f == r;
    fits(&filter.product, &rule.product) && fits(&filter.category, &rule.category) && fits(&filter.service, &rule.service)
}

pub(crate) fn parse(doc: &Node, origin: &str, sink: &mut Sink) -> Option<Filter> {
    let title = attributes::title(doc, sink);
    let id = attributes::id(doc, sink);
    let name = attributes::name(doc, sink);
    attributes::date(doc, "date", sink);
    attributes::date(doc, "modified", sink);
    attributes::tags(doc, sink);
    for key in ["level", "status"] {
        if let Some(n) = doc.get(key) {
            sink.warning("filter-attribute", n.pos, format!("a filter has no '{key}' (it only tunes other rules); it is ignored"));
        }
    }
    if let Some(n) = doc.get("detection") {
        sink.error("filter-with-detection", n.pos, "a filter puts its selections under 'filter', not 'detection'");
    }
    attributes::warn_unknown_keys(doc, &[FILTER_KEYS, &["level", "status", "detection"]].concat(), sink);
    let logsource = attributes::logsource(doc, sink);
    let f = doc.get("filter")?;
    let Some(entries) = f.as_map() else {
        sink.error("bad-filter", f.pos, format!("'filter' must be a map with 'rules', selections and 'condition', not {}", f.kind_name()));
        return None;
    };
    let rules = match f.get("rules") {
        None => {
            sink.error("bad-filter", f.pos, "the filter has no 'rules' (list rule ids or names, or write 'rules: any')");
            None
        }
        Some(Node { value: NodeValue::String(s), .. }) if s.eq_ignore_ascii_case("any") || s.eq_ignore_ascii_case("all") => Some(FilterRules::Any),
        Some(Node { value: NodeValue::String(s), .. }) => Some(FilterRules::Listed(vec![s.clone()])),
        Some(Node { value: NodeValue::Seq(items), .. }) if items.is_empty() => Some(FilterRules::Any),
        Some(Node { value: NodeValue::Seq(_), .. }) => Some(FilterRules::Listed(attributes::string_list(f, "rules", sink))),
        Some(n) => {
            sink.error("bad-filter", n.pos, "'rules' must be 'any', a rule id or name, or a list of them");
            None
        }
    };
    if let Some(n) = f.get("condition")
        && !matches!(n.value, NodeValue::String(_))
    {
        sink.error("bad-filter", n.pos, "a filter's 'condition' must be a single string");
        return None;
    }
    // The selections and condition read like a detection without `rules`.
    let det_node = Node { pos: f.pos, value: NodeValue::Map(entries.iter().filter(|e| e.key != "rules").cloned().collect::<Vec<Entry>>()) };
    let detection = detection::parse_detection(&det_node, sink);
    Some(Filter { origin: origin.to_string(), line: doc.pos.line, title, id, name, logsource: logsource?, rules: rules?, detection: detection? })
}

/// The rule with the filter applied: `(rule condition) and (filter condition)`. Errors when the
/// filter's logsource does not fit the rule's.
pub fn apply_filter(rule: &Rule, filter: &Filter) -> Result<Rule, Diagnostic> {
    if !logsource_fits(&filter.logsource, &rule.logsource) {
        return Err(Diagnostic::error(
            "filter-logsource",
            &filter.origin,
            Some(crate::diagnostic::Pos::new(filter.line, 1)),
            format!("filter '{}' is for a different logsource than rule '{}'", filter.title, rule.title),
        ));
    }
    // A prefix no search of the rule uses yet, so several filters can be applied in turn.
    let mut k = 0;
    let prefix = loop {
        let p = format!("_filt_{k}_");
        if !rule.detection.searches.iter().any(|s| s.name.starts_with(&p)) {
            break p;
        }
        k += 1;
    };
    let own: Vec<&str> = filter.detection.names().collect();
    let renamed = rename(&filter.detection.condition, &own, &prefix);
    let mut out = rule.clone();
    out.detection.searches.extend(filter.detection.searches.iter().map(|s| Search {
        name: format!("{prefix}{}", s.name),
        pos: s.pos,
        body: s.body.clone(),
    }));
    out.detection.condition = Condition::And(vec![rule.detection.condition.clone(), renamed]);
    Ok(out)
}

/// Rewrites a filter condition over renamed identifiers; `x of` targets are resolved against the
/// filter's own searches first.
fn rename(c: &Condition, own: &[&str], prefix: &str) -> Condition {
    let refs = |t: &Target| -> Vec<Condition> { t.select(own.iter().copied()).into_iter().map(|n| Condition::Ref(format!("{prefix}{n}"))).collect() };
    match c {
        Condition::Ref(n) => Condition::Ref(format!("{prefix}{n}")),
        Condition::Not(i) => Condition::Not(Box::new(rename(i, own, prefix))),
        Condition::And(v) => Condition::And(v.iter().map(|c| rename(c, own, prefix)).collect()),
        Condition::Or(v) => Condition::Or(v.iter().map(|c| rename(c, own, prefix)).collect()),
        Condition::OneOf(t) => Condition::Or(refs(t)),
        Condition::AllOf(t) => Condition::And(refs(t)),
    }
}
