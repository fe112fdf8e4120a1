//! The deployment gate: a run passes or fails its floors with one verdict
//! line and exit 0 or 4, on either side.

mod common;
use common::*;

#[test]
fn a_run_above_its_floors_passes_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    let args = ["pair", "-p", "128,1024", "-n", "2", "--link", "1000", "--json", j.to_str().unwrap()];
    let f = run(
        KVXFER,
        &[&args[..], &["--min-gbps", "0.001,1k:0.002", "--min-percent-of-peak", "0.0001"]].concat(),
        secs(60),
    );
    f.expect_code(0);
    // Two points (layer granularity by default) x two floors.
    assert!(f.stdout.contains("# gate       PASS: 4 checks"), "{}", f.stdout);
    let report = json(&j);
    assert_eq!(report["gate"]["passed"], true);
    assert_eq!(report["gate"]["checks"], 4);
    // The record keeps each floor with the figure it was held against.
    let checked = report["gate"]["checked"].as_array().unwrap();
    assert_eq!(checked.len(), 4);
    let at_1k = checked.iter().find(|c| c["flag"] == "--min-gbps" && c["prompt_tokens"] == 1024).unwrap();
    assert_eq!(at_1k["limit"], 0.002);
    assert_eq!(at_1k["measured"], report["points"][1]["gbps"]);
    assert!(checked.iter().all(|c| c["passed"] == true), "{checked:?}");
}

#[test]
fn a_point_below_its_floor_fails_the_run_with_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    // Loopback cannot move 100 TB/s; 128 tokens is held to no floor.
    let args =
        ["pair", "-p", "128,1024", "-n", "2", "--min-gbps", "1k:100000", "--json", j.to_str().unwrap()];
    let f = run(KVXFER, &args, secs(60));
    f.expect_code(4).expect_stderr("gate failed: layer 1024 tokens:");
    assert!(f.stdout.contains("# gate       FAIL: layer 1024 tokens:"), "{}", f.stdout);
    assert!(f.stderr.contains("< --min-gbps 100000") && !f.stderr.contains("128 tokens"), "{}", f.stderr);
    // The figures are kept: a failed gate is a verdict, not a lost run.
    let report = json(&j);
    assert_eq!(report["gate"]["passed"], false);
    let checked = report["gate"]["checked"].as_array().unwrap();
    assert_eq!(
        (checked.len(), checked[0]["passed"].as_bool(), checked[0]["limit"].as_f64()),
        (1, Some(false), Some(1e5))
    );
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["points"].as_array().unwrap().len(), 2);
}

/// A gate the plan cannot satisfy is refused before anything runs (exit 2,
/// no row), with the fix.
#[test]
fn a_gate_the_run_cannot_judge_is_refused_before_it_runs() {
    let cases: [(&[&str], &str); 4] = [
        // A prompt length the run does not measure.
        (
            &["-p", "128", "-n", "1", "--min-gbps", "8k:1"],
            "--min-gbps names 8192 tokens, which this run does not measure",
        ),
        // A percentage without a peak.
        (&["-p", "128", "-n", "1", "--min-percent-of-peak", "50"], "--min-percent-of-peak needs the peak"),
        // A p99 from fewer than 100 requests is one of the largest few.
        (
            &["-p", "16", "-n", "10", "--max-p99", "20ms"],
            "--max-p99 judges a p99, which takes 100 timed requests",
        ),
        // An added TTFT with no prefill to add to.
        (&["-p", "16", "-n", "100", "--max-added-ttft", "5ms"], "needs emulated prefill"),
    ];
    for (args, needle) in cases {
        let f = run(KVXFER, &[&["pair"][..], args].concat(), secs(30));
        f.expect_code(2).expect_stderr(needle);
        assert!(f.rows().is_empty(), "{args:?} ran: {}", f.stdout);
    }
    for bad in ["0ms", "2h", "fast", "8k:"] {
        run(KVXFER, &["pair", "--max-p99", bad], secs(10)).expect_code(2);
    }
}

