//! `kvxfer matrix`: every ordered pair of N ranks, started by mpirun or by
//! a launcher's variables; the slow rank found on a link shaped with tbf;
//! a rank killed mid-matrix leaves the others' figures and a failing exit.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Each matrix is several processes that poll: one at a time on 2 cores.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `kvxfer matrix ARGS` as rank `rank` of `size`, by Slurm's variables,
/// optionally inside network namespace `ns`.
fn rank(rank: u32, size: u32, ns: Option<&str>, args: &[&str]) -> Proc {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, KVXFER]);
            c
        }
        None => Command::new(KVXFER),
    };
    cmd.arg("matrix").args(args);
    cmd.env("SLURM_PROCID", rank.to_string()).env("SLURM_NTASKS", size.to_string());
    // The test may itself run under a launcher: only Slurm's variables count.
    for k in ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"] {
        cmd.env_remove(k);
    }
    Proc::spawn(cmd)
}

/// Each pair's GB/s at the first point, by (from, to).
fn figures(doc: &Value) -> Vec<((u64, u64), Option<f64>)> {
    doc["grids"][0]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ((c["from"].as_u64().unwrap(), c["to"].as_u64().unwrap()), c["gbps"].as_f64()))
        .collect()
}

#[test]
fn mpirun_measures_every_ordered_pair_over_tcp_and_ucx() {
    let _serial = one_at_a_time();
    let mpirun =
        ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].into_iter().find(|p| std::path::Path::new(p).exists());
    let mpirun = mpirun.expect("mpirun not found: scripts/test.sh installs openmpi-bin");
    for transport in ["tcp", "ucx"] {
        let dir = tempfile::tempdir().unwrap();
        let (json_path, csv_path) = (dir.path().join("m.json"), dir.path().join("m.csv"));
        let rv = format!("127.0.0.1:{}", free_port());
        let out = Command::new(mpirun)
            .args([
                "-np",
                "4",
                "--oversubscribe",
                "--allow-run-as-root",
                KVXFER,
                "matrix",
                "--rendezvous",
                &rv,
            ])
            .args(["-t", transport, "-p", "128,1024", "-g", "layer", "-n", "2", "--timeout", "20s"])
            .args(["--json", json_path.to_str().unwrap(), "--csv", csv_path.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{transport}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("# 1024 tokens, layer: GB/s, rows send (prefill)"), "{stdout}");
        let doc = json(&json_path);
        assert_eq!(doc["kind"], "kvxfer-matrix");
        assert_eq!(doc["ranks"].as_array().unwrap().len(), 4);
        assert_eq!(doc["grids"].as_array().unwrap().len(), 2);
        let cells = figures(&doc);
        assert_eq!(cells.len(), 12, "{transport}");
        for ((i, j), g) in &cells {
            assert_ne!(i, j);
            assert!(g.is_some_and(|g| g > 0.0 && g < 200.0), "{transport} {i}->{j}: {g:?}");
        }
        assert!(doc["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["error"].is_null() && p["wrong_bytes"] == 0));
        let csv = std::fs::read_to_string(&csv_path).unwrap();
        assert_eq!(csv.lines().count(), 1 + 12 * 2, "{csv}");
        // `kvxfer report` draws a heatmap per point.
        let report_dir = dir.path().join("report");
        let report =
            [&["report", json_path.to_str().unwrap(), "--out"][..], &[report_dir.to_str().unwrap()]].concat();
        run(KVXFER, &report, secs(60)).expect_code(0);
        for f in ["matrix-m-128-layer.png", "matrix-m-1024-layer.svg"] {
            assert!(report_dir.join(f).metadata().is_ok_and(|m| m.len() > 1000), "{f}");
        }
    }
}

/// A namespace joined to this one by a veth pair held to `rate` both ways.
struct SlowRank {
    ns: String,
    host_dev: String,
}

impl SlowRank {
    fn new(rate: &str) -> Result<SlowRank, String> {
        let id = std::process::id() % 100_000;
        let (ns, host_dev, ns_dev) = (format!("kvm{id}"), format!("vmh{id}"), format!("vmn{id}"));
        let slow = SlowRank { ns: ns.clone(), host_dev: host_dev.clone() };
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "link", "add", &host_dev, "type", "veth", "peer", "name", &ns_dev])?;
        sh(&["ip", "link", "set", &ns_dev, "netns", &ns])?;
        sh(&["ip", "addr", "add", "10.213.40.1/24", "dev", &host_dev])?;
        sh(&["ip", "link", "set", &host_dev, "up"])?;
        sh(&["ip", "-n", &ns, "addr", "add", "10.213.40.2/24", "dev", &ns_dev])?;
        sh(&["ip", "-n", &ns, "link", "set", &ns_dev, "up"])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        let tbf = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms"];
        sh(&[&["tc", "qdisc", "add", "dev", &host_dev][..], &tbf].concat())?;
        sh(&[&["tc", "-n", &ns, "qdisc", "add", "dev", &ns_dev][..], &tbf].concat())?;
        Ok(slow)
    }
}

