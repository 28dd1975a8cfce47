//! `mayfly host sync`, `mayfly host cert` and `mayfly known-hosts`, run as
//! the real binary.
//!
//! The happy path syncs from a real `mayfly serve` and a real `sshd` logs a
//! certificate in through the installed files. The fault cases need a CA
//! that misbehaves on purpose (truncated KRL, garbage keys, an older KRL,
//! HTTP errors), so they use `FakeCa`, a tiny std HTTP server in the test
//! that serves canned answers; KRLs are made by the real `ssh-keygen -k`.
//! Disk faults use a real tmpfs mounted by the test (tests run as root):
//! filled for "disk full", remounted read-only for "read-only disk".
//!
//! Every fault case checks what an operator relies on: exit code 1, one line
//! on stderr naming what failed and that the old files are kept, the old
//! files byte-identical, and no temporary file left behind.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use support::keygen::run_ssh_keygen;
use support::{http, keygen_ed25519, sign_user_cert, Mayfly, Sshd};

// ---------------------------------------------------------------------------
// A CA that answers what the test tells it to
// ---------------------------------------------------------------------------

/// One request the fake CA received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A canned answer.
#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announce the full Content-Length but close after this many body bytes.
    cut_after: Option<usize>,
}

impl Canned {
    fn ok(body: impl Into<Vec<u8>>) -> Canned {
        Canned {
            status: 200,
            headers: vec![],
            body: body.into(),
            cut_after: None,
        }
    }
    fn status(status: u16, body: &str) -> Canned {
        Canned {
            status,
            ..Canned::ok(body)
        }
    }
    fn header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Canned + Send + Sync>;

/// A loopback HTTP/1.1 server on a std thread; one request per connection.
struct FakeCa {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Handler>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCa {
    fn start() -> FakeCa {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind fake CA");
        let port = listener.local_addr().expect("addr").port();
        let routes: Arc<Mutex<HashMap<String, Handler>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (routes, seen, stop) = (routes.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = serve_one(conn, &routes, &seen);
                }
            })
        };
        FakeCa {
            port,
            routes,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn route(&self, path: &str, canned: Canned) {
        self.route_fn(path, move |_| canned.clone());
    }

    fn route_fn(&self, path: &str, f: impl Fn(&Seen) -> Canned + Send + Sync + 'static) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.into(), Arc::new(f));
    }

    /// Serves `ca_pub` as the user CA keys and `krl` as the KRL.
    fn serve(&self, ca_pub: &str, krl: &[u8]) {
        self.route("/v1/ca/user.pub", Canned::ok(ca_pub));
        self.route("/v1/krl", Canned::ok(krl));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(
    conn: TcpStream,
    routes: &Mutex<HashMap<String, Handler>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((n, v)) = h.trim_end().split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let req = Seen {
        method,
        path,
        headers,
        body,
    };
    seen.lock().expect("seen").push(req.clone());
    let handler = routes.lock().expect("routes").get(&req.path).cloned();
    let canned = match handler {
        Some(h) => h(&req),
        None => Canned::status(404, "no such endpoint"),
    };
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        canned.status,
        canned.body.len()
    );
    for (n, v) in &canned.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = conn;
    conn.write_all(head.as_bytes())?;
    let body = match canned.cut_after {
        Some(n) => &canned.body[..n],
        None => &canned.body[..],
    };
    if canned.status != 304 {
        conn.write_all(body)?;
    }
    conn.flush()
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A KRL made by the real `ssh-keygen -k`: version `version`, revoking the
/// certificate serials `serials` issued by `ca_pub_path` (if any).
fn make_krl(version: u64, ca_pub_path: Option<&Path>, serials: &[u64]) -> Vec<u8> {
    let d = support::temp_dir("krl");
    let spec = d.path().join("spec");
    let text: String = serials.iter().map(|s| format!("serial: {s}\n")).collect();
    std::fs::write(&spec, text).expect("write KRL spec");
    let out = d.path().join("krl");
    let version = version.to_string();
    let mut args = vec![
        "-q",
        "-k",
        "-f",
        out.to_str().expect("utf-8"),
        "-z",
        &version,
    ];
    if let Some(ca) = ca_pub_path {
        args.extend(["-s", ca.to_str().expect("utf-8")]);
    }
    args.push(spec.to_str().expect("utf-8"));
    run_ssh_keygen(&args);
    std::fs::read(&out).expect("read KRL")
}

/// The KRL version of `path` as `ssh-keygen -Q -l` reads it.
fn krl_version_by_ssh_keygen(path: &Path) -> String {
    let out = run_ssh_keygen(&["-Q", "-l", "-f", path.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("# KRL version "))
        .unwrap_or_else(|| panic!("no KRL version in ssh-keygen -Q -l output: {text}"))
        .to_string()
}

/// `mayfly host sync --server URL --dir DIR [extra...]`.
fn host_sync(server: &str, dir: &Path, extra: &[&str]) -> Output {
    Command::new(Mayfly::bin())
        .args(["host", "sync", "--server", server, "--dir"])
        .arg(dir)
        .args(extra)
        .env_remove("MAYFLY_SERVER")
        .env_remove("MAYFLY_CA_FILE")
        .output()
        .expect("run mayfly host sync")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "expected success, got {}: {}",
        o.status,
        stderr(o)
    );
}

/// Every file in `dir` (name -> bytes), skipping `except`.
fn snapshot(dir: &Path, except: &[&str]) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry"))
        .filter(|e| !except.contains(&e.file_name().to_string_lossy().as_ref()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read file"),
            )
        })
        .collect()
}

/// The exit code the README's table gives a failed sync: 5 when the CA
/// cannot be reached or answers 5xx, 7 for 404, 2 for an unusable
/// `--server`, else 1 (an answer that is refused).
fn sync_exit_code(err: &str) -> i32 {
    if err.contains("cannot fetch") || err.contains("answered HTTP 5") {
        5
    } else if err.contains("answered HTTP 404") {
        7
    } else if err.contains("mayfly host sync: --server ") {
        2
    } else {
        1
    }
}

/// Checks a failed sync: its exit code, one stderr line mentioning `what`
/// and that the old files are kept, `dir` byte-identical to `before`.
fn assert_failed_and_kept(
    o: &Output,
    what: &str,
    dir: &Path,
    before: &BTreeMap<String, Vec<u8>>,
    except: &[&str],
) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(sync_exit_code(&err)),
        "exit code; stderr: {err}"
    );
    assert!(o.stdout.is_empty(), "stdout: {:?}", o.stdout);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("mayfly host sync: "), "{err}");
    assert!(err.contains(what), "stderr should mention {what:?}: {err}");
    let kept = format!("kept in {}: ", dir.display());
    assert!(err.contains(&kept), "stderr should say what is kept: {err}");
    let after = snapshot(dir, except);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "same files (no temporary file left); stderr: {err}"
    );
    assert!(after == *before, "files changed; stderr: {err}");
}

