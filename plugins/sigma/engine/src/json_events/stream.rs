//! The fast path of [`super::flatten_event`] for EVTX records: the evtx crate's JSON bytes are
//! flattened while they are read (serde visitors), without building a `serde_json::Value` tree
//! first, which cost more than rendering the record itself.
//!
//! The result is the Value path's, field for field and in the same order: the same rules
//! (`System` elements and attributes, `EventData` by name, named `<Data>` elements, `null`
//! parts) written as visitors. Where streaming could differ from the tree, this path gives up
//! and the caller runs the Value path instead: a repeated key in an object (the tree keeps the
//! last value at the first key's place; the evtx crate never writes one, it numbers repeats),
//! an element's `#text` before its `#attributes` (the attribute `Name` renames that text), or
//! a document that is not an `{"Event": {…, "System": {…}, …}}` object. The field table is put
//! back as it was when the path gives up or skips a record.
//!
//! It can also stop early: once the `System` part is read, a record whose (Channel, EventID)
//! no rule reads ([`Buckets`]) is skipped without reading its event data.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::FlatEvent;
use crate::corpus::Buckets;
use crate::event::{FieldKey, FieldTable, Value};

/// What the fast path made of one record.
#[derive(Debug)]
pub enum Streamed {
    Event(FlatEvent),
    /// Its (Channel, EventID) bucket is not one `route` accepts; nothing was kept.
    Skipped,
    /// The fast path cannot vouch for this record: flatten it through the Value path.
    GiveUp,
}

/// Flattens one rendered record, skipping it when `route` rejects its bucket. A record without
/// a numeric `EventRecordID` is never skipped (its invented id depends on the events around it).
pub fn flatten_record(json: &[u8], table: &mut FieldTable, route: Option<&Buckets>) -> Streamed {
    // The plain case first: a look at `System` alone, without building any value.
    if let Some(route) = route
        && let Some(b) = super::route::system_bucket(json)
        && b.has_record_id
        && !route.accepts(&b.channel, &b.event_id)
    {
        return Streamed::Skipped;
    }
    let names_before = table.len();
    let mut sink = Sink { table, fields: Vec::with_capacity(32), route, stop: None };
    let mut de = serde_json::Deserializer::from_slice(json);
    let read = Root { sink: &mut sink }.deserialize(&mut de).and_then(|()| de.end());
    let Sink { table, fields, stop, .. } = sink;
    match (read, stop) {
        (Ok(()), None) => {}
        (_, Some(Stop::Skip)) => {
            table.truncate(names_before);
            return Streamed::Skipped;
        }
        _ => {
            table.truncate(names_before);
            return Streamed::GiveUp;
        }
    }
    let flat = finish_event(table, fields);
    if route.is_some_and(|r| !accepted(r, table, &flat.fields, flat.record_id.is_some())) {
        table.truncate(names_before);
        return Streamed::Skipped;
    }
    Streamed::Event(flat)
}

/// The event of flattened `fields`: its record id and timestamp are those of its first
/// `EventRecordID` and `TimeCreated_SystemTime` fields.
pub(crate) fn finish_event(table: &FieldTable, fields: Vec<(FieldKey, Value)>) -> FlatEvent {
    let first = |name: &str| first_value(table, &fields, name);
    let record_id = first("EventRecordID").and_then(|v| v.text().trim().parse::<u64>().ok());
    let timestamp_us = first("TimeCreated_SystemTime").and_then(|v| super::parse_timestamp_us(v.text()));
    FlatEvent { record_id, timestamp_us, fields }
}

/// Adds one field; Sigma removes spaces from Windows field names ("Error Code" -> "ErrorCode").
pub(crate) fn push_field(table: &mut FieldTable, fields: &mut Vec<(FieldKey, Value)>, name: &str, value: Value) {
    let key = if name.contains(' ') { table.intern(&name.replace(' ', "")) } else { table.intern(name) };
    fields.push((key, value));
}

/// Whether `route` keeps an event with these fields: its bucket is the corpus index's
/// (lowercased first Channel value, trimmed first EventID value; "" when absent).
pub(crate) fn accepted(route: &Buckets, table: &FieldTable, fields: &[(FieldKey, Value)], has_record_id: bool) -> bool {
    let first = |name: &str| first_value(table, fields, name);
    let channel = first("Channel").map_or("", Value::lower);
    let event_id = first("EventID").map_or("", |v| v.text().trim());
    !has_record_id || route.accepts(channel, event_id)
}

/// Why reading stopped before the end.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Stop {
    Skip,
    GiveUp,
}

