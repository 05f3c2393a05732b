//! The agent's TOML config (SPEC 7.1): typed, unknown fields refused, and
//! validated so that every problem is reported at once, each naming its field.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The whole config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this agent instance; names its control socket.
    pub instance: String,
    /// The XDP classifier on the member ports (SPEC 1).
    pub dataplane: DataplaneConfig,
    /// Peer sync over the peer link (SPEC 2); without it nothing is synced.
    #[serde(default)]
    pub peer: Option<PeerConfig>,
    /// MC-LAG pair identity (SPEC 3); needs `[peer]`.
    #[serde(default)]
    pub mclag: Option<MclagConfig>,
    /// State inference (SPEC 5): extra objects and rules.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Config center and rollout (SPEC 6).
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Fabric sync over MQTT (SPEC 4).
    #[serde(default)]
    pub fabric: Option<crate::fabric::config::FabricConfig>,
}

/// `[rollout]`: this agent as config center, as device, or both.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// `[rollout.center]`: host the config center.
    #[serde(default)]
    pub center: Option<CenterSection>,
    /// `[rollout.device]`: apply configs from a center to local services.
    #[serde(default)]
    pub device: Option<crate::rollout::device::DeviceConfig>,
}

fn default_center_batch() -> usize {
    crate::rollout::center::DEFAULT_BATCH_SIZE
}
fn default_max_config_bytes() -> usize {
    1 << 20
}

/// `[rollout.center]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CenterSection {
    /// HTTP listen address.
    pub listen: std::net::SocketAddr,
    /// The embedded database file.
    pub db_path: std::path::PathBuf,
    /// Most steps per rollout batch.
    #[serde(default = "default_center_batch")]
    pub batch_size: usize,
    /// Delay between batches, milliseconds.
    #[serde(default)]
    pub pace_ms: u64,
    /// Largest config accepted, bytes.
    #[serde(default = "default_max_config_bytes")]
    pub max_config_bytes: usize,
}

impl CenterSection {
    /// The center's own config type.
    pub fn to_center(&self) -> crate::rollout::center::CenterConfig {
        crate::rollout::center::CenterConfig {
            listen: self.listen,
            db_path: self.db_path.clone(),
            batch_size: self.batch_size,
            pace_ms: self.pace_ms,
            max_config_bytes: self.max_config_bytes,
        }
    }
}

fn default_history() -> usize {
    32
}

/// `[inference]`: objects and rules beyond the built-in ones.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// Entries kept in each object's state and information histories.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Objects to add to the model (e.g. a service on an IP interface).
    #[serde(default)]
    pub objects: Vec<DeclaredObject>,
    /// Rules that normalise information to states (before the built-in ones).
    #[serde(default)]
    pub rules: Vec<crate::inference::Rule>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            history: default_history(),
            objects: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// An object declared in the config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredObject {
    /// Its id, e.g. `svc:web`.
    pub id: String,
    /// Its layer.
    pub layer: crate::inference::Layer,
    /// Its kind, e.g. `service`.
    pub kind: String,
    /// What it depends on.
    #[serde(default)]
    pub depends_on: Vec<DeclaredDependency>,
}

/// A dependency declared in the config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDependency {
    /// The object depended on, e.g. `ip:eth0`.
    pub id: String,
    /// belongs-to (same layer) or maps-to (a lower layer realises this one).
    pub kind: crate::inference::Dependency,
}

/// How the link-local address follows a MAC change.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LinkLocalMode {
    /// Delete the stale fe80:: address and add the new EUI-64 one (the link
    /// stays up).
    #[default]
    Readdress,
    /// Take the port down and up so the kernel regenerates it (drops the link).
    Bounce,
}

/// A second path to the peer, used only to tell a dead peer from a broken
/// peer link.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupPath {
    /// This switch's address on the backup path.
    pub local_address: IpAddr,
    /// The peer's address on the backup path.
    pub peer_address: IpAddr,
    /// UDP port of the backup keepalives.
    #[serde(default = "default_sync_port")]
    pub port: u16,
}

/// `[mclag]`: master election and MAC alignment (SPEC 3).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MclagConfig {
    /// Election address (default: `peer.local_address`); the larger is master.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// How link-local addresses follow a MAC change.
    #[serde(default)]
    pub linklocal: LinkLocalMode,
    /// Backup liveness path (split-brain detection).
    #[serde(default)]
    pub backup: Option<BackupPath>,
    /// Announce with gratuitous ARP / unsolicited NA on takeover.
    #[serde(default = "default_true")]
    pub announce: bool,
}

/// What the agent does with `arp_accept` on the member ports.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArpAcceptPolicy {
    /// Set `net.ipv4.conf.<port>.arp_accept=1` so a synced reply creates an
    /// entry even when this switch did not ask (class `own` on the peer).
    #[default]
    Set,
    /// Leave it as it is: synced replies only complete entries this switch
    /// is resolving itself.
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
    7789
}
fn default_keepalive_ms() -> u64 {
    100
}
fn default_dead_ms() -> u64 {
    500
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
}

