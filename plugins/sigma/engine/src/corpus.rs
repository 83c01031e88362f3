//! The event store: every event of a corpus parsed once, with one interned field table, and an
//! index by (Channel, EventID) so that a rule only looks at the events its logsource can match.
//!
//! Loading is serial and uses only `std::fs` (the Wasm reward plugin runs this code without
//! threads); the CLI parses files in parallel with [`load_event_file`] and feeds the results to
//! a [`CorpusBuilder`] in file order, so both paths build the identical store.
//!
//! [`Corpus::write_cache`] / [`Corpus::read_cache`] save and restore the store; see `cache.rs`
//! for the format.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::event::{Event, FieldKey, FieldTable, FileId};
pub use crate::loaded_file::{FileIntegrity, LoadedFile};

/// Something a loader skipped, named by file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadWarning {
    pub file: String,
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// The formats [`load_event_file`] understands, chosen by file extension (then by content).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventFormat {
    Evtx,
    Json,
}

impl EventFormat {
    /// The format of `path` judged by its extension, `None` for files a directory walk skips.
    pub fn from_extension(path: &Path) -> Option<EventFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "evtx" => Some(EventFormat::Evtx),
            "json" | "jsonl" | "ndjson" => Some(EventFormat::Json),
            _ => None,
        }
    }

    /// The format of a file: by its extension, else an EVTX signature, else JSON.
    pub fn of(source: &SourceFile, bytes: &[u8]) -> EventFormat {
        EventFormat::from_extension(&source.path).unwrap_or(if bytes.starts_with(b"ElfFile\0") { EventFormat::Evtx } else { EventFormat::Json })
    }
}

/// One file to load: where it is, and the name events report (relative to the root it was
/// found under).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub name: String,
}

