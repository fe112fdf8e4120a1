//! The reference kvxfer's ucx put is measured against, as examples/nccl_bare.rs
//! is for nccl: two processes (cuda_ipc needs two), a target that owns the
//! buffer and a driver that puts into it, over the same thin UCP wrapper
//! kvxfer uses, with no control connection in the loop, no patterns and no
//! checks. It tells what UCX costs from what kvxfer adds.
//!
//!   ucx_bare target PORT [options]        (start first; prints "listening")
//!   ucx_bare drive HOST:PORT [options]    (prints the results)
//!
//! Options (give both processes the same): --sizes 64,256,1024 (MiB)
//! --iterations 20 --gpu N (GPU memory on device N; default host memory)
//! --lib PATH (libucp.so.0) --touch (each side runs a 1 MiB cuMemset in its
//! own CUDA context between iterations: the target first, then the driver,
//! the order kvxfer keeps its pattern check and fill in on one GPU)
//! --rewrite (before each signalled put the target memsets the whole
//! destination, then the driver its whole source: as kvxfer checks each
//! request and writes the next one's pattern; isolated puts rewrite the
//! source only) --pattern (kvxfer's own pattern kernels between signalled
//! puts: the target checks the last put's bytes, the driver fills its
//! source; the wrong bytes found are printed) --err-mode peer (UCX's peer
//! error mode, as NIXL and kvxfer's default; default none).
//!
//! Per size, four loops, each after 3 untimed iterations:
//!   window     puts back to back, 32 in flight, one flush at the end: the
//!              rate ucx_perftest ucp_put_bw reports (fixed costs overlap);
//!   isolated   put + flush, one at a time, timed by the driver;
//!   signalled  kvxfer's request: the two sides' work between iterations
//!              done (ordered by clear and ready tags, untimed), the target
//!              starts its clock, sends a go tag, the driver puts, flushes
//!              and sends a done tag, the target stops its clock on done;
//!   go-done    the two tags alone, no put: the round trip in the above.
//! Prints one line per loop and size: MiB, median and mean microseconds,
//! GB/s (1e9 bytes/s) of the median.

use kvxfer::gpu::pattern::PatternKernels;
use kvxfer::gpu::{Device, DeviceMem, Stream};
use kvxfer::kv::{presets, KvShape};
use kvxfer::plan::{Granularity, RequestLayout};
use kvxfer::transport::ucx::ucp::{MemType, Node, Op, Poll, Request, Ucp};
use std::cell::Cell;
use std::ffi::c_void;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const WARMUP: usize = 3;
const WINDOW: usize = 32;
const GO: u64 = 0x60;
const DONE: u64 = 0xd0;
const CLEAR: u64 = 0xc1;
const READY: u64 = 0x7e;
const TOUCH_BYTES: usize = 1 << 20;

struct Opts {
    sizes: Vec<usize>,
    iterations: usize,
    gpu: Option<usize>,
    lib: Option<String>,
    touch: bool,
    rewrite: bool,
    pattern: bool,
    /// UCP_ERR_HANDLING_MODE_PEER, as NIXL's UCX backend and kvxfer's
    /// default: it drops lanes that cannot report a failed peer.
    peer_mode: bool,
}

fn opts(args: &[String]) -> Opts {
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    Opts {
        sizes: value("--sizes")
            .unwrap_or("64,256,1024".into())
            .split(',')
            .map(|v| v.parse::<usize>().expect("sizes in MiB") << 20)
            .collect(),
        iterations: value("--iterations").map(|v| v.parse().expect("iterations")).unwrap_or(20),
        gpu: value("--gpu").map(|v| v.parse().expect("a GPU ordinal")),
        lib: value("--lib"),
        touch: args.iter().any(|a| a == "--touch"),
        rewrite: args.iter().any(|a| a == "--rewrite"),
        pattern: args.iter().any(|a| a == "--pattern"),
        peer_mode: value("--err-mode").is_some_and(|m| m == "peer"),
    }
}

