//! `mayfly exec` end to end with real programs: a real OIDC provider, the CA,
//! a real sshd trusting it, and jobs that use `ssh`, `scp`, `sftp`,
//! `rsync`, `git` and `ansible-playbook` through mayfly's agent, across a
//! certificate renewal. Tokens come from `--token-command` (a fresh one
//! each time, as a CI token endpoint gives) or `--token-file`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{find_program, http, ClientSpec, Mayfly, Oidc, Sshd};

const DEPLOY_POLICY: &str = r#"
description = "Deploy jobs"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
default_ttl = "5m"
extensions = ["permit-pty"]
[claims]
repository = "acme/*"
"#;

/// One certificate at a time (the renewal's pair counts once).
const SINGLE_POLICY: &str = r#"
description = "Deploy jobs, one live certificate each"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
default_ttl = "5m"
max_active_certs = 1
[claims]
repository = "acme/*"
"#;

const PROD_POLICY: &str = r#"
description = "Production deploys need a human"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
default_ttl = "5m"
[claims]
repository = "acme/*"
[approval]
required = 1
issuer = "ci"
approvers = ["groups:sre"]
expires = "15m"
"#;

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    sshd: Sshd,
    dir: tempfile::TempDir,
    ssh_config: PathBuf,
}

fn setup() -> Env {
    let oidc = Oidc::start(&[
        ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("other-bot", "RS256").claims(json!({"repository": "acme/web"})),
        ClientSpec::new("alice", "ES256").claims(json!({"groups": ["sre"]})),
    ]);
    let ca = Mayfly::start(
        &oidc.issuer_toml("ci"),
        &[
            ("deploy", DEPLOY_POLICY),
            ("single", SINGLE_POLICY),
            ("prod", PROD_POLICY),
        ],
    );
    let ca_pub = http::get(&format!("{}/v1/ca/user.pub", ca.url()))
        .expect("GET user.pub")
        .text();
    let sshd = Sshd::start(&ca_pub);
    let dir = support::temp_dir("exec");
    // What a job's ssh uses: the agent (SSH_AUTH_SOCK), nothing else.
    let ssh_config = dir.path().join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host testhost\n  HostName 127.0.0.1\n  Port {}\n  User deploy\n  BatchMode yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n  IdentityFile /nonexistent/none\n  PreferredAuthentications publickey\n  LogLevel ERROR\n  ConnectTimeout 10\n",
            sshd.port()
        ),
    )
    .expect("ssh config");
    Env {
        oidc,
        ca,
        sshd,
        dir,
        ssh_config,
    }
}

impl Env {
    /// A `--token-command` that hands out `n` fresh tokens of `client`,
    /// one per call, then fails with "no more tokens".
    fn token_command(&self, client: &str, n: usize) -> String {
        let d = self.dir.path().join(format!("tokens-{client}"));
        std::fs::create_dir_all(&d).expect("token dir");
        for i in 0..n {
            std::fs::write(d.join(i.to_string()), self.oidc.token(client)).expect("token");
        }
        std::fs::write(d.join("next"), "0").expect("counter");
        format!(
            "d={}; n=$(cat $d/next); if [ -f $d/$n ]; then echo $((n+1)) > $d/next; cat $d/$n; else echo 'no more tokens' >&2; exit 3; fi",
            d.display()
        )
    }

    /// Runs `mayfly exec` with `exec_args` around `sh -c script`, with
    /// `TMPDIR` set to a fresh directory (where the agent socket goes).
    fn exec(&self, exec_args: &[&str], script: &str, tmp: &Path) -> Output {
        let mut cmd = Command::new(Mayfly::bin());
        cmd.arg("exec")
            .arg("--server")
            .arg(self.ca.url())
            .args(exec_args)
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(script)
            .env("TMPDIR", tmp)
            .env("SSH_CFG", &self.ssh_config)
            .env_remove("MAYFLY_TOKEN")
            .env_remove("SSH_AUTH_SOCK")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd.output().expect("run mayfly exec")
    }

