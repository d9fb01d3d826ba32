//! [`Nccl`] (feature `cuda`): one GPU per replica, the replicas threads of one process, buckets
//! summed by NCCL on each GPU's compute stream (through `tensor::cuda::nccl`, so this crate
//! reaches NCCL through tensors only).
//!
//! NCCL cannot tell when ranks disagree (it hangs or sums garbage), so each all-reduce is fenced
//! by two host exchanges between the threads: before it, every rank reports its bucket's dtype
//! and length (or why it has none) and all ranks fail together, naming the rank, unless they
//! agree; after it, every rank reports whether it issued the collective, so a rank never waits
//! for one that a peer did not issue. Nothing waits for the GPU: the sum is ordered on the stream
//! like any other op. An all-gather is fenced the same way, the ranks agreeing on the tensor's
//! dtype and shape first. Dropping a communicator waits for its GPU's stream (the last all-reduce
//! completes) unless a collective failed, then releases NCCL.

use super::rendezvous::{members, Member};
use super::{
    check_same_buckets, check_same_tensors, gathered_shape, Communicator, DEFAULT_TIMEOUT,
};
use std::cell::Cell;
use std::time::Duration;
use tensor::cuda::nccl::{Bucket, NcclComm, Reduce};
use tensor::{Device, Result, Tensor};

const OP: &str = "Nccl::all_reduce";
const GATHER: &str = "Nccl::all_gather";

/// One GPU replica's communicator; make a group with [`Nccl::group`] and move each member into
/// its own thread.
pub struct Nccl {
    comm: NcclComm,
    member: Member,
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
                member,
                failed: Cell::new(false),
            })
            .collect())
    }

    /// The GPU this replica computes on.
    pub fn device(&self) -> Device {
        Device::Cuda(self.comm.gpu().ordinal())
    }

    fn reduce(&self, tensors: &[&Tensor]) -> Result<Tensor> {
        let bucket = Bucket::flatten(&self.comm, tensors);
        let shape = bucket
            .as_ref()
            .map(|b| (b.dtype(), b.len()))
            .map_err(|e| e.to_string());
        self.member
            .agree(OP, "all_reduce (buckets)", shape, |all| {
                check_same_buckets(OP, all.into_iter().copied())
            })?;
        let issued = bucket?.all_reduce(&self.comm, Reduce::Sum);
        let status = issued.as_ref().map(|_| ()).map_err(|e| e.to_string());
        self.member
            .agree(OP, "all_reduce (issued)", status, |_| Ok(()))?;
        issued
    }

    fn gather(&self, t: &Tensor) -> Result<Tensor> {
        let shape = gathered_shape(GATHER, t.shape(), self.world_size());
        let mine = match (&shape, t.device() == self.device()) {
            (Ok(_), true) => Ok((t.dtype(), t.shape().to_vec())),
            (Err(e), _) => Err(e.to_string()),
            (Ok(_), false) => Err(format!(
                "the tensor is on {}, and this rank drives {}",
                t.device(),
                self.device()
            )),
        };
        self.member
            .agree(GATHER, "all_gather (shapes)", mine, |all| {
                check_same_tensors(GATHER, all.iter().map(|(d, s)| (*d, s.as_slice())))
            })?;
        let issued = tensor::cuda::nccl::all_gather(&self.comm, t);
        let status = issued.as_ref().map(|_| ()).map_err(|e| e.to_string());
        self.member
            .agree(GATHER, "all_gather (issued)", status, |_| Ok(()))?;
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
        self.member.all_gather_host(words)
    }

    fn all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<Tensor> {
        self.reduce(tensors).inspect_err(|_| self.failed.set(true))
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
