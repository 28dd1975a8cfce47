//! `mayfly serve`: load config, policy, keys and store, then serve HTTP until
//! SIGINT/SIGTERM, draining in-flight requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, AppState};
use crate::auth::Verifier;
use crate::ca;
use crate::ca::rotation::KeyRing;
use crate::config::files;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy;
use crate::service::KeyLoader;
use crate::service::{Service, ServiceParts};
use crate::store::{OpenMode, StoreConfig};

pub mod connections;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The web console cannot be set up (`[console]`).
    #[error("{0}")]
    Console(String),
    /// `[hosts] expected_file` cannot be read or holds something else
    /// than host names.
    #[error("[hosts] {0}, refusing to start")]
    ExpectedHosts(String),
    /// Data directory problem.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Invalid policy: refuse to start.
    #[error("policy in {dir} is invalid, refusing to start:\n{errors}")]
    Policy {
        /// The policy directory.
        dir: PathBuf,
        /// One line per error.
        errors: String,
    },
    /// CA key problem.
    #[error(transparent)]
    Key(#[from] ca::KeyFileError),
    /// CA key ring problem (e.g. an interrupted rotation).
    #[error("CA keys: {0}")]
    Rotation(String),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS set-up failed, or plain HTTP off loopback was not allowed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The audit key, sinks or stream could not be set up.
    #[error(transparent)]
    Audit(#[from] crate::evidence::stream::StreamError),
    /// Another `mayfly serve` holds the data directory.
    #[error("data directory {} is in use by another mayfly serve{}: one data directory serves one server (two would issue twice for one token); stop that one, or give this one its own data_dir (replicas on PostgreSQL each have their own)", path.display(), holder.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    DataDirInUse {
        /// The directory.
        path: PathBuf,
        /// The pid the holder wrote into the lock file, if readable.
        holder: Option<String>,
    },
    /// This replica's id file could not be read or written.
    #[error("replica id: {0}")]
    ReplicaId(#[from] crate::replica::ReplicaIdError),
    /// Other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn ensure_data_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    if !dir.is_dir() {
        return Err(err(std::io::Error::other("not a directory")));
    }
    Ok(())
}

/// Takes `data_dir/serve.lock` for this server, or refuses: a second
/// server on one data directory (one SQLite database, one in-memory replay
/// set) would accept a token that the first one already used. The lock is
/// advisory (flock) and goes with the process; keep the file open while
/// serving.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    ensure_data_dir(dir)?;
    let path = dir.join(files::SERVE_LOCK);
    let err = |source| StartError::DataDir {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    use rustix::fs::{flock, FlockOperation};
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().chars().take(20).collect::<String>())
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
            return Err(StartError::DataDirInUse {
                path: dir.to_path_buf(),
                holder,
            });
        }
        Err(e) => return Err(err(e.into())),
    }
    file.set_len(0).map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

async fn load_ring(
    cfg: &Config,
    loader: &KeyLoader,
    base: &str,
    pub_name: &str,
    what: &str,
) -> Result<KeyRing, StartError> {
    let (ring, created) = loader
        .load_or_create(base)
        .await
        .map_err(|e| StartError::Rotation(e.to_string()))?;
    if created {
        tracing::info!(key = %ring.active.describe(), fingerprint = %ring.active.fingerprint(),
            "generated a new {what} CA key");
    }
    ca::keys::write_atomic(
        &cfg.data_dir.join(pub_name),
        ring.public_lines(base).as_bytes(),
        0o644,
    )?;
    Ok(ring)
}

/// Loads the policy directory or explains every problem.
pub fn load_policy(dir: &Path, cfg: &Config) -> Result<policy::Policy, StartError> {
    policy::load::load_for_issuers(dir, &cfg.issuer_names()).map_err(|e| StartError::Policy {
        dir: e.dir,
        errors: e.errors,
    })
}

/// Builds the service from config (keys, policy, store), without listening.
pub async fn build(cfg: &Config) -> Result<Service, StartError> {
    let (service, audit) = build_with_audit(cfg).await?;
    // Runs until the process exits.
    audit.detach();
    Ok(service)
}

