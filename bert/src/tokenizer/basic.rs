//! BERT's basic tokenization (HF `BasicTokenizer`): text between special tokens -> words that
//! WordPiece then splits. Works on `&str` slices and reusable buffers; nothing is allocated per
//! character or per word.
//!
//! Steps, as in HF's slow tokenizer:
//! 1. cleanup: NUL, U+FFFD and control/format/unassigned characters (categories C*) are dropped;
//!    whitespace (space, \t, \n, \r, Zs, U+2028/9) separates words;
//! 2. each CJK ideograph is a word of its own;
//! 3. each whitespace-separated token is normalised: lower-cased (`str.lower()`, so a word-final
//!    capital sigma becomes 'ς') and, when stripping accents, decomposed (NFD) with its Mn marks
//!    dropped; without accent stripping it is composed (NFC) instead;
//! 4. punctuation characters (ASCII 33-47, 58-64, 91-96, 123-126 and categories P*) are split
//!    off as one-character words.
//!
//! A token that is pure ASCII skips step 3's Unicode work: lower-casing is a byte operation there.
//! Character classes come from `tables.rs` (generated from Python's `unicodedata`); code points
//! below U+10000 are looked up in a 64 KiB array built once from those runs.

use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

use super::tables::RUNS;

/// What the basic tokenizer does with a character (see `tables.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum CharClass {
    Other,
    Control,
    Whitespace,
    Cjk,
    Punct,
    Mark,
}

const fn ascii_class(b: u8) -> CharClass {
    match b {
        b'\t' | b'\n' | b'\r' | b' ' => CharClass::Whitespace,
        0..=31 | 127 => CharClass::Control,
        33..=47 | 58..=64 | 91..=96 | 123..=126 => CharClass::Punct,
        _ => CharClass::Other,
    }
}

static ASCII_CLASS: [CharClass; 128] = {
    let mut t = [CharClass::Other; 128];
    let mut b = 0;
    while b < 128 {
        t[b] = ascii_class(b as u8);
        b += 1;
    }
    t
};

fn bmp_classes() -> &'static [CharClass] {
    static TABLE: OnceLock<Box<[CharClass]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![CharClass::Other; 0x10000];
        for (k, &(first, class)) in RUNS.iter().enumerate() {
            let first = first as usize;
            if first >= t.len() {
                break;
            }
            let end = RUNS
                .get(k + 1)
                .map_or(t.len(), |r| (r.0 as usize).min(t.len()));
            t[first..end].fill(class);
        }
        t.into_boxed_slice()
    })
}

#[inline]
pub(crate) fn class_of(c: char) -> CharClass {
    let cp = c as u32;
    if cp < 128 {
        ASCII_CLASS[cp as usize]
    } else if cp < 0x10000 {
        bmp_classes()[cp as usize]
    } else {
        let k = RUNS.partition_point(|r| r.0 <= cp);
        RUNS[k.saturating_sub(1)].1
    }
}

/// Normalisation options (HF `BasicTokenizer` arguments).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BasicOptions {
    pub lowercase: bool,
    pub strip_accents: bool,
    pub chinese_chars: bool,
}

/// Reusable buffers; one per thread.
#[derive(Default)]
pub(crate) struct Scratch {
    token: String,
    tmp: String,
    norm: String,
}

impl BasicOptions {
    /// Calls `emit` with each word of `text` in order (`text` holds no special tokens). Stops as
    /// soon as `emit` returns false, and then returns false.
    pub(crate) fn for_each_word<F: FnMut(&str) -> bool>(
        &self,
        text: &str,
        s: &mut Scratch,
        emit: &mut F,
    ) -> bool {
        let mut start: Option<usize> = None;
        let (mut ascii, mut dirty) = (true, false);
        for (i, c) in text.char_indices() {
            let class = match class_of(c) {
                CharClass::Cjk if !self.chinese_chars => CharClass::Other,
                class => class,
            };
            match class {
                CharClass::Whitespace | CharClass::Cjk => {
                    if let Some(st) = start.take() {
                        if !self.token(&text[st..i], ascii, dirty, s, emit) {
                            return false;
                        }
                    }
                    if class == CharClass::Cjk
                        && !self.token(&text[i..i + c.len_utf8()], false, false, s, emit)
                    {
                        return false;
                    }
                }
                _ => {
                    if start.is_none() {
                        start = Some(i);
                        (ascii, dirty) = (true, false);
                    }
                    if class == CharClass::Control {
                        dirty = true;
                    } else if !c.is_ascii() {
                        ascii = false;
                    }
                }
            }
        }
        match start {
            Some(st) => self.token(&text[st..], ascii, dirty, s, emit),
            None => true,
        }
    }

    /// One whitespace-separated token: drop control characters (`dirty`), normalise, split off
    /// punctuation and emit the words.
    fn token<F: FnMut(&str) -> bool>(
        &self,
        tok: &str,
        ascii: bool,
        dirty: bool,
        s: &mut Scratch,
        emit: &mut F,
    ) -> bool {
        let Scratch { token, tmp, norm } = s;
        let tok = if dirty {
            token.clear();
            token.extend(tok.chars().filter(|&c| class_of(c) != CharClass::Control));
            token.as_str()
        } else {
            tok
        };
        if ascii {
            let tok = if self.lowercase && tok.bytes().any(|b| b.is_ascii_uppercase()) {
                norm.clear();
                norm.push_str(tok);
                norm.make_ascii_lowercase();
                norm.as_str()
            } else {
                tok
            };
            return split_punct_ascii(tok, emit);
        }
        norm.clear();
        if self.strip_accents {
            // NFD(lower(NFC(t))) == NFD(lower(t)): the NFC step of the slow tokenizer is implied.
            let src = if self.lowercase {
                lowercase_into(tok, tmp);
                tmp.as_str()
            } else {
                tok
            };
            norm.extend(src.nfd().filter(|&c| class_of(c) != CharClass::Mark));
        } else if self.lowercase {
            token_nfc(tok, tmp);
            lowercase_into(tmp, norm);
        } else {
            token_nfc(tok, norm);
        }
        split_punct(norm, emit)
    }
}

