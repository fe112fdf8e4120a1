//! The hub of a fan: `kvxfer-recv --senders N` serves N senders at once
//! (many-to-one: the incast a decode GPU sees) and `kvxfer-send --connect
//! A,B,...` feeds N receivers (one-to-many). Each pair runs on its own
//! thread with its own buffer and transport; `crate::fan::Fan` lines up
//! their rounds and sums them into the hub's report.

use super::args::{SendArgs, MAX_FAN};
use super::{sender_options, Outputs};
use crate::env::EnvInfo;
use crate::error::{Error, Result};
use crate::fan::Fan;
use crate::fan::Slot;
use crate::figures::PointResult;
use crate::link::{self, Link};
use crate::measure::compute::SharedCompute;
use crate::measure::lanes::SharedDecode;
use crate::memory::{self, MemorySpec};
use crate::plan::Plan;
use crate::report::screen::Screen;
use crate::report::FanRun;
use crate::report::RunReport;
use crate::run::{sender_side, ReceiverSide};
use crate::session::{self, ReceiverSession};
use crate::topology::{FanShape, Seat};
use crate::transport;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// How many receivers `--connect` names; the same one twice is refused
/// (it serves one sender, the second connection would wait in vain).
pub fn receivers(connect: &[String]) -> Result<usize> {
    if connect.len() > MAX_FAN as usize {
        return Err(Error::usage(format!(
            "--connect names {} receivers, more than {MAX_FAN}",
            connect.len()
        )));
    }
    for (i, addr) in connect.iter().enumerate() {
        if connect[..i].contains(addr) {
            return Err(Error::usage(format!(
                "--connect names {addr} twice: start one receiver per address"
            )));
        }
    }
    Ok(connect.len())
}

/// One sender, several receivers, all fed at once: `plans` has each pair's
/// (the same, or under different TP each decode rank's share).
pub fn send_many(a: &SendArgs, plans: Vec<Plan>, memory: MemorySpec, outputs: Outputs) -> Result<()> {
    let hub = Hub::new(super::screen_for(&a.run.output));
    let mut fan = hub.fan(FanShape::OneToMany, a.connect.len());
    fan.shares = plans[0].tp.is_some();
    if plans[0].prefill.is_some() {
        let shares = if fan.shares { a.connect.len() } else { 1 };
        let _ = fan.compute.set(SharedCompute::new(shares));
    }
    let silent = Screen::silent();
    let pairs = std::thread::scope(|s| {
        let threads: Vec<_> = (a.connect.iter().zip(plans).enumerate())
            .map(|(pair, (addr, plan))| {
                let (fan, silent) = (&fan, &silent);
                let slot = Some(Slot { fan, pair });
                let options = sender_options(&a.run);
                s.spawn(move || sender_side(addr, a.bind, &options, plan, memory, silent, slot))
            })
            .collect();
        threads.into_iter().map(joined).collect()
    });
    hub.conclude(&fan, pairs, outputs)
}

/// One receiver serving `n` senders at once (`first` already accepted,
/// when a P x D decode rank learnt from it how many feed it). All must
/// propose the same plan and transport, as their requests run side by
/// side; each is welcomed only once all have connected.
pub fn receive_many(
    listener: &TcpListener,
    side: ReceiverSide,
    outputs: Outputs,
    first: Option<ReceiverSession>,
    n: usize,
    lobby: &session::Lobby,
) -> Result<()> {
    let sessions = gather(listener, side.wait, first, n, lobby)?;
    // Closed: a sender it greeted past the n hears busy now, not after the run.
    lobby.close();
    serve_gathered(side, outputs, sessions)
}

/// A fan's `n` senders, `first` among them if given, each greeted by
/// `lobby` within `wait`; one that cannot join fails them all, told why.
pub fn gather(
    listener: &TcpListener,
    wait: std::time::Duration,
    mut first: Option<ReceiverSession>,
    n: usize,
    lobby: &session::Lobby,
) -> Result<Vec<ReceiverSession>> {
    let mut sessions: Vec<ReceiverSession> = Vec::new();
    loop {
        // A sender that left while waiting for the others is dropped: the
        // next one takes its seat, rather than joining a run that would fail.
        sessions.retain(|s| {
            let gone = s.ctrl.hung_up();
            if gone {
                eprintln!(
                    "kvxfer-recv: the sender from {} left before the others came: dropped",
                    s.ctrl.peer_addr
                );
            }
            !gone
        });
        if sessions.len() == n {
            return Ok(sessions);
        }
        let i = sessions.len();
        let accepted = match first.take() {
            Some(s) => Ok(s),
            None => lobby.next_sender(listener, wait),
        };
        let joined = accepted.and_then(|mut s| match mismatch(&sessions, &s.hello) {
            Some(why) => Err(session::refuse(&mut s, &why)),
            None => Ok(s),
        });
        match joined {
            Ok(s) => {
                eprintln!("kvxfer-recv: sender {} of {n} joined from {}", i + 1, s.ctrl.peer_addr);
                sessions.push(s);
            }
            Err(e) => {
                let why = format!("sender {} of {n} did not join: {e}", i + 1);
                sessions.iter_mut().for_each(|s| drop(session::refuse(s, &why)));
                return Err(e);
            }
        }
    }
}

