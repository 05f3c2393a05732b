//! The model of the live system (SPEC 5.1): this switch, its interfaces
//! (physical port and LAN port, or a bridge or bond as an L2 object of its
//! own), its IPv4 interfaces and gateways, read over netlink; and the
//! objects that join later: interfaces that appear after start, and ports
//! of other fabric members first heard of in a fault. With an MLAG peer,
//! each MLAG id gets its MLAG interface, redundant over the local member
//! port and its twin on the peer. Ids come from
//! [`crate::bus::ids`], so producers and this module agree on them.

use std::collections::BTreeMap;

use rtnetlink::Handle;

use super::{DEFAULT_DEGRADED_LEVEL, Dependency, Layer, Model, ObjectId, Redundancy};
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
        model.add_dependency(&ip, &l2_of(model, &link.name), Dependency::MapsTo)?;
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

/// An interface that got its first IPv4 address after start: its IP
/// interface joins the model, mapping its L2 object (and so inferred from
/// it at once). Returns the state changes that caused (the new object
/// inferred faulty); nothing when it is `lo`, already known, or its L2
/// object is not in the model.
pub fn ensure_ip(model: &mut Model, name: &str) -> Vec<super::Change> {
    let ip = ids::ip(name);
    let below = l2_of(model, name);
    if name == "lo" || model.contains(&ip) || !model.contains(&below) {
        return Vec::new();
    }
    let added = model
        .add_object(ip.clone(), Layer::L3, "ip-interface")
        .and_then(|()| model.add_dependency_changes(&ip, &below, Dependency::MapsTo));
    match added {
        Ok(changes) => {
            tracing::info!(interface = name, "IP interface joins the state model");
            changes
        }
        Err(err) => {
            tracing::warn!(interface = name, error = %err, "cannot add the IP interface to the state model");
            Vec::new()
        }
    }
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

/// A port of another fabric member ([`ids::remote_port`]), first heard of
/// in a fault, joins the model under that member's switch object. Any other
/// id is left alone.
pub fn ensure_remote_port(model: &mut Model, object: &ObjectId) {
    let Some((member, _)) = ids::parse_remote_port(object) else {
        return;
    };
    if model.contains(object) || model.len() >= MAX_OBJECTS {
        return;
    }
    let switch = ids::switch(member);
    let added = (if model.contains(&switch) {
        Ok(())
    } else {
        model.add_object(switch.clone(), Layer::Physical, "switch")
    })
    .and_then(|()| model.add_object(object.clone(), Layer::Physical, "remote-port"))
    .and_then(|()| model.add_dependency(object, &switch, Dependency::BelongsTo));
    if let Err(err) = added {
        tracing::warn!(object = object.0, error = %err, "cannot add the remote port to the state model");
    }
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
        ensure_remote_port(&mut model, &remote);
        ensure_remote_port(&mut model, &remote);
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
    fn only_remote_port_ids_join() {
        let mut model = model_with_switch();
        ensure_remote_port(&mut model, &ids::port("eth0"));
        ensure_remote_port(&mut model, &ids::lan("a/b"));
        assert_eq!(model.len(), 1);
    }
}
