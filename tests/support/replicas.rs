//! Several real `mayfly serve` replicas sharing one PostgreSQL database,
//! and a token issuer ([`TestIssuer`]) whose keys the test holds, so a test
//! can mint as many single-use tokens as it needs without a browser or the
//! node OIDC provider.
//!
//! Every replica runs the same config except `listen` and `data_dir` (each
//! has its own directory), as an operator runs them: the `[store]` section
//! of the shared database, passphrase-encrypted CA keys (a shared database
//! refuses plain ones), issuer `ci`, and admins with `groups: ["sre"]`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Barrier;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::http::{self, Response};
use super::issuer::TestIssuer;
use super::{keygen_ed25519, mayfly, temp_dir, wait_for, Mayfly, PgDb};

/// The passphrase of the replicas' CA keys.
pub const PASSPHRASE: &str = "replicas share one CA, encrypted";

/// The issuer name every replica gives the test issuer.
pub const ISSUER: &str = "ci";

/// A role any `bot*` subject of issuer `ci` may use: principal `deploy`,
/// five-minute certificates.
pub const DEPLOY_ROLE: &str = "description = \"replica tests\"\nowner = \"sre@example.com\"\n\
    issuer = \"ci\"\nprincipals = [\"deploy\"]\nmax_ttl = \"10m\"\ndefault_ttl = \"5m\"\n\n\
    [claims]\nsub = \"bot*\"\n";

/// One replica's start-up settings beyond the shared ones.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    /// The `[store]` section (the same for every replica).
    pub store_toml: &'a str,
    /// Roles: `(name, toml)`.
    pub policies: &'a [(&'a str, &'a str)],
    /// More config, e.g. an `[audit]` section.
    pub extra: &'a str,
}

/// A certificate a replica returned.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Its serial.
    pub serial: u64,
    /// Its key id.
    pub key_id: String,
    /// The OpenSSH certificate line.
    pub certificate: String,
}

impl Issued {
    /// The certificate in a 200 answer, or `None` for any other answer.
    pub fn from_response(r: &Response) -> Option<Issued> {
        if r.status != 200 {
            return None;
        }
        let v = r.json();
        Some(Issued {
            serial: v["serial"].as_u64().expect("serial in a 200 answer"),
            key_id: v["key_id"].as_str().expect("key_id in a 200 answer").into(),
            certificate: v["certificate"]
                .as_str()
                .expect("certificate in a 200 answer")
                .into(),
        })
    }

    /// Writes the certificate to `dir/<serial>-cert.pub` for `ssh-keygen`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join(format!("{}-cert.pub", self.serial));
        std::fs::write(&p, format!("{}\n", self.certificate)).expect("write the certificate");
        p
    }
}

/// Replicas on one database; every process is killed on drop.
pub struct Replicas {
    /// The issuer of every token.
    pub issuer: TestIssuer,
    nodes: Vec<Mayfly>,
    config: String,
    dir: tempfile::TempDir,
    public_key: String,
}

