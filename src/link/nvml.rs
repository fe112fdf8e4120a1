//! NVLinks between two GPUs, from NVML (libnvidia-ml.so.1, the driver's;
//! opened at run time, absent on machines without a GPU driver).

use super::Link;
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::Mutex;

type Device = *mut c_void;
const SUCCESS: c_int = 0;
const MAX_LINKS: c_uint = 18;

/// nvmlPciInfo_t.
#[repr(C)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

/// GB/s per direction of one NVLink, by the GPU's compute capability:
/// P100 (6.0) NVLink 1, V100 (7.0) NVLink 2, A100 (8.0) 3, H100/H200 (9.0)
/// 4: 25 GB/s; B200 (10.0) NVLink 5: 50 GB/s.
fn per_link_gbps(major: c_int) -> Option<f64> {
    match major {
        6 => Some(20.0),
        7..=9 => Some(25.0),
        10 => Some(50.0),
        _ => None,
    }
}

/// "00000000:07:00.0" and "0000:07:00.0" name the same device.
fn same_bus_id(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        match s.split_once(':') {
            Some((domain, rest)) => format!("{:08x}:{rest}", u32::from_str_radix(domain, 16).unwrap_or(0)),
            None => s,
        }
    };
    norm(a) == norm(b)
}

/// An NVLink's far end: NVML names an NVSwitch port with an all-ones bus id.
fn is_switch(bus_id: &str) -> bool {
    bus_id.to_ascii_uppercase().starts_with("FFFFFFFF")
}

/// The NVML calls kvxfer makes, resolved from the driver's library.
struct Api {
    by_bus: unsafe extern "C" fn(*const c_char, *mut Device) -> c_int,
    state: unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int,
    remote: unsafe extern "C" fn(Device, c_uint, *mut PciInfo) -> c_int,
    cc: unsafe extern "C" fn(Device, *mut c_int, *mut c_int) -> c_int,
    p2p: unsafe extern "C" fn(Device, Device, c_uint, *mut c_uint) -> c_int,
    max_clock: unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int,
    bus_width: unsafe extern "C" fn(Device, *mut c_uint) -> c_int,
}

/// Runs `query` with NVML loaded and initialized, one query at a time in
/// the process: the pairs of a fan detect their links on parallel threads,
/// and a 2->1 run whose pairs raced through nvmlInit/nvmlShutdown found
/// NVLink for one pair and only PCIe for the other.
fn with_nvml<T>(query: impl FnOnce(&Api) -> Option<T>) -> Option<T> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: loading NVML runs its initializers; the library stays loaded
    // while the symbols taken from it are used, below.
    let lib = unsafe { Library::new("libnvidia-ml.so.1") }.ok()?;
    // SAFETY: signatures as in nvml.h.
    unsafe {
        let init = *lib.get::<unsafe extern "C" fn() -> c_int>(b"nvmlInit_v2").ok()?;
        let shutdown = *lib.get::<unsafe extern "C" fn() -> c_int>(b"nvmlShutdown").ok()?;
        let api = Api {
            by_bus: *lib.get(b"nvmlDeviceGetHandleByPciBusId_v2").ok()?,
            state: *lib.get(b"nvmlDeviceGetNvLinkState").ok()?,
            remote: *lib.get(b"nvmlDeviceGetNvLinkRemotePciInfo_v2").ok()?,
            cc: *lib.get(b"nvmlDeviceGetCudaComputeCapability").ok()?,
            p2p: *lib.get(b"nvmlDeviceGetP2PStatus").ok()?,
            max_clock: *lib.get(b"nvmlDeviceGetMaxClockInfo").ok()?,
            bus_width: *lib.get(b"nvmlDeviceGetMemoryBusWidth").ok()?,
        };
        if init() != SUCCESS {
            return None;
        }
        let result = query(&api);
        shutdown();
        result
    }
}

impl Api {
    fn handle(&self, bus: &str) -> Option<Device> {
        let bus = CString::new(bus).ok()?;
        let mut dev: Device = std::ptr::null_mut();
        // SAFETY: a NUL-terminated bus id and a handle to write.
        (unsafe { (self.by_bus)(bus.as_ptr(), &mut dev) } == SUCCESS).then_some(dev)
    }

    /// GB/s per direction of one of the GPU's NVLinks, and its compute capability.
    fn per_link(&self, dev: Device) -> Option<(f64, String)> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: a live handle and two ints to write.
        if unsafe { (self.cc)(dev, &mut major, &mut minor) } != SUCCESS {
            return None;
        }
        Some((per_link_gbps(major)?, format!("{major}.{minor}")))
    }

    /// A GPU's active NVLinks: (those ending at `peer`, those ending at a
    /// switch, all of them).
    fn links(&self, dev: Device, peer: &str) -> (u32, u32, u32) {
        let (mut direct, mut switched, mut all) = (0u32, 0u32, 0u32);
        for link in 0..MAX_LINKS {
            let mut on: c_uint = 0;
            // SAFETY: zeroed plain data, written by NVML.
            let mut info: PciInfo = unsafe { std::mem::zeroed() };
            // SAFETY: a live handle, a link index below NVML's maximum.
            let ok = unsafe {
                (self.state)(dev, link, &mut on) == SUCCESS
                    && on != 0
                    && (self.remote)(dev, link, &mut info) == SUCCESS
            };
            if !ok {
                continue;
            }
            // SAFETY: NVML writes a NUL-terminated bus id.
            let id = unsafe { std::ffi::CStr::from_ptr(info.bus_id.as_ptr()) }.to_string_lossy();
            direct += same_bus_id(&id, peer) as u32;
            switched += is_switch(&id) as u32;
            all += 1;
        }
        (direct, switched, all)
    }
}

