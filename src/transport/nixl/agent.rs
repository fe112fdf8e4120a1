//! One NIXL agent and what it owns, over the C API: backends, registered
//! memory, prepared descriptor lists, transfer requests and the
//! notification map. Everything is released, in NIXL's order, when the
//! agent goes: transfers, prepared lists, registrations, then the agent.
//! An agent is driven by one thread at a time (NIXL's progress thread
//! aside), as vLLM's worker drives its own.

use super::lib::{check, status_words, Nixl};
use super::sys;
use crate::error::{Error, Result};
use std::ffi::{c_void, CStr, CString};
use std::ptr::null_mut;

/// Where registered memory lives, as NIXL names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mem {
    Dram,
    Vram,
}

impl Mem {
    fn raw(self) -> sys::nixl_capi_mem_type_t::Type {
        match self {
            Mem::Dram => sys::nixl_capi_mem_type_t::NIXL_CAPI_MEM_DRAM,
            Mem::Vram => sys::nixl_capi_mem_type_t::NIXL_CAPI_MEM_VRAM,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mem::Dram => "DRAM",
            Mem::Vram => "VRAM",
        }
    }
}

/// READ pulls from the peer (NixlConnector), WRITE pushes to it (NixlPushConnector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XferOp {
    Read,
    Write,
}

/// One descriptor: address, length, device id (the GPU for VRAM, 0 for DRAM).
pub type Desc = (usize, usize, u64);

/// A prepared descriptor list (`prep_xfer_dlist`), valid while its agent
/// is: the agent releases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepped(sys::nixl_capi_xfer_dlist_handle_t);

// SAFETY: a handle of an agent, used with it by one thread at a time.
unsafe impl Send for Prepped {}

/// A transfer request (`make_xfer_req`), released by `Agent::release`.
pub struct Xfer(sys::nixl_capi_xfer_req_t);

/// NIXL's own account of a finished transfer (`get_xfer_telemetry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Telemetry {
    pub post_us: u64,
    pub xfer_us: u64,
    pub bytes: u64,
    /// Descriptors after NIXL merged adjacent ones.
    pub descriptors: u64,
}

/// A plugin's memory types and its parameters with their defaults.
pub type PluginParams = (Vec<String>, Vec<(String, String)>);

/// A transfer's state after a post or a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    InProgress,
    Done,
}

pub struct Agent {
    nixl: &'static Nixl,
    raw: sys::nixl_capi_agent_t,
    pub name: String,
    backends: Vec<sys::nixl_capi_backend_t>,
    registered: Vec<sys::nixl_capi_reg_dlist_t>,
    prepped: Vec<sys::nixl_capi_xfer_dlist_handle_t>,
    notifs: sys::nixl_capi_notif_map_t,
    /// Per-transfer options, reused: notification and merging.
    opt: sys::nixl_capi_opt_args_t,
}

// SAFETY: the handles are used by one thread at a time (the agent moves
// with its transport); NIXL's own threads synchronise inside NIXL.
unsafe impl Send for Agent {}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::usage(format!("{what} '{s}' holds a NUL byte")))
}

impl Agent {
    /// An agent as vLLM's NixlConnector configures it: NIXL's progress
    /// thread on (unless `progress_thread` is false), no listener (metadata
    /// travels over kvxfer's control connection, as over vLLM's side
    /// channel), telemetry captured.
    pub fn new(nixl: &'static Nixl, name: &str, progress_thread: bool) -> Result<Agent> {
        let c_name = c_string(name, "agent name")?;
        let config = sys::nixl_capi_agent_config_t {
            enable_prog_thread: progress_thread,
            enable_listen_thread: false,
            listen_port: 0,
            thread_sync: sys::nixl_capi_thread_sync_t::NIXL_CAPI_THREAD_SYNC_NONE,
            num_workers: 1,
            pthr_delay_us: 0,
            lthr_delay_us: 100_000,
            capture_telemetry: true,
        };
        let f = nixl.lib.nixl_capi_create_configured_agent.as_ref().expect("checked at load");
        let mut raw = null_mut();
        // SAFETY: valid name and config; `raw` receives the agent.
        check(unsafe { f(c_name.as_ptr(), &config, &mut raw) }, || format!("creating agent {name}"))?;
        let mut agent = Agent {
            nixl,
            raw,
            name: name.to_string(),
            backends: Vec::new(),
            registered: Vec::new(),
            prepped: Vec::new(),
            notifs: null_mut(),
            opt: null_mut(),
        };
        let lib = &nixl.lib;
        // SAFETY: out-pointers for objects the agent frees in Drop.
        unsafe {
            check(lib.nixl_capi_create_notif_map(&mut agent.notifs), || {
                "creating a notification map".into()
            })?;
            check(lib.nixl_capi_create_opt_args(&mut agent.opt), || "creating transfer options".into())?;
        }
        Ok(agent)
    }

