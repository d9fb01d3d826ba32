//! NCCL collectives across the GPUs of this process, one thread per GPU: a world of one on cuda:0
//! (the smoke test: NCCL loads, and one rank's sum or mean is its input), and with two or more
//! GPUs the sum and the mean of rank-dependent f32/f16/bf16 ranges against the host, the same on
//! every rank, with the elements outside the range untouched; all-gather and broadcast likewise.
//! Values are multiples of 1/2 below 64, so every sum is exact in every dtype whatever order NCCL
//! adds in. Tests skip with a printed reason when CUDA, NCCL or enough GPUs are missing.

use cuda::nccl::{nccl_version, NcclComm, NcclElem, Reduce, NCCL_MIN_VERSION};
use cuda::testing::gpus_or_skip;
use cuda::Error;
use half::{bf16, f16};

#[test]
fn nccl_is_found_or_the_error_says_how_to_provide_it() {
    match nccl_version() {
        Ok((major, minor, patch)) => {
            eprintln!("NCCL {major}.{minor}.{patch}");
            assert!((major, minor) >= NCCL_MIN_VERSION);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(matches!(e, Error::Unavailable(_)), "{msg}");
            assert!(
                msg.contains("libnccl.so") || msg.contains("too old"),
                "{msg}"
            );
        }
    }
}

const LEN: usize = 1000;
const OFFSET: usize = 10;
const COUNT: usize = 977;

/// Rank `rank`'s host values: multiples of 1/2 in [0, 16) plus the rank.
fn values(rank: usize) -> Vec<f32> {
    (0..LEN)
        .map(|i| ((i * 7 + rank * 3) % 32) as f32 * 0.5 + rank as f32)
        .collect()
}

/// Runs `f` on one thread per rank of a clique over `ordinals`, each on a device buffer holding
/// its rank's `values` as `T`; returns every rank's buffer afterwards, in rank order.
fn on_ranks<T: NcclElem>(
    ordinals: &[usize],
    to: fn(f32) -> T,
    f: impl Fn(&NcclComm, &mut cuda::DeviceBuffer<T>) + Sync,
) -> Vec<Vec<T>> {
    let comms = NcclComm::for_devices(ordinals).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let f = &f;
                s.spawn(move || {
                    let gpu = comm.gpu().clone();
                    let host: Vec<T> = values(comm.rank()).into_iter().map(to).collect();
                    let mut buf = gpu.upload(&host).unwrap();
                    f(&comm, &mut buf);
                    let out = gpu.download(&buf).unwrap();
                    comm.check_async().unwrap();
                    (comm.rank(), out)
                })
            })
            .collect();
        let mut rs: Vec<(usize, Vec<T>)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        rs.sort_by_key(|(r, _)| *r);
        rs.into_iter().map(|(_, v)| v).collect()
    })
}

/// Every rank reduces `OFFSET..OFFSET + COUNT` of its buffer with `op`; checks each rank's result
/// against the host and the untouched elements.
fn reduce_on<T: NcclElem>(ordinals: &[usize], op: Reduce, to: fn(f32) -> T, from: fn(T) -> f32) {
    let world = ordinals.len();
    let results = on_ranks(ordinals, to, |comm, buf| {
        comm.all_reduce(buf, OFFSET, COUNT, op).unwrap()
    });
    for (rank, got) in results.iter().enumerate() {
        let mine = values(rank);
        for (i, &g) in got.iter().enumerate() {
            let want = if (OFFSET..OFFSET + COUNT).contains(&i) {
                let sum: f32 = (0..world).map(|r| values(r)[i]).sum();
                match op {
                    Reduce::Sum => sum,
                    Reduce::Mean => from(to(sum / world as f32)),
                }
            } else {
                mine[i]
            };
            assert_eq!(from(g), want, "{op:?} rank {rank} element {i}");
        }
    }
}

fn all_dtypes(ordinals: &[usize]) {
    for op in [Reduce::Sum, Reduce::Mean] {
        reduce_on::<f32>(ordinals, op, |x| x, |x| x);
        reduce_on::<f16>(ordinals, op, f16::from_f32, f16::to_f32);
        reduce_on::<bf16>(ordinals, op, bf16::from_f32, bf16::to_f32);
    }
}

