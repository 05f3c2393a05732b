//! The inference task: the one owner of the [`Model`] and the
//! [`RuleTable`].
//!
//! ```text
//!  netlink watcher ── broadcast<LinkEvent> ──┐
//!  fabric, ...     ── mpsc<Info> ────────────┼──> Task::run (select) ──> Model
//!  address watcher ── mpsc<()> ─────────────┤
//!  route watcher   ── mpsc<()> ─────────────┤
//!  neighbour watch ── mpsc<NeighbourEvent> ─┤
//!  fabric (heard)  ── mpsc<AlarmRecord> ────┤
//!  fabric (view)   ── watch<FabricMembers> ─┤
//!  InferenceHandle ── mpsc<Query> ───────────┘
//!  Task ── broadcast<AlarmRecord> (own alarms) ──> fabric
//! ```
//!
//! It has no child tasks; the model is built (over netlink) before the loop
//! starts, and netlink is asked again only to catch up after lagging behind
//! the link events.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicU64},
};

use rtnetlink::Handle;
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc, watch,
};

use super::{
    Model, ObjectId, Redundancy, RuleTable,
    alarms::Alarms,
    config::{InferenceConfig, PeerPaths},
    events::{Event, Query},
    live,
    report::InferenceStats,
    webhook::Webhook,
};
use crate::{
    bus::{AlarmRecord, FabricMembers, Info, LinkEvent, ids},
    southbound::{links, neighbours::NeighbourEvent},
};

/// The inference state; only the handlers in `events.rs` change it.
pub(super) struct Task {
    pub(super) model: Model,
    pub(super) rules: RuleTable,
    /// Interface names by index (for removals, which may come without a name).
    pub(super) names: BTreeMap<u32, String>,
    pub(super) stats: InferenceStats,
    /// This switch's name (its object is `switch:<name>`).
    pub(super) switch: String,
    /// For re-reading the interfaces after lagging behind the link events.
    pub(super) netlink: Handle,
    /// Times the task lagged behind the link events (logged once at warn).
    pub(super) links_lagged: u64,
    /// Root-cause alarms over the model.
    pub(super) alarms: Alarms,
    /// Where alarms are posted, when configured.
    pub(super) webhook: Option<Webhook>,
    /// The gateways and neighbours the live feeds added.
    pub(super) created: live::Created,
    /// Interfaces whose IP interface was read from the system (not
    /// declared): it leaves the model with the interface's last IPv4
    /// address.
    pub(super) live_ips: std::collections::BTreeSet<String>,
    /// The same for IPv6 interfaces (`ip6:IF`).
    pub(super) live_ip6s: std::collections::BTreeSet<String>,
    /// This switch's addresses on its paths to the MLAG peer, if it has one.
    pub(super) peer_paths: Option<PeerPaths>,
    /// The ports those paths are modelled on now.
    pub(super) peer_ports: live::PeerPathPorts,
    /// This switch's alarms as they change, for the fabric.
    pub(super) alarms_out: broadcast::Sender<AlarmRecord>,
    /// Other members' alarms, by (origin, object): raised ones only.
    pub(super) remote: BTreeMap<(String, ObjectId), AlarmRecord>,
    /// Other members' alarms dropped (queue full, or over [`MAX_REMOTE`]).
    pub(super) remote_dropped: Arc<AtomicU64>,
    /// The fabric's members as last applied to the model.
    pub(super) members: FabricMembers,
    /// Members departed (or silent), with when this switch heard so (ms):
    /// their alarms are listed as their last word, unconfirmed.
    pub(super) departed: BTreeMap<String, u64>,
}

/// Most other members' alarms kept for `show alarms`.
pub(super) const MAX_REMOTE: usize = 16_384;

