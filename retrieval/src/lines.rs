//! Line-oriented text inputs (corpus and query TSVs, qrels, rankings, triples): a file streamed
//! in batches of whole lines with their 1-based numbers, never read whole, with a byte progress
//! bar; helpers that turn a line into UTF-8 text and fields with errors naming `file:line`.
//!
//! A line ends at `\n`; a trailing `\r` is removed. Blank lines (only whitespace) are reported
//! as such to the callers, which skip them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::progress::bytes_bar;
use crate::{Error, Result};

/// Bytes of lines handed out per batch (a batch always holds whole lines).
pub const BATCH_BYTES: usize = 8 << 20;

/// One line of a batch: its 1-based number and bytes without the line ending.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub number: usize,
    pub bytes: &'a [u8],
}

impl<'a> Line<'a> {
    /// The line as text; invalid UTF-8 is an error naming `path:number`.
    pub fn text(&self, path: &Path) -> Result<&'a str> {
        std::str::from_utf8(self.bytes).map_err(|e| {
            Error::line(
                path,
                self.number,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })
    }

    pub fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }
}

/// Calls `f(batch)` for consecutive batches of the lines of `path`, in file order, with a
/// progress bar labelled `what` (hidden when stderr is not a terminal). Stops at the first error
/// `f` returns.
pub fn for_each_batch(
    path: &Path,
    what: &str,
    mut f: impl FnMut(&[Line]) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let bar = bytes_bar(len, format!("{what} {}", path.display()));
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + (1 << 16));
    let mut next_number = 1;
    loop {
        buf.clear();
        while buf.len() < BATCH_BYTES {
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            break;
        }
        let mut lines = Vec::new();
        for bytes in buf.split_inclusive(|&b| b == b'\n') {
            let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            lines.push(Line {
                number: next_number,
                bytes,
            });
            next_number += 1;
        }
        f(&lines)?;
        bar.inc(buf.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// `id \t field [\t field ...]`: the id and the fields after it. Fewer than two fields or an
/// empty id is an error naming the line; `expected` describes the format for the message.
pub fn id_and_fields<'a>(
    path: &Path,
    line: &Line<'a>,
    expected: &str,
) -> Result<(&'a str, Vec<&'a str>)> {
    let text = line.text(path)?;
    let mut fields = text.split('\t');
    let id = fields.next().unwrap_or_default();
    let rest: Vec<&str> = fields.collect();
    if rest.is_empty() {
        return Err(Error::line(
            path,
            line.number,
            format!("expected {expected}: no tab after the id"),
        ));
    }
    if id.trim().is_empty() {
        return Err(Error::line(
            path,
            line.number,
            format!("expected {expected}: empty id"),
        ));
    }
    crate::ids::check_id(path, line.number, id)?;
    Ok((id, rest))
}

/// The whitespace-separated fields of a line (qrels, rankings), at least `min` of them.
pub fn columns<'a>(
    path: &Path,
    line: &Line<'a>,
    min: usize,
    expected: &str,
) -> Result<Vec<&'a str>> {
    let fields: Vec<&str> = line.text(path)?.split_ascii_whitespace().collect();
    if fields.len() < min {
        return Err(Error::line(
            path,
            line.number,
            format!("expected {expected}, found {} field(s)", fields.len()),
        ));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_number_lines_and_fields_name_errors() {
        let dir = std::env::temp_dir().join(format!("retrieval-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.tsv");
        std::fs::write(&path, b"1\ta\tb\r\n\n2\tc\n3\n\xff\tx").unwrap();
        let mut seen = Vec::new();
        for_each_batch(&path, "test", |lines| {
            for l in lines {
                seen.push((l.number, l.bytes.to_vec(), l.is_blank()));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0], (1, b"1\ta\tb".to_vec(), false));
        assert!(seen[1].2);
        assert_eq!(seen[4].0, 5);

        let line = |number, bytes| Line { number, bytes };
        let (id, rest) = id_and_fields(&path, &line(1, b"7\tt\tx"), "id \\t text").unwrap();
        assert_eq!((id, rest), ("7", vec!["t", "x"]));
        let e = id_and_fields(&path, &line(4, b"3"), "id \\t text").unwrap_err();
        assert!(
            e.to_string().contains("in.tsv:4: expected id \\t text"),
            "{e}"
        );
        let e = id_and_fields(&path, &line(5, b"\xff\tx"), "x").unwrap_err();
        assert!(e.to_string().contains("in.tsv:5: invalid UTF-8"), "{e}");
        let e = id_and_fields(&path, &line(6, b" \tx"), "x").unwrap_err();
        assert!(e.to_string().contains("empty id"), "{e}");
        assert_eq!(
            columns(&path, &line(1, b"1 0\t7  1"), 4, "qid 0 pid rel").unwrap(),
            vec!["1", "0", "7", "1"]
        );
        let e = columns(&path, &line(9, b"1"), 2, "qid pid").unwrap_err();
        assert!(
            e.to_string()
                .contains("in.tsv:9: expected qid pid, found 1"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
