//! `kvxfer report`: several runs (transports, clusters) merged into one
//! table and one set of plots, each run's points grouped into series by
//! granularity.

use super::RunReport;
use crate::error::{Error, Result};
use crate::figures::prefill::PrefillFigures;
use crate::figures::PointResult;
use crate::plan::Granularity;
use crate::transport::TransportKind;
use crate::units::fmt_ns;
use std::path::Path;

/// One line of the plots: a run's points of one granularity.
pub struct Series {
    pub label: String,
    /// The link the run was compared with: name and GB/s.
    pub peak: Option<(String, f64)>,
    pub points: Vec<PointResult>,
}

pub fn load(path: &Path) -> Result<RunReport> {
    let text = crate::input::read_text(path, "a report", crate::input::MOST_BYTES)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::usage(format!("{} is not a kvxfer --json report: {e}", path.display())))
}

/// The KV a run moved: its model and TP (P x D: each side's).
pub fn kv_of(r: &RunReport) -> String {
    let s = &r.plan.shape;
    match &r.plan.tp {
        Some(t) => format!(
            "{} at prefill TP {} -> decode TP {}",
            s.model.name, t.topology.prefill_tp, t.topology.decode_tp
        ),
        None => format!("{} at TP {}", s.model.name, s.tp),
    }
}

/// Runs of different models or TP in one table would compare KV of
/// different sizes as if it were one: refused, naming each, unless asked.
pub fn check_comparable(runs: &[(String, RunReport)], allow_mixed: bool) -> Result<()> {
    let first = kv_of(&runs[0].1);
    if allow_mixed || runs.iter().all(|(_, r)| kv_of(r) == first) {
        return Ok(());
    }
    let each: Vec<String> = runs.iter().map(|(name, r)| format!("{name}: {}", kv_of(r))).collect();
    Err(Error::usage(format!(
        "the runs moved the KV of different models or TP ({}); compare runs of one, or pass --allow-mixed to \
         merge them (each series then names its model and TP)",
        each.join("; ")
    )))
}

