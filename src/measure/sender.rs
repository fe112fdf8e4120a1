//! The sender of one lane: each request's life in order. With emulated
//! prefill its compute is prepared (and timed alone once a point); with
//! bidirectional turns the conversation's KV first comes back; the pattern
//! is written (and, for the fault matrix, broken); the sender says ready,
//! waits for the receiver's go, moves the bytes, and reports what the
//! receiver needs after them (the compute's span, a fan's time, a GPU
//! check's turn).

use super::compute::{self, Compute, Computing};
use super::{
    allowance, expect_finish, in_lockstep, turns, write_request, FanSlot, PointResult, RequestLink,
    RunConfig, RunEvents, Transports, SLOWEST_DATA_BYTES_PER_SEC, SLOWEST_PATTERN_BYTES_PER_SEC,
};
use crate::error::Result;
use crate::memory::Buffer;
use crate::plan::{Plan, Point, Req, RequestLayout, VerifyMode};
use crate::session::{Control, Msg, Role, SenderSession};
use crate::transport::{AtOnce, GpuCopier, Ready, RecvSide, SendSide};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn run_sender(
    sess: &mut SenderSession,
    transports: Transports<'_, dyn SendSide, dyn RecvSide>,
    buf: &mut Buffer,
    cfg: &RunConfig,
    fan: Option<FanSlot>,
    events: &mut dyn RunEvents,
) -> Result<Vec<PointResult>> {
    let Transports { to_decode, back } = transports;
    let plan = sess.hello.plan.clone();
    // One prefill instance: at a one-to-many hub, its pairs' requests
    // compute one after another on one compute (a P x D request once).
    let shared = fan.and_then(|f| f.fan.compute());
    let compute: Option<Arc<dyn Compute>> = match (&plan.prefill, shared) {
        (Some(_), Some(s)) => Some(s.compute(buf)?),
        (Some(_), None) => Some(Arc::from(compute::for_buffer(buf)?)),
        (None, _) => None,
    };
    let copier = cfg.copier(&plan, to_decode.gpu_copier());
    // Requests that differ in nothing the sender writes between them.
    let early_ready = plan.verify == VerifyMode::Off
        && compute.is_none()
        && fan.is_none()
        && plan.conversation.is_none()
        && copier.is_none()
        && cfg.fault.is_none();
    let rtt_ns = sess.rtt.min_ns;
    let mut s = Sender {
        plan: &plan,
        ctrl: &mut sess.ctrl,
        transport: to_decode,
        back: back.map(|b| -> &mut dyn RecvSide { b }),
        buf,
        cfg,
        fan,
        copier,
        rtt_ns,
        early_ready,
        announced: None,
        filled: false,
    };
    let mut results = Vec::new();
    for point in plan.points() {
        for it in 0..plan.requests_in(&point) {
            s.request(&point, it, compute.as_deref(), events)?;
        }
        let result = s.point_done(&point)?;
        events.point(&result);
        results.push(result);
    }
    expect_finish(s.ctrl)?;
    Ok(results)
}

/// What the sender keeps for a run.
struct Sender<'a> {
    plan: &'a Plan,
    ctrl: &'a mut Control,
    transport: &'a mut dyn SendSide,
    /// Bidirectional turns: decode's KV coming back.
    back: Option<&'a mut dyn RecvSide>,
    buf: &'a mut Buffer,
    cfg: &'a RunConfig,
    fan: Option<FanSlot<'a>>,
    copier: GpuCopier,
    rtt_ns: u64,
    /// Nothing is written between requests: ready for the next one early.
    early_ready: bool,
    /// The request already said ready for.
    announced: Option<u64>,
    /// A pattern is in the buffer (with checks off it is written once).
    filled: bool,
}

