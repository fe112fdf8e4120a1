//! The NCCL functions kvxfer calls, opened at run time. cudarc's loader looks
//! for libnccl.so but not libnccl.so.2 (NCCL's soname, and the only file the
//! pip wheel ships), so kvxfer opens the library itself: `--nccl-lib PATH`,
//! else libnccl.so.2, else libnccl.so.

use crate::error::{Error, Result};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};

/// A communicator handle, only ever made by `init_rank`.
#[derive(Clone, Copy)]
pub struct Comm(*mut c_void);

impl Comm {
    const NONE: Comm = Comm(std::ptr::null_mut());
}
pub const SUCCESS: c_int = 0;
pub const IN_PROGRESS: c_int = 7;
/// ncclUint8: counts are in bytes.
const UINT8: c_int = 1;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    pub internal: [u8; 128],
}

/// ncclConfig_t as of NCCL 2.14, the first with non-blocking communicators.
/// NCCL reads `size` bytes of it and defaults every later field, so this
/// prefix is valid for every newer NCCL.
#[repr(C)]
struct Config {
    size: usize,
    magic: u32,
    version: u32,
    blocking: c_int,
    cga_cluster_size: c_int,
    min_ctas: c_int,
    max_ctas: c_int,
    net_name: *const c_char,
}

const UNDEF_INT: c_int = c_int::MIN;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type RawComm = *mut c_void;
type CommInitRankConfig = unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int, *mut Config) -> c_int;
type CommGetAsyncError = unsafe extern "C" fn(RawComm, *mut c_int) -> c_int;
type CommAbort = unsafe extern "C" fn(RawComm) -> c_int;
type Send = unsafe extern "C" fn(*const c_void, usize, c_int, c_int, RawComm, *mut c_void) -> c_int;
type Recv = unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, RawComm, *mut c_void) -> c_int;
type Group = unsafe extern "C" fn() -> c_int;
type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type LastError = unsafe extern "C" fn(RawComm) -> *const c_char;

pub struct Nccl {
    pub path: String,
    pub version: String,
    get_unique_id: GetUniqueId,
    comm_init_rank_config: CommInitRankConfig,
    comm_get_async_error: CommGetAsyncError,
    comm_abort: CommAbort,
    send: Send,
    recv: Recv,
    group_start: Group,
    group_end: Group,
    error_string: ErrorString,
    last_error: Option<LastError>,
    _lib: Library,
}

const DEFAULT_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// libloading's message with the loader's own reason, which it keeps as the source.
fn dl_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(why) => why.to_string(),
        None => e.to_string(),
    }
}

impl Nccl {
    /// Loads NCCL once per process and keeps it: NCCL starts threads of its
    /// own (the bootstrap root of a unique id), which must outlive any handle.
    pub fn open(path: Option<&str>) -> Result<&'static Nccl> {
        static LOADED: std::sync::Mutex<Vec<(Option<String>, &'static Nccl)>> =
            std::sync::Mutex::new(Vec::new());
        let mut loaded = LOADED.lock().expect("no poisoned lock");
        let key = path.map(str::to_string);
        if let Some((_, nccl)) = loaded.iter().find(|(k, _)| *k == key) {
            return Ok(nccl);
        }
        let nccl: &'static Nccl = Box::leak(Box::new(Self::load(path)?));
        loaded.push((key, nccl));
        Ok(nccl)
    }

    fn load(path: Option<&str>) -> Result<Nccl> {
        let names: Vec<&str> = match path {
            Some(p) => vec![p],
            None => DEFAULT_NAMES.to_vec(),
        };
        let mut errors = Vec::new();
        for name in &names {
            // SAFETY: loading NCCL runs its initializers, which are sound.
            match unsafe { Library::new(*name) } {
                Ok(lib) => return Self::bind(lib, name),
                Err(e) => errors.push(dl_error(&e)),
            }
        }
        Err(Error::run(format!(
            "cannot load NCCL ({}): install libnccl2, or `pip install nvidia-nccl-cu13` and pass \
             --nccl-lib .../nvidia/nccl/lib/libnccl.so.2",
            errors.join("; ")
        )))
    }

    fn bind(lib: Library, path: &str) -> Result<Nccl> {
        fn sym<T: Copy>(lib: &Library, path: &str, name: &str) -> Result<T> {
            // SAFETY: the type matches NCCL's declaration of `name`.
            unsafe { lib.get::<T>(name.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| Error::run(format!("{path} is not a usable NCCL: {name}: {}", dl_error(&e))))
        }
        let get_version: GetVersion = sym(&lib, path, "ncclGetVersion")?;
        let mut code = 0;
        // SAFETY: writes one int.
        unsafe { get_version(&mut code) };
        let nccl = Nccl {
            path: path.to_string(),
            version: format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100),
            get_unique_id: sym(&lib, path, "ncclGetUniqueId")?,
            comm_init_rank_config: sym(&lib, path, "ncclCommInitRankConfig")?,
            comm_get_async_error: sym(&lib, path, "ncclCommGetAsyncError")?,
            comm_abort: sym(&lib, path, "ncclCommAbort")?,
            send: sym(&lib, path, "ncclSend")?,
            recv: sym(&lib, path, "ncclRecv")?,
            group_start: sym(&lib, path, "ncclGroupStart")?,
            group_end: sym(&lib, path, "ncclGroupEnd")?,
            error_string: sym(&lib, path, "ncclGetErrorString")?,
            last_error: sym(&lib, path, "ncclGetLastError").ok(),
            _lib: lib,
        };
        if code < 21400 {
            return Err(Error::run(format!(
                "{path} is NCCL {}; kvxfer needs 2.14 or newer (non-blocking communicators)",
                nccl.version
            )));
        }
        Ok(nccl)
    }

