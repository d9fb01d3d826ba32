//! `prepare` end to end on a synthetic corpus with the committed bert-base-uncased vocabulary:
//! output schema, span invariants against an independent re-tokenization, skipped-line
//! reporting, the token store against data.jsonl, and identical output for 1 and 2 threads.

use std::io::Write;
use std::path::Path;

use bert::Tokenizer;
use cotmae::synthetic::{generate_documents, write_plain_text, SyntheticDoc};
use cotmae::{
    prepare, split_sentences, InputFormat, PrepareOptions, PrepareReport, SpanKind, SpanSet,
    TokenStore,
};

const MAXLEN: usize = 48;
const WINDOW: usize = 3;

use tensor::testing::TempDir;

fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("cotmae-prepare-{name}"))
}

fn tokenizer() -> Tokenizer {
    let vocab = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tokenizer/vocab.txt"
    );
    Tokenizer::from_vocab_file(vocab, true).unwrap()
}

fn options(batch_lines: usize) -> PrepareOptions {
    PrepareOptions {
        maxlen: MAXLEN,
        window_size: WINDOW,
        batch_lines,
        progress: false,
        ..Default::default()
    }
}

/// The TSV corpus: every document, plus a 3-field line at line 5, an invalid UTF-8 line at
/// line 9 and a blank line at line 12 (1-based).
fn write_tsv(path: &Path, docs: &[SyntheticDoc]) -> Vec<Option<String>> {
    let mut f = std::fs::File::create(path).unwrap();
    let mut texts = Vec::new(); // the document text of each line, None when not a document
    let mut docs = docs.iter();
    for line in 1.. {
        match line {
            5 => {
                f.write_all(b"Dx\thttp://example.org/x\tonly three fields\n")
                    .unwrap();
                texts.push(None);
            }
            9 => {
                f.write_all(b"Dy\thttp://example.org/y\tTitle\tBody \xff\xfe bad bytes.\r\n")
                    .unwrap();
                texts.push(None);
            }
            12 => {
                f.write_all(b"\n").unwrap();
                texts.push(Some(String::new()));
            }
            _ => {
                let Some(d) = docs.next() else { break };
                let line = format!(
                    "{}\thttp://example.org/{}\t{}\t{}\n",
                    d.docid,
                    d.docid,
                    d.title,
                    d.text()
                );
                f.write_all(line.as_bytes()).unwrap();
                texts.push(Some(format!("{} {}", d.title, d.text())));
            }
        }
    }
    texts
}

fn run(input: &Path, out: &Path, threads: usize, batch_lines: usize) -> PrepareReport {
    let tok = tokenizer();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| prepare(input, out, &tok, options(batch_lines)))
        .unwrap()
}

/// Parses data.jsonl, checking the schema exactly.
fn read_jsonl(path: &Path) -> Vec<Vec<SpanSet>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.keys().collect::<Vec<_>>(), ["spans"]);
            obj["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|span| {
                    let span = span.as_object().unwrap();
                    let mut keys: Vec<&str> = span.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    assert_eq!(keys, ["anchor", "nearby", "overlap", "random_sampled"]);
                    for v in span.values() {
                        assert!(v.as_array().unwrap().iter().all(|x| x.as_u64().is_some()));
                    }
                    serde_json::from_value(serde_json::Value::Object(span.clone())).unwrap()
                })
                .collect()
        })
        .collect()
}

/// A document's token stream and its sentence boundaries (token offsets, 0 and the end included),
/// computed independently of `prepare`.
fn sentence_bounds(tok: &Tokenizer, text: &str) -> (Vec<u32>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut bounds = vec![0];
    for s in split_sentences(text) {
        let ids = tok.encode(s, false, None);
        if !ids.is_empty() {
            stream.extend(ids);
            bounds.push(stream.len());
        }
    }
    (stream, bounds)
}

