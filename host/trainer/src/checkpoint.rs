//! Checkpoints: everything needed to continue a run exactly where it stopped.
//!
//! Layout of `<run>/checkpoints/step-000010/`:
//! - `trainable.safetensors`: the trainable weights (LoRA A/B, or every weight for full FT);
//! - `optimizer.safetensors`: AdamW's moments (`m.<name>`, `v.<name>`);
//! - `state.json`: step, optimizer step count, sampler RNG, data position;
//! - `config.yaml`: the run config the checkpoint was written with;
//! - `checksums.json`: size and CRC-32 of each file above, written last.
//!
//! A checkpoint is written into a hidden temporary directory and renamed into place, so a
//! process killed while saving leaves either the previous checkpoint or the new one, never a
//! half-written directory that `--resume` would pick up. Files can still rot or be cut short
//! later (a full disk, a copy interrupted, bit flips): `--resume` verifies the checksums, and a
//! run directory whose newest checkpoint does not verify resumes from the newest one that does,
//! with a warning naming what was wrong. CRC-32 (`crc32fast`, several GB/s) rather than a
//! cryptographic hash: it guards against accidents, not attackers, and re-reading a 14B model's
//! optimizer state must stay cheap.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Where the next prompts come from: the shuffled order of epoch `epoch`, from `cursor` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub cursor: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Format version of this directory.
    pub version: u32,
    /// GRPO steps completed.
    pub step: u64,
    pub optimizer_steps: u64,
    pub rng: [u64; 4],
    pub data: DataPosition,
    /// Data-parallel runs: every rank's generation RNG, by rank (`rng` is rank 0's). Absent
    /// for one-process runs, whose checkpoints stay as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_rngs: Vec<[u64; 4]>,
}

pub const FORMAT_VERSION: u32 = 1;

/// What [`load`] returns.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: CheckpointState,
    pub config_yaml: String,
    pub trainable: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Writes a checkpoint atomically and removes old ones beyond `keep` (0 keeps all).
pub fn save(
    run_dir: &Path,
    state: &CheckpointState,
    config_yaml: &str,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let final_dir = root.join(step_dir_name(state.step));
    let tmp = root.join(format!(".{}.tmp-{}", step_dir_name(state.step), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let write = || -> Result<()> {
        candle_core::safetensors::save(trainable, tmp.join("trainable.safetensors"))?;
        candle_core::safetensors::save(optimizer, tmp.join("optimizer.safetensors"))?;
        fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
        fs::write(tmp.join("config.yaml"), config_yaml)?;
        for f in CHECKED_FILES {
            fs::File::open(tmp.join(f))?.sync_all()?;
        }
        let sums = Checksums::of(&tmp)?;
        fs::write(tmp.join(CHECKSUMS_FILE), serde_json::to_vec_pretty(&sums)?)?;
        fs::File::open(tmp.join(CHECKSUMS_FILE))?.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!("cannot write checkpoint {}", final_dir.display())));
    }
    if final_dir.exists() {
        // Re-saving a step (a resumed run that saves the same step again): replace it.
        let old = root.join(format!(".{}.old-{}", step_dir_name(state.step), std::process::id()));
        fs::rename(&final_dir, &old)?;
        fs::rename(&tmp, &final_dir)?;
        fs::remove_dir_all(&old)?;
    } else {
        fs::rename(&tmp, &final_dir).with_context(|| format!("cannot move checkpoint into {}", final_dir.display()))?;
    }
    if let Ok(d) = fs::File::open(&root) {
        let _ = d.sync_all();
    }
    if keep > 0 {
        let all = list(run_dir)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            fs::remove_dir_all(old).with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
        }
    }
    Ok(final_dir)
}

/// Completed checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = checkpoints_dir(run_dir);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&root).with_context(|| format!("cannot list {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok())
            && entry.path().join("state.json").is_file()
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// `path` may be a checkpoint directory or a run directory. For a run directory, its newest
/// checkpoint that verifies is used; each newer one that does not is skipped with a warning on
/// stderr. A checkpoint directory named explicitly must verify.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        verify(path)?;
        return Ok(path.to_path_buf());
    }
    ensure!(path.is_dir(), "--resume {}: no such directory", path.display());
    let all = list(path)?;
    if all.is_empty() {
        bail!("--resume {}: neither a checkpoint (no state.json) nor a run directory with checkpoints under checkpoints/", path.display());
    }
    let mut problems = Vec::new();
    for (_, dir) in all.iter().rev() {
        match verify(dir) {
            Ok(()) => {
                for p in &problems {
                    eprintln!("warning: skipping a damaged checkpoint: {p:#}");
                }
                if !problems.is_empty() {
                    eprintln!("warning: resuming from the newest intact checkpoint, {}", dir.display());
                }
                return Ok(dir.clone());
            }
            Err(e) => problems.push(e),
        }
    }
    let list = problems.iter().map(|e| format!("  {e:#}")).collect::<Vec<_>>().join("\n");
    bail!("--resume {}: no checkpoint verifies:\n{list}", path.display())
}