/// One side's buffer: GPU memory (kept alive here) or host memory.
struct Memory {
    _gpu: Option<(std::sync::Arc<Device>, DeviceMem, DeviceMem, Stream)>,
    _host: Vec<u8>,
    base: *mut c_void,
    kind: MemType,
    /// kvxfer's pattern kernels (--pattern), which side this is, the
    /// rounds so far and the wrong bytes the target's checks found.
    kernels: Option<PatternKernels>,
    driver: bool,
    round: Cell<u64>,
    round_bytes: Cell<usize>,
    wrong: Cell<u64>,
}

impl Memory {
    fn new(o: &Opts, len: usize, driver: bool) -> Memory {
        let mut m = Memory {
            _gpu: None,
            _host: Vec::new(),
            base: std::ptr::null_mut(),
            kind: MemType::Host,
            kernels: None,
            driver,
            round: Cell::new(0),
            round_bytes: Cell::new(0),
            wrong: Cell::new(0),
        };
        match o.gpu {
            Some(n) => {
                let dev = Device::open(n).expect("GPU");
                let mem = DeviceMem::new(&dev, len).expect("GPU memory");
                let scratch = DeviceMem::new(&dev, TOUCH_BYTES).expect("GPU memory");
                let stream = Stream::new(&dev).expect("stream");
                if o.pattern {
                    m.kernels =
                        Some(PatternKernels::load(&dev, 1, &mem, Duration::from_secs(10)).expect("kernels"));
                }
                (m.base, m.kind) = (mem.ptr as *mut c_void, MemType::Cuda);
                m._gpu = Some((dev, mem, scratch, stream));
            }
            None => {
                m._host = vec![1u8; len];
                m.base = m._host.as_mut_ptr() as *mut c_void;
            }
        }
        m
    }

    /// Work in this process's CUDA context between iterations, as kvxfer's
    /// pattern kernels: a 1 MiB memset with --touch, and with --rewrite the
    /// first `bytes` of the buffer (the driver's source, the target's
    /// destination), with --pattern kvxfer's fill or check of them.
    fn touch(&self, o: &Opts, bytes: usize, pattern: bool) {
        let Some((dev, mem, scratch, stream)) = &self._gpu else { return };
        dev.bind().expect("context");
        for (on, ptr, n) in [(o.touch, scratch.ptr, TOUCH_BYTES), (o.rewrite, mem.ptr, bytes)] {
            if on && n > 0 {
                // SAFETY: both allocations hold at least n bytes.
                unsafe { cudarc::driver::result::memset_d8_async(ptr, 7, n, stream.raw) }.expect("memset");
            }
        }
        stream.wait(Instant::now() + Duration::from_secs(10), "the memset").expect("memset");
        if let (Some(k), true) = (&self.kernels, pattern && bytes > 0) {
            self.pattern(k, mem, bytes);
        }
    }

    /// kvxfer's pattern work: the driver writes round N's pattern, the
    /// target checks round N-1's (the last put's bytes).
    fn pattern(&self, k: &PatternKernels, mem: &DeviceMem, bytes: usize) {
        // As kvxfer's request of Llama-3.1-8B (128 KiB per token) of that size.
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").expect("a preset"), 1, 16).expect("a shape");
        let layout = RequestLayout::new(
            &shape,
            (bytes / shape.bytes_per_token() as usize) as u32,
            Granularity::Request,
        );
        // Rounds count afresh for each size.
        if self.round_bytes.replace(bytes) != bytes {
            self.round.set(0);
        }
        let n = self.round.get();
        self.round.set(n + 1);
        if self.driver {
            k.fill(mem, &layout, n).expect("fill");
        } else if n > 0 {
            let check = k.verify(mem, &layout, n - 1).expect("verify");
            self.wrong.set(self.wrong.get() + check.wrong_bytes);
        }
    }
}

