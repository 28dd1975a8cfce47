//! The checked parts a certificate is made of: principals, extensions, TTLs,
//! subject keys and the complete [`CertSpec`] that policy hands to minting.

use crate::time::UnixSecs;
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

/// Longest principal we accept; sshd user names are far shorter.
pub const MAX_PRINCIPAL_LEN: usize = 64;
/// Most principals one certificate may carry.
pub const MAX_PRINCIPALS: usize = 32;
/// Hard ceiling on any user certificate lifetime, whatever a policy says.
pub const MAX_USER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a string is not a valid principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// Empty string.
    #[error("principal is empty")]
    Empty,
    /// Longer than [`MAX_PRINCIPAL_LEN`].
    #[error("principal is longer than {MAX_PRINCIPAL_LEN} bytes")]
    TooLong,
    /// Starts with a character that tools would read as an option or hidden name.
    #[error("principal {0:?} must start with a letter, digit or '_'")]
    BadStart(String),
    /// Contains a character outside the grammar.
    #[error("principal {shown} contains {bad}, allowed are A-Z a-z 0-9 . _ - @")]
    BadChar {
        /// The principal, escaped for display.
        shown: String,
        /// The offending character, escaped.
        bad: String,
    },
}

/// A certificate principal that passed the grammar
/// `[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}`.
///
/// The grammar is deliberately narrow: no commas (sshd splits
/// `AuthorizedPrincipalsFile` options and `principals=` on them), no
/// whitespace or control characters (log and file injection), no `*`/`?`
/// (pattern lists), no non-ASCII (confusable look-alikes), no leading `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

