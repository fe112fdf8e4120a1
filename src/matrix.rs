//! The all-pairs matrix: which ordered pairs of N ranks run together, and
//! what their figures say (the median, and the pairs well below it). Pure:
//! the processes that run it are in cli/matrix.rs.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// How many pairs of a round run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Concurrency {
    /// Every pair of a round together: the fabric loaded as serving loads it.
    All,
    /// One pair at a time: each link alone.
    One,
}

crate::words::named_by_words!(Concurrency, "--concurrent-pairs", { All => "all", One => "1" | "one" });

/// The steps of an N-rank matrix, each a set of pairs (sender, receiver)
/// that run together. Round r pairs every rank i with i + r (mod N): each
/// rank sends once and receives once, and N - 1 rounds cover all N(N-1)
/// ordered pairs.
pub fn steps(n: usize, concurrency: Concurrency) -> Vec<Vec<(usize, usize)>> {
    let rounds = (1..n).map(|r| (0..n).map(|i| (i, (i + r) % n)).collect::<Vec<_>>());
    match concurrency {
        Concurrency::All => rounds.collect(),
        Concurrency::One => rounds.flatten().map(|p| vec![p]).collect(),
    }
}

/// What one pair measured at one point, or why it has no figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub from: usize,
    pub to: usize,
    pub gbps: Option<f64>,
    /// Why there is no figure (the pair failed, a rank was gone).
    pub error: Option<String>,
}

/// One point's N x N figures, their median and the pairs below it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub label: String,
    pub cells: Vec<Cell>,
    pub median_gbps: Option<f64>,
    pub outliers: Vec<Outlier>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outlier {
    pub from: usize,
    pub to: usize,
    pub gbps: f64,
    pub percent_of_median: f64,
}

impl Grid {
    /// The median of the pairs that ran, and those below `percent` of it.
    pub fn new(label: String, cells: Vec<Cell>, percent: f64) -> Grid {
        let mut figures: Vec<f64> = cells.iter().filter_map(|c| c.gbps).collect();
        figures.sort_by(f64::total_cmp);
        let median = match figures.len() {
            0 => None,
            k if k % 2 == 1 => Some(figures[k / 2]),
            k => Some((figures[k / 2 - 1] + figures[k / 2]) / 2.0),
        };
        let outliers = match median {
            Some(m) if m > 0.0 => cells
                .iter()
                .filter_map(|c| c.gbps.map(|g| (c, g)))
                .filter(|(_, g)| *g < m * percent / 100.0)
                .map(|(c, g)| Outlier { from: c.from, to: c.to, gbps: g, percent_of_median: 100.0 * g / m })
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        let mut outliers = outliers;
        outliers.sort_by_key(|o| (o.from, o.to));
        Grid { label, cells, median_gbps: median, outliers }
    }

    pub fn cell(&self, from: usize, to: usize) -> Option<&Cell> {
        self.cells.iter().find(|c| c.from == from && c.to == to)
    }

    pub fn is_outlier(&self, from: usize, to: usize) -> bool {
        self.outliers.iter().any(|o| o.from == from && o.to == to)
    }

    /// The N x N table: rows send, columns receive; "x" where a pair has no
    /// figure, "*" beside an outlier.
    pub fn table(&self, names: &[String]) -> String {
        let n = names.len();
        let width = names.iter().map(String::len).max().unwrap_or(4).clamp(6, 24);
        let mut out = String::new();
        let _ = write!(out, "{:>width$}", "from\\to");
        for j in 0..n {
            let _ = write!(out, " {:>9}", j);
        }
        out.push('\n');
        for (i, name) in names.iter().enumerate() {
            let short: String = name.chars().take(width).collect();
            let _ = write!(out, "{short:>width$}");
            for j in 0..n {
                let text = match self.cell(i, j) {
                    _ if i == j => "-".to_string(),
                    Some(Cell { gbps: Some(g), .. }) => {
                        let flag = if self.is_outlier(i, j) { "*" } else { "" };
                        format!("{g:.2}{flag}")
                    }
                    Some(_) => "x".to_string(),
                    None => "?".to_string(),
                };
                let _ = write!(out, " {text:>9}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ordered_pair_once_and_no_rank_twice_in_a_step() {
        for n in 2..=9 {
            for c in [Concurrency::All, Concurrency::One] {
                let steps = steps(n, c);
                let mut pairs: Vec<(usize, usize)> = steps.iter().flatten().copied().collect();
                pairs.sort();
                let all: Vec<(usize, usize)> =
                    (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).collect();
                assert_eq!(pairs, all, "n = {n}, {c:?}");
                for step in &steps {
                    for (k, (i, j)) in step.iter().enumerate() {
                        assert!(step[k + 1..].iter().all(|(a, b)| a != i && b != j), "{step:?}");
                    }
                }
                let expect = if c == Concurrency::All { n - 1 } else { n * (n - 1) };
                assert_eq!(steps.len(), expect);
            }
        }
        assert_eq!(steps(3, Concurrency::All), [vec![(0, 1), (1, 2), (2, 0)], vec![(0, 2), (1, 0), (2, 1)]]);
    }

    fn cell(from: usize, to: usize, gbps: Option<f64>) -> Cell {
        Cell { from, to, gbps, error: gbps.is_none().then(|| "rank 2 died".into()) }
    }

    #[test]
    fn the_median_and_the_pairs_below_it() {
        // Four ranks; every pair into or out of rank 3 at a tenth of the rest.
        let mut cells = Vec::new();
        for i in 0..4 {
            for j in (0..4).filter(|&j| j != i) {
                cells.push(cell(i, j, Some(if i == 3 || j == 3 { 1.0 } else { 10.0 })));
            }
        }
        let g = Grid::new("1024 layer".into(), cells, 80.0);
        // 6 pairs at 10, 6 at 1: the median is their mean, 5.5.
        assert_eq!(g.median_gbps, Some(5.5));
        assert_eq!(g.outliers.len(), 6);
        assert!(g.outliers.iter().all(|o| o.from == 3 || o.to == 3));
        assert!((g.outliers[0].percent_of_median - 100.0 / 5.5).abs() < 1e-9);
        // Three fast links, one slow, one failed: the failed one is no figure.
        let cells = vec![
            cell(0, 1, Some(10.0)),
            cell(1, 0, Some(9.0)),
            cell(0, 2, Some(11.0)),
            cell(2, 0, Some(7.0)),
            cell(1, 2, None),
        ];
        let g = Grid::new("x".into(), cells, 80.0);
        assert_eq!(g.median_gbps, Some(9.5));
        assert_eq!(g.outliers, [Outlier { from: 2, to: 0, gbps: 7.0, percent_of_median: 700.0 / 9.5 }]);
        let t = g.table(&["a".into(), "b".into(), "c".into()]);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert!(rows[2].trim_end().ends_with('x'), "{t}");
        assert!(rows[3].contains("7.00*"), "{t}");
        assert!(rows[1].split_whitespace().nth(1) == Some("-"), "{t}");
    }
}
