//! Property tests of the retrieval stages' inputs (issue 14, class 5): JSON-lines records
//! (`EncodeItem`, `TrainExample`), TSV corpora and queries, qrels, rankings, and encoded sets
//! (`ids.txt` beside `embeddings.safetensors`). Random bytes, random line text and mutations of
//! valid files give an error naming the file or a valid result, never a panic; the writers'
//! files (rankings, JSON lines, encoded sets) read back as written.

#[path = "../../tests/fuzz/strategies.rs"]
mod strategies;

use std::path::Path;

use bert::Tokenizer;
use proptest::prelude::*;
use retrieval::collection::{read_texts, TokenizedCollection};
use retrieval::{
    read_jsonl, EmbeddingSet, EncodeItem, JsonlWriter, Qrels, Run, RunWriter, TrainDataset,
    TrainExample,
};
use strategies::*;
use tensor::Tensor;

/// `f(path)` on `bytes` written as `name`; an error must name the file.
fn check_file<T>(name: &str, bytes: &[u8], f: impl FnOnce(&Path) -> retrieval::Result<T>) {
    let dir = Scratch::new("ret");
    let p = dir.file(name, bytes);
    if let Err(e) = f(&p) {
        assert_names(&e.to_string(), &p);
    }
    assert_bounded_memory(name);
}

const TSV: &[u8] = b"p1\tA title\tSome text, here.\np2\t\tMore text\n\np3\tonly\n";
const QRELS: &[u8] = b"q1\t0\tp1\t1\nq1 0 p2 0\nq2\tp3\n";
const RUN: &[u8] = b"q1\tp1\t3.5\nq1\tp2\t-1e9\nq2 Q0 p3 1 2.0 tag\nq2\tp1\t1\n";
const ENCODE: &[u8] =
    b"{\"text_id\": \"p1\", \"text\": [5, 6, 7]}\n{\"text_id\": \"7\", \"text\": []}\n";
const TRAIN: &[u8] =
    b"{\"query\": [5, 6], \"positives\": [[7, 8]], \"negatives\": [[9], [10, 11]]}\n";

fn tokenizer(dir: &Scratch) -> Tokenizer {
    let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\ntext\nsome\nmore\n,\n.\n";
    Tokenizer::from_vocab_file(dir.file("vocab.txt", vocab.as_bytes()), true).unwrap()
}

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9_.-]{1,6}"
}

