//! Block tables: a request's blocks placed in each side's KV cache pool,
//! contiguously or at random, moved as merged descriptors (NIXL's way) or
//! one by one, with every byte checked where the receiver's table puts it.

mod common;
use common::*;
use serde_json::Value;

fn plan_json(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("plan.json");
    // Blocks of 16 tokens (vLLM's default before 0.34's 64): the arithmetic below.
    let base =
        ["plan", "-m", "llama-3.1-8b", "--block-size", "16", "-g", "block", "--json", j.to_str().unwrap()];
    run(KVXFER, &[&base[..], args].concat(), secs(30)).expect_code(0);
    json(&j)
}

/// Descriptors left after merging, counted from the offsets themselves.
fn runs(point: &Value) -> usize {
    let offsets =
        |k: &str| -> Vec<u64> { point[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect() };
    let (s, r, len) =
        (offsets("sender_offsets"), offsets("receiver_offsets"), point["message_bytes"].as_u64().unwrap());
    1 + (1..s.len()).filter(|&i| !(s[i] == s[i - 1] + len && r[i] == r[i - 1] + len)).count()
}

#[test]
fn descriptors_are_counted_as_vllm_and_nixl_would_place_and_merge_them() {
    // Llama-3.1-8B, 1024 tokens: 64 blocks per (layer, K/V) tensor, 64 tensors.
    let fresh = plan_json(&["-p", "1024"]);
    let p = &fresh["points"][0];
    assert_eq!(fresh["pool_blocks"], 65, "one block more than the request, by default");
    assert_eq!(p["operations"], 64);
    assert_eq!(p["message_count"], 4096);
    assert_eq!(runs(p), 64, "a run for each tensor: K and V of a layer are a pool apart");
    // A pool of exactly the request: each layer's K and V are one run, and
    // no operation crosses into the next layer (in vLLM each layer is its
    // own tensor, registered apart; and a layer moves once computed).
    assert_eq!(plan_json(&["-p", "1024", "--pool-blocks", "64"])["points"][0]["operations"], 32);
    // One operation per block when nothing merges.
    assert_eq!(plan_json(&["-p", "1024", "--coalesce", "off"])["points"][0]["operations"], 4096);
    // A fragmented pool: blocks anywhere, in any order; the count is the breaks.
    let fragmented = plan_json(&["-p", "1024", "--block-table", "random:5", "--pool-blocks", "4096"]);
    let p = &fragmented["points"][0];
    assert_eq!(p["operations"].as_u64().unwrap() as usize, runs(p));
    assert!(runs(p) > 4000, "random blocks rarely touch on both sides: {}", runs(p));
    // Each side draws its own blocks; each block once.
    let s = p["sender_offsets"].as_array().unwrap();
    assert_ne!(s, p["receiver_offsets"].as_array().unwrap());
    let mut seen: Vec<u64> = s.iter().map(|v| v.as_u64().unwrap()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 4096);
    assert_eq!(p["buffer_bytes"], 32u64 * 2 * 4096 * 32768);
}

#[test]
fn random_tables_move_every_byte_over_tcp_and_ucx() {
    let table = [
        "-g",
        "block",
        "--block-size",
        "16",
        "--block-table",
        "random:7",
        "--pool-blocks",
        "300",
        "-p",
        "100,1024",
        "-n",
        "2",
    ];
    for transport in [
        &["-t", "tcp"][..],
        &["-t", "ucx", "--ucx-op", "put"],
        &["-t", "ucx", "--ucx-op", "get"],
        &["-t", "ucx", "--ucx-op", "send"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("r.json");
        let args = [&["pair", "--json", j.to_str().unwrap()][..], transport, &table].concat();
        let f = run(KVXFER, &args, secs(120));
        f.expect_code(0);
        assert!(f.stdout.contains("# blocks     table random:7, pools of 300 blocks"), "{}", f.stdout);
        let r = json(&j);
        assert_eq!(r["wrong_bytes"], 0, "{transport:?}");
        let verified: u64 = r["verified_bytes"].as_u64().unwrap();
        assert_eq!(
            verified,
            4 * (7 + 64) * 64 * 32768,
            "{transport:?}: every request of both points, warm-ups too"
        );
        for p in r["points"].as_array().unwrap() {
            assert!(p["operations"].as_u64().unwrap() > 400, "{p}");
        }
    }
}

#[test]
fn block_tables_that_cannot_be_are_refused() {
    let f = run(
        KVXFER,
        &["pair", "-g", "block", "--block-size", "16", "-p", "1024", "--pool-blocks", "10"],
        secs(30),
    );
    f.expect_code(2).expect_stderr("--pool-blocks 10 cannot hold the 64 blocks of a 1024-token request");
    let f = run(KVXFER, &["pair", "-g", "block", "--block-table", "scattered"], secs(30));
    f.expect_code(2).expect_stderr("unknown --block-table 'scattered'");
    let f = run(KVXFER, &["pair", "-g", "block", "--coalesce", "maybe"], secs(30));
    f.expect_code(2).expect_stderr("give on or off");
}
