//! The runner of a side: a sender or a receiver from its connection to its
//! report (buffers, transports, the handshake of their details, the
//! engine, the last exchange). `kvxfer-send`, `kvxfer-recv`, `pair`,
//! service mode, fans, launch and the matrix all run their sides through
//! it; the command line only parses its arguments and builds the options.

use crate::env::EnvInfo;
use crate::error::{Error, Result};
use crate::fan::Slot;
use crate::link;
use crate::measure::lanes::Lane;
use crate::measure::{self, Fault, RunConfig, Transports};
use crate::memory::{Buffer, MemorySpec};
use crate::plan::Plan;
use crate::report::screen::Screen;
use crate::report::FanRun;
use crate::report::RunReport;
use crate::session::{self, Control, Expectations, Hello, Msg, Role, PROTOCOL};
use crate::transport::{self, LocalOptions, Setup, TransportInfo, TransportKind, TransportSpec};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a sender side runs with, from its command line.
pub struct SenderOptions {
    pub spec: TransportSpec,
    pub timeout: Duration,
    /// The fault matrix's switch (hidden `--fault`).
    pub fault: Option<Fault>,
    /// The link's peak, where the operator named it.
    pub link: Option<link::Link>,
    pub local: LocalOptions,
}

/// The sender's whole run. The report comes back even when the run fails
/// part way, so the points already measured are not lost. With a fan slot
/// it is one pair of a one-to-many hub.
pub fn sender_side(
    addr: &str,
    bind: Option<IpAddr>,
    run: &SenderOptions,
    plan: Plan,
    memory: MemorySpec,
    screen: &Screen,
    fan: Option<Slot>,
) -> (Option<RunReport>, Result<()>) {
    let _side = tracing::debug_span!("send", to = addr).entered();
    let spec = run.spec.clone();
    let (hello, protocol) = sender_hello(run, plan, fan);
    let mut sess = match session::open_sender(addr, bind, hello, run.timeout, protocol) {
        Ok(s) => s,
        Err(e) => return (None, Err(e)),
    };
    // A many-to-one hub seated this sender; a one-to-many hub seats its pairs.
    if let Some(seat) = sess.seat.or(sess.hello.seat) {
        sess.hello.plan.seat(seat.index);
    }
    let mut report = RunReport::new(Role::Sender, &sess.hello, sess.receiver_env.clone());
    report.control_rtt = Some(sess.rtt.clone());
    if let Some(seat) = sess.seat {
        report.fan = Some(FanRun { seat, hub: false, pair_reports: Vec::new() });
    }
    // Kept past the closure: a failed run is settled with the peer before
    // the transport and buffer go (see `Control::settle`).
    let (mut bufs, mut transports, mut back) = (Vec::new(), Vec::new(), None);
    let result = (|| {
        let plan = &sess.hello.plan;
        let (began, mut allocating) = (Instant::now(), Duration::ZERO);
        // Under load, a lane per request in flight; one otherwise.
        for _ in 0..plan.lanes() {
            let at = Instant::now();
            let mut buf = Buffer::new(memory, plan.max_buffer_bytes(), plan.max_messages(), run.timeout)?;
            if plan.conversation.is_some() {
                buf.populate();
            }
            allocating += at.elapsed();
            let setup = Setup { ctrl: &mut sess.ctrl, cookie: sess.hello.cookie };
            transports.push(transport::open_sender(&spec, setup, &buf, &run.local.clone())?);
            bufs.push(buf);
        }
        // Bidirectional conversations: the same transport the other way, into the same buffer.
        if plan.moves_back() {
            let setup = Setup { ctrl: &mut sess.ctrl, cookie: sess.hello.cookie };
            back = Some(transport::open_receiver(&spec, setup, &mut bufs[0], &run.local.clone())?);
        }
        let (transport, buf) = (&mut transports[0], &mut bufs[0]);
        // The transport's setup, not the buffers' (their pages are faulted in at allocation).
        let setup_time = began.elapsed().saturating_sub(allocating);
        let setup_info = side_info(transport.info(), buf, setup_time);
        report.receiver_transport = exchange_info(&mut sess.ctrl, setup_info.clone(), Role::Sender)?;
        report.sender_transport = setup_info;
        if report.link.is_none() {
            report.link = report.receiver_transport.detected_link.clone();
        }
        screen.header(&report)?;
        if let Some(f) = fan {
            f.fan.joined(f.pair, &report);
        }
        let cfg = RunConfig {
            fault: run.fault,
            one_gpu: one_gpu(
                &sess.hello.env,
                &report.receiver,
                &report.sender_transport,
                &report.receiver_transport,
            ),
        };
        let shown = &mut Shown { report: &mut report, screen, seen: 0 };
        if measure::on_lanes(&sess.hello.plan, sess.seat.or(sess.hello.seat).is_some()) {
            let mut lanes: Vec<_> = (transports.iter_mut().zip(bufs.iter_mut()))
                .map(|(t, buf)| Lane { transport: t.as_mut() as &mut dyn transport::SendSide, buf })
                .collect();
            measure::lanes::run_sender(&mut sess, &mut lanes, run.fault, fan.map(Slot::engine), shown)?;
        } else {
            let pair = Transports { to_decode: transports[0].as_mut(), back: back.as_deref_mut() };
            measure::run_sender(&mut sess, pair, &mut bufs[0], &cfg, fan.map(Slot::engine), shown)?;
        }
        // What the transport used, now that data has moved.
        let last = side_info(every_lane(transports.iter().map(|t| t.info())), &bufs[0], setup_time);
        report.receiver_transport = exchange_info(&mut sess.ctrl, last.clone(), Role::Sender)?;
        report.sender_transport = last;
        report.attach_nixl();
        Ok(())
    })();
    let result = result.map_err(|e| fail(fan, &mut sess.ctrl, e));
    drop((back, transports, bufs));
    (Some(report), result)
}

