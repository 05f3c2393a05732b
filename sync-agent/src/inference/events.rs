//! Every input of the inference task and its handler: interface changes,
//! information from other modules, and the operator's queries.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::atomic::Ordering,
};

use tokio::sync::oneshot;

use super::{
    AlarmRecord, FabricMembers, ObjectId, ObjectView,
    alarms::Notice,
    live::{self, Family},
    report::{AlarmsReport, ChainLink, RemoteAlarm, StateReport, StatesReport},
    task::{MAX_REMOTE, Task},
};
use crate::{
    bus::{Info, LinkEvent, ids},
    clock::now_ms,
    southbound::{
        addresses,
        links::{self, Link},
        neighbours::{self, NeighbourEvent},
    },
};

/// An alarm notice as it crosses the fabric (the origin is filled in by
/// the fabric).
fn record_of(notice: &Notice) -> AlarmRecord {
    let (Notice::Raised(view) | Notice::Cleared(view)) = notice;
    let limit = AlarmRecord::MAX_LISTED;
    AlarmRecord {
        origin: String::new(),
        object: view.object.clone(),
        state: view
            .states
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        level: view.level,
        root_causes: view.root_causes.iter().take(limit).cloned().collect(),
        suppressed: view
            .suppressed
            .iter()
            .take(limit)
            .map(|s| s.object.clone())
            .collect(),
        raised_ms: view.raised_ms,
        // A cleared notice always carries its clearing time.
        cleared_ms: match notice {
            Notice::Raised(_) => 0,
            Notice::Cleared(view) => view.cleared_ms.max(1),
        },
    }
}

/// The source of fabric membership information (a member present or
/// departed).
const MEMBERSHIP: &str = "fabric-membership";

/// Everything the inference task reacts to.
#[derive(Debug)]
pub(super) enum Event {
    /// An interface changed or went away.
    Link(LinkEvent),
    /// The task fell behind the link events and missed this many.
    LinksLagged(u64),
    /// Information from elsewhere in the agent (fabric, peers, health).
    Info(Info),
    /// An address was added or removed somewhere (bursts coalesced).
    AddressesChanged,
    /// An IPv4 route was added or removed (bursts coalesced).
    RoutesChanged,
    /// The kernel's neighbour table changed.
    Neighbour(NeighbourEvent),
    /// Another fabric member's alarm raised, changed or cleared.
    RemoteAlarm(AlarmRecord),
    /// The fabric's members (and their ports) changed: the latest view.
    MembersChanged(FabricMembers),
    /// An operator query.
    Query(Query),
}

/// Operator queries, each with where the answer goes.
#[derive(Debug)]
pub(super) enum Query {
    /// `show states`.
    States {
        /// Only objects with a fault level above 0 or in lost contact.
        faulty: bool,
        /// The answer.
        reply: oneshot::Sender<StatesReport>,
    },
    /// `show alarms`.
    Alarms {
        /// The answer.
        reply: oneshot::Sender<AlarmsReport>,
    },
    /// `show state OBJECT`.
    State {
        /// The object's id.
        object: String,
        /// The answer, or why there is none (unknown object).
        reply: oneshot::Sender<Result<StateReport, String>>,
    },
}

impl Task {
    /// Hands one event to its handler.
    pub(super) async fn process(&mut self, event: Event) {
        match event {
            Event::Link(event) => self.process_link(event),
            Event::LinksLagged(missed) => self.process_links_lagged(missed).await,
            Event::Info(info) => self.process_info(info),
            Event::AddressesChanged => self.process_addresses_changed().await,
            Event::RoutesChanged => self.process_routes_changed().await,
            Event::Neighbour(event) => self.process_neighbour(event),
            Event::RemoteAlarm(alarm) => self.process_remote_alarm(alarm),
            Event::MembersChanged(members) => self.process_members_changed(members),
            Event::Query(Query::States { faulty, reply }) => {
                let _ = reply.send(self.process_states(faulty));
            }
            Event::Query(Query::Alarms { reply }) => {
                let _ = reply.send(self.process_alarms());
            }
            Event::Query(Query::State { object, reply }) => {
                let _ = reply.send(self.process_state(object));
            }
        }
    }

