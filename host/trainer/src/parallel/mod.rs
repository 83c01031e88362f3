//! Data parallelism for the GRPO trainer: what each rank trains on, and the few collectives
//! that make N ranks compute exactly the update one process would compute on all their samples.
//!
//! The scheme (DDP-style, one process per device):
//! - every rank draws the same prompts (same sampler seed) and handles a contiguous share of
//!   them ([`DataParallel::local_prompts`]); whole groups stay on one rank, so group-relative
//!   advantages need no communication;
//! - generation RNGs differ per rank ([`generation_seed`]), otherwise every rank would sample the
//!   same completions for equal prompts;
//! - the loss normaliser (token count, sequence count, longest completion) is made global
//!   ([`DataParallel::loss_normalizer`]) so that each rank's loss is its part of the *global*
//!   loss and the summed gradient is the single-process gradient of all samples;
//! - gradients are summed by an f32 all-reduce per optimizer step, in buckets of consecutive
//!   parameters ([`DataParallel::all_reduce_gradients`]); clipping and AdamW then run identically on every
//!   rank, so the weights stay equal, which [`DataParallel::verify_same_weights`] checks
//!   bit for bit with a checksum at the start, after a resume and at every checkpoint;
//! - metrics are computed from every rank's rollouts ([`DataParallel::gather_rows`]);
//! - optionally (ZeRO stage 1, `training.shard_optimizer_state`), each rank keeps the AdamW
//!   moments and master weights of its share of the parameters only ([`shard_owners`]),
//!   updates those, and each owner broadcasts its new values
//!   ([`DataParallel::share_updated_parameters`]); checkpoints gather the state on rank 0
//!   ([`DataParallel::full_optimizer_state`]);
//! - optionally (ZeRO stage 2, `training.shard_gradients`), gradients are not all-reduced at
//!   the end of the step but reduced to their owners after every backward *segment* (one
//!   layer with activation checkpointing, see [`sigmaforge_model::model::CausalLm::backward_bounded`]):
//!   a rank accumulates only the gradients of the parameters it owns
//!   ([`StepGradients`], [`DataParallel::end_segment`]). Every rank must reduce the same
//!   segments in the same order, so ranks with fewer micro-batches than others take part in
//!   the missing ones with empty segments ([`DataParallel::micro_batches_everywhere`]); the
//!   global gradient norm for clipping is summed from the owners' shares.
//!
//! Collectives move one parameter (or one [`BUCKET`] of it) at a time, so the extra memory they
//! need is bounded by the largest parameter, not the model.
//!
//! With world size 1 ([`DataParallel::single`]) every collective returns its input unchanged,
//! so a one-process run executes this same code with the same numbers as before.
//!
//! The collectives carry f32 (NCCL's native type for gradients). Values that must survive
//! exactly (per-rollout rewards, RNG states, checksums) are sent so that f32 sums are exact:
//! f64 as a (hi, lo) f32 pair placed in a slot only one rank fills, u64 as four 16-bit pieces.
//!
//! Layout: this module holds [`DataParallel`] (the rank's place in the job, the exact
//! collectives for statistics, metrics and checks, the global loss normaliser), `gradients` how
//! a step's gradients become global (bucketed all-reduce, or ZeRO-2 reduction to owners), and
//! `sharding` which rank owns which optimizer state (ZeRO-1) and how owners share their values.

mod gradients;
mod sharding;

use std::ops::Range;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Var};
use sigmaforge_distributed::{Collective, SingleProcess, shard};

use crate::grpo::{LossAggregation, LossNormalizer};

pub use gradients::StepGradients;
pub use sharding::shard_owners;

