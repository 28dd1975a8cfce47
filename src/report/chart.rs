//! Issuance per role over time, bucketed for a small chart: a text
//! sparkline for Markdown and terminals, an inline SVG bar chart for HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::store::reports::DailyIssuance;
use crate::time::utc_day;

/// Most bars in a chart; longer windows are grouped into several days a bar.
pub const MAX_BARS: u64 = 60;

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

/// Certificates per role in consecutive buckets of `days_per_bar` days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceChart {
    /// First day of the first bucket (days since 1970-01-01).
    pub first_day: u64,
    /// Days per bucket.
    pub days_per_bar: u64,
    /// Number of buckets.
    pub bars: usize,
    /// Counts per role, one per bucket.
    pub series: BTreeMap<String, Vec<u64>>,
}

impl IssuanceChart {
    /// Buckets the daily counts between `first_day` and `last_day` (inclusive).
    pub fn new(daily: &[DailyIssuance], first_day: u64, last_day: u64) -> IssuanceChart {
        let last_day = last_day.max(first_day);
        let span = last_day - first_day + 1;
        let days_per_bar = span.div_ceil(MAX_BARS).max(1);
        let bars = span.div_ceil(days_per_bar) as usize;
        let mut series: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for d in daily {
            if d.day < first_day || d.day > last_day {
                continue;
            }
            let i = ((d.day - first_day) / days_per_bar) as usize;
            let v = series
                .entry(d.role.clone())
                .or_insert_with(|| vec![0; bars]);
            if let Some(slot) = v.get_mut(i) {
                *slot += d.count;
            }
        }
        IssuanceChart {
            first_day,
            days_per_bar,
            bars,
            series,
        }
    }

    /// The first day of bucket `i`, as `YYYY-MM-DD`.
    pub fn label(&self, i: usize) -> String {
        utc_day(self.first_day + i as u64 * self.days_per_bar)
    }

    /// Totals per bucket over all roles.
    pub fn totals(&self) -> Vec<u64> {
        let mut t = vec![0; self.bars];
        for v in self.series.values() {
            for (a, b) in t.iter_mut().zip(v) {
                *a += b;
            }
        }
        t
    }
}

/// A sparkline: `·` for zero, eight heights scaled to the largest value.
pub fn sparkline(values: &[u64]) -> String {
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            if v == 0 || max == 0 {
                '·'
            } else {
                let i = ((v * 8).div_ceil(max)).clamp(1, 8) - 1;
                SPARKS[i as usize]
            }
        })
        .collect()
}

fn esc(s: &str) -> String {
    super::html_escape(s)
}

/// An inline SVG stacked bar chart (one colour per role) with a legend and
/// a tooltip on every bar.
pub fn svg(chart: &IssuanceChart) -> String {
    let totals = chart.totals();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let bar_w: u64 = (640 / (chart.bars.max(1) as u64)).clamp(4, 40);
    let plot_h: u64 = 160;
    let left: u64 = 40;
    let top: u64 = 10;
    let width = left + bar_w * chart.bars as u64 + 10;
    let legend_rows = chart.series.len().div_ceil(4) as u64;
    let height = top + plot_h + 30 + legend_rows * 18;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Certificates issued per role" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let base = top + plot_h;
    let _ = write!(
        o,
        r##"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="#888"/><text x="{}" y="{}" text-anchor="end">{max}</text><text x="{}" y="{base}" text-anchor="end">0</text>"##,
        width - 10,
        left - 4,
        top + 10,
        left - 4
    );
    let colours: BTreeMap<&str, &str> = chart
        .series
        .keys()
        .enumerate()
        .map(|(i, r)| (r.as_str(), PALETTE[i % PALETTE.len()]))
        .collect();
    for i in 0..chart.bars {
        let x = left + i as u64 * bar_w;
        let mut y = base;
        for (role, v) in &chart.series {
            let n = v.get(i).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            let h = (n * plot_h).div_ceil(max).max(1);
            y = y.saturating_sub(h);
            let _ = write!(
                o,
                r#"<rect x="{x}" y="{y}" width="{}" height="{h}" fill="{}"><title>{} {}: {n}</title></rect>"#,
                bar_w.saturating_sub(1).max(1),
                colours.get(role.as_str()).copied().unwrap_or("#888"),
                esc(role),
                chart.label(i)
            );
        }
    }
    if chart.bars > 0 {
        let _ = write!(
            o,
            r#"<text x="{left}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"#,
            base + 14,
            chart.label(0),
            width - 10,
            base + 14,
            chart.label(chart.bars - 1)
        );
    }
    for (i, (role, colour)) in colours.iter().enumerate() {
        let lx = left + (i as u64 % 4) * 160;
        let ly = base + 30 + (i as u64 / 4) * 18;
        let _ = write!(
            o,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 9,
            lx + 14,
            esc(role)
        );
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_and_sparklines() {
        let daily = vec![
            DailyIssuance {
                role: "a".into(),
                day: 100,
                count: 4,
            },
            DailyIssuance {
                role: "a".into(),
                day: 102,
                count: 1,
            },
            DailyIssuance {
                role: "b".into(),
                day: 102,
                count: 2,
            },
        ];
        let c = IssuanceChart::new(&daily, 100, 102);
        assert_eq!((c.bars, c.days_per_bar), (3, 1));
        assert_eq!(c.series["a"], vec![4, 0, 1]);
        assert_eq!(c.totals(), vec![4, 0, 3]);
        assert_eq!(sparkline(&c.series["a"]), "█·▂");
        let long = IssuanceChart::new(&daily, 0, 364);
        assert_eq!((long.bars, long.days_per_bar), (53, 7));
        let s = svg(&c);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<rect").count(), 3 + 2);
    }
}
