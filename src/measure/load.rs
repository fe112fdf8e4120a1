//! Serving load, on the receiver: each timed request of a load point
//! starts (its go) at its arrival, or when a lane is free if it is later:
//! requests wait their turn in arrival order, one on the wire at a time
//! (one lane, as one stream carries them) or up to `--concurrency` at once
//! (measure::lanes). From the instants of each request
//! (arrival, go, last byte) come the queueing delay, the latency a user
//! sees, the achieved rate and what the decode side holds.

use crate::figures::load::{BufferFigures, LoadFigures, PromptLoad, QueueTheory};
use crate::figures::{self, LatencySummary};
use crate::plan::{PointLoad, RequestLayout, Side};
use crate::schedule::residency::{self, DecodeBuffer, Held, OnFull};
use crate::schedule::Arrivals;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// Whether a request in flight with others may go (`LoadTally::admit`).
pub enum Admit {
    /// It goes: its room in the buffer (if one is set), the tensors that spill.
    Go { ticket: Option<u64>, spills: Vec<(usize, usize)> },
    /// --on-full wait and no room: ask again by then (None: when a request
    /// in flight lands).
    Wait(Option<Instant>),
}

/// A timed request's (arrival, go, last byte) in ns from the point's
/// start, its bytes and its prompt's tokens.
type Instants = (u64, u64, u64, u64, u32);

/// One timed request that landed (`LoadTally::landed`).
pub struct Landing {
    /// Its room in the decode buffer, from `LoadTally::admit`.
    pub ticket: Option<u64>,
    /// Which request it is: the pieces of one request (the pairs of a P x D
    /// decode rank each carry a share) have the same key and count once.
    pub key: u64,
    /// Its arrival, in ns from the point's start.
    pub at_ns: u64,
    pub go: Instant,
    /// When its last byte was in place (and spilled, if it spilled).
    pub landed: Instant,
    pub bytes: u64,
    pub tokens: u32,
    /// How long decode holds it after its last byte.
    pub hold_ns: u64,
    /// Its bytes in the pinned pool.
    pub in_pool: u64,
}

/// The receiver's account of one load point's timed requests.
pub struct LoadTally {
    arrivals: Arrivals,
    decode_hold_ns: u64,
    start: Option<Instant>,
    /// Each request's key (see `Landing::key`).
    keys: Vec<u64>,
    /// Requests that may be on the wire at once (lanes): with one, the
    /// figures hold the queueing delay against theory's.
    servers: usize,
    /// (arrival, go, last byte) ns from the start, bytes, tokens; per request.
    requests: Vec<(u64, u64, u64, u64, u32)>,
    /// How long decode holds each request's KV after its last byte.
    holds: Vec<u64>,
    /// With --decode-buffer: the buffer, and each request's bytes in the pool.
    buffer: Option<(DecodeBuffer, OnFull)>,
    pooled: Vec<u64>,
    spills: Spills,
}

#[derive(Default)]
struct Spills {
    tensors: u64,
    requests: u64,
    store: Option<Histogram<u64>>,
    load: Option<Histogram<u64>>,
    waits: Option<Histogram<u64>>,
}

impl LoadTally {
    pub fn new(load: &PointLoad, decode_hold_ns: u64, buffer: Option<(u64, OnFull)>) -> Self {
        LoadTally {
            arrivals: load.arrivals,
            decode_hold_ns,
            start: None,
            keys: Vec::with_capacity(load.schedule.len()),
            servers: 1,
            requests: Vec::with_capacity(load.schedule.len()),
            holds: Vec::with_capacity(load.schedule.len()),
            buffer: buffer.map(|(cap, on_full)| (DecodeBuffer::new(cap), on_full)),
            pooled: Vec::with_capacity(load.schedule.len()),
            spills: Spills::default(),
        }
    }

