//! `[fabric]`: who the servers are, which broker to use, timers, encryption,
//! and who to trust (each member's public key, the servers marked).

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The `[fabric]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FabricConfig {
    /// Server IPs, primary first, then the backup (SPEC 4.1, 4.7).
    pub servers: Vec<IpAddr>,
    /// MQTT port of the servers' brokers.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `embedded` (default: each server hosts rumqttd inside the agent),
    /// `mosquitto` (each server hosts a mosquitto process the agent runs
    /// and restarts: far less memory per member) or `mqtt://host:port` /
    /// `mqtts://host:port` for one external broker.
    #[serde(default = "default_broker")]
    pub broker: String,
    /// This member's name in the fabric; defaults to the agent instance.
    #[serde(default)]
    pub identity: Option<String>,
    /// Model string sent in heartbeats.
    #[serde(default = "default_model")]
    pub model: String,
    /// Topic prefix; every topic is `<prefix>/<CHANNEL>/...`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// A server is also a member (heartbeats, applies config): role `both`.
    /// `false` makes it a pure `server`.
    #[serde(default = "yes")]
    pub member: bool,
    /// How often members heartbeat.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// A member silent this long has departed.
    #[serde(default = "default_dead")]
    pub dead_after_ms: u64,
    /// A member that cannot reach its broker this long moves to the next server.
    #[serde(default = "default_failover")]
    pub failover_after_ms: u64,
    /// The backup takes over when it has not heard the primary this long.
    #[serde(default = "default_failover")]
    pub takeover_after_ms: u64,
    /// Unacknowledged config changes are sent again this often.
    #[serde(default = "default_resend")]
    pub resend_ms: u64,
    /// Where this member keeps the fabric config it applied (survives restarts).
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Body encryption.
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// TLS to the broker (and, on servers with the embedded broker, its certificate).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Heartbeats per second accepted from one member before dropping.
    #[serde(default = "default_heartbeat_rate")]
    pub max_heartbeats_per_s: u32,
    /// A member departed (or silent) this long is forgotten: dropped from
    /// `show fabric` and from this switch's memory.
    #[serde(default = "default_prune")]
    pub prune_after_ms: u64,
    /// The most members (and so entries per map keyed by a member name:
    /// view, roster, fault numbers, rate limits) this switch keeps; past it
    /// the least recently heard is evicted and counted (`*_evicted`).
    #[serde(default = "default_max_members")]
    pub max_members: usize,
    /// Faults per second accepted from one member before dropping (counted
    /// as `fault_flood`).
    #[serde(default = "default_fault_rate")]
    pub max_faults_per_s: u32,
    /// `fabric set` waits this long for every member's acknowledgement
    /// before answering `timed out` (the change is still resent until
    /// acknowledged).
    #[serde(default = "default_set_timeout")]
    pub set_timeout_ms: u64,
    /// Signing keys, the roster and replay protection.
    #[serde(default)]
    pub trust: TrustConfig,
}

/// `[fabric.trust]`: every message is signed by its sender's Ed25519 key
/// and checked against the roster; server-only messages only from a key
/// marked `server`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// This switch's private key (64 hex digits); created at first start
    /// (mode 0600) when missing. `sync-agent fabric key --config FILE`
    /// prints its public key.
    #[serde(default = "default_identity_key_file")]
    pub key_file: PathBuf,
    /// Where the highest message counter heard from each sender is kept,
    /// so a restarted switch refuses what it accepted before.
    #[serde(default = "default_counters_file")]
    pub counters_file: PathBuf,
    /// Messages older than this by their sender's clock are refused
    /// (retained snapshots excepted: their owner republishes them).
    #[serde(default = "default_max_age")]
    pub max_age_ms: u64,
    /// Clock difference tolerated between switches.
    #[serde(default = "default_max_skew")]
    pub max_skew_ms: u64,
    /// Member name -> its public key; `server = true` for the servers.
    #[serde(default)]
    pub roster: BTreeMap<String, RosterMember>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            key_file: default_identity_key_file(),
            counters_file: default_counters_file(),
            max_age_ms: default_max_age(),
            max_skew_ms: default_max_skew(),
            roster: BTreeMap::new(),
        }
    }
}

/// One entry of `[fabric.trust.roster]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RosterMember {
    /// Its Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// May send server-only messages (server status, topology,
    /// announcements, config snapshots).
    #[serde(default)]
    pub server: bool,
}

