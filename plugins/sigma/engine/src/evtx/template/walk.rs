//! A record's values put through its plan: the fields, as the JSON path would give them.

use std::collections::HashMap;
use std::fmt::Write as _;

use evtx::binxml::value_variant::BinXmlValue;

use crate::corpus::Buckets;
use crate::event::{FieldKey, FieldTable, Value, ValueKind};
use crate::json_events::stream::{push_field, rejected_after_system};

use super::plan::*;
use super::render::*;
use super::values::*;

/// The values made for one file, by kind and text, handed out again where the text repeats:
/// host, provider, user and process names, GUIDs, small numbers (the corpus has 703,000
/// values, 71,000 of them different). Sharing them saves an allocation and a lowercase check
/// each, and the memory.
#[derive(Default)]
pub(super) struct Values {
    pub(super) by_kind: [HashMap<Box<str>, Value, foldhash::fast::RandomState>; 3],
}

impl Values {
    /// Longer text is rarely repeated; past this many values, new ones are no longer kept.
    const MAX_LEN: usize = 96;
    const MAX_KEPT: usize = 1 << 16;

    pub(super) fn get(&mut self, kind: ValueKind, text: &str) -> Value {
        let slot = match kind {
            ValueKind::String => 0,
            ValueKind::Number => 1,
            ValueKind::Bool => 2,
            ValueKind::Null => return Value::null(),
        };
        let make = || {
            if kind == ValueKind::Number {
                Value::number(text)
            } else if kind == ValueKind::Bool {
                Value::bool(text == "true")
            } else {
                Value::string(text)
            }
        };
        if text.len() > Self::MAX_LEN {
            return make();
        }
        let map = &mut self.by_kind[slot];
        if let Some(value) = map.get(text) {
            return value.clone();
        }
        let value = make();
        if map.len() < Self::MAX_KEPT {
            map.insert(text.into(), value.clone());
        }
        value
    }
}

/// An element of a record: a plan's element with the values of its instance.
#[derive(Copy, Clone)]
pub(super) struct Node<'v, 'a> {
    pub(super) element: &'v Element,
    pub(super) values: &'v [Slot<'a>],
}

/// An element's content with a record's values in place.
pub(super) enum Content<'v, 'a> {
    Empty,
    Literal(&'v str),
    Value(&'v Slot<'a>),
}

impl<'v, 'a> Node<'v, 'a> {
    pub(super) fn name(&self) -> &'v str {
        &self.element.name
    }

    pub(super) fn is_left_out(&self, element: &Element) -> bool {
        element.dependency.and_then(|d| self.values.get(usize::from(d))).is_some_and(|v| matches!(v, Slot::Value(BinXmlValue::NullType)))
    }

    pub(super) fn piece(&self, piece: &'v Piece) -> Content<'v, 'a> {
        match piece {
            Piece::Literal(text) if text.is_empty() => Content::Empty,
            Piece::Literal(text) => Content::Literal(text),
            Piece::Hole(index) => self.hole(*index),
        }
    }

    /// A hole past the values gives nothing, as in the crate.
    pub(super) fn hole(&self, index: u16) -> Content<'v, 'a> {
        match self.values.get(usize::from(index)) {
            Some(value) if !is_empty(value) => Content::Value(value),
            _ => Content::Empty,
        }
    }

    /// The child elements in this record: left-out ones skipped, holes holding a fragment
    /// replaced by the fragment's element.
    pub(super) fn elements(self) -> impl Iterator<Item = Node<'v, 'a>> {
        self.element.children.iter().filter_map(move |child| match child {
            Child::Element(e) if self.is_left_out(e) => None,
            Child::Element(e) => Some(Node { element: e, values: self.values }),
            Child::Hole(index) => match self.hole(*index) {
                Content::Value(Slot::Fragment(instance)) => Some(Node { element: &instance.plan.root, values: &instance.values }),
                _ => None,
            },
        })
    }

    /// The element's text and whether it has child elements; `None` when it has both, or two
    /// pieces of text.
    pub(super) fn layout(&self) -> Option<(Content<'v, 'a>, bool)> {
        let mut text = match &self.element.text {
            Some(t) if !t.is_empty() => Content::Literal(t),
            _ => Content::Empty,
        };
        let mut elements = false;
        for child in &self.element.children {
            match child {
                Child::Element(e) => elements |= !self.is_left_out(e),
                Child::Hole(index) => match self.hole(*index) {
                    Content::Value(Slot::Fragment(_)) => elements = true,
                    Content::Empty => {}
                    value if matches!(text, Content::Empty) => text = value,
                    _ => return None,
                },
            }
        }
        (!elements || matches!(text, Content::Empty)).then_some((text, elements))
    }

