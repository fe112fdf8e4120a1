//! Why iperf3 with large writes outruns any tool that moves real data: it
//! sends and receives one small buffer over and over, which stays in the CPU
//! caches. This moves 4 GiB over loopback TCP in 1 MiB writes, from and into
//! buffers of 1 MiB (iperf3's `-l 1M` case) and of 256 MiB (a KV request in
//! DRAM), with the same socket code, alternating, and prints the medians.
//! Run: cargo bench --bench loopback_locality [-- ROUNDS]

mod common;

use common::median;
use kvxfer::memory::Buffer;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

const TOTAL: usize = 4 << 30;
const WRITE: usize = 1 << 20;

/// GB/s moving TOTAL bytes through buffers of `size` bytes on both sides.
fn stream(size: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut buf = Buffer::host(size).unwrap();
        buf.host_slice_mut().unwrap().fill(1);
        let src = buf.host_slice().unwrap();
        let mut sent = 0;
        while sent < TOTAL {
            let at = sent % size;
            s.write_all(&src[at..at + WRITE]).unwrap();
            sent += WRITE;
        }
    });
    let (mut s, _) = listener.accept().unwrap();
    let mut buf = Buffer::host(size).unwrap();
    buf.host_slice_mut().unwrap().fill(0);
    let dst = buf.host_slice_mut().unwrap();
    let t = Instant::now();
    let mut got = 0;
    while got < TOTAL {
        let at = got % size;
        let n = s.read(&mut dst[at..at + WRITE.min(size - at)]).unwrap();
        assert!(n > 0);
        got += n;
    }
    let gbps = TOTAL as f64 / t.elapsed().as_nanos() as f64;
    writer.join().unwrap();
    gbps
}

fn main() {
    let rounds = common::rounds(5);
    let (mut hot, mut cold) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        hot.push(stream(1 << 20));
        cold.push(stream(256 << 20));
        println!("round {r}: 1 MiB buffers {:.2} GB/s, 256 MiB buffers {:.2} GB/s", hot[r], cold[r]);
    }
    let (h, c) = (median(hot), median(cold));
    println!("4 GiB over loopback TCP in 1 MiB writes, median of {rounds} alternating rounds:");
    println!("  buffers of 1 MiB (cache-hot, as iperf3 -l 1M)  {h:.2} GB/s");
    println!(
        "  buffers of 256 MiB (in DRAM, as a KV request)  {c:.2} GB/s  ({:.0}% of the former)",
        100.0 * c / h
    );
}
