//! How a replica reaches PostgreSQL: the URL ([`super::url`]), the TLS
//! connector ([`super::tls`]), the password, session settings, and the
//! connection pool.
//!
//! The password comes from `[store] password_file`, else the systemd
//! credential `mayfly-pg-password`, else `$PGPASSWORD`, else none (for
//! `trust`, `peer` or certificate authentication). A configured file that
//! cannot be read is an error, never a fallback. The password lives in the
//! client configuration only, whose `Debug` redacts it, and no error
//! message carries it.

use std::path::Path;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::url::{self, SslMode};
use crate::ca::keys::{read_secret, SecretError, SecretSources};
use crate::config::{PgSettings, PG_PASSWORD_CREDENTIAL, PG_PASSWORD_ENV};
use crate::store::{OpenMode, StoreError};

/// Connect timeout when the URL sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unacknowledged write may sit on a dead connection before
/// the kernel gives up on it, when the URL sets none: a primary that
/// vanished is noticed in seconds, not after TCP's default of minutes.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// A transaction left open by a replica that stopped answering (a network
/// partition) is ended by the server after this, releasing the chain lock
/// it may hold. mayfly's transactions never wait on anything but the
/// database.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// Everything needed to open connections to the store's database.
#[derive(Clone)]
pub struct Connector {
    /// Client configuration, password included (redacted by its `Debug`).
    pub config: tokio_postgres::Config,
    /// The TLS connector `sslmode` asked for.
    pub tls: MakeRustlsConnect,
    /// `postgres://host:port/db`, for messages.
    pub display: String,
    /// The TLS mode, for the start-up log.
    pub ssl: SslMode,
}

impl Connector {
    /// Whether the connection may cross a network unverified: a mode that
    /// does not check the server, to a host that is not this machine.
    pub fn unverified_remote(&self) -> bool {
        use tokio_postgres::config::Host;
        !self.ssl.verifies()
            && self.config.get_hosts().iter().any(|h| match h {
                Host::Tcp(name) => {
                    name != "localhost"
                        && !name
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
                #[cfg(unix)]
                Host::Unix(_) => false,
            })
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("database", &self.display)
            .field("sslmode", &self.ssl.as_str())
            .finish_non_exhaustive()
    }
}

/// Reads the URL, the TLS settings and the password, and sets the session
/// options every connection of this process gets. `env` looks up
/// environment variables (`CREDENTIALS_DIRECTORY`, `PGPASSWORD`).
pub fn connector(
    pg: &PgSettings,
    mode: OpenMode,
    busy_timeout: Duration,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Connector, StoreError> {
    let target = url::parse(&pg.url).map_err(StoreError::Backend)?;
    let tls = super::tls::connector(target.ssl, &target.roots).map_err(StoreError::Backend)?;
    let mut config = target.config;
    if let Some(pw) = password(pg.password_file.as_deref(), env)? {
        config.password(pw.expose().as_bytes());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("mayfly");
    }
    let mut options = config.get_options().unwrap_or("").to_string();
    // A write that waits longer than this for a lock (the chain head, held
    // by another replica's commit) fails, and the request gets 503.
    options.push_str(&format!(
        " -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        busy_timeout.as_millis().max(1),
        IDLE_IN_TRANSACTION.as_millis()
    ));
    if mode == OpenMode::ReadOnly {
        // Every transaction of a read-only command is refused any write by
        // the server itself. Such a session reports itself read-only, so
        // `target_session_attrs=read-write` would refuse every host of a
        // multi-host URL: a read-only command takes the first host that
        // answers (a standby's copy is a consistent snapshot to read).
        options.push_str(" -c default_transaction_read_only=on");
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
    }
    config.options(options.trim().to_string());
    Ok(Connector {
        config,
        tls,
        display: target.display,
        ssl: target.ssl,
    })
}

/// The password from the first source that has one, or `None`.
fn password(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::ca::keys::Secret>, StoreError> {
    let sources = SecretSources {
        what: "PostgreSQL password",
        file_key: "password_file",
        file,
        credential: PG_PASSWORD_CREDENTIAL,
        env_var: PG_PASSWORD_ENV,
    };
    match read_secret(&sources, env) {
        Ok(s) => Ok(Some(s)),
        Err(SecretError::Missing { .. }) => Ok(None),
        Err(e) => Err(StoreError::Backend(format!(
            "{e} (set by [store] password_file, the systemd credential \
             {PG_PASSWORD_CREDENTIAL} or ${PG_PASSWORD_ENV})"
        ))),
    }
}

/// The pool of `size` connections; connections are opened on demand, on
/// the runtime that asks for them.
pub fn pool(c: &Connector, size: usize, wait: Duration) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        c.config.clone(),
        c.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let connect = c
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT);
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait.max(Duration::from_millis(100))))
        .create_timeout(Some(connect))
        .recycle_timeout(Some(connect))
        .build()
        .map_err(|e| StoreError::Backend(format!("postgres: building the connection pool: {e}")))
}

