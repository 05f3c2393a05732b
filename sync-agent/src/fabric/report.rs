//! What `show fabric` reports: this switch's role and broker, the members
//! and servers it knows, recent announcements and faults, the fabric config
//! in force and the counters. Only the report types and their text
//! rendering live here; the task fills them in (`events.rs`).
//!
//! The JSON field names are part of the operator interface (`show fabric
//! -j`, parsed by the namespace tests): do not rename them.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    state::PendingChange,
    wire::{ConfigChange, Fault, Membership, Role},
};

/// The answer to `fabric set`, given once every member acknowledged, a
/// newer change to the key won, or `set_timeout_ms` passed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetReport {
    /// The change published.
    pub change: ConfigChange,
    /// `applied` (every member acknowledged it applied), `superseded` (a
    /// newer change to the key is in force, here or at a member),
    /// `rejected` (a member refused it) or `timed out` (some members did
    /// not answer in time; it is still resent to them).
    pub outcome: String,
    /// Member -> its acknowledgement.
    pub acks: BTreeMap<String, String>,
    /// Members that had not answered.
    pub missing: Vec<String>,
    /// How long the answer took.
    pub waited_ms: u64,
}

/// One member as this switch sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberReport {
    /// Identity.
    pub identity: String,
    /// Role.
    pub role: Role,
    /// Model.
    pub model: String,
    /// Software version.
    pub version: String,
    /// Server IPs it is configured with.
    pub servers: Vec<IpAddr>,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its uptime at its last heartbeat.
    pub uptime_s: u64,
    /// Milliseconds since its last heartbeat was heard (None: only known from the topology).
    pub last_heartbeat_ms_ago: Option<u64>,
    /// `up`, `silent` (no heartbeat lately) or `departed`.
    pub state: String,
}

/// A server as seen from its status messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerReport {
    /// Identity.
    pub server: String,
    /// 0 = primary.
    pub rank: usize,
    /// Announcing.
    pub active: bool,
    /// Since its last status.
    pub last_status_ms_ago: u64,
}

/// A fault as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultReport {
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
    /// When it arrived here (ms since the epoch).
    pub received_ms: u64,
}

/// A setting in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettingReport {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Who changed it.
    pub changed_by: String,
    /// When (ms since the epoch, the changer's clock).
    pub changed_at_ms: u64,
    /// The changer's change number.
    pub seq: u64,
    /// Acknowledgements: member -> outcome.
    pub acks: BTreeMap<String, String>,
}

/// `show fabric`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FabricReport {
    /// This member.
    pub identity: String,
    /// Its role.
    pub role: Role,
    /// Why that role.
    pub role_reason: String,
    /// Server rank (0 primary, 1 backup), servers only.
    pub rank: Option<usize>,
    /// Announcing now (servers only).
    pub active: Option<bool>,
    /// The broker in use.
    pub broker: String,
    /// Connected to it.
    pub connected: bool,
    /// `none` or `aead`.
    pub encryption: String,
    /// TLS to the broker.
    pub tls: bool,
    /// Members, this one included.
    pub members: Vec<MemberReport>,
    /// Servers heard.
    pub servers: Vec<ServerReport>,
    /// Join/departure announcements received, newest last.
    pub announcements: Vec<Membership>,
    /// Faults, newest last.
    pub faults: Vec<FaultReport>,
    /// The fabric config in force.
    pub config: Vec<SettingReport>,
    /// This member's changes still awaiting acknowledgement.
    pub pending_changes: Vec<PendingChange>,
    /// Counters: received, rejected by reason, sent, dropped.
    pub counters: BTreeMap<String, u64>,
    /// Messages refused, by kind (each also among `counters`).
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
}

/// The text of `show fabric`: a status line, the role's reason, a member
/// table, servers, the config in force, pending changes, the ten newest
/// faults and the counters. Every line ends with a newline.
impl fmt::Display for FabricReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} role {:?}{}  broker {} ({})  encryption {}{}",
            self.identity,
            self.role,
            match (self.rank, self.active) {
                (Some(rank), Some(active)) => format!(
                    " ({} server, {})",
                    if rank == 0 { "primary" } else { "backup" },
                    if active { "active" } else { "standby" }
                ),
                _ => String::new(),
            },
            self.broker,
            if self.connected {
                "connected"
            } else {
                "not connected"
            },
            self.encryption,
            if self.tls { " + tls" } else { "" }
        )?;
        writeln!(f, "role: {}", self.role_reason)?;
        writeln!(
            f,
            "{:<20} {:<7} {:<16} {:<10} {:>10} {:<9}",
            "member", "role", "model", "version", "heard ms", "state"
        )?;
        for m in &self.members {
            writeln!(
                f,
                "{:<20} {:<7} {:<16} {:<10} {:>10} {:<9}",
                m.identity,
                format!("{:?}", m.role).to_lowercase(),
                m.model,
                m.version,
                m.last_heartbeat_ms_ago
                    .map_or("-".into(), |v| v.to_string()),
                m.state
            )?;
        }
        for s in &self.servers {
            writeln!(
                f,
                "server {} rank {} {} (status {} ms ago)",
                s.server,
                s.rank,
                if s.active { "active" } else { "standby" },
                s.last_status_ms_ago
            )?;
        }
        if !self.config.is_empty() {
            writeln!(f, "fabric config:")?;
            for c in &self.config {
                writeln!(
                    f,
                    "  {} = {}  (by {} at unix ms {}, acks {})",
                    c.key,
                    c.value,
                    c.changed_by,
                    c.changed_at_ms,
                    c.acks.len()
                )?;
            }
        }
        for p in &self.pending_changes {
            writeln!(
                f,
                "pending change {} = {}: waiting for {}",
                p.change.key,
                p.change.value,
                p.waiting_for.iter().cloned().collect::<Vec<_>>().join(", ")
            )?;
        }
        if !self.faults.is_empty() {
            writeln!(f, "recent faults:")?;
            for x in self.faults.iter().rev().take(10) {
                writeln!(
                    f,
                    "  {} {} {} (unix ms {})",
                    x.fault.member, x.fault.port, x.fault.kind, x.fault.at_ms
                )?;
            }
        }
        writeln!(
            f,
            "counters: {}",
            self.counters
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