/// The kernel's changes the task follows besides links; each is optional
/// (without it the model keeps what it read at start).
#[derive(Default)]
pub(super) struct Watches {
    /// An address added or removed anywhere.
    pub(super) addresses: Option<mpsc::Receiver<()>>,
    /// An IPv4 route added or removed.
    pub(super) routes: Option<mpsc::Receiver<()>>,
    /// The IPv4 neighbour table's changes.
    pub(super) neighbours: Option<mpsc::Receiver<NeighbourEvent>>,
    /// Other fabric members' alarms.
    pub(super) remote_alarms: Option<mpsc::Receiver<AlarmRecord>>,
    /// The fabric's members and their ports.
    pub(super) members: Option<watch::Receiver<FabricMembers>>,
}

impl Task {
    /// Builds the model from the live system and the config's objects, and
    /// applies the interfaces' current state as the first information.
    pub(super) async fn build(
        config: InferenceConfig,
        switch_name: &str,
        netlink: Handle,
    ) -> anyhow::Result<Self> {
        let rules = RuleTable::with_rules(config.rules.clone());
        let mut model = Model::with_history_limit(config.history, config.history);
        let mut names = BTreeMap::new();
        live::build_live(&mut model, &mut names, switch_name, &netlink).await?;
        let live_ips = names
            .values()
            .filter(|name| model.contains(&ids::ip(name)))
            .cloned()
            .collect();
        let live_ip6s = names
            .values()
            .filter(|name| model.contains(&ids::ip6(name)))
            .cloned()
            .collect();
        for object in &config.objects {
            let id = ObjectId(object.id.clone());
            if let Err(err) = model.add_object(id.clone(), object.layer, &object.kind) {
                anyhow::bail!("inference.objects: {err}");
            }
        }
        // The pair's and the links' objects before the declared
        // dependencies, so declared objects can depend on them (a declared
        // object of the same id wins: the built-in one is skipped, warned).
        let twins = live::add_mlag(&mut model, &config.mlag_ports);
        live::add_vlans(&mut model, &config.vlans);
        live::add_links(&mut model, &config.links);
        let mut peer_ports = live::PeerPathPorts::default();
        if let Some(paths) = &config.peer_paths {
            let holders = live::address_holders(&netlink, &names).await?;
            live::sync_peer_paths(
                &mut model,
                paths,
                |ip| holders.get(&ip).cloned(),
                &mut peer_ports,
            );
        }
        for object in &config.objects {
            let id = ObjectId(object.id.clone());
            let grouped = object.redundancy != Redundancy::All;
            if grouped {
                model
                    .set_redundancy(&id, object.redundancy, object.degraded_level)
                    .map_err(|err| anyhow::anyhow!("inference.objects ({}): {err}", object.id))?;
            }
            for dependency in &object.depends_on {
                let on = ObjectId(dependency.id.clone());
                let added = if grouped && !dependency.required {
                    model
                        .add_group_dependency(&id, &on, dependency.kind)
                        .map(drop)
                } else {
                    model.add_dependency(&id, &on, dependency.kind)
                };
                added.map_err(|err| anyhow::anyhow!("inference.objects ({}): {err}", object.id))?;
            }
        }
        tracing::info!(objects = model.len(), "state model built");
        let mut task = Self::new(model, rules, names, switch_name, netlink);
        task.live_ips = live_ips;
        task.live_ip6s = live_ip6s;
        task.peer_paths = config.peer_paths;
        task.peer_ports = peer_ports;
        task.alarms = Alarms::new(config.alarms.clone());
        if let Some(webhook) = &config.alarms.webhook {
            task.webhook = Some(Webhook::spawn(webhook, switch_name)?);
        }
        // The state the interfaces are in now is the first information.
        for link in links::all(&task.netlink).await? {
            task.link_state(&link);
        }
        task.process_routes_changed().await;
        task.read_neighbours().await;
        // Nothing is known of the peer and its twin ports until peer sync
        // tells.
        if !twins.is_empty() || task.peer_paths.is_some() {
            task.apply(Info::new("peer", "liveness-lost", ids::peer_switch()));
        }
        for twin in twins {
            task.apply(Info::new("peer", "twin-unknown", twin));
        }
        Ok(task)
    }

