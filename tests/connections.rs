//! Connection bounds of the real `mayfly serve`, over plain HTTP and TLS:
//! clients that send half a request head or go idle are closed after
//! `header_read_timeout`, and `max_connections` caps what is open (new
//! clients wait in the listen backlog) so the server never runs out of
//! descriptors. Bounds asserted here are generous; nothing is timed.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use support::server::{https_get, tls_client_config};
use support::{http, wait_for, Mayfly};

/// Far above any header_read_timeout used here: a connection still open
/// after this was not closed by the server.
const CLOSE_BOUND: Duration = Duration::from_secs(20);
/// Half connections each test opens.
const HALF_OPEN: usize = 200;
const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: mayfly\r\nUser-Agent: slo";

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to mayfly");
    s.set_read_timeout(Some(CLOSE_BOUND)).expect("read timeout");
    s.set_write_timeout(Some(CLOSE_BOUND))
        .expect("write timeout");
    s
}

/// Reads until the server ends the connection. `Ok(bytes)` if it closed
/// (EOF or reset, with whatever it sent first), `Err` if it stayed open
/// for the whole read timeout.
fn read_until_closed(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "still open after {CLOSE_BOUND:?} ({} bytes received)",
                    got.len()
                ))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset, or (TLS) closed without close_notify: closed.
            Err(_) => return Ok(got),
        }
    }
}

/// The value of one sample line in a /metrics page (`name{labels}` as written).
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metrics_page(ca: &Mayfly) -> String {
    let r = http::get(&format!("{}/metrics", ca.url())).expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

fn healthz_ok(ca: &Mayfly) {
    let r = http::get(&format!("{}/healthz", ca.url())).expect("GET /healthz");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the server's descriptors")
        .count()
}

#[test]
fn half_request_heads_over_plain_http_are_closed_after_header_read_timeout() {
    let ca = Mayfly::start("header_read_timeout = \"1s\"\n", &[]);
    let mut slow: Vec<TcpStream> = (0..HALF_OPEN)
        .map(|_| {
            let mut s = connect(ca.port());
            s.write_all(HALF_HEAD).expect("send half a request head");
            s
        })
        .collect();
    // Served while they hang.
    healthz_ok(&ca);
    for (i, s) in slow.iter_mut().enumerate() {
        if let Err(e) = read_until_closed(s) {
            panic!("half-open connection {i}: {e}\n{}", ca.stderr_log());
        }
    }
    // And after.
    healthz_ok(&ca);
    let page = metrics_page(&ca);
    let closed = metric(
        &page,
        "mayfly_connections_closed_early_total{reason=\"header_timeout\"}",
    )
    .expect("header_timeout counter");
    assert!(closed >= HALF_OPEN as f64, "{page}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let ca = Mayfly::start("header_read_timeout = \"1s\"\n", &[]);
    let mut s = connect(ca.port());
    // Two requests on one connection: keep-alive works...
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: mayfly\r\n\r\n")
            .expect("send request");
        let head = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    // ...and then, idle, the connection is closed by the server.
    let rest = read_until_closed(&mut s).unwrap_or_else(|e| panic!("idle keep-alive: {e}"));
    assert!(
        rest.is_empty() || String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

/// Reads one response with a Content-Length body; returns its head.
fn read_response(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read response head");
        assert_eq!(
            n,
            1,
            "closed mid-response: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read response body");
    head
}

/// A test CA and a server certificate for localhost signed by it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = support::temp_dir("connections-tls");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "mayfly connections test CA");
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("sign leaf");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write ca");
        std::fs::write(dir.path().join("server.crt"), leaf_cert.pem()).expect("write cert");
        std::fs::write(dir.path().join("server.key"), leaf_key.serialize_pem()).expect("write key");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls_toml(&self) -> String {
        let q = |p: &Path| serde_json::to_string(p.to_str().expect("UTF-8")).expect("quote");
        format!(
            "\n[tls]\ncert_file = {}\nkey_file = {}\n",
            q(&self.path("server.crt")),
            q(&self.path("server.key"))
        )
    }
}

#[test]
fn half_request_heads_over_tls_are_closed_after_header_read_timeout() {
    let pki = Pki::new();
    let ca = Mayfly::start_tls(
        &format!("header_read_timeout = \"1s\"\n{}", pki.tls_toml()),
        &[],
        &pki.path("ca.pem"),
    );
    let client = tls_client_config(&pki.path("ca.pem"), None);
    let healthz = |client: &Arc<rustls::ClientConfig>| {
        let r = https_get(ca.port(), "localhost", client.clone(), "/healthz")
            .expect("GET https /healthz");
        assert_eq!(r.response.status, 200);
    };
    let mut slow: Vec<_> = (0..HALF_OPEN)
        .map(|_| {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let conn = rustls::ClientConnection::new(client.clone(), name).expect("client");
            let mut tls = rustls::StreamOwned::new(conn, connect(ca.port()));
            while tls.conn.is_handshaking() {
                tls.conn
                    .complete_io(&mut tls.sock)
                    .expect("complete the TLS handshake");
            }
            tls.write_all(HALF_HEAD).expect("send half a request head");
            tls.flush().expect("flush");
            tls
        })
        .collect();
    healthz(&client);
    for (i, s) in slow.iter_mut().enumerate() {
        if let Err(e) = read_until_closed(s) {
            panic!("half-open TLS connection {i}: {e}\n{}", ca.stderr_log());
        }
    }
    healthz(&client);
}

#[test]
fn at_max_connections_new_clients_wait_until_one_closes_and_descriptors_stay_bounded() {
    const CAP: usize = 8;
    const QUEUED: usize = 300;
    // Long enough that nothing closes by itself during the test.
    let ca = Mayfly::start(
        &format!("max_connections = {CAP}\nheader_read_timeout = \"5m\"\n"),
        &[],
    );
    let pid = ca.pid().expect("server pid");
    let idle_fds = open_fds(pid);
    let mut holders: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = connect(ca.port());
            s.write_all(HALF_HEAD).expect("send half a request head");
            s
        })
        .collect();
    // Connected after the holders, so behind them in the accept queue.
    let mut waiting = connect(ca.port());
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: mayfly\r\nConnection: close\r\n\r\n")
        .expect("send request");
    waiting
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    match waiting.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!(
            "connection {} was served while {CAP} were open: {other:?}",
            CAP + 1
        ),
    }
    // Many more clients: they wait in the backlog, not in the server.
    let queued: Vec<TcpStream> = (0..QUEUED).map(|_| connect(ca.port())).collect();
    let fds = open_fds(pid);
    assert!(
        fds <= idle_fds + CAP + 4,
        "{fds} descriptors open in the server with {CAP} connections allowed (idle: {idle_fds})"
    );

    // One closes: the waiting client is served.
    drop(holders.pop());
    waiting
        .set_read_timeout(Some(CLOSE_BOUND))
        .expect("read timeout");
    let answer = read_until_closed(&mut waiting)
        .unwrap_or_else(|e| panic!("after a slot freed: {e}\n{}", ca.stderr_log()));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    drop(queued);
    drop(holders);
    // Everyone queued is worked off; the server answers again.
    let page = wait_for(CLOSE_BOUND, Duration::from_millis(100), || {
        http::get(&format!("{}/metrics", ca.url())).ok()
    })
    .expect("/metrics answers once the clients are gone")
    .text();
    let reached = metric(&page, "mayfly_connections_limit_reached_total").expect("counter");
    assert!(reached >= 1.0, "{page}");
    let open = metric(&page, "mayfly_connections_open").expect("gauge");
    assert!(open <= CAP as f64, "{page}");
}

