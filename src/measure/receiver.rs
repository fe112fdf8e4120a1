//! The receiver of one lane, which leads: each request's life in order.
//! With bidirectional turns decode first sends the conversation's KV back;
//! with emulated prefill the sender's compute alone is taken once a point;
//! the receiver waits for the sender's ready and (under load) the
//! request's arrival and room in the decode buffer, says go, receives,
//! stops its clock, then records and checks the bytes outside the timed
//! region. Each point ends with its figures, sent to the sender.

use super::load::{Landing, LoadTally};
use super::ttft::{Computed, PrefillOfPoint, Share, TtftTally};
use super::turns::{self, TurnsTally};
use super::{
    allowance, arrive, in_lockstep, point_result, prefill_allowance, spill_to_pool, FanSlot, PointResult,
    RequestLink, RoundSink, RunConfig, RunEvents, Transports, SLOWEST_DATA_BYTES_PER_SEC,
    SLOWEST_PATTERN_BYTES_PER_SEC,
};
use crate::error::Result;
use crate::figures;
use crate::integrity::Check;
use crate::link::Link;
use crate::memory::{Buffer, SpillPool};
use crate::plan::{Plan, Point, Req, RequestLayout, VerifyMode};
use crate::schedule::residency::OnFull;
use crate::session::{Control, Msg, ReceiverSession, Role};
use crate::transport::{nanos, GpuCopier, RecvSide, RoundTiming, SendSide};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

pub fn run_receiver(
    sess: &mut ReceiverSession,
    transports: Transports<'_, dyn RecvSide, dyn SendSide>,
    buf: &mut Buffer,
    cfg: &RunConfig,
    link: Option<&Link>,
    fan: Option<FanSlot>,
    events: &mut dyn RunEvents,
) -> Result<Vec<PointResult>> {
    let Transports { to_decode, back } = transports;
    let plan = sess.hello.plan.clone();
    // A spoke of a sender's one-to-many fan tells it each request's time.
    // (In lockstep: under arrivals the rounds are apart.)
    let report_times = sess.hello.seat.is_some() && plan.load.is_none();
    let same_host = super::same_host(sess);
    super::precise_sleeps();
    // The pinned pool comes before the first request: pinning gigabytes
    // takes about a second, which no request should wait for.
    let spill_pool = match plan.load.as_ref().and_then(|l| l.decode_buffer) {
        Some((_, OnFull::Spill)) => Some(SpillPool::for_buffer(buf, plan.max_request_bytes())?),
        _ => None,
    };
    let mut r = Receiver {
        plan: &plan,
        ctrl: &mut sess.ctrl,
        copier: cfg.copier(&plan, to_decode.gpu_copier()),
        transport: to_decode,
        back: back.map(|b| -> &mut dyn SendSide { b }),
        buf,
        fan,
        report_times,
        // In a fan, processes share GPUs, which run one process at a time
        // in turns: a CUDA event records only when its process's turn
        // comes, so event times would miss the wait. The host clock sees it.
        host_clock: report_times || fan.is_some(),
        spill_pool,
    };
    let mut results = Vec::new();
    for point in plan.points() {
        let mut tally = PointTally::new(&plan, &point, same_host);
        for it in 0..plan.requests_in(&point) {
            r.request(&point, it, &mut tally, events)?;
        }
        if let (Some(f), Some(of)) = (fan, PrefillOfPoint::of(&plan, &point)) {
            f.fan.prefill_done(point.index, &of, &tally.ttft);
        }
        let result = tally.result(&plan, &point, link)?;
        r.ctrl.send(&Msg::PointDone { result: Box::new(result.clone()) })?;
        if let Some(f) = fan {
            f.fan.point_done(f.pair, &result);
        }
        events.point(&result);
        results.push(result);
    }
    r.ctrl.send(&Msg::Finish)?;
    Ok(results)
}

/// What the receiver keeps for a run.
struct Receiver<'a> {
    plan: &'a Plan,
    ctrl: &'a mut Control,
    transport: &'a mut dyn RecvSide,
    /// Bidirectional turns: decode's KV going back.
    back: Option<&'a mut dyn SendSide>,
    buf: &'a mut Buffer,
    fan: Option<FanSlot<'a>>,
    copier: GpuCopier,
    report_times: bool,
    host_clock: bool,
    spill_pool: Option<SpillPool>,
}

/// What a point gathers over its requests.
struct PointTally {
    requests: Histogram<u64>,
    messages: Histogram<u64>,
    check: Check,
    first_request_ns: u64,
    ttft: TtftTally,
    load: Option<LoadTally>,
    /// With emulated prefill, its phase's arrivals apart: the same schedule again.
    load_computing: Option<LoadTally>,
    turns: Option<TurnsTally>,
}

