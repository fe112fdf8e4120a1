//! The deployment gate: floors (`--min-gbps`, `--min-percent-of-peak`) and
//! ceilings (`--max-p99`, `--max-added-ttft`) turn a run into a pass or a
//! fail (exit 4) with one verdict line, for CI pipelines that validate a
//! fabric before deploying on it. What the plan must give for them to be
//! judged is checked before anything runs (plan::gate).

use super::RunReport;
use crate::error::{Error, ErrorKind, Result};
use crate::figures::PointResult;
use crate::plan::gate::GateNeeds;
use crate::units;
use serde::{Deserialize, Serialize};

/// A floor for every prompt length, and/or floors for some of them:
/// `300`, `8k:300,32k:350`, or `250,131072:350`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Threshold {
    pub all: Option<f64>,
    pub at: Vec<(u32, f64)>,
}

impl Threshold {
    /// GB/s floors: above zero, at most the fastest link kvxfer takes.
    pub fn parse(s: &str) -> Result<Threshold> {
        Threshold::parse_up_to(s, crate::link::MAX_GBPS, "GB/s")
    }

    /// Percentages of a peak: above zero, at most 100.
    pub fn parse_percent(s: &str) -> Result<Threshold> {
        Threshold::parse_up_to(s, 100.0, "%")
    }

    fn parse_up_to(s: &str, most: f64, unit: &str) -> Result<Threshold> {
        Threshold::parse_with(s, |v| match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 && x <= most => Ok(x),
            _ => Err(Error::usage(format!(
                "'{v}' is not a number above 0 and at most {most} {unit} (in '{s}')"
            ))),
        })
    }

    /// Times ("50ms", "800us", "1.5s"), held in ns: above zero, at most an hour.
    pub fn parse_times(s: &str) -> Result<Threshold> {
        Threshold::parse_with(s, |v| match humantime::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() && d.as_secs() <= 3600 => Ok(d.as_nanos() as f64),
            _ => Err(Error::usage(format!(
                "'{v}' is not a time above zero and within an hour, like 50ms (in '{s}')"
            ))),
        })
    }

    fn parse_with(s: &str, value: impl Fn(&str) -> Result<f64>) -> Result<Threshold> {
        let mut t = Threshold::default();
        for item in units::list_items(s, "the gate's list")? {
            match item.split_once(':') {
                Some((tokens, v)) => t.at.push((units::parse_token_count(tokens)?, value(v)?)),
                None if t.all.is_none() => t.all = Some(value(item)?),
                None => {
                    return Err(Error::usage(format!(
                        "'{s}' gives more than one floor for all prompt lengths"
                    )))
                }
            }
        }
        Ok(t)
    }

    fn for_tokens(&self, tokens: u32) -> Option<f64> {
        self.exactly(tokens).or(self.all)
    }

    fn exactly(&self, tokens: u32) -> Option<f64> {
        self.at.iter().find(|(t, _)| *t == tokens).map(|(_, v)| *v)
    }

    /// The points a floor judges, each with its floor: a point of one
    /// prompt length by that length's floor; a mix as a whole by the floor
    /// for all lengths, and each of its lengths by a floor named for it.
    fn judged(&self, points: &[PointResult]) -> Vec<(PointResult, f64)> {
        let mut judged = Vec::new();
        for p in points {
            if !p.is_mix() {
                judged.extend(self.for_tokens(p.prompt_tokens).map(|floor| (p.clone(), floor)));
                continue;
            }
            judged.extend(self.all.map(|floor| (p.clone(), floor)));
            for one in p.per_length() {
                judged.extend(self.exactly(one.prompt_tokens).map(|floor| (one, floor)));
            }
        }
        judged
    }
}

/// One gate flag: its limits, and the figure of a point it judges (or why
/// that point has none).
struct Limit<'a> {
    flag: &'static str,
    threshold: &'a Threshold,
    figure: fn(&PointResult) -> std::result::Result<f64, String>,
    /// A ceiling (--max-*), not a floor.
    ceiling: bool,
    show: fn(f64) -> String,
}

/// The limits a run must keep.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    pub min_gbps: Option<Threshold>,
    pub min_percent_of_peak: Option<Threshold>,
    /// Ceilings on each point's request p99 (the table's p99), ns.
    pub max_p99: Option<Threshold>,
    /// Ceilings on what the transfer adds to time-to-first-token, p99, ns.
    pub max_added_ttft: Option<Threshold>,
}

/// A point's tail, where its count supports one.
fn p99(l: &crate::figures::LatencySummary) -> std::result::Result<f64, String> {
    l.p99_supported().map(|ns| ns as f64).ok_or_else(|| {
        format!("{} requests give no p99 (it takes {})", l.count, crate::plan::gate::TAIL_REQUESTS)
    })
}

/// What the gate found, kept in the JSON report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    pub passed: bool,
    /// Point checks made (a point counts once per floor that applies).
    pub checks: usize,
    pub failures: Vec<String>,
    /// Each check: the floor and what the point measured against it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checked: Vec<GateCheck>,
}

/// One floor checked on one point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateCheck {
    pub flag: String,
    pub granularity: crate::plan::Granularity,
    pub prompt_tokens: u32,
    /// The floor, or for a --max-* flag the ceiling (times in ns).
    #[serde(alias = "floor")]
    pub limit: f64,
    /// None where there was nothing to compare (no peak, too few requests).
    pub measured: Option<f64>,
    pub passed: bool,
}

