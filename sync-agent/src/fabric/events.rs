//! Every input of the fabric task, and one handler per input: MQTT link
//! events (connects, messages in), the heartbeat tick, local link changes,
//! and the operator's queries. Handlers decode and dispatch; the duties
//! themselves are in `server.rs` and `member.rs`.
//!
//! No handler waits on anything (publishes and sends to inference are
//! `try_*`), so the handlers are plain functions.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    config::EncryptionMode,
    link::LinkEvent as MqttEvent,
    report::{FabricReport, MemberReport, ServerReport, SetReport, SettingReport},
    seal::Opening,
    task::{PendingSet, Task},
    wire::{Heartbeat, Message},
};
use crate::bus;

/// Every input of the task.
pub(super) enum Event {
    /// From the MQTT link.
    Mqtt(MqttEvent),
    /// The heartbeat timer.
    Tick,
    /// Roster buckets that changed are due to be written.
    RosterDue,
    /// A local interface changed.
    Link(bus::LinkEvent),
    /// The link-event broadcast overran this task; this many were lost.
    LinksLagged(u64),
    /// From a [`super::FabricHandle`].
    Query(Query),
    /// This switch's addresses now (after an address was added or removed).
    Addresses(Vec<std::net::IpAddr>),
}

/// What the operator asks, through the handle.
pub(super) enum Query {
    /// `show fabric`.
    Report(oneshot::Sender<FabricReport>),
    /// `fabric set KEY VALUE`; the error is the refusal's reason.
    Set {
        key: String,
        value: String,
        reply: oneshot::Sender<Result<SetReport, String>>,
    },
    /// The local config center released a version: announce it.
    AnnounceRelease(bus::ConfigReleased),
    /// The local inference raised, changed or cleared an alarm: publish it.
    PublishAlarm(bus::AlarmRecord),
}

impl Task {
    /// Hands an event to its handler.
    pub(super) fn process(&mut self, event: Event) {
        match event {
            Event::Mqtt(event) => self.process_mqtt(event),
            Event::Tick => self.process_tick(),
            Event::RosterDue => self.roster_due(),
            Event::Link(event) => self.process_link(event),
            Event::LinksLagged(missed) => self.process_links_lagged(missed),
            Event::Query(Query::Report(reply)) => self.process_report(reply),
            Event::Query(Query::Set { key, value, reply }) => self.process_set(key, value, reply),
            Event::Query(Query::AnnounceRelease(release)) => self.announce_release(release),
            Event::Query(Query::PublishAlarm(alarm)) => self.publish_alarm(alarm),
            Event::Addresses(own) => self.process_addresses(own),
        }
    }

    /// The link connected, lost the broker, or delivered a message.
    pub(super) fn process_mqtt(&mut self, event: MqttEvent) {
        match event {
            MqttEvent::Connected { .. } => {
                self.connected = true;
                self.count("connects");
                self.server_connected();
                self.republish_alarms();
            }
            MqttEvent::Disconnected { .. } => {
                self.connected = false;
                self.count("disconnects");
            }
            MqttEvent::Publish {
                topic,
                payload,
                retained,
            } => self.process_publish(&topic, &payload, retained),
        }
    }

    /// A message from the broker: opened (checked, decrypted), then handed
    /// to the member's or the server's side. Our own messages come back
    /// from the broker and are ignored.
    pub(super) fn process_publish(&mut self, topic: &str, payload: &[u8], retained: bool) {
        if payload.is_empty() || self.topics.channel_of(topic).is_none() {
            return;
        }
        self.count("received");
        let store = &self.store;
        // A setting record that repeats what we hold (every member hears
        // each change from its origin first) is dropped before the costly
        // signature check: it would change nothing either way.
        let held = |message: &Message| matches!(message, Message::Setting(record) if !store.would_apply(&record.change));
        let opened = match self.codec.open_unless(payload, retained, held) {
            Ok(Opening::Opened(opened)) => opened,
            Ok(Opening::Needless) => {
                self.count("setting_already_held");
                return;
            }
            Err(rejection) => {
                self.reject(topic, &rejection.to_string(), rejection.counter());
                return;
            }
        };
        if opened.sender == self.identity {
            if let (true, Message::Fault(fault)) = (retained, &opened.message) {
                self.reconcile_own_fault(fault);
            }
            if let (true, Message::Alarm(alarm)) = (retained, &opened.message) {
                self.reconcile_own_alarm(alarm);
            }
            return;
        }
        match opened.message {
            Message::Heartbeat(hb) => {
                if !self.heartbeats.allow(&hb.member) {
                    self.reject(
                        topic,
                        &format!("heartbeat flood from {}", hb.member),
                        "heartbeat_flood",
                    );
                    return;
                }
                self.heard_heartbeat(&hb);
                self.roster_heartbeat(hb);
            }
            Message::Departed { member, reason } => {
                self.heard_departed(&member);
                self.roster_departed(&member, &reason);
                self.outbox.forget(&member);
            }
            Message::Server(status) => self.heard_server(status),
            Message::Topology(topology) => self.heard_topology(topology),
            Message::Membership(m) => self.record_announcement(m),
            Message::Change(change) => self.heard_change(change),
            Message::Ack(ack) => self.heard_ack(ack),
            Message::ConfigState(state) => self.heard_config_state(state),
            Message::Fault(fault) => self.heard_fault(fault),
            Message::ConfigAnnounce(announce) => self.heard_release(announce),
            Message::Roster(record) => self.heard_roster_record(record),
            Message::Setting(record) => self.heard_setting(record),
            Message::Alarm(alarm) => self.heard_alarm(alarm),
        }
    }

