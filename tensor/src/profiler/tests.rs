//! The profiler's own checks: attribution to modules and phases, nesting, self times that add
//! up to the step, FLOPs from shapes, the bounded ring, and the trace read back.

use super::*;
use crate::{DType, Device, Tensor};
use std::sync::Mutex;

/// The profiler is global: its tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn mine() -> Vec<Record> {
    let me = current_thread();
    records().0.into_iter().filter(|r| r.thread == me).collect()
}

fn x(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F32, Device::Cpu).unwrap()
}

/// A tiny "step": a forward under two modules, then a phase of its own.
fn tiny_step() {
    let _f = phase(Phase::Forward);
    let _m = module("bert");
    let _l = module("encoder.layer.0");
    let (a, b) = (x(&[4, 8]), x(&[8, 16]));
    let y = a.matmul(&b).unwrap();
    let _ = y.add(&y).unwrap();
}

#[test]
fn ops_land_in_their_module_and_phase_with_flops_from_shapes() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _p = session(1 << 16);
    tiny_step();
    {
        let _o = phase(Phase::Optimizer);
        let _ = x(&[3]).mul(&x(&[3])).unwrap();
    }
    let recs = mine();
    let mm = recs
        .iter()
        .find(|r| r.name == "matmul")
        .expect("a matmul record");
    assert_eq!(&*mm.module, "bert.encoder.layer.0");
    assert_eq!(mm.phase, Phase::Forward);
    assert_eq!(mm.flops, 2 * 4 * 8 * 16);
    assert_eq!(mm.bytes, 4 * (4 * 8 + 8 * 16 + 4 * 16));
    assert_eq!(mm.shapes, "[4, 8][8, 16]->[4, 16]");
    let mul = recs.iter().find(|r| r.name == "mul").expect("a mul record");
    assert_eq!((mul.phase, &*mul.module), (Phase::Optimizer, ""));
    let modules: Vec<&str> = recs
        .iter()
        .filter(|r| r.kind == Kind::Module)
        .map(|r| &*r.module)
        .collect();
    assert_eq!(modules, ["bert.encoder.layer.0", "bert"]);
}

/// The totals of op `name` (all modules and phases).
fn op_total(name: &str) -> record::Agg {
    let ops = summary().ops;
    ops.into_iter().find(|(k, _)| k == name).expect(name).1
}

fn assert_nested(recs: &[Record]) {
    if let Some(r) = first_overlap(recs) {
        panic!("{} overlaps its parent", r.name);
    }
}

#[test]
fn slices_nest_and_add_up_to_the_step() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _p = session(1 << 16);
    let t0 = std::time::Instant::now();
    for _ in 0..3 {
        let _f = phase(Phase::Forward);
        let _m = module("bert");
        let (a, b) = (x(&[64, 64]), x(&[64, 64]));
        let _ = a.matmul(&b).unwrap().relu().unwrap();
    }
    let step = t0.elapsed().as_nanos() as f64;
    let recs = mine();
    assert_nested(&recs);
    let phases = phase_ns(&recs);
    let ops: u64 = recs
        .iter()
        .filter(|r| r.kind == Kind::Op)
        .map(|r| r.self_ns)
        .sum();
    assert!(
        (phases as f64 - step).abs() <= 0.05 * step,
        "phase slices {phases} ns, step {step} ns"
    );
    assert!(
        ops <= phases,
        "op self time {ops} exceeds the phases {phases}"
    );
}

#[test]
fn the_ring_is_bounded_and_the_totals_are_not() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _p = session(10);
    let a = x(&[2]);
    for _ in 0..100 {
        let _ = a.add(&a).unwrap();
    }
    let (kept, dropped) = records();
    assert_eq!(kept.len(), 10);
    assert!(dropped >= 90);
    let adds = op_total("add");
    assert!(adds.calls >= 100, "{adds:?}");
}

/// A long run (COTMAE_PROFILE=1 on a whole training) holds a fixed amount: the ring keeps its
/// capacity, and the totals have one entry per (op, module, phase), however many steps ran.
#[test]
fn a_long_run_keeps_memory_bounded() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (x(&[4, 8]), x(&[8, 4])); // before the session: `ones` is an op too
    let _p = session(64);
    let steps = |n: usize| {
        for _ in 0..n {
            {
                let _f = phase(Phase::Forward);
                let _m = module("bert");
                for i in 0..2 {
                    let _l = module(format_args!("encoder.layer.{i}"));
                    let _ = a.matmul(&b).unwrap().relu().unwrap();
                }
            }
            let _o = phase(Phase::Optimizer);
            let _ = a.mul(&a).unwrap();
        }
    };
    steps(5);
    // Other tests of this binary run ops on their own threads meanwhile (the profiler is
    // global); theirs stay in Phase::Other, so this test counts only the marked phases.
    let key_names = || {
        let mut k: Vec<String> = record::aggregates()
            .0
            .into_keys()
            .filter(|(_, _, phase)| *phase != Phase::Other)
            .map(|(op, module, phase)| format!("{op} {module} {}", phase.name()))
            .collect();
        k.sort();
        k
    };
    let keys = key_names();
    assert_eq!(
        keys,
        [
            "matmul bert.encoder.layer.0 forward",
            "matmul bert.encoder.layer.1 forward",
            "mul  optimizer",
            "relu bert.encoder.layer.0 forward",
            "relu bert.encoder.layer.1 forward",
        ]
    );
    steps(1000);
    let (kept, dropped) = records();
    assert_eq!(kept.len(), 64, "the ring holds its capacity");
    // Per step: 5 ops, 3 module slices, 2 phase slices (and whatever other threads added).
    assert!(kept.len() as u64 + dropped >= 1005 * 10);
    assert_eq!(key_names(), keys, "the totals grew with the steps");
    let matmuls: u64 = record::aggregates()
        .0
        .into_iter()
        .filter(|((op, _, phase), _)| op == "matmul" && *phase == Phase::Forward)
        .map(|(_, a)| a.calls)
        .sum();
    assert_eq!(matmuls, 1005 * 2);
}

