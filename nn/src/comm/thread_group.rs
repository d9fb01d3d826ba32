//! [`ThreadGroup`]: CPU replicas as threads of one process, summing through shared memory.
//!
//! An all-reduce of a bucket of `n` elements runs in two exchanges, as a ring all-reduce does:
//! every rank shares its flattened bucket; rank `r` sums chunk `r` (elements
//! `r*n/world .. (r+1)*n/world`) over ranks 0, 1, ..., world-1, in that order; the chunk sums are
//! shared and every rank concatenates them. So each element is summed once, in rank order, and
//! every rank receives the same bits whatever the thread timing. Sums are taken in f64 and rounded
//! once to the bucket's dtype (f32, f64, f16 or bf16).
//!
//! An all-gather shares each rank's tensor (any dtype) in one exchange; every rank concatenates
//! them in rank order, so the result holds every rank's values exactly.

use super::rendezvous::{members, Member};
use super::{
    check_same_buckets, check_same_tensors, gathered_shape, Communicator, DEFAULT_TIMEOUT,
};
use std::time::Duration;
use tensor::{bail, DType, Device, Result, Tensor};

const OP: &str = "ThreadGroup::all_reduce";
const GATHER: &str = "ThreadGroup::all_gather";

/// One CPU replica's communicator; make a group with [`ThreadGroup::new`] and move each member
/// into its own thread.
pub struct ThreadGroup {
    member: Member,
}

impl ThreadGroup {
    /// `world_size` communicators, rank `i` at index `i`, waiting up to [`DEFAULT_TIMEOUT`] for
    /// each other at a collective.
    pub fn new(world_size: usize) -> Result<Vec<ThreadGroup>> {
        ThreadGroup::with_timeout(world_size, DEFAULT_TIMEOUT)
    }

    /// As [`ThreadGroup::new`], failing a collective when a rank has not joined it within
    /// `timeout` of this rank's arrival.
    pub fn with_timeout(world_size: usize, timeout: Duration) -> Result<Vec<ThreadGroup>> {
        Ok(members(world_size, timeout)?
            .into_iter()
            .map(|member| ThreadGroup { member })
            .collect())
    }
}

/// Rank `r`'s chunk of `n` elements split over `world` ranks.
fn chunk(n: usize, world: usize, r: usize) -> std::ops::Range<usize> {
    n * r / world..n * (r + 1) / world
}

/// `tensors` (CPU, one float dtype) flattened in order and widened to f64.
pub(super) fn contribution(tensors: &[&Tensor]) -> Result<(DType, Vec<f64>)> {
    let dtype = tensors.first().map_or(DType::F32, |t| t.dtype());
    if !dtype.is_float() {
        bail!(OP, "dtype {dtype} cannot be all-reduced");
    }
    let mut values = Vec::with_capacity(tensors.iter().map(|t| t.elem_count()).sum());
    for (i, t) in tensors.iter().enumerate() {
        if t.device() != Device::Cpu {
            bail!(
                OP,
                "tensor {i} is on {}; ThreadGroup reduces CPU tensors (Nccl reduces GPU ones)",
                t.device()
            );
        }
        if t.dtype() != dtype {
            bail!(
                OP,
                "tensor {i} is {}, tensor 0 is {dtype}: a bucket holds one dtype",
                t.dtype()
            );
        }
        values.extend(t.to_vec_f64()?);
    }
    Ok((dtype, values))
}

impl Communicator for ThreadGroup {
    fn rank(&self) -> usize {
        self.member.rank()
    }

    fn world_size(&self) -> usize {
        self.member.world_size()
    }

    fn all_gather_host(&self, words: Vec<u64>) -> Result<Vec<Vec<u64>>> {
        self.member.all_gather_host(words)
    }