/// A fan's senders, all gathered (by `gather`, here or in the service
/// that handed them over), served at once to the hub's report.
pub fn serve_gathered(
    mut side: ReceiverSide,
    outputs: Outputs,
    mut sessions: Vec<ReceiverSession>,
) -> Result<()> {
    let env = EnvInfo::collect();
    let n = sessions.len();
    side.mark_busy(&sessions.iter().map(|s| s.ctrl.peer_addr).collect::<Vec<_>>());
    // Seats in prefill rank order, under different TP.
    sessions.sort_by_key(|s| s.hello.plan.tp.as_ref().map(|t| (t.instance, t.pair.map(|(p, _)| p))));
    let (plan, spec) = (&sessions[0].hello.plan, &sessions[0].hello.transport);
    let buffered = plan.load.as_ref().is_some_and(|l| l.decode_buffer.is_some());
    if plan.conversation.is_some() && buffered {
        // Each pair's turns go on its own lane: a buffer each would be n of them.
        let why = "--decode-buffer with conversations into one receiver from several senders: one buffer \
                   across their turns is not built yet; run each pair alone, or without --decode-buffer";
        sessions.iter_mut().for_each(|s| drop(session::refuse(s, why)));
        return Err(Error::usage(why));
    }
    // Once, here: NCCL's log settings go into the environment before the threads.
    transport::check_library(spec, plan, &side.local)?;
    let bytes = n as u64 * plan.host_bytes(true, side.memory.kind.on_host());
    memory::check_host_budget(
        bytes,
        "the receiver's buffers (one per lane and sender, and a spill pool each)",
    )?;
    let hub = Hub::new(std::mem::replace(&mut side.screen, Screen::silent()));
    let mut fan = hub.fan(FanShape::ManyToOne, n);
    fan.shares = plan.tp.is_some();
    fan.instances = plan.tp.as_ref().map_or(1, |t| t.instances as usize);
    if plan.load.is_some() {
        let _ = fan.decode.set(SharedDecode::new(n * plan.lanes()));
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        session::welcome(s, &env, Some(fan.seat(i)))?;
    }
    let pairs = std::thread::scope(|s| {
        let threads: Vec<_> = (sessions.into_iter().enumerate())
            .map(|(pair, sess)| {
                let (side, fan, env) = (&side, &fan, env.clone());
                s.spawn(move || side.serve(sess, env, Some(Slot { fan, pair })))
            })
            .collect();
        threads.into_iter().map(joined).collect()
    });
    hub.conclude(&fan, pairs, outputs)
}

/// Why a sender cannot join the others of a many-to-one fan, if it cannot.
fn mismatch(joined: &[ReceiverSession], next: &session::Hello) -> Option<String> {
    let first = &joined.first()?.hello;
    let pair = |h: &session::Hello| h.plan.tp.as_ref().and_then(|t| t.pair);
    let instance = |h: &session::Hello| h.plan.tp.as_ref().map_or(0, |t| t.instance);
    if let (Some((p, d)), Some((_, first_d))) = (pair(next), pair(first)) {
        if d != first_d {
            return Some(format!(
                "this receiver serves decode rank {first_d}; prefill rank {p} sends decode rank {d}'s share"
            ));
        }
        if joined.iter().any(|s| pair(&s.hello) == Some((p, d)) && instance(&s.hello) == instance(next)) {
            return Some(format!(
                "prefill rank {p} of instance {} has joined already: each prefill rank connects once",
                instance(next)
            ));
        }
    }
    // Under different TP each sender's plan names its own pair: the rest must agree.
    if next.plan.shared_digest() != first.plan.shared_digest() {
        return Some(
            "plan mismatch: the senders of one receiver must propose the same plan (model, prompt lengths, \
             granularities, iterations), as their requests run together"
                .into(),
        );
    }
    (next.transport != first.transport).then(|| {
        let json = |t| serde_json::to_string(t).unwrap_or_default();
        format!(
            "transport mismatch: the senders of one receiver must ask for the same transport; the first asked for \
             {}, this one for {}",
            json(&first.transport),
            json(&next.transport)
        )
    })
}

