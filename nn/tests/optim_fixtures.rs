//! The HF training step (clip_grad_norm_, AdamW with no-decay groups, linear warmup/decay schedule)
//! against PyTorch trajectories in `tests/fixtures/optim.safetensors`, written by
//! `scripts/gen_optim_fixtures.py` for both AdamW variants and two configurations. Parameters must
//! match within 1e-6 relative (max |ours - torch| / max |torch| per tensor) after every step.

use nn::{clip_grad_norm, warmup_steps, AdamW, AdamWConfig, AdamWVariant, LrSchedule, ParamUpdate};
use tensor::safetensors::SafeTensors;
use tensor::Tensor;

const TOL: f64 = 1e-6;

fn fixtures() -> SafeTensors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/optim.safetensors"
    );
    SafeTensors::open(path).unwrap()
}

fn get(f: &SafeTensors, name: &str) -> Tensor {
    f.get(name)
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn meta<T: std::str::FromStr>(f: &SafeTensors, key: &str) -> T {
    let v = &f.metadata()[key];
    v.parse()
        .unwrap_or_else(|_| panic!("metadata {key} = {v:?}"))
}

fn names(f: &SafeTensors) -> Vec<String> {
    f.metadata()["params"]
        .split(',')
        .map(str::to_string)
        .collect()
}

fn rel_err(ours: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(ours.shape(), want.shape());
    let (a, b) = (ours.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max)
        / scale
}

/// The training loop of one configuration, from the fixture's initial parameters.
struct Run {
    names: Vec<String>,
    params: Vec<Tensor>,
    opt: AdamW,
    sched: LrSchedule,
}

impl Run {
    fn new(f: &SafeTensors, cfg: &str, variant: AdamWVariant) -> Run {
        let names = names(f);
        let base_lr: f64 = meta(f, &format!("{cfg}.base_lr"));
        let total: u64 = meta(f, &format!("{cfg}.total_steps"));
        let ratio: f64 = meta(f, &format!("{cfg}.warmup_ratio"));
        let warm = warmup_steps(total, 0, ratio);
        assert_eq!(warm, meta::<u64>(f, &format!("{cfg}.warmup_steps")));
        let opt = AdamW::new(AdamWConfig {
            lr: base_lr,
            betas: (meta(f, "beta1"), meta(f, "beta2")),
            eps: meta(f, "eps"),
            weight_decay: meta(f, &format!("{cfg}.weight_decay")),
            variant,
            ..AdamWConfig::default()
        })
        .unwrap();
        let params = names
            .iter()
            .map(|n| get(f, &format!("param.{n}")))
            .collect();
        Run {
            names,
            params,
            opt,
            sched: LrSchedule::linear(base_lr, warm, total),
        }
    }

    /// Step `k` (1-based): clip the fixture's raw gradients, update with the schedule's lr,
    /// advance the schedule. Returns (lr used, grad norm).
    fn step(&mut self, f: &SafeTensors, k: usize) -> (f64, f64) {
        let mut grads: Vec<Tensor> = self
            .names
            .iter()
            .map(|n| get(f, &format!("grad.{k}.{n}")))
            .collect();
        let mut refs: Vec<&mut Tensor> = grads.iter_mut().collect();
        let norm = clip_grad_norm(&mut refs, meta(f, "max_grad_norm")).unwrap();
        let lr = self.sched.lr();
        let mut ups: Vec<ParamUpdate> = self
            .names
            .iter()
            .zip(self.params.iter_mut())
            .zip(&grads)
            .map(|((name, value), grad)| ParamUpdate { name, value, grad })
            .collect();
        self.opt.step(lr, &mut ups).unwrap();
        self.sched.advance();
        (lr, norm)
    }

    /// Largest relative error against the fixture's parameters after step `k` of `variant`.
    fn err_vs(&self, f: &SafeTensors, cfg: &str, variant: &str, k: usize) -> (f64, String) {
        self.names
            .iter()
            .zip(&self.params)
            .map(|(n, p)| {
                let want = get(f, &format!("{cfg}.{variant}.{k}.{n}"));
                (rel_err(p, &want), n.clone())
            })
            .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a })
    }
}