/// What the sender proposes, and the protocol it speaks (the fault matrix
/// breaks either on purpose).
fn sender_hello(run: &SenderOptions, plan: Plan, fan: Option<Slot>) -> (Hello, u16) {
    let hello = Hello {
        role: if run.fault == Some(Fault::WrongRole) { Role::Receiver } else { Role::Sender },
        env: EnvInfo::collect(),
        plan_digest: match run.fault {
            Some(Fault::BadDigest) => "0".repeat(16),
            _ => plan.digest(),
        },
        plan,
        transport: run.spec.clone(),
        link: run.link.clone(),
        cookie: random_cookie(),
        seat: fan.map(|f| f.fan.seat(f.pair)),
    };
    (hello, if run.fault == Some(Fault::BadProtocol) { 999 } else { PROTOCOL })
}

/// Ends a failed pair: the other pairs of its fan stop, the peer is told.
fn fail(fan: Option<Slot>, ctrl: &mut Control, e: Error) -> Error {
    if let Some(f) = fan {
        f.fan.fail(f.pair, &e);
    }
    ctrl.settle(e)
}

/// Everything the receiver needs to serve one sender.
pub struct ReceiverSide {
    /// How long it waits for a sender to connect.
    pub wait: Duration,
    pub timeout: Duration,
    /// What the operator expects of the sender (refused otherwise).
    pub expect: Expectations,
    pub memory: MemorySpec,
    pub local: LocalOptions,
    pub screen: Screen,
    /// In service mode: whom to tell the senders that come meanwhile.
    pub busy: Option<Arc<dyn Serving>>,
}

/// Who tells the senders that come during a run that it is busy.
pub trait Serving: Send + Sync {
    /// A run has all its senders, `peers`.
    fn serving(&self, peers: &[SocketAddr]);
}

impl ReceiverSide {
    /// Every sender of the run has joined: later ones hear it is busy.
    pub fn mark_busy(&self, peers: &[SocketAddr]) {
        if let Some(b) = &self.busy {
            b.serving(peers);
        }
    }

