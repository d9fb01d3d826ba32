//! The op profiler. Every op opens a `scope(name)` at its dispatch point; modules push their HF
//! path (`bert.encoder.layer.3.attention`) with `module(..)`, trainers mark the `phase(..)`.
//! When profiling is on (`profiler::enable()`, a `session(..)`, or `COTMAE_PROFILE=1`), each op
//! call becomes a [`Record`] (op, module path, phase, shapes, dtype, device, thread, start,
//! duration, self time, FLOPs and bytes from the shapes); records go to a bounded ring and to
//! per-(op, module, phase) totals that never grow with the step count. When off, a scope costs
//! one relaxed atomic load.
//!
//! Outputs: [`report`] (the end-of-run tables, see `table.rs`) and [`write_chrome_trace`]
//! (`trace.rs`). FLOP accounting from shapes lives in [`flops`].

pub mod flops;
#[cfg(feature = "cuda")]
mod gpu;
pub mod nvtx;
mod record;
mod run;
mod table;
mod trace;

pub use record::{first_overlap, phase_ns, Kind, Phase, Record};
pub use run::{finish_run, parse_steps, start_run, step, RunOptions, Step};
pub use table::{compare, Peak, Summary};
pub use trace::{read_chrome_trace, write_chrome_trace};

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static ENV_CHECKED: AtomicU8 = AtomicU8::new(0);

pub fn enable() {
    epoch();
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Whether scopes record (the one relaxed load an op pays when profiling is off).
pub fn enabled() -> bool {
    if ENV_CHECKED.load(Ordering::Relaxed) == 0 {
        ENV_CHECKED.store(1, Ordering::Relaxed);
        if std::env::var("COTMAE_PROFILE").is_ok_and(|v| v == "1") {
            enable();
        }
    }
    ENABLED.load(Ordering::Relaxed)
}

/// Time zero of every record's `start_ns` (the first `enable`).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(crate) fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

static NEXT_THREAD: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// A small id per host thread (the trace's `tid`).
    static THREAD: u32 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    /// The module path this thread is inside ("" at the top).
    static MODULE: RefCell<Arc<str>> = RefCell::new(Arc::from(""));
    static PHASE: Cell<Phase> = const { Cell::new(Phase::Other) };
    /// Time spent in child op scopes of each open op scope (for self time).
    static CHILD_NS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// This host thread's id in the records.
pub fn current_thread() -> u32 {
    THREAD.with(|t| *t)
}

/// The module path now open on this thread; `None` when profiling is off (so the autograd can
/// store it on a node for free).
pub fn current_module() -> Option<Arc<str>> {
    enabled().then(|| MODULE.with(|m| m.borrow().clone()))
}

/// The phase now set on this thread.
pub fn current_phase() -> Phase {
    PHASE.with(|p| p.get())
}

/// Restores the previous module path when dropped; records the module slice when it opened one.
pub struct ModuleGuard {
    prev: Option<Arc<str>>,
    start: u64,
    nvtx: bool,
}

const NO_MODULE: ModuleGuard = ModuleGuard {
    prev: None,
    start: 0,
    nvtx: false,
};

/// Enters the child module `name` (appended to the open path with a dot), for a module's
/// forward: `module("attention")`, `module(format_args!("layer.{i}"))` (formatted only when
/// profiling is on). Off: nothing but the atomic load.
pub fn module(name: impl std::fmt::Display) -> ModuleGuard {
    if !enabled() {
        return NO_MODULE;
    }
    let path = MODULE.with(|m| {
        let m = m.borrow();
        if m.is_empty() {
            Arc::from(name.to_string())
        } else {
            Arc::from(format!("{m}.{name}"))
        }
    });
    enter_module(Some(path))
}

/// Enters the full module path `path` (the backward pass re-entering the module that recorded
/// an autograd node). `None`, or profiling off: nothing.
pub fn enter_module(path: Option<Arc<str>>) -> ModuleGuard {
    let Some(path) = path.filter(|p| !p.is_empty() && enabled()) else {
        return NO_MODULE;
    };
    let nvtx = nvtx::push(&path);
    let prev = MODULE.with(|m| m.replace(path));
    ModuleGuard {
        prev: Some(prev),
        start: now_ns(),
        nvtx,
    }
}

impl Drop for ModuleGuard {
    fn drop(&mut self) {
        let Some(prev) = self.prev.take() else { return };
        if self.nvtx {
            nvtx::pop();
        }
        let path = MODULE.with(|m| m.replace(prev));
        let end = now_ns();
        record::push(Record {
            kind: Kind::Module,
            name: Cow::Owned(path.to_string()),
            module: path,
            phase: current_phase(),
            thread: current_thread(),
            start_ns: self.start,
            dur_ns: end - self.start,
            ..Record::default()
        });
    }
}

/// Restores the previous phase when dropped.
pub struct PhaseGuard {
    prev: Phase,
    start: Option<u64>,
}

/// Sets this thread's phase (forward, backward, optimizer, data, communication, checkpoint)
/// until the guard drops; the phase is recorded as a slice of its own (not when the thread is
/// already in that phase: `backward()` sets it too, inside the trainer's).
pub fn phase(p: Phase) -> PhaseGuard {
    let prev = PHASE.with(|c| c.replace(p));
    PhaseGuard {
        prev,
        start: (prev != p && enabled()).then(now_ns),
    }
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        let p = PHASE.with(|c| c.replace(self.prev));
        if let Some(start) = self.start {
            record::push(Record {
                kind: Kind::Phase,
                name: Cow::Borrowed(p.name()),
                phase: p,
                thread: current_thread(),
                start_ns: start,
                dur_ns: now_ns() - start,
                ..Record::default()
            });
        }
    }
}

