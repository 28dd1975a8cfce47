//! The KRL encoder: a set of serials and key ids built from the input is
//! encoded (`krl::encode`), parsed back and compared.
//!
//! Invariants: never panics; the encoding always parses; it revokes exactly
//! the non-zero serials and the NUL-free key ids given, per CA (serials
//! next to a revoked one are revoked only if given); it is never larger
//! than listing every serial one by one.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mayfly::ca::krl::{self, CertSection, KrlSpec};

/// SSH wire blob of an Ed25519 public key whose 32 bytes are all `seed`.
fn ca_blob(seed: u8) -> Vec<u8> {
    let mut b = Vec::new();
    for part in [b"ssh-ed25519".as_slice(), &[seed; 32]] {
        b.extend_from_slice(&(part.len() as u32).to_be_bytes());
        b.extend_from_slice(part);
    }
    b
}

#[derive(Arbitrary, Debug)]
enum Serials {
    /// Single serials.
    List(Vec<u64>),
    /// `(start, gaps and run lengths)`: runs of consecutive serials.
    Runs(u64, Vec<(u16, u16)>),
}

#[derive(Arbitrary, Debug)]
struct Section {
    /// 0: any CA; otherwise one of three fixed CA keys.
    ca: u8,
    serials: Serials,
    key_ids: Vec<String>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    krl_version: u64,
    generated_date: u64,
    comment: String,
    sections: Vec<Section>,
    explicit_keys: Vec<Vec<u8>>,
    sha256: Vec<[u8; 32]>,
}

/// Most serials one input expands to: enough for every encoding (a range
/// pays off from a few dozen serials, a bitmap spans at most 16384), few
/// enough to keep each run fast.
const SERIAL_BUDGET: usize = 4_000;

fn expand(s: &Serials, budget: &mut usize) -> Vec<u64> {
    let mut out = match s {
        Serials::List(l) => l.clone(),
        Serials::Runs(start, runs) => {
            let mut out = Vec::new();
            let mut cur = *start;
            for &(gap, len) in runs.iter().take(64) {
                cur = cur.saturating_add(u64::from(gap));
                let len = u64::from(len).min((*budget - out.len().min(*budget)) as u64);
                out.extend((0..len).filter_map(|k| cur.checked_add(k)));
                cur = cur.saturating_add(len);
            }
            out
        }
    };
    out.truncate(*budget);
    *budget -= out.len();
    out
}

fuzz_target!(|input: Input| {
    let mut budget = SERIAL_BUDGET;
    let certs: Vec<CertSection> = input
        .sections
        .iter()
        .map(|s| CertSection {
            ca_key_blob: match s.ca % 4 {
                0 => Vec::new(),
                n => ca_blob(n),
            },
            serials: expand(&s.serials, &mut budget),
            key_ids: s.key_ids.clone(),
        })
        .collect();
    let spec = KrlSpec {
        krl_version: input.krl_version,
        generated_date: input.generated_date,
        comment: input.comment.clone(),
        certs,
        explicit_keys: input.explicit_keys.clone(),
        sha256_fingerprints: input.sha256.clone(),
    };
    let bytes = krl::encode(&spec);
    let k = krl::parse(&bytes).expect("mayfly's own KRL parses");
    assert_eq!(
        krl::parse_header(&bytes).ok(),
        Some((spec.krl_version, spec.generated_date))
    );
    assert_eq!(k.comment, spec.comment.replace('\0', ""));

    // Expected revocations per CA blob, merged in order of first appearance.
    let mut expected: Vec<(Vec<u8>, Vec<u64>, Vec<String>)> = Vec::new();
    for c in &spec.certs {
        let i = match expected.iter().position(|(ca, _, _)| *ca == c.ca_key_blob) {
            Some(i) => i,
            None => {
                expected.push((c.ca_key_blob.clone(), Vec::new(), Vec::new()));
                expected.len() - 1
            }
        };
        expected[i]
            .1
            .extend(c.serials.iter().copied().filter(|&s| s != 0));
        expected[i]
            .2
            .extend(c.key_ids.iter().filter(|id| !id.contains('\0')).cloned());
    }
    let mut total_serials = 0usize;
    for e in &mut expected {
        e.1.sort_unstable();
        e.1.dedup();
        e.2.sort_unstable();
        e.2.dedup();
        total_serials += e.1.len();
    }
    expected.retain(|(_, s, ids)| !s.is_empty() || !ids.is_empty());
    let got: Vec<(Vec<u8>, Vec<u64>, Vec<String>)> = k
        .certs
        .iter()
        .map(|c| (c.ca_key_blob.clone(), c.serials.clone(), c.key_ids.clone()))
        .collect();
    assert_eq!(got, expected);

    for (ca, serials, _) in &expected {
        for &s in serials.iter().take(64) {
            assert!(k.is_serial_revoked(ca, s));
            let next = s.wrapping_add(1);
            if next != 0 && !k.certs.iter().any(|c| c.ca_key_blob.is_empty()) {
                assert_eq!(
                    k.is_serial_revoked(ca, next),
                    serials.binary_search(&next).is_ok()
                );
            }
        }
    }

    let mut keys = spec.explicit_keys.clone();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(k.explicit_keys, keys);
    let mut sha = spec.sha256_fingerprints.clone();
    sha.sort_unstable();
    sha.dedup();
    assert_eq!(k.sha256_fingerprints, sha);

    // Never worse than listing every serial: per CA section at most
    // type + length + CA string + reserved + one list subsection header.
    let empty = krl::encode_empty(spec.krl_version, spec.generated_date, &spec.comment).len();
    let per_ca: usize = expected
        .iter()
        .map(|(ca, _, ids)| {
            5 + 4 + ca.len() + 4 + 5 + 5 + ids.iter().map(|i| 4 + i.len()).sum::<usize>()
        })
        .sum();
    let other = 5 + keys.iter().map(|k| 4 + k.len()).sum::<usize>() + 5 + 36 * sha.len();
    assert!(
        bytes.len() <= empty + per_ca + other + 8 * total_serials,
        "{} bytes for {total_serials} serials",
        bytes.len()
    );
});
