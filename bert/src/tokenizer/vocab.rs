//! The WordPiece vocabulary: `vocab.txt` (one token per line; id = line number from 0) parsed and
//! validated, and the lookups the tokenizer needs.
//!
//! Memory layout: every token is stored once, back to back, in one `String` arena; `ends[id]` is
//! the end offset of token `id` (its start is the previous token's end). Two byte tries answer
//! "longest vocabulary key that prefixes this slice" in one walk: `words` holds every token under
//! its full text, `conts` holds the continuation tokens (`##ing`) under their text after the `##`
//! prefix (`ing`), so WordPiece walks a slice of the word as it is. A trie is flattened in
//! breadth-first order: `node[n] = (first_child, id)`; the children of node `n` are the nodes
//! `node[n].0..node[n + 1].0` (a sentinel entry ends the list), sorted by `label` (the byte
//! leading to them); `id` is the token ending at `n` or `NONE`. The root's transitions are a
//! direct 256-entry table.

use std::path::Path;

use super::{Result, TokenizerError};

/// The prefix HF WordPiece puts on a piece that continues a word.
pub(crate) const CONTINUATION: &str = "##";

const NONE: u32 = u32::MAX;

/// A trie under construction: children as (label, node) lists.
#[derive(Default)]
struct TrieBuilder {
    children: Vec<Vec<(u8, u32)>>,
    ids: Vec<u32>,
}

impl TrieBuilder {
    fn new() -> Self {
        TrieBuilder {
            children: vec![Vec::new()],
            ids: vec![NONE],
        }
    }

    /// Inserts `key` with `id`; returns the id already stored under `key`, if any.
    fn insert(&mut self, key: &[u8], id: u32) -> Option<u32> {
        let mut node = 0usize;
        for &b in key {
            node = match self.children[node].iter().find(|c| c.0 == b) {
                Some(&(_, child)) => child as usize,
                None => {
                    let child = self.ids.len();
                    self.children.push(Vec::new());
                    self.ids.push(NONE);
                    self.children[node].push((b, child as u32));
                    child
                }
            };
        }
        match self.ids[node] {
            NONE => {
                self.ids[node] = id;
                None
            }
            old => Some(old),
        }
    }

    /// Flattens into breadth-first order with sorted, contiguous children.
    fn build(mut self) -> Trie {
        let n = self.ids.len();
        let mut order = Vec::with_capacity(n); // new index -> old index
        order.push(0usize);
        let mut first_child = Vec::with_capacity(n + 1);
        let mut label = vec![0u8; n];
        let mut next = 0;
        while next < order.len() {
            let old = order[next];
            let mut kids = std::mem::take(&mut self.children[old]);
            kids.sort_unstable_by_key(|c| c.0);
            first_child.push(order.len() as u32);
            for (b, child) in kids {
                label[order.len()] = b;
                order.push(child as usize);
            }
            next += 1;
        }
        first_child.push(order.len() as u32);
        let ids = order
            .iter()
            .map(|&old| self.ids[old])
            .chain(std::iter::once(NONE));
        let node: Vec<(u32, u32)> = first_child.iter().copied().zip(ids).collect();
        let mut root = [NONE; 256];
        for k in node[0].0..node[1].0 {
            root[label[k as usize] as usize] = k;
        }
        Trie { node, label, root }
    }
}

struct Trie {
    node: Vec<(u32, u32)>,
    label: Vec<u8>,
    root: [u32; 256],
}

impl Trie {
    #[inline]
    fn child(&self, node: u32, b: u8) -> Option<u32> {
        let (lo, hi) = (
            self.node[node as usize].0 as usize,
            self.node[node as usize + 1].0 as usize,
        );
        let labels = &self.label[lo..hi];
        if labels.len() <= 16 {
            labels.iter().position(|&l| l == b).map(|k| (lo + k) as u32)
        } else {
            labels.binary_search(&b).ok().map(|k| (lo + k) as u32)
        }
    }

    /// The id of the longest key that is a prefix of `s`, and its length in bytes.
    #[inline]
    fn longest_prefix(&self, s: &[u8]) -> Option<(u32, usize)> {
        let (&b0, rest) = s.split_first()?;
        let mut node = self.root[b0 as usize];
        if node == NONE {
            return None;
        }
        let mut best = None;
        let mut len = 1;
        loop {
            let id = self.node[node as usize].1;
            if id != NONE {
                best = Some((id, len));
            }
            match rest.get(len - 1).and_then(|&b| self.child(node, b)) {
                Some(next) => {
                    node = next;
                    len += 1;
                }
                None => return best,
            }
        }
    }

    /// The id stored under exactly `s`.
    fn get(&self, s: &[u8]) -> Option<u32> {
        let (&b0, rest) = s.split_first()?;
        let mut node = self.root[b0 as usize];
        if node == NONE {
            return None;
        }
        for &b in rest {
            node = self.child(node, b)?;
        }
        Some(self.node[node as usize].1).filter(|&id| id != NONE)
    }
}

