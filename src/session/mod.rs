//! The control connection between sender and receiver: a fixed preamble that
//! every version of kvxfer will understand, then length-prefixed JSON messages.
//! The sender proposes a plan, the receiver adopts or refuses it (iperf3
//! style); afterwards both sides pace each request over this channel.
//! Every read has a deadline; a lost, silent or aborting peer is an error that
//! names the peer and what was awaited.

pub mod messages;

use crate::env::EnvInfo;
use crate::error::{Error, ErrorKind, Origin, Result};
use crate::net;
pub use messages::{Hello, Msg, Role};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Version of the control protocol; peers must speak the same one.
pub const PROTOCOL: u16 = 6;
const MAGIC: [u8; 4] = *b"KVXF";
/// What `kvxfer matrix --hosts` opens its connection to a service with:
/// it asks the service to send, on its behalf, to the other hosts.
pub const MATRIX_MAGIC: [u8; 4] = *b"KVXM";
const MAX_FRAME: usize = 64 << 20;
pub const STATUS_OK: u16 = 0;
pub const STATUS_VERSION_REFUSED: u16 = 1;
/// A receiver in service mode that is serving another sender: a Refuse
/// with who and since when follows.
const STATUS_BUSY: u16 = 2;
/// A service asked for matrix work that was not started with --matrix.
pub const STATUS_NO_MATRIX: u16 = 3;
/// How the reason of a busy answer begins.
pub const BUSY: &str = "busy: serving";

/// Whether a sender's error is a service-mode receiver saying it is busy.
pub fn is_busy(e: &Error) -> bool {
    // Told before the plan (" is busy: ..."), or after it ("refused the run: busy: ...").
    e.message.contains(&format!(" is {BUSY} ")) || e.message.contains(&format!("refused the run: {BUSY} "))
}

pub struct Control {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    pub peer_role: Role,
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    /// How long any single wait for the peer may last.
    pub timeout: Duration,
    /// When the peer was last heard from, and when we last pinged it.
    last_heard: Instant,
    /// Heartbeat periods of silence already logged (-v).
    missed_logged: u32,
    last_ping: Instant,
    /// Messages that arrived while a transport was watching, for `recv`.
    pending: std::collections::VecDeque<Msg>,
    /// The read timeout the socket has, so that a read sets it only when
    /// it changes (a system call per read was most of a message's cost).
    read_timeout: Option<Duration>,
}

/// How often `watch` pings the peer, at most; never less than four pings per
/// timeout, so that a short timeout cannot outrun the heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A transport's setup exchange travels as `Msg::Setup`.
impl crate::transport::SetupChannel for Control {
    fn send_setup(&mut self, data: serde_json::Value) -> Result<()> {
        self.send(&Msg::Setup { data })
    }

    fn recv_setup(&mut self, awaiting: &str) -> Result<serde_json::Value> {
        self.expect(awaiting, |m| match m {
            Msg::Setup { data } => Ok(data),
            other => Err(other),
        })
    }

    fn watch(&mut self, doing: &str) -> Result<()> {
        Control::watch(self, doing)
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn peer_role(&self) -> Role {
        self.peer_role
    }
}

impl Control {
    /// Whether the peer has hung up: its end closed (or reset) with nothing
    /// left to read. A look that does not wait; a live peer, silent or
    /// not, is not hung up.
    pub fn hung_up(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        // SAFETY: a one-byte peek into a local buffer on a socket this Control owns.
        let n = unsafe {
            libc::recv(
                self.writer.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
    }

    /// The socket, for another protocol once the preamble is read (nothing
    /// more has come: the peer waits for an answer).
    pub fn into_stream(self) -> TcpStream {
        self.writer
    }

    fn new(stream: TcpStream, peer_role: Role, timeout: Duration) -> Result<Control> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Control {
            peer_addr: stream.peer_addr()?,
            local_addr: stream.local_addr()?,
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            peer_role,
            timeout,
            last_heard: Instant::now(),
            missed_logged: 0,
            last_ping: Instant::now(),
            pending: Default::default(),
            read_timeout: None,
        })
    }

    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    pub fn send(&mut self, msg: &Msg) -> Result<()> {
        match msg.is_chatter() {
            true => tracing::trace!("sent {} to the {}", msg.name(), self.peer_role),
            false => tracing::debug!("sent {} to the {}", msg.brief(), self.peer_role),
        }
        let body = serde_json::to_vec(msg).expect("control messages serialize");
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        self.writer.write_all(&frame).map_err(|e| self.io_error(e, &format!("sending {}", msg.name())))
    }

    /// The next message, or an error naming what was awaited. Heartbeats
    /// are answered on the way; a peer's Abort becomes an error carrying the
    /// peer's reason and exit code.
    pub fn recv(&mut self, deadline: Instant, awaiting: &str) -> Result<Msg> {
        if let Some(msg) = self.pending.pop_front() {
            return Ok(msg);
        }
        loop {
            let msg = self.read_frame(deadline, awaiting)?;
            if let Some(msg) = self.heartbeat(msg)? {
                return Ok(msg);
            }
        }
    }