/// The seed of a rank's generation RNG: the run's seed for rank 0 (so a one-process run samples
/// what it always did), a different stream for every other rank.
pub fn generation_seed(base: u64, rank: usize) -> u64 {
    base ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The most values one collective call moves (128 MB of f32): bounds the staging buffers a
/// backend allocates (NCCL copies through the GPU) however large a parameter is.
pub const BUCKET: usize = 1 << 25;

/// This process's place in a data-parallel job and its collectives.
pub struct DataParallel {
    comm: Box<dyn Collective>,
    /// With sharded optimizer state: the owning rank of each trainable parameter.
    owners: Option<Vec<usize>>,
    /// ZeRO-2: gradients are reduced to their owners segment by segment.
    shard_gradients: bool,
    /// Values per collective call ([`BUCKET`]; smaller in tests).
    bucket: usize,
}

impl Default for DataParallel {
    fn default() -> Self {
        Self::single()
    }
}

impl DataParallel {
    /// One process: every collective is the identity.
    pub fn single() -> Self {
        Self { comm: Box::new(SingleProcess), owners: None, shard_gradients: false, bucket: BUCKET }
    }

    pub fn new(comm: Box<dyn Collective>) -> Self {
        Self { comm, owners: None, shard_gradients: false, bucket: BUCKET }
    }

    /// The same with at most `values` per collective call (tests exercise the bucketing with
    /// small ones).
    pub fn with_bucket_size(mut self, values: usize) -> Self {
        self.bucket = values.max(1);
        self
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Rank 0 writes metrics, checkpoints, the plot and the exports.
    pub fn is_primary(&self) -> bool {
        self.rank() == 0
    }

    pub fn is_distributed(&self) -> bool {
        self.world_size() > 1
    }

    /// "rank R of W: " for messages of a distributed job, "" otherwise.
    pub fn label(&self) -> String {
        if self.is_distributed() { format!("rank {} of {}: ", self.rank(), self.world_size()) } else { String::new() }
    }

    /// Which of a step's `prompts` (indices into the step's prompt list) this rank generates
    /// for and trains on. Contiguous and in rank order, so concatenating every rank's rollouts
    /// gives the single-process order.
    pub fn local_prompts(&self, prompts: usize) -> Range<usize> {
        shard(prompts, self.rank(), self.world_size())
    }

    fn all_reduce(&mut self, data: &mut [f32], what: &str) -> Result<()> {
        let label = self.label();
        self.comm.all_reduce_sum(data).with_context(|| format!("{label}all-reduce of {what} failed"))
    }

    /// The loss normaliser of the whole job's batch, from this rank's completion lengths
    /// (loss-masked tokens per completion). `None` when no rank has any sample (every group
    /// was dropped): then no rank updates, and all of them agree on that.
    pub fn loss_normalizer(&mut self, aggregation: LossAggregation, local_lengths: &[usize]) -> Result<Option<LossNormalizer>> {
        let local_max = local_lengths.iter().copied().max().unwrap_or(0);
        if !self.is_distributed() {
            // Exactly what the single-process trainer always computed.
            return Ok((!local_lengths.is_empty()).then(|| LossNormalizer::for_batch(aggregation, local_lengths, local_max.max(1))));
        }
        let tokens: usize = local_lengths.iter().sum();
        // f32 sums of integers are exact below 2^24; a batch is far below that.
        ensure!(tokens < 1 << 24 && local_lengths.len() < 1 << 24, "{}batch of {tokens} tokens is too large to count exactly in f32", self.label());
        // [tokens, sequences, max length of rank 0, …, max length of rank W-1]
        let world = self.world_size();
        let mut buf = vec![0f32; 2 + world];
        buf[0] = tokens as f32;
        buf[1] = local_lengths.len() as f32;
        buf[2 + self.rank()] = local_max as f32;
        self.all_reduce(&mut buf, "the loss normaliser")?;
        let sequences = buf[1] as usize;
        if sequences == 0 {
            return Ok(None);
        }
        let max_len = buf[2..].iter().fold(0f32, |a, &b| a.max(b)) as usize;
        Ok(Some(LossNormalizer {
            aggregation,
            total_tokens: (buf[0] as usize).max(1) as f64,
            total_sequences: sequences as f64,
            max_completion_len: max_len.max(1) as f64,
        }))
    }

    /// Element-wise sum over ranks of f64 statistics (loss, token counts, clip counts …).
    /// Precise to about 1e-7 relative (f32 sums of the hi and lo parts); exact for world size 1.
    pub fn sum_f64(&mut self, values: &mut [f64], what: &str) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let mut buf: Vec<f32> = values.iter().flat_map(|&v| split_f64(v)).collect();
        self.all_reduce(&mut buf, what)?;
        for (v, pair) in values.iter_mut().zip(buf.chunks_exact(2)) {
            *v = pair[0] as f64 + pair[1] as f64;
        }
        Ok(())
    }

    /// Concatenates every rank's rows of `cols` values: this rank holds rows
    /// `row_offset..row_offset + local.len() / cols` of `total_rows`. Each slot is written by one
    /// rank only, so the values arrive with about 48 bits of precision (see [`split_f64`]).
    pub fn gather_rows(&mut self, local: &[f64], cols: usize, row_offset: usize, total_rows: usize, what: &str) -> Result<Vec<f64>> {
        ensure!(cols > 0 && local.len().is_multiple_of(cols), "{} values do not form rows of {cols}", local.len());
        ensure!(row_offset * cols + local.len() <= total_rows * cols, "rows {row_offset}.. do not fit in {total_rows} rows");
        if !self.is_distributed() {
            ensure!(local.len() == total_rows * cols, "a single process must hold every row");
            return Ok(local.to_vec());
        }
        let mut buf = vec![0f32; total_rows * cols * 2];
        for (i, &v) in local.iter().enumerate() {
            let [hi, lo] = split_f64(v);
            buf[2 * (row_offset * cols + i)] = hi;
            buf[2 * (row_offset * cols + i) + 1] = lo;
        }
        self.all_reduce(&mut buf, what)?;
        Ok(buf.chunks_exact(2).map(|p| p[0] as f64 + p[1] as f64).collect())
    }

    /// One row of `local.len()` values per rank, in rank order (every rank must pass the same
    /// length).
    pub fn gather_per_rank(&mut self, local: &[f64], what: &str) -> Result<Vec<Vec<f64>>> {
        let cols = local.len().max(1);
        let mut padded = local.to_vec();
        padded.resize(cols, 0.0);
        let all = self.gather_rows(&padded, cols, self.rank(), self.world_size(), what)?;
        Ok(all.chunks(cols).map(|r| r[..local.len()].to_vec()).collect())
    }

    /// Every rank's `u64`s, exactly, in rank order (RNG states, checksums).
    pub fn gather_u64s(&mut self, local: &[u64], what: &str) -> Result<Vec<Vec<u64>>> {
        let n = local.len();
        if !self.is_distributed() {
            return Ok(vec![local.to_vec()]);
        }
        let (rank, world) = (self.rank(), self.world_size());
        // Four 16-bit pieces per value: integers below 2^24 are exact in f32.
        let mut buf = vec![0f32; world * n * 4];
        for (i, &v) in local.iter().enumerate() {
            for k in 0..4 {
                buf[(rank * n + i) * 4 + k] = ((v >> (16 * k)) & 0xFFFF) as f32;
            }
        }
        self.all_reduce(&mut buf, what)?;
        Ok(buf
            .chunks_exact(n * 4)
            .map(|r| r.chunks_exact(4).map(|p| p.iter().enumerate().fold(0u64, |acc, (k, &x)| acc | ((x as u64) << (16 * k)))).collect())
            .collect())
    }

    /// Fails on every rank, naming the ranks that differ, unless all ranks pass the same value.
    /// For things that must agree before training means anything (config, weights).
    pub fn verify_same(&mut self, local: u64, what: &str) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let all = self.gather_u64s(&[local], what)?;
        let differ: Vec<usize> = all.iter().enumerate().filter(|(_, v)| v[0] != all[0][0]).map(|(r, _)| r).collect();
        if !differ.is_empty() {
            bail!("{}{what} of rank(s) {differ:?} differ(s) from rank 0's", self.label());
        }
        Ok(())
    }

    /// Bit-for-bit check that every rank holds the same trainable weights (a checksum of their
    /// bytes; `when` says where in the run, for the message).
    pub fn verify_same_weights(&mut self, params: &[(String, Var)], when: &str) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let sum = weights_checksum(params)?;
        self.verify_same(sum, &format!("the trainable weights {when}"))
    }

    /// Tells every rank whether an action that some ranks performed (rank 0 writing a checkpoint,
    /// say) succeeded everywhere. A rank whose own `local` failed returns its error; the others
    /// return an error naming the failed ranks. So one failed write stops the job at once on
    /// every rank, instead of leaving the others blocked in the next collective.
    pub fn agree<T>(&mut self, local: Result<T>, what: &str) -> Result<T> {
        if !self.is_distributed() {
            return local;
        }
        let mut flags = vec![0f32; self.world_size()];
        flags[self.rank()] = f32::from(u8::from(local.is_err()));
        self.all_reduce(&mut flags, &format!("the outcome of {what}"))?;
        let failed: Vec<usize> = flags.iter().enumerate().filter(|(_, f)| **f > 0.0).map(|(r, _)| r).collect();
        match local {
            Err(e) => Err(e.context(format!("{}{what} failed", self.label()))),
            Ok(_) if !failed.is_empty() => bail!("{}{what} failed on rank(s) {failed:?} (see their log); stopping", self.label()),
            Ok(v) => Ok(v),
        }
    }

    /// Every rank ends with rank 0's bytes (run directory names and the like).
    pub fn broadcast_from_primary(&mut self, data: &mut Vec<u8>, what: &str) -> Result<()> {
        let label = self.label();
        self.comm.broadcast(data, 0).with_context(|| format!("{label}broadcast of {what} failed"))
    }

    /// Returns once every rank got here.
    pub fn barrier(&mut self) -> Result<()> {
        let label = self.label();
        self.comm.barrier().with_context(|| format!("{label}barrier failed"))
    }
}

