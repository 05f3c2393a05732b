//! The JSON shapes the config center, the device side and the CLI exchange
//! (SPEC 6). Bodies a peer sends to the center (`PutConfig`, `Register`,
//! `Ack`, ...) refuse unknown fields so a typo is an error, not a silent
//! default; answers the center sends do not, so a newer center can add fields.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest namespace, group, name, device or service name.
pub const MAX_NAME_LEN: usize = 64;

/// How long the center holds a long poll (`watch`) that asks for no
/// `timeout_ms`, and what a device asks for unless configured otherwise.
pub const DEFAULT_WATCH_TIMEOUT_MS: u64 = 30_000;
/// The longest a center holds a long poll, whatever the device asks for.
pub const MAX_WATCH_TIMEOUT_MS: u64 = 120_000;

/// Lower-case hex MD5 of `data`: the digest the center publishes with every
/// version and devices compare what they have with.
pub fn md5_hex(data: impl AsRef<[u8]>) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(data.as_ref()))
}

/// Checks one name: 1 to 64 characters out of `[A-Za-z0-9._-]`. `what` names
/// the thing in the error ("namespace", "device", ...).
pub fn check_name(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} {value:?} is {} characters long, at most {MAX_NAME_LEN} allowed",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} {value:?} contains {bad:?}; only A-Z a-z 0-9 . _ - are allowed"
        ));
    }
    Ok(())
}

/// Where a config lives: `namespace/group/name`. Every value of this type
/// (built with [`ConfigKey::new`], parsed, or deserialized) has valid parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawConfigKey")]
pub struct ConfigKey {
    pub namespace: String,
    pub group: String,
    pub name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfigKey {
    namespace: String,
    group: String,
    name: String,
}

impl TryFrom<RawConfigKey> for ConfigKey {
    type Error = String;
    fn try_from(raw: RawConfigKey) -> Result<Self, String> {
        ConfigKey::new(raw.namespace, raw.group, raw.name)
    }
}

impl ConfigKey {
    /// A key from its three parts, each checked with [`check_name`].
    pub fn new(
        namespace: impl Into<String>,
        group: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, String> {
        let key = ConfigKey {
            namespace: namespace.into(),
            group: group.into(),
            name: name.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks the three parts (for keys built field by field).
    pub fn validate(&self) -> Result<(), String> {
        check_name("namespace", &self.namespace)?;
        check_name("group", &self.group)?;
        check_name("name", &self.name)
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.name)
    }
}

impl FromStr for ConfigKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(group), Some(name), None) => ConfigKey::new(ns, group, name),
            _ => Err(format!(
                "config key {s:?} is not of the form namespace/group/name"
            )),
        }
    }
}

/// The declared format of a config's content; the structured ones are
/// validated when the config is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
    Yaml,
    Toml,
    Properties,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Text,
        Format::Json,
        Format::Yaml,
        Format::Toml,
        Format::Properties,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Properties => "properties",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown format {s:?}; expected text, json, yaml, toml or properties")
            })
    }
}

/// One version of one config, as stored (current or history snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub key: ConfigKey,
    pub format: Format,
    pub content: String,
    pub description: String,
    /// 1 for the first version, +1 for every change.
    pub version: u64,
    /// Lower-case hex MD5 of `content`.
    pub md5: String,
    /// Unix time in milliseconds when this version was made.
    pub updated_ms: u64,
    pub author: String,
}

/// Body of `PUT /v1/configs/{ns}/{group}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutConfig {
    pub format: Format,
    pub content: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub author: String,
}

/// Body of `POST .../rollback`: the version whose content becomes a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: u64,
    #[serde(default)]
    pub author: String,
}

/// Body of `POST .../clone`: copy the current version to another
/// namespace/group under the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    pub namespace: String,
    pub group: String,
    #[serde(default)]
    pub author: String,
}

/// Answer of `GET .../diff?from=A&to=B`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffAnswer {
    pub diff: String,
}

/// One service of a device and the config it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRegistration {
    pub name: String,
    pub config: ConfigKey,
    /// Services of the same device that must be updated before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// Body of `POST /v1/devices/{device}/register`: the device's whole set of
/// services (a later registration replaces the earlier one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub services: Vec<ServiceRegistration>,
    /// Free-form labels (e.g. `canary`, `rack-3`) a rollout's `canary` list
    /// may name instead of device names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// "Service `service` of this device should run version `version` of `key`."
/// `rollout_id` 0 is the initial config released when the service
/// registered, outside any rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub rollout_id: u64,
    pub service: String,
    pub key: ConfigKey,
    pub version: u64,
    pub md5: String,
}

/// Answer of the long poll `GET /v1/devices/{device}/watch`: the assignments
/// whose MD5 differs from what the device has, in its dependency order; empty
/// when the poll timed out.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchAnswer {
    pub assignments: Vec<Assignment>,
}

