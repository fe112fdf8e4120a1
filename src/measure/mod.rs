//! The engine: warm-up, timed requests, integrity checks, one sweep point at
//! a time. The sender writes each request's pattern, says Ready and waits for
//! Go; the receiver starts its clock, says Go (through the transport, which
//! knows when it is ready), receives, stops its clock, then checks the bytes
//! outside the timed region. Both sides end each point with the receiver's
//! figures, so both print the same results. Under load with requests in
//! flight at once (`--concurrency` above 1), `lanes` runs them instead.

pub mod compute;
pub mod lanes;
pub mod load;
mod receiver;
mod sender;
pub mod ttft;
pub mod turns;

use crate::error::{Error, Result};
use crate::figures;
use crate::figures::{LatencySummary, PointResult};
use crate::integrity::Check;
use crate::kv::pattern;
use crate::link::Link;
use crate::memory::{Buffer, SpillPool};
use crate::plan::{Plan, Point, RequestLayout, Side, VerifyMode};
use crate::session::{Control, Msg, ReceiverSession};
use crate::transport::{nanos, Completions, GpuCopier, PeerLink};
use compute::SharedCompute;
use hdrhistogram::Histogram;
use lanes::SharedDecode;
pub use receiver::run_receiver;
pub use sender::run_sender;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Test-only switches that break a run on purpose (the hidden `--fault` flag),
/// so the tests can show that each failure is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flip one byte of the first measured request after its pattern is written.
    CorruptByte,
    /// Send the first measured request under another request's keys.
    WrongKey,
    /// Propose the plan with a digest that does not match it.
    BadDigest,
    /// Speak another protocol version in the preamble.
    BadProtocol,
    /// Claim the receiver's role (two ranks 1: the kv_rank hang).
    WrongRole,
    /// A conversation's second turn: its first message's bytes also go in
    /// its second message's place (a delta block at the wrong offset).
    WrongOffset,
    /// A conversation's second turn re-sends the block that turn 1 left
    /// partly filled as turn 1 sent it (a stale block), at block granularity.
    StaleBlock,
    /// Under different TP, the first measured request's first piece holds,
    /// in its first head's place, the head beside it (a decode rank
    /// reading one head off).
    ShiftHead,
    /// nixl: each request's first descriptor points at the block beside
    /// its own on the prefill side (a wrong block id, the LIBFABRIC
    /// backend's zeros in the wrong place).
    NeighbourBlock,
    /// A hybrid model: the first measured request's first state region (or,
    /// without state layers, its first sliding-window or chunked block)
    /// holds the bytes of the message after it (a region put in the wrong place).
    MisplacedState,
}

