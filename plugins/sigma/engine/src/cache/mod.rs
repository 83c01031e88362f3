//! The corpus cache file: a parsed [`Corpus`] saved so that later runs (and the Wasm reward
//! plugin) skip EVTX parsing.
//!
//! Format (all integers little-endian; "varint" is LEB128):
//! ```text
//! magic    8 bytes  "SFEVTC\r\n"  (the CR LF catches text-mode copies)
//! version  u32      FORMAT_VERSION
//! length   u64      payload length in bytes
//! checksum u64      hash of the payload (see `payload_hash`)
//! payload:
//!   sources: varint n, then n × (string path, u64 size, i64 mtime in ns)
//!   fields:  varint n, then n × string                      (the FieldTable, in key order)
//!   files:   varint n, then n × string                      (event file names)
//!   values:  varint n, then n × (u8 kind | 0x80 if a lowercase copy follows, string text,
//!            [string lower])                                (each distinct value once)
//!   events:  varint n, then n × (varint file, varint record id, u8 has-timestamp, [i64 timestamp],
//!            varint field count, then per field: varint key, varint value index)
//!   damaged: string, the JSON list of the integrity reports of files that did not load clean
//!            (so a run from the cache reports the same losses as the run that parsed them)
//! string = varint byte length + UTF-8 bytes
//! ```
//! Why hand-written rather than bincode/postcard: the event model keeps its invariants private
//! (sorted fields, pre-lowered text) and has no serde derives; a direct writer keeps the format
//! explicit and versioned here, needs no extra dependency in the Wasm guest, and loads with one
//! `std::fs::read` and a single pass (no threads, no mmap). Lowercase copies are stored, not
//! recomputed, because lowercasing was the largest cost of a load. Each distinct value is stored
//! once and events refer to it (the corpus has 703,000 values, 71,000 of them distinct): loading
//! makes one value per distinct text and shares it, which is smaller on disk and in memory and
//! faster than making every value anew.
//!
//! Integrity: the header's length and checksum reject truncated or damaged files, and every read
//! is bounds-checked, so a corrupt cache is an error ([`CacheError`]), never a panic. Freshness:
//! the cache records each source file's name, size and modification time ([`SourceStamp`]);
//! [`CacheError::Stale`] tells the caller to re-parse (content hashing would cost as much as
//! parsing).
//!
//! [`CorpusLoader`] (in `loader.rs`) is the one way callers load a corpus through a cache: it
//! decides when a cache may be used, parses otherwise and writes the cache back.

use std::collections::HashMap;
use std::path::Path;

mod loader;
pub use loader::{CacheStatus, CorpusLoader, LoadError, LoadedCorpus, ParseFn, parse_serially};

use crate::corpus::{Corpus, SourceFile};
use crate::event::{Event, FieldKey, FieldTable, FileId, Value, ValueKind};

const MAGIC: &[u8; 8] = b"SFEVTC\r\n";
/// Bump when the layout or the flattening of events changes.
pub const FORMAT_VERSION: u32 = 3;
const HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// Identity of one source file at the time it was parsed: the cache's staleness key.
///
/// `path` is the file's name relative to the folder it was found under ([`SourceFile::name`],
/// the name its events report), not its absolute path. The cache must stay valid when the same
/// files are seen at another place: the Wasm reward plugin sees the data directory at `/data`,
/// while `sigmaforge data cache` wrote the cache from the directory's real path, and absolute
/// paths would make the plugin re-parse the whole corpus at every start. Relative names plus
/// size and modification time (ns) still catch any file added, removed, renamed or rewritten
/// below the folder. What they cannot tell apart is another folder with files of the same names,
/// sizes and times, which in practice is a copy of the same files (`cp -p`, a second checkout
/// of an archive); the `hunt` CLI uses the same key, so moving an event folder keeps its cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStamp {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
}

impl SourceStamp {
    /// Reads the size and modification time of `source`.
    pub fn of(source: &SourceFile) -> std::io::Result<SourceStamp> {
        let meta = std::fs::metadata(&source.path)?;
        let mtime_ns = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i64);
        Ok(SourceStamp { path: source.name.clone(), size: meta.len(), mtime_ns })
    }
}