fn send_blob(s: &mut TcpStream, b: &[u8]) {
    s.write_all(&(b.len() as u64).to_le_bytes()).and_then(|_| s.write_all(b)).expect("setup write");
}

fn recv_blob(s: &mut TcpStream) -> Vec<u8> {
    let mut n = [0u8; 8];
    s.read_exact(&mut n).expect("setup read");
    let mut b = vec![0u8; u64::from_le_bytes(n) as usize];
    s.read_exact(&mut b).expect("setup read");
    b
}

fn wait_op(node: &Node, op: Op) {
    if let Op::Pending(r) = op {
        wait_req(node, r, false);
    }
}

fn wait_req(node: &Node, r: Request, tagged: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Poll::Done(_) = node.poll(r, tagged, "waiting").expect("UCX request") {
            return;
        }
        node.progress();
        assert!(Instant::now() < deadline, "a UCX request took over 60 s");
    }
}

/// Both sides: map the buffer, swap worker addresses, keys and bases.
fn connect(o: &Opts, mem: &Memory, len: usize, s: &mut TcpStream) -> (Node, u64) {
    let ucp = Ucp::open(o.lib.as_deref()).expect("UCX");
    let mut node = Node::new(ucp, mem.base, len, mem.kind, "peer").expect("UCX node");
    send_blob(s, &node.address().expect("address"));
    send_blob(s, &node.packed_rkey().expect("rkey"));
    send_blob(s, &node.base().to_le_bytes());
    let (addr, rkey, base) = (recv_blob(s), recv_blob(s), recv_blob(s));
    node.connect(&addr, o.peer_mode).expect("endpoint");
    node.use_remote_key(&rkey).expect("rkey");
    let remote = u64::from_le_bytes(base.try_into().expect("8 bytes"));
    // A tag each way, so both endpoints are wired up before any timing.
    let hello = node.recv_signal(GO, u64::MAX).expect("receive");
    wait_op(&node, node.signal(GO).expect("send"));
    wait_req(&node, hello, true);
    (node, remote)
}

fn line(what: &str, bytes: usize, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let median = ns[ns.len() / 2] as f64;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64;
    // The tags alone move no data.
    let rate = match what {
        "go-done" => "-".to_string(),
        _ => format!("{:.1}", bytes as f64 / median),
    };
    println!(
        "{what:<10} {:>6} MiB  median {:>9.1} us  mean {:>9.1} us  {rate:>8} GB/s",
        bytes >> 20,
        median / 1e3,
        mean / 1e3,
    );
}

fn target(port: &str, o: &Opts) {
    let max = *o.sizes.iter().max().expect("a size");
    let mem = Memory::new(o, max, false);
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("listen");
    println!("listening on {}", listener.local_addr().expect("address"));
    let (mut s, _) = listener.accept().expect("accept");
    let (node, _) = connect(o, &mem, max, &mut s);
    // Progress the worker while waiting for the next command: a put that
    // UCX carries as active messages needs the target's progress.
    s.set_nonblocking(true).expect("non-blocking");
    let mut pending = Vec::new();
    loop {
        // The driver says which loop comes next: "signalled BYTES" or "end".
        let cmd = loop {
            if let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                break String::from_utf8_lossy(&line).into_owned();
            }
            let mut chunk = [0u8; 256];
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    node.progress();
                }
                Err(e) => panic!("command: {e}"),
            }
        };
        if cmd.trim() == "end" {
            if o.pattern {
                println!("target: {} wrong bytes in its pattern checks", mem.wrong.get());
            }
            return;
        }
        let mut words = cmd.split_whitespace();
        let (what, bytes) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("0"));
        let bytes: usize = bytes.parse().expect("a size");
        let mut times = Vec::new();
        for it in 0..WARMUP + o.iterations {
            let signalled = what == "signalled";
            mem.touch(o, if signalled { bytes } else { 0 }, signalled);
            let ready = node.recv_signal(READY, u64::MAX).expect("receive");
            wait_op(&node, node.signal(CLEAR).expect("clear"));
            wait_req(&node, ready, true);
            let done = node.recv_signal(DONE, u64::MAX).expect("receive");
            let t0 = Instant::now();
            wait_op(&node, node.signal(GO).expect("go"));
            wait_req(&node, done, true);
            if it >= WARMUP {
                times.push(t0.elapsed().as_nanos() as u64);
            }
        }
        let text: Vec<String> = times.iter().map(u64::to_string).collect();
        s.set_nonblocking(false).expect("blocking");
        writeln!(s, "{what} {bytes} {}", text.join(",")).expect("results");
        s.set_nonblocking(true).expect("non-blocking");
    }
}

