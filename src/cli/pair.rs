//! `kvxfer pair`: both sides on this host over loopback.

use super::*;
use crate::error::ErrorKind;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) fn pair(a: &PairArgs) -> Result<()> {
    let outputs = Outputs::open(&a.run.output)?;
    let screen = screen_for(&a.run.output).keeping(outputs.kept());
    // A check that fails before anything runs leaves no report files behind.
    let (report, result) = pair_run(a, &screen).unwrap_or_else(|e| (None, Err(e)));
    outputs.conclude(report, result, &screen)
}

/// One pair's run: its checks (an error before anything runs), then the
/// run's report and how it ended. `kvxfer compare` runs one per round and
/// candidate.
pub(super) fn pair_run(a: &PairArgs, screen: &Screen) -> Result<(Option<RunReport>, Result<()>)> {
    if let Some(t) = a.run.model.topology() {
        return Err(Error::usage(format!(
            "{t} is {} sender and {} receiver processes, not a pair: start them with kvxfer launch (mpirun or srun \
             with {} ranks) or by hand (kvxfer send --prefill-rank, kvxfer recv --decode-rank; see docs/tp.md)",
            t.prefill_tp,
            t.decode_tp,
            t.prefill_tp + t.decode_tp
        )));
    }
    let plan = a.run.plan()?;
    a.run.check_gate(&plan)?;
    let spec = a.run.transport_spec();
    let send_memory = a.run.memory.spec();
    let recv_kind = a.recv_memory.unwrap_or(send_memory.kind);
    spec.validate()?;
    for kind in [send_memory.kind, recv_kind] {
        spec.check_memory(kind).map_err(Error::usage)?;
    }
    transport::check_library(&spec, &plan, &a.run.local())?;
    if [send_memory.kind, recv_kind].iter().any(|k| *k != MemoryKind::Host) {
        gpu::init()?;
    }
    let recv_memory = MemorySpec {
        kind: recv_kind,
        device: match a.recv_device {
            Some(d) => d,
            // The next GPU, so that the two sides sit on two devices.
            None if recv_kind != MemoryKind::Host => (send_memory.device + 1) % gpu::device_count()?.max(1),
            None => send_memory.device,
        },
    };
    if spec.kind == TransportKind::Nccl && send_memory.device == recv_memory.device {
        return Err(Error::usage(format!(
            "both sides are on GPU {}: NCCL needs one GPU per rank (--device, --recv-device)",
            send_memory.device
        )));
    }
    let bytes = plan.host_bytes(false, send_memory.kind.on_host())
        + plan.host_bytes(true, recv_memory.kind.on_host());
    memory::check_host_budget(
        bytes,
        "the host buffers of this pair (one per lane and side, and a spill pool)",
    )?;
    let receiver = ChildReceiver::start(a, recv_memory)?;
    let (report, result) = sender_side(
        &receiver.addr.to_string(),
        None,
        &sender_options(&a.run),
        plan,
        send_memory,
        screen,
        None,
    );
    // A sender that failed has the receiver's reason already, when it had one;
    // a receiver still waiting for it is of no more use.
    let grace = if result.is_ok() { a.run.timeout } else { Duration::from_secs(1) };
    let (received, signalled) = receiver.end(grace);
    // The receiver exits 3 on wrong bytes it counted; the report has them,
    // and the run's end says so from there.
    let counted = report.as_ref().is_some_and(|r| r.points.iter().any(|p| p.wrong_bytes > 0));
    let received =
        received.or_else(|e| if e.kind == ErrorKind::Integrity && counted { Ok(()) } else { Err(e) });
    let result = match (result, received) {
        // A receiver a signal ended (a library's abort, the OOM killer) is
        // the cause of what the sender saw: lost peer, timeout.
        (Err(sent), Err(why)) if signalled => {
            Err(Error::new(sent.kind, format!("{}; {}", sent.message, why.message)))
        }
        (result, received) => result.and(received),
    };
    Ok((report, result))
}