/// Why a cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the cache: {0}")]
    Io(#[from] std::io::Error),
    /// Not a SigmaForge corpus cache at all.
    #[error("not a SigmaForge corpus cache (wrong magic bytes)")]
    NotACache,
    /// Written by another version of the format.
    #[error("cache format version {found}, this SigmaForge reads version {FORMAT_VERSION}")]
    Version { found: u32 },
    /// Damaged: truncated, checksum mismatch, or inconsistent content.
    #[error("the cache is damaged: {0}")]
    Corrupt(String),
    /// Valid, but built from other source files (or older versions of them).
    #[error("the cache is out of date: {0}")]
    Stale(String),
}

/// A fast 64-bit hash over 8-byte words (FxHash-style multiply-rotate); it only has to catch
/// damage, not attacks, and runs at memory speed in Wasm too.
fn payload_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.buf.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.buf.push(n as u8);
    }
    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, what: &str) -> CacheError {
        CacheError::Corrupt(format!("{what} at payload byte {}", self.pos))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CacheError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| self.corrupt("unexpected end"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, CacheError> {
        Ok(self.bytes(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, CacheError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
    fn varint(&mut self) -> Result<u64, CacheError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(self.corrupt("overlong number"))
    }
    /// A count of items that each take at least one byte (bounds allocations on damaged input).
    fn count(&mut self) -> Result<usize, CacheError> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(self.corrupt("impossible item count"));
        }
        Ok(n as usize)
    }
    fn str(&mut self) -> Result<&'a str, CacheError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.corrupt("string too long"))?;
        let bytes = self.bytes(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.corrupt("invalid UTF-8"))
    }
}

fn kind_code(kind: ValueKind) -> u8 {
    match kind {
        ValueKind::Null => 0,
        ValueKind::String => 1,
        ValueKind::Number => 2,
        ValueKind::Bool => 3,
    }
}

