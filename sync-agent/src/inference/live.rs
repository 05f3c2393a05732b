//! The model of the live system (SPEC 5.1): this switch, its interfaces
//! (physical port and LAN port, or a bridge or bond as an L2 object of its
//! own), its IPv4 and IPv6 interfaces and gateways, read over netlink; and
//! the objects that join later: interfaces and addresses that appear after
//! start, other fabric members and their ports (from the fabric topology,
//! or first heard of in a fault). With an MLAG peer, each MLAG id gets its
//! MLAG interface, redundant over the local member port and its twin on
//! the peer, and the peer switch is redundant over its paths (the peer
//! link and the MC-LAG backup path). Ids come from
//! [`crate::bus::ids`], so producers and this module agree on them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use rtnetlink::Handle;

use super::{
    DEFAULT_DEGRADED_LEVEL, Dependency, Layer, Model, ObjectId, Redundancy,
    config::{DeclaredLink, PeerPaths, VlanOnMlag},
};
use crate::{
    bus::ids,
    southbound::{addresses, links, routes},
};

/// The model never grows past this many objects through remote ports heard
/// of in faults (a bound on what the fabric can make this switch allocate).
const MAX_OBJECTS: usize = 1_000_000;

/// Adds this switch and everything netlink shows to `model`; fills `names`
/// with every interface name by index.
pub async fn build_live(
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
    let addresses = addresses::all(netlink).await?;
    for link in all.iter().filter(|l| l.name != "lo") {
        let list = addresses.get(&link.index).map_or(&[][..], Vec::as_slice);
        for family in [Family::V4, Family::V6] {
            if !list.iter().any(|a| family.holds(&a.ip)) {
                continue;
            }
            let ip = family.id(&link.name);
            model.add_object(ip.clone(), Layer::L3, family.kind())?;
            model.add_dependency(&ip, &l2_of(model, &link.name), Dependency::MapsTo)?;
        }
    }
    Ok(())
}

/// The gateways of the main table now, as (gateway, output interface name);
/// routes through an interface not in `names` are left out.
pub async fn gateways_by_name(
    netlink: &Handle,
    names: &BTreeMap<u32, String>,
) -> Result<Vec<(Ipv4Addr, String)>, rtnetlink::Error> {
    Ok(routes::gateways(netlink)
        .await?
        .into_iter()
        .filter_map(|(gw, oif)| names.get(&oif).map(|name| (gw, name.clone())))
        .collect())
}

/// Which interface (by name, from `names`) holds each address now.
pub async fn address_holders(
    netlink: &Handle,
    names: &BTreeMap<u32, String>,
) -> anyhow::Result<BTreeMap<IpAddr, String>> {
    Ok(holders_of(&addresses::all(netlink).await?, names))
}

/// [`address_holders`] from a dump already read.
pub fn holders_of(
    all: &BTreeMap<u32, Vec<addresses::Address>>,
    names: &BTreeMap<u32, String>,
) -> BTreeMap<IpAddr, String> {
    all.iter()
        .filter_map(|(index, list)| names.get(index).map(|name| (list, name)))
        .flat_map(|(list, name)| list.iter().map(|a| (a.ip, name.clone())))
        .collect()
}

/// What the live feeds (routes, neighbours) added to the model, so that
/// they take away only what they added (a declared object of the same id
/// is left alone).
#[derive(Debug, Default)]
pub struct Created {
    /// Gateway objects, with the IP interfaces each belongs to.
    pub gateways: BTreeMap<ObjectId, BTreeSet<ObjectId>>,
    /// Neighbour objects, with the IP interface each belongs to.
    pub neighbours: BTreeMap<ObjectId, ObjectId>,
    /// Other fabric members' switch objects and ports that the fabric's
    /// word (membership, topology, faults) added: they leave when the
    /// fabric forgets the member (one declared in the config stays).
    pub remote: BTreeSet<ObjectId>,
}

/// Makes the model's gateways what `wanted` (gateway, output interface)
/// says: a gateway belongs to the IP interface of every interface it is
/// routed through (one that has no IP interface is skipped); a gateway no
/// route names any more leaves the model. Returns the objects to re-assess
/// for alarms (changed, added or removed).
pub fn sync_gateways(
    model: &mut Model,
    created: &mut Created,
    wanted: &[(Ipv4Addr, String)],
) -> Vec<ObjectId> {
    let mut want: BTreeMap<ObjectId, BTreeSet<ObjectId>> = BTreeMap::new();
    for (gateway, name) in wanted {
        let ip = ids::ip(name);
        if model.contains(&ip) {
            want.entry(ids::gateway(*gateway)).or_default().insert(ip);
        }
    }
    let mut touched = Vec::new();
    // Gone, or routed through fewer interfaces.
    let ours: Vec<ObjectId> = created.gateways.keys().cloned().collect();
    for gw in ours {
        let keep = want.get(&gw).cloned().unwrap_or_default();
        let had = created.gateways.remove(&gw).unwrap_or_default();
        if keep.is_empty() || !model.contains(&gw) {
            touched.extend(remove(model, &gw));
            continue;
        }
        for ip in had.difference(&keep) {
            if let Ok(changes) = model.remove_dependency(&gw, ip) {
                touched.extend(changes.into_iter().map(|c| c.object));
            }
        }
        created
            .gateways
            .insert(gw, had.intersection(&keep).cloned().collect());
    }
    // New, or routed through more interfaces.
    for (gw, ips) in want {
        let ours = created.gateways.contains_key(&gw);
        if !ours {
            if model.contains(&gw) {
                // Declared in the config: not ours to follow.
                continue;
            }
            if model.len() >= MAX_OBJECTS {
                continue;
            }
            if let Err(err) = model.add_object(gw.clone(), Layer::L3, "gateway") {
                tracing::warn!(gateway = gw.0, error = %err, "cannot add the gateway to the state model");
                continue;
            }
            tracing::info!(gateway = gw.0, "gateway joins the state model");
            touched.push(gw.clone());
        }
        let entry = created.gateways.entry(gw.clone()).or_default();
        for ip in ips {
            if entry.contains(&ip) {
                continue;
            }
            match model.add_dependency_changes(&gw, &ip, Dependency::BelongsTo) {
                Ok(changes) => {
                    touched.extend(changes.into_iter().map(|c| c.object));
                    entry.insert(ip);
                }
                Err(err) => {
                    tracing::warn!(gateway = gw.0, error = %err, "cannot add the gateway's dependency");
                }
            }
        }
    }
    touched
}