    /// Called often while a transport waits on the GPU: pings the peer,
    /// answers its pings, and fails as soon as the peer has gone, aborted or
    /// stayed silent for the timeout (a stopped process answers nothing).
    /// Other messages (the peer may be a request ahead) wait for `recv`.
    pub fn watch(&mut self, doing: &str) -> Result<()> {
        crate::signals::check()?;
        let now = Instant::now();
        if now.duration_since(self.last_ping) >= HEARTBEAT.min(self.timeout / 4) {
            self.last_ping = now;
            self.send(&Msg::Ping)?;
        }
        while self.readable() {
            let msg = self.read_frame(now + Duration::from_secs(1), doing)?;
            if let Some(other) = self.heartbeat(msg)? {
                self.pending.push_back(other);
            }
        }
        let quiet = self.last_heard.elapsed();
        let missed = (quiet.as_millis() / HEARTBEAT.as_millis()) as u32;
        if missed >= 2 && missed > self.missed_logged {
            self.missed_logged = missed;
            tracing::debug!(
                "no word from the {} for {quiet:.1?} while {doing} (heartbeats missed)",
                self.peer_role
            );
        }
        if quiet > self.timeout {
            return Err(self.silent(&format!("{doing} (it answers no heartbeat)"), quiet));
        }
        Ok(())
    }

    /// Takes the first message that `pick` wants out of those `watch` set
    /// aside (lanes of requests in flight each wait for their own).
    pub fn take_pending(&mut self, pick: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let i = self.pending.iter().position(pick)?;
        self.pending.remove(i)
    }

    /// Whether messages wait for `recv` or `take_pending`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Waits up to `wait` for the peer to send something (or close), without
    /// reading it: a thread can wait here while others use the connection.
    pub fn poll_readable(fd: std::os::fd::RawFd, wait: Duration) -> bool {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; the wait is bounded.
        let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().clamp(0, i32::MAX as u128) as i32) };
        n > 0 && pfd.revents != 0
    }

    /// The control connection's descriptor, for `poll_readable`.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.reader.get_ref().as_raw_fd()
    }

    /// Answers a ping, drops a pong; hands any other message back.
    fn heartbeat(&mut self, msg: Msg) -> Result<Option<Msg>> {
        match msg {
            Msg::Ping => self.send(&Msg::Pong).map(|_| None),
            Msg::Pong => Ok(None),
            m => Ok(Some(m)),
        }
    }

    /// Whether a frame (or the end of the connection) is waiting to be read.
    fn readable(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let mut pfd =
            libc::pollfd { fd: self.reader.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents != 0
    }

    fn read_frame(&mut self, deadline: Instant, awaiting: &str) -> Result<Msg> {
        let began = Instant::now();
        let mut len = [0u8; 4];
        self.read_exact_until(&mut len, deadline, began, awaiting)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(Error::run(format!(
                "protocol error: the {} sent a {len}-byte control frame while {awaiting}",
                self.peer_role
            )));
        }
        let mut body = vec![0u8; len];
        self.read_exact_until(&mut body, deadline, began, awaiting)?;
        self.last_heard = Instant::now();
        self.missed_logged = 0;
        let msg: Msg = serde_json::from_slice(&body).map_err(|e| {
            Error::run(format!(
                "protocol error: unreadable control message from the {} while {awaiting}: {e}",
                self.peer_role
            ))
        })?;
        match msg {
            Msg::Abort { reason, code } => Err(Error::new(
                kind_of_code(code),
                format!("the {} stopped the run: {reason}", self.peer_role),
            )
            .reported_by_peer()),
            Msg::Refuse { reason } => {
                Err(Error::run(format!("the {} refused the run: {reason}", self.peer_role))
                    .reported_by_peer())
            }
            m => {
                match m.is_chatter() {
                    true => tracing::trace!("{} from the {}", m.name(), self.peer_role),
                    false => tracing::debug!("received {} from the {}", m.brief(), self.peer_role),
                }
                Ok(m)
            }
        }
    }

    /// Receives and checks the kind of the next message, within the timeout.
    pub fn expect<T>(&mut self, awaiting: &str, pick: impl FnOnce(Msg) -> Result<T, Msg>) -> Result<T> {
        let deadline = self.deadline();
        self.expect_by(deadline, awaiting, pick)
    }

    /// Receives and checks the kind of the next message, by `deadline`.
    pub fn expect_by<T>(
        &mut self,
        deadline: Instant,
        awaiting: &str,
        pick: impl FnOnce(Msg) -> Result<T, Msg>,
    ) -> Result<T> {
        let msg = self.recv(deadline, awaiting)?;
        pick(msg).map_err(|other| {
            Error::run(format!(
                "protocol error: got '{}' from the {} while {awaiting}",
                other.name(),
                self.peer_role
            ))
        })
    }

    /// Tells the peer why the run ends; best effort, bounded to a second.
    pub fn abort(&mut self, err: &Error) {
        let _ = self.writer.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = self.send(&Msg::Abort { reason: err.message.clone(), code: err.exit_code() });
    }

    /// Ends a failed run on both sides with the most telling reason. An
    /// error found here is sent to the peer at once. A dropped connection is
    /// often only the echo of the peer's own abort: its reason, if it comes
    /// within a moment, is the one to report.
    pub fn settle(&mut self, err: Error) -> Error {
        match err.origin {
            Origin::Peer => err,
            Origin::Here => {
                self.abort(&err);
                self.linger(Duration::from_secs(1));
                err
            }
            Origin::Lost => self.peer_reason(Duration::from_millis(500)).unwrap_or_else(|| {
                self.abort(&err);
                err
            }),
        }
    }

    /// After an abort, waits a moment for the peer to read it and close, so
    /// that it has stopped using the transport (UCX endpoints into this
    /// side's memory) before this side tears its part down.
    fn linger(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while self.recv(until, "waiting for the peer to close").is_ok() {}
    }

    /// The peer's own explanation, if it sends one within `wait`.
    fn peer_reason(&mut self, wait: Duration) -> Option<Error> {
        match self.recv(Instant::now() + wait, "reading the peer's reason") {
            Err(e) if e.origin == Origin::Peer => Some(e),
            _ => None,
        }
    }

    fn read_exact_until(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
        began: Instant,
        awaiting: &str,
    ) -> Result<()> {
        let mut done = 0;
        let mut told = false;
        while done < buf.len() {
            crate::signals::check()?;
            let Some(left) = net::remaining(deadline) else {
                return Err(self.silent(awaiting, began.elapsed()));
            };
            // In slices, so that an operator's signal stops a long wait promptly.
            let slice = Some(left.min(SIGNAL_LATENCY));
            if self.reader.buffer().is_empty() && self.read_timeout != slice {
                self.reader.get_ref().set_read_timeout(slice)?;
                self.read_timeout = slice;
            }
            match self.reader.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(Error::connection_lost(format!(
                        "the {} closed the control connection while {awaiting}",
                        self.peer_role
                    )))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if net::is_timeout(&e) => {
                    // Quick steps show as sent and received; a wait is named once it lasts.
                    if !told {
                        told = true;
                        tracing::debug!("{awaiting} (nothing yet after {:.0?})", began.elapsed());
                    }
                }
                Err(e) => return Err(self.io_error(e, awaiting)),
            }
        }
        Ok(())
    }

    fn silent(&self, awaiting: &str, waited: Duration) -> Error {
        Error::run(format!(
            "no word from the {} at {} for {} while {awaiting}",
            self.peer_role,
            self.peer_addr,
            humantime::format_duration(Duration::from_millis(waited.as_millis() as u64))
        ))
    }

    fn io_error(&self, e: std::io::Error, doing: &str) -> Error {
        if net::is_timeout(&e) {
            return self.silent(doing, self.timeout);
        }
        Error::connection_lost(format!(
            "lost the {} at {} while {doing}: {e}",
            self.peer_role, self.peer_addr
        ))
    }
}

