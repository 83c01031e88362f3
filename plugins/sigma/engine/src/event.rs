//! The in-memory event model shared by the loaders (EVTX, JSON) and the evaluator.
//!
//! Field names are interned once per corpus ([`FieldTable`]) so that compiled rules look fields
//! up by integer key, and every value keeps a lowercased copy so that Sigma's default
//! case-insensitive comparisons never lowercase in the hot loop.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// An interned field name. Keys are only meaningful with the [`FieldTable`] that issued them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldKey(pub u32);

/// Maps field names to [`FieldKey`]s and back.
#[derive(Clone, Debug, Default)]
pub struct FieldTable {
    names: Vec<Box<str>>,
    /// foldhash rather than std's SipHash: interning runs once per value while events load.
    index: HashMap<Box<str>, FieldKey, foldhash::fast::RandomState>,
}

impl FieldTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> FieldKey {
        if let Some(key) = self.index.get(name) {
            return *key;
        }
        let key = FieldKey(self.names.len() as u32);
        self.names.push(name.into());
        self.index.insert(name.into(), key);
        key
    }

    /// The key of `name` if any event or rule has used it.
    pub fn get(&self, name: &str) -> Option<FieldKey> {
        self.index.get(name).copied()
    }

    pub fn name(&self, key: FieldKey) -> &str {
        &self.names[key.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Forgets the names interned after the first `len` (a loader that gave up on a record
    /// puts the table back as it was before it).
    pub fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len.min(self.names.len())..) {
            self.index.remove(&name);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// All names in key order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }
}

/// What JSON type a value had in the source event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// JSON null, or an empty XML element (`<Data Name="X"/>`).
    Null,
    String,
    Number,
    Bool,
}

/// One scalar value of an event field.
///
/// Sigma treats every value as a string ("EventID: 4688" matches both `4688` and `"4688"`), so
/// every value carries its text form; numbers are written in decimal, booleans as
/// `true`/`false`, null as the empty string.
///
/// A value is cheap to clone (its text is shared): loaders hand out one value for text that
/// repeats (a corpus has a tenth as many distinct values as values).
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    kind: ValueKind,
    /// The text, followed by its lowercase form when that differs (one allocation per value,
    /// none for the lowercase when the text is lowercase already, as most values are).
    buf: Arc<str>,
    /// Where the text ends in `buf` (its length when there is no distinct lowercase).
    split: usize,
}

impl Value {
    pub fn null() -> Self {
        static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
        Value { kind: ValueKind::Null, buf: EMPTY.clone(), split: 0 }
    }

    pub fn string(text: &str) -> Self {
        Self::with_kind(ValueKind::String, text)
    }

    pub fn number(text: &str) -> Self {
        Self::with_kind(ValueKind::Number, text)
    }

    pub fn int(n: i64) -> Self {
        Self::with_kind(ValueKind::Number, &n.to_string())
    }

    pub fn bool(b: bool) -> Self {
        Self::with_kind(ValueKind::Bool, if b { "true" } else { "false" })
    }

    fn with_kind(kind: ValueKind, text: &str) -> Self {
        // ASCII text (nearly every value) is checked in place: no lowercase copy to throw away.
        if text.is_ascii() {
            if !text.bytes().any(|b| b.is_ascii_uppercase()) {
                return Self::single(kind, text);
            }
            return Self::joined(kind, text, |buf| {
                let start = buf.len();
                buf.push_str(text);
                buf[start..].make_ascii_lowercase();
            });
        }
        let lowered = text.to_lowercase();
        if lowered == text {
            return Self::single(kind, text);
        }
        Self::joined(kind, text, |buf| buf.push_str(&lowered))
    }

    fn single(kind: ValueKind, text: &str) -> Self {
        Value { kind, buf: text.into(), split: text.len() }
    }

    /// `text` followed by what `lower` writes after it, in one allocation (the two are put
    /// together in a scratch buffer first).
    fn joined(kind: ValueKind, text: &str, lower: impl FnOnce(&mut String)) -> Self {
        thread_local! {
            static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            buf.push_str(text);
            lower(buf);
            Value { kind, buf: Arc::from(buf.as_str()), split: text.len() }
        })
    }

    /// Rebuilds a value from the parts [`Value::kind`], [`Value::text`] and
    /// [`Value::distinct_lower`] returned (the corpus cache stores them so that loading never
    /// lowercases). `lower` must be `text.to_lowercase()`, or `None` when that equals `text`.
    pub fn from_parts(kind: ValueKind, text: &str, lower: Option<&str>) -> Self {
        debug_assert!(lower.is_none_or(|l| *l == *text.to_lowercase() && l != text));
        match lower {
            None => Self::single(kind, text),
            Some(lower) => Self::joined(kind, text, |buf| buf.push_str(lower)),
        }
    }

    /// The lowercase text when it differs from [`Value::text`].
    pub fn distinct_lower(&self) -> Option<&str> {
        let split = self.split;
        (split < self.buf.len()).then(|| &self.buf[split..])
    }

    pub fn kind(&self) -> ValueKind {
        self.kind
    }

    pub fn is_null(&self) -> bool {
        self.kind == ValueKind::Null
    }

    /// The value as text, exactly as in the source.
    pub fn text(&self) -> &str {
        &self.buf[..self.split]
    }

    /// The value as lowercase text.
    pub fn lower(&self) -> &str {
        let split = self.split;
        if split < self.buf.len() { &self.buf[split..] } else { &self.buf }
    }

    /// The value as a number, for `gt`/`lt`-style comparisons: decimal integers and floats, and
    /// `0x` hexadecimal integers.
    pub fn as_f64(&self) -> Option<f64> {
        parse_number(self.text())
    }
}

