//! A real PostgreSQL server (Debian's `postgresql` package) for the tests
//! of the PostgreSQL store and of many replicas.
//!
//! Each [`Postgres`] is a private cluster: `initdb` into a temporary
//! directory as the `postgres` OS user (initdb refuses root), listening on
//! 127.0.0.1 on a free port, with password (SCRAM) authentication for the
//! superuser `mayfly`. Tests take a fresh database each
//! ([`Postgres::create_database`]), so tests sharing one cluster
//! ([`Postgres::shared`]) never see each other's rows. Fault tests start
//! their own cluster and stop, start, or promote a standby of it.
//!
//! A cluster that cannot start panics with PostgreSQL's own log: these
//! tests fail, they never skip. Dropping a [`Postgres`] stops it and removes
//! its directory; a watchdog does the same if the test binary dies first
//! (and for [`Postgres::shared`], which is never dropped).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::{find_program, free_port, require_root, temp_dir, wait_for};

/// The superuser the tests (and mayfly) connect as.
pub const USER: &str = "mayfly";
/// Its password (a test cluster on loopback; given to mayfly in a file).
const PASSWORD: &str = "mayfly-test-password";
/// The OS user that owns the cluster's files and processes.
const OS_USER: &str = "postgres";

/// A private PostgreSQL cluster.
pub struct Postgres {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    password_file: PathBuf,
    next_db: AtomicUsize,
    watchdog: Option<std::process::Child>,
}

/// One database of a [`Postgres`] cluster, as mayfly's `[store]` sees it.
#[derive(Debug, Clone)]
pub struct PgDb {
    /// Database name.
    pub name: String,
    /// `postgres://mayfly@127.0.0.1:PORT/NAME` (no password in it).
    pub url: String,
    /// A file with the password (root-owned, 0600), for `password_file`.
    pub password_file: PathBuf,
    port: u16,
    bin: PathBuf,
}

/// The directory of the newest installed PostgreSQL's programs.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => {
            // Not Debian's layout: initdb on PATH, or a clear panic.
            let initdb = find_program("initdb", &[], "postgresql");
            initdb
                .parent()
                .expect("initdb has a parent directory")
                .to_path_buf()
        }
    }
}

/// A command that runs as the cluster's OS user (initdb and pg_ctl refuse
/// root), with a clean environment; the caller adds the program.
fn as_postgres_user() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        OS_USER,
        "--regid",
        OS_USER,
        "--init-groups",
        "--reset-env",
    ]);
    cmd
}

/// Runs `cmd` (a PostgreSQL program) as the cluster's OS user, with the
/// environment a client needs. Panics with its output if it fails.
fn as_postgres(bin: &Path, program: &str, args: &[&str], what: &str) -> Output {
    let out = as_postgres_user()
        .arg(bin.join(program))
        .args(args)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run setpriv (util-linux): {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", &format!("{OS_USER}:{OS_USER}")])
        .arg(path)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown {} to {OS_USER} failed; is the postgresql package installed (it creates the user)?",
        path.display()
    );
}

