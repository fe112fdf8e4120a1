//! The control protocol, fuzzed: a real sender's handshake is captured
//! through a recording proxy, then replayed mutated (bit flips, truncation,
//! length fields 0, 2^31, 2^32-1 and just over the frame limit, spliced
//! random bytes, JSON values negative, huge or of the wrong type, the role
//! swapped) against one real receiver in service mode. It must never panic,
//! die, hang past its timeout or allocate for a frame over the limit, and
//! must go on serving real senders.
//!
//! KVXFER_FUZZ_CASES (default 2000) and KVXFER_FUZZ_SEED choose the cases;
//! scripts/fuzz-control.sh runs many more, a new seed each round.

mod common;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The receiver's limit on a control frame (src/session/mod.rs).
const MAX_FRAME: u64 = 64 << 20;
/// A small real run: two layers of one KV head, one request.
const SMALL: [&str; 12] =
    ["-m", "llama-3.1-8b", "--layers", "2", "--kv-heads", "1", "-p", "16", "-n", "1", "-w", "0"];

/// xorshift64*: small, deterministic, enough for choosing mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What a real sender writes on its control connection, recorded by a proxy
/// between it and a real receiver: up to and with its plan (the preamble,
/// then the hello frame), and all it wrote after (probes, setup, requests).
fn capture() -> (Vec<u8>, Vec<u8>) {
    let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", "5s"]);
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let recorder = std::thread::spawn(move || {
        let (mut from_sender, _) = proxy.accept().unwrap();
        let mut to_receiver = TcpStream::connect(&addr).unwrap();
        let (mut back_from, mut back_to) =
            (to_receiver.try_clone().unwrap(), from_sender.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut back_from, &mut back_to));
        let mut seen = Vec::new();
        let mut chunk = [0u8; 65536];
        while let Ok(n) = from_sender.read(&mut chunk) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
            if to_receiver.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
        let _ = to_receiver.shutdown(Shutdown::Write);
        seen
    });
    let f = run(SEND, &[&["--connect", &proxy_addr][..], &SMALL[..]].concat(), secs(60));
    f.expect_code(0);
    recv.finish(secs(20)).expect_code(0);
    let seen = recorder.join().unwrap();
    // The preamble and the first frame: the plan.
    assert_eq!(&seen[..4], b"KVXF", "a kvxfer preamble");
    let len = u32::from_le_bytes(seen[8..12].try_into().unwrap()) as usize;
    let hello: Value = serde_json::from_slice(&seen[12..12 + len]).expect("the hello frame is JSON");
    assert_eq!(hello["type"], "hello", "{hello}");
    (seen[..12 + len].to_vec(), seen[12 + len..].to_vec())
}

/// The hello frame's JSON, and a whole handshake made from another one.
fn hello_of(capture: &[u8]) -> Value {
    serde_json::from_slice(&capture[12..]).unwrap()
}

fn with_hello(capture: &[u8], hello: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(hello).unwrap();
    let mut out = capture[..8].to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Sets the hello's digest to its (mutated) plan's, as a sender of another
/// build would send it; false where the plan does not parse or validate.
fn redigest(hello: &mut Value) -> bool {
    let Ok(plan) = serde_json::from_value::<kvxfer::plan::Plan>(hello["plan"].clone()) else { return false };
    if plan.validate().is_err() {
        return false;
    }
    hello["plan_digest"] = Value::from(plan.digest());
    true
}

/// Hellos that crashed or overloaded the receiver before the fixes the
/// fuzzing prompted (found with matched digests): each is now refused.
fn hostile(capture: &[u8]) -> Vec<(String, Vec<u8>)> {
    let patches = [
        ("/transport/streams", Value::from(0)),
        ("/transport/streams", Value::from(u32::MAX)),
        ("/transport/in_flight", Value::from(0)),
        ("/plan/shape/tp", Value::from(0)),
        ("/plan/shape/model/layers", Value::from(u32::MAX)),
        ("/plan/shape/model/attention/head_dim", Value::from(u32::MAX)),
        ("/plan/prompt_lengths", serde_json::json!([u32::MAX])),
        ("/plan/pool_blocks", Value::from(u32::MAX)),
    ];
    patches
        .into_iter()
        .map(|(path, v)| {
            let mut hello = hello_of(capture);
            hello["plan"]["granularities"] = serde_json::json!(["block"]);
            *hello.pointer_mut(path).unwrap_or_else(|| panic!("{path} in the hello")) = v.clone();
            // The digest a sender would send for it, where one can be derived.
            redigest(&mut hello);
            (format!("{path} = {v}"), with_hello(capture, &hello))
        })
        .collect()
}

/// Every path to a number, string or bool in `v`.
fn leaves(v: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            m.iter().for_each(|(k, x)| leaves(x, [path.clone(), vec![k.clone()]].concat(), out))
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| leaves(x, [path.clone(), vec![i.to_string()]].concat(), out)),
        _ => out.push(path),
    }
}

fn leaf_mut<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
        other => &mut other[k.as_str()],
    })
}

