//! What operators see of the dataplane: `status`, `show counters`, `show
//! captured`. Field names are stable: they are what `-j` prints.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::classifier::AttachedMode;
use crate::mac::MacAddr;

/// `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// Instance name.
    pub instance: String,
    /// Agent version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Config file in use.
    pub config_file: String,
    /// Kernel id of the classifier program.
    pub program_id: Option<u32>,
    /// Kernel id of the pass-only program.
    pub pass_program_id: Option<u32>,
    /// Kernel id of `mlag_inject_tc`, when it is attached to the loopback's
    /// tc egress (injection by tc redirect).
    #[serde(default)]
    pub inject_redirect_program_id: Option<u32>,
    /// Whether `own` replies are synced.
    pub sync_own_replies: bool,
    /// Whether every VRRP MAC counts as shared.
    pub vrrp_prefix_is_shared: bool,
    /// Member ports.
    pub ports: Vec<PortStatus>,
    /// MAC table contents.
    pub peer_macs: Vec<MacAddr>,
    /// This switch's MACs.
    pub own_macs: Vec<MacAddr>,
    /// Shared MACs.
    pub shared_macs: Vec<MacAddr>,
    /// Config sections changed in the file that only a restart applies
    /// (filled in by the supervisor in the answer to `reload`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awaiting_restart: Vec<String>,
    /// The roles this agent runs (`dataplane`, `peer`, `mclag`, `fabric`,
    /// `rollout-center`, `rollout-device`; filled in by the router).
    #[serde(default)]
    pub roles: Vec<String>,
}

impl StatusReport {
    /// `status` of an agent that runs no `[dataplane]` (a config center or
    /// fabric server on a management host): no programs, ports or tables.
    pub fn without_dataplane(instance: &str, config_file: &str, uptime_s: u64) -> StatusReport {
        StatusReport {
            instance: instance.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s,
            config_file: config_file.to_string(),
            program_id: None,
            pass_program_id: None,
            inject_redirect_program_id: None,
            sync_own_replies: false,
            vrrp_prefix_is_shared: false,
            ports: Vec::new(),
            peer_macs: Vec::new(),
            own_macs: Vec::new(),
            shared_macs: Vec::new(),
            awaiting_restart: Vec::new(),
            roles: Vec::new(),
        }
    }
}

/// One member port in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortStatus {
    /// Interface name.
    pub name: String,
    /// Interface index, if the interface exists.
    pub ifindex: Option<u32>,
    /// Current MAC.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Attach mode, if the classifier is attached.
    pub xdp_mode: Option<AttachedMode>,
    /// Why it is not attached, if it is not.
    pub problem: Option<String>,
}

/// `show counters`: kernel counters summed over CPUs, plus the agent's own.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CountersReport {
    /// Frames seen by the classifier.
    pub seen: u64,
    /// ARP replies among them.
    pub arp_replies: u64,
    /// Replies classified peer.
    pub peer: u64,
    /// Replies classified own.
    pub own: u64,
    /// Replies classified shared.
    pub shared: u64,
    /// Malformed frames.
    pub malformed: u64,
    /// Replies lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Replies to none of the known MACs.
    pub unmatched: u64,
    /// Replies pushed to the ring buffer.
    pub captured: u64,
    /// Replies not captured because they were this agent's own injection
    /// seen again (generic mode).
    #[serde(default)]
    pub echo_suppressed: u64,
    /// Neighbour Advertisements seen (ND sync).
    #[serde(default)]
    pub na_adverts: u64,
    /// NAs classified peer.
    #[serde(default)]
    pub na_peer: u64,
    /// NAs classified own.
    #[serde(default)]
    pub na_own: u64,
    /// NAs classified shared (IPv6 VRRP MACs among them).
    #[serde(default)]
    pub na_shared: u64,
    /// NAs to none of the known MACs.
    #[serde(default)]
    pub na_unmatched: u64,
    /// IPv6 frames cut short or inconsistent on the way to an NA, and NAs breaking ND's rules.
    #[serde(default)]
    pub na_malformed: u64,
    /// NAs pushed to the ring buffer.
    #[serde(default)]
    pub na_captured: u64,
    /// NAs not captured: this agent's own injection seen again (generic mode).
    #[serde(default)]
    pub na_echo_suppressed: u64,
    /// IPv6 frames with more extension headers than the classifier follows.
    #[serde(default)]
    pub ipv6_unfollowed: u64,
    /// The agent's side.
    pub agent: AgentCounters,
    /// Replies captured on each member port, by class. Counted by the agent
    /// as it reads the ring buffer (the kernel's counters above are per
    /// CPU, not per port); a port that captured nothing is absent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub per_port: std::collections::BTreeMap<String, PortCaptures>,
}

/// Replies captured on one member port, by family and class (only `peer`
/// and `own` are ever captured).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortCaptures {
    /// ARP replies classified peer.
    pub peer: u64,
    /// ARP replies classified own.
    pub own: u64,
    /// Neighbour Advertisements classified peer.
    pub na_peer: u64,
    /// Neighbour Advertisements classified own.
    pub na_own: u64,
}

/// Counters kept by the agent process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentCounters {
    /// Records read from the ring buffer.
    pub records_read: u64,
    /// Records that failed validation.
    pub invalid_records: u64,
    /// Replies the agent received from the reader.
    pub replies_received: u64,
    /// Control requests that could not be parsed.
    pub bad_requests: u64,
}

