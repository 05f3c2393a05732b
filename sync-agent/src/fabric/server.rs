//! The server's duties (SPEC 4.3, 4.6): the roster of members from their
//! heartbeats, membership announcements (joined, departed), the topology
//! and config snapshots members and the other server read, and which of the
//! two servers is active. The primary announces once it has had time to
//! hear everyone; the backup takes over when the primary's status goes
//! quiet and stands down when it returns.
//!
//! The topology is retained in 64 buckets (`Roster` records on
//! `DEV_INFO_MSG/roster/<bucket>`; `wire::RosterRecord` says why not one
//! per member) and the config per key (`Setting` records on
//! `DEV_CONF_MSG/setting/<key>`), not as one snapshot: no 64 KiB ceiling,
//! and a join rewrites one small message, not the whole fabric.
//! Every role reads them (`heard_roster_record`): members learn of one
//! another before the first heartbeat arrives, the standby server keeps its
//! roster seeded, a returning primary reads them all at bring-up. The
//! whole-fabric `Topology` and `ConfigState` kinds are still read (from an
//! older server) but no longer sent.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use super::{
    task::{RECENT, Task, ViewEntry},
    wire::{
        Heartbeat, MAX_MESSAGE, MemberEntry, Membership, Message, RosterRecord, ServerStatus,
        SettingRecord, Topology, roster_bucket,
    },
};
use crate::clock::now_ms;

/// How long an active server gathers joins before it rewrites their roster
/// buckets. Every member that is not a server receives every bucket write,
/// and a bucket carries ~1/64 of the roster, so writing one per join would
/// send each member the whole roster again for every 64 joins (a fabric's
/// cold start is thousands of joins in seconds); gathered, a bucket is
/// written at most four times a second, and a newcomer appears in the
/// other members' views within this window.
const ROSTER_COALESCE: Duration = Duration::from_millis(250);

impl Task {
    /// A returning primary seeds its roster from the backup's retained
    /// roster records (fetched at bring-up), so it does not announce those
    /// members again.
    pub(super) fn seed_from_backup(&mut self, records: &[Vec<u8>]) {
        let mut seeded = 0;
        for bytes in records {
            match self.codec.open(bytes, true) {
                Ok(opened) => match opened.message {
                    Message::Roster(record) => {
                        for entry in record.entries {
                            self.roster.seed_entry(&entry, record.epoch);
                            self.learn_member(entry);
                            seeded += 1;
                        }
                    }
                    Message::Topology(topology) => {
                        seeded += topology.members.len();
                        self.roster.seed(&topology);
                        self.heard_topology(topology);
                    }
                    _ => {}
                },
                Err(err) => {
                    self.count(err.counter());
                    if let Some(suppressed) = self.logs.admit("seed") {
                        tracing::warn!(
                            suppressed,
                            "backup's retained roster record refused: {err}"
                        );
                    }
                }
            }
        }
        tracing::info!(
            members = seeded,
            "seeded the roster from the backup's retained records"
        );
    }

    /// (Re)connected: an active server republishes its snapshots at once,
    /// so the broker's retained copies are current.
    pub(super) fn server_connected(&mut self) {
        if self.rank.is_some() && self.active {
            self.publish_snapshots();
        }
    }

    /// Servers: a member's heartbeat keeps it in the roster; the first one
    /// is announced (when this server is active).
    pub(super) fn roster_heartbeat(&mut self, hb: Heartbeat) {
        if self.rank.is_some() {
            let member = hb.member.clone();
            let new = self.roster.heartbeat(hb, now_ms());
            if new {
                // Written again even if its record says what the one written
                // before its departure said: a member that left and came
                // back within one tick would otherwise stay departed in
                // every member's view (the departure was announced, and the
                // unchanged record never rewritten).
                self.published_roster.remove(&member);
            }
            if new && self.active && self.connected {
                self.announce(&member, true, "first heartbeat");
                // Its bucket soon, not at the next tick: members learn of a
                // newcomer within ROSTER_COALESCE.
                self.roster_changed();
            }
        }
    }

    /// Servers: a member said it leaves (or its last will did); an active
    /// server announces the departure.
    pub(super) fn roster_departed(&mut self, member: &str, reason: &str) {
        if self.rank.is_some() && self.roster.depart(member) && self.active {
            self.announce(member, false, reason);
        }
    }

