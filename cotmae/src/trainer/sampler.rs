//! The order documents are visited in: HF `RandomSampler` semantics (a fresh uniform permutation
//! of all documents every epoch, batches of `batch_size` consecutive entries, the last batch of
//! an epoch smaller when the count does not divide: `drop_last` false), drawn from our Philox.
//!
//! Epoch `e`'s permutation is a Fisher-Yates shuffle by the generator at counter block
//! `SAMPLER_STREAM + e * 2^32` of the run's seed: a pure function of (seed, epoch), so a position
//! `(epoch, index)` is all a checkpoint needs to resume the order exactly.

use tensor::Rng;

use super::streams::SAMPLER;

/// Seeded per-epoch permutations of `num_docs` documents, cut into batches.
#[derive(Clone, Debug)]
pub struct RandomSampler {
    seed: u64,
    num_docs: usize,
    batch_size: usize,
}

impl RandomSampler {
    /// `num_docs` and `batch_size` must be positive (the trainer checks both).
    pub fn new(seed: u64, num_docs: usize, batch_size: usize) -> RandomSampler {
        RandomSampler {
            seed,
            num_docs,
            batch_size,
        }
    }

    pub fn num_docs(&self) -> usize {
        self.num_docs
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch (the last one may be short).
    pub fn batches_per_epoch(&self) -> usize {
        self.num_docs.div_ceil(self.batch_size)
    }

    /// The visiting order of epoch `epoch`.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut rng = Rng {
            seed: self.seed,
            offset: SAMPLER + (epoch << 32),
        };
        let mut order: Vec<usize> = (0..self.num_docs).collect();
        rng.shuffle(&mut order);
        order
    }

    /// The batch starting at `index` of an epoch's `permutation`: up to `batch_size` entries.
    pub fn batch<'p>(&self, permutation: &'p [usize], index: usize) -> &'p [usize] {
        let end = (index + self.batch_size).min(permutation.len());
        &permutation[index.min(end)..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_per_epoch_and_short_last_batch() {
        let s = RandomSampler::new(7, 10, 4);
        assert_eq!(s.batches_per_epoch(), 3);
        let (p0, p1) = (s.permutation(0), s.permutation(1));
        for p in [&p0, &p1] {
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(p0, p1, "each epoch draws a new order");
        assert_eq!(p0, RandomSampler::new(7, 10, 4).permutation(0));
        assert_ne!(p0, RandomSampler::new(8, 10, 4).permutation(0));
        let sizes: Vec<usize> = [0, 4, 8].iter().map(|&i| s.batch(&p0, i).len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(s.batch(&p0, 8), &p0[8..]);
        // Over many seeds, the first document is uniform.
        let mut first = [0usize; 5];
        for seed in 0..2000 {
            first[RandomSampler::new(seed, 5, 1).permutation(3)[0]] += 1;
        }
        assert!(first.iter().all(|&c| (340..460).contains(&c)), "{first:?}");
    }
}
