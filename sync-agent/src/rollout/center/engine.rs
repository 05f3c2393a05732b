//! The rollout state machine of the config center (SPEC 6.2, 6.3): which
//! devices run which services, what has been released to each, and the
//! batches of every rollout. Synchronous and clock-free (callers pass
//! `now_ms`), so it is tested without HTTP; [`super::Center`] keeps it behind
//! a mutex, runs the pace timers it asks for and writes what changed
//! ([`Engine::take_changes`]) to the database ([`super::rollout_store`])
//! before the change is acknowledged, so a restart (SIGKILL included) resumes
//! every rollout where it was ([`Engine::restore`]).
//!
//! Releasing: each device has a map service -> [`Assignment`] (what the
//! center wants that service to run) and a `tokio::sync::watch` counter
//! bumped on every change, which wakes its long polls. A new registration is
//! released the current version at once (rollout id 0), unless a rollout of
//! that config is under way: then it is released the version that rollout
//! started from and joins the rollout as a step of a later batch, so it never
//! gets a version outside a batch. A rollout releases batch by batch; a
//! failed step restores what the device had been released before, so its
//! long poll does not offer the failed version again, and pauses the rollout.
//!
//! Nothing waits forever: an assigned step not acknowledged within the step
//! timeout fails (and pauses its rollout), and a device silent for the
//! device expiry is lost: its steps pause the rollout naming it, or are
//! skipped, as `on_lost` says ([`Engine::tick`]). Across rollouts a device
//! updates one service at a time, in dependency order across config keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use tokio::sync::watch;

use super::error::{CenterError, CenterResult};
use super::planner;
use crate::rollout::wire::{
    Ack, Assignment, ConfigKey, DeviceInfo, Listener, Register, Rollout, RolloutState,
    ServiceRegistration, Step, StepState, WatchAnswer, check_name,
};

/// How many rollouts are kept; beyond that the oldest finished ones are
/// forgotten when a new one starts.
pub const KEPT_ROLLOUTS: usize = 256;

/// A pace delay the caller must wait before calling [`Engine::fire_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub rollout_id: u64,
    pub batch: usize,
    pub delay_ms: u64,
}

/// What to do with the steps of a device silent for `device_expiry_s`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLost {
    /// Pause the rollout, naming the device (the default).
    #[default]
    Pause,
    /// Skip the device's steps and go on.
    Skip,
}

/// How a new version is rolled out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    pub batch_size: usize,
    pub pace_ms: u64,
    /// Device names or labels released alone in the first batch.
    pub canary: Vec<String>,
    /// Pause after every batch until resumed.
    pub approve_each_batch: bool,
}

/// A version and its MD5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    pub version: u64,
    pub md5: String,
}

/// What is stored of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// In dependency order.
    pub services: Vec<ServiceRegistration>,
    pub released: BTreeMap<String, Assignment>,
    /// Per service, what the device last acknowledged as applied.
    pub confirmed: BTreeMap<String, Confirmed>,
    pub registered_ms: u64,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Updated in memory on every poll; stored only with other changes
    /// (and reset to the start time on restore).
    #[serde(default)]
    pub seen_ms: u64,
    #[serde(default)]
    pub lost: bool,
}

/// One device's services -> a value, as a vector sorted by service, stored
/// as the JSON map a `BTreeMap` makes (same bytes). A device has a handful
/// of services, and a `BTreeMap` allocates a whole node (11 slots, some
/// 1.8 KB for an [`Assignment`]) for its first entry: one per device of a
/// rollout to 10,000 devices was 18 MB of fresh memory, page-faulted in on
/// the put's way to its commit (see [`RolloutEntry::previous`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerService<V>(Vec<(String, V)>);

impl<V> Default for PerService<V> {
    fn default() -> Self {
        PerService(Vec::new())
    }
}

impl<V> PerService<V> {
    pub fn get(&self, service: &str) -> Option<&V> {
        self.0
            .binary_search_by(|(s, _)| s.as_str().cmp(service))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Sets `service`'s value, returning the one it replaces.
    pub fn insert(&mut self, service: String, value: V) -> Option<V> {
        match self
            .0
            .binary_search_by(|(s, _)| s.as_str().cmp(service.as_str()))
        {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (service, value));
                None
            }
        }
    }
}

impl<V: Serialize> Serialize for PerService<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (service, value) in &self.0 {
            map.serialize_entry(service, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for PerService<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Read as the map it is stored as (sorts, and a repeated key keeps
        // its last value, as before).
        let map = BTreeMap::<String, V>::deserialize(deserializer)?;
        Ok(PerService(map.into_iter().collect()))
    }
}

/// What is stored of one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEntry {
    pub rollout: Rollout,
    pub md5: String,
    /// device -> service -> what it had been released before this rollout,
    /// to restore if the step fails.
    pub previous: BTreeMap<String, PerService<Option<Assignment>>>,
    /// A pace timer for `current_batch` is running: do not release before.
    pub waiting_timer: bool,
    /// The version devices ran before this rollout (what a service joining
    /// mid-rollout is released until its step comes).
    #[serde(default)]
    pub base: Option<Confirmed>,
}

/// Small engine-wide state stored with the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineMeta {
    pub next_id: u64,
    /// Per config key (`ns/group/name`), the last version fully rolled out
    /// (or released with no rollout).
    pub stable: BTreeMap<String, Confirmed>,
}

/// What changed since the last [`Engine::take_changes`], already encoded
/// for the store (JSON, see [`super::rollout_store`]): `None` = deleted.
/// Encoded straight from the engine's state rather than cloned and encoded
/// later: a rollout to a large fleet changes every device using the key,
/// and cloning them cost more than writing them.
#[derive(Debug, Default)]
pub struct Changes {
    pub devices: Vec<(String, Option<String>)>,
    pub rollouts: Vec<(u64, Option<String>)>,
    pub meta: Option<String>,
    /// Long polls to wake once the change is stored.
    pub wake: Vec<watch::Sender<u64>>,
    /// Devices whose polls wait for this change to be stored (see
    /// [`Engine::take_changes_held`], [`Engine::unhold`]).
    pub held: Vec<String>,
    /// The change must be on disk before it is acknowledged. False only for
    /// a registration that touched no rollout: if a crash loses it, the
    /// device's next poll gets 404 and it registers again, to the same
    /// result.
    pub durable: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.rollouts.is_empty() && self.meta.is_none()
    }

    /// Wakes the long polls of every device the change released to.
    pub fn wake(&self) {
        for notify in &self.wake {
            notify.send_modify(|generation| *generation += 1);
        }
    }
}

struct Device {
    state: DeviceState,
    notify: watch::Sender<u64>,
    /// Changes released to this device that are not on disk yet (see
    /// [`Engine::take_changes_held`]): its polls are answered nothing until
    /// they are, so a device never runs a version a crash could forget.
    held: u32,
}

impl DeviceState {
    fn uses(&self, service: &str, key: &ConfigKey) -> bool {
        self.services
            .iter()
            .any(|s| s.name == service && &s.config == key)
    }
}

/// A step of another rollout that can hold a step back (see
/// [`Engine::unsettled_elsewhere`]).
struct Unsettled<'a> {
    rollout: u64,
    service: &'a str,
    assigned: bool,
}

#[derive(Default)]
struct Dirty {
    devices: BTreeSet<String>,
    rollouts: BTreeSet<u64>,
    meta: bool,
    /// Devices to wake, in any order and repeated (sorted and deduplicated
    /// when taken): a release to 10,000 devices pushes 10,000 names, which
    /// a set would insert in 10,000 descents of string comparisons.
    wake: Vec<String>,
    /// See [`Changes::durable`].
    relaxed: bool,
}

#[derive(Default)]
pub struct Engine {
    devices: HashMap<String, Device>,
    /// Per config key, the devices with a service using it (sorted): a new
    /// version plans from these alone, so a write to a key few devices use
    /// does not walk the whole fleet.
    users: HashMap<ConfigKey, BTreeSet<String>>,
    rollouts: BTreeMap<u64, RolloutEntry>,
    meta: EngineMeta,
    dirty: Dirty,
    /// Long-poll answers encoded so far (see [`Answers`]).
    answers: Answers,
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("rollout state always serializes")
}

/// [`encode`] of a rollout into a buffer sized for it at once: grown by
/// doubling, a record of megabytes is copied a dozen times into fresh
/// memory on the way (capacity never written costs no page).
fn encode_rollout(entry: &RolloutEntry) -> String {
    let steps: usize = entry.rollout.batches.iter().map(Vec::len).sum();
    let mut buf = Vec::with_capacity(1024 + steps * 320);
    serde_json::to_writer(&mut buf, entry).expect("rollout state always serializes");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Done => "done",
    }
}

