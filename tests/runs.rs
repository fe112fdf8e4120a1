//! Whole runs of the real binaries over loopback that must succeed, with
//! every byte verified and figures that make sense.

mod common;
use common::*;

#[test]
fn sweep_over_prompt_lengths_and_all_granularities() {
    let dir = tempfile::tempdir().unwrap();
    let (sj, rj, sc) =
        (dir.path().join("send.json"), dir.path().join("recv.json"), dir.path().join("send.csv"));
    let (recv, addr) = receiver("127.0.0.1:0", &["--json", rj.to_str().unwrap()]);
    let send = run(
        SEND,
        &[
            "--connect",
            &addr,
            "-m",
            "qwen2.5-7b",
            "--block-size",
            "16",
            "-p",
            "100,1024,3000",
            "-g",
            "all",
            "-n",
            "3",
            "-w",
            "1",
            "--link",
            "25gbe",
            "--json",
            sj.to_str().unwrap(),
            "--csv",
            sc.to_str().unwrap(),
        ],
        secs(120),
    );
    send.expect_code(0);
    let recv = recv.finish(secs(10));
    recv.expect_code(0);

    // Both sides print the same figures.
    assert_eq!(send.rows().len(), 9);
    assert_eq!(send.rows(), recv.rows());
    assert!(send.stdout.contains("0 wrong bytes"));

    let (s, r) = (json(&sj), json(&rj));
    assert_sane(&s, 9);
    assert_eq!(s["points"], r["points"]);
    assert_eq!(s["written_by"], "sender");
    assert_eq!(r["written_by"], "receiver");
    assert_eq!(s["kv_bytes_per_token"], 57_344);
    assert_eq!(s["link"]["peak_gbps"], 3.125);
    assert!(s["points"][0]["percent_of_peak"].as_f64().unwrap() > 0.0);
    // Block points move whole blocks: 100 tokens are 7 blocks of 16.
    let block_100 = s["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["granularity"] == "block" && p["prompt_tokens"] == 100)
        .unwrap();
    assert_eq!(block_100["messages"], 28 * 2 * 7);
    assert_eq!(block_100["request_bytes"], 7 * 16 * 57_344);
    // The environment of both machines and the transport truth of both sides.
    for side in ["sender", "receiver"] {
        assert!(!s[side]["hostname"].as_str().unwrap().is_empty());
        assert!(s[side]["command_line"].as_array().unwrap().len() > 1);
        assert!(s[&format!("{side}_transport")]["summary"].as_str().unwrap().starts_with("tcp: 1 stream"));
    }
    assert!(s["control_rtt"]["median_ns"].as_u64().unwrap() > 0);

    let csv = std::fs::read_to_string(&sc).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 10);
    assert!(lines[0].contains("request_ns_p99") && lines[0].contains("wrong_bytes"));
    let wrong = lines[0].split(',').position(|c| c == "wrong_bytes").unwrap();
    assert!(lines[1..].iter().all(|l| l.contains("qwen2.5-7b") && l.split(',').nth(wrong) == Some("0")));
}

#[test]
fn pair_with_several_streams_mla_and_inline_checks() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    let f = run(
        KVXFER,
        &[
            "pair",
            "-m",
            "deepseek-v3",
            "-p",
            "100,700",
            "-g",
            "all",
            "-n",
            "3",
            "--streams",
            "3",
            "--verify",
            "inline",
            "--json",
            j.to_str().unwrap(),
        ],
        secs(120),
    );
    f.expect_code(0);
    let r = json(&j);
    assert_sane(&r, 6);
    assert_eq!(r["kv_bytes_per_token"], 70_272);
    assert!(r["sender_transport"]["summary"].as_str().unwrap().starts_with("tcp: 3 stream"));
    assert!(f.stdout.contains("inside the timed region"));
}

