//! The rollout state (registered devices, rollouts with their step states,
//! confirmed versions) in the center's redb database, beside the configs
//! ([`super::store`]), so a restart, SIGKILL included, resumes every rollout
//! where it was (SPEC 8.4).
//!
//! Three tables, JSON values (the same encoding as the API, so a stored
//! record reads like `config devices` / `config rollouts` output):
//!
//! ```text
//! rollout_devices  device name -> DeviceState
//! rollouts         rollout id  -> RolloutEntry
//! rollout_meta     "engine"    -> EngineMeta (next rollout id, stable versions)
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
//! it starts are on disk together or not at all), and answers the request
//! (and wakes the long polls) only once that transaction is fsynced. Many
//! changes share one fsync, so 10,000 registering devices cost a few dozen
//! commits, not 10,000. [`save`] is the same in a transaction of its own
//! (at start, and for tools).

use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::engine::{Changes, DeviceState, EngineMeta, RolloutEntry};
use super::error::{CenterError, CenterResult};

const DEVICES: TableDefinition<&str, &str> = TableDefinition::new("rollout_devices");
const ROLLOUTS: TableDefinition<u64, &str> = TableDefinition::new("rollouts");
const META: TableDefinition<&str, &str> = TableDefinition::new("rollout_meta");
const META_KEY: &str = "engine";

fn err(context: &'static str) -> impl Fn(redb::Error) -> CenterError {
    move |e| CenterError::internal(context, e)
}

fn db<T, E: Into<redb::Error>>(r: Result<T, E>, context: &'static str) -> CenterResult<T> {
    r.map_err(|e| err(context)(e.into()))
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> CenterResult<T> {
    serde_json::from_str(json)
        .map_err(|e| CenterError::Internal(format!("rollout store: corrupt {what}: {e}")))
}

/// Everything stored: devices, rollouts (by id) and the engine's meta.
pub type Stored = (Vec<(String, DeviceState)>, Vec<RolloutEntry>, EngineMeta);

/// Reads the stored rollout state (creating the tables on first use).
pub fn load(database: &Database) -> CenterResult<Stored> {
    let txn = db(database.begin_write(), "rollout store: begin")?;
    db(txn.open_table(DEVICES), "rollout store: devices table")?;
    db(txn.open_table(ROLLOUTS), "rollout store: rollouts table")?;
    db(txn.open_table(META), "rollout store: meta table")?;
    db(txn.commit(), "rollout store: commit")?;

    let txn = db(database.begin_read(), "rollout store: begin read")?;
    let mut devices = Vec::new();
    let table = db(txn.open_table(DEVICES), "rollout store: devices table")?;
    for row in db(table.iter(), "rollout store: devices")? {
        let (name, json) = db(row, "rollout store: device row")?;
        let name = name.value().to_string();
        let state = decode(&format!("device {name}"), json.value())?;
        devices.push((name, state));
    }
    let mut rollouts = Vec::new();
    let table = db(txn.open_table(ROLLOUTS), "rollout store: rollouts table")?;
    for row in db(table.iter(), "rollout store: rollouts")? {
        let (id, json) = db(row, "rollout store: rollout row")?;
        rollouts.push(decode(&format!("rollout {}", id.value()), json.value())?);
    }
    let table = db(txn.open_table(META), "rollout store: meta table")?;
    let meta = match db(table.get(META_KEY), "rollout store: meta")? {
        Some(json) => decode("engine meta", json.value())?,
        None => EngineMeta::default(),
    };
    Ok((devices, rollouts, meta))
}

/// Writes one batch of changes in one transaction of its own: durably (one
/// fsync) unless [`Changes::durable`] says it may wait for the next durable
/// commit. For the center's start and for tools; a running center writes
/// with [`save_in`] inside its group commit.
pub fn save(database: &Database, changes: &Changes) -> CenterResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut txn = db(database.begin_write(), "rollout store: begin")?;
    if !changes.durable {
        db(
            txn.set_durability(Durability::None),
            "rollout store: durability",
        )?;
    }
    save_in(&txn, changes)?;
    db(txn.commit(), "rollout store: commit")
}

/// Writes `changes` inside `txn` (the center's group commit, which also
/// holds the config change that caused them, so both are on disk or
/// neither).
pub fn save_in(txn: &WriteTransaction, changes: &Changes) -> CenterResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut table = db(txn.open_table(DEVICES), "rollout store: devices table")?;
    for (name, state) in &changes.devices {
        match state {
            Some(json) => db(
                table.insert(name.as_str(), json.as_str()),
                "rollout store: write device",
            )?,
            None => db(table.remove(name.as_str()), "rollout store: remove device")?,
        };
    }
    let mut table = db(txn.open_table(ROLLOUTS), "rollout store: rollouts table")?;
    for (id, entry) in &changes.rollouts {
        match entry {
            Some(json) => db(
                table.insert(*id, json.as_str()),
                "rollout store: write rollout",
            )?,
            None => db(table.remove(*id), "rollout store: remove rollout")?,
        };
    }
    if let Some(meta) = &changes.meta {
        let mut table = db(txn.open_table(META), "rollout store: meta table")?;
        db(
            table.insert(META_KEY, meta.as_str()),
            "rollout store: write meta",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rollout::center::engine::{Engine, PlanOptions};
    use crate::rollout::wire::{ConfigKey, Register, RolloutState, ServiceRegistration};

    #[test]
    fn saved_changes_load_back_into_an_equal_engine() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::create(dir.path().join("r.redb")).unwrap();
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
        let database = Database::create(dir.path().join("r.redb")).unwrap();
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
        let restart = |database: &Database| {
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
