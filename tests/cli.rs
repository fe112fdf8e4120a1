//! The command line: plans printed without hardware, and bad values refused
//! with a message and a non-zero exit, never a panic.

mod common;
use common::*;

#[test]
fn plan_prints_the_kv_arithmetic() {
    let f = run(
        KVXFER,
        &["plan", "--model", "llama-3.1-8b", "--prompt-lengths", "128,1024,8192,32768"],
        secs(10),
    );
    f.expect_code(0);
    let out = &f.stdout;
    assert!(out.contains("131072 bytes (128 KiB) per rank"), "{out}");
    // 8K tokens: 1 GiB as 1 message, 32 layers of 32 MiB, 8192 blocks of
    // 128 KiB (64 tokens, vLLM 0.34.0's default block, x 32 layers x K, V).
    for row in [
        "8192  request         1        1 GiB",
        "8192    layer        32       32 MiB",
        "8192    block      8192      128 KiB",
    ] {
        assert!(out.contains(row), "missing {row:?} in\n{out}");
    }
    assert!(out.contains("4294967296"), "32K tokens = 4 GiB");
}

#[test]
fn plan_reads_configs_and_explicit_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"num_hidden_layers": 80, "num_key_value_heads": 8, "hidden_size": 8192,
        "num_attention_heads": 64, "torch_dtype": "bfloat16"}"#,
    )
    .unwrap();
    let f =
        run(KVXFER, &["plan", "--model-config", cfg.to_str().unwrap(), "--tp", "8", "-p", "1k"], secs(10));
    f.expect_code(0);
    assert!(f.stdout.contains("40960 bytes"), "Llama-70B at TP8: {}", f.stdout);
    let f = run(
        KVXFER,
        &["plan", "--layers", "2", "--kv-heads", "1", "--head-dim", "64", "--dtype", "fp8", "-p", "16"],
        secs(10),
    );
    f.expect_code(0);
    assert!(f.stdout.contains("256 bytes"), "2 x 2 x 1 x 64 x 1: {}", f.stdout);
    let f = run(KVXFER, &["plan", "-m", "deepseek-v3", "--dtype", "fp8_ds_mla", "-p", "64"], secs(10));
    assert!(f.stdout.contains("40016 bytes"), "{}", f.stdout);
    let j = dir.path().join("plan.json");
    run(KVXFER, &["plan", "-p", "128", "--json", j.to_str().unwrap()], secs(10)).expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(j).unwrap()).unwrap();
    assert_eq!(doc["kv_bytes_per_token"], 131_072);
    assert_eq!(doc["points"].as_array().unwrap().len(), 3);
}

#[test]
fn list_models_names_every_preset() {
    let f = run(KVXFER, &["plan", "--list-models"], secs(10));
    f.expect_code(0);
    for m in ["llama-3.1-405b", "qwen3-235b-a22b", "mistral-7b", "deepseek-v3"] {
        assert!(f.stdout.contains(m), "{m}");
    }
    // And the other names they answer to.
    assert!(f.stdout.contains("(also deepseek-r1, deepseek-v3.1)"), "{}", f.stdout);
}

#[test]
fn bad_values_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let incomplete = dir.path().join("config.json");
    std::fs::write(&incomplete, r#"{"num_key_value_heads": 8, "torch_dtype": "bfloat16"}"#).unwrap();
    let incomplete = incomplete.to_str().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        (KVXFER, &["plan", "-p", "-5"], "negative"),
        (KVXFER, &["plan", "-p", "0"], "zero"),
        (KVXFER, &["plan", "-p", "12x"], "not a token count"),
        (KVXFER, &["plan", "-m", "llama-9"], "unknown model 'llama-9'"),
        (
            KVXFER,
            &["plan", "--model-config", "/nonexistent/config.json"],
            "--model-config: cannot read /nonexistent/config.json",
        ),
        (KVXFER, &["plan", "--model-config", incomplete], "missing field 'num_hidden_layers'"),
        (KVXFER, &["plan", "--layers", "4"], "--kv-heads is needed"),
        (KVXFER, &["plan", "--tp", "3"], "does not fit 8 KV heads"),
        (KVXFER, &["plan", "--tp", "0"], "at least 1"),
        (KVXFER, &["plan", "--block-size", "-16"], "negative"),
        (KVXFER, &["plan", "--dtype", "int3"], "unknown dtype"),
        (KVXFER, &["plan", "-m", "deepseek-v3", "--kv-heads", "8"], "shape flags do not apply"),
        (KVXFER, &["pair", "-n", "0"], "at least 1"),
        (KVXFER, &["pair", "-n", "-3"], "negative"),
        (
            KVXFER,
            &["pair", "-n", "4294967295", "-w", "1"],
            "make 4294967296 requests a point, more than 4294967295",
        ),
        (KVXFER, &["pair", "-n", "4294967294"], "make 4294967296 requests a point"),
        (KVXFER, &["pair", "-g", "page"], "unknown granularity"),
        (KVXFER, &["pair", "--verify", "sometimes"], "unknown --verify"),
        (KVXFER, &["pair", "--link", "warp9"], "unknown --link"),
        (KVXFER, &["pair", "--streams", "0"], "at least 1"),
        (KVXFER, &["pair", "--streams", "65"], "more than the 64"),
        (KVXFER, &["pair", "--socket-buffer", "-1"], "negative"),
        (KVXFER, &["pair", "--timeout", "-2"], "negative"),
        (KVXFER, &["pair", "--timeout", "soon"], "not a duration"),
        (KVXFER, &["pair", "-t", "carrier-pigeon"], "unknown transport"),
        (KVXFER, &["pair", "--ucx-op", "steal"], "unknown UCX operation"),
        (KVXFER, &["pair", "--ucx-err-mode", "panic"], "unknown UCX error mode"),
        (KVXFER, &["pair", "--in-flight", "0"], "at least 1"),
        (KVXFER, &["pair", "--require-transport", "cuda_ipc"], "it needs -t ucx or -t nixl, not -t tcp"),
        (SEND, &["--connect", "127.0.0.1:9", "-t", "nccl", "--require-transport", "rc"], "it needs -t ucx"),
        (
            KVXFER,
            &["pair", "-t", "ucx", "-p", "20000k", "-g", "block", "-m", "llama-3.1-405b"],
            "more than the 16777216 messages a request may have",
        ),
        (KVXFER, &["pair", "--json", "/nonexistent/dir/r.json"], "cannot write /nonexistent/dir/r.json"),
        (KVXFER, &["pair", "--listen", "localhost:0"], "must be an IP address"),
        (KVXFER, &["pair", "-p", "4000k", "-m", "llama-3.1-405b"], "more than this machine's"),
        (SEND, &["--connect", "nohost"], "malformed address 'nohost'"),
        (SEND, &["--connect", "::1:7477"], "IPv6 addresses need brackets"),
        (SEND, &["--connect", "[::1]:99999"], "not a number from 0 to 65535"),
        (SEND, &["--connect", "10.0.0.1:0"], "port 0"),
        (RECV, &["--listen", "1.2.3:x"], "malformed address"),
        (RECV, &["--wait-for-sender", "0"], "above zero"),
        (KVXFER, &["plan", "-p", "1k,,2k"], "'1k,,2k' has an empty item (item 2)"),
        (KVXFER, &["pair", "-g", "layer,"], "has an empty item (item 2)"),
        (KVXFER, &["pair", "--arrivals", "poisson:5,,10"], "has an empty item"),
        (KVXFER, &["size", "--mix", "1,,2"], "has an empty item"),
        (KVXFER, &["pair", "--bogus"], "unexpected argument '--bogus'"),
    ];
    for (bin, args, needle) in cases {
        let f = run(bin, args, secs(10));
        assert!(matches!(f.code, Some(1) | Some(2)), "{bin} {args:?} exited {:?}\n{}", f.code, f.stderr);
        assert!(f.stderr.contains(needle), "{bin} {args:?}: stderr lacks {needle:?}:\n{}", f.stderr);
        assert!(!f.stderr.contains("panicked"), "{bin} {args:?} panicked:\n{}", f.stderr);
        assert!(f.rows().is_empty(), "{bin} {args:?} measured something");
        // One style: clap's refusals read as kvxfer's own.
        let name = std::path::Path::new(bin).file_name().unwrap().to_str().unwrap();
        assert!(f.stderr.starts_with(&format!("{name}: error: ")), "{bin} {args:?}:\n{}", f.stderr);
    }
}

