//! EVTX records flattened straight from their BinXML template instances, without the evtx crate
//! rendering them to JSON and [`crate::json_events::stream`] reading that JSON back (together
//! about half of the CPU time of loading the corpus).
//!
//! A Windows record is nearly always a template instance: a template definition, stored once
//! per chunk (the event's XML shape with numbered holes), and the record's own substitution
//! values, some of which are embedded BinXML fragments holding instances of their own (how
//! Sysmon's `EventData` is stored, for instance). A definition is read once into a [`Plan`] (its
//! element tree, holes in place), kept for every record and every chunk that holds the same
//! definition, and each record then only turns its values into fields. A record written
//! without a template (forwarded and exported events often are) is read the same way, as a
//! definition of its own without holes.
//!
//! The fields are the JSON path's, name for name, kind for kind, in the same order (the test
//! `every_corpus_record_flattens_as_through_json` holds this for every corpus record). The
//! rules below are the evtx crate's JSON rendering rules for the shapes handled here, followed
//! by [`crate::json_events`]' flattening of that JSON:
//! - an element whose `DependencyId` names a null value is left out (MS-EVEN6 2.2.12);
//! - a hole holding an embedded fragment is replaced by the fragment's element;
//! - an empty value (null, empty string or binary) is no content; an attribute without
//!   content is left out;
//! - integers and booleans are numbers and booleans, everything else is text in the crate's
//!   rendering (GUIDs in braces, SIDs, ISO 8601 times, `0x` hex, upper-case hex binary);
//! - `System/T` gives `T` (null when it has neither text nor attributes) and `T_Attribute`;
//! - elsewhere leaf elements give their own name; `EventData`/`UserData`'s `<Data Name="N">`
//!   gives `N` (the empty string when it is empty); `"EventData": null` gives nothing.
//!
//! Whatever else a record holds sends its chunk through the crate, and that record through
//! the JSON path: arrays other than string arrays in positional `Data`, floating-point,
//! pointer-size, ANSI or non-string literal values, `Data` elements without a literal name or
//! outside `EventData`/`UserData`, two children with one name (the crate numbers them), text
//! beside elements, CDATA, entity and character references, and anything unexpected in a
//! definition, a record or a fragment. In the corpus that is 44 records of 25,062.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use evtx::binxml::value_variant::{BinXmlValue, FileTime, SysTime};
use evtx::{EvtxChunkHeader, EvtxRecord, Utf16LeSlice};

use crate::corpus::Buckets;
use crate::event::{FieldKey, FieldTable, Value, ValueKind};
use crate::json_events::FlatEvent;
use crate::json_events::stream::{accepted, finish_event, push_field};

/// What the template path made of one record.
pub enum Flattened {
    Event(FlatEvent),
    /// Its (Channel, EventID) bucket is not one the route accepts.
    Skipped,
}

/// The plans a file's records use: for the chunk being read, by definition offset; the rest
/// come from [`KNOWN`].
#[derive(Default)]
pub struct Plans {
    /// Scratch text for rendering values, kept from record to record.
    text: String,
    /// Scratch for a definition's canonical form.
    canonical: Vec<u8>,
    /// The values made so far for this file's records.
    values: Values,
    in_chunk: HashMap<u32, Option<Arc<Plan>>, foldhash::fast::RandomState>,
}

/// The values made for one file, by kind and text, handed out again where the text repeats:
/// host, provider, user and process names, GUIDs, small numbers (the corpus has 703,000
/// values, 71,000 of them different). Sharing them saves an allocation and a lowercase check
/// each, and the memory.
#[derive(Default)]
struct Values {
    by_kind: [HashMap<Box<str>, Value, foldhash::fast::RandomState>; 3],
}

impl Values {
    /// Longer text is rarely repeated; past this many values, new ones are no longer kept.
    const MAX_LEN: usize = 96;
    const MAX_KEPT: usize = 1 << 16;