/// Removes `id` from the model; returns it and the objects whose state
/// changed because of it (to re-assess for alarms).
fn remove(model: &mut Model, id: &ObjectId) -> Vec<ObjectId> {
    match model.remove_object(id) {
        Ok(changes) => {
            tracing::info!(object = id.0, "object leaves the state model");
            std::iter::once(id.clone())
                .chain(changes.into_iter().map(|c| c.object))
                .collect()
        }
        Err(_) => Vec::new(),
    }
}

/// An interface lost its last IPv4 address: its IP interface leaves the
/// model, with the gateways and neighbours the live feeds added under it
/// that belong to nothing else. Objects declared in the config that
/// depended on it stay (without that dependency). Returns the objects to
/// re-assess for alarms.
pub fn remove_ip(model: &mut Model, created: &mut Created, name: &str) -> Vec<ObjectId> {
    let ip = ids::ip(name);
    if !model.contains(&ip) {
        return Vec::new();
    }
    let mut touched = Vec::new();
    let gateways: Vec<ObjectId> = created
        .gateways
        .iter_mut()
        .filter_map(|(gw, ips)| (ips.remove(&ip) && ips.is_empty()).then(|| gw.clone()))
        .collect();
    for gw in gateways {
        created.gateways.remove(&gw);
        touched.extend(remove(model, &gw));
    }
    let neighbours: Vec<ObjectId> = created
        .neighbours
        .iter()
        .filter(|(_, on)| **on == ip)
        .map(|(n, _)| n.clone())
        .collect();
    for neighbour in neighbours {
        created.neighbours.remove(&neighbour);
        touched.extend(remove(model, &neighbour));
    }
    touched.extend(remove(model, &ip));
    touched
}

/// Most neighbours the model takes from the kernel's table (beyond, they
/// are counted and left out): a switch's ARP table can be large, and one
/// neighbour is one object.
pub const MAX_NEIGHBOURS: usize = 65_536;

/// A neighbour of the kernel's table on interface `name`: it joins the
/// model (belonging to that interface's IP interface) unless it is there
/// already, the interface has no IP interface, or the bound is reached
/// (then `Err(())`, for the caller's counter). Moved to another interface,
/// it follows. Returns the objects to re-assess for alarms.
#[allow(clippy::result_unit_err)]
pub fn ensure_neighbour(
    model: &mut Model,
    created: &mut Created,
    name: &str,
    neighbour: Ipv4Addr,
) -> Result<Vec<ObjectId>, ()> {
    let id = ids::neighbour(neighbour);
    let ip = ids::ip(name);
    let mut touched = Vec::new();
    match created.neighbours.get(&id) {
        Some(on) if *on == ip => return Ok(touched),
        Some(_) => {
            created.neighbours.remove(&id);
            touched.extend(remove(model, &id));
        }
        None if model.contains(&id) => return Ok(touched),
        None => {}
    }
    if !model.contains(&ip) {
        return Ok(touched);
    }
    if created.neighbours.len() >= MAX_NEIGHBOURS || model.len() >= MAX_OBJECTS {
        return Err(());
    }
    let added = model
        .add_object(id.clone(), Layer::L3, "neighbour")
        .and_then(|()| model.add_dependency_changes(&id, &ip, Dependency::BelongsTo));
    match added {
        Ok(changes) => {
            created.neighbours.insert(id.clone(), ip);
            touched.push(id);
            touched.extend(changes.into_iter().map(|c| c.object));
        }
        Err(err) => {
            tracing::warn!(neighbour = id.0, error = %err, "cannot add the neighbour to the state model");
        }
    }
    Ok(touched)
}

/// A neighbour left the kernel's table: it leaves the model if the live
/// feed added it. Returns the objects to re-assess for alarms.
pub fn remove_neighbour(
    model: &mut Model,
    created: &mut Created,
    neighbour: Ipv4Addr,
) -> Vec<ObjectId> {
    let id = ids::neighbour(neighbour);
    if created.neighbours.remove(&id).is_none() {
        return Vec::new();
    }
    remove(model, &id)
}

/// The ports this switch reaches the MLAG peer over, as last modelled:
/// the peer link's and the backup path's (None: not found).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerPathPorts {
    /// The port holding the peer link's address.
    pub link: Option<String>,
    /// The port holding the backup path's address.
    pub backup: Option<String>,
}

