//! One RDM endpoint and what it needs (fabric, domain, address vector,
//! completion queue, registered memory), with the headers' static inline
//! helpers (fi_domain, fi_send, fi_write, fi_cq_read, ...) written out over
//! the ops tables they wrap.

use super::lib::{Ofi, API};
use super::sys;
use crate::error::{Error, Result};
use std::ffi::{c_void, CStr, CString};
use std::ptr::null_mut;

/// `FI_ADDR_UNSPEC`: any source.
const ANY_ADDR: sys::fi_addr_t = u64::MAX;

/// Where a buffer lives, for registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iface {
    Host,
    Cuda(i32),
}

/// What the endpoint must do, turned into fi_getinfo hints.
pub struct Wanted<'a> {
    pub provider: Option<&'a str>,
    pub rma: bool,
    pub hmem: bool,
    /// Ask for writes that complete only once their data is at the target.
    pub delivery_complete: bool,
    /// Ask for sends ordered after earlier writes (FI_ORDER_SAW).
    pub send_after_write: bool,
    /// The address the control connection left from: a provider that moves
    /// data over IP (tcp, sockets) is asked for that interface first, so
    /// that the data takes the control connection's way (loopback for
    /// `kvxfer pair`), as kvxfer's own tcp transport does.
    pub source: Option<std::net::IpAddr>,
}

/// Providers whose endpoints are IP sockets on some interface.
fn over_ip(provider: &str) -> bool {
    provider.split(';').any(|p| p.eq_ignore_ascii_case("tcp") || p.eq_ignore_ascii_case("sockets"))
}

/// What fi_getinfo chose.
#[derive(Clone, Debug)]
pub struct Chosen {
    pub provider: String,
    pub fabric: String,
    pub domain: String,
    pub provider_version: String,
    pub mr_mode: i32,
    pub delivery_complete: bool,
    /// Whether waits sleep in the provider's wait object rather than spin:
    /// where the kernel's sockets move the bytes, a spinning poller takes
    /// the cores the kernel needs (both sides spin on a small host).
    pub sleeps: bool,
}

pub struct Endpoint {
    pub ofi: &'static Ofi,
    pub chosen: Chosen,
    info: *mut sys::fi_info,
    fabric: *mut sys::fid_fabric,
    domain: *mut sys::fid_domain,
    av: *mut sys::fid_av,
    cq: *mut sys::fid_cq,
    ep: *mut sys::fid_ep,
    mrs: Vec<*mut sys::fid_mr>,
}

// SAFETY: libfabric objects of a domain opened FI_THREAD_DOMAIN are used by
// one thread at a time: the one that owns this Endpoint.
unsafe impl Send for Endpoint {}

/// One finished operation.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub context: *mut c_void,
    pub tag: u64,
    pub len: usize,
}

/// A registered region: its local descriptor and the key a peer uses.
#[derive(Clone, Copy)]
pub struct Region {
    pub desc: *mut c_void,
    pub key: u64,
}

fn text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libfabric's strings are NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Members of anonymous enums in the headers (fi_eq.h's control commands,
/// fi_errno.h's codes), which bindgen cannot name.
const FI_ENABLE: i32 = 6;
const FI_EAVAIL: isize = 259;

/// Calls an op of a table, or fails naming it where the provider left it
/// out. Used inside `unsafe`: the table comes from the provider and lives as
/// long as its object; the arguments follow the op's C signature.
macro_rules! op {
    ($ofi:expr, $table:expr, $name:ident, $doing:expr, $($arg:expr),*) => {{
        match (*$table).$name {
            Some(f) => $ofi.check(f($($arg),*) as isize, $doing),
            None => Err(Error::run(format!("libfabric: the provider has no {}", stringify!($name)))),
        }
    }};
}

