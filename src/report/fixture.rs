//! A compliance report built from fixed evidence, for the renderers' tests:
//! every section filled, and names that need escaping in both formats.

use std::path::{Path, PathBuf};

use super::compliance::{self, CaKeyFacts, ChainStatus, ComplianceReport, Evidence, IssuerFacts};
use super::review;
use crate::policy::Policy;
use crate::store::reports::{
    AuditSpan, DailyIssuance, IdentityRoleUsage, LastDenialRow, PrincipalUse, RoleAllTime,
    RoleWindowUsage,
};
use crate::store::{DisableTarget, DisabledEntry};

const DAY: u64 = 86_400;
/// "Now" of the fixture: 2024-03-01 12:00 UTC, the day after a leap day.
pub const NOW: u64 = 19_783 * DAY + 12 * 3600;

fn role(name: &str, body: &str) -> crate::policy::Role {
    crate::policy::load::parse_role(name, Path::new("x.toml"), body).expect("role parses")
}

fn policy() -> Policy {
    let mut p = Policy::default();
    p.roles.insert(
        "deploy".into(),
        role(
            "deploy",
            r#"description = "d"
owner = "ops <ops|team@example.com>"
issuer = "ci"
principals = ["deploy", "backup", "root"]
max_ttl = "2h"
extensions = ["permit-pty", "permit-agent-forwarding"]
source_address = ["10.0.0.0/8"]
force_command = "/usr/local/bin/deploy"
key_types = ["ssh-ed25519", "ssh-rsa"]
min_rsa_bits = 4096
rate_limit = "30/m"
identity_rate_limit = "5/10m"
max_active_certs = 2
[claims]
sub = "x"
[[window]]
days = ["mon-fri"]
start = "01:00"
end = "03:00"
timezone = "Europe/Berlin"
[[window]]
days = ["sat"]
start = "22:00"
end = "02:00"
timezone = "UTC"
[approval]
required = 2
issuer = "corp"
approvers = ["groups:sre", "sub:alice@example.com"]
expires = "15m"
distinct = ["actor=preferred_username"]
"#,
        ),
    );
    p.roles.insert(
        "legacy".into(),
        role(
            "legacy",
            "description = \"l\"\nowner = \"l@example.com\"\nissuer = \"ci\"\nprincipals = [\"a\"]\nmax_ttl = \"5m\"\n[claims]\nsub = \"x\"\n",
        ),
    );
    p.digest = "0123456789abcdef0123".into();
    p
}

/// The fixture's report.
pub fn report() -> ComplianceReport {
    let policy = policy();
    let ms = |t: u64| t * 1000;
    let usage = vec![
        IdentityRoleUsage {
            issuer: "ci".into(),
            subject: "bot|a<b>&\"c\"".into(),
            role: "deploy".into(),
            issued: 3,
            denied: 1,
            first_ms: ms(NOW - 3 * DAY),
            last_ms: ms(NOW - 60),
            last_issued_ms: Some(ms(NOW - 60)),
        },
        IdentityRoleUsage {
            issuer: "ci".into(),
            subject: "old-bot".into(),
            role: "deploy".into(),
            issued: 1,
            denied: 0,
            first_ms: ms(NOW - 40 * DAY),
            last_ms: ms(NOW - 40 * DAY),
            last_issued_ms: Some(ms(NOW - 40 * DAY)),
        },
    ];
    let denials = vec![LastDenialRow {
        issuer: "ci".into(),
        subject: "bot|a<b>&\"c\"".into(),
        time_ms: ms(NOW - 2 * DAY),
        reason_code: "claim_mismatch".into(),
        role: "deploy".into(),
    }];
    let disabled = vec![
        DisabledEntry {
            key: DisableTarget::Role("legacy".into()),
            time_ms: ms(NOW - DAY),
            reason: "freeze | <all>".into(),
            actor: "cli:root".into(),
        },
        DisabledEntry {
            key: DisableTarget::Identity {
                issuer: "ci".into(),
                subject: "old-bot".into(),
                role: None,
            },
            time_ms: ms(NOW - DAY),
            reason: "retired".into(),
            actor: "cli:root".into(),
        },
    ];
    let inventory = crate::inventory::build(&policy, &usage, &denials, &disabled, 30, NOW);
    let since = crate::inventory::window_start_ms(NOW, 30);
    let review = review::build(
        &policy,
        &inventory,
        &[RoleWindowUsage {
            role: "deploy".into(),
            issued: 3,
            identities: 1,
            max_ttl_used: 300,
            last_ms: ms(NOW - 60),
        }],
        &[RoleAllTime {
            role: "deploy".into(),
            issued: 4,
            first_ms: ms(NOW - 40 * DAY),
            last_ms: ms(NOW - 60),
        }],
        &[PrincipalUse {
            role: "deploy".into(),
            principal: "deploy".into(),
            count: 3,
        }],
        &Default::default(),
        30,
        NOW,
    );
    let evidence = Evidence {
        generated_at: NOW,
        days: 30,
        window_start: since / 1000,
        data_dir: PathBuf::from("/var/lib/mayfly"),
        policy_dir: PathBuf::from("/etc/mayfly/ca-policy|x"),
        policy_digest: policy.digest.clone(),
        roles: compliance::role_facts(&policy),
        issuers: vec![
            IssuerFacts {
                name: "ci".into(),
                url: "https://token.actions.githubusercontent.com".into(),
                audience: "mayfly".into(),
                replay_protection: true,
                jwks_file: false,
            },
            IssuerFacts {
                name: "corp".into(),
                url: "https://idp.example.com/?a=1&b=2".into(),
                audience: "ssh".into(),
                replay_protection: false,
                jwks_file: true,
            },
        ],
        admin_rules: 1,
        tls: true,
        insecure_http: false,
        ca_keys: vec![
            CaKeyFacts {
                ca: "user".into(),
                protection: "file (passphrase)".into(),
                age_days: Some(400),
            },
            CaKeyFacts {
                ca: "host".into(),
                protection: "file (passphrase)".into(),
                age_days: None,
            },
        ],
        inventory,
        review,
        audit: AuditSpan {
            records: 9,
            max_seq: 9,
            first_ms: Some(ms(NOW - 40 * DAY)),
            last_ms: Some(ms(NOW - 60)),
        },
        events: vec![("cert_denied".into(), 1), ("cert_issued".into(), 3)],
        denials: vec![("claim_mismatch".into(), 1)],
        incomplete_issuance_records: 0,
        revocations_in_window: 1,
        revocations_live: 1,
        daily: vec![
            DailyIssuance {
                role: "deploy".into(),
                day: NOW / DAY - 3,
                count: 2,
            },
            DailyIssuance {
                role: "deploy".into(),
                day: NOW / DAY,
                count: 1,
            },
        ],
        chain: ChainStatus::Verified {
            records: 9,
            checkpoints: 1,
            signatures_verified: 1,
        },
        db_mode: Some(0o600),
        data_dir_mode: Some(0o700),
    };
    compliance::build(evidence)
}

