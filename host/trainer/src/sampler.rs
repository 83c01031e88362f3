//! Which prompts a step trains on: every task once per epoch, in an order shuffled by the run's
//! seed and the epoch number. The position is two integers, so a checkpoint restores it exactly.

use crate::checkpoint::DataPosition;
use sigmaforge_model::rng::SamplerRng;

pub struct TaskSampler {
    n_tasks: usize,
    seed: u64,
    pos: DataPosition,
    order: Vec<usize>,
}

impl TaskSampler {
    pub fn new(n_tasks: usize, seed: u64) -> Self {
        Self::at(n_tasks, seed, DataPosition { epoch: 0, cursor: 0 })
    }

    pub fn at(n_tasks: usize, seed: u64, pos: DataPosition) -> Self {
        let order = Self::order(n_tasks, seed, pos.epoch);
        Self { n_tasks, seed, pos, order }
    }

    fn order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = SamplerRng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED_DA7A);
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            v.swap(i, rng.below(i + 1));
        }
        v
    }

    pub fn position(&self) -> DataPosition {
        self.pos
    }

    /// The next `count` task indices; crosses into a freshly shuffled epoch when one ends.
    pub fn next_batch(&mut self, count: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(count);
        if self.n_tasks == 0 {
            return out;
        }
        while out.len() < count {
            if self.pos.cursor >= self.n_tasks {
                self.pos = DataPosition { epoch: self.pos.epoch + 1, cursor: 0 };
                self.order = Self::order(self.n_tasks, self.seed, self.pos.epoch);
            }
            out.push(self.order[self.pos.cursor]);
            self.pos.cursor += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_task_and_resume_exactly() {
        let mut s = TaskSampler::new(5, 3);
        let mut first: Vec<usize> = s.next_batch(5);
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        let _ = s.next_batch(2);
        let pos = s.position();
        assert_eq!(pos, DataPosition { epoch: 1, cursor: 2 });
        let mut resumed = TaskSampler::at(5, 3, pos);
        assert_eq!(s.next_batch(7), resumed.next_batch(7));
        assert_ne!(TaskSampler::new(50, 1).next_batch(50), TaskSampler::new(50, 2).next_batch(50));
    }
}
