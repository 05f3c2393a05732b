//! ND sync (issue 15): Neighbour Advertisements get what ARP replies get —
//! captured by the classifier (`sync_common::nd`), batched into ND sub-type
//! sync frames, handed to the peer's own ND receive path on its twin port
//! with `BPF_PROG_RUN` live frames, withdrawn when this switch's kernel
//! drops them, and re-probed after the peer restarts.
//!
//! What the kernel needs before it takes an injected NA (Linux 6.18,
//! `ndisc_recv_na`), and what is done about it:
//! - The Ethernet destination must be the receiving interface's MAC or a
//!   group it listens to (otherwise "other host"), and the IPv6 destination
//!   one of its addresses or a joined group (otherwise the packet is
//!   forwarded or dropped, never seen by ND). The ICMPv6 checksum covers the
//!   IPv6 addresses, so it is recomputed after any change.
//! - An NA answering *this* switch's solicitation (class `peer` on the
//!   sender: addressed to this switch's MAC and to the address it asked
//!   from) is injected with only the Ethernet destination rewritten to the
//!   port's MAC: solicited, it turns the waiting entry REACHABLE
//!   (`LearntBy::KernelNd`).
//! - Every other NA (class `own` on the peer: addressed to the peer's own
//!   address; and a `peer`-class NA this switch learns from its own port)
//!   is readdressed to all nodes, `ff02::1` / `33:33:00:00:00:01`, with the
//!   Solicited flag cleared: the kernel drops a multicast NA that claims to
//!   be solicited. As an unsolicited NA it updates an existing entry to
//!   STALE with the advertised MAC, and creates one only where
//!   `accept_untracked_na` allows (1) *and* the interface forwards
//!   (`net.ipv6.conf.<if>.forwarding=1`, RFC 9131 is for routers)
//!   (`LearntBy::KernelNdAllNodes`). STALE is deliberate: the kernel
//!   confirms reachability itself on first use.
//! - `accept_untracked_na=1` is set on the member ports and VLAN targets,
//!   like `arp_accept`, under the same policy (`peer.arp_accept = "set"`,
//!   the default; `"leave"` leaves both alone); the previous value is put
//!   back at clean exit. `forwarding` is never touched: it is the switch's
//!   routing decision, and without it the kernel refuses to create
//!   entries from NAs whatever the agent does.
//! - An NA without a Target Link-Layer Address option teaches no MAC; it
//!   is not synced (`nd.no_lladdr`).
//! - Only when injection fails is the entry written over netlink
//!   (REACHABLE), logged and counted (`nd.netlink_fallback`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv6Addr,
    time::Instant,
};

use lru::LruCache;
use serde::{Deserialize, Serialize};
use sync_common::{
    capture::Class,
    nd::{self, Delivery},
    wire::{self, DriverHeader, Encoder, MessageType, NdDelete, SubType},
};

use super::report::ArpReportEntry;
use super::{
    config::ArpAcceptPolicy,
    learn::{Learnt, LearntBy, learnt_names, remember},
    table::SendTable,
    task::Task,
    tx::TxBuffers,
};
use crate::{
    bus::{Captured, CapturedFrame},
    mac::MacAddr,
    southbound::neighbours6::{Neighbour6, Neighbour6Event},
};

/// Identity of a synced ND entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NdKey {
    /// VRF id.
    pub vrf: u32,
    /// MLAG port id.
    pub mlag_id: u32,
    /// The advertised (target) address.
    pub ip: Ipv6Addr,
}

