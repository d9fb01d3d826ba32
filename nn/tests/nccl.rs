//! The NCCL communicator (feature `cuda`): a world of one on cuda:0 flattens and returns its
//! tensors (the smoke test), and with two GPUs the bucketed mean of f32/f16/bf16 tensors (one a
//! transposed view) agrees with the CPU `ThreadGroup`'s and is the same bits on both ranks, while a
//! rank passing another shape is named on both ranks instead of hanging; the differentiable
//! all-gather through NCCL equals the CPU group's. Tests skip with a printed
//! reason when CUDA, NCCL or a second GPU is missing.
#![cfg(feature = "cuda")]

use nn::comm::Nccl;
use nn::{Communicator, ThreadGroup};
use std::time::Duration;
use tensor::testing::{max_rel_err, randn};
use tensor::{DType, Device, Tensor};

/// True when there are `need` devices and NCCL loads; says why not otherwise (a failure under
/// `COTMAE_REQUIRE_GPU`, except for too few devices).
fn gpus_or_skip(test: &str, need: usize) -> bool {
    tensor::testing::gpus_or_skip(test, need).is_some()
}

/// Rank `rank`'s tensors on the host.
fn rank_tensors(rank: usize) -> Vec<Tensor> {
    let s = 10 * rank as u64;
    vec![
        randn(&[3, 5], 1.0, DType::F32, s + 1),
        randn(&[4, 7], 1.0, DType::F32, s + 2).t().unwrap(),
        randn(&[6], 1.0, DType::F16, s + 3),
        randn(&[9], 1.0, DType::BF16, s + 4),
    ]
}

/// Runs `f(comm)` on one thread per communicator; results in rank order.
fn on_ranks<C: Send, R: Send>(comms: Vec<C>, f: impl Fn(C) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The communicators of a group, one per rank.
type Group = Vec<Box<dyn Communicator>>;

/// Two ranks on cuda:0 and cuda:1 through NCCL, and two CPU ranks.
fn two_rank_groups() -> (Group, Group) {
    fn boxed<C: Communicator + 'static>(comms: Vec<C>) -> Group {
        comms
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect()
    }
    (
        boxed(Nccl::group(&[0, 1]).unwrap()),
        boxed(ThreadGroup::with_timeout(2, Duration::from_secs(60)).unwrap()),
    )
}

#[test]
fn a_world_of_one_gpu_returns_its_tensors_flattened() {
    if !gpus_or_skip("a_world_of_one_gpu_returns_its_tensors_flattened", 1) {
        return;
    }
    let comm = Nccl::group(&[0]).unwrap().pop().unwrap();
    assert_eq!(
        (comm.rank(), comm.world_size(), comm.device()),
        (0, 1, Device::Cuda(0))
    );
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let a = randn(&[3, 4], 1.0, dtype, 1);
        let b = randn(&[5, 2], 1.0, dtype, 2).t().unwrap();
        let on_gpu: Vec<Tensor> = [&a, &b]
            .iter()
            .map(|t| t.to_device(comm.device()).unwrap())
            .collect();
        let flat = comm.all_reduce_sum_flat(&[&on_gpu[0], &on_gpu[1]]).unwrap();
        assert_eq!(
            (flat.shape(), flat.dtype(), flat.device()),
            (&[22][..], dtype, comm.device())
        );
        let mut want = a.to_vec_f64().unwrap();
        want.extend(b.to_vec_f64().unwrap());
        assert_eq!(flat.to_vec_f64().unwrap(), want, "{dtype}");
    }
}

