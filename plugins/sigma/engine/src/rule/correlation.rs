//! Correlation rules (Sigma 2 `correlation:` documents): parsed into typed structs. Evaluating
//! them over match lists is the hunt's job.

use super::attributes;
use super::{Level, Status};
use crate::detection::Sink;
use crate::yaml::{Node, NodeValue};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CorrelationType {
    EventCount,
    ValueCount,
    Temporal,
    TemporalOrdered,
    ValueSum,
    ValueAvg,
    ValuePercentile,
}

impl CorrelationType {
    const ALL: [(&'static str, CorrelationType); 7] = [
        ("event_count", CorrelationType::EventCount),
        ("value_count", CorrelationType::ValueCount),
        ("temporal", CorrelationType::Temporal),
        ("temporal_ordered", CorrelationType::TemporalOrdered),
        ("value_sum", CorrelationType::ValueSum),
        ("value_avg", CorrelationType::ValueAvg),
        ("value_percentile", CorrelationType::ValuePercentile),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, t)| *t == self).unwrap().0
    }

    /// Types whose condition applies to the values of `condition.field`.
    pub fn needs_field(self) -> bool {
        matches!(self, CorrelationType::ValueCount | CorrelationType::ValueSum | CorrelationType::ValueAvg | CorrelationType::ValuePercentile)
    }

    pub fn is_temporal(self) -> bool {
        matches!(self, CorrelationType::Temporal | CorrelationType::TemporalOrdered)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
    Neq,
}

impl CmpOp {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Gte => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Lte => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Neq => a != b,
        }
    }
}

/// `condition:` of a correlation: bounds ANDed (e.g. `gte: 5` and `lt: 10`), plus the field the
/// value_* types aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct CorrelationCondition {
    pub field: Option<String>,
    pub bounds: Vec<(CmpOp, f64)>,
}

impl CorrelationCondition {
    /// Whether an aggregate value (a count, a sum, …) satisfies every bound.
    pub fn holds(&self, n: f64) -> bool {
        self.bounds.iter().all(|(op, b)| op.holds(n, *b))
    }
}

/// `aliases: {name: {rule_ref: field, …}}`: one group-by name for differently named fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldAlias {
    pub name: String,
    /// (referenced rule id or name, its field).
    pub per_rule: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    pub origin: String,
    pub line: u32,
    pub title: String,
    pub id: Option<String>,
    pub name: Option<String>,
    pub level: Option<Level>,
    pub status: Option<Status>,
    pub kind: CorrelationType,
    /// Referenced rules (ids or names), in order (the order matters for temporal_ordered).
    pub rules: Vec<String>,
    pub group_by: Vec<String>,
    pub timespan_secs: u64,
    /// `None` only for temporal types written without a condition (all rules must match).
    pub condition: Option<CorrelationCondition>,
    pub aliases: Vec<FieldAlias>,
    /// `generate: true`: the referenced rules also match on their own.
    pub generate: bool,
}

const CORRELATION_KEYS: &[&str] = &[
    "title",
    "id",
    "name",
    "related",
    "taxonomy",
    "status",
    "description",
    "license",
    "author",
    "references",
    "date",
    "modified",
    "falsepositives",
    "level",
    "tags",
    "scope",
    "fields",
    "correlation",
    "generate",
];