#[test]
fn a_trace_reads_back_into_the_same_tables() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _p = session(1 << 16);
    tiny_step();
    let dir = std::env::temp_dir().join(format!("prof-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.json");
    write_chrome_trace(&path).unwrap();
    let back = read_chrome_trace(&path).unwrap();
    let me = current_thread();
    let back: Vec<Record> = back.into_iter().filter(|r| r.thread == me).collect();
    let orig = mine();
    assert_eq!(back.len(), orig.len());
    let mm = back.iter().find(|r| r.name == "matmul").unwrap();
    assert_eq!(
        (mm.flops, &*mm.module, mm.phase),
        (1024, "bert.encoder.layer.0", Phase::Forward)
    );
    let (a, b) = (Summary::from_records(&orig), Summary::from_records(&back));
    assert_eq!(a.ops.len(), b.ops.len());
    assert!(compare(&a, &b).contains("matmul"));
    assert!(a
        .render(Peak {
            gflops: Some(100.0),
            gbps: None
        })
        .contains("bert.encoder.layer.0"));
    std::fs::write(
        &path,
        b"{\"traceEvents\": [{\"ph\": \"X\", \"cat\": \"op\"}]}",
    )
    .unwrap();
    let e = read_chrome_trace(&path).unwrap_err().to_string();
    assert!(e.contains("t.json") && e.contains("event 0"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_step_window_profiles_only_its_steps() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    start_run(RunOptions {
        steps: Some((2, 4)),
        trace: None,
    });
    for n in 1..=5 {
        let _step = step(n);
        let t = x(&[n as usize]);
        let _ = t.add(&t).unwrap();
    }
    let table = finish_run().unwrap().expect("steps 2 and 3 were profiled");
    assert!(!enabled());
    let adds: Vec<String> = mine()
        .into_iter()
        .filter(|r| r.name == "add")
        .map(|r| r.shapes)
        .collect();
    assert_eq!(adds, ["[2][2]->[2]", "[3][3]->[3]"]);
    assert!(table.contains("add"), "{table}");
}

/// On a GPU (the simulator in CI) an op's device time comes from its CUDA events: a kernel
/// slice on the GPU's stream track, inside the host slice's span on the GPU clock, linked to
/// it by a flow id, and the trace shows it on the GPU process with a flow arrow.
#[cfg(feature = "cuda")]
#[test]
fn the_gpu_path_emits_event_timed_slices_on_a_stream_track() {
    let Some(dev) = crate::testing::cuda_or_skip("profiler gpu slices") else {
        return;
    };
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (
        x(&[32, 64]).to_device(dev).unwrap(),
        x(&[64, 16]).to_device(dev).unwrap(),
    );
    let _p = session(1 << 16);
    {
        let _f = phase(Phase::Forward);
        let _m = module("bert");
        let y = a.matmul(&b).unwrap();
        let _ = y.gelu().unwrap();
    }
    let recs = mine();
    let all = records().0;
    let kernels: Vec<&Record> = all.iter().filter(|r| r.kind == Kind::Kernel).collect();
    let host = recs
        .iter()
        .find(|r| r.name == "matmul")
        .expect("host matmul");
    let k = kernels
        .iter()
        .find(|r| r.name == "matmul")
        .expect("a kernel record for the matmul");
    assert_eq!((k.device, k.thread), ("cuda", 0));
    assert_eq!(
        (&*k.module, k.phase, k.flops),
        ("bert", Phase::Forward, 2 * 32 * 64 * 16)
    );
    assert!(host.flow != 0 && k.flow == host.flow);
    assert!(k.dur_ns > 0, "the simulator's events carry real durations");
    // The simulator runs the work while the host waits, so the events fall inside the host slice.
    let slack = 1_000_000; // 1 ms: the reference event's host time is taken beside it
    assert!(k.start_ns + slack >= host.start_ns, "{k:?} vs {host:?}");
    assert!(k.start_ns + k.dur_ns <= host.start_ns + host.dur_ns + slack);
    assert!(summary().kernels.iter().any(|(n, _)| n == "gelu"));
    let v = trace::to_json(&all);
    let events = v["traceEvents"].as_array().unwrap();
    let on_gpu = |e: &&serde_json::Value| e["pid"] == 2 && e["ph"] == "X";
    assert!(events.iter().filter(on_gpu).any(|e| e["name"] == "matmul"));
    let flows = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    assert!(flows("s") >= 2 && flows("s") == flows("f"));
}
