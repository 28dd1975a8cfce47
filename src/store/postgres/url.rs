//! `[store] url`: a libpq-style `postgres://` URL, read into the client's
//! configuration plus the TLS settings the client does not understand.
//!
//! tokio-postgres knows `sslmode` = `disable`, `prefer` and `require` and
//! refuses `verify-ca`, `verify-full` and `sslrootcert`, which are what a CA
//! should use to reach its database over a network. So both are taken out
//! of the query string here, and the TLS connector ([`super::tls`]) does the
//! verification they ask for. Everything else in the URL (several hosts,
//! `target_session_attrs`, `connect_timeout`, ...) goes to tokio-postgres
//! unchanged.
//!
//! A password in the URL is refused: it would sit in the config file, in
//! shell history and in process lists. It comes from `password_file`, the
//! systemd credential or `$PGPASSWORD` instead ([`super::connect`]).

use std::path::PathBuf;
use std::str::FromStr as _;

/// What `sslmode` asks of the connection, as libpq defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, else plain; the server is not verified
    /// (libpq's default, kept for compatibility).
    Prefer,
    /// TLS always; the server is not verified unless `sslrootcert` is set
    /// (then as `verify-ca`, as libpq does).
    Require,
    /// TLS; the server's certificate must chain to a trusted root.
    VerifyCa,
    /// TLS; as `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, String> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "store.url: sslmode={other:?} is not a mode mayfly knows; use disable, \
                     prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    /// The `sslmode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against trusted roots.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Which certificates a verifying connection trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's trust store (`sslrootcert=system`, or no
    /// `sslrootcert` at all).
    System,
    /// The PEM file named by `sslrootcert`.
    File(PathBuf),
}

/// The URL, split into what the client takes and what mayfly's TLS does.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// The client configuration: hosts, user, database, options. Its
    /// `sslmode` is the nearest one tokio-postgres knows (verifying modes
    /// become `require`, with the check done by our connector).
    pub config: tokio_postgres::Config,
    /// The TLS mode the URL asked for.
    pub ssl: SslMode,
    /// The roots a verifying mode trusts.
    pub roots: Roots,
    /// `host:port,...` and the database, for messages (no user, no password).
    pub display: String,
}

/// Query keys mayfly reads itself or refuses, taken out before the rest of
/// the URL goes to tokio-postgres.
const CONSUMED: [&str; 2] = ["sslmode", "sslrootcert"];
/// libpq keys mayfly does not support, refused by name rather than with the
/// client's "unknown option".
const UNSUPPORTED: [&str; 5] = ["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// Parses `url` (never echoed in errors: it may carry a password).
pub fn parse(url: &str) -> Result<PgTarget, String> {
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("store.url must be a URL starting with postgres:// (or postgresql://)".into());
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut ssl = SslMode::Prefer;
    let mut root_file: Option<String> = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if UNSUPPORTED.contains(&key.as_str()) {
            return Err(format!(
                "store.url: {key} is not supported (client certificates and CRLs); \
                 authenticate with a password and verify the server with sslmode=verify-full"
            ));
        }
        if key == "password" {
            return Err(password_in_url());
        }
        if !CONSUMED.contains(&key.as_str()) {
            kept.push(pair);
            continue;
        }
        let value = decode(v)?;
        match key.as_str() {
            "sslmode" => ssl = SslMode::parse(&value)?,
            _ => {
                if value.is_empty() {
                    return Err("store.url: sslrootcert is empty; name a PEM file of the \
                                CA certificates that sign the server's certificate, or \
                                write sslrootcert=system"
                        .into());
                }
                root_file = Some(value);
            }
        }
    }
    let roots = match root_file.as_deref() {
        None | Some("system") => Roots::System,
        Some(p) => Roots::File(PathBuf::from(p)),
    };
    // libpq: with a root certificate file, `require` verifies the chain.
    if ssl == SslMode::Require && matches!(roots, Roots::File(_)) {
        ssl = SslMode::VerifyCa;
    }
    // The client's own mode: whether to ask for TLS and whether plain is
    // acceptable. Verification is the connector's.
    kept.push(match ssl {
        SslMode::Disable => "sslmode=disable",
        SslMode::Prefer => "sslmode=prefer",
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "sslmode=require",
    });
    let rebuilt = format!("{base}?{}", kept.join("&"));
    let config = tokio_postgres::Config::from_str(&rebuilt).map_err(|e| {
        // The client's message names the bad option, never its value.
        format!("store.url cannot be read: {e}")
    })?;
    if config.get_password().is_some() {
        return Err(password_in_url());
    }
    if config.get_hosts().is_empty() {
        return Err("store.url names no host; write postgres://USER@HOST:5432/DATABASE".into());
    }
    if ssl == SslMode::VerifyFull
        && config
            .get_hosts()
            .iter()
            .any(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)))
    {
        return Err(
            "store.url: sslmode=verify-full needs TCP hosts (a Unix socket has no name to \
                    verify); use sslmode=disable for a local socket"
                .into(),
        );
    }
    let display = display(&config);
    Ok(PgTarget {
        config,
        ssl,
        roots,
        display,
    })
}

