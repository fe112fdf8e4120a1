//! The fault matrix: what each fault produces, as a table of cases. Each
//! row asserts the exit codes, the side the message names, how long the
//! survivor took to exit, and that the JSON it wrote is valid with the
//! points measured before the fault.
//!
//! Process faults run over tcp, ucx and ofi (tcp and shm providers) on host
//! memory: the victim (sender or receiver) is held at a phase of its run by
//! the `KVXFER_HOLD_AT` test hook (src/hold.rs: handshake, transport setup,
//! mid-transfer of the second point, the receiver's verification of it),
//! so that its peer waits in that phase, then killed (SIGKILL), stopped
//! (SIGSTOP) or interrupted (SIGINT). Other faults follow: a peer that
//! never comes, garbage both ways, silent peers, the port in use, an
//! unroutable address, output files that cannot be written, missing
//! libraries. A link that dies or is shaped mid-run is in tests/shaped.rs.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every wait of these runs: short, so that stopped peers are given up soon.
const TIMEOUT: &str = "2s";
/// Two points (64 and 128 tokens): the held request is the second point's,
/// so the first is measured before the fault.
const PLAN: [&str; 10] = ["-p", "64,128", "-g", "layer", "-n", "3", "-w", "1", "--timeout", TIMEOUT];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Sender,
    Receiver,
}

impl Victim {
    fn peer(self) -> &'static str {
        match self {
            Victim::Sender => "receiver",
            Victim::Receiver => "sender",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Victim::Sender => "sender",
            Victim::Receiver => "receiver",
        }
    }
}

/// The transports of the matrix, as sender options.
const VIAS: [(&str, &[&str]); 4] = [
    ("tcp", &["-t", "tcp"]),
    // Error mode none: shared memory on one host (in mode peer UCX itself
    // aborts a process whose emulated-put peer dies; see docs/failures.md).
    ("ucx", &["-t", "ucx", "--ucx-err-mode", "none"]),
    ("ofi-tcp", &["-t", "ofi", "--ofi-provider", "tcp"]),
    ("ofi-shm", &["-t", "ofi", "--ofi-provider", "shm"]),
];

/// The phases a side can be held at, and how many points its peer has
/// finished by then.
fn phases(victim: Victim) -> &'static [(&'static str, usize)] {
    match victim {
        Victim::Sender => &[("handshake", 0), ("setup", 0), ("transfer", 1)],
        Victim::Receiver => &[("handshake", 0), ("setup", 0), ("transfer", 1), ("verify", 1)],
    }
}

/// The JSON report at `path`: valid, with `points` points, and its outcome
/// ("error ..." where a run that never adopted a plan wrote none).
fn report(path: &std::path::Path, points: usize, case: &str) -> String {
    if points == 0 && !path.exists() {
        return "error: no plan adopted, no report".into();
    }
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{case}: no JSON at {path:?}: {e}"));
    let r: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: invalid JSON ({e}):\n{text}"));
    let got = r["points"].as_array().map_or(0, |p| p.len());
    assert_eq!(got, points, "{case}: points measured before the fault");
    r["outcome"].as_str().unwrap_or_default().to_string()
}

