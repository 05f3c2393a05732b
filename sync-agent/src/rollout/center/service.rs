//! [`Center`], the one owner of the config center's state: the database, the
//! rollout engine and the long-poll wake-ups. The HTTP API ([`super::http`])
//! and [`super::CenterHandle`] call it.
//!
//! Every change (put, rollback, clone, registration) is serialized by one
//! mutex, written to the database first, then handed to the engine, which
//! plans a rollout and releases its first batch; long polls wait on a
//! per-device `tokio::sync::watch` (no thread per waiting request) and answer
//! as soon as something is released to them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::config::CenterConfig;
use super::engine::{Engine, Timer};
use super::error::{CenterError, CenterResult};
use super::store::{NewVersion, Store, Written};
use super::writer::Writer;
use crate::clock::now_ms;
use crate::rollout::wire::{
    Ack, Assignment, CloneRequest, ConfigKey, ConfigRecord, DeviceInfo, PutConfig, Register,
    RollbackRequest, Rollout,
};

/// Per-change overrides of the rollout's batch size and pace
/// (`?batch_size=&pace_ms=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutOptions {
    /// Most steps per batch instead of the configured `batch_size`.
    pub batch_size: Option<usize>,
    /// Delay between batches instead of the configured `pace_ms`.
    pub pace_ms: Option<u64>,
}

/// The config center: database, rollout engine and long-poll wake-ups.
pub struct Center {
    store: Arc<Store>,
    /// Group commit: every change goes through it, in one total order.
    writer: Writer,
    engine: Mutex<Engine>,
    batch_size: usize,
    pace_ms: u64,
    shutdown: watch::Sender<bool>,
    /// Long polls held right now (see [`Center::waiting_polls`]).
    waiting: AtomicUsize,
    weak: Weak<Center>,
}

