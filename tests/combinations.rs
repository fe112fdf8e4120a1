//! Features together, as a deployment runs them: fans and P x D ranks
//! under arrivals, with a decode buffer. Each case runs real processes at a
//! tiny size over tcp and ucx, and checks requests, bytes and what the
//! decode side held against values worked out by hand.
//!
//! Llama-3.1-8B moves 128 KiB a token (32 layers x K and V x 8 heads x 128
//! x 2 bytes): a 16-token request is 2 MiB, a 64-token one 8 MiB.

mod common;
use common::*;
use serde_json::Value;

const KIB128: u64 = 128 << 10;
const TRANSPORTS: [&str; 2] = ["tcp", "ucx"];

/// P x D cases: blocks of 16 tokens, six requests of a 16/64-token mix
/// arriving by Poisson at 20/s, one warm-up, two lanes.
const BLOCKS_UNDER_LOAD: [&str; 14] = [
    "-g",
    "block",
    "--block-size",
    "16",
    "--prompt-mix",
    "16:50,64:50",
    "--arrivals",
    "poisson:20",
    "-n",
    "6",
    "-w",
    "1",
    "--concurrency",
    "2",
];

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_string()
}

/// A load point's requests per prompt length: (tokens, count).
fn counts(load: &Value) -> Vec<(u64, u64)> {
    let each = load["by_prompt"].as_array().unwrap().iter();
    each.map(|p| (p["tokens"].as_u64().unwrap(), p["requests"].as_u64().unwrap())).collect()
}

/// Timed bytes of a load point: its prompts' counts times their sizes.
fn timed_bytes(load: &Value) -> u64 {
    counts(load).iter().map(|(t, n)| t * n * KIB128).sum()
}

fn requests(load: &Value) -> u64 {
    counts(load).iter().map(|(_, n)| n).sum()
}

/// The mean request of a mix (a point of several lengths is named by it).
fn mean_request_bytes(load: &Value) -> u64 {
    timed_bytes(load) / requests(load)
}

/// Two prefill instances, each with its own Poisson arrivals, into one
/// decode instance whose 8 MiB buffer waits for room: one 8 MiB request or
/// four 2 MiB ones at a time, across both senders. Each is held 100 ms
/// after its last byte, so the 40 requests a second of the two together
/// (about 20 MiB held) cannot all fit and some wait.
#[test]
fn two_senders_under_poisson_arrivals_share_one_decode_buffer() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().unwrap();
        let (recv, addr) = receiver("127.0.0.1:0", &["--senders", "2", "--json", &path(&dir, "hub.json")]);
        let load = [
            "-t",
            transport,
            "-m",
            "llama-3.1-8b",
            "-g",
            "request",
            "--prompt-mix",
            "16:50,64:50",
            "--arrivals",
            "poisson:20",
            "-n",
            "8",
            "-w",
            "1",
            "--concurrency",
            "2",
            "--decode-buffer",
            "8MiB",
            "--on-full",
            "wait",
            "--decode-hold",
            "100",
            "-q",
        ];
        let senders: Vec<Proc> = (0..2)
            .map(|i| {
                let json = path(&dir, &format!("s{i}.json"));
                Proc::start(
                    SEND,
                    &[&["--connect", addr.as_str(), "--json", json.as_str()][..], &load].concat(),
                )
            })
            .collect();
        for s in senders {
            s.finish(secs(120)).expect_code(0);
        }
        let out = recv.finish(secs(20));
        out.expect_code(0);
        let hub = json(&dir.path().join("hub.json"));
        assert_eq!(
            (hub["outcome"].as_str(), hub["wrong_bytes"].as_u64()),
            (Some("ok"), Some(0)),
            "{transport}"
        );
        let agg = &hub["points"][0];
        let l = &agg["load"];
        let pairs: Vec<&Value> = hub["fan"]["pair_reports"].as_array().unwrap().iter().collect();
        let own: Vec<&Value> = pairs.iter().map(|r| &r["points"][0]).collect();
        // Every request of both senders, counted once at the hub.
        assert_eq!(requests(l), 16, "{transport}: {l}");
        assert_eq!(l["latency_ns"]["count"], 16);
        assert_eq!(agg["request_ns"]["count"], 16);
        assert_eq!(timed_bytes(l), own.iter().map(|p| timed_bytes(&p["load"])).sum::<u64>());
        // Each pair checked its timed requests and one warm-up on each of its 2 lanes.
        for p in &own {
            let extra = p["verified_bytes"].as_u64().unwrap() - timed_bytes(&p["load"]);
            assert!(
                [2 * 16 * KIB128, 2 * 64 * KIB128].contains(&extra),
                "{transport}: warm-ups of {extra} bytes"
            );
        }
        let verified: u64 = own.iter().map(|p| p["verified_bytes"].as_u64().unwrap()).sum();
        assert_eq!(agg["verified_bytes"].as_u64().unwrap(), verified);
        // Arrivals of their own: the senders' seeds differ.
        let seeds: Vec<&Value> = pairs.iter().map(|r| &r["plan"]["load"]["seed"]).collect();
        assert_ne!(seeds[0], seeds[1], "{transport}");
        // One buffer for both: never past 8 MiB together, and some waited.
        let b = &l["decode_buffer"];
        assert!(l["resident"]["peak_bytes"].as_u64().unwrap() <= 8 << 20, "{transport}: {}", l["resident"]);
        assert!(b["waited_requests"].as_u64().unwrap() > 0, "{transport}: {b}");
        assert!(out.stdout.contains("each sender its own arrivals"), "{}", out.stdout);
        assert!(out.stdout.contains("0 wrong bytes"), "{}", out.stdout);
    }
}