impl Endpoint {
    pub fn open(ofi: &'static Ofi, want: &Wanted) -> Result<Endpoint> {
        let mut info = Self::getinfo(ofi, want, None)?;
        // SAFETY: a valid fi_info from fi_getinfo; replaced by another only
        // after it is freed.
        unsafe {
            if let Some(ip) = want.source.filter(|_| over_ip(&text((*(*info).fabric_attr).prov_name))) {
                if let Ok(on_ip) = Self::getinfo(ofi, want, Some(ip)) {
                    (ofi.freeinfo)(info);
                    info = on_ip;
                }
            }
        }
        let mut e = Endpoint {
            ofi,
            chosen: Self::chosen(info, want),
            info,
            fabric: null_mut(),
            domain: null_mut(),
            av: null_mut(),
            cq: null_mut(),
            ep: null_mut(),
            mrs: Vec::new(),
        };
        // SAFETY: info is a valid fi_info from fi_getinfo; each object is
        // opened from its parent and closed in reverse order in Drop.
        unsafe {
            ofi.check(
                (ofi.fabric)((*info).fabric_attr, &mut e.fabric, null_mut()) as isize,
                "opening the fabric",
            )?;
            op!(
                ofi,
                (*e.fabric).ops,
                domain,
                "opening the domain",
                e.fabric,
                info,
                &mut e.domain,
                null_mut()
            )?;
            let mut cq_attr: sys::fi_cq_attr = std::mem::zeroed();
            cq_attr.format = sys::fi_cq_format::FI_CQ_FORMAT_TAGGED;
            cq_attr.size = 4096;
            // A provider without a wait object gets a queue that is only polled.
            let waits = [sys::fi_wait_obj::FI_WAIT_UNSPEC, sys::fi_wait_obj::FI_WAIT_NONE];
            let mut opened = Ok(());
            for wait in &waits[usize::from(!e.chosen.sleeps)..] {
                cq_attr.wait_obj = *wait;
                opened = op!(
                    ofi,
                    (*e.domain).ops,
                    cq_open,
                    "opening the completion queue",
                    e.domain,
                    &mut cq_attr,
                    &mut e.cq,
                    null_mut()
                );
                if opened.is_ok() {
                    break;
                }
            }
            opened?;
            e.chosen.sleeps = cq_attr.wait_obj != sys::fi_wait_obj::FI_WAIT_NONE;
            let mut av_attr: sys::fi_av_attr = std::mem::zeroed();
            av_attr.type_ = sys::fi_av_type::FI_AV_TABLE;
            op!(
                ofi,
                (*e.domain).ops,
                av_open,
                "opening the address vector",
                e.domain,
                &mut av_attr,
                &mut e.av,
                null_mut()
            )?;
            op!(
                ofi,
                (*e.domain).ops,
                endpoint,
                "opening the endpoint",
                e.domain,
                info,
                &mut e.ep,
                null_mut()
            )?;
            let ep_fid = &mut (*e.ep).fid as *mut sys::fid;
            let bind = |what: *mut sys::fid, flags: u64, doing: &str| {
                op!(ofi, (*ep_fid).ops, bind, doing, ep_fid, what, flags)
            };
            bind(&mut (*e.cq).fid, (sys::FI_TRANSMIT | sys::FI_RECV) as u64, "binding the completion queue")?;
            bind(&mut (*e.av).fid, 0, "binding the address vector")?;
            op!(ofi, (*ep_fid).ops, control, "enabling the endpoint", ep_fid, FI_ENABLE, null_mut())?;
        }
        Ok(e)
    }

