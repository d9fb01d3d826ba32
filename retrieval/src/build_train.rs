//! `build-train` / `build-train-hn`: Tevatron training files, one [`TrainExample`]
//! `{"query": [ids], "positives": [[ids], ...], "negatives": [[ids], ...]}` per query
//! (REFERENCE §5 and §7).
//!
//! For each query of the negative file, in order of first appearance:
//! - `query`: its text from the query file, tokenized without special tokens, first `truncate`
//!   ids (the original truncates queries with the passages' `truncate` here; `q_max_len` applies
//!   at training time);
//! - `positives`: its relevant passages in the qrels (relevance > 0), in qrels order;
//! - `negatives`, by [`NegativeSource`]:
//!   - [`Bm25`](NegativeSource::Bm25): the negative file is MS MARCO's `qidpidtriples`
//!     (`qid \t pos_pid \t neg_pid`) or Tevatron's `qid \t pid,pid,...`; a query's negative pids
//!     are gathered over the whole file (its lines need not be adjacent), repeats dropped (the
//!     triples list each negative once per positive), shuffled, and the first `n_sample` (128)
//!     kept;
//!   - [`Ranking`](NegativeSource::Ranking): the negative file is a ranking (`qid \t pid \t
//!     score`, see [`crate::run`]); the query's pids in rank order with its positives dropped, the
//!     first `depth` (200) of them, shuffled, and the first `n_sample` (30) kept.
//!
//! Passages are tokenized as `tokenize-corpus` does (fields after the pid joined with `[SEP]`,
//! first `truncate` ids). The whole collection is tokenized once, in parallel, up front.
//!
//! Shuffling: Fisher-Yates driven by our Philox generator, query `i` (0-based, order of first
//! appearance) drawing from its own stream `(seed, i << 32)`: deterministic for a seed and
//! independent of thread count, but not the permutation Python's `random.shuffle` gives for
//! seed 42 (a deliberate deviation: the sample is uniform either way).
//!
//! A query's positives never count as its negatives: any left among them (a triples file or a
//! ranking that lists one) is removed and counted in the report. A query left with no negative
//! (when `n_sample` > 0) gets no example and is counted as skipped (Tevatron cannot sample from
//! an empty list); a build that would write no example at all is an error.
//!
//! Errors (naming the file and line where there is one): a malformed line or id, a pid missing
//! from the collection (wherever it stands in the ranking), a query of the negative file with no
//! text in the query file or no relevant passage in the qrels, no example. Output: `save_to/split00.json`, `split01.json`, ... with `shard_size` (45,000)
//! examples each, Tevatron's names; each file written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bert::Tokenizer;
use rayon::prelude::*;
use tensor::Rng;

use crate::collection::{read_texts, TokenizedCollection};
use crate::formats::{JsonlWriter, TrainExample};
use crate::lines::{columns, for_each_batch};
use crate::qrels::Qrels;
use crate::run::for_each_entry;
use crate::tokenize::split_path;
use crate::{Error, Result};

/// Where the negatives come from (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegativeSource {
    /// BM25 negatives from `qidpidtriples` or `qid \t pid,pid,...`.
    Bm25,
    /// Hard negatives mined from a ranking: the top `depth` non-positive passages.
    Ranking { depth: usize },
}

/// The files and knobs of one build.
#[derive(Clone, Debug)]
pub struct BuildTrainOptions {
    pub source: NegativeSource,
    /// The triples / negatives file or the ranking.
    pub negative_file: PathBuf,
    pub qrels: PathBuf,
    /// `qid \t text`.
    pub queries: PathBuf,
    /// `pid \t title \t text` (or `pid \t text`).
    pub collection: PathBuf,
    /// Output directory.
    pub save_to: PathBuf,
    /// Token ids kept per query and passage.
    pub truncate: usize,
    /// Negatives kept per query.
    pub n_sample: usize,
    pub seed: u64,
    /// Examples per output file.
    pub shard_size: usize,
}

/// What a build wrote.
#[derive(Clone, Debug, Default)]
pub struct BuildTrainReport {
    pub examples: usize,
    pub positives: usize,
    pub negatives: usize,
    /// Examples with fewer than `n_sample` negatives.
    pub short: usize,
    /// Positives found among their own query's negatives and removed from them.
    pub positives_removed: usize,
    /// Queries left without a negative, so without an example.
    pub skipped_no_negatives: usize,
    pub files: Vec<PathBuf>,
}

