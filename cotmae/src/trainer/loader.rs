//! The data loader: documents in sampler order, through the collator, one batch at a time, with
//! the position after each batch so a checkpoint can resume exactly there.
//!
//! A position is [`LoaderState`]: the epoch, how many documents of its permutation have been
//! used, and the collator's random state. Epochs follow one another without a break: the
//! batch after an epoch's (possibly short) last batch is the next epoch's first.
//!
//! [`with_batches`] hands the training loop a `next batch` function; with
//! `dataloader_num_workers > 0` one background thread collates ahead into a bounded channel
//! (`2 * workers` batches). Each batch carries the state after it, so prefetching changes
//! neither the batches nor what a checkpoint records.

use std::sync::mpsc::sync_channel;

use serde::{Deserialize, Serialize};

use super::sampler::RandomSampler;
use crate::collator::{CollatorState, CotMaeBatch, CotMaeCollator, SpanSource};
use crate::{Error, Result};

/// Where the loader stands: epoch, documents of that epoch already used, collator state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    pub index: usize,
    pub collator: CollatorState,
}

impl LoaderState {
    /// Epochs done, fractional (HF's logged `epoch`).
    pub fn epoch_float(&self, num_docs: usize) -> f64 {
        self.epoch as f64 + self.index as f64 / num_docs.max(1) as f64
    }
}

/// One collated batch and the loader's position after it.
pub struct LoadedBatch {
    pub batch: CotMaeBatch,
    /// Documents in the batch (each is two rows: anchor and context).
    pub docs: usize,
    pub state: LoaderState,
}

/// Batches of `source` in sampler order (module doc).
pub struct DataLoader<'a, S: SpanSource + ?Sized> {
    source: &'a S,
    sampler: RandomSampler,
    collator: CotMaeCollator,
    epoch: u64,
    index: usize,
    /// The permutation of `epoch`.
    order: Vec<usize>,
}

impl<'a, S: SpanSource + ?Sized> DataLoader<'a, S> {
    /// A loader at the start of epoch 0, or at `resume` (the collator's state then replaced).
    pub fn new(
        source: &'a S,
        sampler: RandomSampler,
        mut collator: CotMaeCollator,
        resume: Option<LoaderState>,
    ) -> Result<Self> {
        let (epoch, index) = match resume {
            Some(s) => {
                if s.index > sampler.num_docs() {
                    return Err(Error::Config(format!(
                        "resume: the checkpoint's data position {} is past the {} documents of \
                         train_path (a different corpus?)",
                        s.index,
                        sampler.num_docs()
                    )));
                }
                collator.set_state(s.collator);
                (s.epoch, s.index)
            }
            None => (0, 0),
        };
        let order = sampler.permutation(epoch);
        Ok(DataLoader {
            source,
            sampler,
            collator,
            epoch,
            index,
            order,
        })
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            index: self.index,
            collator: self.collator.state(),
        }
    }

    /// The next batch (starting the next epoch when this one is used up).
    pub fn next_batch(&mut self) -> Result<LoadedBatch> {
        if self.index >= self.order.len() {
            self.epoch += 1;
            self.index = 0;
            self.order = self.sampler.permutation(self.epoch);
        }
        let docs = self.sampler.batch(&self.order, self.index);
        let batch = self.collator.collate(self.source, docs)?;
        let n = docs.len();
        self.index += n;
        Ok(LoadedBatch {
            batch,
            docs: n,
            state: self.state(),
        })
    }
}

