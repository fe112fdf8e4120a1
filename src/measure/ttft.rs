//! What the KV transfer adds to time-to-first-token, with emulated prefill:
//! the receiver's account of each request of a point's second phase, where
//! the sender computes the KV as the request goes (see measure::compute).
//!
//! The added TTFT of a request runs from the end of the sender's last
//! layer to the receiver holding the last byte. On one host both instants
//! are CLOCK_MONOTONIC and compare directly; across hosts the sender's
//! compute is placed on the receiver's clock from when the receiver said go
//! plus half the control round trip.

use crate::figures::prefill::{PrefillFigures, PromptPrefill};
use crate::figures::{self, LatencySummary};
use crate::kv::KvShape;
use crate::plan::{Overlap, Plan, Point, Prefill};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};

/// One prompt length's requests in a tally.
struct PromptTally {
    transfer: Histogram<u64>,
    during: Histogram<u64>,
    added: Histogram<u64>,
}

impl PromptTally {
    fn new() -> Self {
        PromptTally {
            transfer: figures::new_histogram(),
            during: figures::new_histogram(),
            added: figures::new_histogram(),
        }
    }
}

/// The sender's account of one request's compute, CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug)]
pub struct Computed {
    pub began: u64,
    pub ended: u64,
}

/// One share of request `key`: a P x D decode rank reads one from each of
/// its prefill ranks (`shares` of them), from its go to its last byte, with
/// its rank's compute on the tally's clock (see `TtftTally::place`), or
/// none in the phase without compute.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub key: u64,
    pub shares: usize,
    pub tokens: u32,
    pub go: u64,
    pub last: u64,
    pub computed: Option<Computed>,
    pub measured: bool,
}

impl Share {
    /// At a P x D decode rank fed by `pairs` prefill ranks: the key base of
    /// its prefill instance's requests (each instance its own), and how
    /// many shares make one of them.
    pub fn of_instance(t: &crate::plan::TpPlan, pairs: usize) -> (u64, usize) {
        ((t.instance as u64) << 32, pairs / t.instances.max(1) as usize)
    }
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
    by_tokens: BTreeMap<u32, PromptTally>,
    /// Requests some of whose shares are in: (shares, first go, last byte, compute).
    pending: HashMap<u64, (usize, u64, u64, Option<Computed>)>,
}

impl TtftTally {
    pub fn new(same_host: bool) -> Self {
        TtftTally {
            same_host,
            compute: String::new(),
            one_way_ns: 0,
            alone: figures::new_histogram(),
            during: figures::new_histogram(),
            ttft: figures::new_histogram(),
            added: figures::new_histogram(),
            by_tokens: BTreeMap::new(),
            pending: HashMap::new(),
        }
    }

    /// A measured request of `tokens` moved in `ns` without compute (the first phase).
    pub fn transfer_alone(&mut self, tokens: u32, ns: u64) {
        self.prompt(tokens).transfer.saturating_record(ns.max(1));
    }

    fn prompt(&mut self, tokens: u32) -> &mut PromptTally {
        self.by_tokens.entry(tokens).or_insert_with(PromptTally::new)
    }