/// The column titles of a run's table (its `#    gran` line).
fn title_line(stdout: &str) -> &str {
    stdout.lines().find(|l| l.starts_with('#') && l.contains(" gran ")).expect("a title line")
}

fn titles(stdout: &str) -> Vec<String> {
    let line = title_line(stdout).trim_start_matches('#');
    let line = line.replace("msg size", "msg_size").replace("msg p", "msg_p").replace("mean ± σ", "mean±σ");
    line.split_whitespace().map(str::to_string).collect()
}

/// A row's cell under the title `name` (columns are right-aligned to it).
fn cell(stdout: &str, row: &str, name: &str) -> String {
    let titles = title_line(stdout);
    let titles: Vec<char> = titles.chars().collect();
    let name: Vec<char> = format!(" {name}").chars().collect();
    let at = titles.windows(name.len()).position(|w| w == name.as_slice()).expect("a column") + 1;
    let end = at + name.len() - 1;
    // The cell starts where the column before it ends.
    let start = titles[..at].iter().rposition(|c| *c != ' ').map_or(0, |i| i + 1);
    let chars: Vec<char> = row.chars().collect();
    chars[start.min(chars.len())..end.min(chars.len())].iter().collect::<String>().trim().to_string()
}

#[test]
fn the_table_fits_100_columns_and_wide_shows_every_figure() {
    // Two layers of one KV head: 100 requests are quick.
    let tiny = ["-m", "llama-3.1-8b", "--layers", "2", "--kv-heads", "1", "-p", "16", "-g", "layer"];
    let f = run(KVXFER, &[&["pair"][..], &tiny[..], &["-n", "100", "-w", "0"]].concat(), secs(60));
    f.expect_code(0);
    assert_eq!(
        titles(&f.stdout),
        ["gran", "prompt", "n", "request", "p50", "p99", "max", "GB/s", "%peak", "wrong"]
    );
    let rows = f.rows();
    assert_eq!(rows.len(), 1, "{}", f.stdout);
    assert!(rows.iter().all(|r| r.chars().count() <= 100), "{}", f.stdout);
    // 100 requests support p99: a figure, not -.
    assert_eq!(cell(&f.stdout, &rows[0], "n"), "100", "{}", rows[0]);
    assert!(cell(&f.stdout, &rows[0], "p99").ends_with('s'), "p99 is measured: {}", f.stdout);
    // --wide: every figure; with 100 requests p99.9 is still -.
    let w = run(KVXFER, &[&["pair"][..], &tiny[..], &["-n", "100", "-w", "0", "--wide"]].concat(), secs(60));
    w.expect_code(0);
    assert_eq!(
        titles(&w.stdout),
        [
            "gran", "prompt", "n", "msgs", "msg_size", "request", "mean±σ", "min", "p50", "p90", "p99",
            "p99.9", "max", "msg_p50", "msg_p99", "GB/s", "%peak", "wrong"
        ]
    );
    let row = &w.rows()[0];
    assert_eq!(cell(&w.stdout, row, "p99.9"), "-", "{}", w.stdout);
    assert!(cell(&w.stdout, row, "p99").ends_with('s'), "{}", w.stdout);
    assert!(row.contains(" ± "), "{row}");
    // 3 requests: p99 is not a figure.
    let few = run(KVXFER, &[&["pair"][..], &tiny[..], &["-n", "3", "-w", "0"]].concat(), secs(60));
    assert_eq!(cell(&few.stdout, &few.rows()[0], "n"), "3", "{}", few.stdout);
    assert_eq!(cell(&few.stdout, &few.rows()[0], "p99"), "-", "{}", few.stdout);
}

#[test]
fn a_sender_waiting_for_its_receiver_says_so_within_a_second() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let send = Proc::start(SEND, &["--connect", &format!("127.0.0.1:{port}"), "--timeout", "5s"]);
    let notice = format!("no receiver at 127.0.0.1:{port} yet (Connection refused");
    assert!(send.wait_for(&notice, secs(1)), "no notice within 1 s: {}", send.stderr());
    send.finish(secs(15)).expect_code(1);
}