/// The longest a wait on the control connection goes without looking for
/// an operator's signal (`signals`).
const SIGNAL_LATENCY: Duration = Duration::from_millis(100);

fn kind_of_code(code: i32) -> ErrorKind {
    [ErrorKind::Usage, ErrorKind::Integrity, ErrorKind::Gate]
        .into_iter()
        .find(|k| k.exit_code() == code)
        .unwrap_or(ErrorKind::Run)
}

/// Control round trips measured right after the handshake, in nanoseconds.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ControlRtt {
    pub min_ns: u64,
    pub median_ns: u64,
}

const PINGS: u32 = 20;

/// The sender's half of the handshake: connect, agree on a protocol version,
/// propose the plan, measure the control round trip.
pub struct SenderSession {
    pub ctrl: Control,
    pub hello: Hello,
    pub receiver_env: EnvInfo,
    pub rtt: ControlRtt,
    /// This pair's place in the receiver's many-to-one fan, if it serves several.
    pub seat: Option<crate::topology::Seat>,
}

pub fn open_sender(
    addr: &str,
    bind: Option<std::net::IpAddr>,
    hello: Hello,
    timeout: Duration,
    protocol: u16,
) -> Result<SenderSession> {
    let addrs = net::resolve(addr)?;
    let deadline = Instant::now() + timeout;
    tracing::debug!("connecting to the receiver at {addr}");
    let stream = net::connect_until(&addrs, deadline, "receiver", bind)?;
    let mut ctrl = Control::new(stream, Role::Receiver, timeout)?;
    tracing::debug!(
        "connected to {} from {}; sending the preamble (protocol {protocol})",
        ctrl.peer_addr,
        ctrl.local_addr
    );

    let mut pre = [0u8; 8];
    pre[..4].copy_from_slice(&MAGIC);
    pre[4..6].copy_from_slice(&protocol.to_be_bytes());
    ctrl.writer.write_all(&pre).map_err(|e| ctrl.io_error(e, "sending the preamble"))?;
    let mut reply = [0u8; 8];
    tracing::debug!("waiting for the handshake");
    ctrl.read_exact_until(&mut reply, deadline, Instant::now(), "waiting for the handshake")?;
    tracing::debug!(
        "the receiver answered the preamble (status {})",
        u16::from_be_bytes([reply[6], reply[7]])
    );
    if reply[..4] != MAGIC {
        return Err(Error::run(format!(
            "{addr} is not a kvxfer receiver (it answered {:?})",
            String::from_utf8_lossy(&reply)
        )));
    }
    let theirs = u16::from_be_bytes([reply[4], reply[5]]);
    if u16::from_be_bytes([reply[6], reply[7]]) == STATUS_BUSY {
        // The reason follows as a Refuse, which reading turns into the error.
        let busy = ctrl.expect("reading why the receiver is busy", Err::<(), Msg>);
        return Err(Error::run(format!(
            "the receiver at {addr} is {}",
            busy.err().map(|e| e.message.replace("the receiver refused the run: ", "")).unwrap_or_default()
        )));
    }
    if u16::from_be_bytes([reply[6], reply[7]]) == STATUS_VERSION_REFUSED {
        return Err(Error::run(format!(
            "protocol version mismatch: this sender speaks {protocol}, the receiver at {addr} speaks {theirs}; \
             run the same kvxfer version on both sides"
        )));
    }

    // Interrupted here, the receiver is told why, as it would be later on.
    if let Err(e) = crate::hold::at("handshake", true).and_then(|_| crate::signals::check()) {
        ctrl.abort(&e);
        return Err(e);
    }
    ctrl.send(&Msg::Hello(Box::new(hello.clone())))?;
    let awaiting =
        "waiting for the receiver to accept the plan (one that serves several senders answers once all \
                    have connected)";
    let (receiver_env, seat) = ctrl.expect(awaiting, |m| match m {
        Msg::Welcome { env, seat } => Ok((*env, seat)),
        other => Err(other),
    })?;
    let mut samples = Vec::with_capacity(PINGS as usize);
    for seq in 0..PINGS {
        let t = Instant::now();
        ctrl.send(&Msg::Probe { seq })?;
        ctrl.expect("measuring the control round trip", |m| match m {
            Msg::ProbeReply { seq: s } if s == seq => Ok(()),
            other => Err(other),
        })?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    tracing::debug!("plan accepted; control round trip {} us at best", samples[0] / 1000);
    Ok(SenderSession {
        ctrl,
        hello,
        receiver_env,
        rtt: ControlRtt { min_ns: samples[0], median_ns: samples[samples.len() / 2] },
        seat,
    })
}

/// What a receiver insists on; anything else it adopts from the sender.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    pub transport: Option<crate::transport::TransportKind>,
    /// The model whose KV this receiver expects (its shape is compared).
    pub model: Option<crate::kv::ModelSpec>,
    /// The receiver's own memory, which the transport must be able to move.
    pub memory: crate::memory::MemoryKind,
    /// Which decode rank of a P x D run this receiver is (`--decode-rank`).
    pub decode_rank: Option<u32>,
    /// How this receiver's KV cache is laid out (`--kv-layout`).
    pub kv_layout: Option<crate::plan::KvLayout>,
    /// What this receiver's gate needs of the plan (judged after the run).
    pub gate: crate::plan::gate::GateNeeds,
    /// How long a connection may take to say who it is and what it wants
    /// (preamble and plan), so that a silent or trickling stranger holds
    /// nobody up for long; zero: the run's timeout.
    pub handshake: Duration,
}