    pub fn run(&self, listener: &std::net::TcpListener) -> (Option<RunReport>, Result<()>) {
        let _side = tracing::debug_span!("recv").entered();
        let env = EnvInfo::collect();
        match session::accept_receiver(listener, self.wait, self.timeout, &self.expect, &env) {
            Ok(sess) => self.serve(sess, env, None),
            Err(e) => (None, Err(e)),
        }
    }

    /// Serves one welcomed sender; with a fan slot, as one pair of a
    /// many-to-one hub.
    pub fn serve(
        &self,
        mut sess: session::ReceiverSession,
        env: EnvInfo,
        fan: Option<Slot>,
    ) -> (Option<RunReport>, Result<()>) {
        let seat = fan.map(|f| f.fan.seat(f.pair)).or(sess.hello.seat);
        if let Some(seat) = seat {
            sess.hello.plan.seat(seat.index);
        }
        let mut report = RunReport::new(Role::Receiver, &sess.hello, env);
        if let Some(f) = fan {
            report.fan = Some(FanRun { seat: f.fan.seat(f.pair), hub: false, pair_reports: Vec::new() });
        }
        let (mut bufs, mut transports, mut back) = (Vec::new(), Vec::new(), None);
        let result = (|| {
            let plan = &sess.hello.plan;
            let spec = sess.hello.transport.clone();
            transport::check_library(&spec, plan, &self.local)?;
            let (began, mut allocating) = (Instant::now(), Duration::ZERO);
            for _ in 0..plan.lanes() {
                let (memory, timeout, at) = (self.memory, self.timeout, Instant::now());
                let mut buf = Buffer::new(memory, plan.max_buffer_bytes(), plan.max_messages(), timeout)?;
                if plan.conversation.is_some() {
                    buf.populate();
                }
                allocating += at.elapsed();
                let setup = Setup { ctrl: &mut sess.ctrl, cookie: sess.hello.cookie };
                transports.push(transport::open_receiver(&spec, setup, &mut buf, &self.local)?);
                bufs.push(buf);
            }
            if plan.moves_back() {
                let setup = Setup { ctrl: &mut sess.ctrl, cookie: sess.hello.cookie };
                back = Some(transport::open_sender(&spec, setup, &bufs[0], &self.local)?);
            }
            let (transport, buf) = (&mut transports[0], &mut bufs[0]);
            let setup_time = began.elapsed().saturating_sub(allocating);
            // The sender's details first: where its GPU is tells which link to look for.
            report.sender_transport = expect_info(&mut sess.ctrl)?;
            let mut setup_info = side_info(transport.info(), buf, setup_time);
            if sess.hello.link.is_none() {
                setup_info.detected_link = link::detect(
                    &link::Sides {
                        same_host: sess.hello.env.hostname == report.receiver.hostname,
                        sender_gpu: report.sender_transport.gpu_bus_id.as_deref(),
                        receiver_gpu: setup_info.gpu_bus_id.as_deref(),
                        gpu_to_gpu: spec.kind != TransportKind::Tcp,
                        local_interface: link::detect::interface_with(sess.ctrl.local_addr.ip()),
                    },
                    &link::detect::Sysfs::system(),
                );
                report.link = setup_info.detected_link.clone();
            }
            sess.ctrl.send(&Msg::TransportInfo { info: Box::new(setup_info.clone()) })?;
            report.receiver_transport = setup_info.clone();
            self.screen.header(&report)?;
            if let Some(f) = fan {
                f.fan.joined(f.pair, &report);
            }
            let peak = report.link.clone();
            let cfg = RunConfig {
                fault: None,
                one_gpu: one_gpu(&sess.hello.env, &report.receiver, &report.sender_transport, &setup_info),
            };
            let mut shown = Shown { report: &mut report, screen: &self.screen, seen: 0 };
            if measure::on_lanes(&sess.hello.plan, seat.is_some()) {
                let mut lanes: Vec<_> = (transports.iter_mut().zip(bufs.iter_mut()))
                    .map(|(t, buf)| Lane { transport: t.as_mut() as &mut dyn transport::RecvSide, buf })
                    .collect();
                measure::lanes::run_receiver(
                    &mut sess,
                    &mut lanes,
                    peak.as_ref(),
                    fan.map(Slot::engine),
                    &mut shown,
                )?;
            } else {
                let pair = Transports { to_decode: transports[0].as_mut(), back: back.as_deref_mut() };
                measure::run_receiver(
                    &mut sess,
                    pair,
                    &mut bufs[0],
                    &cfg,
                    peak.as_ref(),
                    fan.map(Slot::engine),
                    &mut shown,
                )?;
            }
            let mut last = side_info(every_lane(transports.iter().map(|t| t.info())), &bufs[0], setup_time);
            last.detected_link = setup_info.detected_link;
            report.sender_transport = exchange_info(&mut sess.ctrl, last.clone(), Role::Receiver)?;
            report.receiver_transport = last;
            report.attach_nixl();
            Ok(())
        })();
        let result = result.map_err(|e| fail(fan, &mut sess.ctrl, e));
        drop((back, transports, bufs));
        (Some(report), result)
    }
}

