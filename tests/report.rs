//! `kvxfer report` over recorded runs (tests/fixtures/reports: NCCL and UCX
//! on the H200 pair, tcp on the build machine): the merged table holds every
//! series, and each plot is written as a real PNG and SVG.

mod common;
use common::*;

const FIXTURES: [&str; 3] = [
    "tests/fixtures/reports/h200-nccl-layer-grouped.json",
    "tests/fixtures/reports/h200-ucx-put.json",
    "tests/fixtures/reports/vm-tcp-loopback.json",
];

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The text elements of an SVG (titles, tick labels, legend), in order.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string()))
        .collect()
}

#[test]
fn report_merges_runs_into_series_a_table_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let f =
        run(KVXFER, &[&["report"][..], &FIXTURES[..], &["--out", out.to_str().unwrap()]].concat(), secs(60));
    f.expect_code(0);
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    // 6 NCCL points, 4 UCX points, 3 x 2 tcp points (request and block).
    assert_eq!(rows.len(), 16, "{csv}");
    for (series, points) in [
        ("nccl P2P/CUMEM group 32 · layer", 6),
        ("ucx put (cuda_ipc) · request", 4),
        ("tcp · request", 3),
        ("tcp · block", 3),
    ] {
        assert_eq!(
            rows.iter().filter(|r| r.starts_with(&format!("{series},"))).count(),
            points,
            "{series}: {csv}"
        );
    }
    assert!(csv.contains("ucx put (cuda_ipc) · request,2048,1,268435456,388.8"), "{csv}");
    assert!(f.stdout.contains("| ucx put (cuda_ipc) · request | 2048 |"), "{}", f.stdout);
    // Plots: bandwidth, latency, and a histogram per prompt length measured.
    let mut names = vec!["bandwidth".to_string(), "latency".to_string()];
    for t in [128, 512, 1024, 2048, 8192, 32768, 131072] {
        names.push(format!("histogram-{t}"));
    }
    for name in &names {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert_eq!(png_size(&png), (1280, 760), "{name}");
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{name}");
    }
    let bw = std::fs::read_to_string(out.join("bandwidth.svg")).unwrap();
    for text in
        ["theoretical peak: nvlink4, 450 GB/s", "ucx put (cuda_ipc) · request", "tcp · block", "log scale"]
    {
        assert!(bw.contains(text), "bandwidth.svg lacks {text:?}");
    }
    // Ticks at the prompt lengths measured, written as operators write them.
    let labels = svg_texts(&bw);
    let x: Vec<&str> = ["128", "512", "1k", "2k", "8k", "32k", "128k"].to_vec();
    assert!(x.iter().all(|t| labels.contains(&t.to_string())), "{labels:?}");
    // None where nothing was measured.
    assert!(!labels.iter().any(|l| l == "4k" || l == "16k" || l == "10000"), "{labels:?}");
    let latency = svg_texts(&std::fs::read_to_string(out.join("latency.svg")).unwrap());
    assert!(x.iter().all(|t| latency.contains(&t.to_string())), "{latency:?}");
    // Times in human units: "1 ms", "100 ms", never a bare 1000000.
    assert!(latency.iter().any(|l| l == "1 ms") && latency.iter().any(|l| l == "100 ms"), "{latency:?}");
    assert!(!latency.iter().any(|l| l.chars().all(|c| c.is_ascii_digit()) && l.len() > 4), "{latency:?}");
    let h = std::fs::read_to_string(out.join("histogram-8192.svg")).unwrap();
    assert!(
        h.contains("nccl P2P/CUMEM group 32 · layer") && h.contains("tcp · request"),
        "one bar set per series"
    );
    // One x range for all panels: the same time ticks under each caption.
    let mut panels: Vec<Vec<String>> = Vec::new();
    for t in svg_texts(&h) {
        let number = t.split(' ').next().is_some_and(|n| n.parse::<f64>().is_ok());
        match (t.contains(", p50 "), number && [" us", " ms", " s"].iter().any(|u| t.ends_with(u))) {
            (true, _) => panels.push(Vec::new()),
            (false, true) => panels.last_mut().expect("a caption first").push(t),
            _ => {}
        }
    }
    assert_eq!(panels.len(), 4, "{panels:?}");
    assert!(panels.iter().all(|p| *p == panels[0]) && panels[0].len() >= 3, "{panels:?}");
    // Only NCCL measured 131072 tokens: its histogram holds nothing else.
    let h = std::fs::read_to_string(out.join("histogram-131072.svg")).unwrap();
    assert!(
        h.contains("nccl P2P/CUMEM group 32 · layer") && !h.contains("tcp · request"),
        "only the series measured there"
    );
}

