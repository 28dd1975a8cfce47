//! Syslog output for audit records: RFC 5424 messages over UDP (RFC 5426)
//! or TCP with octet-counting framing (RFC 6587 §3.4.1).
//!
//! ```text
//! <86>1 2026-11-01T12:00:00.123Z ca1 mayfly 4242 cert_issued [mayfly@32473 seq="12" hash="…" outcome="success" role="deploy" …] {"@timestamp":…}
//! ```
//!
//! Facility `authpriv` (10); severity `info` (6), or `notice` (5) for
//! refusals. The structured-data element `mayfly@32473` carries the fields
//! syslog filters need; the MSG is the full JSON export line (no BOM), so a
//! SIEM gets the same document as from the JSONL file. (32473 is the
//! Private Enterprise Number reserved for documentation, RFC 5612.)

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use super::chain::{self, StoredRecord};
use super::export::{outcome, rfc3339_ms};

/// Facility `authpriv`.
const FACILITY: u8 = 10;
/// SD-ID of the structured-data element.
pub const SD_ID: &str = "mayfly@32473";
/// How long a TCP connect or write may block the streaming thread.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// After a TCP failure, records are dropped (and counted) rather than
/// reconnecting more often than this.
const RECONNECT_EVERY: Duration = Duration::from_secs(2);

pub use crate::config::SyslogTarget;

/// This host's name for the HOSTNAME field (`-` if unknown).
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let h: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if h.is_empty() {
        "-".into()
    } else {
        h
    }
}

/// PARAM-VALUE escaping (RFC 5424 §6.3.3): `"`, `\` and `]`.
fn sd_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn msgid(event: &str) -> String {
    let m: String = event
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    if m.is_empty() {
        "-".into()
    } else {
        m
    }
}

/// One RFC 5424 message for `r` whose JSON export line is `json`.
pub fn format_5424(r: &StoredRecord, json: &str, hostname: &str, pid: u32) -> String {
    let severity = if outcome(&r.event) == "failure" { 5 } else { 6 };
    let pri = u16::from(FACILITY) * 8 + severity;
    let mut sd = String::with_capacity(256);
    sd.push('[');
    sd.push_str(SD_ID);
    let mut param = |name: &str, v: &str| {
        let _ = write!(sd, " {name}=\"");
        sd_escape(v, &mut sd);
        sd.push('"');
    };
    param("seq", &r.seq.to_string());
    if let Some(h) = &r.hash {
        param("hash", &chain::hex(h));
    }
    param("event", &r.event);
    param("outcome", outcome(&r.event));
    for (name, v) in [
        ("role", &r.role),
        ("issuer", &r.issuer),
        ("subject", &r.subject),
        ("key_id", &r.key_id),
        ("reason_code", &r.reason_code),
    ] {
        if let Some(v) = v {
            param(name, v);
        }
    }
    if let Some(s) = r.serial {
        param("serial", &(s as u64).to_string());
    }
    sd.push(']');
    format!(
        "<{pri}>1 {} {hostname} mayfly {pid} {} {sd} {json}",
        rfc3339_ms(r.time_ms),
        msgid(&r.event)
    )
}

/// Why a syslog message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    /// Name resolution, connect or send failed.
    #[error("syslog {target}: {source}")]
    Io {
        /// The target.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A recent failure; not retried yet.
    #[error("syslog {0}: not connected (retrying shortly)")]
    Backoff(String),
}

/// A connected syslog sender.
pub struct SyslogSender {
    target: SyslogTarget,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    /// Monotonic clock time before which no reconnect is tried.
    retry_at: Option<Duration>,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    hostname: String,
    pid: u32,
}

impl SyslogSender {
    /// A sender for `target`; connects on first use.
    pub fn new(
        target: SyslogTarget,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
    ) -> SyslogSender {
        SyslogSender {
            target,
            udp: None,
            tcp: None,
            retry_at: None,
            clock,
            hostname: hostname(),
            pid: std::process::id(),
        }
    }

