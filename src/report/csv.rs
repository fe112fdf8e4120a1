//! One CSV row per sweep point, with the run's identity repeated on each row
//! so files from several runs can simply be concatenated.

use super::{Exporter, RunReport};
use crate::error::{Error, Result};
use crate::measure::LatencySummary;
use std::io::Write;

pub struct Csv;

const LATENCY_FIELDS: [&str; 8] = ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"];

fn latency_values(s: &LatencySummary) -> [String; 8] {
    [
        s.count.to_string(),
        s.min.to_string(),
        format!("{:.1}", s.mean),
        s.p50.to_string(),
        s.p90.to_string(),
        s.p99.to_string(),
        s.p999.to_string(),
        s.max.to_string(),
    ]
}

impl Exporter for Csv {
    fn export(&self, report: &RunReport, out: &mut dyn Write) -> Result<()> {
        let mut w = ::csv::Writer::from_writer(out);
        let mut header: Vec<String> = [
            "started_at",
            "sender_host",
            "receiver_host",
            "model",
            "tp",
            "block_size",
            "kv_bytes_per_token",
            "transport",
            "streams",
            "granularity",
            "prompt_tokens",
            "messages",
            "message_bytes",
            "request_bytes",
            "iterations",
            "warmup",
        ]
        .map(String::from)
        .to_vec();
        for prefix in ["request_ns", "message_ns"] {
            header.extend(LATENCY_FIELDS.iter().map(|f| format!("{prefix}_{f}")));
        }
        header.extend(
            [
                "gbps",
                "gbps_p50",
                "link",
                "link_peak_gbps",
                "percent_of_peak",
                "verified_bytes",
                "wrong_bytes",
            ]
            .map(String::from),
        );
        let fail = |e: ::csv::Error| Error::run(format!("writing CSV: {e}"));
        w.write_record(&header).map_err(fail)?;
        let shape = &report.plan.shape;
        for p in &report.points {
            let mut row: Vec<String> = vec![
                report.started_at.clone(),
                report.sender.hostname.clone(),
                report.receiver.hostname.clone(),
                shape.model.name.clone(),
                shape.tp.to_string(),
                shape.block_size.to_string(),
                report.kv_bytes_per_token.to_string(),
                report.transport.kind.to_string(),
                report.transport.streams.to_string(),
                p.granularity.to_string(),
                p.prompt_tokens.to_string(),
                p.messages.to_string(),
                p.message_bytes.to_string(),
                p.request_bytes.to_string(),
                p.iterations.to_string(),
                p.warmup.to_string(),
            ];
            row.extend(latency_values(&p.request_ns));
            row.extend(latency_values(&p.message_ns));
            row.extend([
                format!("{:.4}", p.gbps),
                format!("{:.4}", p.gbps_p50),
                report.link.as_ref().map(|l| l.name.clone()).unwrap_or_default(),
                report.link.as_ref().map(|l| l.peak_gbps.to_string()).unwrap_or_default(),
                p.percent_of_peak.map(|v| format!("{v:.2}")).unwrap_or_default(),
                p.verified_bytes.to_string(),
                p.wrong_bytes.to_string(),
            ]);
            w.write_record(&row).map_err(fail)?;
        }
        w.flush()?;
        Ok(())
    }
}