impl<'a> Sender<'a> {
    /// Request `it` of `point`, from its compute (if any) to its last word.
    fn request(
        &mut self,
        point: &Point,
        it: u32,
        compute: Option<&dyn Compute>,
        events: &mut dyn RunEvents,
    ) -> Result<()> {
        crate::signals::check()?;
        let (plan, p) = (self.plan, point.index);
        let request = plan.key_id(point, it);
        let layout = point.layout_at(plan.warmup, it);
        let bytes = layout.total_bytes();
        let computing = self.computing(point, it, layout, compute)?;
        let ready: &dyn Ready = match &computing {
            Some(c) => c,
            None => &AtOnce,
        };
        // Bidirectional: the conversation's KV first comes back from decode.
        if let (Some(back), Some(b)) = (self.back.as_deref_mut(), point.back_at(plan.warmup, it)) {
            turns::pull_back(self.ctrl, back, self.buf, b, (p, request), plan.verify)?;
        }
        let on_wire = write_request(self.plan, point, it, self.buf, &mut self.filled, self.cfg.fault)?;
        let mut deadline = allowance(self.ctrl.timeout, bytes, SLOWEST_DATA_BYTES_PER_SEC)
            + computing.as_ref().map_or(Duration::ZERO, |c| c.allowance());
        let start = match in_lockstep(self.fan, plan) {
            Some(f) => f.fan.start(request, deadline)?,
            None => Instant::now(),
        };
        self.ready_and_go(point, it, request, bytes, ready, &mut deadline)?;
        let sending = Instant::now();
        crate::hold::at("transfer", p == 1 && it == plan.warmup)?;
        tracing::debug!("request {request}: sending {bytes} bytes");
        let mut link = RequestLink { ctrl: self.ctrl, go: None, request, fan: self.fan, computes: false };
        self.transport.send(self.buf, layout, on_wire, deadline, &mut link, ready)?;
        tracing::debug!("request {request}: sent in {:.1?}", sending.elapsed());
        match &computing {
            Some(c) => {
                let (began, ended) = c.finish(deadline)?;
                self.ctrl.send(&Msg::Computed { request, began, ended })?;
            }
            None => events.request(p, it, bytes, sending.elapsed().as_nanos() as u64),
        }
        self.after(point, it, request, bytes, start, deadline)
    }