/// The paths to the MLAG peer follow `paths` (this switch's addresses on
/// them) and `holder` (which interface holds an address now): each path
/// is a physical link object `link:IF--mlag-peer` (kind `peer-link` or
/// `backup-path`) belonging to the port holding its address, and the peer
/// switch (`switch:mlag-peer`) is `redundant` over them. With a backup
/// path, the peer link down leaves the peer reachable (the backup path is
/// what MC-LAG tells a dead peer from a broken peer link by): degraded,
/// not down; both down, or the peer link down without a backup path, is
/// the peer inferred down, its twin ports and MLAG interfaces with it. A
/// path whose address no port holds (not yet, or on a bridge) has no
/// object until one does; a path whose address moves follows it. Returns
/// the objects to re-assess for alarms.
pub fn sync_peer_paths(
    model: &mut Model,
    paths: &PeerPaths,
    holder: impl Fn(IpAddr) -> Option<String>,
    current: &mut PeerPathPorts,
) -> Vec<ObjectId> {
    let peer = ids::peer_switch();
    let mut touched = Vec::new();
    if !model.contains(&peer) {
        if let Err(err) = model.add_object(peer.clone(), Layer::Physical, "switch") {
            tracing::warn!(error = %err, "cannot add the MLAG peer switch to the state model");
            return touched;
        }
        touched.push(peer.clone());
    }
    if model.redundancy_of(&peer).map(|(r, _)| r) != Some(Redundancy::Redundant) {
        match model.set_redundancy(&peer, Redundancy::Redundant, DEFAULT_DEGRADED_LEVEL) {
            Ok(changes) => touched.extend(changes.into_iter().map(|c| c.object)),
            Err(err) => {
                tracing::warn!(error = %err, "cannot make the MLAG peer redundant over its paths")
            }
        }
    }
    let link_port = holder(paths.link).filter(|name| model.contains(&ids::port(name)));
    // Both paths on one port are one path.
    let backup_port = paths
        .backup
        .and_then(&holder)
        .filter(|name| model.contains(&ids::port(name)) && Some(name) != link_port.as_ref());
    for (want, slot, kind) in [
        (link_port, &mut current.link, "peer-link"),
        (backup_port, &mut current.backup, "backup-path"),
    ] {
        if want == *slot {
            continue;
        }
        if let Some(old) = slot.take() {
            touched.extend(remove(model, &ids::peer_path(&old)));
        }
        let Some(name) = want else {
            continue;
        };
        let path = ids::peer_path(&name);
        let added = model
            .add_object(path.clone(), Layer::Physical, kind)
            .and_then(|()| {
                model.add_dependency_changes(&path, &ids::port(&name), Dependency::BelongsTo)
            })
            .and_then(|mut changes| {
                changes.extend(model.add_group_dependency(&peer, &path, Dependency::BelongsTo)?);
                Ok(changes)
            });
        match added {
            Ok(changes) => {
                tracing::info!(
                    interface = name,
                    kind,
                    "path to the MLAG peer joins the state model"
                );
                touched.push(path);
                touched.extend(changes.into_iter().map(|c| c.object));
                *slot = Some(name);
            }
            Err(err) => {
                tracing::warn!(interface = name, kind, error = %err, "cannot add the path to the MLAG peer to the state model");
            }
        }
    }
    touched
}

/// The links declared in the config (`inference.links`): each
/// `link:LOCAL--MEMBER/IF` (physical, kind `link`) belongs to both of its
/// ends, so either end down is the link down, with that end its root
/// cause. The far end joins the model now, under its member's switch, as
/// if declared (the fabric never takes it away). A link whose local port
/// is not in the model is skipped (warned).
pub fn add_links(model: &mut Model, links: &[DeclaredLink]) {
    for link in links {
        let Some((member, port)) = link.remote_end() else {
            continue;
        };
        let local = ids::port(&link.local);
        if !model.contains(&local) {
            tracing::warn!(
                interface = link.local,
                remote = link.remote,
                "the link's local port is not in the state model: link not modelled"
            );
            continue;
        }
        let remote = ids::remote_port(member, port);
        // Not recorded as the fabric's: a declared end stays.
        ensure_remote_port(model, &mut Created::default(), &remote);
        let id = ids::link(&link.local, &link.remote);
        let added = model
            .add_object(id.clone(), Layer::Physical, "link")
            .and_then(|()| model.add_dependency(&id, &local, Dependency::BelongsTo))
            .and_then(|()| model.add_dependency(&id, &remote, Dependency::BelongsTo));
        if let Err(err) = added {
            tracing::warn!(link = id.0, error = %err, "cannot add the link to the state model");
        }
    }
}

/// The VLANs the MLAG interfaces carry (`[peer].vlan_interfaces`): each
/// VLAN, `vlan:OUTER[.INNER]` (L2), belongs to every MLAG interface that
/// carries it, `redundant` over them (down only when none is up, degraded
/// while one is not); the IP interfaces (`ip:IF`, `ip6:IF`) of the
/// interface that serves it map it. An MLAG id without an MLAG interface
/// is skipped, and IP interfaces are linked as they are at start (this
/// kernel has no VLAN devices: the VLANs come from the config, not from
/// the kernel). Returns the VLANs added.
pub fn add_vlans(model: &mut Model, vlans: &[VlanOnMlag]) -> Vec<ObjectId> {
    let mut added = Vec::new();
    for v in vlans {
        let vlan = ids::vlan(v.outer, v.inner);
        let mlag = ids::mlag(v.mlag_id);
        if !model.contains(&mlag) {
            tracing::warn!(
                mlag_id = v.mlag_id,
                vlan = vlan.0,
                "no MLAG interface for the VLAN's MLAG id: not modelled on it"
            );
            continue;
        }
        let result = (if model.contains(&vlan) {
            Ok(())
        } else {
            model
                .add_object(vlan.clone(), Layer::L2, "vlan")
                .and_then(|()| {
                    model.set_redundancy(&vlan, Redundancy::Redundant, DEFAULT_DEGRADED_LEVEL)
                })
                .map(|_| added.push(vlan.clone()))
        })
        .and_then(|()| model.add_group_dependency(&vlan, &mlag, Dependency::BelongsTo))
        .and_then(|_| {
            for family in [Family::V4, Family::V6] {
                let ip = family.id(&v.interface);
                if model.contains(&ip) {
                    model.add_dependency(&ip, &vlan, Dependency::MapsTo)?;
                }
            }
            Ok(())
        });
        if let Err(err) = result {
            tracing::warn!(vlan = vlan.0, error = %err, "cannot add the VLAN to the state model");
        }
    }
    added
}