/// One process fault: `sig` sent to `victim` held at `phase`, over `via`.
fn process_fault(via: (&str, &[&str]), victim: Victim, (phase, done): (&str, usize), sig: libc::c_int) {
    let case = format!("{} {} held at {phase}, signal {sig}", via.0, victim.name());
    let dir = tempfile::tempdir().unwrap();
    let (send_json, recv_json) = (dir.path().join("send.json"), dir.path().join("recv.json"));
    let hold = |side: Victim, cmd: &mut Command| {
        if side == victim {
            cmd.env("KVXFER_HOLD_AT", phase);
        }
    };
    let mut cmd = Command::new(RECV);
    cmd.args(["--listen", "127.0.0.1:0", "--timeout", TIMEOUT, "--wait-for-sender", "20s"]);
    cmd.args(["--json", recv_json.to_str().unwrap()]);
    hold(Victim::Receiver, &mut cmd);
    let recv = Proc::spawn(cmd);
    assert!(recv.wait_for("listening on ", secs(10)), "{case}: {}", recv.stderr());
    let addr = recv.stderr().rsplit("listening on ").next().unwrap().trim().to_string();
    let mut cmd = Command::new(SEND);
    cmd.args(["--connect", &addr]).args(via.1).args(PLAN).args(["--json", send_json.to_str().unwrap()]);
    hold(Victim::Sender, &mut cmd);
    let send = Proc::spawn(cmd);
    let (held, peer, peer_json) = match victim {
        Victim::Sender => (send, recv, recv_json.clone()),
        Victim::Receiver => (recv, send, send_json.clone()),
    };
    assert!(
        held.wait_for(&format!("holding at {phase}"), secs(30)),
        "{case}: never held\n{}\npeer:\n{}",
        held.stderr(),
        peer.stderr()
    );
    let sent = Instant::now();
    held.signal(sig);
    // The peer's bound: the fault seen at once (a closed socket, an abort),
    // or a stopped process given up after the 2 s timeout; slack for a
    // loaded 2-core machine.
    let bound = if sig == libc::SIGSTOP { secs(12) } else { secs(8) };
    let p = peer.finish(bound + secs(10));
    let took = sent.elapsed();
    assert!(took < bound, "{case}: the {} took {took:?}\n{}", victim.peer(), p.stderr);
    p.expect_code(1);
    assert!(!p.stderr.contains("panicked"), "{case}: {}", p.stderr);
    // The message names the side that failed.
    let error =
        p.stderr.lines().find(|l| l.contains(": error: ")).unwrap_or_else(|| panic!("{case}: {}", p.stderr));
    assert!(error.contains(victim.name()), "{case}: the error does not name the {}: {error}", victim.name());
    if sig == libc::SIGINT {
        assert!(error.contains("interrupted on") && error.contains("(SIGINT)"), "{case}: {error}");
    }
    if sig == libc::SIGSTOP {
        let silence = ["no word from", "no progress from", "before the deadline"];
        assert!(silence.iter().any(|s| error.contains(s)), "{case}: {error}");
    }
    // The survivor's JSON keeps what was measured; the outcome says error.
    let outcome = report(&peer_json, done, &case);
    assert!(outcome.starts_with("error"), "{case}: outcome {outcome}");
    if sig == libc::SIGINT {
        // The interrupted side ends promptly, 130, its report kept too.
        let h = held.finish(secs(10));
        h.expect_code(130);
        let own = match victim {
            Victim::Sender => &send_json,
            Victim::Receiver => &recv_json,
        };
        // Interrupted before any report exists (the handshake), no file is
        // left rather than an empty one.
        let outcome = report(own, done, &case);
        let none = phase == "handshake" && outcome.starts_with("error: no plan");
        assert!(outcome == "interrupted" || none, "{case}: outcome {outcome}");
    } else {
        held.signal(libc::SIGKILL);
    }
}

/// The rows of one transport: each victim, phase and signal.
fn process_faults_over(via: (&str, &[&str])) {
    for victim in [Victim::Sender, Victim::Receiver] {
        for &phase in phases(victim) {
            for sig in [libc::SIGKILL, libc::SIGSTOP, libc::SIGINT] {
                process_fault(via, victim, phase, sig);
            }
        }
    }
}

#[test]
fn process_faults_in_each_phase_over_tcp_and_ucx() {
    // Two transports side by side; ofi's below, the shm provider alone.
    let ucx = std::thread::spawn(|| process_faults_over(VIAS[1]));
    process_faults_over(VIAS[0]);
    ucx.join().unwrap();
}

#[test]
fn process_faults_in_each_phase_over_ofi() {
    process_faults_over(VIAS[2]);
    process_faults_over(VIAS[3]);
}

/// A listener that answers each connection with `answer`, then holds it.
fn fake_receiver(answer: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut pre = [0u8; 8];
            let _ = s.read_exact(&mut pre);
            let _ = s.write_all(answer);
            std::thread::sleep(Duration::from_secs(6));
        }
    });
    (addr, t)
}

