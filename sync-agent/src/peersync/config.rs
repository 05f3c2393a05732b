//! `[peer]`: the MLAG peer session (SPEC 2): addresses, MLAG ids, VLAN
//! interfaces, timers, batching and the kernel-learning policy.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    bus::VlanMap,
    validate::{Problems, is_ifname},
};

/// What the agent does with `arp_accept` on the member ports.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArpAcceptPolicy {
    /// Set `net.ipv4.conf.<port>.arp_accept=1` so a synced reply creates an
    /// entry even when this switch did not ask (class `own` on the peer),
    /// and `net.ipv6.conf.<port>.accept_untracked_na=1` for the same with
    /// synced Neighbour Advertisements (the kernel also needs the port to
    /// forward; the agent leaves `forwarding` alone).
    #[default]
    Set,
    /// Leave both as they are: synced replies and NAs only complete
    /// entries this switch is resolving itself.
    Leave,
}

/// Where a synced reply of one MLAG port and VLAN is handed to the kernel,
/// when not on the member port itself (e.g. an SVI, or a kernel without
/// VLAN devices).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VlanInterface {
    /// MLAG port id.
    pub mlag_id: u32,
    /// Outer VLAN id.
    pub outer_vlan: u16,
    /// Inner VLAN id (0 for single-tagged).
    #[serde(default)]
    pub inner_vlan: u16,
    /// The interface; the reply is handed to it untagged.
    pub interface: String,
}

fn default_sync_port() -> u16 {
    sync_common::wire::DEFAULT_PORT
}
fn default_keepalive_ms() -> u64 {
    100
}
fn default_dead_ms() -> u64 {
    500
}
fn default_keepalive_rt_priority() -> u8 {
    10
}
fn default_batch_entries() -> usize {
    64
}
fn default_max_frame() -> usize {
    16 * 1024
}
fn default_flush_us() -> u64 {
    0
}
fn default_max_entries() -> usize {
    1 << 20
}
fn default_hello_timeout_ms() -> u64 {
    3000
}
fn default_max_learnt() -> usize {
    1 << 20
}
fn default_refresh_probes_per_s() -> u32 {
    200
}

/// Largest `max_learnt` and `max_entries` accepted (16M entries).
pub const MAX_TABLE: usize = 1 << 24;
/// Largest `refresh_probes_per_s` accepted.
pub const MAX_PROBES_PER_S: u32 = 100_000;