/// `[fabric.encryption]` (SPEC 4.6).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// `none` (default) or `aead` (XChaCha20-Poly1305 with a pre-shared key).
    #[serde(default)]
    pub mode: EncryptionMode,
    /// Key id carried in the clear header, so keys can be rotated.
    #[serde(default = "default_key_id")]
    pub key_id: u8,
    /// File holding the 32-byte key as 64 hex digits.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Older (or upcoming) keys still accepted from others while a new key
    /// is rolled out; this switch always sends with `key_id`/`key_file`.
    #[serde(default)]
    pub also_accept: Vec<AcceptedKey>,
}

/// A key accepted but not sent with (`[fabric.encryption].also_accept`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcceptedKey {
    /// Its key id.
    pub key_id: u8,
    /// Its file (64 hex digits).
    pub key_file: PathBuf,
}

/// Body protection.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// Bodies in clear.
    #[default]
    None,
    /// Bodies sealed with an AEAD; clear bodies are refused.
    Aead,
}

/// `[fabric.tls]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) members use to verify the broker.
    pub ca_file: PathBuf,
    /// The embedded broker's certificate chain (PEM); servers only.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The embedded broker's private key (PEM); servers only.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// This switch's client certificate chain (PEM), presented to the
    /// broker (mutual TLS); goes with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// This switch's client private key (PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Servers hosting `broker = "mosquitto"`: the broker accepts only
    /// clients with a certificate from this CA (PEM). rumqttd (the
    /// embedded broker) cannot be told to at run time.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_port() -> u16 {
    1883
}
fn default_broker() -> String {
    "embedded".into()
}
fn default_model() -> String {
    "linux".into()
}
fn default_prefix() -> String {
    "mlag-sync".into()
}
fn yes() -> bool {
    true
}
fn default_heartbeat() -> u64 {
    1000
}
fn default_dead() -> u64 {
    3500
}
fn default_failover() -> u64 {
    3000
}
fn default_resend() -> u64 {
    2000
}
fn default_key_id() -> u8 {
    1
}
fn default_heartbeat_rate() -> u32 {
    5
}
fn default_identity_key_file() -> PathBuf {
    "/var/lib/mlag-sync/fabric-identity.key".into()
}
fn default_counters_file() -> PathBuf {
    "/var/lib/mlag-sync/fabric-counters.json".into()
}
fn default_max_age() -> u64 {
    60_000
}
fn default_max_skew() -> u64 {
    5_000
}
fn default_prune() -> u64 {
    600_000
}
fn default_max_members() -> usize {
    super::state::DEFAULT_MAX_MEMBERS
}
fn default_fault_rate() -> u32 {
    20
}
fn default_set_timeout() -> u64 {
    5000
}

/// Where members connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerChoice {
    /// Each server hosts a broker (rumqttd, in process); members try them
    /// in order.
    Embedded,
    /// Each server hosts a broker as a supervised mosquitto process;
    /// members try them in order.
    Mosquitto,
    /// One external broker.
    External {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// `mqtts://`.
        tls: bool,
    },
}

impl BrokerChoice {
    /// Each server hosts a broker (members try the servers in order).
    pub fn is_hosted(&self) -> bool {
        matches!(self, BrokerChoice::Embedded | BrokerChoice::Mosquitto)
    }
}

