//! What runs of `kill -9` share, here and in the benchmark's figure of them
//! (`benches/scale/crash.rs` includes this file): when to kill, and when an instance was up.

/// A small deterministic generator: the kill times of a run follow from its seed.
pub struct Dice(pub u64);

impl Dice {
    /// A number in `low..high` (`low` when the range is empty).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % high.saturating_sub(low).max(1)
    }
}

/// When instances could sweep: each one's spans (wall ms) from answering to being killed.
#[derive(Default)]
pub struct Uptime(pub Vec<(i64, i64)>);

impl Uptime {
    /// The first moment at or after `at` when some instance was up.
    pub fn available(&self, at: i64) -> i64 {
        if self.0.iter().any(|&(from, to)| from <= at && at <= to) {
            return at;
        }
        self.0
            .iter()
            .map(|&(from, _)| from)
            .filter(|&from| from > at)
            .min()
            .unwrap_or(at)
    }
}
