//! What a run reports, as plain data: latency histograms and the figures
//! of each sweep point. The engine (measure) gathers them, the session
//! carries them, report prints them; nothing here measures.

pub mod conversation;
pub mod load;
pub mod nixl;
pub mod prefill;

use crate::error::{Error, Result};
use crate::plan::Granularity;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Nanoseconds from 1 ns to an hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// A latency distribution in nanoseconds. In a report a tail its count
/// cannot support is written null (`SummaryOnWire`), and read back as 0
/// behind the `*_supported` methods that every output goes through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "SummaryOnWire", from = "SummaryOnWire")]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    /// Standard deviation (0 in reports older than it).
    #[serde(default)]
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// `LatencySummary` as reports hold it: p90, p99 and p99.9 only where their
/// count supports them (10, 100 and 1000 values), else null.
#[derive(Serialize, Deserialize)]
struct SummaryOnWire {
    count: u64,
    min: u64,
    mean: f64,
    #[serde(default)]
    stdev: f64,
    p50: u64,
    p90: Option<u64>,
    p99: Option<u64>,
    p999: Option<u64>,
    max: u64,
}

impl From<LatencySummary> for SummaryOnWire {
    fn from(s: LatencySummary) -> Self {
        let (p90, p99, p999) = (s.p90_supported(), s.p99_supported(), s.p999_supported());
        SummaryOnWire {
            count: s.count,
            min: s.min,
            mean: s.mean,
            stdev: s.stdev,
            p50: s.p50,
            p90,
            p99,
            p999,
            max: s.max,
        }
    }
}

impl From<SummaryOnWire> for LatencySummary {
    fn from(w: SummaryOnWire) -> Self {
        LatencySummary {
            count: w.count,
            min: w.min,
            mean: w.mean,
            stdev: w.stdev,
            p50: w.p50,
            p90: w.p90.unwrap_or(0),
            p99: w.p99.unwrap_or(0),
            p999: w.p999.unwrap_or(0),
            max: w.max,
        }
    }
}

impl LatencySummary {
    /// The p90 where its count supports one (10 values or more), else None.
    pub fn p90_supported(&self) -> Option<u64> {
        (self.count >= 10).then_some(self.p90)
    }

    /// The p99 where its count supports one (100 values or more), else None:
    /// below that it is one of the few largest values, not a tail.
    pub fn p99_supported(&self) -> Option<u64> {
        (self.count >= crate::plan::gate::TAIL_REQUESTS as u64).then_some(self.p99)
    }

    /// The p99.9 from 1000 values or more.
    pub fn p999_supported(&self) -> Option<u64> {
        (self.count >= 1000).then_some(self.p999)
    }

    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            stdev: h.stdev(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Everything measured at one sweep point, as both sides report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    pub point: usize,
    pub granularity: Granularity,
    /// The requests' prompt length; 0 for a load point whose requests had
    /// several (a mix: each length's figures are in `load.by_prompt`, and
    /// `request_bytes` is the mean request's).
    pub prompt_tokens: u32,
    pub messages: usize,
    /// Operations per request: messages, or for blocks the descriptors
    /// left after merging adjacent ones (0 in reports older than that).
    #[serde(default)]
    pub operations: usize,
    pub message_bytes: usize,
    pub request_bytes: usize,
    pub iterations: u32,
    pub warmup: u32,
    /// Time from the receiver's go to the request's last byte, per request.
    pub request_ns: LatencySummary,
    /// Time each message took, from when its receiver began on it.
    pub message_ns: LatencySummary,
    /// The point's first request (a warm-up one if there are any): connection
    /// setup and first touches land here, outside the histograms.
    pub first_request_ns: u64,
    /// Request bytes over the mean request time, GB/s (1e9 bytes/s).
    pub gbps: f64,
    /// Request bytes over the median request time, GB/s.
    pub gbps_p50: f64,
    pub percent_of_peak: Option<f64>,
    /// Bytes checked against the pattern, warm-up included.
    pub verified_bytes: u64,
    pub wrong_bytes: u64,
    pub first_wrong: Option<String>,
    /// The request-latency histogram, HdrHistogram V2 + DEFLATE, base64.
    pub request_histogram: String,
    /// On a fan's hub, where this point is all pairs together: each pair's own figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan: Option<FanFigures>,
    /// With emulated prefill: what the transfer adds to time-to-first-token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<prefill::PrefillFigures>,
    /// Under serving load: queueing, latency from arrival, resident bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<load::LoadFigures>,
    /// Multi-turn conversations: each turn's bytes and times, the mode against full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<conversation::ConversationFigures>,
    /// NIXL: where each request's time went (transport::nixl::figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nixl: Option<nixl::NixlFigures>,
}

impl PointResult {
    /// A load point whose requests had several prompt lengths (a
    /// conversation's turns are its own figures, not a mix).
    pub fn is_mix(&self) -> bool {
        self.conversation.is_none() && self.load.as_ref().is_some_and(|l| l.by_prompt.len() > 1)
    }