/// Checks REFERENCE §1's rules on one prepared document.
fn check_document(spans: &[SpanSet], stream: &[u32], bounds: &[usize]) {
    let n = spans.len();
    assert!(n >= 2);
    // Anchors tile the stream at sentence boundaries.
    let mut starts = Vec::new();
    let mut at = 0;
    for s in spans {
        assert_eq!(&stream[at..at + s.anchor.len()], s.anchor.as_slice());
        starts.push(at);
        at += s.anchor.len();
        assert!(
            bounds.contains(&at),
            "span end {at} is not a sentence boundary"
        );
    }
    assert_eq!(at, stream.len());
    starts.push(at);
    let sentences_in = |a: usize, b: usize| bounds.iter().filter(|&&x| x > a && x <= b).count();
    for (i, s) in spans.iter().enumerate() {
        let (a, b) = (starts[i], starts[i + 1]);
        // Span length rule: a closed span exceeded a target in [2, maxlen]; before its last
        // sentence it had not exceeded it.
        let last_start = *bounds.iter().filter(|&&x| x < b).max().unwrap();
        assert!(
            last_start - a <= MAXLEN,
            "span {i}: {} before its last sentence",
            last_start - a
        );
        if i + 1 < n {
            assert!(b - a >= 3, "closed span {i} has {} tokens", b - a);
        }
        // nearby: an adjacent anchor.
        assert!(
            (i > 0 && s.nearby == spans[i - 1].anchor)
                || (i + 1 < n && s.nearby == spans[i + 1].anchor),
            "nearby of span {i}"
        );
        // random_sampled: another anchor within the window.
        assert!(
            (0..n)
                .any(|j| j != i && j.abs_diff(i) <= WINDOW && spans[j].anchor == s.random_sampled),
            "random_sampled of span {i}"
        );
        // overlap: a contiguous, sentence-aligned range of the stream.
        let len_sent = sentences_in(a, b);
        let kmax = (len_sent / 2).max(1);
        let found = (0..=stream.len() - s.overlap.len())
            .filter(|&st| stream[st..st + s.overlap.len()] == s.overlap[..])
            .any(|st| {
                let en = st + s.overlap.len();
                if !bounds.contains(&st) || !bounds.contains(&en) {
                    return false;
                }
                let last_in = *bounds.iter().filter(|&&x| x < en).max().unwrap();
                let first_end = *bounds.iter().filter(|&&x| x > st).min().unwrap();
                if i + 1 < n {
                    // The anchor's last k sentences, then forward until maxlen is reached.
                    let k = sentences_in(st, b);
                    st >= a
                        && (1..=kmax).contains(&k)
                        && en >= b
                        && (en - st >= MAXLEN || en == stream.len())
                        && (en == b || last_in - st < MAXLEN)
                } else {
                    // The anchor's first k sentences, preceded backwards until maxlen.
                    let k = sentences_in(a, en);
                    en <= b
                        && (1..=kmax).contains(&k)
                        && st <= a
                        && (en - st >= MAXLEN || st == 0)
                        && (st == a || en - first_end < MAXLEN)
                }
            });
        assert!(found, "overlap of span {i} breaks the rule");
    }
}