impl Fault {
    pub fn parse(s: &str) -> Result<Fault> {
        match s {
            "corrupt-byte" => Ok(Fault::CorruptByte),
            "wrong-offset" => Ok(Fault::WrongOffset),
            "stale-block" => Ok(Fault::StaleBlock),
            "shift-head" => Ok(Fault::ShiftHead),
            "neighbour-block" | "neighbor-block" => Ok(Fault::NeighbourBlock),
            "wrong-key" => Ok(Fault::WrongKey),
            "bad-digest" => Ok(Fault::BadDigest),
            "bad-protocol" => Ok(Fault::BadProtocol),
            "wrong-role" => Ok(Fault::WrongRole),
            "misplaced-state" => Ok(Fault::MisplacedState),
            other => Err(Error::usage(format!("unknown fault '{other}'"))),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    pub fault: Option<Fault>,
    /// Both sides' buffers are on one GPU (two processes sharing it).
    pub one_gpu: bool,
}

impl RunConfig {
    /// On one GPU the two processes' CUDA contexts take turns, and the
    /// switch costs about 140 us on an H200 (results/h200/one-gpu): when
    /// the side that runs the round's copy was not the last to use the GPU,
    /// the request pays it, which two GPUs never do. So the pattern work
    /// between requests is ordered to leave that side's context last: the
    /// side that copies, if one side alone does (the transport says which).
    fn copier(&self, plan: &Plan, transport: GpuCopier) -> GpuCopier {
        transport.filter(|_| self.one_gpu && plan.verify == VerifyMode::After)
    }
}

/// What the engine tells its caller as a run goes.
pub trait RunEvents {
    /// Request `iteration` (warm-ups first) of point `point` moved `bytes`
    /// in `ns`, as this side's host clock saw it.
    fn request(&mut self, _point: usize, _iteration: u32, _bytes: usize, _ns: u64) {}
    /// Receiver: a request's check found this (every request, warm-ups
    /// too), so a run that fails partway still tells what it verified.
    fn checked(&mut self, _verified_bytes: u64, _wrong_bytes: u64) {}
    /// A sweep point's figures, as the receiver measured them.
    fn point(&mut self, p: &PointResult);
}

/// A pair's transports: prefill to decode, and decode back to prefill
/// where conversations' KV returns (`--multi-turn bidirectional`).
pub struct Transports<'a, ToDecode: ?Sized, Back: ?Sized> {
    pub to_decode: &'a mut ToDecode,
    pub back: Option<&'a mut Back>,
}

/// The pairs a hub runs at once, as one pair's engine sees them (fan.rs,
/// above the engine, runs them): rounds that start together, the other
/// pairs' failures, each point's result for the aggregate, and what the
/// pairs share.
pub trait Pairs: Sync {
    /// How many pairs run at this hub.
    fn pairs(&self) -> usize;
    /// Waits for every pair to reach this round (request `request`), until
    /// `deadline`; returns the round's start.
    fn start(&self, request: u64, deadline: Instant) -> Result<Instant>;
    /// Pair `pair` finished a round it started at `start`, in `ns` as its
    /// receiver timed it (a conversation's turn `turn`).
    fn finish(&self, pair: usize, timed: bool, start: Instant, ns: u64, turn: Option<u32>);
    /// Pair `pair` finished a sweep point.
    fn point_done(&self, pair: usize, result: &PointResult);
    /// Fails once another pair has.
    fn check(&self) -> Result<()>;
    /// Under load at a many-to-one hub: the decode instance the pairs feed.
    fn decode(&self) -> Option<&SharedDecode>;
    /// At a one-to-many hub with emulated prefill: the compute the pairs share.
    fn compute(&self) -> Option<&SharedCompute>;
    /// At a many-to-one hub in lockstep, with emulated prefill: a pair's
    /// account of point `point`'s requests (before its `point_done`), for
    /// the added TTFT of every pair's requests together.
    fn prefill_done(&self, point: usize, of: &ttft::PrefillOfPoint, tally: &ttft::TtftTally);
    /// The same at a P x D decode rank, whose pairs carry shares of each
    /// request: each share as it lands, to be joined into its request.
    fn prefill_share(&self, point: usize, share: ttft::Share);
}

/// This pair's place at a fan's hub: its rounds wait for the other pairs'.
#[derive(Clone, Copy)]
pub struct FanSlot<'a> {
    pub fan: &'a dyn Pairs,
    pub pair: usize,
}

/// The fan whose rounds a pair starts with the others': back to back, in
/// lockstep; under arrivals each pair's requests go at their own times.
fn in_lockstep<'a>(fan: Option<FanSlot<'a>>, plan: &Plan) -> Option<FanSlot<'a>> {
    fan.filter(|_| plan.load.is_none())
}

pub(crate) use crate::transport::SLOWEST_DATA_BYTES_PER_SEC;
/// Writing or checking a request's pattern is assumed at least this fast
/// (measured: 4+ GB/s on two host cores, far more on a GPU).
const SLOWEST_PATTERN_BYTES_PER_SEC: f64 = 1e9;

fn allowance(timeout: Duration, bytes: usize, rate: f64) -> Instant {
    Instant::now() + timeout + Duration::from_secs_f64(bytes as f64 / rate)
}

