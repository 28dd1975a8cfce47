//! The console's pages and form handlers. Reads go through the inventory,
//! the audit search, `policy explain` and the service; every action goes
//! through the same service call as the admin API or the CLI.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup, DOCTYPE};

use super::session::{self, LOGIN_COOKIE, SESSION_COOKIE};
use super::{bare_page, Caller, Console, ConsoleError, St};
use crate::audit::chain::StoredRecord;
use crate::audit::search::AuditQuery;
use crate::service::IssueError;
use crate::store::{CertFilter, DisableTarget};

type Fields = HashMap<String, String>;

fn field<'a>(f: &'a Fields, name: &str) -> &'a str {
    f.get(name).map(|s| s.trim()).unwrap_or("")
}

/// A form body, or a 400 page that says what is wrong with it.
fn form(f: Result<Form<Fields>, FormRejection>) -> Result<Fields, ConsoleError> {
    f.map(|Form(f)| f)
        .map_err(|e| ConsoleError::bad(format!("the form could not be read: {}", e.body_text())))
}

/// A reason typed by a person: one line, at most 1024 bytes (as the API).
fn reason(f: &Fields, required: bool) -> Result<String, ConsoleError> {
    let r = field(f, "reason");
    if r.len() > 1024 || r.chars().any(|c| c.is_control()) {
        return Err(ConsoleError::bad(
            "the reason must be one line of at most 1024 bytes",
        ));
    }
    if required && r.is_empty() {
        return Err(ConsoleError::bad(
            "give a reason; it goes into the audit log",
        ));
    }
    Ok(r.to_string())
}

fn request_id() -> String {
    format!("console-{}", uuid::Uuid::new_v4())
}

fn ts(secs: u64) -> String {
    crate::time::rfc3339(secs)
}

