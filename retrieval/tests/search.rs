//! Exact search against brute force: every score computed and fully sorted by (score desc, global
//! index asc). Integer-valued vectors make every dot product exact in f32 whatever the summation
//! order, so the comparison is exact, ties included. With a GPU (feature `cuda`; skipped
//! without one) the device path gives the CPU path's results.

use retrieval::{search, search_blocks, Hit, SearchOptions};
use tensor::{Rng, Tensor};

/// `[rows, dim]` with entries uniform in {-2, ..., 2} (many tied scores).
fn small_ints(rows: usize, dim: usize, rng: &mut Rng) -> (Tensor, Vec<f32>) {
    let v: Vec<f32> = rng
        .uniform_vec(rows * dim)
        .iter()
        .map(|&u| (u * 5.0).floor() - 2.0)
        .collect();
    (Tensor::from_vec(v.clone(), &[rows, dim]).unwrap(), v)
}

/// The top `depth` of every query over the concatenated shards, by full sort.
fn brute_force(q: &[f32], corpus: &[f32], dim: usize, depth: usize) -> Vec<Vec<Hit>> {
    let n = corpus.len() / dim;
    q.chunks(dim)
        .map(|qv| {
            let mut all: Vec<(i64, u32)> = corpus
                .chunks(dim)
                .enumerate()
                .map(|(i, c)| {
                    let s: f32 = qv.iter().zip(c).map(|(a, b)| a * b).sum();
                    (s as i64, i as u32)
                })
                .collect();
            all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(depth.min(n));
            all.into_iter()
                .map(|(s, index)| Hit {
                    index,
                    score: s as f32,
                })
                .collect()
        })
        .collect()
}

#[test]
fn equals_brute_force_with_ties_shards_and_any_blocking() {
    let mut rng = Rng::new(3);
    let dim = 6;
    let (queries, qv) = small_ints(23, dim, &mut rng);
    let sizes = [37, 0, 150, 1, 64];
    let mut corpus_all = Vec::new();
    let shards: Vec<Tensor> = sizes
        .iter()
        .map(|&n| {
            let (t, v) = small_ints(n, dim, &mut rng);
            corpus_all.extend(v);
            t
        })
        .collect();
    let refs: Vec<&Tensor> = shards.iter().collect();
    let total: usize = sizes.iter().sum();
    for depth in [1, 5, 40, total, total + 100] {
        let want = brute_force(&qv, &corpus_all, dim, depth);
        for (query_block, corpus_block) in [(0, 0), (1, 1), (4, 7), (23, 16), (100, 1000)] {
            let opts = SearchOptions {
                depth,
                query_block,
                corpus_block,
                progress: false,
                ..SearchOptions::default()
            };
            let got = search(&queries, &refs, &opts).unwrap();
            assert_eq!(
                got, want,
                "depth {depth} blocks {query_block}x{corpus_block}"
            );
        }
    }
    // One shard holding the whole corpus gives the same result as the five shards.
    let whole = Tensor::from_vec(corpus_all.clone(), &[total, dim]).unwrap();
    let opts = SearchOptions {
        depth: 50,
        progress: false,
        ..SearchOptions::default()
    };
    assert_eq!(
        search(&queries, &[&whole], &opts).unwrap(),
        search(&queries, &refs, &opts).unwrap()
    );
}

#[test]
fn float_scores_match_f64_and_threads_do_not_change_results() {
    let (q, c) = (
        tensor::testing::randn(&[9, 32], 1.0, tensor::DType::F32, 1),
        tensor::testing::randn(&[500, 32], 1.0, tensor::DType::F32, 2),
    );
    let (qv, cv) = (q.to_vec::<f32>().unwrap(), c.to_vec::<f32>().unwrap());
    let opts = SearchOptions {
        depth: 20,
        query_block: 4,
        corpus_block: 64,
        progress: false,
        ..SearchOptions::default()
    };
    let got = search(&q, &[&c], &opts).unwrap();
    for (qi, hits) in got.iter().enumerate() {
        let exact = |i: u32| -> f64 {
            (0..32)
                .map(|j| qv[qi * 32 + j] as f64 * cv[i as usize * 32 + j] as f64)
                .sum()
        };
        let mut all: Vec<f64> = (0..500).map(exact).collect();
        all.sort_by(|a, b| b.total_cmp(a));
        for (r, h) in hits.iter().enumerate() {
            assert!((h.score as f64 - exact(h.index)).abs() < 1e-4, "q{qi} r{r}");
            assert!((h.score as f64 - all[r]).abs() < 1e-4, "q{qi} rank {r}");
        }
    }
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(one.install(|| search(&q, &[&c], &opts)).unwrap(), got);
}

#[test]
fn blocks_arrive_in_query_order_and_bad_inputs_are_errors() {
    let q = tensor::testing::randn(&[10, 4], 1.0, tensor::DType::F32, 1);
    let c = tensor::testing::randn(&[30, 4], 1.0, tensor::DType::F32, 2);
    let opts = SearchOptions {
        depth: 3,
        query_block: 4,
        corpus_block: 0,
        progress: false,
        ..SearchOptions::default()
    };
    let mut firsts = Vec::new();
    search_blocks(&q, &[&c], &opts, |first, hits| {
        firsts.push((first, hits.len()));
        Ok(())
    })
    .unwrap();
    assert_eq!(firsts, vec![(0, 4), (4, 4), (8, 2)]);

    let wrong_dim = tensor::testing::randn(&[5, 3], 1.0, tensor::DType::F32, 3);
    let e = search(&q, &[&c, &wrong_dim], &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("corpus shard 1") && e.contains("size 3"), "{e}");
    let f64s = c.to_dtype(tensor::DType::F64).unwrap();
    assert!(search(&q, &[&f64s], &opts).is_err());
    let zero = SearchOptions {
        depth: 0,
        ..opts.clone()
    };
    assert!(search(&q, &[&c], &zero)
        .unwrap_err()
        .to_string()
        .contains("depth"));
    // An empty corpus gives empty lists.
    let empty = Tensor::from_vec(Vec::<f32>::new(), &[0, 4]).unwrap();
    assert_eq!(search(&q, &[&empty], &opts).unwrap(), vec![vec![]; 10]);
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_search_equals_cpu_search() {
    let Some(dev) = tensor::testing::cuda_or_skip("gpu_search_equals_cpu_search") else {
        return;
    };
    let mut rng = Rng::new(8);
    let dim = 24;
    let (queries, _) = small_ints(37, dim, &mut rng);
    let shards: Vec<Tensor> = [300, 0, 1, 129]
        .iter()
        .map(|&n| small_ints(n, dim, &mut rng).0)
        .collect();
    let refs: Vec<&Tensor> = shards.iter().collect();
    for depth in [1, 10, 100, 430, 1000] {
        for (query_block, corpus_block) in [(0, 0), (5, 17), (37, 128), (1, 1000)] {
            let opts = SearchOptions {
                depth,
                query_block,
                corpus_block,
                progress: false,
                ..SearchOptions::default()
            };
            let cpu = search(&queries, &refs, &opts).unwrap();
            let gpu = search(
                &queries,
                &refs,
                &SearchOptions {
                    device: dev,
                    ..opts
                },
            )
            .unwrap();
            assert_eq!(
                gpu, cpu,
                "depth {depth} blocks {query_block}x{corpus_block}"
            );
        }
    }
}
