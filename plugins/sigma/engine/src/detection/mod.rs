//! The `detection` section: search identifiers, their items and values, and the condition.
//!
//! Parsing checks everything that does not depend on the events or on configuration (modifier
//! chains, regex syntax, CIDRs, numbers, condition references) with a validation pass of
//! `compile::build_item`; `compile` builds the matchers with real field keys, and can still
//! fail on two things only: a regex over the compiled-size limit, and `expand` placeholders
//! without configured values.

pub mod compile;
pub mod condition;
pub mod matcher;
pub mod modifier;
pub mod pattern;
mod timestamp;

use crate::diagnostic::{Diagnostic, Pos};
use crate::yaml::{Node, NodeValue};
pub use condition::{Condition, Target};
pub use modifier::Modifier;

/// A parsed `detection` map.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Search identifiers in source order.
    pub searches: Vec<Search>,
    /// The condition; a list of conditions is ORed into one.
    pub condition: Condition,
    pub condition_pos: Pos,
}

/// One search identifier (`selection: …`).
#[derive(Clone, Debug, PartialEq)]
pub struct Search {
    pub name: String,
    pub pos: Pos,
    pub body: SearchBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SearchBody {
    /// A map: every item must match.
    AllOf(Vec<Item>),
    /// A list: any element must match.
    AnyOf(Vec<SearchBody>),
    /// A plain value in a list or alone: a keyword, searched in every value of the event.
    Keyword(Item),
}

/// `Field|mod1|mod2: values` (or a keyword, which has no field).
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// `None` for keywords (plain list entries and keys with an empty field name like `'|all'`).
    pub field: Option<String>,
    pub modifiers: Vec<Modifier>,
    /// One or more values; a list is ORed unless `all` is given.
    pub values: Vec<RawValue>,
    pub pos: Pos,
}

/// A value as written in the rule.
#[derive(Clone, Debug, PartialEq)]
pub struct RawValue {
    pub kind: RawKind,
    /// The text (numbers as written, booleans as `true`/`false`, null as empty).
    pub text: String,
    pub pos: Pos,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RawKind {
    Null,
    String,
    Number,
    Bool,
}

impl Detection {
    /// Names of the search identifiers, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.searches.iter().map(|s| s.name.as_str())
    }
}

/// Reports problems while parsing one document.
pub(crate) struct Sink<'a> {
    pub origin: &'a str,
    pub diagnostics: &'a mut Vec<Diagnostic>,
}

impl Sink<'_> {
    pub fn error(&mut self, code: &'static str, pos: Pos, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(code, self.origin, Some(pos), message));
    }

    pub fn warning(&mut self, code: &'static str, pos: Pos, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::warning(code, self.origin, Some(pos), message));
    }
}

/// Parses a `detection` node. Returns `None` when it has errors (already reported).
pub(crate) fn parse_detection(node: &Node, sink: &mut Sink) -> Option<Detection> {
    let Some(entries) = node.as_map() else {
        sink.error(
            "detection-not-a-map",
            node.pos,
            format!("'detection' must be a map of search identifiers and a condition, not {}", node.kind_name()),
        );
        return None;
    };
    let errors_before = sink.diagnostics.iter().filter(|d| d.is_error()).count();
    let mut searches = Vec::new();
    // Every identifier written, including those with errors, so that the condition check does
    // not repeat an error as "unknown identifier".
    let mut declared: Vec<String> = Vec::new();
    let mut condition_node = None;
    for e in entries {
        match e.key.as_str() {
            "condition" => condition_node = Some(&e.value),
            "timeframe" => sink.error(
                "unsupported-timeframe",
                e.key_pos,
                "'timeframe' belongs to Sigma v1 aggregations, which are unsupported: use a correlation rule with 'timespan'",
            ),
            name => {
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') || name.is_empty() {
                    sink.error(
                        "bad-identifier",
                        e.key_pos,
                        format!("search identifier '{name}' may only use letters, digits, '_' and '-' (the condition could not refer to it)"),
                    );
                    continue;
                }
                declared.push(name.to_string());
                if let Some(body) = parse_search_body(&e.value, name, sink, true) {
                    searches.push(Search { name: name.to_string(), pos: e.key_pos, body });
                }
            }
        }
    }
    let Some(cond_node) = condition_node else {
        sink.error("missing-condition", node.pos, "'detection' has no 'condition'");
        return None;
    };
    let condition = parse_condition_node(cond_node, &declared, sink)?;
    let errors_after = sink.diagnostics.iter().filter(|d| d.is_error()).count();
    if errors_after > errors_before {
        return None;
    }
    let detection = Detection { searches, condition, condition_pos: cond_node.pos };
    // Validation pass over every item: catches regex syntax, CIDRs, numbers and value problems
    // now, so a document with them is never returned as valid.
    let mut ok = true;
    let mut budget = compile::PatternBudget::new();
    for search in &detection.searches {
        ok &= trial_build(&search.body, sink, &mut budget);
    }
    ok.then_some(detection)
}

