//! Spans of one document and their contextual spans (REFERENCE §1), on token ids.
//!
//! A document is a list of tokenized sentences (no special tokens; empty ones are dropped here).
//! [`build_spans`] groups consecutive sentences into [`Span`]s, keeping the sentence structure;
//! [`contextual_spans`] builds, for each anchor span, its `random_sampled`, `nearby` and
//! `overlap` spans as token ranges of the document ([`DocumentSpans`], or flat id lists as
//! [`SpanSet`]s); [`document_spans`] does both and drops
//! documents with fewer than two spans.
//!
//! Rules (the original `make_data` script's, in our words):
//! - Span building: sentences are appended to the current span and its running token count
//!   updated; as soon as the count *exceeds* the target the span is closed (so it may be longer
//!   than the target) and a new target drawn. The target is `maxlen`, except with probability
//!   `short_sentence_prob` it is uniform in `[2, maxlen]`. A trailing partial span is kept.
//! - `random_sampled`: a uniformly random span `j != i` with `|j - i| <= window_size`; the anchor
//!   itself when there is none.
//! - `nearby`: span `i - 1` or `i + 1`, uniformly among those that exist (the anchor itself when
//!   neither exists).
//! - `overlap`: with `len` the anchor's sentence count, `k = 1` when `len / 2 < 2`, else uniform in
//!   `[1, len / 2]`. For every span but the last: the anchor's last `k` sentences, then the
//!   following spans' sentences in order. For the last span: the anchor's first `k` sentences,
//!   preceded by the previous spans' sentences taken backwards. **Boundary:** "until `maxlen`
//!   tokens are reached" means whole sentences are added while the running count is still below
//!   `maxlen`; the sentence that reaches or crosses `maxlen` is kept whole and the result is not
//!   truncated (as the original does; the collator crops long texts). If the anchor's `k`
//!   sentences already reach `maxlen`, nothing is added.
//!
//! Random draws, in order, from the document's generator: the span targets while building
//! (one unit draw per target, plus one integer draw when it is short), then `random_sampled` for
//! every span, then `nearby` for every span, then `k` for every span whose `len / 2 >= 2`.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use tensor::Rng;

use crate::draw;

/// Consecutive non-empty sentences of a document, as token ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub sentences: Vec<Vec<u32>>,
}

impl Span {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.sentences.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The span's ids, sentences concatenated.
    pub fn ids(&self) -> Vec<u32> {
        self.sentences.concat()
    }
}

/// The four texts stored per span, in storage order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Anchor,
    RandomSampled,
    Nearby,
    Overlap,
}

impl SpanKind {
    pub const ALL: [SpanKind; 4] = [
        SpanKind::Anchor,
        SpanKind::RandomSampled,
        SpanKind::Nearby,
        SpanKind::Overlap,
    ];
    /// The contextual kinds, in the order `mixed` chooses among.
    pub const CONTEXTUAL: [SpanKind; 3] =
        [SpanKind::RandomSampled, SpanKind::Nearby, SpanKind::Overlap];

