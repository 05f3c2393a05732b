//! What every [`CenterStorage`] must do, written once against the traits:
//! each function checks one behaviour on a fresh, empty store, and each
//! implementation runs all of them on itself (see the tests of
//! [`super::redb_backend`]), so a second implementation is held to exactly
//! the contract the center relies on.

use std::collections::HashMap;

use super::{CenterStorage, StorageRead, StorageTxn};
use crate::rollout::center::engine::{Changes, Engine, PlanOptions};
use crate::rollout::center::store::AuditEntry;
use crate::rollout::wire::{ConfigKey, ConfigRecord, Format, Register, ServiceRegistration};

/// Defines one `#[test]` per check below, each on a fresh store made by
/// `$fresh`, an expression giving `(guard, storage)`: the guard (a temp
/// dir, a server) lives as long as the test.
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::rollout::center::storage::conformance::conformance_tests!(
            @each $fresh;
            versions_and_history,
            a_transaction_sees_its_writes_and_others_see_them_only_once_committed,
            abort_and_drop_keep_nothing,
            trimming_and_removing_a_config,
            namespaces_are_matched_whole_and_listed_sorted,
            audit_numbers_continue_across_transactions,
            rollout_state_round_trips_and_deletes
        );
    };
    (@each $fresh:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                let (_guard, storage) = $fresh;
                $crate::rollout::center::storage::conformance::$check(&*storage);
            }
        )*
    };
}
pub(crate) use conformance_tests;

fn key(s: &str) -> ConfigKey {
    s.parse().unwrap()
}

fn record(k: &str, version: u64, content: &str) -> ConfigRecord {
    ConfigRecord {
        key: key(k),
        format: Format::Text,
        content: content.into(),
        description: format!("v{version}"),
        version,
        md5: crate::rollout::wire::md5_hex(content),
        updated_ms: version * 10,
        author: "conformance".into(),
    }
}

fn entry(action: &str, k: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        time_ms: 1,
        identity: "conformance".into(),
        action: action.into(),
        key: k.into(),
        version: 1,
        md5: String::new(),
        rollout: None,
        device: None,
        removed: Vec::new(),
    }
}

fn commit(storage: &dyn CenterStorage, op: impl FnOnce(&mut dyn StorageTxn)) {
    let mut txn = storage.begin_write(true).unwrap();
    op(&mut *txn);
    txn.commit().unwrap();
}

fn read(storage: &dyn CenterStorage) -> Box<dyn StorageRead + '_> {
    storage.begin_read().unwrap()
}

fn versions_of(reads: &mut dyn StorageRead, k: &str) -> Vec<u64> {
    reads
        .versions(&key(k))
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect()
}

/// Written versions come back whole, the newest is current, and a key's
/// history is its versions only, oldest first.
pub fn versions_and_history(storage: &dyn CenterStorage) {
    let (a, b) = ("n/g/a", "n/g/ab");
    commit(storage, |txn| {
        txn.write_version(&record(a, 1, "one")).unwrap();
        txn.write_version(&record(b, 1, "other")).unwrap();
    });
    commit(storage, |txn| {
        txn.write_version(&record(a, 2, "two")).unwrap()
    });
    let mut reads = read(storage);
    assert_eq!(reads.current_version(&key(a)).unwrap(), Some(2));
    assert_eq!(reads.current_version(&key("n/g/none")).unwrap(), None);
    assert_eq!(
        reads.version(&key(a), 1).unwrap(),
        Some(record(a, 1, "one"))
    );
    assert_eq!(reads.version(&key(a), 3).unwrap(), None);
    assert_eq!(versions_of(&mut *reads, a), [1, 2]);
    assert_eq!(versions_of(&mut *reads, b), [1]);
    assert!(reads.versions(&key("n/g/none")).unwrap().is_empty());
}

