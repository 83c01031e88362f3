//! The events of one parsed file and its integrity report: what was read, recovered, lost and
//! dropped, so that damage to an event file is always counted and said, never silent.
//!
//! Both loaders (EVTX, JSON) push their events through [`LoadedFile::push`], which drops exact
//! duplicates (a chunk or line copied twice), and end with [`LoadedFile::finish`], which names
//! events that have no `System.EventRecordID` with ids no real event of the file can have.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::corpus::LoadWarning;
use crate::event::{Event, FieldKey, FieldTable, FileId, Value};
use crate::json_events::FlatEvent;

/// Ids given to events without `System.EventRecordID` start here: Windows numbers records from 1
/// upwards, so no real log reaches 2^63. A file whose real ids do reach it gets ids above its
/// largest real one instead.
pub const SYNTHETIC_ID_BASE: u64 = 1 << 63;

/// Whether a stored CRC32 matches its data.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    Ok,
    Mismatch,
    /// The file or chunk says it stores none (the `NO_CRC32` flag).
    NotStored,
}

/// One chunk of an EVTX file that was not intact, and what became of its records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDamage {
    /// The chunk's number in the file (0 = the first chunk after the file header).
    pub chunk: u64,
    /// What is wrong with it, in words.
    pub problem: String,
    /// Records read back from it by scanning for record signatures.
    pub recovered: u64,
}

/// What loading one file found. Counts are of records (EVTX) or JSON values (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIntegrity {
    pub file: String,
    /// Events kept, after dropping duplicates.
    pub events: u64,
    /// Records read back from damaged or truncated chunks (or JSON values read past a syntax
    /// error in an array).
    pub recovered: u64,
    /// Records known to be gone: their ids are in the file's record range but no readable record
    /// holds them (EVTX), or values that are not valid JSON (JSON).
    pub lost: u64,
    /// Blank or unreadable chunks whose number of records cannot be known (so `lost` is a lower
    /// bound when this is not 0).
    pub chunks_lost_uncounted: u64,
    /// Exact copies of an event already read from the file, dropped.
    pub duplicates: u64,
    /// Events without `System.EventRecordID`, named by ids from [`SYNTHETIC_ID_BASE`] up.
    pub without_record_id: u64,
    /// EVTX only: the file header's CRC32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_checksum: Option<Checksum>,
    /// EVTX only: chunks in the file and chunks whose header and record CRC32s both match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_intact: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_chunks: Vec<ChunkDamage>,
}

impl FileIntegrity {
    /// Whether the file loaded without any loss, repair, duplicate or invented id.
    pub fn is_clean(&self) -> bool {
        self.recovered == 0
            && self.lost == 0
            && self.chunks_lost_uncounted == 0
            && self.duplicates == 0
            && self.without_record_id == 0
            && self.damaged_chunks.is_empty()
            && self.header_checksum != Some(Checksum::Mismatch)
    }

    /// One line for humans: `12 events (3 recovered), 2 lost, 1 duplicate dropped; …`.
    pub fn summary(&self) -> String {
        let mut text = format!("{} events", self.events);
        if self.recovered > 0 {
            text.push_str(&format!(" ({} recovered from damaged data)", self.recovered));
        }
        let lost = match (self.lost, self.chunks_lost_uncounted) {
            (n, 0) => format!("{n} records lost"),
            (n, c) => format!("at least {n} records lost ({c} chunks lost whole, their record count unknown)"),
        };
        text.push_str(&format!(", {lost}, {} duplicates dropped", self.duplicates));
        if self.without_record_id > 0 {
            text.push_str(&format!(", {} without EventRecordID", self.without_record_id));
        }
        if let Some(header) = self.header_checksum {
            let header = match header {
                Checksum::Ok => "ok",
                Checksum::Mismatch => "MISMATCH",
                Checksum::NotStored => "not stored",
            };
            text.push_str(&format!("; file header CRC {header}"));
        }
        if let (Some(chunks), Some(intact)) = (self.chunks, self.chunks_intact) {
            text.push_str(&format!("; {intact} of {chunks} chunks intact"));
        }
        for damage in &self.damaged_chunks {
            text.push_str(&format!("; chunk {}: {} ({} records recovered)", damage.chunk, damage.problem, damage.recovered));
        }
        text
    }
}

/// An event kept so far: its index in `events` and, once one was needed, its [`content_hash`].
type KeptEvent = (usize, Option<u64>);

