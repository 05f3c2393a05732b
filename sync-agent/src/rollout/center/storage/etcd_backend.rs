//! [`EtcdStorage`]: the center's state in an etcd cluster
//! (`store = "etcd"`), so it outlives any one machine.
//!
//! Keys under the configured prefix `P` (values JSON, as on redb):
//!
//! ```text
//! P current/ns/group/name                -> current version (decimal)
//! P history/ns/group/name/<version:020>  -> ConfigRecord
//! P audit/<seq:020>                      -> AuditEntry
//! P audit-last                           -> last audit sequence (decimal)
//! P rollout/devices/<device>             -> DeviceState
//! P rollout/rollouts/<id:020>            -> RolloutEntry
//! P rollout/meta                         -> EngineMeta
//! ```
//!
//! Numbers in keys are zero-padded so etcd's byte order is numeric order;
//! names never contain '/', so `history/n/g/a/` never matches `n/g/ab`.
//!
//! A transaction (read snapshot or write) reads at one revision: the first
//! read fixes it, every later read asks for it. A write transaction
//! records each key it read with the `mod_revision` it saw (0: absent) and
//! each range it scanned, buffers its writes (later reads in it see them),
//! and commits them in one etcd `Txn` whose compares require every key read
//! unchanged and no key of a scanned range modified since: if another
//! writer got there first nothing is written and the commit is refused
//! ([`CenterError::Conflict`]). A config's history is only changed
//! together with its `current/` key, which every such change reads, so a
//! deletion inside a scanned history range (which a range compare cannot
//! see) is caught by that key. The audit sequence is the guarded counter
//! `audit-last`. What the rollout engine saves is written blind: the engine
//! is the only writer of those keys.
//!
//! etcd commits only once a quorum has the change in its log (fsynced), so
//! every commit is durable; [`CenterStorage::begin_write`]'s `durable` has
//! nothing to relax. A group commit is one `Txn`: etcd must allow as many
//! operations per transaction as a batch writes (`--max-txn-ops`, default
//! 128) and requests that large (`--max-request-bytes`, default 1.5 MiB).
//!
//! The client is async (tonic); the storage traits block. The client lives
//! on a small runtime of its own, and each call blocks the caller (the
//! writer thread, a blocking thread, or the start-up) until that runtime
//! has the answer, so no async task of the center ever waits on etcd.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};
use serde::de::DeserializeOwned;