const CHECKED_FILES: [&str; 4] = ["trainable.safetensors", "optimizer.safetensors", "state.json", "config.yaml"];
const CHECKSUMS_FILE: &str = "checksums.json";

/// Size and CRC-32 of each file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checksums {
    files: std::collections::BTreeMap<String, FileSum>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSum {
    bytes: u64,
    crc32: u32,
}

impl Checksums {
    fn of(dir: &Path) -> Result<Self> {
        let mut files = std::collections::BTreeMap::new();
        for f in CHECKED_FILES {
            files.insert(f.to_string(), file_sum(&dir.join(f))?);
        }
        Ok(Self { files })
    }
}

fn file_sum(path: &Path) -> Result<FileSum> {
    use std::io::Read;
    let mut file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum { bytes, crc32: hasher.finalize() })
}

/// Checks a checkpoint's files against its `checksums.json`. Checkpoints written before
/// checksums existed have none and pass as long as their files are there.
pub fn verify(dir: &Path) -> Result<()> {
    let sums_path = dir.join(CHECKSUMS_FILE);
    if !sums_path.exists() {
        for f in CHECKED_FILES {
            ensure!(dir.join(f).is_file(), "checkpoint {}: {f} is missing", dir.display());
        }
        return Ok(());
    }
    let sums: Checksums = serde_json::from_slice(&fs::read(&sums_path).with_context(|| format!("cannot read {}", sums_path.display()))?)
        .with_context(|| format!("checkpoint {}: {CHECKSUMS_FILE} is not valid", dir.display()))?;
    for (name, want) in &sums.files {
        let path = dir.join(name);
        ensure!(path.is_file(), "checkpoint {}: {name} is missing", dir.display());
        let got = file_sum(&path)?;
        ensure!(got.bytes == want.bytes, "checkpoint {}: {name} has {} bytes, {} were written (cut short?)", dir.display(), got.bytes, want.bytes);
        ensure!(
            got.crc32 == want.crc32,
            "checkpoint {}: {name} does not match its checksum (crc32 {:08x}, written {:08x}): the file was damaged after it was saved",
            dir.display(),
            got.crc32,
            want.crc32
        );
    }
    Ok(())
}

/// Resolves `path` (see [`resolve`], which verifies the checksums) and loads that checkpoint.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    load_resolved(&resolve(path)?, device)
}

