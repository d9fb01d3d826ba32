//! The one rule for a query or passage id, checked wherever an id is read (TSV inputs, JSON
//! lines, `ids.txt`, qrels, rankings) and before one is written: ids travel between stages in
//! tab- and whitespace-separated files (`qid \t pid \t score`, `ids.txt` one a line, MS MARCO's
//! `qid 0 pid 1`), so an id must be non-empty and free of whitespace (tab, space, newline,
//! carriage return, any other Unicode space) and of control characters. An id that breaks the
//! rule is an error naming `file:line`, never a silently shifted column downstream.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// Why `id` cannot be used, or None when it can.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("empty id".into());
    }
    let bad = id.chars().find(|c| c.is_whitespace() || c.is_control())?;
    let what = match bad {
        '\t' => "a tab".to_string(),
        ' ' => "a space".to_string(),
        '\n' => "a newline".to_string(),
        '\r' => "a carriage return".to_string(),
        c if c.is_whitespace() => format!("whitespace (U+{:04X})", c as u32),
        c => format!("a control character (U+{:04X})", c as u32),
    };
    Some(format!(
        "id {id:?} contains {what}; ids must be non-empty and without whitespace"
    ))
}

/// `Ok` for a usable id; else an error naming `path:line`.
pub fn check_id(path: &Path, line: usize, id: &str) -> Result<()> {
    match id_problem(id) {
        None => Ok(()),
        Some(msg) => Err(Error::line(path, line, msg)),
    }
}

/// Ids that must be unique (passages of a corpus), with where each was first seen.
#[derive(Default)]
pub struct UniqueIds {
    first: HashMap<String, (usize, usize)>,
    files: Vec<std::path::PathBuf>,
}

impl UniqueIds {
    /// Records `id` read at `path:line`; an id seen before is an error naming both places.
    pub fn insert(&mut self, path: &Path, line: usize, id: &str) -> Result<()> {
        let file = match self.files.iter().position(|f| f == path) {
            Some(i) => i,
            None => {
                self.files.push(path.to_path_buf());
                self.files.len() - 1
            }
        };
        if let Some(&(f, l)) = self.first.get(id) {
            return Err(Error::line(
                path,
                line,
                format!(
                    "id {id:?} was already listed at {}:{l}",
                    self.files[f].display()
                ),
            ));
        }
        self.first.insert(id.to_string(), (file, line));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_whitespace_control_or_nothing_are_refused_with_file_and_line() {
        for ok in [
            "0",
            "7067032",
            "D1555982",
            "msmarco_passage_00_0",
            "q-1.5",
            "é",
        ] {
            assert_eq!(id_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("", "empty id"),
            ("a\tb", "a tab"),
            ("a b", "a space"),
            (" a", "a space"),
            ("a\n", "a newline"),
            ("a\rb", "a carriage return"),
            ("a\u{a0}b", "U+00A0"),
            ("a\u{0}b", "control character (U+0000)"),
        ] {
            let e = check_id(Path::new("q.tsv"), 3, bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("q.tsv:3: ") && e.contains(says),
                "{bad:?}: {e}"
            );
        }
        let mut u = UniqueIds::default();
        u.insert(Path::new("a/ids.txt"), 1, "7").unwrap();
        u.insert(Path::new("b/ids.txt"), 1, "8").unwrap();
        let e = u
            .insert(Path::new("b/ids.txt"), 4, "7")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "b/ids.txt:4: id \"7\" was already listed at a/ids.txt:1");
    }
}
