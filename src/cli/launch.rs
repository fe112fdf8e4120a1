//! `kvxfer launch`: one process of an mpirun or srun job, its role from its rank.

use super::*;

/// `kvxfer launch`: this process's role from the launcher's rank; the
/// receiver listens on the rendezvous port, the sender connects to it. Each
/// rank takes GPU `--device` + its rank on the node. The sender prints and
/// writes the results; the receiver stays quiet but holds the gate too.
pub(super) fn launch(a: &LaunchArgs) -> Result<()> {
    let me = crate::launch::Launch::from_env()?;
    let topology = a.run.model.topology();
    let roles = match topology {
        Some(t) => crate::launch::tp_roles(&a.roles, t, me.size),
        None => crate::launch::roles(&a.roles, me.size),
    };
    let roles = roles.map_err(|e| e.context(me.launcher))?;
    let receivers: Vec<usize> = (0..roles.len()).filter(|r| roles[*r] == Role::Receiver).collect();
    let senders = roles.len() - receivers.len();
    if !a.rendezvous.is_empty() && a.rendezvous.len() != receivers.len() {
        return Err(Error::usage(format!(
            "--rendezvous names {} addresses for {} receiving ranks: give one HOST:PORT per receiver, in rank order",
            a.rendezvous.len(),
            receivers.len()
        )));
    }
    let mut run = a.run.clone();
    run.memory.device += me.local_rank as usize;
    // Only receiving ranks listen: each on its rendezvous port, or any free one.
    let mine = receivers.iter().position(|r| *r == me.rank as usize);
    let listener = match mine {
        Some(k) => {
            let port = match a.rendezvous.get(k) {
                Some(rv) => net::split_host_port(rv)?.1,
                None => 0,
            };
            Some(net::listen(&format!("[::]:{port}"))?)
        }
        None => None,
    };
    // Without --rendezvous (the mpi feature), MPI tells the senders where to go.
    #[cfg(feature = "mpi")]
    let (_mpi, rendezvous) = match a.rendezvous.is_empty() {
        false => (None, a.rendezvous.clone()),
        true => mpi_boot::rendezvous(listener.as_ref()).map(|(b, rv)| (Some(b), rv))?,
    };
    #[cfg(not(feature = "mpi"))]
    let rendezvous = match a.rendezvous.is_empty() {
        false => a.rendezvous.clone(),
        true => return Err(Error::usage("--rendezvous HOST:PORT is needed (or build with --features mpi)")),
    };
    let Some(listener) = listener else {
        // Under different TP, prefill rank r feeds the decode ranks that read from it.
        let (connect, prefill_rank) = match topology {
            Some(t) => {
                let model = a.run.model.resolve()?.model;
                let readers = t.readers(&model, me.rank);
                (readers.iter().map(|&d| rendezvous[d as usize].clone()).collect(), Some(me.rank))
            }
            None => (rendezvous, None),
        };
        return send(&SendArgs {
            connect,
            bind: a.bind,
            prefill_rank,
            prefill_instances: 1,
            prefill_instance: 0,
            run,
        });
    };
    recv_on(
        listener,
        &RecvArgs {
            // A decode rank learns from its first sender how many prefill ranks feed it.
            senders: if topology.is_some() { 1 } else { senders as u32 },
            decode_rank: topology.map(|_| mine.expect("a receiving rank") as u32),
            // The gate holds on this side too.
            output: OutputArgs {
                quiet: true,
                csv: None,
                json: None,
                json_stream: false,
                ..run.output.clone()
            },
            ..RecvArgs::for_rank(&run, rendezvous[mine.expect("a receiving rank")].clone())
        },
    )
}
