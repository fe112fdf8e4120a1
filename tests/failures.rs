//! Runs that must fail: corrupted bytes, wrong keys, dead, silent or
//! mismatched peers. Each must end on both sides with a clear message and a
//! non-zero exit within its deadline.

mod common;
use common::*;
use std::time::Duration;

/// The peer went quiet, on the control connection or on the data path.
fn silent(stderr: &str, peer: &str) -> bool {
    stderr.contains(&format!("no word from the {peer} at"))
        || stderr.contains(&format!("no progress from the {peer} for 3s"))
        || stderr.contains(&format!("no progress from the {peer} while"))
}

/// A receiver and a sender in the middle of a run long enough to be
/// interrupted (2000 requests of 4096 blocks), both with a 3 s timeout.
fn running_pair() -> (Proc, Proc) {
    let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", "3s"]);
    let long = ["-p", "1024", "-g", "block", "-n", "2000", "--timeout", "3s"];
    let send = Proc::start(SEND, &[&["--connect", addr.as_str()][..], &long[..]].concat());
    assert!(send.wait_for("# iterations", secs(20)), "run did not start: {}", send.stderr());
    std::thread::sleep(Duration::from_millis(300));
    (recv, send)
}

#[test]
fn a_corrupted_byte_fails_the_run_on_both_sides() {
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let send = run(SEND, &["--connect", &addr, "-p", "128", "-n", "3", "--fault", "corrupt-byte"], secs(60));
    let recv = recv.finish(secs(10));
    for side in [&send, &recv] {
        side.expect_code(3).expect_stderr("1 wrong bytes");
        assert!(side.stdout.contains("1 WRONG BYTES"), "{}", side.stdout);
        // The first wrong byte is located by key and offset.
        assert!(side.stderr.contains("first: r2/L"), "{}", side.stderr);
    }
    assert_eq!(send.rows(), recv.rows());
}

/// Requests in flight at once (four lanes under --arrivals) are checked
/// as one at a time are: a flipped byte and a wrong key both fail the run.
#[test]
fn faults_are_caught_with_requests_in_flight() {
    let load =
        ["pair", "-m", "llama-3.1-8b", "-p", "128", "-g", "layer", "--arrivals", "fixed:50", "-n", "10"];
    let f = run(KVXFER, &[&load[..], &["--fault", "corrupt-byte"]].concat(), secs(60));
    f.expect_code(3).expect_stderr("1 wrong bytes");
    let f = run(KVXFER, &[&load[..], &["--fault", "wrong-key"]].concat(), secs(60));
    f.expect_code(3).expect_stderr("expected r2/L0");
    assert!(f.stdout.contains("4 lanes"), "{}", f.stdout);
}

#[test]
fn a_corrupted_byte_is_caught_inline_too() {
    let f = run(
        KVXFER,
        &["pair", "-p", "64", "-n", "2", "--verify", "inline", "--fault", "corrupt-byte"],
        secs(60),
    );
    f.expect_code(3).expect_stderr("1 wrong bytes");
}

#[test]
fn a_wrong_key_is_refused_by_the_receiver() {
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let send = run(
        SEND,
        &["--connect", &addr, "-p", "64", "-g", "block", "-n", "2", "--fault", "wrong-key"],
        secs(60),
    );
    let recv = recv.finish(secs(10));
    // Two warm-up requests (r0, r1), so the first measured one is r2.
    recv.expect_code(3).expect_stderr("expected r2/L0/K/b0");
    assert!(recv.stderr.contains("received r1000000009/L0/K/b0"), "{}", recv.stderr);
    send.expect_code(3).expect_stderr("the receiver stopped the run: message 0");
}

#[test]
fn killing_the_receiver_ends_the_sender() {
    let (recv, send) = running_pair();
    recv.signal(libc::SIGKILL);
    let f = send.finish(secs(15));
    assert_ne!(f.code, Some(0));
    assert!(f.stderr.contains("receiver"), "names the peer: {}", f.stderr);
    assert!(!f.stderr.contains("panicked"));
}

