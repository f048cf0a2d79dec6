//! Histograms for `/metrics`, kept in atomics: observing costs a few relaxed adds, and
//! rendering writes the Prometheus text format (cumulative `_bucket`s, `_sum`, `_count`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds in seconds for waits from milliseconds to minutes (expiry lag).
pub const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Bucket bounds in seconds for request latencies.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Counts of observations by bucket.
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then one for larger values (`+Inf`); not cumulative.
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one value, in seconds (negative values count as 0).
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let i = self.bounds.partition_point(|&b| b < seconds);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Writes the samples of `name` with `labels` (`kind="study"`, or empty) to `out`; the
    /// `# HELP`/`# TYPE` lines are the caller's, once per name.
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(bound) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive_of_their_bound() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0, -1.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render("lag_seconds", "kind=\"study\"", &mut out);
        assert_eq!(
            out,
            "lag_seconds_bucket{kind=\"study\",le=\"0.1\"} 3\n\
             lag_seconds_bucket{kind=\"study\",le=\"1\"} 4\n\
             lag_seconds_bucket{kind=\"study\",le=\"+Inf\"} 5\n\
             lag_seconds_sum{kind=\"study\"} 3.65\n\
             lag_seconds_count{kind=\"study\"} 5\n"
        );
        assert_eq!(h.count(), 5);
    }
}
