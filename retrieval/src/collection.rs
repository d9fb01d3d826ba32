//! TSV records looked up by id, for `build-train`: the passage collection tokenized once into one
//! flat id buffer ([`TokenizedCollection`]), and the query texts ([`read_texts`]).
//!
//! Records are parsed as in [`crate::tokenize`] (`id \t field [\t field ...]`, fields after the id
//! joined with `[SEP]`; errors name `file:line`). An id listed twice is an error naming both
//! lines. The original looks passages up by row number (`collection[int(pid)]`); looking them up
//! by id gives the same passages on MS MARCO (pids 0..N-1 in order) and also works when the ids
//! are not row numbers.

use std::collections::HashMap;
use std::path::Path;

use bert::Tokenizer;
use rayon::prelude::*;

use crate::lines::for_each_batch;
use crate::tokenize::parse_record;
use crate::{Error, Result};

/// Every passage of a collection as token ids (no special tokens, truncated), by pid.
pub struct TokenizedCollection {
    /// pid -> (position, line number).
    index: HashMap<String, (u32, usize)>,
    /// Passage `i` is `tokens[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    tokens: Vec<u32>,
}

fn duplicate(path: &Path, line: usize, id: &str, first: usize) -> Error {
    Error::line(
        path,
        line,
        format!("id {id:?} was already listed on line {first}"),
    )
}

impl TokenizedCollection {
    /// Reads and tokenizes (in parallel) every record of `path`, keeping the first `truncate`
    /// ids of each.
    pub fn read(path: impl AsRef<Path>, tokenizer: &Tokenizer, truncate: usize) -> Result<Self> {
        let path = path.as_ref();
        let mut c = TokenizedCollection {
            index: HashMap::new(),
            offsets: vec![0],
            tokens: Vec::new(),
        };
        for_each_batch(path, "tokenize collection", |lines| {
            let records: Vec<Option<(usize, &str, Vec<u32>)>> = lines
                .par_iter()
                .map(|line| {
                    Ok(parse_record(path, line)?.map(|(id, text)| {
                        (
                            line.number,
                            id,
                            tokenizer.encode(&text, false, Some(truncate)),
                        )
                    }))
                })
                .collect::<Result<_>>()?;
            for (number, id, ids) in records.into_iter().flatten() {
                let position = c.len() as u32;
                if let Some(&(_, first)) = c.index.get(id) {
                    return Err(duplicate(path, number, id, first));
                }
                c.index.insert(id.to_string(), (position, number));
                c.tokens.extend_from_slice(&ids);
                c.offsets.push(c.tokens.len());
            }
            Ok(())
        })?;
        if c.len() > u32::MAX as usize {
            return Err(Error::format(path, "more than 2^32 - 1 passages"));
        }
        Ok(c)
    }

    /// Passages in the collection.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position of passage `pid`.
    pub fn position(&self, pid: &str) -> Option<u32> {
        self.index.get(pid).map(|&(p, _)| p)
    }

    /// The token ids of the passage at `position`.
    pub fn tokens(&self, position: u32) -> &[u32] {
        let i = position as usize;
        &self.tokens[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// The texts of a query file (`qid \t text`), by id.
pub fn read_texts(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let mut texts = HashMap::new();
    let mut lines_of: HashMap<String, usize> = HashMap::new();
    for_each_batch(path, "read", |lines| {
        for line in lines {
            if let Some((id, text)) = parse_record(path, line)? {
                if let Some(&first) = lines_of.get(id) {
                    return Err(duplicate(path, line.number, id, first));
                }
                lines_of.insert(id.to_string(), line.number);
                texts.insert(id.to_string(), text);
            }
        }
        Ok(())
    })?;
    Ok(texts)
}
