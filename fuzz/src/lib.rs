//! Helpers shared by the fuzz targets: independent restatements of the
//! invariants the targets check, written without mayfly's own code so a bug
//! there cannot hide itself.

use arbitrary::{Result, Unstructured};
use mayfly::audit::chain::StoredRecord;

/// The principal grammar `[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}`, checked
/// byte by byte.
pub fn principal_grammar_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let Some((&first, rest)) = b.split_first() else {
        return false;
    };
    b.len() <= 64
        && (first.is_ascii_alphanumeric() || first == b'_')
        && rest
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'-'))
}

fn opt_text(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    u.arbitrary()
}

/// An audit record with every column drawn from the input (seq and hashes
/// are left for the caller).
pub fn record(u: &mut Unstructured<'_>) -> Result<StoredRecord> {
    Ok(StoredRecord {
        seq: 0,
        time_ms: u.arbitrary()?,
        event: u.arbitrary()?,
        request_id: u.arbitrary()?,
        client_addr: opt_text(u)?,
        issuer: opt_text(u)?,
        subject: opt_text(u)?,
        role: opt_text(u)?,
        reason_code: opt_text(u)?,
        reason: opt_text(u)?,
        serial: u.arbitrary()?,
        key_id: opt_text(u)?,
        principals: u.arbitrary()?,
        valid_after: u.arbitrary()?,
        valid_before: u.arbitrary()?,
        key_fingerprint: opt_text(u)?,
        token_id: opt_text(u)?,
        token_exp: u.arbitrary()?,
        policy_digest: opt_text(u)?,
        cert_type: opt_text(u)?,
        ca_key: opt_text(u)?,
        actor: opt_text(u)?,
        claims: opt_text(u)?,
        prev_hash: None,
        hash: None,
    })
}

/// Changes one column of `r`, chosen by `which`, to a different value.
pub fn alter(r: &mut StoredRecord, which: u8) {
    fn flip(s: &mut String) {
        s.push('x');
    }
    fn flip_opt(s: &mut Option<String>) {
        *s = match s.take() {
            None => Some(String::new()),
            Some(_) => None,
        };
    }
    fn flip_int(n: &mut Option<i64>) {
        *n = match *n {
            None => Some(0),
            Some(v) => Some(v.wrapping_add(1)),
        };
    }
    match which % 24 {
        0 => r.seq = r.seq.wrapping_add(1),
        1 => r.time_ms = r.time_ms.wrapping_add(1),
        2 => flip(&mut r.event),
        3 => flip(&mut r.request_id),
        4 => flip_opt(&mut r.client_addr),
        5 => flip_opt(&mut r.issuer),
        6 => flip_opt(&mut r.subject),
        7 => flip_opt(&mut r.role),
        8 => flip_opt(&mut r.reason_code),
        9 => flip_opt(&mut r.reason),
        10 => flip_int(&mut r.serial),
        11 => flip_opt(&mut r.key_id),
        12 => r.principals.push(String::new()),
        13 => flip_int(&mut r.valid_after),
        14 => flip_int(&mut r.valid_before),
        15 => flip_opt(&mut r.key_fingerprint),
        16 => flip_opt(&mut r.token_id),
        17 => flip_int(&mut r.token_exp),
        18 => flip_opt(&mut r.policy_digest),
        19 => flip_opt(&mut r.cert_type),
        20 => flip_opt(&mut r.ca_key),
        21 => flip_opt(&mut r.actor),
        22 => flip_opt(&mut r.claims),
        _ => {
            if let Some(h) = r.hash.as_mut() {
                h[0] ^= 1;
            }
        }
    }
}