/// As [`build`], also returning the audit stream (sinks, checkpoints) so
/// that `serve` can stop it cleanly, with a final signed checkpoint.
pub async fn build_with_audit(
    cfg: &Config,
) -> Result<(Service, crate::evidence::stream::AuditStream), StartError> {
    ensure_data_dir(&cfg.data_dir)?;
    let policy = load_policy(&cfg.policy_dir, cfg)?;
    if let Some(w) = ca::keys::at_rest_warning(&cfg.ca) {
        tracing::warn!("{w}");
    }
    let store = crate::store::open(&StoreConfig::from_config(cfg, OpenMode::Create))?;
    // Keys come from the store: the first process on an empty store
    // creates them, every later one (another replica) loads them.
    let key_loader = KeyLoader::new(&cfg.ca, &cfg.data_dir, store.keys_shared())
        .map_err(|e| StartError::Rotation(e.to_string()))?;
    let user_keys = load_ring(
        cfg,
        &key_loader,
        files::USER_CA_KEY,
        files::USER_CA_PUB,
        "user",
    )
    .await?;
    let host_keys = load_ring(
        cfg,
        &key_loader,
        files::HOST_CA_KEY,
        files::HOST_CA_PUB,
        "host",
    )
    .await?;
    // The one clock of this server; everything below asks it for the time.
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock::new());
    // Serials above every recorded one, used tokens restored from the log.
    store
        .counters()
        .start(crate::clock::unix_secs(clock.now()))
        .await?;
    // With replicas on one database, one audit key in the database for
    // all of them; else the file in data_dir.
    let audit = match key_loader
        .audit_key()
        .await
        .map_err(|e| StartError::Rotation(format!("audit checkpoint key: {e}")))?
    {
        Some((key, created)) => {
            if created {
                tracing::info!(fingerprint = %key.fingerprint(),
                    "generated the audit checkpoint key in the database; keep a copy of its \
                     public line (`mayfly audit verify` prints it) off the database for \
                     `mayfly audit verify --key`");
            }
            crate::evidence::stream::AuditStream::start_with_key(
                &cfg.audit,
                key,
                store.audit_shared(),
                clock.clone(),
            )?
        }
        None => crate::evidence::stream::AuditStream::start(
            &cfg.audit,
            &cfg.data_dir,
            store.audit_shared(),
            clock.clone(),
        )?,
    };
    store.audit().on_commit(audit.hook());
    let audit_log = store.audit_shared();
    let http = crate::auth::jwks::issuer_http_client().map_err(std::io::Error::other)?;
    let fleet = crate::store::hosts::Fleet::new(store.clone(), &cfg.hosts);
    fleet
        .expected()
        .map_err(|e| StartError::ExpectedHosts(e.to_string()))?;
    let metrics = Arc::new(
        Metrics::for_data_dir(&cfg.data_dir, store.reports_shared())
            .with_keys(store.keys_shared())
            .with_replicas(store.replicas_shared())
            .with_approvals(store.approvals_shared())
            .with_audit_stream(audit.stats(), store.audit_shared())
            .with_process_stats()
            .with_hosts(fleet.clone()),
    );
    let verifier = Verifier::new(&cfg.issuers, http, metrics.jwks(), clock.clone());
    tracing::info!(roles = policy.roles.len(), digest = %policy.digest, dir = %cfg.policy_dir.display(), "policy loaded");
    let service = Service::new(ServiceParts {
        verifier,
        policy,
        user_keys,
        host_keys,
        key_loader: Some(key_loader),
        store,
        backdate: cfg.backdate,
        metrics,
        admins: cfg.admins.clone(),
        clock: Arc::new(crate::clock::SystemClock::new()),
    })
    .with_error_detail(cfg.error_detail)
    .with_fleet(fleet);
    let notifier = crate::service::webhook::Notifier::new(
        cfg.approval_webhook.clone(),
        audit_log,
        Arc::new(crate::clock::SystemClock::new()),
    )
    .map_err(std::io::Error::other)?;
    let service = service.with_approval_webhook(Arc::new(notifier));
    service
        .load_group_keys(&service.policy())
        .await
        .map_err(|e| StartError::Rotation(e.to_string()))?;
    Ok((service, audit))
}

/// The web console's routes when `[console]` is configured: its OIDC
/// client (with the client secret read from `client_secret_file`) on the
/// same service. Without `[console]` there are none and `/console/` is 404.
fn console_router(
    cfg: &Config,
    service: &Arc<Service>,
) -> Result<Option<axum::Router>, StartError> {
    let Some(cc) = &cfg.console else {
        return Ok(None);
    };
    let issuer = cfg
        .issuers
        .iter()
        .find(|i| i.name == cc.issuer)
        .ok_or_else(|| {
            StartError::Console(format!(
                "[console] issuer {:?} is not an [[issuer]]",
                cc.issuer
            ))
        })?;
    let secret = match &cc.client_secret_file {
        None => None,
        Some(path) => {
            let s = std::fs::read_to_string(path).map_err(|e| {
                StartError::Console(format!(
                    "[console] client_secret_file {}: {e}",
                    path.display()
                ))
            })?;
            let s = s.trim().to_string();
            if s.is_empty() {
                return Err(StartError::Console(format!(
                    "[console] client_secret_file {} is empty",
                    path.display()
                )));
            }
            Some(s)
        }
    };
    let http = crate::auth::jwks::issuer_http_client().map_err(std::io::Error::other)?;
    let oidc = crate::console::oidc::OidcClient::new(
        cc,
        issuer,
        secret,
        http,
        service.metrics().jwks(),
        Arc::new(crate::clock::SystemClock::new()),
    );
    let console = crate::console::Console::new(cc, service.clone(), oidc, cfg.tls.is_some());
    tracing::info!(issuer = %cc.issuer, redirect_uri = %cc.redirect_uri(), "web console on /console/");
    Ok(Some(crate::console::router(Arc::new(console))))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down; draining in-flight requests");
}