use super::{CenterStorage, StorageRead, StorageTxn, Stored};
use crate::rollout::center::engine::{Changes, EngineMeta};
use crate::rollout::center::error::{CenterError, CenterResult};
use crate::rollout::center::store::AuditEntry;
use crate::rollout::wire::{ConfigKey, ConfigRecord};

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take (a commit waits for a quorum's fsync).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The center's state in etcd.
pub struct EtcdStorage {
    kv: KvClient,
    /// Runs the client; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    prefix: String,
    endpoints: String,
}

/// The exclusive end of the range of keys starting with `prefix` (which
/// ends with '/': the next byte is '0').
fn prefix_end(prefix: &str) -> String {
    debug_assert!(prefix.ends_with('/'));
    format!("{}0", &prefix[..prefix.len() - 1])
}

/// A value and the `mod_revision` it was read at.
type Versioned = (String, i64);

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> CenterResult<T> {
    serde_json::from_str(json)
        .map_err(|e| CenterError::Internal(format!("etcd store: corrupt {what}: {e}")))
}

fn decode_number(what: &str, text: &str) -> CenterResult<u64> {
    text.parse()
        .map_err(|e| CenterError::Internal(format!("etcd store: corrupt {what} {text:?}: {e}")))
}

impl EtcdStorage {
    /// Connects to the cluster at `endpoints` (client URLs), keeping every
    /// key under `prefix` (ends with '/'), and reads once so that an
    /// unreachable cluster fails here, named.
    pub fn connect(endpoints: &[String], prefix: &str) -> CenterResult<EtcdStorage> {
        let named = endpoints.join(",");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("center-etcd")
            .enable_all()
            .build()
            .map_err(|e| CenterError::internal("etcd store: starting its runtime", e))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let urls = endpoints.to_vec();
        let client = block_on(&runtime, async move {
            Client::connect(urls, Some(options)).await
        })?
        .map_err(|e| CenterError::internal(&format!("etcd {named}: connecting"), e))?;
        let storage = EtcdStorage {
            kv: client.kv_client(),
            runtime: Some(runtime),
            prefix: prefix.to_string(),
            endpoints: named,
        };
        storage.get(&storage.key("audit-last"), 0)?;
        Ok(storage)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn current_key(&self, key: &ConfigKey) -> String {
        self.key(&format!("current/{key}"))
    }

    fn history_prefix(&self, key: &ConfigKey) -> String {
        self.key(&format!("history/{key}/"))
    }

    fn history_key(&self, key: &ConfigKey, version: u64) -> String {
        format!("{}{version:020}", self.history_prefix(key))
    }

    fn audit_key(&self, seq: u64) -> String {
        self.key(&format!("audit/{seq:020}"))
    }

    /// Runs `call` on the client's runtime and waits for it.
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> CenterResult<T> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| CenterError::Internal("etcd store: closed".into()))?;
        block_on(runtime, call)?
            .map_err(|e| CenterError::internal(&format!("etcd {}: {what}", self.endpoints), e))
    }

    /// `key`'s value and mod_revision at `revision` (0: the newest), and
    /// the revision read.
    fn get(&self, key: &str, revision: i64) -> CenterResult<(Option<Versioned>, i64)> {
        let mut kv = self.kv.clone();
        let (k, options) = (key.to_string(), GetOptions::new().with_revision(revision));
        let answer = self.call("read", async move { kv.get(k, Some(options)).await })?;
        let read_at = answer.header().map_or(0, |h| h.revision());
        let found = match answer.kvs().first() {
            Some(kv) => Some((
                kv.value_str()
                    .map_err(|e| CenterError::internal(&format!("etcd store: {key}"), e))?
                    .to_string(),
                kv.mod_revision(),
            )),
            None => None,
        };
        Ok((found, if revision == 0 { read_at } else { revision }))
    }

    /// Keys and values in `[start, end)` at `revision` (0: the newest), in
    /// key order, at most `limit` (0: all), and the revision read.
    fn range(
        &self,
        start: &str,
        end: &str,
        revision: i64,
        limit: usize,
    ) -> CenterResult<(Vec<(String, String)>, i64)> {
        let mut kv = self.kv.clone();
        let options = GetOptions::new()
            .with_range(end)
            .with_revision(revision)
            .with_limit(limit as i64);
        let k = start.to_string();
        let answer = self.call("scan", async move { kv.get(k, Some(options)).await })?;
        let read_at = answer.header().map_or(0, |h| h.revision());
        let rows = answer
            .kvs()
            .iter()
            .map(|kv| match (kv.key_str(), kv.value_str()) {
                (Ok(k), Ok(v)) => Ok((k.to_string(), v.to_string())),
                _ => Err(CenterError::Internal(format!(
                    "etcd store: a key or value under {start} is not UTF-8"
                ))),
            })
            .collect::<CenterResult<_>>()?;
        Ok((rows, if revision == 0 { read_at } else { revision }))
    }
}

/// Runs `work` on `runtime` and blocks this thread until it is done (from
/// any thread but the runtime's own).
fn block_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> CenterResult<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv()
        .map_err(|_| CenterError::Internal("etcd store: its runtime stopped".into()))
}

impl Drop for EtcdStorage {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async context
        // (a center dropped by a task): let it stop in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl CenterStorage for EtcdStorage {
    fn describe(&self) -> String {
        format!("etcd {} prefix {}", self.endpoints, self.prefix)
    }