impl PeerConfig {
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
}

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
    /// Depth of the queue between the ring buffer reader and the agent; when
    /// it is full, records wait in the kernel ring buffer.
    #[serde(default = "default_capture_queue")]
    pub capture_queue: usize,
    /// How many recent captures `show captured` keeps.
    #[serde(default = "default_recent_captures")]
    pub recent_captures: usize,
}

/// One thing wrong with the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `dataplane.member_ports[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type or an unknown field.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (names the field and line).
        message: String,
    },
    /// Well-formed but wrong values.
    #[error("config file {path} has {} problem(s):\n  {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems,
            })
        }
    }

    /// Every semantic problem of the config.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(Problem { field, message });
        if self.instance.is_empty()
            || self.instance.len() > 64
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            || self.instance.starts_with('.')
        {
            problem(
                "instance".into(),
                format!(
                    "'{}' must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '.'",
                    self.instance
                ),
            );
        }
        let dp = &self.dataplane;
        if dp.member_ports.is_empty() {
            problem(
                "dataplane.member_ports".into(),
                "must name at least one member port".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, port) in dp.member_ports.iter().enumerate() {
            let field = format!("dataplane.member_ports[{i}]");
            if port.is_empty() || port.len() > MAX_IFNAME || port.contains(['/', ' ', '\0']) {
                problem(
                    field,
                    format!(
                        "'{port}' is not a valid interface name (1-{MAX_IFNAME} characters, no '/' or spaces)"
                    ),
                );
            } else if !seen.insert(port) {
                problem(field, format!("'{port}' is listed twice"));
            }
        }
        for (name, list) in [
            ("peer_macs", &dp.peer_macs),
            ("own_macs", &dp.own_macs),
            ("shared_macs", &dp.shared_macs),
        ] {
            for (i, mac) in list.iter().enumerate() {
                if mac.is_multicast() || mac.is_zero() {
                    problem(
                        format!("dataplane.{name}[{i}]"),
                        format!("{mac} is not a unicast MAC"),
                    );
                }
            }
        }
        for (i, mac) in dp.peer_macs.iter().enumerate() {
            if dp.own_macs.contains(mac) {
                problem(
                    format!("dataplane.peer_macs[{i}]"),
                    format!("{mac} is also in dataplane.own_macs"),
                );
            }
        }
        for (i, group) in dp.vrrp_groups.iter().enumerate() {
            if !(1..=255).contains(group) {
                problem(
                    format!("dataplane.vrrp_groups[{i}]"),
                    format!("{group} is not a VRRP virtual router id (1-255)"),
                );
            }
        }
        if !(16..=1_048_576).contains(&dp.capture_queue) {
            problem(
                "dataplane.capture_queue".into(),
                format!("{} must be between 16 and 1048576", dp.capture_queue),
            );
        }
        if !(1..=65_536).contains(&dp.recent_captures) {
            problem(
                "dataplane.recent_captures".into(),
                format!("{} must be between 1 and 65536", dp.recent_captures),
            );
        }
        if let Some(peer) = &self.peer {
            peer_problems(peer, &dp.member_ports, &mut problem);
        }
        if let Some(center) = &self.rollout.center
            && center.batch_size == 0
        {
            problem(
                "rollout.center.batch_size".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(device) = &self.rollout.device
            && let Err(err) = device.validate()
        {
            problem("rollout.device".into(), format!("{err:#}"));
        }
        if let Some(fabric) = &self.fabric {
            for (field, message) in fabric.problems() {
                problem(field, message);
            }
        }
        if !(1..=4096).contains(&self.inference.history) {
            problem(
                "inference.history".into(),
                format!("{} must be between 1 and 4096", self.inference.history),
            );
        }
        for (i, object) in self.inference.objects.iter().enumerate() {
            if object.id.is_empty() || !object.id.contains(':') {
                problem(
                    format!("inference.objects[{i}].id"),
                    format!("'{}' must look like kind:name (e.g. svc:web)", object.id),
                );
            }
        }
        if let Some(mclag) = &self.mclag {
            match &self.peer {
                None => problem(
                    "mclag".into(),
                    "needs a [peer] section (the election runs over the peer session)".into(),
                ),
                Some(peer) => {
                    let address = mclag.address.unwrap_or(peer.local_address);
                    if address.is_ipv4() != peer.peer_address.is_ipv4() && mclag.address.is_some() {
                        problem(
                            "mclag.address".into(),
                            "use the same address family on both switches".into(),
                        );
                    }
                }
            }
            if let Some(backup) = &mclag.backup {
                if backup.local_address == backup.peer_address {
                    problem(
                        "mclag.backup.peer_address".into(),
                        format!("{} is also mclag.backup.local_address", backup.peer_address),
                    );
                }
                if self.peer.as_ref().is_some_and(|p| {
                    p.port == backup.port && p.local_address == backup.local_address
                }) {
                    problem(
                        "mclag.backup.port".into(),
                        "clashes with the peer-link keepalive socket".into(),
                    );
                }
            }
        }
        problems
    }

    /// Path of the control socket for an instance name.
    pub fn socket_path_for(instance: &str) -> std::path::PathBuf {
        Path::new(crate::control::SOCKET_DIR).join(format!("{instance}.sock"))
    }
}

fn peer_problems(
    peer: &PeerConfig,
    member_ports: &[String],
    problem: &mut impl FnMut(String, String),
) {
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
        if v.interface.is_empty() || v.interface.len() > MAX_IFNAME {
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
    if peer.max_frame_bytes < smallest || peer.max_frame_bytes > sync_common::wire::MAX_FRAME_LEN {
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
    if peer.max_entries < 16 {
        problem(
            "peer.max_entries".into(),
            format!("{} must be at least 16", peer.max_entries),
        );
    }
}

#[cfg(test)]
mod tests {

    /// The README's config example is a valid config.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml block") + 8;
        let end = start + readme[start..].find("```").expect("closed");
        let config = Config::parse(&readme[start..end], "README.md").unwrap();
        let fabric = config.fabric.expect("the example shows [fabric]");
        assert_eq!(fabric.servers.len(), 2);
        assert_eq!(
            fabric.encryption.mode,
            crate::fabric::config::EncryptionMode::Aead
        );
    }

    use super::*;

    const GOOD: &str = r#"
instance = "switch-a"
[dataplane]
member_ports = ["eth1", "eth2"]
peer_macs = ["02:00:00:00:0b:01"]
vrrp_groups = [1, 7]
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = Config::parse(GOOD, "test").unwrap();
        assert_eq!(config.dataplane.xdp_mode, XdpModeConfig::Auto);
        assert!(config.dataplane.sync_own_replies);
        assert!(config.dataplane.vrrp_prefix_is_shared);
        assert_eq!(config.dataplane.ebpf_log, EbpfLogLevel::Off);
        assert_eq!(config.dataplane.capture_queue, 4096);
    }

    #[test]
    fn unknown_field_is_refused_by_name() {
        let text = GOOD.replace("vrrp_groups", "vrrp_group");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(err.contains("vrrp_group"), "{err}");
    }

    #[test]
    fn bad_mac_names_the_value() {
        let text = GOOD.replace("02:00:00:00:0b:01", "02:00:00:00:0b");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(
            err.contains("peer_macs") && err.contains("02:00:00:00:0b"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_field() {
        let text = r#"
instance = "a b"
[dataplane]
member_ports = ["eth1", "eth1", "this-name-is-far-too-long"]
peer_macs = ["01:00:5e:00:00:01"]
vrrp_groups = [0, 300]
capture_queue = 1
"#;
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse(text, "test") else {
            panic!("expected Invalid");
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "instance",
                "dataplane.member_ports[1]",
                "dataplane.member_ports[2]",
                "dataplane.peer_macs[0]",
                "dataplane.vrrp_groups[0]",
                "dataplane.vrrp_groups[1]",
                "dataplane.capture_queue",
            ]
        );
    }

    #[test]
    fn peer_section_defaults_and_mlag_ids_by_position() {
        let text = format!(
            "{GOOD}\n[peer]\nlocal_address = \"169.254.0.1\"\npeer_address = \"169.254.0.2\"\nmlag_ids = {{ eth2 = 9 }}\n"
        );
        let config = Config::parse(&text, "test").unwrap();
        let peer = config.peer.unwrap();
        assert_eq!(peer.port, 7789);
        assert_eq!(peer.arp_accept, ArpAcceptPolicy::Set);
        assert_eq!(
            peer.mlag_ids_for(&config.dataplane.member_ports),
            [("eth1".to_string(), 1), ("eth2".to_string(), 9)]
        );
    }

    #[test]
    fn peer_problems_name_their_fields() {
        let text = format!(
            "{GOOD}\n[peer]\nlocal_address = \"169.254.0.1\"\npeer_address = \"169.254.0.1\"\nmlag_ids = {{ eth9 = 1 }}\ndead_interval_ms = 100\n"
        );
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse(&text, "test") else {
            panic!("expected Invalid")
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "peer.peer_address",
                "peer.mlag_ids.eth9",
                "peer.dead_interval_ms"
            ]
        );
    }

    #[test]
    fn empty_member_ports_is_refused() {
        let text = GOOD.replace(r#"["eth1", "eth2"]"#, "[]");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(
            err.contains("dataplane.member_ports: must name at least one"),
            "{err}"
        );
    }
}
