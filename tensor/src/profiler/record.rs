//! One profiler record per op call (or module / phase slice), and where they go: a bounded ring
//! (for the trace; the oldest records are dropped and counted) and totals per (op, module, phase)
//! that stay the same size however long the run (for the tables).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The part of a training step a record belongs to (set by the trainers with `phase(..)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
    Data,
    Communication,
    Checkpoint,
    /// Outside any marked phase (evaluation, encoding, tests).
    #[default]
    Other,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Forward,
        Phase::Backward,
        Phase::Optimizer,
        Phase::Data,
        Phase::Communication,
        Phase::Checkpoint,
        Phase::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
            Phase::Data => "data",
            Phase::Communication => "communication",
            Phase::Checkpoint => "checkpoint",
            Phase::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// What a record times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// One op call (a kernel on the CPU, a launch on the GPU).
    #[default]
    Op,
    /// A module's forward, or the backward ops of one module's nodes.
    Module,
    /// A phase of the step.
    Phase,
    /// The device time of one op's GPU work, from CUDA events around its launches (`thread` is
    /// the GPU's ordinal: one stream per GPU).
    Kernel,
}

#[derive(Clone, Debug, Default)]
pub struct Record {
    pub kind: Kind,
    /// The op name, module path or phase name.
    pub name: Cow<'static, str>,
    /// The HF module path open when the op ran ("" at the top).
    pub module: Arc<str>,
    pub phase: Phase,
    /// Operand shapes and the output shape, `[8, 128, 768][768, 768]->[8, 128, 768]`.
    pub shapes: String,
    pub dtype: &'static str,
    pub device: &'static str,
    /// The host thread (small ids from 0).
    pub thread: u32,
    /// Nanoseconds since the profiler's epoch.
    pub start_ns: u64,
    pub dur_ns: u64,
    /// `dur_ns` less the time of op scopes nested in this one (ops only).
    pub self_ns: u64,
    pub flops: u64,
    pub bytes: u64,
    /// Links a host op slice to its GPU slice (the trace's flow arrow); 0: none.
    pub flow: u64,
}

/// Totals of one (op, module, phase).
#[derive(Clone, Copy, Debug, Default)]
pub struct Agg {
    pub calls: u64,
    pub self_ns: u64,
    pub total_ns: u64,
    pub flops: u64,
    pub bytes: u64,
}

impl Agg {
    /// One call: a record's totals.
    pub fn of(r: &Record) -> Agg {
        Agg {
            calls: 1,
            self_ns: r.self_ns,
            total_ns: r.dur_ns,
            flops: r.flops,
            bytes: r.bytes,
        }
    }

    pub fn add(&mut self, a: &Agg) {
        self.calls += a.calls;
        self.self_ns += a.self_ns;
        self.total_ns += a.total_ns;
        self.flops += a.flops;
        self.bytes += a.bytes;
    }
}

pub type AggKey = (Cow<'static, str>, Arc<str>, Phase);

struct Store {
    ring: VecDeque<Record>,
    capacity: usize,
    dropped: u64,
    aggs: HashMap<AggKey, Agg>,
    ops: HashMap<&'static str, (u64, Duration)>,
    phases: HashMap<Phase, u64>,
    /// Device time per (op, module, phase), from the GPU's events.
    kernels: HashMap<AggKey, Agg>,
}

/// Default ring size: about 2 M records (~250 MB at most), a few BERT-base steps.
const DEFAULT_CAPACITY: usize = 1 << 21;

static STORE: Mutex<Option<Store>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Store) -> R) -> R {
    let mut g = STORE.lock().unwrap_or_else(|e| e.into_inner());
    let s = g.get_or_insert_with(|| Store {
        ring: VecDeque::new(),
        capacity: std::env::var("COTMAE_PROFILE_RING")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CAPACITY),
        dropped: 0,
        aggs: HashMap::new(),
        ops: HashMap::new(),
        phases: HashMap::new(),
        kernels: HashMap::new(),
    });
    f(s)
}

pub(super) fn push(r: Record) {
    with(|s| {
        match r.kind {
            Kind::Op | Kind::Kernel => {
                let to = if r.kind == Kind::Op {
                    &mut s.aggs
                } else {
                    &mut s.kernels
                };
                to.entry((r.name.clone(), r.module.clone(), r.phase))
                    .or_default()
                    .add(&Agg::of(&r));
                if let (Kind::Op, Cow::Borrowed(name)) = (r.kind, &r.name) {
                    let e = s.ops.entry(*name).or_default();
                    e.0 += 1;
                    e.1 += Duration::from_nanos(r.dur_ns);
                }
            }
            Kind::Phase => *s.phases.entry(r.phase).or_default() += r.dur_ns,
            Kind::Module => {}
        }
        if s.capacity == 0 {
            s.dropped += 1;
            return;
        }
        if s.ring.len() == s.capacity {
            s.ring.pop_front();
            s.dropped += 1;
        }
        s.ring.push_back(r);
    })
}

pub(super) fn set_ring_capacity(n: usize) {
    with(|s| {
        s.capacity = n;
        while s.ring.len() > n {
            s.ring.pop_front();
            s.dropped += 1;
        }
    })
}

pub(super) fn snapshot() -> (Vec<Record>, u64) {
    with(|s| (s.ring.iter().cloned().collect(), s.dropped))
}

/// (host op totals, GPU kernel totals).
pub(super) fn aggregates() -> (HashMap<AggKey, Agg>, HashMap<AggKey, Agg>) {
    with(|s| (s.aggs.clone(), s.kernels.clone()))
}

pub(super) fn phase_totals() -> HashMap<Phase, u64> {
    with(|s| s.phases.clone())
}

pub(super) fn op_totals() -> Vec<(&'static str, u64, Duration)> {
    let mut v: Vec<_> = with(|s| s.ops.iter().map(|(k, (n, d))| (*k, *n, *d)).collect());
    v.sort_by_key(|e| std::cmp::Reverse(e.2));
    v
}

pub(super) fn clear() {
    with(|s| {
        s.ring.clear();
        s.dropped = 0;
        s.aggs.clear();
        s.ops.clear();
        s.phases.clear();
        s.kernels.clear();
    })
}

/// The time covered by the phase slices among `records`, in ns (what a step's phases should
/// add up to).
pub fn phase_ns(records: &[Record]) -> u64 {
    records
        .iter()
        .filter(|r| r.kind == Kind::Phase)
        .map(|r| r.dur_ns)
        .sum()
}

/// The first slice of `records` that overlaps the slice enclosing it, if any: slices on one
/// thread must form a tree (each encloses the later ones or ends before them).
pub fn first_overlap(records: &[Record]) -> Option<&Record> {
    let mut v: Vec<&Record> = records.iter().collect();
    v.sort_by_key(|r| (r.start_ns, std::cmp::Reverse(r.dur_ns)));
    let mut open: Vec<u64> = Vec::new(); // end times of the enclosing slices
    for r in v {
        while open.last().is_some_and(|&end| end <= r.start_ns) {
            open.pop();
        }
        if open.last().is_some_and(|&end| r.start_ns + r.dur_ns > end) {
            return Some(r);
        }
        open.push(r.start_ns + r.dur_ns);
    }
    None
}
