//! The compliance report as a document: sections, tables and facts, built
//! once from a [`ComplianceReport`] and handed to the Markdown and HTML
//! renderers. Every sentence, number and table cell is decided here, so the
//! two formats cannot disagree about what the CA showed; the renderers only
//! decide markup (and how the issuance chart is drawn).

use super::chart::IssuanceChart;
use super::compliance::{
    ChainStatus, ComplianceReport, ControlStatus, RateFacts, RoleFacts, DISCLAIMER,
};
use super::review::{human_secs, short_digest};
use crate::time::{utc_day, utc_minute};

/// A run of text inside a paragraph, list item or table cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// Plain text.
    Text(String),
    /// A path, name or config key shown as code.
    Code(String),
    /// Emphasised text.
    Strong(String),
    /// An identifier (a control id) shown in bold in HTML and plain in
    /// Markdown, whose summary rows stay greppable as `| framework | id title |`.
    Label(String),
}

impl Span {
    /// The text, whatever its style.
    pub fn text(&self) -> &str {
        match self {
            Span::Text(s) | Span::Code(s) | Span::Strong(s) | Span::Label(s) => s,
        }
    }
}

/// Spans that make one line of text.
pub type Line = Vec<Span>;

fn text(s: impl Into<String>) -> Span {
    Span::Text(s.into())
}

fn code(s: impl Into<String>) -> Span {
    Span::Code(s.into())
}

/// One table cell: lines of text, then things to act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    /// The content, one entry per line.
    pub lines: Vec<Line>,
    /// Things to act on, shown after the lines and marked as such.
    pub attention: Vec<String>,
    /// A status (`pass`, `attention`) the cell shows and HTML colours.
    pub status: Option<ControlStatus>,
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell {
            lines: vec![vec![text(s)]],
            ..Cell::default()
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::from(s.to_string())
    }
}

/// A table column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Heading.
    pub title: String,
    /// Numbers: right-aligned where the format allows.
    pub numeric: bool,
}

/// A table; `id` names it in HTML (`<table id=...>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Stable id.
    pub id: &'static str,
    /// Columns.
    pub columns: Vec<Column>,
    /// Rows, one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

/// One block of the document, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// A section heading; level 2 or 3 (the title is level 1).
    Heading(u8, String),
    /// A paragraph.
    Paragraph(Line),
    /// A note set apart from the text (the disclaimer).
    Note(String),
    /// A table.
    Table(Table),
    /// A bulleted list.
    List(Vec<Line>),
    /// Certificates issued per role over the window.
    Chart(Chart),
}

/// The issuance chart and the dates it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// Counts per role and bucket.
    pub chart: IssuanceChart,
    /// Last day shown (`YYYY-MM-DD`), today.
    pub to: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Title (level 1).
    pub title: String,
    /// Everything below the title.
    pub blocks: Vec<Block>,
}

impl Document {
    /// Every piece of text the document carries, in order: what both
    /// renderings must show.
    pub fn facts(&self) -> Vec<String> {
        let mut out = vec![self.title.clone()];
        let line = |out: &mut Vec<String>, l: &Line| {
            out.extend(l.iter().map(|s| s.text().to_string()));
        };
        for b in &self.blocks {
            match b {
                Block::Heading(_, s) | Block::Note(s) => out.push(s.clone()),
                Block::Paragraph(l) => line(&mut out, l),
                Block::List(items) => items.iter().for_each(|l| line(&mut out, l)),
                Block::Table(t) => {
                    out.extend(t.columns.iter().map(|c| c.title.clone()));
                    for cell in t.rows.iter().flatten() {
                        cell.lines.iter().for_each(|l| line(&mut out, l));
                        out.extend(cell.attention.iter().cloned());
                        out.extend(cell.status.map(|s| s.as_str().to_string()));
                    }
                }
                Block::Chart(c) => {
                    out.push(c.chart.label(0));
                    out.extend(c.chart.series.keys().cloned());
                }
            }
        }
        out
    }
}

fn columns(titles: &[&str], numeric: &[usize]) -> Vec<Column> {
    titles
        .iter()
        .enumerate()
        .map(|(i, t)| Column {
            title: t.to_string(),
            numeric: numeric.contains(&i),
        })
        .collect()
}