/// The README's sample run: its header lines, label by label, and its column
/// titles are what the binary prints today.
#[test]
fn the_readme_sample_output_matches_the_binary() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("$ kvxfer pair").expect("a sample run in the README");
    let sample = &readme[start..start + readme[start..].find("```").unwrap()];
    // The label of each # line that opens a section ("# model", "# cold start").
    let labels = |text: &str| -> Vec<String> {
        text.lines()
            // "# spread" lines depend on the run's own times.
            .filter(|l| l.starts_with("# ") && !l.starts_with("#  ") && !l.starts_with("# kvxfer "))
            .filter(|l| !l.starts_with("# spread "))
            .map(|l| match l[2..].split_whitespace().next().unwrap() {
                "cold" => "cold start".to_string(),
                word => word.to_string(),
            })
            .collect()
    };
    let f = run(KVXFER, &["pair", "-p", "128", "-g", "all", "-n", "2", "-w", "0"], secs(60));
    f.expect_code(0);
    assert_eq!(labels(sample), labels(&f.stdout), "README sample:\n{sample}\nbinary:\n{}", f.stdout);
    assert_eq!(titles(sample), titles(&f.stdout));
    assert!(sample.lines().nth(1).unwrap().starts_with("# kvxfer "), "{sample}");
}

#[test]
fn size_prints_the_buffers_worked_out_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("size.json");
    // Llama-3.1-8B: 128 KiB per token, 4 KiB per token per layer.
    let args = ["size", "-m", "llama-3.1-8b", "-p", "3000,32k", "--mix", "3,1", "--concurrent", "4"];
    let f = run(
        KVXFER,
        &[&args[..], &["--gpu-memory", "141GB", "--json", j.to_str().unwrap()]].concat(),
        secs(10),
    );
    f.expect_code(0);
    // 4 requests of 32768 tokens x 128 KiB = 16 GiB; the pool rounds nothing up there.
    assert!(f.stdout.contains("kv_buffer_size    17179869184 (16 GiB)"), "{}", f.stdout);
    assert!(f.stdout.contains("mem_pool_size_gb  16:"), "{}", f.stdout);
    assert!(f.stdout.contains("above 10% of the GPU"), "{}", f.stdout);
    assert!(f.stdout.contains(r#""kv_buffer_size":"17179869184""#), "{}", f.stdout);
    let doc = json(&j);
    let short = &doc["sizing"]["prompts"][0];
    assert_eq!(short["request_bytes"], 393_216_000u64);
    assert_eq!(short["pooled_layer_bytes"], 16u64 << 20);
    assert_eq!(short["lmcache_bytes"], 3072u64 * 131072);
    assert_eq!(doc["sizing"]["lmcache_pd_buffer_size"], 16u64 << 30);
}

#[test]
fn size_takes_transfer_times_from_a_run_of_the_same_shape_only() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("run.json");
    run(KVXFER, &["pair", "-p", "128,1024", "-n", "2", "--json", j.to_str().unwrap()], secs(60))
        .expect_code(0);
    let f = run(KVXFER, &["size", "-p", "128,1024,8k", "--run", j.to_str().unwrap()], secs(10));
    f.expect_code(0);
    assert!(f.stdout.contains("Added time to first token, from the run (tcp"), "{}", f.stdout);
    assert!(f.stdout.contains("1024 tokens: ") && f.stdout.contains("(layer granularity"), "{}", f.stdout);
    assert!(f.stdout.contains("8192 tokens: not in the run"), "{}", f.stdout);
    assert!(f.stdout.contains("each request's transfer, after prefill"), "{}", f.stdout);
    // A run with emulated prefill: the added TTFT it measured, and the prefill under it.
    let p = dir.path().join("prefill.json");
    let args = ["pair", "-p", "128", "-n", "2", "--prefill-ms", "128:20", "--overlap", "layer", "--json"];
    run(KVXFER, &[&args[..], &[p.to_str().unwrap()]].concat(), secs(60)).expect_code(0);
    let sized = dir.path().join("size.json");
    let args = ["size", "-p", "128,1024", "--run", p.to_str().unwrap(), "--json", sized.to_str().unwrap()];
    let f = run(KVXFER, &args, secs(10));
    f.expect_code(0);
    assert!(f.stdout.contains("measured in the run (tcp"), "{}", f.stdout);
    assert!(f.stdout.contains("overlap layer"), "{}", f.stdout);
    assert!(f.stdout.contains("1024 tokens: not in the run"), "{}", f.stdout);
    let doc = json(&sized);
    let added = &doc["sizing"]["prompts"][0]["transfer"]["added"];
    assert_eq!(added["overlap"], "layer", "{doc}");
    let prefill = added["prefill_p50_ns"].as_f64().unwrap();
    assert!(prefill >= 19e6, "a prefill of 20 ms asked took {prefill} ns");
    let line = format!("on a prefill of {}", kvxfer::units::fmt_ns(prefill));
    assert!(f.stdout.contains(&line), "{line} not in {}", f.stdout);
    let f = run(KVXFER, &["size", "-m", "llama-3.1-70b", "--run", j.to_str().unwrap()], secs(10));
    f.expect_code(2).expect_stderr("size the model and TP of the run");
    let f = run(KVXFER, &["size", "-p", "1k,2k", "--mix", "1"], secs(10));
    f.expect_code(2).expect_stderr("--mix gives 1 shares for 2 prompt lengths");
}

