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
    assert_eq!(at_1k["floor"], 0.002);
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
        (checked.len(), checked[0]["passed"].as_bool(), checked[0]["floor"].as_f64()),
        (1, Some(false), Some(1e5))
    );
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["points"].as_array().unwrap().len(), 2);
}

#[test]
fn a_floor_the_run_cannot_check_fails_too() {
    // A prompt length the run never measured.
    let f = run(KVXFER, &["pair", "-p", "128", "-n", "1", "--min-gbps", "8k:1"], secs(60));
    f.expect_code(4).expect_stderr("--min-gbps names 8192 tokens, which this run did not measure");
    // A percentage without a peak is refused before anything runs.
    let f = run(KVXFER, &["pair", "-p", "128", "-n", "1", "--min-percent-of-peak", "50"], secs(30));
    f.expect_code(2).expect_stderr("--min-percent-of-peak needs the peak");
    assert!(f.rows().is_empty());
}

#[test]
fn the_receiver_holds_the_gate_too() {
    let (recv, addr) = receiver("127.0.0.1:0", &["--min-gbps", "100000"]);
    let send = run(SEND, &["--connect", &addr, "-p", "128", "-n", "2"], secs(60));
    send.expect_code(0);
    let recv = recv.finish(secs(20));
    recv.expect_code(4).expect_stderr("gate failed: layer 128 tokens:");
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
