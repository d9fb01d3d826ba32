//! BM25 negatives: the lexically closest passages first, positives excluded, ties by corpus
//! order, the `qid \t pid,pid,...` layout build-train reads.

use retrieval::bm25::bm25_negatives;
use retrieval::Qrels;

#[test]
fn bm25_negatives_rank_by_overlap_and_skip_positives() {
    let dir = std::env::temp_dir().join(format!("retrieval-bm25-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("corpus.tsv"),
        "p1\tthe red fox jumps over the dog\n\
         p2\ttitle\tred fox and red hen\n\
         p3\ta quiet blue lake\n\
         p4\tred [SEP] barn\n\
         p5\tblue lake at night\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("queries.tsv"),
        "q1\tred fox\nq2\tblue lake\nq3\tunjudged query\n",
    )
    .unwrap();
    std::fs::write(dir.join("qrels.tsv"), "q1\tp2\nq2\tp3\n").unwrap();
    let qrels = Qrels::read(dir.join("qrels.tsv")).unwrap();
    let out = dir.join("negatives.tsv");
    let r = bm25_negatives(
        &dir.join("corpus.tsv"),
        &dir.join("queries.tsv"),
        &qrels,
        2,
        &out,
    )
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    // q1: p2 is the positive; p1 has both words, p4 only "red" (its [SEP] is not a word).
    // q2: p3 is the positive; only p5 shares a word. q3 is not judged: no line.
    assert_eq!(text, "q1\tp1,p4\nq2\tp5\n");
    assert_eq!((r.queries, r.negatives), (2, 3));
    std::fs::remove_dir_all(&dir).unwrap();
}
