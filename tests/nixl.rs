//! The nixl transport over the real NIXL of the nixl-cu13 wheel (its C
//! API, libnixl and its UCX backend with the UCX it bundles), moving host
//! memory, as two processes and as one `pair`: READ as NixlConnector,
//! WRITE as NixlPushConnector, every byte checked, each request's steps
//! timed. scripts/fetch-nixl.sh fetches it (scripts/test.sh runs it).

mod common;
use common::*;
use serde_json::Value;
use std::sync::{Mutex, MutexGuard};

/// NIXL's progress threads and UCX's poll: one test at a time, so that on
/// a 2-core machine each pair has the cores it needs.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Run {
    send: Value,
    recv: Value,
    sender: Finished,
    receiver: Finished,
    csv: String,
}

/// A receiver and a sender over NIXL, run to the end.
fn nixl_run(send_args: &[&str], code: i32) -> Run {
    let lib = nixl_lib();
    let dir = tempfile::tempdir().unwrap();
    let (sj, rj, rc) =
        (dir.path().join("send.json"), dir.path().join("recv.json"), dir.path().join("recv.csv"));
    let (recv, addr) = receiver(
        "127.0.0.1:0",
        &["--nixl-lib", &lib, "--json", rj.to_str().unwrap(), "--csv", rc.to_str().unwrap()],
    );
    let mut args = vec!["--connect", &addr, "-t", "nixl", "--nixl-lib", &lib, "--json", sj.to_str().unwrap()];
    args.extend_from_slice(send_args);
    let sender = run(SEND, &args, secs(180));
    let receiver = recv.finish(secs(30));
    sender.expect_code(code);
    receiver.expect_code(code);
    let csv = std::fs::read_to_string(&rc).unwrap_or_default();
    Run { send: json(&sj), recv: json(&rj), sender, receiver, csv }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn read_and_write_move_every_granularity_and_block_table_with_each_step_timed() {
    let _serial = one_at_a_time();
    for op in ["read", "write"] {
        for table in ["contiguous", "random:3"] {
            let args = ["--nixl-op", op, "--block-table", table, "-p", "64,300", "-g", "all", "-n", "3"];
            let r = nixl_run(&args, 0);
            assert_sane(&r.recv, 6);
            assert_eq!(r.send["points"], r.recv["points"], "both sides print the receiver's figures");
            // The initiator names the path UCX chose inside NIXL; the raw records are gone.
            let (initiator, target) = match op {
                "read" => (&r.recv["receiver_transport"], &r.recv["sender_transport"]),
                _ => (&r.recv["sender_transport"], &r.recv["receiver_transport"]),
            };
            let path = initiator["path"].as_str().unwrap();
            assert!(path.starts_with(&format!("NIXL UCX {op}: ")) && path.contains(" over "), "{path}");
            assert!(target["path"].is_null(), "{target}");
            for side in [initiator, target] {
                assert!(side.get("nixl").is_none(), "records left in the report: {side}");
                let d = &side["details"];
                assert_eq!(d["nixl_library"], nixl_lib().as_str());
                assert_eq!(d["nixl_backend"], "UCX");
                assert!(!d["nixl_version"].as_str().unwrap().is_empty());
                for step in ["agent", "backend", "register", "metadata", "first_transfer"] {
                    assert!(d[format!("nixl_setup_{step}_ns")].as_str().unwrap().parse::<u64>().unwrap() > 0);
                }
            }
            assert!(initiator["details"]["nixl_backend_params"].as_str().unwrap().contains("num_threads=4"));
            for p in r.recv["points"].as_array().unwrap() {
                let n = &p["nixl"];
                assert_eq!(u(&n["requests"]), 3, "{p}");
                assert_eq!(u(&n["descriptors"]), u(&p["messages"]), "one descriptor per message");
                let merged = u(&n["merged_descriptors"]);
                assert!(merged >= 1 && merged <= u(&n["descriptors"]), "{n}");
                // A contiguous pool merges every tensor's blocks into one descriptor.
                if p["granularity"] == "block" && table == "contiguous" {
                    assert_eq!(merged, 64, "Llama-3.1-8B: 32 layers x K, V: {n}");
                }
                for step in ["ids_ns", "make_ns", "post_ns", "transfer_ns", "nixl_post_ns", "nixl_xfer_ns"] {
                    assert_eq!(u(&n[step]["count"]), 3, "{step}: {n}");
                }
                // One host: the notification's delay after DONE is known.
                assert_eq!(u(&n["notified_ns"]["count"]), 3, "{n}");
                assert!(n["histograms"]["transfer"].as_str().is_some_and(|h| !h.is_empty()));
                // NIXL's own transfer time fits inside the receiver's request time.
                assert!(u(&n["nixl_xfer_ns"]["p50"]) <= u(&p["request_ns"]["max"]), "{p}");
            }
            let out = &r.sender.stdout;
            assert!(out.contains("# nixl       block 300: p50 of 3: ids "), "{out}");
            assert!(out.contains("# nixl setup receiver: agent "), "{out}");
            assert!(!out.contains("| Range"), "UCX's protocol tables stay out of the output: {out}");
            assert!(!r.receiver.stdout.contains("| Range"), "{}", r.receiver.stdout);
            let header = r.csv.lines().next().unwrap();
            assert!(
                header.contains("nixl_make_p50_ns") && header.contains("nixl_notified_p99_ns"),
                "{header}"
            );
            assert!(r.csv.lines().nth(1).unwrap().contains(&format!(",UCX,{op},")), "{}", r.csv);
        }
    }
}

/// Several requests in flight (a lane each, as a decode instance reads
/// several at once), and conversations whose turns reuse a request's id.
#[test]
fn arrivals_in_flight_and_conversations_move_every_byte() {
    let _serial = one_at_a_time();
    for op in ["read", "write"] {
        let args = [
            "--nixl-op",
            op,
            "-p",
            "256",
            "-g",
            "block",
            "-n",
            "8",
            "--arrivals",
            "fixed:100",
            "--concurrency",
            "4",
        ];
        let r = nixl_run(&args, 0);
        assert_eq!(r.recv["outcome"], "ok");
        assert_eq!(r.recv["wrong_bytes"], 0);
        let p = &r.recv["points"][0];
        assert_eq!(u(&p["load"]["latency_ns"]["count"]), 8, "{p}");
        // Every lane's requests, not only the first lane's.
        assert_eq!(u(&p["nixl"]["requests"]), 8, "{}", p["nixl"]);
    }
    let lib = nixl_lib();
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("turns.json");
    let args = [
        "pair",
        "-t",
        "nixl",
        "--nixl-lib",
        &lib,
        "-m",
        "llama-3.1-8b",
        "--turns",
        "3",
        "--turn-tokens",
        "100:20",
        "-n",
        "2",
        "-g",
        "layer,block",
        "--multi-turn",
        "full,delta,bidirectional",
        "--json",
        j.to_str().unwrap(),
    ];
    let f = run(KVXFER, &args, secs(180));
    f.expect_code(0);
    assert!(f.stdout.contains("0 wrong bytes"), "{}", f.stdout);
    for p in json(&j)["points"].as_array().unwrap() {
        let n = &p["nixl"];
        // Each turn's notification is told apart from the turn before, which shares its id.
        let notified = &n["notified_ns"];
        assert_eq!(u(&notified["count"]), u(&p["request_ns"]["count"]), "{p}");
        assert!(u(&notified["max"]) < u(&p["request_ns"]["max"]) + 1_000_000_000, "{n}");
    }
}

/// Without NIXL's progress thread the side that waits drives NIXL itself:
/// every byte still moves, and the report says how NIXL ran.
#[test]
fn without_the_progress_thread_every_byte_moves() {
    let _serial = one_at_a_time();
    for op in ["read", "write"] {
        let r = nixl_run(
            &["--nixl-op", op, "--nixl-progress-thread", "off", "-p", "300", "-g", "block", "-n", "3"],
            0,
        );
        assert_sane(&r.recv, 1);
        for side in ["sender_transport", "receiver_transport"] {
            assert_eq!(r.recv[side]["details"]["nixl_progress_thread"], "false", "{}", r.recv[side]);
        }
    }
}

/// A prefill side killed mid-run, held where it has the go of a request:
/// the decode side ends at once, exit 1, naming the sender, its report kept.
#[test]
fn a_killed_sender_is_named_by_the_receiver_at_once() {
    let _serial = one_at_a_time();
    let lib = nixl_lib();
    for op in ["read", "write"] {
        let dir = tempfile::tempdir().unwrap();
        let rj = dir.path().join("recv.json");
        let mut cmd = std::process::Command::new(RECV);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--timeout",
            "2s",
            "--nixl-lib",
            &lib,
            "--json",
            rj.to_str().unwrap(),
        ]);
        let recv = Proc::spawn(cmd);
        assert!(recv.wait_for("listening on ", secs(10)), "{}", recv.stderr());
        let addr = recv.stderr().rsplit("listening on ").next().unwrap().trim().to_string();
        let mut cmd = std::process::Command::new(SEND);
        cmd.args(["--connect", &addr, "-t", "nixl", "--nixl-op", op, "--nixl-lib", &lib, "--timeout", "2s"]);
        cmd.args(["-p", "64,128", "-g", "block", "-n", "2"]).env("KVXFER_HOLD_AT", "transfer");
        let send = Proc::spawn(cmd);
        assert!(send.wait_for("holding at transfer", secs(60)), "{op}: {}", send.stderr());
        let killed = std::time::Instant::now();
        send.signal(libc::SIGKILL);
        let r = recv.finish(secs(20));
        assert!(killed.elapsed() < secs(8), "{op}: the receiver took {:?}\n{}", killed.elapsed(), r.stderr);
        r.expect_code(1);
        let error = r.stderr.lines().find(|l| l.contains(": error: ")).unwrap_or_default();
        assert!(error.contains("sender"), "{op}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked") && !r.stderr.contains("Fatal"), "{op}: {}", r.stderr);
        let report = json(&rj);
        assert_eq!(report["points"].as_array().unwrap().len(), 1, "{op}: the first point is kept");
        assert!(report["outcome"].as_str().unwrap().starts_with("error"), "{op}: {}", report["outcome"]);
    }
}