fn password_in_url() -> String {
    format!(
        "store.url contains a password; remove it from the URL and put it in a file named by \
         [store] password_file (mode 0600), or in the systemd credential {}, or in ${}",
        crate::config::PG_PASSWORD_CREDENTIAL,
        crate::config::PG_PASSWORD_ENV
    )
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "store.url: a query parameter is not valid UTF-8 after %-decoding".into())
}

/// `host:port,host:port/db`, for messages.
fn display(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports
                .get(i)
                .or_else(|| {
                    if ports.len() == 1 {
                        ports.first()
                    } else {
                        None
                    }
                })
                .copied()
                .unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            }
        })
        .collect();
    format!(
        "postgres://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio_postgres::config::SslMode as ClientMode;

    fn ok(url: &str) -> PgTarget {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn sslmode_is_taken_out_and_mapped_to_what_the_client_knows() {
        for (mode, want, client) in [
            ("disable", SslMode::Disable, ClientMode::Disable),
            ("prefer", SslMode::Prefer, ClientMode::Prefer),
            ("require", SslMode::Require, ClientMode::Require),
            ("verify-ca", SslMode::VerifyCa, ClientMode::Require),
            ("verify-full", SslMode::VerifyFull, ClientMode::Require),
        ] {
            let t = ok(&format!("postgres://mayfly@db:5433/ca?sslmode={mode}"));
            assert_eq!(t.ssl, want, "{mode}");
            assert_eq!(t.config.get_ssl_mode(), client, "{mode}");
            assert_eq!(t.roots, Roots::System);
        }
        let t = ok("postgres://mayfly@db/ca");
        assert_eq!(t.ssl, SslMode::Prefer, "libpq's default");
    }

    #[test]
    fn sslrootcert_names_the_roots_and_makes_require_verify() {
        let t = ok("postgres://m@db/ca?sslmode=verify-full&sslrootcert=/etc/mayfly/pg%20ca.pem");
        assert_eq!(t.roots, Roots::File(PathBuf::from("/etc/mayfly/pg ca.pem")));
        assert_eq!(t.ssl, SslMode::VerifyFull);
        let t = ok("postgres://m@db/ca?sslrootcert=/ca.pem&sslmode=require");
        assert_eq!(
            t.ssl,
            SslMode::VerifyCa,
            "libpq: require + root file = verify-ca"
        );
        let t = ok("postgres://m@db/ca?sslmode=verify-ca&sslrootcert=system");
        assert_eq!(t.roots, Roots::System);
    }

    #[test]
    fn the_rest_of_the_url_reaches_the_client() {
        let t = ok(
            "postgresql://mayfly@db1:5432,db2:5433/mayfly?target_session_attrs=read-write&sslmode=verify-full&connect_timeout=3",
        );
        assert_eq!(t.config.get_user(), Some("mayfly"));
        assert_eq!(t.config.get_dbname(), Some("mayfly"));
        assert_eq!(t.config.get_hosts().len(), 2);
        assert_eq!(t.config.get_ports(), &[5432, 5433]);
        assert_eq!(
            t.config.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(t.display, "postgres://db1:5432,db2:5433/mayfly");
    }

    #[test]
    fn bad_urls_say_what_to_fix_without_echoing_secrets() {
        for (url, needle) in [
            ("postgres://m:s3cret@db/ca", "contains a password"),
            ("postgres://m@db/ca?password=s3cret", "contains a password"),
            ("postgres://m@db/ca?sslmode=verify", "not a mode"),
            ("postgres://m@db/ca?sslcert=/c.pem", "not supported"),
            ("postgres://m@db/ca?sslrootcert=", "sslrootcert is empty"),
            ("mysql://m@db/ca", "postgres://"),
            ("postgres://m@db/ca?bogus_option=s3cret", "cannot be read"),
        ] {
            let e = parse(url).expect_err(url);
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{url}: secret echoed: {e}");
        }
    }
}
