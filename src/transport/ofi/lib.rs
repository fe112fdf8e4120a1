//! libfabric, opened at run time. It exports only a few functions, each at
//! several symbol versions, one per layout of its structs: plain dlsym gives
//! the newest, which would not match the 1.17 structs of `sys.rs`, so each
//! is looked up with dlvsym at the version those headers were built for.
//!
//! libfabric 1.17 to 1.22 and 2.x both load. 2.x keeps the FABRIC_1.x
//! symbol versions, converting to and from the 1.x structs, and kvxfer asks
//! fi_getinfo for API 1.17, so a 2.x library gives it 1.x semantics. What
//! 2.0 changed (its NEWS and man pages) and why kvxfer is clear of it:
//! - old MR modes (FI_MR_BASIC, FI_MR_SCALABLE, FI_LOCAL_MR) are deprecated:
//!   kvxfer asks for the FI_MR_* mode bits only (fabric.rs);
//! - FI_AV_MAP is deprecated: kvxfer opens FI_AV_TABLE;
//! - wait sets, poll sets and FI_WAIT_MUTEX_COND are gone: kvxfer waits on
//!   a completion queue's own wait object (FI_WAIT_UNSPEC) or polls it;
//! - FI_ORDER_NONE, FI_ORDER_STRICT and FI_ORDER_DATA are deprecated, and
//!   comp_order too: kvxfer asks only for FI_ORDER_SAW, which remains;
//! - fi_info structures must come from libfabric: kvxfer's hints come from
//!   fi_dupinfo(NULL) (what fi_allocinfo expands to);
//! - threading and progress models were simplified: FI_THREAD_DOMAIN and
//!   the provider's own progress model, which kvxfer uses, remain.
//!
//! One difference shows in the reports: 1.x serves RDM endpoints over tcp
//! through the ofi_rxm utility provider ("tcp;ofi_rxm"), 2.x with its tcp
//! provider alone ("tcp"). The version stated in the report is the
//! library's own (fi_version).

use super::sys;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

pub const DEFAULT_LIB: &str = "libfabric.so.1";

type GetInfo = unsafe extern "C" fn(
    u32,
    *const c_char,
    *const c_char,
    u64,
    *const sys::fi_info,
    *mut *mut sys::fi_info,
) -> c_int;
type FreeInfo = unsafe extern "C" fn(*mut sys::fi_info);
type DupInfo = unsafe extern "C" fn(*const sys::fi_info) -> *mut sys::fi_info;
type Fabric = unsafe extern "C" fn(*mut sys::fi_fabric_attr, *mut *mut sys::fid_fabric, *mut c_void) -> c_int;
type StrError = unsafe extern "C" fn(c_int) -> *const c_char;
type Version = unsafe extern "C" fn() -> u32;

/// The functions kvxfer calls by name; the rest are reached through ops tables.
pub struct Ofi {
    pub path: String,
    /// The library's own version, e.g. "1.17".
    pub version: String,
    pub getinfo: GetInfo,
    pub freeinfo: FreeInfo,
    pub dupinfo: DupInfo,
    pub fabric: Fabric,
    strerror: StrError,
}

/// Which libraries kvxfer drives: 1.x from the headers' minor on, and 2.x
/// (through its FABRIC_1.x symbols); a future major is not assumed to keep them.
fn supported(major: u32, minor: u32) -> bool {
    (major == 1 && minor >= sys::FI_MINOR_VERSION) || major == 2
}

/// The API version kvxfer asks for: that of the headers of `sys.rs`.
pub const API: u32 = (sys::FI_MAJOR_VERSION << 16) | sys::FI_MINOR_VERSION;

