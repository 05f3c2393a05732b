//! The fabric's bookkeeping, free of I/O: the server's roster, the fabric
//! config with its validation, changes awaiting acknowledgement, and rate
//! limits. The task owns one of each.
//!
//! Every map keyed by a name heard from the network is a [`CappedMap`]: a
//! stream of invented names evicts the least recently used entries (and
//! counts them) instead of growing memory without limit.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::wire::{ConfigChange, ConfigState, Heartbeat, MemberEntry, Topology};

/// How many entries a map keyed by member names holds by default
/// (`fabric.max_members`).
pub const DEFAULT_MAX_MEMBERS: usize = 10_000;

/// A map with a hard cap on its entries: inserting a new key into a full
/// map evicts the entry used least recently, and counts it. Iteration is in
/// key order. For every map whose keys come from the network (member
/// names, senders), so that its memory is bounded whatever arrives.
#[derive(Clone, Debug)]
pub struct CappedMap<K, V> {
    cap: usize,
    entries: BTreeMap<K, (V, u64)>,
    /// Use stamp -> key: the first entry is the least recently used.
    order: BTreeMap<u64, K>,
    clock: u64,
    evicted: u64,
}

impl<K: Ord + Clone, V> CappedMap<K, V> {
    /// An empty map holding at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            evicted: 0,
        }
    }

    /// The cap.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Entries evicted to make room since the map was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `key` is present.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.entries.contains_key(key)
    }

    /// The value of `key`, without counting it as a use.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key).map(|(v, _)| v)
    }

    fn stamp(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The value of `key` to change; counts as a use.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let stamp = self.stamp();
        let (value, used) = self.entries.get_mut(key)?;
        let old = std::mem::replace(used, stamp);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(stamp, k);
        }
        Some(value)
    }

    /// Inserts or replaces; a new key in a full map evicts the least
    /// recently used entry, which is returned.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let stamp = self.stamp();
        if let Some((v, used)) = self.entries.get_mut(&key) {
            *v = value;
            let old = std::mem::replace(used, stamp);
            self.order.remove(&old);
            self.order.insert(stamp, key);
            return None;
        }
        let evicted = if self.entries.len() >= self.cap {
            self.evict_one()
        } else {
            None
        };
        self.order.insert(stamp, key.clone());
        self.entries.insert(key, (value, stamp));
        evicted
    }

    /// The value of `key`, inserted from `make` when absent (evicting as
    /// [`insert`](Self::insert) does); counts as a use.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains_key(&key) {
            self.insert(key.clone(), make());
        }
        self.get_mut(&key).expect("just inserted")
    }

    fn evict_one(&mut self) -> Option<(K, V)> {
        let (_, key) = self.order.pop_first()?;
        let (value, _) = self.entries.remove(&key)?;
        self.evicted += 1;
        Some((key, value))
    }

    /// Removes `key`.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let (value, used) = self.entries.remove(key)?;
        self.order.remove(&used);
        Some(value)
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let order = &mut self.order;
        self.entries.retain(|k, (v, used)| {
            let kept = keep(k, v);
            if !kept {
                order.remove(used);
            }
            kept
        });
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, (v, _))| (k, v))
    }

    /// Values in key order, to change (not counted as uses).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.values_mut().map(|(v, _)| v)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(v, _)| v)
    }
}

/// The server's roster of members (SPEC 4.3), capped at `max_members`.
pub struct Roster {
    members: CappedMap<String, (MemberEntry, Instant)>,
    epoch: u64,
}

impl Default for Roster {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MEMBERS)
    }
}

impl Roster {
    /// An empty roster of at most `max_members`.
    pub fn new(max_members: usize) -> Self {
        Self {
            members: CappedMap::new(max_members),
            epoch: 0,
        }
    }

    /// Members evicted because the roster was full.
    pub fn evicted(&self) -> u64 {
        self.members.evicted()
    }

    /// Records a heartbeat; true when the member is new.
    pub fn heartbeat(&mut self, heartbeat: Heartbeat, now_ms: u64) -> bool {
        let name = heartbeat.member.clone();
        match self.members.get_mut(&name) {
            Some((entry, seen)) => {
                entry.heartbeat = heartbeat;
                entry.last_heartbeat_ms = now_ms;
                *seen = Instant::now();
                false
            }
            None => {
                self.epoch += 1;
                let entry = MemberEntry {
                    heartbeat,
                    joined_ms: now_ms,
                    last_heartbeat_ms: now_ms,
                };
                if self.members.insert(name, (entry, Instant::now())).is_some() {
                    self.epoch += 1;
                }
                true
            }
        }
    }