#[test]
fn bad_prefill_options_exit_2_naming_what_is_wrong() {
    let cases: &[&[&str]] = &[
        &["--prefill-ms", "1024:-5"],
        &["--prefill-tflops", "0"],
        &["--overlap", "layer"],
        &["--prefill-tflops", "500", "-m", "llama-4-maverick", "-p", "1024"],
        &["--prefill-ms", "1024:10", "-p", "2048"],
        &["--prefill-ms", "1024:10", "-p", "1024", "-t", "ucx", "--ucx-op", "get", "--overlap", "layer"],
        &["--prefill-ms", "1024:10", "--prefill-tflops", "3"],
    ];
    let needles = [
        "'-5' is not a time of 0 ms or more",
        "a rate above 0 and at most 100000 TFLOP/s",
        "--overlap needs an emulated prefill",
        "needs the shape of model 'llama-4-maverick'",
        "no time for the 2048-token prompt",
        "use --overlap none",
        "cannot be used with",
    ];
    for (args, needle) in cases.iter().zip(needles) {
        let mut all = vec!["pair"];
        all.extend_from_slice(args);
        run(KVXFER, &all, secs(10)).expect_code(2).expect_stderr(needle);
    }
}

/// The memory check before anything is allocated counts every lane of
/// both sides: one buffer of a quarter of this machine's memory passes a
/// count of one buffer a side (half of it), but four lanes a side take
/// twice the machine, and the run exits 2 at once (it was OOM-killed).
#[test]
fn the_memory_check_counts_every_lane() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    // Llama-3.1-405B moves 504 KiB a token.
    let tokens = (kib * 1024 / 4).div_ceil(516_096);
    if tokens > 131_072 {
        eprintln!("skipped: a quarter of this machine's memory is past the model's context");
        return;
    }
    let p = tokens.to_string();
    let args = [
        "pair",
        "-m",
        "llama-3.1-405b",
        "-p",
        &p,
        "--arrivals",
        "poisson:1",
        "-n",
        "1",
        "--concurrency",
        "4",
    ];
    let started = std::time::Instant::now();
    let out = run(KVXFER, &args, secs(20));
    out.expect_code(2).expect_stderr("more than this machine's").expect_stderr("one per lane");
    assert!(started.elapsed() < secs(10), "refused before allocating");
}

#[test]
fn bad_load_options_exit_2_naming_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&["--arrivals", "poisson:0"], "'0' is not a rate above 0 requests per second"),
        (&["--arrivals", "fixed:-3"], "'-3' is not a rate above 0"),
        (&["--arrivals", "burst:3"], "unknown kind 'burst'"),
        (&["--arrivals", "20"], "--arrivals wants poisson:QPS"),
        (&["--arrivals", "fixed:5", "--prompt-mix", "1k:0,8k:0"], "the weights sum to zero"),
        (&["--arrivals", "fixed:5", "--prompt-mix", "1k"], "--prompt-mix wants TOKENS:WEIGHT"),
        (&["--prompt-mix", "1k:1"], "--arrivals"),
        (&["--decode-hold", "5"], "--arrivals"),
        (&["--arrivals", "fixed:5", "--decode-hold", "-1"], "is not a time of 0 ms or more"),
        (
            &["--arrivals", "fixed:5", "--prefill-ms", "128:5", "--prompt-mix", "128:1,1k:1"],
            "--prefill-ms gives no time for the 1024-token prompt",
        ),
        (&["--arrivals", "fixed:5", "--concurrency", "0"], "value must be at least 1"),
        (
            &["--arrivals", "fixed:5", "--concurrency", "65"],
            "--concurrency 65 is not a number of requests from 1 to 64",
        ),
        (&["--concurrency", "2"], "--arrivals"),
        (&["--arrivals", "fixed:5", "-t", "nccl", "--memory", "gpu", "--concurrency", "2"], "stream order"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["pair"];
        all.extend_from_slice(args);
        run(KVXFER, &all, secs(10)).expect_code(2).expect_stderr(needle);
    }
}

/// A trace sets each request's arrival, prompt and output length; the
/// decode side holds each for its output tokens x --tpot.
#[test]
fn a_trace_drives_arrivals_prompts_and_holds() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    // Four requests 50 ms apart, each held 20 x 10 ms = 200 ms after its
    // last byte: all four are held at 150 ms, 2 x 2 MiB + 2 x 16 MiB.
    std::fs::write(
        &trace,
        "arrival_ms,prompt_tokens,output_tokens\n0,16,20\n50,128,20\n100,16,20\n150,128,20\n",
    )
    .unwrap();
    let j = dir.path().join("load.json");
    let arrivals = format!("--arrivals=trace:{}", trace.display());
    let args =
        ["pair", "-m", "llama-3.1-8b", "-w", "1", "--tpot", "10", &arrivals, "--json", j.to_str().unwrap()];
    let f = run(KVXFER, &args, secs(60));
    f.expect_code(0);
    let l = &json(&j)["points"][0]["load"];
    assert_eq!(l["arrivals"]["trace"]["qps"], 20.0, "{l}");
    let each: Vec<(u64, u64)> = (l["by_prompt"].as_array().unwrap().iter())
        .map(|b| (b["tokens"].as_u64().unwrap(), b["requests"].as_u64().unwrap()))
        .collect();
    assert_eq!(each, vec![(16, 2), (128, 2)], "{l}");
    assert_eq!(l["latency_ns"]["count"], 4);
    assert_eq!(l["resident"]["peak_bytes"], 2u64 * (2 << 20) + 2 * (16 << 20), "{}", l["resident"]);
    assert!(f.stdout.contains("trace 20.00/s: offered"), "{}", f.stdout);
    // Errors name the file and line.
    std::fs::write(&trace, "0,16\n10,abc\n").unwrap();
    let f = run(KVXFER, &["pair", &arrivals], secs(10));
    f.expect_code(2).expect_stderr("line 2: 'abc' is not a positive prompt length");
    let f = run(KVXFER, &["pair", "--arrivals", "trace:/nonexistent.csv"], secs(10));
    f.expect_code(2).expect_stderr("trace:/nonexistent.csv: cannot read /nonexistent.csv");
    let f = run(KVXFER, &["pair", "--arrivals", "fixed:1", "--duration", "100ms"], secs(10));
    f.expect_code(0);
    let f = run(KVXFER, &["pair", "--arrivals", "poisson:0.001", "--duration", "1ms"], secs(10));
    f.expect_code(2).expect_stderr("no request arrives in --duration");
    let f = run(KVXFER, &["pair", "--arrivals", "fixed:5", "--tpot", "3"], secs(10));
    f.expect_code(2).expect_stderr("--tpot needs --output-tokens");
    // 128 MiB a millisecond is past loopback: the queue outgrows --timeout, and the run says so.
    let f = run(
        KVXFER,
        &["pair", "-p", "1024", "--arrivals", "fixed:1000", "-n", "200", "--timeout", "1s"],
        secs(30),
    );
    f.expect_code(1).expect_stderr("the receiver fell behind the arrivals (fixed 1000/s): point 1, request ");
    // Holds past an hour: refused, never an overflow (it panicked at 1e30, or tokens x TPOT past 2^64 ns).
    for hold in [&["--decode-hold", "1e30"][..], &["--output-tokens", "4294967295", "--tpot", "3600000"]] {
        let args = [&["pair", "-p", "64", "-n", "3", "--arrivals", "fixed:10"][..], hold].concat();
        run(KVXFER, &args, secs(10)).expect_code(2).expect_stderr("is past an hour");
    }
}

