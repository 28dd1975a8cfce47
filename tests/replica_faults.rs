//! Faults under real `mayfly serve` replicas sharing a real PostgreSQL:
//! a replica killed with SIGKILL under load, PostgreSQL stopped and started
//! again, and a failover to a promoted streaming standby. Each must leave
//! no certificate without its audit record, refuse rather than issue while
//! the database is away, and serve again with the same processes once the
//! database is back.
//!
//! The kill test shares one cluster (`Postgres::shared`); the tests that
//! stop or promote PostgreSQL start a private cluster each.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use support::http::Response;
use support::postgres::USER;
use support::replicas::{
    error_code, krl_revokes, store_toml_at, Issued, Replicas, Shared, DEPLOY_ROLE,
};
use support::{mayfly, Postgres};

/// How long a request may take while PostgreSQL is away ("a few seconds").
const REFUSE_WITHIN: Duration = Duration::from_secs(10);
/// How long replicas may take to notice PostgreSQL is back, or promoted.
const RECOVER_WITHIN: Duration = Duration::from_secs(60);

fn serials_audited(r: &Replicas) -> Vec<u64> {
    r.audit(&["--event", "cert_issued"])
        .iter()
        .map(|rec| rec["ssh"]["cert"]["serial"].as_u64().expect("serial"))
        .collect()
}

/// The serials of `received` that have no audit record in `audited`.
fn unaudited<'a>(received: impl Iterator<Item = &'a u64>, audited: &BTreeSet<u64>) -> Vec<u64> {
    received.filter(|s| !audited.contains(s)).copied().collect()
}

/// What one client request of the load saw.
enum Seen {
    Cert(Issued),
    Answer(u16, String),
    NoAnswer,
}