pub struct ReceiverSession {
    pub ctrl: Control,
    pub hello: Hello,
}

impl ReceiverSession {
    /// The control socket and the plan, for a process of its own to serve
    /// (the sender waits for its welcome: nothing more has come).
    pub fn into_parts(self) -> (TcpStream, Hello) {
        (self.ctrl.into_stream(), self.hello)
    }

    /// A sender another process greeted, from its socket and plan.
    pub fn resume(stream: TcpStream, hello: Hello, timeout: Duration) -> Result<ReceiverSession> {
        Ok(ReceiverSession { ctrl: Control::new(stream, Role::Sender, timeout)?, hello })
    }
}

/// The receiver's half: wait for a sender (ignoring connections that are not
/// kvxfer at all), check its version, role and plan, and welcome it.
pub fn accept_receiver(
    listener: &TcpListener,
    wait_for_sender: Duration,
    timeout: Duration,
    expect: &Expectations,
    own_env: &EnvInfo,
) -> Result<ReceiverSession> {
    let mut sess = accept_hello(listener, wait_for_sender, timeout, expect)?;
    welcome(&mut sess, own_env, None)?;
    Ok(sess)
}

/// Adopts the plan of a sender whose hello was accepted, telling it its
/// seat in a fan if it has one; answers its round-trip probes.
pub fn welcome(
    sess: &mut ReceiverSession,
    own_env: &EnvInfo,
    seat: Option<crate::topology::Seat>,
) -> Result<()> {
    let ctrl = &mut sess.ctrl;
    if let Err(e) = crate::hold::at("handshake", true).and_then(|_| crate::signals::check()) {
        ctrl.abort(&e);
        return Err(e);
    }
    ctrl.send(&Msg::Welcome { env: Box::new(own_env.clone()), seat })?;
    for _ in 0..PINGS {
        let seq = ctrl.expect("answering the control round-trip probe", |m| match m {
            Msg::Probe { seq } => Ok(seq),
            other => Err(other),
        })?;
        ctrl.send(&Msg::ProbeReply { seq })?;
    }
    Ok(())
}

