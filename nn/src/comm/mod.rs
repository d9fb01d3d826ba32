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
//! Two kinds of collective: the all-reduce of gradient buckets (`all_reduce_sum_flat`, and the
//! bucketed mean built on it) and the all-gather of one tensor's rows (`all_gather`, under the
//! differentiable [`all_gather`](crate::all_gather) that cross-device negatives use).
//!
//! Every collective must be called by every rank, in the same order, with tensors of the same
//! shapes and dtypes; a rank that does not (a different shape, a thread that failed, a timeout) is
//! reported by name on every rank instead of hanging.

pub mod env;
pub mod host;
mod rendezvous;
pub mod store;
mod tcp_group;
pub(crate) mod thread_group;

#[cfg(feature = "cuda")]
mod nccl;

pub use env::DistEnv;
#[cfg(feature = "cuda")]
pub use nccl::Nccl;
#[cfg(feature = "cuda")]
pub(crate) fn pending_nccl(p: tensor::cuda::nccl::PendingBucket) -> PendingSum {
    PendingSum(Pending::Nccl(p))
}

#[cfg(feature = "cuda")]
pub(crate) fn nccl_of(
    p: PendingSum,
) -> std::result::Result<tensor::cuda::nccl::PendingBucket, PendingSum> {
    match p.0 {
        Pending::Nccl(b) => Ok(b),
        other => Err(PendingSum(other)),
    }
}
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

    /// Every rank's `t` concatenated along dim 0 in rank order: `[world_size * d0, ...]` for a
    /// `t` of shape `[d0, ...]`, contiguous, on `t`'s device, the same bits on every rank. Every
    /// rank passes a tensor of the same shape and dtype; a rank that does not is named in the
    /// error every rank returns.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;

    /// Starts [`Communicator::all_reduce_sum_flat`]: a GPU communicator runs the sum on its
    /// communication stream beside the compute stream's later work and returns before it ends;
    /// the others compute it at once. [`Communicator::finish_sum`] gives the result. Every rank
    /// starts the same sums in the same order.
    fn start_all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<PendingSum> {
        self.all_reduce_sum_flat(tensors).map(PendingSum::ready)
    }

    /// The sum that [`Communicator::start_all_reduce_sum_flat`] started: on a GPU the compute
    /// stream is ordered after it (the host does not wait), so every op on the result sees it.
    fn finish_sum(&self, pending: PendingSum) -> Result<Tensor> {
        pending.into_ready()
    }

    /// Replaces each tensor by its mean over the ranks (bucketed; see
    /// [`crate::data_parallel::all_reduce_mean`]).
    fn all_reduce_mean(&self, tensors: &mut [&mut Tensor]) -> Result<()> {
        crate::data_parallel::all_reduce_mean(self, tensors)
    }
}

/// An all-reduce sum that was started ([`Communicator::start_all_reduce_sum_flat`]) and is read
/// through the communicator that started it ([`Communicator::finish_sum`]).
pub struct PendingSum(Pending);

enum Pending {
    /// Computed when it was started.
    Ready(Tensor),
    /// Running on a GPU's communication stream.
    #[cfg(feature = "cuda")]
    Nccl(tensor::cuda::nccl::PendingBucket),
}

impl PendingSum {
    /// A sum computed at once.
    pub fn ready(sum: Tensor) -> PendingSum {
        PendingSum(Pending::Ready(sum))
    }

    /// The sum, when it was computed at once; an error for one still running on a GPU (only the
    /// communicator that started it can order the GPU after it).
    pub fn into_ready(self) -> Result<Tensor> {
        match self.0 {
            Pending::Ready(t) => Ok(t),
            #[cfg(feature = "cuda")]
            Pending::Nccl(_) => bail!(
                "finish_sum",
                "a sum running on a GPU's communication stream is finished by its communicator"
            ),
        }
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

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        gathered_shape("SingleProcess::all_gather", t.shape(), 1)?;
        t.contiguous()
    }
}

/// The shape of `world` tensors of `shape` concatenated along dim 0; errors (attributed to `op`)
/// for a scalar, which has no dim 0.
pub(crate) fn gathered_shape(
    op: &'static str,
    shape: &[usize],
    world: usize,
) -> Result<Vec<usize>> {
    let Some((&rows, rest)) = shape.split_first() else {
        bail!(
            op,
            "cannot gather a scalar along dim 0 (give it a shape of [1])"
        );
    };
    Ok([&[rows * world][..], rest].concat())
}

/// The dtypes a host exchange names by a one-word code ([`dtype_code`]).
const DTYPES: [tensor::DType; 6] = [
    tensor::DType::F32,
    tensor::DType::F64,
    tensor::DType::F16,
    tensor::DType::BF16,
    tensor::DType::I64,
    tensor::DType::U8,
];

/// `dtype` as one word of a host exchange.
pub(crate) fn dtype_code(dtype: tensor::DType) -> u64 {
    DTYPES.iter().position(|d| *d == dtype).unwrap_or(0) as u64
}

/// The dtype of a [`dtype_code`] word (f32 for a word no rank writes).
pub(crate) fn dtype_of_code(code: u64) -> tensor::DType {
    DTYPES
        .get(code as usize)
        .copied()
        .unwrap_or(tensor::DType::F32)
}

/// Errors (attributed to `op`) naming the first rank whose `(dtype, shape)`, given per rank in
/// rank order, differs from rank 0's.
pub(crate) fn check_same_tensors<'a>(
    op: &'static str,
    all: impl IntoIterator<Item = (tensor::DType, &'a [usize])>,
) -> Result<()> {
    let all: Vec<_> = all.into_iter().collect();
    if let Some(r) = all.iter().position(|t| *t != all[0]) {
        let ((d, s), (d0, s0)) = (all[r], all[0]);
        bail!(
            op,
            "rank {r} passes a {d} tensor of shape {s:?}, rank 0 a {d0} one of {s0:?}"
        );
    }
    Ok(())
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
        let g = c.all_gather(&b).unwrap();
        assert_eq!(
            (g.shape(), g.to_vec::<f32>().unwrap()),
            (b.shape(), b.to_vec::<f32>().unwrap())
        );
        let e = c.all_gather(&Tensor::scalar(1f32)).unwrap_err().to_string();
        assert!(e.contains("cannot gather a scalar"), "{e}");
    }
}
