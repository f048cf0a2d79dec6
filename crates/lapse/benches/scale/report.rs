//! The rows of `docs/PERFORMANCE.md`: each figure with its target, what was measured, and
//! whether the target holds.

use std::fmt::Write as _;

use crate::measure::{Pair, median, short, spread};

/// Whether a figure met its target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Met,
    Missed,
    NotRun,
    /// A figure with no target of its own, shown for what it says of another.
    Shown,
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub target: String,
    pub measured: String,
    pub spread: String,
    pub detail: String,
    pub verdict: Verdict,
}

/// A ratio row: `pair.a / pair.b` against `ok` on its median; `sides` name a and b.
pub fn ratio(
    figure: &str,
    target: &str,
    pair: &Pair,
    sides: [&str; 2],
    unit: &str,
    ok: impl Fn(f64) -> bool,
) -> Row {
    ratio_row(figure, target, pair.ratios(), pair, sides, unit, ok)
}

/// A ratio row with no target of its own, shown for what it says of another row (`why`).
pub fn shown_ratio(figure: &str, why: &str, pair: &Pair, sides: [&str; 2], unit: &str) -> Row {
    Row {
        verdict: Verdict::Shown,
        ..ratio_row(figure, why, pair.ratios(), pair, sides, unit, |_| true)
    }
}

/// A time ratio from rates: how much longer one operation takes on side a than on side b
/// (`b / a` of the rates, per round), so 1.0× is flat.
pub fn time_ratio(
    figure: &str,
    target: &str,
    rates: &Pair,
    sides: [&str; 2],
    unit: &str,
    ok: impl Fn(f64) -> bool,
) -> Row {
    let ratios = rates.b.iter().zip(&rates.a).map(|(b, a)| b / a).collect();
    ratio_row(figure, target, ratios, rates, sides, unit, ok)
}

fn ratio_row(
    figure: &str,
    target: &str,
    ratios: Vec<f64>,
    pair: &Pair,
    [a, b]: [&str; 2],
    unit: &str,
    ok: impl Fn(f64) -> bool,
) -> Row {
    let m = median(&ratios);
    Row {
        figure: figure.into(),
        target: target.into(),
        measured: format!("{}×", short(m)),
        spread: spread(&ratios),
        detail: format!(
            "{a}: {} {unit}; {b}: {} {unit} (medians of {} rounds each)",
            short(median(&pair.a)),
            short(median(&pair.b)),
            pair.a.len()
        ),
        verdict: if ok(m) { Verdict::Met } else { Verdict::Missed },
    }
}

/// A row of one value (not a ratio).
pub fn value(
    figure: &str,
    target: &str,
    samples: &[f64],
    unit: &str,
    ok: impl Fn(f64) -> bool,
) -> Row {
    let m = median(samples);
    Row {
        figure: figure.into(),
        target: target.into(),
        measured: format!("{} {unit}", short(m)),
        spread: spread(samples),
        detail: format!("median of {} runs", samples.len()),
        verdict: if ok(m) { Verdict::Met } else { Verdict::Missed },
    }
}

/// A row that could not be measured here, with why.
pub fn not_run(figure: &str, target: &str, why: &str) -> Row {
    Row {
        figure: figure.into(),
        target: target.into(),
        measured: "not run".into(),
        spread: String::new(),
        detail: why.into(),
        verdict: Verdict::NotRun,
    }
}

/// The Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| figure | target | measured (median) | spread | verdict | how |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let verdict = match r.verdict {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotRun => "not run",
            Verdict::Shown => "shown",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {verdict} | {} |",
            r.figure, r.target, r.measured, r.spread, r.detail
        );
    }
    out
}