    fn tmp(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("tmp dir");
        p
    }

    fn post(&self, token: &str, body: &Value) -> http::Response {
        let auth = format!("Bearer {token}");
        http::post_json(
            &format!("{}/v1/certs/user", self.ca.url()),
            &[("Authorization", auth.as_str())],
            body,
        )
        .expect("POST /v1/certs/user")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn report(out: &Output, env: &Env) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- sshd\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr),
        env.sshd.log()
    )
}

/// Every file under `dir` whose content holds a private key.
fn private_key_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file()
                && std::fs::read(&p).is_ok_and(|b| text(&b).contains("PRIVATE KEY"))
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_job_uses_ssh_scp_sftp_rsync_and_git_through_the_agent_without_a_key_file() {
    let env = setup();
    find_program("rsync", &["/usr/bin/rsync"], "rsync");
    find_program("git", &["/usr/bin/git", "/usr/local/bin/git"], "git");
    let tmp = env.tmp("tmp-tools");
    let remote = format!("mayfly-exec-{}", std::process::id());
    std::fs::create_dir_all(env.dir.path().join("release")).expect("release dir");
    std::fs::write(env.dir.path().join("release/app.txt"), "release 1\n").expect("file");
    let script = format!(
        r#"set -e
ssh -F "$SSH_CFG" testhost "rm -rf {remote} && mkdir {remote} && git init -q --bare {remote}/repo.git"
echo "sockets: $(find "$TMPDIR" -mindepth 1 | wc -l) $(ls "$(dirname "$SSH_AUTH_SOCK")")"
ssh -F "$SSH_CFG" testhost id -un
scp -q -F "$SSH_CFG" release/app.txt testhost:{remote}/scp.txt
printf 'get {remote}/scp.txt sftp.txt\n' > batch
sftp -q -F "$SSH_CFG" -b batch testhost >/dev/null
echo "sftp: $(cat sftp.txt)"
rsync -a -e "ssh -F $SSH_CFG" release/ testhost:{remote}/rsync/
ssh -F "$SSH_CFG" testhost cat {remote}/rsync/app.txt | sed 's/^/rsync: /'
export GIT_SSH_COMMAND="ssh -F $SSH_CFG"
git clone -q testhost:{remote}/repo.git work 2>&1
cd work
git -c user.name=bot -c user.email=bot@example.com commit -q --allow-empty -m deploy
git push -q origin HEAD:main 2>&1
git ls-remote testhost:{remote}/repo.git | grep -c refs/heads/main | sed 's/^/pushed: /'
echo "agent: $(ssh-add -L | wc -l)"
ssh -F "$SSH_CFG" testhost "rm -rf {remote}"
exit 5
"#
    );
    let token = env.token_command("bot", 1);
    let out = env.exec(
        &["--role", "deploy", "--token-command", &token, "--json"],
        &script,
        &tmp,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{}", report(&out, &env));
    // The agent's directory held only its socket, and was the only thing
    // mayfly put in TMPDIR.
    assert!(
        stdout.contains("sockets: 2 agent.sock"),
        "{}",
        report(&out, &env)
    );
    for line in [
        "deploy",
        "sftp: release 1",
        "rsync: release 1",
        "pushed: 1",
        "agent: 2",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing\n{}",
            report(&out, &env)
        );
    }
    // --json: the certificate's facts on stderr, as a JSON line.
    let stderr = text(&out.stderr);
    let facts: Value = stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON facts: {stderr}"));
    assert_eq!(facts["event"], "issued");
    assert_eq!(facts["principals"], json!(["deploy"]));
    assert!(facts["serial"].as_u64().is_some(), "{facts}");
    assert!(
        facts["valid_before"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{facts}"
    );
    // Every connection of the job used the one certificate.
    let key_id = facts["key_id"].as_str().expect("key_id");
    assert!(
        env.sshd.log().matches(key_id).count() >= 7,
        "{}",
        report(&out, &env)
    );
    // Nothing is left behind: no socket, no key anywhere mayfly or the job wrote.
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
    assert_eq!(private_key_files(env.dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_job_longer_than_the_certificate_logs_in_before_and_after_the_renewal() {
    let env = setup();
    let tmp = env.tmp("tmp-renew");
    // A 15 s certificate renewed at 2/3: the job's second login comes
    // after the first certificate expired.
    let script = r#"set -e
ssh -F "$SSH_CFG" testhost echo first
ssh-add -L | grep cert > before
sleep 12
find "$TMPDIR" -type f > files-during
sleep 8
ssh -F "$SSH_CFG" testhost echo second
ssh-add -L | grep cert > after
cmp -s before after && echo same-cert || echo new-cert
"#;
    let token = env.token_command("bot", 4);
    let facts = env.dir.path().join("facts.jsonl");
    let facts_arg = facts.display().to_string();
    let started = Instant::now();
    let out = env.exec(
        &[
            "--role",
            "deploy",
            "--ttl",
            "15s",
            "--token-command",
            &token,
            "--json-file",
            &facts_arg,
        ],
        script,
        &tmp,
    );
    assert!(out.status.success(), "{}", report(&out, &env));
    assert!(started.elapsed() >= Duration::from_secs(20));
    let stdout = text(&out.stdout);
    for line in ["first", "second", "new-cert"] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing\n{}",
            report(&out, &env)
        );
    }
    // No file in TMPDIR during the run (the socket is not a file).
    let during = std::fs::read_to_string(env.dir.path().join("files-during")).expect("files");
    assert_eq!(during.trim(), "", "files in TMPDIR during the run");
    let lines: Vec<Value> = std::fs::read_to_string(&facts)
        .expect("facts file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    assert_eq!(lines[0]["event"], "issued");
    assert_eq!(lines[1]["event"], "renewed");
    assert_ne!(lines[0]["serial"], lines[1]["serial"]);
    // sshd saw the first login with the first certificate and the second
    // with a renewed one.
    let log = env.sshd.log();
    let first = lines[0]["key_id"].as_str().expect("key id");
    let last = lines.last().expect("last")["key_id"]
        .as_str()
        .expect("key id");
    assert!(log.contains(first), "{}", report(&out, &env));
    assert!(log.contains(last), "{}", report(&out, &env));
    // The CA recorded each renewal as a renewal of the certificate before.
    let issued = env.ca.audit(&["--event", "cert_issued"]);
    assert_eq!(issued.len(), lines.len());
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
    assert_eq!(private_key_files(env.dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_token_source_that_stops_gives_a_clear_message_and_the_job_goes_on() {
    let env = setup();
    let tmp = env.tmp("tmp-stop");
    let script = r#"
ssh -F "$SSH_CFG" testhost true && echo first-ok
sleep 20
ssh -F "$SSH_CFG" testhost true 2>/dev/null && echo second-ok || echo second-refused
exit 9
"#;
    let token = env.token_command("bot", 1);
    let out = env.exec(
        &[
            "--role",
            "deploy",
            "--ttl",
            "15s",
            "--token-command",
            &token,
        ],
        script,
        &tmp,
    );
    assert_eq!(out.status.code(), Some(9), "{}", report(&out, &env));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("first-ok"), "{}", report(&out, &env));
    assert!(stdout.contains("second-refused"), "{}", report(&out, &env));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("renewing the certificate failed")
            && stderr.contains("no more tokens")
            && stderr.contains("exit status 3"),
        "{}",
        report(&out, &env)
    );
    assert!(
        stderr.contains("could not be renewed; new ssh connections of this job will fail"),
        "{}",
        report(&out, &env)
    );
}

#[test]
fn exec_forwards_a_termination_signal_and_cleans_up() {
    let env = setup();
    let tmp = env.tmp("tmp-signal");
    let token_file = env.dir.path().join("token");
    std::fs::write(&token_file, env.oidc.token("bot")).expect("token");
    let ready = env.dir.path().join("ready");
    let script = format!(
        "trap 'echo got-term; exit 42' TERM; touch {}; while true; do sleep 0.1; done",
        ready.display()
    );
    let child = Command::new(Mayfly::bin())
        .args([
            "exec",
            "--server",
            &env.ca.url(),
            "--role",
            "deploy",
            "--token-file",
        ])
        .arg(&token_file)
        .args(["--", "sh", "-c", &script])
        .env("TMPDIR", &tmp)
        .env_remove("MAYFLY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mayfly exec");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "job did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        1,
        "agent dir"
    );
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("got-term"));
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "agent dir left"
    );
}

#[test]
fn ansible_runs_a_play_through_the_agent() {
    let env = setup();
    let playbook_bin = find_program(
        "ansible-playbook",
        &["/usr/bin/ansible-playbook"],
        "ansible-core",
    );
    let tmp = env.tmp("tmp-ansible");
    let d = env.dir.path();
    std::fs::write(
        d.join("inventory.ini"),
        format!(
            "[web]\nweb1 ansible_host=testhost\nweb2 ansible_host=testhost\n\n[web:vars]\nansible_user=deploy\nansible_ssh_common_args=-F {}\nansible_python_interpreter=/usr/bin/python3\n",
            env.ssh_config.display()
        ),
    )
    .expect("inventory");
    std::fs::write(
        d.join("site.yml"),
        "- hosts: web\n  gather_facts: false\n  tasks:\n    - command: id -un\n      register: who\n    - assert:\n        that: who.stdout == 'deploy'\n",
    )
    .expect("playbook");
    let script = format!(
        "ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_LOCAL_TEMP={0}/ansible-local ANSIBLE_NOCOLOR=1 {1} -i inventory.ini site.yml",
        d.display(),
        playbook_bin.display()
    );
    let token = env.token_command("bot", 1);
    let out = env.exec(
        &["--role", "deploy", "--token-command", &token],
        &script,
        &tmp,
    );
    assert!(out.status.success(), "{}", report(&out, &env));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("web1") && stdout.contains("ok=2") && stdout.contains("failed=0"),
        "{}",
        report(&out, &env)
    );
}