    /// The heartbeat timer: our heartbeat, the server's duties, and
    /// changes still unacknowledged sent again.
    pub(super) fn process_tick(&mut self) {
        self.save_counters();
        if self.store_unsaved {
            self.save_store();
        }
        self.send_heartbeat();
        self.prune_view();
        self.settle_sets();
        if self.rank.is_some() {
            self.server_duties();
        }
        self.resend_changes();
    }

    /// Saves the replay counters when due; a failure is counted and logged
    /// (rate-limited), and replay protection goes on in memory.
    pub(super) fn save_counters(&mut self) {
        if let Err(err) = self.codec.save_counters() {
            self.count("counters_file_errors");
            if let Some(suppressed) = self.logs.admit("counters_file") {
                tracing::error!(
                    file = %self.config.trust.counters_file.display(),
                    suppressed,
                    "cannot save the fabric replay counters: {err}"
                );
            }
        }
        let evicted = self.codec.replay_evicted();
        let counted = self
            .counters
            .get("replay_slots_evicted")
            .copied()
            .unwrap_or(0);
        if evicted > counted {
            self.count_by("replay_slots_evicted", evicted - counted);
        }
    }

    /// A local interface changed: a port going down or up is a fault for
    /// the fabric.
    pub(super) fn process_link(&mut self, event: bus::LinkEvent) {
        let (name, operational) = match event {
            bus::LinkEvent::Changed(link) => {
                let up = link.up && link.carrier;
                (link.name, Some(up))
            }
            bus::LinkEvent::Removed {
                name: Some(name), ..
            } => (name, None),
            bus::LinkEvent::Removed { name: None, .. } => return,
        };
        self.port_changed(name, operational);
    }

    /// This switch's addresses changed: the heartbeat carries the new ones,
    /// and the role follows (SPEC 4.1: holding a server address makes this
    /// switch that server). Becoming a server starts the embedded broker on
    /// that address if it is not running yet; losing the address stops the
    /// server's duties (rumqttd cannot be stopped; its listener is left
    /// without its address, so nobody reaches it).
    pub(super) fn process_addresses(&mut self, own: Vec<std::net::IpAddr>) {
        self.own = own;
        let (role, rank, reason) =
            super::role::decide_role(&self.config.servers, &self.own, self.config.member);
        if (role, rank) == (self.role, self.rank) {
            self.role_reason = reason;
            return;
        }
        tracing::warn!(from = ?self.role, to = ?role, ?rank, "fabric role changed: {reason}");
        self.count("role_changes");
        if let Some(rank) = rank
            && let Ok(choice) = self.config.broker_choice()
            && choice.is_hosted()
        {
            let listen = std::net::SocketAddr::new(self.config.servers[rank], self.config.port);
            if !self.brokers.iter().any(|(at, _)| *at == listen) {
                let tls = self.config.tls.as_ref().filter(|t| t.cert_file.is_some());
                let logs = super::bring_up::log_sizing(&self.config);
                match super::broker::start_hosted(&choice, listen, tls, &logs) {
                    Ok(restarts) => {
                        tracing::info!(%listen, "server's MQTT broker started for the new role");
                        self.brokers.push((listen, restarts));
                    }
                    Err(err) => {
                        self.count("broker_start_errors");
                        tracing::error!(%listen, "cannot start the embedded broker: {err}");
                    }
                }
            }
        }
        if rank.is_some() != self.rank.is_some() {
            // Servers hear every heartbeat; other members only the roster.
            self.subscriptions
                .send_replace(self.topics.subscriptions(&self.identity, rank.is_some()));
        }
        self.role = role;
        self.rank = rank;
        self.role_reason = reason;
        self.role_since = Instant::now();
        self.last_primary = None;
        if rank.is_none() {
            self.active = false;
        }
    }

