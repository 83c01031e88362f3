//! Loading a corpus through its cache file: use the cache when it is fresh, else parse the event
//! files and (where the caller may write) save the cache for next time.
//!
//! `sigmaforge hunt --cache` and the sigma reward (native, and inside the Wasm plugin, where the
//! data directory is read-only and prebuilt by `sigmaforge data cache`) both load through
//! [`CorpusLoader`], so they agree on when a cache may be used ([`super::SourceStamp`] is the
//! key). The loader has no threads: parsing is serial unless the caller passes a parallel
//! [`ParseFn`] (the CLI does, with rayon).

use std::path::{Path, PathBuf};

use super::{CacheError, SourceStamp};
use crate::corpus::{ChannelFilter, Corpus, LoadWarning, LoadedFile, SourceFile, load_event_file_if};

/// Parses `sources` in order: `None` for a file the filter left unread.
pub type ParseFn<'a> = dyn Fn(&[SourceFile], Option<&ChannelFilter>) -> Vec<Option<LoadedFile>> + 'a;

/// The default [`ParseFn`]: one file after the other on this thread.
pub fn parse_serially(sources: &[SourceFile], filter: Option<&ChannelFilter>) -> Vec<Option<LoadedFile>> {
    sources.iter().map(|s| load_event_file_if(s, filter)).collect()
}

/// Why a corpus could not be loaded (an unusable cache is not one: the files are parsed instead).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A source file's size and modification time (its [`SourceStamp`]) cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Stamp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", dir.display())]
    CreateCacheDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the corpus cache {}: {source}", path.display())]
    WriteCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What became of the cache file.
#[derive(Debug)]
pub enum CacheStatus {
    /// No cache file was given.
    NotGiven,
    /// The cache was fresh; the corpus is the cache's.
    Used,
    /// There is no file at the cache path yet.
    Missing,
    /// The cache could not be used: stale, damaged, another format version, or unreadable.
    Rejected(CacheError),
}

/// A loaded corpus and how it was loaded.
#[derive(Debug)]
pub struct LoadedCorpus {
    pub corpus: Corpus,
    /// Files that could not be (fully) read; empty when the corpus came from the cache.
    pub warnings: Vec<LoadWarning>,
    /// Files the channel filter left unparsed.
    pub unread: usize,
    /// Records of the files read that the filter's buckets left out.
    pub skipped: u64,
    pub cache: CacheStatus,
    /// Why the cache could not be written back (with [`CorpusLoader::write_back`]); the corpus
    /// is loaded all the same.
    pub write_error: Option<std::io::Error>,
}

impl LoadedCorpus {
    pub fn from_cache(&self) -> bool {
        matches!(self.cache, CacheStatus::Used)
    }
}

/// Loads the events of `sources` (in their order), through a cache file when one is given.
pub struct CorpusLoader<'a> {
    sources: &'a [SourceFile],
    cache: Option<&'a Path>,
    write_back: bool,
    filter: Option<&'a ChannelFilter>,
    parse: &'a ParseFn<'a>,
}

impl<'a> CorpusLoader<'a> {
    pub fn new(sources: &'a [SourceFile]) -> Self {
        CorpusLoader { sources, cache: None, write_back: false, filter: None, parse: &parse_serially }
    }

    /// The cache file to load from (when fresh) and to write.
    pub fn cache(mut self, path: Option<&'a Path>) -> Self {
        self.cache = path;
        self
    }

    /// Whether [`CorpusLoader::load`] rewrites the cache after parsing when it could not be used
    /// (the CLI). Off by default: the Wasm plugin sees its data directory read-only.
    pub fn write_back(mut self, on: bool) -> Self {
        self.write_back = on;
        self
    }

    /// EVTX files `filter` rules out are left unparsed, but only when no cache is given: a cache
    /// must hold every event, whatever rules later run over it.
    pub fn filter(mut self, filter: Option<&'a ChannelFilter>) -> Self {
        self.filter = filter;
        self
    }

    /// How files are parsed when the cache cannot be used (default [`parse_serially`]).
    pub fn parser(mut self, parse: &'a ParseFn<'a>) -> Self {
        self.parse = parse;
        self
    }

