//! MS MARCO metrics on hand-computed cases: file-order ranks with tied scores, judged queries
//! missing from the run, several positives, hits past rank 10 and past rank 1000, unjudged run
//! queries, 2- and 4-column qrels, graded nDCG.

use std::path::PathBuf;

use retrieval::{evaluate, Qrels, Run};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retrieval-metrics-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn ms_marco_cases_by_hand() {
    let dir = temp_dir("marco");
    // 4-column train style and 2-column dev style mixed; q4 is judged only non-relevant.
    std::fs::write(
        dir.join("qrels.tsv"),
        "q1\t0\tp1\t1\nq2\tp2\nq2\tp3\nq3\tp4\nq4 0 p5 0\nq5\tp6\nq6\tp7\n",
    )
    .unwrap();
    let mut run = String::new();
    // q1: tied scores, the relevant passage second in file order -> rank 2.
    run += "q1\tx\t5.0\nq1\tp1\t5.0\nq1\ty\t4.0\n";
    // q2: two positives at ranks 1 and 3.
    run += "q2\tp3\t9\nq2\tz\t8\nq2\tp2\t7\n";
    // q4: unjudged (only a relevance-0 judgement); q7: not in the qrels at all.
    run += "q4\tp5\t1\nq7\tp1\t1\n";
    // q5: relevant at rank 11; q6: relevant at rank 1001. q3 is missing from the run.
    for i in 0..10 {
        run += &format!("q5\tn{i}\t{}\n", 100 - i);
    }
    run += "q5\tp6\t1\n";
    for i in 0..1000 {
        run += &format!("q6\tn{i}\t{}\n", 2000 - i);
    }
    run += "q6\tp7\t1\n";
    std::fs::write(dir.join("run.tsv"), run).unwrap();

    let qrels = Qrels::read(dir.join("qrels.tsv")).unwrap();
    let run = Run::read(dir.join("run.tsv")).unwrap();
    let m = evaluate(&qrels, &run).unwrap();
    // Judged: q1, q2, q3, q5, q6.
    assert_eq!(m.queries_judged, 5);
    assert_eq!(m.queries_ranked, 6); // q1 q2 q4 q7 q5 q6
    assert!(close(m.mrr_at_10, (0.5 + 1.0) / 5.0), "{m:?}");
    assert!(close(m.recall[0], 1.0 / 5.0), "{m:?}"); // q2
    assert!(close(m.recall[1], 3.0 / 5.0), "{m:?}"); // q1 q2 q5
    assert!(close(m.recall[2], 3.0 / 5.0), "{m:?}"); // q6's hit is past 1000
    let ndcg_q1 = 1.0 / 3f64.log2();
    let ndcg_q2 = (1.0 + 1.0 / 4f64.log2()) / (1.0 + 1.0 / 3f64.log2());
    assert!(close(m.ndcg_at_10, (ndcg_q1 + ndcg_q2) / 5.0), "{m:?}");

    let json = m.to_json();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "MRR@10",
        "recall@1",
        "recall@50",
        "recall@1000",
        "QueriesRanked",
        "nDCG@10",
        "depth",
    ];
    let mut got = keys.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(json["QueriesRanked"], 6);
    // q6's ranking is 1001 long: the depth is capped at the MS MARCO depth, no warning.
    assert_eq!(m.depth, 1000);
    assert_eq!(json["depth"], 1000);
    assert!(m.depth_warning().is_none());
    let ranks = retrieval::metrics::first_relevant_ranks(&qrels, &run);
    let got: Vec<(&str, Option<usize>)> = ranks.iter().map(|(q, r)| (q.as_str(), *r)).collect();
    assert_eq!(
        got,
        [
            ("q1", Some(2)),
            ("q2", Some(1)),
            ("q3", None),
            ("q5", Some(11)),
            ("q6", None)
        ]
    );
    assert!(close(json["MRR@10"].as_f64().unwrap(), 0.3));
    let table = m.table();
    assert!(
        table.starts_with("#####################\nMRR @10: 0.3\n"),
        "{table}"
    );
    assert!(table.contains("\nQueriesRanked: 6\n"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn graded_ndcg_and_repeated_passages() {
    let mut qrels = Qrels::default();
    qrels.add("q", "a", 3);
    qrels.add("q", "b", 1);
    qrels.add("q", "c", 0);
    let run = |pids: &[&str]| Run {
        queries: vec![("q".into(), pids.iter().map(|p| p.to_string()).collect())],
    };
    let ideal = 3.0 + 1.0 / 3f64.log2();
    let m = evaluate(&qrels, &run(&["c", "b", "a"])).unwrap();
    assert!(close(
        m.ndcg_at_10,
        (1.0 / 3f64.log2() + 3.0 / 4f64.log2()) / ideal
    ));
    assert!(close(m.mrr_at_10, 0.5));
    // A passage listed twice gains once.
    let m = evaluate(&qrels, &run(&["a", "a", "b"])).unwrap();
    assert!(close(m.ndcg_at_10, (3.0 + 1.0 / 4f64.log2()) / ideal));
    assert!(close(
        evaluate(&qrels, &run(&["a", "b"])).unwrap().ndcg_at_10,
        1.0
    ));
}

#[test]
fn disjoint_run_and_qrels_is_an_error() {
    let mut qrels = Qrels::default();
    qrels.add("q1", "p", 1);
    let run = Run {
        queries: vec![("q2".into(), vec!["p".into()])],
    };
    let e = evaluate(&qrels, &run).unwrap_err().to_string();
    assert!(e.contains("no query of the run"), "{e}");
    assert!(evaluate(&Qrels::default(), &run).is_err());
}

#[test]
fn shallow_run_warns_about_recall_cutoffs_past_its_depth() {
    let dir = temp_dir("shallow");
    std::fs::write(dir.join("qrels.tsv"), "q1\tp1\nq2\tp2\n").unwrap();
    std::fs::write(
        dir.join("run.tsv"),
        "q1\tp1\t3\nq1\tx\t2\nq1\ty\t1\nq2\tx\t1\n",
    )
    .unwrap();
    let qrels = Qrels::read(dir.join("qrels.tsv")).unwrap();
    let run = Run::read(dir.join("run.tsv")).unwrap();
    let m = evaluate(&qrels, &run).unwrap();
    assert_eq!(m.depth, 3);
    let w = m.depth_warning().expect("a warning for a run 3 deep");
    assert!(w.contains("only 3 deep"), "{w}");
    assert!(w.contains("recall@50, recall@1000"), "{w}");
    assert!(!w.contains("recall@1,"), "{w}");
    std::fs::remove_dir_all(&dir).unwrap();
}
