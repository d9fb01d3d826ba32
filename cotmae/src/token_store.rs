//! The token store: the prepared corpus in one memory-mapped file (`tokens.bin`) that training
//! reads without loading or parsing it.
//!
//! Layout (little-endian; every table starts 8-byte aligned, the map itself is page aligned):
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | magic `CMAETOK\0` |
//! | 8..12 | version (u32, 1) |
//! | 12..16 | kinds per span (u32, 4: anchor, random_sampled, nearby, overlap) |
//! | 16..24 | `num_docs` (u64) |
//! | 24..32 | `num_spans` (u64, all documents together) |
//! | 32..40 | `num_tokens` (u64) |
//! | 40..48 | byte offset of the range table (u64) |
//! | 48..56 | byte offset of the document table (u64) |
//! | 56..64 | reserved (0) |
//! | 64.. | tokens: `num_tokens` u16 ids, then zero padding to a multiple of 8 |
//! | ranges | per span (documents in order) and kind: `start, end` (u64 pair), a token range |
//! | documents | `num_docs + 1` u64: the first span of each document, then `num_spans` |
//!
//! A span's text of a kind is `tokens[start..end]`. Prepare stores each document's token stream
//! once and points all four kinds into it (see `spans::DocumentSpans`), so the store is about the
//! size of the corpus in u16 rather than four times it; [`TokenStoreWriter::add_span_sets`]
//! stores arbitrary texts (each kind's ids written out) in the same format.
//!
//! `open` validates the header, the exact file size and every table entry (ranges inside the token
//! table, document table increasing), so a truncated or corrupt file is an error naming the file,
//! and no later access can go out of bounds. Writing goes to `tokens.bin.tmp` (plus a side file
//! for the ranges) and is renamed into place by [`TokenStoreWriter::finish`].

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::spans::{DocumentSpans, SpanKind, SpanSet};
use crate::{Error, Result};

/// File name of the store inside a prepared directory.
pub const FILE_NAME: &str = "tokens.bin";
const MAGIC: [u8; 8] = *b"CMAETOK\0";
const VERSION: u32 = 1;
const KINDS: usize = 4;
const HEADER_LEN: usize = 64;
/// Bytes of one span's range entries.
const SPAN_ENTRY: usize = KINDS * 2 * 8;

/// Byte offsets of the tables for given counts; `None` on overflow.
fn layout(num_docs: u64, num_spans: u64, num_tokens: u64) -> Option<(u64, u64, u64)> {
    let tokens_end = (HEADER_LEN as u64).checked_add(num_tokens.checked_mul(2)?)?;
    let ranges = tokens_end.checked_add(7)? / 8 * 8;
    let docs = ranges.checked_add(num_spans.checked_mul(SPAN_ENTRY as u64)?)?;
    let end = docs.checked_add(num_docs.checked_add(1)?.checked_mul(8)?)?;
    Some((ranges, docs, end))
}

fn check_endian(path: &Path) -> Result<()> {
    if cfg!(target_endian = "big") {
        return Err(Error::format(
            path,
            "token stores are little-endian; this machine is not",
        ));
    }
    Ok(())
}