/// Counts one held long poll for as long as it lives (a poll whose client
/// went away is dropped by the server, and so uncounted too).
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Center {
    /// Opens the database (creating it and its directory if missing).
    pub fn open(config: &CenterConfig) -> CenterResult<Arc<Center>> {
        let store = Arc::new(
            Store::open(&config.db_path, config.max_config_bytes)?
                .with_keep_versions(config.keep_versions),
        );
        let writer = Writer::spawn(store.clone())?;
        Ok(Arc::new_cyclic(|weak| Center {
            store,
            writer,
            engine: Mutex::new(Engine::new()),
            batch_size: config.batch_size.max(1),
            pace_ms: config.pace_ms,
            shutdown: watch::channel(false).0,
            waiting: AtomicUsize::new(0),
            weak: weak.clone(),
        }))
    }

    /// Largest config content accepted, bytes.
    pub fn max_config_bytes(&self) -> usize {
        self.store.max_config_bytes()
    }

    /// An owned handle for work moved to a blocking thread.
    fn strong(&self) -> CenterResult<Arc<Center>> {
        self.weak
            .upgrade()
            .ok_or_else(|| CenterError::Internal("the config center is shutting down".into()))
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a database operation on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> CenterResult<T> + Send + 'static,
    ) -> CenterResult<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|e| CenterError::internal("config store task", e))?
    }

    fn schedule(&self, timers: Vec<Timer>) {
        for timer in timers {
            let center = self.weak.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(timer.delay_ms)).await;
                if let Some(center) = center.upgrade() {
                    let more = center.engine().fire_timer(timer, now_ms());
                    center.schedule(more);
                }
            });
        }
    }

    fn options(&self, opts: RolloutOptions) -> CenterResult<(usize, u64)> {
        let batch_size = opts.batch_size.unwrap_or(self.batch_size);
        if batch_size == 0 {
            return Err(CenterError::Invalid("batch_size must be at least 1".into()));
        }
        Ok((batch_size, opts.pace_ms.unwrap_or(self.pace_ms)))
    }

    /// Writes a change with `op` and, if it made a new version, starts its
    /// rollout.
    async fn change(
        &self,
        opts: RolloutOptions,
        what: &str,
        op: impl FnOnce(&Store, &redb::WriteTransaction, u64) -> CenterResult<Written> + Send + 'static,
    ) -> CenterResult<ConfigRecord> {
        let (batch_size, pace_ms) = self.options(opts)?;
        let center = self.strong()?;
        // Applied in the writer's next batch; the engine hears of it once the
        // batch is on disk, on the writer thread, in commit order.
        let (record, created, rollout, timers) = self
            .writer
            .write(
                move |store, txn| op(store, txn, now_ms()),
                move |written| {
                    let written = written?;
                    if !written.created {
                        return Ok((written.record, false, None, Vec::new()));
                    }
                    let record = written.record;
                    let (rollout, timers) = center.engine().new_version(
                        &record.key,
                        record.version,
                        &record.md5,
                        batch_size,
                        pace_ms,
                        now_ms(),
                    );
                    Ok((record, true, rollout, timers))
                },
            )
            .await?;
        if !created {
            tracing::info!(
                "config center: {what} {} unchanged (version {})",
                record.key,
                record.version
            );
            return Ok(record);
        }
        self.schedule(timers);
        match rollout {
            Some(id) => tracing::info!(
                "config center: {what} {} version {} (md5 {}), rollout {id} (batch size {batch_size}, pace {pace_ms} ms)",
                record.key,
                record.version,
                record.md5
            ),
            None => tracing::info!(
                "config center: {what} {} version {} (md5 {}), no device uses it",
                record.key,
                record.version,
                record.md5
            ),
        }
        Ok(record)
    }

    /// Adds or edits a config (a no-op if nothing changed).
    pub async fn put(
        &self,
        key: ConfigKey,
        put: PutConfig,
        opts: RolloutOptions,
    ) -> CenterResult<ConfigRecord> {
        self.change(opts, "put", move |store, txn, now| {
            let new = NewVersion {
                format: put.format,
                content: put.content,
                description: put.description,
                author: put.author,
            };
            store.put_in(txn, &key, new, now, "put")
        })
        .await
    }

    /// Makes a new version with the content of an older one.
    pub async fn rollback(
        &self,
        key: ConfigKey,
        request: RollbackRequest,
        opts: RolloutOptions,
    ) -> CenterResult<ConfigRecord> {
        self.change(opts, "rollback", move |store, txn, now| {
            store.rollback_in(txn, &key, request.version, request.author, now)
        })
        .await
    }

    /// Copies the current version to another namespace/group.
    pub async fn clone_config(
        &self,
        key: ConfigKey,
        request: CloneRequest,
        opts: RolloutOptions,
    ) -> CenterResult<ConfigRecord> {
        self.change(opts, "clone", move |store, txn, now| {
            store.clone_in(
                txn,
                &key,
                &request.namespace,
                &request.group,
                request.author,
                now,
            )
        })
        .await
    }

    /// Removes a config and its history (kept in the audit entry of the
    /// deletion); returns its last version. Devices keep what they run.
    pub async fn delete(&self, key: ConfigKey, identity: String) -> CenterResult<ConfigRecord> {
        let record = self
            .writer
            .write(
                move |store, txn| store.delete_in(txn, &key, &identity, now_ms()),
                |deleted| deleted,
            )
            .await?;
        tracing::info!(
            "config center: deleted {} (last version {})",
            record.key,
            record.version
        );
        Ok(record)
    }

    /// The audit log after sequence number `after`, oldest first.
    pub async fn audit(
        &self,
        after: u64,
        limit: usize,
    ) -> CenterResult<Vec<super::store::AuditEntry>> {
        self.blocking(move |store| store.audit(after, limit)).await
    }

    /// A config's current version, or `version`.
    pub async fn get(&self, key: ConfigKey, version: Option<u64>) -> CenterResult<ConfigRecord> {
        self.blocking(move |store| store.get(&key, version)).await
    }

    /// The current version of every config (of `namespace`, if given).
    pub async fn list(&self, namespace: Option<String>) -> CenterResult<Vec<ConfigRecord>> {
        self.blocking(move |store| store.list(namespace.as_deref()))
            .await
    }

    /// Every version of a config, oldest first.
    pub async fn history(&self, key: ConfigKey) -> CenterResult<Vec<ConfigRecord>> {
        self.blocking(move |store| store.history(&key)).await
    }

    /// Unified diff between two versions; `to` defaults to the current
    /// version and `from` to the one before `to`.
    pub async fn diff(
        &self,
        key: ConfigKey,
        from: Option<u64>,
        to: Option<u64>,
    ) -> CenterResult<String> {
        self.blocking(move |store| {
            let to = match to {
                Some(to) => to,
                None => store.get(&key, None)?.version,
            };
            let from = from.unwrap_or(to.saturating_sub(1).max(1));
            store.diff(&key, from, to)
        })
        .await
    }

    /// Records a device's services; new ones are released the current
    /// version of their config at once.
    pub async fn register(
        &self,
        device: String,
        registration: Register,
    ) -> CenterResult<DeviceInfo> {
        let count = registration.services.len();
        let center = self.strong()?;
        let name = device.clone();
        // In the writer's order: a registration sees every committed change
        // already handed to the engine, and none half-way.
        let (timers, info) = self
            .writer
            .write(
                |_, _| Ok(()),
                move |nothing| {
                    nothing?;
                    let keys: BTreeSet<ConfigKey> = registration
                        .services
                        .iter()
                        .map(|s| s.config.clone())
                        .collect();
                    let mut current: HashMap<ConfigKey, (u64, String)> = HashMap::new();
                    for key in keys {
                        if let Some(record) = center.store.current(&key)? {
                            current.insert(key, (record.version, record.md5));
                        }
                    }
                    let mut engine = center.engine();
                    let timers = engine.register(
                        &name,
                        registration,
                        &|k| current.get(k).cloned(),
                        now_ms(),
                    )?;
                    let info = engine
                        .devices()
                        .into_iter()
                        .find(|d| d.device == name)
                        .ok_or_else(|| CenterError::Internal(format!("device {name} vanished")))?;
                    Ok::<_, CenterError>((timers, info))
                },
            )
            .await?;
        self.schedule(timers);
        tracing::info!("config center: device {device} registered {count} services");
        Ok(info)
    }

    /// The long poll: answers at once if something released to `device`
    /// differs from `have` (service -> MD5), otherwise as soon as that
    /// happens, or with nothing after `timeout` (or at shutdown).
    pub async fn watch(
        &self,
        device: &str,
        have: &HashMap<String, String>,
        timeout: Duration,
    ) -> CenterResult<Vec<Assignment>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shutdown = self.shutdown.subscribe();
        let mut held = None;
        loop {
            let (assignments, mut changed) = self.engine().pending(device, have)?;
            if !assignments.is_empty() || *shutdown.borrow_and_update() {
                return Ok(assignments);
            }
            held.get_or_insert_with(|| Held::new(&self.waiting));
            tokio::select! {
                woke = changed.changed() => if woke.is_err() { return Ok(Vec::new()) },
                _ = shutdown.changed() => return Ok(Vec::new()),
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    /// Records a device's answer to an assignment; may release the next
    /// batch or pause the rollout.
    pub fn ack(&self, device: &str, ack: &Ack) -> CenterResult<()> {
        let timers = self.engine().ack(device, ack, now_ms())?;
        self.schedule(timers);
        tracing::debug!(
            "config center: {device} acknowledged rollout {} {} version {}: {}",
            ack.rollout_id,
            ack.service,
            ack.version,
            if ack.ok { "ok" } else { "failed" }
        );
        Ok(())
    }

    /// Retries the failed steps of a paused rollout.
    pub fn resume(&self, id: u64) -> CenterResult<Rollout> {
        let mut engine = self.engine();
        let timers = engine.resume(id, now_ms())?;
        let rollout = engine.rollout(id)?;
        drop(engine);
        self.schedule(timers);
        tracing::info!("config center: rollout {id} resumed");
        Ok(rollout)
    }

    /// Every rollout, newest first.
    pub fn rollouts(&self) -> Vec<Rollout> {
        self.engine().rollouts()
    }

    /// One rollout.
    pub fn rollout(&self, id: u64) -> CenterResult<Rollout> {
        self.engine().rollout(id)
    }

    /// Every registered device with its services.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.engine().devices()
    }

    /// How many long polls are held right now, waiting for a change. Tests
    /// and the benchmark use it to know a poll is really waiting (rather
    /// than sleeping and hoping), an operator to see how many devices
    /// listen.
    pub fn waiting_polls(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Ends every waiting long poll (with an empty answer) and makes new
    /// ones answer at once, so a graceful shutdown does not wait for them.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use std::net::SocketAddr;

    use super::*;
    use crate::rollout::wire::{Format, RolloutState, ServiceRegistration, StepState};

    fn config(dir: &tempfile::TempDir, pace_ms: u64) -> CenterConfig {
        CenterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: dir.path().join("c.redb"),
            batch_size: 1,
            pace_ms,
            max_config_bytes: 1024,
            ..Default::default()
        }
    }

    fn put(content: &str) -> PutConfig {
        PutConfig {
            format: Format::Text,
            content: content.into(),
            description: String::new(),
            author: String::new(),
        }
    }

    #[tokio::test]
    async fn paced_batches_and_persistence_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let center = Center::open(&config(&dir, 150)).unwrap();
        for d in ["d1", "d2"] {
            let services = vec![ServiceRegistration {
                name: "s".into(),
                config: key.clone(),
                depends_on: vec![],
            }];
            center
                .register(d.into(), Register { services })
                .await
                .unwrap();
        }
        let record = center
            .put(key.clone(), put("one"), RolloutOptions::default())
            .await
            .unwrap();
        let id = center.rollouts()[0].id;
        let ack = Ack {
            rollout_id: id,
            service: "s".into(),
            version: record.version,
            ok: true,
            reason: String::new(),
        };
        center.ack("d1", &ack).unwrap();
        let acked = Instant::now();
        // Batch 2 (d2) waits for the pace, then d2's poll is answered.
        let got = center
            .watch("d2", &HashMap::new(), Duration::from_secs(5))
            .await
            .unwrap();
        let waited = acked.elapsed();
        assert_eq!(got.len(), 1);
        assert!(
            waited >= Duration::from_millis(140),
            "released after {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(1500),
            "released after {waited:?}"
        );
        let r = center.rollout(id).unwrap();
        assert_eq!(r.batches[1][0].state, StepState::Assigned);
        center.ack("d2", &ack).unwrap();
        assert_eq!(center.rollout(id).unwrap().state, RolloutState::Done);

        // Per-change override: no pace.
        center
            .put(
                key.clone(),
                put("two"),
                RolloutOptions {
                    batch_size: Some(5),
                    pace_ms: Some(0),
                },
            )
            .await
            .unwrap();
        let r = &center.rollouts()[0];
        assert_eq!((r.batch_size, r.pace_ms, r.batches.len()), (5, 0, 1));

        // The database survives; the in-memory rollouts do not.
        drop(center);
        let center = Center::open(&config(&dir, 0)).unwrap();
        assert_eq!(center.history(key.clone()).await.unwrap().len(), 2);
        assert_eq!(center.get(key, None).await.unwrap().content, "two");
        assert!(center.rollouts().is_empty());
    }
}