fn ts_ms(ms: i64) -> String {
    crate::audit::export::rfc3339_ms(ms)
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn person_name(c: &Caller) -> String {
    format!("{}:{}", c.person().issuer(), c.person().subject())
}

/// A page with the navigation, the person, and the logout form.
fn page(c: &Caller, title: &str, body: Markup) -> Markup {
    page_with(c, title, None, body)
}

/// How often the live pages (overview, feed) reload themselves, in
/// seconds: live refresh without any script (a `<meta http-equiv=refresh>`,
/// which the CSP does not need to allow), so the pages stay script-free.
pub(super) const LIVE_REFRESH_SECS: u32 = 5;

/// [`page`], reloading itself every `refresh` seconds when given.
fn page_with(c: &Caller, title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh {
                    meta http-equiv="refresh" content=(secs);
                }
                title { "mayfly: " (title) }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    nav {
                        strong { "mayfly" }
                        a href="/console/" { "Overview" }
                        a href="/console/feed" { "Feed" }
                        a href="/console/approvals" { "Approvals" }
                        a href="/console/certs" { "Certificates" }
                        a href="/console/identities" { "Identities" }
                        a href="/console/audit" { "Audit" }
                        a href="/console/policy" { "Policy" }
                    }
                    div.who {
                        span #person { (person_name(c)) }
                        @if c.admin.is_some() { " " span.badge { "admin" } }
                        form method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(c.session.csrf);
                            button type="submit" #logout { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn csrf_input(c: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.session.csrf); }
}

// ---- login, callback, logout ----

/// `GET /console/callback?code&state`: the issuer sends the browser back.
pub(super) async fn callback(
    State(con): St,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Response {
    match finish_login(&con, &headers, &q).await {
        Ok(sid) => {
            let mut r = bare_page(
                "logged in",
                html! {
                    // A same-site navigation from here carries the
                    // SameSite=Strict session cookie (the redirect chain
                    // from the issuer would not).
                    meta http-equiv="refresh" content="0;url=/console/";
                    p { "Logged in. " a href="/console/" { "Continue to the console" } }
                },
            )
            .into_response();
            let h = r.headers_mut();
            for c in [
                con.cookie(
                    SESSION_COOKIE,
                    &sid,
                    "/console",
                    "Strict",
                    session::SESSION_TTL_SECS,
                ),
                con.cookie(LOGIN_COOKIE, "", "/console/callback", "Lax", 0),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn finish_login(
    con: &Console,
    headers: &HeaderMap,
    q: &Fields,
) -> Result<String, ConsoleError> {
    if let Some(err) = q.get("error") {
        let err: String = err.chars().take(100).collect();
        return Err(ConsoleError::forbidden(format!(
            "the identity provider did not log you in ({err}); open /console/ to try again"
        )));
    }
    let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else {
        return Err(ConsoleError::bad("the callback needs code and state"));
    };
    let binding = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie(h, LOGIN_COOKIE));
    let now = con.now();
    let login = con.logins.finish_login(state, binding, now).map_err(|e| {
        ConsoleError::forbidden(match e {
            session::LoginLookupError::UnknownState => {
                "this login is unknown, used or expired; open /console/ to log in again"
            }
            session::LoginLookupError::WrongBrowser => {
                "this login was started in another browser; open /console/ to log in here"
            }
        })
    })?;
    let person = con
        .oidc
        .exchange(code, &login.verifier, &login.nonce, now)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "console login refused");
            ConsoleError::forbidden(e.to_string())
        })?;
    if con.service.admin_actor(&person).is_err()
        && !con.is_viewer(&person)
        && !con.approves_any_role(&person)
    {
        let msg = format!(
            "{}:{} is not a viewer ([console] viewers), administrator ([[admin]]) or approver (a role's [approval]) of this CA",
            person.issuer(),
            person.subject()
        );
        con.service
            .record_admin_refusal(
                "console_login",
                &request_id(),
                "not_console_user",
                &msg,
                con.service.clock().now(),
            )
            .await;
        return Err(ConsoleError::forbidden(msg));
    }
    tracing::info!(
        issuer = person.issuer(),
        subject = person.subject(),
        "console login"
    );
    con.sessions
        .open(&person, now)
        .await
        .map_err(|e| ConsoleError::unavailable(&e))
}

/// `POST /console/logout`.
pub(super) async fn logout(
    State(con): St,
    headers: HeaderMap,
    c: Caller,
    f: Result<Form<Fields>, FormRejection>,
) -> Result<Response, ConsoleError> {
    let f = form(f)?;
    c.check_csrf(f.get("csrf").map(String::as_str))?;
    if let Some(id) = super::session_id(&headers) {
        con.sessions
            .close(id)
            .await
            .map_err(|e| ConsoleError::unavailable(&e))?;
    }
    let mut r = bare_page(
        "logged out",
        html! { h1 { "Logged out" } p { a href="/console/" { "Log in again" } } },
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&con.cookie(SESSION_COOKIE, "", "/console", "Strict", 0)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

// ---- overview and feed ----

const FEED_EVENTS: [&str; 2] = ["cert_issued", "cert_denied"];

async fn recent(con: &Console, q: AuditQuery) -> Result<Vec<StoredRecord>, ConsoleError> {
    let rows = con
        .service
        .store()
        .audit()
        .search(&q)
        .await
        .map_err(|e| ConsoleError::unavailable(&e))?;
    Ok(rows.into_iter().filter_map(Result::ok).collect())
}

fn feed_table(records: &[&StoredRecord]) -> Markup {
    html! {
        table.feed {
            thead { tr {
                th { "time" } th { "decision" } th { "identity" } th { "role" }
                th { "principals" } th { "TTL" } th { "serial" } th { "key ID" }
                th { "key" } th { "job" } th { "from" } th { "reason" }
            } }
            tbody {
                @for r in records {
                    @let issued = r.event == "cert_issued";
                    tr class=(if issued { "issued" } else { "denied" }) {
                        td { (ts_ms(r.time_ms)) }
                        td { (if issued { "issued" } else { "refused" }) }
                        td { (r.issuer.as_deref().unwrap_or("")) ":" (r.subject.as_deref().unwrap_or("")) }
                        td { (r.role.as_deref().unwrap_or("")) }
                        td { (r.principals.join(", ")) }
                        td { @if let (Some(a), Some(b)) = (r.valid_after, r.valid_before) { (b.saturating_sub(a)) "s" } }
                        td { @if let Some(s) = r.serial { a href={"/console/certs?q=" (s)} { (s) } } }
                        td.keyid { @if let Some(k) = &r.key_id { a href={"/console/certs?" (query_string(&[("q", k)]))} { (k) } } }
                        td.mono { (r.key_fingerprint.as_deref().unwrap_or("")) }
                        td.job { (job_of(r)) }
                        td.from { (r.client_addr.as_deref().unwrap_or("")) }
                        td { @if !issued {
                            (r.reason_code.as_deref().unwrap_or("")) ": " (r.reason.as_deref().unwrap_or(""))
                        } }
                    }
                }
            }
        }
    }
}

/// The job claims an audit record carries (`[[issuer]] audit_claims`),
/// as `key=value` pairs, or nothing.
fn job_of(r: &StoredRecord) -> String {
    r.claims
        .as_deref()
        .and_then(crate::audit::chain::parse_claims)
        .map(|c| crate::audit::claims::one_line(&c))
        .unwrap_or_default()
}

async fn latest_decisions(con: &Console, limit: usize) -> Result<Vec<StoredRecord>, ConsoleError> {
    let mut all = Vec::new();
    for ev in FEED_EVENTS {
        all.extend(
            recent(
                con,
                AuditQuery {
                    event: Some(ev.to_string()),
                    limit,
                    ..AuditQuery::default()
                },
            )
            .await?,
        );
    }
    all.sort_by_key(|r| std::cmp::Reverse(r.seq));
    all.truncate(limit);
    Ok(all)
}

/// `GET /console/feed`: the latest decisions.
pub(super) async fn feed(State(con): St, c: Caller) -> Result<Markup, ConsoleError> {
    let records = latest_decisions(&con, 100).await?;
    let refs: Vec<&StoredRecord> = records.iter().collect();
    Ok(page_with(
        &c,
        "Live feed",
        Some(LIVE_REFRESH_SECS),
        html! {
            p { "The latest 100 issuances and refusals, newest first, refreshed every " (LIVE_REFRESH_SECS) " s. A refusal shows the reason the bot got." }
            (feed_table(&refs))
        },
    ))
}

/// Per minute of the last hour: (issued, refused).
fn per_minute(records: &[StoredRecord], now_ms: i64) -> Vec<(u64, u64)> {
    let mut buckets = vec![(0u64, 0u64); 60];
    for r in records {
        let age_min = (now_ms - r.time_ms) / 60_000;
        if !(0..60).contains(&age_min) {
            continue;
        }
        let i = 59 - age_min as usize;
        match r.event.as_str() {
            "cert_issued" => buckets[i].0 += 1,
            "cert_denied" => buckets[i].1 += 1,
            _ => {}
        }
    }
    buckets
}

/// A bar chart of issuances (and refusals stacked on top) per minute.
fn chart(buckets: &[(u64, u64)]) -> Markup {
    let max = buckets.iter().map(|(a, b)| a + b).max().unwrap_or(0).max(1);
    let h = 100.0;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox="0 0 600 120" width="600" height="120" role="img" aria-label="issuances and refusals per minute, last hour" {
            line x1="0" y1="100" x2="600" y2="100" stroke="#888" stroke-width="1" {}
            @for (i, (ok, bad)) in buckets.iter().enumerate() {
                @let ok_h = h * (*ok as f64) / (max as f64);
                @let bad_h = h * (*bad as f64) / (max as f64);
                @let x = i * 10 + 1;
                @if *ok > 0 {
                    rect x=(x) y=(format!("{:.1}", 100.0 - ok_h)) width="8" height=(format!("{ok_h:.1}")) fill="#2e7d32" { title { (ok) " issued" } }
                }
                @if *bad > 0 {
                    rect x=(x) y=(format!("{:.1}", 100.0 - ok_h - bad_h)) width="8" height=(format!("{bad_h:.1}")) fill="#c62828" { title { (bad) " refused" } }
                }
            }
            text x="0" y="115" font-size="10" fill="#555" { "-60 min" }
            text x="560" y="115" font-size="10" fill="#555" { "now" }
            text x="0" y="10" font-size="10" fill="#555" { "max " (max) "/min" }
        }
    }
}

/// `GET /console/`: the overview.
pub(super) async fn overview(State(con): St, c: Caller) -> Result<Markup, ConsoleError> {
    let now = con.now();
    let now_ms = now as i64 * 1000;
    let hour = recent(
        &con,
        AuditQuery {
            since_ms: Some(now_ms - 3_600_000),
            limit: 100_000,
            ..AuditQuery::default()
        },
    )
    .await?;
    let buckets = per_minute(&hour, now_ms);
    let mut by_role: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for r in &hour {
        let role = r.role.clone().unwrap_or_else(|| "(none)".into());
        match r.event.as_str() {
            "cert_issued" => by_role.entry(role).or_default().0 += 1,
            "cert_denied" => {
                by_role.entry(role).or_default().1 += 1;
                *by_reason
                    .entry(r.reason_code.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    let policy = con.service.policy();
    let mut active = 0usize;
    for role in policy.roles.keys() {
        active += con
            .service
            .store()
            .issuance()
            .live_certs(&CertFilter::Role(role.to_string()), now)
            .await
            .map_err(|e| ConsoleError::unavailable(&e))?
            .len();
    }
    let head = con
        .service
        .store()
        .audit()
        .head()
        .await
        .map_err(|e| ConsoleError::unavailable(&e))?;
    let last_cp = con
        .service
        .store()
        .audit()
        .last_checkpoint_at()
        .await
        .map_err(|e| ConsoleError::unavailable(&e))?;
    let pending = con
        .service
        .all_pending_approvals(con.service.clock().now())
        .await
        .map_err(|e| ConsoleError::unavailable(&e))?
        .len();
    let latest: Vec<StoredRecord> = latest_decisions(&con, 20).await?;
    let latest_refs: Vec<&StoredRecord> = latest.iter().collect();
    let user = con.service.user_keys();
    let host = con.service.host_keys();
    Ok(page(
        &c,
        "Overview",
        html! {
            section.cards {
                div.card { div.n #active-certs { (active) } "active certificates" }
                div.card { div.n #issued-hour { (buckets.iter().map(|b| b.0).sum::<u64>()) } "issued in the last hour" }
                div.card { div.n #refused-hour { (buckets.iter().map(|b| b.1).sum::<u64>()) } "refused in the last hour" }
                div.card { div.n #pending { a href="/console/approvals" { (pending) } } "pending approvals" }
            }
            h2 { "Per minute, last hour" }
            (chart(&buckets))
            div.cols {
                div {
                    h2 { "By role (last hour)" }
                    table #by-role { thead { tr { th { "role" } th { "issued" } th { "refused" } } }
                        tbody { @for (role, (ok, bad)) in &by_role { tr { td { (role) } td { (ok) } td { (bad) } } } } }
                }
                div {
                    h2 { "Refusals by reason (last hour)" }
                    table #by-reason { thead { tr { th { "reason" } th { "count" } } }
                        tbody { @for (why, n) in &by_reason { tr { td { (why) } td { (n) } } } } }
                }
            }
            h2 { "Audit log and CA keys" }
            table {
                tr { th { "audit head" } td.mono #audit-head {
                    @match &head {
                        Some((seq, hash)) => { "seq " (seq) " " (hash.as_ref().map(crate::audit::chain::hex).unwrap_or_default()) }
                        None => { "empty" }
                    }
                } }
                tr { th { "last signed checkpoint" } td.mono #last-checkpoint {
                    @match &last_cp {
                        Some((seq, time_ms)) => { "signed " (ts_ms(*time_ms)) ", at seq " (seq) " (" a href="/console/audit" { "verify" } ")" }
                        None => { "none yet" }
                    }
                } }
                tr { th { "policy digest" } td.mono #policy-digest { (policy.digest) } }
                @for (id, name, ring) in [("ca-user", "user CA", &user), ("ca-host", "host CA", &host)] {
                    tr { th { (name) } td.mono id=(id) {
                        "active " (ring.active.fingerprint())
                        @if let Some(n) = &ring.next { br; "next (staged) " (n.fingerprint()) }
                        @if let Some(p) = &ring.previous { br; "previous (still trusted) " (p.fingerprint()) }
                        @if ring.next.is_none() && ring.previous.is_none() { br; "no rotation in progress" }
                    } }
                }
            }
            h2 { "Latest issuances and refusals" }
            (feed_table(&latest_refs))
            p { a href="/console/feed" { "More in the feed" } }
        },
    ))
}

// ---- approvals ----

/// `GET /console/approvals`: pending requests; buttons for their approvers.
pub(super) async fn approvals(
    State(con): St,
    c: Caller,
    Query(q): Query<Fields>,
) -> Result<Markup, ConsoleError> {
    let list = con
        .service
        .all_pending_approvals(con.service.clock().now())
        .await
        .map_err(|e| ConsoleError::unavailable(&e))?;
    let done = q
        .get("done")
        .map(|d| d.chars().take(100).collect::<String>());
    Ok(page(
        &c,
        "Approvals",
        html! {
            @if let Some(d) = done { p.notice #notice { (d) } }
            @if list.is_empty() { p #no-pending { "No request is waiting for approval." } }
            @for r in &list {
                @let approvals = r.votes.iter().filter(|v| v.approve).count();
                section.approval id=(r.id) {
                    h2 { "Request " span.mono { (r.id) } " for role " (r.role) }
                    table {
                        tr { th { "who asks" } td { (r.issuer) ":" (r.subject) } }
                        tr { th { "their claims" } td {
                            @if r.requester_claims.is_empty() { "(the role compares none)" }
                            @for (k, v) in &r.requester_claims { (k) " = " (v) br; }
                        } }
                        tr { th { "job" } td.job {
                            @if r.job_claims.is_empty() { "(the token named no job claims)" }
                            @else { (crate::audit::claims::one_line(&r.job_claims)) }
                        } }
                        tr { th { "principals" } td.principals { (r.principals.join(", ")) } }
                        tr { th { "TTL" } td.ttl { (r.ttl_seconds) "s" } }
                        tr { th { "key" } td.mono.fingerprint { (r.key_fingerprint) } }
                        tr { th { "asked" } td { (ts(r.created_at.get())) } }
                        tr { th { "expires" } td { (ts(r.expires_at.get())) } }
                        tr { th { "approvals" } td { (approvals) " of " (r.required) } }
                        @for v in &r.votes {
                            tr { th { (if v.approve { "approved by" } else { "denied by" }) } td { (v.approver) ": " (v.reason) } }
                        }
                    }
                    @if con.service.may_decide(c.person(), &r.role) {
                        form method="post" action={"/console/approvals/" (r.id)} {
                            (csrf_input(&c))
                            label { "Reason " input type="text" name="reason" maxlength="1024" required; }
                            " "
                            button type="submit" name="decision" value="approve" { "Approve" }
                            " "
                            button type="submit" name="decision" value="deny" { "Deny" }
                        }
                    } @else {
                        p.readonly { "You are not an approver of role " (r.role) "." }
                    }
                }
            }
        },
    ))
}

fn issue_error(e: IssueError) -> ConsoleError {
    use crate::approval::ApprovalError;
    let status = match &e {
        IssueError::Store(_) => return ConsoleError::unavailable(&e),
        IssueError::Approval(ApprovalError::NotFound(_)) => StatusCode::NOT_FOUND,
        IssueError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    ConsoleError::new(status, format!("refused ({}): {e}", e.code()))
}

/// `POST /console/approvals/{id}` with `decision` = approve | deny.
pub(super) async fn vote(
    State(con): St,
    c: Caller,
    Path(id): Path<String>,
    f: Result<Form<Fields>, FormRejection>,
) -> Result<Response, ConsoleError> {
    let f = form(f)?;
    c.check_csrf(f.get("csrf").map(String::as_str))?;
    let approve = match field(&f, "decision") {
        "approve" => true,
        "deny" => false,
        _ => return Err(ConsoleError::bad("decision must be approve or deny")),
    };
    let why = reason(&f, false)?;
    let r = con
        .service
        .vote_as(
            c.person(),
            &id,
            approve,
            &why,
            &request_id(),
            con.service.clock().now(),
        )
        .await
        .map_err(issue_error)?;
    let done = format!(
        "{} {}: now {}",
        if approve { "Approved" } else { "Denied" },
        r.id,
        r.status.as_str()
    );
    Ok(see_other(&format!(
        "/console/approvals?{}",
        query_string(&[("done", &done)])
    )))
}

// ---- certificates ----

/// `GET /console/certs?q=SERIAL|KEY_ID`: one certificate, as sshd logs it.
pub(super) async fn cert(
    State(con): St,
    c: Caller,
    Query(q): Query<Fields>,
) -> Result<Markup, ConsoleError> {
    let wanted = field(&q, "q").to_string();
    let search_form = html! {
        form method="get" action="/console/certs" {
            label { "Serial or key ID (as sshd logs it) " input type="text" name="q" value=(wanted) size="60"; }
            " " button type="submit" { "Find" }
        }
    };
    if wanted.is_empty() {
        return Ok(page(&c, "Certificates", search_form));
    }
    let mut aq = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    match wanted.parse::<u64>() {
        Ok(n) => aq.serial = Some(n),
        Err(_) => aq.key_id = Some(wanted.clone()),
    }
    let mut records = recent(&con, aq).await?;
    if let Some(serial) = records
        .iter()
        .find(|r| r.event == "cert_issued")
        .and_then(|r| r.serial)
    {
        // Found by key id: the revocations are found by serial.
        if wanted.parse::<u64>().is_err() {
            records = recent(
                &con,
                AuditQuery {
                    serial: Some(serial as u64),
                    limit: 100,
                    ..AuditQuery::default()
                },
            )
            .await?;
        }
    }
    let issued = records.iter().find(|r| r.event == "cert_issued");
    let revoked = records.iter().find(|r| r.event == "cert_revoked");
    let now = con.now() as i64;
    Ok(page(
        &c,
        "Certificate",
        html! {
            (search_form)
            @match issued {
                None => { p.error { "No certificate has serial or key ID " (wanted) "." } }
                Some(r) => {
                    table.cert {
                        tr { th { "serial" } td #serial { (r.serial.unwrap_or_default()) } }
                        tr { th { "key ID" } td.mono { (r.key_id.as_deref().unwrap_or("")) } }
                        tr { th { "identity" } td { (r.issuer.as_deref().unwrap_or("")) ":" (r.subject.as_deref().unwrap_or("")) } }
                        tr { th { "role" } td { (r.role.as_deref().unwrap_or("")) } }
                        tr { th { "type" } td { (r.cert_type.as_deref().unwrap_or("")) } }
                        tr { th { "principals" } td { (r.principals.join(", ")) } }
                        tr { th { "valid" } td {
                            (r.valid_after.map(|t| ts(t.max(0) as u64)).unwrap_or_default()) " to "
                            (r.valid_before.map(|t| ts(t.max(0) as u64)).unwrap_or_default())
                        } }
                        tr { th { "key" } td.mono { (r.key_fingerprint.as_deref().unwrap_or("")) } }
                        tr { th { "signed by" } td.mono { (r.ca_key.as_deref().unwrap_or("")) } }
                        tr { th { "from" } td { (r.client_addr.as_deref().unwrap_or("")) } }
                        tr { th { "status" } td #status {
                            @if let Some(rv) = revoked {
                                span.bad { "revoked" } " at " (ts_ms(rv.time_ms)) " by " (rv.actor.as_deref().unwrap_or("?")) ": " (rv.reason.as_deref().unwrap_or(""))
                            } @else if r.valid_before.is_some_and(|b| b <= now) {
                                "expired"
                            } @else {
                                span.ok { "valid" }
                            }
                        } }
                    }
                    @if revoked.is_none() && r.valid_before.is_some_and(|b| b > now) {
                        @if c.admin.is_some() {
                            form method="post" action="/console/certs/revoke" {
                                (csrf_input(&c))
                                input type="hidden" name="serial" value=(r.serial.unwrap_or_default());
                                label { "Reason " input type="text" name="reason" maxlength="1024" required; }
                                " " button type="submit" #revoke { "Revoke" }
                            }
                        } @else {
                            p.readonly { "Only administrators may revoke." }
                        }
                    }
                    h2 { "History" }
                    (history(&records))
                }
            }
        },
    ))
}

fn history(records: &[StoredRecord]) -> Markup {
    html! {
        table {
            thead { tr { th { "seq" } th { "time" } th { "event" } th { "actor" } th { "role" } th { "serial" } th { "reason" } } }
            tbody { @for r in records {
                tr {
                    td { (r.seq) } td { (ts_ms(r.time_ms)) } td { (r.event) }
                    td { (r.actor.as_deref().unwrap_or("")) } td { (r.role.as_deref().unwrap_or("")) }
                    td { @if let Some(s) = r.serial { a href={"/console/certs?q=" (s)} { (s) } } }
                    td { (r.reason_code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default()) (r.reason.as_deref().unwrap_or("")) }
                }
            } }
        }
    }
}

/// Refuses a console action of a person who is no administrator, audited
/// as a refused admin call.
async fn require_admin(con: &Console, c: &Caller, action: &str) -> Result<String, ConsoleError> {
    match &c.admin {
        Some(a) => Ok(format!("{a} (console)")),
        None => {
            let msg = format!("{} is not an administrator", person_name(c));
            con.service
                .record_admin_refusal(
                    action,
                    &request_id(),
                    "not_admin",
                    &msg,
                    con.service.clock().now(),
                )
                .await;
            Err(ConsoleError::forbidden(format!(
                "refused (not_admin): {msg}; only [[admin]] identities may {action}"
            )))
        }
    }
}

/// `POST /console/certs/revoke` with `serial` and `reason`.
pub(super) async fn revoke(
    State(con): St,
    c: Caller,
    f: Result<Form<Fields>, FormRejection>,
) -> Result<Response, ConsoleError> {
    let f = form(f)?;
    c.check_csrf(f.get("csrf").map(String::as_str))?;
    let actor = require_admin(&con, &c, "revoke").await?;
    let serial: u64 = field(&f, "serial")
        .parse()
        .map_err(|_| ConsoleError::bad("serial must be a certificate serial number"))?;
    let why = reason(&f, true)?;
    let o = crate::revocation::revoke(
        con.service.store(),
        CertFilter::Serial(serial),
        &why,
        &actor,
        con.now(),
    )
    .await
    .map_err(|e| ConsoleError::bad(format!("not revoked: {e}")))?;
    tracing::info!(serial, krl_version = o.krl_version, actor = %actor, "revoked from the console");
    Ok(see_other(&format!("/console/certs?q={serial}")))
}

// ---- identities ----

/// `GET /console/identities`: the inventory.
pub(super) async fn identities(State(con): St, c: Caller) -> Result<Markup, ConsoleError> {
    let policy = con.service.policy();
    let inv = crate::inventory::collect(
        con.service.store(),
        &policy,
        crate::inventory::DEFAULT_STALE_DAYS,
        con.now(),
    )
    .await
    .map_err(|e| ConsoleError::unavailable(&e))?;
    Ok(page(
        &c,
        "Identities",
        html! {
            p { (inv.counts.active) " active, " (inv.counts.stale) " stale (no certificate for " (inv.stale_days) " days), " (inv.counts.disabled) " disabled, " (inv.counts.only_refused) " only refused (never got a certificate)." }
            table {
                thead { tr { th { "status" } th { "identity" } th { "owners" } th { "roles" } th { "first seen" } th { "last seen" } th { "certificates" } th { "last refusal" } } }
                tbody { @for i in &inv.identities {
                    tr {
                        td { (format!("{:?}", i.status).to_lowercase()) }
                        td { a href={"/console/identity?" (query_string(&[("issuer", &i.issuer), ("subject", &i.subject)]))} { (i.issuer) ":" (i.subject) } }
                        td { (i.owners.join(", ")) }
                        td { (i.roles_requested.join(", ")) }
                        td { (i.first_seen.map(ts).unwrap_or_default()) }
                        td { (i.last_seen.map(ts).unwrap_or_default()) }
                        td { (i.certs_issued) }
                        td { @if let Some(d) = &i.last_denial { (ts(d.time)) " " (d.role) ": " (d.reason_code) } }
                    }
                } }
            }
        },
    ))
}

/// `GET /console/identity?issuer&subject`: one identity's history.
pub(super) async fn identity(
    State(con): St,
    c: Caller,
    Query(q): Query<Fields>,
) -> Result<Markup, ConsoleError> {
    let (issuer, subject) = (
        field(&q, "issuer").to_string(),
        field(&q, "subject").to_string(),
    );
    if issuer.is_empty() || subject.is_empty() {
        return Err(ConsoleError::bad("name an identity: ?issuer=…&subject=…"));
    }
    let policy = con.service.policy();
    let now = con.now();
    let inv = crate::inventory::collect(
        con.service.store(),
        &policy,
        crate::inventory::DEFAULT_STALE_DAYS,
        now,
    )
    .await
    .map_err(|e| ConsoleError::unavailable(&e))?;
    let ident = inv
        .identities
        .iter()
        .find(|i| i.issuer == issuer && i.subject == subject);
    let disabled = ident.is_some_and(|i| i.deactivations.iter().any(|d| d.role.is_none()));
    let live = con
        .service
        .store()
        .issuance()
        .live_certs(
            &CertFilter::Identity {
                issuer: issuer.clone(),
                subject: subject.clone(),
                role: None,
            },
            now,
        )
        .await
        .map_err(|e| ConsoleError::unavailable(&e))?;
    let records = recent(
        &con,
        AuditQuery {
            issuer: Some(issuer.clone()),
            subject: Some(subject.clone()),
            limit: 100,
            ..AuditQuery::default()
        },
    )
    .await?;
    Ok(page(
        &c,
        &format!("Identity {issuer}:{subject}"),
        html! {
            @match ident {
                None => { p { "The CA has no record of this identity." } }
                Some(i) => {
                    table {
                        tr { th { "status" } td #identity-status { (format!("{:?}", i.status).to_lowercase()) } }
                        tr { th { "owners" } td { (i.owners.join(", ")) } }
                        tr { th { "roles granted" } td { (i.roles_granted.join(", ")) } }
                        tr { th { "first seen" } td { (i.first_seen.map(ts).unwrap_or_default()) } }
                        tr { th { "last seen" } td { (i.last_seen.map(ts).unwrap_or_default()) } }
                        tr { th { "certificates" } td { (i.certs_issued) " issued, " (i.requests_denied) " refused" } }
                        @for d in &i.deactivations {
                            tr { th { "disabled" } td { (d.role.as_deref().map(|r| format!("role {r}: ")).unwrap_or_default()) "since " (ts(d.since)) " by " (d.actor) ": " (d.reason) } }
                        }
                    }
                }
            }
            @if c.admin.is_some() {
                form method="post" action=(if disabled { "/console/identity/enable" } else { "/console/identity/disable" }) {
                    (csrf_input(&c))
                    input type="hidden" name="issuer" value=(issuer);
                    input type="hidden" name="subject" value=(subject);
                    label { "Reason " input type="text" name="reason" maxlength="1024" required; }
                    " "
                    @if disabled { button type="submit" #enable { "Enable" } }
                    @else { button type="submit" #disable { "Disable" } " (also revokes its live certificates)" }
                }
            }
            h2 { "Live certificates" }
            table {
                thead { tr { th { "serial" } th { "key ID" } th { "role" } th { "valid until" } } }
                tbody { @for l in &live { tr {
                    td { a href={"/console/certs?q=" (l.serial)} { (l.serial) } }
                    td.mono { (l.key_id) } td { (l.role) } td { (ts(l.valid_before)) }
                } } }
            }
            h2 { "History" }
            (history(&records))
        },
    ))
}

async fn set_disabled(
    con: Arc<Console>,
    c: Caller,
    f: Result<Form<Fields>, FormRejection>,
    enable: bool,
) -> Result<Response, ConsoleError> {
    let f = form(f)?;
    c.check_csrf(f.get("csrf").map(String::as_str))?;
    let actor = require_admin(&con, &c, if enable { "enable" } else { "disable" }).await?;
    let (issuer, subject) = (
        field(&f, "issuer").to_string(),
        field(&f, "subject").to_string(),
    );
    let why = reason(&f, !enable)?;
    let target = DisableTarget::from_parts(Some(issuer.clone()), Some(subject.clone()), None)
        .map_err(|e| ConsoleError::bad(e.to_string()))?;
    crate::revocation::set_disabled(con.service.store(), target, enable, &why, &actor, con.now())
        .await
        .map_err(|e| ConsoleError::bad(format!("not changed: {e}")))?;
    Ok(see_other(&format!(
        "/console/identity?{}",
        query_string(&[("issuer", &issuer), ("subject", &subject)])
    )))
}

/// `POST /console/identity/disable`.
pub(super) async fn disable(
    State(con): St,
    c: Caller,
    f: Result<Form<Fields>, FormRejection>,
) -> Result<Response, ConsoleError> {
    set_disabled(con, c, f, false).await
}

/// `POST /console/identity/enable`.
pub(super) async fn enable(
    State(con): St,
    c: Caller,
    f: Result<Form<Fields>, FormRejection>,
) -> Result<Response, ConsoleError> {
    set_disabled(con, c, f, true).await
}

// ---- audit ----

/// `GET /console/audit?subject&issuer&role&serial&key_id&event&since`:
/// the filters of `mayfly audit search`, and the chain's verification.
pub(super) async fn audit(
    State(con): St,
    c: Caller,
    Query(q): Query<Fields>,
) -> Result<Markup, ConsoleError> {
    let opt = |k: &str| Some(field(&q, k).to_string()).filter(|s| !s.is_empty());
    let mut aq = AuditQuery {
        subject: opt("subject"),
        issuer: opt("issuer"),
        role: opt("role"),
        key_id: opt("key_id"),
        event: opt("event"),
        limit: 200,
        ..AuditQuery::default()
    };
    if let Some(e) = &aq.event {
        crate::audit::EventKind::parse_named(e)
            .map_err(|why| ConsoleError::bad(format!("there is no audit event: {why}")))?;
    }
    if let Some(s) = opt("serial") {
        aq.serial = Some(
            s.parse()
                .map_err(|_| ConsoleError::bad("serial must be a number"))?,
        );
    }
    if let Some(s) = opt("since") {
        aq.since_ms = Some(
            crate::audit::search::parse_since(&s, con.service.clock().now())
                .map_err(ConsoleError::bad)?,
        );
    }
    let records = recent(&con, aq).await?;
    let report =
        crate::evidence::verify::verify_db(con.service.store().audit(), None, "the audit log")
            .await
            .map_err(|e| ConsoleError::unavailable(&e))?;
    let input = |name: &str, label: &str| {
        html! { label { (label) " " input type="text" name=(name) value=(field(&q, name)); } " " }
    };
    Ok(page(
        &c,
        "Audit",
        html! {
            p #chain-status class=(if report.is_intact() { "ok" } else { "bad" }) {
                @if report.is_intact() {
                    "Hash chain intact: " (report.records) " records checked"
                } @else {
                    "Hash chain BROKEN: " (report.problem_count) " problem(s)"
                }
                ", " (report.checkpoints) " checkpoint(s)"
                @if let Some((seq, t)) = report.last_checkpoint { ", the last at seq " (seq) ", " (ts_ms(t)) }
                "."
            }
            @for p in &report.problems { p.bad { (p.to_string()) } }
            form method="get" action="/console/audit" {
                (input("subject", "subject")) (input("issuer", "issuer")) (input("role", "role"))
                (input("serial", "serial")) (input("key_id", "key ID")) (input("event", "event"))
                (input("since", "since (24h, RFC 3339)"))
                button type="submit" { "Search" }
            }
            p { (records.len()) " record(s), newest first." }
            (history(&records))
        },
    ))
}

// ---- policy ----

/// The replicas of this store and the policy each enforces, as `mayfly
/// status` shows them (one row with SQLite), with its drift verdict.
async fn replicas_table(con: &Console) -> Result<Markup, ConsoleError> {
    use crate::replica::{Health, StatusReport};
    let beats = con
        .service
        .store()
        .replicas()
        .replicas()
        .await
        .map_err(|e| ConsoleError::unavailable(&e))?;
    let r = StatusReport::new(beats, crate::time::UnixSecs(con.now()));
    Ok(html! {
        h2 { "Replicas" }
        p #drift class=(if r.policy_drift { "bad" } else { "ok" }) {
            @match r.status {
                Health::Ok => {
                    (r.live_replicas) " live replica(s), all enforcing policy "
                    span.mono { (r.policy_digests.first().map(String::as_str).unwrap_or("")) } "."
                }
                Health::PolicyDrift => {
                    "POLICY DRIFT: the " (r.live_replicas) " live replicas enforce "
                    (r.policy_digests.len()) " different policies. Deploy the same policy_dir to every replica."
                }
                Health::NoLiveReplica => {
                    "No replica sent a heartbeat recently; is mayfly serve running on this store?"
                }
            }
        }
        table #replicas {
            thead { tr {
                th { "replica" } th { "state" } th { "version" } th { "policy digest" }
                th { "git commit" } th { "listen" } th { "last seen" }
            } }
            tbody { @for s in &r.replicas {
                @let drifted = r.policy_drift && s.live;
                tr class=(if drifted { "drift" } else { "" }) {
                    td.mono { (s.beat.replica.as_str()) }
                    td { (if s.live { "live" } else { "stale" }) }
                    td { (s.beat.version) }
                    td.mono { (s.beat.policy_digest) }
                    td.mono { (s.beat.git_commit.as_deref().unwrap_or("-")) }
                    td { (s.beat.listen) }
                    td { (ts(s.beat.last_seen.0)) }
                }
            } }
        }
    })
}

async fn policy_page(
    con: &Console,
    c: &Caller,
    explained: Option<Markup>,
    f: &Fields,
) -> Result<Markup, ConsoleError> {
    let replicas = replicas_table(con).await?;
    let policy = con.service.policy();
    let chosen = field(f, "role");
    let claims = f
        .get("claims")
        .map(String::as_str)
        .unwrap_or("{\n  \"sub\": \"\"\n}");
    Ok(page(
        c,
        "Policy",
        html! {
            p { "This server enforces policy " span.mono #policy-digest { (policy.digest) } ", " (policy.roles.len()) " role(s)." }
            table #roles {
                thead { tr { th { "role" } th { "description" } th { "owner" } th { "issuer" } th { "max TTL" } th { "approval" } } }
                tbody { @for (name, r) in &policy.roles { tr {
                    td { (name.as_str()) } td { (r.description) } td { (r.owner) } td { (r.issuer) }
                    td { (r.max_ttl.as_secs()) "s" }
                    td { @if let Some(a) = &r.approval { (a.required) " of " (a.approvers.iter().map(|x| format!("{}:{}", x.claim, x.patterns.iter().map(|p| p.as_str()).collect::<Vec<_>>().join("|"))).collect::<Vec<_>>().join(", ")) } }
                } } }
            }
            h2 { "Explain a decision" }
            form method="post" action="/console/policy/explain" {
                (csrf_input(c))
                label { "Role " select name="role" {
                    @for name in policy.roles.keys() {
                        option value=(name.as_str()) selected[name.as_str() == chosen] { (name.as_str()) }
                    }
                } }
                br;
                label { "Claims (JSON) " br; textarea name="claims" rows="8" cols="60" { (claims) } }
                br;
                button type="submit" #explain { "Explain" }
            }
            @if let Some(e) = explained { (e) }
            (replicas)
        },
    ))
}

/// `GET /console/policy`.
pub(super) async fn policy(State(con): St, c: Caller) -> Result<Markup, ConsoleError> {
    policy_page(&con, &c, None, &Fields::new()).await
}

/// `POST /console/policy/explain` with `role` and `claims` (JSON): the
/// decision and rule trace, as `mayfly policy explain` prints them.
pub(super) async fn explain(
    State(con): St,
    c: Caller,
    f: Result<Form<Fields>, FormRejection>,
) -> Result<Markup, ConsoleError> {
    let f = form(f)?;
    c.check_csrf(f.get("csrf").map(String::as_str))?;
    let policy = con.service.policy();
    let role = field(&f, "role");
    let claims: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(
        f.get("claims").map(String::as_str).unwrap_or(""),
    ) {
        Ok(m) => m,
        Err(e) => {
            let msg = html! { p.bad #explain-result { "The claims must be a JSON object: " (e.to_string()) } };
            return policy_page(&con, &c, Some(msg), &f).await;
        }
    };
    let issuer = policy
        .roles
        .get(role)
        .map(|r| r.issuer.clone())
        .unwrap_or_default();
    let e = crate::policy::explain::explain(
        &policy,
        role,
        &issuer,
        &claims,
        &crate::policy::CertRequest::default(),
        con.now(),
        None,
    );
    let out = html! {
        h2 { "Decision" }
        p #explain-result class=(if e.decision.is_ok() { "ok" } else { "bad" }) {
            @match &e.decision {
                Ok(g) => { (crate::policy::explain::grant_summary(g)) }
                Err(d) => { "deny " (d.code.as_str()) " (" (d.rule) "): " (d.message) }
            }
        }
        table #explain-trace {
            thead { tr { th { "" } th { "check" } th { "detail" } } }
            tbody { @for s in &e.steps { tr { td { (s.verdict.as_str()) } td { (s.check) } td { (s.detail) } } } }
        }
    };
    policy_page(&con, &c, Some(out), &f).await
}
