//! Tevatron's training-data rules (REFERENCE §5-6): positives cycled by epoch, negatives from a
//! fixed per-example shuffle walked by epoch, drawn with replacement when too few; the epoch
//! order; the training files (a file or a directory, blank lines, errors naming file:line); and
//! the batch layout (query i's positive at passage row i * n).

use std::collections::HashSet;
use std::path::PathBuf;

use retrieval::dense::{PadTo, SpecialIds};
use retrieval::train_data::{epoch_order, hashed_seed, BatchConfig};
use retrieval::{jsonl_inputs, sample_passages, TrainDataset, TrainExample};

mod common;
use common::Scratch;

/// A fresh scratch directory, removed on drop.
/// Passages are one token each, so a sampled passage names itself: positives 10.., negatives 100..
fn example(n_pos: u32, n_neg: u32) -> TrainExample {
    TrainExample {
        query: vec![7, 8],
        positives: (0..n_pos).map(|k| vec![10 + k]).collect(),
        negatives: (0..n_neg).map(|k| vec![100 + k]).collect(),
    }
}

fn ids(passages: &[&[u32]]) -> Vec<u32> {
    passages.iter().map(|p| p[0]).collect()
}

#[test]
fn positives_cycle_with_the_epoch() {
    let ex = example(3, 20);
    for (seed, index) in [(42u64, 0usize), (42, 5), (7, 1)] {
        let firsts: Vec<u32> = (0..6)
            .map(|e| sample_passages(&ex, index, e, 4, seed).unwrap()[0][0])
            .collect();
        // Tevatron: positives[(hash(index + seed) + epoch) % len], hash(int) == int.
        let want: Vec<u32> = (0..6u64)
            .map(|e| 10 + ((hashed_seed(seed, index) + e) % 3) as u32)
            .collect();
        assert_eq!(firsts, want, "seed {seed} index {index}");
        assert!(firsts.windows(2).all(|w| w[0] != w[1]));
    }
}

#[test]
fn negatives_walk_a_fixed_shuffle_by_epoch() {
    let (n, len) = (4usize, 10u32);
    let ex = example(1, len);
    let per_epoch = |index: usize, seed: u64, e: u64| {
        ids(&sample_passages(&ex, index, e, n, seed).unwrap()[1..])
    };
    // Epochs 0..=9 read the doubled shuffled list at offsets 0, 3, 6, 9 % 10, ...: their
    // concatenation is one fixed permutation repeated.
    let walk: Vec<u32> = (0..10).flat_map(|e| per_epoch(3, 42, e)).collect();
    let perm = &walk[..len as usize];
    assert_eq!(
        perm.iter().copied().collect::<HashSet<_>>().len(),
        len as usize,
        "{perm:?}"
    );
    for (k, &x) in walk.iter().enumerate() {
        assert_eq!(x, perm[k % len as usize], "position {k} of {walk:?}");
    }
    assert_ne!(perm, (100..100 + len).collect::<Vec<_>>(), "not shuffled");
    // Within an epoch no negative repeats (len >= n - 1).
    for e in 0..10 {
        let neg = per_epoch(3, 42, e);
        assert_eq!(neg.iter().collect::<HashSet<_>>().len(), n - 1);
    }
    // The shuffle belongs to the example (index + seed).
    assert_ne!(per_epoch(3, 42, 0), per_epoch(4, 42, 0));
    assert_eq!(per_epoch(3, 42, 0), per_epoch(4, 41, 0));
    // Exactly n - 1 negatives: the whole shuffled list every epoch, from a moving offset.
    let ex3 = example(1, 3);
    let e0 = ids(&sample_passages(&ex3, 0, 0, 4, 1).unwrap()[1..]);
    let e1 = ids(&sample_passages(&ex3, 0, 1, 4, 1).unwrap()[1..]);
    assert_eq!(e0.iter().collect::<HashSet<_>>().len(), 3);
    assert_eq!(e0, e1); // offset (1 * 3) % 3 == 0
}

#[test]
fn too_few_negatives_are_drawn_with_replacement() {
    let ex = example(1, 2);
    let draw = |e| ids(&sample_passages(&ex, 0, e, 8, 42).unwrap()[1..]);
    let epochs: Vec<Vec<u32>> = (0..4).map(draw).collect();
    for neg in &epochs {
        assert_eq!(neg.len(), 7);
        assert!(neg.iter().all(|&x| x == 100 || x == 101), "{neg:?}");
    }
    assert_eq!(draw(0), epochs[0], "reproducible");
    assert!(
        epochs.iter().any(|n| n != &epochs[0]),
        "a fresh draw each epoch"
    );
    let all: Vec<u32> = epochs.concat();
    let zeros = all.iter().filter(|&&x| x == 100).count();
    assert!(zeros > 4 && zeros < 24, "both drawn: {all:?}");
}