impl Principal {
    /// Checks `s` against the principal grammar.
    pub fn parse(s: &str) -> Result<Principal, PrincipalError> {
        if s.is_empty() {
            return Err(PrincipalError::Empty);
        }
        if s.len() > MAX_PRINCIPAL_LEN {
            return Err(PrincipalError::TooLong);
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
        {
            return Err(PrincipalError::BadChar {
                shown: format!("{s:?}"),
                bad: format!("{bad:?}"),
            });
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_alphanumeric() || first == b'_') {
            return Err(PrincipalError::BadStart(s.to_string()));
        }
        Ok(Principal(s.to_string()))
    }

    /// The principal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// An OpenSSH certificate extension a role may permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Extension {
    /// `permit-pty`
    PermitPty,
    /// `permit-port-forwarding`
    PermitPortForwarding,
    /// `permit-agent-forwarding`
    PermitAgentForwarding,
    /// `permit-X11-forwarding`
    PermitX11Forwarding,
    /// `permit-user-rc`
    PermitUserRc,
    /// `no-touch-required` (FIDO keys)
    NoTouchRequired,
}

impl Extension {
    /// All extensions, in the order OpenSSH sorts them.
    pub const ALL: [Extension; 6] = [
        Extension::NoTouchRequired,
        Extension::PermitX11Forwarding,
        Extension::PermitAgentForwarding,
        Extension::PermitPortForwarding,
        Extension::PermitPty,
        Extension::PermitUserRc,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Extension::PermitPty => "permit-pty",
            Extension::PermitPortForwarding => "permit-port-forwarding",
            Extension::PermitAgentForwarding => "permit-agent-forwarding",
            Extension::PermitX11Forwarding => "permit-X11-forwarding",
            Extension::PermitUserRc => "permit-user-rc",
            Extension::NoTouchRequired => "no-touch-required",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Extension> {
        Extension::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// A subject key that may be certified, with its checked algorithm.
#[derive(Clone)]
pub struct SubjectKey(pub(crate) ssh_key::PublicKey);

/// Why a bot's public key is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectKeyError {
    /// Not an OpenSSH public key line.
    #[error("public_key is not an OpenSSH public key line (\"ssh-ed25519 AAAA...\"): {0}")]
    Malformed(String),
    /// A type we refuse to certify.
    #[error("public_key type {0} is not accepted; use ssh-ed25519, ecdsa-sha2-nistp256/384, or ssh-rsa of at least 3072 bits")]
    Unsupported(String),
    /// RSA key below the minimum size.
    #[error("RSA public_key has {bits} bits; at least 3072 are required")]
    RsaTooSmall {
        /// Size of the offered key.
        bits: u32,
    },
}

/// Minimum RSA modulus size for subject keys.
pub const MIN_RSA_BITS: u32 = 3072;

impl SubjectKey {
    /// Parses and checks an OpenSSH public key line.
    pub fn parse(line: &str) -> Result<SubjectKey, SubjectKeyError> {
        let line = line.trim();
        if line.len() > 16 * 1024 {
            return Err(SubjectKeyError::Malformed("longer than 16 KiB".into()));
        }
        let key = ssh_key::PublicKey::from_openssh(line)
            .map_err(|e| SubjectKeyError::Malformed(e.to_string()))?;
        use ssh_key::public::KeyData;
        match key.key_data() {
            KeyData::Ed25519(_) => {}
            KeyData::Ecdsa(e) => match e.curve() {
                ssh_key::EcdsaCurve::NistP256 | ssh_key::EcdsaCurve::NistP384 => {}
                other => return Err(SubjectKeyError::Unsupported(format!("ecdsa {other}"))),
            },
            KeyData::Rsa(r) => {
                let n = r.n.as_positive_bytes().unwrap_or(&[]);
                let bits = rsa_bits(n);
                if bits < MIN_RSA_BITS {
                    return Err(SubjectKeyError::RsaTooSmall { bits });
                }
            }
            other => {
                return Err(SubjectKeyError::Unsupported(
                    other.algorithm().as_str().to_string(),
                ))
            }
        }
        Ok(SubjectKey(ssh_key::PublicKey::new(
            key.key_data().clone(),
            "",
        )))
    }

    /// `SHA256:...` fingerprint, as `ssh-keygen -l` and sshd logs print it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }

    /// Algorithm name, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> String {
        self.0.algorithm().as_str().to_string()
    }

    /// RSA modulus size in bits (RSA keys only).
    pub fn rsa_bits(&self) -> Option<u32> {
        match self.0.key_data() {
            ssh_key::public::KeyData::Rsa(r) => {
                Some(rsa_bits(r.n.as_positive_bytes().unwrap_or(&[])))
            }
            _ => None,
        }
    }

    /// OpenSSH one-line form.
    pub fn to_openssh(&self) -> String {
        self.0.to_openssh().unwrap_or_default()
    }
}

fn rsa_bits(n: &[u8]) -> u32 {
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    match n.first() {
        Some(first) => (n.len() as u32 - 1) * 8 + (8 - first.leading_zeros()),
        None => 0,
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectKey({})", self.fingerprint())
    }
}

/// User or host certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertKind {
    /// For a client logging in (`TrustedUserCAKeys`).
    #[default]
    User,
    /// For a server proving its identity (`@cert-authority`).
    Host,
}

impl CertKind {
    /// `user` or `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::User => "user",
            CertKind::Host => "host",
        }
    }
}

/// Hard ceiling on any host certificate lifetime.
pub const MAX_HOST_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Everything a certificate will say, decided by policy before minting.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// User or host certificate.
    pub kind: CertKind,
    /// The key being certified.
    pub subject: SubjectKey,
    /// Serial number, unique for this CA.
    pub serial: u64,
    /// Key ID: links the certificate (and sshd's log line) to its audit record.
    pub key_id: String,
    /// Principals the certificate is valid for.
    pub principals: Vec<Principal>,
    /// Start of validity; already backdated.
    pub valid_after: UnixSecs,
    /// End of validity (exclusive).
    pub valid_before: UnixSecs,
    /// Extensions granted (nothing else is permitted).
    pub extensions: Vec<Extension>,
    /// `force-command` critical option.
    pub force_command: Option<String>,
    /// `source-address` critical option.
    pub source_address: Vec<IpNet>,
}