    /// Another tally's requests (a lane's, a pair's) into this one.
    pub fn merge(&mut self, other: &TtftTally) {
        if self.compute.is_empty() {
            (self.compute, self.one_way_ns) = (other.compute.clone(), other.one_way_ns);
        }
        let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            let _ = a.add(b);
        };
        add(&mut self.alone, &other.alone);
        add(&mut self.during, &other.during);
        add(&mut self.ttft, &other.ttft);
        add(&mut self.added, &other.added);
        for (tokens, o) in &other.by_tokens {
            let mine = self.prompt(*tokens);
            add(&mut mine.transfer, &o.transfer);
            add(&mut mine.during, &o.during);
            add(&mut mine.added, &o.added);
        }
    }

    /// A share of a request (see `Share`): once all its shares are in, the
    /// request counts whole, from its first share's go to its last share's
    /// last byte, and its added TTFT from the later rank's last layer.
    pub fn share(&mut self, s: Share) {
        let Share { key, shares, tokens, go, last, computed: c, measured } = s;
        let joined = self.pending.entry(key).or_insert((0, go, last, c));
        joined.0 += 1;
        joined.1 = joined.1.min(go);
        joined.2 = joined.2.max(last);
        if let (Some(j), Some(c)) = (&mut joined.3, c) {
            *j = Computed { began: j.began.min(c.began), ended: j.ended.max(c.ended) };
        }
        if joined.0 < shares {
            return;
        }
        let (_, go, last, c) = self.pending.remove(&key).expect("just joined");
        match c {
            Some(c) => {
                self.request(tokens, go, last, c, measured);
            }
            None if measured => self.transfer_alone(tokens, last.saturating_sub(go)),
            None => {}
        }
    }

    /// The sender's compute `c` of a request whose go was at `go`, on
    /// this side's clock (see `request`).
    pub fn place(&self, go: u64, c: Computed) -> Computed {
        match self.same_host {
            true => c,
            false => {
                let began = go + self.one_way_ns;
                Computed { began, ended: began + c.ended.saturating_sub(c.began) }
            }
        }
    }

    /// The sender's compute alone, what computes, and its control round trip.
    pub fn alone(&mut self, runs_ns: &[u64], compute: String, control_rtt_ns: u64) {
        (self.compute, self.one_way_ns) = (compute, control_rtt_ns / 2);
        for &ns in runs_ns {
            self.alone.saturating_record(ns.max(1));
        }
    }

    /// The added TTFT of a request of `tokens` the receiver said go for at
    /// `go` and held whole at `last` (its CLOCK_MONOTONIC ns); records it
    /// when `measured`.
    pub fn request(&mut self, tokens: u32, go: u64, last: u64, c: Computed, measured: bool) -> u64 {
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
            let p = self.prompt(tokens);
            p.during.saturating_record(compute.max(1));
            p.added.saturating_record(added.max(1));
        }
        added
    }

    /// The point's figures; `alone_p50_ns` is the transfer alone, `layer_ns`
    /// each layer's asked compute (the longest's, under a mix or in a
    /// conversation), and `compute_of` what a key computes (see `Keyed`).
    pub fn figures(
        &self,
        overlap: Overlap,
        layer_ns: &[u64],
        alone_p50_ns: u64,
        compute_of: &dyn Fn(u32) -> Keyed,
    ) -> PrefillFigures {
        let added_ns = LatencySummary::of(&self.added);
        let bound = |transfer_ns: u64, layer_ns: &[u64]| match overlap {
            Overlap::Layer => pipeline_bound(transfer_ns, layer_ns),
            Overlap::None => transfer_ns,
        };
        let by_prompt: Vec<PromptPrefill> = match self.by_tokens.len() {
            0 | 1 => Vec::new(),
            _ => self
                .by_tokens
                .iter()
                .map(|(&key, p)| {
                    let (keyed, transfer) = (compute_of(key), p.transfer.value_at_quantile(0.5));
                    let (added_ns, layers) = (LatencySummary::of(&p.added), &keyed.layer_ns);
                    PromptPrefill {
                        tokens: keyed.tokens,
                        turn: keyed.turn,
                        asked_ns: layers.iter().sum(),
                        during_ns: LatencySummary::of(&p.during),
                        exposed_share: added_ns.p50 as f64 / transfer.max(1) as f64,
                        added_ns,
                        transfer_alone_p50_ns: transfer,
                        lower_bound_ns: bound(transfer, layers),
                    }
                })
                .collect(),
        };
        // Under a mix, the longest compute's share and bound, as its compute alone.
        let (alone_p50_ns, exposed_p50) = match by_prompt.iter().max_by_key(|p| (p.asked_ns, p.tokens)) {
            Some(p) => (p.transfer_alone_p50_ns, p.added_ns.p50),
            None => (alone_p50_ns, added_ns.p50),
        };
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
            exposed_share: exposed_p50 as f64 / alone_p50_ns.max(1) as f64,
            added_ns,
            added_histogram: figures::encode_histogram(&self.added),
            lower_bound_ns: bound(alone_p50_ns, layer_ns),
            by_prompt,
            under_load: None,
        }
    }
}

/// What the requests of one key of a tally compute: a prompt length's
/// whole prompt, or in a conversation a turn's span past prefill's cache
/// (keyed by `Plan::prefill_key`).
pub struct Keyed {
    pub turn: Option<u32>,
    pub tokens: u32,
    pub layer_ns: Vec<u64>,
}

/// What a point's prefill figures take from the plan (both engines, and a
/// hub's decode instance, compute them through it).
#[derive(Clone)]
pub struct PrefillOfPoint {
    prefill: Prefill,
    shape: KvShape,
    /// The longest compute's layers.
    layer_ns: Vec<u64>,
    /// In a conversation, by turn number: the tokens that turn computes
    /// (of the first conversation that has it) and their layers.
    turns: BTreeMap<u32, (u32, Vec<u64>)>,
}

impl PrefillOfPoint {
    pub fn of(plan: &Plan, point: &Point) -> Option<Self> {
        let (prefill, layer_ns) = (plan.prefill.clone()?, point.prefill_ns.clone()?);
        let mut turns = BTreeMap::new();
        for c in point.turns.iter().flat_map(|t| &t.conversations) {
            for (&t, span) in c.moving.iter().zip(&c.computes) {
                let (from, to) = (span.from as u32, span.to as u32);
                if let std::collections::btree_map::Entry::Vacant(e) = turns.entry(c.moves[t].turn.turn) {
                    e.insert((to - from, prefill.layer_ns_span(&plan.shape, from, to).unwrap_or_default()));
                }
            }
        }
        Some(PrefillOfPoint { prefill, shape: plan.shape.clone(), layer_ns, turns })
    }