    /// An interface changed (a new one joins the model) or went away.
    pub(super) fn process_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Changed(link) => {
                self.names.insert(link.index, link.name.clone());
                live::ensure_port(&mut self.model, &self.switch, &link.name);
                self.link_state(&link);
            }
            LinkEvent::Removed { index, name } => {
                let Some(name) = name.or_else(|| self.names.get(&index).cloned()) else {
                    return;
                };
                self.apply(Info::new("netlink", "link-removed", ids::port(&name)));
            }
        }
    }

    /// Link events were missed: every interface is read again and handled
    /// as if it had changed, and those gone since are handled as removed.
    pub(super) async fn process_links_lagged(&mut self, missed: u64) {
        self.links_lagged += 1;
        if self.links_lagged == 1 {
            tracing::warn!(
                missed,
                "state inference fell behind the link events; re-reading the interfaces (logged once)"
            );
        } else {
            tracing::debug!(
                missed,
                times = self.links_lagged,
                "link events missed again"
            );
        }
        let all = match links::all(&self.netlink).await {
            Ok(all) => all,
            Err(err) => {
                tracing::error!(error = %err, "cannot re-read the interfaces after missing link events");
                return;
            }
        };
        let present: BTreeSet<u32> = all.iter().map(|l| l.index).collect();
        let gone: Vec<u32> = self
            .names
            .keys()
            .copied()
            .filter(|index| !present.contains(index))
            .collect();
        for index in gone {
            let name = self.names.remove(&index);
            self.process_link(LinkEvent::Removed { index, name });
        }
        for link in all {
            self.process_link(LinkEvent::Changed(link));
        }
    }

    /// Addresses changed: an interface with an IPv4 address and no IP
    /// interface object yet gets one; one whose last IPv4 address went
    /// loses it, with the gateways and neighbours under it. The same for
    /// IPv6 (`ip6:IF`), except that an interface whose port is down keeps
    /// its IPv6 interface (shown down): the kernel flushes the IPv6
    /// addresses of a port taken down (`keep_addr_on_down` = 0), and the
    /// object vanishing would hide the fault. Every address is read in one
    /// dump, however many changed. Gateways are read again (a new IP
    /// interface may be the way to one).
    pub(super) async fn process_addresses_changed(&mut self) {
        let all = match addresses::all(&self.netlink).await {
            Ok(all) => all,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the addresses: IP interfaces not updated");
                return;
            }
        };
        // Whether each interface is up now, read after the addresses: the
        // kernel flushes a port's IPv6 addresses after telling it went
        // down, but the address and link watches are separate sockets, so
        // the model may not have heard of the link yet.
        let up: BTreeSet<u32> = match links::all(&self.netlink).await {
            Ok(all) => all.iter().filter(|l| l.up).map(|l| l.index).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the interfaces: IP interfaces not updated");
                return;
            }
        };
        let names: Vec<(u32, String)> = self
            .names
            .iter()
            .map(|(index, name)| (*index, name.clone()))
            .collect();
        let mut touched = Vec::new();
        for (index, name) in names {
            let list = all.get(&index).map_or(&[][..], Vec::as_slice);
            let has = |family: Family| list.iter().any(|a| family.holds(&a.ip));
            let ip = ids::ip(&name);
            let has_v4 = has(Family::V4);
            if has_v4 && !self.model.contains(&ip) {
                let changes = live::ensure_ip(&mut self.model, &name);
                self.stats.changes += changes.len() as u64;
                touched.push(ip.clone());
                touched.extend(changes.into_iter().map(|c| c.object));
                if self.model.contains(&ip) {
                    self.live_ips.insert(name.clone());
                }
            } else if !has_v4 && self.live_ips.remove(&name) {
                tracing::info!(
                    interface = name,
                    "IP interface leaves the state model: no IPv4 address left"
                );
                touched.extend(live::remove_ip(&mut self.model, &mut self.created, &name));
            }
            let ip6 = ids::ip6(&name);
            let has_v6 = has(Family::V6);
            let port_up = up.contains(&index);
            if has_v6 && !self.model.contains(&ip6) {
                let changes = live::ensure_ip_of(&mut self.model, &name, Family::V6);
                self.stats.changes += changes.len() as u64;
                touched.push(ip6.clone());
                touched.extend(changes.into_iter().map(|c| c.object));
                if self.model.contains(&ip6) {
                    self.live_ip6s.insert(name);
                }
            } else if !has_v6 && port_up && self.live_ip6s.remove(&name) {
                tracing::info!(
                    interface = name,
                    "IPv6 interface leaves the state model: no IPv6 address left"
                );
                touched.extend(live::remove_ip6(&mut self.model, &name));
            }
        }
        if let Some(paths) = self.peer_paths {
            let holders = live::holders_of(&all, &self.names);
            touched.extend(live::sync_peer_paths(
                &mut self.model,
                &paths,
                |ip| holders.get(&ip).cloned(),
                &mut self.peer_ports,
            ));
        }
        self.reassess(touched);
        self.process_routes_changed().await;
    }

    /// Routes changed: the gateways are read again and the model follows.
    pub(super) async fn process_routes_changed(&mut self) {
        let wanted = match live::gateways_by_name(&self.netlink, &self.names).await {
            Ok(wanted) => wanted,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the routes: gateways not updated");
                return;
            }
        };
        let touched = live::sync_gateways(&mut self.model, &mut self.created, &wanted);
        self.reassess(touched);
    }

    /// The neighbour table as it is now (at start): each entry as if it
    /// had just changed.
    pub(super) async fn read_neighbours(&mut self) {
        let indexes: Vec<u32> = self.names.keys().copied().collect();
        match neighbours::dump(&self.netlink, &indexes).await {
            Ok(all) => {
                for neighbour in all {
                    self.process_neighbour(NeighbourEvent::Changed(neighbour));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the neighbour table: neighbours join as they change");
            }
        }
    }

    /// A neighbour changed or went: it joins or leaves the model, and a
    /// failed resolution makes it (and the gateway of that address, if
    /// there is one) unreachable until it resolves again.
    pub(super) fn process_neighbour(&mut self, event: NeighbourEvent) {
        let neighbour = match event {
            NeighbourEvent::Removed(neighbour) => {
                let touched =
                    live::remove_neighbour(&mut self.model, &mut self.created, neighbour.ip);
                self.reassess(touched);
                return;
            }
            NeighbourEvent::Changed(neighbour) => neighbour,
        };
        // Still resolving: nothing known yet.
        if matches!(neighbour.state, "INCOMPLETE" | "NONE") {
            return;
        }
        let Some(name) = self.names.get(&neighbour.ifindex).cloned() else {
            return;
        };
        match live::ensure_neighbour(&mut self.model, &mut self.created, &name, neighbour.ip) {
            Ok(touched) => self.reassess(touched),
            Err(()) => {
                self.stats.neighbours_left_out += 1;
                return;
            }
        }
        let failed = neighbour.state == "FAILED";
        for id in [ids::neighbour(neighbour.ip), ids::gateway(neighbour.ip)] {
            let ours = self.created.neighbours.contains_key(&id)
                || self.created.gateways.contains_key(&id);
            // Reachable again is news only for one that had failed (the
            // table cycles through its states all the time).
            if !ours || (!failed && self.model.actual_level(&id).unwrap_or(0) == 0) {
                continue;
            }
            let message = if failed {
                "neighbour-failed"
            } else {
                "neighbour-reachable"
            };
            self.apply(Info::new("netlink", message, id));
        }
    }

    /// Structural changes (objects added or removed, dependencies changed):
    /// `touched` are re-assessed for alarms and the webhook hears of it.
    pub(super) fn reassess(&mut self, touched: Vec<ObjectId>) {
        if touched.is_empty() {
            return;
        }
        let notices = self.alarms.update(&self.model, touched.iter(), now_ms());
        self.tell(notices);
    }

    /// Alarm notices go to the webhook (when configured) and the fabric
    /// (when it listens).
    fn tell(&mut self, notices: Vec<Notice>) {
        if self.alarms_out.receiver_count() > 0 {
            for notice in &notices {
                // No receiver left is fine: the fabric stopped.
                let _ = self.alarms_out.send(record_of(notice));
            }
        }
        if let Some(webhook) = &mut self.webhook {
            webhook.tell(notices, || self.alarms.raised_views(&self.model));
        }
    }

    /// Another member's alarm: kept while raised, forgotten when cleared.
    pub(super) fn process_remote_alarm(&mut self, alarm: AlarmRecord) {
        let key = (alarm.origin.clone(), alarm.object.clone());
        if !alarm.raised() {
            self.remote.remove(&key);
            return;
        }
        if self.remote.len() >= MAX_REMOTE && !self.remote.contains_key(&key) {
            self.remote_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.remote.insert(key, alarm);
    }

    /// The fabric's members changed: a member new to this switch gets its
    /// switch object, the ports its heartbeat lists join under it (before
    /// any fault names them; a port of a departed member joins in lost
    /// contact like its others), a port no longer listed leaves, and a
    /// member the fabric forgot (pruned `prune_after_ms` after its
    /// departure, or evicted from a full view) leaves with its ports and
    /// its alarms. Members whose list did not change (same shared list)
    /// cost one comparison.
    pub(super) fn process_members_changed(&mut self, now: FabricMembers) {
        let mut touched = Vec::new();
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|member| !now.contains_key(*member))
            .cloned()
            .collect();
        for member in gone {
            touched.extend(self.forget_member(&member));
        }
        for (member, ports) in &now {
            // A shared list: cloning it is a reference count.
            let before = self.members.get(member).cloned();
            let switch = ids::switch(member);
            if before.is_none() {
                let new = !self.model.contains(&switch);
                if !live::ensure_remote_switch(&mut self.model, &mut self.created, &switch) {
                    self.stats.unknown_objects += 1;
                    continue;
                }
                if new {
                    touched.push(switch);
                }
            }
            let Some(ports) = ports else {
                // Not said: what is known of its ports stays.
                continue;
            };
            let old: &[String] = match &before {
                Some(Some(old)) if std::sync::Arc::ptr_eq(old, ports) => continue,
                Some(Some(old)) => old,
                _ => &[],
            };
            for port in ports.iter().filter(|p| !old.contains(p)) {
                let id = ids::remote_port(member, port);
                if live::ensure_remote_port(&mut self.model, &mut self.created, &id) {
                    touched.push(id.clone());
                    if self.departed.contains_key(member) {
                        self.apply_one(Info::new(MEMBERSHIP, "member-departed", id));
                    }
                }
            }
            for port in old.iter().filter(|p| !ports.contains(p)) {
                let id = ids::remote_port(member, port);
                touched.extend(live::remove_remote_port(
                    &mut self.model,
                    &mut self.created,
                    &id,
                ));
            }
        }
        self.members = now;
        self.reassess(touched);
    }

    /// The fabric forgot `member`: its objects the fabric added leave the
    /// model, and its alarms this switch listed are dropped (its retained
    /// records, if it comes back, bring them again). Returns the objects
    /// to re-assess.
    fn forget_member(&mut self, member: &str) -> Vec<ObjectId> {
        tracing::info!(
            member,
            "fabric member forgotten: its switch and ports leave the state model"
        );
        self.departed.remove(member);
        self.remote.retain(|(origin, _), _| origin != member);
        live::forget_member(&mut self.model, &mut self.created, member)
    }

    /// Information from another module.
    pub(super) fn process_info(&mut self, info: Info) {
        self.apply(info);
    }

    /// `show states`.
    pub(super) fn process_states(&self, faulty: bool) -> StatesReport {
        let views: Vec<ObjectView> = self
            .model
            .views()
            .filter(|v| !faulty || v.fault_level > 0 || v.effective.iter().any(|s| s.lost_contact))
            .map(|mut v| {
                v.state_history.clear();
                v.info_history.clear();
                v
            })
            .collect();
        let mut counters = self.stats.clone();
        counters.alarms = self.alarms.stats();
        StatesReport {
            objects: views,
            counters,
        }
    }

    /// `show alarms`.
    pub(super) fn process_alarms(&self) -> AlarmsReport {
        let (alarms, cleared) = self.alarms.report(&self.model);
        AlarmsReport {
            level: self.alarms.level(),
            lost_contact: self.alarms.lost_contact(),
            alarms,
            cleared,
            counters: self.alarms.stats(),
            webhook: self.webhook.as_ref().map(|w| w.stats()),
            remote: self
                .remote
                .values()
                .map(|alarm| RemoteAlarm {
                    origin_departed_ms: self.departed.get(&alarm.origin).copied(),
                    alarm: alarm.clone(),
                })
                .collect(),
            remote_dropped: self.remote_dropped.load(Ordering::Relaxed),
        }
    }

    /// `show state OBJECT`; an unknown object is refused with a hint.
    pub(super) fn process_state(&self, object: String) -> Result<StateReport, String> {
        let id = ObjectId(object);
        let Some(view) = self.model.view(&id) else {
            return Err(format!(
                "no object {} (see `show states` for the ids)",
                id.0
            ));
        };
        Ok(StateReport {
            depends_on: self.chain(&id, true),
            dependents: self.chain(&id, false),
            object: view,
        })
    }

    /// Administrative state and carrier of a port in the model, as
    /// information from two sources.
    pub(super) fn link_state(&mut self, link: &Link) {
        let port = ids::port(&link.name);
        if !self.model.contains(&port) {
            return;
        }
        // Administrative state and carrier are separate sources of the same
        // kind of information; both map to the same "down" state.
        let admin = if link.up { "link-up" } else { "link-down" };
        self.apply(Info::new("netlink", admin, port.clone()));
        let carrier = if !link.up || link.carrier {
            "carrier-ok"
        } else {
            "carrier-lost"
        };
        self.apply(Info::new("netlink-carrier", carrier, port));
    }

    pub(super) fn apply(&mut self, info: Info) {
        let object = info.object.clone();
        if info.source == "fabric" {
            live::ensure_remote_port(&mut self.model, &mut self.created, &object);
        }
        if info.source == MEMBERSHIP {
            self.process_membership(info);
            return;
        }
        self.apply_one(info);
    }

    /// A fabric member present or departed: said of its switch object and
    /// of every port of it the model holds (a departed switch's ports are
    /// not heard from either; what they said last stays, as their own
    /// source's state). The member's switch object joins the model on
    /// first word of it.
    fn process_membership(&mut self, info: Info) {
        if !live::ensure_remote_switch(&mut self.model, &mut self.created, &info.object) {
            self.stats.unknown_objects += 1;
            return;
        }
        let member = info.object.as_str().strip_prefix("switch:").unwrap_or("");
        let ports: Vec<ObjectId> = self
            .model
            .dependents_of(&info.object)
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| ids::parse_remote_port(id).is_some_and(|(m, _)| m == member))
            .collect();
        // Departed: the switch first, so its ports' lost contact is
        // explained by it at once (suppressed under its alarm); back: the
        // ports first, so none is left its own root cause for a moment.
        // Either way one alarm, not one per port.
        let departed = self
            .rules
            .lookup(&info.source, &info.message)
            .flatten()
            .is_some();
        // Its alarms listed here are its last word from now on.
        if departed {
            self.departed
                .entry(member.to_string())
                .or_insert_with(now_ms);
        } else {
            self.departed.remove(member);
        }
        if departed {
            self.apply_one(info.clone());
        }
        for port in ports {
            self.apply_one(Info::new(MEMBERSHIP, &info.message, port));
        }
        if !departed {
            self.apply_one(info);
        }
    }

    fn apply_one(&mut self, info: Info) {
        let object = info.object.clone();
        let now = now_ms();
        match self.model.apply(info, &self.rules, now) {
            Ok(applied) => {
                self.stats.infos += 1;
                if !applied.known {
                    self.stats.unknown_infos += 1;
                }
                self.stats.changes += applied.changes.len() as u64;
                for change in &applied.changes {
                    tracing::debug!(object = change.object.0, ?change.after, "state change");
                }
                let notices = self.alarms.update(
                    &self.model,
                    applied.changes.iter().map(|c| &c.object).chain([&object]),
                    now,
                );
                for notice in &notices {
                    tracing::debug!(?notice, "alarm");
                }
                self.tell(notices);
            }
            Err(err) => {
                self.stats.unknown_objects += 1;
                tracing::debug!(object = object.0, error = %err, "information about an unknown object");
            }
        }
    }

    /// The dependency chain below (`down`) or above an object, breadth-first.
    fn chain(&self, id: &ObjectId, down: bool) -> Vec<ChainLink> {
        let mut out = Vec::new();
        let mut queue = VecDeque::from([(id.clone(), 0usize)]);
        let mut seen = BTreeSet::from([id.clone()]);
        while let Some((current, depth)) = queue.pop_front() {
            let next = if down {
                self.model.dependencies_of(&current)
            } else {
                self.model.dependents_of(&current)
            };
            for (other, kind) in next {
                if seen.insert(other.clone()) && out.len() < 1000 {
                    let fault_level = self.model.fault_level(&other).unwrap_or(0);
                    out.push(ChainLink {
                        from: current.clone(),
                        to: other.clone(),
                        kind,
                        depth: depth + 1,
                        fault_level,
                    });
                    queue.push_back((other, depth + 1));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::inference::{Layer, Model, RuleTable};

    /// A task over a model holding this switch only.
    fn task() -> Task {
        let (connection, netlink, _) = rtnetlink::new_connection().expect("netlink socket");
        tokio::spawn(connection);
        let mut model = Model::new();
        model
            .add_object(ids::switch("a"), Layer::Physical, "switch")
            .unwrap();
        Task::new(model, RuleTable::builtin(), BTreeMap::new(), "a", netlink)
    }

    fn members(list: &[(&str, Option<&[&str]>)]) -> FabricMembers {
        list.iter()
            .map(|(member, ports)| {
                (
                    member.to_string(),
                    ports.map(|p| p.iter().map(|s| s.to_string()).collect::<Arc<[String]>>()),
                )
            })
            .collect()
    }

    fn alarm(origin: &str, object: &str) -> AlarmRecord {
        AlarmRecord {
            origin: origin.into(),
            object: ObjectId::from(object),
            state: "down".into(),
            level: 3,
            root_causes: vec![ObjectId::from(object)],
            suppressed: vec![],
            raised_ms: 1,
            cleared_ms: 0,
        }
    }

    #[tokio::test]
    async fn listed_ports_join_follow_their_list_and_a_forgotten_member_leaves_with_its_alarms() {
        let mut task = task();
        task.process_members_changed(members(&[("sw2", Some(&["p1", "p2"])), ("sw3", None)]));
        for id in ["switch:sw2", "port:sw2/p1", "port:sw2/p2", "switch:sw3"] {
            assert!(task.model.contains(&ObjectId::from(id)), "{id}");
        }
        // p2 no longer listed, p3 new; sw3 says nothing of its ports.
        task.process_members_changed(members(&[("sw2", Some(&["p1", "p3"])), ("sw3", None)]));
        assert!(!task.model.contains(&ids::remote_port("sw2", "p2")));
        assert!(task.model.contains(&ids::remote_port("sw2", "p3")));
        // A port first heard of in a fault stays though no list names it.
        task.apply(Info::new(
            "fabric",
            "port-down",
            ids::remote_port("sw3", "x"),
        ));
        task.process_members_changed(members(&[("sw2", Some(&["p1", "p3"])), ("sw3", Some(&[]))]));
        assert_eq!(
            task.model.fault_level(&ids::remote_port("sw3", "x")),
            Some(3)
        );

        // sw2 departs: its ports go lost contact, and one listed now too.
        task.process_remote_alarm(alarm("sw2", "port:p9"));
        task.process_remote_alarm(alarm("sw3", "port:p9"));
        task.apply(Info::new(MEMBERSHIP, "member-departed", ids::switch("sw2")));
        task.process_members_changed(members(&[
            ("sw2", Some(&["p1", "p3", "p4"])),
            ("sw3", Some(&[])),
        ]));
        let lost = |task: &Task, id: ObjectId| {
            task.model
                .effective(&id)
                .is_some_and(|s| s.iter().any(|s| s.lost_contact))
        };
        assert!(lost(&task, ids::remote_port("sw2", "p1")));
        assert!(lost(&task, ids::remote_port("sw2", "p4")));
        let report = task.process_alarms();
        let departed: Vec<(&str, Option<u64>)> = report
            .remote
            .iter()
            .map(|r| (r.alarm.origin.as_str(), r.origin_departed_ms))
            .collect();
        assert!(
            matches!(departed[..], [("sw2", Some(_)), ("sw3", None)]),
            "{departed:?}"
        );
        assert!(
            report.alarms.iter().any(|a| a.object == ids::switch("sw2")),
            "the lost-contact alarm on sw2"
        );

        // Forgotten: its objects, its alarms and the alarm on it go.
        task.process_members_changed(members(&[("sw3", Some(&[]))]));
        for id in ["switch:sw2", "port:sw2/p1", "port:sw2/p3", "port:sw2/p4"] {
            assert!(!task.model.contains(&ObjectId::from(id)), "{id}");
        }
        let report = task.process_alarms();
        assert_eq!(report.remote.len(), 1);
        assert_eq!(report.remote[0].alarm.origin, "sw3");
        assert!(report.alarms.iter().all(|a| a.object != ids::switch("sw2")));
        assert!(task.departed.is_empty());
        assert!(task.model.contains(&ids::switch("sw3")));
    }

    #[tokio::test]
    async fn back_after_departing_its_alarms_are_its_word_again() {
        let mut task = task();
        task.process_remote_alarm(alarm("sw2", "port:p9"));
        task.apply(Info::new(MEMBERSHIP, "member-departed", ids::switch("sw2")));
        assert!(task.process_alarms().remote[0].origin_departed_ms.is_some());
        task.apply(Info::new(MEMBERSHIP, "member-up", ids::switch("sw2")));
        assert_eq!(task.process_alarms().remote[0].origin_departed_ms, None);
    }
}
