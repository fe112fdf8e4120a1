//! What kvxfer's own bookkeeping costs per message, beyond the transport.
//!
//! Two ways to move the same 4 KiB messages over loopback TCP, alternated:
//! - bare: two threads, the same wire format and system calls as the tcp
//!   transport (writev of up to 512 header+payload pairs, reads through a
//!   64 KiB buffer), and nothing else;
//! - kvxfer: the real `kvxfer pair` binary, with keys checked, every message
//!   timestamped into a histogram, a control round trip per request and the
//!   pattern checked outside the timed region.
//!
//! The difference of the per-message times is the harness overhead.
//! Run: cargo bench --bench harness_overhead [-- ROUNDS]

mod common;

use common::median;
use kvxfer::memory::Buffer;
use std::io::{BufReader, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Instant;

const MESSAGE: usize = 4096;
const HEADER: usize = 32;
/// kvxfer's request at these settings: 32 layers x K,V x 256 blocks of 4 KiB.
const MESSAGES_PER_REQUEST: usize = 16_384;
const REQUESTS: usize = 20;

/// Untimed requests first, as kvxfer's warm-up: page faults, slow start.
const WARMUP: usize = 2;

/// Nanoseconds per message of the bare loop.
fn bare() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let total = MESSAGES_PER_REQUEST * (WARMUP + REQUESTS);
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        // The same buffers as kvxfer's (mmap, huge pages), filled like them.
        let mut buf = Buffer::host(MESSAGES_PER_REQUEST * MESSAGE).unwrap();
        buf.host_slice_mut().unwrap().fill(7);
        let payload = buf.host_slice().unwrap();
        let header = [1u8; HEADER];
        let mut sent = 0;
        while sent < total {
            let batch = 512.min(total - sent);
            let mut iov = Vec::with_capacity(2 * batch);
            for k in 0..batch {
                let m = (sent + k) % MESSAGES_PER_REQUEST;
                iov.push(IoSlice::new(&header));
                iov.push(IoSlice::new(&payload[m * MESSAGE..(m + 1) * MESSAGE]));
            }
            let mut bufs = &mut iov[..];
            while !bufs.is_empty() {
                let n = s.write_vectored(bufs).unwrap();
                IoSlice::advance_slices(&mut bufs, n);
            }
            sent += batch;
        }
    });
    let (s, _) = listener.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::with_capacity(64 << 10, s);
    let mut buf = Buffer::host(MESSAGES_PER_REQUEST * MESSAGE).unwrap();
    let dst = buf.host_slice_mut().unwrap();
    let mut header = [0u8; HEADER];
    let mut t = Instant::now();
    for i in 0..total {
        if i == WARMUP * MESSAGES_PER_REQUEST {
            t = Instant::now();
        }
        let m = i % MESSAGES_PER_REQUEST;
        r.read_exact(&mut header).unwrap();
        r.read_exact(&mut dst[m * MESSAGE..(m + 1) * MESSAGE]).unwrap();
    }
    let ns = t.elapsed().as_nanos() as f64 / (REQUESTS * MESSAGES_PER_REQUEST) as f64;
    writer.join().unwrap();
    ns
}

/// Nanoseconds per message inside kvxfer's timed requests (mean request
/// time over messages per request), from the real binary's JSON report.
fn kvxfer() -> f64 {
    let dir = std::env::temp_dir().join(format!("kvxfer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    let status = Command::new(env!("CARGO_BIN_EXE_kvxfer"))
        .args(["pair", "--layers", "32", "--kv-heads", "1", "--head-dim", "128", "--block-size", "16"])
        .args([
            "-p",
            "4096",
            "-g",
            "block",
            "-n",
            &REQUESTS.to_string(),
            "-w",
            &WARMUP.to_string(),
            "-q",
            "--json",
        ])
        .arg(&json)
        .status()
        .expect("run kvxfer");
    assert!(status.success(), "kvxfer pair failed");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let point = &report["points"][0];
    assert_eq!(point["message_bytes"], MESSAGE);
    assert_eq!(point["messages"], MESSAGES_PER_REQUEST);
    std::fs::remove_dir_all(&dir).ok();
    point["request_ns"]["mean"].as_f64().unwrap() / MESSAGES_PER_REQUEST as f64
}

fn main() {
    let rounds = common::rounds(7);
    let (mut b, mut k) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        b.push(bare());
        k.push(kvxfer());
        println!("round {round}: bare {:.0} ns/msg, kvxfer {:.0} ns/msg", b[round], k[round]);
    }
    let (b, k) = (median(b), median(k));
    println!("4 KiB messages over loopback TCP, median of {rounds} alternating rounds:");
    println!("  bare loop   {b:8.0} ns per message");
    println!("  kvxfer      {k:8.0} ns per message");
    println!("  overhead    {:8.0} ns per message ({:+.1}%)", k - b, 100.0 * (k - b) / b);
}
