//! What `show rollout` prints: the center's rollouts and this device's
//! services, whichever this agent runs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rollout::{center::CenterReport, device::DeviceReport};

/// `show rollout`: `{"center": [rollouts] | null, "device": {...} | null}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RolloutReport {
    /// The config center's rollouts, if this agent hosts the center.
    pub center: Option<CenterReport>,
    /// The device side's state, if this agent is a device.
    pub device: Option<DeviceReport>,
}

impl fmt::Display for RolloutReport {
    /// Pretty JSON: there is no separate text form of `show rollout`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_pretty_json(f, self)
    }
}

/// Writes `value` as pretty JSON with the keys of every object sorted, as
/// the CLI has always printed rollout reports (through a
/// `serde_json::Value`).
pub(crate) fn write_pretty_json<T: Serialize>(
    f: &mut fmt::Formatter<'_>,
    value: &T,
) -> fmt::Result {
    let value = serde_json::to_value(value).map_err(|_| fmt::Error)?;
    let text = serde_json::to_string_pretty(&value).map_err(|_| fmt::Error)?;
    f.write_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_center_and_device_even_when_absent() {
        let report = RolloutReport {
            center: Some(CenterReport::default()),
            device: None,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json, serde_json::json!({"center": [], "device": null}));
        assert_eq!(
            report.to_string(),
            "{\n  \"center\": [],\n  \"device\": null\n}"
        );
    }
}