    fn get(&mut self, kind: ValueKind, text: &str) -> Value {
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

/// The definitions read so far on this thread, by canonical form (`None`: not planned). Files
/// of one provider share their definitions, so this is kept from file to file: the corpus has
/// a few hundred, where reading each file's anew meant two thousand. Plans hold nothing of a
/// file (names, not field keys), so any file may use them.
type Known = HashMap<Box<[u8]>, Option<Arc<Plan>>, foldhash::fast::RandomState>;

thread_local! {
    static KNOWN: std::cell::RefCell<Known> = std::cell::RefCell::default();
}

/// [`KNOWN`] is emptied when it holds more than this many definitions (a bound for a process
/// that reads one odd file after another).
const MAX_KNOWN: usize = 4096;

impl Plans {
    /// Forgets the offsets of the last chunk's definitions (offsets are per chunk).
    pub fn start_chunk(&mut self) {
        self.in_chunk.clear();
    }

    /// The plan of the definition at `offset` in `chunk` (a chunk's data), reading it if new.
    fn plan(&mut self, chunk: &[u8], offset: u32) -> Option<Arc<Plan>> {
        if let Some(plan) = self.in_chunk.get(&offset) {
            return plan.clone();
        }
        let plan = self.lookup(chunk, offset);
        self.in_chunk.insert(offset, plan.clone());
        plan
    }

    /// Each chunk writes its definitions anew, naming elements by offsets into itself, so the
    /// same definition has different bytes in every chunk: plans are shared by the definition's
    /// canonical form (its tokens with each name in place of its offset).
    fn lookup(&mut self, chunk: &[u8], offset: u32) -> Option<Arc<Plan>> {
        let (start, end) = definition_span(chunk, offset)?;
        canonical(chunk, start, end, &mut self.canonical)?;
        KNOWN.with_borrow_mut(|known| {
            if let Some(plan) = known.get(&self.canonical[..]) {
                return plan.clone();
            }
            let plan = Reader { data: chunk, pos: start, end, dependencies: true }.definition().map(Arc::new);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(self.canonical.as_slice().into(), plan.clone());
            plan
        })
    }
}

/// Flattens every record of a chunk (its data and header) straight from its template
/// instance, appending (header id, event or `None` when the route skips it) to `out`, in the
/// crate's record order. `false` as soon as a record cannot be: the caller then reads the whole
/// chunk through the crate, and must put back the names this added to `table`.
///
/// The records are walked as the crate walks a chunk's live records: from the chunk header to
/// the free space or the chunk's last record, one after the other. Anything the crate would
/// have to resync over or report (a bad signature, size or timestamp) hands the chunk over too.
pub fn flatten_chunk(
    data: &[u8],
    header: &EvtxChunkHeader,
    plans: &mut Plans,
    table: &mut FieldTable,
    route: Option<&Buckets>,
    out: &mut Vec<(u64, Option<FlatEvent>)>,
) -> bool {
    plans.start_chunk();
    let live_end = (header.free_space_offset as usize).min(data.len());
    let mut offset = CHUNK_HEADER_SIZE;
    while offset < live_end {
        let Some(record) = record_at(data, offset) else { return false };
        let Some(flat) = flatten_binxml(data, record.binxml, plans, table, route) else { return false };
        out.push((record.id, flat));
        if record.id == header.last_event_record_id {
            break;
        }
        offset += record.size;
    }
    true
}

/// Where a chunk's records start.
const CHUNK_HEADER_SIZE: usize = 512;
/// A record's header: signature, size (u32), record id (u64), FILETIME (u64).
const RECORD_HEADER_SIZE: usize = 24;

struct RawRecord<'d> {
    id: u64,
    size: usize,
    binxml: &'d [u8],
}

/// The record at `offset`, if its header is one the crate reads without complaint.
fn record_at(data: &[u8], offset: usize) -> Option<RawRecord<'_>> {
    if data.get(offset..offset + 4)? != b"**\0\0" {
        return None;
    }
    let size = u32_at(data, offset + 4)? as usize;
    let id = u64::from_le_bytes(data.get(offset + 8..offset + 16)?.try_into().ok()?);
    let filetime = u64::from_le_bytes(data.get(offset + 16..offset + 24)?.try_into().ok()?);
    FileTime(filetime).to_timestamp()?;
    // The BinXML lies between the header and the trailing copy of the size.
    let binxml_size = size.checked_sub(RECORD_HEADER_SIZE + 4)?;
    let start = offset.checked_add(RECORD_HEADER_SIZE)?;
    let binxml = data.get(start..start.checked_add(binxml_size)?)?;
    Some(RawRecord { id, size, binxml })
}

/// Flattens `record` (read by the crate) through its template's plan; `None` when the record
/// must go through JSON (the field table is then as it was).
pub fn flatten(record: &EvtxRecord<'_>, plans: &mut Plans, table: &mut FieldTable, route: Option<&Buckets>) -> Option<Flattened> {
    let chunk = record.chunk.data;
    let start = usize::try_from(record.binxml_offset).ok()?;
    let binxml = chunk.get(start..start.checked_add(record.binxml_size as usize)?)?;
    Some(match flatten_binxml(chunk, binxml, plans, table, route)? {
        Some(flat) => Flattened::Event(flat),
        None => Flattened::Skipped,
    })
}

