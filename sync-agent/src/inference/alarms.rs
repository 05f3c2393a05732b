//! Root-cause alarms over the model (issue 16, item 4).
//!
//! An object is *alarmable* when its effective fault level reaches the
//! configured level (or, with `lost_contact`, when it is in lost contact).
//! Its *root causes* are the deepest objects down its dependency chain that
//! explain its state: from a faulty object the walk goes into its faulty
//! dependencies (or, when none is faulty, into the members of its
//! redundancy group in lost contact, which is what degrades it); from an
//! object in lost contact into its dependencies in lost contact. An object
//! nothing explains is its own root cause.
//!
//! An alarmable object whose alarm-level fault is only inferred (no actual
//! state reaches the level) and whose root causes are all alarmable is
//! *suppressed*: it is listed under each of its root causes' alarms instead
//! of raising its own — what Alertmanager inhibition or Zabbix trigger
//! dependencies do by hand. Every other alarmable object *raises* an alarm
//! naming its root causes. A root cause is never suppressed (nothing below
//! explains it), so a fault deep in the chain gives one alarm however many
//! objects it takes down with it.
//!
//! [`Alarms::update`] is given the objects whose effective state changed
//! and re-assesses them, plus everything suppressed under an alarm that
//! changed or cleared; it is pure (times are passed in) and returns the
//! [`Notice`]s for the webhook.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Model, ObjectId, StateView, config::AlarmConfig};

/// Cleared alarms kept for `show alarms`.
const RECENT_CLEARED: usize = 32;
/// Objects visited when looking for one object's root causes: a bound on
/// the cost of one assessment in a huge model.
const MAX_WALK: usize = 4096;
/// Assessments in one [`Alarms::update`] beyond the changed objects
/// (suppressed objects re-assessed): a bound against pathological loops.
const MAX_REASSESS: usize = 1_000_000;

/// What an object's state means for alarms.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    /// Not alarmable.
    Quiet,
    /// Raises its own alarm with these root causes (itself when nothing
    /// below explains it).
    Raised(Vec<ObjectId>),
    /// Listed under these root causes' alarms.
    Suppressed(Vec<ObjectId>),
}

/// A raised alarm, as the table keeps it.
#[derive(Clone, Debug)]
struct Alarm {
    root_causes: Vec<ObjectId>,
    raised_ms: u64,
    /// Its effective state when last told (to notice changes).
    states: Vec<StateView>,
    /// Objects suppressed under it.
    suppressed: BTreeSet<ObjectId>,
    /// What the webhook was last told of it.
    told: Option<AlarmView>,
}

/// Counters of the alarm table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmStats {
    /// Alarms raised.
    pub raised: u64,
    /// Alarms cleared (including those that became suppressed).
    pub cleared: u64,
    /// Times an object was suppressed under a root cause's alarm.
    pub suppressed: u64,
    /// Alarms raised now.
    pub active: u64,
    /// Objects suppressed now.
    pub suppressed_now: u64,
}

/// What the webhook is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// An alarm was raised, or its state, root causes or suppressed objects
    /// changed.
    Raised(AlarmView),
    /// An alarm cleared (or became suppressed under another).
    Cleared(AlarmView),
}

/// One object suppressed under an alarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedView {
    /// The object.
    pub object: ObjectId,
    /// Its effective state.
    pub states: Vec<StateView>,
    /// Its fault level.
    pub level: u8,
}

/// One alarm, for operators and the webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmView {
    /// The alarmed object.
    pub object: ObjectId,
    /// Its effective state.
    pub states: Vec<StateView>,
    /// Its fault level.
    pub level: u8,
    /// Its root causes (itself when nothing below explains its state).
    pub root_causes: Vec<ObjectId>,
    /// When it was raised (ms since the epoch).
    pub raised_ms: u64,
    /// When it cleared (0 while raised).
    #[serde(default)]
    pub cleared_ms: u64,
    /// Objects whose alarms are suppressed under it.
    pub suppressed: Vec<SuppressedView>,
}

