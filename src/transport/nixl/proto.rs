//! Which UCX transports NIXL's UCX backend moved the data over ("transport
//! truth", the software-emulation fallback of ai-dynamo/nixl issue 909).
//! NIXL does not say; UCX does, when asked (`UCX_PROTO_INFO`): the first
//! time an endpoint selects protocols for an operation, it prints a table
//! naming the context (NIXL names it after the agent), the operation, and
//! for each range of sizes the protocol and the transport/device:
//!
//! ```text
//! | kvxfer-recv-1 intra-node cfg#1                                  |
//! | remote memory read by ucp_get*(multi) from host memory to host  |
//! | 0..inf | zero-copy   | cma/memory                               |
//! ```
//!
//! kvxfer passes `PROTO_INFO=*remote memory*` in the backend's
//! `engine_config` (NIXL's way to set UCX options), which limits the tables
//! to RMA, and takes them out of the process's standard output, where UCX
//! prints them, for as long as the transport lives (`Capture`).

use crate::error::{Error, Result};
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::Mutex;

/// The UCX option kvxfer adds to the backend's engine_config.
pub const PROTO_INFO: &str = "PROTO_INFO=*remote memory*";

/// One row of a protocol table: a range of sizes and how UCX moved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// "remote memory read by ucp_get*(multi) from host memory to host".
    pub operation: String,
    pub range: String,
    /// "zero-copy", "software emulation", "multi-frag copy-in", ...
    pub protocol: String,
    /// "cma/memory", "cuda_ipc/cuda", "rc_mlx5/mlx5_0:1", ...
    pub config: String,
}

impl Row {
    /// The transports named in the config, without their devices.
    fn transports(&self) -> Vec<String> {
        self.config
            .split(|c: char| c.is_whitespace() || c == '+' || c == ',')
            .filter_map(|t| t.split_once('/').map(|(name, _)| name.to_string()))
            .collect()
    }

    fn emulated(&self) -> bool {
        self.protocol.contains("emulation")
    }
}

/// The rows of the tables UCX printed for `agent`'s endpoints to its peers
/// (not to itself), for reads (`read`) or writes; each row once.
pub fn parse(text: &str, agent: &str, read: bool) -> Vec<Row> {
    let cells = |line: &str| -> Option<Vec<String>> {
        let table = &line[line.find('|')?..];
        let inner = table.trim().strip_prefix('|')?.strip_suffix('|')?;
        Some(inner.split('|').map(|c| c.trim().to_string()).collect())
    };
    let wanted = if read { "remote memory read" } else { "remote memory write" };
    let mine = |title: &str| {
        title.strip_prefix(agent).is_some_and(|rest| rest.starts_with(' ') && !rest.contains(" self "))
    };
    // A table's title is two one-cell rows: the endpoint, then the operation.
    let (mut endpoint, mut current): (Option<String>, Option<String>) = (None, None);
    let mut rows: Vec<Row> = Vec::new();
    for line in text.lines() {
        let Some(c) = cells(line) else { continue };
        match c.as_slice() {
            [title] => match endpoint.take() {
                None => (endpoint, current) = (Some(title.clone()), None),
                Some(ep) => current = (mine(&ep) && title.starts_with(wanted)).then(|| title.clone()),
            },
            // "used" tables lead with a count.
            [range, protocol, config] | [_, range, protocol, config] => {
                endpoint = None;
                let Some(operation) = &current else { continue };
                if range == "Range" {
                    continue;
                }
                let row = Row {
                    operation: operation.clone(),
                    range: range.clone(),
                    protocol: protocol.clone(),
                    config: config.clone(),
                };
                if !rows.contains(&row) {
                    rows.push(row);
                }
            }
            _ => endpoint = None,
        }
    }
    rows
}

/// The rows of operations on this side's memory: NIXL's UCX also moves
/// host memory of its own (notifications), and UCX names the memory in the
/// operation ("from host memory to host", "... cuda ..."). All of them
/// where none names it.
pub fn of_memory(rows: Vec<Row>, gpu: bool) -> Vec<Row> {
    let mine: Vec<Row> = rows.iter().filter(|r| r.operation.contains("cuda") == gpu).cloned().collect();
    if mine.is_empty() {
        rows
    } else {
        mine
    }
}