/// Flattens one record's BinXML (a slice of `chunk`); `Some(None)` when the route skips it.
fn flatten_binxml(chunk: &[u8], binxml: &[u8], plans: &mut Plans, table: &mut FieldTable, route: Option<&Buckets>) -> Option<Option<FlatEvent>> {
    let (plan, values) = match fragment(chunk, binxml, plans, 0) {
        Some(instance) => (instance.plan, instance.values),
        None => {
            // A record written without a template: its own XML, read like a definition (once:
            // no other record shares it).
            let start = (binxml.as_ptr() as usize).checked_sub(chunk.as_ptr() as usize)?;
            let plan = Reader { data: chunk, pos: start, end: start + binxml.len(), dependencies: false }.definition()?;
            (Arc::new(plan), Vec::new())
        }
    };
    let names_before = table.len();
    let mut walk = Walk { table, fields: Vec::with_capacity(32), text: &mut plans.text, values: &mut plans.values, route };
    let walked = walk.event(Node { element: &plan.root, values: &values });
    let Walk { table, fields, .. } = walk;
    // Names of a record left out are put back, as the JSON path does.
    let skip = |table: &mut FieldTable| {
        table.truncate(names_before);
        Some(None)
    };
    match walked {
        None => {
            table.truncate(names_before);
            None
        }
        Some(Walked::Skipped) => skip(table),
        Some(Walked::Event) => {
            let flat = finish_event(table, fields);
            if route.is_some_and(|r| !accepted(r, table, &flat.fields, flat.record_id.is_some())) {
                return skip(table);
            }
            Some(Some(flat))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values: the record's, and those of the instances embedded in them.

/// One substitution value.
enum Slot<'a> {
    Value(BinXmlValue<'a>),
    /// A SID's bytes (the crate's `SidRef` is built only by the crate).
    Sid(&'a [u8]),
    /// An embedded BinXML fragment: one template instance.
    Fragment(Instance<'a>),
    /// A string array: each item's UTF-16 bytes. The crate repeats the element holding it
    /// once per item; planned for positional `Data` only.
    Strings(Vec<&'a [u8]>),
}

struct Instance<'a> {
    plan: Arc<Plan>,
    values: Vec<Slot<'a>>,
}

/// Embedded fragments nest at most this deep here (the crate has its own limit).
const MAX_NESTING: usize = 8;

/// A record's BinXML or an embedded fragment (a slice of `chunk`): one template instance and
/// nothing else.
fn fragment<'a>(chunk: &'a [u8], bytes: &'a [u8], plans: &mut Plans, depth: usize) -> Option<Instance<'a>> {
    if depth > MAX_NESTING {
        return None;
    }
    // Offsets in a fragment are chunk offsets: where the fragment lies in the chunk.
    let start = (bytes.as_ptr() as usize).checked_sub(chunk.as_ptr() as usize)?;
    let end = start + bytes.len();
    if end > chunk.len() {
        return None;
    }
    let mut pos = start;
    if *chunk.get(pos)? == FRAGMENT_HEADER {
        pos += 4;
    }
    if *chunk.get(pos)? != TEMPLATE_INSTANCE {
        return None;
    }
    let definition = u32_at(chunk, pos + 6)?;
    pos += 10;
    if definition as usize == pos {
        // The definition is written here, on its first use in the chunk.
        pos = definition_span(chunk, definition)?.1;
    }
    let count = u32_at(chunk, pos)? as usize;
    pos += 4;
    let descriptors = chunk.get(pos..pos.checked_add(count.checked_mul(4)?)?)?;
    pos += descriptors.len();
    let mut values = Vec::with_capacity(count);
    for descriptor in descriptors.chunks_exact(4) {
        let size = usize::from(u16::from_le_bytes([descriptor[0], descriptor[1]]));
        let raw = chunk[..end].get(pos..pos + size)?;
        pos += size;
        values.push(decode(descriptor[2], raw, chunk, plans, depth)?);
    }
    // Only the end of the fragment may follow.
    if pos < end && chunk[pos] != END_OF_STREAM {
        return None;
    }
    Some(Instance { plan: plans.plan(chunk, definition)?, values })
}

/// A substitution value, from its type and bytes as the crate decodes them.
fn decode<'a>(ty: u8, raw: &'a [u8], chunk: &'a [u8], plans: &mut Plans, depth: usize) -> Option<Slot<'a>> {
    use BinXmlValue::*;
    fn le<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
        raw.try_into().ok()
    }
    Some(Slot::Value(match ty {
        0x00 => NullType,
        // Up to the first NUL, which the crate's decoding drops with what follows.
        0x01 if raw.len().is_multiple_of(2) => {
            let chars = raw.chunks_exact(2).position(|u| u == [0, 0]).unwrap_or(raw.len() / 2);
            StringType(Utf16LeSlice::new(&raw[..2 * chars], chars))
        }
        0x03 => Int8Type(i8::from_le_bytes(le(raw)?)),
        0x04 => UInt8Type(u8::from_le_bytes(le(raw)?)),
        0x05 => Int16Type(i16::from_le_bytes(le(raw)?)),
        0x06 => UInt16Type(u16::from_le_bytes(le(raw)?)),
        0x07 => Int32Type(i32::from_le_bytes(le(raw)?)),
        0x08 => UInt32Type(u32::from_le_bytes(le(raw)?)),
        0x09 => Int64Type(i64::from_le_bytes(le(raw)?)),
        0x0a => UInt64Type(u64::from_le_bytes(le(raw)?)),
        // Booleans other than 0 and 1 the crate keeps as integers.
        0x0d => match i32::from_le_bytes(le(raw)?) {
            0 => BoolType(false),
            1 => BoolType(true),
            _ => return None,
        },
        0x0e => BinaryType(raw),
        0x0f => GuidType(le(raw)?),
        0x11 => FileTimeType(FileTime(u64::from_le_bytes(le(raw)?))),
        0x12 => SysTimeType(SysTime::from_bytes(&le(raw)?)),
        0x13 => return Some(Slot::Sid(raw)),
        0x14 => HexInt32Type(u32::from_le_bytes(le(raw)?)),
        0x15 => HexInt64Type(u64::from_le_bytes(le(raw)?)),
        // NUL-terminated strings one after the other.
        0x81 if raw.len().is_multiple_of(2) && (raw.is_empty() || raw.ends_with(&[0, 0])) => {
            let mut items = Vec::new();
            let mut start = 0;
            for (i, unit) in raw.chunks_exact(2).enumerate() {
                if unit == [0, 0] {
                    items.push(&raw[start..2 * i]);
                    start = 2 * i + 2;
                }
            }
            return Some(Slot::Strings(items));
        }
        0x21 if raw.is_empty() => BinXmlType(raw),
        0x21 => return Some(Slot::Fragment(fragment(chunk, raw, plans, depth + 1)?)),
        _ => return None,
    }))
}

/// The crate's notion of an empty value (`is_optional_empty`): no content when rendered.
fn is_empty(slot: &Slot<'_>) -> bool {
    match slot {
        Slot::Value(BinXmlValue::NullType) => true,
        Slot::Value(BinXmlValue::StringType(s)) => s.is_empty(),
        Slot::Value(BinXmlValue::BinaryType(b) | BinXmlValue::BinXmlType(b)) => b.is_empty(),
        Slot::Sid(b) => b.is_empty(),
        Slot::Strings(items) => items.is_empty(),
        _ => false,
    }
}

/// A SID as the crate writes it: `S-revision-authority-sub…`.
fn write_sid(out: &mut String, sid: &[u8]) {
    let &[revision, count, a0, a1, a2, a3, a4, a5, ref subs @ ..] = sid else {
        out.push_str("S-?");
        return;
    };
    let authority = u64::from_be_bytes([0, 0, a0, a1, a2, a3, a4, a5]);
    let _ = write!(out, "S-{revision}-{authority}");
    for sub in subs.chunks_exact(4).take(usize::from(count)) {
        let _ = write!(out, "-{}", u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]]));
    }
}

// ---------------------------------------------------------------------------------------------
// Plans: template definitions read into element trees.

/// One template definition, read into the shape its records share.
#[derive(Debug)]
pub struct Plan {
    root: Element,
}

#[derive(Debug)]
struct Element {
    name: Box<str>,
    /// The value index whose null leaves this element out.
    dependency: Option<u16>,
    attributes: Vec<Attribute>,
    /// Child elements and holes (which may hold text, a fragment, or nothing).
    children: Vec<Child>,
    /// Literal text, only in an element with no children.
    text: Option<Box<str>>,
    /// Worked out once per definition: whether `children` holds holes (whose fragments add
    /// elements only a record knows), whether its child elements' names are all different,
    /// how its `Data` children are written when it is `EventData`/`UserData`, and whether the
    /// keys of its children are all different then.
    has_holes: bool,
    names_unique: bool,
    data_form: DataForm,
    data_keys_unique: bool,
    /// Whether its `Name` attribute is there (never planned outside `Data` and `System`).
    has_name_attribute: bool,
}

/// How the crate writes the `Data` children of `EventData` and `UserData` (MS-EVEN6 event
/// data): each under its `Name` (`"N": value`) when one has a name, else all their values
/// together where the first one is (`"Data": {"#text": [values]}`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum DataForm {
    /// Every `Data` child has a literal, non-empty `Name`.
    Named,
    /// No `Data` child has a `Name`.
    Positional,
    /// Some do, some do not, or a name is a substitution: not planned.
    Mixed,
}

