//! MS MARCO passage ranking metrics of a run against qrels (REFERENCE §7), as the MS MARCO eval
//! script and the CoT-MAE / Tevatron papers report them, plus nDCG@10.
//!
//! The averages are over the *judged* queries: those of the qrels with at least one relevant
//! passage (relevance > 0). A judged query missing from the run scores 0 everywhere; run queries
//! without judgements only count in `QueriesRanked`. Ranks are 1-based positions in the run's
//! order (see [`crate::run`]), up to 1000.
//! - `MRR@10`: mean of 1/rank of the first relevant passage within the top 10 (0 if none).
//! - `recall@k` (k = 1, 50, 1000): the fraction of judged queries with a relevant passage at rank
//!   <= k: a hit rate, not the fraction of each query's relevant passages found.
//! - `nDCG@10`: DCG@10 / ideal DCG@10 with gain = the qrels relevance (1 for 2-column qrels, so
//!   binary on MS MARCO; graded when 4-column qrels carry grades > 1) and discount 1/log2(rank+1).
//!   A passage listed twice for a query gains only at its first rank.
//! - `QueriesRanked`: distinct queries in the run.
//! - `depth`: the longest ranking of the run (at most 1000). A recall cutoff past it counts only
//!   the hits within `depth`, so [`Metrics::depth_warning`] says so (`evaluate` prints it once).
//!
//! [`first_relevant_ranks`] gives the per-query numbers the averages are made of (the paired
//! statistics of `cotmae ablation` resample them).

use std::collections::HashSet;

use crate::qrels::Qrels;
use crate::run::Run;
use crate::{Error, Result};

/// Ranks past this are ignored (the MS MARCO run depth).
pub const MAX_RANK: usize = 1000;
/// The MRR and nDCG cutoff.
pub const CUTOFF: usize = 10;
/// The recall cutoffs reported.
pub const RECALL_AT: [usize; 3] = [1, 50, 1000];

/// The metrics of one run (module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub mrr_at_10: f64,
    /// Hit rate at each of [`RECALL_AT`].
    pub recall: [f64; 3],
    pub ndcg_at_10: f64,
    /// Distinct queries in the run.
    pub queries_ranked: usize,
    /// Queries the averages are over (qrels queries with a relevant passage).
    pub queries_judged: usize,
    /// The longest ranking of the run, at most [`MAX_RANK`].
    pub depth: usize,
}

/// For each judged query (qrels order), the 1-based rank of its first relevant passage within
/// the first [`MAX_RANK`] of the run, `None` when there is none (or the query is not ranked).
pub fn first_relevant_ranks(qrels: &Qrels, run: &Run) -> Vec<(String, Option<usize>)> {
    let ranked: std::collections::HashMap<&str, &[String]> = run
        .queries
        .iter()
        .map(|(q, pids)| (q.as_str(), pids.as_slice()))
        .collect();
    qrels
        .judged_queries()
        .map(|qid| {
            let rank = ranked.get(qid).and_then(|pids| {
                let judgements = qrels.get(qid).expect("a judged query has judgements");
                pids.iter()
                    .take(MAX_RANK)
                    .position(|p| judgements.relevance(p) > 0)
                    .map(|i| i + 1)
            });
            (qid.to_string(), rank)
        })
        .collect()
}

/// The reciprocal rank at [`CUTOFF`] of a first relevant rank (0 past the cutoff or when none).
pub fn reciprocal_rank_at_10(rank: Option<usize>) -> f64 {
    match rank {
        Some(r) if r <= CUTOFF => 1.0 / r as f64,
        _ => 0.0,
    }
}

