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
//!
//! Layout: this module walks a chunk's records and keeps the plans; [`binxml`] reads tokens and
//! names at the byte level, [`plan`] turns a definition into a [`Plan`], [`values`] decodes a
//! record's substitution values (and embedded instances), [`walk`] puts values through a plan
//! into fields, and [`render`] writes values as the crate's text.

mod binxml;
mod plan;
mod render;
mod values;
mod walk;

use std::collections::HashMap;
use std::sync::Arc;

use evtx::binxml::value_variant::FileTime;
use evtx::{EvtxChunkHeader, EvtxRecord};

use crate::corpus::Buckets;
use crate::event::FieldTable;
use crate::json_events::FlatEvent;
use crate::json_events::stream::{accepted, finish_event};
use binxml::{canonical, definition_span, span_in, u32_at};
use plan::{Plan, Reader};
use values::fragment;
use walk::{Node, Values, Walk, Walked};

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

/// The definitions read so far on this thread, by canonical form (`None`: not planned). Files
/// of one provider share their definitions, so this is kept from file to file: the corpus has
/// 812, where reading each file's anew meant 2,173. Plans hold nothing of a
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
/// instance, appending (header id, what it gave) to `out`, in the crate's record order. `false` as soon as a record cannot be: the caller then reads the whole
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
    out: &mut Vec<(u64, Flattened)>,
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
    flatten_binxml(chunk, binxml, plans, table, route)
}

/// Flattens one record's BinXML (a slice of `chunk`); `None` when the record must go through
/// JSON (the field table is then as it was).
fn flatten_binxml(chunk: &[u8], binxml: &[u8], plans: &mut Plans, table: &mut FieldTable, route: Option<&Buckets>) -> Option<Flattened> {
    let (plan, values) = match fragment(chunk, binxml, plans, 0) {
        Some(instance) => (instance.plan, instance.values),
        None => {
            // A record written without a template: its own XML, read like a definition (once:
            // no other record shares it).
            let span = span_in(chunk, binxml)?;
            let plan = Reader { data: chunk, pos: span.start, end: span.end, dependencies: false }.definition()?;
            (Arc::new(plan), Vec::new())
        }
    };
    let names_before = table.len();
    let mut walk = Walk { table, fields: Vec::with_capacity(32), text: &mut plans.text, values: &mut plans.values, route };
    let walked = walk.event(Node { element: &plan.root, values: &values });
    let Walk { table, fields, .. } = walk;
    let flattened = match walked {
        None => None,
        Some(Walked::Skipped) => Some(Flattened::Skipped),
        Some(Walked::Event) => {
            let flat = finish_event(table, fields);
            let kept = route.is_none_or(|r| accepted(r, table, &flat.fields, flat.record_id.is_some()));
            Some(if kept { Flattened::Event(flat) } else { Flattened::Skipped })
        }
    };
    // Names of a record left out, or handed to the JSON path, are put back (as the JSON path
    // does for the records it leaves out).
    if !matches!(flattened, Some(Flattened::Event(_))) {
        table.truncate(names_before);
    }
    flattened
}

#[cfg(test)]
mod tests;
