//! `kvxfer-recv --forever`: the `iperf3 -s` habit. One sender after
//! another, each with its own plan and transport; nothing a client does
//! ends the service (a stranger, a wrong version, a refused plan, a peer
//! that dies mid-run: each is logged with its address). A sender that
//! comes while a run is served is told at once who is served and since
//! when. SIGINT or SIGTERM end it cleanly; so does a GPU left unusable,
//! with the reason, rather than serving on a broken context.
//!
//! Each sender's run goes to a process of its own (kvxfer re-executed with
//! the service's options, the sender's socket and plan handed over), as
//! sshd and PostgreSQL serve each client: a transport library that aborts
//! or leaks on a peer's failure takes that run down, never the service.
//! The service only accepts, greets, answers busy and reaps runs. A fan's
//! senders, or the prefill ranks that feed a P x D decode rank, are
//! gathered by the service and handed over together. (A matrix rank's
//! service runs in its own process: its command line is not the service's.)

use super::{receiver_side, serve_one, Outputs};
use crate::cli::args::RecvArgs;
use crate::error::{Error, Result};
use crate::memory::MemoryKind;
use crate::net;
use crate::run::ReceiverSide;
use crate::session::{self, Greeting};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Who this receiver is serving, for senders that come meanwhile.
#[derive(Default)]
pub struct Busy {
    serving: Mutex<Option<String>>,
    stopped: AtomicBool,
}