    fn lib(&self) -> &sys::NixlLib {
        &self.nixl.lib
    }

    /// The backend plugins NIXL found.
    pub fn plugins(&self) -> Result<Vec<String>> {
        let mut list = null_mut();
        // SAFETY: the agent is live; the list is destroyed below.
        check(unsafe { self.lib().nixl_capi_get_available_plugins(self.raw, &mut list) }, || {
            "listing its plugins".into()
        })?;
        let names = string_list(self.lib(), list);
        // SAFETY: the list came from NIXL and is no longer used.
        unsafe { self.lib().nixl_capi_destroy_string_list(list) };
        Ok(names)
    }

    /// A plugin's memory types and default parameters; fails where the
    /// plugin does not load.
    pub fn plugin_params(&self, plugin: &str) -> Result<PluginParams> {
        let c_plugin = c_string(plugin, "plugin")?;
        let (mut mems, mut params) = (null_mut(), null_mut());
        // SAFETY: live agent, valid name, out-pointers destroyed below.
        check(
            unsafe {
                self.lib().nixl_capi_get_plugin_params(self.raw, c_plugin.as_ptr(), &mut mems, &mut params)
            },
            || format!("loading plugin {plugin}"),
        )?;
        let out = (mem_list(self.lib(), mems), param_list(self.lib(), params));
        // SAFETY: both came from NIXL and are no longer used.
        unsafe {
            self.lib().nixl_capi_destroy_mem_list(mems);
            self.lib().nixl_capi_destroy_params(params);
        }
        Ok(out)
    }

    /// Creates backend `plugin` with its defaults overridden by `params`;
    /// returns the parameters it was created with.
    pub fn create_backend(
        &mut self,
        plugin: &str,
        params: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        let c_plugin = c_string(plugin, "plugin")?;
        let (mut mems, mut raw_params) = (null_mut(), null_mut());
        // SAFETY: as in plugin_params.
        check(
            unsafe {
                self.lib().nixl_capi_get_plugin_params(
                    self.raw,
                    c_plugin.as_ptr(),
                    &mut mems,
                    &mut raw_params,
                )
            },
            || format!("loading plugin {plugin}"),
        )?;
        let result = (|| -> Result<Vec<(String, String)>> {
            for (k, v) in params {
                let (ck, cv) = (c_string(k, "parameter")?, c_string(v, "parameter value")?);
                // SAFETY: live params object, valid strings (copied by NIXL).
                check(
                    unsafe { self.lib().nixl_capi_params_add(raw_params, ck.as_ptr(), cv.as_ptr()) },
                    || format!("setting {plugin} parameter {k}={v}"),
                )?;
            }
            let used = param_list(self.lib(), raw_params);
            let mut backend = null_mut();
            // SAFETY: live agent and params; the backend handle is kept until Drop.
            let status = unsafe {
                self.lib().nixl_capi_create_backend(self.raw, c_plugin.as_ptr(), raw_params, &mut backend)
            };
            check(status, || format!("creating backend {plugin} (NIXL's log above says why)"))?;
            self.backends.push(backend);
            // SAFETY: live options and backend: transfers go through this backend.
            check(unsafe { self.lib().nixl_capi_opt_args_add_backend(self.opt, backend) }, || {
                format!("choosing backend {plugin}")
            })?;
            Ok(used)
        })();
        // SAFETY: both came from NIXL and are no longer used.
        unsafe {
            self.lib().nixl_capi_destroy_mem_list(mems);
            self.lib().nixl_capi_destroy_params(raw_params);
        }
        // A plugin's libraries (libfabric's shm) may take SIGINT and SIGTERM as they load.
        crate::signals::install();
        result
    }