/// A prefill rank of Llama-3.1-8B at TP 2 feeding decode at TP 1 over
/// `transport`, blocks of 16 tokens, under Poisson arrivals of a 16/64 mix
/// on two lanes; `extra` adds to it.
fn p2_rank(addr: &str, transport: &str, rank: u32, extra: &[&str]) -> Proc {
    let rank = rank.to_string();
    let args = [
        "--connect",
        addr,
        "-t",
        transport,
        "-m",
        "llama-3.1-8b",
        "--prefill-tp",
        "2",
        "--decode-tp",
        "1",
        "--prefill-rank",
        &rank,
        "-q",
    ];
    Proc::start(SEND, &[&args[..], &BLOCKS_UNDER_LOAD, extra].concat())
}

/// Both prefill ranks (`p2_rank`) into one decode rank: its report, its
/// run checked whole.
fn p2_to_d1(transport: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (recv, addr) = receiver("127.0.0.1:0", &["--json", &path(&dir, "d0.json")]);
    let ranks: Vec<Proc> = (0..2).map(|p| p2_rank(&addr, transport, p, extra)).collect();
    for r in ranks {
        r.finish(secs(120)).expect_code(0);
    }
    recv.finish(secs(20)).expect_code(0);
    let hub = json(&dir.path().join("d0.json"));
    assert_eq!((hub["outcome"].as_str(), hub["wrong_bytes"].as_u64()), (Some("ok"), Some(0)), "{transport}");
    hub
}

/// Prefill at TP 2 into decode at TP 1 under arrivals: the two prefill
/// ranks carry the halves (4 of 8 KV heads) of one stream of requests,
/// and the decode rank counts each request once, whole.
#[test]
fn p2_to_d1_under_arrivals_counts_each_request_once() {
    for transport in TRANSPORTS {
        let hub = p2_to_d1(transport, &[]);
        let agg = &hub["points"][0];
        let own: Vec<&Value> =
            hub["fan"]["pair_reports"].as_array().unwrap().iter().map(|r| &r["points"][0]).collect();
        // Six requests, each made of two shares: counted once, whole.
        assert_eq!(requests(&agg["load"]), 6, "{transport}");
        assert_eq!(agg["request_ns"]["count"], 6);
        assert_eq!(agg["load"]["latency_ns"]["count"], 6);
        assert_eq!(agg["request_bytes"].as_u64().unwrap(), mean_request_bytes(&agg["load"]));
        for p in &own {
            assert_eq!(
                p["request_bytes"].as_u64().unwrap(),
                mean_request_bytes(&agg["load"]) / 2,
                "{transport}"
            );
            // The same stream on both ranks.
            assert_eq!(counts(&p["load"]), counts(&agg["load"]));
        }
        // Each rank checked its half of the timed requests and of one warm-up a lane.
        for p in &own {
            let extra = p["verified_bytes"].as_u64().unwrap() - timed_bytes(&p["load"]) / 2;
            assert!([16 * KIB128, 64 * KIB128].contains(&extra), "{transport}: warm-ups of {extra} bytes");
        }
        let verified: u64 = own.iter().map(|p| p["verified_bytes"].as_u64().unwrap()).sum();
        assert_eq!(agg["verified_bytes"].as_u64().unwrap(), verified);
    }
}

