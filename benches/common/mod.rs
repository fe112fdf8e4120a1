//! What the benches share: how many rounds to run, and the median of them.

/// The first numeric argument (`cargo bench --bench NAME -- ROUNDS`), or `default`.
pub fn rounds(default: usize) -> usize {
    std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
