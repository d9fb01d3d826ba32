//! The differentiable all-gather of cross-device negatives (Tevatron's `_dist_gather_tensor`):
//!
//! ```text
//! forward:  x [rows, ...] on rank r  ->  y = cat(x of rank 0, x of rank 1, ...) [world*rows, ...]
//! backward: dL/dy [world*rows, ...]  ->  dL/dx = rows r*rows .. (r+1)*rows of dL/dy
//! ```
//!
//! Every rank holds the same `y`, but only its own rows of it are connected to its graph: the
//! copies of the other ranks' rows are constants here (each of them carries its gradient on its
//! own rank). So the gradient a rank gets for its `x` is what its own loss sends through its own
//! rows; the other ranks' losses reach it only after the data-parallel gradient all-reduce. With
//! a loss that every rank computes identically over `y` and scales by `world` (what
//! `retrieval`'s cross-device negatives do), the mean over ranks of those gradients is the
//! one-process gradient of the global batch.

use crate::comm::Communicator;
use autograd::Var;
use tensor::{Result, Tensor};

/// `x`'s rows gathered from every rank of `comm` in rank order (see the module docs). Every
/// rank calls it with an `x` of the same shape and dtype. With one rank it is `x` itself.
pub fn all_gather(comm: &dyn Communicator, x: &Var) -> Result<Var> {
    if comm.world_size() == 1 {
        return Ok(x.clone());
    }
    let gathered = comm.all_gather(x.value())?;
    let (rows, rank) = (x.shape()[0], comm.rank());
    Ok(Var::from_op(
        "all_gather",
        gathered,
        vec![x.clone()],
        Box::new(move |g: &Tensor| Ok(vec![Some(g.narrow(0, rank * rows, rows)?)])),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::thread_group::tests::on_ranks;
    use autograd::{gradcheck, GradcheckOptions};
    use tensor::DType;

    fn rank_input(rank: usize, dtype: DType) -> Tensor {
        tensor::testing::randn(&[2, 3], 1.0, dtype, 100 + rank as u64)
    }

    #[test]
    fn forward_gathers_in_rank_order_and_backward_keeps_this_ranks_rows() {
        let world = 3;
        let out = on_ranks(world, |comm| {
            let x = Var::param(rank_input(comm.rank(), DType::F32));
            let y = all_gather(&comm, &x).unwrap();
            // A different weight for every gathered element: its gradient is w itself.
            let w = tensor::testing::randn(&[6, 3], 1.0, DType::F32, 7);
            let loss = y.mul(&Var::constant(w.clone())).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(&x).unwrap().to_vec::<f32>().unwrap();
            (
                y.value().to_vec::<f32>().unwrap(),
                g,
                w.to_vec::<f32>().unwrap(),
            )
        });
        let want: Vec<f32> = (0..world)
            .flat_map(|r| rank_input(r, DType::F32).to_vec::<f32>().unwrap())
            .collect();
        for (rank, (y, g, w)) in out.iter().enumerate() {
            assert_eq!(y, &want, "rank {rank}");
            assert_eq!(g, &w[rank * 6..(rank + 1) * 6], "rank {rank}");
        }
    }

    /// `gradcheck` on each rank in turn: the checked rank runs it (every evaluation of its
    /// function is one all-gather), the others join each of those all-gathers with their fixed
    /// input, told by a host exchange before each whether another one comes. So from the checked
    /// rank the other ranks' rows are constants, as the op's semantics say.
    #[test]
    fn gradcheck_on_every_rank_of_a_thread_group() {
        for world in [2, 3] {
            let out = on_ranks(world, |comm| {
                let mine = rank_input(comm.rank(), DType::F64);
                let mut results = Vec::new();
                for checked in 0..world {
                    if comm.rank() == checked {
                        let f = |xs: &[Var]| {
                            comm.all_gather_host(vec![1])?;
                            // A nonlinear function of the gathered rows, mixing them.
                            let y = all_gather(&comm, &xs[0])?;
                            y.mul(&y)?.sum(&[0], false)?.tanh()
                        };
                        let r =
                            gradcheck(f, std::slice::from_ref(&mine), GradcheckOptions::default());
                        comm.all_gather_host(vec![0]).unwrap();
                        results.push(r.map_err(|e| e.to_string()));
                    } else {
                        while comm.all_gather_host(vec![0]).unwrap()[checked][0] == 1 {
                            all_gather(&comm, &Var::constant(mine.clone())).unwrap();
                        }
                    }
                }
                results
            });
            for (rank, r) in out.into_iter().enumerate() {
                assert_eq!(r.len(), 1);
                r[0].as_ref()
                    .unwrap_or_else(|e| panic!("world {world} rank {rank}: {e}"));
            }
        }
    }

    #[test]
    fn one_rank_is_the_identity() {
        let x = Var::param(rank_input(0, DType::F32));
        let y = all_gather(&crate::SingleProcess, &x).unwrap();
        assert_eq!(y.id(), x.id());
    }
}
