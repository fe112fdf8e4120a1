//! What the KV transfer adds to time-to-first-token, with emulated prefill:
//! the receiver's account of each request of a point's second phase, where
//! the sender computes the KV as the request goes (see measure::compute).
//!
//! The added TTFT of a request runs from the end of the sender's last
//! layer to the receiver holding the last byte. On one host both instants
//! are CLOCK_MONOTONIC and compare directly; across hosts the sender's
//! compute is placed on the receiver's clock from when the receiver said go
//! plus half the control round trip.

use super::stats::{self, LatencySummary};
use crate::plan::Overlap;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A point's figures with emulated prefill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillFigures {
    pub overlap: Overlap,
    /// What computed the layers (a kernel, a busy wait).
    pub compute: String,
    /// How the two sides' instants were compared.
    pub clock: String,
    /// The prefill asked for: every layer's time, summed.
    pub asked_ns: u64,
    /// The compute alone, before the point's requests.
    pub alone_ns: LatencySummary,
    /// The compute while the requests moved.
    pub during_ns: LatencySummary,
    /// Time-to-first-token as far as KV goes: compute plus added, per request.
    pub ttft_ns: LatencySummary,
    /// From the last layer's end to the decode side holding the last byte.
    pub added_ns: LatencySummary,
    /// The added-TTFT histogram, HdrHistogram V2 + DEFLATE, base64.
    pub added_histogram: String,
    /// Added TTFT over the transfer alone (p50s): the share not hidden.
    pub exposed_share: f64,
    /// The least any pipeline could add at the transfer's p50 rate alone:
    /// the whole transfer (none); with layer overlap, the last layer's own
    /// transfer, or more when layers are made faster than they move
    /// (see `pipeline_bound`).
    pub lower_bound_ns: u64,
    /// Under --arrivals: the second phase's load figures, each request's
    /// prefill computed from its go, so latency (arrival to the decode side
    /// holding the last byte) is queueing, prefill and the added TTFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_load: Option<Box<super::load::LoadFigures>>,
}

/// The sender's account of one request's compute, CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug)]
pub struct Computed {
    pub began: u64,
    pub ended: u64,
}

/// The receiver's tally of a point's computing requests.
pub struct TtftTally {
    same_host: bool,
    compute: String,
    /// Half the control round trip: the go's way to the sender.
    one_way_ns: u64,
    alone: Histogram<u64>,
    during: Histogram<u64>,
    ttft: Histogram<u64>,
    added: Histogram<u64>,
}

impl TtftTally {
    pub fn new(same_host: bool) -> Self {
        TtftTally {
            same_host,
            compute: String::new(),
            one_way_ns: 0,
            alone: stats::new_histogram(),
            during: stats::new_histogram(),
            ttft: stats::new_histogram(),
            added: stats::new_histogram(),
        }
    }

    /// The sender's compute alone, what computes, and its control round trip.
    pub fn alone(&mut self, runs_ns: &[u64], compute: String, control_rtt_ns: u64) {
        (self.compute, self.one_way_ns) = (compute, control_rtt_ns / 2);
        for &ns in runs_ns {
            self.alone.saturating_record(ns.max(1));
        }
    }

    /// The added TTFT of a request the receiver said go for at `go` and
    /// held whole at `last` (its CLOCK_MONOTONIC ns); records it when `measured`.
    pub fn request(&mut self, go: u64, last: u64, c: Computed, measured: bool) -> u64 {
        let compute = c.ended.saturating_sub(c.began);
        let ended_here = match self.same_host {
            true => c.ended,
            false => go + self.one_way_ns + compute,
        };
        let added = last.saturating_sub(ended_here);
        if measured {
            self.during.saturating_record(compute.max(1));
            self.added.saturating_record(added.max(1));
            self.ttft.saturating_record((compute + added).max(1));
        }
        added
    }

