//! Prefill and decode at different TP: P sender and D receiver processes
//! on loopback, each decode rank taking its heads from its prefill ranks
//! as vLLM's NixlConnector reads them, over tcp, ucx and ofi; every byte
//! checked where the model's layout puts it.

mod common;
use common::*;
use serde_json::Value;
use std::sync::{Mutex, MutexGuard};

/// Each run is P + D processes that poll: one at a time on 2 cores.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const LLAMA_8B_TOKEN: u64 = 32 * 2 * 8 * 128 * 2; // layers x K/V x heads x head_dim x bf16
const DEEPSEEK_V3_TOKEN: u64 = 61 * 576 * 2; // layers x (latent 512 + rope 64) x bf16

/// The decode ranks that read from prefill rank `rank`, by hand from
/// NixlConnector's rule (not from kvxfer's code).
fn readers_of(prefill: u32, decode: u32, rank: u32, mla: bool) -> Vec<u32> {
    if decode >= prefill {
        let r = decode / prefill;
        (rank * r..(rank + 1) * r).collect()
    } else {
        let r = prefill / decode;
        // MLA's latent is read once, from the first rank of each group.
        if mla && !rank.is_multiple_of(r) {
            vec![]
        } else {
            vec![rank / r]
        }
    }
}

struct TpRun {
    decode: Vec<Finished>,
    prefill: Vec<Finished>,
    reports: Vec<Value>,
}

/// Starts D receivers and P senders with `args` (model, transport...) and
/// runs them to the end; the exit codes are left to the caller.
fn tp_run(prefill: u32, decode: u32, mla: bool, args: &[&str], fault_on: Option<u32>) -> TpRun {
    let dir = tempfile::tempdir().unwrap();
    let rjson = |d: u32| dir.path().join(format!("decode{d}.json"));
    // The library a sender loads, its receivers load too.
    let lib: Vec<&str> =
        args.windows(2).find(|w| w[0] == "--nixl-lib").map(|w| w.to_vec()).unwrap_or_default();
    let receivers: Vec<(Proc, String)> = (0..decode)
        .map(|d| {
            let (rank, json) = (d.to_string(), rjson(d));
            let mut a = vec!["--decode-rank", &rank, "--json", json.to_str().unwrap()];
            a.extend(&lib);
            receiver("127.0.0.1:0", &a)
        })
        .collect();
    let (p, d) = (prefill.to_string(), decode.to_string());
    let senders: Vec<Proc> = (0..prefill)
        .map(|rank| {
            let rank_s = rank.to_string();
            let mut a: Vec<&str> =
                vec!["--prefill-tp", &p, "--decode-tp", &d, "--prefill-rank", &rank_s, "-q"];
            let addrs: Vec<&str> = match readers_of(prefill, decode, rank, mla) {
                // A prefill rank nobody reads still names a receiver: it must not connect.
                r if r.is_empty() => vec![receivers[0].1.as_str()],
                r => r.iter().map(|&x| receivers[x as usize].1.as_str()).collect(),
            };
            for addr in addrs {
                a.extend(["--connect", addr]);
            }
            a.extend_from_slice(args);
            if fault_on == Some(rank) {
                a.extend(["--fault", "shift-head"]);
            }
            Proc::start(SEND, &a)
        })
        .collect();
    let prefill = senders.into_iter().map(|s| s.finish(secs(120))).collect();
    let decode: Vec<Finished> = receivers.into_iter().map(|(r, _)| r.finish(secs(30))).collect();
    let reports =
        (0..decode.len() as u32).filter_map(|d| std::fs::read_to_string(rjson(d)).ok()).collect::<Vec<_>>();
    let reports = reports.iter().map(|t| serde_json::from_str(t).unwrap()).collect();
    TpRun { decode, prefill, reports }
}

/// Every process ended well and each decode rank received exactly its
/// share of the request, every byte of it verified.
fn assert_clean(run: &TpRun, decode: u32, share: u64, iterations: u64) {
    for f in run.prefill.iter().chain(&run.decode) {
        f.expect_code(0);
    }
    assert_eq!(run.reports.len(), decode as usize);
    for (d, r) in run.reports.iter().enumerate() {
        assert_eq!(r["outcome"], "ok", "decode rank {d}");
        assert_eq!(r["wrong_bytes"], 0);
        let point = &r["points"][0];
        assert_eq!(point["request_bytes"].as_u64().unwrap(), share, "decode rank {d}: {point}");
        let warmup = r["plan"]["warmup"].as_u64().unwrap();
        assert_eq!(
            point["verified_bytes"].as_u64().unwrap(),
            share * (iterations + warmup),
            "decode rank {d}"
        );
    }
}

