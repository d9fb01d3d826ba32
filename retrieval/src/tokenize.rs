//! `tokenize-corpus` / `tokenize-queries`: a TSV of texts -> Tevatron encode files, one
//! [`EncodeItem`] `{"text_id": "...", "text": [ids]}` a line (REFERENCE §5).
//!
//! Input lines are `id \t field [\t field ...]`; the text is every field after the id joined with
//! `[SEP]` ([`record_text`]), so `pid \t title \t text` gives `title[SEP]text` (an empty title:
//! `[SEP]text`, as Tevatron's `title + sep_token + text`) and `id \t text` gives the text. The
//! tokenizer keeps `[SEP]` whole as the special token. Ids are WordPiece ids without special
//! tokens, truncated to the first `truncate` (128 for passages, 32 for queries). A line without a
//! tab, with an id that breaks [`crate::ids`]'s rule or was listed before, or not valid UTF-8 is
//! an error naming `file:line` (a first pass checks the ids before anything is written); blank
//! lines are skipped.
//!
//! Corpus output: `save_to/split00.json .. split{n-1}.json` (Tevatron's names), contiguous runs of
//! `ceil(records / n_splits)` records in input order (a first pass counts the records). Query
//! output: one file. Batches of lines are tokenized and serialised in parallel (rayon) and written
//! in input order, each file atomically ([`JsonlWriter`]).

use std::path::{Path, PathBuf};

use bert::Tokenizer;
use rayon::prelude::*;

use crate::formats::{EncodeItem, JsonlWriter};
use crate::ids::UniqueIds;
use crate::lines::{for_each_batch, id_and_fields, Line};
use crate::Result;

/// The separator between the fields of a record.
pub const FIELD_SEPARATOR: &str = "[SEP]";

/// What the input lines must look like, for error messages.
const EXPECTED: &str = "id \\t text (or id \\t title \\t text)";

/// The text of a record: its fields after the id joined with `[SEP]`.
pub fn record_text(fields: &[&str]) -> String {
    fields.join(FIELD_SEPARATOR)
}

/// One line parsed: `(id, text)`, `None` for a blank line.
pub fn parse_record<'a>(path: &Path, line: &Line<'a>) -> Result<Option<(&'a str, String)>> {
    if line.is_blank() {
        return Ok(None);
    }
    let (id, fields) = id_and_fields(path, line, EXPECTED)?;
    Ok(Some((id, record_text(&fields))))
}

/// What a tokenize run wrote.
#[derive(Clone, Debug, Default)]
pub struct TokenizeReport {
    /// Records written (blank lines not counted).
    pub records: usize,
    /// Output files, in order.
    pub files: Vec<PathBuf>,
}

/// Calls `f` with the encoded records of each batch of `file`, in input order.
fn encode_file(
    file: &Path,
    tokenizer: &Tokenizer,
    truncate: usize,
    what: &str,
    mut f: impl FnMut(Vec<String>) -> Result<()>,
) -> Result<()> {
    for_each_batch(file, what, |lines| {
        let encoded: Vec<Option<String>> = lines
            .par_iter()
            .map(|line| {
                Ok(parse_record(file, line)?.map(|(id, text)| {
                    let item = EncodeItem {
                        text_id: id.to_string(),
                        text: tokenizer.encode(&text, false, Some(truncate)),
                    };
                    serde_json::to_string(&item).expect("an EncodeItem serialises")
                }))
            })
            .collect::<Result<_>>()?;
        f(encoded.into_iter().flatten().collect())
    })
}

/// Counts the records of `file`, checking every id first ([`crate::ids`]): an id listed twice is
/// an error naming both lines, and a file without a record is an error, before anything is
/// written.
fn count_records(file: &Path) -> Result<usize> {
    let mut seen = UniqueIds::default();
    let mut total = 0usize;
    for_each_batch(file, "count", |lines| {
        for line in lines {
            if let Some((id, _)) = parse_record(file, line)? {
                seen.insert(file, line.number, id)?;
                total += 1;
            }
        }
        Ok(())
    })?;
    if total == 0 {
        return Err(crate::Error::format(
            file,
            "no record to tokenize (the file is empty or blank)",
        ));
    }
    Ok(total)
}

/// Tokenizes a query file into one encode file `save_to`.
pub fn tokenize_queries(
    file: impl AsRef<Path>,
    save_to: impl AsRef<Path>,
    tokenizer: &Tokenizer,
    truncate: usize,
) -> Result<TokenizeReport> {
    let file = file.as_ref();
    count_records(file)?;
    let mut out = JsonlWriter::create(save_to)?;
    encode_file(file, tokenizer, truncate, "tokenize", |records| {
        records.iter().try_for_each(|r| out.write_serialized(r))
    })?;
    let records = out.count();
    Ok(TokenizeReport {
        records,
        files: vec![out.finish()?],
    })
}

/// The path of corpus split `i` inside `dir`.
pub fn split_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("split{i:02}.json"))
}

/// Tokenizes a corpus into `n_splits` encode files inside the directory `save_to` (module doc).
pub fn tokenize_corpus(
    file: impl AsRef<Path>,
    save_to: impl AsRef<Path>,
    tokenizer: &Tokenizer,
    truncate: usize,
    n_splits: usize,
) -> Result<TokenizeReport> {
    let (file, save_to) = (file.as_ref(), save_to.as_ref());
    if n_splits == 0 {
        return Err(crate::Error::Config(
            "tokenize: n_splits must be at least 1".into(),
        ));
    }
    let total = count_records(file)?;
    let per_split = total.div_ceil(n_splits).max(1);
    let mut report = TokenizeReport::default();
    let mut split = JsonlWriter::create(split_path(save_to, 0))?;
    let mut index = 0;
    encode_file(file, tokenizer, truncate, "tokenize", |records| {
        for r in &records {
            if split.count() == per_split {
                index += 1;
                let next = JsonlWriter::create(split_path(save_to, index))?;
                report
                    .files
                    .push(std::mem::replace(&mut split, next).finish()?);
            }
            split.write_serialized(r)?;
            report.records += 1;
        }
        Ok(())
    })?;
    report.files.push(split.finish()?);
    // Splits past the last record (more splits than records) are written empty.
    for i in report.files.len()..n_splits {
        report
            .files
            .push(JsonlWriter::create(split_path(save_to, i))?.finish()?);
    }
    Ok(report)
}
