//! The rollout state machine of the config center (SPEC 6.2, 6.3): which
//! devices run which services, what has been released to each, and the
//! batches of every rollout. Synchronous and clock-free (callers pass
//! `now_ms`), so it is tested without HTTP; [`super::Center`] keeps it behind
//! a mutex and runs the pace timers it asks for.
//!
//! This state lives in memory only: after a center restart, devices get 404
//! on their next watch, register again and are released the current version
//! of their configs; rollouts that were in progress are gone (the configs
//! and their history are in the database).
//!
//! Releasing: each device has a map service -> [`Assignment`] (what the
//! center wants that service to run) and a `tokio::sync::watch` counter
//! bumped on every change, which wakes its long polls. A new registration is
//! released the current version at once (rollout id 0). A rollout releases
//! batch by batch; a failed step restores what the device had been released
//! before, so its long poll does not offer the failed version again, and
//! pauses the rollout.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::watch;

use super::error::{CenterError, CenterResult};
use super::planner;
use crate::rollout::wire::{
    Ack, Assignment, ConfigKey, DeviceInfo, Register, Rollout, RolloutState, ServiceRegistration,
    Step, StepState, check_name,
};

/// How many rollouts are kept in memory; beyond that the oldest finished
/// ones are forgotten when a new one starts.
pub const KEPT_ROLLOUTS: usize = 256;

/// A pace delay the caller must wait before calling [`Engine::fire_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub rollout_id: u64,
    pub batch: usize,
    pub delay_ms: u64,
}

struct Device {
    /// In dependency order.
    services: Vec<ServiceRegistration>,
    released: HashMap<String, Assignment>,
    /// Per service, the MD5 the device last acknowledged as applied.
    confirmed: HashMap<String, String>,
    registered_ms: u64,
    notify: watch::Sender<u64>,
}

impl Device {
    fn uses(&self, service: &str, key: &ConfigKey) -> bool {
        self.services
            .iter()
            .any(|s| s.name == service && &s.config == key)
    }

    fn bump(&self) {
        self.notify.send_modify(|generation| *generation += 1);
    }
}

struct Entry {
    rollout: Rollout,
    md5: String,
    /// What each released (device, service) had been released before this
    /// rollout, to restore if the step fails.
    previous: HashMap<(String, String), Option<Assignment>>,
    /// A pace timer for `current_batch` is running: do not release before.
    waiting_timer: bool,
}

