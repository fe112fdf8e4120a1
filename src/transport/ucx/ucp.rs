//! The UCP calls kvxfer makes, over bindings generated from UCX's headers
//! (`sys.rs`, see scripts/gen-ucx-bindings.sh) and a library opened at run
//! time: `--ucx-lib PATH`, else libucp.so.0. Nothing links against UCX, so the
//! binaries start where it is absent and use a cluster's own build (CUDA, EFA)
//! where it is present.
//!
//! One `Node` is one side: a context, a worker driven by one thread at a
//! time, the side's buffer mapped for RMA, and an endpoint to the peer opened
//! in peer-failure mode so that a dead peer fails requests instead of hanging
//! them.

use super::sys;
use crate::error::{Error, Result};
use std::cell::RefCell;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicI8, Ordering::Relaxed};

pub use crate::transport::tag::Tag;

/// The loaded library and its version.
pub struct Ucp {
    lib: sys::UcpLib,
    pub path: String,
    pub version: String,
}

// SAFETY: UcpLib holds function pointers and the library handle only.
unsafe impl Sync for Ucp {}
unsafe impl Send for Ucp {}

const DEFAULT_LIB: &str = "libucp.so.0";

/// Fails the load when a function kvxfer calls is missing, instead of
/// panicking at the first call (the generated wrappers expect them all).
macro_rules! require {
    ($lib:expr, $path:expr, $($f:ident),+) => {
        $(if $lib.$f.is_err() {
            return Err(Error::run(format!(
                "{} has no {}: kvxfer needs UCX 1.13 or newer",
                $path,
                stringify!($f)
            )));
        })+
    };
}

impl Ucp {
    /// Loads UCX once per library path and keeps it for the process: both
    /// sides of a `pair` share it, and UCX's module loader expects to stay.
    pub fn open(path: Option<&str>) -> Result<&'static Ucp> {
        static LOADED: std::sync::Mutex<Vec<(String, &'static Ucp)>> = std::sync::Mutex::new(Vec::new());
        let path = path.unwrap_or(DEFAULT_LIB).to_string();
        let mut loaded = LOADED.lock().expect("no poisoned lock");
        if let Some((_, ucp)) = loaded.iter().find(|(k, _)| *k == path) {
            return Ok(ucp);
        }
        let ucp: &'static Ucp = Box::leak(Box::new(Self::load(&path)?));
        loaded.push((path, ucp));
        Ok(ucp)
    }

    fn load(path: &str) -> Result<Ucp> {
        // SAFETY: loading UCX runs its initializers, which are sound.
        let lib = unsafe { sys::UcpLib::new(path) }.map_err(|e| {
            let why = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or(e.to_string());
            Error::run(format!(
                "cannot load UCX ({why}): install libucx0 (apt-get install libucx0), or for GPU memory \
                 fetch a CUDA build with scripts/fetch-ucx-cuda.sh and pass --ucx-lib .../libucp.so.0"
            ))
        })?;
        require!(
            lib,
            path,
            ucp_get_version_string,
            ucs_status_string,
            ucp_config_read,
            ucp_config_release,
            ucp_init_version,
            ucp_cleanup,
            ucp_worker_create,
            ucp_worker_destroy,
            ucp_worker_progress,
            ucp_worker_get_address,
            ucp_worker_release_address,
            ucp_ep_create,
            ucp_ep_close_nbx,
            ucp_ep_flush_nbx,
            ucp_ep_print_info,
            ucp_mem_map,
            ucp_mem_unmap,
            ucp_rkey_pack,
            ucp_rkey_buffer_release,
            ucp_ep_rkey_unpack,
            ucp_rkey_destroy,
            ucp_put_nbx,
            ucp_get_nbx,
            ucp_tag_send_nbx,
            ucp_tag_recv_nbx,
            ucp_tag_recv_request_test,
            ucp_request_check_status,
            ucp_request_free
        );
        // SAFETY: returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(lib.ucp_get_version_string()) }.to_string_lossy().into_owned();
        Ok(Ucp { lib, path: path.to_string(), version })
    }

    fn describe(&self, status: sys::ucs_status_t::Type) -> String {
        // SAFETY: returns a static NUL-terminated string for any status.
        unsafe { CStr::from_ptr(self.lib.ucs_status_string(status)) }.to_string_lossy().into_owned()
    }