/// The sender's last word from the receiver: every point is done.
fn expect_finish(ctrl: &mut Control) -> Result<()> {
    let by = ctrl.deadline();
    ctrl.expect_by(by, "waiting for the receiver to finish", |m| match m {
        Msg::Finish => Ok(()),
        other => Err(other),
    })
}

/// Whether a side runs its requests on lanes (`lanes`): several requests
/// in flight, or any load in a fan, whose pairs each keep their own
/// arrivals (many-to-one: into one decode instance, `lanes::SharedDecode`).
/// Conversations under arrivals go one turn at a time on one lane, each
/// pair's its own: the one-lane engine, its rounds apart.
pub fn on_lanes(plan: &Plan, in_a_fan: bool) -> bool {
    plan.lanes() > 1 || (in_a_fan && plan.load.is_some() && plan.conversation.is_none())
}

/// Writes request `it`'s pattern into `buf` (with checks off only once:
/// `filled` says whether it was) and what the fault matrix breaks in it;
/// returns the key it goes under. Both engines write through it, so every
/// fault reaches every engine.
fn write_request(
    plan: &Plan,
    point: &Point,
    it: u32,
    buf: &mut Buffer,
    filled: &mut bool,
    fault: Option<Fault>,
) -> Result<u64> {
    let layout = point.layout_at(plan.warmup, it);
    let request = plan.key_id(point, it);
    if plan.verify != VerifyMode::Off || !*filled {
        buf.fill(layout, request)?;
        *filled = true;
    }
    let first_measured = point.index == 0 && it == plan.warmup;
    let moved = match fault {
        Some(Fault::MisplacedState) if first_measured => layout.misplaced_state(),
        Some(Fault::ShiftHead) if first_measured => layout.neighbour_head(),
        _ => None,
    };
    if let Some((from, to, len)) = moved {
        buf.copy_within(from, to, len)?;
    }
    if first_measured && fault == Some(Fault::CorruptByte) {
        // The middle byte of the request, where this side keeps it.
        buf.flip_byte(layout.byte_place(Side::Sender, layout.total_bytes() / 2))?;
    }
    let second_turn = it >= plan.warmup
        && matches!(point.turn_at(plan.warmup, it), Some((_, r)) if r.conversation == 0 && r.moving == 1);
    if second_turn && fault == Some(Fault::WrongOffset) && layout.message_count > 1 {
        let (a, b) = (layout.slot(Side::Sender, 0), layout.slot(Side::Sender, 1));
        buf.copy_within(a.offset, b.offset, a.len)?;
    }
    if second_turn && fault == Some(Fault::StaleBlock) {
        if let Some(stale) = point.turns.as_ref().and_then(|t| t.turn_one_partial_block(&plan.shape)) {
            buf.fill(&stale, request)?;
        }
    }
    Ok(match fault {
        Some(Fault::WrongKey) if first_measured => request + 1_000_000_007,
        _ => request,
    })
}

/// Under load, waits for request `it`'s arrival, and with `--on-full
/// wait` for room in the decode buffer; returns its arrival and hold.
fn arrive(
    plan: &Plan,
    point: &Point,
    it: u32,
    tally: Option<&mut load::LoadTally>,
    bytes: usize,
    ctrl: &mut Control,
    request: u64,
) -> Result<Option<(u64, u64)>> {
    let (Some(tally), Some(a), Some(l)) = (tally, point.arrival(plan.warmup, it), &plan.load) else {
        return Ok(None);
    };
    let arrived = tally.arrival(a.at_ns);
    wait_until(arrived, ctrl, request)?;
    check_behind(plan, point, it, arrived, ctrl.timeout)?;
    // --on-full wait: the request starts once it fits.
    if let Some(room) = tally.room_for(bytes as u64) {
        let wait = room.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            wait_until(room, ctrl, request)?;
            tally.waited(nanos(wait));
        }
    }
    Ok(Some((a.at_ns, l.hold_ns(a))))
}