/// One line for the report: each protocol with its transports and range.
pub fn path(rows: &[Row], read: bool) -> String {
    let op = if read { "read" } else { "write" };
    if rows.is_empty() {
        return format!("{op}: NIXL's UCX did not say which protocols it chose (UCX older than 1.16?)");
    }
    let mut parts: Vec<String> = Vec::new();
    for r in rows {
        let part = format!("{} over {} ({})", r.protocol, r.config, r.range);
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    format!("{op}: {}", parts.join("; "))
}

/// Fails unless every required transport carries the data without
/// software emulation. `rc` matches `rc_mlx5` and `rc_verbs`.
pub fn require(rows: &[Row], read: bool, required: &[String]) -> Result<()> {
    let carries = |name: &str| {
        rows.iter()
            .filter(|r| !r.emulated())
            .any(|r| r.transports().iter().any(|t| t == name || t.starts_with(&format!("{name}_"))))
    };
    let missing: Vec<&str> = required.iter().map(String::as_str).filter(|n| !carries(n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::run(format!(
        "--require-transport {}: NIXL's UCX chose otherwise: {}. Check UCX_TLS and UCX_NET_DEVICES (or the backend's \
         engine_config), and that NIXL's UCX was built with that transport",
        missing.join(","),
        path(rows, read)
    )))
}

/// Whether a line of UCX's log is part of a protocol table:
/// "[1796623562.153118] [vm:15471:4]   | Range | ..." or its "+---+" rules.
pub fn is_table_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else { return false };
    let Some((_, rest)) = rest.split_once("] [") else { return false };
    let Some((_, rest)) = rest.split_once(']') else { return false };
    let rest = rest.trim_start();
    rest.starts_with('|') || rest.starts_with('+')
}

/// UCX's protocol tables, taken out of the process's standard output for
/// as long as a NIXL transport lives: fd 1 becomes a pipe, and a thread
/// passes every other line on to the real standard output (the run's
/// table among them), keeping the tables. Counted: the two sides of a
/// `pair` hold it at once; the last to let go puts standard output back.
pub struct Capture {
    live: bool,
}

#[derive(Default)]
struct Caught {
    tables: String,
    /// The last sync marker the thread passed.
    synced: u64,
}

struct Held {
    holders: usize,
    /// The real standard output, while fd 1 is the pipe.
    saved: i32,
    /// Told when the thread has read the pipe to its end.
    ended: Option<std::sync::mpsc::Receiver<()>>,
    next_sync: u64,
}

static HELD: Mutex<Held> = Mutex::new(Held { holders: 0, saved: -1, ended: None, next_sync: 0 });
static CAUGHT: Mutex<Caught> = Mutex::new(Caught { tables: String::new(), synced: 0 });
static SYNCED: std::sync::Condvar = std::sync::Condvar::new();
/// What a run keeps of UCX's tables, at most.
const MAX_TABLES: usize = 16 << 20;
const SYNC: &str = "\u{1}kvxfer-ucx-tables-sync ";

impl Capture {
    pub fn begin() -> Capture {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if held.holders == 0 && !start(&mut held) {
            return Capture { live: false };
        }
        held.holders += 1;
        Capture { live: true }
    }

    /// Every table caught so far (both sides', in a pair), once what UCX
    /// has written has passed the thread.
    pub fn text(&self) -> String {
        if !self.live {
            return String::new();
        }
        let n = {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            held.next_sync += 1;
            held.next_sync
        };
        let marker = format!("{SYNC}{n}\n");
        // SAFETY: flushes C's streams (UCX's), then writes the marker to fd 1, the pipe.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            libc::write(1, marker.as_ptr() as *const libc::c_void, marker.len());
        }
        let caught = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
        let (caught, _) = SYNCED
            .wait_timeout_while(caught, std::time::Duration::from_secs(2), |c| c.synced < n)
            .unwrap_or_else(|p| p.into_inner());
        caught.tables.clone()
    }
}