fn llama(prefill: u32, decode: u32, layout: &str, transport: &[&str]) {
    let mut args = vec![
        "-m",
        "llama-3.1-8b",
        "--block-size",
        "16",
        "--kv-layout",
        layout,
        "-p",
        "32",
        "-g",
        "block",
        "-n",
        "2",
    ];
    args.extend_from_slice(transport);
    let run = tp_run(prefill, decode, false, &args, None);
    // 32 tokens are two whole blocks of 16; each decode rank holds 8/D heads.
    assert_clean(&run, decode, 32 * LLAMA_8B_TOKEN / decode as u64, 2);
}

fn every_topology(transport: &[&str]) {
    for layout in ["hnd", "nhd"] {
        for (p, d) in [(2, 1), (1, 2), (2, 4)] {
            llama(p, d, layout, transport);
        }
    }
    // MLA: the latent is replicated; decode reads one whole copy from prefill rank 0.
    let mut args = vec!["-m", "deepseek-v3", "-p", "32", "-g", "block", "-n", "2"];
    args.extend_from_slice(transport);
    let run = tp_run(2, 1, true, &args, None);
    assert!(run.prefill[1].stderr.contains("nothing to send"), "{}", run.prefill[1].stderr);
    // 32 tokens fill part of one 64-token block, which travels whole.
    assert_clean(&run, 1, 64 * DEEPSEEK_V3_TOKEN, 2);
}

#[test]
fn tcp_moves_each_decode_ranks_heads_in_every_layout() {
    let _serial = one_at_a_time();
    every_topology(&[]);
    // FlashInfer's blocks-first layout, both ways.
    llama(2, 1, "blocks-first", &[]);
    llama(1, 2, "blocks-first", &[]);
}

#[test]
fn ucx_put_and_get_move_each_decode_ranks_heads() {
    let _serial = one_at_a_time();
    for op in ["put", "get"] {
        every_topology(&["-t", "ucx", "--ucx-op", op]);
    }
}

#[test]
fn ofi_write_and_read_move_each_decode_ranks_heads() {
    let _serial = one_at_a_time();
    for op in ["write", "read"] {
        every_topology(&["-t", "ofi", "--ofi-provider", "tcp", "--ofi-op", op]);
    }
}

/// NixlConnector's own pattern over NIXL's UCX backend: each decode rank
/// reads (or is written) its heads of every block from its prefill ranks.
#[test]
fn nixl_read_and_write_move_each_decode_ranks_heads() {
    let _serial = one_at_a_time();
    let lib = nixl_lib();
    for op in ["read", "write"] {
        for (p, d) in [(2, 1), (1, 2)] {
            llama(p, d, "hnd", &["-t", "nixl", "--nixl-op", op, "--nixl-lib", &lib]);
        }
    }
}

#[test]
fn a_head_at_the_wrong_offset_fails_the_run_naming_it() {
    let _serial = one_at_a_time();
    let args = ["-m", "llama-3.1-8b", "--block-size", "16", "-p", "32", "-g", "block", "-n", "2"];
    // Under arrivals too: requests then go on lanes, which write through the same faults.
    for (p, d, layout, load) in [(2, 1, "hnd", false), (1, 2, "nhd", false), (2, 1, "hnd", true)] {
        let mut args = args.to_vec();
        args.extend(["--kv-layout", layout]);
        if load {
            args.extend(["--arrivals", "fixed:50", "--concurrency", "2"]);
        }
        let run = tp_run(p, d, false, &args, Some(0));
        let faulted = &run.decode[0];
        faulted.expect_code(3);
        assert!(
            faulted.stderr.contains("head 0 token 0 (decode rank 0, from prefill rank 0)"),
            "{layout}: {}",
            faulted.stderr
        );
        run.prefill[0].expect_code(3);
    }
}

