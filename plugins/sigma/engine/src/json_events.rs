//! Windows events in their evtx_dump JSON shape (`{"Event": {"System": …, "EventData": …}}`):
//! the flattening every loader shares, and the loader for JSON / JSON Lines files.
//!
//! Flattening follows the Sigma field-naming convention for Windows (sigma-spec.md B16):
//! - `EventData` fields by their `Data/@Name` (spaces removed), `UserData` fields by the name of
//!   their leaf element; unnamed `<Data>` elements become the multi-valued field `Data`;
//! - `System` elements by tag (`EventID`, `Channel`, `Computer`, `EventRecordID`, …) and their
//!   attributes as `Tag_Attribute` (`Provider_Name`, `TimeCreated_SystemTime`, `Security_UserID`,
//!   `EventID_Qualifiers`, …).
//!
//! Both attribute renderings of the evtx crate are understood: inline `"#attributes"` objects
//! (evtx_dump's default) and separate `"Tag_attributes"` keys (`separate_json_attributes`).
//! JSON strings stay strings and numbers stay numbers ([`ValueKind`]); matching compares their
//! text either way, so `EventID: 4688` finds the 1,287 corpus records that store it as `"4688"`.

use serde_json::Value as Json;

pub(crate) mod route;
pub(crate) mod stream;

use crate::corpus::LoadedFile;
use crate::event::{Event, FieldKey, FieldTable, FileId, Value};

/// One flattened event before it gets its file and final record id.
#[derive(Debug)]
pub struct FlatEvent {
    /// `System.EventRecordID` when present and numeric.
    pub record_id: Option<u64>,
    /// `System.TimeCreated.SystemTime` in microseconds since the Unix epoch.
    pub timestamp_us: Option<i64>,
    pub fields: Vec<(FieldKey, Value)>,
}

impl FlatEvent {
    /// The event, named by `record_id` (or `fallback_id` when the record has no EventRecordID).
    pub fn into_event(self, file: FileId, fallback_id: u64) -> Event {
        Event::new(file, self.record_id.unwrap_or(fallback_id), self.timestamp_us, self.fields)
    }
}

/// Why a JSON value (or an EVTX record rendered to JSON) is not a Windows event. Loaders count
/// these and report the first; they never stop a file from loading.
#[derive(Debug, thiserror::Error)]
pub enum EventParseError {
    /// The rendered record is not JSON at all.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("not a Windows event: no \"Event\" object with a \"System\" part")]
    NotAnEvent,
    /// `Event` is there but is not an object (`kind` says what it is: "a list", "null", ...).
    #[error("\"Event\" is {kind}, not an object")]
    EventNotAnObject { kind: &'static str },
    #[error("the event has no \"System\" object")]
    NoSystem,
}

/// Flattens one event in evtx_dump JSON shape, either the whole document (`{"Event": …}`) or the
/// `Event` object itself. Errors say what is missing.
pub fn flatten_event(root: &Json, table: &mut FieldTable) -> Result<FlatEvent, EventParseError> {
    let event = match root.get("Event") {
        Some(e) => e,
        None if root.get("System").is_some() => root,
        None => return Err(EventParseError::NotAnEvent),
    };
    let Some(parts) = event.as_object() else {
        return Err(EventParseError::EventNotAnObject { kind: json_kind(event) });
    };
    if !parts.get("System").is_some_and(Json::is_object) {
        return Err(EventParseError::NoSystem);
    }
    let mut out = Flattener { table, fields: Vec::with_capacity(32) };
    for (name, part) in parts {
        match name.as_str() {
            "System" => out.system(part),
            // `xmlns` and friends of the <Event> element say nothing about the event.
            "#attributes" | "Event_attributes" => {}
            _ => out.data(name, part),
        }
    }
    let fields = out.fields;
    let lookup = |name: &str| {
        let key = table.get(name)?;
        fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    };
    let record_id = lookup("EventRecordID").and_then(|v| v.text().trim().parse::<u64>().ok());
    let timestamp_us = lookup("TimeCreated_SystemTime").and_then(|v| parse_timestamp_us(v.text()));
    Ok(FlatEvent { record_id, timestamp_us, fields })
}

struct Flattener<'t> {
    table: &'t mut FieldTable,
    fields: Vec<(FieldKey, Value)>,
}

