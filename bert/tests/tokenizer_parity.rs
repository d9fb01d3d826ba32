//! Parity with HF's BERT tokenizer on the committed fixtures (tests/fixtures/tokenizer, made by
//! scripts/gen_tokenizer_fixtures.py): ids with and without special tokens / truncation, cased
//! ids, decode; plus round trips, batch == sequential, and errors for bad vocabulary files.

use std::path::{Path, PathBuf};

use bert::Tokenizer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer")
}

struct Line {
    text: String,
    rec: Value,
}

fn lines() -> Vec<Line> {
    let path = fixtures().join("sentences.jsonl");
    let data = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    data.lines()
        .map(|l| {
            let rec: Value = serde_json::from_str(l).expect("fixture line is JSON");
            Line {
                text: rec["text"].as_str().expect("text").to_string(),
                rec,
            }
        })
        .collect()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn uncased() -> Tokenizer {
    Tokenizer::from_vocab_file(fixtures().join("vocab.txt"), true).expect("fixture vocab loads")
}

/// Compares `ours(line)` with the fixture's `key` on every line that has it; fails listing the
/// first mismatches with their text and tokens.
fn check(tok: &Tokenizer, key: &str, min_lines: usize, ours: impl Fn(&str) -> Vec<u32>) {
    let mut checked = 0;
    let mut bad = Vec::new();
    for line in lines() {
        let Some(want) = line.rec.get(key) else {
            continue;
        };
        checked += 1;
        let want = ids_of(want);
        let got = ours(&line.text);
        if got != want {
            let toks = |ids: &[u32]| {
                ids.iter()
                    .map(|&i| tok.id_to_token(i).unwrap_or("?"))
                    .collect::<Vec<_>>()
            };
            bad.push(format!(
                "text {:?}\n  want {:?}\n  got  {:?}",
                line.text,
                toks(&want),
                toks(&got)
            ));
        }
    }
    assert!(checked >= min_lines, "{key}: only {checked} fixture lines");
    assert!(
        bad.is_empty(),
        "{key}: {} of {checked} lines differ; first ones:\n{}",
        bad.len(),
        bad[..bad.len().min(5)].join("\n")
    );
}

#[test]
fn ids_match_hf_without_special_tokens() {
    let tok = uncased();
    check(&tok, "ids", 3000, |t| tok.encode(t, false, None));
}

#[test]
fn ids_match_hf_with_special_tokens_and_truncation() {
    let tok = uncased();
    check(&tok, "ids32", 3000, |t| tok.encode(t, true, Some(32)));
}

#[test]
fn cased_ids_match_hf() {
    let tok = Tokenizer::from_vocab_file(fixtures().join("vocab.txt"), false).unwrap();
    check(&tok, "cased", 500, |t| tok.encode(t, false, None));
}

#[test]
fn tokenize_is_encode_as_strings() {
    let tok = uncased();
    for line in lines().iter().step_by(7) {
        let ids = tok.encode(&line.text, false, None);
        let strs: Vec<String> = ids
            .iter()
            .map(|&i| tok.id_to_token(i).unwrap().to_string())
            .collect();
        assert_eq!(tok.tokenize(&line.text), strs);
    }
    assert_eq!(
        tok.tokenize("The capital of France is [MASK]."),
        ["the", "capital", "of", "france", "is", "[MASK]", "."]
    );
}

#[test]
fn decode_matches_hf_and_round_trips() {
    let tok = uncased();
    let mut n_decoded = 0;
    for line in lines() {
        let ids = tok.encode(&line.text, false, None);
        let text = tok.decode(&ids);
        if let Some(want) = line.rec.get("decoded") {
            assert_eq!(text, want.as_str().unwrap(), "decode of {:?}", line.text);
            n_decoded += 1;
        }
        assert_eq!(
            tok.encode(&text, false, None),
            ids,
            "re-encoding the decoded {:?}",
            line.text
        );
    }
    assert!(n_decoded >= 300, "only {n_decoded} decode fixtures");
}

#[test]
fn batch_equals_sequential() {
    let tok = uncased();
    let texts: Vec<String> = lines().into_iter().map(|l| l.text).collect();
    for (special, max_len) in [
        (false, None),
        (true, Some(32)),
        (true, None),
        (false, Some(5)),
    ] {
        let batch = tok.encode_batch(&texts, special, max_len);
        assert_eq!(batch.len(), texts.len());
        for (t, ids) in texts.iter().zip(&batch) {
            assert_eq!(*ids, tok.encode(t, special, max_len), "{t:?}");
        }
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).take(10).collect();
    assert_eq!(tok.encode_batch(&refs, false, None).len(), 10);
}

#[test]
fn loaded_vocab_matches_file_and_special_ids() {
    let tok = uncased();
    assert_eq!(tok.vocab_size(), 30522);
    assert_eq!(
        (
            tok.pad_id(),
            tok.unk_id(),
            tok.cls_id(),
            tok.sep_id(),
            tok.mask_id()
        ),
        (0, 100, 101, 102, 103)
    );
    assert_eq!(tok.token_to_id("##ing"), Some(2075));
    let dir = scratch_dir("save");
    let saved = tok.save_vocab(&dir).unwrap();
    assert_eq!(
        std::fs::read(saved).unwrap(),
        std::fs::read(fixtures().join("vocab.txt")).unwrap()
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bert-tok-parity-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `content` as a vocab file and returns the error message of loading it.
fn load_error(name: &str, content: &[u8]) -> String {
    let dir = scratch_dir(name);
    let path = dir.join("vocab.txt");
    std::fs::write(&path, content).unwrap();
    let msg = match Tokenizer::from_vocab_file(&path, true) {
        Ok(_) => panic!("{name}: bad vocab accepted"),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        msg.contains(&path.display().to_string()),
        "{name}: error does not name the file: {msg}"
    );
    msg
}

#[test]
fn bad_vocab_files_give_errors_naming_file_and_line() {
    const SPECIALS: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    let msg = load_error("dup", format!("{SPECIALS}hello\nworld\nhello\n").as_bytes());
    assert!(
        msg.contains("vocab.txt:8:") && msg.contains("duplicate") && msg.contains("line 6"),
        "{msg}"
    );
    let msg = load_error("empty", format!("{SPECIALS}a\n\nb\n").as_bytes());
    assert!(
        msg.contains("vocab.txt:7:") && msg.contains("empty"),
        "{msg}"
    );
    let msg = load_error("utf8", b"[PAD]\n[UNK]\n\xff\xfe\n");
    assert!(
        msg.contains("vocab.txt:3:") && msg.contains("UTF-8"),
        "{msg}"
    );
    for missing in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] {
        let content = SPECIALS.replace(&format!("{missing}\n"), "") + "hello\n";
        let msg = load_error("missing", content.as_bytes());
        assert!(msg.contains(missing) && msg.contains("missing"), "{msg}");
    }
    let msg = load_error("nothing", b"");
    assert!(msg.contains("[PAD]"), "{msg}");
    let missing = fixtures().join("no-such-dir/vocab.txt");
    let msg = Tokenizer::from_vocab_file(&missing, true)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("no-such-dir"), "{msg}");
    // Windows line endings are accepted.
    let dir = scratch_dir("crlf");
    std::fs::write(
        dir.join("vocab.txt"),
        SPECIALS.replace('\n', "\r\n") + "hello\r\n",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.encode("Hello", true, None), [2, 5, 3]);
    let _ = std::fs::remove_dir_all(dir);
}
