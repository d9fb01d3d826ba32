//! The training documents behind `--train_path`: the memory-mapped token store that `prepare`
//! writes, or the documents of a `data.jsonl` file read into memory. Both present the same
//! documents to the collator (a [`SpanSource`]), so they give the same batches.
//!
//! `train_path` may be a `prepare` output directory (its `tokens.bin`, else its `data.jsonl`), a
//! token store file (recognised by its magic bytes) or a JSON-lines file with one document a
//! line, `{"spans": [{"anchor": [ids], "random_sampled": [ids], "nearby": [ids], "overlap":
//! [ids]}, ...]}`. Blank lines are skipped; a line that does not parse, or a document without
//! spans, is an error naming the file and line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::collator::SpanSource;
use crate::prepare::DATA_FILE;
use crate::spans::{SpanKind, SpanSet};
use crate::token_store::{TokenStore, FILE_NAME as STORE_FILE};
use crate::{Error, Result};

/// The training documents.
pub enum TrainData {
    /// A memory-mapped token store (`tokens.bin`).
    Store(TokenStore),
    /// Documents read from a JSON-lines file.
    Docs {
        path: PathBuf,
        docs: Vec<Vec<SpanSet>>,
    },
}

#[derive(Deserialize)]
struct Line {
    spans: Vec<SpanSet>,
}

/// True when `path` starts with the token store's magic bytes.
fn is_token_store(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 8];
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"CMAETOK\0"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads a JSON-lines document file (module doc).
fn read_jsonl(path: &Path) -> Result<Vec<Vec<SpanSet>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut docs = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            Error::format(
                path,
                format!("line {}: not a {{\"spans\": [...]}} document: {e}", i + 1),
            )
        })?;
        if parsed.spans.is_empty() {
            return Err(Error::format(
                path,
                format!("line {}: the document has no spans", i + 1),
            ));
        }
        docs.push(parsed.spans);
    }
    Ok(docs)
}

impl TrainData {
    /// Opens `train_path` (module doc); an empty corpus is an error.
    pub fn open(path: impl AsRef<Path>) -> Result<TrainData> {
        let path = path.as_ref();
        let data = if path.is_dir() {
            if path.join(STORE_FILE).is_file() {
                TrainData::Store(TokenStore::open(path)?)
            } else if path.join(DATA_FILE).is_file() {
                let file = path.join(DATA_FILE);
                let docs = read_jsonl(&file)?;
                TrainData::Docs { path: file, docs }
            } else {
                return Err(Error::format(
                    path,
                    format!("neither {STORE_FILE} nor {DATA_FILE} in this directory (the output of `cotmae prepare`)"),
                ));
            }
        } else if is_token_store(path)? {
            TrainData::Store(TokenStore::open(path)?)
        } else {
            TrainData::Docs {
                path: path.to_path_buf(),
                docs: read_jsonl(path)?,
            }
        };
        if data.num_docs() == 0 {
            return Err(Error::format(data.path(), "no documents to train on"));
        }
        let has_tokens = |s: &SpanSet| {
            !(s.anchor.is_empty()
                && s.random_sampled.is_empty()
                && s.nearby.is_empty()
                && s.overlap.is_empty())
        };
        let any_token = match &data {
            TrainData::Store(s) => s.num_tokens() > 0,
            TrainData::Docs { docs, .. } => docs.iter().flatten().any(has_tokens),
        };
        if !any_token {
            return Err(Error::format(
                data.path(),
                format!(
                    "every span of the {} document(s) is empty: there is nothing to mask or \
                     predict (the loss would be 0); was the text tokenized with another vocabulary?",
                    data.num_docs()
                ),
            ));
        }
        Ok(data)
    }

    /// The file the documents come from.
    pub fn path(&self) -> &Path {
        match self {
            TrainData::Store(s) => s.path(),
            TrainData::Docs { path, .. } => path,
        }
    }

    /// A one-line description for the start-of-training banner.
    pub fn describe(&self) -> String {
        let kind = match self {
            TrainData::Store(_) => "token store",
            TrainData::Docs { .. } => "JSON lines",
        };
        let spans: usize = (0..self.num_docs()).map(|d| self.num_spans(d)).sum();
        format!(
            "{} documents, {spans} spans ({kind} {})",
            self.num_docs(),
            self.path().display()
        )
    }
}

impl SpanSource for TrainData {
    fn num_docs(&self) -> usize {
        match self {
            TrainData::Store(s) => SpanSource::num_docs(s),
            TrainData::Docs { docs, .. } => docs.as_slice().num_docs(),
        }
    }

    fn num_spans(&self, doc: usize) -> usize {
        match self {
            TrainData::Store(s) => SpanSource::num_spans(s, doc),
            TrainData::Docs { docs, .. } => docs.as_slice().num_spans(doc),
        }
    }

    fn span_ids(&self, doc: usize, i: usize, kind: SpanKind, out: &mut Vec<u32>) {
        match self {
            TrainData::Store(s) => s.span_ids(doc, i, kind, out),
            TrainData::Docs { docs, .. } => docs.as_slice().span_ids(doc, i, kind, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_store::TokenStoreWriter;

    fn temp_dir(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cotmae-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn set(base: u32) -> SpanSet {
        SpanSet {
            anchor: vec![base, base + 1],
            random_sampled: vec![base + 2],
            nearby: vec![base + 3, base + 4, base + 5],
            overlap: vec![base + 6],
        }
    }

    #[test]
    fn store_and_jsonl_present_the_same_documents() {
        let dir = temp_dir("same");
        let docs = vec![vec![set(100), set(200)], vec![set(300)]];
        let mut w = TokenStoreWriter::create(&dir).unwrap();
        for d in &docs {
            w.add_span_sets(d).unwrap();
        }
        w.finish().unwrap();
        let lines: Vec<String> = docs
            .iter()
            .map(|d| serde_json::json!({ "spans": d }).to_string())
            .collect();
        std::fs::write(dir.join(DATA_FILE), lines.join("\n\n") + "\n").unwrap();

        let store = TrainData::open(&dir).unwrap();
        assert!(matches!(store, TrainData::Store(_)));
        let by_file = TrainData::open(dir.join(STORE_FILE)).unwrap();
        let jsonl = TrainData::open(dir.join(DATA_FILE)).unwrap();
        assert!(matches!(jsonl, TrainData::Docs { .. }));
        for data in [&store, &by_file, &jsonl] {
            assert_eq!(data.num_docs(), 2);
            assert_eq!((data.num_spans(0), data.num_spans(1)), (2, 1));
            for kind in SpanKind::ALL {
                let mut out = Vec::new();
                data.span_ids(0, 1, kind, &mut out);
                assert_eq!(out, set(200).get(kind));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let dir = temp_dir("errors");
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"spans\": [{\"anchor\": [1], \"random_sampled\": [1], \"nearby\": [1], \"overlap\": [1]}]}\n{\"spans\": 3}\n").unwrap();
        let err = TrainData::open(&bad).err().unwrap().to_string();
        assert!(err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
        std::fs::write(&bad, "\n{\"spans\": []}\n").unwrap();
        let err = TrainData::open(&bad).err().unwrap().to_string();
        assert!(err.contains("line 2") && err.contains("no spans"), "{err}");
        std::fs::write(&bad, "\n").unwrap();
        let err = TrainData::open(&bad).err().unwrap().to_string();
        assert!(err.contains("no documents"), "{err}");
        let err = TrainData::open(&dir).err().unwrap().to_string();
        assert!(err.contains("tokens.bin"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
