//! What a run shows while it goes: the table on stdout (or, with
//! `--json-stream`, one JSON line per point and one for the outcome), and a
//! progress bar on stderr where stderr is a terminal: the request in
//! progress, its GB/s and an ETA for the whole sweep.

use super::{table, RunReport};
use crate::error::Result;
use crate::figures::PointResult;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

pub struct Screen {
    table: bool,
    json_stream: bool,
    layout: table::Layout,
    bar: ProgressBar,
    /// Each point's name, requests and bytes (warm-ups included): the bar
    /// counts bytes, so its ETA weighs a large point as it will take.
    points: Mutex<Vec<PointWork>>,
    /// The JSON report rewritten whole as each point completes, so that a
    /// process a library aborts keeps what it measured.
    /// The JSON and CSV reports rewritten whole as each point completes.
    keep: (Option<std::path::PathBuf>, Option<std::path::PathBuf>),
}

struct PointWork {
    name: String,
    requests: u32,
    bytes: u64,
}

/// The width of the terminal on stdout, if it is one.
fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills the one winsize given.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(size.ws_col as usize)
}

impl Screen {
    /// `quiet`: nothing but errors; `json_stream`: JSON lines instead of
    /// the table; `wide`: every column.
    pub fn new(quiet: bool, json_stream: bool, wide: bool) -> Screen {
        // -v's log lines go to stderr too, so the bar stays off then.
        let progress = !quiet && std::io::stderr().is_terminal() && !crate::logging::enabled();
        let bar = match progress {
            true => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            false => ProgressBar::hidden(),
        };
        Screen {
            table: !quiet && !json_stream,
            json_stream,
            layout: table::Layout::choose(wide, terminal_width()),
            bar,
            points: Mutex::default(),
            keep: (None, None),
        }
    }

    /// Rewrites the JSON and CSV reports at these paths as each point completes.
    pub fn keeping(mut self, paths: (Option<std::path::PathBuf>, Option<std::path::PathBuf>)) -> Screen {
        self.keep = paths;
        self
    }

    /// The report so far, into the files kept (best effort: the run's end
    /// writes them again, and says so if it cannot).
    pub fn checkpoint(&self, report: &RunReport) {
        if let Some(path) = &self.keep.0 {
            let _ = super::write_whole(path, report, &super::json::Json);
        }
        if let Some(path) = &self.keep.1 {
            let _ = super::write_whole(path, report, &super::csv::Csv);
        }
    }

    /// Shows nothing (the receiver thread of `kvxfer pair`).
    pub fn silent() -> Screen {
        Screen {
            table: false,
            json_stream: false,
            layout: table::Layout::NARROW,
            bar: ProgressBar::hidden(),
            points: Mutex::default(),
            keep: (None, None),
        }
    }