/// A CA key pair for a fake CA; returns (dir guard, private key, pub path, pub line).
fn fake_ca_key() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let d = support::temp_dir("fakeca");
    let (key, line) = keygen_ed25519(d.path());
    let pub_path = PathBuf::from(format!("{}.pub", key.display()));
    (d, key, pub_path, line)
}

/// A directory synced from `ca` serving KRL version 5 (the "last good" state).
fn synced_dir(ca: &FakeCa, ca_line: &str, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    ca.serve(&format!("{ca_line}\n"), &make_krl(5, None, &[]));
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    let snap = snapshot(dir, &[]);
    assert!(snap.contains_key("user_ca.pub") && snap.contains_key("revoked.krl"));
    snap
}

/// A small tmpfs mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        support::require_root("mounting a tmpfs");
        let dir = support::temp_dir("tmpfs");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (the disk-fault tests need root and mount permission): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, opt: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o remount,{opt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

// ---------------------------------------------------------------------------
// Against the real CA and a real sshd
// ---------------------------------------------------------------------------

#[test]
fn sync_from_real_ca_installs_files_that_real_sshd_uses() {
    let ca = Mayfly::start("", &[]);
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path().join("etc-ssh-mayfly");

    let out = host_sync(&ca.url(), &dir, &[]);
    assert_ok(&out);
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "quiet on success"
    );

    let served = http::get(&format!("{}/v1/ca/user.pub", ca.url()))
        .expect("GET user.pub")
        .text();
    let installed = std::fs::read_to_string(dir.join("user_ca.pub")).expect("user_ca.pub");
    assert_eq!(installed, served);
    for f in ["user_ca.pub", "revoked.krl"] {
        let mode = std::fs::metadata(dir.join(f))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{f} mode");
    }
    krl_version_by_ssh_keygen(&dir.join("revoked.krl"));

    // sshd reads both installed files; a certificate from the CA's key logs in.
    let sshd = Sshd::start_with_revoked_keys(&installed, &dir.join("revoked.krl"));
    let keys = support::temp_dir("hostsync-keys");
    let (key, _) = keygen_ed25519(keys.path());
    let cert = sign_user_cert(
        &ca.data_dir().join("user_ca"),
        &key,
        "hostsync-test",
        &["deploy"],
        "+5m",
        41,
    );
    let login = sshd.ssh("deploy", &key, &cert, "id -un");
    assert!(
        login.status.success(),
        "login refused: {}\n{}",
        String::from_utf8_lossy(&login.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&login.stdout).trim(), "deploy");

    // Nothing changed on the CA: the second run (ETag, then 304) rewrites nothing.
    let before = snapshot(&dir, &[]);
    assert!(
        before.contains_key(".revoked.krl.etag"),
        "the CA sends an ETag"
    );
    let again = host_sync(&ca.url(), &dir, &["-v"]);
    assert_ok(&again);
    let version = krl_version_by_ssh_keygen(&dir.join("revoked.krl"));
    assert_eq!(
        stderr(&again),
        format!("mayfly host sync: unchanged (KRL version {version}, 1 user CA key)\n")
    );
    assert!(snapshot(&dir, &[]) == before);
}

