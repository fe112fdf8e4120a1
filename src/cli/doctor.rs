//! `kvxfer doctor`: one look at what this node has (GPUs and their links,
//! the CUDA driver, NCCL, UCX, libfabric, NICs, RDMA ports, launchers) and
//! so which kvxfer runs will work here, and for each that will not, why
//! and the fix. Every probe is the one a run makes (the same loaders, the
//! same fi_getinfo hints, the same link detection), so the two never
//! disagree. A missing library is a finding, never a failure.

use crate::cli::args::DoctorArgs;
use crate::error::Result;
use crate::gpu;
use crate::link;
use serde::Serialize;
use std::io::Write;

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub what: String,
    pub found: String,
    /// Where it came from.
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct Section {
    pub name: &'static str,
    pub findings: Vec<Finding>,
}

/// One transport and memory kind: whether a run can work here.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub transport: &'static str,
    pub memory: &'static str,
    pub runs: bool,
    /// Why not, and the fix.
    pub why: Option<String>,
}

fn finding(what: impl Into<String>, found: impl Into<String>, source: impl Into<String>) -> Finding {
    Finding { what: what.into(), found: found.into(), source: source.into() }
}

/// What the probes found that the verdicts turn on.
pub struct Have {
    /// Held to the end, as a run holds its GPU: releasing a primary context
    /// leaves it current on this thread, and UCX's CUDA module, set up
    /// later, would use it (cuCtxSetFlags on a released context crashes).
    devices: Vec<std::sync::Arc<gpu::Device>>,
    gpu_error: Option<String>,
    nccl: Result<String, String>,
    ucx: Result<String, String>,
    ucx_cuda: bool,
    ofi: Result<String, String>,
    ofi_rma: Vec<String>,
    ofi_hmem: Vec<String>,
    ofi_cuda: bool,
    /// NIXL: the library, and whether its UCX backend moves host and GPU memory here.
    nixl: Result<String, String>,
    nixl_host: Result<(), String>,
    nixl_gpu: Result<(), String>,
}

impl Have {
    pub fn new() -> Have {
        let none = || Err("not probed".to_string());
        Have {
            devices: Vec::new(),
            gpu_error: None,
            nccl: none(),
            ucx: none(),
            ucx_cuda: false,
            ofi: none(),
            ofi_rma: Vec::new(),
            ofi_hmem: Vec::new(),
            ofi_cuda: false,
            nixl: none(),
            nixl_host: Err("not probed".into()),
            nixl_gpu: Err("not probed".into()),
        }
    }
}

pub fn run(a: &DoctorArgs) -> Result<()> {
    let mut have = Have::new();
    let sections = vec![
        Section {
            name: "kvxfer",
            findings: vec![finding("build", crate::env::BuildInfo::current().line(), "this binary")],
        },
        machine(),
        gpus(&mut have),
        nccl(a, &mut have),
        ucx(a, &mut have),
        ofi(a, &mut have),
        nixl(a, &mut have),
        network(),
        launchers(),
    ];
    let verdicts = verdicts(&have);
    let mut out = std::io::stdout().lock();
    for s in &sections {
        writeln!(out, "== {}", s.name)?;
        for f in &s.findings {
            writeln!(out, "  {:<22} {}  ({})", f.what, f.found, f.source)?;
        }
    }
    writeln!(out, "== what kvxfer can run here")?;
    for v in &verdicts {
        let said = match &v.why {
            None => "yes".to_string(),
            Some(why) => format!("no: {why}"),
        };
        writeln!(out, "  {:<5} {:<14} {said}", v.transport, format!("{} memory", v.memory))?;
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({ "sections": sections, "can_run": verdicts });
        let text = serde_json::to_string_pretty(&doc).expect("the findings serialize") + "\n";
        crate::cli::outputs::write_text(path, text)?;
    }
    Ok(())
}

fn machine() -> Section {
    let env = crate::env::EnvInfo::collect();
    Section {
        name: "machine",
        findings: vec![
            finding("host", env.hostname, "gethostname"),
            finding("system", env.os, "uname"),
            finding("cores", env.cpus.to_string(), "available parallelism"),
            finding("memory", crate::units::fmt_bytes(env.memory_bytes), "/proc/meminfo"),
        ],
    }
}

pub fn gpus(have: &mut Have) -> Section {
    let mut f = Vec::new();
    match gpu::driver_version() {
        Ok(v) => f.push(finding("CUDA driver", v, "cuDriverGetVersion")),
        Err(e) => {
            f.push(finding("CUDA driver", e.message.clone(), "libcuda.so.1"));
            have.gpu_error = Some(e.message);
        }
    }
    if have.gpu_error.is_none() {
        f.extend(gpu_links(have));
    }
    Section { name: "GPUs", findings: f }
}

