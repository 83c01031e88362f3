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

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{Context, Result, bail, ensure};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use sigmaforge_distributed::{Collective, SingleProcess, shard};

use crate::grpo::{LossAggregation, LossNormalizer};
use crate::optim::{AdamW, GradAccumulator};

/// The seed of a rank's generation RNG: the run's seed for rank 0 (so a one-process run samples
/// what it always did), a different stream for every other rank.
pub fn generation_seed(base: u64, rank: usize) -> u64 {
    base ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Which rank keeps the optimizer state of each parameter (sizes in elements): largest first,
/// each onto the rank with the fewest elements so far (the greedy partition FairScale's
/// optimizer-state sharding uses). Deterministic, so every rank computes the same owners.
pub fn shard_owners(sizes: &[usize], world: usize) -> Vec<usize> {
    let world = world.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    let mut load = vec![0usize; world];
    let mut owners = vec![0; sizes.len()];
    for i in order {
        let rank = (0..world).min_by_key(|&r| (load[r], r)).expect("world ≥ 1");
        owners[i] = rank;
        load[rank] += sizes[i];
    }
    owners
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

/// The gradients of one optimizer step as this rank holds them.
///
/// Replicated (one process, DDP, ZeRO-1): `acc` sums every gradient this rank computes; at
/// [`DataParallel::finish_gradients`] it is all-reduced, and every rank holds the whole global
/// gradient. Sharded (ZeRO-2): each backward segment's gradients wait in `pending` until
/// [`DataParallel::end_segment`] reduces them to their owners; `acc` then holds the global
/// gradient of the parameters this rank owns, and nothing for the others.
pub struct StepGradients {
    acc: GradAccumulator,
    pending: Option<GradAccumulator>,
    /// ZeRO-2: parameters for which some rank produced a gradient.
    seen: Vec<bool>,
}

impl StepGradients {
    /// Adds the gradients of one `backward()` (or one segment's part of it).
    pub fn add(&mut self, store: &GradStore, params: &[(String, Var)]) -> Result<()> {
        self.pending.as_mut().unwrap_or(&mut self.acc).add(store, params)
    }

    /// Names of parameters no rank produced a gradient for (a graph cut in the model).
    pub fn missing(&self, params: &[(String, Var)]) -> Vec<String> {
        if self.pending.is_none() {
            return self.acc.missing(params);
        }
        params.iter().zip(&self.seen).filter(|(_, seen)| !**seen).map(|((n, _), _)| n.clone()).collect()
    }

    /// The gradients as the optimizer takes them (ZeRO-2: the owned ones only).
    pub fn accumulated(&self) -> &GradAccumulator {
        &self.acc
    }

    /// How many gradient values this rank holds: its memory for accumulated gradients.
    pub fn held_values(&self) -> usize {
        self.acc.grads.iter().flatten().map(Tensor::elem_count).sum()
    }
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

    /// The optimizer for `params`: with `shard_state` in a multi-rank job, one that keeps state
    /// for this rank's share only (ZeRO-1), and with `shard_grads` too, gradients reduced to
    /// their owners (ZeRO-2); otherwise a plain AdamW.
    pub fn optimizer(&mut self, params: Vec<(String, Var)>, hp: crate::optim::AdamWParams, shard_state: bool, shard_grads: bool) -> Result<AdamW> {
        ensure!(!shard_grads || shard_state, "sharded gradients need sharded optimizer state");
        if !(shard_state && self.is_distributed()) {
            self.owners = None;
            self.shard_gradients = false;
            return AdamW::new(params, hp);
        }
        let sizes: Vec<usize> = params.iter().map(|(_, v)| v.elem_count()).collect();
        let owners = shard_owners(&sizes, self.world_size());
        let owned: Vec<bool> = owners.iter().map(|&r| r == self.rank()).collect();
        self.owners = Some(owners);
        self.shard_gradients = shard_grads;
        AdamW::sharded(params, hp, &owned)
    }

    /// Whether gradients are reduced to their owners segment by segment (ZeRO-2).
    pub fn shards_gradients(&self) -> bool {
        self.shard_gradients
    }

    /// An empty gradient store for one optimizer step over `n_params` parameters.
    pub fn step_gradients(&self, n_params: usize) -> StepGradients {
        StepGradients {
            acc: GradAccumulator::new(n_params),
            pending: self.shard_gradients.then(|| GradAccumulator::new(n_params)),
            seen: vec![false; n_params],
        }
    }

    /// How many micro-batches every rank must run in a pass when this rank has `local`: the
    /// largest count of any rank under ZeRO-2 (whose per-segment reductions need every rank in
    /// step), `local` otherwise.
    pub fn micro_batches_everywhere(&mut self, local: usize) -> Result<usize> {
        if !self.shard_gradients {
            return Ok(local);
        }
        let all = self.gather_per_rank(&[local as f64], "the micro-batch counts")?;
        Ok(all.iter().map(|r| r[0] as usize).max().unwrap_or(local))
    }

    /// The end of one backward segment. ZeRO-2: reduce the segment's gradients to their
    /// owners (every rank calls this the same number of times, with or without gradients of
    /// its own); the owner adds the sums to its share. Otherwise nothing happens here.
    pub fn end_segment(&mut self, grads: &mut StepGradients, params: &[(String, Var)]) -> Result<()> {
        let Some(pending) = grads.pending.as_mut() else { return Ok(()) };
        let owners = self.owners.clone().expect("gradients are sharded only with sharded optimizer state");
        ensure!(pending.grads.len() == params.len(), "gradient slots do not match the parameters");
        // Which parameters got a gradient on some rank in this segment: the same list on every
        // rank afterwards, so all of them reduce the same parameters in the same order.
        let mut present: Vec<f32> = pending.grads.iter().map(|g| f32::from(u8::from(g.is_some()))).collect();
        self.all_reduce(&mut present, "which parameters the segment has gradients for")?;
        let rank = self.rank();
        for (i, (_, var)) in params.iter().enumerate() {
            if present[i] == 0.0 {
                continue;
            }
            grads.seen[i] = true;
            let mut values = match pending.grads[i].take() {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                None => vec![0f32; var.elem_count()],
            };
            for bucket in values.chunks_mut(self.bucket) {
                let label = self.label();
                self.comm.reduce_sum(bucket, owners[i]).with_context(|| format!("{label}reduce of the gradient of {} failed", params[i].0))?;
            }
            if owners[i] == rank {
                let sum = Tensor::from_vec(values, var.shape(), var.device())?;
                let slot = &mut grads.acc.grads[i];
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + sum)?,
                    None => sum,
                });
            }
        }
        Ok(())
    }

    /// The end of a pass's backward work: afterwards `grads` holds the global gradient (ZeRO-2:
    /// of the owned parameters). Replicated gradients are all-reduced here.
    pub fn finish_gradients(&mut self, grads: &mut StepGradients, params: &[(String, Var)]) -> Result<()> {
        match &grads.pending {
            Some(p) => {
                ensure!(p.grads.iter().all(Option::is_none), "gradients were added after the last segment ended");
                Ok(())
            }
            None => self.all_reduce_gradients(&mut grads.acc, params),
        }
    }

    /// Clips the global gradient to `max_norm` (0 or ∞: no clipping) and returns its norm
    /// before clipping. Under ZeRO-2 the norm is summed from every owner's share.
    pub fn clip_gradients(&mut self, grads: &mut StepGradients, max_norm: f64) -> Result<f64> {
        if grads.pending.is_none() {
            return grads.acc.clip_global_norm(max_norm);
        }
        let mut sq = [grads.acc.global_norm()?.powi(2)];
        self.sum_f64(&mut sq, "the squared gradient norm")?;
        let norm = sq[0].sqrt();
        grads.acc.clip_to(norm, max_norm)?;
        Ok(norm)
    }

    /// The whole global gradient on every rank (ZeRO-2: gathered from the owners), for checks.
    pub fn gather_gradients(&mut self, grads: StepGradients, params: &[(String, Var)]) -> Result<GradAccumulator> {
        if grads.pending.is_none() {
            return Ok(grads.acc);
        }
        let owners = self.owners.clone().expect("sharded gradients have owners");
        let mut full = GradAccumulator::new(params.len());
        for (i, (_, var)) in params.iter().enumerate() {
            if !grads.seen[i] {
                continue;
            }
            // Only the owner's gradient travels; the others lend the parameter's shape.
            let local = grads.acc.grads[i].clone().unwrap_or_else(|| var.as_tensor().clone());
            full.grads[i] = Some(self.owners_value(owners[i], &local, &format!("the gradient of {}", params[i].0))?);
        }
        Ok(full)
    }

    /// Whether the optimizer state is sharded across the ranks.
    pub fn shards_optimizer_state(&self) -> bool {
        self.owners.is_some()
    }

    /// After a sharded optimizer step: every rank takes each parameter's value from its owner
    /// (a broadcast per parameter). Nothing to do without sharding: every rank took the same
    /// step.
    pub fn share_updated_parameters(&mut self, params: &[(String, Var)]) -> Result<()> {
        let Some(owners) = self.owners.clone() else { return Ok(()) };
        for ((name, var), &owner) in params.iter().zip(&owners) {
            let value = self.owners_value(owner, var.as_tensor(), &format!("the updated {name}"))?;
            // Every rank, the owner included, takes the shared value, so all hold the same bits.
            var.set(&value.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// The whole optimizer state (every parameter's moments and master weights) for a
    /// checkpoint: on rank 0, gathered from the owners when sharded; the other ranks, which do
    /// not write checkpoints, keep their own share. Every rank must call it.
    pub fn full_optimizer_state(&mut self, optimizer: &AdamW) -> Result<(HashMap<String, Tensor>, u64)> {
        let (mut state, steps) = optimizer.state();
        let Some(owners) = self.owners.clone() else { return Ok((state, steps)) };
        let primary = self.is_primary();
        for (i, (name, var)) in optimizer.params().iter().enumerate() {
            // f32 master weights exist for half-precision parameters only; every rank knows
            // which those are, so all take part in the same broadcasts.
            let half = matches!(var.dtype(), DType::BF16 | DType::F16);
            for kind in ["m", "v", "w"] {
                if kind == "w" && !half {
                    continue;
                }
                let key = format!("{kind}.{name}");
                // The owner holds this state; the others only lend the parameter's shape.
                let local = state.get(&key).cloned().unwrap_or_else(|| var.as_tensor().clone());
                let value = self.owners_value(owners[i], &local, &format!("the optimizer state {key}"))?;
                if primary {
                    state.insert(key, value);
                }
            }
        }
        Ok((state, steps))
    }

    /// `local` as rank `owner` holds it (f32, same shape), on every rank, one [`BUCKET`] at a
    /// time. Only the owner's values matter; the others pass any tensor of the right shape.
    fn owners_value(&mut self, owner: usize, local: &Tensor, what: &str) -> Result<Tensor> {
        // Only the owner's values travel; the others just need a buffer (no device copy).
        let mut values =
            if self.rank() == owner { local.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? } else { vec![0f32; local.elem_count()] };
        let label = self.label();
        for bucket in values.chunks_mut(self.bucket) {
            self.comm.broadcast_f32(bucket, owner).with_context(|| format!("{label}broadcast of {what} from rank {owner} failed"))?;
        }
        Ok(Tensor::from_vec(values, local.shape(), local.device())?)
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

    /// Sums every rank's accumulated gradients, so each rank holds the gradient of the global
    /// loss. Parameters go in buckets of up to [`BUCKET`] values (consecutive parameters
    /// share one, as in PyTorch DDP), so the staging memory is one bucket, not the model. A
    /// parameter that got no gradient on some rank (a rank whose groups were all dropped)
    /// counts as zero there; one that got none on any rank stays `None`, so the optimizer and
    /// the gradient-coverage check treat it as before.
    pub fn all_reduce_gradients(&mut self, acc: &mut GradAccumulator, params: &[(String, Var)]) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        ensure!(acc.grads.len() == params.len(), "gradient slots do not match the parameters");
        let mut present: Vec<f32> = acc.grads.iter().map(|g| f32::from(u8::from(g.is_some()))).collect();
        self.all_reduce(&mut present, "which parameters have gradients")?;
        let mut first = 0;
        while first < params.len() {
            // The bucket: params[first..end], at least one parameter, at most BUCKET values
            // unless a single parameter is larger (then it goes alone, in BUCKET-sized pieces).
            let mut end = first + 1;
            let mut size = params[first].1.elem_count();
            while end < params.len() && size + params[end].1.elem_count() <= self.bucket {
                size += params[end].1.elem_count();
                end += 1;
            }
            let mut flat = Vec::with_capacity(size);
            for (g, (_, var)) in acc.grads[first..end].iter().zip(&params[first..end]) {
                match g {
                    Some(g) => flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                    None => flat.resize(flat.len() + var.elem_count(), 0.0),
                }
            }
            for piece in flat.chunks_mut(self.bucket) {
                self.all_reduce(piece, &format!("the gradients of {}..", params[first].0))?;
            }
            let mut offset = 0;
            for i in first..end {
                let var = &params[i].1;
                let n = var.elem_count();
                acc.grads[i] = if present[i] > 0.0 { Some(Tensor::from_slice(&flat[offset..offset + n], var.shape(), var.device())?) } else { None };
                offset += n;
            }
            first = end;
        }
        Ok(())
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
    fn on_ranks<T: Send + 'static>(world: usize, f: impl Fn(&mut DataParallel) -> T + Send + Sync + 'static) -> Vec<T> {
        on_ranks_with_bucket(world, BUCKET, f)
    }

    fn on_ranks_with_bucket<T: Send + 'static>(world: usize, bucket: usize, f: impl Fn(&mut DataParallel) -> T + Send + Sync + 'static) -> Vec<T> {
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
    fn gradients_sum_and_missing_ones_count_as_zero() {
        let got = on_ranks(2, |dp| {
            let dev = Device::Cpu;
            let params = vec![("a".to_string(), Var::new(&[0f32, 0.0], &dev).unwrap()), ("b".to_string(), Var::new(&[0f32], &dev).unwrap())];
            let mut acc = GradAccumulator::new(2);
            if dp.rank() == 1 {
                acc.grads[0] = Some(Tensor::new(&[1.5f32, -2.0], &dev).unwrap());
            } else {
                acc.grads[0] = Some(Tensor::new(&[0.25f32, 1.0], &dev).unwrap());
            }
            dp.all_reduce_gradients(&mut acc, &params).unwrap();
            (acc.grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), acc.grads[1].is_none())
        });
        for (a, b_missing) in got {
            assert_eq!(a, vec![1.75, -1.0]);
            assert!(b_missing, "no rank had a gradient for b");
        }
    }

    #[test]
    fn bucketed_all_reduce_gives_the_same_sums_as_one_buffer() {
        // Parameters of 5, 1, 2, 7 and 3 values: with buckets of 3 values the first and fourth
        // go alone in pieces, the second and third share one, the fifth fills one.
        let sizes = [5usize, 1, 2, 7, 3];
        let run = move |bucket: usize| {
            on_ranks_with_bucket(3, bucket, move |dp| {
                let dev = Device::Cpu;
                let params: Vec<(String, Var)> =
                    sizes.iter().enumerate().map(|(i, &n)| (format!("p{i}"), Var::new(vec![0f32; n].as_slice(), &dev).unwrap())).collect();
                let mut acc = GradAccumulator::new(sizes.len());
                for (i, &n) in sizes.iter().enumerate() {
                    // Rank 2 has no gradient for p1; nobody has one for p4.
                    if i == 4 || (i == 1 && dp.rank() == 2) {
                        continue;
                    }
                    let v: Vec<f32> = (0..n).map(|j| (dp.rank() * 100 + i * 10 + j) as f32 * 0.5).collect();
                    acc.grads[i] = Some(Tensor::from_vec(v, n, &dev).unwrap());
                }
                dp.all_reduce_gradients(&mut acc, &params).unwrap();
                acc.grads.iter().map(|g| g.as_ref().map(|g| g.to_vec1::<f32>().unwrap())).collect::<Vec<_>>()
            })
        };
        let whole = run(BUCKET);
        let bucketed = run(3);
        assert_eq!(whole, bucketed);
        for got in &whole {
            assert_eq!(got[4], None);
            // p3, element 6: 0.5 × ((0 + 36) + (100 + 36) + (200 + 36)).
            assert_eq!(got[3].as_ref().unwrap()[6], 0.5 * (36.0 + 136.0 + 236.0));
            // p1 from ranks 0 and 1 only.
            assert_eq!(got[1].as_ref().unwrap(), &vec![0.5 * (10.0 + 110.0)]);
        }
    }

    #[test]
    fn zero2_segments_reach_their_owners_only() {
        // Buckets of 3 values: p3 (4 values) travels in two pieces.
        let got = on_ranks_with_bucket(2, 3, |dp| {
            let dev = Device::Cpu;
            // Sizes 1..4: owners by size are p3 → 0, p2 → 1, p1 → 1, p0 → 0.
            let params: Vec<(String, Var)> = (0..4).map(|i| (format!("p{i}"), Var::new(vec![0f32; i + 1].as_slice(), &dev).unwrap())).collect();
            let _optimizer = dp.optimizer(params.clone(), Default::default(), true, true).unwrap();
            assert!(dp.shards_gradients());
            let r = dp.rank() as f64;
            let grads_of = |terms: &[(usize, f64)]| {
                let mut loss = Tensor::new(0f32, &dev).unwrap();
                for &(i, c) in terms {
                    loss = (loss + (params[i].1.as_tensor() * c).unwrap().sum_all().unwrap()).unwrap();
                }
                loss.backward().unwrap()
            };
            let mut g = dp.step_gradients(4);
            // Segment 1: both ranks have gradients r + 1 for p0 and p3.
            g.add(&grads_of(&[(0, r + 1.0), (3, r + 1.0)]), &params).unwrap();
            dp.end_segment(&mut g, &params).unwrap();
            // Segment 2: only rank 1 has one (p1 = 5); rank 0 takes part with nothing.
            if dp.rank() == 1 {
                g.add(&grads_of(&[(1, 5.0)]), &params).unwrap();
            }
            dp.end_segment(&mut g, &params).unwrap();
            // Segment 3: only rank 0 (p0 = 2).
            if dp.rank() == 0 {
                g.add(&grads_of(&[(0, 2.0)]), &params).unwrap();
            }
            dp.end_segment(&mut g, &params).unwrap();
            dp.finish_gradients(&mut g, &params).unwrap();
            let held: Vec<Option<Vec<f32>>> = g.accumulated().grads.iter().map(|t| t.as_ref().map(|t| t.to_vec1::<f32>().unwrap())).collect();
            let (values, missing) = (g.held_values(), g.missing(&params));
            let norm = dp.clip_gradients(&mut g, 0.0).unwrap();
            let full = dp.gather_gradients(g, &params).unwrap();
            let full: Vec<Option<Vec<f32>>> = full.grads.iter().map(|t| t.as_ref().map(|t| t.to_vec1::<f32>().unwrap())).collect();
            (held, values, missing, norm, full)
        });
        let (held0, values0, ..) = &got[0];
        assert_eq!(held0, &vec![Some(vec![5.0]), None, None, Some(vec![3.0; 4])], "rank 0 holds the sums of p0 (1 + 2 + 2) and p3 (1 + 2)");
        assert_eq!(*values0, 5);
        let (held1, values1, ..) = &got[1];
        assert_eq!(held1, &vec![None, Some(vec![5.0; 2]), None, None], "rank 1 holds p1 only");
        assert_eq!(*values1, 2);
        for (_, _, missing, norm, full) in &got {
            assert_eq!(missing, &vec!["p2".to_string()], "no rank produced a gradient for p2");
            assert!((norm - 111f64.sqrt()).abs() < 1e-9, "norm of 5, 5, 5 and 3 × 4: {norm}");
            assert_eq!(full, &vec![Some(vec![5.0]), Some(vec![5.0; 2]), None, Some(vec![3.0; 4])]);
        }
        // Every rank runs as many micro-batches as the busiest one.
        let counts = on_ranks(3, |dp| {
            let params = vec![("w".to_string(), Var::new(&[0f32], &Device::Cpu).unwrap())];
            dp.optimizer(params, Default::default(), true, true).unwrap();
            dp.micro_batches_everywhere([2, 5, 0][dp.rank()]).unwrap()
        });
        assert_eq!(counts, vec![5, 5, 5]);
    }

    #[test]
    fn sharded_parameters_and_optimizer_state_come_from_their_owners() {
        let got = on_ranks_with_bucket(2, 2, |dp| {
            let dev = Device::Cpu;
            // "small" is bf16: its owner keeps an f32 master copy, which checkpoints gather too.
            let small = Tensor::new(&[4f32], &dev).unwrap().to_dtype(DType::BF16).unwrap();
            let params: Vec<(String, Var)> =
                vec![("big".into(), Var::new(&[1f32, 2.0, 3.0], &dev).unwrap()), ("small".into(), Var::from_tensor(&small).unwrap())];
            let mut opt = dp.optimizer(params.clone(), Default::default(), true, false).unwrap();
            let mut g = dp.step_gradients(2);
            let loss =
                (params[0].1.as_tensor().sum_all().unwrap() + params[1].1.as_tensor().to_dtype(DType::F32).unwrap().sum_all().unwrap()).unwrap();
            g.add(&loss.backward().unwrap(), &params).unwrap();
            dp.finish_gradients(&mut g, &params).unwrap();
            opt.step(g.accumulated(), 0.1).unwrap();
            let values = |params: &[(String, Var)]| -> Vec<Vec<f32>> {
                params.iter().map(|(_, v)| v.as_tensor().to_dtype(DType::F32).unwrap().to_vec1().unwrap()).collect()
            };
            // Before sharing, each rank moved only what it owns.
            let before = values(&params);
            dp.share_updated_parameters(&params).unwrap();
            let after = values(&params);
            let (state, _) = dp.full_optimizer_state(&opt).unwrap();
            let master = state.get("w.small").map(|t| t.to_vec1::<f32>().unwrap());
            let mut keys: Vec<String> = state.into_keys().collect();
            keys.sort();
            (before, after, keys, master)
        });
        // big → rank 0, small → rank 1; Adam's first step moves each weight by lr against the
        // gradient's sign (3.9 is 3.90625 in bf16; the master copy keeps 3.9).
        assert_eq!(got[0].0, vec![vec![0.9, 1.9, 2.9], vec![4.0]]);
        assert_eq!(got[1].0, vec![vec![1.0, 2.0, 3.0], vec![3.90625]]);
        for (_, after, _, _) in &got {
            assert_eq!(after, &vec![vec![0.9, 1.9, 2.9], vec![3.90625]]);
        }
        assert_eq!(got[0].2, ["m.big", "m.small", "v.big", "v.small", "w.small"], "rank 0 gathers the whole state for the checkpoint");
        assert_eq!(got[1].2, ["m.small", "v.small", "w.small"], "rank 1 keeps its own share");
        for (_, _, _, master) in &got {
            assert!((master.as_ref().unwrap()[0] - 3.9).abs() < 1e-6, "{master:?}");
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
    fn optimizer_shards_are_balanced_and_cover_every_parameter() {
        let owners = shard_owners(&[100, 10, 60, 50, 5, 40], 2);
        let load = |r: usize| owners.iter().zip([100, 10, 60, 50, 5, 40]).filter(|(o, _)| **o == r).map(|(_, n)| n).sum::<usize>();
        // Largest first onto the lighter rank: 100→0, 60→1, 50→1, 40→0, 10→1, 5→1.
        assert_eq!(owners, vec![0, 1, 1, 1, 1, 0]);
        assert_eq!((load(0), load(1)), (140, 125));
        assert_eq!(shard_owners(&[3, 3], 1), vec![0, 0]);
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