#[test]
fn user_and_host_ca_keys_have_distinct_comments_and_an_older_install_keeps_its_file() {
    let ca = Mayfly::start("", &[]);
    let get = |path: &str| {
        http::get(&format!("{}{path}", ca.url()))
            .expect("GET")
            .text()
    };
    let user = get("/v1/ca/user.pub");
    let host = get("/v1/ca/host.pub");
    assert!(
        user.lines().all(|l| l.ends_with(" mayfly user CA")),
        "{user}"
    );
    assert!(
        host.lines().all(|l| l.ends_with(" mayfly host CA")),
        "{host}"
    );
    // The files in the data directory are the ones served.
    for (file, served) in [("user_ca.pub", &user), ("host_ca.pub", &host)] {
        let written = std::fs::read_to_string(ca.data_dir().join(file)).expect(file);
        assert_eq!(&written, served, "{file}");
    }
    // `mayfly known-hosts` carries the host CA's comment.
    let out = Command::new(Mayfly::bin())
        .args([
            "known-hosts",
            "--server",
            &ca.url(),
            "--domain",
            "*.example.com",
        ])
        .output()
        .expect("run mayfly known-hosts");
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim_end()
        .ends_with(" mayfly host CA"));

    // A host synced by an older version holds the same key with the old
    // comment. Syncing now changes nothing: same keys, same trust.
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path().join("mayfly");
    assert_ok(&host_sync(&ca.url(), &dir, &[]));
    let old_line = user.replace(" mayfly user CA", " mayfly-ca");
    assert_ne!(old_line, user);
    std::fs::write(dir.join("user_ca.pub"), &old_line).expect("old install");
    let before = snapshot(&dir, &[]);
    let again = host_sync(&ca.url(), &dir, &["-v"]);
    assert_ok(&again);
    assert!(
        stderr(&again).starts_with("mayfly host sync: unchanged ("),
        "{}",
        stderr(&again)
    );
    assert!(
        snapshot(&dir, &[]) == before,
        "the old file is kept byte for byte"
    );

    // And sshd still trusts the CA through that file.
    let sshd = Sshd::start_with_revoked_keys(&old_line, &dir.join("revoked.krl"));
    let keys = support::temp_dir("hostsync-keys");
    let (key, _) = keygen_ed25519(keys.path());
    let cert = sign_user_cert(
        &ca.data_dir().join("user_ca"),
        &key,
        "old-comment",
        &["deploy"],
        "+5m",
        43,
    );
    let login = sshd.ssh("deploy", &key, &cert, "true");
    assert!(
        login.status.success(),
        "login refused: {}\n{}",
        String::from_utf8_lossy(&login.stderr),
        sshd.log()
    );

    // A key that really changes is installed, with the new comment.
    std::fs::write(
        dir.join("user_ca.pub"),
        format!("{}\n", keygen_ed25519(keys.path()).1.trim()),
    )
    .expect("another key");
    let out = host_sync(&ca.url(), &dir, &["-v"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("updated user_ca.pub"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("user_ca.pub")).expect("user_ca.pub"),
        user
    );
}