/// Each GPU, its PCIe link and memory ceiling, the NVLinks between them:
/// what `kvxfer links` prints, and runs take as their ceilings.
fn gpu_links(have: &mut Have) -> Vec<Finding> {
    let sysfs = link::detect::Sysfs::system();
    let mut f = Vec::new();
    let show = |what: String, l: &link::Link| {
        finding(what, format!("{:.2} GB/s {}", l.peak_gbps, l.name), &l.source)
    };
    let devices: Vec<std::sync::Arc<gpu::Device>> = match gpu::device_count() {
        Ok(n) => (0..n).filter_map(|i| gpu::Device::open(i).ok()).collect(),
        Err(e) => {
            have.gpu_error = Some(e.message.clone());
            return vec![finding("GPUs", e.message, "cuDeviceGetCount")];
        }
    };
    have.devices = devices.clone();
    if devices.is_empty() {
        have.gpu_error = Some("the driver sees no GPU".into());
    }
    for g in &devices {
        let memory =
            g.total_memory().map(|b| format!(", {}", crate::units::fmt_bytes(b as u64))).unwrap_or_default();
        f.push(finding(format!("GPU {}", g.ordinal), format!("{}{memory}", g.describe()), "CUDA driver"));
        match sysfs.pcie(&g.pci_bus_id) {
            Some(l) => f.push(show(format!("GPU {} PCIe", g.ordinal), &l)),
            None => f.push(finding(format!("GPU {} PCIe", g.ordinal), "not in sysfs", &g.pci_bus_id)),
        }
        if let Some(l) = link::nvml::memory_copy(&g.pci_bus_id) {
            f.push(show(format!("GPU {} memory (copy)", g.ordinal), &l));
        }
    }
    for a in &devices {
        for b in devices.iter().filter(|b| b.ordinal > a.ordinal) {
            let what = format!("GPU {} <-> GPU {}", a.ordinal, b.ordinal);
            match link::nvml::between(&a.pci_bus_id, &b.pci_bus_id) {
                Some(l) => f.push(show(what, &l)),
                None => f.push(finding(what, "no NVLink", "NVML")),
            }
        }
    }
    f
}

fn nccl(a: &DoctorArgs, have: &mut Have) -> Section {
    have.nccl = crate::transport::nccl::lib::Nccl::open(a.libraries.nccl_lib.as_deref())
        .map(|n| format!("NCCL {} ({})", n.version, n.path))
        .map_err(|e| e.message);
    let found = have.nccl.clone().unwrap_or_else(|e| e);
    Section { name: "NCCL", findings: vec![finding("library", found, "dlopen, as -t nccl loads it")] }
}

fn ucx(a: &DoctorArgs, have: &mut Have) -> Section {
    let mut f = Vec::new();
    match crate::transport::ucx::ucp::Ucp::open(a.libraries.ucx_lib.as_deref()) {
        Ok(u) => {
            have.ucx = Ok(format!("UCX {} ({})", u.version, u.path));
            // UCX loads its transports as modules from ucx/ beside libucp.
            let file = loaded("libucp.so").unwrap_or_else(|| u.path.clone().into());
            let found = format!("UCX {} ({} = {})", u.version, u.path, file.display());
            f.push(finding("library", found, "dlopen, as -t ucx loads it"));
            let dir = file.parent().map(|p| p.join("ucx")).unwrap_or_default();
            let modules: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
                .unwrap_or_default();
            let present = modules.iter().any(|m| m.starts_with("libuct_cuda.so"));
            // What UCX itself finds, set up as a run sets it up (host memory).
            let resources = crate::transport::ucx::ucp::context_resources(a.libraries.ucx_lib.as_deref());
            let loaded_cuda = resources.as_ref().is_ok_and(|r| r.iter().any(|t| t.starts_with("cuda")));
            have.ucx_cuda = present;
            let cuda = match (present, loaded_cuda) {
                (true, true) => "yes, loaded (cuda_copy, cuda_ipc): on one host GPU memory moves between two \
                                 processes over cuda_ipc (kvxfer pair's receiver is a process of its own); \
                                 across hosts it needs an RDMA lane to GPU memory, which only a run shows"
                    .to_string(),
                (true, false) => "present (libuct_cuda), not loaded: no GPU or driver here for them".to_string(),
                (false, _) => "no: this UCX refuses GPU memory (distributions' packages, such as Debian's libucx0, \
                               have none); scripts/fetch-ucx-cuda.sh fetches one, or use the cluster's CUDA UCX"
                    .to_string(),
            };
            f.push(finding("CUDA modules", cuda, dir.display().to_string()));
            let found = match resources {
                Ok(r) if !r.is_empty() => r.join(", "),
                Ok(_) => "none reported".into(),
                Err(e) => format!("UCX did not set up: {}", e.message),
            };
            f.push(finding("transports", found, "ucp_context_print_info, after ucp_init as a run does"));
        }
        Err(e) => {
            f.push(finding("library", e.message.clone(), "dlopen, as -t ucx loads it"));
            have.ucx = Err(e.message);
        }
    }
    Section { name: "UCX", findings: f }
}