#[test]
fn a_pair_whose_receiver_process_aborts_says_so() {
    let args = ["pair", "-p", "1024", "-g", "block", "-n", "2000", "--timeout", "3s"];
    let pair = Proc::start(KVXFER, &args);
    assert!(pair.wait_for("# iterations", secs(20)), "run did not start: {}", pair.stderr());
    let receivers = children_of(pair.child.id());
    assert_eq!(receivers.len(), 1, "kvxfer pair's receiver is a process of its own");
    // As a library's abort would end it.
    unsafe { libc::kill(receivers[0], libc::SIGABRT) };
    let f = pair.finish(secs(15));
    f.expect_code(1)
        .expect_stderr(&format!("the pair's receiver (pid {}) was ended by SIGABRT", receivers[0]));
    assert!(!f.stderr.contains("panicked"));
}

#[test]
fn a_receiver_a_library_aborts_keeps_the_points_it_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (j, c) = (dir.path().join("recv.json"), dir.path().join("recv.csv"));
    let out = ["--json", j.to_str().unwrap(), "--csv", c.to_str().unwrap()];
    let (recv, addr) = receiver("127.0.0.1:0", &[&["--timeout", "3s"][..], &out].concat());
    let args = ["--connect", addr.as_str(), "-p", "16,1024", "-g", "block", "-n", "150", "--timeout", "3s"];
    let send = Proc::start(SEND, &args);
    assert!(send.wait_for("    block      16 ", secs(30)), "no first point: {}", send.stdout());
    recv.signal(libc::SIGABRT);
    assert_ne!(recv.finish(secs(10)).code, Some(0));
    assert_ne!(send.finish(secs(15)).code, Some(0));
    // Written whole after each point: the first point, and the run marked unfinished.
    let r = json(&j);
    assert_eq!((r["outcome"].as_str(), r["points"].as_array().unwrap().len()), (Some("running"), 1), "{r}");
    // The CSV too: its header and the first point's row (it had been left empty).
    let csv = std::fs::read_to_string(&c).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
}

#[test]
fn killing_the_sender_ends_the_receiver() {
    let (recv, send) = running_pair();
    send.signal(libc::SIGKILL);
    let f = recv.finish(secs(15));
    assert_ne!(f.code, Some(0));
    assert!(f.stderr.contains("the sender closed") || f.stderr.contains("lost the sender"), "{}", f.stderr);
    assert!(!f.stderr.contains("panicked"));
}

#[test]
fn a_silent_receiver_is_given_up_within_the_timeout() {
    let (recv, send) = running_pair();
    recv.signal(libc::SIGSTOP);
    let stopped = std::time::Instant::now();
    let f = send.finish(secs(20));
    assert_ne!(f.code, Some(0));
    assert!(silent(&f.stderr, "receiver"), "{}", f.stderr);
    // 3 s timeout, plus the slack a busy 2-core machine needs.
    assert!(stopped.elapsed() < secs(12), "took {:?}", stopped.elapsed());
}

#[test]
fn a_silent_sender_is_given_up_within_the_timeout() {
    let (recv, send) = running_pair();
    send.signal(libc::SIGSTOP);
    let stopped = std::time::Instant::now();
    let f = recv.finish(secs(20));
    assert_ne!(f.code, Some(0));
    assert!(silent(&f.stderr, "sender"), "{}", f.stderr);
    assert!(stopped.elapsed() < secs(12), "took {:?}", stopped.elapsed());
}

#[test]
fn another_protocol_version_is_refused() {
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let send = run(SEND, &["--connect", &addr, "--fault", "bad-protocol"], secs(30));
    send.expect_code(1).expect_stderr("protocol version mismatch: this sender speaks 999, the receiver");
    // The receiver says so and waits on for its sender: anyone could send
    // those bytes, and a stranger must not end it (nor a garbage frame).
    assert!(recv.wait_for("protocol version mismatch (it speaks 999", secs(10)), "{}", recv.stderr());
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, b"KVXF\x00\x06\x00\x00\xff\xff\xff\xff garbage").unwrap();
    drop(s);
    run(SEND, &["--connect", &addr, "-p", "16", "-n", "1", "-q"], secs(30)).expect_code(0);
    recv.finish(secs(10)).expect_code(0);
}

