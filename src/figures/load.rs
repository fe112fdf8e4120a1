//! A load point's figures: offered and achieved rates, queueing against
//! theory, what the decode side holds and its buffer (measure::load
//! gathers them).

use super::{decode_histogram, encode_histogram, new_histogram, LatencySummary};
use crate::schedule::residency::{OnFull, Residency};
use crate::schedule::Arrivals;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A load point's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadFigures {
    pub arrivals: Arrivals,
    /// The schedule's own rate: requests over the span of their arrivals.
    pub offered_qps: f64,
    /// Requests over the time from the point's start to the last byte.
    pub achieved_qps: f64,
    pub offered_gbps: f64,
    pub achieved_gbps: f64,
    /// The link could not keep up: achieved below 90% of offered.
    pub saturated: bool,
    /// Each prompt length's own figures, shortest first (one entry without
    /// a mix): the row's times are the whole mix's, never its longest's.
    #[serde(default)]
    pub by_prompt: Vec<PromptLoad>,
    /// From arrival to the request's go.
    pub queue_ns: LatencySummary,
    /// The queueing histogram, HdrHistogram V2 + DEFLATE, base64 (a fan's
    /// hub merges its pairs').
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue_histogram: String,
    /// One server (one lane, one pair): the mean queueing delay that
    /// queueing theory gives from this run's own service times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_theory: Option<QueueTheory>,
    /// Mean queueing delay of the last half of the requests less that of the
    /// first half: near zero when the link keeps up, large when a queue builds.
    pub queue_growth_ns: f64,
    /// From arrival to the decode side holding the last byte.
    pub latency_ns: LatencySummary,
    /// The latency histogram, HdrHistogram V2 + DEFLATE, base64.
    pub latency_histogram: String,
    pub decode_hold_ns: u64,
    /// KV held on the decode side: from each request's go to its last byte
    /// plus the hold (with --decode-buffer, what is in the buffer).
    pub resident: Residency,
    /// With --decode-buffer: its size and what happened past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_buffer: Option<BufferFigures>,
    /// KV held on the prefill side: each request's from its arrival (its
    /// KV exists then) until the decode side holds its last byte (pushed,
    /// or read by a pull). Under saturation, this is where the queue sits.
    #[serde(default)]
    pub prefill_resident: Residency,
}

/// One prompt length's requests within a load point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptLoad {
    pub tokens: u32,
    pub requests: u64,
    /// Their bytes, summed (a P x D decode rank's: its shares of them).
    pub bytes: u64,
    /// Each request's transfer, from its go to its last byte.
    pub transfer_ns: LatencySummary,
    pub transfer_histogram: String,
    /// From arrival to go.
    pub queue_ns: LatencySummary,
    pub queue_histogram: String,
    /// From arrival to the decode side holding the last byte.
    pub latency_ns: LatencySummary,
    pub latency_histogram: String,
}

impl PromptLoad {
    /// One request's bytes.
    pub fn request_bytes(&self) -> u64 {
        self.bytes / self.requests.max(1)
    }

    /// A request's bytes over this length's mean transfer time (sharing the
    /// link with the mix's other requests in flight), GB/s.
    pub fn gbps(&self) -> f64 {
        crate::units::gbps(self.request_bytes(), self.transfer_ns.mean)
    }

    /// Independent pairs' lengths as one: counts and bytes summed, times
    /// from the merged histograms; shortest first.
    pub fn merge<'a>(each: impl Iterator<Item = &'a [PromptLoad]>) -> Vec<PromptLoad> {
        let mut merged: Vec<(PromptLoad, [Histogram<u64>; 3])> = Vec::new();
        for p in each.flatten() {
            let at = match merged.iter().position(|m| m.0.tokens == p.tokens) {
                Some(at) => at,
                None => {
                    let empty = PromptLoad { tokens: p.tokens, ..PromptLoad::default() };
                    merged.push((empty, [new_histogram(), new_histogram(), new_histogram()]));
                    merged.len() - 1
                }
            };
            let (m, hs) = &mut merged[at];
            (m.requests, m.bytes) = (m.requests + p.requests, m.bytes + p.bytes);
            for (h, text) in
                hs.iter_mut().zip([&p.transfer_histogram, &p.queue_histogram, &p.latency_histogram])
            {
                if let Ok(one) = decode_histogram(text) {
                    h.add(&one).expect("same bounds");
                }
            }
        }
        merged.sort_by_key(|m| m.0.tokens);
        let done = |(mut m, [t, q, l]): (PromptLoad, [Histogram<u64>; 3])| {
            (m.transfer_ns, m.transfer_histogram) = (LatencySummary::of(&t), encode_histogram(&t));
            (m.queue_ns, m.queue_histogram) = (LatencySummary::of(&q), encode_histogram(&q));
            (m.latency_ns, m.latency_histogram) = (LatencySummary::of(&l), encode_histogram(&l));
            m
        };
        merged.into_iter().map(done).collect()
    }
}