/// Prefill at TP 2 into decode at TP 1 under arrivals, each prefill rank
/// computing its requests layer by layer as they go: the decode rank joins
/// a request's two shares into one added TTFT, from the later rank's last
/// layer to the last share's last byte.
#[test]
fn p2_to_d1_under_arrivals_with_emulated_prefill_counts_each_request_s_ttft_once() {
    for transport in TRANSPORTS {
        let hub = p2_to_d1(transport, &["--prefill-ms", "16:4,64:16", "--overlap", "layer"]);
        let agg = &hub["points"][0];
        let f = &agg["prefill"];
        // Six requests, each two shares: one added TTFT each, and the same schedule again with prefill.
        assert_eq!(f["added_ns"]["count"], 6, "{transport}: {f}");
        assert_eq!(f["under_load"]["latency_ns"]["count"], 6);
        assert_eq!(counts(&f["under_load"]), counts(&agg["load"]));
        // A request's TTFT is its compute and what the transfer added: never below the compute.
        assert!(f["ttft_ns"]["min"].as_u64() >= f["during_ns"]["min"].as_u64(), "{f}");
        // Each length computes its own layers: 4 ms for 16 tokens, 16 ms for 64.
        for p in f["by_prompt"].as_array().into_iter().flatten() {
            let want = match p["tokens"].as_u64() {
                Some(16) => 4_000_000,
                Some(64) => 16_000_000,
                other => panic!("{other:?}"),
            };
            assert_eq!(p["asked_ns"].as_u64(), Some(want));
            assert!(p["during_ns"]["min"].as_u64().unwrap() >= want * 99 / 100, "{p}");
        }
        for r in hub["fan"]["pair_reports"].as_array().unwrap() {
            let p = &r["points"][0];
            // Each rank's own account: every request's share, both phases checked.
            assert_eq!(p["prefill"]["added_ns"]["count"], 6, "{transport}");
            let extra = p["verified_bytes"].as_u64().unwrap() - timed_bytes(&p["load"]);
            assert!(
                [2 * 16 * KIB128, 2 * 64 * KIB128].contains(&extra),
                "{transport}: warm-ups of {extra} bytes"
            );
        }
    }
}

/// One pair, four requests in flight, a mix of two prompt lengths, and
/// emulated prefill without overlap: each request computes its own
/// length's layers, one after another on the prefill instance, and the
/// figures hold each length apart.
#[test]
fn prefill_with_a_prompt_mix_on_four_lanes() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().unwrap();
        let (recv, addr) = receiver("127.0.0.1:0", &["-q"]);
        let (json_path, csv_path) = (path(&dir, "s.json"), path(&dir, "s.csv"));
        let args = [
            "--connect",
            &addr,
            "-t",
            transport,
            "-m",
            "llama-3.1-8b",
            "-g",
            "layer",
            "--prompt-mix",
            "16:50,64:50",
            "--prefill-ms",
            "16:4,64:16",
            "--overlap",
            "none",
            "--arrivals",
            "poisson:40",
            "-n",
            "12",
            "-w",
            "1",
            "--concurrency",
            "4",
            "--json",
            &json_path,
            "--csv",
            &csv_path,
            "-q",
        ];
        let out = Proc::start(SEND, &args).finish(secs(120));
        out.expect_code(0);
        recv.finish(secs(20)).expect_code(0);
        let r = json(&dir.path().join("s.json"));
        assert_eq!((r["outcome"].as_str(), r["wrong_bytes"].as_u64()), (Some("ok"), Some(0)), "{transport}");
        let point = &r["points"][0];
        let (f, l) = (&point["prefill"], &point["load"]);
        assert_eq!(f["added_ns"]["count"], 12, "{transport}: {f}");
        assert_eq!(f["under_load"]["latency_ns"]["count"], 12);
        // Both phases checked: twice the timed bytes, and a warm-up on each lane twice.
        let extra = point["verified_bytes"].as_u64().unwrap() - 2 * timed_bytes(l);
        assert!(
            [8 * 16 * KIB128, 8 * 64 * KIB128].contains(&extra),
            "{transport}: warm-ups of {extra} bytes"
        );
        let by: Vec<(u64, u64, u64)> = f["by_prompt"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["tokens"].as_u64().unwrap(),
                    p["asked_ns"].as_u64().unwrap(),
                    p["added_ns"]["count"].as_u64().unwrap(),
                )
            })
            .collect();
        let prompts: Vec<(u64, u64)> = counts(l);
        // The CSV names the prompt its prefill columns describe, and holds each length's.
        let csv = std::fs::read_to_string(&csv_path).unwrap();
        let (header, row) = (csv.lines().next().unwrap(), csv.lines().nth(1).unwrap());
        let column = |name: &str| {
            let i = header.split(',').position(|h| h == name).unwrap_or_else(|| panic!("no {name}"));
            row.split(',').nth(i).unwrap().to_string()
        };
        assert_eq!(column("prefill_of_tokens"), "64");
        // Seed 1 draws both lengths.
        assert_eq!(prompts.len(), 2, "{transport}: {prompts:?}");
        let asked = |t| if t == 16 { 4_000_000 } else { 16_000_000 };
        let want: Vec<(u64, u64, u64)> = prompts.iter().map(|&(t, n)| (t, asked(t), n)).collect();
        assert_eq!(by, want, "{transport}");
        let by_csv: Vec<String> = column("prefill_by_prompt")
            .split(';')
            .map(|e| e.split(':').take(2).collect::<Vec<_>>().join(":"))
            .collect();
        assert_eq!(by_csv, ["16:4000000", "64:16000000"], "{transport}");
        // Without overlap nothing moves before the last layer: TTFT is compute and the whole transfer.
        for p in f["by_prompt"].as_array().into_iter().flatten() {
            assert!(
                p["during_ns"]["min"].as_u64().unwrap() >= p["asked_ns"].as_u64().unwrap() * 99 / 100,
                "{p}"
            );
        }
    }
}

