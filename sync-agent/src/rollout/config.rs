//! `[rollout]`: this agent as config center, as device, or both (SPEC 6).
//! Each side owns its section: [`CenterConfig`] and [`DeviceConfig`].

use serde::{Deserialize, Serialize};

use crate::rollout::{center::CenterConfig, device::DeviceConfig};
use crate::validate::Problems;

/// `[rollout]`: this agent as config center, as device, or both.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// `[rollout.center]`: host the config center.
    #[serde(default)]
    pub center: Option<CenterConfig>,
    /// `[rollout.device]`: apply configs from a center to local services.
    #[serde(default)]
    pub device: Option<DeviceConfig>,
}

impl RolloutConfig {
    /// Every problem of the `[rollout]` sections.
    pub fn problems(&self, out: &mut Problems) {
        if let Some(center) = &self.center {
            center.problems(out);
        }
        if let Some(device) = &self.device {
            device.problems(out);
        }
    }
}
