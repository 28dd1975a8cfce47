//! The replicas of one CA and what each says about itself.
//!
//! Every `mayfly serve` is a replica with an id of its own
//! ([`ReplicaId`], kept in `data_dir/replica_id`). It writes a
//! [`Heartbeat`] into the store at start, every `heartbeat_interval`, and
//! right after a policy reload: its version, the digest (and git commit) of
//! the policy it enforces, where it listens, and when it was last seen. With
//! SQLite there is one replica per database; with PostgreSQL every replica
//! of the shared database writes its own row, and the rows together are the
//! fleet as the database sees it.
//!
//! [`StatusReport`] turns those rows into the answer of `mayfly status`,
//! `GET /v1/admin/replicas` and the replica gauges of `/metrics` (one
//! function, so the three agree): a replica is *live* if it was seen within
//! [`LIVE_INTERVALS`] of its own heartbeat intervals, and there is *policy
//! drift* when the live replicas do not all enforce the same policy digest.
//! The time is passed in; nothing here reads the clock.
//!
//! Ages compare the reader's clock with the writer's `last_seen`, so they
//! assume the hosts' clocks agree to within a few seconds (NTP); a
//! `last_seen` ahead of the reader counts as age 0.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::time::UnixSecs;

/// A replica is live while its last heartbeat is at most this many of its
/// own heartbeat intervals old; after that it is stale.
pub const LIVE_INTERVALS: u64 = 3;

/// Rows of replicas not seen for this long (seconds) are dropped by the
/// next heartbeat of any replica, so replicas that come and go with
/// throw-away data directories do not pile up.
pub const RETENTION_SECS: u64 = 7 * 24 * 3600;

/// Longest replica id.
const MAX_ID_LEN: usize = 64;

/// Random bytes in a generated replica id (hex-encoded: 32 characters).
const ID_BYTES: usize = 16;

/// Why a replica id could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaIdError {
    /// The text is not a replica id.
    #[error(
        "{0:?} is not a replica id: use 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-', \
         starting with a letter or digit"
    )]
    Invalid(String),
    /// The id file holds something that is not an id.
    #[error("{path}: {source}; delete the file to get a new id, or write a valid one")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<ReplicaIdError>,
    },
    /// The id file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The id of one replica: 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit, so it is safe in a table, a metric