/// UCX's path in a word or two, for a label: the transports that carried
/// the data ("cma", "cuda_ipc", "rc_mlx5"), and "emulated" or "staged" when
/// the operation did not reach the buffer itself. From the path line of
/// transport::ucx ("put emulated with active messages (...) over tcp/lo
/// (am ...)"); None for anything else.
fn ucx_path_word(path: &str) -> Option<String> {
    let first = path.split(';').next()?;
    let (how, lanes) = first.split_once(" over ")?;
    let mut names: Vec<&str> = Vec::new();
    for lane in lanes.split(", ") {
        let name = lane.split('/').next().unwrap_or(lane).trim();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    let mut word = names.join("+");
    for (said, short) in [(" emulated ", "emulated"), (" staged ", "staged")] {
        if how.contains(said) || how.ends_with(said.trim_end()) {
            word.push_str(&format!(", {short}"));
        }
    }
    (!word.is_empty()).then_some(word)
}

/// What distinguishes a run: its transport, the path NCCL took, and the
/// knobs that change what goes on the wire.
fn run_label(r: &RunReport) -> String {
    let t = &r.transport;
    let mut label = match t.kind {
        TransportKind::Tcp if t.streams > 1 => format!("tcp x{}", t.streams),
        TransportKind::Ucx => {
            let path = [&r.sender_transport, &r.receiver_transport].iter().find_map(|i| i.path.clone());
            match path.as_deref().and_then(ucx_path_word) {
                Some(via) => format!("ucx {} ({via})", t.ucx_op),
                None => format!("ucx {}", t.ucx_op),
            }
        }
        TransportKind::Nixl => format!("nixl {} {}", t.nixl_backend, t.nixl_op),
        TransportKind::Ofi => {
            // "ofi write tcp;ofi_rxm": the provider is what tells two ofi runs apart.
            let provider = r.sender_transport.details.get("ofi_provider").or(t.ofi_provider.as_ref());
            format!("ofi {} {}", t.ofi_op, provider.map(String::as_str).unwrap_or("?"))
        }
        kind => kind.to_string(),
    };
    if t.kind == TransportKind::Nccl {
        // "NCCL 2.28.3 via NET/Socket/0/Shared" -> "NET/Socket".
        let path = [&r.sender_transport, &r.receiver_transport].iter().find_map(|i| i.path.clone());
        if let Some(via) = path.as_deref().and_then(|p| p.split_once(" via ")).map(|(_, v)| v) {
            let short: Vec<&str> = via.split([',', ' ']).next().unwrap_or(via).split('/').take(2).collect();
            label.push_str(&format!(" {}", short.join("/")));
        }
        if t.nccl_group > 1 {
            label.push_str(&format!(" group {}", t.nccl_group));
        }
    }
    match (&r.plan.tp, &r.fan) {
        // A P x D run: the topology, and whose share the figures are.
        (Some(tp), fan) => {
            let t = tp.topology;
            label.push_str(&format!(" P{}→D{} {}", t.prefill_tp, t.decode_tp, t.layout));
            let (p, d) = tp.pair.unwrap_or_default();
            label.push_str(&match fan {
                Some(f) if f.hub && f.seat.shape == crate::topology::FanShape::ManyToOne => {
                    format!(" decode rank {d}")
                }
                Some(f) if f.hub => format!(" prefill rank {p}"),
                _ => format!(" prefill rank {p} → decode rank {d}"),
            });
        }
        (None, Some(f)) => label.push_str(&format!(" {}", f.label())),
        (None, None) => {}
    }
    label
}

/// Series of all runs, labelled "transport · granularity", with the file
/// name added where two would otherwise read the same.
pub fn series(runs: &[(String, RunReport)]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    // Runs of different models or TP (--allow-mixed): each label names its own.
    let mixed = runs.iter().any(|(_, r)| kv_of(r) != kv_of(&runs[0].1));
    for (name, r) in runs {
        let mut grans: Vec<Granularity> = Vec::new();
        for p in &r.points {
            if !grans.contains(&p.granularity) {
                grans.push(p.granularity);
            }
        }
        for g in grans {
            let mut points: Vec<PointResult> =
                r.points.iter().filter(|p| p.granularity == g).cloned().collect();
            points.sort_by_key(|p| p.prompt_tokens);
            // With emulated prefill, the connector style is part of what was run.
            let overlap =
                r.plan.prefill.as_ref().map(|p| format!(" · overlap {}", p.overlap)).unwrap_or_default();
            // Under load, the prompt mix is part of what was run.
            let mix = r.plan.load.as_ref().map(|l| {
                let each: Vec<String> = l.mix.iter().map(|(t, w)| format!("{t}:{w}")).collect();
                format!(" · mix {}", each.join(","))
            });
            let kv = if mixed { format!(" · {}", kv_of(r)) } else { String::new() };
            let overlap = overlap + &mix.unwrap_or_default() + &kv;
            out.push(Series {
                label: format!("{} · {g}{overlap} ({name})", run_label(r)),
                peak: r.link.as_ref().map(|l| (l.name.clone(), l.peak_gbps)),
                points,
            });
        }
    }
    // One sweep split over several calls (small and large prompts) is one
    // series; runs that measured the same prompt length twice stay apart,
    // told by their file names.
    let short = |s: &Series| s.label.rsplit_once(" (").map(|(a, _)| a.to_string()).unwrap_or_default();
    let mut merged: Vec<Series> = Vec::new();
    for s in out {
        let name = short(&s);
        let same = merged.iter_mut().find(|m| {
            short(m) == name
                && m.peak == s.peak
                && m.points.iter().chain(&s.points).all(|p| p.load.is_none())
                && !m.points.iter().any(|p| s.points.iter().any(|q| q.prompt_tokens == p.prompt_tokens))
        });
        match same {
            Some(m) => {
                m.points.extend(s.points);
                m.points.sort_by_key(|p| p.prompt_tokens);
            }
            None => merged.push(s),
        }
    }
    let names: Vec<String> = merged.iter().map(short).collect();
    for (i, s) in merged.iter_mut().enumerate() {
        if names.iter().filter(|l| **l == names[i]).count() == 1 {
            s.label = names[i].clone();
        }
    }
    merged
}

/// The series with each mix's lengths as points of their own, for what
/// reads points by prompt length (plots against it), sorted by length; a
/// series of several arrival rates splits into one per rate, so that no
/// line joins one rate's point to another's.
pub fn by_length(series: &[Series]) -> Vec<Series> {
    let mut out = Vec::new();
    for s in series {
        let rate = |p: &PointResult| p.load.as_ref().map(|l| l.arrivals.to_string());
        let mut rates: Vec<Option<String>> = Vec::new();
        for r in s.points.iter().map(rate) {
            if !rates.contains(&r) {
                rates.push(r);
            }
        }
        for r in &rates {
            let mut points: Vec<PointResult> =
                s.points.iter().filter(|p| rate(p) == *r).flat_map(|p| p.per_length()).collect();
            points.sort_by_key(|p| p.prompt_tokens);
            let label = match (r, rates.len()) {
                (Some(r), 2..) => format!("{} · {r}", s.label),
                _ => s.label.clone(),
            };
            out.push(Series { label, peak: s.peak.clone(), points });
        }
    }
    out
}

/// The run the others are compared with (`report --baseline`): each point's
/// GB/s over the baseline's at the same granularity, prompt length and
/// request size, so that transports, builds or clusters read as ratios.
pub struct Baseline {
    pub label: String,
    points: Vec<PointResult>,
}

impl Baseline {
    /// `name`: the report's file name, which tells apart runs of one label.
    pub fn of(name: &str, run: &RunReport) -> Baseline {
        let points = run.points.iter().flat_map(rows).map(|(_, _, p)| p).collect();
        Baseline { label: format!("{} ({name})", run_label(run)), points }
    }

    /// GB/s of `p` over the baseline's matching point, if it has one.
    pub fn ratio(&self, p: &PointResult) -> Option<f64> {
        let base = self.points.iter().find(|b| {
            b.granularity == p.granularity
                && b.prompt_tokens == p.prompt_tokens
                && b.request_bytes == p.request_bytes
        })?;
        (base.gbps > 0.0).then(|| p.gbps / base.gbps)
    }
}

/// A point's rows in a table, each with its prompt label and whether it
/// is a length of a mix: the point, and under a mix each of its lengths
/// after it (`PointResult::per_length`).
fn rows(p: &PointResult) -> Vec<(String, bool, PointResult)> {
    let mut rows = vec![(p.prompt_label(), false, p.clone())];
    if p.is_mix() {
        let each = |one: PointResult| (format!("{} of mix", one.prompt_tokens), true, one);
        rows.extend(p.per_length().into_iter().map(each));
    }
    rows
}

/// The merged table, as Markdown; with a baseline, a column of ratios to it.
pub fn markdown(series: &[Series], baseline: Option<&Baseline>) -> String {
    let mut md =
        String::from("| series | prompt | messages | request | GB/s | % peak | p50 | p99 | max | n | σ |");
    let mut rule = String::from("|---|---|---|---|---|---|---|---|---|---|---|");
    if let Some(b) = baseline {
        md.push_str(&format!(" vs {} |", b.label));
        rule.push_str("---|");
    }
    md.push('\n');
    md.push_str(&rule);
    md.push('\n');
    for s in series {
        for (prompt, _, p) in s.points.iter().flat_map(rows) {
            let p = &p;
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {:.0}% |",
                s.label,
                prompt,
                p.messages,
                crate::units::fmt_bytes(p.request_bytes as u64),
                p.gbps,
                p.percent_of_peak.map(|x| format!("{x:.1}")).unwrap_or("-".into()),
                fmt_ns(p.request_ns.p50 as f64),
                super::table::tail(p.request_ns.p99_supported()),
                fmt_ns(p.request_ns.max as f64),
                p.request_ns.count,
                100.0 * p.request_ns.stdev / p.request_ns.mean.max(1e-9),
            ));
            if let Some(b) = baseline {
                md.push_str(&format!(
                    " {} |",
                    b.ratio(p).map(|r| format!("{:.1}%", 100.0 * r)).unwrap_or("-".into())
                ));
            }
            md.push('\n');
        }
    }
    md.push_str(&spread_markdown(series));
    md.push_str(&added_ttft_markdown(series));
    md.push_str(&load_markdown(series));
    md.push_str(&nixl_markdown(series));
    md
}