#[test]
fn verify_off_checks_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    let f = run(
        KVXFER,
        &["pair", "-p", "64", "-n", "2", "--verify", "off", "--json", j.to_str().unwrap()],
        secs(60),
    );
    f.expect_code(0);
    assert!(f.stdout.contains("not verified"));
    let r = json(&j);
    assert_eq!(r["verified_bytes"], 0);
    assert!(f.rows()[0].trim_end().ends_with('-'), "wrong column shows '-': {:?}", f.rows());
}

#[test]
fn ipv6_literals_work() {
    // Where this machine has no IPv6 loopback, the receiver must say so clearly.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        let f = run(RECV, &["--listen", "[::1]:0"], secs(10));
        f.expect_code(1).expect_stderr("cannot listen on [::1]:0");
        return;
    }
    let (recv, addr) = receiver("[::1]:0", &[]);
    assert!(addr.starts_with("[::1]:"), "{addr}");
    let send = run(SEND, &["--connect", &addr, "-p", "32", "-n", "2", "-g", "block"], secs(60));
    send.expect_code(0);
    assert!(send.stdout.contains("[::1]:"), "transport shows the v6 peer");
    recv.finish(secs(10)).expect_code(0);
}

#[test]
fn the_readme_main_command_runs_on_its_defaults() {
    let f = run(KVXFER, &["pair"], secs(300));
    f.expect_code(0);
    assert_eq!(f.rows().len(), 3, "128, 1024 and 8192 tokens at layer granularity");
    assert!(f.stdout.contains("llama-3.1-8b"));
    assert!(f.stdout.contains("0 wrong bytes"));
}

#[test]
fn a_stray_connection_does_not_disturb_the_receiver() {
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    }
    let send = run(SEND, &["--connect", &addr, "-p", "64", "-n", "2"], secs(60));
    send.expect_code(0);
    let recv = recv.finish(secs(10));
    recv.expect_code(0);
    assert!(recv.stderr.contains("ignoring a connection"), "{}", recv.stderr);
}

#[test]
fn socket_buffers_report_what_the_kernel_applied() {
    let cap = |f: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/net/core/{f}")).unwrap().trim().parse().unwrap()
    };
    let (low, high) = (cap("wmem_max").min(cap("rmem_max")), cap("wmem_max").max(cap("rmem_max")));
    let within = (low / 2).to_string();
    let f = run(KVXFER, &["pair", "-p", "16", "-n", "1", "--socket-buffer", &within], secs(60));
    f.expect_code(0);
    assert!(f.stdout.contains("(asked ") && !f.stdout.contains("capped"), "{}", f.stdout);
    let beyond = (2 * high).to_string();
    let f = run(KVXFER, &["pair", "-p", "16", "-n", "1", "--socket-buffer", &beyond], secs(60));
    f.expect_code(0);
    assert!(f.stdout.contains("capped by net.core.wmem_max/rmem_max"), "{}", f.stdout);
}

#[test]
fn json_stream_prints_a_line_per_point_and_one_for_the_outcome() {
    let f =
        run(KVXFER, &["pair", "-p", "128,1024", "-g", "request,layer", "-n", "2", "--json-stream"], secs(60));
    f.expect_code(0);
    let lines: Vec<serde_json::Value> =
        f.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(lines.len(), 5, "4 points and the outcome:\n{}", f.stdout);
    for (l, (gran, tokens)) in
        lines.iter().zip([("request", 128), ("request", 1024), ("layer", 128), ("layer", 1024)])
    {
        assert_eq!(l["point"]["granularity"], gran);
        assert_eq!(l["point"]["prompt_tokens"], tokens);
        assert!(l["point"]["gbps"].as_f64().unwrap() > 0.0);
        assert_eq!(l["transport"], "tcp");
    }
    assert_eq!(lines[4]["outcome"], "ok");
    assert_eq!(lines[4]["wrong_bytes"], 0);
    // No table, and no progress bar where stderr is not a terminal.
    assert!(!f.stdout.contains("# integrity") && !f.stderr.contains("points"), "{}{}", f.stdout, f.stderr);
}

