//! Tables age (issue 12): this switch's kernel decides when a neighbour is
//! gone, and the peer hears of it.
//!
//! The agent follows the kernel's neighbour table over netlink
//! (`southbound::neighbours::watch`). When an entry this switch synced is
//! removed from its kernel (garbage-collected, flushed, deleted) or turns
//! FAILED (the host stopped answering), the entry leaves the send table and
//! a delete goes to the peer (`tx.rs` sends it, `learn.rs` applies it on
//! the other side). A rebooted peer is then no longer handed hosts that
//! left.
//!
//! A kernel entry belongs to a send-table entry when it is on one of the
//! interfaces the kernel learns on for that MLAG id: the member port, the
//! VLAN interfaces configured for it, and the bridges or bonds above the
//! port (its link's controller, and upwards). The re-probe (`refresh.rs`)
//! uses the same set.
//!
//! A removal this agent caused itself (it deleted an entry on the peer's
//! word) is not sent back as a withdraw: the peer already knows.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::{table::EntryKey, task::Task};
use crate::southbound::neighbours::NeighbourEvent;

/// How far up the controller chain (port -> bond -> bridge -> ...) to look.
const MAX_CONTROLLER_DEPTH: usize = 4;
/// How often an event on an interface not in the set may trigger a new look
/// at the interfaces (a bridge built after start-up).
const RELOOK_AFTER: Duration = Duration::from_secs(1);
/// Removals this agent caused that are remembered until the kernel reports
/// them; beyond it the memory is cleared (a lost event must not leak).
const MAX_OWN_DELETES: usize = 4096;

/// True for the kernel's neighbour changes peer sync acts on: an entry
/// removed or turned FAILED. Any other change (a new entry, one confirmed
/// or gone stale) leaves what the peer was told as it is.
pub(super) fn withdraws(event: &NeighbourEvent) -> bool {
    match event {
        NeighbourEvent::Removed(_) => true,
        NeighbourEvent::Changed(n) => n.state == "FAILED",
    }
}

impl Task {
    /// A change to this switch's neighbour table.
    pub(super) async fn process_neighbour(&mut self, event: NeighbourEvent) {
        if !withdraws(&event) {
            return;
        }
        let (n, removed) = match event {
            NeighbourEvent::Removed(n) => (n, true),
            NeighbourEvent::Changed(n) => (n, false),
        };
        let ours = removed && self.own_deletes.remove(&(n.ifindex, n.ip));
        // Most of the kernel's changes concern entries never synced: a few
        // look-ups (one per MLAG id) before anything else.
        let synced = self.ports.iter().any(|p| {
            self.table.contains(&EntryKey {
                vrf: 0,
                mlag_id: p.mlag_id,
                ip: n.ip,
            })
        });
        if !synced {
            return;
        }
        let mlag_ids: Vec<u32> = self
            .mlag_ids_on(n.ifindex)
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut withdrawn = false;
        for mlag_id in mlag_ids {
            let key = EntryKey {
                vrf: 0,
                mlag_id,
                ip: n.ip,
            };
            if ours {
                self.table.forget(key);
            } else if self.table.withdraw(key) {
                self.stats.withdrawn += 1;
                withdrawn = true;
                tracing::debug!(ip = %n.ip, mlag_id, removed, "withdrawn: the kernel dropped it");
            }
        }
        if withdrawn && self.established() {
            self.schedule_flush().await;
        }
    }

    /// Remembers that this agent deleted `ip` on `ifindex` itself.
    pub(super) fn remember_deleted(&mut self, ifindex: u32, ip: Ipv4Addr) {
        if self.own_deletes.len() >= MAX_OWN_DELETES {
            self.own_deletes.clear();
        }
        self.own_deletes.insert((ifindex, ip));
    }

    /// The MLAG ids whose entries the kernel learns on `ifindex`; looks at
    /// the interfaces again (at most once per [`RELOOK_AFTER`]) when it is
    /// not one of them.
    pub(super) async fn mlag_ids_on(&mut self, ifindex: u32) -> Option<BTreeSet<u32>> {
        let stale = self
            .learn_ifs_at
            .is_none_or(|at| at.elapsed() >= RELOOK_AFTER);
        if !self.learn_ifs.contains_key(&ifindex) && stale {
            self.learn_ifs_at = None;
        }
        self.learning_interfaces().await.get(&ifindex).cloned()
    }

    /// Every interface the kernel learns on above the member ports, with
    /// the MLAG ids it serves: the member ports, the configured VLAN
    /// interfaces, and the bridges/bonds the ports are enslaved to. Cached
    /// until invalidated (`learn_ifs_at = None`: ports changed, a refresh).
    pub(super) async fn learning_interfaces(&mut self) -> &BTreeMap<u32, BTreeSet<u32>> {
        if self.learn_ifs_at.is_some() {
            return &self.learn_ifs;
        }
        let mut out: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let ports: Vec<(u32, u32)> = self
            .ports
            .iter()
            .filter_map(|p| Some((p.ifindex?, p.mlag_id)))
            .collect();
        for (ifindex, mlag_id) in ports {
            out.entry(ifindex).or_default().insert(mlag_id);
            let mut at = ifindex;
            for _ in 0..MAX_CONTROLLER_DEPTH {
                let Some(controller) = self.kernel.controller(at).await else {
                    break;
                };
                out.entry(controller).or_default().insert(mlag_id);
                at = controller;
            }
        }
        let vlans: Vec<(u32, String)> = self
            .config
            .vlan_interfaces
            .iter()
            .map(|v| (v.mlag_id, v.interface.clone()))
            .collect();
        for (mlag_id, name) in vlans {
            // Looked up (and arp_accept set) as when learning on it.
            if let Some((ifindex, _)) = self.vlan_target(&name).await {
                out.entry(ifindex).or_default().insert(mlag_id);
            }
        }
        self.learn_ifs = out;
        self.learn_ifs_at = Some(Instant::now());
        &self.learn_ifs
    }
}
