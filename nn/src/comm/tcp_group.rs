//! [`TcpGroup`]: CPU replicas in separate processes (on one machine or several), exchanging
//! through the TCP store that rank 0 serves ([`super::store`]).
//!
//! Collective number `k` of rank `r` publishes its contribution under `c/<k>/<r>` and reads every
//! rank's `c/<k>/*`; an all-reduce sums the contributions in f64 in rank order 0, 1, ... and
//! rounds once to the bucket's dtype, which is exactly what [`super::ThreadGroup`] computes, so
//! a run gives the same bits with threads or processes. An all-gather publishes the tensor's
//! dtype, shape and values (float dtypes, each value widened to f64: exact) and concatenates every
//! rank's in rank order, as `ThreadGroup` does. When rank `r` has all of collective
//! `k`'s values, every rank has published `k`, hence finished reading `k - 1`: `r` deletes its
//! key of `k - 1` then, and the store holds at most two collectives' values.
//!
//! Every byte passes through rank 0's store, so this suits tests and small CPU runs; GPUs use
//! NCCL. A rank that dies is named by the store to the ranks waiting for it (never a hang).
//! Leaving: a rank's drop publishes `left/<r>`; rank 0's drop waits (up to [`LEAVE_WAIT`]) until
//! every other rank has left, so its process, which serves the store, outlives their last
//! requests.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use super::store::StoreClient;
use super::thread_group::contribution;
use super::{
    check_same_buckets, check_same_tensors, dtype_code, dtype_of_code, gathered_shape, Communicator,
};
use tensor::{DType, Error, Result, Tensor};

const OP: &str = "TcpGroup";

/// How long rank 0 waits at its drop for the other ranks to leave.
pub const LEAVE_WAIT: Duration = Duration::from_secs(60);

/// One rank's communicator over the store.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    store: RefCell<StoreClient>,
    next: Cell<u64>,
}

impl TcpGroup {
    /// Rank `rank` of `world`, through the store at `addr` (served by rank 0: call
    /// [`super::store::serve`] there first); a collective waits up to `timeout` for the others.
    pub fn connect(addr: &str, rank: usize, world: usize, timeout: Duration) -> Result<TcpGroup> {
        if rank >= world {
            return Err(Error::op(
                OP,
                format!("rank {rank} is outside a world of {world}"),
            ));
        }
        let group = TcpGroup {
            rank,
            world,
            store: RefCell::new(StoreClient::connect(addr, rank, timeout)?),
            next: Cell::new(0),
        };
        // Everyone is connected before the first collective: a rank that never comes is
        // reported here, at start-up.
        group.exchange(b"hello")?;
        Ok(group)
    }

    /// Every rank's `bytes` for the next collective, in rank order.
    fn exchange(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let k = self.next.get();
        self.next.set(k + 1);
        let mut store = self.store.borrow_mut();
        store.set(&format!("c/{k}/{}", self.rank), bytes)?;
        let all = (0..self.world)
            .map(|r| store.get(&format!("c/{k}/{r}")))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::op(OP, format!("rank {}: collective {k}: {e}", self.rank)))?;
        if k > 0 {
            store.delete(&format!("c/{}/{}", k - 1, self.rank))?;
        }
        Ok(all)
    }
}

impl Drop for TcpGroup {
    fn drop(&mut self) {
        let store = self.store.get_mut();
        if self.rank != 0 {
            let _ = store.set(&format!("left/{}", self.rank), &[]);
            return;
        }
        for r in 1..self.world {
            // A rank that vanished or failed is reported by the store at once: nothing to wait.
            if store.get_within(&format!("left/{r}"), LEAVE_WAIT).is_err() {
                break;
            }
        }
    }
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn bytes_to_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

impl Communicator for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_gather_host(&self, words: Vec<u64>) -> Result<Vec<Vec<u64>>> {
        Ok(self
            .exchange(&words_to_bytes(&words))?
            .iter()
            .map(|b| bytes_to_words(b))
            .collect())
    }