fn trial_build(body: &SearchBody, sink: &mut Sink, budget: &mut compile::PatternBudget) -> bool {
    match body {
        SearchBody::AllOf(items) => items.iter().fold(true, |ok, item| ok & trial_item(item, sink, budget)),
        SearchBody::AnyOf(bodies) => bodies.iter().fold(true, |ok, b| ok & trial_build(b, sink, budget)),
        SearchBody::Keyword(item) => trial_item(item, sink, budget),
    }
}

fn trial_item(item: &Item, sink: &mut Sink, budget: &mut compile::PatternBudget) -> bool {
    match compile::build_item(item, None, &mut |_| crate::event::FieldKey(0), budget) {
        Ok(_) => true,
        Err((pos, message)) => {
            sink.error("invalid-value", pos, message);
            false
        }
    }
}

fn parse_condition_node(node: &Node, declared: &[String], sink: &mut Sink) -> Option<Condition> {
    let texts: Vec<(&str, Pos)> = match &node.value {
        NodeValue::String(s) => vec![(s.as_str(), node.pos)],
        NodeValue::Seq(items) => {
            let mut v = Vec::new();
            for it in items {
                match it.as_str() {
                    Some(s) => v.push((s, it.pos)),
                    None => {
                        sink.error("bad-condition", it.pos, format!("each condition must be a string, not {}", it.kind_name()));
                        return None;
                    }
                }
            }
            if v.is_empty() {
                sink.error("bad-condition", node.pos, "the condition list is empty");
                return None;
            }
            v
        }
        _ => {
            sink.error("bad-condition", node.pos, format!("'condition' must be a string (or a list of strings), not {}", node.kind_name()));
            return None;
        }
    };
    let mut parsed = Vec::new();
    for (text, pos) in texts {
        match condition::parse_condition(text) {
            Ok(c) => {
                if check_references(&c, declared, pos, sink) {
                    parsed.push(c);
                }
            }
            Err(e) => {
                // Plain single-line scalars: the offset maps to a column. Otherwise point at the value.
                let col = if text.contains('\n') { pos.column } else { pos.column + e.offset as u32 };
                sink.error("condition-syntax", Pos::new(pos.line, col), format!("condition: {}", e.message));
            }
        }
    }
    if parsed.is_empty() {
        return None;
    }
    Some(if parsed.len() == 1 { parsed.pop().unwrap() } else { Condition::Or(parsed) })
}