    /// Removes a member; true when it was there.
    pub fn depart(&mut self, member: &str) -> bool {
        let gone = self.members.remove(member).is_some();
        if gone {
            self.epoch += 1;
        }
        gone
    }

    /// Members silent longer than `dead_after`, removed.
    pub fn expire(&mut self, dead_after: Duration) -> Vec<String> {
        let dead: Vec<String> = self
            .members
            .iter()
            .filter(|(_, (_, seen))| seen.elapsed() > dead_after)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &dead {
            self.depart(name);
        }
        dead
    }

    /// Gives every member a fresh start (a server taking over has not been
    /// hearing them while they moved brokers).
    pub fn grace(&mut self) {
        for (_, seen) in self.members.values_mut() {
            *seen = Instant::now();
        }
    }

    /// Adopts members from another server's snapshot without announcing them.
    pub fn seed(&mut self, topology: &Topology) {
        for entry in &topology.members {
            self.members
                .get_or_insert_with(entry.heartbeat.member.clone(), || {
                    (entry.clone(), Instant::now())
                });
        }
        self.epoch = self.epoch.max(topology.epoch);
    }

    /// Adopts one member of another server's roster without announcing it.
    pub fn seed_entry(&mut self, entry: &MemberEntry, epoch: u64) {
        self.members
            .get_or_insert_with(entry.heartbeat.member.clone(), || {
                (entry.clone(), Instant::now())
            });
        self.epoch = self.epoch.max(epoch);
    }

    /// The members, in name order.
    pub fn entries(&self) -> impl Iterator<Item = &MemberEntry> {
        self.members.values().map(|(e, _)| e)
    }

    /// `member`'s entry.
    pub fn get(&self, member: &str) -> Option<&MemberEntry> {
        self.members.get(member).map(|(e, _)| e)
    }

    /// True when `member` is in the roster.
    pub fn contains(&self, member: &str) -> bool {
        self.members.contains_key(member)
    }

    /// The snapshot to retain.
    pub fn snapshot(&self, server: &str) -> Topology {
        Topology {
            server: server.to_string(),
            epoch: self.epoch,
            members: self.members.values().map(|(e, _)| e.clone()).collect(),
        }
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Settings a fabric-wide change may set, with what each accepts.
pub const KNOWN_SETTINGS: &[(&str, &str)] = &[
    (
        "heartbeat_interval_ms",
        "heartbeat period of every member, 100-60000",
    ),
    (
        "dead_after_ms",
        "silence after which a server declares a member departed, 300-600000",
    ),
    (
        "site.<name>",
        "free text up to 256 bytes, stored and shown by every member (e.g. site.ntp)",
    ),
];

/// Checks a key and value; the error explains what is accepted.
pub fn validate_setting(key: &str, value: &str) -> Result<(), String> {
    let ranged = |lo: u64, hi: u64| match value.parse::<u64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(()),
        _ => Err(format!(
            "{key} must be a whole number between {lo} and {hi}, not '{value}'"
        )),
    };
    match key {
        "heartbeat_interval_ms" => ranged(100, 60_000),
        "dead_after_ms" => ranged(300, 600_000),
        _ if key.starts_with("site.") => {
            let name = &key[5..];
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                Err(format!(
                    "'{key}': site.<name> takes 1-64 letters, digits, '-', '_' or '.'"
                ))
            } else if value.len() > 256 {
                Err(format!("{key}: value of {} bytes exceeds 256", value.len()))
            } else {
                Ok(())
            }
        }
        _ => Err(format!(
            "unknown setting '{key}'; known: {}",
            KNOWN_SETTINGS
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// What applying a change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Now in force.
    Applied,
    /// This exact change is already in force.
    AlreadyApplied,
    /// A newer change to the key is in force.
    Superseded,
    /// Not acceptable.
    Rejected(String),
}

impl Outcome {
    /// The acknowledgement text.
    pub fn ack_text(&self) -> String {
        match self {
            Outcome::Applied | Outcome::AlreadyApplied => "applied".into(),
            Outcome::Superseded => "superseded".into(),
            Outcome::Rejected(why) => format!("rejected: {why}"),
        }
    }
}

/// One setting in force, with who acknowledged it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingEntry {
    /// The change in force.
    pub change: ConfigChange,
    /// Member -> outcome, for acknowledgements seen.
    #[serde(default)]
    pub acks: BTreeMap<String, String>,
}

/// The fabric config this member applies (last writer wins by time, then origin).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigStore {
    /// Setting -> entry.
    pub entries: BTreeMap<String, SettingEntry>,
}

fn newer(a: &ConfigChange, b: &ConfigChange) -> bool {
    (a.at_ms, &a.origin, a.seq) > (b.at_ms, &b.origin, b.seq)
}

impl ConfigStore {
    /// Whether [`ConfigStore::apply`] would put `change` in force, without
    /// doing it.
    pub fn would_apply(&self, change: &ConfigChange) -> bool {
        validate_setting(&change.key, &change.value).is_ok()
            && self
                .entries
                .get(&change.key)
                .is_none_or(|current| current.change != *change && newer(change, &current.change))
    }