impl Corpus {
    /// Serializes the corpus, stamped with the `sources` it was parsed from.
    pub fn to_cache_bytes(&self, sources: &[SourceStamp]) -> Vec<u8> {
        let mut w = Writer { buf: Vec::with_capacity(self.events.len() * 600) };
        w.varint(sources.len() as u64);
        for s in sources {
            w.str(&s.path);
            w.buf.extend_from_slice(&s.size.to_le_bytes());
            w.buf.extend_from_slice(&s.mtime_ns.to_le_bytes());
        }
        w.varint(self.table.len() as u64);
        for name in self.table.names() {
            w.str(name);
        }
        w.varint(self.files.len() as u64);
        for f in &self.files {
            w.str(f);
        }
        // Each distinct (kind, text) once, in order of first use; events refer to them.
        let mut index: HashMap<(u8, &str), u64, foldhash::fast::RandomState> = HashMap::default();
        let mut values: Vec<&Value> = Vec::new();
        for e in &self.events {
            for (_, value) in e.fields() {
                index.entry((kind_code(value.kind()), value.text())).or_insert_with(|| {
                    values.push(value);
                    values.len() as u64 - 1
                });
            }
        }
        w.varint(values.len() as u64);
        for value in &values {
            let lower = value.distinct_lower();
            w.buf.push(kind_code(value.kind()) | if lower.is_some() { 0x80 } else { 0 });
            w.str(value.text());
            if let Some(l) = lower {
                w.str(l);
            }
        }
        w.varint(self.events.len() as u64);
        for e in &self.events {
            w.varint(u64::from(e.file.0));
            w.varint(e.record_id);
            match e.timestamp_us {
                Some(t) => {
                    w.buf.push(1);
                    w.buf.extend_from_slice(&t.to_le_bytes());
                }
                None => w.buf.push(0),
            }
            w.varint(e.fields().len() as u64);
            for (key, value) in e.fields() {
                w.varint(u64::from(key.0));
                w.varint(index[&(kind_code(value.kind()), value.text())]);
            }
        }
        w.str(&serde_json::to_string(&self.damaged).expect("integrity reports serialize"));
        let payload = w.buf;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload_hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Writes the cache file (through a temporary file and a rename, so a crash never leaves a
    /// half-written cache under the real name).
    pub fn write_cache(&self, path: &Path, sources: &[SourceStamp]) -> std::io::Result<()> {
        // Not `process::id()`: it is unsupported under WASI, where the reward plugin runs this.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let tmp = path.with_extension(format!("tmp{nanos}"));
        std::fs::write(&tmp, self.to_cache_bytes(sources))?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a cache file. With `expected`, the cache must have been built from exactly these
    /// sources (same paths, sizes and modification times), else [`CacheError::Stale`].
    pub fn read_cache(path: &Path, expected: Option<&[SourceStamp]>) -> Result<Corpus, CacheError> {
        let bytes = std::fs::read(path)?;
        Corpus::from_cache_bytes(&bytes, expected)
    }

    /// Parses cache bytes; see [`Corpus::read_cache`].
    pub fn from_cache_bytes(bytes: &[u8], expected: Option<&[SourceStamp]>) -> Result<Corpus, CacheError> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(CacheError::NotACache);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(CacheError::Version { found: version });
        }
        let length = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
        let checksum = u64::from_le_bytes(bytes[20..28].try_into().unwrap());
        let payload = &bytes[HEADER_LEN..];
        if payload.len() as u64 != length {
            return Err(CacheError::Corrupt(format!("payload is {} bytes, the header says {length}", payload.len())));
        }
        if payload_hash(payload) != checksum {
            return Err(CacheError::Corrupt("checksum mismatch".into()));
        }
        let mut r = Reader { buf: payload, pos: 0 };

        let n = r.count()?;
        let mut stamps = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.str()?.to_string();
            let size = r.u64()?;
            let mtime_ns = r.u64()? as i64;
            stamps.push(SourceStamp { path, size, mtime_ns });
        }
        if let Some(expected) = expected {
            check_fresh(&stamps, expected)?;
        }

        let mut table = FieldTable::new();
        let n = r.count()?;
        for i in 0..n {
            let name = r.str()?;
            if table.intern(name).0 as usize != i {
                return Err(r.corrupt("duplicate field name"));
            }
        }
        let n = r.count()?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            files.push(r.str()?.to_string());
        }
        let n = r.count()?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = r.u8()?;
            let kind = match tag & 0x7f {
                0 => ValueKind::Null,
                1 => ValueKind::String,
                2 => ValueKind::Number,
                3 => ValueKind::Bool,
                _ => return Err(r.corrupt("bad value kind")),
            };
            let text = r.str()?;
            let lower = if tag & 0x80 != 0 { Some(r.str()?) } else { None };
            values.push(Value::from_parts(kind, text, lower));
        }
        let n = r.count()?;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let file = r.varint()?;
            if file >= files.len() as u64 {
                return Err(r.corrupt("event of an unknown file"));
            }
            let record_id = r.varint()?;
            let timestamp = match r.u8()? {
                0 => None,
                1 => Some(r.u64()? as i64),
                _ => return Err(r.corrupt("bad timestamp flag")),
            };
            let nfields = r.count()?;
            let mut fields = Vec::with_capacity(nfields);
            for _ in 0..nfields {
                let key = r.varint()?;
                if key >= table.len() as u64 {
                    return Err(r.corrupt("unknown field key"));
                }
                let value = r.varint()?;
                let Some(value) = usize::try_from(value).ok().and_then(|v| values.get(v)) else {
                    return Err(r.corrupt("unknown value"));
                };
                fields.push((FieldKey(key as u32), value.clone()));
            }
            events.push(Event::new(FileId(file as u32), record_id, timestamp, fields));
        }
        let damaged = serde_json::from_str(r.str()?).map_err(|e| r.corrupt(&format!("bad integrity reports ({e})")))?;
        if r.pos != payload.len() {
            return Err(r.corrupt("trailing bytes"));
        }
        let mut corpus = Corpus { table, files, events, damaged, ..Corpus::default() };
        corpus.build_index();
        Ok(corpus)
    }
}

