//! The JSON-lines files the retrieval stages exchange (Tevatron's formats, REFERENCE §5):
//! - [`EncodeItem`] `{"text_id": "...", "text": [ids]}`: a tokenized passage or query, no special
//!   tokens (written by `tokenize-corpus` / `tokenize-queries`, read by `encode`);
//! - [`TrainExample`] `{"query": [ids], "positives": [[ids], ...], "negatives": [[ids], ...]}`
//!   (written by `build-train` / `build-train-hn`, read by `train-retriever`).
//!
//! [`read_jsonl`] parses a whole file, naming the line of the first malformed record;
//! [`JsonlWriter`] writes one record a line to a temporary file renamed into place by
//! [`JsonlWriter::finish`] ([`AtomicFile`]), so a crash never leaves a half-written file under
//! the final name.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic::AtomicFile;
use crate::{Error, Result};

/// A tokenized text with its id (ids without [CLS]/[SEP]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeItem {
    pub text_id: String,
    pub text: Vec<u32>,
}

/// One training query with its positive and negative passages (token ids, no special tokens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainExample {
    pub query: Vec<u32>,
    pub positives: Vec<Vec<u32>>,
    pub negatives: Vec<Vec<u32>>,
}

/// What a record must satisfy besides its schema (checked by [`read_jsonl`] on every line).
pub trait Record {
    /// Why the record cannot be used, or None.
    fn problem(&self) -> Option<String> {
        None
    }
}

impl Record for EncodeItem {
    /// The `text_id` follows the id rule ([`crate::ids`]).
    fn problem(&self) -> Option<String> {
        crate::ids::id_problem(&self.text_id).map(|m| format!("text_id: {m}"))
    }
}

impl Record for TrainExample {}

/// Read back by tests and tools; the trainer wrote it.
impl Record for crate::train::LogEntry {}

/// Every record of a JSON-lines file; blank lines are skipped. The first malformed line (bad
/// JSON, wrong schema, or a [`Record::problem`]) is an error naming the file and the line number.
pub fn read_jsonl<T: DeserializeOwned + Record>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line.map_err(|e| Error::line(path, i + 1, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: T = serde_json::from_str(&line)
            .map_err(|e| Error::line(path, i + 1, format!("invalid record: {e}")))?;
        if let Some(msg) = record.problem() {
            return Err(Error::line(path, i + 1, msg));
        }
        out.push(record);
    }
    Ok(out)
}

/// Writes records one JSON object a line, atomically (module doc).
pub struct JsonlWriter {
    file: AtomicFile,
    count: usize,
}

impl JsonlWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<JsonlWriter> {
        Ok(JsonlWriter {
            file: AtomicFile::create(path)?,
            count: 0,
        })
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let r = serde_json::to_writer(self.file.writer(), record);
        r.map_err(|e| self.file.io_error(e.into()))?;
        self.file.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Writes a record already serialised as one JSON object (no line break), e.g. by
    /// `serde_json::to_string` on a worker thread.
    pub fn write_serialized(&mut self, json: &str) -> Result<()> {
        self.file.write_all(json.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Flushes, syncs and renames the file into place; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        self.file.finish()
    }
}

/// The JSON-lines files a path names: the path itself when it is a file, else the directory's
/// `*.json` and `*.jsonl` files in name order (Tevatron's `--train_dir` / encode inputs). A
/// directory without any is an error.
pub fn jsonl_inputs(path: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        let ext = p.extension().and_then(|e| e.to_str());
        if p.is_file() && matches!(ext, Some("json" | "jsonl")) {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(Error::format(
            path,
            "no *.json or *.jsonl files in the directory",
        ));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("retrieval-formats-{}", std::process::id()));
        let path = dir.join("train.jsonl");
        let examples = vec![
            TrainExample {
                query: vec![1, 2],
                positives: vec![vec![3]],
                negatives: vec![vec![4, 5], vec![]],
            },
            TrainExample {
                query: vec![],
                positives: vec![],
                negatives: vec![],
            },
        ];
        let mut w = JsonlWriter::create(&path).unwrap();
        for e in &examples {
            w.write(e).unwrap();
        }
        assert_eq!(w.count(), 2);
        w.finish().unwrap();
        assert_eq!(read_jsonl::<TrainExample>(&path).unwrap(), examples);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"query":[1,2],"positives":[[3]],"negatives":[[4,5],[]]}"#));

        std::fs::write(
            &path,
            "{\"text_id\": \"7\", \"text\": [1]}\n\n{\"text_id\": 7}\n",
        )
        .unwrap();
        let err = read_jsonl::<EncodeItem>(&path).unwrap_err().to_string();
        assert!(err.contains("train.jsonl:3:"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