/// Runs with emulated prefill (results/h200/prefill: ucx put on one H200,
/// layer and no overlap): the added-TTFT table, its CSV columns and the
/// stacked-bar plot; runs without prefill draw no such plot.
#[test]
fn report_of_prefill_runs_adds_the_ttft_table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let runs = [
        "tests/fixtures/reports/h200-ucx-put-prefill-layer.json",
        "tests/fixtures/reports/h200-ucx-put-prefill-none.json",
    ];
    let f = run(KVXFER, &[&["report"][..], &runs[..], &["--out", out.to_str().unwrap()]].concat(), secs(60));
    f.expect_code(0);
    let layer = json(std::path::Path::new(runs[0]));
    let p = &layer["points"][0]["prefill"];
    let fmt = |ns: &serde_json::Value| kvxfer::units::fmt_ns(ns.as_f64().unwrap());
    // The row of 1024 tokens, overlap layer: prefill, added p50 and p99
    // (from 100 requests; fewer show -), bound.
    let p99 = match p["added_ns"]["count"].as_u64().unwrap() {
        n if n >= 100 => fmt(&p["added_ns"]["p99"]),
        _ => "-".to_string(),
    };
    let row = format!(
        "| ucx put (cuda_ipc) · layer · overlap layer | 1024 | {} | {} | {p99} | {} |",
        fmt(&p["during_ns"]["p50"]),
        fmt(&p["added_ns"]["p50"]),
        fmt(&p["lower_bound_ns"])
    );
    assert!(f.stdout.contains("Added TTFT: from the end of the emulated prefill"), "{}", f.stdout);
    assert!(f.stdout.contains(&row), "{row} not in {}", f.stdout);
    assert!(f.stdout.contains("| ucx put (cuda_ipc) · layer · overlap none | 32768 |"), "{}", f.stdout);
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(
        "prefill_during_p50_ns,added_ttft_p50_ns,added_ttft_p99_ns,added_ttft_bound_ns,of_mix,n,stdev_ns"
    ));
    let first = csv.lines().nth(1).unwrap();
    // The p99 only from 100 requests: empty below (the fixture's are fewer).
    let p99 = match p["added_ns"]["count"].as_u64().unwrap() {
        n if n >= 100 => p["added_ns"]["p99"].to_string(),
        _ => String::new(),
    };
    assert!(
        first.contains(&format!(
            ",{},{},{p99},{},false,",
            p["during_ns"]["p50"], p["added_ns"]["p50"], p["lower_bound_ns"]
        )),
        "{first}"
    );
    let png = std::fs::read(out.join("ttft.png")).unwrap();
    assert_eq!(png_size(&png), (1280, 760));
    let svg = std::fs::read_to_string(out.join("ttft.svg")).unwrap();
    for text in [
        "1024 tokens",
        "32768 tokens",
        "ucx put (cuda_ipc) · layer · overlap none",
        &format!("+{}", fmt(&p["added_ns"]["p50"])),
    ] {
        assert!(svg.contains(text), "ttft.svg lacks {text:?}");
    }
    // Without prefill, no TTFT plot and no table.
    let plain = dir.path().join("plain");
    let f = run(KVXFER, &["report", FIXTURES[1], "--out", plain.to_str().unwrap()], secs(60));
    f.expect_code(0);
    assert!(!plain.join("ttft.png").exists() && !f.stdout.contains("Added TTFT"));
}

/// A run under load (tcp on the build VM): latency against the offered
/// rate, and the KV held over time, one line per rate.
#[test]
fn report_of_a_load_run_plots_latency_against_load_and_what_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let run_json = "tests/fixtures/reports/vm-tcp-load.json";
    let f = run(KVXFER, &["report", run_json, "--out", out.to_str().unwrap()], secs(60));
    f.expect_code(0);
    assert!(f.stdout.contains("| tcp · layer · mix 128:1 |"), "{}", f.stdout);
    let run_doc = json(std::path::Path::new(run_json));
    let l = &run_doc["points"][1]["load"];
    let row = format!(
        "| tcp · layer · mix 128:1 | poisson 40/s | {:.1} | {:.1}",
        l["offered_qps"].as_f64().unwrap(),
        l["achieved_qps"].as_f64().unwrap()
    );
    assert!(
        f.stdout.contains("Under load: latency from arrival") && f.stdout.contains(&row),
        "{row} not in {}",
        f.stdout
    );
    for name in ["load-latency", "resident"] {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert_eq!(png_size(&png), (1280, 760), "{name}");
    }
    let svg = std::fs::read_to_string(out.join("resident.svg")).unwrap();
    for text in ["poisson 5/s", "poisson 40/s", "tcp · layer · mix 128:1"] {
        assert!(svg.contains(text), "resident.svg lacks {text:?}");
    }
    assert!(std::fs::read_to_string(out.join("load-latency.svg")).unwrap().contains("offered load"));
}

