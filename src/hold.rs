//! A test hook for the fault matrix (tests/fault_matrix.rs): with
//! `KVXFER_HOLD_AT=PHASE` a side stops at that phase of its run, says so on
//! stderr, and waits there (looking for signals) until the test kills,
//! stops or interrupts it; its peer is then in that phase's wait, which is
//! what the matrix checks. Unset, it costs one environment lookup per
//! phase.
//!
//! Phases: `handshake` (preamble answered, plan not yet sent or accepted),
//! `setup` (before the transport's setup), `transfer` (the sender after the
//! go of the second point's first measured request, the receiver after its
//! first message arrived), `verify` (the receiver before checking that
//! request).

use crate::error::Result;
use std::time::{Duration, Instant};

/// How long a hold lasts if nothing ends it: the run then goes on.
const LONGEST: Duration = Duration::from_secs(60);

/// The phase `KVXFER_HOLD_AT` names, if any.
fn asked() -> Option<String> {
    std::env::var("KVXFER_HOLD_AT").ok().filter(|p| !p.is_empty())
}

/// Holds here if `phase` is the one asked for, and `now` (the phase's own
/// condition: the request, the message) says it is the moment.
pub fn at(phase: &str, now: bool) -> Result<()> {
    if !now || asked().as_deref() != Some(phase) {
        return Ok(());
    }
    eprintln!("kvxfer: holding at {phase} (KVXFER_HOLD_AT, pid {})", std::process::id());
    let until = Instant::now() + LONGEST;
    while Instant::now() < until {
        crate::signals::check()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