/// Why a connection attempt failed, with what to fix when the server said
/// (no password, wrong password, no such database).
pub fn explain_connect(display: &str, e: &tokio_postgres::Error) -> String {
    let base = super::db::describe(e);
    let hint = match e.code().map(|c| c.code()) {
        Some("28P01") | Some("28000") => format!(
            "; check the user in store.url and the password (from [store] password_file, the \
             systemd credential {PG_PASSWORD_CREDENTIAL} or ${PG_PASSWORD_ENV})"
        ),
        Some("3D000") => "; create the database first (CREATE DATABASE ... OWNER ...)".into(),
        _ if base.contains("password missing") => format!(
            "; the server asks for a password: put it in the file named by [store] \
             password_file, the systemd credential {PG_PASSWORD_CREDENTIAL} or ${PG_PASSWORD_ENV}"
        ),
        _ => String::new(),
    };
    format!("cannot connect to {display}: {base}{hint}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(file: Option<&Path>) -> PgSettings {
        PgSettings {
            url: "postgres://mayfly@127.0.0.1:1/ca?sslmode=disable".into(),
            password_file: file.map(Path::to_path_buf),
            pool_size: 4,
        }
    }

    #[test]
    fn the_password_comes_from_file_then_credential_then_env_and_is_never_shown() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("pw");
        let cred = d.path().join(PG_PASSWORD_CREDENTIAL);
        std::fs::write(&file, "from-file-s3cret\n").unwrap();
        std::fs::write(&cred, "from-cred-s3cret").unwrap();
        #[cfg(unix)]
        for f in [&file, &cred] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let dir = d.path().display().to_string();
        let env = |k: &str| match k {
            "CREDENTIALS_DIRECTORY" => Some(dir.clone()),
            "PGPASSWORD" => Some("from-env-s3cret".to_string()),
            _ => None,
        };
        let pw =
            |c: &Connector| String::from_utf8(c.config.get_password().unwrap().to_vec()).unwrap();
        let c = connector(
            &settings(Some(&file)),
            OpenMode::Create,
            Duration::from_secs(2),
            &env,
        )
        .unwrap();
        assert_eq!(pw(&c), "from-file-s3cret");
        assert!(!format!("{c:?} {:?}", c.config).contains("s3cret"));
        let c = connector(
            &settings(None),
            OpenMode::Create,
            Duration::from_secs(2),
            &env,
        )
        .unwrap();
        assert_eq!(pw(&c), "from-cred-s3cret");
        let only_env = |k: &str| (k == "PGPASSWORD").then(|| "from-env-s3cret".to_string());
        let c = connector(
            &settings(None),
            OpenMode::Create,
            Duration::from_secs(2),
            &only_env,
        )
        .unwrap();
        assert_eq!(pw(&c), "from-env-s3cret");
        let c = connector(
            &settings(None),
            OpenMode::Create,
            Duration::from_secs(2),
            &|_| None,
        )
        .unwrap();
        assert!(c.config.get_password().is_none(), "no source: no password");
    }

    #[test]
    fn an_unreadable_password_file_is_an_error_not_a_fallback() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let env = |k: &str| (k == "PGPASSWORD").then(|| "from-env-s3cret".to_string());
        let e = connector(
            &settings(Some(&missing)),
            OpenMode::Create,
            Duration::from_secs(2),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("PostgreSQL password") && e.contains("nope"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let open = d.path().join("world");
            std::fs::write(&open, "s3cret").unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = connector(
                &settings(Some(&open)),
                OpenMode::Create,
                Duration::from_secs(2),
                &env,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("chmod"), "{e}");
        }
    }

    #[test]
    fn sessions_get_lock_timeout_and_read_only_commands_read_only_transactions() {
        let c = connector(
            &settings(None),
            OpenMode::ReadOnly,
            Duration::from_secs(3),
            &|_| None,
        )
        .unwrap();
        let o = c.config.get_options().unwrap();
        assert!(o.contains("lock_timeout=3000"), "{o}");
        assert!(o.contains("default_transaction_read_only=on"), "{o}");
        let c = connector(
            &settings(None),
            OpenMode::Create,
            Duration::from_secs(3),
            &|_| None,
        )
        .unwrap();
        assert!(!c.config.get_options().unwrap().contains("read_only"));
    }
}
