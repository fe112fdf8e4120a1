//! Every command block of the README and of docs/ runs as written (issue 38,
//! item 10), with prompt lengths scaled down 32x so that CI's 2-core machine
//! moves megabytes where the docs move gigabytes.
//!
//! - ```` ```sh ````: the block runs in bash, in a scratch folder that sees
//!   the repository's results/, scripts/ and tests/, with the built kvxfer,
//!   kvxfer-send and kvxfer-recv first on the PATH; it must exit 0 (or 4,
//!   a gate's FAIL, where the block holds a gate: a verdict on loopback is
//!   the machine's, not the docs'), and so must every job it left behind.
//! - ```` ```sh check ````: a block that needs GPUs or other hosts. It runs
//!   with KVXFER_CHECK_ARGS=1, under which each kvxfer command checks its
//!   options (and a sender its plan and gate) and runs nothing; mpirun and
//!   srun hand over to the kvxfer command they start; a script is checked
//!   to exist.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, PartialEq)]
enum Mode {
    Run,
    Check,
}

struct Block {
    place: String,
    mode: Mode,
    text: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README and every page of docs/, in order.
fn pages() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    [vec![repo().join("README.md")], docs].concat()
}

/// The shell blocks of a page; any other fence a shell block could hide
/// behind (bash, console, shell) is refused, so none escapes the test.
fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(page).unwrap();
    let name = page.strip_prefix(repo()).unwrap().display().to_string();
    let (mut out, mut open): (Vec<Block>, Option<(usize, String, String)>) = (Vec::new(), None);
    for (i, line) in text.lines().enumerate() {
        let Some(info) = line.strip_prefix("```") else {
            if let Some((_, _, body)) = &mut open {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        };
        match open.take() {
            None => open = Some((i + 1, info.trim().to_string(), String::new())),
            Some((at, info, body)) => {
                let mode = match info.as_str() {
                    "sh" => Mode::Run,
                    "sh check" => Mode::Check,
                    "" | "text" | "json" | "toml" | "csv" => continue,
                    other => panic!("{name}:{at}: a ```{other} block: mark commands sh or sh check"),
                };
                out.push(Block { place: format!("{name}:{at}"), mode, text: body });
            }
        }
    }
    assert!(open.is_none(), "{name}: a block is not closed");
    out
}

/// Token counts of the flags that take prompt lengths, scaled down 32x
/// (at least 1): 1k -> 32, 8k -> 256, 32k -> 1024, so that lengths stay
/// distinct and in order. Under arrivals, where a count of requests is
/// wall time (200 at 2/s take 100 s), counts are at most 20.
fn scaled(text: &str, arrivals: bool) -> String {
    // Flags whose every value is a length, and flags whose values are LENGTH:VALUE.
    const LENGTHS: [&str; 2] = ["-p", "--prompt-lengths"];
    const KEYED: [&str; 6] = [
        "--prompt-mix",
        "--prefill-ms",
        "--min-gbps",
        "--min-percent-of-peak",
        "--max-p99",
        "--max-added-ttft",
    ];
    let tokens = |t: &str| -> Option<u64> {
        let (n, unit) = match t.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1024),
            None => (t, 1),
        };
        Some(n.parse::<u64>().ok()? * unit)
    };
    let scale = |t: &str| tokens(t).map_or(t.to_string(), |n| (n / 32).max(1).to_string());
    let mut out = Vec::new();
    let words: Vec<&str> = text.split(' ').collect();
    for (k, word) in words.iter().enumerate() {
        let flag = if k > 0 { words[k - 1] } else { "" };
        let value = |keyed: bool| -> String {
            let each = word.split(',').map(|v| match v.split_once(':') {
                Some((key, rest)) if keyed => format!("{}:{rest}", scale(key)),
                _ if keyed => v.to_string(),
                _ => scale(v),
            });
            each.collect::<Vec<_>>().join(",")
        };
        out.push(match flag {
            "-n" | "--requests" if arrivals => {
                word.parse::<u64>().map_or(word.to_string(), |n| n.min(20).to_string())
            }
            f if LENGTHS.contains(&f) => value(false),
            f if KEYED.contains(&f) => value(true),
            _ => word.to_string(),
        });
    }
    out.join(" ")
}

