//! Where plugin log lines (`host.log`) go. The default sink writes to stderr, tagged with the
//! plugin's name, at or above a level from `$SIGMAFORGE_PLUGIN_LOG` (debug|info|warn|error,
//! default info); embedders (trainer, server) pass their own sink.

use std::sync::Arc;

use crate::bindings::Level;

type SinkFn = dyn Fn(&str, Level, &str) + Send + Sync;

/// A shared log callback: `(plugin name, level, message)`.
#[derive(Clone)]
pub struct LogSink(Arc<SinkFn>);

impl LogSink {
    pub fn new(f: impl Fn(&str, Level, &str) + Send + Sync + 'static) -> Self {
        LogSink(Arc::new(f))
    }

    /// Stderr at or above `min`.
    pub fn stderr(min: Level) -> Self {
        LogSink::new(move |plugin, level, msg| {
            if rank(level) >= rank(min) {
                eprintln!("[plugin {plugin}] {}: {msg}", name(level));
            }
        })
    }

    /// Stderr at the level named by `$SIGMAFORGE_PLUGIN_LOG` (default info).
    pub fn from_env() -> Self {
        let min = std::env::var("SIGMAFORGE_PLUGIN_LOG").ok().and_then(|v| parse_level(&v)).unwrap_or(Level::Info);
        LogSink::stderr(min)
    }

    /// Drops everything.
    pub fn discard() -> Self {
        LogSink::new(|_, _, _| {})
    }

    pub fn write(&self, plugin: &str, level: Level, message: &str) {
        (self.0)(plugin, level, message)
    }
}

impl Default for LogSink {
    fn default() -> Self {
        LogSink::from_env()
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

pub fn rank(level: Level) -> u8 {
    match level {
        Level::Debug => 0,
        Level::Info => 1,
        Level::Warn => 2,
        Level::Error => 3,
    }
}

pub fn name(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

pub fn parse_level(text: &str) -> Option<Level> {
    match text.trim().to_ascii_lowercase().as_str() {
        "debug" => Some(Level::Debug),
        "info" => Some(Level::Info),
        "warn" | "warning" => Some(Level::Warn),
        "error" => Some(Level::Error),
        _ => None,
    }
}