#[test]
fn the_receiver_holds_the_gate_too() {
    let (recv, addr) = receiver("127.0.0.1:0", &["--min-gbps", "100000"]);
    let send = run(SEND, &["--connect", &addr, "-p", "128", "-n", "2"], secs(60));
    send.expect_code(0);
    let recv = recv.finish(secs(20));
    recv.expect_code(4).expect_stderr("gate failed: layer 128 tokens:");
    // A receiver's gate that the sender's plan cannot satisfy refuses it at
    // once, telling it why, rather than after the sweep.
    let (recv, addr) = receiver("127.0.0.1:0", &["--min-percent-of-peak", "50"]);
    let send = run(SEND, &["--connect", &addr, "-p", "128", "-n", "2"], secs(30));
    send.expect_code(1)
        .expect_stderr("this receiver's gate: --min-percent-of-peak needs the peak: give --link");
    assert!(send.rows().is_empty(), "{}", send.stdout);
    recv.finish(secs(20)).expect_code(1).expect_stderr("refused the sender");
}

/// Ceilings: the request p99 and the added TTFT p99, from 100 requests.
/// Loopback moves 2 MiB well within a second, and never within 1 us.
#[test]
fn a_latency_ceiling_passes_or_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    let args =
        ["pair", "-p", "16", "-n", "100", "-w", "1", "--prefill-ms", "16:1", "--json", j.to_str().unwrap()];
    let f = run(KVXFER, &[&args[..], &["--max-p99", "10s", "--max-added-ttft", "16:10s"]].concat(), secs(60));
    f.expect_code(0);
    assert!(f.stdout.contains("# gate       PASS: 2 checks"), "{}", f.stdout);
    let report = json(&j);
    let checked = report["gate"]["checked"].as_array().unwrap();
    let p99 = checked.iter().find(|c| c["flag"] == "--max-p99").unwrap();
    let p99_of = |l: &serde_json::Value| l["p99"].as_f64();
    let point = &report["points"][0];
    assert_eq!((p99["limit"].as_f64(), p99["measured"].as_f64()), (Some(1e10), p99_of(&point["request_ns"])));
    let added = checked.iter().find(|c| c["flag"] == "--max-added-ttft").unwrap();
    assert_eq!(added["measured"].as_f64(), p99_of(&point["prefill"]["added_ns"]));
    let f = run(KVXFER, &[&args[..], &["--max-p99", "1us"]].concat(), secs(60));
    f.expect_code(4).expect_stderr("gate failed: layer 16 tokens:");
    assert!(f.stderr.contains("> --max-p99 1.0 us"), "{}", f.stderr);
}

#[test]
fn a_figure_above_its_peak_is_flagged_not_taken_for_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    // 1 MB/s: loopback beats this "peak", which therefore cannot be one.
    let args = ["pair", "-p", "128,1024", "-n", "2", "--link", "0.001", "--json", j.to_str().unwrap()];
    let f = run(KVXFER, &args, secs(60));
    f.expect_code(0);
    assert!(f.rows().iter().all(|r| r.split_whitespace().any(|w| w.ends_with('!'))), "{}", f.stdout);
    assert!(
        f.stdout.contains("# CEILING    2 of 2 points measured above the peak of 0.001 GB/s"),
        "{}",
        f.stdout
    );
    let report = json(&j);
    let flag = &report["ceiling_exceeded"];
    assert_eq!(flag["points"], serde_json::json!(["layer 128", "layer 1024"]));
    assert!(flag["max_percent_of_peak"].as_f64().unwrap() > 100.0);
    // Nor does a gate on that peak pass.
    let f =
        run(KVXFER, &[&args[..5], &["--link", "0.001", "--min-percent-of-peak", "50"]].concat(), secs(60));
    f.expect_code(4).expect_stderr("above 100% of the peak, which is wrong");
}