/// Whether process `pid` (a child of this test) has exited: gone, or a
/// zombie waiting to be reaped.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn sigterm_stops_accepting_lets_the_request_in_flight_finish_and_exits() {
    // Long enough that only the shutdown can close the idle connection.
    let ca = Mayfly::start("header_read_timeout = \"5m\"\n", &[]);
    let pid = ca.pid().expect("server pid");
    // A request whose head has arrived and whose body is still coming.
    let body = b"{\"role\": \"deploy\", \"public_key\": \"ssh-ed25519 AAAA\"}";
    let mut in_flight = connect(ca.port());
    write!(
        in_flight,
        "POST /v1/certs/user HTTP/1.1\r\nHost: mayfly\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("send head");
    in_flight
        .write_all(&body[..4])
        .expect("send part of the body");
    // Idle keep-alive connections do not hold the shutdown up.
    let mut idle = connect(ca.port());
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: mayfly\r\n\r\n")
        .expect("send request");
    read_response(&mut idle);
    std::thread::sleep(Duration::from_millis(300));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let refused = wait_for(CLOSE_BOUND, Duration::from_millis(50), || {
        TcpStream::connect(("127.0.0.1", ca.port())).err()
    });
    assert!(refused.is_some(), "still accepting after SIGTERM");
    assert!(!exited(pid), "exited with a request in flight");
    if let Err(e) = read_until_closed(&mut idle) {
        panic!("idle keep-alive connection during shutdown: {e}");
    }
    assert!(!exited(pid), "exited with a request in flight");

    in_flight
        .write_all(&body[4..])
        .expect("send the rest of the body");
    let answer = read_until_closed(&mut in_flight)
        .unwrap_or_else(|e| panic!("in-flight request: {e}\n{}", ca.stderr_log()));
    let answer = String::from_utf8_lossy(&answer);
    // Refused (no token), but answered: the request was served to the end.
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        wait_for(CLOSE_BOUND, Duration::from_millis(50), || exited(pid)
            .then_some(()))
        .is_some(),
        "did not exit after draining\n{}",
        ca.stderr_log()
    );
}
