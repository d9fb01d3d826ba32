//! Device time of ops on a GPU. An op scope on CUDA operands records a CUDA event pair on the
//! GPU's stream around its launches (`Gpu::timer` at the scope's start, `stop` at its end) and
//! leaves it pending: nothing waits per op. [`flush`] (the end of a step, or before the records
//! are read) reads every pending pair against a reference event recorded on the same stream
//! when the GPU was first profiled, and turns each into a [`Kind::Kernel`] record on that GPU's
//! stream track, linked to its host slice by `flow`.

use super::record::{self, Kind, Record};
use crate::storage::Storage;
use crate::Tensor;
use cuda::{Gpu, GpuTimer};
use std::sync::{Arc, Mutex};

/// One GPU's reference event and the host time (profiler ns) it was recorded at.
struct Reference {
    gpu: Arc<Gpu>,
    timer: GpuTimer,
    host_ns: u64,
}

/// A stopped event pair and the kernel record it will fill.
struct Pending {
    gpu: Arc<Gpu>,
    timer: GpuTimer,
    record: Record,
}

static REFERENCES: Mutex<Vec<Reference>> = Mutex::new(Vec::new());
static PENDING: Mutex<Vec<Pending>> = Mutex::new(Vec::new());

/// Pending pairs beyond this are read at once (bounded memory; a long step pays one wait).
const MAX_PENDING: usize = 1 << 16;

/// The started event pair of an op whose first CUDA operand is `t`.
pub(super) struct Started {
    gpu: Arc<Gpu>,
    timer: GpuTimer,
}

pub(super) fn start(inputs: &[&Tensor]) -> Option<Started> {
    let gpu = inputs.iter().find_map(|t| match t.storage() {
        Storage::Cuda(s) => Some(s.gpu.clone()),
        _ => None,
    })?;
    reference(&gpu)?;
    let timer = gpu.timer().ok()?;
    Some(Started { gpu, timer })
}

/// Records the reference event of `gpu` the first time it is profiled.
fn reference(gpu: &Arc<Gpu>) -> Option<()> {
    let mut refs = REFERENCES.lock().unwrap_or_else(|e| e.into_inner());
    if !refs.iter().any(|r| Arc::ptr_eq(&r.gpu, gpu)) {
        let timer = gpu.timer().ok()?;
        let host_ns = super::now_ns();
        timer.stop().ok()?;
        refs.push(Reference {
            gpu: gpu.clone(),
            timer,
            host_ns,
        });
    }
    Some(())
}

/// Stops the pair after the op's launches; the kernel record copies the host record's fields.
pub(super) fn finish(s: Started, host: &Record) {
    if s.timer.stop().is_err() {
        return;
    }
    let record = Record {
        kind: Kind::Kernel,
        thread: s.gpu.ordinal() as u32,
        device: "cuda",
        ..host.clone()
    };
    let full = {
        let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        p.push(Pending {
            gpu: s.gpu,
            timer: s.timer,
            record,
        });
        p.len() >= MAX_PENDING
    };
    if full {
        flush();
    }
}

/// Reads every pending event pair (waiting for the GPU to reach the last one) into kernel
/// records. A pair the driver cannot read is dropped.
pub fn flush() {
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    if pending.is_empty() {
        return;
    }
    let refs = REFERENCES.lock().unwrap_or_else(|e| e.into_inner());
    for mut p in pending {
        let Some(r) = refs.iter().find(|r| Arc::ptr_eq(&r.gpu, &p.gpu)) else {
            continue;
        };
        let Ok((start_ms, end_ms)) = p.timer.offsets_ms(&r.timer) else {
            continue;
        };
        p.record.start_ns = r.host_ns + (start_ms as f64 * 1e6) as u64;
        p.record.dur_ns = ((end_ms - start_ms).max(0.0) as f64 * 1e6) as u64;
        p.record.self_ns = p.record.dur_ns;
        record::push(p.record);
    }
}

/// Forgets the references (a new session re-anchors each GPU's clock).
pub(super) fn clear() {
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).clear();
    REFERENCES.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