/// The events kept with one (record id, timestamp): nearly always one, held without a list.
#[derive(Debug)]
enum Kept {
    One(KeptEvent),
    Many(Vec<KeptEvent>),
}

impl Kept {
    fn as_mut_slice(&mut self) -> &mut [KeptEvent] {
        match self {
            Kept::One(one) => std::slice::from_mut(one),
            Kept::Many(many) => many,
        }
    }

    fn push(&mut self, kept: KeptEvent) {
        match self {
            Kept::One(one) => *self = Kept::Many(vec![*one, kept]),
            Kept::Many(many) => many.push(kept),
        }
    }
}

/// The hash that tells an event from another with the same record id and timestamp: its record
/// id, timestamp and every field (key, kind, text), in sorted order.
fn content_hash<'v>(record_id: Option<u64>, timestamp_us: Option<i64>, fields: impl Iterator<Item = (FieldKey, &'v Value)>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record_id.hash(&mut hasher);
    timestamp_us.hash(&mut hasher);
    // Keys are stable within one file's table, so they stand for the field names here.
    let mut fields: Vec<_> = fields.map(|(k, v)| (k.0, v.kind() as u8, v.text())).collect();
    fields.sort_unstable();
    fields.hash(&mut hasher);
    hasher.finish()
}

/// The events of one file, with a field table of their own (files are parsed independently,
/// possibly in parallel; [`crate::corpus::CorpusBuilder::add`] re-keys them into the corpus
/// table).
#[derive(Debug)]
pub struct LoadedFile {
    pub name: String,
    pub table: FieldTable,
    /// Events with `FileId(0)`; the builder gives them their real file id.
    pub events: Vec<Event>,
    pub warnings: Vec<LoadWarning>,
    pub integrity: FileIntegrity,
    /// Records left out because no rule of a filtered hunt reads their (Channel, EventID)
    /// bucket (see [`crate::corpus::ChannelFilter::for_buckets`]); 0 when loading everything.
    pub skipped: u64,
    /// How many events were flattened straight from their EVTX template instances (the rest of
    /// an EVTX file's went through the evtx crate's JSON rendering).
    pub from_templates: u64,
    /// The events kept so far by (record id, timestamp): their indices in `events`, each with
    /// the hash of its content once one was needed, to drop exact copies.
    seen: HashMap<(Option<u64>, Option<i64>), Kept, foldhash::fast::RandomState>,
    /// Indices into `events` of the events that still need an id.
    unnamed: Vec<usize>,
}

impl LoadedFile {
    pub fn new(name: &str) -> Self {
        LoadedFile {
            name: name.to_string(),
            table: FieldTable::new(),
            events: Vec::new(),
            warnings: Vec::new(),
            integrity: FileIntegrity { file: name.to_string(), ..FileIntegrity::default() },
            skipped: 0,
            from_templates: 0,
            seen: HashMap::default(),
            unnamed: Vec::new(),
        }
    }

    pub fn warn(&mut self, message: String) {
        self.warnings.push(LoadWarning { file: self.name.clone(), message });
    }

    /// Adds an event, unless it is an exact copy (same record id, timestamp and fields) of one
    /// already added. Returns whether it was kept.
    pub fn push(&mut self, flat: FlatEvent) -> bool {
        // Events are first told apart by (record id, timestamp), which nearly always differ; the
        // hash of every field is computed only for events that share them (and then once each).
        let at = self.events.len();
        match self.seen.entry((flat.record_id, flat.timestamp_us)) {
            Entry::Vacant(entry) => {
                entry.insert(Kept::One((at, None)));
            }
            Entry::Occupied(mut entry) => {
                let same_key = entry.get_mut();
                let hash = content_hash(flat.record_id, flat.timestamp_us, flat.fields.iter().map(|(k, v)| (*k, v)));
                for (earlier, earlier_hash) in same_key.as_mut_slice() {
                    let event = &self.events[*earlier];
                    let earlier_hash = *earlier_hash
                        .get_or_insert_with(|| content_hash(flat.record_id, flat.timestamp_us, event.fields().iter().map(|(k, v)| (*k, v))));
                    if earlier_hash == hash {
                        self.integrity.duplicates += 1;
                        return false;
                    }
                }
                same_key.push((at, Some(hash)));
            }
        }
        if flat.record_id.is_none() {
            self.unnamed.push(self.events.len());
        }
        // Placeholder id for unnamed events until `finish` knows the file's largest real id.
        self.events.push(flat.into_event(FileId(0), 0));
        true
    }