    /// The link-event broadcast overran this task: the changes lost are
    /// not reported as faults (a port's next change is). Counted, and
    /// logged at most every few seconds.
    pub(super) fn process_links_lagged(&mut self, missed: u64) {
        self.count_by("link_events_lagged", missed);
        if let Some(suppressed) = self.logs.admit("links_lagged") {
            tracing::warn!(
                missed,
                suppressed,
                "fabric fell behind on link events; their faults are not reported"
            );
        }
    }

    /// `show fabric`.
    pub(super) fn process_report(&mut self, reply: oneshot::Sender<FabricReport>) {
        let _ = reply.send(self.report());
    }

    /// `fabric set KEY VALUE`.
    pub(super) fn process_set(
        &mut self,
        key: String,
        value: String,
        reply: oneshot::Sender<Result<SetReport, String>>,
    ) {
        match self.publish_change(key, value) {
            Ok((change, waiting)) => {
                self.pending_sets.push(PendingSet {
                    deadline: Instant::now() + Duration::from_millis(self.config.set_timeout_ms),
                    started: Instant::now(),
                    change,
                    waiting,
                    acks: Default::default(),
                    reply,
                });
                self.settle_sets();
            }
            Err(why) => {
                let _ = reply.send(Err(why));
            }
        }
    }

    /// Everything `show fabric` shows, as of now.
    pub(super) fn report(&self) -> FabricReport {
        let dead_after = self.dead_after();
        let mut members: Vec<MemberReport> = self
            .view
            .iter()
            .map(|(name, e)| {
                let state = if e.departed {
                    "departed"
                } else if e.heard.is_some_and(|t| t.elapsed() <= dead_after) || e.heard.is_none() {
                    "up"
                } else {
                    "silent"
                };
                member_report(
                    name,
                    &e.heartbeat,
                    e.heard.map(|t| t.elapsed().as_millis() as u64),
                    state,
                )
            })
            .collect();
        if self.is_member() {
            members.push(member_report(
                &self.identity,
                &self.own_heartbeat(),
                Some(0),
                "up",
            ));
        }
        members.sort_by(|a, b| a.identity.cmp(&b.identity));
        FabricReport {
            identity: self.identity.clone(),
            role: self.role,
            role_reason: self.role_reason.clone(),
            rank: self.rank,
            active: self.rank.map(|_| self.active),
            broker: self.broker(),
            connected: self.connected,
            encryption: match self.config.encryption.mode {
                EncryptionMode::None => "none".into(),
                EncryptionMode::Aead => "aead".into(),
            },
            tls: self.tls,
            members,
            servers: self
                .servers
                .values()
                .map(|(s, at)| ServerReport {
                    server: s.server.clone(),
                    rank: s.rank,
                    active: s.active,
                    last_status_ms_ago: at.elapsed().as_millis() as u64,
                })
                .collect(),
            announcements: self.announcements.iter().cloned().collect(),
            faults: self.faults.iter().cloned().collect(),
            config: self
                .store
                .entries
                .iter()
                .map(|(key, e)| SettingReport {
                    key: key.clone(),
                    value: e.change.value.clone(),
                    changed_by: e.change.origin.clone(),
                    changed_at_ms: e.change.at_ms,
                    seq: e.change.seq,
                    acks: e.acks.clone(),
                })
                .collect(),
            pending_changes: self.outbox.pending(),
            counters: self.counters_with_evictions(),
            rejected: self
                .rejected
                .iter()
                .map(|(kind, n)| (kind.to_string(), *n))
                .collect(),
        }
    }
}

impl Task {
    /// The counters, with what each capped map evicted so far (only the
    /// maps that evicted anything).
    fn counters_with_evictions(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counters = self.counters.clone();
        for (name, n) in [
            ("view_evicted", self.view.evicted()),
            ("roster_evicted", self.roster.evicted()),
            ("servers_evicted", self.servers.evicted()),
            (
                "rate_limit_evicted",
                self.heartbeats.evicted() + self.fault_rate.evicted(),
            ),
        ] {
            if n > 0 {
                counters.insert(name.to_string(), n);
            }
        }
        if !self.brokers.is_empty() {
            counters.insert(
                "broker_restarts".into(),
                self.brokers
                    .iter()
                    .map(|(_, r)| r.load(std::sync::atomic::Ordering::Relaxed))
                    .sum(),
            );
        }
        counters
    }
}

