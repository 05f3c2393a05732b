//! `show mclag`: the report and its text rendering. The JSON field names are
//! read by the namespace tests and by operators' scripts: never rename them.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{consistency::Mismatch, election::Role, hold::HoldReason};
use crate::mac::MacAddr;

/// `show mclag`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MclagReport {
    /// master | slave | undecided.
    pub role: Role,
    /// This switch's election address.
    pub own_address: String,
    /// The peer's, from its hello.
    pub peer_address: Option<String>,
    /// Whether the peer is alive on the peer link.
    pub peer_alive: bool,
    /// Whether a backup path is configured.
    pub backup_configured: bool,
    /// Liveness on the backup path.
    pub backup_alive: Option<bool>,
    /// Peer link down while the peer is alive on the backup path.
    pub split_brain: bool,
    /// Configuration problem preventing an election.
    pub error: Option<String>,
    /// The MAC both switches present on their MLAG ports.
    pub shared_mac: Option<MacAddr>,
    /// Member ports.
    pub ports: Vec<MclagPort>,
    /// Time of the last role change, Unix milliseconds.
    pub last_role_change_unix_ms: Option<u64>,
    /// Role changes since start.
    pub role_changes: u64,
    /// Gratuitous ARP / unsolicited NA frames sent.
    pub announcements_sent: u64,
    /// Why the member ports are held out of service (empty: they are not).
    #[serde(default)]
    pub holds: Vec<HoldReason>,
    /// Time left of the init delay, while it holds.
    #[serde(default)]
    pub init_delay_remaining_ms: Option<u64>,
    /// A bulk sync from the peer has been applied since start.
    #[serde(default)]
    pub converged: bool,
    /// What differs between this switch and its peer (consistency check).
    #[serde(default)]
    pub mismatches: Vec<Mismatch>,
    /// Differences found since start.
    #[serde(default)]
    pub mismatches_found: u64,
    /// Times member ports were taken out of service / brought back.
    #[serde(default)]
    pub ports_taken_down: u64,
    /// See `ports_taken_down`.
    #[serde(default)]
    pub ports_brought_up: u64,
    /// How the MC-LAG thread (takeovers) is scheduled, e.g. `SCHED_FIFO 9`.
    #[serde(default)]
    pub scheduling: String,
}

/// One member port in `show mclag`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MclagPort {
    /// Interface name.
    pub name: String,
    /// MLAG id.
    pub mlag_id: u32,
    /// MAC before alignment (restorable).
    pub original_mac: Option<MacAddr>,
    /// MAC now.
    pub current_mac: Option<MacAddr>,
    /// The twin port's MAC on the peer.
    pub twin_mac: Option<MacAddr>,
    /// IPv6 link-local addresses now on the port.
    pub link_local: Vec<String>,
    /// Taken out of service by MC-LAG (see `holds`).
    #[serde(default)]
    pub held_down: bool,
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

impl fmt::Display for MclagReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self;
        writeln!(
            f,
            "role {:?}  own {}  peer {} ({})  shared mac {}",
            m.role,
            m.own_address,
            m.peer_address.as_deref().unwrap_or("-"),
            if m.peer_alive { "alive" } else { "not alive" },
            or_dash(m.shared_mac)
        )?;
        if m.backup_configured {
            writeln!(
                f,
                "backup path: {}  split brain: {}",
                match m.backup_alive {
                    Some(true) => "alive",
                    Some(false) => "silent",
                    None => "unknown",
                },
                m.split_brain
            )?;
        }
        if let Some(error) = &m.error {
            writeln!(f, "error: {error}")?;
        }
        if !m.holds.is_empty() {
            let reasons: Vec<String> = m
                .holds
                .iter()
                .map(|h| match h {
                    HoldReason::InitDelay => format!(
                        "init delay ({} s left, until the peer's bulk sync is applied)",
                        m.init_delay_remaining_ms.unwrap_or(0).div_ceil(1000)
                    ),
                    HoldReason::SplitBrain => {
                        "split brain (peer link down, peer alive on the backup path)".to_string()
                    }
                })
                .collect();
            writeln!(f, "member ports held down: {}", reasons.join("; "))?;
        }
        for m in &m.mismatches {
            writeln!(
                f,
                "inconsistent {}{}{}: here {}, peer {}",
                m.field,
                m.mlag_id
                    .map_or(String::new(), |id| format!(" (mlag {id})")),
                m.port
                    .as_deref()
                    .map_or(String::new(), |p| format!(" on {p}")),
                m.local,
                m.peer
            )?;
        }
        writeln!(
            f,
            "role changes {} (last at unix ms {}), announcements sent {}, takeover thread {}",
            m.role_changes,
            or_dash(m.last_role_change_unix_ms),
            m.announcements_sent,
            if m.scheduling.is_empty() {
                "-"
            } else {
                &m.scheduling
            }
        )?;
        writeln!(
            f,
            "{:<16} {:>5} {:<17} {:<17} {:<17} link-local",
            "port", "mlag", "original mac", "current mac", "twin mac"
        )?;
        for p in &m.ports {
            writeln!(
                f,
                "{:<16} {:>5} {:<17} {:<17} {:<17} {}",
                p.name,
                p.mlag_id,
                or_dash(p.original_mac),
                or_dash(p.current_mac),
                or_dash(p.twin_mac),
                p.link_local.join(" ") + if p.held_down { "  [held down]" } else { "" }
            )?;
        }
        Ok(())
    }
}
