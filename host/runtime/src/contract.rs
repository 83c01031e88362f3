//! Which contract a component was built against: the `sigmaforge:plugin` interfaces it imports
//! and exports, their package version, and so which world it implements. Checked before
//! linking so an incompatible or foreign component gets a message naming the file and both
//! versions instead of a linker error about a missing import.

use std::fmt;
use std::path::Path;

use anyhow::{Result, bail};

/// The WIT package version this host implements (`wit/sigmaforge.wit`).
pub const HOST_WIT_VERSION: Version = Version { major: 0, minor: 1, patch: 1 };
/// The WIT package name.
pub const PACKAGE: &str = "sigmaforge:plugin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        // Pre-release/build suffixes are not used by this package; refuse them as unknown.
        let mut parts = text.split('.');
        let v = Version { major: parts.next()?.parse().ok()?, minor: parts.next()?.parse().ok()?, patch: parts.next()?.parse().ok()? };
        parts.next().is_none().then_some(v)
    }

    /// Semver compatibility as the WIT file states it: same major, and while the major is 0,
    /// the same minor too.
    pub fn compatible_with(self, other: Version) -> bool {
        self.major == other.major && (self.major != 0 || self.minor == other.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    TaskPlugin,
    ToolPlugin,
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::TaskPlugin => "task-plugin",
            World::ToolPlugin => "tool-plugin",
        })
    }
}

/// What a component's imports and exports say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    pub world: World,
    pub version: Version,
    /// The component exports `references` (a task plugin of the `reference-task-plugin`
    /// world, WIT ≥ 0.1.1).
    pub references: bool,
}

/// Splits `sigmaforge:plugin/reward@0.1.0` into (`reward`, `0.1.0`).
fn split_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    rest.split_once('@')
}

/// Decides the world and version from the component's import and export names.
pub fn identify(file: &Path, imports: &[String], exports: &[String]) -> Result<Contract> {
    let mut versions: Vec<(String, &str)> = Vec::new();
    let mut exported = Vec::new();
    for (names, is_export) in [(imports, false), (exports, true)] {
        for name in names {
            if let Some((iface, ver)) = split_name(name) {
                versions.push((name.clone(), ver));
                if is_export {
                    exported.push(iface);
                }
            } else if name.starts_with(PACKAGE) {
                bail!("{}: `{name}` has no version; it was not built from a versioned {PACKAGE} WIT", file.display());
            }
        }
    }
    if exported.is_empty() {
        let shown: Vec<&str> = exports.iter().map(String::as_str).take(8).collect();
        bail!(
            "{} is not a SigmaForge plugin: it exports no `{PACKAGE}` interface (its exports: {}); \
             build it against wit/sigmaforge.wit with the task-plugin or tool-plugin world",
            file.display(),
            if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
        );
    }
    let (first_name, first_ver) = &versions[0];
    let version = Version::parse(first_ver)
        .ok_or_else(|| anyhow::anyhow!("{}: `{first_name}` has a version `{first_ver}` that is not x.y.z", file.display()))?;
    if let Some((other, _)) = versions.iter().find(|(_, v)| v != first_ver) {
        bail!("{}: mixes {PACKAGE} versions (`{first_name}` and `{other}`)", file.display());
    }
    if !version.compatible_with(HOST_WIT_VERSION) {
        bail!(
            "{}: plugin built against {PACKAGE}@{version}, but this host implements {PACKAGE}@{HOST_WIT_VERSION}; \
             rebuild the plugin against the host's wit/sigmaforge.wit (or use a host that supports {version})",
            file.display()
        );
    }
    let has = |iface: &str| exported.contains(&iface);
    let references = has("references");
    if references && !(has("tasks") && has("reward")) {
        bail!(
            "{}: exports `{PACKAGE}/references` but not the task interfaces (tasks + reward); `references` only extends a task plugin \
             (world reference-task-plugin)",
            file.display()
        );
    }
    let world = match (has("tasks") && has("reward"), has("tool")) {
        (true, false) => World::TaskPlugin,
        (false, true) => World::ToolPlugin,
        (true, true) => bail!("{}: exports both the task and the tool interfaces; a plugin implements one world", file.display()),
        (false, false) => bail!(
            "{}: exports {} of {PACKAGE} but neither the task-plugin world (tasks + reward) nor the tool-plugin world (tool)",
            file.display(),
            exported.join(", ")
        ),
    };
    if !has("plugin") {
        bail!("{}: does not export `{PACKAGE}/plugin` (info, init), which every plugin must", file.display());
    }
    Ok(Contract { world, version, references })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn task_plugin_is_identified() {
        let c = identify(
            Path::new("a.wasm"),
            &names(&["wasi:cli/environment@0.2.6", "sigmaforge:plugin/host@0.1.0"]),
            &names(&["sigmaforge:plugin/plugin@0.1.0", "sigmaforge:plugin/tasks@0.1.0", "sigmaforge:plugin/reward@0.1.0"]),
        )
        .unwrap();
        assert_eq!(c, Contract { world: World::TaskPlugin, version: Version { major: 0, minor: 1, patch: 0 }, references: false });
    }

    #[test]
    fn a_0_1_1_task_plugin_with_references_is_identified() {
        let c = identify(
            Path::new("a.wasm"),
            &names(&["sigmaforge:plugin/types@0.1.1", "sigmaforge:plugin/host@0.1.1"]),
            &names(&[
                "sigmaforge:plugin/plugin@0.1.1",
                "sigmaforge:plugin/tasks@0.1.1",
                "sigmaforge:plugin/reward@0.1.1",
                "sigmaforge:plugin/references@0.1.1",
            ]),
        )
        .unwrap();
        assert_eq!(c, Contract { world: World::TaskPlugin, version: HOST_WIT_VERSION, references: true });
    }

    #[test]
    fn references_without_the_task_interfaces_is_refused() {
        let err = identify(
            Path::new("odd.wasm"),
            &names(&["sigmaforge:plugin/host@0.1.1"]),
            &names(&["sigmaforge:plugin/plugin@0.1.1", "sigmaforge:plugin/tool@0.1.1", "sigmaforge:plugin/references@0.1.1"]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("odd.wasm") && err.contains("references") && err.contains("tasks + reward"), "{err}");
    }

    #[test]
    fn incompatible_version_names_both_versions() {
        let err = identify(
            Path::new("old.wasm"),
            &names(&["sigmaforge:plugin/host@0.2.0"]),
            &names(&["sigmaforge:plugin/plugin@0.2.0", "sigmaforge:plugin/tool@0.2.0"]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("old.wasm") && err.contains("0.2.0") && err.contains("0.1.1"), "{err}");
    }

    #[test]
    fn patch_versions_are_compatible_minor_versions_are_not_below_one() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("0.1.3").compatible_with(v("0.1.0")));
        assert!(v("0.1.0").compatible_with(HOST_WIT_VERSION));
        assert!(!v("0.2.0").compatible_with(v("0.1.0")));
        assert!(v("1.4.0").compatible_with(v("1.0.0")));
        assert!(!v("2.0.0").compatible_with(v("1.0.0")));
        assert!(Version::parse("0.1").is_none());
    }

    #[test]
    fn foreign_component_is_named() {
        let err = identify(Path::new("hello.wasm"), &names(&["wasi:cli/stdout@0.2.6"]), &names(&["wasi:cli/run@0.2.6"])).unwrap_err().to_string();
        assert!(err.contains("hello.wasm is not a SigmaForge plugin") && err.contains("wasi:cli/run"), "{err}");
    }
}
