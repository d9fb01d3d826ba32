//! [`Nccl`] (feature `cuda`): one GPU per replica, buckets summed by NCCL on each GPU's compute
//! stream (through `tensor::cuda::nccl`, so this crate reaches NCCL through tensors only). The
//! replicas are threads of one process ([`Nccl::group`], `ncclCommInitAll`) or processes, on one
//! machine or several ([`Nccl::join`], `ncclCommInitRank`): rank 0 makes the `ncclUniqueId` and
//! publishes it through the run's TCP store ([`super::store`]), which also carries the host
//! exchanges below.
//!
//! The gradient all-reduce overlapped with backward starts its buckets' sums
//! ([`Communicator::start_all_reduce_sum_flat`]) on each GPU's communication stream (after an
//! event on the compute stream, so the flattened bucket is complete; `cuda/src/comm_stream.rs`)
//! and finishes them ([`Communicator::finish_sum`]) by making the compute stream wait for an
//! event recorded after each sum: the backward kernels issued in between run beside the sums.
//!
//! NCCL cannot tell when ranks disagree (it hangs or sums garbage), so each all-reduce is fenced
//! by two host exchanges between the ranks (between threads, or through the store): before it, every rank reports its bucket's dtype
//! and length (or why it has none) and all ranks fail together, naming the rank, unless they
//! agree; after it, every rank reports whether it issued the collective, so a rank never waits
//! for one that a peer did not issue. Nothing waits for the GPU: the sum is ordered on the stream
//! like any other op. An all-gather is fenced the same way, the ranks agreeing on the tensor's
//! dtype and shape first. Dropping a communicator waits for its GPU's stream (the last all-reduce
//! completes) unless a collective failed, then releases NCCL.

use super::rendezvous::{members, Member};
use super::{
    check_same_buckets, check_same_tensors, dtype_code, dtype_of_code, gathered_shape,
    Communicator, TcpGroup, DEFAULT_TIMEOUT,
};
use super::{nccl_of, pending_nccl, PendingSum};
use std::cell::Cell;
use std::time::Duration;
use tensor::cuda::nccl::{Bucket, NcclComm, NcclId, Reduce};
use tensor::{bail, Device, Result, Tensor};

const OP: &str = "Nccl::all_reduce";
const GATHER: &str = "Nccl::all_gather";

/// One GPU replica's communicator; make a group with [`Nccl::group`] and move each member into
/// its own thread.
pub struct Nccl {
    comm: NcclComm,
    host: Host,
    /// Set when a collective may not have completed: the drop then does not wait for the GPU.
    failed: Cell<bool>,
}

impl Nccl {
    /// One communicator per device, rank `i` driving `cuda:devices[i]`, waiting up to
    /// [`DEFAULT_TIMEOUT`] for each other at a collective.
    pub fn group(devices: &[usize]) -> Result<Vec<Nccl>> {
        Nccl::group_with_timeout(devices, DEFAULT_TIMEOUT)
    }

    /// As [`Nccl::group`] with a timeout for the host exchanges.
    pub fn group_with_timeout(devices: &[usize], timeout: Duration) -> Result<Vec<Nccl>> {
        let comms = NcclComm::for_devices(devices)?;
        Ok(comms
            .into_iter()
            .zip(members(devices.len(), timeout)?)
            .map(|(comm, member)| Nccl {
                comm,
                host: Host::Threads(member),
                failed: Cell::new(false),
            })
            .collect())
    }

    /// This process's rank of a run whose ranks meet through `store` (a [`TcpGroup`] of the
    /// same rank and world size, e.g. from `DistEnv::connect_cpu`), computing on `cuda:ordinal`:
    /// rank 0 makes the `ncclUniqueId` and publishes it through the store, every rank joins by
    /// `ncclCommInitRank`. On simulated devices the ranks must be threads of one process.
    pub fn join(ordinal: usize, store: TcpGroup) -> Result<Nccl> {
        let (rank, world) = (store.rank(), store.world_size());
        let mine = match rank {
            0 => NcclId::new(ordinal).map(|id| {
                id.0.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect()
            }),
            _ => Ok(Vec::new()),
        };
        let host = Host::Store(store);
        let all = host.agree(
            "Nccl::join",
            "the ncclUniqueId",
            mine.map_err(|e| e.to_string()),
        )?;
        let mut id = [0u8; 128];
        for (slot, word) in id.chunks_exact_mut(8).zip(&all[0]) {
            slot.copy_from_slice(&word.to_le_bytes());
        }
        let comm = NcclComm::init_rank(ordinal, world, rank, &NcclId(id))?;
        Ok(Nccl {
            comm,
            host,
            failed: Cell::new(false),
        })
    }

    /// The GPU this replica computes on.
    pub fn device(&self) -> Device {
        Device::Cuda(self.comm.gpu().ordinal())
    }

