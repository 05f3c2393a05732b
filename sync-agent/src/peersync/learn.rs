//! Kernel learning (SPEC 2.3): a reply synced by the peer is handed to this
//! switch's own ARP receive path on the twin member port, as if it had
//! arrived there, so everything the stack does on learning still happens.
//!
//! - Injection is `BPF_PROG_RUN` with live frames on the `mlag_inject` XDP
//!   program, or, on kernels that refuse live frames, a tc redirect from
//!   the loopback's egress (`crate::southbound::inject`): either way the
//!   reply is marked (so a generic-mode classifier does not capture it
//!   again) and the kernel receives the frame on the chosen ifindex.
//! - "Other host": the kernel drops a reply addressed to a MAC that is not
//!   the receiving interface's, so the destination MAC is rewritten to it.
//! - `arp_accept`: an unsolicited reply (class `own` on the peer: this
//!   switch did not ask) only creates an entry with `arp_accept=1`, which
//!   the agent sets on the member ports and VLAN targets unless
//!   `peer.arp_accept = "leave"`.
//! - Only when injection fails is the entry written as a REACHABLE
//!   neighbour over netlink; that is logged and counted (`netlink_fallback`,
//!   local failure `inject_failed`: this switch's failure, not the peer's).
//!
//! - The received table (`Task::learned`) is an LRU bounded by
//!   `peer.max_learnt`: the least recently learnt entry is forgotten in
//!   O(1) and counted (`learnt_evicted`); its kernel entry is left to age.
//! - A delete from the peer (it withdrew an entry its kernel dropped)
//!   removes the neighbour this switch learnt from the peer, and only such
//!   an entry: one this switch learnt on its own is never touched.
//!
//! Every kernel side effect goes through the [`Kernel`] trait so the task's
//! handlers can be driven without root in the deterministic tests
//! (`tests.rs` has a recording fake); [`NetKernel`] is the real one.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use futures::future::BoxFuture;
use lru::LruCache;
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use sync_common::{
    arp::{self, Parsed},
    wire::{ArpDelete, DriverHeader},
};

use super::{config::ArpAcceptPolicy, table::EntryKey, task::Task};
use crate::{
    bus::CapturedFrame,
    mac::MacAddr,
    southbound::{
        inject::Injector,
        links,
        neighbours::{self, Neighbour, NeighbourError},
        neighbours6::{self, Neighbour6},
    },
};

