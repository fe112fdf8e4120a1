//! Candidates measured in alternation, round after round (`kvxfer
//! compare`): each point's GB/s per round, their median with an interval
//! that assumes nothing about the distribution, and each candidate's ratio
//! to the first. Noise that comes and goes on a shared host hits every
//! candidate alike when they take turns (hyperfine's habit); one run each,
//! minutes apart, lets it decide the ratio. Pure: cli::rounds runs them.

use super::RunReport;
use crate::figures::PointResult;
use crate::plan::Granularity;
use serde::Serialize;

/// The coverage an interval is built for.
pub const COVERAGE: f64 = 0.95;

/// A median over rounds, and the interval between two of the rounds'
/// values that holds the true median with probability `coverage` (order
/// statistics: with n rounds, [x(k), x(n+1-k)] misses it only when k or
/// fewer rounds fall on one side, 2 P(Bin(n, 1/2) < k)). The widest k whose
/// coverage is still 95% is taken; below 6 rounds none reaches 95%, and the
/// interval is the rounds' range with the coverage it has (75% from 3).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub coverage: f64,
}

impl Interval {
    /// From one figure per round; None without any.
    pub fn of(values: &[f64]) -> Option<Interval> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n % 2 {
            1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        let coverage = |k: usize| 1.0 - 2.0 * binomial_below(n, k);
        let mut k = 1;
        while k < n.div_ceil(2) && coverage(k + 1) >= COVERAGE {
            k += 1;
        }
        Some(Interval { median, low: v[k - 1], high: v[n - k], coverage: coverage(k) })
    }

    pub fn overlaps(&self, other: &Interval) -> bool {
        self.low <= other.high && other.low <= self.high
    }
}

/// P(Bin(n, 1/2) < k).
fn binomial_below(n: usize, k: usize) -> f64 {
    let mut choose = 1.0f64;
    let mut sum = 0.0;
    for i in 0..k.min(n + 1) {
        if i > 0 {
            choose *= (n + 1 - i) as f64 / i as f64;
        }
        sum += choose;
    }
    sum / 2f64.powi(n as i32)
}

/// A candidate's median over another's, with the interval that the two
/// intervals allow (its low end the candidate's low over the other's high).
/// It holds 1 exactly when the two intervals overlap: then the rounds do
/// not tell the candidates apart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ratio {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    pub significant: bool,
}

impl Ratio {
    pub fn of(candidate: &Interval, baseline: &Interval) -> Option<Ratio> {
        (baseline.median > 0.0 && baseline.low > 0.0).then(|| Ratio {
            ratio: candidate.median / baseline.median,
            low: candidate.low / baseline.high,
            high: candidate.high / baseline.low,
            significant: !candidate.overlaps(baseline),
        })
    }
}

/// One candidate at one point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CandidatePoint {
    pub candidate: String,
    /// Each round's GB/s (the point's row), in round order.
    pub rounds_gbps: Vec<f64>,
    pub gbps: Interval,
    /// Against the first candidate; None for the first.
    pub vs_first: Option<Ratio>,
}

/// One point of the sweep, every candidate at it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointComparison {
    pub granularity: Granularity,
    /// The point's prompt (a length, "mix", "5-turn").
    pub prompt: String,
    pub candidates: Vec<CandidatePoint>,
}

/// Every point of the first candidate's first round that every candidate
/// measured, matched by sweep position, granularity and prompt.
pub fn compare(candidates: &[(String, Vec<RunReport>)]) -> Vec<PointComparison> {
    let Some(first) = candidates.first().and_then(|(_, runs)| runs.first()) else { return Vec::new() };
    let same = |a: &PointResult, b: &PointResult| {
        a.point == b.point && a.granularity == b.granularity && a.prompt_label() == b.prompt_label()
    };
    let mut out = Vec::new();
    for p in &first.points {
        let mut each = Vec::new();
        for (label, runs) in candidates {
            let rounds: Vec<f64> =
                runs.iter().filter_map(|r| r.points.iter().find(|q| same(p, q)).map(|q| q.gbps)).collect();
            let Some(gbps) = Interval::of(&rounds) else { continue };
            each.push(CandidatePoint { candidate: label.clone(), rounds_gbps: rounds, gbps, vs_first: None });
        }
        if each.len() < candidates.len() {
            continue;
        }
        let base = each[0].gbps.clone();
        for c in each.iter_mut().skip(1) {
            c.vs_first = Ratio::of(&c.gbps, &base);
        }
        out.push(PointComparison { granularity: p.granularity, prompt: p.prompt_label(), candidates: each });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_of_a_median_is_distribution_free_and_says_its_coverage() {
        // Three rounds: their range, which misses the median 1 time in 4.
        let i = Interval::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((i.median, i.low, i.high), (2.0, 1.0, 3.0));
        assert!((i.coverage - 0.75).abs() < 1e-12);
        // Six rounds: the range covers 1 - 2/64 = 96.9%.
        let i = Interval::of(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!((i.median, i.low, i.high), (3.5, 1.0, 6.0));
        assert!((i.coverage - (1.0 - 2.0 / 64.0)).abs() < 1e-12);
        // Ten: the second from each end, 1 - 2 x 11/1024 = 97.9% (the third: 89%).
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let i = Interval::of(&ten).unwrap();
        assert_eq!((i.low, i.high), (2.0, 9.0));
        assert!((i.coverage - (1.0 - 22.0 / 1024.0)).abs() < 1e-12);
        // One round is no interval; none, nothing.
        assert_eq!(Interval::of(&[5.0]).unwrap().coverage, 0.0);
        assert!(Interval::of(&[]).is_none() && Interval::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn a_ratio_is_significant_only_where_the_intervals_do_not_overlap() {
        let a = Interval::of(&[10.0, 11.0, 12.0]).unwrap();
        let b = Interval::of(&[5.0, 6.0, 7.0]).unwrap();
        let r = Ratio::of(&b, &a).unwrap();
        assert!((r.ratio - 6.0 / 11.0).abs() < 1e-12 && r.significant);
        assert!((r.low - 5.0 / 12.0).abs() < 1e-12 && (r.high - 0.7).abs() < 1e-12);
        let c = Interval::of(&[9.0, 10.5, 13.0]).unwrap();
        let r = Ratio::of(&c, &a).unwrap();
        assert!(!r.significant && r.low <= 1.0 && r.high >= 1.0, "{r:?}");
        assert!(Ratio::of(&a, &Interval::of(&[0.0]).unwrap()).is_none());
    }
}
