//! The server's duties (SPEC 4.3, 4.6): the roster of members from their
//! heartbeats, membership announcements (joined, departed), the topology
//! and config snapshots members and the other server read, and which of the
//! two servers is active. The primary announces once it has had time to
//! hear everyone; the backup takes over when the primary's status goes
//! quiet and stands down when it returns.
//!
//! Topology snapshots are read by every role (`heard_topology`): members
//! learn of one another from them before the first heartbeat arrives.

use std::time::{Duration, Instant};

use super::{
    task::{RECENT, Task, ViewEntry},
    wire::{Heartbeat, Membership, Message, ServerStatus, Topology},
};
use crate::clock::now_ms;

impl Task {
    /// A returning primary seeds its roster from the backup's retained
    /// topology (fetched at bring-up), so it does not announce those
    /// members again.
    pub(super) fn seed_from_backup(&mut self, bytes: &[u8]) {
        match self.codec.open(bytes, true) {
            Ok(opened) => {
                if let Message::Topology(topology) = opened.message {
                    tracing::info!(
                        members = topology.members.len(),
                        from = topology.server,
                        "seeded the roster from the backup's topology"
                    );
                    self.roster.seed(&topology);
                    self.heard_topology(topology);
                }
            }
            Err(err) => tracing::warn!("backup's retained topology refused: {err}"),
        }
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
            if new && self.active && self.connected {
                self.announce(&member, true, "first heartbeat");
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

    /// A topology snapshot: members not heard yet join the view; a server
    /// not announcing adopts the roster.
    pub(super) fn heard_topology(&mut self, topology: Topology) {
        if self.rank.is_some() && !self.active {
            // A server not (yet) announcing adopts the other's members so it
            // does not announce them again when it takes over.
            self.roster.seed(&topology);
        }
        for entry in topology.members {
            let name = entry.heartbeat.member.clone();
            if name == self.identity {
                continue;
            }
            let now = Instant::now();
            let known = self.view.get_or_insert_with(name, || ViewEntry {
                heartbeat: entry.heartbeat,
                heard: None,
                departed: false,
                since: now,
            });
            if !known.departed {
                known.since = now;
            }
        }
    }

    fn should_be_active(&self) -> bool {
        let settle = self.dead_after() + self.heartbeat_interval();
        let takeover = Duration::from_millis(self.config.takeover_after_ms);
        match self.rank {
            Some(0) => self.started.elapsed() >= settle,
            Some(_) => match self.last_primary {
                Some(heard) => heard.elapsed() > takeover,
                None => self.started.elapsed() > takeover,
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
                self.published_epoch = None;
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
        let stale = self
            .last_topology_publish
            .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
        if self.published_epoch != Some(self.roster.epoch()) || stale {
            self.publish_snapshots();
        }
    }

    /// Publishes the topology and the config state (both retained).
    fn publish_snapshots(&mut self) {
        let topology = self.roster.snapshot(&self.identity);
        self.published_epoch = Some(topology.epoch);
        self.last_topology_publish = Some(Instant::now());
        self.publish(&Message::Topology(topology));
        self.publish(&Message::ConfigState(self.store.state()));
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

    /// An announcement (ours or heard): a departed member is marked so and
    /// no longer awaited for acknowledgements.
    pub(super) fn record_announcement(&mut self, m: Membership) {
        if !m.joined {
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
