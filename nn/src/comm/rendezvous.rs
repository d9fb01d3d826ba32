//! A host-side all-gather between the threads of one process: each of `world` ranks deposits one
//! value per collective and receives every rank's value, in rank order. The communicators use it
//! to exchange data (`ThreadGroup`) or to agree on sizes before a device collective (`Nccl`).
//!
//! Collectives are numbered per rank (the k-th call of every rank meets the k-th call of the
//! others) and named; a rank whose k-th call has another name is reported instead of exchanging
//! mismatched values. Nothing hangs: a rank that does not arrive within the timeout, or that drops
//! its handle (its thread returned or failed) before arriving, fails the collective for everyone
//! with an error naming that rank, and the group stays failed afterwards.
//!
//! State: one `Round` per collective in flight (at most two: a fast rank can deposit for k + 1
//! while slow ranks still collect k). A round is complete when all ranks deposited; it is freed
//! when all ranks collected.

use std::any::Any;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tensor::{Error, Result};

const OP: &str = "Communicator";

type Payload = Arc<dyn Any + Send + Sync>;

struct Round {
    what: &'static str,
    first: usize,
    slots: Vec<Option<Payload>>,
    done: Option<Arc<Vec<Payload>>>,
    collected: usize,
}

struct State {
    rounds: BTreeMap<u64, Round>,
    left: Vec<bool>,
    failure: Option<String>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One rank's handle on a rendezvous. Movable to another thread, not shareable.
pub(crate) struct Member {
    rank: usize,
    shared: Arc<Shared>,
    /// The number of the next collective this rank joins.
    next: Cell<u64>,
}

/// `world` handles on one new rendezvous, rank `i` at index `i`.
pub(crate) fn members(world: usize, timeout: Duration) -> Result<Vec<Member>> {
    if world == 0 {
        tensor::bail!(OP, "a group needs at least one rank");
    }
    let shared = Arc::new(Shared {
        world,
        timeout,
        state: Mutex::new(State {
            rounds: BTreeMap::new(),
            left: vec![false; world],
            failure: None,
        }),
        changed: Condvar::new(),
    });
    Ok((0..world)
        .map(|rank| Member {
            rank,
            shared: shared.clone(),
            next: Cell::new(0),
        })
        .collect())
}

/// "rank 2" or "ranks [1, 3]".
fn ranks(rs: &[usize]) -> String {
    match rs {
        [r] => format!("rank {r}"),
        _ => format!("ranks {rs:?}"),
    }
}

impl Member {
    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.shared.world
    }

