//! The compliance report as Markdown: a summary table, a sparkline chart of
//! issuance per role, then the evidence in detail.

use std::fmt::Write as _;

use super::chart::{sparkline, IssuanceChart};
use super::compliance::{ChainStatus, ComplianceReport, DISCLAIMER};
use super::review::{human_secs, short_digest};
use crate::time::utc_minute;

/// A table cell: no line breaks, pipes escaped, no control characters.
fn cell(s: &str) -> String {
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

fn opt(t: Option<u64>) -> String {
    t.map(utc_minute).unwrap_or_else(|| "-".into())
}

/// Renders the report as Markdown (GitHub-flavoured tables).
pub fn render(r: &ComplianceReport) -> String {
    let e = &r.evidence;
    let mut o = String::new();
    let _ = writeln!(o, "# mayfly compliance evidence report\n");
    let _ = writeln!(
        o,
        "Generated {} for the CA with data directory `{}` and policy directory `{}` (policy digest `{}`). Window: the last {} days, since {}.\n",
        utc_minute(e.generated_at),
        cell(&e.data_dir.display().to_string()),
        cell(&e.policy_dir.display().to_string()),
        short_digest(&e.policy_digest),
        e.days,
        utc_minute(e.window_start)
    );
    let _ = writeln!(o, "> {DISCLAIMER}\n");
    let pass = r
        .controls
        .iter()
        .filter(|c| c.status == super::compliance::ControlStatus::Pass)
        .count();
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(
        o,
        "{pass} of {} controls: the evidence supports the control and shows nothing to act on (**pass**); the others show something to act on (**attention**).\n",
        r.controls.len()
    );
    let _ = writeln!(
        o,
        "| Framework | Control | Evidence from this CA | Status |"
    );
    let _ = writeln!(o, "|---|---|---|---|");
    for c in &r.controls {
        let mut ev = c
            .evidence
            .iter()
            .map(|s| cell(s))
            .collect::<Vec<_>>()
            .join("<br>");
        for a in &c.attention {
            let _ = write!(ev, "<br>**attention:** {}", cell(a));
        }
        let _ = writeln!(
            o,
            "| {} | {} {} | {} | {} |",
            c.framework,
            c.id,
            c.title,
            ev,
            c.status.as_str()
        );
    }

    let today = e.generated_at / 86_400;
    let chart = IssuanceChart::new(&e.daily, e.window_start / 86_400, today);
    let _ = writeln!(o, "\n## Certificates issued per role\n");
    let _ = writeln!(
        o,
        "One mark per {} from {} to {} (`·` none; heights are relative to each role's busiest {}).\n",
        if chart.days_per_bar == 1 { "day".to_string() } else { format!("{} days", chart.days_per_bar) },
        chart.label(0),
        utc_minute(e.generated_at).get(..10).unwrap_or(""),
        if chart.days_per_bar == 1 { "day" } else { "period" }
    );
    if chart.series.is_empty() {
        let _ = writeln!(o, "No certificate was issued in the window.");
    } else {
        let _ = writeln!(o, "| Role | Certificates | Busiest | Over time |");
        let _ = writeln!(o, "|---|---:|---:|---|");
        for (role, v) in &chart.series {
            let _ = writeln!(
                o,
                "| {} | {} | {} | `{}` |",
                cell(role),
                v.iter().sum::<u64>(),
                v.iter().max().copied().unwrap_or(0),
                sparkline(v)
            );
        }
    }

    let _ = writeln!(o, "\n## Evidence\n\n### Roles (policy in force)\n");
    let _ = writeln!(
        o,
        "| Role | Owner | Type | Principals | Max TTL | Default TTL | Extensions | Restrictions | Certificates ({}d / all) | Usage |",
        e.days
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
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
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            cell(&role.name),
            cell(&role.owner),
            role.cert_type,
            cell(&role.principals.join(", ")),
            human_secs(role.max_ttl),
            human_secs(role.default_ttl),
            if role.extensions.is_empty() {
                "-".to_string()
            } else {
                role.extensions.join(", ")
            },
            if restrict.is_empty() {
                "-".to_string()
            } else {
                restrict.join(", ")
            },
            rv.map(|x| x.issued_in_window).unwrap_or(0),
            rv.map(|x| x.issued_all_time).unwrap_or(0),
            rv.map(|x| x.usage.as_str()).unwrap_or("-")
        );
    }

    let inv = &e.inventory;
    let _ = writeln!(
        o,
        "\n### Identities\n\n{} identities: {} active, {} disabled, {} stale (no certificate in {} days).\n",
        inv.identities.len(),
        inv.counts.active,
        inv.counts.disabled,
        inv.counts.stale,
        inv.stale_days
    );
    if !inv.identities.is_empty() {
        let _ = writeln!(o, "| Status | Issuer | Subject | Roles | Owners | First seen | Last certificate | Certificates | Refused | Last refusal |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---:|---:|---|");
        for id in &inv.identities {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                id.status.as_str(),
                cell(&id.issuer),
                cell(&id.subject),
                cell(
                    &id.roles
                        .iter()
                        .map(|r| r.role.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                cell(&id.owners.join(", ")),
                opt(id.first_seen),
                opt(id.last_issued),
                id.certs_issued,
                id.requests_denied,
                id.last_denial
                    .as_ref()
                    .map(|d| format!("{} {}", utc_minute(d.time), cell(&d.reason_code)))
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    for d in &inv.disabled_roles {
        let _ = writeln!(
            o,
            "\nRole `{}` is disabled since {} by {}: {}",
            cell(d.role.as_deref().unwrap_or("")),
            utc_minute(d.since),
            cell(&d.actor),
            cell(&d.reason)
        );
    }

    let _ = writeln!(o, "\n### Access review\n");
    if e.review.findings.is_empty() {
        let _ = writeln!(o, "No findings.");
    } else {
        let _ = writeln!(o, "| Finding | Role | Identity | Owner | Detail |");
        let _ = writeln!(o, "|---|---|---|---|---|");
        for f in &e.review.findings {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                f.kind.as_str(),
                cell(f.role.as_deref().unwrap_or("-")),
                cell(f.identity.as_deref().unwrap_or("-")),
                cell(f.owner.as_deref().unwrap_or("-")),
                cell(&f.detail)
            );
        }
    }

    let _ = writeln!(o, "\n### Refusals by reason (last {} days)\n", e.days);
    if e.denials.is_empty() {
        let _ = writeln!(o, "None.");
    } else {
        let _ = writeln!(o, "| Reason | Count |\n|---|---:|");
        for (code, n) in &e.denials {
            let _ = writeln!(o, "| {} | {n} |", cell(code));
        }
    }

    let _ = writeln!(o, "\n### Audit log\n");
    let _ = writeln!(
        o,
        "- Records: {} (highest sequence {}), oldest {}, newest {}",
        e.audit.records,
        e.audit.max_seq,
        opt(e.audit.first_ms.map(|t| t / 1000)),
        opt(e.audit.last_ms.map(|t| t / 1000))
    );
    let _ = writeln!(
        o,
        "- In the window: {}",
        if e.events.is_empty() {
            "none".to_string()
        } else {
            e.events
                .iter()
                .map(|(ev, n)| format!("{} {n}", cell(ev)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        o,
        "- Issuance records missing a required field: {}",
        e.incomplete_issuance_records
    );
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
    let _ = writeln!(o, "- Hash chain: {}", cell(&chain));

    let _ = writeln!(o, "\n### Revocations, deactivations, keys and issuers\n");
    let _ = writeln!(
        o,
        "- Revocations in the window: {}; live in the KRL: {}",
        e.revocations_in_window, e.revocations_live
    );
    let _ = writeln!(o, "- Deactivations in force: {}", e.disabled_entries());
    for k in &e.ca_keys {
        let _ = writeln!(
            o,
            "- {} CA key: {}{}",
            k.ca,
            k.protection,
            k.age_days
                .map(|a| format!(", {a} days old"))
                .unwrap_or_default()
        );
    }
    for i in &e.issuers {
        let _ = writeln!(
            o,
            "- Issuer `{}`: {} (audience {}, single-use tokens {}{})",
            cell(&i.name),
            cell(&i.url),
            cell(&i.audience),
            if i.replay_protection { "on" } else { "off" },
            if i.jwks_file {
                ", static JWKS file"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(o, "- `[[admin]]` rules: {}", e.admin_rules);
    o
}