/// The fixture with nothing in it: no identities, findings, refusals,
/// issuance or events.
pub fn empty_report() -> ComplianceReport {
    let mut r = report();
    let e = &mut r.evidence;
    e.inventory.identities.clear();
    e.inventory.disabled_roles.clear();
    e.review.findings.clear();
    e.denials.clear();
    e.events.clear();
    e.daily.clear();
    e.issuers.clear();
    e.chain = ChainStatus::Broken {
        detail: "1 problem(s); first: seq 3 | hash".into(),
    };
    compliance::build(r.evidence)
}

#[test]
fn markdown_and_html_show_the_same_facts() {
    for r in [report(), empty_report()] {
        let doc = super::document::compliance(&r);
        let md = super::markdown::render_document(&doc);
        let html = super::html::render_document(&doc);
        let facts = doc.facts();
        assert!(facts.len() > 100, "{}", facts.len());
        for fact in facts.iter().filter(|f| !f.trim().is_empty()) {
            let in_md = fact.replace('|', "\\|");
            assert!(md.contains(&in_md), "Markdown lacks {fact:?}:\n{md}");
            let in_html = super::html_escape(fact);
            assert!(html.contains(&in_html), "HTML lacks {fact:?}:\n{html}");
        }
    }
}

#[test]
fn markdown_is_unchanged_byte_for_byte() {
    // Written by the renderer before the report had a document model; a
    // change here is a change users see.
    assert_eq!(
        super::markdown::render(&report()),
        include_str!("testdata/compliance.md")
    );
}

#[test]
fn html_is_one_self_contained_page_with_the_tables_and_chart() {
    let html = super::html::render(&report());
    assert!(html.starts_with("<!DOCTYPE html>\n"));
    assert!(html.ends_with("</body></html>\n"));
    for id in ["controls", "roles", "identities", "review", "denials"] {
        assert!(html.contains(&format!("<table id=\"{id}\">")), "{id}");
    }
    assert!(html.contains("<td><b>AC-2</b> Account management</td>"));
    assert!(html.contains("<td class=\"attention\">attention</td>"));
    assert!(html
        .contains("<ul class=\"att\"><li>replay protection is off for issuer(s) corp</li></ul>"));
    assert!(html.contains("<td>bot|a&lt;b&gt;&amp;&quot;c&quot;</td>"));
    assert!(html.contains("<figure><svg"));
    assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains(" href="));
}

#[test]
fn each_role_shows_its_windows_approval_limits_and_key_types_in_words() {
    let r = report();
    let role = |n: &str| {
        r.evidence
            .roles
            .iter()
            .find(|x| x.name == n)
            .expect("role in the report")
    };
    assert_eq!(
        super::document::restrictions(role("deploy")),
        [
            "source-address: logins only from 10.0.0.0/8",
            "force-command: /usr/local/bin/deploy",
            "time windows: usable only mon-fri 01:00-03:00 Europe/Berlin; sat 22:00-02:00 (next day) UTC; certificates end when the window closes",
            "approval: 2 distinct approval(s) by groups:sre or sub:alice@example.com with a token from issuer corp, within 15m of the request; the approver's preferred_username must differ from the requester's actor",
            "limits: at most 30 requests per minute for the role; at most 5 requests per 10m per identity; at most 2 valid certificate(s) at once per identity",
            "key types: only ssh-ed25519, ssh-rsa; RSA keys of at least 4096 bits",
        ]
    );
    assert_eq!(
        super::document::restrictions(role("legacy")),
        [
            "time windows: none (usable at any time)",
            "approval: not required",
            "limits: none (no rate limit, no cap on valid certificates)",
            "key types: any mayfly accepts (ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ssh-rsa); RSA keys of at least 3072 bits",
        ]
    );
    // Both renderings carry them, in the roles table.
    let md = super::markdown::render(&r);
    let html = super::html::render(&r);
    for fact in super::document::restrictions(role("deploy")) {
        assert!(md.contains(&fact), "Markdown lacks {fact:?}");
        assert!(
            html.contains(&super::html_escape(&fact)),
            "HTML lacks {fact:?}"
        );
    }
    let ac6 = r.controls.iter().find(|c| c.id == "AC-6").expect("AC-6");
    assert!(
        ac6.evidence.iter().any(|e| e.contains(
            "1 with time windows, 1 needing approval, 1 with rate limits or a cap on valid certificates, 1 accepting fewer key types than mayfly does"
        )),
        "{:?}",
        ac6.evidence
    );
}
