//! `[mclag]`: master election and port identity (SPEC 3). Checks that need
//! the `[peer]` section too are made where both are known (`crate::config`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::validate::Problems;

fn default_true() -> bool {
    true
}
fn default_backup_port() -> u16 {
    sync_common::wire::DEFAULT_PORT
}
fn default_init_delay_s() -> u64 {
    DEFAULT_INIT_DELAY_S
}

/// Default hold-down after start, seconds (as Cumulus clagd's init delay).
pub const DEFAULT_INIT_DELAY_S: u64 = 180;

/// What the slave does with a member port whose settings differ from its
/// twin's (see `consistency.rs`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MismatchAction {
    /// Report and count it (`show mclag`, the log).
    #[default]
    Warn,
    /// Also take that member port out of service on the slave.
    ShutPort,
}

/// What the slave does when the peer link is down but the peer is alive on
/// the backup path (dual active).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SplitBrainAction {
    /// Take the slave's member ports down, so the downstream bonds use only
    /// the master, until the peer link is back and the pair has resynced.
    #[default]
    ShutPorts,
    /// Only report it (`show mclag`, the log).
    Log,
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
    #[serde(default = "default_backup_port")]
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
    /// Dual-active protection: `"shut-ports"` (default) or `"log"`.
    #[serde(default)]
    pub on_split_brain: SplitBrainAction,
    /// After start, member ports stay down until the first bulk sync from
    /// the peer has been applied, or this many seconds have passed (a lone
    /// switch comes up then). 0: no hold-down. Default 180.
    #[serde(default = "default_init_delay_s")]
    pub init_delay_s: u64,
    /// Consistency check: `"warn"` (default) or `"shut-port"`.
    #[serde(default)]
    pub on_mismatch: MismatchAction,
}

impl MclagConfig {
    /// Every problem of the `[mclag]` section on its own.
    pub fn problems(&self, out: &mut Problems) {
        if let Some(backup) = &self.backup
            && backup.local_address == backup.peer_address
        {
            out.add(
                "mclag.backup.peer_address",
                format!("{} is also mclag.backup.local_address", backup.peer_address),
            );
        }
    }
}
