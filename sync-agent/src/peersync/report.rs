//! What peer sync shows operators: `show peer` ([`PeerReport`] with its
//! [`Stats`]) and `show arp` (a list of [`ArpReportEntry`], rendered as text
//! through [`ArpTable`]). Only reports here: the task fills them in
//! (`events.rs`). JSON field names are what `show peer -j`/`show arp -j`
//! print and tests parse: never rename them.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// Counters of peer sync.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Sessions established.
    pub sessions_established: u64,
    /// Sessions lost.
    pub sessions_lost: u64,
    /// Sync frames sent.
    pub frames_sent: u64,
    /// Entries sent (resends included).
    pub entries_sent: u64,
    /// Sync frames received.
    pub frames_received: u64,
    /// Entries received.
    pub entries_received: u64,
    /// Acks received.
    pub acks_received: u64,
    /// Entries handed to the kernel's ARP path.
    pub injected: u64,
    /// Entries written over netlink because injection failed.
    pub netlink_fallback: u64,
    /// Neighbour refreshes (peer came back).
    pub refreshes: u64,
    /// Entries moved to PROBE by refreshes.
    pub refresh_probes: u64,
    /// Refreshes finished (every probe sent or refused).
    #[serde(default)]
    pub refreshes_done: u64,
    /// Replies captured while no session was up (sent later).
    pub queued_while_down: u64,
    /// `peer`-class replies also handed to this switch's own kernel (SPEC 1.2).
    #[serde(default)]
    pub learnt_here: u64,
    /// Session events MC-LAG could not take (its queue was full): dropped
    /// rather than stall peer sync. Added by the refactor; `default` keeps
    /// older JSON readable.
    #[serde(default)]
    pub session_events_dropped: u64,
    /// Twin-port states inference could not take (its queue was full).
    #[serde(default)]
    pub infos_dropped: u64,
    /// Inputs refused, by reason: what the peer (or a stranger) sent.
    pub rejected: BTreeMap<String, u64>,
    /// Failures of this switch, by reason (`inject_failed`,
    /// `entry_too_large`): not the peer's doing, so kept apart from
    /// `rejected`.
    #[serde(default)]
    pub local_failures: BTreeMap<String, u64>,
    /// Sessions closed because the peer stopped reading: the writer's queue
    /// was full (entries are kept and resent on the next session).
    #[serde(default)]
    pub sessions_stalled: u64,
    /// Stale sessions (no hello yet, or silent and not vouched for by the
    /// keepalives) replaced by a fresh connection from the peer.
    #[serde(default)]
    pub sessions_replaced: u64,
    /// Bulk resyncs the peer completed (SYNC_DONE received): each told
    /// MC-LAG that this switch has converged.
    #[serde(default)]
    pub peer_syncs_done: u64,
    /// Connections closed because no hello came within `hello_timeout_ms`.
    #[serde(default)]
    pub hello_timeouts: u64,
    /// Keepalives that named another peer run than the session's hello
    /// (not believed on their own: a (re)connection is asked for instead).
    #[serde(default)]
    pub keepalive_boot_changed: u64,
    /// Entries withdrawn: this switch's kernel dropped them or marked them
    /// FAILED, so they left the send table and a delete went to the peer.
    #[serde(default)]
    pub withdrawn: u64,
    /// Deletes sent to the peer (resends included).
    #[serde(default)]
    pub deletes_sent: u64,
    /// Deletes received from the peer.
    #[serde(default)]
    pub deletes_received: u64,
    /// Neighbours learnt from the peer deleted from the kernel because the
    /// peer withdrew them.
    #[serde(default)]
    pub learnt_deleted: u64,
    /// Deletes for entries this switch did not learn from the peer: left
    /// alone (this switch's own entries are never deleted on its word).
    #[serde(default)]
    pub deletes_not_learnt: u64,
    /// Netlink deletes of withdrawn entries the kernel refused.
    #[serde(default)]
    pub learnt_delete_failed: u64,
    /// Entries learnt from the peer forgotten at the `max_learnt` bound.
    #[serde(default)]
    pub learnt_evicted: u64,
    /// Probes the kernel refused during refreshes.
    #[serde(default)]
    pub refresh_failed: u64,
    /// Interfaces the last refresh covered (member ports, VLAN interfaces,
    /// bridges and bonds above the ports).
    #[serde(default)]
    pub refresh_interfaces: u64,
    /// Refreshes dropped because the worker's queue was full.
    #[serde(default)]
    pub refresh_dropped: u64,
    /// Member-port state changes told to the peer.
    #[serde(default)]
    pub port_states_sent: u64,
    /// Refreshes of one MLAG id because the peer's twin port came up.
    #[serde(default)]
    pub port_up_refreshes: u64,
    /// ND sync (Neighbour Advertisements).
    #[serde(default)]
    pub nd: super::nd::NdStats,
}

