//! nn's optimisation on a GPU against the CPU (feature `cuda`): `AdamW` bit for bit over several
//! steps (both variants, no-decay groups, a parameter skipped for a step, a transposed gradient,
//! a state dict round trip), `clip_grad_norm` / `total_norm`, `LossScaler::unscale`, the
//! mixed-device errors, `Param::update` on a device parameter, and `to_device` keeping tied
//! weights tied. Every test skips with a printed reason when no CUDA device is available.
#![cfg(feature = "cuda")]

use nn::{
    clip_grad_norm, clip_grad_norm_deferred, join, to_device, total_norm, AdamW, AdamWConfig,
    AdamWVariant, LossScaler, LossScalerConfig, Module, Param, ParamUpdate,
};
use tensor::{DType, Device, Tensor};

/// `cuda:0`, held by this test alone (the tests share one device), or `None` after saying why.
use tensor::testing::serial_cuda_or_skip as gpu_or_skip;

/// A fresh seed per run, printed so a failure can be replayed.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let s = t.as_nanos() as u64 % 1_000_000_007;
    eprintln!("seed {s}");
    s
}

fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
    tensor::testing::randn(shape, std, DType::F32, seed)
}

/// The elements' bit patterns, row-major (so -0 and NaN payloads count).
fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// HF names (two in the no-decay group) and shapes: two parameters span several kernel chunks
/// (16384 elements) with a ragged tail.
const NAMES: [&str; 5] = [
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.encoder.layer.0.output.dense.bias",
    "cls.predictions.transform.dense.weight",
    "head.scale.weight",
];
const SHAPES: [&[usize]; 5] = [&[300, 70], &[70], &[33], &[40, 1000], &[1]];

/// The gradient of parameter `i` at `step`, on `dev`; parameter 0's is a transposed view there.
fn gradient(i: usize, step: u64, seed: u64, dev: Device) -> Tensor {
    let s = seed + 10 * step + i as u64;
    if i == 0 {
        let (r, c) = (SHAPES[0][0], SHAPES[0][1]);
        randn(&[c, r], 1.0, s).to_device(dev).unwrap().t().unwrap()
    } else {
        randn(SHAPES[i], 1.0, s).to_device(dev).unwrap()
    }
}

/// One step of `opt` over `values` with the gradients of `step`; parameter 2 has none at step 2.
fn step(opt: &mut AdamW, values: &mut [Tensor], step: u64, seed: u64, lr: f64) {
    let dev = values[0].device();
    let grads: Vec<Tensor> = (0..NAMES.len())
        .map(|i| gradient(i, step, seed, dev))
        .collect();
    let mut ups: Vec<ParamUpdate<'_>> = values
        .iter_mut()
        .zip(&grads)
        .enumerate()
        .filter(|(i, _)| !(step == 2 && *i == 2))
        .map(|(i, (value, grad))| ParamUpdate {
            name: NAMES[i],
            value,
            grad,
        })
        .collect();
    opt.step(lr, &mut ups)
        .unwrap_or_else(|e| panic!("step {step} on {dev}: {e}"));
}

fn assert_same_state(cpu: &AdamW, gpu: &AdamW, dev: Device, what: &str) {
    assert_eq!(cpu.step_count(), gpu.step_count(), "{what}");
    for name in NAMES {
        let (c, g) = (
            cpu.param_state(name).unwrap(),
            gpu.param_state(name).unwrap(),
        );
        assert_eq!(g.device(), dev, "{what} {name}");
        assert_eq!(c.step(), g.step(), "{what} {name}");
        assert_eq!(
            bits(c.exp_avg()),
            bits(g.exp_avg()),
            "{what} {name} exp_avg"
        );
        assert_eq!(
            bits(c.exp_avg_sq()),
            bits(g.exp_avg_sq()),
            "{what} {name} exp_avg_sq"
        );
    }
}