/// The receiver of a pair: `kvxfer recv` in a process of its own, as a
/// deployment runs it. In one process UCX's cuda_ipc cannot reach the other
/// side's GPU memory (on one H100: 0.52 GB/s emulated over tcp/lo from a
/// thread, 1,120 GB/s over cuda_ipc between two processes).
struct ChildReceiver {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// What it said on stderr besides its address, read to its end.
    said: std::thread::JoinHandle<Vec<String>>,
}

impl ChildReceiver {
    fn start(a: &PairArgs, memory: MemorySpec) -> Result<ChildReceiver> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::run(format!("cannot find this program to start the pair's receiver: {e}")))?;
        let timeout = humantime::format_duration(a.run.timeout).to_string();
        let mut cmd = Command::new(&exe);
        cmd.args(["recv", "--quiet", "--listen", &a.listen, "--memory", &memory.kind.to_string()])
            .args(["--device", &memory.device.to_string()])
            .args(["--timeout", &timeout, "--wait-for-sender", &timeout, "--handshake-timeout", &timeout]);
        // -v and -vv log the receiver's steps too.
        match tracing::level_filters::LevelFilter::current() {
            tracing::level_filters::LevelFilter::TRACE => cmd.arg("-vv"),
            tracing::level_filters::LevelFilter::DEBUG => cmd.arg("-v"),
            _ => &mut cmd,
        };
        let local = a.run.local();
        for (flag, lib) in [
            ("--nccl-lib", &local.nccl_lib),
            ("--ucx-lib", &local.ucx_lib),
            ("--ofi-lib", &local.ofi_lib),
            ("--nixl-lib", &local.nixl_lib),
        ] {
            if let Some(lib) = lib {
                cmd.args([flag, lib]);
            }
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| {
                Error::run(format!("cannot start the pair's receiver ({}): {e}", exe.display()))
            })?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tell, listening) = std::sync::mpsc::channel();
        let said = std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                match line.strip_prefix("kvxfer-recv: listening on ") {
                    Some(addr) => {
                        let _ = tell.send(addr.to_string());
                    }
                    // The sender's error carries the receiver's own.
                    None if line.starts_with("kvxfer: error: ") => said.push(line),
                    None => {
                        eprintln!("{line}");
                        said.push(line);
                    }
                }
            }
            said
        });
        let mut receiver = ChildReceiver { child, pid, addr: SocketAddr::from(([127, 0, 0, 1], 0)), said };
        let bound = match listening.recv_timeout(a.run.timeout) {
            Ok(addr) => addr.parse::<SocketAddr>().ok(),
            Err(_) => None,
        };
        match bound {
            Some(bound) => {
                receiver.addr = SocketAddr::new(loopback_for(bound.ip()), bound.port());
                Ok(receiver)
            }
            None => Err(receiver.end(Duration::from_secs(1)).0.err().unwrap_or_else(|| {
                Error::run(format!("the pair's receiver (pid {pid}) did not say where it listens"))
            })),
        }
    }

    /// Waits for it to end, at most `grace`, then stops it: its exit as
    /// this pair's receiving result, and whether a signal ended it.
    fn end(mut self, grace: Duration) -> (Result<()>, bool) {
        let deadline = Instant::now() + grace;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let said = self.said.join().unwrap_or_default();
        let last = said.last().map(|l| l.trim_start_matches("kvxfer: error: ").to_string());
        let pid = self.pid;
        let (kind, how) = match status.map(|s| (s, ErrorKind::of_child(s))) {
            Some((_, None)) => return (Ok(()), false),
            None => (
                ErrorKind::Run,
                format!("did not end within {}, and was stopped", humantime::format_duration(grace)),
            ),
            // Its own error, as it would have said it.
            Some((s, Some((kind, _)))) if s.code().is_some() && last.is_some() => {
                return (Err(Error::new(kind, last.unwrap_or_default())), false)
            }
            Some((_, Some(ended))) => ended,
        };
        let signalled = status.is_some_and(|s| s.signal().is_some());
        let why = match last {
            Some(l) if signalled => format!(" (the last it wrote: {l})"),
            Some(l) => format!(": {l}"),
            None => String::new(),
        };
        (Err(Error::new(kind, format!("the pair's receiver (pid {pid}) {how}{why}"))), signalled)
    }
}

/// Where a receiver listening on `ip` is reached from this host.
fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}