/// What a command writes (a plan's, a size's, doctor's JSON) is refused
/// on a FIFO, where opening would wait for a reader for ever (exit 2); a
/// full device fails the write (exit 1, as a report's does); and a run that
/// ends before it measured anything removes only an empty file it made,
/// never a device (it had deleted a device node given as --json).
#[test]
fn outputs_are_never_a_wait_and_devices_are_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("f");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.to_str().unwrap();
    for args in [&["plan", "-p", "64"][..], &["size", "-m", "llama-3.1-8b", "-p", "1k"], &["doctor"]] {
        let f = run(KVXFER, &[args, &["--json", fifo]].concat(), secs(10));
        f.expect_code(2).expect_stderr("it is a FIFO");
    }
    let f = run(KVXFER, &["compare", "-t", "tcp,tcp", "--rounds", "2", "--json", fifo, "-p", "16"], secs(10));
    f.expect_code(2).expect_stderr("it is a FIFO");
    // A device node of /dev/full's and one of /dev/null's, where mknod is allowed (root).
    let (full, null) = (dir.path().join("full"), dir.path().join("null"));
    let made = |p: &std::path::Path, minor: &str| {
        std::process::Command::new("mknod").arg(p).args(["c", "1", minor]).status().is_ok_and(|s| s.success())
    };
    if !(made(&full, "7") && made(&null, "3")) {
        eprintln!("skipping the device rows: mknod is not allowed here");
        return;
    }
    let f = run(KVXFER, &["plan", "-p", "64", "--json", full.to_str().unwrap()], secs(10));
    f.expect_code(1).expect_stderr("No space left on device");
    // No receiver at port 9: the run ends before any report.
    let args = ["-c", "127.0.0.1:9", "--timeout", "1s", "-p", "64", "--json", null.to_str().unwrap()];
    assert_ne!(run(SEND, &args, secs(20)).code, Some(0));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&null).unwrap().file_type().is_char_device(), "the device node was removed");
}

/// A load point of a prompt mix reports each length on its own (issue 38):
/// its count and bytes as the seeded draw gives them, its own times, in
/// the JSON, the CSV, the table and `size --run`, and the gate judges a
/// floor named for a length on that length. The row is the mix, never
/// named by its longest length.
#[test]
fn a_mixed_load_point_reports_each_prompt_length() {
    use kvxfer::schedule::{schedule, Arrivals, Bound};
    let dir = tempfile::tempdir().unwrap();
    let (j, c) = (dir.path().join("mix.json"), dir.path().join("mix.csv"));
    let (js, cs) = (j.to_str().unwrap(), c.to_str().unwrap());
    let mix = ["--prompt-mix", "16:3,128:1"];
    let args = ["pair", "-m", "llama-3.1-8b", "--arrivals", "poisson:50", "-n", "40", "--seed", "7"];
    let gate = ["--min-gbps", "0.001,128:0.002", "--json", js, "--csv", cs];
    let f = run(KVXFER, &[&args[..], &mix, &gate].concat(), secs(60));
    f.expect_code(0);
    let drawn = schedule(Arrivals::Poisson { qps: 50.0 }, &[(16, 3.0), (128, 1.0)], Bound::Requests(40), 7);
    let count = |t: u32| drawn.iter().filter(|a| a.tokens == t).count() as u64;
    assert!(count(16) > 0 && count(128) > 0, "the seed draws both lengths");
    let per_token = 128 * 1024; // llama-3.1-8b at TP 1
    let r = json(&j);
    let p = &r["points"][0];
    assert_eq!(p["prompt_tokens"], 0, "a mix is not named by its longest length");
    assert_eq!(p["request_bytes"], (count(16) * 16 + count(128) * 128) * per_token / 40);
    let by = p["load"]["by_prompt"].as_array().unwrap();
    assert_eq!(by.len(), 2);
    for (b, t) in by.iter().zip([16u32, 128]) {
        assert_eq!(b["tokens"], t);
        assert_eq!(b["requests"], count(t));
        assert_eq!(b["bytes"], count(t) * t as u64 * per_token);
        assert_eq!(b["transfer_ns"]["count"], count(t));
        assert_eq!(b["latency_ns"]["count"], count(t));
        let line = format!("#  of mix {t:>7} {:>5} ", count(t));
        assert!(f.stdout.contains(&line), "no line {line:?} in\n{}", f.stdout);
    }
    assert!(f.stdout.contains("    layer     mix    40 "), "{}", f.stdout);
    let csv = std::fs::read_to_string(&c).unwrap();
    assert!(csv.contains(&format!(",16:{}:{}:", count(16), count(16) * 16 * per_token)), "{csv}");
    // The gate: the floor for all on the mix as a whole, 128's on 128's own.
    let checked: Vec<(u64, f64)> = (r["gate"]["checked"].as_array().unwrap().iter())
        .map(|c| (c["prompt_tokens"].as_u64().unwrap(), c["limit"].as_f64().unwrap()))
        .collect();
    assert_eq!(checked, vec![(0, 0.001), (128, 0.002)], "{}", r["gate"]);
    // size --run: each length's own transfer time, not the mix's.
    let s = run(KVXFER, &[&["size", "-m", "llama-3.1-8b", "--run", js][..], &mix].concat(), secs(10));
    s.expect_code(0);
    for (b, t) in by.iter().zip([16u32, 128]) {
        let p50 = kvxfer::units::fmt_ns(b["transfer_ns"]["p50"].as_u64().unwrap() as f64);
        let line = format!("{t:>8} tokens: {p50} median, - p99 (layer granularity");
        assert!(s.stdout.contains(&line), "no {line:?} in\n{}", s.stdout);
    }
    assert!(s.stdout.contains("under poisson 50/s arrivals: not alone"), "{}", s.stdout);
    assert!(!s.stdout.contains("not in the run"), "{}", s.stdout);
}