/// Ends a load point whose queue outgrew the timeout: it would only grow.
fn check_behind(plan: &Plan, point: &Point, it: u32, arrived: Instant, timeout: Duration) -> Result<()> {
    let behind = arrived.elapsed();
    if behind <= timeout {
        return Ok(());
    }
    let lanes = match plan.lanes() {
        1 => String::new(),
        n => format!(", with {n} requests in flight"),
    };
    Err(Error::run(format!(
        "the receiver fell behind the arrivals ({}): {} arrived {} ago, more than --timeout {}{lanes}: the link \
         does not carry this rate (lower it, or raise --timeout)",
        point.load.as_ref().map_or(String::new(), |pl| pl.arrivals.to_string()),
        crate::plan::Req(plan.request_id(point.index, it % plan.phase_len(point))),
        crate::units::fmt_ns(behind.as_nanos() as f64),
        humantime::format_duration(timeout)
    )))
}

/// --on-full spill: copies a request's spilled tensors (`ranges`) to the
/// pinned pool and back, and `note`s the spill (tensors, both copies' ns).
/// Returns when the KV was in place (its last byte `landed`, then the
/// store) and the bytes in the pool.
fn spill_to_pool(
    buf: &mut Buffer,
    pool: Option<&mut SpillPool>,
    ranges: &[(usize, usize)],
    landed: Instant,
    deadline: Instant,
    note: impl FnOnce(u64, u64, u64),
) -> Result<(Instant, u64)> {
    if ranges.is_empty() {
        return Ok((landed, 0));
    }
    let pool = pool.ok_or_else(|| Error::run("internal error: a spill without a pinned pool"))?;
    let (store_ns, load_ns) = buf.spill_round_trip(pool, ranges, deadline)?;
    note(ranges.len() as u64, store_ns, load_ns);
    Ok((landed + Duration::from_nanos(store_ns), ranges.iter().map(|r| r.1 as u64).sum()))
}

/// Waits for a request's arrival, answering the peer meanwhile (a sender
/// that dies during a long gap is noticed).
fn wait_until(arrival: Instant, ctrl: &mut Control, request: u64) -> Result<()> {
    wait_until_by(arrival, &mut || {
        ctrl.watch(&format!("waiting for {} to arrive", crate::plan::Req(request)))
    })
}

