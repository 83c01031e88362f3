//! EVTX files through the `evtx` crate (the parser Chainsaw and Hayabusa use), with recovery of
//! damaged files around it.
//!
//! Records are flattened straight from their BinXML template instances ([`template`]: each
//! template definition read once into a plan, each record's values put through it), without
//! the crate. A chunk holding a record no plan covers is parsed by the crate instead, and that
//! record rendered to compact JSON and flattened while it is read ([`crate::json_events::stream`],
//! the same fields as [`crate::json_events::flatten_event`], which it falls back to). Both give
//! the fields evtx_dump's JSON does, so EVTX and JSON inputs give identical events. With a route
//! ([`load_evtx_bytes_routed`]), a record whose (Channel, EventID) no rule reads is dropped.
//! Events are named by `System.EventRecordID` from the record's XML, not by the record header's
//! id (they differ in 22,472 of the 25,062 corpus records: most sample files are exports whose
//! header ids restart at 1).
//!
//! Loss is counted, never silent. Every chunk's header and record CRC32s are checked first
//! ([`chunk::ChunkSlot`]). A file whose chunks are all intact is read by the crate as it is. In a
//! file with a damaged, truncated or blank chunk, intact chunks are still read by the crate, and
//! each damaged one is scanned for complete records (signature `**\0\0`, size, trailing size
//! copy), given a rebuilt header, and read by the crate from that. The records the file should
//! hold are known from the record-number ranges of the headers whose CRC32 matches, the records
//! read and the file header's next record number; the ones no readable record holds are
//! reported as lost. Exact duplicate records (a chunk stored twice) are dropped by
//! [`LoadedFile::push`]. Everything ends up in the file's [`crate::loaded_file::FileIntegrity`].
//!
//! Why not only the crate's own `validate_checksums` / `recover_records`: the first skips a
//! whole chunk for one flipped bit, and the second trusts the chunk header, which is what a
//! damaged chunk may have lost.

mod chunk;
mod template;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use evtx::{EvtxChunk, EvtxChunkData, EvtxChunkHeader, EvtxFileHeader, EvtxRecord, HeaderFlags, ParserSettings};

use crate::corpus::{Buckets, LoadedFile};
use crate::json_events::stream::{Streamed, flatten_record};
use crate::json_events::{EventParseError, flatten_event};
use crate::loaded_file::{Checksum, ChunkDamage};
use chunk::{CHUNK_SIZE, ChunkSlot, FILE_HEADER_SIZE};
use template::{Flattened, Plans};

/// Parses an EVTX file held in memory. `name` is the name events and warnings report.
pub fn load_evtx_bytes(name: &str, bytes: Vec<u8>) -> LoadedFile {
    load(name, &bytes, false, None)
}

/// [`load_evtx_bytes`], keeping only the records whose (Channel, EventID) bucket `route`
/// accepts (all without a route); the others are counted in [`LoadedFile::skipped`].
pub fn load_evtx_bytes_routed(name: &str, bytes: &[u8], route: Option<&Buckets>) -> LoadedFile {
    load(name, bytes, false, route)
}

/// [`load_evtx_bytes_routed`], optionally reading even an intact file chunk by chunk (the tests
/// check that both paths give the same events).
fn load(name: &str, bytes: &[u8], always_by_chunk: bool, route: Option<&Buckets>) -> LoadedFile {
    let mut loaded = LoadedFile::new(name);
    if bytes.is_empty() {
        loaded.warn("empty file (no EVTX header); skipped".into());
        loaded.finish();
        return loaded;
    }
    // The evtx crate is meant never to panic on bad input; if it ever does, one bad file must not
    // take the hunt down (natively; in Wasm a panic traps and the host replaces the instance).
    let outcome = catch_unwind(AssertUnwindSafe(|| read_file(&mut loaded, bytes, always_by_chunk, route)));
    if outcome.is_err() {
        let kept = loaded.events.len();
        loaded.warn(format!("the EVTX parser failed on this file; kept the {kept} records read before the failure"));
    }
    loaded.finish();
    loaded
}

fn settings() -> ParserSettings {
    ParserSettings::new().indent(false).separate_json_attributes(false).num_threads(0)
}

/// Records read so far: the header ids of the ones kept or skipped, and the ones that could not
/// be read.
struct Records<'l, 'r> {
    loaded: &'l mut LoadedFile,
    header_ids: Vec<u64>,
    failed: usize,
    first_error: Option<String>,
    route: Option<&'r Buckets>,
    /// The template plans of this file's definitions.
    plans: Plans,
    /// A chunk's events while it is read straight from its templates.
    chunk_events: Vec<(u64, Flattened)>,
}

