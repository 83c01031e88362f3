//! YAML to a small node tree with a source position on every node.
//!
//! Built on `saphyr-parser`'s event stream (see the crate docs for why), with a line reader for
//! the common subset rules are written in ([`simple`]: same events, several times faster; it
//! declines anything else, which `saphyr-parser` then reads). We keep our own tree so
//! that every key and value knows its line:column, duplicate keys are caught, and untrusted input
//! (rules written by a model) cannot exhaust memory, time or the stack:
//! - input larger than [`MAX_INPUT_BYTES`] is refused before parsing;
//! - nesting deeper than [`MAX_DEPTH`] stops the parse (the tree builder is iterative, and the
//!   limit keeps later recursive walks shallow);
//! - aliases are expanded by copying, and the total number of nodes a file may produce, aliases
//!   included, is capped at [`MAX_NODES`] (a "billion laughs" file hits the cap after a few
//!   thousand copies instead of allocating gigabytes).

use std::collections::HashMap;
use std::collections::HashSet;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::diagnostic::Pos;

mod simple;

/// Larger files are refused: the largest SigmaHQ rule is about 30 KB.
pub const MAX_INPUT_BYTES: usize = 2 * 1024 * 1024;
/// Deepest allowed nesting of mappings and sequences (Sigma rules need 4 or 5).
pub const MAX_DEPTH: usize = 64;
/// Most nodes one file may produce, counting every node an alias copies.
pub const MAX_NODES: usize = 500_000;

/// A YAML node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: NodeValue,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeValue {
    /// `null`, `~` or nothing.
    Null,
    Bool(bool),
    /// An integer or float as written (plain scalars only; quoted numbers are strings).
    Number(String),
    String(String),
    Seq(Vec<Node>),
    /// Entries in source order; keys are unique (duplicates are a parse error).
    Map(Vec<Entry>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            NodeValue::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The text of any scalar (strings, numbers, booleans); `None` for null and collections.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            NodeValue::String(s) | NodeValue::Number(s) => Some(s.clone()),
            NodeValue::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A short name of the node's type for messages ("a string", "a list", …).
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Number(_) => "a number",
            NodeValue::String(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a map",
        }
    }

    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// How many nodes this subtree holds (for the alias budget).
    fn size(&self) -> usize {
        match &self.value {
            NodeValue::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            NodeValue::Map(entries) => 1 + entries.iter().map(|e| 1 + e.value.size()).sum::<usize>(),
            _ => 1,
        }
    }
}

/// A YAML problem: syntax errors and the limits above.
#[derive(Clone, Debug, PartialEq)]
pub struct YamlError {
    pub pos: Option<Pos>,
    pub code: &'static str,
    pub message: String,
}

impl YamlError {
    fn at(pos: Pos, code: &'static str, message: impl Into<String>) -> Self {
        YamlError { pos: Some(pos), code, message: message.into() }
    }
}

/// The documents of a YAML stream. On an error, the documents completed before it are returned
/// with it (the rest of the file is not read).
pub struct YamlStream {
    pub documents: Vec<Node>,
    pub error: Option<YamlError>,
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line() as u32, span.start.col() as u32 + 1)
}

/// From this many entries on, a mapping's keys are checked for duplicates through a set.
const KEY_SET_MIN: usize = 16;

type KeySet = HashSet<String, foldhash::fast::RandomState>;

/// A collection being built.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        /// The keys of `entries`, once there are enough of them that comparing with each would
        /// cost more than hashing (a rule's maps have a handful; a hostile file may have 100,000).
        keys: Option<KeySet>,
        pending_key: Option<(String, Pos)>,
    },
}

/// Parses every document of `text`.
pub fn parse_stream(text: &str) -> YamlStream {
    let mut documents = Vec::new();
    if text.len() > MAX_INPUT_BYTES {
        let error = YamlError {
            pos: None,
            code: "input-too-large",
            message: format!("the file is {} bytes; rule files larger than {} bytes are refused", text.len(), MAX_INPUT_BYTES),
        };
        return YamlStream { documents, error: Some(error) };
    }
    let error = build(text, &mut documents).err();
    YamlStream { documents, error }
}

fn build(text: &str, documents: &mut Vec<Node>) -> Result<(), YamlError> {
    match simple::events(text) {
        Some(events) => build_from(events.into_iter().map(Ok), documents),
        None => build_from(
            Parser::new_from_str(text).map(|item| {
                item.map_err(|e| {
                    let m = e.marker();
                    YamlError::at(Pos::new(m.line() as u32, m.col() as u32 + 1), "yaml-syntax", format!("YAML syntax error: {}", e.info()))
                })
            }),
            documents,
        ),
    }
}

