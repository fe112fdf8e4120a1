//! Many-to-one and one-to-many (xPyD): one process, the hub, runs a pair
//! with each of N peers on N threads. The pairs' rounds start together (a
//! barrier before each request), so their transfers overlap as when several
//! prefill GPUs feed one decode GPU; each round is timed from its first
//! start to the last pair's last byte, which gives the aggregate bandwidth,
//! and every pair's own request times, merged, give the incast tail.

use crate::error::{Error, Result};
use crate::figures::conversation::{ConversationFigures, TurnFigures};
use crate::figures::load::{LoadFigures, PromptLoad};
use crate::figures::prefill::PrefillFigures;
use crate::figures::FanFigures;
use crate::figures::{self, LatencySummary, PointResult};
use crate::measure::compute::SharedCompute;
use crate::measure::lanes::{SharedDecode, SharedFigures};
use crate::measure::ttft::{PrefillOfPoint, Share, TtftTally};
use crate::measure::{FanSlot, Pairs};
use crate::net;
use crate::report::RunReport;
use crate::schedule::residency::Residency;
use crate::topology::{FanShape, Seat};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// Called with each aggregate point, from the thread of the pair that
/// finished it last, with the pairs' reports as they stood after setup.
pub type OnAggregate = Box<dyn Fn(PointResult, &[RunReport]) + Send + Sync>;

/// The hub's meeting point: the barrier before each round, the round
/// timer, and each point's aggregate once every pair has finished it.
pub struct Fan {
    pub shape: FanShape,
    pub pairs: usize,
    sync: Mutex<Barrier>,
    turn: Condvar,
    tally: Mutex<Tally>,
    joined: Mutex<Vec<Option<RunReport>>>,
    on_aggregate: OnAggregate,
    /// Under load, at a many-to-one hub: the decode instance the pairs feed.
    pub decode: OnceLock<SharedDecode>,
    /// The pairs carry shares of each request (P x D), not requests of their own.
    pub shares: bool,
    /// P x D: the prefill instances among the pairs, each its own requests.
    pub instances: usize,
    /// At a one-to-many hub with emulated prefill: the prefill instance's
    /// (or rank's) compute, which every pair's requests share.
    pub compute: OnceLock<SharedCompute>,
    /// At a many-to-one hub in lockstep with emulated prefill: by point,
    /// every pair's added TTFT (each pair its own prefill instance).
    /// At a P x D decode rank, each request's shares joined.
    prefill: Mutex<HashMap<usize, (Option<PrefillOfPoint>, TtftTally)>>,
}

#[derive(Default)]
struct Barrier {
    waiting: usize,
    generation: u64,
    /// Set when a pair fails: every other pair stops at its next round.
    failed: Option<String>,
    /// The pair that failed first: its error is the run's.
    first_failed: Option<usize>,
}

struct Tally {
    /// This round's (start, end) by pair.
    round: Vec<Option<(Instant, Instant)>>,
    rounds_in_point: u32,
    first_span_ns: u64,
    spans: Histogram<u64>,
    /// Conversations: each turn's rounds apart, by turn number.
    turn_spans: BTreeMap<u32, Histogram<u64>>,
    results: Vec<Option<PointResult>>,
}

impl Fan {
    pub fn new(shape: FanShape, pairs: usize, on_aggregate: OnAggregate) -> Fan {
        Fan {
            shape,
            pairs,
            on_aggregate,
            decode: OnceLock::new(),
            shares: false,
            instances: 1,
            compute: OnceLock::new(),
            prefill: Mutex::new(HashMap::new()),
            joined: Mutex::new(vec![None; pairs]),
            sync: Mutex::new(Barrier::default()),
            turn: Condvar::new(),
            tally: Mutex::new(Tally {
                round: vec![None; pairs],
                rounds_in_point: 0,
                first_span_ns: 0,
                spans: figures::new_histogram(),
                turn_spans: BTreeMap::new(),
                results: vec![None; pairs],
            }),
        }
    }