/// Inside a transaction, reads see its own earlier writes (a group commit
/// registers a device against a version put earlier in the same batch);
/// a snapshot taken before the commit does not see them.
pub fn a_transaction_sees_its_writes_and_others_see_them_only_once_committed(
    storage: &dyn CenterStorage,
) {
    let k = "n/g/k";
    let mut txn = storage.begin_write(true).unwrap();
    txn.write_version(&record(k, 1, "one")).unwrap();
    assert_eq!(txn.current_version(&key(k)).unwrap(), Some(1));
    assert_eq!(txn.version(&key(k), 1).unwrap(), Some(record(k, 1, "one")));
    assert!(txn.namespace_in_use("n").unwrap());
    let seq = txn.append_audit(entry("put", k)).unwrap();
    assert_eq!(txn.audit(0, 10).unwrap()[0].seq, seq);
    {
        let mut before = read(storage);
        assert_eq!(before.current_version(&key(k)).unwrap(), None);
        assert!(before.audit(0, 10).unwrap().is_empty());
    }
    txn.commit().unwrap();
    let mut after = read(storage);
    assert_eq!(after.current_version(&key(k)).unwrap(), Some(1));
    assert_eq!(after.audit(0, 10).unwrap().len(), 1);
}

/// An aborted or dropped transaction leaves nothing, of any kind.
pub fn abort_and_drop_keep_nothing(storage: &dyn CenterStorage) {
    let mut engine = Engine::new();
    let changes = one_device_one_rollout(&mut engine);
    for abort in [true, false] {
        let mut txn = storage.begin_write(true).unwrap();
        txn.write_version(&record("n/g/k", 1, "one")).unwrap();
        txn.append_audit(entry("put", "n/g/k")).unwrap();
        txn.save_rollout(&changes).unwrap();
        if abort {
            txn.abort();
        } else {
            drop(txn);
        }
        let mut reads = read(storage);
        assert_eq!(reads.current_version(&key("n/g/k")).unwrap(), None);
        assert!(reads.current_records(None).unwrap().is_empty());
        assert!(reads.audit(0, 10).unwrap().is_empty());
        let (devices, rollouts, meta) = reads.rollout_state().unwrap();
        assert!(devices.is_empty() && rollouts.is_empty());
        assert_eq!(meta, Default::default());
    }
}

/// `remove_versions_before` trims only that key's older rows;
/// `remove_config` takes the key and all its history, nothing else.
pub fn trimming_and_removing_a_config(storage: &dyn CenterStorage) {
    let (k, other) = ("n/g/k", "n/g/k2");
    commit(storage, |txn| {
        for v in 1..=4 {
            txn.write_version(&record(k, v, &format!("c{v}"))).unwrap();
            txn.write_version(&record(other, v, &format!("o{v}")))
                .unwrap();
        }
    });
    commit(storage, |txn| {
        txn.remove_versions_before(&key(k), 3).unwrap();
        assert_eq!(versions_of(txn, k), [3, 4], "seen inside the transaction");
    });
    let mut reads = read(storage);
    assert_eq!(versions_of(&mut *reads, k), [3, 4]);
    assert_eq!(reads.current_version(&key(k)).unwrap(), Some(4));
    assert_eq!(versions_of(&mut *reads, other), [1, 2, 3, 4]);
    drop(reads);

    commit(storage, |txn| txn.remove_config(&key(k)).unwrap());
    let mut reads = read(storage);
    assert_eq!(reads.current_version(&key(k)).unwrap(), None);
    assert!(reads.versions(&key(k)).unwrap().is_empty());
    assert_eq!(versions_of(&mut *reads, other), [1, 2, 3, 4]);
    drop(reads);
    // A config made again under the name starts afresh.
    commit(storage, |txn| {
        txn.write_version(&record(k, 1, "again")).unwrap()
    });
    assert_eq!(versions_of(&mut *read(storage), k), [1]);
}