    fn io(&self, source: std::io::Error) -> SyslogError {
        SyslogError::Io {
            target: self.target.describe(),
            source,
        }
    }

    fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
        addr.to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("name has no address"))
    }

    /// Sends the message for `r` (whose JSON line is `json`).
    pub fn send(&mut self, r: &StoredRecord, json: &str) -> Result<(), SyslogError> {
        let msg = format_5424(r, json, &self.hostname, self.pid);
        if let Some(t) = self.retry_at {
            if self.clock.monotonic() < t {
                return Err(SyslogError::Backoff(self.target.describe()));
            }
            self.retry_at = None;
        }
        let result = match self.target.clone() {
            SyslogTarget::Udp(addr) => self.send_udp(&addr, msg.as_bytes()),
            SyslogTarget::Tcp(addr) => self.send_tcp(&addr, &msg),
        };
        if result.is_err() {
            self.tcp = None;
            self.udp = None;
            self.retry_at = Some(self.clock.monotonic() + RECONNECT_EVERY);
        }
        result
    }

    fn send_udp(&mut self, addr: &str, msg: &[u8]) -> Result<(), SyslogError> {
        if self.udp.is_none() {
            let to = Self::resolve(addr).map_err(|e| self.io(e))?;
            let bind: SocketAddr = if to.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(bind).map_err(|e| self.io(e))?;
            s.connect(to).map_err(|e| self.io(e))?;
            self.udp = Some(s);
        }
        let sent = match &self.udp {
            Some(s) => s.send(msg),
            None => Err(std::io::Error::other("no socket")),
        };
        sent.map(|_| ()).map_err(|e| self.io(e))
    }

    fn send_tcp(&mut self, addr: &str, msg: &str) -> Result<(), SyslogError> {
        if self.tcp.is_none() {
            let to = Self::resolve(addr).map_err(|e| self.io(e))?;
            let s = TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(|e| self.io(e))?;
            s.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(|e| self.io(e))?;
            let _ = s.set_nodelay(true);
            self.tcp = Some(s);
        }
        let framed = format!("{} {msg}", msg.len());
        let sent = match self.tcp.as_mut() {
            Some(s) => s.write_all(framed.as_bytes()),
            None => Err(std::io::Error::other("no connection")),
        };
        sent.map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_default_port() {
        assert_eq!(
            SyslogTarget::parse("udp://127.0.0.1:514"),
            Ok(SyslogTarget::Udp("127.0.0.1:514".into()))
        );
        assert_eq!(
            SyslogTarget::parse("tcp://logs.example.com"),
            Ok(SyslogTarget::Tcp("logs.example.com:514".into()))
        );
        assert_eq!(
            SyslogTarget::parse("tcp://[::1]:6514"),
            Ok(SyslogTarget::Tcp("[::1]:6514".into()))
        );
        assert!(SyslogTarget::parse("tls://x:1").is_err());
        assert!(SyslogTarget::parse("127.0.0.1:514").is_err());
    }

    #[test]
    fn message_is_rfc5424_with_escaped_structured_data() {
        let r = StoredRecord {
            seq: 9,
            time_ms: 1_793_491_200_123,
            event: "cert_denied".into(),
            request_id: "r".into(),
            role: Some("de\"p]lo\\y".into()),
            hash: Some([0xab; 32]),
            ..StoredRecord::default()
        };
        let m = format_5424(&r, "{\"a\":1}", "ca1", 42);
        assert!(
            m.starts_with("<85>1 2026-11-01T00:00:00.123Z ca1 mayfly 42 cert_denied [mayfly@32473 seq=\"9\" hash=\"abab"),
            "{m}"
        );
        assert!(m.contains(r#"role="de\"p\]lo\\y""#), "{m}");
        assert!(m.ends_with("] {\"a\":1}"), "{m}");
    }
}
