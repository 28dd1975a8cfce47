//! Per-role limits declared in policy: which subject key types a role
//! accepts, the smallest RSA key, where `source-address` may come from, and
//! the request rates the service enforces.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use ipnet::IpNet;

use crate::ca::SubjectKey;

/// The smallest RSA modulus a role may accept; `min_rsa_bits` cannot go lower.
pub const RSA_FLOOR_BITS: u32 = crate::ca::spec::MIN_RSA_BITS;
/// The largest `min_rsa_bits` a role may demand.
pub const RSA_CEILING_BITS: u32 = 16_384;
/// Most addresses a `source_address_claim` may contribute.
pub const MAX_CLAIMED_ADDRESSES: usize = 32;

/// A subject key algorithm mayfly certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    /// `ssh-ed25519`
    Ed25519,
    /// `ecdsa-sha2-nistp256`
    EcdsaP256,
    /// `ecdsa-sha2-nistp384`
    EcdsaP384,
    /// `ssh-rsa` (RSA keys; signatures are SHA-2 in practice)
    Rsa,
}

impl KeyType {
    /// Every type mayfly accepts: the default allowlist.
    pub const ALL: [KeyType; 4] = [
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa,
    ];

    /// The OpenSSH algorithm name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ssh-ed25519",
            KeyType::EcdsaP256 => "ecdsa-sha2-nistp256",
            KeyType::EcdsaP384 => "ecdsa-sha2-nistp384",
            KeyType::Rsa => "ssh-rsa",
        }
    }

    /// Parses an OpenSSH algorithm name.
    pub fn parse(s: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What policy needs to know about a subject key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    /// The OpenSSH algorithm name from the key blob, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// RSA modulus size in bits (RSA keys only).
    pub rsa_bits: Option<u32>,
}

/// Why a public key line could not be read for [`KeyFacts`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFactsError {
    /// Not `<type> <base64>`.
    #[error("not an OpenSSH public key line")]
    NotAKeyLine,
    /// The base64 blob does not decode.
    #[error("the key blob is not base64")]
    Base64,
    /// The blob ends early or has impossible lengths.
    #[error("the key blob is truncated")]
    Truncated,
}

fn read_string<'a>(blob: &mut &'a [u8]) -> Result<&'a [u8], KeyFactsError> {
    let len = blob
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(KeyFactsError::Truncated)?;
    let body = blob.get(4..4 + len).ok_or(KeyFactsError::Truncated)?;
    *blob = &blob[4 + len..];
    Ok(body)
}

fn bits(n: &[u8]) -> u32 {
    match n.iter().position(|b| *b != 0) {
        Some(i) => (n.len() - i - 1) as u32 * 8 + (8 - n[i].leading_zeros()),
        None => 0,
    }
}

impl KeyFacts {
    /// Reads the algorithm (and RSA size) from an OpenSSH public key line.
    pub fn from_openssh(line: &str) -> Result<KeyFacts, KeyFactsError> {
        let b64 = line
            .split_whitespace()
            .nth(1)
            .ok_or(KeyFactsError::NotAKeyLine)?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| KeyFactsError::Base64)?;
        let mut rest = blob.as_slice();
        let alg = read_string(&mut rest)?;
        let algorithm = String::from_utf8_lossy(alg).into_owned();
        let rsa_bits = if algorithm == "ssh-rsa" {
            let _e = read_string(&mut rest)?;
            Some(bits(read_string(&mut rest)?))
        } else {
            None
        };
        Ok(KeyFacts {
            algorithm,
            rsa_bits,
        })
    }

    /// Facts for a key given only by type (and size), for offline tests.
    pub fn declared(algorithm: &str, rsa_bits: Option<u32>) -> KeyFacts {
        KeyFacts {
            algorithm: algorithm.to_string(),
            rsa_bits,
        }
    }
}

impl From<&SubjectKey> for KeyFacts {
    /// The facts of an already parsed and checked subject key, read from
    /// the parsed key (not encoded and decoded again).
    fn from(k: &SubjectKey) -> KeyFacts {
        KeyFacts {
            algorithm: k.algorithm(),
            rsa_bits: k.rsa_bits(),
        }
    }
}

impl fmt::Display for KeyFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rsa_bits {
            Some(b) => write!(f, "{} ({b} bits)", self.algorithm),
            None => f.write_str(&self.algorithm),
        }
    }
}

