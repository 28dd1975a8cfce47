//! Policy TOML loading: one role file from bytes (`parse_role`), then the
//! linter and one evaluation of the loaded role.
//!
//! Invariants: never panics; a loaded role respects its own bounds
//! (principals present for user roles, default TTL within max TTL, max TTL
//! within the hard ceiling); every error names a line inside the file; a
//! grant never exceeds the role's max TTL and its principals are non-empty
//! and obey the principal grammar; a request above max TTL is denied.
#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mayfly::ca::spec::{CertKind, MAX_HOST_CERT_TTL, MAX_PRINCIPALS, MAX_USER_CERT_TTL};
use mayfly::policy::load::{parse_role, MIN_TTL};
use mayfly::policy::{lint, CertRequest};
use mayfly_fuzz::principal_grammar_ok;
use serde_json::json;

const NOW: u64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let role = match parse_role("fuzz", Path::new("fuzz.toml"), text) {
        Ok(role) => role,
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            let lines = text.split('\n').count();
            for e in &errors {
                assert!(
                    e.line >= 1 && e.line <= lines,
                    "error at line {} of {lines}",
                    e.line
                );
            }
            return;
        }
    };
    let ceiling = match role.cert_type {
        CertKind::User => MAX_USER_CERT_TTL,
        CertKind::Host => MAX_HOST_CERT_TTL,
    };
    assert!(role.max_ttl <= ceiling && role.max_ttl >= MIN_TTL);
    assert!(role.default_ttl <= role.max_ttl && role.default_ttl >= MIN_TTL);
    if role.cert_type == CertKind::User {
        assert!(!role.principals.is_empty() && role.principals.len() <= MAX_PRINCIPALS);
    }
    let _ = lint::lint_role(&role);
    if role.cert_type != CertKind::User {
        return;
    }
    let claims = json!({
        "sub": "repo:acme/api:ref:refs/heads/main",
        "repository": "acme/api",
        "namespace_path": "acme",
        "ref": "main",
    });
    let claims = claims.as_object().cloned().unwrap_or_default();
    let issuer = role.issuer.clone();
    match role.evaluate(&issuer, &claims, &CertRequest::default(), NOW) {
        Ok(g) => {
            assert!(
                g.ttl <= role.max_ttl,
                "granted {:?} > max {:?}",
                g.ttl,
                role.max_ttl
            );
            assert!(!g.principals.is_empty(), "grant without principals");
            for p in &g.principals {
                assert!(
                    principal_grammar_ok(p.as_str()),
                    "principal {:?}",
                    p.as_str()
                );
            }
            let too_long = CertRequest {
                ttl: Some(role.max_ttl + Duration::from_secs(1)),
                ..CertRequest::default()
            };
            assert!(
                role.evaluate(&issuer, &claims, &too_long, NOW).is_err(),
                "a TTL above max_ttl was granted"
            );
        }
        Err(d) => assert!(!d.message.is_empty()),
    }
});