    /// The fenced all-reduce of `tensors` (module docs): flattened into a bucket, which `issue`
    /// hands to NCCL once every rank agrees on its dtype and length.
    fn reduce<R>(&self, tensors: &[&Tensor], issue: impl FnOnce(Bucket) -> Result<R>) -> Result<R> {
        let bucket = Bucket::flatten(&self.comm, tensors);
        let shape = bucket
            .as_ref()
            .map(|b| vec![dtype_code(b.dtype()), b.len() as u64])
            .map_err(|e| e.to_string());
        let all = self.host.agree(OP, "all_reduce (buckets)", shape)?;
        check_same_buckets(
            OP,
            all.iter()
                .map(|w| (dtype_of_code(w[0]), w[1] as usize))
                .collect::<Vec<_>>(),
        )?;
        let issued = bucket.and_then(issue);
        let status = issued
            .as_ref()
            .map(|_| Vec::new())
            .map_err(|e| e.to_string());
        self.host.agree(OP, "all_reduce (issued)", status)?;
        issued
    }

    fn gather(&self, t: &Tensor) -> Result<Tensor> {
        let shape = gathered_shape(GATHER, t.shape(), self.world_size());
        let mine = match (&shape, t.device() == self.device()) {
            (Ok(_), true) => {
                let mut words = vec![dtype_code(t.dtype())];
                words.extend(t.shape().iter().map(|&d| d as u64));
                Ok(words)
            }
            (Err(e), _) => Err(e.to_string()),
            (Ok(_), false) => Err(format!(
                "the tensor is on {}, and this rank drives {}",
                t.device(),
                self.device()
            )),
        };
        let all = self.host.agree(GATHER, "all_gather (shapes)", mine)?;
        let shapes: Vec<(tensor::DType, Vec<usize>)> = all
            .iter()
            .map(|w| {
                let dims = w[1..].iter().map(|&d| d as usize).collect();
                (dtype_of_code(w[0]), dims)
            })
            .collect();
        check_same_tensors(GATHER, shapes.iter().map(|(d, s)| (*d, s.as_slice())))?;
        let issued = tensor::cuda::nccl::all_gather(&self.comm, t);
        let status = issued
            .as_ref()
            .map(|_| Vec::new())
            .map_err(|e| e.to_string());
        self.host.agree(GATHER, "all_gather (issued)", status)?;
        issued?.reshape(&shape?)
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_gather_host(&self, words: Vec<u64>) -> Result<Vec<Vec<u64>>> {
        self.host.all_gather_host(words)
    }

    fn all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<Tensor> {
        self.reduce(tensors, |b| b.all_reduce(&self.comm, Reduce::Sum))
            .inspect_err(|_| self.failed.set(true))
    }

    fn start_all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<PendingSum> {
        self.reduce(tensors, |b| b.start_all_reduce(&self.comm))
            .map(pending_nccl)
            .inspect_err(|_| self.failed.set(true))
    }

    fn finish_sum(&self, pending: PendingSum) -> Result<Tensor> {
        match nccl_of(pending) {
            Ok(bucket) => bucket
                .wait(&self.comm)
                .inspect_err(|_| self.failed.set(true)),
            Err(ready) => ready.into_ready(),
        }
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        self.gather(t).inspect_err(|_| self.failed.set(true))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if !self.failed.get() {
            // A drop cannot return an error; NcclComm's drop releases NCCL either way.
            let _ = self.comm.gpu().synchronize();
        }
    }
}

/// Where the host exchanges that fence each collective go: between the threads of one process,
/// or through the run's TCP store.
enum Host {
    Threads(Member),
    Store(TcpGroup),
}

impl Host {
    fn all_gather_host(&self, words: Vec<u64>) -> Result<Vec<Vec<u64>>> {
        match self {
            Host::Threads(m) => m.all_gather_host(words),
            Host::Store(g) => g.all_gather_host(words),
        }
    }

    /// Every rank's `status` words (its value, or why it has none), in rank order; when a rank
    /// has none, the same error on every rank, attributed to `op` and naming the first such rank
    /// and `what` it was doing. A rank that cannot take part joins with its error, so the others
    /// fail with it instead of waiting for it.
    fn agree(
        &self,
        op: &'static str,
        what: &str,
        status: std::result::Result<Vec<u64>, String>,
    ) -> Result<Vec<Vec<u64>>> {
        let words = match status {
            Ok(w) => [vec![1], w].concat(),
            Err(msg) => [vec![0], msg.bytes().map(u64::from).collect()].concat(),
        };
        let all = self.all_gather_host(words)?;
        if let Some(r) = all.iter().position(|w| w.first() != Some(&1)) {
            let msg: String = all[r]
                .iter()
                .skip(1)
                .map(|&b| char::from(b as u8))
                .collect();
            bail!(op, "rank {r} ({what}): {msg}");
        }
        Ok(all.into_iter().map(|w| w[1..].to_vec()).collect())
    }
}
