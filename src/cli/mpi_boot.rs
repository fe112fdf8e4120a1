//! With the `mpi` feature, `kvxfer launch` needs no `--rendezvous`: the
//! receiving rank listens on a free port and MPI broadcasts its host:port.
//! MPI carries nothing else; the data goes over the chosen transport.

use crate::error::{Error, Result};
use mpi::traits::{Communicator, Root};
use std::net::TcpListener;

/// Keeps MPI initialized for the run; finalized when dropped.
pub struct Boot(#[allow(dead_code)] mpi::environment::Universe);

const ADDR_BYTES: usize = 320;

/// The receiver's address, from the receiving rank to every rank.
pub fn rendezvous(receiver_rank: u32, listener: Option<&TcpListener>) -> Result<(Boot, String)> {
    let universe = mpi::initialize().ok_or_else(|| Error::run("MPI was already initialized"))?;
    let world = universe.world();
    let mut buf = [0u8; ADDR_BYTES];
    if let Some(l) = listener {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let addr = format!("{host}:{}", l.local_addr()?.port());
        if addr.len() >= ADDR_BYTES {
            return Err(Error::run(format!("host name too long to broadcast: {host}")));
        }
        buf[..addr.len()].copy_from_slice(addr.as_bytes());
    }
    world.process_at_rank(receiver_rank as i32).broadcast_into(&mut buf[..]);
    let end = buf.iter().position(|b| *b == 0).unwrap_or(ADDR_BYTES);
    let addr = String::from_utf8_lossy(&buf[..end]).into_owned();
    Ok((Boot(universe), addr))
}
