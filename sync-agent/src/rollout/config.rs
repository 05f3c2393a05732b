//! `[rollout]`: this agent as config center, as device, or both (SPEC 6).

use serde::{Deserialize, Serialize};

use crate::validate::Problems;

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

impl RolloutConfig {
    /// Every problem of the `[rollout]` sections.
    pub fn problems(&self, out: &mut Problems) {
        if let Some(center) = &self.center
            && center.batch_size == 0
        {
            out.add("rollout.center.batch_size", "must be at least 1");
        }
        if let Some(device) = &self.device
            && let Err(err) = device.validate()
        {
            out.add("rollout.device", format!("{err:#}"));
        }
    }
}
