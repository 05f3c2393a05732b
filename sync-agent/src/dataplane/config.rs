//! `[dataplane]`: the member ports, the classifier's MAC tables and policy,
//! and how the program is attached (SPEC 1, 7.1).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    mac::MacAddr,
    validate::{MAX_IFNAME, Problems, is_ifname},
};

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Driver (native) mode, falling back to generic mode with a log line.
    #[default]
    Auto,
    /// Driver mode only; attaching fails if the driver lacks XDP.
    Driver,
    /// Generic (skb) mode only.
    Generic,
}

/// How a synced reply is handed to this switch's own receive path (SPEC 2.3).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InjectConfig {
    /// Live frames when the kernel accepts them (probed at start), else the
    /// tc redirect; the choice is logged and shown in `show peer`.
    #[default]
    Auto,
    /// `BPF_PROG_RUN` live frames only (a kernel that refuses them makes
    /// every reply take the netlink fallback, counted).
    LiveFrame,
    /// The tc redirect from the loopback's egress only.
    TcRedirect,
}

/// Level of the kernel program's own log lines (aya-log).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EbpfLogLevel {
    /// Nothing is logged from the kernel (the default: the hot path stays quiet).
    #[default]
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational and above.
    Info,
    /// Per-reply detail (costly: one record per ARP reply).
    Debug,
    /// Everything.
    Trace,
}

impl EbpfLogLevel {
    /// The value of aya-log's `AYA_LOG_LEVEL` global for this level.
    pub fn aya_level(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Error => 1,
            Self::Warn => 2,
            Self::Info => 3,
            Self::Debug => 4,
            Self::Trace => 5,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_capture_queue() -> usize {
    4096
}
fn default_recent_captures() -> usize {
    256
}

/// `[dataplane]`: member ports and the MAC tables of the classifier.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// MLAG member ports the classifier is attached to.
    pub member_ports: Vec<String>,
    /// Attach mode.
    #[serde(default)]
    pub xdp_mode: XdpModeConfig,
    /// MACs of the peer switch: replies to these are class `peer`.
    #[serde(default)]
    pub peer_macs: Vec<MacAddr>,
    /// MACs of this switch besides its member ports' own MACs (which are
    /// always included): replies to these are class `own`.
    #[serde(default)]
    pub own_macs: Vec<MacAddr>,
    /// MACs both switches own: replies to these are class `shared`.
    #[serde(default)]
    pub shared_macs: Vec<MacAddr>,
    /// VRRP virtual router ids whose virtual MACs (IPv4 and IPv6) are shared.
    #[serde(default)]
    pub vrrp_groups: Vec<u16>,
    /// Sync replies of class `own` to the peer too.
    #[serde(default = "default_true")]
    pub sync_own_replies: bool,
    /// Treat every VRRP virtual MAC as shared even if its group is not listed.
    #[serde(default = "default_true")]
    pub vrrp_prefix_is_shared: bool,
    /// Kernel-side log level.
    #[serde(default)]
    pub ebpf_log: EbpfLogLevel,
    /// How synced replies reach the receive path: `auto` (default),
    /// `live-frame` or `tc-redirect`.
    #[serde(default)]
    pub inject: InjectConfig,
    /// Depth of the queue between the ring buffer reader and the agent, in
    /// records (carried in batches of up to `capture::MAX_BATCH`); when it
    /// is full, records wait in the kernel ring buffer.
    #[serde(default = "default_capture_queue")]
    pub capture_queue: usize,
    /// How many recent captures `show captured` keeps.
    #[serde(default = "default_recent_captures")]
    pub recent_captures: usize,
}

impl DataplaneConfig {
    /// Every problem of the `[dataplane]` section.
    pub fn problems(&self, out: &mut Problems) {
        if self.member_ports.is_empty() {
            out.add(
                "dataplane.member_ports",
                "must name at least one member port",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, port) in self.member_ports.iter().enumerate() {
            let field = format!("dataplane.member_ports[{i}]");
            if !is_ifname(port) {
                out.add(
                    field,
                    format!(
                        "'{port}' is not a valid interface name (1-{MAX_IFNAME} characters, no '/' or spaces)"
                    ),
                );
            } else if !seen.insert(port) {
                out.add(field, format!("'{port}' is listed twice"));
            }
        }
        for (name, list) in [
            ("peer_macs", &self.peer_macs),
            ("own_macs", &self.own_macs),
            ("shared_macs", &self.shared_macs),
        ] {
            for (i, mac) in list.iter().enumerate() {
                if mac.is_multicast() || mac.is_zero() {
                    out.add(
                        format!("dataplane.{name}[{i}]"),
                        format!("{mac} is not a unicast MAC"),
                    );
                }
            }
        }
        for (i, mac) in self.peer_macs.iter().enumerate() {
            if self.own_macs.contains(mac) {
                out.add(
                    format!("dataplane.peer_macs[{i}]"),
                    format!("{mac} is also in dataplane.own_macs"),
                );
            }
        }
        for (i, group) in self.vrrp_groups.iter().enumerate() {
            if !(1..=255).contains(group) {
                out.add(
                    format!("dataplane.vrrp_groups[{i}]"),
                    format!("{group} is not a VRRP virtual router id (1-255)"),
                );
            }
        }
        if !(16..=1_048_576).contains(&self.capture_queue) {
            out.add(
                "dataplane.capture_queue",
                format!("{} must be between 16 and 1048576", self.capture_queue),
            );
        }
        if !(1..=65_536).contains(&self.recent_captures) {
            out.add(
                "dataplane.recent_captures",
                format!("{} must be between 1 and 65536", self.recent_captures),
            );
        }
    }
}
