//! `prepare`: turns a corpus file into CoT-MAE pretraining data (REFERENCE §1).
//!
//! Input, one document a line (the format is an option; `Auto` looks at the first non-empty line
//! that is valid UTF-8: three or more tabs mean MS MARCO TSV, otherwise plain text):
//! - MS MARCO documents TSV `docid \t url \t title \t body`: the text is every field from the
//!   third on, joined by single spaces (as the original); a line with fewer than 4 fields is
//!   malformed;
//! - plain text: the whole line is the text.
//!
//! A trailing `\r` is removed. A line that is not valid UTF-8 or is malformed is reported (line
//! number, 1-based, and reason; the first [`MAX_REPORTED`] kept in the report and warned about on
//! stderr) and skipped; one bad line never aborts the run. A blank line is an empty document
//! (dropped, like every document with fewer than two spans), not an error.
//!
//! Each document: [`split_sentences`], each sentence
//! tokenized without special tokens, then [`document_spans`].
//!
//! Output in `save_to/`:
//! - `data.jsonl`: one line per kept document, `{"spans": [{"anchor": [ids], "random_sampled":
//!   [ids], "nearby": [ids], "overlap": [ids]}, ...]}`, in input order;
//! - `tokens.bin`: the same documents in the memory-mapped token store (`token_store`).
//!
//! Both are written to temporary names and renamed into place at the end. A corpus that yields
//! no document (empty, or every line dropped or skipped) is an error, and nothing is renamed.
//!
//! Streaming and determinism: the file is read in batches of lines (never whole); a batch is
//! processed in parallel with rayon (the current pool: `ThreadPool::install` chooses it) and
//! written in input order. Document randomness comes only from the generator of its line number
//! (`draw::item_rng(seed, line)`), so the output is identical for any thread count or batch size.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use bert::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::sentences::split_sentences;
use crate::spans::{document_spans, DocumentSpans};
use crate::token_store::TokenStoreWriter;
use crate::{draw, Error, Result};

/// File name of the JSON-lines output inside `save_to`.
pub const DATA_FILE: &str = "data.jsonl";
/// Skipped lines kept in the report (all are counted).
pub const MAX_REPORTED: usize = 1000;
/// Skipped lines warned about on stderr.
const MAX_WARNED: usize = 20;
/// Upper bound on the bytes of one batch of lines.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// How to read the input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum InputFormat {
    /// Detect from the first non-empty valid line (3+ tabs: TSV).
    #[default]
    Auto,
    /// `docid \t url \t title \t body`.
    MsMarcoTsv,
    /// One document a line.
    PlainText,
}

/// Options of [`prepare`]; the defaults are the paper's (`maxlen` 128 as in REFERENCE §1).
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Span target length in tokens (>= 2).
    pub maxlen: usize,
    /// `random_sampled` window, in spans on each side.
    pub window_size: usize,
    /// Probability that a span target is drawn uniformly in `[2, maxlen]`.
    pub short_sentence_prob: f64,
    pub seed: u64,
    pub format: InputFormat,
    /// Lines per parallel batch (memory vs. parallelism; does not change the output).
    pub batch_lines: usize,
    /// Show a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            maxlen: 128,
            window_size: 100,
            short_sentence_prob: 0.15,
            seed: 42,
            format: InputFormat::Auto,
            batch_lines: 4096,
            progress: true,
        }
    }
}

/// A line that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// What [`prepare`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrepareReport {
    /// The format used (resolved when `Auto`; `Auto` if no usable line was found).
    pub format: InputFormat,
    /// Lines read.
    pub lines: usize,
    /// Documents written.
    pub documents: usize,
    /// Documents with fewer than two spans (blank lines included), not written.
    pub dropped: usize,
    /// Lines skipped as invalid UTF-8 or malformed.
    pub skipped: usize,
    /// The first [`MAX_REPORTED`] skipped lines.
    pub skipped_lines: Vec<SkippedLine>,
    /// Spans written (all documents).
    pub spans: usize,
    /// Tokens in the token store.
    pub tokens: usize,
    pub data_path: PathBuf,
    pub store_path: PathBuf,
}

enum LineOutcome {
    Document { spans: DocumentSpans, json: String },
    Dropped,
    Skipped(String),
}

/// The format of a line for `Auto`, or `None` when the line does not tell (empty or not UTF-8).
fn detect(line: &[u8]) -> Option<InputFormat> {
    let text = std::str::from_utf8(line).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    Some(if text.matches('\t').count() >= 3 {
        InputFormat::MsMarcoTsv
    } else {
        InputFormat::PlainText
    })
}