#[test]
fn revocation_from_the_ca_reaches_sshd_through_sync() {
    let (_k, ca_key, ca_pub_path, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path().join("mayfly");
    ca.serve(&format!("{ca_line}\n"), &make_krl(1, None, &[]));
    assert_ok(&host_sync(&ca.url(), &dir, &[]));

    let installed = std::fs::read_to_string(dir.join("user_ca.pub")).expect("user_ca.pub");
    let sshd = Sshd::start_with_revoked_keys(&installed, &dir.join("revoked.krl"));
    let keys = support::temp_dir("hostsync-keys");
    let (key7, _) = keygen_ed25519(keys.path());
    let cert7 = sign_user_cert(&ca_key, &key7, "job-7", &["deploy"], "+5m", 7);
    let (key8, _) = keygen_ed25519(keys.path());
    let cert8 = sign_user_cert(&ca_key, &key8, "job-8", &["deploy"], "+5m", 8);
    assert!(sshd.ssh("deploy", &key7, &cert7, "true").status.success());

    ca.route("/v1/krl", Canned::ok(make_krl(2, Some(&ca_pub_path), &[7])));
    let out = host_sync(&ca.url(), &dir, &["-v"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("updated revoked.krl (KRL version 2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(krl_version_by_ssh_keygen(&dir.join("revoked.krl")), "2");
    let refused = sshd.ssh("deploy", &key7, &cert7, "true");
    assert_eq!(
        refused.status.code(),
        Some(255),
        "revoked cert must be refused"
    );
    assert!(
        sshd.log().contains("revoked"),
        "sshd log should say revoked:\n{}",
        sshd.log()
    );
    assert!(sshd.ssh("deploy", &key8, &cert8, "true").status.success());
}

#[test]
fn known_hosts_prints_cert_authority_lines_for_the_host_ca() {
    let ca = Mayfly::start("", &[]);
    let host_pub = http::get(&format!("{}/v1/ca/host.pub", ca.url()))
        .expect("GET host.pub")
        .text();
    let out = Command::new(Mayfly::bin())
        .args(["known-hosts", "--server", &ca.url()])
        .args(["--domain", "*.example.com", "--domain", "10.1.*"])
        .output()
        .expect("run mayfly known-hosts");
    assert_ok(&out);
    let expected: String = host_pub
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| format!("@cert-authority *.example.com,10.1.* {}\n", l.trim()))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    let bad = Command::new(Mayfly::bin())
        .args(["known-hosts", "--server", &ca.url(), "--domain", "a b"])
        .output()
        .expect("run mayfly known-hosts");
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty());
}

/// A test TLS PKI made with rcgen: `ca.pem` and `server.crt`/`server.key`
/// for localhost and 127.0.0.1, in `dir`.
fn tls_pki(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = params.self_signed(&ca_key).expect("self-sign CA");
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).expect("write ca.pem");
    let issuer = Issuer::new(params, ca_key);
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &issuer).expect("sign leaf");
    std::fs::write(dir.join("server.crt"), cert.pem()).expect("write server.crt");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write server.key");
    ca_pem
}

#[test]
fn sync_over_https_trusts_the_ca_file_and_nothing_else() {
    let pki = support::temp_dir("hostsync-tls");
    let ca_pem = tls_pki(pki.path());
    let quote = |p: PathBuf| serde_json::to_string(p.to_str().expect("utf-8")).expect("quote");
    let tls = format!(
        "\n[tls]\ncert_file = {}\nkey_file = {}\n",
        quote(pki.path().join("server.crt")),
        quote(pki.path().join("server.key"))
    );
    let ca = Mayfly::start_tls(&tls, &[], &ca_pem);
    let server = ca.https_url();
    let ca_file = ca_pem.to_str().expect("utf-8");
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();

    assert_ok(&host_sync(&server, dir, &["--ca-file", ca_file]));
    let before = snapshot(dir, &[]);
    assert!(before.contains_key("user_ca.pub") && before.contains_key("revoked.krl"));

    // The built-in web roots do not know the test CA: refused, files kept.
    let out = host_sync(&server, dir, &[]);
    assert_failed_and_kept(&out, "certificate", dir, &before, &[]);

    // --ca-file only makes sense for https.
    let http_url = format!("http://127.0.0.1:{}", ca.port());
    let out = host_sync(&http_url, dir, &["--ca-file", ca_file]);
    assert_failed_and_kept(&out, "not https", dir, &before, &[]);
}

// ---------------------------------------------------------------------------
// Protocol behaviour against a fake CA
// ---------------------------------------------------------------------------

#[test]
fn etag_is_sent_back_and_304_keeps_the_files() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let krl = make_krl(3, None, &[]);
    ca.route("/v1/ca/user.pub", Canned::ok(format!("{ca_line}\n")));
    ca.route_fn("/v1/krl", move |req| {
        if req.header("if-none-match") == Some("\"krl-3\"") {
            Canned::status(304, "")
        } else {
            Canned::ok(krl.clone())
                .header("ETag", "\"krl-3\"")
                .header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        }
    });
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    assert_eq!(
        std::fs::read_to_string(dir.join(".revoked.krl.etag")).expect("etag file"),
        "\"krl-3\"\n"
    );
    let before = snapshot(dir, &[]);

    let out = host_sync(&ca.url(), dir, &["-v"]);
    assert_ok(&out);
    assert_eq!(
        stderr(&out),
        "mayfly host sync: unchanged (KRL version 3, 1 user CA key)\n"
    );
    let krl_requests: Vec<Seen> = ca
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v1/krl")
        .collect();
    assert_eq!(krl_requests.len(), 2);
    assert_eq!(krl_requests[0].header("if-none-match"), None);
    assert_eq!(krl_requests[1].header("if-none-match"), Some("\"krl-3\""));
    assert!(snapshot(dir, &[]) == before);
}