#[derive(Debug)]
struct Attribute {
    name: Box<str>,
    /// `Element_Attribute`, the field name of an attribute of a `System` element.
    field: Box<str>,
    value: Piece,
}

impl Element {
    fn new(name: Box<str>, dependency: Option<u16>) -> Element {
        Element {
            name,
            dependency,
            attributes: Vec::new(),
            children: Vec::new(),
            text: None,
            has_holes: false,
            names_unique: true,
            data_form: DataForm::Named,
            data_keys_unique: true,
            has_name_attribute: false,
        }
    }

    /// Works out the flags once the element is read.
    fn finish(mut self) -> Option<Element> {
        if self.text.is_some() && !self.children.is_empty() {
            return None;
        }
        let elements = || self.children.iter().filter_map(|c| if let Child::Element(e) = c { Some(e) } else { None });
        self.has_holes = self.children.iter().any(|c| matches!(c, Child::Hole(_)));
        self.names_unique = unique(elements().map(|e| &*e.name)).is_some();
        let data = || elements().filter(|e| &*e.name == "Data");
        self.data_form = if data().all(|e| literal_name(e).is_some_and(|n| !n.is_empty())) {
            DataForm::Named
        } else if data().all(|e| !e.attributes.iter().any(|a| &*a.name == "Name")) {
            DataForm::Positional
        } else {
            DataForm::Mixed
        };
        let mut keys: Vec<&str> = elements().filter(|e| &*e.name != "Data").map(|e| &*e.name).collect();
        match self.data_form {
            DataForm::Named => keys.extend(data().filter_map(literal_name)),
            _ => keys.extend(data().next().map(|_| "Data")),
        }
        self.data_keys_unique = unique(keys.into_iter()).is_some();
        self.has_name_attribute = self.attributes.iter().any(|a| &*a.name == "Name");
        unique(self.attributes.iter().map(|a| &*a.name))?;
        Some(self)
    }
}

#[derive(Debug)]
enum Child {
    Element(Element),
    Hole(u16),
}

#[derive(Debug)]
enum Piece {
    Literal(Box<str>),
    /// A substitution: the value with this index.
    Hole(u16),
}

// BinXML tokens (MS-EVEN6 2.2.12); 0x40 is a "more follows" bit on some of them.
const END_OF_STREAM: u8 = 0x00;
const OPEN_START_ELEMENT: u8 = 0x01;
const CLOSE_START_ELEMENT: u8 = 0x02;
const CLOSE_EMPTY_ELEMENT: u8 = 0x03;
const END_ELEMENT: u8 = 0x04;
const VALUE: u8 = 0x05;
const ATTRIBUTE: u8 = 0x06;
const TEMPLATE_INSTANCE: u8 = 0x0c;
const NORMAL_SUBSTITUTION: u8 = 0x0d;
const OPTIONAL_SUBSTITUTION: u8 = 0x0e;
const FRAGMENT_HEADER: u8 = 0x0f;
const MORE: u8 = 0x40;
/// The value type of a UTF-16 string.
const STRING_TYPE: u8 = 0x01;
/// A `DependencyId` meaning none.
const NO_DEPENDENCY: u16 = 0xffff;
/// A definition's header before its BinXML: next definition offset (u32), GUID, data size (u32).
const DEFINITION_HEADER: usize = 24;
/// Deeper definitions are left to the crate (which has its own depth limits).
const MAX_DEPTH: usize = 64;

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Where the BinXML of the definition at `offset` lies in the chunk.
fn definition_span(chunk: &[u8], offset: u32) -> Option<(usize, usize)> {
    let offset = offset as usize;
    let size = u32_at(chunk, offset.checked_add(20)?)? as usize;
    let start = offset + DEFINITION_HEADER;
    let end = start.checked_add(size)?;
    (end <= chunk.len()).then_some((start, end))
}

/// The stored UTF-16 bytes of the name at `offset` (after its next-offset u32, hash u16 and
/// character count u16).
fn name_bytes(chunk: &[u8], offset: u32) -> Option<&[u8]> {
    let offset = offset as usize;
    let chars = usize::from(u16_at(chunk, offset.checked_add(6)?)?);
    chunk.get(offset + 8..offset + 8 + 2 * chars)
}

