//! How a step's gradients become global: replicated ranks all-reduce the accumulated gradients
//! once per optimizer step, in buckets of consecutive parameters; with ZeRO-2 each backward
//! segment's gradients are reduced to the ranks that own them, so a rank holds only its share.
//! Also the global gradient norm for clipping, and gathering a sharded gradient for checks.

use anyhow::{Context, Result, ensure};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::DataParallel;
use crate::optim::GradAccumulator;

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

impl DataParallel {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::BUCKET;
    use crate::parallel::tests::{on_ranks, on_ranks_with_bucket};
    use candle_core::Device;

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
}
