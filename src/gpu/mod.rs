//! CUDA through cudarc's driver API, loaded at run time: the binary starts on
//! machines without a GPU, and a missing driver is an error naming it.
//!
//! Only what a transfer benchmark needs: a device's primary context, streams,
//! timing events waited on with a deadline, device memory from cuMemAlloc (not
//! a stream-ordered pool: pool memory cannot be shared over CUDA IPC, which
//! UCX's cuda_ipc and NCCL's P2P/IPC rely on), pinned host memory, and the
//! integrity-pattern kernels and the emulated prefill's kernel.

pub mod pattern;
pub mod prefill;

use crate::error::{Error, Result};
use cudarc::driver::{result, sys, DriverError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn cuda(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::run(format!("CUDA: {what}: {e}"))
}

/// Loads the driver library and initializes it, once per process.
pub fn init() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver: libcuda.so.1 is not on this machine's library path \
                 (install the NVIDIA driver, or run where a GPU is; --memory host needs none)"
                .to_string());
        }
        result::init().map_err(|e| format!("the CUDA driver did not initialize: {e}"))
    })
    .clone()
    .map_err(Error::run)
}

/// The CUDA driver's version, as "13.0".
pub fn driver_version() -> Result<String> {
    init()?;
    let mut v = 0;
    // SAFETY: one int written by the initialized driver.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(cuda("asking the driver's version"))?;
    Ok(format!("{}.{}", v / 1000, v % 1000 / 10))
}

pub fn device_count() -> Result<usize> {
    init()?;
    Ok(result::device::get_count().map_err(cuda("counting devices"))? as usize)
}

/// One GPU, through its primary context (the one the CUDA runtime and thus
/// NCCL use too).
pub struct Device {
    pub ordinal: usize,
    pub name: String,
    pub pci_bus_id: String,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
}

