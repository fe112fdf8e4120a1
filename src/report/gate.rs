//! The deployment gate: `--min-gbps` and `--min-percent-of-peak` turn a run
//! into a pass or a fail (exit 4) with one verdict line, for CI pipelines
//! that validate a fabric before deploying on it.

use super::RunReport;
use crate::error::{Error, ErrorKind, Result};
use crate::figures::PointResult;
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
    pub fn parse(s: &str) -> Result<Threshold> {
        let mut t = Threshold::default();
        for item in units::list_items(s, "the gate's list")? {
            let value = |v: &str| match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(Error::usage(format!("'{v}' is not a positive number (in '{s}')"))),
            };
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

/// A flag, its threshold, the figure of a point it applies to, and its unit.
type Floor<'a> = (&'static str, &'a Option<Threshold>, fn(&PointResult) -> Option<f64>, &'static str);

/// The floors a run must clear.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    pub min_gbps: Option<Threshold>,
    pub min_percent_of_peak: Option<Threshold>,
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
    pub floor: f64,
    /// None where there was nothing to compare (no peak).
    pub measured: Option<f64>,
    pub passed: bool,
}

impl GateVerdict {
    /// The verdict line of the table.
    pub fn line(&self) -> String {
        match self.passed {
            true => format!("PASS: {} checks, none below its floor", self.checks),
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
        self.min_gbps.is_none() && self.min_percent_of_peak.is_none()
    }

    pub fn judge(&self, report: &RunReport) -> GateVerdict {
        let mut checks = 0;
        let (mut failures, mut checked) = (Vec::new(), Vec::new());
        let lengths: Vec<PointResult> = report.points.iter().flat_map(|p| p.per_length()).collect();
        let measured = |t: u32| lengths.iter().any(|p| p.prompt_tokens == t);
        let floors: [Floor; 2] = [
            ("--min-gbps", &self.min_gbps, |p| Some(p.gbps), "GB/s"),
            ("--min-percent-of-peak", &self.min_percent_of_peak, |p| p.percent_of_peak, "% of peak"),
        ];
        for (flag, threshold, value, unit) in floors {
            let Some(threshold) = threshold else { continue };
            // A floor for a prompt length the run never measured would pass unseen.
            for (t, _) in threshold.at.iter().filter(|(t, _)| !measured(*t)) {
                failures.push(format!("{flag} names {t} tokens, which this run did not measure"));
            }
            for (p, floor) in threshold.judged(&report.points) {
                checks += 1;
                let what = match p.is_mix() {
                    true => format!("{} mix of prompt lengths", p.granularity),
                    false => format!("{} {} tokens", p.granularity, p.prompt_tokens),
                };
                let wrong_peak = p.percent_of_peak.is_some_and(|v| v > 100.0);
                let failed = failures.len();
                match value(&p) {
                    None => failures.push(format!("{what}: no peak to compare with ({flag} needs --link)")),
                    // A share of a peak the run exceeded says nothing.
                    Some(_) if wrong_peak && unit == "% of peak" => failures.push(format!(
                        "{what}: above 100% of the peak, which is wrong: {flag} cannot judge it"
                    )),
                    Some(v) if v < floor => failures.push(format!("{what}: {v:.1} {unit} < {flag} {floor}")),
                    Some(_) => {}
                }
                checked.push(GateCheck {
                    flag: flag.to_string(),
                    granularity: p.granularity,
                    prompt_tokens: p.prompt_tokens,
                    floor,
                    measured: value(&p),
                    passed: failures.len() == failed,
                });
            }
        }
        GateVerdict { passed: failures.is_empty(), checks, failures, checked }
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
