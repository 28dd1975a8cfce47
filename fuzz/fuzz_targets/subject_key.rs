//! The request's `public_key` line: `SubjectKey::parse`, and the key facts
//! policy reads from the accepted key.
//!
//! Invariants: never panics; an accepted key is Ed25519, ECDSA P-256/P-384
//! or RSA of at least 3072 bits; its OpenSSH form parses back to the same
//! key; the facts policy sees agree with the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mayfly::ca::spec::{SubjectKey, MIN_RSA_BITS};
use mayfly::policy::limits::KeyFacts;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    // The policy-side reader sees raw request lines in `policy explain`.
    let _ = KeyFacts::from_openssh(line);
    let Ok(key) = SubjectKey::parse(line) else {
        return;
    };
    let alg = key.algorithm();
    assert!(
        matches!(
            alg.as_str(),
            "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ssh-rsa"
        ),
        "accepted key type {alg}"
    );
    let fp = key.fingerprint();
    assert!(fp.starts_with("SHA256:"), "fingerprint {fp}");
    let again = key.to_openssh();
    assert!(!again.is_empty(), "accepted key has no OpenSSH form");
    let reparsed = SubjectKey::parse(&again).expect("an accepted key's OpenSSH form parses back");
    assert_eq!(reparsed.fingerprint(), fp);
    let facts = KeyFacts::from(&key);
    assert_eq!(facts.algorithm, alg);
    if alg == "ssh-rsa" {
        let bits = facts.rsa_bits.expect("RSA size known");
        assert!(bits >= MIN_RSA_BITS, "accepted RSA key of {bits} bits");
    } else {
        assert_eq!(facts.rsa_bits, None);
    }
});
