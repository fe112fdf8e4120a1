//! Where a NIXL request's time goes (nixl issue 2170, vLLM RFC 50913):
//! each side keeps a record per request, the initiator its steps and
//! NIXL's telemetry, the target when the transfer's notification reached
//! it; both travel in the transport info at the end of the run, and each
//! point's measured requests become histograms:
//! - ids: the request's descriptor indices, from its block ids;
//! - make: `make_xfer_req` (NIXL merges adjacent descriptors here, and
//!   the backend prepares the transfer);
//! - post: `post_xfer_req` (the backend starts every descriptor);
//! - transfer: from the post's return to `get_xfer_status` saying DONE;
//! - notified: from DONE on the initiator to the target seeing the
//!   notification, which it polls for while it waits (one host only,
//!   where both clocks are CLOCK_MONOTONIC);
//! - NIXL's own post and transfer durations (`get_xfer_telemetry`).

use super::{self as figures, LatencySummary};
use crate::plan::Plan;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One request as one side saw it: ns, instants CLOCK_MONOTONIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "[u64; 12]", into = "[u64; 12]")]
pub struct Record {
    pub request: u64,
    /// The transport's round: a conversation's turns share a request id.
    pub round: u64,
    pub ids_ns: u64,
    pub make_ns: u64,
    pub post_ns: u64,
    pub transfer_ns: u64,
    /// Initiator: when NIXL said DONE.
    pub done_at: u64,
    pub nixl_post_us: u64,
    pub nixl_xfer_us: u64,
    /// Descriptors given to make_xfer_req, and left after NIXL merged them.
    pub descriptors: u64,
    pub merged: u64,
    /// Target: when the transfer's notification arrived.
    pub notified_at: u64,
}

impl From<[u64; 12]> for Record {
    fn from(a: [u64; 12]) -> Record {
        let [request, round, ids_ns, make_ns, post_ns, transfer_ns, done_at, nixl_post_us, nixl_xfer_us, descriptors, merged, notified_at] =
            a;
        Record {
            request,
            round,
            ids_ns,
            make_ns,
            post_ns,
            transfer_ns,
            done_at,
            nixl_post_us,
            nixl_xfer_us,
            descriptors,
            merged,
            notified_at,
        }
    }
}

impl From<Record> for [u64; 12] {
    fn from(r: Record) -> [u64; 12] {
        [
            r.request,
            r.round,
            r.ids_ns,
            r.make_ns,
            r.post_ns,
            r.transfer_ns,
            r.done_at,
            r.nixl_post_us,
            r.nixl_xfer_us,
            r.descriptors,
            r.merged,
            r.notified_at,
        ]
    }
}

/// A side's records, in its transport info; taken out once they have
/// become figures (`RunReport::attach_nixl`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NixlRecords {
    /// Whether this side posted the transfers.
    pub initiator: bool,
    pub records: Vec<Record>,
    /// Requests past the records a side keeps.
    #[serde(default)]
    pub dropped: u64,
}

impl NixlRecords {
    /// Another lane's records of the same side.
    pub fn absorb(&mut self, other: NixlRecords) {
        self.records.extend(other.records);
        self.dropped += other.dropped;
    }
}

/// One point's NIXL steps, over its measured requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NixlFigures {
    pub requests: u64,
    /// Descriptors per request given to make_xfer_req, and NIXL's after merging (p50).
    pub descriptors: u64,
    pub merged_descriptors: u64,
    pub ids_ns: LatencySummary,
    pub make_ns: LatencySummary,
    pub post_ns: LatencySummary,
    pub transfer_ns: LatencySummary,
    /// DONE to the target's notification; None across hosts.
    pub notified_ns: Option<LatencySummary>,
    /// NIXL's telemetry, in ns.
    pub nixl_post_ns: LatencySummary,
    pub nixl_xfer_ns: LatencySummary,
    /// Each step's histogram, HdrHistogram V2 + DEFLATE, base64, by step.
    pub histograms: BTreeMap<String, String>,
}

impl NixlFigures {
    /// Each step's p50 as it reads in a table: ids, make, post, to DONE,
    /// notified ("-" across hosts), NIXL's post and transfer.
    pub fn p50s(&self) -> [String; 7] {
        let ns = |l: &LatencySummary| crate::units::fmt_ns(l.p50 as f64);
        [
            ns(&self.ids_ns),
            ns(&self.make_ns),
            ns(&self.post_ns),
            ns(&self.transfer_ns),
            self.notified_ns.as_ref().map_or("-".into(), ns),
            ns(&self.nixl_post_ns),
            ns(&self.nixl_xfer_ns),
        ]
    }
}