#[test]
fn etag_is_not_sent_when_the_installed_krl_is_corrupt() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let krl = make_krl(3, None, &[]);
    ca.route("/v1/ca/user.pub", Canned::ok(format!("{ca_line}\n")));
    ca.route_fn("/v1/krl", move |req| {
        if req.header("if-none-match").is_some() {
            Canned::status(304, "")
        } else {
            Canned::ok(krl.clone()).header("ETag", "\"krl-3\"")
        }
    });
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    std::fs::write(dir.join("revoked.krl"), b"damaged by someone").expect("damage");
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    assert_eq!(krl_version_by_ssh_keygen(&dir.join("revoked.krl")), "3");
}

#[test]
fn unchanged_krl_version_is_not_rewritten_and_new_ca_key_is_installed() {
    let (_k, _key, ca_pub_path, ca_line) = fake_ca_key();
    let (_k2, _key2, _pub2, next_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    ca.serve(
        &format!("{ca_line}\n"),
        &make_krl(5, Some(&ca_pub_path), &[1]),
    );
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    let before = snapshot(dir, &[]);
    // Same version, other bytes revoking nothing more (earlier CAs left
    // out revocations that had expired since): unchanged.
    ca.serve(
        &format!("{ca_line}\n{next_line}\n"),
        &make_krl(5, None, &[]),
    );
    let out = host_sync(&ca.url(), dir, &["-v"]);
    assert_ok(&out);
    assert_eq!(
        stderr(&out),
        "mayfly host sync: updated user_ca.pub (KRL version 5, 2 user CA keys)\n"
    );
    assert_eq!(
        std::fs::read(dir.join("revoked.krl")).expect("krl"),
        before["revoked.krl"]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("user_ca.pub")).expect("ca"),
        format!("{ca_line}\n{next_line}\n")
    );
}

#[test]
fn first_sync_with_an_empty_krl_on_the_ca_writes_a_valid_file() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path().join("new");
    ca.serve(&format!("{ca_line}\n"), &make_krl(0, None, &[]));
    assert_ok(&host_sync(&ca.url(), &dir, &[]));
    assert_eq!(krl_version_by_ssh_keygen(&dir.join("revoked.krl")), "0");
}

#[test]
fn first_sync_with_no_krl_on_the_ca_writes_an_empty_valid_file() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    ca.route("/v1/ca/user.pub", Canned::ok(format!("{ca_line}\n")));
    // No /v1/krl route: 404.
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    assert_eq!(krl_version_by_ssh_keygen(&dir.join("revoked.krl")), "0");

    // Once a KRL exists, losing it is an error, not a reason to forget it.
    ca.route("/v1/krl", Canned::ok(make_krl(4, None, &[])));
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    let before = snapshot(dir, &[]);
    ca.route("/v1/krl", Canned::status(404, "gone"));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "HTTP 404", dir, &before, &[]);
}

#[test]
fn plain_http_to_a_remote_ca_is_refused() {
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path().join("never-created");
    let out = host_sync("http://ca.example.com", &dir, &[]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(stderr(&out).contains("use https"), "{}", stderr(&out));
    assert!(!dir.exists());
}

// ---------------------------------------------------------------------------
// Faults: the last good files stay, byte for byte
// ---------------------------------------------------------------------------

#[test]
fn ca_down_keeps_the_last_good_files() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let before = {
        let ca = FakeCa::start();
        synced_dir(&ca, &ca_line, dir)
    };
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let out = host_sync(&closed, dir, &[]);
    assert_failed_and_kept(&out, "cannot fetch", dir, &before, &[]);
    assert!(
        stderr(&out).contains(": user_ca.pub (1 key), revoked.krl (KRL version 5)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn truncated_krl_keeps_the_last_good_files() {
    let (_k, _key, ca_pub_path, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let before = synced_dir(&ca, &ca_line, dir);
    let newer = make_krl(6, Some(&ca_pub_path), &[3, 9, 12]);

    // Cut inside the header, announced as such.
    ca.route("/v1/krl", Canned::ok(newer[..30].to_vec()));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "truncated", dir, &before, &[]);

    // Header intact, revocation sections cut short: sshd could not load it.
    ca.route("/v1/krl", Canned::ok(newer[..newer.len() - 4].to_vec()));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "truncated", dir, &before, &[]);

    // Cut on the wire: Content-Length promises more than arrives.
    ca.route(
        "/v1/krl",
        Canned {
            cut_after: Some(newer.len() / 2),
            ..Canned::ok(newer.clone())
        },
    );
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "cannot fetch", dir, &before, &[]);
}

