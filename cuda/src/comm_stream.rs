//! The communication stream of one NCCL rank ([`CommStream`]): a second stream on the rank's GPU
//! on which its asynchronous collectives run beside the compute stream ([`Gpu::stream`]), ordered
//! with it by CUDA events only where data passes between the two (as torch DDP runs NCCL):
//!
//! ```text
//! compute ── flatten bucket k ──●ready_k── backward kernels ... ──◆done_k── mean of bucket k ── AdamW
//!                               │                                 ▲
//! comm                   ◆ready_k── ncclAllReduce(bucket k) ──●done_k
//!
//! ● cuEventRecord on that stream      ◆ cuStreamWaitEvent: the stream waits for the event
//! ```
//!
//! [`CommStream::issue`] records `ready` on the compute stream, makes the communication stream
//! wait for it, issues the collective there and records `done` ([`CommDone`]) after it;
//! [`CommStream::wait`] makes the compute stream wait for a `done`. Neither blocks the host. The
//! buffer a collective works on must stay alive until the compute stream has waited for its
//! `done`: the stream-ordered pool frees buffers on the compute stream, so a buffer dropped after
//! the wait is freed after the collective.
//!
//! On a simulated device the compute stream runs each op as it is issued, so `ready` is reached
//! at once; the communication stream is a queue: a collective issued there runs when the compute
//! stream waits for its `done` (or for a later one; the earlier collectives of the queue first, in
//! order). A reader that forgets the wait therefore sees the buffer as it was before the
//! collective, every time (a wrong result the tests catch, where a GPU would race), and a buffer
//! freed before the wait is hit by the simulator's memory checks when the collective runs.
//! Dropping the stream with collectives still queued drops them, as `ncclCommAbort` cancels them.

use crate::gpu::Gpu;
use crate::sim::elem::DataType as SimType;
use crate::sim::nccl::{RedOp, SimComm};
use crate::{Error, Result};
use cudarc::driver::{CudaEvent, CudaStream};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

/// The point on a communication stream after one collective, which the compute stream can wait
/// for ([`CommStream::wait`]).
pub struct CommDone {
    /// The collective's place in its stream's issue order (from 1).
    seq: u64,
    /// The event recorded after it (a real GPU).
    event: Option<CudaEvent>,
}

impl std::fmt::Debug for CommDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommDone(collective #{})", self.seq)
    }
}

/// A collective on a simulated communication stream, waiting to run.
struct Queued {
    seq: u64,
    /// Host addresses of the send and receive buffers (simulated device memory).
    send: usize,
    recv: usize,
    count: usize,
    dtype: SimType,
}

/// One rank's communication stream (module docs).
pub(crate) enum CommStream {
    /// Created at the first collective issued on it.
    Cuda {
        stream: OnceLock<Arc<CudaStream>>,
        issued: std::cell::Cell<u64>,
    },
    Sim(RefCell<SimQueue>),
}

#[derive(Default)]
pub(crate) struct SimQueue {
    issued: u64,
    queued: VecDeque<Queued>,
}

impl CommStream {
    /// The communication stream of a rank on `gpu` (a queue on a simulated device).
    pub fn new(gpu: &Gpu) -> CommStream {
        if gpu.is_simulated() {
            CommStream::Sim(RefCell::new(SimQueue::default()))
        } else {
            CommStream::Cuda {
                stream: OnceLock::new(),
                issued: std::cell::Cell::new(0),
            }
        }
    }

    /// Issues `real(stream)` on the communication stream after the compute stream's work so far,
    /// and returns the point after it; on a simulated device queues an all-reduce (sum) of `count`
    /// elements of `dtype` from `send` to `recv` (host addresses) instead.
    pub fn issue(
        &self,
        gpu: &Gpu,
        call: &'static str,
        real: impl FnOnce(&CudaStream) -> Result<()>,
        (send, recv, count, dtype): (usize, usize, usize, SimType),
    ) -> Result<CommDone> {
        match self {
            CommStream::Sim(q) => {
                let mut q = q.borrow_mut();
                q.issued += 1;
                let seq = q.issued;
                q.queued.push_back(Queued {
                    seq,
                    send,
                    recv,
                    count,
                    dtype,
                });
                Ok(CommDone { seq, event: None })
            }
            CommStream::Cuda { stream, issued } => {
                let compute = gpu.cuda_stream(call)?;
                let comm = match stream.get() {
                    Some(s) => s.clone(),
                    None => {
                        let s = compute
                            .context()
                            .new_stream()
                            .map_err(|e| Error::driver("cuStreamCreate", e))?;
                        stream.get_or_init(|| s).clone()
                    }
                };
                let ready = compute
                    .record_event(None)
                    .map_err(|e| Error::driver("cuEventRecord", e))?;
                comm.wait(&ready)
                    .map_err(|e| Error::driver("cuStreamWaitEvent", e))?;
                real(&comm)?;
                let done = comm
                    .record_event(None)
                    .map_err(|e| Error::driver("cuEventRecord", e))?;
                issued.set(issued.get() + 1);
                Ok(CommDone {
                    seq: issued.get(),
                    event: Some(done),
                })
            }
        }
    }

    /// Makes `gpu`'s compute stream wait for `done` (a point of this stream): what the compute
    /// stream issues afterwards runs after the collective. On a simulated device, runs the
    /// queued collectives up to and including it on `sim`, in order, in the compute stream's
    /// order; their failure is returned here, naming the rank (`who`).
    pub fn wait(&self, gpu: &Gpu, done: &CommDone, sim: Option<&SimComm>, who: &str) -> Result<()> {
        match (self, &done.event) {
            (CommStream::Cuda { .. }, Some(event)) => gpu
                .cuda_stream("cuStreamWaitEvent")?
                .wait(event)
                .map_err(|e| Error::driver("cuStreamWaitEvent", e)),
            (CommStream::Sim(q), None) => {
                let Some(comm) = sim else {
                    return Err(Error::arg(
                        "cuStreamWaitEvent",
                        "a simulated stream without its clique",
                    ));
                };
                let device = gpu.sim().ok_or_else(|| {
                    Error::arg("cuStreamWaitEvent", "a simulated stream on a real GPU")
                })?;
                loop {
                    let next = {
                        let mut q = q.borrow_mut();
                        match q.queued.front() {
                            Some(c) if c.seq <= done.seq => q.queued.pop_front(),
                            _ => None,
                        }
                    };
                    let Some(c) = next else {
                        return Ok(());
                    };
                    // SAFETY: the caller of `issue` keeps both buffers alive until this wait.
                    device
                        .ordered(|| unsafe {
                            comm.all_reduce(
                                c.send as *const std::ffi::c_void,
                                c.recv as *mut std::ffi::c_void,
                                c.count,
                                c.dtype,
                                RedOp::Sum,
                            )
                        })
                        .map_err(|message| Error::Nccl {
                            call: "ncclAllReduce",
                            who: format!(
                                "{who}, collective #{} of its communication stream",
                                c.seq
                            ),
                            message,
                        })?;
                }
            }
            _ => Err(Error::arg(
                "cuStreamWaitEvent",
                "an event of another kind of stream",
            )),
        }
    }

    /// How many collectives wait in a simulated queue (0 on a real GPU).
    pub fn queued(&self) -> usize {
        match self {
            CommStream::Sim(q) => q.borrow().queued.len(),
            CommStream::Cuda { .. } => 0,
        }
    }
}