    /// `n` requests may be on the wire at once (lanes, or a hub's pairs).
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = n;
        self
    }

    fn since_start(&self, t: Instant) -> u64 {
        self.start.map_or(0, |s| super::nanos(t.saturating_duration_since(s)))
    }

    /// With --on-full wait: when a request of `bytes` fits, from now.
    pub fn room_for(&self, bytes: u64) -> Option<Instant> {
        let (b, on_full) = self.buffer.as_ref()?;
        let (start, now) = (self.start?, self.since_start(Instant::now()));
        (*on_full == OnFull::Wait).then(|| start + Duration::from_nanos(b.fits_from(now, bytes)))
    }

    /// With --on-full spill: the byte ranges (receiver's offset, length) of
    /// the tensors of a request that went at `go` that go to the pool
    /// (P2pNccl decides each as it arrives); none without a spilling buffer.
    pub fn spills(&self, go: Instant, layout: &RequestLayout) -> Vec<(usize, usize)> {
        let Some((b, OnFull::Spill)) = &self.buffer else { return Vec::new() };
        let slots: Vec<_> = (0..layout.message_count).map(|i| layout.slot(Side::Receiver, i)).collect();
        let spills = b.spills(self.since_start(go), &slots.iter().map(|s| s.len as u64).collect::<Vec<_>>());
        slots.iter().zip(spills).filter(|(_, spill)| *spill).map(|(s, _)| (s.offset, s.len)).collect()
    }

    /// A request waited `ns` for room in the buffer.
    pub fn waited(&mut self, ns: u64) {
        self.spills.waits.get_or_insert_with(figures::new_histogram).saturating_record(ns.max(1));
    }

    /// A request's spill: `tensors` tensors, copied out and back in these times.
    pub fn spilled(&mut self, tensors: u64, store_ns: u64, load_ns: u64) {
        self.spills.tensors += tensors;
        self.spills.requests += 1;
        self.spills.store.get_or_insert_with(figures::new_histogram).saturating_record(store_ns.max(1));
        self.spills.load.get_or_insert_with(figures::new_histogram).saturating_record(load_ns.max(1));
    }

    /// The instant request `at_ns` arrives; the point's clock starts at the
    /// first timed request.
    pub fn arrival(&mut self, at_ns: u64) -> Instant {
        *self.start.get_or_insert_with(Instant::now) + Duration::from_nanos(at_ns)
    }

    /// A timed request of a lane that admits as it goes (one lane): takes
    /// its room in the decode buffer at its go, then lands; see `landed`.
    pub fn request(&mut self, landing: Landing) {
        let now = self.since_start(landing.go);
        let ticket = self.buffer.as_mut().map(|(b, _)| b.reserve(now, landing.bytes - landing.in_pool));
        self.landed(Landing { ticket, ..landing });
    }

    /// The point's clock starts now (requests in flight at once: set before
    /// any lane takes a timed request).
    pub fn set_start(&mut self, start: Instant) {
        self.start = Some(start);
    }

    /// Requests in flight at once: whether a request may go now, taking its
    /// room in the decode buffer at once (another lane may be deciding too).
    pub fn admit(&mut self, now: Instant, layout: &RequestLayout) -> Admit {
        let bytes = layout.total_bytes() as u64;
        let t = self.since_start(now);
        let spills = match &self.buffer {
            Some((b, OnFull::Wait)) => match b.fits_from(t, bytes) {
                at if at == t => Vec::new(),
                u64::MAX => return Admit::Wait(None),
                at => return Admit::Wait(self.start.map(|s| s + Duration::from_nanos(at))),
            },
            _ => self.spills(now, layout),
        };
        let in_pool: u64 = spills.iter().map(|r| r.1 as u64).sum();
        let ticket = self.buffer.as_mut().map(|(b, _)| b.reserve(t, bytes - in_pool));
        Admit::Go { ticket, spills }
    }

    /// An admitted request landed: its room is released after its hold.
    pub fn landed(&mut self, l: Landing) {
        let until = self.since_start(l.landed).saturating_add(l.hold_ns);
        if let (Some((b, _)), Some(id)) = (&mut self.buffer, l.ticket) {
            b.release(id, until, l.bytes - l.in_pool, l.in_pool);
        }
        self.holds.push(l.hold_ns);
        self.pooled.push(l.in_pool);
        let start = self.start.expect("arrival() came first");
        let since = |t: Instant| super::nanos(t.saturating_duration_since(start));
        let (go, landed) = (since(l.go).max(l.at_ns), since(l.landed).max(l.at_ns));
        self.keys.push(l.key);
        self.requests.push((l.at_ns, go, landed, l.bytes, l.tokens));
    }

    /// Bytes over the time the wire was busy (some request between its go
    /// and last byte; requests in flight at once counted once): with a mix
    /// of prompt lengths, the row's GB/s.
    pub fn transfer_gbps(&self) -> f64 {
        let bytes: u64 = self.requests.iter().map(|r| r.3).sum();
        bytes as f64 / busy_ns(self.requests.iter().map(|r| (r.1, r.2))).max(1) as f64
    }

    /// The requests in arrival order, each request's pieces (same key) as
    /// one: from the first piece's go to the last's last byte, their bytes
    /// summed.
    fn joined(&self) -> Vec<Instants> {
        let mut by_key: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        let mut requests: Vec<Instants> = Vec::new();
        for (r, key) in self.requests.iter().zip(&self.keys) {
            if let Some(&j) = by_key.get(key) {
                let was = &mut requests[j];
                (was.1, was.2, was.3) = (was.1.min(r.1), was.2.max(r.2), was.3 + r.3);
                continue;
            }
            by_key.insert(*key, requests.len());
            requests.push(*r);
        }
        // In arrival order: requests in flight at once land out of it.
        requests.sort_by_key(|r| (r.0, r.1));
        requests
    }

    /// Each request's transfer, go to last byte (pieces joined).
    pub fn transfer_ns(&self) -> Histogram<u64> {
        let mut h = figures::new_histogram();
        for r in self.joined() {
            h.saturating_record((r.2 - r.1).max(1));
        }
        h
    }

    pub fn figures(&self) -> LoadFigures {
        let requests = self.joined();
        // What decode holds, piece by piece (each took its own room): from
        // its go to its last byte and hold; the pool what spilled, from then.
        let each = || self.requests.iter().zip(&self.holds).zip(&self.pooled);
        let held = |less: fn(u64) -> u64| -> Vec<Held> {
            each()
                .map(|((r, hold), pool)| Held {
                    from_ns: r.1,
                    until_ns: r.2 + hold,
                    bytes: r.3 - less(*pool),
                })
                .collect()
        };
        let mut f = figures(self.arrivals, self.decode_hold_ns, &requests, &held(|_| 0));
        if self.servers == 1 {
            let instants: Vec<(u64, u64, u64)> = requests.iter().map(|r| (r.0, r.1, r.2)).collect();
            let poisson = matches!(self.arrivals, Arrivals::Poisson { .. });
            f.queue_theory = QueueTheory::of(&instants, f.offered_qps, poisson);
        }
        let Some((b, on_full)) = &self.buffer else { return f };
        let in_pool: Vec<Held> = each()
            .filter(|(_, pool)| **pool > 0)
            .map(|((r, hold), pool)| Held { from_ns: r.2, until_ns: r.2 + hold, bytes: *pool })
            .collect();
        let demand_peak_bytes = f.resident.peak_bytes;
        f.resident = residency::residency(&held(|pool| pool));
        let summary = |h: &Option<Histogram<u64>>| h.as_ref().map(LatencySummary::of).unwrap_or_default();
        f.decode_buffer = Some(BufferFigures {
            capacity_bytes: b.capacity,
            on_full: *on_full,
            spilled_tensors: self.spills.tensors,
            spilled_bytes: self.pooled.iter().sum(),
            spilled_requests: self.spills.requests,
            spill_store_ns: summary(&self.spills.store),
            spill_load_ns: summary(&self.spills.load),
            pooled: residency::residency(&in_pool),
            demand_peak_bytes,
            waited_requests: self.spills.waits.as_ref().map_or(0, |h| h.len()),
            wait_ns: summary(&self.spills.waits),
        });
        f
    }
}

