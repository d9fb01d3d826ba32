//! Relevance judgements ("qrels"): which passages are relevant to a query.
//!
//! Two formats, fields separated by tabs or spaces, chosen per line by the field count:
//! - `qid pid` (2 columns, MS MARCO dev as Tevatron ships it): relevance 1;
//! - `qid iteration pid relevance` (4 columns, TREC / MS MARCO train `qid 0 pid 1`): the integer
//!   relevance; a passage is relevant when it is > 0 (0 marks a judged non-relevant passage).
//!
//! Any other field count, a relevance that is not an integer >= 0, or invalid UTF-8 is an error
//! naming `file:line`; blank lines are skipped. A pair listed twice keeps its highest relevance.
//! Queries and their passages keep the order of first appearance (the positives of a training
//! example come out in file order, as the original's lists).

use std::collections::HashMap;
use std::path::Path;

use crate::lines::{columns, for_each_batch};
use crate::{Error, Result};

/// The judgements of one query, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judgements {
    /// `(pid, relevance)`, each pid once.
    pub passages: Vec<(String, u32)>,
}

impl Judgements {
    /// The relevance of `pid` (0 when not judged).
    pub fn relevance(&self, pid: &str) -> u32 {
        self.passages
            .iter()
            .find(|(p, _)| p == pid)
            .map_or(0, |&(_, r)| r)
    }

    /// The relevant (relevance > 0) pids, in file order.
    pub fn relevant(&self) -> impl Iterator<Item = &str> {
        self.passages
            .iter()
            .filter(|(_, r)| *r > 0)
            .map(|(p, _)| p.as_str())
    }

    fn add(&mut self, pid: &str, relevance: u32) {
        match self.passages.iter_mut().find(|(p, _)| p == pid) {
            Some((_, r)) => *r = (*r).max(relevance),
            None => self.passages.push((pid.to_string(), relevance)),
        }
    }
}

/// All judgements of a qrels file.
#[derive(Clone, Debug, Default)]
pub struct Qrels {
    /// Query ids in order of first appearance.
    pub qids: Vec<String>,
    by_qid: HashMap<String, Judgements>,
}

impl Qrels {
    /// Reads a qrels file (module doc).
    pub fn read(path: impl AsRef<Path>) -> Result<Qrels> {
        let path = path.as_ref();
        let mut qrels = Qrels::default();
        for_each_batch(path, "qrels", |lines| {
            for line in lines.iter().filter(|l| !l.is_blank()) {
                let f = columns(path, line, 2, "qid \\t pid or qid 0 pid relevance")?;
                let (qid, pid, relevance) = match f.len() {
                    2 => (f[0], f[1], 1),
                    4 => {
                        let r = f[3].parse::<u32>().map_err(|_| {
                            Error::line(
                                path,
                                line.number,
                                format!("relevance {:?} is not an integer >= 0", f[3]),
                            )
                        })?;
                        (f[0], f[2], r)
                    }
                    n => {
                        return Err(Error::line(
                            path,
                            line.number,
                            format!(
                                "expected 2 fields (qid pid) or 4 (qid 0 pid relevance), found {n}"
                            ),
                        ))
                    }
                };
                crate::ids::check_id(path, line.number, qid)?;
                crate::ids::check_id(path, line.number, pid)?;
                qrels.add(qid, pid, relevance);
            }
            Ok(())
        })?;
        Ok(qrels)
    }

    /// Adds one judgement (a repeated pair keeps its highest relevance).
    pub fn add(&mut self, qid: &str, pid: &str, relevance: u32) {
        if !self.by_qid.contains_key(qid) {
            self.qids.push(qid.to_string());
        }
        self.by_qid
            .entry(qid.to_string())
            .or_default()
            .add(pid, relevance);
    }

    /// The judgements of `qid`, if it has any.
    pub fn get(&self, qid: &str) -> Option<&Judgements> {
        self.by_qid.get(qid)
    }

    /// Query ids with at least one relevant passage, in order of first appearance: the queries
    /// the metrics average over.
    pub fn judged_queries(&self) -> impl Iterator<Item = &str> {
        self.qids
            .iter()
            .filter(|q| self.by_qid[q.as_str()].relevant().next().is_some())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_and_four_columns_and_errors() {
        let dir = std::env::temp_dir().join(format!("retrieval-qrels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qrels.tsv");
        std::fs::write(
            &path,
            "q1\tp1\n\nq2 0 p2 1\nq2\t0\tp3\t0\nq1 0 p9 2\nq1\tp1\nq3 0 p4 0\n",
        )
        .unwrap();
        let q = Qrels::read(&path).unwrap();
        assert_eq!(q.qids, vec!["q1", "q2", "q3"]);
        let q1 = q.get("q1").unwrap();
        assert_eq!(q1.relevant().collect::<Vec<_>>(), vec!["p1", "p9"]);
        assert_eq!(
            (q1.relevance("p9"), q1.relevance("p1"), q1.relevance("x")),
            (2, 1, 0)
        );
        assert_eq!(
            q.get("q2").unwrap().relevant().collect::<Vec<_>>(),
            vec!["p2"]
        );
        assert_eq!(q.judged_queries().collect::<Vec<_>>(), vec!["q1", "q2"]);

        std::fs::write(&path, "q1 p1\nq1 0 p2\n").unwrap();
        let e = Qrels::read(&path).unwrap_err().to_string();
        assert!(e.contains("qrels.tsv:2:") && e.contains("found 3"), "{e}");
        std::fs::write(&path, "q1 0 p2 x\n").unwrap();
        let e = Qrels::read(&path).unwrap_err().to_string();
        assert!(e.contains("qrels.tsv:1:") && e.contains("\"x\""), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