    /// The corpus from the cache when it is fresh, else parsed from the files (and, with
    /// [`CorpusLoader::write_back`], saved to the cache). `before_parsing` hears why the cache
    /// was not used before the parse starts (it can take minutes), so the caller can say so.
    pub fn load(&self, before_parsing: &mut dyn FnMut(&CacheStatus)) -> Result<LoadedCorpus, LoadError> {
        let Some(path) = self.cache else {
            let status = CacheStatus::NotGiven;
            before_parsing(&status);
            return Ok(self.parse(self.filter, status));
        };
        let stamps = self.stamps()?;
        let status = match Corpus::read_cache(path, Some(&stamps)) {
            Ok(corpus) => {
                return Ok(LoadedCorpus { corpus, warnings: Vec::new(), unread: 0, skipped: 0, cache: CacheStatus::Used, write_error: None });
            }
            Err(CacheError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => CacheStatus::Missing,
            Err(e) => CacheStatus::Rejected(e),
        };
        before_parsing(&status);
        let mut loaded = self.parse(None, status);
        if self.write_back {
            loaded.write_error = loaded.corpus.write_cache(path, &stamps).err();
        }
        Ok(loaded)
    }

    /// Parses every file and writes the cache (creating its folder), whatever state it is in:
    /// `sigmaforge data cache`. Without a cache path it only parses.
    pub fn rebuild(&self) -> Result<LoadedCorpus, LoadError> {
        let Some(path) = self.cache else { return Ok(self.parse(None, CacheStatus::NotGiven)) };
        let stamps = self.stamps()?;
        let loaded = self.parse(None, CacheStatus::NotGiven);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LoadError::CreateCacheDir { dir: dir.to_path_buf(), source })?;
        }
        loaded.corpus.write_cache(path, &stamps).map_err(|source| LoadError::WriteCache { path: path.to_path_buf(), source })?;
        Ok(loaded)
    }

    fn stamps(&self) -> Result<Vec<SourceStamp>, LoadError> {
        self.sources.iter().map(|s| SourceStamp::of(s).map_err(|source| LoadError::Stamp { path: s.path.clone(), source })).collect()
    }

    fn parse(&self, filter: Option<&ChannelFilter>, cache: CacheStatus) -> LoadedCorpus {
        let parsed = (self.parse)(self.sources, filter);
        let unread = parsed.iter().filter(|l| l.is_none()).count();
        let skipped = parsed.iter().flatten().map(|l| l.skipped).sum();
        let mut builder = Corpus::builder();
        for file in parsed.into_iter().flatten() {
            builder.add(file);
        }
        let (corpus, warnings) = builder.finish();
        LoadedCorpus { corpus, warnings, unread, skipped, cache, write_error: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::collect_event_files;

    const EVENT: &str = r##"{"Event":{"System":{"Channel":"Security","EventID":4688,"EventRecordID":1}}}"##;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sf-loader-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.jsonl"), EVENT).unwrap();
        dir
    }

    /// The case the relative key exists for: the plugin sees the data folder at another path
    /// than the CLI that wrote the cache.
    #[test]
    fn a_cache_stays_fresh_when_its_folder_is_seen_at_another_path() {
        let dir = folder("moved");
        let cache = dir.join("cache/corpus.sfc");
        let sources = collect_event_files(&dir.join("sub")).unwrap();
        let written = CorpusLoader::new(&sources).cache(Some(&cache)).rebuild().unwrap();
        assert_eq!((written.corpus.len(), written.from_cache()), (1, false));

        let moved = dir.with_extension("moved");
        let _ = std::fs::remove_dir_all(&moved);
        std::fs::rename(&dir, &moved).unwrap();
        let sources = collect_event_files(&moved.join("sub")).unwrap();
        let cache = moved.join("cache/corpus.sfc");
        let mut heard = Vec::new();
        let loaded = CorpusLoader::new(&sources).cache(Some(&cache)).load(&mut |s| heard.push(format!("{s:?}"))).unwrap();
        assert!(loaded.from_cache(), "{:?}", loaded.cache);
        assert!(heard.is_empty(), "{heard:?}");

        // A changed file makes it stale: parsed again, and written back only when asked.
        std::fs::write(moved.join("sub/a.jsonl"), format!("{EVENT}\n{}", EVENT.replace(":1}", ":2}"))).unwrap();
        let loaded = CorpusLoader::new(&sources).cache(Some(&cache)).load(&mut |_| {}).unwrap();
        assert!(matches!(loaded.cache, CacheStatus::Rejected(CacheError::Stale(_))), "{:?}", loaded.cache);
        assert_eq!(loaded.corpus.len(), 2);
        let loaded = CorpusLoader::new(&sources).cache(Some(&cache)).write_back(true).load(&mut |_| {}).unwrap();
        assert!(!loaded.from_cache() && loaded.write_error.is_none());
        assert!(CorpusLoader::new(&sources).cache(Some(&cache)).load(&mut |_| {}).unwrap().from_cache());
        std::fs::remove_dir_all(&moved).unwrap();
    }

    #[test]
    fn a_missing_cache_is_reported_before_parsing_and_not_written_unasked() {
        let dir = folder("missing");
        let sources = collect_event_files(&dir).unwrap();
        let cache = dir.join("none.sfc");
        let mut heard = Vec::new();
        let loaded = CorpusLoader::new(&sources).cache(Some(&cache)).load(&mut |s| heard.push(format!("{s:?}"))).unwrap();
        assert_eq!(heard, ["Missing"]);
        assert_eq!(loaded.corpus.len(), 1);
        assert!(!cache.exists(), "written only with write_back");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