    /// The added TTFT's figures, against the transfer alone's p50.
    pub fn figures(&self, ttft: &TtftTally, alone_p50_ns: u64) -> PrefillFigures {
        let compute_of = |key| match self.turns.get(&key) {
            Some((tokens, layer_ns)) => {
                Keyed { turn: Some(key), tokens: *tokens, layer_ns: layer_ns.clone() }
            }
            None => Keyed {
                turn: None,
                tokens: key,
                layer_ns: self.prefill.layer_ns(&self.shape, key).unwrap_or_default(),
            },
        };
        ttft.figures(self.prefill.overlap, &self.layer_ns, alone_p50_ns, &compute_of)
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
        assert_eq!(one.request(64, 500, 2_035_000, c, true), 34_000);
        // Two hosts: compute began half a round trip after the go.
        let mut two = TtftTally::new(false);
        two.alone(&[], "busy".into(), 1_000_000);
        let c = Computed { began: 77, ended: 2_000_077 }; // the sender's clock
        assert_eq!(two.request(64, 10_000_000, 12_534_000, c, true), 34_000);
        // A warm-up is not recorded; a clock that disagrees gives 0, not a wrap.
        assert_eq!(two.request(64, 10_000_000, 10_000_000, c, false), 0);
        let prompt = |layer_ns: u64| move |tokens| Keyed { turn: None, tokens, layer_ns: vec![layer_ns; 32] };
        let f = one.figures(Overlap::Layer, &[62_500; 32], 1_088_000, &prompt(62_500));
        assert_eq!((f.alone_ns.count, f.added_ns.count, f.during_ns.count), (3, 1, 1));
        assert_eq!(f.lower_bound_ns, 34_000);
        assert!((f.exposed_share - 34.0 / 1088.0).abs() < 0.001, "{}", f.exposed_share);
        assert!((f.ttft_ns.p50 as f64 - 2_034_000.0).abs() < 3_000.0, "{}", f.ttft_ns.p50);
        assert_eq!(one.figures(Overlap::None, &[0; 32], 1_088_000, &prompt(0)).lower_bound_ns, 1_088_000);
        assert!(f.by_prompt.is_empty());
    }

    #[test]
    fn a_mix_has_each_prompt_length_s_figures() {
        let mut t = TtftTally::new(true);
        // 1k: 1 ms alone, 0.1 ms added; 8k: 8 ms alone, 2 ms added.
        for _ in 0..3 {
            t.transfer_alone(1024, 1_000_000);
            t.transfer_alone(8192, 8_000_000);
            t.request(1024, 0, 10_100_000, Computed { began: 0, ended: 10_000_000 }, true);
            t.request(8192, 0, 82_000_000, Computed { began: 0, ended: 80_000_000 }, true);
        }
        let of = |tokens: u32| vec![tokens as u64 * 10_000 / 32; 32];
        let keyed = |tokens| Keyed { turn: None, tokens, layer_ns: of(tokens) };
        let f = t.figures(Overlap::None, &of(8192), 4_000_000, &keyed);
        let p: Vec<(u32, u64, u64, u64)> = f
            .by_prompt
            .iter()
            .map(|p| (p.tokens, p.asked_ns, p.transfer_alone_p50_ns, p.lower_bound_ns))
            .collect();
        let close = |a: u64, b: u64| (a as f64 - b as f64).abs() <= b as f64 * 0.002;
        assert_eq!((p[0].0, p[0].1, p[1].0, p[1].1), (1024, 10_240_000, 8192, 81_920_000));
        assert!(close(p[0].2, 1_000_000) && close(p[1].2, 8_000_000), "{p:?}");
        assert_eq!((p[0].3, p[1].3), (p[0].2, p[1].2), "without overlap the bound is the transfer");
        assert!((f.by_prompt[1].exposed_share - 0.25).abs() < 0.01, "{}", f.by_prompt[1].exposed_share);
        // The row's share is the longest's, not the mix's p50 over the given transfer.
        assert!((f.exposed_share - 0.25).abs() < 0.01, "{}", f.exposed_share);
        assert_eq!(f.added_ns.count, 6);
        // Merged tallies keep every length.
        let mut m = TtftTally::new(true);
        m.merge(&t);
        m.merge(&t);
        assert_eq!(m.figures(Overlap::None, &of(8192), 1, &keyed).by_prompt[0].added_ns.count, 6);
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