impl Busy {
    /// A run has all its senders: later ones are told it is busy.
    pub fn serving(&self, peers: &[SocketAddr]) {
        let who: Vec<String> = peers.iter().map(SocketAddr::to_string).collect();
        let why = format!("{} {} since {}", session::BUSY, who.join(", "), utc(SystemTime::now(), false));
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn idle(&self) {
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether no run is served, waiting up to `BUSY_GRACE` for the one
    /// that is to end: a sender that comes as a run's process is still
    /// exiting is served, not turned away.
    fn idle_within_grace(&self) -> bool {
        let until = std::time::Instant::now() + BUSY_GRACE;
        while self.why().is_some() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.why().is_none()
    }

    /// Who is served and since when, while a run is.
    fn why(&self) -> Option<String> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A sender whose plan was read while a run is served: told so, and
    /// true; false while none is.
    fn refuse(&self, sender: &mut session::ReceiverSession) -> bool {
        let Some(why) = self.why() else { return false };
        eprintln!("kvxfer-recv: {} came during a run: told it {why}", sender.ctrl.peer_addr);
        session::refuse(sender, &why);
        true
    }
}

impl crate::run::Serving for Busy {
    fn serving(&self, peers: &[SocketAddr]) {
        Busy::serving(self, peers)
    }
}

/// How long a busy answer may take: the sender hears within this.
const BUSY_ANSWER: Duration = Duration::from_secs(1);

/// How long a service holds a connection that came during a run before
/// it answers busy: a sender started as the last one ended (a script's
/// next run) is served once the run's process is done, not turned away.
const BUSY_GRACE: Duration = Duration::from_millis(300);

/// Connections a service's busy answerer hands back to be greeted: the
/// run ended within the grace.
type HandBack = std::sync::mpsc::Sender<(TcpStream, SocketAddr)>;

/// Takes the connections that come during a run and answers them busy
/// (a service's after `BUSY_GRACE`, handing back those whose run ended
/// meanwhile). It accepts only while a run is served, under the lock the
/// main loop takes to end it, so it never takes the next run's sender.
fn answer_busy(listener: TcpListener, busy: Arc<Busy>, hand_back: Option<HandBack>) {
    while !busy.stopped.load(Relaxed) {
        {
            let serving = busy.serving.lock().unwrap_or_else(|e| e.into_inner());
            if serving.is_some() {
                // The listener is non-blocking (net::accept_within sets it).
                if let Ok((stream, from)) = listener.accept() {
                    let (busy, hand_back) = (busy.clone(), hand_back.clone());
                    std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        busy_or_back(stream, from, &busy, hand_back)
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection that came during a run: handed back if the run ends
/// within the grace (a service's), else told who is served.
fn busy_or_back(stream: TcpStream, from: SocketAddr, busy: &Busy, hand_back: Option<HandBack>) {
    if let Some(back) = hand_back {
        if busy.idle_within_grace() {
            let _ = back.send((stream, from));
            return;
        }
    }
    let Some(why) = busy.why() else { return };
    eprintln!("kvxfer-recv: {from} came during a run: told it {why}");
    session::tell_busy(stream, &why, BUSY_ANSWER)
}

/// A one-shot receiver's run: senders that come meanwhile hear it is busy
/// (they got "connection reset" when it ended), until this is dropped.
pub struct BusyWhile {
    busy: Arc<Busy>,
    answering: Option<std::thread::JoinHandle<()>>,
}

impl BusyWhile {
    pub fn serving(listener: &TcpListener, peers: &[SocketAddr]) -> Result<BusyWhile> {
        let busy = Arc::new(Busy::default());
        busy.serving(peers);
        let listener = listener.try_clone()?;
        listener.set_nonblocking(true)?;
        let answering = {
            let busy = busy.clone();
            std::thread::spawn(move || answer_busy(listener, busy, None))
        };
        Ok(BusyWhile { busy, answering: Some(answering) })
    }
}

impl Drop for BusyWhile {
    fn drop(&mut self) {
        self.busy.stopped.store(true, Relaxed);
        if let Some(t) = self.answering.take() {
            let _ = t.join();
        }
    }
}

pub fn serve(listener: TcpListener, a: &RecvArgs) -> Result<()> {
    serve_until(listener, a, &AtomicBool::new(false), Service { log_runs: true, isolate: true })
}

/// How a service runs.
#[derive(Clone, Copy)]
pub struct Service {
    /// A line as each run begins and ends (failures are always told).
    pub log_runs: bool,
    /// Each run in a process of its own: kvxfer re-executed with this
    /// process's command line, so only where that is the service's own
    /// (`kvxfer-recv --forever`; a matrix rank's service runs in-process).
    pub isolate: bool,
}

/// The service, until a signal or until `stop` is set (between runs).
pub fn serve_until(listener: TcpListener, a: &RecvArgs, stop: &AtomicBool, how: Service) -> Result<()> {
    let log_runs = how.log_runs;
    if a.output.json.is_some() || a.output.csv.is_some() {
        return Err(Error::usage(
            "--forever writes one report per run: give --json-dir DIR instead of --json/--csv",
        ));
    }
    if let Some(dir) = &a.json_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    if log_runs {
        eprintln!("kvxfer-recv: service mode, one sender after another until SIGINT or SIGTERM");
        eprintln!("kvxfer-recv: listening on {}", listener.local_addr()?);
    }
    let busy = Arc::new(Busy::default());
    // Both threads poll it: one accepts between runs, the other during them.
    listener.set_nonblocking(true)?;
    let (hand_back, handed_back) = std::sync::mpsc::channel();
    let answering = {
        let (listener, busy) = (listener.try_clone()?, busy.clone());
        std::thread::spawn(move || answer_busy(listener, busy, Some(hand_back)))
    };
    let ended = serve_runs(&listener, a, &busy, stop, how, &handed_back);
    busy.stopped.store(true, Relaxed);
    let _ = answering.join();
    ended
}

/// The sender a greeting found, if it found one; the rest is logged (a
/// matrix request runs beside the service's own runs, as under mpirun).
fn sender_of(from: SocketAddr, greeting: Greeting, a: &RecvArgs) -> Option<session::ReceiverSession> {
    match greeting {
        Greeting::Sender(s) => return Some(*s),
        Greeting::Stranger(why) => eprintln!("kvxfer-recv: ignoring a connection from {from}: {why}"),
        Greeting::Refused(e) => eprintln!("kvxfer-recv: {e}"),
        Greeting::Matrix(stream, version) => {
            let (allowed, timeout) = (a.matrix, a.timeout);
            std::thread::spawn(move || {
                super::matrix::serve_hosts_matrix(stream, from, version, allowed, timeout)
            });
        }
    }
    None
}

fn serve_runs(
    listener: &TcpListener,
    a: &RecvArgs,
    busy: &Arc<Busy>,
    stop: &AtomicBool,
    how: Service,
    handed_back: &std::sync::mpsc::Receiver<(TcpStream, SocketAddr)>,
) -> Result<()> {
    let log_runs = how.log_runs;
    let mut runs = 0u64;
    // What every connection is greeted against (each run's side is built
    // anew); a sender greeted while a run is served is told busy.
    let expect = receiver_side(a).expect;
    let lobby = {
        let busy = busy.clone();
        let turn_away = move |from: SocketAddr| {
            if busy.idle_within_grace() {
                return None;
            }
            let why = busy.why()?;
            eprintln!("kvxfer-recv: {from} came during a run: told it {why}");
            Some(why)
        };
        session::Lobby::turning_away(a.timeout, &expect, Arc::new(turn_away))
    };
    loop {
        if stop.load(Relaxed) {
            return Ok(());
        }
        if let Some(sig) = crate::signals::received() {
            eprintln!("kvxfer-recv: {} ends the service after {runs} run(s)", crate::signals::name(sig));
            return Ok(());
        }
        // Those that came as the last run ended, held by the busy answerer.
        while let Ok((stream, from)) = handed_back.try_recv() {
            lobby.greet(stream, from);
        }
        let greeted = match net::accept_within(listener, Duration::from_millis(20)) {
            Ok(Some((stream, from))) => {
                lobby.greet(stream, from);
                lobby.greeted()
            }
            Ok(None) => lobby.greeted(),
            Err(e) => {
                // Out of descriptors, a connection aborted before it was taken: pass.
                eprintln!("kvxfer-recv: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let Some((from, greeting)) = greeted else { continue };
        let Some(first) = sender_of(from, greeting, a) else { continue };
        runs += 1;
        if log_runs {
            eprintln!("kvxfer-recv: run {runs}: sender {from}");
        }
        let json = a.json_dir.as_ref().map(|dir| report_path(dir, runs, from));
        // A fan's senders, or the prefill ranks that feed a P x D decode
        // rank, are gathered here before the run is busy: those greeted
        // beside the first join it rather than hear busy.
        let n = super::recv::fed_by(&first.hello.plan).unwrap_or(a.senders as usize);
        let gathered = match n {
            1 => Ok(vec![first]),
            n => super::fan::gather(listener, a.wait_for_sender, Some(first), n, &lobby),
        };
        let result = gathered.and_then(|sessions| serve_run(sessions, a, busy, &lobby, how, json.as_deref()));
        busy.idle();
        match result {
            Ok(()) if log_runs => eprintln!("kvxfer-recv: run {runs} from {from}: done{}", wrote(&json)),
            Ok(()) => {}
            Err(e) if crate::signals::received().is_some() => {
                eprintln!("kvxfer-recv: run {runs} from {from} stopped: {e}");
            }
            Err(e) => {
                eprintln!("kvxfer-recv: run {runs} from {from} failed (exit {}): {e}", e.kind.exit_code());
                // A run of its own process left the service's GPU context as it was.
                if a.memory.memory != MemoryKind::Host && !how.isolate {
                    usable(a.memory.device).map_err(|why| {
                        Error::run(format!(
                            "the service ends: after run {runs}, GPU {} is unusable: {why}",
                            a.memory.device
                        ))
                    })?;
                }
            }
        }
    }
}

/// One run's gathered senders, served: busy from now (a sender greeted
/// meanwhile hears so rather than waiting out this run, and so do those
/// already greeted), in a process of its own or in this one.
fn serve_run(
    sessions: Vec<session::ReceiverSession>,
    a: &RecvArgs,
    busy: &Arc<Busy>,
    lobby: &session::Lobby,
    how: Service,
    json: Option<&Path>,
) -> Result<()> {
    busy.serving(&sessions.iter().map(|s| s.ctrl.peer_addr).collect::<Vec<_>>());
    while let Some((other, greeting)) = lobby.greeted() {
        if let Some(mut s) = sender_of(other, greeting, a) {
            busy.refuse(&mut s);
        }
    }
    if how.isolate {
        return run_isolated(sessions, a, json);
    }
    let mut side = receiver_side(a);
    side.busy = Some(busy.clone());
    let output = crate::cli::args::OutputArgs { json: json.map(Path::to_path_buf), ..a.output.clone() };
    serve_gathered(side, Outputs::open(&output)?, sessions)
}

/// The fd a run's process finds its first sender's control socket on (a
/// fan's others on the fds after it).
const INHERITED_FD: i32 = 3;

/// Senders one run's process takes, at most (a fan's, or the prefill
/// ranks that feed a P x D decode rank: MAX_FAN or fewer).
const MOST_INHERITED: usize = 256;

/// Plans are a few KiB of JSON each (a trace's schedule more): past this,
/// the service's handover is not one.
const MAX_HANDOVER: u64 = 256 << 20;

/// A run in a process of its own: kvxfer itself, re-executed with the
/// service's options, its senders' control sockets on fds 3, 4, ... and
/// their plans on stdin. Waits for it to end (a signal to the service is
/// passed on to it); its exit status, or the signal that ended it, is the
/// run's end.
fn run_isolated(senders: Vec<session::ReceiverSession>, a: &RecvArgs, json: Option<&Path>) -> Result<()> {
    let (streams, hellos): (Vec<TcpStream>, Vec<session::Hello>) =
        senders.into_iter().map(session::ReceiverSession::into_parts).unzip();
    let plans = serde_json::to_vec(&hellos).expect("a plan serializes");
    // Above any fd the child takes them on, so that no dup2 overwrites
    // another's source; closed on exec, the child keeps only its copies.
    let above = |s: &TcpStream| -> std::io::Result<OwnedFd> {
        // SAFETY: a copy of an open socket's fd, owned by what it returns.
        match unsafe {
            libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, INHERITED_FD + MOST_INHERITED as i32)
        } {
            -1 => Err(std::io::Error::last_os_error()),
            fd => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    };
    let high: Vec<OwnedFd> = streams.iter().map(above).collect::<std::io::Result<_>>()?;
    let sources: Vec<i32> = high.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut args = std::env::args_os();
    let me =
        std::env::current_exe().map_err(|e| Error::run(format!("cannot find this program to run: {e}")))?;
    let mut cmd = Command::new(me);
    // Its argv[0] too, so that kvxfer called as kvxfer-recv is that again.
    cmd.arg0(args.next().unwrap_or_default()).args(args).arg("--serve-inherited");
    if let Some(json) = json {
        cmd.arg("--json").arg(json);
    }
    // SAFETY: between fork and exec only async-signal-safe calls: dup2
    // leaves each copy open across exec (the sources are above the targets).
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in sources.iter().enumerate() {
                if libc::dup2(fd, INHERITED_FD + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child =
        cmd.stdin(Stdio::piped()).spawn().map_err(|e| Error::run(format!("cannot start the run: {e}")))?;
    drop((streams, high));
    let handed = child.stdin.take().expect("stdin is piped").write_all(&plans);
    let status = wait_for_run(&mut child, a.timeout)?;
    handed.map_err(|e| Error::run(format!("handing the senders' plans to their run: {e}")))?;
    match crate::error::ErrorKind::of_child(status) {
        None => Ok(()),
        Some((kind, how)) => {
            let above = if status.code().is_some() { ", its error above" } else { "" };
            Err(Error::new(kind, format!("its process (pid {}) {how}{above}", child.id())))
        }
    }
}

/// Reaps a run's process; a signal to the service is passed on to it, and
/// one that has not ended within `timeout` of that is killed.
fn wait_for_run(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let mut told: Option<std::time::Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        match (crate::signals::received(), told) {
            (Some(sig), None) => {
                // SAFETY: a signal to our own child, whose pid is not yet reaped.
                unsafe { libc::kill(child.id() as i32, sig) };
                told = Some(std::time::Instant::now());
            }
            (_, Some(at)) if at.elapsed() > timeout => {
                let _ = child.kill();
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A run of the service in this process (`--serve-inherited`, started by
/// run_isolated): the senders the service greeted, on fds 3, 4, ..., their
/// plans on stdin.
pub(super) fn serve_inherited(a: &RecvArgs) -> Result<()> {
    let mut plans = Vec::new();
    std::io::stdin().take(MAX_HANDOVER).read_to_end(&mut plans)?;
    let hellos: Vec<session::Hello> = serde_json::from_slice(&plans)
        .ok()
        .filter(|h: &Vec<_>| (1..=MOST_INHERITED).contains(&h.len()))
        .ok_or_else(|| Error::usage("--serve-inherited is the service's own: no plans on stdin"))?;
    let sessions = (hellos.into_iter().enumerate())
        .map(|(i, hello)| {
            // SAFETY: run_isolated put sender i's socket on this fd for this process alone.
            let stream = unsafe { TcpStream::from_raw_fd(INHERITED_FD + i as i32) };
            session::ReceiverSession::resume(stream, hello, a.timeout)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut side = receiver_side(a);
    // The service answers the senders that come meanwhile.
    side.busy = Some(Arc::new(Busy::default()));
    serve_gathered(side, Outputs::open(&a.output)?, sessions)
}

/// A run's senders served in this process: one, or a fan's.
fn serve_gathered(
    mut side: ReceiverSide,
    outputs: Outputs,
    mut sessions: Vec<session::ReceiverSession>,
) -> Result<()> {
    side.screen = side.screen.keeping(outputs.kept());
    match sessions.len() {
        1 => serve_one(side, outputs, sessions.pop().expect("one sender")),
        _ => super::fan::serve_gathered(side, outputs, sessions),
    }
}

fn wrote(json: &Option<PathBuf>) -> String {
    json.as_ref().filter(|p| p.exists()).map(|p| format!("; report in {}", p.display())).unwrap_or_default()
}

/// One file per run, by time, run number and peer: they sort as they ran.
fn report_path(dir: &std::path::Path, run: u64, from: SocketAddr) -> PathBuf {
    let peer = from.to_string().replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', " ");
    let peer = peer.split_whitespace().collect::<Vec<_>>().join("_");
    dir.join(format!("{}-run{run}-{peer}.json", utc(SystemTime::now(), true)))
}

/// Whether the GPU still takes work: a failed transport may have left a
/// sticky CUDA error in the context, which every later run would inherit.
fn usable(device: usize) -> std::result::Result<(), String> {
    let d = crate::gpu::Device::open(device).map_err(|e| e.message)?;
    let mem = crate::gpu::DeviceMem::new(&d, 4096).map_err(|e| e.message)?;
    mem.upload(0, &[0xA5; 64]).map_err(|e| e.message)?;
    let mut back = [0u8; 64];
    mem.download(0, &mut back).map_err(|e| e.message)?;
    match back == [0xA5; 64] {
        true => Ok(()),
        false => Err("a 64-byte round trip through its memory came back changed".into()),
    }
}

/// UTC time as 2026-12-04 08:30:12 UTC, or 20261204T083012Z for file names.
pub fn utc(t: SystemTime, compact: bool) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rest) = ((secs / 86400) as i64, secs % 86400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    match compact {
        true => format!("{year:04}{month:02}{day:02}T{h:02}{m:02}{s:02}Z"),
        false => format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_by_hand() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(utc(at(0), false), "1970-01-01 00:00:00 UTC");
        // 2000-02-29 12:34:56 (a leap day of a century leap year).
        assert_eq!(utc(at(951_827_696), false), "2000-02-29 12:34:56 UTC");
        // 2026-12-04 08:30:12.
        assert_eq!(utc(at(1_796_373_012), true), "20261204T083012Z");
    }

    #[test]
    fn report_names_sort_by_time_and_name_the_peer() {
        let p = report_path(std::path::Path::new("d"), 3, "[::1]:4000".parse().unwrap());
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with("-run3-1_4000.json"), "{name}");
        let p = report_path(std::path::Path::new("d"), 1, "10.0.0.2:51000".parse().unwrap());
        assert!(p.to_str().unwrap().ends_with("-run1-10.0.0.2_51000.json"), "{p:?}");
    }
}
