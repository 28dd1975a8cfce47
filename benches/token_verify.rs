//! CPU per certificate request of two steps of the issuance path, before
//! and after issue 16's changes, measured side by side in one process:
//!
//! - the token: `parse_unverified` then `jsonwebtoken::decode` (the key
//!   rebuilt from its JWK components and the header and payload decoded
//!   again for every token), against `parse_unverified` then the signature
//!   checked with the issuer key held parsed (`jwks::VerifyKey`);
//! - the CA's Ed25519 signature: `SigningKey::sign` (the seed hashed again
//!   for every signature) against the precomputed expanded key (`CaKey`).
//!
//! `cargo build --release --bench token_verify`, then run
//! `target/release/deps/token_verify-*`. Prints the fastest of 15 rounds
//! (the least disturbed by other work on the machine), in microseconds per
//! operation; asserts nothing about speed.

use std::time::Instant;

use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mayfly::auth::jwks::KeySet;
use mayfly::ca::keys::CaKey;
use mayfly::ca::CaSigner;
use serde_json::{json, Map, Value};

const ROUNDS: usize = 15;
const PER_ROUND: u32 = 200;
const MESSAGE: &[u8] = &[0x5a; 400]; // about a certificate's signed part

/// Fastest round of `f`, in microseconds per call.
fn best_us(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..PER_ROUND {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(PER_ROUND)
        })
        .fold(f64::INFINITY, f64::min)
}

fn rsa_key() -> EncodingKey {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).expect("der");
    EncodingKey::from_rsa_der(der.as_ref())
}

fn main() {
    let key = rsa_key();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some("k".into());
    let jwks = serde_json::to_vec(&json!({ "keys": [jwk] })).expect("jwks");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k".into());
    let claims = json!({
        "iss": "https://bench.invalid", "aud": "mayfly", "sub": "bench-7",
        "iat": 1_800_000_000u64, "exp": 1_800_000_600u64, "jti": "bench-run-12345",
    });
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");

    let decoding = DecodingKey::from_jwk(&jwk).expect("decoding key");
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let before = best_us(|| {
        mayfly::auth::parse_unverified(&token).expect("front");
        jsonwebtoken::decode::<Map<String, Value>>(&token, &decoding, &v).expect("decode");
    });

    let set = KeySet::parse(&jwks).expect("key set");
    let held = set.find(Some("k"), Algorithm::RS256).expect("key").clone();
    let (input, sig) = token.rsplit_once('.').expect("three parts");
    let after = best_us(|| {
        mayfly::auth::parse_unverified(&token).expect("front");
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .expect("b64");
        assert!(held.verifies(input.as_bytes(), &s));
    });
    println!("RS256 token, parse + verify:  before {before:6.1} us   after {after:6.1} us");

    let seed = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let before = best_us(|| {
        ed25519_dalek::Signer::sign(&seed, MESSAGE);
    });
    let ca = CaKey::generate();
    let after = best_us(|| {
        ca.sign(MESSAGE).expect("sign");
    });
    println!("Ed25519 CA signature:         before {before:6.1} us   after {after:6.1} us");
}
