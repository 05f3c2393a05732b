//! The fabric's bookkeeping, free of I/O: the server's roster, the fabric
//! config with its validation, changes awaiting acknowledgement, and rate
//! limits. The task owns one of each.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::wire::{ConfigChange, ConfigState, Heartbeat, MemberEntry, Topology};

/// The server's roster of members (SPEC 4.3).
#[derive(Default)]
pub struct Roster {
    members: BTreeMap<String, (MemberEntry, Instant)>,
    epoch: u64,
}

impl Roster {
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
                self.members.insert(name, (entry, Instant::now()));
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
                .entry(entry.heartbeat.member.clone())
                .or_insert_with(|| (entry.clone(), Instant::now()));
        }
        self.epoch = self.epoch.max(topology.epoch);
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

/// Token buckets per sender.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    /// `per_second` sustained, twice that in a burst.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: per_second as f64,
            burst: (per_second * 2) as f64,
            buckets: HashMap::new(),
        }
    }

    /// True when `sender` may send now.
    pub fn allow(&mut self, sender: &str) -> bool {
        if self.buckets.len() > 10_000 && !self.buckets.contains_key(sender) {
            // Bound memory against a stream of invented names.
            self.buckets
                .retain(|_, (_, t)| t.elapsed() < Duration::from_secs(60));
        }
        let now = Instant::now();
        let (tokens, last) = self
            .buckets
            .entry(sender.to_string())
            .or_insert((self.burst, now));
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