/// One entry of `show captured`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CapturedEntry {
    /// Member port it arrived on (name, or `ifindex N` if unknown).
    pub port: String,
    /// Its index.
    pub ifindex: u32,
    /// `peer` or `own`.
    pub class: String,
    /// Outer VLAN id (0 untagged).
    pub outer_vlan: u16,
    /// Inner VLAN id (0 unless double-tagged).
    pub inner_vlan: u16,
    /// Tags on the frame.
    pub vlan_count: u8,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// ARP sender MAC.
    pub sender_mac: MacAddr,
    /// ARP sender IP.
    pub sender_ip: std::net::Ipv4Addr,
    /// ARP target MAC.
    pub target_mac: MacAddr,
    /// ARP target IP.
    pub target_ip: std::net::Ipv4Addr,
    /// Milliseconds since capture.
    pub age_ms: u64,
    /// Frame length on the wire.
    pub frame_len: u16,
    /// For a Neighbour Advertisement: its target address (the ARP fields
    /// are then zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nd_target: Option<std::net::Ipv6Addr>,
    /// For a Neighbour Advertisement: its target link-layer address option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nd_target_mac: Option<MacAddr>,
}

/// `show captured`: newest first (a JSON array).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct CapturedList(pub Vec<CapturedEntry>);

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self;

        writeln!(
            f,
            "instance {} (pid {}, version {}, up {}s)",
            s.instance, s.pid, s.version, s.uptime_s
        )?;
        writeln!(f, "config   {}", s.config_file)?;
        if !s.roles.is_empty() {
            writeln!(f, "roles    {}", s.roles.join(" "))?;
        }
        writeln!(
            f,
            "programs mlag_classify id {}  mlag_pass id {}{}",
            or_dash(s.program_id),
            or_dash(s.pass_program_id),
            s.inject_redirect_program_id
                .map(|id| format!("  mlag_inject_tc id {id} (tc egress of lo)"))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "policy   sync_own_replies={} vrrp_prefix_is_shared={}",
            s.sync_own_replies, s.vrrp_prefix_is_shared
        )?;
        writeln!(
            f,
            "{:<16} {:>7} {:<17} {:<5} {:<8} problem",
            "port", "ifindex", "mac", "up", "xdp"
        )?;
        for p in &s.ports {
            let mode = p.xdp_mode.map(|m| format!("{m:?}").to_lowercase());
            writeln!(
                f,
                "{:<16} {:>7} {:<17} {:<5} {:<8} {}",
                p.name,
                or_dash(p.ifindex),
                or_dash(p.mac),
                p.up,
                or_dash(mode),
                p.problem.as_deref().unwrap_or("")
            )?;
        }
        let list = |macs: &[crate::mac::MacAddr]| {
            macs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(f, "peer macs   {}", list(&s.peer_macs))?;
        writeln!(f, "own macs    {}", list(&s.own_macs))?;
        writeln!(f, "shared macs {}", list(&s.shared_macs))?;
        if !s.awaiting_restart.is_empty() {
            writeln!(
                f,
                "changed in the file, applied at the next restart: {}",
                s.awaiting_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for CountersReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self;

        let rows = [
            ("seen", c.seen),
            ("arp_replies", c.arp_replies),
            ("peer", c.peer),
            ("own", c.own),
            ("shared", c.shared),
            ("unmatched", c.unmatched),
            ("malformed", c.malformed),
            ("captured", c.captured),
            ("ringbuf_full", c.ringbuf_full),
            ("echo_suppressed", c.echo_suppressed),
            ("na_adverts", c.na_adverts),
            ("na_peer", c.na_peer),
            ("na_own", c.na_own),
            ("na_shared", c.na_shared),
            ("na_unmatched", c.na_unmatched),
            ("na_malformed", c.na_malformed),
            ("na_captured", c.na_captured),
            ("na_echo_suppressed", c.na_echo_suppressed),
            ("ipv6_unfollowed", c.ipv6_unfollowed),
        ];
        writeln!(f, "kernel (mlag_counters, all CPUs)")?;
        for (name, value) in rows {
            writeln!(f, "  {name:<16} {value}")?;
        }
        writeln!(f, "agent")?;
        let a = &c.agent;
        for (name, value) in [
            ("records_read", a.records_read),
            ("replies_received", a.replies_received),
            ("invalid_records", a.invalid_records),
            ("bad_requests", a.bad_requests),
        ] {
            writeln!(f, "  {name:<16} {value}")?;
        }
        if !c.per_port.is_empty() {
            writeln!(f, "captured per port (peer own na_peer na_own)")?;
            for (port, p) in &c.per_port {
                writeln!(
                    f,
                    "  {port:<16} {} {} {} {}",
                    p.peer, p.own, p.na_peer, p.na_own
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for CapturedList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = &self.0;

        if entries.is_empty() {
            writeln!(f, "no replies captured yet")?;
            return Ok(());
        }
        writeln!(
            f,
            "{:<12} {:<6} {:<9} {:<15} {:<17} {:<15} {:<17} {:>8}",
            "port", "class", "vlans", "sender ip", "sender mac", "target ip", "target mac", "age"
        )?;
        for e in entries {
            let vlans = match e.vlan_count {
                0 => "-".to_string(),
                1 => e.outer_vlan.to_string(),
                _ => format!("{}/{}", e.outer_vlan, e.inner_vlan),
            };
            writeln!(
                f,
                "{:<12} {:<6} {:<9} {:<15} {:<17} {:<15} {:<17} {:>6}ms",
                e.port,
                e.class,
                vlans,
                e.sender_ip,
                e.sender_mac,
                e.target_ip,
                e.target_mac,
                e.age_ms
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_report_has_the_documented_top_level_integers() {
        let value = serde_json::to_value(CountersReport::default()).unwrap();
        for field in [
            "seen",
            "arp_replies",
            "peer",
            "own",
            "shared",
            "malformed",
            "ringbuf_full",
        ] {
            assert!(value[field].is_u64(), "{field}");
        }
    }
}