/// The time covered by the intervals (from, until), overlaps once.
fn busy_ns(intervals: impl Iterator<Item = (u64, u64)>) -> u64 {
    let mut spans: Vec<(u64, u64)> = intervals.collect();
    spans.sort_unstable();
    let (mut busy, mut reached) = (0, 0);
    for (from, until) in spans {
        let from = from.max(reached);
        if until > from {
            busy += until - from;
            reached = until;
        }
    }
    busy
}

/// Each prompt length's requests' figures, shortest first.
fn by_prompt(requests: &[Instants]) -> Vec<PromptLoad> {
    let mut lengths: Vec<u32> = requests.iter().map(|r| r.4).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let histogram = |of: &[&Instants], ns: fn(&Instants) -> u64| {
        let mut h = figures::new_histogram();
        for r in of {
            h.saturating_record(ns(r).max(1));
        }
        (LatencySummary::of(&h), figures::encode_histogram(&h))
    };
    let prompt = |tokens: u32| {
        let of: Vec<&Instants> = requests.iter().filter(|r| r.4 == tokens).collect();
        let (transfer_ns, transfer_histogram) = histogram(&of, |r| r.2 - r.1);
        let (queue_ns, queue_histogram) = histogram(&of, |r| r.1 - r.0);
        let (latency_ns, latency_histogram) = histogram(&of, |r| r.2 - r.0);
        PromptLoad {
            tokens,
            requests: of.len() as u64,
            bytes: of.iter().map(|r| r.3).sum(),
            transfer_ns,
            transfer_histogram,
            queue_ns,
            queue_histogram,
            latency_ns,
            latency_histogram,
        }
    };
    lengths.into_iter().map(prompt).collect()
}