#[derive(Default)]
pub struct Engine {
    devices: HashMap<String, Device>,
    rollouts: BTreeMap<u64, Entry>,
    next_id: u64,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Records the services of `device` (replacing an earlier registration).
    /// `current` gives the current (version, md5) of a config, if any: a
    /// service that is new, or now uses another config, is released it at
    /// once. A service kept with the same config keeps what it was released.
    /// Refuses bad names, unknown dependencies and cycles (nothing changes).
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
                services: Vec::new(),
                released: HashMap::new(),
                confirmed: HashMap::new(),
                registered_ms: now_ms,
                notify: watch::channel(0).0,
            });
        let old: HashMap<String, ConfigKey> = entry
            .services
            .drain(..)
            .map(|s| (s.name, s.config))
            .collect();
        entry.registered_ms = now_ms;
        for service in &services {
            if old.get(&service.name) == Some(&service.config) {
                continue;
            }
            entry.confirmed.remove(&service.name);
            entry.released.remove(&service.name);
            if let Some((version, md5)) = current(&service.config) {
                entry.released.insert(
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
                entry.released.remove(name);
                entry.confirmed.remove(name);
            }
        }
        entry.services = services;
        entry.bump();

        // Steps this device no longer matches would wait forever: settle them.
        let mut touched = Vec::new();
        for (id, e) in self.rollouts.iter_mut() {
            let Some(batch) = e.rollout.batches.get_mut(e.rollout.current_batch) else {
                continue;
            };
            for step in batch.iter_mut() {
                if step.device == device
                    && step.state == StepState::Assigned
                    && !entry.uses(&step.service, &e.rollout.key)
                {
                    step.state = StepState::Succeeded;
                    step.acked_ms = Some(now_ms);
                    step.reason = format!(
                        "skipped: {device} no longer registers service {} with {}",
                        step.service, e.rollout.key
                    );
                    touched.push(*id);
                }
            }
        }
        touched.dedup();
        Ok(touched
            .into_iter()
            .flat_map(|id| self.run(id, now_ms))
            .collect())
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
        batch_size: usize,
        pace_ms: u64,
        now_ms: u64,
    ) -> (Option<u64>, Vec<Timer>) {
        if self
            .rollouts
            .values()
            .any(|e| &e.rollout.key == key && e.rollout.version >= version)
        {
            return (None, Vec::new());
        }
        let mut names: Vec<&String> = self.devices.keys().collect();
        names.sort();
        let affected: Vec<(String, Vec<String>)> = names
            .into_iter()
            .filter_map(|name| {
                let services: Vec<String> = self.devices[name]
                    .services
                    .iter()
                    .filter(|s| &s.config == key)
                    .map(|s| s.name.clone())
                    .collect();
                (!services.is_empty()).then(|| (name.clone(), services))
            })
            .collect();
        if affected.is_empty() {
            return (None, Vec::new());
        }
        self.prune();
        self.next_id += 1;
        let id = self.next_id;
        for e in self.rollouts.values_mut() {
            if &e.rollout.key == key && e.rollout.state != RolloutState::Done {
                e.rollout.state = RolloutState::Done;
                e.waiting_timer = false;
                e.rollout.paused_reason = format!("superseded by rollout {id} (version {version})");
            }
        }
        let batch_size = batch_size.max(1);
        let batches = planner::plan(&affected, batch_size)
            .into_iter()
            .map(|batch| {
                batch
                    .into_iter()
                    .map(|(device, service)| Step {
                        device,
                        service,
                        state: StepState::Pending,
                        reason: String::new(),
                        assigned_ms: None,
                        acked_ms: None,
                    })
                    .collect()
            })
            .collect();
        self.rollouts.insert(
            id,
            Entry {
                rollout: Rollout {
                    id,
                    key: key.clone(),
                    version,
                    state: RolloutState::Running,
                    batch_size,
                    pace_ms,
                    current_batch: 0,
                    batches,
                    created_ms: now_ms,
                    paused_reason: String::new(),
                },
                md5: md5.to_string(),
                previous: HashMap::new(),
                waiting_timer: false,
            },
        );
        (Some(id), self.run(id, now_ms))
    }

    /// Forgets the oldest finished rollouts beyond [`KEPT_ROLLOUTS`].
    fn prune(&mut self) {
        let mut excess = self.rollouts.len().saturating_sub(KEPT_ROLLOUTS - 1);
        if excess == 0 {
            return;
        }
        self.rollouts.retain(|_, e| {
            if excess > 0 && e.rollout.state == RolloutState::Done {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Releases the current batch's pending steps, and moves on while
    /// batches complete (at once, or through a timer when paced).
    fn run(&mut self, id: u64, now_ms: u64) -> Vec<Timer> {
        let Some(e) = self.rollouts.get_mut(&id) else {
            return Vec::new();
        };
        loop {
            let r = &mut e.rollout;
            if r.state != RolloutState::Running || e.waiting_timer {
                return Vec::new();
            }
            let Some(batch) = r.batches.get_mut(r.current_batch) else {
                r.state = RolloutState::Done;
                return Vec::new();
            };
            for step in batch.iter_mut().filter(|s| s.state == StepState::Pending) {
                let device = self
                    .devices
                    .get_mut(&step.device)
                    .filter(|d| d.uses(&step.service, &r.key));
                let Some(device) = device else {
                    step.state = StepState::Succeeded;
                    step.acked_ms = Some(now_ms);
                    step.reason = format!(
                        "skipped: {} no longer registers service {} with {}",
                        step.device, step.service, r.key
                    );
                    continue;
                };
                let assignment = Assignment {
                    rollout_id: id,
                    service: step.service.clone(),
                    key: r.key.clone(),
                    version: r.version,
                    md5: e.md5.clone(),
                };
                step.assigned_ms = Some(now_ms);
                let unchanged = device.confirmed.get(&step.service) == Some(&e.md5)
                    && device
                        .released
                        .get(&step.service)
                        .is_some_and(|a| a.md5 == e.md5);
                if unchanged {
                    // The device acknowledged this very content, and nothing
                    // else was released since: no refetch (its long poll
                    // compares MD5s and would not answer anyway).
                    device.released.insert(step.service.clone(), assignment);
                    step.state = StepState::Succeeded;
                    step.acked_ms = Some(now_ms);
                    step.reason = "unchanged: the device already runs this content".into();
                    continue;
                }
                let before = device.released.insert(step.service.clone(), assignment);
                e.previous
                    .insert((step.device.clone(), step.service.clone()), before);
                step.state = StepState::Assigned;
                device.bump();
            }
            if !batch.iter().all(|s| s.state == StepState::Succeeded) {
                return Vec::new();
            }
            r.current_batch += 1;
            if r.current_batch >= r.batches.len() {
                r.state = RolloutState::Done;
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

    /// A pace timer ran out: release the batch it was for.
    pub fn fire_timer(&mut self, timer: Timer, now_ms: u64) -> Vec<Timer> {
        match self.rollouts.get_mut(&timer.rollout_id) {
            Some(e) if e.waiting_timer && e.rollout.current_batch == timer.batch => {
                e.waiting_timer = false;
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
        let service = ack.service.as_str();
        if ack.rollout_id == 0 {
            return match dev.released.get(service) {
                Some(a) if a.rollout_id == 0 && a.version == ack.version => {
                    if ack.ok {
                        dev.confirmed.insert(service.to_string(), a.md5.clone());
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
                dev.confirmed.insert(service.to_string(), e.md5.clone());
            }
            return Ok(self.run(id, now_ms));
        }
        step.state = StepState::Failed;
        if dev
            .released
            .get(service)
            .is_some_and(|a| a.rollout_id == id)
        {
            match e
                .previous
                .get(&(device.to_string(), service.to_string()))
                .cloned()
                .flatten()
            {
                Some(before) => {
                    dev.released.insert(service.to_string(), before);
                }
                None => {
                    dev.released.remove(service);
                }
            }
            dev.bump();
        }
        if r.state == RolloutState::Running {
            r.state = RolloutState::Paused;
            r.paused_reason = format!(
                "device {device} service {service} failed to apply {} version {}: {}",
                r.key,
                r.version,
                if ack.reason.is_empty() {
                    "no reason given"
                } else {
                    &ack.reason
                }
            );
            tracing::warn!("config center: rollout {id} paused: {}", r.paused_reason);
        }
        Ok(Vec::new())
    }

    /// Resumes a paused rollout: its failed steps are released again.
    pub fn resume(&mut self, id: u64, now_ms: u64) -> CenterResult<Vec<Timer>> {
        let Some(e) = self.rollouts.get_mut(&id) else {
            return Err(CenterError::NotFound(format!("rollout {id} not found")));
        };
        let r = &mut e.rollout;
        if r.state != RolloutState::Paused {
            return Err(CenterError::Conflict(format!(
                "rollout {id} is not paused (it is {})",
                match r.state {
                    RolloutState::Running => "running",
                    RolloutState::Paused => "paused",
                    RolloutState::Done => "done",
                }
            )));
        }
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

    /// What `device` should fetch: its released assignments whose MD5
    /// differs from `have` (service -> MD5; a missing service differs), in
    /// dependency order; and a receiver woken on every change for it.
    pub fn pending(
        &self,
        device: &str,
        have: &HashMap<String, String>,
    ) -> CenterResult<(Vec<Assignment>, watch::Receiver<u64>)> {
        let Some(dev) = self.devices.get(device) else {
            return Err(CenterError::NotFound(format!(
                "device {device} is not registered; register it first"
            )));
        };
        let mut receiver = dev.notify.subscribe();
        receiver.mark_unchanged();
        let assignments = dev
            .services
            .iter()
            .filter_map(|s| dev.released.get(&s.name))
            .filter(|a| have.get(&a.service) != Some(&a.md5))
            .cloned()
            .collect();
        Ok((assignments, receiver))
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

    /// Every registered device, sorted by name.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let mut out: Vec<DeviceInfo> = self
            .devices
            .iter()
            .map(|(name, d)| DeviceInfo {
                device: name.clone(),
                services: d.services.clone(),
                released: d
                    .services
                    .iter()
                    .filter_map(|s| d.released.get(&s.name).cloned())
                    .collect(),
                registered_ms: d.registered_ms,
            })
            .collect();
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }
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
            e.register(d, Register { services }, &none, 0).unwrap();
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
        };
        e.register("d1", reg, &current, 1).unwrap();
        let (pending, _) = e.pending("d1", &HashMap::new()).unwrap();
        assert_eq!(names(&pending), vec!["a", "b"]);
        assert!(pending.iter().all(|a| a.rollout_id == 0 && a.version == 4));
        let have = HashMap::from([("a".to_string(), "m4".to_string())]);
        assert_eq!(names(&e.pending("d1", &have).unwrap().0), vec!["b"]);
        let cyclic = Register {
            services: vec![svc("a", "n/g/k", &["b"]), svc("b", "n/g/k", &["a"])],
        };
        let err = e.register("d1", cyclic, &current, 2).unwrap_err();
        assert!(
            matches!(&err, CenterError::Invalid(m) if m.contains("cycle")),
            "{err}"
        );
        // The refused registration changed nothing.
        assert_eq!(e.devices()[0].services.len(), 3);
        assert!(matches!(
            e.pending("ghost", &have),
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
        let (id, timers) = e.new_version(&key("n/g/k"), 1, "m1", 10, 0, 5);
        let id = id.unwrap();
        assert!(timers.is_empty());
        let r = e.rollout(id).unwrap();
        assert_eq!(r.batches.len(), 3);
        for (b, expect) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(r.batches[b].len(), 2);
            assert!(r.batches[b].iter().all(|s| &s.service == expect));
        }
        assert_eq!(
            names(&e.pending("d1", &HashMap::new()).unwrap().0),
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
        assert_eq!(names(&e.pending("d1", &have).unwrap().0), vec!["b"]);
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
    fn failure_pauses_restores_release_and_resume_retries() {
        let mut e = two_devices();
        let id = e.new_version(&key("n/g/k"), 1, "m1", 1, 0, 0).0.unwrap();
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
        assert!(e.pending("d1", &HashMap::new()).unwrap().0.is_empty());
        assert!(matches!(e.resume(id + 1, 2), Err(CenterError::NotFound(_))));
        e.resume(id, 2).unwrap();
        assert!(matches!(e.resume(id, 2), Err(CenterError::Conflict(_))));
        let r = e.rollout(id).unwrap();
        assert_eq!(r.state, RolloutState::Running);
        assert_eq!(r.batches[0][0].state, StepState::Assigned);
        assert_eq!(
            names(&e.pending("d1", &HashMap::new()).unwrap().0),
            vec!["a"]
        );
        e.ack("d1", &ok(id, "a", 1), 3).unwrap();
        assert_eq!(e.rollout(id).unwrap().current_batch, 1);
    }

    #[test]
    fn pace_waits_for_the_timer() {
        let mut e = two_devices();
        let (id, timers) = e.new_version(&key("n/g/k"), 1, "m1", 10, 500, 0);
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
            },
            &none,
            0,
        )
        .unwrap();
        let r1 = e.new_version(&key("n/g/k"), 1, "m1", 10, 0, 0).0.unwrap();
        e.ack("d1", &ok(r1, "a", 1), 1).unwrap();
        let r2 = e.new_version(&key("n/g/k"), 2, "m2", 10, 0, 2).0.unwrap();
        // Version 3 goes back to m1 while m2 is still outstanding.
        let r3 = e.new_version(&key("n/g/k"), 3, "m1", 10, 0, 3).0.unwrap();
        let old = e.rollout(r2).unwrap();
        assert_eq!(old.state, RolloutState::Done);
        assert!(
            old.paused_reason.contains("superseded by rollout"),
            "{}",
            old.paused_reason
        );
        // d1 may have applied m2: it must be sent m1 and acknowledge it.
        let (pending, _) = e
            .pending("d1", &HashMap::from([("a".into(), "m2".into())]))
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
        let r4 = e.new_version(&key("n/g/k"), 4, "m1", 10, 0, 6).0.unwrap();
        let r = e.rollout(r4).unwrap();
        assert_eq!(r.state, RolloutState::Done);
        assert!(r.batches[0][0].reason.starts_with("unchanged"));
        assert!(
            e.pending("d1", &HashMap::from([("a".into(), "m1".into())]))
                .unwrap()
                .0
                .is_empty()
        );
        // Stale version: no rollout.
        assert_eq!(e.new_version(&key("n/g/k"), 2, "m2", 10, 0, 7).0, None);
        // Unused key: no rollout.
        assert_eq!(e.new_version(&key("n/g/unused"), 1, "x", 10, 0, 7).0, None);
        assert_eq!(e.rollouts().first().unwrap().id, r4);
    }

    #[test]
    fn old_finished_rollouts_are_forgotten() {
        let mut e = Engine::new();
        e.register(
            "d1",
            Register {
                services: vec![svc("a", "n/g/k", &[])],
            },
            &none,
            0,
        )
        .unwrap();
        for v in 1..=(KEPT_ROLLOUTS as u64 + 10) {
            let id = e
                .new_version(&key("n/g/k"), v, &format!("m{v}"), 10, 0, v)
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
        let id = e.new_version(&key("n/g/k"), 1, "m1", 10, 0, 0).0.unwrap();
        e.ack("d1", &ok(id, "a", 1), 1).unwrap();
        // d2 drops its services: its assigned step is settled, batch moves on.
        e.register("d2", Register { services: vec![] }, &none, 2)
            .unwrap();
        let r = e.rollout(id).unwrap();
        assert_eq!(r.current_batch, 1);
        assert!(r.batches[0][1].reason.starts_with("skipped"));
        // d2's later steps are skipped when their batch comes.
        e.ack("d1", &ok(id, "b", 1), 3).unwrap();
        e.ack("d1", &ok(id, "c", 1), 4).unwrap();
        assert_eq!(e.rollout(id).unwrap().state, RolloutState::Done);
    }
}
