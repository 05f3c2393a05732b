//! The pair's consistency check: both switches must agree on the MLAG ids
//! of their member ports, each twin pair on its MTU, and both on the sync
//! sub-types they speak (capabilities). Each side compares its own settings
//! with the peer's hello; the answer is a list of differences with both
//! values, for `show mclag` and the log. Pure, so it is tested on its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{bus::MemberPort, mac::MacAddr};

/// One setting that differs between the two switches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mismatch {
    /// What differs: `mlag-id`, `mtu` or `capabilities`.
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
    /// Capability bits.
    pub capabilities: u32,
}

/// Every difference between `own` (with `own_capabilities`) and `peer`,
/// sorted.
pub fn check(own: &[MemberPort], own_capabilities: u32, peer: &PeerSettings) -> Vec<Mismatch> {
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
            capabilities,
        }
    }

    #[test]
    fn alike_switches_have_no_mismatch() {
        let own = [port("m1", 1, Some(1500)), port("m2", 2, Some(9000))];
        assert!(check(&own, 1, &peer(&[1, 2], &[(1, 1500), (2, 9000)], 1)).is_empty());
    }

    #[test]
    fn every_difference_is_listed_with_both_values() {
        let own = [port("m1", 1, Some(1500)), port("m7", 7, Some(1500))];
        let found = check(&own, 1, &peer(&[1, 3], &[(1, 9000), (3, 1500)], 3));
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
    fn mtus_are_compared_only_when_both_sides_know_them() {
        let own = [port("m1", 1, None), port("m2", 2, Some(1500))];
        assert!(check(&own, 1, &peer(&[1, 2], &[(1, 9000)], 1)).is_empty());
        assert!(check(&own, 1, &peer(&[1, 2], &[], 1)).is_empty());
    }
}
