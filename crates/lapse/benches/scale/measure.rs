//! Ratios measured side by side: two measurements taken in turn (A B A B ...), so drift in
//! the machine (other load, caches, thermal) falls on both alike; reported as the median of
//! the per-round ratios with their spread.

use std::future::Future;
use std::time::Instant;

/// Per-round values of two measurements taken in turn.
#[derive(Clone, Debug, Default)]
pub struct Pair {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

impl Pair {
    /// `a / b` per round.
    pub fn ratios(&self) -> Vec<f64> {
        self.a.iter().zip(&self.b).map(|(a, b)| a / b).collect()
    }
}

/// Runs `a` and `b` in turn for `rounds` rounds.
pub async fn interleave<A, B, FA, FB>(rounds: usize, mut a: A, mut b: B) -> Pair
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: Future<Output = f64>,
    FB: Future<Output = f64>,
{
    let mut pair = Pair::default();
    for _ in 0..rounds {
        pair.a.push(a().await);
        pair.b.push(b().await);
    }
    pair
}

/// Operations per second of `n` runs of `op`, one after another.
pub async fn rate<F, Fut>(n: usize, mut op: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    for i in 0..n {
        op(i).await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The median of some values.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// The value below which `p` (0..=1) of `values` fall (nearest rank).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `min–max` of some values, for the spread column.
pub fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", short(min), short(max))
}

/// A number in a few significant digits.
pub fn short(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
