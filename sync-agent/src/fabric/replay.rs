//! Replay protection for every message, retained or not (issue 14): the
//! header's counter is the sender's microsecond clock (forced to increase)
//! and signed, so a receiver can judge it against its own clock and its
//! memory of that sender.
//!
//! - Nothing from more than `max_skew` in the future.
//! - Stream kinds (heartbeats, changes, acks, server status, announcements,
//!   departures): at most `max_age + max_skew` old, not from before this
//!   receiver started (minus the skew), not older than the highest counter
//!   it had heard from the sender before a restart, and never twice (every
//!   counter of the window is remembered).
//! - Snapshot kinds (topology, config snapshot, each port's fault state):
//!   retained by the broker and legitimately old, so no age limit; instead
//!   one slot per (sender, snapshot) whose counter may only grow. The same
//!   snapshot again is accepted (applying it is idempotent), an older one
//!   is a replay.
//! - Last wills are sealed at connect time and fired later: a slot of
//!   their own whose counter must strictly grow.
//!
//! The highest counters and the slots are saved to `counters_file`, so a
//! restarted receiver refuses what it accepted before.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::wire::Message;

/// Most snapshot slots remembered; past it the least recently used is
/// forgotten (and counted).
pub const MAX_SLOTS: usize = 65_536;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Seen before, or older than the sender's newest snapshot/will.
    Replayed,
    /// Older than the window (or than this receiver's start).
    Stale,
    /// Further in the future than the skew allows.
    Future,
}

/// Where a message's counter is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// Stream kinds: the per-sender window.
    Stream,
    /// A snapshot: the counter may only grow (ties accepted).
    Snapshot(String),
    /// A last will: the counter must strictly grow.
    Will,
}

impl Domain {
    /// The domain of a message (`will`: it carries the will flag).
    pub fn of(message: &Message, will: bool) -> Self {
        if will {
            return Domain::Will;
        }
        match message {
            Message::Topology(_) => Domain::Snapshot("topology".into()),
            Message::ConfigState(_) => Domain::Snapshot("config_state".into()),
            Message::Fault(f) => Domain::Snapshot(format!("port/{}", f.port)),
            Message::Roster(r) => Domain::Snapshot(format!("roster/{}", r.bucket)),
            Message::Setting(s) => Domain::Snapshot(format!("setting/{}", s.change.key)),
            Message::Alarm(a) => Domain::Snapshot(format!("alarm/{}", a.object)),
            Message::Heartbeat(_)
            | Message::Departed { .. }
            | Message::Server(_)
            | Message::Membership(_)
            | Message::Change(_)
            | Message::Ack(_)
            | Message::ConfigAnnounce(_) => Domain::Stream,
        }
    }
}

#[derive(Default)]
struct Window {
    highest: u64,
    seen: BTreeSet<u64>,
}

/// What the counters file holds.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    /// Sender -> highest stream counter accepted.
    #[serde(default)]
    streams: BTreeMap<String, u64>,
    /// Sender -> slot -> last counter accepted.
    #[serde(default)]
    slots: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The replay state of one receiver.
pub struct ReplayGuard {
    max_age_us: u64,
    skew_us: u64,
    /// Stream counters before this are refused (this start, minus skew).
    started_floor_us: u64,
    /// Per sender, the highest counter heard before this start.
    floors: HashMap<String, u64>,
    windows: HashMap<String, Window>,
    slots: lru::LruCache<(String, String), u64>,
    evicted: u64,
    path: Option<PathBuf>,
    dirty: bool,
    /// A slot moved: saved at the next chance, whatever [`SAVE_EVERY`]
    /// says (slots move rarely, and a lost one lets an old snapshot in).
    slot_moved: bool,
    last_save: Option<std::time::Instant>,
}

