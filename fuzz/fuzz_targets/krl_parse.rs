//! The KRL parser on arbitrary bytes (`krl::parse`, `parse_header`,
//! `stats`).
//!
//! Invariants: never panics; the three readers agree; what `parse` returns
//! is normalised (sorted, deduplicated, no serial 0, no empty sections);
//! re-encoding a parsed KRL (of up to 64 Ki serials) and parsing it again
//! gives the same revocations (SHA-1 fingerprints and header flags aside,
//! which mayfly never writes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mayfly::ca::krl::{self, CertSection, KrlSpec};

fn sorted_unique<T: Ord>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

fuzz_target!(|data: &[u8]| {
    let parsed = krl::parse(data);
    let header = krl::parse_header(data);
    let stats = krl::stats(data);
    assert_eq!(parsed.is_ok(), stats.is_ok());
    let Ok(k) = parsed else {
        return;
    };
    assert_eq!(header.ok(), Some((k.krl_version, k.generated_date)));
    assert!(!k.comment.contains('\0'));
    let mut seen_cas = Vec::new();
    for c in &k.certs {
        assert!(
            !c.serials.is_empty() || !c.key_ids.is_empty(),
            "empty section kept"
        );
        assert!(!c.serials.contains(&0), "serial 0 revoked");
        assert!(sorted_unique(&c.serials) && sorted_unique(&c.key_ids));
        assert!(c.key_ids.iter().all(|id| !id.contains('\0')));
        assert!(
            !seen_cas.contains(&&c.ca_key_blob),
            "CA sections not merged"
        );
        seen_cas.push(&c.ca_key_blob);
        for &s in c.serials.iter().take(16) {
            assert!(k.is_serial_revoked(&c.ca_key_blob, s));
        }
    }
    assert!(k.serial_count() as u64 <= krl::MAX_EXPANDED_SERIALS);
    assert!(sorted_unique(&k.explicit_keys) && sorted_unique(&k.sha256_fingerprints));

    // The encoder has its own target (krl_roundtrip); here the round trip
    // is checked on KRLs of up to 64 Ki serials, so that the few inputs
    // that expand to millions do not slow every other input down.
    if k.serial_count() > 1 << 16 {
        return;
    }
    let spec = KrlSpec {
        krl_version: k.krl_version,
        generated_date: k.generated_date,
        comment: k.comment.clone(),
        certs: k
            .certs
            .iter()
            .map(|c| CertSection {
                ca_key_blob: c.ca_key_blob.clone(),
                serials: c.serials.clone(),
                key_ids: c.key_ids.clone(),
            })
            .collect(),
        explicit_keys: k.explicit_keys.clone(),
        sha256_fingerprints: k.sha256_fingerprints.clone(),
    };
    let again = krl::parse(&krl::encode(&spec)).expect("a re-encoded KRL parses");
    assert_eq!(again.krl_version, k.krl_version);
    assert_eq!(again.generated_date, k.generated_date);
    assert_eq!(again.comment, k.comment);
    assert_eq!(again.certs, k.certs);
    assert_eq!(again.explicit_keys, k.explicit_keys);
    assert_eq!(again.sha256_fingerprints, k.sha256_fingerprints);
});
