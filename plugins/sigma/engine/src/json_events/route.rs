//! The cheapest look at a rendered EVTX record: its bucket (Channel, EventID) and whether it has
//! an EventRecordID, read from the `System` part without building a single value, so that a
//! record no rule reads costs a scan of its `System` part and nothing more.
//!
//! The answer must be the bucket the flattened event would have (the corpus index's: the first
//! `Channel` and `EventID` values), so the look gives up (`None`) unless that is certain: the
//! document is `{"Event": {"System": {…}, …}}` with `System` first (only attribute objects may
//! come before it), `Channel`, `EventID` and `EventRecordID` appear once each as a scalar or an
//! element with a scalar `#text`, and every other `System` value is a scalar, a list of scalars or
//! an element of scalars and attribute objects. Flattening gives such a `System` no other field
//! named `Channel`, `EventID` or `EventRecordID` (the names it makes from other keys carry a `_`,
//! like `Provider_Name`, or are the key itself), and later parts come after it. The record's
//! JSON comes from the evtx crate, which writes one `Event` key at the root and numbers repeated
//! element names (`System_1`), so no later key can replace the `System` read here.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::stream::Key;

/// What the `System` part says, when it says it plainly.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SystemBucket {
    /// Lowercased, as the index keys channels.
    pub channel: String,
    /// Trimmed.
    pub event_id: String,
    /// Whether `EventRecordID` is a number (a record without one is always kept).
    pub has_record_id: bool,
}

/// Reads the bucket of one rendered record; `None` when it cannot be read plainly (see the module
/// notes), in which case the caller flattens the record to find out.
pub fn system_bucket(json: &[u8]) -> Option<SystemBucket> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    // Reading stops with an error as soon as `System` has been read; the outcome is in `found`.
    let _ = Root { found: &mut found }.deserialize(&mut de);
    found
}

/// What kind of JSON value something is, read without keeping it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Shape {
    Scalar,
    /// A list whose items are all scalars.
    Scalars,
    Other,
}

struct ShapeOf;

impl<'de> DeserializeSeed<'de> for ShapeOf {
    type Value = Shape;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ShapeOf {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut shape = Shape::Scalars;
        while let Some(item) = seq.next_element_seed(ShapeOf)? {
            if item != Shape::Scalar {
                shape = Shape::Other;
            }
        }
        Ok(shape)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }
}

/// An attribute object (`#attributes` or `Tag_attributes`): flattened as `Tag_Attribute`
/// fields, which stay plain while each value is a scalar or a list of scalars (a value that is
/// not an object gives no field at all).
struct Attributes;

impl<'de> DeserializeSeed<'de> for Attributes {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        Ok(d.deserialize_any(AttributesVisitor)?.unwrap_or(true))
    }
}

struct AttributesVisitor;

impl<'de> Visitor<'de> for AttributesVisitor {
    /// `None` for a value that is not an object.
    type Value = Option<bool>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an attribute object")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<bool>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<bool>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<bool>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<bool>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<bool>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<bool>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<bool>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<bool>, A::Error> {
        let mut plain = true;
        while map.next_key::<IgnoredAny>()?.is_some() {
            plain &= map.next_value_seed(ShapeOf)? != Shape::Other;
        }
        Ok(Some(plain))
    }
}

/// One `System` element's value, read as flattening reads it: its text when `keep` asks for it
/// and it is a plain scalar (or an element's scalar `#text`), or whether it is plain at all.
#[derive(Debug, PartialEq, Eq)]
enum Plain {
    /// Plain, with its text when kept and single.
    Text(Option<String>),
    /// Flattening could make other names of it, or more than one value: leave it to flattening.
    Complex,
}

struct Element {
    keep: bool,
    /// The value of an element's `#text`: a scalar or a list of scalars, nothing else.
    text_of: bool,
}

impl<'de> DeserializeSeed<'de> for Element {
    type Value = Plain;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Plain, D::Error> {
        d.deserialize_any(self)
    }
}

impl Element {
    fn scalar(&self, text: impl FnOnce() -> String) -> Plain {
        Plain::Text(self.keep.then(text))
    }
}