    fn begin_read(&self) -> CenterResult<Box<dyn StorageRead + '_>> {
        Ok(Box::new(EtcdTxn::new(self)))
    }

    fn begin_write(&self, _durable: bool) -> CenterResult<Box<dyn StorageTxn + '_>> {
        Ok(Box::new(EtcdTxn::new(self)))
    }
}

/// A read snapshot or a write transaction (one type: a snapshot is a
/// transaction that never commits).
struct EtcdTxn<'a> {
    storage: &'a EtcdStorage,
    /// The revision every read asks for; 0 until the first read fixes it.
    revision: i64,
    /// Keys read from etcd, with the mod_revision seen (0: absent).
    reads: BTreeMap<String, i64>,
    /// Ranges scanned, start -> end.
    scanned: BTreeMap<String, String>,
    /// Buffered writes: `None` deletes.
    writes: BTreeMap<String, Option<String>>,
}

impl<'a> EtcdTxn<'a> {
    fn new(storage: &'a EtcdStorage) -> Self {
        EtcdTxn {
            storage,
            revision: 0,
            reads: BTreeMap::new(),
            scanned: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// `key`'s value as this transaction sees it.
    fn get(&mut self, key: &str) -> CenterResult<Option<String>> {
        if let Some(written) = self.writes.get(key) {
            return Ok(written.clone());
        }
        let (found, revision) = self.storage.get(key, self.revision)?;
        self.revision = revision;
        self.reads
            .insert(key.to_string(), found.as_ref().map_or(0, |(_, rev)| *rev));
        Ok(found.map(|(value, _)| value))
    }

    /// Keys (and values) starting with `prefix` as this transaction sees
    /// them, in key order, at most `limit` (0: all). With a limit, the
    /// buffered writes may only add keys after those stored (true of the
    /// audit log, the one limited scan), else the result may be short.
    fn scan(&mut self, prefix: &str, limit: usize) -> CenterResult<Vec<(String, String)>> {
        self.scan_range(prefix, &prefix_end(prefix), limit)
    }

    fn scan_range(
        &mut self,
        start: &str,
        end: &str,
        limit: usize,
    ) -> CenterResult<Vec<(String, String)>> {
        let (rows, revision) = self.storage.range(start, end, self.revision, limit)?;
        self.revision = revision;
        self.scanned.insert(start.to_string(), end.to_string());
        let mut seen: BTreeMap<String, String> = rows.into_iter().collect();
        for (key, value) in self.writes.range(start.to_string()..end.to_string()) {
            match value {
                Some(value) => seen.insert(key.clone(), value.clone()),
                None => seen.remove(key),
            };
        }
        let mut out: Vec<_> = seen.into_iter().collect();
        if limit > 0 {
            out.truncate(limit);
        }
        Ok(out)
    }

    fn put(&mut self, key: String, value: String) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: String) {
        self.writes.insert(key, None);
    }
}

impl StorageRead for EtcdTxn<'_> {
    fn current_version(&mut self, key: &ConfigKey) -> CenterResult<Option<u64>> {
        let name = self.storage.current_key(key);
        self.get(&name)?
            .map(|v| decode_number(&name, &v))
            .transpose()
    }

    fn version(&mut self, key: &ConfigKey, version: u64) -> CenterResult<Option<ConfigRecord>> {
        let name = self.storage.history_key(key, version);
        self.get(&name)?.map(|v| decode(&name, &v)).transpose()
    }

    fn versions(&mut self, key: &ConfigKey) -> CenterResult<Vec<ConfigRecord>> {
        // The guard of the history (see the module doc).
        self.get(&self.storage.current_key(key))?;
        let prefix = self.storage.history_prefix(key);
        self.scan(&prefix, 0)?
            .iter()
            .map(|(name, json)| decode(name, json))
            .collect()
    }

    fn namespace_in_use(&mut self, namespace: &str) -> CenterResult<bool> {
        let prefix = self.storage.key(&format!("current/{namespace}/"));
        Ok(!self.scan(&prefix, 0)?.is_empty())
    }

