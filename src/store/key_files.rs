//! CA keys as files in `data_dir`: the [`super::KeyStore`] of SQLite mode.
//!
//! The layout is what mayfly has always written: `user_ca`, `user_ca.next`,
//! `user_ca.previous` (and `host_ca…`, `user_ca-<group>…`), OpenSSH
//! private keys, mode 0600. A new key is written to a temp file, fsynced
//! and hard-linked into place, so an existing key is never replaced and of
//! two processes creating one key file at once exactly one wins. Each
//! rotation step is a link, rename or unlink in the one directory, fsynced,
//! so a crash leaves a state the next command understands.
//!
//! The file steps are blocking calls; the async methods ([`KeyFiles::rotate`]
//! and the others) run them with `spawn_blocking` and write the audit
//! record after the file step ([`super::traits::KeyStore`] says why in
//! that order). They take the store's audit log and issuance records as
//! arguments, so any backend can keep its CA keys as files: the SQLite
//! store does, and a backend whose keys are not in its database yet can
//! delegate its [`super::KeyStore`] to them (keys in `data_dir`, as
//! before).

use std::fs;
use std::path::{Path, PathBuf};

use super::traits::{AuditLog, IssuanceStore, KeyChange};
use super::{StateVersion, StoreError};
use crate::ca::keys::{public_line_of, read_key_file, write_new_key_file, NewKey, StoredKey};
use crate::ca::rotation::{
    check_retire_expiry, check_step, CaKeys, KeyStep, RotationError, Slot, Slots,
};
use crate::ca::{KeyFileError, KeyLocation};
use crate::config::files;

/// The key files of every CA in one directory.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    dir: PathBuf,
}