impl Ofi {
    /// Opens the library once per path; later calls share it.
    pub fn open(path: Option<&str>) -> Result<&'static Ofi> {
        static OPENED: OnceLock<Mutex<HashMap<String, &'static Ofi>>> = OnceLock::new();
        let path = path.unwrap_or(DEFAULT_LIB).to_string();
        let mut opened = OPENED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ofi) = opened.get(&path) {
            return Ok(ofi);
        }
        let ofi: &'static Ofi = Box::leak(Box::new(Self::load(&path)?));
        opened.insert(path, ofi);
        Ok(ofi)
    }

    fn load(path: &str) -> Result<Ofi> {
        let c_path = CString::new(path).map_err(|_| Error::usage("--ofi-lib: a path without NUL bytes"))?;
        // SAFETY: dlopen with a valid C string; the handle is never closed.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        // Its shm provider takes SIGINT and SIGTERM as it loads (and again
        // at fi_getinfo, see fabric.rs), to unlink its files and exit(1):
        // kvxfer's handlers go back, so that a signal ends the run as on
        // every transport, told to the peer, with exit 128 + the signal.
        crate::signals::install();
        if handle.is_null() {
            // SAFETY: dlerror returns a message for the failed dlopen, or null.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown".into()
            } else {
                unsafe { CStr::from_ptr(why) }.to_string_lossy()
            };
            // Exit 1, as a missing UCX or NCCL: the node lacks it, the command is fine.
            return Err(Error::run(format!(
                "cannot load libfabric ({path}): {why}; install it (Debian: apt-get install libfabric1) or give \
                 --ofi-lib PATH (AWS: /opt/amazon/efa/lib/libfabric.so.1)"
            )));
        }
        let symbol = |name: &str, version: &str| -> Result<*mut c_void> {
            let (n, v) = (CString::new(name).expect("name"), CString::new(version).expect("version"));
            // SAFETY: a live handle and valid C strings.
            let f = unsafe { libc::dlvsym(handle, n.as_ptr(), v.as_ptr()) };
            if f.is_null() {
                return Err(Error::usage(format!(
                    "{path} has no {name}@{version}: not a libfabric 1.x this build can drive"
                )));
            }
            Ok(f)
        };
        // SAFETY: each symbol has the C signature of its version, as declared above.
        unsafe {
            let version = std::mem::transmute::<*mut c_void, Version>(symbol("fi_version", "FABRIC_1.0")?);
            let v = version();
            if !supported(v >> 16, v & 0xffff) {
                return Err(Error::usage(format!(
                    "{path} is libfabric {}.{}: kvxfer drives 1.{} to 1.x and 2.x",
                    v >> 16,
                    v & 0xffff,
                    sys::FI_MINOR_VERSION
                )));
            }
            Ok(Ofi {
                path: path.to_string(),
                version: format!("{}.{}", v >> 16, v & 0xffff),
                getinfo: std::mem::transmute::<*mut c_void, GetInfo>(symbol("fi_getinfo", "FABRIC_1.3")?),
                freeinfo: std::mem::transmute::<*mut c_void, FreeInfo>(symbol("fi_freeinfo", "FABRIC_1.3")?),
                dupinfo: std::mem::transmute::<*mut c_void, DupInfo>(symbol("fi_dupinfo", "FABRIC_1.3")?),
                fabric: std::mem::transmute::<*mut c_void, Fabric>(symbol("fi_fabric", "FABRIC_1.1")?),
                strerror: std::mem::transmute::<*mut c_void, StrError>(symbol("fi_strerror", "FABRIC_1.0")?),
            })
        }
    }

    /// libfabric's words for a (negative or positive) error code.
    pub fn error(&self, code: isize) -> String {
        // SAFETY: fi_strerror returns a static string for any code.
        let s = unsafe { (self.strerror)(code.unsigned_abs() as c_int) };
        if s.is_null() {
            return format!("error {code}");
        }
        format!("{} ({code})", unsafe { CStr::from_ptr(s) }.to_string_lossy())
    }

    /// Turns a libfabric return code into a result, naming what was done.
    pub fn check(&self, code: isize, doing: &str) -> Result<()> {
        if code < 0 {
            return Err(Error::run(format!("libfabric: {doing}: {}", self.error(code))));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_x_from_the_headers_and_two_x_load_others_do_not() {
        assert!(super::supported(1, 17) && super::supported(1, 22));
        assert!(super::supported(2, 0) && super::supported(2, 3));
        assert!(!super::supported(1, 16) && !super::supported(3, 0) && !super::supported(0, 9));
    }
}
