//! Figures from each run, their medians across runs, the targets from the issue, and the
//! table printed to stdout and written as Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stats::median;

/// A target from the issue, checked against the median.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Switchyard / baseline at least this.
    RatioAtLeast(f64),
    /// The figure itself at most this.
    AtMost(f64),
    /// The figure itself at least this.
    AtLeast(f64),
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥ {r}×"),
            Target::AtMost(v) => format!("≤ {}", fmt_num(v)),
            Target::AtLeast(v) => format!("≥ {}", fmt_num(v)),
        }
    }

    fn holds(self, value: f64, ratio: f64) -> Option<bool> {
        let (x, ok) = match self {
            Target::RatioAtLeast(r) => (ratio, ratio >= r),
            Target::AtMost(v) => (value, value <= v),
            Target::AtLeast(v) => (value, value >= v),
        };
        (!x.is_nan()).then_some(ok)
    }
}

/// One figure of one run, with its baseline from the same run.
#[derive(Clone, Debug)]
pub struct Figure {
    pub scenario: String,
    pub metric: String,
    pub value: f64,
    pub baseline: Option<(String, f64)>,
    pub target: Option<Target>,
}

impl Figure {
    pub fn new(scenario: &str, metric: &str, value: f64) -> Figure {
        Figure { scenario: scenario.into(), metric: metric.into(), value, baseline: None, target: None }
    }

    pub fn vs(mut self, label: &str, baseline: f64) -> Figure {
        self.baseline = Some((label.into(), baseline));
        self
    }

    pub fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    fn ratio(&self) -> f64 {
        match &self.baseline {
            Some((_, b)) if *b != 0.0 => self.value / b,
            _ => f64::NAN,
        }
    }
}

/// A row of the final table: medians over runs.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: f64,
    pub baseline_label: String,
    pub baseline: f64,
    pub ratio: f64,
    pub target: Option<Target>,
    pub holds: Option<bool>,
}

/// Medians of each (scenario, metric) over the runs, in first-seen order.
pub fn summarize(runs: &[Vec<Figure>]) -> Vec<Row> {
    let mut order = Vec::new();
    let mut groups: BTreeMap<(String, String), Vec<&Figure>> = BTreeMap::new();
    for figure in runs.iter().flatten() {
        let key = (figure.scenario.clone(), figure.metric.clone());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(figure);
    }
    order
        .into_iter()
        .map(|key| {
            let figs = &groups[&key];
            let value = median(&figs.iter().map(|f| f.value).collect::<Vec<_>>());
            let baselines: Vec<f64> = figs.iter().filter_map(|f| f.baseline.as_ref().map(|b| b.1)).collect();
            let ratio = median(&figs.iter().map(|f| f.ratio()).collect::<Vec<_>>());
            let target = figs[0].target;
            Row {
                scenario: key.0,
                metric: key.1,
                value,
                baseline_label: figs[0].baseline.as_ref().map(|b| b.0.clone()).unwrap_or_default(),
                baseline: median(&baselines),
                ratio,
                target,
                holds: target.and_then(|t| t.holds(value, ratio)),
            }
        })
        .collect()
}

/// Numbers as people read them: thousands grouped, decimals by magnitude.
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The table as Markdown, preceded by `header` lines and followed by `notes`.
pub fn markdown(header: &[String], rows: &[Row], notes: &[String]) -> String {
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
    out.push_str("| Scenario | Metric | Switchyard | Baseline | Ratio | Target |\n");
    out.push_str("|---|---|--:|---|--:|---|\n");
    for r in rows {
        let baseline = if r.baseline_label.is_empty() {
            "—".to_string()
        } else {
            format!("{} ({})", fmt_num(r.baseline), r.baseline_label)
        };
        let ratio = if r.ratio.is_nan() { "—".to_string() } else { format!("{:.2}×", r.ratio) };
        let target = match (r.target, r.holds) {
            (Some(t), Some(true)) => format!("{} ✅", t.describe()),
            (Some(t), Some(false)) => format!("{} ❌", t.describe()),
            (Some(t), None) => t.describe(),
            (None, _) => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            fmt_num(r.value),
            baseline,
            ratio,
            target
        );
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios_come_from_each_run() {
        let run = |v: f64, b: f64| vec![Figure::new("s", "m", v).vs("direct", b).target(Target::RatioAtLeast(0.85))];
        let rows = summarize(&[run(90.0, 100.0), run(80.0, 100.0), run(50.0, 50.0)]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, 80.0);
        assert_eq!(rows[0].baseline, 100.0);
        assert_eq!(rows[0].ratio, 0.9);
        assert_eq!(rows[0].holds, Some(true));
    }

    #[test]
    fn numbers_are_grouped_and_rounded() {
        assert_eq!(fmt_num(12345.6), "12,346");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(0.456), "0.46");
        assert_eq!(fmt_num(0.0123), "0.012");
        assert_eq!(fmt_num(f64::NAN), "—");
    }
}