proptest! {
    #![proptest_config(config(DEFAULT_CASES))]

    #[test]
    fn tsv_texts_never_panic(b in any_input(TSV.to_vec())) {
        check_file("queries.tsv", &b, |p| read_texts(p));
    }

    #[test]
    fn tsv_collection_never_panics(b in any_input(TSV.to_vec())) {
        let dir = Scratch::new("coll");
        let t = tokenizer(&dir);
        check_file("corpus.tsv", &b, |p| {
            let c = TokenizedCollection::read(p, &t, 8)?;
            for i in 0..c.len() as u32 {
                assert!(c.tokens(i).len() <= 8);
            }
            Ok(())
        });
    }

    #[test]
    fn qrels_never_panic(b in any_input(QRELS.to_vec())) {
        check_file("qrels.tsv", &b, |p| {
            let q = Qrels::read(p)?;
            for qid in &q.qids {
                assert!(q.get(qid).is_some());
            }
            Ok(())
        });
    }

    #[test]
    fn runs_never_panic(b in any_input(RUN.to_vec())) {
        check_file("run.tsv", &b, |p| Run::read(p));
    }

    #[test]
    fn encode_items_never_panic(b in any_input(ENCODE.to_vec())) {
        check_file("corpus.jsonl", &b, |p| read_jsonl::<EncodeItem>(p));
    }

    #[test]
    fn train_examples_never_panic(b in any_input(TRAIN.to_vec())) {
        check_file("train.jsonl", &b, |p| {
            let d = TrainDataset::open(p)?;
            for i in 0..d.len() {
                let _ = d.get(i);
            }
            d.validate(2, 32)
        });
    }

    #[test]
    fn encoded_set_ids_never_panic(b in any_input(b"p1\np2\n".to_vec())) {
        let dir = Scratch::new("emb");
        let e = Tensor::from_vec(vec![0.5f32; 4], &[2, 2]).unwrap();
        EmbeddingSet::new(vec!["p1".into(), "p2".into()], e).unwrap().write(dir.path()).unwrap();
        let p = dir.file("ids.txt", &b);
        match EmbeddingSet::read(dir.path()) {
            Ok(s) => prop_assert_eq!(s.len(), 2),
            Err(e) => assert_names(&e.to_string(), &p),
        }
        assert_bounded_memory("EmbeddingSet::read");
    }

    #[test]
    fn runs_round_trip(
        queries in prop::collection::vec(
            (id(), prop::collection::vec((id(), any::<f32>()), 1..5)), 0..5),
    ) {
        let dir = Scratch::new("run-rt");
        let p = dir.path().join("run.tsv");
        let mut w = RunWriter::create(&p).unwrap();
        // One block per distinct query, each passage once, as `search` writes (a passage listed
        // twice for a query is an error, as in MS MARCO's evaluation script).
        let mut seen = std::collections::HashSet::new();
        let queries: Vec<_> = queries
            .into_iter()
            .filter(|(q, _)| seen.insert(q.clone()))
            .map(|(q, mut hits)| {
                let mut pids = std::collections::HashSet::new();
                hits.retain(|(p, _)| pids.insert(p.clone()));
                (q, hits)
            })
            .collect();
        for (qid, hits) in &queries {
            w.write_query(qid, hits.iter().map(|(p, s)| (p.as_str(), *s))).unwrap();
        }
        w.finish().unwrap();
        let run = Run::read(&p).unwrap();
        let want: Vec<(String, Vec<String>)> = queries
            .iter()
            .map(|(q, hits)| (q.clone(), hits.iter().map(|(p, _)| p.clone()).collect()))
            .collect();
        prop_assert_eq!(run.queries, want);
    }

    #[test]
    fn jsonl_round_trips(
        items in prop::collection::vec((id(), prop::collection::vec(any::<u32>(), 0..6)), 0..6),
        ex in prop::collection::vec(
            (prop::collection::vec(0u32..32, 1..4), prop::collection::vec(0u32..32, 1..4)), 1..4),
    ) {
        let dir = Scratch::new("jsonl-rt");
        let p = dir.path().join("items.jsonl");
        let mut w = JsonlWriter::create(&p).unwrap();
        let items: Vec<EncodeItem> =
            items.into_iter().map(|(text_id, text)| EncodeItem { text_id, text }).collect();
        for it in &items {
            w.write(it).unwrap();
        }
        w.finish().unwrap();
        prop_assert_eq!(read_jsonl::<EncodeItem>(&p).unwrap(), items);

        let p = dir.path().join("train.jsonl");
        let mut w = JsonlWriter::create(&p).unwrap();
        let examples: Vec<TrainExample> = ex
            .into_iter()
            .map(|(q, pos)| TrainExample { query: q, positives: vec![pos.clone()], negatives: vec![pos] })
            .collect();
        for e in &examples {
            w.write(e).unwrap();
        }
        w.finish().unwrap();
        let d = TrainDataset::open(&p).unwrap();
        prop_assert_eq!(d.len(), examples.len());
        for (i, e) in examples.iter().enumerate() {
            prop_assert_eq!(&d.get(i).unwrap(), e);
        }
    }

    #[test]
    fn encoded_sets_round_trip(
        ids in prop::collection::btree_set(id(), 0..6),
        dim in 1usize..5,
        seed in any::<u32>(),
    ) {
        let dir = Scratch::new("emb-rt");
        let ids: Vec<String> = ids.into_iter().collect();
        let vals: Vec<f32> = (0..ids.len() * dim).map(|i| (seed as f32) * 0.5 - i as f32).collect();
        let e = Tensor::from_vec(vals.clone(), &[ids.len(), dim]).unwrap();
        EmbeddingSet::new(ids.clone(), e).unwrap().write(dir.path()).unwrap();
        let back = EmbeddingSet::read(dir.path()).unwrap();
        prop_assert_eq!(back.len(), ids.len());
        prop_assert_eq!(back.dim(), dim);
        prop_assert_eq!(&back.ids, &ids);
        prop_assert_eq!(back.embeddings.to_vec::<f32>().unwrap(), vals);
    }
}