/// The alarm table: raised alarms, suppressed objects, counters.
#[derive(Debug)]
pub struct Alarms {
    config: AlarmConfig,
    raised: BTreeMap<ObjectId, Alarm>,
    /// Suppressed object -> the root causes it is listed under.
    suppressed: BTreeMap<ObjectId, Vec<ObjectId>>,
    recent: VecDeque<AlarmView>,
    stats: AlarmStats,
}

impl Alarms {
    /// An empty table.
    pub fn new(config: AlarmConfig) -> Self {
        Self {
            config,
            raised: BTreeMap::new(),
            suppressed: BTreeMap::new(),
            recent: VecDeque::new(),
            stats: AlarmStats::default(),
        }
    }

    /// The fault level from which alarms are raised.
    pub fn level(&self) -> u8 {
        self.config.level
    }

    /// Whether lost contact raises alarms.
    pub fn lost_contact(&self) -> bool {
        self.config.lost_contact
    }

    /// The counters.
    pub fn stats(&self) -> AlarmStats {
        let mut stats = self.stats.clone();
        stats.active = self.raised.len() as u64;
        stats.suppressed_now = self.suppressed.len() as u64;
        stats
    }

    /// Re-assesses `changed` (the objects whose effective state changed,
    /// and the one the information was about: its own word on it may not
    /// change its effective state but does change whether its fault is
    /// only inferred), whatever was suppressed under them, and the alarmed
    /// objects above a newly raised alarm; returns what the webhook must
    /// hear.
    pub fn update<'a>(
        &mut self,
        model: &Model,
        changed: impl IntoIterator<Item = &'a ObjectId>,
        now_ms: u64,
    ) -> Vec<Notice> {
        let mut queue: VecDeque<ObjectId> = changed.into_iter().cloned().collect();
        let mut queued: BTreeSet<ObjectId> = queue.iter().cloned().collect();
        // Raised alarms whose state or suppressed list changed, told once
        // at the end.
        let mut touched: BTreeSet<ObjectId> = BTreeSet::new();
        let mut notices = Vec::new();
        let mut budget = queue.len() + MAX_REASSESS;
        while let Some(object) = queue.pop_front() {
            queued.remove(&object);
            budget -= 1;
            if budget == 0 {
                tracing::warn!("alarm re-assessment stopped at its bound");
                break;
            }
            let new = self.assess(model, &object);
            let old = self.status(&object);
            if new == old {
                if let Status::Raised(_) = new {
                    touched.insert(object.clone());
                    // Those suppressed under it may now have other causes.
                    for child in &self.raised[&object].suppressed {
                        if queued.insert(child.clone()) {
                            queue.push_back(child.clone());
                        }
                    }
                }
                continue;
            }
            // Leave the old status.
            match old {
                Status::Quiet => {}
                Status::Raised(_) => {
                    let alarm = self.raised.remove(&object).expect("raised");
                    for child in &alarm.suppressed {
                        if queued.insert(child.clone()) {
                            queue.push_back(child.clone());
                        }
                    }
                    if let Status::Raised(roots) = &new {
                        // Still raised, other root causes: keep it.
                        let mut alarm = alarm;
                        alarm.root_causes = roots.clone();
                        self.raised.insert(object.clone(), alarm);
                        touched.insert(object.clone());
                        continue;
                    }
                    let view = self.cleared_view(model, &object, alarm, now_ms);
                    self.stats.cleared += 1;
                    touched.remove(&object);
                    notices.push(Notice::Cleared(view));
                }
                Status::Suppressed(_) => self.leave_suppressed(&object, &mut touched),
            }
            // Take the new one.
            match new {
                Status::Quiet => {}
                Status::Raised(roots) => {
                    self.raise(model, &object, roots, now_ms);
                    touched.insert(object.clone());
                    // Alarmed objects above whose state did not change (the
                    // same fault from another cause) may now be explained
                    // by this one too.
                    for above in self.alarmed_above(model, &object) {
                        if queued.insert(above.clone()) {
                            queue.push_back(above);
                        }
                    }
                }
                Status::Suppressed(roots) => {
                    for root in &roots {
                        if !self.raised.contains_key(root) {
                            // A root cause not assessed yet in this batch
                            // (its old status, if any, is stale).
                            self.leave_suppressed(root, &mut touched);
                            self.raise(model, root, vec![root.clone()], now_ms);
                        }
                        let alarm = self.raised.get_mut(root).expect("raised above");
                        alarm.suppressed.insert(object.clone());
                        touched.insert(root.clone());
                    }
                    self.stats.suppressed += 1;
                    self.suppressed.insert(object.clone(), roots);
                }
            }
        }
        for object in touched {
            let Some(alarm) = self.raised.get_mut(&object) else {
                continue;
            };
            alarm.states = model.effective_view(&object).unwrap_or_default();
            let view = self.view(model, &object);
            let alarm = self.raised.get_mut(&object).expect("raised");
            if alarm.told.as_ref() != Some(&view) {
                alarm.told = Some(view.clone());
                notices.push(Notice::Raised(view));
            }
        }
        notices
    }

    /// Raised or suppressed objects up the chain from `object` (through
    /// faulty or lost-contact objects only: a normal one is not explained
    /// by anything below), at most [`MAX_WALK`] visited.
    fn alarmed_above(&self, model: &Model, object: &ObjectId) -> Vec<ObjectId> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::from([object.clone()]);
        let mut stack = vec![object.clone()];
        while let Some(current) = stack.pop() {
            for (above, _) in model.dependents_of(&current) {
                if seen.len() >= MAX_WALK {
                    return out;
                }
                if !seen.insert(above.clone()) {
                    continue;
                }
                if self.raised.contains_key(&above) || self.suppressed.contains_key(&above) {
                    out.push(above.clone());
                }
                if model.fault_level(&above).unwrap_or(0) > 0 || lost_contact(model, &above) {
                    stack.push(above);
                }
            }
        }
        out
    }

    /// Takes `object` off the suppressed lists it is on.
    fn leave_suppressed(&mut self, object: &ObjectId, touched: &mut BTreeSet<ObjectId>) {
        for root in self.suppressed.remove(object).unwrap_or_default() {
            if let Some(alarm) = self.raised.get_mut(&root) {
                alarm.suppressed.remove(object);
                touched.insert(root);
            }
        }
    }

    fn raise(&mut self, model: &Model, object: &ObjectId, roots: Vec<ObjectId>, now_ms: u64) {
        self.stats.raised += 1;
        self.raised.insert(
            object.clone(),
            Alarm {
                root_causes: roots,
                raised_ms: now_ms,
                states: model.effective_view(object).unwrap_or_default(),
                suppressed: BTreeSet::new(),
                told: None,
            },
        );
    }

    fn status(&self, object: &ObjectId) -> Status {
        if let Some(alarm) = self.raised.get(object) {
            Status::Raised(alarm.root_causes.clone())
        } else if let Some(roots) = self.suppressed.get(object) {
            Status::Suppressed(roots.clone())
        } else {
            Status::Quiet
        }
    }

    /// Whether `object`'s state raises an alarm at all.
    fn alarmable(&self, model: &Model, object: &ObjectId) -> bool {
        let level = model.fault_level(object).unwrap_or(0);
        level >= self.config.level || (self.config.lost_contact && lost_contact(model, object))
    }

    fn assess(&self, model: &Model, object: &ObjectId) -> Status {
        if !model.contains(object) || !self.alarmable(model, object) {
            return Status::Quiet;
        }
        let roots = root_causes(model, object);
        let own = roots.len() == 1 && &roots[0] == object;
        let only_inferred = model.actual_level(object).unwrap_or(0) < self.config.level;
        if !own && only_inferred && roots.iter().all(|r| self.alarmable(model, r)) {
            Status::Suppressed(roots)
        } else {
            Status::Raised(roots)
        }
    }

    fn view(&self, model: &Model, object: &ObjectId) -> AlarmView {
        let alarm = &self.raised[object];
        AlarmView {
            object: object.clone(),
            states: alarm.states.clone(),
            level: model.fault_level(object).unwrap_or(0),
            root_causes: alarm.root_causes.clone(),
            raised_ms: alarm.raised_ms,
            cleared_ms: 0,
            suppressed: alarm
                .suppressed
                .iter()
                .map(|s| SuppressedView {
                    object: s.clone(),
                    states: model.effective_view(s).unwrap_or_default(),
                    level: model.fault_level(s).unwrap_or(0),
                })
                .collect(),
        }
    }

    fn cleared_view(
        &mut self,
        model: &Model,
        object: &ObjectId,
        alarm: Alarm,
        now_ms: u64,
    ) -> AlarmView {
        let view = AlarmView {
            object: object.clone(),
            states: model.effective_view(object).unwrap_or(alarm.states),
            level: model.fault_level(object).unwrap_or(0),
            root_causes: alarm.root_causes,
            raised_ms: alarm.raised_ms,
            cleared_ms: now_ms,
            suppressed: Vec::new(),
        };
        if self.recent.len() == RECENT_CLEARED {
            self.recent.pop_front();
        }
        self.recent.push_back(view.clone());
        view
    }

    /// Every raised alarm (with what is suppressed under it) and the most
    /// recently cleared ones, newest first.
    pub fn report(&self, model: &Model) -> (Vec<AlarmView>, Vec<AlarmView>) {
        let raised = self.raised.keys().map(|o| self.view(model, o)).collect();
        let cleared = self.recent.iter().rev().cloned().collect();
        (raised, cleared)
    }

    /// Every raised alarm as the webhook re-posts it.
    pub fn raised_views(&self, model: &Model) -> Vec<AlarmView> {
        self.report(model).0
    }
}