/// The MLAG interface of every MLAG id of `mlag_ports` (member port name,
/// MLAG id), `mlag:<id>` (L2), maps-to its local member port `port:<if>`
/// and to the twin `twin:<id>` (physical: the peer's member port with that
/// id), `redundant` over the two: degraded when one is down or unknown,
/// down when both are down. A member port not in the model is skipped
/// (warned). Returns the twins added: the caller tells the model they are
/// unknown (`peer twin-unknown`, lost contact) until the peer says otherwise.
pub fn add_mlag(model: &mut Model, mlag_ports: &[(String, u32)]) -> Vec<ObjectId> {
    let mut twins = Vec::new();
    let peer = ids::peer_switch();
    if !mlag_ports.is_empty()
        && !model.contains(&peer)
        && let Err(err) = model.add_object(peer.clone(), Layer::Physical, "switch")
    {
        tracing::warn!(error = %err, "cannot add the MLAG peer switch to the state model");
    }
    for (name, mlag_id) in mlag_ports {
        let port = ids::port(name);
        if !model.contains(&port) {
            tracing::warn!(
                interface = name,
                mlag_id,
                "member port not in the state model: no MLAG interface object for it"
            );
            continue;
        }
        let (mlag, twin) = (ids::mlag(*mlag_id), ids::twin(*mlag_id));
        let added = model
            .add_object(mlag.clone(), Layer::L2, "mlag-interface")
            .and_then(|()| model.add_object(twin.clone(), Layer::Physical, "twin-port"))
            .and_then(|()| {
                model.set_redundancy(&mlag, Redundancy::Redundant, DEFAULT_DEGRADED_LEVEL)
            })
            .and_then(|_| model.add_group_dependency(&mlag, &port, Dependency::MapsTo))
            .and_then(|_| model.add_group_dependency(&mlag, &twin, Dependency::MapsTo))
            .and_then(|_| {
                if model.contains(&peer) {
                    model.add_dependency(&twin, &peer, Dependency::BelongsTo)
                } else {
                    Ok(())
                }
            });
        match added {
            Ok(_) => twins.push(twin),
            Err(err) => {
                tracing::warn!(interface = name, mlag_id, error = %err, "cannot add the MLAG interface to the state model");
            }
        }
    }
    twins
}

/// The L2 object an IP interface on `name` maps to: its LAN port, or the
/// bridge or bond of that name.
fn l2_of(model: &Model, name: &str) -> ObjectId {
    if model.contains(&ids::lan(name)) {
        ids::lan(name)
    } else if model.contains(&ids::aggregate("bridge", name)) {
        ids::aggregate("bridge", name)
    } else {
        ids::aggregate("bond", name)
    }
}

/// The address family of an IP interface object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `ip:IF`: the interface has an IPv4 address.
    V4,
    /// `ip6:IF`: the interface has an IPv6 address (global or link-local).
    V6,
}

impl Family {
    /// The interface object of `name` in this family.
    pub fn id(self, name: &str) -> ObjectId {
        match self {
            Self::V4 => ids::ip(name),
            Self::V6 => ids::ip6(name),
        }
    }

    /// True when `ip` is of this family.
    pub fn holds(self, ip: &IpAddr) -> bool {
        match self {
            Self::V4 => ip.is_ipv4(),
            Self::V6 => ip.is_ipv6(),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::V4 => "ip-interface",
            Self::V6 => "ip6-interface",
        }
    }
}

/// An interface that got its first IPv4 address after start: its IP
/// interface joins the model, mapping its L2 object (and so inferred from
/// it at once). Returns the state changes that caused (the new object
/// inferred faulty); nothing when it is `lo`, already known, or its L2
/// object is not in the model.
pub fn ensure_ip(model: &mut Model, name: &str) -> Vec<super::Change> {
    ensure_ip_of(model, name, Family::V4)
}

/// [`ensure_ip`] for `family` (`ip6:IF` for an interface that got its
/// first IPv6 address).
pub fn ensure_ip_of(model: &mut Model, name: &str, family: Family) -> Vec<super::Change> {
    let ip = family.id(name);
    let below = l2_of(model, name);
    if name == "lo" || model.contains(&ip) || !model.contains(&below) {
        return Vec::new();
    }
    let added = model
        .add_object(ip.clone(), Layer::L3, family.kind())
        .and_then(|()| model.add_dependency_changes(&ip, &below, Dependency::MapsTo));
    match added {
        Ok(changes) => {
            tracing::info!(
                interface = name,
                ?family,
                "IP interface joins the state model"
            );
            changes
        }
        Err(err) => {
            tracing::warn!(interface = name, error = %err, "cannot add the IP interface to the state model");
            Vec::new()
        }
    }
}

/// An interface lost its last IPv6 address: its `ip6:IF` leaves the
/// model (objects declared on it stay, without that dependency). Returns
/// the objects to re-assess for alarms.
pub fn remove_ip6(model: &mut Model, name: &str) -> Vec<ObjectId> {
    remove(model, &ids::ip6(name))
}

/// An interface that appeared after start joins the model as a physical
/// port of `switch` with its LAN port (unless it is `lo` or already known).
pub fn ensure_port(model: &mut Model, switch: &str, name: &str) {
    let port = ids::port(name);
    if name == "lo" || model.contains(&port) || model.contains(&ids::aggregate("bridge", name)) {
        return;
    }
    let added = model
        .add_object(port.clone(), Layer::Physical, "port")
        .and_then(|()| model.add_dependency(&port, &ids::switch(switch), Dependency::BelongsTo))
        .and_then(|()| model.add_object(ids::lan(name), Layer::L2, "lan-port"))
        .and_then(|()| model.add_dependency(&ids::lan(name), &port, Dependency::MapsTo));
    if let Err(err) = added {
        tracing::warn!(interface = name, error = %err, "cannot add the new interface to the state model");
    }
}

/// Another fabric member's switch object (`switch:<member>`), first heard
/// of in the fabric's membership or topology, joins the model (recorded in
/// `created`). False when `object` is no switch id, or it is not there and
/// the model is full.
pub fn ensure_remote_switch(model: &mut Model, created: &mut Created, object: &ObjectId) -> bool {
    if model.contains(object) {
        return true;
    }
    let named = object
        .as_str()
        .strip_prefix("switch:")
        .is_some_and(|m| !m.is_empty());
    if !named || model.len() >= MAX_OBJECTS {
        return false;
    }
    let added = model
        .add_object(object.clone(), Layer::Physical, "switch")
        .is_ok();
    if added {
        created.remote.insert(object.clone());
    }
    added
}