#[test]
fn adamw_on_the_gpu_is_the_cpu_step_bit_for_bit() {
    let Some((dev, _serial)) = gpu_or_skip("adamw_on_the_gpu_is_the_cpu_step_bit_for_bit") else {
        return;
    };
    let seed = fresh_seed();
    for variant in [AdamWVariant::Hf, AdamWVariant::Torch] {
        let config = AdamWConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            variant,
            ..AdamWConfig::default()
        };
        let mut cpu = AdamW::new(config.clone()).unwrap();
        let mut gpu = AdamW::new(config.clone()).unwrap();
        let mut on_cpu: Vec<Tensor> = SHAPES
            .iter()
            .enumerate()
            .map(|(i, s)| randn(s, 0.5, seed + 1000 + i as u64))
            .collect();
        let mut on_gpu: Vec<Tensor> = on_cpu.iter().map(|t| t.to_device(dev).unwrap()).collect();
        for k in 1..=4u64 {
            let lr = 1e-3 * k as f64;
            step(&mut cpu, &mut on_cpu, k, seed, lr);
            step(&mut gpu, &mut on_gpu, k, seed, lr);
        }
        let what = format!("{variant:?}");
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(on_gpu[i].device(), dev, "{what} {name}");
            assert_eq!(bits(&on_gpu[i]), bits(&on_cpu[i]), "{what} {name}");
        }
        assert_eq!(gpu.param_state(NAMES[2]).unwrap().step(), 3, "{what}");
        assert_same_state(&cpu, &gpu, dev, &what);

        // The saved state is the CPU's, on the host; loaded into a fresh optimizer it moves to
        // the parameters' device at the next step and continues bit for bit.
        let (sd_cpu, sd_gpu) = (cpu.state_dict().unwrap(), gpu.state_dict().unwrap());
        assert_eq!(sd_cpu.metadata, sd_gpu.metadata);
        assert_eq!(sd_cpu.tensors.len(), sd_gpu.tensors.len());
        for ((nc, tc), (ng, tg)) in sd_cpu.tensors.iter().zip(&sd_gpu.tensors) {
            assert_eq!(nc, ng);
            assert_eq!(tg.device(), Device::Cpu, "{ng}");
            assert_eq!(tc.to_vec_f64().unwrap(), tg.to_vec_f64().unwrap(), "{ng}");
        }
        let mut resumed = AdamW::new(AdamWConfig::default()).unwrap();
        resumed.load_state_dict(&sd_gpu).unwrap();
        assert_eq!(resumed.param_state(NAMES[0]).unwrap().device(), Device::Cpu);
        step(&mut cpu, &mut on_cpu, 5, seed, 5e-3);
        step(&mut resumed, &mut on_gpu, 5, seed, 5e-3);
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(bits(&on_gpu[i]), bits(&on_cpu[i]), "{what} resumed {name}");
        }
        assert_same_state(&cpu, &resumed, dev, &format!("{what} resumed"));
    }
}

#[test]
fn a_device_parameter_steps_through_param_update() {
    let Some((dev, _serial)) = gpu_or_skip("a_device_parameter_steps_through_param_update") else {
        return;
    };
    let seed = fresh_seed();
    let w = randn(&[17, 5], 1.0, seed);
    let g = randn(&[17, 5], 1.0, seed + 1);
    let p = Param::new(w.to_device(dev).unwrap());
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let (mut opt_gpu, mut opt_cpu) = (
        AdamW::new(config.clone()).unwrap(),
        AdamW::new(config).unwrap(),
    );
    let g_dev = g.to_device(dev).unwrap();
    // A tensor that shares the old value keeps it (copy-on-write).
    let old = p.tensor();
    p.update(|value| {
        opt_gpu.step(
            1e-2,
            &mut [ParamUpdate {
                name: "w",
                value,
                grad: &g_dev,
            }],
        )
    })
    .unwrap();
    let mut want = w.clone();
    opt_cpu
        .step(
            1e-2,
            &mut [ParamUpdate {
                name: "w",
                value: &mut want,
                grad: &g,
            }],
        )
        .unwrap();
    assert_eq!(p.tensor().device(), dev);
    assert_eq!(bits(&p.tensor()), bits(&want));
    assert_eq!(bits(&old), bits(&w));
}