impl Drop for SlowRank {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.host_dev]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

#[test]
fn the_rank_behind_a_slow_link_is_the_outlier() {
    let _serial = one_at_a_time();
    let slow = match SlowRank::new("1gbit") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: cannot make a shaped namespace here ({e}); CI runs as root");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("m.json");
    // Rank 0 listens on the host's end of the veth: ranks 0-2 reach it (and
    // each other) inside the host, rank 3 only across the 1 Gbit/s link.
    let rv = format!("10.213.40.1:{}", free_port());
    let args = ["--rendezvous", rv.as_str(), "-p", "256", "-g", "request", "-n", "3", "--timeout", "20s"];
    let ranks: Vec<Proc> = (0..4)
        .map(|r| {
            let json = json_path.to_str().unwrap();
            let args = if r == 0 { [&args[..], &["--json", json]].concat() } else { args.to_vec() };
            rank(r, 4, (r == 3).then_some(slow.ns.as_str()), &args)
        })
        .collect();
    let done: Vec<Finished> = ranks.into_iter().map(|p| p.finish(secs(120))).collect();
    for d in &done {
        d.expect_code(0);
    }
    let doc = json(&json_path);
    let outliers: Vec<(u64, u64)> = doc["grids"][0]["outliers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["from"].as_u64().unwrap(), o["to"].as_u64().unwrap()))
        .collect();
    let mut expect: Vec<(u64, u64)> = (0..3).flat_map(|i| [(i, 3), (3, i)]).collect();
    expect.sort();
    let mut found = outliers.clone();
    found.sort();
    assert_eq!(found, expect, "{}", done[0].stdout);
    // Physics: 32 MiB requests across 1 Gbit/s (0.125 GB/s) cannot beat it.
    for ((i, j), g) in figures(&doc) {
        let g = g.unwrap();
        if i == 3 || j == 3 {
            assert!(g < 0.125 * 1.02 && g > 0.05, "{i}->{j}: {g} GB/s across the shaped link");
        }
    }
    assert!(done[0].stdout.contains("# outlier  3 -> 0:"), "{}", done[0].stdout);
}

#[test]
fn a_rank_killed_mid_matrix_leaves_the_others_figures() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("m.json");
    let rv = format!("127.0.0.1:{}", free_port());
    let args = ["--rendezvous", rv.as_str(), "-p", "1024", "-g", "layer", "-n", "5", "--timeout", "3s"];
    let json_arg = ["--json", json_path.to_str().unwrap()];
    let coordinator = rank(0, 3, None, &[&args[..], &json_arg].concat());
    let others: Vec<Proc> = (1..3).map(|r| rank(r, 3, None, &args)).collect();
    // Once the first step is done, rank 2 dies.
    assert!(coordinator.wait_for("step 1/2: 2 -> 0", secs(60)), "{}", coordinator.stderr());
    others[1].signal(libc::SIGKILL);
    let done = coordinator.finish(secs(60));
    done.expect_code(1).expect_stderr("pairs failed");
    let doc = json(&json_path);
    let pairs = doc["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6);
    for p in pairs {
        let (i, j) = (p["from"].as_u64().unwrap(), p["to"].as_u64().unwrap());
        let measured = p["error"].is_null();
        // Step 1 (0->1, 1->2, 2->0) ran whole; of step 2 only 1->0 could.
        let expect = matches!((i, j), (0, 1) | (1, 2) | (2, 0) | (1, 0));
        assert_eq!(measured, expect, "{i}->{j}: {p}");
    }
    let survivor = others.into_iter().next().unwrap().finish(secs(30));
    survivor.expect_code(0);
}

#[test]
fn the_gate_applies_to_each_pair_and_names_them() {
    let _serial = one_at_a_time();
    let rv = format!("127.0.0.1:{}", free_port());
    let args =
        ["--rendezvous", rv.as_str(), "-p", "64", "-n", "1", "--min-gbps", "100000", "--timeout", "10s"];
    let ranks: Vec<Proc> = (0..2).map(|r| rank(r, 2, None, &args)).collect();
    let done: Vec<Finished> = ranks.into_iter().map(|p| p.finish(secs(60))).collect();
    done[0].expect_code(4).expect_stderr("2 pair(s) below the gate: 0 -> 1");
    done[1].expect_code(0);
}

#[test]
fn a_matrix_needs_two_ranks_and_a_launcher() {
    rank(0, 1, None, &["--rendezvous", "127.0.0.1:9"])
        .finish(secs(10))
        .expect_code(2)
        .expect_stderr("at least 2 ranks");
    let mut cmd = Command::new(KVXFER);
    cmd.args(["matrix", "--rendezvous", "127.0.0.1:9"]);
    for k in ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"] {
        cmd.env_remove(k);
    }
    Proc::spawn(cmd).finish(secs(10)).expect_code(2).expect_stderr("SLURM_PROCID");
}

