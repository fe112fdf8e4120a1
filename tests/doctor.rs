//! `kvxfer doctor` on this machine (CI: Debian's UCX and libfabric, no
//! GPU): what it finds, what it says can run, and a missing library told
//! as a finding with its fix, never a failure.

mod common;
use common::*;

fn cuda_present() -> bool {
    // SAFETY: only probes whether the driver library can be opened.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

/// The verdict line for a transport and memory kind.
fn verdict<'a>(stdout: &'a str, transport: &str, memory: &str) -> &'a str {
    let head = format!("  {transport:<5} {:<14} ", format!("{memory} memory"));
    let line =
        stdout.lines().find(|l| l.starts_with(&head)).unwrap_or_else(|| panic!("no {head:?}:\n{stdout}"));
    &line[head.len()..]
}

#[test]
fn doctor_finds_debians_ucx_and_libfabric_and_says_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("doctor.json");
    let mut cmd = std::process::Command::new(KVXFER);
    cmd.args(["doctor", "--json", json_path.to_str().unwrap()]);
    cmd.env_remove("KVXFER_UCX_LIB").env_remove("KVXFER_OFI_LIB");
    let out = Proc::spawn(cmd).finish(secs(60));
    out.expect_code(0);
    let s = &out.stdout;
    // Sections in their fixed order.
    let order = [
        "== kvxfer",
        "== machine",
        "== GPUs",
        "== NCCL",
        "== UCX",
        "== libfabric",
        "== NIXL",
        "== network",
        "== launchers",
    ];
    let at: Vec<usize> =
        order.iter().map(|h| s.find(h).unwrap_or_else(|| panic!("{h} missing:\n{s}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{s}");
    assert!(s.contains("library                UCX 1."), "{s}");
    assert!(s.contains("CUDA modules           no: this UCX refuses GPU memory"), "{s}");
    // What UCX itself found once set up as a run sets it up.
    let transports = s.lines().find(|l| l.starts_with("  transports ")).unwrap_or_else(|| panic!("{s}"));
    assert!(transports.contains("tcp/lo") && transports.contains("self/memory"), "{transports}");
    assert!(s.contains("library                libfabric 1."), "{s}");
    assert!(s.contains("provider tcp;ofi_rxm   tagged, RMA (write, read)"), "{s}");
    assert!(s.contains("provider shm "), "{s}");
    for t in ["tcp", "ucx", "ofi"] {
        assert_eq!(verdict(s, t, "host"), "yes", "{t}:\n{s}");
    }
    if !cuda_present() {
        assert!(s.contains("no CUDA driver: libcuda.so.1"), "{s}");
        for (t, m) in [("tcp", "gpu"), ("ucx", "gpu"), ("ofi", "gpu"), ("nccl", "gpu")] {
            assert!(verdict(s, t, m).starts_with("no: "), "{t} {m}:\n{s}");
        }
    }
    let doc = json(&json_path);
    let names: Vec<&str> =
        doc["sections"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["kvxfer", "machine", "GPUs", "NCCL", "UCX", "libfabric", "NIXL", "network", "launchers"]
    );
    let can = doc["can_run"].as_array().unwrap();
    assert_eq!(can.len(), 10);
    assert!(can.iter().any(|v| v["transport"] == "tcp" && v["memory"] == "host" && v["runs"] == true));
}

#[test]
fn a_missing_ucx_is_a_finding_with_its_fix() {
    let mut cmd = std::process::Command::new(KVXFER);
    cmd.arg("doctor").env("KVXFER_UCX_LIB", "/nonexistent/libucp.so.0");
    let out = Proc::spawn(cmd).finish(secs(60));
    out.expect_code(0);
    assert!(out.stdout.contains("cannot load UCX (/nonexistent/libucp.so.0"), "{}", out.stdout);
    assert!(out.stdout.contains("apt-get install libucx0"), "{}", out.stdout);
    assert!(verdict(&out.stdout, "ucx", "host").starts_with("no: cannot load UCX"), "{}", out.stdout);
    assert_eq!(verdict(&out.stdout, "tcp", "host"), "yes");
}