    /// A task over a model already built (`names`: interface names by index).
    pub(super) fn new(
        model: Model,
        rules: RuleTable,
        names: BTreeMap<u32, String>,
        switch: &str,
        netlink: Handle,
    ) -> Self {
        Self {
            model,
            rules,
            names,
            stats: InferenceStats::default(),
            switch: switch.to_string(),
            netlink,
            links_lagged: 0,
            alarms: Alarms::new(Default::default()),
            webhook: None,
            created: live::Created::default(),
            live_ips: Default::default(),
            live_ip6s: Default::default(),
            peer_paths: None,
            peer_ports: Default::default(),
            alarms_out: broadcast::channel(super::ALARMS_OUT_DEPTH).0,
            remote: BTreeMap::new(),
            remote_dropped: Default::default(),
            members: FabricMembers::new(),
            departed: BTreeMap::new(),
        }
    }

    /// The event loop: runs until every input has closed.
    pub(super) async fn run(
        mut self,
        mut links: broadcast::Receiver<LinkEvent>,
        mut infos: mpsc::Receiver<Info>,
        mut queries: mpsc::Receiver<Query>,
        mut watches: Watches,
    ) {
        let mut links_open = true;
        loop {
            let event = tokio::select! {
                received = links.recv(), if links_open => match received {
                    Ok(event) => Event::Link(event),
                    Err(RecvError::Lagged(missed)) => Event::LinksLagged(missed),
                    Err(RecvError::Closed) => {
                        links_open = false;
                        continue;
                    }
                },
                Some(info) = infos.recv() => Event::Info(info),
                Some(query) = queries.recv() => Event::Query(query),
                changed = next(&mut watches.addresses), if watches.addresses.is_some() => match changed {
                    Some(()) => {
                        // One re-read answers a whole burst.
                        drain(&mut watches.addresses);
                        Event::AddressesChanged
                    }
                    None => {
                        watches.addresses = None;
                        continue;
                    }
                },
                changed = next(&mut watches.routes), if watches.routes.is_some() => match changed {
                    Some(()) => {
                        drain(&mut watches.routes);
                        Event::RoutesChanged
                    }
                    None => {
                        watches.routes = None;
                        continue;
                    }
                },
                heard = next(&mut watches.remote_alarms), if watches.remote_alarms.is_some() => match heard {
                    Some(alarm) => Event::RemoteAlarm(alarm),
                    None => {
                        watches.remote_alarms = None;
                        continue;
                    }
                },
                changed = members_changed(&mut watches.members), if watches.members.is_some() => match changed {
                    Some(members) => Event::MembersChanged(members),
                    None => {
                        // The fabric stopped: what it said stays.
                        watches.members = None;
                        continue;
                    }
                },
                changed = next(&mut watches.neighbours), if watches.neighbours.is_some() => match changed {
                    Some(event) => Event::Neighbour(event),
                    None => {
                        watches.neighbours = None;
                        continue;
                    }
                },
                else => break,
            };
            self.process(event).await;
        }
        tracing::debug!("inference task stopped: every input closed");
    }
}

/// The next message of a watch, or never without one.
async fn next<T>(watch: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match watch {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The fabric's members once they changed (the latest view: changes in
/// between are folded into it); None when the fabric is gone, or never
/// without a watch.
async fn members_changed(
    watch: &mut Option<watch::Receiver<FabricMembers>>,
) -> Option<FabricMembers> {
    match watch {
        Some(rx) => match rx.changed().await {
            // A clone of the map of shared lists: one pointer per member.
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// Drops what a change watch queued (a burst is answered by one re-read).
fn drain(watch: &mut Option<mpsc::Receiver<()>>) {
    if let Some(rx) = watch {
        while rx.try_recv().is_ok() {}
    }
}