impl FabricConfig {
    /// The broker choice, parsed.
    pub fn broker_choice(&self) -> Result<BrokerChoice, String> {
        match self.broker.as_str() {
            "embedded" => return Ok(BrokerChoice::Embedded),
            "mosquitto" => return Ok(BrokerChoice::Mosquitto),
            _ => {}
        }
        let (tls, rest) = if let Some(rest) = self.broker.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = self.broker.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!(
                "'{}' must be \"embedded\", \"mosquitto\", mqtt://host:port or mqtts://host:port",
                self.broker
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("'{port}' in '{}' is not a port", self.broker))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("'{}' names no host", self.broker));
        }
        Ok(BrokerChoice::External {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// Every problem of the section, as (field, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut problem =
            |field: &str, message: String| out.push((format!("fabric.{field}"), message));
        if self.servers.is_empty() || self.servers.len() > 2 {
            problem(
                "servers",
                format!(
                    "lists {} address(es); give the primary and optionally a backup",
                    self.servers.len()
                ),
            );
        } else if self.servers.len() == 2 && self.servers[0] == self.servers[1] {
            problem("servers", "primary and backup are the same address".into());
        }
        if let Err(err) = self.broker_choice() {
            problem("broker", err);
        }
        if self.prefix.is_empty()
            || self.prefix.contains(['#', '+'])
            || self.prefix.starts_with('/')
        {
            problem(
                "prefix",
                format!(
                    "'{}' must be non-empty, without '#', '+' or a leading '/'",
                    self.prefix
                ),
            );
        }
        if let Some(identity) = &self.identity
            && (identity.is_empty() || identity.len() > 64 || identity.contains(['/', '#', '+']))
        {
            problem(
                "identity",
                format!("'{identity}' must be 1-64 characters without '/', '#' or '+'"),
            );
        }
        for (field, value) in [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("failover_after_ms", self.failover_after_ms),
            ("takeover_after_ms", self.takeover_after_ms),
            ("resend_ms", self.resend_ms),
            ("set_timeout_ms", self.set_timeout_ms),
        ] {
            if !(50..=600_000).contains(&value) {
                problem(field, format!("{value} must be between 50 and 600000"));
            }
        }
        if self.dead_after_ms <= self.heartbeat_interval_ms {
            problem(
                "dead_after_ms",
                format!(
                    "{} must exceed heartbeat_interval_ms ({})",
                    self.dead_after_ms, self.heartbeat_interval_ms
                ),
            );
        }
        if self.max_heartbeats_per_s == 0 {
            problem("max_heartbeats_per_s", "must be at least 1".into());
        }
        if self.max_faults_per_s == 0 {
            problem("max_faults_per_s", "must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&self.max_members) {
            problem(
                "max_members",
                format!("{} must be between 1 and 1000000", self.max_members),
            );
        }
        if !(100..=604_800_000).contains(&self.prune_after_ms) {
            problem(
                "prune_after_ms",
                format!(
                    "{} must be between 100 and 604800000 (a week)",
                    self.prune_after_ms
                ),
            );
        }
        if self.encryption.mode == EncryptionMode::Aead && self.encryption.key_file.is_none() {
            problem(
                "encryption.key_file",
                "mode = \"aead\" needs a key_file (64 hex digits)".into(),
            );
        }
        let mut ids = vec![self.encryption.key_id];
        for (i, accepted) in self.encryption.also_accept.iter().enumerate() {
            if ids.contains(&accepted.key_id) {
                problem(
                    &format!("encryption.also_accept[{i}].key_id"),
                    format!("key id {} is listed twice", accepted.key_id),
                );
            }
            ids.push(accepted.key_id);
        }
        if !self.encryption.also_accept.is_empty() && self.encryption.mode != EncryptionMode::Aead {
            problem(
                "encryption.also_accept",
                "extra keys need mode = \"aead\"".into(),
            );
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                problem("tls", "cert_file and key_file go together".into());
            }
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                problem(
                    "tls",
                    "client_cert_file and client_key_file go together".into(),
                );
            }
            if tls.client_ca_file.is_some() {
                if tls.cert_file.is_none() {
                    problem(
                        "tls.client_ca_file",
                        "only a server hosting the broker (with cert_file and key_file) checks client certificates".into(),
                    );
                }
                if !matches!(self.broker_choice(), Ok(BrokerChoice::Mosquitto)) {
                    problem(
                        "tls.client_ca_file",
                        "client certificates are checked by a hosted mosquitto only: set broker = \"mosquitto\" (the embedded rumqttd decides at build time, not per config), or enforce them on an external broker".into(),
                    );
                }
            }
        }
        let trust = &self.trust;
        if trust.roster.is_empty() {
            problem(
                "trust.roster",
                "lists no member: give every member's public key (`sync-agent fabric key --config FILE` prints this switch's)".into(),
            );
        } else if !trust.roster.values().any(|m| m.server) {
            problem(
                "trust.roster",
                "marks no member as a server (server = true)".into(),
            );
        }
        for (name, member) in &trust.roster {
            if let Err(err) = super::identity::parse_public_key(&member.public_key) {
                problem(&format!("trust.roster.{name}.public_key"), err);
            }
        }
        if !(1_000..=86_400_000).contains(&trust.max_age_ms) {
            problem(
                "trust.max_age_ms",
                format!("{} must be between 1000 and 86400000", trust.max_age_ms),
            );
        }
        if trust.max_skew_ms > 600_000 {
            problem(
                "trust.max_skew_ms",
                format!("{} must be at most 600000", trust.max_skew_ms),
            );
        }
        out
    }

    /// Heartbeat interval as a duration.
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_interval_ms)
    }
}
