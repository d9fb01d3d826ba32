//! Data-parallel training: `world` replicas of one model, each computing the gradients of its own
//! shard of every batch, combined into their mean so that every replica takes the same optimizer
//! step (the gradient averaging of torch's DistributedDataParallel).
//!
//! [`all_reduce_grads`] and [`all_reduce_mean`] work in three stages:
//! 1. agree: every rank's list of dtypes and shapes is exchanged on the host; when a rank's list
//!    differs from rank 0's, every rank fails with an error naming that rank and tensor (NCCL
//!    given mismatched sizes would hang);
//! 2. bucket: the tensors are grouped by dtype, in order, into buckets of at most
//!    [`BUCKET_CAP_BYTES`] (torch DDP's 25 MiB; a larger tensor is a bucket of its own);
//! 3. reduce: each bucket is flattened into one contiguous buffer, summed across the ranks in one
//!    collective ([`Communicator::all_reduce_sum_flat`]), divided by the world size
//!    (`div_scalar`; f16/bf16 through f32, rounded once), and each tensor becomes a view of its
//!    slice of the result (no copy back).
//!
//! Every element is summed in the same order whatever the bucketing, so the bucket size changes
//! the speed, never the bits; and every rank receives the same bits, so replicas that start
//! identical stay identical.
//!
//! # Recipe (one thread per replica)
//! 1. Make the group: `ThreadGroup::new(n)` on the CPU, or `Nccl::group(&[0, 1, ..])` (feature
//!    `cuda`) for one GPU per replica; move communicator `r` into thread `r`
//!    (`std::thread::scope`).
//! 2. In every thread build the same model from the same seed (and, on GPUs, move it to the
//!    replica's device), the same AdamW and schedule.
//! 3. Every step, every replica assembles the same global batch (same data order and seed) and
//!    keeps rows [`shard_range`]`(batch, rank, world)`; it computes the loss as the mean over its
//!    shard and runs backward. (Dropout draws its masks per replica: give each replica its own
//!    dropout seed, e.g. `seed + rank`; exact equality with a one-replica run holds without it.)
//! 4. `all_reduce_grads(&comm, &params, &mut grads)`: every replica now holds the mean of the
//!    shard gradients, which is the gradient of the global batch's mean loss (equal shards).
//! 5. Clip, unscale and step exactly as a single replica does (`clip_grad_norm`, the loss scaler,
//!    `step_params`): identical inputs give identical steps and skip decisions on every replica.
//!    The global loss for logging is the mean of the replicas' losses (`comm.all_reduce_mean`);
//!    only rank 0 logs and saves checkpoints.
//!
//! The global batch is `world` times the per-replica batch, as with the reference's
//! `per_device_train_batch_size` on several GPUs.

use crate::comm::Communicator;
use crate::Param;
use autograd::{Gradients, Var};
use std::ops::{Deref, Range};
use tensor::{bail, DType, Error, Result, Tensor};

const OP: &str = "all_reduce";

/// The largest bucket, in bytes (torch DDP's `bucket_cap_mb = 25`).
pub const BUCKET_CAP_BYTES: usize = 25 << 20;

/// Rows `rank*batch/world .. (rank+1)*batch/world` of a global batch: replica `rank`'s equal
/// shard. Errors unless `world` divides `batch` (the mean of unequal shards' mean losses is not
/// the batch's mean loss).
pub fn shard_range(batch: usize, rank: usize, world: usize) -> Result<Range<usize>> {
    if rank >= world {
        bail!("shard_range", "rank {rank} is outside a world of {world}");
    }
    if !batch.is_multiple_of(world) {
        bail!(
            "shard_range",
            "a batch of {batch} does not split into {world} equal shards"
        );
    }
    let per = batch / world;
    Ok(rank * per..(rank + 1) * per)
}

/// Replaces each tensor by its mean over the ranks of `comm` (in place; see the module docs).
/// Every rank passes tensors of the same dtypes and shapes, in the same order.
pub fn all_reduce_mean<C: Communicator + ?Sized>(
    comm: &C,
    tensors: &mut [&mut Tensor],
) -> Result<()> {
    let _phase = tensor::profiler::phase(tensor::profiler::Phase::Communication);
    let labels: Vec<String> = (0..tensors.len()).map(|i| format!("tensor {i}")).collect();
    mean_over_ranks(comm, &labels, tensors, BUCKET_CAP_BYTES)
}

