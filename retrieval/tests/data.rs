//! The data stages on tiny files: tokenize-corpus / tokenize-queries (record text, truncation,
//! splits, errors) and build-train / build-train-hn (positives, negative sampling, determinism,
//! output files, errors). Token ids are checked against the tokenizer run on the expected text.

use std::path::{Path, PathBuf};

use bert::Tokenizer;
use retrieval::{
    build_train, read_jsonl, tokenize_corpus, tokenize_queries, BuildTrainOptions, EncodeItem,
    NegativeSource, TrainExample,
};

fn tokenizer() -> Tokenizer {
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer/vocab.txt");
    Tokenizer::from_vocab_file(vocab, true).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retrieval-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tokenize_corpus_and_queries() {
    let tok = tokenizer();
    let dir = temp_dir("tokenize");
    let corpus = dir.join("corpus.tsv");
    std::fs::write(
        &corpus,
        "0\tThe Title\tSome passage text.\r\n1\t\tNo title here\n\n2\tonly a text field\n",
    )
    .unwrap();
    let report = tokenize_corpus(&corpus, dir.join("enc"), &tok, 128, 2).unwrap();
    assert_eq!(report.records, 3);
    let names: Vec<_> = report
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["split00.json", "split01.json"]);
    let mut items: Vec<EncodeItem> = read_jsonl(&report.files[0]).unwrap();
    assert_eq!(items.len(), 2);
    items.extend(read_jsonl::<EncodeItem>(&report.files[1]).unwrap());
    let want = [
        "The Title[SEP]Some passage text.",
        "[SEP]No title here",
        "only a text field",
    ];
    for (item, (id, text)) in items.iter().zip(["0", "1", "2"].iter().zip(want)) {
        assert_eq!(item.text_id, *id);
        assert_eq!(item.text, tok.encode(text, false, Some(128)), "{text}");
    }
    let sep = tok.sep_id();
    assert!(items[0].text.contains(&sep) && items[1].text[0] == sep);
    assert!(!items[2].text.contains(&sep) && !items[2].text.contains(&tok.cls_id()));

    // Truncation keeps a prefix; more splits than records leaves empty files.
    let report = tokenize_corpus(&corpus, dir.join("enc5"), &tok, 3, 5).unwrap();
    assert_eq!(report.files.len(), 5);
    let first: Vec<EncodeItem> = read_jsonl(&report.files[0]).unwrap();
    assert_eq!(first[0].text, items[0].text[..3]);
    assert!(read_jsonl::<EncodeItem>(&report.files[4])
        .unwrap()
        .is_empty());

    let queries = dir.join("queries.tsv");
    std::fs::write(&queries, "q7\twhat is a dense retriever?\nq8\t  \n").unwrap();
    let out = dir.join("q").join("queries.json");
    let report = tokenize_queries(&queries, &out, &tok, 32).unwrap();
    assert_eq!(report.files, vec![out.clone()]);
    let q: Vec<EncodeItem> = read_jsonl(&out).unwrap();
    assert_eq!(
        q[0].text,
        tok.encode("what is a dense retriever?", false, Some(32))
    );
    assert_eq!((q[1].text_id.as_str(), q[1].text.len()), ("q8", 0));

    // A line without a tab is an error naming it; nothing is left under the output name.
    std::fs::write(&queries, "q1\tfine\nbroken line\n").unwrap();
    let bad = dir.join("bad.json");
    let e = tokenize_queries(&queries, &bad, &tok, 32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("queries.tsv:2:") && e.contains("no tab"), "{e}");
    assert!(!bad.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A collection of 10 passages, 3 queries and their qrels (q2 has two positives).
fn write_inputs(dir: &Path) {
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    ];
    let collection: String = words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{i}\ttitle {w}\tthe {w} passage about {w}s\n"))
        .collect();
    std::fs::write(dir.join("corpus.tsv"), collection).unwrap();
    std::fs::write(
        dir.join("queries.tsv"),
        "q1\twhere is alpha\nq2\tbeta or gamma\nq3\tdelta\nq9\tunused\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("qrels.tsv"),
        "q1\t0\t0\t1\nq2\t0\t1\t1\nq2\t0\t2\t1\nq3\t0\t3\t1\n",
    )
    .unwrap();
}

fn options(
    dir: &Path,
    source: NegativeSource,
    negative_file: &str,
    n_sample: usize,
) -> BuildTrainOptions {
    BuildTrainOptions {
        source,
        negative_file: dir.join(negative_file),
        qrels: dir.join("qrels.tsv"),
        queries: dir.join("queries.tsv"),
        collection: dir.join("corpus.tsv"),
        save_to: dir.join("train"),
        truncate: 8,
        n_sample,
        seed: 42,
        shard_size: 1,
    }
}

fn read_examples(files: &[PathBuf]) -> Vec<TrainExample> {
    files
        .iter()
        .flat_map(|f| read_jsonl::<TrainExample>(f).unwrap())
        .collect()
}

/// Passage `i` as build-train tokenizes it.
fn passage(tok: &Tokenizer, i: usize) -> Vec<u32> {
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    ];
    let w = words[i];
    tok.encode(
        &format!("title {w}[SEP]the {w} passage about {w}s"),
        false,
        Some(8),
    )
}

/// The passage numbers of `negatives`.
fn which(tok: &Tokenizer, negatives: &[Vec<u32>]) -> Vec<usize> {
    negatives
        .iter()
        .map(|n| {
            (0..10)
                .find(|&i| passage(tok, i) == *n)
                .expect("a collection passage")
        })
        .collect()
}