/// Runs `f` with a function returning the loader's batches in order: made on this thread when
/// `workers` is 0, else by one background thread up to `2 * workers` batches ahead.
pub fn with_batches<S, R>(
    mut loader: DataLoader<'_, S>,
    workers: usize,
    f: impl FnOnce(&mut dyn FnMut() -> Result<LoadedBatch>) -> R,
) -> R
where
    S: SpanSource + Sync + ?Sized,
{
    if workers == 0 {
        return f(&mut || loader.next_batch());
    }
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Result<LoadedBatch>>(2 * workers);
        scope.spawn(move || loop {
            let item = loader.next_batch();
            let failed = item.is_err();
            // The receiver is gone once training is over: stop.
            if tx.send(item).is_err() || failed {
                break;
            }
        });
        let mut next = || {
            rx.recv()
                .map_err(|_| Error::Config("the data loader thread stopped".into()))?
        };
        f(&mut next)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collator::CollatorConfig;
    use crate::spans::SpanSet;
    use bert::Tokenizer;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tokenizer/vocab.txt"
        );
        Tokenizer::from_vocab_file(path, true).unwrap()
    }

    /// Document `d`'s texts all start with `2000 + d`.
    fn docs(n: u32) -> Vec<Vec<SpanSet>> {
        (0..n)
            .map(|d| {
                let t = vec![2000 + d, 2100, 2101];
                vec![SpanSet {
                    anchor: t.clone(),
                    random_sampled: t.clone(),
                    nearby: t.clone(),
                    overlap: t,
                }]
            })
            .collect()
    }

    fn config() -> CollatorConfig {
        CollatorConfig {
            max_seq_length: 8,
            encoder_mask_ratio: 0.0,
            decoder_mask_ratio: 0.0,
            ..CollatorConfig::default()
        }
    }

    /// The documents of a batch, from the first token after [CLS] of each anchor row.
    fn batch_docs(b: &LoadedBatch) -> Vec<usize> {
        let ids = b.batch.input_ids.to_vec::<i64>().unwrap();
        ids.chunks(8)
            .step_by(2)
            .map(|r| (r[1] - 2000) as usize)
            .collect()
    }

    fn run(
        workers: usize,
        resume: Option<LoaderState>,
        n: usize,
    ) -> Vec<(Vec<usize>, LoaderState)> {
        let tok = tokenizer();
        let data = docs(5);
        let src = data.as_slice();
        let collator = CotMaeCollator::new(&tok, config(), 3).unwrap();
        let loader = DataLoader::new(src, RandomSampler::new(1, 5, 2), collator, resume).unwrap();
        with_batches(loader, workers, |next| {
            (0..n)
                .map(|_| {
                    let b = next().unwrap();
                    (batch_docs(&b), b.state)
                })
                .collect()
        })
    }

    #[test]
    fn epochs_batches_resume_and_prefetch() {
        let got = run(0, None, 7);
        let sampler = RandomSampler::new(1, 5, 2);
        let (p0, p1) = (sampler.permutation(0), sampler.permutation(1));
        let want: Vec<Vec<usize>> = vec![
            p0[0..2].to_vec(),
            p0[2..4].to_vec(),
            p0[4..5].to_vec(),
            p1[0..2].to_vec(),
            p1[2..4].to_vec(),
            p1[4..5].to_vec(),
            sampler.permutation(2)[0..2].to_vec(),
        ];
        let order: Vec<Vec<usize>> = got.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(order, want);
        assert_eq!((got[2].1.epoch, got[2].1.index), (0, 5));
        assert_eq!((got[3].1.epoch, got[3].1.index), (1, 2));
        assert_eq!(got[3].1.epoch_float(5), 1.4);
        // A background thread gives the same batches and states.
        assert_eq!(run(2, None, 7), got);
        // Resuming from the state after batch 2 gives batches 3.. exactly.
        let resumed = run(1, Some(got[2].1), 4);
        assert_eq!(resumed, got[3..]);
        // A position past the corpus is refused.
        let bad = LoaderState {
            index: 6,
            ..got[0].1
        };
        let tok = tokenizer();
        let data = docs(5);
        let c = CotMaeCollator::new(&tok, config(), 3).unwrap();
        let err = DataLoader::new(data.as_slice(), sampler, c, Some(bad))
            .err()
            .unwrap();
        assert!(err.to_string().contains("past the 5 documents"), "{err}");
    }
}
