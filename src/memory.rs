//! Transfer buffers: pageable host, pinned host or GPU memory behind one
//! type. One buffer per side, sized for the largest request of the plan and
//! reused by every sweep point, so memory is allocated and registered once.

use crate::env::meminfo_kib;
use crate::error::{Error, Result};
use crate::gpu::{pattern::PatternKernels, Device, DeviceMem, PinnedMem};
use crate::integrity::{self, Check};
use crate::plan::RequestLayout;
use crate::units::fmt_bytes;
use serde::{Deserialize, Serialize};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// Pageable host memory.
    #[default]
    Host,
    /// Page-locked host memory, registered with CUDA.
    Pinned,
    /// GPU memory (cuMemAlloc).
    Gpu,
}

impl MemoryKind {
    /// Whether the bytes live in host memory (counted against the host's RAM).
    pub fn on_host(self) -> bool {
        self != MemoryKind::Gpu
    }
}

crate::words::named_by_words!(MemoryKind, "memory", { Host => "host", Pinned => "pinned", Gpu => "gpu" | "cuda" | "device" });

/// What one side asks for: a kind of memory, and the GPU it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySpec {
    pub kind: MemoryKind,
    pub device: usize,
}

/// A side's transfer buffer.
pub struct Buffer {
    storage: Storage,
    /// The pattern kernels, for GPU memory.
    kernels: Option<PatternKernels>,
}

enum Storage {
    Host(HostMem),
    Pinned(PinnedMem),
    Gpu(DeviceMem),
}

impl Buffer {
    /// A buffer of `len` bytes for requests of up to `max_messages` messages.
    pub fn new(spec: MemorySpec, len: usize, max_messages: usize, timeout: Duration) -> Result<Buffer> {
        let storage = match spec.kind {
            MemoryKind::Host => Storage::Host(HostMem::new(len)?),
            MemoryKind::Pinned => Storage::Pinned(PinnedMem::new(&Device::open(spec.device)?, len)?),
            MemoryKind::Gpu => Storage::Gpu(DeviceMem::new(&Device::open(spec.device)?, len)?),
        };
        let kernels = match &storage {
            Storage::Gpu(mem) => Some(PatternKernels::load(&mem.device, max_messages, mem, timeout)?),
            _ => None,
        };
        Ok(Buffer { storage, kernels })
    }

    /// Faults every page of host memory in now, as a serving KV cache is
    /// allocated up front, so that no request pays for first touching its
    /// part of the buffer: conversations, whose regions and later turns
    /// reach bytes the warm-ups (first turns) never touched. Pinned and GPU
    /// memory are resident already.
    pub fn populate(&mut self) {
        if let Storage::Host(m) = &self.storage {
            let ptr = m.ptr.as_ptr().cast::<libc::c_void>();
            // SAFETY: the range is exactly our mapping; writing zeros over zeros.
            if unsafe { libc::madvise(ptr, m.len, libc::MADV_POPULATE_WRITE) } != 0 {
                for page in (0..m.len).step_by(4096) {
                    unsafe { m.ptr.as_ptr().add(page).write_volatile(0) };
                }
            }
        }
    }

    /// Host memory, without CUDA.
    pub fn host(len: usize) -> Result<Buffer> {
        Ok(Buffer { storage: Storage::Host(HostMem::new(len)?), kernels: None })
    }

    pub fn kind(&self) -> MemoryKind {
        match self.storage {
            Storage::Host(_) => MemoryKind::Host,
            Storage::Pinned(_) => MemoryKind::Pinned,
            Storage::Gpu(_) => MemoryKind::Gpu,
        }
    }

    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Host(m) => m.len,
            Storage::Pinned(m) => m.as_slice().len(),
            Storage::Gpu(m) => m.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, where the CPU can reach them (host and pinned memory).
    pub fn host_slice(&self) -> Option<&[u8]> {
        match &self.storage {
            Storage::Host(m) => Some(m.as_slice()),
            Storage::Pinned(m) => Some(m.as_slice()),
            Storage::Gpu(_) => None,
        }
    }

