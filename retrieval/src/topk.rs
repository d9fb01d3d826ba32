//! The running top-k of one query during exact search: the `k` best corpus rows seen so far,
//! fed one row of scores at a time.
//!
//! Rank order (a total order, so the result never depends on blocking or thread count): higher
//! score first, NaN below every number; equal scores by lower corpus index first. Corpus indices
//! are global (shards concatenated in the order given), and rows arrive in increasing index
//! order, which is what makes the one-compare rejection below exact: a new score equal to the
//! worst kept score comes from a later row, so it ranks after it and can be dropped.
//!
//! Layout: an unsorted buffer of up to `2k` candidates (at least `k + 256`). Until the buffer
//! first fills, every score is taken. Then the buffer is cut to its best `k` (a linear-time
//! selection, not a sort) and the worst kept score becomes the threshold; from then on a score
//! enters only if it is strictly greater. Scores are tested 16 at a time (one vector compare:
//! most chunks hold no candidate) and the buffer is cut again whenever it fills. Only the final
//! `k` are sorted.

use std::cmp::Ordering;

/// One search result: a corpus row (global index) and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub index: u32,
    pub score: f32,
}

/// The rank order of the module doc: `Less` means `a` ranks before `b`.
#[inline]
pub fn rank_order(a: &Hit, b: &Hit) -> Ordering {
    let by_score = match (a.score.is_nan(), b.score.is_nan()) {
        (false, false) => b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal),
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
    };
    by_score.then(a.index.cmp(&b.index))
}

/// Scores tested per vector compare.
const CHUNK: usize = 16;

/// The running top-k (module doc).
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    cap: usize,
    buf: Vec<Hit>,
    /// The worst kept score once `pruning`; a score must be greater to enter.
    threshold: f32,
    /// True once the buffer holds `k` hits and `threshold` is a number.
    pruning: bool,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        let cap = (2 * k).max(k + 256);
        TopK {
            k,
            cap,
            buf: Vec::with_capacity(if k == 0 { 0 } else { cap }),
            threshold: f32::NEG_INFINITY,
            pruning: false,
        }
    }

    /// Offers `scores[j]` for corpus row `first + j`. Rows must come in increasing index order
    /// across calls (module doc).
    pub fn push_row(&mut self, scores: &[f32], first: u32) {
        if self.k == 0 {
            return;
        }
        let mut j = 0;
        while j < scores.len() && !self.pruning {
            let take = (self.cap - self.buf.len()).min(scores.len() - j);
            self.buf.extend(
                scores[j..j + take]
                    .iter()
                    .enumerate()
                    .map(|(i, &score)| Hit {
                        index: first + (j + i) as u32,
                        score,
                    }),
            );
            j += take;
            if self.buf.len() == self.cap {
                self.cut();
            }
        }
        while j < scores.len() {
            let end = (j + CHUNK).min(scores.len());
            let chunk = &scores[j..end];
            let threshold = self.threshold;
            // Branch-free count: compiles to vector compares; most chunks have no candidate.
            let above = chunk.iter().fold(0u32, |n, &s| n + (s > threshold) as u32);
            if above > 0 {
                for (i, &score) in chunk.iter().enumerate() {
                    if score > self.threshold || !self.pruning {
                        self.buf.push(Hit {
                            index: first + (j + i) as u32,
                            score,
                        });
                        if self.buf.len() == self.cap {
                            self.cut();
                        }
                    }
                }
            }
            j = end;
            if !self.pruning {
                // A NaN threshold (fewer than k numbers so far): take the rest unfiltered.
                return self.push_row(&scores[j..], first + j as u32);
            }
        }
    }

    /// Keeps the best `k` of the buffer and sets the threshold to the worst of them.
    fn cut(&mut self) {
        let k = self.k;
        if self.buf.len() > k {
            self.buf.select_nth_unstable_by(k - 1, rank_order);
            self.buf.truncate(k);
        }
        let worst = self.buf[k - 1].score;
        self.threshold = worst;
        self.pruning = !worst.is_nan();
    }

    /// The best `min(k, rows offered)` hits, best first.
    pub fn into_sorted(mut self) -> Vec<Hit> {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, rank_order);
            self.buf.truncate(self.k);
        }
        self.buf.sort_unstable_by(rank_order);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::Rng;

    /// Every (index, score), fully sorted by rank order, first k.
    fn reference(scores: &[f32], k: usize) -> Vec<Hit> {
        let mut all: Vec<Hit> = scores
            .iter()
            .enumerate()
            .map(|(i, &score)| Hit {
                index: i as u32,
                score,
            })
            .collect();
        all.sort_by(rank_order);
        all.truncate(k);
        all
    }

    fn same(a: &[Hit], b: &[Hit]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.index == y.index && x.score.to_bits() == y.score.to_bits())
    }

    #[test]
    fn equals_a_full_sort_with_ties_nan_and_any_row_split() {
        let mut rng = Rng::new(5);
        let pool = [-1.0f32, 0.0, 0.5, 2.0, f32::NEG_INFINITY, f32::NAN, 3.0];
        for &(n, nan) in &[(5000usize, false), (3000, true), (40, true), (1, false)] {
            let scores: Vec<f32> = rng
                .uniform_vec(n)
                .iter()
                .map(|&u| {
                    let p = pool[(u * 7.0) as usize % 7];
                    if p.is_nan() && !nan {
                        1.0
                    } else {
                        p
                    }
                })
                .collect();
            for k in [0, 1, 3, 17, 300, 1000, n, n + 5] {
                let want = reference(&scores, k);
                for row in [1, 7, 16, 100, 4096] {
                    let mut top = TopK::new(k);
                    let mut first = 0;
                    for chunk in scores.chunks(row) {
                        top.push_row(chunk, first);
                        first += chunk.len() as u32;
                    }
                    let got = top.into_sorted();
                    assert!(same(&got, &want), "n {n} k {k} row {row} nan {nan}");
                }
            }
        }
    }

    #[test]
    fn all_nan_then_numbers_still_finds_the_numbers() {
        // The threshold stays NaN while fewer than k numbers have been seen.
        let mut scores = vec![f32::NAN; 600];
        scores.extend([1.0, -2.0, f32::NEG_INFINITY]);
        let mut top = TopK::new(3);
        top.push_row(&scores, 0);
        let got = top.into_sorted();
        let idx: Vec<u32> = got.iter().map(|h| h.index).collect();
        assert_eq!(idx, vec![600, 601, 602]);
    }
}