fn member_report(name: &str, hb: &Heartbeat, ago: Option<u64>, state: &str) -> MemberReport {
    MemberReport {
        identity: name.to_string(),
        role: hb.role,
        model: hb.model.clone(),
        version: hb.version.clone(),
        servers: hb.servers.clone(),
        addresses: hb.addresses.clone(),
        uptime_s: hb.uptime_s,
        last_heartbeat_ms_ago: ago,
        state: state.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        bus::{Link, ids},
        fabric::{
            seal::Codec,
            task::{test_identity, test_roster, test_task, test_task_with},
            wire::{ConfigChange, Fault, Role},
        },
    };

    fn heartbeat_from(codec: &mut Codec, task: &Task, member: &str) -> (String, Vec<u8>) {
        let message = Message::Heartbeat(Heartbeat {
            member: member.into(),
            role: Role::Client,
            model: "m".into(),
            version: "v".into(),
            servers: vec![],
            addresses: vec![],
            uptime_s: 1,
            interval_ms: 1000,
            ports: None,
        });
        (task.topics.topic_for(&message).0, codec.seal(&message))
    }

    #[test]
    fn departed_and_silent_members_are_pruned_and_counted() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task_with(infos, "prune_after_ms = 100");
        for member in ["sw2", "sw3"] {
            let mut codec = Codec::new(test_identity(member), test_roster(), None);
            let (topic, payload) = heartbeat_from(&mut codec, &task, member);
            task.process_publish(&topic, &payload, false);
        }
        task.heard_departed("sw3");
        task.process(Event::Tick);
        assert_eq!(task.report().members.len(), 3, "sw1, sw2, sw3 still known");
        std::thread::sleep(Duration::from_millis(150));
        // sw2 stays: heard again just now; sw3 departed 150 ms ago.
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        let (topic, payload) = heartbeat_from(&mut sw2, &task, "sw2");
        task.process_publish(&topic, &payload, false);
        task.process(Event::Tick);
        let report = task.report();
        let names: Vec<_> = report.members.iter().map(|m| m.identity.as_str()).collect();
        assert_eq!(names, ["sw1", "sw2"]);
        assert_eq!(report.counters.get("members_pruned"), Some(&1));
        std::thread::sleep(Duration::from_millis(150));
        task.process(Event::Tick);
        let report = task.report();
        assert_eq!(report.members.len(), 1, "silent sw2 pruned too");
        assert_eq!(report.counters.get("members_pruned"), Some(&2));
    }

    #[test]
    fn the_members_watch_lists_each_members_ports_wakes_only_on_change_and_forgets_the_pruned() {
        let (infos, _rx) = mpsc::channel(16);
        let (mut task, _eventloop) = test_task_with(infos, "prune_after_ms = 100");
        let mut members = task.members_out.subscribe();
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        let mut beat = |task: &mut Task, ports: Option<Vec<&str>>| {
            let message = Message::Heartbeat(Heartbeat {
                member: "sw2".into(),
                role: Role::Client,
                model: "m".into(),
                version: "v".into(),
                servers: vec![],
                addresses: vec![],
                uptime_s: 1,
                interval_ms: 1000,
                ports: ports.map(|p| p.into_iter().map(String::from).collect()),
            });
            let topic = task.topics.topic_for(&message).0;
            task.process_publish(&topic, &sw2.seal(&message), false);
        };
        let ports = |members: &mut tokio::sync::watch::Receiver<bus::FabricMembers>| {
            members.borrow_and_update()["sw2"]
                .as_deref()
                .map(|p| p.to_vec())
        };
        // Unsorted, with `lo` and a name no interface can have: held to
        // the list's rules.
        beat(&mut task, Some(vec!["p2", "lo", "p1", "bad/name"]));
        assert!(members.has_changed().unwrap());
        assert_eq!(ports(&mut members), Some(vec!["p1".into(), "p2".into()]));
        // The same again, or "not said": no wake-up, the list stays.
        beat(&mut task, Some(vec!["p1", "p2"]));
        beat(&mut task, None);
        assert!(!members.has_changed().unwrap());
        assert_eq!(ports(&mut members), Some(vec!["p1".into(), "p2".into()]));
        beat(&mut task, Some(vec!["p1"]));
        assert!(members.has_changed().unwrap());
        assert_eq!(ports(&mut members), Some(vec!["p1".into()]));
        // Departed, it stays listed; pruned, it is gone.
        task.heard_departed("sw2");
        std::thread::sleep(Duration::from_millis(150));
        task.process(Event::Tick);
        assert!(members.has_changed().unwrap());
        assert!(members.borrow_and_update().is_empty());
    }

    /// A member that is not a server hears no heartbeats: it knows the
    /// members from the servers' roster records and departure
    /// announcements, and keeps them however long they are quiet.
    #[test]
    fn a_member_knows_members_from_the_servers_records_only() {
        use crate::fabric::wire::{MemberEntry, Membership, RosterRecord, roster_bucket};
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task_with(
            infos,
            "prune_after_ms = 100\nheartbeat_interval_ms = 50\ndead_after_ms = 120",
        );
        let mut srv = Codec::new(test_identity("srv"), test_roster(), None);
        let mut from_server = |task: &mut Task, message: Message| {
            let (topic, retained) = task.topics.topic_for(&message);
            let payload = srv.seal(&message);
            task.process_publish(&topic, &payload, retained);
        };
        let record = |member: &str| {
            Message::Roster(RosterRecord {
                server: "srv".into(),
                epoch: 1,
                bucket: roster_bucket(member),
                entries: vec![MemberEntry {
                    heartbeat: Heartbeat {
                        member: member.into(),
                        role: Role::Client,
                        model: "m".into(),
                        version: "v".into(),
                        servers: vec![],
                        addresses: vec![],
                        uptime_s: 1,
                        interval_ms: 1000,
                        ports: None,
                    },
                    joined_ms: 1,
                    last_heartbeat_ms: 1,
                }],
            })
        };
        let state = |task: &Task, member: &str| {
            task.report()
                .members
                .iter()
                .find(|m| m.identity == member)
                .map(|m| m.state.clone())
        };
        task.process_mqtt(MqttEvent::Connected { index: 0 });
        from_server(&mut task, record("sw2"));
        from_server(&mut task, record("sw3"));
        std::thread::sleep(Duration::from_millis(150));
        task.process(Event::Tick);
        assert_eq!(
            state(&task, "sw2").as_deref(),
            Some("up"),
            "listed, not pruned"
        );
        from_server(
            &mut task,
            Message::Membership(Membership {
                server: "srv".into(),
                member: "sw2".into(),
                joined: false,
                reason: "silent".into(),
                at_ms: 1,
            }),
        );
        assert_eq!(state(&task, "sw2").as_deref(), Some("departed"));
        from_server(&mut task, record("sw2"));
        assert_eq!(state(&task, "sw2").as_deref(), Some("up"), "joined again");
    }

    /// An active, connected primary server (`sw1`) that has heard `sw2`
    /// and written its roster bucket; with `sw2`'s codec.
    fn active_server_hearing_sw2() -> (Task, rumqttc::EventLoop, Codec) {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, eventloop) = test_task(infos);
        task.rank = Some(0);
        task.active = true;
        task.connected = true;
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        let (topic, payload) = heartbeat_from(&mut sw2, &task, "sw2");
        task.process_publish(&topic, &payload, false);
        task.roster_due();
        (task, eventloop, sw2)
    }

    /// Roster bucket records this server wrote.
    fn records_written(task: &Task) -> Option<u64> {
        task.report().counters.get("roster_records_sent").copied()
    }

    /// A bucket of members whose port lists do not all fit one message
    /// still lists every member: those without room go without their
    /// ports (counted), and are not written again at every tick for it.
    #[test]
    fn a_roster_bucket_too_full_for_the_port_lists_keeps_every_member_without_some_lists() {
        use crate::fabric::wire::{MAX_HEARTBEAT_PORTS, roster_bucket};
        let (mut task, _eventloop, _sw2) = active_server_hearing_sw2();
        let bucket = roster_bucket("sw2");
        let ports: Vec<String> = (0..MAX_HEARTBEAT_PORTS)
            .map(|i| format!("swp{i:03}-{:07}", 0))
            .collect();
        let names: Vec<String> = (0..5000)
            .map(|i| format!("m{i}"))
            .filter(|name| roster_bucket(name) == bucket)
            .take(40)
            .collect();
        assert_eq!(names.len(), 40);
        for name in &names {
            task.roster.heartbeat(
                Heartbeat {
                    member: name.clone(),
                    role: Role::Client,
                    model: "m".into(),
                    version: "v".into(),
                    servers: vec![],
                    addresses: vec![],
                    uptime_s: 1,
                    interval_ms: 1000,
                    ports: Some(ports.clone()),
                },
                1,
            );
        }
        let sent = records_written(&task).unwrap_or(0);
        task.roster_due();
        let counters = task.report().counters;
        assert_eq!(records_written(&task), Some(sent + 1), "{counters:?}");
        let bare = counters.get("roster_ports_left_out").copied().unwrap_or(0);
        assert!(
            bare > 0 && bare < 40,
            "some lists fit, not all: {counters:?}"
        );
        assert_eq!(
            counters.get("roster_bucket_full"),
            None,
            "no member left out"
        );
        task.roster_due();
        assert_eq!(
            records_written(&task),
            Some(sent + 1),
            "unchanged: not written again"
        );
    }

    /// Both servers retain on the same roster topics. When the other one
    /// writes a bucket that disagrees with what the active server hears,
    /// or announces the departure of a member it still hears, the active
    /// server writes that bucket again; a record that agrees is left alone.
    #[test]
    fn an_active_server_rewrites_buckets_the_other_server_got_wrong() {
        use crate::fabric::wire::{MemberEntry, Membership, RosterRecord, roster_bucket};
        let (mut task, _eventloop, _sw2) = active_server_hearing_sw2();
        assert_eq!(records_written(&task), Some(1), "sw2's bucket written once");

        let mut srv = Codec::new(test_identity("srv"), test_roster(), None);
        let mut from_srv = |task: &mut Task, message: Message| {
            let (topic, retained) = task.topics.topic_for(&message);
            let payload = srv.seal(&message);
            task.process_publish(&topic, &payload, retained);
        };
        let record = |model: &str| {
            let heartbeat = Heartbeat {
                member: "sw2".into(),
                role: Role::Client,
                model: model.into(),
                version: "v".into(),
                servers: vec![],
                addresses: vec![],
                uptime_s: 9,
                interval_ms: 1000,
                ports: None,
            };
            Message::Roster(RosterRecord {
                server: "srv".into(),
                epoch: 1,
                bucket: roster_bucket("sw2"),
                entries: vec![MemberEntry {
                    heartbeat,
                    joined_ms: 1,
                    last_heartbeat_ms: 1,
                }],
            })
        };
        from_srv(&mut task, record("m"));
        task.roster_due();
        assert_eq!(
            records_written(&task),
            Some(1),
            "an agreeing record is left alone"
        );

        from_srv(&mut task, record("stale"));
        task.roster_due();
        assert_eq!(
            records_written(&task),
            Some(2),
            "a disagreeing record is replaced"
        );

        from_srv(
            &mut task,
            Message::Membership(Membership {
                server: "srv".into(),
                member: "sw2".into(),
                joined: false,
                reason: "no heartbeat".into(),
                at_ms: 1,
            }),
        );
        task.roster_due();
        assert_eq!(
            records_written(&task),
            Some(3),
            "a departure of a member still heard is answered with its record"
        );
        task.roster_due();
        assert_eq!(records_written(&task), Some(3), "and only once");
    }

    /// A member that departs and is back before the server's next tick has
    /// its unchanged record written again (members saw it departed), and
    /// a member hearing the server announce the return lists it up at once.
    #[test]
    fn a_member_back_within_one_tick_is_written_again_and_listed_up() {
        use crate::fabric::wire::Membership;
        let (mut task, _eventloop, mut sw2) = active_server_hearing_sw2();
        assert_eq!(records_written(&task), Some(1));
        let departed = Message::Departed {
            member: "sw2".into(),
            reason: "connection lost (last will)".into(),
        };
        let (topic, _) = task.topics.topic_for(&departed);
        let payload = sw2.seal(&departed);
        task.process_publish(&topic, &payload, false);
        // Back with the same heartbeat, no tick in between.
        let mut again = Codec::new(test_identity("sw2"), test_roster(), None);
        let (topic, payload) = heartbeat_from(&mut again, &task, "sw2");
        task.process_publish(&topic, &payload, false);
        task.roster_due();
        assert_eq!(
            records_written(&task),
            Some(2),
            "the record is written again"
        );

        // A member (not a server) that saw the departure.
        let (infos, _rx) = mpsc::channel(4);
        let (mut member, _eventloop) = test_task(infos);
        let mut srv = Codec::new(test_identity("srv"), test_roster(), None);
        let mut announce = |member: &mut Task, joined: bool| {
            let message = Message::Membership(Membership {
                server: "srv".into(),
                member: "sw2".into(),
                joined,
                reason: String::new(),
                at_ms: 1,
            });
            let (topic, retained) = member.topics.topic_for(&message);
            let payload = srv.seal(&message);
            member.process_publish(&topic, &payload, retained);
        };
        member.heard_heartbeat(&Heartbeat {
            member: "sw2".into(),
            role: Role::Client,
            model: "m".into(),
            version: "v".into(),
            servers: vec![],
            addresses: vec![],
            uptime_s: 1,
            interval_ms: 1000,
            ports: None,
        });
        announce(&mut member, false);
        let state = |member: &Task| {
            member
                .report()
                .members
                .into_iter()
                .find(|m| m.identity == "sw2")
                .map(|m| m.state)
        };
        assert_eq!(state(&member).as_deref(), Some("departed"));
        announce(&mut member, true);
        assert_eq!(state(&member).as_deref(), Some("up"));
    }

    #[test]
    fn the_member_view_is_capped_and_evictions_are_counted() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) =
            test_task_with(infos, "max_members = 2\nmax_heartbeats_per_s = 100");
        for n in 0..5 {
            let member = format!("sim{n}");
            let mut codec = Codec::new(test_identity(&member), test_roster(), None);
            let (topic, payload) = heartbeat_from(&mut codec, &task, &member);
            task.process_publish(&topic, &payload, false);
        }
        let report = task.report();
        let names: Vec<_> = report.members.iter().map(|m| m.identity.as_str()).collect();
        assert_eq!(
            names,
            ["sim3", "sim4", "sw1"],
            "the two heard last, and sw1 itself"
        );
        assert_eq!(report.counters.get("view_evicted"), Some(&3));
    }

    #[test]
    fn a_fault_flood_is_cut_to_the_rate_and_counted() {
        let (infos, _rx) = mpsc::channel(1000);
        let (mut task, _eventloop) = test_task_with(infos, "max_faults_per_s = 5");
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        for seq in 1..=100 {
            let (topic, payload) = fault_from(&mut sw2, &task, seq);
            task.process_publish(&topic, &payload, false);
        }
        let report = task.report();
        let received = report.counters["faults_received"];
        assert!(
            (10..=11).contains(&received),
            "burst of twice the rate, got {received}"
        );
        assert_eq!(report.counters["fault_flood"], 100 - received);
    }

    fn port(name: &str, up: bool) -> bus::LinkEvent {
        bus::LinkEvent::Changed(Link {
            name: name.into(),
            index: 7,
            mac: None,
            up,
            carrier: up,
            controller: None,
            mtu: None,
        })
    }

    fn fault_from(codec: &mut Codec, task: &Task, seq: u64) -> (String, Vec<u8>) {
        let message = Message::Fault(Fault {
            member: "sw2".into(),
            boot: 1,
            seq,
            port: "p9".into(),
            kind: "port-down".into(),
            at_ms: 1,
        });
        (task.topics.topic_for(&message).0, codec.seal(&message))
    }

    #[test]
    fn a_local_port_going_down_is_published_as_a_fault() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task(infos);
        task.process(Event::Link(port("p1", false)));
        task.process(Event::Link(port("p1", false)));
        let report = task.report();
        assert_eq!(
            report.faults.len(),
            1,
            "a repeat of the same state is no fault"
        );
        let fault = &report.faults[0].fault;
        assert_eq!(
            (
                fault.member.as_str(),
                fault.port.as_str(),
                fault.kind.as_str()
            ),
            ("sw1", "p1", "port-down")
        );
        assert_eq!(report.counters.get("sent"), Some(&1));
        task.process(Event::Link(port("p1", true)));
        assert_eq!(task.report().faults[1].fault.kind, "port-up");
    }

    #[test]
    fn loopback_and_unknown_ports_are_never_faults() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task(infos);
        task.process(Event::Link(port("lo", false)));
        task.process(Event::Link(port("new0", false)));
        assert!(task.report().faults.is_empty());
    }

    #[test]
    fn another_members_fault_goes_to_inference_once() {
        let (infos, mut rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task(infos);
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        for _ in 0..2 {
            let (topic, payload) = fault_from(&mut sw2, &task, 1);
            task.process_publish(&topic, &payload, false);
        }
        let info = rx.try_recv().expect("one info for inference");
        assert_eq!(info.source, "fabric");
        assert_eq!(info.message, "port-down");
        assert_eq!(info.object, ids::remote_port("sw2", "p9"));
        assert!(rx.try_recv().is_err(), "the repeat is not passed on");
        let report = task.report();
        assert_eq!(report.faults.len(), 1);
        assert_eq!(report.counters.get("faults_received"), Some(&1));
        assert_eq!(report.counters.get("faults_duplicate"), Some(&1));
    }

    #[test]
    fn a_full_inference_queue_drops_the_fault_and_counts_it() {
        let (infos, _rx) = mpsc::channel(1);
        infos
            .try_send(bus::Info::new("test", "filler", "switch:x"))
            .unwrap();
        let (mut task, _eventloop) = test_task(infos);
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        let (topic, payload) = fault_from(&mut sw2, &task, 1);
        task.process_publish(&topic, &payload, false);
        let report = task.report();
        assert_eq!(report.counters.get("inference_dropped"), Some(&1));
        assert_eq!(report.faults.len(), 1, "still recorded for show fabric");
    }

    #[test]
    fn a_change_made_after_hearing_one_wins_even_with_a_clock_behind() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task(infos);
        // sw2's clock is 3 s ahead of ours (within the tolerated skew).
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        let heard = Message::Change(ConfigChange {
            origin: "sw2".into(),
            seq: 1,
            key: "site.ntp".into(),
            value: "from-sw2".into(),
            at_ms: crate::clock::now_ms() + 3_000,
        });
        let (topic, _) = task.topics.topic_for(&heard);
        task.process_publish(&topic, &sw2.seal(&heard), false);
        assert_eq!(task.store.get("site.ntp"), Some("from-sw2"));
        // Our change comes after it, so it wins although our wall clock
        // says earlier.
        let (reply, mut answer) = oneshot::channel();
        task.process(Event::Query(Query::Set {
            key: "site.ntp".into(),
            value: "from-sw1".into(),
            reply,
        }));
        let change = answer.try_recv().unwrap().unwrap().change;
        assert!(change.at_ms > crate::clock::now_ms() + 2_000);
        assert_eq!(task.store.get("site.ntp"), Some("from-sw1"));
    }

    #[test]
    fn missed_link_events_are_counted() {
        let (infos, _rx) = mpsc::channel(1);
        let (mut task, _eventloop) = test_task(infos);
        task.process(Event::LinksLagged(5));
        task.process(Event::LinksLagged(2));
        assert_eq!(task.report().counters.get("link_events_lagged"), Some(&7));
    }

    #[test]
    fn an_unknown_setting_is_refused_with_what_is_known() {
        let (infos, _rx) = mpsc::channel(1);
        let (mut task, _eventloop) = test_task(infos);
        let (reply, mut answer) = oneshot::channel();
        task.process(Event::Query(Query::Set {
            key: "colour".into(),
            value: "blue".into(),
            reply,
        }));
        let why = answer.try_recv().unwrap().unwrap_err();
        assert!(
            why.starts_with("unknown setting 'colour'; known: "),
            "{why}"
        );
        let (reply, mut answer) = oneshot::channel();
        task.process(Event::Query(Query::Set {
            key: "dead_after_ms".into(),
            value: "5000".into(),
            reply,
        }));
        let set = answer.try_recv().unwrap().unwrap();
        assert_eq!(
            (set.change.origin.as_str(), set.change.value.as_str()),
            ("sw1", "5000")
        );
        assert_eq!(set.outcome, "applied", "no other member to wait for");
        let report = task.report();
        assert_eq!(report.config[0].key, "dead_after_ms");
        assert!(
            report.pending_changes.is_empty(),
            "no other member to wait for"
        );
    }

    /// Acks heard by the origin of a change reach the state file at the
    /// next tick, not one file write each; the change itself is saved at
    /// once.
    #[test]
    fn acks_reach_the_state_file_at_the_next_tick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fabric.json");
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task_with(
            infos,
            &format!("state_file = {:?}\n", path.to_str().unwrap()),
        );
        let mut sw2 = Codec::new(test_identity("sw2"), test_roster(), None);
        let heard = Message::Change(ConfigChange {
            origin: "sw2".into(),
            seq: 1,
            key: "site.ntp".into(),
            value: "10.0.0.9".into(),
            at_ms: crate::clock::now_ms(),
        });
        let (topic, _) = task.topics.topic_for(&heard);
        task.process_publish(&topic, &sw2.seal(&heard), false);
        let saved = |path: &std::path::Path| super::super::state::ConfigStore::load(path).unwrap();
        assert_eq!(saved(&path).get("site.ntp"), Some("10.0.0.9"));
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        for member in ["sw3", "sim0", "sim1"] {
            task.heard_ack(crate::fabric::wire::ConfigAck {
                member: member.into(),
                origin: "sw2".into(),
                seq: 1,
                outcome: "applied".into(),
            });
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            written,
            "no write per ack"
        );
        task.process_tick();
        let acks = &saved(&path).entries["site.ntp"].acks;
        assert_eq!(
            acks.keys().map(String::as_str).collect::<Vec<_>>(),
            ["sim0", "sim1", "sw1", "sw3"],
            "the acks (and our own) saved at the tick"
        );
    }
}