    pub fn seat(&self, index: usize) -> Seat {
        Seat { shape: self.shape, pairs: self.pairs as u32, index: index as u32 }
    }

    fn barrier(&self) -> MutexGuard<'_, Barrier> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pair `pair` failed: the others stop at their next round.
    pub fn fail(&self, pair: usize, err: &Error) {
        let mut b = self.barrier();
        if b.failed.is_none() {
            b.failed = Some(format!("pair {pair} failed: {err}"));
            b.first_failed = Some(pair);
        }
        self.turn.notify_all();
    }

    /// The pair whose failure stopped the others, if one did.
    pub fn first_failed(&self) -> Option<usize> {
        self.barrier().first_failed
    }

    /// Pair `pair` is set up and about to measure; its report so far.
    pub fn joined(&self, pair: usize, report: &RunReport) {
        self.joined.lock().unwrap_or_else(|p| p.into_inner())[pair] = Some(report.clone());
    }

    /// A point's prefill figures merged from its pairs' (in lockstep, or
    /// conversations under arrivals): at a many-to-one hub every pair's
    /// requests (each pair its own prefill instance; at a P x D decode rank
    /// each request's shares joined); none at a one-to-many hub, whose
    /// receivers each hold their own (the pairs' reports).
    fn merged_prefill(&self, point: &PointResult) -> Option<PrefillFigures> {
        let (of, ttft) = self.prefill.lock().unwrap_or_else(|p| p.into_inner()).remove(&point.point)?;
        let of = of?;
        // A P x D request's transfer is the round (its shares); else a pair's own.
        let alone_p50 = match (self.shares, &point.fan) {
            (false, Some(f)) => f.pair_request_ns.p50,
            _ => point.request_ns.p50,
        };
        Some(of.figures(&ttft, alone_p50))
    }
}

/// What one pair's engine asks of its hub (measure::Pairs).
impl Pairs for Fan {
    fn pairs(&self) -> usize {
        self.pairs
    }