/// A request's instants on the receiver's clocks.
struct Received {
    t0: Instant,
    /// CLOCK_MONOTONIC at the go and at the last byte.
    go_mono: u64,
    last_mono: u64,
    landed: Instant,
    host_ns: u64,
    timing: RoundTiming,
    deadline: Instant,
}

impl Receiver<'_> {
    /// Request `it` of `point`, from its arrival to its check.
    fn request(
        &mut self,
        point: &Point,
        it: u32,
        t: &mut PointTally,
        events: &mut dyn RunEvents,
    ) -> Result<()> {
        crate::signals::check()?;
        let plan = self.plan;
        let request = plan.key_id(point, it);
        let layout = point.layout_at(plan.warmup, it);
        let mut sink = RoundSink::new(layout, plan.verify == VerifyMode::Inline);
        let mut arrival = self.back_turn(point, it, t, events)?;
        let computes = plan.computes(point, it);
        if computes && it == plan.phase_len(point) {
            self.compute_alone(point, &mut t.ttft)?;
        }
        self.await_ready(point, request, layout.total_bytes())?;
        let phase_load = if computes { &mut t.load_computing } else { &mut t.load };
        if arrival.is_none() {
            arrival = arrive(plan, point, it, phase_load.as_mut(), layout.total_bytes(), self.ctrl, request)?;
        }
        sink.begin(request);
        sink.hold_here = point.index == 1 && it == plan.warmup;
        let got = self.receive(point, request, layout, computes, &sink)?;
        if let (Some(l), Some((at_ns, hold_ns))) = (phase_load, arrival) {
            self.land(l, it, layout, &got, at_ns, hold_ns)?;
        }
        sink.check_complete()?;
        match computes {
            true => self.computed(point, it, request, &got, &mut t.ttft)?,
            false => self.timed(point, it, request, layout.total_bytes(), &got, &sink, t, events)?,
        }
        self.check(point, it, request, layout, &mut sink, t, events)
    }

    /// Bidirectional: at the turn's arrival, decode first sends the
    /// conversation's KV back; returns the arrival it waited for.
    fn back_turn(
        &mut self,
        point: &Point,
        it: u32,
        t: &mut PointTally,
        events: &mut dyn RunEvents,
    ) -> Result<Option<(u64, u64)>> {
        let plan = self.plan;
        let (Some(back), Some(b)) = (self.back.as_deref_mut(), point.back_at(plan.warmup, it)) else {
            return Ok(None);
        };
        let request = plan.key_id(point, it);
        let bytes = point.layout_at(plan.warmup, it).total_bytes();
        let arrival = arrive(plan, point, it, t.load.as_mut(), bytes, self.ctrl, request)?;
        let (ns, mut found) = turns::send_back(self.ctrl, back, self.buf, b, (point.index, request))?;
        let (c, turn) = point.turn_named(plan.warmup, it).expect("a conversation point");
        if let Some(first) = &mut found.first {
            *first = format!("conversation {c}, turn {turn} (back to prefill): {first}");
        }
        events.checked(found.verified_bytes, found.wrong_bytes);
        t.check.merge(found);
        if let (Some(turns), true) = (&mut t.turns, it >= plan.warmup) {
            turns.back(turn, ns);
        }
        Ok(arrival)
    }

    /// The sender's compute alone, timed before a point's computing requests.
    fn compute_alone(&mut self, point: &Point, ttft: &mut TtftTally) -> Result<()> {
        let (runs, what, rtt) = super::expect_compute_alone(self.ctrl, point)?;
        ttft.alone(&runs, what, rtt);
        Ok(())
    }

    /// The sender has written the request's pattern.
    fn await_ready(&mut self, point: &Point, request: u64, bytes: usize) -> Result<()> {
        let p = point.index;
        let by = allowance(self.ctrl.timeout, bytes, SLOWEST_PATTERN_BYTES_PER_SEC);
        let awaiting = format!("waiting for the sender to prepare {}", Req(request));
        self.ctrl.expect_by(by, &awaiting, |m| match m {
            Msg::Ready { point, request: r } if point == p && r == request => Ok(()),
            other => Err(other),
        })?;
        if self.copier == Some(Role::Receiver) {
            // The sender's pattern is written: this context runs last.
            self.buf.settle_gpu()?;
        }
        Ok(())
    }

    /// Says go (the transport does, when it is ready) and receives the request.
    fn receive(
        &mut self,
        point: &Point,
        request: u64,
        layout: &RequestLayout,
        computes: bool,
        sink: &RoundSink,
    ) -> Result<Received> {
        let bytes = layout.total_bytes();
        let deadline = allowance(self.ctrl.timeout, bytes, SLOWEST_DATA_BYTES_PER_SEC)
            + if computes { prefill_allowance(point) } else { Duration::ZERO };
        let t0 = match in_lockstep(self.fan, self.plan) {
            Some(f) => f.fan.start(request, deadline)?,
            None => Instant::now(),
        };
        let go_mono = crate::clock::mono_ns();
        tracing::debug!("request {request}: receiving {bytes} bytes");
        let go = (!self.transport.go_in_band()).then_some(Msg::Go { point: point.index, request });
        let mut link = RequestLink { ctrl: self.ctrl, go, request, fan: self.fan, computes };
        let timing = self.transport.recv(self.buf, layout, request, deadline, &mut link, sink)?;
        // A one-sided round knew its bytes had landed before it told each
        // message's completion: the request ended then.
        let now = Instant::now();
        let landed = timing.landed.unwrap_or(now);
        let last_mono = crate::clock::mono_ns().saturating_sub(nanos(now - landed));
        let host_ns = nanos(landed.saturating_duration_since(t0));
        tracing::debug!(
            "request {request}: all {bytes} bytes in, {:.1?} from the go",
            Duration::from_nanos(host_ns)
        );
        Ok(Received { t0, go_mono, last_mono, landed, host_ns, timing, deadline })
    }

    /// Under load: the request is in place (--on-full spill: what did not
    /// fit goes to the pool first) and held.
    fn land(
        &mut self,
        l: &mut LoadTally,
        it: u32,
        layout: &RequestLayout,
        got: &Received,
        at_ns: u64,
        hold_ns: u64,
    ) -> Result<()> {
        let ranges = l.spills(got.t0, layout);
        let note = |n, store, load| l.spilled(n, store, load);
        let (in_place, in_pool) =
            spill_to_pool(self.buf, self.spill_pool.as_mut(), &ranges, got.landed, got.deadline, note)?;
        let (bytes, tokens) = (layout.total_bytes() as u64, layout.tokens);
        let (key, go, landed) = (it as u64, got.t0, in_place);
        l.request(Landing { ticket: None, key, at_ns, go, landed, bytes, tokens, hold_ns, in_pool });
        Ok(())
    }

    /// With emulated prefill: the sender's compute, sent once it has ended
    /// (after the last message), gives the request's added TTFT.
    fn computed(
        &mut self,
        point: &Point,
        it: u32,
        request: u64,
        got: &Received,
        ttft: &mut TtftTally,
    ) -> Result<()> {
        let awaiting = format!("waiting for the compute of {}", Req(request));
        let c = self.ctrl.expect_by(got.deadline, &awaiting, |m| match m {
            Msg::Computed { request: r, began, ended } if r == request => Ok(Computed { began, ended }),
            other => Err(other),
        })?;
        let tokens = self.plan.prefill_key(point, it);
        ttft.request(tokens, got.go_mono, got.last_mono, c, self.plan.measured(point, it));
        self.share_with_hub(point, it, got, Some(ttft.place(got.go_mono, c)));
        Ok(())
    }

    /// A P x D decode rank in lockstep, with emulated prefill: this pair's
    /// share of the request, for the hub to join with the other ranks'.
    fn share_with_hub(&self, point: &Point, it: u32, got: &Received, computed: Option<Computed>) {
        let (Some(f), Some(t), Some(_)) = (self.fan, &self.plan.tp, &self.plan.prefill) else { return };
        let (key_base, shares) = Share::of_instance(t, f.fan.pairs());
        f.fan.prefill_share(
            point.index,
            Share {
                key: key_base + (it % self.plan.phase_len(point)) as u64,
                shares,
                tokens: self.plan.prefill_key(point, it),
                go: got.go_mono,
                last: got.last_mono,
                computed,
                measured: self.plan.measured(point, it),
            },
        );
    }

    /// A request's time, into the point's figures (and a fan's rounds).
    #[allow(clippy::too_many_arguments)]
    fn timed(
        &mut self,
        point: &Point,
        it: u32,
        request: u64,
        bytes: usize,
        got: &Received,
        sink: &RoundSink,
        t: &mut PointTally,
        events: &mut dyn RunEvents,
    ) -> Result<()> {
        let plan = self.plan;
        let request_ns = match got.timing.elapsed_ns {
            Some(ns) if !self.host_clock => ns,
            _ => got.host_ns,
        }
        .max(1);
        if self.report_times {
            self.ctrl.send(&Msg::Took { request, ns: request_ns })?;
        }
        if let Some(f) = in_lockstep(self.fan, plan) {
            let turn = point.turn_named(plan.warmup, it).map(|(_, turn)| turn);
            f.fan.finish(f.pair, plan.measured(point, it), got.t0, request_ns, turn);
            self.share_with_hub(point, it, got, None);
        }
        events.request(point.index, it, bytes, request_ns);
        if it == 0 {
            t.first_request_ns = request_ns;
        }
        if it >= plan.warmup {
            t.requests.saturating_record(request_ns);
            sink.record_into(&mut t.messages);
            if plan.prefill.is_some() {
                t.ttft.transfer_alone(plan.prefill_key(point, it), request_ns);
            }
            if let (Some(turns), Some((_, turn))) = (&mut t.turns, point.turn_named(plan.warmup, it)) {
                turns.turn(turn, request_ns);
            }
        }
        Ok(())
    }

    /// Checks the request's bytes (a conversation's turn: all the decode
    /// side holds so far), outside the timed region.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        point: &Point,
        it: u32,
        request: u64,
        layout: &RequestLayout,
        sink: &mut RoundSink,
        t: &mut PointTally,
        events: &mut dyn RunEvents,
    ) -> Result<()> {
        let plan = self.plan;
        let (checked, generated) = match point.turn_at(plan.warmup, it) {
            Some((c, r)) => (&c.checks[r.moving], c.generated[r.moving].as_ref()),
            None => (layout, None),
        };
        crate::hold::at("verify", point.index == 1 && it == plan.warmup)?;
        let mut found = sink.found(plan.verify, self.buf, checked)?;
        if let (Some(first), Some((c, turn))) = (&mut found.first, point.turn_named(plan.warmup, it)) {
            *first = format!("conversation {c}, turn {turn}: {first}");
        }
        events.checked(found.verified_bytes, found.wrong_bytes);
        t.check.merge(found);
        // Decode writes the KV of the tokens it generates itself, for the next turn's check.
        if let (Some(g), VerifyMode::After) = (generated, plan.verify) {
            self.buf.fill(g, request)?;
        }
        if self.copier == Some(Role::Sender) {
            self.ctrl.send(&Msg::Checked { request })?;
        }
        Ok(())
    }
}