    /// Deposits `mine` as this rank's value of collective `what` and returns every rank's value
    /// of it, in rank order, once all ranks deposited.
    pub fn all_gather<T: Any + Send + Sync>(
        &self,
        what: &'static str,
        mine: T,
    ) -> Result<Vec<Arc<T>>> {
        let (k, rank, world) = (self.next.get(), self.rank, self.shared.world);
        self.next.set(k + 1);
        let mut st = self.shared.lock();
        if let Some(f) = &st.failure {
            return Err(Error::op(OP, f.clone()));
        }
        let round = st.rounds.entry(k).or_insert_with(|| Round {
            what,
            first: rank,
            slots: vec![None; world],
            done: None,
            collected: 0,
        });
        if round.what != what {
            let msg = format!(
                "collective #{k} is {} on rank {} but {what} on rank {rank}: the ranks called \
                 different collectives",
                round.what, round.first
            );
            return Err(self.fail(st, msg));
        }
        round.slots[rank] = Some(Arc::new(mine));
        if round.slots.iter().all(Option::is_some) {
            let all = round.slots.iter_mut().map(|s| s.take().unwrap()).collect();
            round.done = Some(Arc::new(all));
            self.shared.changed.notify_all();
        }
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            if let Some(f) = &st.failure {
                return Err(Error::op(OP, f.clone()));
            }
            let left = st.left.clone();
            let round = st
                .rounds
                .get_mut(&k)
                .expect("a round lives until every rank collected");
            if let Some(done) = round.done.clone() {
                round.collected += 1;
                if round.collected == world {
                    st.rounds.remove(&k);
                }
                return done
                    .iter()
                    .map(|p| {
                        p.clone().downcast::<T>().map_err(|_| {
                            Error::op(OP, format!("collective #{k} ({what}) mixed value types"))
                        })
                    })
                    .collect();
            }
            let missing: Vec<usize> = (0..world).filter(|&r| round.slots[r].is_none()).collect();
            let gone: Vec<usize> = missing.iter().copied().filter(|&r| left[r]).collect();
            if !gone.is_empty() {
                let msg = format!(
                    "{} left the group (its thread returned or failed) before joining collective \
                     #{k} ({what})",
                    ranks(&gone)
                );
                return Err(self.fail(st, msg));
            }
            let now = Instant::now();
            if now >= deadline {
                let msg = format!(
                    "{} did not join collective #{k} ({what}) within {:?}",
                    ranks(&missing),
                    self.shared.timeout
                );
                return Err(self.fail(st, msg));
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// [`Member::all_gather`] of each rank's `status` (a value, or why it has none), then `f` of
    /// every rank's value in rank order; when a rank had none, the same error on every rank,
    /// attributed to `op` and naming the first such rank. A rank that cannot take part in a
    /// collective joins with its error, so the others fail with it instead of waiting for it.
    pub fn agree<T: Send + Sync + 'static, R>(
        &self,
        op: &'static str,
        what: &'static str,
        status: std::result::Result<T, String>,
        f: impl FnOnce(Vec<&T>) -> Result<R>,
    ) -> Result<R> {
        let all = self.all_gather(what, status)?;
        let mut values = Vec::with_capacity(all.len());
        for (r, s) in all.iter().enumerate() {
            match &**s {
                Ok(v) => values.push(v),
                Err(msg) => tensor::bail!(op, "rank {r}: {msg}"),
            }
        }
        f(values)
    }

    /// [`Member::all_gather`] of a few words, copied out.
    pub fn all_gather_host(&self, words: Vec<u64>) -> Result<Vec<Vec<u64>>> {
        let all = self.all_gather("all_gather_host", words)?;
        Ok(all.iter().map(|w| w.to_vec()).collect())
    }

    /// Marks the group failed with `msg` (the first failure wins), wakes every waiting rank and
    /// returns the error.
    fn fail(&self, mut st: MutexGuard<'_, State>, msg: String) -> Error {
        let msg = st.failure.get_or_insert(msg).clone();
        self.shared.changed.notify_all();
        Error::op(OP, msg)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.shared.lock().left[self.rank] = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<R: Send>(world: usize, timeout_ms: u64, f: impl Fn(Member) -> R + Sync) -> Vec<R> {
        let ms = members(world, Duration::from_millis(timeout_ms)).unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = ms.into_iter().map(|m| s.spawn(|| f(m))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_rank_receives_every_value_in_rank_order() {
        let out = run(3, 10_000, |m| {
            let mut seen = Vec::new();
            for step in 0..50u64 {
                let got = m.all_gather("step", (m.rank() as u64, step)).unwrap();
                seen.push(got.iter().map(|v| **v).collect::<Vec<_>>());
            }
            seen
        });
        for per_rank in &out {
            for (step, got) in per_rank.iter().enumerate() {
                let want: Vec<(u64, u64)> = (0..3).map(|r| (r, step as u64)).collect();
                assert_eq!(got, &want);
            }
        }
    }

    #[test]
    fn a_missing_rank_times_out_with_its_name_on_every_waiting_rank() {
        let out = run(3, 100, |m| {
            if m.rank() == 1 {
                // Rank 1 stays alive (holds its handle) but never joins.
                std::thread::sleep(Duration::from_millis(400));
                return String::new();
            }
            m.all_gather("grads", 0u8).unwrap_err().to_string()
        });
        for e in [&out[0], &out[2]] {
            assert!(
                e.contains("rank 1 did not join collective #0 (grads) within 100ms"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_collective_at_once_and_for_good() {
        let t0 = Instant::now();
        let out = run(2, 60_000, |m| {
            if m.rank() == 0 {
                drop(m);
                return vec![];
            }
            vec![
                m.all_gather("grads", 1u8).unwrap_err().to_string(),
                m.all_gather("grads", 1u8).unwrap_err().to_string(),
            ]
        });
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "waited for the timeout"
        );
        for e in &out[1] {
            assert!(e.contains("rank 0 left the group"), "{e}");
        }
    }

    #[test]
    fn ranks_calling_different_collectives_are_reported() {
        let out = run(2, 10_000, |m| {
            let what = if m.rank() == 0 { "grads" } else { "loss" };
            m.all_gather(what, 0u8).unwrap_err().to_string()
        });
        for e in &out {
            assert!(e.contains("collective #0 is"), "{e}");
            assert!(e.contains("the ranks called different collectives"), "{e}");
        }
        assert!(members(0, Duration::ZERO).is_err());
    }
}