    /// Registers one region with every backend of the agent.
    pub fn register(&mut self, mem: Mem, addr: usize, len: usize, device: u64) -> Result<()> {
        let mut list = null_mut();
        // SAFETY: out-pointer; the list lives until the agent deregisters it in Drop.
        unsafe {
            check(self.lib().nixl_capi_create_reg_dlist(mem.raw(), &mut list), || {
                "creating a region list".into()
            })?;
            check(
                self.lib().nixl_capi_reg_dlist_add_desc(list, addr, len, device, std::ptr::null(), 0),
                || "adding a region".into(),
            )?;
        }
        // SAFETY: the region is this side's buffer, live as long as the transport.
        let status = unsafe { self.lib().nixl_capi_register_mem(self.raw, list, null_mut()) };
        if let Err(e) = check(status, || format!("registering {len} bytes of {} memory", mem.name())) {
            unsafe { self.lib().nixl_capi_destroy_reg_dlist(list) };
            return Err(e);
        }
        self.registered.push(list);
        Ok(())
    }

    /// This agent's metadata, for the peer's `load_remote_md`.
    pub fn local_md(&self) -> Result<Vec<u8>> {
        let (mut data, mut len) = (null_mut(), 0usize);
        // SAFETY: NIXL mallocs `data`, freed below.
        check(unsafe { self.lib().nixl_capi_get_local_md(self.raw, &mut data, &mut len) }, || {
            "getting its metadata".into()
        })?;
        // SAFETY: `data` holds `len` bytes from malloc.
        let md = unsafe { std::slice::from_raw_parts(data as *const u8, len) }.to_vec();
        unsafe { libc::free(data) };
        Ok(md)
    }

    /// Loads the peer's metadata; returns the peer agent's name.
    pub fn load_remote_md(&self, md: &[u8]) -> Result<String> {
        let mut name: *mut std::ffi::c_char = null_mut();
        // SAFETY: `md` is valid for its length; NIXL strdups the name, freed below.
        let status = unsafe {
            self.lib().nixl_capi_load_remote_md(self.raw, md.as_ptr() as *const c_void, md.len(), &mut name)
        };
        check(status, || "loading the peer's metadata".into())?;
        let s = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        unsafe { libc::free(name as *mut c_void) };
        Ok(s)
    }

    /// Prepares a descriptor list of this agent's memory (`agent` None) or
    /// of a peer's whose metadata is loaded.
    pub fn prep(&mut self, agent: Option<&str>, mem: Mem, descs: &[Desc]) -> Result<Prepped> {
        let lib = self.lib();
        let mut list = null_mut();
        // SAFETY: out-pointer; the list is destroyed below, NIXL keeps its own copy.
        check(unsafe { lib.nixl_capi_create_xfer_dlist(mem.raw(), &mut list) }, || "creating a list".into())?;
        let result = (|| -> Result<sys::nixl_capi_xfer_dlist_handle_t> {
            for &(addr, len, dev) in descs {
                // SAFETY: live list.
                check(unsafe { lib.nixl_capi_xfer_dlist_add_desc(list, addr, len, dev) }, || {
                    "adding a descriptor".into()
                })?;
            }
            let c_agent = c_string(agent.unwrap_or(""), "agent name")?; // "" is NIXL_INIT_AGENT
            let mut handle = null_mut();
            // SAFETY: live agent and list; `handle` is released in Drop.
            let status = unsafe {
                lib.nixl_capi_prep_xfer_dlist(self.raw, c_agent.as_ptr(), list, &mut handle, self.opt)
            };
            check(status, || {
                format!("preparing {} descriptors of {}", descs.len(), agent.unwrap_or("this side's memory"))
            })?;
            Ok(handle)
        })();
        unsafe { lib.nixl_capi_destroy_xfer_dlist(list) };
        let handle = result?;
        self.prepped.push(handle);
        Ok(Prepped(handle))
    }

    /// Releases a prepared list before the agent goes (a cache of them
    /// that has grown too large).
    pub fn unprep(&mut self, p: Prepped) {
        self.prepped.retain(|h| *h != p.0);
        // SAFETY: a live handle of this agent, not used again.
        unsafe { self.lib().nixl_capi_release_xfer_dlist_handle(self.raw, p.0) };
    }

