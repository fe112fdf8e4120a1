//! Started by a launcher (mpirun, srun, mpiexec): which rank this process
//! is, of how many, and its rank on its node, from the variables the
//! launcher sets. MPI itself is not needed for that.

use crate::error::{Error, Result};
use crate::session::Role;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: u32,
    pub size: u32,
    /// The rank among those on this node: picks this process's GPU.
    pub local_rank: u32,
    /// Which launcher's variables said so.
    pub launcher: &'static str,
}

/// (launcher, rank, size, local rank) variables, most specific first:
/// Open MPI's mpirun, MPICH/Intel MPI's hydra (PMI), Slurm's srun.
const VARIABLES: [(&str, &str, &str, &str); 3] = [
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
];

impl Launch {
    pub fn from_env() -> Result<Launch> {
        Self::from(|name| std::env::var(name).ok())
    }

    pub fn from(get: impl Fn(&str) -> Option<String>) -> Result<Launch> {
        for (launcher, rank, size, local) in VARIABLES {
            let Some(r) = get(rank) else { continue };
            let number = |name: &str, v: Option<String>| -> Result<Option<u32>> {
                v.map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|_| Error::usage(format!("{name}={v} is not a rank number")))
                })
                .transpose()
            };
            let rank_n = number(rank, Some(r))?.expect("given");
            let size_n = number(size, get(size))?.ok_or_else(|| {
                Error::usage(format!("{rank} is set but {size} is not: cannot tell how many ranks"))
            })?;
            if rank_n >= size_n {
                return Err(Error::usage(format!("{rank}={rank_n} is not below {size}={size_n}")));
            }
            let local_n = number(local, get(local))?.unwrap_or(0);
            return Ok(Launch { rank: rank_n, size: size_n, local_rank: local_n, launcher });
        }
        Err(Error::usage(
            "kvxfer launch is started by a launcher (mpirun, srun, mpiexec): none of OMPI_COMM_WORLD_RANK, PMI_RANK, \
             SLURM_PROCID is set; run kvxfer-send and kvxfer-recv by hand otherwise",
        ))
    }
}

/// Each rank's role: as given (one per rank), or by default every rank
/// sends but the last, which receives (one pair, or N prefill ranks into one
/// decode rank). One side must be a single rank: N to one or one to N.
pub fn roles(given: &[Role], size: u32) -> Result<Vec<Role>> {
    if size < 2 {
        return Err(Error::usage(format!(
            "kvxfer launch needs at least 2 ranks, one sending and one receiving, not {size}"
        )));
    }
    let roles = match given {
        [] => (0..size).map(|r| if r + 1 == size { Role::Receiver } else { Role::Sender }).collect(),
        r if r.len() == size as usize => r.to_vec(),
        r => {
            return Err(Error::usage(format!(
                "--roles names {} roles for {size} ranks: give one per rank (e.g. send,send,recv)",
                r.len()
            )))
        }
    };
    let senders = roles.iter().filter(|r| **r == Role::Sender).count();
    let receivers = roles.len() - senders;
    if senders == 0 || receivers == 0 || (senders > 1 && receivers > 1) {
        return Err(Error::usage(format!(
            "--roles gives {senders} senders and {receivers} receivers: kvxfer runs one sender and one receiver, \
             N senders into one receiver, or one sender to N receivers"
        )));
    }
    Ok(roles)
}

/// The roles of a P x D run: the P prefill ranks first, then the D
/// decode ranks (rank P + d is decode rank d).
pub fn tp_roles(given: &[Role], t: crate::plan::TpTopology, size: u32) -> Result<Vec<Role>> {
    if !given.is_empty() {
        return Err(Error::usage(
            "--roles with --prefill-tp/--decode-tp: the prefill ranks come first, then the decode ranks",
        ));
    }
    if size != t.prefill_tp + t.decode_tp {
        return Err(Error::usage(format!(
            "{t} runs {} ranks ({} prefill, then {} decode), not {size}",
            t.prefill_tp + t.decode_tp,
            t.prefill_tp,
            t.decode_tp
        )));
    }
    Ok((0..size).map(|r| if r < t.prefill_tp { Role::Sender } else { Role::Receiver }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_default_to_many_into_the_last_rank() {
        use Role::{Receiver as R, Sender as S};
        assert_eq!(roles(&[], 2).unwrap(), [S, R]);
        assert_eq!(roles(&[], 4).unwrap(), [S, S, S, R]);
        assert_eq!(roles(&[R, S, R], 3).unwrap(), [R, S, R]);
        for (given, size, why) in [
            (&[][..], 1, "at least 2 ranks"),
            (&[S, R][..], 3, "2 roles for 3 ranks"),
            (&[S, S][..], 2, "2 senders and 0 receivers"),
            (&[S, S, R, R][..], 4, "2 senders and 2 receivers"),
        ] {
            let e = roles(given, size).unwrap_err();
            assert!(e.message.contains(why), "{e}");
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn a_tp_run_puts_prefill_ranks_first() {
        use crate::plan::{KvLayout, TpTopology};
        use Role::{Receiver as R, Sender as S};
        let t = TpTopology { prefill_tp: 2, decode_tp: 4, layout: KvLayout::Hnd };
        assert_eq!(tp_roles(&[], t, 6).unwrap(), [S, S, R, R, R, R]);
        assert!(tp_roles(&[], t, 5)
            .unwrap_err()
            .message
            .contains("runs 6 ranks (2 prefill, then 4 decode), not 5"));
        assert!(tp_roles(&[S, R], t, 2).is_err());
    }

    #[test]
    fn each_launcher_is_read() {
        let ompi = [
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ];
        assert_eq!(
            Launch::from(env(&ompi)).unwrap(),
            Launch { rank: 1, size: 2, local_rank: 1, launcher: "Open MPI" }
        );
        let slurm = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")];
        let l = Launch::from(env(&slurm)).unwrap();
        assert_eq!((l.rank, l.size, l.local_rank, l.launcher), (0, 2, 0, "Slurm"));
        // mpirun inside a Slurm allocation: Open MPI's own numbering wins.
        let both = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ];
        assert_eq!(Launch::from(env(&both)).unwrap().rank, 1);
    }

    #[test]
    fn missing_or_bad_variables_are_refused() {
        assert!(Launch::from(env(&[])).unwrap_err().message.contains("none of OMPI_COMM_WORLD_RANK"));
        assert!(Launch::from(env(&[("PMI_RANK", "0")])).unwrap_err().message.contains("PMI_SIZE is not"));
        assert!(Launch::from(env(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")])).is_err());
        assert!(Launch::from(env(&[("PMI_RANK", "2"), ("PMI_SIZE", "2")])).is_err());
    }
}