/// The points whose times spread too wide for their median to speak for
/// them, as each run's table warned (σ is the column above, as % of the mean).
fn spread_markdown(series: &[Series]) -> String {
    let mut md = String::new();
    for s in series {
        for (prompt, _, p) in s.points.iter().flat_map(rows) {
            if let Some(how) = super::table::spread(&p.request_ns) {
                md.push_str(&format!("- {} {prompt}: {how}\n", s.label));
            }
        }
    }
    match md.is_empty() {
        true => md,
        false => format!(
            "\nSpread: points whose times a median does not speak for (more -n and -w narrow it)\n\n{md}"
        ),
    }
}

/// The NIXL points: where each request's time went (empty without them),
/// so that a gap to raw UCX or libfabric reads as the step that grew.
fn nixl_markdown(series: &[Series]) -> String {
    let mut md = String::new();
    for s in series {
        for p in &s.points {
            let Some(n) = &p.nixl else { continue };
            if md.is_empty() {
                md.push_str(
                    "\nNIXL steps (p50): descriptor ids, make_xfer_req, post_xfer_req, post to DONE, DONE to the \
                     peer's notification; NIXL's own telemetry; descriptors given and left after NIXL merged them\n\n\
                     | series | prompt | ids | make | post | to DONE | notified | NIXL post | NIXL transfer | descriptors |\n\
                     |---|---|---|---|---|---|---|---|---|---|\n",
                );
            }
            let steps = n.p50s().join(" | ");
            md.push_str(&format!(
                "| {} | {} | {steps} | {} → {} |\n",
                s.label, p.prompt_tokens, n.descriptors, n.merged_descriptors
            ));
        }
    }
    md
}