/// Puts a pipe in fd 1's place and starts the thread that reads it.
fn start(held: &mut Held) -> bool {
    std::io::stdout().flush().ok();
    let mut fds = [0i32; 2];
    // SAFETY: a new pipe; fd 1 is saved and replaced by its write end.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return false;
        }
        let saved = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if saved < 0 || libc::dup2(fds[1], 1) < 0 {
            libc::close(fds[0]);
            libc::close(fds[1]);
            if saved >= 0 {
                libc::close(saved);
            }
            return false;
        }
        libc::close(fds[1]);
        held.saved = saved;
    }
    // SAFETY: the read end, owned by the thread from here on.
    let pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let out = held.saved;
    let (tell, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        pass_on(pipe, out);
        tell.send(()).ok();
    });
    held.ended = Some(ended);
    true
}

/// Reads the pipe to its end: tables kept, markers noted, the rest
/// written to the real standard output.
fn pass_on(pipe: std::fs::File, out: i32) {
    // SAFETY: the saved fd stays open until this thread has been joined.
    let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(out) });
    let mut lines = std::io::BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match std::io::BufRead::read_until(&mut lines, b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(n) = text.strip_prefix(SYNC) {
            let mut caught = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
            caught.synced = caught.synced.max(n.trim().parse().unwrap_or(0));
            SYNCED.notify_all();
        } else if is_table_line(&text) {
            let mut caught = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
            if caught.tables.len() + text.len() <= MAX_TABLES {
                caught.tables.push_str(&text);
            }
        } else {
            // A reader gone (`| head`) ends nothing here: the run notices on its own writes.
            out.write_all(&line).ok();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        held.holders -= 1;
        if held.holders > 0 {
            return;
        }
        std::io::stdout().flush().ok();
        // SAFETY: flushes C's streams, then puts the real fd 1 back, which
        // closes the pipe's last write end: the thread reads to the end.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            libc::dup2(held.saved, 1);
        }
        // A child that inherited the pipe would keep it open: wait a while, not forever.
        let ended =
            held.ended.take().is_some_and(|e| e.recv_timeout(std::time::Duration::from_secs(2)).is_ok());
        if ended {
            // SAFETY: the thread that wrote to it has ended.
            unsafe { libc::close(held.saved) };
        }
        held.saved = -1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As NIXL 1.5.1's UCX 1.23 printed it for two agents on one host.
    const TABLES: &str = "\
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.522889] [vm:10785:0]   | A self cfg#0                                             |
[1796622886.522889] [vm:10785:0]   | remote memory write by ucp_put* from host memory to host |
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.522889] [vm:10785:0]   | Range  | Description |              Config               |
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.522889] [vm:10785:0]   | 0..inf | zero-copy   | self/memory                       |
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.522889] [vm:10785:0]   | A intra-node cfg#1                                       |
[1796622886.522889] [vm:10785:0]   | remote memory write by ucp_put* from host memory to host |
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.522889] [vm:10785:0]   | Range  | Description |              Config               |
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.522889] [vm:10785:0]   | 0..inf | zero-copy   | cma/memory                        |
[1796622886.522889] [vm:10785:0]   +--------+-------------+-----------------------------------+
[1796622886.528288] [vm:10785:0]   +------------+--------------------+------------------------+
[1796622886.528288] [vm:10785:0]   | AB intra-node cfg#1                                      |
[1796622886.528288] [vm:10785:0]   | remote memory read by ucp_get* from host memory to host  |
[1796622886.528288] [vm:10785:0]   +------------+--------------------+------------------------+
[1796622886.528288] [vm:10785:0]   | Range      | Description        | Config                 |
[1796622886.528288] [vm:10785:0]   +------------+--------------------+------------------------+
[1796622886.528288] [vm:10785:0]   |    0..8184 | software emulation | tcp/lo                 |
[1796622886.528288] [vm:10785:0]   |  8185..inf | software emulation | tcp/lo                 |
[1796622886.528288] [vm:10785:0]   +------------+--------------------+------------------------+
[1796622886.532474] [vm:10785:0]   +--------+-------------+------------------------------------------+
[1796622886.532474] [vm:10785:0]   | A intra-node cfg#1                                              |
[1796622886.532474] [vm:10785:0]   | remote memory write by ucp_put*(multi) from host memory to host |
[1796622886.532474] [vm:10785:0]   +--------+-------------+------------------------------------------+
[1796622886.532474] [vm:10785:0]   | Range  | Description |                  Config                  |
[1796622886.532474] [vm:10785:0]   +--------+-------------+------------------------------------------+
[1796622886.532474] [vm:10785:0]   | 0..inf | zero-copy   | cma/memory                               |
[1796622886.532474] [vm:10785:0]   +--------+-------------+------------------------------------------+
";

    #[test]
    fn an_agents_own_tables_are_read_not_its_self_endpoint_nor_another_agents() {
        let w = parse(TABLES, "A", false);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w
            .iter()
            .all(|r| r.config == "cma/memory" && r.protocol == "zero-copy" && r.range == "0..inf"));
        assert!(w[1].operation.contains("(multi)"));
        assert_eq!(path(&w, false), "write: zero-copy over cma/memory (0..inf)");
        assert!(parse(TABLES, "A", true).is_empty(), "A read nothing");
        let r = parse(TABLES, "AB", true);
        assert_eq!(r.len(), 2);
        assert_eq!(
            path(&r, true),
            "read: software emulation over tcp/lo (0..8184); software emulation over tcp/lo (8185..inf)"
        );
    }

    #[test]
    fn a_required_transport_must_carry_the_data_without_emulation() {
        let w = parse(TABLES, "A", false);
        assert!(require(&w, false, &["cma".into()]).is_ok());
        let e = require(&w, false, &["cuda_ipc".into()]).unwrap_err().to_string();
        assert!(e.contains("--require-transport cuda_ipc") && e.contains("zero-copy over cma/memory"), "{e}");
        // nixl issue 909: the transport is there, but UCX emulates the reads over it.
        let r = parse(TABLES, "AB", true);
        let e = require(&r, true, &["tcp".into()]).unwrap_err().to_string();
        assert!(e.contains("software emulation over tcp/lo"), "{e}");
        let rc = Row {
            operation: String::new(),
            range: "0..inf".into(),
            protocol: "zero-copy".into(),
            config: "rc_mlx5/mlx5_0:1".into(),
        };
        assert!(require(&[rc], true, &["rc".into()]).is_ok());
        assert!(path(&[], true).contains("did not say"));
    }

    #[test]
    fn the_rows_of_the_sides_memory_are_kept() {
        let row = |op: &str, config: &str| Row {
            operation: op.into(),
            range: "0..inf".into(),
            protocol: "zero-copy".into(),
            config: config.into(),
        };
        let host = row("remote memory write by ucp_put* from host memory to host", "cma/memory");
        let gpu = row("remote memory write by ucp_put* from cuda/GPU0 memory to cuda", "cuda_ipc/cuda");
        let both = vec![host.clone(), gpu.clone()];
        assert_eq!(of_memory(both.clone(), true), [gpu]);
        assert_eq!(of_memory(both, false), std::slice::from_ref(&host));
        assert_eq!(of_memory(vec![host.clone()], true), [host], "none of GPU memory: all kept");
    }

    #[test]
    fn only_ucxs_table_lines_are_taken_out_of_standard_output() {
        assert!(is_table_line("[1796623562.153118] [vm:15471:4]   | Range  | Description |  Config |"));
        assert!(is_table_line("[1796623562.153118] [vm:15471:4]   +--------+-------------+---+"));
        assert!(!is_table_line(
            "[1796623562.153118] [vm:15471:4]  ucp_context.c:1234 UCX  WARN  no such device"
        ));
        assert!(!is_table_line("    block    1024     5    128 MiB   31.85 ms |"));
        assert!(!is_table_line("# path       receiver: | odd"));
    }
}