    /// Waits until every pair is ready to start `request`, by `deadline`;
    /// returns when this pair may start. A failed pair fails everyone here.
    fn start(&self, request: u64, deadline: Instant) -> Result<Instant> {
        let mut b = self.barrier();
        if let Some(why) = &b.failed {
            return Err(stopped(why));
        }
        let generation = b.generation;
        b.waiting += 1;
        if b.waiting == self.pairs {
            b.waiting = 0;
            b.generation += 1;
            self.turn.notify_all();
            return Ok(Instant::now());
        }
        while b.generation == generation {
            if let Some(why) = &b.failed {
                return Err(stopped(why));
            }
            let Some(left) = net::remaining(deadline) else {
                let why = format!(
                    "{} of {} pairs were ready for {request_named} by the deadline",
                    b.waiting,
                    self.pairs,
                    request_named = crate::plan::Req(request)
                );
                b.failed = Some(why.clone());
                self.turn.notify_all();
                return Err(Error::run(why));
            };
            b = self.turn.wait_timeout(b, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(Instant::now())
    }

    /// Fails once another pair has: called while a transfer waits, so a
    /// pair stops mid-request rather than at its next round.
    fn check(&self) -> Result<()> {
        match &self.barrier().failed {
            Some(why) => Err(stopped(why)),
            None => Ok(()),
        }
    }

    /// Pair `pair` finished a round it started at `start`, in `ns` as its
    /// receiver timed it (a conversation's turn `turn`). The round's span is
    /// taken once all pairs are in.
    fn finish(&self, pair: usize, timed: bool, start: Instant, ns: u64, turn: Option<u32>) {
        let mut t = self.tally();
        t.round[pair] = Some((start, start + std::time::Duration::from_nanos(ns)));
        if t.round.iter().any(Option::is_none) {
            return;
        }
        let first = t.round.iter().flatten().map(|r| r.0).min().expect("pairs");
        let last = t.round.iter().flatten().map(|r| r.1).max().expect("pairs");
        let span = (last - first).as_nanos() as u64;
        t.round.iter_mut().for_each(|r| *r = None);
        if t.rounds_in_point == 0 {
            t.first_span_ns = span;
        }
        t.rounds_in_point += 1;
        if timed {
            t.spans.saturating_record(span.max(1));
            if let Some(turn) = turn {
                t.turn_spans
                    .entry(turn)
                    .or_insert_with(figures::new_histogram)
                    .saturating_record(span.max(1));
            }
        }
    }

    /// Pair `pair` finished a sweep point; once all have, the aggregate goes out.
    fn point_done(&self, pair: usize, result: &PointResult) {
        let mut t = self.tally();
        t.results[pair] = Some(result.clone());
        if t.results.iter().any(Option::is_none) {
            return;
        }
        let results: Vec<PointResult> = t.results.iter_mut().map(|r| r.take().expect("all in")).collect();
        let shared = self.decode.get().and_then(|d| d.take(result.point));
        let mut point = aggregate(&results, &t.spans, t.first_span_ns, shared);
        aggregate_turns(&mut point, &results, &t.turn_spans, self.shares);
        t.turn_spans.clear();
        // Under arrivals a many-to-one hub's pairs that run conversations
        // (each on its own lane) merge their added TTFTs as in lockstep.
        if point.load.is_none() || (point.prefill.is_none() && self.shape == FanShape::ManyToOne) {
            point.prefill = self.merged_prefill(&point);
        }
        if point.load.is_some() && !self.shares {
            // Each pair's requests are its own: the row names one request.
            point.request_bytes = results[0].request_bytes;
        }
        // A request is the shares of one prefill instance.
        point.request_bytes /= self.instances.max(1);
        if let (true, FanShape::OneToMany, Some(l)) = (self.shares, self.shape, point.load.as_mut()) {
            // A prefill rank's pairs carry shares of one stream: its requests
            // count once, done when their slowest share is.
            let loads: Vec<&LoadFigures> = results.iter().filter_map(|r| r.load.as_ref()).collect();
            // Each length's requests and times are pair 0's shares, its bytes every pair's.
            l.by_prompt = loads[0].by_prompt.clone();
            for mine in &mut l.by_prompt {
                let shares = loads.iter().flat_map(|x| &x.by_prompt).filter(|p| p.tokens == mine.tokens);
                mine.bytes = shares.map(|p| p.bytes).sum();
            }
            l.offered_qps = loads[0].offered_qps;
            l.achieved_qps = loads.iter().map(|x| x.achieved_qps).fold(f64::MAX, f64::min);
        }
        point.name_by_prompts();
        t.spans.reset();
        t.rounds_in_point = 0;
        drop(t);
        let joined: Vec<RunReport> =
            self.joined.lock().unwrap_or_else(|p| p.into_inner()).iter().flatten().cloned().collect();
        (self.on_aggregate)(point, &joined);
    }

    fn decode(&self) -> Option<&SharedDecode> {
        self.decode.get()
    }

    fn compute(&self) -> Option<&SharedCompute> {
        self.compute.get()
    }

    fn prefill_done(&self, point: usize, of: &PrefillOfPoint, tally: &TtftTally) {
        let mut prefill = self.prefill.lock().unwrap_or_else(|p| p.into_inner());
        let (each, all) = prefill.entry(point).or_insert_with(|| (None, TtftTally::new(true)));
        *each = Some(of.clone());
        if !self.shares {
            all.merge(tally);
        }
    }

    fn prefill_share(&self, point: usize, share: Share) {
        let mut prefill = self.prefill.lock().unwrap_or_else(|p| p.into_inner());
        prefill.entry(point).or_insert_with(|| (None, TtftTally::new(true))).1.share(share);
    }
}

/// A pair's place at this hub, as its side's runner holds it.
#[derive(Clone, Copy)]
pub struct Slot<'a> {
    pub fan: &'a Fan,
    pub pair: usize,
}

impl<'a> Slot<'a> {
    /// The same place, as the engine sees it.
    pub fn engine(self) -> FanSlot<'a> {
        FanSlot { fan: self.fan, pair: self.pair }
    }
}

