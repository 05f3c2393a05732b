//! `[rollout.center]`: how to run the config center (SPEC 6.1).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::engine::OnLost;
use super::store::DEFAULT_MAX_CONFIG_BYTES;
use crate::validate::Problems;

/// Most steps per rollout batch unless configured.
pub const DEFAULT_BATCH_SIZE: usize = 10;
/// Listen address of [`CenterConfig::default`] (the config file names one).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7480";
/// Database file of [`CenterConfig::default`] (the config file names one).
pub const DEFAULT_DB_PATH: &str = "/var/lib/mlag-sync/center.redb";

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
    /// The embedded database file (created with its directory if missing).
    pub db_path: PathBuf,
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
}

impl Default for CenterConfig {
    fn default() -> Self {
        CenterConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            batch_size: DEFAULT_BATCH_SIZE,
            pace_ms: 0,
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            step_timeout_s: DEFAULT_STEP_TIMEOUT_S,
            device_expiry_s: DEFAULT_DEVICE_EXPIRY_S,
            on_lost: OnLost::Pause,
            keep_versions: None,
        }
    }
}

impl CenterConfig {
    /// Every problem of `[rollout.center]`.
    pub fn problems(&self, out: &mut Problems) {
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

    #[test]
    fn batch_size_zero_is_a_problem_of_its_field() {
        let config = CenterConfig {
            batch_size: 0,
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
}