/// Every identifier must exist (case-sensitively) and every `x of pattern` must match something.
fn check_references(c: &Condition, declared: &[String], pos: Pos, sink: &mut Sink) -> bool {
    let names = || declared.iter().map(String::as_str);
    match c {
        Condition::Ref(name) => {
            if declared.contains(name) {
                return true;
            }
            let hint = declared
                .iter()
                .find(|s| s.eq_ignore_ascii_case(name))
                .map(|s| format!(" (identifiers are case-sensitive: did you mean '{s}'?)"))
                .unwrap_or_default();
            sink.error("unknown-identifier", pos, format!("the condition refers to '{name}', which is not a search identifier in 'detection'{hint}"));
            false
        }
        Condition::Not(inner) => check_references(inner, declared, pos, sink),
        Condition::And(v) | Condition::Or(v) => v.iter().fold(true, |ok, c| ok & check_references(c, declared, pos, sink)),
        Condition::OneOf(t) | Condition::AllOf(t) => {
            if t.select(names()).is_empty() {
                sink.error(
                    "dangling-pattern",
                    pos,
                    match t {
                        Target::Them => "'of them' has no search identifiers to refer to".to_string(),
                        Target::Pattern(p) => format!("'{p}' in the condition matches no search identifier"),
                    },
                );
                false
            } else {
                true
            }
        }
    }
}

/// `top` is true for the identifier's own value (where a list of maps is allowed).
fn parse_search_body(node: &Node, name: &str, sink: &mut Sink, top: bool) -> Option<SearchBody> {
    match &node.value {
        NodeValue::Map(entries) => {
            if entries.is_empty() {
                sink.error(
                    "empty-selection",
                    node.pos,
                    format!("search identifier '{name}' is an empty map: it would match nothing (or everything)"),
                );
                return None;
            }
            let mut items = Vec::new();
            let mut ok = true;
            for e in entries {
                match parse_item(&e.key, e.key_pos, &e.value, sink) {
                    Some(item) => items.push(item),
                    None => ok = false,
                }
            }
            ok.then_some(SearchBody::AllOf(items))
        }
        NodeValue::Seq(elements) if top => {
            if elements.is_empty() {
                sink.error("empty-selection", node.pos, format!("search identifier '{name}' is an empty list"));
                return None;
            }
            let mut bodies = Vec::new();
            let mut keywords = Vec::new();
            let mut ok = true;
            for el in elements {
                match &el.value {
                    NodeValue::Map(_) => match parse_search_body(el, name, sink, false) {
                        Some(b) => bodies.push(b),
                        None => ok = false,
                    },
                    NodeValue::Seq(_) => {
                        sink.error("bad-selection", el.pos, format!("search identifier '{name}': a list inside a list is not valid Sigma"));
                        ok = false;
                    }
                    NodeValue::Null => {
                        sink.error("null-keyword", el.pos, format!("search identifier '{name}': a keyword list cannot hold null"));
                        ok = false;
                    }
                    _ => match raw_value(el) {
                        Some(v) => keywords.push(v),
                        None => ok = false,
                    },
                }
            }
            // All plain values of the list form one keyword item (an OR of its values), so the
            // event's values are scanned once, with one automaton, instead of once per keyword.
            if let Some(first) = keywords.first() {
                let pos = first.pos;
                bodies.push(SearchBody::Keyword(Item { field: None, modifiers: Vec::new(), values: keywords, pos }));
            }
            ok.then_some(SearchBody::AnyOf(bodies))
        }
        NodeValue::String(_) | NodeValue::Number(_) | NodeValue::Bool(_) if top => keyword_item(node).map(SearchBody::Keyword),
        NodeValue::Null => {
            sink.error("empty-selection", node.pos, format!("search identifier '{name}' is empty"));
            None
        }
        _ => {
            sink.error(
                "bad-selection",
                node.pos,
                format!("search identifier '{name}' must be a map, a list of maps or a list of keywords, not {}", node.kind_name()),
            );
            None
        }
    }
}

fn keyword_item(node: &Node) -> Option<Item> {
    let value = raw_value(node)?;
    Some(Item { field: None, modifiers: Vec::new(), values: vec![value], pos: node.pos })
}

fn raw_value(node: &Node) -> Option<RawValue> {
    let (kind, text) = match &node.value {
        NodeValue::Null => (RawKind::Null, String::new()),
        NodeValue::String(s) => (RawKind::String, s.clone()),
        NodeValue::Number(s) => (RawKind::Number, canonical_number(s)),
        NodeValue::Bool(b) => (RawKind::Bool, b.to_string()),
        _ => return None,
    };
    Some(RawValue { kind, text, pos: node.pos })
}