/// Waits until `arrival`, calling `watch` every few milliseconds.
fn wait_until_by(arrival: Instant, watch: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    // Sleep in slices, then spin the last stretch: a sleep overshoots by
    // the timer slack (50 us unless set: see `precise_sleeps`), which
    // would read as queueing. Spinning lanes would starve each other.
    // Watching the peer reads what it sent (the next request's ready, a
    // ping): microseconds that must not fall just before the arrival.
    const SPIN: Duration = Duration::from_micros(30);
    const WATCH_BEFORE: Duration = Duration::from_millis(2);
    loop {
        crate::signals::check()?;
        let left = arrival.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        if left > SPIN {
            if left > WATCH_BEFORE {
                watch()?;
            }
            std::thread::sleep((left - SPIN).min(Duration::from_millis(10)));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Lets this thread's sleeps end within microseconds of when they are
/// asked to (Linux's default timer slack is 50 us), so that waiting for an
/// arrival can sleep nearly to it instead of spinning.
pub fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes a value and touches only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

/// The control connection as a transport sees it during one request.
struct RequestLink<'a> {
    ctrl: &'a mut Control,
    /// The receiver's start signal, sent once.
    go: Option<Msg>,
    request: u64,
    fan: Option<FanSlot<'a>>,
    /// The sender computes this request's KV as it goes.
    computes: bool,
}

/// The sender's compute alone, timed before a point's computing requests:
/// its runs, what computes, and the control round trip.
fn expect_compute_alone(ctrl: &mut Control, point: &Point) -> Result<(Vec<u64>, String, u64)> {
    let p = point.index;
    let by = allowance(ctrl.timeout, 0, 1.0) + prefill_allowance(point) * compute::MOST_RUNS_ALONE as u32;
    let awaiting = format!("waiting for the sender's compute alone at point {p}");
    ctrl.expect_by(by, &awaiting, |m| match m {
        Msg::ComputeAlone { point, runs_ns, compute, control_rtt_ns } if point == p => {
            Ok((runs_ns, compute, control_rtt_ns))
        }
        other => Err(other),
    })
}

/// Whether the sender runs on this host (the same boot): then the two
/// sides' CLOCK_MONOTONIC instants compare directly.
fn same_host(sess: &ReceiverSession) -> bool {
    sess.hello.env.boot_id.is_some() && sess.hello.env.boot_id == crate::env::boot_id()
}

/// What a computing request may take beyond its transfer: its prefill,
/// three times over (a GPU kernel slows under a transfer), and a second.
fn prefill_allowance(point: &Point) -> Duration {
    let asked: u64 = point.prefill_ns.iter().flatten().sum();
    Duration::from_nanos(asked.saturating_mul(3)) + Duration::from_secs(1)
}

impl PeerLink for RequestLink<'_> {
    fn computes(&self) -> bool {
        self.computes
    }

    fn go(&mut self) -> Result<()> {
        match self.go.take() {
            Some(msg) => self.ctrl.send(&msg),
            None => Err(Error::run("internal error: a transport said go twice, or on the sender")),
        }
    }

    fn watch(&mut self) -> Result<()> {
        if let Some(f) = self.fan {
            f.fan.check()?;
        }
        self.ctrl.watch(&format!("moving {}", crate::plan::Req(self.request)))
    }
}

fn point_result(
    point: &Point,
    plan: &Plan,
    requests: &Histogram<u64>,
    messages: &Histogram<u64>,
    first_request_ns: u64,
    check: Check,
    link: Option<&Link>,
) -> Result<PointResult> {
    // A point is ok only for what it timed (validation keeps counts from wrapping).
    if requests.is_empty() {
        return Err(Error::run(format!("internal error: point {} timed no request", point.index)));
    }
    let layout = &point.layout;
    let request_ns = LatencySummary::of(requests);
    let bytes = layout.total_bytes() as u64;
    let gbps = crate::units::gbps(bytes, request_ns.mean);
    Ok(PointResult {
        point: point.index,
        granularity: layout.granularity,
        prompt_tokens: layout.tokens,
        messages: layout.message_count,
        operations: layout.descriptors().len(),
        message_bytes: layout.message_bytes,
        request_bytes: layout.total_bytes(),
        iterations: plan.iterations,
        warmup: plan.warmup,
        gbps,
        gbps_p50: crate::units::gbps(bytes, request_ns.p50 as f64),
        percent_of_peak: link.map(|l| 100.0 * gbps / l.peak_gbps),
        request_ns,
        message_ns: LatencySummary::of(messages),
        first_request_ns,
        verified_bytes: check.verified_bytes,
        wrong_bytes: check.wrong_bytes,
        first_wrong: check.first,
        request_histogram: figures::encode_histogram(requests),
        fan: None,
        prefill: None,
        load: None,
        conversation: None,
        nixl: None,
    })
}

/// Collects one round's message completions: their latencies and, with
/// `--verify inline`, their check inside the timed region.
struct RoundSink<'a> {
    layout: &'a RequestLayout,
    inline: bool,
    request: u64,
    latencies: Vec<AtomicU64>,
    arrived: AtomicUsize,
    verified: AtomicU64,
    wrong: Mutex<Check>,
    /// The fault matrix's request: hold at its first message (`hold`).
    hold_here: bool,
}