fn drive(addr: &str, o: &Opts) {
    let max = *o.sizes.iter().max().expect("a size");
    let mem = Memory::new(o, max, true);
    let mut s = TcpStream::connect(addr).expect("connect");
    let (node, remote) = connect(o, &mem, max, &mut s);
    let mut results = BufReader::new(s.try_clone().expect("socket"));
    let put = |bytes: usize| node.put(0, 0, bytes, remote).expect("put");
    // Frees the finished puts' requests; returns how many there were.
    let reap = || {
        let mut n = 0;
        node.drain("put", &mut |_, _| {
            n += 1;
            Ok(())
        })
        .expect("puts");
        n
    };
    for &bytes in &o.sizes {
        // window: as ucx_perftest ucp_put_bw.
        let mut rates = Vec::new();
        for rep in 0..WARMUP + 3 {
            let t0 = Instant::now();
            let mut outstanding = 0;
            for _ in 0..o.iterations {
                if let Op::Pending(_) = put(bytes) {
                    outstanding += 1;
                }
                while outstanding >= WINDOW {
                    node.progress();
                    outstanding -= reap();
                }
            }
            wait_op(&node, node.flush().expect("flush"));
            reap();
            if rep >= WARMUP {
                rates.push(t0.elapsed().as_nanos() as u64 / o.iterations as u64);
            }
        }
        line("window", bytes, rates);
        // isolated: put + flush, one at a time.
        let mut times = Vec::new();
        for it in 0..WARMUP + o.iterations {
            mem.touch(o, bytes, false);
            let t0 = Instant::now();
            let _ = put(bytes);
            wait_op(&node, node.flush().expect("flush"));
            reap();
            if it >= WARMUP {
                times.push(t0.elapsed().as_nanos() as u64);
            }
        }
        line("isolated", bytes, times);
        // signalled (with a put) and go-done (without), timed by the target.
        for (what, with_put) in [("signalled", true), ("go-done", false)] {
            writeln!(s, "{what} {bytes}").expect("command");
            for _ in 0..WARMUP + o.iterations {
                let clear = node.recv_signal(CLEAR, u64::MAX).expect("receive");
                wait_req(&node, clear, true);
                mem.touch(o, if with_put { bytes } else { 0 }, with_put);
                let go = node.recv_signal(GO, u64::MAX).expect("receive");
                wait_op(&node, node.signal(READY).expect("ready"));
                wait_req(&node, go, true);
                if with_put {
                    let _ = put(bytes);
                    wait_op(&node, node.flush().expect("flush"));
                    reap();
                }
                wait_op(&node, node.signal(DONE).expect("done"));
            }
            let mut reply = String::new();
            results.read_line(&mut reply).expect("results");
            let times = reply.split_whitespace().nth(2).unwrap_or("").split(',');
            line(what, bytes, times.map(|t| t.parse().expect("a time")).collect());
        }
    }
    writeln!(s, "end").expect("end");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let o = opts(&args);
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("target"), Some(port)) => target(port, &o),
        (Some("drive"), Some(addr)) => drive(addr, &o),
        _ => {
            eprintln!("usage: ucx_bare target PORT [options] | ucx_bare drive HOST:PORT [options]");
            std::process::exit(2);
        }
    }
}
