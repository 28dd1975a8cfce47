//! OpenSSH Key Revocation Lists (KRLs, OpenSSH's `PROTOCOL.krl`).
//!
//! [`encode`] writes the file that sshd loads through `RevokedKeys` (and
//! `ssh-keygen -Q -f` checks against); [`parse`] reads one back strictly,
//! whether mayfly or `ssh-keygen -k` wrote it.
//!
//! A KRL revokes, per CA key (or for any CA): certificate serials and key
//! IDs; and, for any key or certificate: explicit public key blobs and
//! SHA-256 (or legacy SHA-1) fingerprints of key blobs. mayfly never signs
//! KRLs: OpenSSH 9.4+ refuses signed ones. Serve them over an authenticated
//! channel or sign them with `ssh-keygen -Y sign`.
//!
//! # Serial encoding
//!
//! mayfly's serials are large (`start_time << 24` and up) and consecutive
//! within one server run, so a revoked set is typically a few long runs plus
//! scattered singles. The encoder sorts and dedupes the serials, splits them
//! into runs of consecutive numbers and picks, by dynamic programming over the
//! runs, the byte-cheapest mix of the three encodings: serial lists (8 bytes
//! per serial), ranges (16 bytes per run) and bitmaps (one bit per serial
//! from an offset). Sizes and work depend on the number of serials and runs,
//! never on the serials' absolute values.
//!
//! # OpenSSH limits that shape the output
//!
//! * Serial 0 means "no serial". OpenSSH refuses a KRL that revokes it, so
//!   the encoder drops it and the parser rejects it.
//! * A bitmap is an mpint and OpenSSH reads mpints of at most 16384 bits;
//!   one bit more and sshd refuses the whole KRL. Bitmaps here never span
//!   more than [`MAX_BITMAP_BITS`] serials.
//! * Key IDs and the comment are C strings: no NUL bytes.
//! * sshd reads at most 128 MiB of KRL (about 16 million listed serials, or
//!   far more as ranges and bitmaps).
//!
//! A KRL that sshd cannot load makes it refuse *every* key (fail closed), so
//! a malformed CA blob handed to [`encode`] locks everyone out rather than
//! silently revoking nothing.

use std::collections::{HashMap, VecDeque};

/// `SSHKRL\n\0`
const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;
const SECTION_EXTENSION: u8 = 255;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;
const CERT_EXTENSION: u8 = 0x39;

/// The widest serial bitmap the encoder writes and the parser accepts: 16384
/// bits, OpenSSH's largest mpint (`SSHBUF_MAX_BIGNUM`).
pub const MAX_BITMAP_BITS: u64 = 16384;

/// Longest bitmap mpint OpenSSH reads: 2048 bytes, plus one leading zero
/// byte when the top bit is set.
const MAX_BITMAP_MPINT_BYTES: usize = 2048 + 1;

/// The parser refuses KRLs whose serial lists, ranges and bitmaps expand to
/// more serials than this (16 Mi, i.e. 128 MiB once expanded).
pub const MAX_EXPANDED_SERIALS: u64 = 1 << 24;

/// Largest single item (CA or key blob, key ID, comment) the encoder writes.
/// Nothing larger fits in an SSH packet, so no certificate or key that sshd
/// accepts can match it; larger items are left out (comments are cut).
pub const MAX_ITEM_BYTES: usize = 1 << 20;

/// Sections and certificate subsections are split once they reach this size
/// (OpenSSH merges repeated sections), which keeps every length field far
/// below `u32::MAX`.
const SECTION_SOFT_LIMIT: usize = 1 << 20;

/// What to revoke: the input of [`encode`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KrlSpec {
    /// Increases each time the KRL changes.
    pub krl_version: u64,
    /// When the KRL was generated, seconds since the Unix epoch.
    pub generated_date: u64,
    /// Free text shown by `ssh-keygen -Q -l` (NUL bytes are dropped).
    pub comment: String,
    /// Certificate revocations, one entry per CA key (entries with the same
    /// CA are merged).
    pub certs: Vec<CertSection>,
    /// Raw public key blobs (SSH wire encoding) revoked outright, together
    /// with every certificate for them.
    pub explicit_keys: Vec<Vec<u8>>,
    /// SHA-256 digests of public key blobs revoked outright.
    pub sha256_fingerprints: Vec<[u8; 32]>,
}

/// Revoked certificates of one CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertSection {
    /// SSH wire blob of the CA public key; empty means "any CA".
    pub ca_key_blob: Vec<u8>,
    /// Revoked serials (any order; duplicates and 0 are ignored).
    pub serials: Vec<u64>,
    /// Revoked certificate key IDs.
    pub key_ids: Vec<String>,
}

/// A parsed KRL, normalised: certificate sections of the same CA merged in
/// order of first appearance, serials expanded, sorted and deduplicated, and
/// every list sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Krl {
    /// Increases each time the KRL changes.
    pub krl_version: u64,
    /// When the KRL was generated, seconds since the Unix epoch.
    pub generated_date: u64,
    /// Header flags (none are defined; kept as read).
    pub flags: u64,
    /// The comment (invalid UTF-8 replaced by U+FFFD).
    pub comment: String,
    /// Certificate revocations per CA (empty CA blob: any CA).
    pub certs: Vec<CertSection>,
    /// Public key blobs revoked outright.
    pub explicit_keys: Vec<Vec<u8>>,
    /// SHA-256 digests of revoked key blobs.
    pub sha256_fingerprints: Vec<[u8; 32]>,
    /// SHA-1 digests of revoked key blobs (legacy; mayfly never writes them).
    pub sha1_fingerprints: Vec<[u8; 20]>,
}

/// How many sections of each kind a KRL holds; see [`stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KrlStats {
    /// Certificate sections (one or more per CA).
    pub cert_sections: usize,
    /// Serial list subsections.
    pub serial_lists: usize,
    /// Serial range subsections.
    pub serial_ranges: usize,
    /// Serial bitmap subsections.
    pub serial_bitmaps: usize,
    /// Key ID subsections.
    pub key_id_lists: usize,
    /// Explicit key sections.
    pub explicit_key_sections: usize,
    /// SHA-1 fingerprint sections.
    pub sha1_sections: usize,
    /// SHA-256 fingerprint sections.
    pub sha256_sections: usize,
    /// Non-critical extensions (sections and subsections), which are skipped.
    pub extensions: usize,
}

