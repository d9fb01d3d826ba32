//! NCCL as the simulated devices run it: communicators among the ranks of one process (one thread
//! per rank) with NCCL's collective semantics, over host pointers (a simulated device's addresses
//! are host addresses).
//!
//! - A clique of N ranks is made at once ([`SimComm::init_all`], like `ncclCommInitAll`) or rank by
//!   rank from a shared id string ([`SimComm::init_rank`], like `ncclCommInitRank` with an
//!   `ncclUniqueId`; each call blocks until all N ranks have joined).
//! - Each collective call blocks until every rank of the clique has made its next collective call;
//!   the last rank to arrive checks that all calls agree (the same collective, element type,
//!   count, reduction and root) and computes the result for everyone. Calls are matched by their
//!   sequence number on each rank (the i-th collective of every rank belongs together), as NCCL
//!   does. A disagreement is an error naming the ranks and what each called, on every rank,
//!   instead of NCCL's hang or silent corruption; a rank that does not arrive within the timeout
//!   (default 60 s, `COTMAE_SIM_NCCL_TIMEOUT_S`) turns into an error naming it. Either breaks the
//!   clique, as a failed NCCL communicator is unusable: every later call errors at once, as do
//!   calls after any rank's communicator was dropped (NCCL's `ncclCommAbort`).
//! - All-reduce (sum, avg) of f32, f16, bf16: each element is summed over the ranks in rank order
//!   in f32, avg divides that sum by N in f32, and half types are rounded once at the end. NCCL's
//!   ring rounds half types at every addition, in an order that depends on the ring, so its
//!   results can differ in the last bits; here one result is computed and copied to every rank,
//!   so all ranks are bit-identical (which NCCL also guarantees).
//! - All-gather: rank r's `count` elements land at `r * count` of every rank's receive buffer.
//!   Broadcast: the root's `count` elements land in every rank's receive buffer.
//! - In place: the send and receive buffers may be the same (for all-gather, the send buffer may
//!   be the rank's own slot of the receive buffer), since every input is read before any output
//!   is written.

use super::elem::DataType;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// `ncclRedOp_t`: how all-reduce combines the ranks' elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedOp {
    /// `ncclSum`
    Sum,
    /// `ncclAvg`: the sum divided by the number of ranks.
    Avg,
}

/// One rank's collective call, as compared with the other ranks'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    AllReduce {
        dtype: DataType,
        count: usize,
        op: RedOp,
    },
    AllGather {
        dtype: DataType,
        count: usize,
    },
    Broadcast {
        dtype: DataType,
        count: usize,
        root: usize,
    },
}

impl Call {
    fn dtype_count(self) -> (DataType, usize) {
        match self {
            Call::AllReduce { dtype, count, .. }
            | Call::AllGather { dtype, count }
            | Call::Broadcast { dtype, count, .. } => (dtype, count),
        }
    }
}

/// A rank's posted call with its buffers (addresses, so the state can cross threads: the posting
/// thread is blocked until the call completes, so they stay valid).
#[derive(Clone, Copy, Debug)]
struct Posted {
    call: Call,
    send: usize,
    recv: usize,
}

struct State {
    /// Which ranks have joined (all true once made).
    joined: Vec<bool>,
    /// This round's calls, one slot per rank.
    posted: Vec<Option<Posted>>,
    /// Completed rounds; a rank waits for this to pass the round it posted in.
    round: u64,
    /// The last completed round's outcome, read by the ranks waiting on it.
    outcome: Result<(), String>,
    /// Why the clique can no longer be used.
    broken: Option<String>,
}