/// Reinterprets aligned little-endian bytes as `T` (u16 or u64); `None` when misaligned.
fn cast<T: Copy>(bytes: &[u8]) -> Option<&[T]> {
    // SAFETY: T is u16 or u64 (every bit pattern valid); `align_to` only yields aligned elements.
    let (head, body, tail) = unsafe { bytes.align_to::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(body)
}

/// A read-only, memory-mapped token store.
pub struct TokenStore {
    path: PathBuf,
    map: Mmap,
    num_docs: usize,
    num_spans: usize,
    num_tokens: usize,
    ranges_at: usize,
    docs_at: usize,
}

impl TokenStore {
    /// Opens `dir/tokens.bin` (or `dir` itself when it is a file) and validates it.
    pub fn open(dir: impl AsRef<Path>) -> Result<TokenStore> {
        let dir = dir.as_ref();
        let path = if dir.is_dir() {
            dir.join(FILE_NAME)
        } else {
            dir.to_path_buf()
        };
        check_endian(&path)?;
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < HEADER_LEN as u64 {
            return Err(Error::format(
                &path,
                format!("truncated token store: {len} bytes, the header alone needs {HEADER_LEN}"),
            ));
        }
        // SAFETY: the file is opened read-only; the store is written once by a writer that
        // renames it into place, and is not expected to change while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let h = &map[..HEADER_LEN];
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        if h[..8] != MAGIC {
            return Err(Error::format(
                &path,
                "not a CoT-MAE token store (bad magic)",
            ));
        }
        if u32_at(8) != VERSION {
            return Err(Error::format(
                &path,
                format!(
                    "token store version {} is not supported (expected {VERSION})",
                    u32_at(8)
                ),
            ));
        }
        if u32_at(12) as usize != KINDS {
            return Err(Error::format(
                &path,
                format!("{} kinds per span, expected {KINDS}", u32_at(12)),
            ));
        }
        let (num_docs, num_spans, num_tokens) = (u64_at(16), u64_at(24), u64_at(32));
        let bad_counts = || {
            Error::format(
                &path,
                format!(
                    "corrupt header: {num_docs} documents, {num_spans} spans, {num_tokens} tokens"
                ),
            )
        };
        let (ranges_at, docs_at, end) =
            layout(num_docs, num_spans, num_tokens).ok_or_else(bad_counts)?;
        if (u64_at(40), u64_at(48)) != (ranges_at, docs_at) {
            return Err(bad_counts());
        }
        if len != end {
            return Err(Error::format(
                &path,
                format!(
                    "truncated or corrupt token store: {len} bytes, the header describes {end} \
                     ({num_docs} documents, {num_spans} spans, {num_tokens} tokens)"
                ),
            ));
        }
        let store = TokenStore {
            path,
            map,
            num_docs: num_docs as usize,
            num_spans: num_spans as usize,
            num_tokens: num_tokens as usize,
            ranges_at: ranges_at as usize,
            docs_at: docs_at as usize,
        };
        store.validate_tables()?;
        Ok(store)
    }

    fn validate_tables(&self) -> Result<()> {
        let docs = self.docs_table();
        if docs[0] != 0 || docs[self.num_docs] != self.num_spans as u64 {
            return Err(Error::format(
                &self.path,
                "corrupt document table (bad ends)",
            ));
        }
        if let Some(d) = docs.windows(2).position(|w| w[0] > w[1]) {
            return Err(Error::format(
                &self.path,
                format!("corrupt document table: document {d} ends before it starts"),
            ));
        }
        let n = self.num_tokens as u64;
        if let Some(r) = self
            .ranges_table()
            .chunks_exact(2)
            .position(|r| r[0] > r[1] || r[1] > n)
        {
            return Err(Error::format(
                &self.path,
                format!(
                    "corrupt range table: span {} kind {} is outside the {n} tokens",
                    r / KINDS,
                    SpanKind::ALL[r % KINDS].name()
                ),
            ));
        }
        Ok(())
    }

    fn tokens(&self) -> &[u16] {
        cast(&self.map[HEADER_LEN..HEADER_LEN + 2 * self.num_tokens]).expect("aligned")
    }

    fn ranges_table(&self) -> &[u64] {
        cast(&self.map[self.ranges_at..self.docs_at]).expect("aligned")
    }

    fn docs_table(&self) -> &[u64] {
        cast(&self.map[self.docs_at..]).expect("aligned")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn num_docs(&self) -> usize {
        self.num_docs
    }

    /// Spans of all documents together.
    pub fn total_spans(&self) -> usize {
        self.num_spans
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Number of spans of document `doc` (0 when `doc` is out of range).
    pub fn num_spans(&self, doc: usize) -> usize {
        if doc >= self.num_docs {
            return 0;
        }
        let d = self.docs_table();
        (d[doc + 1] - d[doc]) as usize
    }

    /// The ids of span `i` of document `doc` for `kind`; `None` when out of range.
    pub fn get(&self, doc: usize, i: usize, kind: SpanKind) -> Option<&[u16]> {
        if i >= self.num_spans(doc) {
            return None;
        }
        let span = self.docs_table()[doc] as usize + i;
        let r = &self.ranges_table()[2 * (span * KINDS + kind.index())..][..2];
        Some(&self.tokens()[r[0] as usize..r[1] as usize])
    }

    /// The ids of span `i` of document `doc` for `kind`.
    ///
    /// # Panics
    /// When `doc` or `i` is out of range (like slice indexing); see [`TokenStore::get`].
    pub fn span(&self, doc: usize, i: usize, kind: SpanKind) -> &[u16] {
        self.get(doc, i, kind).unwrap_or_else(|| {
            panic!(
                "span {i} of document {doc} out of range ({} documents, {} spans in it)",
                self.num_docs,
                self.num_spans(doc)
            )
        })
    }

    /// Span `i` of document `doc` as a `data.jsonl` item (ids widened to u32).
    pub fn span_set(&self, doc: usize, i: usize) -> Option<SpanSet> {
        let get = |k| {
            self.get(doc, i, k)
                .map(|s| s.iter().map(|&t| t as u32).collect())
        };
        Some(SpanSet {
            anchor: get(SpanKind::Anchor)?,
            random_sampled: get(SpanKind::RandomSampled)?,
            nearby: get(SpanKind::Nearby)?,
            overlap: get(SpanKind::Overlap)?,
        })
    }
}

/// Writes a token store; nothing appears under the final name until [`finish`](Self::finish).
pub struct TokenStoreWriter {
    path: PathBuf,
    tmp: PathBuf,
    ranges_tmp: PathBuf,
    tokens: Option<BufWriter<File>>,
    ranges: Option<BufWriter<File>>,
    doc_starts: Vec<u64>,
    num_tokens: u64,
    num_spans: u64,
    finished: bool,
}

impl TokenStoreWriter {
    /// Starts writing `dir/tokens.bin` (the directory is created if needed).
    pub fn create(dir: impl AsRef<Path>) -> Result<TokenStoreWriter> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        check_endian(&path)?;
        tensor::fs::check_replaceable(&path).map_err(|e| Error::io(&path, e))?;
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let ranges_tmp = dir.join(format!("{FILE_NAME}.ranges.tmp"));
        let create = |p: &Path| {
            File::create(p)
                .map(BufWriter::new)
                .map_err(|e| Error::io(p, e))
        };
        let mut tokens = create(&tmp)?;
        let ranges = create(&ranges_tmp)?;
        tokens
            .write_all(&[0u8; HEADER_LEN])
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(TokenStoreWriter {
            path,
            tmp,
            ranges_tmp,
            tokens: Some(tokens),
            ranges: Some(ranges),
            doc_starts: vec![0],
            num_tokens: 0,
            num_spans: 0,
            finished: false,
        })
    }

    fn write_tokens(&mut self, ids: &[u32]) -> Result<()> {
        let mut buf = Vec::with_capacity(2 * ids.len());
        for &id in ids {
            let id = u16::try_from(id).map_err(|_| {
                Error::Config(format!(
                    "{}: token id {id} does not fit the store's u16 ids (vocabulary > 65536)",
                    self.path.display()
                ))
            })?;
            buf.extend_from_slice(&id.to_le_bytes());
        }
        let w = self.tokens.as_mut().expect("writer is open");
        w.write_all(&buf).map_err(|e| Error::io(&self.tmp, e))?;
        self.num_tokens += ids.len() as u64;
        Ok(())
    }

    fn write_range(&mut self, start: u64, end: u64) -> Result<()> {
        let w = self.ranges.as_mut().expect("writer is open");
        w.write_all(&start.to_le_bytes())
            .and_then(|_| w.write_all(&end.to_le_bytes()))
            .map_err(|e| Error::io(&self.ranges_tmp, e))
    }

    fn end_document(&mut self, spans: usize) {
        self.num_spans += spans as u64;
        self.doc_starts.push(self.num_spans);
    }

    /// Appends a prepared document: its token stream once, and its ranges.
    pub fn add_document(&mut self, doc: &DocumentSpans) -> Result<()> {
        let base = self.num_tokens;
        for r in doc.ranges.iter().flatten() {
            if r.start > r.end || r.end > doc.tokens.len() {
                return Err(Error::Config(format!(
                    "{}: range {r:?} outside a document of {} tokens",
                    self.path.display(),
                    doc.tokens.len()
                )));
            }
        }
        self.write_tokens(&doc.tokens)?;
        for r in doc.ranges.iter().flatten() {
            self.write_range(base + r.start as u64, base + r.end as u64)?;
        }
        self.end_document(doc.ranges.len());
        Ok(())
    }

    /// Appends a document given as explicit texts (each kind's ids stored separately).
    pub fn add_span_sets(&mut self, sets: &[SpanSet]) -> Result<()> {
        for set in sets {
            for kind in SpanKind::ALL {
                let start = self.num_tokens;
                self.write_tokens(set.get(kind))?;
                self.write_range(start, self.num_tokens)?;
            }
        }
        self.end_document(sets.len());
        Ok(())
    }

    /// Documents written so far.
    pub fn num_docs(&self) -> usize {
        self.doc_starts.len() - 1
    }

    /// Completes the file and renames it into place; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let num_docs = self.num_docs() as u64;
        let (ranges_at, docs_at, _) = layout(num_docs, self.num_spans, self.num_tokens)
            .ok_or_else(|| Error::format(&self.path, "token store too large"))?;
        let tmp = self.tmp.clone();
        let io = |e| Error::io(&tmp, e);
        let ranges = self.ranges.take().expect("writer is open");
        drop(
            ranges
                .into_inner()
                .map_err(|e| Error::io(&self.ranges_tmp, e.into_error()))?,
        );
        let mut out = self.tokens.take().expect("writer is open");
        let tokens_end = HEADER_LEN as u64 + 2 * self.num_tokens;
        out.write_all(&vec![0u8; (ranges_at - tokens_end) as usize])
            .map_err(io)?;
        let copied =
            std::io::copy(&mut File::open(&self.ranges_tmp).map_err(io)?, &mut out).map_err(io)?;
        debug_assert_eq!(copied, docs_at - ranges_at);
        let docs: Vec<u8> = self
            .doc_starts
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect();
        out.write_all(&docs).map_err(io)?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(KINDS as u32).to_le_bytes());
        for v in [
            num_docs,
            self.num_spans,
            self.num_tokens,
            ranges_at,
            docs_at,
            0,
        ] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.finished = true;
        let _ = std::fs::remove_file(&self.ranges_tmp);
        Ok(self.path.clone())
    }
}

