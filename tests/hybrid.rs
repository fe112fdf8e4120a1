//! Hybrid models end to end: gpt-oss-120b (sliding windows) and
//! qwen3-next-80b-a3b (gated-delta-net state) moved over tcp and ucx in
//! layer and block messages, contiguous and random tables, as vLLM's
//! hybrid KV cache manager keeps them: the bytes by hand, every byte checked,
//! a misplaced state named by its group, and configs that contradict
//! themselves refused naming the key.

mod common;
use common::*;
use serde_json::Value;

/// `kvxfer pair` to the end; its JSON report.
fn pair(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut all = vec!["pair", "--json", path.to_str().unwrap(), "-n", "2", "-w", "1"];
    all.extend_from_slice(args);
    run(KVXFER, &all, secs(240)).expect_code(0);
    json(&path)
}

/// (granularity, prompt) -> request bytes of a report's points.
fn bytes(r: &Value) -> Vec<(String, u64, u64)> {
    r["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["granularity"].as_str().unwrap().to_string(),
                p["prompt_tokens"].as_u64().unwrap(),
                p["request_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn tcp_and_ucx_move_what_the_hybrid_manager_keeps_with_every_byte_checked() {
    // gpt-oss-120b, blocks of 64, 2048 B a token a layer (131,072 a block):
    // 100 tokens: 2 blocks in every layer (the window keeps them all);
    // layers carry 100 tokens each. 700 tokens: full layers 11 blocks,
    // windowed ones keep blocks 8..10 (573 tokens skipped); layers: full
    // 700 tokens, windowed 700 - 512 = 188.
    let oss = [
        ("layer".to_string(), 100, 36 * 100 * 2048),
        ("layer".to_string(), 700, 18 * 700 * 2048 + 18 * 188 * 2048),
        ("block".to_string(), 100, 36 * 2 * 131_072),
        ("block".to_string(), 700, (18 * 11 + 18 * 3) * 131_072),
    ];
    // qwen3-next-80b-a3b: prefill stops at N - 1; 12 attention layers of
    // 2048 B a token, blocks of 576 (1,179,648 B); 36 states of 1,097,728 B.
    let state = 36 * 1_097_728;
    let qwen = [
        ("layer".to_string(), 100, 12 * 99 * 2048 + state),
        ("layer".to_string(), 700, 12 * 699 * 2048 + state),
        ("block".to_string(), 100, 12 * 1_179_648 + state),
        ("block".to_string(), 700, 12 * 2 * 1_179_648 + state),
    ];
    for transport in ["tcp", "ucx"] {
        for (model, want) in [("gpt-oss-120b", &oss), ("qwen3-next-80b-a3b", &qwen)] {
            for table in ["contiguous", "random:3"] {
                let r = pair(&[
                    "-t",
                    transport,
                    "--model",
                    model,
                    "-p",
                    "100,700",
                    "-g",
                    "layer,block",
                    "--block-table",
                    table,
                ]);
                let what = format!("{transport} {model} {table}");
                assert_eq!(r["outcome"], "ok", "{what}");
                assert_eq!(r["wrong_bytes"], 0, "{what}");
                assert_eq!(bytes(&r), want.to_vec(), "{what}");
                for p in r["points"].as_array().unwrap() {
                    // Every byte of every request, warm-up included.
                    assert_eq!(
                        p["verified_bytes"].as_u64().unwrap(),
                        3 * p["request_bytes"].as_u64().unwrap(),
                        "{what}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_misplaced_state_or_window_block_is_named_by_its_group_and_exits_3() {
    let r = run(
        KVXFER,
        &[
            "pair",
            "--model",
            "qwen3-next-80b-a3b",
            "-p",
            "300",
            "-g",
            "block",
            "-n",
            "2",
            "--fault",
            "misplaced-state",
        ],
        secs(120),
    );
    r.expect_code(3).expect_stderr("/L0/conv0 (state layer)");
    let r = run(
        KVXFER,
        &[
            "pair",
            "-t",
            "ucx",
            "--model",
            "gpt-oss-120b",
            "-p",
            "300",
            "-g",
            "layer",
            "-n",
            "2",
            "--fault",
            "misplaced-state",
        ],
        secs(120),
    );
    r.expect_code(3).expect_stderr("/L0 (sliding window 128 layer)");
}

#[test]
fn plan_and_size_show_each_group_and_what_hma_saves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let r = run(
        KVXFER,
        &["plan", "--model", "gpt-oss-120b", "-p", "32k", "-g", "block", "--json", path.to_str().unwrap()],
        secs(30),
    );
    r.expect_code(0);
    assert!(r.stdout.contains("sliding window 128             18"), "{}", r.stdout);
    assert!(r.stdout.contains("0.502"), "{}", r.stdout);
    let groups = &json(&path)["layer_groups"];
    // 18 x 512 + 18 x 2 blocks of 131,072 B, and 36 x 512 in full.
    assert_eq!(groups["request_bytes"][0], 1_212_678_144u64);
    assert_eq!(groups["every_layer_in_full_bytes"][0], 2_415_919_104u64);
    let r = run(KVXFER, &["size", "--model", "gpt-oss-120b", "-p", "32k", "--concurrent", "2"], secs(30));
    r.expect_code(0);
    // P2pNccl runs without vLLM's hybrid KV cache manager: 2 x 36 x 32768 x
    // 2048; with it (NixlConnector) 2 x (18 x 32768 + 18 x 128) x 2048.
    assert!(r.stdout.contains("kv_buffer_size    4831838208 (4.50 GiB)"), "{}", r.stdout);
    let hma = "(2425356288 (2.26 GiB) of them as vLLM's hybrid KV cache manager keeps";
    assert!(r.stdout.contains(hma), "{}", r.stdout);
    assert!(r.stdout.contains("so vLLM turns it off for them"), "{}", r.stdout);
    let r = run(KVXFER, &["size", "--model", "qwen3-next-80b-a3b", "-p", "32k"], secs(30));
    r.expect_code(0);
    assert!(r.stdout.contains("vLLM refuses to start them with this model"), "{}", r.stdout);
}

#[test]
fn inputs_a_hybrid_model_cannot_take_are_refused_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"num_hidden_layers": 4, "num_key_value_heads": 8, "head_dim": 64, "torch_dtype": "bfloat16",
           "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}"#,
    )
    .unwrap();
    run(KVXFER, &["plan", "--model-config", cfg.to_str().unwrap()], secs(30))
        .expect_code(2)
        .expect_stderr("'layer_types': has 3 entries for 4 layers");
    run(
        KVXFER,
        &["plan", "-m", "deepseek-v3.2", "--prefill-tp", "2", "--decode-tp", "1", "-g", "block"],
        secs(30),
    )
    .expect_code(2)
    .expect_stderr("not built yet");
    // Qwen3-Next's 2 KV heads: at TP 4 a page holds a state in 320 tokens, at TP 2 in 640.
    run(
        KVXFER,
        &["plan", "-m", "qwen3-next-80b-a3b", "--prefill-tp", "2", "--decode-tp", "4", "-g", "block"],
        secs(30),
    )
    .expect_code(2)
    .expect_stderr("blocks of 640 tokens, decode at TP 4 in blocks of 320");
    run(
        KVXFER,
        &["pair", "-m", "gpt-oss-120b", "-g", "request", "--turns", "2", "--turn-tokens", "64:16"],
        secs(30),
    )
    .expect_code(2)
    .expect_stderr("use -g layer or block");
    // HMA off: every layer in full, as before hybrid models.
    let r = pair(&["--model", "gpt-oss-120b", "--hma", "off", "-p", "100", "-g", "layer"]);
    assert_eq!(bytes(&r), vec![("layer".to_string(), 100, 36 * 100 * 2048)]);
}

/// gpt-oss-120b in conversations: each turn's windowed layers move what
/// their window holds when the turn's prompt ends, every mode's bytes are
/// `kvxfer plan`'s, and the receiver finds every byte decode holds in place.
#[test]
fn conversations_move_each_window_as_it_slides() {
    let turns = ["--turns", "4", "--turn-tokens", "100:20", "-m", "gpt-oss-120b"];
    for g in ["layer", "block"] {
        let f = run(
            KVXFER,
            &[&["plan", "-g", g, "--multi-turn", "full,delta,bidirectional"][..], &turns].concat(),
            secs(30),
        );
        f.expect_code(0);
        let total = f.stdout.lines().find(|l| l.starts_with("total")).unwrap().to_string();
        for (mode, at) in [("full", 0), ("delta", 1), ("bidirectional", 2)] {
            let r = pair(&[&["-g", g, "--multi-turn", mode][..], &turns].concat());
            assert_eq!(r["wrong_bytes"], 0, "{g} {mode}");
            let p = &r["points"][0];
            let bytes = p["request_bytes"].as_u64().unwrap();
            // The plan's total for the mode, in the binary's own units.
            let cell: Vec<&str> = total.split_whitespace().collect();
            let planned = format!("{} {}", cell[1 + 3 * at], cell[2 + 3 * at]);
            assert_eq!(fmt(bytes), planned, "{g} {mode}: {total}");
        }
    }
    // By hand, blocks, full: turn 2's prompt of 220 tokens ends in block 3;
    // the windowed layers skipped tokens 0..93, so block 0, and move 1..3:
    // (18 x 4 + 18 x 3) x 131,072 = 16,515,072 B (15.75 MiB).
    let r = pair(&[&["-g", "block", "--multi-turn", "full"][..], &turns].concat());
    assert_eq!(r["points"][0]["conversation"]["turns"][1]["bytes"], 16_515_072u64);
}

/// The binary's own way of writing bytes (units::fmt_bytes), for the plan's cells.
fn fmt(b: u64) -> String {
    let mib = b as f64 / (1u64 << 20) as f64;
    if mib == mib.trunc() {
        format!("{mib:.0} MiB")
    } else {
        format!("{mib:.2} MiB")
    }
}