fn stopped(why: &str) -> Error {
    Error::run(format!("stopped with the other pairs: {why}"))
}

/// One point of all pairs together: the bytes of all, over the round spans;
/// under load (no rounds), the decode instance's figures where the pairs
/// shared one, else the pairs' load merged.
pub fn aggregate(
    results: &[PointResult],
    spans: &Histogram<u64>,
    first_span_ns: u64,
    shared: Option<SharedFigures>,
) -> PointResult {
    let mut agg = results[0].clone();
    let bytes: usize = results.iter().map(|r| r.request_bytes).sum();
    let mut merged = figures::new_histogram();
    for r in results {
        if let Ok(h) = figures::decode_histogram(&r.request_histogram) {
            merged.add(&h).expect("same bounds");
        }
    }
    agg.messages = results.iter().map(|r| r.messages).sum();
    agg.operations = results.iter().map(|r| r.operations).sum();
    agg.request_bytes = bytes;
    // Rounds in lockstep give spans; under load each pair's requests are its own.
    let spans = if spans.is_empty() { &merged } else { spans };
    agg.request_ns = LatencySummary::of(spans);
    agg.request_histogram = figures::encode_histogram(spans);
    agg.gbps = crate::units::gbps(bytes as u64, agg.request_ns.mean);
    agg.gbps_p50 = crate::units::gbps(bytes as u64, agg.request_ns.p50 as f64);
    // Against the fan's own ceiling, which the hub knows (link::fan_ceiling).
    agg.percent_of_peak = None;
    // Message times are each pair's own; the pairs' figures below say more.
    agg.message_ns = LatencySummary::default();
    // Under load no rounds: the slowest pair's first request.
    agg.first_request_ns = match first_span_ns {
        0 => results.iter().map(|r| r.first_request_ns).max().unwrap_or(0),
        ns => ns,
    };
    agg.verified_bytes = results.iter().map(|r| r.verified_bytes).sum();
    agg.wrong_bytes = results.iter().map(|r| r.wrong_bytes).sum();
    agg.first_wrong = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.first_wrong.as_ref().map(|w| format!("pair {i}: {w}")));
    agg.fan = Some(FanFigures {
        pair_gbps: results.iter().map(|r| r.gbps).collect(),
        pair_request_ns: LatencySummary::of(&merged),
    });
    match shared {
        Some(s) => {
            // A P x D rank's request is its pairs' shares: timed once, whole.
            agg.request_ns = LatencySummary::of(&s.transfer_ns);
            agg.request_histogram = figures::encode_histogram(&s.transfer_ns);
            (agg.gbps, agg.gbps_p50) = (s.gbps, s.gbps);
            agg.load = Some(s.load);
            // What computes and its time alone are each pair's own (pair 0's here).
            agg.prefill = s.prefill.map(|mut f| {
                if let Some(own) = &results[0].prefill {
                    (f.compute, f.clock, f.alone_ns) =
                        (own.compute.clone(), own.clock.clone(), own.alone_ns.clone());
                }
                f
            });
        }
        None if results.iter().all(|r| r.load.is_some()) => {
            let loads: Vec<&LoadFigures> = results.iter().filter_map(|r| r.load.as_ref()).collect();
            agg.gbps = results.iter().map(|r| r.gbps).sum();
            agg.gbps_p50 = agg.gbps;
            agg.load = Some(merge_load(&loads));
            // Each receiver's added TTFT is its own (the pairs' reports); one
            // request's, over receivers that each hold a share, no process sees.
            agg.prefill = None;
        }
        None => agg.load = None,
    }
    agg
}