/// The points under load: rates, queueing, latency and what was held
/// (empty when no run had arrivals).
fn load_markdown(series: &[Series]) -> String {
    let mut md = String::new();
    for s in series {
        for l in s.points.iter().filter_map(|p| p.load.as_ref()) {
            if md.is_empty() {
                md.push_str(
                    "\nUnder load: latency from arrival to the decode side holding the last byte\n\n\
                     | series | arrivals | offered /s | achieved /s | queue p50 | queue p99 | latency p50 | latency p99 | decode peak | prefill peak |\n\
                     |---|---|---|---|---|---|---|---|---|---|\n",
                );
            }
            md.push_str(&format!(
                "| {} | {} | {:.1} | {:.1}{} | {} | {} | {} | {} | {} | {} |\n",
                s.label,
                l.arrivals,
                l.offered_qps,
                l.achieved_qps,
                if l.saturated { " (saturated)" } else { "" },
                fmt_ns(l.queue_ns.p50 as f64),
                super::table::tail(l.queue_ns.p99_supported()),
                fmt_ns(l.latency_ns.p50 as f64),
                super::table::tail(l.latency_ns.p99_supported()),
                crate::units::fmt_bytes(l.resident.peak_bytes),
                crate::units::fmt_bytes(l.prefill_resident.peak_bytes)
            ));
        }
    }
    md
}