/// Counters of ND sync (`show peer`, under `counters.nd`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NdStats {
    /// Advertisements captured here and put in the send table.
    pub captured: u64,
    /// Captured advertisements that could not be synced: no Target
    /// Link-Layer Address option, and none could be added.
    pub no_lladdr: u64,
    /// Captured advertisements without the option (Linux's answer to a
    /// unicast probe): the Ethernet source was added as the option.
    #[serde(default)]
    pub lladdr_from_source: u64,
    /// ND sub-type sync frames sent.
    pub frames_sent: u64,
    /// ND entries sent (resends included).
    pub entries_sent: u64,
    /// ND deletes sent.
    pub deletes_sent: u64,
    /// ND entries received.
    pub entries_received: u64,
    /// Received entries handed to the kernel's ND path.
    pub injected: u64,
    /// Received entries written over netlink because injection failed.
    pub netlink_fallback: u64,
    /// `peer`-class advertisements also handed to this switch's kernel.
    pub learnt_here: u64,
    /// ND deletes received.
    pub deletes_received: u64,
    /// Neighbours learnt from the peer deleted because it withdrew them.
    pub learnt_deleted: u64,
    /// Deletes for entries not learnt from the peer: left alone.
    pub deletes_not_learnt: u64,
    /// Entries withdrawn (this switch's kernel dropped them).
    pub withdrawn: u64,
    /// Entries held back because the peer does not announce ND sync.
    pub held_peer_without_nd: u64,
}

/// All of ND sync's state, one field of the peer-sync task.
pub(super) struct NdState {
    /// What this switch captured and sends.
    pub(super) table: SendTable<NdKey>,
    /// What the peer synced and this switch's kernel learnt.
    pub(super) learned: LruCache<NdKey, Learnt>,
    /// `peer`-class advertisements this switch handed to its own kernel.
    pub(super) learnt_here: HashMap<(u32, Ipv6Addr), LearntBy>,
    /// `accept_untracked_na` of each interface before this task set it.
    pub(super) untracked_original: BTreeMap<String, u8>,
    /// Removals this agent caused (a delete on the peer's word), not to be
    /// withdrawn back.
    pub(super) own_deletes: HashSet<(u32, Ipv6Addr)>,
    pub(super) stats: NdStats,
}

impl NdState {
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            table: SendTable::new(max_entries),
            learned: LruCache::unbounded(),
            learnt_here: HashMap::new(),
            untracked_original: BTreeMap::new(),
            own_deletes: HashSet::new(),
            stats: NdStats::default(),
        }
    }
}

/// [`super::aging::withdraws`] for the IPv6 neighbour cache: an entry
/// removed or turned FAILED.
pub(super) fn withdraws(event: &Neighbour6Event) -> bool {
    match event {
        Neighbour6Event::Removed(_) => true,
        Neighbour6Event::Changed(n) => n.state == "FAILED",
    }
}