/// The kernel side effects of peer sync, behind one seam.
pub(super) trait Kernel: Send + Sync {
    /// Injects `frame` into the receive path of `ifindex` (a live frame or a
    /// tc redirect, `crate::southbound::inject`).
    fn inject(&self, frame: &[u8], ifindex: u32) -> io::Result<()>;
    /// How [`Kernel::inject`] reaches the receive path (`show peer`).
    fn inject_method(&self) -> &'static str;
    /// The fallback: writes `ip` -> `mac` as a REACHABLE neighbour.
    fn set_reachable(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>>;
    /// Sets `arp_accept=1` on `interface`.
    fn set_arp_accept(&self, interface: &str) -> Result<(), NeighbourError>;
    /// `arp_accept` of `interface` now.
    fn arp_accept(&self, interface: &str) -> Result<u8, NeighbourError>;
    /// Puts `arp_accept` of `interface` back to `value`.
    fn restore_arp_accept(&self, interface: &str, value: u8) -> Result<(), NeighbourError>;
    /// Index and MAC of the interface called `name`, if it exists and has one.
    fn link<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<(u32, MacAddr)>>;
    /// The IPv4 neighbours on `ifindexes`.
    fn neighbours<'a>(
        &'a self,
        ifindexes: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour>, NeighbourError>>;
    /// Moves a neighbour to PROBE (the kernel sends a fresh request).
    fn probe<'a>(&'a self, neighbour: &'a Neighbour) -> BoxFuture<'a, Result<(), NeighbourError>>;
    /// Deletes the neighbour `ip` on `ifindex`; Ok(false) if it was not there.
    fn delete(&self, ifindex: u32, ip: Ipv4Addr) -> BoxFuture<'_, Result<bool, NeighbourError>>;
    /// The bridge or bond interface `ifindex` is enslaved to, if any.
    fn controller(&self, ifindex: u32) -> BoxFuture<'_, Option<u32>>;
    /// ND fallback: writes `ip` -> `mac` as a REACHABLE IPv6 neighbour.
    fn set_reachable6(
        &self,
        ifindex: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>>;
    /// The IPv6 neighbours on `ifindexes`.
    fn neighbours6<'a>(
        &'a self,
        ifindexes: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour6>, NeighbourError>>;
    /// Moves an IPv6 neighbour to PROBE.
    fn probe6<'a>(&'a self, neighbour: &'a Neighbour6)
    -> BoxFuture<'a, Result<(), NeighbourError>>;
    /// Deletes the IPv6 neighbour `ip` on `ifindex`; Ok(false) if absent.
    fn delete6(&self, ifindex: u32, ip: Ipv6Addr) -> BoxFuture<'_, Result<bool, NeighbourError>>;
    /// `accept_untracked_na` of `interface` now.
    fn untracked_na(&self, interface: &str) -> Result<u8, NeighbourError>;
    /// Sets `accept_untracked_na` of `interface` to `value`.
    fn set_untracked_na(&self, interface: &str, value: u8) -> Result<(), NeighbourError>;
}

/// The real kernel: the injector chosen by the dataplane and a netlink handle.
pub(super) struct NetKernel {
    /// Hands frames to the receive path.
    pub(super) inject: Injector,
    /// rtnetlink handle for neighbours and links.
    pub(super) netlink: Handle,
}

impl Kernel for NetKernel {
    fn inject(&self, frame: &[u8], ifindex: u32) -> io::Result<()> {
        self.inject.inject(frame, ifindex)
    }

    fn inject_method(&self) -> &'static str {
        self.inject.method().name()
    }

    fn set_reachable(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>> {
        Box::pin(neighbours::set_reachable(&self.netlink, ifindex, ip, mac))
    }

    fn set_arp_accept(&self, interface: &str) -> Result<(), NeighbourError> {
        neighbours::set_arp_accept(interface, 1)
    }

    fn arp_accept(&self, interface: &str) -> Result<u8, NeighbourError> {
        neighbours::arp_accept(interface)
    }

    fn restore_arp_accept(&self, interface: &str, value: u8) -> Result<(), NeighbourError> {
        neighbours::set_arp_accept(interface, value)
    }

    fn link<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<(u32, MacAddr)>> {
        Box::pin(async move {
            let link = links::by_name(&self.netlink, name).await.ok()??;
            Some((link.index, link.mac?))
        })
    }

    fn neighbours<'a>(
        &'a self,
        ifindexes: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour>, NeighbourError>> {
        Box::pin(neighbours::dump(&self.netlink, ifindexes))
    }

    fn probe<'a>(&'a self, neighbour: &'a Neighbour) -> BoxFuture<'a, Result<(), NeighbourError>> {
        Box::pin(neighbours::probe(&self.netlink, neighbour))
    }

    fn delete(&self, ifindex: u32, ip: Ipv4Addr) -> BoxFuture<'_, Result<bool, NeighbourError>> {
        Box::pin(neighbours::delete(&self.netlink, ifindex, ip))
    }

    fn controller(&self, ifindex: u32) -> BoxFuture<'_, Option<u32>> {
        Box::pin(async move {
            links::by_index(&self.netlink, ifindex)
                .await
                .ok()
                .flatten()?
                .controller
        })
    }

    fn set_reachable6(
        &self,
        ifindex: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>> {
        Box::pin(neighbours6::set_reachable(&self.netlink, ifindex, ip, mac))
    }

    fn neighbours6<'a>(
        &'a self,
        ifindexes: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour6>, NeighbourError>> {
        Box::pin(neighbours6::dump(&self.netlink, ifindexes))
    }

    fn probe6<'a>(
        &'a self,
        neighbour: &'a Neighbour6,
    ) -> BoxFuture<'a, Result<(), NeighbourError>> {
        Box::pin(neighbours6::probe(&self.netlink, neighbour))
    }

    fn delete6(&self, ifindex: u32, ip: Ipv6Addr) -> BoxFuture<'_, Result<bool, NeighbourError>> {
        Box::pin(neighbours6::delete(&self.netlink, ifindex, ip))
    }

    fn untracked_na(&self, interface: &str) -> Result<u8, NeighbourError> {
        neighbours6::accept_untracked_na(interface)
    }

    fn set_untracked_na(&self, interface: &str, value: u8) -> Result<(), NeighbourError> {
        neighbours6::set_accept_untracked_na(interface, value)
    }
}

