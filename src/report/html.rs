//! The compliance report as one self-contained HTML page (inline CSS and
//! SVG, no scripts, nothing fetched).

use std::fmt::Write as _;

use super::chart::{svg, IssuanceChart};
use super::compliance::{ChainStatus, ComplianceReport, ControlStatus, DISCLAIMER};
use super::html_escape as h;
use super::review::{human_secs, short_digest};
use crate::time::utc_minute;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}\
table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top;font-size:.9em}\
th{background:#f3f3f3}.pass{background:#e3f4e1;color:#1d5e1a;font-weight:bold}.attention{background:#fdecd2;color:#8a4b00;font-weight:bold}\
.note{border-left:4px solid #888;padding:.3em .8em;background:#f7f7f7}ul.att{margin:.2em 0;padding-left:1.2em;color:#8a4b00}code{font-size:.95em}";

fn opt(t: Option<u64>) -> String {
    t.map(utc_minute).unwrap_or_else(|| "-".into())
}

/// Renders the report as an HTML page.
pub fn render(r: &ComplianceReport) -> String {
    let e = &r.evidence;
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mayfly compliance evidence report</title><style>{STYLE}</style></head><body>\n"
    );
    let _ = writeln!(o, "<h1>mayfly compliance evidence report</h1>");
    let _ = writeln!(
        o,
        "<p>Generated {} for the CA with data directory <code>{}</code> and policy directory <code>{}</code> (policy digest <code>{}</code>). Window: the last {} days, since {}.</p>",
        utc_minute(e.generated_at),
        h(&e.data_dir.display().to_string()),
        h(&e.policy_dir.display().to_string()),
        h(short_digest(&e.policy_digest)),
        e.days,
        utc_minute(e.window_start)
    );
    let _ = writeln!(o, "<p class=\"note\">{}</p>", h(DISCLAIMER));
    let pass = r
        .controls
        .iter()
        .filter(|c| c.status == ControlStatus::Pass)
        .count();
    let _ = writeln!(
        o,
        "<h2>Summary</h2><p>{pass} of {} controls: the evidence supports the control and shows nothing to act on (pass); the others show something to act on (attention).</p>",
        r.controls.len()
    );
    let _ = writeln!(
        o,
        "<table id=\"controls\"><thead><tr><th>Framework</th><th>Control</th><th>Evidence from this CA</th><th>Status</th></tr></thead><tbody>"
    );
    for c in &r.controls {
        let mut ev = c
            .evidence
            .iter()
            .map(|s| h(s))
            .collect::<Vec<_>>()
            .join("<br>");
        if !c.attention.is_empty() {
            ev.push_str("<ul class=\"att\">");
            for a in &c.attention {
                let _ = write!(ev, "<li>{}</li>", h(a));
            }
            ev.push_str("</ul>");
        }
        let st = c.status.as_str();
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td><b>{}</b> {}</td><td>{ev}</td><td class=\"{st}\">{st}</td></tr>",
            h(c.framework),
            h(c.id),
            h(c.title)
        );
    }
    let _ = writeln!(o, "</tbody></table>");

    let chart = IssuanceChart::new(&e.daily, e.window_start / 86_400, e.generated_at / 86_400);
    let _ = writeln!(
        o,
        "<h2>Certificates issued per role</h2><p>Per {} from {} on.</p>",
        if chart.days_per_bar == 1 {
            "day".to_string()
        } else {
            format!("{} days", chart.days_per_bar)
        },
        chart.label(0)
    );
    if chart.series.is_empty() {
        let _ = writeln!(o, "<p>No certificate was issued in the window.</p>");
    } else {
        let _ = writeln!(o, "<figure>{}</figure>", svg(&chart));
    }

    let _ = writeln!(o, "<h2>Evidence</h2><h3>Roles (policy in force)</h3>");
    let _ = writeln!(
        o,
        "<table id=\"roles\"><thead><tr><th>Role</th><th>Owner</th><th>Type</th><th>Principals</th><th>Max TTL</th><th>Default TTL</th><th>Extensions</th><th>Restrictions</th><th>Certificates ({}d / all)</th><th>Usage</th></tr></thead><tbody>",
        e.days
    );
    for role in &e.roles {
        let rv = e.review.roles.iter().find(|x| x.role == role.name);
        let mut restrict = Vec::new();
        if role.source_address {
            restrict.push("source-address");
        }
        if role.force_command {
            restrict.push("force-command");
        }
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            h(&role.name),
            h(&role.owner),
            h(&role.cert_type),
            h(&role.principals.join(", ")),
            human_secs(role.max_ttl),
            human_secs(role.default_ttl),
            h(&role.extensions.join(", ")),
            restrict.join(", "),
            rv.map(|x| x.issued_in_window).unwrap_or(0),
            rv.map(|x| x.issued_all_time).unwrap_or(0),
            rv.map(|x| x.usage.as_str()).unwrap_or("-")
        );
    }
    let _ = writeln!(o, "</tbody></table>");

    let inv = &e.inventory;
    let _ = writeln!(
        o,
        "<h3>Identities</h3><p>{} identities: {} active, {} disabled, {} stale (no certificate in {} days).</p>",
        inv.identities.len(),
        inv.counts.active,
        inv.counts.disabled,
        inv.counts.stale,
        inv.stale_days
    );
    if !inv.identities.is_empty() {
        let _ = writeln!(
            o,
            "<table id=\"identities\"><thead><tr><th>Status</th><th>Issuer</th><th>Subject</th><th>Roles</th><th>Owners</th><th>First seen</th><th>Last certificate</th><th>Certificates</th><th>Refused</th><th>Last refusal</th></tr></thead><tbody>"
        );
        for id in &inv.identities {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                id.status.as_str(),
                h(&id.issuer),
                h(&id.subject),
                h(&id.roles.iter().map(|r| r.role.as_str()).collect::<Vec<_>>().join(", ")),
                h(&id.owners.join(", ")),
                opt(id.first_seen),
                opt(id.last_issued),
                id.certs_issued,
                id.requests_denied,
                id.last_denial
                    .as_ref()
                    .map(|d| format!("{} {}", utc_minute(d.time), h(&d.reason_code)))
                    .unwrap_or_else(|| "-".into())
            );
        }
        let _ = writeln!(o, "</tbody></table>");
    }
    for d in &inv.disabled_roles {
        let _ = writeln!(
            o,
            "<p>Role <code>{}</code> is disabled since {} by {}: {}</p>",
            h(d.role.as_deref().unwrap_or("")),
            utc_minute(d.since),
            h(&d.actor),
            h(&d.reason)
        );
    }

    let _ = writeln!(o, "<h3>Access review</h3>");
    if e.review.findings.is_empty() {
        let _ = writeln!(o, "<p>No findings.</p>");
    } else {
        let _ = writeln!(
            o,
            "<table id=\"review\"><thead><tr><th>Finding</th><th>Role</th><th>Identity</th><th>Owner</th><th>Detail</th></tr></thead><tbody>"
        );
        for f in &e.review.findings {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f.kind.as_str(),
                h(f.role.as_deref().unwrap_or("-")),
                h(f.identity.as_deref().unwrap_or("-")),
                h(f.owner.as_deref().unwrap_or("-")),
                h(&f.detail)
            );
        }
        let _ = writeln!(o, "</tbody></table>");
    }

    let _ = writeln!(o, "<h3>Refusals by reason (last {} days)</h3>", e.days);
    if e.denials.is_empty() {
        let _ = writeln!(o, "<p>None.</p>");
    } else {
        let _ = writeln!(
            o,
            "<table id=\"denials\"><thead><tr><th>Reason</th><th>Count</th></tr></thead><tbody>"
        );
        for (code, n) in &e.denials {
            let _ = writeln!(o, "<tr><td>{}</td><td>{n}</td></tr>", h(code));
        }
        let _ = writeln!(o, "</tbody></table>");
    }

    let chain = match &e.chain {
        ChainStatus::NotChecked { reason } => reason.clone(),
        ChainStatus::Verified {
            records,
            checkpoints,
            signatures_verified,
        } => format!(
            "verified over {records} records; {checkpoints} signed checkpoint(s), {signatures_verified} signature(s) verified"
        ),
        ChainStatus::Broken { detail } => format!("BROKEN: {detail}"),
    };
    let _ = writeln!(o, "<h3>Audit log</h3><ul>");
    let _ = writeln!(
        o,
        "<li>Records: {} (highest sequence {}), oldest {}, newest {}</li>",
        e.audit.records,
        e.audit.max_seq,
        opt(e.audit.first_ms.map(|t| t / 1000)),
        opt(e.audit.last_ms.map(|t| t / 1000))
    );
    let _ = writeln!(
        o,
        "<li>In the window: {}</li>",
        if e.events.is_empty() {
            "none".to_string()
        } else {
            e.events
                .iter()
                .map(|(ev, n)| format!("{} {n}", h(ev)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        o,
        "<li>Issuance records missing a required field: {}</li><li>Hash chain: {}</li></ul>",
        e.incomplete_issuance_records,
        h(&chain)
    );
    let _ = writeln!(
        o,
        "<h3>Revocations, deactivations, keys and issuers</h3><ul>"
    );
    let _ = writeln!(
        o,
        "<li>Revocations in the window: {}; live in the KRL: {}</li><li>Deactivations in force: {}</li>",
        e.revocations_in_window,
        e.revocations_live,
        e.disabled_entries()
    );
    for k in &e.ca_keys {
        let _ = writeln!(
            o,
            "<li>{} CA key: {}{}</li>",
            h(&k.ca),
            h(&k.protection),
            k.age_days
                .map(|a| format!(", {a} days old"))
                .unwrap_or_default()
        );
    }
    for i in &e.issuers {
        let _ = writeln!(
            o,
            "<li>Issuer <code>{}</code>: {} (audience {}, single-use tokens {}{})</li>",
            h(&i.name),
            h(&i.url),
            h(&i.audience),
            if i.replay_protection { "on" } else { "off" },
            if i.jwks_file {
                ", static JWKS file"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        o,
        "<li><code>[[admin]]</code> rules: {}</li></ul>\n</body></html>",
        e.admin_rules
    );
    o
}
