//! `[rollout.center]`: how to run the config center (SPEC 6.1).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::auth::{TokenConfig, Tokens};
use super::engine::OnLost;
use super::store::DEFAULT_MAX_CONFIG_BYTES;
use crate::validate::Problems;

/// Most steps per rollout batch unless configured.
pub const DEFAULT_BATCH_SIZE: usize = 10;
/// Listen address of [`CenterConfig::default`] (the config file names one).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7480";
/// Database file of [`CenterConfig::default`] (the config file names one).
pub const DEFAULT_DB_PATH: &str = "/var/lib/mlag-sync/center.redb";

/// Key prefix of the center's state in etcd unless configured.
pub const DEFAULT_ETCD_PREFIX: &str = "/mlag-sync/center/";

/// Seconds of an etcd session lease unless configured: how long a center
/// may be silent before the others take over its rollout engine (and its
/// write lock).
pub const DEFAULT_ETCD_LEASE_TTL_S: u64 = 5;

fn default_etcd_lease_ttl_s() -> u64 {
    DEFAULT_ETCD_LEASE_TTL_S
}

/// Where the center keeps its durable state (see [`super::storage`]).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One embedded redb file, `db_path` (one machine, nothing to install).
    #[default]
    Redb,
    /// An etcd cluster, `etcd_endpoints`, under `etcd_prefix` (state that
    /// outlives one machine).
    Etcd,
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

fn default_max_config_bytes() -> usize {
    DEFAULT_MAX_CONFIG_BYTES
}

/// Seconds a released step may wait for its acknowledgement by default.
pub const DEFAULT_STEP_TIMEOUT_S: u64 = 300;
/// Seconds of silence after which a device is lost by default (a device
/// polls at least every `watch_timeout_ms`, 30 s by default).
pub const DEFAULT_DEVICE_EXPIRY_S: u64 = 120;

fn default_step_timeout_s() -> u64 {
    DEFAULT_STEP_TIMEOUT_S
}

fn default_device_expiry_s() -> u64 {
    DEFAULT_DEVICE_EXPIRY_S
}

/// `[rollout.center]`: how to run the config center. `listen` and `db_path`
/// are required in a config file; [`Default`] gives them for tests and tools
/// (`CenterConfig { listen, db_path, ..Default::default() }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CenterConfig {
    /// HTTP listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// The embedded database file (created with its directory if missing),
    /// used with `store = "redb"`.
    pub db_path: PathBuf,
    /// Where the state is kept: `redb` (the default: the file `db_path`)
    /// or `etcd` (`etcd_endpoints`, `etcd_prefix`).
    #[serde(default)]
    pub store: StoreKind,
    /// With `store = "etcd"`: the cluster's client URLs, at least one,
    /// all `http://host:2379` or all `https://host:2379` (TLS: then
    /// `etcd_ca_file` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    /// With `store = "etcd"`: the prefix of every key the center writes
    /// (default `/mlag-sync/center/`), so several centers' clusters or
    /// other users can share one etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_prefix: Option<String>,
    /// With `store = "etcd"`: seconds within which another center takes
    /// the rollout engine over when the one running it dies (default 5,
    /// at least 3). The center's etcd session lease is granted a second
    /// shorter (see `storage::etcd_backend::granted_lease_s`).
    #[serde(default = "default_etcd_lease_ttl_s")]
    pub etcd_lease_ttl_s: u64,
    /// With `https://` endpoints: the CA certificate(s) (PEM) that signed
    /// the etcd members' certificates, the only roots trusted for them
    /// (required: etcd clusters use a CA of their own, so the system's
    /// roots are never consulted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca_file: Option<PathBuf>,
    /// With `https://` endpoints: this center's client certificate (PEM),
    /// for an etcd started with `--client-cert-auth`; with
    /// `etcd_key_file`, both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `etcd_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_key_file: Option<PathBuf>,
    /// An etcd user (etcd with `auth enable`): the center authenticates
    /// as this user; with `etcd_password_file`, both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_user: Option<String>,
    /// The file holding `etcd_user`'s password (its first line): a
    /// password is never written in the config itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_password_file: Option<PathBuf>,
    /// Refused when present: it exists only so that a password written
    /// into the config is named and pointed to `etcd_password_file`
    /// rather than met with a bare "unknown field" (never serialized).
    #[serde(default, skip_serializing)]
    pub etcd_password: Option<String>,
    /// Most steps per rollout batch (default 10).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Delay between two batches of a rollout, milliseconds (default 0).
    #[serde(default)]
    pub pace_ms: u64,
    /// Largest config content accepted, bytes (default 1 MiB).
    #[serde(default = "default_max_config_bytes")]
    pub max_config_bytes: usize,
    /// A released step not acknowledged within this many seconds fails and
    /// pauses its rollout (default 300; 0: wait forever).
    #[serde(default = "default_step_timeout_s")]
    pub step_timeout_s: u64,
    /// A device not heard from (register, poll, ack) for this many seconds
    /// is lost (default 120; 0: never).
    #[serde(default = "default_device_expiry_s")]
    pub device_expiry_s: u64,
    /// What a lost device does to a rollout waiting for it: `pause` (the
    /// default; the reason names the device) or `skip` its steps.
    #[serde(default)]
    pub on_lost: OnLost,
    /// Versions kept in each config's history (default: all). Older ones
    /// are removed as new ones are made; the audit log keeps their MD5s.
    #[serde(default)]
    pub keep_versions: Option<u64>,
    /// PEM certificate chain served over HTTPS (with `tls_key`); without
    /// both the API is plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Allows listening on a non-loopback address without tokens or
    /// without TLS (warned about at start). Default false: such a center
    /// refuses to start.
    #[serde(default)]
    pub insecure: bool,
    /// `[[rollout.center.tokens]]`: who may do what (see `auth`). None:
    /// every request is allowed (only on loopback unless `insecure`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenConfig>,
}

