//! The event corpus of the task: from the engine's cache file when it is fresh, else parsed from
//! the EVTX files. The plugin never writes the cache (its data directory is read-only);
//! `sigmaforge data cache` writes it natively with [`write`].
//!
//! Both go through the engine's [`CorpusLoader`], whose freshness key names each file by its
//! path relative to the corpus folder: the plugin sees the data directory at `/data`, the host
//! that wrote the cache saw it somewhere else.

use std::path::{Path, PathBuf};

use sigma_engine::cache::{CacheStatus, CorpusLoader, LoadError};
use sigma_engine::corpus::{Corpus, SourceFile, collect_event_files};

use crate::{LogLevel, TaskConfig};

/// Why the corpus could not be loaded or its cache written.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot list the event corpus {}: {source}", dir.display())]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Parsed without error, but not one event came out.
    #[error("the event corpus {} holds no events", dir.display())]
    Empty { dir: PathBuf },
}

/// Where the cache file of `config` lives (absolute `corpus_cache` paths are taken as they are).
pub fn cache_path(data_dir: &Path, config: &TaskConfig) -> PathBuf {
    data_dir.join(&config.corpus_cache)
}

/// The corpus's source files.
fn sources(data_dir: &Path, config: &TaskConfig) -> Result<Vec<SourceFile>, CorpusError> {
    let dir = data_dir.join(&config.evtx_dir);
    collect_event_files(&dir).map_err(|source| CorpusError::List { dir, source })
}

/// The corpus: from the cache when it exists and matches the EVTX files, else parsed from them.
pub fn load(data_dir: &Path, config: &TaskConfig, log: &dyn Fn(LogLevel, &str)) -> Result<Corpus, CorpusError> {
    let files = sources(data_dir, config)?;
    let cache = cache_path(data_dir, config);
    let loaded = CorpusLoader::new(&files).cache(Some(&cache)).load(&mut |status| match status {
        CacheStatus::Missing => log(
            LogLevel::Info,
            &format!("no corpus cache at {}; parsing the EVTX files (run `sigmaforge data cache` to make start-up fast)", cache.display()),
        ),
        CacheStatus::Rejected(e) => log(LogLevel::Warn, &format!("corpus cache {} not used: {e}; parsing the EVTX files instead", cache.display())),
        CacheStatus::NotGiven | CacheStatus::Used => {}
    })?;
    let corpus = loaded.corpus;
    if matches!(loaded.cache, CacheStatus::Used) {
        log(LogLevel::Info, &format!("corpus: {} events from {} files (cache {})", corpus.len(), corpus.files().len(), cache.display()));
        return Ok(corpus);
    }
    let warnings = loaded.warnings;
    for w in warnings.iter().take(5) {
        log(LogLevel::Warn, &format!("corpus: {}: {}", w.file, w.message));
    }
    if warnings.len() > 5 {
        log(LogLevel::Warn, &format!("corpus: {} more load warnings", warnings.len() - 5));
    }
    if corpus.is_empty() {
        return Err(CorpusError::Empty { dir: data_dir.join(&config.evtx_dir) });
    }
    log(LogLevel::Info, &format!("corpus: {} events from {} files", corpus.len(), corpus.files().len()));
    Ok(corpus)
}

/// Parses the EVTX files and writes the cache file the plugin reads (native use: the plugin's
/// data directory is read-only).
pub fn write(data_dir: &Path, config: &TaskConfig) -> Result<(PathBuf, usize), CorpusError> {
    let files = sources(data_dir, config)?;
    let path = cache_path(data_dir, config);
    let loaded = CorpusLoader::new(&files).cache(Some(&path)).rebuild()?;
    Ok((path, loaded.corpus.len()))
}
