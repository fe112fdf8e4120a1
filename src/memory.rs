//! Transfer buffers. One buffer per side, sized for the largest request of the
//! plan and reused by every sweep point, so memory is registered once.

use crate::env::meminfo_kib;
use crate::error::{Error, Result};
use crate::units::fmt_bytes;
use serde::{Deserialize, Serialize};
use std::ptr::NonNull;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// Pageable host memory.
    Host,
}

impl std::fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemoryKind::Host => "host",
        })
    }
}

/// Anonymous mapped memory: page-aligned, zeroed lazily by the kernel.
pub struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its mapping; access goes through &/&mut.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    pub fn host(len: usize) -> Result<Buffer> {
        let len = len.max(1);
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::run(format!(
                "cannot allocate {} of host memory: {}",
                fmt_bytes(len as u64),
                std::io::Error::last_os_error()
            )));
        }
        // Advised before any page is touched, so faults bring huge pages where
        // the kernel allows them: copies through the TCP stack then miss the
        // TLB far less. Failure only costs speed.
        // SAFETY: the range is exactly our mapping.
        unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        Ok(Buffer { ptr: NonNull::new(ptr.cast()).expect("mmap does not return null"), len })
    }

    pub fn kind(&self) -> MemoryKind {
        MemoryKind::Host
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes and initialized (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `host`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Refuses a plan whose host buffers cannot fit in this machine's memory,
/// rather than letting the kernel kill the process halfway.
pub fn check_host_budget(bytes: u64, what: &str) -> Result<()> {
    let (Some(total), Some(avail)) = (meminfo_kib("MemTotal"), meminfo_kib("MemAvailable")) else {
        return Ok(());
    };
    let (total, avail) = (total * 1024, avail * 1024);
    if bytes > total {
        return Err(Error::usage(format!(
            "{what} need {} of host memory, more than this machine's {}; use shorter prompt lengths or a smaller model",
            fmt_bytes(bytes),
            fmt_bytes(total)
        )));
    }
    if bytes > avail {
        eprintln!(
            "kvxfer: warning: {what} need {} of host memory, {} is available now",
            fmt_bytes(bytes),
            fmt_bytes(avail)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        let mut b = Buffer::host(10_000).unwrap();
        assert_eq!(b.len(), 10_000);
        assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9_999] = 7;
        assert_eq!(b.as_slice()[9_999], 7);
    }

    #[test]
    fn impossible_budgets_are_refused() {
        assert!(check_host_budget(u64::MAX / 2, "these buffers").is_err());
        assert!(check_host_budget(4096, "these buffers").is_ok());
    }
}
