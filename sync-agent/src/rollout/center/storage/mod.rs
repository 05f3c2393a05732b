//! The storage boundary of the config center: every piece of its durable
//! state goes through the traits here, and nothing above them names a
//! database.
//!
//! What is stored (each value JSON, the same encoding as the API):
//!
//! ```text
//! configs   key "ns/group/name" -> current version number
//!           (key, version)      -> ConfigRecord   (every version kept)
//! audit     sequence number     -> AuditEntry     (1, 2, ... in commit order)
//! rollout   device name         -> DeviceState    (engine::Changes::devices)
//!           rollout id          -> RolloutEntry   (engine::Changes::rollouts)
//!           "engine"            -> EngineMeta     (engine::Changes::meta)
//! ```
//!
//! Three traits:
//!
//! - [`CenterStorage`]: the store itself; opens read snapshots and write
//!   transactions. Two implementations: [`redb_backend::RedbStorage`] (one
//!   embedded file, the default) and [`etcd_backend::EtcdStorage`] (an
//!   etcd cluster); [`open`] picks the one `store` names.
//! - [`StorageRead`]: reads, in a consistent snapshot or inside a write
//!   transaction (where they see that transaction's own writes).
//! - [`StorageTxn`]: the writes of one transaction, committed all together
//!   or not at all.
//!
//! The operations are data operations, not policy: version numbering,
//! identical-put detection, content checks, `keep_versions` and what goes
//! into an audit entry live once, above the boundary, in [`super::store`]
//! and [`super::service`], so every implementation keeps the same rules.
//!
//! A group commit ([`super::writer`]) is one [`StorageTxn`]: every job of
//! the batch applies in it, in order, and [`StorageTxn::commit`] makes them
//! durable together. The operations are shaped so that an implementation
//! on a store with optimistic transactions (etcd: `Txn` with compares on
//! `mod_revision`, see [`etcd_backend`]) needs nothing more: a
//! transaction records every key it reads with the revision it saw (or
//! that it was absent), buffers its writes (and answers its own later reads
//! from them), and commits them in one request guarded by "every key read
//! is unchanged". Every read inside
//! a write transaction is a point read or a read of one config's history,
//! and a config's history only changes together with its current-version
//! key, so guarding that key guards the history. A namespace scan inside a
//! write transaction happens only on a path that refuses the change (to
//! name an unknown namespace), which writes nothing. The audit sequence is
//! the transaction's to assign ([`StorageTxn::append_audit`]), so an
//! implementation may keep it in a counter key that it guards.
//!
//! The methods block (disk or network I/O). The center calls them on its
//! writer thread and on blocking threads (`spawn_blocking`), never on an
//! async task, so an implementation over an async client may block on its
//! runtime there.

pub mod etcd_access;
pub mod etcd_backend;
pub mod redb_backend;

use std::sync::Arc;

#[cfg(test)]
pub(crate) mod conformance;

use super::config::{CenterConfig, StoreKind};
use super::engine::{Changes, DeviceState, EngineMeta, RolloutEntry};
use super::error::CenterResult;
use super::store::AuditEntry;
use crate::rollout::wire::{ConfigKey, ConfigRecord};

/// The engine's stored state: devices (by name), rollouts (by id) and the
/// engine's meta (see [`super::engine::Engine::restore`]).
pub type Stored = (Vec<(String, DeviceState)>, Vec<RolloutEntry>, EngineMeta);

/// Opens the store `config.store` names: the redb file `db_path`
/// (created with its directory if missing), or the etcd cluster at
/// `etcd_endpoints` under `etcd_prefix`, with its TLS and credentials
/// (reached once here, so a center whose cluster is down or refuses it
/// fails at start, naming it and why).
pub fn open(config: &CenterConfig) -> CenterResult<Arc<dyn CenterStorage>> {
    match config.store {
        StoreKind::Redb => Ok(Arc::new(redb_backend::RedbStorage::open(&config.db_path)?)),
        StoreKind::Etcd => Ok(Arc::new(etcd_backend::EtcdStorage::connect_shared(
            &etcd_access::EtcdAccess::from_config(config)?,
            config.etcd_prefix(),
            config.etcd_lease_ttl_s,
        )?)),
    }
}

/// What happened in a store shared by several centers (see [`Cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The rollout engine's stored state may have changed: its stamp is
    /// now this (`None`: unknown, e.g. the watch was re-established and
    /// may have missed changes).
    Changed(Option<String>),
    /// Another center heard from these devices (device, time in ms).
    Seen(Vec<(String, u64)>),
}

/// What several centers sharing one store (etcd) need of it beyond
/// reads and writes: who runs the rollout engine, and what the others
/// changed. The redb store has none (one process owns its file).
pub trait Cluster: Send + Sync {
    /// This center's name among the centers (unique per process).
    fn member(&self) -> &str;