/// Runs `f` in phase `p` (a one-line guard for the trainers).
pub fn in_phase<R>(p: Phase, f: impl FnOnce() -> R) -> R {
    let _phase = phase(p);
    f()
}

/// Times the enclosing op until dropped.
pub struct Scope {
    active: Option<Box<Active>>,
}

struct Active {
    record: Record,
    nvtx: bool,
    #[cfg(feature = "cuda")]
    gpu: Option<gpu::Started>,
}

/// Flow ids that link an op's CPU slice to its kernel slice on the GPU track.
#[cfg(feature = "cuda")]
static NEXT_FLOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Opens an op scope. The builder methods add shapes, FLOPs and bytes; they do nothing (and
/// format nothing) when profiling is off.
pub fn scope(name: &'static str) -> Scope {
    if !enabled() {
        return Scope { active: None };
    }
    CHILD_NS.with(|c| c.borrow_mut().push(0));
    Scope {
        active: Some(Box::new(Active {
            nvtx: nvtx::push(name),
            record: Record {
                kind: Kind::Op,
                name: Cow::Borrowed(name),
                module: MODULE.with(|m| m.borrow().clone()),
                phase: current_phase(),
                thread: current_thread(),
                device: "cpu",
                start_ns: now_ns(),
                ..Record::default()
            },
            #[cfg(feature = "cuda")]
            gpu: None,
        })),
    }
}

impl Scope {
    /// Records the operands (shapes, dtype, device, bytes read) and the output shape (bytes
    /// written, in the first operand's dtype). On a GPU, starts the op's event pair.
    pub fn io(self, inputs: &[&crate::Tensor], out: &[usize]) -> Self {
        match inputs.first() {
            Some(t) => self.io_as(inputs, out, t.dtype()),
            None => self,
        }
    }

    /// [`Scope::io`] with the output in `out_dtype` (a cast).
    pub fn io_as(
        mut self,
        inputs: &[&crate::Tensor],
        out: &[usize],
        out_dtype: crate::DType,
    ) -> Self {
        if let Some(a) = &mut self.active {
            let r = &mut a.record;
            let mut shapes = String::new();
            for t in inputs {
                shapes += &format!("{:?}", t.shape());
                r.bytes += (t.elem_count() * t.dtype().size_in_bytes()) as u64;
            }
            if let Some(t) = inputs.first() {
                r.dtype = t.dtype().safetensors_name();
                r.device = if t.device().is_cpu() { "cpu" } else { "cuda" };
                let out_elems: usize = out.iter().product();
                r.bytes += (out_elems * out_dtype.size_in_bytes()) as u64;
            }
            r.shapes = format!("{shapes}->{out:?}");
            #[cfg(feature = "cuda")]
            if a.gpu.is_none() {
                a.gpu = gpu::start(inputs);
                if a.gpu.is_some() {
                    a.record.flow = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self
    }

    /// [`Scope::io`] for a gather (`embedding`, `index_select`, `gather`): the output's rows are
    /// read from `table` once, so the table counts for the output's size, not its own.
    pub fn io_gather(
        mut self,
        table: &crate::Tensor,
        index: &crate::Tensor,
        out: &[usize],
    ) -> Self {
        self = self.io(&[table, index], out);
        if let Some(a) = &mut self.active {
            let size = table.dtype().size_in_bytes();
            let out_elems: usize = out.iter().product();
            a.record.bytes -= (table.elem_count() * size) as u64;
            a.record.bytes += (out_elems * size) as u64;
        }
        self
    }

    /// The op's FLOPs (see [`flops`]).
    pub fn flops(mut self, f: u64) -> Self {
        if let Some(a) = &mut self.active {
            a.record.flops = f;
        }
        self
    }

    /// Bytes the op moves besides its tensor operands (a packed weight, a side table).
    pub fn extra_bytes(mut self, b: u64) -> Self {
        if let Some(a) = &mut self.active {
            a.record.bytes += b;
        }
        self
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let Some(a) = self.active.take() else {
            return;
        };
        let mut r = a.record;
        if a.nvtx {
            nvtx::pop();
        }
        #[cfg(feature = "cuda")]
        if let Some(g) = a.gpu {
            gpu::finish(g, &r);
        }
        r.dur_ns = now_ns() - r.start_ns;
        let children = CHILD_NS.with(|c| {
            let mut c = c.borrow_mut();
            let mine = c.pop().unwrap_or(0);
            if let Some(parent) = c.last_mut() {
                *parent += r.dur_ns;
            }
            mine
        });
        r.self_ns = r.dur_ns.saturating_sub(children);
        record::push(r);
    }
}

/// Reads the GPU event pairs still pending into kernel records (waits for the GPU). The
/// trainers call it at the end of each profiled step (through [`Step`]); reading the records
/// calls it too.
pub fn flush_gpu() {
    #[cfg(feature = "cuda")]
    gpu::flush();
}

/// Profiling on for the guard's life, from empty records; `ring` bounds the records kept for a
/// trace (the totals are kept for every call). Returns the guard; read it with [`records`],
/// [`summary`], [`report`]. For benchmarks and tests.
pub fn session(ring: usize) -> Session {
    reset();
    record::set_ring_capacity(ring);
    let was = ENABLED.swap(true, Ordering::Relaxed);
    epoch();
    Session { was }
}

pub struct Session {
    was: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        ENABLED.store(self.was, Ordering::Relaxed);
    }
}

/// The records kept in the ring (oldest first) and how many older ones the ring dropped.
pub fn records() -> (Vec<Record>, u64) {
    flush_gpu();
    record::snapshot()
}

/// (op name, calls, total time), the most expensive first. Nested ops count in both.
pub fn totals() -> Vec<(&'static str, u64, Duration)> {
    record::op_totals()
}

/// Empties the records and totals.
pub fn reset() {
    #[cfg(feature = "cuda")]
    gpu::clear();
    record::clear();
}

/// The totals so far, grouped for the tables.
pub fn summary() -> Summary {
    flush_gpu();
    let (ops, kernels) = record::aggregates();
    Summary::from_totals(ops, kernels, record::phase_totals())
}

/// The end-of-run tables (top ops, per module, per phase, achieved rates against `peak`).
pub fn report_with(peak: Peak) -> String {
    summary().render(peak)
}

/// The tables with the peak from `COTMAE_PEAK_GFLOPS` / `COTMAE_PEAK_GBPS` when set.
pub fn report() -> String {
    report_with(Peak::from_env())
}

#[cfg(test)]
mod tests;