impl Records<'_, '_> {
    /// Flattens one record: from its template instance where it has a plan, else through the
    /// crate's JSON rendering. Returns whether it gave an event (a duplicate or a skipped
    /// record counts).
    fn add_record(&mut self, record: EvtxRecord<'_>) -> bool {
        let header_id = record.event_record_id;
        match template::flatten(&record, &mut self.plans, &mut self.loaded.table, self.route) {
            Some(flattened) => {
                self.keep(header_id, flattened);
                true
            }
            None => match record.into_json_bytes() {
                Ok(r) => self.add(r.event_record_id, &r.data),
                Err(err) => {
                    self.fail(err.to_string());
                    false
                }
            },
        }
    }

    /// Reads an intact chunk straight from its records' templates, without the crate parsing
    /// it; `false` (and nothing added) when some record needs the crate.
    fn read_chunk_from_templates(&mut self, data: &[u8]) -> bool {
        let Ok(header) = EvtxChunkHeader::from_bytes(data) else { return false };
        let names_before = self.loaded.table.len();
        let mut events = std::mem::take(&mut self.chunk_events);
        events.clear();
        let whole = template::flatten_chunk(data, &header, &mut self.plans, &mut self.loaded.table, self.route, &mut events);
        if !whole {
            self.loaded.table.truncate(names_before);
        } else {
            for (header_id, flattened) in events.drain(..) {
                self.keep(header_id, flattened);
            }
        }
        self.chunk_events = events;
        whole
    }

    /// Keeps what the template path made of the record with this header id.
    fn keep(&mut self, header_id: u64, flattened: Flattened) {
        match flattened {
            Flattened::Event(flat) => {
                self.loaded.from_templates += 1;
                self.loaded.push(flat);
            }
            Flattened::Skipped => self.loaded.skipped += 1,
        }
        self.header_ids.push(header_id);
    }

