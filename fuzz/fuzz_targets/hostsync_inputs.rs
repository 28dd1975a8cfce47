//! Host-sync inputs: what `mayfly host sync` fetches from the CA before it
//! installs it for sshd: a CA key file (`CaKeys::parse`) and a KRL
//! (`check_krl`), plus the known_hosts lines made from the CA keys.
//!
//! Invariants: never panics; every line sshd would read as a key from an
//! accepted CA file (not blank, not `#` after spaces and tabs) is one of the
//! checked key lines and parses as an OpenSSH public key, not a certificate;
//! the installed file ends with a newline; `check_krl` accepts exactly what
//! the strict KRL parser accepts, and reports its header; known_hosts lines
//! are single lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mayfly::ca::krl;
use mayfly::hostsync::{check_krl, known_hosts_lines, CaKeys, MAX_KRL_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = CaKeys::parse(data) {
        let text = keys.as_bytes();
        assert!(text.ends_with(b"\n"));
        assert!(text.starts_with(data));
        assert!(!keys.key_lines().is_empty());
        let text = std::str::from_utf8(text).expect("accepted CA file is UTF-8");
        for line in text.split('\n') {
            // sshd (sshkey_in_file) skips leading spaces and tabs, then
            // empty, '#' and NUL lines; any other line that is not a key
            // makes it refuse every certificate.
            let sshd = line.trim_start_matches([' ', '\t']);
            if sshd.is_empty() || sshd.starts_with(['#', '\0']) {
                continue;
            }
            let ours = sshd.trim_end_matches([' ', '\t', '\r']);
            assert!(
                keys.key_lines().iter().any(|k| k == ours),
                "line {line:?} reaches sshd unchecked"
            );
        }
        for k in keys.key_lines() {
            let key = ssh_key_line_ok(k);
            assert!(key, "accepted line {k:?} is not a plain public key");
        }
        for l in known_hosts_lines(&["*.example.com".to_string()], &keys) {
            assert!(l.starts_with("@cert-authority *.example.com "));
            assert!(!l.contains('\n'), "known_hosts line {l:?} spans lines");
        }
    }
    let checked = check_krl(data);
    let strict = krl::parse(data);
    if data.len() <= MAX_KRL_BYTES {
        assert_eq!(checked.is_ok(), strict.is_ok());
    }
    if let (Ok(info), Ok(k)) = (checked, strict) {
        assert_eq!(
            (info.version, info.generated_date),
            (k.krl_version, k.generated_date)
        );
    }
});

/// The key line reads back through the request-key parser's underlying
/// reader: type, base64 blob, optional comment; never a certificate.
fn ssh_key_line_ok(line: &str) -> bool {
    let Some(alg) = line.split_whitespace().next() else {
        return false;
    };
    !alg.ends_with("-cert-v01@openssh.com")
        && mayfly::policy::limits::KeyFacts::from_openssh(line).is_ok()
}