/// The deployment at a tiny size: two prefill instances at TP 2
/// feed one decode instance at TP 4, each instance with its own Poisson
/// arrivals of a 16/64-token mix, emulated prefill with layer overlap, and a
/// decode buffer that waits for room. Each prefill rank feeds two decode
/// ranks (a quarter of the KV heads each) and computes each request once for
/// both; each decode rank serves one prefill rank of each instance.
#[test]
fn two_prefill_instances_at_tp2_feed_one_decode_instance_at_tp4() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().unwrap();
        let decode: Vec<(Proc, String)> = (0..4)
            .map(|d| {
                let (rank, json) = (d.to_string(), path(&dir, &format!("d{d}.json")));
                receiver("127.0.0.1:0", &["--decode-rank", &rank, "--json", &json, "-q"])
            })
            .collect();
        let prefill: Vec<Proc> = (0..2)
            .flat_map(|i| (0..2).map(move |p| (i, p)))
            .map(|(i, p)| {
                let connect = format!("{},{}", decode[2 * p].1, decode[2 * p + 1].1);
                let (instance, rank) = (i.to_string(), p.to_string());
                let json = path(&dir, &format!("p{i}-{p}.json"));
                let args = [
                    "--connect",
                    &connect,
                    "-t",
                    transport,
                    "-m",
                    "llama-3.1-8b",
                    "--prefill-tp",
                    "2",
                    "--decode-tp",
                    "4",
                    "--prefill-instances",
                    "2",
                    "--prefill-instance",
                    &instance,
                    "--prefill-rank",
                    &rank,
                    "--prefill-ms",
                    "16:4,64:16",
                    "--overlap",
                    "layer",
                    "--decode-buffer",
                    "4MiB",
                    "--on-full",
                    "wait",
                    "--decode-hold",
                    "50",
                    "--json",
                    &json,
                    "-q",
                ];
                Proc::start(SEND, &[&args[..], &BLOCKS_UNDER_LOAD].concat())
            })
            .collect();
        for p in prefill {
            p.finish(secs(120)).expect_code(0);
        }
        for (d, _) in decode {
            d.finish(secs(20)).expect_code(0);
        }
        let report = |name: &str| json(&dir.path().join(name));
        let instance_prompts: Vec<Vec<(u64, u64)>> =
            (0..2).map(|i| counts(&report(&format!("p{i}-0.json"))["points"][0]["load"])).collect();
        // The ranks of an instance share its requests; the instances' differ.
        for (i, prompts) in instance_prompts.iter().enumerate() {
            assert_eq!(&counts(&report(&format!("p{i}-1.json"))["points"][0]["load"]), prompts);
        }
        let seeds: Vec<Value> =
            (0..2).map(|i| report(&format!("p{i}-0.json"))["plan"]["load"]["seed"].clone()).collect();
        assert_ne!(seeds[0], seeds[1], "{transport}");
        for d in 0..4 {
            let r = report(&format!("d{d}.json"));
            assert_eq!(
                (r["outcome"].as_str(), r["wrong_bytes"].as_u64()),
                (Some("ok"), Some(0)),
                "{transport} d{d}"
            );
            let agg = &r["points"][0];
            let (l, f) = (&agg["load"], &agg["prefill"]);
            // Both instances' six requests, each a quarter of its KV: 2 MiB of a 64-token one.
            assert_eq!(requests(l), 12, "{transport} d{d}: {l}");
            let mut drawn = std::collections::BTreeMap::new();
            for (tokens, n) in instance_prompts.iter().flatten() {
                *drawn.entry(*tokens).or_insert(0) += n;
            }
            let got: std::collections::BTreeMap<u64, u64> = counts(l).into_iter().collect();
            assert_eq!(got, drawn, "{transport} d{d}");
            // A quarter of the mean request.
            assert_eq!(agg["request_bytes"].as_u64().unwrap(), mean_request_bytes(l) / 4, "{transport} d{d}");
            // Each request's added TTFT once, in both phases' loads.
            assert_eq!(f["added_ns"]["count"], 12, "{transport} d{d}: {f}");
            assert_eq!(f["under_load"]["latency_ns"]["count"], 12);
            // One buffer for the rank: never past its 4 MiB.
            assert!(
                l["resident"]["peak_bytes"].as_u64().unwrap() <= 4 << 20,
                "{transport} d{d}: {}",
                l["resident"]
            );
        }
    }
}

