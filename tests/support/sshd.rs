//! A real OpenSSH server (`sshd -D -e`) on a loopback port with a private
//! config that trusts one user CA, and the real `ssh` client to log in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::keygen::run_ssh_keygen;
use super::process::Proc;
use super::{find_program, free_port, require_root, run_locked, shared_tmp, temp_dir, wait_for};

/// Local accounts that tests log in as; created if missing.
pub const TEST_USERS: &[&str] = &["deploy", "backup"];

/// How long sshd may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running sshd; killed on drop.
pub struct Sshd {
    port: u16,
    proc: Proc,
    trusted_ca_path: PathBuf,
    revoked_keys_path: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd trusting the user-CA public key lines in
    /// `trusted_ca_pub` (the contents of a `TrustedUserCAKeys` file).
    pub fn start(trusted_ca_pub: &str) -> Sshd {
        Sshd::start_inner(trusted_ca_pub, None, None)
    }

    /// Like [`Sshd::start`], with `RevokedKeys` pointing at `revoked_keys`
    /// (a KRL or a list of public keys). sshd reads it at every login, so a
    /// test may rewrite it while sshd runs. If the file does not exist it is
    /// created empty (sshd refuses every key if it cannot read the file).
    pub fn start_with_revoked_keys(trusted_ca_pub: &str, revoked_keys: &Path) -> Sshd {
        if !revoked_keys.exists() {
            std::fs::write(revoked_keys, b"").expect("create an empty RevokedKeys file");
        }
        Sshd::start_inner(trusted_ca_pub, Some(revoked_keys.to_path_buf()), None)
    }

    /// Like [`Sshd::start_with_revoked_keys`], and presents a host
    /// certificate: `make_cert` gets the path of sshd's new host public key
    /// and returns the path of its certificate (`HostCertificate`).
    pub fn start_with_host_cert(
        trusted_ca_pub: &str,
        revoked_keys: &Path,
        make_cert: &dyn Fn(&Path) -> PathBuf,
    ) -> Sshd {
        if !revoked_keys.exists() {
            std::fs::write(revoked_keys, b"").expect("create an empty RevokedKeys file");
        }
        Sshd::start_inner(
            trusted_ca_pub,
            Some(revoked_keys.to_path_buf()),
            Some(make_cert),
        )
    }

    fn start_inner(
        trusted_ca_pub: &str,
        revoked_keys: Option<PathBuf>,
        make_host_cert: Option<&dyn Fn(&Path) -> PathBuf>,
    ) -> Sshd {
        require_root("Sshd::start");
        let sshd = find_program("sshd", &["/usr/sbin/sshd"], "openssh-server");
        ensure_privsep_dir();
        ensure_test_users();

        let dir = temp_dir("sshd");
        let host_key = dir.path().join("ssh_host_ed25519_key");
        run_ssh_keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "mayfly-test-host",
            "-f",
            path_str(&host_key),
        ]);
        let host_cert = make_host_cert.map(|f| f(&host_key.with_extension("pub")));
        let trusted_ca_path = dir.path().join("trusted_user_ca_keys");
        std::fs::write(&trusted_ca_path, trusted_ca_pub).expect("write TrustedUserCAKeys file");

        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let config_path = dir.path().join(format!("sshd_config.{port}"));
            std::fs::write(
                &config_path,
                sshd_config(
                    port,
                    &host_key,
                    &trusted_ca_path,
                    revoked_keys.as_deref(),
                    host_cert.as_deref(),
                ),
            )
            .expect("write sshd_config");

            let mut cmd = Command::new(&sshd);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config_path);
            let mut proc = Proc::spawn(&format!("sshd-{port}"), cmd, dir.path());
            let listening = format!("Server listening on 127.0.0.1 port {port}");
            let outcome = wait_for(START_TIMEOUT, Duration::from_millis(25), || {
                if proc.stderr().contains(&listening) {
                    Some(true)
                } else if proc.exited().is_some() {
                    Some(false)
                } else {
                    None
                }
            });
            match outcome {
                Some(true) => {
                    return Sshd {
                        port,
                        proc,
                        trusted_ca_path,
                        revoked_keys_path: revoked_keys,
                        dir,
                    }
                }
                Some(false) => {
                    last_failure = proc.report();
                    if !last_failure.contains("Address already in use") {
                        break;
                    }
                }
                None => {
                    proc.kill();
                    last_failure =
                        format!("not listening within {START_TIMEOUT:?}\n{}", proc.report());
                    break;
                }
            }
        }
        panic!("sshd did not start:\n{last_failure}");
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// sshd's log so far (LogLevel VERBOSE: accepted and refused keys,
    /// certificate key ids and serials).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// The `TrustedUserCAKeys` file; sshd re-reads it at every login.
    pub fn trusted_ca_path(&self) -> &Path {
        &self.trusted_ca_path
    }

    /// The `RevokedKeys` file, if configured; sshd re-reads it at every login.
    pub fn revoked_keys_path(&self) -> Option<&Path> {
        self.revoked_keys_path.as_deref()
    }

    /// sshd's private directory (config, host key, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `ssh` options that reach this server as `user` with only the
    /// given identity and no known_hosts, agent or user config; without the
    /// key, certificate and remote command. Useful for `mayfly ssh -- ...`.
    pub fn client_args(&self, user: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-F".into(),
            "/dev/null".into(),
            "-p".into(),
            self.port.to_string(),
        ];
        for opt in [
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "PreferredAuthentications=publickey",
            "ConnectTimeout=10",
            "LogLevel=ERROR",
        ] {
            args.push("-o".into());
            args.push(opt.into());
        }
        args.push("-l".into());
        args.push(user.into());
        args.push("127.0.0.1".into());
        args
    }

    /// Runs `cmd` on this server as `user` with the real `ssh` client,
    /// authenticating with the private key `key_path` and the certificate
    /// `cert_path`. Returns ssh's output; exit status 255 means ssh itself
    /// failed (e.g. the certificate was refused).
    pub fn ssh(&self, user: &str, key_path: &Path, cert_path: &Path, cmd: &str) -> Output {
        let ssh = find_program("ssh", &["/usr/bin/ssh"], "openssh-client");
        let mut args = self.client_args(user);
        let host = args.pop().expect("client_args ends with the host");
        args.extend([
            "-i".to_string(),
            path_str(key_path).to_string(),
            "-o".to_string(),
            format!("CertificateFile={}", path_str(cert_path)),
            host,
            cmd.to_string(),
        ]);
        Command::new(ssh)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ssh: {e}"))
    }
}