/// Case `i`: its name and the bytes to send.
fn mutate(rng: &mut Rng, capture: &[u8], i: usize) -> (String, Vec<u8>) {
    let mut bytes = capture.to_vec();
    match i % 7 {
        0 => {
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            (format!("{flips} bit flips"), bytes)
        }
        1 => {
            let at = rng.below(bytes.len());
            bytes.truncate(at);
            (format!("truncated at byte {at}"), bytes)
        }
        2 => {
            let lens = [0u64, 1 << 31, u32::MAX as u64, MAX_FRAME + 1];
            let len = lens[(i / 7) % lens.len()];
            bytes[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            (format!("frame length {len}"), bytes)
        }
        3 => {
            let (at, n) = (rng.below(bytes.len()), 1 + rng.below(64));
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, junk);
            (format!("{n} random bytes spliced in at {at}"), bytes)
        }
        4 | 5 => {
            let mut hello = hello_of(capture);
            let mut paths = Vec::new();
            leaves(&hello, Vec::new(), &mut paths);
            let path = paths[rng.below(paths.len())].clone();
            let values = [
                Value::from(0),
                Value::from(-1),
                Value::from(i64::MIN),
                Value::from(u64::MAX),
                Value::from(1e300),
                Value::from("x".repeat(1 + rng.below(100))),
                Value::Array(vec![Value::Null; 3]),
                Value::Null,
                serde_json::json!({"nested": {"deep": [1, 2, 3]}}),
                Value::Bool(true),
            ];
            let value = values[rng.below(values.len())].clone();
            *leaf_mut(&mut hello, &path) = value.clone();
            // Half the time as a sender whose build derives the plan this way:
            // the digest matches, and the plan goes past that check.
            let redigested = i % 7 == 5 && redigest(&mut hello);
            let how = if redigested { ", digest matched" } else { "" };
            (format!("{} = {value}{how}", path.join(".")), with_hello(capture, &hello))
        }
        _ => {
            let mut hello = hello_of(capture);
            hello["role"] = Value::from("receiver");
            ("role swapped to receiver".into(), with_hello(capture, &hello))
        }
    }
}

/// The receiver's peak resident memory, kB (VmHWM).
fn peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_mutated_handshake_never_crashes_hangs_or_stops_the_receiver() {
    let cases: usize = std::env::var("KVXFER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seed: u64 =
        std::env::var("KVXFER_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x6b76_7866);
    let (capture, after) = capture();
    let mut service = Proc::start(RECV, &["--listen", "127.0.0.1:0", "--forever", "--timeout", "1s"]);
    assert!(service.wait_for("listening on ", secs(10)), "{}", service.stderr());
    let line = service.stderr().lines().find(|l| l.contains("listening on ")).unwrap().to_string();
    let addr = line.rsplit("listening on ").next().unwrap().trim().to_string();
    let pid = service.child.id();
    let mut rng = Rng(seed.max(1));
    let started = Instant::now();
    let hostile = hostile(&capture);
    let count = hostile.len();
    let mut cases_in_order = hostile.into_iter();
    for i in 0..cases + count {
        let (mut what, mut bytes) = match cases_in_order.next() {
            Some(h) => h,
            None => mutate(&mut rng, &capture, i - count),
        };
        // Every other case goes on as the sender did (its probes, then its
        // transport setup): an accepted hello takes the receiver further.
        if i % 2 == 1 {
            bytes.extend_from_slice(&after);
            what += ", then the sender's later frames";
        }
        let case = format!("seed {seed} case {i} ({what})");
        let mut s = match TcpStream::connect(&addr) {
            Ok(s) => s,
            Err(e) => {
                std::thread::sleep(Duration::from_millis(200));
                let status = service.child.try_wait();
                let log = service.stderr();
                let tail: Vec<&str> = log.lines().filter(|l| !l.starts_with("  ")).rev().take(6).collect();
                panic!("{case}: the service is gone ({e}; {status:?}); its last lines:\n{}", tail.join("\n"));
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let sent = Instant::now();
        // The service may close early (a refusal): what it read is enough.
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(Shutdown::Write);
        let mut answer = Vec::new();
        let read = s.read_to_end(&mut answer);
        // Its own 1 s timeout, and slack: never a hang.
        assert!(
            sent.elapsed() < secs(5),
            "{case}: the connection stayed open {:?} ({read:?})",
            sent.elapsed()
        );
        if let Ok(Some(status)) = service.child.try_wait() {
            panic!("{case}: the service ended ({status}):\n{}", service.stderr());
        }
        // Now and then, and at the end, a real sender is still served.
        if i % 100 == 99 || i + 1 == cases + count {
            let f = run(SEND, &[&["--connect", &addr][..], &SMALL[..]].concat(), secs(60));
            assert_eq!(f.code, Some(0), "{case}: a real sender after it failed:\n{}", f.stderr);
        }
    }
    let elapsed = started.elapsed();
    let peak = peak_kb(pid);
    service.signal(libc::SIGTERM);
    let f = service.finish(secs(15));
    f.expect_code(0);
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
    // The hostile hellos: each refused with its reason.
    for why in
        ["invalid transport: 0 tcp streams", "invalid transport: 4294967295 tcp streams", "invalid plan"]
    {
        assert!(f.stderr.contains(why), "{why}: {}", f.stderr);
    }
    // Lengths over the limit are refused from the length alone, unallocated.
    if cases >= 30 {
        for len in [1u64 << 31, u32::MAX as u64, MAX_FRAME + 1] {
            assert!(f.stderr.contains(&format!("sent a {len}-byte control frame")), "{len}: {}", f.stderr);
        }
    }
    assert!(peak < 512 * 1024, "the service peaked at {peak} kB");
    eprintln!("{cases} cases in {elapsed:?}, seed {seed}, the service peaked at {peak} kB");
    if std::env::var("KVXFER_FUZZ_LOG").is_ok() {
        eprintln!("{}", f.stderr);
    }
}
