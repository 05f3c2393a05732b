//! What the device side shows an operator (`show rollout`, its `device`
//! part): its services and counters. Only reports here; the task builds
//! them (see `Task::snapshot`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What one service looks like to an operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceReport {
    /// The service's name on this device.
    pub name: String,
    /// `namespace/group/name`.
    pub key: String,
    /// The file the config is written to.
    pub path: String,
    /// Version in the backup store (the one applied last), if any.
    pub version: Option<u64>,
    /// Its MD5.
    pub md5: Option<String>,
    /// What happened last, in words.
    pub last_result: String,
    /// When the backup's version was applied (ms since the epoch).
    pub last_applied_ms: Option<u64>,
}

/// Counters of the device task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Long polls answered.
    pub watches: u64,
    /// Assignments received.
    pub assignments: u64,
    /// Config versions fetched.
    pub fetched: u64,
    /// Assignments acknowledged without fetching: the MD5 equalled the
    /// backup's.
    pub skipped_same_md5: u64,
    /// Versions applied successfully.
    pub applied: u64,
    /// Assignments acknowledged as failed (apply failures, MD5 mismatches,
    /// unknown services).
    pub failed: u64,
    /// Service files put back from the backup store at start.
    pub restored_from_backup: u64,
    /// Center requests that failed (unreachable, timeouts, 4xx, 5xx).
    pub center_errors: u64,
    /// Releases pushed over the fabric that concerned this device (each
    /// made it ask the center at once).
    #[serde(default)]
    pub pushes: u64,
}

/// The device's state for operators (`show rollout`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    /// This device's name at the center.
    pub device: String,
    /// The center's base URL.
    pub center: String,
    /// The last center request got an answer.
    pub connected: bool,
    /// Every service, in configuration order.
    pub services: Vec<ServiceReport>,
    /// What the task did so far.
    pub counters: DeviceCounters,
}

impl fmt::Display for DeviceReport {
    /// Pretty JSON, as `show rollout` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::rollout::report::write_pretty_json(f, self)
    }
}
