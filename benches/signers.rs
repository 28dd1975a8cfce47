//! Signatures per second for each CA key backend: the file key held in
//! memory, and SoftHSM2 (PKCS#11) Ed25519, ECDSA P-256/P-384 and RSA-3072;
//! plus what the passphrase costs at start-up (bcrypt-pbkdf, 16 rounds).
//!
//! `cargo bench --bench signers` (needs `softhsm2` and `ssh-keygen`). Prints a
//! table; asserts nothing about speed. For concurrency it compares the
//! signer's session pool with all signatures serialized through one lock
//! (what a single shared session would allow).

#[path = "../tests/support/softhsm.rs"]
mod softhsm;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly::ca::keys::{CaKey, Secret};
use mayfly::ca::pkcs11::Pkcs11Signer;
use mayfly::ca::CaSigner;
use mayfly::config::{CaKeyType, Pkcs11Config};
use zeroize::Zeroizing;

const MESSAGE: &[u8] = &[0x5a; 400]; // about the size of a certificate's signed part

/// Runs `f` on `threads` threads until about `budget` has passed; returns
/// signatures per second overall.
fn rate(threads: usize, budget: Duration, f: Arc<dyn Fn() + Send + Sync>) -> f64 {
    // Warm-up (opens pool sessions, faults in code).
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < budget {
                    for _ in 0..10 {
                        f();
                    }
                    n += 10;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn signer_fn(s: Arc<dyn CaSigner>) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        s.sign(MESSAGE).expect("sign");
    })
}

fn serialized_fn(s: Arc<dyn CaSigner>) -> Arc<dyn Fn() + Send + Sync> {
    let lock = Arc::new(Mutex::new(()));
    Arc::new(move || {
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.sign(MESSAGE).expect("sign");
    })
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("# CA signatures/s, {budget:?} per cell, {cores} cores, 400-byte message");
    println!("| signer | 1 thread | 4 threads (pool) | 4 threads (one lock) | µs/sig (1 thread) |");
    println!("|---|---|---|---|---|");

    let file: Arc<dyn CaSigner> = Arc::new(CaKey::generate());
    row("file Ed25519 (in memory)", file, budget);

    let hsm = softhsm::softhsm();
    let pin = Secret::new(Zeroizing::new(softhsm::PIN.to_string()), "bench");
    for (label, kt) in [
        ("bench-ed25519", CaKeyType::Ed25519),
        ("bench-p256", CaKeyType::EcdsaP256),
        ("bench-p384", CaKeyType::EcdsaP384),
        ("bench-rsa3072", CaKeyType::Rsa3072),
    ] {
        let cfg = Pkcs11Config {
            module: hsm.module().to_path_buf(),
            token_label: softhsm::TOKEN.into(),
            user_key_label: "u".into(),
            host_key_label: "h".into(),
            pin_file: None,
            generate_if_missing: true,
            key_type: kt,
        };
        let (s, _) = Pkcs11Signer::open(&cfg, label, &pin).expect("open SoftHSM key");
        row(&format!("SoftHSM {}", kt.as_str()), Arc::new(s), budget);
    }

    // Start-up cost of key protection: one bcrypt-pbkdf (16 rounds) per open.
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = Secret::new(Zeroizing::new("bench passphrase".into()), "bench");
    let path = dir.path().join("user_ca");
    let t = Instant::now();
    CaKey::generate()
        .write_new_encrypted(&path, &pass)
        .expect("write encrypted");
    let write = t.elapsed();
    let t = Instant::now();
    let n = 5;
    for _ in 0..n {
        CaKey::open(&path, Some(&pass)).expect("open encrypted");
    }
    let open = t.elapsed() / n;
    let plain = dir.path().join("plain");
    CaKey::generate().write_new(&plain).expect("write plain");
    let t = Instant::now();
    CaKey::open(&plain, None).expect("open plain");
    let open_plain = t.elapsed();
    println!();
    println!("# key file at start-up");
    println!("| step | time |");
    println!("|---|---|");
    println!("| write encrypted key (bcrypt-pbkdf 16 rounds + aes256-ctr) | {write:.1?} |");
    println!("| open encrypted key (mean of {n}) | {open:.1?} |");
    println!("| open plain key | {open_plain:.1?} |");
}

fn row(name: &str, s: Arc<dyn CaSigner>, budget: Duration) {
    let one = rate(1, budget, signer_fn(s.clone()));
    let pool = rate(4, budget, signer_fn(s.clone()));
    let locked = rate(4, budget, serialized_fn(s));
    println!(
        "| {name} | {one:.0} | {pool:.0} | {locked:.0} | {:.1} |",
        1e6 / one
    );
}