impl Replicas {
    /// Starts `n` replicas with `shared` settings. The first one starts
    /// alone (on an empty database it creates the CA keys), the others
    /// together after it.
    pub fn start(n: usize, shared: Shared<'_>) -> Replicas {
        let mut r = Replicas::new(shared);
        r.add(shared.policies);
        let rest: Vec<Mayfly> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..n)
                .map(|_| s.spawn(|| Mayfly::start(&r.config, shared.policies)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a replica started"))
                .collect()
        });
        r.nodes.extend(rest);
        r
    }

    /// The shared settings without any replica yet; `add` starts them.
    pub fn new(shared: Shared<'_>) -> Replicas {
        let issuer = TestIssuer::start();
        let dir = temp_dir("replicas");
        let pass = dir.path().join("ca-passphrase");
        std::fs::write(&pass, PASSPHRASE).expect("write the CA passphrase");
        set_private(&pass);
        // `extra` comes first, so its top-level keys (before any table
        // header of its own) stay top-level. The chain lock may be waited
        // for longer than the 2 s default on a loaded 2-core test machine:
        // these tests check what is stored, not latency.
        let config = format!(
            "store_busy_timeout = \"10s\"\n{extra}\n{issuer_toml}\n[[admin]]\nissuer = \"{ISSUER}\"\n[admin.claims]\ngroups = \"sre\"\n\n\
             {store}\n[ca]\nkey_protection = \"passphrase\"\npassphrase_file = {pass:?}\n",
            issuer_toml = issuer.issuer_toml(ISSUER, ""),
            store = shared.store_toml,
            pass = pass.display().to_string(),
            extra = shared.extra,
        );
        let (_, public_key) = keygen_ed25519(dir.path());
        Replicas {
            issuer,
            nodes: Vec::new(),
            config,
            dir,
            public_key,
        }
    }

    /// Starts one more replica, with these roles; returns its index.
    pub fn add(&mut self, policies: &[(&str, &str)]) -> usize {
        self.nodes.push(Mayfly::start(&self.config, policies));
        self.nodes.len() - 1
    }

    /// Takes over a replica started with [`Replicas::config_extra`].
    pub fn adopt(&mut self, replica: Mayfly) -> usize {
        self.nodes.push(replica);
        self.nodes.len() - 1
    }

    /// The public key every certificate request certifies.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The config every replica runs, less `listen`, `data_dir` and
    /// `policy_dir`.
    pub fn config_extra(&self) -> &str {
        &self.config
    }

    /// Replica `i`.
    pub fn node(&self, i: usize) -> &Mayfly {
        &self.nodes[i]
    }

    /// Replica `i`, to stop, kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut Mayfly {
        &mut self.nodes[i]
    }

    /// How many replicas there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A scratch directory that lives as long as the replicas.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh single-use token (new `jti`) for `sub`, with `extra` claims.
    pub fn token_with(&self, sub: &str, extra: Value) -> String {
        let mut claims = self.issuer.claims(sub);
        if let Some(extra) = extra.as_object() {
            for (k, v) in extra {
                claims[k] = v.clone();
            }
        }
        self.issuer.sign(Algorithm::ES256, &claims)
    }

    /// A fresh single-use token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.token_with(sub, json!({}))
    }

    /// A token of an administrator (`groups: ["sre"]`).
    pub fn admin_token(&self) -> String {
        self.token_with("ops-admin", json!({"groups": ["sre"]}))
    }

    /// `POST path` on replica `i` with `token` as the bearer.
    pub fn post(&self, i: usize, path: &str, token: &str, body: &Value) -> Response {
        let auth = format!("Bearer {token}");
        http::post_json(
            &format!("{}{path}", self.nodes[i].url()),
            &[("Authorization", auth.as_str())],
            body,
        )
        .unwrap_or_else(|e| panic!("POST {path} on replica {i}: {e}"))
    }

    /// `GET path` on replica `i` with `token` as the bearer.
    pub fn get_with(&self, i: usize, path: &str, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        http::request(
            "GET",
            &format!("{}{path}", self.nodes[i].url()),
            &[("Authorization", auth.as_str())],
            b"",
        )
        .unwrap_or_else(|e| panic!("GET {path} on replica {i}: {e}"))
    }

    /// `POST /v1/certs/user` for `role` on replica `i`; `Err` when the
    /// connection failed (a killed replica).
    pub fn try_request_cert(&self, i: usize, role: &str, token: &str) -> std::io::Result<Response> {
        let auth = format!("Bearer {token}");
        http::post_json(
            &format!("{}/v1/certs/user", self.nodes[i].url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": role, "public_key": self.public_key}),
        )
    }

    /// `POST /v1/certs/user` for `role` on replica `i`.
    pub fn request_cert(&self, i: usize, role: &str, token: &str) -> Response {
        self.try_request_cert(i, role, token)
            .unwrap_or_else(|e| panic!("POST /v1/certs/user on replica {i}: {e}"))
    }

    /// A certificate for `sub` in `role` from replica `i`, or a panic with
    /// the answer and the replica's log.
    #[track_caller]
    pub fn cert(&self, i: usize, role: &str, sub: &str) -> Issued {
        let r = self.request_cert(i, role, &self.token(sub));
        Issued::from_response(&r).unwrap_or_else(|| {
            panic!(
                "replica {i} refused a certificate for {sub}: {} {}\n--- log\n{}",
                r.status,
                r.text(),
                self.nodes[i].stderr_log()
            )
        })
    }

    /// `GET /v1/krl` on replica `i`.
    pub fn krl(&self, i: usize) -> Response {
        http::get(&format!("{}/v1/krl", self.nodes[i].url()))
            .unwrap_or_else(|e| panic!("GET /v1/krl on replica {i}: {e}"))
    }

    /// `GET /healthz` on replica `i`: its status, or `None` when it does
    /// not answer.
    pub fn health(&self, i: usize) -> Option<u16> {
        http::get(&format!("{}/healthz", self.nodes[i].url()))
            .ok()
            .map(|r| r.status)
    }

    /// Waits until replica `i` answers `/healthz` with `status`.
    #[track_caller]
    pub fn wait_health(&self, i: usize, status: u16, timeout: Duration) {
        let seen = wait_for(timeout, Duration::from_millis(100), || {
            (self.health(i) == Some(status)).then_some(())
        });
        assert!(
            seen.is_some(),
            "replica {i}: /healthz not {status} within {timeout:?} (last: {:?})\n--- log\n{}",
            self.health(i),
            self.nodes[i].stderr_log()
        );
    }

    /// `mayfly ARGS... --config <replica 0's config>`, as an operator runs
    /// an admin command against the shared database.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.nodes[0]
            .config_path()
            .to_str()
            .expect("utf-8 path")
            .to_string();
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        mayfly(&all)
    }

    /// Audit records matching `filters`, oldest first, read from the
    /// shared database (through replica 0's config).
    pub fn audit(&self, filters: &[&str]) -> Vec<Value> {
        self.nodes[0].audit(filters)
    }

    /// `mayfly audit verify --config` of replica `i`: exit code and output.
    pub fn audit_verify(&self, i: usize) -> (Option<i32>, String) {
        let out = mayfly(&[
            "audit",
            "verify",
            "--config",
            self.nodes[i].config_path().to_str().expect("utf-8 path"),
        ]);
        (out.status.code(), super::all_output(&out))
    }

    /// Panics unless `mayfly audit verify` passes through every replica's
    /// config; returns the first one's report.
    #[track_caller]
    pub fn assert_audit_verifies(&self) -> String {
        let mut first = None;
        for i in 0..self.nodes.len() {
            let (code, out) = self.audit_verify(i);
            assert_eq!(code, Some(0), "audit verify via replica {i}:\n{out}");
            first.get_or_insert(out);
        }
        first.unwrap_or_default()
    }

    /// Every replica's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- replica {i} ({})\n{}", n.url(), n.stderr_log()))
            .collect()
    }
}

