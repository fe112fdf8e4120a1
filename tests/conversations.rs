//! Multi-turn conversations run for real: every turn's KV moves over the
//! transport into the conversation's region, and after each turn the
//! receiver checks all it holds. Llama-3.1-8B (128 KiB a token, 16-token
//! blocks), 5 turns of 100 input and 20 output tokens: prompts of 100, 220,
//! 340, 460 and 580 tokens.

mod common;
use common::*;
use serde_json::Value;

/// Blocks of 16 tokens (vLLM's default before 0.34's 64): the blocks named below.
const CONVERSATION: &[&str] =
    &["-m", "llama-3.1-8b", "--block-size", "16", "--turns", "5", "--turn-tokens", "100:20", "-n", "2"];
const MIB: u64 = 1 << 20;

fn turns(point: &Value, what: &str) -> Vec<u64> {
    let t = point["conversation"]["turns"].as_array().unwrap();
    t.iter().map(|t| t[what].as_u64().unwrap()).collect()
}

/// Bytes per turn, by hand: full moves each prompt (token-exact in layer
/// and request messages, whole blocks in block ones); delta moves 7 blocks
/// (14 MiB) every turn: the new tokens' and the partly filled last block of
/// the context before; bidirectional moves delta's, after decode sent back
/// the context before (120, 240, 360, 480 tokens; in whole blocks 8, 15,
/// 23, 30); d-direct moves turn 1 only.
#[test]
fn every_mode_and_granularity_moves_what_it_should_and_checks_whole_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("turns.json");
    let args = [CONVERSATION, &["-g", "request,layer,block", "--json", j.to_str().unwrap()]].concat();
    let f = run(KVXFER, &[&["pair"], &args[..]].concat(), secs(120));
    f.expect_code(0);
    assert!(f.stdout.contains("0 wrong bytes"), "{}", f.stdout);
    let r = json(&j);
    let points = r["points"].as_array().unwrap();
    assert_eq!(points.len(), 12);
    let exact: Vec<u64> = [100, 220, 340, 460, 580].iter().map(|t| t * MIB / 8).collect();
    let blocks: Vec<u64> = [112, 224, 352, 464, 592].iter().map(|t| t * MIB / 8).collect();
    for p in points {
        let (mode, g) = (p["conversation"]["mode"].as_str().unwrap(), p["granularity"].as_str().unwrap());
        let want = match (mode, g) {
            ("full", "block") => blocks.clone(),
            ("full", _) => exact.clone(),
            ("delta" | "bidirectional", _) => vec![14 * MIB; 5],
            ("d-direct", "block") => vec![14 * MIB, 0, 0, 0, 0],
            ("d-direct", _) => vec![100 * MIB / 8, 0, 0, 0, 0],
            other => panic!("unexpected point {other:?}"),
        };
        assert_eq!(turns(p, "bytes"), want, "{mode} at {g}");
        let back = match mode {
            "bidirectional" if g == "block" => vec![0, 16 * MIB, 30 * MIB, 46 * MIB, 60 * MIB],
            "bidirectional" => [0, 120, 240, 360, 480].iter().map(|t| t * MIB / 8).collect(),
            _ => vec![0; 5],
        };
        assert_eq!(turns(p, "back_bytes"), back, "{mode} at {g}");
        assert_eq!(p["wrong_bytes"], 0);
        // Each turn that moves was timed for both conversations, both ways.
        for t in p["conversation"]["turns"].as_array().unwrap() {
            let n = t["transfer_ns"]["count"].as_u64().unwrap();
            assert_eq!(n, if t["bytes"] == 0 { 0 } else { 2 }, "{t}");
            let n = t["back_ns"]["count"].as_u64().unwrap();
            assert_eq!(n, if t["back_bytes"] == 0 { 0 } else { 2 }, "{t}");
        }
    }
    // Prefill checked every byte that came back: bidirectional verified
    // delta's bytes and what came back, in both conversations.
    for g in ["request", "layer", "block"] {
        let at = |mode: &str| {
            let p =
                points.iter().find(|p| p["granularity"] == g && p["conversation"]["mode"] == mode).unwrap();
            (p["verified_bytes"].as_u64().unwrap(), turns(p, "back_bytes").iter().sum::<u64>())
        };
        let ((delta, _), (bidirectional, back)) = (at("delta"), at("bidirectional"));
        assert_eq!(bidirectional - delta, 2 * back, "{g}");
    }
    assert!(f.stdout.contains("#   delta: 70 MiB a conversation, 33% of full's 212.50 MiB"), "{}", f.stdout);
    // kvxfer report plots bytes and time per turn.
    let out = dir.path().join("report");
    run(KVXFER, &["report", j.to_str().unwrap(), "--out", out.to_str().unwrap()], secs(60)).expect_code(0);
    assert!(out.join("turns.png").exists() && out.join("turns.svg").exists());
    // And writes a CSV row per turn: 12 points of 5 turns.
    let rows = std::fs::read_to_string(out.join("turns.csv")).unwrap();
    assert_eq!(rows.lines().count(), 1 + 12 * 5);
    assert!(
        rows.lines()
            .any(|l| l.contains(",bidirectional,block,2,2,220,112,14680064,128,16777216,46137344,448,2,")),
        "{rows}"
    );
}

