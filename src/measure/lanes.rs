//! Requests in flight at once under load (`--concurrency N`, N > 1): N
//! lanes, each a transport connection (endpoint, stream) and a buffer of
//! its own on both sides, on a thread of its own. A decode instance reads
//! several requests' KV at a time (NixlConnector) and each needs its own
//! region: a request that arrives while others move starts at once, if a
//! lane is free, and shares the link with them.
//!
//! The receiver leads, as in the one-lane engine: requests are taken in
//! arrival order by the first lane that is free, which tells the sender
//! (`Take`); the sender's lane writes the pattern and says `LaneReady`;
//! the receiver's lane waits for the arrival (and, with `--on-full wait`,
//! for room), starts its clock and says go. Every lane first runs the
//! point's warm-ups on its own connection; the point's clock starts when
//! all have. One thread reads the control connection for all lanes and
//! answers its heartbeats; lanes pick their own messages.

use super::compute::{self, Compute, Computing, SharedCompute};
use super::load::{Admit, Landing, LoadTally};
use super::ttft::{Computed, PrefillOfPoint, Share, TtftTally};
use super::Pairs;
use super::{
    allowance, check_behind, point_result, spill_to_pool, wait_until_by, write_request, FanSlot, Fault,
    RoundSink, RunEvents, SLOWEST_DATA_BYTES_PER_SEC, SLOWEST_PATTERN_BYTES_PER_SEC,
};
use crate::error::{Error, Result};
use crate::figures::load::LoadFigures;
use crate::figures::prefill::PrefillFigures;
use crate::figures::{self, PointResult};
use crate::integrity::Check;
use crate::link::Link;
use crate::memory::{Buffer, SpillPool};
use crate::plan::{Plan, Point, RequestLayout, VerifyMode};
use crate::schedule::residency::OnFull;
use crate::session::{Control, Msg, ReceiverSession, SenderSession};
use crate::transport::{nanos, AtOnce, PeerLink, Ready, RecvSide, SendSide};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One lane of one side: its transport and its buffer.
pub struct Lane<'a, T: ?Sized> {
    pub transport: &'a mut T,
    pub buf: &'a mut Buffer,
}

/// The control connection shared by the lanes of one point.
struct Mailbox<'c> {
    ctrl: Mutex<&'c mut Control>,
    /// Signalled when messages were set aside, or the point failed.
    arrived: Condvar,
    failed: AtomicBool,
    /// The first error of the point: the one to report.
    error: Mutex<Option<Error>>,
    /// The lanes are done: the reader stops.
    done: AtomicBool,
    timeout: Duration,
    /// The hub's fan, whose other pairs' failures stop this one.
    fan: Option<&'c dyn Pairs>,
}

impl<'c> Mailbox<'c> {
    fn new(ctrl: &'c mut Control, fan: Option<&'c dyn Pairs>) -> Self {
        let timeout = ctrl.timeout;
        Mailbox {
            fan,
            ctrl: Mutex::new(ctrl),
            arrived: Condvar::new(),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            done: AtomicBool::new(false),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, &'c mut Control> {
        self.ctrl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the connection for every lane until they are done: answers
    /// heartbeats, sets the rest aside, and fails the point when the peer
    /// has gone, aborted or fallen silent for the timeout.
    fn read(&self) {
        let fd = self.lock().raw_fd();
        while !self.done.load(Relaxed) && !self.failed.load(Relaxed) {
            Control::poll_readable(fd, Duration::from_millis(1));
            let mut ctrl = self.lock();
            match ctrl.watch("moving requests in flight") {
                Ok(()) if ctrl.has_pending() => self.arrived.notify_all(),
                Ok(()) => {}
                Err(e) => {
                    drop(ctrl);
                    self.fail(e);
                }
            }
        }
    }

    /// The point fails with `e`, unless it failed already; every lane stops.
    fn fail(&self, e: Error) {
        let mut first = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        self.failed.store(true, Relaxed);
        self.arrived.notify_all();
    }

    /// The error a lane returns once another part of the point failed.
    fn stopped(&self) -> Error {
        Error::run("stopped: another lane of the point failed")
    }

    fn check(&self) -> Result<()> {
        crate::signals::check()?;
        if let Some(f) = self.fan {
            f.check()?;
        }
        match self.failed.load(Relaxed) {
            true => Err(self.stopped()),
            false => Ok(()),
        }
    }

    fn send(&self, msg: &Msg) -> Result<()> {
        self.check()?;
        self.lock().send(msg)
    }

    /// Waits by `deadline` for the message `pick` wants.
    fn expect(&self, deadline: Instant, awaiting: &str, pick: impl Fn(&Msg) -> bool) -> Result<Msg> {
        let mut ctrl = self.lock();
        loop {
            self.check()?;
            if let Some(m) = ctrl.take_pending(&pick) {
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::run(format!(
                    "no word from the {} for {} while {awaiting}",
                    ctrl.peer_role,
                    humantime::format_duration(Duration::from_millis(self.timeout.as_millis() as u64))
                )));
            }
            let wait = left.min(Duration::from_millis(5));
            ctrl = self.arrived.wait_timeout(ctrl, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Runs the lanes and the reader; the point's first error, if any.
    fn run<T: Send>(&self, lanes: Vec<impl FnOnce() -> Result<T> + Send>) -> Result<Vec<T>> {
        let results: Vec<Result<T>> = std::thread::scope(|s| {
            let reader = s.spawn(|| self.read());
            let threads: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    s.spawn(move || {
                        super::precise_sleeps();
                        let r = lane();
                        if let Err(e) = &r {
                            self.fail(e.clone());
                        }
                        r
                    })
                })
                .collect();
            let results = threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| Err(Error::run("internal error: a lane panicked"))))
                .collect();
            self.done.store(true, Relaxed);
            let _ = reader.join();
            results
        });
        if let Some(e) = self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        results.into_iter().collect()
    }
}