#[test]
fn a_baseline_adds_ratios_where_it_measured_the_same_point() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    // The baseline (tcp) is not among the runs: it is added to them.
    let f = run(
        KVXFER,
        &["report", "--baseline", FIXTURES[2], FIXTURES[0], FIXTURES[1], "--out", out.to_str().unwrap()],
        secs(60),
    );
    f.expect_code(0);
    assert!(f.stdout.contains("| vs tcp (vm-tcp-loopback) |"), "{}", f.stdout);
    let gbps = |fixture: &str, gran: &str, tokens: u64| {
        let run = json(std::path::Path::new(fixture));
        let p = run["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["granularity"] == gran && p["prompt_tokens"] == tokens);
        p.unwrap()["gbps"].as_f64().unwrap()
    };
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let column = csv.lines().next().unwrap().split(',').position(|c| c == "gbps_vs_baseline").unwrap();
    let ratio = |series: &str, tokens: u64| {
        let row = csv.lines().find(|r| r.starts_with(&format!("{series},{tokens},"))).expect(series);
        row.split(',').nth(column).unwrap().to_string()
    };
    assert_eq!(csv.lines().count(), 1 + 16, "{csv}");
    // ucx put and tcp both measured whole requests of 8192 tokens.
    let want = gbps(FIXTURES[1], "request", 8192) / gbps(FIXTURES[2], "request", 8192);
    let got: f64 = ratio("ucx put (cuda_ipc) · request", 8192).parse().unwrap();
    assert!((got - want).abs() < 1e-3 && got > 50.0, "{got} vs {want}");
    assert_eq!(ratio("tcp · block", 1024), "1.0000");
    // No tcp point of that size or granularity: no ratio.
    assert_eq!(ratio("ucx put (cuda_ipc) · request", 512), "");
    assert_eq!(ratio("nccl P2P/CUMEM group 32 · layer", 8192), "");
    let f = run(
        KVXFER,
        &["report", "--baseline", "/nonexistent.json", FIXTURES[0], "-o", out.to_str().unwrap()],
        secs(10),
    );
    f.expect_code(2).expect_stderr("cannot read /nonexistent.json");
}

#[test]
fn report_refuses_what_is_not_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"points\": 3}").unwrap();
    let out = dir.path().join("r");
    let f = run(KVXFER, &["report", bad.to_str().unwrap(), "--out", out.to_str().unwrap()], secs(10));
    f.expect_code(2).expect_stderr("is not a kvxfer --json report");
    let f = run(KVXFER, &["report", "/nonexistent.json", "--out", out.to_str().unwrap()], secs(10));
    f.expect_code(2).expect_stderr("cannot read /nonexistent.json");
}

/// Runs of different models or TP are not merged into one table unless
/// asked: the refusal names each run's model and TP; with --allow-mixed
/// every series names its own.
#[test]
fn report_refuses_runs_of_different_models_or_tp_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let one = "tests/fixtures/reports/vm-tcp-loopback.json";
    let mut other = json(std::path::Path::new(one));
    other["plan"]["shape"]["tp"] = 2.into();
    let two = dir.path().join("tp2.json");
    std::fs::write(&two, other.to_string()).unwrap();
    let out = dir.path().join("report");
    let args = ["report", one, two.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let f = run(KVXFER, &args, secs(60));
    f.expect_code(2).expect_stderr("llama-3.1-8b at TP 1").expect_stderr("tp2: llama-3.1-8b at TP 2");
    assert!(!out.exists(), "nothing written");
    let f = run(KVXFER, &[&args[..], &["--allow-mixed"]].concat(), secs(60));
    f.expect_code(0);
    assert!(f.stdout.contains("| tcp · request · llama-3.1-8b at TP 1 | 128 |"), "{}", f.stdout);
    assert!(f.stdout.contains("| tcp · request · llama-3.1-8b at TP 2 | 128 |"), "{}", f.stdout);
}
