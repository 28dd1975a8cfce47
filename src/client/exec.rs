//! `mayfly exec`: a whole job under one identity. mayfly makes a key in
//! memory, gets it certified, serves it from its in-process agent and runs
//! the job with `SSH_AUTH_SOCK` pointing there, so `ssh`, `scp`, `sftp`,
//! `rsync`, `git` and `ansible` all use it without a key file.
//!
//! While the job runs, a renewal task replaces key and certificate before
//! the certificate expires (at `renew_at` of its lifetime): a fresh token
//! from the same source, a fresh key, and a proof signed by the current key
//! ([`crate::ca::renewal`]), so a role that needed approval is renewed
//! inside that approval without asking a person again. The agent swaps the
//! identity atomically; open connections are not touched.
//!
//! A failed renewal is reported on stderr once per failure and retried
//! with backoff until the certificate expires; the job is never killed for
//! it. mayfly forwards the signals it gets to the job and exits with the
//! job's exit code; the agent socket and the keys go with it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::agent::{Agent, AgentIdentity};
use super::{fresh_key, request_cert_as, CertAnswer, CertOptions, ClientError, Renewal};

/// Default point of a certificate's lifetime at which it is renewed.
pub const DEFAULT_RENEW_AT: f64 = 0.67;
/// First wait after a failed renewal; doubled per failure up to
/// [`MAX_BACKOFF`], never past the certificate's expiry.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where `--json` facts go.
#[derive(Debug, Clone)]
pub enum FactsOut {
    /// One JSON line per certificate on stderr.
    Stderr,
    /// Appended, one JSON line per certificate, to this file.
    File(PathBuf),
}

/// What `mayfly exec` was asked to do.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The certificate request (server, role, token source...).
    pub cert: CertOptions,
    /// Fraction of the lifetime after which to renew (0.1 to 0.9).
    pub renew_at: f64,
    /// Certificate facts as JSON lines, for job logs.
    pub facts: Option<FactsOut>,
}

/// The facts `--json` prints for each certificate.
#[derive(Debug, Serialize)]
struct Facts<'a> {
    event: &'a str,
    serial: u64,
    key_id: &'a str,
    principals: &'a [String],
    valid_after: String,
    valid_before: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_request: Option<&'a str>,
}

/// The identity the job holds now: what a renewal proves and replaces.
struct Held {
    key: ssh_key::PrivateKey,
    answer: CertAnswer,
    approval: Option<String>,
    /// When the certificate arrived (unix seconds).
    received: u64,
}

/// Runs `program` with `args` under a renewed certificate; returns its
/// exit code (128 + signal if it was killed).
pub async fn exec(opts: &ExecOptions, program: &str, args: &[String]) -> Result<i32, ClientError> {
    let key = fresh_key()?;
    let (answer, cert, approval) = request_cert_as(&opts.cert, &key, None).await?;
    report(opts, "issued", &answer, approval.as_deref())?;
    let agent = Arc::new(
        Agent::spawn(
            AgentIdentity {
                private_key: key.clone(),
                certificate: cert,
            },
            expiry(&answer),
        )
        .map_err(|source| ClientError::Io {
            what: "starting the in-process ssh agent".into(),
            source,
        })?,
    );
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("SSH_AUTH_SOCK", agent.socket_path())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ClientError::Io {
            what: format!("running {program}"),
            source,
        })?;
    tracing::debug!(serial = answer.serial, key_id = %answer.key_id, program, "certificate obtained; job started");
    let renewer = tokio::spawn(renew_forever(
        opts.clone(),
        Arc::clone(&agent),
        Held {
            key,
            answer,
            approval,
            received: now(),
        },
    ));
    let status = wait_forwarding_signals(&mut child).await;
    renewer.abort();
    // The renewer held the other reference: once it is gone, this drop
    // stops the agent and removes the socket and its directory.
    let _ = renewer.await;
    drop(agent);
    let status = status.map_err(|source| ClientError::Io {
        what: format!("waiting for {program}"),
        source,
    })?;
    Ok(super::exit_code(status))
}

/// Waits for the child, passing on SIGTERM, SIGINT, SIGHUP, SIGQUIT,
/// SIGUSR1 and SIGUSR2 that mayfly receives, so a CI runner that stops
/// the job stops the command in it, and mayfly outlives it to clean up.
async fn wait_forwarding_signals(
    child: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    use rustix::process::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), Signal::TERM),
        (SignalKind::interrupt(), Signal::INT),
        (SignalKind::hangup(), Signal::HUP),
        (SignalKind::quit(), Signal::QUIT),
        (SignalKind::user_defined1(), Signal::USR1),
        (SignalKind::user_defined2(), Signal::USR2),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Signal>();
    let mut listeners = Vec::new();
    for (kind, sig) in kinds {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        listeners.push(tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        }));
    }
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(sig) = rx.recv() => {
                let pid = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw);
                if let Some(pid) = pid {
                    // Gone already: its exit status comes next.
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        }
    };
    for l in listeners {
        l.abort();
    }
    status
}