fn opt_time(t: Option<u64>) -> String {
    t.map(utc_minute).unwrap_or_else(|| "-".into())
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The hash chain's state in words.
fn chain_text(chain: &ChainStatus) -> String {
    match chain {
        ChainStatus::NotChecked { reason } => reason.clone(),
        ChainStatus::Verified {
            records,
            checkpoints,
            signatures_verified,
        } => format!(
            "verified over {records} records; {checkpoints} signed checkpoint(s), {signatures_verified} signature(s) verified"
        ),
        ChainStatus::Broken { detail } => format!("BROKEN: {detail}"),
    }
}

/// `30 requests per minute`, `5 requests per 10m`.
pub fn rate_words(r: &RateFacts) -> String {
    let n = if r.count == 1 {
        "1 request".to_string()
    } else {
        format!("{} requests", r.count)
    };
    match r.per_secs {
        1 => format!("{n} per second"),
        60 => format!("{n} per minute"),
        3600 => format!("{n} per hour"),
        86_400 => format!("{n} per day"),
        s => format!("{n} per {}", human_secs(s)),
    }
}

/// A role's restrictions as an auditor reads them, one sentence each:
/// critical options, time windows, approval, limits and key types. Every
/// kind is always named, with "none" when the role has none, so a missing
/// line never reads as a restriction.
pub fn restrictions(r: &RoleFacts) -> Vec<String> {
    let mut out = Vec::new();
    if !r.source_addresses.is_empty() {
        out.push(format!(
            "source-address: logins only from {}",
            r.source_addresses.join(", ")
        ));
    }
    if let Some(c) = &r.source_address_claim {
        out.push(format!(
            "source-address: from the token's {c:?} claim (refused if it is not an address)"
        ));
    }
    if let Some(c) = &r.forced_command {
        out.push(format!("force-command: {c}"));
    }
    out.push(if r.windows.is_empty() {
        "time windows: none (usable at any time)".to_string()
    } else {
        format!(
            "time windows: usable only {}; certificates end when the window closes",
            r.windows.join("; ")
        )
    });
    out.push(match &r.approval {
        None => "approval: not required".to_string(),
        Some(a) => {
            let mut s = format!(
                "approval: {} distinct approval(s) by {} with a token from issuer {}, within {} of the request",
                a.required,
                a.approvers.join(" or "),
                a.issuer,
                human_secs(a.expires_secs)
            );
            for d in &a.distinct {
                let (req, appr) = d.split_once('=').unwrap_or((d.as_str(), d.as_str()));
                s.push_str(&format!(
                    "; the approver's {appr} must differ from the requester's {req}"
                ));
            }
            s
        }
    });
    let mut limits = Vec::new();
    if let Some(l) = &r.rate_limit {
        limits.push(format!("at most {} for the role", rate_words(l)));
    }
    if let Some(l) = &r.identity_rate_limit {
        limits.push(format!("at most {} per identity", rate_words(l)));
    }
    if let Some(n) = r.max_active_certs {
        limits.push(format!(
            "at most {n} valid certificate(s) at once per identity"
        ));
    }
    out.push(if limits.is_empty() {
        "limits: none (no rate limit, no cap on valid certificates)".to_string()
    } else {
        format!("limits: {}", limits.join("; "))
    });
    let all = crate::policy::limits::KeyType::ALL.len();
    let types = r.key_types.join(", ");
    let mut keys = if r.key_types.len() >= all {
        format!("key types: any mayfly accepts ({types})")
    } else {
        format!("key types: only {types}")
    };
    if let Some(b) = r.min_rsa_bits {
        keys.push_str(&format!("; RSA keys of at least {b} bits"));
    }
    out.push(keys);
    out
}

/// Builds the document of a compliance report.
pub fn compliance(r: &ComplianceReport) -> Document {
    let e = &r.evidence;
    let mut b = Vec::new();
    b.push(Block::Paragraph(vec![
        text(format!(
            "Generated {} for the CA with data directory ",
            utc_minute(e.generated_at)
        )),
        code(e.data_dir.display().to_string()),
        text(" and policy directory "),
        code(e.policy_dir.display().to_string()),
        text(" (policy digest "),
        code(short_digest(&e.policy_digest)),
        text(format!(
            "). Window: the last {} days, since {}.",
            e.days,
            utc_minute(e.window_start)
        )),
    ]));
    b.push(Block::Note(DISCLAIMER.to_string()));

    let pass = r
        .controls
        .iter()
        .filter(|c| c.status == ControlStatus::Pass)
        .count();
    b.push(Block::Heading(2, "Summary".into()));
    b.push(Block::Paragraph(vec![
        text(format!(
            "{pass} of {} controls: the evidence supports the control and shows nothing to act on (",
            r.controls.len()
        )),
        Span::Strong("pass".into()),
        text("); the others show something to act on ("),
        Span::Strong("attention".into()),
        text(")."),
    ]));
    b.push(Block::Table(Table {
        id: "controls",
        columns: columns(
            &["Framework", "Control", "Evidence from this CA", "Status"],
            &[],
        ),
        rows: r
            .controls
            .iter()
            .map(|c| {
                vec![
                    Cell::from(c.framework),
                    Cell {
                        lines: vec![vec![
                            Span::Label(c.id.to_string()),
                            text(format!(" {}", c.title)),
                        ]],
                        ..Cell::default()
                    },
                    Cell {
                        lines: c.evidence.iter().map(|s| vec![text(s.clone())]).collect(),
                        attention: c.attention.clone(),
                        status: None,
                    },
                    Cell {
                        lines: vec![vec![text(c.status.as_str())]],
                        status: Some(c.status),
                        ..Cell::default()
                    },
                ]
            })
            .collect(),
    }));

    b.push(Block::Heading(2, "Certificates issued per role".into()));
    let chart = IssuanceChart::new(&e.daily, e.window_start / 86_400, e.generated_at / 86_400);
    let empty = chart.series.is_empty();
    b.push(Block::Chart(Chart {
        chart,
        to: utc_day(e.generated_at / 86_400),
    }));
    if empty {
        b.push(Block::Paragraph(vec![text(
            "No certificate was issued in the window.",
        )]));
    }

    b.push(Block::Heading(2, "Evidence".into()));
    b.push(Block::Heading(3, "Roles (policy in force)".into()));
    let certs_title = format!("Certificates ({}d / all)", e.days);
    b.push(Block::Table(Table {
        id: "roles",
        columns: columns(
            &[
                "Role",
                "Owner",
                "Type",
                "Principals",
                "Max TTL",
                "Default TTL",
                "Extensions",
                "Restrictions",
                &certs_title,
                "Usage",
            ],
            &[],
        ),
        rows: e
            .roles
            .iter()
            .map(|role| {
                let rv = e.review.roles.iter().find(|x| x.role == role.name);
                vec![
                    Cell::from(role.name.as_str()),
                    Cell::from(role.owner.as_str()),
                    Cell::from(role.cert_type.as_str()),
                    Cell::from(role.principals.join(", ")),
                    Cell::from(human_secs(role.max_ttl)),
                    Cell::from(human_secs(role.default_ttl)),
                    Cell::from(dash_if_empty(role.extensions.join(", "))),
                    Cell {
                        lines: restrictions(role)
                            .into_iter()
                            .map(|l| vec![text(l)])
                            .collect(),
                        ..Cell::default()
                    },
                    Cell::from(format!(
                        "{} / {}",
                        rv.map(|x| x.issued_in_window).unwrap_or(0),
                        rv.map(|x| x.issued_all_time).unwrap_or(0)
                    )),
                    Cell::from(rv.map(|x| x.usage.as_str()).unwrap_or("-")),
                ]
            })
            .collect(),
    }));

    let inv = &e.inventory;
    b.push(Block::Heading(3, "Identities".into()));
    b.push(Block::Paragraph(vec![text(format!(
        "{} identities: {} active, {} disabled, {} stale (no certificate in {} days), {} only refused (never got a certificate).",
        inv.identities.len(),
        inv.counts.active,
        inv.counts.disabled,
        inv.counts.stale,
        inv.stale_days,
        inv.counts.only_refused
    ))]));
    if !inv.identities.is_empty() {
        b.push(Block::Table(Table {
            id: "identities",
            columns: columns(
                &[
                    "Status",
                    "Issuer",
                    "Subject",
                    "Roles",
                    "Owners",
                    "First seen",
                    "Last certificate",
                    "Certificates",
                    "Refused",
                    "Last refusal",
                ],
                &[7, 8],
            ),
            rows: inv
                .identities
                .iter()
                .map(|id| {
                    vec![
                        Cell::from(id.status.as_str()),
                        Cell::from(id.issuer.as_str()),
                        Cell::from(id.subject.as_str()),
                        Cell::from(
                            id.roles
                                .iter()
                                .map(|r| r.role.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        ),
                        Cell::from(id.owners.join(", ")),
                        Cell::from(opt_time(id.first_seen)),
                        Cell::from(opt_time(id.last_issued)),
                        Cell::from(id.certs_issued.to_string()),
                        Cell::from(id.requests_denied.to_string()),
                        Cell::from(
                            id.last_denial
                                .as_ref()
                                .map(|d| format!("{} {}", utc_minute(d.time), d.reason_code))
                                .unwrap_or_else(|| "-".into()),
                        ),
                    ]
                })
                .collect(),
        }));
    }
    for d in &inv.disabled_roles {
        b.push(Block::Paragraph(vec![
            text("Role "),
            code(d.role.as_deref().unwrap_or("")),
            text(format!(
                " is disabled since {} by {}: {}",
                utc_minute(d.since),
                d.actor,
                d.reason
            )),
        ]));
    }

    b.push(Block::Heading(3, "Access review".into()));
    if e.review.findings.is_empty() {
        b.push(Block::Paragraph(vec![text("No findings.")]));
    } else {
        b.push(Block::Table(Table {
            id: "review",
            columns: columns(&["Finding", "Role", "Identity", "Owner", "Detail"], &[]),
            rows: e
                .review
                .findings
                .iter()
                .map(|f| {
                    vec![
                        Cell::from(f.kind.as_str()),
                        Cell::from(f.role.as_deref().unwrap_or("-")),
                        Cell::from(f.identity.as_deref().unwrap_or("-")),
                        Cell::from(f.owner.as_deref().unwrap_or("-")),
                        Cell::from(f.detail.as_str()),
                    ]
                })
                .collect(),
        }));
    }

    b.push(Block::Heading(
        3,
        format!("Refusals by reason (last {} days)", e.days),
    ));
    if e.denials.is_empty() {
        b.push(Block::Paragraph(vec![text("None.")]));
    } else {
        b.push(Block::Table(Table {
            id: "denials",
            columns: columns(&["Reason", "Count"], &[1]),
            rows: e
                .denials
                .iter()
                .map(|(code, n)| vec![Cell::from(code.as_str()), Cell::from(n.to_string())])
                .collect(),
        }));
    }

    b.push(Block::Heading(3, "Audit log".into()));
    let in_window = if e.events.is_empty() {
        "none".to_string()
    } else {
        e.events
            .iter()
            .map(|(ev, n)| format!("{ev} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    b.push(Block::List(vec![
        vec![text(format!(
            "Records: {} (highest sequence {}), oldest {}, newest {}",
            e.audit.records,
            e.audit.max_seq,
            opt_time(e.audit.first_ms.map(|t| t / 1000)),
            opt_time(e.audit.last_ms.map(|t| t / 1000))
        ))],
        vec![text(format!("In the window: {in_window}"))],
        vec![text(format!(
            "Issuance records missing a required field: {}",
            e.incomplete_issuance_records
        ))],
        vec![text(format!("Hash chain: {}", chain_text(&e.chain)))],
    ]));

    b.push(Block::Heading(
        3,
        "Revocations, deactivations, keys and issuers".into(),
    ));
    let mut items = vec![
        vec![text(format!(
            "Revocations in the window: {}; live in the KRL: {}",
            e.revocations_in_window, e.revocations_live
        ))],
        vec![text(format!(
            "Deactivations in force: {}",
            e.disabled_entries()
        ))],
    ];
    for k in &e.ca_keys {
        items.push(vec![text(format!(
            "{} CA key: {}{}",
            k.ca,
            k.protection,
            k.age_days
                .map(|a| format!(", {a} days old"))
                .unwrap_or_default()
        ))]);
    }
    for i in &e.issuers {
        items.push(vec![
            text("Issuer "),
            code(i.name.as_str()),
            text(format!(
                ": {} (audience {}, single-use tokens {}{})",
                i.url,
                i.audience,
                if i.replay_protection { "on" } else { "off" },
                if i.jwks_file {
                    ", static JWKS file"
                } else {
                    ""
                }
            )),
        ]);
    }
    items.push(vec![
        code("[[admin]]"),
        text(format!(" rules: {}", e.admin_rules)),
    ]);
    b.push(Block::List(items));

    Document {
        title: "mayfly compliance evidence report".into(),
        blocks: b,
    }
}
