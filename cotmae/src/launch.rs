//! Starting the ranks of a data-parallel run, as torchrun does: `--nproc_per_node N` (with
//! `--nnodes`, `--node_rank`, `--master_addr`, `--master_port` for several machines) makes this
//! process a launcher that re-executes the same command N times with the torchrun environment
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) and
//! waits for them. A process started with that environment (by us, by `torchrun --no-python`,
//! or by `srun`: see [`nn::comm::env`]) is one rank: rank `r` computes on `cuda:<LOCAL_RANK>`
//! with `--device cuda` ([`rank_device`]), its gradients summed by NCCL (`nn::comm::Nccl::join`:
//! rank 0 publishes the `ncclUniqueId` through the TCP store, every rank calls
//! `ncclCommInitRank`), or on the CPU, exchanging through the store (`nn::comm::TcpGroup`).
//!
//! The launcher stops the run when a rank fails: the other ranks notice through the store and
//! exit with an error naming it; any still running after a grace period are killed; the
//! launcher exits non-zero naming the first rank that failed.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use clap::Args;
use nn::comm::env::DEFAULT_MASTER_PORT;
use nn::comm::DistEnv;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How long the other ranks get to stop by themselves after one failed.
const GRACE: Duration = Duration::from_secs(60);

/// torchrun's flags (flatten into a training subcommand's `Args`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[command(rename_all = "snake_case")]
pub struct LaunchArgs {
    /// Start this many ranks on this machine (rank r on cuda:r with --device cuda, or CPU
    /// ranks with --device cpu); unset: one process, or the ranks an external launcher started
    /// (torchrun / srun environment).
    #[arg(long)]
    pub nproc_per_node: Option<usize>,
    /// Machines in the run (each runs the same command with its --node_rank).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's index in 0..nnodes.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Address of node 0, where rank 0 serves the rendezvous store.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port of the rendezvous store on node 0.
    #[arg(long, default_value_t = DEFAULT_MASTER_PORT)]
    pub master_port: u16,
}

/// What this process is.
pub enum Role {
    /// A run of one process.
    Single,
    /// Starts `--nproc_per_node` ranks and waits for them.
    Launcher,
    /// One rank of a data-parallel run.
    Rank(DistEnv),
}

impl LaunchArgs {
    /// This process's role: a rank when the launcher environment is set (it wins over the
    /// flags: our own children see both), else a launcher with `--nproc_per_node`.
    pub fn role(&self) -> Result<Role> {
        if let Some(env) = DistEnv::from_env()? {
            return Ok(Role::Rank(env));
        }
        match self.nproc_per_node {
            None => Ok(Role::Single),
            Some(0) => Err(Error::Config("--nproc_per_node must be at least 1".into())),
            Some(_) if self.nnodes == 0 || self.node_rank >= self.nnodes => {
                Err(Error::Config(format!(
                    "--node_rank {} is outside --nnodes {}",
                    self.node_rank, self.nnodes
                )))
            }
            Some(_) => Ok(Role::Launcher),
        }
    }

    /// Re-executes this command once per local rank with the torchrun environment and waits;
    /// an error names the first rank that failed.
    pub fn spawn_ranks(&self) -> Result<()> {
        let n = self.nproc_per_node.unwrap_or(1);
        let exe = std::env::current_exe()
            .map_err(|e| Error::Config(format!("--nproc_per_node: this program's path: {e}")))?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let mut children: Vec<(usize, Child)> = Vec::new();
        for local in 0..n {
            let rank = self.node_rank * n + local;
            let child = Command::new(&exe)
                .args(&args)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", (self.nnodes * n).to_string())
                .env("LOCAL_RANK", local.to_string())
                .env("LOCAL_WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", &self.master_addr)
                .env("MASTER_PORT", self.master_port.to_string())
                .spawn();
            match child {
                Ok(c) => children.push((rank, c)),
                Err(e) => {
                    stop(&mut children);
                    return Err(Error::Config(format!("starting rank {rank}: {e}")));
                }
            }
        }
        wait_all(children)
    }
}

/// Kills (SIGKILL) and reaps every child still running.
fn stop(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits for every rank; after the first failure, gives the others [`GRACE`] to stop, then
/// kills them.
fn wait_all(mut children: Vec<(usize, Child)>) -> Result<()> {
    let mut failed: Option<(usize, String, Instant)> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() && failed.is_none() {
                        failed = Some((*rank, status.to_string(), Instant::now()));
                    }
                    children.remove(i);
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let r = *rank;
                    stop(&mut children);
                    return Err(Error::Config(format!("waiting for rank {r}: {e}")));
                }
            }
        }
        if let Some((_, _, at)) = &failed {
            if at.elapsed() > GRACE {
                stop(&mut children);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        None => Ok(()),
        Some((rank, status, _)) => Err(Error::Config(format!(
            "rank {rank} failed ({status}); the run stopped"
        ))),
    }
}

/// The `--device` a rank computes on: `cuda:<LOCAL_RANK>` for a GPU run (`--device cuda` or
/// `cuda:N`) started by a launcher, else the flag as given.
pub fn rank_device(flag: &str, env: Option<&DistEnv>) -> String {
    match env {
        Some(e) if flag.starts_with("cuda") => format!("cuda:{}", e.local_rank),
        _ => flag.to_string(),
    }
}

/// Runs `train` as this process's part of the run the flags and environment describe: alone
/// (with a single-process communicator), as a launcher (`Ok(None)`: the ranks did the work), or
/// as one rank. `gpu` says whether the run computes on GPUs (`--device cuda`); each GPU rank
/// then computes on [`rank_device`] and `train` gets an NCCL communicator.
pub fn run_as_role<T, E: From<Error>>(
    launch: &LaunchArgs,
    gpu: bool,
    train: impl FnOnce(&dyn nn::Communicator, Option<&DistEnv>) -> std::result::Result<T, E>,
) -> std::result::Result<Option<T>, E> {
    match launch.role()? {
        Role::Single => train(&nn::SingleProcess, None).map(Some),
        Role::Launcher => Ok(launch.spawn_ranks().map(|_| None)?),
        Role::Rank(env) => {
            let store = env
                .connect_cpu(nn::comm::DEFAULT_TIMEOUT)
                .map_err(Error::from)?;
            if gpu && env.world_size > 1 {
                let comm = gpu_comm(&env, store)?;
                return train(&comm, Some(&env)).map(Some);
            }
            train(&store, Some(&env)).map(Some)
        }
    }
}

/// Rank `env.rank`'s NCCL communicator on `cuda:<LOCAL_RANK>`, meeting the others through
/// `store`.
#[cfg(feature = "cuda")]
fn gpu_comm(env: &DistEnv, store: nn::comm::TcpGroup) -> Result<nn::comm::Nccl> {
    Ok(nn::comm::Nccl::join(env.local_rank, store)?)
}

#[cfg(not(feature = "cuda"))]
fn gpu_comm(env: &DistEnv, _: nn::comm::TcpGroup) -> Result<nn::SingleProcess> {
    Err(Error::Config(format!(
        "rank {}: --device cuda needs a build with --features cuda",
        env.rank
    )))
}