/// The control connection as a lane's transport sees it.
struct LaneLink<'m, 'c> {
    mail: &'m Mailbox<'c>,
    go: Option<Msg>,
}

impl PeerLink for LaneLink<'_, '_> {
    fn go(&mut self) -> Result<()> {
        match self.go.take() {
            Some(msg) => self.mail.send(&msg),
            None => Err(Error::run("internal error: a transport said go twice, or on the sender")),
        }
    }

    /// The reader thread keeps the heartbeat; a lane only learns of failures.
    fn watch(&mut self) -> Result<()> {
        self.mail.check()
    }
}

/// Waits for every lane of a side (warm-ups done) before the point's clock starts.
struct Gate {
    waiting: Mutex<usize>,
    opened: Condvar,
    start: OnceLock<Instant>,
}

impl Gate {
    fn new(lanes: usize) -> Self {
        Gate { waiting: Mutex::new(lanes), opened: Condvar::new(), start: OnceLock::new() }
    }

    /// The instant the last lane arrived; fails with the point.
    fn pass(&self, mail: &Mailbox, by: Instant) -> Result<Instant> {
        let mut left = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        *left -= 1;
        if *left == 0 {
            self.start.get_or_init(Instant::now);
            self.opened.notify_all();
        }
        while *left > 0 {
            mail.check()?;
            if Instant::now() > by {
                return Err(Error::run("the lanes' warm-ups did not end within their allowance"));
            }
            left =
                self.opened.wait_timeout(left, Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(*self.start.get().expect("set by the last lane"))
    }
}

/// The decode instance that the pairs of a many-to-one hub feed under
/// load (N prefill instances into one decode, or a P x D decode rank's
/// prefill ranks): one clock for all their lanes, one decode buffer that
/// admits every pair's requests, one tally of them all.
pub struct SharedDecode {
    /// Every pair's lanes together.
    lanes: usize,
    /// Each point's phases (the second with emulated prefill) by (point, computes).
    points: Mutex<HashMap<(usize, bool), Arc<SharedPoint>>>,
}

struct SharedPoint {
    gate: Gate,
    tally: Mutex<LoadTally>,
    /// Every pair's added TTFT (a P x D request's shares joined), and in
    /// the first phase each length's transfer alone.
    ttft: Mutex<TtftTally>,
    /// With emulated prefill: what its figures take from the plan.
    prefill: Option<PrefillOfPoint>,
}

/// What the hub's aggregate of a load point takes from the shared tally.
pub struct SharedFigures {
    pub load: LoadFigures,
    /// Bytes over the time some pair's request was on the wire.
    pub gbps: f64,
    /// Each request's transfer, its pieces (a P x D rank's pairs) joined.
    pub transfer_ns: Histogram<u64>,
    /// With emulated prefill: every pair's added TTFT, and the load of the
    /// phase that computed (what computes and its time alone are each pair's).
    pub prefill: Option<PrefillFigures>,
}

impl SharedDecode {
    pub fn new(lanes: usize) -> Self {
        SharedDecode { lanes, points: Mutex::new(HashMap::new()) }
    }

    /// Point `p`'s shared state in the phase that `computes` or not; the
    /// first pair to reach it makes it.
    fn point(&self, p: usize, computes: bool, make: impl FnOnce(usize) -> SharedPoint) -> Arc<SharedPoint> {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.entry((p, computes)).or_insert_with(|| Arc::new(make(self.lanes))).clone()
    }

    /// Point `p`'s figures over every pair, once all are done with it.
    pub fn take(&self, p: usize) -> Option<SharedFigures> {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        let (alone, computing) = (points.remove(&(p, false))?, points.remove(&(p, true)));
        drop(points);
        let tally = alone.tally.lock().unwrap_or_else(|e| e.into_inner());
        let transfer_ns = tally.transfer_ns();
        let prefill = match (computing, &alone.prefill) {
            (Some(c), Some(of)) => {
                let mut ttft = TtftTally::new(true);
                ttft.merge(&alone.ttft.lock().unwrap_or_else(|e| e.into_inner()));
                ttft.merge(&c.ttft.lock().unwrap_or_else(|e| e.into_inner()));
                let mut f = of.figures(&ttft, transfer_ns.value_at_quantile(0.5));
                f.under_load = Some(Box::new(c.tally.lock().unwrap_or_else(|e| e.into_inner()).figures()));
                Some(f)
            }
            _ => None,
        };
        Some(SharedFigures { load: tally.figures(), gbps: tally.transfer_gbps(), transfer_ns, prefill })
    }
}

/// What any one request may take, data and pattern, at the slowest rates.
fn per_request(timeout: Duration, bytes: usize) -> Duration {
    let at = |rate: f64| Duration::from_secs_f64(bytes as f64 / rate);
    timeout + at(SLOWEST_DATA_BYTES_PER_SEC) + at(SLOWEST_PATTERN_BYTES_PER_SEC)
}

pub fn run_sender(
    sess: &mut SenderSession,
    lanes: &mut [Lane<'_, dyn SendSide>],
    fault: Option<Fault>,
    fan: Option<FanSlot>,
    events: &mut dyn RunEvents,
) -> Result<Vec<PointResult>> {
    let plan = sess.hello.plan.clone();
    let ctrl = &mut sess.ctrl;
    let timeout = ctrl.timeout;
    let mut results = Vec::new();
    let mut filled = vec![false; lanes.len()];
    // One prefill instance: its lanes' requests (at a one-to-many hub,
    // every pair's) compute one after another.
    let shared = fan.and_then(|f| f.fan.compute());
    let compute: Option<Arc<dyn Compute>> = match (&plan.prefill, lanes.first(), shared) {
        (Some(_), Some(l), Some(s)) => Some(s.compute(l.buf)?),
        (Some(_), Some(l), None) => Some(Arc::from(compute::for_buffer(l.buf)?)),
        _ => None,
    };
    // Keys of the shared compute: a P x D request's shares are one request.
    let key_base = match (fan, &plan.tp) {
        (Some(f), None) => (f.pair as u64) << 40,
        _ => 0,
    };
    for point in plan.points() {
        let p = point.index;
        let sent = send_phase(ctrl, &plan, &point, lanes, &mut filled, None, fault, fan)?;
        // The first lane's first two requests: the run's cold start, and a warm one.
        for &(it, bytes, ns) in sent.first().into_iter().flatten().take(2) {
            events.request(p, it, bytes, ns);
        }
        // Emulated prefill: the compute alone, then the point again with it.
        if let (Some(c), Some(_)) = (compute.as_deref(), &point.prefill_ns) {
            let time = |ctrl: &mut Control| compute::alone_for_point(c, &plan, &point, ctrl);
            let runs_ns = match shared {
                Some(s) => s.alone(p, ctrl, time)?,
                None => time(ctrl)?,
            };
            let (compute, control_rtt_ns) = (c.describe(), sess.rtt.min_ns);
            ctrl.send(&Msg::ComputeAlone { point: p, runs_ns, compute, control_rtt_ns })?;
            let computing = Instance { compute: c, shared: shared.map(|s| (s, key_base)) };
            send_phase(ctrl, &plan, &point, lanes, &mut filled, Some(computing), fault, fan)?;
        }
        let by = Instant::now() + per_request(timeout, plan.max_request_bytes());
        let result = ctrl.expect_by(by, &format!("waiting for the results of point {p}"), |m| match m {
            Msg::PointDone { result } => Ok(*result),
            other => Err(other),
        })?;
        if let Some(f) = fan {
            f.fan.point_done(f.pair, &result);
        }
        events.point(&result);
        results.push(result);
    }
    super::expect_finish(ctrl)?;
    Ok(results)
}

/// The prefill instance's compute as a sender's lanes use it: at a
/// one-to-many hub shared, each request by its key (added to `key_base`).
#[derive(Clone, Copy)]
struct Instance<'a> {
    compute: &'a dyn Compute,
    shared: Option<(&'a SharedCompute, u64)>,
}

/// One phase of a point on every sending lane (with `compute`, the
/// second: each request's prefill computed as it goes); each lane's
/// requests' (iteration, bytes, ns on the wire).
#[allow(clippy::too_many_arguments)]
fn send_phase(
    ctrl: &mut Control,
    plan: &Plan,
    point: &Point,
    lanes: &mut [Lane<'_, dyn SendSide>],
    filled: &mut [bool],
    compute: Option<Instance>,
    fault: Option<Fault>,
    fan: Option<FanSlot>,
) -> Result<Vec<Vec<(u32, usize, u64)>>> {
    let timeout = ctrl.timeout;
    // Every lane of the instance (at a one-to-many hub, of every pair) may compute ahead.
    let pairs = compute.and_then(|c| c.shared).and(fan).map_or(1, |f| f.fan.pairs() as u32);
    let ahead = lanes.len() as u32 * pairs - 1;
    // Between two of a lane's requests: the one before it, its checks, its wait for room.
    let longest_wait = plan.load.as_ref().map_or(Duration::ZERO, |l| l.longest_wait(point));
    let computing = compute.map_or(Duration::ZERO, |_| super::prefill_allowance(point) * (ahead + 1));
    let take_within =
        per_request(timeout, plan.max_request_bytes()) * (plan.warmup + 1) + longest_wait + computing;
    let mail = Mailbox::new(ctrl, fan.map(|f| f.fan));
    let work: Vec<_> = lanes
        .iter_mut()
        .zip(filled.iter_mut())
        .enumerate()
        .map(|(lane, (l, filled))| {
            let s =
                SendingLane { lane: lane as u32, plan, point, mail: &mail, fault, timeout, compute, ahead };
            move || s.run(l, filled, take_within, longest_wait)
        })
        .collect();
    mail.run(work)
}

/// A sending lane's share of a point.
struct SendingLane<'a, 'c> {
    lane: u32,
    plan: &'a Plan,
    point: &'a Point,
    mail: &'a Mailbox<'c>,
    fault: Option<Fault>,
    timeout: Duration,
    /// The prefill instance's compute, in the phase that computes.
    compute: Option<Instance<'a>>,
    /// The other lanes, whose requests may compute ahead of this one's.
    ahead: u32,
}

impl SendingLane<'_, '_> {
    /// The requests the receiver hands this lane, until it says none is
    /// left; each one's (request, bytes, ns on the wire).
    fn run(
        &self,
        l: &mut Lane<'_, dyn SendSide>,
        filled: &mut bool,
        take_within: Duration,
        longest_wait: Duration,
    ) -> Result<Vec<(u32, usize, u64)>> {
        let (plan, point, p, lane) = (self.plan, self.point, self.point.index, self.lane);
        let mut sent = Vec::new();
        loop {
            let take = self.mail.expect(
                Instant::now() + take_within,
                &format!("waiting for lane {lane}'s next request of point {p}"),
                |m| matches!(m, Msg::Take { lane: l, point, .. } if *l == lane && *point == p),
            )?;
            let Msg::Take { it: Some(it), in_ns, .. } = take else { return Ok(sent) };
            let request = plan.request_id(p, it);
            let layout = point.layout_at(plan.warmup, it);
            let bytes = layout.total_bytes();
            let computing = self.computing(it, layout);
            let ready: &dyn Ready = computing.as_ref().map_or(&AtOnce, |c| c);
            let on_wire = write_request(plan, point, it, l.buf, filled, self.fault)?;
            self.mail.send(&Msg::LaneReady { lane, request })?;
            let by = Instant::now()
                + Duration::from_nanos(in_ns)
                + per_request(self.timeout, bytes)
                + longest_wait;
            let mut deadline = allowance(self.timeout, bytes, SLOWEST_DATA_BYTES_PER_SEC)
                + computing.as_ref().map_or(Duration::ZERO, |c| c.allowance());
            if l.transport.go_in_band() {
                deadline += by.saturating_duration_since(Instant::now());
            } else {
                let awaiting = format!("waiting for the receiver's go for {}", crate::plan::Req(request));
                self.mail.expect(
                    by,
                    &awaiting,
                    |m| matches!(m, Msg::LaneGo { lane: l, request: r } if *l == lane && *r == request),
                )?;
                ready.go();
            }
            let sending = Instant::now();
            let mut link = LaneLink { mail: self.mail, go: None };
            l.transport.send(&*l.buf, layout, on_wire, deadline, &mut link, ready)?;
            sent.push((it, bytes, nanos(sending.elapsed())));
            if let Some(c) = &computing {
                let (began, ended) = c.finish(deadline)?;
                self.mail.send(&Msg::Computed { request, began, ended })?;
            }
        }
    }

    /// In the phase that computes, request `it`'s prefill: its own prompt
    /// length's layers, behind what the instance's other lanes compute.
    fn computing<'l>(&self, it: u32, layout: &'l RequestLayout) -> Option<Computing<'l>>
    where
        Self: 'l,
    {
        let (c, prefill) = (self.compute?, self.plan.prefill.as_ref()?);
        let layer_ns = self.plan.layer_ns_at(self.point, it)?;
        let computing = Computing::new(c.compute, layout, layer_ns, prefill.overlap).behind(self.ahead);
        Some(match c.shared {
            Some((s, key_base)) => {
                // Each lane runs the warm-ups: a warm-up's shares are those of the same lane.
                let lane = if self.plan.measured(self.point, it) { 0 } else { (self.lane as u64 + 1) << 56 };
                computing.keyed(s, key_base + lane + self.plan.request_id(self.point.index, it))
            }
            None => computing,
        })
    }
}

/// What the lanes of a receiver gather over one point.
struct PointTally {
    requests: Histogram<u64>,
    messages: Histogram<u64>,
    check: Check,
    first_request_ns: u64,
}

pub fn run_receiver(
    sess: &mut ReceiverSession,
    lanes: &mut [Lane<'_, dyn RecvSide>],
    link: Option<&Link>,
    fan: Option<FanSlot>,
    events: &mut dyn RunEvents,
) -> Result<Vec<PointResult>> {
    let plan = sess.hello.plan.clone();
    let load = plan.load.clone().ok_or_else(|| Error::run("internal error: lanes without a load"))?;
    let same_host = super::same_host(sess);
    // The prefill instance's lanes, whose computes may go ahead of a request's:
    // a sender that feeds several receivers computes for all of them.
    let computing_lanes = lanes.len() * sess.hello.seat.map_or(1, |s| s.pairs as usize);
    // Each lane's pinned pool comes before the first request (see run_receiver).
    let mut pools: Vec<Option<SpillPool>> = Vec::new();
    for l in lanes.iter() {
        pools.push(match load.decode_buffer {
            Some((_, OnFull::Spill)) => Some(SpillPool::for_buffer(l.buf, plan.max_request_bytes())?),
            _ => None,
        });
    }
    let mut results = Vec::new();
    super::precise_sleeps();
    for point in plan.points() {
        let mut phase = Phase {
            plan: &plan,
            point: &point,
            computes: false,
            ttft: Mutex::new(TtftTally::new(same_host)),
            computing_lanes: computing_lanes as u32,
        };
        let (mut g, l) = phase.receive(&mut sess.ctrl, lanes, &mut pools, fan)?;
        // Emulated prefill: the compute alone, then the point again with it.
        let computing = match plan.prefill.is_some() {
            true => {
                let (runs, what, rtt) = super::expect_compute_alone(&mut sess.ctrl, &point)?;
                phase.ttft.get_mut().unwrap_or_else(|e| e.into_inner()).alone(&runs, what, rtt);
                phase.computes = true;
                let (g1, l1) = phase.receive(&mut sess.ctrl, lanes, &mut pools, fan)?;
                g.check.merge(g1.check);
                Some(l1)
            }
            false => None,
        };
        let mut result =
            point_result(&point, &plan, &g.requests, &g.messages, g.first_request_ns, g.check, None)?;
        (result.gbps, result.gbps_p50) = (l.transfer_gbps(), l.transfer_gbps());
        result.percent_of_peak = link.map(|k| 100.0 * result.gbps / k.peak_gbps);
        result.load = Some(l.figures());
        result.name_by_prompts();
        if let Some(l1) = computing {
            let ttft = phase.ttft.into_inner().unwrap_or_else(|e| e.into_inner());
            result.prefill = prefill_figures(&plan, &point, &ttft, result.request_ns.p50, &l1);
        }
        sess.ctrl.send(&Msg::PointDone { result: Box::new(result.clone()) })?;
        if let Some(f) = fan {
            f.fan.point_done(f.pair, &result);
        }
        events.point(&result);
        results.push(result);
    }
    sess.ctrl.send(&Msg::Finish)?;
    Ok(results)
}

/// A point's prefill figures: the added TTFT, and the load of the phase
/// that computed (`computing`).
fn prefill_figures(
    plan: &Plan,
    point: &Point,
    ttft: &TtftTally,
    alone_p50_ns: u64,
    computing: &LoadTally,
) -> Option<PrefillFigures> {
    let mut f = PrefillOfPoint::of(plan, point)?.figures(ttft, alone_p50_ns);
    f.under_load = Some(Box::new(computing.figures()));
    Some(f)
}

/// One phase of a load point: the transfer alone, or with emulated
/// prefill (the same schedule again, each request computed as it goes).
struct Phase<'a> {
    plan: &'a Plan,
    point: &'a Point,
    computes: bool,
    /// This pair's added TTFT, and in the first phase each length's transfer alone.
    ttft: Mutex<TtftTally>,
    /// Requests the prefill instance may compute at once, one after another.
    computing_lanes: u32,
}

impl Phase<'_> {
    /// The phase on every lane: what this pair gathered, and its load tally.
    fn receive(
        &self,
        ctrl: &mut Control,
        lanes: &mut [Lane<'_, dyn RecvSide>],
        pools: &mut [Option<SpillPool>],
        fan: Option<FanSlot>,
    ) -> Result<(PointTally, LoadTally)> {
        let (plan, point) = (self.plan, self.point);
        let p = point.index;
        let load = plan.load.as_ref().ok_or_else(|| Error::run("internal error: lanes without a load"))?;
        let point_load =
            point.load.as_ref().ok_or_else(|| Error::run("internal error: a point without load"))?;
        let tally = |buffer, lanes| LoadTally::new(point_load, load.decode_hold_ns, buffer).servers(lanes);
        // At a hub, the decode instance's clock, buffer and tallies are every pair's.
        let shared = fan.and_then(|f| {
            let make = |lanes| SharedPoint {
                gate: Gate::new(lanes),
                tally: Mutex::new(tally(load.decode_buffer, lanes)),
                ttft: Mutex::new(TtftTally::new(true)),
                prefill: PrefillOfPoint::of(plan, point),
            };
            f.fan.decode().map(|d| (f, d, d.point(p, self.computes, make)))
        });
        let own = Mutex::new(tally(if shared.is_some() { None } else { load.decode_buffer }, lanes.len()));
        let gathered = Mutex::new(PointTally {
            requests: figures::new_histogram(),
            messages: figures::new_histogram(),
            check: Check::default(),
            first_request_ns: 0,
        });
        let (next, own_gate) = (AtomicU32::new(0), Gate::new(lanes.len()));
        let timeout = ctrl.timeout;
        let computing = if self.computes {
            super::prefill_allowance(point) * self.computing_lanes
        } else {
            Duration::ZERO
        };
        let warmups_within = (per_request(timeout, plan.max_request_bytes()) + computing) * (plan.warmup + 1);
        let mail = Mailbox::new(ctrl, fan.map(|f| f.fan));
        let gate = shared.as_ref().map_or(&own_gate, |(_, _, s)| &s.gate);
        // The pairs of a P x D decode rank carry shares of one stream of requests.
        let (key_base, shares) = match (shared.as_ref(), &plan.tp) {
            (Some((f, _, _)), None) => ((f.pair as u64) << 32, 1),
            (Some((f, _, _)), Some(t)) => Share::of_instance(t, f.fan.pairs()),
            (None, _) => (0, 1),
        };
        let work: Vec<_> = lanes
            .iter_mut()
            .zip(pools.iter_mut())
            .enumerate()
            .map(|(lane, (l, pool))| {
                let ctx = LaneContext {
                    lane: lane as u32,
                    plan,
                    point,
                    mail: &mail,
                    admits: shared.as_ref().map_or(&own, |(_, _, s)| &s.tally),
                    own: shared.as_ref().map(|_| &own),
                    key_base,
                    shares,
                    gathered: &gathered,
                    timeout,
                    first_it: if self.computes { plan.phase_len(point) } else { 0 },
                    ttft: &self.ttft,
                    shared_ttft: shared.as_ref().map(|(_, _, s)| &s.ttft),
                    computing,
                };
                let next = &next;
                move || ctx.run(l, pool, next, gate, warmups_within)
            })
            .collect();
        mail.run(work)?;
        let g = gathered.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok((g, own.into_inner().unwrap_or_else(|e| e.into_inner())))
    }
}

/// What a receiving lane shares with the others during a point.
struct LaneContext<'a, 'c> {
    lane: u32,
    plan: &'a Plan,
    point: &'a Point,
    mail: &'a Mailbox<'c>,
    /// The tally that admits requests to the decode buffer: this pair's,
    /// or at a hub the decode instance's.
    admits: &'a Mutex<LoadTally>,
    /// At a hub, this pair's own tally besides (its figures for its sender).
    own: Option<&'a Mutex<LoadTally>>,
    /// Added to a request's number for its key in the shared tally.
    key_base: u64,
    /// The pairs that carry a share of each request (P x D), else 1.
    shares: usize,
    gathered: &'a Mutex<PointTally>,
    timeout: Duration,
    /// The phase's first iteration: 0, or with emulated prefill the second
    /// phase's (the same schedule again, each request computed as it goes).
    first_it: u32,
    /// This pair's added TTFT; at a hub, the decode instance's besides.
    ttft: &'a Mutex<TtftTally>,
    shared_ttft: Option<&'a Mutex<TtftTally>>,
    /// What the phase's computes may add to a request's wait.
    computing: Duration,
}

impl LaneContext<'_, '_> {
    fn tally(&self) -> std::sync::MutexGuard<'_, LoadTally> {
        self.admits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lane's requests of the point: its warm-ups, then timed ones in
    /// arrival order as it is free, from the clock that `gate` starts.
    fn run(
        &self,
        l: &mut Lane<'_, dyn RecvSide>,
        pool: &mut Option<SpillPool>,
        next: &AtomicU32,
        gate: &Gate,
        warmups_within: Duration,
    ) -> Result<()> {
        let point_load = self.point.load.as_ref().expect("a load point");
        let (n, warmup) = (point_load.schedule.len() as u32, self.plan.warmup);
        let arrives = |k: u32| Duration::from_nanos(point_load.schedule[k as usize].at_ns);
        let first = self.first_it;
        for it in first..first + warmup {
            self.take(it, Duration::ZERO)?;
            self.request(l, pool, it, None)?;
        }
        // The lane's first timed request is prepared before the clock
        // starts, as every later one is before its arrival.
        let mut k = next.fetch_add(1, Relaxed);
        if k < n {
            self.take(first + warmup + k, warmups_within + arrives(k))?;
        }
        let start = gate.pass(self.mail, Instant::now() + warmups_within)?;
        self.tally().set_start(start);
        if let Some(own) = self.own {
            own.lock().unwrap_or_else(|e| e.into_inner()).set_start(start);
        }
        let first_k = k;
        while k < n {
            if k != first_k {
                let at = start + arrives(k);
                self.take(first + warmup + k, at.saturating_duration_since(Instant::now()))?;
            }
            self.request(l, pool, first + warmup + k, Some(start))?;
            k = next.fetch_add(1, Relaxed);
        }
        self.mail.send(&Msg::Take { lane: self.lane, point: self.point.index, it: None, in_ns: 0 })
    }

    /// Hands request `it` to the sender's lane, which writes its pattern;
    /// it goes within `within` (its arrival, as far as the receiver knows).
    fn take(&self, it: u32, within: Duration) -> Result<()> {
        let (lane, p) = (self.lane, self.point.index);
        let request = self.plan.request_id(p, it);
        let bytes = self.point.layout_at(self.plan.warmup, it).total_bytes();
        self.mail.send(&Msg::Take { lane, point: p, it: Some(it), in_ns: nanos(within) })?;
        let by = Instant::now() + per_request(self.timeout, bytes) + self.computing;
        self.mail.expect(
            by,
            &format!("waiting for the sender to prepare {}", crate::plan::Req(request)),
            |m| matches!(m, Msg::LaneReady { lane: l, request: r } if *l == lane && *r == request),
        )?;
        Ok(())
    }

    /// Waits for request `it`'s arrival, then (--on-full wait) until it
    /// fits: the room is taken at once, as another lane may be deciding too.
    fn admit(&self, it: u32, layout: &RequestLayout, arrived: Instant) -> Result<Admit> {
        wait_until_by(arrived, &mut || self.mail.check())?;
        check_behind(self.plan, self.point, it, arrived, self.timeout)?;
        let (waiting, mut waited) = (Instant::now(), false);
        let admitted = loop {
            match self.tally().admit(Instant::now(), layout) {
                Admit::Wait(until) => {
                    waited = true;
                    if waiting.elapsed() > self.timeout {
                        return Err(Error::run(format!(
                            "{} found no room in the decode buffer for --timeout {}",
                            crate::plan::Req(self.plan.request_id(self.point.index, it)),
                            humantime::format_duration(self.timeout),
                        )));
                    }
                    let poll = Instant::now() + Duration::from_millis(1);
                    wait_until_by(until.map_or(poll, |u| u.min(poll)), &mut || self.mail.check())?;
                }
                go => break go,
            }
        };
        if waited {
            self.tally().waited(nanos(waiting.elapsed()));
        }
        Ok(admitted)
    }

    /// With emulated prefill, a request's account: in the first phase its
    /// transfer alone, in the second the sender's compute (sent once it has
    /// ended), which gives its added TTFT; this pair's and, at a hub, the
    /// decode instance's (a P x D request's shares joined).
    fn prefill_account(
        &self,
        it: u32,
        tokens: u32,
        (go, last): (u64, u64),
        computes: bool,
        deadline: Instant,
    ) -> Result<()> {
        let (plan, measured) = (self.plan, self.plan.measured(self.point, it));
        let request = plan.request_id(self.point.index, it);
        fn lock(t: &Mutex<TtftTally>) -> std::sync::MutexGuard<'_, TtftTally> {
            t.lock().unwrap_or_else(|e| e.into_inner())
        }
        let c = match computes {
            true => {
                let awaiting = format!("waiting for the compute of {}", crate::plan::Req(request));
                let m = self.mail.expect(
                    deadline,
                    &awaiting,
                    |m| matches!(m, Msg::Computed { request: r, .. } if *r == request),
                )?;
                let Msg::Computed { began, ended, .. } = m else { unreachable!("picked") };
                let c = Computed { began, ended };
                lock(self.ttft).request(tokens, go, last, c, measured);
                Some(lock(self.ttft).place(go, c))
            }
            false => {
                if measured {
                    lock(self.ttft).transfer_alone(tokens, last.saturating_sub(go));
                }
                None
            }
        };
        if let Some(shared) = self.shared_ttft {
            let key = self.key_base + (it % plan.phase_len(self.point)) as u64;
            let shares = self.shares;
            lock(shared).share(Share { key, shares, tokens, go, last, computed: c, measured });
        }
        Ok(())
    }

    /// One request on this lane, taken already: a warm-up (no start), or a
    /// timed one that goes at its arrival from `start`, once it fits.
    fn request(
        &self,
        l: &mut Lane<'_, dyn RecvSide>,
        pool: &mut Option<SpillPool>,
        it: u32,
        start: Option<Instant>,
    ) -> Result<()> {
        let (plan, point, p, lane) = (self.plan, self.point, self.point.index, self.lane);
        let request = plan.request_id(p, it);
        let layout = point.layout_at(plan.warmup, it);
        let bytes = layout.total_bytes();
        let arrival = match (start, point.arrival(plan.warmup, it)) {
            (Some(s), Some(a)) => Some((a, s + Duration::from_nanos(a.at_ns))),
            _ => None,
        };
        let admitted = match arrival {
            Some((_, arrived)) => self.admit(it, layout, arrived)?,
            None => Admit::Go { ticket: None, spills: Vec::new() },
        };
        let Admit::Go { ticket, spills } = admitted else { unreachable!("admitted") };
        let mut sink = RoundSink::new(layout, plan.verify == VerifyMode::Inline);
        sink.begin(request);
        let computes = plan.computes(point, it);
        let deadline = allowance(self.timeout, bytes, SLOWEST_DATA_BYTES_PER_SEC)
            + if computes { self.computing } else { Duration::ZERO };
        let (t0, go_mono) = (Instant::now(), crate::clock::mono_ns());
        let go = (!l.transport.go_in_band()).then_some(Msg::LaneGo { lane, request });
        let mut link = LaneLink { mail: self.mail, go };
        let timing = l.transport.recv(l.buf, layout, request, deadline, &mut link, &sink)?;
        let now = Instant::now();
        let landed = timing.landed.unwrap_or(now);
        let last_mono = crate::clock::mono_ns().saturating_sub(nanos(now - landed));
        let host_ns = nanos(landed.saturating_duration_since(t0));
        if let Some((a, _)) = arrival {
            let note = |n, store, load| self.tally().spilled(n, store, load);
            let (in_place, in_pool) = spill_to_pool(l.buf, pool.as_mut(), &spills, landed, deadline, note)?;
            let hold_ns = plan.load.as_ref().map_or(0, |ld| ld.hold_ns(a));
            let landing = |ticket| Landing {
                ticket,
                key: self.key_base + it as u64,
                at_ns: a.at_ns,
                go: t0,
                landed: in_place,
                bytes: bytes as u64,
                tokens: layout.tokens,
                hold_ns,
                in_pool,
            };
            self.tally().landed(landing(ticket));
            if let Some(own) = self.own {
                own.lock().unwrap_or_else(|e| e.into_inner()).landed(landing(None));
            }
        }
        sink.check_complete()?;
        let request_ns = timing.elapsed_ns.unwrap_or(host_ns).max(1);
        if plan.prefill.is_some() {
            self.prefill_account(it, layout.tokens, (go_mono, last_mono), computes, deadline)?;
        }
        let check = sink.found(plan.verify, l.buf, layout)?;
        let mut g = self.gathered.lock().unwrap_or_else(|e| e.into_inner());
        if it == 0 && lane == 0 {
            g.first_request_ns = request_ns;
        }
        if it >= plan.warmup {
            g.requests.saturating_record(request_ns);
            sink.record_into(&mut g.messages);
        }
        g.check.merge(check);
        Ok(())
    }
}
