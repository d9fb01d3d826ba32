//! The BERT WordPiece tokenizer, id-for-id compatible with HF transformers' `BertTokenizer`
//! (the Python one; the `tokenizers`-backed `BertTokenizerFast` gives the same ids except on
//! rare Unicode corner cases, listed in tests/fixtures/tokenizer/README.md).
//!
//! Pipeline for one text: the special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` are found in the
//! raw text (exact, case-sensitive matches, anywhere, as HF's added-token split does) and become
//! their ids; the text between them goes through basic tokenization (`basic.rs`: cleanup, CJK
//! spacing, lower-casing and accent stripping, punctuation split) and each resulting word through
//! WordPiece (`wordpiece.rs`) against the vocabulary (`vocab.rs`).
//!
//! ```no_run
//! let tok = bert::Tokenizer::from_dir("bert-base-uncased")?;
//! let ids = tok.encode("Hello, world!", true, Some(128));
//! assert_eq!(tok.decode(&ids), "[CLS] hello , world ! [SEP]");
//! # Ok::<(), bert::TokenizerError>(())
//! ```

mod basic;
mod tables;
mod vocab;
mod wordpiece;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use basic::{BasicOptions, Scratch};
use vocab::Vocab;

/// Errors from loading or saving a tokenizer; each names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {msg}", path.display())]
    Vocab {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{}: special token {token} is missing from the vocabulary", path.display())]
    MissingSpecialToken { path: PathBuf, token: &'static str },
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
}

impl TokenizerError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn vocab(path: &Path, line: usize, msg: impl Into<String>) -> Self {
        TokenizerError::Vocab {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    fn config(path: &Path, msg: impl Into<String>) -> Self {
        TokenizerError::Config {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// HF's `max_input_chars_per_word`: longer words become `[UNK]`.
pub const MAX_INPUT_CHARS_PER_WORD: usize = 100;

const PAD: &str = "[PAD]";
const UNK: &str = "[UNK]";
const CLS: &str = "[CLS]";
const SEP: &str = "[SEP]";
const MASK: &str = "[MASK]";
const SPECIAL_TOKENS: [&str; 5] = [PAD, UNK, CLS, SEP, MASK];

/// A BERT WordPiece tokenizer (vocabulary + normalisation options). Immutable and `Sync`: share
/// one across threads.
pub struct Tokenizer {
    vocab: Vocab,
    basic: BasicOptions,
    /// Ids of `SPECIAL_TOKENS`, in that order.
    special: [u32; 5],
}

impl Tokenizer {
    /// Loads `vocab.txt` (one token per line; id = line number from 0). With `do_lower_case`,
    /// text is lower-cased and accents are stripped (bert-base-uncased); without, neither.
    pub fn from_vocab_file(path: impl AsRef<Path>, do_lower_case: bool) -> Result<Tokenizer> {
        Self::load(path.as_ref(), do_lower_case, None, true)
    }

    /// Loads an HF tokenizer directory: `vocab.txt` and, when present, `tokenizer_config.json`'s
    /// `do_lower_case` (default true), `strip_accents` (default: follows `do_lower_case`) and
    /// `tokenize_chinese_chars` (default true). Other keys are ignored; the special tokens are
    /// always `[PAD] [UNK] [CLS] [SEP] [MASK]`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let (mut lower, mut strip, mut chinese) = (true, None, true);
        match std::fs::read(&config_path) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    TokenizerError::config(&config_path, format!("invalid JSON: {e}"))
                })?;
                let flag = |key: &str| -> Result<Option<bool>> {
                    match v.get(key) {
                        None | Some(serde_json::Value::Null) => Ok(None),
                        Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                        Some(other) => Err(TokenizerError::config(
                            &config_path,
                            format!("{key} must be a boolean, got {other}"),
                        )),
                    }
                };
                lower = flag("do_lower_case")?.unwrap_or(true);
                strip = flag("strip_accents")?;
                chinese = flag("tokenize_chinese_chars")?.unwrap_or(true);
                if flag("do_basic_tokenize")? == Some(false) {
                    return Err(TokenizerError::config(
                        &config_path,
                        "do_basic_tokenize=false is not supported",
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TokenizerError::io(&config_path, e)),
        }
        Self::load(&dir.join("vocab.txt"), lower, strip, chinese)
    }

    fn load(
        path: &Path,
        lowercase: bool,
        strip_accents: Option<bool>,
        chinese_chars: bool,
    ) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
        let vocab = Vocab::parse(&bytes, path)?;
        let mut special = [0u32; 5];
        for (slot, name) in special.iter_mut().zip(SPECIAL_TOKENS) {
            *slot = vocab
                .token_id(name)
                .ok_or_else(|| TokenizerError::MissingSpecialToken {
                    path: path.to_path_buf(),
                    token: name,
                })?;
        }
        let basic = BasicOptions {
            lowercase,
            strip_accents: strip_accents.unwrap_or(lowercase),
            chinese_chars,
        };
        Ok(Tokenizer {
            vocab,
            basic,
            special,
        })
    }

    /// Writes `dir/vocab.txt` (tokens in id order, one per line), creating `dir` if needed, and
    /// returns its path.
    pub fn save_vocab(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| TokenizerError::io(dir, e))?;
        let path = dir.join("vocab.txt");
        let mut text = String::with_capacity(self.vocab.len() * 8);
        for t in self.vocab.tokens() {
            text.push_str(t);
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(|e| TokenizerError::io(&path, e))?;
        Ok(path)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn do_lower_case(&self) -> bool {
        self.basic.lowercase
    }

    pub fn strip_accents(&self) -> bool {
        self.basic.strip_accents
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.token_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.token(id)
    }

    pub fn pad_id(&self) -> u32 {
        self.special[0]
    }

    pub fn unk_id(&self) -> u32 {
        self.special[1]
    }

    pub fn cls_id(&self) -> u32 {
        self.special[2]
    }

    pub fn sep_id(&self) -> u32 {
        self.special[3]
    }

    pub fn mask_id(&self) -> u32 {
        self.special[4]
    }

    /// The WordPiece tokens of `text` (HF `tokenize`), without `[CLS]`/`[SEP]`.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let ids = self.encode(text, false, None);
        ids.iter()
            .map(|&id| self.vocab.token(id).unwrap_or(UNK).to_string())
            .collect()
    }

    /// The ids of `text`. With `add_special_tokens` the result is `[CLS] ... [SEP]`. With
    /// `max_len`, only the first tokens are kept so that the result (special tokens included)
    /// has at most `max_len` ids: HF `truncation=True, max_length=max_len` (for `max_len < 2`
    /// with special tokens, the first `max_len` ids of `[CLS] [SEP]`).
    pub fn encode(&self, text: &str, add_special_tokens: bool, max_len: Option<usize>) -> Vec<u32> {
        self.encode_with(text, add_special_tokens, max_len, &mut Scratch::default())
    }

    /// `encode` of every text, in parallel (rayon); the same ids as encoding them one by one.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
        max_len: Option<usize>,
    ) -> Vec<Vec<u32>> {
        texts
            .par_iter()
            .map_init(Scratch::default, |s, t| {
                self.encode_with(t.as_ref(), add_special_tokens, max_len, s)
            })
            .collect()
    }

    /// Joins the tokens of `ids` with spaces and glues `##` continuations to the previous token
    /// (HF `decode(ids, clean_up_tokenization_spaces=False)`; special tokens are kept). An id
    /// outside the vocabulary decodes as `[UNK]`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let tokens: Vec<&str> = ids
            .iter()
            .map(|&id| self.vocab.token(id).unwrap_or(UNK))
            .collect();
        tokens.join(" ").replace(" ##", "").trim().to_string()
    }

    fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        max_len: Option<usize>,
        s: &mut Scratch,
    ) -> Vec<u32> {
        let limit = match (max_len, add_special) {
            (None, _) => usize::MAX,
            (Some(n), false) => n,
            (Some(n), true) => n.saturating_sub(2),
        };
        let mut out = Vec::with_capacity(text.len() / 4 + 2);
        if add_special {
            out.push(self.cls_id());
        }
        let offset = out.len();
        self.push_content_ids(text, s, &mut out, offset.saturating_add(limit));
        out.truncate(offset.saturating_add(limit));
        if add_special {
            out.push(self.sep_id());
            if let Some(n) = max_len {
                out.truncate(n);
            }
        }
        out
    }

    /// Appends the ids of `text` to `out` until `out` holds `limit` ids (it may overshoot by one
    /// word; the caller truncates).
    fn push_content_ids(&self, text: &str, s: &mut Scratch, out: &mut Vec<u32>, limit: usize) {
        let mut rest = text;
        while out.len() < limit {
            let (segment, special) = match find_special(rest) {
                Some((at, k)) => (&rest[..at], Some(k)),
                None => (rest, None),
            };
            let unk = self.unk_id();
            let finished = self.basic.for_each_word(segment, s, &mut |word| {
                wordpiece::push_word_ids(&self.vocab, word, unk, MAX_INPUT_CHARS_PER_WORD, out);
                out.len() < limit
            });
            match special {
                Some(k) if finished => {
                    out.push(self.special[k]);
                    rest = &rest[segment.len() + SPECIAL_TOKENS[k].len()..];
                }
                _ => break,
            }
        }
    }
}