    /// Applies a change.
    pub fn apply(&mut self, change: &ConfigChange) -> Outcome {
        if let Err(why) = validate_setting(&change.key, &change.value) {
            return Outcome::Rejected(why);
        }
        match self.entries.get(&change.key) {
            Some(current) if current.change == *change => Outcome::AlreadyApplied,
            Some(current) if !newer(change, &current.change) => Outcome::Superseded,
            _ => {
                self.entries.insert(
                    change.key.clone(),
                    SettingEntry {
                        change: change.clone(),
                        acks: BTreeMap::new(),
                    },
                );
                Outcome::Applied
            }
        }
    }

    /// Records an acknowledgement of the change in force.
    pub fn ack(&mut self, member: &str, origin: &str, seq: u64, outcome: &str) {
        for entry in self.entries.values_mut() {
            if entry.change.origin == origin && entry.change.seq == seq {
                entry.acks.insert(member.to_string(), outcome.to_string());
            }
        }
    }

    /// The snapshot form.
    pub fn state(&self) -> ConfigState {
        ConfigState {
            entries: self
                .entries
                .iter()
                .map(|(k, e)| (k.clone(), e.change.clone()))
                .collect(),
        }
    }

    /// A value in force.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|e| e.change.value.as_str())
    }

    /// Loads from a state file (missing = empty).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("fabric.state_file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("fabric.state_file {}: {e}", path.display())),
        }
    }

    /// Saves atomically (write, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).expect("serializable"))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// A change this member made, until every member has answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingChange {
    /// The change.
    pub change: ConfigChange,
    /// Members expected to answer.
    pub waiting_for: BTreeSet<String>,
    /// How many times it was sent.
    pub sends: u32,
    #[serde(skip)]
    last_sent: Option<Instant>,
}

/// Changes awaiting acknowledgement, resent until answered (SPEC 4.7: nothing
/// published during a broker switch is lost).
#[derive(Default)]
pub struct Outbox {
    pending: BTreeMap<u64, PendingChange>,
}

impl Outbox {
    /// Adds a change expecting answers from `members`.
    pub fn add(&mut self, change: ConfigChange, members: BTreeSet<String>) {
        self.pending.insert(
            change.seq,
            PendingChange {
                change,
                waiting_for: members,
                sends: 1,
                last_sent: Some(Instant::now()),
            },
        );
    }

    /// An answer arrived.
    pub fn answered(&mut self, seq: u64, member: &str) {
        if let Some(p) = self.pending.get_mut(&seq) {
            p.waiting_for.remove(member);
            if p.waiting_for.is_empty() {
                self.pending.remove(&seq);
            }
        }
    }

    /// A member departed: nobody waits for it.
    pub fn forget(&mut self, member: &str) {
        self.pending.retain(|_, p| {
            p.waiting_for.remove(member);
            !p.waiting_for.is_empty()
        });
    }

    /// Changes due for resending.
    pub fn due(&mut self, every: Duration) -> Vec<ConfigChange> {
        let mut out = Vec::new();
        for p in self.pending.values_mut() {
            if p.last_sent.is_none_or(|t| t.elapsed() >= every) {
                p.last_sent = Some(Instant::now());
                p.sends += 1;
                out.push(p.change.clone());
            }
        }
        out
    }

    /// Everything still pending.
    pub fn pending(&self) -> Vec<PendingChange> {
        self.pending.values().cloned().collect()
    }
}