impl Default for CenterConfig {
    fn default() -> Self {
        CenterConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            store: StoreKind::Redb,
            etcd_endpoints: Vec::new(),
            etcd_prefix: None,
            etcd_lease_ttl_s: DEFAULT_ETCD_LEASE_TTL_S,
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            etcd_user: None,
            etcd_password_file: None,
            etcd_password: None,
            batch_size: DEFAULT_BATCH_SIZE,
            pace_ms: 0,
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            step_timeout_s: DEFAULT_STEP_TIMEOUT_S,
            device_expiry_s: DEFAULT_DEVICE_EXPIRY_S,
            on_lost: OnLost::Pause,
            keep_versions: None,
            tls_cert: None,
            tls_key: None,
            insecure: false,
            tokens: Vec::new(),
        }
    }
}

impl CenterConfig {
    /// What a center reachable from the network lacks: `"tokens"` and/or
    /// `"TLS"` (empty: both configured).
    pub fn missing_protection(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.tokens.is_empty() {
            missing.push("tokens");
        }
        if self.tls_cert.is_none() || self.tls_key.is_none() {
            missing.push("TLS");
        }
        missing
    }

    /// Why this center must not start as configured: it listens beyond
    /// loopback without tokens and TLS, and `insecure` is not set.
    pub fn exposure_problem(&self) -> Option<String> {
        let missing = self.missing_protection();
        if self.listen.ip().is_loopback() || self.insecure || missing.is_empty() {
            return None;
        }
        Some(format!(
            "listening on {} (beyond loopback) without {}: anyone who reaches it could change every device; configure tls_cert/tls_key and [[rollout.center.tokens]] (see `sync-agent config token new`), listen on 127.0.0.1, or set insecure = true",
            self.listen,
            missing.join(" and ")
        ))
    }

    /// The key prefix in etcd: `etcd_prefix`, or [`DEFAULT_ETCD_PREFIX`].
    pub fn etcd_prefix(&self) -> &str {
        self.etcd_prefix.as_deref().unwrap_or(DEFAULT_ETCD_PREFIX)
    }

