//! [`RedbStorage`]: the center's state in one embedded redb file (the
//! default store: one machine, nothing to install).
//!
//! Six tables, values JSON (the table names and types are the on-disk
//! format: a database written by an older center opens unchanged):
//!
//! ```text
//! current          "ns/group/name"            -> current version (u64)
//! history          ("ns/group/name", version) -> ConfigRecord
//! audit            sequence number            -> AuditEntry
//! rollout_devices  device name                -> DeviceState
//! rollouts         rollout id                 -> RolloutEntry
//! rollout_meta     "engine"                   -> EngineMeta
//! ```
//!
//! A write transaction is a redb `WriteTransaction`; its commit is one
//! fsync (redb's immediate durability) unless it was begun not durable.
//! Reads outside one use a redb read transaction (a consistent snapshot).

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase as _, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::{CenterStorage, StorageRead, StorageTxn, Stored};
use crate::rollout::center::engine::{Changes, EngineMeta};
use crate::rollout::center::error::{CenterError, CenterResult};
use crate::rollout::center::store::AuditEntry;
use crate::rollout::wire::{ConfigKey, ConfigRecord};

const CURRENT: TableDefinition<&str, u64> = TableDefinition::new("current");
const HISTORY: TableDefinition<(&str, u64), &str> = TableDefinition::new("history");
const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");
const DEVICES: TableDefinition<&str, &str> = TableDefinition::new("rollout_devices");
const ROLLOUTS: TableDefinition<u64, &str> = TableDefinition::new("rollouts");
const META: TableDefinition<&str, &str> = TableDefinition::new("rollout_meta");
const META_KEY: &str = "engine";

/// The center's state in a redb file.
pub struct RedbStorage {
    db: Database,
    path: PathBuf,
}

/// `?`-friendly conversion of redb's many error types.
trait DbResult<T> {
    fn db(self, context: &str) -> CenterResult<T>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for Result<T, E> {
    fn db(self, context: &str) -> CenterResult<T> {
        self.map_err(|e| CenterError::internal(context, e.into()))
    }
}

fn decode_record(json: &str) -> CenterResult<ConfigRecord> {
    serde_json::from_str(json).map_err(|e| CenterError::internal("config store: corrupt record", e))
}

fn encode_record(record: &ConfigRecord) -> String {
    serde_json::to_string(record).expect("a ConfigRecord always serializes")
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> CenterResult<T> {
    serde_json::from_str(json)
        .map_err(|e| CenterError::Internal(format!("rollout store: corrupt {what}: {e}")))
}

impl RedbStorage {
    /// Opens (or creates) the database at `path`, creating its parent
    /// directory and every table if missing.
    pub fn open(path: &Path) -> CenterResult<RedbStorage> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| CenterError::internal(&format!("creating {}", parent.display()), e))?;
        }
        let db = Database::create(path).map_err(|e| {
            CenterError::internal(&format!("opening config database {}", path.display()), e)
        })?;
        // Every table exists from here on, so a read transaction can open
        // any of them.
        let txn = db.begin_write().db("config store: begin")?;
        txn.open_table(CURRENT).db("config store: current table")?;
        txn.open_table(HISTORY).db("config store: history table")?;
        txn.open_table(AUDIT).db("config store: audit table")?;
        txn.open_table(DEVICES).db("rollout store: devices table")?;
        txn.open_table(ROLLOUTS)
            .db("rollout store: rollouts table")?;
        txn.open_table(META).db("rollout store: meta table")?;
        txn.commit().db("config store: commit")?;
        Ok(RedbStorage {
            db,
            path: path.to_path_buf(),
        })
    }
}

impl CenterStorage for RedbStorage {
    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }

    fn begin_read(&self) -> CenterResult<Box<dyn StorageRead + '_>> {
        let txn = self.db.begin_read().db("config store: begin read")?;
        Ok(Box::new(RedbRead(txn)))
    }

    fn begin_write(&self, durable: bool) -> CenterResult<Box<dyn StorageTxn + '_>> {
        let mut txn = self.db.begin_write().db("config store: begin")?;
        if !durable {
            txn.set_durability(Durability::None)
                .db("config store: durability")?;
        }
        Ok(Box::new(RedbTxn(txn)))
    }
}

/// A read snapshot.
struct RedbRead(ReadTransaction);

/// A write transaction.
struct RedbTxn(WriteTransaction);