/// The figures of a load point from its requests' instants (pure).
/// `held`: what the decode side held, each piece from its go to its last
/// byte and hold.
fn figures(arrivals: Arrivals, decode_hold_ns: u64, requests: &[Instants], held: &[Held]) -> LoadFigures {
    let (mut queue, mut latency) = (figures::new_histogram(), figures::new_histogram());
    for r in requests {
        queue.saturating_record((r.1 - r.0).max(1));
        latency.saturating_record((r.2 - r.0).max(1));
    }
    let n = requests.len() as f64;
    let bytes: u64 = requests.iter().map(|r| r.3).sum();
    let last_arrival = requests.iter().map(|r| r.0).max().unwrap_or(0) as f64;
    let last_byte = requests.iter().map(|r| r.2).max().unwrap_or(0).max(1) as f64;
    // n arrivals span n - 1 gaps (fixed arrivals start at 0); one gap's
    // worth is added back so that the rate is per request.
    let offered_span = match n > 1.0 {
        true => (last_arrival * n / (n - 1.0)).max(crate::schedule::BURST_SPAN_NS * n / (n - 1.0)),
        false => 1e9 / arrivals.qps(),
    };
    let offered_qps = n / offered_span * 1e9;
    let achieved_qps = n / last_byte * 1e9;
    let mean_bytes = if n > 0.0 { bytes as f64 / n } else { 0.0 };
    let half = requests.len() / 2;
    let mean_queue = |rs: &[(u64, u64, u64, u64, u32)]| {
        rs.iter().map(|r| (r.1 - r.0) as f64).sum::<f64>() / rs.len().max(1) as f64
    };
    LoadFigures {
        arrivals,
        offered_qps,
        achieved_qps,
        offered_gbps: offered_qps * mean_bytes / 1e9,
        achieved_gbps: bytes as f64 / last_byte,
        saturated: achieved_qps < 0.9 * offered_qps,
        by_prompt: by_prompt(requests),
        queue_ns: LatencySummary::of(&queue),
        queue_histogram: figures::encode_histogram(&queue),
        queue_theory: None,
        queue_growth_ns: mean_queue(&requests[half..]) - mean_queue(&requests[..half]),
        latency_ns: LatencySummary::of(&latency),
        latency_histogram: figures::encode_histogram(&latency),
        decode_hold_ns,
        resident: residency::residency(held),
        decode_buffer: None,
        prefill_resident: residency::residency(
            &requests.iter().map(|r| Held { from_ns: r.0, until_ns: r.2, bytes: r.3 }).collect::<Vec<_>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: u64, want: u64) -> bool {
        (got as f64 / want as f64 - 1.0).abs() < 1e-3
    }

    fn run(requests: &[(u64, u64, u64, u64, u32)], qps: f64, hold: u64) -> LoadFigures {
        let held: Vec<Held> =
            requests.iter().map(|r| Held { from_ns: r.1, until_ns: r.2 + hold, bytes: r.3 }).collect();
        figures(Arrivals::Fixed { qps }, hold, requests, &held)
    }

    /// 10 requests of 1 MB every 100 ms, each 40 ms on the wire: no queue.
    #[test]
    fn a_link_that_keeps_up_queues_nothing() {
        let ms = 1_000_000u64;
        let rs: Vec<_> =
            (0..10).map(|k| (100 * k * ms, 100 * k * ms, (100 * k + 40) * ms, 1_000_000, 128)).collect();
        let f = run(&rs, 10.0, 30 * ms);
        assert!((f.offered_qps - 10.0).abs() < 1e-9, "{}", f.offered_qps);
        // The last byte at 940 ms: 10 requests in 0.94 s.
        assert!((f.achieved_qps - 10.0 / 0.94).abs() < 1e-9 && !f.saturated);
        assert!((f.achieved_gbps - 10e6 / 0.94e9).abs() < 1e-12);
        assert_eq!((f.queue_ns.max, f.queue_growth_ns), (1, 0.0));
        // Histograms keep three significant digits.
        assert!(close(f.latency_ns.p50, 40 * ms), "{}", f.latency_ns.p50);
        // Held 70 ms of every 100: never two at once.
        assert_eq!(f.resident.peak_bytes, 1_000_000);
        assert_eq!(f.prefill_resident.peak_bytes, 1_000_000);
        assert_eq!(f.by_prompt.iter().map(|p| (p.tokens, p.requests)).collect::<Vec<_>>(), vec![(128, 10)]);
    }

    /// Three requests 10 ms apart. Each 15 ms: an ideal server starts the
    /// second at 15 (5 ms after its arrival), the third at 30 (10 after),
    /// and at 100/s rho is 1.5: no M/G/1 value. Each 5 ms: nobody waits,
    /// rho 0.5, and M/G/1 gives lambda E[S^2] / (2 (1 - rho)) = 2.5 ms.
    #[test]
    fn queueing_theory_from_the_runs_own_service_times() {
        let ms = 1_000_000u64;
        let late = [(0, 0, 15 * ms), (10 * ms, 17 * ms, 32 * ms), (20 * ms, 33 * ms, 48 * ms)];
        let t = QueueTheory::of(&late, 100.0, true).unwrap();
        // Each queued and went 2 ms, then 1 ms, after the last byte before it:
        // a tenth of a 15 ms request, so the queue is partly the engine's.
        assert_eq!(t.between_ns, Some(1.5 * ms as f64));
        assert!(t.service_ns == 15.0 * ms as f64 && t.harness_bound());
        assert!((t.ideal_ns - 5.0 * ms as f64).abs() < 1e-6, "{t:?}");
        // The run itself: 0, 7 and 13 ms.
        assert!((t.mean_ns - 20.0 / 3.0 * ms as f64).abs() < 1e-3, "{t:?}");
        assert!((t.rho - 1.5).abs() < 1e-9 && t.mg1_ns.is_none(), "{t:?}");
        let quick = [(0, 0, 5 * ms), (10 * ms, 10 * ms, 15 * ms), (20 * ms, 20 * ms, 25 * ms)];
        let t = QueueTheory::of(&quick, 100.0, true).unwrap();
        assert_eq!((t.ideal_ns, t.mean_ns, t.between_ns), (0.0, 0.0, None));
        assert!(!t.harness_bound());
        assert!((t.mg1_ns.unwrap() - 2.5 * ms as f64).abs() < 1.0, "{t:?}");
        // Fixed arrivals are not Poisson: no M/G/1 value, the ideal server still.
        assert!(QueueTheory::of(&quick, 100.0, false).unwrap().mg1_ns.is_none());
        assert!(QueueTheory::of(&quick[..1], 100.0, true).is_none());
    }

    #[test]
    fn overlapping_transfers_count_their_time_on_the_wire_once() {
        assert_eq!(busy_ns([(0, 10), (20, 30)].into_iter()), 20);
        assert_eq!(busy_ns([(0, 10), (5, 30), (6, 7), (40, 41)].into_iter()), 31);
        assert_eq!(busy_ns(std::iter::empty()), 0);
    }

    /// Arrivals every 20 ms, 40 ms each on the wire: the queue grows by 20
    /// ms a request, and the link's rate is what is achieved.
    #[test]
    fn twice_the_link_saturates_and_the_queue_grows() {
        let ms = 1_000_000u64;
        let rs: Vec<_> =
            (0..10).map(|k| (20 * k * ms, 40 * k * ms, (40 * k + 40) * ms, 1_000_000, 128)).collect();
        let f = run(&rs, 50.0, 0);
        assert!((f.offered_qps - 50.0).abs() < 1e-9);
        assert!((f.achieved_qps - 25.0).abs() < 1e-9 && f.saturated);
        assert!(close(f.queue_ns.max, 180 * ms), "{}", f.queue_ns.max);
        // Halves: queues 0..80 ms (mean 40) then 100..180 (mean 140).
        assert!((f.queue_growth_ns - 100.0 * ms as f64).abs() < 1.0, "{}", f.queue_growth_ns);
        // Back to back, each from its go to its last byte: one at a time.
        assert_eq!(f.resident.peak_bytes, 1_000_000);
        // On the prefill side, from arrival: at 180 ms the last arrives
        // while request 4 is on the wire until 200: requests 4..=9, 6 MB.
        assert_eq!(f.prefill_resident.peak_bytes, 6_000_000);
    }

    /// A mix: each length's own count, bytes and times; the short ones are
    /// not reported under the long one's name.
    #[test]
    fn a_mix_reports_each_prompt_length_on_its_own() {
        let ms = 1_000_000u64;
        // Short (1 MB, 10 ms) at 0, 100, 200 ms; long (8 MB, 80 ms) at 50 ms,
        // which delays the short one at 100 ms by 30 ms.
        let rs = [
            (0, 0, 10 * ms, 1_000_000, 1024),
            (50 * ms, 50 * ms, 130 * ms, 8_000_000, 8192),
            (100 * ms, 130 * ms, 140 * ms, 1_000_000, 1024),
            (200 * ms, 200 * ms, 210 * ms, 1_000_000, 1024),
        ];
        let f = run(&rs, 10.0, 0);
        let each: Vec<_> = f.by_prompt.iter().map(|p| (p.tokens, p.requests, p.bytes)).collect();
        assert_eq!(each, vec![(1024, 3, 3_000_000), (8192, 1, 8_000_000)]);
        let (short, long) = (&f.by_prompt[0], &f.by_prompt[1]);
        assert!(close(short.transfer_ns.p50, 10 * ms) && close(long.transfer_ns.p50, 80 * ms));
        assert!(close(short.queue_ns.max, 30 * ms) && close(short.latency_ns.max, 40 * ms));
        assert_eq!(short.request_bytes(), 1_000_000);
        // 1 MB over 10 ms; 8 MB over 80 ms.
        assert!((short.gbps() - 0.1).abs() < 1e-3 && (long.gbps() - 0.1).abs() < 1e-3, "{}", short.gbps());
        let back = figures::decode_histogram(&short.transfer_histogram).unwrap();
        assert_eq!(back.len(), 3);
    }
}