/// `\d+[smhdwMy]` → seconds (the spec has s/m/h/d; pySigma also accepts w, M = 30 days and y = 365 days).
pub fn parse_timespan(s: &str) -> Option<u64> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'M' => 30 * 86_400,
        'y' => 365 * 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(crate) fn parse(doc: &Node, origin: &str, sink: &mut Sink) -> Option<Correlation> {
    let title = attributes::title(doc, sink);
    let id = attributes::id(doc, sink);
    let name = attributes::name(doc, sink);
    let status = attributes::enumerated(doc, "status", &Status::ALL, sink);
    let level = attributes::enumerated(doc, "level", &Level::ALL, sink);
    attributes::tags(doc, sink);
    attributes::related(doc, sink);
    attributes::date(doc, "date", sink);
    attributes::date(doc, "modified", sink);
    attributes::warn_unknown_keys(doc, CORRELATION_KEYS, sink);
    if let Some(d) = doc.get("detection") {
        sink.error(
            "correlation-with-detection",
            d.pos,
            "a correlation rule has no 'detection'; put the base rules in their own documents and list them under 'rules'",
        );
    }
    let generate = match doc.get("generate").or_else(|| doc.get("correlation").and_then(|c| c.get("generate"))) {
        None => false,
        Some(Node { value: NodeValue::Bool(b), .. }) => *b,
        Some(n) => {
            sink.error("bad-correlation", n.pos, "'generate' must be true or false");
            false
        }
    };
    let c = doc.get("correlation")?;
    if c.as_map().is_none() {
        sink.error("bad-correlation", c.pos, format!("'correlation' must be a map, not {}", c.kind_name()));
        return None;
    }
    for e in c.as_map().unwrap() {
        if !matches!(e.key.as_str(), "type" | "rules" | "group-by" | "timespan" | "condition" | "aliases" | "generate") {
            sink.warning("custom-attribute", e.key_pos, format!("'{}' is not a correlation attribute", e.key));
        }
    }
    let kind = match c.get("type") {
        None => {
            sink.error("bad-correlation", c.pos, "the correlation has no 'type' (event_count, value_count, temporal, temporal_ordered, …)");
            None
        }
        Some(n) => match n.as_str().and_then(|s| CorrelationType::ALL.iter().find(|(k, _)| *k == s)) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = CorrelationType::ALL.iter().map(|(n, _)| *n).collect();
                sink.error("bad-correlation", n.pos, format!("correlation 'type' must be one of {}", names.join(", ")));
                None
            }
        },
    };
    let rules = match c.get("rules") {
        Some(Node { value: NodeValue::String(s), .. }) => vec![s.clone()],
        Some(n @ Node { value: NodeValue::Seq(_), .. }) => {
            let list = attributes::string_list(c, "rules", sink);
            if list.is_empty() {
                sink.error("bad-correlation", n.pos, "'rules' lists no rules");
            }
            list
        }
        Some(n) => {
            sink.error("bad-correlation", n.pos, "'rules' must be a rule id/name or a list of them");
            Vec::new()
        }
        None => {
            sink.error("bad-correlation", c.pos, "the correlation has no 'rules'");
            Vec::new()
        }
    };
    let group_by = match c.get("group-by") {
        Some(Node { value: NodeValue::String(s), .. }) => vec![s.clone()],
        _ => attributes::string_list(c, "group-by", sink),
    };
    let timespan_secs = match c.get("timespan") {
        None => {
            sink.error("bad-correlation", c.pos, "the correlation has no 'timespan' (e.g. 5m, 1h, 1d)");
            0
        }
        Some(n) => match n.as_str().and_then(parse_timespan) {
            Some(s) => s,
            None => {
                sink.error("bad-correlation", n.pos, "'timespan' must be a number followed by s, m, h or d (e.g. 15m)");
                0
            }
        },
    };
    let condition = match (c.get("condition"), kind) {
        (None, Some(k)) if k.is_temporal() => None,
        (None, _) => {
            sink.error("bad-correlation", c.pos, "this correlation type needs a 'condition' (e.g. gte: 10)");
            None
        }
        (Some(n), _) => parse_condition(n, sink),
    };
    if let (Some(k), Some(cond)) = (kind, &condition) {
        if k.needs_field() && cond.field.is_none() {
            sink.error("bad-correlation", c.get("condition").unwrap().pos, format!("a {} correlation needs 'field' in its condition", k.as_str()));
        }
        if let (Some(rules_n), true) = (c.get("rules"), k.is_temporal() && rules.len() < 2) {
            sink.warning("temporal-single-rule", rules_n.pos, "a temporal correlation over a single rule is an event count; list two or more rules");
        }
    }
    if kind.is_some_and(|k| !k.is_temporal()) && group_by.is_empty() && c.get("group-by").is_none() {
        sink.warning("no-group-by", c.pos, "no 'group-by': all matching events form one group");
    }
    let aliases = parse_aliases(c, sink);
    Some(Correlation {
        origin: origin.to_string(),
        line: doc.pos.line,
        title,
        id,
        name,
        level,
        status,
        kind: kind?,
        rules,
        group_by,
        timespan_secs,
        condition,
        aliases,
        generate,
    })
}

fn parse_condition(n: &Node, sink: &mut Sink) -> Option<CorrelationCondition> {
    let Some(entries) = n.as_map() else {
        sink.error("bad-correlation", n.pos, "the correlation 'condition' must be a map such as {gte: 10}");
        return None;
    };
    let mut cond = CorrelationCondition { field: None, bounds: Vec::new() };
    for e in entries {
        let op = match e.key.as_str() {
            "field" => {
                match &e.value.value {
                    NodeValue::String(s) => cond.field = Some(s.clone()),
                    _ => sink.error("bad-correlation", e.value.pos, "condition 'field' must be a field name"),
                }
                continue;
            }
            "gt" => CmpOp::Gt,
            "gte" => CmpOp::Gte,
            "lt" => CmpOp::Lt,
            "lte" => CmpOp::Lte,
            "eq" => CmpOp::Eq,
            "neq" => CmpOp::Neq,
            other => {
                sink.error("bad-correlation", e.key_pos, format!("unknown correlation condition operator '{other}' (gt, gte, lt, lte, eq, neq)"));
                continue;
            }
        };
        match &e.value.value {
            NodeValue::Number(s) => match crate::event::parse_number(s) {
                Some(v) => cond.bounds.push((op, v)),
                None => sink.error("bad-correlation", e.value.pos, format!("'{}' needs a number", e.key)),
            },
            _ => sink.error("bad-correlation", e.value.pos, format!("'{}' needs a number, not {}", e.key, e.value.kind_name())),
        }
    }
    if cond.bounds.is_empty() {
        sink.error("bad-correlation", n.pos, "the correlation condition has no comparison (gt, gte, lt, lte, eq, neq)");
        return None;
    }
    Some(cond)
}

fn parse_aliases(c: &Node, sink: &mut Sink) -> Vec<FieldAlias> {
    let Some(n) = c.get("aliases") else { return Vec::new() };
    let Some(entries) = n.as_map() else {
        sink.error("bad-correlation", n.pos, "'aliases' must be a map of alias name to {rule: field}");
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let Some(per) = e.value.as_map() else {
            sink.error("bad-correlation", e.value.pos, format!("alias '{}' must map each rule to its field", e.key));
            continue;
        };
        let mut per_rule = Vec::new();
        for p in per {
            match p.value.as_str() {
                Some(f) => per_rule.push((p.key.clone(), f.to_string())),
                None => sink.error("bad-correlation", p.value.pos, "an alias maps a rule to a field name (a string)"),
            }
        }
        out.push(FieldAlias { name: e.key.clone(), per_rule });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("15m"), Some(900));
        assert_eq!(parse_timespan("1h"), Some(3600));
        assert_eq!(parse_timespan("2d"), Some(172_800));
        assert_eq!(parse_timespan("10"), None);
        assert_eq!(parse_timespan("m"), None);
        assert_eq!(parse_timespan("99999999999999999999s"), None);
    }
}