struct Shared {
    nranks: usize,
    timeout: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn new(nranks: usize, timeout: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            nranks,
            timeout,
            state: Mutex::new(State {
                joined: vec![false; nranks],
                posted: vec![None; nranks],
                round: 0,
                outcome: Ok(()),
                broken: None,
            }),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the condition variable until `done` holds or the deadline passes; true if done.
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
        done: impl Fn(&State) -> bool,
    ) -> (MutexGuard<'a, State>, bool) {
        loop {
            if done(&st) {
                return (st, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (st, false);
            }
            st = self
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The timeout for a missing rank: `COTMAE_SIM_NCCL_TIMEOUT_S` seconds, else 60.
fn default_timeout() -> Duration {
    let secs = std::env::var("COTMAE_SIM_NCCL_TIMEOUT_S")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(60.0);
    Duration::from_secs_f64(secs)
}

/// Cliques being made by [`SimComm::init_rank`], by id, until every rank has joined.
fn pending() -> &'static Mutex<HashMap<String, Arc<Shared>>> {
    static PENDING: OnceLock<Mutex<HashMap<String, Arc<Shared>>>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

/// One rank's communicator of a simulated clique. It may move to another thread (each rank is
/// driven by its own); dropping it aborts the clique for the other ranks.
pub struct SimComm {
    shared: Arc<Shared>,
    rank: usize,
    /// Collectives this rank has called, for messages. A `Cell`: calls take `&self`, and the
    /// communicator is not `Sync` (one rank is driven by one thread at a time), as with NCCL.
    calls: Cell<u64>,
}

impl std::fmt::Debug for SimComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimComm(rank {} of {})", self.rank, self.shared.nranks)
    }
}

impl SimComm {
    /// A clique of `nranks` ranks made at once (`ncclCommInitAll`); rank i is element i.
    pub fn init_all(nranks: usize) -> Result<Vec<SimComm>, String> {
        Self::init_all_with_timeout(nranks, default_timeout())
    }

    /// [`SimComm::init_all`] with a timeout for a rank that does not arrive.
    pub fn init_all_with_timeout(nranks: usize, timeout: Duration) -> Result<Vec<SimComm>, String> {
        if nranks == 0 {
            return Err("ncclCommInitAll: a clique needs at least one rank".into());
        }
        let shared = Shared::new(nranks, timeout);
        shared.lock().joined.fill(true);
        Ok((0..nranks)
            .map(|rank| SimComm {
                shared: shared.clone(),
                rank,
                calls: Cell::new(0),
            })
            .collect())
    }

    /// Joins clique `id` as `rank` of `nranks` (`ncclCommInitRank`), blocking until all ranks have
    /// joined or the timeout passes. Every rank must pass the same `id` and `nranks`.
    pub fn init_rank(id: &str, nranks: usize, rank: usize) -> Result<SimComm, String> {
        Self::init_rank_with_timeout(id, nranks, rank, default_timeout())
    }

    /// [`SimComm::init_rank`] with a timeout for the ranks that do not join.
    pub fn init_rank_with_timeout(
        id: &str,
        nranks: usize,
        rank: usize,
        timeout: Duration,
    ) -> Result<SimComm, String> {
        let who = format!("ncclCommInitRank (id {id:?}, rank {rank} of {nranks})");
        if rank >= nranks {
            return Err(format!("{who}: the rank is out of range"));
        }
        let shared = {
            let mut map = pending().lock().unwrap_or_else(|p| p.into_inner());
            let shared = map
                .entry(id.to_string())
                .or_insert_with(|| Shared::new(nranks, timeout))
                .clone();
            if shared.nranks != nranks {
                return Err(format!(
                    "{who}: other ranks of this id were made with {} ranks",
                    shared.nranks
                ));
            }
            let mut st = shared.lock();
            if st.joined[rank] {
                return Err(format!("{who}: rank {rank} has already joined"));
            }
            st.joined[rank] = true;
            if st.joined.iter().all(|&j| j) {
                // Complete: a later init with this id makes a new clique.
                map.remove(id);
                shared.wake.notify_all();
            }
            drop(st);
            shared
        };
        let deadline = Instant::now() + timeout;
        let st = shared.lock();
        let (mut st, done) = shared.wait_until(st, deadline, |s| s.joined.iter().all(|&j| j));
        if !done {
            let missing = missing_ranks(&st.joined);
            st.joined[rank] = false;
            drop(st);
            let mut map = pending().lock().unwrap_or_else(|p| p.into_inner());
            if map.get(id).is_some_and(|s| Arc::ptr_eq(s, &shared))
                && !shared.lock().joined.contains(&true)
            {
                map.remove(id);
            }
            return Err(format!(
                "{who}: ranks {missing} did not join within {:?}",
                timeout
            ));
        }
        drop(st);
        Ok(SimComm {
            shared,
            rank,
            calls: Cell::new(0),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn nranks(&self) -> usize {
        self.shared.nranks
    }

    /// `ncclAllReduce`: every rank's `recv` gets the [`RedOp`] over the ranks of their `send`
    /// (`count` elements each).
    ///
    /// # Safety
    /// `send` must address `count` readable elements and `recv` `count` writable ones (they may
    /// be the same), untouched by anything else until the call returns.
    pub unsafe fn all_reduce(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        op: RedOp,
    ) -> Result<(), String> {
        self.collective(Call::AllReduce { dtype, count, op }, send, recv)
    }

    /// `ncclAllGather`: rank r's `count` elements of `send` land at element `r * count` of every
    /// rank's `recv` (`nranks * count` elements).
    ///
    /// # Safety
    /// As [`SimComm::all_reduce`], with `recv` addressing `nranks * count` elements; `send` may be
    /// this rank's own slot of `recv`.
    pub unsafe fn all_gather(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
    ) -> Result<(), String> {
        self.collective(Call::AllGather { dtype, count }, send, recv)
    }

    /// `ncclBroadcast`: the root's `count` elements of `send` land in every rank's `recv`. Only
    /// the root's `send` is read.
    ///
    /// # Safety
    /// As [`SimComm::all_reduce`] (on ranks other than the root `send` may be anything).
    pub unsafe fn broadcast(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        root: usize,
    ) -> Result<(), String> {
        if root >= self.shared.nranks {
            return Err(format!(
                "ncclBroadcast (rank {} of {}): root {root} is out of range",
                self.rank, self.shared.nranks
            ));
        }
        self.collective(Call::Broadcast { dtype, count, root }, send, recv)
    }

    /// Marks the clique unusable (`ncclCommAbort`): ranks waiting in a collective return an error.
    pub fn abort(&self, why: &str) {
        let mut st = self.shared.lock();
        st.broken.get_or_insert_with(|| why.to_string());
        self.shared.wake.notify_all();
    }

    /// Posts this rank's call and blocks until the round completes (or fails).
    fn collective(&self, call: Call, send: *const c_void, recv: *mut c_void) -> Result<(), String> {
        let seq = self.calls.get() + 1;
        self.calls.set(seq);
        let who = format!(
            "{call:?} (collective #{seq} of rank {} of {})",
            self.rank, self.shared.nranks
        );
        let (_, count) = call.dtype_count();
        if count > 0 && (recv.is_null() || (send.is_null() && self.reads_send(call))) {
            return Err(format!("{who}: a null buffer"));
        }
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if let Some(why) = &st.broken {
            return Err(format!("{who}: the communicator is unusable: {why}"));
        }
        let round = st.round;
        st.posted[self.rank] = Some(Posted {
            call,
            send: send as usize,
            recv: recv as usize,
        });
        if st.posted.iter().all(Option::is_some) {
            let posted: Vec<Posted> = st.posted.iter_mut().map(|p| p.take().unwrap()).collect();
            // SAFETY: every rank's buffers are valid while it waits for this round (its caller's
            // contract), and this thread holds the lock that the round completes under.
            let outcome = check_calls(&posted).map(|()| unsafe { compute(&posted) });
            if let Err(e) = &outcome {
                st.broken = Some(format!("collective #{seq} failed: {e}"));
            }
            st.outcome = outcome;
            st.round += 1;
            shared.wake.notify_all();
            return st.outcome.clone().map_err(|e| format!("{who}: {e}"));
        }
        let deadline = Instant::now() + shared.timeout;
        let (mut st, done) =
            shared.wait_until(st, deadline, |s| s.round > round || s.broken.is_some());
        if st.round > round {
            return st.outcome.clone().map_err(|e| format!("{who}: {e}"));
        }
        st.posted[self.rank] = None;
        if done {
            let why = st.broken.clone().unwrap_or_default();
            return Err(format!("{who}: the communicator is unusable: {why}"));
        }
        let mut arrived = st.posted.iter().map(Option::is_some).collect::<Vec<_>>();
        arrived[self.rank] = true;
        let why = format!(
            "ranks {} did not call collective #{seq} within {:?}",
            missing_ranks(&arrived),
            shared.timeout
        );
        st.broken = Some(why.clone());
        shared.wake.notify_all();
        Err(format!("{who}: {why}"))
    }

    /// Whether this rank's `send` is read by `call` (a broadcast reads only the root's).
    fn reads_send(&self, call: Call) -> bool {
        !matches!(call, Call::Broadcast { root, .. } if root != self.rank)
    }
}

impl Drop for SimComm {
    fn drop(&mut self) {
        self.abort(&format!("rank {}'s communicator was destroyed", self.rank));
    }
}

/// "1, 3" for the ranks whose flag is false.
fn missing_ranks(present: &[bool]) -> String {
    let missing: Vec<String> = present
        .iter()
        .enumerate()
        .filter(|(_, &p)| !p)
        .map(|(r, _)| r.to_string())
        .collect();
    missing.join(", ")
}

/// Errors unless every rank made the same call, naming the ranks that differ from rank 0.
fn check_calls(posted: &[Posted]) -> Result<(), String> {
    let first = posted[0].call;
    let differ: Vec<String> = posted
        .iter()
        .enumerate()
        .filter(|(_, p)| p.call != first)
        .map(|(r, p)| format!("rank {r} called {:?}", p.call))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(format!(
        "mismatched collectives: rank 0 called {first:?} but {}",
        differ.join(", ")
    ))
}

/// Computes one agreed round for every rank: all inputs are read before any output is written.
///
/// # Safety
/// Every posted buffer must be valid for the call's extent.
unsafe fn compute(posted: &[Posted]) {
    let nranks = posted.len();
    let send = |r: usize| posted[r].send as *const c_void;
    let recv = |r: usize| posted[r].recv as *mut c_void;
    match posted[0].call {
        Call::AllReduce { dtype, count, op } => {
            let mut acc = vec![0f32; count];
            for r in 0..nranks {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a += dtype.load(send(r), i);
                }
            }
            if op == RedOp::Avg {
                acc.iter_mut().for_each(|a| *a /= nranks as f32);
            }
            for r in 0..nranks {
                for (i, &a) in acc.iter().enumerate() {
                    dtype.store(recv(r), i, a);
                }
            }
        }
        Call::AllGather { dtype, count } => {
            let bytes = count * dtype.size();
            let mut all = Vec::with_capacity(bytes * nranks);
            for r in 0..nranks {
                all.extend_from_slice(std::slice::from_raw_parts(send(r).cast::<u8>(), bytes));
            }
            for r in 0..nranks {
                std::ptr::copy_nonoverlapping(all.as_ptr(), recv(r).cast::<u8>(), all.len());
            }
        }
        Call::Broadcast { dtype, count, root } => {
            let bytes = count * dtype.size();
            let data = std::slice::from_raw_parts(send(root).cast::<u8>(), bytes).to_vec();
            for r in 0..nranks {
                std::ptr::copy_nonoverlapping(data.as_ptr(), recv(r).cast::<u8>(), bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Runs `f(rank, comm)` on one thread per communicator; returns each rank's result in order.
    fn on_threads<R: Send>(comms: Vec<SimComm>, f: impl Fn(usize, SimComm) -> R + Sync) -> Vec<R> {
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .enumerate()
                .map(|(r, c)| {
                    let f = &f;
                    s.spawn(move || f(r, c))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_sum_and_avg_agree_on_every_rank() {
        for n in [2, 3] {
            let comms = SimComm::init_all(n).unwrap();
            let out = on_threads(comms, |r, c| {
                let mut x: Vec<f32> = (0..5).map(|i| (r * 10 + i) as f32).collect();
                let p = x.as_mut_ptr().cast::<c_void>();
                // SAFETY: in place over 5 f32.
                unsafe { c.all_reduce(p, p, 5, DataType::F32, RedOp::Sum) }.unwrap();
                let sum = x.clone();
                let mut y = vec![0f32; 5];
                let src: Vec<f32> = (0..5).map(|i| (r * 10 + i) as f32).collect();
                // SAFETY: out of place, 5 f32 each.
                unsafe {
                    c.all_reduce(
                        src.as_ptr().cast(),
                        y.as_mut_ptr().cast(),
                        5,
                        DataType::F32,
                        RedOp::Avg,
                    )
                }
                .unwrap();
                (sum, y)
            });
            let ranks_sum: f32 = (0..n).map(|r| (r * 10) as f32).sum();
            for (sum, avg) in &out {
                for i in 0..5 {
                    let want = ranks_sum + (n * i) as f32;
                    assert_eq!(sum[i], want);
                    assert_eq!(avg[i], want / n as f32);
                }
            }
        }
    }

    #[test]
    fn half_types_sum_in_f32_and_round_once() {
        // 2048 + 1 + 1 in f16: rounding at each add gives 2048 (spacing 2 above 2048, ties to
        // even), one rounding of the f32 sum 2050 gives 2050.
        let comms = SimComm::init_all(3).unwrap();
        let out = on_threads(comms, |r, c| {
            let v = if r == 0 { 2048.0 } else { 1.0 };
            let mut h = [f16::from_f32(v).to_bits()];
            let mut b = [bf16::from_f32(v * 0.125).to_bits()];
            let (ph, pb) = (
                h.as_mut_ptr().cast::<c_void>(),
                b.as_mut_ptr().cast::<c_void>(),
            );
            // SAFETY: one element each, in place.
            unsafe {
                c.all_reduce(ph, ph, 1, DataType::F16, RedOp::Sum).unwrap();
                c.all_reduce(pb, pb, 1, DataType::Bf16, RedOp::Sum).unwrap();
            }
            (
                f16::from_bits(h[0]).to_f32(),
                bf16::from_bits(b[0]).to_f32(),
            )
        });
        // bf16: 256 + 0.125 + 0.125 = 256.25, nearest bf16 (spacing 2 at 256) is 256.
        assert_eq!(out, vec![(2050.0, 256.0); 3]);
    }

    #[test]
    fn all_gather_and_broadcast_in_and_out_of_place() {
        let comms = SimComm::init_all(3).unwrap();
        let out = on_threads(comms, |r, c| {
            // In place: this rank's slot of the receive buffer is its input.
            let mut all = vec![0f32; 6];
            all[2 * r] = r as f32;
            all[2 * r + 1] = -(r as f32);
            let p = all.as_mut_ptr();
            // SAFETY: send is slot r (2 elements) of a 6-element receive buffer.
            unsafe { c.all_gather(p.add(2 * r).cast(), p.cast(), 2, DataType::F32) }.unwrap();
            let src = [f16::from_f32(r as f32 + 0.5).to_bits(); 4];
            let mut got = [0u16; 4];
            // SAFETY: 4 f16 each, out of place.
            unsafe {
                c.broadcast(
                    src.as_ptr().cast(),
                    got.as_mut_ptr().cast(),
                    4,
                    DataType::F16,
                    2,
                )
            }
            .unwrap();
            (all, got)
        });
        for (all, got) in out {
            assert_eq!(all, vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);
            assert_eq!(got, [f16::from_f32(2.5).to_bits(); 4]);
        }
    }

    #[test]
    fn mismatched_collectives_are_an_error_on_every_rank() {
        let comms = SimComm::init_all(3).unwrap();
        let out = on_threads(comms, |r, c| {
            let mut x = [1f32; 8];
            let p = x.as_mut_ptr().cast::<c_void>();
            // SAFETY: 8 f32 in place (rank 2 gathers 2 x 3 = 6 <= 8 elements).
            let first = unsafe {
                match r {
                    0 => c.all_reduce(p, p, 4, DataType::F32, RedOp::Sum),
                    1 => c.all_reduce(p, p, 3, DataType::F32, RedOp::Sum),
                    _ => c.all_gather(p, p, 2, DataType::F32),
                }
            };
            // The clique is broken afterwards.
            // SAFETY: as above.
            let second = unsafe { c.all_reduce(p, p, 4, DataType::F32, RedOp::Sum) };
            (first.unwrap_err(), second.unwrap_err(), x)
        });
        for (first, second, x) in out {
            assert!(first.contains("mismatched collectives"), "{first}");
            assert!(
                first.contains("rank 1 called AllReduce") && first.contains("count: 3"),
                "{first}"
            );
            assert!(first.contains("rank 2 called AllGather"), "{first}");
            assert!(second.contains("unusable"), "{second}");
            // Nothing was written.
            assert_eq!(x, [1.0; 8]);
        }
    }

    #[test]
    fn a_missing_rank_times_out_with_its_name() {
        let comms = SimComm::init_all_with_timeout(3, Duration::from_millis(200)).unwrap();
        let out = on_threads(comms, |r, c| {
            let mut x = [1f32; 2];
            let p = x.as_mut_ptr().cast::<c_void>();
            if r == 1 {
                // Rank 1 skips the collective, and keeps its communicator until the others fail.
                std::thread::sleep(Duration::from_millis(400));
                return String::new();
            }
            // SAFETY: 2 f32 in place.
            unsafe { c.all_reduce(p, p, 2, DataType::F32, RedOp::Sum) }.unwrap_err()
        });
        // The first rank to time out names rank 1; the other either times out naming it too or
        // finds the communicator broken by the first.
        for e in [&out[0], &out[2]] {
            assert!(e.contains("ranks 1 did not call collective #1"), "{e}");
        }
    }

    #[test]
    fn a_dropped_rank_aborts_the_others() {
        let comms = SimComm::init_all(2).unwrap();
        let out = on_threads(comms, |r, c| {
            if r == 1 {
                std::thread::sleep(Duration::from_millis(50));
                drop(c);
                return String::new();
            }
            let mut x = [0f32];
            let p = x.as_mut_ptr().cast::<c_void>();
            // SAFETY: 1 f32 in place.
            unsafe { c.all_reduce(p, p, 1, DataType::F32, RedOp::Sum) }.unwrap_err()
        });
        assert!(
            out[0].contains("rank 1's communicator was destroyed"),
            "{}",
            out[0]
        );
    }

    #[test]
    fn init_rank_joins_ranks_by_id() {
        let id = "sim-nccl-test-init-rank";
        let out = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|r| {
                    s.spawn(move || {
                        let c = SimComm::init_rank(id, 2, r).unwrap();
                        let mut x = [r as f32 + 1.0];
                        let p = x.as_mut_ptr().cast::<c_void>();
                        // SAFETY: 1 f32 in place.
                        unsafe { c.all_reduce(p, p, 1, DataType::F32, RedOp::Sum) }.unwrap();
                        x[0]
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(out, vec![3.0, 3.0]);
        // A lone rank of a 2-rank clique times out naming the other.
        let e = SimComm::init_rank_with_timeout(
            "sim-nccl-test-lonely",
            2,
            0,
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(e.contains("ranks 1 did not join"), "{e}");
        assert!(SimComm::init_rank("x", 2, 2)
            .unwrap_err()
            .contains("out of range"));
    }
}