/// The mean queueing delay of one server that does nothing but serve, to
/// hold the engine's own against: what it adds between requests (control
/// messages, checks, its own bookkeeping) shows as queueing above these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueTheory {
    /// The run's mean queueing delay (arrival to go).
    pub mean_ns: f64,
    /// Offered load: arrival rate times the mean service time (go to last byte).
    pub rho: f64,
    /// Poisson arrivals below saturation: M/G/1's mean wait
    /// (Pollaczek-Khinchine), lambda E[S^2] / (2 (1 - rho)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mg1_ns: Option<f64>,
    /// An ideal server on these very arrivals and service times (Lindley:
    /// each starts at its arrival or when the one before it ends).
    pub ideal_ns: f64,
    /// The mean service time (go to last byte).
    #[serde(default)]
    pub service_ns: f64,
    /// What the engine takes between requests: from a request's last byte
    /// to the go of the next, over the requests that had arrived by then
    /// (an ideal server's is 0). None when no request queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub between_ns: Option<f64>,
}

impl QueueTheory {
    /// Whether what the engine does between requests (checking the last
    /// one, writing the next) is a tenth of a request's time or more: then
    /// the queue is partly kvxfer's own, not the link's.
    pub fn harness_bound(&self) -> bool {
        self.between_ns.is_some_and(|b| b >= 0.1 * self.service_ns)
    }

    /// From requests' (arrival, go, last byte) in arrival order, at the
    /// schedule's rate `qps`; None for fewer than two requests.
    pub fn of(requests: &[(u64, u64, u64)], qps: f64, poisson: bool) -> Option<QueueTheory> {
        if requests.len() < 2 {
            return None;
        }
        let n = requests.len() as f64;
        let service: Vec<f64> = requests.iter().map(|r| r.2.saturating_sub(r.1) as f64).collect();
        let mean_s = service.iter().sum::<f64>() / n;
        let mean_s2 = service.iter().map(|s| s * s).sum::<f64>() / n;
        let lambda = qps / 1e9;
        let rho = lambda * mean_s;
        let mg1_ns = (poisson && rho < 1.0).then(|| lambda * mean_s2 / (2.0 * (1.0 - rho)));
        let (mut free_at, mut waited) = (0.0f64, 0.0);
        for (r, s) in requests.iter().zip(&service) {
            let at = r.0 as f64;
            let start = at.max(free_at);
            waited += start - at;
            free_at = start + s;
        }
        let mean_ns = requests.iter().map(|r| r.1.saturating_sub(r.0) as f64).sum::<f64>() / n;
        let gaps: Vec<f64> = requests
            .windows(2)
            .filter(|w| w[1].0 <= w[0].2)
            .map(|w| w[1].1.saturating_sub(w[0].2) as f64)
            .collect();
        let between_ns = (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64);
        Some(QueueTheory { mean_ns, rho, mg1_ns, ideal_ns: waited / n, service_ns: mean_s, between_ns })
    }
}

/// A decode buffer under load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferFigures {
    pub capacity_bytes: u64,
    pub on_full: OnFull,
    /// Tensors (messages) and bytes that went to the pinned pool, and the
    /// requests that had any.
    pub spilled_tensors: u64,
    pub spilled_bytes: u64,
    pub spilled_requests: u64,
    /// Copying a request's spilled tensors to the pool (on the receive
    /// path, in its latency) and back (when decode loads them).
    pub spill_store_ns: LatencySummary,
    pub spill_load_ns: LatencySummary,
    /// What the pool holds: from each spill until the request's release.
    pub pooled: Residency,
    /// The peak the buffer and the pool held together: the size at which
    /// nothing would have spilled (or waited) in this run.
    pub demand_peak_bytes: u64,
    /// Requests that waited for room (--on-full wait), and the waits.
    pub waited_requests: u64,
    pub wait_ns: LatencySummary,
}