/// One query's negatives (collection positions) before sampling.
struct Group {
    qid: String,
    negatives: Vec<u32>,
    /// Positives of the query removed from its negatives.
    positives_removed: usize,
}

/// Groups by qid in order of first appearance.
#[derive(Default)]
struct Groups {
    list: Vec<Group>,
    slot: HashMap<String, usize>,
    /// The last qid seen and its slot (lines of one query are usually adjacent).
    last: Option<(String, usize)>,
}

impl Groups {
    fn get(&mut self, qid: &str) -> &mut Group {
        let i = match &self.last {
            Some((q, i)) if q == qid => *i,
            _ => {
                let i = *self.slot.entry(qid.to_string()).or_insert_with(|| {
                    self.list.push(Group {
                        qid: qid.to_string(),
                        negatives: Vec::new(),
                        positives_removed: 0,
                    });
                    self.list.len() - 1
                });
                self.last = Some((qid.to_string(), i));
                i
            }
        };
        &mut self.list[i]
    }
}

fn unknown_pid(path: &Path, line: usize, pid: &str, collection: &Path) -> Error {
    Error::line(
        path,
        line,
        format!(
            "pid {pid:?} is not in the collection {}",
            collection.display()
        ),
    )
}

/// BM25 groups: every line's negatives, repeats dropped later.
fn bm25_groups(opts: &BuildTrainOptions, collection: &TokenizedCollection) -> Result<Vec<Group>> {
    let path = opts.negative_file.as_path();
    let mut groups = Groups::default();
    for_each_batch(path, "negatives", |lines| {
        let parsed: Vec<Option<(&str, Vec<u32>)>> = lines
            .par_iter()
            .map(|line| {
                if line.is_blank() {
                    return Ok(None);
                }
                let f = columns(
                    path,
                    line,
                    2,
                    "qid \\t pos_pid \\t neg_pid or qid \\t pid,pid,...",
                )?;
                let negs: Vec<&str> = match f.len() {
                    3 => vec![f[2]],
                    2 => f[1].split(',').filter(|p| !p.is_empty()).collect(),
                    n => {
                        return Err(Error::line(
                            path,
                            line.number,
                            format!(
                                "expected qid \\t pos_pid \\t neg_pid or qid \\t pid,pid,..., \
                                 found {n} fields"
                            ),
                        ))
                    }
                };
                let negs = negs
                    .into_iter()
                    .map(|p| {
                        collection
                            .position(p)
                            .ok_or_else(|| unknown_pid(path, line.number, p, &opts.collection))
                    })
                    .collect::<Result<_>>()?;
                Ok(Some((f[0], negs)))
            })
            .collect::<Result<_>>()?;
        for (qid, negs) in parsed.into_iter().flatten() {
            groups.get(qid).negatives.extend(negs);
        }
        Ok(())
    })?;
    Ok(groups.list)
}

/// Ranking groups: the first `depth` non-positive pids of each query, in rank order.
fn ranking_groups(
    opts: &BuildTrainOptions,
    depth: usize,
    qrels: &Qrels,
    collection: &TokenizedCollection,
) -> Result<Vec<Group>> {
    let path = opts.negative_file.as_path();
    let mut groups = Groups::default();
    for_each_entry(path, |number, qid, pid| {
        // Every pid must be known, also past `depth`: a ranking of another collection is an
        // error, not a shorter list.
        let p = collection
            .position(pid)
            .ok_or_else(|| unknown_pid(path, number, pid, &opts.collection))?;
        let group = groups.get(qid);
        let positive = qrels.get(qid).is_some_and(|j| j.relevance(pid) > 0);
        if positive {
            group.positives_removed += 1;
        } else if group.negatives.len() < depth {
            group.negatives.push(p);
        }
        Ok(())
    })?;
    Ok(groups.list)
}

/// The negatives kept for group `index` (module doc): the query's positives removed (counted),
/// BM25 repeats dropped, shuffled, the first `n_sample`.
fn sample(
    group: &mut Group,
    index: usize,
    opts: &BuildTrainOptions,
    qrels: &Qrels,
    collection: &TokenizedCollection,
) {
    let positives: Vec<u32> = qrels.get(&group.qid).map_or_else(Vec::new, |j| {
        j.relevant()
            .filter_map(|pid| collection.position(pid))
            .collect()
    });
    let negs = &mut group.negatives;
    let before = negs.len();
    negs.retain(|p| !positives.contains(p));
    group.positives_removed += before - negs.len();
    if opts.source == NegativeSource::Bm25 {
        let mut seen = std::collections::HashSet::with_capacity(negs.len());
        negs.retain(|p| seen.insert(*p));
    }
    let mut rng = Rng {
        seed: opts.seed,
        offset: (index as u64) << 32,
    };
    rng.shuffle(negs);
    negs.truncate(opts.n_sample);
}