// --- renewal attacks at the HTTP API ---------------------------------

/// A fresh key pair in memory.
fn new_key() -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).expect("key")
}

fn public(k: &ssh_key::PrivateKey) -> String {
    k.public_key().to_openssh().expect("public")
}

fn fingerprint(k: &ssh_key::PrivateKey) -> String {
    k.public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// A renewal body: `new` certified as a renewal of `cert` held by `old`.
fn renewal(
    role: &str,
    old: &ssh_key::PrivateKey,
    cert: &str,
    new: &ssh_key::PrivateKey,
    approval: Option<&str>,
) -> Value {
    let signature =
        mayfly::ca::renewal::sign(old, &fingerprint(new), approval).expect("sign renewal");
    let mut body = json!({
        "role": role,
        "public_key": public(new),
        "renewal": {"certificate": cert, "signature": signature},
    });
    if let Some(a) = approval {
        body["approval_request"] = json!(a);
    }
    body
}

fn issue(env: &Env, role: &str, key: &ssh_key::PrivateKey) -> Value {
    let r = env.post(
        &env.oidc.token("bot"),
        &json!({"role": role, "public_key": public(key)}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn a_renewal_must_be_proved_by_the_certificates_key_for_this_new_key() {
    let env = setup();
    let old = new_key();
    let cert = issue(&env, "deploy", &old)["certificate"]
        .as_str()
        .expect("cert")
        .to_string();
    let new = new_key();

    // Signed by a key that is not the certificate's.
    let r = env.post(
        &env.oidc.token("bot"),
        &renewal("deploy", &new_key(), &cert, &new, None),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_renewal");
    // A proof made for another new key, replayed for this one.
    let mut body = renewal("deploy", &old, &cert, &new_key(), None);
    body["public_key"] = json!(public(&new));
    let r = env.post(&env.oidc.token("bot"), &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap_or("")
        .contains("does not verify"));
    // Another bot presenting this bot's certificate (and its key).
    let r = env.post(
        &env.oidc.token("other-bot"),
        &renewal("deploy", &old, &cert, &new, None),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap_or("")
        .contains("another identity"));
    // The honest renewal works.
    let r = env.post(
        &env.oidc.token("bot"),
        &renewal("deploy", &old, &cert, &new, None),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_revoked_certificate_is_not_renewed() {
    let env = setup();
    let old = new_key();
    let answer = issue(&env, "deploy", &old);
    let cert = answer["certificate"].as_str().expect("cert");
    let out = Command::new(Mayfly::bin())
        .args(["revoke", "--config"])
        .arg(env.ca.config_path())
        .args([
            "--serial",
            &answer["serial"].to_string(),
            "--reason",
            "job compromised",
        ])
        .output()
        .expect("mayfly revoke");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Times are RFC 3339, not unix seconds.
    let printed = text(&out.stdout);
    assert!(
        printed.contains("(valid until 20") && printed.trim_end().ends_with("Z)"),
        "{printed}"
    );
    let r = env.post(
        &env.oidc.token("bot"),
        &renewal("deploy", &old, cert, &new_key(), None),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json()["error"],
        "renewed_certificate_revoked",
        "{}",
        r.text()
    );
}

#[test]
fn a_renewal_counts_once_against_max_active_certs() {
    let env = setup();
    let old = new_key();
    let cert = issue(&env, "single", &old)["certificate"]
        .as_str()
        .expect("cert")
        .to_string();
    // A second certificate beside the live one is refused...
    let r = env.post(
        &env.oidc.token("bot"),
        &json!({"role": "single", "public_key": public(&new_key())}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_active_certs");
    // ...its renewal is not.
    let new = new_key();
    let r = env.post(
        &env.oidc.token("bot"),
        &renewal("single", &old, &cert, &new, None),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // But the renewal cannot be used to hold a third: the pair is full.
    let r = env.post(
        &env.oidc.token("bot"),
        &renewal("single", &old, &cert, &new_key(), None),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_active_certs");
}

/// Opens an approval request for `key` in role `prod` and has alice approve it.
fn approved(env: &Env, key: &ssh_key::PrivateKey) -> String {
    let r = env.post(
        &env.oidc.token("bot"),
        &json!({"role": "prod", "public_key": public(key)}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    let auth = format!("Bearer {}", env.oidc.token("alice"));
    let r = http::post_json(
        &format!("{}/v1/requests/{id}/approve", env.ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"reason": "release 1"}),
    )
    .expect("approve");
    assert_eq!(r.status, 200, "{}", r.text());
    id
}

#[test]
fn an_approval_is_renewed_as_one_chain_and_two_racing_renewals_get_one_certificate() {
    let env = setup();
    let k1 = new_key();
    let id = approved(&env, &k1);
    let r = env.post(
        &env.oidc.token("bot"),
        &json!({"role": "prod", "public_key": public(&k1), "approval_request": id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c1 = r.json()["certificate"].as_str().expect("cert").to_string();

    // Without a renewal proof the used approval mints nothing more.
    let r = env.post(
        &env.oidc.token("bot"),
        &json!({"role": "prod", "public_key": public(&new_key()), "approval_request": id}),
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // Two renewals from the same certificate, racing: one certificate.
    let bodies: Vec<Value> = (0..2)
        .map(|_| renewal("prod", &k1, &c1, &new_key(), Some(&id)))
        .collect();
    let tokens: Vec<String> = (0..2).map(|_| env.oidc.token("bot")).collect();
    let url = format!("{}/v1/certs/user", env.ca.url());
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .zip(&tokens)
            .map(|(b, t)| {
                let url = url.clone();
                s.spawn(move || {
                    let auth = format!("Bearer {t}");
                    let r = http::post_json(&url, &[("Authorization", auth.as_str())], b)
                        .expect("POST");
                    (r.status, r.text())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok: Vec<&(u16, String)> = statuses.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(ok.len(), 1, "{statuses:?}");
    let loser = statuses.iter().find(|(s, _)| *s != 200).expect("loser");
    assert_eq!(loser.0, 403, "{statuses:?}");
    assert!(loser.1.contains("approval_mismatch"), "{statuses:?}");

    // The winner's key holds the approval now; the first key no longer does.
    let winner = statuses
        .iter()
        .position(|(s, _)| *s == 200)
        .expect("winner");
    let winner_cert: Value = serde_json::from_str(&statuses[winner].1).expect("json");
    assert!(winner_cert["valid_before"].as_u64().is_some());
    let r = env.post(
        &env.oidc.token("bot"),
        &renewal("prod", &k1, &c1, &new_key(), Some(&id)),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "approval_mismatch");

    // A renewal asks no more than was approved.
    let k2 = new_key();
    let id2 = approved(&env, &k2);
    let r = env.post(
        &env.oidc.token("bot"),
        &json!({"role": "prod", "public_key": public(&k2), "approval_request": id2}),
    );
    let c2 = r.json()["certificate"].as_str().expect("cert").to_string();
    let mut body = renewal("prod", &k2, &c2, &new_key(), Some(&id2));
    body["ttl_seconds"] = json!(400);
    let r = env.post(&env.oidc.token("bot"), &body);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "approval_exceeded", "{}", r.text());

    // The audit names each renewal.
    let used = env.ca.audit(&["--event", "approval_used"]);
    assert!(
        used.iter()
            .any(|r| r.to_string().contains("renewed: serial")),
        "{used:?}"
    );
}

#[test]
fn exec_waits_for_the_approval_once_and_renews_without_asking_again() {
    let env = setup();
    let tmp = env.tmp("tmp-approval");
    let token = env.token_command("bot", 4);
    let facts = env.dir.path().join("approval-facts.jsonl");
    let child = Command::new(Mayfly::bin())
        .args(["exec", "--server", &env.ca.url(), "--role", "prod", "--ttl", "15s"])
        .args(["--token-command", &token, "--approval-timeout", "60s", "--json-file"])
        .arg(&facts)
        .args(["--", "sh", "-c"])
        .arg("ssh -F \"$SSH_CFG\" testhost echo first && sleep 14 && ssh -F \"$SSH_CFG\" testhost echo second")
        .env("TMPDIR", &tmp)
        .env("SSH_CFG", &env.ssh_config)
        .env_remove("MAYFLY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mayfly exec");
    // Approve the request the job opened, from the approver's side.
    let auth = format!("Bearer {}", env.oidc.token("alice"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let list = http::request(
            "GET",
            &format!("{}/v1/requests", env.ca.url()),
            &[("Authorization", auth.as_str())],
            b"",
        )
        .expect("GET /v1/requests")
        .json();
        if let Some(id) = list
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r["id"].as_str())
        {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no approval request opened");
        std::thread::sleep(Duration::from_millis(200));
    };
    let r = http::post_json(
        &format!("{}/v1/requests/{id}/approve", env.ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"reason": "ok"}),
    )
    .expect("approve");
    assert_eq!(r.status, 200, "{}", r.text());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", report(&out, &env));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("first") && stdout.contains("second"),
        "{}",
        report(&out, &env)
    );
    let lines: Vec<Value> = std::fs::read_to_string(&facts)
        .expect("facts")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    assert_eq!(lines[1]["event"], "renewed");
    assert_eq!(lines[1]["approval_request"], json!(id));
    // One approval request, no second one opened by the renewal.
    assert_eq!(env.ca.audit_count("approval_requested"), 1);
}