fn ofi(a: &DoctorArgs, have: &mut Have) -> Section {
    let mut f = Vec::new();
    match crate::transport::ofi::lib::Ofi::open(a.libraries.ofi_lib.as_deref()) {
        Ok(o) => {
            have.ofi = Ok(format!("libfabric {} ({})", o.version, o.path));
            let file = loaded("libfabric");
            let at = file.as_ref().map(|p| format!(" = {}", p.display())).unwrap_or_default();
            let found = format!("libfabric {} ({}{at})", o.version, o.path);
            f.push(finding("library", found, "dlopen, as -t ofi loads it"));
            // A libfabric built with CUDA calls the driver's cuMemGetAddressRange
            // for FI_HMEM; without it, FI_HMEM means host memory only.
            const CUDA_SYMBOL: &[u8] = b"cuMemGetAddressRange";
            let cuda = file
                .and_then(|p| std::fs::read(p).ok())
                .is_some_and(|bytes| bytes.windows(CUDA_SYMBOL.len()).any(|w| w == CUDA_SYMBOL));
            have.ofi_cuda = cuda;
            let said = match cuda {
                true => "yes: FI_HMEM can carry GPU memory",
                false => {
                    "no: FI_HMEM here is host memory only; scripts/fetch-ofi-cuda.sh fetches a CUDA libfabric \
                     (on AWS, the EFA installer's)"
                }
            };
            f.push(finding("built with CUDA", said, "the library's own symbols (cuMemGetAddressRange)"));
            match crate::transport::ofi::providers(a.libraries.ofi_lib.as_deref()) {
                Ok(p) if !p.is_empty() => {
                    for (name, rma, hmem) in p {
                        let caps = format!(
                            "tagged{}{}",
                            if rma { ", RMA (write, read)" } else { "" },
                            if hmem { ", FI_HMEM" } else { ", no FI_HMEM" }
                        );
                        if rma {
                            have.ofi_rma.push(name.clone());
                        }
                        if hmem {
                            have.ofi_hmem.push(name.clone());
                        }
                        f.push(finding(
                            format!("provider {name}"),
                            caps,
                            "fi_getinfo, the hints a run gives",
                        ));
                    }
                }
                _ => f.push(finding("providers", "none for reliable tagged endpoints", "fi_getinfo")),
            }
        }
        Err(e) => {
            f.push(finding("library", e.message.clone(), "dlopen, as -t ofi loads it"));
            have.ofi = Err(e.message);
        }
    }
    Section { name: "libfabric", findings: f }
}

fn nixl(a: &DoctorArgs, have: &mut Have) -> Section {
    let mut f = Vec::new();
    let source = "dlopen, as -t nixl loads it";
    let probe = match crate::transport::nixl::lib::Nixl::open(a.libraries.nixl_lib.as_deref()) {
        Ok(n) => {
            have.nixl = Ok(n.describe());
            f.push(finding("library", n.describe(), source));
            f.push(finding(
                "plugins",
                n.plugin_dir().display().to_string(),
                "NIXL_PLUGIN_DIR, else plugins/ beside libnixl.so",
            ));
            crate::transport::nixl::probe(n)
        }
        Err(e) => {
            f.push(finding("library", e.message.clone(), source));
            have.nixl = Err(e.message.clone());
            have.nixl_host = Err(e.message.clone());
            have.nixl_gpu = Err(e.message);
            return Section { name: "NIXL", findings: f };
        }
    };
    match probe {
        Ok(plugins) => {
            for p in &plugins {
                f.push(finding(
                    format!("backend {}", p.name),
                    p.describe(),
                    "loaded here; UCX, LIBFABRIC: created as a run does",
                ));
            }
            let ucx = plugins.iter().find(|p| p.name == "UCX");
            have.nixl_host = match ucx {
                Some(p) if p.created == Some(true) => Ok(()),
                Some(p) => Err(format!("NIXL's UCX backend does not work here: {}", p.describe())),
                None => Err("NIXL has no UCX plugin".into()),
            };
            have.nixl_gpu = match (ucx, &have.nixl_host) {
                (_, Err(e)) => Err(e.clone()),
                (Some(p), Ok(())) if !p.memory.iter().any(|m| m == "VRAM") => {
                    Err("NIXL's UCX backend takes no VRAM".into())
                }
                (Some(p), Ok(())) => match &p.cuda {
                    Some(why) => Err(format!("NIXL's UCX has no working CUDA module: {why}")),
                    None => Ok(()),
                },
                (None, Ok(())) => Err("NIXL has no UCX plugin".into()),
            };
        }
        Err(e) => {
            f.push(finding("backends", e.message.clone(), "a probe agent"));
            have.nixl_host = Err(e.message.clone());
            have.nixl_gpu = Err(e.message);
        }
    }
    Section { name: "NIXL", findings: f }
}