#[test]
fn peers_that_never_come_speak_garbage_or_stay_silent() {
    let small = ["-p", "64", "-n", "1", "-w", "0", "--timeout", TIMEOUT];
    // (what, exit code, the message, the longest it may take)
    let mut rows: Vec<(&str, Option<i32>, String, Duration, Finished)> = Vec::new();
    // No receiver: refused until the timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let f = run(SEND, &[&["--connect", &format!("127.0.0.1:{port}")][..], &small[..]].concat(), secs(20));
    rows.push(("no receiver", Some(1), format!("no receiver at 127.0.0.1:{port}"), secs(6), f));
    // No sender.
    let f = run(RECV, &["--listen", "127.0.0.1:0", "--wait-for-sender", "1s"], secs(20));
    rows.push(("no sender", Some(1), "no sender connected".into(), secs(5), f));
    // A "receiver" that answers garbage.
    let (addr, t) = fake_receiver(b"HTTP/1.1 400 Bad\r\n");
    let f = run(SEND, &[&["--connect", &addr][..], &small[..]].concat(), secs(20));
    rows.push(("garbage from the receiver", Some(1), "is not a kvxfer receiver".into(), secs(4), f));
    drop(t);
    // A "receiver" that accepts and says nothing.
    let (addr, t) = fake_receiver(b"");
    let f = run(SEND, &[&["--connect", &addr][..], &small[..]].concat(), secs(20));
    rows.push(("silent receiver", Some(1), "no word from the receiver".into(), secs(6), f));
    drop(t);
    for (what, code, needle, bound, f) in rows {
        assert_eq!(f.code, code, "{what}: {}", f.stderr);
        assert!(f.stderr.contains(&needle), "{what}: lacks {needle:?}: {}", f.stderr);
        assert!(f.elapsed < bound, "{what}: took {:?}", f.elapsed);
        assert!(!f.stderr.contains("panicked"), "{what}: {}", f.stderr);
    }
    // Garbage and silence sent to a receiver are passed over: the real
    // sender after them is served.
    let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", TIMEOUT]);
    let mut junk = std::net::TcpStream::connect(&addr).unwrap();
    junk.write_all(b"\x00\xffGET / HTTP/1.1\r\n\r\n").unwrap();
    let silent = std::net::TcpStream::connect(&addr).unwrap();
    // Its own timeout outlasts the receiver's wait on the silent one.
    let f = run(SEND, &["--connect", &addr, "-p", "64", "-n", "1", "-w", "0", "--timeout", "10s"], secs(30));
    f.expect_code(0);
    let r = recv.finish(secs(10));
    r.expect_code(0);
    // The junk is passed over; the silent one, greeted beside the sender,
    // may still be within its handshake deadline when the run ends.
    assert!(r.stderr.matches("ignoring a connection from").count() >= 1, "{}", r.stderr);
    drop((junk, silent));
}

#[test]
fn the_port_in_use_an_unroutable_address_unwritable_outputs_and_missing_libraries() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let f = run(RECV, &["--listen", &format!("127.0.0.1:{port}")], secs(10));
    f.expect_code(1).expect_stderr(&format!("cannot listen on 127.0.0.1:{port}: Address already in use"));
    let pair = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = Command::new(KVXFER);
        cmd.args(["pair", "-p", "64", "-n", "1", "-w", "0"]).args(extra);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        Proc::spawn(cmd).finish(secs(30))
    };
    let cases: [(&str, Finished, i32, &str); 6] = [
        (
            "JSON on a full disk",
            pair(&["--json", "/dev/full"], None),
            1,
            "writing /dev/full: writing JSON: No space",
        ),
        ("CSV on a full disk", pair(&["--csv", "/dev/full"], None), 1, "/dev/full"),
        (
            "JSON in a missing folder",
            pair(&["--json", "/nonexistent/r.json"], None),
            2,
            "cannot write /nonexistent",
        ),
        (
            "UCX missing",
            pair(&["-t", "ucx"], Some(("KVXFER_UCX_LIB", "/nonexistent/libucp.so.0"))),
            1,
            "cannot load UCX (/nonexistent/libucp.so.0",
        ),
        (
            "libfabric missing",
            pair(&["-t", "ofi"], Some(("KVXFER_OFI_LIB", "/nonexistent/libfabric.so.1"))),
            1,
            "cannot load libfabric (/nonexistent/libfabric.so.1",
        ),
        (
            "NCCL missing",
            run(
                SEND,
                &[
                    "--connect",
                    "127.0.0.1:9",
                    "-t",
                    "nccl",
                    "--memory",
                    "gpu",
                    "--nccl-lib",
                    "/nonexistent/libnccl.so.2",
                ],
                secs(10),
            ),
            1,
            "cannot load NCCL (/nonexistent/libnccl.so.2",
        ),
    ];
    for (what, f, code, needle) in cases {
        assert_eq!(f.code, Some(code), "{what}: {}", f.stderr);
        assert!(f.stderr.contains(needle), "{what}: lacks {needle:?}: {}", f.stderr);
        assert!(!f.stderr.contains("panicked"), "{what}: {}", f.stderr);
    }
    // An address no route leads to: a network namespace with only a loopback, down.
    let ns = format!("kvnoroute{}", std::process::id() % 100_000);
    if let Err(why) = sh(&["ip", "netns", "add", &ns]) {
        eprintln!("skipping the unroutable row: cannot make a network namespace ({why})");
        return;
    }
    let start = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, SEND, "--connect", "10.213.250.1:7477", "--timeout", "1s"])
        .output()
        .unwrap();
    let _ = sh(&["ip", "netns", "del", &ns]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no receiver at 10.213.250.1:7477") && stderr.contains("unreachable"),
        "{stderr}"
    );
    assert!(start.elapsed() < secs(6), "took {:?}", start.elapsed());
}