#[test]
fn prepare_synthetic_tsv_and_plain_text() {
    let tok = tokenizer();
    let docs = generate_documents(120, 1..=24, 11);
    let dir = temp_dir("tsv");
    let tsv = dir.0.join("docs.tsv");
    let texts = write_tsv(&tsv, &docs);

    let out1 = dir.0.join("out1");
    let out2 = dir.0.join("out2");
    let r1 = run(&tsv, &out1, 1, 7);
    let r2 = run(&tsv, &out2, 2, 4096);

    // Identical outputs for 1 and 2 threads (and different batch sizes).
    for name in ["data.jsonl", "tokens.bin"] {
        let a = std::fs::read(out1.join(name)).unwrap();
        let b = std::fs::read(out2.join(name)).unwrap();
        assert!(a == b, "{name} differs between 1 and 2 threads");
    }
    // Only the outputs remain (temporary files renamed or removed).
    let mut names: Vec<String> = std::fs::read_dir(&out1)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["data.jsonl", "tokens.bin"]);

    // The report.
    assert_eq!(r1.format, InputFormat::MsMarcoTsv);
    assert_eq!(r1.lines, texts.len());
    assert_eq!(r1.skipped, 2);
    let skipped: Vec<usize> = r1.skipped_lines.iter().map(|s| s.line).collect();
    assert_eq!(skipped, [5, 9]);
    assert!(
        r1.skipped_lines[0].reason.contains("found 3"),
        "{:?}",
        r1.skipped_lines
    );
    assert!(
        r1.skipped_lines[1].reason.contains("UTF-8"),
        "{:?}",
        r1.skipped_lines
    );
    assert_eq!(r1.documents + r1.dropped + r1.skipped, r1.lines);
    assert!(r1.documents > 60 && r1.dropped > 5, "{r1:?}");
    assert_eq!(
        (r2.documents, r2.spans, r2.tokens),
        (r1.documents, r1.spans, r1.tokens)
    );

    // Schema and span invariants, matching output lines to input lines in order.
    let prepared = read_jsonl(&out1.join("data.jsonl"));
    assert_eq!(prepared.len(), r1.documents);
    let mut inputs = texts.iter().flatten();
    for spans in &prepared {
        let anchors: Vec<u32> = spans.iter().flat_map(|s| s.anchor.clone()).collect();
        loop {
            let text = inputs
                .next()
                .expect("an input document for every output line");
            let (stream, bounds) = sentence_bounds(&tok, text);
            if stream == anchors {
                check_document(spans, &stream, &bounds);
                break;
            }
            // A dropped document: fewer than two spans, so at most one target was exceeded,
            // which needs everything before its last sentence to fit in maxlen.
            let before_last = bounds[bounds.len().saturating_sub(2)];
            assert!(
                before_last <= MAXLEN,
                "a document of {} tokens was dropped",
                stream.len()
            );
        }
    }
    assert_eq!(r1.spans, prepared.iter().map(Vec::len).sum::<usize>());

    // The token store holds exactly data.jsonl.
    let store = TokenStore::open(&out1).unwrap();
    assert_eq!(store.num_docs(), prepared.len());
    assert_eq!(store.num_tokens(), r1.tokens);
    for (d, spans) in prepared.iter().enumerate() {
        assert_eq!(store.num_spans(d), spans.len());
        for (i, s) in spans.iter().enumerate() {
            assert_eq!(store.span_set(d, i).as_ref(), Some(s));
            let anchor: Vec<u32> = store
                .span(d, i, SpanKind::Anchor)
                .iter()
                .map(|&t| t as u32)
                .collect();
            assert_eq!(anchor, s.anchor);
        }
    }

    // Plain text: detected, and the same documents (without the title) are prepared.
    let txt = dir.0.join("docs.txt");
    write_plain_text(&txt, &docs).unwrap();
    let out3 = dir.0.join("out3");
    let r3 = run(&txt, &out3, 2, 16);
    assert_eq!(r3.format, InputFormat::PlainText);
    assert_eq!((r3.lines, r3.skipped), (docs.len(), 0));
    let plain = read_jsonl(&out3.join("data.jsonl"));
    let mut inputs = docs.iter();
    for spans in &plain {
        let anchors: Vec<u32> = spans.iter().flat_map(|s| s.anchor.clone()).collect();
        loop {
            let (stream, bounds) = sentence_bounds(&tok, &inputs.next().unwrap().text());
            if stream == anchors {
                check_document(spans, &stream, &bounds);
                break;
            }
        }
    }

    // Forcing TSV on the plain file skips every line as malformed without stopping at the first
    // one; with no document left, the run is an error (issue 14) and writes nothing.
    let tok = tokenizer();
    let opts = PrepareOptions {
        format: InputFormat::MsMarcoTsv,
        ..options(64)
    };
    let err = prepare(&txt, dir.0.join("out4"), &tok, opts)
        .unwrap_err()
        .to_string();
    let says = format!("{} skipped as malformed", docs.len());
    assert!(
        err.contains("no document to write") && err.contains(&says),
        "{err}"
    );
    assert!(TokenStore::open(dir.0.join("out4")).is_err());

    // A missing input is an error naming the file.
    let err = prepare(dir.0.join("nope.tsv"), dir.0.join("out5"), &tok, options(8)).unwrap_err();
    assert!(err.to_string().contains("nope.tsv"), "{err}");
}