#[test]
fn what_nixl_connector_refuses_is_refused() {
    let _serial = one_at_a_time();
    let llama = ["-m", "llama-3.1-8b", "--block-size", "16", "-p", "32", "-g", "block", "-n", "1"];
    // Different layouts on the two sides: refused at the handshake.
    let (recv, addr) = receiver("127.0.0.1:0", &["--kv-layout", "nhd"]);
    let args = [
        &["--connect", addr.as_str(), "--prefill-tp", "2", "--decode-tp", "1", "--prefill-rank", "0"][..],
        &llama,
    ];
    let send = run(SEND, &args.concat(), secs(30));
    send.expect_stderr("layout");
    assert_ne!(send.code, Some(0));
    let _ = recv.finish(secs(30));
    // A sender whose pair is another decode rank's.
    let (recv, addr) = receiver("127.0.0.1:0", &["--decode-rank", "1"]);
    let args = [
        &["--connect", addr.as_str(), "--prefill-tp", "2", "--decode-tp", "2", "--prefill-rank", "0"][..],
        &llama,
    ]
    .concat();
    let send = run(SEND, &args, secs(30));
    send.expect_stderr("decode rank");
    assert_ne!(send.code, Some(0));
    assert_ne!(recv.finish(secs(30)).code, Some(0));
    // Replicated prefill KV read by fewer decode ranks; layer granularity; a pair.
    for (args, says) in [
        (
            &["plan", "-m", "llama-3.1-8b", "--block-size", "16", "--prefill-tp", "16", "--decode-tp", "8"][..],
            "NixlConnector refuses",
        ),
        (
            &["plan", "-m", "llama-3.1-8b", "--block-size", "16", "--prefill-tp", "2", "--decode-tp", "3"][..],
            "power of two",
        ),
        (&["plan", "-m", "deepseek-v3", "--prefill-tp", "2", "--kv-layout", "nhd"][..], "MLA latent"),
        (&["pair", "--prefill-tp", "2", "--decode-tp", "1", "-n", "1"][..], "not a pair"),
    ] {
        run(KVXFER, args, secs(30)).expect_code(2).expect_stderr(says);
    }
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    let send = run(
        SEND,
        &["--connect", &addr, "--prefill-tp", "1", "--decode-tp", "2", "-g", "layer", "-n", "1"],
        secs(30),
    );
    send.expect_code(2).expect_stderr("use -g block");
    drop(recv);
}

#[test]
fn plan_shows_each_decode_ranks_prefill_ranks_and_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("plan.json");
    let args = [
        "plan",
        "-m",
        "llama-3.1-8b",
        "--block-size",
        "16",
        "--prefill-tp",
        "2",
        "--decode-tp",
        "4",
        "-p",
        "64",
        "--kv-layout",
        "nhd",
    ];
    let out = run(KVXFER, &[&args[..], &["--json", json_path.to_str().unwrap()]].concat(), secs(30));
    out.expect_code(0);
    assert!(out.stdout.contains("tp_ratio 2"), "{}", out.stdout);
    let doc = json(&json_path);
    let pairs = doc["pairs"].as_array().unwrap();
    // Decode ranks 0 and 1 read prefill rank 0, 2 and 3 read prefill rank 1.
    let ranks: Vec<(u64, u64)> = pairs
        .iter()
        .map(|p| (p["decode_rank"].as_u64().unwrap(), p["prefill_rank"].as_u64().unwrap()))
        .collect();
    assert_eq!(ranks, [(0, 0), (1, 0), (2, 1), (3, 1)]);
    for p in pairs {
        // NHD: 2 heads of 256 B in each of a block's 16 tokens, per (layer, K/V) of 4 blocks.
        assert_eq!(p["message_bytes"], 2 * 256);
        assert_eq!(p["messages"], 4 * 32 * 2 * 16);
        assert_eq!(p["request_bytes"], 64 * LLAMA_8B_TOKEN / 4);
    }
    // HND: the same heads are one piece of each block, and P > D reads two whole blocks.
    let out = run(
        KVXFER,
        &[
            "plan",
            "-m",
            "llama-3.1-8b",
            "--block-size",
            "16",
            "--prefill-tp",
            "4",
            "--decode-tp",
            "2",
            "-p",
            "64",
            "--json",
            json_path.to_str().unwrap(),
        ],
        secs(30),
    );
    out.expect_code(0);
    let doc = json(&json_path);
    let pairs = doc["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 4);
    for p in pairs {
        assert_eq!(p["message_bytes"], 2 * 16 * 256);
        assert_eq!(p["messages"], 4 * 32 * 2);
    }
}