fn strip_eol(mut line: &[u8]) -> &[u8] {
    if let Some(l) = line.strip_suffix(b"\n") {
        line = l;
    }
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The document text of one line.
fn line_text(line: &[u8], format: InputFormat) -> std::result::Result<String, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    match format {
        InputFormat::MsMarcoTsv => {
            let fields: Vec<&str> = text.split('\t').collect();
            if text.trim().is_empty() {
                Ok(String::new())
            } else if fields.len() < 4 {
                Err(format!(
                    "expected 4 tab-separated fields (docid, url, title, body), found {}",
                    fields.len()
                ))
            } else {
                Ok(fields[2..].join(" "))
            }
        }
        InputFormat::PlainText | InputFormat::Auto => Ok(text.to_string()),
    }
}

fn process_line(
    line: &[u8],
    line_no: usize,
    format: InputFormat,
    tokenizer: &Tokenizer,
    opts: &PrepareOptions,
) -> LineOutcome {
    let text = match line_text(line, format) {
        Ok(t) => t,
        Err(reason) => return LineOutcome::Skipped(reason),
    };
    let sentences = split_sentences(&text)
        .into_iter()
        .map(|s| tokenizer.encode(s, false, None));
    let mut rng = draw::item_rng(opts.seed, line_no as u64);
    match document_spans(
        sentences,
        opts.maxlen,
        opts.window_size,
        opts.short_sentence_prob,
        &mut rng,
    ) {
        Some(spans) => {
            #[derive(Serialize)]
            struct Line {
                spans: Vec<crate::spans::SpanSet>,
            }
            let json = serde_json::to_string(&Line {
                spans: spans.span_sets(),
            })
            .expect("span sets serialise");
            LineOutcome::Document { spans, json }
        }
        None => LineOutcome::Dropped,
    }
}

fn validate(opts: &PrepareOptions, tokenizer: &Tokenizer) -> Result<()> {
    if opts.maxlen < 2 {
        return Err(Error::Config(format!(
            "prepare: maxlen must be >= 2, got {}",
            opts.maxlen
        )));
    }
    if !(0.0..=1.0).contains(&opts.short_sentence_prob) {
        return Err(Error::Config(format!(
            "prepare: short_sentence_prob must be in [0, 1], got {}",
            opts.short_sentence_prob
        )));
    }
    if opts.batch_lines == 0 {
        return Err(Error::Config("prepare: batch_lines must be > 0".into()));
    }
    if tokenizer.vocab_size() > 1 << 16 {
        return Err(Error::Config(format!(
            "prepare: the token store keeps u16 ids; a vocabulary of {} does not fit",
            tokenizer.vocab_size()
        )));
    }
    Ok(())
}

fn progress_bar(file: &Path, len: u64, show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("prepare {}", file.display()));
    bar
}

/// Reads up to `max_lines` lines into `batch` (reusing its buffers); returns the bytes read.
fn read_batch(
    reader: &mut impl BufRead,
    batch: &mut Vec<Vec<u8>>,
    max_lines: usize,
    path: &Path,
) -> Result<u64> {
    batch.clear();
    let (mut bytes, mut total) = (0usize, 0u64);
    while batch.len() < max_lines && bytes < MAX_BATCH_BYTES {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n;
        total += n as u64;
        batch.push(line);
    }
    Ok(total)
}