/// Loads a checkpoint directory that [`resolve`] returned, without verifying its checksums a
/// second time (re-reading a large model's optimizer state twice would double the resume cost).
pub fn load_resolved(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let dir = dir.to_path_buf();
    let ctx = |f: &str| format!("checkpoint {}: cannot read {f}", dir.display());
    let state: CheckpointState =
        serde_json::from_slice(&fs::read(dir.join("state.json")).with_context(|| ctx("state.json"))?).with_context(|| ctx("state.json"))?;
    ensure!(
        state.version == FORMAT_VERSION,
        "checkpoint {} has format version {}, this build reads version {FORMAT_VERSION}",
        dir.display(),
        state.version
    );
    let config_yaml = fs::read_to_string(dir.join("config.yaml")).with_context(|| ctx("config.yaml"))?;
    let trainable = candle_core::safetensors::load(dir.join("trainable.safetensors"), device).with_context(|| ctx("trainable.safetensors"))?;
    let optimizer = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device).with_context(|| ctx("optimizer.safetensors"))?;
    Ok(Checkpoint { dir, state, config_yaml, trainable, optimizer })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sf-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn save_load_round_trip_and_rotation() {
        let run = tmpdir("rt");
        let w: HashMap<String, Tensor> = [("a".to_string(), Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap())].into();
        let o: HashMap<String, Tensor> = [("m.a".to_string(), Tensor::new(&[0.1f32, 0.2], &Device::Cpu).unwrap())].into();
        for step in [5, 10, 15] {
            let st = CheckpointState {
                version: FORMAT_VERSION,
                step,
                optimizer_steps: step * 2,
                rng: [1, 2, 3, step],
                data: DataPosition { epoch: 1, cursor: 3 },
                rank_rngs: Vec::new(),
            };
            save(&run, &st, "x: 1\n", &w, &o, 2).unwrap();
        }
        let steps: Vec<u64> = list(&run).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![10, 15]);
        let c = load(&run, &Device::Cpu).unwrap();
        assert_eq!(c.state.step, 15);
        assert_eq!(c.state.rng, [1, 2, 3, 15]);
        assert_eq!(c.trainable["a"].to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        assert_eq!(c.optimizer["m.a"].to_vec1::<f32>().unwrap(), vec![0.1, 0.2]);
        assert_eq!(c.config_yaml, "x: 1\n");
        // A leftover temporary directory (killed while saving) is not a checkpoint.
        fs::create_dir_all(checkpoints_dir(&run).join(".step-000020.tmp-1")).unwrap();
        assert_eq!(resolve(&run).unwrap(), checkpoints_dir(&run).join("step-000015"));
        fs::remove_dir_all(&run).unwrap();
    }

    fn save_steps(run: &Path, steps: &[u64]) {
        let w: HashMap<String, Tensor> = [("a".to_string(), Tensor::new(&[1.5f32, -2.0, 3.0, 4.0], &Device::Cpu).unwrap())].into();
        let o: HashMap<String, Tensor> = [("m.a".to_string(), Tensor::new(&[0.1f32, 0.2, 0.3, 0.4], &Device::Cpu).unwrap())].into();
        for &step in steps {
            let st = CheckpointState {
                version: FORMAT_VERSION,
                step,
                optimizer_steps: step,
                rng: [1, 2, 3, step],
                data: DataPosition { epoch: 0, cursor: 0 },
                rank_rngs: Vec::new(),
            };
            save(run, &st, "x: 1\n", &w, &o, 0).unwrap();
        }
    }

    #[test]
    fn a_flipped_byte_in_the_newest_checkpoint_falls_back_to_the_previous_one() {
        let run = tmpdir("flip");
        save_steps(&run, &[5, 10]);
        let newest = checkpoints_dir(&run).join("step-000010");
        let file = newest.join("trainable.safetensors");
        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40; // inside the tensor data: the file still parses
        fs::write(&file, bytes).unwrap();
        let err = verify(&newest).unwrap_err().to_string();
        assert!(err.contains("trainable.safetensors") && err.contains("checksum"), "{err}");
        // Named explicitly, the damaged checkpoint is refused; the run directory falls back.
        assert!(load(&newest, &Device::Cpu).is_err());
        assert_eq!(resolve(&run).unwrap(), checkpoints_dir(&run).join("step-000005"));
        assert_eq!(load(&run, &Device::Cpu).unwrap().state.step, 5);
        fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn a_truncated_newest_checkpoint_falls_back_and_all_damaged_is_an_error() {
        let run = tmpdir("trunc");
        save_steps(&run, &[5, 10]);
        let cut = |step: &str| {
            let file = checkpoints_dir(&run).join(step).join("optimizer.safetensors");
            let bytes = fs::read(&file).unwrap();
            fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        };
        cut("step-000010");
        let err = verify(&checkpoints_dir(&run).join("step-000010")).unwrap_err().to_string();
        assert!(err.contains("optimizer.safetensors") && err.contains("cut short"), "{err}");
        assert_eq!(load(&run, &Device::Cpu).unwrap().state.step, 5);
        cut("step-000005");
        let err = format!("{:#}", resolve(&run).unwrap_err());
        assert!(err.contains("no checkpoint verifies") && err.contains("step-000005") && err.contains("step-000010"), "{err}");
        fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn checkpoints_without_checksums_still_load() {
        let run = tmpdir("old");
        save_steps(&run, &[5]);
        fs::remove_file(checkpoints_dir(&run).join("step-000005").join(CHECKSUMS_FILE)).unwrap();
        assert_eq!(load(&run, &Device::Cpu).unwrap().state.step, 5);
        fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn resume_from_an_empty_directory_is_a_clear_error() {
        let run = tmpdir("empty");
        let err = load(&run, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("--resume") && err.contains("checkpoints"), "{err}");
        fs::remove_dir_all(&run).unwrap();
    }
}