/// A namespace is matched as a whole name (`prod` is not `prod.eu` or
/// `prodx`); listings hold each config's current record, sorted by key.
pub fn namespaces_are_matched_whole_and_listed_sorted(storage: &dyn CenterStorage) {
    commit(storage, |txn| {
        for (k, content) in [
            ("prod/web/b", "1"),
            ("prod/web/a", "2"),
            ("prod.eu/web/a", "3"),
            ("prodx/web/a", "4"),
            ("pro/web/a", "5"),
        ] {
            txn.write_version(&record(k, 1, content)).unwrap();
        }
        txn.write_version(&record("prod/web/a", 2, "2b")).unwrap();
    });
    let mut reads = read(storage);
    let names = |records: Vec<ConfigRecord>| {
        records
            .into_iter()
            .map(|r| format!("{}@{}={}", r.key, r.version, r.content))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(reads.current_records(Some("prod")).unwrap()),
        ["prod/web/a@2=2b", "prod/web/b@1=1"]
    );
    assert_eq!(
        names(reads.current_records(None).unwrap()),
        [
            "pro/web/a@1=5",
            "prod.eu/web/a@1=3",
            "prod/web/a@2=2b",
            "prod/web/b@1=1",
            "prodx/web/a@1=4"
        ]
    );
    assert!(reads.current_records(Some("pr")).unwrap().is_empty());
    assert!(reads.namespace_in_use("prod").unwrap());
    assert!(reads.namespace_in_use("pro").unwrap());
    assert!(!reads.namespace_in_use("pr").unwrap());
    assert!(!reads.namespace_in_use("prod.e").unwrap());
}

/// Audit sequence numbers are 1, 2, ... across transactions, a read after
/// N starts at N+1, and the limit holds.
pub fn audit_numbers_continue_across_transactions(storage: &dyn CenterStorage) {
    commit(storage, |txn| {
        assert_eq!(txn.append_audit(entry("put", "n/g/a")).unwrap(), 1);
        assert_eq!(txn.append_audit(entry("put", "n/g/b")).unwrap(), 2);
    });
    let mut removed = entry("delete", "n/g/a");
    removed.removed = vec![record("n/g/a", 1, "gone")];
    removed.seq = 77;
    commit(storage, |txn| {
        assert_eq!(txn.append_audit(removed.clone()).unwrap(), 3);
    });
    let mut reads = read(storage);
    let all = reads.audit(0, 100).unwrap();
    assert_eq!(all.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(all[2], AuditEntry { seq: 3, ..removed });
    let tail = reads.audit(1, 1).unwrap();
    assert_eq!((tail.len(), tail[0].seq), (1, 2));
    assert!(reads.audit(3, 10).unwrap().is_empty());
}

/// One registered device and one rollout of a new version: what the engine
/// asks to store (device, rollout and meta records).
fn one_device_one_rollout(engine: &mut Engine) -> Changes {
    let k = key("n/g/k");
    let registration = Register {
        services: vec![ServiceRegistration {
            name: "s".into(),
            config: k.clone(),
            depends_on: vec![],
        }],
        labels: vec![],
    };
    engine.register("d1", registration, &|_| None, 1).unwrap();
    engine.new_version(&k, 1, "m1", &PlanOptions::default(), 2);
    engine.take_changes()
}

/// What the engine stores loads back into an equal engine; a `None` record
/// removes it; a commit not asked to be durable is visible all the same.
pub fn rollout_state_round_trips_and_deletes(storage: &dyn CenterStorage) {
    let mut engine = Engine::new();
    let changes = one_device_one_rollout(&mut engine);
    assert!(!changes.devices.is_empty() && !changes.rollouts.is_empty());
    assert!(changes.meta.is_some());
    let mut txn = storage.begin_write(false).unwrap();
    txn.save_rollout(&changes).unwrap();
    txn.commit().unwrap();

    let (devices, rollouts, meta) = read(storage).rollout_state().unwrap();
    let (restored, _) = Engine::restore(devices, rollouts, meta, 5);
    assert_eq!(restored.rollouts(), engine.rollouts());
    assert_eq!(restored.devices().len(), 1, "{:?}", restored.devices());
    let mut restored = restored;
    let (pending, _) = restored.pending("d1", &HashMap::new(), 6).unwrap();
    assert_eq!(pending.len(), 1);

    let id = engine.rollouts()[0].id;
    let removal = Changes {
        devices: vec![("d1".into(), None)],
        rollouts: vec![(id, None)],
        durable: true,
        ..Changes::default()
    };
    commit(storage, |txn| txn.save_rollout(&removal).unwrap());
    let (devices, rollouts, meta) = read(storage).rollout_state().unwrap();
    assert!(devices.is_empty(), "{devices:?}");
    assert!(rollouts.is_empty());
    assert_eq!(meta.next_id, id, "the meta record stays");
}
