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
//! enters only if it is strictly greater. Scores are tested 16 at a time (one vector compare
//! into a bit mask: most chunks hold no candidate) and the buffer is cut again whenever it fills.
//! Only the final `k` are sorted. (While fewer than `k` numbers have been seen the worst kept
//! score may be NaN; then filling simply goes on.) The buffer holds one integer [`rank_key`] per
//! candidate (score rank and index in a u64), so selection and sorting compare plain integers.

use std::cmp::Ordering;

/// One search result: a corpus row (global index) and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub index: u32,
    pub score: f32,
}

/// The score as an order-reversing integer: -0 as +0, NaN last (the high half of a rank key).
#[inline(always)]
fn score_rank(score: f32) -> u32 {
    let bits = (score + 0.0).to_bits(); // + 0.0 turns -0 into +0
                                        // Monotone map of the float order onto u32 (negative floats reversed)...
    let ordered = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    // ... with NaN below every number, then reversed: the best score gets the smallest rank.
    !(if score.is_nan() { 0 } else { ordered })
}

/// The score of a rank key (the inverse of `score_rank`; -0 comes back as +0, NaN as the
/// canonical NaN).
#[inline(always)]
fn key_score(key: u64) -> f32 {
    let ordered = !((key >> 32) as u32);
    if ordered == 0 {
        return f32::NAN;
    }
    f32::from_bits(if ordered >> 31 == 1 {
        ordered & !(1 << 31)
    } else {
        !ordered
    })
}

/// The rank order of the module doc as one integer, smaller first: the score's rank in the high
/// half, the index in the low half.
#[inline(always)]
pub fn rank_key(h: &Hit) -> u64 {
    key(h.score, h.index)
}

#[inline(always)]
fn key(score: f32, index: u32) -> u64 {
    (u64::from(score_rank(score)) << 32) | u64::from(index)
}

impl Hit {
    /// The hit a rank key encodes.
    #[inline]
    pub fn from_key(key: u64) -> Hit {
        Hit {
            index: key as u32,
            score: key_score(key),
        }
    }
}

/// The rank order of the module doc: `Less` means `a` ranks before `b`.
#[inline]
pub fn rank_order(a: &Hit, b: &Hit) -> Ordering {
    rank_key(a).cmp(&rank_key(b))
}

/// Bit `i` set when `chunk[i] > threshold` (false for NaN), from four SSE compares.
#[inline(always)]
fn above_mask(chunk: &[f32; CHUNK], threshold: f32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_cmpgt_ps, _mm_loadu_ps, _mm_movemask_ps, _mm_set1_ps};
        let p = chunk.as_ptr();
        // SAFETY: SSE is part of x86-64; the four unaligned loads read chunk[0..16].
        unsafe {
            let t = _mm_set1_ps(threshold);
            let m = |o: usize| _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(p.add(o)), t)) as u32;
            m(0) | m(4) << 4 | m(8) << 8 | m(12) << 12
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut mask = 0u32;
        for (i, &s) in chunk.iter().enumerate() {
            mask |= ((s > threshold) as u32) << i;
        }
        mask
    }
}

/// Scores tested per vector compare.
const CHUNK: usize = 16;