/// Runs the CA until a shutdown signal.
pub async fn serve(cfg: Config) -> Result<(), StartError> {
    use crate::tls::{self, Transport};
    // Refuse a clear-text network listener and unusable TLS files before
    // anything is created on disk.
    let transport = tls::check_listen(cfg.listen, cfg.tls.is_some(), cfg.insecure_http)?;
    let server_tls = cfg.tls.as_ref().map(tls::ServerTls::load).transpose()?;
    // Held until serve returns (the process then exits).
    let _data_dir_lock = lock_data_dir(&cfg.data_dir)?;
    let (service, audit) = build_with_audit(&cfg).await?;
    let (replica, new_id) =
        crate::replica::ReplicaId::load_or_create(&cfg.data_dir, &mut rand_core::OsRng)?;
    if new_id {
        tracing::info!(replica = %replica, "generated this replica's id (data_dir/replica_id)");
    }
    let service = Arc::new(service);
    let listener = connections::bind(cfg.listen).map_err(|source| StartError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let addr = listener.local_addr()?;
    {
        let s = service.clone();
        tokio::spawn(async move {
            for (name, e) in s.verifier().warm().await {
                tracing::warn!(issuer = %name, error = %e,
                    "issuer keys not available yet; its tokens get 503 until a fetch succeeds");
            }
        });
    }
    // The first heartbeat is stored before the first request is served,
    // so `mayfly status` lists a server as soon as it answers.
    let heartbeats = crate::heartbeat::Heartbeats::start(
        service.clone(),
        crate::heartbeat::Settings {
            replica: replica.clone(),
            listen: addr.to_string(),
            interval: cfg.heartbeat_interval,
            policy_dir: cfg.policy_dir.clone(),
        },
    )
    .await;
    crate::reload::spawn_watcher(service.clone(), cfg.clone(), move || heartbeats.beat_now());
    {
        let s = service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                s.flush_refusal_summary(s.clock().now()).await;
            }
        });
    }
    let pub_path = cfg.data_dir.join(files::USER_CA_PUB);
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        listen = %addr,
        replica = %replica,
        user_ca = %service.user_keys().active.fingerprint(),
        "mayfly CA serving on {scheme}://{addr}"
    );
    match transport {
        Transport::InsecureHttp => tracing::warn!(
            "DANGER: insecure_http: serving plain HTTP on {addr}, which is not a loopback \
             address. Bearer tokens and certificates cross the network in clear and can be \
             stolen or replaced. Configure [tls] cert_file and key_file instead."
        ),
        Transport::Https if cfg.insecure_http => {
            tracing::info!("insecure_http has no effect: TLS is configured")
        }
        _ => {}
    }
    tracing::info!(
        "user CA public key: {} (also GET {scheme}://{addr}/v1/ca/user.pub). Point sshd at it: \
         curl -fsS {scheme}://{addr}/v1/ca/user.pub > /etc/ssh/mayfly_user_ca.pub and add \
         `TrustedUserCAKeys /etc/ssh/mayfly_user_ca.pub` to sshd_config",
        pub_path.display()
    );
    if let Some(w) = connections::descriptor_limit_warning(
        cfg.max_connections,
        connections::descriptor_soft_limit(),
    ) {
        tracing::warn!("{w}");
    }
    let limits = connections::Limits {
        header_read_timeout: cfg.header_read_timeout,
        max_connections: cfg.max_connections,
        write_stall_timeout: cfg.request_timeout,
    };
    let stats = service.metrics().connections();
    let state = AppState {
        service,
        request_timeout: cfg.request_timeout,
        admin_requires_client_cert: cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.admin_requires_client_cert),
    };
    let service = state.service.clone();
    let mut app = api::router(state, cfg.max_body_bytes);
    if let Some(console) = console_router(&cfg, &service)? {
        app = app.merge(console);
    }
    connections::serve(listener, server_tls, app, limits, stats, shutdown_signal()).await?;
    service.finish_refusal_summary(service.clock().now()).await;
    drop(service);
    // Stream what is left to the sinks and sign the final head.
    let _ = tokio::task::spawn_blocking(move || audit.shutdown()).await;
    Ok(())
}