    fn all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<Tensor> {
        let (rank, world) = (self.rank(), self.world_size());
        let mine = contribution(tensors).map_err(|e| e.to_string());
        let (dtype, n, part) = self.member.agree(OP, "all_reduce (buckets)", mine, |all| {
            check_same_buckets(OP, all.iter().map(|(d, v)| (*d, v.len())))?;
            let (dtype, n) = (all[0].0, all[0].1.len());
            let mine = chunk(n, world, rank);
            let mut part = all[0].1[mine.clone()].to_vec();
            for (_, other) in &all[1..] {
                for (p, &x) in part.iter_mut().zip(&other[mine.clone()]) {
                    *p += x;
                }
            }
            Ok((dtype, n, part))
        })?;
        let parts = self.member.all_gather("all_reduce (chunk sums)", part)?;
        let sum: Vec<f64> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        Tensor::from_vec(sum, &[n])?.to_dtype(dtype)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let world = self.world_size();
        let mine = if t.device().is_cpu() {
            gathered_shape(GATHER, t.shape(), world)
                .and_then(|_| t.contiguous())
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "the tensor is on {}; ThreadGroup gathers CPU tensors (Nccl gathers GPU ones)",
                t.device()
            ))
        };
        self.member.agree(GATHER, "all_gather", mine, |all| {
            check_same_tensors(GATHER, all.iter().map(|t| (t.dtype(), t.shape())))?;
            Tensor::cat(&all, 0)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f(comm)` on one thread per rank of a new group of `world`; results in rank order.
    pub(crate) fn on_ranks<R: Send>(world: usize, f: impl Fn(ThreadGroup) -> R + Sync) -> Vec<R> {
        let comms = ThreadGroup::with_timeout(world, Duration::from_secs(20)).unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_gather_concatenates_every_rank_in_order_or_names_the_odd_rank() {
        let out = on_ranks(3, |comm| {
            let r = comm.rank() as i64;
            let t = Tensor::from_vec(vec![r, 10 * r, 100 * r, -r], &[2, 2]).unwrap();
            comm.all_gather(&t).unwrap()
        });
        for g in &out {
            assert_eq!(g.shape(), &[6, 2]);
            let want = [0, 0, 0, 0, 1, 10, 100, -1, 2, 20, 200, -2];
            assert_eq!(g.to_vec::<i64>().unwrap(), want);
        }
        let errs = on_ranks(2, |comm| {
            let t = Tensor::zeros(&[2, 3 + comm.rank()], DType::F32, Device::Cpu).unwrap();
            comm.all_gather(&t).unwrap_err().to_string()
        });
        for e in &errs {
            assert!(
                e.contains(
                    "rank 1 passes a f32 tensor of shape [2, 4], rank 0 a f32 one of [2, 3]"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn chunks_tile_the_bucket() {
        for (n, world) in [(10, 3), (2, 3), (0, 2), (7, 1)] {
            let all: Vec<usize> = (0..world).flat_map(|r| chunk(n, world, r)).collect();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "{n} over {world}");
        }
    }

    #[test]
    fn a_rank_that_cannot_take_part_fails_every_rank_by_name() {
        let errs = on_ranks(3, |comm| {
            let t = if comm.rank() == 2 {
                Tensor::from_vec(vec![1i64, 2], &[2]).unwrap()
            } else {
                Tensor::from_vec(vec![1f32, 2.0], &[2]).unwrap()
            };
            comm.all_reduce_sum_flat(&[&t]).unwrap_err().to_string()
        });
        for e in &errs {
            assert!(
                e.contains("rank 2:") && e.contains("dtype i64 cannot be all-reduced"),
                "{e}"
            );
        }
        let errs = on_ranks(2, |comm| {
            let t = Tensor::zeros(&[3 + comm.rank()], DType::F32, Device::Cpu).unwrap();
            comm.all_reduce_sum_flat(&[&t]).unwrap_err().to_string()
        });
        for e in &errs {
            assert!(
                e.contains("rank 1 passes a bucket of 4 f32 elements, rank 0 one of 3 f32"),
                "{e}"
            );
        }
    }
}
