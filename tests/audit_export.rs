//! Audit records leaving the CA host, with real programs: a real `mayfly
//! serve` streams every record to Debian's `socat` listening for syslog
//! over UDP and over TCP (RFC 5424 messages carrying the JSON record; TCP
//! with octet-counting framing), to a JSON Lines file that rotates, and to
//! stdout; `mayfly audit export` writes a file that `mayfly audit verify
//! --export` re-checks (and catches edits to); `mayfly audit search` shows
//! the records. A syslog server that is down never blocks issuance.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mayfly::audit::chain::ChainWalker;
use mayfly::audit::export::record_from_line;
use serde_json::{json, Value};
use support::process::Proc;
use support::{free_port, http, keygen_ed25519, wait_for, ClientSpec, Mayfly, Oidc};

const POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"

[claims]
repository = "acme/*"
"#;

fn socat() -> PathBuf {
    support::find_program("socat", &["/usr/bin/socat"], "socat")
}

/// A `socat` that appends what it receives to `file`.
struct Listener {
    proc: Proc,
    file: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Listener {
    /// UDP: `-v` also reports each datagram's length and offsets on
    /// stderr, which is how the raw file is split back into messages.
    fn udp() -> Listener {
        let dir = support::temp_dir("syslog-udp");
        let port = free_port();
        let file = dir.path().join("received");
        let mut cmd = Command::new(socat());
        cmd.args(["-u", "-v"])
            .arg(format!("UDP-RECV:{port},bind=127.0.0.1"))
            .arg(format!("OPEN:{},creat,append", file.display()));
        let proc = Proc::spawn("socat-udp", cmd, dir.path());
        std::thread::sleep(Duration::from_millis(300));
        Listener {
            proc,
            file,
            port,
            _dir: dir,
        }
    }

    fn tcp() -> Listener {
        let dir = support::temp_dir("syslog-tcp");
        let port = free_port();
        let file = dir.path().join("received");
        let mut cmd = Command::new(socat());
        cmd.arg("-u")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("OPEN:{},creat,append", file.display()));
        let proc = Proc::spawn("socat-tcp", cmd, dir.path());
        std::thread::sleep(Duration::from_millis(300));
        Listener {
            proc,
            file,
            port,
            _dir: dir,
        }
    }

    fn raw(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap_or_default()
    }