impl KeyFiles {
    /// The key files in `dir` (`data_dir`).
    pub fn new(dir: &Path) -> KeyFiles {
        KeyFiles {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, base: &str, slot: Slot) -> PathBuf {
        self.dir.join(format!("{base}{}", slot.file_suffix()))
    }

    /// Reads the key in one slot (`None`: no file).
    fn read_slot(&self, base: &str, slot: Slot) -> Result<Option<StoredKey>, RotationError> {
        let path = self.path(base, slot);
        let text = match read_key_file(&path) {
            Ok(t) => t,
            Err(KeyFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let location = KeyLocation::File(path.clone());
        let public = public_line_of(&text, &location)?;
        let created_at = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        Ok(Some(StoredKey {
            public,
            private: text,
            created_at,
            location,
        }))
    }

    /// The key files of CA `base`.
    pub fn read(&self, base: &str) -> Result<CaKeys, RotationError> {
        check_base(base)?;
        Ok(CaKeys {
            active: self.read_slot(base, Slot::Active)?,
            next: self.read_slot(base, Slot::Next)?,
            previous: self.read_slot(base, Slot::Previous)?,
        })
    }

    /// Every CA with an active key file: `user_ca`, `host_ca` and
    /// `user_ca-<group>`, sorted.
    pub fn list(&self) -> std::io::Result<Vec<String>> {
        let group_prefix = format!("{}-", files::USER_CA_KEY);
        let mut out: Vec<String> = fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n == files::USER_CA_KEY
                    || n == files::HOST_CA_KEY
                    || n.strip_prefix(&group_prefix)
                        .is_some_and(|g| !g.is_empty() && check_base(g).is_ok())
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Writes `key` as the active key file of `base` unless there is one;
    /// returns the active key on disk now and whether it is `key`.
    pub fn create_active_if_absent(
        &self,
        base: &str,
        key: &NewKey,
    ) -> Result<(StoredKey, bool), RotationError> {
        check_base(base)?;
        if let Some(k) = self.read_slot(base, Slot::Active)? {
            return Ok((k, false));
        }
        if self.path(base, Slot::Next).exists() {
            return Err(RotationError::State(format!(
                "{} is missing but {} exists: an activation was interrupted; rename {base}{} to {base} to finish it",
                self.path(base, Slot::Active).display(),
                self.path(base, Slot::Next).display(),
                Slot::Next.file_suffix(),
            )));
        }
        let created = match write_new_key_file(&self.path(base, Slot::Active), &key.private) {
            Ok(()) => true,
            // Another process wrote it first: its key wins.
            Err(KeyFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                false
            }
            Err(e) => return Err(e.into()),
        };
        let stored = self.read_slot(base, Slot::Active)?.ok_or_else(|| {
            RotationError::State(format!(
                "{} vanished right after it was written",
                self.path(base, Slot::Active).display()
            ))
        })?;
        Ok((stored, created))
    }

    /// Applies one rotation step to the files of `base`, if it fits and
    /// they are still `expected`. `last_expiry`: the latest `valid_before`
    /// of certificates signed by the expected previous key (retire only).
    pub fn apply(
        &self,
        base: &str,
        step: &KeyStep,
        expected: &Slots,
        last_expiry: u64,
        now: u64,
    ) -> Result<(), RotationError> {
        let stored = self.read(base)?;
        check_step(base, step, &stored, expected)?;
        let path = |slot| self.path(base, slot);
        let io = |what: &str| {
            let what = what.to_string();
            move |source| RotationError::Io { what, source }
        };
        match step {
            KeyStep::Stage(key) => match write_new_key_file(&path(Slot::Next), &key.private) {
                Ok(()) => Ok(()),
                // Staged by another process since the read.
                Err(KeyFileError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    Err(RotationError::Changed { base: base.into() })
                }
                Err(e) => Err(e.into()),
            },
            KeyStep::Activate => {
                // A hard link first: at every instant `base` holds a valid
                // key. previous == active: a crash came after this link.
                if stored.previous.is_none() {
                    fs::hard_link(path(Slot::Active), path(Slot::Previous))
                        .map_err(io("keeping the active key as previous"))?;
                    sync_dir(&self.dir)?;
                }
                fs::rename(path(Slot::Next), path(Slot::Active))
                    .map_err(io("moving the next key into place"))?;
                sync_dir(&self.dir)
            }
            KeyStep::Retire { force } => {
                if let Some(prev) = &stored.previous {
                    check_retire_expiry(prev, last_expiry, now, *force)?;
                }
                fs::remove_file(path(Slot::Previous)).map_err(io("removing the previous key"))?;
                sync_dir(&self.dir)
            }
        }
    }
}

impl KeyFiles {
    /// Writes every stored key of `keys` into its slot's file of `base`
    /// (a migration); refused when one of the files exists.
    pub fn import(&self, base: &str, keys: &CaKeys) -> Result<(), RotationError> {
        check_base(base)?;
        for slot in Slot::ALL {
            let Some(k) = keys.get(slot) else { continue };
            let path = self.path(base, slot);
            match write_new_key_file(&path, &k.private) {
                Ok(()) => {}
                Err(crate::ca::KeyFileError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    return Err(RotationError::State(format!(
                        "{} exists already; the target must hold no CA key",
                        path.display()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("CA key file task failed: {e}")))
}

/// The async half: what a [`super::KeyStore`] over these files does.
impl KeyFiles {
    /// [`super::KeyStore::cas`].
    pub async fn cas(&self) -> Result<Vec<String>, StoreError> {
        let files = self.clone();
        blocking(move || files.list())
            .await?
            .map_err(|e| StoreError::Backend(format!("listing CA key files: {e}")))
    }

    /// [`super::KeyStore::ca_keys`].
    pub async fn ca_keys(&self, base: &str) -> Result<Result<CaKeys, RotationError>, StoreError> {
        let (files, base) = (self.clone(), base.to_string());
        blocking(move || files.read(&base)).await
    }

    /// [`super::KeyStore::create_active_if_absent`].
    pub async fn create_active(
        &self,
        base: &str,
        key: NewKey,
    ) -> Result<Result<(StoredKey, bool), RotationError>, StoreError> {
        let (files, base) = (self.clone(), base.to_string());
        blocking(move || files.create_active_if_absent(&base, &key)).await
    }

    /// [`super::KeyStore::import_keys`].
    pub async fn import_keys(
        &self,
        base: &str,
        keys: CaKeys,
    ) -> Result<Result<(), RotationError>, StoreError> {
        let (files, base) = (self.clone(), base.to_string());
        blocking(move || files.import(&base, &keys)).await
    }

    /// [`super::KeyStore::rotate`]: the file step, then the audit record
    /// and the state-version bump in one transaction of `audit`'s store.
    /// Retire reads the previous key's last expiry from `issuance` first.
    pub async fn rotate(
        &self,
        issuance: &dyn IssuanceStore,
        audit: &dyn AuditLog,
        change: KeyChange,
    ) -> Result<Result<StateVersion, RotationError>, StoreError> {
        let last_expiry = match (&change.step, &change.expected.previous) {
            (KeyStep::Retire { .. }, Some(prev)) => issuance.last_expiry_by_ca(prev).await?,
            _ => 0,
        };
        let KeyChange {
            base,
            step,
            expected,
            audit: record,
            now,
        } = change;
        let files = self.clone();
        if let Err(e) =
            blocking(move || files.apply(&base, &step, &expected, last_expiry, now)).await?
        {
            return Ok(Err(e));
        }
        Ok(Ok(audit.record_change(record, now).await?))
    }
}

/// A CA base name is one file name: letters, digits, `_` and `-`.
fn check_base(base: &str) -> Result<(), RotationError> {
    let ok = !base.is_empty()
        && base.len() <= 64
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RotationError::State(format!(
            "{base:?} is not a CA name: use letters, digits, - and _ only"
        )))
    }
}

fn sync_dir(dir: &Path) -> Result<(), RotationError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| RotationError::Io {
            what: format!("syncing {}", dir.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;

    fn new_key() -> NewKey {
        NewKey::generate(None).expect("test step")
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("test step").permissions().mode() & 0o777
    }

    #[test]
    fn two_threads_creating_the_same_ca_end_up_with_one_key() {
        for _ in 0..20 {
            let d = tempfile::tempdir().expect("test step");
            let files = Arc::new(KeyFiles::new(d.path()));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let files = files.clone();
                    std::thread::spawn(move || {
                        files
                            .create_active_if_absent("user_ca", &new_key())
                            .expect("create")
                    })
                })
                .collect();
            let results: Vec<(StoredKey, bool)> = handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect();
            assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
            let winner = &results[0].0.public;
            assert!(results.iter().all(|(k, _)| &k.public == winner));
            let on_disk = files.read("user_ca").expect("read");
            assert_eq!(on_disk.active.expect("active").public, *winner);
            // No temp file is left behind.
            assert_eq!(fs::read_dir(d.path()).expect("test step").count(), 1);
        }
    }

    #[test]
    fn key_files_keep_their_names_and_mode_through_a_rotation() {
        let d = tempfile::tempdir().expect("test step");
        let files = KeyFiles::new(d.path());
        let (active, created) = files
            .create_active_if_absent("host_ca", &new_key())
            .expect("create");
        assert!(created);
        assert_eq!(mode(&d.path().join("host_ca")), 0o600);
        let next = new_key();
        let read = files.read("host_ca").expect("read").slots();
        files
            .apply("host_ca", &KeyStep::Stage(next.clone()), &read, 0, 0)
            .expect("stage");
        assert_eq!(mode(&d.path().join("host_ca.next")), 0o600);
        let read = files.read("host_ca").expect("read").slots();
        files
            .apply("host_ca", &KeyStep::Activate, &read, 0, 0)
            .expect("activate");
        let keys = files.read("host_ca").expect("read");
        assert_eq!(keys.active.expect("active").public, next.public);
        assert_eq!(keys.previous.expect("previous").public, active.public);
        assert!(keys.next.is_none());
        assert!(!d.path().join("host_ca.next").exists());
        let read = files.read("host_ca").expect("read").slots();
        files
            .apply("host_ca", &KeyStep::Retire { force: false }, &read, 10, 20)
            .expect("retire");
        assert!(!d.path().join("host_ca.previous").exists());
        assert_eq!(files.list().expect("list"), vec!["host_ca".to_string()]);
    }

    #[test]
    fn an_interrupted_activation_is_explained_not_papered_over() {
        let d = tempfile::tempdir().expect("test step");
        let files = KeyFiles::new(d.path());
        write_new_key_file(&d.path().join("user_ca.next"), &new_key().private).expect("test step");
        let err = files
            .create_active_if_absent("user_ca", &new_key())
            .expect_err("must refuse");
        assert!(
            err.to_string().contains("activation was interrupted"),
            "{err}"
        );
        assert!(!d.path().join("user_ca").exists());
    }

    #[test]
    fn activation_stopped_after_the_link_finishes_on_the_next_run() {
        let d = tempfile::tempdir().expect("test step");
        let files = KeyFiles::new(d.path());
        let (old, _) = files
            .create_active_if_absent("user_ca", &new_key())
            .expect("create");
        let next = new_key();
        write_new_key_file(&d.path().join("user_ca.next"), &next.private).expect("test step");
        fs::hard_link(d.path().join("user_ca"), d.path().join("user_ca.previous"))
            .expect("test step");
        let read = files.read("user_ca").expect("read").slots();
        files
            .apply("user_ca", &KeyStep::Activate, &read, 0, 0)
            .expect("finishes");
        let keys = files.read("user_ca").expect("read");
        assert_eq!(keys.active.expect("active").public, next.public);
        assert_eq!(keys.previous.expect("previous").public, old.public);
    }

    #[test]
    fn a_ca_name_cannot_leave_the_directory() {
        let d = tempfile::tempdir().expect("test step");
        let files = KeyFiles::new(d.path());
        for bad in ["../user_ca", "user_ca-a/b", "", "user_ca.next"] {
            assert!(files.read(bad).is_err(), "{bad}");
            assert!(
                files.create_active_if_absent(bad, &new_key()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_world_readable_key_file_is_refused_when_read() {
        let d = tempfile::tempdir().expect("test step");
        let files = KeyFiles::new(d.path());
        files
            .create_active_if_absent("user_ca", &new_key())
            .expect("create");
        fs::set_permissions(d.path().join("user_ca"), fs::Permissions::from_mode(0o644))
            .expect("test step");
        let err = files.read("user_ca").expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
