//! NIXL's C API, `libnixl_capi.so`, opened at run time over the bindings of
//! `sys.rs` (scripts/gen-nixl-bindings.sh). Nothing links against NIXL: the
//! binaries start where it is absent, and use whichever NIXL a node has:
//! `--nixl-lib PATH` (or KVXFER_NIXL_LIB), else `libnixl_capi.so` on the
//! loader's path, else the one a `pip install nixl-cu13` (or cu12) put in a
//! virtual environment or the system's site-packages.
//!
//! NIXL finds its backend plugins itself: in NIXL_PLUGIN_DIR, else in the
//! `plugins/` folder beside `libnixl.so` (src/core/nixl_plugin_manager.cpp,
//! getPluginDir), which is where the wheels put them.

use super::sys;
use crate::error::{Error, Result};
use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// The file name the loader searches for.
pub const DEFAULT_LIB: &str = "libnixl_capi.so";

/// How to get NIXL, for every error that finds it missing.
pub const INSTALL_HINT: &str = "install it (pip install nixl-cu13, or nixl-cu12; CPU only: \
     scripts/fetch-nixl.sh) and give --nixl-lib PATH/libnixl_capi.so or KVXFER_NIXL_LIB";

/// The loaded library, where it came from, and the release it belongs to.
pub struct Nixl {
    pub lib: sys::NixlLib,
    pub path: String,
    /// The wheel's version (its dist-info beside the library), if known.
    pub version: Option<String>,
}

// SAFETY: NixlLib holds function pointers and the library handle only.
unsafe impl Sync for Nixl {}
unsafe impl Send for Nixl {}

/// Fails the load when a function kvxfer calls is missing, instead of
/// panicking at the first call (the generated wrappers expect them all).
macro_rules! require {
    ($lib:expr, $path:expr, $($f:ident),+) => {
        $(if $lib.$f.is_err() {
            return Err(Error::run(format!(
                "{} has no {}: kvxfer needs NIXL's C API of release 1.5 or newer",
                $path,
                stringify!($f)
            )));
        })+
    };
}

impl Nixl {
    /// Loads NIXL once per path and keeps it for the process: both sides of
    /// a `pair` share it, and its plugins and their libraries expect to stay.
    pub fn open(path: Option<&str>) -> Result<&'static Nixl> {
        static LOADED: std::sync::Mutex<Vec<(Option<String>, &'static Nixl)>> =
            std::sync::Mutex::new(Vec::new());
        let key = path.map(str::to_string);
        let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, nixl)) = loaded.iter().find(|(k, _)| *k == key) {
            return Ok(nixl);
        }
        let nixl: &'static Nixl = Box::leak(Box::new(Self::load(path)?));
        loaded.push((key, nixl));
        Ok(nixl)
    }

    fn load(path: Option<&str>) -> Result<Nixl> {
        let candidates: Vec<String> = match path {
            Some(p) => vec![p.to_string()],
            None => std::iter::once(DEFAULT_LIB.to_string())
                .chain(installed_wheels().into_iter().map(|p| p.display().to_string()))
                .collect(),
        };
        let mut why = Vec::new();
        for candidate in &candidates {
            // SAFETY: loading NIXL runs its initializers, which are sound.
            match unsafe { sys::NixlLib::new(candidate.as_str()) } {
                Ok(lib) => {
                    // Plugins loaded later may install handlers of their own (libfabric's shm).
                    crate::signals::install();
                    let path = resolved_path(&lib, candidate);
                    return Self::check(lib, path);
                }
                Err(e) => {
                    let e = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or(e.to_string());
                    why.push(e);
                }
            }
        }
        // Exit 1, as a missing UCX or libfabric: the node lacks it, the command is fine.
        Err(Error::run(format!("cannot load NIXL ({}): {INSTALL_HINT}", why.join("; "))))
    }

    fn check(lib: sys::NixlLib, path: String) -> Result<Nixl> {
        require!(
            lib,
            path,
            nixl_capi_create_configured_agent,
            nixl_capi_destroy_agent,
            nixl_capi_get_local_md,
            nixl_capi_load_remote_md,
            nixl_capi_invalidate_remote_md,
            nixl_capi_get_available_plugins,
            nixl_capi_destroy_string_list,
            nixl_capi_string_list_size,
            nixl_capi_string_list_get,
            nixl_capi_get_plugin_params,
            nixl_capi_destroy_mem_list,
            nixl_capi_destroy_params,
            nixl_capi_create_backend,
            nixl_capi_destroy_backend,
            nixl_capi_create_opt_args,
            nixl_capi_destroy_opt_args,
            nixl_capi_opt_args_add_backend,
            nixl_capi_opt_args_set_notif_msg,
            nixl_capi_opt_args_set_has_notif,
            nixl_capi_opt_args_set_skip_desc_merge,
            nixl_capi_params_add,
            nixl_capi_params_is_empty,
            nixl_capi_params_create_iterator,
            nixl_capi_params_iterator_next,
            nixl_capi_params_destroy_iterator,
            nixl_capi_mem_list_is_empty,
            nixl_capi_mem_list_size,
            nixl_capi_mem_list_get,
            nixl_capi_mem_type_to_string,
            nixl_capi_register_mem,
            nixl_capi_deregister_mem,
            nixl_capi_prep_xfer_dlist,
            nixl_capi_release_xfer_dlist_handle,
            nixl_capi_make_xfer_req,
            nixl_capi_get_notifs,
            nixl_capi_create_notif_map,
            nixl_capi_destroy_notif_map,
            nixl_capi_gen_notif,
            nixl_capi_post_xfer_req,
            nixl_capi_get_xfer_status,
            nixl_capi_release_xfer_req,
            nixl_capi_destroy_xfer_req,
            nixl_capi_create_xfer_dlist,
            nixl_capi_destroy_xfer_dlist,
            nixl_capi_xfer_dlist_add_desc,
            nixl_capi_create_reg_dlist,
            nixl_capi_destroy_reg_dlist,
            nixl_capi_reg_dlist_add_desc,
            nixl_capi_notif_map_size,
            nixl_capi_notif_map_get_agent_at,
            nixl_capi_notif_map_get_notifs_size,
            nixl_capi_notif_map_get_notif,
            nixl_capi_notif_map_clear,
            nixl_capi_get_xfer_telemetry
        );
        let version = wheel_version(Path::new(&path));
        Ok(Nixl { lib, path, version })
    }

    /// "NIXL 1.5.1 (/path/libnixl_capi.so)".
    pub fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("NIXL {v} ({})", self.path),
            None => format!("NIXL ({})", self.path),
        }
    }

    /// The plugin folder NIXL reads: NIXL_PLUGIN_DIR, else `plugins/` beside libnixl.so.
    pub fn plugin_dir(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("NIXL_PLUGIN_DIR") {
            return PathBuf::from(dir);
        }
        Path::new(&self.path).parent().unwrap_or(Path::new(".")).join("plugins")
    }

    /// Why backend `name`'s plugin does not load here, if it does not: the
    /// dynamic loader's own words (a library it needs, missing).
    pub fn plugin_load_error(&self, name: &str) -> Option<String> {
        let file = self.plugin_dir().join(format!("libplugin_{name}.so"));
        if !file.is_file() {
            return Some(format!("{} is not there", file.display()));
        }
        load_error(&file)
    }
}