    /// The datagrams received, split at the boundaries socat reported.
    fn datagrams(&self) -> Vec<String> {
        let raw = self.raw();
        let log = self.proc.stderr();
        let mut out = Vec::new();
        for part in log.split("length=").skip(1) {
            let num = |key: &str| -> Option<usize> {
                let rest = part.split(key).nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            if let (Some(from), Some(to)) = (num("from="), num("to=")) {
                if to < raw.len() {
                    out.push(String::from_utf8_lossy(&raw[from..=to]).into_owned());
                }
            }
        }
        out
    }

    /// Messages of an RFC 6587 octet-counted stream: `LEN SP MSG` ...
    fn framed(&self) -> Result<Vec<String>, String> {
        let raw = self.raw();
        let mut out = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let sp = raw[i..]
                .iter()
                .position(|b| *b == b' ')
                .ok_or("no space after a frame length")?;
            let len: usize = std::str::from_utf8(&raw[i..i + sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad frame length at byte {i}"))?;
            let start = i + sp + 1;
            let end = start + len;
            if end > raw.len() {
                return Err(format!("frame at byte {i} runs past the end"));
            }
            out.push(String::from_utf8_lossy(&raw[start..end]).into_owned());
            i = end;
        }
        Ok(out)
    }
}

/// An RFC 5424 message, parsed strictly.
#[derive(Debug)]
struct Syslog {
    pri: u16,
    timestamp: String,
    app: String,
    procid: String,
    msgid: String,
    sd_id: String,
    params: Vec<(String, String)>,
    msg: String,
}

fn parse_5424(m: &str) -> Result<Syslog, String> {
    let rest = m.strip_prefix('<').ok_or("no PRI")?;
    let (pri, rest) = rest.split_once('>').ok_or("PRI not closed")?;
    let pri: u16 = pri.parse().map_err(|_| "PRI not a number")?;
    if pri > 191 {
        return Err("PRI out of range".into());
    }
    let rest = rest.strip_prefix("1 ").ok_or("VERSION is not 1")?;
    let mut fields = rest.splitn(6, ' ');
    let mut next = |what: &str| -> Result<String, String> {
        let f = fields.next().ok_or(format!("no {what}"))?;
        if f.is_empty() || !f.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("{what} {f:?} is not PRINTUSASCII"));
        }
        Ok(f.to_string())
    };
    let timestamp = next("TIMESTAMP")?;
    let _hostname = next("HOSTNAME")?;
    let app = next("APP-NAME")?;
    let procid = next("PROCID")?;
    let msgid = next("MSGID")?;
    if msgid.len() > 32 || app.len() > 48 || procid.len() > 128 {
        return Err("header field too long".into());
    }
    humantime::parse_rfc3339(&timestamp).map_err(|e| format!("TIMESTAMP: {e}"))?;
    let sd = fields.next().ok_or("no STRUCTURED-DATA")?;
    // One SD-ELEMENT: [SD-ID *(SP PARAM-NAME="PARAM-VALUE")]
    let mut chars = sd.char_indices().peekable();
    if chars.next().map(|(_, c)| c) != Some('[') {
        return Err("SD does not start with [".into());
    }
    let mut sd_id = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if c == ' ' || c == ']' {
            break;
        }
        sd_id.push(c);
        chars.next();
    }
    let mut params = Vec::new();
    let end = loop {
        match chars.next() {
            Some((i, ']')) => break i,
            Some((_, ' ')) => {
                let mut name = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    name.push(c);
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(format!("param {name} value not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => {
                            let (_, e) = chars.next().ok_or("dangling escape")?;
                            value.push(e);
                        }
                        Some((_, '"')) => break,
                        Some((_, ']')) => return Err("unescaped ] in a value".into()),
                        Some((_, c)) => value.push(c),
                        None => return Err("value not closed".into()),
                    }
                }
                params.push((name, value));
            }
            other => return Err(format!("unexpected {other:?} in SD")),
        }
    };
    let msg = sd[end + 1..]
        .strip_prefix(' ')
        .ok_or("no MSG after SD")?
        .to_string();
    Ok(Syslog {
        pri,
        timestamp,
        app,
        procid,
        msgid,
        sd_id,
        params,
        msg,
    })
}

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    dir: tempfile::TempDir,
}

impl Env {
    fn start(audit_toml: &str) -> Env {
        let oidc = Oidc::start(&[
            ClientSpec::new("deploy-bot", "RS256").claims(json!({"repository": "acme/api"})),
            ClientSpec::new("intruder", "RS256").claims(json!({"repository": "evil/api"})),
        ]);
        let ca = Mayfly::start(
            &format!("{}\n[audit]\n{audit_toml}\n", oidc.issuer_toml("ci")),
            &[("deploy", POLICY)],
        );
        Env {
            oidc,
            ca,
            dir: support::temp_dir("audit-export"),
        }
    }

