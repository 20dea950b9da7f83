//! The bench's output: named figures with their targets, printed as one
//! table and written as JSON.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// What a figure must reach. `None`: reported for information only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    Equal(f64),
    None,
}

impl Target {
    fn text(&self, unit: &str) -> String {
        let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
        match self {
            Target::AtLeast(v) => format!("≥ {}{unit}", num(*v)),
            Target::AtMost(v) => format!("≤ {}{unit}", num(*v)),
            Target::Equal(v) => format!("= {}{unit}", num(*v)),
            Target::None => String::new(),
        }
    }

    fn met(&self, value: f64) -> Option<bool> {
        match *self {
            Target::AtLeast(t) => Some(value >= t),
            Target::AtMost(t) => Some(value <= t),
            Target::Equal(t) => Some(value == t),
            Target::None => None,
        }
    }

    /// Judged on an interval instead of a point: PASS when all of it meets
    /// the target, MISS when none of it does, UNSURE in between.
    fn judge_interval(&self, lo: f64, hi: f64) -> Verdict {
        match (self.met(lo), self.met(hi)) {
            (Some(true), Some(true)) => Verdict::Pass,
            (Some(false), Some(false)) => Verdict::Miss,
            (Some(_), Some(_)) => Verdict::Unsure,
            _ => Verdict::Info,
        }
    }
}

/// What a figure says about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// The figure's 95% interval holds values on both sides of the target:
    /// this run cannot tell (the point value alone would say PASS or MISS
    /// by the luck of the host's noise).
    Unsure,
    /// The measurement failed.
    Error,
    /// No target.
    Info,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Unsure => "UNSURE",
            Verdict::Error => "ERROR",
            Verdict::Info => "",
        }
    }
}

/// One measured figure. `value: None` means the measurement itself failed
/// (`note` says why); a failed measurement with a target is a MISS.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Stable key for the JSON (`section.name`).
    pub id: String,
    /// Which part of the suite (1–6) it belongs to.
    pub section: u8,
    pub label: String,
    pub value: Option<f64>,
    pub unit: String,
    pub target: Target,
    /// 95% confidence interval of the value, when it is a median of
    /// independent pairs (see `median_interval95`): the verdict is then
    /// taken on the interval, not the point.
    pub interval: Option<(f64, f64)>,
    pub note: String,
}

impl Figure {
    pub fn new(section: u8, id: &str, label: &str, value: f64, unit: &str, target: Target) -> Self {
        Figure {
            id: id.to_owned(),
            section,
            label: label.to_owned(),
            value: Some(value),
            unit: unit.to_owned(),
            target,
            interval: None,
            note: String::new(),
        }
    }