/// One prefill instance feeding two decode instances, each pair its own
/// arrivals: the sender's row is both together.
#[test]
fn one_sender_under_arrivals_into_two_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let (r0, a0) = receiver("127.0.0.1:0", &["-q"]);
    let (r1, a1) = receiver("127.0.0.1:0", &["-q"]);
    let connect = format!("{a0},{a1}");
    let args = [
        "--connect",
        &connect,
        "-m",
        "llama-3.1-8b",
        "--prompt-mix",
        "16:50,64:50",
        "--arrivals",
        "poisson:20",
        "-n",
        "5",
        "-w",
        "1",
        "--concurrency",
        "2",
        "--json",
        &path(&dir, "hub.json"),
    ];
    let out = run(SEND, &args, secs(120));
    out.expect_code(0);
    r0.finish(secs(20)).expect_code(0);
    r1.finish(secs(20)).expect_code(0);
    let hub = json(&dir.path().join("hub.json"));
    let agg = &hub["points"][0];
    let own: Vec<&Value> =
        hub["fan"]["pair_reports"].as_array().unwrap().iter().map(|r| &r["points"][0]).collect();
    assert_eq!(requests(&agg["load"]), 10);
    assert_eq!(agg["load"]["latency_ns"]["count"], 10);
    assert_eq!(agg["load"]["queue_ns"]["count"], 10);
    let sum = |k: &str| own.iter().map(|p| p["load"][k].as_f64().unwrap()).sum::<f64>();
    assert!((agg["load"]["offered_qps"].as_f64().unwrap() - sum("offered_qps")).abs() < 1e-6);
    assert_eq!(agg["request_bytes"].as_u64().unwrap(), mean_request_bytes(&agg["load"]));
    assert!(out.stdout.contains("each receiver its own arrivals"), "{}", out.stdout);
}

