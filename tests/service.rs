//! `kvxfer-recv --forever`: a receiver that stays up through whatever its
//! clients do, serves real senders one after another, and tells a sender
//! that comes during a run that it is busy.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Connects, writes `bytes`, lingers `hold`, hangs up.
fn client(addr: &str, bytes: &[u8], hold: Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    std::thread::sleep(hold);
}

fn service(extra: &[&str]) -> (Proc, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let json_dir = dir.path().join("runs");
    let mut args = vec!["--forever", "--timeout", "2s", "--json-dir", json_dir.to_str().unwrap(), "-q"];
    args.extend_from_slice(extra);
    let (p, addr) = receiver("127.0.0.1:0", &args);
    (p, addr, dir)
}

fn reports(dir: &tempfile::TempDir) -> Vec<(String, serde_json::Value)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.iter().map(|p| (p.file_name().unwrap().to_str().unwrap().to_string(), json(p))).collect()
}

#[test]
fn nothing_a_client_does_ends_the_service() {
    let (svc, addr, dir) = service(&["--expect-model", "llama-3.1-8b"]);
    let short = Duration::from_millis(200);
    // A plan the service refuses: the sender hears why, the service goes on.
    let refused = run(SEND, &["-c", &addr, "-m", "llama-3.1-70b", "-p", "64", "-n", "1"], secs(30));
    refused.expect_code(1).expect_stderr("refused the run");
    client(&addr, &[0x13, 0x37, 0xff, 0x00].repeat(64), short);
    client(&addr, b"GET / HTTP/1.1\r\nHost: kvxfer\r\n\r\n", short);
    // kvxfer's magic with a protocol version nobody speaks.
    client(&addr, &[b"KVXF".as_slice(), &[0, 99, 0, 0]].concat(), short);
    // Silent past the receiver's 2 s timeout.
    client(&addr, b"", Duration::from_millis(2500));
    assert!(svc.wait_for("no word from the sender", secs(10)), "{}", svc.stderr());
    // A sender killed mid-run.
    let doomed = Proc::start(SEND, &["-c", &addr, "-p", "4096", "-g", "layer", "-n", "100000", "-q"]);
    assert!(svc.wait_for("run 1: sender", secs(20)), "{}", svc.stderr());
    std::thread::sleep(Duration::from_millis(500));
    doomed.signal(libc::SIGKILL);
    assert!(svc.wait_for("run 1 from", secs(20)), "{}", svc.stderr());
    // Then three real senders, one after another.
    for i in 0..3 {
        let args = ["-c", addr.as_str(), "-p", "128,1024", "-g", "request,block", "-n", "3", "-q"];
        run(SEND, &args, secs(60)).expect_code(0);
        assert!(svc.wait_for(&format!("run {} from", i + 2), secs(10)));
    }
    let log = svc.stderr();
    for said in ["not a kvxfer sender", "protocol version mismatch (it speaks 99", "no word from the sender"]
    {
        assert!(log.contains(said), "{said:?} missing:\n{log}");
    }
    assert!(log.contains("run 1 from") && log.contains("failed (exit 1)"), "{log}");
    svc.signal(libc::SIGTERM);
    let ended = svc.finish(secs(10));
    ended.expect_code(0).expect_stderr("SIGTERM ends the service after 4 run(s)");
    // One report per run, in the order they ran; the three real ones clean.
    let runs = reports(&dir);
    assert_eq!(runs.len(), 4, "{:?}", runs.iter().map(|r| &r.0).collect::<Vec<_>>());
    assert!(runs[0].0.contains("-run1-127.0.0.1_"), "{}", runs[0].0);
    assert_ne!(runs[0].1["outcome"], "ok");
    for (name, r) in &runs[1..] {
        assert_sane(r, 4);
        assert_eq!(r["wrong_bytes"], 0, "{name}");
    }
}