/// Refuses a sender whose hello was accepted, telling it why.
pub fn refuse(sess: &mut ReceiverSession, reason: &str) -> Error {
    let _ = sess.ctrl.send(&Msg::Refuse { reason: reason.to_string() });
    Error::run(format!("refused the sender at {}: {reason}", sess.ctrl.peer_addr))
}

/// A sender whose version, role and plan this receiver accepts, not yet
/// welcomed; connections that are not kvxfer senders are ignored.
pub fn accept_hello(
    listener: &TcpListener,
    wait_for_sender: Duration,
    timeout: Duration,
    expect: &Expectations,
) -> Result<ReceiverSession> {
    Lobby::new(timeout, expect).next_sender(listener, wait_for_sender)
}

/// Where connections are greeted side by side, each on a thread of its
/// own (GREETERS at most at once) within the handshake deadline, so that
/// no stranger, silent or a byte a second, holds up a sender behind it.
/// Senders greeted and not taken when it closes, or while it is busy,
/// hear that this receiver is busy.
pub struct Lobby {
    done: std::sync::mpsc::Sender<(SocketAddr, Greeting)>,
    greeted: std::sync::mpsc::Receiver<(SocketAddr, Greeting)>,
    active: Arc<AtomicUsize>,
    /// Set once it has what it waits for: later senders hear busy.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Why a sender greeted now is turned away, if it is.
    busy: Arc<TurnAway>,
    timeout: Duration,
    expect: Expectations,
}

/// Why a sender greeted from an address is turned away, if it is (and
/// whatever the turning away should log).
pub type TurnAway = dyn Fn(SocketAddr) -> Option<String> + Send + Sync;

impl Lobby {
    pub fn new(timeout: Duration, expect: &Expectations) -> Lobby {
        Lobby::turning_away(timeout, expect, Arc::new(|_| None))
    }

    /// A lobby whose senders `busy` may also turn away (a service's, while
    /// it serves a run).
    pub fn turning_away(timeout: Duration, expect: &Expectations, busy: Arc<TurnAway>) -> Lobby {
        let (done, greeted) = std::sync::mpsc::channel();
        let (active, closed) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        Lobby { done, greeted, active, closed, busy, timeout, expect: expect.clone() }
    }

    /// A greeting done, if one is (those turned away are not).
    pub fn greeted(&self) -> Option<(SocketAddr, Greeting)> {
        self.greeted.try_recv().ok()
    }

    /// The next sender, within `wait`: strangers are logged, a refused
    /// sender ends the wait with its reason.
    pub fn next_sender(&self, listener: &TcpListener, wait: Duration) -> Result<ReceiverSession> {
        let deadline = Instant::now() + wait;
        tracing::debug!("waiting for a sender on {}", listener.local_addr()?);
        loop {
            while let Some((from, greeting)) = self.greeted() {
                match greeting {
                    Greeting::Sender(s) => return Ok(*s),
                    Greeting::Stranger(why) => {
                        eprintln!("kvxfer-recv: ignoring a connection from {from}: {why}")
                    }
                    Greeting::Refused(e) => return Err(e),
                    Greeting::Matrix(mut stream, _) => {
                        // Told, so that the matrix names this host and the fix.
                        let _ = stream.write_all(&preamble(MATRIX_MAGIC, STATUS_NO_MATRIX));
                        eprintln!(
                            "kvxfer-recv: refused matrix work from {from}: only kvxfer-recv --forever --matrix \
                             takes it"
                        )
                    }
                }
            }
            crate::signals::check()?;
            let waiting = Instant::now() < deadline;
            if !waiting && self.active.load(Relaxed) == 0 {
                let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                return Err(Error::run(format!("no sender connected to {at} before the deadline")));
            }
            let Some((stream, from)) = net::accept_within(listener, Duration::from_millis(20))? else {
                continue;
            };
            tracing::debug!("accepted a connection from {from}");
            // Past the wait, a connection is closed: the wait ends once those being greeted are.
            if waiting {
                self.greet(stream, from);
            }
        }
    }

