//! Dropout draws keyed by batch row, so that a batch computed in parts draws the masks it would
//! draw whole: the gradient cache encodes a batch chunk by chunk, and data-parallel ranks each
//! compute their rows of a global batch.
//!
//! A dropout over a batch-first tensor of `total` rows takes `n = total * per_row` uniform
//! elements from the generator: element `i` comes from Philox block `offset + i / 4` (lane
//! `i % 4`), and the generator then moves `ceil(n / 4)` blocks on (`tensor::rng`). Rows
//! `start..start + len` of it are elements `start * per_row ..`, which a draw of their own
//! reproduces exactly when it starts at block `offset + start * per_row / 4`: the part's forward
//! draws there and the generator moves on as far as the whole batch's draw would take it.
//!
//! The one condition: `start * per_row` must be a multiple of 4 (a draw starts on a block). For
//! BERT, `per_row` is `seq_len * hidden` (hidden is a multiple of 4 in every released model) or
//! `heads * seq_len^2` (attention probabilities: a multiple of 4 whenever `heads` is, or the
//! sequence length is even); a part that breaks it is an error naming the sizes.

use tensor::{bail, Result, Rng};

/// Elements of a uniform draw per Philox block (`Rng::reserve(n, 4)`, as dropout draws).
const PER_BLOCK: usize = 4;

/// Rows `start..start + len` of a batch of `total` rows: the part of the batch a forward pass
/// computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRows {
    pub start: usize,
    pub len: usize,
    pub total: usize,
}

impl BatchRows {
    /// Errors unless `start..start + len` is a non-empty range inside `0..total`.
    pub fn new(start: usize, len: usize, total: usize) -> Result<BatchRows> {
        if len == 0 || start + len > total {
            bail!(
                "BatchRows",
                "rows {start}..{} are not a non-empty part of a batch of {total}",
                start + len
            );
        }
        Ok(BatchRows { start, len, total })
    }

    /// The generator a uniform draw of `n` elements over these rows draws from, so that it
    /// draws what the same rows draw in the whole batch's draw; `rng` moves on past the whole
    /// batch's draw (`total / len * n` elements). Errors unless `n` splits into `len` equal rows
    /// and this part starts on a Philox block (see the module docs).
    pub fn uniform_draw(self, rng: &mut Rng, n: usize) -> Result<Rng> {
        if !n.is_multiple_of(self.len) {
            bail!(
                "BatchRows",
                "a draw of {n} elements does not split into {} equal rows",
                self.len
            );
        }
        let per_row = n / self.len;
        let first = self.start * per_row;
        if !first.is_multiple_of(PER_BLOCK) {
            bail!(
                "BatchRows",
                "rows {}.. of a batch of {} start at element {first} of a dropout draw of {} \
                 elements per row, not on a Philox block of {PER_BLOCK}: this part cannot draw \
                 the whole batch's masks (use an even sequence length, or parts whose first row \
                 is even)",
                self.start,
                self.total,
                per_row
            );
        }
        let part = Rng {
            seed: rng.seed,
            offset: rng.offset + (first / PER_BLOCK) as u64,
        };
        rng.reserve(per_row * self.total, PER_BLOCK);
        Ok(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::{DType, Device, Tensor};

    /// The keep-masks of `x`'s dropout, drawn whole or as the parts `rows`, concatenated.
    fn masks(x: &Tensor, parts: &[BatchRows]) -> (Vec<u8>, Rng) {
        let mut rng = Rng { seed: 5, offset: 9 };
        let mut out = Vec::new();
        for rows in parts {
            let mut at = rng;
            let part = x.narrow(0, rows.start, rows.len).unwrap();
            let mut draw = rows.uniform_draw(&mut at, part.elem_count()).unwrap();
            out.extend(
                part.dropout(0.3, &mut draw)
                    .unwrap()
                    .1
                    .to_vec::<u8>()
                    .unwrap(),
            );
            if rows.start + rows.len == rows.total {
                rng = at;
            }
        }
        (out, rng)
    }

    #[test]
    fn parts_draw_the_whole_batchs_masks_and_move_the_generator_as_far() {
        // 6 rows of 2 x 3 = 6 elements: even rows start on a block.
        let x = Tensor::ones(&[6, 2, 3], DType::F32, Device::Cpu).unwrap();
        let mut whole_rng = Rng { seed: 5, offset: 9 };
        let whole = x
            .dropout(0.3, &mut whole_rng)
            .unwrap()
            .1
            .to_vec::<u8>()
            .unwrap();
        assert!(whole.contains(&0) && whole.contains(&1));
        let split = |sizes: &[usize]| {
            let mut start = 0;
            let parts: Vec<BatchRows> = sizes
                .iter()
                .map(|&len| {
                    start += len;
                    BatchRows::new(start - len, len, 6).unwrap()
                })
                .collect();
            masks(&x, &parts)
        };
        for sizes in [&[6][..], &[2, 2, 2], &[4, 2], &[2, 4]] {
            let (got, rng) = split(sizes);
            assert_eq!(got, whole, "{sizes:?}");
            assert_eq!(rng, whole_rng, "{sizes:?}");
        }
        // Row 1 starts at element 6, inside block 1.
        let e = BatchRows::new(1, 1, 6)
            .unwrap()
            .uniform_draw(&mut Rng::new(0), 6)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not on a Philox block"), "{e}");
        assert!(BatchRows::new(0, 2, 6)
            .unwrap()
            .uniform_draw(&mut Rng::new(0), 7)
            .is_err());
        assert!(BatchRows::new(5, 2, 6).is_err() && BatchRows::new(0, 0, 6).is_err());
    }
}