/// `frame` (an advertisement without a Target Link-Layer Address option)
/// with one added for `mac`: the IPv6 packet ends at its payload length
/// (padding dropped), grows by 8 bytes, and the checksum is recomputed.
fn with_target_lladdr(frame: &[u8], mac: [u8; 6]) -> Option<Vec<u8>> {
    let nd::Parsed::Advert(advert) = nd::parse(frame) else {
        return None;
    };
    let ip = advert.ip_offset as usize;
    let end = advert.ip_end as usize;
    let mut out = frame.get(..end)?.to_vec();
    out.extend_from_slice(&[nd::OPT_TARGET_LLADDR, 1]);
    out.extend_from_slice(&mac);
    let payload = u16::from_be_bytes([out[ip + 4], out[ip + 5]]).checked_add(8)?;
    out[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
    let nd::Parsed::Advert(advert) = nd::parse(&out[..]) else {
        return None;
    };
    // Unicast to the same MAC: only the checksum changes.
    let dst: [u8; 6] = out[..6].try_into().ok()?;
    nd::rewrite(&mut out, &advert, Delivery::Unicast { mac: dst }).then_some(out)
}

/// The frame with its tags removed (for a VLAN interface), or as it is;
/// inline up to a captured frame's size (no heap for a real NA).
fn untag(original: &[u8], advert: &nd::Advert) -> Option<CapturedFrame> {
    if advert.vlan_count == 0 {
        return Some(CapturedFrame::from_slice(original));
    }
    let mut out = CapturedFrame::new();
    out.extend_from_slice(original.get(..12)?);
    out.extend_from_slice(&nd::ETHERTYPE_IPV6.to_be_bytes());
    out.extend_from_slice(original.get(advert.ip_offset as usize..)?);
    Some(out)
}

impl Task {
    /// A captured advertisement: into the ND send table, learnt here too
    /// when it answered the peer (class `peer`), then sent.
    pub(super) async fn process_captured_nd(&mut self, captured: Captured) {
        let Some(addresses) = captured.nd else {
            return;
        };
        let Some(port) = self
            .ports
            .iter()
            .find(|p| p.ifindex == Some(captured.ifindex))
            .cloned()
        else {
            self.reject(
                "capture_on_unknown_port",
                &format!("ifindex {}", captured.ifindex),
            );
            return;
        };
        let mut frame = captured.frame.clone();
        let mac = match addresses.target_mac {
            Some(mac) => mac,
            None => {
                // Linux answers a unicast solicitation (a probe) without the
                // option; the advertiser's Ethernet source is its MAC. The
                // option is added so the peer's kernel learns it too.
                let Some(with_option) = with_target_lladdr(&frame, addresses.src_mac) else {
                    self.nd.stats.no_lladdr += 1;
                    return;
                };
                self.nd.stats.lladdr_from_source += 1;
                frame = with_option.into();
                addresses.src_mac
            }
        };
        let captured = Captured { frame, ..captured };
        self.nd.stats.captured += 1;
        let key = NdKey {
            vrf: 0,
            mlag_id: port.mlag_id,
            ip: Ipv6Addr::from(addresses.target),
        };
        let driver = DriverHeader {
            mlag_id: port.mlag_id,
            outer_vlan: captured.outer_vlan,
            inner_vlan: captured.inner_vlan,
            vrf: 0,
            class: captured.class as u8,
            vlan_count: captured.vlan_count,
        };
        if captured.class == Class::Peer
            && let Some(port_mac) = port.mac
            && captured.dst_mac != port_mac
        {
            self.learn_here_nd(&captured, key.ip, MacAddr(mac)).await;
        }
        self.nd
            .table
            .upsert(key, driver, &captured.frame, MacAddr(mac));
        if !self.established() {
            self.stats.queued_while_down += 1;
            return;
        }
        self.schedule_flush().await;
    }

    /// SPEC 1.2 for ND: the advertisement answered the peer's solicitation
    /// but came through this switch's port; the kernel dropped it (another
    /// host's MAC, and the peer's IPv6 address). Readdressed to all nodes,
    /// unsolicited, it updates or (`accept_untracked_na`) creates the entry
    /// here.
    async fn learn_here_nd(&mut self, captured: &Captured, ip: Ipv6Addr, mac: MacAddr) {
        let mut frame = captured.frame.clone();
        let nd::Parsed::Advert(advert) = nd::parse(&frame[..]) else {
            return;
        };
        if !nd::rewrite(&mut frame, &advert, Delivery::AllNodes) {
            return;
        }
        let by = self
            .inject_nd(
                &frame,
                captured.ifindex,
                ip,
                mac,
                LearntBy::KernelNdAllNodes,
            )
            .await;
        if let Some(by) = by {
            self.nd.stats.learnt_here += 1;
            if self.nd.learnt_here.len() >= self.config.max_entries {
                self.nd.learnt_here.clear();
            }
            self.nd.learnt_here.insert((captured.ifindex, ip), by);
        }
    }

    /// Injects, or falls back to netlink; what reached the kernel and how.
    async fn inject_nd(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
        by: LearntBy,
    ) -> Option<LearntBy> {
        match self.kernel.inject(frame, ifindex) {
            Ok(()) => Some(by),
            Err(err) => {
                self.nd.stats.netlink_fallback += 1;
                self.local_failure(
                    "inject_failed",
                    &format!(
                        "BPF_PROG_RUN live frame (NA) on ifindex {ifindex}: {err}; writing {ip} over netlink instead"
                    ),
                );
                if let Err(err) = self.kernel.set_reachable6(ifindex, ip, mac).await {
                    tracing::error!(error = %err, "netlink fallback failed too");
                    return None;
                }
                Some(LearntBy::NetlinkFallback)
            }
        }
    }

    /// A synced advertisement: to this switch's kernel on the twin port (or
    /// the VLAN interface configured for its MLAG id and tags).
    pub(super) async fn learn_nd(&mut self, driver: &DriverHeader, original: &[u8]) {
        self.nd.stats.entries_received += 1;
        let Some(port_at) = self.ports.iter().position(|p| p.mlag_id == driver.mlag_id) else {
            self.reject(
                "unknown_mlag_id",
                &format!(
                    "ND entry for MLAG id {} which no member port has",
                    driver.mlag_id
                ),
            );
            return;
        };
        let nd::Parsed::Advert(advert) = nd::parse(original) else {
            return;
        };
        let Some(addresses) = nd::addresses(original, &advert) else {
            return;
        };
        let Some(lladdr) = addresses.target_mac else {
            self.reject(
                "nd_without_lladdr",
                "synced NA has no target link-layer address",
            );
            return;
        };
        let mapped = self.config.vlan_interfaces.iter().position(|v| {
            v.mlag_id == driver.mlag_id
                && v.outer_vlan == advert.outer_vlan
                && v.inner_vlan == advert.inner_vlan
        });
        let (ifindex, port_mac, mut frame) = match mapped {
            Some(at) => {
                let name = self.config.vlan_interfaces[at].interface.clone();
                let Some((ifindex, mac)) = self.vlan_target(&name).await else {
                    self.reject(
                        "vlan_interface_missing",
                        &format!(
                            "interface {name} for MLAG id {} VLAN {}",
                            driver.mlag_id, advert.outer_vlan
                        ),
                    );
                    return;
                };
                let _ = self.set_untracked_na_on(&name);
                let Some(untagged) = untag(original, &advert) else {
                    return;
                };
                (ifindex, mac, untagged)
            }
            None => {
                let port = &self.ports[port_at];
                let (Some(ifindex), Some(mac)) = (port.ifindex, port.mac) else {
                    let detail = format!("member port {} is not present", port.name);
                    self.reject("twin_port_missing", &detail);
                    return;
                };
                (ifindex, mac, CapturedFrame::from_slice(original))
            }
        };
        let (outer_vlan, inner_vlan) = (advert.outer_vlan, advert.inner_vlan);
        // The frame handed over may have lost its tags: parse it again.
        let nd::Parsed::Advert(advert) = nd::parse(&frame[..]) else {
            return;
        };
        let (delivery, by) = if driver.class == Class::Peer as u8 {
            (Delivery::Unicast { mac: port_mac.0 }, LearntBy::KernelNd)
        } else {
            (Delivery::AllNodes, LearntBy::KernelNdAllNodes)
        };
        if !nd::rewrite(&mut frame, &advert, delivery) {
            return;
        }
        let ip = Ipv6Addr::from(addresses.target);
        let mac = MacAddr(lladdr);
        let Some(by) = self.inject_nd(&frame, ifindex, ip, mac, by).await else {
            return;
        };
        if by != LearntBy::NetlinkFallback {
            self.nd.stats.injected += 1;
        }
        let key = NdKey {
            vrf: driver.vrf,
            mlag_id: driver.mlag_id,
            ip,
        };
        let names = learnt_names(&self.ports, &self.config.vlan_interfaces, port_at, mapped);
        let learnt = Learnt {
            ifindex,
            mac,
            port: String::new(),
            interface: String::new(),
            mlag_id: driver.mlag_id,
            outer_vlan,
            inner_vlan,
            class: driver.class,
            by,
            at: Instant::now(),
        };
        if remember(
            &mut self.nd.learned,
            key,
            learnt,
            names,
            self.config.max_learnt,
        ) {
            self.stats.learnt_evicted += 1;
        }
    }

    /// The peer withdrew an ND entry: the neighbour learnt from it goes.
    pub(super) async fn unlearn_nd(&mut self, delete: &NdDelete) {
        self.nd.stats.deletes_received += 1;
        let key = NdKey {
            vrf: delete.vrf,
            mlag_id: delete.mlag_id,
            ip: Ipv6Addr::from(delete.ip),
        };
        let Some(learnt) = self.nd.learned.pop(&key) else {
            self.nd.stats.deletes_not_learnt += 1;
            return;
        };
        match self.kernel.delete6(learnt.ifindex, key.ip).await {
            Ok(present) => {
                self.nd.stats.learnt_deleted += 1;
                if present {
                    if self.nd.own_deletes.len() >= 4096 {
                        self.nd.own_deletes.clear();
                    }
                    self.nd.own_deletes.insert((learnt.ifindex, key.ip));
                }
            }
            Err(err) => {
                self.stats.learnt_delete_failed += 1;
                if self.log.admit("learnt_delete_failed").is_some() {
                    tracing::warn!(ip = %key.ip, interface = learnt.interface, error = %err, "cannot delete an IPv6 neighbour the peer withdrew");
                }
            }
        }
    }

    /// Sends every pending ND entry and delete in ND sub-type frames (after
    /// the ARP ones, same sequence numbers). False when something is left
    /// (writer full or session gone): the flush timer comes back.
    pub(super) fn flush_nd(&mut self, tx: &mut TxBuffers, max_frame: usize) -> bool {
        let peer_speaks_nd = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .is_some_and(|p| p.capabilities & wire::capability::ND_SYNC != 0);
        if !peer_speaks_nd {
            // Held (not dropped): a peer upgraded later gets them.
            let pending = self.nd.table.pending() as u64;
            if pending > 0 && self.log.admit("peer_without_nd").is_some() {
                tracing::warn!(
                    pending,
                    "peer does not announce ND sync; IPv6 neighbours held back"
                );
            }
            self.nd.stats.held_peer_without_nd = pending;
            return true;
        }
        while self.nd.table.pending() > 0 || self.nd.table.pending_deletes() > 0 {
            if !self.writer_has_room() {
                return false;
            }
            let seq = self.next_seq;
            tx.nd_sent.clear();
            tx.nd_deleted.clear();
            let Ok(mut encoder) = Encoder::new(
                tx.encode.buf(max_frame),
                MessageType::Sync,
                SubType::Nd,
                seq,
            ) else {
                return false;
            };
            while tx.nd_sent.len() < self.config.batch_max_entries {
                let Some((key, entry)) = self.nd.table.next_dirty() else {
                    break;
                };
                match encoder.nd_entry(&entry.driver, &entry.frame) {
                    Ok(()) => {
                        tx.nd_sent.push(key);
                        self.nd.table.discard_dirty(key);
                    }
                    Err(_) if !tx.nd_sent.is_empty() => break,
                    Err(_) => {
                        self.nd.table.discard_dirty(key);
                        self.local_failure(
                            "entry_too_large",
                            "captured NA does not fit a sync frame",
                        );
                    }
                }
            }
            let room = self.config.batch_max_entries - tx.nd_sent.len();
            for key in self.nd.table.deletes_waiting().take(room) {
                let delete = NdDelete {
                    mlag_id: key.mlag_id,
                    vrf: key.vrf,
                    ip: key.ip.octets(),
                };
                if encoder.nd_delete(&delete).is_err() {
                    break;
                }
                tx.nd_deleted.push(key);
            }
            if tx.nd_sent.is_empty() && tx.nd_deleted.is_empty() {
                if self.nd.table.pending() == 0 {
                    return true;
                }
                continue;
            }
            let len = encoder.finish();
            let frame = tx.encode.frame(len);
            if !self.send(frame) {
                for &key in &tx.nd_sent {
                    self.nd.table.mark_sent(key, 0);
                    self.nd.table.mark_all_one(key);
                }
                return false;
            }
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            self.stats.frames_sent += 1;
            self.nd.stats.frames_sent += 1;
            self.nd.stats.entries_sent += tx.nd_sent.len() as u64;
            self.nd.stats.deletes_sent += tx.nd_deleted.len() as u64;
            for &key in &tx.nd_sent {
                self.nd.table.mark_sent(key, seq);
            }
            for &key in &tx.nd_deleted {
                self.nd.table.mark_delete_sent(key, seq);
            }
        }
        true
    }

    /// Sets `accept_untracked_na=1` on every present member port (policy
    /// `set`, shared with `arp_accept`).
    pub(super) fn apply_untracked_na(&mut self) {
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
            if let Err(err) = self.set_untracked_na_on(&name) {
                tracing::warn!(interface = name, error = %err, "cannot set accept_untracked_na; synced NAs for neighbours this switch does not know will not create entries");
            }
        }
    }

    fn set_untracked_na_on(
        &mut self,
        interface: &str,
    ) -> Result<(), crate::southbound::neighbours::NeighbourError> {
        if self.config.arp_accept != ArpAcceptPolicy::Set {
            return Ok(());
        }
        if !self.nd.untracked_original.contains_key(interface) {
            let original = self.kernel.untracked_na(interface)?;
            if original == 1 {
                return Ok(());
            }
            self.nd
                .untracked_original
                .insert(interface.to_string(), original);
        }
        self.kernel.set_untracked_na(interface, 1)
    }

    /// Clean exit: `accept_untracked_na` back to what it was.
    pub(super) fn restore_untracked_na(&mut self) {
        for (interface, value) in std::mem::take(&mut self.nd.untracked_original) {
            match self.kernel.set_untracked_na(&interface, value) {
                Ok(()) => tracing::info!(
                    interface,
                    accept_untracked_na = value,
                    "accept_untracked_na restored"
                ),
                Err(err) => {
                    tracing::warn!(interface, error = %err, "cannot restore accept_untracked_na")
                }
            }
        }
    }
}