#[test]
fn a_sender_that_comes_during_a_run_hears_it_is_busy_at_once() {
    let (svc, addr, _dir) = service(&[]);
    let long = Proc::start(SEND, &["-c", &addr, "-p", "1024", "-n", "100000", "-q"]);
    assert!(svc.wait_for("run 1: sender", secs(20)), "{}", svc.stderr());
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let busy = run(SEND, &["-c", &addr, "-p", "64", "-n", "1"], secs(10));
    let took = began.elapsed();
    busy.expect_code(1).expect_stderr("is busy: serving 127.0.0.1:");
    assert!(busy.stderr.contains(" since 20"), "{}", busy.stderr);
    // Within a second: the service holds it 0.3 s first, in case the run is about to end.
    assert!(took < Duration::from_secs(1), "the busy answer took {took:?}");
    // The run went on, untouched, until its sender was stopped.
    assert!(svc.wait_for("came during a run", secs(5)), "{}", svc.stderr());
    assert!(!svc.stderr().contains("run 1 from"), "{}", svc.stderr());
    long.signal(libc::SIGINT);
    long.finish(secs(20));
    assert!(svc.wait_for("run 1 from", secs(20)), "{}", svc.stderr());
    // Free again: the next sender is served.
    run(SEND, &["-c", &addr, "-p", "64", "-n", "2", "-q"], secs(30)).expect_code(0);
    svc.signal(libc::SIGINT);
    svc.finish(secs(10)).expect_code(0);
}

/// A one-shot receiver tells a second sender it is busy too (the second
/// got "connection reset" once the first run ended), and its run goes on.
#[test]
fn a_second_sender_to_a_one_shot_receiver_hears_it_is_busy() {
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let long = Proc::start(SEND, &["-c", &addr, "-p", "1024", "-n", "100000", "-q"]);
    // The run's header: the first sender is being served.
    assert!(recv.wait_for("# model", secs(20)), "{}", recv.stderr());
    let busy = run(SEND, &["-c", &addr, "-p", "64", "-n", "1"], secs(10));
    busy.expect_code(1).expect_stderr("is busy: serving 127.0.0.1:");
    long.signal(libc::SIGINT);
    long.finish(secs(20)).expect_code(130);
    recv.finish(secs(20)).expect_code(1).expect_stderr("the sender stopped the run: interrupted");
}

