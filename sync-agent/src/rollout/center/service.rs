//! [`Center`], the one owner of the config center's state: the database, the
//! rollout engine and the long-poll wake-ups. The HTTP API ([`super::http`])
//! and [`super::CenterHandle`] call it.
//!
//! Every change (put, rollback, clone, delete, registration, ack, continue,
//! abort, skip, device removal, timers) is a job for the one group-commit
//! writer ([`super::writer`]), which applies the jobs waiting, in order,
//! inside one write transaction of the store ([`super::storage`]) and
//! commits them together (one fsync on redb). A job
//! writes its config change, runs the engine with the engine locked (plans
//! or advances rollouts), and writes what the engine changed
//! ([`super::rollout_store::save_in`]) and its audit record in that same
//! transaction: a put and the rollout it starts are on disk together or
//! not at all. The request is answered only once that transaction is
//! fsynced. What a change releases to devices is held back from their long
//! polls until then too ([`Engine::take_changes_held`]): a device never
//! runs a version that a crash could make the center forget. Long polls
//! wait on a per-device `tokio::sync::watch` (no thread per waiting
//! request).
//!
//! Several centers on one etcd cluster ([`super::storage::Cluster`]) each
//! keep the engine in memory as above, and keep it current: every group
//! commit (under the cluster-wide write lock) first compares the stored
//! engine stamp with the one its engine was loaded or last written at, and
//! reloads the engine from that same snapshot if another center wrote
//! since ([`Engine::replace`], which keeps the long polls held here and
//! wakes those whose releases changed); a commit that writes anything
//! writes a new stamp. An etcd watch on the stamp reloads the engine as
//! soon as another center commits, so a change made through any center
//! answers the long polls (and fabric pushes) held by every center. What
//! time drives (pace timers, step timeouts, device expiry) runs only on
//! the center elected to run the engine; the centers tell each other which
//! devices polled them, so expiry counts polls answered anywhere. A
//! request's own consequences (an ack releasing the next batch) are
//! decided by the center that takes it, in its serialised commit. A
//! commit that fails leaves the engine unknown: it is reloaded, and until
//! that succeeds (or while the center has no session with etcd) the center
//! answers 503 rather than serve a state the store may not have.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::{broadcast, watch};

use super::config::CenterConfig;
use super::engine::{Changes, Engine, OnLost, PlanOptions, Timer};
use super::error::{CenterError, CenterResult};
use super::rollout_store;
use super::storage::{ClusterEvent, StorageTxn};
use super::store::{AuditEntry, NewVersion, Store, Written, audit_in};
use super::writer::{BatchHooks, Writer, WriterStats};
use crate::bus::ConfigReleased;
use crate::clock::now_ms;
use crate::rollout::wire::{
    Ack, CloneRequest, ConfigKey, ConfigRecord, DeviceInfo, Listener, PutConfig, Register,
    RollbackRequest, Rollout,
};

/// Per-change overrides of how the rollout goes
/// (`?batch_size=&pace_ms=&canary=&approve_each_batch=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutOptions {
    /// Most steps per batch instead of the configured `batch_size`.
    pub batch_size: Option<usize>,
    /// Delay between batches instead of the configured `pace_ms`.
    pub pace_ms: Option<u64>,
    /// Devices (names or registration labels) released alone in the first
    /// batch.
    pub canary: Vec<String>,
    /// Pause after every batch until `config continue ID`.
    pub approve_each_batch: bool,
}

/// HTTP status codes are three digits (`http::StatusCode`): one request
/// counter for each value below this.
const STATUS_CODES: usize = 1000;

/// The long poll's answer when nothing is due: [`crate::rollout::wire::WatchAnswer`]
/// with no assignments, as JSON.
const NOTHING_DUE: &[u8] = br#"{"assignments":[]}"#;

/// Releases kept for a slow subscriber of [`Center::subscribe_releases`];
/// one further behind is told it lagged (devices still long-poll).
const RELEASES_DEPTH: usize = 256;

/// The config center: database, rollout engine and long-poll wake-ups.
pub struct Center {
    store: Arc<Store>,
    /// Group commit: every change goes through it, in one total order (so
    /// the engine sees versions in order and a registration never races a
    /// new version of its configs).
    writer: Writer,
    engine: Mutex<Engine>,
    batch_size: usize,
    pace_ms: u64,
    step_timeout_ms: u64,
    device_expiry_ms: u64,
    on_lost: OnLost,
    /// Pace timers found running in the stored state, run by [`Center::start`].
    restored_timers: Mutex<Vec<Timer>>,
    shutdown: watch::Sender<bool>,
    /// Long polls held right now (see [`Center::waiting_polls`]).
    waiting: AtomicUsize,
    /// Requests refused, by reason (see [`Center::refusals`]).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests answered, by HTTP status (see [`Center::requests`]):
    /// one counter per status code (100 to 999), so counting takes no lock
    /// (one change answers thousands of polls at once, on every worker).
    requests: Box<[AtomicU64]>,
    /// Every release of a batch, for push over the fabric (SPEC 6.2); a
    /// send with no subscriber is fine.
    releases: broadcast::Sender<ConfigReleased>,
    /// Whether this center runs the engine's timed work (always, on redb;
    /// the elected one on a shared store).
    leader: watch::Receiver<bool>,
    /// The store is shared with other centers.
    shared: bool,
    /// How the in-memory engine relates to the shared store (writer thread
    /// only, but read by polls: a mutex never held across an await).
    sync: Mutex<EngineSync>,
    /// Reloads of the engine from the shared store so far.
    reloads: std::sync::atomic::AtomicU64,
    /// Pace timers armed here, so a reload does not arm one twice.
    armed: Mutex<HashSet<(u64, usize)>>,
    /// Devices whose polls this center answered since the last report to
    /// the other centers (shared store only).
    seen: Mutex<BTreeMap<String, u64>>,
    /// The runtime the center started on (timers armed from the writer
    /// thread run there).
    runtime: Option<tokio::runtime::Handle>,
    weak: Weak<Center>,
}