/// Conversations into two decode instances at once, every turn's rounds
/// started on both pairs together (full, delta, bidirectional and
/// d-direct, one point each): the sender's row holds both pairs' bytes
/// over each turn's rounds, which last at least as long as either
/// pair's own transfer of that turn.
#[test]
fn conversations_in_a_one_to_two_fan() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().unwrap();
        let (r0, a0) = receiver("127.0.0.1:0", &["-q"]);
        let (r1, a1) = receiver("127.0.0.1:0", &["-q"]);
        let connect = format!("{a0},{a1}");
        let hub_json = path(&dir, "hub.json");
        let args = [
            "--connect",
            &connect,
            "-t",
            transport,
            "-m",
            "llama-3.1-8b",
            "--block-size",
            "16",
            "--turns",
            "3",
            "--turn-tokens",
            "64:16",
            "-n",
            "3",
            "--json",
            &hub_json,
            "-q",
        ];
        run(SEND, &args, secs(120)).expect_code(0);
        r0.finish(secs(20)).expect_code(0);
        r1.finish(secs(20)).expect_code(0);
        let hub = json(&dir.path().join("hub.json"));
        assert_eq!(
            (hub["outcome"].as_str(), hub["wrong_bytes"].as_u64()),
            (Some("ok"), Some(0)),
            "{transport}"
        );
        let pairs: Vec<&Value> = hub["fan"]["pair_reports"].as_array().unwrap().iter().collect();
        for (i, agg) in hub["points"].as_array().unwrap().iter().enumerate() {
            let c = &agg["conversation"];
            let own: Vec<&Value> = pairs.iter().map(|r| &r["points"][i]["conversation"]).collect();
            let sum = |v: &[&Value], k: &str| v.iter().map(|x| x[k].as_u64().unwrap()).sum::<u64>();
            assert_eq!(c["bytes"].as_u64().unwrap(), sum(&own, "bytes"), "{transport} point {i}");
            assert_eq!(agg["request_bytes"], c["bytes"]);
            for (t, turn) in c["turns"].as_array().unwrap().iter().enumerate() {
                let theirs: Vec<&Value> = own.iter().map(|o| &o["turns"][t]).collect();
                assert_eq!(turn["bytes"].as_u64().unwrap(), sum(&theirs, "bytes"), "{transport} point {i}");
                let count = turn["transfer_ns"]["count"].as_u64().unwrap();
                if turn["bytes"].as_u64().unwrap() == 0 {
                    continue;
                }
                // Three conversations, each turn one round on both pairs.
                assert_eq!(count, 3, "{transport} point {i} turn {t}: {turn}");
                let span = turn["transfer_ns"]["mean"].as_f64().unwrap();
                for o in &theirs {
                    let alone = o["transfer_ns"]["mean"].as_f64().unwrap();
                    assert!(
                        span >= 0.999 * alone,
                        "{transport} point {i} turn {t}: round {span} < pair {alone}"
                    );
                }
            }
            let gbps = agg["gbps"].as_f64().unwrap();
            let pair_sum: f64 = pairs.iter().map(|r| r["points"][i]["gbps"].as_f64().unwrap()).sum();
            assert!(gbps > 0.0 && gbps <= 1.001 * pair_sum, "{transport} point {i}: {gbps} vs {pair_sum}");
        }
    }
}

/// One prefill instance feeding two decode instances under arrivals, with
/// emulated prefill: one compute for both pairs, timed alone once for both
/// (each receiver gets the same runs), every request computed as it goes.
#[test]
fn one_prefill_instance_into_two_decode_instances_computes_for_both() {
    let args = [
        "-m",
        "llama-3.1-8b",
        "-g",
        "layer",
        "-p",
        "16",
        "--prefill-ms",
        "16:3",
        "--arrivals",
        "poisson:30",
        "-n",
        "6",
        "-w",
        "1",
        "--concurrency",
        "2",
        "-q",
    ];
    let (receivers, _) = one_into_two(&args);
    let f: Vec<&Value> = receivers.iter().map(|r| &r["points"][0]["prefill"]).collect();
    for one in &f {
        computed(one, 6, "receiver");
    }
    assert_eq!(f[0]["alone_ns"], f[1]["alone_ns"], "timed alone once, for both");
}

/// One sender into two receivers, each with its JSON report: the
/// receivers' reports and the sender's.
fn one_into_two(args: &[&str]) -> (Vec<Value>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let rx: Vec<(Proc, String)> = (0..2)
        .map(|r| receiver("127.0.0.1:0", &["--json", &path(&dir, &format!("r{r}.json")), "-q"]))
        .collect();
    let connect = format!("{},{}", rx[0].1, rx[1].1);
    let hub = path(&dir, "hub.json");
    run(SEND, &[&["--connect", connect.as_str(), "--json", hub.as_str()][..], args].concat(), secs(60))
        .expect_code(0);
    let reports: Vec<Value> = rx
        .into_iter()
        .enumerate()
        .map(|(r, (p, _))| {
            p.finish(secs(20)).expect_code(0);
            json(&dir.path().join(format!("r{r}.json")))
        })
        .collect();
    (reports, json(&dir.path().join("hub.json")))
}

/// Conversations under Poisson arrivals: three conversations of three
/// turns a pair, full and delta.
const TURNS_UNDER_LOAD: [&str; 16] = [
    "-m",
    "llama-3.1-8b",
    "--block-size",
    "16",
    "--turns",
    "3",
    "--turn-tokens",
    "64:16",
    "--multi-turn",
    "full,delta",
    "-n",
    "3",
    "--arrivals",
    "poisson:20",
    "--seed",
    "3",
];