/// Replaces the gradient of every parameter in `params` by its mean over the ranks of `comm`.
/// Tied parameters listed twice are reduced once. A parameter with a gradient on some ranks but
/// not on this one gets a zero gradient here first (it contributes nothing to the mean); one with
/// no gradient anywhere is left without.
pub fn all_reduce_grads<C: Communicator + ?Sized>(
    comm: &C,
    params: &[(String, Param)],
    grads: &mut Gradients,
) -> Result<()> {
    let _phase = tensor::profiler::phase(tensor::profiler::Phase::Communication);
    grads_over_ranks(comm, params, grads, BUCKET_CAP_BYTES)
}

fn grads_over_ranks<C: Communicator + ?Sized>(
    comm: &C,
    params: &[(String, Param)],
    grads: &mut Gradients,
    bucket_cap_bytes: usize,
) -> Result<()> {
    let world = comm.world_size();
    if world == 1 {
        return Ok(());
    }
    let mut unique: Vec<(&str, &Param)> = Vec::new();
    for (name, p) in params {
        if !unique.iter().any(|(_, q)| q.same(p)) {
            unique.push((name, p));
        }
    }
    let vars: Vec<Var> = unique.iter().map(|(_, p)| p.var()).collect();
    let mut words = vec![unique.len() as u64];
    words.extend(vars.iter().map(|v| grads.get(v).is_some() as u64));
    let all = comm.all_gather_host(words)?;
    if let Some(r) = (1..world).find(|&r| all[r][0] != all[0][0]) {
        bail!(
            OP,
            "rank {r} has {} parameters, rank 0 has {}",
            all[r][0],
            all[0][0]
        );
    }
    let mut labels = Vec::new();
    let mut chosen = Vec::new();
    let mut values = Vec::new();
    for (i, ((name, p), v)) in unique.iter().zip(&vars).enumerate() {
        if all.iter().all(|w| w[1 + i] == 0) {
            continue;
        }
        let g = match grads.remove(v) {
            Some(g) => g,
            None => {
                let t = p.tensor();
                Tensor::zeros(t.shape(), t.dtype(), t.device())?
            }
        };
        labels.push(format!("the gradient of {name}"));
        chosen.push(v);
        values.push(g);
    }
    let mut refs: Vec<&mut Tensor> = values.iter_mut().collect();
    let result = mean_over_ranks(comm, &labels, &mut refs, bucket_cap_bytes);
    for (v, g) in chosen.into_iter().zip(values) {
        grads.insert(v, g);
    }
    result
}

/// The mean over ranks of each tensor, in place, with buckets of at most `bucket_cap_bytes`.
fn mean_over_ranks<C: Communicator + ?Sized>(
    comm: &C,
    labels: &[String],
    tensors: &mut [&mut Tensor],
    bucket_cap_bytes: usize,
) -> Result<()> {
    let world = comm.world_size();
    if world == 1 {
        return Ok(());
    }
    agree_on_shapes(comm, labels, tensors)?;
    let items: Vec<(DType, usize)> = tensors
        .iter()
        .map(|t| (t.dtype(), t.elem_count()))
        .collect();
    for bucket in plan_buckets(&items, bucket_cap_bytes) {
        let refs: Vec<&Tensor> = bucket.iter().map(|&i| &*tensors[i]).collect();
        let means = bucket_mean(comm, &refs)?;
        for (&i, m) in bucket.iter().zip(means) {
            *tensors[i] = m;
        }
    }
    Ok(())
}

/// One bucket's collective: the mean over ranks of each of `bucket`'s tensors (one dtype), each
/// returned as a view of its slice of the one reduced buffer.
pub(crate) fn bucket_mean<C: Communicator + ?Sized>(
    comm: &C,
    bucket: &[&Tensor],
) -> Result<Vec<Tensor>> {
    let sum = comm.all_reduce_sum_flat(bucket)?;
    let shapes: Vec<&[usize]> = bucket.iter().map(|t| t.shape()).collect();
    views_of_mean(comm, sum, &shapes)
}

/// The reduced buffer `sum` (a bucket of tensors of `shapes`, flattened) divided by the world size
/// (`div_scalar`: f16/bf16 through f32, rounded once), as one view per tensor.
pub(crate) fn views_of_mean<C: Communicator + ?Sized>(
    comm: &C,
    sum: Tensor,
    shapes: &[&[usize]],
) -> Result<Vec<Tensor>> {
    let mean = sum.div_scalar(comm.world_size() as f64)?;
    let mut offset = 0;
    let mut out = Vec::with_capacity(shapes.len());
    for shape in shapes {
        let n: usize = shape.iter().product();
        out.push(mean.narrow(0, offset, n)?.reshape(shape)?);
        offset += n;
    }
    Ok(out)
}