/// The NVLinks joining GPU `from` to GPU `to` (PCI bus ids), as one link:
/// the links that end at `to`, or, on NVSwitch systems (HGX), the links to
/// the switches where NVML says the two reach each other over NVLink.
pub fn between(from: &str, to: &str) -> Option<Link> {
    with_nvml(|api| {
        let (a, b) = (api.handle(from)?, api.handle(to)?);
        let (per, cc) = api.per_link(a)?;
        let (direct, switched, _) = api.links(a, to);
        let (count, how) = if direct > 0 {
            (direct, format!("{direct} active NVLinks from {from} to {to}"))
        } else {
            // NVML_P2P_CAPS_INDEX_NVLINK = 3; NVML_P2P_STATUS_OK = 0.
            let mut status: c_uint = 1;
            // SAFETY: two live handles and a status to write.
            let reach = unsafe { (api.p2p)(a, b, 3, &mut status) } == SUCCESS && status == 0;
            let count = if reach { switched.min(api.links(b, from).1) } else { 0 };
            (count, format!("{count} active NVLinks from each GPU to NVSwitches, peer-to-peer over NVLink"))
        };
        (count > 0).then(|| Link {
            name: format!("NVLink x{count}"),
            peak_gbps: count as f64 * per,
            source: format!("NVML: {how}, x {per} GB/s per link per direction (compute capability {cc})"),
        })
    })
}

/// Every active NVLink of one GPU, as one link: the most a GPU can move
/// to and from all its NVLink peers together (a fan's hub).
pub fn all_links(bus: &str) -> Option<Link> {
    with_nvml(|api| {
        let dev = api.handle(bus)?;
        let (per, cc) = api.per_link(dev)?;
        let (_, _, count) = api.links(dev, "");
        (count > 0).then(|| Link {
            name: format!("NVLink x{count} (all of {bus})"),
            peak_gbps: count as f64 * per,
            source: format!(
                "NVML: {count} active NVLinks of {bus}, x {per} GB/s per link per direction (compute capability {cc})"
            ),
        })
    })
}

/// Copies within one GPU's memory: both sides on the same GPU cross no
/// link, only that memory, which a copy reads and writes once each. The
/// ceiling is half the memory's bandwidth: NVML's maximum memory clock x 2
/// transfers per clock (DDR, HBM) x bus width / 8, halved.
pub fn memory_copy(bus: &str) -> Option<Link> {
    with_nvml(|api| {
        let dev = api.handle(bus)?;
        let (mut mhz, mut bits): (c_uint, c_uint) = (0, 0);
        // NVML_CLOCK_MEM = 2.
        // SAFETY: a live handle and values to write.
        let ok = unsafe {
            (api.max_clock)(dev, 2, &mut mhz) == SUCCESS && (api.bus_width)(dev, &mut bits) == SUCCESS
        };
        (ok && mhz > 0 && bits > 0).then(|| {
            let memory_gbps = memory_gbps(mhz, bits);
            Link {
                name: format!("GPU memory of {bus} (copy within one GPU)"),
                peak_gbps: memory_gbps / 2.0,
                source: format!(
                    "NVML: max memory clock {mhz} MHz x 2 transfers per clock x {bits}-bit bus / 8 = {memory_gbps:.0} GB/s \
                     of memory bandwidth; a copy within the GPU reads and writes each byte: half of it"
                ),
            }
        })
    })
}

/// GB/s a GPU's memory moves at its maximum clock (double data rate).
fn memory_gbps(mhz: c_uint, bus_bits: c_uint) -> f64 {
    mhz as f64 * 1e6 * 2.0 * bus_bits as f64 / 8.0 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_compare_across_nvml_and_cuda_spellings() {
        assert!(same_bus_id("00000000:07:00.0", "0000:07:00.0"));
        assert!(!same_bus_id("00000000:07:00.0", "0000:06:00.0"));
        assert!(is_switch("FFFFFFFF:FF:FF.0") && !is_switch("00000000:07:00.0"));
        assert_eq!(per_link_gbps(9), Some(25.0));
        assert_eq!(std::mem::size_of::<PciInfo>(), 68);
    }

    #[test]
    fn memory_bandwidth_follows_clock_and_bus_width() {
        // The data sheets: H100 SXM 3.35 TB/s (2619 MHz, 5120 bits), A100
        // 40GB 1555 GB/s (1215 MHz, 5120 bits), H200 4.8 TB/s (3201 MHz, 6144 bits).
        assert!((memory_gbps(2619, 5120) - 3352.3).abs() < 0.1);
        assert!((memory_gbps(1215, 5120) - 1555.2).abs() < 0.1);
        assert!((memory_gbps(3201, 6144) - 4917.0).abs() < 0.5);
    }

    #[test]
    fn without_a_driver_there_is_no_nvlink_and_no_crash() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return; // a GPU machine: covered by the recorded runs instead
        }
        assert!(between("0000:07:00.0", "0000:06:00.0").is_none());
        assert!(memory_copy("0000:07:00.0").is_none());
        assert!(all_links("0000:07:00.0").is_none());
    }
}