    /// The JSON key (`anchor`, `random_sampled`, `nearby`, `overlap`).
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Anchor => "anchor",
            SpanKind::RandomSampled => "random_sampled",
            SpanKind::Nearby => "nearby",
            SpanKind::Overlap => "overlap",
        }
    }

    pub fn from_name(name: &str) -> Option<SpanKind> {
        SpanKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Position in [`SpanKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One anchor span and its three contextual spans: a line item of `data.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanSet {
    pub anchor: Vec<u32>,
    pub random_sampled: Vec<u32>,
    pub nearby: Vec<u32>,
    pub overlap: Vec<u32>,
}

impl SpanSet {
    pub fn get(&self, kind: SpanKind) -> &[u32] {
        match kind {
            SpanKind::Anchor => &self.anchor,
            SpanKind::RandomSampled => &self.random_sampled,
            SpanKind::Nearby => &self.nearby,
            SpanKind::Overlap => &self.overlap,
        }
    }
}

/// The next span target: `maxlen`, or with probability `short_sentence_prob` uniform in
/// `[2, maxlen]`.
fn draw_target(rng: &mut Rng, maxlen: usize, short_sentence_prob: f64) -> usize {
    if draw::unit(rng) < short_sentence_prob {
        draw::range_inclusive(rng, 2, maxlen)
    } else {
        maxlen
    }
}

/// Groups sentences into spans (module doc); empty sentences are dropped.
pub fn build_spans(
    sentences: impl IntoIterator<Item = Vec<u32>>,
    maxlen: usize,
    short_sentence_prob: f64,
    rng: &mut Rng,
) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut current = Span::default();
    let mut running = 0usize;
    let mut target = draw_target(rng, maxlen, short_sentence_prob);
    for sentence in sentences.into_iter().filter(|s| !s.is_empty()) {
        running += sentence.len();
        current.sentences.push(sentence);
        if running > target {
            spans.push(std::mem::take(&mut current));
            running = 0;
            target = draw_target(rng, maxlen, short_sentence_prob);
        }
    }
    if !current.sentences.is_empty() {
        spans.push(current);
    }
    spans
}

/// Uniform over the spans `j != i` with `|j - i| <= window`; `i` when there is none.
fn random_in_window(rng: &mut Rng, i: usize, n: usize, window: usize) -> usize {
    let lo = i.saturating_sub(window);
    let hi = (i.saturating_add(window)).min(n - 1);
    let others = hi - lo; // the window's size minus the anchor
    if others == 0 {
        return i;
    }
    let j = lo + draw::index(rng, others);
    if j >= i {
        j + 1
    } else {
        j
    }
}

/// Span `i - 1` or `i + 1`, uniformly among those that exist; `i` when neither does.
fn nearby_index(rng: &mut Rng, i: usize, n: usize) -> usize {
    match (i > 0, i + 1 < n) {
        (true, true) => {
            if draw::index(rng, 2) == 0 {
                i - 1
            } else {
                i + 1
            }
        }
        (true, false) => i - 1,
        (false, true) => i + 1,
        (false, false) => i,
    }
}

/// A document's token stream (its spans' sentences concatenated) and, per span, the token range
/// of each [`SpanKind`] in that stream. Every kind is a contiguous range of the document: the
/// anchors tile it, `random_sampled` and `nearby` are other anchors, and `overlap` runs across
/// neighbouring spans. The token store keeps exactly this (tokens once, ranges per kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentSpans {
    pub tokens: Vec<u32>,
    pub ranges: Vec<[Range<usize>; 4]>,
}

impl DocumentSpans {
    pub fn num_spans(&self) -> usize {
        self.ranges.len()
    }

    /// The ids of span `i`'s text of `kind`.
    pub fn get(&self, i: usize, kind: SpanKind) -> &[u32] {
        &self.tokens[self.ranges[i][kind.index()].clone()]
    }

    /// Span `i` as a `data.jsonl` item.
    pub fn span_set(&self, i: usize) -> SpanSet {
        SpanSet {
            anchor: self.get(i, SpanKind::Anchor).to_vec(),
            random_sampled: self.get(i, SpanKind::RandomSampled).to_vec(),
            nearby: self.get(i, SpanKind::Nearby).to_vec(),
            overlap: self.get(i, SpanKind::Overlap).to_vec(),
        }
    }

    pub fn span_sets(&self) -> Vec<SpanSet> {
        (0..self.num_spans()).map(|i| self.span_set(i)).collect()
    }
}

/// Sentence boundaries of a document's token stream.
struct SentenceIndex {
    /// Token offset of each sentence's start, plus the stream length at the end.
    bounds: Vec<usize>,
    /// Index of each span's first sentence, plus the sentence count at the end.
    first: Vec<usize>,
}

impl SentenceIndex {
    fn new(spans: &[Span]) -> SentenceIndex {
        let mut bounds = vec![0];
        let mut first = vec![0];
        for span in spans {
            for s in &span.sentences {
                bounds.push(bounds.last().unwrap() + s.len());
            }
            first.push(bounds.len() - 1);
        }
        SentenceIndex { bounds, first }
    }

    /// Token range of span `i`.
    fn span(&self, i: usize) -> Range<usize> {
        self.bounds[self.first[i]]..self.bounds[self.first[i + 1]]
    }

    /// The overlap range of span `i` given `k` (module doc).
    fn overlap(&self, i: usize, k: usize, maxlen: usize) -> Range<usize> {
        let (first, next) = (self.first[i], self.first[i + 1]);
        let num_sentences = self.bounds.len() - 1;
        if next < num_sentences {
            // Not the last span: its last k sentences, then whole sentences forward.
            let start = self.bounds[next - k];
            let mut end = self.bounds[next];
            let mut s = next;
            while end - start < maxlen && s < num_sentences {
                s += 1;
                end = self.bounds[s];
            }
            start..end
        } else {
            // The last span: its first k sentences, preceded by whole sentences backwards.
            let end = self.bounds[first + k];
            let mut start = self.bounds[first];
            let mut s = first;
            while end - start < maxlen && s > 0 {
                s -= 1;
                start = self.bounds[s];
            }
            start..end
        }
    }
}

