//! The rollout state (registered devices, rollouts with their step states,
//! confirmed versions) in the center's store ([`super::storage`]), beside
//! the configs ([`super::store`]), so a restart, SIGKILL included, resumes
//! every rollout where it was (SPEC 8.4).
//!
//! Three kinds of record, JSON values (the same encoding as the API, so a
//! stored record reads like `config devices` / `config rollouts` output):
//!
//! ```text
//! devices    device name -> DeviceState
//! rollouts   rollout id  -> RolloutEntry
//! meta       "engine"    -> EngineMeta (next rollout id, stable versions)
//! ```
//!
//! A release to a device is stored with its rollout (the step `Assigned`),
//! not in the device's record, which is written when the device answers:
//! releasing a batch writes one record however many devices it holds
//! (`Engine::restore` puts the releases back).
//!
//! A running center writes the [`Changes`] of every change with [`save_in`]
//! inside the transaction of its group commit ([`super::writer`]), the same
//! transaction as the config change that caused them (a put and the rollout
//! it starts are stored together or not at all), and answers the request
//! (and wakes the long polls) only once that transaction is durable. Many
//! changes share one commit, so 10,000 registering devices cost a few dozen
//! commits, not 10,000. [`save`] is the same in a transaction of its own
//! (at start, and for tools).

use super::engine::Changes;
use super::error::CenterResult;
use super::storage::{CenterStorage, StorageTxn};

pub use super::storage::Stored;

/// Reads the stored rollout state.
pub fn load(storage: &dyn CenterStorage) -> CenterResult<Stored> {
    storage.begin_read()?.rollout_state()
}

/// Writes one batch of changes in one transaction of its own: durably
/// unless [`Changes::durable`] says it may wait for the next durable
/// commit. For the center's start and for tools; a running center writes
/// with [`save_in`] inside its group commit.
pub fn save(storage: &dyn CenterStorage, changes: &Changes) -> CenterResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut txn = storage.begin_write(changes.durable)?;
    save_in(&mut *txn, changes)?;
    txn.commit()
}

/// Writes `changes` inside `txn` (the center's group commit, which also
/// holds the config change that caused them, so both are stored or
/// neither).
pub fn save_in(txn: &mut dyn StorageTxn, changes: &Changes) -> CenterResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    txn.save_rollout(changes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rollout::center::engine::{Engine, PlanOptions};
    use crate::rollout::center::storage::redb_backend::RedbStorage;
    use crate::rollout::wire::{ConfigKey, Register, RolloutState, ServiceRegistration};

    #[test]
    fn saved_changes_load_back_into_an_equal_engine() {
        let dir = tempfile::tempdir().unwrap();
        let database = RedbStorage::open(&dir.path().join("r.redb")).unwrap();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let mut engine = Engine::new();
        for d in ["d1", "d2"] {
            let services = vec![ServiceRegistration {
                name: "s".into(),
                config: key.clone(),
                depends_on: vec![],
            }];
            let registration = Register {
                services,
                labels: vec!["rack1".into()],
            };
            engine.register(d, registration, &|_| None, 1).unwrap();
        }
        let options = PlanOptions {
            batch_size: 1,
            approve_each_batch: true,
            ..PlanOptions::default()
        };
        let id = engine.new_version(&key, 1, "m1", &options, 2).0.unwrap();
        save(&database, &engine.take_changes()).unwrap();
        assert!(engine.take_changes().is_empty());

        let (devices, rollouts, meta) = load(&database).unwrap();
        let (mut restored, timers) = Engine::restore(devices, rollouts, meta, 5);
        assert!(timers.is_empty());
        assert_eq!(restored.rollouts(), engine.rollouts());
        let mut a = restored.devices();
        let mut b = engine.devices();
        a.iter_mut().chain(b.iter_mut()).for_each(|d| d.seen_ms = 0);
        assert_eq!(a, b);
        assert_eq!(restored.rollout(id).unwrap().state, RolloutState::Running);
        let (pending, _) = restored.pending("d1", &HashMap::new(), 6).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].rollout_id, id);
        assert!(
            restored
                .pending("d2", &HashMap::new(), 6)
                .unwrap()
                .0
                .is_empty()
        );

        // A removed device is removed from the store too.
        restored.remove_device("d2", 7).unwrap();
        save(&database, &restored.take_changes()).unwrap();
        let (devices, _, meta) = load(&database).unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(meta.next_id, id);
    }
    /// A release is stored with its rollout only (no device record is
    /// written for it); a restart puts it back, a newer rollout's release
    /// winning, and a failed step's restore (stored in the device record)
    /// is not undone by the failed rollout.
    #[test]
    fn releases_stored_with_their_rollout_come_back_after_a_restart() {
        use crate::rollout::wire::Ack;
        let dir = tempfile::tempdir().unwrap();
        let database = RedbStorage::open(&dir.path().join("r.redb")).unwrap();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let mut engine = Engine::new();
        for d in ["d1", "d2", "d3"] {
            let registration = Register {
                services: vec![ServiceRegistration {
                    name: "s".into(),
                    config: key.clone(),
                    depends_on: vec![],
                }],
                labels: vec![],
            };
            engine.register(d, registration, &|_| None, 1).unwrap();
        }
        save(&database, &engine.take_changes()).unwrap();
        let restart = |database: &RedbStorage| {
            let (devices, rollouts, meta) = load(database).unwrap();
            Engine::restore(devices, rollouts, meta, 5).0
        };
        let released = |engine: &mut Engine, device: &str| {
            let (pending, _) = engine.pending(device, &HashMap::new(), 6).unwrap();
            pending
                .iter()
                .map(|a| (a.rollout_id, a.version))
                .collect::<Vec<_>>()
        };
        let options = PlanOptions {
            batch_size: 3,
            ..PlanOptions::default()
        };

        let v1 = engine.new_version(&key, 1, "m1", &options, 2).0.unwrap();
        let changes = engine.take_changes();
        assert!(changes.devices.is_empty(), "{:?}", changes.devices);
        assert_eq!(changes.rollouts.len(), 1);
        save(&database, &changes).unwrap();
        let mut restored = restart(&database);
        for d in ["d1", "d2", "d3"] {
            assert_eq!(released(&mut restored, d), [(v1, 1)], "{d}");
        }

        // d1 applies v1; v2 supersedes v1 and is released to everyone.
        let ack = |id, version, ok| Ack {
            rollout_id: id,
            service: "s".into(),
            version,
            ok,
            reason: String::new(),
        };
        engine.ack("d1", &ack(v1, 1, true), 3).unwrap();
        save(&database, &engine.take_changes()).unwrap();
        let v2 = engine.new_version(&key, 2, "m2", &options, 4).0.unwrap();
        save(&database, &engine.take_changes()).unwrap();
        let mut restored = restart(&database);
        for d in ["d1", "d2", "d3"] {
            assert_eq!(released(&mut restored, d), [(v2, 2)], "{d}");
        }

        // d2 fails v2: it is given back v1 (still unacknowledged there).
        engine.ack("d2", &ack(v2, 2, false), 5).unwrap();
        save(&database, &engine.take_changes()).unwrap();
        let mut restored = restart(&database);
        assert_eq!(released(&mut restored, "d2"), [(v1, 1)]);
        assert_eq!(released(&mut restored, "d3"), [(v2, 2)]);
        let mut live = engine;
        assert_eq!(
            released(&mut live, "d2"),
            [(v1, 1)],
            "as before the restart"
        );
    }
}