#[test]
fn mixed_devices_are_refused_and_nothing_changes() {
    let Some((dev, _serial)) = gpu_or_skip("mixed_devices_are_refused_and_nothing_changes") else {
        return;
    };
    let mut a = randn(&[4], 1.0, 1);
    let mut b = randn(&[3], 1.0, 2).to_device(dev).unwrap();
    let (a0, b0) = (bits(&a), bits(&b));
    let (ga, gb) = (
        randn(&[4], 1.0, 3),
        randn(&[3], 1.0, 4).to_device(dev).unwrap(),
    );
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let err = opt
        .step(
            1e-3,
            &mut [
                ParamUpdate {
                    name: "enc.a.weight",
                    value: &mut a,
                    grad: &ga,
                },
                ParamUpdate {
                    name: "enc.b.weight",
                    value: &mut b,
                    grad: &gb,
                },
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("AdamW") && err.contains("\"enc.b.weight\"") && err.contains("cuda:0"),
        "{err}"
    );
    assert_eq!((bits(&a), bits(&b)), (a0, b0));
    assert_eq!(opt.step_count(), 0);
    assert!(opt.param_state("enc.a.weight").is_none());
    // A gradient on another device than its parameter.
    let err = opt
        .step(
            1e-3,
            &mut [ParamUpdate {
                name: "enc.b.weight",
                value: &mut b,
                grad: &randn(&[3], 1.0, 5),
            }],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the gradient of parameter \"enc.b.weight\" is on cpu"),
        "{err}"
    );
    let mut gs = [ga.clone(), gb.clone()];
    let [x, y] = &mut gs;
    let err = clip_grad_norm(&mut [x, y], 1.0).unwrap_err().to_string();
    assert!(
        err.starts_with("clip_grad_norm") && err.contains("gradient 1"),
        "{err}"
    );
    let scaler = LossScaler::new(LossScalerConfig::default()).unwrap();
    let [x, y] = &mut gs;
    let err = scaler.unscale(&mut [x, y]).unwrap_err().to_string();
    assert!(
        err.starts_with("LossScaler") && err.contains("gradient 1"),
        "{err}"
    );
}

/// Gradients of several sizes (one over a kernel chunk, one empty, one transposed on the device).
fn clip_inputs(seed: u64, std: f64) -> Vec<Tensor> {
    vec![
        randn(&[3, 5], std, seed),
        randn(&[70_003], std, seed + 1),
        randn(&[0, 4], std, seed + 2),
        randn(&[4, 6], std, seed + 3),
    ]
}

fn upload(ts: &[Tensor], dev: Device) -> Vec<Tensor> {
    ts.iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 3 {
                t.to_device(dev).unwrap().t().unwrap()
            } else {
                t.to_device(dev).unwrap()
            }
        })
        .collect()
}