    pub fn header(&self, report: &RunReport) -> Result<()> {
        if self.table {
            table::header(report, self.layout, &mut std::io::stdout().lock())?;
        }
        let plan = &report.plan;
        let points: Vec<PointWork> = plan
            .points()
            .iter()
            .map(|p| PointWork {
                name: format!("{} {}", p.layout.granularity, p.layout.tokens),
                requests: plan.requests_in(p),
                bytes: plan.requests_in(p) as u64 * p.layout.total_bytes() as u64,
            })
            .collect();
        self.bar.set_length(points.iter().map(|p| p.bytes).sum::<u64>().max(1));
        *self.points.lock().expect("not poisoned") = points;
        self.bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:20}] {percent:>3}% ETA {eta} {msg}",
            )
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
                let _ = table::row(report, p, self.layout, &mut out);
            }
            if self.json_stream {
                let line = serde_json::json!({ "model": report.model, "transport": report.transport.kind, "point": p });
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        });
        // Where requests did not report themselves (lanes), the point's end moves the bar.
        let points = self.points.lock().expect("not poisoned");
        self.bar.set_position(points.iter().take(p.point + 1).map(|p| p.bytes).sum());
        self.bar.set_message(format!("last: {} {}, {:.2} GB/s", p.granularity, p.prompt_label(), p.gbps));
    }

    /// A request done: the bar moves by its bytes and shows its rate.
    pub fn request(&self, point: usize, iteration: u32, bytes: usize, ns: u64) {
        if self.bar.is_hidden() {
            return;
        }
        let points = self.points.lock().expect("not poisoned");
        let Some(p) = points.get(point) else { return };
        self.bar.inc(bytes as u64);
        self.bar.set_message(format!(
            // Short enough for an 80-column terminal beside the bar.
            "{}/{} {} req {}/{} {:.2} GB/s",
            point + 1,
            points.len(),
            p.name,
            iteration + 1,
            p.requests,
            crate::units::gbps(bytes as u64, ns as f64)
        ));
    }

    /// After the run's first warm request (its second): where the rate
    /// says the sweep will be long, or far below the link, the user hears
    /// so at once (and can stop it) rather than after the first point.
    pub fn warm_request(&self, report: &RunReport, bytes: usize, ns: u64) {
        if !self.table && !self.json_stream {
            return;
        }
        if let Some(text) = warm_request_notice(report, bytes, ns) {
            self.bar.suspend(|| eprintln!("{text}"));
        }
    }

    pub fn footer(&self, report: &RunReport) -> Result<()> {
        self.bar.finish_and_clear();
        let mut out = std::io::stdout().lock();
        if self.table {
            table::footer(report, self.layout, &mut out)?;
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

/// A sweep projected to run longer than this is announced after its first request.
const LONG_SWEEP: Duration = Duration::from_secs(60);
/// A first request below this share of the link's peak is announced.
const FAR_BELOW_PEAK_PERCENT: f64 = 1.0;

/// What to say after the first warm request, if anything: its rate, the
/// sweep's length at that rate, the share of the peak, and the path that
/// carried it.
fn warm_request_notice(report: &RunReport, bytes: usize, ns: u64) -> Option<String> {
    let gbps = crate::units::gbps(bytes as u64, ns.max(1) as f64);
    let plan = &report.plan;
    let total: u64 = plan
        .points()
        .iter()
        .map(|p| (plan.warmup + plan.iterations) as u64 * p.layout.total_bytes() as u64)
        .sum();
    let sweep = Duration::from_secs_f64(total as f64 / (gbps * 1e9));
    let share = report.link.as_ref().map(|l| (l, 100.0 * gbps / l.peak_gbps));
    let far_below = share.is_some_and(|(_, pct)| pct < FAR_BELOW_PEAK_PERCENT);
    if sweep < LONG_SWEEP && !far_below {
        return None;
    }
    let mut text = format!(
        "kvxfer: the first warm request moved {} in {} ({gbps:.2} GB/s",
        crate::units::fmt_bytes(bytes as u64),
        crate::units::fmt_ns(ns as f64)
    );
    if let Some((l, pct)) = share {
        text += &format!(", {pct:.2}% of {}", l.name);
        // A link given as a number is named by it already ("5 GB/s").
        if !l.name.contains("GB/s") {
            text += &format!(" at {:.0} GB/s", l.peak_gbps);
        }
    }
    text += &format!(
        "); at this rate the whole sweep takes about {}",
        humantime::format_duration(Duration::from_secs((sweep.as_secs_f64().round() as u64).max(1)))
    );
    let paths: Vec<&str> = [&report.sender_transport, &report.receiver_transport]
        .iter()
        .filter_map(|i| i.path.as_deref())
        .collect();
    if far_below && !paths.is_empty() {
        text += &format!(". Far below the link: the path is {}", paths.join("; "));
    }
    Some(text + ". Ctrl-C stops it.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RunReport {
        let json = std::fs::read_to_string("tests/fixtures/reports/h200-ucx-put.json").expect("a fixture");
        serde_json::from_str(&json).expect("a report")
    }

    #[test]
    fn a_first_request_far_below_the_link_or_a_long_sweep_is_announced() {
        let mut r = report();
        let link = r.link.clone().expect("the fixture has a link");
        let bytes = 64 << 20;
        // At 90% of the link, this short sweep says nothing.
        let quick = (bytes as f64 / (0.9 * link.peak_gbps)) as u64;
        assert_eq!(warm_request_notice(&r, bytes, quick), None);
        // At 0.5%: the rate, the share, the path, how to stop.
        let slow = (bytes as f64 / (0.005 * link.peak_gbps)) as u64;
        r.receiver_transport.path =
            Some("get over cuda_ipc/cuda (rma_bw); UCX ran software emulation".into());
        let text = warm_request_notice(&r, bytes, slow).expect("a notice");
        assert!(text.contains("0.50% of"), "{text}");
        assert!(text.contains("software emulation"), "{text}");
        assert!(text.ends_with("Ctrl-C stops it."), "{text}");
        // A link given as a number is named once, not "of 5 GB/s at 5 GB/s".
        r.link = Some(crate::link::parse("5").expect("a number is a link"));
        let text = warm_request_notice(&r, bytes, (bytes as f64 / 0.05) as u64).expect("a notice");
        assert!(text.contains("1.00% of 5 GB/s)"), "{text}");
        // No link: only a long sweep is announced.
        r.link = None;
        let total: u64 = r.plan.points().iter().map(|p| p.layout.total_bytes() as u64).sum::<u64>()
            * (r.plan.warmup + r.plan.iterations) as u64;
        let two_minutes = 120e9 * bytes as f64 / total as f64;
        let text = warm_request_notice(&r, bytes, two_minutes as u64).expect("a notice");
        assert!(text.contains("takes about 2m"), "{text}");
        assert_eq!(warm_request_notice(&r, bytes, (two_minutes / 4.0) as u64), None);
    }
}
