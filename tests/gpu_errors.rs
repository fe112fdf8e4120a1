//! GPU paths on a machine without them: every request for GPU memory or NCCL
//! ends with a message naming what is missing and a non-zero exit, before
//! anything connects. Where a CUDA driver exists, the GPU run must work.

mod common;
use common::*;

fn cuda_present() -> bool {
    // SAFETY: only probes whether the driver library can be opened.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

#[test]
fn gpu_memory_needs_a_driver() {
    for (bin, args) in [
        (KVXFER, &["pair", "-p", "16", "-n", "1", "--memory", "gpu"][..]),
        (KVXFER, &["pair", "-p", "16", "-n", "1", "--memory", "pinned"][..]),
        (RECV, &["--memory", "gpu", "--listen", "127.0.0.1:0", "--wait-for-sender", "1s"][..]),
    ] {
        let f = run(bin, args, secs(60));
        if cuda_present() {
            assert!(!f.stderr.contains("no CUDA driver"), "{}", f.stderr);
        } else {
            f.expect_code(1).expect_stderr("no CUDA driver: libcuda.so.1");
            assert!(f.stdout.is_empty(), "nothing starts: {}", f.stdout);
        }
    }
}

#[test]
fn nccl_without_its_library_names_it() {
    let f = run(
        KVXFER,
        &["pair", "-t", "nccl", "--memory", "gpu", "--nccl-lib", "/nonexistent/libnccl.so.2"],
        secs(30),
    );
    f.expect_code(1).expect_stderr("cannot load NCCL (/nonexistent/libnccl.so.2: ");
    assert!(f.stderr.contains("--nccl-lib"), "says how to fix it: {}", f.stderr);
    let f = run(
        SEND,
        &["--connect", "127.0.0.1:9", "-t", "nccl", "--memory", "gpu", "--nccl-lib", "/nonexistent/x.so"],
        secs(30),
    );
    f.expect_code(1).expect_stderr("cannot load NCCL (/nonexistent/x.so: ");
}

#[test]
fn memory_a_transport_cannot_move_is_refused_up_front() {
    let f = run(KVXFER, &["pair", "-t", "nccl"], secs(30));
    f.expect_code(2).expect_stderr("transport nccl moves GPU memory, not host memory");
    let f = run(KVXFER, &["pair", "--memory", "gpu", "--streams", "2"], secs(30));
    f.expect_code(2).expect_stderr("use --streams 1");
    let f = run(KVXFER, &["pair", "--memory", "tape"], secs(30));
    f.expect_code(2).expect_stderr("unknown memory 'tape'");
}