    /// A transfer from the local descriptors `local` to (WRITE) or from
    /// (READ) the peer's `remote`, by index, with a notification for the
    /// peer when it completes; NIXL merges adjacent descriptors unless
    /// `skip_merge`.
    #[allow(clippy::too_many_arguments)]
    pub fn make(
        &self,
        op: XferOp,
        local: &Prepped,
        local_ids: &[i32],
        remote: &Prepped,
        remote_ids: &[i32],
        notif: Option<&[u8]>,
        skip_merge: bool,
    ) -> Result<Xfer> {
        let lib = self.lib();
        // SAFETY: live options; NIXL copies the message.
        unsafe {
            let (data, len) = notif.map_or((std::ptr::null(), 0), |n| (n.as_ptr() as *const c_void, n.len()));
            check(lib.nixl_capi_opt_args_set_notif_msg(self.opt, data, len), || {
                "setting a notification".into()
            })?;
            check(lib.nixl_capi_opt_args_set_has_notif(self.opt, notif.is_some()), || {
                "setting a notification".into()
            })?;
            check(lib.nixl_capi_opt_args_set_skip_desc_merge(self.opt, skip_merge), || {
                "setting merging".into()
            })?;
        }
        let op_raw = match op {
            XferOp::Read => sys::nixl_capi_xfer_op_t::NIXL_CAPI_XFER_OP_READ,
            XferOp::Write => sys::nixl_capi_xfer_op_t::NIXL_CAPI_XFER_OP_WRITE,
        };
        let mut req = null_mut();
        // SAFETY: live agent and handles; the index slices outlive the call.
        let status = unsafe {
            lib.nixl_capi_make_xfer_req(
                self.raw,
                op_raw,
                local.0,
                local_ids.as_ptr(),
                local_ids.len(),
                remote.0,
                remote_ids.as_ptr(),
                remote_ids.len(),
                &mut req,
                self.opt,
            )
        };
        check(status, || format!("making a transfer of {} descriptors", local_ids.len()))?;
        Ok(Xfer(req))
    }

    /// Posts a transfer; Done if NIXL finished it at once.
    pub fn post(&self, x: &Xfer) -> Result<State> {
        // SAFETY: live agent and request.
        self.state(unsafe { self.lib().nixl_capi_post_xfer_req(self.raw, x.0, null_mut()) }, "posting")
    }

    /// Where a posted transfer stands.
    pub fn poll(&self, x: &Xfer) -> Result<State> {
        // SAFETY: live agent and request.
        self.state(unsafe { self.lib().nixl_capi_get_xfer_status(self.raw, x.0) }, "moving")
    }

    fn state(&self, status: sys::nixl_capi_status_t::Type, doing: &str) -> Result<State> {
        match status {
            sys::nixl_capi_status_t::NIXL_CAPI_SUCCESS => Ok(State::Done),
            sys::nixl_capi_status_t::NIXL_CAPI_IN_PROG => Ok(State::InProgress),
            s => Err(Error::run(format!("NIXL failed {doing} a transfer: {}", status_words(s)))),
        }
    }

    /// NIXL's telemetry of a finished transfer, where it kept some.
    pub fn telemetry(&self, x: &Xfer) -> Option<Telemetry> {
        let mut t = sys::nixl_capi_xfer_telemetry_s {
            start_time_us: 0,
            post_duration_us: 0,
            xfer_duration_us: 0,
            total_bytes: 0,
            desc_count: 0,
        };
        // SAFETY: live agent and request; `t` is filled on success.
        let status = unsafe { self.lib().nixl_capi_get_xfer_telemetry(self.raw, x.0, &mut t) };
        (status == sys::nixl_capi_status_t::NIXL_CAPI_SUCCESS).then_some(Telemetry {
            post_us: t.post_duration_us,
            xfer_us: t.xfer_duration_us,
            bytes: t.total_bytes,
            descriptors: t.desc_count,
        })
    }

    /// Releases a transfer request (one in progress is cancelled, where
    /// the backend can); a failure is logged, not fatal: the run has
    /// already succeeded or failed for its own reason.
    pub fn release(&self, x: Xfer) {
        // SAFETY: live agent and request, not used again.
        let status = unsafe { self.lib().nixl_capi_release_xfer_req(self.raw, x.0) };
        if status == sys::nixl_capi_status_t::NIXL_CAPI_SUCCESS {
            unsafe { self.lib().nixl_capi_destroy_xfer_req(x.0) };
        } else {
            tracing::debug!("NIXL: releasing a transfer request: {}", status_words(status));
        }
    }

    /// Sends `msg` to agent `to` as a notification.
    pub fn notify(&self, to: &str, msg: &[u8]) -> Result<()> {
        let c_to = c_string(to, "agent name")?;
        // SAFETY: live agent; NIXL copies the message.
        let status = unsafe {
            self.lib().nixl_capi_gen_notif(
                self.raw,
                c_to.as_ptr(),
                msg.as_ptr() as *const c_void,
                msg.len(),
                null_mut(),
            )
        };
        check(status, || format!("notifying {to}"))
    }