/// One row of the added-TTFT table: a prompt length's p50s, its p99 where
/// supported, the least possible, the transfer alone and the exposed share.
struct AddedRow {
    prompt: String,
    during: u64,
    added: u64,
    added99: Option<u64>,
    bound: u64,
    alone: u64,
    share: f64,
}

/// The points with emulated prefill: what their transfer added to
/// time-to-first-token (empty when no run had prefill).
fn added_ttft_markdown(series: &[Series]) -> String {
    let mut md = String::new();
    for s in series {
        for p in &s.points {
            let Some(f) = &p.prefill else { continue };
            if md.is_empty() {
                md.push_str(
                    "\nAdded TTFT: from the end of the emulated prefill to the decode side holding the last byte\n\n\
                     | series | prompt | prefill p50 | added p50 | added p99 | least possible | transfer alone p50 | exposed |\n\
                     |---|---|---|---|---|---|---|---|\n",
                );
            }
            // A mix's a row per length.
            let rows: Vec<AddedRow> = match f.by_prompt.is_empty() {
                true => vec![AddedRow {
                    prompt: p.prompt_tokens.to_string(),
                    during: f.during_ns.p50,
                    added: f.added_ns.p50,
                    added99: f.added_ns.p99_supported(),
                    bound: f.lower_bound_ns,
                    alone: p.request_ns.p50,
                    share: f.exposed_share,
                }],
                false => (f.by_prompt.iter())
                    .map(|q| AddedRow {
                        prompt: match q.turn {
                            Some(t) => format!("turn {t} ({} computed)", q.tokens),
                            None => format!("{} of a mix", q.tokens),
                        },
                        during: q.during_ns.p50,
                        added: q.added_ns.p50,
                        added99: q.added_ns.p99_supported(),
                        bound: q.lower_bound_ns,
                        alone: q.transfer_alone_p50_ns,
                        share: q.exposed_share,
                    })
                    .collect(),
            };
            for r in rows {
                let ns = |v: u64| fmt_ns(v as f64);
                let (l, d, a, a99, b, t) = (
                    &s.label,
                    ns(r.during),
                    ns(r.added),
                    super::table::tail(r.added99),
                    ns(r.bound),
                    ns(r.alone),
                );
                md.push_str(&format!(
                    "| {l} | {} | {d} | {a} | {a99} | {b} | {t} | {:.1}% |\n",
                    r.prompt,
                    100.0 * r.share
                ));
            }
        }
    }
    md
}

/// Conversations, a row per turn of each point of each series (None
/// without conversations): what the turn moved both ways and its times.
/// Each row names its columns, so the header cannot drift from the rows.
pub fn turns_csv(series: &[Series]) -> Result<Option<String>> {
    let rows: Vec<Vec<(&str, String)>> = series
        .iter()
        .flat_map(|s| s.points.iter().map(move |p| (s, p)))
        .filter_map(|(s, p)| p.conversation.as_ref().map(|c| (s, p, c)))
        .flat_map(|(s, p, c)| {
            c.turns.iter().map(move |t| {
                vec![
                    ("series", s.label.clone()),
                    ("multi_turn", c.mode.to_string()),
                    ("granularity", p.granularity.to_string()),
                    ("conversations", c.conversations.to_string()),
                    ("turn", t.turn.to_string()),
                    ("prompt_tokens", t.prompt_tokens.to_string()),
                    ("moved_tokens", t.moved_tokens.to_string()),
                    ("bytes", t.bytes.to_string()),
                    ("back_tokens", t.back_tokens.to_string()),
                    ("back_bytes", t.back_bytes.to_string()),
                    ("cumulative_bytes", t.cumulative_bytes.to_string()),
                    ("messages", t.messages.to_string()),
                    ("transfer_count", t.transfer_ns.count.to_string()),
                    ("transfer_p50_ns", t.transfer_ns.p50.to_string()),
                    ("transfer_p99_ns", super::csv::cell(t.transfer_ns.p99_supported())),
                    ("back_p50_ns", t.back_ns.p50.to_string()),
                    ("back_p99_ns", super::csv::cell(t.back_ns.p99_supported())),
                ]
            })
        })
        .collect();
    let Some(first) = rows.first() else { return Ok(None) };
    let fail = |e: ::csv::Error| Error::run(e.to_string());
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record(first.iter().map(|(k, _)| k)).map_err(fail)?;
    for row in &rows {
        w.write_record(row.iter().map(|(_, v)| v)).map_err(fail)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::run(e.to_string()))?;
    Ok(Some(String::from_utf8(bytes).expect("CSV of UTF-8 fields")))
}