/// `show peer`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReport {
    /// up | opening | connecting | down.
    pub state: String,
    /// This switch's peer-link address.
    pub local_address: String,
    /// The peer's address.
    pub peer_address: String,
    /// Whether this side connects or accepts.
    pub role: String,
    /// Protocol version of this agent.
    pub local_version: String,
    /// The peer's version (from its hello).
    pub peer_version: Option<String>,
    /// Version in use.
    pub negotiated_version: Option<String>,
    /// The peer's name.
    pub peer_name: Option<String>,
    /// The peer's system id.
    pub peer_system_id: Option<MacAddr>,
    /// The peer agent's boot id.
    pub peer_boot_id: Option<u64>,
    /// The peer's capability bits.
    pub peer_capabilities: Option<u32>,
    /// Milliseconds since the peer's hello.
    pub last_hello_ms_ago: Option<u64>,
    /// Seconds the session has been up.
    pub session_up_s: Option<u64>,
    /// Keepalives arriving.
    pub alive: bool,
    /// How synced replies reach this kernel's receive path: live-frame |
    /// tc-redirect (a failure still falls back to netlink, counted).
    #[serde(default)]
    pub inject_method: String,
    /// Keepalive interval.
    pub keepalive_interval_ms: u64,
    /// Dead interval.
    pub dead_interval_ms: u64,
    /// How the keepalive thread is scheduled: `SCHED_FIFO N`, `normal`,
    /// or `normal (real time refused: why)`.
    #[serde(default)]
    pub keepalive_scheduling: String,
    /// This agent's boot id.
    pub boot_id: u64,
    /// Entries in the send table.
    pub entries: u64,
    /// Entries waiting to be sent.
    pub pending: u64,
    /// Entries sent and not acknowledged.
    pub unacked: u64,
    /// Highest sync frame the peer acknowledged.
    pub acked_seq: u32,
    /// Sequence number of the next sync frame.
    pub next_seq: u32,
    /// Entries learnt from the peer.
    pub learnt: u64,
    /// Entries forgotten at the table bound.
    pub evicted: u64,
    /// Where a synced reply's time goes inside the agents, per stage.
    #[serde(default)]
    pub latency: super::latency::LatencyReport,
    /// Counters.
    pub counters: Stats,
}

/// One line of `show arp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpReportEntry {
    /// IPv4 address.
    pub ip: String,
    /// Its MAC.
    pub mac: MacAddr,
    /// Member port (and the interface used, if different).
    pub port: String,
    /// MLAG port id.
    pub mlag_id: u32,
    /// Outer VLAN.
    pub outer_vlan: u16,
    /// Inner VLAN.
    pub inner_vlan: u16,
    /// `sent` (captured here) or `received` (from the peer).
    pub direction: String,
    /// Class on the capturing switch.
    pub class: String,
    /// Milliseconds since captured or learnt.
    pub age_ms: u64,
    /// For sent: queued | sent | acked; for received: kernel-arp | netlink-fallback.
    pub how: String,
    /// For received, and for sent entries learnt here too: the kernel's NUD
    /// state now (read from the kernel).
    pub kernel_state: Option<String>,
    /// For sent `peer`-class entries: this switch learnt the reply too
    /// (SPEC 1.2), and how (kernel-arp | netlink-fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learnt_here: Option<String>,
    /// For received: the kernel holds the entry now, resolved to the MAC
    /// that was learnt, so `how` is confirmed (read from the kernel, not
    /// the agent's belief). Added by issue 12; absent for sent entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The text of `show peer`; every line ends with a newline (print it with
