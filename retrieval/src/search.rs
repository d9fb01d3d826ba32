//! Exact inner-product search (FAISS `IndexFlatIP`'s results): for every query, the `depth`
//! corpus rows with the largest dot product, best first.
//!
//! The corpus may be several shards (`[N_s, d]` each, e.g. the `encode` splits); they are one
//! corpus to the search, rows numbered globally in the order the shards are given, so the merge
//! is exact by construction (no per-shard top-k to reduce). Ties: the rank order of
//! [`crate::topk`] (score descending, then lower global index, i.e. earlier shard, earlier row).
//! A depth larger than the corpus returns every row.
//!
//! Blocking keeps memory bounded and never forms the full query x corpus matrix: queries are
//! taken `query_block` at a time; for each query block the corpus is walked in blocks of
//! `corpus_block` rows, one matmul (`[qb, d] x [d, cb]`, the tensor crate's gemm, threaded over
//! the rayon pool) gives the block's scores, and each query's row of scores goes into its running
//! top-k ([`TopK`], queries in parallel). Peak extra memory: `qb x cb` scores plus `qb` top-k
//! buffers of `2 x depth` hits. Results are handed out one query block at a time, so a caller can
//! write them as they come. With `COTMAE_PROFILE=1` the top-k updates are timed as the op
//! `search_topk` next to the `matmul`s.
//!
//! On a GPU (`SearchOptions::device`), the corpus shards are uploaded whole, once, and each
//! query block once; a block's scores are computed and cut to each query's best
//! `min(k, block rows)` there (the tensor `topk`: the same order, larger score first and equal
//! scores by lower row), and only those candidates come back to the host, where they are offered
//! to the same running [`TopK`] in increasing row order ([`TopK::push`]). A row that is not among
//! its block's best `k` cannot be among the best `k` overall, so the results are those of the CPU
//! path, up to the GEMM's rounding (cuBLAS sums in another order, no TF32) and for NaN scores,
//! which the GPU's `topk` ranks first and [`TopK`] last (NaN embeddings only). The GPU `topk`
//! takes `k` up to 2048 (a larger depth is an error naming the limit). Default corpus block on a
//! GPU: [`DEFAULT_GPU_CORPUS_BLOCK`] rows.

use indicatif::ProgressBar;
use rayon::prelude::*;
use tensor::{DType, Device, Tensor};

use crate::progress::item_bar;
use crate::topk::{Hit, TopK};
use crate::{Error, Result};

/// Knobs of [`search`]; the defaults are tuned for a 2-core AVX-512 machine with d = 768.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// Hits per query (k).
    pub depth: usize,
    /// Queries per block (0: default).
    pub query_block: usize,
    /// Corpus rows per block (0: default).
    pub corpus_block: usize,
    /// Show a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Where the scores and the per-block top-k are computed (module doc).
    pub device: Device,
}

pub const DEFAULT_QUERY_BLOCK: usize = 1024;
pub const DEFAULT_CORPUS_BLOCK: usize = 4096;
/// Corpus rows per block on a GPU: 1024 queries x 65536 rows of f32 scores is 256 MiB.
pub const DEFAULT_GPU_CORPUS_BLOCK: usize = 1 << 16;

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            depth: 1000,
            query_block: 0,
            corpus_block: 0,
            progress: true,
            device: Device::Cpu,
        }
    }
}

fn check_matrix(what: &str, t: &Tensor, dim: Option<usize>) -> Result<usize> {
    if t.rank() != 2 || t.dtype() != DType::F32 {
        return Err(Error::Config(format!(
            "search: {what} must be a [rows, d] f32 matrix, got {:?} {}",
            t.shape(),
            t.dtype()
        )));
    }
    let d = t.shape()[1];
    if let Some(want) = dim.filter(|&w| w != d) {
        return Err(Error::Config(format!(
            "search: {what} has vectors of size {d}, the queries have {want}"
        )));
    }
    Ok(d)
}