    /// Every problem of `[rollout.center]`.
    pub fn problems(&self, out: &mut Problems) {
        Tokens::from_config(&self.tokens, out);
        self.store_problems(out);
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => out.add(
                "rollout.center.tls_key",
                "tls_cert is set: give tls_key too",
            ),
            (None, Some(_)) => out.add(
                "rollout.center.tls_cert",
                "tls_key is set: give tls_cert too",
            ),
            _ => {}
        }
        if let Some(problem) = self.exposure_problem() {
            out.add("rollout.center.listen", problem);
        }
        if self.batch_size == 0 {
            out.add("rollout.center.batch_size", "must be at least 1");
        }
        if self.device_expiry_s > 0 && self.device_expiry_s < 5 {
            out.add(
                "rollout.center.device_expiry_s",
                "must be 0 (never) or at least 5 seconds (devices poll every few seconds)",
            );
        }
        if self.keep_versions == Some(0) {
            out.add(
                "rollout.center.keep_versions",
                "must be at least 1 (leave it out to keep every version)",
            );
        }
        if self.max_config_bytes == 0 {
            out.add("rollout.center.max_config_bytes", "must be at least 1");
        }
    }

    /// Problems of `store` and the settings of the store it names.
    fn store_problems(&self, out: &mut Problems) {
        if self.etcd_password.is_some() {
            out.add(
                "rollout.center.etcd_password",
                "a password is never written in the config: put it in a file only the agent can read and name that file in etcd_password_file",
            );
        }
        if self.store == StoreKind::Redb {
            for (field, set) in [
                ("etcd_endpoints", !self.etcd_endpoints.is_empty()),
                ("etcd_prefix", self.etcd_prefix.is_some()),
                ("etcd_ca_file", self.etcd_ca_file.is_some()),
                ("etcd_cert_file", self.etcd_cert_file.is_some()),
                ("etcd_key_file", self.etcd_key_file.is_some()),
                ("etcd_user", self.etcd_user.is_some()),
                ("etcd_password_file", self.etcd_password_file.is_some()),
            ] {
                if set {
                    out.add(
                        format!("rollout.center.{field}"),
                        "is for store = \"etcd\"; this center uses store = \"redb\" (db_path)",
                    );
                }
            }
            return;
        }
        if self.etcd_endpoints.is_empty() {
            out.add(
                "rollout.center.etcd_endpoints",
                "store = \"etcd\" needs at least one endpoint, e.g. [\"http://10.0.0.1:2379\"]",
            );
        }
        for (i, endpoint) in self.etcd_endpoints.iter().enumerate() {
            if let Err(why) = check_endpoint(endpoint) {
                out.add(format!("rollout.center.etcd_endpoints[{i}]"), why);
            }
        }
        self.etcd_security_problems(out);
        if !(3..=600).contains(&self.etcd_lease_ttl_s) {
            out.add(
                "rollout.center.etcd_lease_ttl_s",
                "must be 3 to 600 seconds (how long a dead center may keep the rollout engine)",
            );
        }
        let prefix = self.etcd_prefix();
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
            out.add(
                "rollout.center.etcd_prefix",
                format!("{prefix:?} must start and end with '/' and name something, e.g. \"{DEFAULT_ETCD_PREFIX}\""),
            );
        } else if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            out.add(
                "rollout.center.etcd_prefix",
                format!("{prefix:?} contains white space or a control character"),
            );
        }
    }
}

impl CenterConfig {
    /// Whether the etcd endpoints use TLS (`https://`; the config's
    /// problems refuse a mix).
    pub fn etcd_tls(&self) -> bool {
        self.etcd_endpoints
            .iter()
            .any(|endpoint| endpoint.starts_with("https://"))
    }