fn sshd_config(
    port: u16,
    host_key: &Path,
    trusted_ca: &Path,
    revoked_keys: Option<&Path>,
    host_cert: Option<&Path>,
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# private config for one test; nothing from /etc/ssh is read"
    );
    let _ = writeln!(c, "ListenAddress 127.0.0.1:{port}");
    let _ = writeln!(c, "HostKey {}", host_key.display());
    let _ = writeln!(c, "PidFile none");
    // scp (SFTP protocol by default) and sftp need the subsystem.
    let _ = writeln!(c, "Subsystem sftp internal-sftp");
    let _ = writeln!(c, "TrustedUserCAKeys {}", trusted_ca.display());
    if let Some(krl) = revoked_keys {
        let _ = writeln!(c, "RevokedKeys {}", krl.display());
    }
    if let Some(cert) = host_cert {
        let _ = writeln!(c, "HostCertificate {}", cert.display());
    }
    for line in [
        "AuthorizedKeysFile none",
        "AuthorizedPrincipalsFile none",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitRootLogin no",
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel VERBOSE",
    ] {
        let _ = writeln!(c, "{line}");
    }
    // OpenSSH 9.8+ penalises sources with many failed logins; tests fail
    // logins on purpose, all from 127.0.0.1.
    if openssh_version() >= (9, 8) {
        let _ = writeln!(c, "PerSourcePenalties no");
    }
    c
}

/// (major, minor) of the installed OpenSSH, from `ssh -V`.
fn openssh_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let ssh = find_program("ssh", &["/usr/bin/ssh"], "openssh-client");
        let out = Command::new(ssh).arg("-V").output().expect("run ssh -V");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let parse = || -> Option<(u32, u32)> {
            let v = text.split("OpenSSH_").nth(1)?;
            let (major, rest) = v.split_once('.')?;
            let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            Some((major.parse().ok()?, minor.parse().ok()?))
        };
        parse().unwrap_or_else(|| panic!("cannot read the OpenSSH version from: {text}"))
    })
}

/// sshd's privilege-separation directory, which Debian creates only when
/// the service starts.
fn ensure_privsep_dir() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Path::new("/run/sshd");
    std::fs::create_dir_all(dir).expect("create /run/sshd");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 /run/sshd");
}

/// Creates the test accounts if missing, gives them a login shell, and
/// unlocks them: with `UsePAM no`, sshd refuses accounts whose password
/// field starts with "!" (useradd's default).
fn ensure_test_users() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = r#"
set -e
for u in "$@"; do
  if ! getent passwd "$u" >/dev/null; then
    useradd --create-home --shell /bin/bash "$u"
  fi
  shell=$(getent passwd "$u" | cut -d: -f7)
  if ! grep -qxF "$shell" /etc/shells; then
    usermod --shell /bin/bash "$u"
  fi
  case "$(getent shadow "$u" | cut -d: -f2)" in
    '!'*) usermod --password '*' "$u" ;;
  esac
done
"#;
        let users = TEST_USERS.join(" ");
        run_locked(
            &shared_tmp().join("test-users.lock"),
            &format!("set -- {users}\n{script}"),
            Path::new("/"),
            "creating test users",
        );
    });
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("path is UTF-8")
}