/// Whether both sides' buffers are on the same GPU of one host.
fn one_gpu(sender: &EnvInfo, receiver: &EnvInfo, send: &TransportInfo, recv: &TransportInfo) -> bool {
    sender.hostname == receiver.hostname && send.gpu_bus_id.is_some() && send.gpu_bus_id == recv.gpu_bus_id
}

/// The first lane's transport details, with every lane's NIXL records.
fn every_lane(mut infos: impl Iterator<Item = TransportInfo>) -> TransportInfo {
    let mut first = infos.next().unwrap_or_default();
    for info in infos {
        if let (Some(mine), Some(theirs)) = (&mut first.nixl, info.nixl) {
            mine.absorb(theirs);
        }
    }
    first
}

/// A side's transport details, with its buffer and setup time.
fn side_info(mut info: TransportInfo, buf: &Buffer, setup: Duration) -> TransportInfo {
    info.memory = buf.describe();
    // Pinned memory is host memory: only GPU memory puts a GPU on the path.
    info.gpu_bus_id = buf.gpu_mem().map(|m| m.device.pci_bus_id.clone());
    info.setup_ns = Some(setup.as_nanos() as u64);
    info
}

/// A run's events, kept in its report and shown on its screen.
struct Shown<'a> {
    report: &'a mut RunReport,
    screen: &'a Screen,
    /// Requests shown so far.
    seen: u32,
}

impl measure::RunEvents for Shown<'_> {
    fn request(&mut self, point: usize, iteration: u32, bytes: usize, ns: u64) {
        self.seen += 1;
        // The run's first request is cold (connections, first touches of
        // memory), 3 to 12 times slower: the second is the first warm one.
        if self.seen == 2 {
            self.screen.warm_request(self.report, bytes, ns);
        }
        self.screen.request(point, iteration, bytes, ns);
    }

    fn checked(&mut self, verified_bytes: u64, wrong_bytes: u64) {
        let u = &mut self.report.unfinished;
        (u.0, u.1) = (u.0 + verified_bytes, u.1 + wrong_bytes);
    }

    fn point(&mut self, p: &crate::figures::PointResult) {
        self.screen.point(self.report, p);
        self.report.points.push(p.clone());
        self.report.unfinished = (0, 0);
        self.screen.checkpoint(self.report);
    }
}

/// The peer's transport details.
fn expect_info(ctrl: &mut Control) -> Result<TransportInfo> {
    ctrl.expect("waiting for the peer's transport details", |m| match m {
        Msg::TransportInfo { info } => Ok(*info),
        other => Err(other),
    })
}

/// Each side tells the other what its transport really set up.
fn exchange_info(ctrl: &mut Control, mine: TransportInfo, me: Role) -> Result<TransportInfo> {
    let send = |ctrl: &mut Control| ctrl.send(&Msg::TransportInfo { info: Box::new(mine.clone()) });
    if me == Role::Sender {
        send(ctrl)?;
    }
    let theirs = expect_info(ctrl)?;
    if me == Role::Receiver {
        send(ctrl)?;
    }
    Ok(theirs)
}

fn random_cookie() -> u64 {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
}