    fn check(&self, status: sys::ucs_status_t::Type, what: &str) -> Result<()> {
        match status {
            sys::ucs_status_t::UCS_OK => Ok(()),
            s => Err(Error::run(format!("UCX failed {what}: {} ({s})", self.describe(s)))),
        }
    }
}

/// Where a side's buffer lives, as UCX needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    Host,
    Cuda,
}

impl MemType {
    fn raw(self) -> sys::ucs_memory_type_t {
        match self {
            MemType::Host => sys::ucs_memory_type::UCS_MEMORY_TYPE_HOST,
            MemType::Cuda => sys::ucs_memory_type::UCS_MEMORY_TYPE_CUDA,
        }
    }
}

/// A request UCX handed back for an operation still under way; only a
/// `Node` makes one, and `Node::poll` frees it once it has finished.
#[derive(Clone, Copy)]
pub struct Request(*mut c_void);

/// An operation UCX accepted: finished at once, or a request to poll.
pub enum Op {
    Done,
    Pending(Request),
}

/// A data operation whose completion callback has run: its message index,
/// and for a receive the tag that matched and the length.
struct Finished {
    index: usize,
    status: sys::ucs_status_t::Type,
    req: *mut c_void,
    tag: Option<(Tag, usize)>,
}

thread_local! {
    /// Completions of data operations, pushed by UCX's callbacks. They run
    /// inside `ucp_worker_progress` on the thread driving the worker, so a
    /// thread-local queue needs no lock and finding one costs O(1), however
    /// many operations are in flight.
    static FINISHED: RefCell<Vec<Finished>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn on_sent(req: *mut c_void, status: sys::ucs_status_t::Type, user_data: *mut c_void) {
    let f = Finished { index: user_data as usize, status, req, tag: None };
    FINISHED.with(|q| q.borrow_mut().push(f));
}

unsafe extern "C" fn on_received(
    req: *mut c_void,
    status: sys::ucs_status_t::Type,
    info: *const sys::ucp_tag_recv_info_t,
    user_data: *mut c_void,
) {
    // SAFETY: UCX passes the matched message's info, valid during the call.
    let tag = (!info.is_null()).then(|| unsafe { ((*info).sender_tag, (*info).length) });
    let f = Finished { index: user_data as usize, status, req, tag };
    FINISHED.with(|q| q.borrow_mut().push(f));
}

/// The outcome of polling a request.
pub enum Poll {
    Busy,
    /// Finished; for a tag receive, with the sender's tag and the length.
    Done(Option<(Tag, usize)>),
}

/// One side: context, worker, mapped buffer and (once connected) the endpoint.
pub struct Node {
    ucp: &'static Ucp,
    context: sys::ucp_context_h,
    worker: sys::ucp_worker_h,
    memh: sys::ucp_mem_h,
    base: *mut c_void,
    len: usize,
    mem: MemType,
    ep: sys::ucp_ep_h,
    rkey: sys::ucp_rkey_h,
    /// Set by UCX's error callback when the endpoint to the peer failed.
    ep_status: Box<AtomicI8>,
    /// "sender" or "receiver", for messages.
    pub peer: &'static str,
    /// Set after a failed round: the node is then left as it is (see Drop).
    pub failed: bool,
}

// SAFETY: the worker is created single-threaded and the node is only ever
// used by one thread at a time (it moves with its transport).
unsafe impl Send for Node {}

unsafe extern "C" fn on_ep_error(arg: *mut c_void, _ep: sys::ucp_ep_h, status: sys::ucs_status_t::Type) {
    // SAFETY: arg is the node's boxed AtomicI8, which outlives the endpoint.
    unsafe { (*(arg as *const AtomicI8)).store(status, Relaxed) };
}

fn ptr_status(p: sys::ucs_status_ptr_t) -> Option<sys::ucs_status_t::Type> {
    // UCS_PTR_IS_ERR: error codes are small negative numbers cast to pointers.
    let err_floor = sys::ucs_status_t::UCS_ERR_LAST as isize as usize;
    ((p as usize) >= err_floor).then_some(p as isize as sys::ucs_status_t::Type)
}

impl Node {
    /// A context with tag and RMA features, one worker, and `len` bytes at
    /// `base` mapped for remote access.
    pub fn new(
        ucp: &'static Ucp,
        base: *mut c_void,
        len: usize,
        mem: MemType,
        peer: &'static str,
    ) -> Result<Node> {
        let mut config = std::ptr::null_mut();
        // SAFETY: reads UCX_* from the environment into a config UCX allocates.
        ucp.check(
            unsafe { ucp.lib.ucp_config_read(std::ptr::null(), std::ptr::null(), &mut config) },
            "reading its configuration (check the UCX_* variables)",
        )?;
        // SAFETY: params are zeroed but for the fields named in field_mask.
        let mut params: sys::ucp_params_t = unsafe { std::mem::zeroed() };
        params.field_mask = sys::ucp_params_field::UCP_PARAM_FIELD_FEATURES as u64;
        params.features = (sys::ucp_feature::UCP_FEATURE_TAG | sys::ucp_feature::UCP_FEATURE_RMA) as u64;
        let mut context = std::ptr::null_mut();
        // SAFETY: config came from ucp_config_read; context is written on success.
        let status = unsafe {
            ucp.lib.ucp_init_version(sys::UCP_API_MAJOR, sys::UCP_API_MINOR, &params, config, &mut context)
        };
        // SAFETY: released once, after its only use.
        unsafe { ucp.lib.ucp_config_release(config) };
        ucp.check(status, "initializing")?;
        let mut node = Node {
            ucp,
            context,
            worker: std::ptr::null_mut(),
            memh: std::ptr::null_mut(),
            base,
            len,
            mem,
            ep: std::ptr::null_mut(),
            rkey: std::ptr::null_mut(),
            ep_status: Box::new(AtomicI8::new(sys::ucs_status_t::UCS_OK)),
            peer,
            failed: false,
        };
        // SAFETY: as above, only thread_mode is set.
        let mut wp: sys::ucp_worker_params_t = unsafe { std::mem::zeroed() };
        wp.field_mask = sys::ucp_worker_params_field::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64;
        wp.thread_mode = sys::ucs_thread_mode_t::UCS_THREAD_MODE_SINGLE;
        // SAFETY: context is live; worker is written on success.
        ucp.check(
            unsafe { ucp.lib.ucp_worker_create(node.context, &wp, &mut node.worker) },
            "creating a worker",
        )?;
        // SAFETY: as above; address and length describe the side's buffer.
        let mut mp: sys::ucp_mem_map_params_t = unsafe { std::mem::zeroed() };
        mp.field_mask = (sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_ADDRESS
            | sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_LENGTH
            | sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE)
            as u64;
        mp.address = base;
        mp.length = len.max(1);
        mp.memory_type = mem.raw();
        // SAFETY: the buffer outlives the node (the transport is dropped first).
        let status = unsafe { ucp.lib.ucp_mem_map(node.context, &mp, &mut node.memh) };
        if status != sys::ucs_status_t::UCS_OK && mem == MemType::Cuda {
            return Err(Error::run(format!(
                "UCX {} ({}) cannot map GPU memory: {}. This UCX was built without CUDA; use a CUDA build \
                 (scripts/fetch-ucx-cuda.sh fetches one) with --ucx-lib",
                ucp.version,
                ucp.path,
                ucp.describe(status)
            )));
        }
        ucp.check(status, "mapping the buffer")?;
        Ok(node)
    }

    pub fn ucp(&self) -> &'static Ucp {
        self.ucp
    }

    /// The worker's address, for the peer's endpoint.
    pub fn address(&self) -> Result<Vec<u8>> {
        let (mut addr, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the worker is live; UCX allocates addr.
        self.ucp.check(
            unsafe { self.ucp.lib.ucp_worker_get_address(self.worker, &mut addr, &mut len) },
            "getting the worker address",
        )?;
        // SAFETY: addr points at len bytes until released just below.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec();
        // SAFETY: released once.
        unsafe { self.ucp.lib.ucp_worker_release_address(self.worker, addr) };
        Ok(bytes)
    }

    /// The key that lets the peer read and write this side's buffer.
    pub fn packed_rkey(&self) -> Result<Vec<u8>> {
        let (mut buf, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: memh is this context's mapping; UCX allocates buf.
        self.ucp.check(
            unsafe { self.ucp.lib.ucp_rkey_pack(self.context, self.memh, &mut buf, &mut len) },
            "packing the memory key",
        )?;
        // SAFETY: buf points at len bytes until released just below.
        let bytes = unsafe { std::slice::from_raw_parts(buf as *const u8, len) }.to_vec();
        // SAFETY: released once.
        unsafe { self.ucp.lib.ucp_rkey_buffer_release(buf) };
        Ok(bytes)
    }

    pub fn mem(&self) -> MemType {
        self.mem
    }

    pub fn base(&self) -> u64 {
        self.base as u64
    }

    /// Opens the endpoint to the peer's worker; with `peer_failure`, UCX
    /// watches the peer and fails requests once it is gone, but uses only
    /// transports able to do so.
    pub fn connect(&mut self, peer: &[u8], peer_failure: bool) -> Result<()> {
        // SAFETY: zeroed but for the fields named in field_mask.
        let mut ep: sys::ucp_ep_params_t = unsafe { std::mem::zeroed() };
        ep.field_mask = (sys::ucp_ep_params_field::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS
            | sys::ucp_ep_params_field::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE
            | sys::ucp_ep_params_field::UCP_EP_PARAM_FIELD_ERR_HANDLER) as u64;
        ep.address = peer.as_ptr() as *const sys::ucp_address_t;
        ep.err_mode = match peer_failure {
            true => sys::ucp_err_handling_mode_t::UCP_ERR_HANDLING_MODE_PEER,
            false => sys::ucp_err_handling_mode_t::UCP_ERR_HANDLING_MODE_NONE,
        };
        ep.err_handler = sys::ucp_err_handler {
            cb: Some(on_ep_error),
            arg: &*self.ep_status as *const AtomicI8 as *mut c_void,
        };
        // SAFETY: the address bytes came from the peer's ucp_worker_get_address.
        self.ucp.check(
            unsafe { self.ucp.lib.ucp_ep_create(self.worker, &ep, &mut self.ep) },
            "connecting to the peer's worker",
        )
    }

    /// Unpacks the peer's memory key, for put and get.
    pub fn use_remote_key(&mut self, packed: &[u8]) -> Result<()> {
        // SAFETY: the endpoint is open; packed came from the peer's ucp_rkey_pack.
        self.ucp.check(
            unsafe {
                self.ucp.lib.ucp_ep_rkey_unpack(self.ep, packed.as_ptr() as *const c_void, &mut self.rkey)
            },
            "unpacking the peer's memory key",
        )
    }

    /// The endpoint's failure, once UCX has reported one.
    pub fn peer_failure(&self) -> Option<String> {
        match self.ep_status.load(Relaxed) {
            sys::ucs_status_t::UCS_OK => None,
            s => Some(self.ucp.describe(s)),
        }
    }

    pub fn progress(&self) -> u32 {
        // SAFETY: the worker is live and used by this thread only.
        unsafe { self.ucp.lib.ucp_worker_progress(self.worker) }
    }

    fn params(&self, memory: bool) -> sys::ucp_request_param_t {
        // SAFETY: zeroed but for the fields named in op_attr_mask.
        let mut p: sys::ucp_request_param_t = unsafe { std::mem::zeroed() };
        if memory {
            // Naming the memory saves UCX a lookup of every pointer's type.
            p.op_attr_mask = sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_MEMORY_TYPE
                | sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_MEMH;
            p.memory_type = self.mem.raw();
            p.memh = self.memh;
        }
        p
    }

    fn accepted(&self, p: sys::ucs_status_ptr_t, what: &str) -> Result<Op> {
        if p.is_null() {
            return Ok(Op::Done);
        }
        match ptr_status(p) {
            Some(s) => Err(self.failure(s, what)),
            None => Ok(Op::Pending(Request(p))),
        }
    }

    fn failure(&self, status: sys::ucs_status_t::Type, what: &str) -> Error {
        use sys::ucs_status_t as st;
        let why = self.ucp.describe(status);
        // Statuses that say the peer or the path to it is gone, whether or
        // not the endpoint's error callback ran (it does not in mode none).
        let lost = matches!(
            status,
            st::UCS_ERR_UNREACHABLE | st::UCS_ERR_NOT_CONNECTED | st::UCS_ERR_CONNECTION_RESET
        ) || (st::UCS_ERR_LAST_ENDPOINT_FAILURE..=st::UCS_ERR_FIRST_LINK_FAILURE)
            .contains(&status);
        match lost || self.peer_failure().is_some() {
            true => Error::connection_lost(format!("UCX lost the {} while {what}: {why}", self.peer)),
            false => Error::run(format!("UCX failed {what}: {why} ({status})")),
        }
    }

    fn at(&self, offset: usize, len: usize) -> *mut c_void {
        assert!(offset + len <= self.len, "an operation outside the mapped buffer");
        // SAFETY: inside the mapping, just checked.
        unsafe { (self.base as *mut u8).add(offset) as *mut c_void }
    }

    /// Parameters of a data operation: its completion callback reports
    /// message `index` to `drain`.
    fn data_params(&self, index: usize) -> sys::ucp_request_param_t {
        let mut p = self.params(true);
        p.op_attr_mask |=
            sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_CALLBACK | sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_USER_DATA;
        p.cb.send = Some(on_sent);
        p.user_data = index as *mut c_void;
        p
    }

    /// Writes `len` bytes at `offset` of this buffer to `remote` in the peer's.
    pub fn put(&self, index: usize, offset: usize, len: usize, remote: u64) -> Result<Op> {
        let p = self.data_params(index);
        // SAFETY: the range is mapped; rkey is the peer's, for its mapped buffer.
        let r =
            unsafe { self.ucp.lib.ucp_put_nbx(self.ep, self.at(offset, len), len, remote, self.rkey, &p) };
        self.accepted(r, "posting a put")
    }

    /// Reads `len` bytes at `remote` of the peer's buffer into `offset` of this one.
    pub fn get(&self, index: usize, offset: usize, len: usize, remote: u64) -> Result<Op> {
        let p = self.data_params(index);
        // SAFETY: as for put.
        let r =
            unsafe { self.ucp.lib.ucp_get_nbx(self.ep, self.at(offset, len), len, remote, self.rkey, &p) };
        self.accepted(r, "posting a get")
    }

    /// Sends `len` bytes at `offset` of the buffer under `tag`.
    pub fn send(&self, index: usize, offset: usize, len: usize, tag: Tag) -> Result<Op> {
        let p = self.data_params(index);
        // SAFETY: the range is mapped and stays untouched until the op completes.
        let r = unsafe { self.ucp.lib.ucp_tag_send_nbx(self.ep, self.at(offset, len), len, tag, &p) };
        self.accepted(r, "posting a tagged send")
    }

    /// Receives into `len` bytes at `offset` the next message whose tag
    /// matches `tag` on the bits of `mask`; `drain` reports the tag.
    pub fn recv(&self, index: usize, offset: usize, len: usize, tag: Tag, mask: Tag) -> Result<()> {
        let mut p = self.data_params(index);
        p.cb.recv = Some(on_received);
        // Always through the callback, so that the matched tag is reported.
        p.op_attr_mask |= sys::ucp_op_attr_t::UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        // SAFETY: the range is mapped and not read until the receive completes.
        let r =
            unsafe { self.ucp.lib.ucp_tag_recv_nbx(self.worker, self.at(offset, len), len, tag, mask, &p) };
        self.accepted(r, "posting a tagged receive").map(drop)
    }

    /// Hands each data operation finished since the last call to `done`
    /// (message index, and a receive's tag and length), and frees it.
    pub fn drain(
        &self,
        what: &str,
        done: &mut dyn FnMut(usize, Option<(Tag, usize)>) -> Result<()>,
    ) -> Result<()> {
        let finished = FINISHED.with(|q| std::mem::take(&mut *q.borrow_mut()));
        let mut result = Ok(());
        for f in finished {
            // SAFETY: a finished request, freed once.
            unsafe { self.ucp.lib.ucp_request_free(f.req) };
            if result.is_ok() {
                result = match f.status {
                    sys::ucs_status_t::UCS_OK => done(f.index, f.tag),
                    status => Err(self.failure(status, what)),
                };
            }
        }
        result
    }

    /// Completes at the peer every put and get posted before it.
    pub fn flush(&self) -> Result<Op> {
        let p = self.params(false);
        // SAFETY: the endpoint is open.
        let r = unsafe { self.ucp.lib.ucp_ep_flush_nbx(self.ep, &p) };
        self.accepted(r, "flushing the endpoint")
    }

    /// A bodiless tagged message: the start and end signals.
    pub fn signal(&self, tag: Tag) -> Result<Op> {
        let p = self.params(false);
        // SAFETY: zero bytes are read from the (unused) pointer.
        let r = unsafe { self.ucp.lib.ucp_tag_send_nbx(self.ep, std::ptr::null(), 0, tag, &p) };
        self.accepted(r, "sending a signal")
    }

    /// Forgets completions left over from a failed round.
    pub fn clear_finished(&self) {
        let _ = self.drain("", &mut |_, _| Ok(()));
    }

    /// Waits for nothing: a receive of a bodiless signal matching `tag`/`mask`.
    pub fn recv_signal(&self, tag: Tag, mask: Tag) -> Result<Request> {
        let mut p = self.params(false);
        p.op_attr_mask |= sys::ucp_op_attr_t::UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        // SAFETY: a zero-length receive writes nothing.
        let r = unsafe { self.ucp.lib.ucp_tag_recv_nbx(self.worker, std::ptr::null_mut(), 0, tag, mask, &p) };
        match self.accepted(r, "posting a signal receive")? {
            Op::Pending(req) => Ok(req),
            Op::Done => Err(Error::run("UCX completed a receive it was asked to defer")),
        }
    }

    /// Polls a request; a finished one is freed. `tagged` reads back the
    /// receive's tag and length.
    pub fn poll(&self, req: Request, tagged: bool, what: &str) -> Result<Poll> {
        let mut info = sys::ucp_tag_recv_info_t { sender_tag: 0, length: 0 };
        // SAFETY: req is a live request of this worker.
        let status = unsafe {
            if tagged {
                self.ucp.lib.ucp_tag_recv_request_test(req.0, &mut info)
            } else {
                self.ucp.lib.ucp_request_check_status(req.0)
            }
        };
        if status == sys::ucs_status_t::UCS_INPROGRESS {
            return Ok(Poll::Busy);
        }
        // SAFETY: finished, so freed once here.
        unsafe { self.ucp.lib.ucp_request_free(req.0) };
        match status {
            sys::ucs_status_t::UCS_OK => Ok(Poll::Done(tagged.then_some((info.sender_tag, info.length)))),
            s => Err(self.failure(s, what)),
        }
    }

    /// UCX's own account of the protocol a pending request runs
    /// (ucp_request_query's info string), e.g. "{..} get* into cuda/GPU0
    /// from cuda/dev[0] length 67108864 software emulation sysv/memory ...".
    /// The lanes of an endpoint say what could carry an operation; this says
    /// what does. None where the library lacks the call.
    pub fn protocol_of(&self, req: Request) -> Option<String> {
        if self.ucp.lib.ucp_request_query.is_err() {
            return None;
        }
        let mut text = [0 as libc::c_char; 512];
        // SAFETY: zeroed but for the fields named in field_mask.
        let mut attr: sys::ucp_request_attr_t = unsafe { std::mem::zeroed() };
        attr.field_mask = (sys::ucp_req_attr_field::UCP_REQUEST_ATTR_FIELD_INFO_STRING
            | sys::ucp_req_attr_field::UCP_REQUEST_ATTR_FIELD_INFO_STRING_SIZE)
            as u64;
        attr.debug_string = text.as_mut_ptr();
        attr.debug_string_size = text.len();
        // SAFETY: req is a live request of this worker; UCX writes at most the size given.
        let status = unsafe { self.ucp.lib.ucp_request_query(req.0, &mut attr) };
        text[text.len() - 1] = 0;
        // SAFETY: NUL-terminated just above, whatever UCX wrote.
        let info = unsafe { CStr::from_ptr(text.as_ptr()) }.to_string_lossy().trim().to_string();
        (status == sys::ucs_status_t::UCS_OK && !info.is_empty()).then_some(info)
    }

    /// What `ucp_ep_print_info` says of the endpoint: its lanes and the
    /// transport and device of each.
    pub fn endpoint_report(&self) -> String {
        if self.ep.is_null() {
            return String::new();
        }
        // SAFETY: a live endpoint, printed into the stream given.
        printed(|f| unsafe { self.ucp.lib.ucp_ep_print_info(self.ep, f) })
    }

    /// What `ucp_context_print_info` says of the context: the memory
    /// domains and the transport resources (transport/device) it found.
    pub fn context_report(&self) -> String {
        let Ok(print) = self.ucp.lib.ucp_context_print_info.as_ref() else { return String::new() };
        // SAFETY: a live context, printed into the stream given.
        printed(|f| unsafe { print(self.context, f) })
    }

    /// Closes the endpoint without waiting on a peer that may be gone.
    fn close_endpoint(&mut self) {
        if self.ep.is_null() {
            return;
        }
        let mut p = self.params(false);
        p.op_attr_mask |= sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_FLAGS;
        p.flags = sys::ucp_ep_close_flags_t::UCP_EP_CLOSE_FLAG_FORCE;
        // SAFETY: the endpoint is open and closed once.
        let r = unsafe { self.ucp.lib.ucp_ep_close_nbx(self.ep, &p) };
        self.ep = std::ptr::null_mut();
        if !r.is_null() && ptr_status(r).is_none() {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while std::time::Instant::now() < until {
                self.progress();
                // SAFETY: r is the close request.
                if unsafe { self.ucp.lib.ucp_request_check_status(r) } != sys::ucs_status_t::UCS_INPROGRESS {
                    // SAFETY: finished, freed once.
                    unsafe { self.ucp.lib.ucp_request_free(r) };
                    break;
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // After a failed round UCX may hold operations to a dead peer that it
        // cannot tear down (Debian's UCX 1.13 aborts in ucp_worker_destroy on
        // a cma endpoint whose peer was killed mid-round): the process is
        // about to exit with the error, and the system reclaims it all.
        if self.failed {
            tracing::debug!("teardown: UCX worker left to the exit (a failed run)");
            return;
        }
        tracing::debug!("teardown: closing the UCX endpoint and worker");
        // SAFETY: each handle is released once, in the reverse order of creation.
        unsafe {
            if !self.rkey.is_null() {
                self.ucp.lib.ucp_rkey_destroy(self.rkey);
            }
            self.close_endpoint();
            if !self.memh.is_null() {
                self.ucp.lib.ucp_mem_unmap(self.context, self.memh);
            }
            if !self.worker.is_null() {
                self.ucp.lib.ucp_worker_destroy(self.worker);
            }
            self.ucp.lib.ucp_cleanup(self.context);
        }
    }
}

/// What a UCX print function writes, as text.
fn printed(print: impl FnOnce(*mut sys::FILE)) -> String {
    let (mut buf, mut len) = (std::ptr::null_mut::<libc::c_char>(), 0usize);
    // SAFETY: open_memstream gives a FILE writing into a malloc'd buffer,
    // valid after fclose until freed.
    unsafe {
        let f = libc::open_memstream(&mut buf, &mut len);
        if f.is_null() {
            return String::new();
        }
        print(f as *mut sys::FILE);
        libc::fclose(f);
        let text = String::from_utf8_lossy(std::slice::from_raw_parts(buf as *const u8, len)).into_owned();
        libc::free(buf as *mut c_void);
        text
    }
}

/// The transports/devices of a `ucp_context_print_info` report, from its
/// "resource N : md M dev D flags -- tcp/lo" lines.
pub fn resources(report: &str) -> Vec<String> {
    let mut out: Vec<String> = report
        .lines()
        .filter(|l| l.contains("resource"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .filter(|r| r.contains('/'))
        .collect();
    out.dedup();
    out
}

/// The resources UCX finds when it sets up as a run does (a context and
/// worker over a small host buffer): what `kvxfer doctor` reports.
pub fn context_resources(path: Option<&str>) -> Result<Vec<String>> {
    let ucp = Ucp::open(path)?;
    let mut buf = vec![0u8; 4096];
    let node = Node::new(ucp, buf.as_mut_ptr() as *mut c_void, buf.len(), MemType::Host, "doctor")?;
    let found = resources(&node.context_report());
    drop(node);
    drop(buf);
    Ok(found)
}

#[cfg(test)]
mod resource_tests {
    #[test]
    fn resources_from_a_context_report() {
        let report = "#\n# UCP context\n#\n#            md 0  :  self\n#            md 1  :  tcp\n\
                      #      resource 0  :  md 0  dev 0  flags -- self/memory\n\
                      #      resource 1  :  md 1  dev 1  flags -- tcp/lo\n\
                      #      resource 2  :  md 1  dev 2  flags -- tcp/eth0\n\
                      #      resource 3  :  md 4  dev 4  flags -- cuda_copy/cuda\n";
        assert_eq!(super::resources(report), ["self/memory", "tcp/lo", "tcp/eth0", "cuda_copy/cuda"]);
    }
}