    /// Names the events without a record id, counts the events and says what was dropped.
    /// Loaders call it once, after their last [`LoadedFile::push`].
    pub fn finish(&mut self) {
        if !self.unnamed.is_empty() {
            let unnamed: HashSet<usize> = self.unnamed.iter().copied().collect();
            let largest_real = self.events.iter().enumerate().filter(|(i, _)| !unnamed.contains(i)).map(|(_, e)| e.record_id).max();
            let base = largest_real.map_or(SYNTHETIC_ID_BASE, |m| m.saturating_add(1).max(SYNTHETIC_ID_BASE));
            for (n, &index) in self.unnamed.iter().enumerate() {
                self.events[index].record_id = base.saturating_add(n as u64);
            }
            let count = self.unnamed.len();
            self.integrity.without_record_id = count as u64;
            self.warn(format!(
                "{count} events have no System.EventRecordID; they are named {base} to {} in file order (ids no real event can have)",
                base.saturating_add(count as u64 - 1)
            ));
            self.unnamed.clear();
        }
        if self.integrity.duplicates > 0 {
            self.warn(format!("dropped {} exact duplicate records (same EventRecordID and content)", self.integrity.duplicates));
        }
        self.integrity.events = self.events.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Value;

    fn flat(table: &mut FieldTable, id: Option<u64>, image: &str) -> FlatEvent {
        FlatEvent { record_id: id, timestamp_us: None, fields: vec![(table.intern("Image"), Value::string(image))] }
    }

    #[test]
    fn exact_copies_are_dropped_and_counted_and_near_copies_kept() {
        let mut loaded = LoadedFile::new("f.json");
        let mut add = |id, image| {
            let event = flat(&mut loaded.table, id, image);
            loaded.push(event)
        };
        assert!(add(Some(1), "a"));
        assert!(!add(Some(1), "a"));
        assert!(add(Some(1), "b"), "same id, other content: kept");
        assert!(add(Some(2), "a"));
        // A copy of the second event with that id (both earlier ones are compared).
        assert!(!add(Some(1), "b"));
        assert!(add(None, "a"));
        assert!(!add(None, "a"), "no id: copies are still copies");
        // The same fields in another order are the same event.
        let mut two = |reversed: bool| {
            let (i, u) = (loaded.table.intern("Image"), loaded.table.intern("User"));
            let mut fields = vec![(i, Value::string("x")), (u, Value::string("y"))];
            if reversed {
                fields.reverse();
            }
            loaded.push(FlatEvent { record_id: Some(3), timestamp_us: Some(7), fields })
        };
        assert!(two(false));
        assert!(!two(true));
        loaded.finish();
        assert_eq!(loaded.events.len(), 5);
        assert_eq!(loaded.integrity.duplicates, 4);
        assert_eq!(loaded.integrity.events, 5);
        assert!(loaded.warnings.iter().any(|w| w.message.contains("dropped 4 exact duplicate")), "{:?}", loaded.warnings);
    }

    #[test]
    fn events_without_record_id_get_ids_above_every_real_one() {
        let mut loaded = LoadedFile::new("f.json");
        for (id, image) in [(None, "a"), (Some(1), "b"), (None, "c")] {
            let event = flat(&mut loaded.table, id, image);
            loaded.push(event);
        }
        loaded.finish();
        let ids: Vec<u64> = loaded.events.iter().map(|e| e.record_id).collect();
        assert_eq!(ids, [SYNTHETIC_ID_BASE, 1, SYNTHETIC_ID_BASE + 1]);
        assert_eq!(loaded.integrity.without_record_id, 2);
        assert!(loaded.warnings[0].message.contains("2 events have no System.EventRecordID"), "{:?}", loaded.warnings);

        // Real ids at or past the base push the invented ones above them.
        let mut loaded = LoadedFile::new("g.json");
        for (id, image) in [(Some(SYNTHETIC_ID_BASE + 5), "a"), (None, "b")] {
            let event = flat(&mut loaded.table, id, image);
            loaded.push(event);
        }
        loaded.finish();
        assert_eq!(loaded.events[1].record_id, SYNTHETIC_ID_BASE + 6);
    }
}
