//! Audit log throughput: durable, hash-chained records/s through the real
//! group-commit writer with concurrent appenders (each waits until its own
//! record is committed, as a certificate request does), with and without
//! the live stream (JSONL sink + checkpoints) attached; the chain's own CPU
//! cost; and how fast `audit verify`, `audit export` and `verify --export`
//! go over a large log.
//!
//! `cargo bench --bench audit`; `AUDIT_BENCH_RECORDS` sets the size of the
//! large log (default 1,000,000), `AUDIT_BENCH_APPENDS` the records per
//! concurrency level (default 20,000).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly::audit::chain::{self, StoredRecord};
use mayfly::audit::checkpoint::AuditKey;
use mayfly::audit::{AuditRecord, EventKind};
use mayfly::config::{AuditConfig, StoreBackend};
use mayfly::evidence::stream::AuditStream;
use mayfly::evidence::{export, verify};
use mayfly::store::sqlite::Sqlite;
use mayfly::store::{block_on, Backend, OpenMode, Store, StoreConfig};

fn open(path: &Path, mode: OpenMode) -> Store {
    mayfly::store::open(&StoreConfig {
        backend: StoreBackend::SQLite,
        sqlite_path: path.to_path_buf(),
        busy_timeout: BUSY,
        mode,
        postgres: None,
    })
    .expect("open store")
}

const BUSY: Duration = Duration::from_secs(5);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A record shaped like a real issuance (sizes of a GitHub Actions subject,
/// an Ed25519 CA key line, a SHA-256 fingerprint).
fn record(i: u64) -> AuditRecord {
    let serial = (1_793_491_200u64 << 24) + i;
    let mut r = AuditRecord::new(
        EventKind::CertIssued,
        1_793_491_200_000 + i,
        &format!("8f14e45f-ceea-467f-a0e6-{i:012}"),
    );
    r.client_addr = Some("10.20.30.40:51234".into());
    r.issuer = Some("github".into());
    r.subject = Some("repo:acme/api:ref:refs/heads/main".into());
    r.role = Some("deploy".into());
    r.serial = Some(serial);
    r.key_id = Some(format!(
        "mayfly:deploy:github:repo_acme_api_ref_refs_heads_main:{serial}"
    ));
    r.principals = vec!["deploy".into()];
    r.valid_after = Some(1_793_491_140);
    r.valid_before = Some(1_793_491_500);
    r.key_fingerprint = Some("SHA256:7Vf4a9wpp2mD4lQhS2H2p0mXxq9y3w8K0b1c2d3e4f5".into());
    r.token_id = Some(format!("github:jti-{i}"));
    r.token_exp = Some(1_793_491_500);
    r.policy_digest = Some("sha256:3f9a1c0e5b7d".into());
    r.cert_type = Some("user".into());
    r.ca_key = Some(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb0d1bW9yZS1rZXktbWF0ZXJpYWwtaGVyZS0xMjM0NTY mayfly-user-ca"
            .into(),
    );
    r
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:>9.0}/s", n as f64 / d.as_secs_f64().max(1e-9))
}