/// The canonical form of the definition in `chunk[start..end]` into `out`: its tokens, with
/// the names in place of name offsets and without the sizes that count inline names. `None`
/// for tokens [`Reader`] does not plan either.
fn canonical(chunk: &[u8], start: usize, end: usize, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let data = &chunk[..end];
    let mut pos = start;
    // A name reference at `pos`: the name's length and characters instead of its offset.
    let name = |pos: &mut usize, out: &mut Vec<u8>| -> Option<()> {
        let offset = u32_at(data, *pos)?;
        *pos += 4;
        let raw = name_bytes(chunk, offset)?;
        if offset as usize == *pos {
            *pos += 8 + raw.len() + 2;
        }
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        out.extend_from_slice(raw);
        Some(())
    };
    while pos < end {
        let token = data[pos];
        out.push(token);
        pos += 1;
        match token {
            FRAGMENT_HEADER => {
                out.extend_from_slice(data.get(pos..pos + 3)?);
                pos += 3;
            }
            t if t & !MORE == OPEN_START_ELEMENT => {
                out.extend_from_slice(data.get(pos..pos + 2)?);
                pos += 6;
                name(&mut pos, out)?;
                if t & MORE != 0 {
                    pos += 4;
                }
            }
            t if t & !MORE == ATTRIBUTE => name(&mut pos, out)?,
            t if t & !MORE == VALUE => {
                if *data.get(pos)? != STRING_TYPE {
                    return None;
                }
                let chars = usize::from(u16_at(data, pos + 1)?);
                let value = data.get(pos..pos + 3 + 2 * chars)?;
                out.extend_from_slice(value);
                pos += value.len();
            }
            NORMAL_SUBSTITUTION | OPTIONAL_SUBSTITUTION => {
                out.extend_from_slice(data.get(pos..pos + 3)?);
                pos += 3;
            }
            END_OF_STREAM | CLOSE_START_ELEMENT | CLOSE_EMPTY_ELEMENT | END_ELEMENT => {}
            _ => return None,
        }
    }
    (pos == end).then_some(())
}

fn utf16(bytes: &[u8]) -> Option<Box<str>> {
    let units = bytes.chunks_exact(2).map(|u| u16::from_le_bytes([u[0], u[1]]));
    char::decode_utf16(units).collect::<Result<String, _>>().ok().map(String::into_boxed_str)
}

fn is_substitution(token: u8) -> bool {
    token == NORMAL_SUBSTITUTION || token == OPTIONAL_SUBSTITUTION
}

