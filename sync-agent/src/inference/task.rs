//! The inference task: owns the [`Model`] and the [`RuleTable`], builds the
//! model from the live system (interfaces, bridges and bonds, IPv4
//! interfaces, gateways) plus the objects declared in the config, and turns
//! every incoming event into [`Info`] for the model.

use crate::clock::now_ms;
use std::collections::BTreeMap;

use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Dependency, Info, Layer, Model, ObjectId, ObjectView, RuleTable};
use crate::{
    control::protocol::Response,
    inference::config::InferenceConfig,
    southbound::{
        addresses,
        links::{self, Link, LinkEvent},
        routes,
    },
};

/// What the inference task reacts to.
#[derive(Debug)]
pub enum InferenceEvent {
    /// An interface changed or went away.
    Link(LinkEvent),
    /// Information from elsewhere in the agent (peer sync, fabric, health).
    Info(Info),
    /// An operator query.
    Query(StateQuery, oneshot::Sender<Response>),
}

/// Operator queries.
#[derive(Clone, Debug)]
pub enum StateQuery {
    /// Every object (or only faulty ones).
    All {
        /// Only objects with a fault level above 0 or in lost contact.
        faulty: bool,
    },
    /// One object with its dependency chains and histories.
    One(String),
}

/// Handle to the inference task.
#[derive(Clone)]
pub struct Inference {
    events: mpsc::Sender<InferenceEvent>,
}

/// Counters of the inference task.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InferenceStats {
    /// Information applied.
    pub infos: u64,
    /// Information no rule knows.
    pub unknown_infos: u64,
    /// Information about objects not in the model.
    pub unknown_objects: u64,
    /// Effective state changes.
    pub changes: u64,
}

/// Object ids, in one place.
pub mod ids {
    use super::ObjectId;
    /// The switch itself.
    pub fn switch(name: &str) -> ObjectId {
        ObjectId(format!("switch:{name}"))
    }
    /// A physical port.
    pub fn port(ifname: &str) -> ObjectId {
        ObjectId(format!("port:{ifname}"))
    }
    /// The LAN (L2) port a physical port realises.
    pub fn lan(ifname: &str) -> ObjectId {
        ObjectId(format!("lan:{ifname}"))
    }
    /// A bridge or bond (L2).
    pub fn aggregate(kind: &str, ifname: &str) -> ObjectId {
        ObjectId(format!("{kind}:{ifname}"))
    }
    /// An IPv4 interface (L3).
    pub fn ip(ifname: &str) -> ObjectId {
        ObjectId(format!("ip:{ifname}"))
    }
    /// A gateway (L3).
    pub fn gateway(ip: std::net::Ipv4Addr) -> ObjectId {
        ObjectId(format!("gw:{ip}"))
    }
}

impl Inference {
    /// Builds the model from the live system and starts the task.
    pub async fn spawn(
        config: InferenceConfig,
        switch_name: &str,
        netlink: Handle,
    ) -> anyhow::Result<Self> {
        let rules = RuleTable::with_rules(config.rules.clone());
        let mut model = Model::with_history_limit(config.history, config.history);
        let mut names = BTreeMap::new();
        build_live(&mut model, &mut names, switch_name, &netlink).await?;
        for object in &config.objects {
            let id = ObjectId(object.id.clone());
            if let Err(err) = model.add_object(id.clone(), object.layer, &object.kind) {
                anyhow::bail!("inference.objects: {err}");
            }
        }
        for object in &config.objects {
            let id = ObjectId(object.id.clone());
            for dependency in &object.depends_on {
                model
                    .add_dependency(&id, &ObjectId(dependency.id.clone()), dependency.kind)
                    .map_err(|err| anyhow::anyhow!("inference.objects ({}): {err}", object.id))?;
            }
        }
        tracing::info!(objects = model.len(), "state model built");
        let (events, mut rx) = mpsc::channel(1024);
        let mut task = Task {
            model,
            rules,
            names,
            stats: InferenceStats::default(),
            switch: switch_name.to_string(),
        };
        // The state the interfaces are in now is the first information.
        for link in links::all(&netlink).await? {
            task.on_link_state(&link);
        }
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                task.on_event(event);
            }
        });
        Ok(Self { events })
    }

    /// Hands an interface change to the task.
    pub async fn link(&self, event: LinkEvent) {
        let _ = self.events.send(InferenceEvent::Link(event)).await;
    }

    /// Hands information to the task.
    pub async fn info(&self, info: Info) {
        let _ = self.events.send(InferenceEvent::Info(info)).await;
    }

    /// Answers a query.
    pub async fn query(&self, query: StateQuery) -> Response {
        let (tx, rx) = oneshot::channel();
        if self
            .events
            .send(InferenceEvent::Query(query, tx))
            .await
            .is_err()
        {
            return Response::error("the inference task has stopped");
        }
        rx.await
            .unwrap_or_else(|_| Response::error("the inference task has stopped"))
    }
}

