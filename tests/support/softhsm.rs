//! A real SoftHSM2 (the `softhsm2` package) with a private token directory,
//! for the PKCS#11 tests and benchmarks.
//!
//! A PKCS#11 module reads its configuration once per process, when it is
//! initialized, so there is one SoftHSM per test process: [`softhsm`] makes
//! it on first use (config file, token directory, tokens made with the real
//! `softhsm2-util`) and points `SOFTHSM2_CONF` at it before mayfly loads the
//! module. The directory lives under the target's tmp dir and is named by
//! pid; directories of processes that are gone are removed at the next start.
//!
//! Include with `#[path = "support/softhsm.rs"] mod softhsm;` (tests) or
//! `#[path = "../tests/support/softhsm.rs"] mod softhsm;` (benches).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The token every test and benchmark key lives in.
pub const TOKEN: &str = "mayfly-test";
/// A second token, only for the wrong-PIN test: a login elsewhere on the
/// main token would make any PIN look right (login state is per process).
pub const PIN_TEST_TOKEN: &str = "mayfly-pin-test";
/// A token only `mayfly serve` and the CLI, in processes of their own,
/// use. SoftHSM's file store is read by each process on its own: a token
/// that a test of this process is writing (a new key) at that moment is
/// not found by another process, so no in-process test writes this one.
pub const SERVE_TOKEN: &str = "mayfly-serve-test";
/// The user PIN of every token.
pub const PIN: &str = "mayfly-user-pin-1234";
/// The security officer PIN of every token.
pub const SO_PIN: &str = "mayfly-so-pin-5678";
/// Label of the ECDSA P-256 key made by `ssh-keygen` and imported with
/// `softhsm2-util --import` before the module is loaded.
pub const IMPORTED_LABEL: &str = "imported-by-softhsm2-util";

/// The process's SoftHSM.
pub struct SoftHsm {
    dir: PathBuf,
    module: PathBuf,
    imported_pub: String,
}

impl SoftHsm {
    /// The module to give mayfly (`pkcs11_module`).
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The directory holding `softhsm2.conf`, the tokens and scratch files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OpenSSH public key line of the key imported as [`IMPORTED_LABEL`].
    pub fn imported_public_key(&self) -> &str {
        &self.imported_pub
    }
}

/// The SoftHSM of this process, set up on first use. Panics (with the
/// program's output) if `softhsm2` is missing or a token cannot be made.
pub fn softhsm() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(setup)
}

fn module_path() -> PathBuf {
    let candidates = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("libsofthsm2.so not found in {candidates:?}: install softhsm2 (scripts/test.sh does this)")
        })
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {cmd:?}: {e} (install softhsm2 / openssh-client)")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("softhsm-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn setup() -> SoftHsm {
    let module = module_path();
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_stale_dirs(base);
    let dir = base.join(format!("softhsm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("create the SoftHSM token directory");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .expect("write softhsm2.conf");
    // Before any thread loads the module: SoftHSM reads this in C_Initialize.
    std::env::set_var("SOFTHSM2_CONF", &conf);

    for label in [TOKEN, PIN_TEST_TOKEN, SERVE_TOKEN] {
        run(
            "softhsm2-util --init-token",
            Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", SO_PIN, "--pin", PIN]),
        );
    }

    // An operator-provisioned key: made by ssh-keygen, imported by softhsm2-util.
    let key = dir.join("imported_ecdsa");
    run(
        "ssh-keygen (key to import)",
        Command::new("ssh-keygen")
            .args([
                "-q", "-t", "ecdsa", "-b", "256", "-m", "PKCS8", "-N", "", "-C", "imported", "-f",
            ])
            .arg(&key),
    );
    run(
        "softhsm2-util --import",
        Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .arg("--import")
            .arg(&key)
            .args([
                "--token",
                TOKEN,
                "--label",
                IMPORTED_LABEL,
                "--id",
                "a1",
                "--pin",
                PIN,
            ]),
    );
    let imported_pub = std::fs::read_to_string(dir.join("imported_ecdsa.pub"))
        .expect("read the imported key's public half");
    std::fs::remove_file(&key).expect("remove the imported private key file");

    SoftHsm {
        dir,
        module,
        imported_pub: imported_pub.trim().to_string(),
    }
}