fn lost_contact(model: &Model, object: &ObjectId) -> bool {
    model.fault_level(object) == Some(0)
        && model
            .effective(object)
            .is_some_and(|states| states.iter().any(|s| s.lost_contact))
}

/// The dependencies of `object` that explain its state (see the module doc).
fn explaining(model: &Model, object: &ObjectId) -> Vec<ObjectId> {
    let deps = model.dependencies_of(object);
    if model.fault_level(object).unwrap_or(0) > 0 {
        let faulty: Vec<ObjectId> = deps
            .iter()
            .filter(|(d, _)| model.fault_level(d).unwrap_or(0) > 0)
            .map(|(d, _)| d.clone())
            .collect();
        if !faulty.is_empty() {
            return faulty;
        }
        let group = model.group_of(object);
        group
            .into_iter()
            .filter(|d| lost_contact(model, d))
            .collect()
    } else if lost_contact(model, object) {
        deps.into_iter()
            .map(|(d, _)| d)
            .filter(|d| lost_contact(model, d))
            .collect()
    } else {
        Vec::new()
    }
}

/// The deepest objects explaining `object`'s state, sorted; `[object]`
/// when nothing below explains it.
pub fn root_causes(model: &Model, object: &ObjectId) -> Vec<ObjectId> {
    let mut roots = BTreeSet::new();
    let mut seen = BTreeSet::from([object.clone()]);
    let mut stack = vec![object.clone()];
    while let Some(current) = stack.pop() {
        let below = explaining(model, &current);
        if below.is_empty() {
            roots.insert(current);
            continue;
        }
        for next in below {
            if seen.len() >= MAX_WALK {
                // Too deep to tell: what was reached so far stands in.
                roots.insert(current.clone());
                break;
            }
            if seen.insert(next.clone()) {
                stack.push(next);
            }
        }
    }
    roots.into_iter().collect()
}

#[cfg(test)]
mod tests;