struct Sink<'t, 'r> {
    table: &'t mut FieldTable,
    fields: Vec<(FieldKey, Value)>,
    route: Option<&'r Buckets>,
    stop: Option<Stop>,
}

impl Sink<'_, '_> {
    fn push(&mut self, name: &str, value: Value) {
        push_field(self.table, &mut self.fields, name, value);
    }

    fn give_up<E: de::Error>(&mut self, why: &str) -> E {
        self.stop = Some(Stop::GiveUp);
        E::custom(why)
    }

    /// After `System`: stops with [`Stop::Skip`] when its Channel, EventID and EventRecordID are
    /// all there (later parts cannot change the bucket: the first value of a field wins) and
    /// the route rejects the bucket.
    fn route_after_system<E: de::Error>(&mut self) -> Result<(), E> {
        if self.route.is_some_and(|route| rejected_after_system(route, self.table, &self.fields)) {
            self.stop = Some(Stop::Skip);
            return Err(E::custom("skipped"));
        }
        Ok(())
    }
}

/// The first value of field `name` among `fields`.
fn first_value<'f>(table: &FieldTable, fields: &'f [(FieldKey, Value)], name: &str) -> Option<&'f Value> {
    let key = table.get(name)?;
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Whether `route` leaves a record out once its `System` part is read (`fields` so far): its
/// Channel, EventID and numeric EventRecordID are all there (later parts cannot change the
/// bucket: the first value of a field wins) and the bucket is not one the route accepts.
pub(crate) fn rejected_after_system(route: &Buckets, table: &FieldTable, fields: &[(FieldKey, Value)]) -> bool {
    let first = |name: &str| first_value(table, fields, name);
    let (Some(channel), Some(event_id), Some(record)) = (first("Channel"), first("EventID"), first("EventRecordID")) else { return false };
    record.text().trim().parse::<u64>().is_ok() && !route.accepts(channel.lower(), event_id.text().trim())
}

/// An object key, borrowed from the input when it has no escapes.
#[derive(PartialEq, Eq)]
pub(super) struct Key<'de>(pub(super) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The next key of an object, or a give-up when the object already had it.
fn next_key<'de, A: MapAccess<'de>>(map: &mut A, seen: &mut Vec<Cow<'de, str>>, sink: &mut Sink) -> Result<Option<Cow<'de, str>>, A::Error> {
    let Some(Key(key)) = map.next_key::<Key<'de>>()? else { return Ok(None) };
    if seen.contains(&key) {
        return Err(sink.give_up("repeated key"));
    }
    seen.push(key.clone());
    Ok(Some(key))
}

/// The whole document: `{"Event": {…}}` and nothing else.
struct Root<'s, 't, 'r> {
    sink: &'s mut Sink<'t, 'r>,
}

impl<'de> DeserializeSeed<'de> for Root<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Root<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an {\"Event\": …} object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match map.next_key::<Key<'de>>()? {
            Some(Key(k)) if k == "Event" => map.next_value_seed(Parts { sink: &mut *self.sink })?,
            _ => return Err(self.sink.give_up("not an Event document")),
        }
        match map.next_key::<Key<'de>>()? {
            None => Ok(()),
            Some(_) => Err(self.sink.give_up("more than the Event part")),
        }
    }
}

/// The `Event` object: `System` first checked to be an object, then every part in order.
struct Parts<'s, 't, 'r> {
    sink: &'s mut Sink<'t, 'r>,
}

impl<'de> DeserializeSeed<'de> for Parts<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Parts<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the Event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let sink = self.sink;
        let mut seen = Vec::new();
        let mut system = false;
        while let Some(key) = next_key(&mut map, &mut seen, sink)? {
            match &*key {
                "System" => {
                    system = map.next_value_seed(Node { sink: &mut *sink, role: Role::System, name: "System" })?;
                    if !system {
                        return Err(sink.give_up("System is not an object"));
                    }
                    sink.route_after_system()?;
                }
                // `xmlns` and friends of the <Event> element say nothing about the event.
                "#attributes" | "Event_attributes" => {
                    map.next_value::<IgnoredAny>()?;
                }
                name => {
                    map.next_value_seed(Node { sink: &mut *sink, role: Role::Data, name })?;
                }
            }
        }
        if !system {
            return Err(sink.give_up("no System part"));
        }
        Ok(())
    }
}