async fn build_live(
    model: &mut Model,
    names: &mut BTreeMap<u32, String>,
    switch: &str,
    netlink: &Handle,
) -> anyhow::Result<()> {
    let switch_id = ids::switch(switch);
    model.add_object(switch_id.clone(), Layer::Physical, "switch")?;
    let all = links::all(netlink).await?;
    for link in &all {
        names.insert(link.index, link.name.clone());
    }
    let controllers: BTreeMap<u32, &str> = all
        .iter()
        .filter_map(|l| l.controller.map(|c| (c, l.name.as_str())))
        .collect();
    for link in all.iter().filter(|l| l.name != "lo") {
        let is_aggregate = controllers.contains_key(&link.index);
        if is_aggregate {
            // A bridge or bond: an L2 object of its own (no physical port).
            let kind = if std::path::Path::new("/sys/class/net")
                .join(&link.name)
                .join("bonding")
                .exists()
            {
                "bond"
            } else {
                "bridge"
            };
            model.add_object(ids::aggregate(kind, &link.name), Layer::L2, kind)?;
        } else {
            let port = ids::port(&link.name);
            model.add_object(port.clone(), Layer::Physical, "port")?;
            model.add_dependency(&port, &switch_id, Dependency::BelongsTo)?;
            let lan = ids::lan(&link.name);
            model.add_object(lan.clone(), Layer::L2, "lan-port")?;
            model.add_dependency(&lan, &port, Dependency::MapsTo)?;
        }
    }
    // LAN ports belong to their bridge or bond.
    for link in all.iter().filter(|l| l.controller.is_some()) {
        let Some(controller) = link
            .controller
            .and_then(|c| all.iter().find(|l| l.index == c))
        else {
            continue;
        };
        let aggregate = [
            ids::aggregate("bridge", &controller.name),
            ids::aggregate("bond", &controller.name),
        ]
        .into_iter()
        .find(|id| model.contains(id));
        if let Some(aggregate) = aggregate {
            model.add_dependency(&ids::lan(&link.name), &aggregate, Dependency::BelongsTo)?;
        }
    }
    for link in all.iter().filter(|l| l.name != "lo") {
        let has_v4 = addresses::list(netlink, link.index)
            .await?
            .iter()
            .any(|a| a.ip.is_ipv4());
        if !has_v4 {
            continue;
        }
        let ip = ids::ip(&link.name);
        model.add_object(ip.clone(), Layer::L3, "ip-interface")?;
        let below = if model.contains(&ids::lan(&link.name)) {
            ids::lan(&link.name)
        } else if model.contains(&ids::aggregate("bridge", &link.name)) {
            ids::aggregate("bridge", &link.name)
        } else {
            ids::aggregate("bond", &link.name)
        };
        model.add_dependency(&ip, &below, Dependency::MapsTo)?;
    }
    for (gateway, oif) in routes::gateways(netlink).await.unwrap_or_default() {
        let Some(name) = names.get(&oif) else {
            continue;
        };
        let ip = ids::ip(name);
        if !model.contains(&ip) {
            continue;
        }
        let gw = ids::gateway(gateway);
        if !model.contains(&gw) {
            model.add_object(gw.clone(), Layer::L3, "gateway")?;
        }
        model.add_dependency(&gw, &ip, Dependency::BelongsTo)?;
    }
    Ok(())
}

struct Task {
    model: Model,
    rules: RuleTable,
    /// Interface names by index (for removals, which may come without a name).
    names: BTreeMap<u32, String>,
    stats: InferenceStats,
    switch: String,
}

impl Task {
    fn on_event(&mut self, event: InferenceEvent) {
        match event {
            InferenceEvent::Link(LinkEvent::Changed(link)) => {
                self.names.insert(link.index, link.name.clone());
                self.ensure_port(&link.name);
                self.on_link_state(&link);
            }
            InferenceEvent::Link(LinkEvent::Removed { index, name }) => {
                let Some(name) = name.or_else(|| self.names.get(&index).cloned()) else {
                    return;
                };
                self.apply(Info {
                    source: "netlink".into(),
                    message: "link-removed".into(),
                    object: ids::port(&name),
                });
            }
            InferenceEvent::Info(info) => self.apply(info),
            InferenceEvent::Query(query, reply) => {
                let _ = reply.send(self.answer(query));
            }
        }
    }