/// The buckets (indices into `items`, each `(dtype, elements)`): grouped by dtype in order of
/// first appearance, consecutive within a dtype, a bucket closed before it would exceed
/// `cap_bytes` (a larger item is a bucket alone).
pub(crate) fn plan_buckets(items: &[(DType, usize)], cap_bytes: usize) -> Vec<Vec<usize>> {
    let mut dtypes: Vec<DType> = Vec::new();
    for (d, _) in items {
        if !dtypes.contains(d) {
            dtypes.push(*d);
        }
    }
    let mut buckets = Vec::new();
    for d in dtypes {
        let (mut bucket, mut bytes) = (Vec::new(), 0);
        for (i, &(_, n)) in items.iter().enumerate().filter(|(_, (di, _))| *di == d) {
            let size = n * d.size_in_bytes();
            if !bucket.is_empty() && bytes + size > cap_bytes {
                buckets.push(std::mem::take(&mut bucket));
                bytes = 0;
            }
            bucket.push(i);
            bytes += size;
        }
        if !bucket.is_empty() {
            buckets.push(bucket);
        }
    }
    buckets
}

/// `[count, then per tensor: dtype name, rank, dims...]`, the name ("f32", "bf16", ...) packed
/// into one word.
fn describe<T: Deref<Target = Tensor>>(tensors: &[T]) -> Vec<u64> {
    let mut words = vec![tensors.len() as u64];
    for t in tensors {
        let name = t.dtype().to_string();
        words.push(name.bytes().fold(0, |w, b| (w << 8) | b as u64));
        words.push(t.rank() as u64);
        words.extend(t.shape().iter().map(|&d| d as u64));
    }
    words
}

/// The (dtype name, shape) list a [`describe`] word list encodes (as far as it is well formed).
fn decode(words: &[u64]) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    let mut rest = words.get(1..).unwrap_or(&[]);
    while let [name, rank, tail @ ..] = rest {
        let rank = (*rank as usize).min(tail.len());
        let bytes = name.to_be_bytes();
        let name = String::from_utf8_lossy(&bytes);
        out.push((
            name.trim_start_matches('\0').to_string(),
            tail[..rank].to_vec(),
        ));
        rest = &tail[rank..];
    }
    out
}

