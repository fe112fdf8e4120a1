//! Transport `nccl`: a two-rank NCCL communicator (sender rank 0, receiver
//! rank 1) moving GPU memory with ncclSend/ncclRecv, one call per message as
//! vLLM's P2pNcclConnector does, or K messages per ncclGroupStart/End with
//! `--nccl-group K`.
//!
//! Nothing waits forever: the communicator's start and first connections run
//! on a helper thread waited for against the deadline; every request is
//! polled against the deadline together with NCCL's async error and the
//! peer's heartbeat, and a failure aborts the communicator. The receiver times each
//! request with CUDA events on its stream. The path NCCL picked (P2P/CUMEM,
//! SHM, NET/Socket, ...) is read from NCCL's own INIT log.

pub mod lib;

use super::{
    hex, unhex, AtOnce, Completions, PeerLink, Ready, RecvSide, RoundTiming, SendSide, Setup, SetupWatch,
    TransportInfo, TransportSpec,
};
use crate::error::{Error, Result};
use crate::gpu::{Device, Event, Stream};
use crate::memory::Buffer;
use crate::plan::{self, RequestLayout};
use lib::{Comm, Nccl, UniqueId, IN_PROGRESS};
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SENDER_RANK: i32 = 0;
const RECEIVER_RANK: i32 = 1;
/// A request's messages are timed in at most this many spans of CUDA events.
const MAX_SPANS: usize = 1024;
/// How often a waiting side looks at the control connection.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// The setup's first transfer, which opens NCCL's connections to the peer.
const WARM_UP_BYTES: usize = 64 << 20;

/// Raw handles the helper thread of `Side::start` works with.
struct Helper {
    stream: *mut c_void,
    buffer: u64,
}

// SAFETY: the stream and buffer outlive the helper's use of them (the main
// thread waits for its answer or fails the run and exits the process).
unsafe impl Send for Helper {}

/// A communicator handed back from the helper thread.
struct SendComm(Comm);

// SAFETY: NCCL communicators may move between threads.
unsafe impl Send for SendComm {}

/// One side of the communicator, with its stream and timing events.
struct Side {
    nccl: &'static Nccl,
    comm: Comm,
    device: Arc<Device>,
    stream: Stream,
    rank: i32,
    group: usize,
    log: Option<PathBuf>,
    info: TransportInfo,
}

// SAFETY: the communicator is only used from the side's thread, one call at a time.
unsafe impl Send for Side {}

pub struct NcclSender(Side);
pub struct NcclReceiver {
    side: Side,
    start: Event,
    spans: Vec<Event>,
}

impl NcclSender {
    pub fn connect(spec: &TransportSpec, mut setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        prepare_environment();
        let nccl = Nccl::open(lib)?;
        let id = nccl.unique_id()?;
        tracing::debug!("NCCL {} loaded from {}; sending its unique id", nccl.version, nccl.path);
        setup.send(serde_json::json!({
            "unique_id": hex(&id.internal),
            "nccl_version": nccl.version,
        }))?;
        let theirs = setup.recv("waiting for the receiver's NCCL version")?;
        check_versions(&nccl.version, theirs["nccl_version"].as_str().unwrap_or("?"))?;
        Ok(NcclSender(Side::start(nccl, id, SENDER_RANK, spec, buf, &mut setup)?))
    }
}

impl NcclReceiver {
    pub fn accept(spec: &TransportSpec, mut setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        prepare_environment();
        let nccl = Nccl::open(lib)?;
        let offer = setup.recv("waiting for the sender's NCCL unique id")?;
        setup.send(serde_json::json!({ "nccl_version": nccl.version }))?;
        check_versions(offer["nccl_version"].as_str().unwrap_or("?"), &nccl.version)?;
        let bytes =
            offer["unique_id"].as_str().and_then(unhex).filter(|b| b.len() == 128).ok_or_else(|| {
                Error::run(format!("protocol error: bad NCCL setup from the sender: {offer}"))
            })?;
        let mut id = UniqueId { internal: [0; 128] };
        id.internal.copy_from_slice(&bytes);
        tracing::debug!("NCCL unique id received; joining the communicator");
        let side = Side::start(nccl, id, RECEIVER_RANK, spec, buf, &mut setup)?;
        let start = Event::new(&side.device)?;
        let spans = (0..MAX_SPANS).map(|_| Event::new(&side.device)).collect::<Result<_>>()?;
        Ok(NcclReceiver { side, start, spans })
    }
}

