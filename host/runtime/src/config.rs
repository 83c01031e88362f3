//! Plugin configuration: where a plugin's component is, what it may read, its limits and its
//! host config values. Parsed from YAML or JSON with unknown keys refused by name, so a typo
//! (`memory_mb`) is an error instead of a silently ignored limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer, Serialize};

/// Resource limits of one plugin's instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Cap on each instance's linear memory, in MiB.
    pub memory_mib: u64,
    /// Wall-clock limit of one `score`, `list-tasks` or `invoke` call, in milliseconds.
    pub call_timeout_ms: u64,
    /// Wall-clock limit of `init` (loading data, building indexes), in milliseconds.
    pub init_timeout_ms: u64,
    /// Warm instances kept for parallel scoring (0: one per available core).
    pub instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_mib: 1024, call_timeout_ms: 2000, init_timeout_ms: 120_000, instances: 0 }
    }
}

impl Limits {
    /// The instance count with 0 resolved to the number of available cores.
    pub fn instance_count(&self) -> usize {
        if self.instances > 0 { self.instances } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) }
    }

    fn check(&self, plugin: &str) -> Result<()> {
        if self.memory_mib == 0 || self.memory_mib > MAX_MEMORY_MIB {
            bail!("plugin `{plugin}`: limits.memory_mib must be between 1 and {MAX_MEMORY_MIB} (got {})", self.memory_mib);
        }
        if self.call_timeout_ms == 0 || self.init_timeout_ms == 0 {
            bail!("plugin `{plugin}`: limits.call_timeout_ms and limits.init_timeout_ms must be positive");
        }
        if self.instances > MAX_INSTANCES {
            bail!("plugin `{plugin}`: limits.instances must be at most {MAX_INSTANCES} (got {})", self.instances);
        }
        Ok(())
    }
}

/// The largest memory a wasm32 instance can address.
pub const MAX_MEMORY_MIB: u64 = 4096;
/// Upper bound on warm instances per plugin (each holds its own copy of the plugin's data).
pub const MAX_INSTANCES: usize = 64;

/// A host directory granted read-only to the plugin at a guest path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMount {
    pub host: PathBuf,
    #[serde(default = "default_guest_path")]
    pub guest: String,
}

fn default_guest_path() -> String {
    "/data".to_string()
}

/// One plugin of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin's name in logs and diagnostics; in a `plugins:` map it is the key.
    #[serde(default)]
    pub name: String,
    /// The component file (`.wasm`).
    pub path: PathBuf,
    #[serde(default)]
    pub limits: Limits,
    /// Read-only directories the plugin may read.
    #[serde(default)]
    pub data: Vec<DataMount>,
    /// Values the plugin reads with `host.config(key)`.
    #[serde(default, deserialize_with = "config_values")]
    pub config: BTreeMap<String, String>,
    /// One `host:port` a tool plugin may connect to over TCP; no network when absent.
    #[serde(default)]
    pub network: Option<String>,
}

impl PluginConfig {
    /// A plugin with default limits, named after the file stem, with no data and no config.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());
        PluginConfig { name, path, limits: Limits::default(), data: Vec::new(), config: BTreeMap::new(), network: None }
    }

    /// Grants `host` read-only at `/data`.
    pub fn with_data(mut self, host: impl Into<PathBuf>) -> Self {
        self.data.push(DataMount { host: host.into(), guest: default_guest_path() });
        self
    }

    /// Checks values that serde cannot: limits, guest paths, the network grant.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            bail!("plugin at {} has no name", self.path.display());
        }
        self.limits.check(&self.name)?;
        for mount in &self.data {
            if !mount.guest.starts_with('/') {
                bail!("plugin `{}`: data guest path `{}` must be absolute (e.g. /data)", self.name, mount.guest);
            }
            if !mount.host.is_dir() {
                bail!("plugin `{}`: data directory {} does not exist", self.name, mount.host.display());
            }
        }
        if let Some(addr) = &self.network {
            parse_network_grant(addr).with_context(|| format!("plugin `{}`: network grant", self.name))?;
        }
        Ok(())
    }

    /// Makes relative `path` and data host paths relative to `base` (the config file's folder).
    fn rebase(&mut self, base: &Path) {
        if self.path.is_relative() {
            self.path = base.join(&self.path);
        }
        for mount in &mut self.data {
            if mount.host.is_relative() {
                mount.host = base.join(&mount.host);
            }
        }
    }
}

