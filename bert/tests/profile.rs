//! The profiler on a real BERT: the FLOPs recorded for a BERT-base forward at batch 8 x 128
//! against the analytic count, and where a tiny model's training step lands (module paths from
//! the HF parameter names, phases: every backward op in `backward`, every AdamW op in
//! `optimizer`), with slices that nest.

use autograd::no_grad;
use bert::{BertConfig, BertForMaskedLM, BertModel, Init};
use nn::{step_params, AdamW, AdamWConfig, Ctx, Module};
use std::sync::Mutex;
use tensor::profiler::{self, flops, Kind, Phase, Record};
use tensor::{Rng, Tensor};

/// The profiler is global: these tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn mine() -> Vec<Record> {
    let me = profiler::current_thread();
    let (recs, dropped) = profiler::records();
    assert_eq!(dropped, 0, "the ring dropped records");
    recs.into_iter().filter(|r| r.thread == me).collect()
}

#[test]
fn bert_base_forward_flops_match_the_analytic_count() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = BertConfig::default(); // bert-base-uncased
    assert_eq!((c.num_hidden_layers, c.hidden_size), (12, 768));
    let model = BertModel::with_init(&c, false, &mut Init::Zeros).unwrap();
    let (b, l) = (8, 128);
    let ids = Tensor::from_vec(vec![1i64; b * l], &[b, l]).unwrap();
    let _p = profiler::session(1 << 20);
    no_grad(|| model.forward(&ids, None, None, &mut Ctx::eval())).unwrap();
    let recs = mine();
    let counted: u64 = recs
        .iter()
        .filter(|r| r.kind == Kind::Op)
        .map(|r| r.flops)
        .sum();
    // Written out, not through the profiler's formulas: per layer 4 projections 2·t·h·h, the
    // feed-forward 2·2·t·h·i, attention's QKᵀ and PV 2·2·b·l·l·h.
    let (t, h, i) = ((b * l) as f64, 768f64, 3072f64);
    let per_layer = 8.0 * t * h * h + 4.0 * t * h * i + 4.0 * (b * l * l) as f64 * h;
    let analytic = 12.0 * per_layer;
    let err = (counted as f64 - analytic).abs() / analytic;
    assert!(err < 0.01, "recorded {counted} FLOPs, analytic {analytic}");
    let formula = flops::bert_encoder_forward(12, 768, 3072, b, l) as f64;
    assert!((formula - analytic).abs() / analytic < 1e-12);
    // Every product is attributed to its layer.
    let l3: u64 = recs
        .iter()
        .filter(|r| r.kind == Kind::Op && r.module.starts_with("encoder.layer.3."))
        .map(|r| r.flops)
        .sum();
    assert!(
        (l3 as f64 - per_layer).abs() / per_layer < 0.01,
        "{l3} vs {per_layer}"
    );
}

fn tiny() -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        ..BertConfig::default()
    }
}

#[test]
fn a_training_step_lands_in_its_modules_and_phases() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = BertForMaskedLM::new(&tiny(), &mut Rng::new(3)).unwrap();
    let params = model.named_params();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let ids = Tensor::from_vec((0..16).map(|i| i % 40).collect::<Vec<i64>>(), &[2, 8]).unwrap();
    let labels = Tensor::from_vec(
        (0..16)
            .map(|i| if i % 3 == 0 { i % 40 } else { -100 })
            .collect::<Vec<i64>>(),
        &[2, 8],
    )
    .unwrap();
    let _p = profiler::session(1 << 20);
    let t0 = std::time::Instant::now();
    let loss = profiler::in_phase(Phase::Forward, || {
        model.forward(&ids, None, None, &labels, &mut Ctx::train(1))
    })
    .unwrap()
    .loss;
    let grads = loss.backward().unwrap();
    drop(loss);
    step_params(&mut opt, 1e-3, &params, &grads).unwrap();
    let step = t0.elapsed().as_nanos() as f64;
    let recs = mine();
    let ops: Vec<&Record> = recs.iter().filter(|r| r.kind == Kind::Op).collect();

    // Forward: the paths are the HF parameter names' prefixes.
    let fwd = |m: &str| {
        ops.iter()
            .any(|r| r.phase == Phase::Forward && &*r.module == m)
    };
    for m in [
        "bert.embeddings",
        "bert.encoder.layer.0.attention.self",
        "bert.encoder.layer.0.attention.output",
        "bert.encoder.layer.1.intermediate",
        "bert.encoder.layer.1.output",
        "cls.predictions",
    ] {
        assert!(fwd(m), "no forward op in {m}");
    }
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    for r in ops.iter().filter(|r| !r.module.is_empty()) {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&format!("{}.", r.module))),
            "module path {} names no parameter",
            r.module
        );
    }
    // Backward: every op between the forward's end and the optimizer is in `backward`, under
    // the module that made its node.
    let (fwd_end, opt_start) = {
        let phase_slice = |p: Phase| {
            recs.iter()
                .find(|r| r.kind == Kind::Phase && r.phase == p)
                .unwrap_or_else(|| panic!("no {} slice", p.name()))
        };
        let (f, o) = (phase_slice(Phase::Forward), phase_slice(Phase::Optimizer));
        (f.start_ns + f.dur_ns, o.start_ns)
    };
    let bwd: Vec<&&Record> = ops
        .iter()
        .filter(|r| r.start_ns >= fwd_end && r.start_ns + r.dur_ns <= opt_start)
        .collect();
    assert!(bwd.len() > 20, "{} backward ops", bwd.len());
    for r in &bwd {
        assert_eq!(r.phase, Phase::Backward, "{} at {}", r.name, r.start_ns);
    }
    assert!(bwd.iter().any(
        |r| &*r.module == "bert.encoder.layer.1.attention.self" && r.name == "softmax_backward"
    ));
    // Optimizer: every op after the backward is AdamW's, in `optimizer`.
    let after: Vec<&&Record> = ops.iter().filter(|r| r.start_ns >= opt_start).collect();
    assert!(!after.is_empty());
    for r in &after {
        assert_eq!(r.phase, Phase::Optimizer, "{}", r.name);
    }
    // Every op that reads or writes a tensor records its bytes (GB/s in the table); those
    // without are ops that make a tensor from nothing, or name a group of ops they call.
    let no_bytes: std::collections::BTreeSet<&str> = ops
        .iter()
        .filter(|r| r.bytes == 0)
        .map(|r| &*r.name)
        .collect();
    let allowed = ["zeros", "full", "sum_to_shape"];
    assert!(
        no_bytes.iter().all(|n| allowed.contains(n)),
        "ops recorded with no bytes moved: {no_bytes:?}"
    );
    // Slices nest on the thread, and the phases cover the step.
    assert_nested(&recs);
    let phases = profiler::phase_ns(&recs);
    assert!(
        (phases as f64 - step).abs() <= 0.05 * step,
        "phase slices {phases} ns, step {step} ns"
    );
}

fn assert_nested(recs: &[Record]) {
    if let Some(r) = profiler::first_overlap(recs) {
        panic!("{} overlaps its parent", r.name);
    }
}