    fn all_reduce_sum_flat(&self, tensors: &[&Tensor]) -> Result<Tensor> {
        // Word 0: 0 = failed (then the message), else 1 + the dtype's index; then the f64 values.
        let mine = contribution(tensors);
        let payload = match &mine {
            Ok((dtype, values)) => {
                let code = 1 + dtype_code(*dtype);
                let mut words = vec![code];
                words.extend(values.iter().map(|v| v.to_bits()));
                words_to_bytes(&words)
            }
            Err(e) => [0u64.to_le_bytes().to_vec(), e.to_string().into_bytes()].concat(),
        };
        let all = self.exchange(&payload)?;
        let (dtype, _) = mine?;
        if let Some(r) = all.iter().position(|b| b.get(..8) == Some(&[0; 8])) {
            let why = String::from_utf8_lossy(&all[r][8..]).into_owned();
            return Err(Error::op(OP, format!("rank {r}: {why}")));
        }
        let decoded: Vec<(DType, Vec<u64>)> = all
            .iter()
            .map(|b| {
                let w = bytes_to_words(b);
                let d = dtype_of_code(w[0] - 1);
                (d, w[1..].to_vec())
            })
            .collect();
        check_same_buckets(OP, decoded.iter().map(|(d, v)| (*d, v.len())))?;
        let mut sum: Vec<f64> = decoded[0].1.iter().map(|&w| f64::from_bits(w)).collect();
        for (_, other) in &decoded[1..] {
            for (s, &w) in sum.iter_mut().zip(other) {
                *s += f64::from_bits(w);
            }
        }
        let n = sum.len();
        Tensor::from_vec(sum, &[n])?.to_dtype(dtype)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        // Word 0: 0 = failed (then the message), else 1 + the dtype's index; word 1: the rank of
        // the shape, then the shape, then the f64 values.
        const GATHER: &str = "TcpGroup::all_gather";
        let mine = gathered_shape(GATHER, t.shape(), self.world)
            .and_then(|_| contribution(&[t]))
            .map(|(dtype, values)| (dtype, t.shape().to_vec(), values));
        let payload = match &mine {
            Ok((dtype, shape, values)) => {
                let code = 1 + dtype_code(*dtype);
                let mut words = vec![code, shape.len() as u64];
                words.extend(shape.iter().map(|&d| d as u64));
                words.extend(values.iter().map(|v| v.to_bits()));
                words_to_bytes(&words)
            }
            Err(e) => [0u64.to_le_bytes().to_vec(), e.to_string().into_bytes()].concat(),
        };
        let all = self.exchange(&payload)?;
        let (dtype, _, _) = mine?;
        if let Some(r) = all.iter().position(|b| b.get(..8) == Some(&[0; 8])) {
            let why = String::from_utf8_lossy(&all[r][8..]).into_owned();
            return Err(Error::op(GATHER, format!("rank {r}: {why}")));
        }
        let decoded: Vec<(DType, Vec<usize>, Vec<u64>)> = all
            .iter()
            .map(|b| {
                let w = bytes_to_words(b);
                let d = dtype_of_code(w[0] - 1);
                let dims = (w[1] as usize).min(w.len() - 2);
                let shape = w[2..2 + dims].iter().map(|&x| x as usize).collect();
                (d, shape, w[2 + dims..].to_vec())
            })
            .collect();
        check_same_tensors(GATHER, decoded.iter().map(|(d, s, _)| (*d, s.as_slice())))?;
        let values: Vec<f64> = decoded
            .iter()
            .flat_map(|(_, _, v)| v.iter().map(|&w| f64::from_bits(w)))
            .collect();
        let shape = gathered_shape(GATHER, t.shape(), self.world)?;
        Tensor::from_vec(values, &shape)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::{store, ThreadGroup};

    /// Runs `f` on `world` ranks of a TcpGroup (threads here; processes in the trainers' tests).
    fn on_tcp_ranks<R: Send>(world: usize, f: impl Fn(TcpGroup) -> R + Sync) -> Vec<R> {
        let addr = store::serve("127.0.0.1:0").unwrap().to_string();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..world)
                .map(|r| {
                    let (addr, f) = (&addr, &f);
                    s.spawn(move || {
                        f(TcpGroup::connect(addr, r, world, Duration::from_secs(20)).unwrap())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn rank_tensor(rank: usize, dtype: DType) -> Tensor {
        tensor::testing::randn(&[5, 3], 1.0, dtype, 7 + rank as u64)
    }

    #[test]
    fn sums_equal_thread_groups_bit_for_bit() {
        for dtype in [DType::F32, DType::BF16] {
            let tcp = on_tcp_ranks(3, |c| {
                let t = rank_tensor(c.rank(), dtype);
                let g = c.all_gather_host(vec![c.rank() as u64 * 10]).unwrap();
                assert_eq!(g, vec![vec![0], vec![10], vec![20]]);
                let mut sums = Vec::new();
                for _ in 0..3 {
                    sums.push(c.all_reduce_sum_flat(&[&t]).unwrap().to_vec_f64().unwrap());
                }
                sums
            });
            let comms = ThreadGroup::new(3).unwrap();
            let threads: Vec<Vec<f64>> = std::thread::scope(|s| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|c| {
                        s.spawn(move || {
                            let t = rank_tensor(c.rank(), dtype);
                            c.all_reduce_sum_flat(&[&t]).unwrap().to_vec_f64().unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for per_rank in &tcp {
                for s in per_rank {
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(s), bits(&threads[0]), "{dtype}");
                }
            }
        }
    }

    #[test]
    fn all_gather_concatenates_in_rank_order_as_thread_groups_do() {
        let got = on_tcp_ranks(3, |c| {
            let t = rank_tensor(c.rank(), DType::F32);
            c.all_gather(&t).unwrap()
        });
        let want: Vec<Tensor> = (0..3).map(|r| rank_tensor(r, DType::F32)).collect();
        let want = Tensor::cat(&want.iter().collect::<Vec<_>>(), 0).unwrap();
        for g in got {
            assert_eq!(g.shape(), &[15, 3]);
            assert_eq!(g.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
        }
        let errs = on_tcp_ranks(2, |c| {
            let t = Tensor::zeros(&[1 + c.rank(), 2], DType::F32, tensor::Device::Cpu).unwrap();
            c.all_gather(&t).unwrap_err().to_string()
        });
        for e in errs {
            assert!(
                e.contains("rank 1 passes a f32 tensor of shape [2, 2]"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_mismatch_names_the_rank() {
        let errs = on_tcp_ranks(2, |c| {
            let t = Tensor::zeros(&[2 + c.rank()], DType::F32, tensor::Device::Cpu).unwrap();
            c.all_reduce_sum_flat(&[&t]).unwrap_err().to_string()
        });
        for e in errs {
            assert!(e.contains("rank 1 passes a bucket of 3 f32"), "{e}");
        }
    }
}
