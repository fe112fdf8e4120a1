//! Starting the real kvxfer binaries as processes, watching their output and
//! bounding every wait, so a hung binary fails a test instead of hanging it.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const KVXFER: &str = env!("CARGO_BIN_EXE_kvxfer");
pub const SEND: &str = env!("CARGO_BIN_EXE_kvxfer-send");
pub const RECV: &str = env!("CARGO_BIN_EXE_kvxfer-recv");

pub struct Proc {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// Fails the test with both outputs unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn expect_stderr(&self, needle: &str) -> &Self {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        self
    }

    /// The table rows (lines that are neither comments nor blank).
    pub fn rows(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(' ') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }
}

fn collect(mut src: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(&mut src);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    })
}

impl Proc {
    pub fn start(bin: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Proc::spawn(cmd)
    }

    /// Starts a command prepared by the caller (environment, wrapper).
    pub fn spawn(mut cmd: Command) -> Proc {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Proc { child, stdout, stderr, readers, started: Instant::now() }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `needle` shows in stdout or stderr; false after `within`.
    pub fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGKILL, SIGSTOP or SIGCONT.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Waits for the exit; a process still running after `within` is killed
    /// and the test fails: nothing may hang.
    pub fn finish(mut self, within: Duration) -> Finished {
        let until = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "process still running after {within:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        Finished { code: status.code(), stdout: self.stdout(), stderr: self.stderr(), elapsed }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A test that fails midway must not leave a process behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a receiver on an ephemeral port; returns it with "HOST:PORT".
pub fn receiver(listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--listen", listen];
    args.extend_from_slice(extra);
    let p = Proc::start(RECV, &args);
    assert!(p.wait_for("listening on ", Duration::from_secs(10)), "receiver did not start: {}", p.stderr());
    let line = p.stderr().lines().find(|l| l.contains("listening on ")).unwrap().to_string();
    let addr = line.rsplit("listening on ").next().unwrap().trim().to_string();
    (p, addr)
}

/// Runs a command to completion within `within`.
pub fn run(bin: &str, args: &[&str], within: Duration) -> Finished {
    Proc::start(bin, args).finish(within)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The checks every successful report must pass.
pub fn assert_sane(report: &Value, points: usize) {
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["wrong_bytes"], 0);
    let pts = report["points"].as_array().unwrap();
    assert_eq!(pts.len(), points);
    let iterations = report["plan"]["iterations"].as_u64().unwrap();
    let warmup = report["plan"]["warmup"].as_u64().unwrap();
    for p in pts {
        let bytes = p["request_bytes"].as_u64().unwrap();
        assert_eq!(bytes, p["messages"].as_u64().unwrap() * p["message_bytes"].as_u64().unwrap());
        // Every byte of every request, warm-up included, was checked.
        if report["plan"]["verify"] != "off" {
            assert_eq!(p["verified_bytes"].as_u64().unwrap(), bytes * (iterations + warmup), "{p}");
        }
        let l = &p["request_ns"];
        assert_eq!(l["count"].as_u64().unwrap(), iterations);
        let (min, p50, max) =
            (l["min"].as_u64().unwrap(), l["p50"].as_u64().unwrap(), l["max"].as_u64().unwrap());
        // A p99 from 100 requests or more; null below.
        assert_eq!(l["p99"].is_u64(), iterations >= 100, "{l}");
        let p99 = l["p99"].as_u64().unwrap_or(max);
        assert!(0 < min && min <= p50 && p50 <= p99 && p99 <= max, "{l}");
        assert_eq!(p["message_ns"]["count"].as_u64().unwrap(), iterations * p["messages"].as_u64().unwrap());
        // Loopback on any machine: above 1 MB/s, below memory bandwidth.
        let gbps = p["gbps"].as_f64().unwrap();
        assert!(gbps > 0.001 && gbps < 200.0, "implausible {gbps} GB/s");
        let implied = bytes as f64 / l["mean"].as_f64().unwrap();
        assert!((implied - gbps).abs() / gbps < 1e-6);
        assert!(!p["request_histogram"].as_str().unwrap().is_empty());
    }
}

/// Runs a system command (ip, tc); its stderr as the error.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// NIXL's C API for the tests that run `-t nixl`: KVXFER_NIXL_LIB, else
/// the one scripts/fetch-nixl.sh unpacked under .cache (scripts/test.sh
/// runs it first). None is a failure that names the fix, not a skip.
pub fn nixl_lib() -> String {
    if let Ok(p) = std::env::var("KVXFER_NIXL_LIB") {
        return p;
    }
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache");
    std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(".nixl_cu13.mesonpy.libs/libnixl_capi.so"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .expect("no NIXL for the nixl tests: run scripts/fetch-nixl.sh (scripts/test.sh does), or set KVXFER_NIXL_LIB")
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<i32> {
    let parent = |stat: String| -> Option<u32> {
        // pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(parent) == Some(pid))
        .collect()
}
