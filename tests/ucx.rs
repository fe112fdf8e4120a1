//! The ucx transport over the real UCX of this machine (Debian's libucx0:
//! tcp and shared memory, host memory), as two processes or one `pair`.

mod common;
use common::*;
use std::sync::{Mutex, MutexGuard};

/// UCX progress loops spin: these tests run one at a time, so that on a
/// 2-core machine each pair has the cores it needs and timings stay fair.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A receiver and a sender run to the end; returns both reports.
fn ucx_run(send_args: &[&str]) -> (serde_json::Value, serde_json::Value, Finished) {
    let dir = tempfile::tempdir().unwrap();
    let (sj, rj) = (dir.path().join("send.json"), dir.path().join("recv.json"));
    let (recv, addr) = receiver("127.0.0.1:0", &["--json", rj.to_str().unwrap()]);
    let mut args = vec!["--connect", &addr, "-t", "ucx", "--json", sj.to_str().unwrap()];
    args.extend_from_slice(send_args);
    let send = run(SEND, &args, secs(120));
    recv.finish(secs(20)).expect_code(0);
    send.expect_code(0);
    (json(&sj), json(&rj), send)
}

/// The transport UCX put this run's data on, as the driving side reported it.
fn data_path(report: &serde_json::Value) -> String {
    let path = |side: &str| report[side]["path"].as_str().map(str::to_string);
    path("sender_transport").or_else(|| path("receiver_transport")).expect("a side names the path")
}

#[test]
fn put_get_and_send_move_every_byte_in_both_error_modes() {
    let _serial = one_at_a_time();
    for mode in ["peer", "none"] {
        for op in ["put", "get", "send"] {
            let args = ["--ucx-op", op, "--ucx-err-mode", mode, "-p", "100,1024", "-g", "all", "-n", "3"];
            let (send, recv, out) = ucx_run(&args);
            assert_sane(&send, 6);
            assert_eq!(send["points"], recv["points"], "both sides print the receiver's figures");
            let path = data_path(&send);
            assert!(path.starts_with(&format!("{op} ")), "{path}");
            // The side that posts the operations reports UCX's own lane table.
            let driver = if op == "get" { "receiver_transport" } else { "sender_transport" };
            assert!(send[driver]["details"]["ucx_endpoint"].as_str().unwrap().contains("lane[0]"), "{send}");
            assert!(out.stdout.contains(&format!("error mode {mode}")), "{}", out.stdout);
            // Peer error handling keeps shared memory out: the report says what would let it in.
            let hint = "--ucx-err-mode none lets UCX use shared memory";
            assert_eq!(path.contains(hint), mode == "peer", "{path}");
            assert!(out.stdout.contains("its go travels as a UCX message"), "{}", out.stdout);
        }
    }
}

#[test]
fn many_operations_in_flight_and_one_at_a_time_agree() {
    let _serial = one_at_a_time();
    for in_flight in ["1", "4096"] {
        for op in ["get", "send"] {
            let args = ["--ucx-op", op, "--in-flight", in_flight, "-p", "1000", "-g", "block", "-n", "2"];
            let (send, _, _) = ucx_run(&args);
            assert_sane(&send, 1);
            assert_eq!(send["transport"]["in_flight"], in_flight.parse::<u64>().unwrap());
        }
    }
}

#[test]
fn pair_runs_ucx_between_two_processes_with_inline_checks() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("pair.json");
    let args = ["pair", "-t", "ucx", "--ucx-op", "get", "-p", "256", "-g", "layer,block", "-n", "2"];
    let f = run(
        KVXFER,
        &[&args[..], &["--verify", "inline", "--json", report.to_str().unwrap()]].concat(),
        secs(60),
    );
    f.expect_code(0);
    assert_eq!(f.rows().len(), 2);
    assert!(f.stdout.contains("0 wrong bytes"), "{}", f.stdout);
    // The receiver is a process of its own, as in a deployment (UCX's
    // cuda_ipc, for one, works only between processes).
    let r = json(&report);
    let (sender, receiver) = (r["sender"]["pid"].as_u64().unwrap(), r["receiver"]["pid"].as_u64().unwrap());
    assert_ne!(sender, receiver, "{}", r["receiver"]);
    assert!(r["receiver"]["command_line"].to_string().contains("\"recv\""), "{}", r["receiver"]);
}

