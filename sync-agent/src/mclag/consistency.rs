//! The pair's consistency check: both switches must agree on the MLAG ids
//! of their member ports, each twin pair on its MTU and on the VLANs it
//! hands to VLAN interfaces (the VLAN interface map), and both on the sync
//! sub-types they speak (capabilities). Each side compares its own settings
//! with the peer's hello; the answer is a list of differences with both
//! values, for `show mclag` and the log. Pure, so it is tested on its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    bus::{MemberPort, VlanMap},
    mac::MacAddr,
};

/// One setting that differs between the two switches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mismatch {
    /// What differs: `mlag-id`, `mtu`, `vlans` or `capabilities`.
    pub field: String,
    /// The MLAG id concerned (None: pair-wide).
    pub mlag_id: Option<u32>,
    /// This switch's member port with that id, if it has one.
    pub port: Option<String>,
    /// This switch's value.
    pub local: String,
    /// The peer's value.
    pub peer: String,
}

/// What the peer's hello says about its settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSettings {
    /// Member ports: MLAG id and MAC.
    pub ports: BTreeMap<u32, MacAddr>,
    /// Member port MTUs by MLAG id (empty from a peer that does not send
    /// them: then MTUs are not compared).
    pub mtus: BTreeMap<u32, u32>,
    /// VLAN interface map by MLAG id (ports the peer does not report are
    /// missing: their VLANs are not compared).
    pub vlans: VlanMap,
    /// Capability bits.
    pub capabilities: u32,
}

/// This switch's settings that are not in its member port list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnSettings {
    /// Capability bits this build speaks.
    pub capabilities: u32,
    /// The VLAN interface map (`[peer].vlan_interfaces`).
    pub vlans: VlanMap,
}

/// Every difference between this switch (`own` ports and `settings`) and
/// `peer`, sorted.
pub fn check(own: &[MemberPort], settings: &OwnSettings, peer: &PeerSettings) -> Vec<Mismatch> {
    let own_capabilities = settings.capabilities;
    let mut out = Vec::new();
    if own_capabilities != peer.capabilities {
        out.push(Mismatch {
            field: "capabilities".into(),
            mlag_id: None,
            port: None,
            local: format!("{own_capabilities:#x}"),
            peer: format!("{:#x}", peer.capabilities),
        });
    }
    for port in own {
        if !peer.ports.contains_key(&port.mlag_id) {
            out.push(Mismatch {
                field: "mlag-id".into(),
                mlag_id: Some(port.mlag_id),
                port: Some(port.name.clone()),
                local: format!("{} on {}", port.mlag_id, port.name),
                peer: "none".into(),
            });
            continue;
        }
        if let (Some(local), Some(peer_mtu)) = (port.mtu, peer.mtus.get(&port.mlag_id))
            && local != *peer_mtu
        {
            out.push(Mismatch {
                field: "mtu".into(),
                mlag_id: Some(port.mlag_id),
                port: Some(port.name.clone()),
                local: local.to_string(),
                peer: peer_mtu.to_string(),
            });
        }
        let no_vlans = Vec::new();
        let local_vlans = settings.vlans.get(&port.mlag_id).unwrap_or(&no_vlans);
        if let Some(peer_vlans) = peer.vlans.get(&port.mlag_id)
            && local_vlans != peer_vlans
        {
            out.push(Mismatch {
                field: "vlans".into(),
                mlag_id: Some(port.mlag_id),
                port: Some(port.name.clone()),
                local: vlan_list(local_vlans),
                peer: vlan_list(peer_vlans),
            });
        }
    }
    for mlag_id in peer.ports.keys() {
        if !own.iter().any(|p| p.mlag_id == *mlag_id) {
            out.push(Mismatch {
                field: "mlag-id".into(),
                mlag_id: Some(*mlag_id),
                port: None,
                local: "none".into(),
                peer: mlag_id.to_string(),
            });
        }
    }
    out.sort();
    out
}