/// How a value is flattened (the Value path's function of the same name).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Role {
    /// The `System` object: element text by tag, attributes as `Tag_Attribute`.
    System,
    /// One element of `System` under its tag.
    SystemElement,
    /// An `#attributes` object: each attribute as `Tag_Attribute`; anything else is ignored.
    Attributes,
    /// A scalar or a list of scalars (objects inside go to `Data`).
    Scalars,
    /// `EventData`, `UserData` and anything else: leaf elements by their own name.
    Data,
}

/// One value to flatten under `name`. Gives whether it was an object.
struct Node<'s, 't, 'r, 'n> {
    sink: &'s mut Sink<'t, 'r>,
    role: Role,
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, '_, '_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl Node<'_, '_, '_, '_> {
    /// A scalar: ignored in `System` (not an object) and in attribute objects, else a field.
    fn scalar<E>(self, value: impl FnOnce() -> Value) -> Result<bool, E> {
        if !matches!(self.role, Role::System | Role::Attributes) {
            self.sink.push(self.name, value());
        }
        Ok(false)
    }

    /// An integer, written as `serde_json::Number` writes it (plain decimal).
    fn integer<E>(self, n: impl itoa::Integer) -> Result<bool, E> {
        self.scalar(|| Value::number(itoa::Buffer::new().format(n)))
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, '_, '_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<bool, E> {
        self.scalar(|| Value::bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<bool, E> {
        self.integer(n)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<bool, E> {
        self.integer(n)
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<bool, E> {
        match serde_json::Number::from_f64(n) {
            Some(n) => self.scalar(|| Value::number(&n.to_string())),
            None => Err(self.sink.give_up("a number JSON cannot hold")),
        }
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
        self.scalar(|| Value::string(s))
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        // `"EventData": null` is an event without data, not a field called EventData.
        if self.role == Role::Data && (self.name == "EventData" || self.name == "UserData") {
            return Ok(false);
        }
        self.scalar(Value::null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let role = match self.role {
            Role::System | Role::Attributes => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(false);
            }
            Role::SystemElement | Role::Scalars => Role::Scalars,
            Role::Data => Role::Data,
        };
        while seq.next_element_seed(Node { sink: &mut *self.sink, role, name: self.name })?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let (sink, tag) = (self.sink, self.name);
        let mut seen = Vec::new();
        match self.role {
            Role::System => {
                while let Some(key) = next_key(&mut map, &mut seen, sink)? {
                    match key.strip_suffix("_attributes") {
                        Some(base) => map.next_value_seed(Node { sink: &mut *sink, role: Role::Attributes, name: base })?,
                        None => map.next_value_seed(Node { sink: &mut *sink, role: Role::SystemElement, name: &key })?,
                    };
                }
            }
            Role::SystemElement => {
                while let Some(key) = next_key(&mut map, &mut seen, sink)? {
                    match &*key {
                        "#attributes" => map.next_value_seed(Node { sink: &mut *sink, role: Role::Attributes, name: tag })?,
                        "#text" => map.next_value_seed(Node { sink: &mut *sink, role: Role::Scalars, name: tag })?,
                        child => map.next_value_seed(Node { sink: &mut *sink, role: Role::Scalars, name: &format!("{tag}_{child}") })?,
                    };
                }
            }
            Role::Attributes => {
                while let Some(key) = next_key(&mut map, &mut seen, sink)? {
                    map.next_value_seed(Node { sink: &mut *sink, role: Role::Scalars, name: &format!("{tag}_{key}") })?;
                }
            }
            Role::Scalars | Role::Data => {
                // `{"#attributes": {"Name": "X"}, "#text": "v"}`: a named <Data> element as some
                // converters write it.
                let mut named: Option<String> = None;
                let mut text = false;
                while let Some(key) = next_key(&mut map, &mut seen, sink)? {
                    match &*key {
                        "#text" => {
                            text = true;
                            map.next_value_seed(Node { sink: &mut *sink, role: Role::Data, name: named.as_deref().unwrap_or(tag) })?;
                        }
                        // Element attributes (xmlns, Name) are structure, not event content.
                        "#attributes" if text => return Err(sink.give_up("#attributes after #text")),
                        "#attributes" => named = map.next_value_seed(NameAttribute { sink: &mut *sink })?,
                        c if c.ends_with("_attributes") => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        child => {
                            map.next_value_seed(Node { sink: &mut *sink, role: Role::Data, name: child })?;
                        }
                    }
                }
                if let Some(name) = named.filter(|_| !text) {
                    sink.push(&name, Value::null());
                }
            }
        }
        Ok(true)
    }
}

/// The `Name` attribute of an `#attributes` object, when it is a string.
struct NameAttribute<'s, 't, 'r> {
    sink: &'s mut Sink<'t, 'r>,
}

impl<'de> DeserializeSeed<'de> for NameAttribute<'_, '_, '_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NameAttribute<'_, '_, '_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an attributes object")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<String>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut seen = Vec::new();
        let mut name = None;
        while let Some(key) = next_key(&mut map, &mut seen, self.sink)? {
            if key == "Name" {
                name = map.next_value::<serde_json::Value>()?.as_str().map(str::to_owned);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_events::flatten_event;

    /// A flattened event as (record id, timestamp, [(name, kind, text)] in field order).
    type Seen = (Option<u64>, Option<i64>, Vec<(String, String, String)>);

    fn seen(table: &FieldTable, flat: &FlatEvent) -> Seen {
        let fields = flat.fields.iter().map(|(k, v)| (table.name(*k).to_string(), format!("{:?}", v.kind()), v.text().to_string())).collect();
        (flat.record_id, flat.timestamp_us, fields)
    }

    /// Both paths over one document: the Value path's event, and the stream's (`None` when it
    /// gave up, which must leave the table as it was).
    fn both(json: &str) -> (Option<Seen>, Option<Seen>) {
        let mut table = FieldTable::new();
        let by_value = serde_json::from_str(json).ok().and_then(|v| flatten_event(&v, &mut table).ok()).map(|f| seen(&table, &f));
        let mut table = FieldTable::new();
        let streamed = match flatten_record(json.as_bytes(), &mut table, None) {
            Streamed::Event(f) => Some(seen(&table, &f)),
            Streamed::GiveUp => {
                assert!(table.is_empty(), "giving up puts the table back: {json}");
                None
            }
            Streamed::Skipped => panic!("no route, nothing skipped"),
        };
        (by_value, streamed)
    }

    #[test]
    fn streaming_gives_the_value_paths_fields_or_gives_up() {
        let same = [
            r##"{"Event":{"#attributes":{"xmlns":"x"},"System":{"Provider":{"#attributes":{"Name":"P","Guid":"{1}"}},"EventID":1,"Level":4,
               "TimeCreated":{"#attributes":{"SystemTime":"2019-03-19T23:34:25.123456Z"}},"EventRecordID":"42","Correlation":null,
               "Execution":{"#attributes":{"ProcessID":3544}},"Channel":"Microsoft-Windows-Sysmon/Operational","Flag":true,"Ratio":1.5,"Neg":-3,"Zero":0,"Max":18446744073709551615,"Min":-9223372036854775808,"Exp":1e3},
               "EventData":{"Image":"C:\\Windows\\cmd.exe","Error Code":"5","Empty":null,"List":["a",{"#text":"b"},3]}}}"##,
            r##"{"Event":{"System":{"Provider_attributes":{"Name":"SCM"},"EventID":{"#attributes":{"Qualifiers":16384},"#text":7045},"EventRecordID":7,"Channel":"System","Odd":{"Child":"c"}},
               "EventData":{"Data":["a",{"#text":"b"}],"Binary":"00FF"},"UserData":{"EventXML":{"#attributes":{"xmlns":"u"},"Param1":"x","Nested":{"Param2":"y"}}}}}"##,
            r##"{"Event":{"System":{"EventID":4688,"EventRecordID":1},"EventData":{"Data":[{"#attributes":{"Name":"NewProcessName"},"#text":"C:\\x.exe"},
               {"#attributes":{"Name":"Empty"}},{"#attributes":{"Other":"o"},"#text":"t"}],"X_attributes":{"a":1}}}}"##,
            r##"{"Event":{"System":{"EventID":1,"EventRecordID":2},"EventData":null,"UserData":null}}"##,
            r##"{"Event":{"System":{"EventID":1,"EventRecordID":2,"Esc\u0061ped":"\"q\""},"EventData":{"K\u0065y":"v"}}}"##,
        ];
        for json in same {
            let (by_value, streamed) = both(json);
            assert!(by_value.is_some(), "{json}");
            assert_eq!(streamed, by_value, "{json}");
        }
        let give_up = [
            // The tree keeps the last of a repeated key at the first one's place.
            r##"{"Event":{"System":{"EventID":1,"EventRecordID":2,"EventID":3}}}"##,
            // A name that comes after the text it names.
            r##"{"Event":{"System":{"EventID":1},"EventData":{"Data":[{"#text":"v","#attributes":{"Name":"N"}}]}}}"##,
            r##"{"System":{"EventID":1}}"##,
            r##"{"Event":{"System":{"EventID":1}},"Other":1}"##,
            r##"{"Event":{"System":5}}"##,
            r##"{"Event":{"EventData":{}}}"##,
            r##"{"Event":[1]}"##,
            r##"{"Event":{"System":{"EventID":1}}} trailing"##,
            r##"{"Event":{"System":{"EventID":1}"##,
        ];
        for json in give_up {
            assert_eq!(both(json).1, None, "{json}");
        }
    }

    #[test]
    fn every_corpus_record_streams_to_the_value_paths_fields() {
        let root = sigmaforge_data::for_tests().join("evtx");
        let files = crate::corpus::collect_event_files(&root).unwrap();
        let settings = evtx::ParserSettings::new().indent(false).separate_json_attributes(false).num_threads(0);
        let (mut records, mut gave_up) = (0, 0);
        for file in files.iter().filter(|f| f.path.extension().is_some_and(|e| e == "evtx")) {
            let Ok(parser) = evtx::EvtxParser::from_path(&file.path) else { continue };
            let mut parser = parser.with_configuration(settings.clone());
            let (mut value_table, mut stream_table) = (FieldTable::new(), FieldTable::new());
            for record in parser.records_json_bytes().flatten() {
                records += 1;
                let by_value = serde_json::from_slice(&record.data).ok().and_then(|v| flatten_event(&v, &mut value_table).ok());
                match flatten_record(&record.data, &mut stream_table, None) {
                    Streamed::Event(f) => {
                        let by_value = by_value.unwrap_or_else(|| panic!("{}: record {} streams but is no event", file.name, record.event_record_id));
                        assert_eq!(seen(&stream_table, &f), seen(&value_table, &by_value), "{} record {}", file.name, record.event_record_id);
                    }
                    Streamed::GiveUp => gave_up += 1,
                    Streamed::Skipped => panic!("no route"),
                }
            }
            // Same names interned in the same order: the same keys for the corpus builder.
            assert_eq!(stream_table.names().collect::<Vec<_>>(), value_table.names().collect::<Vec<_>>(), "{}", file.name);
        }
        assert!(records > 25_000, "{records} records");
        assert_eq!(gave_up, 0, "the evtx crate writes no repeated keys");
    }

    fn route() -> Buckets {
        let mut b = Buckets::default();
        b.add("security", Some(&["4688".to_string()]));
        b.add("system", None);
        b
    }

    fn routed(json: &str) -> (Streamed, usize) {
        let mut table = FieldTable::new();
        table.intern("Before");
        let out = flatten_record(json.as_bytes(), &mut table, Some(&route()));
        (out, table.len())
    }

    #[test]
    fn records_of_buckets_no_rule_reads_are_skipped_after_system() {
        let event = |channel: &str, id: &str, rest: &str| {
            format!(r##"{{"Event":{{"System":{{"Channel":"{channel}","EventID":{id}{rest}}},"EventData":{{"A":"b"}}}}}}"##)
        };
        // Kept: the bucket is read (channel without case, EventID trimmed, or any EventID).
        for json in [
            event("Security", "4688", r#","EventRecordID":1"#),
            event("Security", "\" 4688\"", r#","EventRecordID":1"#),
            event("SYSTEM", "7045", r#","EventRecordID":1"#),
        ] {
            assert!(matches!(routed(&json).0, Streamed::Event(_)), "{json}");
        }
        // Skipped, with the table put back.
        for json in [event("Security", "4624", r#","EventRecordID":1"#), event("Application", "4688", r#","EventRecordID":"9""#)] {
            let (out, names) = routed(&json);
            assert!(matches!(out, Streamed::Skipped), "{json}");
            assert_eq!(names, 1, "{json}");
        }
        // Without a record id: kept whatever its bucket (its invented id depends on the others).
        assert!(matches!(routed(&event("Application", "1", "")).0, Streamed::Event(_)));
        assert!(matches!(routed(&event("Application", "1", r#","EventRecordID":"x""#)).0, Streamed::Event(_)));
        // A Channel only in the event data decides at the end, as the index would.
        let late = r##"{"Event":{"System":{"EventID":4688,"EventRecordID":3},"EventData":{"Channel":"Security"}}}"##;
        assert!(matches!(routed(late).0, Streamed::Event(_)));
        let late = r##"{"Event":{"System":{"EventID":4624,"EventRecordID":3},"EventData":{"Channel":"Security"}}}"##;
        assert!(matches!(routed(late).0, Streamed::Skipped));
    }
}