/// label and a log line. Generated ids are 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// Checks `s` as a replica id.
    pub fn parse(s: &str) -> Result<ReplicaId, ReplicaIdError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(ReplicaId(s.to_string()))
        } else {
            Err(ReplicaIdError::Invalid(
                s.chars().take(MAX_ID_LEN + 8).collect(),
            ))
        }
    }

    /// A new random id from `rng`.
    pub fn generate(rng: &mut impl rand_core::RngCore) -> ReplicaId {
        let mut b = [0u8; ID_BYTES];
        rng.fill_bytes(&mut b);
        ReplicaId(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// The id kept in `data_dir/replica_id`, or a new one from `rng`
    /// written there (mode 0600, through a temporary file, never replacing
    /// a file that appeared meanwhile). Returns the id and whether it is new.
    pub fn load_or_create(
        data_dir: &Path,
        rng: &mut impl rand_core::RngCore,
    ) -> Result<(ReplicaId, bool), ReplicaIdError> {
        let path = data_dir.join(crate::config::files::REPLICA_ID);
        let io = |source| ReplicaIdError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok((Self::from_file(&path, &text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let id = ReplicaId::generate(rng);
        let mut tmp = {
            use std::os::unix::fs::PermissionsExt as _;
            tempfile::Builder::new()
                .prefix(".mayfly-replica-id-")
                .permissions(std::fs::Permissions::from_mode(0o600))
                .tempfile_in(data_dir)
                .map_err(io)?
        };
        writeln!(tmp, "{}", id.0).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            // Another process created it first: that one is the id.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).map_err(io)?;
                return Ok((Self::from_file(&path, &text)?, false));
            }
            Err(e) => return Err(io(e.error)),
        }
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok((id, true))
    }

    fn from_file(path: &Path, text: &str) -> Result<ReplicaId, ReplicaIdError> {
        ReplicaId::parse(text.trim()).map_err(|e| ReplicaIdError::BadFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ReplicaId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What one replica last said about itself: one row per replica in the
/// store, replaced by each of its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Which replica.
    pub replica: ReplicaId,
    /// Its mayfly version.
    pub version: String,
    /// Digest of the policy it enforces (`mayfly_policy_info{digest}`).
    pub policy_digest: String,
    /// The git commit of its policy directory, if that is a git checkout.
    pub git_commit: Option<String>,
    /// The address it listens on.
    pub listen: String,
    /// When the replica process started.
    pub started_at: UnixSecs,
    /// When this heartbeat was sent.
    pub last_seen: UnixSecs,
    /// How often it sends one (seconds, at least 1): it is stale after
    /// [`LIVE_INTERVALS`] of these without one.
    pub interval_secs: u64,
}

impl Heartbeat {
    /// Whether `previous`, the row this heartbeat replaced, was written by
    /// another process with the same replica id (a copied data directory):
    /// a different start, seen after this process started.
    pub fn id_shared_with(&self, previous: &Heartbeat) -> bool {
        previous.replica == self.replica
            && previous.started_at != self.started_at
            && previous.last_seen > self.started_at
    }
}

/// One replica as `mayfly status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    /// Its last heartbeat.
    #[serde(flatten)]
    pub beat: Heartbeat,
    /// Seconds since that heartbeat.
    pub age_secs: u64,
    /// Seen within [`LIVE_INTERVALS`] of its heartbeat interval.
    pub live: bool,
}

/// The overall verdict of a [`StatusReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// At least one replica is live and every live replica enforces the
    /// same policy.
    Ok,
    /// Live replicas enforce different policies.
    PolicyDrift,
    /// No replica is live.
    NoLiveReplica,
}

/// The replicas of one store as of `now`: the JSON of `mayfly status
/// --json` and `GET /v1/admin/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// The instant the ages are measured at.
    pub now: UnixSecs,
    /// The verdict.
    pub status: Health,
    /// Live replicas enforce different policy digests.
    pub policy_drift: bool,
    /// The distinct policy digests of the live replicas, sorted.
    pub policy_digests: Vec<String>,
    /// How many replicas are live.
    pub live_replicas: usize,
    /// Every replica the store knows, by id.
    pub replicas: Vec<ReplicaStatus>,
}

impl StatusReport {
    /// The report over the rows `beats` at `now`.
    pub fn new(mut beats: Vec<Heartbeat>, now: UnixSecs) -> StatusReport {
        beats.sort_by(|a, b| a.replica.cmp(&b.replica));
        let replicas: Vec<ReplicaStatus> = beats
            .into_iter()
            .map(|beat| {
                let age_secs = now.since(beat.last_seen);
                let live = age_secs <= LIVE_INTERVALS.saturating_mul(beat.interval_secs.max(1));
                ReplicaStatus {
                    beat,
                    age_secs,
                    live,
                }
            })
            .collect();
        let digests: BTreeSet<&str> = replicas
            .iter()
            .filter(|r| r.live)
            .map(|r| r.beat.policy_digest.as_str())
            .collect();
        let live_replicas = replicas.iter().filter(|r| r.live).count();
        let policy_drift = digests.len() > 1;
        let status = if live_replicas == 0 {
            Health::NoLiveReplica
        } else if policy_drift {
            Health::PolicyDrift
        } else {
            Health::Ok
        };
        StatusReport {
            now,
            status,
            policy_drift,
            policy_digests: digests.into_iter().map(str::to_string).collect(),
            live_replicas,
            replicas,
        }
    }

    /// The `mayfly_policy_drift` gauge: distinct policy digests among the
    /// live replicas minus one (0 without drift or without live replicas).
    pub fn drift_gauge(&self) -> usize {
        self.policy_digests.len().saturating_sub(1)
    }

    /// The live replicas enforcing `digest`.
    pub fn live_on<'a>(&'a self, digest: &'a str) -> impl Iterator<Item = &'a ReplicaStatus> + 'a {
        self.replicas
            .iter()
            .filter(move |r| r.live && r.beat.policy_digest == digest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn beat(id: &str, digest: &str, last_seen: u64) -> Heartbeat {
        Heartbeat {
            replica: ReplicaId::parse(id).unwrap(),
            version: "0.1.0".into(),
            policy_digest: digest.into(),
            git_commit: None,
            listen: "127.0.0.1:8400".into(),
            started_at: UnixSecs(100),
            last_seen: UnixSecs(last_seen),
            interval_secs: 10,
        }
    }

    /// A fixed byte source, so generated ids are predictable in tests.
    struct Counter(u8);
    impl rand_core::RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            rand_core::impls::next_u32_via_fill(self)
        }
        fn next_u64(&mut self) -> u64 {
            rand_core::impls::next_u64_via_fill(self)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.0;
                self.0 = self.0.wrapping_add(1);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[test]
    fn generated_ids_are_32_hex_characters_from_the_rng() {
        let id = ReplicaId::generate(&mut Counter(0xf0));
        assert_eq!(id.as_str(), "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        assert_eq!(ReplicaId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn ids_are_checked() {
        for good in ["a", "ca-1", "ca_2.eu-west", &"x".repeat(64)] {
            assert!(ReplicaId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-ca",
            ".hidden",
            "ca 1",
            "ca\n1",
            "ca\"1",
            "ca{1}",
            "ça",
            &"x".repeat(65),
        ] {
            assert!(ReplicaId::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn a_parsed_id_is_safe_in_labels_tables_and_logs(
            s in prop_oneof![
                "\\PC{0,80}",
                // An id with one character that breaks a label, a table
                // or a log line: arbitrary text almost never is one.
                "[a-z0-9][a-z0-9._-]{0,20}[\"\\\\{}=, \n][a-z0-9._-]{0,20}",
            ]
        ) {
            if let Ok(id) = ReplicaId::parse(&s) {
                prop_assert!(id.as_str().len() <= MAX_ID_LEN);
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_graphic()));
                let special = ['"', '\\', '{', '}', ',', '='];
                prop_assert!(!id.as_str().contains(special), "{}", id);
            }
        }
    }

    #[test]
    fn the_id_file_is_created_once_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let (a, new) = ReplicaId::load_or_create(d.path(), &mut Counter(1)).unwrap();
        assert!(new);
        let path = d.path().join(crate::config::files::REPLICA_ID);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{a}\n"));
        let (b, new) = ReplicaId::load_or_create(d.path(), &mut Counter(99)).unwrap();
        assert!(!new);
        assert_eq!(a, b, "a restart keeps the id");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_operator_may_name_the_replica_and_a_bad_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(crate::config::files::REPLICA_ID);
        std::fs::write(&path, "ca-eu-1\n").unwrap();
        let (id, new) = ReplicaId::load_or_create(d.path(), &mut Counter(0)).unwrap();
        assert_eq!((id.as_str(), new), ("ca-eu-1", false));
        std::fs::write(&path, "two words").unwrap();
        let err = ReplicaId::load_or_create(d.path(), &mut Counter(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replica_id") && err.contains("delete the file"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two words");
    }

    #[test]
    fn live_means_seen_within_three_of_its_own_intervals() {
        let mut slow = beat("slow", "d1", 1_000 - 150);
        slow.interval_secs = 60;
        let r = StatusReport::new(
            vec![
                beat("b", "d1", 1_000 - 30),
                beat("a", "d1", 1_000 - 31),
                slow,
                beat("future", "d1", 1_005),
            ],
            UnixSecs(1_000),
        );
        let got: Vec<(&str, u64, bool)> = r
            .replicas
            .iter()
            .map(|s| (s.beat.replica.as_str(), s.age_secs, s.live))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 31, false),
                ("b", 30, true),
                ("future", 0, true),
                ("slow", 150, true)
            ]
        );
        assert_eq!((r.live_replicas, r.status), (3, Health::Ok));
        assert_eq!(r.drift_gauge(), 0);
    }

    #[test]
    fn drift_counts_only_live_replicas() {
        let now = UnixSecs(1_000);
        // A stale replica on an old policy is not drift.
        let r = StatusReport::new(vec![beat("a", "new", 995), beat("b", "old", 100)], now);
        assert!(!r.policy_drift);
        assert_eq!(r.status, Health::Ok);
        assert_eq!(r.policy_digests, ["new"]);
        // Two live policies are.
        let r = StatusReport::new(
            vec![
                beat("a", "new", 995),
                beat("b", "old", 990),
                beat("c", "new", 999),
                beat("d", "third", 999),
            ],
            now,
        );
        assert!(r.policy_drift);
        assert_eq!(r.status, Health::PolicyDrift);
        assert_eq!(r.policy_digests, ["new", "old", "third"]);
        assert_eq!(r.drift_gauge(), 2);
        let on_new: Vec<&str> = r.live_on("new").map(|s| s.beat.replica.as_str()).collect();
        assert_eq!(on_new, ["a", "c"]);
        // Nobody live: no drift, but not ok either.
        let r = StatusReport::new(vec![beat("a", "x", 1), beat("b", "y", 2)], now);
        assert_eq!(
            (r.status, r.policy_drift, r.drift_gauge()),
            (Health::NoLiveReplica, false, 0)
        );
        let r = StatusReport::new(Vec::new(), now);
        assert_eq!(r.status, Health::NoLiveReplica);
    }

    #[test]
    fn the_json_names_every_field() {
        let r = StatusReport::new(vec![beat("a", "d", 995)], UnixSecs(1_000));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "now": 1000,
                "status": "ok",
                "policy_drift": false,
                "policy_digests": ["d"],
                "live_replicas": 1,
                "replicas": [{
                    "replica": "a",
                    "version": "0.1.0",
                    "policy_digest": "d",
                    "git_commit": null,
                    "listen": "127.0.0.1:8400",
                    "started_at": 100,
                    "last_seen": 995,
                    "interval_secs": 10,
                    "age_secs": 5,
                    "live": true
                }]
            })
        );
    }

    #[test]
    fn a_second_process_with_the_same_id_is_noticed_but_not_a_restart() {
        let mut ours = beat("a", "d", 500);
        ours.started_at = UnixSecs(400);
        // The previous run of this replica, last seen before we started.
        let mut before = beat("a", "d", 399);
        before.started_at = UnixSecs(10);
        assert!(!ours.id_shared_with(&before));
        // Our own previous beat.
        let mut own = ours.clone();
        own.last_seen = UnixSecs(490);
        assert!(!ours.id_shared_with(&own));
        // Another process, started elsewhere, beating after we started.
        let mut other = beat("a", "d", 495);
        other.started_at = UnixSecs(300);
        assert!(ours.id_shared_with(&other));
    }
}