#[test]
fn a_plan_the_receiver_derives_differently_is_refused() {
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let send = run(SEND, &["--connect", &addr, "--fault", "bad-digest"], secs(30));
    send.expect_code(1).expect_stderr("the receiver refused the run: plan mismatch");
    recv.finish(secs(10))
        .expect_code(1)
        .expect_stderr("plan mismatch: the sender's plan digest is 0000000000000000");
}

#[test]
fn two_senders_are_refused_at_the_handshake() {
    // Two peers with the same role would never form a two-rank communicator:
    // the kv_rank 2-versus-1 hang. kvxfer refuses instead of waiting.
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let send = run(SEND, &["--connect", &addr, "--fault", "wrong-role"], secs(30));
    send.expect_code(1).expect_stderr("the receiver refused the run: role mismatch");
    recv.finish(secs(10)).expect_code(1).expect_stderr("role mismatch: the peer says it is a receiver");
}

#[test]
fn a_plan_for_another_model_is_refused() {
    let (recv, addr) = receiver("127.0.0.1:0", &["--expect-model", "Llama-3.1-70B"]);
    let send = run(SEND, &["--connect", &addr, "-m", "llama-3.1-8b"], secs(30));
    send.expect_code(1).expect_stderr(
        "expects model llama-3.1-70b, the sender's plan is for llama-3.1-8b with 32 layers, not 80",
    );
    recv.finish(secs(10)).expect_code(1);
    // The same name, another shape: the shape is what decode holds.
    let (recv, addr) = receiver("127.0.0.1:0", &["--expect-model", "llama-3.1-8b"]);
    let send = run(SEND, &["--connect", &addr, "-m", "llama-3.1-8b", "--layers", "16"], secs(30));
    send.expect_code(1).expect_stderr("the sender's plan is for llama-3.1-8b with 16 layers, not 32");
    recv.finish(secs(10)).expect_code(1);
    // A model the receiver does not know is refused at start.
    let f = run(RECV, &["--listen", "127.0.0.1:0", "--expect-model", "llama-9"], secs(10));
    f.expect_code(2).expect_stderr("llama-9");
}

#[test]
fn a_receiver_that_never_comes_is_given_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let f = run(SEND, &["--connect", &format!("127.0.0.1:{port}"), "--timeout", "1s"], secs(15));
    f.expect_code(1).expect_stderr("no receiver at 127.0.0.1");
    assert!(f.elapsed < secs(8));
    // While it retries, it says once what it waits for.
    let f = run(SEND, &["--connect", &format!("127.0.0.1:{port}"), "--timeout", "3s"], secs(15));
    f.expect_code(1).expect_stderr(&format!("no receiver at 127.0.0.1:{port} yet (Connection refused"));
    assert_eq!(f.stderr.matches("yet (").count(), 1, "{}", f.stderr);
}

#[test]
fn a_sender_that_never_comes_is_given_up() {
    let f = run(RECV, &["--listen", "127.0.0.1:0", "--wait-for-sender", "1s"], secs(15));
    f.expect_code(1).expect_stderr("no sender connected");
    assert!(f.elapsed < secs(8));
}

#[test]
fn output_files_of_a_failed_run_keep_what_was_measured() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    let f = run(
        KVXFER,
        &["pair", "-p", "64,128", "-n", "2", "--fault", "corrupt-byte", "--json", j.to_str().unwrap()],
        secs(60),
    );
    f.expect_code(3);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(r["outcome"], "wrong bytes");
    assert_eq!(r["wrong_bytes"], 1);
    assert_eq!(r["points"].as_array().unwrap().len(), 2);
}