#[test]
fn a_required_transport_that_carries_the_data_passes_and_a_missing_one_fails() {
    let _serial = one_at_a_time();
    // Whatever UCX chose here (tcp, or shared memory) is required next time.
    let (send, _, _) = ucx_run(&["--ucx-op", "put", "-p", "64", "-n", "1"]);
    let path = data_path(&send);
    let chosen = path.split_whitespace().find(|w| w.contains('/')).unwrap().split('/').next().unwrap();
    let (again, _, _) = ucx_run(&["--ucx-op", "put", "-p", "64", "-n", "1", "--require-transport", chosen]);
    assert_sane(&again, 1);

    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let args = ["--connect", &addr, "-t", "ucx", "-p", "64", "-n", "1", "--require-transport", "cuda_ipc"];
    let send = run(SEND, &args, secs(60));
    let recv = recv.finish(secs(20));
    send.expect_code(1).expect_stderr("--require-transport cuda_ipc: UCX chose otherwise: put ");
    recv.expect_code(1).expect_stderr("--require-transport cuda_ipc");
    // Shared memory asked for under peer error handling: the error names the flag that lets it in.
    let f =
        run(KVXFER, &["pair", "-t", "ucx", "-p", "16", "-n", "1", "--require-transport", "cma"], secs(60));
    if f.code != Some(0) {
        f.expect_code(1).expect_stderr("--ucx-err-mode none lets it use them");
    }
}

#[test]
fn a_missing_ucx_library_is_a_clear_error() {
    let _serial = one_at_a_time();
    let args = ["pair", "-t", "ucx", "-p", "16", "-n", "1", "--ucx-lib", "/nonexistent/libucp.so.0"];
    let f = run(KVXFER, &args, secs(30));
    f.expect_code(1).expect_stderr("cannot load UCX (/nonexistent/libucp.so.0");
    assert!(f.stderr.contains("apt-get install libucx0"), "{}", f.stderr);
    // The receiver checks its own library as soon as the sender names the transport.
    let (recv, addr) = receiver("127.0.0.1:0", &["--ucx-lib", "/nonexistent/libucp.so.0"]);
    let send = run(SEND, &["--connect", &addr, "-t", "ucx", "-p", "16", "-n", "1"], secs(30));
    recv.finish(secs(20)).expect_code(1).expect_stderr("cannot load UCX");
    send.expect_code(1).expect_stderr("the receiver stopped the run: cannot load UCX");
}

#[test]
fn wrong_keys_and_bytes_are_caught_for_every_operation() {
    let _serial = one_at_a_time();
    for op in ["put", "send"] {
        let f = run(
            KVXFER,
            &["pair", "-t", "ucx", "--ucx-op", op, "-p", "64", "-n", "2", "--fault", "wrong-key"],
            secs(60),
        );
        f.expect_code(3);
        // Two warm-up requests (requests 1 and 2): the first measured is request 3.
        assert!(f.stderr.contains("point 1, request 3"), "{}", f.stderr);
    }
    // get: the receiver reads by address; the sender checks which request it finished.
    let f = run(
        KVXFER,
        &["pair", "-t", "ucx", "--ucx-op", "get", "-p", "64", "-n", "2", "--fault", "wrong-key"],
        secs(60),
    );
    f.expect_code(3)
        .expect_stderr("finished reading point 1, request 3, expected point 1, request 1000000010");
    for op in ["put", "get", "send"] {
        let args = ["pair", "-t", "ucx", "--ucx-op", op, "-p", "64", "-n", "2", "--fault", "corrupt-byte"];
        run(KVXFER, &args, secs(60)).expect_code(3).expect_stderr("1 wrong bytes");
    }
}

/// A pair in the middle of a long block-wise run, both with a 3 s timeout.
fn running_ucx_pair(op: &str, mode: &str) -> (Proc, Proc) {
    let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", "3s"]);
    let long =
        ["-t", "ucx", "--ucx-op", op, "--ucx-err-mode", mode, "-p", "1024", "-g", "block", "-n", "100000"];
    let send = Proc::start(SEND, &[&["--connect", addr.as_str(), "--timeout", "3s"][..], &long[..]].concat());
    assert!(send.wait_for("# iterations", secs(20)), "run did not start: {}", send.stderr());
    std::thread::sleep(std::time::Duration::from_millis(300));
    (recv, send)
}

#[test]
fn a_killed_or_stopped_peer_ends_the_other_side() {
    let _serial = one_at_a_time();
    for (op, mode) in [("put", "none"), ("get", "peer"), ("send", "none")] {
        let (recv, send) = running_ucx_pair(op, mode);
        send.signal(libc::SIGKILL);
        let f = recv.finish(secs(15));
        assert_ne!(f.code, Some(0), "{op}");
        assert!(f.stderr.contains("sender"), "names the peer: {}", f.stderr);
        assert!(!f.stderr.contains("panicked"));

        let (recv, send) = running_ucx_pair(op, mode);
        recv.signal(libc::SIGSTOP);
        let stopped = std::time::Instant::now();
        let f = send.finish(secs(20));
        assert_ne!(f.code, Some(0), "{op}");
        assert!(f.stderr.contains("receiver"), "names the peer: {}", f.stderr);
        // 3 s timeout, plus the slack a busy 2-core machine needs.
        assert!(stopped.elapsed() < secs(12), "{op}: took {:?}", stopped.elapsed());
        drop(recv);
    }
}