    /// A server's status; the backup notes when it last heard the primary.
    pub(super) fn heard_server(&mut self, status: ServerStatus) {
        if status.rank == 0 && self.rank == Some(1) {
            self.last_primary = Some(Instant::now());
        }
        self.servers
            .insert(status.server.clone(), (status, Instant::now()));
        // A full map evicts (bounded against invented server names).
    }

    /// A topology snapshot (from a server of an older version): members
    /// not heard yet join the view; a server not announcing adopts the
    /// roster.
    pub(super) fn heard_topology(&mut self, topology: Topology) {
        if self.rank.is_some() && !self.active {
            // A server not (yet) announcing adopts the other's members so it
            // does not announce them again when it takes over.
            self.roster.seed(&topology);
        }
        for entry in topology.members {
            self.learn_member(entry);
        }
    }

    /// One retained roster bucket: as a topology of its members.
    pub(super) fn heard_roster_record(&mut self, record: RosterRecord) {
        if self.rank.is_some() && self.active && !self.agrees_with(&record) {
            // Both servers retain on the same bucket topics. While both
            // announce (the backup took over and the primary is back, or
            // either was starved past the takeover time), the other's
            // write replaced ours at the broker: ours goes out again, or a
            // member we hear would stay missing from every member's view.
            self.roster_overwritten.insert(record.bucket);
        }
        for entry in record.entries {
            if self.rank.is_some() && !self.active {
                self.roster.seed_entry(&entry, record.epoch);
            }
            self.learn_member(entry);
        }
    }

    /// True when `record` lists the members this roster holds in its
    /// bucket, saying the same of each.
    fn agrees_with(&self, record: &RosterRecord) -> bool {
        let ours: Vec<&MemberEntry> = self
            .roster
            .entries()
            .filter(|e| roster_bucket(&e.heartbeat.member) == record.bucket)
            .collect();
        ours.len() == record.entries.len()
            && ours.iter().all(|mine| {
                record.entries.iter().any(|theirs| {
                    // A record without a member's ports (no room for
                    // them) agrees on them.
                    let mine = Heartbeat {
                        ports: theirs
                            .heartbeat
                            .ports
                            .as_ref()
                            .and(mine.heartbeat.ports.clone()),
                        ..mine.heartbeat.clone()
                    };
                    theirs.heartbeat.member == mine.member && same_record(&theirs.heartbeat, &mine)
                })
            })
    }

    /// A member listed by a server joins the view (not yet heard itself).
    fn learn_member(&mut self, entry: MemberEntry) {
        let name = entry.heartbeat.member.clone();
        if name == self.identity {
            return;
        }
        if self.view.get(&name).is_none_or(|e| e.departed) {
            self.tell_membership(&name, true);
        }
        let now = Instant::now();
        let known = self.view.get_or_insert_with(name.clone(), || ViewEntry {
            heartbeat: entry.heartbeat.clone(),
            heard: None,
            departed: false,
            since: now,
        });
        // A server writes (and keeps retained) the records of present
        // members only, so a record is news of a member that is here, one
        // that departed earlier and joined again included.
        known.heartbeat = entry.heartbeat;
        known.departed = false;
        known.since = now;
        self.member_seen(&name);
    }

    fn should_be_active(&self) -> bool {
        let settle = self.dead_after() + self.heartbeat_interval();
        let takeover = Duration::from_millis(self.config.takeover_after_ms);
        match self.rank {
            Some(0) => self.role_since.elapsed() >= settle,
            Some(_) => match self.last_primary {
                Some(heard) => heard.elapsed() > takeover,
                None => self.role_since.elapsed() > takeover,
            },
            None => false,
        }
    }

    /// Every tick on a server: take over or stand down, expire silent
    /// members, publish this server's status, and (when active) announce
    /// departures and publish the snapshots when they changed or are
    /// getting old.
    pub(super) fn server_duties(&mut self) {
        let rank = self.rank.expect("server");
        let wanted = self.should_be_active();
        if wanted != self.active {
            self.active = wanted;
            if wanted {
                tracing::warn!(rank, "this server takes over announcing the fabric");
                self.count("takeovers");
                self.roster.grace();
                self.published_roster = super::state::CappedMap::new(self.config.max_members);
                self.publish_settings();
            } else {
                tracing::warn!(rank, "the primary server is back; standing down");
            }
        }
        let expired = self.roster.expire(self.dead_after());
        if !self.connected {
            return;
        }
        if rank == 0 || self.active {
            self.publish(&Message::Server(ServerStatus {
                server: self.identity.clone(),
                rank,
                active: self.active,
            }));
        }
        if !self.active {
            return;
        }
        for member in expired {
            let reason = format!("no heartbeat for {} ms", self.dead_after().as_millis());
            self.announce(&member, false, &reason);
        }
        self.publish_roster_records();
    }