#[test]
fn a_descriptor_at_the_neighbour_block_fails_the_run_naming_the_block() {
    let _serial = one_at_a_time();
    for op in ["read", "write"] {
        let args = ["--nixl-op", op, "-p", "64", "-g", "block", "-n", "2", "--fault", "neighbour-block"];
        let r = nixl_run(&args, 3);
        assert!(r.receiver.stderr.contains("WRONG BYTES") || r.receiver.stderr.contains("wrong bytes"));
        assert!(r.receiver.stderr.contains("/L0/K/b0 "), "{op}: {}", r.receiver.stderr);
        assert_eq!(r.recv["outcome"], "wrong bytes");
    }
}

#[test]
fn what_nixl_cannot_do_is_refused_with_the_fix() {
    let _serial = one_at_a_time();
    let lib = nixl_lib();
    let pair = |extra: &[&str]| {
        let mut a = vec!["pair", "-t", "nixl", "-p", "64", "-g", "block", "-n", "1"];
        a.extend_from_slice(extra);
        run(KVXFER, &a, secs(120))
    };
    // No NIXL: exit 1, naming where to get it.
    pair(&["--nixl-lib", "/nonexistent/libnixl_capi.so"])
        .expect_code(1)
        .expect_stderr("cannot load NIXL")
        .expect_stderr("pip install nixl-cu13");
    // A backend NIXL has no plugin for: exit 2, naming those it has.
    pair(&["--nixl-lib", &lib, "--nixl-backend", "NOPE"])
        .expect_code(2)
        .expect_stderr("has no backend plugin 'NOPE': it has ")
        .expect_stderr("UCX");
    // A plugin that does not load here (LIBFABRIC needs CUDA): exit 1, with the loader's words.
    let f = pair(&["--nixl-lib", &lib, "--nixl-backend", "LIBFABRIC"]);
    f.expect_code(1).expect_stderr("its plugin does not load here: ");
    // A transport UCX did not choose: exit 1, naming what it chose.
    pair(&["--nixl-lib", &lib, "--require-transport", "nosuch"])
        .expect_code(1)
        .expect_stderr("--require-transport nosuch: NIXL's UCX chose otherwise: read: ")
        .expect_stderr(" over ");
    // Options of NIXL on another transport, malformed parameters, UCX names for another backend.
    for (args, says) in [
        (&["pair", "-t", "ucx", "--nixl-op", "write"][..], "they need -t nixl, not -t ucx"),
        (&["pair", "-t", "nixl", "--nixl-param", "threads"][..], "--nixl-param 'threads': give KEY=VALUE"),
        (
            &["pair", "-t", "nixl", "--nixl-backend", "LIBFABRIC", "--require-transport", "cma"][..],
            "is not UCX",
        ),
        (&["pair", "-t", "nixl", "--nixl-op", "sideways"][..], "unknown NIXL operation 'sideways'"),
        (&["pair", "-t", "tcp", "--fault", "neighbour-block"][..], "it needs -t nixl"),
        (&["pair", "-t", "nixl", "--prefill-ms", "128:5", "--overlap", "layer"][..], "--overlap none"),
    ] {
        run(KVXFER, args, secs(30)).expect_code(2).expect_stderr(says);
    }
}