#[test]
fn clip_grad_norm_on_the_gpu_matches_the_cpu() {
    let Some((dev, _serial)) = gpu_or_skip("clip_grad_norm_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let seed = fresh_seed();
    let host = clip_inputs(seed, 1.0);
    let mut cpu: Vec<Tensor> = host.clone();
    cpu[3] = cpu[3].t().unwrap();
    let mut gpu = upload(&host, dev);

    let refs_gpu: Vec<&Tensor> = gpu.iter().collect();
    let refs_cpu: Vec<&Tensor> = cpu.iter().collect();
    let (n_gpu, n_cpu) = (
        total_norm(&refs_gpu).unwrap(),
        total_norm(&refs_cpu).unwrap(),
    );
    // Same f64 squares, summed in another grouping: equal to within a few f64 roundings.
    assert!((n_gpu - n_cpu).abs() <= 1e-13 * n_cpu, "{n_gpu} vs {n_cpu}");
    assert_eq!(total_norm(&refs_gpu).unwrap().to_bits(), n_gpu.to_bits());

    let before: Vec<Tensor> = cpu.iter().map(|t| t.copy().unwrap()).collect();
    let total = {
        let mut m: Vec<&mut Tensor> = gpu.iter_mut().collect();
        clip_grad_norm(&mut m, 1.0).unwrap()
    };
    assert_eq!(total.to_bits(), n_gpu.to_bits());
    let total_cpu = {
        let mut m: Vec<&mut Tensor> = cpu.iter_mut().collect();
        clip_grad_norm(&mut m, 1.0).unwrap()
    };
    // The GPU multiplied every element by its own coefficient, in f32.
    let coef = (1.0 / (total + 1e-6)) as f32;
    let coef_cpu = (1.0 / (total_cpu + 1e-6)) as f32;
    for (i, (g, b)) in gpu.iter().zip(&before).enumerate() {
        assert_eq!(g.device(), dev);
        assert_eq!(g.shape(), b.shape(), "gradient {i}");
        let want: Vec<u32> = b
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| (x * coef).to_bits())
            .collect();
        assert_eq!(bits(g), want, "gradient {i}");
        if coef == coef_cpu {
            assert_eq!(bits(g), bits(&cpu[i]), "gradient {i} vs the CPU");
        }
    }

    // A small norm leaves the gradients alone; a non-finite one is reported, nothing scaled.
    let mut small = upload(&clip_inputs(seed + 10, 1e-4), dev);
    let small0: Vec<Vec<u32>> = small.iter().map(bits).collect();
    let mut m: Vec<&mut Tensor> = small.iter_mut().collect();
    assert!(clip_grad_norm(&mut m, 1.0).unwrap() < 1.0);
    assert_eq!(small.iter().map(bits).collect::<Vec<_>>(), small0);
    for bad in [f32::INFINITY, f32::NAN] {
        let mut v = vec![1f32; 20_000];
        v[19_999] = bad;
        let mut g = [
            Tensor::from_vec(v, &[20_000])
                .unwrap()
                .to_device(dev)
                .unwrap(),
            randn(&[5], 10.0, seed).to_device(dev).unwrap(),
        ];
        let g1 = bits(&g[1]);
        let mut m: Vec<&mut Tensor> = g.iter_mut().collect();
        assert!(!clip_grad_norm(&mut m, 1.0).unwrap().is_finite());
        assert_eq!(bits(&g[1]), g1);
    }
}

/// The deferred clipping (norm and factor on the device) is the host-decided one, bit for bit,
/// and waits for nothing: large, small and non-finite norms.
#[test]
fn deferred_clipping_is_the_same_with_no_sync() {
    let Some((dev, _serial)) = gpu_or_skip("deferred_clipping_is_the_same_with_no_sync") else {
        return;
    };
    let seed = fresh_seed();
    let mut bad = vec![1f32; 20_000];
    bad[7] = f32::INFINITY;
    let cases = [
        clip_inputs(seed, 1.0),
        clip_inputs(seed + 10, 1e-4),
        vec![
            Tensor::from_vec(bad, &[20_000]).unwrap(),
            randn(&[5], 10.0, seed),
        ],
    ];
    for (i, host) in cases.iter().enumerate() {
        let (mut a, mut b) = (upload(host, dev), upload(host, dev));
        let want = {
            let mut m: Vec<&mut Tensor> = a.iter_mut().collect();
            clip_grad_norm(&mut m, 1.0).unwrap()
        };
        let before = dev.counters().unwrap().unwrap();
        let norm = {
            let mut m: Vec<&mut Tensor> = b.iter_mut().collect();
            clip_grad_norm_deferred(&mut m, 1.0).unwrap()
        };
        let during = dev.counters().unwrap().unwrap().since(&before);
        assert_eq!(during.syncs, 0, "case {i}: {during}");
        assert_eq!((norm.device(), norm.dtype()), (dev, DType::F64));
        let got = norm.to_vec::<f64>().unwrap()[0];
        assert_eq!(got.to_bits(), want.to_bits(), "case {i}: {got} vs {want}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(bits(x), bits(y), "case {i}");
        }
    }
}