    pub fn host_slice_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.storage {
            Storage::Host(m) => Some(m.as_mut_slice()),
            Storage::Pinned(m) => Some(m.as_mut_slice()),
            Storage::Gpu(_) => None,
        }
    }

    pub fn gpu_mem(&self) -> Option<&DeviceMem> {
        match &self.storage {
            Storage::Gpu(m) => Some(m),
            _ => None,
        }
    }

    /// The GPU this memory belongs to (pinned memory: the one it was pinned with).
    pub fn device(&self) -> Option<&Arc<Device>> {
        match &self.storage {
            Storage::Host(_) => None,
            Storage::Pinned(m) => Some(m.device()),
            Storage::Gpu(m) => Some(&m.device),
        }
    }

    pub fn describe(&self) -> String {
        match &self.storage {
            Storage::Host(_) => "host memory".into(),
            Storage::Pinned(m) => format!("pinned host memory (registered with {})", m.device().describe()),
            Storage::Gpu(m) => m.device.describe(),
        }
    }

    /// Writes the pattern of `request` into the request's messages.
    pub fn fill(&mut self, layout: &RequestLayout, request: u64) -> Result<()> {
        if let (Storage::Gpu(mem), Some(k)) = (&self.storage, &self.kernels) {
            return k.fill(mem, layout, request);
        }
        integrity::fill(self.host_slice_mut().expect("host memory"), layout, request);
        Ok(())
    }

    /// Counts the bytes of the request that differ from its pattern.
    pub fn verify(&self, layout: &RequestLayout, request: u64) -> Result<Check> {
        if let (Storage::Gpu(mem), Some(k)) = (&self.storage, &self.kernels) {
            return k.verify(mem, layout, request);
        }
        Ok(integrity::verify(self.host_slice().expect("host memory"), layout, request))
    }

    /// Runs a trivial operation in this side's CUDA context and waits for
    /// it, so that the GPU last ran this context (see measure::RunConfig).
    pub fn settle_gpu(&self) -> Result<()> {
        match &self.kernels {
            Some(k) => k.settle(),
            None => Ok(()),
        }
    }

    /// Copies the byte ranges `(offset, len)` of this buffer out to `pool`
    /// and back, as P2pNccl spills a tensor past its kv_buffer_size to its
    /// pinned pool and decode later loads it (on a GPU: device to host, then
    /// host to device, each waited for). Returns both copies' times, ns;
    /// the bytes come back unchanged, so the request's check covers them.
    pub fn spill_round_trip(
        &mut self,
        pool: &mut SpillPool,
        ranges: &[(usize, usize)],
        deadline: std::time::Instant,
    ) -> Result<(u64, u64)> {
        let total: usize = ranges.iter().map(|r| r.1).sum();
        if total > pool.len() {
            return Err(Error::run("internal error: the spill pool is smaller than a request"));
        }
        let nanos = |t: std::time::Instant| t.elapsed().as_nanos() as u64;
        match (&self.storage, &mut pool.0) {
            (Storage::Gpu(mem), PoolMem::Pinned(pinned, stream)) => {
                let mut copy = |to_host: bool| -> Result<u64> {
                    let t = std::time::Instant::now();
                    let mut at = 0;
                    for &(offset, len) in ranges {
                        let host = pinned.as_mut_slice()[at..at + len].as_mut_ptr();
                        let dev = mem.ptr + offset as u64;
                        // SAFETY: both ranges lie inside their allocations, which
                        // outlive the wait below.
                        unsafe {
                            match to_host {
                                true => crate::gpu::copy_to_host_async(host, dev, len, stream)?,
                                false => crate::gpu::copy_to_device_async(dev, host, len, stream)?,
                            }
                        }
                        at += len;
                    }
                    stream.wait(deadline, "spilling KV to the pinned pool")?;
                    Ok(nanos(t))
                };
                Ok((copy(true)?, copy(false)?))
            }
            (_, PoolMem::Host(pool)) => {
                let host = self.host_slice_mut().expect("host memory");
                let t = std::time::Instant::now();
                let mut at = 0;
                for &(offset, len) in ranges {
                    pool[at..at + len].copy_from_slice(&host[offset..offset + len]);
                    at += len;
                }
                let out = nanos(t);
                let t = std::time::Instant::now();
                let mut at = 0;
                for &(offset, len) in ranges {
                    host[offset..offset + len].copy_from_slice(&pool[at..at + len]);
                    at += len;
                }
                Ok((out, nanos(t)))
            }
            _ => Err(Error::run("internal error: a spill pool for another kind of memory")),
        }
    }

    /// Flips one byte (the test-only corruption fault).
    pub fn flip_byte(&mut self, offset: usize) -> Result<()> {
        if let Storage::Gpu(mem) = &self.storage {
            let mut b = [0u8; 1];
            mem.download(offset, &mut b)?;
            b[0] ^= 0x5a;
            return mem.upload(offset, &b);
        }
        self.host_slice_mut().expect("host memory")[offset] ^= 0x5a;
        Ok(())
    }

    /// Test-only: copies `len` bytes from `from` over `to` (a message
    /// written at another's place).
    pub fn copy_within(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        if let Storage::Gpu(mem) = &self.storage {
            let mut b = vec![0u8; len];
            mem.download(from, &mut b)?;
            return mem.upload(to, &b);
        }
        self.host_slice_mut().expect("host memory").copy_within(from..from + len, to);
        Ok(())
    }
}