    /// A measurement that could not be taken.
    pub fn failed(section: u8, id: &str, label: &str, unit: &str, target: Target, why: &str) -> Self {
        Figure { value: None, note: why.to_owned(), ..Self::new(section, id, label, 0.0, unit, target) }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// The value's 95% interval (`None`: too few pairs for one); shown
    /// in the value column and judged instead of the point.
    pub fn interval(mut self, interval: Option<(f64, f64)>) -> Self {
        self.interval = interval;
        self
    }

    pub fn verdict(&self) -> Verdict {
        match (self.value, self.target, self.interval) {
            (_, Target::None, _) => Verdict::Info,
            (None, _, _) => Verdict::Error,
            (Some(_), t, Some((lo, hi))) => t.judge_interval(lo, hi),
            (Some(v), t, None) => match t.met(v) {
                Some(true) => Verdict::Pass,
                Some(false) => Verdict::Miss,
                None => Verdict::Info,
            },
        }
    }

    fn value_text(&self) -> String {
        let unit = if self.unit.is_empty() { String::new() } else { format!(" {}", self.unit) };
        match (self.value, self.interval) {
            (Some(v), Some((lo, hi))) => format!("{} ({}–{}){unit}", num(v), num(lo), num(hi)),
            (Some(v), None) => format!("{}{unit}", num(v)),
            (None, _) => "—".to_owned(),
        }
    }
}

/// A number with as many decimals as its size deserves.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if (a == a.trunc() && a < 1e15) || a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The whole table as text.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 5]> = figures
        .iter()
        .map(|f| {
            [
                format!("{}. {}", f.section, f.label),
                f.value_text(),
                f.target.text(&f.unit),
                f.verdict().word().to_owned(),
                f.note.clone(),
            ]
        })
        .collect();
    let head = ["figure", "value", "target", "", "note"];
    let mut width = head.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String; 5]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            let pad = w - cell.chars().count();
            // Numbers right-aligned, text left-aligned; the note is last and unpadded.
            match i {
                1 => {
                    let _ = write!(l, "{}{cell}  ", " ".repeat(pad));
                }
                4 => l.push_str(cell),
                _ => {
                    let _ = write!(l, "{cell}{}  ", " ".repeat(pad));
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    let count = |v: &[Verdict]| figures.iter().filter(|f| v.contains(&f.verdict())).count();
    let _ = writeln!(
        out,
        "{} PASS, {} MISS/ERROR, {} UNSURE, {} informational (a value in brackets is its 95% interval; UNSURE: the interval spans the target)",
        count(&[Verdict::Pass]),
        count(&[Verdict::Miss, Verdict::Error]),
        count(&[Verdict::Unsure]),
        count(&[Verdict::Info])
    );
    out
}

/// The figures as one JSON document (`meta` is merged in as is).
pub fn to_json(figures: &[Figure], meta: Value) -> Value {
    let list: Vec<Value> = figures
        .iter()
        .map(|f| {
            let (kind, target) = match f.target {
                Target::AtLeast(v) => ("at_least", Some(v)),
                Target::AtMost(v) => ("at_most", Some(v)),
                Target::Equal(v) => ("equal", Some(v)),
                Target::None => ("none", None),
            };
            json!({
                "id": f.id,
                "section": f.section,
                "label": f.label,
                "value": f.value,
                "unit": f.unit,
                "target": target.map(|v| json!({ "kind": kind, "value": v })),
                "interval95": f.interval.map(|(lo, hi)| json!([lo, hi])),
                "verdict": match f.verdict() {
                    Verdict::Pass => "pass",
                    Verdict::Miss => "miss",
                    Verdict::Unsure => "unsure",
                    Verdict::Error => "error",
                    Verdict::Info => "info",
                },
                "note": f.note,
            })
        })
        .collect();
    json!({ "meta": meta, "figures": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_targets_and_failures_miss() {
        assert_eq!(Figure::new(1, "a", "a", 0.99, "", Target::AtLeast(0.98)).verdict(), Verdict::Pass);
        assert_eq!(Figure::new(1, "a", "a", 41.0, "ns", Target::AtMost(40.0)).verdict(), Verdict::Miss);
        assert_eq!(Figure::new(3, "a", "a", 0.0, "", Target::Equal(0.0)).verdict(), Verdict::Pass);
        assert_eq!(Figure::new(1, "a", "a", 5.0, "", Target::None).verdict(), Verdict::Info);
        assert_eq!(Figure::failed(1, "a", "a", "", Target::AtMost(1.0), "x").verdict(), Verdict::Error);
    }

    #[test]
    fn an_interval_is_judged_whole() {
        let ratio = |v: f64, i: (f64, f64)| Figure::new(1, "r", "r", v, "", Target::AtLeast(0.98)).interval(Some(i));
        assert_eq!(ratio(0.99, (0.981, 1.0)).verdict(), Verdict::Pass);
        // A median above the target with an interval reaching below it is
        // not a PASS, and one below it with the interval reaching above it
        // not a MISS.
        assert_eq!(ratio(0.99, (0.95, 1.02)).verdict(), Verdict::Unsure);
        assert_eq!(ratio(0.95, (0.92, 1.01)).verdict(), Verdict::Unsure);
        assert_eq!(ratio(0.95, (0.93, 0.97)).verdict(), Verdict::Miss);
        let at_most = Figure::new(4, "p", "p", 4.0, "ms", Target::AtMost(5.0)).interval(Some((3.0, 6.0)));
        assert_eq!(at_most.verdict(), Verdict::Unsure);
        // Too few pairs for an interval: the point decides.
        assert_eq!(ratio(0.99, (0.0, 0.0)).interval(None).verdict(), Verdict::Pass);
        let t = table(&[ratio(0.95, (0.92, 1.01))]);
        assert!(
            t.contains("0.950 (0.920–1.01)") && t.contains("UNSURE") && t.contains("0 PASS, 0 MISS/ERROR, 1 UNSURE"),
            "{t}"
        );
        let j = to_json(&[ratio(0.95, (0.92, 1.01))], json!({}));
        assert_eq!(j["figures"][0]["verdict"], "unsure");
        assert_eq!(j["figures"][0]["interval95"], json!([0.92, 1.01]));
    }

    #[test]
    fn table_lists_every_figure_with_its_verdict() {
        let f = vec![
            Figure::new(1, "t", "throughput ratio", 0.991, "", Target::AtLeast(0.98)),
            Figure::failed(2, "b", "egress", "ns", Target::AtMost(40.0), "bpftool missing"),
        ];
        let t = table(&f);
        assert!(t.contains("1. throughput ratio") && t.contains("0.991") && t.contains("PASS"), "{t}");
        assert!(t.contains("ERROR") && t.contains("bpftool missing") && t.contains("≤ 40 ns"), "{t}");
        let j = to_json(&f, json!({"quick": true}));
        assert_eq!(j["figures"][0]["verdict"], "pass");
        assert_eq!(j["figures"][1]["value"], Value::Null);
        assert_eq!(j["meta"]["quick"], true);
    }

    #[test]
    fn numbers_keep_sensible_precision() {
        assert_eq!(num(12345.678), "12346");
        assert_eq!(num(0.98765), "0.988");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(12.34), "12.3");
    }
}