/// `v` as two f32s whose sum is `v` to about 2^-48 relative: the hi part, then the rounding
/// error of the hi part.
pub fn split_f64(v: f64) -> [f32; 2] {
    let hi = v as f32;
    [hi, (v - hi as f64) as f32]
}

/// FNV-1a over the bytes of every parameter, in the optimizer's order.
pub fn weights_checksum(params: &[(String, Var)]) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    };
    for (name, var) in params {
        feed(name.as_bytes());
        let t = var.as_tensor().flatten_all()?;
        match t.dtype() {
            DType::F32 => t.to_vec1::<f32>()?.iter().for_each(|x| feed(&x.to_le_bytes())),
            // Half-precision weights: their f32 images are exact, so equal bits stay equal.
            _ => t.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().for_each(|x| feed(&x.to_le_bytes())),
        }
    }
    Ok(h)
}

/// A checksum of a string (the run config), for [`DataParallel::verify_same`].
pub fn text_checksum(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use sigmaforge_distributed::{Backend, LaunchEnv, init};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Runs `f` on `world` in-process ranks connected over TCP; returns their results by rank.
    pub(super) fn on_ranks<T: Send + 'static>(world: usize, f: impl Fn(&mut DataParallel) -> T + Send + Sync + 'static) -> Vec<T> {
        on_ranks_with_bucket(world, BUCKET, f)
    }

    pub(super) fn on_ranks_with_bucket<T: Send + 'static>(
        world: usize,
        bucket: usize,
        f: impl Fn(&mut DataParallel) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let master = format!("127.0.0.1:{}", free_port());
        let f = std::sync::Arc::new(f);
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let env = LaunchEnv { rank, world_size: world, local_rank: rank, master: master.clone() };
                let f = f.clone();
                std::thread::spawn(move || {
                    let mut dp = DataParallel::new(init(&env, Backend::Tcp, false).unwrap()).with_bucket_size(bucket);
                    f(&mut dp)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn split_f64_keeps_about_48_bits() {
        for v in [0.1, 1.1, -3.7e-5, 12345.678901234, 1.0 / 3.0] {
            let [hi, lo] = split_f64(v);
            assert!(((hi as f64 + lo as f64) - v).abs() <= v.abs() * 1e-14, "{v}");
        }
    }

    #[test]
    fn the_global_normaliser_is_the_normaliser_of_all_samples() {
        let lengths = [vec![3usize, 5, 2], vec![7, 1]];
        let got =
            on_ranks(2, move |dp| dp.loss_normalizer(LossAggregation::Constant, [[3usize, 5, 2].as_slice(), &[7, 1]][dp.rank()]).unwrap().unwrap());
        let all: Vec<usize> = lengths.concat();
        let want = LossNormalizer::for_batch(LossAggregation::Constant, &all, 7);
        for n in got {
            assert_eq!((n.total_tokens, n.total_sequences, n.max_completion_len), (want.total_tokens, want.total_sequences, want.max_completion_len));
        }
        // No samples anywhere: nobody updates.
        assert!(on_ranks(2, |dp| dp.loss_normalizer(LossAggregation::Token, &[]).unwrap()).iter().all(Option::is_none));
        // One rank without samples still gets the others' normaliser.
        let got = on_ranks(2, |dp| dp.loss_normalizer(LossAggregation::Token, if dp.rank() == 0 { &[] } else { &[4, 4] }).unwrap());
        assert!(got.iter().all(|n| n.unwrap().total_tokens == 8.0));
    }

    #[test]
    fn gathers_are_exact_and_in_rank_order() {
        let got = on_ranks(3, |dp| {
            let r = dp.rank();
            let rows = dp.gather_rows(&[r as f64 + 0.1, 1.0 / 3.0], 2, r, 3, "test rows").unwrap();
            let u = dp.gather_u64s(&[u64::MAX - r as u64, 12345], "test u64").unwrap();
            (rows, u)
        });
        for (rows, u) in got {
            for r in 0..3 {
                assert!((rows[2 * r] - (r as f64 + 0.1)).abs() < 1e-14);
                assert!((rows[2 * r + 1] - 1.0 / 3.0).abs() < 1e-14);
                assert_eq!(u[r], vec![u64::MAX - r as u64, 12345]);
            }
        }
    }

    #[test]
    fn differing_weights_and_failed_actions_are_reported_on_every_rank() {
        let got = on_ranks(3, |dp| {
            let v = if dp.rank() == 2 { 1.0f32 } else { 0.5 };
            let params = vec![("w".to_string(), Var::new(&[v], &Device::Cpu).unwrap())];
            let weights = dp.verify_same_weights(&params, "after step 3").unwrap_err().to_string();
            let local = if dp.rank() == 0 { Err(anyhow::anyhow!("disk full")) } else { Ok(()) };
            let agreed = dp.agree(local, "writing checkpoint step-000003").unwrap_err();
            (weights, format!("{agreed:#}"))
        });
        for (r, (weights, agreed)) in got.iter().enumerate() {
            assert!(weights.contains("rank(s) [2]") && weights.contains("after step 3"), "{weights}");
            if r == 0 {
                assert!(agreed.contains("disk full"), "{agreed}");
            } else {
                assert!(agreed.contains("failed on rank(s) [0]"), "{agreed}");
            }
        }
    }

    #[test]
    fn ranks_share_the_prompts_and_seeds_differ() {
        assert_eq!(generation_seed(42, 0), 42);
        assert_ne!(generation_seed(42, 1), generation_seed(42, 2));
        let dp = DataParallel::single();
        assert_eq!(dp.local_prompts(8), 0..8);
        assert_eq!(dp.label(), "");
    }
}
