//! What the classifier's maps should hold (SPEC 1.2, 1.4), derived from the
//! `[dataplane]` section and the member ports' current MACs. Pure: the task
//! compares the result with what the kernel holds and writes the difference.
//!
//! A new dataplane class starts here (which MACs belong to it) and in
//! `sync-ebpf` (how a reply is sorted), with its counter in `sync-common`.

use std::collections::BTreeSet;

use sync_common::{arp, policy};

use super::{classifier::MacTables, config::DataplaneConfig};
use crate::mac::MacAddr;

/// The policy word the classifier reads from `mlag_policy`.
pub fn policy_word(config: &DataplaneConfig) -> u32 {
    (if config.sync_own_replies {
        policy::SYNC_OWN
    } else {
        0
    }) | (if config.vrrp_prefix_is_shared {
        policy::VRRP_PREFIX_IS_SHARED
    } else {
        0
    })
}

/// The MAC tables implied by the config, the member ports' MACs and what
/// the other modules learnt: the ports' own MACs are always `own`; every
/// listed VRRP group's IPv4 and IPv6 virtual MACs are `shared`; the peer's
/// MACs from its hello and the MC-LAG shared MAC join the configured peer
/// MACs (the classifier looks at `peer` before `own`, so the shared MAC,
/// which is also a port MAC once aligned, is synced whatever
/// `sync_own_replies` says).
pub fn wanted_tables(
    config: &DataplaneConfig,
    port_macs: impl IntoIterator<Item = MacAddr>,
    learnt_peer_macs: impl IntoIterator<Item = MacAddr>,
) -> MacTables {
    let mut own: BTreeSet<MacAddr> = config.own_macs.iter().copied().collect();
    own.extend(port_macs);
    let mut shared: BTreeSet<MacAddr> = config.shared_macs.iter().copied().collect();
    for group in &config.vrrp_groups {
        let vrid = *group as u8;
        shared.insert(MacAddr(arp::vrrp_v4_mac(vrid)));
        shared.insert(MacAddr(arp::vrrp_v6_mac(vrid)));
    }
    let mut peer: BTreeSet<MacAddr> = config.peer_macs.iter().copied().collect();
    peer.extend(learnt_peer_macs);
    MacTables { peer, own, shared }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DataplaneConfig {
        toml::from_str(
            r#"
member_ports = ["eth1"]
peer_macs = ["02:00:00:00:0b:01"]
own_macs = ["02:00:00:00:0a:09"]
vrrp_groups = [7]
"#,
        )
        .unwrap()
    }

    #[test]
    fn port_macs_are_own_and_vrrp_groups_are_shared_in_both_families() {
        let port = MacAddr([2, 0, 0, 0, 0xa, 1]);
        let tables = wanted_tables(&config(), [port], []);
        assert!(tables.own.contains(&port));
        assert!(tables.own.contains(&MacAddr([2, 0, 0, 0, 0xa, 9])));
        assert_eq!(
            tables.shared,
            [
                MacAddr([0, 0, 0x5e, 0, 1, 7]),
                MacAddr([0, 0, 0x5e, 0, 2, 7])
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(tables.peer.len(), 1);
    }

    #[test]
    fn macs_learnt_from_the_peer_and_the_shared_mac_join_the_peer_table() {
        let port = MacAddr([2, 0, 0, 0, 0xa, 1]);
        let learnt = MacAddr([2, 0, 0, 0, 0xb, 7]);
        let tables = wanted_tables(&config(), [port], [learnt, port]);
        assert!(tables.peer.contains(&learnt));
        assert!(tables.peer.contains(&MacAddr([2, 0, 0, 0, 0xb, 1])));
        // Once aligned the shared MAC is a port MAC too: both tables hold it,
        // and the classifier's peer-before-own order makes it `peer`.
        assert!(tables.peer.contains(&port) && tables.own.contains(&port));
    }

    #[test]
    fn policy_word_follows_the_two_switches() {
        let mut c = config();
        assert_eq!(
            policy_word(&c),
            policy::SYNC_OWN | policy::VRRP_PREFIX_IS_SHARED
        );
        c.sync_own_replies = false;
        assert_eq!(policy_word(&c), policy::VRRP_PREFIX_IS_SHARED);
    }
}