impl PointTally {
    fn new(plan: &Plan, point: &Point, same_host: bool) -> Self {
        let hold_ns = plan.load.as_ref().map_or(0, |l| l.decode_hold_ns);
        let buffer = plan.load.as_ref().and_then(|l| l.decode_buffer);
        let load = || point.load.as_ref().map(|l| LoadTally::new(l, hold_ns, buffer));
        PointTally {
            requests: figures::new_histogram(),
            messages: figures::new_histogram(),
            check: Check::default(),
            first_request_ns: 0,
            ttft: TtftTally::new(same_host),
            load: load(),
            load_computing: load().filter(|_| plan.prefill.is_some()),
            turns: point.turns.as_ref().map(TurnsTally::new),
        }
    }

    /// The point's figures: its requests' times, and what its features add.
    fn result(self, plan: &Plan, point: &Point, link: Option<&Link>) -> Result<PointResult> {
        let mut result = point_result(
            point,
            plan,
            &self.requests,
            &self.messages,
            self.first_request_ns,
            self.check,
            link,
        )?;
        let peak = |gbps: f64| link.map(|k| 100.0 * gbps / k.peak_gbps);
        if let (Some(t), Some(pt)) = (&self.turns, &point.turns) {
            // The row: a conversation's bytes over its turns' mean transfer times.
            let f = t.figures(pt, &plan.shape);
            let mean_ns: f64 = f.turns.iter().map(|t| t.transfer_ns.mean + t.back_ns.mean).sum();
            result.prompt_tokens = f.turns.last().map_or(0, |t| t.prompt_tokens) as u32;
            result.request_bytes = f.bytes as usize;
            // The last turn's messages (each turn's in the line under the row).
            let last = pt.conversations[0].layouts.last().expect("a conversation moves its first turn");
            (result.messages, result.message_bytes) = (last.message_count, last.message_bytes);
            result.operations = last.descriptors().len();
            result.gbps = crate::units::gbps(f.bytes, mean_ns);
            result.percent_of_peak = peak(result.gbps);
            result.conversation = Some(f);
        }
        if let Some(l) = self.load {
            // A mix of prompt lengths: the row's rate over all of them.
            (result.gbps, result.gbps_p50) = (l.transfer_gbps(), l.transfer_gbps());
            result.percent_of_peak = peak(result.gbps);
            result.load = Some(l.figures());
            result.name_by_prompts();
        }
        if let Some(of) = PrefillOfPoint::of(plan, point) {
            let mut f = of.figures(&self.ttft, result.request_ns.p50);
            f.under_load = self.load_computing.map(|l| Box::new(l.figures()));
            result.prefill = Some(f);
        }
        Ok(result)
    }
}
