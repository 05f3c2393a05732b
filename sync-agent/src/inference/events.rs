//! Every input of the inference task and its handler: interface changes,
//! information from other modules, and the operator's queries.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::atomic::Ordering,
};

use tokio::sync::oneshot;

use super::{
    AlarmRecord, ObjectId, ObjectView,
    alarms::Notice,
    live,
    report::{AlarmsReport, ChainLink, StateReport, StatesReport},
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
    /// loses it, with the gateways and neighbours under it. Gateways are
    /// read again (a new IP interface may be the way to one).
    pub(super) async fn process_addresses_changed(&mut self) {
        let names: Vec<(u32, String)> = self
            .names
            .iter()
            .map(|(index, name)| (*index, name.clone()))
            .collect();
        let mut touched = Vec::new();
        for (index, name) in names {
            let has_v4 = match addresses::list(&self.netlink, index).await {
                Ok(list) => list.iter().any(|a| a.ip.is_ipv4()),
                Err(err) => {
                    tracing::debug!(interface = name, error = %err, "cannot read the interface's addresses");
                    continue;
                }
            };
            let ip = ids::ip(&name);
            if has_v4 && !self.model.contains(&ip) {
                let changes = live::ensure_ip(&mut self.model, &name);
                self.stats.changes += changes.len() as u64;
                touched.push(ip.clone());
                touched.extend(changes.into_iter().map(|c| c.object));
                if self.model.contains(&ip) {
                    self.live_ips.insert(name);
                }
            } else if !has_v4 && self.live_ips.remove(&name) {
                tracing::info!(
                    interface = name,
                    "IP interface leaves the state model: no IPv4 address left"
                );
                touched.extend(live::remove_ip(&mut self.model, &mut self.created, &name));
            }
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
            remote: self.remote.values().cloned().collect(),
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
            live::ensure_remote_port(&mut self.model, &object);
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
        if !live::ensure_remote_switch(&mut self.model, &info.object) {
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
