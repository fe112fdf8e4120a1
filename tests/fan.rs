//! Many-to-one and one-to-many on loopback: three real processes, one hub
//! serving two peers at once, every byte checked, failures bounded.

mod common;
use common::*;
use serde_json::Value;

const WORK: [&str; 6] = ["-p", "128,1024", "-g", "request,layer", "-n", "3"];

/// The hub's aggregate against its pairs' own figures.
fn assert_fan(hub: &Value, shape: &str, pairs: usize) {
    assert_sane_counts(hub);
    let fan = &hub["fan"];
    assert_eq!((fan["hub"].as_bool(), fan["seat"]["shape"].as_str()), (Some(true), Some(shape)));
    let reports = fan["pair_reports"].as_array().unwrap();
    assert_eq!(reports.len(), pairs);
    let iterations = hub["plan"]["iterations"].as_u64().unwrap();
    for (i, agg) in hub["points"].as_array().unwrap().iter().enumerate() {
        let own: Vec<&Value> = reports.iter().map(|r| &r["points"][i]).collect();
        let sum = |k: &str| own.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
        assert_eq!(agg["request_bytes"].as_u64().unwrap(), sum("request_bytes"));
        assert_eq!(agg["verified_bytes"].as_u64().unwrap(), sum("verified_bytes"));
        assert_eq!(agg["request_ns"]["count"].as_u64().unwrap(), iterations);
        let f = &agg["fan"];
        assert_eq!(f["pair_request_ns"]["count"].as_u64().unwrap(), pairs as u64 * iterations);
        let pair_gbps: Vec<f64> =
            f["pair_gbps"].as_array().unwrap().iter().map(|g| g.as_f64().unwrap()).collect();
        assert_eq!(pair_gbps, own.iter().map(|p| p["gbps"].as_f64().unwrap()).collect::<Vec<_>>());
        // A round lasts at least as long as each pair's request in it, so
        // together they cannot beat the sum of their own rates.
        let gbps = agg["gbps"].as_f64().unwrap();
        assert!(gbps > 0.0 && gbps <= 1.001 * pair_gbps.iter().sum::<f64>(), "{gbps} vs {pair_gbps:?}");
        // Nor can a round be shorter than the slowest pair's median request.
        let slowest_p50 = own.iter().map(|p| p["request_ns"]["p50"].as_u64().unwrap()).max().unwrap();
        assert!(agg["request_ns"]["max"].as_u64().unwrap() >= slowest_p50, "{agg}");
    }
}

fn assert_sane_counts(r: &Value) {
    assert_eq!(r["outcome"], "ok", "{}", r["outcome"]);
    assert_eq!(r["wrong_bytes"], 0);
    assert_eq!(r["points"].as_array().unwrap().len(), 4);
}

fn seat(r: &Value) -> (bool, &str, u64) {
    let f = &r["fan"];
    (f["hub"].as_bool().unwrap(), f["seat"]["shape"].as_str().unwrap(), f["seat"]["index"].as_u64().unwrap())
}

#[test]
fn two_senders_into_one_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (recv, addr) = receiver("127.0.0.1:0", &["--senders", "2", "--json", &path("hub.json")]);
    let senders: Vec<Proc> = (0..2)
        .map(|i| {
            let json = path(&format!("s{i}.json"));
            Proc::start(
                SEND,
                &[&["--connect", addr.as_str(), "-q", "--json", json.as_str()][..], &WORK].concat(),
            )
        })
        .collect();
    for s in senders {
        s.finish(secs(120)).expect_code(0);
    }
    let hub = recv.finish(secs(30));
    hub.expect_code(0);
    assert!(hub.stdout.contains("# fan        many-to-one (2→1): 2 senders"), "{}", hub.stdout);
    assert_eq!(hub.stdout.matches("#   pairs GB/s ").count(), 4, "{}", hub.stdout);
    assert_eq!(hub.rows().len(), 4);
    assert_fan(&json(&dir.path().join("hub.json")), "many-to-one", 2);
    let mut seats: Vec<_> = (0..2).map(|i| json(&dir.path().join(format!("s{i}.json")))).collect();
    seats.iter().for_each(assert_sane_counts);
    let mut indexes: Vec<u64> = seats.iter_mut().map(|s| seat(s).2).collect();
    indexes.sort();
    assert_eq!(indexes, [0, 1]);
    assert!(seats.iter().all(|s| !seat(s).0 && seat(s).1 == "many-to-one"));
    // `kvxfer report` tells the aggregate from a pair's own figures.
    let out = path("report");
    let f = run(KVXFER, &["report", &path("hub.json"), &path("s0.json"), "--out", &out], secs(60));
    f.expect_code(0);
    assert!(f.stdout.contains("tcp 2→1 · layer") && f.stdout.contains("tcp 2→1 pair "), "{}", f.stdout);
}

