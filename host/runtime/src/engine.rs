//! The wasmtime engine shared by every plugin, its epoch ticker, and the on-disk compile cache.
//!
//! Compiling a 2 MiB component with Cranelift takes ~1 s on two cores while loading a cached
//! `.cwasm` takes ~0.4 ms, so compiled code is cached by (wasm sha256, wasmtime version, engine
//! configuration hash): a `.cwasm` from another engine configuration would be refused or, worse,
//! run with the wrong assumptions.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::MAX_MEMORY_MIB;

/// How often the ticker advances the epoch; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The wasmtime version whose code generation the cache entries depend on.
const WASMTIME_VERSION: &str = "48.0.8";

/// Builds the engine: epoch interruption for wall-clock limits, the pooling allocator for
/// cheap instance replacement, and a background thread that ticks the epoch while the engine
/// lives (it holds only a weak reference, so it ends when the last engine clone is dropped).
pub fn new_engine(max_instances: u32) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    // A component made by wasm-component-ld holds the program plus small adapter modules,
    // so several core instances and memories per plugin instance.
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 8)
        .total_memories(max_instances * 4)
        .total_tables(max_instances * 8)
        .total_stacks(max_instances)
        .max_memory_size((MAX_MEMORY_MIB as usize) << 20)
        .table_elements(100_000);
    let mut config = Config::new();
    config.epoch_interruption(true).parallel_compilation(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(|e| anyhow!("creating the wasmtime engine: {e}"))?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sigmaforge-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .context("starting the epoch ticker thread")?;
    Ok(engine)
}

/// Epoch ticks for a time limit, rounded up, plus one because the current tick is partly spent.
pub fn ticks_for(limit: Duration) -> u64 {
    limit.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1
}

/// Compiled components on disk.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// `dir: None` disables caching (every load compiles).
    pub fn new(dir: Option<PathBuf>) -> Self {
        CompileCache { dir }
    }

    /// The default location: `$SIGMAFORGE_CACHE`, `$XDG_CACHE_HOME/sigmaforge`, `~/.cache/sigmaforge`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("SIGMAFORGE_CACHE") {
            return Some(PathBuf::from(p));
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(p).join("sigmaforge"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("sigmaforge"))
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Loads `wasm` (the bytes of `file`) compiled for `engine`, from the cache when present.
    /// A cache that can't be read or written only costs a compile; it never fails the load.
    pub fn load(&self, engine: &Engine, file: &Path, wasm: &[u8]) -> Result<Component> {
        let Some(dir) = &self.dir else {
            return compile(engine, file, wasm);
        };
        let path = dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
        if path.is_file() {
            // SAFETY: the file was written by `Component::serialize` of this same engine
            // configuration (the key covers the wasm, the wasmtime version and the engine's
            // compatibility hash) into a cache directory that only this program writes.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = compile(engine, file, wasm)?;
        if let Ok(bytes) = component.serialize() {
            let _ = std::fs::create_dir_all(dir);
            // Write then rename, so a concurrent reader never maps a half-written file.
            let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), path.file_name().unwrap().to_string_lossy()));
            if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &path).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(component)
    }
}

fn compile(engine: &Engine, file: &Path, wasm: &[u8]) -> Result<Component> {
    Component::new(engine, wasm).map_err(|e| {
        let hint = if wasm.starts_with(b"\0asm\x01\0\0\0") {
            " (it is a core wasm module, not a component: build it for the wasm32-wasip2 target)"
        } else if !wasm.starts_with(b"\0asm") {
            " (not a WebAssembly file)"
        } else {
            ""
        };
        anyhow!("{} is not a loadable WebAssembly component{hint}: {e}", file.display())
    })
}

/// sha256 over the wasm bytes, the wasmtime version and the engine's compatibility hash.
fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    h.write(WASMTIME_VERSION.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.write(&Sha256::digest(wasm));
    h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file's bytes, hex (shown by `plugin inspect`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks_for(Duration::from_millis(1)), 2);
        assert_eq!(ticks_for(Duration::from_millis(10)), 2);
        assert_eq!(ticks_for(Duration::from_millis(2000)), 201);
    }
}