/// `[peer]`: the MLAG peer session (SPEC 2).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// This switch's address on the peer link.
    pub local_address: IpAddr,
    /// The peer's address on the peer link.
    pub peer_address: IpAddr,
    /// TCP port of the session and UDP port of the keepalives.
    #[serde(default = "default_sync_port")]
    pub port: u16,
    /// MLAG port id of each member port (both switches use the same id for
    /// the two halves of one MLAG). Default: position in `member_ports`, from 1.
    #[serde(default)]
    pub mlag_ids: BTreeMap<String, u32>,
    /// Interfaces for tagged replies (see [`VlanInterface`]).
    #[serde(default)]
    pub vlan_interfaces: Vec<VlanInterface>,
    /// Keepalive interval, milliseconds.
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_interval_ms: u64,
    /// Peer declared down after this long without a keepalive, milliseconds.
    #[serde(default = "default_dead_ms")]
    pub dead_interval_ms: u64,
    /// SCHED_FIFO priority (1-99) of the keepalive threads, the peer
    /// link's and MC-LAG's backup path's; 0 runs them at normal priority.
    /// A dead interval of tens of milliseconds is shorter than a saturated
    /// CPU may leave a normal thread waiting, and a keepalive sent late
    /// reads as a dead switch. Needs CAP_SYS_NICE; refused, the threads run
    /// at normal priority (logged, `show peer`).
    #[serde(default = "default_keepalive_rt_priority")]
    pub keepalive_rt_priority: u8,
    /// Most entries in one sync frame.
    #[serde(default = "default_batch_entries")]
    pub batch_max_entries: usize,
    /// Largest sync frame, bytes (header included).
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// How long a lone reply may wait for company before it is sent,
    /// microseconds. 0 (the default) sends as soon as no more replies are
    /// queued: a lone reply goes at once, a burst is batched by itself.
    /// Timers have millisecond granularity, so small non-zero values round up.
    #[serde(default = "default_flush_us")]
    pub flush_delay_us: u64,
    /// `arp_accept` handling on the ports synced replies are handed to.
    #[serde(default)]
    pub arp_accept: ArpAcceptPolicy,
    /// Most entries kept for resending; the oldest are forgotten beyond it.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// A connection whose hello has not arrived this long after it opened
    /// is closed (and counted, `hello_timeouts`), milliseconds.
    #[serde(default = "default_hello_timeout_ms")]
    pub hello_timeout_ms: u64,
    /// Most entries learnt from the peer remembered (the received table);
    /// beyond it the least recently learnt is forgotten (counted as
    /// `learnt_evicted`; its kernel entry stays and ages as usual).
    #[serde(default = "default_max_learnt")]
    pub max_learnt: usize,
    /// Pace of the SPEC 2.5 re-probe, ARP requests per second: a burst of
    /// thousands would be dropped by a switch's control-plane policer (the
    /// replies are what resyncs the peer). 200/s re-probes 10,000 entries in
    /// 50 s.
    #[serde(default = "default_refresh_probes_per_s")]
    pub refresh_probes_per_s: u32,
}

impl PeerConfig {
    /// The keepalives' timing and scheduling, for every path.
    pub fn keepalive_timing(&self) -> crate::liveness::KeepaliveTiming {
        crate::liveness::KeepaliveTiming {
            interval: std::time::Duration::from_millis(self.keepalive_interval_ms),
            dead: std::time::Duration::from_millis(self.dead_interval_ms),
            rt_priority: self.keepalive_rt_priority,
        }
    }

    /// The MLAG id of each member port, in `member_ports` order.
    pub fn mlag_ids_for(&self, member_ports: &[String]) -> Vec<(String, u32)> {
        member_ports
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.clone(),
                    self.mlag_ids.get(name).copied().unwrap_or(i as u32 + 1),
                )
            })
            .collect()
    }

    /// The VLANs each MLAG port hands to a VLAN interface, sorted: what the
    /// hello reports for the pair's consistency check.
    pub fn vlan_map(&self) -> VlanMap {
        let mut map = VlanMap::new();
        for v in &self.vlan_interfaces {
            map.entry(v.mlag_id)
                .or_default()
                .push((v.outer_vlan, v.inner_vlan));
        }
        for vlans in map.values_mut() {
            vlans.sort_unstable();
            vlans.dedup();
        }
        map
    }
}