/// Requests in flight at once (four lanes) hold their room in the decode
/// buffer from their go, before any has landed: four of 128 MiB that
/// arrive together at a 320 MiB buffer. The first two fit, the third's last
/// 16 tensors of 4 MiB spill, and all 32 of the fourth. With four lanes
/// decode holds each request 3 s after its last byte, so a lane that a
/// loaded machine wakes late still finds the first two there (released at
/// the last byte, a late lane found the first request gone: CI, 2 cores).
/// One at a time and no hold, each is gone before the next: nothing spills.
#[test]
fn requests_in_flight_share_the_decode_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("together.csv");
    std::fs::write(&trace, "0,1024\n0,1024\n0,1024\n0,1024\n").unwrap();
    let j = dir.path().join("lanes.json");
    let arrivals = format!("--arrivals=trace:{}", trace.display());
    let with = |lanes: &str, on_full: &str| {
        let hold = if lanes == "1" { "0" } else { "3000" };
        let args = [
            "pair",
            "-m",
            "llama-3.1-8b",
            "-g",
            "layer",
            "-w",
            "1",
            &arrivals,
            "--decode-buffer",
            "320MiB",
            "--on-full",
            on_full,
            "--concurrency",
            lanes,
            "--decode-hold",
            hold,
            "--json",
            j.to_str().unwrap(),
        ];
        let f = run(KVXFER, &args, secs(120));
        f.expect_code(0);
        assert!(f.stdout.contains("0 wrong bytes"), "{}", f.stdout);
        json(&j)["points"][0]["load"].clone()
    };
    let l = with("4", "spill");
    let b = &l["decode_buffer"];
    assert_eq!((&b["spilled_tensors"], &b["spilled_requests"]), (&48.into(), &2.into()), "{b}");
    assert_eq!(b["spilled_bytes"], 192u64 << 20);
    assert_eq!(b["demand_peak_bytes"], 512u64 << 20, "{b}");
    assert_eq!(l["resident"]["peak_bytes"], 320u64 << 20, "{}", l["resident"]);
    assert_eq!(l["queue_ns"]["count"], 4);
    let l = with("1", "spill");
    assert_eq!(l["decode_buffer"]["spilled_tensors"], 0, "{l}");
    assert_eq!(l["resident"]["peak_bytes"], 128u64 << 20, "{}", l["resident"]);
    // Waiting: never more than the buffer, however many lanes are free.
    let l = with("4", "wait");
    let b = &l["decode_buffer"];
    assert_eq!(l["resident"]["peak_bytes"], 256u64 << 20, "{}", l["resident"]);
    assert_eq!((&b["waited_requests"], &b["spilled_tensors"]), (&2.into(), &0.into()), "{b}");
    // Each waited out a 3 s hold, less the time its lane took to ask.
    assert!(b["wait_ns"]["min"].as_u64().unwrap() > 2_000_000_000, "{b}");
}

/// A decode buffer below the load's peak: P2pNccl-style spills, counted by
/// hand; LMCache-style waits that never let the buffer overflow. Loopback
/// moves 16 MiB in far less than the 200 ms between arrivals.
#[test]
fn a_decode_buffer_spills_or_waits_past_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("spill.json");
    // 8 requests of 16 MiB (32 tensors of 512 KiB), 200 ms apart, each held
    // 2 s: all held at the end. 40 MiB: two fit, the third's last 16
    // tensors spill, and all of the 5 after it: 176 tensors, 88 MiB.
    let base =
        ["pair", "-m", "llama-3.1-8b", "-p", "128", "--arrivals", "fixed:5", "--decode-buffer", "40MiB"];
    let args = [&base[..], &["-n", "8", "--decode-hold", "2000", "--json", j.to_str().unwrap()]].concat();
    let f = run(KVXFER, &args, secs(60));
    f.expect_code(0);
    let l = &json(&j)["points"][0]["load"];
    let b = &l["decode_buffer"];
    assert_eq!((&b["spilled_tensors"], &b["spilled_requests"]), (&176.into(), &6.into()), "{b}");
    assert_eq!(b["spilled_bytes"], 88u64 << 20);
    assert_eq!(l["resident"]["peak_bytes"], 40u64 << 20, "{}", l["resident"]);
    assert_eq!(b["pooled"]["peak_bytes"], 88u64 << 20);
    assert_eq!(b["spill_store_ns"]["count"], 6);
    assert!(f.stdout.contains("176 tensors (88 MiB) of 6 requests spilled"), "{}", f.stdout);
    assert!(f.stdout.contains("0 wrong bytes"), "spilled bytes come back unchanged: {}", f.stdout);
    // kvxfer size puts the measured peak, buffer and pool together (all 8 held), by its arithmetic.
    let f = run(
        KVXFER,
        &["size", "-m", "llama-3.1-8b", "-p", "128", "--concurrent", "8", "--run", j.to_str().unwrap()],
        secs(10),
    );
    f.expect_code(0);
    assert!(f.stdout.contains("kv_buffer_size 128 MiB for 8 requests"), "{}", f.stdout);
    assert!(f.stdout.contains("peak 128 MiB held (about 8.0 requests of the mix's mean)"), "{}", f.stdout);
    assert!(f.stdout.contains("past its 40 MiB buffer 176 tensors (88 MiB) spilled"), "{}", f.stdout);
    // Waiting instead: each held 1 s, so the third waits for the first's release.
    let args = [
        &base[..],
        &["--on-full", "wait", "-n", "5", "--decode-hold", "1000", "--json", j.to_str().unwrap()],
    ]
    .concat();
    run(KVXFER, &args, secs(60)).expect_code(0);
    let l = &json(&j)["points"][0]["load"];
    let b = &l["decode_buffer"];
    assert!(l["resident"]["peak_bytes"].as_u64().unwrap() <= 40 << 20, "{}", l["resident"]);
    assert!(b["waited_requests"].as_u64().unwrap() >= 1 && b["spilled_tensors"] == 0, "{b}");
    // A buffer smaller than a tensor, or than a request one waits for, would never hold it.
    let f =
        run(KVXFER, &["pair", "-p", "128", "--arrivals", "fixed:5", "--decode-buffer", "100KiB"], secs(10));
    f.expect_code(2).expect_stderr("smaller than one tensor");
    let args = ["pair", "-p", "128", "--arrivals", "fixed:5", "--decode-buffer", "1MiB", "--on-full", "wait"];
    run(KVXFER, &args, secs(10)).expect_code(2).expect_stderr("which would wait for ever");
}