/// The block as the script that runs it.
fn script(block: &Block) -> String {
    let mut s = String::from("set -euo pipefail\n");
    // A launcher starts the kvxfer command it names, here, once.
    s.push_str("mpirun() { while [ $# -gt 0 ] && [[ $1 != kvxfer* ]]; do shift; done; \"$@\"; }\nsrun() { mpirun \"$@\"; }\n");
    if block.mode == Mode::Check {
        s.push_str("export KVXFER_CHECK_ARGS=1\n");
    }
    for line in block.text.lines() {
        let script = line.split_whitespace().find(|w| w.starts_with("scripts/"));
        let line = match line.strip_prefix("cargo run --release -- ") {
            // The README's first command, through the binary cargo built.
            Some(rest) => format!("kvxfer {rest}"),
            None if script.is_some() && block.mode == Mode::Check => format!("test -x {}", script.unwrap()),
            None => line.to_string(),
        };
        let arrivals = block.text.contains("--arrivals");
        s.push_str(&if block.mode == Mode::Run { scaled(&line, arrivals) } else { line });
        s.push('\n');
    }
    s.push_str("for job in $(jobs -p); do wait \"$job\"; done\n");
    s
}

fn run_block(block: &Block) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    for shared in ["results", "scripts", "tests"] {
        std::os::unix::fs::symlink(repo().join(shared), dir.path().join(shared)).unwrap();
    }
    let path = dir.path().join("block.sh");
    std::fs::write(&path, script(block)).unwrap();
    let bin = Path::new(KVXFER).parent().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(&path).current_dir(dir.path());
    cmd.env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
    Proc::spawn(cmd).finish(secs(300))
}

#[test]
fn scaling_keeps_lengths_distinct_and_leaves_the_rest() {
    assert_eq!(scaled("kvxfer pair -p 16,1k,8k -n 100", false), "kvxfer pair -p 1,32,256 -n 100");
    assert_eq!(
        scaled("kvxfer pair --arrivals poisson:2 -n 200 -p 8k", true),
        "kvxfer pair --arrivals poisson:2 -n 20 -p 256"
    );
    assert_eq!(
        scaled("x --prompt-mix 1k:60,32k:10 --max-p99 8k:2s,20ms --min-gbps 1 --turn-tokens 100:20", false),
        "x --prompt-mix 32:60,1024:10 --max-p99 256:2s,20ms --min-gbps 1 --turn-tokens 100:20"
    );
}

#[test]
fn every_command_block_of_the_docs_runs() {
    let all: Vec<Block> = pages().iter().flat_map(|p| blocks(p)).collect();
    let runs = all.iter().filter(|b| b.mode == Mode::Run).count();
    // The README's three jobs and the docs' own runs are here to be run.
    assert!(runs >= 11 && all.len() >= 20, "{runs} blocks to run of {}", all.len());
    let mut failed = Vec::new();
    for block in &all {
        let f = run_block(block);
        eprintln!(
            "{} ({:?}): exit {:?} in {:.1} s",
            block.place,
            block.mode,
            f.code,
            f.elapsed.as_secs_f64()
        );
        let gated = ["--min-gbps", "--min-percent-of-peak", "--max-p99", "--max-added-ttft"]
            .iter()
            .any(|g| block.text.contains(g));
        let verdict = gated && f.code == Some(4) && f.stdout.contains("# gate       FAIL");
        if f.code != Some(0) && !verdict {
            failed.push(format!(
                "{} ({:?}) exit {:?}:\n{}\nstdout:\n{}\nstderr:\n{}",
                block.place,
                block.mode,
                f.code,
                script(block),
                f.stdout,
                f.stderr
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