    /// The providers' offers for `want`; with `source`, only those bound to
    /// that local address (FI_SOURCE).
    fn getinfo(ofi: &Ofi, want: &Wanted, source: Option<std::net::IpAddr>) -> Result<*mut sys::fi_info> {
        let node = source.map(|ip| CString::new(ip.to_string()).expect("an address has no NUL"));
        // SAFETY: fi_dupinfo(NULL) is fi_allocinfo; the hints are freed below,
        // their strings allocated with malloc as fi_freeinfo expects.
        unsafe {
            let hints = (ofi.dupinfo)(std::ptr::null());
            if hints.is_null() {
                return Err(Error::run("libfabric: cannot allocate hints"));
            }
            let mut caps = (sys::FI_TAGGED | sys::FI_SEND | sys::FI_RECV) as u64;
            if want.rma {
                caps |=
                    (sys::FI_RMA | sys::FI_READ | sys::FI_WRITE | sys::FI_REMOTE_READ | sys::FI_REMOTE_WRITE)
                        as u64;
            }
            if want.hmem {
                caps |= sys::FI_HMEM;
            }
            (*hints).caps = caps;
            // Contexts are fi_context2 structs of ours, as providers may ask.
            (*hints).mode = sys::FI_CONTEXT | sys::FI_CONTEXT2;
            (*(*hints).ep_attr).type_ = sys::fi_ep_type::FI_EP_RDM;
            let d = &mut *(*hints).domain_attr;
            d.mr_mode =
                (sys::FI_MR_LOCAL | sys::FI_MR_VIRT_ADDR | sys::FI_MR_ALLOCATED | sys::FI_MR_PROV_KEY) as i32;
            if want.hmem {
                d.mr_mode |= sys::FI_MR_HMEM as i32;
            }
            d.threading = sys::fi_threading::FI_THREAD_DOMAIN;
            if want.delivery_complete {
                (*(*hints).tx_attr).op_flags = sys::FI_DELIVERY_COMPLETE as u64;
            }
            if want.send_after_write {
                (*(*hints).tx_attr).msg_order = sys::FI_ORDER_SAW as u64;
            }
            if let Some(p) = want.provider {
                let c = CString::new(p).map_err(|_| Error::usage("--ofi-provider: no NUL bytes"))?;
                (*(*hints).fabric_attr).prov_name = libc::strdup(c.as_ptr());
            }
            let mut info = null_mut();
            let (node_ptr, flags) = match &node {
                Some(n) => (n.as_ptr(), sys::FI_SOURCE),
                None => (std::ptr::null(), 0),
            };
            let rc = (ofi.getinfo)(API, node_ptr, std::ptr::null(), flags, hints, &mut info);
            // Providers set up at their first fi_getinfo, and shm may take
            // SIGINT and SIGTERM again: kvxfer's handlers go back (lib.rs).
            crate::signals::install();
            (ofi.freeinfo)(hints);
            if rc != 0 || info.is_null() {
                let what = match (want.provider, want.hmem) {
                    (Some(p), true) => format!("provider '{p}' with FI_HMEM (GPU memory)"),
                    (Some(p), false) => format!("provider '{p}'"),
                    (None, true) => "any provider with FI_HMEM (GPU memory)".into(),
                    (None, false) => "any provider".into(),
                };
                return Err(Error::run(format!(
                    "libfabric {} ({}) offers no {what} for reliable datagram endpoints with tagged messages{}: {}",
                    ofi.version,
                    ofi.path,
                    if want.rma { " and RMA" } else { "" },
                    ofi.error(rc as isize)
                )));
            }
            Ok(info)
        }
    }

    /// The providers that offer what `want` asks (provider left open), by
    /// name, as a run would find them: the same fi_getinfo hints.
    pub fn offered(ofi: &Ofi, want: &Wanted) -> Vec<String> {
        let Ok(info) = Self::getinfo(ofi, want, None) else { return Vec::new() };
        let mut names = Vec::new();
        // SAFETY: a valid list from fi_getinfo, walked once and freed once.
        unsafe {
            let mut at = info;
            while !at.is_null() {
                let name = text((*(*at).fabric_attr).prov_name);
                if !names.contains(&name) {
                    names.push(name);
                }
                at = (*at).next;
            }
            (ofi.freeinfo)(info);
        }
        names
    }

    fn chosen(info: *mut sys::fi_info, want: &Wanted) -> Chosen {
        // SAFETY: a valid fi_info from fi_getinfo.
        unsafe {
            let f = &*(*info).fabric_attr;
            let d = &*(*info).domain_attr;
            Chosen {
                provider: text(f.prov_name),
                fabric: text(f.name),
                domain: text(d.name),
                provider_version: format!("{}.{}", f.prov_version >> 16, f.prov_version & 0xffff),
                mr_mode: d.mr_mode,
                delivery_complete: want.delivery_complete,
                sleeps: over_sockets(&text(f.prov_name)),
            }
        }
    }

    /// The shared-memory file behind an shm endpoint ("fi_shm://PID:0:1" is
    /// /dev/shm/PID:0:1), as shm_unlink names it; None for other providers.
    pub fn shm_file(&self) -> Option<CString> {
        let name = self.name().ok()?;
        let name = name.split(|b| *b == 0).next()?.strip_prefix(b"fi_shm://")?;
        CString::new([b"/", name].concat()).ok()
    }

    /// This endpoint's address, for the peer's address vector.
    pub fn name(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        let mut len = buf.len();
        // SAFETY: ep and its cm table are live; buf holds len bytes.
        unsafe {
            let fid = &mut (*self.ep).fid as *mut sys::fid;
            op!(
                self.ofi,
                (*self.ep).cm,
                getname,
                "reading the endpoint's address",
                fid,
                buf.as_mut_ptr() as *mut c_void,
                &mut len
            )?;
        }
        buf.truncate(len);
        Ok(buf)
    }