#[test]
fn corrupt_krl_keeps_the_last_good_files() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let before = synced_dir(&ca, &ca_line, dir);
    ca.route("/v1/krl", Canned::ok("<html>502 Bad Gateway</html>"));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "KRL", dir, &before, &[]);
}

#[test]
fn garbage_ca_file_keeps_the_last_good_files() {
    let (_k, ca_key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let before = synced_dir(&ca, &ca_line, dir);
    ca.route("/v1/krl", Canned::ok(make_krl(6, None, &[])));

    for (body, what) in [
        ("<html>maintenance</html>\n".to_string(), "line 1"),
        (String::new(), "no public key"),
        ("# nothing but comments\n".to_string(), "no public key"),
        (format!("{ca_line}\nssh-ed25519 AAAA-truncated\n"), "line 2"),
    ] {
        ca.route("/v1/ca/user.pub", Canned::ok(body));
        let out = host_sync(&ca.url(), dir, &[]);
        assert_failed_and_kept(&out, what, dir, &before, &[]);
        assert!(stderr(&out).contains("user CA keys"), "{}", stderr(&out));
    }

    // A certificate where a CA key belongs.
    let keys = support::temp_dir("hostsync-keys");
    let (key, _) = keygen_ed25519(keys.path());
    let cert = sign_user_cert(&ca_key, &key, "x", &["deploy"], "+5m", 1);
    let cert_line = std::fs::read_to_string(cert).expect("cert");
    ca.route("/v1/ca/user.pub", Canned::ok(cert_line));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "certificate", dir, &before, &[]);

    // Too large.
    let mut big = format!("{ca_line}\n");
    while big.len() <= 64 * 1024 {
        big.push_str(&format!("{ca_line}\n"));
    }
    ca.route("/v1/ca/user.pub", Canned::ok(big));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "larger than", dir, &before, &[]);
}

/// sshd reads `TrustedUserCAKeys` line by line, skipping only leading spaces
/// and tabs, then empty and `#` lines; any other line that is not a key makes
/// it refuse every certificate. A CA file with such a line (a blank line
/// ending in a carriage return, a comment or key indented with other
/// white space) is refused, and the old files are kept.
#[test]
fn ca_file_lines_that_sshd_cannot_read_are_refused() {
    let (_k, ca_key, _pub, ca_line) = fake_ca_key();
    let keys = support::temp_dir("hostsync-keys");
    let (key, _) = keygen_ed25519(keys.path());
    let cert = sign_user_cert(&ca_key, &key, "job-1", &["deploy"], "+5m", 1);

    // What real sshd does with such a file: every certificate is refused,
    // while the same file without the carriage return works.
    let krl_dir = support::temp_dir("hostsync-krl");
    let krl = krl_dir.path().join("revoked.krl");
    std::fs::write(&krl, make_krl(1, None, &[])).expect("krl");
    let crlf = format!("# mayfly user CA\r\n\r\n{ca_line}\n");
    let sshd = Sshd::start_with_revoked_keys(&crlf, &krl);
    let refused = sshd.ssh("deploy", &key, &cert, "true");
    assert_eq!(refused.status.code(), Some(255), "sshd accepted {crlf:?}");
    drop(sshd);
    let sshd = Sshd::start_with_revoked_keys(&crlf.replace('\r', ""), &krl);
    assert!(sshd.ssh("deploy", &key, &cert, "true").status.success());
    drop(sshd);

    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let before = synced_dir(&ca, &ca_line, dir);
    ca.route("/v1/krl", Canned::ok(make_krl(6, None, &[])));
    for (body, what) in [
        (crlf.clone(), "line 2"),
        (format!("{ca_line}\n\r\n"), "line 2"),
        (format!("\u{a0}{ca_line}\n"), "line 1"),
        (format!("\u{b}# comment\n{ca_line}\n"), "line 1"),
    ] {
        ca.route("/v1/ca/user.pub", Canned::ok(body.clone()));
        let out = host_sync(&ca.url(), dir, &[]);
        assert_failed_and_kept(&out, what, dir, &before, &[]);
        assert!(
            stderr(&out).contains("user CA keys"),
            "{body:?}: {}",
            stderr(&out)
        );
    }

    // Lines sshd reads fine are still accepted: CRLF key lines, comments
    // indented with spaces and tabs, blank lines of spaces.
    // A host that already holds these keys keeps its file (the key set is
    // unchanged); a fresh host installs the lines as served.
    let fine = format!(" \t# mayfly user CA\n  \n{ca_line}\r\n");
    ca.route("/v1/ca/user.pub", Canned::ok(fine.clone()));
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    let kept = std::fs::read_to_string(dir.join("user_ca.pub")).expect("user_ca.pub");
    assert_eq!(kept, format!("{ca_line}\n"));
    let fresh_tmp = support::temp_dir("hostsync");
    let fresh = fresh_tmp.path();
    assert_ok(&host_sync(&ca.url(), fresh, &[]));
    let installed = std::fs::read_to_string(fresh.join("user_ca.pub")).expect("user_ca.pub");
    assert_eq!(installed, fine);
    let sshd = Sshd::start_with_revoked_keys(&installed, &krl);
    assert!(sshd.ssh("deploy", &key, &cert, "true").status.success());
}

