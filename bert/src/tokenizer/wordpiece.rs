//! WordPiece (HF `WordpieceTokenizer`): one basic-tokenized word -> vocabulary ids, greedy
//! longest-match-first from the left; pieces after the first are looked up as `##piece`. A word
//! longer than `max_chars` characters, or one with a position where no piece matches, becomes a
//! single unknown id.
//!
//! Each piece is one walk down `Vocab`'s byte trie over the rest of the word (no `"##" + piece`
//! string is built, no candidate lengths are tried one by one). A vocabulary key always ends on
//! a UTF-8 character boundary of the word, since keys are whole UTF-8 strings.

use super::vocab::Vocab;

/// Appends the ids of `word` to `out`.
#[inline]
pub(crate) fn push_word_ids(
    vocab: &Vocab,
    word: &str,
    unk: u32,
    max_chars: usize,
    out: &mut Vec<u32>,
) {
    if word.len() > max_chars && (word.is_ascii() || word.chars().count() > max_chars) {
        out.push(unk);
        return;
    }
    let mark = out.len();
    let mut start = 0;
    while start < word.len() {
        let rest = &word[start..];
        let found = if start == 0 {
            vocab.longest_word_prefix(rest)
        } else {
            vocab.longest_cont_prefix(rest)
        };
        match found {
            Some((id, len)) => {
                out.push(id);
                start += len;
            }
            None => {
                out.truncate(mark);
                out.push(unk);
                return;
            }
        }
    }
}