/// Body of `POST /v1/devices/{device}/ack`: the outcome of applying one
/// assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub rollout_id: u64,
    pub service: String,
    pub version: u64,
    pub ok: bool,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Not released yet (a later batch).
    Pending,
    /// Released to the device, no acknowledgement yet.
    Assigned,
    Succeeded,
    Failed,
    /// Settled without the device: it no longer registers the service, it
    /// was lost (`on_lost = "skip"`), removed, or an operator skipped it.
    Skipped,
}

impl StepState {
    /// Succeeded or skipped: the batch need not wait for it any more.
    pub fn is_settled(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }
}

/// One (device, service) update inside a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub device: String,
    pub service: String,
    pub state: StepState,
    /// The device's reason on failure, or why the center settled the step
    /// itself (e.g. "skipped: ...", "unchanged: ...").
    pub reason: String,
    pub assigned_ms: Option<u64>,
    pub acked_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Running,
    Paused,
    Done,
}

/// The rollout of one version of one config to every registered
/// (device, service) using it, in batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub key: ConfigKey,
    pub version: u64,
    pub state: RolloutState,
    pub batch_size: usize,
    pub pace_ms: u64,
    /// Index into `batches` of the batch being applied (== `batches.len()`
    /// once done).
    pub current_batch: usize,
    pub batches: Vec<Vec<Step>>,
    pub created_ms: u64,
    /// Why the rollout is paused (or, once done, why it ended early, e.g.
    /// superseded by a newer version or aborted); empty otherwise.
    pub paused_reason: String,
    /// Devices (names or labels) released alone in the first batch.
    #[serde(default)]
    pub canary: Vec<String>,
    /// Pause after every batch until `config continue ID`.
    #[serde(default)]
    pub approve_each_batch: bool,
}

/// What the center knows about one registered device (`GET /v1/devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device: String,
    /// The device's services in dependency order.
    pub services: Vec<ServiceRegistration>,
    /// What the center has released to each service, in the same order.
    pub released: Vec<Assignment>,
    pub registered_ms: u64,
    /// The labels the device registered with.
    #[serde(default)]
    pub labels: Vec<String>,
    /// When the center last heard from the device (register, watch, ack).
    #[serde(default)]
    pub seen_ms: u64,
    /// Silent for longer than `device_expiry_s`: its steps count as lost.
    #[serde(default)]
    pub lost: bool,
    /// Per service, the version and MD5 the device acknowledged as applied.
    #[serde(default)]
    pub confirmed: Vec<Listener>,
}

/// One (device, service) using a config and what it confirmed it runs
/// (`GET .../listeners`, `config listeners KEY`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub device: String,
    pub service: String,
    pub key: ConfigKey,
    /// The version the device acknowledged as applied (None: nothing yet).
    pub version: Option<u64>,
    /// Its MD5 (empty: nothing yet).
    pub md5: String,
    /// Whether the device is silent past `device_expiry_s`.
    #[serde(default)]
    pub lost: bool,
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parses_and_displays() {
        let k: ConfigKey = "prod/web.tier/nginx_main-1".parse().unwrap();
        assert_eq!(k.namespace, "prod");
        assert_eq!(k.to_string(), "prod/web.tier/nginx_main-1");
        assert!("a/b".parse::<ConfigKey>().is_err());
        assert!("a/b/c/d".parse::<ConfigKey>().is_err());
        assert!("a//c".parse::<ConfigKey>().is_err());
        assert!("a/b c/d".parse::<ConfigKey>().is_err());
        let long = "x".repeat(65);
        assert!(format!("a/b/{long}").parse::<ConfigKey>().is_err());
        assert!(format!("a/b/{}", &long[..64]).parse::<ConfigKey>().is_ok());
    }

    #[test]
    fn key_deserialization_validates() {
        let ok: ConfigKey =
            serde_json::from_str(r#"{"namespace":"a","group":"b","name":"c"}"#).unwrap();
        assert_eq!(ok.to_string(), "a/b/c");
        let bad =
            serde_json::from_str::<ConfigKey>(r#"{"namespace":"a","group":"b","name":"c/d"}"#)
                .unwrap_err();
        assert!(bad.to_string().contains("name"), "{bad}");
        assert!(
            serde_json::from_str::<ConfigKey>(r#"{"namespace":"a","group":"b","name":"c","x":1}"#)
                .is_err()
        );
    }

    #[test]
    fn enums_are_lowercase_and_inputs_strict() {
        assert_eq!(
            serde_json::to_string(&Format::Properties).unwrap(),
            "\"properties\""
        );
        assert_eq!(
            serde_json::to_string(&StepState::Assigned).unwrap(),
            "\"assigned\""
        );
        assert_eq!(
            serde_json::to_string(&RolloutState::Paused).unwrap(),
            "\"paused\""
        );
        assert_eq!("YAML".parse::<Format>().unwrap(), Format::Yaml);
        let p: PutConfig = serde_json::from_str(r#"{"format":"json","content":"{}"}"#).unwrap();
        assert_eq!(p.description, "");
        assert!(
            serde_json::from_str::<PutConfig>(r#"{"format":"json","content":"{}","colour":1}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<Ack>(
                r#"{"rollout_id":1,"service":"s","version":1,"ok":true,"x":0}"#
            )
            .is_err()
        );
    }
}