#[test]
fn http_error_keeps_the_last_good_files() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let before = synced_dir(&ca, &ca_line, dir);
    ca.route("/v1/krl", Canned::status(503, "store down"));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "HTTP 503", dir, &before, &[]);
    ca.route("/v1/krl", Canned::ok(make_krl(6, None, &[])));
    ca.route("/v1/ca/user.pub", Canned::status(500, "oops"));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "HTTP 500", dir, &before, &[]);
}

#[test]
fn older_krl_than_installed_is_refused_and_files_kept() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let (_k2, _key2, _pub2, other_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    let before = synced_dir(&ca, &ca_line, dir);
    // A new CA key arrives with an older KRL: neither is installed.
    ca.serve(&format!("{other_line}\n"), &make_krl(4, None, &[]));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "older", dir, &before, &[]);
    assert!(stderr(&out).contains("version 4"), "{}", stderr(&out));
}

#[test]
fn a_krl_of_the_installed_version_with_other_contents_is_refused_and_files_kept() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let (_k2, _key2, other_pub, other_line) = fake_ca_key();
    let ca = FakeCa::start();
    let tmp = support::temp_dir("hostsync");
    let dir = tmp.path();
    // Installed: version 5, revoking nothing.
    let before = synced_dir(&ca, &ca_line, dir);
    // A rebuilt CA reached version 5 too, revoking serial 9: the host must
    // not keep the old KRL as if nothing changed.
    ca.serve(
        &format!("{other_line}\n"),
        &make_krl(5, Some(&other_pub), &[9]),
    );
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(
        &out,
        "revokes certificates that one does not",
        dir,
        &before,
        &[],
    );
    // The same KRL again is no change.
    ca.serve(&format!("{ca_line}\n"), &make_krl(5, None, &[]));
    assert_ok(&host_sync(&ca.url(), dir, &[]));
}

#[test]
fn full_disk_keeps_the_last_good_files_and_leaves_no_temp_file() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let fs = Tmpfs::mount("256k");
    let dir = fs.path();
    let before = synced_dir(&ca, &ca_line, dir);

    // Fill the file system to the last byte.
    let filler = dir.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("create filler");
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.flush();
    }

    let (_k2, _key2, _pub2, next_line) = fake_ca_key();
    ca.serve(
        &format!("{ca_line}\n{next_line}\n"),
        &make_krl(6, None, &[]),
    );
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "No space left", dir, &before, &["filler"]);

    // With room again, the next run installs the new files.
    std::fs::remove_file(&filler).expect("remove filler");
    assert_ok(&host_sync(&ca.url(), dir, &[]));
    assert_eq!(krl_version_by_ssh_keygen(&dir.join("revoked.krl")), "6");
}

#[test]
fn read_only_disk_keeps_the_last_good_files() {
    let (_k, _key, _pub, ca_line) = fake_ca_key();
    let ca = FakeCa::start();
    let fs = Tmpfs::mount("256k");
    let dir = fs.path();
    let before = synced_dir(&ca, &ca_line, dir);
    fs.remount("ro");
    ca.serve(&format!("{ca_line}\n"), &make_krl(6, None, &[]));
    let out = host_sync(&ca.url(), dir, &[]);
    assert_failed_and_kept(&out, "Read-only file system", dir, &before, &[]);
    fs.remount("rw");
}

// ---------------------------------------------------------------------------
// mayfly host cert against a fake CA
// ---------------------------------------------------------------------------

/// A host key pair and a host certificate for it signed by a test CA.
fn host_key_and_cert(dir: &Path) -> (PathBuf, String, String) {
    let (ca_key, _) = keygen_ed25519(dir);
    let key = dir.join("ssh_host_ed25519_key");
    run_ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        key.to_str().expect("utf-8"),
    ]);
    let pub_path = dir.join("ssh_host_ed25519_key.pub");
    run_ssh_keygen(&[
        "-q",
        "-s",
        ca_key.to_str().expect("utf-8"),
        "-h",
        "-I",
        "host-web1",
        "-n",
        "web1.example.com",
        "-V",
        "+1d",
        pub_path.to_str().expect("utf-8"),
    ]);
    let cert_path = dir.join("ssh_host_ed25519_key-cert.pub");
    let cert = std::fs::read_to_string(&cert_path).expect("cert");
    std::fs::remove_file(&cert_path).expect("remove the test's own cert");
    let public = std::fs::read_to_string(&pub_path).expect("pub");
    (pub_path, public.trim().to_string(), cert.trim().to_string())
}

