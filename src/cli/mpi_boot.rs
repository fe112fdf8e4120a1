//! With the `mpi` feature, `kvxfer launch` needs no `--rendezvous`: each
//! receiving rank listens on a free port and MPI gathers every receiver's
//! host:port to every rank. MPI carries nothing else; the data goes over
//! the chosen transport.

use crate::error::{Error, Result};
use mpi::traits::{Communicator, CommunicatorCollectives};
use std::net::TcpListener;

/// Keeps MPI initialized for the run; finalized when dropped.
pub struct Boot(#[allow(dead_code)] mpi::environment::Universe);

const ADDR_BYTES: usize = 320;

/// The receiving ranks' addresses, in rank order, on every rank.
pub fn rendezvous(listener: Option<&TcpListener>) -> Result<(Boot, Vec<String>)> {
    let universe = mpi::initialize().ok_or_else(|| Error::run("MPI was already initialized"))?;
    let world = universe.world();
    let mut mine = [0u8; ADDR_BYTES];
    if let Some(l) = listener {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let addr = format!("{host}:{}", l.local_addr()?.port());
        if addr.len() >= ADDR_BYTES {
            return Err(Error::run(format!("host name too long to send over MPI: {host}")));
        }
        mine[..addr.len()].copy_from_slice(addr.as_bytes());
    }
    let mut all = vec![0u8; ADDR_BYTES * world.size() as usize];
    world.all_gather_into(&mine[..], &mut all[..]);
    let addrs = all
        .chunks(ADDR_BYTES)
        .filter(|a| a[0] != 0)
        .map(|a| {
            let end = a.iter().position(|b| *b == 0).unwrap_or(ADDR_BYTES);
            String::from_utf8_lossy(&a[..end]).into_owned()
        })
        .collect();
    Ok((Boot(universe), addrs))
}