#[test]
fn service_fans_wait_for_all_their_senders_each_time() {
    let (svc, addr, dir) = service(&["--senders", "2"]);
    for _ in 0..2 {
        let pair: Vec<Proc> =
            (0..2).map(|_| Proc::start(SEND, &["-c", &addr, "-p", "128", "-n", "2", "-q"])).collect();
        pair.into_iter().for_each(|p| {
            p.finish(secs(60)).expect_code(0);
        });
    }
    assert!(svc.wait_for("run 2 from", secs(10)), "{}", svc.stderr());
    // A third fan, whose run its library aborts: the service gathered both
    // senders and handed them to a process of its own, which alone ends.
    let long = ["-c", addr.as_str(), "-p", "16,1024", "-g", "block", "-n", "150", "--timeout", "3s"];
    let doomed: Vec<Proc> = (0..2).map(|_| Proc::start(SEND, &long)).collect();
    assert!(doomed[0].wait_for("    block      16 ", secs(30)), "no first point: {}", doomed[0].stdout());
    // The hub's point follows its pairs': once it is in the report, abort.
    let until = Instant::now() + secs(10);
    while !std::fs::read_dir(dir.path().join("runs")).unwrap().any(|f| {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|r| r["points"].as_array().is_some_and(|p| !p.is_empty()) && r["outcome"] == "running")
    }) {
        assert!(Instant::now() < until, "the hub's first point was never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = wait_for_children(svc.child.id(), 1);
    unsafe { libc::kill(run[0], libc::SIGABRT) };
    doomed.into_iter().for_each(|p| assert_ne!(p.finish(secs(15)).code, Some(0)));
    assert!(svc.wait_for("run 3 from", secs(10)), "{}", svc.stderr());
    assert!(svc.stderr().contains(&format!("(pid {}) was ended by SIGABRT", run[0])), "{}", svc.stderr());
    // Its report keeps the hub's first point, written whole.
    let aborted = reports(&dir).pop().unwrap().1;
    assert_eq!(
        (aborted["outcome"].as_str(), aborted["points"].as_array().unwrap().len()),
        (Some("running"), 1)
    );
    // And the next fan is served.
    let pair: Vec<Proc> =
        (0..2).map(|_| Proc::start(SEND, &["-c", &addr, "-p", "128", "-n", "2", "-q"])).collect();
    pair.into_iter().for_each(|p| {
        p.finish(secs(60)).expect_code(0);
    });
    assert!(svc.wait_for("run 4 from", secs(10)), "{}", svc.stderr());
    let service_pid = svc.child.id() as u64;
    svc.signal(libc::SIGTERM);
    svc.finish(secs(10)).expect_code(0);
    let runs: Vec<_> = reports(&dir).into_iter().filter(|(_, r)| r["outcome"] == "ok").collect();
    assert_eq!((reports(&dir).len(), runs.len()), (4, 3));
    for (_, r) in &runs {
        assert_eq!(r["fan"]["pair_reports"].as_array().unwrap().len(), 2);
        assert_eq!(r["wrong_bytes"], 0);
        // Each run in a process of its own, not the service's.
        assert_ne!(r["receiver"]["pid"].as_u64(), Some(service_pid));
    }
}

/// The service's processes for runs, once there are `n`.
fn wait_for_children(pid: u32, n: usize) -> Vec<i32> {
    let until = Instant::now() + secs(10);
    loop {
        let runs = children_of(pid);
        if runs.len() == n || Instant::now() > until {
            assert_eq!(runs.len(), n, "processes for runs");
            return runs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_service_decode_rank_serves_the_prefill_ranks_that_come_together() {
    // Two prefill ranks (TP 2) feed decode rank 0 (TP 1); they connect at
    // once, and each greeted beside the other joins its run, twice over.
    let (svc, addr, dir) = service(&["--decode-rank", "0"]);
    for _ in 0..2 {
        let ranks: Vec<Proc> = (0..2)
            .map(|rank| {
                let rank = rank.to_string();
                let args = [
                    "-c",
                    &addr,
                    "--prefill-tp",
                    "2",
                    "--decode-tp",
                    "1",
                    "--prefill-rank",
                    &rank,
                    "-m",
                    "llama-3.1-8b",
                    "--block-size",
                    "16",
                    "-p",
                    "64",
                    "-g",
                    "block",
                    "-n",
                    "3",
                    "-q",
                ];
                Proc::start(SEND, &args)
            })
            .collect();
        ranks.into_iter().for_each(|p| {
            p.finish(secs(60)).expect_code(0);
        });
    }
    assert!(svc.wait_for("run 2 from", secs(10)), "{}", svc.stderr());
    assert!(!svc.stderr().contains("told it"), "a prefill rank heard busy: {}", svc.stderr());
    let service_pid = svc.child.id() as u64;
    svc.signal(libc::SIGTERM);
    svc.finish(secs(10)).expect_code(0);
    let runs = reports(&dir);
    assert_eq!(runs.len(), 2);
    for (_, r) in &runs {
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["fan"]["pair_reports"].as_array().unwrap().len(), 2);
        assert_ne!(r["receiver"]["pid"].as_u64(), Some(service_pid));
    }
}

#[test]
fn service_mode_writes_reports_only_into_a_folder() {
    for (args, says) in [
        (&["--forever", "--json", "x.json", "--listen", "127.0.0.1:0"][..], "--json-dir"),
        (&["--json-dir", "d", "--listen", "127.0.0.1:0"][..], "is for --forever"),
    ] {
        run(RECV, args, secs(10)).expect_code(2).expect_stderr(says);
    }
}

/// Strangers cannot hold a sender up (issue 37): twenty silent connections
/// and one that sends a byte a second are greeted beside the sender, each
/// within the handshake deadline, and the sender is served at once. Greeted
/// one after another, each stranger would have held it up 2 s (here's
/// --timeout), 40 s in all, past the sender's own 30 s wait.
#[test]
fn silent_and_trickling_strangers_do_not_hold_up_a_sender() {
    // The service, and a one-shot receiver (they greeted one connection at a time, 2 s each).
    let (svc, addr, _dir) = service(&[]);
    strangers_then_a_sender(svc, &addr, true);
    let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", "2s", "-q"]);
    strangers_then_a_sender(recv, &addr, false);
}

/// 50 silent connections and one sending a byte a second, then a sender:
/// served within the handshake deadline and a little.
fn strangers_then_a_sender(svc: Proc, addr: &str, forever: bool) {
    let addr = addr.to_string();
    let silent: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let trickle = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            for b in b"KVXF\0\x01\0\0" {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let send = run(SEND, &["--connect", &addr, "-p", "16", "-n", "2", "-w", "0"], secs(60));
    send.expect_code(0);
    assert!(began.elapsed() < Duration::from_secs(5), "served after {:?}", began.elapsed());
    drop(silent);
    trickle.join().unwrap();
    if forever {
        svc.signal(libc::SIGTERM);
    }
    let f = svc.finish(secs(20));
    f.expect_code(0);
    // A one-shot receiver ends with its run, before the strangers' deadline.
    if forever {
        assert!(f.stderr.matches("ignoring a connection from").count() >= 50, "{}", f.stderr);
    }
}

/// A number from /proc/PID/status, in kB (VmRSS).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn a_run_aborted_by_its_library_leaves_the_service_serving() {
    let (svc, addr, dir) = service(&[]);
    // A short point, then a long one to abort in.
    let long = ["-c", addr.as_str(), "-p", "16,1024", "-g", "block", "-n", "150", "--timeout", "3s"];
    let send = Proc::start(SEND, &long);
    assert!(send.wait_for("    block      16 ", secs(30)), "no first point: {}", send.stdout());
    // Each run is a process of its own: abort it, as UCX aborts on a peer's endpoint timeout.
    let runs = children_of(svc.child.id());
    assert_eq!(runs.len(), 1, "one process for the run in progress");
    unsafe { libc::kill(runs[0], libc::SIGABRT) };
    assert_ne!(send.finish(secs(15)).code, Some(0));
    let ended = format!("failed (exit 1): its process (pid {}) was ended by SIGABRT", runs[0]);
    assert!(svc.wait_for(&ended, secs(10)), "{}", svc.stderr());
    // Its report keeps the point it finished (written whole after each point).
    let aborted = reports(&dir).pop().unwrap().1;
    assert_eq!(
        (aborted["outcome"].as_str(), aborted["points"].as_array().unwrap().len()),
        (Some("running"), 1)
    );
    // The service serves the next sender, in a process of its own again.
    run(SEND, &["-c", &addr, "-p", "16", "-n", "2"], secs(60)).expect_code(0);
    let last = reports(&dir).pop().unwrap().1;
    assert_eq!(last["outcome"], "ok");
    assert_ne!(last["receiver"]["pid"].as_u64(), Some(svc.child.id() as u64));
    svc.signal(libc::SIGTERM);
    svc.finish(secs(10)).expect_code(0);
}

#[test]
fn two_hundred_failing_runs_leave_the_service_flat() {
    let (svc, addr, _dir) = service(&[]);
    let pid = svc.child.id();
    // Runs that fail in their library's own code: a wrong key under ucx
    // (failed ucx runs leaked about 30 MB and 5 fds each in the service
    // when runs shared its process).
    let failing =
        ["-c", addr.as_str(), "-t", "ucx", "-p", "16", "-n", "1", "-w", "0", "--fault", "wrong-key", "-q"];
    let fail = |runs: usize| {
        // A sender that comes while the run before is still reaped hears
        // busy; count the runs the service itself says failed.
        let before = svc.stderr().matches(" failed (exit ").count();
        let until = Instant::now() + secs(180);
        while svc.stderr().matches(" failed (exit ").count() < before + runs {
            assert!(Instant::now() < until, "{}", svc.stderr());
            let _ = run(SEND, &failing, secs(30));
        }
    };
    fail(20);
    let (rss, fds) = (status_kb(pid, "VmRSS"), open_fds(pid));
    fail(200);
    let (rss_after, fds_after) = (status_kb(pid, "VmRSS"), open_fds(pid));
    assert!(rss_after * 100 <= rss * 105, "RSS {rss} kB, then {rss_after} kB after 200 failed runs");
    assert_eq!(fds_after, fds, "open fds");
    svc.signal(libc::SIGTERM);
    svc.finish(secs(10)).expect_code(0);
}

/// A fan's sender that dies while waiting for the others is dropped when
/// the next one comes, who takes its seat: the run that follows is whole,
/// and neither of its senders hears busy or fails.
#[test]
fn a_fan_sender_that_left_while_waiting_is_dropped_not_run() {
    let (svc, addr, dir) = service(&["--senders", "2"]);
    let doomed = Proc::start(SEND, &["-c", &addr, "-p", "16", "-n", "2", "-q"]);
    assert!(svc.wait_for("sender 1 of 2 joined", secs(20)), "{}", svc.stderr());
    doomed.signal(libc::SIGKILL);
    let _ = doomed.finish(secs(10));
    let pair: Vec<Proc> =
        (0..2).map(|_| Proc::start(SEND, &["-c", &addr, "-p", "16", "-n", "2", "-q"])).collect();
    pair.into_iter().for_each(|p| {
        p.finish(secs(60)).expect_code(0);
    });
    assert!(svc.wait_for("left before the others came: dropped", secs(10)), "{}", svc.stderr());
    svc.signal(libc::SIGTERM);
    svc.finish(secs(10)).expect_code(0);
    let runs = reports(&dir);
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].1["outcome"].as_str(), runs[0].1["wrong_bytes"].as_u64()), (Some("ok"), Some(0)));
}