/// The tree of a stream of events (from either reader).
fn build_from<'a>(events: impl Iterator<Item = Result<(Event<'a>, Span), YamlError>>, documents: &mut Vec<Node>) -> Result<(), YamlError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut root: Option<Node> = None;

    for item in events {
        let (event, span) = item?;
        let pos = pos_of(&span);
        let finished: Option<Node> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take() {
                    documents.push(node);
                }
                None
            }
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    return Err(YamlError::at(pos, "yaml-syntax", "YAML alias refers to an unknown anchor"));
                };
                nodes += target.size();
                if nodes > MAX_NODES {
                    return Err(YamlError::at(pos, "yaml-too-large", format!("YAML aliases expand to more than {MAX_NODES} nodes (alias bomb?)")));
                }
                let mut copy = target.clone();
                copy.pos = pos;
                Some(copy)
            }
            Event::Scalar(value, style, anchor, tag) => {
                nodes += 1;
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let node = Node { pos, value: resolve_scalar(&value, style, is_str_tag) };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err(YamlError::at(pos, "yaml-too-deep", format!("YAML nesting is deeper than {MAX_DEPTH} levels")));
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq { pos, anchor, items: Vec::new() });
                } else {
                    stack.push(Frame::Map { pos, anchor, entries: Vec::new(), keys: None, pending_key: None });
                }
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (Node { pos, value: NodeValue::Seq(items) }, anchor),
                    Some(Frame::Map { pos, anchor, entries, .. }) => (Node { pos, value: NodeValue::Map(entries) }, anchor),
                    None => return Err(YamlError::at(pos, "yaml-syntax", "unbalanced YAML collection end")),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
        };
        if nodes > MAX_NODES {
            return Err(YamlError::at(pos, "yaml-too-large", format!("the YAML holds more than {MAX_NODES} nodes")));
        }
        if let Some(node) = finished {
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map { entries, keys, pending_key, .. }) => match pending_key.take() {
                    None => {
                        let key = match &node.value {
                            NodeValue::String(s) | NodeValue::Number(s) => s.clone(),
                            NodeValue::Bool(b) => b.to_string(),
                            NodeValue::Null => String::new(),
                            _ => {
                                return Err(YamlError::at(
                                    node.pos,
                                    "yaml-complex-key",
                                    "a YAML mapping key must be a plain value, not a list or map",
                                ));
                            }
                        };
                        let duplicate = if entries.len() < KEY_SET_MIN {
                            entries.iter().any(|e| e.key == key)
                        } else {
                            !keys.get_or_insert_with(|| entries.iter().map(|e| e.key.clone()).collect()).insert(key.clone())
                        };
                        if duplicate {
                            return Err(YamlError::at(
                                node.pos,
                                "duplicate-key",
                                format!("duplicate key '{key}' in the same mapping (YAML keys must be unique; merge the values into one list)"),
                            ));
                        }
                        *pending_key = Some((key, node.pos));
                    }
                    Some((key, key_pos)) => entries.push(Entry { key, key_pos, value: node }),
                },
            }
        }
    }
    if let Some(node) = root.take() {
        documents.push(node);
    }
    Ok(())
}

/// YAML 1.2 core schema resolution of a scalar: only plain scalars can be null, bool or number.
fn resolve_scalar(text: &str, style: ScalarStyle, force_string: bool) -> NodeValue {
    if style != ScalarStyle::Plain || force_string {
        return NodeValue::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => NodeValue::Null,
        "true" | "True" | "TRUE" => NodeValue::Bool(true),
        "false" | "False" | "FALSE" => NodeValue::Bool(false),
        _ if is_yaml_number(text) => NodeValue::Number(text.to_string()),
        _ => NodeValue::String(text.to_string()),
    }
}