/// The running top-k (module doc).
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    cap: usize,
    /// Rank keys of the candidates (module doc): integers select and sort fastest.
    buf: Vec<u64>,
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

    /// The number of hits kept.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Offers `scores[j]` for corpus row `first + j`. Rows must come in increasing index order
    /// across calls (module doc).
    pub fn push_row(&mut self, scores: &[f32], first: u32) {
        if self.k == 0 {
            return;
        }
        let mut j = 0;
        // Filling: take everything until a cut gives a numeric threshold.
        while j < scores.len() && !self.pruning {
            let take = (self.cap - self.buf.len()).min(scores.len() - j);
            self.buf.extend(
                scores[j..j + take]
                    .iter()
                    .enumerate()
                    .map(|(i, &score)| key(score, first + (j + i) as u32)),
            );
            j += take;
            if self.buf.len() == self.cap {
                self.cut();
            }
        }
        // Pruning (for good: every hit that enters now is a number above a number, so later
        // thresholds are numbers too).
        if j < scores.len() {
            self.prune(&scores[j..], first + j as u32);
        }
    }

    /// The scan once pruning: a bit mask per chunk of 16, a slow path per set bit.
    fn prune(&mut self, scores: &[f32], first: u32) {
        let mut chunks = scores.chunks_exact(CHUNK);
        for (c, chunk) in chunks.by_ref().enumerate() {
            let chunk: &[f32; CHUNK] = chunk.try_into().expect("chunks_exact");
            let mut mask = above_mask(chunk, self.threshold);
            while mask != 0 {
                let i = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                self.offer(chunk[i], first + (c * CHUNK + i) as u32);
            }
        }
        let done = scores.len() - chunks.remainder().len();
        for (i, &s) in chunks.remainder().iter().enumerate() {
            self.offer(s, first + (done + i) as u32);
        }
    }

    /// Offers one score for corpus row `index`: the same as a one-element [`TopK::push_row`], for
    /// callers that offer only some rows (e.g. each block's best `k`, found on a GPU). Indices
    /// must still increase across calls.
    pub fn push(&mut self, score: f32, index: u32) {
        if self.k == 0 {
            return;
        }
        if self.pruning {
            self.offer(score, index);
        } else {
            self.buf.push(key(score, index));
            if self.buf.len() == self.cap {
                self.cut();
            }
        }
    }

    /// Takes one score while pruning (the threshold may have risen since the chunk's compare).
    #[inline]
    fn offer(&mut self, score: f32, index: u32) {
        if score > self.threshold {
            self.buf.push(key(score, index));
            if self.buf.len() == self.cap {
                self.cut();
            }
        }
    }

    /// Keeps the best `k` of the buffer and sets the threshold to the worst of them.
    fn cut(&mut self) {
        let k = self.k;
        if self.buf.len() > k {
            self.buf.select_nth_unstable(k - 1);
            self.buf.truncate(k);
        }
        let worst = key_score(self.buf[k - 1]);
        self.threshold = worst;
        self.pruning = !worst.is_nan();
    }

    /// The best `min(k, rows offered)` hits, best first. Scores come back bit for bit, except
    /// that -0 reads +0 and every NaN the canonical NaN.
    pub fn into_sorted(mut self) -> Vec<Hit> {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable(self.k - 1);
            self.buf.truncate(self.k);
        }
        self.buf.sort_unstable();
        self.buf.iter().map(|&k| Hit::from_key(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::Rng;

    /// Every (index, score), fully sorted by the module doc's order (written out with float
    /// compares, independent of `rank_key`), first k.
    fn reference(scores: &[f32], k: usize) -> Vec<Hit> {
        let mut all: Vec<Hit> = scores
            .iter()
            .enumerate()
            .map(|(i, &score)| Hit {
                index: i as u32,
                score,
            })
            .collect();
        all.sort_by(|a, b| {
            let by_score = match (a.score.is_nan(), b.score.is_nan()) {
                (false, false) => b.score.partial_cmp(&a.score).unwrap(),
                (nan_a, nan_b) => nan_a.cmp(&nan_b),
            };
            by_score.then(a.index.cmp(&b.index))
        });
        all.truncate(k);
        all
    }

    /// Same indices and scores (-0 equal to +0, NaN to NaN).
    fn same(a: &[Hit], b: &[Hit]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.index == y.index && (x.score == y.score || (x.score.is_nan() && y.score.is_nan()))
            })
    }

    #[test]
    fn rank_keys_order_scores_and_read_back() {
        let scores = [
            f32::INFINITY,
            3.5,
            1e-40,
            0.0,
            -0.0,
            -1e-40,
            -2.0,
            f32::NEG_INFINITY,
        ];
        for w in scores.windows(2) {
            let (a, b) = (key(w[0], 7), key(w[1], 3));
            if w[0] == w[1] {
                assert!(a > b, "equal scores rank by index: {w:?}");
            } else {
                assert!(a < b, "{w:?}");
            }
        }
        assert!(key(f32::NEG_INFINITY, 9) < key(f32::NAN, 0));
        assert!(key(-f32::NAN, 9) == key(f32::NAN, 9));
        for s in scores {
            let h = Hit::from_key(key(s, 42));
            assert_eq!((h.index, h.score), (42, s));
            assert_eq!(h.score.to_bits(), (s + 0.0).to_bits());
        }
        assert!(Hit::from_key(key(f32::NAN, 1)).score.is_nan());
        assert_eq!(
            rank_order(
                &Hit {
                    index: 1,
                    score: 0.0
                },
                &Hit {
                    index: 2,
                    score: -0.0
                }
            ),
            Ordering::Less
        );
    }

    #[test]
    fn equals_a_full_sort_with_ties_nan_and_any_row_split() {
        let mut rng = Rng::new(5);
        let pool = [
            -1.0f32,
            0.0,
            0.5,
            2.0,
            f32::NEG_INFINITY,
            f32::NAN,
            3.0,
            -0.0,
        ];
        for &(n, nan) in &[(5000usize, false), (3000, true), (40, true), (1, false)] {
            let scores: Vec<f32> = rng
                .uniform_vec(n)
                .iter()
                .map(|&u| {
                    let p = pool[(u * 8.0) as usize % 8];
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