    /// The point's figures; `alone_p50_ns` is the transfer alone, `layer_ns`
    /// each layer's asked compute.
    pub fn figures(&self, overlap: Overlap, layer_ns: &[u64], alone_p50_ns: u64) -> PrefillFigures {
        let added_ns = LatencySummary::of(&self.added);
        PrefillFigures {
            overlap,
            compute: self.compute.clone(),
            clock: match self.same_host {
                true => "one host: both sides' CLOCK_MONOTONIC".into(),
                false => format!(
                    "two hosts: the sender's compute placed at the go plus half the control round trip ({:.0} us)",
                    self.one_way_ns as f64 / 1e3
                ),
            },
            asked_ns: layer_ns.iter().sum(),
            alone_ns: LatencySummary::of(&self.alone),
            during_ns: LatencySummary::of(&self.during),
            ttft_ns: LatencySummary::of(&self.ttft),
            exposed_share: added_ns.p50 as f64 / alone_p50_ns.max(1) as f64,
            added_ns,
            added_histogram: stats::encode_histogram(&self.added),
            lower_bound_ns: match overlap {
                Overlap::Layer => pipeline_bound(alone_p50_ns, layer_ns),
                Overlap::None => alone_p50_ns,
            },
            under_load: None,
        }
    }
}

/// The least a layer-by-layer pipeline can add after its last layer: the
/// transfer (`transfer_ns`, an equal share per layer, as KV is) cannot
/// start a layer before its compute ends, so the bytes of layers l.. still
/// need (L - l) / L of the transfer after layer l ends, of which the later
/// layers' compute hides at most their own time. The largest over l: the
/// last layer's own share when compute outpaces the link, nearly the whole
/// transfer less the prefill when the link is the slower.
pub fn pipeline_bound(transfer_ns: u64, layer_ns: &[u64]) -> u64 {
    let layers = layer_ns.len().max(1) as f64;
    let mut later_compute = 0.0;
    let mut bound = 0.0f64;
    for (l, ns) in layer_ns.iter().enumerate().rev() {
        let remaining = transfer_ns as f64 * (layer_ns.len() - l) as f64 / layers;
        bound = bound.max(remaining - later_compute);
        later_compute += *ns as f64;
    }
    bound.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_ttft_runs_from_the_last_layer_to_the_last_byte() {
        // One host: the sender's instants are the receiver's.
        let mut one = TtftTally::new(true);
        one.alone(&[2_000_000, 2_010_000, 1_990_000], "busy".into(), 1_000_000);
        let c = Computed { began: 1_000, ended: 2_001_000 };
        assert_eq!(one.request(500, 2_035_000, c, true), 34_000);
        // Two hosts: compute began half a round trip after the go.
        let mut two = TtftTally::new(false);
        two.alone(&[], "busy".into(), 1_000_000);
        let c = Computed { began: 77, ended: 2_000_077 }; // the sender's clock
        assert_eq!(two.request(10_000_000, 12_534_000, c, true), 34_000);
        // A warm-up is not recorded; a clock that disagrees gives 0, not a wrap.
        assert_eq!(two.request(10_000_000, 10_000_000, c, false), 0);
        let f = one.figures(Overlap::Layer, &[62_500; 32], 1_088_000);
        assert_eq!((f.alone_ns.count, f.added_ns.count, f.during_ns.count), (3, 1, 1));
        assert_eq!(f.lower_bound_ns, 34_000);
        assert!((f.exposed_share - 34.0 / 1088.0).abs() < 0.001, "{}", f.exposed_share);
        assert!((f.ttft_ns.p50 as f64 - 2_034_000.0).abs() < 3_000.0, "{}", f.ttft_ns.p50);
        assert_eq!(one.figures(Overlap::None, &[0; 32], 1_088_000).lower_bound_ns, 1_088_000);
    }

    #[test]
    fn the_pipeline_bound_is_one_layer_or_what_compute_cannot_hide() {
        // Compute per layer longer than a layer's transfer: the last layer's share.
        assert_eq!(pipeline_bound(32_000, &[5_000; 32]), 1_000);
        // Compute faster than the link: the transfer less all but the last layer's compute.
        assert_eq!(pipeline_bound(320_000, &[5_000; 32]), 320_000 - 31 * 5_000);
        // No compute at all: the whole transfer.
        assert_eq!(pipeline_bound(320_000, &[0; 32]), 320_000);
        // Uneven layers: cheap ones at the end hide little of what the slow
        // ones before them left (4000 / 4 per layer; layer 1 ends 2800 before the last byte can).
        assert_eq!(pipeline_bound(4_000, &[3_000, 3_000, 100, 100]), 2_800);
        assert_eq!(pipeline_bound(4_000, &[100, 100, 3_000, 3_000]), 1_000);
    }
}