#[test]
fn bind_picks_the_sending_address_for_control_and_data() {
    let (recv, addr) = receiver("127.0.0.1:0", &[]);
    // Any 127.x address is this host's loopback on Linux.
    let send = run(SEND, &["--connect", &addr, "--bind", "127.0.0.2", "-p", "64", "-n", "1"], secs(60));
    send.expect_code(0);
    let recv = recv.finish(secs(20));
    recv.expect_code(0);
    // The receiver saw the sender's tcp data stream come from that address.
    assert!(recv.stdout.contains("127.0.0.1:") && recv.stdout.contains("<-> 127.0.0.2:"), "{}", recv.stdout);
    let bad = run(SEND, &["--connect", &addr, "--bind", "192.0.2.7", "-p", "64", "-n", "1"], secs(20));
    bad.expect_code(2).expect_stderr("cannot bind 192.0.2.7");
    let v6 = run(SEND, &["--connect", "127.0.0.1:9", "--bind", "::1", "-p", "64", "-n", "1"], secs(20));
    v6.expect_code(2).expect_stderr("none of that IP version");
}

/// One rule for tails: a p99 needs 100 requests and a p99.9 1000, in the
/// table, its lines and `kvxfer report`'s tables alike; below that they
/// show `-` (with 20 requests the "p99" was the largest of them).
#[test]
fn a_tail_its_sample_cannot_support_shows_a_dash_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let lines = |n: &str| -> (String, String) {
        let j = dir.path().join(format!("n{n}.json"));
        let args = ["pair", "-p", "16", "-g", "request", "--arrivals", "fixed:500", "-n", n, "-w", "1"];
        let more = ["--prefill-ms", "16:1", "--json", j.to_str().unwrap()];
        let out = run(KVXFER, &[&args[..], &more].concat(), secs(60));
        out.expect_code(0);
        let report = dir.path().join(format!("report{n}"));
        run(KVXFER, &["report", "-o", report.to_str().unwrap(), j.to_str().unwrap()], secs(60))
            .expect_code(0);
        (out.stdout, std::fs::read_to_string(report.join("summary.md")).unwrap())
    };
    let (few, md) = lines("20");
    let load = few.lines().find(|l| l.starts_with("#   fixed 500/s")).unwrap();
    assert!(load.contains("| queue p50 ") && load.contains(" p99 - max "), "{load}");
    assert!(load.contains(" p99 - p99.9 - max "), "{load}");
    let prefill = few.lines().find(|l| l.starts_with("#   prefill ")).unwrap();
    assert!(prefill.contains(" p99 - max "), "{prefill}");
    // Every p99 column of the report's tables: the request's, the added TTFT's, the queue's and latency's.
    let cells =
        |l: &str| -> Vec<String> { l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect() };
    let mut checked = 0;
    let mut columns: Vec<usize> = Vec::new();
    for l in md.lines() {
        if l.starts_with("| series") {
            columns =
                (cells(l).iter().enumerate()).filter(|(_, c)| c.contains("p99")).map(|(i, _)| i).collect();
        } else if l.starts_with("| tcp") {
            let row = cells(l);
            for &i in &columns {
                assert_eq!(row[i], "-", "column {i} of {l}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4, "{md}");
    // The histogram's panel title, too, names its count and gives no p99.
    let svg = std::fs::read_to_string(dir.path().join("report20/histogram-16.svg")).unwrap();
    assert!(svg.contains("n 20, p50 ") && svg.contains(", p99 -"), "{svg}");
    let (many, _) = lines("150");
    let svg = std::fs::read_to_string(dir.path().join("report150/histogram-16.svg")).unwrap();
    assert!(svg.contains("n 150, p50 ") && !svg.contains(", p99 -"), "{svg}");
    let load = many.lines().find(|l| l.starts_with("#   fixed 500/s")).unwrap();
    assert!(!load.contains(" p99 - "), "150 requests give a p99: {load}");
    assert!(load.contains(" p99.9 - max "), "but no p99.9: {load}");
}