/// Saves at most this often: every heartbeat moves a counter, and an fsync
/// per message would be the agent's main cost. What a restart loses in
/// between is covered by the start floor (nothing older than the start
/// minus the skew is accepted).
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl ReplayGuard {
    /// A guard with nothing remembered, started now.
    pub fn new(max_age_ms: u64, skew_ms: u64) -> Self {
        let skew_us = skew_ms * 1000;
        Self {
            max_age_us: max_age_ms * 1000,
            skew_us,
            started_floor_us: crate::clock::now_us().saturating_sub(skew_us),
            floors: HashMap::new(),
            windows: HashMap::new(),
            slots: lru::LruCache::new(NonZeroUsize::new(MAX_SLOTS).expect("non-zero")),
            evicted: 0,
            path: None,
            dirty: false,
            slot_moved: false,
            last_save: None,
        }
    }

    /// Like [`ReplayGuard::new`], remembering what `path` holds (missing:
    /// nothing) and saving there. The error names the file.
    pub fn load(path: &Path, max_age_ms: u64, skew_ms: u64) -> anyhow::Result<Self> {
        let mut guard = Self::new(max_age_ms, skew_ms);
        let saved: Saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("fabric.trust.counters_file {}: {e}", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => anyhow::bail!("fabric.trust.counters_file {}: {e}", path.display()),
        };
        guard.floors = saved.streams.into_iter().collect();
        for (sender, slots) in saved.slots {
            for (slot, counter) in slots {
                guard.slots.put((sender.clone(), slot), counter);
            }
        }
        guard.path = Some(path.to_path_buf());
        Ok(guard)
    }

    /// Judges `counter` from `sender` in `domain` against `now_us`; an
    /// accepted counter is remembered.
    pub fn admit(
        &mut self,
        sender: &str,
        domain: &Domain,
        counter: u64,
        now_us: u64,
    ) -> Result<(), Refusal> {
        if counter > now_us.saturating_add(self.skew_us) {
            return Err(Refusal::Future);
        }
        match domain {
            Domain::Stream => self.admit_stream(sender, counter, now_us),
            Domain::Snapshot(slot) => self.admit_slot(sender, slot, counter, false),
            Domain::Will => self.admit_slot(sender, "will", counter, true),
        }
    }

    fn admit_stream(&mut self, sender: &str, counter: u64, now_us: u64) -> Result<(), Refusal> {
        let oldest = now_us.saturating_sub(self.max_age_us + self.skew_us);
        if counter < oldest.max(self.started_floor_us) {
            return Err(Refusal::Stale);
        }
        if self
            .floors
            .get(sender)
            .is_some_and(|&floor| counter <= floor)
        {
            return Err(Refusal::Replayed);
        }
        let window = self.windows.entry(sender.to_string()).or_default();
        if !window.seen.insert(counter) {
            return Err(Refusal::Replayed);
        }
        if counter > window.highest {
            window.highest = counter;
            self.dirty = true;
        }
        // Counters older than the age limit are refused anyway.
        window.seen = window.seen.split_off(&oldest);
        Ok(())
    }

    fn admit_slot(
        &mut self,
        sender: &str,
        slot: &str,
        counter: u64,
        strict: bool,
    ) -> Result<(), Refusal> {
        let key = (sender.to_string(), slot.to_string());
        if let Some(&last) = self.slots.get(&key)
            && (counter < last || (strict && counter == last))
        {
            return Err(Refusal::Replayed);
        }
        if self.slots.peek(&key) != Some(&counter) {
            self.dirty = true;
            self.slot_moved = true;
        }
        if let Some((old, _)) = self.slots.push(key.clone(), counter)
            && old != key
        {
            self.evicted += 1;
        }
        Ok(())
    }

    /// Slots forgotten to stay within [`MAX_SLOTS`].
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Saves to the counters file when a slot moved, or when a stream
    /// counter moved and the last save is [`SAVE_EVERY`] old (write, fsync,
    /// rename). Nothing to do without a file.
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let due = self.slot_moved || self.last_save.is_none_or(|t| t.elapsed() >= SAVE_EVERY);
        if !self.dirty || !due {
            return Ok(());
        }
        self.last_save = Some(std::time::Instant::now());
        let mut saved = Saved::default();
        for (sender, floor) in &self.floors {
            saved.streams.insert(sender.clone(), *floor);
        }
        for (sender, window) in &self.windows {
            let entry = saved.streams.entry(sender.clone()).or_default();
            *entry = (*entry).max(window.highest);
        }
        for ((sender, slot), counter) in self.slots.iter() {
            saved
                .slots
                .entry(sender.clone())
                .or_default()
                .insert(slot.clone(), *counter);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(&saved).expect("serializable"))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        self.dirty = false;
        self.slot_moved = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn guard() -> ReplayGuard {
        let mut g = ReplayGuard::new(60_000, 5_000);
        g.started_floor_us = 0;
        g
    }

    #[test]
    fn stream_counters_are_accepted_once_within_the_window() {
        let mut g = guard();
        let now = 1_000 * S;
        assert_eq!(g.admit("a", &Domain::Stream, now, now), Ok(()));
        assert_eq!(
            g.admit("a", &Domain::Stream, now, now),
            Err(Refusal::Replayed)
        );
        assert_eq!(
            g.admit("a", &Domain::Stream, now - 2 * S, now),
            Ok(()),
            "reordered"
        );
        assert_eq!(
            g.admit("b", &Domain::Stream, now, now),
            Ok(()),
            "per sender"
        );
        assert_eq!(
            g.admit("a", &Domain::Stream, now - 66 * S, now),
            Err(Refusal::Stale)
        );
        assert_eq!(
            g.admit("a", &Domain::Stream, now + 6 * S, now),
            Err(Refusal::Future)
        );
        assert_eq!(
            g.admit("a", &Domain::Stream, now + 4 * S, now),
            Ok(()),
            "within skew"
        );
    }

    #[test]
    fn nothing_from_before_the_start_but_old_snapshots_are_fine() {
        let mut g = ReplayGuard::new(60_000, 5_000);
        let now = crate::clock::now_us();
        assert_eq!(
            g.admit("a", &Domain::Stream, now - 10 * S, now),
            Err(Refusal::Stale)
        );
        let port = Domain::Snapshot("port/p1".into());
        assert_eq!(g.admit("a", &port, now - 3_600 * S, now), Ok(()));
        assert_eq!(
            g.admit("a", &port, now - 3_600 * S, now),
            Ok(()),
            "same again"
        );
        assert_eq!(g.admit("a", &port, now - 1_800 * S, now), Ok(()));
        assert_eq!(
            g.admit("a", &port, now - 3_600 * S, now),
            Err(Refusal::Replayed),
            "older than the newest"
        );
        assert_eq!(g.admit("a", &Domain::Will, now - 900 * S, now), Ok(()));
        assert_eq!(
            g.admit("a", &Domain::Will, now - 900 * S, now),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn a_restarted_receiver_refuses_what_it_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.json");
        let now = crate::clock::now_us();
        let mut g = ReplayGuard::load(&path, 60_000, 5_000).unwrap();
        g.started_floor_us = 0;
        let port = Domain::Snapshot("port/p1".into());
        g.admit("a", &Domain::Stream, now - S, now).unwrap();
        g.admit("a", &port, now - 100 * S, now).unwrap();
        g.save().unwrap();
        let mut again = ReplayGuard::load(&path, 60_000, 5_000).unwrap();
        again.started_floor_us = 0;
        assert_eq!(
            again.admit("a", &Domain::Stream, now - S, now),
            Err(Refusal::Replayed)
        );
        assert_eq!(again.admit("a", &Domain::Stream, now, now), Ok(()));
        assert_eq!(
            again.admit("a", &port, now - 200 * S, now),
            Err(Refusal::Replayed)
        );
        assert_eq!(again.admit("a", &port, now - 100 * S, now), Ok(()));
        std::fs::write(&path, "{").unwrap();
        let err = ReplayGuard::load(&path, 60_000, 5_000)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("fabric.trust.counters_file"), "{err}");
    }

    proptest::proptest! {
        /// Whatever the order, no counter is ever accepted twice.
        #[test]
        fn no_counter_is_accepted_twice(counters in proptest::collection::vec(0u64..50, 1..200)) {
            let mut g = guard();
            let now = 1_000 * S;
            let mut accepted = std::collections::HashSet::new();
            for c in counters {
                if g.admit("a", &Domain::Stream, now - c * 1000, now).is_ok() {
                    proptest::prop_assert!(accepted.insert(c));
                }
            }
        }
    }
}