/// The last fault applied per remote port, by its identity (the sender's
/// boot id and its fault number in that boot): a repeat is a duplicate, a
/// new boot starts afresh (a restarted switch numbers from 1 again).
/// Bounded: past `capacity` ports the least recently reported is
/// forgotten and counted.
pub struct FaultLedger {
    last: lru::LruCache<(String, String), (u64, u64)>,
    evicted: u64,
}

impl FaultLedger {
    /// Remembers at most `capacity` ports.
    pub fn new(capacity: usize) -> Self {
        Self {
            last: lru::LruCache::new(
                std::num::NonZeroUsize::new(capacity.max(1)).expect("at least 1"),
            ),
            evicted: 0,
        }
    }

    /// Records the fault; false when it was already applied (same boot,
    /// same or lower number).
    pub fn admit(&mut self, member: &str, port: &str, boot: u64, seq: u64) -> bool {
        let key = (member.to_string(), port.to_string());
        if let Some(&(last_boot, last_seq)) = self.last.get(&key)
            && last_boot == boot
            && seq <= last_seq
        {
            return false;
        }
        if let Some((old, _)) = self.last.push(key.clone(), (boot, seq))
            && old != key
        {
            self.evicted += 1;
        }
        true
    }

    /// Ports forgotten to stay within capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Token buckets per sender, at most `max_members` of them (a stream of
/// invented names evicts the least recently heard bucket).
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: CappedMap<String, (f64, Instant)>,
}

impl RateLimiter {
    /// `per_second` sustained, twice that in a burst.
    pub fn new(per_second: u32) -> Self {
        Self::with_capacity(per_second, DEFAULT_MAX_MEMBERS)
    }

    /// As [`new`](Self::new), for at most `senders` senders.
    pub fn with_capacity(per_second: u32, senders: usize) -> Self {
        Self {
            per_second: per_second as f64,
            burst: (per_second * 2) as f64,
            buckets: CappedMap::new(senders),
        }
    }

    /// Buckets evicted because the limiter was full.
    pub fn evicted(&self) -> u64 {
        self.buckets.evicted()
    }

