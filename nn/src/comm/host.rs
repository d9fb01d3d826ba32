//! Small host-side collectives built on [`Communicator::all_gather_host`], for the bookkeeping of a
//! data-parallel trainer (nothing here touches a device):
//!
//! - [`all_ok`]: every rank reports whether its part of a phase (writing a checkpoint, opening the
//!   data) succeeded; all fail together, naming the first rank that did not;
//! - [`sum_f64`]: the elementwise sum of a few f64 (`train-retriever`'s logged losses), taken in
//!   rank order on every rank, so every rank logs the same bits.

use super::Communicator;
use tensor::{Error, Result};

const OP: &str = "Communicator";

/// `Ok` on every rank when `local` is `Ok` on every rank; otherwise every rank returns an error
/// naming the first failing rank and its message (its own error when it failed itself).
pub fn all_ok<C: Communicator + ?Sized>(comm: &C, what: &str, local: Result<()>) -> Result<()> {
    if comm.world_size() == 1 {
        return local;
    }
    let mut words = vec![local.is_ok() as u64];
    if let Err(e) = &local {
        words.extend(e.to_string().bytes().map(u64::from));
    }
    let all = comm.all_gather_host(words)?;
    local?;
    match all.iter().position(|w| w.first() != Some(&1)) {
        None => Ok(()),
        Some(r) => {
            let msg: String = all[r]
                .iter()
                .skip(1)
                .map(|&b| char::from(b as u8))
                .collect();
            Err(Error::op(OP, format!("rank {r} failed {what}: {msg}")))
        }
    }
}

/// The elementwise sum over ranks of `values` (the same length on every rank), added in rank order
/// 0, 1, ... so every rank gets the same bits.
pub fn sum_f64<C: Communicator + ?Sized>(comm: &C, values: &[f64]) -> Result<Vec<f64>> {
    if comm.world_size() == 1 {
        return Ok(values.to_vec());
    }
    let all = comm.all_gather_host(values.iter().map(|v| v.to_bits()).collect())?;
    if let Some(r) = all.iter().position(|w| w.len() != values.len()) {
        return Err(Error::op(
            OP,
            format!(
                "sum_f64: rank {r} passes {} values, this rank {}",
                all[r].len(),
                values.len()
            ),
        ));
    }
    let mut sum = vec![0f64; values.len()];
    for words in &all {
        for (s, w) in sum.iter_mut().zip(words) {
            *s += f64::from_bits(*w);
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::thread_group::tests::on_ranks;

    #[test]
    fn sums_in_rank_order() {
        let got = on_ranks(3, |c| {
            let r = c.rank() as f64;
            sum_f64(&c, &[0.1 * (r + 1.0), r]).unwrap()
        });
        let want = vec![0.1 + 0.2 + 0.1 * 3.0, 3.0];
        for sum in got {
            assert_eq!(sum, want);
        }
    }

    #[test]
    fn a_failing_rank_fails_everyone_by_name() {
        let got = on_ranks(3, |c| {
            let local = if c.rank() == 1 {
                Err(Error::op("write", "disk full"))
            } else {
                Ok(())
            };
            all_ok(&c, "writing checkpoint-3", local)
                .unwrap_err()
                .to_string()
        });
        for (r, e) in got.iter().enumerate() {
            if r == 1 {
                assert!(e.contains("disk full") && !e.contains("rank 1"), "{e}");
            } else {
                assert!(
                    e.contains("rank 1 failed writing checkpoint-3") && e.contains("disk full"),
                    "{e}"
                );
            }
        }
        assert!(on_ranks(2, |c| all_ok(&c, "x", Ok(())).is_ok())
            .into_iter()
            .all(|b| b));
    }
}
