//! The config center's configs, versions, history and audit log (SPEC
//! 6.1): the rules, over the storage boundary ([`super::storage`]), which
//! holds
//!
//! - each config's current version number,
//! - every version of every config as a [`ConfigRecord`] (the current one
//!   too),
//! - the audit log: [`AuditEntry`]s, who made which change when (puts,
//!   rollbacks, clones, deletions; a deletion keeps the removed history
//!   there).
//!
//! The rules live here once, whatever the store: version numbering, an
//! identical put being a no-op, size and format checks, `keep_versions`,
//! what the audit records, and which error a missing config is.
//!
//! A change (put, rollback, clone, delete) is applied by a `*_in` method
//! inside a write transaction it is given: the center's group-commit writer
//! ([`super::writer`]) applies many changes in one transaction and commits
//! them together (one fsync on redb), so after a crash the store holds
//! either the whole change or none of it. Each `*_in` method checks
//! everything before it writes, so a refused change writes nothing.
//! [`Store::put`] and friends are the same change in a transaction of its
//! own, for tools and tests. Reads use read snapshots. The methods block
//! (disk or network I/O); async callers run them on a blocking thread.
//!
//! With `keep_versions = N`, a change that makes version V removes the
//! history rows of versions V-N and older (the audit keeps their MD5s).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::{CenterError, CenterResult};
use super::formats;
use super::storage::redb_backend::RedbStorage;
use super::storage::{CenterStorage, StorageRead, StorageTxn};
use crate::rollout::wire::{ConfigKey, ConfigRecord, Format};

/// One change as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, ... in commit order.
    pub seq: u64,
    pub time_ms: u64,
    /// The verified identity that made the change (the token's name), or
    /// `anonymous` on a center without authentication.
    pub identity: String,
    /// `put`, `rollback`, `clone`, `delete` (of a config), `continue`,
    /// `abort`, `skip` (of a rollout) or `remove-device`.
    pub action: String,
    /// `ns/group/name` (the rollout's config for a rollout action; empty for
    /// a device removal).
    pub key: String,
    /// The version made (for a deletion: the last version removed; for a
    /// rollout action: the version it rolls out).
    pub version: u64,
    pub md5: String,
    /// The rollout a rollout action acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u64>,
    /// The device skipped or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// A deletion: every version removed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<ConfigRecord>,
}

/// Default largest content accepted: 1 MiB.
pub const DEFAULT_MAX_CONFIG_BYTES: usize = 1 << 20;

/// The result of a change: the record now current, and whether a new
/// version was made (false when the change was identical to the current
/// version, which is then returned unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub record: ConfigRecord,
    pub created: bool,
}

/// What a new version consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub format: Format,
    pub content: String,
    pub description: String,
    pub author: String,
}
pub struct Store {
    storage: Arc<dyn CenterStorage>,
    max_config_bytes: usize,
    /// History rows kept per config (None: all).
    keep_versions: Option<u64>,
}

impl Store {
    /// The rules over `storage`.
    pub fn new(storage: Arc<dyn CenterStorage>, max_config_bytes: usize) -> Store {
        Store {
            storage,
            max_config_bytes,
            keep_versions: None,
        }
    }

    /// Opens (or creates) a redb database at `path` (the parent directory is
    /// created if missing) and the rules over it.
    pub fn open(path: &Path, max_config_bytes: usize) -> CenterResult<Store> {
        Ok(Store::new(
            Arc::new(RedbStorage::open(path)?),
            max_config_bytes,
        ))
    }

    /// Keeps only the newest `keep` versions of each config in its history
    /// from the next change on (None: every version).
    pub fn with_keep_versions(mut self, keep: Option<u64>) -> Store {
        self.keep_versions = keep.map(|k| k.max(1));
        self
    }

    pub fn max_config_bytes(&self) -> usize {
        self.max_config_bytes
    }

    /// The store underneath, for the center's other state (the rollout
    /// engine's, [`super::rollout_store`]).
    pub fn storage(&self) -> &Arc<dyn CenterStorage> {
        &self.storage
    }