    /// A port of another fabric member (`port:<member>/<port>`), first heard
    /// of in a fault, joins the model under that member's switch object.
    fn ensure_remote_port(&mut self, object: &ObjectId) {
        let Some((member, _)) = object
            .0
            .strip_prefix("port:")
            .and_then(|r| r.split_once('/'))
        else {
            return;
        };
        if self.model.contains(object) || self.model.len() >= 1_000_000 {
            return;
        }
        let switch = ids::switch(member);
        let added = (if self.model.contains(&switch) {
            Ok(())
        } else {
            self.model
                .add_object(switch.clone(), Layer::Physical, "switch")
        })
        .and_then(|()| {
            self.model
                .add_object(object.clone(), Layer::Physical, "remote-port")
        })
        .and_then(|()| {
            self.model
                .add_dependency(object, &switch, Dependency::BelongsTo)
        });
        if let Err(err) = added {
            tracing::warn!(object = object.0, error = %err, "cannot add the remote port to the state model");
        }
    }

    /// A port that appeared after start joins the model.
    fn ensure_port(&mut self, name: &str) {
        let port = ids::port(name);
        if name == "lo"
            || self.model.contains(&port)
            || self.model.contains(&ids::aggregate("bridge", name))
        {
            return;
        }
        let added = self
            .model
            .add_object(port.clone(), Layer::Physical, "port")
            .and_then(|()| {
                self.model
                    .add_dependency(&port, &ids::switch(&self.switch), Dependency::BelongsTo)
            })
            .and_then(|()| self.model.add_object(ids::lan(name), Layer::L2, "lan-port"))
            .and_then(|()| {
                self.model
                    .add_dependency(&ids::lan(name), &port, Dependency::MapsTo)
            });
        if let Err(err) = added {
            tracing::warn!(interface = name, error = %err, "cannot add the new interface to the state model");
        }
    }

    fn on_link_state(&mut self, link: &Link) {
        let port = ids::port(&link.name);
        if !self.model.contains(&port) {
            return;
        }
        // Administrative state and carrier are separate sources of the same
        // kind of information; both map to the same "down" state.
        let admin = if link.up { "link-up" } else { "link-down" };
        self.apply(Info {
            source: "netlink".into(),
            message: admin.into(),
            object: port.clone(),
        });
        let carrier = if !link.up || link.carrier {
            "carrier-ok"
        } else {
            "carrier-lost"
        };
        self.apply(Info {
            source: "netlink-carrier".into(),
            message: carrier.into(),
            object: port,
        });
    }

    fn apply(&mut self, info: Info) {
        let object = info.object.clone();
        if info.source == "fabric" {
            self.ensure_remote_port(&object);
        }
        match self.model.apply(info, &self.rules, now_ms()) {
            Ok(applied) => {
                self.stats.infos += 1;
                if !applied.known {
                    self.stats.unknown_infos += 1;
                }
                self.stats.changes += applied.changes.len() as u64;
                for change in &applied.changes {
                    tracing::debug!(object = change.object.0, ?change.after, "state change");
                }
            }
            Err(err) => {
                self.stats.unknown_objects += 1;
                tracing::debug!(object = object.0, error = %err, "information about an unknown object");
            }
        }
    }

    fn answer(&self, query: StateQuery) -> Response {
        match query {
            StateQuery::All { faulty } => {
                let views: Vec<ObjectView> = self
                    .model
                    .views()
                    .filter(|v| {
                        !faulty || v.fault_level > 0 || v.effective.iter().any(|s| s.lost_contact)
                    })
                    .map(|mut v| {
                        v.state_history.clear();
                        v.info_history.clear();
                        v
                    })
                    .collect();
                Response::ok(&StatesReport {
                    objects: views,
                    counters: self.stats.clone(),
                })
            }
            StateQuery::One(id) => {
                let id = ObjectId(id);
                let Some(view) = self.model.view(&id) else {
                    return Response::error(format!(
                        "no object {} (see `show states` for the ids)",
                        id.0
                    ));
                };
                Response::ok(&StateReport {
                    depends_on: self.chain(&id, true),
                    dependents: self.chain(&id, false),
                    object: view,
                })
            }
        }
    }

    /// The dependency chain below (`down`) or above an object, breadth-first.
    fn chain(&self, id: &ObjectId, down: bool) -> Vec<ChainLink> {
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([(id.clone(), 0usize)]);
        let mut seen = std::collections::BTreeSet::from([id.clone()]);
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

/// `show states`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatesReport {
    /// The objects.
    pub objects: Vec<ObjectView>,
    /// Counters.
    pub counters: InferenceStats,
}

/// `show state OBJECT`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateReport {
    /// The object with its histories.
    pub object: ObjectView,
    /// What it depends on, transitively.
    pub depends_on: Vec<ChainLink>,
    /// What depends on it, transitively.
    pub dependents: Vec<ChainLink>,
}

/// One edge of a dependency chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChainLink {
    /// Nearer object.
    pub from: ObjectId,
    /// Farther object.
    pub to: ObjectId,
    /// belongs-to or maps-to.
    pub kind: Dependency,
    /// Distance from the queried object.
    pub depth: usize,
    /// The farther object's fault level.
    pub fault_level: u8,
}