/// Builds the training files (module doc).
pub fn build_train(tokenizer: &Tokenizer, opts: &BuildTrainOptions) -> Result<BuildTrainReport> {
    if opts.shard_size == 0 {
        return Err(Error::Config(
            "build-train: shard_size must be at least 1".into(),
        ));
    }
    let qrels = Qrels::read(&opts.qrels)?;
    let queries = read_texts(&opts.queries)?;
    let collection = TokenizedCollection::read(&opts.collection, tokenizer, opts.truncate)?;
    let mut groups = match opts.source {
        NegativeSource::Bm25 => bm25_groups(opts, &collection)?,
        NegativeSource::Ranking { depth } => ranking_groups(opts, depth, &qrels, &collection)?,
    };
    groups
        .par_iter_mut()
        .enumerate()
        .for_each(|(i, g)| sample(g, i, opts, &qrels, &collection));
    let mut report = BuildTrainReport {
        positives_removed: groups.iter().map(|g| g.positives_removed).sum(),
        ..BuildTrainReport::default()
    };
    if opts.n_sample > 0 {
        let before = groups.len();
        groups.retain(|g| !g.negatives.is_empty());
        report.skipped_no_negatives = before - groups.len();
    }
    if groups.is_empty() {
        return Err(Error::Config(format!(
            "build-train: no training example to write into {}: {} ({} quer{} left without a \
             negative)",
            opts.save_to.display(),
            opts.negative_file.display(),
            report.skipped_no_negatives,
            if report.skipped_no_negatives == 1 {
                "y"
            } else {
                "ies"
            }
        )));
    }

    let example = |g: &Group| -> Result<(String, usize)> {
        let text = queries.get(&g.qid).ok_or_else(|| {
            Error::Config(format!(
                "build-train: query {:?} of {} has no text in {}",
                g.qid,
                opts.negative_file.display(),
                opts.queries.display()
            ))
        })?;
        let no_positive = || {
            Error::Config(format!(
                "build-train: query {:?} of {} has no relevant passage in {}",
                g.qid,
                opts.negative_file.display(),
                opts.qrels.display()
            ))
        };
        let positives: Vec<Vec<u32>> = qrels
            .get(&g.qid)
            .ok_or_else(no_positive)?
            .relevant()
            .map(|pid| {
                collection
                    .position(pid)
                    .map(|p| collection.tokens(p).to_vec())
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "build-train: positive {pid:?} of query {:?} ({}) is not in the \
                             collection {}",
                            g.qid,
                            opts.qrels.display(),
                            opts.collection.display()
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        if positives.is_empty() {
            return Err(no_positive());
        }
        let n = positives.len();
        let ex = TrainExample {
            query: tokenizer.encode(text, false, Some(opts.truncate)),
            positives,
            negatives: g
                .negatives
                .iter()
                .map(|&p| collection.tokens(p).to_vec())
                .collect(),
        };
        Ok((
            serde_json::to_string(&ex).expect("a TrainExample serialises"),
            n,
        ))
    };

    let mut out: Option<JsonlWriter> = None;
    let bar = crate::progress::item_bar(groups.len() as u64, "build-train (queries)");
    for chunk in groups.chunks(4096) {
        let lines: Vec<(String, usize)> = chunk.par_iter().map(example).collect::<Result<_>>()?;
        for ((json, n_pos), g) in lines.iter().zip(chunk) {
            if let Some(full) = out.take_if(|w| w.count() == opts.shard_size) {
                report.files.push(full.finish()?);
            }
            let w = match &mut out {
                Some(w) => w,
                None => out.insert(JsonlWriter::create(split_path(
                    &opts.save_to,
                    report.files.len(),
                ))?),
            };
            w.write_serialized(json)?;
            report.examples += 1;
            report.positives += n_pos;
            report.negatives += g.negatives.len();
            report.short += (g.negatives.len() < opts.n_sample) as usize;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(w) = out {
        report.files.push(w.finish()?);
    }
    Ok(report)
}
