//! BM25 negatives for a corpus that ships none (the paper's stage-1 recipe: each training
//! query's top BM25 hits, its positives excluded), written as `qid \t pid,pid,...`, the
//! negative-file layout `build-train` reads.
//!
//! Index and scoring come from the `bm25` crate (Okapi BM25, k1 = 1.2, b = 0.75, its inverted
//! index); we give it our own tokenizer ([`Words`]: lower-cased runs of letters and digits, so
//! the `[SEP]` that joins a title to its text is dropped) and break score ties by the passage's
//! position in the corpus file, so the output does not depend on hash order or thread count.

use std::path::Path;

use rayon::prelude::*;

use crate::atomic::AtomicFile;
use crate::collection::read_texts;
use crate::qrels::Qrels;
use crate::Result;

/// BM25's tokenizer here: lower-cased alphanumeric words.
#[derive(Clone, Copy, Debug, Default)]
pub struct Words;

impl ::bm25::Tokenizer for Words {
    fn tokenize(&self, text: &str) -> Vec<String> {
        text.replace("[SEP]", " ")
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
}

/// What [`bm25_negatives`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Bm25Report {
    /// Queries with at least one negative.
    pub queries: usize,
    pub negatives: usize,
}

/// For every query of `queries` judged in `qrels`, its first `depth` BM25 hits in `corpus` that
/// are not relevant to it, written to `out` (atomically) as `qid \t pid,pid,...`, queries in
/// sorted order.
pub fn bm25_negatives(
    corpus: &Path,
    queries: &Path,
    qrels: &Qrels,
    depth: usize,
    out: &Path,
) -> Result<Bm25Report> {
    let mut passages: Vec<(String, String)> = read_texts(corpus)?.into_iter().collect();
    passages.sort();
    let engine = ::bm25::SearchEngineBuilder::<usize, u32, Words>::with_tokenizer_and_documents(
        Words,
        passages
            .iter()
            .enumerate()
            .map(|(i, (_, text))| ::bm25::Document::new(i, text.clone())),
    )
    .build();
    let mut texts: Vec<(String, String)> = read_texts(queries)?
        .into_iter()
        .filter(|(qid, _)| {
            qrels
                .get(qid)
                .is_some_and(|j| j.relevant().next().is_some())
        })
        .collect();
    texts.sort();
    let lines: Vec<(String, Vec<&str>)> = texts
        .par_iter()
        .map(|(qid, text)| {
            let judgements = qrels.get(qid).expect("filtered on the qrels");
            let mut hits = engine.search(text, None);
            hits.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then(a.document.id.cmp(&b.document.id))
            });
            let negatives = hits
                .iter()
                .map(|h| passages[h.document.id].0.as_str())
                .filter(|pid| judgements.relevance(pid) == 0)
                .take(depth)
                .collect();
            (qid.clone(), negatives)
        })
        .collect();
    let mut file = AtomicFile::create(out)?;
    let mut report = Bm25Report {
        queries: 0,
        negatives: 0,
    };
    for (qid, negatives) in lines.iter().filter(|(_, n)| !n.is_empty()) {
        file.write_all(format!("{qid}\t{}\n", negatives.join(",")).as_bytes())?;
        report.queries += 1;
        report.negatives += negatives.len();
    }
    file.finish()?;
    Ok(report)
}