    /// True when `sender` may send now.
    pub fn allow(&mut self, sender: &str) -> bool {
        let now = Instant::now();
        let burst = self.burst;
        let (tokens, last) = self
            .buckets
            .get_or_insert_with(sender.to_string(), || (burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_limit::LogLimiter;

    fn change(origin: &str, seq: u64, key: &str, value: &str, at_ms: u64) -> ConfigChange {
        ConfigChange {
            origin: origin.into(),
            seq,
            key: key.into(),
            value: value.into(),
            at_ms,
        }
    }

    #[test]
    fn newest_change_wins_and_replays_are_idempotent() {
        let mut store = ConfigStore::default();
        let a = change("sw1", 1, "site.ntp", "10.0.0.1", 100);
        let b = change("sw2", 1, "site.ntp", "10.0.0.2", 200);
        assert_eq!(store.apply(&b), Outcome::Applied);
        assert_eq!(store.apply(&a), Outcome::Superseded);
        assert_eq!(store.apply(&b), Outcome::AlreadyApplied);
        assert_eq!(store.get("site.ntp"), Some("10.0.0.2"));
        assert!(matches!(
            store.apply(&change("x", 1, "bogus", "1", 1)),
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            store.apply(&change("x", 1, "heartbeat_interval_ms", "5", 1)),
            Outcome::Rejected(_)
        ));
    }

    #[test]
    fn store_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fabric.json");
        let mut store = ConfigStore::default();
        store.apply(&change("sw1", 3, "site.syslog", "10.9.9.9", 5));
        store.ack("sw2", "sw1", 3, "applied");
        store.save(&path).unwrap();
        let back = ConfigStore::load(&path).unwrap();
        assert_eq!(back.get("site.syslog"), Some("10.9.9.9"));
        assert_eq!(back.entries["site.syslog"].acks["sw2"], "applied");
        assert!(
            ConfigStore::load(&dir.path().join("none"))
                .unwrap()
                .entries
                .is_empty()
        );
    }

    #[test]
    fn outbox_resends_until_everyone_answers() {
        let mut outbox = Outbox::default();
        outbox.add(
            change("sw1", 1, "site.a", "b", 1),
            ["sw2".into(), "sw3".into()].into(),
        );
        assert!(outbox.due(Duration::from_secs(60)).is_empty());
        assert_eq!(outbox.due(Duration::ZERO).len(), 1);
        outbox.answered(1, "sw2");
        assert_eq!(outbox.pending().len(), 1);
        outbox.forget("sw3");
        assert!(outbox.pending().is_empty());
    }

    #[test]
    fn roster_announces_each_member_once() {
        let hb = |m: &str| Heartbeat {
            member: m.into(),
            role: super::super::wire::Role::Client,
            model: "m".into(),
            version: "v".into(),
            servers: vec![],
            addresses: vec![],
            uptime_s: 0,
            interval_ms: 1000,
            ports: None,
        };
        let mut roster = Roster::default();
        assert!(roster.heartbeat(hb("a"), 1));
        assert!(!roster.heartbeat(hb("a"), 2));
        let mut other = Roster::default();
        other.seed(&roster.snapshot("s1"));
        assert!(!other.heartbeat(hb("a"), 3), "seeded members are not new");
        assert!(other.heartbeat(hb("b"), 3));
        assert_eq!(other.expire(Duration::from_secs(60)), Vec::<String>::new());
        assert_eq!(other.expire(Duration::ZERO).len(), 2);
    }

    #[test]
    fn faults_are_identified_per_port_and_boot() {
        let mut ledger = FaultLedger::new(2);
        assert!(ledger.admit("sw3", "p1", 7, 1));
        assert!(!ledger.admit("sw3", "p1", 7, 1), "repeat");
        assert!(ledger.admit("sw3", "p2", 7, 2));
        assert!(
            ledger.admit("sw3", "p1", 7, 3),
            "a later number of the same boot"
        );
        assert!(
            ledger.admit("sw3", "p1", 9, 1),
            "a restarted switch numbers from 1 again"
        );
        assert!(!ledger.admit("sw3", "p1", 9, 1));
        assert_eq!(ledger.evicted(), 0);
        assert!(ledger.admit("sw4", "p1", 1, 1));
        assert_eq!(ledger.evicted(), 1, "capacity 2: the oldest port forgotten");
    }

    #[test]
    fn capped_maps_evict_the_least_recently_used_and_count() {
        let mut map = CappedMap::new(3);
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            assert!(map.insert(k.to_string(), v).is_none());
        }
        // "a" used again: "b" is now the least recently used.
        *map.get_mut("a").unwrap() += 10;
        assert_eq!(map.insert("d".into(), 4), Some(("b".to_string(), 2)));
        assert_eq!(map.evicted(), 1);
        assert!(
            map.insert("a".into(), 0).is_none(),
            "replacing evicts nothing"
        );
        *map.get_or_insert_with("e".into(), || 5) += 1;
        assert_eq!(map.evicted(), 2, "c went for e");
        let keys: Vec<_> = map.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(keys, [("a", 0), ("d", 4), ("e", 6)]);
        map.retain(|k, _| k != "d");
        assert_eq!(map.remove("a"), Some(0));
        assert_eq!(map.len(), 1);
        // The order survives removals: filling up evicts only what it must.
        map.insert("f".into(), 7);
        map.insert("g".into(), 8);
        assert_eq!(map.insert("h".into(), 9), Some(("e".to_string(), 6)));
        assert_eq!(map.evicted(), 3);
        let mut roster = Roster::new(2);
        let hb = |m: &str| Heartbeat {
            member: m.into(),
            role: super::super::wire::Role::Client,
            model: "m".into(),
            version: "v".into(),
            servers: vec![],
            addresses: vec![],
            uptime_s: 0,
            interval_ms: 1000,
            ports: None,
        };
        for m in ["a", "b", "c"] {
            roster.heartbeat(hb(m), 1);
        }
        assert_eq!((roster.len(), roster.evicted()), (2, 1));
    }

    #[test]
    fn limiters_bound_floods() {
        let mut rate = RateLimiter::new(5);
        let allowed = (0..100).filter(|_| rate.allow("flood")).count();
        assert!(
            (10..=11).contains(&allowed),
            "burst of 2x rate, got {allowed}"
        );
        assert!(rate.allow("quiet"));
        let mut log = LogLimiter::new(Duration::from_secs(60));
        assert_eq!(log.admit("x"), Some(0));
        assert_eq!(log.admit("x"), None);
        assert_eq!(log.admit("y"), Some(0));
    }
}