    /// A durable write transaction for `*_in` changes.
    pub fn begin_write(&self) -> CenterResult<Box<dyn StorageTxn + '_>> {
        self.storage.begin_write(true)
    }

    /// Runs one change in a transaction of its own: committed if it
    /// succeeds, abandoned (nothing written) if not.
    fn write_one<T>(
        &self,
        op: impl FnOnce(&mut dyn StorageTxn) -> CenterResult<T>,
    ) -> CenterResult<T> {
        let mut txn = self.begin_write()?;
        match op(&mut *txn) {
            Ok(t) => {
                txn.commit()?;
                Ok(t)
            }
            Err(e) => {
                txn.abort();
                Err(e)
            }
        }
    }

    /// Runs `op` on a read snapshot.
    fn read<T>(&self, op: impl FnOnce(&mut dyn StorageRead) -> CenterResult<T>) -> CenterResult<T> {
        let mut snapshot = self.storage.begin_read()?;
        op(&mut *snapshot)
    }

    /// Stores `new` as the next version of `key` (version 1 if the key is
    /// new), after checking its size and its content against its format.
    /// Identical format, content and description is a no-op.
    pub fn put(&self, key: &ConfigKey, new: NewVersion, now_ms: u64) -> CenterResult<Written> {
        self.write_one(|txn| self.put_in(txn, key, new, now_ms, "put"))
    }

    /// [`Store::put`] inside `txn`; `action` names it in the audit log.
    pub fn put_in(
        &self,
        txn: &mut dyn StorageTxn,
        key: &ConfigKey,
        new: NewVersion,
        now_ms: u64,
        action: &str,
    ) -> CenterResult<Written> {
        self.check_content(key, &new)?;
        let now_version = txn.current_version(key)?;
        if let Some(version) = now_version {
            let record = txn.version(key, version)?.ok_or_else(|| {
                CenterError::Internal(format!(
                    "config store: {key} version {version} is current but has no history row"
                ))
            })?;
            if record.format == new.format
                && record.content == new.content
                && record.description == new.description
            {
                return Ok(Written {
                    record,
                    created: false,
                });
            }
        }
        let record = ConfigRecord {
            key: key.clone(),
            format: new.format,
            md5: formats::md5_hex(&new.content),
            content: new.content,
            description: new.description,
            version: now_version.unwrap_or(0) + 1,
            updated_ms: now_ms,
            author: new.author,
        };
        txn.write_version(&record)?;
        if let Some(keep) = self.keep_versions
            && record.version > keep
        {
            txn.remove_versions_before(key, record.version - keep + 1)?;
        }
        txn.append_audit(AuditEntry {
            seq: 0,
            time_ms: now_ms,
            identity: record.author.clone(),
            action: action.to_string(),
            key: key.to_string(),
            version: record.version,
            md5: record.md5.clone(),
            rollout: None,
            device: None,
            removed: Vec::new(),
        })?;
        Ok(Written {
            record,
            created: true,
        })
    }

    /// Removes `key` (current version and history); the audit entry of the
    /// deletion keeps the removed versions. Returns the last version.
    pub fn delete_in(
        &self,
        txn: &mut dyn StorageTxn,
        key: &ConfigKey,
        identity: &str,
        now_ms: u64,
    ) -> CenterResult<ConfigRecord> {
        let Some(now_version) = txn.current_version(key)? else {
            return Err(self.missing(txn, key)?);
        };
        let removed = txn.versions(key)?;
        let last = removed
            .iter()
            .find(|r| r.version == now_version)
            .cloned()
            .ok_or_else(|| {
                CenterError::Internal(format!(
                    "config store: {key} version {now_version} is current but has no history row"
                ))
            })?;
        txn.remove_config(key)?;
        txn.append_audit(AuditEntry {
            seq: 0,
            time_ms: now_ms,
            identity: identity.to_string(),
            action: "delete".into(),
            key: key.to_string(),
            version: now_version,
            md5: last.md5.clone(),
            rollout: None,
            device: None,
            removed,
        })?;
        Ok(last)
    }

    /// [`Store::delete_in`] in a transaction of its own.
    pub fn delete(
        &self,
        key: &ConfigKey,
        identity: &str,
        now_ms: u64,
    ) -> CenterResult<ConfigRecord> {
        self.write_one(|txn| self.delete_in(txn, key, identity, now_ms))
    }

    /// The audit log, oldest first: entries after `after` (a sequence
    /// number), at most `limit`.
    pub fn audit(&self, after: u64, limit: usize) -> CenterResult<Vec<AuditEntry>> {
        self.read(|snapshot| snapshot.audit(after, limit))
    }

    /// Makes a new version of `key` whose format, content and description
    /// are those of `version` (a no-op if the current version already has
    /// them).
    pub fn rollback(
        &self,
        key: &ConfigKey,
        version: u64,
        author: String,
        now_ms: u64,
    ) -> CenterResult<Written> {
        self.write_one(|txn| self.rollback_in(txn, key, version, author, now_ms))
    }

    /// [`Store::rollback`] inside `txn`.
    pub fn rollback_in(
        &self,
        txn: &mut dyn StorageTxn,
        key: &ConfigKey,
        version: u64,
        author: String,
        now_ms: u64,
    ) -> CenterResult<Written> {
        let old = self.get_in(txn, key, Some(version))?;
        self.put_in(
            txn,
            key,
            NewVersion {
                format: old.format,
                content: old.content,
                description: old.description,
                author,
            },
            now_ms,
            "rollback",
        )
    }

    /// Copies the current version of `key` to `namespace/group/<same name>`,
    /// as version 1 there or as its next version.
    pub fn clone_to(
        &self,
        key: &ConfigKey,
        namespace: &str,
        group: &str,
        author: String,
        now_ms: u64,
    ) -> CenterResult<Written> {
        self.write_one(|txn| self.clone_in(txn, key, namespace, group, author, now_ms))
    }

    /// [`Store::clone_to`] inside `txn`.
    pub fn clone_in(
        &self,
        txn: &mut dyn StorageTxn,
        key: &ConfigKey,
        namespace: &str,
        group: &str,
        author: String,
        now_ms: u64,
    ) -> CenterResult<Written> {
        let target =
            ConfigKey::new(namespace, group, key.name.as_str()).map_err(CenterError::Invalid)?;
        if &target == key {
            return Err(CenterError::Invalid(format!(
                "clone of {key} onto itself: give another namespace or group"
            )));
        }
        let source = self.get_in(txn, key, None)?;
        self.put_in(
            txn,
            &target,
            NewVersion {
                format: source.format,
                content: source.content,
                description: source.description,
                author,
            },
            now_ms,
            "clone",
        )
    }

    /// [`Store::get`] inside a write transaction (sees its changes).
    pub fn get_in(
        &self,
        txn: &mut dyn StorageTxn,
        key: &ConfigKey,
        version: Option<u64>,
    ) -> CenterResult<ConfigRecord> {
        self.record(txn, key, version)
    }

    /// The current version of `key`, or the given one.
    pub fn get(&self, key: &ConfigKey, version: Option<u64>) -> CenterResult<ConfigRecord> {
        self.read(|snapshot| self.record(snapshot, key, version))
    }

    fn record<R: StorageRead + ?Sized>(
        &self,
        reads: &mut R,
        key: &ConfigKey,
        version: Option<u64>,
    ) -> CenterResult<ConfigRecord> {
        let Some(now_version) = reads.current_version(key)? else {
            return Err(self.missing(reads, key)?);
        };
        let version = version.unwrap_or(now_version);
        match reads.version(key, version)? {
            Some(record) => Ok(record),
            None => Err(CenterError::NotFound(format!(
                "config {key} has no version {version} (current version {now_version}{})",
                match self.keep_versions {
                    Some(keep) => format!(", the newest {keep} kept"),
                    None => String::new(),
                }
            ))),
        }
    }

    /// [`Store::current`] inside a write transaction (sees its changes, such
    /// as a version put earlier in the same group commit).
    pub fn current_in(
        &self,
        txn: &mut dyn StorageTxn,
        key: &ConfigKey,
    ) -> CenterResult<Option<ConfigRecord>> {
        match self.get_in(txn, key, None) {
            Ok(record) => Ok(Some(record)),
            Err(CenterError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The current version of `key` if it exists (no error for a missing key).
    pub fn current(&self, key: &ConfigKey) -> CenterResult<Option<ConfigRecord>> {
        match self.get(key, None) {
            Ok(record) => Ok(Some(record)),
            Err(CenterError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The current version of every config, or of those in `namespace`,
    /// sorted by key. An unknown namespace is an error.
    pub fn list(&self, namespace: Option<&str>) -> CenterResult<Vec<ConfigRecord>> {
        if let Some(ns) = namespace {
            crate::rollout::wire::check_name("namespace", ns).map_err(CenterError::Invalid)?;
        }
        let records = self.read(|snapshot| snapshot.current_records(namespace))?;
        if records.is_empty()
            && let Some(ns) = namespace
        {
            return Err(unknown_namespace(ns));
        }
        Ok(records)
    }

    /// Every version of `key`, oldest first.
    pub fn history(&self, key: &ConfigKey) -> CenterResult<Vec<ConfigRecord>> {
        self.read(|snapshot| {
            let out = snapshot.versions(key)?;
            if out.is_empty() {
                return Err(self.missing(snapshot, key)?);
            }
            Ok(out)
        })
    }

    /// A unified diff from version `from` to version `to` of `key`.
    pub fn diff(&self, key: &ConfigKey, from: u64, to: u64) -> CenterResult<String> {
        let old = self.get(key, Some(from))?;
        let new = self.get(key, Some(to))?;
        Ok(unified_diff(&old, &new))
    }

    fn check_content(&self, key: &ConfigKey, new: &NewVersion) -> CenterResult<()> {
        if new.content.len() > self.max_config_bytes {
            return Err(CenterError::TooLarge(format!(
                "content of {key} is {} bytes, over the limit of {} bytes",
                new.content.len(),
                self.max_config_bytes
            )));
        }
        formats::validate(new.format, &new.content)
            .map_err(|e| CenterError::Invalid(format!("{key}: {e}")))
    }

    /// The not-found error for `key`: an unknown namespace is named as such.
    fn missing<R: StorageRead + ?Sized>(
        &self,
        reads: &mut R,
        key: &ConfigKey,
    ) -> CenterResult<CenterError> {
        Ok(if reads.namespace_in_use(&key.namespace)? {
            CenterError::NotFound(format!("config {key} not found"))
        } else {
            unknown_namespace(&key.namespace)
        })
    }
}

/// Appends `entry` to the audit log inside `txn`, with the next sequence
/// number (its `seq` is ignored).
pub fn audit_in(txn: &mut dyn StorageTxn, entry: AuditEntry) -> CenterResult<()> {
    txn.append_audit(entry).map(drop)
}

fn unknown_namespace(ns: &str) -> CenterError {
    CenterError::NotFound(format!(
        "unknown namespace {ns:?}: no config is stored under it"
    ))
}

/// Unified diff of two versions, headed `ns/group/name@vA` and `...@vB`.
pub fn unified_diff(old: &ConfigRecord, new: &ConfigRecord) -> String {
    similar::TextDiff::from_lines(old.content.as_str(), new.content.as_str())
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{}@v{}", old.key, old.version),
            &format!("{}@v{}", new.key, new.version),
        )
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ConfigKey {
        s.parse().unwrap()
    }

    fn new(format: Format, content: &str) -> NewVersion {
        NewVersion {
            format,
            content: content.to_string(),
            description: String::new(),
            author: "test".to_string(),
        }
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(
            &dir.path().join("sub/center.redb"),
            DEFAULT_MAX_CONFIG_BYTES,
        )
        .unwrap()
    }

    #[test]
    fn versions_md5_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let k = key("prod/web/nginx");
        let w1 = store.put(&k, new(Format::Text, "a\n"), 10).unwrap();
        assert!(w1.created);
        assert_eq!(w1.record.version, 1);
        assert_eq!(w1.record.md5, formats::md5_hex("a\n"));
        assert_eq!(w1.record.updated_ms, 10);
        let w2 = store.put(&k, new(Format::Text, "b\n"), 20).unwrap();
        assert_eq!(w2.record.version, 2);
        assert_eq!(store.get(&k, None).unwrap().content, "b\n");
        assert_eq!(store.get(&k, Some(1)).unwrap().content, "a\n");
        let e = store.get(&k, Some(3)).unwrap_err();
        assert!(
            matches!(&e, CenterError::NotFound(m) if m.contains("no version 3")),
            "{e}"
        );
        let h = store.history(&k).unwrap();
        assert_eq!(h.iter().map(|r| r.version).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(h[0].content, "a\n");
    }

    #[test]
    fn keep_versions_trims_history_and_the_audit_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.redb"), DEFAULT_MAX_CONFIG_BYTES)
            .unwrap()
            .with_keep_versions(Some(2));
        let k = key("prod/web/nginx");
        for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
            store.put(&k, new(Format::Text, c), i as u64).unwrap();
        }
        let h = store.history(&k).unwrap();
        assert_eq!(h.iter().map(|r| r.version).collect::<Vec<_>>(), vec![3, 4]);
        let e = store.get(&k, Some(1)).unwrap_err();
        assert!(
            matches!(&e, CenterError::NotFound(m) if m.contains("newest 2 kept")),
            "{e}"
        );
        let e = store.rollback(&k, 1, "op".into(), 9).unwrap_err();
        assert!(matches!(e, CenterError::NotFound(_)));
        let audit = store.audit(0, 100).unwrap();
        assert_eq!(
            audit.iter().map(|a| a.version).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(audit[0].md5, formats::md5_hex("a"));
        // Deleting keeps what was left of the history in the audit.
        let last = store.delete(&k, "op", 10).unwrap();
        assert_eq!(last.version, 4);
        assert!(matches!(store.get(&k, None), Err(CenterError::NotFound(_))));
        let audit = store.audit(4, 100).unwrap();
        assert_eq!(
            (audit[0].action.as_str(), audit[0].identity.as_str()),
            ("delete", "op")
        );
        assert_eq!(
            audit[0]
                .removed
                .iter()
                .map(|r| r.content.as_str())
                .collect::<Vec<_>>(),
            ["c", "d"]
        );
        // A new config under the same key starts again at version 1.
        assert_eq!(
            store
                .put(&k, new(Format::Text, "e"), 11)
                .unwrap()
                .record
                .version,
            1
        );
    }

    #[test]
    fn identical_put_is_a_noop() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let k = key("prod/web/nginx");
        store.put(&k, new(Format::Json, "{}"), 1).unwrap();
        let again = store.put(&k, new(Format::Json, "{}"), 2).unwrap();
        assert!(!again.created);
        assert_eq!(again.record.version, 1);
        assert_eq!(again.record.updated_ms, 1);
        // A different description is a change.
        let mut described = new(Format::Json, "{}");
        described.description = "now described".into();
        assert_eq!(store.put(&k, described, 3).unwrap().record.version, 2);
        assert_eq!(store.history(&k).unwrap().len(), 2);
    }

    #[test]
    fn invalid_and_oversized_content_is_refused_and_history_intact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb"), 16).unwrap();
        let k = key("prod/web/app");
        store.put(&k, new(Format::Yaml, "a: 1\n"), 1).unwrap();
        let e = store.put(&k, new(Format::Yaml, "a: [1\n"), 2).unwrap_err();
        assert!(
            matches!(&e, CenterError::Invalid(m) if m.contains("invalid yaml content")),
            "{e}"
        );
        let e = store
            .put(&k, new(Format::Text, &"x".repeat(17)), 3)
            .unwrap_err();
        assert!(
            matches!(&e, CenterError::TooLarge(m) if m.contains("17 bytes")),
            "{e}"
        );
        assert_eq!(store.history(&k).unwrap().len(), 1);
        assert_eq!(store.get(&k, None).unwrap().content, "a: 1\n");
    }

    #[test]
    fn rollback_makes_a_new_version_with_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let k = key("prod/web/nginx");
        store.put(&k, new(Format::Toml, "a = 1\n"), 1).unwrap();
        store.put(&k, new(Format::Toml, "a = 2\n"), 2).unwrap();
        let w = store.rollback(&k, 1, "op".into(), 3).unwrap();
        assert!(w.created);
        assert_eq!(w.record.version, 3);
        assert_eq!(w.record.content, "a = 1\n");
        assert_eq!(w.record.md5, store.get(&k, Some(1)).unwrap().md5);
        assert_eq!(w.record.author, "op");
        assert_eq!(store.history(&k).unwrap().len(), 3);
        let e = store.rollback(&k, 9, String::new(), 4).unwrap_err();
        assert!(matches!(e, CenterError::NotFound(_)));
        // Rolling back to the content already current changes nothing.
        assert!(!store.rollback(&k, 1, String::new(), 5).unwrap().created);
    }

    #[test]
    fn clone_to_other_namespace_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let k = key("prod/web/nginx");
        store.put(&k, new(Format::Text, "one"), 1).unwrap();
        store.put(&k, new(Format::Text, "two"), 2).unwrap();
        let c = store
            .clone_to(&k, "staging", "edge", "op".into(), 3)
            .unwrap();
        assert_eq!(c.record.key, key("staging/edge/nginx"));
        assert_eq!(c.record.version, 1);
        assert_eq!(c.record.content, "two");
        store.put(&k, new(Format::Text, "three"), 4).unwrap();
        let c2 = store
            .clone_to(&k, "staging", "edge", "op".into(), 5)
            .unwrap();
        assert_eq!(c2.record.version, 2);
        assert_eq!(c2.record.content, "three");
        assert!(matches!(
            store.clone_to(&k, "prod", "web", String::new(), 6),
            Err(CenterError::Invalid(_))
        ));
        assert!(matches!(
            store.clone_to(&k, "bad ns", "web", String::new(), 6),
            Err(CenterError::Invalid(_))
        ));
        assert!(matches!(
            store.clone_to(&key("prod/web/none"), "x", "y", String::new(), 6),
            Err(CenterError::NotFound(_))
        ));
    }

    #[test]
    fn diff_between_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let k = key("prod/web/nginx");
        store.put(&k, new(Format::Text, "a\nb\nc\n"), 1).unwrap();
        store.put(&k, new(Format::Text, "a\nB\nc\n"), 2).unwrap();
        let d = store.diff(&k, 1, 2).unwrap();
        assert!(
            d.starts_with("--- prod/web/nginx@v1\n+++ prod/web/nginx@v2\n"),
            "{d}"
        );
        assert!(d.contains("-b\n+B\n"), "{d}");
        assert!(
            store.diff(&k, 2, 2).unwrap().is_empty()
                || !store.diff(&k, 2, 2).unwrap().contains("-b")
        );
        assert!(matches!(
            store.diff(&k, 1, 7),
            Err(CenterError::NotFound(_))
        ));
    }

    #[test]
    fn list_and_unknown_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .put(&key("prod/web/b"), new(Format::Text, "1"), 1)
            .unwrap();
        store
            .put(&key("prod/web/a"), new(Format::Text, "2"), 1)
            .unwrap();
        store
            .put(&key("prod.eu/web/a"), new(Format::Text, "3"), 1)
            .unwrap();
        store
            .put(&key("prodx/web/a"), new(Format::Text, "4"), 1)
            .unwrap();
        let prod = store.list(Some("prod")).unwrap();
        assert_eq!(
            prod.iter().map(|r| r.key.to_string()).collect::<Vec<_>>(),
            vec!["prod/web/a", "prod/web/b"]
        );
        assert_eq!(prod[0].content, "2");
        assert_eq!(store.list(None).unwrap().len(), 4);
        let e = store.list(Some("nope")).unwrap_err();
        assert!(
            matches!(&e, CenterError::NotFound(m) if m.contains("unknown namespace")),
            "{e}"
        );
        let e = store.get(&key("nope/web/a"), None).unwrap_err();
        assert!(
            matches!(&e, CenterError::NotFound(m) if m.contains("unknown namespace")),
            "{e}"
        );
        let e = store.get(&key("prod/web/zzz"), None).unwrap_err();
        assert!(
            matches!(&e, CenterError::NotFound(m) if m.contains("prod/web/zzz not found")),
            "{e}"
        );
        assert!(store.current(&key("prod/web/zzz")).unwrap().is_none());
    }

    #[test]
    fn reopening_gives_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("center.redb");
        let k = key("prod/web/nginx");
        {
            let store = Store::open(&path, DEFAULT_MAX_CONFIG_BYTES).unwrap();
            store.put(&k, new(Format::Properties, "a=1\n"), 1).unwrap();
            store.put(&k, new(Format::Properties, "a=2\n"), 2).unwrap();
            store.clone_to(&k, "dr", "web", String::new(), 3).unwrap();
        }
        let store = Store::open(&path, DEFAULT_MAX_CONFIG_BYTES).unwrap();
        assert_eq!(store.get(&k, None).unwrap().version, 2);
        assert_eq!(store.history(&k).unwrap().len(), 2);
        assert_eq!(store.get(&k, Some(1)).unwrap().content, "a=1\n");
        assert_eq!(store.list(None).unwrap().len(), 2);
        assert_eq!(
            store
                .put(&k, new(Format::Properties, "a=3\n"), 4)
                .unwrap()
                .record
                .version,
            3
        );
    }
}