impl Flattener<'_> {
    fn push(&mut self, name: &str, value: Value) {
        // Sigma removes spaces from Windows field names ("Error Code" -> "ErrorCode").
        let key = if name.contains(' ') { self.table.intern(&name.replace(' ', "")) } else { self.table.intern(name) };
        self.fields.push((key, value));
    }

    /// `System`: element text by tag, attributes as `Tag_Attribute`.
    fn system(&mut self, system: &Json) {
        let Some(map) = system.as_object() else { return };
        for (tag, value) in map {
            if let Some(base) = tag.strip_suffix("_attributes") {
                self.attributes(base, value);
                continue;
            }
            match value {
                Json::Object(element) => {
                    for (child, inner) in element {
                        match child.as_str() {
                            "#attributes" => self.attributes(tag, inner),
                            "#text" => self.scalars(tag, inner),
                            _ => self.scalars(&format!("{tag}_{child}"), inner),
                        }
                    }
                }
                _ => self.scalars(tag, value),
            }
        }
    }

    fn attributes(&mut self, tag: &str, attributes: &Json) {
        let Some(map) = attributes.as_object() else { return };
        for (attribute, value) in map {
            self.scalars(&format!("{tag}_{attribute}"), value);
        }
    }

    /// A scalar, or a list of scalars (a multi-valued field).
    fn scalars(&mut self, name: &str, value: &Json) {
        match value {
            Json::Array(items) => items.iter().for_each(|item| self.scalars(name, item)),
            Json::Object(_) => self.data(name, value),
            _ => self.push(name, scalar(value)),
        }
    }

    /// `EventData`, `UserData` and anything else: leaf elements by their own name.
    fn data(&mut self, name: &str, value: &Json) {
        match value {
            Json::Array(items) => items.iter().for_each(|item| self.data(name, item)),
            Json::Object(map) => {
                // `{"#attributes": {"Name": "X"}, "#text": "v"}`: a named <Data> element as some
                // converters write it.
                let named = map.get("#attributes").and_then(|a| a.get("Name")).and_then(Json::as_str).map(str::to_owned);
                for (child, inner) in map {
                    match child.as_str() {
                        "#text" => self.data(named.as_deref().unwrap_or(name), inner),
                        // Element attributes (xmlns, Name) are structure, not event content.
                        "#attributes" => {}
                        c if c.ends_with("_attributes") => {}
                        _ => self.data(child, inner),
                    }
                }
                if named.is_some() && !map.contains_key("#text") {
                    self.push(named.as_deref().unwrap_or(name), Value::null());
                }
            }
            // `"EventData": null` is an event without data, not a field called EventData.
            Json::Null if name == "EventData" || name == "UserData" => {}
            _ => self.push(name, scalar(value)),
        }
    }
}