/// Whether [`key_id`] keeps `c` in a field (anything else becomes `_`).
fn key_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/@=+".contains(c)
}

/// Longest role, issuer and subject fields [`key_id`] keeps, in characters.
const KEY_ID_FIELD_MAX: [usize; 3] = [64, 64, 128];

/// Builds the key ID `mayfly:<role>:<issuer>:<sub>:<serial>`, keeping only
/// characters that are safe in sshd logs and shells.
pub fn key_id(role: &str, issuer: &str, subject: &str, serial: u64) -> String {
    fn clean(s: &str, max: usize) -> String {
        s.chars()
            .take(max)
            .map(|c| if key_id_char(c) { c } else { '_' })
            .collect()
    }
    format!(
        "mayfly:{}:{}:{}:{serial}",
        clean(role, KEY_ID_FIELD_MAX[0]),
        clean(issuer, KEY_ID_FIELD_MAX[1]),
        clean(subject, KEY_ID_FIELD_MAX[2])
    )
}

/// Why `id` cannot be a key ID that mayfly wrote (so `revoke --key-id` or
/// `audit search --key-id` with it would match nothing), or `None` if it
/// can. Key IDs are `mayfly:<role>:<issuer>:<sub>:<serial>` (host
/// certificates: `mayfly-host:...`) with every other character of the
/// subject, `:` included, written as `_`; when the mistake is only that,
/// the message names the key ID mayfly would have written.
pub fn key_id_problem(id: &str) -> Option<String> {
    const SHAPE: &str = "mayfly key ids look like mayfly:ROLE:ISSUER:SUBJECT:SERIAL \
                         (mayfly-host:... for host certificates)";
    let fields: Vec<&str> = id.split(':').collect();
    let prefix = fields.first().copied().unwrap_or("");
    if prefix != "mayfly" && prefix != "mayfly-host" {
        return Some(format!(
            "key id {id:?} does not start with \"mayfly:\"; {SHAPE}"
        ));
    }
    let serial = match fields.last().map(|s| s.parse::<u64>()) {
        Some(Ok(n)) if fields.len() >= 5 => n,
        _ => {
            return Some(format!(
                "key id {id:?} does not end in :SERIAL after role, issuer and subject; {SHAPE}"
            ))
        }
    };
    let (role, issuer, subject) = (fields[1], fields[2], fields[3..fields.len() - 1].join(":"));
    let fits = fields.len() == 5
        && [role, issuer, subject.as_str()]
            .iter()
            .zip(KEY_ID_FIELD_MAX)
            .all(|(f, max)| f.chars().count() <= max && f.chars().all(key_id_char));
    if fits {
        return None;
    }
    let mut written = key_id(role, issuer, &subject, serial);
    if prefix == "mayfly-host" {
        written = written.replacen("mayfly:", "mayfly-host:", 1);
    }
    Some(format!(
        "key id {id:?} cannot exist: mayfly writes every character of a subject other than \
         A-Z a-z 0-9 . _ - / @ = + (including ':') as '_' and keeps at most 128; \
         did you mean {written:?}?"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn principal_injection_attempts_are_refused() {
        for bad in [
            "a,root", "*", "deploy\n", "-oProxy", "", " deploy", "dep loy", "root?",
            "dеploy", // Cyrillic e
            ".hidden", "a\u{0}b",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["deploy", "gh-acme", "svc.backup", "_ci", "user@realm", "a"] {
            assert!(Principal::parse(good).is_ok(), "{good:?} refused");
        }
        assert!(Principal::parse(&"a".repeat(65)).is_err());
    }

    proptest! {
        #[test]
        fn accepted_principals_only_hold_grammar_characters(s in "\\PC{0,80}") {
            if let Ok(p) = Principal::parse(&s) {
                prop_assert!(p.as_str().len() <= MAX_PRINCIPAL_LEN);
                prop_assert!(p.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)));
                prop_assert!(!p.as_str().starts_with(['-', '.', '@']));
            }
        }

        #[test]
        fn key_id_never_holds_separators_from_input(role in ".*", sub in ".*") {
            let k = key_id(&role, "gh", &sub, 7);
            prop_assert!(!k.chars().any(|c| c.is_whitespace() || c == ',' || c.is_control() || c == '"'));
            prop_assert!(k.ends_with(":7"));
            // Whatever the subject, what key_id writes is a possible key id.
            prop_assert_eq!(key_id_problem(&k), None);
        }
    }

    #[test]
    fn key_ids_mayfly_cannot_have_written_are_named_with_the_written_form() {
        let real = key_id("deploy", "github", "repo:acme/api:ref:refs/heads/main", 42);
        assert_eq!(
            real,
            "mayfly:deploy:github:repo_acme/api_ref_refs/heads/main:42"
        );
        assert_eq!(key_id_problem(&real), None);
        assert_eq!(key_id_problem("mayfly-host:nodes:ci:node1:7"), None);
        let p = key_id_problem("mayfly:deploy:github:repo:acme/api:ref:refs/heads/main:42")
            .expect("':' in the subject cannot exist");
        assert!(p.contains(&format!("did you mean {real:?}")), "{p}");
        let p = key_id_problem("mayfly-host:nodes:ci:node 1:7").expect("space");
        assert!(
            p.contains("did you mean \"mayfly-host:nodes:ci:node_1:7\""),
            "{p}"
        );
        let long = format!("mayfly:r:i:{}:1", "a".repeat(129));
        assert!(key_id_problem(&long).is_some());
        for bad in [
            "deploy:github:x:1",
            "mayfly:deploy:github:x",
            "mayfly:a:b:c:-1",
            "",
        ] {
            let p = key_id_problem(bad).expect(bad);
            assert!(
                p.contains("mayfly:ROLE:ISSUER:SUBJECT:SERIAL"),
                "{bad}: {p}"
            );
        }
    }

    #[test]
    fn rsa_bit_count() {
        assert_eq!(rsa_bits(&[0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0, 0x01, 0]), 9);
    }

    // Real keys, made once with OpenSSH 9.2's `ssh-keygen -t dsa`,
    // `-t rsa -b 2048`, `-t rsa -b 3072` and `-t ecdsa -b 521` (no comment),
    // so the refusals below are those a bot offering such a key would see.
    const DSA_1024: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAIVRilbUnvsS1hvMfX3pI9BhEJv4Jhb0LzJ0RmKHof6xPDGOfaDW14KgK8xWkqEK5rsQzjSYrSIkZiHBOrPC+CZVgqjx/RklVhcmrVyepWV1iQdSiAoGzlAdCIqX8uvIihD2KP28lbmKWdnn1Y6R+GR+7Bcc/lFAAVzqt8wOCrCVAAAAFQCY3wFuOuUYK5sypGWpuIFL1PpHLwAAAIANI4GqRFnk1Z010FtdkGNLHD8L2FAeVD5fPePWTh6rHa8/MWBtvwKqR9czeUfVFTKlGiRdXuctzl5X9CplRQ7Ww+t7pqo5DjhYd+dmBl+Qt+tepHdf+Ay0tq3qixf4OsxPm+a+eMyUY7hM+2uBOkB1hRUo4lnHk82rntz5IFcV4AAAAIBtpbgpOaPfM4+bii69d2DdYTa++8gQrjmXWyVX3Dr+CsNlW3GjwJhM2UUbPsDQW7i1agBBJSGP8ymrNwjuJ2oOMkYXvXfHbgOSc7AKuQ7bmuxUHrQ4iZHJ1kAecgOLmCDypJmErVWhVo6sp3u2543Zn3H78eI3gLaph/D60wpqdw==";
    const RSA_2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDed9KD4F9xqd629gIm7+D/MlA8huLvaQZia4Q2+lj8EFbu6z3oOQsTQAbC4SYEdEpoDxvLodyfrtbGcpFO6Y0brDYNHbEgE9W4gJdKRFqvl5vBU20dwKfYg/L4zYt42FMtyCs/jPDRnwbfpINsIHHOHJYUNUVG/QQcZBDiyWT+P80ltcoh3Mcd10AzsHeFSczqbM4z18ehNoMJQiNS1j9YA6Yq2fVdYFauAI+jyLYxTjj8NVFDuWrncCwllqehxsG7Dl5x4NpN99+VNyW6NNEzMUiSEkBJweb/PFwLF8/hA8FhQvzEj1/PVlQptIVoKEinaA+CZ7LzU/xlS07cfN37";
    const RSA_3072: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQDPpOL+efh5yKW/P2KQukOMhMKW7apelE2vr8IA2c2174P1zs97+ZNgjw6mivyzxRvvISAa8iQuuLhPidEHQrIuOJrdNJb+URVW0CdFVIZy9n7LOWclw25E7rtlbZNTpTOkk9WqI0nbuMu/G2egGBEa0rLw9JMVhSstZumdm2TQN+7ctMDPxQoryhw3/WVlq4tOwqoA80ZLkY+ywWtK7SqELxrBj+U/2X5787ywYXO5ZUOmlKdyAdNDL/9HGePDgZvNKc487RQRrqJALUuY0dPoI4mEmQ/9VxkiXmd00V5MllqmZVtgiA/IL71/ZoveTSSQNyy/0kf0Q6juP4m8oCwqRSH8Fvb/ume3J3WunOANCnUKF70lyJxFqvzvzCOSliZUNQ8uuQRWiMzhvWSIGIKbr/WsFaxNl8isJyrDqHYjSYO8Oo0Ca9fx/9UikUHdKJ46Hl5c5rfopAS/XJmu8HvIvQHow525xMikankwF3kBQBx68qX0CqLvUaX0gMDdDUs=";
    const ECDSA_P521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAFNBSzv90i0r0GCNV+5Zkj/dw+cCgZaQgvyeN3ya9989fQw3KFX3FR65GwXy3FSJ2bSfnVHCwH6qn6Vh7fz2JX+4AEQHFbU17QjQWmUTVzhLhc4g4IGxoxnndMhxpLdac+uPKF30Sz7beQ7QYofBvdB8tUvCETyiEx2QTODS4n7vprZLQ==";

    #[test]
    fn dsa_and_small_keys_are_refused() {
        assert_eq!(
            SubjectKey::parse(DSA_1024).map(|k| k.fingerprint()),
            Err(SubjectKeyError::Unsupported("ssh-dss".into()))
        );
        assert_eq!(
            SubjectKey::parse(RSA_2048).map(|k| k.fingerprint()),
            Err(SubjectKeyError::RsaTooSmall { bits: 2048 })
        );
        assert_eq!(
            SubjectKey::parse(ECDSA_P521).map(|k| k.fingerprint()),
            Err(SubjectKeyError::Unsupported("ecdsa nistp521".into()))
        );
        // The boundary: 3072 bits is accepted, with the fingerprint
        // `ssh-keygen -lf` prints for it.
        assert_eq!(
            SubjectKey::parse(RSA_3072).map(|k| k.fingerprint()),
            Ok("SHA256:JXL1M4rWD3k64dRsEGxZ3pEQFFl1LVTF4eLGqvOj36Q".to_string())
        );
        assert!(matches!(
            SubjectKey::parse("ssh-ed25519 AAAA"),
            Err(SubjectKeyError::Malformed(_))
        ));
        assert!(SubjectKey::parse("garbage").is_err());
    }
}