/// `print!`).
impl fmt::Display for PeerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self;
        writeln!(
            f,
            "peer {} ({}), session {}, {} (this side {})",
            p.peer_address,
            p.peer_name.as_deref().unwrap_or("?"),
            p.state,
            if p.alive { "alive" } else { "no keepalives" },
            p.role
        )?;
        writeln!(
            f,
            "versions local {} peer {} negotiated {}",
            p.local_version,
            p.peer_version.as_deref().unwrap_or("-"),
            p.negotiated_version.as_deref().unwrap_or("-")
        )?;
        writeln!(
            f,
            "last hello {} ms ago, up {} s, keepalive {} ms / dead {} ms{}",
            or_dash(p.last_hello_ms_ago),
            or_dash(p.session_up_s),
            p.keepalive_interval_ms,
            p.dead_interval_ms,
            if p.keepalive_scheduling.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.keepalive_scheduling)
            }
        )?;
        writeln!(
            f,
            "entries {} pending {} unacked {} (acked seq {}, next {}), learnt from peer {} (injected by {})",
            p.entries, p.pending, p.unacked, p.acked_seq, p.next_seq, p.learnt, p.inject_method
        )?;
        let c = &p.counters;
        writeln!(
            f,
            "sent {} frames / {} entries, received {} frames / {} entries, acks {}",
            c.frames_sent, c.entries_sent, c.frames_received, c.entries_received, c.acks_received
        )?;
        writeln!(
            f,
            "injected {} netlink fallback {} refreshes {} ({} probes) sessions up {} lost {}",
            c.injected,
            c.netlink_fallback,
            c.refreshes,
            c.refresh_probes,
            c.sessions_established,
            c.sessions_lost
        )?;
        if !c.rejected.is_empty() {
            let reasons: Vec<String> = c.rejected.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "rejected {}", reasons.join(" "))?;
        }
        // Only when it happened, so the usual text stays as it was.
        if !c.local_failures.is_empty() {
            let reasons: Vec<String> = c
                .local_failures
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(f, "local failures {}", reasons.join(" "))?;
        }
        if c.sessions_stalled + c.sessions_replaced + c.hello_timeouts + c.keepalive_boot_changed
            > 0
        {
            writeln!(
                f,
                "sessions stalled {} replaced {} hello timeouts {}, keepalive boot changes {}",
                c.sessions_stalled, c.sessions_replaced, c.hello_timeouts, c.keepalive_boot_changed
            )?;
        }
        if c.withdrawn + c.deletes_received + c.learnt_evicted > 0 {
            writeln!(
                f,
                "withdrawn {} (deletes sent {}), deletes received {} (applied {}, not learnt {}), learnt evicted {}",
                c.withdrawn,
                c.deletes_sent,
                c.deletes_received,
                c.learnt_deleted,
                c.deletes_not_learnt,
                c.learnt_evicted
            )?;
        }
        if c.session_events_dropped > 0 {
            writeln!(
                f,
                "session events MC-LAG could not take: {}",
                c.session_events_dropped
            )?;
        }
        Ok(())
    }
}

/// `show arp`: the entries both ways (a JSON array), and as text a header
/// line and one line per entry, each ending with a newline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArpTable(pub Vec<ArpReportEntry>);

impl fmt::Display for ArpTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<15} {:<17} {:<14} {:<9} {:<9} {:<6} {:<16} {:<10} {:>8}",
            "ip", "mac", "port", "vlans", "direction", "class", "how", "kernel", "age"
        )?;
        for e in &self.0 {
            let vlans = match (e.outer_vlan, e.inner_vlan) {
                (0, _) => "-".to_string(),
                (o, 0) => o.to_string(),
                (o, i) => format!("{o}/{i}"),
            };
            writeln!(
                f,
                "{:<15} {:<17} {:<14} {:<9} {:<9} {:<6} {:<16} {:<10} {:>6}ms",
                e.ip,
                e.mac,
                e.port,
                vlans,
                e.direction,
                e.class,
                e.how,
                e.kernel_state.as_deref().unwrap_or("-"),
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
    fn arp_table_text() {
        let entry = ArpReportEntry {
            ip: "10.0.0.3".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 3]),
            port: "a-c".into(),
            mlag_id: 1,
            outer_vlan: 10,
            inner_vlan: 20,
            direction: "received".into(),
            class: "peer".into(),
            age_ms: 42,
            how: "kernel-arp".into(),
            kernel_state: Some("REACHABLE".into()),
            learnt_here: None,
            confirmed: Some(true),
        };
        let text = ArpTable(vec![entry]).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ip              mac               port"));
        assert_eq!(
            lines[1],
            format!(
                "{:<15} {:<17} {:<14} {:<9} {:<9} {:<6} {:<16} {:<10} {:>6}ms",
                "10.0.0.3",
                "02:00:00:00:00:03",
                "a-c",
                "10/20",
                "received",
                "peer",
                "kernel-arp",
                "REACHABLE",
                42
            )
        );
    }
}