/// Different NCCL versions on the two ranks can hang in the bootstrap: refuse.
fn check_versions(sender: &str, receiver: &str) -> Result<()> {
    let minor = |v: &str| v.rsplit_once('.').map(|(mm, _)| mm.to_string()).unwrap_or_default();
    if minor(sender) != minor(receiver) {
        return Err(Error::run(format!(
            "NCCL version mismatch: the sender has {sender}, the receiver {receiver}; use the same NCCL on both \
             (--nccl-lib)"
        )));
    }
    Ok(())
}

impl Side {
    /// Joins the communicator and opens the connections to the peer, the only
    /// two steps where a blocking communicator can hold the calling thread:
    /// they run on a helper thread while this one waits against the deadline
    /// and watches the control connection. After them, every op only queues
    /// work on the stream, whose waits are bounded too.
    fn start(
        nccl: &'static Nccl,
        id: UniqueId,
        rank: i32,
        spec: &TransportSpec,
        buf: &Buffer,
        setup: &mut Setup,
    ) -> Result<Side> {
        let began = Instant::now();
        let timeout = setup.ctrl.timeout();
        let mem = buf.gpu_mem().ok_or_else(|| {
            Error::usage(format!(
                "transport nccl moves GPU memory; this side has {}: use --memory gpu",
                buf.kind()
            ))
        })?;
        let device = mem.device.clone();
        device.bind()?;
        let stream = Stream::new(&device)?;
        let warm_up = WARM_UP_BYTES.min(mem.len);
        let (done_tx, done) = std::sync::mpsc::channel();
        let helper = Helper { stream: stream.raw as *mut c_void, buffer: mem.ptr };
        let helper_device = device.clone();
        std::thread::spawn(move || {
            let helper = helper; // moved whole: it carries raw handles
            let joined = (|| -> Result<Comm> {
                helper_device.bind()?;
                // Blocking: a non-blocking communicator costs each isolated op
                // about 130 us more (NCCL 2.28, results/h200-x2).
                let comm = nccl.init_rank(2, id, rank, true)?;
                // SAFETY: the buffer holds warm_up bytes and outlives the stream's work.
                unsafe { transfer(nccl, rank, helper.buffer, warm_up, comm, helper.stream)? };
                Ok(comm)
            })();
            let _ = done_tx.send(joined.map(SendComm));
        });
        let deadline = Instant::now() + timeout;
        let comm = loop {
            match done.recv_timeout(WATCH_EVERY) {
                Ok(joined) => break joined?.0,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    setup.ctrl.watch("joining the NCCL communicator")?
                }
                Err(_) => {
                    return Err(Error::run(format!(
                        "NCCL: no communicator within {} (is the peer running the same NCCL?); \
                         the thread that waits for it is left behind",
                        humantime::format_duration(timeout)
                    )))
                }
            }
        };
        let mut side = Side {
            log: debug_log(),
            nccl,
            comm,
            device,
            stream,
            rank,
            group: spec.nccl_group.max(1) as usize,
            info: TransportInfo::default(),
        };
        let connected = Event::new(&side.device)?;
        connected.record(&side.stream)?;
        tracing::debug!("NCCL communicator joined; opening its connections to the peer");
        side.wait(&connected, deadline, &mut SetupWatch { setup, what: "opening the NCCL connections" })?;
        tracing::debug!("NCCL connections open");
        side.info = side.describe(began.elapsed());
        Ok(side)
    }

    /// Posts every message of the request, grouped, each group ended in turn;
    /// `after_group(g)` runs after group g (the receiver records span events).
    /// Posting a million messages takes the host seconds: the peer is
    /// watched meanwhile, and answered.
    fn post(
        &self,
        buf: &Buffer,
        layout: &RequestLayout,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
        mut after_group: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        let base = buf.gpu_mem().expect("checked at setup").ptr;
        let stream = self.stream.raw as *mut c_void;
        let groups = layout.message_count.div_ceil(self.group);
        let grouped = self.group > 1;
        let mut last_watch = Instant::now();
        for g in 0..groups {
            if grouped {
                self.nccl.group_start()?;
            }
            let first = g * self.group;
            for i in first..((g + 1) * self.group).min(layout.message_count) {
                if grouped && i > first && !ready.ready(i)? {
                    // The next layer is not computed: what is queued goes now.
                    queued(self.nccl.group_end(self.comm)?, "ending a group of messages")?;
                    self.nccl.group_start()?;
                }
                ready.wait(i, deadline)?;
                let slot =
                    layout.slot(if self.rank == 0 { plan::Side::Sender } else { plan::Side::Receiver }, i);
                // SAFETY: the slot lies inside the buffer, which outlives the
                // request: every round waits for its stream before returning.
                unsafe {
                    transfer(self.nccl, self.rank, base + slot.offset as u64, slot.len, self.comm, stream)?
                };
            }
            if grouped {
                queued(self.nccl.group_end(self.comm)?, "ending a group of messages")?;
            }
            after_group(g)?;
            if last_watch.elapsed() >= WATCH_EVERY {
                last_watch = Instant::now();
                peer.watch()?;
                if last_watch > deadline {
                    return Err(Error::run("NCCL: posting the request's messages outlasted its deadline"));
                }
            }
        }
        Ok(())
    }

    /// Waits for `event` (after the request's work) while watching NCCL
    /// and, every few milliseconds, the peer: a dead or stopped peer leaves a
    /// GPU kernel spinning, and only the control connection tells.
    fn wait(&self, event: &Event, deadline: Instant, peer: &mut dyn PeerLink) -> Result<()> {
        let mut last_watch = Instant::now();
        let result = event.wait_checking(deadline, "the request's NCCL transfers", || {
            self.nccl.async_state(self.comm, "moving the request")?;
            if last_watch.elapsed() >= WATCH_EVERY {
                last_watch = Instant::now();
                peer.watch()?;
            }
            Ok(())
        });
        result.map_err(|e| e.context("NCCL (the communicator is aborted)"))
    }

    fn describe(&self, setup: Duration) -> TransportInfo {
        let mut info = TransportInfo {
            summary: format!(
                "nccl {} ({}): rank {} of 2 on {}, {} per ncclGroup, communicator ready in {:.1} ms",
                self.nccl.version,
                self.nccl.path,
                self.rank,
                self.device.describe(),
                if self.group == 1 { "1 message".to_string() } else { format!("{} messages", self.group) },
                setup.as_secs_f64() * 1e3
            ),
            ..Default::default()
        };
        let d = &mut info.details;
        d.insert("nccl_version".into(), self.nccl.version.clone());
        d.insert("nccl_library".into(), self.nccl.path.clone());
        d.insert("rank".into(), self.rank.to_string());
        d.insert("device".into(), self.device.describe());
        d.insert("messages_per_group".into(), self.group.to_string());
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("NCCL_")) {
            d.insert(format!("env.{k}"), v);
        }
        info
    }

    /// Adds the path NCCL chose, from its log, once connections exist.
    fn info_with_path(&self) -> TransportInfo {
        let mut info = self.info.clone();
        match self.log.as_ref().map(|p| read_paths(p, self.device.ordinal)) {
            // NCCL names the path on the rank that opens each connection.
            Some(Some((paths, _))) if paths.is_empty() => {}
            Some(Some((paths, lines))) => {
                info.path = Some(format!("NCCL {} via {}", self.nccl.version, paths.join(", ")));
                info.details.insert("nccl_channels".into(), lines.join("\n"));
                info.details.insert("nccl_log".into(), self.log.as_ref().unwrap().display().to_string());
            }
            _ => {
                info.path = Some(format!(
                    "NCCL {}, path unknown (NCCL_DEBUG_FILE was set by the user)",
                    self.nccl.version
                ))
            }
        }
        info
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        tracing::debug!("teardown: aborting the NCCL communicator");
        let _ = self.device.bind();
        // Abort rather than destroy: it never waits on a peer that is gone.
        // SAFETY: the side, and with it the communicator, ends here.
        unsafe { self.nccl.abort(self.comm) };
    }
}