    /// The prompt column: the length, "mix", or a conversation's turns
    /// ("5-turn"; its prompt_tokens are its last turn's, its whole context).
    pub fn prompt_label(&self) -> String {
        match &self.conversation {
            Some(c) => format!("{}-turn", c.turns.len()),
            None if self.is_mix() => "mix".into(),
            None => self.prompt_tokens.to_string(),
        }
    }

    /// A load point is named by the prompt lengths its requests had, never
    /// by the longest the plan allows: one length, that length and its
    /// request's bytes; several, prompt 0 and the mean request's bytes.
    /// (A conversation's point is named by its turns instead.)
    pub fn name_by_prompts(&mut self) {
        let Some(l) = self.load.as_ref().filter(|_| self.conversation.is_none()) else { return };
        let requests: u64 = l.by_prompt.iter().map(|p| p.requests).sum();
        let bytes: u64 = l.by_prompt.iter().map(|p| p.bytes).sum();
        if requests == 0 {
            return;
        }
        self.prompt_tokens = match l.by_prompt.as_slice() {
            [one] => one.tokens,
            _ => 0,
        };
        self.request_bytes = (bytes / requests) as usize;
    }

    /// The point as one point per prompt length, for what reads points by
    /// length (size, the gate, plots, comparisons): itself without a mix;
    /// under a mix, each length with its own count, bytes, transfer times
    /// and rate (sharing the link with the others), and its own added TTFT
    /// with emulated prefill. The mix's load figures stay with the mix.
    pub fn per_length(&self) -> Vec<PointResult> {
        let Some(l) = self.load.as_ref().filter(|_| self.is_mix()) else { return vec![self.clone()] };
        let each = |p: &load::PromptLoad| {
            let mut one = self.clone();
            one.prompt_tokens = p.tokens;
            one.request_bytes = p.request_bytes() as usize;
            // Blocks keep their size and grow in number; layers and whole
            // requests keep their number and grow in size.
            match self.granularity {
                Granularity::Block => one.messages = one.request_bytes.div_ceil(self.message_bytes.max(1)),
                _ => one.message_bytes = one.request_bytes / self.messages.max(1),
            }
            one.operations = one.operations.min(one.messages);
            one.request_ns = p.transfer_ns.clone();
            one.request_histogram = p.transfer_histogram.clone();
            one.gbps = p.gbps();
            one.gbps_p50 = crate::units::gbps(p.request_bytes(), p.transfer_ns.p50 as f64);
            one.percent_of_peak =
                self.percent_of_peak.filter(|_| self.gbps > 0.0).map(|v| v * one.gbps / self.gbps);
            (one.load, one.fan) = (None, None);
            one.prefill = self.prefill.as_ref().and_then(|f| f.of_length(p.tokens));
            one
        };
        l.by_prompt.iter().map(each).collect()
    }
}

/// An aggregate point's figures about the pairs within it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FanFigures {
    /// Each pair's own GB/s (its bytes over its mean request time), by pair.
    pub pair_gbps: Vec<f64>,
    /// Every pair's request times merged: the tail an incast adds.
    pub pair_request_ns: LatencySummary,
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).expect("histograms serialize to memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_histogram(text: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| Error::usage(format!("histogram is not base64: {e}")))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| Error::usage(format!("histogram does not decode: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_round_trip() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50 as f64 - 500_000.0).abs() / 500_000.0 < 0.002);
        assert!((s.p99 as f64 - 990_000.0).abs() / 990_000.0 < 0.002);
        assert!(s.max >= 999_000);
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(LatencySummary::of(&back), s);
        // A report keeps the tails 1000 values support, and none that 10 do not.
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["p999"].is_u64() && serde_json::from_value::<LatencySummary>(json).unwrap() == s);
        let mut few = new_histogram();
        for v in 1..=10u64 {
            few.record(v).unwrap();
        }
        let json = serde_json::to_value(LatencySummary::of(&few)).unwrap();
        assert!(json["p90"].is_u64() && json["p99"].is_null() && json["p999"].is_null(), "{json}");
        let read: LatencySummary = serde_json::from_value(json).unwrap();
        assert_eq!((read.p99_supported(), read.max), (None, 10));
        assert_eq!(LatencySummary::of(&new_histogram()), LatencySummary::default());
    }
}