/// A fan of conversations: every pair's bytes over each turn's rounds
/// (first start to the last pair's last byte), and each turn's way back
/// as the slowest pair took it (it runs before the round starts).
fn aggregate_turns(
    agg: &mut PointResult,
    results: &[PointResult],
    turn_spans: &BTreeMap<u32, Histogram<u64>>,
    shares: bool,
) {
    let Some(mut f) = agg.conversation.clone() else { return };
    let pairs: Vec<&ConversationFigures> = results.iter().filter_map(|r| r.conversation.as_ref()).collect();
    if agg.load.is_some() {
        agg.conversation = Some(turns_apart(f, &pairs, shares));
        return;
    }
    let sum = |each: fn(&ConversationFigures) -> u64| pairs.iter().map(|c| each(c)).sum::<u64>();
    (f.bytes, f.full_bytes) = (sum(|c| c.bytes), sum(|c| c.full_bytes));
    // P x D pairs carry shares of the same conversations, in the same regions.
    f.regions = match shares {
        true => pairs.iter().map(|c| c.regions).max().unwrap_or(0),
        false => pairs.iter().map(|c| c.regions).sum(),
    };
    for (i, turn) in f.turns.iter_mut().enumerate() {
        let each: Vec<&TurnFigures> = pairs.iter().filter_map(|c| c.turns.get(i)).collect();
        turn.bytes = each.iter().map(|t| t.bytes).sum();
        turn.back_bytes = each.iter().map(|t| t.back_bytes).sum();
        turn.cumulative_bytes = each.iter().map(|t| t.cumulative_bytes).sum();
        turn.messages = each.iter().map(|t| t.messages).sum();
        if let Some(h) = turn_spans.get(&turn.turn) {
            turn.transfer_ns = LatencySummary::of(h);
        }
        let slowest_back = each.iter().max_by(|a, b| a.back_ns.mean.total_cmp(&b.back_ns.mean));
        turn.back_ns = slowest_back.map(|t| t.back_ns.clone()).unwrap_or_default();
    }
    let mean_ns: f64 = f.turns.iter().map(|t| t.transfer_ns.mean + t.back_ns.mean).sum();
    agg.request_bytes = f.bytes as usize;
    agg.gbps = crate::units::gbps(f.bytes, mean_ns);
    agg.conversation = Some(f);
}

/// A fan of conversations under arrivals, each pair's its own: a turn's
/// bytes are a conversation's (the pairs' mean), its transfers every
/// pair's conversations' merged, its way back the slowest pair's; the
/// row's rate stays the pairs' summed (`aggregate`). P x D pairs (`shares`)
/// carry shares of the same conversations: a conversation's bytes are
/// theirs summed, counted once.
fn turns_apart(
    mut f: ConversationFigures,
    pairs: &[&ConversationFigures],
    shares: bool,
) -> ConversationFigures {
    let n = if shares { 1 } else { pairs.len().max(1) as u64 };
    let mean = |each: &dyn Fn(&ConversationFigures) -> u64| pairs.iter().map(|c| each(c)).sum::<u64>() / n;
    (f.bytes, f.full_bytes) = (mean(&|c| c.bytes), mean(&|c| c.full_bytes));
    let count = |each: fn(&ConversationFigures) -> u32| match shares {
        true => pairs.iter().map(|c| each(c)).max().unwrap_or(0),
        false => pairs.iter().map(|c| each(c)).sum(),
    };
    (f.conversations, f.regions) = (count(|c| c.conversations), count(|c| c.regions));
    for (i, turn) in f.turns.iter_mut().enumerate() {
        let each: Vec<&TurnFigures> = pairs.iter().filter_map(|c| c.turns.get(i)).collect();
        let k = if shares { 1 } else { each.len().max(1) as u64 };
        turn.bytes = each.iter().map(|t| t.bytes).sum::<u64>() / k;
        turn.back_bytes = each.iter().map(|t| t.back_bytes).sum::<u64>() / k;
        turn.cumulative_bytes = each.iter().map(|t| t.cumulative_bytes).sum::<u64>() / k;
        let mut merged = figures::new_histogram();
        for h in each.iter().filter_map(|t| figures::decode_histogram(&t.transfer_histogram).ok()) {
            merged.add(&h).expect("same bounds");
        }
        turn.transfer_ns = LatencySummary::of(&merged);
        turn.transfer_histogram = figures::encode_histogram(&merged);
        let slowest_back = each.iter().max_by(|a, b| a.back_ns.mean.total_cmp(&b.back_ns.mean));
        turn.back_ns = slowest_back.map(|t| t.back_ns.clone()).unwrap_or_default();
    }
    f
}