#[test]
fn conversations_move_over_ucx_too() {
    let args =
        [CONVERSATION, &["-g", "layer,block", "-t", "ucx", "--multi-turn", "full,delta,bidirectional"]]
            .concat();
    let f = run(KVXFER, &[&["pair"], &args[..]].concat(), secs(120));
    f.expect_code(0);
    assert!(f.stdout.contains("0 wrong bytes"), "{}", f.stdout);
}

/// Under arrivals, 3 conversations take turns (every turn 1, then every
/// turn 2, ...), each in a region of its own on both sides: were two to
/// share one, each turn's check would find the other's keys.
#[test]
fn conversations_take_turns_under_arrivals_each_in_a_region_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("load.json");
    let args = [
        &["pair", "-m", "llama-3.1-8b", "--turns", "3", "--turn-tokens", "100:20", "-n", "3"][..],
        &["-g", "layer,block", "--arrivals", "fixed:50", "--json", j.to_str().unwrap()],
    ]
    .concat();
    let f = run(KVXFER, &args, secs(120));
    f.expect_code(0);
    assert!(f.stdout.contains("0 wrong bytes"), "{}", f.stdout);
    assert!(f.stdout.contains("taking turns (every turn 1, then every turn 2, ...)"), "{}", f.stdout);
    assert!(f.stdout.contains("3 conversations held at once"), "{}", f.stdout);
    let r = json(&j);
    let points = r["points"].as_array().unwrap();
    assert_eq!(points.len(), 8);
    for p in points {
        let c = &p["conversation"];
        let moving = if c["mode"] == "d-direct" { 1 } else { 3 };
        assert_eq!(p["load"]["latency_ns"]["count"], 3 * moving, "{p}");
        assert_eq!(c["regions"], 3);
        for t in c["turns"].as_array().unwrap() {
            let n = t["transfer_ns"]["count"].as_u64().unwrap();
            assert_eq!(n, if t["bytes"] == 0 { 0 } else { 3 }, "{t}");
        }
    }
}

/// Under arrivals with a decode buffer, each turn's KV takes room in the
/// buffer from its go until its hold ends, as a request's does (the
/// connector's buffer, which decode empties into its own cache). Delta
/// turns of 64 input and 16 output tokens in 16-token blocks each move the
/// 64 new tokens' 4 blocks, 8 MiB (decode writes its output's KV itself,
/// and each context ends on a block); held 200 ms at 40 turns a second,
/// several are held at once. A buffer of 8 MiB that waits never holds
/// more, and turns wait for room; one of 4 MiB that spills sends tensors
/// to the pool; every byte is still checked where the turn put it.
#[test]
fn conversations_under_arrivals_take_room_in_a_decode_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("turns.json");
    let base = [
        &["pair", "-m", "llama-3.1-8b", "--block-size", "16", "--turns", "3", "--turn-tokens", "64:16"][..],
        &[
            "--multi-turn",
            "delta",
            "-n",
            "4",
            "--arrivals",
            "poisson:40",
            "--seed",
            "2",
            "--decode-hold",
            "200",
        ],
        &["-q", "--json", j.to_str().unwrap()],
    ]
    .concat();
    let point = |extra: &[&str]| -> Value {
        run(KVXFER, &[&base[..], extra].concat(), secs(120)).expect_code(0);
        let r = json(&j);
        assert_eq!((r["outcome"].as_str(), r["wrong_bytes"].as_u64()), (Some("ok"), Some(0)));
        r["points"][0].clone()
    };
    let free = point(&[]);
    assert_eq!(turns(&free, "bytes"), [8 * MIB; 3]);
    assert!(free["load"]["resident"]["peak_bytes"].as_u64().unwrap() > 8 * MIB, "{}", free["load"]);
    let wait = point(&["--decode-buffer", "8MiB", "--on-full", "wait"]);
    let l = &wait["load"];
    assert_eq!(l["latency_ns"]["count"], 12);
    assert!(l["resident"]["peak_bytes"].as_u64().unwrap() <= 8 * MIB, "{l}");
    assert!(l["decode_buffer"]["waited_requests"].as_u64().unwrap() > 0, "{l}");
    let spill = point(&["--decode-buffer", "4MiB", "--on-full", "spill"]);
    let l = &spill["load"];
    assert!(l["resident"]["peak_bytes"].as_u64().unwrap() <= 4 * MIB, "{l}");
    assert!(l["decode_buffer"]["spilled_tensors"].as_u64().unwrap() > 0, "{l}");
}

