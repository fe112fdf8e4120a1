//! The reference kvxfer's nccl transport is measured against: a bare loop of
//! ncclSend (rank 0, GPU 0) and ncclRecv (rank 1, GPU 1), two threads of one
//! process, with no control messages and no checks; each size timed with CUDA
//! events on the receiving stream.
//!
//!   nccl_bare [SIZES_MIB] [ITERATIONS] [MODE ...] [--lib PATH]
//!   e.g. nccl_bare 64,256,1024 20 blocking pipelined
//!
//! MODE: blocking (default, as nccl-tests) or nonblocking communicator;
//! pipelined (default: iterations back to back, as nccl-tests) or synced (the
//! two threads meet at a barrier before every iteration, each timed from just
//! before the receiver posts: the cost of one isolated send/recv). Prints one
//! line per size: MiB, mean and median GB/s (1e9 bytes/s).

use kvxfer::gpu::{Device, DeviceMem, Event, Stream};
use kvxfer::transport::nccl::lib::{Nccl, IN_PROGRESS};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const WARMUP: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .get(1)
        .map(|s| s.split(',').map(|v| v.parse::<usize>().expect("sizes in MiB")).collect())
        .unwrap_or(vec![64, 256, 1024, 4096]);
    let iterations: usize = args.get(2).map(|v| v.parse().expect("iterations")).unwrap_or(20);
    let modes = &args[3.min(args.len())..];
    let blocking = !modes.iter().any(|m| m == "nonblocking");
    let synced = modes.iter().any(|m| m == "synced");
    let lib = modes.iter().position(|m| m == "--lib").and_then(|i| modes.get(i + 1)).cloned();
    // Loaded for the whole run: NCCL's bootstrap thread must outlive the id.
    let id = Nccl::open(lib.as_deref()).expect("NCCL").unique_id().expect("unique id");
    let barrier = Arc::new(Barrier::new(2));
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let (sizes, lib, barrier) = (sizes.clone(), lib.clone(), barrier.clone());
            std::thread::spawn(move || {
                run_rank(rank, id, &sizes, iterations, blocking, synced, lib.as_deref(), &barrier)
            })
        })
        .collect();
    for r in ranks {
        r.join().expect("rank thread");
    }
}

#[allow(clippy::too_many_arguments)]
fn run_rank(
    rank: i32,
    id: kvxfer::transport::nccl::lib::UniqueId,
    sizes: &[usize],
    iterations: usize,
    blocking: bool,
    synced: bool,
    lib: Option<&str>,
    barrier: &Barrier,
) {
    let nccl = Nccl::open(lib).expect("NCCL");
    let device = Device::open(rank as usize).expect("GPU");
    let max = sizes.iter().max().unwrap() << 20;
    let mem = DeviceMem::new(&device, max).expect("GPU memory");
    let stream = Stream::new(&device).expect("stream");
    let comm = nccl.init_rank(2, id, rank, blocking).expect("communicator");
    let deadline = Instant::now() + Duration::from_secs(60);
    while nccl.async_state(comm, "init").expect("init") == IN_PROGRESS {
        assert!(Instant::now() < deadline, "communicator init timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
    let raw = stream.raw as *mut std::ffi::c_void;
    let op = |bytes: usize| {
        // SAFETY: the buffer holds `max` bytes and outlives the stream's work.
        let code = unsafe {
            if rank == 0 {
                nccl.send(mem.ptr, bytes, 1, comm, raw)
            } else {
                nccl.recv(mem.ptr, bytes, 0, comm, raw)
            }
        }
        .expect("send/recv");
        while code == IN_PROGRESS && nccl.async_state(comm, "op").expect("op") == IN_PROGRESS {}
    };
    let far = || Instant::now() + Duration::from_secs(120);
    for &mib in sizes {
        let bytes = mib << 20;
        for _ in 0..WARMUP {
            op(bytes);
        }
        stream.wait(far(), "warm-up").expect("warm-up");
        barrier.wait();
        let start = Event::new(&device).unwrap();
        let marks: Vec<Event> = (0..iterations).map(|_| Event::new(&device).unwrap()).collect();
        let mut per: Vec<f64> = Vec::new();
        if synced {
            let before = Event::new(&device).unwrap();
            for mark in &marks {
                barrier.wait();
                before.record(&stream).unwrap();
                op(bytes);
                mark.record(&stream).unwrap();
                mark.wait(far(), "an iteration").expect("iteration");
                per.push(mark.since(&before).unwrap() as f64);
            }
        } else {
            start.record(&stream).unwrap();
            for mark in &marks {
                op(bytes);
                mark.record(&stream).unwrap();
            }
            marks.last().unwrap().wait(far(), "the loop").expect("loop");
            let mut prev = &start;
            for m in &marks {
                per.push(m.since(prev).unwrap() as f64);
                prev = m;
            }
        }
        if rank == 1 {
            let total: f64 = per.iter().sum();
            per.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let gbps = |ns: f64| bytes as f64 / ns;
            println!(
                "{mib:>6} MiB  mean {:7.1} GB/s  median {:7.1} GB/s  ({iterations} {} iterations, {} communicator, NCCL {})",
                gbps(total / iterations as f64),
                gbps(per[per.len() / 2]),
                if synced { "synced" } else { "pipelined" },
                if blocking { "blocking" } else { "non-blocking" },
                nccl.version
            );
        }
        barrier.wait();
    }
    // SAFETY: the communicator is not used again.
    unsafe { nccl.abort(comm) };
}