    /// Whether the child elements' names are all different in this record (a subset of
    /// different names is, so the plan's answer holds unless fragments add elements).
    pub(super) fn names_unique(self) -> bool {
        if !self.element.has_holes {
            return self.element.names_unique;
        }
        let names: Vec<&str> = self.elements().map(|e| e.name()).collect();
        unique(names.into_iter()).is_some()
    }
}

/// What a record is flattened with: the field table, the fields so far, and scratch text.
pub(super) struct Walk<'t> {
    pub(super) table: &'t mut FieldTable,
    pub(super) fields: Vec<(FieldKey, Value)>,
    pub(super) text: &'t mut String,
    pub(super) values: &'t mut Values,
    pub(super) route: Option<&'t Buckets>,
}

/// How a record's walk ended.
pub(super) enum Walked {
    Event,
    /// Left out once `System` was read: its bucket is one the route does not accept.
    Skipped,
}

impl Walk<'_> {
    /// The field value of content: null when empty, numbers and booleans typed, everything
    /// else text as the crate renders it.
    pub(super) fn value(&mut self, content: &Content) -> Option<Value> {
        let value = match content {
            Content::Empty => return Some(Value::null()),
            Content::Literal(text) => return Some(self.values.get(ValueKind::String, text)),
            Content::Value(Slot::Sid(sid)) => {
                self.text.clear();
                write_sid(self.text, sid);
                return Some(self.values.get(ValueKind::String, self.text));
            }
            Content::Value(Slot::Fragment(_) | Slot::Strings(_)) => return None,
            Content::Value(Slot::Value(value)) => value,
        };
        let text = &mut *self.text;
        text.clear();
        let kind = match value {
            BinXmlValue::Int8Type(n) => write_integer(text, *n),
            BinXmlValue::UInt8Type(n) => write_integer(text, *n),
            BinXmlValue::Int16Type(n) => write_integer(text, *n),
            BinXmlValue::UInt16Type(n) => write_integer(text, *n),
            BinXmlValue::Int32Type(n) => write_integer(text, *n),
            BinXmlValue::UInt32Type(n) => write_integer(text, *n),
            BinXmlValue::Int64Type(n) => write_integer(text, *n),
            BinXmlValue::UInt64Type(n) => write_integer(text, *n),
            BinXmlValue::BoolType(b) => {
                text.push_str(if *b { "true" } else { "false" });
                ValueKind::Bool
            }
            BinXmlValue::StringType(s) => {
                write_utf16(text, s.as_bytes());
                ValueKind::String
            }
            BinXmlValue::GuidType(guid) => {
                write_guid(text, guid);
                ValueKind::String
            }
            BinXmlValue::HexInt32Type(n) => {
                write_hex(text, u64::from(*n));
                ValueKind::String
            }
            BinXmlValue::HexInt64Type(n) => {
                write_hex(text, *n);
                ValueKind::String
            }
            BinXmlValue::BinaryType(bytes) => {
                write_binary(text, bytes);
                ValueKind::String
            }
            // Times are nearly all different: not worth remembering.
            BinXmlValue::FileTimeType(time) => {
                write_filetime(text, time.0);
                return Some(Value::string(text));
            }
            // The rest (SYSTEMTIMEs) as the crate displays them.
            other => {
                let _ = write!(text, "{other}");
                return Some(Value::string(text));
            }
        };
        Some(self.values.get(kind, text))
    }

    pub(super) fn push(&mut self, name: &str, value: Value) {
        push_field(self.table, &mut self.fields, name, value);
    }

    /// The parts of `<Event>`; `None` for a record the JSON path must read, among them one
    /// without a `System` that has elements (the JSON path's error to report).
    pub(super) fn event(&mut self, root: Node<'_, '_>) -> Option<Walked> {
        if root.name() != "Event" || !matches!(root.layout()?, (Content::Empty, _)) || !root.names_unique() {
            return None;
        }
        let mut system = false;
        for part in root.elements() {
            if part.name() == "System" {
                self.system(part)?;
                system = true;
                if self.route.is_some_and(|route| rejected_after_system(route, self.table, &self.fields)) {
                    return Some(Walked::Skipped);
                }
            } else {
                self.data(part, true)?;
            }
        }
        system.then_some(Walked::Event)
    }

    /// `System`: each element's attributes as `Tag_Attribute`, its text as `Tag`.
    pub(super) fn system(&mut self, system: Node<'_, '_>) -> Option<()> {
        let (text, elements) = system.layout()?;
        if !system.element.attributes.is_empty() || !matches!(text, Content::Empty) || !elements || !system.names_unique() {
            return None;
        }
        for element in system.elements() {
            let (text, elements) = element.layout()?;
            if elements {
                return None;
            }
            let mut attributes = 0;
            for attribute in &element.element.attributes {
                let content = element.piece(&attribute.value);
                if matches!(content, Content::Empty) {
                    continue;
                }
                attributes += 1;
                let value = self.value(&content)?;
                self.push(&attribute.field, value);
            }
            if attributes == 0 || !matches!(text, Content::Empty) {
                let value = self.value(&text)?;
                self.push(element.name(), value);
            }
        }
        Some(())
    }

    /// Any other part of the event: leaf elements by name, `EventData`/`UserData`'s named
    /// `Data` by their name. `top`: `node` is a part of `Event` itself, where
    /// `"EventData": null` gives nothing.
    pub(super) fn data(&mut self, node: Node<'_, '_>, top: bool) -> Option<()> {
        if node.element.has_name_attribute {
            return None;
        }
        let (text, elements) = node.layout()?;
        if !elements {
            let has_attributes = node.element.attributes.iter().any(|a| !matches!(node.piece(&a.value), Content::Empty));
            match text {
                // `{"#attributes": …}` without text: nothing to flatten.
                Content::Empty if has_attributes => {}
                Content::Empty if top && matches!(node.name(), "EventData" | "UserData") => {}
                text => {
                    let value = self.value(&text)?;
                    self.push(node.name(), value);
                }
            }
            return Some(());
        }
        // Outside `EventData`/`UserData`, or where fragments bring children only a record knows:
        // no `Data` (whose form would depend on them), children by name.
        let element = node.element;
        if !matches!(node.name(), "EventData" | "UserData") || element.has_holes {
            if !node.names_unique() {
                return None;
            }
            for child in node.elements() {
                if child.name() == "Data" {
                    return None;
                }
                self.data(child, false)?;
            }
            return Some(());
        }
        if element.data_form == DataForm::Mixed || !element.data_keys_unique {
            return None;
        }
        let mut positional_done = false;
        for child in node.elements() {
            if child.name() != "Data" {
                self.data(child, false)?;
                continue;
            }
            match element.data_form {
                DataForm::Named => {
                    let value = self.data_value(child)?;
                    self.push(literal_name(child.element)?, value);
                }
                // All of them where the first one is.
                _ if positional_done => {}
                _ => {
                    positional_done = true;
                    for data in node.elements().filter(|e| e.name() == "Data") {
                        // An array repeats its `Data` element, once per item.
                        if let Some((Content::Value(Slot::Strings(items)), false)) = data.layout() {
                            for item in items {
                                self.text.clear();
                                write_utf16(self.text, item);
                                self.push("Data", Value::string(self.text));
                            }
                            continue;
                        }
                        let value = self.data_value(data)?;
                        self.push("Data", value);
                    }
                }
            }
        }
        Some(())
    }

    /// A `Data` element's value: the empty string when it has none.
    pub(super) fn data_value(&mut self, data: Node<'_, '_>) -> Option<Value> {
        match data.layout()? {
            (_, true) => None,
            (Content::Empty, false) => Some(Value::string("")),
            (text, false) => self.value(&text),
        }
    }
}

/// `Some` when no name repeats (the crate would number the repeats).
pub(super) fn unique<'n>(names: impl Iterator<Item = &'n str>) -> Option<()> {
    // Elements have a few dozen children at most: the first 32 names stay on the stack.
    let mut first = [""; 32];
    let mut more: Vec<&str> = Vec::new();
    for (i, name) in names.enumerate() {
        if first[..i.min(32)].contains(&name) || more.contains(&name) {
            return None;
        }
        if i < 32 {
            first[i] = name;
        } else {
            more.push(name);
        }
    }
    Some(())
}
