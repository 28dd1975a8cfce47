//! KRL encoding cost and size: `cargo bench --bench krl`.
//!
//! Plain `fn main` timing (no harness): each workload is encoded several
//! times and the median is reported, with the KRL size, the sections the
//! encoder chose and the time to parse the result back.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mayfly::ca::krl::{self, CertSection, KrlSpec};

/// Where mayfly's serials live: `start_time << 24` and up.
const SERIAL_BASE: u64 = 1_750_000_000 << 24;
const N: u64 = 100_000;
const ROUNDS: usize = 15;

/// A fixed, seeded generator (splitmix64) so runs are comparable.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn ca_blob() -> Vec<u8> {
    let mut b = Vec::new();
    for part in [&b"ssh-ed25519"[..], &[7u8; 32][..]] {
        b.extend_from_slice(&(part.len() as u32).to_be_bytes());
        b.extend_from_slice(part);
    }
    b
}

fn spec(serials: Vec<u64>, key_ids: Vec<String>) -> KrlSpec {
    KrlSpec {
        krl_version: 1,
        generated_date: 1_750_000_000,
        comment: "mayfly bench".into(),
        certs: vec![CertSection {
            ca_key_blob: ca_blob(),
            serials,
            key_ids,
        }],
        ..KrlSpec::default()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn run(name: &str, spec: &KrlSpec) {
    let mut encode_times = Vec::with_capacity(ROUNDS);
    let mut bytes = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        bytes = black_box(krl::encode(black_box(spec)));
        encode_times.push(start.elapsed());
    }
    let mut parse_times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let parsed = black_box(krl::parse(black_box(&bytes))).expect("our own KRL parses");
        parse_times.push(start.elapsed());
        black_box(parsed);
    }
    let st = krl::stats(&bytes).expect("our own KRL parses");
    let items = spec
        .certs
        .iter()
        .map(|c| c.serials.len() + c.key_ids.len())
        .sum::<usize>();
    println!(
        "{name:<44} encode {:>9.3} ms  {:>9} bytes ({:>6.2} B/item)  parse {:>8.3} ms  \
         [lists {}, ranges {}, bitmaps {}, key-id lists {}]",
        median(encode_times).as_secs_f64() * 1e3,
        bytes.len(),
        bytes.len() as f64 / items.max(1) as f64,
        median(parse_times).as_secs_f64() * 1e3,
        st.serial_lists,
        st.serial_ranges,
        st.serial_bitmaps,
        st.key_id_lists,
    );
}

fn main() {
    let mut rng = SplitMix(0x6d61_7966_6c79);

    let consecutive: Vec<u64> = (SERIAL_BASE..SERIAL_BASE + N).collect();
    run("100,000 consecutive serials", &spec(consecutive, vec![]));

    let mut spread = std::collections::BTreeSet::new();
    while spread.len() < N as usize {
        spread.insert(SERIAL_BASE + rng.next() % 10_000_000);
    }
    let mut spread: Vec<u64> = spread.into_iter().collect();
    // Shuffle so the encoder's sort is part of the measurement.
    for i in (1..spread.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        spread.swap(i, j);
    }
    run(
        "100,000 random serials over a 10M range",
        &spec(spread, vec![]),
    );

    let key_ids: Vec<String> = (0..N)
        .map(|i| {
            format!(
                "mayfly:deploy:github:repo:acme/api:ref:refs/heads/main:{}",
                SERIAL_BASE + i
            )
        })
        .collect();
    run("100,000 key IDs (~70 bytes each)", &spec(vec![], key_ids));
}