/// Anonymous mapped memory: page-aligned, zeroed lazily by the kernel.
struct HostMem {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned; access goes through &/&mut.
unsafe impl Send for HostMem {}
unsafe impl Sync for HostMem {}

impl HostMem {
    fn new(len: usize) -> Result<HostMem> {
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
        Ok(HostMem { ptr: NonNull::new(ptr.cast()).expect("mmap does not return null"), len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes and initialized (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
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
            "{what} need {} of host memory, more than this machine's {}; use shorter prompt lengths, a smaller model or fewer lanes (--concurrency)",
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

/// P2pNccl's pinned host pool, where received tensors past kv_buffer_size
/// go: a staging area as large as the largest request (one request spills
/// at a time here), its bytes copied for real; what the pool holds over
/// time is counted apart (measure::load).
pub struct SpillPool(PoolMem);

enum PoolMem {
    Host(Vec<u8>),
    Pinned(PinnedMem, crate::gpu::Stream),
}

impl SpillPool {
    /// A pool for `buf`'s spills: pinned and reached by copies for GPU
    /// memory, plain host memory otherwise.
    pub fn for_buffer(buf: &Buffer, len: usize) -> Result<SpillPool> {
        match &buf.storage {
            Storage::Gpu(mem) => {
                let pinned = PinnedMem::new(&mem.device, len)?;
                Ok(SpillPool(PoolMem::Pinned(pinned, crate::gpu::Stream::new(&mem.device)?)))
            }
            _ => Ok(SpillPool(PoolMem::Host(vec![0u8; len]))),
        }
    }

    fn len(&self) -> usize {
        match &self.0 {
            PoolMem::Host(v) => v.len(),
            PoolMem::Pinned(p, _) => p.as_slice().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        let mut b = Buffer::host(10_000).unwrap();
        assert_eq!((b.len(), b.kind()), (10_000, MemoryKind::Host));
        assert_eq!(b.host_slice().unwrap().as_ptr() as usize % 4096, 0);
        assert!(b.host_slice().unwrap().iter().all(|&x| x == 0));
        b.flip_byte(9_999).unwrap();
        assert_eq!(b.host_slice().unwrap()[9_999], 0x5a);
    }

    #[test]
    fn impossible_budgets_are_refused() {
        assert!(check_host_budget(u64::MAX / 2, "these buffers").is_err());
        assert!(check_host_budget(4096, "these buffers").is_ok());
    }
}