    fn current_records(&mut self, namespace: Option<&str>) -> CenterResult<Vec<ConfigRecord>> {
        let root = self.storage.key("current/");
        let prefix = match namespace {
            Some(ns) => format!("{root}{ns}/"),
            None => root.clone(),
        };
        let mut out = Vec::new();
        for (name, version) in self.scan(&prefix, 0)? {
            let key: ConfigKey = name[root.len()..].parse().map_err(|e| {
                CenterError::Internal(format!("etcd store: corrupt key {name}: {e}"))
            })?;
            let version = decode_number(&name, &version)?;
            let record = self.version(&key, version)?.ok_or_else(|| {
                CenterError::Internal(format!(
                    "etcd store: {key} version {version} is current but has no history row"
                ))
            })?;
            out.push(record);
        }
        Ok(out)
    }

    fn audit(&mut self, after: u64, limit: usize) -> CenterResult<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = self.storage.audit_key(after.saturating_add(1));
        let end = prefix_end(&self.storage.key("audit/"));
        self.scan_range(&start, &end, limit)?
            .iter()
            .map(|(name, json)| decode(name, json))
            .collect()
    }

    fn rollout_state(&mut self) -> CenterResult<Stored> {
        let devices_prefix = self.storage.key("rollout/devices/");
        let mut devices = Vec::new();
        for (name, json) in self.scan(&devices_prefix, 0)? {
            let device = name[devices_prefix.len()..].to_string();
            devices.push((device, decode(&name, &json)?));
        }
        let mut rollouts = Vec::new();
        for (name, json) in self.scan(&self.storage.key("rollout/rollouts/"), 0)? {
            rollouts.push(decode(&name, &json)?);
        }
        let meta_key = self.storage.key("rollout/meta");
        let meta = match self.get(&meta_key)? {
            Some(json) => decode(&meta_key, &json)?,
            None => EngineMeta::default(),
        };
        Ok((devices, rollouts, meta))
    }
}