#[test]
fn kill_9_of_a_replica_under_load_loses_no_audit_record_and_the_others_keep_serving() {
    const CLIENTS: usize = 6;
    const BEFORE_KILL: usize = 30;
    const AFTER_KILL: usize = 30;
    let db = Postgres::shared().create_database();
    let mut r = Replicas::start(
        3,
        Shared {
            store_toml: &db.store_toml(),
            policies: &[("deploy", DEPLOY_ROLE)],
            extra: "",
        },
    );
    let stop = AtomicBool::new(false);
    let killed = AtomicBool::new(false);
    let certs = AtomicUsize::new(0);
    let after_kill = AtomicUsize::new(0);
    // (replica, started after the kill, what came back)
    let seen: Mutex<Vec<(usize, bool, Seen)>> = Mutex::new(Vec::new());
    {
        let r_ref = &r;
        std::thread::scope(|s| {
            for c in 0..CLIENTS {
                let (stop, killed, certs, after_kill, seen) =
                    (&stop, &killed, &certs, &after_kill, &seen);
                s.spawn(move || {
                    let mut n = c;
                    while !stop.load(Ordering::SeqCst) {
                        let i = n % 3;
                        n += 1;
                        let late = killed.load(Ordering::SeqCst);
                        let what =
                            match r_ref.try_request_cert(i, "deploy", &r_ref.token("bot-load")) {
                                Ok(resp) => match Issued::from_response(&resp) {
                                    Some(cert) => {
                                        certs.fetch_add(1, Ordering::SeqCst);
                                        if late && i != 0 {
                                            after_kill.fetch_add(1, Ordering::SeqCst);
                                        }
                                        Seen::Cert(cert)
                                    }
                                    None => Seen::Answer(resp.status, resp.text()),
                                },
                                Err(_) => Seen::NoAnswer,
                            };
                        seen.lock().expect("lock").push((i, late, what));
                    }
                });
            }
            // Kill replica 0 in the middle of the load.
            let loaded =
                support::wait_for(Duration::from_secs(60), Duration::from_millis(5), || {
                    (certs.load(Ordering::SeqCst) >= BEFORE_KILL).then_some(())
                });
            // The clients hold `r`, so the kill goes by process id; the
            // harness has not reaped the process, so the id is still its.
            let pid = r_ref.node(0).pid().expect("replica 0 runs");
            if loaded.is_some() {
                let status = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .expect("run kill");
                assert!(status.success(), "kill -9 {pid}");
                killed.store(true, Ordering::SeqCst);
            }
            let served =
                support::wait_for(Duration::from_secs(60), Duration::from_millis(5), || {
                    (after_kill.load(Ordering::SeqCst) >= AFTER_KILL).then_some(())
                });
            stop.store(true, Ordering::SeqCst);
            assert!(
                loaded.is_some(),
                "the load never reached {BEFORE_KILL} certificates"
            );
            assert!(
                served.is_some(),
                "after replica 0 was killed, replicas 1 and 2 issued only {} certificates",
                after_kill.load(Ordering::SeqCst)
            );
        });
    }
    let seen = seen.into_inner().expect("lock");

    // Replicas 1 and 2 answered every request with a certificate; replica
    // 0 did until it died, then did not answer at all.
    let mut received: HashMap<u64, usize> = HashMap::new();
    for (i, late, what) in &seen {
        match what {
            Seen::Cert(c) => {
                assert!(
                    received.insert(c.serial, *i).is_none(),
                    "serial {} twice",
                    c.serial
                );
            }
            Seen::Answer(status, text) => {
                panic!(
                    "replica {i} (after kill: {late}) answered {status}: {text}\n{}",
                    r.logs()
                )
            }
            Seen::NoAnswer => assert_eq!(
                *i,
                0,
                "replica {i} did not answer (after kill: {late})\n{}",
                r.logs()
            ),
        }
    }
    assert!(
        seen.iter()
            .any(|(i, late, w)| *i == 0 && *late && matches!(w, Seen::NoAnswer)),
        "replica 0 was never seen dead"
    );

    // Every certificate a client received has its audit record.
    let audited: BTreeSet<u64> = serials_audited(&r).into_iter().collect();
    let missing = unaudited(received.keys(), &audited);
    assert!(
        missing.is_empty(),
        "certificates returned without an audit record: {missing:?} (replicas {:?})",
        missing.iter().map(|s| received[s]).collect::<Vec<_>>()
    );
    r.assert_audit_verifies();

    // The killed replica comes back on the same data_dir and serves.
    r.node_mut(0).restart();
    let again = r.cert(0, "deploy", "bot-load");
    assert!(
        !audited.contains(&again.serial),
        "serial {} reused",
        again.serial
    );
}

#[test]
fn postgres_stopped_gives_503_and_no_certificate_and_the_same_replicas_serve_again_after() {
    let pg = Postgres::start();
    let db = pg.create_database();
    let r = Replicas::start(
        2,
        Shared {
            store_toml: &db.store_toml(),
            policies: &[("deploy", DEPLOY_ROLE)],
            extra: "",
        },
    );
    let pids: Vec<Option<u32>> = (0..2).map(|i| r.node(i).pid()).collect();
    for i in 0..2 {
        r.cert(i, "deploy", "bot-outage");
    }

    pg.stop();
    for i in 0..2 {
        for k in 0..3 {
            let started = Instant::now();
            let resp = r.request_cert(i, "deploy", &r.token("bot-outage"));
            let took = started.elapsed();
            assert_eq!(
                resp.status,
                503,
                "replica {i}, request {k} with PostgreSQL stopped: {}",
                resp.text()
            );
            assert_eq!(error_code(&resp), "store_unavailable", "{}", resp.text());
            assert!(resp.json().get("certificate").is_none(), "{}", resp.text());
            assert!(
                took <= REFUSE_WITHIN,
                "replica {i}: the refusal took {took:?} with PostgreSQL stopped"
            );
        }
        r.wait_health(i, 503, REFUSE_WITHIN);
        let health = support::http::get(&format!("{}/healthz", r.node(i).url())).expect("GET");
        assert_eq!(
            error_code(&health),
            "store_unavailable",
            "{}",
            health.text()
        );
    }
    // An admin command says it cannot reach the database, and fails.
    let started = Instant::now();
    let out = r.cli(&["revoke", "--serial", "1", "--reason", "outage"]);
    assert!(
        !out.status.success(),
        "revoke with PostgreSQL stopped succeeded"
    );
    let text = support::all_output(&out);
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        started.elapsed() <= REFUSE_WITHIN * 3,
        "revoke hung: {text}"
    );

    pg.restart();
    for (i, pid) in pids.iter().enumerate() {
        r.wait_health(i, 200, RECOVER_WITHIN);
        assert_eq!(r.node(i).pid(), *pid, "replica {i} was restarted");
        r.cert(i, "deploy", "bot-outage");
    }
    // Nothing refused during the outage was issued after it.
    assert_eq!(serials_audited(&r).len(), 4, "cert_issued records");
    r.assert_audit_verifies();
}

