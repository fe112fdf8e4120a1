//! A point's figures with emulated prefill: what the KV transfer adds to
//! time-to-first-token (measure::ttft gathers them).

use super::load::LoadFigures;
use super::LatencySummary;
use crate::plan::Overlap;
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
    /// Under a mix of prompt lengths, each length's own figures (the
    /// fields above then hold every request's added TTFT together, and the
    /// asked time, compute alone, bound and share of the longest compute,
    /// which is timed alone); in a conversation, each turn's. Empty with
    /// one length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_prompt: Vec<PromptPrefill>,
    /// Under --arrivals: the second phase's load figures, each request's
    /// prefill computed from its go, so latency (arrival to the decode side
    /// holding the last byte) is queueing, prefill and the added TTFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_load: Option<Box<LoadFigures>>,
}

impl PrefillFigures {
    /// One length's own figures under a mix (`PointResult::per_length`);
    /// None for a length the mix did not time.
    pub fn of_length(&self, tokens: u32) -> Option<PrefillFigures> {
        let b = self.by_prompt.iter().find(|b| b.tokens == tokens && b.turn.is_none())?;
        Some(PrefillFigures {
            asked_ns: b.asked_ns,
            during_ns: b.during_ns.clone(),
            added_ns: b.added_ns.clone(),
            exposed_share: b.exposed_share,
            lower_bound_ns: b.lower_bound_ns,
            // The whole mix's alone, TTFT and histogram: not this length's.
            alone_ns: LatencySummary::default(),
            ttft_ns: LatencySummary::default(),
            added_histogram: String::new(),
            by_prompt: Vec::new(),
            under_load: None,
            ..self.clone()
        })
    }
}

/// One prompt length's share of a mix's prefill figures, or a
/// conversation turn's (`turn`; `tokens` then are those its prefill
/// computes, past what it has cached).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptPrefill {
    pub tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
    pub asked_ns: u64,
    pub during_ns: LatencySummary,
    pub added_ns: LatencySummary,
    /// This length's transfer without compute (the first phase), p50.
    pub transfer_alone_p50_ns: u64,
    pub exposed_share: f64,
    pub lower_bound_ns: u64,
}