/// `show nd` as the task knows it (the kernel column is filled in by the
/// asker, as for `show arp`).
#[derive(Debug)]
pub(super) struct NdSnapshot {
    pub(super) entries: Vec<ArpReportEntry>,
    pub(super) ifindexes: Vec<u32>,
    /// Entries whose kernel state is read: index, ifindex, address.
    pub(super) watched: Vec<(usize, u32, Ipv6Addr)>,
}

impl NdSnapshot {
    /// The entries with `kernel_state` read from the kernel now.
    pub(super) async fn with_kernel_state(
        mut self,
        kernel: &dyn super::learn::Kernel,
    ) -> Vec<ArpReportEntry> {
        let Ok(list) = kernel.neighbours6(&self.ifindexes).await else {
            return self.entries;
        };
        let held: BTreeMap<(u32, Ipv6Addr), &Neighbour6> =
            list.iter().map(|n| ((n.ifindex, n.ip), n)).collect();
        for (i, ifindex, ip) in self.watched {
            let held = held.get(&(ifindex, ip));
            let entry = &mut self.entries[i];
            entry.kernel_state = Some(held.map_or("absent", |n| n.state).to_string());
            if entry.direction == "received" {
                entry.confirmed = Some(held.is_some_and(|n| {
                    n.mac == Some(entry.mac) && !matches!(n.state, "FAILED" | "INCOMPLETE" | "NONE")
                }));
            }
        }
        self.entries
    }
}