/// Errors on every rank, naming the first rank whose tensors differ from rank 0's in number,
/// dtype or shape.
pub(crate) fn agree_on_shapes<C: Communicator + ?Sized, T: Deref<Target = Tensor>>(
    comm: &C,
    labels: &[String],
    tensors: &[T],
) -> Result<()> {
    let all = comm.all_gather_host(describe(tensors))?;
    let Some(r) = (1..all.len()).find(|&r| all[r] != all[0]) else {
        return Ok(());
    };
    let (theirs, first) = (decode(&all[r]), decode(&all[0]));
    if theirs.len() != first.len() {
        return Err(Error::op(
            OP,
            format!(
                "rank {r} passes {} tensors, rank 0 passes {}",
                theirs.len(),
                first.len()
            ),
        ));
    }
    let i = (0..first.len())
        .find(|&i| theirs[i] != first[i])
        .unwrap_or(0);
    let label = labels.get(i).map_or("a tensor", |s| s.as_str());
    Err(Error::op(
        OP,
        format!(
            "rank {r} disagrees with rank 0 on {label}: rank {r} has {} {:?}, rank 0 has {} {:?}",
            theirs[i].0, theirs[i].1, first[i].0, first[i].1
        ),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::comm::ThreadGroup;
    use std::time::Duration;

    /// Runs `f(rank, comm)` on one thread per rank of a new ThreadGroup of `world`.
    pub(crate) fn on_ranks<R: Send>(
        world: usize,
        f: impl Fn(usize, ThreadGroup) -> R + Sync,
    ) -> Vec<R> {
        let comms = ThreadGroup::with_timeout(world, Duration::from_secs(20)).unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .enumerate()
                .map(|(r, c)| {
                    let f = &f;
                    s.spawn(move || f(r, c))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn buckets_group_by_dtype_and_respect_the_cap() {
        use DType::*;
        let items = [
            (F32, 10),
            (F16, 3),
            (F32, 20),
            (F32, 1000),
            (F32, 5),
            (F16, 4),
        ];
        // 10 f32 = 40 bytes; cap 100 bytes: [0] then 20 more (80 bytes) would make 120.
        assert_eq!(
            plan_buckets(&items, 100),
            vec![vec![0], vec![2], vec![3], vec![4], vec![1, 5]]
        );
        assert_eq!(
            plan_buckets(&items, 200),
            vec![vec![0, 2], vec![3], vec![4], vec![1, 5]]
        );
        assert_eq!(
            plan_buckets(&items, BUCKET_CAP_BYTES),
            vec![vec![0, 2, 3, 4], vec![1, 5]]
        );
        assert!(plan_buckets(&[], 100).is_empty());
    }

    #[test]
    fn shards_are_equal_and_cover_the_batch() {
        assert_eq!(shard_range(12, 0, 3).unwrap(), 0..4);
        assert_eq!(shard_range(12, 2, 3).unwrap(), 8..12);
        assert_eq!(shard_range(5, 0, 1).unwrap(), 0..5);
        let e = shard_range(10, 0, 3).unwrap_err().to_string();
        assert!(e.contains("does not split into 3 equal shards"), "{e}");
        assert!(shard_range(12, 3, 3).is_err());
    }

    #[test]
    fn descriptors_round_trip() {
        let mut a = Tensor::zeros(&[2, 3], DType::BF16, tensor::Device::Cpu).unwrap();
        let mut b = Tensor::scalar(1f64);
        let words = describe(&[&mut a, &mut b]);
        assert_eq!(
            decode(&words),
            vec![
                ("bf16".to_string(), vec![2, 3]),
                ("f64".to_string(), vec![])
            ]
        );
    }

    /// Each rank's tensors: an f32 matrix, a transposed f32 view, an f64 vector, a bf16 vector,
    /// all depending on the rank.
    fn rank_tensors(rank: usize) -> Vec<Tensor> {
        let s = 10 * rank as u64;
        vec![
            tensor::testing::randn(&[3, 5], 1.0, DType::F32, s + 1),
            tensor::testing::randn(&[4, 7], 1.0, DType::F32, s + 2)
                .t()
                .unwrap(),
            tensor::testing::randn(&[6], 1.0, DType::F64, s + 3),
            tensor::testing::randn(&[9], 1.0, DType::BF16, s + 4),
        ]
    }

    #[test]
    fn means_are_exact_identical_on_every_rank_and_independent_of_buckets() {
        let world = 3;
        let run = |cap: usize| {
            on_ranks(world, |rank, comm| {
                let mut ts = rank_tensors(rank);
                let labels: Vec<String> = (0..ts.len()).map(|i| format!("t{i}")).collect();
                let mut refs: Vec<&mut Tensor> = ts.iter_mut().collect();
                mean_over_ranks(&comm, &labels, &mut refs, cap).unwrap();
                ts
            })
        };
        let one_bucket_per_dtype = run(BUCKET_CAP_BYTES);
        let small_buckets = run(16);
        let inputs: Vec<Vec<Tensor>> = (0..world).map(rank_tensors).collect();
        for (i, got) in one_bucket_per_dtype[0].iter().enumerate() {
            let want_dtype = inputs[0][i].dtype();
            assert_eq!(got.dtype(), want_dtype);
            assert_eq!(got.shape(), inputs[0][i].shape());
            // The f64 sum of the ranks' values, rounded once to the dtype, then / world.
            let sums: Vec<f64> = (0..got.elem_count())
                .map(|e| {
                    (0..world)
                        .map(|r| inputs[r][i].to_vec_f64().unwrap()[e])
                        .sum()
                })
                .collect();
            let want = Tensor::from_vec(sums, got.shape())
                .unwrap()
                .to_dtype(want_dtype)
                .unwrap()
                .div_scalar(world as f64)
                .unwrap();
            assert_eq!(
                got.to_vec_f64().unwrap(),
                want.to_vec_f64().unwrap(),
                "t{i}"
            );
            for per_rank in one_bucket_per_dtype.iter().chain(&small_buckets) {
                let (a, b) = (per_rank[i].to_vec_f64().unwrap(), got.to_vec_f64().unwrap());
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "t{i} differs between ranks or bucketings"
                );
            }
        }
    }

    #[test]
    fn a_shape_mismatch_names_the_rank_on_every_rank() {
        let errs = on_ranks(3, |rank, comm| {
            let shape: &[usize] = if rank == 2 { &[4, 2] } else { &[4, 3] };
            let mut a = Tensor::zeros(&[5], DType::F32, tensor::Device::Cpu).unwrap();
            let mut b = Tensor::zeros(shape, DType::F32, tensor::Device::Cpu).unwrap();
            all_reduce_mean(&comm, &mut [&mut a, &mut b])
                .unwrap_err()
                .to_string()
        });
        for e in &errs {
            assert!(
                e.contains("rank 2 disagrees with rank 0 on tensor 1: rank 2 has f32 [4, 2], rank 0 has f32 [4, 3]"),
                "{e}"
            );
        }
        let errs = on_ranks(2, |rank, comm| {
            let mut ts = rank_tensors(0);
            let mut refs: Vec<&mut Tensor> = ts.iter_mut().take(3 + rank).collect();
            all_reduce_mean(&comm, &mut refs).unwrap_err().to_string()
        });
        for e in &errs {
            assert!(
                e.contains("rank 1 passes 4 tensors, rank 0 passes 3"),
                "{e}"
            );
        }
    }
}