    /// Greets a connection on a thread of its own; its greeting comes out
    /// of `greeted`, or `next_sender`.
    pub fn greet(&self, stream: TcpStream, from: SocketAddr) {
        if self.active.fetch_add(1, Relaxed) >= GREETERS {
            self.active.fetch_sub(1, Relaxed);
            turn_away_flood(stream, from);
            return;
        }
        let (done, active, closed, busy) =
            (self.done.clone(), self.active.clone(), self.closed.clone(), self.busy.clone());
        let (expect, timeout) = (self.expect.clone(), self.timeout);
        // -v's lines of the greeting carry the side, as on the thread that waits.
        let side = tracing::Span::current();
        std::thread::spawn(move || {
            let _side = side.enter();
            let greeting = greet(stream, from, timeout, &expect);
            let turned_away = match &greeting {
                // Greeted after the lobby closed: the senders it had are served.
                Greeting::Sender(_) if closed.load(Relaxed) => Some(format!("{BUSY} other senders")),
                Greeting::Sender(_) => busy(from),
                _ => None,
            };
            match (greeting, turned_away) {
                (Greeting::Sender(mut sender), Some(why)) => drop(refuse(&mut sender, &why)),
                (greeting, _) => {
                    // The lobby gone meanwhile: as closed.
                    if let Err(std::sync::mpsc::SendError((_, Greeting::Sender(mut late)))) =
                        done.send((from, greeting))
                    {
                        refuse(&mut late, &format!("{BUSY} other senders"));
                    }
                }
            }
            active.fetch_sub(1, Relaxed);
        });
    }

    /// It has what it waits for: senders greeted already, and later, hear busy.
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
        for (_, greeting) in self.greeted.try_iter() {
            if let Greeting::Sender(mut late) = greeting {
                refuse(&mut late, &format!("{BUSY} other senders"));
            }
        }
    }
}

impl Drop for Lobby {
    fn drop(&mut self) {
        self.close();
    }
}

/// Connections greeted at once, at most; past it a new one hears busy
/// (a sender learns why, not "connection reset"), so that a flood costs
/// threads only up to this and `TURNING_AWAY`.
const GREETERS: usize = 64;

/// Connections told busy at once past GREETERS, each within a short
/// deadline; past them a new one is closed at once.
const TURNING_AWAY: usize = 16;

/// A connection past GREETERS: told busy if it is a sender that says its
/// preamble at once, else closed; logged either way.
fn turn_away_flood(stream: TcpStream, from: SocketAddr) {
    static TURNING: AtomicUsize = AtomicUsize::new(0);
    if TURNING.fetch_add(1, Relaxed) >= TURNING_AWAY {
        TURNING.fetch_sub(1, Relaxed);
        eprintln!("kvxfer-recv: {GREETERS} connections are being greeted already: closed {from}");
        return;
    }
    eprintln!("kvxfer-recv: {GREETERS} connections are being greeted already: told {from} it is busy");
    std::thread::spawn(move || {
        let why = format!("{BUSY} {GREETERS} other connections, being greeted at once");
        tell_busy(stream, &why, Duration::from_millis(100));
        TURNING.fetch_sub(1, Relaxed);
    });
}

/// What a new connection turned out to be.
pub enum Greeting {
    /// A sender whose version, role and plan this receiver accepts.
    Sender(Box<ReceiverSession>),
    /// Not a kvxfer sender (silent, or other bytes): nothing was said to it.
    Stranger(String),
    /// A kvxfer sender refused, and told why.
    Refused(Error),
    /// `kvxfer matrix --hosts` asking this service to send for it; its
    /// preamble read, not yet answered.
    Matrix(TcpStream, u16),
}

/// Reads a connection's preamble and plan, within the handshake deadline
/// (`Expectations::handshake`); a sender's session then waits up to
/// `timeout` at each step.
pub fn greet(stream: TcpStream, from: SocketAddr, timeout: Duration, expect: &Expectations) -> Greeting {
    let handshake = match expect.handshake.is_zero() {
        true => timeout,
        false => expect.handshake.min(timeout),
    };
    let mut ctrl = match Control::new(stream, Role::Sender, handshake) {
        Ok(c) => c,
        Err(e) => return Greeting::Stranger(e.message),
    };
    let mut pre = [0u8; 8];
    let deadline = ctrl.deadline();
    tracing::debug!("waiting for the preamble from {from}");
    if let Err(e) = ctrl.read_exact_until(&mut pre, deadline, Instant::now(), "waiting for the preamble") {
        return Greeting::Stranger(e.message);
    }
    let theirs = u16::from_be_bytes([pre[4], pre[5]]);
    if pre[..4] == MATRIX_MAGIC {
        return Greeting::Matrix(ctrl.into_stream(), theirs);
    }
    if pre[..4] != MAGIC {
        return Greeting::Stranger("not a kvxfer sender".into());
    }
    let status = if theirs == PROTOCOL { STATUS_OK } else { STATUS_VERSION_REFUSED };
    let _ = ctrl.writer.write_all(&preamble_reply(status));
    // Told, and not served: a receiver goes on waiting for its sender
    // (anyone could send these bytes, and end it otherwise).
    if status != STATUS_OK {
        return Greeting::Stranger(format!(
            "refused: protocol version mismatch (it speaks {theirs}, this receiver speaks {PROTOCOL}); run the \
             same kvxfer version on both sides"
        ));
    }
    let hello = ctrl.expect("waiting for the sender's plan", |m| match m {
        Msg::Hello(h) => Ok(*h),
        other => Err(other),
    });
    ctrl.timeout = timeout;
    let mut sess = match hello {
        Ok(hello) => ReceiverSession { ctrl, hello },
        // Bytes that are no plan: a stranger's, not served and not ending
        // the wait; a sender that died or went silent mid-greeting is named.
        Err(e) if e.message.starts_with("protocol error") => {
            return Greeting::Stranger(format!("no plan after kvxfer's preamble: {}", e.message))
        }
        Err(e) => return Greeting::Refused(e.context(format!("the sender at {from}"))),
    };
    match check_hello(&sess.hello, expect) {
        Ok(()) => {
            let h = &sess.hello;
            tracing::debug!(
                "plan adopted from {from}: {} over {}, digest {}",
                h.plan.shape.model.name,
                h.transport.kind,
                h.plan_digest
            );
            Greeting::Sender(Box::new(sess))
        }
        Err(reason) => Greeting::Refused(refuse(&mut sess, &reason)),
    }
}