/// Scores `run` against `qrels`. An error when the qrels judge no query or no run query is
/// judged (almost always the wrong pair of files).
pub fn evaluate(qrels: &Qrels, run: &Run) -> Result<Metrics> {
    let judged: Vec<&str> = qrels.judged_queries().collect();
    if judged.is_empty() {
        return Err(Error::Config(
            "evaluate: the qrels have no relevant passage".into(),
        ));
    }
    let ranked: std::collections::HashMap<&str, &[String]> = run
        .queries
        .iter()
        .map(|(q, pids)| (q.as_str(), pids.as_slice()))
        .collect();
    if !judged.iter().any(|q| ranked.contains_key(q)) {
        return Err(Error::Config(
            "evaluate: no query of the run is in the qrels; are the run and qrels of the same \
             query set?"
                .into(),
        ));
    }
    let (mut mrr, mut recall) = (0.0, [0.0; 3]);
    for (_, rank) in first_relevant_ranks(qrels, run) {
        mrr += reciprocal_rank_at_10(rank);
        for (r, &k) in recall.iter_mut().zip(&RECALL_AT) {
            if rank.is_some_and(|rank| rank <= k) {
                *r += 1.0;
            }
        }
    }
    let mut ndcg = 0.0;
    for qid in &judged {
        if let Some(pids) = ranked.get(qid) {
            let judgements = qrels.get(qid).expect("a judged query has judgements");
            ndcg += ndcg_at_10(&pids[..pids.len().min(MAX_RANK)], judgements);
        }
    }
    let n = judged.len() as f64;
    Ok(Metrics {
        mrr_at_10: mrr / n,
        recall: recall.map(|r| r / n),
        ndcg_at_10: ndcg / n,
        queries_ranked: run.queries.len(),
        queries_judged: judged.len(),
        depth: run
            .queries
            .iter()
            .map(|(_, pids)| pids.len())
            .max()
            .unwrap_or(0)
            .min(MAX_RANK),
    })
}

fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 1) as f64).log2()
}

/// nDCG@10 of one query's ranking (module doc).
fn ndcg_at_10(pids: &[String], judgements: &crate::qrels::Judgements) -> f64 {
    let mut seen = HashSet::new();
    let dcg: f64 = pids
        .iter()
        .take(CUTOFF)
        .enumerate()
        .filter(|(_, p)| seen.insert(p.as_str()))
        .map(|(i, p)| judgements.relevance(p) as f64 * discount(i + 1))
        .sum();
    let mut gains: Vec<u32> = judgements.passages.iter().map(|&(_, r)| r).collect();
    gains.sort_unstable_by(|a, b| b.cmp(a));
    let ideal: f64 = gains
        .iter()
        .take(CUTOFF)
        .enumerate()
        .map(|(i, &g)| g as f64 * discount(i + 1))
        .sum();
    if ideal > 0.0 {
        dcg / ideal
    } else {
        0.0
    }
}

impl Metrics {
    /// The JSON object of `evaluate --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "MRR@10": self.mrr_at_10,
            "recall@1": self.recall[0],
            "recall@50": self.recall[1],
            "recall@1000": self.recall[2],
            "nDCG@10": self.ndcg_at_10,
            "QueriesRanked": self.queries_ranked,
            "depth": self.depth,
        })
    }

    /// A warning when a recall cutoff exceeds the run's depth (`recall@1000` of a run 100 deep
    /// is really recall@100), `None` otherwise.
    pub fn depth_warning(&self) -> Option<String> {
        let over: Vec<String> = RECALL_AT
            .iter()
            .filter(|&&k| k > self.depth)
            .map(|k| format!("recall@{k}"))
            .collect();
        (!over.is_empty()).then(|| {
            format!(
                "warning: the run is only {} deep, so {} count(s) only the hits within rank {}",
                self.depth,
                over.join(", "),
                self.depth
            )
        })
    }

    /// The table the MS MARCO eval script prints, with our extra metrics (floats as Python's
    /// `repr`: shortest round-trip digits, `0.0` not `0`).
    pub fn table(&self) -> String {
        let rule = "#####################";
        format!(
            "{rule}\nMRR @10: {:?}\nrecall@1: {:?}\nrecall@50: {:?}\nrecall@1000: {:?}\n\
             nDCG@10: {:?}\nQueriesRanked: {}\n{rule}\n",
            self.mrr_at_10,
            self.recall[0],
            self.recall[1],
            self.recall[2],
            self.ndcg_at_10,
            self.queries_ranked
        )
    }
}