/// `10,20.5` (outer, or outer.inner when double-tagged), `none` if empty.
fn vlan_list(vlans: &[(u16, u16)]) -> String {
    if vlans.is_empty() {
        return "none".into();
    }
    let each: Vec<String> = vlans
        .iter()
        .map(|(outer, inner)| match inner {
            0 => outer.to_string(),
            inner => format!("{outer}.{inner}"),
        })
        .collect();
    each.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, mlag_id: u32, mtu: Option<u32>) -> MemberPort {
        MemberPort {
            name: name.into(),
            mlag_id,
            ifindex: Some(mlag_id + 10),
            mac: Some(MacAddr([2, 0, 0, 0, 0, mlag_id as u8])),
            mtu,
        }
    }

    fn peer(ids: &[u32], mtus: &[(u32, u32)], capabilities: u32) -> PeerSettings {
        PeerSettings {
            ports: ids
                .iter()
                .map(|i| (*i, MacAddr([4, 0, 0, 0, 0, *i as u8])))
                .collect(),
            mtus: mtus.iter().copied().collect(),
            vlans: VlanMap::new(),
            capabilities,
        }
    }

    fn caps(capabilities: u32) -> OwnSettings {
        OwnSettings {
            capabilities,
            vlans: VlanMap::new(),
        }
    }

    #[test]
    fn alike_switches_have_no_mismatch() {
        let own = [port("m1", 1, Some(1500)), port("m2", 2, Some(9000))];
        assert!(check(&own, &caps(1), &peer(&[1, 2], &[(1, 1500), (2, 9000)], 1)).is_empty());
    }

    #[test]
    fn every_difference_is_listed_with_both_values() {
        let own = [port("m1", 1, Some(1500)), port("m7", 7, Some(1500))];
        let found = check(&own, &caps(1), &peer(&[1, 3], &[(1, 9000), (3, 1500)], 3));
        assert_eq!(
            found,
            [
                Mismatch {
                    field: "capabilities".into(),
                    mlag_id: None,
                    port: None,
                    local: "0x1".into(),
                    peer: "0x3".into(),
                },
                Mismatch {
                    field: "mlag-id".into(),
                    mlag_id: Some(3),
                    port: None,
                    local: "none".into(),
                    peer: "3".into(),
                },
                Mismatch {
                    field: "mlag-id".into(),
                    mlag_id: Some(7),
                    port: Some("m7".into()),
                    local: "7 on m7".into(),
                    peer: "none".into(),
                },
                Mismatch {
                    field: "mtu".into(),
                    mlag_id: Some(1),
                    port: Some("m1".into()),
                    local: "1500".into(),
                    peer: "9000".into(),
                },
            ]
        );
    }

    #[test]
    fn vlan_maps_are_compared_per_port_when_the_peer_reports_them() {
        let own = [
            port("m1", 1, None),
            port("m2", 2, None),
            port("m3", 3, None),
        ];
        let settings = OwnSettings {
            capabilities: 1,
            vlans: [(1, vec![(10, 0), (20, 5)]), (2, vec![(30, 0)])].into(),
        };
        let mut peer = peer(&[1, 2, 3], &[], 1);
        // Port 1 alike, port 2 reported without VLANs, port 3 not reported.
        peer.vlans = [(1, vec![(10, 0), (20, 5)]), (2, vec![])].into();
        assert_eq!(
            check(&own, &settings, &peer),
            [Mismatch {
                field: "vlans".into(),
                mlag_id: Some(2),
                port: Some("m2".into()),
                local: "30".into(),
                peer: "none".into(),
            }]
        );
        peer.vlans.insert(1, vec![(10, 0), (20, 6)]);
        peer.vlans.insert(2, vec![(30, 0)]);
        let found = check(&own, &settings, &peer);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].local.as_str(), found[0].peer.as_str()),
            ("10,20.5", "10,20.6")
        );
    }

    #[test]
    fn mtus_are_compared_only_when_both_sides_know_them() {
        let own = [port("m1", 1, None), port("m2", 2, Some(1500))];
        assert!(check(&own, &caps(1), &peer(&[1, 2], &[(1, 9000)], 1)).is_empty());
        assert!(check(&own, &caps(1), &peer(&[1, 2], &[], 1)).is_empty());
    }
}