    /// Problems of the TLS and credential settings of `store = "etcd"`
    /// that the config alone shows (the files are read when the store is
    /// opened: [`super::storage::etcd_access`]).
    fn etcd_security_problems(&self, out: &mut Problems) {
        let https = self
            .etcd_endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let tls = https > 0;
        if tls && https < self.etcd_endpoints.len() {
            out.add(
                "rollout.center.etcd_endpoints",
                "mixes http:// and https://: the members of one etcd cluster all serve TLS or none do",
            );
        }
        if tls && self.etcd_ca_file.is_none() {
            out.add(
                "rollout.center.etcd_ca_file",
                "the etcd endpoints are https://: give the CA certificate (PEM) that signed the etcd members' certificates (the system's roots are not used for etcd)",
            );
        }
        if !tls {
            for (field, set) in [
                ("etcd_ca_file", self.etcd_ca_file.is_some()),
                ("etcd_cert_file", self.etcd_cert_file.is_some()),
                ("etcd_key_file", self.etcd_key_file.is_some()),
            ] {
                if set {
                    out.add(
                        format!("rollout.center.{field}"),
                        "is for TLS to etcd, but etcd_endpoints are http://: use https:// endpoints",
                    );
                }
            }
        }
        match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(_), None) => out.add(
                "rollout.center.etcd_key_file",
                "etcd_cert_file is set: give etcd_key_file (its private key) too",
            ),
            (None, Some(_)) => out.add(
                "rollout.center.etcd_cert_file",
                "etcd_key_file is set: give etcd_cert_file (its certificate) too",
            ),
            _ => {}
        }
        match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), _) if user.is_empty() || user.chars().any(char::is_control) => out.add(
                "rollout.center.etcd_user",
                "must name an etcd user (not empty, no control characters)",
            ),
            (Some(_), None) => out.add(
                "rollout.center.etcd_password_file",
                "etcd_user is set: give etcd_password_file, the file holding its password",
            ),
            (None, Some(_)) => out.add(
                "rollout.center.etcd_user",
                "etcd_password_file is set: give etcd_user, the user it is the password of",
            ),
            _ => {}
        }
    }
}