/// A trace of conversations: each turn at its time, in its conversation's
/// region (two in progress at once, a third later in a freed one), its
/// whole prompt given; a turn out of order is refused.
#[test]
fn a_conversation_trace_runs_turn_by_turn_and_refuses_a_turn_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("turns.csv");
    let text = "arrival_ms,prompt,output,conversation,turn\n0,100,20,a,1\n5,50,0,b,1\n10,220,20,a,2\n\
                15,90,10,b,2\n20,400,0,a,3\n25,64,0,c,1\n30,100,0,c,2\n";
    std::fs::write(&trace, text).unwrap();
    let j = dir.path().join("trace.json");
    let at = format!("trace:{}", trace.display());
    let args = [
        &["pair", "-m", "llama-3.1-8b", "-g", "layer,block", "--multi-turn", "full,delta,bidirectional"][..],
        &["--arrivals", &at, "--json", j.to_str().unwrap()],
    ]
    .concat();
    let f = run(KVXFER, &args, secs(120));
    f.expect_code(0);
    assert!(f.stdout.contains("0 wrong bytes"), "{}", f.stdout);
    let r = json(&j);
    for p in r["points"].as_array().unwrap() {
        let c = &p["conversation"];
        assert_eq!((c["conversations"].as_u64(), c["regions"].as_u64()), (Some(3), Some(2)), "{p}");
        let counts: Vec<u64> = c["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["transfer_ns"]["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, vec![3, 3, 1]);
    }
    // b's turn 2 comes before its turn 1.
    std::fs::write(&trace, "0,50,0,b,2\n5,100,0,b,1\n").unwrap();
    let f = run(KVXFER, &["pair", "--arrivals", &at], secs(10));
    f.expect_code(2).expect_stderr("line 1: turn 2 of conversation 'b' out of order");
}

/// A delta block written at the wrong offset fails the run and is named:
/// turn 2 moves blocks 7-13; block 7's bytes land on block 8 as well.
#[test]
fn a_delta_block_at_the_wrong_offset_fails_the_run_and_is_named() {
    let args = [CONVERSATION, &["-g", "block", "--multi-turn", "delta", "--fault", "wrong-offset"]].concat();
    let f = run(KVXFER, &[&["pair"], &args[..]].concat(), secs(60));
    f.expect_code(3).expect_stderr("conversation 0, turn 2: r").expect_stderr("/L0/K/b8 byte 0");
    let args = [CONVERSATION, &["-g", "layer", "--multi-turn", "delta", "--fault", "wrong-offset"]].concat();
    let f = run(KVXFER, &[&["pair"], &args[..]].concat(), secs(60));
    f.expect_code(3).expect_stderr("/L1 byte");
}

/// A block that turn 1 left partly filled (block 6, tokens 96-111, holding
/// 4) re-sent as it was then: the stale block fails the run and is named.
/// Without output, delta re-sends it at turn 2; with output, decode filled
/// it itself and full re-sends it.
#[test]
fn a_stale_partial_block_fails_the_run_and_is_named() {
    for (mode, tokens) in [("delta", "100"), ("full", "100:20")] {
        let args = [
            &[
                "pair",
                "-m",
                "llama-3.1-8b",
                "--block-size",
                "16",
                "--turns",
                "3",
                "--turn-tokens",
                tokens,
                "-n",
                "1",
                "-g",
                "block",
            ][..],
            &["--multi-turn", mode, "--fault", "stale-block"],
        ]
        .concat();
        let f = run(KVXFER, &args, secs(60));
        f.expect_code(3).expect_stderr("conversation 0, turn 2: r").expect_stderr("/L0/K/b6 byte 0");
    }
}

#[test]
fn conversations_refuse_what_they_cannot_run() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--arrivals", "fixed:5", "--concurrency", "4"],
            "conversations under --arrivals go one turn at a time",
        ),
        (&["--prefill-ms", "100:10"], "a conversation's turn computes only what prefill has not cached"),
        // Planned in about a second, not laid out for minutes ignoring signals.
        (
            &["--arrivals", "poisson:100000", "--duration", "100s"],
            "conversations of 5 turns a point, more than 100000",
        ),
        (
            &["--arrivals", "fixed:5", "--prompt-mix", "1k:1"],
            "a conversation's turns give its prompt lengths",
        ),
    ];
    for (extra, needle) in cases {
        let args = [&["pair"], CONVERSATION, extra].concat();
        run(KVXFER, &args, secs(10)).expect_code(2).expect_stderr(needle);
    }
    let f = run(KVXFER, &["pair", "--turns", "0", "--turn-tokens", "100"], secs(10));
    f.expect_code(2).expect_stderr("--turns must be at least 1");
    let f = run(KVXFER, &["pair", "-m", "qwen3-8b", "--turns", "50", "--turn-tokens", "1k"], secs(10));
    f.expect_code(2).expect_stderr("past the model's 40960");
}

