//! `kvxfer compare`: candidates in alternation over rounds, each point's
//! median with its interval and the ratios to the first candidate, on this
//! host and against a receiver's service.

mod common;
use common::*;

/// One candidate twice: the same thing, so the rounds must not tell the two
/// apart. Seven rounds give the median's interval as the rounds' range,
/// 98.4% sure to hold it; two ranges of seven values drawn alike miss each
/// other 2 times in 3432.
#[test]
fn the_same_candidate_twice_shows_no_significant_difference() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("cmp.json");
    let args =
        ["compare", "-t", "tcp,tcp", "--rounds", "7", "--json", j.to_str().unwrap(), "-p", "16", "-n", "3"];
    let f = run(KVXFER, &[&args[..], &["-w", "1"]].concat(), secs(120));
    f.expect_code(0);
    assert!(f.stdout.contains("98% sure to hold the median"), "{}", f.stdout);
    let row = f
        .stdout
        .lines()
        .find(|l| l.starts_with("    layer") && l.contains(" tcp#2 "))
        .unwrap_or_else(|| panic!("{}", f.stdout));
    assert!(row.ends_with("no significant difference"), "{row}");
    let doc = json(&j);
    let c = &doc["points"][0]["candidates"];
    for k in 0..2 {
        assert_eq!(c[k]["rounds_gbps"].as_array().unwrap().len(), 7);
        let (low, median, high) =
            (c[k]["gbps"]["low"].as_f64(), c[k]["gbps"]["median"].as_f64(), c[k]["gbps"]["high"].as_f64());
        assert!(low <= median && median <= high, "{c}");
    }
    assert_eq!(c[1]["vs_first"]["significant"], false);
    // Rounds take turns: each round starts with the next candidate.
    let order: Vec<&str> = f.stderr.lines().filter_map(|l| l.split(": ").nth(2)).take(4).collect();
    assert_eq!(order, ["tcp", "tcp#2", "tcp#2", "tcp"], "{}", f.stderr);
}

/// tcp against ucx, three rounds: each figure with its interval (75% sure
/// from three rounds, and said so), each library's path named.
#[test]
fn two_transports_in_rounds_give_medians_intervals_and_ratios() {
    let f = run(
        KVXFER,
        &["compare", "-t", "tcp,ucx", "--rounds", "3", "-p", "16,128", "-n", "3", "-w", "1"],
        secs(120),
    );
    f.expect_code(0);
    assert!(
        f.stdout.contains("75% sure to hold the median") && f.stdout.contains("6 rounds or more give 95%")
    );
    for (tokens, who) in [(16, "tcp"), (16, "ucx"), (128, "tcp"), (128, "ucx")] {
        let row = format!("    layer {tokens:>7}  {who:<9}");
        assert!(f.stdout.contains(&row), "no {row:?} in\n{}", f.stdout);
    }
    let ucx = f.stdout.lines().filter(|l| l.contains("  ucx  ")).collect::<Vec<_>>();
    assert!(ucx.iter().all(|l| l.contains("% ")), "a ratio to tcp on every ucx row: {ucx:?}");
    assert!(f.stdout.contains("# ucx        ucx "), "{}", f.stdout);
}

/// Across hosts: each round's sender goes to one kvxfer-recv --forever,
/// which serves every candidate's run in turn.
#[test]
fn candidates_run_against_a_receivers_service() {
    let (svc, addr) = receiver("127.0.0.1:0", &["--forever", "-q"]);
    let args =
        ["compare", "-t", "tcp,ucx", "--rounds", "2", "--connect", &addr, "-p", "16", "-n", "2", "-w", "0"];
    let f = run(KVXFER, &args, secs(120));
    svc.signal(libc::SIGTERM);
    svc.finish(secs(20));
    f.expect_code(0);
    assert!(f.stdout.contains("    layer      16  ucx"), "{}", f.stdout);
}

#[test]
fn compare_options_after_the_run_options_are_refused() {
    for (args, needle) in [
        (&["compare", "-t", "tcp", "-p", "16", "-t", "ucx"][..], "give the candidates with compare's own -t"),
        (&["compare", "-t", "tcp", "-p", "16", "--json", "x.json"], "compare writes its own --json"),
        (&["compare", "-t", "tcp", "--rounds", "0"], "0 is not in 1..=100"),
        (&["compare", "-t", "tcp", "-p", "16", "--min-gbps", "1"], "compare holds no gate"),
        (
            &["compare", "-t", "tcp", "--no-such-flag"],
            "the run's options, with -t tcp: unexpected argument '--no-such-flag'",
        ),
    ] {
        run(KVXFER, args, secs(10)).expect_code(2).expect_stderr(needle);
    }
}