/// The tables a transaction reads, whichever kind it is: the reads are
/// written once, over [`ReadableTable`], for both.
trait Tables {
    fn current(&self) -> CenterResult<impl ReadableTable<&'static str, u64> + '_>;
    fn history(&self) -> CenterResult<impl ReadableTable<(&'static str, u64), &'static str> + '_>;
    fn audit_table(&self) -> CenterResult<impl ReadableTable<u64, &'static str> + '_>;
    fn devices(&self) -> CenterResult<impl ReadableTable<&'static str, &'static str> + '_>;
    fn rollouts(&self) -> CenterResult<impl ReadableTable<u64, &'static str> + '_>;
    fn meta(&self) -> CenterResult<impl ReadableTable<&'static str, &'static str> + '_>;
}

macro_rules! tables {
    ($txn:ty) => {
        impl Tables for $txn {
            fn current(&self) -> CenterResult<impl ReadableTable<&'static str, u64> + '_> {
                self.0.open_table(CURRENT).db("config store: current table")
            }
            fn history(
                &self,
            ) -> CenterResult<impl ReadableTable<(&'static str, u64), &'static str> + '_> {
                self.0.open_table(HISTORY).db("config store: history table")
            }
            fn audit_table(&self) -> CenterResult<impl ReadableTable<u64, &'static str> + '_> {
                self.0.open_table(AUDIT).db("config store: audit table")
            }
            fn devices(&self) -> CenterResult<impl ReadableTable<&'static str, &'static str> + '_> {
                self.0
                    .open_table(DEVICES)
                    .db("rollout store: devices table")
            }
            fn rollouts(&self) -> CenterResult<impl ReadableTable<u64, &'static str> + '_> {
                self.0
                    .open_table(ROLLOUTS)
                    .db("rollout store: rollouts table")
            }
            fn meta(&self) -> CenterResult<impl ReadableTable<&'static str, &'static str> + '_> {
                self.0.open_table(META).db("rollout store: meta table")
            }
        }
    };
}

tables!(RedbRead);
tables!(RedbTxn);

/// Keys of namespace `ns` are exactly those in `"ns/".."ns0"` ('0' follows
/// '/' in ASCII and names never contain '/').
fn namespace_range(ns: &str) -> (String, String) {
    (format!("{ns}/"), format!("{ns}0"))
}