impl Postgres {
    /// Starts a new private cluster (initdb, then start). Needs root, to
    /// run PostgreSQL as its own user.
    pub fn start() -> Postgres {
        require_root("a PostgreSQL test cluster");
        let bin = pg_bin();
        let dir = temp_dir("pg");
        let root = dir.path().to_path_buf();
        let pwfile = root.join("initdb-password");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("write the initdb password file");
        chown_to_postgres(&root);
        let data = root.join("data");
        as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                USER,
                "--auth=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            "initdb",
        );
        std::fs::remove_file(&pwfile).ok();
        // The password file mayfly reads (as root).
        let password_file = root.join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write the password file");
        set_mode(&password_file, 0o600);
        let mut pg = Postgres {
            dir: Some(dir),
            root,
            bin,
            port: free_port(),
            password_file,
            next_db: AtomicUsize::new(0),
            watchdog: None,
        };
        pg.configure(&[]);
        pg.start_server();
        pg.watchdog = Some(pg.spawn_watchdog());
        pg
    }

    /// One cluster for the whole test binary, started on first use and
    /// stopped by its watchdog when the binary exits.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Writes the settings the tests rely on into postgresql.conf (and
    /// `extra` lines after them).
    fn configure(&self, extra: &[&str]) {
        let sock = self.socket_dir();
        std::fs::create_dir_all(&sock).expect("create the socket directory");
        chown_to_postgres(&sock);
        let mut conf = format!(
            "\n# mayfly tests\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nmax_connections = 300\n\
             shared_buffers = 64MB\nwal_level = replica\nmax_wal_senders = 5\n\
             hot_standby = on\nlog_min_messages = warning\n",
            self.port,
            sock.display()
        );
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = self.data_dir().join("postgresql.conf");
        let mut current = std::fs::read_to_string(&path).unwrap_or_default();
        current.push_str(&conf);
        std::fs::write(&path, current).expect("write postgresql.conf");
        chown_to_postgres(&path);
    }

    fn start_server(&self) {
        let log = self.log_file();
        if !log.exists() {
            std::fs::write(&log, "").expect("create the PostgreSQL log");
            chown_to_postgres(&log);
        }
        let data = self.data_dir();
        let out = as_postgres_user()
            .arg(self.bin.join("pg_ctl"))
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "PostgreSQL did not start ({}):\n--- pg_ctl\n{}{}\n--- log {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let ready = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        });
        assert!(
            ready.is_some(),
            "PostgreSQL started but does not accept connections on 127.0.0.1:{}:\n{}",
            self.port,
            self.log()
        );
    }

    /// Stops and removes the cluster once this test process is gone, even
    /// if it dies without dropping the guard.
    fn spawn_watchdog(&self) -> std::process::Child {
        let script = r#"
            parent="$1"; pg_ctl="$2"; data="$3"; root="$4"
            while kill -0 "$parent" 2>/dev/null; do sleep 1; done
            setpriv --reuid postgres --regid postgres --init-groups --reset-env \
                "$pg_ctl" stop -D "$data" -m immediate >/dev/null 2>&1
            rm -rf "$root"
        "#;
        Command::new("sh")
            .args(["-c", script, "pg-watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.bin.join("pg_ctl"))
            .arg(self.data_dir())
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog")
    }

    /// PostgreSQL's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Stops the server (fast shutdown: open sessions are cut).
    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    /// Crashes the server: immediate shutdown, as a power cut looks to
    /// PostgreSQL. Nothing is written on the way out; WAL not yet written
    /// is lost, and the next start recovers from the WAL on disk.
    pub fn crash(&self) {
        self.stop_mode("immediate");
    }

    fn stop_mode(&self, mode: &str) {
        let data = self.data_dir();
        as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                mode,
                "-D",
                data.to_str().expect("utf-8 path"),
            ],
            "pg_ctl stop",
        );
    }

    /// Starts the server again after [`Postgres::stop`], on the same port.
    pub fn restart(&self) {
        self.start_server();
    }

    /// A new, empty database.
    pub fn create_database(&self) -> PgDb {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("mayfly_t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.db(&name)
    }

    /// The handle of an existing database `name`.
    pub fn db(&self, name: &str) -> PgDb {
        PgDb {
            name: name.to_string(),
            url: format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port),
            password_file: self.password_file.clone(),
            port: self.port,
            bin: self.bin.clone(),
        }
    }

    /// Runs `sql` in database `db` with psql; returns its unaligned,
    /// tuples-only output. Panics if psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(&self.bin, self.port, db, sql)
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started
    /// on its own port. Promote it with [`Postgres::promote`].
    pub fn standby(&self) -> Postgres {
        let dir = temp_dir("pg-standby");
        let root = dir.path().to_path_buf();
        chown_to_postgres(&root);
        let data = root.join("data");
        let out = as_postgres_user()
            .arg("env")
            .arg(format!("PGPASSWORD={PASSWORD}"))
            .arg(self.bin.join("pg_basebackup"))
            .args([
                "-w",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
            ])
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast"])
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let password_file = root.join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write the password file");
        set_mode(&password_file, 0o600);
        let mut standby = Postgres {
            dir: Some(dir),
            root,
            bin: self.bin.clone(),
            port: free_port(),
            password_file,
            next_db: AtomicUsize::new(0),
            watchdog: None,
        };
        // The copied postgresql.conf names the primary's port and socket
        // directory; the lines appended now win (the last setting counts).
        standby.configure(&[]);
        standby.start_server();
        standby.watchdog = Some(standby.spawn_watchdog());
        standby
    }

    /// Promotes a standby to primary (`pg_ctl promote`) and waits until it
    /// accepts writes.
    pub fn promote(&self) {
        let data = self.data_dir();
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["promote", "-w", "-D", data.to_str().expect("utf-8 path")],
            "pg_ctl promote",
        );
        let writable = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            (self.psql("postgres", "SELECT pg_is_in_recovery()").trim() == "f").then_some(())
        });
        assert!(
            writable.is_some(),
            "the promoted standby is still in recovery"
        );
    }

    /// Whether this cluster is a standby still replaying the primary's WAL.
    pub fn in_recovery(&self) -> bool {
        self.psql("postgres", "SELECT pg_is_in_recovery()").trim() == "t"
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = as_postgres_user()
            .arg(self.bin.join("pg_ctl"))
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        drop(self.dir.take());
    }
}

/// The passphrase of [`encrypted_ca_toml`]'s CA keys.
pub const CA_PASSPHRASE: &str = "one CA for every replica";

/// A `[ca]` section with passphrase-encrypted CA keys, which a store shared
/// by replicas requires. The passphrase file lives as long as the test
/// binary, and is removed after it.
pub fn encrypted_ca_toml() -> String {
    use std::os::unix::fs::PermissionsExt;
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        let f = super::binary_temp_dir("ca-passphrase").join("passphrase");
        std::fs::write(&f, CA_PASSPHRASE).expect("write the CA passphrase");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the CA passphrase");
        f
    });
    format!(
        "[ca]\nkey_protection = \"passphrase\"\npassphrase_file = {:?}\n",
        file.display().to_string()
    )
}

impl PgDb {
    /// The `[store]` section of a mayfly config that uses this database.
    pub fn store_toml(&self) -> String {
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n",
            self.url,
            self.password_file.display()
        )
    }

    /// Runs `sql` in this database with psql; returns its unaligned,
    /// tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.bin, self.port, &self.name, sql)
    }
}

fn psql(bin: &Path, port: u16, db: &str, sql: &str) -> String {
    let out = Command::new(bin.join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            USER,
            "-d",
            db,
            "-w",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-q", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .expect("run psql (postgresql-client)");
    assert!(
        out.status.success(),
        "psql -d {db} -c {sql:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}