#[test]
fn build_train_bm25_from_triples() {
    let tok = tokenizer();
    let dir = temp_dir("bm25");
    write_inputs(&dir);
    // q1's lines are split by q2's; q2 lists every negative once per positive.
    let triples = "q1\t0\t4\nq1\t0\t5\nq1\t0\t6\nq2\t1\t4\nq2\t1\t5\nq2\t2\t4\nq2\t2\t5\n\
                   q1\t0\t7\nq1\t0\t8\nq1\t0\t9\n";
    std::fs::write(dir.join("triples.tsv"), triples).unwrap();
    let opts = options(&dir, NegativeSource::Bm25, "triples.tsv", 3);
    let report = build_train(&tok, &opts).unwrap();
    assert_eq!(
        (report.examples, report.positives, report.negatives),
        (2, 3, 5)
    );
    assert_eq!(report.short, 1);
    let names: Vec<_> = report
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["split00.json", "split01.json"]);
    let ex = read_examples(&report.files);
    assert_eq!(ex[0].query, tok.encode("where is alpha", false, Some(8)));
    assert_eq!(ex[0].positives, vec![passage(&tok, 0)]);
    assert_eq!(ex[1].positives, vec![passage(&tok, 1), passage(&tok, 2)]);
    let mut q1 = which(&tok, &ex[0].negatives);
    let mut q2 = which(&tok, &ex[1].negatives);
    q1.sort();
    q2.sort();
    q1.dedup();
    assert_eq!(q1.len(), 3);
    assert!(q1.iter().all(|n| (4..=9).contains(n)), "{q1:?}");
    assert_eq!(q2, vec![4, 5]);

    // Same seed: same files, whatever the thread count. Other seeds: other samples.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let again = one.install(|| build_train(&tok, &opts)).unwrap();
    assert_eq!(read_examples(&again.files), ex);
    let samples: std::collections::HashSet<Vec<usize>> = (0..8)
        .map(|seed| {
            let r = build_train(
                &tok,
                &BuildTrainOptions {
                    seed,
                    ..opts.clone()
                },
            )
            .unwrap();
            which(&tok, &read_examples(&r.files)[0].negatives)
        })
        .collect();
    assert!(samples.len() > 1, "8 seeds gave one sample: {samples:?}");

    // The Tevatron form `qid \t pid,pid,...` reads the same.
    std::fs::write(dir.join("negs.tsv"), "q1\t4,5,6,7,8,9\nq2\t4,5\n").unwrap();
    let r = build_train(&tok, &options(&dir, NegativeSource::Bm25, "negs.tsv", 6)).unwrap();
    let mut all = which(&tok, &read_examples(&r.files)[0].negatives);
    all.sort();
    assert_eq!(all, vec![4, 5, 6, 7, 8, 9]);

    // Errors name the line and the missing pid or query.
    std::fs::write(dir.join("triples.tsv"), "q1\t0\t4\nq1\t0\t77\n").unwrap();
    let e = build_train(&tok, &opts).unwrap_err().to_string();
    assert!(e.contains("triples.tsv:2:") && e.contains("\"77\""), "{e}");
    std::fs::write(dir.join("triples.tsv"), "q1\t0\t4\nq1\t0\t4\t5\n").unwrap();
    let e = build_train(&tok, &opts).unwrap_err().to_string();
    assert!(
        e.contains("triples.tsv:2:") && e.contains("found 4 fields"),
        "{e}"
    );
    std::fs::write(dir.join("triples.tsv"), "q5\t0\t4\n").unwrap();
    let e = build_train(&tok, &opts).unwrap_err().to_string();
    assert!(e.contains("\"q5\"") && e.contains("no text"), "{e}");
    std::fs::write(dir.join("triples.tsv"), "q9\t0\t4\n").unwrap();
    let e = build_train(&tok, &opts).unwrap_err().to_string();
    assert!(
        e.contains("\"q9\"") && e.contains("no relevant passage"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn build_train_hn_from_a_ranking() {
    let tok = tokenizer();
    let dir = temp_dir("hn");
    write_inputs(&dir);
    // q1: its positive 0 is dropped, then the first 2 (depth) of 4 5 6 7 are kept.
    // q2: both positives dropped; 9 and 8 remain.
    let ranking = "q1\t0\t9.5\nq1\t4\t9\nq1\t5\t8\nq1\t6\t7\nq1\t7\t6\n\
                   q2\t1\t5\nq2\t9\t4\nq2\t2\t3\nq2\t8\t2\n";
    std::fs::write(dir.join("rank.tsv"), ranking).unwrap();
    let opts = options(&dir, NegativeSource::Ranking { depth: 2 }, "rank.tsv", 30);
    let report = build_train(&tok, &opts).unwrap();
    let ex = read_examples(&report.files);
    assert_eq!(ex.len(), 2);
    let (mut q1, mut q2) = (which(&tok, &ex[0].negatives), which(&tok, &ex[1].negatives));
    q1.sort();
    q2.sort();
    assert_eq!((q1, q2), (vec![4, 5], vec![8, 9]));
    assert_eq!(ex[1].positives, vec![passage(&tok, 1), passage(&tok, 2)]);

    // n_sample below depth keeps a shuffled subset of the first `depth`.
    let r = build_train(
        &tok,
        &BuildTrainOptions {
            source: NegativeSource::Ranking { depth: 3 },
            n_sample: 1,
            ..opts.clone()
        },
    )
    .unwrap();
    let ex = read_examples(&r.files);
    assert_eq!(ex[0].negatives.len(), 1);
    assert!([4, 5, 6].contains(&which(&tok, &ex[0].negatives)[0]));
    std::fs::remove_dir_all(&dir).unwrap();
}
