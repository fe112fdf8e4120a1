//! NVLinks between two GPUs, from NVML (libnvidia-ml.so.1, the driver's;
//! opened at run time, absent on machines without a GPU driver).

use super::Link;
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};

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

/// The NVLinks joining GPU `from` to GPU `to` (PCI bus ids), as one link:
/// the links that end at `to`, or, on NVSwitch systems (HGX), the links to
/// the switches where NVML says the two reach each other over NVLink.
pub fn between(from: &str, to: &str) -> Option<Link> {
    // SAFETY: loading NVML runs its initializers; the library stays loaded
    // for the symbols' lifetime below.
    let lib = unsafe { Library::new("libnvidia-ml.so.1") }.ok()?;
    // SAFETY: signatures as in nvml.h.
    unsafe {
        let init = lib.get::<unsafe extern "C" fn() -> c_int>(b"nvmlInit_v2").ok()?;
        let shutdown = lib.get::<unsafe extern "C" fn() -> c_int>(b"nvmlShutdown").ok()?;
        let by_bus = lib
            .get::<unsafe extern "C" fn(*const c_char, *mut Device) -> c_int>(
                b"nvmlDeviceGetHandleByPciBusId_v2",
            )
            .ok()?;
        let state = lib
            .get::<unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int>(b"nvmlDeviceGetNvLinkState")
            .ok()?;
        let remote = lib
            .get::<unsafe extern "C" fn(Device, c_uint, *mut PciInfo) -> c_int>(
                b"nvmlDeviceGetNvLinkRemotePciInfo_v2",
            )
            .ok()?;
        let cc = lib
            .get::<unsafe extern "C" fn(Device, *mut c_int, *mut c_int) -> c_int>(
                b"nvmlDeviceGetCudaComputeCapability",
            )
            .ok()?;
        let p2p = lib
            .get::<unsafe extern "C" fn(Device, Device, c_uint, *mut c_uint) -> c_int>(
                b"nvmlDeviceGetP2PStatus",
            )
            .ok()?;
        if init() != SUCCESS {
            return None;
        }
        let handle = |bus: &str| {
            let bus = CString::new(bus).ok()?;
            let mut dev: Device = std::ptr::null_mut();
            (by_bus(bus.as_ptr(), &mut dev) == SUCCESS).then_some(dev)
        };
        // (links ending at `peer`, links ending at a switch) of a GPU.
        let links = |dev: Device, peer: &str| {
            let (mut direct, mut switched) = (0u32, 0u32);
            for link in 0..MAX_LINKS {
                let mut on: c_uint = 0;
                let mut info: PciInfo = std::mem::zeroed();
                if state(dev, link, &mut on) != SUCCESS || on == 0 || remote(dev, link, &mut info) != SUCCESS
                {
                    continue;
                }
                let id = std::ffi::CStr::from_ptr(info.bus_id.as_ptr()).to_string_lossy();
                direct += same_bus_id(&id, peer) as u32;
                switched += is_switch(&id) as u32;
            }
            (direct, switched)
        };
        let result = (|| {
            let (a, b) = (handle(from)?, handle(to)?);
            let (mut major, mut minor) = (0, 0);
            if cc(a, &mut major, &mut minor) != SUCCESS {
                return None;
            }
            let per = per_link_gbps(major)?;
            let (direct, switched) = links(a, to);
            let (count, how) = if direct > 0 {
                (direct, format!("{direct} active NVLinks from {from} to {to}"))
            } else {
                // NVML_P2P_CAPS_INDEX_NVLINK = 3; NVML_P2P_STATUS_OK = 0.
                let mut status: c_uint = 1;
                let reach = p2p(a, b, 3, &mut status) == SUCCESS && status == 0;
                let count = if reach { switched.min(links(b, from).1) } else { 0 };
                (
                    count,
                    format!("{count} active NVLinks from each GPU to NVSwitches, peer-to-peer over NVLink"),
                )
            };
            (count > 0).then(|| Link {
                name: format!("NVLink x{count}"),
                peak_gbps: count as f64 * per,
                source: format!(
                    "NVML: {how}, x {per} GB/s per link per direction (compute capability {major}.{minor})"
                ),
            })
        })();
        shutdown();
        result
    }
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
    fn without_a_driver_there_is_no_nvlink_and_no_crash() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return; // a GPU machine: covered by the recorded runs instead
        }
        assert!(between("0000:07:00.0", "0000:06:00.0").is_none());
    }
}