/// How an entry learnt from the peer reached the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LearntBy {
    /// The kernel's own ARP receive path (BPF_PROG_RUN live frame).
    KernelArp,
    /// A netlink neighbour update (fallback).
    NetlinkFallback,
    /// The kernel's own ND receive path (BPF_PROG_RUN live frame of the
    /// Neighbour Advertisement, addressed as received).
    KernelNd,
    /// The kernel's ND receive path, the advertisement readdressed to all
    /// nodes and unsolicited (it was for the peer's address).
    KernelNdAllNodes,
}

impl LearntBy {
    /// The name `show arp` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::KernelArp => "kernel-arp",
            Self::NetlinkFallback => "netlink-fallback",
            Self::KernelNd => "kernel-nd",
            Self::KernelNdAllNodes => "kernel-nd-all-nodes",
        }
    }
}

/// An entry learnt from the peer, keyed by the peer's (VRF, MLAG id, IP)
/// in the task (the key its deletes name).
#[derive(Clone, Debug)]
pub(super) struct Learnt {
    /// The interface the kernel holds it on.
    pub(super) ifindex: u32,
    pub(super) mac: MacAddr,
    /// The member port (twin of the peer's).
    pub(super) port: String,
    /// The interface it was handed to (the port or a VLAN interface).
    pub(super) interface: String,
    pub(super) mlag_id: u32,
    pub(super) outer_vlan: u16,
    pub(super) inner_vlan: u16,
    /// Class on the peer (a `capture::Class` as u8).
    pub(super) class: u8,
    pub(super) by: LearntBy,
    pub(super) at: Instant,
}

/// The names an entry learnt from the peer is shown with: the member port
/// (`ports[port_at]`) and the interface it was handed to (the VLAN
/// interface `mapped`, else the port). Takes the two lists, not the task,
/// so the caller can still write the task's tables while holding them.
pub(super) fn learnt_names<'a>(
    ports: &'a [crate::bus::MemberPort],
    vlan_interfaces: &'a [super::config::VlanInterface],
    port_at: usize,
    mapped: Option<usize>,
) -> (&'a str, &'a str) {
    let port = &ports[port_at].name;
    let interface = match mapped {
        Some(at) => &vlan_interfaces[at].interface,
        None => port,
    };
    (port, interface)
}

/// Records an entry learnt from the peer in `table`, an LRU bounded by
/// `max` (the least recently learnt entry is forgotten in O(1): true when
/// one was). `learnt` comes without its names, which are `names` (member
/// port, interface handed to). An entry learnt again (the steady state) is
/// updated in place, its names copied only if they changed: no heap
/// allocation; `get_mut` makes it the most recently learnt, as `push` does.
pub(super) fn remember<K: std::hash::Hash + Eq>(
    table: &mut LruCache<K, Learnt>,
    key: K,
    learnt: Learnt,
    (port, interface): (&str, &str),
    max: usize,
) -> bool {
    if let Some(held) = table.get_mut(&key) {
        let mut names = (
            std::mem::take(&mut held.port),
            std::mem::take(&mut held.interface),
        );
        for (name, now) in [(&mut names.0, port), (&mut names.1, interface)] {
            if name != now {
                name.clear();
                name.push_str(now);
            }
        }
        *held = Learnt {
            port: names.0,
            interface: names.1,
            ..learnt
        };
        return false;
    }
    let evicted = table.len() >= max && table.pop_lru().is_some();
    table.push(
        key,
        Learnt {
            port: port.to_string(),
            interface: interface.to_string(),
            ..learnt
        },
    );
    evicted
}