impl<'de> Visitor<'de> for Element {
    type Value = Plain;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a System element")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Plain, E> {
        Ok(self.scalar(|| b.to_string()))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Plain, E> {
        Ok(self.scalar(|| n.to_string()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Plain, E> {
        Ok(self.scalar(|| n.to_string()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Plain, E> {
        // Its text is the JSON library's float formatting: leave it to flattening.
        Ok(if self.keep { Plain::Complex } else { Plain::Text(None) })
    }
    fn visit_str<E>(self, s: &str) -> Result<Plain, E> {
        Ok(self.scalar(|| s.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Plain, E> {
        Ok(self.scalar(String::new))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Plain, A::Error> {
        // A list of scalars gives one field per item under the element's own name: plain,
        // except where its first value is wanted.
        let mut plain = !self.keep;
        while let Some(item) = seq.next_element_seed(ShapeOf)? {
            plain &= item == Shape::Scalar;
        }
        Ok(if plain { Plain::Text(None) } else { Plain::Complex })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Plain, A::Error> {
        // `#text` holding an object is flattened as event data, under names of its own.
        let mut plain = !self.text_of;
        let mut text = None;
        let mut seen: Vec<Key<'de>> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            plain &= !seen.contains(&key);
            match &*key.0 {
                "#attributes" => plain &= map.next_value_seed(Attributes)?,
                "#text" => match map.next_value_seed(Element { keep: self.keep, text_of: true })? {
                    Plain::Text(t) if !self.keep || t.is_some() => text = t,
                    _ => plain = false,
                },
                // `Tag_child` fields: plain while scalars.
                _ => plain &= map.next_value_seed(ShapeOf)? != Shape::Other,
            }
            seen.push(key);
        }
        Ok(if plain { Plain::Text(text) } else { Plain::Complex })
    }
}

struct Root<'f> {
    found: &'f mut Option<SystemBucket>,
}

impl<'de> DeserializeSeed<'de> for Root<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Root<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an {\"Event\": …} object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match map.next_key::<Key<'de>>()? {
            Some(k) if k.0 == "Event" => map.next_value_seed(EventPart { found: self.found }),
            _ => Err(de::Error::custom("not an Event document")),
        }
    }
}

struct EventPart<'f> {
    found: &'f mut Option<SystemBucket>,
}

impl<'de> DeserializeSeed<'de> for EventPart<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventPart<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the Event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &*key.0 {
                "#attributes" | "Event_attributes" => {
                    map.next_value::<IgnoredAny>()?;
                }
                "System" => {
                    *self.found = map.next_value_seed(System)?;
                    return Err(de::Error::custom("System read"));
                }
                _ => break,
            }
        }
        Err(de::Error::custom("System is not the first part"))
    }
}

struct System;

impl<'de> DeserializeSeed<'de> for System {
    type Value = Option<SystemBucket>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<SystemBucket>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for System {
    type Value = Option<SystemBucket>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the System object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<SystemBucket>, A::Error> {
        let (mut channel, mut event_id, mut record_id) = (None, None, None);
        let mut plain = true;
        let mut seen: Vec<Key<'de>> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            plain &= !seen.contains(&key);
            let slot = match &*key.0 {
                "Channel" => Some(&mut channel),
                "EventID" => Some(&mut event_id),
                "EventRecordID" => Some(&mut record_id),
                _ => None,
            };
            if key.0.ends_with("_attributes") {
                plain &= map.next_value_seed(Attributes)?;
            } else {
                match (map.next_value_seed(Element { keep: slot.is_some(), text_of: false })?, slot) {
                    (Plain::Complex, _) => plain = false,
                    (Plain::Text(text), Some(slot)) => *slot = text,
                    (Plain::Text(_), None) => {}
                }
            }
            seen.push(key);
        }
        let (Some(channel), Some(event_id), true) = (channel, event_id, plain) else { return Ok(None) };
        Ok(Some(SystemBucket {
            channel: channel.to_lowercase(),
            event_id: event_id.trim().to_string(),
            has_record_id: record_id.is_some_and(|r| r.trim().parse::<u64>().is_ok()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldTable;
    use crate::json_events::flatten_event;

    /// The bucket the flattened event has: (lowercased first Channel, trimmed first EventID,
    /// has a numeric EventRecordID), as the corpus index and the loader see it.
    fn flattened_bucket(json: &[u8]) -> SystemBucket {
        let mut table = FieldTable::new();
        let flat = flatten_event(&serde_json::from_slice(json).unwrap(), &mut table).unwrap();
        let first = |name: &str| table.get(name).and_then(|k| flat.fields.iter().find(|(f, _)| *f == k)).map(|(_, v)| v);
        SystemBucket {
            channel: first("Channel").map_or(String::new(), |v| v.lower().to_string()),
            event_id: first("EventID").map_or(String::new(), |v| v.text().trim().to_string()),
            has_record_id: flat.record_id.is_some(),
        }
    }

    #[test]
    fn a_plain_system_gives_the_flattened_bucket_and_anything_else_none() {
        let plain = [
            r##"{"Event":{"#attributes":{"xmlns":"x"},"System":{"Provider":{"#attributes":{"Name":"P","Guid":"{1}"}},"EventID":4688,"Level":4,"Flt":1.5,
               "TimeCreated":{"#attributes":{"SystemTime":"2019-03-19T23:34:25Z"}},"EventRecordID":"42","Correlation":null,"List":[1,"a"],
               "Execution":{"#attributes":{"ProcessID":3544},"Child":"c"},"Channel":"SECURITY","Provider_attributes":{"A":[1,2]}},"EventData":{"Channel":"x"}}}"##,
            r##"{"Event":{"System":{"EventID":{"#attributes":{"Qualifiers":16384},"#text":" 7045 "},"EventRecordID":7,"Channel":"System"}}}"##,
            r##"{"Event":{"System":{"EventID":"1","EventRecordID":"x","Channel":null,"Security":"not an object","X_attributes":5}}}"##,
        ];
        for json in plain {
            assert_eq!(system_bucket(json.as_bytes()), Some(flattened_bucket(json.as_bytes())), "{json}");
        }
        let not_plain = [
            // No Channel in System: the event data may name one.
            r##"{"Event":{"System":{"EventID":1,"EventRecordID":1},"EventData":{"Channel":"Security"}}}"##,
            r##"{"Event":{"EventData":{"Channel":"x"},"System":{"Channel":"a","EventID":1}}}"##,
            r##"{"Event":{"System":{"Channel":["a","b"],"EventID":1}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1.0}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1,"EventID":2}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":{"#attributes":{"Q":1}}}}}"##,
            // Values flattening would turn into fields of other names, perhaps Channel.
            r##"{"Event":{"System":{"Channel":"a","EventID":1,"Odd":{"#text":{"Channel":"b"}}}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1,"Odd":[{"Channel":"b"}]}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1,"Odd":{"Child":{"Channel":"b"}}}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1,"Odd":{"#attributes":{"A":{"Channel":"b"}}}}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1,"Odd_attributes":{"A":[{"Channel":"b"}]}}}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1,"Odd":{"X":1,"X":2}}}}"##,
            r##"{"System":{"Channel":"a","EventID":1}}"##,
            r##"{"Event":{"System":{"Channel":"a","EventID":1"##,
        ];
        for json in not_plain {
            assert_eq!(system_bucket(json.as_bytes()), None, "{json}");
        }
    }

    #[test]
    fn every_corpus_record_has_a_plain_system_with_the_flattened_bucket() {
        let root = sigmaforge_data::for_tests().join("evtx");
        let files = crate::corpus::collect_event_files(&root).unwrap();
        let settings = evtx::ParserSettings::new().indent(false).separate_json_attributes(false).num_threads(0);
        let (mut records, mut undecided) = (0, 0);
        for file in files.iter().filter(|f| f.path.extension().is_some_and(|e| e == "evtx")) {
            let Ok(parser) = evtx::EvtxParser::from_path(&file.path) else { continue };
            let mut parser = parser.with_configuration(settings.clone());
            for record in parser.records_json_bytes().flatten() {
                records += 1;
                match system_bucket(&record.data) {
                    Some(b) => assert_eq!(b, flattened_bucket(&record.data), "{} record {}", file.name, record.event_record_id),
                    None => {
                        // Only a record without a Channel (the event data could hold one).
                        assert!(!String::from_utf8_lossy(&record.data).contains("\"Channel\""), "{} record {}", file.name, record.event_record_id);
                        undecided += 1;
                    }
                }
            }
        }
        assert!(records > 25_000, "{records} records");
        assert_eq!(undecided, 1, "one corpus record (an EventForwarder bookmark) has no Channel");
    }
}