    fn issue(&self, client: &str) -> http::Response {
        let (_, public) = keygen_ed25519(self.dir.path());
        let auth = format!("Bearer {}", self.oidc.token(client));
        http::post_json(
            &format!("{}/v1/certs/user", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": "deploy", "public_key": public}),
        )
        .expect("POST /v1/certs/user")
    }

    /// `n` certificates and one refusal: n + 1 records.
    fn traffic(&self, n: usize) {
        for _ in 0..n {
            let r = self.issue("deploy-bot");
            assert_eq!(r.status, 200, "{}\n{}", r.text(), self.ca.stderr_log());
        }
        let r = self.issue("intruder");
        assert_eq!(r.status, 403, "{}", r.text());
    }

    fn config(&self) -> &str {
        self.ca.config_path().to_str().expect("utf-8")
    }
}

/// Exit code, stdout and stderr of `mayfly ARGS...`.
fn mayfly(args: &[&str]) -> (i32, String, String) {
    let out = support::mayfly(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks syslog messages: RFC 5424, the record as MSG, SD matching it,
/// one per record `1..=count`, and the records chain.
fn check_messages(messages: &[String], count: u64, pid: u32) {
    let mut records = Vec::new();
    for m in messages {
        let s = parse_5424(m).unwrap_or_else(|e| panic!("not RFC 5424 ({e}): {m}"));
        assert_eq!(s.app, "mayfly", "{m}");
        assert_eq!(s.procid, pid.to_string(), "{m}");
        assert_eq!(s.sd_id, "mayfly@32473", "{m}");
        let v: Value =
            serde_json::from_str(&s.msg).unwrap_or_else(|e| panic!("MSG is not JSON ({e}): {m}"));
        let event = v["event"]["action"].as_str().expect("event.action");
        assert_eq!(s.msgid, event, "{m}");
        let expected_pri = if event == "cert_denied" {
            10 * 8 + 5
        } else {
            10 * 8 + 6
        };
        assert_eq!(s.pri, expected_pri, "{m}");
        assert_eq!(s.timestamp, v["@timestamp"].as_str().expect("@timestamp"));
        let param = |k: &str| {
            s.params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no SD param {k}: {m}"))
        };
        assert_eq!(param("seq"), v["mayfly"]["audit"]["seq"].to_string());
        assert_eq!(
            param("hash"),
            v["mayfly"]["audit"]["hash"].as_str().expect("hash")
        );
        assert_eq!(param("event"), event);
        records.push(record_from_line(&s.msg).expect("MSG is an audit line"));
    }
    records.sort_by_key(|r| r.seq);
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<_>>(),
        "one message per record"
    );
    let mut walker = ChainWalker::from_genesis();
    for r in &records {
        walker.push(r);
    }
    assert_eq!(walker.problems(), &[], "the received records chain");
}

#[test]
fn syslog_over_udp_jsonl_rotation_export_verify_and_search() {
    let udp = Listener::udp();
    let jsonl = support::temp_dir("jsonl");
    let file = jsonl.path().join("logs").join("audit.jsonl");
    let env = Env::start(&format!(
        "syslog = \"udp://127.0.0.1:{}\"\njsonl_file = {}\njsonl_max_bytes = 4096\njsonl_keep = 2\n",
        udp.port,
        serde_json::to_string(&file).expect("path")
    ));
    env.traffic(8);
    let count = 9u64;
    let got = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        let d = udp.datagrams();
        (d.len() as u64 >= count).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "syslog/udp: {} of {count} datagrams\n{}",
            udp.datagrams().len(),
            env.ca.stderr_log()
        )
    });
    check_messages(&got, count, env.ca.pid().expect("pid"));

    // The JSONL file rotated at 4096 bytes, keeping two old files.
    let rotated = |n: usize| PathBuf::from(format!("{}.{n}", file.display()));
    let lines = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let mut lines = Vec::new();
        for p in [rotated(2), rotated(1), file.clone()] {
            let text = std::fs::read_to_string(&p).ok()?;
            assert!(
                text.len() <= 4096,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            lines.extend(text.lines().map(str::to_string));
        }
        let last: Value = serde_json::from_str(lines.last()?).ok()?;
        (last["mayfly"]["audit"]["seq"] == json!(count)).then_some(lines)
    })
    .expect("the JSONL files reach the last record");
    assert!(
        !rotated(3).exists(),
        "jsonl_keep = 2 keeps two rotated files"
    );
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| record_from_line(l).expect("JSONL line").seq)
        .collect();
    assert!(
        seqs.len() < count as usize,
        "older files were dropped: {seqs:?}"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous tail: {seqs:?}"
    );
    // The rotated files together are a verifiable slice of the log.
    let joined = env.dir.path().join("stream.jsonl");
    std::fs::write(&joined, lines.join("\n") + "\n").expect("write");
    let (code, out, err) = mayfly(&[
        "audit",
        "verify",
        "--export",
        joined.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // Batch export, while the server runs, and its verification.
    let exported = env.dir.path().join("export.jsonl");
    let ex = exported.to_str().expect("utf-8");
    let (code, out, err) = mayfly(&[
        "audit",
        "export",
        "--config",
        env.config(),
        "--format",
        "jsonl",
        "--out",
        ex,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("9 record(s) exported (seq 1..9)"), "{err}");
    let (code, out, err) = mayfly(&["audit", "verify", "--export", ex]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: export"), "{out}");
    let (code, out, err) = mayfly(&["audit", "verify", "--export", ex, "--config", env.config()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("9 of 9 exported record(s) found unchanged in the database"),
        "{out}"
    );
    // --since: a duration back from now, RFC 3339, unix seconds.
    let (_, day, _) = mayfly(&[
        "audit",
        "export",
        "--config",
        env.config(),
        "--since",
        "24h",
    ]);
    assert_eq!(day.lines().count(), 9, "{day}");
    let (_, future, err) = mayfly(&[
        "audit",
        "export",
        "--config",
        env.config(),
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(future, "", "{err}");
    let (_, all, _) = mayfly(&["audit", "export", "--config", env.config(), "--since", "0"]);
    assert_eq!(all, std::fs::read_to_string(&exported).expect("read"));

    // An edited or shortened export no longer verifies, naming the seq.
    let text = std::fs::read_to_string(&exported).expect("read");
    let mut edited: Vec<String> = text.lines().map(str::to_string).collect();
    edited[3] = edited[3].replace("\"principals\":[\"deploy\"]", "\"principals\":[\"root\"]");
    let bad = env.dir.path().join("edited.jsonl");
    std::fs::write(&bad, edited.join("\n")).expect("write");
    let (code, out, _) = mayfly(&["audit", "verify", "--export", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains("first problem at seq 4: record altered"),
        "{out}"
    );
    // Against the database: the altered copy is not counted as unchanged.
    let (code, out, _) = mayfly(&[
        "audit",
        "verify",
        "--export",
        bad.to_str().expect("utf-8"),
        "--config",
        env.config(),
    ]);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains("8 of 9 exported record(s) found unchanged in the database"),
        "{out}"
    );
    let mut cut: Vec<&str> = text.lines().collect();
    cut.remove(4);
    std::fs::write(&bad, cut.join("\n")).expect("write");
    let (code, out, _) = mayfly(&["audit", "verify", "--export", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains("first problem at seq 5: record missing"),
        "{out}"
    );

    // Search: a table, and the export lines with --json.
    let (code, out, err) = mayfly(&[
        "audit",
        "search",
        "--config",
        env.config(),
        "--event",
        "cert_denied",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("TIME (UTC)"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("ci/intruder") && out.contains("claim_mismatch"),
        "{out}"
    );
    let (code, out, _) = mayfly(&[
        "audit",
        "search",
        "--config",
        env.config(),
        "--subject",
        "deploy-bot",
        "--limit",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| record_from_line(l).expect("json line").seq)
        .collect();
    assert_eq!(seqs, vec![6, 7, 8], "the newest three, oldest first");
    let (code, _, err) = mayfly(&[
        "audit",
        "search",
        "--config",
        env.config(),
        "--subject",
        "nobody",
    ]);
    assert_eq!(code, 7, "{err}");
    // A typo in an event name is an error that lists the events, not an
    // empty result.
    let (code, _, err) = mayfly(&[
        "audit",
        "search",
        "--config",
        env.config(),
        "--event",
        "cert_issue",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"cert_issue\" is not an event") && err.contains("cert_issued"),
        "{err}"
    );
}

#[test]
fn syslog_over_tcp_uses_octet_counting_and_stdout_gets_lines() {
    let tcp = Listener::tcp();
    let env = Env::start(&format!(
        "syslog = \"tcp://127.0.0.1:{}\"\njsonl_stdout = true\n",
        tcp.port
    ));
    env.traffic(5);
    let count = 6u64;
    let got = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        let f = tcp.framed().ok()?;
        (f.len() as u64 >= count).then_some(f)
    })
    .unwrap_or_else(|| {
        panic!(
            "syslog/tcp: {:?}\n{}",
            tcp.framed().map(|f| f.len()),
            env.ca.stderr_log()
        )
    });
    check_messages(&got, count, env.ca.pid().expect("pid"));
    let stdout_lines = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let lines: Vec<String> = env.ca.stdout_log().lines().map(str::to_string).collect();
        (lines.len() as u64 >= count).then_some(lines)
    })
    .expect("stdout lines");
    for (i, l) in stdout_lines.iter().enumerate() {
        assert_eq!(record_from_line(l).expect("stdout line").seq, i as u64 + 1);
    }
}

#[test]
fn a_syslog_server_that_is_down_never_blocks_issuance() {
    let closed = free_port();
    let env = Env::start(&format!("syslog = \"tcp://127.0.0.1:{closed}\"\n"));
    for _ in 0..3 {
        let r = env.issue("deploy-bot");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let logged = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        env.ca
            .stderr_log()
            .contains("audit sink failed")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", env.ca.stderr_log());
    // The records are durable and intact regardless.
    let (code, out, err) = mayfly(&["audit", "verify", "--config", env.config()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 records (seq 1..3)"), "{out}");
}