    /// True while this center holds the election for the rollout engine
    /// (through a lease: if it dies, another takes over within the TTL).
    fn leader(&self) -> tokio::sync::watch::Receiver<bool>;

    /// Whether this center's session with the store is up (a lease kept
    /// alive): without it the center cannot know what the others change.
    fn connected(&self) -> bool;

    /// What other centers change, as it happens (from etcd watches);
    /// `None` once taken (one reader, the center).
    fn take_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<ClusterEvent>>;

    /// Tells the other centers which devices this one heard from (and
    /// when), so the engine's device expiry counts polls answered
    /// anywhere. Best effort: a failure is logged.
    fn publish_seen(&self, seen: Vec<(String, u64)>);
}

/// A store for the center's durable state.
pub trait CenterStorage: Send + Sync {
    /// What and where the store is, for logs (`redb /var/lib/...`).
    fn describe(&self) -> String;

    /// A consistent snapshot of everything committed.
    fn begin_read(&self) -> CenterResult<Box<dyn StorageRead + '_>>;

    /// A write transaction. `durable`: its commit returns only once the
    /// change survives a crash (the default for every change a client is
    /// told about); false lets it wait for the next durable commit.
    fn begin_write(&self, durable: bool) -> CenterResult<Box<dyn StorageTxn + '_>>;

    /// The store is shared by several centers: this is how they cooperate.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }
}

/// Reads of the center's state. Inside a write transaction they see that
/// transaction's writes. A read that finds stored data it cannot decode is
/// [`super::CenterError::Internal`].
pub trait StorageRead {
    /// The current version number of `key`, if it exists.
    fn current_version(&mut self, key: &ConfigKey) -> CenterResult<Option<u64>>;

    /// Version `version` of `key`, if its history holds it (a deleted
    /// config, or a version trimmed by `keep_versions`, is `None`).
    fn version(&mut self, key: &ConfigKey, version: u64) -> CenterResult<Option<ConfigRecord>>;

    /// Every version of `key` its history holds, oldest first (empty if
    /// none).
    fn versions(&mut self, key: &ConfigKey) -> CenterResult<Vec<ConfigRecord>>;

    /// Whether any config exists under `namespace`.
    fn namespace_in_use(&mut self, namespace: &str) -> CenterResult<bool>;

    /// The current version of every config (of `namespace` only, if given),
    /// sorted by key (`ns/group/name` as a string).
    fn current_records(&mut self, namespace: Option<&str>) -> CenterResult<Vec<ConfigRecord>>;

    /// Audit entries with a sequence number above `after`, oldest first, at
    /// most `limit`.
    fn audit(&mut self, after: u64, limit: usize) -> CenterResult<Vec<AuditEntry>>;

    /// The rollout engine's stored state.
    fn rollout_state(&mut self) -> CenterResult<Stored>;

    /// In a store shared by several centers ([`CenterStorage::cluster`]):
    /// the stamp of the last transaction that wrote the engine's state, so
    /// a center knows whether what it holds in memory is still current.
    fn engine_stamp(&mut self) -> CenterResult<Option<String>> {
        Ok(None)
    }
}

/// One write transaction: its writes are durable together at
/// [`StorageTxn::commit`], or none of them is (an error, an
/// [`StorageTxn::abort`], or a drop without commit).
pub trait StorageTxn: StorageRead {
    /// Stores `record` as version `record.version` of `record.key` and makes
    /// it the current version.
    fn write_version(&mut self, record: &ConfigRecord) -> CenterResult<()>;

    /// Removes the history rows of `key` older than version `oldest_kept`.
    fn remove_versions_before(&mut self, key: &ConfigKey, oldest_kept: u64) -> CenterResult<()>;

    /// Removes `key`: its current version and its whole history.
    fn remove_config(&mut self, key: &ConfigKey) -> CenterResult<()>;

    /// Appends `entry` to the audit log with the next sequence number (its
    /// `seq` is ignored); returns that number.
    fn append_audit(&mut self, entry: AuditEntry) -> CenterResult<u64>;

    /// Writes what the rollout engine changed (devices, rollouts, meta; a
    /// `None` value removes the record).
    fn save_rollout(&mut self, changes: &Changes) -> CenterResult<()>;

    /// Whether the transaction has written anything so far (a shared
    /// store stamps only a transaction that writes: see
    /// [`StorageTxn::set_engine_stamp`]).
    fn has_writes(&self) -> bool {
        true
    }

    /// Sets [`StorageRead::engine_stamp`] (a shared store only).
    fn set_engine_stamp(&mut self, stamp: &str) -> CenterResult<()> {
        let _ = stamp;
        Ok(())
    }

    /// Makes every write of the transaction durable, all together.
    fn commit(self: Box<Self>) -> CenterResult<()>;

    /// Drops every write of the transaction.
    fn abort(self: Box<Self>);
}
