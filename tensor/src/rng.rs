//! Philox4x32-10, a counter-based generator: the random bits for element `i` of a draw are a pure
//! function of (seed, counter), so the CPU and a GPU kernel (one thread per element) produce the
//! same stream for a seed without sharing state.
//!
//! Stream layout: a draw of `n` elements at generator offset `o` uses counter blocks
//! `o, o+1, ...`; each block yields four 32-bit words. Uniform element `i` takes word `i % 4` of
//! block `o + i / 4`; normal element `i` takes words 0,1 (i even) or 2,3 (i odd) of block
//! `o + i / 2` (Box-Muller, cosine branch). After a draw the offset advances past the blocks used.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The Philox4x32 bijection with 10 rounds: 128-bit counter, 64-bit key, 128 random bits out.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The four words of counter block `block` under `seed`.
#[inline]
pub fn philox_block(seed: u64, block: u64) -> [u32; 4] {
    philox4x32_10(
        [block as u32, (block >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// A 32-bit word to a float in [0, 1) with 24 random bits.
#[inline]
pub fn word_to_unit(w: u32) -> f32 {
    (w >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform [0, 1) element `i` of the draw starting at block `offset`.
#[inline]
pub fn uniform_at(seed: u64, offset: u64, i: u64) -> f32 {
    word_to_unit(philox_block(seed, offset + i / 4)[(i % 4) as usize])
}

/// A u8 mask over uniform elements `0..n` of the draw starting at block `offset`: `below` where
/// the uniform is < `p`, `1 - below` elsewhere (bernoulli: below = 1; dropout's keep-mask:
/// below = 0). Same numbers as `uniform_at`, but one Philox block per four elements, in parallel.
pub fn uniform_mask(seed: u64, offset: u64, n: usize, p: f32, below: u8) -> Vec<u8> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14; // a multiple of 4 * LANES, so every chunk starts on a block
    let mut m = vec![0u8; n];
    m.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let first = offset + (c * CHUNK / 4) as u64;
        let (lanes, rest) = chunk.split_at_mut(chunk.len() / (4 * LANES) * (4 * LANES));
        mask_lanes(seed, first, p, below, lanes);
        let first = first + (lanes.len() / 4) as u64;
        for (q, quad) in rest.chunks_mut(4).enumerate() {
            let w = philox_block(seed, first + q as u64);
            for (x, &word) in quad.iter_mut().zip(&w) {
                *x = mask_value(word, p, below);
            }
        }
    });
    m
}

/// One mask value from one Philox word: `below` where its uniform is under `p`.
#[inline(always)]
fn mask_value(word: u32, p: f32, below: u8) -> u8 {
    if word_to_unit(word) < p {
        below
    } else {
        1 - below
    }
}

/// Philox blocks computed side by side by [`mask_lanes`]: 16 u32 lanes, one zmm per word.
const LANES: usize = 16;

crate::cpu::simd::multiversion! {
    /// [`uniform_mask`] over `out` (a multiple of 4 * LANES mask values, u8 in practice) from
    /// block `first` on:
    /// LANES consecutive blocks at a time, each word of the Philox state an array of LANES
    /// lanes, so the rounds vectorise (the same arithmetic as [`philox4x32_10`], lane by lane).
    fn mask_lanes<T: From<u8>>(seed: u64, first: u64, p: f32, below: u8, out: &mut [T]) {
        for (g, group) in out.chunks_exact_mut(4 * LANES).enumerate() {
            let block = first + (g * LANES) as u64;
            let mut x0: [u32; LANES] = std::array::from_fn(|l| (block + l as u64) as u32);
            let mut x1: [u32; LANES] = std::array::from_fn(|l| ((block + l as u64) >> 32) as u32);
            let (mut x2, mut x3) = ([0u32; LANES], [0u32; LANES]);
            let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
            for _ in 0..10 {
                for l in 0..LANES {
                    let p0 = (M0 as u64) * (x0[l] as u64);
                    let p1 = (M1 as u64) * (x2[l] as u64);
                    let (n0, n2) = ((p1 >> 32) as u32 ^ x1[l] ^ k0, (p0 >> 32) as u32 ^ x3[l] ^ k1);
                    (x0[l], x1[l], x2[l], x3[l]) = (n0, p1 as u32, n2, p0 as u32);
                }
                (k0, k1) = (k0.wrapping_add(W0), k1.wrapping_add(W1));
            }
            for (l, quad) in group.chunks_exact_mut(4).enumerate() {
                for (x, word) in quad.iter_mut().zip([x0[l], x1[l], x2[l], x3[l]]) {
                    *x = T::from(mask_value(word, p, below));
                }
            }
        }
    }
}

/// Standard normal element `i` of the draw starting at block `offset` (computed in f64).
#[inline]
pub fn normal_at(seed: u64, offset: u64, i: u64) -> f64 {
    let w = philox_block(seed, offset + i / 2);
    let j = 2 * (i % 2) as usize;
    // u1 in (0, 1] so the log is finite; u2 in [0, 1).
    let u1 = (w[j] as f64 + 1.0) / 4_294_967_296.0;
    let u2 = w[j + 1] as f64 / 4_294_967_296.0;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A seeded generator: a seed and the next unused counter block. Cloning it forks the stream
/// (both clones produce the same numbers), which checkpoints rely on to resume exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rng {
    pub seed: u64,
    pub offset: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { seed, offset: 0 }
    }

    /// Reserves the blocks a draw of `n` elements at `per_block` elements a block uses and
    /// returns the draw's starting block.
    pub fn reserve(&mut self, n: usize, per_block: usize) -> u64 {
        let start = self.offset;
        self.offset += n.div_ceil(per_block) as u64;
        start
    }

    /// `n` uniform floats in [0, 1).
    pub fn uniform_vec(&mut self, n: usize) -> Vec<f32> {
        let off = self.reserve(n, 4);
        (0..n as u64)
            .map(|i| uniform_at(self.seed, off, i))
            .collect()
    }

    /// `n` standard normal draws.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f64> {
        let off = self.reserve(n, 2);
        (0..n as u64)
            .map(|i| normal_at(self.seed, off, i))
            .collect()
    }

    /// A uniform integer in `0..n` (for samplers; not part of the tensor streams).
    pub fn below(&mut self, n: u64) -> u64 {
        let w = philox_block(self.seed, self.offset);
        self.offset += 1;
        ((((w[0] as u64) << 32 | w[1] as u64) as u128 * n as u128) >> 64) as u64
    }

    /// Fisher-Yates shuffle in place, one [`below`](Self::below) draw per element after the
    /// first (the samplers' and data builders' shuffle).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32_10).
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    /// The lane-parallel mask equals the one-block-at-a-time definition (`uniform_at`) at
    /// every length around the lane group and chunk sizes, at offsets that carry into the
    /// counter's high word inside a lane group, for both polarities.
    #[test]
    fn uniform_mask_is_uniform_at_element_by_element() {
        for &(n, offset) in &[
            (0, 0),
            (1, 3),
            (63, 0),
            (64, 9),
            (65, 1 << 20),
            (16_384 + 70, (1u64 << 32) - 5),
            (40_001, u64::MAX - 20_000),
        ] {
            for (p, below) in [(0.1f32, 0u8), (0.7, 1)] {
                let got = uniform_mask(11, offset, n, p, below);
                let want: Vec<u8> = (0..n as u64)
                    .map(|i| match uniform_at(11, offset, i) < p {
                        true => below,
                        false => 1 - below,
                    })
                    .collect();
                assert!(got == want, "n {n}, offset {offset}, p {p}");
            }
        }
    }

    #[test]
    fn uniform_moments_and_range() {
        let v = Rng::new(7).uniform_vec(100_000);
        assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    }

    #[test]
    fn normal_moments() {
        let v = Rng::new(3).normal_vec(100_000);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn offsets_make_draws_independent_and_reproducible() {
        let mut a = Rng::new(1);
        let x = a.uniform_vec(10);
        let y = a.uniform_vec(10);
        assert_ne!(x, y);
        let mut b = Rng::new(1);
        assert_eq!(b.uniform_vec(10), x);
    }
}