/// The contextual spans of every span of a document (module doc).
pub fn contextual_spans(
    spans: &[Span],
    maxlen: usize,
    window_size: usize,
    rng: &mut Rng,
) -> DocumentSpans {
    let n = spans.len();
    let random: Vec<usize> = (0..n)
        .map(|i| random_in_window(rng, i, n, window_size))
        .collect();
    let nearby: Vec<usize> = (0..n).map(|i| nearby_index(rng, i, n)).collect();
    let index = SentenceIndex::new(spans);
    let ranges = (0..n)
        .map(|i| {
            let half = spans[i].sentences.len() / 2;
            let k = if half < 2 {
                1
            } else {
                draw::range_inclusive(rng, 1, half)
            };
            [
                index.span(i),
                index.span(random[i]),
                index.span(nearby[i]),
                index.overlap(i, k, maxlen),
            ]
        })
        .collect();
    let tokens = spans.iter().flat_map(|s| s.sentences.concat()).collect();
    DocumentSpans { tokens, ranges }
}

/// Spans and contextual spans of one document; `None` when it has fewer than two spans.
pub fn document_spans(
    sentences: impl IntoIterator<Item = Vec<u32>>,
    maxlen: usize,
    window_size: usize,
    short_sentence_prob: f64,
    rng: &mut Rng,
) -> Option<DocumentSpans> {
    let spans = build_spans(sentences, maxlen, short_sentence_prob, rng);
    if spans.len() < 2 {
        return None;
    }
    Some(contextual_spans(&spans, maxlen, window_size, rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sentence of `len` tokens whose ids identify it: `base * 1000 + t`.
    fn sent(base: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|t| base * 1000 + t).collect()
    }

    fn sentences(lens: &[usize]) -> Vec<Vec<u32>> {
        lens.iter()
            .enumerate()
            .map(|(i, &l)| sent(i as u32 + 1, l))
            .collect()
    }

    fn lens(span: &Span) -> Vec<usize> {
        span.sentences.iter().map(Vec::len).collect()
    }

    #[test]
    fn spans_close_when_the_target_is_exceeded() {
        let mut rng = Rng::new(1);
        let spans = build_spans(sentences(&[4, 4, 2, 0, 4, 1, 20, 3]), 10, 0.0, &mut rng);
        let got: Vec<Vec<usize>> = spans.iter().map(lens).collect();
        // 4+4+2 = 10 does not exceed 10; the next sentence closes the span at 14.
        assert_eq!(got, vec![vec![4, 4, 2, 4], vec![1, 20], vec![3]]);
        // Empty sentences are dropped; the ids are the input order.
        let all: Vec<u32> = spans.iter().flat_map(Span::ids).collect();
        assert_eq!(all, sentences(&[4, 4, 2, 0, 4, 1, 20, 3]).concat());
    }

    #[test]
    fn short_targets_lie_in_range() {
        let maxlen = 12;
        let mut rng = Rng::new(7);
        let input: Vec<usize> = (0..400).map(|i| 1 + (i * 7) % 5).collect();
        let spans = build_spans(sentences(&input), maxlen, 1.0, &mut rng);
        let mut seen_short = false;
        for s in &spans[..spans.len() - 1] {
            let without_last = s.len() - s.sentences.last().unwrap().len();
            // Closed when exceeding a target t in [2, maxlen]: len > t >= 2, len - last <= t.
            assert!(s.len() >= 3 && without_last <= maxlen, "{:?}", lens(s));
            seen_short |= s.len() <= maxlen / 2;
        }
        assert!(seen_short, "short targets should produce short spans");
        // With maxlen targets only, every closed span exceeds maxlen.
        let spans = build_spans(sentences(&input), maxlen, 0.0, &mut rng);
        assert!(spans[..spans.len() - 1].iter().all(|s| s.len() > maxlen));
        // Observed rate of short targets is near the probability.
        let mut rng = Rng::new(3);
        let short = (0..20_000)
            .filter(|_| draw_target(&mut rng, 128, 0.15) != 128)
            .count();
        // A short target equals 128 with probability 1/127; the rate is ~0.15 * 126/127.
        let rate = short as f64 / 20_000.0;
        assert!((rate - 0.15 * 126.0 / 127.0).abs() < 0.01, "{rate}");
    }

    fn overlap_span(spans: &[Span], i: usize, k: usize, maxlen: usize) -> Vec<u32> {
        let tokens: Vec<u32> = spans.iter().flat_map(Span::ids).collect();
        tokens[SentenceIndex::new(spans).overlap(i, k, maxlen)].to_vec()
    }

    fn span_of(sentence_lens: &[usize], first_id: u32) -> Span {
        Span {
            sentences: sentence_lens
                .iter()
                .enumerate()
                .map(|(i, &l)| sent(first_id + i as u32, l))
                .collect(),
        }
    }

    #[test]
    fn overlap_forward_stops_after_reaching_maxlen() {
        let spans = vec![
            span_of(&[3, 3, 3, 3], 1),
            span_of(&[2, 2], 10),
            span_of(&[5], 20),
        ];
        // k = 2: the anchor's last two sentences (6 tokens), then 2 + 2 = 10 reaches 10: stop.
        let o = overlap_span(&spans, 0, 2, 10);
        let expect = [sent(3, 3), sent(4, 3), sent(10, 2), sent(11, 2)].concat();
        assert_eq!(o, expect);
        // maxlen 11: 10 < 11, so the next sentence (5 tokens) is added whole: 15 tokens.
        let o = overlap_span(&spans, 0, 2, 11);
        assert_eq!(o.len(), 15);
        // The anchor part alone reaches maxlen: nothing is added.
        let o = overlap_span(&spans, 0, 1, 3);
        assert_eq!(o, sent(4, 3));
        // Middle span: k = 1, the rest of the document is short: everything after it.
        let o = overlap_span(&spans, 1, 1, 100);
        assert_eq!(o, [sent(11, 2), sent(20, 5)].concat());
    }

    #[test]
    fn overlap_of_the_last_span_goes_backwards() {
        let spans = vec![
            span_of(&[3, 3, 3], 1),
            span_of(&[2, 2], 10),
            span_of(&[4, 4, 4, 4], 20),
        ];
        // k = 2: first two sentences (8), then backwards 2 -> 10 reaches 10: stop.
        let o = overlap_span(&spans, 2, 2, 10);
        assert_eq!(o, [sent(11, 2), sent(20, 4), sent(21, 4)].concat());
        // k = 1 (4 tokens), backwards 6, 8, 11 < 12: one more sentence, 14 >= 12: stop.
        let o = overlap_span(&spans, 2, 1, 12);
        let expect = [
            sent(2, 3),
            sent(3, 3),
            sent(10, 2),
            sent(11, 2),
            sent(20, 4),
        ];
        assert_eq!(o, expect.concat());
    }

    #[test]
    fn contextual_spans_follow_the_rules() {
        let input: Vec<usize> = (0..300).map(|i| 1 + (i * 5) % 9).collect();
        for (seed, window) in [(1u64, 100usize), (2, 2), (3, 0)] {
            let mut rng = Rng::new(seed);
            let spans = build_spans(sentences(&input), 16, 0.15, &mut rng);
            let n = spans.len();
            assert!(n > 10);
            let doc = contextual_spans(&spans, 16, window, &mut rng);
            assert_eq!(doc.num_spans(), n);
            let sets = doc.span_sets();
            let ids: Vec<Vec<u32>> = spans.iter().map(Span::ids).collect();
            let mut random_offsets = std::collections::BTreeSet::new();
            for (i, set) in sets.iter().enumerate() {
                assert_eq!(set.anchor, ids[i]);
                let near = ids.iter().position(|s| *s == set.nearby).unwrap();
                assert!(near + 1 == i || near == i + 1, "nearby {near} of {i}");
                let r = ids.iter().position(|s| *s == set.random_sampled).unwrap();
                if window == 0 {
                    assert_eq!(r, i);
                } else {
                    assert!(r != i && r.abs_diff(i) <= window, "random {r} of {i}");
                    random_offsets.insert(r as isize - i as isize);
                }
                // Overlap: starts with the anchor's last k sentences (non-last) or ends with
                // its first k sentences (last), with k <= max(1, len / 2).
                let s = &spans[i].sentences;
                let kmax = (s.len() / 2).max(1);
                let ok = (1..=kmax).any(|k| {
                    if i + 1 < n {
                        set.overlap.starts_with(&s[s.len() - k..].concat())
                    } else {
                        set.overlap.ends_with(&s[..k].concat())
                    }
                });
                assert!(ok, "overlap of span {i}");
            }
            if window == 2 {
                assert_eq!(random_offsets.len(), 4, "{random_offsets:?}");
            }
        }
    }

    #[test]
    fn documents_with_one_span_are_dropped_and_draws_are_deterministic() {
        let mut rng = Rng::new(5);
        assert!(document_spans(sentences(&[3, 4]), 128, 100, 0.0, &mut rng).is_none());
        assert!(document_spans(Vec::<Vec<u32>>::new(), 128, 100, 0.0, &mut rng).is_none());
        let input = sentences(&(0..200).map(|i| 1 + i % 13).collect::<Vec<_>>());
        let a = document_spans(input.clone(), 32, 100, 0.15, &mut Rng::new(9)).unwrap();
        let b = document_spans(input.clone(), 32, 100, 0.15, &mut Rng::new(9)).unwrap();
        let c = document_spans(input, 32, 100, 0.15, &mut Rng::new(10)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn kind_names_round_trip() {
        for k in SpanKind::ALL {
            assert_eq!(SpanKind::from_name(k.name()), Some(k));
            assert_eq!(SpanKind::ALL[k.index()], k);
        }
        assert_eq!(SpanKind::from_name("bogus"), None);
    }
}