    /// The notifications that arrived since the last call, with their senders.
    pub fn notifications(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let lib = self.lib();
        // SAFETY: live agent and map; strings are copied out before the map is cleared.
        unsafe {
            check(lib.nixl_capi_get_notifs(self.raw, self.notifs, null_mut()), || {
                "reading notifications".into()
            })?;
            let mut agents = 0;
            lib.nixl_capi_notif_map_size(self.notifs, &mut agents);
            let mut out = Vec::new();
            for a in 0..agents {
                let mut name = std::ptr::null();
                if lib.nixl_capi_notif_map_get_agent_at(self.notifs, a, &mut name) != 0 || name.is_null() {
                    continue;
                }
                let mut count = 0;
                lib.nixl_capi_notif_map_get_notifs_size(self.notifs, name, &mut count);
                let who = CStr::from_ptr(name).to_string_lossy().into_owned();
                for i in 0..count {
                    let (mut data, mut len) = (std::ptr::null(), 0usize);
                    if lib.nixl_capi_notif_map_get_notif(self.notifs, name, i, &mut data, &mut len) == 0 {
                        let msg = std::slice::from_raw_parts(data as *const u8, len).to_vec();
                        out.push((who.clone(), msg));
                    }
                }
            }
            lib.nixl_capi_notif_map_clear(self.notifs);
            Ok(out)
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let lib = &self.nixl.lib;
        // SAFETY: every handle belongs to this agent and is released once,
        // prepared lists and registrations before the agent itself.
        unsafe {
            for h in self.prepped.drain(..) {
                lib.nixl_capi_release_xfer_dlist_handle(self.raw, h);
            }
            for list in self.registered.drain(..) {
                lib.nixl_capi_deregister_mem(self.raw, list, null_mut());
                lib.nixl_capi_destroy_reg_dlist(list);
            }
            if !self.opt.is_null() {
                lib.nixl_capi_destroy_opt_args(self.opt);
            }
            if !self.notifs.is_null() {
                lib.nixl_capi_destroy_notif_map(self.notifs);
            }
            // The backends' handles are wrappers; the agent owns the engines.
            for b in self.backends.drain(..) {
                lib.nixl_capi_destroy_backend(b);
            }
            let status = lib.nixl_capi_destroy_agent(self.raw);
            if status != 0 {
                tracing::debug!("NIXL: destroying agent {}: {}", self.name, status_words(status));
            }
        }
    }
}

fn string_list(lib: &sys::NixlLib, list: sys::nixl_capi_string_list_t) -> Vec<String> {
    let mut n = 0;
    // SAFETY: a live list from NIXL; its strings are copied out.
    unsafe {
        lib.nixl_capi_string_list_size(list, &mut n);
        (0..n)
            .filter_map(|i| {
                let mut s = std::ptr::null();
                (lib.nixl_capi_string_list_get(list, i, &mut s) == 0 && !s.is_null())
                    .then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
            })
            .collect()
    }
}

fn mem_list(lib: &sys::NixlLib, list: sys::nixl_capi_mem_list_t) -> Vec<String> {
    let mut n = 0;
    // SAFETY: a live list from NIXL.
    unsafe {
        lib.nixl_capi_mem_list_size(list, &mut n);
        (0..n)
            .filter_map(|i| {
                let mut m = 0;
                let mut s = std::ptr::null();
                (lib.nixl_capi_mem_list_get(list, i, &mut m) == 0
                    && lib.nixl_capi_mem_type_to_string(m, &mut s) == 0
                    && !s.is_null())
                .then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
            })
            .collect()
    }
}

fn param_list(lib: &sys::NixlLib, params: sys::nixl_capi_params_t) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // SAFETY: a live params object from NIXL; strings are copied out before
    // the iterator goes.
    unsafe {
        let mut empty = true;
        if lib.nixl_capi_params_is_empty(params, &mut empty) != 0 || empty {
            return out;
        }
        let mut it = null_mut();
        if lib.nixl_capi_params_create_iterator(params, &mut it) != 0 {
            return out;
        }
        let mut more = true;
        while more {
            let (mut k, mut v) = (std::ptr::null(), std::ptr::null());
            if lib.nixl_capi_params_iterator_next(it, &mut k, &mut v, &mut more) != 0 || k.is_null() {
                break;
            }
            let value =
                if v.is_null() { String::new() } else { CStr::from_ptr(v).to_string_lossy().into_owned() };
            out.push((CStr::from_ptr(k).to_string_lossy().into_owned(), value));
        }
        lib.nixl_capi_params_destroy_iterator(it);
    }
    out
}