impl SendSide for NcclSender {
    fn info(&self) -> TransportInfo {
        self.0.info_with_path()
    }

    fn send(
        &mut self,
        buf: &Buffer,
        layout: &RequestLayout,
        _request: u64,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
    ) -> Result<()> {
        let side = &self.0;
        side.post(buf, layout, deadline, peer, ready, |_| Ok(()))?;
        let done = Event::new(&side.device)?;
        done.record(&side.stream)?;
        side.wait(&done, deadline, peer)
    }
}

impl RecvSide for NcclReceiver {
    fn info(&self) -> TransportInfo {
        self.side.info_with_path()
    }

    fn recv(
        &mut self,
        buf: &mut Buffer,
        layout: &RequestLayout,
        _request: u64,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        done: &dyn Completions,
    ) -> Result<RoundTiming> {
        let side = &self.side;
        let groups = layout.message_count.div_ceil(side.group);
        let per_span = groups.div_ceil(MAX_SPANS);
        let spans = groups.div_ceil(per_span);
        self.start.record(&side.stream)?;
        peer.go()?;
        let span_events = &self.spans;
        side.post(buf, layout, deadline, peer, &AtOnce, |g| {
            if (g + 1) % per_span == 0 || g + 1 == groups {
                span_events[g / per_span].record(&side.stream)?;
            }
            Ok(())
        })?;
        side.wait(&span_events[spans - 1], deadline, peer)?;
        // Each message gets its share of its span's time.
        let messages_per_span = per_span * side.group;
        let mut previous = &self.start;
        for (k, event) in span_events[..spans].iter().enumerate() {
            let first = k * messages_per_span;
            let last = ((k + 1) * messages_per_span).min(layout.message_count);
            let share = event.since(previous)? / (last - first) as u64;
            for index in first..last {
                done.message_done(index, share, None)?;
            }
            previous = event;
        }
        Ok(RoundTiming { elapsed_ns: Some(span_events[spans - 1].since(&self.start)?), landed: None })
    }
}

