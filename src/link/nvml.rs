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

/// The NVLinks from GPU `from` that end at GPU `to` (PCI bus ids), as one link.
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
        if init() != SUCCESS {
            return None;
        }
        let result = (|| {
            let bus = CString::new(from).ok()?;
            let mut dev: Device = std::ptr::null_mut();
            if by_bus(bus.as_ptr(), &mut dev) != SUCCESS {
                return None;
            }
            let (mut major, mut minor) = (0, 0);
            if cc(dev, &mut major, &mut minor) != SUCCESS {
                return None;
            }
            let mut links = 0;
            for link in 0..MAX_LINKS {
                let mut on: c_uint = 0;
                if state(dev, link, &mut on) != SUCCESS || on == 0 {
                    continue;
                }
                let mut info: PciInfo = std::mem::zeroed();
                if remote(dev, link, &mut info) != SUCCESS {
                    continue;
                }
                let id = std::ffi::CStr::from_ptr(info.bus_id.as_ptr()).to_string_lossy();
                links += same_bus_id(&id, to) as u32;
            }
            let per = per_link_gbps(major)?;
            (links > 0).then(|| Link {
                name: format!("NVLink x{links}"),
                peak_gbps: links as f64 * per,
                source: format!(
                    "NVML: {links} active NVLinks from {from} to {to} x {per} GB/s per direction (compute capability \
                     {major}.{minor})"
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