/// Numbers compare by their decimal text ("EventID: 0x10" means 16); other forms stay as written.
fn canonical_number(s: &str) -> String {
    let t = s.strip_prefix('+').unwrap_or(s);
    if let Some(hex) = t.strip_prefix("0x")
        && let Ok(n) = u64::from_str_radix(hex, 16)
    {
        return n.to_string();
    }
    if let Some(oct) = t.strip_prefix("0o")
        && let Ok(n) = u64::from_str_radix(oct, 8)
    {
        return n.to_string();
    }
    if let Ok(n) = t.parse::<i64>() {
        return n.to_string();
    }
    t.to_string()
}

fn parse_item(key: &str, key_pos: Pos, value: &Node, sink: &mut Sink) -> Option<Item> {
    let mut parts = key.split('|');
    let field = parts.next().unwrap_or_default();
    let mut modifiers = Vec::new();
    let mut ok = true;
    for name in parts {
        match Modifier::parse(name) {
            Ok(m) => modifiers.push(m),
            Err(e) => {
                sink.error("unknown-modifier", key_pos, format!("'{key}': {e}"));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let is_keyword = field.is_empty();
    if let Err(e) = modifier::check_combination(&modifiers, is_keyword) {
        sink.error("bad-modifier-combination", key_pos, format!("'{key}': {e}"));
        return None;
    }
    if field.chars().any(char::is_whitespace) {
        sink.warning("field-with-space", key_pos, format!("field name '{field}' contains whitespace; Windows field names have none"));
    }
    let values = match &value.value {
        NodeValue::Seq(items) => {
            if items.is_empty() {
                sink.error("empty-value-list", value.pos, format!("'{key}' has an empty value list; write 'null' to match a missing field"));
                return None;
            }
            let mut vals = Vec::new();
            for it in items {
                match &it.value {
                    NodeValue::Null if items.len() > 1 => {
                        sink.error(
                            "null-in-list",
                            it.pos,
                            format!("'{key}': null inside a value list is invalid Sigma; put '{field}: null' in a separate selection"),
                        );
                        return None;
                    }
                    NodeValue::Seq(_) | NodeValue::Map(_) => {
                        sink.error(
                            "bad-value",
                            it.pos,
                            format!("'{key}': values must be plain strings, numbers, booleans or null, not {}", it.kind_name()),
                        );
                        return None;
                    }
                    _ => vals.push(raw_value(it)?),
                }
            }
            vals
        }
        NodeValue::Map(_) => {
            sink.error("bad-value", value.pos, format!("'{key}': a field's value must be a value or a list of values, not a map"));
            return None;
        }
        _ => vec![raw_value(value)?],
    };
    if modifiers.contains(&Modifier::All) && values.len() < 2 {
        sink.error(
            "all-single-value",
            key_pos,
            format!("'{key}': the 'all' modifier needs a list of two or more values (it ANDs them); drop it for a single value"),
        );
        return None;
    }
    if values.iter().any(|v| v.kind == RawKind::Null) && !modifiers.is_empty() {
        sink.error("null-with-modifier", key_pos, format!("'{key}': null cannot take modifiers; write '{field}: null'"));
        return None;
    }
    if is_keyword && values.iter().any(|v| v.kind == RawKind::Null) {
        sink.error("null-keyword", key_pos, "a keyword (no field name) cannot be null");
        return None;
    }
    for v in &values {
        if v.kind == RawKind::String && (v.text.contains("\\*") || v.text.contains("\\?")) && !modifiers.contains(&Modifier::Re) {
            sink.warning(
                "escaped-wildcard",
                v.pos,
                format!("'{key}': the value '{}' contains an escaped wildcard (\\* or \\?), which matches that character literally; check this is intended", v.text),
            );
        }
    }
    Some(Item { field: (!is_keyword).then(|| field.to_string()), modifiers, values, pos: key_pos })
}