/// Hybrid models between prefill and decode at different TP: each decode
/// rank gets its heads of every block a window or the full context keeps
/// (gpt-oss-120b, HND and NHD) and its slice of every gated-delta-net state
/// (qwen3-next-80b-a3b: decode's conv and SSM slices of prefill's, or
/// prefill ranks' whole states into their parts of decode's), every byte
/// checked, over tcp, ucx and nixl.
#[test]
fn hybrid_models_move_each_decode_ranks_heads_and_state_slices() {
    let _serial = one_at_a_time();
    let lib = nixl_lib();
    let nixl = ["-t", "nixl", "--nixl-op", "read", "--nixl-lib", &lib];
    for transport in [&["-t", "tcp"][..], &["-t", "ucx"], &nixl] {
        for (p, d, layout) in [(2, 1, "nhd"), (1, 2, "hnd"), (2, 4, "hnd")] {
            let mut args =
                vec!["-m", "gpt-oss-120b", "--kv-layout", layout, "-p", "300", "-g", "block", "-n", "2"];
            args.extend_from_slice(transport);
            let run = tp_run(p, d, false, &args, None);
            // 300 tokens, blocks of 64 x 2048 B: 18 full layers x 5 blocks and 18 windowed
            // ones x 3 (tokens 173.. kept: blocks 2-4), split over the decode ranks' heads.
            assert_clean(&run, d, (18 * 5 + 18 * 3) * 131_072 / d as u64, 2);
        }
        for (p, d) in [(1, 2), (2, 1)] {
            let mut args = vec!["-m", "qwen3-next-80b-a3b", "-p", "300", "-g", "block", "-n", "2"];
            args.extend_from_slice(transport);
            let run = tp_run(p, d, false, &args, None);
            // 299 tokens in one block of 576 x 2048 B in 12 layers, 36 states of
            // 1,097,728 B; each decode rank's share of the heads.
            assert_clean(&run, d, (12 * 1_179_648 + 36 * 1_097_728) / d as u64, 2);
        }
    }
}

/// Conversations under different TP, back to back: each turn's delta (or
/// full prompt, or the KV sent back) moves as each pair cuts its blocks.
/// 3 turns of 100 in and 20 out, 16-token blocks: full moves 112, 224 and
/// 352 tokens' blocks, delta 112 each turn. Each decode rank holds 8/D
/// heads of every block, and checks all it holds after each turn; a head
/// read from the wrong place fails the run, named.
#[test]
fn conversations_move_each_decode_ranks_heads_turn_by_turn() {
    let _serial = one_at_a_time();
    let turns = [
        "-m",
        "llama-3.1-8b",
        "--block-size",
        "16",
        "--turns",
        "3",
        "--turn-tokens",
        "100:20",
        "-g",
        "block",
        "-n",
        "2",
        "--multi-turn",
        "full,delta,bidirectional",
    ];
    for (prefill, decode) in [(2, 1), (1, 2)] {
        let run = tp_run(prefill, decode, false, &turns, None);
        for f in run.prefill.iter().chain(&run.decode) {
            f.expect_code(0);
        }
        let share = |tokens: u64| tokens * LLAMA_8B_TOKEN / decode as u64;
        for r in &run.reports {
            assert_eq!((r["outcome"].as_str(), r["wrong_bytes"].as_u64()), (Some("ok"), Some(0)));
            let bytes = |p: usize| -> Vec<u64> {
                let t = r["points"][p]["conversation"]["turns"].as_array().unwrap();
                t.iter().map(|t| t["bytes"].as_u64().unwrap()).collect()
            };
            assert_eq!(bytes(0), [share(112), share(224), share(352)], "P{prefill} D{decode} full");
            assert_eq!(bytes(1), [share(112); 3], "P{prefill} D{decode} delta");
            let back = r["points"][2]["conversation"]["turns"][1]["back_bytes"].as_u64();
            assert_eq!(back, Some(share(128)), "P{prefill} D{decode}: the context sent back, 8 blocks");
        }
    }
    // Under arrivals each pair would count its share of a turn as a turn: refused, before anything runs.
    let args =
        [&["-c", "127.0.0.1:9", "--prefill-tp", "2", "--decode-tp", "1", "--prefill-rank", "0"][..], &turns]
            .concat();
    let f = run(SEND, &[&args[..], &["--arrivals", "poisson:5"]].concat(), secs(10));
    f.expect_code(2).expect_stderr("not yet under --arrivals");
    let run = tp_run(2, 1, false, &turns, Some(1));
    assert_eq!(run.decode[0].code, Some(3));
    run.decode[0]
        .expect_stderr("conversation 0, turn 1: r")
        .expect_stderr("(decode rank 0, from prefill rank 1)");
}