/// A fan's row of conversations under arrivals, each pair's its own: every
/// pair's nine turns counted, each turn's transfers every pair's, its
/// bytes a conversation's, 0 wrong bytes.
fn turns_apart(hub: &Value, what: &str) {
    assert_eq!((hub["outcome"].as_str(), hub["wrong_bytes"].as_u64()), (Some("ok"), Some(0)), "{what}");
    let pairs: Vec<&Value> = hub["fan"]["pair_reports"].as_array().unwrap().iter().collect();
    assert_eq!(pairs.len(), 2, "{what}");
    for (i, agg) in hub["points"].as_array().unwrap().iter().enumerate() {
        // Three conversations of three turns a pair, each turn its own arrival.
        assert_eq!(agg["load"]["latency_ns"]["count"], 18, "{what} point {i}");
        let c = &agg["conversation"];
        assert_eq!(c["conversations"], 6, "{what} point {i}");
        for (t, turn) in c["turns"].as_array().unwrap().iter().enumerate() {
            let theirs: Vec<&Value> =
                pairs.iter().map(|r| &r["points"][i]["conversation"]["turns"][t]).collect();
            assert_eq!(turn["bytes"], theirs[0]["bytes"], "{what} point {i} turn {t}: a conversation's");
            let count: u64 = theirs.iter().map(|o| o["transfer_ns"]["count"].as_u64().unwrap()).sum();
            assert_eq!(turn["transfer_ns"]["count"].as_u64(), Some(count), "{what} point {i} turn {t}");
        }
    }
}

/// Conversations under arrivals in a fan, each pair its own arrivals and
/// conversations: two prefill instances into one decode instance, and one
/// into two.
#[test]
fn conversations_under_arrivals_in_fans() {
    turns_apart(&two_into_one(&TURNS_UNDER_LOAD), "2->1");
    let (_, hub) = one_into_two(&[&["-q"][..], &TURNS_UNDER_LOAD].concat());
    turns_apart(&hub, "1->2");
}

/// What a fan does not run yet is refused with its reason on every side,
/// never run and left uncounted: conversations under arrivals into one
/// decode buffer from several senders (each pair's turns go on its own lane).
#[test]
fn what_a_fan_does_not_run_yet_is_refused() {
    let (recv, addr) = receiver("127.0.0.1:0", &["--senders", "2", "-q"]);
    let args =
        [&["--connect", addr.as_str(), "-q", "--decode-buffer", "64MiB"][..], &TURNS_UNDER_LOAD].concat();
    let senders: Vec<Proc> = (0..2).map(|_| Proc::start(SEND, &args)).collect();
    recv.finish(secs(30)).expect_code(2).expect_stderr("one buffer across their turns is not built yet");
    for s in senders {
        let s = s.finish(secs(30));
        assert_ne!(s.code, Some(0));
        s.expect_stderr("one buffer across their turns is not built yet");
    }
}

/// Two senders, each with `args`, into one receiver: the receiver's report.
fn two_into_one(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (recv, addr) = receiver("127.0.0.1:0", &["--senders", "2", "--json", &path(&dir, "hub.json"), "-q"]);
    let args = [&["--connect", addr.as_str(), "-q"][..], args].concat();
    let senders: Vec<Proc> = (0..2).map(|_| Proc::start(SEND, &args)).collect();
    for s in senders {
        s.finish(secs(60)).expect_code(0);
    }
    recv.finish(secs(20)).expect_code(0);
    json(&dir.path().join("hub.json"))
}

/// Back to back (fan rounds in lockstep), each request's prefill computed
/// layer by layer as it goes: 16 tokens of Llama-3.1-8B asked 3 ms, four
/// timed requests and a warm-up a pair.
const LOCKSTEP_PREFILL: [&str; 12] =
    ["-m", "llama-3.1-8b", "-p", "16", "-n", "4", "-w", "1", "--prefill-ms", "16:3", "--overlap", "layer"];

/// A point's prefill figures hold `n` requests, each computed at least
/// the asked 3 ms (1% for the clock), and a TTFT never below its compute.
fn computed(f: &Value, n: u64, what: &str) {
    assert_eq!(f["added_ns"]["count"], n, "{what}: {f}");
    assert!(f["during_ns"]["min"].as_u64().unwrap() >= 2_970_000, "{what}: {f}");
    assert!(f["ttft_ns"]["min"].as_u64() >= f["during_ns"]["min"].as_u64(), "{what}: {f}");
}

/// Two prefill instances into one decode instance in lockstep: the hub's
/// row holds every pair's requests' added TTFT (eight), each pair's report
/// its own four.
#[test]
fn two_senders_in_lockstep_with_emulated_prefill() {
    let hub = two_into_one(&LOCKSTEP_PREFILL);
    let agg = &hub["points"][0];
    assert_eq!((hub["outcome"].as_str(), agg["wrong_bytes"].as_u64()), (Some("ok"), Some(0)));
    // Four rounds of two requests (the first phase), and every request's added TTFT.
    assert_eq!(agg["request_ns"]["count"], 4);
    computed(&agg["prefill"], 8, "hub");
    for r in hub["fan"]["pair_reports"].as_array().unwrap() {
        computed(&r["points"][0]["prefill"], 4, "pair");
    }
}

