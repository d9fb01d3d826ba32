//! Who this process is in a multi-process run, from the environment an external launcher sets,
//! as torch's `init_process_group(init_method="env://")` reads it:
//!
//! - `torchrun` (or `torch.distributed.launch`, or our own `--nproc_per_node`): `RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`;
//! - `srun` (Slurm): `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`;
//!   Slurm names no rendezvous address, so `MASTER_ADDR` must be exported (e.g. the first host of
//!   `scontrol show hostnames $SLURM_JOB_NODELIST`); `MASTER_PORT` defaults to 29500.
//!
//! `RANK` wins over the Slurm variables (torchrun under srun). A value that does not parse is an
//! error naming the variable. [`DistEnv::connect_cpu`] joins the CPU ranks: rank 0 serves the
//! TCP store on every interface at `MASTER_PORT`, every rank connects to `MASTER_ADDR`.

use std::time::Duration;

use super::{store, TcpGroup};
use tensor::{Error, Result};

const OP: &str = "launch environment";

/// The default rendezvous port (torch's).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// One process's place in the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// This process's index on its machine (its GPU is `cuda:<local_rank>`).
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

fn parse<T: std::str::FromStr>(var: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| {
        Error::op(
            OP,
            format!("{var}={value:?} is not a valid number for {var}"),
        )
    })
}

impl DistEnv {
    /// The process's environment, or None when no launcher set one.
    pub fn from_env() -> Result<Option<DistEnv>> {
        DistEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`DistEnv::from_env`] with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let get = |k: &str| -> Result<Option<usize>> {
            var(k).map(|v| parse::<usize>(k, &v)).transpose()
        };
        let (rank, world, local_rank, local_world, launcher) = if let Some(rank) = get("RANK")? {
            let world = get("WORLD_SIZE")?.ok_or_else(|| {
                Error::op(
                    OP,
                    "RANK is set but WORLD_SIZE is not (set both, as torchrun does)",
                )
            })?;
            let local = get("LOCAL_RANK")?.unwrap_or(rank);
            let local_world = get("LOCAL_WORLD_SIZE")?.unwrap_or(world);
            (rank, world, local, local_world, "RANK")
        } else if let Some(rank) = get("SLURM_PROCID")? {
            let world = get("SLURM_NTASKS")?
                .ok_or_else(|| Error::op(OP, "SLURM_PROCID is set but SLURM_NTASKS is not"))?;
            let local = get("SLURM_LOCALID")?.unwrap_or(0);
            // "4" or "4(x2)": tasks per node, the same on every node.
            let per_node = var("SLURM_NTASKS_PER_NODE")
                .and_then(|v| {
                    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
                    digits.parse().ok()
                })
                .unwrap_or(world);
            (rank, world, local, per_node, "SLURM_PROCID")
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            return Err(Error::op(
                OP,
                format!("rank {rank} ({launcher}) is outside a world of {world}"),
            ));
        }
        if local_rank >= local_world.max(1) {
            return Err(Error::op(
                OP,
                format!("local rank {local_rank} is outside {local_world} local processes"),
            ));
        }
        let master_addr = match var("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ if world == 1 => "127.0.0.1".to_string(),
            _ => {
                return Err(Error::op(
                    OP,
                    format!(
                        "MASTER_ADDR is not set: rank 0's address, where the ranks meet \
                         ({launcher} is set; under srun export MASTER_ADDR, e.g. the first host \
                         of `scontrol show hostnames $SLURM_JOB_NODELIST`)"
                    ),
                ))
            }
        };
        let master_port = match var("MASTER_PORT") {
            Some(p) => parse::<u16>("MASTER_PORT", &p)?,
            None => DEFAULT_MASTER_PORT,
        };
        Ok(Some(DistEnv {
            rank,
            world_size: world,
            local_rank,
            local_world_size: local_world,
            master_addr,
            master_port,
        }))
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn master(&self) -> String {
        if self.master_addr.contains(':') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }

    /// This rank's CPU communicator: rank 0 serves the store first, then every rank connects;
    /// a rank that does not join within `timeout` fails every other one.
    pub fn connect_cpu(&self, timeout: Duration) -> Result<TcpGroup> {
        if self.rank == 0 {
            store::serve(&format!("0.0.0.0:{}", self.master_port)).map_err(|e| {
                Error::op(
                    OP,
                    format!(
                        "rank 0 cannot serve the store on port {} (MASTER_PORT; in use by \
                         another run?): {e}",
                        self.master_port
                    ),
                )
            })?;
        }
        TcpGroup::connect(&self.master(), self.rank, self.world_size, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_slurm_and_errors() {
        assert_eq!(env(&[]).unwrap(), None);
        let t = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
            ("SLURM_PROCID", "5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.rank, t.world_size, t.local_rank, t.local_world_size),
            (3, 8, 1, 2)
        );
        assert_eq!(t.master(), "node0:1234");
        let s = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4(x2)"),
            ("MASTER_ADDR", "n1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                s.rank,
                s.world_size,
                s.local_rank,
                s.local_world_size,
                s.master_port
            ),
            (5, 8, 1, 4, DEFAULT_MASTER_PORT)
        );
        let e = |p: &[(&str, &str)]| env(p).unwrap_err().to_string();
        assert!(e(&[("RANK", "x")]).contains("RANK=\"x\""));
        assert!(e(&[("RANK", "0")]).contains("WORLD_SIZE is not"));
        assert!(e(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("outside a world of 2"));
        assert!(e(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).contains("MASTER_ADDR"));
        let p = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")];
        assert!(e(&[p[0], p[1], p[2], ("MASTER_PORT", "99999")]).contains("MASTER_PORT"));
    }
}