// SAFETY: CUDA contexts may be used from any thread once made current there,
// which every method does first.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl Device {
    pub fn open(ordinal: usize) -> Result<Arc<Device>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::usage(format!(
                "there is no CUDA device {ordinal}: this machine has {count} (0 to {})",
                count.saturating_sub(1)
            )));
        }
        let dev = result::device::get(ordinal as i32).map_err(cuda("getting the device"))?;
        // SAFETY: dev comes from device::get.
        let ctx =
            unsafe { result::primary_ctx::retain(dev) }.map_err(cuda("retaining the primary context"))?;
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown".into());
        let mut bus = [0 as std::ffi::c_char; 32];
        // SAFETY: bus is a writable buffer of the length given.
        let pci_bus_id = match unsafe { sys::cuDeviceGetPCIBusId(bus.as_mut_ptr(), bus.len() as i32, dev) } {
            sys::CUresult::CUDA_SUCCESS => {
                // SAFETY: the driver wrote a NUL-terminated string.
                unsafe { std::ffi::CStr::from_ptr(bus.as_ptr()) }.to_string_lossy().into_owned()
            }
            _ => "unknown".into(),
        };
        let device = Device { ordinal, name, pci_bus_id, dev, ctx };
        device.bind()?;
        Ok(Arc::new(device))
    }

    /// Makes this device's context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: ctx is a retained primary context.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(cuda("making the context current"))
    }

    pub fn describe(&self) -> String {
        format!("GPU {} ({}, {})", self.ordinal, self.name, self.pci_bus_id)
    }

    /// Its memory, in bytes.
    pub fn total_memory(&self) -> Result<usize> {
        // SAFETY: dev came from cuDeviceGet in `open`.
        unsafe { result::device::total_mem(self.dev) }.map_err(cuda("asking the device's memory"))
    }

    /// One of the device's attributes (multiprocessors, L2 size, ...).
    pub fn attribute(&self, which: sys::CUdevice_attribute) -> Result<i32> {
        // SAFETY: dev came from cuDeviceGet in `open`.
        unsafe { result::device::get_attribute(self.dev, which) }.map_err(cuda("reading a device attribute"))
    }

    /// Waits, never past `deadline`, for the work queued so far on this
    /// context's legacy default stream, where libraries that call plain
    /// cudaMemcpy put it (and which waits for the context's blocking streams).
    pub fn fence(self: &Arc<Self>, deadline: Instant, what: &str) -> Result<()> {
        let done = Event::new(self)?;
        // SAFETY: a live event; the null stream is the context's legacy stream.
        unsafe { result::event::record(done.raw, std::ptr::null_mut()) }
            .map_err(cuda("recording an event"))?;
        done.wait(deadline, what)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: releases the retain made in `open`.
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

pub struct Stream {
    pub raw: sys::CUstream,
    device: Arc<Device>,
}

// SAFETY: a CUstream is usable from any thread with its context current.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

impl Stream {
    pub fn new(device: &Arc<Device>) -> Result<Stream> {
        device.bind()?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(cuda("creating a stream"))?;
        Ok(Stream { raw, device: device.clone() })
    }

    /// Waits for everything queued so far, bounded by `deadline`.
    pub fn wait(&self, deadline: Instant, what: &str) -> Result<()> {
        let done = Event::new(&self.device)?;
        done.record(self)?;
        done.wait(deadline, what)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: the stream was created in `new` and is destroyed once.
        let _ = unsafe { result::stream::destroy(self.raw) };
    }
}

/// A timing event.
pub struct Event {
    raw: sys::CUevent,
    device: Arc<Device>,
}

// SAFETY: as for streams.
unsafe impl Send for Event {}
unsafe impl Sync for Event {}

impl Event {
    pub fn new(device: &Arc<Device>) -> Result<Event> {
        device.bind()?;
        let raw =
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(cuda("creating an event"))?;
        Ok(Event { raw, device: device.clone() })
    }

    pub fn record(&self, stream: &Stream) -> Result<()> {
        // SAFETY: both handles are live.
        unsafe { result::event::record(self.raw, stream.raw) }.map_err(cuda("recording an event"))
    }

    pub fn is_done(&self) -> Result<bool> {
        // SAFETY: the event is live.
        match unsafe { result::event::query(self.raw) } {
            Ok(()) => Ok(true),
            Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => Ok(false),
            Err(e) => Err(cuda("waiting for the GPU")(e)),
        }
    }

    /// Polls until the work before this event is done; never past `deadline`.
    pub fn wait(&self, deadline: Instant, what: &str) -> Result<()> {
        self.wait_checking(deadline, what, || Ok(()))
    }

    /// As `wait`, also calling `check` between polls (NCCL's async errors).
    pub fn wait_checking(
        &self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let spin_until = Instant::now() + Duration::from_millis(2);
        loop {
            if self.is_done()? {
                return Ok(());
            }
            check()?;
            let now = Instant::now();
            if now > deadline {
                return Err(Error::run(format!("the GPU did not finish {what} before the deadline")));
            }
            if now < spin_until {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Nanoseconds from `start` to this event (both complete).
    pub fn since(&self, start: &Event) -> Result<u64> {
        // SAFETY: both events are live and recorded.
        let ms =
            unsafe { result::event::elapsed(start.raw, self.raw) }.map_err(cuda("reading event times"))?;
        Ok((ms as f64 * 1e6).round().max(0.0) as u64)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: destroyed once.
        let _ = unsafe { result::event::destroy(self.raw) };
    }
}

/// Device memory from cuMemAlloc.
pub struct DeviceMem {
    pub ptr: sys::CUdeviceptr,
    pub len: usize,
    pub device: Arc<Device>,
}

impl DeviceMem {
    pub fn new(device: &Arc<Device>, len: usize) -> Result<DeviceMem> {
        device.bind()?;
        // SAFETY: a plain allocation of len bytes (at least one).
        let ptr = unsafe { result::malloc_sync(len.max(1)) }.map_err(|e| {
            Error::run(format!(
                "cannot allocate {} on {}: {e}",
                crate::units::fmt_bytes(len as u64),
                device.describe()
            ))
        })?;
        Ok(DeviceMem { ptr, len, device: device.clone() })
    }

    /// Copies `src` to byte `offset` of this memory and waits.
    pub fn upload(&self, offset: usize, src: &[u8]) -> Result<()> {
        assert!(offset + src.len() <= self.len);
        self.device.bind()?;
        // SAFETY: the range lies inside the allocation.
        unsafe { result::memcpy_htod_sync(self.ptr + offset as u64, src) }.map_err(cuda("copying to the GPU"))
    }

    /// Copies bytes from `offset` of this memory into `dst` and waits.
    pub fn download(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        assert!(offset + dst.len() <= self.len);
        self.device.bind()?;
        // SAFETY: the range lies inside the allocation.
        unsafe { result::memcpy_dtoh_sync(dst, self.ptr + offset as u64) }
            .map_err(cuda("copying from the GPU"))
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: freed once; allocated by malloc_sync.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Page-locked host memory, pinned for every context (CU_MEMHOSTALLOC_PORTABLE),
/// not write-combined: the CPU reads it too (checks, sockets).
pub struct PinnedMem {
    ptr: *mut u8,
    len: usize,
    device: Arc<Device>,
}

// SAFETY: the memory is owned; access goes through &/&mut.
unsafe impl Send for PinnedMem {}
unsafe impl Sync for PinnedMem {}

impl PinnedMem {
    pub fn new(device: &Arc<Device>, len: usize) -> Result<PinnedMem> {
        device.bind()?;
        // SAFETY: allocation of len bytes; zeroed below before any read.
        let ptr = unsafe { result::malloc_host(len.max(1), sys::CU_MEMHOSTALLOC_PORTABLE) }.map_err(|e| {
            Error::run(format!("cannot pin {} of host memory: {e}", crate::units::fmt_bytes(len as u64)))
        })? as *mut u8;
        // SAFETY: ptr is valid for len bytes.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedMem { ptr, len, device: device.clone() })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid and initialized for len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; &mut self makes it unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }
}

impl Drop for PinnedMem {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: allocated by malloc_host, freed once.
        let _ = unsafe { result::free_host(self.ptr.cast()) };
    }
}

/// Enqueues a copy of `len` bytes from device memory to pinned host memory.
///
/// # Safety
/// Both ranges must stay valid until the stream has done the copy.
pub unsafe fn copy_to_host_async(
    dst: *mut u8,
    src: sys::CUdeviceptr,
    len: usize,
    stream: &Stream,
) -> Result<()> {
    sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, len, stream.raw).result().map_err(cuda("copying from the GPU"))
}

/// Enqueues a copy of `len` bytes from pinned host memory to device memory.
///
/// # Safety
/// Both ranges must stay valid until the stream has done the copy.
pub unsafe fn copy_to_device_async(
    dst: sys::CUdeviceptr,
    src: *const u8,
    len: usize,
    stream: &Stream,
) -> Result<()> {
    sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), len, stream.raw).result().map_err(cuda("copying to the GPU"))
}