#[test]
fn hosts_in_service_mode_make_a_matrix_without_a_launcher() {
    let _serial = one_at_a_time();
    let services: Vec<(Proc, String)> = (0..3)
        .map(|_| receiver("127.0.0.1:0", &["--forever", "--matrix", "--timeout", "10s", "-q"]))
        .collect();
    let hosts: Vec<&str> = services.iter().map(|(_, a)| a.as_str()).collect();
    let hosts = hosts.join(",");
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("m.json");
    let args = ["matrix", "--hosts", &hosts, "-p", "128", "-g", "layer", "-n", "2", "--timeout", "10s"];
    let out = run(KVXFER, &[&args[..], &["--json", json_path.to_str().unwrap()]].concat(), secs(120));
    out.expect_code(0);
    let cells = figures(&json(&json_path));
    assert_eq!(cells.len(), 6);
    assert!(cells.iter().all(|(_, g)| g.is_some_and(|g| g > 0.0)), "{cells:?}");
    // The services served each other and are still up; one pair at a time, again.
    for (svc, _) in &services {
        // Each run is a process of its own: its end is logged once the service reaps it.
        let until = std::time::Instant::now() + secs(10);
        while svc.stderr().matches(": done").count() < 2 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(svc.stderr().matches(": done").count(), 2, "{}", svc.stderr());
    }
    let one =
        ["matrix", "--hosts", &hosts, "--concurrent-pairs", "1", "-p", "64", "-n", "1", "--timeout", "10s"];
    let out = run(KVXFER, &one, secs(120));
    out.expect_code(0);
    assert!(out.stderr.contains("step 6/6: 2 -> 1"), "{}", out.stderr);
    assert!(out.stdout.contains("pairs of a step: one at a time"), "{}", out.stdout);
    // One without --matrix says so.
    let (plain, addr) = receiver("127.0.0.1:0", &["--forever", "--timeout", "10s", "-q"]);
    let mixed = format!("{},{addr}", services[0].1);
    let out = run(KVXFER, &["matrix", "--hosts", &mixed, "-p", "64", "-n", "1", "--timeout", "5s"], secs(60));
    out.expect_code(1).expect_stderr("start it with kvxfer-recv --forever --matrix");
    drop(plain);
    for (svc, _) in services {
        svc.signal(libc::SIGTERM);
        svc.finish(secs(10)).expect_code(0);
    }
}