fn check_trajectory(cfg: &str, variant: AdamWVariant) {
    let f = fixtures();
    let steps: usize = meta(&f, &format!("{cfg}.steps"));
    let lrs = get(&f, &format!("{cfg}.lr")).to_vec::<f64>().unwrap();
    let norms = get(&f, &format!("{cfg}.grad_norm"))
        .to_vec::<f64>()
        .unwrap();
    let mut run = Run::new(&f, cfg, variant);
    for k in 1..=steps {
        let (lr, norm) = run.step(&f, k);
        // Same f64 arithmetic as Python's LambdaLR: bit-identical.
        assert_eq!(
            lr.to_bits(),
            lrs[k - 1].to_bits(),
            "{cfg} step {k}: lr {lr}"
        );
        let nerr = (norm - norms[k - 1]).abs() / norms[k - 1];
        assert!(
            nerr < TOL,
            "{cfg} step {k}: grad norm {norm} vs {}",
            norms[k - 1]
        );
        let (err, name) = run.err_vs(&f, cfg, variant.name(), k);
        assert!(
            err < TOL,
            "{cfg}/{variant:?} step {k}: {name} relative error {err:e}"
        );
    }
    // The first step used lr 0 (warmup), and one step was not clipped (norm < 1).
    assert_eq!(lrs[0], 0.0);
    assert!(norms.iter().any(|&n| n < 1.0) && norms.iter().any(|&n| n > 1.0));
}

#[test]
fn hf_variant_matches_transformers_4_17_adamw() {
    check_trajectory("a", AdamWVariant::Hf);
    check_trajectory("b", AdamWVariant::Hf);
}

#[test]
fn torch_variant_matches_torch_optim_adamw() {
    check_trajectory("a", AdamWVariant::Torch);
    check_trajectory("b", AdamWVariant::Torch);
}

/// The comparison can fail: each variant is far from the other variant's trajectory.
#[test]
fn variants_are_told_apart_by_the_fixture() {
    let f = fixtures();
    for cfg in ["a", "b"] {
        let steps: usize = meta(&f, &format!("{cfg}.steps"));
        for (ours, theirs) in [(AdamWVariant::Hf, "torch"), (AdamWVariant::Torch, "hf")] {
            let mut run = Run::new(&f, cfg, ours);
            for k in 1..=steps {
                run.step(&f, k);
            }
            let (err, name) = run.err_vs(&f, cfg, theirs, steps);
            assert!(
                err > 100.0 * TOL,
                "{cfg}: {ours:?} vs {theirs}: {name} {err:e}"
            );
        }
    }
}

/// Save the optimizer and schedule after 2 steps, load them into fresh objects, continue: the
/// parameters are bit-identical to an uninterrupted run (and still match torch).
#[test]
fn resume_from_state_dict_is_bit_exact() {
    let f = fixtures();
    let dir = std::env::temp_dir().join(format!("nn-optim-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for variant in [AdamWVariant::Hf, AdamWVariant::Torch] {
        let mut straight = Run::new(&f, "b", variant);
        for k in 1..=4 {
            straight.step(&f, k);
        }

        let mut first = Run::new(&f, "b", variant);
        first.step(&f, 1);
        first.step(&f, 2);
        let path = dir.join(format!("{}.safetensors", variant.name()));
        first.opt.save_state(&path).unwrap();
        let sched_json = serde_json::to_string(&first.sched).unwrap();

        let mut resumed = Run {
            names: first.names.clone(),
            // Parameters would come from the model checkpoint; copy them bit for bit.
            params: first.params.iter().map(|p| p.copy().unwrap()).collect(),
            opt: AdamW::from_state(&path).unwrap(),
            sched: serde_json::from_str(&sched_json).unwrap(),
        };
        drop(first);
        assert_eq!(resumed.opt.step_count(), 2);
        assert_eq!(resumed.opt.config().variant, variant);
        resumed.step(&f, 3);
        resumed.step(&f, 4);
        for ((n, a), b) in straight
            .names
            .iter()
            .zip(&straight.params)
            .zip(&resumed.params)
        {
            let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{variant:?} {n}: resumed run differs: {a:?} vs {b:?}");
        }
        let (err, name) = resumed.err_vs(&f, "b", variant.name(), 4);
        assert!(err < TOL, "{name} {err:e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A saved state loaded for a model whose parameter changed shape: the error names it.
#[test]
fn resumed_state_shape_mismatch_names_the_parameter() {
    let f = fixtures();
    let mut run = Run::new(&f, "a", AdamWVariant::Hf);
    run.step(&f, 1);
    let sd = run.opt.state_dict().unwrap();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    opt.load_state_dict(&sd).unwrap();
    let mut p = Tensor::zeros(&[4, 4], tensor::DType::F32, tensor::Device::Cpu).unwrap();
    let g = p.clone();
    let err = opt
        .step(
            1e-3,
            &mut [ParamUpdate {
                name: "encoder.dense.weight",
                value: &mut p,
                grad: &g,
            }],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"encoder.dense.weight\"") && err.contains("[4, 3]"),
        "{err}"
    );
}