/// Parses decimal integers, floats and `0x`-prefixed hexadecimal integers.
pub fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok().map(|n| n as f64);
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Which file of a corpus an event came from (index into the corpus' file list).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u32);

/// One event: its identity and its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub file: FileId,
    /// `System.EventRecordID` (not the EVTX record header's id, which differs in most files).
    pub record_id: u64,
    /// `System.TimeCreated.SystemTime` as microseconds since the Unix epoch, when present.
    pub timestamp_us: Option<i64>,
    /// Sorted by key; a key repeats for multi-valued fields.
    fields: Vec<(FieldKey, Value)>,
}

impl Event {
    /// Builds an event; `fields` may come in any order.
    pub fn new(file: FileId, record_id: u64, timestamp_us: Option<i64>, mut fields: Vec<(FieldKey, Value)>) -> Self {
        // Stable sort keeps the source order of a multi-valued field's elements.
        fields.sort_by_key(|(k, _)| *k);
        // Loaders build fields with room to spare; a corpus keeps tens of thousands of events,
        // so each keeps only what it holds (an allocator's shrink in place would not give the
        // rest back: 15 MB of the corpus' resident memory).
        if fields.capacity() > fields.len() {
            let mut exact = Vec::with_capacity(fields.len());
            exact.append(&mut fields);
            fields = exact;
        }
        Event { file, record_id, timestamp_us, fields }
    }

    /// Every value stored under `key` (empty when the field is absent).
    pub fn values(&self, key: FieldKey) -> impl Iterator<Item = &Value> {
        let start = self.fields.partition_point(|(k, _)| *k < key);
        self.fields[start..].iter().take_while(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether the event has the field at all (even with a null value).
    pub fn has(&self, key: FieldKey) -> bool {
        self.values(key).next().is_some()
    }

    /// Takes the event apart: file, record id, timestamp and its fields sorted by key (used to
    /// re-key events when per-file field tables are merged into one corpus table).
    pub fn into_parts(self) -> (FileId, u64, Option<i64>, Vec<(FieldKey, Value)>) {
        (self.file, self.record_id, self.timestamp_us, self.fields)
    }

    /// All fields, sorted by key (used by keyword searches, which look at every value).
    pub fn fields(&self) -> &[(FieldKey, Value)] {
        &self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_finds_multi_valued_fields_in_order() {
        let mut t = FieldTable::new();
        let a = t.intern("A");
        let b = t.intern("B");
        let e = Event::new(FileId(0), 1, None, vec![(b, Value::string("x")), (a, Value::int(5)), (b, Value::string("Y"))]);
        let bs: Vec<_> = e.values(b).map(|v| v.text()).collect();
        assert_eq!(bs, ["x", "Y"]);
        assert_eq!(e.values(a).next().unwrap().text(), "5");
        assert!(!e.has(t.intern("C")));
        assert_eq!(e.values(b).nth(1).unwrap().lower(), "y");
    }

    #[test]
    fn lowercase_copies_only_when_they_differ() {
        for (text, lower) in [("abc 1", None), ("AbC", Some("abc")), ("ÄÖ x", Some("äö x")), ("äö", None), ("İ", Some("i\u{307}"))] {
            let v = Value::string(text);
            assert_eq!(v.distinct_lower(), lower, "{text}");
            assert_eq!(v.lower(), text.to_lowercase(), "{text}");
            assert_eq!(v.text(), text);
            // The cache's parts give the same value back.
            assert_eq!(Value::from_parts(v.kind(), v.text(), v.distinct_lower()), v, "{text}");
        }
        assert_eq!((Value::null().text(), Value::null().lower(), Value::null().distinct_lower()), ("", "", None));
    }

    #[test]
    fn numbers_parse_decimal_float_and_hex() {
        assert_eq!(parse_number("4688"), Some(4688.0));
        assert_eq!(parse_number("0x1F"), Some(31.0));
        assert_eq!(parse_number("1.5"), Some(1.5));
        assert_eq!(parse_number("abc"), None);
        assert_eq!(parse_number("NaN"), None);
    }
}