/// `kvxfer plan --turns`: the seed's conversation (10 turns of 100 tokens,
/// Llama-3.1-8B) moves 5,500 tokens' KV in full, 70 blocks in delta.
#[test]
fn plan_shows_what_each_turn_of_a_conversation_moves() {
    let modes = "full,delta,bidirectional,d-direct";
    let f = run(
        KVXFER,
        // The seed's 16-token blocks (vLLM's default then).
        &[
            "plan",
            "-m",
            "llama-3.1-8b",
            "--block-size",
            "16",
            "--turns",
            "10",
            "--turn-tokens",
            "100",
            "--multi-turn",
            modes,
        ],
        secs(10),
    );
    f.expect_code(0);
    let total = f.stdout.lines().find(|l| l.starts_with("total")).unwrap_or_default().to_string();
    // 5,500 x 128 KiB; 70 x 16 x 128 KiB; turn 1 and 2-10 both ways; 100 tokens once.
    for cell in ["687.50 MiB 100%", "140 MiB 20%", "702.50 MiB 102%", "12.50 MiB 2%"] {
        assert!(total.contains(cell), "{cell} not in: {total}\n{}", f.stdout);
    }
    assert!(
        f.stdout.contains(
            "   10     1000          125 MiB           14 MiB 112.50 MiB + 14 MiB              0 B"
        ),
        "{}",
        f.stdout
    );
    assert!(f.stdout.contains("d-direct: decode prefills turns 2-10 itself"), "{}", f.stdout);
    let cases: &[(&[&str], &str)] = &[
        (&["--turns", "0", "--turn-tokens", "100"], "--turns must be at least 1"),
        (&["--turns", "3", "--turn-tokens", "0"], "at least one input token"),
        (&["--turns", "3", "--turn-tokens", "x"], "--turn-tokens wants IN[:OUT]"),
        (&["--turns", "3"], "--turn-tokens"),
        (&["--turns", "3", "--turn-tokens", "1k", "--multi-turn", "both"], "--multi-turn"),
        (&["-m", "qwen3-8b", "--turns", "50", "--turn-tokens", "1k"], "past the model's 40960"),
        (&["--turns", "9", "--turn-tokens", "1k", "--max-context", "8192"], "reach 9216 tokens"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["plan"];
        all.extend_from_slice(args);
        run(KVXFER, &all, secs(10)).expect_code(2).expect_stderr(needle);
    }
}

/// Numbers past what kvxfer takes exit 2 naming the flag and its range:
/// before, `--timeout 1e30` panicked in Duration arithmetic and
/// `--arrivals fixed:1e-300` waited forever (issue 37's fault matrix).
#[test]
fn numbers_out_of_range_exit_2_naming_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    std::fs::write(&trace, "1e12,64\n").unwrap();
    let trace = format!("trace:{}", trace.display());
    for (args, says) in [
        (&["pair", "--timeout", "1e30"][..], "past 30 days"),
        (&["pair", "--timeout", "18446744073709551616"], "past 30 days"),
        (&["pair", "--timeout", "1ns"], "under 1 ms"),
        (&["pair", "--arrivals", "poisson:10", "--duration", "1e30"], "past 30 days"),
        (&["pair", "--arrivals", "fixed:1e-300"], "outside what kvxfer takes"),
        (&["pair", "--arrivals", "poisson:1e30"], "outside what kvxfer takes"),
        (&["pair", "-p", "64", "--prefill-ms", "64:1e30"], "past an hour"),
        (&["pair", "--arrivals", &trace], "past 30 days, the longest trace"),
    ] {
        let f = run(KVXFER, args, secs(20));
        f.expect_code(2).expect_stderr(says);
    }
    run(RECV, &["--wait-for-sender", "1e30"], secs(20)).expect_code(2).expect_stderr("past 30 days");
}

/// Outputs that collide or cannot be files are refused before the run:
/// `--json X --csv X` exited 0 with the CSV overwritten, `--json FIFO` hung.
#[test]
fn outputs_that_collide_or_are_no_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("r.out"), dir.path().join(".").join("r.out"));
    let f = run(
        KVXFER,
        &["pair", "-p", "64", "--json", a.to_str().unwrap(), "--csv", b.to_str().unwrap()],
        secs(20),
    );
    f.expect_code(2).expect_stderr("--csv and --json both name");
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let f = run(KVXFER, &["pair", "-p", "64", "--json", fifo.to_str().unwrap()], secs(20));
    f.expect_code(2).expect_stderr("it is a FIFO");
    let f = run(RECV, &["--csv", dir.path().to_str().unwrap()], secs(20));
    f.expect_code(2).expect_stderr("it is a folder");
    // Inputs too: a device, a FIFO and a folder as every file kvxfer reads.
    let fifo_s = fifo.to_str().unwrap();
    for input in ["/dev/zero", fifo_s, dir.path().to_str().unwrap()] {
        let trace = format!("trace:{input}");
        for args in [
            &["pair", "--arrivals", &trace][..],
            &["plan", "--model-config", input],
            &["report", "--out", dir.path().to_str().unwrap(), input],
            &["size", "--model", "llama-3.1-8b", "--run", input],
        ] {
            let f = run(KVXFER, args, secs(20));
            f.expect_code(2).expect_stderr("give a file");
        }
    }
}

