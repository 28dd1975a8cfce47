//! From a policy grant to the certificate to sign: which CA signs, the key
//! id, and the validity interval. Pure: everything it needs is an argument,
//! so every rule here has a unit test. The CA's `mint` checks the bounds
//! again, whatever this says.

use std::time::Duration;

use crate::ca::{key_id, CertKind, CertSpec, SubjectKey};
use crate::policy::Grant;
use crate::time::UnixSecs;

/// Which key ring signs a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaChoice {
    /// The default user CA.
    User,
    /// The user CA of a CA group (roles with `ca_group`).
    Group(String),
    /// The host CA.
    Host,
}

/// The CA that signs a certificate of `kind` for a role in `ca_group`.
/// Host certificates always come from the host CA.
pub fn ca_choice(kind: CertKind, ca_group: Option<&str>) -> CaChoice {
    match (kind, ca_group) {
        (CertKind::User, None) => CaChoice::User,
        (CertKind::User, Some(g)) => CaChoice::Group(g.to_string()),
        (CertKind::Host, _) => CaChoice::Host,
    }
}

/// Who asked, and when: the facts besides the grant that go into a
/// certificate.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// Role name as requested (already found in the policy).
    pub role: &'a str,
    /// Verified token issuer.
    pub issuer: &'a str,
    /// Verified token subject.
    pub subject: &'a str,
}

/// Builds the certificate to sign from a grant.
///
/// - `valid_after` is `now - backdate` (clock skew between CA and hosts);
/// - `valid_before` is `now + ttl`, and never after the end of the time
///   window the grant was made in (policy already clipped the TTL; this
///   bounds it again);
/// - the key id is `mayfly:<role>:<issuer>:<sub>:<serial>`, with
///   `mayfly-host:` for host certificates.
pub fn cert_spec(
    kind: CertKind,
    who: Requester<'_>,
    subject: SubjectKey,
    serial: u64,
    grant: Grant,
    now: UnixSecs,
    backdate: Duration,
) -> CertSpec {
    let kid = key_id(who.role, who.issuer, who.subject, serial);
    CertSpec {
        kind,
        subject,
        serial,
        key_id: match kind {
            CertKind::User => kid,
            CertKind::Host => kid.replacen("mayfly:", "mayfly-host:", 1),
        },
        principals: grant.principals,
        valid_after: now.saturating_sub(backdate),
        valid_before: now
            .saturating_add(grant.ttl)
            .min(grant.window_end.map_or(UnixSecs::MAX, UnixSecs)),
        extensions: grant.extensions,
        force_command: grant.force_command,
        source_address: grant.source_address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Principal;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bot";

    fn grant(ttl: u64, window_end: Option<u64>) -> Grant {
        Grant {
            principals: vec![Principal::parse("deploy").expect("principal")],
            ttl: Duration::from_secs(ttl),
            extensions: Vec::new(),
            force_command: Some("/usr/bin/true".into()),
            source_address: Vec::new(),
            window_end,
            role: "deploy".into(),
            key_types: Vec::new(),
            min_rsa_bits: 0,
        }
    }

    fn who() -> Requester<'static> {
        Requester {
            role: "deploy",
            issuer: "https://issuer.example",
            subject: "repo:acme/app",
        }
    }

    fn key() -> SubjectKey {
        SubjectKey::parse(KEY).expect("key")
    }

    /// [`cert_spec`] for the test requester and key.
    fn spec(kind: CertKind, serial: u64, grant: Grant, now: u64, backdate: Duration) -> CertSpec {
        cert_spec(kind, who(), key(), serial, grant, UnixSecs(now), backdate)
    }

    #[test]
    fn validity_is_backdated_and_lasts_the_ttl() {
        let s = spec(
            CertKind::User,
            7,
            grant(300, None),
            1_000_000,
            Duration::from_secs(30),
        );
        assert_eq!(s.valid_after, UnixSecs(999_970));
        assert_eq!(s.valid_before, UnixSecs(1_000_300));
        assert_eq!(s.serial, 7);
        assert_eq!(s.force_command.as_deref(), Some("/usr/bin/true"));
        assert_eq!(s.principals.len(), 1);
    }

    #[test]
    fn the_window_end_clips_validity() {
        let s = spec(
            CertKind::User,
            7,
            grant(300, Some(1_000_100)),
            1_000_000,
            Duration::ZERO,
        );
        assert_eq!(s.valid_before, UnixSecs(1_000_100));
        let later = spec(
            CertKind::User,
            7,
            grant(300, Some(2_000_000)),
            1_000_000,
            Duration::ZERO,
        );
        assert_eq!(later.valid_before, UnixSecs(1_000_300));
    }

    #[test]
    fn validity_saturates_instead_of_wrapping() {
        let s = spec(
            CertKind::User,
            1,
            grant(u64::MAX, None),
            u64::MAX - 5,
            Duration::from_secs(u64::MAX),
        );
        assert_eq!(s.valid_after, UnixSecs(0));
        assert_eq!(s.valid_before, UnixSecs::MAX);
    }

    #[test]
    fn key_ids_name_role_issuer_subject_serial_and_kind() {
        let u = spec(CertKind::User, 42, grant(60, None), 0, Duration::ZERO);
        assert_eq!(
            u.key_id,
            "mayfly:deploy:https_//issuer.example:repo_acme/app:42"
        );
        let h = spec(CertKind::Host, 42, grant(60, None), 0, Duration::ZERO);
        assert_eq!(
            h.key_id,
            "mayfly-host:deploy:https_//issuer.example:repo_acme/app:42"
        );
        assert_eq!(h.kind, CertKind::Host);
    }

    #[test]
    fn host_certificates_come_from_the_host_ca_even_in_a_group() {
        assert_eq!(ca_choice(CertKind::User, None), CaChoice::User);
        assert_eq!(
            ca_choice(CertKind::User, Some("prod")),
            CaChoice::Group("prod".into())
        );
        assert_eq!(ca_choice(CertKind::Host, Some("prod")), CaChoice::Host);
        assert_eq!(ca_choice(CertKind::Host, None), CaChoice::Host);
    }
}
