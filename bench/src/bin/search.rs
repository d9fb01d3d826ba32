//! Exact inner-product search benchmark, against FAISS `IndexFlatIP` (`bench/search_faiss.py`)
//! on the same data. Run through `bench/run_search.sh`, which alternates the two and checks that
//! they return the same top-k.
//!
//! - `search gen DIR [NQ NC DIM]`: writes `DIR/queries` and `DIR/corpus` as embedding sets
//!   (`embeddings.safetensors` + `ids.txt`): standard-normal f32 vectors from Philox seeds 1 and
//!   2 (defaults: 1000 queries, 200,000 passages, d = 768). Both sides read these files.
//! - `search run DIR [DEPTH]`: times `retrieval::search` (default depth 1000; thread count from
//!   RAYON_NUM_THREADS): one warm-up call, then `BENCH_REPS` (default 3) timed calls, median
//!   reported as one JSON line `{"op", "shape", "ms"}`. The last call's hits are written to
//!   `DIR/ours_topk.safetensors` (`indices` i64 and `scores` f32, `[NQ, DEPTH]`) for the check.
//!   `BENCH_QUERY_BLOCK` / `BENCH_CORPUS_BLOCK` override the block sizes (tuning);
//!   `COTMAE_PROFILE=1` prints the time split between the matmuls and the top-k updates.

use std::path::Path;
use std::time::Instant;

use bench::report;
use retrieval::{search, EmbeddingSet, SearchOptions};
use tensor::{DType, Device, Rng, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn write_set(dir: &Path, prefix: &str, rows: usize, dim: usize, seed: u64) -> Result<()> {
    let t = Tensor::randn(
        &[rows, dim],
        0.0,
        1.0,
        DType::F32,
        Device::Cpu,
        &mut Rng::new(seed),
    )?;
    let ids = (0..rows).map(|i| format!("{prefix}{i}")).collect();
    EmbeddingSet::new(ids, t)?.write(dir)?;
    Ok(())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| -> Result<usize> {
        Ok(match args.get(i) {
            Some(v) => v.parse()?,
            None => default,
        })
    };
    match args.first().map(String::as_str) {
        Some("gen") if args.len() >= 2 => {
            let dir = Path::new(&args[1]);
            let (nq, nc, dim) = (arg(2, 1000)?, arg(3, 200_000)?, arg(4, 768)?);
            write_set(&dir.join("queries"), "q", nq, dim, 1)?;
            write_set(&dir.join("corpus"), "p", nc, dim, 2)?;
            Ok(())
        }
        Some("run") if args.len() >= 2 => {
            let dir = Path::new(&args[1]);
            let depth = arg(2, 1000)?;
            let queries = EmbeddingSet::read(dir.join("queries"))?;
            let corpus = EmbeddingSet::read(dir.join("corpus"))?;
            let opts = SearchOptions {
                depth,
                query_block: env_usize("BENCH_QUERY_BLOCK", 0),
                corpus_block: env_usize("BENCH_CORPUS_BLOCK", 0),
                progress: false,
                ..SearchOptions::default()
            };
            let shards = [&corpus.embeddings];
            let run = || search(&queries.embeddings, &shards, &opts);
            run()?; // warm-up: pages the memory-mapped vectors in
            let mut times = Vec::new();
            let mut hits = Vec::new();
            for _ in 0..env_usize("BENCH_REPS", 3).max(1) {
                let t = Instant::now();
                hits = run()?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let (nq, nc, d) = (queries.len(), corpus.len(), corpus.dim());
            report(
                &format!("search_flat_ip_k{depth}"),
                &format!("[{nq},{d}], [{nc},{d}]"),
                times[times.len() / 2],
            );
            if std::env::var("COTMAE_PROFILE").is_ok_and(|v| v == "1") {
                eprint!("{}", tensor::profiler::report());
            }
            let k = hits.first().map_or(0, Vec::len);
            let idx: Vec<i64> = hits.iter().flatten().map(|h| h.index as i64).collect();
            let scores: Vec<f32> = hits.iter().flatten().map(|h| h.score).collect();
            tensor::safetensors::save(
                dir.join("ours_topk.safetensors"),
                &[
                    ("indices", &Tensor::from_vec(idx, &[nq, k])?),
                    ("scores", &Tensor::from_vec(scores, &[nq, k])?),
                ],
                None,
            )?;
            Ok(())
        }
        _ => Err("usage: search gen DIR [NQ NC DIM] | search run DIR [DEPTH]".into()),
    }
}
