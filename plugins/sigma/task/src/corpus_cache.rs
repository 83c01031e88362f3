//! Loading the event corpus fast: from the engine's cache file when it is fresh, else from the
//! EVTX files (and, natively, writing the cache for next time).
//!
//! Freshness stamps name each source file by its path *relative to the corpus folder* (plus
//! size and modification time), because the plugin sees the data directory at `/data` while
//! the host that wrote the cache saw it somewhere else: absolute paths would never compare equal.

use std::path::{Path, PathBuf};

use sigma_engine::cache::SourceStamp;
use sigma_engine::corpus::{Corpus, SourceFile, collect_event_files};

use crate::{LogLevel, TaskConfig};

/// Where the cache file of `config` lives (absolute `corpus_cache` paths are taken as they are).
pub fn cache_path(data_dir: &Path, config: &TaskConfig) -> PathBuf {
    data_dir.join(&config.corpus_cache)
}

/// The corpus's source files and their stamps.
fn sources(data_dir: &Path, config: &TaskConfig) -> Result<(Vec<SourceFile>, Vec<SourceStamp>), String> {
    let evtx_dir = data_dir.join(&config.evtx_dir);
    let files = collect_event_files(&evtx_dir).map_err(|e| format!("cannot list the event corpus {}: {e}", evtx_dir.display()))?;
    let mut stamps = Vec::with_capacity(files.len());
    for f in &files {
        let meta = std::fs::metadata(&f.path).map_err(|e| format!("cannot read {}: {e}", f.path.display()))?;
        let mtime_ns = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i64);
        stamps.push(SourceStamp { path: f.name.clone(), size: meta.len(), mtime_ns });
    }
    Ok((files, stamps))
}

/// The corpus: from the cache when it exists and matches the EVTX files, else parsed from them.
pub fn load(data_dir: &Path, config: &TaskConfig, log: &dyn Fn(LogLevel, &str)) -> Result<Corpus, String> {
    let (files, stamps) = sources(data_dir, config)?;
    let cache = cache_path(data_dir, config);
    if cache.is_file() {
        match Corpus::read_cache(&cache, Some(&stamps)) {
            Ok(corpus) => {
                log(LogLevel::Info, &format!("corpus: {} events from {} files (cache {})", corpus.len(), corpus.files().len(), cache.display()));
                return Ok(corpus);
            }
            Err(e) => log(LogLevel::Warn, &format!("corpus cache {} not used: {e}; parsing the EVTX files instead", cache.display())),
        }
    } else {
        log(
            LogLevel::Info,
            &format!("no corpus cache at {}; parsing the EVTX files (run `sigmaforge data cache` to make start-up fast)", cache.display()),
        );
    }
    let (corpus, warnings) = Corpus::load(&files);
    for w in warnings.iter().take(5) {
        log(LogLevel::Warn, &format!("corpus: {}: {}", w.file, w.message));
    }
    if warnings.len() > 5 {
        log(LogLevel::Warn, &format!("corpus: {} more load warnings", warnings.len() - 5));
    }
    if corpus.is_empty() {
        return Err(format!("the event corpus {} holds no events", data_dir.join(&config.evtx_dir).display()));
    }
    log(LogLevel::Info, &format!("corpus: {} events from {} files", corpus.len(), corpus.files().len()));
    Ok(corpus)
}

/// Parses the EVTX files and writes the cache file the plugin reads (native use: the plugin's
/// data directory is read-only).
pub fn write(data_dir: &Path, config: &TaskConfig) -> Result<(PathBuf, usize), String> {
    let (files, stamps) = sources(data_dir, config)?;
    let (corpus, _) = Corpus::load(&files);
    let path = cache_path(data_dir, config);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    corpus.write_cache(&path, &stamps).map_err(|e| format!("cannot write the corpus cache {}: {e}", path.display()))?;
    Ok((path, corpus.len()))
}