/// Independent pairs' load figures as one (a one-to-many hub: each decode
/// instance its own buffer): rates and counts summed, queueing and latency
/// from the merged histograms; what the decode instances hold, each pair's
/// peak summed (at most what they held at once).
fn merge_load(loads: &[&LoadFigures]) -> LoadFigures {
    let mut agg = loads[0].clone();
    let merged = |each: fn(&LoadFigures) -> &str| {
        let mut h = figures::new_histogram();
        for l in loads {
            if let Ok(one) = figures::decode_histogram(each(l)) {
                h.add(&one).expect("same bounds");
            }
        }
        h
    };
    let (queue, latency) = (merged(|l| &l.queue_histogram), merged(|l| &l.latency_histogram));
    agg.queue_ns = LatencySummary::of(&queue);
    agg.queue_histogram = figures::encode_histogram(&queue);
    agg.latency_ns = LatencySummary::of(&latency);
    agg.latency_histogram = figures::encode_histogram(&latency);
    let sum = |each: fn(&LoadFigures) -> f64| loads.iter().map(|l| each(l)).sum::<f64>();
    agg.offered_qps = sum(|l| l.offered_qps);
    agg.achieved_qps = sum(|l| l.achieved_qps);
    agg.offered_gbps = sum(|l| l.offered_gbps);
    agg.achieved_gbps = sum(|l| l.achieved_gbps);
    agg.saturated = loads.iter().any(|l| l.saturated);
    agg.queue_growth_ns = loads.iter().map(|l| l.queue_growth_ns).fold(f64::MIN, f64::max);
    agg.by_prompt = PromptLoad::merge(loads.iter().map(|l| l.by_prompt.as_slice()));
    agg.resident = sum_residency(loads.iter().map(|l| &l.resident));
    agg.prefill_resident = sum_residency(loads.iter().map(|l| &l.prefill_resident));
    agg.decode_buffer = None;
    agg.queue_theory = None;
    agg
}

