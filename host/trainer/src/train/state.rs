//! Saving and restoring the trainer's state: checkpoints of the weights, optimizer moments,
//! step, RNG streams and data position, and resuming from one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use candle_core::Tensor;

use super::Trainer;
use crate::checkpoint::{self, Checkpoint, CheckpointState, FORMAT_VERSION};
use crate::metrics;
use crate::sampler::TaskSampler;
use sigmaforge_model::rng::SamplerRng;

impl Trainer {
    /// Continue from a checkpoint: weights, optimizer moments, step, RNG and data position.
    /// Metrics logged after the checkpoint's step are dropped (they will be produced again).
    pub fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.model.load_trainable(&ckpt.trainable).with_context(|| format!("checkpoint {}", ckpt.dir.display()))?;
        self.optimizer
            .load_state(ckpt.optimizer.clone(), ckpt.state.optimizer_steps)
            .with_context(|| format!("checkpoint {}", ckpt.dir.display()))?;
        self.step = ckpt.state.step;
        self.rng = SamplerRng::from_state(self.rank_rng_state(&ckpt.state, &ckpt.dir)?);
        self.sampler = TaskSampler::at(self.tasks.len(), self.cfg.training.seed, ckpt.state.data);
        self.coverage_checked = true;
        self.dp.verify_same_weights(self.optimizer.params(), &format!("after resuming from {}", ckpt.dir.display()))?;
        // Logs written after the checkpoint belong to steps that will run again: drop them, or a
        // resumed run would hold those steps twice. Each rank owns its rollouts file.
        let truncated = metrics::truncate_jsonl_after(&self.run_dir.join(self.rollouts_file()), self.step)
            .and_then(|()| if self.dp.is_primary() { metrics::truncate_after(&self.run_dir, self.step) } else { Ok(()) });
        self.dp.agree(truncated, "rewriting metrics.jsonl and rollouts.jsonl for the resumed run")
    }

    /// This rank's generation RNG state in a checkpoint; the job must have as many ranks as
    /// the one that wrote it, since each rank continues its own random stream.
    fn rank_rng_state(&self, state: &CheckpointState, dir: &Path) -> Result<[u64; 4]> {
        let written_by = state.rank_rngs.len().max(1);
        ensure!(
            written_by == self.dp.world_size(),
            "checkpoint {} was written by a job of {written_by} rank(s); resume it with WORLD_SIZE={written_by} (this job has {})",
            dir.display(),
            self.dp.world_size()
        );
        Ok(if state.rank_rngs.is_empty() { state.rng } else { state.rank_rngs[self.dp.rank()] })
    }

    /// Writes a checkpoint (rank 0; every rank of a data-parallel job must call this, since it
    /// gathers their RNG states and checks that their weights agree). Returns the directory on
    /// rank 0, `None` on the others.
    pub fn save_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let step = self.step;
        self.dp.verify_same_weights(self.optimizer.params(), &format!("at step {step}"))?;
        // Sharded optimizer state is gathered, so the checkpoint does not depend on the sharding.
        let (opt_state, optimizer_steps) = self.dp.full_optimizer_state(&self.optimizer)?;
        let rank_rngs: Vec<[u64; 4]> = if self.dp.is_distributed() {
            let all = self.dp.gather_u64s(&self.rng.state(), "the generation RNG states")?;
            all.into_iter().map(|s| [s[0], s[1], s[2], s[3]]).collect()
        } else {
            Vec::new()
        };
        let written = if self.dp.is_primary() {
            let trainable: HashMap<String, Tensor> = self.optimizer.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
            let state = CheckpointState {
                version: FORMAT_VERSION,
                step: self.step,
                optimizer_steps,
                rng: rank_rngs.first().copied().unwrap_or(self.rng.state()),
                data: self.sampler.position(),
                rank_rngs,
            };
            self.cfg
                .to_yaml()
                .and_then(|yaml| checkpoint::save(&self.run_dir, &state, &yaml, &trainable, &opt_state, self.cfg.checkpoint.keep))
                .map(Some)
        } else {
            Ok(None)
        };
        self.dp.agree(written, &format!("writing the checkpoint of step {step}"))
    }
}