fn preamble_reply(status: u16) -> [u8; 8] {
    preamble(MAGIC, status)
}

/// The 8 bytes that open a conversation: magic, protocol, status.
pub fn preamble(magic: [u8; 4], status: u16) -> [u8; 8] {
    let mut reply = [0u8; 8];
    reply[..4].copy_from_slice(&magic);
    reply[4..6].copy_from_slice(&PROTOCOL.to_be_bytes());
    reply[6..8].copy_from_slice(&status.to_be_bytes());
    reply
}

/// Tells a sender that came while another run is served that this
/// receiver is busy, and why, within `within`.
pub fn tell_busy(stream: TcpStream, why: &str, within: Duration) {
    let Ok(mut ctrl) = Control::new(stream, Role::Sender, within) else { return };
    let mut pre = [0u8; 8];
    // Its preamble is read first, so that closing does not reset the connection under it.
    let deadline = Instant::now() + within;
    if ctrl.read_exact_until(&mut pre, deadline, Instant::now(), "waiting for the preamble").is_err() {
        return;
    }
    let _ = ctrl.writer.write_all(&preamble_reply(STATUS_BUSY));
    let _ = ctrl.send(&Msg::Refuse { reason: why.to_string() });
}

fn check_hello(hello: &Hello, expect: &Expectations) -> Result<(), String> {
    if hello.role != Role::Sender {
        return Err(format!(
            "role mismatch: the peer says it is a {}, but only a sender may connect to a receiver",
            hello.role
        ));
    }
    hello.plan.validate().map_err(|e| format!("invalid plan: {e}"))?;
    hello.transport.validate().map_err(|e| format!("invalid transport: {e}"))?;
    let digest = hello.plan.digest();
    if digest != hello.plan_digest {
        return Err(format!(
            "plan mismatch: the sender's plan digest is {}, this receiver derives {digest} from the same plan; \
             the two builds cut KV into messages differently (sender {}, receiver {})",
            hello.plan_digest,
            hello.env.build.line(),
            crate::env::BuildInfo::current().line()
        ));
    }
    if let Some(want) = expect.transport {
        if hello.transport.kind != want {
            return Err(format!(
                "plan mismatch: this receiver expects transport {want}, the sender asked for {}",
                hello.transport.kind
            ));
        }
    }
    hello
        .transport
        .check_memory(expect.memory)
        .map_err(|why| format!("this receiver has {} memory: {why}", expect.memory))?;
    check_tp(&hello.plan, expect)?;
    // The receiver's gate, refused now rather than after the sweep.
    expect
        .gate
        .check(&hello.plan, hello.link.is_some())
        .map_err(|why| format!("this receiver's gate: {why}"))?;
    if let Some(want) = &expect.model {
        let got = &hello.plan.shape.model;
        let differences = want.kv_differences(got);
        if !differences.is_empty() {
            return Err(format!(
                "plan mismatch: this receiver expects model {}, the sender's plan is for {} with {}",
                want.name,
                got.name,
                differences.join(", ")
            ));
        }
    }
    Ok(())
}