/// Renews before each certificate expires, for as long as the job runs
/// (the caller aborts this task when the job ends).
async fn renew_forever(opts: ExecOptions, agent: Arc<Agent>, mut held: Held) {
    loop {
        tokio::time::sleep(until_renewal(
            &held.answer,
            opts.renew_at,
            held.received,
            now(),
        ))
        .await;
        match renew_with_backoff(&opts, &agent, &held).await {
            Some(next) => held = next,
            None => {
                eprintln!(
                    "mayfly: the certificate expired at {} and could not be renewed; new ssh connections of this job will fail",
                    crate::time::rfc3339(held.answer.valid_before)
                );
                return;
            }
        }
    }
}

/// One renewal, retried with backoff until the held certificate expires;
/// `None` if it expired first.
async fn renew_with_backoff(opts: &ExecOptions, agent: &Agent, held: &Held) -> Option<Held> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = held.answer.valid_before.saturating_sub(now());
        if left == 0 {
            return None;
        }
        match renew_once(opts, agent, held).await {
            Ok(next) => return Some(next),
            Err(e) => {
                let wait = backoff.min(Duration::from_secs(left));
                eprintln!(
                    "mayfly: renewing the certificate failed: {e}; retrying in {}s (the current certificate is valid until {})",
                    wait.as_secs().max(1),
                    crate::time::rfc3339(held.answer.valid_before)
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn renew_once(opts: &ExecOptions, agent: &Agent, held: &Held) -> Result<Held, ClientError> {
    let key = fresh_key()?;
    let fingerprint = key
        .public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    let signature = crate::ca::renewal::sign(&held.key, &fingerprint, held.approval.as_deref())
        .map_err(|e| ClientError::Io {
            what: "signing the renewal proof".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let renewal = Renewal {
        certificate: &held.answer.certificate,
        signature,
        approval_request: held.approval.as_deref(),
    };
    let (answer, cert, approval) = request_cert_as(&opts.cert, &key, Some(&renewal)).await?;
    agent
        .replace(
            AgentIdentity {
                private_key: key.clone(),
                certificate: cert,
            },
            expiry(&answer),
        )
        .map_err(|source| ClientError::Io {
            what: "loading the renewed certificate into the agent".into(),
            source,
        })?;
    if opts.facts.is_none() {
        eprintln!(
            "mayfly: certificate renewed: serial {}, valid until {}",
            answer.serial,
            crate::time::rfc3339(answer.valid_before)
        );
    }
    if let Err(e) = report(opts, "renewed", &answer, approval.as_deref()) {
        eprintln!("mayfly: {e}");
    }
    Ok(Held {
        key,
        answer,
        approval,
        received: now(),
    })
}

/// How long to wait from `now` until the certificate is `renew_at` through
/// the part of its lifetime ahead when it arrived at `received` (its start
/// is backdated for clock skew, so `valid_after` is not when it arrived).
fn until_renewal(answer: &CertAnswer, renew_at: f64, received: u64, now: u64) -> Duration {
    let start = answer.valid_after.max(received.min(answer.valid_before));
    let lifetime = answer.valid_before.saturating_sub(start) as f64;
    let at = start as f64 + lifetime * renew_at.clamp(0.1, 0.9);
    Duration::from_secs_f64((at - now as f64).max(0.0))
}

fn expiry(answer: &CertAnswer) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(answer.valid_before)
}

fn now() -> u64 {
    crate::clock::unix_secs(SystemTime::now())
}

/// Writes the `--json` facts of one certificate, if asked.
fn report(
    opts: &ExecOptions,
    event: &str,
    answer: &CertAnswer,
    approval: Option<&str>,
) -> Result<(), ClientError> {
    let Some(out) = &opts.facts else {
        return Ok(());
    };
    let facts = Facts {
        event,
        serial: answer.serial,
        key_id: &answer.key_id,
        principals: &answer.principals,
        valid_after: crate::time::rfc3339(answer.valid_after),
        valid_before: crate::time::rfc3339(answer.valid_before),
        approval_request: approval,
    };
    let line = serde_json::to_string(&facts).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    match out {
        FactsOut::Stderr => {
            eprintln!("{line}");
            Ok(())
        }
        FactsOut::File(path) => {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"))
                .map_err(|source| ClientError::Io {
                    what: format!("writing --json-file {}", path.display()),
                    source,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(valid_after: u64, valid_before: u64) -> CertAnswer {
        CertAnswer {
            certificate: String::new(),
            serial: 1,
            key_id: "k".into(),
            principals: vec![],
            valid_after,
            valid_before,
        }
    }

    #[test]
    fn renewal_comes_two_thirds_into_the_lifetime_ahead() {
        // Backdated 60s: the lifetime ahead at arrival (1000) is 300s.
        let a = answer(940, 1300);
        assert_eq!(
            until_renewal(&a, 2.0 / 3.0, 1000, 1000),
            Duration::from_secs(200)
        );
        // Asked later, it counts down to the same instant.
        assert_eq!(
            until_renewal(&a, 2.0 / 3.0, 1000, 1150),
            Duration::from_secs(50)
        );
        // The fraction is kept within 0.1..0.9.
        assert_eq!(until_renewal(&a, 1.0, 1000, 1000), Duration::from_secs(270));
        assert_eq!(until_renewal(&a, 0.0, 1000, 1000), Duration::from_secs(30));
    }

    #[test]
    fn an_overdue_renewal_is_due_at_once() {
        assert_eq!(
            until_renewal(&answer(900, 1000), 0.5, 950, 1200),
            Duration::ZERO
        );
    }
}