#[test]
fn one_passage_and_missing_passages() {
    assert_eq!(
        ids(&sample_passages(&example(2, 0), 0, 0, 1, 42).unwrap()),
        [10]
    );
    assert_eq!(
        sample_passages(&example(2, 5), 0, 0, 1, 42).unwrap().len(),
        1
    );
    let err = sample_passages(&example(0, 5), 0, 0, 2, 42).unwrap_err();
    assert!(err.contains("no positives"), "{err}");
    let err = sample_passages(&example(1, 0), 0, 0, 2, 42).unwrap_err();
    assert!(err.contains("no negatives"), "{err}");
}

#[test]
fn epoch_order_is_a_reproducible_permutation_per_epoch() {
    let a = epoch_order(50, 42, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(50, 42, 0));
    assert_ne!(a, epoch_order(50, 42, 1));
    assert_ne!(a, epoch_order(50, 43, 0));
    assert_ne!(a, sorted);
}

fn write(path: &PathBuf, lines: &[String]) {
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn line(ex: &TrainExample) -> String {
    serde_json::to_string(ex).unwrap()
}

#[test]
fn dataset_files_lines_batches_and_errors() {
    let s = Scratch::new("train-data");
    let dir = s.0.join("train");
    std::fs::create_dir_all(&dir).unwrap();
    // b.jsonl sorts after a.json; notes.txt is not an input.
    let (e0, e1, e2) = (example(1, 5), example(2, 1), example(1, 3));
    write(
        &dir.join("a.json"),
        &[line(&e0), String::new(), "  ".into(), line(&e1)],
    );
    write(&dir.join("b.jsonl"), &[line(&e2), String::new()]);
    std::fs::write(dir.join("notes.txt"), "not json").unwrap();
    assert_eq!(
        jsonl_inputs(&dir).unwrap(),
        [dir.join("a.json"), dir.join("b.jsonl")]
    );

    let data = TrainDataset::open(&dir).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.get(1).unwrap(), e1);
    assert_eq!(data.location(1), (dir.join("a.json").as_path(), 4));
    assert_eq!(data.location(2), (dir.join("b.jsonl").as_path(), 1));
    data.validate(4, 1000).unwrap();
    // One file works too.
    assert_eq!(TrainDataset::open(dir.join("b.jsonl")).unwrap().len(), 1);

    let special = SpecialIds {
        cls: 2,
        sep: 3,
        pad: 0,
    };
    let cfg = BatchConfig {
        train_n_passages: 3,
        q_max_len: 6,
        p_max_len: 4,
        seed: 42,
        special,
        pad_to: PadTo::MaxLen,
    };
    let b = data.batch(&[2, 0], 1, &cfg).unwrap();
    assert_eq!(b.query.input_ids.shape(), &[2, 6]);
    assert_eq!(b.passages.input_ids.shape(), &[6, 4]);
    assert_eq!(
        b.query.input_ids.to_vec::<i64>().unwrap(),
        [2, 7, 8, 3, 0, 0, 2, 7, 8, 3, 0, 0]
    );
    let rows = b.passages.input_ids.to_vec::<i64>().unwrap();
    for (i, (&idx, ex)) in [2usize, 0].iter().zip([&e2, &e0]).enumerate() {
        let want = sample_passages(ex, idx, 1, 3, 42).unwrap();
        for (k, p) in want.iter().enumerate() {
            let r = &rows[(i * 3 + k) * 4..(i * 3 + k + 1) * 4];
            assert_eq!(r, [2, p[0] as i64, 3, 0], "query {i} passage {k}");
        }
        assert!(
            (10..20).contains(&rows[i * 3 * 4 + 1]),
            "row i*n is the positive"
        );
    }

    // Errors name the file and line.
    let err = data.validate(4, 104).unwrap_err().to_string();
    assert!(
        err.contains("a.json:1:") && err.contains("negatives[4]") && err.contains("104"),
        "{err}"
    );
    write(&dir.join("b.jsonl"), &[line(&e2), line(&example(0, 3))]);
    let err = TrainDataset::open(&dir)
        .unwrap()
        .validate(4, 1000)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.jsonl:2:") && err.contains("no positives"),
        "{err}"
    );
    write(&dir.join("b.jsonl"), &[line(&e2), "{\"query\": [1]".into()]);
    let err = TrainDataset::open(&dir)
        .unwrap()
        .validate(4, 1000)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.jsonl:2:") && err.contains("invalid record"),
        "{err}"
    );
    let empty = s.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(TrainDataset::open(&empty).is_err());
}