    /// Rewrites everything this server retains at the broker: after a
    /// (re)connect the broker may have lost it (a restarted broker), or may
    /// hold the other server's copies.
    fn publish_snapshots(&mut self) {
        self.published_roster = super::state::CappedMap::new(self.config.max_members);
        self.publish_roster_records();
        self.publish_settings();
    }

    /// Rewrites the roster buckets holding a member that changed since last
    /// written (a new member, or a heartbeat saying something new; the
    /// uptime alone is no change) or that left the roster; an emptied
    /// bucket's retained message is deleted.
    fn publish_roster_records(&mut self) {
        self.roster_flush_at = None;
        let mut dirty: BTreeSet<u16> = self
            .roster
            .entries()
            .filter(|e| {
                self.published_roster
                    .get(&e.heartbeat.member)
                    .is_none_or(|p| !same_record(p, &e.heartbeat))
            })
            .map(|e| roster_bucket(&e.heartbeat.member))
            .collect();
        let gone: Vec<String> = self
            .published_roster
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| !self.roster.contains(name))
            .collect();
        for name in gone {
            self.published_roster.remove(&name);
            dirty.insert(roster_bucket(&name));
        }
        dirty.append(&mut self.roster_overwritten);
        for bucket in dirty {
            self.publish_roster_bucket(bucket);
        }
    }

    /// A member joined: the changed buckets are written within
    /// [`ROSTER_COALESCE`] (one write per bucket however many joined).
    fn roster_changed(&mut self) {
        if self.roster_flush_at.is_none() {
            self.roster_flush_at = Some(tokio::time::Instant::now() + ROSTER_COALESCE);
        }
    }

    /// The coalescing window is over: write the buckets that changed.
    pub(super) fn roster_due(&mut self) {
        self.roster_flush_at = None;
        if self.rank.is_some() && self.active && self.connected {
            self.publish_roster_records();
        }
    }

    /// Writes bucket `bucket` as the roster holds it now (deletes it when
    /// empty). Members beyond what one message holds are left out, counted
    /// and logged: 64 buckets of ~64 KiB hold well over the default
    /// `max_members`.
    fn publish_roster_bucket(&mut self, bucket: u16) {
        // Room for the header, signature, nonce and the record's own fields.
        const BUDGET: usize = MAX_MESSAGE - 1024;
        // Membership matters more than the port lists: room is made for
        // every member without its list first, then lists are put back
        // while they fit. A member without its list is "not said": the
        // receivers keep what they knew of its ports.
        let size_of =
            |entry: &MemberEntry| serde_json::to_vec(entry).map_or(BUDGET, |v| v.len() + 1);
        let mut entries = Vec::new();
        let mut size = 0;
        let mut left_out = 0usize;
        let mut written = Vec::new();
        for entry in self
            .roster
            .entries()
            .filter(|e| roster_bucket(&e.heartbeat.member) == bucket)
        {
            let mut bare = entry.clone();
            bare.heartbeat.ports = None;
            let bare_size = size_of(&bare);
            if size + bare_size > BUDGET {
                left_out += 1;
                continue;
            }
            size += bare_size;
            written.push(record_key(&entry.heartbeat));
            entries.push((bare, entry.heartbeat.ports.clone(), bare_size));
        }
        let mut without_ports = 0u64;
        let entries: Vec<MemberEntry> = entries
            .into_iter()
            .map(|(mut entry, ports, bare_size)| {
                if ports.is_none() {
                    return entry;
                }
                entry.heartbeat.ports = ports;
                let full_size = size_of(&entry);
                if size + full_size - bare_size <= BUDGET {
                    size += full_size - bare_size;
                } else {
                    entry.heartbeat.ports = None;
                    without_ports += 1;
                }
                entry
            })
            .collect();
        // What the roster holds, not the record as cut down: a member
        // written without its ports is not rewritten every tick for it.
        for key in written {
            self.published_roster.insert(key.member.clone(), key);
        }
        if without_ports > 0 {
            self.count_by("roster_ports_left_out", without_ports);
        }
        if left_out > 0 {
            self.count("roster_bucket_full");
            if let Some(suppressed) = self.logs.admit("roster_bucket_full") {
                tracing::warn!(
                    bucket,
                    left_out,
                    suppressed,
                    "roster bucket over one message: members left out of the retained roster \
                     (they still heartbeat and are announced)"
                );
            }
        }
        if entries.is_empty() {
            let topic = self.topics.roster_topic(bucket);
            self.clear_retained(topic);
            return;
        }
        self.count("roster_records_sent");
        self.publish(&Message::Roster(RosterRecord {
            server: self.identity.clone(),
            epoch: self.roster.epoch(),
            bucket,
            entries,
        }));
    }

    /// Retains every setting in force, one record per key.
    pub(super) fn publish_settings(&mut self) {
        let keys: Vec<String> = self.store.entries.keys().cloned().collect();
        for key in keys {
            self.publish_setting(&key);
        }
    }

    /// Retains setting `key` as in force here.
    pub(super) fn publish_setting(&mut self, key: &str) {
        if let Some(entry) = self.store.entries.get(key) {
            let record = SettingRecord {
                server: self.identity.clone(),
                change: entry.change.clone(),
            };
            self.publish(&Message::Setting(record));
        }
    }

    fn announce(&mut self, member: &str, joined: bool, reason: &str) {
        // Thousands of members join at once when a fabric starts: the log
        // gets a line per few seconds, `show fabric` every announcement.
        if let Some(suppressed) = self.logs.admit(if joined { "joined" } else { "departed" }) {
            tracing::info!(
                member,
                joined,
                reason,
                suppressed,
                "announcing membership change"
            );
        }
        let m = Membership {
            server: self.identity.clone(),
            member: member.to_string(),
            joined,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        self.record_announcement(m.clone());
        self.publish(&Message::Membership(m));
    }

    /// Deletes the message retained on `topic` (MQTT: an empty retained
    /// publish).
    fn clear_retained(&mut self, topic: String) {
        match self
            .client
            .try_publish(topic, rumqttc::QoS::AtLeastOnce, true, Vec::new())
        {
            Ok(()) => self.count("retained_cleared"),
            Err(_) => self.count("send_dropped"),
        }
    }

    /// An announcement (ours or heard): a departed member is marked so and
    /// no longer awaited for acknowledgements.
    pub(super) fn record_announcement(&mut self, m: Membership) {
        if m.joined
            && let Some(entry) = self.view.get_mut(&m.member)
            && entry.departed
        {
            // Its record follows; until then the announcement is the news.
            entry.departed = false;
            entry.since = Instant::now();
        }
        if !m.joined
            && m.server != self.identity
            && self.rank.is_some()
            && self.active
            && self.roster.contains(&m.member)
        {
            // The other server announced a departure of a member this one
            // still hears (it was starved, or had not heard it yet): the
            // member's record goes out again, so members do not keep it
            // departed.
            self.roster_overwritten.insert(roster_bucket(&m.member));
        }
        if !m.joined {
            if self.view.get(&m.member).is_some_and(|e| !e.departed) {
                self.tell_membership(&m.member, false);
            }
            if let Some(entry) = self.view.get_mut(&m.member) {
                entry.departed = true;
                entry.since = Instant::now();
            }
            self.outbox.forget(&m.member);
        }
        if self.announcements.len() >= RECENT {
            self.announcements.pop_front();
        }
        self.announcements.push_back(m);
    }
}

/// What a roster record says that is worth rewriting it for: the heartbeat
/// without the uptime (which changes every heartbeat).
fn record_key(hb: &Heartbeat) -> Heartbeat {
    Heartbeat {
        uptime_s: 0,
        ..hb.clone()
    }
}

/// True when `published` (a [`record_key`]) still says what `hb` says.
fn same_record(published: &Heartbeat, hb: &Heartbeat) -> bool {
    published.role == hb.role
        && published.interval_ms == hb.interval_ms
        && published.model == hb.model
        && published.version == hb.version
        && published.servers == hb.servers
        && published.addresses == hb.addresses
        && published.ports == hb.ports
}