    /// An error for `code`, with NCCL's own last message where it has one.
    pub fn error(&self, code: c_int, comm: Comm, doing: &str) -> Error {
        // SAFETY: NCCL returns static strings.
        let text = unsafe { CStr::from_ptr((self.error_string)(code)) }.to_string_lossy().into_owned();
        let last = match self.last_error {
            // SAFETY: as above; a null comm asks for the thread's last error.
            Some(f) => unsafe { CStr::from_ptr(f(comm.0)) }.to_string_lossy().into_owned(),
            None => String::new(),
        };
        let detail = if last.is_empty() { String::new() } else { format!(" ({last})") };
        Error::run(format!("NCCL: {doing}: {text}{detail}"))
    }

    fn check(&self, code: c_int, comm: Comm, doing: &str) -> Result<c_int> {
        match code {
            SUCCESS | IN_PROGRESS => Ok(code),
            _ => Err(self.error(code, comm, doing)),
        }
    }

    pub fn unique_id(&self) -> Result<UniqueId> {
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: writes one UniqueId.
        self.check(unsafe { (self.get_unique_id)(&mut id) }, Comm::NONE, "creating the unique id")?;
        Ok(id)
    }

    /// Starts a communicator. A non-blocking one returns at once (poll
    /// `async_state` for its end); a blocking one returns when every rank
    /// has joined, which may be never.
    pub fn init_rank(&self, nranks: c_int, id: UniqueId, rank: c_int, blocking: bool) -> Result<Comm> {
        let mut config = Config {
            size: std::mem::size_of::<Config>(),
            magic: 0xcafe_beef,
            version: 21400,
            blocking: blocking as c_int,
            cga_cluster_size: UNDEF_INT,
            min_ctas: UNDEF_INT,
            max_ctas: UNDEF_INT,
            net_name: std::ptr::null(),
        };
        let mut comm: RawComm = std::ptr::null_mut();
        // SAFETY: comm and config are valid for the call; NCCL copies config.
        let code = unsafe { (self.comm_init_rank_config)(&mut comm, nranks, id, rank, &mut config) };
        self.check(code, Comm(comm), "starting the communicator")?;
        Ok(Comm(comm))
    }

    /// SUCCESS, IN_PROGRESS, or the communicator's error.
    pub fn async_state(&self, comm: Comm, doing: &str) -> Result<c_int> {
        let mut state = SUCCESS;
        // SAFETY: comm is live; writes one int.
        self.check(unsafe { (self.comm_get_async_error)(comm.0, &mut state) }, comm, doing)?;
        self.check(state, comm, doing)
    }

    /// # Safety
    /// `comm` is freed: it must not be used again.
    pub unsafe fn abort(&self, comm: Comm) {
        (self.comm_abort)(comm.0);
    }

    /// # Safety
    /// `buf` must hold `len` bytes of device memory until the stream is done.
    pub unsafe fn send(
        &self,
        buf: u64,
        len: usize,
        peer: c_int,
        comm: Comm,
        stream: *mut c_void,
    ) -> Result<c_int> {
        self.check((self.send)(buf as *const c_void, len, UINT8, peer, comm.0, stream), comm, "ncclSend")
    }

    /// # Safety
    /// As for `send`.
    pub unsafe fn recv(
        &self,
        buf: u64,
        len: usize,
        peer: c_int,
        comm: Comm,
        stream: *mut c_void,
    ) -> Result<c_int> {
        self.check((self.recv)(buf as *mut c_void, len, UINT8, peer, comm.0, stream), comm, "ncclRecv")
    }

    pub fn group_start(&self) -> Result<()> {
        // SAFETY: no arguments.
        self.check(unsafe { (self.group_start)() }, Comm::NONE, "ncclGroupStart").map(drop)
    }

    pub fn group_end(&self, comm: Comm) -> Result<c_int> {
        // SAFETY: no arguments.
        self.check(unsafe { (self.group_end)() }, comm, "ncclGroupEnd")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_2_14_layout() {
        // size_t, 2 x unsigned, 4 x int, const char*: 8 + 8 + 16 + 8 bytes.
        assert_eq!(std::mem::size_of::<Config>(), 40);
        assert_eq!(std::mem::size_of::<UniqueId>(), 128);
    }

    #[test]
    fn a_missing_library_is_named() {
        let err = Nccl::open(Some("/nonexistent/libnccl.so.2")).err().unwrap();
        assert!(
            Nccl::open(Some("/nonexistent/libnccl.so.2")).is_err(),
            "a failure is not cached as a success"
        );
        assert!(err.message.contains("/nonexistent/libnccl.so.2"), "{err}");
        assert!(err.message.contains("--nccl-lib"), "{err}");
    }
}
