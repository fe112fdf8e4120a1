//! SIGINT, SIGTERM and SIGHUP stop a run the way a failure does: the
//! handler only notes the signal; every wait of the run looks at it (the
//! control connection's reads in slices of at most 100 ms, the engines
//! before each request, the data loops and GPU waits as they go) and ends
//! with `Error::interrupted`, which tells the peer "interrupted on HOST
//! (SIGINT)", keeps every point measured in the table, CSV and JSON, and
//! exits 128 + the signal. A second signal exits at once.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

/// The first signal received, 0 before any.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if RECEIVED.swap(sig, Relaxed) != 0 {
        // SAFETY: _exit is async-signal-safe; the operator asked twice.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP. Blocked calls
/// restart (SA_RESTART): the libraries kvxfer loads do not all expect EINTR.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with our handler; the handler only
        // touches an atomic and may call _exit.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Relaxed) {
        0 => None,
        sig => Some(sig),
    }
}

/// Fails once a signal has come: the run stops where it is.
pub fn check() -> Result<()> {
    match received() {
        None => Ok(()),
        Some(sig) => Err(Error::interrupted(sig)),
    }
}

/// The signal's name, as the operator sent it.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}