/// Splits a `host:port` grant, refusing anything else (no ranges, no wildcards).
pub fn parse_network_grant(addr: &str) -> Result<(String, u16)> {
    let (host, port) = addr.rsplit_once(':').with_context(|| format!("`{addr}` is not host:port"))?;
    let port: u16 = port.parse().with_context(|| format!("`{addr}`: bad port `{port}`"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        bail!("`{addr}` is not host:port");
    }
    Ok((host.to_string(), port))
}

/// A set of plugins, as written in a plugins file or a run config's `plugins:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    pub plugins: BTreeMap<String, PluginConfig>,
}

impl PluginsConfig {
    /// Reads a YAML (`.yml`/`.yaml`) or JSON file; relative paths inside are resolved against
    /// the file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading plugins config {}", path.display()))?;
        let mut cfg: PluginsConfig = parse_config_text(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.normalize(base);
        Ok(cfg)
    }

    /// Fills names from the map keys and resolves relative paths against `base`.
    pub fn normalize(&mut self, base: &Path) {
        for (name, plugin) in &mut self.plugins {
            plugin.name = name.clone();
            plugin.rebase(base);
        }
    }
}

/// Parses YAML or JSON (by extension; JSON is also valid YAML) into `T`, naming the file in errors.
pub fn parse_config_text<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        serde_json::from_str(text).with_context(|| format!("invalid plugins config {}", path.display()))
    } else {
        serde_norway::from_str(text).with_context(|| format!("invalid plugins config {}", path.display()))
    }
}

/// Config values are strings for the plugin; YAML scalars (numbers, booleans) are accepted and
/// written as text, structured values as JSON text (the contract of `host.config`).
fn config_values<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, serde_json::Value> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<PluginsConfig> {
        let mut c: PluginsConfig = parse_config_text(yaml, Path::new("plugins.yml"))?;
        c.normalize(Path::new("/base"));
        Ok(c)
    }

    #[test]
    fn full_config_parses_with_names_and_rebased_paths() {
        let c = parse(
            "plugins:\n  sigma:\n    path: dist/sigma.wasm\n    limits: {memory_mib: 256, call_timeout_ms: 500}\n    data:\n      - host: data\n    config:\n      weight.iou: 0.7\n      strict: true\n      names: [a, b]\n",
        )
        .unwrap();
        let p = &c.plugins["sigma"];
        assert_eq!(p.name, "sigma");
        assert_eq!(p.path, Path::new("/base/dist/sigma.wasm"));
        assert_eq!(p.limits.memory_mib, 256);
        assert_eq!(p.limits.call_timeout_ms, 500);
        assert_eq!(p.limits.init_timeout_ms, Limits::default().init_timeout_ms);
        assert_eq!(p.data[0].host, Path::new("/base/data"));
        assert_eq!(p.data[0].guest, "/data");
        assert_eq!(p.config["weight.iou"], "0.7");
        assert_eq!(p.config["strict"], "true");
        assert_eq!(p.config["names"], r#"["a","b"]"#);
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = parse("plugins:\n  sigma:\n    path: a.wasm\n    limits: {memory_mb: 256}\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("memory_mb"), "{msg}");
        assert!(msg.contains("plugins.yml"), "{msg}");
    }

    #[test]
    fn limits_are_checked() {
        let mut p = PluginConfig::from_path("/x/a.wasm");
        assert_eq!(p.name, "a");
        p.limits.memory_mib = 0;
        assert!(p.validate().unwrap_err().to_string().contains("memory_mib"));
        p.limits.memory_mib = 64;
        p.network = Some("localhost".into());
        assert!(format!("{:#}", p.validate().unwrap_err()).contains("host:port"));
        p.network = Some("127.0.0.1:8080".into());
        p.validate().unwrap();
    }

    #[test]
    fn network_grant_parsing() {
        assert_eq!(parse_network_grant("127.0.0.1:80").unwrap(), ("127.0.0.1".into(), 80));
        assert_eq!(parse_network_grant("[::1]:443").unwrap(), ("::1".into(), 443));
        assert!(parse_network_grant("example.org:http").is_err());
    }
}
