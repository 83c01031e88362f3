//! Where SigmaForge finds its public corpora (EVTX samples, SigmaHQ rules, the regression suite,
//! the knowledge corpus, task lists), and how it fetches pinned upstream copies.
//!
//! Resolution order: an explicit path (a `--data` flag or config key), then `$SIGMAFORGE_DATA`,
//! then `../shared/data` relative to the working directory or to any ancestor of it (the layout
//! of this development environment and of CI). The corpora are never committed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The environment variable naming the data directory.
pub const DATA_ENV: &str = "SIGMAFORGE_DATA";

/// The command that fetches the corpora, named in every "not found" message.
pub const FETCH_COMMAND: &str = "sigmaforge data fetch --into <dir> (or scripts/fetch-data.sh <dir>)";

/// One pinned upstream source of the data directory.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// Folder under the data directory that this source fills.
    pub folder: &'static str,
    pub repository: &'static str,
    pub commit: &'static str,
    /// Paths inside the repository that are taken (git sparse-checkout patterns).
    pub paths: &'static [&'static str],
    /// Folder under `folder` to place the checkout in (empty: `folder` itself).
    pub subfolder: &'static str,
}

/// The pinned upstream copies (see each folder's SOURCES.md). The knowledge corpus and task lists
/// are derived data that ship with SigmaForge's release archive rather than from one repository.
pub const SOURCES: &[Source] = &[
    Source {
        folder: "evtx",
        repository: "https://github.com/sbousseaden/EVTX-ATTACK-SAMPLES",
        commit: "4ceed2f4706daf601c212a8f91c113dd85349a2c",
        paths: &["*.evtx", "README.md", "LICENSE*"],
        subfolder: "evtx-attack-samples",
    },
    Source {
        folder: "evtx",
        repository: "https://github.com/Yamato-Security/hayabusa-sample-evtx",
        commit: "071da2e1f18d570162a61d8fd476f5454bbf6631",
        paths: &["*.evtx", "README.md", "LICENSE*"],
        subfolder: "hayabusa-sample-evtx",
    },
    Source {
        folder: "sigma",
        repository: "https://github.com/SigmaHQ/sigma",
        commit: "8eaafff1f2845a696050e05e72ba1140ee190698",
        paths: &["rules/windows/", "rules-threat-hunting/windows/", "rules-emerging-threats/", "tests/"],
        subfolder: "",
    },
    Source {
        folder: "sigma-regression",
        repository: "https://github.com/SigmaHQ/sigma",
        commit: "8eaafff1f2845a696050e05e72ba1140ee190698",
        paths: &["regression_data/"],
        subfolder: "",
    },
];

/// Resolves the data directory: `explicit`, then `$SIGMAFORGE_DATA`, then `../shared/data`
/// beside the working directory or one of its ancestors.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_dir() {
            bail!("data directory {} does not exist; fetch the corpora with `{FETCH_COMMAND}`", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(DATA_ENV) {
        let p = PathBuf::from(p);
        if !p.is_dir() {
            bail!("${DATA_ENV} = {} is not a directory; fetch the corpora with `{FETCH_COMMAND}`", p.display());
        }
        return Ok(p);
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    for dir in cwd.ancestors() {
        let candidate = dir.join("../shared/data");
        if candidate.join("evtx").is_dir() || candidate.join("sigma").is_dir() {
            return Ok(candidate.canonicalize().unwrap_or(candidate));
        }
    }
    bail!(
        "no data directory: pass --data <dir>, set ${DATA_ENV}, or place the corpora at ../shared/data; \
         fetch them with `{FETCH_COMMAND}`"
    )
}

/// For tests: the data directory, or a panic that names the fetch command (tests that need the
/// corpus must fail loudly, never skip).
pub fn for_tests() -> PathBuf {
    match resolve(None) {
        Ok(p) => p,
        Err(e) => panic!("this test needs the public corpora: {e:#}"),
    }
}

/// A sub-folder of the data directory, with an error naming it when missing.
pub fn folder(data: &Path, name: &str) -> Result<PathBuf> {
    let p = data.join(name);
    if !p.is_dir() {
        bail!("{} has no `{name}` folder; fetch the corpora with `{FETCH_COMMAND}`", data.display());
    }
    Ok(p)
}

/// Fetches the pinned upstream copies into `into` with `git` (sparse, shallow checkouts of the
/// pinned commits). Needs network access to github.com.
pub fn fetch(into: &Path, mut progress: impl FnMut(&str)) -> Result<()> {
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    for src in SOURCES {
        let dest = if src.subfolder.is_empty() { into.join(src.folder) } else { into.join(src.folder).join(src.subfolder) };
        progress(&format!("fetching {} @ {} into {}", src.repository, &src.commit[..12], dest.display()));
        let checkout = into.join(".checkouts").join(src.repository.rsplit('/').next().unwrap_or("repo"));
        if !checkout.join(".git").is_dir() {
            std::fs::create_dir_all(&checkout)?;
            git(&checkout, &["init", "-q"])?;
            git(&checkout, &["remote", "add", "origin", src.repository])?;
        }
        git(&checkout, &["fetch", "-q", "--depth", "1", "origin", src.commit])?;
        git(&checkout, &["checkout", "-q", "FETCH_HEAD"])?;
        copy_matching(&checkout, &dest, src.paths)?;
    }
    progress("done; the knowledge corpus and task lists come with the SigmaForge data archive");
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("running git {} in {}", args.join(" "), dir.display()))?;
    if !status.success() {
        bail!("git {} failed in {} ({status})", args.join(" "), dir.display());
    }
    Ok(())
}

/// Copies files of `from` whose path matches one of `patterns` (a folder prefix ending in `/`,
/// a `*.ext` suffix, or a `NAME*` prefix) to `to`, keeping relative paths.
fn copy_matching(from: &Path, to: &Path, patterns: &[&str]) -> Result<()> {
    let mut stack = vec![from.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(from).unwrap().to_string_lossy().replace('\\', "/");
            if rel.starts_with(".git") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy();
            let wanted = patterns.iter().any(|p| {
                if let Some(ext) = p.strip_prefix('*') {
                    name.ends_with(ext)
                } else if let Some(prefix) = p.strip_suffix('*') {
                    name.starts_with(prefix)
                } else if p.ends_with('/') {
                    rel.starts_with(p)
                } else {
                    rel == *p
                }
            });
            if wanted {
                let dest = to.join(&rel);
                std::fs::create_dir_all(dest.parent().unwrap())?;
                std::fs::copy(&path, &dest).with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_directory_names_the_fetch_command() {
        let err = resolve(Some(Path::new("/nonexistent/sigmaforge-data"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/sigmaforge-data"), "{err}");
        assert!(err.contains("data fetch"), "{err}");
    }

    #[test]
    fn copy_matching_filters_by_pattern() {
        let tmp = std::env::temp_dir().join(format!("sf-data-test-{}", std::process::id()));
        let src = tmp.join("src");
        std::fs::create_dir_all(src.join("rules/windows")).unwrap();
        std::fs::create_dir_all(src.join("other")).unwrap();
        std::fs::write(src.join("rules/windows/a.yml"), "x").unwrap();
        std::fs::write(src.join("other/b.evtx"), "y").unwrap();
        std::fs::write(src.join("other/c.txt"), "z").unwrap();
        copy_matching(&src, &tmp.join("dst"), &["rules/windows/", "*.evtx"]).unwrap();
        assert!(tmp.join("dst/rules/windows/a.yml").is_file());
        assert!(tmp.join("dst/other/b.evtx").is_file());
        assert!(!tmp.join("dst/other/c.txt").exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