pub fn network() -> Section {
    let sysfs = link::detect::Sysfs::system();
    let (nics, ports) = (sysfs.interfaces(), sysfs.rdma_ports());
    let mut f: Vec<Finding> = nics
        .iter()
        .chain(&ports)
        .map(|l| {
            finding(
                if ports.contains(l) { "RDMA port" } else { "interface" },
                format!("{:.2} GB/s {}", l.peak_gbps, l.name),
                &l.source,
            )
        })
        .collect();
    if ports.is_empty() {
        f.push(finding("RDMA ports", "none active", "/sys/class/infiniband"));
    }
    if nics.is_empty() {
        f.push(finding("interfaces", "none reports a speed", "/sys/class/net/*/speed"));
    }
    Section { name: "network", findings: f }
}

fn launchers() -> Section {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
            .unwrap_or_default()
    };
    let mut f = Vec::new();
    for tool in ["mpirun", "srun"] {
        let found =
            on_path(tool).map(|p| p.display().to_string()).unwrap_or_else(|| "not on the PATH".into());
        f.push(finding(tool, found, "PATH"));
    }
    let me = match crate::launch::Launch::from_env() {
        Ok(l) => format!("rank {} of {} ({}), local rank {}", l.rank, l.size, l.launcher, l.local_rank),
        Err(_) => "none: not started by mpirun or srun".into(),
    };
    f.push(finding("this process", me, "OMPI_COMM_WORLD_*, PMI_*, SLURM_*"));
    Section { name: "launchers", findings: f }
}

fn verdicts(h: &Have) -> Vec<Verdict> {
    let gpu = match &h.gpu_error {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    };
    let both = |a: Result<(), String>, b: Result<(), String>| a.and(b);
    let lib = |r: &Result<String, String>| r.clone().map(drop);
    let ucx_cuda = match (&h.ucx, h.ucx_cuda) {
        (Ok(_), true) => Ok(()),
        (Ok(u), false) => Err(format!(
            "{u} has no CUDA modules: scripts/fetch-ucx-cuda.sh, or the cluster's CUDA UCX (--ucx-lib)"
        )),
        (Err(e), _) => Err(e.clone()),
    };
    let ofi_host = match (&h.ofi, h.ofi_rma.is_empty()) {
        (Err(e), _) => Err(e.clone()),
        (Ok(o), true) => Err(format!("{o} offers no provider with RMA (only --ofi-op send may work)")),
        (Ok(_), false) => Ok(()),
    };
    let ofi_gpu = match (&h.ofi, h.ofi_hmem.is_empty() || !h.ofi_cuda) {
        (Err(e), _) => Err(e.clone()),
        (Ok(o), true) => Err(format!(
            "{o} has no provider with FI_HMEM on CUDA: a CUDA libfabric (scripts/fetch-ofi-cuda.sh; on AWS the EFA installer's)"
        )),
        (Ok(_), false) => Ok(()),
    };
    // One GPU is enough for a rank of a pair across hosts (NCCL refuses two ranks on one GPU).
    let nccl = match (lib(&h.nccl), h.devices.len()) {
        (Err(e), _) => Err(e),
        (Ok(()), 0) => Err("no GPU here".into()),
        (Ok(()), _) => Ok(()),
    };
    let v = |transport, memory, r: Result<(), String>| Verdict {
        transport,
        memory,
        runs: r.is_ok(),
        why: r.err(),
    };
    vec![
        v("tcp", "host", Ok(())),
        v("tcp", "pinned", gpu.clone()),
        v("tcp", "gpu", gpu.clone()),
        v("ucx", "host", lib(&h.ucx)),
        v("ucx", "gpu", both(gpu.clone(), ucx_cuda)),
        v("ofi", "host", ofi_host),
        v("ofi", "gpu", both(gpu.clone(), ofi_gpu)),
        v("nixl", "host", h.nixl_host.clone()),
        v("nixl", "gpu", both(gpu.clone(), h.nixl_gpu.clone())),
        v("nccl", "gpu", both(gpu, nccl)),
    ]
}

/// The file a loaded library really is (its name given to dlopen may be a
/// bare soname).
fn loaded(stem: &str) -> Option<std::path::PathBuf> {
    crate::env::mapped_file(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(stem)))
}