#[test]
fn one_sender_feeds_two_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (r0, a0) = receiver("127.0.0.1:0", &["-q", "--json", &path("r0.json")]);
    let (r1, a1) = receiver("127.0.0.1:0", &["-q", "--json", &path("r1.json")]);
    let to = format!("{a0},{a1}");
    let hub = run(
        SEND,
        &[&["--connect", to.as_str(), "--json", path("hub.json").as_str()][..], &WORK].concat(),
        secs(120),
    );
    hub.expect_code(0);
    assert!(hub.stdout.contains("# fan        one-to-many (1→2): 2 receivers"), "{}", hub.stdout);
    r0.finish(secs(30)).expect_code(0);
    r1.finish(secs(30)).expect_code(0);
    assert_fan(&json(&dir.path().join("hub.json")), "one-to-many", 2);
    assert_eq!(seat(&json(&dir.path().join("r1.json"))), (false, "one-to-many", 1));
}

#[test]
fn a_sender_that_dies_stops_the_whole_fan() {
    let (recv, addr) = receiver("127.0.0.1:0", &["--senders", "2", "-q", "--timeout", "5s"]);
    let long = ["-p", "1024", "-n", "100000", "-q", "--timeout", "5s"];
    let keep = Proc::start(SEND, &[&["--connect", addr.as_str()][..], &long].concat());
    let doomed = Proc::start(SEND, &[&["--connect", addr.as_str()][..], &long].concat());
    assert!(recv.wait_for("sender 2 of 2 joined", secs(20)), "{}", recv.stderr());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    doomed.signal(libc::SIGKILL);
    let hub = recv.finish(secs(20));
    hub.expect_code(1).expect_stderr("kvxfer-recv: error: pair ");
    let dead = ["closed the ", "lost the sender", "connection reset"];
    assert!(dead.iter().any(|d| hub.stderr.contains(d)), "{}", hub.stderr);
    keep.finish(secs(20)).expect_code(1).expect_stderr("stopped with the other pairs: pair ");
    doomed.finish(secs(5));
}

#[test]
fn senders_of_one_receiver_must_share_a_plan() {
    let (recv, addr) = receiver("127.0.0.1:0", &["--senders", "2", "-q"]);
    let first = Proc::start(SEND, &["--connect", &addr, "-p", "128", "-q"]);
    assert!(recv.wait_for("sender 1 of 2 joined", secs(20)), "{}", recv.stderr());
    let second = run(SEND, &["--connect", &addr, "-p", "256", "-q"], secs(30));
    second
        .expect_code(1)
        .expect_stderr("plan mismatch: the senders of one receiver must propose the same plan");
    first.finish(secs(20)).expect_code(1).expect_stderr("sender 2 of 2 did not join");
    recv.finish(secs(10)).expect_code(1);
}

#[test]
fn one_receiver_named_twice_is_refused() {
    let f = run(SEND, &["--connect", "127.0.0.1:9,127.0.0.1:9"], secs(10));
    f.expect_code(2).expect_stderr("--connect names 127.0.0.1:9 twice");
    let f = run(RECV, &["--senders", "65"], secs(10));
    f.expect_code(2).expect_stderr("more than the 64 allowed");
}
