//! The `mayfly` command: parses arguments and hands each command group to
//! its file in `cli/`. The library (`mayfly::...`) returns data and typed
//! errors; printing, exit codes, clap and anyhow live in the binary only.

mod cli;

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: a certificate request allocates many
/// small, short-lived buffers on the async workers, and glibc's
/// malloc/free (arena locks, consolidation) cost about a tenth of the
/// server's CPU per certificate under load (`mayfly bench --tls`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Ephemeral SSH certificate authority for machines.
#[derive(Parser)]
#[command(name = "mayfly", version, about)]
struct Cli {
    /// More output on stderr (bot commands are quiet by default).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the CA (embedded defaults without --config).
    Serve(cli::serve::ServeArgs),
    /// Validate or try out policy files.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCmd),
    /// Get a fresh key and certificate into a directory.
    Cert(cli::cert::CertArgs),
    /// Get an in-memory key and certificate and run ssh with them.
    Ssh(cli::cert::SshArgs),
    /// Run a whole job (ssh, scp, rsync, git, ansible...) with an in-memory
    /// key and certificate in an agent, renewed while it runs.
    Exec(cli::cert::ExecArgs),
    /// Revoke certificates on the CA host; the next /v1/krl includes them.
    Revoke(cli::revoke::RevokeArgs),
    /// Just-in-time approvals: list, approve, deny (with your own OIDC token).
    #[command(subcommand)]
    Request(cli::request::RequestCmd),
    /// Tamper-evident audit log: verify the chain, export for a SIEM, search.
    #[command(subcommand)]
    Audit(cli::audit::AuditCmd),
    /// Compliance evidence and access reviews from this CA's live data.
    #[command(subcommand)]
    Report(cli::report::ReportCmd),
    /// CA keys: rotation and status.
    #[command(subcommand)]
    Ca(cli::ca::CaCmd),
    /// The CA's store: move a stopped CA into another one (SQLite to PostgreSQL).
    #[command(subcommand)]
    Store(cli::store::StoreCmd),
    /// Disable, enable and list identities and roles.
    #[command(subcommand)]
    Identity(cli::identity::IdentityCmd),
    /// Host side: sync CA keys and KRL, get host certificates.
    #[command(subcommand)]
    Host(cli::host::HostCmd),
    /// Print @cert-authority lines for known_hosts from the CA's host keys.
    KnownHosts(cli::host::KnownHostsArgs),
    /// Measure certificates/s through the full path on loopback.
    Bench(cli::bench::BenchArgs),
    /// The replicas of this CA: version, policy digest, last heartbeat, drift.
    Status(cli::status::StatusArgs),
    /// The hosts that report after `mayfly host sync`: KRL lag, stale hosts.
    Hosts(cli::hosts::HostsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mayfly: {e:#}");
            cli::exit::classify(&e).into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let v = cli.verbose;
    match cli.cmd {
        Cmd::Serve(a) => cli::serve::run(a),
        Cmd::Policy(cmd) => cli::policy::run(cmd),
        Cmd::Cert(a) => cli::cert::run_cert(a, v),
        Cmd::Ssh(a) => cli::cert::run_ssh(a, v),
        Cmd::Exec(a) => cli::cert::run_exec(a, v),
        Cmd::Revoke(a) => cli::revoke::run(a, v),
        Cmd::Request(cmd) => cli::request::run(cmd, v),
        Cmd::Audit(cmd) => cli::audit::run(cmd),
        Cmd::Report(cmd) => cli::report::run(cmd),
        Cmd::Store(cmd) => cli::store::run(cmd),
        Cmd::Ca(cmd) => cli::ca::run(cmd, v),
        Cmd::Identity(cmd) => cli::identity::run(cmd, v),
        Cmd::Host(cmd) => cli::host::run(cmd, v),
        Cmd::KnownHosts(a) => cli::host::run_known_hosts(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Status(a) => cli::status::run(a),
        Cmd::Hosts(a) => cli::hosts::run(a),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_tree_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
