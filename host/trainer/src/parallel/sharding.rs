//! Sharded optimizer state (ZeRO-1): which rank keeps each parameter's AdamW moments and master
//! weights, how the owners share the parameters they updated, and how a checkpoint gathers the
//! whole state on rank 0.

use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Tensor, Var};

use super::DataParallel;
use crate::optim::AdamW;

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

impl DataParallel {
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
    pub(super) fn owners_value(&mut self, owner: usize, local: &Tensor, what: &str) -> Result<Tensor> {
        // Only the owner's values travel; the others just need a buffer (no device copy).
        let mut values =
            if self.rank() == owner { local.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? } else { vec![0f32; local.elem_count()] };
        let label = self.label();
        for bucket in values.chunks_mut(self.bucket) {
            self.comm.broadcast_f32(bucket, owner).with_context(|| format!("{label}broadcast of {what} from rank {owner} failed"))?;
        }
        Ok(Tensor::from_vec(values, local.shape(), local.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::tests::on_ranks_with_bucket;
    use candle_core::Device;

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
    fn optimizer_shards_are_balanced_and_cover_every_parameter() {
        let owners = shard_owners(&[100, 10, 60, 50, 5, 40], 2);
        let load = |r: usize| owners.iter().zip([100, 10, 60, 50, 5, 40]).filter(|(o, _)| **o == r).map(|(_, n)| n).sum::<usize>();
        // Largest first onto the lighter rank: 100→0, 60→1, 50→1, 40→0, 10→1, 5→1.
        assert_eq!(owners, vec![0, 1, 1, 1, 1, 0]);
        assert_eq!((load(0), load(1)), (140, 125));
        assert_eq!(shard_owners(&[3, 3], 1), vec![0, 0]);
    }
}