/// Why a KRL could not be read. Offsets are byte offsets into the whole KRL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrlError {
    /// The input does not start with `SSHKRL\n\0`.
    #[error("not a KRL: bad magic (expected \"SSHKRL\\n\\0\")")]
    BadMagic,
    /// The format version is not 1.
    #[error("unsupported KRL format version {0} (only 1 is defined)")]
    UnsupportedVersion(u32),
    /// A field runs past the end of the input or of its enclosing section.
    #[error(
        "KRL truncated at offset {offset}: {what} needs {needed} bytes, only {available} left"
    )]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// The field.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input or enclosing section.
        available: usize,
    },
    /// A top-level section type this parser does not know.
    #[error("unknown KRL section type {section_type:#04x} at offset {offset}")]
    UnknownSection {
        /// The type byte.
        section_type: u8,
        /// Where the section starts.
        offset: usize,
    },
    /// A certificate subsection type this parser does not know.
    #[error("unknown certificate subsection type {section_type:#04x} at offset {offset}")]
    UnknownCertSection {
        /// The type byte.
        section_type: u8,
        /// Where the subsection starts.
        offset: usize,
    },
    /// A section has bytes left over after its last field.
    #[error("{what} has {extra} bytes of unparsed data at offset {offset}")]
    TrailingData {
        /// The section.
        what: &'static str,
        /// Where the unparsed data starts.
        offset: usize,
        /// How many bytes are left over.
        extra: usize,
    },
    /// A serial bitmap wider than OpenSSH reads (16384 bits).
    #[error("serial bitmap at offset {offset} is {bytes} bytes; OpenSSH reads at most 2048 (16384 serials)")]
    BitmapTooLarge {
        /// Where the bitmap mpint starts.
        offset: usize,
        /// Its length.
        bytes: usize,
    },
    /// A serial bitmap whose mpint is negative (top bit set).
    #[error("serial bitmap at offset {offset} is a negative mpint")]
    NegativeBitmap {
        /// Where the bitmap mpint starts.
        offset: usize,
    },
    /// Serial 0 ("no serial") is revoked, which OpenSSH refuses.
    #[error("serial 0 revoked at offset {offset}; 0 means \"no serial\" and cannot be revoked")]
    ZeroSerial {
        /// Where the serial list, range or bitmap starts.
        offset: usize,
    },
    /// A serial range whose first serial is above its last.
    #[error("serial range at offset {offset} is backwards ({lo} > {hi})")]
    BackwardsRange {
        /// Where the range starts.
        offset: usize,
        /// First serial.
        lo: u64,
        /// Last serial.
        hi: u64,
    },
    /// A bitmap whose bits run past serial 2^64-1.
    #[error("serial bitmap at offset {offset} runs past serial 2^64-1")]
    BitmapOverflow {
        /// Where the bitmap starts.
        offset: usize,
    },
    /// The KRL expands to more serials than [`MAX_EXPANDED_SERIALS`].
    #[error("KRL expands to more than {limit} serials (at offset {offset}); refusing")]
    TooManySerials {
        /// Where the section that crossed the limit starts.
        offset: usize,
        /// The limit.
        limit: u64,
    },
    /// A fingerprint of the wrong length.
    #[error("{kind} fingerprint at offset {offset} is {got} bytes, expected {expected}")]
    BadHashLength {
        /// `SHA-1` or `SHA-256`.
        kind: &'static str,
        /// Where the fingerprint starts.
        offset: usize,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A key ID that is not UTF-8.
    #[error("{what} at offset {offset} is not UTF-8")]
    NotUtf8 {
        /// The field.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A C string (key ID, comment) with a NUL byte inside.
    #[error("{what} at offset {offset} contains a NUL byte")]
    EmbeddedNul {
        /// The field.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A certificate section's CA key is not an SSH public key.
    #[error("CA key at offset {offset} is not a valid SSH public key: {reason}")]
    InvalidCaKey {
        /// Where the CA key blob starts.
        offset: usize,
        /// What ssh-key said.
        reason: String,
    },
    /// A signature section (not verified here; OpenSSH 9.4+ refuses them).
    #[error("KRL signature section at offset {offset} is not supported (OpenSSH 9.4+ refuses signed KRLs; use ssh-keygen -Y sign instead)")]
    SignatureUnsupported {
        /// Where the section starts.
        offset: usize,
    },
    /// An extension marked critical, which readers must not skip.
    #[error("critical KRL extension {name:?} at offset {offset} is not supported")]
    CriticalExtension {
        /// The extension's name (cut to 64 bytes).
        name: String,
        /// Where the extension starts.
        offset: usize,
    },
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Encodes `spec` as an OpenSSH KRL.
///
/// Serials are sorted and deduplicated per CA and 0 is dropped; each run of
/// consecutive serials goes into whichever of list, range or bitmap keeps the
/// file smallest. Certificate sections with the same CA blob are merged and
/// empty ones left out; key IDs, key blobs and fingerprints are sorted and
/// deduplicated. Key IDs containing NUL and items over [`MAX_ITEM_BYTES`]
/// cannot match anything sshd accepts and are left out. The CA blobs are
/// written as given; see the module docs for what a malformed one does.
pub fn encode(spec: &KrlSpec) -> Vec<u8> {
    encode_with_limit(spec, SECTION_SOFT_LIMIT)
}

/// Encodes a KRL with no revocations.
pub fn encode_empty(krl_version: u64, generated_date: u64, comment: &str) -> Vec<u8> {
    encode(&KrlSpec {
        krl_version,
        generated_date,
        comment: comment.to_string(),
        ..KrlSpec::default()
    })
}

fn encode_with_limit(spec: &KrlSpec, soft_limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(KRL_MAGIC);
    put_u32(&mut out, KRL_FORMAT_VERSION);
    put_u64(&mut out, spec.krl_version);
    put_u64(&mut out, spec.generated_date);
    put_u64(&mut out, 0); // flags: none defined
    put_string(&mut out, b""); // reserved
    put_string(&mut out, sanitize_comment(&spec.comment).as_bytes());

    for ca in merge_cert_sections(&spec.certs) {
        encode_cert_section(&mut out, &ca, soft_limit);
    }

    let mut keys: Vec<&[u8]> = spec
        .explicit_keys
        .iter()
        .map(Vec::as_slice)
        .filter(|k| k.len() <= MAX_ITEM_BYTES)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    put_string_sections(&mut out, SECTION_EXPLICIT_KEY, &keys, soft_limit);

    let mut hashes: Vec<&[u8]> = spec
        .sha256_fingerprints
        .iter()
        .map(|h| h.as_slice())
        .collect();
    // PROTOCOL.krl: hashes in numeric (big-endian) order.
    hashes.sort_unstable();
    hashes.dedup();
    put_string_sections(&mut out, SECTION_FINGERPRINT_SHA256, &hashes, soft_limit);
    out
}

/// Drops NUL bytes (the comment is a C string) and cuts the comment to
/// [`MAX_ITEM_BYTES`] on a character boundary.
fn sanitize_comment(comment: &str) -> String {
    let mut out = String::with_capacity(comment.len().min(MAX_ITEM_BYTES));
    for c in comment.chars().filter(|&c| c != '\0') {
        if out.len() + c.len_utf8() > MAX_ITEM_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// One CA's revocations, merged from every [`CertSection`] naming it.
struct MergedCa<'a> {
    ca_key_blob: &'a [u8],
    serials: Vec<u64>,
    key_ids: Vec<&'a str>,
}

fn merge_cert_sections(certs: &[CertSection]) -> Vec<MergedCa<'_>> {
    let mut merged: Vec<MergedCa<'_>> = Vec::new();
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    for section in certs {
        if section.ca_key_blob.len() > MAX_ITEM_BYTES {
            continue;
        }
        let slot = *index
            .entry(section.ca_key_blob.as_slice())
            .or_insert_with(|| {
                merged.push(MergedCa {
                    ca_key_blob: &section.ca_key_blob,
                    serials: Vec::new(),
                    key_ids: Vec::new(),
                });
                merged.len() - 1
            });
        let Some(ca) = merged.get_mut(slot) else {
            continue;
        };
        ca.serials
            .extend(section.serials.iter().copied().filter(|&s| s != 0));
        ca.key_ids.extend(
            section
                .key_ids
                .iter()
                .map(String::as_str)
                .filter(|id| !id.contains('\0') && id.len() <= MAX_ITEM_BYTES),
        );
    }
    for ca in &mut merged {
        ca.serials.sort_unstable();
        ca.serials.dedup();
        ca.key_ids.sort_unstable();
        ca.key_ids.dedup();
    }
    merged.retain(|ca| !ca.serials.is_empty() || !ca.key_ids.is_empty());
    merged
}

/// Writes one CA's certificate section(s): serial subsections, then key ID
/// subsections. The section is split (its CA header repeated) once it
/// reaches `soft_limit` bytes.
fn encode_cert_section(out: &mut Vec<u8>, ca: &MergedCa<'_>, soft_limit: usize) {
    let mut header = Vec::with_capacity(ca.ca_key_blob.len() + 8);
    put_string(&mut header, ca.ca_key_blob);
    put_string(&mut header, b""); // reserved
    let mut w = CertSectionWriter {
        out,
        header,
        body: Vec::new(),
        soft_limit,
    };

    let runs = runs_of(&ca.serials);
    let mut sub = Vec::new();
    for piece in plan_serials(&runs) {
        match piece {
            Piece::List { first, end } => {
                for run in runs.get(first..end).unwrap_or_default() {
                    for serial in run.lo..=run.hi {
                        if sub.len() + 8 > soft_limit && !sub.is_empty() {
                            w.subsection(CERT_SERIAL_LIST, &sub);
                            sub.clear();
                        }
                        put_u64(&mut sub, serial);
                    }
                }
                w.subsection(CERT_SERIAL_LIST, &sub);
                sub.clear();
            }
            Piece::Range(i) => {
                if let Some(run) = runs.get(i) {
                    put_u64(&mut sub, run.lo);
                    put_u64(&mut sub, run.hi);
                    w.subsection(CERT_SERIAL_RANGE, &sub);
                    sub.clear();
                }
            }
            Piece::Bitmap { first, end } => {
                let runs = runs.get(first..end).unwrap_or_default();
                let (Some(head), Some(tail)) = (runs.first(), runs.last()) else {
                    continue;
                };
                put_u64(&mut sub, head.lo);
                put_string(&mut sub, &bitmap_mpint(head.lo, tail.hi, runs));
                w.subsection(CERT_SERIAL_BITMAP, &sub);
                sub.clear();
            }
        }
    }

    for id in &ca.key_ids {
        if sub.len() + 4 + id.len() > soft_limit && !sub.is_empty() {
            w.subsection(CERT_KEY_ID, &sub);
            sub.clear();
        }
        put_string(&mut sub, id.as_bytes());
    }
    if !sub.is_empty() {
        w.subsection(CERT_KEY_ID, &sub);
    }
    w.flush();
}

/// The mpint bytes (big-endian, minimal, non-negative) of a bitmap whose bit
/// N stands for serial `offset + N`, for runs within `offset..=last`.
fn bitmap_mpint(offset: u64, last: u64, runs: &[Run]) -> Vec<u8> {
    // The top bit (serial `last`) is set, so the minimal mpint has
    // span/8 + 1 bytes: a leading zero byte exactly when span % 8 == 0.
    let span = last - offset + 1;
    let len = (span / 8 + 1) as usize;
    let mut bytes = vec![0u8; len];
    for run in runs {
        for serial in run.lo..=run.hi {
            let bit = serial - offset;
            if let Some(byte) = bytes.get_mut(len - 1 - (bit / 8) as usize) {
                *byte |= 1 << (bit % 8);
            }
        }
    }
    bytes
}

/// Accumulates certificate subsections and writes them as one or more
/// certificate sections, each starting with the CA header.
struct CertSectionWriter<'o> {
    out: &'o mut Vec<u8>,
    header: Vec<u8>,
    body: Vec<u8>,
    soft_limit: usize,
}

impl CertSectionWriter<'_> {
    fn subsection(&mut self, section_type: u8, data: &[u8]) {
        if !self.body.is_empty() && self.body.len() + 5 + data.len() > self.soft_limit {
            self.flush();
        }
        self.body.push(section_type);
        put_string(&mut self.body, data);
    }

    fn flush(&mut self) {
        if self.body.is_empty() {
            return;
        }
        self.out.push(SECTION_CERTIFICATES);
        put_len(self.out, self.header.len() + self.body.len());
        self.out.extend_from_slice(&self.header);
        self.out.extend_from_slice(&self.body);
        self.body.clear();
    }
}

/// Writes `items` as SSH strings in sections of type `section_type`,
/// starting a new section once one reaches `soft_limit` bytes.
fn put_string_sections(out: &mut Vec<u8>, section_type: u8, items: &[&[u8]], soft_limit: usize) {
    let mut body = Vec::new();
    for item in items {
        if !body.is_empty() && body.len() + 4 + item.len() > soft_limit {
            out.push(section_type);
            put_string(out, &body);
            body.clear();
        }
        put_string(&mut body, item);
    }
    if !body.is_empty() {
        out.push(section_type);
        put_string(out, &body);
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Items are capped at MAX_ITEM_BYTES and sections split at the soft
    // limit, so every length here is a few MiB at most.
    debug_assert!(u32::try_from(len).is_ok());
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

// ---------------------------------------------------------------------------
// Choosing serial encodings
// ---------------------------------------------------------------------------

/// Consecutive revoked serials `lo..=hi` (`lo >= 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    lo: u64,
    hi: u64,
}

/// Runs of consecutive serials in a sorted, deduplicated, zero-free list.
fn runs_of(sorted: &[u64]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &s in sorted {
        match runs.last_mut() {
            Some(run) if run.hi.checked_add(1) == Some(s) => run.hi = s,
            _ => runs.push(Run { lo: s, hi: s }),
        }
    }
    runs
}

/// One serial subsection covering runs by index (`end` exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    List { first: usize, end: usize },
    Range(usize),
    Bitmap { first: usize, end: usize },
}

/// Byte costs, including the subsection's type byte and length field.
const LIST_HEADER_COST: u64 = 1 + 4;
const LIST_ENTRY_COST: u64 = 8;
const RANGE_COST: u64 = 1 + 4 + 16;
/// Type, length, offset and the mpint's length; the mpint itself is
/// `span / 8 + 1` bytes.
const BITMAP_HEADER_COST: u64 = 1 + 4 + 8 + 4;

/// Picks the cheapest way (in bytes) to write `runs` as serial subsections.
///
/// `best[j]` is the cheapest encoding of the first `j` runs. Run `j-1` ends
/// either a range (alone), a list (extending the cheapest open list or
/// starting one), or a bitmap starting at some earlier run `i` whose span
/// fits in [`MAX_BITMAP_BITS`]. A bitmap from run `i` costs
/// `best[i] + header + (hi - lo_i + 1) / 8 + 1`; up to the rounding, that is
/// minimised by the smallest `8 * best[i] - lo_i` among the runs still in
/// reach, kept in a monotonic queue. The whole plan is O(runs).
fn plan_serials(runs: &[Run]) -> Vec<Piece> {
    let n = runs.len();
    let mut best = vec![0u64; n + 1];
    let mut choice = vec![Piece::Range(0); n + 1];
    // Cheapest encoding of the runs so far that ends in an open list.
    let mut list_cost = u64::MAX;
    let mut list_first = 0usize;
    // Bitmap start candidates (run index, 8 * best[i] - lo_i), keys ascending.
    let mut starts: VecDeque<(usize, i128)> = VecDeque::new();

    for (j, run) in runs.iter().enumerate() {
        let before = best.get(j).copied().unwrap_or(0);
        let contig = run.hi - run.lo + 1;

        let mut cost = before.saturating_add(RANGE_COST);
        let mut pick = Piece::Range(j);

        let new_list = before.saturating_add(LIST_HEADER_COST);
        if new_list <= list_cost {
            list_cost = new_list;
            list_first = j;
        }
        list_cost = list_cost.saturating_add(contig.saturating_mul(LIST_ENTRY_COST));
        if list_cost < cost {
            cost = list_cost;
            pick = Piece::List {
                first: list_first,
                end: j + 1,
            };
        }

        let key = 8 * i128::from(before) - i128::from(run.lo);
        while starts.back().is_some_and(|&(_, k)| k >= key) {
            starts.pop_back();
        }
        starts.push_back((j, key));
        while let Some(&(i, _)) = starts.front() {
            let lo = runs.get(i).map_or(run.lo, |r| r.lo);
            if run.hi - lo < MAX_BITMAP_BITS {
                break;
            }
            starts.pop_front();
        }
        if let Some(&(i, _)) = starts.front() {
            let lo = runs.get(i).map_or(run.lo, |r| r.lo);
            let span = run.hi - lo + 1;
            let bitmap = best
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_add(BITMAP_HEADER_COST + span / 8 + 1);
            if bitmap < cost {
                cost = bitmap;
                pick = Piece::Bitmap {
                    first: i,
                    end: j + 1,
                };
            }
        }

        if let Some(slot) = best.get_mut(j + 1) {
            *slot = cost;
        }
        if let Some(slot) = choice.get_mut(j + 1) {
            *slot = pick;
        }
    }

    let mut pieces = Vec::new();
    let mut j = n;
    while j > 0 {
        let piece = choice.get(j).copied().unwrap_or(Piece::Range(j - 1));
        pieces.push(piece);
        j = match piece {
            Piece::Range(i) => i,
            Piece::List { first, .. } | Piece::Bitmap { first, .. } => first,
        };
    }
    pieces.reverse();
    pieces
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses a KRL strictly: every byte must belong to a known section, serial
/// 0, backwards ranges, oversized or negative bitmaps and signature sections
/// are refused, and serial expansion is capped at [`MAX_EXPANDED_SERIALS`].
/// Non-critical extensions are skipped as `PROTOCOL.krl` allows (OpenSSH
/// itself refuses them). Key IDs must be UTF-8 without NUL bytes.
pub fn parse(bytes: &[u8]) -> Result<Krl, KrlError> {
    parse_with_stats(bytes).map(|(krl, _)| krl)
}

/// Reads only the header: `(krl_version, generated_date)`. The comment and
/// other header fields are checked for truncation, the sections are not.
pub fn parse_header(bytes: &[u8]) -> Result<(u64, u64), KrlError> {
    let mut r = Reader::new(bytes);
    let header = read_header(&mut r)?;
    Ok((header.krl_version, header.generated_date))
}

/// Parses a KRL like [`parse`] and counts its sections by kind (for
/// benchmarks, tests and diagnostics).
pub fn stats(bytes: &[u8]) -> Result<KrlStats, KrlError> {
    parse_with_stats(bytes).map(|(_, stats)| stats)
}

impl Krl {
    /// The number of revoked serials, over all CAs.
    pub fn serial_count(&self) -> usize {
        self.certs.iter().map(|c| c.serials.len()).sum()
    }

    /// Whether certificates with `serial` signed by the CA whose wire blob is
    /// `ca_key_blob` are revoked (by that CA's section or an any-CA one).
    /// Serial 0 is never revoked by serial.
    pub fn is_serial_revoked(&self, ca_key_blob: &[u8], serial: u64) -> bool {
        serial != 0
            && self
                .sections_for(ca_key_blob)
                .any(|c| c.serials.binary_search(&serial).is_ok())
    }

    /// Whether certificates with `key_id` signed by the CA `ca_key_blob` are
    /// revoked (by that CA's section or an any-CA one).
    pub fn is_key_id_revoked(&self, ca_key_blob: &[u8], key_id: &str) -> bool {
        self.sections_for(ca_key_blob).any(|c| {
            c.key_ids
                .binary_search_by(|k| k.as_str().cmp(key_id))
                .is_ok()
        })
    }

    /// Whether a certificate is revoked by its serial or key ID, as sshd
    /// decides for certificate revocations (explicit keys and fingerprints
    /// of the certified key are not checked here).
    pub fn is_cert_revoked(&self, ca_key_blob: &[u8], serial: u64, key_id: &str) -> bool {
        self.is_serial_revoked(ca_key_blob, serial) || self.is_key_id_revoked(ca_key_blob, key_id)
    }

    /// Whether `other` revokes everything this KRL revokes. A KRL that
    /// leaves out entries another one holds (one built after some of its
    /// revocations expired) is within it; a KRL of another CA is not.
    pub fn is_within(&self, other: &Krl) -> bool {
        self.certs.iter().all(|c| {
            c.serials
                .iter()
                .all(|&s| other.is_serial_revoked(&c.ca_key_blob, s))
                && c.key_ids
                    .iter()
                    .all(|k| other.is_key_id_revoked(&c.ca_key_blob, k))
        }) && self
            .explicit_keys
            .iter()
            .all(|k| other.explicit_keys.contains(k))
            && self
                .sha256_fingerprints
                .iter()
                .all(|f| other.sha256_fingerprints.contains(f))
            && self
                .sha1_fingerprints
                .iter()
                .all(|f| other.sha1_fingerprints.contains(f))
    }

    fn sections_for<'s>(&'s self, ca_key_blob: &'s [u8]) -> impl Iterator<Item = &'s CertSection> {
        self.certs
            .iter()
            .filter(move |c| c.ca_key_blob.is_empty() || c.ca_key_blob == ca_key_blob)
    }
}

struct Header {
    krl_version: u64,
    generated_date: u64,
    flags: u64,
    comment: String,
}

fn read_header(r: &mut Reader<'_>) -> Result<Header, KrlError> {
    if r.take(KRL_MAGIC.len(), "magic").ok() != Some(KRL_MAGIC.as_slice()) {
        return Err(KrlError::BadMagic);
    }
    let version = r.u32("format version")?;
    if version != KRL_FORMAT_VERSION {
        return Err(KrlError::UnsupportedVersion(version));
    }
    let krl_version = r.u64("krl_version")?;
    let generated_date = r.u64("generated_date")?;
    let flags = r.u64("flags")?;
    r.string("reserved header field")?;
    let (offset, comment) = r.string("comment")?;
    if comment.contains(&0) {
        return Err(KrlError::EmbeddedNul {
            what: "comment",
            offset,
        });
    }
    Ok(Header {
        krl_version,
        generated_date,
        flags,
        comment: String::from_utf8_lossy(comment).into_owned(),
    })
}

/// Revocations collected while parsing, before normalisation.
struct Collected<'a> {
    cas: Vec<(&'a [u8], Vec<u64>, Vec<String>)>,
    by_ca: HashMap<&'a [u8], usize>,
    serial_budget: u64,
    explicit_keys: Vec<Vec<u8>>,
    sha256: Vec<[u8; 32]>,
    sha1: Vec<[u8; 20]>,
    stats: KrlStats,
}

impl<'a> Collected<'a> {
    fn ca_slot(&mut self, ca: &'a [u8]) -> usize {
        let cas = &mut self.cas;
        *self.by_ca.entry(ca).or_insert_with(|| {
            cas.push((ca, Vec::new(), Vec::new()));
            cas.len() - 1
        })
    }

    fn spend(&mut self, serials: u64, offset: usize) -> Result<(), KrlError> {
        if serials > self.serial_budget {
            return Err(KrlError::TooManySerials {
                offset,
                limit: MAX_EXPANDED_SERIALS,
            });
        }
        self.serial_budget -= serials;
        Ok(())
    }

    fn serials(&mut self, slot: usize) -> Option<&mut Vec<u64>> {
        self.cas.get_mut(slot).map(|(_, serials, _)| serials)
    }

    fn key_ids(&mut self, slot: usize) -> Option<&mut Vec<String>> {
        self.cas.get_mut(slot).map(|(_, _, ids)| ids)
    }
}

fn parse_with_stats(bytes: &[u8]) -> Result<(Krl, KrlStats), KrlError> {
    let mut r = Reader::new(bytes);
    let header = read_header(&mut r)?;
    let mut c = Collected {
        cas: Vec::new(),
        by_ca: HashMap::new(),
        serial_budget: MAX_EXPANDED_SERIALS,
        explicit_keys: Vec::new(),
        sha256: Vec::new(),
        sha1: Vec::new(),
        stats: KrlStats::default(),
    };

    while !r.is_empty() {
        let offset = r.offset();
        let section_type = r.u8("section type")?;
        match section_type {
            SECTION_SIGNATURE => return Err(KrlError::SignatureUnsupported { offset }),
            SECTION_CERTIFICATES
            | SECTION_EXPLICIT_KEY
            | SECTION_FINGERPRINT_SHA1
            | SECTION_FINGERPRINT_SHA256
            | SECTION_EXTENSION => {}
            _ => {
                return Err(KrlError::UnknownSection {
                    section_type,
                    offset,
                })
            }
        }
        let mut s = r.sub("section")?;
        match section_type {
            SECTION_CERTIFICATES => {
                c.stats.cert_sections += 1;
                read_cert_section(&mut s, &mut c)?;
            }
            SECTION_EXPLICIT_KEY => {
                c.stats.explicit_key_sections += 1;
                while !s.is_empty() {
                    let (_, key) = s.string("explicit key")?;
                    c.explicit_keys.push(key.to_vec());
                }
            }
            SECTION_FINGERPRINT_SHA1 => {
                c.stats.sha1_sections += 1;
                while !s.is_empty() {
                    c.sha1.push(s.hash("SHA-1")?);
                }
            }
            SECTION_FINGERPRINT_SHA256 => {
                c.stats.sha256_sections += 1;
                while !s.is_empty() {
                    c.sha256.push(s.hash("SHA-256")?);
                }
            }
            _ => {
                c.stats.extensions += 1;
                read_extension(&mut s, offset)?;
            }
        }
        s.finish("section")?;
    }

    let certs = c
        .cas
        .into_iter()
        .filter(|(_, serials, ids)| !serials.is_empty() || !ids.is_empty())
        .map(|(ca, mut serials, mut key_ids)| {
            serials.sort_unstable();
            serials.dedup();
            key_ids.sort_unstable();
            key_ids.dedup();
            CertSection {
                ca_key_blob: ca.to_vec(),
                serials,
                key_ids,
            }
        })
        .collect();
    let mut explicit_keys = c.explicit_keys;
    explicit_keys.sort_unstable();
    explicit_keys.dedup();
    let mut sha256_fingerprints = c.sha256;
    sha256_fingerprints.sort_unstable();
    sha256_fingerprints.dedup();
    let mut sha1_fingerprints = c.sha1;
    sha1_fingerprints.sort_unstable();
    sha1_fingerprints.dedup();

    let krl = Krl {
        krl_version: header.krl_version,
        generated_date: header.generated_date,
        flags: header.flags,
        comment: header.comment,
        certs,
        explicit_keys,
        sha256_fingerprints,
        sha1_fingerprints,
    };
    Ok((krl, c.stats))
}

fn read_cert_section<'a>(s: &mut Reader<'a>, c: &mut Collected<'a>) -> Result<(), KrlError> {
    let (ca_offset, ca) = s.string("CA key")?;
    s.string("reserved certificate section field")?;
    if !ca.is_empty() {
        ssh_key::PublicKey::from_bytes(ca).map_err(|e| KrlError::InvalidCaKey {
            offset: ca_offset,
            reason: e.to_string(),
        })?;
    }
    let slot = c.ca_slot(ca);

    while !s.is_empty() {
        let offset = s.offset();
        let section_type = s.u8("certificate subsection type")?;
        if !matches!(
            section_type,
            CERT_SERIAL_LIST
                | CERT_SERIAL_RANGE
                | CERT_SERIAL_BITMAP
                | CERT_KEY_ID
                | CERT_EXTENSION
        ) {
            return Err(KrlError::UnknownCertSection {
                section_type,
                offset,
            });
        }
        let mut sub = s.sub("certificate subsection")?;
        match section_type {
            CERT_SERIAL_LIST => {
                c.stats.serial_lists += 1;
                while !sub.is_empty() {
                    let at = sub.offset();
                    let serial = sub.u64("listed serial")?;
                    if serial == 0 {
                        return Err(KrlError::ZeroSerial { offset: at });
                    }
                    c.spend(1, offset)?;
                    if let Some(serials) = c.serials(slot) {
                        serials.push(serial);
                    }
                }
            }
            CERT_SERIAL_RANGE => {
                c.stats.serial_ranges += 1;
                let lo = sub.u64("range start")?;
                let hi = sub.u64("range end")?;
                if lo == 0 {
                    return Err(KrlError::ZeroSerial { offset });
                }
                if lo > hi {
                    return Err(KrlError::BackwardsRange { offset, lo, hi });
                }
                // lo >= 1, so this cannot overflow.
                c.spend(hi - lo + 1, offset)?;
                if let Some(serials) = c.serials(slot) {
                    serials.extend(lo..=hi);
                }
            }
            CERT_SERIAL_BITMAP => {
                c.stats.serial_bitmaps += 1;
                let base = sub.u64("bitmap offset")?;
                let (mpint_offset, bits) = sub.string("bitmap")?;
                read_bitmap(c, slot, base, bits, mpint_offset)?;
            }
            CERT_KEY_ID => {
                c.stats.key_id_lists += 1;
                while !sub.is_empty() {
                    let (at, id) = sub.string("key ID")?;
                    if id.contains(&0) {
                        return Err(KrlError::EmbeddedNul {
                            what: "key ID",
                            offset: at,
                        });
                    }
                    let id = std::str::from_utf8(id).map_err(|_| KrlError::NotUtf8 {
                        what: "key ID",
                        offset: at,
                    })?;
                    if let Some(ids) = c.key_ids(slot) {
                        ids.push(id.to_string());
                    }
                }
            }
            _ => {
                c.stats.extensions += 1;
                read_extension(&mut sub, offset)?;
            }
        }
        sub.finish("certificate subsection")?;
    }
    Ok(())
}

/// Expands a bitmap mpint: bit N set revokes serial `base + N`. Mirrors
/// OpenSSH's mpint rules (non-negative, at most 2048 bytes plus a leading
/// zero, leading zeros allowed).
fn read_bitmap(
    c: &mut Collected<'_>,
    slot: usize,
    base: u64,
    bits: &[u8],
    offset: usize,
) -> Result<(), KrlError> {
    if bits.first().is_some_and(|&b| b & 0x80 != 0) {
        return Err(KrlError::NegativeBitmap { offset });
    }
    if bits.len() > MAX_BITMAP_MPINT_BYTES
        || (bits.len() == MAX_BITMAP_MPINT_BYTES && bits.first() != Some(&0))
    {
        return Err(KrlError::BitmapTooLarge {
            offset,
            bytes: bits.len(),
        });
    }
    let set: u64 = bits.iter().map(|b| u64::from(b.count_ones())).sum();
    c.spend(set, offset)?;
    let mut revoked = Vec::with_capacity(set as usize);
    for (k, &byte) in bits.iter().rev().enumerate() {
        for bit in 0..8u64 {
            if byte & (1 << bit) == 0 {
                continue;
            }
            let index = k as u64 * 8 + bit;
            let serial = base
                .checked_add(index)
                .ok_or(KrlError::BitmapOverflow { offset })?;
            if serial == 0 {
                return Err(KrlError::ZeroSerial { offset });
            }
            revoked.push(serial);
        }
    }
    if let Some(serials) = c.serials(slot) {
        serials.extend(revoked);
    }
    Ok(())
}

/// Reads an extension body (`string name, bool critical, string contents`);
/// refuses critical ones.
fn read_extension(s: &mut Reader<'_>, offset: usize) -> Result<(), KrlError> {
    let (_, name) = s.string("extension name")?;
    let critical = s.u8("extension critical flag")? != 0;
    s.string("extension contents")?;
    if critical {
        let shown = &name[..name.len().min(64)];
        return Err(KrlError::CriticalExtension {
            name: String::from_utf8_lossy(shown).into_owned(),
            offset,
        });
    }
    Ok(())
}

/// A cursor over SSH wire data that knows its absolute offset in the KRL.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            base: 0,
        }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], KrlError> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.data.get(self.pos..end))
            .ok_or(KrlError::Truncated {
                offset: self.offset(),
                what,
                needed: n,
                available: self.remaining(),
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], KrlError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, KrlError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, KrlError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, KrlError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// An SSH string: its absolute offset (of the contents) and contents.
    fn string(&mut self, what: &'static str) -> Result<(usize, &'a [u8]), KrlError> {
        let len = self.u32(what)? as usize;
        let start = self.offset();
        Ok((start, self.take(len, what)?))
    }

    /// An SSH string read as a nested reader.
    fn sub(&mut self, what: &'static str) -> Result<Reader<'a>, KrlError> {
        let (base, data) = self.string(what)?;
        Ok(Reader { data, pos: 0, base })
    }

    /// A fingerprint string of exactly `N` bytes.
    fn hash<const N: usize>(&mut self, kind: &'static str) -> Result<[u8; N], KrlError> {
        let (offset, h) = self.string("fingerprint")?;
        let mut out = [0u8; N];
        if h.len() != N {
            return Err(KrlError::BadHashLength {
                kind,
                offset,
                expected: N,
                got: h.len(),
            });
        }
        out.copy_from_slice(h);
        Ok(out)
    }

    /// Fails if anything is left unread.
    fn finish(&self, what: &'static str) -> Result<(), KrlError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(KrlError::TrailingData {
                what,
                offset: self.offset(),
                extra: self.remaining(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// A syntactically valid ssh-ed25519 public key blob.
    fn ca_blob(seed: u8) -> Vec<u8> {
        let mut b = Vec::new();
        put_string(&mut b, b"ssh-ed25519");
        put_string(&mut b, &[seed; 32]);
        b
    }

    fn spec_with(certs: Vec<CertSection>) -> KrlSpec {
        KrlSpec {
            krl_version: 7,
            generated_date: 1_750_000_000,
            comment: "mayfly test".into(),
            certs,
            ..KrlSpec::default()
        }
    }

    fn serial_section(serials: Vec<u64>) -> CertSection {
        CertSection {
            ca_key_blob: ca_blob(1),
            serials,
            key_ids: vec![],
        }
    }

    #[test]
    fn a_krl_leaving_out_entries_is_within_and_one_revoking_more_is_not() {
        let krl = |certs: Vec<CertSection>| parse(&encode(&spec_with(certs))).unwrap();
        let section = |seed: u8, serials: Vec<u64>, key_ids: Vec<&str>| CertSection {
            ca_key_blob: ca_blob(seed),
            serials,
            key_ids: key_ids.into_iter().map(str::to_string).collect(),
        };
        let full = krl(vec![section(1, vec![3, 4, 9], vec!["mayfly:r:i:s:5"])]);
        let pruned = krl(vec![section(1, vec![4], vec![])]);
        assert!(pruned.is_within(&full));
        assert!(full.is_within(&full));
        assert!(krl(vec![]).is_within(&full));
        assert!(!full.is_within(&pruned));
        // The same serial under another CA key, or a key id the other
        // does not name, is more.
        assert!(!krl(vec![section(2, vec![4], vec![])]).is_within(&full));
        assert!(!krl(vec![section(1, vec![], vec!["mayfly:r:i:s:6"])]).is_within(&full));
        // An any-CA section covers every CA's entries, not the reverse.
        let any = krl(vec![section(0, vec![], vec![])]);
        let any_ca = krl(vec![CertSection {
            ca_key_blob: Vec::new(),
            serials: vec![4],
            key_ids: vec![],
        }]);
        assert!(pruned.is_within(&any_ca));
        assert!(!any_ca.is_within(&pruned));
        assert!(krl(vec![]).is_within(&any));
    }

    /// What `parse(encode(spec))` must give.
    fn normalized(spec: &KrlSpec) -> Krl {
        let certs = merge_cert_sections(&spec.certs)
            .into_iter()
            .map(|ca| CertSection {
                ca_key_blob: ca.ca_key_blob.to_vec(),
                serials: ca.serials,
                key_ids: ca.key_ids.into_iter().map(str::to_string).collect(),
            })
            .collect();
        let mut explicit_keys = spec.explicit_keys.clone();
        explicit_keys.sort();
        explicit_keys.dedup();
        let mut sha256_fingerprints = spec.sha256_fingerprints.clone();
        sha256_fingerprints.sort();
        sha256_fingerprints.dedup();
        Krl {
            krl_version: spec.krl_version,
            generated_date: spec.generated_date,
            flags: 0,
            comment: sanitize_comment(&spec.comment),
            certs,
            explicit_keys,
            sha256_fingerprints,
            sha1_fingerprints: vec![],
        }
    }

    /// A KRL header followed by `sections`.
    fn krl_with(sections: &[u8]) -> Vec<u8> {
        let mut out = encode_empty(1, 2, "");
        out.extend_from_slice(sections);
        out
    }

    fn section(section_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![section_type];
        put_string(&mut out, body);
        out
    }

    /// A certificate section for `ca_blob(1)` with the given subsection.
    fn cert_section_with(sub_type: u8, sub: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        put_string(&mut body, &ca_blob(1));
        put_string(&mut body, b"");
        body.extend(section(sub_type, sub));
        section(SECTION_CERTIFICATES, &body)
    }

    fn u64s(values: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            put_u64(&mut out, *v);
        }
        out
    }

    #[test]
    fn empty_krl_is_the_bare_header() {
        let mut expected = Vec::new();
        expected.extend_from_slice(b"SSHKRL\n\0");
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&5u64.to_be_bytes());
        expected.extend_from_slice(&6u64.to_be_bytes());
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.extend_from_slice(&0u32.to_be_bytes());
        expected.extend_from_slice(&6u32.to_be_bytes());
        expected.extend_from_slice(b"mayfly");
        let krl = encode_empty(5, 6, "mayfly");
        assert_eq!(krl, expected);
        assert_eq!(parse_header(&krl).unwrap(), (5, 6));
        let parsed = parse(&krl).unwrap();
        assert_eq!(parsed.comment, "mayfly");
        assert!(parsed.certs.is_empty());
        assert_eq!(parsed.serial_count(), 0);
    }

    #[test]
    fn everything_round_trips() {
        let spec = KrlSpec {
            krl_version: 3,
            generated_date: 1_700_000_000,
            comment: "all kinds".into(),
            certs: vec![
                CertSection {
                    ca_key_blob: ca_blob(1),
                    serials: vec![30, 10, 20, 21, 22, 23, 24, 10, 0],
                    key_ids: vec!["b".into(), "a".into(), "a".into()],
                },
                CertSection {
                    ca_key_blob: vec![],
                    serials: vec![],
                    key_ids: vec!["any-ca".into()],
                },
                CertSection {
                    ca_key_blob: ca_blob(1),
                    serials: vec![5],
                    key_ids: vec![],
                },
                CertSection {
                    ca_key_blob: ca_blob(2),
                    serials: vec![0],
                    key_ids: vec![],
                },
            ],
            explicit_keys: vec![ca_blob(9), ca_blob(8), ca_blob(9)],
            sha256_fingerprints: vec![[3; 32], [1; 32]],
        };
        let parsed = parse(&encode(&spec)).unwrap();
        assert_eq!(parsed, normalized(&spec));
        assert_eq!(parsed.certs.len(), 2, "same CA merged, empty CA dropped");
        assert_eq!(parsed.certs[0].serials, vec![5, 10, 20, 21, 22, 23, 24, 30]);
        assert_eq!(parsed.certs[0].key_ids, vec!["a", "b"]);
        assert!(parsed.is_serial_revoked(&ca_blob(1), 22));
        assert!(!parsed.is_serial_revoked(&ca_blob(1), 25));
        assert!(!parsed.is_serial_revoked(&ca_blob(2), 22));
        assert!(parsed.is_key_id_revoked(&ca_blob(2), "any-ca"));
        assert!(parsed.is_key_id_revoked(&ca_blob(1), "a"));
        assert!(!parsed.is_key_id_revoked(&ca_blob(2), "a"));
        assert!(parsed.is_cert_revoked(&ca_blob(1), 1, "b"));
        assert!(!parsed.is_cert_revoked(&ca_blob(1), 0, "c"));
        assert_eq!(parsed.explicit_keys, vec![ca_blob(8), ca_blob(9)]);
        assert_eq!(parsed.sha256_fingerprints, vec![[1; 32], [3; 32]]);
    }

    #[test]
    fn consecutive_large_serials_become_one_range() {
        let base = 1_750_000_000u64 << 24;
        let spec = spec_with(vec![serial_section((base..base + 100_000).collect())]);
        let krl = encode(&spec);
        let st = stats(&krl).unwrap();
        assert_eq!(st.serial_ranges, 1);
        assert_eq!(st.serial_lists + st.serial_bitmaps, 0);
        assert!(krl.len() < 150, "{} bytes", krl.len());
        assert_eq!(parse(&krl).unwrap().serial_count(), 100_000);
    }

    #[test]
    fn dense_serials_use_bitmaps_no_wider_than_openssh_reads() {
        let base = 3u64 << 54;
        // Every other serial over 200,000: bitmaps must be split at 16384 bits.
        let serials: Vec<u64> = (0..100_000).map(|i| base + 2 * i).collect();
        let krl = encode(&spec_with(vec![serial_section(serials.clone())]));
        let st = stats(&krl).unwrap();
        assert!(st.serial_bitmaps >= 200_000 / 16384, "{st:?}");
        assert_eq!(st.serial_lists + st.serial_ranges, 0, "{st:?}");
        // One bit per serial plus a gap bit, plus small headers.
        assert!(krl.len() < 26_000, "{} bytes", krl.len());
        assert_eq!(parse(&krl).unwrap().certs[0].serials, serials);
    }

    #[test]
    fn sparse_serials_use_a_list() {
        let serials: Vec<u64> = (1..=100u64).map(|i| i * 1_000_000).collect();
        let krl = encode(&spec_with(vec![serial_section(serials)]));
        let st = stats(&krl).unwrap();
        assert_eq!(
            (st.serial_lists, st.serial_ranges, st.serial_bitmaps),
            (1, 0, 0)
        );
    }

    #[test]
    fn mixed_serials_mix_encodings_and_beat_a_plain_list() {
        let base = 1u64 << 55;
        let mut serials: Vec<u64> = (base..base + 5_000).collect();
        serials.extend((0..300).map(|i| base + 10_000 + 3 * i));
        serials.extend((1..50).map(|i| base + 1_000_000 * i));
        let krl = encode(&spec_with(vec![serial_section(serials.clone())]));
        let st = stats(&krl).unwrap();
        assert!(st.serial_ranges >= 1 && st.serial_bitmaps >= 1 && st.serial_lists >= 1);
        assert!(krl.len() < 8 * serials.len() / 10);
        assert_eq!(parse(&krl).unwrap().certs[0].serials, serials);
    }

    #[test]
    fn serials_at_the_top_of_u64_round_trip() {
        let serials = vec![u64::MAX, u64::MAX - 2, u64::MAX - 3, 1, 2];
        let spec = spec_with(vec![serial_section(serials)]);
        assert_eq!(parse(&encode(&spec)).unwrap(), normalized(&spec));
    }

    #[test]
    fn serial_zero_is_never_written() {
        let krl = encode(&spec_with(vec![serial_section(vec![0])]));
        assert_eq!(krl, encode_empty(7, 1_750_000_000, "mayfly test"));
    }

    #[test]
    fn unusable_items_are_left_out_not_written_broken() {
        let spec = KrlSpec {
            comment: "a\0b".into(),
            certs: vec![CertSection {
                ca_key_blob: vec![],
                serials: vec![],
                key_ids: vec!["ok".into(), "bad\0id".into()],
            }],
            ..KrlSpec::default()
        };
        let parsed = parse(&encode(&spec)).unwrap();
        assert_eq!(parsed.comment, "ab");
        assert_eq!(parsed.certs[0].key_ids, vec!["ok"]);
    }

    #[test]
    fn big_sections_are_split_and_read_back_whole() {
        let base = 1u64 << 50;
        let spec = KrlSpec {
            certs: vec![CertSection {
                ca_key_blob: ca_blob(4),
                serials: (0..3_000).map(|i| base + i * 1_000).collect(),
                key_ids: (0..500)
                    .map(|i| format!("mayfly:role:ci:bot:{i}"))
                    .collect(),
            }],
            explicit_keys: (0..50).map(ca_blob).collect(),
            sha256_fingerprints: (0..50).map(|i| [i; 32]).collect(),
            ..KrlSpec::default()
        };
        let small = encode_with_limit(&spec, 256);
        let st = stats(&small).unwrap();
        assert!(st.cert_sections > 10 && st.serial_lists > 10 && st.key_id_lists > 10);
        assert!(st.explicit_key_sections > 1 && st.sha256_sections > 1);
        assert_eq!(parse(&small).unwrap(), parse(&encode(&spec)).unwrap());
        assert_eq!(parse(&small).unwrap(), normalized(&spec));
    }

    #[test]
    fn bad_magic_and_version_are_refused() {
        assert_eq!(parse(b""), Err(KrlError::BadMagic));
        assert_eq!(parse(b"SSHKRL\n"), Err(KrlError::BadMagic));
        assert_eq!(parse(b"ssh-ed25519 AAAA"), Err(KrlError::BadMagic));
        let mut krl = encode_empty(1, 2, "");
        krl[11] = 2;
        assert_eq!(parse(&krl), Err(KrlError::UnsupportedVersion(2)));
        assert_eq!(parse_header(&krl), Err(KrlError::UnsupportedVersion(2)));
    }

    #[test]
    fn truncation_names_the_offset_and_field() {
        let krl = encode_empty(1, 2, "comment");
        let err = parse(&krl[..20]).unwrap_err();
        assert_eq!(
            err,
            KrlError::Truncated {
                offset: 20,
                what: "generated_date",
                needed: 8,
                available: 0
            }
        );
        assert_eq!(
            err.to_string(),
            "KRL truncated at offset 20: generated_date needs 8 bytes, only 0 left"
        );
        assert!(matches!(
            parse_header(&krl[..krl.len() - 1]),
            Err(KrlError::Truncated {
                what: "comment",
                ..
            })
        ));
        let full = encode(&spec_with(vec![serial_section(vec![5, 100, 1 << 40])]));
        for cut in 1..=4 {
            assert!(parse(&full[..full.len() - cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut krl = encode(&spec_with(vec![serial_section(vec![5])]));
        krl.extend_from_slice(b"hello");
        assert!(matches!(
            parse(&krl),
            Err(KrlError::UnknownSection {
                section_type: b'h',
                ..
            })
        ));
        // Extra bytes inside a range subsection.
        let krl = krl_with(&cert_section_with(CERT_SERIAL_RANGE, &u64s(&[5, 9, 1])));
        assert!(matches!(
            parse(&krl),
            Err(KrlError::TrailingData { extra: 8, .. })
        ));
        // A partial serial in a list.
        let mut list = u64s(&[5]);
        list.push(1);
        let krl = krl_with(&cert_section_with(CERT_SERIAL_LIST, &list));
        assert!(matches!(
            parse(&krl),
            Err(KrlError::Truncated {
                what: "listed serial",
                ..
            })
        ));
    }

    #[test]
    fn serial_zero_and_backwards_ranges_are_refused() {
        for (sub_type, data) in [
            (CERT_SERIAL_LIST, u64s(&[3, 0])),
            (CERT_SERIAL_RANGE, u64s(&[0, 4])),
        ] {
            let krl = krl_with(&cert_section_with(sub_type, &data));
            assert!(matches!(parse(&krl), Err(KrlError::ZeroSerial { .. })));
        }
        let mut bitmap = u64s(&[0]);
        put_string(&mut bitmap, &[0x01]);
        let krl = krl_with(&cert_section_with(CERT_SERIAL_BITMAP, &bitmap));
        assert!(matches!(parse(&krl), Err(KrlError::ZeroSerial { .. })));

        let krl = krl_with(&cert_section_with(CERT_SERIAL_RANGE, &u64s(&[9, 4])));
        assert!(matches!(
            parse(&krl),
            Err(KrlError::BackwardsRange { lo: 9, hi: 4, .. })
        ));
    }

    #[test]
    fn bitmaps_follow_openssh_mpint_rules() {
        let bitmap = |base: u64, bits: &[u8]| {
            let mut data = u64s(&[base]);
            put_string(&mut data, bits);
            krl_with(&cert_section_with(CERT_SERIAL_BITMAP, &data))
        };
        let parsed = parse(&bitmap(100, &[0x00, 0x01, 0x05])).unwrap();
        assert_eq!(parsed.certs[0].serials, vec![100, 102, 108]);
        assert!(matches!(
            parse(&bitmap(100, &[0x80])),
            Err(KrlError::NegativeBitmap { .. })
        ));
        let mut widest = vec![0u8; 2049];
        widest[1] = 0xff;
        assert_eq!(parse(&bitmap(1, &widest)).unwrap().serial_count(), 8);
        widest[0] = 0x01;
        assert!(matches!(
            parse(&bitmap(1, &widest)),
            Err(KrlError::BitmapTooLarge { bytes: 2049, .. })
        ));
        assert!(matches!(
            parse(&bitmap(1, &vec![0u8; 2050])),
            Err(KrlError::BitmapTooLarge { bytes: 2050, .. })
        ));
        assert!(matches!(
            parse(&bitmap(u64::MAX - 2, &[0x08])),
            Err(KrlError::BitmapOverflow { .. })
        ));
        assert_eq!(
            parse(&bitmap(u64::MAX - 2, &[0x04]))
                .unwrap()
                .serial_count(),
            1
        );
    }

    #[test]
    fn serial_expansion_is_capped() {
        let krl = krl_with(&cert_section_with(
            CERT_SERIAL_RANGE,
            &u64s(&[1, MAX_EXPANDED_SERIALS + 1]),
        ));
        assert!(matches!(parse(&krl), Err(KrlError::TooManySerials { .. })));
        let krl = krl_with(&cert_section_with(CERT_SERIAL_RANGE, &u64s(&[1, u64::MAX])));
        assert!(matches!(parse(&krl), Err(KrlError::TooManySerials { .. })));
        // The cap counts across sections too.
        let half = MAX_EXPANDED_SERIALS / 2 + 1;
        let mut sections = cert_section_with(CERT_SERIAL_RANGE, &u64s(&[1, half]));
        sections.extend(cert_section_with(CERT_SERIAL_RANGE, &u64s(&[1, half])));
        assert!(matches!(
            parse(&krl_with(&sections)),
            Err(KrlError::TooManySerials { .. })
        ));
    }

    #[test]
    fn unknown_signed_and_critical_sections_are_refused() {
        let krl = krl_with(&section(6, b""));
        assert_eq!(
            parse(&krl).unwrap_err().to_string(),
            format!("unknown KRL section type 0x06 at offset {}", krl.len() - 5)
        );
        assert!(matches!(
            parse(&krl_with(&cert_section_with(0x24, b""))),
            Err(KrlError::UnknownCertSection {
                section_type: 0x24,
                ..
            })
        ));
        assert!(matches!(
            parse(&krl_with(&section(SECTION_SIGNATURE, &ca_blob(1)))),
            Err(KrlError::SignatureUnsupported { .. })
        ));

        let extension = |critical: u8| {
            let mut body = Vec::new();
            put_string(&mut body, b"test@mayfly");
            body.push(critical);
            put_string(&mut body, b"contents");
            body
        };
        let skipped = krl_with(&section(SECTION_EXTENSION, &extension(0)));
        assert_eq!(stats(&skipped).unwrap().extensions, 1);
        assert!(matches!(
            parse(&krl_with(&section(SECTION_EXTENSION, &extension(1)))),
            Err(KrlError::CriticalExtension { ref name, .. }) if name == "test@mayfly"
        ));
        let in_cert = krl_with(&cert_section_with(CERT_EXTENSION, &extension(0)));
        assert_eq!(stats(&in_cert).unwrap().extensions, 1);
        assert!(matches!(
            parse(&krl_with(&cert_section_with(CERT_EXTENSION, &extension(1)))),
            Err(KrlError::CriticalExtension { .. })
        ));
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut body = Vec::new();
        put_string(&mut body, b"not a key");
        put_string(&mut body, b"");
        assert!(matches!(
            parse(&krl_with(&section(SECTION_CERTIFICATES, &body))),
            Err(KrlError::InvalidCaKey { offset, .. }) if offset == 53
        ));
        let mut hashes = Vec::new();
        put_string(&mut hashes, &[0; 31]);
        assert!(matches!(
            parse(&krl_with(&section(SECTION_FINGERPRINT_SHA256, &hashes))),
            Err(KrlError::BadHashLength {
                expected: 32,
                got: 31,
                ..
            })
        ));
        let mut ids = Vec::new();
        put_string(&mut ids, b"\xff\xfe");
        assert!(matches!(
            parse(&krl_with(&cert_section_with(CERT_KEY_ID, &ids))),
            Err(KrlError::NotUtf8 { what: "key ID", .. })
        ));
        let mut ids = Vec::new();
        put_string(&mut ids, b"a\0b");
        assert!(matches!(
            parse(&krl_with(&cert_section_with(CERT_KEY_ID, &ids))),
            Err(KrlError::EmbeddedNul { what: "key ID", .. })
        ));
    }

    #[test]
    fn sha1_fingerprints_are_read() {
        let mut hashes = Vec::new();
        put_string(&mut hashes, &[7; 20]);
        put_string(&mut hashes, &[2; 20]);
        let parsed = parse(&krl_with(&section(SECTION_FINGERPRINT_SHA1, &hashes))).unwrap();
        assert_eq!(parsed.sha1_fingerprints, vec![[2; 20], [7; 20]]);
    }

    #[test]
    fn plan_picks_the_cheapest_encoding_per_run() {
        let run = |lo, hi| Run { lo, hi };
        assert_eq!(
            plan_serials(&[run(5, 5)]),
            vec![Piece::List { first: 0, end: 1 }]
        );
        assert_eq!(plan_serials(&[run(5, 500)]), vec![Piece::Range(0)]);
        assert_eq!(
            plan_serials(&[run(5, 7), run(9, 12), run(14, 14)]),
            vec![Piece::Bitmap { first: 0, end: 3 }]
        );
        // A run longer than a bitmap may span is never put in one.
        assert_eq!(
            plan_serials(&[run(1, 1), run(3, 3 + MAX_BITMAP_BITS)]),
            vec![Piece::List { first: 0, end: 1 }, Piece::Range(1)]
        );
    }

    fn serial_set() -> impl Strategy<Value = Vec<u64>> {
        let gap = prop_oneof![0u64..4, 0u64..300, 0u64..100_000, any::<u64>()];
        let len = prop_oneof![1u64..4, 1u64..400];
        (
            any::<u64>(),
            prop::collection::vec((gap, len), 0..60),
            prop::collection::vec(any::<u64>(), 0..4),
        )
            .prop_map(|(base, steps, extra)| {
                let mut out = extra;
                out.push(0);
                let mut cur = base;
                for (gap, len) in steps {
                    cur = cur.saturating_add(gap);
                    out.extend((0..len).filter_map(|k| cur.checked_add(k)));
                    cur = cur.saturating_add(len);
                }
                out
            })
    }

    fn any_spec() -> impl Strategy<Value = KrlSpec> {
        let section = (
            prop_oneof![Just(Vec::new()), (1u8..4).prop_map(ca_blob)],
            serial_set(),
            prop::collection::vec("[a-zA-Z0-9:_./@-]{0,24}", 0..5),
        )
            .prop_map(|(ca_key_blob, serials, key_ids)| CertSection {
                ca_key_blob,
                serials,
                key_ids,
            });
        (
            any::<u64>(),
            any::<u64>(),
            "[ -~]{0,40}",
            prop::collection::vec(section, 0..4),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 0..4),
            prop::collection::vec(any::<[u8; 32]>(), 0..4),
        )
            .prop_map(
                |(krl_version, generated_date, comment, certs, explicit_keys, sha256)| KrlSpec {
                    krl_version,
                    generated_date,
                    comment,
                    certs,
                    explicit_keys,
                    sha256_fingerprints: sha256,
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(spec in any_spec()) {
            let krl = encode(&spec);
            prop_assert_eq!(parse(&krl).unwrap(), normalized(&spec));
            prop_assert_eq!(
                parse_header(&krl).unwrap(),
                (spec.krl_version, spec.generated_date)
            );
        }

        #[test]
        fn random_serial_sets_round_trip_and_stay_compact(serials in serial_set()) {
            let spec = spec_with(vec![serial_section(serials.clone())]);
            let krl = encode(&spec);
            let parsed = parse(&krl).unwrap();
            let mut expected: Vec<u64> = serials.into_iter().filter(|&s| s != 0).collect();
            expected.sort_unstable();
            expected.dedup();
            for &s in expected.iter().take(50) {
                prop_assert!(parsed.is_serial_revoked(&ca_blob(1), s));
                prop_assert_eq!(
                    parsed.is_serial_revoked(&ca_blob(1), s.wrapping_add(1)),
                    expected.binary_search(&s.wrapping_add(1)).is_ok() && s != u64::MAX
                );
            }
            prop_assert_eq!(parsed.serial_count(), expected.len());
            prop_assert_eq!(parsed.certs.first().map(|c| c.serials.clone()).unwrap_or_default(), expected.clone());
            // Never worse than one list of all serials (plus the fixed parts).
            let list_only = encode_empty(7, 1_750_000_000, "mayfly test").len()
                + 5 + ca_blob(1).len() + 8 + 5 + 8 * expected.len();
            prop_assert!(krl.len() <= list_only, "{} > {}", krl.len(), list_only);
        }

        #[test]
        fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&tail);
            let _ = parse_header(&tail);
            let mut krl = encode_empty(1, 2, "");
            krl.extend_from_slice(&tail);
            let _ = parse(&krl);
        }

        #[test]
        fn mutated_krls_never_panic(
            spec in any_spec(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut krl = encode(&spec);
            for (at, value) in edits {
                let i = at.index(krl.len());
                krl[i] = value;
            }
            let _ = parse(&krl);
            let _ = parse(&krl[..cut.index(krl.len())]);
        }

        #[test]
        fn truncated_or_extended_krls_are_refused(
            spec in any_spec(),
            cut in 1usize..=4,
            garbage in prop::collection::vec(any::<u8>(), 1..5),
        ) {
            let krl = encode(&spec);
            prop_assert!(parse(&krl[..krl.len() - cut]).is_err());
            let mut longer = krl.clone();
            longer.extend_from_slice(&garbage);
            prop_assert!(parse(&longer).is_err());
        }
    }
}
