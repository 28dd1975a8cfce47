//! `mayfly status`: the replicas of this CA, from their heartbeats in the
//! store, and whether the live ones enforce the same policy.
//!
//! Exit codes: 0 when at least one replica is live and all live replicas
//! enforce the same policy; 9 for policy drift (live replicas enforce
//! different policy digests); 5 when no replica is live (see `exit`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use mayfly::replica::{Health, StatusReport, LIVE_INTERVALS};
use mayfly::time::UnixSecs;

use super::exit::Exit;
use super::load_config;

/// `mayfly status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The CA's mayfly.toml (any replica's: they share the store; or --server).
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    #[command(flatten)]
    remote: super::remote::RemoteArgs,
    /// JSON output (the same as GET /v1/admin/replicas).
    #[arg(long)]
    json: bool,
}

/// Runs `mayfly status`.
pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let report = match a.remote.target(a.config)? {
        super::remote::Target::Local(config) => {
            let cfg = load_config(&config)?;
            mayfly::heartbeat::load_status(&cfg, UnixSecs::of(std::time::SystemTime::now()))?
        }
        super::remote::Target::Remote(opts) => {
            super::runtime()?.block_on(mayfly::client::operator::replicas(&opts))?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(match report.status {
        Health::Ok => ExitCode::SUCCESS,
        Health::PolicyDrift => Exit::Drift.into(),
        Health::NoLiveReplica => Exit::Unavailable.into(),
    })
}

/// Shortened digests and commits for the table (the JSON has them whole).
fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// The table of replicas, then the verdict.
fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    if r.replicas.is_empty() {
        out.push_str(
            "no replica has sent a heartbeat to this store yet (mayfly serve of this version \
             sends one at start)\n",
        );
    } else {
        out.push_str(&format!(
            "{:<32} {:<6} {:<9} {:<12} {:<12} {:<21} {:>10}\n",
            "REPLICA", "STATE", "VERSION", "POLICY", "GIT COMMIT", "LISTEN", "LAST SEEN"
        ));
        for s in &r.replicas {
            let b = &s.beat;
            let age = humantime::format_duration(Duration::from_secs(s.age_secs));
            out.push_str(&format!(
                "{:<32} {:<6} {:<9} {:<12} {:<12} {:<21} {:>10}\n",
                b.replica.as_str(),
                if s.live { "live" } else { "stale" },
                b.version,
                short(&b.policy_digest),
                short(b.git_commit.as_deref().unwrap_or("-")),
                b.listen,
                format!("{age} ago"),
            ));
        }
    }
    match r.status {
        Health::Ok => {
            let digest = r.policy_digests.first().map(String::as_str).unwrap_or("");
            out.push_str(&format!(
                "ok: {} live replica(s), all enforcing policy {digest}\n",
                r.live_replicas
            ));
        }
        Health::PolicyDrift => {
            out.push_str(&format!(
                "POLICY DRIFT: the {} live replicas enforce {} different policies:\n",
                r.live_replicas,
                r.policy_digests.len()
            ));
            for d in &r.policy_digests {
                let on: Vec<&str> = r.live_on(d).map(|s| s.beat.replica.as_str()).collect();
                out.push_str(&format!("  {d}  {}\n", on.join(", ")));
            }
            out.push_str(
                "  deploy the same policy_dir to every replica; each reloads it on its own \
                 (or on SIGHUP)\n",
            );
        }
        Health::NoLiveReplica => out.push_str(&format!(
            "NO LIVE REPLICA: none sent a heartbeat within {LIVE_INTERVALS} of its heartbeat \
             intervals; is mayfly serve running on this store?\n"
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mayfly::replica::{Heartbeat, ReplicaId};

    fn beat(id: &str, digest: &str, last_seen: u64) -> Heartbeat {
        Heartbeat {
            replica: ReplicaId::parse(id).unwrap(),
            version: "0.1.0".into(),
            policy_digest: digest.into(),
            git_commit: None,
            listen: "127.0.0.1:8400".into(),
            started_at: UnixSecs(1),
            last_seen: UnixSecs(last_seen),
            interval_secs: 10,
        }
    }

    #[test]
    fn the_table_names_state_and_drift_with_every_digest_in_full() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let r = StatusReport::new(
            vec![
                beat("ca-1", &a, 995),
                beat("ca-2", &b, 990),
                beat("ca-3", &b, 100),
            ],
            UnixSecs(1_000),
        );
        let t = render(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("REPLICA"), "{t}");
        assert!(
            lines[1].starts_with("ca-1")
                && lines[1].contains(" live ")
                && lines[1].contains("5s ago"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("ca-3")
                && lines[3].contains(" stale ")
                && lines[3].contains("15m ago"),
            "{t}"
        );
        assert!(
            lines[1].contains(&"a".repeat(12)) && !lines[1].contains(&"a".repeat(13)),
            "{t}"
        );
        assert!(
            t.contains("POLICY DRIFT: the 2 live replicas enforce 2 different policies"),
            "{t}"
        );
        assert!(t.contains(&format!("  {a}  ca-1\n")), "{t}");
        assert!(t.contains(&format!("  {b}  ca-2\n")), "{t}");
    }
}