/// A run that fails partway reports what its checks verified before the
/// failure, also within the point that did not finish; a sender, which
/// does not check, says so.
#[test]
fn a_run_that_fails_partway_tells_what_it_verified() {
    // A pair a second into a point of 100,000 requests, far from its end.
    let under_way = || {
        let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", "2s"]);
        let args = ["--connect", &addr, "-p", "128", "-g", "layer", "-n", "100000", "--timeout", "2s"];
        let send = Proc::start(SEND, &args);
        assert!(send.wait_for("# iterations", secs(20)), "{}", send.stdout());
        std::thread::sleep(secs(1));
        (recv, send)
    };
    let (recv, send) = under_way();
    send.signal(libc::SIGKILL);
    let r = recv.finish(secs(20));
    r.expect_code(1);
    assert!(r.stdout.contains("# integrity  0 wrong bytes in "), "{}", r.stdout);
    let (recv, send) = under_way();
    recv.signal(libc::SIGKILL);
    let s = send.finish(secs(20));
    s.expect_code(1);
    assert!(s.stdout.contains("nothing verified here: the receiver checks the bytes"), "{}", s.stdout);
}

/// SIGINT, SIGTERM and SIGHUP stop a run the way a failure does, at once:
/// the side that got the signal keeps every point measured (table and
/// JSON, outcome "interrupted") and exits 128 + the signal; its peer is
/// told who was interrupted, and why, and exits 1.
#[test]
fn a_signal_stops_the_run_and_both_sides_say_so() {
    for (sig, name, code, stopped) in [
        (libc::SIGINT, "SIGINT", 130, "sender"),
        (libc::SIGTERM, "SIGTERM", 143, "receiver"),
        (libc::SIGHUP, "SIGHUP", 129, "sender"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (sj, rj) = (dir.path().join("s.json"), dir.path().join("r.json"));
        let (recv, addr) = receiver("127.0.0.1:0", &["--json", rj.to_str().unwrap()]);
        let args =
            ["--connect", &addr, "-p", "64,1024", "-g", "layer", "-n", "300", "--json", sj.to_str().unwrap()];
        let send = Proc::start(SEND, &args);
        // The first point (64 tokens) ends before the signal, the second (128 MiB requests) runs long.
        assert!(send.wait_for("      64 ", secs(60)), "{}", send.stdout());
        let (signalled, peer) = if stopped == "sender" { (send, recv) } else { (recv, send) };
        signalled.signal(sig);
        let at = std::time::Instant::now();
        let (json_of, peer_name) = if stopped == "sender" { (&sj, "receiver") } else { (&rj, "sender") };
        let f = signalled.finish(secs(10));
        assert!(at.elapsed() < secs(2), "{name}: the {stopped} took {:?}", at.elapsed());
        f.expect_code(code).expect_stderr("interrupted on ").expect_stderr(&format!("({name})"));
        assert!(f.stdout.contains("# outcome    interrupted"), "{}", f.stdout);
        let p = peer.finish(secs(10));
        p.expect_code(1).expect_stderr(&format!("the {stopped} stopped the run: interrupted on "));
        let r = json(json_of);
        assert_eq!(r["outcome"], "interrupted", "{name} {peer_name}");
        assert!(!r["points"].as_array().unwrap().is_empty(), "the points measured are kept");
    }
}

/// The last `-v` step a side logged before `by` (UTC seconds of the day;
/// later lines are its teardown after the error).
fn last_step(stderr: &str, by: f64) -> &str {
    let second_of_day = |l: &str| -> Option<f64> {
        let t = l.split('T').nth(1)?.split('Z').next()?;
        let mut f = t.split(':').map(|x| x.parse::<f64>().ok());
        Some(f.next()?? * 3600.0 + f.next()?? * 60.0 + f.next()??)
    };
    stderr
        .lines()
        .rfind(|l| l.contains(" DEBUG ") && second_of_day(l).is_some_and(|t| t < by))
        .unwrap_or_else(|| panic!("no -v log before {by}:\n{stderr}"))
}

/// Now, in UTC seconds of the day, as `-v` stamps its lines.
fn now_of_day() -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    now.as_secs_f64() % 86400.0
}