/// Why `file` does not load, in the dynamic loader's words with the fix,
/// if it does not; loaded, it stays (NIXL would load it itself).
pub fn load_error(file: &Path) -> Option<String> {
    // SAFETY: a library NIXL loads itself; the handle is kept.
    let loaded = unsafe { libloading::Library::new(file) };
    // Its libraries (libfabric's shm) may take SIGINT and SIGTERM as they load.
    crate::signals::install();
    match loaded {
        Ok(lib) => {
            std::mem::forget(lib);
            None
        }
        Err(e) => {
            Some(with_fix(std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or(e.to_string())))
        }
    }
}

/// The loader's words for a plugin that does not load, with the fix for
/// the libraries NIXL's wheels leave to the system.
pub fn with_fix(why: String) -> String {
    let fix = [
        (
            "version `FABRIC_",
            "a libfabric of that ABI or newer on LD_LIBRARY_PATH (FABRIC_1.10: newer than 2.3, the newest CUDA \
             build on PyPI; on AWS the EFA installer's)",
        ),
        (
            "libcudart.so.13",
            "pip install 'nvidia-cuda-runtime>=13,<14' and put its nvidia/cu13/lib on LD_LIBRARY_PATH",
        ),
        (
            "libcudart.so.12",
            "pip install nvidia-cuda-runtime-cu12 and put its nvidia/cuda_runtime/lib on LD_LIBRARY_PATH",
        ),
        ("libcuda.so.1", "the NVIDIA driver: a GPU machine"),
        (
            "libfabric.so.1",
            "a libfabric 2.x on LD_LIBRARY_PATH (scripts/fetch-ofi-cuda.sh; on AWS the EFA installer's)",
        ),
        ("libhwloc.so.15", "apt-get install libhwloc15"),
    ]
    .iter()
    .find(|(lib, _)| why.contains(lib))
    .map(|(_, fix)| *fix);
    match fix {
        Some(fix) => format!("{why} (fix: {fix})"),
        None => why,
    }
}

