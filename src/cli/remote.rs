//! `--server URL`: administer a CA from an operator's own machine through
//! its admin API, with the operator's own OIDC token, instead of `--config`
//! on the CA host. The CA checks the token against its `[[admin]]` rules
//! (and a TLS client certificate where it requires one) and records the
//! token's identity as the actor; the operator needs no access to the CA's
//! files or database.

use std::path::PathBuf;

use clap::Args;

use mayfly::client::operator::OperatorOptions;
use mayfly::client::token::TokenSource;

/// The options of a command that runs on the CA host (`--config`) or
/// against its admin API (`--server`). Flattened next to a `config` field.
/// Each remote option also conflicts with `config` by name: clap does not
/// enforce `requires = "server"` while `--config`, which conflicts with
/// `--server`, is given.
#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Administer the CA at this URL through its admin API, as the
    /// identity of your own token (instead of --config on the CA host).
    #[arg(long, conflicts_with = "config")]
    server: Option<String>,
    /// With --server: file holding your own OIDC token (else
    /// $MAYFLY_TOKEN, or the CI's token).
    #[arg(long, requires = "server", conflicts_with = "config")]
    token_file: Option<PathBuf>,
    /// With --server: audience to request from CI token endpoints.
    #[arg(
        long,
        requires = "server",
        conflicts_with = "config",
        default_value = "mayfly"
    )]
    audience: String,
    /// With --server: allow plain http to a non-loopback CA (sends the
    /// token in clear).
    #[arg(long, requires = "server", conflicts_with = "config")]
    insecure_http: bool,
    /// With --server: PEM file with the CA certificate(s) that signed the
    /// server's TLS certificate.
    #[arg(long, requires = "server", conflicts_with = "config")]
    ca_file: Option<PathBuf>,
    /// With --server: TLS client certificate (PEM), for a CA whose admin
    /// API requires one (`admin_requires_client_cert`).
    #[arg(long, requires_all = ["server", "client_key"], conflicts_with = "config")]
    client_cert: Option<PathBuf>,
    /// With --server: the client certificate's private key (PEM).
    #[arg(long, requires = "client_cert", conflicts_with = "config")]
    client_key: Option<PathBuf>,
}

/// Where a command acts: on the CA host's database, or through the admin API.
pub enum Target {
    /// `--config FILE`: the CA's mayfly.toml on this host.
    Local(PathBuf),
    /// `--server URL`: the admin API.
    Remote(OperatorOptions),
}

impl RemoteArgs {
    /// The target named by `--config` or `--server` (clap requires one).
    pub fn target(&self, config: Option<PathBuf>) -> anyhow::Result<Target> {
        match (config, &self.server) {
            (Some(c), None) => Ok(Target::Local(c)),
            (None, Some(server)) => Ok(Target::Remote(OperatorOptions {
                server: server.clone(),
                token: TokenSource {
                    token_file: self.token_file.clone(),
                    token_command: None,
                    audience: self.audience.clone(),
                },
                insecure_http: self.insecure_http,
                ca_file: self.ca_file.clone(),
                client_cert: self.client_cert.clone(),
                client_key: self.client_key.clone(),
            })),
            _ => Err(super::exit::fail(
                super::exit::Exit::Usage,
                "name the CA: --config FILE on the CA host, or --server URL with your own token",
            )),
        }
    }
}