#[test]
fn with_v_the_last_step_logged_names_where_a_silent_sender_stalled() {
    use std::io::Write;
    // A sender that opens with a good preamble, then says nothing.
    let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", "2s", "-v"]);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let mut pre = *b"KVXF\0\0\0\0";
    pre[4..6].copy_from_slice(&6u16.to_be_bytes());
    s.write_all(&pre).unwrap();
    let silent_from = now_of_day();
    let f = recv.finish(secs(20));
    f.expect_code(1).expect_stderr("while waiting for the sender's plan");
    let step = last_step(&f.stderr, silent_from + 1.0);
    assert!(step.contains("recv: waiting for the sender's plan (nothing yet after"), "{}", f.stderr);
    // Timestamped, and each step before it too.
    assert!(step.starts_with("20") && step.contains('T') && step.contains("Z DEBUG"), "{step}");
    for s in ["accepted a connection from", "waiting for the preamble from"] {
        assert!(f.stderr.contains(s), "{s}: {}", f.stderr);
    }
}

#[test]
fn with_v_the_last_step_logged_names_the_request_a_stopped_sender_left() {
    let (recv, addr) = receiver("127.0.0.1:0", &["--timeout", "3s", "-v"]);
    let long = ["-p", "1024", "-g", "block", "-n", "2000", "--timeout", "3s", "-v"];
    let send = Proc::start(SEND, &[&["--connect", addr.as_str()][..], &long[..]].concat());
    assert!(send.wait_for("request 5: sent in", secs(20)), "run did not start: {}", send.stderr());
    send.signal(libc::SIGSTOP);
    let stopped = now_of_day();
    let f = recv.finish(secs(20));
    assert_ne!(f.code, Some(0));
    let error = f.stderr.lines().find(|l| l.starts_with("kvxfer-recv: error:")).expect("an error line");
    // Within the 3 s timeout, before the receiver gives up and tears down.
    let step = last_step(&f.stderr, stopped + 1.5);
    // The error and the last step name the same request.
    let request = |l: &str| {
        l.split("request ").nth(1).map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>())
    };
    assert!(request(error).is_some(), "{error}");
    assert_eq!(request(step), request(error), "last step {step:?}, error {error:?}");
    // The protocol steps of one request, in order, on both sides.
    for s in ["sent ready (point 0, request 5)", "received go (point 0, request 5)", "request 5: sending"] {
        assert!(send.stderr().contains(s), "{s}: {}", send.stderr());
    }
    for s in ["received ready (point 0, request 5)", "request 5: receiving", "request 5: all "] {
        assert!(f.stderr.contains(s), "{s}: {}", f.stderr);
    }
    send.signal(libc::SIGCONT);
}

#[test]
fn without_v_nothing_is_logged_and_vv_adds_each_message() {
    let quiet = run(KVXFER, &["pair", "-p", "128", "-g", "layer", "-n", "1", "-w", "0"], secs(60));
    quiet.expect_code(0);
    assert!(!quiet.stderr.contains("DEBUG") && !quiet.stderr.contains("TRACE"), "{}", quiet.stderr);
    let vv = run(KVXFER, &["pair", "-p", "128", "-g", "layer", "-n", "1", "-w", "0", "-vv"], secs(60));
    vv.expect_code(0);
    // 32 layer messages of the one request.
    assert_eq!(vv.stderr.matches("TRACE recv: request 0: message ").count(), 32, "{}", vv.stderr);
    assert!(vv.stderr.contains("DEBUG send{"), "{}", vv.stderr);
}

/// A listener whose backlog is full: the kernel drops the SYNs of the
/// next connection, which then hangs in connect (a host that drops them).
fn syn_dropping_listener() -> (socket2::Socket, Vec<std::net::TcpStream>, String) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    // Backlog 0 holds one or two; past them connects hang.
    let fill: Vec<_> = (0..3)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
        .collect();
    (l, fill, addr.to_string())
}