fn host_cert_cmd(ca: &FakeCa, pub_path: &Path, token_file: &Path, extra: &[&str]) -> Output {
    Command::new(Mayfly::bin())
        .args(["host", "cert", "--server", &ca.url(), "--role", "web"])
        .arg("--key")
        .arg(pub_path)
        .arg("--token-file")
        .arg(token_file)
        .args(extra)
        .env_remove("MAYFLY_TOKEN")
        .env_remove("MAYFLY_SERVER")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        .output()
        .expect("run mayfly host cert")
}

#[test]
fn host_cert_writes_the_certificate_next_to_the_key() {
    let tmp = support::temp_dir("hostcert");
    let (pub_path, public, cert) = host_key_and_cert(tmp.path());
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "header.payload.sig\n").expect("token");
    let ca = FakeCa::start();
    let answer = serde_json::json!({
        "certificate": cert, "serial": 77, "key_id": "host-web1",
        "principals": ["web1.example.com"], "valid_after": 0, "valid_before": 4_000_000_000u64,
    });
    ca.route(
        "/v1/certs/host",
        Canned::ok(answer.to_string()).header("Content-Type", "application/json"),
    );
    let out = host_cert_cmd(
        &ca,
        &pub_path,
        &token_file,
        &["--hostname", "web1.example.com"],
    );
    assert_ok(&out);
    let expected_path = tmp.path().join("ssh_host_ed25519_key-cert.pub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected_path.display().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(&expected_path).expect("cert written"),
        format!("{cert}\n")
    );
    let mode = std::fs::metadata(&expected_path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // ssh-keygen reads it as a host certificate.
    let shown = run_ssh_keygen(&["-L", "-f", expected_path.to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("host certificate"));
    // --json: what was issued and where it went.
    let out = host_cert_cmd(
        &ca,
        &pub_path,
        &token_file,
        &["--hostname", "web1.example.com", "--json"],
    );
    assert_ok(&out);
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("host cert --json");
    assert_eq!(facts["serial"], 77, "{facts}");
    assert_eq!(facts["principals"], serde_json::json!(["web1.example.com"]));
    assert_eq!(facts["certificate"], expected_path.display().to_string());
    assert_eq!(facts["valid_before"], "2096-10-02T07:06:40Z");

    let req = ca
        .seen()
        .into_iter()
        .find(|s| s.path == "/v1/certs/host")
        .expect("request");
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.header("authorization"),
        Some("Bearer header.payload.sig")
    );
    let body: serde_json::Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(body["role"], "web");
    assert_eq!(body["hostnames"], serde_json::json!(["web1.example.com"]));
    let sent = body["public_key"].as_str().expect("public_key");
    assert_eq!(
        sent.split_whitespace().take(2).collect::<Vec<_>>(),
        public.split_whitespace().take(2).collect::<Vec<_>>()
    );
}

#[test]
fn host_cert_refusal_shows_the_ca_message_and_writes_nothing() {
    let tmp = support::temp_dir("hostcert");
    let (pub_path, _public, _cert) = host_key_and_cert(tmp.path());
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "t.t.t").expect("token");
    let ca = FakeCa::start();
    let err = serde_json::json!({
        "error": "policy_denied", "message": "role web: claim repository does not match",
        "request_id": "req-1",
    });
    ca.route("/v1/certs/host", Canned::status(403, &err.to_string()));
    let out = host_cert_cmd(&ca, &pub_path, &token_file, &[]);
    assert_eq!(out.status.code(), Some(3), "a refusal exits 3");
    let e = stderr(&out);
    assert!(
        e.contains("403") && e.contains("claim repository does not match") && e.contains("req-1"),
        "{e}"
    );
    assert!(!tmp.path().join("ssh_host_ed25519_key-cert.pub").exists());
}

#[test]
fn host_cert_for_another_key_is_refused() {
    let tmp = support::temp_dir("hostcert");
    let (pub_path, _public, _cert) = host_key_and_cert(tmp.path());
    let other = support::temp_dir("hostcert-other");
    let (_p, _pb, other_cert) = host_key_and_cert(other.path());
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "t.t.t").expect("token");
    let ca = FakeCa::start();
    let answer = serde_json::json!({
        "certificate": other_cert, "serial": 1, "key_id": "x",
        "principals": [], "valid_after": 0, "valid_before": 4_000_000_000u64,
    });
    ca.route("/v1/certs/host", Canned::ok(answer.to_string()));
    let out = host_cert_cmd(&ca, &pub_path, &token_file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not for"), "{}", stderr(&out));
    assert!(!tmp.path().join("ssh_host_ed25519_key-cert.pub").exists());
}