/// One prefill instance into two decode instances in lockstep: one
/// compute for both pairs, timed alone once (each receiver gets the same
/// runs), each receiver's report its own requests' added TTFT; the
/// sender's row, whose requests no single process sees land, holds none.
#[test]
fn one_sender_in_lockstep_with_emulated_prefill_computes_for_both() {
    let (receivers, hub) = one_into_two(&[&["-q"][..], &LOCKSTEP_PREFILL].concat());
    let f: Vec<&Value> = receivers.iter().map(|r| &r["points"][0]["prefill"]).collect();
    for one in &f {
        computed(one, 4, "receiver");
    }
    assert_eq!(f[0]["alone_ns"], f[1]["alone_ns"], "timed alone once, for both");
    let agg = &hub["points"][0];
    assert!(agg["prefill"].is_null(), "{}", agg["prefill"]);
    assert_eq!(agg["request_ns"]["count"], 4);
}

/// Prefill at TP 2 into decode at TP 1 in lockstep, each prefill rank
/// computing as its share goes: the decode rank joins a request's two
/// shares into one added TTFT (four, not eight); each rank's report holds
/// its own shares'.
#[test]
fn p2_to_d1_in_lockstep_with_emulated_prefill_counts_each_request_s_ttft_once() {
    let dir = tempfile::tempdir().unwrap();
    let (recv, addr) = receiver("127.0.0.1:0", &["--json", &path(&dir, "d0.json")]);
    let ranks: Vec<Proc> = (0..2)
        .map(|p| {
            let rank = p.to_string();
            let tp = ["--prefill-tp", "2", "--decode-tp", "1", "--prefill-rank", &rank, "-g", "block"];
            let more = ["--block-size", "16", "--connect", addr.as_str(), "-q"];
            Proc::start(SEND, &[&tp[..], &more, &LOCKSTEP_PREFILL].concat())
        })
        .collect();
    for r in ranks {
        r.finish(secs(60)).expect_code(0);
    }
    recv.finish(secs(20)).expect_code(0);
    let hub = json(&dir.path().join("d0.json"));
    let agg = &hub["points"][0];
    assert_eq!((hub["outcome"].as_str(), agg["wrong_bytes"].as_u64()), (Some("ok"), Some(0)));
    computed(&agg["prefill"], 4, "decode rank");
    for r in hub["fan"]["pair_reports"].as_array().unwrap() {
        computed(&r["points"][0]["prefill"], 4, "share");
    }
}

/// Conversations with emulated prefill in fans, back to back and under
/// arrivals: a 2->1 hub's row holds each turn's added TTFT from every
/// pair (two conversations a pair), each pair's report its own; in a 1->2
/// fan one compute serves both pairs.
#[test]
fn conversations_with_emulated_prefill_in_fans() {
    let turns = [
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
        "-n",
        "2",
        "-w",
        "1",
        "--prefill-tflops",
        "400",
    ];
    let per_turn = |p: &Value| -> Vec<(u64, u64)> {
        let by = p["prefill"]["by_prompt"].as_array().unwrap();
        by.iter().map(|b| (b["turn"].as_u64().unwrap(), b["added_ns"]["count"].as_u64().unwrap())).collect()
    };
    for load in [&[][..], &["--arrivals", "poisson:20", "--seed", "3"][..]] {
        let hub = two_into_one(&[&turns[..], load].concat());
        assert_eq!((hub["outcome"].as_str(), hub["wrong_bytes"].as_u64()), (Some("ok"), Some(0)), "{load:?}");
        assert_eq!(per_turn(&hub["points"][0]), [(1, 4), (2, 4), (3, 4)], "{load:?}");
        for r in hub["fan"]["pair_reports"].as_array().unwrap() {
            assert_eq!(per_turn(&r["points"][0]), [(1, 2), (2, 2), (3, 2)], "{load:?}");
        }
    }
    let (receivers, _) = one_into_two(&[&["-q"][..], &turns].concat());
    for r in &receivers {
        assert_eq!(r["wrong_bytes"], 0);
        assert_eq!(per_turn(&r["points"][0]), [(1, 2), (2, 2), (3, 2)]);
    }
    assert_eq!(
        receivers[0]["points"][0]["prefill"]["alone_ns"],
        receivers[1]["points"][0]["prefill"]["alone_ns"]
    );
}