/// doctor finds the library, each plugin and whether it loads, and says
/// what `-t nixl` can run here.
#[test]
fn doctor_names_nixl_its_backends_and_what_runs() {
    let _serial = one_at_a_time();
    let f = run(KVXFER, &["doctor", "--nixl-lib", &nixl_lib()], secs(120));
    f.expect_code(0);
    let out = &f.stdout;
    let section = out.split("== NIXL").nth(1).unwrap_or_else(|| panic!("no NIXL section: {out}"));
    assert!(section.lines().nth(1).unwrap().contains("library                NIXL "), "{out}");
    let line =
        |needle: &str| out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {out}"));
    assert!(line("backend UCX").contains("takes DRAM, VRAM; backend created"), "{out}");
    assert!(line("nixl  host memory").ends_with("yes"), "{out}");
    let missing = run(KVXFER, &["doctor", "--nixl-lib", "/nonexistent/libnixl_capi.so"], secs(60));
    missing.expect_code(0);
    assert!(
        missing.stdout.lines().any(|l| l.starts_with("  nixl  host memory    no: cannot load NIXL")),
        "{}",
        missing.stdout
    );
}

/// Raw UCX and NIXL's UCX backend of one plan, side by side.
#[test]
fn report_puts_raw_ucx_and_nixl_side_by_side() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let lib = nixl_lib();
    let (ucx, nixl) = (dir.path().join("ucx.json"), dir.path().join("nixl.json"));
    let common = ["pair", "-p", "256", "-g", "block", "-n", "3"];
    run(
        KVXFER,
        &[&common[..], &["-t", "ucx", "--ucx-op", "get", "--json", ucx.to_str().unwrap()]].concat(),
        secs(120),
    )
    .expect_code(0);
    run(
        KVXFER,
        &[&common[..], &["-t", "nixl", "--nixl-lib", &lib, "--json", nixl.to_str().unwrap()]].concat(),
        secs(120),
    )
    .expect_code(0);
    let out = dir.path().join("report");
    let args =
        ["report", nixl.to_str().unwrap(), "--baseline", ucx.to_str().unwrap(), "-o", out.to_str().unwrap()];
    run(KVXFER, &args, secs(60)).expect_code(0);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("nixl UCX read") && summary.contains("ucx get"), "{summary}");
    assert!(summary.contains("NIXL steps"), "{summary}");
}