/// The first special token in `text`: its byte offset and index in `SPECIAL_TOKENS`.
fn find_special(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(p) = bytes[from..].iter().position(|&b| b == b'[') {
        let at = from + p;
        if let Some(k) = SPECIAL_TOKENS
            .iter()
            .position(|t| bytes[at..].starts_with(t.as_bytes()))
        {
            return Some((at, k));
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &[&str] = &[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "hello", "world",
        ",", "!", "a", "##a", "cafe", "中", "##ing", "runn", "'", "t", "don",
    ];

    fn tiny() -> (Tokenizer, tempdir::Dir) {
        let dir = tempdir::Dir::new("tiny");
        std::fs::write(dir.path().join("vocab.txt"), TOKENS.join("\n") + "\n").unwrap();
        (
            Tokenizer::from_vocab_file(dir.path().join("vocab.txt"), true).unwrap(),
            dir,
        )
    }

    /// A throw-away directory under the target dir, removed on drop.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(name: &str) -> Dir {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("bert-tok-{}-{name}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn wordpiece_greedy_and_unknown() {
        let (t, _d) = tiny();
        assert_eq!(
            t.tokenize("Unaffable, hello!"),
            ["un", "##aff", "##able", ",", "hello", "!"]
        );
        // No piece for "x": the whole word is [UNK]; partial matches are dropped.
        assert_eq!(t.tokenize("unaffx hello"), ["[UNK]", "hello"]);
        assert_eq!(t.tokenize("Café 中"), ["cafe", "中"]);
        let long = "a".repeat(MAX_INPUT_CHARS_PER_WORD);
        assert_eq!(t.tokenize(&long).len(), MAX_INPUT_CHARS_PER_WORD);
        assert_eq!(t.tokenize(&(long + "a")), ["[UNK]"]);
    }

    #[test]
    fn special_tokens_are_not_split() {
        let (t, _d) = tiny();
        assert_eq!(
            t.tokenize("hello[MASK]world [mask]"),
            ["hello", "[MASK]", "world", "[UNK]", "[UNK]", "[UNK]"]
        );
        assert_eq!(t.encode("[CLS][SEP]", false, None), [2, 3]);
        assert_eq!(find_special("a[[MASK]"), Some((2, 4)));
        assert_eq!(find_special("[MAS"), None);
    }

    #[test]
    fn special_ids_and_truncation() {
        let (t, _d) = tiny();
        assert_eq!(
            (t.pad_id(), t.unk_id(), t.cls_id(), t.sep_id(), t.mask_id()),
            (0, 1, 2, 3, 4)
        );
        let text = "hello world hello world";
        assert_eq!(t.encode(text, true, None), [2, 8, 9, 8, 9, 3]);
        assert_eq!(t.encode(text, true, Some(4)), [2, 8, 9, 3]);
        assert_eq!(t.encode(text, false, Some(3)), [8, 9, 8]);
        assert_eq!(t.encode("unaffable", false, Some(2)), [5, 6]);
        assert_eq!(t.encode(text, true, Some(1)), [2]);
        assert_eq!(t.encode(text, true, Some(0)), Vec::<u32>::new());
        assert_eq!(t.encode("", true, Some(2)), [2, 3]);
    }

    #[test]
    fn decode_lookup_and_save() {
        let (t, d) = tiny();
        assert_eq!(
            t.decode(&[2, 5, 6, 7, 10, 20, 18, 19, 3]),
            "[CLS] unaffable , don ' t [SEP]"
        );
        assert_eq!(t.decode(&[16, 8, 999]), "##ing hello [UNK]");
        assert_eq!(t.token_to_id("##aff"), Some(6));
        assert_eq!(t.token_to_id("aff"), None);
        assert_eq!(t.id_to_token(15), Some("中"));
        assert_eq!(t.id_to_token(TOKENS.len() as u32), None);
        assert_eq!(t.vocab_size(), TOKENS.len());
        let out = d.path().join("saved");
        let path = t.save_vocab(&out).unwrap();
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            TOKENS.join("\n") + "\n"
        );
        let t2 = Tokenizer::from_dir(&out).unwrap();
        assert!(t2.do_lower_case() && t2.strip_accents());
        assert_eq!(
            t2.encode("Unaffable", true, None),
            t.encode("Unaffable", true, None)
        );
    }

    #[test]
    fn from_dir_reads_config() {
        let (t, d) = tiny();
        t.save_vocab(d.path()).unwrap();
        let cfg = d.path().join("tokenizer_config.json");
        std::fs::write(&cfg, r#"{"do_lower_case": false, "strip_accents": null}"#).unwrap();
        let cased = Tokenizer::from_dir(d.path()).unwrap();
        assert!(!cased.do_lower_case() && !cased.strip_accents());
        assert_eq!(cased.tokenize("Hello hello"), ["[UNK]", "hello"]);
        std::fs::write(&cfg, r#"{"do_lower_case": "yes"}"#).unwrap();
        let err = Tokenizer::from_dir(d.path()).err().unwrap().to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("do_lower_case"),
            "{err}"
        );
        std::fs::write(&cfg, "{").unwrap();
        let err = Tokenizer::from_dir(d.path()).err().unwrap().to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("invalid JSON"),
            "{err}"
        );
    }
}
