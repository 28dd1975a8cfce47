//! The compliance report as one self-contained HTML page (inline CSS and
//! SVG, no scripts, nothing fetched): the [`Document`] with an SVG bar chart
//! for issuance.

use std::fmt::Write as _;

use super::chart::svg;
use super::compliance::ComplianceReport;
use super::document::{self, Block, Cell, Chart, Document, Line, Span, Table};
use super::html_escape as h;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}\
table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top;font-size:.9em}\
th{background:#f3f3f3}.pass{background:#e3f4e1;color:#1d5e1a;font-weight:bold}.attention{background:#fdecd2;color:#8a4b00;font-weight:bold}\
.note{border-left:4px solid #888;padding:.3em .8em;background:#f7f7f7}ul.att{margin:.2em 0;padding-left:1.2em;color:#8a4b00}code{font-size:.95em}";

fn line(l: &Line) -> String {
    l.iter()
        .map(|s| match s {
            Span::Text(t) => h(t),
            Span::Code(t) => format!("<code>{}</code>", h(t)),
            Span::Strong(t) | Span::Label(t) => format!("<b>{}</b>", h(t)),
        })
        .collect()
}

fn cell(c: &Cell) -> String {
    let mut o = c.lines.iter().map(line).collect::<Vec<_>>().join("<br>");
    if !c.attention.is_empty() {
        o.push_str("<ul class=\"att\">");
        for a in &c.attention {
            let _ = write!(o, "<li>{}</li>", h(a));
        }
        o.push_str("</ul>");
    }
    match c.status {
        Some(st) => format!("<td class=\"{}\">{o}</td>", st.as_str()),
        None => format!("<td>{o}</td>"),
    }
}

fn table(o: &mut String, t: &Table) {
    let _ = write!(o, "<table id=\"{}\"><thead><tr>", h(t.id));
    for c in &t.columns {
        let _ = write!(o, "<th>{}</th>", h(&c.title));
    }
    let _ = writeln!(o, "</tr></thead><tbody>");
    for row in &t.rows {
        let cells: String = row.iter().map(cell).collect();
        let _ = writeln!(o, "<tr>{cells}</tr>");
    }
    let _ = writeln!(o, "</tbody></table>");
}

fn chart(o: &mut String, c: &Chart) {
    let ch = &c.chart;
    let unit = if ch.days_per_bar == 1 {
        "day".to_string()
    } else {
        format!("{} days", ch.days_per_bar)
    };
    let _ = writeln!(
        o,
        "<p>One bar per {unit} from {} to {}.</p>",
        h(&ch.label(0)),
        h(&c.to)
    );
    if !ch.series.is_empty() {
        let _ = writeln!(o, "<figure>{}</figure>", svg(ch));
    }
}

/// Renders a document as an HTML page.
pub fn render_document(d: &Document) -> String {
    let mut o = String::new();
    let title = h(&d.title);
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body>"
    );
    let _ = writeln!(o, "<h1>{title}</h1>");
    for b in &d.blocks {
        match b {
            Block::Heading(level, t) => {
                let _ = writeln!(o, "<h{level}>{}</h{level}>", h(t));
            }
            Block::Paragraph(l) => {
                let _ = writeln!(o, "<p>{}</p>", line(l));
            }
            Block::Note(t) => {
                let _ = writeln!(o, "<p class=\"note\">{}</p>", h(t));
            }
            Block::Table(t) => table(&mut o, t),
            Block::List(items) => {
                let _ = writeln!(o, "<ul>");
                for l in items {
                    let _ = writeln!(o, "<li>{}</li>", line(l));
                }
                let _ = writeln!(o, "</ul>");
            }
            Block::Chart(c) => chart(&mut o, c),
        }
    }
    o.push_str("</body></html>\n");
    o
}

/// Renders the report as an HTML page.
pub fn render(r: &ComplianceReport) -> String {
    render_document(&document::compliance(r))
}