/// Turns a C API status into a result, naming what was done.
pub fn check(status: sys::nixl_capi_status_t::Type, doing: impl FnOnce() -> String) -> Result<()> {
    match status {
        sys::nixl_capi_status_t::NIXL_CAPI_SUCCESS => Ok(()),
        s => Err(Error::run(format!("NIXL failed {}: {}", doing(), status_words(s)))),
    }
}

/// The C API's status codes in words.
pub fn status_words(status: sys::nixl_capi_status_t::Type) -> String {
    use sys::nixl_capi_status_t::*;
    let words = match status {
        NIXL_CAPI_SUCCESS => "success",
        NIXL_CAPI_IN_PROG => "in progress",
        NIXL_CAPI_ERROR_INVALID_PARAM => "invalid parameter",
        NIXL_CAPI_ERROR_BACKEND => "backend error",
        NIXL_CAPI_ERROR_INVALID_STATE => "invalid state",
        NIXL_CAPI_ERROR_EXCEPTION => "exception",
        NIXL_CAPI_ERROR_NO_TELEMETRY => "no telemetry",
        NIXL_CAPI_ERROR_NOT_FOUND => "not found",
        _ => "unknown status",
    };
    format!("{words} ({status})")
}

/// The path the dynamic loader resolved a bare name to, for the report.
fn resolved_path(lib: &sys::NixlLib, asked: &str) -> String {
    let Ok(f) = &lib.nixl_capi_create_configured_agent else { return asked.to_string() };
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr on a function of the loaded library fills `info`.
    let ok = unsafe { libc::dladdr(*f as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return asked.to_string();
    }
    let name = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    std::fs::canonicalize(&name).map(|p| p.display().to_string()).unwrap_or(name)
}

/// The C API libraries of NIXL wheels installed where pip puts them: the
/// active virtual environment, the user's and the system's site-packages.
fn installed_wheels() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    let mut found = Vec::new();
    for root in roots {
        let Ok(pythons) = std::fs::read_dir(&root) else { continue };
        for python in pythons.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python3")) {
            for packages in ["site-packages", "dist-packages"] {
                for wheel in ["nixl_cu13", "nixl_cu12"] {
                    let lib =
                        python.path().join(packages).join(format!(".{wheel}.mesonpy.libs")).join(DEFAULT_LIB);
                    if lib.is_file() {
                        found.push(lib);
                    }
                }
            }
        }
    }
    found
}

/// The version of the wheel whose library this is: its dist-info sits in
/// the folder above (site-packages/nixl_cu13-1.5.1.dist-info/METADATA).
pub fn wheel_version(lib: &Path) -> Option<String> {
    let packages = lib.parent()?.parent()?;
    let entries = std::fs::read_dir(packages).ok()?;
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("nixl") && n.ends_with(".dist-info")
        })
        .find_map(|e| {
            let metadata = std::fs::read_to_string(e.path().join("METADATA")).ok()?;
            metadata.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_string())
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wheels_version_is_read_from_its_dist_info() {
        let dir = tempfile::tempdir().unwrap();
        let libs = dir.path().join(".nixl_cu13.mesonpy.libs");
        std::fs::create_dir_all(&libs).unwrap();
        let info = dir.path().join("nixl_cu13-1.5.1.dist-info");
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(info.join("METADATA"), "Metadata-Version: 2.1\nName: nixl-cu13\nVersion: 1.5.1\n")
            .unwrap();
        assert_eq!(super::wheel_version(&libs.join(super::DEFAULT_LIB)).as_deref(), Some("1.5.1"));
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(super::wheel_version(&elsewhere.path().join("lib/libnixl_capi.so")), None);
    }

    #[test]
    fn a_plugin_that_does_not_load_is_told_its_fix() {
        let abi = super::with_fix("libfabric.so.1: version `FABRIC_1.10' not found (required by x)".into());
        assert!(abi.contains("(fix: a libfabric of that ABI or newer"), "{abi}");
        let cudart = super::with_fix("libcudart.so.13: cannot open shared object file".into());
        assert!(cudart.ends_with("put its nvidia/cu13/lib on LD_LIBRARY_PATH)"), "{cudart}");
        assert_eq!(super::with_fix("something else".into()), "something else");
    }

    #[test]
    fn statuses_read_as_words() {
        use super::sys::nixl_capi_status_t::*;
        assert_eq!(super::status_words(NIXL_CAPI_ERROR_NOT_FOUND), "not found (-6)");
        assert!(super::check(NIXL_CAPI_SUCCESS, || unreachable!()).is_ok());
        let e = super::check(NIXL_CAPI_ERROR_BACKEND, || "creating backend UCX".into()).unwrap_err();
        assert!(e.to_string().contains("NIXL failed creating backend UCX: backend error (-2)"), "{e}");
    }
}