fn scalar(value: &Json) -> Value {
    match value {
        Json::Null => Value::null(),
        Json::Bool(b) => Value::bool(*b),
        Json::Number(n) => Value::number(&n.to_string()),
        Json::String(s) => Value::string(s),
        // Callers only pass scalars.
        Json::Array(_) | Json::Object(_) => Value::string(&value.to_string()),
    }
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]` into microseconds since the Unix epoch.
pub fn parse_timestamp_us(text: &str) -> Option<i64> {
    let t = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = t.get(range)?;
        digits.iter().try_fold(0i64, |acc, d| d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0')))
    };
    if t.len() < 19 || t[4] != b'-' || t[7] != b'-' || !matches!(t[10], b'T' | b't' | b' ') || t[13] != b':' || t[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for i in 0..6 {
            micros = micros * 10 + frac.get(i).filter(|_| i < digits).map_or(0, |d| i64::from(d - b'0'));
        }
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        b"" | b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let digit = |d: &u8| d.is_ascii_digit().then(|| i64::from(d - b'0'));
            let secs = (digit(h1)? * 10 + digit(h2)?) * 3600 + (digit(m1)? * 10 + digit(m2)?) * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Loads a JSON file of events: JSON Lines, a stream of (pretty-printed) objects, or arrays of
/// them, each in evtx_dump shape. evtx_dump's `Record N` separator lines are skipped. Text that is
/// not JSON costs only itself: a bad line of a stream up to the next line that starts an object,
/// a bad element of an array up to the next element that is an event. Values that are not
/// events are skipped too. Each skip is a warning naming the file; everything else still loads.
pub fn load_json_bytes(name: &str, bytes: &[u8]) -> LoadedFile {
    let mut reader = JsonReader { loaded: LoadedFile::new(name), bytes, ordinal: 0, not_events: 0, first_problem: None, in_damaged_array: false };
    let mut pos = 0usize;
    while pos < bytes.len() {
        pos = skip_separators(bytes, pos);
        if pos >= bytes.len() {
            break;
        }
        if bytes[pos] == b'[' {
            pos = reader.array(pos);
            continue;
        }
        let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Json>();
        match stream.next() {
            Some(Ok(value)) => {
                reader.add(&value);
                pos += stream.byte_offset();
            }
            Some(Err(err)) => {
                // Skip to the next line that starts a new object, so one bad line of a JSON
                // Lines file costs one event, not the rest of the file.
                let resume = next_object_line(bytes, pos + 1);
                reader.skip(pos, resume, &err);
                pos = resume;
            }
            None => break,
        }
    }
    let JsonReader { mut loaded, not_events, first_problem, .. } = reader;
    if not_events > 0 {
        loaded.warn(format!("{not_events} JSON values are not Windows events and were skipped (first: {})", first_problem.unwrap_or_default()));
    }
    loaded.finish();
    loaded
}

struct JsonReader<'b> {
    loaded: LoadedFile,
    bytes: &'b [u8],
    /// Values seen so far, for naming the first one that is not an event.
    ordinal: u64,
    not_events: usize,
    first_problem: Option<String>,
    /// Whether an element of the current array was skipped (later elements count as recovered).
    in_damaged_array: bool,
}

impl JsonReader<'_> {
    fn add(&mut self, value: &Json) {
        self.ordinal += 1;
        match flatten_event(value, &mut self.loaded.table) {
            Ok(flat) => {
                if self.loaded.push(flat) && self.in_damaged_array {
                    self.loaded.integrity.recovered += 1;
                }
            }
            Err(why) => {
                self.not_events += 1;
                let ordinal = self.ordinal;
                self.first_problem.get_or_insert_with(|| format!("value {ordinal}: {why}"));
            }
        }
    }

    /// Records that the text from `from` to `to` is not JSON and was skipped.
    fn skip(&mut self, from: usize, to: usize, err: &serde_json::Error) {
        self.loaded.integrity.lost += 1;
        let line = 1 + self.bytes[..from].iter().filter(|b| **b == b'\n').count();
        self.loaded.warn(format!("invalid JSON at line {line} ({err}); skipped {} bytes", to - from));
    }

    /// Reads the array that starts at `start` element by element; returns where it ends.
    fn array(&mut self, start: usize) -> usize {
        let bytes = self.bytes;
        self.in_damaged_array = false;
        let mut pos = start + 1;
        loop {
            while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b',') {
                pos += 1;
            }
            match bytes.get(pos) {
                None => return bytes.len(),
                Some(b']') => return pos + 1,
                Some(_) => {}
            }
            let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Json>();
            match stream.next() {
                Some(Ok(value)) => {
                    self.add(&value);
                    pos += stream.byte_offset();
                }
                Some(Err(err)) => {
                    let resume = next_array_event(bytes, pos + 1);
                    self.skip(pos, resume, &err);
                    self.in_damaged_array = true;
                    pos = resume;
                }
                None => return bytes.len(),
            }
        }
    }
}

/// Where the next element of an array that is an event starts, at or after `from`: an object
/// right after `[`, or after a `,` that follows the end of a value, which parses and has an
/// `Event` or `System` part (objects nested in events fail that test). The end of the text when
/// there is none.
fn next_array_event(bytes: &[u8], from: usize) -> usize {
    let before = |mut at: usize| {
        while at > 0 && bytes[at - 1].is_ascii_whitespace() {
            at -= 1;
        }
        at.checked_sub(1).map(|p| (p, bytes[p]))
    };
    let mut at = from;
    while let Some(hit) = memchr::memchr(b'{', &bytes[at.min(bytes.len())..]) {
        let candidate = at + hit;
        at = candidate + 1;
        let after_element = before(candidate)
            .is_some_and(|(comma, b)| b == b'[' || b == b',' && before(comma).is_some_and(|(_, end)| matches!(end, b'}' | b']' | b'"')));
        if !after_element {
            continue;
        }
        let parsed = serde_json::Deserializer::from_slice(&bytes[candidate..]).into_iter::<Json>().next();
        if let Some(Ok(value)) = parsed
            && (value.get("Event").is_some() || value.get("System").is_some())
        {
            return candidate;
        }
    }
    bytes.len()
}

/// Skips whitespace and evtx_dump's `Record <n>` lines.
fn skip_separators(bytes: &[u8], mut pos: usize) -> usize {
    loop {
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if bytes[pos..].starts_with(b"Record ") {
            pos = bytes[pos..].iter().position(|b| *b == b'\n').map_or(bytes.len(), |n| pos + n + 1);
            continue;
        }
        return pos;
    }
}

fn next_object_line(bytes: &[u8], from: usize) -> usize {
    let mut pos = from;
    while pos < bytes.len() {
        match memchr::memchr(b'\n', &bytes[pos..]) {
            Some(n) => {
                pos += n + 1;
                if bytes.get(pos).is_some_and(|b| *b == b'{' || *b == b'[') || bytes[pos..].starts_with(b"Record ") {
                    return pos;
                }
            }
            None => return bytes.len(),
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loaded_file::SYNTHETIC_ID_BASE;

    fn flat(json: &str) -> (FieldTable, FlatEvent) {
        let mut table = FieldTable::new();
        let value: Json = serde_json::from_str(json).unwrap();
        let flat = flatten_event(&value, &mut table).unwrap();
        (table, flat)
    }

    fn texts(table: &FieldTable, flat: &FlatEvent, name: &str) -> Vec<String> {
        let Some(key) = table.get(name) else { return vec![] };
        flat.fields.iter().filter(|(k, _)| *k == key).map(|(_, v)| v.text().to_string()).collect()
    }

    const SYSMON: &str = r##"{"Event":{"#attributes":{"xmlns":"x"},"System":{
        "Provider":{"#attributes":{"Name":"Microsoft-Windows-Sysmon","Guid":"{5770}"}},
        "EventID":1,"Level":4,"Keywords":"0x8000000000000000",
        "TimeCreated":{"#attributes":{"SystemTime":"2019-03-19T23:34:25.123456Z"}},
        "EventRecordID":"42","Correlation":null,
        "Execution":{"#attributes":{"ProcessID":3544,"ThreadID":4272}},
        "Channel":"Microsoft-Windows-Sysmon/Operational","Computer":"PC1",
        "Security":{"#attributes":{"UserID":"S-1-5-18"}}},
        "EventData":{"Image":"C:\\Windows\\cmd.exe","ProcessId":4460,"Error Code":"5","Empty":null}}}"##;

    #[test]
    fn system_and_event_data_fields_get_sigma_names() {
        let (t, f) = flat(SYSMON);
        assert_eq!(texts(&t, &f, "EventID"), ["1"]);
        assert_eq!(texts(&t, &f, "Provider_Name"), ["Microsoft-Windows-Sysmon"]);
        assert_eq!(texts(&t, &f, "Provider_Guid"), ["{5770}"]);
        assert_eq!(texts(&t, &f, "Execution_ProcessID"), ["3544"]);
        assert_eq!(texts(&t, &f, "Security_UserID"), ["S-1-5-18"]);
        assert_eq!(texts(&t, &f, "Channel"), ["Microsoft-Windows-Sysmon/Operational"]);
        assert_eq!(texts(&t, &f, "Image"), ["C:\\Windows\\cmd.exe"]);
        assert_eq!(texts(&t, &f, "ProcessId"), ["4460"]);
        assert_eq!(texts(&t, &f, "ErrorCode"), ["5"], "spaces are removed from field names");
        assert_eq!(texts(&t, &f, "Empty"), [""]);
        assert!(t.get("xmlns").is_none());
        // The string-typed EventRecordID still names the event.
        assert_eq!(f.record_id, Some(42));
        assert_eq!(f.timestamp_us, Some(1_553_038_465_123_456));
    }

    #[test]
    fn separate_attributes_qualifiers_unnamed_data_and_user_data() {
        let (t, f) = flat(
            r##"{"Event":{"System":{"Provider_attributes":{"Name":"Service Control Manager"},
            "EventID":{"#attributes":{"Qualifiers":16384},"#text":7045},"EventRecordID":7,
            "Channel":"System"},
            "EventData":{"Data":["a",{"#text":"b"}],"Binary":"00FF"},
            "UserData":{"EventXML":{"#attributes":{"xmlns":"u"},"Param1":"x","Nested":{"Param2":"y"}}}}}"##,
        );
        assert_eq!(texts(&t, &f, "Provider_Name"), ["Service Control Manager"]);
        assert_eq!(texts(&t, &f, "EventID"), ["7045"]);
        assert_eq!(texts(&t, &f, "EventID_Qualifiers"), ["16384"]);
        assert_eq!(texts(&t, &f, "Data"), ["a", "b"], "unnamed Data is multi-valued");
        assert_eq!(texts(&t, &f, "Binary"), ["00FF"]);
        assert_eq!(texts(&t, &f, "Param1"), ["x"]);
        assert_eq!(texts(&t, &f, "Param2"), ["y"]);
        assert_eq!(f.record_id, Some(7));
    }

    #[test]
    fn named_data_elements_in_attribute_form() {
        let (t, f) = flat(
            r##"{"Event":{"System":{"EventID":4688,"EventRecordID":1},"EventData":{"Data":[
            {"#attributes":{"Name":"NewProcessName"},"#text":"C:\\x.exe"},{"#attributes":{"Name":"Empty"}}]}}}"##,
        );
        assert_eq!(texts(&t, &f, "NewProcessName"), ["C:\\x.exe"]);
        assert_eq!(texts(&t, &f, "Empty"), [""]);
        assert!(t.get("Data").is_none());
    }

    #[test]
    fn not_an_event_is_an_error_not_a_panic() {
        let mut t = FieldTable::new();
        for bad in [r##"{"a":1}"##, r##"{"Event":5}"##, r##"{"Event":{"EventData":{}}}"##, "[]", "null"] {
            let v: Json = serde_json::from_str(bad).unwrap();
            assert!(flatten_event(&v, &mut t).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_parse_with_fractions_and_offsets() {
        assert_eq!(parse_timestamp_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp_us("1970-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(parse_timestamp_us("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamp_us("2000-03-01T00:00:00.0000001Z"), Some(951_868_800_000_000));
        assert_eq!(parse_timestamp_us("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp_us("yesterday"), None);
    }

    #[test]
    fn json_lines_pretty_streams_arrays_and_garbage() {
        let line = |id: u64| format!(r##"{{"Event":{{"System":{{"EventID":1,"EventRecordID":{id}}}}}}}"##);
        let jsonl = format!("{}\n{}\nnot json at all\n{}\n", line(5), line(6), line(7));
        let loaded = load_json_bytes("x.jsonl", jsonl.as_bytes());
        assert_eq!(loaded.events.len(), 3);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].to_string().contains("x.jsonl"), "{}", loaded.warnings[0]);
        assert!(loaded.warnings[0].message.contains("line 3"), "{}", loaded.warnings[0]);
        assert_eq!(loaded.integrity.lost, 1);

        let pretty = "Record 1\n{\n  \"Event\": {\"System\": {\"EventRecordID\": 9}}\n}\n{\"Event\":{\"System\":{}}}";
        let loaded = load_json_bytes("p.json", pretty.as_bytes());
        let ids: Vec<u64> = loaded.events.iter().map(|e| e.record_id).collect();
        assert_eq!(ids, [9, SYNTHETIC_ID_BASE], "an event without EventRecordID gets an id no real event has");
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].message.contains("no System.EventRecordID"), "{:?}", loaded.warnings);

        let array = format!("[{},{},{{\"other\":1}}]", line(1), line(2));
        let loaded = load_json_bytes("a.json", array.as_bytes());
        assert_eq!(loaded.events.len(), 2);
        assert!(loaded.warnings[0].message.contains("not Windows events"));

        assert!(load_json_bytes("e.json", b"").events.is_empty());
        let loaded = load_json_bytes("t.json", &line(1).as_bytes()[..20]);
        assert!(loaded.events.is_empty() && loaded.warnings.len() == 1);
    }

    /// Six events, as evtx_dump writes an array of them (pretty-printed, nested arrays inside).
    fn six_events() -> Vec<String> {
        (1..=6)
            .map(|id| format!("{{\n  \"Event\": {{\"System\": {{\"EventID\": 4688, \"EventRecordID\": {id}}},\n    \"EventData\": {{\"Data\": [{{\"#text\": \"a\"}}, {{\"#text\": \"b\"}}]}}}}\n}}"))
            .collect()
    }

    #[test]
    fn a_bad_element_of_an_array_costs_only_itself() {
        let good = six_events();
        let bad = r##"{"Event": {"System": {"EventID": 4688, "EventRecordID": 99,}, "EventData": {"Data": [{"#text": "x"}, {"#text": "y"}]}}}"##;
        for at in 0..=6 {
            let mut elements = good.clone();
            elements.insert(at, bad.to_string());
            let text = format!("[\n{}\n]\n", elements.join(",\n"));
            let loaded = load_json_bytes("arr.json", text.as_bytes());
            let ids: Vec<u64> = loaded.events.iter().map(|e| e.record_id).collect();
            assert_eq!(ids, [1, 2, 3, 4, 5, 6], "bad element at {at}: {:?}", loaded.warnings);
            assert_eq!(loaded.integrity.lost, 1, "bad element at {at}");
            assert_eq!(loaded.integrity.recovered, 6 - at as u64, "bad element at {at}");
            assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
            assert!(loaded.warnings[0].message.contains("invalid JSON at line"), "{:?}", loaded.warnings);
        }
        // Two arrays in one file, the first cut short: the second still loads.
        let text = format!("[{},{}", good[0], &good[1][..30]);
        let loaded = load_json_bytes("cut.json", format!("{text}\n[{}]", good[2]).as_bytes());
        let ids: Vec<u64> = loaded.events.iter().map(|e| e.record_id).collect();
        assert_eq!(ids, [1, 3]);
    }

    #[test]
    fn duplicated_lines_are_dropped_and_counted() {
        let good = six_events().iter().map(|e| e.replace('\n', "")).collect::<Vec<_>>();
        let text = format!("{}\n{}\n{}\n", good.join("\n"), good[2], good[4]);
        let loaded = load_json_bytes("dup.jsonl", text.as_bytes());
        assert_eq!(loaded.events.len(), 6);
        assert_eq!(loaded.integrity.duplicates, 2);
        assert!(loaded.warnings.iter().any(|w| w.message.contains("dropped 2 exact duplicate")), "{:?}", loaded.warnings);
    }

    #[test]
    fn invented_ids_never_collide_with_real_ones() {
        // Real ids 1 and 2; two events without one. Today's ordinal naming gave them 1 and 3.
        let text = r##"{"Event":{"System":{"EventID":1},"EventData":{"I":"a"}}}
{"Event":{"System":{"EventID":1,"EventRecordID":1}}}
{"Event":{"System":{"EventID":1},"EventData":{"I":"b"}}}
{"Event":{"System":{"EventID":1,"EventRecordID":2}}}"##;
        let loaded = load_json_bytes("ids.jsonl", text.as_bytes());
        let mut ids: Vec<u64> = loaded.events.iter().map(|e| e.record_id).collect();
        assert_eq!(ids, [SYNTHETIC_ID_BASE, 1, SYNTHETIC_ID_BASE + 1, 2]);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4);
        assert_eq!(loaded.integrity.without_record_id, 2);
    }
}