    /// Flattens one rendered record (streaming; through a `serde_json::Value` where streaming
    /// gives up); returns whether it gave an event (a duplicate or a skipped record counts).
    fn add(&mut self, header_id: u64, json: &[u8]) -> bool {
        let flat = match flatten_record(json, &mut self.loaded.table, self.route) {
            Streamed::Event(flat) => Ok(flat),
            Streamed::Skipped => {
                self.loaded.skipped += 1;
                self.header_ids.push(header_id);
                return true;
            }
            Streamed::GiveUp => {
                serde_json::from_slice(json).map_err(EventParseError::from).and_then(|json| flatten_event(&json, &mut self.loaded.table))
            }
        };
        match flat {
            Ok(flat) => {
                self.loaded.push(flat);
                self.header_ids.push(header_id);
                true
            }
            Err(err) => {
                self.fail(format!("record {header_id}: {err}"));
                false
            }
        }
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Whether `bytes` are a whole, undamaged EVTX file: a valid header, every announced chunk
/// present with matching checksums. Only such a file may be left unread by a filter, so that a
/// damaged file is always read and reported.
pub fn is_intact(bytes: &[u8]) -> bool {
    let Some(header) = EvtxFileHeader::from_bytes(bytes).ok().filter(|h| h.validate_checksum()) else { return false };
    let announced = u64::from(header.chunk_count);
    let complete = bytes.len().saturating_sub(FILE_HEADER_SIZE) / CHUNK_SIZE;
    (complete as u64) >= announced
        && (0..).map_while(|n| ChunkSlot::read(bytes, n)).filter(|s| !(s.is_blank() && s.number >= announced)).all(|s| s.is_intact())
}

fn read_file(loaded: &mut LoadedFile, bytes: &[u8], always_by_chunk: bool, route: Option<&Buckets>) {
    let header = EvtxFileHeader::from_bytes(bytes).ok();
    let slots: Vec<ChunkSlot> = (0..).map_while(|n| ChunkSlot::read(bytes, n)).collect();
    if header.is_none() && slots.iter().all(|s| s.header_checksum.is_none()) {
        loaded.warn("not a readable EVTX file (no EVTX file or chunk signature); skipped".into());
        return;
    }
    loaded.integrity.header_checksum = Some(match &header {
        Some(h) if h.flags.contains(HeaderFlags::NO_CRC32) => Checksum::NotStored,
        Some(h) if h.validate_checksum() => Checksum::Ok,
        _ => Checksum::Mismatch,
    });
    let trusted_header = header.as_ref().filter(|h| h.validate_checksum());
    if trusted_header.is_none() {
        loaded.warn("the file header is damaged (bad signature or CRC32); chunks were read at their fixed offsets".into());
    }
    // Without a trusted header, every chunk slot in the file counts as announced.
    let announced = trusted_header.map_or(slots.len() as u64, |h| u64::from(h.chunk_count));
    let complete = bytes.len().saturating_sub(FILE_HEADER_SIZE) / CHUNK_SIZE;
    if (complete as u64) < announced {
        loaded.warn(format!(
            "the file is truncated: its header announces {announced} chunks of records but only {complete} are complete; \
             the complete records of a cut chunk are recovered, the rest are lost"
        ));
    }
    // Blank slots past the announced chunks are preallocated space, not damage.
    let counted = |s: &&ChunkSlot| !(s.is_blank() && s.number >= announced);
    loaded.integrity.chunks = Some(slots.iter().filter(counted).count() as u64);
    loaded.integrity.chunks_intact = Some(slots.iter().filter(|s| s.is_intact()).count() as u64);

    let mut records =
        Records { loaded, header_ids: Vec::new(), failed: 0, first_error: None, route, plans: Plans::default(), chunk_events: Vec::new() };
    let all_intact = slots.iter().filter(counted).all(ChunkSlot::is_intact) && (complete as u64) >= announced;
    let mut outcomes = Vec::new();
    if all_intact && header.is_some() && !always_by_chunk {
        read_intact_file(&mut records, &slots);
    } else {
        outcomes = read_chunk_by_chunk(&mut records, &slots, announced, trusted_header.map(|h| h.next_record_id));
    }
    let Records { loaded, header_ids, failed, first_error, .. } = records;
    if failed > 0 {
        let first = first_error.unwrap_or_default();
        loaded.warn(format!("skipped {failed} records that could not be parsed (first: {first})"));
    }
    count_lost(loaded, &slots, header_ids, trusted_header.map(|h| h.next_record_id), &outcomes);
}

/// The fast path, for a file whose chunks are all intact: in the crate's order (see
/// [`chunk_order`]), each chunk is read straight from its records' templates where it can be,
/// else parsed by the crate, from the bytes the slots borrow.
fn read_intact_file(records: &mut Records, slots: &[ChunkSlot]) {
    let settings = Arc::new(settings());
    for slot in chunk_order(slots) {
        if !records.read_chunk_from_templates(&slot.data) {
            read_chunk(records, slot.data.to_vec(), slot.number, None, &settings);
        }
    }
}

/// The chunks the crate's parser reads, in its order: complete, not blank, from the one whose
/// header names the lowest first record id (a log that wrapped around starts anywhere) to the
/// end of the file, then from its start.
fn chunk_order<'s, 'f>(slots: &'s [ChunkSlot<'f>]) -> impl Iterator<Item = &'s ChunkSlot<'f>> {
    let complete = slots.iter().take_while(|s| !s.is_truncated()).count();
    let slots = &slots[..complete];
    let oldest = slots.iter().enumerate().filter_map(|(i, s)| Some((s.first_record_id()?, i))).min().map_or(0, |(_, i)| i);
    slots[oldest..].iter().chain(&slots[..oldest]).filter(|s| !s.is_blank())
}

/// What one chunk gave, in record order (for counting what is lost around it).
#[derive(Copy, Clone, PartialEq, Eq)]
enum ChunkOutcome {
    /// Records were read from it, or its header names its record range.
    Known,
    /// An announced chunk that gave nothing: blank, or damaged beyond reading.
    Empty,
    /// Preallocated or leftover space past the announced chunks.
    Unused,
}

/// Reads chunk by chunk in record order, repairing damaged chunks.
/// `next_record` is the trusted file header's next record number.
fn read_chunk_by_chunk(records: &mut Records, slots: &[ChunkSlot], announced: u64, next_record: Option<u64>) -> Vec<ChunkOutcome> {
    let settings = Arc::new(settings());
    // The crate's order: from the chunk with the oldest records (a log that wrapped around
    // starts anywhere) to the end of the file, then from its start.
    let oldest = slots.iter().enumerate().filter_map(|(i, s)| Some((s.first_record_id()?, i))).min().map_or(0, |(_, i)| i);
    let mut outcomes = Vec::new();
    for slot in slots[oldest..].iter().chain(&slots[..oldest]) {
        if slot.is_blank() {
            if slot.number < announced {
                records.loaded.warn(format!("chunk {}: all zeros; its records are gone", slot.number));
                records.loaded.integrity.damaged_chunks.push(ChunkDamage { chunk: slot.number, problem: "all zeros".into(), recovered: 0 });
                outcomes.push(ChunkOutcome::Empty);
            } else {
                outcomes.push(ChunkOutcome::Unused);
            }
            continue;
        }
        if slot.is_intact() {
            read_chunk(records, slot.data.to_vec(), slot.number, None, &settings);
            outcomes.push(ChunkOutcome::Known);
            continue;
        }
        let problem = slot.problem().unwrap_or_default();
        let found = slot.live_records(next_record.filter(|n| *n > 0));
        let mut keep: Vec<u64> = found.iter().map(|r| r.2).collect();
        keep.sort_unstable();
        let recovered = match slot.repaired(&found) {
            Some(data) => read_chunk(records, data, slot.number, Some(&keep), &settings),
            None => 0,
        };
        if recovered == 0 && slot.number >= announced && slot.header_checksum.is_none() {
            // Leftover bytes past the announced chunks with nothing in them.
            outcomes.push(ChunkOutcome::Unused);
            continue;
        }
        outcomes.push(if recovered > 0 || slot.trusted_range().is_some() { ChunkOutcome::Known } else { ChunkOutcome::Empty });
        records.loaded.warn(format!("chunk {}: {problem}; recovered {recovered} complete records by scanning it for record signatures", slot.number));
        records.loaded.integrity.recovered += recovered as u64;
        records.loaded.integrity.damaged_chunks.push(ChunkDamage { chunk: slot.number, problem, recovered: recovered as u64 });
    }
    outcomes
}

/// Reads one chunk's records with the crate, keeping those whose header id is in `keep`
/// (sorted). Returns how many gave events.
fn read_chunk(records: &mut Records, data: Vec<u8>, number: u64, keep: Option<&[u64]>, settings: &Arc<ParserSettings>) -> usize {
    let mut chunk_data = match EvtxChunkData::new(data, false) {
        Ok(c) => c,
        Err(err) => {
            records.fail(format!("chunk {number}: {err}"));
            return 0;
        }
    };
    chunk_data.number = Some(number);
    let mut chunk = match chunk_data.parse(settings.clone()) {
        Ok(c) => c,
        Err(err) => {
            records.fail(format!("chunk {number}: {err}"));
            return 0;
        }
    };
    read_records(records, &mut chunk, keep)
}

/// Reads one parsed chunk's records, keeping those whose header id is in `keep` (sorted).
/// Returns how many gave events.
fn read_records(records: &mut Records, chunk: &mut EvtxChunk<'_>, keep: Option<&[u64]>) -> usize {
    records.plans.start_chunk();
    let mut read = 0;
    for record in chunk.iter() {
        match record {
            Ok(r) if keep.is_none_or(|k| k.binary_search(&r.event_record_id).is_ok()) => read += usize::from(records.add_record(r)),
            Ok(_) => {}
            Err(err) => records.fail(err.to_string()),
        }
    }
    read
}

/// Counts the records the file should hold that no readable record holds. The span of header
/// ids runs from the lowest to the highest id that a record carries or the trusted header of a
/// damaged chunk names, extended to the file header's next record number. An empty chunk (see
/// [`ChunkOutcome`]) without known records on both sides of it in record order cannot be
/// counted, and is reported as such.
fn count_lost(loaded: &mut LoadedFile, slots: &[ChunkSlot], mut ids: Vec<u64>, next_record: Option<u64>, outcomes: &[ChunkOutcome]) {
    ids.sort_unstable();
    ids.dedup();
    // An intact chunk's records are what it holds (its header range can start below them, as in
    // logs cleared and reused); a damaged one's header range says what it should hold.
    let ranges: Vec<_> = slots.iter().filter(|s| !s.is_intact()).filter_map(ChunkSlot::trusted_range).collect();
    let lo = ranges.iter().map(|r| *r.start()).chain(ids.first().copied()).min();
    let hi = ranges.iter().map(|r| *r.end()).chain(ids.last().copied()).max();
    let empty = outcomes.iter().filter(|o| **o == ChunkOutcome::Empty).count() as u64;
    let (Some(lo), Some(mut hi)) = (lo, hi) else {
        loaded.integrity.chunks_lost_uncounted = empty;
        if empty > 0 {
            loaded.warn(format!("no record could be read; the records of {empty} chunks are lost (how many is unknown)"));
        }
        return;
    };
    let header_says_more = next_record.is_some_and(|next| next > 0 && next - 1 > hi);
    if let Some(next) = next_record.filter(|_| header_says_more) {
        hi = next - 1;
    }
    let lost = (hi - lo + 1).saturating_sub(ids.len() as u64);
    let known = |o: &ChunkOutcome| *o == ChunkOutcome::Known;
    let uncounted = (0..outcomes.len())
        .filter(|&p| outcomes[p] == ChunkOutcome::Empty)
        .filter(|&p| !outcomes[..p].iter().any(known) || !(header_says_more || outcomes[p + 1..].iter().any(known)))
        .count() as u64;
    loaded.integrity.lost = lost;
    loaded.integrity.chunks_lost_uncounted = uncounted;
    if lost > 0 || uncounted > 0 {
        let more = if uncounted > 0 { format!(", and the records of {uncounted} chunks that cannot be counted") } else { String::new() };
        loaded.warn(format!("{lost} records are lost (record numbers {lo} to {hi} should be in the file; these are not){more}"));
    }
}

#[cfg(test)]
mod tests;