/// Emulated prefill in conversations: each turn computes its prompt past
/// the whole blocks prefill has cached (its own earlier prompts; with the
/// KV sent back, the context before the turn), and the figures come per
/// turn. Prompts 100, 220, 340, 460, 580; delta computes from 0, 96, 208,
/// 336, 448 (100, 124, 132, 124, 132 tokens), bidirectional from 0, 112,
/// 240, 352, 480 (100, 108, 100, 108, 100). Both phases check every byte.
#[test]
fn conversations_with_emulated_prefill_compute_what_prefill_has_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("turns.json");
    let modes = ["--multi-turn", "delta,bidirectional", "--prefill-tflops", "400", "-g", "block"];
    let args = [&["pair"], CONVERSATION, &modes, &["--json", j.to_str().unwrap()]].concat();
    let f = run(KVXFER, &args, secs(120));
    f.expect_code(0);
    assert!(f.stdout.contains("turn 2, 124 tokens computed"), "{}", f.stdout);
    let r = json(&j);
    assert_eq!(r["wrong_bytes"], 0);
    let each = |p: &Value, what: &str| -> Vec<u64> {
        let by = p["prefill"]["by_prompt"].as_array().unwrap();
        by.iter().map(|b| b[what].as_u64().or(b[what]["count"].as_u64()).unwrap()).collect()
    };
    let points = r["points"].as_array().unwrap();
    let (delta, back) = (&points[0], &points[1]);
    assert_eq!(each(delta, "turn"), [1, 2, 3, 4, 5]);
    assert_eq!(each(delta, "tokens"), [100, 124, 132, 124, 132]);
    assert_eq!(each(back, "tokens"), [100, 108, 100, 108, 100]);
    assert_eq!(each(delta, "added_ns"), [2; 5], "two conversations a mode");
    // The same tokens later in the context attend to more of it.
    let asked = each(delta, "asked_ns");
    assert!(asked[4] > asked[2] && asked[3] > asked[1], "{asked:?}");
    assert_eq!(asked[0], each(back, "asked_ns")[0], "turn 1 computes its whole prompt either way");
    // The point's compute alone is its longest turn's.
    assert_eq!(delta["prefill"]["asked_ns"].as_u64(), asked.iter().max().copied());
    // A block at the wrong offset is still caught and named.
    let fault = [&["pair"], CONVERSATION, &modes[..4], &["-g", "block", "--fault", "wrong-offset"]].concat();
    run(KVXFER, &fault, secs(60)).expect_code(3).expect_stderr("conversation 0, turn 2: r");
}

/// Under `--duration`, as many conversations as the turns that arrive in
/// it make whole: 20 a second for 1 s are 20 turns, six conversations of
/// three (18 turns). A trace of conversations keeps its own times.
#[test]
fn conversations_under_arrivals_run_for_a_duration() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("d.json");
    let args = [
        "pair",
        "-m",
        "llama-3.1-8b",
        "--block-size",
        "16",
        "--turns",
        "3",
        "--turn-tokens",
        "64:16",
        "--multi-turn",
        "delta",
        "-g",
        "block",
        "--arrivals",
        "fixed:20",
        "--duration",
        "1s",
        "--json",
        j.to_str().unwrap(),
    ];
    let f = run(KVXFER, &args, secs(60));
    f.expect_code(0);
    assert!(f.stdout.contains("as many conversations as the turns arriving in --duration"), "{}", f.stdout);
    let p = &json(&j)["points"][0];
    assert_eq!(
        (p["conversation"]["conversations"].as_u64(), p["load"]["latency_ns"]["count"].as_u64()),
        (Some(6), Some(18))
    );
    assert_eq!(p["wrong_bytes"], 0);
    let trace = dir.path().join("t.csv");
    std::fs::write(&trace, "0,100,20,a,1\n5,50,0,b,1\n10,220,20,a,2\n").unwrap();
    let arrivals = format!("trace:{}", trace.display());
    let f = run(KVXFER, &["pair", "--arrivals", &arrivals, "--duration", "1s", "-g", "block"], secs(10));
    f.expect_code(2).expect_stderr("the trace's times bound the run");
}