/// Reads one definition's tokens; every method gives `None` for what is not planned.
struct Reader<'d> {
    data: &'d [u8],
    pos: usize,
    end: usize,
    /// Element starts carry a `DependencyId` in template definitions, not in records.
    dependencies: bool,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.data[..self.end].get(self.pos).copied()
    }

    fn u8(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        let v = u16_at(&self.data[..self.end], self.pos)?;
        self.pos += 2;
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        let v = u32_at(&self.data[..self.end], self.pos)?;
        self.pos += 4;
        Some(v)
    }

    /// A name reference: an offset into the chunk's data, the name itself written right there
    /// when this is its first use in the chunk.
    fn name(&mut self) -> Option<Box<str>> {
        let offset = self.u32()?;
        let raw = name_bytes(self.data, offset)?;
        if offset as usize == self.pos {
            // Next-offset, hash, count, the characters and a NUL.
            self.pos += 8 + raw.len() + 2;
        }
        utf16(raw)
    }

    fn definition(&mut self) -> Option<Plan> {
        if self.peek()? == FRAGMENT_HEADER {
            self.pos += 4;
        }
        let token = self.u8()?;
        if token & !MORE != OPEN_START_ELEMENT {
            return None;
        }
        let root = self.element(token, 0)?;
        if self.pos < self.end && self.u8()? != END_OF_STREAM {
            return None;
        }
        Some(Plan { root })
    }

    fn element(&mut self, token: u8, depth: usize) -> Option<Element> {
        if depth > MAX_DEPTH {
            return None;
        }
        let dependency = if self.dependencies { Some(self.u16()?).filter(|d| *d != NO_DEPENDENCY) } else { None };
        let _size = self.u32()?;
        let name = self.name()?;
        if token & MORE != 0 {
            let _attribute_bytes = self.u32()?;
        }
        let mut element = Element::new(name, dependency);
        loop {
            match self.u8()? {
                t if t & !MORE == ATTRIBUTE => {
                    let name = self.name()?;
                    let value = self.piece()?;
                    let field = format!("{}_{name}", element.name).into();
                    element.attributes.push(Attribute { name, field, value });
                }
                CLOSE_START_ELEMENT => break,
                CLOSE_EMPTY_ELEMENT => return element.finish(),
                _ => return None,
            }
        }
        loop {
            match self.peek()? {
                t if t & !MORE == OPEN_START_ELEMENT => {
                    self.pos += 1;
                    element.children.push(Child::Element(self.element(t, depth + 1)?));
                }
                t if is_substitution(t) => match self.piece()? {
                    Piece::Hole(index) => element.children.push(Child::Hole(index)),
                    Piece::Literal(_) => return None,
                },
                t if t & !MORE == VALUE => match self.piece()? {
                    Piece::Literal(text) if element.text.is_none() => element.text = Some(text),
                    _ => return None,
                },
                END_ELEMENT => {
                    self.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
        element.finish()
    }

    /// An attribute's value or a piece of content: one literal string or one substitution.
    /// Two side by side (text around a substitution) are not planned.
    fn piece(&mut self) -> Option<Piece> {
        let piece = match self.u8()? {
            t if t & !MORE == VALUE => {
                if self.u8()? != STRING_TYPE {
                    return None;
                }
                let chars = usize::from(self.u16()?);
                let bytes = self.data[..self.end].get(self.pos..self.pos + 2 * chars)?;
                self.pos += 2 * chars;
                Piece::Literal(utf16(bytes)?)
            }
            t if is_substitution(t) => {
                let index = self.u16()?;
                let _value_type = self.u8()?;
                Piece::Hole(index)
            }
            _ => return None,
        };
        match self.peek()? {
            t if t & !MORE == VALUE || is_substitution(t) => None,
            _ => Some(piece),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records: values through plans.

/// An element of a record: a plan's element with the values of its instance.
#[derive(Copy, Clone)]
struct Node<'v, 'a> {
    element: &'v Element,
    values: &'v [Slot<'a>],
}

/// An element's content with a record's values in place.
enum Content<'v, 'a> {
    Empty,
    Literal(&'v str),
    Value(&'v Slot<'a>),
}

impl<'v, 'a> Node<'v, 'a> {
    fn name(&self) -> &'v str {
        &self.element.name
    }

    fn is_left_out(&self, element: &Element) -> bool {
        element.dependency.and_then(|d| self.values.get(usize::from(d))).is_some_and(|v| matches!(v, Slot::Value(BinXmlValue::NullType)))
    }

    fn piece(&self, piece: &'v Piece) -> Content<'v, 'a> {
        match piece {
            Piece::Literal(text) if text.is_empty() => Content::Empty,
            Piece::Literal(text) => Content::Literal(text),
            Piece::Hole(index) => self.hole(*index),
        }
    }

    /// A hole past the values gives nothing, as in the crate.
    fn hole(&self, index: u16) -> Content<'v, 'a> {
        match self.values.get(usize::from(index)) {
            Some(value) if !is_empty(value) => Content::Value(value),
            _ => Content::Empty,
        }
    }

    /// The child elements in this record: left-out ones skipped, holes holding a fragment
    /// replaced by the fragment's element.
    fn elements(self) -> impl Iterator<Item = Node<'v, 'a>> {
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
    fn layout(&self) -> Option<(Content<'v, 'a>, bool)> {
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
    fn names_unique(self) -> bool {
        if !self.element.has_holes {
            return self.element.names_unique;
        }
        let names: Vec<&str> = self.elements().map(|e| e.name()).collect();
        unique(names.into_iter()).is_some()
    }
}

/// What a record is flattened with: the field table, the fields so far, and scratch text.
struct Walk<'t> {
    table: &'t mut FieldTable,
    fields: Vec<(FieldKey, Value)>,
    text: &'t mut String,
    values: &'t mut Values,
    route: Option<&'t Buckets>,
}

/// How a record's walk ended.
enum Walked {
    Event,
    /// Left out once `System` was read: its bucket is one the route does not accept.
    Skipped,
}

impl Walk<'_> {
    /// The field value of content: null when empty, numbers and booleans typed, everything
    /// else text as the crate renders it.
    fn value(&mut self, content: &Content) -> Option<Value> {
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
            BinXmlValue::Int8Type(n) => write_integer(text, i64::from(*n) as u64, *n < 0),
            BinXmlValue::UInt8Type(n) => write_integer(text, u64::from(*n), false),
            BinXmlValue::Int16Type(n) => write_integer(text, i64::from(*n) as u64, *n < 0),
            BinXmlValue::UInt16Type(n) => write_integer(text, u64::from(*n), false),
            BinXmlValue::Int32Type(n) => write_integer(text, i64::from(*n) as u64, *n < 0),
            BinXmlValue::UInt32Type(n) => write_integer(text, u64::from(*n), false),
            BinXmlValue::Int64Type(n) => write_integer(text, *n as u64, *n < 0),
            BinXmlValue::UInt64Type(n) => write_integer(text, *n, false),
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

    fn push(&mut self, name: &str, value: Value) {
        push_field(self.table, &mut self.fields, name, value);
    }

    /// The parts of `<Event>`; `None` for a record the JSON path must read, among them one
    /// without a `System` that has elements (the JSON path's error to report).
    fn event(&mut self, root: Node<'_, '_>) -> Option<Walked> {
        if root.name() != "Event" || !matches!(root.layout()?, (Content::Empty, _)) || !root.names_unique() {
            return None;
        }
        let mut system = false;
        for part in root.elements() {
            if part.name() == "System" {
                self.system(part)?;
                system = true;
                if self.rejected_after_system() {
                    return Some(Walked::Skipped);
                }
            } else {
                self.data(part, true)?;
            }
        }
        system.then_some(Walked::Event)
    }

    /// Whether the route leaves the record out as soon as its `System` is read: its Channel,
    /// EventID and numeric EventRecordID are all there (later parts cannot change the bucket:
    /// the first value of a field wins) and the bucket is not one the route accepts.
    fn rejected_after_system(&self) -> bool {
        let Some(route) = self.route else { return false };
        let first = |name: &str| self.table.get(name).and_then(|key| self.fields.iter().find(|(k, _)| *k == key)).map(|(_, v)| v);
        let (Some(channel), Some(event_id), Some(record)) = (first("Channel"), first("EventID"), first("EventRecordID")) else { return false };
        record.text().trim().parse::<u64>().is_ok() && !route.accepts(channel.lower(), event_id.text().trim())
    }

    /// `System`: each element's attributes as `Tag_Attribute`, its text as `Tag`.
    fn system(&mut self, system: Node<'_, '_>) -> Option<()> {
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
    fn data(&mut self, node: Node<'_, '_>, top: bool) -> Option<()> {
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
    fn data_value(&mut self, data: Node<'_, '_>) -> Option<Value> {
        match data.layout()? {
            (_, true) => None,
            (Content::Empty, false) => Some(Value::string("")),
            (text, false) => self.value(&text),
        }
    }
}

/// The literal `Name` of a `Data` element.
fn literal_name(data: &Element) -> Option<&str> {
    match data.attributes.iter().find(|a| &*a.name == "Name") {
        Some(Attribute { value: Piece::Literal(name), .. }) => Some(name),
        _ => None,
    }
}

/// `Some` when no name repeats (the crate would number the repeats).
fn unique<'n>(names: impl Iterator<Item = &'n str>) -> Option<()> {
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

/// An integer in decimal, as JSON writes it; gives the kind of value it is.
fn write_integer(out: &mut String, magnitude_bits: u64, negative: bool) -> ValueKind {
    let mut magnitude = if negative { magnitude_bits.wrapping_neg() } else { magnitude_bits };
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if negative {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
    ValueKind::Number
}

// The crate's renderings of the common non-text values, written here without its `Display`
// (which allocates twice per value); `renderings_match_the_crates` holds them to it.

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// A GUID as Windows writes it: `{d1-d2-d3-d4[0..2]-d4[2..8]}`, lower case, the first three
/// parts little-endian.
fn write_guid(out: &mut String, bytes: &[u8; 16]) {
    const ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    out.push('{');
    for (i, &at) in ORDER.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX_LOWER[usize::from(bytes[at] >> 4)] as char);
        out.push(HEX_LOWER[usize::from(bytes[at] & 0xf)] as char);
    }
    out.push('}');
}

/// `0x` and lower-case hex digits, no leading zeros.
fn write_hex(out: &mut String, value: u64) {
    out.push_str("0x");
    let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(HEX_LOWER[((value >> (4 * shift)) & 0xf) as usize] as char);
    }
}

/// Binary as upper-case hex, two digits a byte.
fn write_binary(out: &mut String, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.push(HEX_UPPER[usize::from(b >> 4)] as char);
        out.push(HEX_UPPER[usize::from(b & 0xf)] as char);
    }
}

/// A FILETIME (100 ns ticks since 1601-01-01 UTC) as `YYYY-MM-DDTHH:MM:SS.fffffffZ`, as
/// Windows writes it: the year's last four digits, zeros for a value past `i64::MAX`.
fn write_filetime(out: &mut String, filetime: u64) {
    const TICKS_PER_SECOND: u64 = 10_000_000;
    const TICKS_PER_DAY: u64 = 86_400 * TICKS_PER_SECOND;
    if filetime > i64::MAX as u64 {
        out.push_str("0000-00-00T00:00:00.0000000Z");
        return;
    }
    let (days, ticks) = (filetime / TICKS_PER_DAY, filetime % TICKS_PER_DAY);
    let (year, month, day) = civil_date(days);
    let seconds = ticks / TICKS_PER_SECOND;
    let _ = write!(
        out,
        "{:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:07}Z",
        year % 10_000,
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60,
        ticks % TICKS_PER_SECOND
    );
}

/// The Gregorian (year, month, day) `days` after 1601-01-01: days counted from 0000-03-01 in
/// 400-year eras of 146,097 days, years starting in March so that February comes last.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // 1601-01-01 is 584,694 days after 0000-03-01.
    let from_march_0 = days + 584_694;
    let (era, day_of_era) = (from_march_0 / 146_097, from_march_0 % 146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    (era * 400 + year_of_era + u64::from(month <= 2), month, day)
}

/// UTF-16LE text up to its first NUL, as the crate renders it (unpaired surrogates replaced).
fn write_utf16(out: &mut String, bytes: &[u8]) {
    let units = &bytes[..bytes.len() & !1];
    let end = units.chunks_exact(2).position(|u| u == [0, 0]).map_or(units.len(), |i| 2 * i);
    let units = &units[..end];
    // Nearly all event text is ASCII: every unit's high byte is zero and its low byte is the
    // character, copied over through a small buffer without decoding.
    if units.chunks_exact(2).all(|u| u[1] == 0 && u[0] < 0x80) {
        out.reserve(units.len() / 2);
        let mut buffer = [0u8; 256];
        for block in units.chunks(2 * buffer.len()) {
            let n = block.len() / 2;
            for (b, u) in buffer.iter_mut().zip(block.chunks_exact(2)) {
                *b = u[0];
            }
            out.push_str(std::str::from_utf8(&buffer[..n]).expect("ASCII"));
        }
        return;
    }
    let decoded = units.chunks_exact(2).map(|u| u16::from_le_bytes([u[0], u[1]]));
    out.extend(char::decode_utf16(decoded).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)));
}

#[cfg(test)]
mod tests {
    use super::{write_binary, write_filetime, write_guid, write_hex};
    use crate::corpus::Buckets;
    use crate::event::FieldTable;
    use crate::evtx::{is_intact, load_evtx_bytes, load_evtx_bytes_routed};
    use crate::json_events::flatten_event;
    use crate::json_events::stream::{Streamed, flatten_record};
    use crate::loaded_file::LoadedFile;

    /// A file's events as (record id, timestamp, [(name, kind, text)] in field order).
    type Seen = Vec<(u64, Option<i64>, Vec<(String, String, String)>)>;

    fn seen(loaded: &LoadedFile) -> Seen {
        let table: &FieldTable = &loaded.table;
        let event = |e: &crate::event::Event| {
            let fields = e.fields().iter().map(|(k, v)| (table.name(*k).to_string(), format!("{:?}", v.kind()), v.text().to_string())).collect();
            (e.record_id, e.timestamp_us, fields)
        };
        loaded.events.iter().map(event).collect()
    }

    /// The events of an intact file the way they were read before templates: every record
    /// rendered to JSON by the crate and flattened from that.
    fn through_json(name: &str, bytes: &[u8], route: Option<&Buckets>) -> LoadedFile {
        let mut loaded = LoadedFile::new(name);
        let settings = evtx::ParserSettings::new().indent(false).separate_json_attributes(false).num_threads(0);
        let mut parser = evtx::EvtxParser::from_read_seek(std::io::Cursor::new(bytes)).unwrap().with_configuration(settings);
        for record in parser.records_json_bytes().flatten() {
            let flat = match flatten_record(&record.data, &mut loaded.table, route) {
                Streamed::Event(flat) => Some(flat),
                Streamed::GiveUp => serde_json::from_slice(&record.data).ok().and_then(|json| flatten_event(&json, &mut loaded.table).ok()),
                Streamed::Skipped => {
                    loaded.skipped += 1;
                    None
                }
            };
            if let Some(flat) = flat {
                loaded.push(flat);
            }
        }
        loaded.finish();
        loaded
    }

    /// GUIDs, hex numbers, binary and FILETIMEs are written as the crate renders them.
    #[test]
    fn renderings_match_the_crates() {
        use evtx::binxml::value_variant::{BinXmlValue, FileTime};
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let check = |value: BinXmlValue, write: &dyn Fn(&mut String)| {
            let mut ours = String::new();
            write(&mut ours);
            assert_eq!(ours, value.to_string(), "{value:?}");
        };
        let mut times = vec![0, 1, 116_444_736_000_000_000, 2_650_467_743_999_999_999, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX];
        times.extend((0..2000).map(|_| next() % (i64::MAX as u64)));
        times.extend((0..2000).map(|_| 130_000_000_000_000_000 + next() % 10_000_000_000_000_000));
        for t in times {
            check(BinXmlValue::FileTimeType(FileTime(t)), &|s| write_filetime(s, t));
        }
        for n in [0, 1, 15, 16, 255, u64::from(u32::MAX), u64::MAX].into_iter().chain((0..500).map(|_| next() >> (next() % 64))) {
            check(BinXmlValue::HexInt64Type(n), &|s| write_hex(s, n));
            check(BinXmlValue::HexInt32Type(n as u32), &|s| write_hex(s, u64::from(n as u32)));
        }
        for _ in 0..200 {
            let guid: [u8; 16] = std::array::from_fn(|_| next() as u8);
            check(BinXmlValue::GuidType(guid), &|s| write_guid(s, &guid));
            let bytes: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
            check(BinXmlValue::BinaryType(&bytes), &|s| write_binary(s, &bytes));
        }
    }

    /// The template path's fields are the JSON path's, for every record of every intact corpus
    /// file: names, kinds, text, order, and the order names enter the file's table.
    #[test]
    fn every_corpus_record_flattens_as_through_json() {
        let root = sigmaforge_data::for_tests().join("evtx");
        let files = crate::corpus::collect_event_files(&root).unwrap();
        let (mut events, mut from_templates, mut checked, mut skipped) = (0, 0, 0, 0);
        let mut route = Buckets::default();
        route.add("security", Some(&["4688".to_string(), "4624".to_string()]));
        route.add("microsoft-windows-sysmon/operational", Some(&["1".to_string()]));
        route.add("system", None);
        for file in files.iter().filter(|f| f.path.extension().is_some_and(|e| e == "evtx")) {
            let bytes = std::fs::read(&file.path).unwrap();
            if !is_intact(&bytes) {
                continue;
            }
            checked += 1;
            let loaded = load_evtx_bytes(&file.name, bytes.clone());
            let reference = through_json(&file.name, &bytes, None);
            // Routed, as a hunt reads: the same records left out, the same names put back.
            let (routed, routed_reference) =
                (load_evtx_bytes_routed(&file.name, &bytes, Some(&route)), through_json(&file.name, &bytes, Some(&route)));
            assert_eq!(seen(&routed), seen(&routed_reference), "{}: routed", file.name);
            assert_eq!(
                (routed.skipped, routed.table.names().collect::<Vec<_>>()),
                (routed_reference.skipped, routed_reference.table.names().collect()),
                "{}: routed",
                file.name
            );
            skipped += routed.skipped;
            let (fast, json) = (seen(&loaded), seen(&reference));
            assert_eq!(fast.len(), json.len(), "{}: event count", file.name);
            for (a, b) in fast.iter().zip(&json) {
                if a != b {
                    let at = a.2.iter().zip(&b.2).position(|(x, y)| x != y).unwrap_or(a.2.len().min(b.2.len()));
                    panic!(
                        "{} record {}: fields differ from #{at}: templates {:?}, JSON {:?}",
                        file.name,
                        b.0,
                        &a.2[at.min(a.2.len())..],
                        &b.2[at.min(b.2.len())..]
                    );
                }
            }
            assert_eq!(loaded.table.names().collect::<Vec<_>>(), reference.table.names().collect::<Vec<_>>(), "{}: names in table order", file.name);
            events += loaded.events.len();
            from_templates += loaded.from_templates as usize;
        }
        eprintln!("{checked} intact files, {events} events, {from_templates} straight from templates; routed: {skipped} left out");
        assert!(skipped > 15_000 && (skipped as usize) < events, "{skipped} left out by the route");
        assert!(checked > 550 && events > 25_000, "{checked} files, {events} events");
        // All but a few dozen records (44 when this was written: repeated `Data` names, text
        // beside elements, ...) are of shapes the plans cover; those go through JSON.
        assert!(from_templates * 1000 > events * 995, "only {from_templates} of {events} events straight from templates");
    }
}