/// The first SIGTERM ends each kind of wait, within a second or two, with
/// 128 + 15 (issue 37): a connect to a host that drops SYNs, a sender and
/// a receiver waiting for the next arrival, a sender computing a long
/// emulated prefill, a fan's hub waiting for its second sender, and
/// `kvxfer pair`, whose receiver (a process of its own) goes with it.
#[test]
fn the_first_sigterm_ends_every_kind_of_wait() {
    let (_listener, _fill, dropping) = syn_dropping_listener();
    let sparse = ["-p", "16", "-g", "request", "--arrivals", "fixed:0.2", "-n", "3", "-w", "0"];
    let stop = |_case: &str, p: &Proc, settle: Duration| {
        std::thread::sleep(settle);
        p.signal(libc::SIGTERM);
        std::time::Instant::now()
    };
    let ended = |case: &str, p: Proc, at: std::time::Instant| {
        let f = p.finish(secs(10));
        eprintln!("{case}: {:?}", at.elapsed());
        assert!(at.elapsed() < secs(2), "{case}: ended {:?} after SIGTERM\n{}", at.elapsed(), f.stderr);
        assert_eq!(f.code, Some(143), "{case}\n{}", f.stderr);
        assert!(f.stderr.contains("SIGTERM"), "{case}: {}", f.stderr);
    };
    // A connect the peer's kernel never answers.
    let send = Proc::start(SEND, &["-c", &dropping, "-p", "16", "-n", "1", "--timeout", "60s"]);
    let at = stop("connect", &send, Duration::from_millis(700));
    ended("a connect that hangs", send, at);
    // Both sides between two arrivals 5 s apart.
    for signalled in ["sender", "receiver"] {
        let (recv, addr) = receiver("127.0.0.1:0", &[]);
        let send = Proc::start(SEND, &[&["-c", addr.as_str()][..], &sparse].concat());
        assert!(recv.wait_for("kvxfer-recv", secs(10)));
        let (p, other) = if signalled == "sender" { (send, recv) } else { (recv, send) };
        let at = stop(signalled, &p, Duration::from_millis(1500));
        ended(&format!("the {signalled} between arrivals"), p, at);
        assert_eq!(other.finish(secs(10)).code, Some(1), "the {signalled}'s peer");
    }
    // A sender computing a prefill of 20 s a request.
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let args = ["-c", addr.as_str(), "-p", "16", "-n", "1", "-w", "0", "--prefill-ms", "16:20000"];
    let send = Proc::start(SEND, &args);
    let at = stop("prefill", &send, Duration::from_millis(1500));
    ended("a sender computing its prefill", send, at);
    let _ = recv.finish(secs(10));
    // A fan's hub with one sender of two.
    let (recv, addr) = receiver("127.0.0.1:0", &["--senders", "2"]);
    let send = Proc::start(SEND, &["-c", &addr, "-p", "16", "-n", "1"]);
    assert!(recv.wait_for("sender 1 of 2 joined", secs(10)), "{}", recv.stderr());
    let at = stop("fan", &recv, Duration::ZERO);
    ended("a hub waiting for its second sender", recv, at);
    assert_ne!(send.finish(secs(10)).code, Some(0));
    // kvxfer pair between arrivals: its receiver's process ends with it.
    let pair = Proc::start(KVXFER, &[&["pair"][..], &sparse].concat());
    assert!(pair.wait_for("#    gran", secs(10)), "{}", pair.stderr());
    std::thread::sleep(Duration::from_millis(1000));
    let receivers = children_of(pair.child.id());
    let at = stop("pair", &pair, Duration::ZERO);
    ended("kvxfer pair between arrivals", pair, at);
    std::thread::sleep(Duration::from_millis(500));
    for r in receivers {
        let alive = std::fs::read_to_string(format!("/proc/{r}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "the pair's receiver (pid {r}) outlived it");
    }
}