/// A P x D run's pair: this receiver's decode rank, and a layout as its own.
fn check_tp(plan: &crate::plan::Plan, expect: &Expectations) -> Result<(), String> {
    let Some(tp) = &plan.tp else {
        return match (expect.decode_rank, expect.kv_layout) {
            (Some(d), _) => Err(format!(
                "this receiver is decode rank {d} of a P x D run; the sender's plan has no --prefill-tp/--decode-tp"
            )),
            _ => Ok(()),
        };
    };
    let Some((p, d)) = tp.pair else {
        return Err("the sender's plan names prefill and decode TP but not which pair this is".into());
    };
    if let Some(mine) = expect.decode_rank.filter(|mine| *mine != d) {
        return Err(format!(
            "this receiver is decode rank {mine}; prefill rank {p} sends decode rank {d}'s share ({}): give its \
             --connect the receivers in decode rank order",
            tp.topology
        ));
    }
    match expect.kv_layout {
        Some(mine) if mine != tp.topology.layout => Err(format!(
            "the sender's KV cache is laid out {}, this receiver's {mine}: NixlConnector refuses different layouts \
             (\"Heterogeneous TP expects same kv_cache_layout\")",
            tp.topology.layout
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryKind;
    use crate::transport::{TransportKind, TransportSpec};

    fn hello(kind: TransportKind, streams: u32) -> Hello {
        let mut plan = crate::plan::sample_plan("qwen3-8b", &[64]);
        (plan.granularities, plan.iterations, plan.warmup) = (vec![crate::plan::Granularity::Layer], 1, 0);
        Hello {
            role: Role::Sender,
            env: EnvInfo::collect(),
            plan_digest: plan.digest(),
            plan,
            transport: TransportSpec {
                kind,
                streams,
                socket_buffer: None,
                nccl_group: 1,
                ucx_op: Default::default(),
                ucx_err_mode: Default::default(),
                in_flight: 1,
                require_transport: Vec::new(),
                ofi_op: Default::default(),
                ofi_provider: None,
                require_provider: None,
                nixl_op: Default::default(),
                nixl_backend: crate::transport::nixl::DEFAULT_BACKEND.into(),
                nixl_threads: None,
                nixl_params: Vec::new(),
                nixl_progress_thread: true,
                nixl_fault: false,
            },
            link: None,
            cookie: 1,
            seat: None,
        }
    }

    /// Two ends of a real loopback control connection.
    fn pair(timeout: Duration) -> (Control, Control) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Control::new(a, Role::Receiver, timeout).unwrap(), Control::new(b, Role::Sender, timeout).unwrap())
    }

    fn watch_for(c: &mut Control, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            c.watch("testing")?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    #[test]
    fn heartbeats_keep_a_responsive_peer() {
        let (mut a, mut b) = pair(Duration::from_millis(400));
        // Both watch three times the timeout; each end stays open until both are done.
        let other = std::thread::spawn(move || (watch_for(&mut b, Duration::from_millis(1200)), b));
        watch_for(&mut a, Duration::from_millis(1200)).unwrap();
        let (result, _b) = other.join().unwrap();
        result.unwrap();
    }

    #[test]
    fn messages_seen_while_watching_wait_for_recv() {
        let (mut a, mut b) = pair(Duration::from_secs(5));
        b.send(&Msg::Ready { point: 0, request: 7 }).unwrap();
        b.send(&Msg::Ping).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        a.watch("testing").unwrap();
        let got = a.recv(Instant::now() + Duration::from_secs(1), "testing").unwrap();
        assert!(matches!(got, Msg::Ready { point: 0, request: 7 }), "{got:?}");
        // The ping was answered with a pong, which b's recv passes over.
        a.send(&Msg::Finish).unwrap();
        assert!(matches!(b.recv(Instant::now() + Duration::from_secs(1), "testing").unwrap(), Msg::Finish));
    }

    #[test]
    fn a_silent_peer_fails_the_watch_after_the_timeout() {
        let (mut a, _b) = pair(Duration::from_millis(400));
        let t = Instant::now();
        let e = watch_for(&mut a, Duration::from_secs(5)).unwrap_err();
        assert!(e.message.contains("answers no heartbeat"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_closed_or_aborting_peer_fails_the_watch_at_once() {
        let (mut a, b) = pair(Duration::from_secs(5));
        drop(b);
        let e = watch_for(&mut a, Duration::from_secs(2)).unwrap_err();
        assert!(
            e.message.contains("closed the control connection") || e.message.contains("lost the sender"),
            "{e}"
        );
        let (mut a, mut b) = pair(Duration::from_secs(5));
        b.abort(&Error::integrity("3 wrong bytes"));
        let e = watch_for(&mut a, Duration::from_secs(2)).unwrap_err();
        assert_eq!((e.origin, e.kind), (Origin::Peer, ErrorKind::Integrity));
        assert!(e.message.contains("the receiver stopped the run: 3 wrong bytes"), "{e}");
    }

    #[test]
    fn a_receiver_refuses_what_its_memory_cannot_do() {
        let host = Expectations { memory: MemoryKind::Host, ..Default::default() };
        let gpu = Expectations { memory: MemoryKind::Gpu, ..Default::default() };
        assert!(check_hello(&hello(TransportKind::Tcp, 4), &host).is_ok());
        assert!(check_hello(&hello(TransportKind::Nccl, 1), &gpu).is_ok());
        let e = check_hello(&hello(TransportKind::Nccl, 1), &host).unwrap_err();
        assert!(e.contains("this receiver has host memory: transport nccl moves GPU memory"), "{e}");
        let e = check_hello(&hello(TransportKind::Tcp, 4), &gpu).unwrap_err();
        assert!(e.contains("use --streams 1"), "{e}");
    }
}