impl GateVerdict {
    /// The verdict line of the table.
    pub fn line(&self) -> String {
        match self.passed {
            true => format!("PASS: {} checks, each within its limit", self.checks),
            false => format!("FAIL: {}", self.failures.join("; ")),
        }
    }

    pub fn error(&self) -> Option<Error> {
        (!self.passed)
            .then(|| Error::new(ErrorKind::Gate, format!("gate failed: {}", self.failures.join("; "))))
    }
}

impl Gate {
    pub fn is_empty(&self) -> bool {
        self.limits().is_empty()
    }

    /// The flags given, each with how it judges a point.
    fn limits(&self) -> Vec<Limit<'_>> {
        let gbps = |v: f64| format!("{v:.1} GB/s");
        let time = |ns: f64| crate::units::fmt_ns(ns);
        let all: [(&'static str, &Option<Threshold>, Figure, bool, Show); 4] = [
            ("--min-gbps", &self.min_gbps, |p| Ok(p.gbps), false, gbps),
            ("--min-percent-of-peak", &self.min_percent_of_peak, percent_of_peak, false, |v| {
                format!("{v:.1}% of peak")
            }),
            ("--max-p99", &self.max_p99, |p| p99(&p.request_ns), true, time),
            ("--max-added-ttft", &self.max_added_ttft, added_ttft_p99, true, time),
        ];
        all.into_iter()
            .filter_map(|(flag, t, figure, ceiling, show)| {
                t.as_ref().map(|threshold| Limit { flag, threshold, figure, ceiling, show })
            })
            .collect()
    }

    /// What the plan must give for this gate to be judged (checked before
    /// anything runs).
    pub fn needs(&self) -> GateNeeds {
        let limits = self.limits();
        let named = limits.iter().map(|l| (l.flag, l.threshold.at.iter().map(|a| a.0).collect())).collect();
        let given = |flag: &str| limits.iter().find(|l| l.flag == flag).map(|l| l.flag);
        GateNeeds {
            named,
            peak: given("--min-percent-of-peak"),
            tails: ["--max-p99", "--max-added-ttft"].into_iter().filter_map(given).collect(),
            prefill: given("--max-added-ttft"),
        }
    }

    pub fn judge(&self, report: &RunReport) -> GateVerdict {
        let mut checks = 0;
        let (mut failures, mut checked) = (Vec::new(), Vec::new());
        let lengths: Vec<PointResult> = report.points.iter().flat_map(|p| p.per_length()).collect();
        let measured = |t: u32| lengths.iter().any(|p| p.prompt_tokens == t);
        for limit in self.limits() {
            let (flag, threshold) = (limit.flag, limit.threshold);
            // A limit for a prompt length the run never measured would pass unseen.
            for (t, _) in threshold.at.iter().filter(|(t, _)| !measured(*t)) {
                failures.push(format!("{flag} names {t} tokens, which this run did not measure"));
            }
            for (p, bound) in threshold.judged(&report.points) {
                checks += 1;
                let what = match (p.is_mix(), &p.conversation) {
                    (true, _) => format!("{} mix of prompt lengths", p.granularity),
                    (_, Some(_)) => format!("{} {} conversation", p.granularity, p.prompt_label()),
                    _ => format!("{} {} tokens", p.granularity, p.prompt_tokens),
                };
                let figure = (limit.figure)(&p);
                let show = limit.show;
                let failed = match &figure {
                    Err(why) => Some(format!("{what}: {why}: {flag} cannot judge it")),
                    Ok(v) if limit.ceiling && *v > bound => {
                        Some(format!("{what}: {} > {flag} {}", show(*v), show(bound)))
                    }
                    Ok(v) if !limit.ceiling && *v < bound => {
                        Some(format!("{what}: {} < {flag} {}", show(*v), show(bound)))
                    }
                    Ok(_) => None,
                };
                checked.push(GateCheck {
                    flag: flag.to_string(),
                    granularity: p.granularity,
                    prompt_tokens: p.prompt_tokens,
                    limit: bound,
                    measured: figure.ok(),
                    passed: failed.is_none(),
                });
                failures.extend(failed);
            }
        }
        GateVerdict { passed: failures.is_empty(), checks, failures, checked }
    }
}

type Figure = fn(&PointResult) -> std::result::Result<f64, String>;
type Show = fn(f64) -> String;

/// A share of a peak: none without one, and none that says anything above
/// 100% (the peak is wrong, not the figure).
fn percent_of_peak(p: &PointResult) -> std::result::Result<f64, String> {
    match p.percent_of_peak {
        None => Err("no peak to compare with (the sender's --link gives it)".into()),
        Some(v) if v > 100.0 => Err("above 100% of the peak, which is wrong".into()),
        Some(v) => Ok(v),
    }
}

/// What the transfer added to time-to-first-token, p99.
fn added_ttft_p99(p: &PointResult) -> std::result::Result<f64, String> {
    match &p.prefill {
        None => Err("no emulated prefill".into()),
        Some(f) => p99(&f.added_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_a_floor_for_all_and_for_some() {
        let t = Threshold::parse("250, 8k:300,131072:350").unwrap();
        assert_eq!(t.all, Some(250.0));
        assert_eq!(t.at, vec![(8192, 300.0), (131072, 350.0)]);
        assert_eq!(t.for_tokens(8192), Some(300.0));
        assert_eq!(t.for_tokens(128), Some(250.0));
        assert_eq!(Threshold::parse("8k:300").unwrap().for_tokens(128), None);
        for bad in ["", "-1", "0", "x", "8k:", "1,2", "nan"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }
}