fn check_fresh(cached: &[SourceStamp], expected: &[SourceStamp]) -> Result<(), CacheError> {
    if cached.len() != expected.len() {
        return Err(CacheError::Stale(format!("it holds {} source files, the events now have {}", cached.len(), expected.len())));
    }
    for (c, e) in cached.iter().zip(expected) {
        if c.path != e.path {
            return Err(CacheError::Stale(format!("source {} is not {}", c.path, e.path)));
        }
        if c.size != e.size || c.mtime_ns != e.mtime_ns {
            return Err(CacheError::Stale(format!("{} changed since the cache was written", e.path)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_events::load_json_bytes;

    fn sample() -> Corpus {
        let mut b = Corpus::builder();
        b.add(load_json_bytes(
            "a.jsonl",
            br##"{"Event":{"System":{"Channel":"Security","EventID":"4688","EventRecordID":3,"TimeCreated":{"#attributes":{"SystemTime":"2020-01-01T00:00:00Z"}}},"EventData":{"NewProcessName":"C:\\X.EXE","Flag":true,"N":null}}}
{"Event":{"System":{"Channel":"Security","EventID":4624,"EventRecordID":300000}}}"##,
        ));
        b.finish().0
    }

    fn stamps() -> Vec<SourceStamp> {
        vec![SourceStamp { path: "a.jsonl".into(), size: 10, mtime_ns: 5 }]
    }

    #[test]
    fn round_trip_keeps_every_event_and_the_index() {
        let c = sample();
        let bytes = c.to_cache_bytes(&stamps());
        let back = Corpus::from_cache_bytes(&bytes, Some(&stamps())).unwrap();
        assert_eq!(back.events(), c.events());
        assert_eq!(back.files(), c.files());
        assert_eq!(back.table().names().collect::<Vec<_>>(), c.table().names().collect::<Vec<_>>());
        assert_eq!(back.select(|ch, id| ch == "security" && id == "4688"), [0]);
        let key = back.field_key("NewProcessName");
        assert_eq!(back.event(0).values(key).next().unwrap().lower(), "c:\\x.exe");
        // Both events' Channel is stored once; the string "4688" and the number 4624 apart.
        assert_eq!(bytes.windows(8).filter(|w| w == b"Security").count(), 1);
        assert_eq!(back.event(1).values(back.field_key("EventID")).next().unwrap().kind(), ValueKind::Number);
    }

    #[test]
    fn recovered_events_and_their_integrity_reports_are_what_the_cache_keeps() {
        // A JSON array with one malformed element, and a duplicated line in another file.
        let good = |id: u32| format!(r##"{{"Event":{{"System":{{"Channel":"Security","EventID":4688,"EventRecordID":{id}}}}}}}"##);
        let mut b = Corpus::builder();
        b.add(load_json_bytes("arr.json", format!("[{}, {{\"Event\": {{,}}}}, {}]", good(1), good(2)).as_bytes()));
        b.add(load_json_bytes("dup.jsonl", format!("{}\n{}\n", good(7), good(7)).as_bytes()));
        let (c, _) = b.finish();
        assert_eq!(c.len(), 3);
        let reports: Vec<_> = c.damaged_files().iter().map(|i| (i.file.as_str(), i.events, i.recovered, i.lost, i.duplicates)).collect();
        assert_eq!(reports, [("arr.json", 2, 1, 1, 0), ("dup.jsonl", 1, 0, 0, 1)]);
        let back = Corpus::from_cache_bytes(&c.to_cache_bytes(&stamps()), None).unwrap();
        assert_eq!(back.events(), c.events());
        assert_eq!(back.damaged_files(), c.damaged_files());
    }

    #[test]
    fn stale_damaged_and_foreign_files_are_errors() {
        let c = sample();
        let bytes = c.to_cache_bytes(&stamps());
        let changed = vec![SourceStamp { mtime_ns: 6, ..stamps()[0].clone() }];
        assert!(matches!(Corpus::from_cache_bytes(&bytes, Some(&changed)), Err(CacheError::Stale(_))));
        assert!(matches!(Corpus::from_cache_bytes(&bytes, Some(&[])), Err(CacheError::Stale(_))));
        assert!(matches!(Corpus::from_cache_bytes(b"hello", None), Err(CacheError::NotACache)));
        let mut v2 = bytes.clone();
        v2[8] = 99;
        assert!(matches!(Corpus::from_cache_bytes(&v2, None), Err(CacheError::Version { found: 99 })));
        for cut in [HEADER_LEN, bytes.len() / 2, bytes.len() - 1] {
            assert!(matches!(Corpus::from_cache_bytes(&bytes[..cut], None), Err(CacheError::Corrupt(_))));
        }
        // Flip every byte of the payload in turn: always an error, never a panic.
        for i in HEADER_LEN..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            assert!(Corpus::from_cache_bytes(&bad, None).is_err(), "byte {i}");
        }
    }

    /// Damage that keeps the checksum valid (a re-stamped payload) still never panics.
    #[test]
    fn restamped_garbage_payloads_are_errors() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in [0usize, 1, 7, 64, 1000] {
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&payload_hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
            let _ = Corpus::from_cache_bytes(&bytes, None);
        }
    }
}