fn token_nfc(tok: &str, out: &mut String) {
    out.clear();
    out.extend(tok.nfc());
}

/// Python's `str.lower()` of `src` into `out` (Unicode lower-case mapping; a capital sigma at
/// the end of a word becomes final sigma, which only the whole-string std method handles).
fn lowercase_into(src: &str, out: &mut String) {
    out.clear();
    if src.contains('Σ') {
        out.push_str(&src.to_lowercase());
    } else {
        out.extend(src.chars().flat_map(char::to_lowercase));
    }
}

/// Emits the words of an ASCII token: runs of non-punctuation, and each punctuation byte alone.
fn split_punct_ascii<F: FnMut(&str) -> bool>(tok: &str, emit: &mut F) -> bool {
    let mut word_start = 0;
    for (i, b) in tok.bytes().enumerate() {
        if ASCII_CLASS[b as usize & 127] == CharClass::Punct {
            if word_start < i && !emit(&tok[word_start..i]) {
                return false;
            }
            if !emit(&tok[i..i + 1]) {
                return false;
            }
            word_start = i + 1;
        }
    }
    word_start >= tok.len() || emit(&tok[word_start..])
}

/// Emits the words of a normalised token: runs of non-punctuation, and each punctuation char
/// alone. Whitespace cannot appear here (normalisation never produces it from other classes).
fn split_punct<F: FnMut(&str) -> bool>(tok: &str, emit: &mut F) -> bool {
    let mut word_start = 0;
    for (i, c) in tok.char_indices() {
        if class_of(c) == CharClass::Punct {
            if word_start < i && !emit(&tok[word_start..i]) {
                return false;
            }
            let end = i + c.len_utf8();
            if !emit(&tok[i..end]) {
                return false;
            }
            word_start = end;
        }
    }
    word_start >= tok.len() || emit(&tok[word_start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(opts: BasicOptions, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        opts.for_each_word(text, &mut Scratch::default(), &mut |w| {
            out.push(w.to_string());
            true
        });
        out
    }

    const UNCASED: BasicOptions = BasicOptions {
        lowercase: true,
        strip_accents: true,
        chinese_chars: true,
    };
    const CASED: BasicOptions = BasicOptions {
        lowercase: false,
        strip_accents: false,
        chinese_chars: true,
    };

    #[test]
    fn runs_are_sorted_and_agree_with_ascii_table() {
        assert_eq!(RUNS[0].0, 0);
        assert!(RUNS.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1));
        for b in 0u8..128 {
            let k = RUNS.partition_point(|r| r.0 <= b as u32) - 1;
            assert_eq!(RUNS[k].1, ascii_class(b), "byte {b}");
        }
        assert_eq!(class_of('\u{3000}'), CharClass::Whitespace);
        assert_eq!(class_of('\u{200B}'), CharClass::Control);
        assert_eq!(class_of('中'), CharClass::Cjk);
        assert_eq!(class_of('\u{20000}'), CharClass::Cjk);
        assert_eq!(class_of('«'), CharClass::Punct);
        assert_eq!(class_of('\u{0301}'), CharClass::Mark);
        assert_eq!(class_of('\u{10FFFF}'), CharClass::Control);
        assert_eq!(class_of('😀'), CharClass::Other);
    }

    #[test]
    fn basic_steps() {
        assert_eq!(
            words(UNCASED, " Hello,  WORLD!\t"),
            ["hello", ",", "world", "!"]
        );
        assert_eq!(words(UNCASED, "a\u{0}b\u{200B}c d"), ["abc", "d"]);
        assert_eq!(words(UNCASED, "Café Ångström"), ["cafe", "angstrom"]);
        assert_eq!(words(UNCASED, "x中文y"), ["x", "中", "文", "y"]);
        assert_eq!(words(UNCASED, "ΟΔΟΣ ΟΔΟΣ.Α"), ["οδος", "οδοσ", ".", "α"]);
        assert_eq!(words(UNCASED, "\u{1FEF}a"), ["`", "a"]);
        assert_eq!(
            words(UNCASED, "\u{0301}\u{0302} \u{1}"),
            Vec::<String>::new()
        );
        assert_eq!(
            words(CASED, "Cafe\u{0301}, Straße"),
            ["Café", ",", "Straße"]
        );
        let no_cjk = BasicOptions {
            chinese_chars: false,
            ..UNCASED
        };
        assert_eq!(words(no_cjk, "x中文y"), ["x中文y"]);
    }

    #[test]
    fn emit_can_stop_early() {
        let mut seen = Vec::new();
        let done = UNCASED.for_each_word("a b c d", &mut Scratch::default(), &mut |w| {
            seen.push(w.to_string());
            seen.len() < 2
        });
        assert!(!done);
        assert_eq!(seen, ["a", "b"]);
    }
}
