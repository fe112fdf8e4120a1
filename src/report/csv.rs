//! One CSV row per sweep point, with the run's identity repeated on each row
//! so files from several runs can simply be concatenated.

use super::{Exporter, RunReport};
use crate::error::{Error, Result};
use crate::figures::load::LoadFigures;
use crate::figures::nixl::NixlFigures;
use crate::figures::prefill::PrefillFigures;
use crate::figures::LatencySummary;
use crate::figures::PointResult;
use std::io::Write;

pub struct Csv;

/// A NIXL step's column name and where its figures are.
type NixlStep = (&'static str, fn(&NixlFigures) -> Option<&LatencySummary>);
type Quantile = (&'static str, fn(&LatencySummary) -> Option<u64>);

/// One row: every column's name with its value, so the header cannot drift
/// from the rows.
fn row(report: &RunReport, p: &PointResult) -> Vec<(String, String)> {
    let shape = &report.plan.shape;
    let link = report.link.as_ref();
    let mut cols: Vec<(String, String)> = [
        ("started_at", report.started_at.clone()),
        ("sender_host", report.sender.hostname.clone()),
        ("receiver_host", report.receiver.hostname.clone()),
        ("model", shape.model.name.clone()),
        ("tp", shape.tp.to_string()),
        ("block_size", shape.block_size.to_string()),
        ("kv_bytes_per_token", report.kv_bytes_per_token.to_string()),
        ("transport", report.transport.kind.to_string()),
        ("streams", report.transport.streams.to_string()),
        ("nccl_group", report.transport.nccl_group.to_string()),
        ("sender_memory", report.sender_transport.memory.clone()),
        ("receiver_memory", report.receiver_transport.memory.clone()),
        ("granularity", p.granularity.to_string()),
        ("prompt_tokens", p.prompt_tokens.to_string()),
        ("messages", p.messages.to_string()),
        ("operations", p.operations.to_string()),
        ("message_bytes", p.message_bytes.to_string()),
        ("request_bytes", p.request_bytes.to_string()),
        ("iterations", p.iterations.to_string()),
        ("warmup", p.warmup.to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    for (prefix, l) in [("request_ns", &p.request_ns), ("message_ns", &p.message_ns)] {
        let values = [
            ("count", l.count.to_string()),
            ("min", l.min.to_string()),
            ("mean", format!("{:.1}", l.mean)),
            ("stdev", format!("{:.1}", l.stdev)),
            ("p50", l.p50.to_string()),
            ("p90", cell(l.p90_supported())),
            ("p99", cell(l.p99_supported())),
            ("p999", cell(l.p999_supported())),
            ("max", l.max.to_string()),
        ];
        cols.extend(values.map(|(k, v)| (format!("{prefix}_{k}"), v)));
    }
    cols.extend(
        [
            ("first_request_ns", p.first_request_ns.to_string()),
            ("gbps", format!("{:.4}", p.gbps)),
            ("gbps_p50", format!("{:.4}", p.gbps_p50)),
            ("link", link.map(|l| l.name.clone()).unwrap_or_default()),
            ("link_peak_gbps", link.map(|l| l.peak_gbps.to_string()).unwrap_or_default()),
            ("percent_of_peak", p.percent_of_peak.map(|v| format!("{v:.2}")).unwrap_or_default()),
            ("verified_bytes", p.verified_bytes.to_string()),
            ("wrong_bytes", p.wrong_bytes.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    // Fans: empty on a plain pair's rows.
    let pairs = p.fan.as_ref();
    let slowest = pairs.and_then(|f| f.pair_gbps.iter().copied().reduce(f64::min));
    cols.extend(
        [
            ("fan", report.fan.as_ref().map(|f| f.label()).unwrap_or_default()),
            ("slowest_pair_gbps", slowest.map(|g| format!("{g:.4}")).unwrap_or_default()),
            (
                "pair_request_p99_ns",
                pairs.map(|f| cell(f.pair_request_ns.p99_supported())).unwrap_or_default(),
            ),
            ("pair_request_max_ns", pairs.map(|f| f.pair_request_ns.max.to_string()).unwrap_or_default()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    cols.extend(prefill_columns(p));
    cols.extend(load_columns(p.load.as_ref()));
    // Conversations: the mode, and a conversation's bytes against full's.
    let c = p.conversation.as_ref();
    cols.extend(
        [
            ("multi_turn", c.map(|c| c.mode.to_string()).unwrap_or_default()),
            ("conversation_bytes", c.map(|c| c.bytes.to_string()).unwrap_or_default()),
            ("conversation_full_bytes", c.map(|c| c.full_bytes.to_string()).unwrap_or_default()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    // Arrivals with emulated prefill: the second phase's queue and latency (TTFT less decode's first step).
    let u = p.prefill.as_ref().and_then(|f| f.under_load.as_deref());
    let loaded = |get: fn(&LoadFigures) -> Option<u64>| u.map(|l| cell(get(l))).unwrap_or_default();
    cols.extend(
        [
            ("prefill_queue_p50_ns", loaded(|l| Some(l.queue_ns.p50))),
            ("prefill_queue_p99_ns", loaded(|l| l.queue_ns.p99_supported())),
            ("prefill_latency_p50_ns", loaded(|l| Some(l.latency_ns.p50))),
            ("prefill_latency_p99_ns", loaded(|l| l.latency_ns.p99_supported())),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    cols.extend(nixl_columns(report, p));
    // Columns added later go last, so that files read by position keep theirs.
    cols.push(("load_by_prompt".into(), by_prompt_column(p.load.as_ref())));
    cols
}

/// Serving load's columns: empty without it.
fn load_columns(l: Option<&LoadFigures>) -> Vec<(String, String)> {
    let num = |get: fn(&LoadFigures) -> String| l.map(get).unwrap_or_default();
    [
        ("arrivals", num(|l| l.arrivals.to_string())),
        ("offered_qps", num(|l| format!("{:.4}", l.offered_qps))),
        ("achieved_qps", num(|l| format!("{:.4}", l.achieved_qps))),
        ("achieved_gbps", num(|l| format!("{:.4}", l.achieved_gbps))),
        ("saturated", num(|l| l.saturated.to_string())),
        ("queue_p50_ns", num(|l| l.queue_ns.p50.to_string())),
        ("queue_p99_ns", num(|l| cell(l.queue_ns.p99_supported()))),
        ("latency_p50_ns", num(|l| l.latency_ns.p50.to_string())),
        ("latency_p99_ns", num(|l| cell(l.latency_ns.p99_supported()))),
        ("latency_max_ns", num(|l| l.latency_ns.max.to_string())),
        ("resident_peak_bytes", num(|l| l.resident.peak_bytes.to_string())),
        ("resident_p99_bytes", num(|l| l.resident.p99_bytes.to_string())),
        ("prefill_resident_peak_bytes", num(|l| l.prefill_resident.peak_bytes.to_string())),
        (
            "spilled_tensors",
            num(|l| l.decode_buffer.as_ref().map_or(String::new(), |b| b.spilled_tensors.to_string())),
        ),
        (
            "spilled_bytes",
            num(|l| l.decode_buffer.as_ref().map_or(String::new(), |b| b.spilled_bytes.to_string())),
        ),
        (
            "pool_peak_bytes",
            num(|l| l.decode_buffer.as_ref().map_or(String::new(), |b| b.pooled.peak_bytes.to_string())),
        ),
        (
            "waited_requests",
            num(|l| l.decode_buffer.as_ref().map_or(String::new(), |b| b.waited_requests.to_string())),
        ),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec()
}

/// A load point's lengths (a mix's row has prompt_tokens 0 and the mean
/// request's bytes): TOKENS:REQUESTS:BYTES:TRANSFER_P50_NS:TRANSFER_P99_NS:
/// LATENCY_P50_NS:LATENCY_P99_NS, ';' between; empty without load.
fn by_prompt_column(l: Option<&LoadFigures>) -> String {
    let each = |b: &crate::figures::load::PromptLoad| {
        let (t, l) = (&b.transfer_ns, &b.latency_ns);
        let (tail, t99, l99) = (cell, t.p99_supported(), l.p99_supported());
        format!("{}:{}:{}:{}:{}:{}:{}", b.tokens, b.requests, b.bytes, t.p50, tail(t99), l.p50, tail(l99))
    };
    l.map(|l| l.by_prompt.iter().map(each).collect::<Vec<_>>().join(";")).unwrap_or_default()
}

/// A tail where its count supports one, else empty (`LatencySummary::p99_supported`).
pub(crate) fn cell(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Emulated prefill's columns: empty without it.
fn prefill_columns(p: &PointResult) -> Vec<(String, String)> {
    let f = p.prefill.as_ref();
    let ns = |get: fn(&PrefillFigures) -> u64| f.map(|f| get(f).to_string()).unwrap_or_default();
    [
        ("prefill_overlap", f.map(|f| f.overlap.to_string()).unwrap_or_default()),
        ("prefill_asked_ns", ns(|f| f.asked_ns)),
        ("prefill_alone_p50_ns", ns(|f| f.alone_ns.p50)),
        ("prefill_during_p50_ns", ns(|f| f.during_ns.p50)),
        ("added_ttft_p50_ns", ns(|f| f.added_ns.p50)),
        ("added_ttft_p99_ns", f.map(|f| cell(f.added_ns.p99_supported())).unwrap_or_default()),
        ("added_ttft_max_ns", ns(|f| f.added_ns.max)),
        ("exposed_share", f.map(|f| format!("{:.4}", f.exposed_share)).unwrap_or_default()),
        ("added_ttft_bound_ns", ns(|f| f.lower_bound_ns)),
        ("ttft_p50_ns", ns(|f| f.ttft_ns.p50)),
        // Under a mix the asked time, compute alone, share and bound above are its
        // longest compute's (in a conversation, the tokens its longest turn computes).
        (
            "prefill_of_tokens",
            f.map(|f| longest(f).map_or(p.prompt_tokens, |b| b.tokens).to_string()).unwrap_or_default(),
        ),
        // A mix's lengths: TOKENS:ASKED_NS:DURING_P50_NS:ADDED_P50_NS:ADDED_P99_NS, ';'
        // between (a conversation's turns, in order, TOKENS those each computes).
        (
            "prefill_by_prompt",
            f.map(|f| {
                let each = |b: &crate::figures::prefill::PromptPrefill| {
                    let (d, a) = (&b.during_ns, &b.added_ns);
                    format!("{}:{}:{}:{}:{}", b.tokens, b.asked_ns, d.p50, a.p50, cell(a.p99_supported()))
                };
                f.by_prompt.iter().map(each).collect::<Vec<_>>().join(";")
            })
            .unwrap_or_default(),
        ),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into()
}

/// The prefill of a mix's longest compute (a conversation's longest turn).
fn longest(f: &crate::figures::prefill::PrefillFigures) -> Option<&crate::figures::prefill::PromptPrefill> {
    f.by_prompt.iter().max_by_key(|b| (b.asked_ns, b.tokens))
}

/// NIXL: where each request's time went; empty on other transports.
fn nixl_columns(report: &RunReport, p: &PointResult) -> Vec<(String, String)> {
    let mut cols = Vec::new();
    let n = p.nixl.as_ref();
    let t = &report.transport;
    let nixl = n.is_some();
    cols.push(("nixl_backend".into(), if nixl { t.nixl_backend.clone() } else { String::new() }));
    cols.push(("nixl_op".into(), if nixl { t.nixl_op.to_string() } else { String::new() }));
    cols.push(("nixl_descriptors".into(), n.map(|n| n.descriptors.to_string()).unwrap_or_default()));
    cols.push((
        "nixl_merged_descriptors".into(),
        n.map(|n| n.merged_descriptors.to_string()).unwrap_or_default(),
    ));
    let steps: [NixlStep; 7] = [
        ("ids", |n| Some(&n.ids_ns)),
        ("make", |n| Some(&n.make_ns)),
        ("post", |n| Some(&n.post_ns)),
        ("transfer", |n| Some(&n.transfer_ns)),
        ("notified", |n| n.notified_ns.as_ref()),
        ("telemetry_post", |n| Some(&n.nixl_post_ns)),
        ("telemetry_xfer", |n| Some(&n.nixl_xfer_ns)),
    ];
    for (step, get) in steps {
        let quantiles: [Quantile; 2] = [("p50", |l| Some(l.p50)), ("p99", |l| l.p99_supported())];
        for (q, value) in quantiles {
            let v = n.and_then(get).map(|l| cell(value(l))).unwrap_or_default();
            cols.push((format!("nixl_{step}_{q}_ns"), v));
        }
    }
    cols
}

impl Exporter for Csv {
    fn export(&self, report: &RunReport, out: &mut dyn Write) -> Result<()> {
        let fail = |e: ::csv::Error| Error::run(format!("writing CSV: {e}"));
        let mut w = ::csv::Writer::from_writer(out);
        for (i, p) in report.points.iter().enumerate() {
            let cols = row(report, p);
            if i == 0 {
                w.write_record(cols.iter().map(|(k, _)| k)).map_err(fail)?;
            }
            w.write_record(cols.iter().map(|(_, v)| v)).map_err(fail)?;
        }
        w.flush()?;
        Ok(())
    }
}