/// At most `count` requests per `per`, e.g. `"30/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in one period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

/// Longest rate-limit period.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(24 * 3600);

impl FromStr for RateLimit {
    type Err = String;

    /// `N/s`, `N/m`, `N/h`, `N/d` (also `sec`, `min`, `hour`, `day`) or `N/<duration>` like `10/5m`.
    fn from_str(s: &str) -> Result<RateLimit, String> {
        let bad = || {
            format!("{s:?} is not a rate; write requests per period, e.g. \"30/m\", \"100/h\" or \"5/10m\"")
        };
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!(
                "{s:?} allows nothing; remove the role instead, or allow at least 1"
            ));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if per < Duration::from_secs(1) || per > MAX_RATE_PERIOD {
            return Err(format!("{s:?}: the period must be between 1s and 1d"));
        }
        Ok(RateLimit { count, per })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 => write!(f, "{}/s", self.count),
            60 => write!(f, "{}/m", self.count),
            3600 => write!(f, "{}/h", self.count),
            86_400 => write!(f, "{}/d", self.count),
            _ => write!(f, "{}/{}", self.count, humantime::format_duration(self.per)),
        }
    }
}

/// Parses one `source-address` entry: a CIDR or a bare IP address.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    // Made with `ssh-keygen -t rsa -b 3072`, `-t rsa -b 4096`, `-t ed25519`, `-t ecdsa -b 256`.
    pub(crate) const RSA_3072: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQDAXvjRFY7Kt7PLBALYQPHXa9nXj7mMpWZ5kbpErjkoGzEg9y0a5x+karWhZ11a7HxZgSDRjQa4sUAaYHfQF571hFwHW7QrUmPd7jOA306FzK6EUrARXmds6HnGm5YfiUALLlLPAhO+f9ll222Xqm8rGPCc752juJ1ARMnqRuLR1YIcn1qPky70adbH8ptoxUznqZ85BcHKYeCJwmSJiWe1Vb7/+pbrV2Jo4FESBRmT8T6Ov4ng0LzfRXc8ySEklqRjnI9BrW96NUgRUQWVANK7Ps4jvYcNoBUmpSYUplIIwMCIqQU/l0QkyHPfKTuRrHtkPQY8AgC1N2YqyoP5rV+VAweHJLguaCRrtkcEAsPbRdZNyjtocBPWaLlZR1DGTLbVeaC6vwmJqY44eKKfSpJ1rWqtSWp0VE4SRKr7wTF5O7RiFcLb9+KSYZTBj+bIKpUiTquvERHCxpISgwdFrkAWcQOowbgGJS5URNz0PO+ZpBx5DO9UFT4IMDDgPJN/Uj8= t";
    pub(crate) const RSA_4096: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAACAQDEJ1I9uQn671EdcWvncdl7YOQ4r57hxfYksi8k4znytxUVfcXh6pb76vkP7AKSPt/e0QLKtkT2XLm98luzcJKiGe9lboA9rvmXjshSzlFmWyQxa9ECHGMnh97rNbeKWAa5KQaBKqYuBjsndaMeVWVThZbCTIYnBol0BVuL7W+VdKKlRNRKbdwwOJrSEYgD/ED1RxCh81NjwarD2pYh0u6x6vdqYw9xb0iBuP+fb5qpr4/UcXp4YXzEpBvnaVJltxycnYwTuMmkEhIEUD0Qlu1SLRMPSKmR1js/FTcC6hba9+yc4Hix2dYmjfLIGQMYfKkRMZFuAjBS4zq93EzpWL4EHqoafu8BwxhGqeojaG6yDFklHxFyJ3rU38Gh1I28bpr3mpSh9vDI2gsafoGBBI+tlBKioeKdjBhtj9Vs9lU63Fs3QkpiJ+7hvIWMPWcOHyBdllARBeBO1ttjxVNpM2TTLaWhjXfDPID/Ucd8dbmWPOKNv7IxHcvQMvirQZV2sbeqPrD/nGjBuP8ScrxPoluwTaTz3bHcqCBYkvdrwZHUIJHkVIKUgSog7bPlLSo0+WtPBAY91QSxsCq4UuLYZgKkViTsPQAO3Fg6s9l8rAaOhL3bFbgZ/q/1MgI8Ld10uXNMViX6CRs8lCyOfG16dTEvSX2txSJVk7oCUluQ0IWHBQ== t";
    pub(crate) const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBdQOCry2KNuL5tnnUNwPkKHsxpW6duBFXX1qHMN8vLs x";
    pub(crate) const ECDSA_P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBCbMlDZZylGBwVA27SCMhLm9MyRRH8vYMnUZyWg8ECyEs4d/r6s02Zh0NTfDT13zb2ipG46mr4NxluOJX9zhpjI= x";

    #[test]
    fn key_facts_of_a_parsed_key_are_those_of_its_line() {
        for line in [RSA_3072, RSA_4096, ED25519, ECDSA_P256] {
            let key = SubjectKey::parse(line).unwrap();
            assert_eq!(
                KeyFacts::from(&key),
                KeyFacts::from_openssh(line).unwrap(),
                "{line}"
            );
        }
    }

    #[test]
    fn key_facts_read_type_and_rsa_size() {
        let f = KeyFacts::from_openssh(RSA_3072).unwrap();
        assert_eq!(f.algorithm, "ssh-rsa");
        assert_eq!(f.rsa_bits, Some(3072));
        assert_eq!(
            KeyFacts::from_openssh(RSA_4096).unwrap().rsa_bits,
            Some(4096)
        );
        assert_eq!(
            KeyFacts::from_openssh(ECDSA_P256).unwrap(),
            KeyFacts::declared("ecdsa-sha2-nistp256", None)
        );
        assert_eq!(
            KeyFacts::from_openssh(ED25519).unwrap(),
            KeyFacts::declared("ssh-ed25519", None)
        );
        assert_eq!(
            KeyFacts::from_openssh("ssh-ed25519"),
            Err(KeyFactsError::NotAKeyLine)
        );
        assert_eq!(
            KeyFacts::from_openssh("ssh-ed25519 !!!"),
            Err(KeyFactsError::Base64)
        );
        assert_eq!(
            KeyFacts::from_openssh("ssh-rsa AAAAB3NzaC1yc2EAAAAD"),
            Err(KeyFactsError::Truncated)
        );
    }

    #[test]
    fn key_types_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(KeyType::parse(k.as_str()), Some(k));
        }
        assert_eq!(KeyType::parse("ssh-dss"), None);
        assert_eq!(KeyType::parse("ED25519"), None);
    }

    #[test]
    fn rates_parse_units_and_durations() {
        let r: RateLimit = "30/m".parse().unwrap();
        assert_eq!((r.count, r.per), (30, Duration::from_secs(60)));
        assert_eq!(r.to_string(), "30/m");
        assert_eq!(
            "5/10m".parse::<RateLimit>().unwrap().per,
            Duration::from_secs(600)
        );
        assert_eq!(
            "100 / hour".parse::<RateLimit>().unwrap().to_string(),
            "100/h"
        );
        assert_eq!("7/d".parse::<RateLimit>().unwrap().to_string(), "7/d");
        for bad in [
            "30",
            "0/m",
            "-1/m",
            "x/m",
            "30/fortnight",
            "30/2d",
            "30/0s",
            "/m",
            "30/",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nets_parse_as_cidr_or_address() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_net("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        for bad in [
            "10.0.0.0/33",
            "host.example",
            "10.0.0.1,10.0.0.2",
            "",
            " 10.0.0.1",
        ] {
            assert!(parse_net(bad).is_none(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn key_line_reader_never_panics(s in "\\PC{0,200}") {
            let _ = KeyFacts::from_openssh(&s);
        }

        #[test]
        fn key_blob_reader_never_panics(blob in prop::collection::vec(any::<u8>(), 0..64)) {
            let line = format!("x {}", base64::engine::general_purpose::STANDARD.encode(&blob));
            let _ = KeyFacts::from_openssh(&line);
        }

        #[test]
        fn rate_parser_never_panics_and_round_trips(s in "[0-9]{0,6}/[smhd0-9 ]{0,4}") {
            if let Ok(r) = s.parse::<RateLimit>() {
                prop_assert!(r.count >= 1);
                prop_assert_eq!(r.to_string().parse::<RateLimit>(), Ok(r));
            }
        }
    }
}