impl Task {
    /// Hands one synced reply to this switch's kernel on the twin port (or
    /// the VLAN interface configured for its MLAG id and tags). A reply
    /// learnt again (the steady state) costs no heap allocation: the frame
    /// is rewritten on the stack and its received entry updated in place.
    pub(super) async fn learn(&mut self, driver: &DriverHeader, original: &[u8]) {
        let Some(port_at) = self.ports.iter().position(|p| p.mlag_id == driver.mlag_id) else {
            self.reject(
                "unknown_mlag_id",
                &format!(
                    "entry for MLAG id {} which no member port has",
                    driver.mlag_id
                ),
            );
            return;
        };
        let Parsed::ArpReply(reply) = arp::parse(original) else {
            return;
        };
        let arp_offset = reply.arp_offset as usize;
        let Some(addresses) = arp::addresses(original, arp_offset) else {
            return;
        };
        let mapped = self.config.vlan_interfaces.iter().position(|v| {
            v.mlag_id == driver.mlag_id
                && v.outer_vlan == reply.outer_vlan
                && v.inner_vlan == reply.inner_vlan
        });
        // Inline up to a captured frame's size: no heap for a real reply.
        let mut frame = CapturedFrame::new();
        let (ifindex, mac) = match mapped {
            Some(at) => {
                let name = &self.config.vlan_interfaces[at].interface;
                let target = match self.vlan_targets.get(name) {
                    Some(target) => Some(*target),
                    None => {
                        let name = name.clone();
                        self.vlan_target(&name).await
                    }
                };
                let Some((ifindex, mac)) = target else {
                    let detail = format!(
                        "interface {} for MLAG id {} VLAN {}",
                        self.config.vlan_interfaces[at].interface, driver.mlag_id, reply.outer_vlan
                    );
                    self.reject("vlan_interface_missing", &detail);
                    return;
                };
                // Handed to the VLAN's own interface: without its tags.
                let (Some(macs), Some(arp_part)) = (original.get(..12), original.get(arp_offset..))
                else {
                    return;
                };
                frame.extend_from_slice(macs);
                frame.extend_from_slice(&arp::ETHERTYPE_ARP.to_be_bytes());
                frame.extend_from_slice(arp_part);
                (ifindex, mac)
            }
            None => {
                let port = &self.ports[port_at];
                let (Some(ifindex), Some(mac)) = (port.ifindex, port.mac) else {
                    let detail = format!("member port {} is not present", port.name);
                    self.reject("twin_port_missing", &detail);
                    return;
                };
                frame.extend_from_slice(original);
                (ifindex, mac)
            }
        };
        // "Other host": the kernel keeps only replies to its own MAC.
        let Some(dst) = frame.get_mut(..6) else {
            return;
        };
        dst.copy_from_slice(&mac.0);
        let sender_ip = Ipv4Addr::from(addresses.sender_ip);
        let sender_mac = MacAddr(addresses.sender_mac);
        let by = match self.kernel.inject(&frame, ifindex) {
            Ok(()) => {
                self.stats.injected += 1;
                LearntBy::KernelArp
            }
            Err(err) => {
                self.stats.netlink_fallback += 1;
                let interface = match mapped {
                    Some(at) => &self.config.vlan_interfaces[at].interface,
                    None => &self.ports[port_at].name,
                };
                let detail = format!(
                    "BPF_PROG_RUN live frame on {interface}: {err}; writing {sender_ip} over netlink instead"
                );
                self.local_failure("inject_failed", &detail);
                if let Err(err) = self
                    .kernel
                    .set_reachable(ifindex, sender_ip, sender_mac)
                    .await
                {
                    tracing::error!(error = %err, "netlink fallback failed too");
                    return;
                }
                LearntBy::NetlinkFallback
            }
        };
        let key = EntryKey {
            vrf: driver.vrf,
            mlag_id: driver.mlag_id,
            ip: sender_ip,
        };
        let names = learnt_names(&self.ports, &self.config.vlan_interfaces, port_at, mapped);
        let learnt = Learnt {
            ifindex,
            mac: sender_mac,
            port: String::new(),
            interface: String::new(),
            mlag_id: driver.mlag_id,
            outer_vlan: reply.outer_vlan,
            inner_vlan: reply.inner_vlan,
            class: driver.class,
            by,
            at: Instant::now(),
        };
        if remember(
            &mut self.learned,
            key,
            learnt,
            names,
            self.config.max_learnt,
        ) {
            self.stats.learnt_evicted += 1;
        }
    }