/// The event files under `root`: the file itself (named by its bare file name), or every
/// `.evtx`/`.json`/`.jsonl`/`.ndjson` file below a directory (named by its path relative to it,
/// with `/` separators), in sorted order.
pub fn collect_event_files(root: &Path) -> std::io::Result<Vec<SourceFile>> {
    let meta = std::fs::metadata(root)?;
    if meta.is_file() {
        let name = root.file_name().map_or_else(|| root.display().to_string(), |n| n.to_string_lossy().into_owned());
        return Ok(vec![SourceFile { path: root.to_path_buf(), name }]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() || (kind.is_symlink() && path.is_dir()) {
                stack.push(path);
            } else if EventFormat::from_extension(&path).is_some() {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push(SourceFile { path, name });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reads and parses one event file. Never fails: an unreadable or corrupt file gives warnings
/// and whatever events could be read.
pub fn load_event_file(source: &SourceFile) -> LoadedFile {
    load_event_file_if(source, None).expect("without a filter every file is read")
}

/// [`load_event_file`], except that an EVTX file `filter` rules out is not parsed (`None`).
pub fn load_event_file_if(source: &SourceFile, filter: Option<&ChannelFilter>) -> Option<LoadedFile> {
    let bytes = match std::fs::read(&source.path) {
        Ok(b) => b,
        Err(err) => {
            let mut loaded = LoadedFile::new(&source.name);
            loaded.warn(format!("cannot read the file ({err}); skipped"));
            return Some(loaded);
        }
    };
    let format = EventFormat::of(source, &bytes);
    if filter.is_some_and(|f| !f.may_hold(format, &bytes)) {
        return None;
    }
    Some(match format {
        EventFormat::Evtx => crate::evtx::load_evtx_bytes_routed(&source.name, &bytes, filter.and_then(ChannelFilter::buckets)),
        EventFormat::Json => crate::json_events::load_json_bytes(&source.name, &bytes),
    })
}

/// The (Channel, EventID) index buckets a set of rules can read (see
/// [`crate::logsource::LogsourceMap::buckets_of`]): per channel (lowercase), the EventIDs its
/// logsource variants name, or every EventID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    by_channel: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl Buckets {
    /// Adds `channel` (lowercase) with these EventIDs (trimmed text), or with every EventID.
    pub fn add(&mut self, channel: &str, event_ids: Option<&[String]>) {
        let entry = self.by_channel.entry(channel.to_string()).or_insert_with(|| Some(BTreeSet::new()));
        match (entry.as_mut(), event_ids) {
            (Some(set), Some(ids)) => set.extend(ids.iter().cloned()),
            _ => *entry = None,
        }
    }

    /// The channels, sorted.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.by_channel.keys().map(String::as_str)
    }

    /// Whether an event of index bucket (`channel` lowercased, `event_id` trimmed) is read.
    pub fn accepts(&self, channel: &str, event_id: &str) -> bool {
        self.by_channel.get(channel).is_some_and(|ids| ids.as_ref().is_none_or(|ids| ids.contains(event_id)))
    }
}

/// Which EVTX files and records can be left unparsed because no rule can match their events.
///
/// Files: a file none of whose bytes spell one of the wanted channel names cannot hold a record
/// of those channels. Why the test is exact: an EVTX chunk is self-contained (its records'
/// templates and strings live in the chunk), and a record's Channel is stored as UTF-16LE text
/// there (ANSI strings are searched too, in case a writer used them). Names are compared without
/// ASCII case, as the logsource index compares channels lowercased.
///
/// Records (with [`ChannelFilter::for_buckets`]): a record of a file that is read is flattened
/// only as far as its `System` part when its (Channel, EventID) bucket is not one the rules read
/// (see [`crate::json_events::stream`]).
pub struct ChannelFilter {
    names: aho_corasick::AhoCorasick,
    buckets: Option<Buckets>,
}

impl ChannelFilter {
    /// A filter for these channels (lowercase); `None` when a name is not ASCII (the byte test
    /// only folds ASCII case) or there are none to look for.
    pub fn new(channels: &[String]) -> Option<ChannelFilter> {
        if channels.is_empty() || channels.iter().any(|c| c.is_empty() || !c.is_ascii()) {
            return None;
        }
        let mut needles: Vec<Vec<u8>> = channels.iter().map(|c| c.encode_utf16().flat_map(u16::to_le_bytes).collect()).collect();
        needles.extend(channels.iter().map(|c| c.as_bytes().to_vec()));
        let names = aho_corasick::AhoCorasick::builder().ascii_case_insensitive(true).build(&needles).ok()?;
        Some(ChannelFilter { names, buckets: None })
    }

    /// A filter for the files of these buckets' channels that also skips, in the files it
    /// reads, the EVTX records of other buckets.
    pub fn for_buckets(buckets: Buckets) -> Option<ChannelFilter> {
        let channels: Vec<String> = buckets.channels().map(str::to_string).collect();
        let mut filter = ChannelFilter::new(&channels)?;
        filter.buckets = Some(buckets);
        Some(filter)
    }

    /// The buckets records are routed by, when the filter routes records.
    pub fn buckets(&self) -> Option<&Buckets> {
        self.buckets.as_ref()
    }

    /// Whether a file of `format` with these bytes must be read: it may hold events of a wanted
    /// channel, or it is not an intact EVTX file (JSON events may spell channels any way; a
    /// damaged file is read so that its damage is reported).
    pub fn may_hold(&self, format: EventFormat, bytes: &[u8]) -> bool {
        format != EventFormat::Evtx || self.names.is_match(bytes) || !crate::evtx::is_intact(bytes)
    }
}

/// The sentinel key of field names no event in the corpus has: no event holds it, so a rule that
/// names such a field sees it as absent.
pub const ABSENT_FIELD: FieldKey = FieldKey(u32::MAX);

/// An index bucket: events with this (lowercased Channel, EventID text).
pub type BucketKey = (Box<str>, Box<str>);

/// All events of a corpus.
#[derive(Debug, Default)]
pub struct Corpus {
    pub(crate) table: FieldTable,
    pub(crate) files: Vec<String>,
    pub(crate) events: Vec<Event>,
    /// Event indices (ascending) per (lowercased Channel, EventID text); "" when absent.
    pub(crate) index: BTreeMap<BucketKey, Vec<u32>>,
    /// The integrity reports of the files that were not loaded clean (damaged, truncated,
    /// duplicated or unnamed records), in file order; kept in the cache too.
    pub(crate) damaged: Vec<FileIntegrity>,
}

impl Corpus {
    pub fn builder() -> CorpusBuilder {
        CorpusBuilder::default()
    }

    /// Loads `sources` one after the other (no threads), returning the corpus and what was
    /// skipped.
    pub fn load(sources: &[SourceFile]) -> (Corpus, Vec<LoadWarning>) {
        let mut builder = Corpus::builder();
        for source in sources {
            builder.add(load_event_file(source));
        }
        builder.finish()
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn event(&self, index: u32) -> &Event {
        &self.events[index as usize]
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn table(&self) -> &FieldTable {
        &self.table
    }

    /// What was recovered, lost or dropped in each file that did not load clean.
    pub fn damaged_files(&self) -> &[FileIntegrity] {
        &self.damaged
    }

    /// File names (relative to their root), indexed by [`FileId`].
    pub fn files(&self) -> &[String] {
        &self.files
    }

    pub fn file_name(&self, file: FileId) -> &str {
        &self.files[file.0 as usize]
    }

    /// The key of an event field name, or [`ABSENT_FIELD`] when no event has it. Pure, so rules
    /// can be compiled in parallel against one corpus.
    pub fn field_key(&self, name: &str) -> FieldKey {
        self.table.get(name).unwrap_or(ABSENT_FIELD)
    }

    /// The index buckets with their sizes, for diagnostics.
    pub fn buckets(&self) -> impl Iterator<Item = (&BucketKey, usize)> {
        self.index.iter().map(|(k, v)| (k, v.len()))
    }

    /// Indices (ascending) of the events whose bucket passes `accept(channel_lower, event_id)`.
    pub fn select(&self, mut accept: impl FnMut(&str, &str) -> bool) -> Vec<u32> {
        let lists: Vec<&Vec<u32>> = self.index.iter().filter(|((channel, id), _)| accept(channel, id)).map(|(_, v)| v).collect();
        let mut out: Vec<u32> = lists.iter().flat_map(|v| v.iter().copied()).collect();
        if lists.len() > 1 {
            out.sort_unstable();
        }
        out
    }

    pub(crate) fn build_index(&mut self) {
        let mut index = BucketIndex::of(&self.table);
        for (i, event) in self.events.iter().enumerate() {
            index.add(i as u32, event);
        }
        self.index = index.finish();
    }
}

/// The (Channel, EventID) index being built, one event at a time.
#[derive(Debug, Default)]
struct BucketIndex {
    channel: Option<FieldKey>,
    event_id: Option<FieldKey>,
    /// Channel (lowercase) → EventID (trimmed) → events: looked up by borrowed text, so only a
    /// new bucket allocates (a few hundred buckets for tens of thousands of events).
    buckets: TextMap<TextMap<Vec<u32>>>,
}

type TextMap<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

impl BucketIndex {
    fn of(table: &FieldTable) -> Self {
        let mut index = BucketIndex::default();
        index.use_keys_of(table);
        index
    }

    /// Reads Channel and EventID by their keys in `table` (again when a new file may have been
    /// the first to name them).
    fn use_keys_of(&mut self, table: &FieldTable) {
        self.channel = table.get("Channel");
        self.event_id = table.get("EventID");
    }

    /// Adds event `index` (its keys those of the table `channel` and `event_id` come from).
    fn add(&mut self, index: u32, event: &Event) {
        let text = |key: Option<FieldKey>, lower: bool| -> &str {
            let value = key.and_then(|k| event.values(k).next());
            value.map_or("", |v| if lower { v.lower() } else { v.text().trim() })
        };
        let (channel, event_id) = (text(self.channel, true), text(self.event_id, false));
        let ids = match self.buckets.get_mut(channel) {
            Some(ids) => ids,
            None => self.buckets.entry(channel.into()).or_default(),
        };
        match ids.get_mut(event_id) {
            Some(events) => events.push(index),
            None => {
                ids.insert(event_id.into(), vec![index]);
            }
        }
    }

    fn finish(self) -> BTreeMap<BucketKey, Vec<u32>> {
        self.buckets.into_iter().flat_map(|(channel, ids)| ids.into_iter().map(move |(id, events)| ((channel.clone(), id), events))).collect()
    }
}

/// Builds a [`Corpus`] from loaded files, in the order they are added.
#[derive(Debug, Default)]
pub struct CorpusBuilder {
    corpus: Corpus,
    warnings: Vec<LoadWarning>,
    /// Built as events arrive, while each is fresh in the cache (a pass over all events at the
    /// end read each one from memory again).
    index: BucketIndex,
}

impl CorpusBuilder {
    pub fn add(&mut self, loaded: LoadedFile) {
        let file = FileId(self.corpus.files.len() as u32);
        self.corpus.files.push(loaded.name);
        self.warnings.extend(loaded.warnings);
        if !loaded.integrity.is_clean() {
            self.corpus.damaged.push(loaded.integrity);
        }
        let remap: Vec<FieldKey> = loaded.table.names().map(|name| self.corpus.table.intern(name)).collect();
        self.index.use_keys_of(&self.corpus.table);
        self.corpus.events.reserve(loaded.events.len());
        for event in loaded.events {
            let (_, record_id, timestamp, mut fields) = event.into_parts();
            for (key, _) in &mut fields {
                *key = remap[key.0 as usize];
            }
            let event = Event::new(file, record_id, timestamp, fields);
            self.index.add(self.corpus.events.len() as u32, &event);
            self.corpus.events.push(event);
        }
    }

    pub fn finish(mut self) -> (Corpus, Vec<LoadWarning>) {
        self.corpus.index = self.index.finish();
        (self.corpus, self.warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_events::load_json_bytes;

    fn corpus_of(files: &[(&str, &str)]) -> Corpus {
        let mut b = Corpus::builder();
        for (name, text) in files {
            b.add(load_json_bytes(name, text.as_bytes()));
        }
        b.finish().0
    }

    /// The index built while files are added is the one a pass over the finished corpus builds,
    /// also when a later file is the first to name Channel or EventID.
    #[test]
    fn the_index_built_while_adding_is_the_index_of_the_whole() {
        let mut c = corpus_of(&[
            ("a.json", r##"{"Event":{"System":{"EventRecordID":1},"EventData":{"Image":"x"}}}"##),
            ("b.json", r##"{"Event":{"System":{"Channel":"Security","EventRecordID":2}}}"##),
            (
                "c.json",
                r##"{"Event":{"System":{"EventID":4688,"EventRecordID":3,"Channel":"SECURITY"}}}
{"Event":{"System":{"EventID":" 1 ","EventRecordID":4}}}"##,
            ),
        ]);
        let built = c.index.clone();
        let expected: Vec<(&str, &str, Vec<u32>)> =
            vec![("", "", vec![0]), ("", "1", vec![3]), ("security", "", vec![1]), ("security", "4688", vec![2])];
        let got: Vec<(&str, &str, Vec<u32>)> = built.iter().map(|((ch, id), events)| (&**ch, &**id, events.clone())).collect();
        assert_eq!(got, expected);
        c.build_index();
        assert_eq!(c.index, built);
    }

    #[test]
    fn builder_merges_field_tables_and_indexes_by_channel_and_event_id() {
        let c = corpus_of(&[
            (
                "a.json",
                r##"{"Event":{"System":{"EventID":1,"EventRecordID":10,"Channel":"Microsoft-Windows-Sysmon/Operational"},"EventData":{"Image":"x"}}}"##,
            ),
            (
                "b.json",
                r##"{"Event":{"System":{"Channel":"Security","EventID":"4688","EventRecordID":3},"EventData":{"NewProcessName":"y"}}}
{"Event":{"System":{"Channel":"Security","EventID":4688,"EventRecordID":4}}}"##,
            ),
        ]);
        assert_eq!(c.len(), 3);
        assert_eq!(c.files(), ["a.json", "b.json"]);
        assert_eq!(c.file_name(c.event(1).file), "b.json");
        let image = c.field_key("Image");
        assert_eq!(c.event(0).values(image).next().unwrap().text(), "x");
        assert_eq!(c.field_key("NoSuchField"), ABSENT_FIELD);
        // String- and integer-typed EventIDs share a bucket.
        assert_eq!(c.select(|ch, id| ch == "security" && id == "4688"), [1, 2]);
        assert_eq!(c.select(|_, id| id == "1" || id == "4688"), [0, 1, 2]);
        assert!(c.select(|ch, _| ch == "system").is_empty());
    }

    #[test]
    fn collect_event_files_names_files_relative_to_the_root() {
        let dir = std::env::temp_dir().join(format!("sf-collect-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/b.evtx"), b"").unwrap();
        std::fs::write(dir.join("a.jsonl"), b"").unwrap();
        std::fs::write(dir.join("notes.txt"), b"").unwrap();
        let files = collect_event_files(&dir).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.jsonl", "sub/b.evtx"]);
        let single = collect_event_files(&dir.join("sub/b.evtx")).unwrap();
        assert_eq!(single[0].name, "b.evtx");
        assert!(collect_event_files(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_file_is_a_warning() {
        let (c, warnings) = Corpus::load(&[SourceFile { path: "/nonexistent/x.evtx".into(), name: "x.evtx".into() }]);
        assert!(c.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].to_string().starts_with("x.evtx: cannot read"));
    }
}
