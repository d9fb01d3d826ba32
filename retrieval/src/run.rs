//! Ranking files ("runs"): what `search` writes and `evaluate` / `build-train-hn` read.
//!
//! Written ([`RunWriter`]): `qid \t pid \t score` lines, a query's lines together and best first
//! (Tevatron's format; the score is the shortest decimal that reads back as the same f32).
//!
//! Read: fields separated by tabs or spaces; `qid pid [score | rank ...]` (two or more fields:
//! ours and Tevatron's `qid pid score`, MS MARCO's `qid pid rank`) or TREC's
//! `qid Q0 pid rank score tag` (six fields, the second `Q0`). A passage's rank is the position of
//! its line among its query's lines, in file order: the third column is not re-sorted (our files
//! and Tevatron's are sorted by score, MS MARCO's by rank, TREC's by rank). Errors name
//! `file:line`; blank lines are skipped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::atomic::AtomicFile;
use crate::ids::check_id;
use crate::lines::{columns, for_each_batch};
use crate::{Error, Result};

/// Calls `f(line_number, qid, pid)` for every entry of a ranking file, in file order (module
/// doc).
pub fn for_each_entry(
    path: &Path,
    mut f: impl FnMut(usize, &str, &str) -> Result<()>,
) -> Result<()> {
    for_each_batch(path, "ranking", |lines| {
        for line in lines.iter().filter(|l| !l.is_blank()) {
            let fields = columns(path, line, 2, "qid \\t pid \\t score")?;
            let (qid, pid) = if fields.len() == 6 && fields[1] == "Q0" {
                (fields[0], fields[2])
            } else {
                (fields[0], fields[1])
            };
            check_id(path, line.number, qid)?;
            check_id(path, line.number, pid)?;
            f(line.number, qid, pid)?;
        }
        Ok(())
    })
}

/// A ranking in memory: per query, the pids in rank order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// `(qid, pids best first)`, queries in order of first appearance.
    pub queries: Vec<(String, Vec<String>)>,
}

impl Run {
    /// Reads a ranking file (module doc). A passage listed twice for one query is an error
    /// naming both lines, as in MS MARCO's evaluation script.
    pub fn read(path: impl AsRef<Path>) -> Result<Run> {
        let path = path.as_ref();
        let mut run = Run::default();
        let mut slot: HashMap<String, usize> = HashMap::new();
        // The line of each entry, query by query, to name a duplicate's two lines.
        let mut lines: Vec<Vec<usize>> = Vec::new();
        for_each_entry(path, |number, qid, pid| {
            let i = *slot.entry(qid.to_string()).or_insert_with(|| {
                run.queries.push((qid.to_string(), Vec::new()));
                lines.push(Vec::new());
                run.queries.len() - 1
            });
            run.queries[i].1.push(pid.to_string());
            lines[i].push(number);
            Ok(())
        })?;
        for ((qid, pids), lines) in run.queries.iter().zip(&lines) {
            let mut order: Vec<usize> = (0..pids.len()).collect();
            order.sort_by(|&a, &b| pids[a].cmp(&pids[b]).then(a.cmp(&b)));
            if let Some(w) = order.windows(2).find(|w| pids[w[0]] == pids[w[1]]) {
                return Err(Error::line(
                    path,
                    lines[w[1]],
                    format!(
                        "passage {:?} is listed twice for query {qid:?} (first on line {})",
                        pids[w[1]], lines[w[0]]
                    ),
                ));
            }
        }
        Ok(run)
    }
}

/// Writes a ranking file atomically (module doc).
pub struct RunWriter {
    file: AtomicFile,
}

impl RunWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<RunWriter> {
        Ok(RunWriter {
            file: AtomicFile::create(path)?,
        })
    }

    /// Writes one query's hits, best first.
    pub fn write_query<'a>(
        &mut self,
        qid: &str,
        hits: impl IntoIterator<Item = (&'a str, f32)>,
    ) -> Result<()> {
        for (pid, score) in hits {
            let r = writeln!(self.file.writer(), "{qid}\t{pid}\t{score}");
            r.map_err(|e| self.file.io_error(e))?;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(self) -> Result<PathBuf> {
        self.file.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back_in_file_order() {
        let dir = std::env::temp_dir().join(format!("retrieval-run-{}", std::process::id()));
        let path = dir.join("run.tsv");
        let mut w = RunWriter::create(&path).unwrap();
        w.write_query("q2", [("p1", 3.5f32), ("p0", 3.5)]).unwrap();
        w.write_query("q1", [("p7", -0.1f32)]).unwrap();
        w.finish().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "q2\tp1\t3.5\nq2\tp0\t3.5\nq1\tp7\t-0.1\n"
        );
        let run = Run::read(&path).unwrap();
        assert_eq!(
            run.queries,
            vec![
                ("q2".to_string(), vec!["p1".to_string(), "p0".to_string()]),
                ("q1".to_string(), vec!["p7".to_string()]),
            ]
        );

        // MS MARCO and TREC formats; a query's lines need not be adjacent.
        std::fs::write(&path, "1\t10\t1\n2 Q0 20 1 9.5 tag\n\n1\t11\t2\n").unwrap();
        let run = Run::read(&path).unwrap();
        assert_eq!(run.queries[0].1, vec!["10", "11"]);
        assert_eq!(run.queries[1].1, vec!["20"]);
        std::fs::write(&path, "1\t10\t1\n1\n").unwrap();
        let e = Run::read(&path).unwrap_err().to_string();
        assert!(e.contains("run.tsv:2:"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