type PairOutcome = (Option<RunReport>, Result<()>);

fn joined(t: std::thread::ScopedJoinHandle<'_, PairOutcome>) -> PairOutcome {
    t.join().unwrap_or_else(|_| (None, Err(Error::run("a pair's thread panicked"))))
}

/// The aggregate report as it grows, and the screen that shows it.
struct Hub {
    screen: Screen,
    report: Mutex<Option<RunReport>>,
}

impl Hub {
    fn new(screen: Screen) -> Arc<Hub> {
        Arc::new(Hub { screen, report: Mutex::new(None) })
    }

    fn fan(self: &Arc<Self>, shape: FanShape, pairs: usize) -> Fan {
        let hub = self.clone();
        let seat = Seat { shape, pairs: pairs as u32, index: 0 };
        Fan::new(shape, pairs, Box::new(move |p, joined| hub.aggregate(seat, p, joined)))
    }

    /// Shows an aggregate point, after the header on the first.
    fn aggregate(&self, seat: Seat, p: PointResult, joined: &[RunReport]) {
        let mut slot = self.report.lock().unwrap_or_else(|e| e.into_inner());
        let report = slot.get_or_insert_with(|| {
            let r = hub_report(&joined[0], seat, joined.to_vec());
            let _ = self.screen.header(&r);
            r
        });
        let mut p = p;
        p.percent_of_peak = report.link.as_ref().map(|l| 100.0 * p.gbps / l.peak_gbps);
        self.screen.point(report, &p);
        report.points.push(p);
        // Kept whole after each point, as a pair's: a run its library aborts keeps them.
        self.screen.checkpoint(report);
    }

    /// The hub's report with every pair's own inside, and the run's result:
    /// the error of the pair that failed first, which stopped the others.
    fn conclude(&self, fan: &Fan, pairs: Vec<PairOutcome>, outputs: Outputs) -> Result<()> {
        let mut reports = Vec::new();
        let mut errors = Vec::new();
        for (i, (report, result)) in pairs.into_iter().enumerate() {
            if let Some(mut r) = report {
                r.close(result.as_ref().err());
                reports.push(r);
            }
            if let Err(e) = result {
                errors.push((i, e));
            }
        }
        let first = errors.iter().position(|(i, _)| Some(*i) == fan.first_failed()).unwrap_or(0);
        let result = match errors.into_iter().nth(first) {
            Some((i, e)) => Err(e.context(format!("pair {i} of {}", fan.pairs))),
            None => Ok(()),
        };
        let seat = fan.seat(0);
        let built = self.report.lock().unwrap_or_else(|e| e.into_inner()).take();
        let report =
            built.or_else(|| reports.first().map(|r| hub_report(r, seat, reports.clone()))).map(|mut r| {
                r.fan = Some(FanRun { seat, hub: true, pair_reports: reports });
                r
            });
        outputs.conclude(report, result, &self.screen)
    }
}

/// The hub's report: pair 0's identity and transport, the aggregate points
/// to come, the fan's ceiling; the pairs as they stood after setup, for
/// the header.
fn hub_report(first: &RunReport, seat: Seat, pairs: Vec<RunReport>) -> RunReport {
    let mut r = first.clone();
    r.points.clear();
    r.gate = None;
    r.link = fan_ceiling(&pairs, seat);
    r.fan = Some(FanRun { seat, hub: true, pair_reports: pairs });
    r
}

/// The ceiling of the hub's aggregate: the links its pairs really cross,
/// each once, capped by the hub GPU's own attachment.
fn fan_ceiling(pairs: &[RunReport], seat: Seat) -> Option<Link> {
    let links: Vec<Option<Link>> = pairs.iter().map(|r| r.link.clone()).collect();
    let hub_gpu = pairs.first().and_then(|r| match seat.shape {
        FanShape::ManyToOne => r.receiver_transport.gpu_bus_id.clone(),
        FanShape::OneToMany => r.sender_transport.gpu_bus_id.clone(),
    });
    let attachment = match (hub_gpu, links.first().cloned().flatten()) {
        (Some(bus), Some(like)) => link::attachment(&bus, &like, &link::detect::Sysfs::system()),
        _ => None,
    };
    link::fan_ceiling(&links, attachment)
}
