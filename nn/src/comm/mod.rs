//! Communicators: how the replicas of a data-parallel run (one per thread, each with a rank in
//! `0..world_size`) combine their tensors. [`Communicator`] is the interface the data-parallel
//! code (`data_parallel.rs`) is written against; its implementations are
//!
//! - [`SingleProcess`]: world size 1, every collective is the identity;
//! - [`ThreadGroup`]: replicas on the CPU, threads of one process, summing through shared memory
//!   in a fixed order (deterministic; for tests and multi-replica CPU runs);
//! - [`TcpGroup`]: replicas on the CPU in separate processes (or machines), exchanging through
//!   the TCP store rank 0 serves ([`store`]); the same sums as `ThreadGroup`, bit for bit;
//! - `Nccl` (feature `cuda`): one GPU per replica, threads of one process, NCCL all-reduce on each
//!   GPU's stream.
//!
//! Every collective must be called by every rank, in the same order, with tensors of the same
//! shapes and dtypes; a rank that does not (a different shape, a thread that failed, a timeout) is
//! reported by name on every rank instead of hanging.

pub mod env;
pub mod host;
mod rendezvous;
pub mod store;
mod tcp_group;
mod thread_group;

#[cfg(feature = "cuda")]
mod nccl;

pub use env::DistEnv;
#[cfg(feature = "cuda")]
pub use nccl::Nccl;
pub use tcp_group::TcpGroup;
pub use thread_group::ThreadGroup;

use tensor::{bail, Result, Tensor};

/// How long a rank waits for the others at a collective before failing it, by default (torch's
/// default process-group timeout).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// One replica's view of its group.
pub trait Communicator: Send {
    /// This replica's rank, in `0..world_size()`.
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// Every rank's `words`, in rank order (a small host-side exchange, used to agree on shapes
    /// before a collective).
    fn all_gather_host(&self, words: Vec<u64>) -> Result<Vec<Vec<u64>>>;

    /// The elementwise sum over ranks of `tensors` flattened and concatenated in order, as a 1-D
    /// contiguous tensor of their (common) dtype on their device. Every rank receives the same
    /// bits. Every rank passes tensors of the same shapes and dtype.
    fn all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<Tensor>;

    /// Replaces each tensor by its mean over the ranks (bucketed; see
    /// [`crate::data_parallel::all_reduce_mean`]).
    fn all_reduce_mean(&self, tensors: &mut [&mut Tensor]) -> Result<()> {
        crate::data_parallel::all_reduce_mean(self, tensors)
    }
}

/// The one replica of a run that is not data-parallel.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_gather_host(&self, words: Vec<u64>) -> Result<Vec<Vec<u64>>> {
        Ok(vec![words])
    }

    fn all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<Tensor> {
        flatten_on_host("SingleProcess::all_reduce_sum_flat", tensors)
    }
}

/// Errors (attributed to `op`) naming the first rank whose bucket, `(dtype, elements)` per rank in
/// rank order, differs from rank 0's.
pub(crate) fn check_same_buckets(
    op: &'static str,
    buckets: impl IntoIterator<Item = (tensor::DType, usize)>,
) -> Result<()> {
    let buckets: Vec<_> = buckets.into_iter().collect();
    if let Some(r) = buckets.iter().position(|b| *b != buckets[0]) {
        let ((d, n), (d0, n0)) = (buckets[r], buckets[0]);
        bail!(
            op,
            "rank {r} passes a bucket of {n} {d} elements, rank 0 one of {n0} {d0}"
        );
    }
    Ok(())
}

/// `tensors` flattened and concatenated on the host (the same dtype each, as a bucket holds).
pub(crate) fn flatten_on_host(op: &'static str, tensors: &[&Tensor]) -> Result<Tensor> {
    if tensors.is_empty() {
        bail!(op, "needs at least one tensor");
    }
    let flat = tensors
        .iter()
        .map(|t| t.reshape(&[t.elem_count()]))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat.iter().collect::<Vec<_>>(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::DType;

    #[test]
    fn single_process_is_the_identity() {
        let c = SingleProcess;
        assert_eq!((c.rank(), c.world_size()), (0, 1));
        assert_eq!(c.all_gather_host(vec![3, 4]).unwrap(), vec![vec![3, 4]]);
        let a = tensor::testing::randn(&[2, 3], 1.0, DType::F32, 1);
        // A transposed (non-contiguous) view is flattened in its row-major order.
        let b = tensor::testing::randn(&[3, 4], 1.0, DType::F32, 2)
            .t()
            .unwrap();
        let flat = c.all_reduce_sum_flat(&[&a, &b]).unwrap();
        let mut want = a.to_vec::<f32>().unwrap();
        want.extend(b.to_vec::<f32>().unwrap());
        assert_eq!(flat.to_vec::<f32>().unwrap(), want);
        let (mut a2, mut b2) = (a.clone(), b.clone());
        c.all_reduce_mean(&mut [&mut a2, &mut b2]).unwrap();
        assert!(a2.same_storage(&a) && b2.same_storage(&b));
        assert!(c.all_reduce_sum_flat(&[]).is_err());
    }
}
