//! The host clock both sides of one host share.

/// Nanoseconds of CLOCK_MONOTONIC: the same clock for every process of a
/// host, so two sides on one host compare their instants directly.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