impl<'a> RoundSink<'a> {
    fn new(layout: &'a RequestLayout, inline: bool) -> Self {
        RoundSink {
            layout,
            inline,
            request: 0,
            latencies: (0..layout.message_count).map(|_| AtomicU64::new(0)).collect(),
            arrived: AtomicUsize::new(0),
            verified: AtomicU64::new(0),
            wrong: Mutex::new(Check::default()),
            hold_here: false,
        }
    }

    fn begin(&mut self, request: u64) {
        self.request = request;
        self.arrived.store(0, Relaxed);
    }

    /// A transport that reports fewer messages than it was given is broken.
    fn check_complete(&self) -> Result<()> {
        let arrived = self.arrived.load(Relaxed);
        if arrived != self.layout.message_count {
            return Err(Error::run(format!(
                "the transport reported {arrived} of {} messages of {}",
                self.layout.message_count,
                crate::plan::Req(self.request)
            )));
        }
        Ok(())
    }

    fn record_into(&self, h: &mut Histogram<u64>) {
        for l in &self.latencies {
            h.saturating_record(l.load(Relaxed).max(1));
        }
    }

    /// What this round's check found: `layout` (what the receiver holds
    /// now) checked in `buf` after it (`--verify after`), the messages as
    /// they came (`inline`), or nothing (`off`).
    fn found(&mut self, verify: VerifyMode, buf: &Buffer, layout: &RequestLayout) -> Result<Check> {
        match verify {
            VerifyMode::After => buf.verify(layout, self.request),
            VerifyMode::Inline => Ok(self.take_check()),
            VerifyMode::Off => Ok(Check::default()),
        }
    }

    fn take_check(&mut self) -> Check {
        let mut c = std::mem::take(self.wrong.get_mut().expect("no poisoned lock"));
        c.verified_bytes += std::mem::take(self.verified.get_mut());
        c
    }
}

impl Completions for RoundSink<'_> {
    fn message_done(&self, index: usize, latency_ns: u64, data: Option<&[u8]>) -> Result<()> {
        let slot = self.latencies.get(index).ok_or_else(|| {
            Error::run(format!("the transport reported message {index}, which does not exist"))
        })?;
        slot.store(latency_ns, Relaxed);
        self.arrived.fetch_add(1, Relaxed);
        tracing::trace!("request {}: message {index} in, {latency_ns} ns", self.request);
        crate::hold::at("transfer", index == 0 && self.hold_here)?;
        if self.inline {
            let bytes = data
                .ok_or_else(|| Error::usage("--verify inline needs the receiver's buffer in host memory"))?;
            let seed = self.layout.seed(self.request, index);
            let m = pattern::verify_at(bytes, seed, self.layout.pattern_start(index));
            self.verified.fetch_add(bytes.len() as u64, Relaxed);
            if m.wrong_bytes > 0 {
                let c = Check::of_message(self.layout, self.request, index, m, 0);
                self.wrong.lock().expect("no poisoned lock").merge(c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Granularity;
    use crate::session::Role;

    fn plan(verify: VerifyMode) -> Plan {
        let mut p = crate::plan::sample_plan("llama-3.1-8b", &[128]);
        (p.granularities, p.iterations, p.warmup, p.verify) = (vec![Granularity::Request], 1, 0, verify);
        p
    }

    #[test]
    fn on_one_gpu_with_checks_the_copying_side_runs_last() {
        let one = RunConfig { fault: None, one_gpu: true };
        let after = plan(VerifyMode::After);
        assert_eq!(one.copier(&after, Some(Role::Sender)), Some(Role::Sender));
        assert_eq!(one.copier(&after, Some(Role::Receiver)), Some(Role::Receiver));
        // Both sides copy (tcp staging), or nothing runs between requests
        // (no checks), or the GPUs are two: nothing to order.
        assert_eq!(one.copier(&after, None), None);
        assert_eq!(one.copier(&plan(VerifyMode::Off), Some(Role::Sender)), None);
        assert_eq!(RunConfig::default().copier(&after, Some(Role::Sender)), None);
    }
}