/// Senders started one after another, each as the last one ends (a
/// script's loop), are each served: the service holds a sender that comes
/// as a run's process is still ending, rather than telling it busy (2 of
/// 20 heard busy when it answered at once).
#[test]
fn senders_one_after_another_are_each_served() {
    let (svc, addr, dir) = service(&[]);
    for _ in 0..20 {
        run(SEND, &["-c", &addr, "-p", "16", "-n", "1", "-q"], secs(30)).expect_code(0);
    }
    svc.signal(libc::SIGTERM);
    svc.finish(secs(10)).expect_code(0);
    assert_eq!(reports(&dir).len(), 20);
}

/// Past the 64 connections greeted at once, a sender hears why it is not
/// served (busy), not "connection reset"; once the strangers' handshake
/// deadline has passed, the next sender is served.
#[test]
fn a_sender_past_a_flood_of_silent_connections_hears_busy() {
    let (svc, addr, _dir) = service(&[]);
    let flood: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // The 16 past the 64 are told busy within 0.1 s (silent, they hear nothing).
    std::thread::sleep(Duration::from_millis(600));
    let f = run(SEND, &["-c", &addr, "-p", "16", "-n", "1", "-q"], secs(20));
    f.expect_code(1).expect_stderr("is busy: serving 64 other connections, being greeted at once");
    drop(flood);
    std::thread::sleep(Duration::from_millis(2500));
    run(SEND, &["-c", &addr, "-p", "16", "-n", "1", "-q"], secs(30)).expect_code(0);
    svc.signal(libc::SIGTERM);
    svc.finish(secs(10)).expect_code(0);
}
