//! What one plugin instance's Store holds and grants: the WASI context (read-only data
//! directories, no env, no args, closed stdin, captured stdout/stderr, no network unless one
//! address is granted), a memory limiter that remembers what it refused, and the two host
//! functions of the contract (`log`, `config`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, anyhow};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::Level;
use crate::bindings::task::sigmaforge::plugin::{host, types};
use crate::config::PluginConfig;
use crate::log::LogSink;

/// Everything the sandbox needs to build a Store for one plugin, resolved once at load time.
#[derive(Clone)]
pub struct Grants {
    pub plugin: Arc<str>,
    pub config: Arc<BTreeMap<String, String>>,
    pub mounts: Vec<(std::path::PathBuf, String)>,
    pub network: Option<Vec<SocketAddr>>,
    pub memory_bytes: usize,
    pub log: LogSink,
}

impl Grants {
    pub fn from_config(cfg: &PluginConfig, log: LogSink) -> Result<Self> {
        let network = match &cfg.network {
            None => None,
            Some(grant) => {
                use std::net::ToSocketAddrs;
                let (host, port) = crate::config::parse_network_grant(grant)?;
                let addrs: Vec<SocketAddr> = (host.as_str(), port)
                    .to_socket_addrs()
                    .with_context(|| format!("plugin `{}`: resolving network grant `{grant}`", cfg.name))?
                    .collect();
                Some(addrs)
            }
        };
        Ok(Grants {
            plugin: cfg.name.as_str().into(),
            config: Arc::new(cfg.config.clone()),
            mounts: cfg.data.iter().map(|m| (m.host.clone(), m.guest.clone())).collect(),
            network,
            memory_bytes: (cfg.limits.memory_mib as usize) << 20,
            log,
        })
    }

    /// A fresh Store state for one instance.
    pub fn new_state(&self) -> Result<State> {
        let output = TailPipe::default();
        let mut b = WasiCtxBuilder::new();
        b.stdout(output.clone()).stderr(output.clone());
        for (host_dir, guest) in &self.mounts {
            b.preopened_dir(host_dir, guest, FsPerms::ReadOnly)
                .map_err(|e| anyhow!("plugin `{}`: cannot grant {} at {guest}: {e}", self.plugin, host_dir.display()))?;
        }
        if let Some(allowed) = &self.network {
            let allowed = Arc::new(allowed.clone());
            // `connect` first binds implicitly to the wildcard address; that bind must pass the
            // check too, or every granted connect is refused (wasm-notes 3(c)).
            b.allow_tcp(true).allow_ip_name_lookup(true).socket_addr_check(move |addr, use_| {
                let allowed = allowed.clone();
                Box::pin(async move {
                    match use_ {
                        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                        SocketAddrUse::TcpConnect => allowed.contains(&addr),
                        _ => false,
                    }
                })
            });
        }
        Ok(State {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { cap: self.memory_bytes, denied: None },
            plugin: self.plugin.clone(),
            config: self.config.clone(),
            log: self.log.clone(),
            output,
        })
    }
}

/// The data of one Store.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    plugin: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    log: LogSink,
    pub output: TailPipe,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        self.log.write(&self.plugin, level, &message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

/// Caps linear-memory growth and records the refused size, so that the `unreachable` trap a
/// Rust guest raises on allocation failure can be reported as "memory cap exceeded".
pub struct MemoryLimiter {
    cap: usize,
    /// The largest size a grow asked for and was refused.
    pub denied: Option<usize>,
}

impl MemoryLimiter {
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.cap && maximum.is_none_or(|m| desired <= m);
        if !allowed {
            self.denied = Some(self.denied.map_or(desired, |d| d.max(desired)));
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }
}

/// Plugin stdout/stderr: the last few KiB are kept (a guest panic message ends up here and is
/// appended to the trap diagnostic); older output is dropped rather than trapping the guest.
#[derive(Clone, Default)]
pub struct TailPipe {
    buf: Arc<Mutex<VecDeque<u8>>>,
}

const TAIL_BYTES: usize = 4096;

impl TailPipe {
    /// The captured tail, trimmed, lossily decoded.
    pub fn tail(&self) -> String {
        let buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = buf.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        text.trim().to_string()
    }

    pub fn clear(&self) {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let keep = &data[data.len().saturating_sub(TAIL_BYTES)..];
        buf.extend(keep);
        let excess = buf.len().saturating_sub(TAIL_BYTES);
        buf.drain(..excess);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_records_the_refused_size() {
        let mut l = MemoryLimiter { cap: 64 << 20, denied: None };
        assert!(l.memory_growing(0, 32 << 20, None).unwrap());
        assert!(!l.memory_growing(32 << 20, 100 << 20, None).unwrap());
        assert_eq!(l.denied, Some(100 << 20));
    }

    #[test]
    fn tail_pipe_keeps_the_end() {
        use tokio::io::AsyncWrite;
        let p = TailPipe::default();
        let waker = std::task::Waker::noop();
        let mut cx = TaskContext::from_waker(waker);
        let mut w = p.clone();
        for _ in 0..2000 {
            let _ = Pin::new(&mut w).poll_write(&mut cx, b"0123456789");
        }
        let _ = Pin::new(&mut w).poll_write(&mut cx, b"panicked at the end");
        let tail = p.tail();
        assert!(tail.len() <= TAIL_BYTES);
        assert!(tail.ends_with("panicked at the end"));
    }
}