/// A one-shot receiver waiting for its sender ends at the first Ctrl-C
/// (it took a second one, and ended without a word).
#[test]
fn the_first_signal_ends_a_receiver_waiting_for_its_sender() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let (recv, _) = receiver("127.0.0.1:0", &[]);
        recv.signal(sig);
        let f = recv.finish(secs(5));
        assert!(f.elapsed < secs(3), "took {:?}", f.elapsed);
        f.expect_code(128 + sig).expect_stderr("interrupted on");
    }
}

/// One lane under load with checks after each request: checking 1 MiB and
/// writing the next takes about as long as moving it over loopback, and
/// that time sits in the queue. The run measures it (last byte to the next
/// waiting request's go) and says the queue is partly kvxfer's own.
#[test]
fn a_queue_that_kvxfer_itself_fills_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    let args = [
        "pair",
        "-m",
        "llama-3.1-8b",
        "-p",
        "8",
        "-g",
        "request",
        "--arrivals",
        "poisson:2000",
        "-n",
        "300",
        "--concurrency",
        "1",
        "--json",
        j.to_str().unwrap(),
    ];
    let f = run(KVXFER, &args, secs(120));
    f.expect_code(0);
    let t = &json(&j)["points"][0]["load"]["queue_theory"];
    let (between, service) = (t["between_ns"].as_f64().unwrap(), t["service_ns"].as_f64().unwrap());
    assert!(between >= 0.1 * service, "{t}");
    assert!(f.stdout.contains("NOTE: kvxfer's own work between requests"), "{}", f.stdout);
}

/// One rule for tails everywhere (issue 38): a percentile its count cannot
/// support (p90 from 10, p99 from 100, p99.9 from 1000) is "-" in the
/// table, empty in the CSV and null in the JSON; from enough, it is there.
#[test]
fn tails_are_shown_only_where_their_count_supports_them() {
    let dir = tempfile::tempdir().unwrap();
    let (j, c) = (dir.path().join("r.json"), dir.path().join("r.csv"));
    for (n, p99, p999) in [(10, false, false), (1000, true, true)] {
        let args = ["pair", "-p", "1", "-n", &n.to_string(), "-w", "1", "--json", j.to_str().unwrap()];
        let f = run(KVXFER, &[&args[..], &["--csv", c.to_str().unwrap()]].concat(), secs(120));
        f.expect_code(0);
        let l = &json(&j)["points"][0]["request_ns"];
        assert_eq!(l["count"], n);
        assert!(l["p90"].is_u64(), "{l}");
        assert_eq!((l["p99"].is_u64(), l["p999"].is_u64()), (p99, p999), "n {n}: {l}");
        let csv = std::fs::read_to_string(&c).unwrap();
        let (head, row) = (csv.lines().next().unwrap(), csv.lines().nth(1).unwrap());
        let column =
            |name: &str| row.split(',').nth(head.split(',').position(|h| h == name).unwrap()).unwrap();
        assert!(!column("request_ns_p90").is_empty());
        assert_eq!(
            (!column("request_ns_p99").is_empty(), !column("request_ns_p999").is_empty()),
            (p99, p999)
        );
        let table_p99 = cell(&f.stdout, &f.rows()[0], "p99");
        assert_eq!(table_p99 == "-", !p99, "{}", f.stdout);
    }
}

/// Every option that takes a value, of every command that runs or plans,
/// at 0, -1, 1e30, NaN and 2^64 (issue 37): each is taken or refused with
/// exit 2 before anything runs (KVXFER_CHECK_ARGS=1 checks the options,
/// and the plan and gate they make; plan and size run), never a panic or
/// a hang, and none of the three that no number of anything can be
/// (1e30, NaN, 2^64) is taken by an option that holds a number.
#[test]
fn every_option_at_0_minus_1_1e30_nan_and_2_to_the_64() {
    let commands: [&[&str]; 7] = [
        &[KVXFER, "pair"],
        &[SEND, "-c", "127.0.0.1:1"],
        &[RECV],
        &[KVXFER, "size"],
        &[KVXFER, "plan"],
        &[KVXFER, "matrix", "--hosts", "a,b"],
        &[KVXFER, "launch", "--rendezvous", "a:1,b:1"],
    ];
    // Options whose value is a name, a path or an address: any text is one.
    let texts = [
        "listen",
        "require-transport",
        "ucx-lib",
        "ofi-provider",
        "require-provider",
        "ofi-lib",
        "nixl-backend",
        "nixl-lib",
        "nccl-lib",
        "csv",
        "json",
        "connect",
        "json-dir",
        "hosts",
        "rendezvous",
        "run",
        "model-config",
        "bind",
        "nixl-param",
    ];
    let mut options = 0;
    let mut wrong = Vec::new();
    // Plan and size run: a file they were told to write lands here.
    let scratch = tempfile::tempdir().unwrap();
    for command in commands {
        let help = run(command[0], &[&command[1..], &["--help"]].concat(), secs(10)).stdout;
        for line in help.lines() {
            // "  -p, --prompt-lengths <LIST>" or "      --timeout <TIME>"
            let Some(at) = line.find("--") else { continue };
            let Some((flag, rest)) = line[at + 2..].split_once(' ') else { continue };
            if !line.trim_start().starts_with('-') || !rest.starts_with('<') || texts.contains(&flag) {
                continue;
            }
            options += 1;
            for value in ["0", "-1", "1e30", "NaN", "18446744073709551616"] {
                let option = format!("--{flag}");
                let args = [&command[1..], &[option.as_str(), value]].concat();
                let mut cmd = std::process::Command::new(command[0]);
                cmd.args(&args).env("KVXFER_CHECK_ARGS", "1").current_dir(scratch.path());
                let f = Proc::spawn(cmd).finish(secs(20));
                let number_of_nothing = ["1e30", "NaN", "18446744073709551616"].contains(&value);
                match f.code {
                    Some(2) if f.stderr.contains("panicked") => wrong.push(format!("{args:?}: {}", f.stderr)),
                    Some(2) => {}
                    Some(0) if !number_of_nothing => {}
                    code => wrong.push(format!("{args:?}: exit {code:?}: {}", f.stderr)),
                }
            }
        }
    }
    assert!(options > 100, "{options} options found in --help");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