    /// Adds the peer's address; returns its handle.
    pub fn insert(&self, name: &[u8]) -> Result<sys::fi_addr_t> {
        let mut addr: sys::fi_addr_t = 0;
        // SAFETY: av is live; name holds one address of the endpoint's format.
        let n = unsafe {
            match (*(*self.av).ops).insert {
                Some(f) => f(self.av, name.as_ptr() as *const c_void, 1, &mut addr, 0, null_mut()),
                None => return Err(Error::run("libfabric: the provider has no av insert")),
            }
        };
        if n != 1 {
            return Err(Error::run(format!(
                "libfabric: inserting the peer's address: {}",
                self.ofi.error(n as isize)
            )));
        }
        Ok(addr)
    }

    /// Registers `len` bytes at `base` for local use and the peer's RMA.
    pub fn register(&mut self, base: *mut u8, len: usize, iface: Iface, key: u64) -> Result<Region> {
        let access = (sys::FI_SEND
            | sys::FI_RECV
            | sys::FI_READ
            | sys::FI_WRITE
            | sys::FI_REMOTE_READ
            | sys::FI_REMOTE_WRITE) as u64;
        let iov = libc::iovec { iov_base: base as *mut c_void, iov_len: len };
        let mut mr: *mut sys::fid_mr = null_mut();
        // SAFETY: the attr points at a live iovec; the region outlives the MR (closed in Drop first).
        unsafe {
            let mut attr: sys::fi_mr_attr = std::mem::zeroed();
            attr.mr_iov = &iov as *const libc::iovec as *const sys::iovec;
            attr.iov_count = 1;
            attr.access = access;
            attr.requested_key = key;
            if let Iface::Cuda(device) = iface {
                attr.iface = sys::fi_hmem_iface::FI_HMEM_CUDA;
                attr.device.cuda = device;
            }
            let doing = match iface {
                Iface::Host => "registering host memory".to_string(),
                Iface::Cuda(d) => format!(
                    "registering GPU {d}'s memory (FI_HMEM_CUDA; provider {}, libfabric {} at {}: a build without \
                     CUDA support cannot, AWS's libfabric with efa can)",
                    self.chosen.provider, self.ofi.version, self.ofi.path
                ),
            };
            // cuMemAlloc memory is device-only; saying so is what lets shm
            // move it by CUDA IPC (smr_select_proto wants the flag on the
            // MR); without it shm copies through host bounce buffers.
            let flags = match iface {
                Iface::Host => 0,
                Iface::Cuda(_) => sys::FI_HMEM_DEVICE_ONLY,
            };
            op!(self.ofi, (*self.domain).mr, regattr, &doing, &mut (*self.domain).fid, &attr, flags, &mut mr)
                .map_err(|e| if iface == Iface::Host { e } else { Error::usage(e.message) })?;
            self.mrs.push(mr);
            Ok(Region { desc: (*mr).mem_desc, key: (*mr).key })
        }
    }

    /// Whether the peer addresses RMA by virtual address or by offset.
    pub fn virtual_addresses(&self) -> bool {
        self.chosen.mr_mode & sys::FI_MR_VIRT_ADDR as i32 != 0
    }

    /// Posts a tagged send; false if the provider asks to retry later.
    pub fn tsend(
        &self,
        buf: *const u8,
        len: usize,
        desc: *mut c_void,
        to: sys::fi_addr_t,
        tag: u64,
        ctx: *mut c_void,
    ) -> Result<bool> {
        // SAFETY: buf lies in a registered region that outlives the operation.
        let rc = unsafe {
            call((*self.ep).tagged, |t| t.send)?(self.ep, buf as *const c_void, len, desc, to, tag, ctx)
        };
        self.posted(rc, "posting a tagged send")
    }

    /// Posts a tagged receive of any request's message of `tag`'s kind.
    pub fn trecv(
        &self,
        buf: *mut u8,
        len: usize,
        desc: *mut c_void,
        tag: u64,
        ignore: u64,
        ctx: *mut c_void,
    ) -> Result<bool> {
        // SAFETY: as tsend.
        let rc = unsafe {
            call((*self.ep).tagged, |t| t.recv)?(
                self.ep,
                buf as *mut c_void,
                len,
                desc,
                ANY_ADDR,
                tag,
                ignore,
                ctx,
            )
        };
        self.posted(rc, "posting a tagged receive")
    }