fn history_of(
    history: &impl ReadableTable<(&'static str, u64), &'static str>,
    name: &str,
) -> CenterResult<Vec<ConfigRecord>> {
    let mut out = Vec::new();
    for row in history
        .range((name, 0)..=(name, u64::MAX))
        .db("config store: scan")?
    {
        let (_, value) = row.db("config store: scan")?;
        out.push(decode_record(value.value())?);
    }
    Ok(out)
}

impl<T: Tables> StorageRead for T {
    fn current_version(&mut self, key: &ConfigKey) -> CenterResult<Option<u64>> {
        Ok(self
            .current()?
            .get(key.to_string().as_str())
            .db("config store: read")?
            .map(|v| v.value()))
    }

    fn version(&mut self, key: &ConfigKey, version: u64) -> CenterResult<Option<ConfigRecord>> {
        self.history()?
            .get((key.to_string().as_str(), version))
            .db("config store: read")?
            .map(|row| decode_record(row.value()))
            .transpose()
    }

    fn versions(&mut self, key: &ConfigKey) -> CenterResult<Vec<ConfigRecord>> {
        history_of(&self.history()?, &key.to_string())
    }

    fn namespace_in_use(&mut self, namespace: &str) -> CenterResult<bool> {
        let (low, high) = namespace_range(namespace);
        Ok(self
            .current()?
            .range(low.as_str()..high.as_str())
            .db("config store: scan")?
            .next()
            .is_some())
    }

    fn current_records(&mut self, namespace: Option<&str>) -> CenterResult<Vec<ConfigRecord>> {
        let current = self.current()?;
        let history = self.history()?;
        let range = match namespace {
            Some(ns) => {
                let (low, high) = namespace_range(ns);
                current
                    .range::<&str>(low.as_str()..high.as_str())
                    .db("config store: scan")?
            }
            None => current.iter().db("config store: scan")?,
        };
        let mut out = Vec::new();
        for row in range {
            let (name, version) = row.db("config store: scan")?;
            let (name, version) = (name.value(), version.value());
            let row = history
                .get((name, version))
                .db("config store: read")?
                .ok_or_else(|| {
                    CenterError::Internal(format!(
                        "config store: {name} version {version} is current but has no history row"
                    ))
                })?;
            out.push(decode_record(row.value())?);
        }
        Ok(out)
    }

    fn audit(&mut self, after: u64, limit: usize) -> CenterResult<Vec<AuditEntry>> {
        let table = self.audit_table()?;
        let mut out = Vec::new();
        for row in table
            .range(after.saturating_add(1)..)
            .db("config store: scan")?
            .take(limit)
        {
            let (_, value) = row.db("config store: scan")?;
            out.push(
                serde_json::from_str(value.value())
                    .map_err(|e| CenterError::internal("config store: corrupt audit entry", e))?,
            );
        }
        Ok(out)
    }

    fn rollout_state(&mut self) -> CenterResult<Stored> {
        let mut devices = Vec::new();
        for row in self.devices()?.iter().db("rollout store: devices")? {
            let (name, json) = row.db("rollout store: device row")?;
            let name = name.value().to_string();
            let state = decode(&format!("device {name}"), json.value())?;
            devices.push((name, state));
        }
        let mut rollouts = Vec::new();
        for row in self.rollouts()?.iter().db("rollout store: rollouts")? {
            let (id, json) = row.db("rollout store: rollout row")?;
            rollouts.push(decode(&format!("rollout {}", id.value()), json.value())?);
        }
        let meta = match self.meta()?.get(META_KEY).db("rollout store: meta")? {
            Some(json) => decode("engine meta", json.value())?,
            None => EngineMeta::default(),
        };
        Ok((devices, rollouts, meta))
    }
}

impl StorageTxn for RedbTxn {
    fn write_version(&mut self, record: &ConfigRecord) -> CenterResult<()> {
        let name = record.key.to_string();
        let mut history = self
            .0
            .open_table(HISTORY)
            .db("config store: history table")?;
        history
            .insert(
                (name.as_str(), record.version),
                encode_record(record).as_str(),
            )
            .db("config store: write history")?;
        let mut current = self
            .0
            .open_table(CURRENT)
            .db("config store: current table")?;
        current
            .insert(name.as_str(), record.version)
            .db("config store: write current")?;
        Ok(())
    }

    fn remove_versions_before(&mut self, key: &ConfigKey, oldest_kept: u64) -> CenterResult<()> {
        let name = key.to_string();
        let mut history = self
            .0
            .open_table(HISTORY)
            .db("config store: history table")?;
        let old: Vec<u64> = history
            .range((name.as_str(), 0)..(name.as_str(), oldest_kept))
            .db("config store: scan")?
            .map(|row| row.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()
            .db("config store: scan")?;
        for version in old {
            history
                .remove((name.as_str(), version))
                .db("config store: trim history")?;
        }
        Ok(())
    }

    fn remove_config(&mut self, key: &ConfigKey) -> CenterResult<()> {
        let name = key.to_string();
        let mut history = self
            .0
            .open_table(HISTORY)
            .db("config store: history table")?;
        let versions: Vec<u64> = history
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
            .db("config store: scan")?
            .map(|row| row.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()
            .db("config store: scan")?;
        for version in versions {
            history
                .remove((name.as_str(), version))
                .db("config store: delete history")?;
        }
        let mut current = self
            .0
            .open_table(CURRENT)
            .db("config store: current table")?;
        current
            .remove(name.as_str())
            .db("config store: delete current")?;
        Ok(())
    }

    fn append_audit(&mut self, mut entry: AuditEntry) -> CenterResult<u64> {
        let mut table = self.0.open_table(AUDIT).db("config store: audit table")?;
        entry.seq = match table.last().db("config store: audit read")? {
            Some((seq, _)) => seq.value() + 1,
            None => 1,
        };
        let json = serde_json::to_string(&entry).expect("an AuditEntry always serializes");
        table
            .insert(entry.seq, json.as_str())
            .db("config store: audit write")?;
        Ok(entry.seq)
    }

    fn save_rollout(&mut self, changes: &Changes) -> CenterResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut table = self
            .0
            .open_table(DEVICES)
            .db("rollout store: devices table")?;
        for (name, state) in &changes.devices {
            match state {
                Some(json) => table
                    .insert(name.as_str(), json.as_str())
                    .db("rollout store: write device")?,
                None => table
                    .remove(name.as_str())
                    .db("rollout store: remove device")?,
            };
        }
        let mut table = self
            .0
            .open_table(ROLLOUTS)
            .db("rollout store: rollouts table")?;
        for (id, entry) in &changes.rollouts {
            match entry {
                Some(json) => table
                    .insert(*id, json.as_str())
                    .db("rollout store: write rollout")?,
                None => table.remove(*id).db("rollout store: remove rollout")?,
            };
        }
        if let Some(meta) = &changes.meta {
            let mut table = self.0.open_table(META).db("rollout store: meta table")?;
            table
                .insert(META_KEY, meta.as_str())
                .db("rollout store: write meta")?;
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> CenterResult<()> {
        self.0.commit().db("config store: commit")
    }

    fn abort(self: Box<Self>) {
        let _ = self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rollout::center::storage::conformance::conformance_tests;

    fn fresh() -> (tempfile::TempDir, Arc<dyn CenterStorage>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = RedbStorage::open(&dir.path().join("sub/center.redb")).unwrap();
        (dir, Arc::new(storage))
    }

    conformance_tests!(fresh());

    /// The on-disk format is the one centers wrote before the storage
    /// boundary existed: a file made with those table definitions, written
    /// here independently of the ones above, opens and reads back whole.
    #[test]
    fn a_database_written_before_the_storage_boundary_opens_unchanged() {
        use redb::TableDefinition as T;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let mut engine = crate::rollout::center::engine::Engine::new();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let registration = crate::rollout::wire::Register {
            services: vec![crate::rollout::wire::ServiceRegistration {
                name: "s".into(),
                config: key.clone(),
                depends_on: vec![],
            }],
            labels: vec![],
        };
        engine.register("d1", registration, &|_| None, 1).unwrap();
        let options = crate::rollout::center::engine::PlanOptions::default();
        let id = engine.new_version(&key, 1, "m1", &options, 2).0.unwrap();
        let changes = engine.take_changes();
        let record = ConfigRecord {
            key: key.clone(),
            format: crate::rollout::wire::Format::Json,
            content: "{}".into(),
            description: String::new(),
            version: 1,
            md5: crate::rollout::wire::md5_hex("{}"),
            updated_ms: 5,
            author: "old".into(),
        };
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(T::<&str, u64>::new("current")).unwrap();
                t.insert("n/g/k", 1).unwrap();
                let mut t = txn
                    .open_table(T::<(&str, u64), &str>::new("history"))
                    .unwrap();
                let json = serde_json::to_string(&record).unwrap();
                t.insert(("n/g/k", 1), json.as_str()).unwrap();
                let mut t = txn.open_table(T::<u64, &str>::new("audit")).unwrap();
                t.insert(
                    1,
                    r#"{"seq":1,"time_ms":5,"identity":"old","action":"put","key":"n/g/k","version":1,"md5":"m1"}"#,
                )
                .unwrap();
                let mut t = txn
                    .open_table(T::<&str, &str>::new("rollout_devices"))
                    .unwrap();
                for (name, json) in &changes.devices {
                    t.insert(name.as_str(), json.as_deref().unwrap()).unwrap();
                }
                let mut t = txn.open_table(T::<u64, &str>::new("rollouts")).unwrap();
                for (id, json) in &changes.rollouts {
                    t.insert(*id, json.as_deref().unwrap()).unwrap();
                }
                let mut t = txn
                    .open_table(T::<&str, &str>::new("rollout_meta"))
                    .unwrap();
                t.insert("engine", changes.meta.as_deref().unwrap())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let storage = RedbStorage::open(&path).unwrap();
        let mut reads = storage.begin_read().unwrap();
        assert_eq!(reads.current_version(&key).unwrap(), Some(1));
        assert_eq!(reads.version(&key, 1).unwrap(), Some(record));
        let audit = reads.audit(0, 10).unwrap();
        assert_eq!((audit.len(), audit[0].identity.as_str()), (1, "old"));
        let (devices, rollouts, meta) = reads.rollout_state().unwrap();
        assert_eq!((devices.len(), rollouts.len(), meta.next_id), (1, 1, id));
        drop(reads);
        // And it goes on from there: the next audit entry is number 2.
        let mut txn = storage.begin_write(true).unwrap();
        let mut next = audit[0].clone();
        next.action = "rollback".into();
        assert_eq!(txn.append_audit(next).unwrap(), 2);
        txn.commit().unwrap();
    }
}