impl PeerConfig {
    /// Every problem of the `[peer]` section; `member_ports` are the
    /// dataplane's, which the MLAG ids refer to.
    pub fn problems(&self, member_ports: &[String], out: &mut Problems) {
        let peer = self;
        let mut problem = |field: String, message: String| out.add(field, message);
        if peer.local_address == peer.peer_address {
            problem(
                "peer.peer_address".into(),
                format!("{} is also peer.local_address", peer.peer_address),
            );
        }
        if peer.local_address.is_ipv4() != peer.peer_address.is_ipv4() {
            problem(
                "peer.peer_address".into(),
                "must be the same address family as peer.local_address".into(),
            );
        }
        if peer.port == 0 {
            problem("peer.port".into(), "0 is not a port".into());
        }
        for name in peer.mlag_ids.keys() {
            if !member_ports.contains(name) {
                problem(
                    format!("peer.mlag_ids.{name}"),
                    format!("'{name}' is not in dataplane.member_ports"),
                );
            }
        }
        let mut ids = BTreeMap::new();
        for (name, id) in peer.mlag_ids_for(member_ports) {
            if id == 0 {
                problem(
                    format!("peer.mlag_ids.{name}"),
                    "0 is not an MLAG id".into(),
                );
            } else if let Some(other) = ids.insert(id, name.clone()) {
                problem(
                    format!("peer.mlag_ids.{name}"),
                    format!("MLAG id {id} is also used by {other}"),
                );
            }
        }
        for (i, v) in peer.vlan_interfaces.iter().enumerate() {
            if !ids.contains_key(&v.mlag_id) {
                problem(
                    format!("peer.vlan_interfaces[{i}].mlag_id"),
                    format!("no member port has MLAG id {}", v.mlag_id),
                );
            }
            if v.outer_vlan == 0 || v.outer_vlan > 4094 || v.inner_vlan > 4094 {
                problem(
                    format!("peer.vlan_interfaces[{i}]"),
                    "VLAN ids must be 1-4094 (inner 0 for single-tagged)".into(),
                );
            }
            if !is_ifname(&v.interface) {
                problem(
                    format!("peer.vlan_interfaces[{i}].interface"),
                    format!("'{}' is not a valid interface name", v.interface),
                );
            }
        }
        if !(10..=10_000).contains(&peer.keepalive_interval_ms) {
            problem(
                "peer.keepalive_interval_ms".into(),
                format!(
                    "{} must be between 10 and 10000",
                    peer.keepalive_interval_ms
                ),
            );
        }
        if peer.dead_interval_ms < 2 * peer.keepalive_interval_ms {
            problem(
                "peer.dead_interval_ms".into(),
                format!(
                    "{} must be at least twice peer.keepalive_interval_ms",
                    peer.dead_interval_ms
                ),
            );
        }
        if peer.keepalive_rt_priority > 99 {
            problem(
                "peer.keepalive_rt_priority".into(),
                format!(
                    "{} must be between 0 (normal scheduling) and 99",
                    peer.keepalive_rt_priority
                ),
            );
        }
        if !(1..=4096).contains(&peer.batch_max_entries) {
            problem(
                "peer.batch_max_entries".into(),
                format!("{} must be between 1 and 4096", peer.batch_max_entries),
            );
        }
        let smallest = sync_common::wire::HEADER_LEN
            + sync_common::wire::TLV_HEADER_LEN
            + sync_common::wire::DRIVER_HEADER_LEN
            + sync_common::capture::CAPTURE_BYTES;
        if peer.max_frame_bytes < smallest
            || peer.max_frame_bytes > sync_common::wire::MAX_FRAME_LEN
        {
            problem(
                "peer.max_frame_bytes".into(),
                format!(
                    "{} must be between {smallest} and {}",
                    peer.max_frame_bytes,
                    sync_common::wire::MAX_FRAME_LEN
                ),
            );
        }
        if peer.flush_delay_us > 1_000_000 {
            problem(
                "peer.flush_delay_us".into(),
                format!("{} must be at most 1000000", peer.flush_delay_us),
            );
        }
        if !(100..=60_000).contains(&peer.hello_timeout_ms) {
            problem(
                "peer.hello_timeout_ms".into(),
                format!("{} must be between 100 and 60000", peer.hello_timeout_ms),
            );
        }
        if peer.max_entries < 16 {
            problem(
                "peer.max_entries".into(),
                format!("{} must be at least 16", peer.max_entries),
            );
        }
        if !(16..=MAX_TABLE).contains(&peer.max_learnt) {
            problem(
                "peer.max_learnt".into(),
                format!("{} must be between 16 and {MAX_TABLE}", peer.max_learnt),
            );
        }
        if !(1..=MAX_PROBES_PER_S).contains(&peer.refresh_probes_per_s) {
            problem(
                "peer.refresh_probes_per_s".into(),
                format!(
                    "{} must be between 1 and {MAX_PROBES_PER_S}",
                    peer.refresh_probes_per_s
                ),
            );
        }
    }
}
