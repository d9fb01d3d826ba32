//! What a [`Gpu`](crate::Gpu) has done since its counters were last reset: the yardstick of a
//! training step's overheads, the same on a real GPU and on the simulator.
//!
//! - `syncs`: device-to-host synchronisations, the points where the host waits for the queue to
//!   drain: every download, every stream synchronise, every status-word read
//!   ([`Gpu::check_status`](crate::Gpu::check_status) counts once, however it is done).
//! - `launches`: kernels launched and memsets issued (cuBLAS/cuBLASLt calls are counted apart,
//!   in `gemms`).
//! - `gemms`: cuBLAS and cuBLASLt products issued.
//! - `heuristic_queries`: cuBLASLt algorithm searches (`cublasLtMatmulAlgoGetHeuristic`, or its
//!   simulated twin); a cached plan asks none.
//! - `weight_casts`: f32 -> half casts of parameters (the caller says which casts those are,
//!   [`Gpu::note_weight_cast`](crate::Gpu::note_weight_cast)).
//! - `casts`: dtype-conversion kernels launched (`ops::cast` between two types), weights
//!   included: `casts - weight_casts` are the activations' and gradients' casts.
//! - `bytes_to_device` / `bytes_to_host` / `bytes_on_device`: bytes uploaded, downloaded and
//!   copied device to device by the `Gpu`'s copy calls (kernels' own traffic is not counted).
//!
//! The counts are kept per issuing thread (so concurrent work on the same GPU, a loader thread or
//! a parallel test, does not mix into a step's counts); reading them never touches the device.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a GPU's counters (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub syncs: u64,
    pub launches: u64,
    pub gemms: u64,
    pub heuristic_queries: u64,
    pub weight_casts: u64,
    pub casts: u64,
    pub bytes_to_device: u64,
    pub bytes_to_host: u64,
    pub bytes_on_device: u64,
}

impl Counters {
    /// The counts of `self` minus those of an earlier snapshot `before`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            syncs: self.syncs - before.syncs,
            launches: self.launches - before.launches,
            gemms: self.gemms - before.gemms,
            heuristic_queries: self.heuristic_queries - before.heuristic_queries,
            weight_casts: self.weight_casts - before.weight_casts,
            casts: self.casts - before.casts,
            bytes_to_device: self.bytes_to_device - before.bytes_to_device,
            bytes_to_host: self.bytes_to_host - before.bytes_to_host,
            bytes_on_device: self.bytes_on_device - before.bytes_on_device,
        }
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "syncs {}, launches {}, gemms {}, heuristic queries {}, weight casts {}, casts {}, \
             bytes to device {}, to host {}, on device {}",
            self.syncs,
            self.launches,
            self.gemms,
            self.heuristic_queries,
            self.weight_casts,
            self.casts,
            self.bytes_to_device,
            self.bytes_to_host,
            self.bytes_on_device
        )
    }
}

/// Which counter an event adds to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Sync,
    Launch,
    Gemm,
    HeuristicQuery,
    WeightCast,
    Cast,
    BytesToDevice,
    BytesToHost,
    BytesOnDevice,
}

const KINDS: usize = 9;

thread_local! {
    /// Per thread, by GPU id: the counts of the work this thread issued on that GPU.
    static COUNTS: RefCell<HashMap<u64, [u64; KINDS]>> = RefCell::new(HashMap::new());
}

/// The counters of one `Gpu`, kept per issuing thread: a step's counts are those of the thread
/// that runs it, whatever other threads (a data loader, concurrent tests) do on the same GPU.
pub(crate) struct LiveCounters {
    id: u64,
}

impl Default for LiveCounters {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        LiveCounters {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl LiveCounters {
    pub fn add(&self, c: Count, n: u64) {
        COUNTS.with(|m| m.borrow_mut().entry(self.id).or_default()[c as usize] += n);
    }

    pub fn snapshot(&self) -> Counters {
        let v = COUNTS.with(|m| m.borrow().get(&self.id).copied().unwrap_or_default());
        Counters {
            syncs: v[Count::Sync as usize],
            launches: v[Count::Launch as usize],
            gemms: v[Count::Gemm as usize],
            heuristic_queries: v[Count::HeuristicQuery as usize],
            weight_casts: v[Count::WeightCast as usize],
            casts: v[Count::Cast as usize],
            bytes_to_device: v[Count::BytesToDevice as usize],
            bytes_to_host: v[Count::BytesToHost as usize],
            bytes_on_device: v[Count::BytesOnDevice as usize],
        }
    }

    pub fn reset(&self) {
        COUNTS.with(|m| m.borrow_mut().remove(&self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_snapshots_and_resets() {
        let live = LiveCounters::default();
        live.add(Count::Sync, 1);
        live.add(Count::BytesToHost, 40);
        live.add(Count::Sync, 2);
        let a = live.snapshot();
        assert_eq!((a.syncs, a.bytes_to_host, a.launches), (3, 40, 0));
        live.add(Count::Launch, 5);
        let b = live.snapshot();
        assert_eq!(
            b.since(&a),
            Counters {
                launches: 5,
                ..Counters::default()
            }
        );
        // Another thread's work on the same GPU is its own.
        std::thread::scope(|t| {
            t.spawn(|| {
                live.add(Count::Launch, 2);
                assert_eq!(live.snapshot().launches, 2);
            });
        });
        assert_eq!(live.snapshot().launches, 5);
        live.reset();
        assert_eq!(live.snapshot(), Counters::default());
    }
}
