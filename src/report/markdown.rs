//! The compliance report as Markdown: the [`Document`] with GitHub-flavoured
//! tables and a sparkline per role for the issuance chart.

use std::fmt::Write as _;

use super::chart::sparkline;
use super::compliance::ComplianceReport;
use super::document::{self, Block, Cell, Chart, Document, Line, Span, Table};

/// Text made safe for a table cell or a line: no line breaks, pipes
/// escaped, no control characters.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => o.push_str("\\|"),
            '\n' | '\r' | '\t' => o.push(' '),
            c if c.is_control() => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

fn line(l: &Line) -> String {
    l.iter()
        .map(|s| match s {
            Span::Text(t) | Span::Label(t) => esc(t),
            Span::Code(t) => format!("`{}`", esc(t)),
            Span::Strong(t) => format!("**{}**", esc(t)),
        })
        .collect()
}

fn cell(c: &Cell) -> String {
    let mut o = c.lines.iter().map(line).collect::<Vec<_>>().join("<br>");
    for a in &c.attention {
        let _ = write!(o, "<br>**attention:** {}", esc(a));
    }
    o
}

fn table(o: &mut String, t: &Table) {
    let head: Vec<String> = t.columns.iter().map(|c| esc(&c.title)).collect();
    let rule: Vec<&str> = t
        .columns
        .iter()
        .map(|c| if c.numeric { "---:" } else { "---" })
        .collect();
    let _ = writeln!(o, "| {} |", head.join(" | "));
    let _ = writeln!(o, "|{}|", rule.join("|"));
    for row in &t.rows {
        let cells: Vec<String> = row.iter().map(cell).collect();
        let _ = writeln!(o, "| {} |", cells.join(" | "));
    }
}

fn chart(o: &mut String, c: &Chart) {
    let ch = &c.chart;
    let (unit, busiest) = if ch.days_per_bar == 1 {
        ("day".to_string(), "day")
    } else {
        (format!("{} days", ch.days_per_bar), "period")
    };
    let _ = writeln!(
        o,
        "One mark per {unit} from {} to {} (`·` none; heights are relative to each role's busiest {busiest}).",
        ch.label(0),
        c.to
    );
    if ch.series.is_empty() {
        return;
    }
    o.push('\n');
    let _ = writeln!(o, "| Role | Certificates | Busiest | Over time |");
    let _ = writeln!(o, "|---|---:|---:|---|");
    for (role, v) in &ch.series {
        let _ = writeln!(
            o,
            "| {} | {} | {} | `{}` |",
            esc(role),
            v.iter().sum::<u64>(),
            v.iter().max().copied().unwrap_or(0),
            sparkline(v)
        );
    }
}

/// Renders a document as Markdown: blocks separated by blank lines.
pub fn render_document(d: &Document) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}", esc(&d.title));
    for b in &d.blocks {
        o.push('\n');
        match b {
            Block::Heading(level, t) => {
                let _ = writeln!(o, "{} {}", "#".repeat(usize::from(*level)), esc(t));
            }
            Block::Paragraph(l) => {
                let _ = writeln!(o, "{}", line(l));
            }
            Block::Note(t) => {
                let _ = writeln!(o, "> {}", esc(t));
            }
            Block::Table(t) => table(&mut o, t),
            Block::List(items) => {
                for l in items {
                    let _ = writeln!(o, "- {}", line(l));
                }
            }
            Block::Chart(c) => chart(&mut o, c),
        }
    }
    o
}

/// Renders the report as Markdown (GitHub-flavoured tables).
pub fn render(r: &ComplianceReport) -> String {
    render_document(&document::compliance(r))
}