/// One ncclSend (rank 0) or ncclRecv (rank 1) of `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must hold `len` bytes of device memory until the stream is done.
unsafe fn transfer(
    nccl: &Nccl,
    rank: i32,
    ptr: u64,
    len: usize,
    comm: Comm,
    stream: *mut c_void,
) -> Result<()> {
    let peer = 1 - rank;
    let code = if rank == SENDER_RANK {
        nccl.send(ptr, len, peer, comm, stream)?
    } else {
        nccl.recv(ptr, len, peer, comm, stream)?
    };
    queued(code, "posting a message")
}

/// A blocking communicator queues work and returns; it never answers
/// ncclInProgress, which would mean the call did not take.
fn queued(code: std::ffi::c_int, doing: &str) -> Result<()> {
    if code == IN_PROGRESS {
        return Err(Error::run(format!("NCCL: {doing}: ncclInProgress from a blocking communicator")));
    }
    Ok(())
}

/// Asks NCCL for its INIT log in a file of our own, once per process and
/// before NCCL first reads its environment; keeps a user's own settings.
fn debug_log() -> Option<PathBuf> {
    static LOG: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        if std::env::var_os("NCCL_DEBUG_FILE").is_some() {
            return None;
        }
        let path = std::env::temp_dir().join(format!("kvxfer-nccl-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // Set before the first NCCL call of the process reads them.
        std::env::set_var("NCCL_DEBUG_FILE", &path);
        if std::env::var_os("NCCL_DEBUG").is_none() {
            std::env::set_var("NCCL_DEBUG", "INFO");
        }
        Some(path)
    })
    .clone()
}

/// Sets NCCL's log up before any thread could call NCCL (see `debug_log`).
pub fn prepare_environment() {
    debug_log();
}

/// Fails early, with the library named, where NCCL cannot be loaded.
pub fn check_library(lib: Option<&str>) -> Result<()> {
    prepare_environment();
    Nccl::open(lib).map(drop)
}

/// The transports named in NCCL's "Channel ... via X" lines for one device.
fn read_paths(log: &std::path::Path, device: usize) -> Option<(Vec<String>, Vec<String>)> {
    let text = std::fs::read_to_string(log).ok()?;
    Some(parse_paths(&text, device))
}

fn parse_paths(text: &str, device: usize) -> (Vec<String>, Vec<String>) {
    let tag = format!(" [{device}] NCCL INFO ");
    let mut paths: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| l.contains(&tag) && l.contains(" via ")) {
        let via = line.rsplit(" via ").next().unwrap_or("").trim().to_string();
        if !via.is_empty() && !paths.contains(&via) {
            paths.push(via);
        }
        lines.push(line.trim().to_string());
    }
    (paths, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_survive_hex() {
        let bytes: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert!(unhex("zz").is_none());
    }

    #[test]
    fn versions_must_share_major_and_minor() {
        assert!(check_versions("2.28.3", "2.28.9").is_ok());
        let e = check_versions("2.28.3", "2.27.7").unwrap_err();
        assert!(e.message.contains("NCCL version mismatch: the sender has 2.28.3, the receiver 2.27.7"));
    }

    #[test]
    fn paths_come_from_the_channel_lines_of_our_device() {
        let log = "h:1:2 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n\
                   h:1:2 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n\
                   h:1:3 [1] NCCL INFO Channel 00/0 : 1[1] -> 0[0] via NET/Socket/0\n\
                   h:1:2 [0] NCCL INFO comm 0x1 rank 0 nranks 2 - Init COMPLETE\n";
        let (paths, lines) = parse_paths(log, 0);
        assert_eq!(paths, vec!["P2P/CUMEM/read"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(parse_paths(log, 1).0, vec!["NET/Socket/0"]);
    }
}