fn is_yaml_number(t: &str) -> bool {
    let b = t.as_bytes();
    if let Some(hex) = t.strip_prefix("0x") {
        return !hex.is_empty() && hex.bytes().all(|c| c.is_ascii_hexdigit());
    }
    if let Some(oct) = t.strip_prefix("0o") {
        return !oct.is_empty() && oct.bytes().all(|c| (b'0'..=b'7').contains(&c));
    }
    if matches!(t, ".inf" | ".Inf" | ".INF" | "-.inf" | "+.inf" | ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - s;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let s = parse_stream(text);
        assert!(s.error.is_none(), "{:?}", s.error);
        assert_eq!(s.documents.len(), 1);
        s.documents.into_iter().next().unwrap()
    }

    #[test]
    fn positions_are_one_based_line_and_column() {
        let n = one("title: x\ndetection:\n  sel:\n    A: 1\n");
        let det = n.get("detection").unwrap();
        let e = &det.as_map().unwrap()[0];
        assert_eq!(e.key, "sel");
        assert_eq!(e.key_pos, Pos::new(3, 3));
        let a = &e.value.as_map().unwrap()[0];
        assert_eq!(a.value.pos, Pos::new(4, 8));
        assert_eq!(a.value.value, NodeValue::Number("1".into()));
    }

    #[test]
    fn scalars_resolve_by_core_schema() {
        let n = one("a: ~\nb: true\nc: '12'\nd: 12\ne: 1.5e3\nf: 0x1F\ng: yes\nh: !!str 7\ni:\n");
        let v = |k: &str| n.get(k).unwrap().value.clone();
        assert_eq!(v("a"), NodeValue::Null);
        assert_eq!(v("b"), NodeValue::Bool(true));
        assert_eq!(v("c"), NodeValue::String("12".into()));
        assert_eq!(v("d"), NodeValue::Number("12".into()));
        assert_eq!(v("e"), NodeValue::Number("1.5e3".into()));
        assert_eq!(v("f"), NodeValue::Number("0x1F".into()));
        assert_eq!(v("g"), NodeValue::String("yes".into()));
        assert_eq!(v("h"), NodeValue::String("7".into()));
        assert_eq!(v("i"), NodeValue::Null);
    }

    #[test]
    fn duplicate_keys_are_an_error_with_position() {
        let s = parse_stream("a: 1\nb: 2\na: 3\n");
        let e = s.error.unwrap();
        assert_eq!(e.code, "duplicate-key");
        assert_eq!(e.pos, Some(Pos::new(3, 1)));
        // Past the size where keys go into a set: a repeat of an early key and of a late one.
        let many: String = (0..40).map(|i| format!("k{i}: {i}\n")).collect();
        assert!(parse_stream(&many).error.is_none());
        for (again, line) in [("k3", 41), ("k39", 41), ("k20", 41)] {
            let e = parse_stream(&format!("{many}{again}: x\n")).error.unwrap();
            assert_eq!((e.code, e.pos), ("duplicate-key", Some(Pos::new(line, 1))), "{again}");
        }
        let e = parse_stream(&format!("{}k18: x\n", &many[..many.find("k20").unwrap()])).error.unwrap();
        assert_eq!((e.code, e.pos), ("duplicate-key", Some(Pos::new(21, 1))));
    }

    #[test]
    fn multi_document_streams() {
        let s = parse_stream("a: 1\n---\nb: 2\n---\nc: 3\n");
        assert!(s.error.is_none());
        assert_eq!(s.documents.len(), 3);
        assert!(s.documents[2].get("c").is_some());
    }

    #[test]
    fn syntax_error_is_reported_not_panicked() {
        let s = parse_stream("a: [1, 2\nb: {");
        assert_eq!(s.error.unwrap().code, "yaml-syntax");
        let s = parse_stream("a: 'unterminated\n");
        assert!(s.error.is_some());
    }

    #[test]
    fn aliases_expand_and_alias_bombs_stop() {
        let n = one("a: &x [1, 2]\nb: *x\n");
        assert_eq!(n.get("b").unwrap().as_seq_len(), 2);
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let t = std::time::Instant::now();
        let s = parse_stream(&bomb);
        assert_eq!(s.error.unwrap().code, "yaml-too-large");
        assert!(t.elapsed().as_secs() < 5);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_stream(&deep).error.unwrap();
        assert!(e.code == "yaml-too-deep" || e.message.contains("recursion limit"), "{e:?}");
        let mut block = String::new();
        for i in 0..1_000 {
            block.push_str(&" ".repeat(i));
            block.push_str("k:\n");
        }
        let e = parse_stream(&block).error.unwrap();
        assert_eq!(e.code, "yaml-too-deep", "{e:?}");
    }

    #[test]
    fn oversized_input_is_refused_quickly() {
        let big = "a".repeat(5 * 1024 * 1024);
        let s = parse_stream(&big);
        assert_eq!(s.error.unwrap().code, "input-too-large");
    }

    impl Node {
        fn as_seq_len(&self) -> usize {
            match &self.value {
                NodeValue::Seq(v) => v.len(),
                _ => 0,
            }
        }
    }
}