#[test]
fn two_gpus_agree_with_the_cpu_group_and_with_each_other() {
    if !gpus_or_skip("two_gpus_agree_with_the_cpu_group_and_with_each_other", 2) {
        return;
    }
    let mean_with = |comms: Vec<Box<dyn Communicator>>, device: fn(usize) -> Device| {
        on_ranks(comms, |comm| {
            let rank = comm.rank();
            let mut ts: Vec<Tensor> = rank_tensors(rank)
                .iter()
                .map(|t| t.to_device(device(rank)).unwrap())
                .collect();
            let mut refs: Vec<&mut Tensor> = ts.iter_mut().collect();
            comm.all_reduce_mean(&mut refs).unwrap();
            ts.iter()
                .map(|t| t.to_device(Device::Cpu).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let (nccl, cpu) = two_rank_groups();
    let on_gpus = mean_with(nccl, Device::Cuda);
    let on_cpu = mean_with(cpu, |_| Device::Cpu);
    for (i, want) in on_cpu[0].iter().enumerate() {
        let tol = if want.dtype() == DType::F32 {
            1e-6
        } else {
            1e-2
        };
        let err = max_rel_err(&on_gpus[0][i], want);
        assert!(err <= tol, "tensor {i}: relative error {err}");
        assert_eq!(
            on_gpus[0][i].to_vec_f64().unwrap(),
            on_gpus[1][i].to_vec_f64().unwrap(),
            "tensor {i} differs between the GPUs"
        );
    }
}

#[test]
fn a_shape_mismatch_across_gpus_names_the_rank() {
    if !gpus_or_skip("a_shape_mismatch_across_gpus_names_the_rank", 2) {
        return;
    }
    let comms = Nccl::group_with_timeout(&[0, 1], Duration::from_secs(60)).unwrap();
    let errs = on_ranks(comms, |comm| {
        let rows = if comm.rank() == 1 { 3 } else { 4 };
        let mut t = Tensor::zeros(&[rows, 2], DType::F32, comm.device()).unwrap();
        comm.all_reduce_mean(&mut [&mut t]).unwrap_err().to_string()
    });
    for e in &errs {
        assert!(
            e.contains("rank 1 disagrees with rank 0 on tensor 0"),
            "{e}"
        );
    }
}

/// The differentiable all-gather (`nn::all_gather`) through NCCL: the gathered rows and the
/// gradient each rank keeps (its own rows of the incoming gradient) are those of the CPU group,
/// for an f32 tensor and a bf16 transposed view.
#[test]
fn the_all_gather_op_on_two_gpus_equals_the_cpu_groups() {
    if !gpus_or_skip("the_all_gather_op_on_two_gpus_equals_the_cpu_groups", 2) {
        return;
    }
    let gather_with = |comms: Vec<Box<dyn Communicator>>, device: fn(usize) -> Device| {
        on_ranks(comms, |comm| {
            let rank = comm.rank() as u64;
            let inputs = [
                randn(&[2, 3], 1.0, DType::F32, 50 + rank),
                randn(&[3, 2], 1.0, DType::BF16, 60 + rank).t().unwrap(),
            ];
            let mut out = Vec::new();
            for x in &inputs {
                let x = autograd::Var::param(x.to_device(device(comm.rank())).unwrap());
                let y = nn::all_gather(comm.as_ref(), &x).unwrap();
                let w = randn(&[4, 3], 1.0, x.value().dtype(), 7)
                    .to_device(x.value().device())
                    .unwrap();
                let loss = y
                    .mul(&autograd::Var::constant(w))
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = loss.backward().unwrap().remove(&x).unwrap();
                assert_eq!(y.value().device(), x.value().device());
                out.push((y.value().to_vec_f64().unwrap(), g.to_vec_f64().unwrap()));
            }
            out
        })
    };
    let (gpu, cpu) = two_rank_groups();
    let on_gpu = gather_with(gpu, Device::Cuda);
    let on_cpu = gather_with(cpu, |_| Device::Cpu);
    assert_eq!(on_gpu, on_cpu);
    // Both ranks hold the same gathered rows; each keeps its own gradient rows.
    assert_eq!(on_gpu[0][0].0, on_gpu[1][0].0);
    assert_ne!(on_gpu[0][0].1, on_gpu[1][0].1);
}

#[test]
fn ranks_joined_by_init_rank_through_the_store_sum_and_gather() {
    if !gpus_or_skip(
        "ranks_joined_by_init_rank_through_the_store_sum_and_gather",
        2,
    ) {
        return;
    }
    // Rank 0 serves the store; each rank connects (threads here, processes in a real run),
    // rank 0 publishes the ncclUniqueId through it and both call ncclCommInitRank.
    let addr = nn::comm::store::serve("127.0.0.1:0").unwrap().to_string();
    let got = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let addr = &addr;
                s.spawn(move || {
                    let store =
                        nn::comm::TcpGroup::connect(addr, r, 2, Duration::from_secs(60)).unwrap();
                    let comm = Nccl::join(r, store).unwrap();
                    assert_eq!((comm.rank(), comm.world_size()), (r, 2));
                    assert_eq!(comm.device(), Device::Cuda(r));
                    let t = rank_tensors(r)[0].to_device(comm.device()).unwrap();
                    let sum = comm.all_reduce_sum_flat(&[&t]).unwrap();
                    let all = comm.all_gather(&t).unwrap();
                    // A mismatch is named on both ranks (the fence goes through the store).
                    let odd = Tensor::zeros(&[1 + r], DType::F32, comm.device()).unwrap();
                    let e = comm.all_reduce_sum_flat(&[&odd]).unwrap_err().to_string();
                    (sum.to_vec_f64().unwrap(), all.to_vec_f64().unwrap(), e)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let (a, b) = (rank_tensors(0), rank_tensors(1));
    let want: Vec<f64> = a[0]
        .to_vec_f64()
        .unwrap()
        .iter()
        .zip(b[0].to_vec_f64().unwrap())
        .map(|(x, y)| (*x as f32 + y as f32) as f64)
        .collect();
    let mut gathered = a[0].to_vec_f64().unwrap();
    gathered.extend(b[0].to_vec_f64().unwrap());
    for (sum, all, e) in got {
        assert_eq!(sum, want);
        assert_eq!(all, gathered);
        assert!(e.contains("rank 1 passes a bucket of 2 f32"), "{e}");
    }
}

/// A chain of 3 square f32 layers on `device` (the same weights on every rank), and rank
/// `rank`'s loss for micro-batch `micro`: `sum(x @ w0 @ w1 @ w2) * scale` over 4 rows of input.
fn chain(device: Device) -> Vec<(String, nn::Param)> {
    (0..3)
        .map(|i| {
            let w = randn(&[8, 8], 0.5, DType::F32, 70 + i)
                .to_device(device)
                .unwrap();
            (format!("w{i}"), nn::Param::new(w))
        })
        .collect()
}

fn chain_loss(params: &[(String, nn::Param)], rows: &Tensor, scale: f64) -> autograd::Var {
    let mut h = autograd::Var::constant(rows.clone());
    for (_, p) in params {
        h = h.matmul(&p.var()).unwrap();
    }
    h.sum_all().unwrap().mul_scalar(scale).unwrap()
}

/// Input rows `4 * rank .. 4 * rank + 4` of micro-batch `micro`'s global batch of 8.
fn chain_rows(micro: u64, rank: usize, world: usize) -> Tensor {
    let all = randn(&[8, 8], 1.0, DType::F32, 80 + micro);
    let per = 8 / world;
    all.narrow(0, rank * per, per).unwrap()
}

/// One step of 2 micro-batches through `nn::StepGrads` on `comm`: the averaged gradients.
fn chain_step(comm: &dyn Communicator, device: Device, overlap: bool) -> Vec<Vec<f64>> {
    let params = chain(device);
    let mut sums = nn::StepGrads::new(&params, overlap);
    let world = comm.world_size();
    for micro in 0..2 {
        let rows = chain_rows(micro, comm.rank(), world)
            .to_device(device)
            .unwrap();
        // Half the sum over the global micro-batch's rows: the mean over the ranks of `world`
        // times each rank's half-sum over its rows.
        let loss = chain_loss(&params, &rows, 0.5 * world as f64);
        sums.backward(comm, &loss, None, micro == 1).unwrap();
    }
    let (grads, stats) = sums.finish(comm).unwrap();
    if world > 1 {
        assert_eq!(stats.not_overlapped.is_none(), overlap, "{stats:?}");
        if overlap {
            // The one bucket is launched from the hook, inside the backward walk.
            assert!(stats.buckets.iter().all(|b| b.during_backward), "{stats:?}");
        }
    }
    params
        .iter()
        .map(|(_, p)| grads.get(&p.var()).unwrap().to_vec_f64().unwrap())
        .collect()
}

/// The gradient all-reduce overlapped with backward on GPU ranks (`nn::StepGrads`: the bucket's
/// sum on each GPU's communication stream, launched from the backward hook, the compute stream
/// waiting for it before the mean is taken): on 2 NCCL ranks, the same bits as the all-reduce after
/// backward and on both ranks, and one GPU with the global batch within 1e-6.
#[test]
fn the_overlapped_all_reduce_on_two_gpus_equals_the_one_after_backward_and_one_gpu() {
    if !gpus_or_skip(
        "the_overlapped_all_reduce_on_two_gpus_equals_the_one_after_backward_and_one_gpu",
        2,
    ) {
        return;
    }
    let run = |overlap: bool| {
        let comms = Nccl::group_with_timeout(&[0, 1], Duration::from_secs(60)).unwrap();
        on_ranks(comms, |comm| chain_step(&comm, comm.device(), overlap))
    };
    let overlapped = run(true);
    let after = run(false);
    assert_eq!(overlapped, after, "overlapped vs after backward");
    assert_eq!(overlapped[0], overlapped[1], "the ranks differ");
    let one = chain_step(&nn::SingleProcess, Device::Cuda(0), true);
    for (i, (got, want)) in overlapped[0].iter().zip(&one).enumerate() {
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-6 * scale, "w{i}: {err:e} of {scale:e}");
    }
}