/// The figures of each point (by index) from both sides' records; requests
/// that are warm-ups, or that the initiator did not record, are left out.
pub fn figures(
    plan: &Plan,
    initiator: &NixlRecords,
    target: &NixlRecords,
    one_host: bool,
) -> BTreeMap<usize, NixlFigures> {
    let points = plan.points();
    let notified: std::collections::HashMap<(u64, u64), u64> =
        target.records.iter().map(|r| ((r.request, r.round), r.notified_at)).collect();
    let mut by_point: BTreeMap<usize, Vec<(Record, Option<u64>)>> = BTreeMap::new();
    for r in &initiator.records {
        let (point, iteration) = ((r.request >> 32) as usize, r.request as u32);
        let Some(p) = points.get(point) else { continue };
        if !plan.measured(p, iteration) {
            continue;
        }
        let notified =
            notified.get(&(r.request, r.round)).filter(|_| one_host).map(|&at| at.saturating_sub(r.done_at));
        by_point.entry(point).or_default().push((*r, notified));
    }
    by_point.into_iter().map(|(point, rs)| (point, of(&rs))).collect()
}

/// A step's name and its duration in a record, in ns.
type Step = (&'static str, fn(&Record) -> u64);

fn of(rs: &[(Record, Option<u64>)]) -> NixlFigures {
    let steps: [Step; 6] = [
        ("ids", |r| r.ids_ns),
        ("make", |r| r.make_ns),
        ("post", |r| r.post_ns),
        ("transfer", |r| r.transfer_ns),
        ("nixl_post", |r| r.nixl_post_us * 1000),
        ("nixl_xfer", |r| r.nixl_xfer_us * 1000),
    ];
    let mut histograms = BTreeMap::new();
    let mut summaries = Vec::new();
    for (name, get) in steps {
        let mut h = figures::new_histogram();
        rs.iter().for_each(|(r, _)| h.saturating_record(get(r).max(1)));
        summaries.push(LatencySummary::of(&h));
        histograms.insert(name.to_string(), figures::encode_histogram(&h));
    }
    let notified: Vec<u64> = rs.iter().filter_map(|(_, n)| *n).collect();
    let notified_ns = (!notified.is_empty()).then(|| {
        let mut h = figures::new_histogram();
        notified.iter().for_each(|n| h.saturating_record((*n).max(1)));
        histograms.insert("notified".to_string(), figures::encode_histogram(&h));
        LatencySummary::of(&h)
    });
    let mut merged: Vec<u64> = rs.iter().map(|(r, _)| r.merged).collect();
    merged.sort_unstable();
    let [ids_ns, make_ns, post_ns, transfer_ns, nixl_post_ns, nixl_xfer_ns]: [LatencySummary; 6] =
        summaries.try_into().expect("six steps");
    NixlFigures {
        requests: rs.len() as u64,
        descriptors: rs.iter().map(|(r, _)| r.descriptors).max().unwrap_or(0),
        merged_descriptors: merged.get(merged.len() / 2).copied().unwrap_or(0),
        ids_ns,
        make_ns,
        post_ns,
        transfer_ns,
        notified_ns,
        nixl_post_ns,
        nixl_xfer_ns,
        histograms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_travels_as_twelve_numbers() {
        let r = Record { request: 7, round: 1, make_ns: 3, notified_at: 11, merged: 2, ..Default::default() };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "[7,1,0,3,0,0,0,0,0,0,2,11]");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    }

    #[test]
    fn warm_ups_are_left_out_and_notification_delays_need_one_host() {
        let mut plan = crate::plan::sample_plan("llama-3.1-8b", &[128, 256]);
        plan.granularities = vec![crate::plan::Granularity::Block];
        let mut initiator = NixlRecords { initiator: true, ..Default::default() };
        let mut target = NixlRecords::default();
        for point in 0..2u64 {
            for it in 0..4u64 {
                let request = (point << 32) + it;
                let make_ns = if it == 0 { 1_000_000 } else { 1000 * (point + 1) };
                let done_at = 5_000 + it;
                let round = point * 4 + it;
                initiator.records.push(Record {
                    request,
                    round,
                    make_ns,
                    done_at,
                    merged: 2,
                    descriptors: 64,
                    ..Default::default()
                });
                target.records.push(Record {
                    request,
                    round,
                    notified_at: done_at + 700,
                    ..Default::default()
                });
            }
        }
        let f = figures(&plan, &initiator, &target, true);
        assert_eq!(f.len(), 2);
        let p0 = &f[&0];
        assert_eq!((p0.requests, p0.descriptors, p0.merged_descriptors), (3, 64, 2));
        assert_eq!(p0.make_ns.max, 1000, "the warm-up's 1 ms is not in it");
        assert_eq!(f[&1].make_ns.p50, 2000);
        assert_eq!(p0.notified_ns.as_ref().unwrap().p50, 700);
        assert!(p0.histograms.contains_key("notified") && p0.histograms.contains_key("transfer"));
        let apart = figures(&plan, &initiator, &target, false);
        assert!(apart[&0].notified_ns.is_none() && !apart[&0].histograms.contains_key("notified"));
    }
}