    /// Posts an RMA write of `len` bytes to the peer's `addr` under `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        buf: *const u8,
        len: usize,
        desc: *mut c_void,
        to: sys::fi_addr_t,
        addr: u64,
        key: u64,
        ctx: *mut c_void,
    ) -> Result<bool> {
        let mut desc = desc;
        let iov = libc::iovec { iov_base: buf as *mut c_void, iov_len: len };
        let rma = sys::fi_rma_iov { addr, len, key };
        let msg = sys::fi_msg_rma {
            msg_iov: &iov as *const libc::iovec as *const sys::iovec,
            desc: &mut desc,
            iov_count: 1,
            addr: to,
            rma_iov: &rma,
            rma_iov_count: 1,
            context: ctx,
            data: 0,
        };
        let mut flags = sys::FI_COMPLETION as u64;
        if self.chosen.delivery_complete {
            flags |= sys::FI_DELIVERY_COMPLETE as u64;
        }
        // SAFETY: msg and what it points at live through the call; the data region outlives the operation.
        let rc = unsafe { call((*self.ep).rma, |r| r.writemsg)?(self.ep, &msg, flags) };
        self.posted(rc, "posting an RMA write")
    }

    /// Posts an RMA read of `len` bytes from the peer's `addr` under `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &self,
        buf: *mut u8,
        len: usize,
        desc: *mut c_void,
        from: sys::fi_addr_t,
        addr: u64,
        key: u64,
        ctx: *mut c_void,
    ) -> Result<bool> {
        // SAFETY: as write.
        let rc = unsafe {
            call((*self.ep).rma, |r| r.read)?(self.ep, buf as *mut c_void, len, desc, from, addr, key, ctx)
        };
        self.posted(rc, "posting an RMA read")
    }

    fn posted(&self, rc: isize, doing: &str) -> Result<bool> {
        if rc == -(sys::FI_EAGAIN as isize) {
            return Ok(false);
        }
        self.ofi.check(rc, doing).map(|_| true)
    }

    /// Reads finished operations into `out`: context, tag and length (of a
    /// receive); an operation that failed is an error with the provider's reason.
    /// With `sleep_ms`, where the endpoint sleeps (`Chosen::sleeps`), waits
    /// up to that long in the provider's wait object for the first one.
    pub fn completions(
        &self,
        out: &mut Vec<Finished>,
        watchdog: &Watchdog,
        sleep_ms: Option<i32>,
    ) -> Result<()> {
        let _inside = watchdog.enter();
        self.read_completions(out, sleep_ms.filter(|_| self.chosen.sleeps))
    }

    fn read_completions(&self, out: &mut Vec<Finished>, sleep_ms: Option<i32>) -> Result<()> {
        // SAFETY: fi_cq_tagged_entry is plain data; zero is a valid value.
        let mut entries: [sys::fi_cq_tagged_entry; 64] = unsafe { std::mem::zeroed() };
        let (buf, count) = (entries.as_mut_ptr() as *mut c_void, entries.len());
        // SAFETY: cq is live; entries holds 64 tagged-format entries.
        let n = unsafe {
            match sleep_ms {
                Some(ms) => call((*self.cq).ops, |c| c.sread)?(self.cq, buf, count, std::ptr::null(), ms),
                None => call((*self.cq).ops, |c| c.read)?(self.cq, buf, count),
            }
        };
        if n > 0 {
            out.extend(entries[..n as usize].iter().map(|e| Finished {
                context: e.op_context,
                tag: e.tag,
                len: e.len,
            }));
            return Ok(());
        }
        // Nothing yet; a sleep that ran out says so with either code.
        if n == -(sys::FI_EAGAIN as isize) || n == -(sys::FI_ETIMEDOUT as isize) {
            return Ok(());
        }
        if n == -FI_EAVAIL {
            return Err(self.failed_operation());
        }
        self.ofi.check(n, "reading the completion queue")
    }

    fn failed_operation(&self) -> Error {
        // SAFETY: cq is live; the entry is zeroed, as fi_cq_readerr expects.
        unsafe {
            let mut e: sys::fi_cq_err_entry = std::mem::zeroed();
            let read = call((*self.cq).ops, |c| c.readerr).map(|f| f(self.cq, &mut e, 0));
            if !matches!(read, Ok(1)) {
                return Error::run("libfabric: an operation failed and its error cannot be read");
            }
            let detail = match (*(*self.cq).ops).strerror {
                Some(f) => text(f(self.cq, e.prov_errno, e.err_data, null_mut(), 0)),
                None => String::new(),
            };
            let err = Error::run(format!(
                "libfabric: an operation failed: {}; provider {}: {detail} ({})",
                self.ofi.error(-(e.err as isize)),
                self.chosen.provider,
                e.prov_errno
            ));
            // A peer gone mid-transfer is a lost connection, not a fault here.
            match e.err as u32 {
                x if x == sys::FI_ECONNRESET || x == sys::FI_ECONNREFUSED || x == sys::FI_EHOSTUNREACH => {
                    Error::connection_lost(err.message)
                }
                _ => err,
            }
        }
    }
}