/// What several pairs held together, on one clock (each pair's point
/// starts with the hub's): their series summed step by step, the peak
/// of the sum; the mean summed, the p99 at most the pairs' summed.
fn sum_residency<'a>(each: impl Iterator<Item = &'a Residency> + Clone) -> Residency {
    let mut steps: Vec<(u64, usize, u64)> = Vec::new();
    for (i, r) in each.clone().enumerate() {
        steps.extend(r.series.iter().map(|&(t, bytes)| (t, i, bytes)));
    }
    steps.sort_unstable();
    let mut level = vec![0u64; each.clone().count()];
    let mut series: Vec<(u64, u64)> = Vec::new();
    for (t, i, bytes) in steps {
        level[i] = bytes;
        let total = level.iter().sum();
        match series.last_mut() {
            Some(last) if last.0 == t => last.1 = total,
            _ => series.push((t, total)),
        }
    }
    let peak_bytes = series.iter().map(|s| s.1).max().unwrap_or(0);
    Residency {
        peak_bytes,
        p99_bytes: each.clone().map(|r| r.p99_bytes).sum::<u64>().min(peak_bytes),
        mean_bytes: each.map(|r| r.mean_bytes).sum(),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn fan(shape: FanShape, pairs: usize) -> (Fan, Arc<Mutex<Vec<PointResult>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        (Fan::new(shape, pairs, Box::new(move |p, _| sink.lock().unwrap().push(p))), out)
    }

    #[test]
    fn rounds_start_together_and_a_failure_stops_the_others() {
        let fan = Arc::new(fan(FanShape::ManyToOne, 3).0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let late = {
            let fan = fan.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                fan.start(0, deadline).unwrap()
            })
        };
        let t = Instant::now();
        let others: Vec<_> = (0..2)
            .map(|_| {
                let fan = fan.clone();
                std::thread::spawn(move || fan.start(0, deadline).unwrap())
            })
            .collect();
        let starts: Vec<Instant> = others.into_iter().map(|h| h.join().unwrap()).collect();
        late.join().unwrap();
        assert!(starts.iter().all(|s| s.duration_since(t) >= Duration::from_millis(90)));

        // One pair fails while another waits: the waiter stops at once.
        let waiter = {
            let fan = fan.clone();
            std::thread::spawn(move || fan.start(1, Instant::now() + Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(50));
        fan.fail(2, &Error::run("lost the sender"));
        let e = waiter.join().unwrap().unwrap_err();
        assert!(e.message.contains("pair 2 failed: lost the sender"), "{e}");
        assert!(fan.start(2, deadline).is_err());
    }

    #[test]
    fn a_missing_pair_ends_the_wait_at_the_deadline() {
        let (fan, _) = fan(FanShape::OneToMany, 2);
        let t = Instant::now();
        let e = fan.start(7, t + Duration::from_millis(200)).unwrap_err();
        assert!(e.message.contains("1 of 2 pairs were ready for point 1, request 8"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    fn result(bytes: usize, ns: &[u64]) -> PointResult {
        let mut h = figures::new_histogram();
        ns.iter().for_each(|v| h.record(*v).unwrap());
        let s = LatencySummary::of(&h);
        PointResult {
            point: 0,
            granularity: crate::plan::Granularity::Layer,
            prompt_tokens: 1024,
            messages: 32,
            operations: 32,
            message_bytes: bytes / 32,
            request_bytes: bytes,
            iterations: ns.len() as u32,
            warmup: 1,
            gbps: crate::units::gbps(bytes as u64, s.mean),
            gbps_p50: 0.0,
            percent_of_peak: Some(10.0),
            request_ns: s,
            message_ns: LatencySummary::default(),
            first_request_ns: 0,
            verified_bytes: bytes as u64,
            wrong_bytes: 0,
            first_wrong: None,
            request_histogram: figures::encode_histogram(&h),
            fan: None,
            prefill: None,
            load: None,
            conversation: None,
            nixl: None,
        }
    }

    #[test]
    fn the_aggregate_is_all_bytes_over_first_start_to_last_end() {
        let (fan, out) = fan(FanShape::ManyToOne, 2);
        let t0 = Instant::now();
        // Warm-up round, then two timed rounds: pair 1 starts 1 us late.
        for (timed, a, b) in
            [(false, 5_000, 5_000), (true, 1_000_000, 2_000_000), (true, 1_000_000, 1_000_000)]
        {
            fan.finish(0, timed, t0, a, None);
            fan.finish(1, timed, t0 + Duration::from_micros(1), b, None);
        }
        fan.point_done(0, &result(1_000_000, &[1_000_000, 1_000_000]));
        assert!(out.lock().unwrap().is_empty());
        fan.point_done(1, &result(1_000_000, &[2_000_000, 1_000_000]));
        let agg = out.lock().unwrap().pop().unwrap();
        assert_eq!(agg.request_bytes, 2_000_000);
        assert_eq!(agg.messages, 64);
        assert_eq!(agg.first_request_ns, 6_000);
        assert_eq!(agg.percent_of_peak, None, "the hub sets it against the fan's ceiling");
        // Spans 2.001 ms and 1.001 ms: 2 MB over a mean of 1.501 ms.
        assert!((agg.gbps - 2e6 / 1.501e6).abs() < 0.01, "{}", agg.gbps);
        let f = agg.fan.as_ref().unwrap();
        assert_eq!(f.pair_gbps.len(), 2);
        assert_eq!(f.pair_request_ns.count, 4);
        assert!(f.pair_request_ns.max >= 1_999_000);
        // A second point starts from a clean tally.
        fan.finish(0, false, t0, 7, None);
        fan.finish(1, false, t0, 9, None);
        fan.point_done(0, &result(1, &[1]));
        fan.point_done(1, &result(1, &[1]));
        assert_eq!(out.lock().unwrap().pop().unwrap().first_request_ns, 9);
    }
}