/// An etcd client URL: `http://` or `https://`, a host, a port.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        return Err(format!("{endpoint:?} must start with http:// or https://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains('/') => port,
        _ => {
            return Err(format!(
                "{endpoint:?} must name a host and a port, e.g. http://10.0.0.1:2379"
            ));
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{endpoint:?} has no valid port ({port:?})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_with_only_the_required_fields_takes_the_defaults() {
        let config: CenterConfig =
            toml::from_str("listen = \"127.0.0.1:7480\"\ndb_path = \"/tmp/c.redb\"\n").unwrap();
        assert_eq!(
            config,
            CenterConfig {
                listen: "127.0.0.1:7480".parse().unwrap(),
                db_path: "/tmp/c.redb".into(),
                ..Default::default()
            }
        );
        assert_eq!(
            (config.batch_size, config.pace_ms, config.max_config_bytes),
            (10, 0, 1 << 20)
        );
    }

    fn problem_fields(config: &CenterConfig) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        config.problems(&mut problems);
        problems
            .into_vec()
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect()
    }

    #[test]
    fn beyond_loopback_a_center_needs_tokens_and_tls_or_insecure() {
        let tls = CenterConfig {
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            ..Default::default()
        };
        let token = TokenConfig {
            name: "ops".into(),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
            roles: vec!["*:admin".into()],
            device: None,
        };
        // The default listens on 0.0.0.0 with neither.
        let problems = problem_fields(&CenterConfig::default());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "rollout.center.listen");
        assert!(
            problems[0].1.contains("without tokens and TLS"),
            "{}",
            problems[0].1
        );
        let problems = problem_fields(&tls);
        assert!(problems[0].1.contains("without tokens:"), "{problems:?}");
        let protected = CenterConfig {
            tokens: vec![token],
            ..tls.clone()
        };
        assert_eq!(problem_fields(&protected), []);
        assert!(protected.missing_protection().is_empty());
        let loopback = CenterConfig {
            listen: "127.0.0.1:7480".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(problem_fields(&loopback), []);
        assert_eq!(loopback.missing_protection(), ["tokens", "TLS"]);
        let v6 = CenterConfig {
            listen: "[::1]:7480".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(problem_fields(&v6), []);
        let insecure = CenterConfig {
            insecure: true,
            ..Default::default()
        };
        assert_eq!(problem_fields(&insecure), []);
        let half = CenterConfig {
            tls_key: None,
            ..tls
        };
        assert!(
            problem_fields(&half)
                .iter()
                .any(|(f, _)| f == "rollout.center.tls_key")
        );
    }

    #[test]
    fn tokens_read_from_the_section_and_their_problems_name_the_entry() {
        let config: CenterConfig = toml::from_str(
            "listen = \"127.0.0.1:7480\"\ndb_path = \"/tmp/c.redb\"\n\
             [[tokens]]\nname = \"ops\"\nsha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nroles = [\"prod:publish\", \"*:read\"]\n\
             [[tokens]]\nname = \"sw1\"\nsha256 = \"00\"\ndevice = \"sw1\"\n",
        )
        .unwrap();
        assert_eq!(config.tokens.len(), 2);
        assert_eq!(config.tokens[0].roles, ["prod:publish", "*:read"]);
        let problems = problem_fields(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "rollout.center.tokens[1].sha256");
    }

    #[test]
    fn batch_size_zero_is_a_problem_of_its_field() {
        let config = CenterConfig {
            batch_size: 0,
            insecure: true,
            ..Default::default()
        };
        let mut problems = Problems::default();
        config.problems(&mut problems);
        let problems = problems.into_vec();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "rollout.center.batch_size");
        assert!(
            toml::from_str::<CenterConfig>(
                "listen = \"127.0.0.1:1\"\ndb_path = \"x\"\nbogus = 1\n"
            )
            .is_err()
        );
    }

    #[test]
    fn the_store_is_redb_unless_etcd_is_chosen_with_its_endpoints() {
        let base = "listen = \"127.0.0.1:7480\"\ndb_path = \"/tmp/c.redb\"\n";
        let redb: CenterConfig = toml::from_str(base).unwrap();
        assert_eq!(redb.store, StoreKind::Redb);
        assert_eq!(problem_fields(&redb), []);

        let etcd: CenterConfig = toml::from_str(&format!(
            "{base}store = \"etcd\"\netcd_endpoints = [\"http://10.0.0.1:2379\", \"http://e2:2379/\"]\n"
        ))
        .unwrap();
        assert_eq!(etcd.store, StoreKind::Etcd);
        assert_eq!(etcd.etcd_prefix(), DEFAULT_ETCD_PREFIX);
        assert_eq!(problem_fields(&etcd), []);

        let bad: CenterConfig = toml::from_str(&format!(
            "{base}store = \"etcd\"\netcd_endpoints = [\"10.0.0.1:2379\", \"http://e2\", \"http://e3:0\", \"ftp://e4:2379\"]\netcd_prefix = \"center\"\n"
        ))
        .unwrap();
        let problems = problem_fields(&bad);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rollout.center.etcd_endpoints[0]",
                "rollout.center.etcd_endpoints[1]",
                "rollout.center.etcd_endpoints[2]",
                "rollout.center.etcd_endpoints[3]",
                "rollout.center.etcd_prefix"
            ],
            "{problems:?}"
        );
        assert!(
            problems[0]
                .1
                .contains("must start with http:// or https://"),
            "{problems:?}"
        );
        assert!(problems[1].1.contains("a host and a port"), "{problems:?}");

        let none: CenterConfig = toml::from_str(&format!("{base}store = \"etcd\"\n")).unwrap();
        let problems = problem_fields(&none);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "rollout.center.etcd_endpoints");

        // etcd settings on a redb center are a mistake worth naming.
        let stray: CenterConfig =
            toml::from_str(&format!("{base}etcd_endpoints = [\"http://e:2379\"]\n")).unwrap();
        let problems = problem_fields(&stray);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("store = \"etcd\""), "{problems:?}");
        assert!(toml::from_str::<CenterConfig>(&format!("{base}store = \"zookeeper\"\n")).is_err());
    }

    #[test]
    fn tls_and_credentials_to_etcd_go_together_and_name_the_field_that_is_missing() {
        let base = "listen = \"127.0.0.1:7480\"\ndb_path = \"/tmp/c.redb\"\nstore = \"etcd\"\n";
        let parse =
            |extra: &str| -> CenterConfig { toml::from_str(&format!("{base}{extra}")).unwrap() };
        let fields = |config: &CenterConfig| -> Vec<String> {
            problem_fields(config).into_iter().map(|(f, _)| f).collect()
        };
        let secure = parse(
            "etcd_endpoints = [\"https://e1:2379\", \"https://e2:2379\"]\n\
             etcd_ca_file = \"/etc/etcd/ca.pem\"\netcd_cert_file = \"/etc/c.pem\"\netcd_key_file = \"/etc/c.key\"\n\
             etcd_user = \"center\"\netcd_password_file = \"/etc/mlag-sync/etcd.password\"\n",
        );
        assert_eq!(problem_fields(&secure), []);
        assert!(secure.etcd_tls());
        // Credentials over plain http are allowed (etcd allows them too).
        let plain_auth = parse(
            "etcd_endpoints = [\"http://e1:2379\"]\netcd_user = \"center\"\netcd_password_file = \"/p\"\n",
        );
        assert_eq!(problem_fields(&plain_auth), []);
        assert!(!plain_auth.etcd_tls());

        // https:// without the cluster's CA.
        let no_ca = parse("etcd_endpoints = [\"https://e1:2379\"]\n");
        let problems = problem_fields(&no_ca);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "rollout.center.etcd_ca_file");
        assert!(problems[0].1.contains("https://"), "{problems:?}");
        // A mix of http and https; TLS files for http endpoints.
        let mixed = parse(
            "etcd_endpoints = [\"https://e1:2379\", \"http://e2:2379\"]\netcd_ca_file = \"/ca\"\n",
        );
        assert_eq!(fields(&mixed), ["rollout.center.etcd_endpoints"]);
        let tls_on_http = parse(
            "etcd_endpoints = [\"http://e1:2379\"]\netcd_ca_file = \"/ca\"\netcd_cert_file = \"/c\"\netcd_key_file = \"/k\"\n",
        );
        assert_eq!(
            fields(&tls_on_http),
            [
                "rollout.center.etcd_ca_file",
                "rollout.center.etcd_cert_file",
                "rollout.center.etcd_key_file"
            ]
        );
        // Halves of a pair.
        let half = parse(
            "etcd_endpoints = [\"https://e1:2379\"]\netcd_ca_file = \"/ca\"\netcd_cert_file = \"/c\"\netcd_user = \"center\"\n",
        );
        assert_eq!(
            fields(&half),
            [
                "rollout.center.etcd_key_file",
                "rollout.center.etcd_password_file"
            ]
        );
        let other_half = parse(
            "etcd_endpoints = [\"https://e1:2379\"]\netcd_ca_file = \"/ca\"\netcd_key_file = \"/k\"\netcd_password_file = \"/p\"\n",
        );
        assert_eq!(
            fields(&other_half),
            ["rollout.center.etcd_cert_file", "rollout.center.etcd_user"]
        );
        // A password in the config itself is refused, pointing to the file.
        let inline = parse(
            "etcd_endpoints = [\"http://e1:2379\"]\netcd_user = \"center\"\netcd_password = \"hunter2\"\n",
        );
        let problems = problem_fields(&inline);
        assert_eq!(
            problems.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
            [
                "rollout.center.etcd_password",
                "rollout.center.etcd_password_file"
            ]
        );
        assert!(
            problems[0].1.contains("never written in the config"),
            "{problems:?}"
        );
        assert!(
            !toml::to_string(&inline).unwrap().contains("hunter2"),
            "never serialized"
        );
        // On a redb center each of them is a stray setting.
        let stray: CenterConfig = toml::from_str(
            "listen = \"127.0.0.1:7480\"\ndb_path = \"/tmp/c.redb\"\netcd_ca_file = \"/ca\"\netcd_user = \"u\"\netcd_password_file = \"/p\"\n",
        )
        .unwrap();
        assert_eq!(
            fields(&stray),
            [
                "rollout.center.etcd_ca_file",
                "rollout.center.etcd_user",
                "rollout.center.etcd_password_file"
            ]
        );
    }
}