/// Whether a provider (or a layered stack, "tcp;ofi_rxm") moves its bytes
/// through the kernel's sockets.
pub fn over_sockets(provider: &str) -> bool {
    provider.split(';').any(|p| matches!(p, "tcp" | "sockets" | "udp"))
}

/// A function of an ops table, or an error where the provider left it out.
unsafe fn call<T, F>(table: *mut T, pick: impl FnOnce(&T) -> Option<F>) -> Result<F> {
    pick(&*table).ok_or_else(|| Error::run("libfabric: the provider lacks an operation kvxfer needs"))
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: each object was opened by this Endpoint and is closed once,
        // children before parents.
        unsafe {
            let close = |fid: *mut sys::fid| {
                if !fid.is_null() {
                    if let Some(f) = (*(*fid).ops).close {
                        f(fid);
                    }
                }
            };
            if !self.ep.is_null() {
                close(&mut (*self.ep).fid);
            }
            for mr in self.mrs.drain(..) {
                close(&mut (*mr).fid);
            }
            if !self.av.is_null() {
                close(&mut (*self.av).fid);
            }
            if !self.cq.is_null() {
                close(&mut (*self.cq).fid);
            }
            if !self.domain.is_null() {
                close(&mut (*self.domain).fid);
            }
            if !self.fabric.is_null() {
                close(&mut (*self.fabric).fid);
            }
            (self.ofi.freeinfo)(self.info);
        }
    }
}

/// Ends the process when a libfabric call has not returned within `limit`.
/// A provider can spin forever inside a call: shm's completion queue read,
/// and its posting calls (fi_writemsg, fi_tsend), wait on a lock in memory
/// it shares with the peer, and a peer stopped while holding it never lets
/// go. Every call that can wait on the peer runs under `enter`. No deadline
/// of ours can interrupt that call, so a thread of our own ends the run,
/// with the reason, without the exit handlers (libfabric's own would wait
/// on the same lock).
pub struct Watchdog {
    entered_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Removes the shared-memory file of an endpoint that is not closed (its
/// provider would remove it in close): the memory stays mapped for whoever
/// maps it, and /dev/shm does not keep it after the process.
pub fn remove_shm_file(file: Option<&CString>) {
    if let Some(f) = file {
        // SAFETY: a NUL-terminated name; failure (already gone) is harmless.
        unsafe { libc::shm_unlink(f.as_ptr()) };
    }
}

/// Marks a libfabric call in progress until dropped.
pub struct Inside<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Watchdog {
    /// `shm_file`: removed before the process ends (`remove_shm_file`).
    pub fn start(limit: std::time::Duration, what: String, shm_file: Option<CString>) -> Watchdog {
        use std::sync::atomic::Ordering::Relaxed;
        let entered_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watched = std::sync::Arc::downgrade(&entered_ms);
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let Some(entered) = watched.upgrade() else { return };
            let since = entered.load(Relaxed);
            if since != 0 && now_ms().saturating_sub(since) > limit.as_millis() as u64 {
                eprintln!(
                    "kvxfer: error: libfabric has not returned from a call (posting an operation or reading its \
                     completion queue) for {} s ({what}): the peer has stopped while holding state it shares with this \
                     process; giving up",
                    limit.as_secs()
                );
                remove_shm_file(shm_file.as_ref());
                // SAFETY: ends the process at once, skipping exit handlers that would hang.
                unsafe { libc::_exit(1) };
            }
        });
        Watchdog { entered_ms }
    }

    pub fn enter(&self) -> Inside<'_> {
        self.entered_ms.store(now_ms().max(1), std::sync::atomic::Ordering::Relaxed);
        Inside(&self.entered_ms)
    }
}

fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}