/// A port of another fabric member ([`ids::remote_port`]), first heard of
/// in a fault or listed in the member's heartbeat, joins the model under
/// that member's switch object (one declared in the config is put under
/// it too, when it can be). Any other id is left alone. Returns true when
/// it joined now.
pub fn ensure_remote_port(model: &mut Model, created: &mut Created, object: &ObjectId) -> bool {
    let Some((member, _)) = ids::parse_remote_port(object) else {
        return false;
    };
    if model.contains(object) {
        let switch = ids::switch(member);
        if model.contains(&switch)
            && !model
                .dependencies_of(object)
                .iter()
                .any(|(on, _)| *on == switch)
        {
            // A layer mismatch is the config's choice: left as declared.
            let _ = model.add_dependency(object, &switch, Dependency::BelongsTo);
        }
        return false;
    }
    if model.len() >= MAX_OBJECTS {
        return false;
    }
    let switch = ids::switch(member);
    if !ensure_remote_switch(model, created, &switch) {
        return false;
    }
    let added = model
        .add_object(object.clone(), Layer::Physical, "remote-port")
        .and_then(|()| model.add_dependency(object, &switch, Dependency::BelongsTo));
    match added {
        Ok(()) => {
            created.remote.insert(object.clone());
            true
        }
        Err(err) => {
            tracing::warn!(object = object.0, error = %err, "cannot add the remote port to the state model");
            false
        }
    }
}

/// A remote port its member no longer lists leaves the model, if the
/// fabric's word added it. Returns the objects to re-assess for alarms.
pub fn remove_remote_port(
    model: &mut Model,
    created: &mut Created,
    object: &ObjectId,
) -> Vec<ObjectId> {
    if !created.remote.remove(object) {
        return Vec::new();
    }
    remove(model, object)
}