/// The engine against the shared store (see the module doc).
#[derive(Default)]
struct EngineSync {
    /// The stored stamp the engine in memory matches.
    known: Option<String>,
    /// The stamp the batch being committed writes.
    pending: Option<String>,
    /// Stamps written so far.
    count: u64,
    /// A commit failed or a reload could not be read: the engine in memory
    /// may hold what the store does not.
    stale: bool,
}

/// The writer's [`BatchHooks`] for a center on a shared store.
struct SyncHooks(std::sync::OnceLock<Weak<Center>>);

impl BatchHooks for SyncHooks {
    fn begin(&self, txn: &mut dyn StorageTxn) -> CenterResult<()> {
        match self.0.get().and_then(Weak::upgrade) {
            Some(center) => center.begin_batch(txn),
            None => Ok(()),
        }
    }

    fn before_commit(&self, txn: &mut dyn StorageTxn) -> CenterResult<()> {
        match self.0.get().and_then(Weak::upgrade) {
            Some(center) => center.stamp_batch(txn),
            None => Ok(()),
        }
    }

    fn after(&self, committed: &CenterResult<()>) {
        if let Some(center) = self.0.get().and_then(Weak::upgrade) {
            center.after_batch(committed);
        }
    }
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

/// An audit record of an operator's action on a rollout or a device.
fn audit_action(
    txn: &mut dyn StorageTxn,
    engine: &Engine,
    action: &str,
    author: &str,
    rollout: Option<u64>,
    device: Option<&str>,
    now: u64,
) -> CenterResult<()> {
    let (key, version, md5) = match rollout.and_then(|id| engine.release_of(id)) {
        Some((key, version, md5, _)) => (key.to_string(), version, md5),
        None => (String::new(), 0, String::new()),
    };
    audit_in(
        txn,
        AuditEntry {
            seq: 0,
            time_ms: now,
            identity: author.to_string(),
            action: action.to_string(),
            key,
            version,
            md5,
            rollout,
            device: device.map(str::to_string),
            removed: Vec::new(),
        },
    )
}

impl Center {
    /// Opens the database (creating it and its directory if missing) and
    /// the rollout state stored in it: every rollout continues where it was.
    pub fn open(config: &CenterConfig) -> CenterResult<Arc<Center>> {
        let storage = super::storage::open(config)?;
        let store =
            Store::new(storage, config.max_config_bytes).with_keep_versions(config.keep_versions);
        let (stamp, (devices, rollouts, meta)) = {
            let mut read = store.storage().begin_read()?;
            (read.engine_stamp()?, read.rollout_state()?)
        };
        let cluster = store.storage().cluster();
        let shared = cluster.is_some();
        let leader = match cluster {
            Some(cluster) => cluster.leader(),
            None => watch::channel(true).1,
        };
        let (device_count, rollout_count) = (devices.len(), rollouts.len());
        let now = now_ms();
        let (mut engine, mut timers) = Engine::restore(devices, rollouts, meta, now);
        // Stored by a center that wrote a version and its rollout in two
        // transactions: a version with no rollout is planned now.
        let mut current = HashMap::new();
        for key in engine.unrolled_keys(&|key| store.current(key).ok().flatten().map(|r| r.version))
        {
            if let Some(record) = store.current(&key)? {
                current.insert(key, record);
            }
        }
        for (key, record) in current {
            let options = PlanOptions {
                batch_size: config.batch_size.max(1),
                pace_ms: config.pace_ms,
                ..PlanOptions::default()
            };
            let (id, more) = engine.new_version(&key, record.version, &record.md5, &options, now);
            tracing::warn!(
                "config center: {key} version {} had no rollout stored; planned rollout {id:?}",
                record.version
            );
            timers.extend(more);
        }
        let changes = engine.take_changes();
        let mut sync = EngineSync {
            known: stamp,
            ..EngineSync::default()
        };
        if shared && !changes.is_empty() {
            let mut txn = store.storage().begin_write(true)?;
            if txn.engine_stamp()? != sync.known {
                // Another center changed it meanwhile: leave the planning
                // to the next commit, which reloads.
                txn.abort();
                sync.stale = true;
            } else {
                rollout_store::save_in(&mut *txn, &changes)?;
                let member = cluster.map_or("", |c| c.member());
                let stamp = format!("{member}:0");
                txn.set_engine_stamp(&stamp)?;
                txn.commit()?;
                sync.known = Some(stamp);
            }
        } else {
            rollout_store::save(store.storage().as_ref(), &changes)?;
        }
        if device_count + rollout_count > 0 {
            tracing::info!(
                "config center: restored {device_count} devices and {rollout_count} rollouts"
            );
        }
        let store = Arc::new(store);
        let hooks = Arc::new(SyncHooks(std::sync::OnceLock::new()));
        let writer = if shared {
            Writer::spawn_with(store.clone(), Some(hooks.clone() as Arc<dyn BatchHooks>))?
        } else {
            Writer::spawn(store.clone())?
        };
        let center = Arc::new_cyclic(|weak| Center {
            store,
            writer,
            engine: Mutex::new(engine),
            batch_size: config.batch_size.max(1),
            pace_ms: config.pace_ms,
            step_timeout_ms: config.step_timeout_s.saturating_mul(1000),
            device_expiry_ms: config.device_expiry_s.saturating_mul(1000),
            on_lost: config.on_lost,
            restored_timers: Mutex::new(timers),
            shutdown: watch::channel(false).0,
            releases: broadcast::channel(RELEASES_DEPTH).0,
            waiting: AtomicUsize::new(0),
            refused: Mutex::new(BTreeMap::new()),
            requests: (0..STATUS_CODES).map(|_| AtomicU64::new(0)).collect(),
            leader,
            shared,
            sync: Mutex::new(sync),
            reloads: std::sync::atomic::AtomicU64::new(0),
            armed: Mutex::new(HashSet::new()),
            seen: Mutex::new(BTreeMap::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            weak: weak.clone(),
        });
        let _ = hooks.0.set(Arc::downgrade(&center));
        Ok(center)
    }

    /// How often the engine was reloaded from the shared store (another
    /// center wrote, a commit failed, this center took the engine over).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Whether this center runs the rollout engine's timed work: pace
    /// timers, step timeouts, device expiry (always on redb; on etcd, the
    /// center holding the election).
    pub fn runs_engine(&self) -> bool {
        *self.leader.borrow()
    }

    fn sync(&self) -> MutexGuard<'_, EngineSync> {
        self.sync.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses to serve the engine while it may differ from the store.
    fn check_current(&self) -> CenterResult<()> {
        let cut_off = self
            .store
            .storage()
            .cluster()
            .is_some_and(|c| !c.connected());
        if cut_off {
            return Err(CenterError::Unavailable(format!(
                "config center: no session with its store ({}): no quorum of etcd answers; it cannot know what other centers changed",
                self.store_description()
            )));
        }
        if self.sync().stale {
            return Err(CenterError::Unavailable(format!(
                "config center: its store ({}) failed or cannot be reached; its rollout state is reloaded once it answers",
                self.store_description()
            )));
        }
        Ok(())
    }

    /// Start of a group commit on a shared store: reloads the engine if
    /// another center wrote since it was loaded (same snapshot as the
    /// batch's own reads, under the write lock).
    fn begin_batch(&self, txn: &mut dyn StorageTxn) -> CenterResult<()> {
        let stamp = txn.engine_stamp()?;
        let current = {
            let sync = self.sync();
            !sync.stale && sync.known == stamp
        };
        if !current {
            let stored = txn.rollout_state()?;
            self.reload(stored, stamp);
        }
        Ok(())
    }

    fn stamp_batch(&self, txn: &mut dyn StorageTxn) -> CenterResult<()> {
        // A batch that writes nothing (a timeout check with nothing due,
        // every second on the engine's center) must not make every other
        // center reload.
        if !txn.has_writes() {
            return Ok(());
        }
        let member = self
            .store
            .storage()
            .cluster()
            .map_or(String::new(), |c| c.member().to_string());
        let stamp = {
            let mut sync = self.sync();
            sync.count += 1;
            let stamp = format!("{member}:{}", sync.count);
            sync.pending = Some(stamp.clone());
            stamp
        };
        txn.set_engine_stamp(&stamp)
    }

    fn after_batch(&self, committed: &CenterResult<()>) {
        let failed = {
            let mut sync = self.sync();
            let pending = sync.pending.take();
            match committed {
                Ok(()) => {
                    if pending.is_some() {
                        sync.known = pending;
                    }
                    false
                }
                Err(_) => {
                    sync.stale = true;
                    true
                }
            }
        };
        if failed {
            // The jobs changed the engine; the store has none of it.
            if let Err(e) = self.refresh(true) {
                tracing::warn!(
                    "config center: reloading the rollout state after a failed commit: {e}"
                );
            }
        }
    }

    /// Reloads the engine from the shared store if another center changed
    /// it (or always, with `force`). Runs on the writer thread, between
    /// batches.
    fn refresh(&self, force: bool) -> CenterResult<()> {
        let mut read = self.store.storage().begin_read()?;
        let stamp = read.engine_stamp()?;
        let current = {
            let sync = self.sync();
            !sync.stale && sync.known == stamp
        };
        if force || !current {
            let stored = read.rollout_state()?;
            self.reload(stored, stamp);
        }
        Ok(())
    }

    /// Replaces the engine with the stored state at `stamp`: wakes the polls
    /// whose releases changed, announces what the others released, and, on
    /// the center running the engine, arms the stored pace timers.
    fn reload(&self, stored: super::storage::Stored, stamp: Option<String>) {
        let (timers, woken, moved) = self.engine().replace(stored, now_ms());
        self.reloads.fetch_add(1, Ordering::Relaxed);
        {
            let mut sync = self.sync();
            sync.known = stamp;
            sync.stale = false;
        }
        tracing::debug!(
            woken = woken.len(),
            rollouts = moved.len(),
            "config center: rollout state reloaded from the shared store"
        );
        for id in moved {
            self.announce_release(id, None);
        }
        self.schedule(timers);
    }

    /// Follows the other centers on a shared store: reloads the engine when
    /// the stored stamp changes, counts their devices' polls, reloads on
    /// becoming the engine's center (to arm its timers), and reports the
    /// polls answered here.
    fn follow_cluster(&self) {
        let Some(cluster) = self.store.storage().cluster() else {
            return;
        };
        if let Some(mut events) = cluster.take_events() {
            let center = self.weak.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let Some(center) = center.upgrade() else {
                        return;
                    };
                    match event {
                        ClusterEvent::Seen(devices) => center.engine().saw(&devices),
                        ClusterEvent::Changed(stamp) => {
                            let known = {
                                let sync = center.sync();
                                stamp.is_some() && !sync.stale && sync.known == stamp
                            };
                            if !known {
                                center.refresh_later(false).await;
                            }
                        }
                    }
                }
            });
        }
        let mut leader = self.leader.clone();
        let center = self.weak.clone();
        tokio::spawn(async move {
            loop {
                if leader.changed().await.is_err() {
                    return;
                }
                let leads = *leader.borrow_and_update();
                let Some(center) = center.upgrade() else {
                    return;
                };
                if leads {
                    center.refresh_later(true).await;
                } else {
                    center
                        .armed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clear();
                }
            }
        });
    }

    /// [`Center::refresh`] on the writer thread (after the changes queued).
    async fn refresh_later(&self, force: bool) {
        let Ok(center) = self.strong() else {
            return;
        };
        let refreshed = self.writer.read(move || center.refresh(force)).await;
        if let Err(e) = refreshed.and_then(|refreshed| refreshed) {
            tracing::warn!("config center: reloading the shared rollout state: {e}");
        }
    }

    /// Once a second on a shared store: reports the devices polled here,
    /// and retries a reload the store refused.
    async fn cluster_tick(&self) {
        let seen: Vec<(String, u64)> =
            std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        if !seen.is_empty()
            && let Some(cluster) = self.store.storage().cluster()
        {
            cluster.publish_seen(seen);
        }
        if self.sync().stale {
            self.refresh_later(true).await;
        }
    }

    /// Starts the timers: restored pace timers, and the once-a-second check
    /// of step timeouts and device expiry. Needs a tokio runtime; the task
    /// ends when the center is dropped.
    pub fn start(&self) {
        let timers = std::mem::take(
            &mut *self
                .restored_timers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.schedule(timers);
        self.follow_cluster();
        let timed = self.step_timeout_ms > 0 || self.device_expiry_ms > 0;
        if !timed && !self.shared {
            return;
        }
        let center = self.weak.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(center) = center.upgrade() else {
                    return;
                };
                if center.shared {
                    center.cluster_tick().await;
                }
                // Only the center running the engine expires steps and
                // devices (the others' view of device polls comes late).
                if timed
                    && center.runs_engine()
                    && let Err(e) = center.tick().await
                {
                    tracing::error!("config center: timeout check: {e}");
                }
            }
        });
    }

    /// Checks step timeouts and device expiry now.
    pub async fn tick(&self) -> CenterResult<()> {
        let (timeout, expiry, on_lost) =
            (self.step_timeout_ms, self.device_expiry_ms, self.on_lost);
        self.write(move |engine, _, _, now| Ok(((), engine.tick(now, timeout, expiry, on_lost))))
            .await
    }

    /// What and where the store is (`redb /var/lib/...`), for logs.
    pub fn store_description(&self) -> String {
        self.store.storage().describe()
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

    /// Runs `op` in the writer's next group commit, with the engine locked:
    /// `op` gets the engine, the store, the shared transaction and the time,
    /// and returns its value and the timers to run. What the engine changed
    /// is written in the same transaction; once that is fsynced, the long
    /// polls it released to are let through and woken, the timers are run
    /// and the value is returned. `op` must refuse (an error) before it
    /// changes anything, so a refused change leaves nothing half-applied in
    /// the shared transaction.
    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Engine, &Store, &mut dyn StorageTxn, u64) -> CenterResult<(T, Vec<Timer>)>
        + Send
        + 'static,
    ) -> CenterResult<T> {
        let center = self.strong()?;
        let after = center.clone();
        // The changes taken, for the continuation whatever the outcome
        // (a failed commit must not leave polls held forever).
        let taken: Arc<Mutex<Option<Changes>>> = Arc::default();
        let stash = taken.clone();
        let (value, timers) = self
            .writer
            .write(
                move |store, txn| {
                    let now = now_ms();
                    let mut engine = center.engine();
                    let result = op(&mut engine, store, txn, now);
                    let changes = engine.take_changes_held();
                    drop(engine);
                    let saved = rollout_store::save_in(txn, &changes);
                    *stash.lock().unwrap_or_else(PoisonError::into_inner) = Some(changes);
                    saved?;
                    match result {
                        // The database failed: the whole batch is abandoned.
                        Err(e) if e.is_store_failure() => Err(e),
                        result => Ok(result),
                    }
                },
                move |applied| {
                    let changes = taken.lock().unwrap_or_else(PoisonError::into_inner).take();
                    if let Some(changes) = changes {
                        after.engine().unhold(&changes);
                        changes.wake();
                    }
                    applied?
                },
            )
            .await?;
        self.schedule(timers);
        Ok(value)
    }

    /// Commits and acknowledged changes since start, for the benchmark and
    /// `GET /v1/stats`: (group commits, changes in them).
    pub fn write_stats(&self) -> WriterStats {
        self.writer.stats()
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

    /// Arms pace timers, on the center running the engine only (another
    /// takes them from the store when it takes the engine over).
    fn schedule(&self, timers: Vec<Timer>) {
        if !self.runs_engine() {
            return;
        }
        let Some(runtime) = self.runtime.clone() else {
            tracing::error!("config center: no runtime to run pace timers on");
            return;
        };
        for timer in timers {
            let armed = self
                .armed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((timer.rollout_id, timer.batch));
            if !armed {
                continue;
            }
            let center = self.weak.clone();
            runtime.spawn(async move {
                tokio::time::sleep(Duration::from_millis(timer.delay_ms)).await;
                if let Some(center) = center.upgrade() {
                    center
                        .armed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&(timer.rollout_id, timer.batch));
                    if !center.runs_engine() {
                        return;
                    }
                    let fired = center
                        .write(move |engine, _, _, now| Ok(((), engine.fire_timer(timer, now))))
                        .await;
                    match fired {
                        Ok(()) => center.announce_release(timer.rollout_id, None),
                        Err(e) => tracing::error!(
                            "config center: pace timer of rollout {}: {e}",
                            timer.rollout_id
                        ),
                    }
                }
            });
        }
    }

    /// Every release from now on: key, version and MD5 of a batch as it is
    /// released (see [`ConfigReleased`]).
    pub fn subscribe_releases(&self) -> broadcast::Receiver<ConfigReleased> {
        self.releases.subscribe()
    }

    /// Announces what rollout `id` releases, unless its current batch is
    /// still `unless_batch` (nothing new was released).
    fn announce_release(&self, id: u64, unless_batch: Option<usize>) {
        let Some((key, version, md5, batch)) = self.engine().release_of(id) else {
            return;
        };
        if unless_batch == Some(batch) {
            return;
        }
        let _ = self.releases.send(ConfigReleased {
            key: key.to_string(),
            version,
            md5,
        });
    }

    fn options(&self, opts: RolloutOptions) -> CenterResult<PlanOptions> {
        let batch_size = opts.batch_size.unwrap_or(self.batch_size);
        if batch_size == 0 {
            return Err(CenterError::Invalid("batch_size must be at least 1".into()));
        }
        for device in &opts.canary {
            crate::rollout::wire::check_name("canary device", device)
                .map_err(CenterError::Invalid)?;
        }
        Ok(PlanOptions {
            batch_size,
            pace_ms: opts.pace_ms.unwrap_or(self.pace_ms),
            canary: opts.canary,
            approve_each_batch: opts.approve_each_batch,
        })
    }

    /// Writes a change with `op` and, if it made a new version, starts its
    /// rollout, in the same transaction. `key` is the config the change
    /// writes (checked against the canary list before anything is written).
    async fn change(
        &self,
        opts: RolloutOptions,
        what: &str,
        key: ConfigKey,
        op: impl FnOnce(&Store, &mut dyn StorageTxn, u64) -> CenterResult<Written> + Send + 'static,
    ) -> CenterResult<ConfigRecord> {
        let plan = self.options(opts)?;
        let summary = format!(
            "batch size {}, pace {} ms{}{}",
            plan.batch_size,
            plan.pace_ms,
            if plan.canary.is_empty() {
                String::new()
            } else {
                format!(", canary {}", plan.canary.join(","))
            },
            if plan.approve_each_batch {
                ", approve each batch"
            } else {
                ""
            }
        );
        let (record, created, rollout) = self
            .write(move |engine, store, txn, now| {
                engine.check_canary(&key, &plan.canary)?;
                let written = op(store, txn, now)?;
                if !written.created {
                    return Ok(((written.record, false, None), Vec::new()));
                }
                let record = written.record;
                let (rollout, timers) =
                    engine.new_version(&record.key, record.version, &record.md5, &plan, now);
                Ok(((record, true, rollout), timers))
            })
            .await?;
        if !created {
            tracing::info!(
                "config center: {what} {} unchanged (version {})",
                record.key,
                record.version
            );
            return Ok(record);
        }
        if let Some(id) = rollout {
            self.announce_release(id, None);
        }
        match rollout {
            Some(id) => tracing::info!(
                "config center: {what} {} version {} (md5 {}), rollout {id} ({summary})",
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

    /// Adds or edits a config (a no-op if nothing changed). The author
    /// (`put.author`) is recorded in the history and the audit log.
    pub async fn put(
        &self,
        key: ConfigKey,
        put: PutConfig,
        opts: RolloutOptions,
    ) -> CenterResult<ConfigRecord> {
        self.change(opts, "put", key.clone(), move |store, txn, now| {
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
        self.change(opts, "rollback", key.clone(), move |store, txn, now| {
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
        let target = ConfigKey::new(&request.namespace, &request.group, &key.name)
            .map_err(CenterError::Invalid)?;
        self.change(opts, "clone", target, move |store, txn, now| {
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

    /// Removes a config and its history (kept in the audit record of the
    /// deletion, made by `author`); returns its last version. Refused while
    /// a rollout of it is not done. Devices keep what they run; the engine
    /// forgets the config's finished rollouts, so one made again under the
    /// same name starts from version 1 like a new one.
    pub async fn delete(&self, key: ConfigKey, author: String) -> CenterResult<ConfigRecord> {
        let record = self
            .write(move |engine, store, txn, now| {
                // Both checks before either writes.
                store.get_in(txn, &key, None)?;
                engine.check_forget_key(&key)?;
                let last = store.delete_in(txn, &key, &author, now)?;
                engine.forget_key(&key)?;
                Ok((last, Vec::new()))
            })
            .await?;
        tracing::info!(
            "config center: deleted {} (last version {})",
            record.key,
            record.version
        );
        Ok(record)
    }

    /// The audit log after sequence number `after`, oldest first, at most
    /// `limit` records.
    pub async fn audit(&self, after: u64, limit: usize) -> CenterResult<Vec<AuditEntry>> {
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
    /// version of their config at once (or join a rollout under way).
    pub async fn register(
        &self,
        device: String,
        registration: Register,
    ) -> CenterResult<DeviceInfo> {
        let count = registration.services.len();
        let name = device.clone();
        let info = self
            .write(move |engine, store, txn, now| {
                let keys: BTreeSet<ConfigKey> = registration
                    .services
                    .iter()
                    .map(|s| s.config.clone())
                    .collect();
                // Read in the shared transaction: a version put earlier in
                // the same group commit is the current one.
                let mut current: HashMap<ConfigKey, (u64, String)> = HashMap::new();
                for key in keys {
                    if let Some(record) = store.current_in(txn, &key)? {
                        current.insert(key, (record.version, record.md5));
                    }
                }
                let timers =
                    engine.register(&name, registration, &|k| current.get(k).cloned(), now)?;
                let info = engine
                    .device(&name)
                    .ok_or_else(|| CenterError::Internal(format!("device {name} vanished")))?;
                Ok((info, timers))
            })
            .await?;
        tracing::info!("config center: device {device} registered {count} services");
        Ok(info)
    }

    /// [`Center::watch_answer`] decoded, for tests: the assignments a
    /// device's long poll is answered with.
    #[cfg(test)]
    pub async fn watch(
        &self,
        device: &str,
        have: &HashMap<String, String>,
        timeout: Duration,
    ) -> CenterResult<Vec<crate::rollout::wire::Assignment>> {
        let body = self.watch_answer(device, have, timeout).await?;
        let answer: crate::rollout::wire::WatchAnswer =
            serde_json::from_slice(&body).expect("the center's answers decode");
        Ok(answer.assignments)
    }

    /// The long poll: answers at once if something released to `device`
    /// differs from `have` (service -> MD5), otherwise as soon as that
    /// happens, or with nothing after `timeout` (or at shutdown). The
    /// answer is the HTTP body, a [`WatchAnswer`] in JSON, shared by every
    /// device due the same assignments (see [`Engine::pending_answer`]).
    ///
    /// [`WatchAnswer`]: crate::rollout::wire::WatchAnswer
    pub async fn watch_answer(
        &self,
        device: &str,
        have: &HashMap<String, String>,
        timeout: Duration,
    ) -> CenterResult<Bytes> {
        let body = self
            .hold(device, timeout, |engine, now| {
                engine.pending_answer(device, have, now)
            })
            .await?;
        Ok(body.unwrap_or_else(|| Bytes::from_static(NOTHING_DUE)))
    }

    /// Holds a long poll: `due` is asked (with the engine locked) what is
    /// due to `device` and for its wake-up, at once and after every
    /// wake-up, until it has something; None after `timeout`, at shutdown,
    /// or if the device's wake-up is gone (it was removed).
    async fn hold<T>(
        &self,
        device: &str,
        timeout: Duration,
        mut due: impl FnMut(&mut Engine, u64) -> CenterResult<(Option<T>, watch::Receiver<u64>)>,
    ) -> CenterResult<Option<T>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shutdown = self.shutdown.subscribe();
        let mut held = None;
        if self.shared {
            self.check_current()?;
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(device.to_string(), now_ms());
        }
        loop {
            let (found, mut changed) = due(&mut self.engine(), now_ms())?;
            if found.is_some() || *shutdown.borrow_and_update() {
                return Ok(found);
            }
            held.get_or_insert_with(|| Held::new(&self.waiting));
            tokio::select! {
                woke = changed.changed() => if woke.is_err() { return Ok(None) },
                _ = shutdown.changed() => return Ok(None),
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// Records a device's answer to an assignment; may release the next
    /// batch or pause the rollout.
    pub async fn ack(&self, device: &str, ack: &Ack) -> CenterResult<()> {
        let batch = self
            .engine()
            .release_of(ack.rollout_id)
            .map(|(_, _, _, batch)| batch);
        let (name, answer) = (device.to_string(), ack.clone());
        self.write(move |engine, _, _, now| Ok(((), engine.ack(&name, &answer, now)?)))
            .await?;
        if batch.is_some() {
            self.announce_release(ack.rollout_id, batch);
        }
        tracing::debug!(
            "config center: {device} acknowledged rollout {} {} version {}: {}",
            ack.rollout_id,
            ack.service,
            ack.version,
            if ack.ok { "ok" } else { "failed" }
        );
        Ok(())
    }

    /// Continues a paused rollout: retries its failed steps, or releases
    /// the next batch after an approval pause. `author` goes to the audit.
    pub async fn resume(&self, id: u64, author: String) -> CenterResult<Rollout> {
        let rollout = self
            .write(move |engine, _, txn, now| {
                let timers = engine.resume(id, now)?;
                audit_action(txn, engine, "continue", &author, Some(id), None, now)?;
                Ok((engine.rollout(id)?, timers))
            })
            .await?;
        self.announce_release(id, None);
        tracing::info!("config center: rollout {id} continued");
        Ok(rollout)
    }

    /// Ends a rollout where it is (released steps of its batch are given
    /// back what they had).
    pub async fn abort(&self, id: u64, author: String) -> CenterResult<Rollout> {
        self.write(move |engine, _, txn, now| {
            let timers = engine.abort(id, now)?;
            audit_action(txn, engine, "abort", &author, Some(id), None, now)?;
            Ok((engine.rollout(id)?, timers))
        })
        .await
    }

    /// Skips a device's unfinished steps in a rollout.
    pub async fn skip(&self, id: u64, device: String, author: String) -> CenterResult<Rollout> {
        let rollout = self
            .write(move |engine, _, txn, now| {
                let timers = engine.skip(id, &device, now)?;
                audit_action(txn, engine, "skip", &author, Some(id), Some(&device), now)?;
                Ok((engine.rollout(id)?, timers))
            })
            .await?;
        tracing::info!("config center: rollout {id}: device skipped by the operator");
        Ok(rollout)
    }

    /// Forgets a device (its unfinished steps are skipped).
    pub async fn remove_device(&self, device: String, author: String) -> CenterResult<()> {
        self.write(move |engine, _, txn, now| {
            let timers = engine.remove_device(&device, now)?;
            audit_action(
                txn,
                engine,
                "remove-device",
                &author,
                None,
                Some(&device),
                now,
            )?;
            Ok(((), timers))
        })
        .await
    }

    /// Runs `read` on the engine as committed: after every change made
    /// before it is on disk, never showing one that is not (the engine is
    /// changed inside the group commit's transaction, before its fsync; a
    /// rollout shown paused is paused after a crash too).
    async fn committed<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Engine) -> T + Send + 'static,
    ) -> CenterResult<T> {
        let center = self.strong()?;
        self.check_current()?;
        self.writer.read(move || read(&center.engine())).await
    }

    /// Every rollout, newest first, as committed.
    pub async fn rollouts(&self) -> CenterResult<Vec<Rollout>> {
        self.committed(Engine::rollouts).await
    }

    /// One rollout, as committed.
    pub async fn rollout(&self, id: u64) -> CenterResult<Rollout> {
        self.committed(move |engine| engine.rollout(id)).await?
    }

    /// Counts a refused request under `reason`.
    pub fn count_refusal(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    /// Requests refused since start, by reason (`invalid`, `not_found`,
    /// `conflict`, `too_large`, `method_not_allowed`, `internal`, ...).
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// Counts one answered request under its HTTP status.
    pub fn count_request(&self, status: u16) {
        if let Some(count) = self.requests.get(usize::from(status)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests answered since start, by HTTP status (a long poll counts
    /// when it is answered).
    pub fn requests(&self) -> BTreeMap<u16, u64> {
        (0..STATUS_CODES)
            .filter_map(|status| {
                let count = self.requests[status].load(Ordering::Relaxed);
                let status = u16::try_from(status).ok()?;
                (count > 0).then_some((status, count))
            })
            .collect()
    }

    /// How many long polls are held right now, waiting for a change. Tests
    /// use it to know a poll is really waiting (rather than sleeping and
    /// hoping), an operator to see how many devices listen.
    pub fn waiting_polls(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Every registered device with its services, as committed.
    pub async fn devices(&self) -> CenterResult<Vec<DeviceInfo>> {
        self.committed(Engine::devices).await
    }

    /// Who uses `key` and which version (and MD5) each confirmed, as
    /// committed.
    pub async fn listeners(&self, key: ConfigKey) -> CenterResult<Vec<Listener>> {
        self.committed(move |engine| engine.listeners(&key)).await
    }

    /// The config rollout `id` rolls out (for authorising an operator's
    /// request on it; the latest state, committed or not).
    pub fn rollout_key(&self, id: u64) -> CenterResult<ConfigKey> {
        self.engine().rollout_key(id)
    }

    /// Whether `device` is registered with a service using `key` (for
    /// authorising a device's read; the latest state, committed or not:
    /// it only lets a device read a config it may already be released).
    pub fn device_uses(&self, device: &str, key: &ConfigKey) -> bool {
        self.engine().device_uses(device, key)
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
                .register(
                    d.into(),
                    Register {
                        services,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        let record = center
            .put(key.clone(), put("one"), RolloutOptions::default())
            .await
            .unwrap();
        let id = center.rollouts().await.unwrap()[0].id;
        let ack = Ack {
            rollout_id: id,
            service: "s".into(),
            version: record.version,
            ok: true,
            reason: String::new(),
        };
        center.ack("d1", &ack).await.unwrap();
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
        let r = center.rollout(id).await.unwrap();
        assert_eq!(r.batches[1][0].state, StepState::Assigned);
        center.ack("d2", &ack).await.unwrap();
        assert_eq!(center.rollout(id).await.unwrap().state, RolloutState::Done);

        // Per-change override: no pace.
        center
            .put(
                key.clone(),
                put("two"),
                RolloutOptions {
                    batch_size: Some(5),
                    pace_ms: Some(0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let r = &center.rollouts().await.unwrap()[0];
        assert_eq!((r.batch_size, r.pace_ms, r.batches.len()), (5, 0, 1));

        // The database and the rollout state survive a reopen: the rollout
        // of "two" is where it was, and the devices are still registered.
        let before = center.rollouts().await.unwrap();
        assert_eq!(before[0].state, RolloutState::Running);
        drop(center);
        let center = Center::open(&config(&dir, 0)).unwrap();
        assert_eq!(center.history(key.clone()).await.unwrap().len(), 2);
        assert_eq!(center.get(key, None).await.unwrap().content, "two");
        assert_eq!(center.rollouts().await.unwrap(), before);
        assert_eq!(center.devices().await.unwrap().len(), 2);
        let got = center
            .watch("d1", &HashMap::new(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rollout_id, before[0].id);
    }

    #[tokio::test]
    async fn a_silent_device_is_lost_and_pauses_its_rollout_which_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let mut cfg = config(&dir, 0);
        cfg.device_expiry_s = 1;
        let center = Center::open(&cfg).unwrap();
        for d in ["d1", "d2"] {
            let services = vec![ServiceRegistration {
                name: "s".into(),
                config: key.clone(),
                depends_on: vec![],
            }];
            center
                .register(
                    d.into(),
                    Register {
                        services,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        let record = center
            .put(key.clone(), put("one"), RolloutOptions::default())
            .await
            .unwrap();
        let id = center.rollouts().await.unwrap()[0].id;
        let ack = Ack {
            rollout_id: id,
            service: "s".into(),
            version: record.version,
            ok: true,
            reason: String::new(),
        };
        center.ack("d1", &ack).await.unwrap();
        // d2 (batch 2, assigned) says nothing for longer than the expiry.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        center.tick().await.unwrap();
        let r = center.rollout(id).await.unwrap();
        assert_eq!(r.state, RolloutState::Paused);
        assert!(
            r.paused_reason.contains("device d2 is lost"),
            "{}",
            r.paused_reason
        );
        assert!(center.devices().await.unwrap()[1].lost);

        // Stored: a reopened center has it paused for the same reason.
        drop(center);
        let center = Center::open(&cfg).unwrap();
        let again = center.rollout(id).await.unwrap();
        assert_eq!(
            (again.state, &again.paused_reason),
            (RolloutState::Paused, &r.paused_reason)
        );
        let skipped = center.skip(id, "d2".into(), "op".into()).await.unwrap();
        assert_eq!(skipped.state, RolloutState::Done);
        assert_eq!(skipped.batches[1][0].state, StepState::Skipped);
    }

    #[tokio::test]
    async fn operator_actions_are_audited_and_a_delete_waits_for_its_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let center = Center::open(&config(&dir, 0)).unwrap();
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
        let opts = RolloutOptions {
            approve_each_batch: true,
            ..Default::default()
        };
        let mut first = put("one");
        first.author = "alice".into();
        let record = center.put(key.clone(), first, opts).await.unwrap();
        let id = center.rollouts().await.unwrap()[0].id;
        let ack = Ack {
            rollout_id: id,
            service: "s".into(),
            version: record.version,
            ok: true,
            reason: String::new(),
        };
        center.ack("d1", &ack).await.unwrap();
        // Paused for approval: a delete is refused and changes nothing.
        let e = center.delete(key.clone(), "bob".into()).await.unwrap_err();
        assert!(
            matches!(&e, CenterError::Conflict(m) if m.contains(&format!("rollout {id}"))),
            "{e}"
        );
        assert_eq!(center.get(key.clone(), None).await.unwrap().version, 1);
        center.resume(id, "bob".into()).await.unwrap();
        center.skip(id, "d2".into(), "carol".into()).await.unwrap();
        center
            .remove_device("d2".into(), "dave".into())
            .await
            .unwrap();
        let deleted = center.delete(key.clone(), "erin".into()).await.unwrap();
        assert_eq!(deleted.version, 1);
        let audit = center.audit(0, 100).await.unwrap();
        let seen: Vec<String> = audit
            .iter()
            .map(|a| {
                format!(
                    "{} {} {} {} {:?} {:?}",
                    a.action, a.identity, a.key, a.version, a.rollout, a.device
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                "put alice n/g/k 1 None None".to_string(),
                format!("continue bob n/g/k 1 Some({id}) None"),
                format!("skip carol n/g/k 1 Some({id}) Some(\"d2\")"),
                "remove-device dave  0 None Some(\"d2\")".to_string(),
                "delete erin n/g/k 1 None None".to_string(),
            ]
        );
        assert!(audit.iter().all(|a| a.time_ms > 0));
        assert_eq!(audit[1].md5, record.md5);
        // The engine forgot the deleted key: made again, it starts from
        // version 1 and rolls out like a new config.
        let again = center
            .put(key.clone(), put("two"), RolloutOptions::default())
            .await
            .unwrap();
        assert_eq!(again.version, 1);
        let r = &center.rollouts().await.unwrap()[0];
        assert_eq!((r.version, r.id > id), (1, true));
        // All of it is stored: a reopened center has the same audit.
        drop(center);
        let center = Center::open(&config(&dir, 0)).unwrap();
        assert_eq!(center.audit(0, 100).await.unwrap().len(), 6);
    }
}