/// The merged table, as CSV with raw units; `gbps_vs_baseline` is empty
/// without a baseline or a matching point.
pub fn csv(series: &[Series], baseline: Option<&Baseline>) -> Result<String> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record([
        "series",
        "prompt_tokens",
        "messages",
        "request_bytes",
        "gbps",
        "percent_of_peak",
        "p50_ns",
        "p99_ns",
        "max_ns",
        "gbps_vs_baseline",
        "prefill_during_p50_ns",
        "added_ttft_p50_ns",
        "added_ttft_p99_ns",
        "added_ttft_bound_ns",
        "of_mix",
        "n",
        "stdev_ns",
    ])
    .map_err(|e| Error::run(e.to_string()))?;
    for s in series {
        for (_, of_mix, p) in s.points.iter().flat_map(rows) {
            let p = &p;
            let prefill = |f: fn(&PrefillFigures) -> u64| p.prefill.as_ref().map(f).map(|ns| ns.to_string());
            let prefill = |f| prefill(f).unwrap_or_default();
            w.write_record([
                s.label.clone(),
                p.prompt_tokens.to_string(),
                p.messages.to_string(),
                p.request_bytes.to_string(),
                format!("{:.4}", p.gbps),
                p.percent_of_peak.map(|x| format!("{x:.2}")).unwrap_or_default(),
                p.request_ns.p50.to_string(),
                super::csv::cell(p.request_ns.p99_supported()),
                p.request_ns.max.to_string(),
                baseline.and_then(|b| b.ratio(p)).map(|r| format!("{r:.4}")).unwrap_or_default(),
                prefill(|f| f.during_ns.p50),
                prefill(|f| f.added_ns.p50),
                p.prefill.as_ref().map(|f| super::csv::cell(f.added_ns.p99_supported())).unwrap_or_default(),
                prefill(|f| f.lower_bound_ns),
                of_mix.to_string(),
                p.request_ns.count.to_string(),
                format!("{:.1}", p.request_ns.stdev),
            ])
            .map_err(|e| Error::run(e.to_string()))?;
        }
    }
    String::from_utf8(w.into_inner().map_err(|e| Error::run(e.to_string()))?)
        .map_err(|e| Error::run(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ucx_labels_name_the_path_their_data_took() {
        let emulated =
            "put emulated with active messages (no RMA lane reaches the buffer) over tcp/lo (am am_bw \
                        keepalive wireup); --ucx-err-mode none lets UCX use shared memory";
        assert_eq!(ucx_path_word(emulated).as_deref(), Some("tcp, emulated"));
        let staged = "get staged through host memory (no lane reaches GPU memory) over cma/memory (rma_bw)";
        assert_eq!(ucx_path_word(staged).as_deref(), Some("cma, staged"));
        let direct = "put over cuda_ipc/cuda (rma_bw), rc_mlx5/mlx5_0:1 (rma_bw am)";
        assert_eq!(ucx_path_word(direct).as_deref(), Some("cuda_ipc+rc_mlx5"));
        assert_eq!(ucx_path_word("UCX did not describe its lanes"), None);
    }
}