impl StorageTxn for EtcdTxn<'_> {
    fn write_version(&mut self, record: &ConfigRecord) -> CenterResult<()> {
        let json = serde_json::to_string(record).expect("a ConfigRecord always serializes");
        self.put(self.storage.history_key(&record.key, record.version), json);
        self.put(
            self.storage.current_key(&record.key),
            record.version.to_string(),
        );
        Ok(())
    }

    fn remove_versions_before(&mut self, key: &ConfigKey, oldest_kept: u64) -> CenterResult<()> {
        self.get(&self.storage.current_key(key))?;
        let start = self.storage.history_prefix(key);
        let end = self.storage.history_key(key, oldest_kept);
        for (name, _) in self.scan_range(&start, &end, 0)? {
            self.delete(name);
        }
        Ok(())
    }

    fn remove_config(&mut self, key: &ConfigKey) -> CenterResult<()> {
        let current = self.storage.current_key(key);
        self.get(&current)?;
        for (name, _) in self.scan(&self.storage.history_prefix(key), 0)? {
            self.delete(name);
        }
        self.delete(current);
        Ok(())
    }

    fn append_audit(&mut self, mut entry: AuditEntry) -> CenterResult<u64> {
        let last_key = self.storage.key("audit-last");
        let last = match self.get(&last_key)? {
            Some(text) => decode_number(&last_key, &text)?,
            None => 0,
        };
        entry.seq = last + 1;
        let json = serde_json::to_string(&entry).expect("an AuditEntry always serializes");
        self.put(self.storage.audit_key(entry.seq), json);
        self.put(last_key, entry.seq.to_string());
        Ok(entry.seq)
    }

    fn save_rollout(&mut self, changes: &Changes) -> CenterResult<()> {
        for (name, state) in &changes.devices {
            let key = self.storage.key(&format!("rollout/devices/{name}"));
            match state {
                Some(json) => self.put(key, json.clone()),
                None => self.delete(key),
            }
        }
        for (id, entry) in &changes.rollouts {
            let key = self.storage.key(&format!("rollout/rollouts/{id:020}"));
            match entry {
                Some(json) => self.put(key, json.clone()),
                None => self.delete(key),
            }
        }
        if let Some(meta) = &changes.meta {
            self.put(self.storage.key("rollout/meta"), meta.clone());
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> CenterResult<()> {
        let EtcdTxn {
            storage,
            revision,
            reads,
            scanned,
            writes,
        } = *self;
        if writes.is_empty() {
            return Ok(());
        }
        let mut compares: Vec<Compare> = reads
            .into_iter()
            .map(|(key, seen)| Compare::mod_revision(key, CompareOp::Equal, seen))
            .collect();
        compares.extend(scanned.into_iter().map(|(start, end)| {
            Compare::mod_revision(start, CompareOp::Less, revision + 1).with_range(end)
        }));
        let (count, bytes) = (
            writes.len(),
            writes
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
                .sum::<usize>(),
        );
        let ops: Vec<TxnOp> = writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(key, value, None),
                None => TxnOp::delete(key, None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let mut kv = storage.kv.clone();
        let answer = storage
            .call(
                &format!(
                    "commit ({count} writes, {bytes} bytes; etcd must allow that many in one transaction: --max-txn-ops, --max-request-bytes)"
                ),
                async move { kv.txn(txn).await },
            )?;
        if answer.succeeded() {
            Ok(())
        } else {
            Err(CenterError::Conflict(format!(
                "etcd {}: the store changed under this change (another writer committed first); nothing was written, try again",
                storage.endpoints
            )))
        }
    }

    fn abort(self: Box<Self>) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::rollout::center::storage::conformance::conformance_tests;

    /// A single-member etcd from the Debian package `etcd-server`, in a
    /// temp dir on free loopback ports; killed on drop.
    pub(crate) struct Etcd {
        child: Child,
        pub(crate) url: String,
        dir: tempfile::TempDir,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Etcd {
        pub(crate) fn start() -> Etcd {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let child = Command::new("etcd")
                .arg("--name=test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=test={peer}"))
                // A group commit of many changes is one transaction.
                .arg("--max-txn-ops=100000")
                .arg("--max-request-bytes=33554432")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("starting etcd (Debian package etcd-server; `cargo xtask setup` installs it): {e}")
                });
            let mut etcd = Etcd { child, url, dir };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(storage) =
                    EtcdStorage::connect(std::slice::from_ref(&etcd.url), "/probe/")
                {
                    drop(storage);
                    return etcd;
                }
                if let Ok(Some(status)) = etcd.child.try_wait() {
                    panic!("etcd exited ({status}): {}", etcd.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd at {} not ready in 30 s: {}",
                    etcd.url,
                    etcd.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn fresh() -> (Etcd, Arc<dyn CenterStorage>) {
        let etcd = Etcd::start();
        let storage =
            EtcdStorage::connect(std::slice::from_ref(&etcd.url), "/test/center/").unwrap();
        (etcd, Arc::new(storage))
    }

    conformance_tests!(fresh());

    /// The optimistic guard: a transaction whose reads another writer
    /// changed before its commit writes nothing and says so.
    #[test]
    fn a_transaction_whose_reads_changed_meanwhile_commits_nothing() {
        let (_etcd, storage) = fresh();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let record = |version: u64, content: &str| ConfigRecord {
            key: key.clone(),
            format: crate::rollout::wire::Format::Text,
            content: content.into(),
            description: String::new(),
            version,
            md5: crate::rollout::wire::md5_hex(content),
            updated_ms: 1,
            author: "a".into(),
        };
        let mut slow = storage.begin_write(true).unwrap();
        assert_eq!(slow.current_version(&key).unwrap(), None);
        let mut fast = storage.begin_write(true).unwrap();
        assert_eq!(fast.current_version(&key).unwrap(), None);
        fast.write_version(&record(1, "fast")).unwrap();
        fast.commit().unwrap();
        slow.write_version(&record(1, "slow")).unwrap();
        slow.append_audit(AuditEntry {
            seq: 0,
            time_ms: 1,
            identity: "slow".into(),
            action: "put".into(),
            key: key.to_string(),
            version: 1,
            md5: String::new(),
            rollout: None,
            device: None,
            removed: Vec::new(),
        })
        .unwrap();
        let e = slow.commit().unwrap_err();
        assert!(
            matches!(&e, CenterError::Conflict(m) if m.contains("another writer committed first")),
            "{e}"
        );
        let mut reads = storage.begin_read().unwrap();
        assert_eq!(reads.version(&key, 1).unwrap().unwrap().content, "fast");
        assert!(reads.audit(0, 10).unwrap().is_empty(), "nothing of slow");
    }

    /// The whole center on etcd: configs, devices and a rollout paused for
    /// approval are where they were after the center is reopened.
    #[tokio::test]
    async fn a_center_on_etcd_keeps_configs_devices_and_rollouts_across_a_reopen() {
        use crate::rollout::center::{Center, CenterConfig, RolloutOptions, StoreKind};
        use crate::rollout::wire::{
            Ack, Format, PutConfig, Register, RolloutState, ServiceRegistration,
        };
        let etcd = Etcd::start();
        let config = CenterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            db_path: etcd.dir.path().join("unused.redb"),
            store: StoreKind::Etcd,
            etcd_endpoints: vec![etcd.url.clone()],
            etcd_prefix: Some("/centers/a/".into()),
            ..Default::default()
        };
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let center = Center::open(&config).unwrap();
        assert!(center.store_description().starts_with("etcd "));
        for d in ["d1", "d2"] {
            let services = vec![ServiceRegistration {
                name: "s".into(),
                config: key.clone(),
                depends_on: vec![],
            }];
            let registration = Register {
                services,
                ..Default::default()
            };
            center.register(d.into(), registration).await.unwrap();
        }
        let put = |content: &str| PutConfig {
            format: Format::Text,
            content: content.into(),
            description: String::new(),
            author: "alice".into(),
        };
        center
            .put(key.clone(), put("one"), RolloutOptions::default())
            .await
            .unwrap();
        let approve = RolloutOptions {
            batch_size: Some(1),
            approve_each_batch: true,
            ..Default::default()
        };
        let record = center.put(key.clone(), put("two"), approve).await.unwrap();
        assert_eq!(record.version, 2);
        let id = center.rollouts().await.unwrap()[0].id;
        let first = center.rollout(id).await.unwrap().batches[0][0]
            .device
            .clone();
        let ack = Ack {
            rollout_id: id,
            service: "s".into(),
            version: 2,
            ok: true,
            reason: String::new(),
        };
        center.ack(&first, &ack).await.unwrap();
        let paused = center.rollout(id).await.unwrap();
        assert_eq!(paused.state, RolloutState::Paused, "{paused:?}");
        let before = (
            center.rollouts().await.unwrap(),
            center.history(key.clone()).await.unwrap(),
            center.audit(0, 100).await.unwrap(),
        );
        assert!(!center.store_description().contains("redb"));
        drop(center);
        assert!(!config.db_path.exists(), "nothing went to redb");

        let center = Center::open(&config).unwrap();
        let after = (
            center.rollouts().await.unwrap(),
            center.history(key.clone()).await.unwrap(),
            center.audit(0, 100).await.unwrap(),
        );
        assert_eq!(after, before);
        assert_eq!(after.2.len(), 2, "two puts audited");
        assert_eq!(center.devices().await.unwrap().len(), 2);
        // The other device is not given version 2 while the rollout waits
        // for approval, after the reopen as before it.
        let other = if first == "d1" { "d2" } else { "d1" };
        let have = HashMap::from([("s".to_string(), crate::rollout::wire::md5_hex("one"))]);
        let got = center
            .watch(other, &have, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(got.is_empty(), "{got:?}");
        center.resume(id, "bob".into()).await.unwrap();
        let got = center
            .watch(other, &have, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "released after the approval");
        assert_eq!(got[0].version, 2);
    }
}
