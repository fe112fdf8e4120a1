//! Results as people read them (a table on stdout) and as programs read them
//! (CSV, JSON). Exporters only read a finished `RunReport`.

pub mod compare;
pub mod csv;
pub mod gate;
pub mod json;
pub mod plot;
pub mod rounds;
pub mod screen;
pub mod table;

use crate::env::EnvInfo;
use crate::error::Result;
use crate::figures::PointResult;
use crate::link::Link;
use crate::plan::Plan;
use crate::session::{ControlRtt, Hello, Role};
use crate::topology::Seat;
use crate::transport::{TransportInfo, TransportSpec};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// Bump when a field changes meaning or disappears.
pub const SCHEMA: u32 = 1;

/// What a report says about its fan: on the hub, the pairs' own reports
/// (its points are the aggregate); on a spoke, its seat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanRun {
    pub seat: Seat,
    /// The hub wrote this report; the seat's index is then meaningless.
    pub hub: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pair_reports: Vec<RunReport>,
}

impl FanRun {
    /// "2→1" on the hub (its figures are the aggregate), "2→1 pair 0" on a spoke.
    pub fn label(&self) -> String {
        match self.hub {
            true => self.seat.arrow(),
            false => format!("{} pair {}", self.seat.arrow(), self.seat.index),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub schema: u32,
    /// The side that wrote this report; both sides hold the same figures.
    pub written_by: Role,
    pub started_at: String,
    pub plan: Plan,
    pub plan_digest: String,
    pub model: String,
    pub kv_bytes_per_token: u64,
    pub transport: TransportSpec,
    pub sender_transport: TransportInfo,
    pub receiver_transport: TransportInfo,
    pub link: Option<Link>,
    pub sender: EnvInfo,
    pub receiver: EnvInfo,
    /// Measured by the sender right after the handshake.
    pub control_rtt: Option<ControlRtt>,
    pub points: Vec<PointResult>,
    pub verified_bytes: u64,
    pub wrong_bytes: u64,
    /// Receiver: what the checks of a point that has not finished found
    /// (verified, wrong bytes); in the totals of a run that fails partway.
    #[serde(skip)]
    pub unfinished: (u64, u64),
    /// "ok", "wrong bytes", or the error that ended the run.
    pub outcome: String,
    /// The `--min-gbps` / `--min-percent-of-peak` verdict, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<gate::GateVerdict>,
    /// One of N pairs run together (many-to-one, one-to-many), or their hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan: Option<FanRun>,
    /// Points measured above 100% of the link's peak: the peak is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_exceeded: Option<CeilingExceeded>,
}

/// A figure above its physical ceiling is a bug, never a result: a run
/// whose points exceed the peak it was given or found says so, with the
/// figures kept as measured, so that the wrong ceiling gets reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CeilingExceeded {
    /// The points above 100%, as "granularity prompt_tokens".
    pub points: Vec<String>,
    pub max_percent_of_peak: f64,
    pub note: String,
}

impl CeilingExceeded {
    pub fn of(points: &[PointResult], link: Option<&Link>) -> Option<CeilingExceeded> {
        let above: Vec<&PointResult> =
            points.iter().filter(|p| p.percent_of_peak.is_some_and(|v| v > 100.0)).collect();
        let link = link?;
        let max = above.iter().filter_map(|p| p.percent_of_peak).fold(f64::NAN, f64::max);
        (!above.is_empty()).then(|| CeilingExceeded {
            points: above.iter().map(|p| format!("{} {}", p.granularity, p.prompt_label())).collect(),
            max_percent_of_peak: max,
            note: format!(
                "{} of {} points measured above the peak of {} ({:.2} GB/s), up to {max:.1}%: that peak is not this \
                 run's ceiling. The figures are as measured; the peak is a bug of kvxfer's link detection (or a \
                 wrong --link): please report it with this file",
                above.len(),
                points.len(),
                link.name,
                link.peak_gbps
            ),
        })
    }
}

impl RunReport {
    /// NIXL: both sides' records of each request become each point's
    /// figures, and leave the transport details (they would only repeat them).
    pub fn attach_nixl(&mut self) {
        let (Some(s), Some(r)) = (self.sender_transport.nixl.take(), self.receiver_transport.nixl.take())
        else {
            return;
        };
        let (initiator, target) = if s.initiator { (&s, &r) } else { (&r, &s) };
        let one_host = self.sender.hostname == self.receiver.hostname;
        for (point, f) in crate::figures::nixl::figures(&self.plan, initiator, target, one_host) {
            if let Some(p) = self.points.iter_mut().find(|p| p.point == point) {
                p.nixl = Some(f);
            }
        }
    }

    pub fn new(written_by: Role, hello: &Hello, receiver: EnvInfo) -> RunReport {
        RunReport {
            schema: SCHEMA,
            written_by,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            plan: hello.plan.clone(),
            plan_digest: hello.plan_digest.clone(),
            model: hello.plan.shape.model.describe(),
            kv_bytes_per_token: hello.plan.shape.bytes_per_token(),
            transport: hello.transport.clone(),
            sender_transport: TransportInfo::default(),
            receiver_transport: TransportInfo::default(),
            link: hello.link.clone(),
            sender: hello.env.clone(),
            receiver,
            control_rtt: None,
            points: Vec::new(),
            verified_bytes: 0,
            wrong_bytes: 0,
            unfinished: (0, 0),
            outcome: "running".into(),
            gate: None,
            fan: hello.seat.map(|seat| FanRun { seat, hub: false, pair_reports: Vec::new() }),
            ceiling_exceeded: None,
        }
    }

    /// Totals the integrity figures and settles the outcome.
    pub fn close(&mut self, error: Option<&crate::error::Error>) {
        self.verified_bytes = self.points.iter().map(|p| p.verified_bytes).sum::<u64>() + self.unfinished.0;
        self.wrong_bytes = self.points.iter().map(|p| p.wrong_bytes).sum::<u64>() + self.unfinished.1;
        self.outcome = match error {
            Some(e) if e.kind == crate::error::ErrorKind::Interrupted => "interrupted".into(),
            Some(e) => format!("error: {e}"),
            None if self.wrong_bytes > 0 => "wrong bytes".into(),
            None => "ok".into(),
        };
        self.ceiling_exceeded = CeilingExceeded::of(&self.points, self.link.as_ref());
    }

    pub fn first_wrong(&self) -> Option<&str> {
        self.points.iter().find_map(|p| p.first_wrong.as_deref())
    }
}

/// Writes a whole report in one format.
pub trait Exporter {
    fn export(&self, report: &RunReport, out: &mut dyn Write) -> Result<()>;
}

/// Writes a report file whole or not at all: into a hidden sibling, then
/// renamed over `path`, so that a process that dies mid-write, or between
/// points, leaves its last whole report, never a torn one.
pub fn write_whole(path: &std::path::Path, report: &RunReport, exporter: &dyn Exporter) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial"));
    let written = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        exporter.export(report, &mut f)?;
        f.flush()?;
        std::fs::rename(&partial, path)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map_err(|e: crate::error::Error| e.context(format!("writing {}", path.display())))
}