#[test]
fn unscale_on_the_gpu_matches_the_cpu() {
    let Some((dev, _serial)) = gpu_or_skip("unscale_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let seed = fresh_seed();
    let scaler = LossScaler::new(LossScalerConfig::default()).unwrap();
    for poison in [None, Some(f32::INFINITY), Some(f32::NAN)] {
        let mut host = clip_inputs(seed, 1000.0);
        if let Some(bad) = poison {
            let mut v = host[1].to_vec::<f32>().unwrap();
            v[70_000] = bad;
            host[1] = Tensor::from_vec(v, &[70_003]).unwrap();
        }
        let mut gpu = upload(&host, dev);
        let mut cpu = host.clone();
        cpu[3] = cpu[3].t().unwrap();
        let found_gpu = {
            let mut m: Vec<&mut Tensor> = gpu.iter_mut().collect();
            scaler.unscale(&mut m).unwrap()
        };
        let found_cpu = {
            let mut m: Vec<&mut Tensor> = cpu.iter_mut().collect();
            scaler.unscale(&mut m).unwrap()
        };
        assert_eq!(found_gpu, poison.is_some());
        assert_eq!(found_gpu, found_cpu);
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_eq!((g.device(), g.shape()), (dev, c.shape()), "gradient {i}");
            assert_eq!(bits(g), bits(c), "gradient {i} (poison {poison:?})");
        }
    }
    // Disabled: nothing is touched.
    let off = LossScaler::new(LossScalerConfig {
        enabled: false,
        ..LossScalerConfig::default()
    })
    .unwrap();
    let mut g = randn(&[9], 1.0, seed).to_device(dev).unwrap();
    let g0 = bits(&g);
    assert!(!off.unscale(&mut [&mut g]).unwrap());
    assert_eq!(bits(&g), g0);
}

/// One parameter under two names (tied), and one more.
struct Tied {
    shared: Param,
    other: Param,
}

impl Module for Tied {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(
            join(prefix, "embeddings.word_embeddings.weight"),
            &self.shared,
        );
        f(join(prefix, "cls.predictions.bias"), &self.other);
        f(join(prefix, "cls.predictions.decoder.weight"), &self.shared);
    }
}

#[test]
fn to_device_keeps_tied_weights_tied() {
    let Some((dev, _serial)) = gpu_or_skip("to_device_keeps_tied_weights_tied") else {
        return;
    };
    let m = Tied {
        shared: Param::new(randn(&[11, 4], 1.0, 1)),
        other: Param::new(randn(&[11], 1.0, 2)),
    };
    let before: Vec<Vec<u32>> = m
        .named_params()
        .iter()
        .map(|(_, p)| bits(&p.tensor()))
        .collect();
    to_device(&m, dev).unwrap();
    let on_gpu = m.named_params();
    assert!(on_gpu[0].1.same(&on_gpu[2].1), "still one parameter");
    assert!(on_gpu[0].1.tensor().same_storage(&on_gpu[2].1.tensor()));
    for ((name, p), want) in on_gpu.iter().zip(&before) {
        assert_eq!(p.tensor().device(), dev, "{name}");
        assert_eq!(&bits(&p.tensor()), want, "{name}");
    }
    // Already there: nothing is copied.
    let w = m.shared.tensor();
    to_device(&m, dev).unwrap();
    assert!(m.shared.tensor().same_storage(&w));
    to_device(&m, Device::Cpu).unwrap();
    let back = m.named_params();
    assert!(back[0].1.same(&back[2].1));
    for ((name, p), want) in back.iter().zip(&before) {
        assert_eq!(p.tensor().device(), Device::Cpu, "{name}");
        assert_eq!(&bits(&p.tensor()), want, "{name}");
    }
}