    /// The peer withdrew an entry (its kernel dropped it): the neighbour
    /// this switch learnt from the peer for it is deleted from the kernel.
    /// An entry not learnt from the peer is left alone.
    pub(super) async fn unlearn(&mut self, delete: &ArpDelete) {
        self.stats.deletes_received += 1;
        let key = EntryKey {
            vrf: delete.vrf,
            mlag_id: delete.mlag_id,
            ip: Ipv4Addr::from(delete.ip),
        };
        let Some(learnt) = self.learned.pop(&key) else {
            self.stats.deletes_not_learnt += 1;
            return;
        };
        match self.kernel.delete(learnt.ifindex, key.ip).await {
            Ok(present) => {
                self.stats.learnt_deleted += 1;
                if present {
                    // Our own watch will see this removal: it must not
                    // become a withdraw sent back to the peer.
                    self.remember_deleted(learnt.ifindex, key.ip);
                }
                tracing::debug!(ip = %key.ip, interface = learnt.interface, present, "deleted: the peer withdrew it");
            }
            Err(err) => {
                self.stats.learnt_delete_failed += 1;
                if self.log.admit("learnt_delete_failed").is_some() {
                    tracing::warn!(ip = %key.ip, interface = learnt.interface, error = %err, "cannot delete a neighbour the peer withdrew");
                }
            }
        }
    }

    /// Index and MAC of a VLAN interface, looked up once and remembered;
    /// `arp_accept` is set on it the first time, as on the member ports.
    pub(super) async fn vlan_target(&mut self, name: &str) -> Option<(u32, MacAddr)> {
        if let Some(target) = self.vlan_targets.get(name) {
            return Some(*target);
        }
        let target = self.kernel.link(name).await?;
        self.vlan_targets.insert(name.to_string(), target);
        if self.config.arp_accept == ArpAcceptPolicy::Set
            && let Err(err) = self.set_arp_accept_on(name)
        {
            tracing::warn!(error = %err, "arp_accept");
        }
        Some(target)
    }

    /// Sets `arp_accept=1` on every present member port (policy `set`).
    pub(super) fn apply_arp_accept(&mut self) {
        if self.config.arp_accept != ArpAcceptPolicy::Set {
            return;
        }
        let present: Vec<String> = self
            .ports
            .iter()
            .filter(|p| p.ifindex.is_some())
            .map(|p| p.name.clone())
            .collect();
        for name in present {
            if let Err(err) = self.set_arp_accept_on(&name) {
                tracing::warn!(interface = name, error = %err, "cannot set arp_accept; synced replies this switch did not ask for will not create entries");
            }
        }
    }

    /// Sets `arp_accept=1` on `interface`, remembering the value it had the
    /// first time so [`Self::restore_arp_accept`] can put it back at exit.
    /// An interface already at 1 is left alone: nothing of ours to undo.
    fn set_arp_accept_on(&mut self, interface: &str) -> Result<(), NeighbourError> {
        if !self.arp_accept_original.contains_key(interface) {
            let original = self.kernel.arp_accept(interface)?;
            if original == 1 {
                return Ok(());
            }
            self.arp_accept_original
                .insert(interface.to_string(), original);
        }
        self.kernel.set_arp_accept(interface)
    }

    /// Clean exit: every `arp_accept` this task changed gets its original
    /// value back (logged per interface).
    pub(super) fn restore_arp_accept(&mut self) {
        for (interface, value) in std::mem::take(&mut self.arp_accept_original) {
            match self.kernel.restore_arp_accept(&interface, value) {
                Ok(()) => tracing::info!(interface, arp_accept = value, "arp_accept restored"),
                Err(err) => tracing::warn!(interface, error = %err, "cannot restore arp_accept"),
            }
        }
    }
}
