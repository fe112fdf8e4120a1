//! What a run shows while it goes: the table on stdout (or, with
//! `--json-stream`, one JSON line per point and one for the outcome), and a
//! progress bar on stderr where stderr is a terminal.

use super::args::OutputArgs;
use crate::error::Result;
use crate::measure::PointResult;
use crate::report::{table, RunReport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::Duration;

pub struct Screen {
    table: bool,
    json_stream: bool,
    bar: ProgressBar,
}

impl Screen {
    pub fn new(a: &OutputArgs) -> Screen {
        let progress = !a.quiet && std::io::stderr().is_terminal();
        let bar = match progress {
            true => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            false => ProgressBar::hidden(),
        };
        Screen { table: !a.quiet && !a.json_stream, json_stream: a.json_stream, bar }
    }

    /// Shows nothing (the receiver thread of `kvxfer pair`).
    pub fn silent() -> Screen {
        Screen { table: false, json_stream: false, bar: ProgressBar::hidden() }
    }

    pub fn header(&self, report: &RunReport) -> Result<()> {
        if self.table {
            table::header(report, &mut std::io::stdout().lock())?;
        }
        self.bar.set_length(report.plan.points().len() as u64);
        self.bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} points {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        self.bar.enable_steady_tick(Duration::from_millis(200));
        Ok(())
    }

    pub fn point(&self, report: &RunReport, p: &PointResult) {
        self.bar.suspend(|| {
            let mut out = std::io::stdout().lock();
            if self.table {
                let _ = table::row(report, p, &mut out);
            }
            if self.json_stream {
                let line = serde_json::json!({ "model": report.model, "transport": report.transport.kind, "point": p });
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        });
        self.bar.inc(1);
        self.bar.set_message(format!("last: {} {}, {:.1} GB/s", p.granularity, p.prompt_tokens, p.gbps));
    }

    pub fn footer(&self, report: &RunReport) -> Result<()> {
        self.bar.finish_and_clear();
        let mut out = std::io::stdout().lock();
        if self.table {
            table::footer(report, &mut out)?;
        }
        if self.json_stream {
            let line = serde_json::json!({
                "outcome": report.outcome,
                "verified_bytes": report.verified_bytes,
                "wrong_bytes": report.wrong_bytes,
                "gate": report.gate,
            });
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}