/// Searches `shards` (module doc) for every row of `queries` (`[Q, d]` f32); calls
/// `emit(first_query, hits)` once per query block, in query order, with one best-first hit list
/// per query of the block. Hit indices are global corpus rows.
pub fn search_blocks(
    queries: &Tensor,
    shards: &[&Tensor],
    opts: &SearchOptions,
    mut emit: impl FnMut(usize, Vec<Vec<Hit>>) -> Result<()>,
) -> Result<()> {
    let d = check_matrix("the query matrix", queries, None)?;
    let mut total = 0usize;
    for (i, s) in shards.iter().enumerate() {
        check_matrix(&format!("corpus shard {i}"), s, Some(d))?;
        total += s.shape()[0];
    }
    if total > u32::MAX as usize {
        return Err(Error::Config(format!(
            "search: {total} corpus rows; at most {} are supported",
            u32::MAX
        )));
    }
    if opts.depth == 0 {
        return Err(Error::Config("search: depth must be at least 1".into()));
    }
    let k = opts.depth.min(total);
    let n_queries = queries.shape()[0];
    let qb = if opts.query_block == 0 {
        DEFAULT_QUERY_BLOCK
    } else {
        opts.query_block
    };
    let cb = match opts.corpus_block {
        0 if opts.device.is_cpu() => DEFAULT_CORPUS_BLOCK,
        0 => DEFAULT_GPU_CORPUS_BLOCK,
        cb => cb,
    };
    // On a GPU the corpus is uploaded once (module doc); on the CPU these are the shards.
    let shards: Vec<Tensor> = shards
        .iter()
        .map(|s| s.to_device(opts.device))
        .collect::<tensor::Result<_>>()?;
    let bar = if opts.progress {
        item_bar((n_queries * total) as u64, "search (query x corpus pairs)")
    } else {
        ProgressBar::hidden()
    };
    for q0 in (0..n_queries).step_by(qb) {
        let qn = qb.min(n_queries - q0);
        let block = queries.narrow(0, q0, qn)?.to_device(opts.device)?;
        let mut tops: Vec<TopK> = (0..qn).map(|_| TopK::new(k)).collect();
        let mut first = 0usize;
        for shard in &shards {
            let rows = shard.shape()[0];
            for c0 in (0..rows).step_by(cb) {
                let cn = cb.min(rows - c0);
                let scores = block.matmul(&shard.narrow(0, c0, cn)?.t()?)?;
                let base = (first + c0) as u32;
                if opts.device.is_cpu() {
                    let scores =
                        &scores.cpu_storage("search")?.as_slice::<f32>("search")?[..qn * cn];
                    let _p = tensor::profiler::scope("search_topk");
                    tops.par_iter_mut()
                        .zip(scores.par_chunks(cn))
                        .with_min_len((1 << 15) / cn + 1)
                        .for_each(|(top, row)| top.push_row(row, base));
                } else {
                    push_block_candidates(&mut tops, &scores, base)?;
                }
                bar.inc((qn * cn) as u64);
            }
            first += rows;
        }
        let hits = tops.into_par_iter().map(TopK::into_sorted).collect();
        emit(q0, hits)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Offers each query's best `min(k, block rows)` of a block of `scores` `[qn, cn]` (any device;
/// the cut is made there) to its running top-k, in increasing row order. Rows are numbered from
/// `base`.
fn push_block_candidates(tops: &mut [TopK], scores: &Tensor, base: u32) -> Result<()> {
    let cn = scores.shape()[1];
    let k = tops.first().map_or(0, TopK::k).min(cn);
    if k == 0 {
        return Ok(());
    }
    let (values, index) = scores.topk(k)?;
    let values = values.to_vec::<f32>()?;
    let index = index.to_vec::<i64>()?;
    let _p = tensor::profiler::scope("search_topk");
    tops.par_iter_mut()
        .zip(values.par_chunks(k).zip(index.par_chunks(k)))
        .for_each(|(top, (v, i))| {
            let mut row: Vec<(u32, f32)> =
                i.iter().map(|&i| i as u32).zip(v.iter().copied()).collect();
            row.sort_unstable_by_key(|&(i, _)| i);
            for (i, score) in row {
                top.push(score, base + i);
            }
        });
    Ok(())
}

/// [`search_blocks`] collected: one best-first hit list per query.
pub fn search(queries: &Tensor, shards: &[&Tensor], opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
    let mut out = Vec::with_capacity(queries.shape().first().copied().unwrap_or(0));
    search_blocks(queries, shards, opts, |_, hits| {
        out.extend(hits);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::Rng;

    /// The GPU path's host half, run on CPU tensors: each block's candidates alone give the
    /// same top-k as every score of the block (ties included: the scores are small integers).
    #[test]
    fn block_candidates_give_the_full_scan_results() {
        let mut rng = Rng::new(11);
        let (qn, n) = (5, 300);
        let scores: Vec<f32> = rng
            .uniform_vec(qn * n)
            .iter()
            .map(|u| (u * 7.0).floor() - 3.0)
            .collect();
        for k in [1, 4, 50, 299, 300] {
            for cb in [1, 7, 64, 300] {
                let mut want: Vec<TopK> = (0..qn).map(|_| TopK::new(k)).collect();
                let mut got = want.clone();
                for c0 in (0..n).step_by(cb) {
                    let cn = cb.min(n - c0);
                    let block: Vec<f32> = (0..qn)
                        .flat_map(|q| scores[q * n + c0..q * n + c0 + cn].to_vec())
                        .collect();
                    for (q, top) in want.iter_mut().enumerate() {
                        top.push_row(&block[q * cn..(q + 1) * cn], c0 as u32);
                    }
                    let t = Tensor::from_vec(block, &[qn, cn]).unwrap();
                    push_block_candidates(&mut got, &t, c0 as u32).unwrap();
                }
                for (w, g) in want.into_iter().zip(got) {
                    assert_eq!(w.into_sorted(), g.into_sorted(), "k {k} block {cb}");
                }
            }
        }
    }
}