/// PostgreSQL crashes (immediate shutdown: WAL not yet written is lost)
/// under load. Every certificate a client received has its audit record
/// after recovery, the chain verifies, the lines the audit stream exported
/// before the crash still verify against the database, and the same
/// replica serves again. A group commit that answered its callers before
/// its WAL flush was durable lost 4 of 213 records in this test.
#[test]
fn postgres_crashing_under_load_loses_no_record_of_a_returned_certificate() {
    const CLIENTS: usize = 8;
    const BEFORE_CRASH: usize = 200;
    let pg = Postgres::start();
    let db = pg.create_database();
    let out = support::temp_dir("crash-export");
    let jsonl = out.path().join("audit.jsonl");
    let extra = format!("[audit]\njsonl_file = {:?}\n", jsonl.display().to_string());
    let r = Replicas::start(
        1,
        Shared {
            store_toml: &db.store_toml(),
            policies: &[("deploy", DEPLOY_ROLE)],
            extra: &extra,
        },
    );
    let stop = AtomicBool::new(false);
    let certs = AtomicUsize::new(0);
    let received: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            let (r, stop, certs, received) = (&r, &stop, &certs, &received);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(resp) = r.try_request_cert(0, "deploy", &r.token("bot-crash")) else {
                        continue;
                    };
                    if let Some(c) = Issued::from_response(&resp) {
                        received.lock().expect("lock").push(c.serial);
                        certs.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        let loaded = support::wait_for(Duration::from_secs(60), Duration::from_millis(2), || {
            (certs.load(Ordering::SeqCst) >= BEFORE_CRASH).then_some(())
        });
        // Crash while the clients keep asking; they get errors until the
        // load stops.
        if loaded.is_some() {
            pg.crash();
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        assert!(
            loaded.is_some(),
            "the load never reached {BEFORE_CRASH} certificates"
        );
    });
    pg.restart();
    r.wait_health(0, 200, RECOVER_WITHIN);

    let received = received.into_inner().expect("lock");
    let audited: BTreeSet<u64> = serials_audited(&r).into_iter().collect();
    let missing = unaudited(received.iter(), &audited);
    assert!(
        missing.is_empty(),
        "{} of {} certificates returned before the crash have no audit record after it: {:?}",
        missing.len(),
        received.len(),
        &missing[..missing.len().min(20)]
    );
    r.assert_audit_verifies();
    // Serving again after the crash continues the same chain.
    r.cert(0, "deploy", "bot-crash");
    r.assert_audit_verifies();

    // Every line the stream exported before the crash is still in the
    // database, unchanged.
    let exported = std::fs::read_to_string(&jsonl).unwrap_or_default();
    assert!(
        exported.lines().count() >= BEFORE_CRASH / 2,
        "the stream exported only {} lines",
        exported.lines().count()
    );
    let out = mayfly(&[
        "audit",
        "verify",
        "--config",
        r.node(0).config_path().to_str().expect("utf-8 path"),
        "--export",
        jsonl.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "the exported lines do not verify against the database after the crash:\n{}",
        support::all_output(&out)
    );
}

#[test]
fn replicas_come_back_on_a_promoted_standby_and_forget_no_used_token_or_revocation() {
    let pg = Postgres::start();
    let db = pg.create_database();
    let standby = pg.standby();
    // A synchronous standby: a commit returns only once the standby has
    // it, so the failover loses no used token and no audit row.
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let sync = support::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        (pg.psql("postgres", "SELECT sync_state FROM pg_stat_replication")
            .trim()
            == "sync")
            .then_some(())
    });
    assert!(sync.is_some(), "the standby never became synchronous");
    let url = format!(
        "postgres://{USER}@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
        pg.port(),
        standby.port(),
        db.name
    );
    let r = Replicas::start(
        2,
        Shared {
            store_toml: &store_toml_at(&db, &url),
            policies: &[("deploy", DEPLOY_ROLE)],
            extra: "",
        },
    );
    let pids: Vec<Option<u32>> = (0..2).map(|i| r.node(i).pid()).collect();
    let mut before = BTreeSet::new();
    let mut used = Vec::new();
    for i in 0..2 {
        for _ in 0..4 {
            let token = r.token("bot-failover");
            let resp = r.request_cert(i, "deploy", &token);
            let cert = Issued::from_response(&resp).unwrap_or_else(|| panic!("{}", resp.text()));
            before.insert(cert.serial);
            used.push((i, token, cert));
        }
    }
    let revoked = used[0].2.clone();
    let resp = r.post(
        1,
        "/v1/admin/revoke",
        &r.admin_token(),
        &json!({"serial": revoked.serial, "reason": "before failover"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());

    pg.stop();
    standby.promote();
    for (i, pid) in pids.iter().enumerate() {
        r.wait_health(i, 200, RECOVER_WITHIN);
        assert_eq!(r.node(i).pid(), *pid, "replica {i} was restarted");
    }
    // Issuing again, with serials never used before the failover.
    let mut after = BTreeSet::new();
    for i in 0..2 {
        for _ in 0..3 {
            let cert = r.cert(i, "deploy", "bot-failover");
            assert!(
                !before.contains(&cert.serial),
                "serial {} reused",
                cert.serial
            );
            after.insert(cert.serial);
        }
    }
    // Tokens used before the failover are still used, on either replica.
    for (i, token, _) in &used {
        let other = 1 - i;
        let resp: Response = r.request_cert(other, "deploy", token);
        assert_eq!(
            resp.status,
            401,
            "a used token after failover: {}",
            resp.text()
        );
        assert_eq!(error_code(&resp), "token_replayed", "{}", resp.text());
    }
    // The revocation survived, in every replica's KRL.
    let cert = revoked.write(r.dir());
    let live = used[1].2.write(r.dir());
    for i in 0..2 {
        let krl = r.dir().join(format!("krl-{i}"));
        std::fs::write(&krl, &r.krl(i).body).expect("write KRL");
        assert!(
            krl_revokes(&krl, &cert),
            "replica {i} forgot the revocation"
        );
        assert!(!krl_revokes(&krl, &live), "replica {i}");
    }
    // One chain, whole, on the new primary.
    let audited: BTreeSet<u64> = serials_audited(&r).into_iter().collect();
    let all: BTreeSet<u64> = before.union(&after).copied().collect();
    assert_eq!(audited, all, "cert_issued records after the failover");
    r.assert_audit_verifies();
    // The admin CLI follows the URL to the new primary too.
    let out = mayfly(&[
        "revoke",
        "--serial",
        &used[2].2.serial.to_string(),
        "--reason",
        "after failover",
        "--config",
        r.node(0).config_path().to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", support::all_output(&out));
}