/// `[store]` for a database at `url` (e.g. several hosts) with the
/// password of `db`.
pub fn store_toml_at(db: &PgDb, url: &str) -> String {
    format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npassword_file = \"{}\"\n",
        db.password_file.display()
    )
}

/// Runs every job on its own thread, all released at the same moment, and
/// returns their results in order.
pub fn together<'a, T: Send>(jobs: Vec<Box<dyn FnOnce() -> T + Send + 'a>>) -> Vec<T> {
    let barrier = Barrier::new(jobs.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    job()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a concurrent request"))
            .collect()
    })
}

/// The error code of a JSON error answer (`""` when there is none).
pub fn error_code(r: &Response) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Whether `ssh-keygen -Q -f krl cert` says the certificate is revoked.
pub fn krl_revokes(krl: &Path, cert: &Path) -> bool {
    let out = std::process::Command::new(super::keygen::ssh_keygen())
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(cert)
        .output()
        .expect("run ssh-keygen -Q");
    let text = String::from_utf8_lossy(&out.stdout);
    // ssh-keygen -Q prints "<file>: REVOKED" and exits 1 for a revoked key,
    // "<file>: ok" and exits 0 otherwise.
    match (text.contains("REVOKED"), text.contains(": ok")) {
        (true, false) => true,
        (false, true) => false,
        _ => panic!(
            "ssh-keygen -Q -f {} {}: unexpected output ({}):\n{text}{}",
            krl.display(),
            cert.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", path.display()));
}