/// The fabric forgot `member` (pruned after its departure, or evicted
/// from a full view): its ports and switch object leave the model, those
/// the fabric's word added (declared ones stay, with their last state).
/// Returns the objects to re-assess for alarms.
pub fn forget_member(model: &mut Model, created: &mut Created, member: &str) -> Vec<ObjectId> {
    let switch = ids::switch(member);
    // `port:<member>/...` ids sort together: `0` follows `/`.
    let from = ObjectId(format!("port:{member}/"));
    let to = ObjectId(format!("port:{member}0"));
    let ports: Vec<ObjectId> = created.remote.range(from..to).cloned().collect();
    let mut touched = Vec::new();
    for port in ports.iter().chain([&switch]) {
        touched.extend(remove_remote_port(model, created, port));
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Info;
    use crate::inference::RuleTable;

    fn model_with_switch() -> Model {
        let mut model = Model::new();
        model
            .add_object(ids::switch("a"), Layer::Physical, "switch")
            .unwrap();
        model
    }

    #[test]
    fn a_new_interface_joins_as_port_and_lan_port_of_this_switch() {
        let mut model = model_with_switch();
        ensure_port(&mut model, "a", "eth7");
        assert!(model.contains(&ids::port("eth7")));
        assert_eq!(
            model.dependencies_of(&ids::lan("eth7")),
            [(ids::port("eth7"), Dependency::MapsTo)]
        );
        ensure_port(&mut model, "a", "eth7");
        ensure_port(&mut model, "a", "lo");
        assert_eq!(model.len(), 3);
    }

    #[test]
    fn a_remote_port_joins_under_its_member_switch_and_takes_the_fault() {
        let mut model = model_with_switch();
        let remote = ids::remote_port("sw3", "p1");
        let mut created = Created::default();
        assert!(ensure_remote_port(&mut model, &mut created, &remote));
        assert!(!ensure_remote_port(&mut model, &mut created, &remote));
        assert_eq!(
            model.dependencies_of(&remote),
            [(ids::switch("sw3"), Dependency::BelongsTo)]
        );
        assert_eq!(model.len(), 3);
        let applied = model
            .apply(
                Info::new("fabric", "port-down", remote.clone()),
                &RuleTable::builtin(),
                1,
            )
            .unwrap();
        assert!(applied.known);
        assert_eq!(model.fault_level(&remote), Some(3));
    }

    #[test]
    fn each_mlag_id_gets_an_interface_redundant_over_its_port_and_twin() {
        let mut model = model_with_switch();
        for name in ["m0", "m1"] {
            ensure_port(&mut model, "a", name);
        }
        let rules = RuleTable::builtin();
        let twins = add_mlag(
            &mut model,
            &[("m0".into(), 7), ("m1".into(), 9), ("gone".into(), 3)],
        );
        assert_eq!(
            twins,
            [ids::twin(7), ids::twin(9)],
            "no port, no MLAG object"
        );
        assert_eq!(ids::mlag(7).as_str(), "mlag:7");
        assert_eq!(
            model.group_of(&ids::mlag(7)),
            [ids::port("m0"), ids::twin(7)]
        );
        let say = |model: &mut Model, source: &str, message: &str, object: ObjectId| {
            model
                .apply(Info::new(source, message, object), &rules, 1)
                .unwrap()
        };
        let effective = |model: &Model| {
            let s = model.effective(&ids::mlag(7)).unwrap();
            (s[0].name.clone(), s[0].level)
        };
        // Both twins up: normal.
        assert_eq!(effective(&model), ("normal".into(), 0));
        // The twin unknown (as at start): not counted as up, degraded.
        say(&mut model, "peer", "twin-unknown", ids::twin(7));
        assert_eq!(effective(&model), ("degraded".into(), 1));
        say(&mut model, "peer", "twin-up", ids::twin(7));
        assert_eq!(effective(&model), ("normal".into(), 0));
        // One twin down: degraded; both: down; one back: degraded.
        say(&mut model, "netlink", "link-down", ids::port("m0"));
        assert_eq!(effective(&model), ("degraded".into(), 1));
        say(&mut model, "peer", "twin-down", ids::twin(7));
        assert_eq!(effective(&model), ("down".into(), 3));
        say(&mut model, "netlink", "link-up", ids::port("m0"));
        assert_eq!(effective(&model), ("degraded".into(), 1));
        assert_eq!(
            model.effective(&ids::mlag(9)).unwrap(),
            [crate::inference::State::normal()],
            "the other MLAG id is untouched"
        );
        // The twins belong to the peer switch.
        assert_eq!(
            model.dependencies_of(&ids::twin(9)),
            [(ids::peer_switch(), Dependency::BelongsTo)]
        );
    }

    #[test]
    fn an_ip_interface_added_later_maps_its_lan_port_and_is_inferred_from_it_at_once() {
        let mut model = model_with_switch();
        ensure_port(&mut model, "a", "m0");
        model
            .apply(
                Info::new("netlink", "link-down", ids::port("m0")),
                &RuleTable::builtin(),
                1,
            )
            .unwrap();
        let changes = ensure_ip(&mut model, "m0");
        assert_eq!(
            model.dependencies_of(&ids::ip("m0")),
            [(ids::lan("m0"), Dependency::MapsTo)]
        );
        assert_eq!(model.fault_level(&ids::ip("m0")), Some(3));
        assert!(
            changes.iter().any(|c| c.object == ids::ip("m0")),
            "{changes:?}"
        );
        // Known already, `lo`, or no L2 object: nothing.
        assert!(ensure_ip(&mut model, "m0").is_empty());
        assert!(ensure_ip(&mut model, "lo").is_empty());
        assert!(ensure_ip(&mut model, "nowhere").is_empty());
        assert!(!model.contains(&ids::ip("nowhere")));
    }

    #[test]
    fn a_forgotten_member_takes_the_ports_the_fabric_added_and_leaves_declared_ones() {
        let mut model = model_with_switch();
        let declared = ids::remote_port("sw3", "p9");
        model
            .add_object(declared.clone(), Layer::Physical, "port")
            .unwrap();
        let mut created = Created::default();
        for port in ["p1", "p2"] {
            ensure_remote_port(&mut model, &mut created, &ids::remote_port("sw3", port));
        }
        // Another member whose name starts the same stays.
        ensure_remote_port(&mut model, &mut created, &ids::remote_port("sw30", "p1"));
        ensure_remote_port(&mut model, &mut created, &declared);
        assert_eq!(
            model.dependencies_of(&declared),
            [(ids::switch("sw3"), Dependency::BelongsTo)],
            "a declared port goes under its member's switch"
        );
        let touched = forget_member(&mut model, &mut created, "sw3");
        for gone in [
            ids::remote_port("sw3", "p1"),
            ids::remote_port("sw3", "p2"),
            ids::switch("sw3"),
        ] {
            assert!(!model.contains(&gone), "{gone}");
            assert!(touched.contains(&gone), "{gone} re-assessed");
        }
        assert!(model.contains(&declared));
        assert!(model.dependencies_of(&declared).is_empty());
        assert!(model.contains(&ids::remote_port("sw30", "p1")));
        assert!(model.contains(&ids::switch("sw30")));
        // A port no longer listed leaves; a declared one is not the
        // fabric's to take.
        let p1 = ids::remote_port("sw30", "p1");
        assert_eq!(remove_remote_port(&mut model, &mut created, &p1), [p1]);
        assert!(remove_remote_port(&mut model, &mut created, &declared).is_empty());
        assert!(model.contains(&declared));
    }

    #[test]
    fn an_ipv6_interface_joins_beside_the_ipv4_one_follows_its_port_and_leaves_alone() {
        let mut model = model_with_switch();
        ensure_port(&mut model, "a", "m0");
        ensure_ip(&mut model, "m0");
        ensure_ip_of(&mut model, "m0", Family::V6);
        assert_eq!(ids::ip6("m0").as_str(), "ip6:m0");
        assert_eq!(model.kind_of(&ids::ip6("m0")), Some("ip6-interface"));
        assert_eq!(
            model.dependencies_of(&ids::ip6("m0")),
            [(ids::lan("m0"), Dependency::MapsTo)]
        );
        model
            .apply(
                Info::new("netlink", "link-down", ids::port("m0")),
                &RuleTable::builtin(),
                1,
            )
            .unwrap();
        assert_eq!(model.fault_level(&ids::ip6("m0")), Some(3));
        let touched = remove_ip6(&mut model, "m0");
        assert_eq!(touched, [ids::ip6("m0")]);
        assert!(!model.contains(&ids::ip6("m0")));
        assert!(model.contains(&ids::ip("m0")), "the IPv4 interface stays");
        assert!(Family::V6.holds(&"fe80::1".parse().unwrap()));
        assert!(!Family::V6.holds(&"10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_peer_is_redundant_over_its_peer_link_and_backup_path_which_follow_their_addresses() {
        let mut model = model_with_switch();
        for name in ["pl", "bk", "other"] {
            ensure_port(&mut model, "a", name);
        }
        let rules = RuleTable::builtin();
        let (link, backup, moved): (IpAddr, IpAddr, IpAddr) = (
            "169.254.77.1".parse().unwrap(),
            "169.254.78.1".parse().unwrap(),
            "169.254.79.1".parse().unwrap(),
        );
        let paths = PeerPaths {
            link,
            backup: Some(backup),
        };
        let mut holders = BTreeMap::from([(link, "pl".to_string())]);
        let mut current = PeerPathPorts::default();
        // Only the peer link's address is held yet.
        let touched = sync_peer_paths(
            &mut model,
            &paths,
            |ip| holders.get(&ip).cloned(),
            &mut current,
        );
        assert!(touched.contains(&ids::peer_path("pl")), "{touched:?}");
        assert_eq!(ids::peer_path("pl").as_str(), "link:pl--mlag-peer");
        assert_eq!(model.kind_of(&ids::peer_path("pl")), Some("peer-link"));
        assert_eq!(
            model.dependencies_of(&ids::peer_path("pl")),
            [(ids::port("pl"), Dependency::BelongsTo)]
        );
        assert_eq!(model.group_of(&ids::peer_switch()), [ids::peer_path("pl")]);
        let say = |model: &mut Model, message: &str, port: &str| {
            model
                .apply(Info::new("netlink", message, ids::port(port)), &rules, 1)
                .unwrap();
        };
        let peer_state = |model: &Model| {
            let s = model.effective(&ids::peer_switch()).unwrap();
            (s[0].name.clone(), s[0].level)
        };
        // No backup path: the peer link down is the peer down.
        say(&mut model, "link-down", "pl");
        assert_eq!(peer_state(&model), ("down".into(), 3));
        say(&mut model, "link-up", "pl");
        // The backup path's address appears: the peer is redundant over both.
        holders.insert(backup, "bk".into());
        sync_peer_paths(
            &mut model,
            &paths,
            |ip| holders.get(&ip).cloned(),
            &mut current,
        );
        assert_eq!(
            model.group_of(&ids::peer_switch()),
            [ids::peer_path("pl"), ids::peer_path("bk")]
        );
        assert_eq!(model.kind_of(&ids::peer_path("bk")), Some("backup-path"));
        say(&mut model, "link-down", "pl");
        assert_eq!(peer_state(&model), ("degraded".into(), 1));
        say(&mut model, "link-down", "bk");
        assert_eq!(peer_state(&model), ("down".into(), 3));
        say(&mut model, "link-up", "pl");
        say(&mut model, "link-up", "bk");
        assert_eq!(peer_state(&model), ("normal".into(), 0));
        // Nothing moved: nothing to do.
        assert!(
            sync_peer_paths(
                &mut model,
                &paths,
                |ip| holders.get(&ip).cloned(),
                &mut current
            )
            .is_empty()
        );
        // The backup address moves to another port: its path follows.
        holders.remove(&backup);
        holders.insert(moved, "other".into());
        let paths = PeerPaths {
            link,
            backup: Some(moved),
        };
        let touched = sync_peer_paths(
            &mut model,
            &paths,
            |ip| holders.get(&ip).cloned(),
            &mut current,
        );
        assert!(!model.contains(&ids::peer_path("bk")));
        assert!(
            touched.contains(&ids::peer_path("bk")) && touched.contains(&ids::peer_path("other"))
        );
        assert_eq!(current.backup.as_deref(), Some("other"));
        // Both on one port: one path.
        let same = PeerPaths {
            link,
            backup: Some(link),
        };
        sync_peer_paths(
            &mut model,
            &same,
            |ip| holders.get(&ip).cloned(),
            &mut current,
        );
        assert_eq!(model.group_of(&ids::peer_switch()), [ids::peer_path("pl")]);
    }

    #[test]
    fn a_vlan_is_redundant_over_the_mlag_interfaces_carrying_it_and_maps_its_interfaces_ip() {
        let mut model = model_with_switch();
        for name in ["m0", "m1"] {
            ensure_port(&mut model, "a", name);
        }
        ensure_ip(&mut model, "m0");
        add_mlag(&mut model, &[("m0".into(), 1), ("m1".into(), 2)]);
        let rules = RuleTable::builtin();
        let vlan = |mlag_id, outer, inner| VlanOnMlag {
            mlag_id,
            outer,
            inner,
            interface: "m0".into(),
        };
        let added = add_vlans(
            &mut model,
            &[
                vlan(1, 10, 0),
                vlan(2, 10, 0),
                vlan(1, 20, 5),
                vlan(9, 30, 0),
            ],
        );
        assert_eq!(added, [ids::vlan(10, 0), ids::vlan(20, 5)], "no MLAG 9");
        assert_eq!(ids::vlan(20, 5).as_str(), "vlan:20.5");
        assert_eq!(
            model.group_of(&ids::vlan(10, 0)),
            [ids::mlag(1), ids::mlag(2)]
        );
        assert!(
            model
                .dependencies_of(&ids::ip("m0"))
                .contains(&(ids::vlan(10, 0), Dependency::MapsTo))
        );
        let say = |model: &mut Model, source: &str, message: &str, object: ObjectId| {
            model
                .apply(Info::new(source, message, object), &rules, 1)
                .unwrap();
        };
        let state = |model: &Model, id: ObjectId| {
            let s = model.effective(&id).unwrap();
            (s[0].name.clone(), s[0].level)
        };
        for id in [1, 2] {
            say(&mut model, "peer", "twin-up", ids::twin(id));
        }
        assert_eq!(state(&model, ids::vlan(10, 0)), ("normal".into(), 0));
        // MLAG 2 down on both legs: VLAN 10 still has MLAG 1, degraded.
        say(&mut model, "netlink", "link-down", ids::port("m1"));
        say(&mut model, "peer", "twin-down", ids::twin(2));
        assert_eq!(state(&model, ids::mlag(2)), ("down".into(), 3));
        assert_eq!(state(&model, ids::vlan(10, 0)), ("degraded".into(), 1));
        assert_eq!(state(&model, ids::vlan(20, 5)), ("normal".into(), 0));
        // MLAG 1 down too: no carrier of VLAN 10 is left.
        say(&mut model, "netlink", "link-down", ids::port("m0"));
        say(&mut model, "peer", "twin-down", ids::twin(1));
        assert_eq!(state(&model, ids::vlan(10, 0)), ("down".into(), 3));
        assert_eq!(state(&model, ids::vlan(20, 5)), ("down".into(), 3));
    }

    #[test]
    fn a_declared_link_is_down_when_either_end_is_and_its_far_end_is_never_the_fabrics() {
        let mut model = model_with_switch();
        ensure_port(&mut model, "a", "p1");
        let link = |local: &str| DeclaredLink {
            local: local.into(),
            remote: "sw2/p9".into(),
        };
        add_links(&mut model, &[link("p1"), link("absent")]);
        let id = ids::link("p1", "sw2/p9");
        assert_eq!(id.as_str(), "link:p1--sw2/p9");
        assert!(!model.contains(&ids::link("absent", "sw2/p9")));
        assert_eq!(
            model.dependencies_of(&id),
            [
                (ids::port("p1"), Dependency::BelongsTo),
                (ids::remote_port("sw2", "p9"), Dependency::BelongsTo)
            ]
        );
        let rules = RuleTable::builtin();
        model
            .apply(
                Info::new("fabric", "port-down", ids::remote_port("sw2", "p9")),
                &rules,
                1,
            )
            .unwrap();
        assert_eq!(model.fault_level(&id), Some(3));
        // The member forgotten: the declared far end stays.
        let mut created = Created::default();
        forget_member(&mut model, &mut created, "sw2");
        assert!(model.contains(&ids::remote_port("sw2", "p9")));
    }

    #[test]
    fn only_remote_port_ids_join() {
        let mut model = model_with_switch();
        let mut created = Created::default();
        ensure_remote_port(&mut model, &mut created, &ids::port("eth0"));
        ensure_remote_port(&mut model, &mut created, &ids::lan("a/b"));
        assert!(created.remote.is_empty());
        assert_eq!(model.len(), 1);
    }

    fn model_with_ips(names: &[&str]) -> Model {
        let mut model = model_with_switch();
        for name in names {
            ensure_port(&mut model, "a", name);
            ensure_ip(&mut model, name);
        }
        model
    }

    #[test]
    fn gateways_follow_the_routes_and_leave_when_no_route_names_them() {
        let mut model = model_with_ips(&["m0", "m1"]);
        let mut created = Created::default();
        let gw: Ipv4Addr = "10.0.0.1".parse().unwrap();
        // Through m0, then ECMP through m0 and m1 (and one through an
        // interface without an IP interface: skipped).
        let touched = sync_gateways(&mut model, &mut created, &[(gw, "m0".into())]);
        assert!(touched.contains(&ids::gateway(gw)), "{touched:?}");
        assert_eq!(
            model.dependencies_of(&ids::gateway(gw)),
            [(ids::ip("m0"), Dependency::BelongsTo)]
        );
        sync_gateways(
            &mut model,
            &mut created,
            &[(gw, "m0".into()), (gw, "m1".into()), (gw, "nowhere".into())],
        );
        assert_eq!(model.dependencies_of(&ids::gateway(gw)).len(), 2);
        // m0's route gone: it belongs to m1 only.
        sync_gateways(&mut model, &mut created, &[(gw, "m1".into())]);
        assert_eq!(
            model.dependencies_of(&ids::gateway(gw)),
            [(ids::ip("m1"), Dependency::BelongsTo)]
        );
        // No route: it leaves.
        let touched = sync_gateways(&mut model, &mut created, &[]);
        assert!(!model.contains(&ids::gateway(gw)));
        assert!(touched.contains(&ids::gateway(gw)));
        assert!(created.gateways.is_empty());
    }

    #[test]
    fn a_declared_gateway_is_never_taken_away_by_the_routes() {
        let mut model = model_with_ips(&["m0"]);
        let gw: Ipv4Addr = "10.0.0.1".parse().unwrap();
        model
            .add_object(ids::gateway(gw), Layer::L3, "gateway")
            .unwrap();
        let mut created = Created::default();
        sync_gateways(&mut model, &mut created, &[(gw, "m0".into())]);
        sync_gateways(&mut model, &mut created, &[]);
        assert!(model.contains(&ids::gateway(gw)));
        assert!(model.dependencies_of(&ids::gateway(gw)).is_empty());
    }

    #[test]
    fn an_ip_interface_removed_takes_what_only_it_held_and_clears_their_faults() {
        let mut model = model_with_ips(&["m0", "m1"]);
        let mut created = Created::default();
        let (only, shared): (Ipv4Addr, Ipv4Addr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        sync_gateways(
            &mut model,
            &mut created,
            &[
                (only, "m0".into()),
                (shared, "m0".into()),
                (shared, "m1".into()),
            ],
        );
        let n: Ipv4Addr = "10.0.0.9".parse().unwrap();
        assert!(ensure_neighbour(&mut model, &mut created, "m0", n).is_ok());
        assert_eq!(
            model.dependencies_of(&ids::neighbour(n)),
            [(ids::ip("m0"), Dependency::BelongsTo)]
        );
        model
            .add_object(ObjectId::from("svc:x"), Layer::Service, "service")
            .unwrap();
        model
            .add_dependency(&ObjectId::from("svc:x"), &ids::ip("m0"), Dependency::MapsTo)
            .unwrap();
        model
            .apply(
                Info::new("netlink", "link-down", ids::port("m0")),
                &RuleTable::builtin(),
                1,
            )
            .unwrap();
        assert_eq!(model.fault_level(&ObjectId::from("svc:x")), Some(3));
        let touched = remove_ip(&mut model, &mut created, "m0");
        for gone in [ids::ip("m0"), ids::gateway(only), ids::neighbour(n)] {
            assert!(!model.contains(&gone), "{gone} removed");
            assert!(touched.contains(&gone), "{gone} re-assessed: {touched:?}");
        }
        assert_eq!(
            model.dependencies_of(&ids::gateway(shared)),
            [(ids::ip("m1"), Dependency::BelongsTo)],
            "a gateway also routed through m1 stays"
        );
        assert_eq!(
            model.fault_level(&ObjectId::from("svc:x")),
            Some(0),
            "what depended on it is recomputed"
        );
        assert!(touched.contains(&ObjectId::from("svc:x")));
        assert!(created.neighbours.is_empty());
        assert!(remove_ip(&mut model, &mut created, "m0").is_empty());
    }

    #[test]
    fn a_neighbour_joins_under_its_ip_interface_moves_with_it_and_leaves() {
        let mut model = model_with_ips(&["m0", "m1"]);
        let mut created = Created::default();
        let n: Ipv4Addr = "10.0.0.9".parse().unwrap();
        // No IP interface: not modelled.
        ensure_port(&mut model, "a", "bare");
        assert_eq!(
            ensure_neighbour(&mut model, &mut created, "bare", n),
            Ok(vec![])
        );
        assert!(!model.contains(&ids::neighbour(n)));
        ensure_neighbour(&mut model, &mut created, "m0", n).unwrap();
        ensure_neighbour(&mut model, &mut created, "m0", n).unwrap();
        ensure_neighbour(&mut model, &mut created, "m1", n).unwrap();
        assert_eq!(
            model.dependencies_of(&ids::neighbour(n)),
            [(ids::ip("m1"), Dependency::BelongsTo)]
        );
        let applied = model
            .apply(
                Info::new("netlink", "neighbour-failed", ids::neighbour(n)),
                &RuleTable::builtin(),
                1,
            )
            .unwrap();
        assert!(applied.known);
        assert_eq!(model.fault_level(&ids::neighbour(n)), Some(2));
        let touched = remove_neighbour(&mut model, &mut created, n);
        assert_eq!(touched, [ids::neighbour(n)]);
        assert!(!model.contains(&ids::neighbour(n)));
        assert!(remove_neighbour(&mut model, &mut created, n).is_empty());
    }
}