#[test]
fn a_world_of_one_gpu_returns_its_input() {
    if gpus_or_skip("a_world_of_one_gpu_returns_its_input", 1).is_none() {
        return;
    }
    all_dtypes(&[0]);
}

#[test]
fn every_gpu_receives_the_sum_and_the_mean() {
    let Some(n) = gpus_or_skip("every_gpu_receives_the_sum_and_the_mean", 2) else {
        return;
    };
    all_dtypes(&[0, 1]);
    if n > 2 {
        // Three ranks, listed out of order: rank 0 drives cuda:2.
        all_dtypes(&[2, 0, 1]);
    }
}

/// All-gather of each rank's slot of `GATHER` elements at `OFFSET`, then a broadcast of the last
/// rank's `OFFSET..OFFSET + COUNT`: checks every rank's whole buffer against the host.
fn gather_and_broadcast_on(ordinals: &[usize]) {
    const GATHER: usize = 123;
    let world = ordinals.len();
    let root = world - 1;
    let results = on_ranks(ordinals, bf16::from_f32, |comm, buf| {
        comm.all_gather(buf, OFFSET, GATHER).unwrap();
        comm.broadcast(buf, OFFSET + world * GATHER, COUNT - world * GATHER, root)
            .unwrap();
    });
    for (rank, got) in results.iter().enumerate() {
        for (i, g) in got.iter().enumerate() {
            let owner = if i < OFFSET {
                rank
            } else if i < OFFSET + world * GATHER {
                (i - OFFSET) / GATHER
            } else if i < OFFSET + COUNT {
                root
            } else {
                rank
            };
            assert_eq!(g.to_f32(), values(owner)[i], "rank {rank} element {i}");
        }
    }
    // A root that is not a rank is refused before NCCL is called.
    let comms = NcclComm::for_devices(&ordinals[..1]).unwrap();
    let mut buf = comms[0].gpu().upload(&[0f32; 4]).unwrap();
    let e = comms[0]
        .broadcast(&mut buf, 0, 4, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("root 1 is not a rank"), "{e}");
}

#[test]
fn all_gather_and_broadcast_fill_every_rank() {
    let Some(n) = gpus_or_skip("all_gather_and_broadcast_fill_every_rank", 1) else {
        return;
    };
    gather_and_broadcast_on(&[0]);
    if n >= 2 {
        gather_and_broadcast_on(&[1, 0]);
    }
}

/// Sums on the communication stream (`all_reduce_async`): two of them issued back to back on
/// every rank, the compute stream waiting for the second only, which orders it after both. Every
/// rank then holds the sum of both. On the simulator the queued sums run when the compute stream
/// waits for them, so a reader that skipped the wait would see the buffer before the sum, every
/// time: checked here, so that a missing wait in the trainers is a wrong result, not a race.
#[test]
fn sums_on_the_communication_stream_are_seen_after_the_compute_stream_waits() {
    let Some(_) = gpus_or_skip(
        "sums_on_the_communication_stream_are_seen_after_the_compute_stream_waits",
        2,
    ) else {
        return;
    };
    let simulated = cuda::gpu(0).unwrap().is_simulated();
    let results = on_ranks(
        &[0, 1],
        |x| x,
        |comm, buf| {
            let gpu = comm.gpu().clone();
            let first = comm.all_reduce_async(buf, 0, OFFSET).unwrap();
            let second = comm.all_reduce_async(buf, OFFSET, COUNT).unwrap();
            if simulated {
                assert_eq!(comm.queued_on_comm_stream(), 2);
                let before = gpu.download(buf).unwrap();
                assert_eq!(before, values(comm.rank()), "the sums ran before the wait");
            }
            comm.wait(&second).unwrap();
            assert_eq!(comm.queued_on_comm_stream(), 0);
            // Waiting again for an earlier point is allowed and changes nothing.
            comm.wait(&first).unwrap();
        },
    );
    let want: Vec<f32> = values(0)
        .iter()
        .zip(values(1))
        .map(|(a, b)| a + b)
        .collect();
    for (rank, got) in results.iter().enumerate() {
        let end = OFFSET + COUNT;
        assert_eq!(got[..end], want[..end], "rank {rank}");
        assert_eq!(
            got[end..],
            values(rank)[end..],
            "rank {rank}: outside the sums"
        );
    }
}