/// [`Engine::pending`] without cloning: the assignments due to `device`
/// (borrowed from its state) and its wake-up receiver.
fn poll_device<'a>(
    devices: &'a mut HashMap<String, Device>,
    dirty: &mut Dirty,
    device: &str,
    have: &HashMap<String, String>,
    now_ms: u64,
) -> CenterResult<(SmallVec<[&'a Assignment; 4]>, watch::Receiver<u64>)> {
    let Some(dev) = devices.get_mut(device) else {
        return Err(CenterError::NotFound(format!(
            "device {device} is not registered; register it first"
        )));
    };
    dev.state.seen_ms = now_ms;
    if dev.state.lost {
        dev.state.lost = false;
        dirty.devices.insert(device.to_string());
        tracing::info!("config center: device {device} is back");
    }
    let mut receiver = dev.notify.subscribe();
    receiver.mark_unchanged();
    if dev.held > 0 {
        return Ok((SmallVec::new(), receiver));
    }
    let state = &dev.state;
    let due = state
        .services
        .iter()
        .filter_map(|s| state.released.get(&s.name))
        .filter(|a| have.get(&a.service) != Some(&a.md5))
        .collect();
    Ok((due, receiver))
}

/// Records in a rollout's `previous` what each of its releases replaced
/// (device, service, the assignment before). A rollout's first release
/// fills an empty map: it is built at once from the entries sorted by
/// device rather than by one descent of string comparisons per device
/// (10,000 in the put of a change to 10,000 devices); later releases are
/// inserted one by one. Either way a repeated (device, service) keeps the
/// last value given.
fn remember_previous(
    map: &mut BTreeMap<String, PerService<Option<Assignment>>>,
    mut fresh: Vec<(String, String, Option<Assignment>)>,
) {
    if !map.is_empty() {
        for (device, service, before) in fresh {
            map.entry(device).or_default().insert(service, before);
        }
        return;
    }
    // Stable: entries of one device keep their order.
    fresh.sort_by(|a, b| a.0.cmp(&b.0));
    let mut grouped: Vec<(String, PerService<Option<Assignment>>)> =
        Vec::with_capacity(fresh.len());
    for (device, service, before) in fresh {
        match grouped.last_mut() {
            Some((last, services)) if *last == device => {
                services.insert(service, before);
            }
            _ => {
                let mut services = PerService::default();
                services.insert(service, before);
                grouped.push((device, services));
            }
        }
    }
    *map = grouped.into_iter().collect();
}

/// How many distinct long-poll answers [`Answers`] keeps encoded.
const ANSWERS_KEPT: usize = 16;

/// Long-poll answers already encoded, by the assignments they carry. A
/// batch released to 10,000 devices of one service is the same answer
/// 10,000 times: encoding it once and sharing the bytes (a reference count
/// per answer) takes the cloning, encoding and freeing out of every answer,
/// which run while the other devices still wait. Keyed by the whole
/// assignments (compared in full), so an entry is never stale; a few are
/// kept for devices running several services, replaced round-robin.
#[derive(Default)]
struct Answers {
    encoded: Vec<(Vec<Assignment>, Bytes)>,
    next: usize,
}

impl Answers {
    fn encoded(&mut self, due: &[&Assignment]) -> Bytes {
        let same = |kept: &Vec<Assignment>| {
            kept.len() == due.len() && kept.iter().zip(due).all(|(k, d)| k == *d)
        };
        if let Some((_, body)) = self.encoded.iter().find(|(kept, _)| same(kept)) {
            return body.clone();
        }
        let answer = WatchAnswer {
            assignments: due.iter().map(|a| (*a).clone()).collect(),
        };
        let body =
            Bytes::from(serde_json::to_vec(&answer).expect("a long-poll answer always serializes"));
        let entry = (answer.assignments, body.clone());
        if self.encoded.len() < ANSWERS_KEPT {
            self.encoded.push(entry);
        } else {
            self.encoded[self.next] = entry;
            self.next = (self.next + 1) % ANSWERS_KEPT;
        }
        body
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// The engine as stored: every device is taken as just heard from
    /// (`now_ms`), so a restart does not count its own downtime as silence.
    /// Pace timers that were running are returned to be run again.
    pub fn restore(
        devices: Vec<(String, DeviceState)>,
        rollouts: Vec<RolloutEntry>,
        meta: EngineMeta,
        now_ms: u64,
    ) -> (Engine, Vec<Timer>) {
        let mut engine = Engine {
            meta,
            ..Engine::default()
        };
        for (name, mut state) in devices {
            state.seen_ms = now_ms;
            engine.index(&name, state.services.iter().map(|s| &s.config));
            let notify = watch::channel(0).0;
            engine.devices.insert(
                name,
                Device {
                    state,
                    notify,
                    held: 0,
                },
            );
        }
        let mut timers = Vec::new();
        for entry in rollouts {
            let r = &entry.rollout;
            engine.meta.next_id = engine.meta.next_id.max(r.id);
            if entry.waiting_timer && r.state == RolloutState::Running {
                timers.push(Timer {
                    rollout_id: r.id,
                    batch: r.current_batch,
                    delay_ms: r.pace_ms,
                });
            }
            engine.rollouts.insert(r.id, entry);
        }
        engine.restore_releases();
        (engine, timers)
    }

    /// Replaces the whole state with `stored`, as another center sharing
    /// the store left it (see [`super::service`]): what this center knew
    /// is dropped, but each device that remains keeps its long-poll wake-up
    /// (so polls held here are not cut off) and the later of the two times
    /// it was last heard from (here, or as stored); a device new to this
    /// center counts as heard from now, as at a restart. Returns the pace timers the stored state
    /// runs, the devices whose releases changed (woken here), and the
    /// rollouts that are new or moved to another batch or state (to
    /// announce).
    pub fn replace(
        &mut self,
        stored: (Vec<(String, DeviceState)>, Vec<RolloutEntry>, EngineMeta),
        now_ms: u64,
    ) -> (Vec<Timer>, Vec<String>, Vec<u64>) {
        let (devices, rollouts, meta) = stored;
        // As stored (restore takes every device as heard from now, right
        // for a restart but not here: another center's write is no sign of
        // life from a device).
        let stored_seen: HashMap<String, u64> = devices
            .iter()
            .map(|(name, state)| (name.clone(), state.seen_ms))
            .collect();
        let (mut fresh, timers) = Engine::restore(devices, rollouts, meta, now_ms);
        let mut woken = Vec::new();
        for (name, device) in fresh.devices.iter_mut() {
            match self.devices.remove(name) {
                Some(old) => {
                    let stored = stored_seen.get(name).copied().unwrap_or(0);
                    device.state.seen_ms = old.state.seen_ms.max(stored);
                    device.notify = old.notify;
                    if old.state.released != device.state.released
                        || old.state.services != device.state.services
                    {
                        woken.push(name.clone());
                    }
                }
                None => woken.push(name.clone()),
            }
        }
        let moved = fresh
            .rollouts
            .iter()
            .filter(|(id, e)| {
                self.rollouts.get(id).is_none_or(|old| {
                    (old.rollout.current_batch, old.rollout.state)
                        != (e.rollout.current_batch, e.rollout.state)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        // Devices gone from the store: their polls end (the sender drops)
        // and the device registers again.
        *self = fresh;
        for name in &woken {
            if let Some(device) = self.devices.get(name) {
                device.notify.send_modify(|generation| *generation += 1);
            }
        }
        (timers, woken, moved)
    }

    /// Other centers heard from these devices (device, when): the later
    /// time counts, so device expiry sees polls answered anywhere, and a
    /// lost device is back as if it had polled here.
    pub fn saw(&mut self, seen: &[(String, u64)]) {
        for (name, at) in seen {
            if let Some(device) = self.devices.get_mut(name) {
                device.state.seen_ms = device.state.seen_ms.max(*at);
                if device.state.lost {
                    device.state.lost = false;
                    self.dirty.devices.insert(name.clone());
                    tracing::info!("config center: device {name} is back (polling another center)");
                }
            }
        }
    }

    /// Puts back what rollouts released and the devices have not answered
    /// yet. A release is stored with its rollout (the step `Assigned`), not
    /// in each device's record: releasing a batch to 10,000 devices writes
    /// one record, not 10,000. Every way out of `Assigned` (ack, failure,
    /// skip, abort) writes the device's record, and so does forgetting a
    /// rollout ([`Engine::prune`], [`Engine::forget_key`]), so a record is
    /// stale only by releases of steps still `Assigned`, applied here in
    /// rollout order (a newer rollout's release wins, as when it was made).
    fn restore_releases(&mut self) {
        let Engine {
            rollouts, devices, ..
        } = self;
        for (id, e) in rollouts.iter() {
            let r = &e.rollout;
            for step in r.batches.iter().flatten() {
                if step.state != StepState::Assigned {
                    continue;
                }
                let Some(device) = devices.get_mut(&step.device) else {
                    continue;
                };
                let state = &mut device.state;
                let newer = state
                    .released
                    .get(&step.service)
                    .is_none_or(|a| a.rollout_id <= *id);
                if state.uses(&step.service, &r.key) && newer {
                    state.released.insert(
                        step.service.clone(),
                        Assignment {
                            rollout_id: *id,
                            service: step.service.clone(),
                            key: r.key.clone(),
                            version: r.version,
                            md5: e.md5.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Marks the devices with a step `Assigned` in rollout entry `e` to be
    /// stored: their records do not carry that release yet (see
    /// [`Engine::restore_releases`]), and `e` is about to be forgotten.
    fn store_releases_of(dirty: &mut Dirty, e: &RolloutEntry) {
        for step in e.rollout.batches.iter().flatten() {
            if step.state == StepState::Assigned {
                dirty.devices.insert(step.device.clone());
            }
        }
    }

    /// Takes what changed since the last call, for the caller to store and
    /// then wake the long polls.
    pub fn take_changes(&mut self) -> Changes {
        self.take(false)
    }

    /// [`Engine::take_changes`]; with `hold`, each device woken is also
    /// held (see [`Engine::take_changes_held`]).
    fn take(&mut self, hold: bool) -> Changes {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.wake.sort_unstable();
        dirty.wake.dedup();
        let mut wake = Vec::with_capacity(dirty.wake.len());
        let mut held = Vec::new();
        for name in dirty.wake {
            let Some(device) = self.devices.get_mut(&name) else {
                continue;
            };
            wake.push(device.notify.clone());
            if hold {
                device.held += 1;
                held.push(name);
            }
        }
        Changes {
            durable: !dirty.relaxed || !dirty.rollouts.is_empty(),
            devices: dirty
                .devices
                .into_iter()
                .map(|name| {
                    let state = self.devices.get(&name).map(|d| encode(&d.state));
                    (name, state)
                })
                .collect(),
            rollouts: dirty
                .rollouts
                .into_iter()
                .map(|id| (id, self.rollouts.get(&id).map(encode_rollout)))
                .collect(),
            meta: dirty.meta.then(|| encode(&self.meta)),
            wake,
            held,
        }
    }

    /// Records that `device` has services using `keys`, in [`Engine::users`].
    fn index<'a>(&mut self, device: &str, keys: impl Iterator<Item = &'a ConfigKey>) {
        for key in keys {
            self.users
                .entry(key.clone())
                .or_default()
                .insert(device.to_string());
        }
    }

    /// Takes `device` out of [`Engine::users`] for `keys`.
    fn unindex<'a>(&mut self, device: &str, keys: impl Iterator<Item = &'a ConfigKey>) {
        for key in keys {
            if let Some(users) = self.users.get_mut(key) {
                users.remove(device);
                if users.is_empty() {
                    self.users.remove(key);
                }
            }
        }
    }

    /// [`Engine::take_changes`], and holds back what they release: until
    /// [`Engine::unhold`] is called with them (once they are on disk), the
    /// long polls of the devices they release to are answered nothing and
    /// wait for the wake-up that follows. Call it in the same engine lock as
    /// the change itself, so no poll sees the change before it is held.
    pub fn take_changes_held(&mut self) -> Changes {
        self.take(true)
    }

    /// The changes taken by [`Engine::take_changes_held`] are on disk (or
    /// will never be): their devices' polls may see them. Then wake them
    /// ([`Changes::wake`]).
    pub fn unhold(&mut self, changes: &Changes) {
        for name in &changes.held {
            if let Some(device) = self.devices.get_mut(name) {
                device.held = device.held.saturating_sub(1);
            }
        }
    }

    /// Records the services of `device` (replacing an earlier registration).
    /// `current` gives the current (version, md5) of a config, if any: a
    /// service that is new, or now uses another config, is released it at
    /// once, or, while a rollout of that config runs, the version the rollout
    /// started from, and joins the rollout. A service kept with the same
    /// config keeps what it was released. Refuses bad names, unknown
    /// dependencies and cycles (nothing changes).
    pub fn register(
        &mut self,
        device: &str,
        registration: Register,
        current: &dyn Fn(&ConfigKey) -> Option<(u64, String)>,
        now_ms: u64,
    ) -> CenterResult<Vec<Timer>> {
        check_name("device", device).map_err(CenterError::Invalid)?;
        for service in &registration.services {
            check_name("service", &service.name).map_err(CenterError::Invalid)?;
            service.config.validate().map_err(CenterError::Invalid)?;
        }
        for label in &registration.labels {
            check_name("label", label).map_err(CenterError::Invalid)?;
        }
        let order = planner::dependency_order(&registration.services)
            .map_err(|e| CenterError::Invalid(format!("device {device}: {e}")))?;
        let mut slots: Vec<Option<ServiceRegistration>> =
            registration.services.into_iter().map(Some).collect();
        let services: Vec<ServiceRegistration> =
            order.into_iter().filter_map(|i| slots[i].take()).collect();

        let entry = self
            .devices
            .entry(device.to_string())
            .or_insert_with(|| Device {
                state: DeviceState {
                    registered_ms: now_ms,
                    ..DeviceState::default()
                },
                notify: watch::channel(0).0,
                held: 0,
            });
        let state = &mut entry.state;
        self.dirty.devices.insert(device.to_string());
        self.dirty.wake.push(device.to_string());
        let old: HashMap<String, ConfigKey> = state
            .services
            .drain(..)
            .map(|s| (s.name, s.config))
            .collect();
        state.registered_ms = now_ms;
        state.seen_ms = now_ms;
        state.lost = false;
        state.labels = registration.labels;
        let mut touched = Vec::new();
        for service in &services {
            if old.get(&service.name) == Some(&service.config) {
                continue;
            }
            state.confirmed.remove(&service.name);
            state.released.remove(&service.name);
            let active = self.rollouts.iter_mut().rev().find(|(_, e)| {
                e.rollout.key == service.config && e.rollout.state != RolloutState::Done
            });
            if let Some((&id, e)) = active {
                if let Some(base) = &e.base {
                    state.released.insert(
                        service.name.clone(),
                        Assignment {
                            rollout_id: 0,
                            service: service.name.clone(),
                            key: service.config.clone(),
                            version: base.version,
                            md5: base.md5.clone(),
                        },
                    );
                }
                append_step(&mut e.rollout, device, &service.name);
                self.dirty.rollouts.insert(id);
                touched.push(id);
                continue;
            }
            if let Some((version, md5)) = current(&service.config) {
                self.meta.stable.insert(
                    service.config.to_string(),
                    Confirmed {
                        version,
                        md5: md5.clone(),
                    },
                );
                self.dirty.meta = true;
                state.released.insert(
                    service.name.clone(),
                    Assignment {
                        rollout_id: 0,
                        service: service.name.clone(),
                        key: service.config.clone(),
                        version,
                        md5,
                    },
                );
            }
        }
        for name in old.keys() {
            if !services.iter().any(|s| &s.name == name) {
                state.released.remove(name);
                state.confirmed.remove(name);
            }
        }
        let keys: Vec<ConfigKey> = services.iter().map(|s| s.config.clone()).collect();
        state.services = services;
        self.unindex(device, old.values());
        self.index(device, keys.iter());
        let state = &self.devices.get(device).expect("inserted above").state;

        // Steps this device no longer matches would wait forever: settle them.
        for (id, e) in self.rollouts.iter_mut() {
            let Some(batch) = e.rollout.batches.get_mut(e.rollout.current_batch) else {
                continue;
            };
            for step in batch.iter_mut() {
                if step.device == device
                    && step.state == StepState::Assigned
                    && !state.uses(&step.service, &e.rollout.key)
                {
                    step.state = StepState::Skipped;
                    step.acked_ms = Some(now_ms);
                    step.reason = format!(
                        "skipped: {device} no longer registers service {} with {}",
                        step.service, e.rollout.key
                    );
                    self.dirty.rollouts.insert(*id);
                    touched.push(*id);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        self.dirty.relaxed = touched.is_empty();
        let mut timers: Vec<Timer> = touched
            .into_iter()
            .flat_map(|id| self.run(id, now_ms))
            .collect();
        timers.extend(self.run_all(now_ms));
        Ok(timers)
    }

    /// Which registered devices a canary list names (by name or label), for
    /// `key`; an entry naming no device using `key` is refused.
    pub fn check_canary(&self, key: &ConfigKey, canary: &[String]) -> CenterResult<()> {
        for wanted in canary {
            let found = self.devices.iter().any(|(name, d)| {
                (name == wanted || d.state.labels.contains(wanted))
                    && d.state.services.iter().any(|s| &s.config == key)
            });
            if !found {
                return Err(CenterError::Invalid(format!(
                    "canary {wanted:?} names no registered device (or device label) using {key}"
                )));
            }
        }
        Ok(())
    }

    /// A new version of `key` was stored: plans a rollout to every
    /// registered (device, service) using it, releases its first batch and
    /// supersedes older rollouts of the key. Returns the rollout id (None
    /// when nothing uses the key) and the timers to run.
    pub fn new_version(
        &mut self,
        key: &ConfigKey,
        version: u64,
        md5: &str,
        options: &PlanOptions,
        now_ms: u64,
    ) -> (Option<u64>, Vec<Timer>) {
        if self
            .rollouts
            .values()
            .any(|e| &e.rollout.key == key && e.rollout.version >= version)
        {
            return (None, Vec::new());
        }
        // Only the devices using the key, already sorted (a write to a key
        // few devices use must not walk the whole fleet).
        let names: Vec<&String> = self.users.get(key).into_iter().flatten().collect();
        let is_canary = |name: &str| {
            let labels = &self.devices[name].state.labels;
            options
                .canary
                .iter()
                .any(|c| c == name || labels.contains(c))
        };
        // Planned on borrowed names: the steps below are the only copies.
        let mut canaries = Vec::new();
        let mut others = Vec::new();
        for name in names {
            let services: Vec<&String> = self.devices[name]
                .state
                .services
                .iter()
                .filter(|s| &s.config == key)
                .map(|s| &s.name)
                .collect();
            if services.is_empty() {
                continue;
            }
            if is_canary(name) {
                canaries.push((name, services));
            } else {
                others.push((name, services));
            }
        }
        if canaries.is_empty() && others.is_empty() {
            // Nothing to store: a device registering later is released the
            // stored current version (and records it as stable then), so a
            // write to a key nobody uses costs no second transaction.
            return (None, Vec::new());
        }
        let batch_size = options.batch_size.max(1);
        // Canaries alone first (all of them in the first batch), then the rest.
        let mut planned = planner::plan(&canaries, canaries.len().max(1));
        planned.extend(planner::plan(&others, batch_size));
        let batches = planned
            .into_iter()
            .map(|batch| {
                batch
                    .into_iter()
                    .map(|(device, service)| pending_step(device.clone(), service.clone()))
                    .collect()
            })
            .collect();
        self.prune();
        self.meta.next_id += 1;
        self.dirty.meta = true;
        let id = self.meta.next_id;
        let mut base = self.meta.stable.get(&key.to_string()).cloned();
        for (old_id, e) in self.rollouts.iter_mut() {
            if &e.rollout.key == key && e.rollout.state != RolloutState::Done {
                e.rollout.state = RolloutState::Done;
                e.waiting_timer = false;
                e.rollout.paused_reason = format!("superseded by rollout {id} (version {version})");
                if e.base.is_some() {
                    base = e.base.clone();
                }
                self.dirty.rollouts.insert(*old_id);
            }
        }
        self.rollouts.insert(
            id,
            RolloutEntry {
                rollout: Rollout {
                    id,
                    key: key.clone(),
                    version,
                    state: RolloutState::Running,
                    batch_size,
                    pace_ms: options.pace_ms,
                    current_batch: 0,
                    batches,
                    created_ms: now_ms,
                    paused_reason: String::new(),
                    canary: options.canary.clone(),
                    approve_each_batch: options.approve_each_batch,
                },
                md5: md5.to_string(),
                previous: BTreeMap::new(),
                waiting_timer: false,
                base,
            },
        );
        self.dirty.rollouts.insert(id);
        let mut timers = self.run(id, now_ms);
        timers.extend(self.run_all(now_ms));
        (Some(id), timers)
    }

    /// Forgets the oldest finished rollouts beyond [`KEPT_ROLLOUTS`].
    fn prune(&mut self) {
        let mut excess = self.rollouts.len().saturating_sub(KEPT_ROLLOUTS - 1);
        if excess == 0 {
            return;
        }
        let dirty = &mut self.dirty;
        self.rollouts.retain(|id, e| {
            if excess > 0 && e.rollout.state == RolloutState::Done {
                excess -= 1;
                dirty.rollouts.insert(*id);
                Self::store_releases_of(dirty, e);
                false
            } else {
                true
            }
        });
    }

    /// Runs every running rollout: a step held back because its device was
    /// busy in another rollout, or waited for a dependency in another key,
    /// may go now.
    fn run_all(&mut self, now_ms: u64) -> Vec<Timer> {
        let running: Vec<u64> = self
            .rollouts
            .iter()
            .filter(|(_, e)| e.rollout.state == RolloutState::Running && !e.waiting_timer)
            .map(|(id, _)| *id)
            .collect();
        running
            .into_iter()
            .flat_map(|id| self.run(id, now_ms))
            .collect()
    }

    /// Why `device`'s `service` must not be released by rollout `id` now:
    /// the device has a step assigned in another running rollout (one
    /// service at a time per device), or a service it depends on (through
    /// any config key) still has an unsettled step in another rollout.
    ///
    /// `elsewhere` is [`Engine::unsettled_elsewhere`] of rollout `id`.
    fn blocked(
        &self,
        elsewhere: &HashMap<&str, Vec<Unsettled<'_>>>,
        device: &str,
        service: &str,
    ) -> Option<String> {
        let steps = elsewhere.get(device)?;
        let dev = self.devices.get(device)?;
        let deps = dependencies(&dev.state.services, service);
        steps.iter().find_map(|step| {
            if step.assigned {
                Some(format!(
                    "waiting: {device} is updating {} in rollout {}",
                    step.service, step.rollout
                ))
            } else if deps.contains(step.service) {
                Some(format!(
                    "waiting: {device} must update {} first (rollout {})",
                    step.service, step.rollout
                ))
            } else {
                None
            }
        })
    }

    /// Per device, the steps of rollouts other than `id` that can hold a
    /// step of `id` back: assigned ones, and unsettled ones of their current
    /// batch or later; in rollout, batch and step order. Built once per
    /// release rather than searched per step: two rollouts over a large
    /// fleet would otherwise cost steps x steps.
    fn unsettled_elsewhere(&self, id: u64) -> HashMap<&str, Vec<Unsettled<'_>>> {
        let mut out: HashMap<&str, Vec<Unsettled<'_>>> = HashMap::new();
        for (other, e) in &self.rollouts {
            if *other == id || e.rollout.state == RolloutState::Done {
                continue;
            }
            for (b, batch) in e.rollout.batches.iter().enumerate() {
                for step in batch {
                    let assigned = step.state == StepState::Assigned;
                    if assigned || (!step.state.is_settled() && b >= e.rollout.current_batch) {
                        out.entry(step.device.as_str())
                            .or_default()
                            .push(Unsettled {
                                rollout: *other,
                                service: &step.service,
                                assigned,
                            });
                    }
                }
            }
        }
        out
    }

    /// Releases the current batch's pending steps, and moves on while
    /// batches complete (at once, or through a timer when paced).
    fn run(&mut self, id: u64, now_ms: u64) -> Vec<Timer> {
        loop {
            let Some(e) = self.rollouts.get(&id) else {
                return Vec::new();
            };
            let r = &e.rollout;
            if r.state != RolloutState::Running || e.waiting_timer {
                return Vec::new();
            }
            // Stored again only if something below changes it: a change
            // elsewhere runs every rollout, and a big one is megabytes.
            if r.current_batch >= r.batches.len() {
                self.finish(id);
                return Vec::new();
            }
            // Which pending steps of the batch are held back (checked before
            // borrowing the rollout mutably).
            let others = self
                .rollouts
                .iter()
                .any(|(other, e)| *other != id && e.rollout.state != RolloutState::Done);
            let held: HashMap<usize, String> = if others {
                let elsewhere = self.unsettled_elsewhere(id);
                r.batches[r.current_batch]
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.state == StepState::Pending)
                    .filter_map(|(i, s)| {
                        self.blocked(&elsewhere, &s.device, &s.service)
                            .map(|w| (i, w))
                    })
                    .collect()
            } else {
                HashMap::new()
            };
            let e = self.rollouts.get_mut(&id).expect("looked up above");
            let r = &mut e.rollout;
            let batch = &mut r.batches[r.current_batch];
            // (device, service, what its release replaced), for `previous`.
            let mut previous = Vec::new();
            for (i, step) in batch.iter_mut().enumerate() {
                if step.state != StepState::Pending {
                    continue;
                }
                if let Some(why) = held.get(&i) {
                    if step.reason != *why {
                        step.reason = why.clone();
                        self.dirty.rollouts.insert(id);
                    }
                    continue;
                }
                self.dirty.rollouts.insert(id);
                let device = self
                    .devices
                    .get_mut(&step.device)
                    .filter(|d| d.state.uses(&step.service, &r.key));
                let Some(device) = device else {
                    step.state = StepState::Skipped;
                    step.acked_ms = Some(now_ms);
                    step.reason = format!(
                        "skipped: {} no longer registers service {} with {}",
                        step.device, step.service, r.key
                    );
                    continue;
                };
                // Stored with the rollout (see `restore_releases`): no
                // device record is written for a release.
                let assignment = Assignment {
                    rollout_id: id,
                    service: step.service.clone(),
                    key: r.key.clone(),
                    version: r.version,
                    md5: e.md5.clone(),
                };
                step.assigned_ms = Some(now_ms);
                step.reason.clear();
                let state = &mut device.state;
                let unchanged = state
                    .confirmed
                    .get(&step.service)
                    .is_some_and(|c| c.md5 == e.md5)
                    && state
                        .released
                        .get(&step.service)
                        .is_some_and(|a| a.md5 == e.md5);
                if unchanged {
                    // The device acknowledged this very content, and nothing
                    // else was released since: no refetch (its long poll
                    // compares MD5s and would not answer anyway).
                    self.dirty.devices.insert(step.device.clone());
                    state.released.insert(step.service.clone(), assignment);
                    state.confirmed.insert(
                        step.service.clone(),
                        Confirmed {
                            version: r.version,
                            md5: e.md5.clone(),
                        },
                    );
                    step.state = StepState::Succeeded;
                    step.acked_ms = Some(now_ms);
                    step.reason = "unchanged: the device already runs this content".into();
                    continue;
                }
                let before = state.released.insert(step.service.clone(), assignment);
                previous.push((step.device.clone(), step.service.clone(), before));
                step.state = StepState::Assigned;
                self.dirty.wake.push(step.device.clone());
            }
            remember_previous(&mut e.previous, previous);
            if !batch.iter().all(|s| s.state.is_settled()) {
                return Vec::new();
            }
            self.dirty.rollouts.insert(id);
            r.current_batch += 1;
            if r.current_batch >= r.batches.len() {
                self.finish(id);
                return Vec::new();
            }
            if r.approve_each_batch {
                r.state = RolloutState::Paused;
                r.paused_reason = format!(
                    "batch {} of {} done; waiting for approval (config continue {id})",
                    r.current_batch,
                    r.batches.len()
                );
                tracing::info!("config center: rollout {id}: {}", r.paused_reason);
                return Vec::new();
            }
            if r.pace_ms > 0 {
                e.waiting_timer = true;
                return vec![Timer {
                    rollout_id: id,
                    batch: r.current_batch,
                    delay_ms: r.pace_ms,
                }];
            }
        }
    }

    /// A rollout went through all its batches: its version is the key's
    /// stable one.
    fn finish(&mut self, id: u64) {
        let Some(e) = self.rollouts.get_mut(&id) else {
            return;
        };
        e.rollout.state = RolloutState::Done;
        e.waiting_timer = false;
        self.meta.stable.insert(
            e.rollout.key.to_string(),
            Confirmed {
                version: e.rollout.version,
                md5: e.md5.clone(),
            },
        );
        self.dirty.meta = true;
        self.dirty.rollouts.insert(id);
    }

    /// A pace timer ran out: release the batch it was for.
    pub fn fire_timer(&mut self, timer: Timer, now_ms: u64) -> Vec<Timer> {
        match self.rollouts.get_mut(&timer.rollout_id) {
            Some(e) if e.waiting_timer && e.rollout.current_batch == timer.batch => {
                e.waiting_timer = false;
                self.dirty.rollouts.insert(timer.rollout_id);
                self.run(timer.rollout_id, now_ms)
            }
            _ => Vec::new(),
        }
    }

    /// A device's acknowledgement. It must match a step released to the
    /// device (same rollout, service and version), or, with rollout id 0,
    /// the initial config released at registration; anything else is a
    /// conflict and changes nothing. A failure pauses the rollout.
    pub fn ack(&mut self, device: &str, ack: &Ack, now_ms: u64) -> CenterResult<Vec<Timer>> {
        let Some(dev) = self.devices.get_mut(device) else {
            return Err(CenterError::NotFound(format!(
                "device {device} is not registered"
            )));
        };
        let dev = &mut dev.state;
        dev.seen_ms = now_ms;
        let service = ack.service.as_str();
        if ack.rollout_id == 0 {
            return match dev.released.get(service) {
                Some(a) if a.rollout_id == 0 && a.version == ack.version => {
                    self.dirty.devices.insert(device.to_string());
                    if ack.ok {
                        dev.confirmed.insert(
                            service.to_string(),
                            Confirmed {
                                version: a.version,
                                md5: a.md5.clone(),
                            },
                        );
                    } else {
                        tracing::warn!(
                            "config center: {device} failed to apply initial {} version {} for {service}: {}",
                            a.key,
                            a.version,
                            ack.reason
                        );
                        dev.released.remove(service);
                    }
                    Ok(Vec::new())
                }
                _ => Err(CenterError::Conflict(format!(
                    "device {device} was not sent version {} of service {service:?} as its initial config",
                    ack.version
                ))),
            };
        }
        let id = ack.rollout_id;
        let Some(e) = self.rollouts.get_mut(&id) else {
            return Err(CenterError::Conflict(format!(
                "device {device} acknowledges rollout {id}, which does not exist: it was not sent"
            )));
        };
        let r = &mut e.rollout;
        if ack.version != r.version {
            return Err(CenterError::Conflict(format!(
                "device {device} acknowledges version {} of service {service:?} but rollout {id} releases version {} of {}",
                ack.version, r.version, r.key
            )));
        }
        // Only the current batch can hold released steps: look there first
        // (a full scan only to word the error).
        let find = |b: usize, batch: &Vec<Step>| {
            batch
                .iter()
                .position(|s| s.device == device && s.service == service)
                .map(|i| (b, i))
        };
        let located = r
            .batches
            .get(r.current_batch)
            .and_then(|batch| find(r.current_batch, batch))
            .or_else(|| {
                r.batches
                    .iter()
                    .enumerate()
                    .find_map(|(b, batch)| find(b, batch))
            });
        let Some((b, i)) = located else {
            return Err(CenterError::Conflict(format!(
                "rollout {id} ({} version {}) has no step for device {device} service {service:?}: it was not sent",
                r.key, r.version
            )));
        };
        let step = &mut r.batches[b][i];
        match (step.state, ack.ok) {
            (StepState::Pending, _) => {
                return Err(CenterError::Conflict(format!(
                    "device {device} service {service:?} was not sent rollout {id} yet (its batch {b}, current batch {})",
                    r.current_batch
                )));
            }
            (StepState::Succeeded, true) | (StepState::Failed, false) => return Ok(Vec::new()),
            (StepState::Skipped, _) => return Ok(Vec::new()),
            (StepState::Succeeded, false) | (StepState::Failed, true) => {
                return Err(CenterError::Conflict(format!(
                    "device {device} service {service:?} already acknowledged rollout {id} as {}",
                    if step.state == StepState::Succeeded {
                        "succeeded"
                    } else {
                        "failed"
                    }
                )));
            }
            (StepState::Assigned, _) => {}
        }
        self.dirty.devices.insert(device.to_string());
        self.dirty.rollouts.insert(id);
        step.acked_ms = Some(now_ms);
        step.reason = ack.reason.clone();
        if ack.ok {
            step.state = StepState::Succeeded;
            // A late ack of a superseded rollout says nothing about what the
            // device runs now.
            if dev
                .released
                .get(service)
                .is_some_and(|a| a.rollout_id == id)
            {
                dev.confirmed.insert(
                    service.to_string(),
                    Confirmed {
                        version: r.version,
                        md5: e.md5.clone(),
                    },
                );
            }
            let mut timers = self.run(id, now_ms);
            timers.extend(self.run_all(now_ms));
            return Ok(timers);
        }
        step.state = StepState::Failed;
        let reason = format!(
            "device {device} service {service} failed to apply {} version {}: {}",
            r.key,
            r.version,
            if ack.reason.is_empty() {
                "no reason given"
            } else {
                &ack.reason
            }
        );
        self.fail_step(id, device, service, reason);
        Ok(self.run_all(now_ms))
    }

    /// A step failed (or timed out): restore what the device had before and
    /// pause the rollout with `reason`.
    fn fail_step(&mut self, id: u64, device: &str, service: &str, reason: String) {
        let Some(e) = self.rollouts.get_mut(&id) else {
            return;
        };
        self.dirty.rollouts.insert(id);
        if let Some(dev) = self.devices.get_mut(device) {
            let dev_state = &mut dev.state;
            if dev_state
                .released
                .get(service)
                .is_some_and(|a| a.rollout_id == id)
            {
                let before = e
                    .previous
                    .get(device)
                    .and_then(|m| m.get(service))
                    .cloned()
                    .flatten();
                match before {
                    Some(before) => {
                        dev_state.released.insert(service.to_string(), before);
                    }
                    None => {
                        dev_state.released.remove(service);
                    }
                }
                self.dirty.devices.insert(device.to_string());
                self.dirty.wake.push(device.to_string());
            }
        }
        let r = &mut e.rollout;
        if r.state == RolloutState::Running {
            r.state = RolloutState::Paused;
            r.paused_reason = reason;
            tracing::warn!("config center: rollout {id} paused: {}", r.paused_reason);
        }
    }

    /// Resumes (continues) a paused rollout: its failed steps are released
    /// again; after an approval pause the next batch is released.
    pub fn resume(&mut self, id: u64, now_ms: u64) -> CenterResult<Vec<Timer>> {
        let Some(e) = self.rollouts.get_mut(&id) else {
            return Err(CenterError::NotFound(format!("rollout {id} not found")));
        };
        let r = &mut e.rollout;
        if r.state != RolloutState::Paused {
            return Err(CenterError::Conflict(format!(
                "rollout {id} is not paused (it is {})",
                state_name(r.state)
            )));
        }
        self.dirty.rollouts.insert(id);
        r.state = RolloutState::Running;
        r.paused_reason.clear();
        if let Some(batch) = r.batches.get_mut(r.current_batch) {
            for step in batch.iter_mut().filter(|s| s.state == StepState::Failed) {
                step.state = StepState::Pending;
                step.reason.clear();
                step.assigned_ms = None;
                step.acked_ms = None;
            }
        }
        Ok(self.run(id, now_ms))
    }

    /// Ends a rollout that is not done: released steps of its current batch
    /// are restored to what the device had before; nothing more is released.
    pub fn abort(&mut self, id: u64, now_ms: u64) -> CenterResult<Vec<Timer>> {
        let Some(e) = self.rollouts.get_mut(&id) else {
            return Err(CenterError::NotFound(format!("rollout {id} not found")));
        };
        if e.rollout.state == RolloutState::Done {
            return Err(CenterError::Conflict(format!(
                "rollout {id} is already done"
            )));
        }
        let assigned: Vec<(String, String)> = e
            .rollout
            .batches
            .get(e.rollout.current_batch)
            .into_iter()
            .flatten()
            .filter(|s| s.state == StepState::Assigned)
            .map(|s| (s.device.clone(), s.service.clone()))
            .collect();
        for (device, service) in &assigned {
            self.fail_step(id, device, service, String::new());
        }
        let e = self.rollouts.get_mut(&id).expect("looked up above");
        e.rollout.state = RolloutState::Done;
        e.waiting_timer = false;
        e.rollout.paused_reason = format!(
            "aborted by the operator at batch {}",
            e.rollout.current_batch
        );
        for step in e.rollout.batches.iter_mut().flatten() {
            if matches!(step.state, StepState::Pending | StepState::Assigned) {
                step.state = StepState::Skipped;
                step.acked_ms = Some(now_ms);
                step.reason = "aborted".into();
            }
        }
        self.dirty.rollouts.insert(id);
        tracing::warn!("config center: rollout {id} aborted");
        Ok(self.run_all(now_ms))
    }

    /// Skips every unsettled step of `device` in rollout `id` (an operator
    /// giving up on it); the rollout moves on if that completes its batch,
    /// and resumes if it was paused because of this device.
    pub fn skip(&mut self, id: u64, device: &str, now_ms: u64) -> CenterResult<Vec<Timer>> {
        self.skip_steps(id, device, "skipped by the operator", now_ms)
    }

    fn skip_steps(
        &mut self,
        id: u64,
        device: &str,
        reason: &str,
        now_ms: u64,
    ) -> CenterResult<Vec<Timer>> {
        let Some(e) = self.rollouts.get_mut(&id) else {
            return Err(CenterError::NotFound(format!("rollout {id} not found")));
        };
        let mut found = false;
        let mut restore = Vec::new();
        for step in e.rollout.batches.iter_mut().flatten() {
            if step.device != device || step.state.is_settled() {
                continue;
            }
            found = true;
            if step.state == StepState::Assigned {
                restore.push(step.service.clone());
            }
            step.state = StepState::Skipped;
            step.acked_ms = Some(now_ms);
            step.reason = reason.to_string();
        }
        if !found {
            return Err(CenterError::NotFound(format!(
                "rollout {id} has no unfinished step for device {device}"
            )));
        }
        let r = &mut e.rollout;
        if r.state == RolloutState::Paused
            && r.paused_reason.starts_with(&format!("device {device} "))
        {
            r.state = RolloutState::Running;
            r.paused_reason.clear();
        }
        self.dirty.rollouts.insert(id);
        self.restore_released(id, device, &restore);
        let mut timers = self.run(id, now_ms);
        timers.extend(self.run_all(now_ms));
        Ok(timers)
    }

    /// Gives `device` back what it had before rollout `id` for `services`.
    fn restore_released(&mut self, id: u64, device: &str, services: &[String]) {
        let (Some(e), Some(dev)) = (self.rollouts.get(&id), self.devices.get_mut(device)) else {
            return;
        };
        for service in services {
            if dev
                .state
                .released
                .get(service)
                .is_none_or(|a| a.rollout_id != id)
            {
                continue;
            }
            match e
                .previous
                .get(device)
                .and_then(|m| m.get(service))
                .cloned()
                .flatten()
            {
                Some(before) => dev.state.released.insert(service.clone(), before),
                None => dev.state.released.remove(service),
            };
            self.dirty.devices.insert(device.to_string());
            self.dirty.wake.push(device.to_string());
        }
    }

    /// Forgets config `key` (deleted from the store): its finished
    /// rollouts and its stable version, so a config made again under the
    /// same name (from version 1) is rolled out like a new one. Refused
    /// while a rollout of it is not done (abort it first); nothing changes
    /// then. Devices keep what they were released.
    pub fn forget_key(&mut self, key: &ConfigKey) -> CenterResult<()> {
        self.check_forget_key(key)?;
        let ids: Vec<u64> = self
            .rollouts
            .iter()
            .filter(|(_, e)| &e.rollout.key == key)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(e) = self.rollouts.remove(&id) {
                Self::store_releases_of(&mut self.dirty, &e);
            }
            self.dirty.rollouts.insert(id);
        }
        if self.meta.stable.remove(&key.to_string()).is_some() {
            self.dirty.meta = true;
        }
        Ok(())
    }

    /// Whether [`Engine::forget_key`] would refuse, without changing anything.
    pub fn check_forget_key(&self, key: &ConfigKey) -> CenterResult<()> {
        if let Some(e) = self
            .rollouts
            .values()
            .find(|e| &e.rollout.key == key && e.rollout.state != RolloutState::Done)
        {
            return Err(CenterError::Conflict(format!(
                "rollout {} of {key} is {}: abort it before deleting the config",
                e.rollout.id,
                state_name(e.rollout.state)
            )));
        }
        Ok(())
    }

    /// Forgets a device (decommissioned): its unsettled steps are skipped.
    pub fn remove_device(&mut self, device: &str, now_ms: u64) -> CenterResult<Vec<Timer>> {
        let Some(removed) = self.devices.remove(device) else {
            return Err(CenterError::NotFound(format!(
                "device {device} is not registered"
            )));
        };
        self.unindex(device, removed.state.services.iter().map(|s| &s.config));
        self.dirty.devices.insert(device.to_string());
        for (id, e) in self.rollouts.iter_mut() {
            for step in e.rollout.batches.iter_mut().flatten() {
                if step.device == device && !step.state.is_settled() {
                    step.state = StepState::Skipped;
                    step.acked_ms = Some(now_ms);
                    step.reason = format!("skipped: device {device} was removed");
                    self.dirty.rollouts.insert(*id);
                }
            }
        }
        tracing::info!("config center: device {device} removed");
        Ok(self.run_all(now_ms))
    }

    /// Time passes: assigned steps older than `step_timeout_ms` fail (0:
    /// never), devices silent for `device_expiry_ms` are lost (0: never) and
    /// their steps pause their rollout or are skipped, as `on_lost` says.
    pub fn tick(
        &mut self,
        now_ms: u64,
        step_timeout_ms: u64,
        device_expiry_ms: u64,
        on_lost: OnLost,
    ) -> Vec<Timer> {
        if device_expiry_ms > 0 {
            for (name, dev) in self.devices.iter_mut() {
                let silent = now_ms.saturating_sub(dev.state.seen_ms);
                if !dev.state.lost && silent >= device_expiry_ms {
                    dev.state.lost = true;
                    self.dirty.devices.insert(name.clone());
                    tracing::warn!(
                        "config center: device {name} lost (silent for {} s)",
                        silent / 1000
                    );
                }
            }
        }
        let mut failures = Vec::new();
        let mut skips = Vec::new();
        for (id, e) in self.rollouts.iter_mut() {
            let r = &mut e.rollout;
            if r.state != RolloutState::Running {
                continue;
            }
            let Some(batch) = r.batches.get_mut(r.current_batch) else {
                continue;
            };
            for step in batch.iter_mut() {
                if step.state.is_settled() || step.state == StepState::Failed {
                    continue;
                }
                let lost = self.devices.get(&step.device).is_some_and(|d| d.state.lost);
                if lost {
                    match on_lost {
                        OnLost::Pause => failures.push((
                            *id,
                            step.device.clone(),
                            step.service.clone(),
                            format!(
                                "device {} is lost (silent for over {} s); skip it with `config skip {id} {}` or wait for it",
                                step.device,
                                device_expiry_ms / 1000,
                                step.device
                            ),
                            false,
                        )),
                        OnLost::Skip => skips.push((*id, step.device.clone())),
                    }
                    continue;
                }
                let overdue = step_timeout_ms > 0
                    && step.state == StepState::Assigned
                    && step
                        .assigned_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) >= step_timeout_ms);
                if overdue {
                    failures.push((
                        *id,
                        step.device.clone(),
                        step.service.clone(),
                        format!(
                            "device {} service {} did not acknowledge {} version {} within {} s",
                            step.device,
                            step.service,
                            r.key,
                            r.version,
                            step_timeout_ms / 1000
                        ),
                        true,
                    ));
                }
            }
        }
        for (id, device, service, reason, fail) in failures {
            if fail
                && let Some(step) = self
                    .rollouts
                    .get_mut(&id)
                    .and_then(|e| e.rollout.batches.get_mut(e.rollout.current_batch))
                    .and_then(|b| {
                        b.iter_mut()
                            .find(|s| s.device == device && s.service == service)
                    })
            {
                step.state = StepState::Failed;
                step.acked_ms = Some(now_ms);
                step.reason = reason.clone();
            }
            if fail {
                self.fail_step(id, &device, &service, reason);
            } else if let Some(e) = self.rollouts.get_mut(&id) {
                // Lost: the step stays as it is (the device may come back).
                if e.rollout.state == RolloutState::Running {
                    e.rollout.state = RolloutState::Paused;
                    e.rollout.paused_reason = reason;
                    tracing::warn!(
                        "config center: rollout {id} paused: {}",
                        e.rollout.paused_reason
                    );
                    self.dirty.rollouts.insert(id);
                }
            }
        }
        let mut timers = Vec::new();
        for (id, device) in skips {
            let still = self.rollouts.get(&id).is_some_and(|e| {
                e.rollout
                    .batches
                    .iter()
                    .flatten()
                    .any(|s| s.device == device && !s.state.is_settled())
            });
            if still {
                tracing::warn!("config center: rollout {id}: skipping lost device {device}");
                let reason = format!("skipped: device {device} is lost");
                if let Ok(more) = self.skip_steps(id, &device, &reason, now_ms) {
                    timers.extend(more);
                }
            }
        }
        timers
    }

    /// What `device` should fetch: its released assignments whose MD5
    /// differs from `have` (service -> MD5; a missing service differs), in
    /// dependency order; and a receiver woken on every change for it. Counts
    /// as hearing from the device.
    pub fn pending(
        &mut self,
        device: &str,
        have: &HashMap<String, String>,
        now_ms: u64,
    ) -> CenterResult<(Vec<Assignment>, watch::Receiver<u64>)> {
        let (due, receiver) =
            poll_device(&mut self.devices, &mut self.dirty, device, have, now_ms)?;
        Ok((due.into_iter().cloned().collect(), receiver))
    }

    /// [`Engine::pending`] as the long poll's answer body, already encoded
    /// ([`WatchAnswer`] in JSON), or None if nothing is due. Devices due
    /// the same assignments share one encoded body (see [`Answers`]).
    pub fn pending_answer(
        &mut self,
        device: &str,
        have: &HashMap<String, String>,
        now_ms: u64,
    ) -> CenterResult<(Option<Bytes>, watch::Receiver<u64>)> {
        let Engine {
            devices,
            dirty,
            answers,
            ..
        } = self;
        let (due, receiver) = poll_device(devices, dirty, device, have, now_ms)?;
        let body = (!due.is_empty()).then(|| answers.encoded(&due));
        Ok((body, receiver))
    }

    pub fn is_registered(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// Every rollout, newest first.
    pub fn rollouts(&self) -> Vec<Rollout> {
        self.rollouts
            .values()
            .rev()
            .map(|e| e.rollout.clone())
            .collect()
    }

    pub fn rollout(&self, id: u64) -> CenterResult<Rollout> {
        self.rollouts
            .get(&id)
            .map(|e| e.rollout.clone())
            .ok_or_else(|| CenterError::NotFound(format!("rollout {id} not found")))
    }

    /// What rollout `id` releases and how far it is: (key, version, MD5,
    /// current batch). For announcing releases; None if it is unknown.
    pub fn release_of(&self, id: u64) -> Option<(ConfigKey, u64, String, usize)> {
        self.rollouts.get(&id).map(|e| {
            (
                e.rollout.key.clone(),
                e.rollout.version,
                e.md5.clone(),
                e.rollout.current_batch,
            )
        })
    }

    /// Every (device, service) using `key` and what it confirmed running,
    /// sorted by device and service.
    pub fn listeners(&self, key: &ConfigKey) -> Vec<Listener> {
        let mut out: Vec<Listener> = self
            .devices
            .iter()
            .flat_map(|(name, d)| {
                d.state
                    .services
                    .iter()
                    .filter(|s| &s.config == key)
                    .map(|s| {
                        let confirmed = d.state.confirmed.get(&s.name);
                        Listener {
                            device: name.clone(),
                            service: s.name.clone(),
                            key: key.clone(),
                            version: confirmed.map(|c| c.version),
                            md5: confirmed.map(|c| c.md5.clone()).unwrap_or_default(),
                            lost: d.state.lost,
                        }
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.device, &a.service).cmp(&(&b.device, &b.service)));
        out
    }

    /// Every registered device, sorted by name.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let mut out: Vec<DeviceInfo> = self
            .devices
            .iter()
            .map(|(name, d)| device_info(name, d))
            .collect();
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }

    /// The config rollout `id` rolls out.
    pub fn rollout_key(&self, id: u64) -> CenterResult<ConfigKey> {
        self.rollouts
            .get(&id)
            .map(|e| e.rollout.key.clone())
            .ok_or_else(|| CenterError::NotFound(format!("rollout {id} not found")))
    }

    /// Whether `device` is registered with a service using `key`.
    pub fn device_uses(&self, device: &str, key: &ConfigKey) -> bool {
        self.devices
            .get(device)
            .is_some_and(|d| d.state.services.iter().any(|s| &s.config == key))
    }

    /// One registered device with its services (without building the list
    /// of every device: a registration asks for its own).
    pub fn device(&self, name: &str) -> Option<DeviceInfo> {
        self.devices.get(name).map(|d| device_info(name, d))
    }

    /// Keys with a registered user whose stored version is newer than
    /// anything rolled out: a crash between storing a version and storing
    /// its rollout. `current` gives the stored version of a key.
    pub fn unrolled_keys(&self, current: &dyn Fn(&ConfigKey) -> Option<u64>) -> Vec<ConfigKey> {
        let keys: BTreeSet<&ConfigKey> = self
            .devices
            .values()
            .flat_map(|d| d.state.services.iter().map(|s| &s.config))
            .collect();
        keys.into_iter()
            .filter(|key| {
                let Some(stored) = current(key) else {
                    return false;
                };
                let rolled = self
                    .rollouts
                    .values()
                    .filter(|e| &e.rollout.key == *key)
                    .map(|e| e.rollout.version)
                    .chain(self.meta.stable.get(&key.to_string()).map(|c| c.version))
                    .max()
                    .unwrap_or(0);
                stored > rolled
            })
            .cloned()
            .collect()
    }
}

fn device_info(name: &str, d: &Device) -> DeviceInfo {
    DeviceInfo {
        device: name.to_string(),
        services: d.state.services.clone(),
        released: d
            .state
            .services
            .iter()
            .filter_map(|s| d.state.released.get(&s.name).cloned())
            .collect(),
        registered_ms: d.state.registered_ms,
        labels: d.state.labels.clone(),
        seen_ms: d.state.seen_ms,
        lost: d.state.lost,
        confirmed: d
            .state
            .services
            .iter()
            .map(|s| {
                let c = d.state.confirmed.get(&s.name);
                Listener {
                    device: name.to_string(),
                    service: s.name.clone(),
                    key: s.config.clone(),
                    version: c.map(|c| c.version),
                    md5: c.map(|c| c.md5.clone()).unwrap_or_default(),
                    lost: d.state.lost,
                }
            })
            .collect(),
    }
}

fn pending_step(device: String, service: String) -> Step {
    Step {
        device,
        service,
        state: StepState::Pending,
        reason: String::new(),
        assigned_ms: None,
        acked_ms: None,
    }
}

/// Adds a step for (device, service) joining a rollout under way: in the
/// first batch not yet done that does not hold the device already, after the
/// device's other steps, within the batch size; else in a new last batch.
fn append_step(r: &mut Rollout, device: &str, service: &str) {
    let last_of_device = r
        .batches
        .iter()
        .rposition(|b| b.iter().any(|s| s.device == device))
        .map_or(0, |b| b + 1);
    let start = last_of_device.max(r.current_batch);
    let step = pending_step(device.to_string(), service.to_string());
    match (start..r.batches.len()).find(|&b| r.batches[b].len() < r.batch_size.max(1)) {
        Some(b) => r.batches[b].push(step),
        None => r.batches.push(vec![step]),
    }
}

/// Every service `service` depends on, directly or not, on one device.
fn dependencies<'a>(services: &'a [ServiceRegistration], service: &str) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    let mut todo = vec![service];
    while let Some(name) = todo.pop() {
        if let Some(s) = services.iter().find(|s| s.name == name) {
            for dep in &s.depends_on {
                if out.insert(dep.as_str()) {
                    todo.push(dep.as_str());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ConfigKey {
        s.parse().unwrap()
    }

    fn svc(name: &str, config: &str, deps: &[&str]) -> ServiceRegistration {
        ServiceRegistration {
            name: name.into(),
            config: key(config),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn none(_: &ConfigKey) -> Option<(u64, String)> {
        None
    }

    fn ok(rollout_id: u64, service: &str, version: u64) -> Ack {
        Ack {
            rollout_id,
            service: service.into(),
            version,
            ok: true,
            reason: String::new(),
        }
    }

    fn opts(batch_size: usize, pace_ms: u64) -> PlanOptions {
        PlanOptions {
            batch_size,
            pace_ms,
            ..PlanOptions::default()
        }
    }

    impl Engine {
        /// `pending` at time 0, for tests that do not care about liveness.
        fn pending_at(
            &mut self,
            device: &str,
            have: &HashMap<String, String>,
        ) -> CenterResult<(Vec<Assignment>, watch::Receiver<u64>)> {
            self.pending(device, have, 0)
        }
    }

    fn names(a: &[Assignment]) -> Vec<&str> {
        a.iter().map(|a| a.service.as_str()).collect()
    }

    /// Two devices, each with three services on the same config, chained.
    fn two_devices() -> Engine {
        let mut e = Engine::new();
        for d in ["d1", "d2"] {
            let services = vec![
                svc("c", "n/g/k", &["b"]),
                svc("a", "n/g/k", &[]),
                svc("b", "n/g/k", &["a"]),
            ];
            e.register(
                d,
                Register {
                    services,
                    ..Default::default()
                },
                &none,
                0,
            )
            .unwrap();
        }
        e
    }

    #[test]
    fn registration_releases_current_and_refuses_cycles() {
        let mut e = Engine::new();
        let current = |k: &ConfigKey| (k.name == "k").then(|| (4, "m4".to_string()));
        let reg = Register {
            services: vec![
                svc("b", "n/g/k", &["a"]),
                svc("a", "n/g/k", &[]),
                svc("z", "n/g/other", &[]),
            ],
            ..Default::default()
        };
        e.register("d1", reg, &current, 1).unwrap();
        let (pending, _) = e.pending_at("d1", &HashMap::new()).unwrap();
        assert_eq!(names(&pending), vec!["a", "b"]);
        assert!(pending.iter().all(|a| a.rollout_id == 0 && a.version == 4));
        let have = HashMap::from([("a".to_string(), "m4".to_string())]);
        assert_eq!(names(&e.pending_at("d1", &have).unwrap().0), vec!["b"]);
        let cyclic = Register {
            services: vec![svc("a", "n/g/k", &["b"]), svc("b", "n/g/k", &["a"])],
            ..Default::default()
        };
        let err = e.register("d1", cyclic, &current, 2).unwrap_err();
        assert!(
            matches!(&err, CenterError::Invalid(m) if m.contains("cycle")),
            "{err}"
        );
        // The refused registration changed nothing.
        assert_eq!(e.devices()[0].services.len(), 3);
        assert!(matches!(
            e.pending_at("ghost", &have),
            Err(CenterError::NotFound(_))
        ));
        // Initial config ack.
        e.ack("d1", &ok(0, "a", 4), 3).unwrap();
        assert!(matches!(
            e.ack("d1", &ok(0, "a", 3), 3),
            Err(CenterError::Conflict(_))
        ));
        assert!(matches!(
            e.ack("d1", &ok(0, "z", 1), 3),
            Err(CenterError::Conflict(_))
        ));
    }

    #[test]
    fn rollout_goes_batch_by_batch_in_dependency_order() {
        let mut e = two_devices();
        let (id, timers) = e.new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 5);
        let id = id.unwrap();
        assert!(timers.is_empty());
        let r = e.rollout(id).unwrap();
        assert_eq!(r.batches.len(), 3);
        for (b, expect) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(r.batches[b].len(), 2);
            assert!(r.batches[b].iter().all(|s| &s.service == expect));
        }
        assert_eq!(
            names(&e.pending_at("d1", &HashMap::new()).unwrap().0),
            vec!["a"]
        );
        // d2 is slower; d1 finishing does not release b.
        e.ack("d1", &ok(id, "a", 1), 6).unwrap();
        assert_eq!(e.rollout(id).unwrap().current_batch, 0);
        let err = e.ack("d1", &ok(id, "b", 1), 6).unwrap_err();
        assert!(
            matches!(&err, CenterError::Conflict(m) if m.contains("not sent")),
            "{err}"
        );
        e.ack("d2", &ok(id, "a", 1), 7).unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!(r.current_batch, 1);
        assert_eq!(r.batches[1][0].state, StepState::Assigned);
        assert_eq!(r.batches[1][0].assigned_ms, Some(7));
        let have = HashMap::from([("a".to_string(), "m1".to_string())]);
        assert_eq!(names(&e.pending_at("d1", &have).unwrap().0), vec!["b"]);
        for s in ["b", "c"] {
            for d in ["d1", "d2"] {
                e.ack(d, &ok(id, s, 1), 8).unwrap();
            }
        }
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Done);
        assert_eq!(r.current_batch, 3);
        // Duplicate ack is harmless; wrong version or unknown rollout is not.
        e.ack("d1", &ok(id, "c", 1), 9).unwrap();
        assert!(matches!(
            e.ack("d1", &ok(id, "c", 2), 9),
            Err(CenterError::Conflict(_))
        ));
        assert!(matches!(
            e.ack("d1", &ok(99, "c", 1), 9),
            Err(CenterError::Conflict(_))
        ));
        assert!(matches!(
            e.ack("nobody", &ok(id, "c", 1), 9),
            Err(CenterError::NotFound(_))
        ));
    }

    #[test]
    fn previous_built_at_once_is_the_map_built_entry_by_entry() {
        let a = |service: &str, md5: &str| Assignment {
            rollout_id: 1,
            service: service.into(),
            key: key("n/g/k"),
            version: 1,
            md5: md5.into(),
        };
        let fresh = vec![
            ("d2".to_string(), "web".to_string(), Some(a("web", "m1"))),
            ("d1".to_string(), "web".to_string(), None),
            ("d2".to_string(), "db".to_string(), Some(a("db", "m2"))),
            // Repeated: the last value given wins, as with `insert`.
            ("d1".to_string(), "web".to_string(), Some(a("web", "m3"))),
        ];
        let mut one_by_one: BTreeMap<String, PerService<Option<Assignment>>> = BTreeMap::new();
        for (device, service, before) in fresh.clone() {
            one_by_one
                .entry(device)
                .or_default()
                .insert(service, before);
        }
        let mut at_once = BTreeMap::new();
        remember_previous(&mut at_once, fresh.clone());
        assert_eq!(at_once, one_by_one);
        assert_eq!(at_once["d1"].get("web"), Some(&Some(a("web", "m3"))));
        // A later release adds to what is there.
        let later = vec![("d1".to_string(), "db".to_string(), None)];
        remember_previous(&mut at_once, later.clone());
        remember_previous(&mut one_by_one, later);
        assert_eq!(at_once, one_by_one);
        assert_eq!(at_once["d1"].get("db"), Some(&None));
    }

    #[test]
    fn devices_due_the_same_assignments_share_one_encoded_answer() {
        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 5)
            .0
            .unwrap();
        let nothing = HashMap::new();
        let (d1, _) = e.pending_answer("d1", &nothing, 6).unwrap();
        let (d2, _) = e.pending_answer("d2", &nothing, 6).unwrap();
        let (d1, d2) = (d1.unwrap(), d2.unwrap());
        // Byte for byte what the device got before: the answer in JSON.
        let expect = WatchAnswer {
            assignments: e.pending("d1", &nothing, 6).unwrap().0,
        };
        assert_eq!(d1, serde_json::to_vec(&expect).unwrap());
        assert_eq!(expect.assignments.len(), 1);
        assert_eq!(expect.assignments[0].rollout_id, id);
        // One encoding, shared.
        assert_eq!(d1.as_ptr(), d2.as_ptr());
        // Another assignment is another answer (the cache is keyed by it).
        e.ack("d1", &ok(id, "a", 1), 7).unwrap();
        e.ack("d2", &ok(id, "a", 1), 7).unwrap();
        let have = HashMap::from([("a".to_string(), "m1".to_string())]);
        let (next, _) = e.pending_answer("d1", &have, 8).unwrap();
        let next = next.unwrap();
        let expect = WatchAnswer {
            assignments: e.pending("d1", &have, 8).unwrap().0,
        };
        assert_eq!(next, serde_json::to_vec(&expect).unwrap());
        assert_eq!(expect.assignments[0].service, "b");
        // Nothing due: no body (the caller answers the empty one).
        let all = HashMap::from([
            ("a".to_string(), "m1".to_string()),
            ("b".to_string(), "m1".to_string()),
        ]);
        assert!(e.pending_answer("d1", &all, 9).unwrap().0.is_none());
    }

    #[test]
    fn failure_pauses_restores_release_and_resume_retries() {
        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(1, 0), 0)
            .0
            .unwrap();
        let first = e.rollout(id).unwrap().batches[0][0].clone();
        assert_eq!((first.device.as_str(), first.service.as_str()), ("d1", "a"));
        e.ack(
            "d1",
            &Ack {
                rollout_id: id,
                service: "a".into(),
                version: 1,
                ok: false,
                reason: "health check failed".into(),
            },
            1,
        )
        .unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Paused);
        assert!(
            r.paused_reason.contains("health check failed"),
            "{}",
            r.paused_reason
        );
        assert_eq!(r.current_batch, 0);
        assert_eq!(r.batches[1][0].state, StepState::Pending);
        // The failed version is no longer offered to the device.
        assert!(e.pending_at("d1", &HashMap::new()).unwrap().0.is_empty());
        assert!(matches!(e.resume(id + 1, 2), Err(CenterError::NotFound(_))));
        e.resume(id, 2).unwrap();
        assert!(matches!(e.resume(id, 2), Err(CenterError::Conflict(_))));
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Running);
        assert_eq!(r.batches[0][0].state, StepState::Assigned);
        assert_eq!(
            names(&e.pending_at("d1", &HashMap::new()).unwrap().0),
            vec!["a"]
        );
        e.ack("d1", &ok(id, "a", 1), 3).unwrap();
        assert_eq!(e.rollout(id).unwrap().current_batch, 1);
    }

    #[test]
    fn pace_waits_for_the_timer() {
        let mut e = two_devices();
        let (id, timers) = e.new_version(&key("n/g/k"), 1, "m1", &opts(10, 500), 0);
        let id = id.unwrap();
        assert!(timers.is_empty());
        e.ack("d1", &ok(id, "a", 1), 1).unwrap();
        let timers = e.ack("d2", &ok(id, "a", 1), 1).unwrap();
        assert_eq!(
            timers,
            vec![Timer {
                rollout_id: id,
                batch: 1,
                delay_ms: 500
            }]
        );
        let r = e.rollout(id).unwrap();
        assert_eq!(r.current_batch, 1);
        assert_eq!(r.batches[1][0].state, StepState::Pending);
        // A stale timer does nothing; the right one releases.
        assert!(
            e.fire_timer(
                Timer {
                    rollout_id: id,
                    batch: 0,
                    delay_ms: 500
                },
                2
            )
            .is_empty()
        );
        assert_eq!(
            e.rollout(id).unwrap().batches[1][0].state,
            StepState::Pending
        );
        e.fire_timer(timers[0], 501);
        assert_eq!(
            e.rollout(id).unwrap().batches[1][0].state,
            StepState::Assigned
        );
    }

    #[test]
    fn newer_version_supersedes_and_equal_md5_is_not_resent() {
        let mut e = Engine::new();
        e.register(
            "d1",
            Register {
                services: vec![svc("a", "n/g/k", &[])],
                ..Default::default()
            },
            &none,
            0,
        )
        .unwrap();
        let r1 = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 0)
            .0
            .unwrap();
        e.ack("d1", &ok(r1, "a", 1), 1).unwrap();
        let r2 = e
            .new_version(&key("n/g/k"), 2, "m2", &opts(10, 0), 2)
            .0
            .unwrap();
        // Version 3 goes back to m1 while m2 is still outstanding.
        let r3 = e
            .new_version(&key("n/g/k"), 3, "m1", &opts(10, 0), 3)
            .0
            .unwrap();
        let old = e.rollout(r2).unwrap();
        assert_eq!(old.state, RolloutState::Done);
        assert!(
            old.paused_reason.contains("superseded by rollout"),
            "{}",
            old.paused_reason
        );
        // d1 may have applied m2: it must be sent m1 and acknowledge it.
        let (pending, _) = e
            .pending_at("d1", &HashMap::from([("a".into(), "m2".into())]))
            .unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].rollout_id, pending[0].version), (r3, 3));
        assert_eq!(e.rollout(r3).unwrap().state, RolloutState::Running);
        // A late ack of the superseded rollout is accepted and releases nothing.
        e.ack("d1", &ok(r2, "a", 2), 4).unwrap();
        e.ack("d1", &ok(r3, "a", 3), 5).unwrap();
        assert_eq!(e.rollout(r3).unwrap().state, RolloutState::Done);
        // Version 4: same content (only the description changed) is settled
        // without a round trip.
        let r4 = e
            .new_version(&key("n/g/k"), 4, "m1", &opts(10, 0), 6)
            .0
            .unwrap();
        let r = e.rollout(r4).unwrap();
        assert_eq!(r.state, RolloutState::Done);
        assert!(r.batches[0][0].reason.starts_with("unchanged"));
        assert!(
            e.pending_at("d1", &HashMap::from([("a".into(), "m1".into())]))
                .unwrap()
                .0
                .is_empty()
        );
        // Stale version: no rollout.
        assert_eq!(
            e.new_version(&key("n/g/k"), 2, "m2", &opts(10, 0), 7).0,
            None
        );
        // Unused key: no rollout.
        assert_eq!(
            e.new_version(&key("n/g/unused"), 1, "x", &opts(10, 0), 7).0,
            None
        );
        assert_eq!(e.rollouts().first().unwrap().id, r4);
    }

    #[test]
    fn old_finished_rollouts_are_forgotten() {
        let mut e = Engine::new();
        e.register(
            "d1",
            Register {
                services: vec![svc("a", "n/g/k", &[])],
                ..Default::default()
            },
            &none,
            0,
        )
        .unwrap();
        for v in 1..=(KEPT_ROLLOUTS as u64 + 10) {
            let id = e
                .new_version(&key("n/g/k"), v, &format!("m{v}"), &opts(10, 0), v)
                .0
                .unwrap();
            e.ack("d1", &ok(id, "a", v), v).unwrap();
        }
        let kept = e.rollouts();
        assert_eq!(kept.len(), KEPT_ROLLOUTS);
        assert_eq!(kept[0].version, KEPT_ROLLOUTS as u64 + 10);
        assert!(matches!(
            e.ack("d1", &ok(1, "a", 1), 0),
            Err(CenterError::Conflict(_))
        ));
    }

    #[test]
    fn reregistration_settles_dropped_services() {
        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 0)
            .0
            .unwrap();
        e.ack("d1", &ok(id, "a", 1), 1).unwrap();
        // d2 drops its services: its assigned step is settled, batch moves on.
        e.register("d2", Register::default(), &none, 2).unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!(r.current_batch, 1);
        assert!(r.batches[0][1].reason.starts_with("skipped"));
        // d2's later steps are skipped when their batch comes.
        e.ack("d1", &ok(id, "b", 1), 3).unwrap();
        e.ack("d1", &ok(id, "c", 1), 4).unwrap();
        assert_eq!(e.rollout(id).unwrap().state, RolloutState::Done);
    }

    fn failed(rollout_id: u64, service: &str, version: u64) -> Ack {
        Ack {
            ok: false,
            reason: "health check failed".into(),
            ..ok(rollout_id, service, version)
        }
    }

    #[test]
    fn dependency_order_holds_across_config_keys_on_a_device() {
        // `app` (key n/g/app) depends on `db` (key n/g/db) on the same
        // device; `z` (key n/g/z) is busy updating when both keys change.
        let mut e = Engine::new();
        let services = vec![
            svc("app", "n/g/app", &["db"]),
            svc("db", "n/g/db", &[]),
            svc("z", "n/g/z", &[]),
        ];
        e.register(
            "d1",
            Register {
                services,
                ..Default::default()
            },
            &none,
            0,
        )
        .unwrap();
        let z = e
            .new_version(&key("n/g/z"), 1, "z1", &opts(10, 0), 1)
            .0
            .unwrap();
        // The dependent key changes first, then the one it depends on.
        let app = e
            .new_version(&key("n/g/app"), 1, "a1", &opts(10, 0), 2)
            .0
            .unwrap();
        let db = e
            .new_version(&key("n/g/db"), 1, "d1", &opts(10, 0), 3)
            .0
            .unwrap();
        for id in [app, db] {
            assert_eq!(
                e.rollout(id).unwrap().batches[0][0].state,
                StepState::Pending
            );
        }
        e.ack("d1", &ok(z, "z", 1), 4).unwrap();
        // The device is free: db goes first although app's rollout is older.
        let r = e.rollout(app).unwrap();
        assert_eq!(r.batches[0][0].state, StepState::Pending, "{r:?}");
        assert!(
            r.batches[0][0].reason.contains("must update db first"),
            "{r:?}"
        );
        let have = HashMap::from([("z".to_string(), "z1".to_string())]);
        assert_eq!(names(&e.pending_at("d1", &have).unwrap().0), vec!["db"]);
        // db done: app goes.
        e.ack("d1", &ok(db, "db", 1), 5).unwrap();
        assert_eq!(e.rollout(db).unwrap().state, RolloutState::Done);
        assert_eq!(
            e.rollout(app).unwrap().batches[0][0].state,
            StepState::Assigned
        );
        let have = HashMap::from([
            ("z".to_string(), "z1".to_string()),
            ("db".to_string(), "d1".to_string()),
        ]);
        assert_eq!(names(&e.pending_at("d1", &have).unwrap().0), vec!["app"]);
        e.ack("d1", &ok(app, "app", 1), 6).unwrap();
        assert_eq!(e.rollout(app).unwrap().state, RolloutState::Done);
    }

    #[test]
    fn a_device_updates_one_service_at_a_time_across_rollouts() {
        let mut e = Engine::new();
        let services = vec![svc("x", "n/g/x", &[]), svc("y", "n/g/y", &[])];
        e.register(
            "d1",
            Register {
                services,
                ..Default::default()
            },
            &none,
            0,
        )
        .unwrap();
        let rx = e
            .new_version(&key("n/g/x"), 1, "x1", &opts(10, 0), 1)
            .0
            .unwrap();
        let ry = e
            .new_version(&key("n/g/y"), 1, "y1", &opts(10, 0), 2)
            .0
            .unwrap();
        assert_eq!(
            e.rollout(rx).unwrap().batches[0][0].state,
            StepState::Assigned
        );
        let y = e.rollout(ry).unwrap();
        assert_eq!(y.batches[0][0].state, StepState::Pending);
        assert!(y.batches[0][0].reason.contains("is updating x"), "{y:?}");
        e.ack("d1", &ok(rx, "x", 1), 3).unwrap();
        assert_eq!(
            e.rollout(ry).unwrap().batches[0][0].state,
            StepState::Assigned
        );
    }

    #[test]
    fn a_device_joining_mid_rollout_gets_the_old_version_and_a_later_batch() {
        let mut e = Engine::new();
        let current = |_: &ConfigKey| Some((1, "m1".to_string()));
        for d in ["d1", "d2"] {
            let services = vec![svc("a", "n/g/k", &[])];
            e.register(
                d,
                Register {
                    services,
                    ..Default::default()
                },
                &current,
                0,
            )
            .unwrap();
        }
        let options = PlanOptions {
            batch_size: 1,
            approve_each_batch: true,
            ..PlanOptions::default()
        };
        let id = e
            .new_version(&key("n/g/k"), 2, "m2", &options, 1)
            .0
            .unwrap();
        // d3 registers while the store's current version is 2.
        let newest = |_: &ConfigKey| Some((2, "m2".to_string()));
        let services = vec![svc("a", "n/g/k", &[])];
        e.register(
            "d3",
            Register {
                services,
                ..Default::default()
            },
            &newest,
            2,
        )
        .unwrap();
        let (pending, _) = e.pending_at("d3", &HashMap::new()).unwrap();
        assert_eq!((pending[0].rollout_id, pending[0].version), (0, 1));
        let r = e.rollout(id).unwrap();
        assert_eq!(r.batches.len(), 3);
        assert_eq!(r.batches[2][0].device, "d3");
        // Batch by batch, with approvals, d3 gets v2 in its own batch.
        e.ack("d1", &ok(id, "a", 2), 3).unwrap();
        assert_eq!(e.rollout(id).unwrap().state, RolloutState::Paused);
        e.resume(id, 4).unwrap();
        e.ack("d2", &ok(id, "a", 2), 5).unwrap();
        e.resume(id, 6).unwrap();
        let (pending, _) = e.pending_at("d3", &HashMap::new()).unwrap();
        assert_eq!((pending[0].rollout_id, pending[0].version), (id, 2));
    }

    #[test]
    fn step_timeout_pauses_and_a_lost_device_pauses_or_is_skipped() {
        // Timeout: the assigned step fails and pauses, naming the device.
        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 0)
            .0
            .unwrap();
        e.ack("d1", &ok(id, "a", 1), 100).unwrap();
        e.tick(1_000, 5_000, 0, OnLost::Pause);
        assert_eq!(e.rollout(id).unwrap().state, RolloutState::Running);
        e.tick(5_000, 5_000, 0, OnLost::Pause);
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Paused);
        assert!(
            r.paused_reason.contains("d2") && r.paused_reason.contains("within 5 s"),
            "{}",
            r.paused_reason
        );

        // Lost with on_lost = pause: the rollout pauses naming the device;
        // `skip` lets it go on.
        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 0)
            .0
            .unwrap();
        e.pending("d1", &HashMap::new(), 50_000).unwrap();
        e.ack("d1", &ok(id, "a", 1), 50_000).unwrap();
        e.tick(60_000, 0, 30_000, OnLost::Pause);
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Paused);
        assert!(
            r.paused_reason.contains("device d2 is lost"),
            "{}",
            r.paused_reason
        );
        assert!(e.devices()[1].lost);
        e.skip(id, "d2", 61_000).unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Running, "{}", r.paused_reason);
        assert_eq!(r.current_batch, 1);
        assert_eq!(r.batches[0][1].state, StepState::Skipped);

        // Lost with on_lost = skip: the rollout goes on by itself.
        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 0)
            .0
            .unwrap();
        e.pending("d1", &HashMap::new(), 50_000).unwrap();
        e.ack("d1", &ok(id, "a", 1), 50_000).unwrap();
        e.tick(60_000, 0, 30_000, OnLost::Skip);
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Running);
        assert_eq!(r.current_batch, 1);
        assert!(r.batches[0][1].reason.contains("lost"), "{r:?}");
    }

    #[test]
    fn abort_gives_released_steps_back_and_remove_device_settles_its_steps() {
        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 0)
            .0
            .unwrap();
        e.abort(id, 1).unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Done);
        assert!(r.paused_reason.contains("aborted"));
        assert!(e.pending_at("d1", &HashMap::new()).unwrap().0.is_empty());
        assert!(matches!(e.abort(id, 2), Err(CenterError::Conflict(_))));

        let mut e = two_devices();
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &opts(10, 0), 0)
            .0
            .unwrap();
        e.ack("d1", &ok(id, "a", 1), 1).unwrap();
        e.remove_device("d2", 2).unwrap();
        assert_eq!(e.rollout(id).unwrap().current_batch, 1);
        assert_eq!(e.devices().len(), 1);
        assert!(matches!(
            e.remove_device("d2", 3),
            Err(CenterError::NotFound(_))
        ));
        // A failed step after skip: the paused rollout names the device.
        e.ack("d1", &failed(id, "b", 1), 4).unwrap();
        assert_eq!(e.rollout(id).unwrap().state, RolloutState::Paused);
    }

    #[test]
    fn canaries_come_first_alone_and_approval_pauses_every_batch() {
        let mut e = Engine::new();
        for d in ["d1", "d2", "d3"] {
            let labels = if d == "d3" {
                vec!["canary".to_string()]
            } else {
                vec![]
            };
            e.register(
                d,
                Register {
                    services: vec![svc("a", "n/g/k", &[])],
                    labels,
                },
                &none,
                0,
            )
            .unwrap();
        }
        assert!(e.check_canary(&key("n/g/k"), &["canary".into()]).is_ok());
        assert!(matches!(
            e.check_canary(&key("n/g/k"), &["nobody".into()]),
            Err(CenterError::Invalid(_))
        ));
        let options = PlanOptions {
            batch_size: 10,
            canary: vec!["canary".into()],
            approve_each_batch: true,
            ..PlanOptions::default()
        };
        let id = e
            .new_version(&key("n/g/k"), 1, "m1", &options, 1)
            .0
            .unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!(r.batches.len(), 2);
        assert_eq!(r.batches[0].len(), 1);
        assert_eq!(r.batches[0][0].device, "d3");
        e.ack("d3", &ok(id, "a", 1), 2).unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!((r.state, r.current_batch), (RolloutState::Paused, 1));
        assert!(e.pending_at("d1", &HashMap::new()).unwrap().0.is_empty());
        let listeners = e.listeners(&key("n/g/k"));
        assert_eq!(listeners[2].version, Some(1));
        assert_eq!(listeners[2].md5, "m1");
        assert_eq!(listeners[0].version, None);
        e.resume(id, 3).unwrap();
        assert_eq!(
            names(&e.pending_at("d1", &HashMap::new()).unwrap().0),
            vec!["a"]
        );
    }

    /// `previous` is stored exactly as the `BTreeMap` it was before
    /// (records written by an older center load), sorted by service.
    #[test]
    fn per_service_maps_are_stored_as_sorted_json_maps() {
        let a = |service: &str, md5: &str| Assignment {
            rollout_id: 3,
            service: service.into(),
            key: key("n/g/k"),
            version: 2,
            md5: md5.into(),
        };
        let mut map = PerService::default();
        assert_eq!(map.insert("web".into(), Some(a("web", "m1"))), None);
        assert_eq!(map.insert("db".into(), None), None);
        assert_eq!(map.insert("cache".into(), Some(a("cache", "m2"))), None);
        assert_eq!(
            map.insert("web".into(), Some(a("web", "m3"))),
            Some(Some(a("web", "m1")))
        );
        assert_eq!(map.get("web"), Some(&Some(a("web", "m3"))));
        assert_eq!(map.get("db"), Some(&None));
        assert_eq!(map.get("dns"), None);
        let before: BTreeMap<String, Option<Assignment>> = [
            ("web".to_string(), Some(a("web", "m3"))),
            ("db".to_string(), None),
            ("cache".to_string(), Some(a("cache", "m2"))),
        ]
        .into();
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, serde_json::to_string(&before).unwrap());
        let back: PerService<Option<Assignment>> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.get("cache"), Some(&Some(a("cache", "m2"))));
    }

    #[test]
    fn a_release_is_held_from_polls_until_unheld() {
        let mut engine = Engine::new();
        let k = key("n/g/k");
        engine
            .register(
                "d1",
                Register {
                    services: vec![svc("s", "n/g/k", &[])],
                    labels: vec![],
                },
                &none,
                0,
            )
            .unwrap();
        engine.take_changes();
        engine.new_version(&k, 1, "m1", &opts(10, 0), 1);
        let changes = engine.take_changes_held();
        assert_eq!(changes.held, ["d1"]);
        let (got, woken) = engine.pending("d1", &HashMap::new(), 2).unwrap();
        assert!(got.is_empty(), "released before it is stored: {got:?}");
        engine.unhold(&changes);
        changes.wake();
        assert!(woken.has_changed().unwrap());
        let (got, _) = engine.pending("d1", &HashMap::new(), 3).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].md5, "m1");
    }

    #[test]
    fn a_new_version_plans_exactly_the_devices_using_its_key_now() {
        let mut e = Engine::new();
        let reg = |services| Register {
            services,
            ..Default::default()
        };
        for d in ["d3", "d1", "d2"] {
            e.register(d, reg(vec![svc("s", "n/g/a", &[])]), &none, 0)
                .unwrap();
        }
        // d2 moves its service to another key, d3 is removed, d4 uses both.
        e.register("d2", reg(vec![svc("s", "n/g/b", &[])]), &none, 1)
            .unwrap();
        e.remove_device("d3", 2).unwrap();
        let both = vec![svc("x", "n/g/a", &[]), svc("y", "n/g/b", &["x"])];
        e.register("d4", reg(both), &none, 3).unwrap();
        let planned = |e: &mut Engine, k: &str, v: u64| {
            let id = e.new_version(&key(k), v, "m", &opts(10, 0), 4).0.unwrap();
            let steps: Vec<String> = e.rollout(id).unwrap().batches[0]
                .iter()
                .map(|s| format!("{}/{}", s.device, s.service))
                .collect();
            steps
        };
        assert_eq!(planned(&mut e, "n/g/a", 1), ["d1/s", "d4/x"]);
        assert_eq!(planned(&mut e, "n/g/b", 1), ["d2/s", "d4/y"]);
        // Nobody uses a key any more: no rollout; a reopened engine agrees.
        e.register("d4", reg(vec![]), &none, 5).unwrap();
        e.remove_device("d2", 6).unwrap();
        assert_eq!(
            e.new_version(&key("n/g/b"), 2, "m2", &opts(10, 0), 7).0,
            None
        );
        let devices = e.devices.iter().map(|(n, d)| (n.clone(), d.state.clone()));
        let (mut again, _) = Engine::restore(devices.collect(), Vec::new(), e.meta.clone(), 8);
        assert_eq!(
            again.new_version(&key("n/g/b"), 3, "m3", &opts(10, 0), 9).0,
            None
        );
        assert_eq!(planned(&mut again, "n/g/a", 4), ["d1/s"]);
    }
}