impl Task {
    /// `show nd`: ND entries sent (with their ack state) and learnt from the
    /// peer, with how each reached the kernel.
    pub(super) fn nd_report(&self) -> NdSnapshot {
        let mut ifindexes: Vec<u32> = self.ports.iter().filter_map(|p| p.ifindex).collect();
        ifindexes.extend(self.vlan_targets.values().map(|(i, _)| *i));
        let class_name = |c: u8| Class::from_u8(c).map_or("?", Class::name).to_string();
        let mut entries = Vec::new();
        let mut watched = Vec::new();
        let mut sent: Vec<_> = self.nd.table.iter().collect();
        sent.sort_by_key(|(key, _)| **key);
        for (key, e) in sent {
            let port = self.ports.iter().find(|p| p.mlag_id == key.mlag_id);
            let here = port
                .and_then(|p| p.ifindex)
                .and_then(|i| self.nd.learnt_here.get(&(i, key.ip)).map(|by| (i, *by)));
            if let Some((ifindex, _)) = here {
                watched.push((entries.len(), ifindex, key.ip));
            }
            entries.push(ArpReportEntry {
                ip: key.ip.to_string(),
                mac: e.mac,
                port: port.map_or_else(|| format!("mlag {}", key.mlag_id), |p| p.name.clone()),
                mlag_id: key.mlag_id,
                outer_vlan: e.driver.outer_vlan,
                inner_vlan: e.driver.inner_vlan,
                direction: "sent".into(),
                class: class_name(e.driver.class),
                age_ms: e.updated.elapsed().as_millis() as u64,
                how: if e.seq == 0 {
                    "queued"
                } else if !self.is_acked(e.seq) {
                    "sent"
                } else {
                    "acked"
                }
                .into(),
                kernel_state: None,
                learnt_here: here.map(|(_, by)| by.name().to_string()),
                confirmed: None,
            });
        }
        let mut learnt: Vec<(&NdKey, &Learnt)> = self.nd.learned.iter().collect();
        learnt.sort_by_key(|(key, l)| (l.ifindex, key.ip));
        for (key, l) in learnt {
            watched.push((entries.len(), l.ifindex, key.ip));
            entries.push(ArpReportEntry {
                ip: key.ip.to_string(),
                mac: l.mac,
                port: if l.interface == l.port {
                    l.port.clone()
                } else {
                    format!("{} via {}", l.port, l.interface)
                },
                mlag_id: l.mlag_id,
                outer_vlan: l.outer_vlan,
                inner_vlan: l.inner_vlan,
                direction: "received".into(),
                class: class_name(l.class),
                age_ms: l.at.elapsed().as_millis() as u64,
                how: l.by.name().into(),
                kernel_state: None,
                learnt_here: None,
                confirmed: None,
            });
        }
        NdSnapshot {
            entries,
            ifindexes,
            watched,
        }
    }
}

impl Task {
    /// A change to this switch's IPv6 neighbour cache: an entry this switch
    /// synced that the kernel dropped (or marked FAILED) is withdrawn from
    /// the peer, as for ARP (`aging.rs`); a removal this agent caused on the
    /// peer's word is not sent back.
    pub(super) async fn process_neighbour6(&mut self, event: Neighbour6Event) {
        if !withdraws(&event) {
            return;
        }
        let (n, removed) = match event {
            Neighbour6Event::Removed(n) => (n, true),
            Neighbour6Event::Changed(n) => (n, false),
        };
        let ours = removed && self.nd.own_deletes.remove(&(n.ifindex, n.ip));
        let synced = self.ports.iter().any(|p| {
            self.nd.table.contains(&NdKey {
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
            let key = NdKey {
                vrf: 0,
                mlag_id,
                ip: n.ip,
            };
            if ours {
                self.nd.table.forget(key);
            } else if self.nd.table.withdraw(key) {
                self.nd.stats.withdrawn += 1;
                withdrawn = true;
                tracing::debug!(ip = %n.ip, mlag_id, removed, "ND entry withdrawn: the kernel dropped it");
            }
        }
        if withdrawn && self.established() {
            self.schedule_flush().await;
        }
    }
}