impl Drop for TokenStoreWriter {
    /// An unfinished writer removes its temporary files.
    fn drop(&mut self) {
        self.tokens = None;
        self.ranges = None;
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
        let _ = std::fs::remove_file(&self.ranges_tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tensor::testing::TempDir;

    fn temp_dir(name: &str) -> TempDir {
        TempDir::new(&format!("cotmae-store-{name}"))
    }

    fn sample_doc(seed: u64) -> DocumentSpans {
        let mut rng = tensor::Rng::new(seed);
        let sentences: Vec<Vec<u32>> = (0..40)
            .map(|i| {
                (0..1 + (i * 7 + seed as usize) % 9)
                    .map(|t| (i * 100 + t) as u32)
                    .collect()
            })
            .collect();
        crate::spans::document_spans(sentences, 16, 100, 0.15, &mut rng).unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = temp_dir("rt");
        let docs = [sample_doc(1), sample_doc(2)];
        let explicit = vec![SpanSet {
            anchor: vec![1, 2, 3],
            random_sampled: vec![65535],
            nearby: vec![],
            overlap: vec![4, 5],
        }];
        let mut w = TokenStoreWriter::create(&dir.0).unwrap();
        w.add_document(&docs[0]).unwrap();
        w.add_span_sets(&[]).unwrap(); // an empty document
        w.add_span_sets(&explicit).unwrap();
        w.add_document(&docs[1]).unwrap();
        assert!(!dir.0.join(FILE_NAME).exists(), "visible before finish");
        w.finish().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");

        let store = TokenStore::open(&dir.0).unwrap();
        assert_eq!(store.num_docs(), 4);
        assert_eq!(store.num_spans(1), 0);
        assert_eq!(store.num_spans(99), 0);
        assert_eq!(store.span_set(2, 0).unwrap(), explicit[0]);
        for (d, doc) in [(0, &docs[0]), (3, &docs[1])] {
            assert_eq!(store.num_spans(d), doc.num_spans());
            for i in 0..doc.num_spans() {
                assert_eq!(store.span_set(d, i).unwrap(), doc.span_set(i));
            }
        }
        assert_eq!(
            store.num_tokens(),
            docs[0].tokens.len() + 6 + docs[1].tokens.len()
        );
        assert!(store
            .get(0, docs[0].num_spans(), SpanKind::Anchor)
            .is_none());
        assert_eq!(store.span(2, 0, SpanKind::RandomSampled), &[65535]);
    }

    #[test]
    fn ids_beyond_u16_are_an_error() {
        let dir = temp_dir("big");
        let mut w = TokenStoreWriter::create(&dir.0).unwrap();
        let set = SpanSet {
            anchor: vec![65536],
            ..Default::default()
        };
        let err = w.add_span_sets(&[set]).unwrap_err().to_string();
        assert!(err.contains("65536") && err.contains(FILE_NAME), "{err}");
        drop(w);
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    }

    #[test]
    fn truncated_or_corrupt_files_are_errors() {
        let dir = temp_dir("bad");
        let mut w = TokenStoreWriter::create(&dir.0).unwrap();
        w.add_document(&sample_doc(3)).unwrap();
        let path = w.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad = dir.0.join("bad.bin");
        let check = |bytes: &[u8], what: &str| {
            std::fs::write(&bad, bytes).unwrap();
            let err = TokenStore::open(&bad).err().expect(what).to_string();
            assert!(err.contains("bad.bin"), "{what}: {err}");
            err
        };
        for len in [
            0,
            10,
            63,
            64,
            65,
            good.len() / 2,
            good.len() - 8,
            good.len() - 1,
        ] {
            check(&good[..len], &format!("truncated to {len}"));
        }
        let mut extra = good.clone();
        extra.extend_from_slice(&[0; 8]);
        check(&extra, "too long");
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(check(&magic, "magic").contains("magic"));
        let mut version = good.clone();
        version[8] = 2;
        assert!(check(&version, "version").contains("version"));
        // A range pointing past the tokens.
        let ranges_at = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
        let mut range = good.clone();
        range[ranges_at + 8..ranges_at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&range, "range").contains("range"));
        // Counts that overflow the layout computation.
        let mut counts = good.clone();
        counts[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        check(&counts, "counts");
        // The good file still opens.
        assert!(TokenStore::open(&path).is_ok());
    }
}