    /// With emulated prefill, request `it`'s compute (the point's first
    /// computing request first times the compute alone, for the receiver).
    fn computing<'c>(
        &mut self,
        point: &'c Point,
        it: u32,
        layout: &'c RequestLayout,
        compute: Option<&'c dyn Compute>,
    ) -> Result<Option<Computing<'c>>>
    where
        'a: 'c,
    {
        let plan = self.plan;
        let (Some(c), Some(alone_ns), Some(prefill)) = (compute, &point.prefill_ns, &plan.prefill) else {
            return Ok(None);
        };
        if !plan.computes(point, it) {
            return Ok(None);
        }
        let shared = self.fan.and_then(|f| Some((f, f.fan.compute()?)));
        if it == plan.phase_len(point) {
            let time = |ctrl: &mut Control| compute::alone_for_point(c, plan, point, ctrl);
            let runs_ns = match shared {
                Some((_, s)) => s.alone(point.index, self.ctrl, time)?,
                None => time(self.ctrl)?,
            };
            let (compute, control_rtt_ns) = (c.describe(), self.rtt_ns);
            self.ctrl.send(&Msg::ComputeAlone { point: point.index, runs_ns, compute, control_rtt_ns })?;
        }
        let layer_ns = plan.layer_ns_at(point, it).unwrap_or_else(|| alone_ns.clone());
        let computing = Computing::new(c, layout, layer_ns, prefill.overlap);
        Ok(Some(match shared {
            // The hub's pairs go in lockstep: a round's requests compute
            // one after another, each once (a P x D request's shares share it).
            Some((f, s)) => {
                let key_base = if plan.tp.is_none() { (f.pair as u64) << 40 } else { 0 };
                computing
                    .behind(f.fan.pairs() as u32 - 1)
                    .keyed(s, key_base + plan.request_id(point.index, it))
            }
            None => computing,
        }))
    }

    /// Says ready (unless said early) and waits for the receiver's go; a
    /// transport whose go comes in band waits in its send instead, so its
    /// deadline grows by the wait.
    fn ready_and_go(
        &mut self,
        point: &Point,
        it: u32,
        request: u64,
        bytes: usize,
        ready: &dyn Ready,
        deadline: &mut Instant,
    ) -> Result<()> {
        let (plan, p) = (self.plan, point.index);
        if self.announced != Some(request) {
            self.ctrl.send(&Msg::Ready { point: p, request })?;
        }
        // The receiver may still be checking the previous request, or
        // under load waiting for this one's arrival.
        let longest_wait = plan.load.as_ref().map_or(Duration::ZERO, |l| l.longest_wait(point));
        let by = allowance(self.ctrl.timeout, bytes, SLOWEST_PATTERN_BYTES_PER_SEC)
            + Duration::from_nanos(point.arrival(plan.warmup, it).map_or(0, |a| a.at_ns))
            + longest_wait;
        if self.transport.go_in_band() {
            *deadline += by.saturating_duration_since(Instant::now());
            return Ok(());
        }
        let awaiting = format!("waiting for the receiver's go for {}", Req(request));
        self.ctrl.expect_by(by, &awaiting, |m| match m {
            Msg::Go { point, request: r } if point == p && r == request => Ok(()),
            other => Err(other),
        })?;
        ready.go();
        // Nothing is written between requests: the next is ready now, and
        // says so ahead of this one's bytes (on a shared link the word
        // would otherwise come after them). Not where the go comes in band
        // (ucx): saying it before this request has gone cost one H100 more
        // queueing than it saved (results/h100/combinations).
        if self.early_ready && it + 1 < plan.requests_in(point) {
            let next = plan.key_id(point, it + 1);
            self.ctrl.send(&Msg::Ready { point: p, request: next })?;
            self.announced = Some(next);
        }
        Ok(())
    }

    /// After the bytes: a fan's round takes the receiver's time, and on one
    /// GPU the next pattern waits for the receiver's check.
    fn after(
        &mut self,
        point: &Point,
        it: u32,
        request: u64,
        bytes: usize,
        start: Instant,
        deadline: Instant,
    ) -> Result<()> {
        // A computing request's time is the receiver's own (its added TTFT).
        if let Some(f) = in_lockstep(self.fan, self.plan).filter(|_| !self.plan.computes(point, it)) {
            let awaiting = format!("waiting for the time of {}", Req(request));
            let ns = self.ctrl.expect_by(deadline, &awaiting, |m| match m {
                Msg::Took { request: r, ns } if r == request => Ok(ns),
                other => Err(other),
            })?;
            let turn = point.turn_named(self.plan.warmup, it).map(|(_, turn)| turn);
            f.fan.finish(f.pair, self.plan.measured(point, it), start, ns, turn);
        }
        if self.copier == Some(Role::Sender) {
            // Then this side's context is the last to have run on the GPU.
            let by = allowance(self.ctrl.timeout, bytes, SLOWEST_PATTERN_BYTES_PER_SEC);
            let awaiting = format!("waiting for the receiver to check {}", Req(request));
            self.ctrl.expect_by(by, &awaiting, |m| match m {
                Msg::Checked { request: r } if r == request => Ok(()),
                other => Err(other),
            })?;
        }
        Ok(())
    }

    /// The point's figures, as the receiver measured them.
    fn point_done(&mut self, point: &Point) -> Result<PointResult> {
        let bytes = point.layout.total_bytes();
        let by = allowance(self.ctrl.timeout, bytes, SLOWEST_PATTERN_BYTES_PER_SEC);
        let awaiting = format!("waiting for the results of point {}", point.index);
        let result = self.ctrl.expect_by(by, &awaiting, |m| match m {
            Msg::PointDone { result } => Ok(*result),
            other => Err(other),
        })?;
        if let Some(f) = self.fan {
            f.fan.point_done(f.pair, &result);
        }
        Ok(result)
    }
}