/// Prepares `file` into `save_to` (module doc); returns what was done.
pub fn prepare(
    file: impl AsRef<Path>,
    save_to: impl AsRef<Path>,
    tokenizer: &Tokenizer,
    opts: PrepareOptions,
) -> Result<PrepareReport> {
    let (file, save_to) = (file.as_ref(), save_to.as_ref());
    validate(&opts, tokenizer)?;
    let input = File::open(file).map_err(|e| Error::io(file, e))?;
    let len = input.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::with_capacity(1 << 20, input);
    std::fs::create_dir_all(save_to).map_err(|e| Error::io(save_to, e))?;

    let data_path = save_to.join(DATA_FILE);
    tensor::fs::check_replaceable(&data_path).map_err(|e| Error::io(&data_path, e))?;
    let data_tmp = save_to.join(format!("{DATA_FILE}.tmp"));
    let mut data = BufWriter::new(File::create(&data_tmp).map_err(|e| Error::io(&data_tmp, e))?);
    let mut store = TokenStoreWriter::create(save_to)?;
    let bar = progress_bar(file, len, opts.progress);

    let mut report = PrepareReport {
        format: opts.format,
        data_path: data_path.clone(),
        ..Default::default()
    };
    let mut batch = Vec::new();
    let result = (|| -> Result<()> {
        loop {
            let read = read_batch(&mut reader, &mut batch, opts.batch_lines, file)?;
            if batch.is_empty() {
                break;
            }
            let first_line = report.lines + 1;
            report.lines += batch.len();
            if report.format == InputFormat::Auto {
                if let Some(f) = batch.iter().find_map(|l| detect(strip_eol(l))) {
                    report.format = f;
                }
            }
            let format = report.format;
            let outcomes: Vec<LineOutcome> = batch
                .par_iter()
                .enumerate()
                .map(|(i, line)| {
                    process_line(strip_eol(line), first_line + i, format, tokenizer, &opts)
                })
                .collect();
            for (i, outcome) in outcomes.into_iter().enumerate() {
                match outcome {
                    LineOutcome::Document { spans, json } => {
                        data.write_all(json.as_bytes())
                            .and_then(|_| data.write_all(b"\n"))
                            .map_err(|e| Error::io(&data_tmp, e))?;
                        store.add_document(&spans)?;
                        report.documents += 1;
                        report.spans += spans.num_spans();
                        report.tokens += spans.tokens.len();
                    }
                    LineOutcome::Dropped => report.dropped += 1,
                    LineOutcome::Skipped(reason) => {
                        let line = first_line + i;
                        if report.skipped < MAX_WARNED {
                            bar.suspend(|| {
                                eprintln!(
                                    "warning: {}:{line}: {reason}; line skipped",
                                    file.display()
                                )
                            });
                        }
                        report.skipped += 1;
                        if report.skipped_lines.len() < MAX_REPORTED {
                            report.skipped_lines.push(SkippedLine { line, reason });
                        }
                    }
                }
            }
            bar.inc(read);
        }
        if report.documents == 0 {
            // Nothing to pretrain on: an error, and the previous outputs (if any) stay.
            return Err(Error::format(
                file,
                format!(
                    "no document to write: {} lines read, {} dropped (fewer than 2 spans), {} \
                     skipped as malformed",
                    report.lines, report.dropped, report.skipped
                ),
            ));
        }
        Ok(())
    })();
    bar.finish_and_clear();
    if let Err(e) = result {
        drop(data);
        let _ = std::fs::remove_file(&data_tmp);
        return Err(e);
    }
    let data_file = data
        .into_inner()
        .map_err(|e| Error::io(&data_tmp, e.into_error()))?;
    data_file.sync_all().map_err(|e| Error::io(&data_tmp, e))?;
    drop(data_file);
    report.store_path = store.finish()?;
    std::fs::rename(&data_tmp, &data_path).map_err(|e| Error::io(&data_path, e))?;
    if report.skipped > MAX_WARNED {
        eprintln!(
            "warning: {}: {} lines skipped in all (the first {} are in the report)",
            file.display(),
            report.skipped,
            report.skipped_lines.len()
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_and_line_text() {
        assert_eq!(detect(b"a\tb\tc\td"), Some(InputFormat::MsMarcoTsv));
        assert_eq!(detect(b"a\tb\tc"), Some(InputFormat::PlainText));
        assert_eq!(detect(b"  "), None);
        assert_eq!(detect(b"\xff\tb\tc\td"), None);
        assert_eq!(strip_eol(b"abc\r\n"), b"abc");
        assert_eq!(strip_eol(b"abc"), b"abc");
        let tsv = InputFormat::MsMarcoTsv;
        assert_eq!(
            line_text(b"D1\turl\tTitle\tBody text", tsv).unwrap(),
            "Title Body text"
        );
        assert_eq!(
            line_text(b"D1\turl\tT\tB\textra", tsv).unwrap(),
            "T B extra"
        );
        assert_eq!(line_text(b"", tsv).unwrap(), "");
        let err = line_text(b"D1\turl\ttitle", tsv).unwrap_err();
        assert!(err.contains("found 3"), "{err}");
        let err = line_text(b"ab\xffcd", InputFormat::PlainText).unwrap_err();
        assert!(err.contains("UTF-8 at byte 2"), "{err}");
        assert_eq!(line_text(b"a\tb", InputFormat::PlainText).unwrap(), "a\tb");
    }
}