pub(crate) struct Vocab {
    arena: String,
    ends: Vec<u32>,
    words: Trie,
    conts: Trie,
}

impl Vocab {
    /// Parses the text of a vocab.txt; `path` only names the file in errors.
    ///
    /// Lines are split on `\n` (a trailing `\r` is dropped too); a final newline does not start a
    /// token. Errors name the file and the 1-based line: invalid UTF-8, an empty line, a duplicate
    /// token, more than `u32::MAX - 1` tokens or 4 GiB of token text.
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Vocab> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            TokenizerError::vocab(path, line, "invalid UTF-8")
        })?;
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut arena = String::with_capacity(body.len());
        let mut ends = Vec::new();
        let (mut words, mut conts) = (TrieBuilder::new(), TrieBuilder::new());
        for (i, line) in body.split('\n').enumerate().filter(|_| !body.is_empty()) {
            let token = line.strip_suffix('\r').unwrap_or(line);
            if token.is_empty() {
                return Err(TokenizerError::vocab(path, i + 1, "empty token"));
            }
            let id = u32::try_from(i).ok().filter(|&id| id != NONE);
            let id = id.ok_or_else(|| TokenizerError::vocab(path, i + 1, "too many tokens"))?;
            if let Some(first) = words.insert(token.as_bytes(), id) {
                let msg = format!("duplicate token {token:?} (first on line {})", first + 1);
                return Err(TokenizerError::vocab(path, i + 1, msg));
            }
            if let Some(rest) = token.strip_prefix(CONTINUATION).filter(|r| !r.is_empty()) {
                conts.insert(rest.as_bytes(), id);
            }
            arena.push_str(token);
            let end = u32::try_from(arena.len());
            ends.push(end.map_err(|_| {
                TokenizerError::vocab(path, i + 1, "vocabulary text exceeds 4 GiB")
            })?);
        }
        Ok(Vocab {
            arena,
            ends,
            words: words.build(),
            conts: conts.build(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn token(&self, id: u32) -> Option<&str> {
        let id = id as usize;
        let end = *self.ends.get(id)? as usize;
        let start = if id == 0 {
            0
        } else {
            self.ends[id - 1] as usize
        };
        self.arena.get(start..end)
    }

    /// The id of a token given by its full text (`"##ing"` for a continuation).
    pub(crate) fn token_id(&self, s: &str) -> Option<u32> {
        self.words.get(s.as_bytes())
    }

    /// The longest token (full text) that prefixes `s`: its id and byte length.
    #[inline]
    pub(crate) fn longest_word_prefix(&self, s: &str) -> Option<(u32, usize)> {
        self.words.longest_prefix(s.as_bytes())
    }

    /// The longest continuation `"##" + p` such that `p` prefixes `s`: its id and `p`'s length.
    #[inline]
    pub(crate) fn longest_cont_prefix(&self, s: &str) -> Option<(u32, usize)> {
        self.conts.longest_prefix(s.as_bytes())
    }

    /// The tokens in id order.
    pub(crate) fn tokens(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len() as u32).filter_map(move |id| self.token(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_lookups() {
        let v = Vocab::parse(
            "[PAD]\nun\n##aff\nunaff\n##a\nb\n##ab\né\n".as_bytes(),
            Path::new("v"),
        )
        .unwrap();
        assert_eq!(v.len(), 8);
        assert_eq!(v.token_id("unaff"), Some(3));
        assert_eq!(v.token_id("##aff"), Some(2));
        assert_eq!(v.token_id("una"), None);
        assert_eq!(v.token_id(""), None);
        assert_eq!(v.longest_word_prefix("unaffable"), Some((3, 5)));
        assert_eq!(v.longest_word_prefix("unx"), Some((1, 2)));
        assert_eq!(v.longest_word_prefix("xun"), None);
        assert_eq!(v.longest_cont_prefix("abc"), Some((6, 2)));
        assert_eq!(v.longest_cont_prefix("affe"), Some((2, 3)));
        assert_eq!(v.longest_cont_prefix("b"), None);
        assert_eq!(v.longest_word_prefix("éa"), Some((7, 2)));
        assert_eq!(v.token(7), Some("é"));
        assert_eq!(v.token(8), None);
        assert_eq!(
            v.tokens().collect::<Vec<_>>().join(" "),
            "[PAD] un ##aff unaff ##a b ##ab é"
        );
    }

    #[test]
    fn wide_nodes_use_binary_search() {
        let text: String = (b'!'..=b'~').map(|b| format!("x{}\n", b as char)).collect();
        let v = Vocab::parse(text.as_bytes(), Path::new("v")).unwrap();
        for (id, b) in (b'!'..=b'~').enumerate() {
            let key = format!("x{}", b as char);
            assert_eq!(v.token_id(&key), Some(id as u32));
            assert_eq!(v.longest_word_prefix(&(key + "zz")), Some((id as u32, 2)));
        }
    }
}