/// Durable appends through the real writer thread from `concurrency`
/// tasks; returns records/s.
fn durable_appends(dir: &Path, concurrency: usize, total: usize, stream: bool) -> (f64, u64) {
    let db = dir.join(format!("append-{concurrency}-{stream}.db"));
    let store = open(&db, OpenMode::Create);
    let audit = stream.then(|| {
        let cfg = AuditConfig {
            jsonl_file: Some(dir.join(format!("stream-{concurrency}.jsonl"))),
            ..AuditConfig::default()
        };
        let a = AuditStream::start_with_key(
            &cfg,
            AuditKey::ephemeral(),
            store.audit_shared(),
            std::sync::Arc::new(mayfly::clock::SystemClock::new()),
        )
        .expect("stream");
        store.audit().on_commit(a.hook());
        a
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let store = store.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total as u64 {
                        break;
                    }
                    store.append(record(i)).await.expect("durable append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    let elapsed = start.elapsed();
    let streamed = match audit {
        Some(a) => {
            let stats = a.stats();
            a.shutdown();
            stats.records.load(std::sync::atomic::Ordering::Relaxed)
        }
        None => 0,
    };
    (total as f64 / elapsed.as_secs_f64(), streamed)
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("mayfly-audit-bench-")
        .tempdir()
        .expect("tempdir");
    let appends = env_usize("AUDIT_BENCH_APPENDS", 20_000);
    let big = env_usize("AUDIT_BENCH_RECORDS", 1_000_000) as u64;

    println!("== chain cost (CPU only) ==");
    let rows: Vec<StoredRecord> = (0..100_000u64)
        .map(|i| {
            let r = record(i);
            StoredRecord {
                seq: i + 1,
                time_ms: r.time_ms as i64,
                event: r.event.as_str().into(),
                request_id: r.request_id,
                client_addr: r.client_addr,
                issuer: r.issuer,
                subject: r.subject,
                role: r.role,
                serial: r.serial.map(|s| s as i64),
                key_id: r.key_id,
                principals: r.principals,
                valid_after: r.valid_after.map(|v| v as i64),
                valid_before: r.valid_before.map(|v| v as i64),
                key_fingerprint: r.key_fingerprint,
                token_id: r.token_id,
                token_exp: r.token_exp.map(|v| v as i64),
                policy_digest: r.policy_digest,
                cert_type: r.cert_type,
                ca_key: r.ca_key,
                ..StoredRecord::default()
            }
        })
        .collect();
    let mut scratch = Vec::new();
    let mut prev = chain::GENESIS;
    let t = Instant::now();
    for r in &rows {
        prev = chain::record_hash_with(r, &prev, &mut scratch);
    }
    let d = t.elapsed();
    println!(
        "encode + SHA-256: {} records in {:?} = {} ({:.2} us/record, {} bytes encoded)",
        rows.len(),
        d,
        rate(rows.len() as u64, d),
        d.as_secs_f64() * 1e6 / rows.len() as f64,
        scratch.len()
    );

    println!("\n== durable appends through the group-commit writer (each waits for its fsync) ==");
    println!(
        "{:>12} {:>14} {:>22}",
        "concurrency", "records/s", "records/s with stream"
    );
    for c in [1usize, 4, 16, 64, 256] {
        let n = if c == 1 { appends.min(3_000) } else { appends };
        let (plain, _) = durable_appends(dir.path(), c, n, false);
        let (streamed, sent) = durable_appends(dir.path(), c, n, true);
        println!("{c:>12} {plain:>14.0} {streamed:>22.0}   ({n} records; stream sent {sent})");
    }

    println!("\n== a log of {big} records ==");
    let path = dir.path().join("big.db");
    let mut db = Sqlite::open(&path, BUSY).expect("open");
    let t = Instant::now();
    let mut i = 0u64;
    let mut batch = Vec::with_capacity(1000);
    while i < big {
        batch.clear();
        for _ in 0..1000.min(big - i) {
            batch.push(record(i));
            i += 1;
        }
        db.append_batch(&batch).expect("append batch");
    }
    let d = t.elapsed();
    println!(
        "fill (1000 records per transaction): {:?} = {}",
        d,
        rate(big, d)
    );
    let key = AuditKey::ephemeral();
    db.write_checkpoint(&key.fingerprint(), 1, |s: u64, h: &chain::Hash, t: i64| {
        key.sign(s, h, t).map_err(|e| e.to_string())
    })
    .expect("checkpoint");
    drop(db);
    let db = open(&path, OpenMode::ReadOnly);
    let t = Instant::now();
    let report = block_on(verify::verify_db(db.audit(), Some(&key.public()), "bench"))
        .expect("runtime")
        .expect("verify");
    let d = t.elapsed();
    assert!(report.is_intact(), "{report}");
    println!(
        "audit verify: {} records in {:?} = {}",
        report.records,
        d,
        rate(report.records, d)
    );
    let out = dir.path().join("export.jsonl");
    let t = Instant::now();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out).expect("create"));
    let sum = block_on(export::export_jsonl(db.audit(), 1, &mut f))
        .expect("runtime")
        .expect("export");
    drop(f);
    let d = t.elapsed();
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "audit export: {} records in {:?} = {} ({:.0} bytes/line)",
        sum.records,
        d,
        rate(sum.records, d),
        size as f64 / sum.records.max(1) as f64
    );
    let t = Instant::now();
    let file = std::io::BufReader::new(std::fs::File::open(&out).expect("open export"));
    let report = block_on(verify::verify_export(file, "bench export", None))
        .expect("runtime")
        .expect("verify export");
    let d = t.elapsed();
    assert!(report.is_intact(), "{report}");
    println!(
        "audit verify --export: {} lines in {:?} = {}",
        report.records,
        d,
        rate(report.records, d)
    );
    // A database from before the chain: chained once, when first opened.
    let legacy = dir.path().join("legacy.db");
    {
        let c = rusqlite::Connection::open(&legacy).expect("legacy db");
        c.execute_batch(&format!(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
               event TEXT NOT NULL, request_id TEXT NOT NULL, client_addr TEXT, issuer TEXT,
               subject TEXT, role TEXT, reason_code TEXT, reason TEXT, serial INTEGER, key_id TEXT,
               principals TEXT NOT NULL DEFAULT '[]', valid_after INTEGER, valid_before INTEGER,
               key_fingerprint TEXT, token_id TEXT, token_exp INTEGER, policy_digest TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {big})
             INSERT INTO audit (time_ms, event, request_id, client_addr, issuer, subject, role,
               serial, key_id, principals, valid_after, valid_before, key_fingerprint, token_id,
               token_exp, policy_digest)
             SELECT 1793491200000 + i, 'cert_issued', 'req-' || i, '10.20.30.40:51234', 'github',
               'repo:acme/api:ref:refs/heads/main', 'deploy', 1000000 + i,
               'mayfly:deploy:github:repo_acme_api_ref_refs_heads_main:' || i, '[\"deploy\"]',
               1793491140, 1793491500, 'SHA256:7Vf4a9wpp2mD4lQhS2H2p0mXxq9y3w8K0b1c2d3e4f5',
               'github:jti-' || i, 1793491500, 'sha256:3f9a1c0e5b7d' FROM n;"
        ))
        .expect("legacy rows");
    }
    let t = Instant::now();
    drop(Sqlite::open(&legacy, BUSY).expect("migrate legacy"));
    let d = t.elapsed();
    let migrated = open(&legacy, OpenMode::ReadOnly);
    println!(
        "one-time chaining of a pre-chain database: {big} records in {:?} = {}",
        d,
        rate(big, d)
    );
    let report = block_on(verify::verify_db(migrated.audit(), None, "legacy"))
        .expect("runtime")
        .expect("verify legacy");
    assert!(report.is_intact(), "{report}");

    let db_size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "database: {:.0} MB ({:.0} bytes/record incl. indexes)",
        db_size as f64 / 1e6,
        db_size as f64 / big as f64
    );
}
